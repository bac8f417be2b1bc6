"""The harness's CUDA-only code paths, exercised on a CPU as far as one can (issue #23): CUDA
events in the step timer, the phase-boundary sync, the CUDA allocator's peak, the
cuda_synchronize_per_step loop flag, the DataLoader's pinned memory and non-blocking copies,
preload_to_device on CUDA, the CUDA device name in provenance. torch.cuda is replaced by
fakes where a path needs it; nothing here needs a GPU.

The "Fixed (was xfail)" tests are bugs found while preparing the GPU run, written first as
xfail(strict=True) with the fix in the reason; each marker went with its fix.

The harness is being reorganized into packages: functions are looked up by name in whichever
harness module defines them (`_find`), not by module path.
"""

from __future__ import annotations

import importlib
import math
import pkgutil
import sys
import time
import types

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from qvit.flags import Flags


def _find(attr: str):
    """``attr`` from the harness module that defines it (where it lives may change)."""
    import harness

    preferred = ("harness.run.measure", "harness.run.loop", "harness.run.data",
                 "harness.records.provenance", "harness.run.runner", "harness.run.interleave")
    names = list(preferred) + [i.name for i in pkgutil.walk_packages(harness.__path__,
                                                                     "harness.")]
    for name in names:
        try:
            mod = importlib.import_module(name)
        except Exception:  # noqa: BLE001 - not the module we look for
            continue
        obj = getattr(mod, attr, None)
        if obj is not None and getattr(obj, "__module__", name) == mod.__name__:
            return obj
    pytest.fail(f"no harness module defines {attr}")


def _module_of(obj) -> types.ModuleType:
    return sys.modules[obj.__module__]


class FakeEvent:
    """torch.cuda.Event stand-in: records the host clock; elapsed_time in milliseconds."""

    made = 0

    def __init__(self, enable_timing: bool = False):
        assert enable_timing, "step timing needs enable_timing=True"
        FakeEvent.made += 1
        self.t = None

    def record(self, stream=None):
        self.t = time.perf_counter()

    def elapsed_time(self, other: FakeEvent) -> float:
        assert self.t is not None and other.t is not None, "an event was never recorded"
        return (other.t - self.t) * 1e3


@pytest.fixture
def fake_cuda(monkeypatch):
    """torch.cuda's synchronize, Event, peak-memory and name functions as recorders."""
    calls = {"synchronize": 0, "reset_peak": 0}

    def synchronize(device=None):
        calls["synchronize"] += 1

    def reset_peak(device=None):
        calls["reset_peak"] += 1

    monkeypatch.setattr(torch.cuda, "synchronize", synchronize)
    monkeypatch.setattr(torch.cuda, "Event", FakeEvent)
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", reset_peak)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device=None: 3 * 2**20)
    return calls


# --- measure: events, the phase boundary, peak memory -----------------------------------------

def test_step_timer_uses_cuda_events_read_after_the_phase(fake_cuda):
    StepTimer, phase_boundary = _find("StepTimer"), _find("phase_boundary")
    dev = torch.device("cuda")
    timer = StepTimer(dev)
    FakeEvent.made = 0
    for timed in (True, False, True):
        timer.begin(timed=timed)
        time.sleep(0.002)
        timer.end()
    assert FakeEvent.made == 4  # two events per timed step, none for the untimed one
    assert fake_cuda["synchronize"] == 0  # no sync inside the phase
    phase_boundary(dev)
    assert fake_cuda["synchronize"] == 1
    times = timer.step_times()
    assert len(times) == 2 and all(0.001 < t < 1.0 for t in times)  # seconds, not ms


def test_phase_boundary_is_nothing_on_the_cpu(fake_cuda):
    _find("phase_boundary")(torch.device("cpu"))
    assert fake_cuda["synchronize"] == 0


def test_peak_memory_reads_the_cuda_allocator(fake_cuda):
    reset_peak_memory, peak_memory_mb = _find("reset_peak_memory"), _find("peak_memory_mb")
    reset_peak_memory(torch.device("cuda"))
    assert fake_cuda["reset_peak"] == 1
    assert peak_memory_mb(torch.device("cuda")) == 3.0


def test_sync_debug_cross_check_counts_the_counters_own_synchronize(monkeypatch, fake_cuda):
    """(The warning counting itself: tests/harness/run/test_measure.py.)"""
    count_host_syncs = _find("count_host_syncs")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_sync_debug_mode", lambda: 0)
    monkeypatch.setattr(torch.cuda, "set_sync_debug_mode", lambda mode: None)
    with count_host_syncs("cuda", cuda_debug=True) as c:
        torch.cuda.synchronize()  # the counter's own wrapper
    assert c.by_kind["cuda_synchronize"] == 1 and fake_cuda["synchronize"] == 1


# --- loop: cuda_synchronize_per_step, counted syncs, events -----------------------------------

class _Batches:
    """Three uint8 batches, the shape train_one_epoch reads (len, epoch(e))."""

    def __init__(self, n: int = 4, b: int = 2):
        g = torch.Generator().manual_seed(0)
        self.data = [(torch.randint(0, 256, (b, 3, 8, 8), generator=g, dtype=torch.uint8),
                      torch.randint(0, 3, (b,), generator=g)) for _ in range(n)]

    def __len__(self):
        return len(self.data)

    def epoch(self, e):
        return iter(self.data)


