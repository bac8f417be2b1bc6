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
