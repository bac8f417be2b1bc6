"""Module flags measured on the model itself: a calibrated common start (`prepare_baseline`),
then each flag toggled alone and run in lockstep with the base (`measure_flag`)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from harness.analysis.parity_classes import classify, match_label, pair_expectation
from harness.parity.config import ParityConfig, build_model, fixed_batches, parity_optimizer
from harness.parity.recorder import TensorStats, compare_records
from harness.parity.trajectory import (
    Trajectory,
    grads_rel,
    rel_l2,
    run_trajectory,
    state_copy,
    states_equal,
)
from harness.run.loop import train_step
from qvit import Flags

__all__ = ["Baseline", "prepare_baseline", "measure_flag"]


@dataclass
class Baseline:
    """The common start (calibrated state), the fixed batches and the base's trajectory."""

    cfg: ParityConfig
    flags: Flags
    state: dict
    train_batches: list
    eval_batches: list
    trajectory: Trajectory


def prepare_baseline(cfg: ParityConfig, base_flags: Flags | None = None) -> Baseline:
    """Build and calibrate the base model, then run the schedule on it once."""
    flags = Flags.preset(cfg.base) if base_flags is None else base_flags
    model = build_model(cfg, flags, None)
    opt = parity_optimizer(model, cfg.lr)
    model.train()
    for x, y in fixed_batches(cfg, cfg.calib_steps, offset=1):
        train_step(model, x, y, optimizer=opt)
    state = state_copy(model)
    train_b, eval_b = fixed_batches(cfg, cfg.steps, offset=2), fixed_batches(cfg, 2, offset=3)
    traj = run_trajectory(cfg, flags, state, train_b, eval_b)
    return Baseline(cfg, flags, state, train_b, eval_b, traj)


@dataclass
class _Forward:
    """Forward comparisons of two trajectories."""

    local: TensorStats  # teacher-forced eval batches on identical state
    e2e: TensorStats  # free-running eval batches and training forwards on identical state
    logits: TensorStats
    drift: TensorStats  # evals after training diverged
    later: TensorStats  # evals after an optimizer step, on identical state


def _compare_forwards(a: Trajectory, b: Trajectory) -> _Forward:
    """Only forwards on bit-identical state count as forward parity: teacher-forced eval
    batches (local: each segment from the base's values), free-running eval batches and
    training forwards (end to end); evals after training diverged are drift."""
    f = _Forward(TensorStats(), TensorStats(), TensorStats(), TensorStats(), TensorStats())
    for i in range(len(a.evals)):
        if states_equal(a.states[2 * i], b.states[2 * i]):
            for j, (ra, rb) in enumerate(zip(a.evals[i], b.evals[i], strict=True)):
                every, lg = compare_records(ra, rb)
                (f.local if j else f.e2e).merge(every)
                if not j:
                    f.logits.merge(lg)
                if i:
                    f.later.merge(every)
        else:
            f.drift.merge(compare_records(a.evals[i][0], b.evals[i][0])[0])
        if i < len(a.trains) and states_equal(a.states[2 * i + 1], b.states[2 * i + 1]):
            every, lg = compare_records(a.trains[i], b.trains[i])
            f.e2e.merge(every)
            f.logits.merge(lg)
    return f


def _notes(f: _Forward, deploy: TensorStats) -> str:
    notes = []
    if f.local.n_differ:
        notes.append(f"worst local tensor {f.local.worst}")
    if f.later.n_differ and f.later.n_differ == f.local.n_differ + f.e2e.n_differ:
        notes.append(f"only evals after an optimizer step differ, on identical state "
                     f"({f.later.worst}): a stale eval cache")
    if deploy.n_differ:
        notes.append(f"{deploy.n_differ} of {deploy.n} requantized integers off the int64 "
                     f"reference (worst {deploy.worst})")
    return "; ".join(notes)


def measure_flag(baseline: Baseline, flag: str, value: Any, *,
                 patch: Callable[[nn.Module], Any] | None = None,
                 to_flags: Flags | None = None) -> dict:
    """Toggle ``flag`` alone to ``value`` from the baseline and measure; one table row.
    ``patch(model)`` may alter the toggled model (the tests plant naive variants with it)."""
    t0 = time.perf_counter()
    cfg, spec = baseline.cfg, Flags.spec(flag)
    if spec.scope != "module":
        raise ValueError(f"flag {flag!r} acts in the training loop; use loop_parity_rows")
    from_value = getattr(baseline.flags, flag)
    flags = to_flags if to_flags is not None else baseline.flags.replace(**{flag: value})
    a = baseline.trajectory
    b = run_trajectory(cfg, flags, baseline.state, baseline.train_batches,
                       baseline.eval_batches, patch, reference=a)
    f = _compare_forwards(a, b)
    grad_rel, grads_equal = grads_rel(a.grads, b.grads)
    pa = torch.cat([v.reshape(-1) for v in a.params.values()])
    pb = torch.cat([v.reshape(-1) for v in b.params.values()])
    row = dict(
        model=cfg.model, flag=flag, scope=spec.scope, change=spec.change, base=cfg.base,
        from_value=from_value, to_value=value,
        forward_max_steps=f.local.max_steps, forward_frac_differ=f.local.frac,
        forward_elements=f.local.n, e2e_max_steps=f.e2e.max_steps,
        e2e_frac_differ=f.e2e.frac, logits_max_steps=f.logits.max_steps,
        logits_frac_differ=f.logits.frac, grad_rel_diff=grad_rel,
        input_grad_rel_diff=rel_l2(a.input_grad, b.input_grad),
        grads_equal=grads_equal and torch.equal(a.input_grad, b.input_grad),
        params_equal_after_k=all(torch.equal(a.params[k], b.params[k]) for k in a.params),
        params_rel_diff=rel_l2(pa, pb), k_steps=len(a.trains),
        eval_drift_max_steps=f.drift.max_steps,
        deployment_frac_differ=b.deploy.frac, deployment_max_steps=b.deploy.max_steps,
        deployment_elements=b.deploy.n, deployment_frac_differ_base=a.deploy.frac,
        bound=json.dumps(spec.bound) if spec.bound else "",
    )
    measured = classify(row, spec.bound)
    expected = pair_expectation(flag, from_value, value)
    row.update(measured_class=measured, expected_class=expected,
               match=match_label(measured, expected), note=_notes(f, b.deploy),
               seconds=round(time.perf_counter() - t0, 2))
    return row
