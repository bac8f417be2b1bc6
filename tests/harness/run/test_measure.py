"""The host-sync counter: what counts, once, and that counting adds no syncs."""

import torch

from harness.run.measure import StepTimer, count_host_syncs, peak_memory_mb


def test_pure_compute_has_no_syncs():
    x = torch.randn(8, 4, requires_grad=True)
    with count_host_syncs("cpu") as c:
        (x @ x.T).relu().sum().backward()
    assert c.count == 0, dict(c.by_kind)


def test_optimizer_step_counters_on_the_host_are_not_reads():
    from harness.run.loop import _host_step_counters

    x = torch.randn(8, 4, requires_grad=True)
    opt = torch.optim.AdamW([x], foreach=False)
    x.sum().backward()
    opt.step()  # creates the state (step counters live on the host by design)
    with count_host_syncs("cpu") as c:
        c.host_resident(_host_step_counters(opt))
        opt.step()
    assert c.count == 0, dict(c.by_kind)


def test_each_host_read_counts_once():
    x = torch.randn(4, 3)
    with count_host_syncs("cpu") as c:
        x.sum().item()
        bool(x.sum() > 0)
        x[0].tolist()
        x.numpy()
        x.detach().cpu().numpy()  # legacy batch_frexp's round trip: one, not two
        x.cpu().float().numpy()  # derived host copy: still one round trip
        float(x[0, 0])
        torch.nonzero(x)
    assert c.count == 8, dict(c.by_kind)
    assert c.by_kind["to_host"] == 2


def test_same_device_move_is_not_a_read():
    x = torch.randn(3)
    with count_host_syncs("cpu") as c:
        x.to(x.device)
        x.to(torch.float64)
    assert c.count == 0


def test_grad_scaler_found_inf_check_counts():
    w = torch.randn(3, requires_grad=True)
    opt = torch.optim.SGD([w], lr=0.1)
    scaler = torch.amp.GradScaler("cpu")
    with count_host_syncs("cpu") as c:
        scaler.scale((w ** 2).sum()).backward()
        scaler.step(opt)
        scaler.update()
    assert c.count == 1 and c.by_kind["item"] == 1


def test_qvit_legacy_frexp_counts_on_cpu():
    from qvit.ops.requant import batch_frexp

    with count_host_syncs("cpu") as c:
        batch_frexp(torch.tensor([0.37, 1.5e-3]))
    assert c.by_kind["to_host"] >= 1


def test_counting_adds_no_syncs_itself():
    x = torch.randn(4, 3, requires_grad=True)
    with count_host_syncs("cpu") as outer:
        with count_host_syncs("cpu") as inner:
            (x * 2).sum().backward()
            x.grad.sum().item()
    assert inner.count == 1 and outer.count == 1


def test_host_resident_tensors_are_not_reads():
    step = torch.tensor(3.0)
    with count_host_syncs("cpu") as c:
        c.host_resident([step])
        step.item()
    assert c.count == 0


def test_synchronize_is_counted_and_restored():
    real = torch.cuda.synchronize
    with count_host_syncs("cpu") as c:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        else:
            try:
                torch.cuda.synchronize()
            except (RuntimeError, AssertionError, AttributeError):
                pass
    assert c.by_kind["cuda_synchronize"] == 1
    assert torch.cuda.synchronize is real


def test_timer_and_memory():
    t = StepTimer(torch.device("cpu"))
    for timed in (True, False, True):  # a step begun untimed (syncs counted) is not kept
        t.begin(timed=timed)
        t.end()
    assert len(t.step_times()) == 2 and min(t.step_times()) >= 0
    assert peak_memory_mb(torch.device("cpu")) > 0


def test_cuda_sync_debug_cross_check_is_wired(monkeypatch):
    """On CUDA the counter also runs torch.cuda.set_sync_debug_mode('warn') and counts its
    warnings; the training loop's count window asks for it. Emulated here (no GPU): the
    mode switch is recorded and a synchronizing op's warning is emitted by hand."""
    import warnings

    import harness.run.loop as loop

    modes = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_sync_debug_mode", lambda: 0)
    monkeypatch.setattr(torch.cuda, "set_sync_debug_mode", modes.append)
    with count_host_syncs("cuda", cuda_debug=True) as c:
        warnings.warn("called a synchronizing CUDA operation", UserWarning, stacklevel=1)
        # a second, identical warning: counted again, not deduplicated
        warnings.warn("called a synchronizing CUDA operation", UserWarning, stacklevel=1)
        warnings.warn("an unrelated warning", UserWarning, stacklevel=1)
    assert modes == ["warn", 0] and c.cuda_debug_count == 2
    with count_host_syncs("cpu", cuda_debug=True) as c:  # off CUDA: nothing to cross-check
        pass
    assert c.cuda_debug_count is None
    window = loop._CountWindow(torch.device("cuda"), torch.optim.SGD([torch.zeros(1)], lr=1),
                               first=0, count=2)
    for step in range(2):
        window.before(step)
        warnings.warn("called a synchronizing CUDA operation", UserWarning, stacklevel=1)
        window.after(step)
    assert window.cuda_debug == 2 and window.steps == 2
