"""Shared helpers of the qvit tests: calibrated micro models on fixed inputs."""

import functools

import torch

import qvit
from qvit import Flags

MICRO = ("ivit_micro", "swin_micro")


def batch(seed: int, n: int = 4):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g)


@functools.cache
def calibrated_state(name: str) -> dict:
    """A legacy-built model after 3 SGD steps in training mode (ranges calibrated)."""
    torch.manual_seed(0)
    model = qvit.create_model(name, num_classes=10, flags=Flags.preset("seed"))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    for i in range(3):
        x, y = batch(100 + i)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return {k: v.clone() for k, v in model.state_dict().items()}


def model_from(name: str, flags: Flags):
    model = qvit.create_model(name, num_classes=10, flags=flags)
    model.load_state_dict(calibrated_state(name), strict=True)
    return model


def trajectory(name: str, flags: Flags, cycles: int = 2):
    """Eval logits, then `cycles` x (train step -> eval logits); plus the first training
    step's input and parameter gradients and the final parameters and buffers."""
    model = model_from(name, flags)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    x_eval, _ = batch(7)
    out = {"logits": []}
    model.eval()
    with torch.no_grad():
        out["logits"].append(model(x_eval))
    for c in range(cycles):
        model.train()
        x, y = batch(200 + c)
        x.requires_grad_(c == 0)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        if c == 0:
            out["input_grad"] = x.grad.clone()
            out["param_grads"] = {k: p.grad.clone() for k, p in model.named_parameters()
                                  if p.grad is not None}
        opt.step()
        model.eval()
        with torch.no_grad():
            out["logits"].append(model(x_eval))
            out["logits"].append(model(x_eval))  # a second eval batch hits the caches
    out["state"] = {k: v.clone() for k, v in model.state_dict().items()}
    return out


def rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).double().norm() / b.double().norm().clamp_min(1e-30)).item()


def grads_rel_diff(a: dict, b: dict) -> float:
    num = sum(((a[k] - b[k]).double() ** 2).sum() for k in b)
    den = sum((b[k].double() ** 2).sum() for k in b)
    return (num / den).sqrt().item()


# --- the parity trajectories (tests/qvit/test_parity.py, test_caches.py) -------------------

# the smallest input each micro model takes (Swin: patches of 4, 4x4 windows, one merge)
SMALLEST = {"ivit_micro": 16, "swin_micro": 32}
DROP_PATH = 0.1  # I-ViT's default stochastic depth: on in every trajectory


def small_batch(seed: int, name: str, n: int = 2):
    g = torch.Generator().manual_seed(seed)
    s = SMALLEST[name]
    return torch.randn(n, 3, s, s, generator=g), torch.randint(0, 10, (n,), generator=g)


@functools.cache
def small_calibrated_state(name: str) -> dict:
    """A model at its smallest input after 2 AdamW steps under `seed` (ranges calibrated)."""
    torch.manual_seed(0)
    model = qvit.create_model(name, num_classes=10, img_size=SMALLEST[name],
                              drop_path_rate=DROP_PATH, flags=Flags.preset("seed"))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for i in range(2):
        x, y = small_batch(100 + i, name, 4)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return {k: v.clone() for k, v in model.state_dict().items()}


def small_model(name: str, flags: Flags, **kw):
    model = qvit.create_model(name, num_classes=10, img_size=SMALLEST[name],
                              drop_path_rate=DROP_PATH, flags=flags, **kw)
    model.load_state_dict(small_calibrated_state(name), strict=True)
    return model


def perturb_state_(model, seed: int) -> None:
    """Move every floating parameter and buffer in place (as timm's ModelEmaV3 does to its
    EMA model, in eval): same moves for the same seed, whatever the flags."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for v in model.state_dict().values():
            if v.is_floating_point():
                noise = torch.randn(v.shape, generator=g)
                v.add_(noise * (v.abs().mean() * 0.05 + 1e-4))


def train_step(model, opt, x, y, rng_seed: int, record: dict | None = None):
    torch.manual_seed(rng_seed)  # drop-path draws
    loss = torch.nn.functional.cross_entropy(model(x), y)
    opt.zero_grad()
    loss.backward()
    if record is not None:
        record["loss"].append(loss.detach())
        record["grads"].append({k: p.grad.clone() for k, p in model.named_parameters()
                                if p.grad is not None})
    opt.step()


def small_trajectory(name: str, flags: Flags) -> dict:
    """Eval; 3 consecutive AdamW training steps (drop path on); two evals (the second hits
    the caches); an optimizer step taken in eval mode, then an eval with no mode switch; an
    in-place move of every parameter and buffer in eval (an EMA update), then an eval; one
    more training step, an eval. Records logits, losses, every step's parameter gradients,
    the first step's input gradient and the final state (parameters and ranges)."""
    model = small_model(name, flags)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x_eval, _ = small_batch(7, name)
    rec = {"logits": [], "loss": [], "grads": []}

    def evaluate():
        with torch.no_grad():
            rec["logits"].append(model(x_eval))

    model.eval()
    evaluate()
    model.train()
    for i in range(3):
        x, y = small_batch(200 + i, name)
        if i == 0:
            x.requires_grad_(True)
        train_step(model, opt, x, y, 300 + i, rec)
        if i == 0:
            rec["input_grad"] = x.grad.clone()
    model.eval()
    evaluate()
    evaluate()
    train_step(model, opt, *small_batch(203, name), 303, rec)  # a step taken in eval mode
    evaluate()
    perturb_state_(model, 5)
    evaluate()
    model.train()
    train_step(model, opt, *small_batch(204, name), 304, rec)
    model.eval()
    evaluate()
    rec["state"] = {k: v.clone() for k, v in model.state_dict().items()}
    return rec


def assert_bitwise_equal(got: dict, ref: dict, what: str = "") -> None:
    """Every recorded tensor identical: logits, losses, gradients, parameters and ranges."""
    assert len(got["logits"]) == len(ref["logits"])
    for i, (a, b) in enumerate(zip(got["logits"], ref["logits"], strict=True)):
        assert torch.equal(a, b), f"{what}: eval logits {i} differ"
    for i, (a, b) in enumerate(zip(got["loss"], ref["loss"], strict=True)):
        assert torch.equal(a, b), f"{what}: loss of step {i} differs"
    assert torch.equal(got["input_grad"], ref["input_grad"]), f"{what}: input gradient"
    for i, (a, b) in enumerate(zip(got["grads"], ref["grads"], strict=True)):
        assert a.keys() == b.keys()
        bad = [k for k in b if not torch.equal(a[k], b[k])]
        assert not bad, f"{what}: step {i} gradients differ: {bad[:4]}"
    bad = [k for k in ref["state"] if not torch.equal(got["state"][k], ref["state"][k])]
    assert not bad, f"{what}: parameters or ranges differ after training: {bad[:4]}"