def _epoch_on_fake_cuda(monkeypatch, flags):
    """train_one_epoch with device=cuda while the tensors stay on the CPU: the loss sum is
    kept on the CPU, torch.cuda's calls are the fakes."""
    train_one_epoch = _find("train_one_epoch")
    loop = _module_of(train_one_epoch)
    real = loop._LossSum

    class CpuLossSum(real):
        def __init__(self, device, per_step):
            super().__init__(torch.device("cpu"), per_step)

    monkeypatch.setattr(loop, "_LossSum", CpuLossSum)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    return train_one_epoch(model, _Batches(), 1, optimizer=opt, scheduler=None,
                           loss_fn=F.cross_entropy, flags=flags, device=torch.device("cuda"),
                           mean_std=((0.5,) * 3, (0.25,) * 3), count_syncs=True,
                           count_steps=2)


def test_cuda_synchronize_per_step_syncs_every_step_and_is_counted(monkeypatch, fake_cuda):
    flags = Flags.preset("legacy")
    assert flags.cuda_synchronize_per_step
    r = _epoch_on_fake_cuda(monkeypatch, flags)
    assert fake_cuda["synchronize"] == 4 + 2  # every step, and the two phase boundaries
    assert r.sync_kinds.get("cuda_synchronize") == 2  # the two counted steps
    assert r.syncs_per_step == 1.0  # CPU tensors are no device reads under device=cuda
    assert len(r.step_times) == 2  # counted steps are left out of the times
    assert math.isnan(r.cuda_debug_syncs_per_step)  # torch.cuda not available: no cross-check


def test_no_per_step_synchronize_without_the_flag(monkeypatch, fake_cuda):
    r = _epoch_on_fake_cuda(monkeypatch, Flags.preset("seed"))
    assert fake_cuda["synchronize"] == 2  # the phase boundaries only
    assert "cuda_synchronize" not in r.sync_kinds and r.syncs_per_step == 0.0


def test_cuda_synchronize_per_step_has_no_effect_on_the_cpu(fake_cuda):
    from qvit.paths import why_same

    legacy = Flags.preset("legacy")
    other = legacy.replace(cuda_synchronize_per_step=False)
    assert "CUDA only" in why_same(legacy, other, device_type="cpu")
    assert why_same(legacy, other, device_type="cuda") is None


# --- data: pinned memory, non-blocking copies, preload_to_device ------------------------------

@pytest.fixture
def fake_to_cuda(monkeypatch):
    """Tensor.to(cuda) and pin_memory as recorders that keep the tensor on the CPU."""
    real_to = torch.Tensor.to
    moves = []

    def to(self, *args, **kwargs):
        dev = kwargs.get("device", args[0] if args else None)
        if (isinstance(dev, (str, torch.device)) and torch.device(dev).type == "cuda"):
            moves.append({"shape": tuple(self.shape),
                          "non_blocking": bool(kwargs.get("non_blocking", False))})
            return self.clone()
        return real_to(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "to", to)
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda self, *a, **k: self)
    return moves


def _dataset(n: int = 8):
    TensorImages = _find("TensorImages")
    import inspect

    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n, 3, 8, 8), generator=g, dtype=torch.uint8)
    y = torch.randint(0, 3, (n,), generator=g)
    params = inspect.signature(TensorImages).parameters
    return TensorImages(x, y) if len(params) >= 2 else TensorImages((x, y))


def test_loader_batches_pin_and_copy_non_blocking_on_cuda(monkeypatch, fake_to_cuda):
    Batches = _find("Batches")
    data = _module_of(Batches)
    seen = {}
    real_loader = data.DataLoader

    def loader(*a, **k):
        seen.update(k)
        return real_loader(*a, **{**k, "pin_memory": False})  # no CUDA to pin for here

    monkeypatch.setattr(data, "DataLoader", loader)
    b = Batches(_dataset(), batch_size=4, device=torch.device("cuda"), num_workers=0,
                preload=False, shuffle=True, drop_last=True, max_steps=None, seed=0)
    out = list(b.epoch(0))
    assert seen["pin_memory"] is True
    assert len(out) == 2 and len(fake_to_cuda) == 4  # images and labels of each batch
    assert all(m["non_blocking"] for m in fake_to_cuda)


def test_loader_batches_block_on_the_cpu(fake_to_cuda):
    Batches = _find("Batches")
    b = Batches(_dataset(), batch_size=4, device=torch.device("cpu"), num_workers=0,
                preload=False, shuffle=False, drop_last=True, max_steps=None, seed=0)
    assert len(list(b.epoch(0))) == 2 and fake_to_cuda == []


