"""One model's trajectory on the fixed schedule (eval; then k x (train step, eval)), recorded
for comparison, and the distances between two trajectories' tensors."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from harness.parity.config import ParityConfig, build_model, parity_optimizer
from harness.parity.recorder import ActivationRecorder, Records, TensorStats
from harness.run.loop import train_step
from qvit import Flags

__all__ = ["Trajectory", "run_trajectory", "state_copy", "states_equal", "rel_l2",
           "grads_rel"]


@dataclass
class Trajectory:
    """Everything one model produced on the fixed schedule, for comparison."""

    evals: list[list[Records]] = field(default_factory=list)  # per phase: one per batch
    trains: list[Records] = field(default_factory=list)  # one per training forward
    states: list[dict] = field(default_factory=list)  # state before each eval / train fwd
    grads: list[Tensor | None] = field(default_factory=list)  # first step's param grads
    input_grad: Tensor | None = None
    params: dict[str, Tensor] = field(default_factory=dict)
    deploy: TensorStats = field(default_factory=TensorStats)
    train_losses: list[float] = field(default_factory=list)


def state_copy(model: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def states_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _eval_phase(model, rec: ActivationRecorder, batches, reference: list[Records] | None
                ) -> list[Records]:
    """Eval forwards (no_grad): the first batch runs free (end to end; fills the caches), the
    others teacher-forced from ``reference`` where given (local; hit the caches)."""
    model.eval()
    out = []
    with torch.no_grad():
        for j, (x, _) in enumerate(batches):
            forcing = reference[j] if reference is not None and j > 0 else None
            rec.reset(check_deployment=True, forcing=forcing)
            model(x)
            out.append(rec.records)
    rec.reset()
    return out


def run_trajectory(cfg: ParityConfig, flags: Flags, state: dict, train_batches, eval_batches,
                   patch: Callable[[nn.Module], Any] | None = None,
                   reference: Trajectory | None = None) -> Trajectory:
    """Run the schedule: eval; then ``steps`` x (train step, eval) on the fixed batches.
    ``reference``: the base's trajectory, whose eval records teacher-force the later eval
    batches; ``patch(model)`` may alter the model before it runs."""
    model = build_model(cfg, flags, state)
    if patch is not None:
        patch(model)
    rec = ActivationRecorder(model)
    opt = parity_optimizer(model, cfg.lr)
    t = Trajectory()

    def evaluate(phase: int):
        t.states.append(state_copy(model))
        ref = reference.evals[phase] if reference is not None else None
        t.evals.append(_eval_phase(model, rec, eval_batches, ref))

    evaluate(0)
    for i, (x, y) in enumerate(train_batches[:cfg.steps]):
        model.train()
        t.states.append(state_copy(model))
        rec.reset()
        x = x.clone().requires_grad_(i == 0)
        torch.manual_seed(cfg.seed + i)
        loss = train_step(model, x, y)  # backward only: the gradients are read before the step
        t.trains.append(rec.records)
        t.train_losses.append(float(loss))
        if i == 0:
            t.grads = [None if p.grad is None else p.grad.detach().clone()
                       for p in model.parameters()]
            t.input_grad = x.grad.detach().clone()
        opt.step()
        evaluate(i + 1)
    t.deploy = rec.deploy
    t.params = {k: v.detach().clone() for k, v in model.named_parameters()}
    rec.remove()
    return t


def rel_l2(a: Tensor, b: Tensor) -> float:
    """||a - b|| / ||a|| (0 where equal, inf where only ``a`` is zero)."""
    na = float(a.double().norm())
    d = float((a.double() - b.double()).norm())
    if d == 0.0:
        return 0.0
    return d / na if na > 0 else math.inf


def grads_rel(ga: list, gb: list) -> tuple[float, bool]:
    """Relative L2 distance of two gradient lists (missing gradients count as zeros), and
    whether they are bit-identical."""
    flat_a, flat_b, equal = [], [], True
    for a, b in zip(ga, gb, strict=True):
        if a is None and b is None:
            continue
        a = torch.zeros_like(b) if a is None else a
        b = torch.zeros_like(a) if b is None else b
        equal = equal and torch.equal(a, b)
        flat_a.append(a.reshape(-1))
        flat_b.append(b.reshape(-1))
    if not flat_a:
        return 0.0, True
    return rel_l2(torch.cat(flat_a), torch.cat(flat_b)), equal