def test_preload_to_device_copies_once_then_indexes_on_the_device(fake_to_cuda):
    Batches = _find("Batches")
    b = Batches(_dataset(), batch_size=4, device=torch.device("cuda"), num_workers=0,
                preload=True, shuffle=True, drop_last=True, max_steps=None, seed=0)
    assert [m["shape"] for m in fake_to_cuda] == [(8, 3, 8, 8), (8,)]  # the data, once
    for epoch in range(2):
        del fake_to_cuda[:]
        batches = list(b.epoch(epoch))
        assert len(batches) == 2
        assert [m["shape"] for m in fake_to_cuda] == [(8,)]  # the epoch's order, once
    # the same batches as the DataLoader path
    lb = Batches(_dataset(), batch_size=4, device=torch.device("cpu"), num_workers=0,
                 preload=False, shuffle=True, drop_last=True, max_steps=None, seed=0)
    for (x1, y1), (x2, y2) in zip(b.epoch(1), lb.epoch(1), strict=True):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)


# --- provenance, device resolution -------------------------------------------------------------

def test_provenance_names_the_cuda_device(monkeypatch):
    provenance = _find("provenance")
    mod = _module_of(provenance)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=0: "NVIDIA H100 80GB HBM3")
    if hasattr(mod, "_static"):
        mod._static.cache_clear()
    try:
        p = provenance("cuda", threads=1)
        assert p["device_name"] == "NVIDIA H100 80GB HBM3"
    finally:
        if hasattr(mod, "_static"):
            mod._static.cache_clear()


def test_cuda_asked_for_without_cuda_is_one_clear_error(monkeypatch):
    resolve_device = _find("resolve_device")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="CUDA is not available"):
        resolve_device("cuda")
    assert resolve_device("auto").type == "cpu"


# --- bugs found while preparing the GPU run, fixed (each was xfail strict) --------------------

def _count_device_tensor_builds(monkeypatch):
    """Calls of torch.tensor(..., device=...) (a host-built tensor copied to the device: on
    CUDA a blocking host-to-device copy, cudaMemcpy + stream sync)."""
    real = torch.tensor
    calls = []

    def tensor(*args, **kwargs):
        if kwargs.get("device") is not None:
            calls.append(args[0] if args else None)
        return real(*args, **kwargs)

    monkeypatch.setattr(torch, "tensor", tensor)
    return calls


def test_normalize_batch_builds_no_device_tensor_per_batch(monkeypatch):
    """Fixed (was xfail): the mean/std constants are made once per (statistics, dtype,
    device), not per batch; the result stays bit for bit the per-batch formula's."""
    normalize_batch = _find("normalize_batch")
    x = torch.randint(0, 256, (2, 3, 4, 4), dtype=torch.uint8)
    ms = ((0.5, 0.4, 0.3), (0.2, 0.2, 0.2))
    for dtype in (torch.float32, torch.float64, torch.bfloat16):
        mean = torch.tensor(ms[0], dtype=dtype).view(1, -1, 1, 1) * 255
        std = torch.tensor(ms[1], dtype=dtype).view(1, -1, 1, 1) * 255
        for _ in range(2):  # built, then cached
            got = normalize_batch(x, ms, dtype)
            assert got.dtype == dtype and torch.equal(got, (x.to(dtype) - mean) / std)
    normalize_batch(x, ms)  # a first call may build the constants
    calls = _count_device_tensor_builds(monkeypatch)
    normalize_batch(x, ms)
    normalize_batch(x, ms)
    assert calls == []


def test_evaluate_builds_no_device_tensor_per_batch(monkeypatch):
    """Fixed (was xfail): the image count of a batch is filled on the device
    (torch.full), not built on the host and copied."""
    evaluate = _find("evaluate")
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 3))
    calls = _count_device_tensor_builds(monkeypatch)
    r = evaluate(model, _Batches(), device=torch.device("cpu"),
                 mean_std=((0.5,) * 3, (0.25,) * 3), num_classes=3)
    assert r.images == 8
    assert [c for c in calls if isinstance(c, float)] == []  # normalize_batch's aside


def test_counter_counts_blocking_host_to_device_copies():
    """Fixed (was xfail): a blocking host-to-device copy (tensor.to('cuda'), legacy's
    torch.tensor(...).to(device)) is a cudaMemcpy the host waits for, which CUDA's sync
    debug mode counts; the counter missed it."""
    count_host_syncs = _find("count_host_syncs")
    # 'meta' stands in for the GPU: a CPU -> device copy the dispatcher sees the same way
    with count_host_syncs("cuda") as c:
        torch.ones(3).to("meta")
    assert c.count == 1 and c.by_kind == {"from_host": 1}
    with count_host_syncs("cuda") as c:  # into an existing device tensor
        torch.empty(3, device="meta").copy_(torch.ones(3))
        torch.empty(3, device="meta").copy_(torch.ones(3), non_blocking=True)
    assert c.by_kind == {"from_host": 1}
    with count_host_syncs("cpu") as c:  # a CPU model has no device to copy to
        torch.ones(3).to(torch.float64)
    assert c.count == 0


def test_counter_does_not_count_non_blocking_host_to_device_copies():
    count_host_syncs = _find("count_host_syncs")
    with count_host_syncs("cuda") as c:
        torch.ones(3).to("meta", non_blocking=True)
    assert c.count == 0
