"""Parity: what each flag does to the numbers, measured, classified and checked against the
expectation declared with the flag (`qvit.FlagSpec.expected_parity`, `FlagSpec.bound`).

Module flags are measured on the model itself. One model is built under the base preset
(``legacy`` by default) and calibrated (a few seeded AdamW steps on fixed batches, so that
every QuantAct has a range); its state dict is the common start. For each flag and each of
its other values, a second model loads the same state under ``base.replace(flag=value)`` and
both run in lockstep on the same batches:

- **forward**: eval logits and every QuantAct's requantized integers (captured by forward
  hooks, ``q = out / scale``), as the largest difference in quantization steps of the
  base's tensor and the fraction of elements that differ. Counted on every forward where
  both models hold bit-identical state: the first eval, each training forward, and each
  eval after an optimizer step as long as training has not diverged;
- **backward**: relative L2 difference of the parameter gradients and the input gradient;
- **training**: ``k`` optimizer steps on fixed batches with an eval phase (two eval batches:
  cache fill and cache hit) after each step, i.e. train -> eval -> train -> eval cycles, the
  sequence where the seed's naive caches 10 and 12 go stale; then whether the parameters
  are bit-identical and their relative L2 distance;
- **deployment fidelity**: each requantizing QuantAct's integers against a pure int64
  dyadic reference (`frexp_device` + `dyadic_requantize_int64`) of what an integer-only
  deployment computes from the same input integers and scales.

Each flag is classified ``exact``, ``forward-exact-gradient-differs``, ``near-exact``
(within the flag's declared bound, or `DEFAULT_BOUND`) or ``differs``; loop flags are
classified from short harness runs (`harness.runner`), bit for bit on the final losses and
top-1. A measured class that does not satisfy the declared one is a MISMATCH: printed
loudly, and the CLI exits non-zero.

Accuracy parity (`accuracy_parity`, `assert_accuracy_parity`) works on the runs table: exact
identity of final top-1 and loss for flags whose training is bit-identical, and otherwise a
paired TOST equivalence test over seeds with a margin given by the caller.

    python -m harness parity --model ivit_micro --out results/parity/ivit_micro
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import qvit
from qvit import Flags
from qvit import primitives as P
from qvit.modules import QuantAct

# the parity columns a report shows (parity.csv keeps them all)
SHOWN_COLUMNS = ("model", "flag", "from_value", "to_value", "expected_class", "measured_class",
                 "match", "forward_max_steps", "forward_frac_differ", "grad_rel_diff",
                 "params_equal_after_k", "deployment_frac_differ")

__all__ = [
    "PARITY_COLUMNS", "DEFAULT_BOUND", "ParityConfig", "Baseline", "measure_flag",
    "prepare_baseline", "parity_table", "loop_parity_rows", "optimizer_step_parity",
    "classify", "satisfies",
    "pair_expectation", "deployment_reference", "ActivationRecorder", "AccuracyParity",
    "accuracy_parity", "assert_accuracy_parity", "tost_paired", "tost_unpaired",
    "accuracy_runs", "format_table", "main",
]

# Bound used to call a difference "near-exact" when the flag declares none.
DEFAULT_BOUND = {"forward_frac_differ": 1e-3, "forward_max_steps": 1.0}

PARITY_COLUMNS = [
    "model", "flag", "scope", "change", "base", "from_value", "to_value", "measured_class",
    "expected_class", "match", "forward_max_steps", "forward_frac_differ", "forward_elements",
    "e2e_max_steps", "e2e_frac_differ", "logits_max_steps", "logits_frac_differ",
    "grad_rel_diff", "input_grad_rel_diff",
    "grads_equal", "params_equal_after_k", "params_rel_diff", "k_steps",
    "eval_drift_max_steps", "deployment_frac_differ", "deployment_max_steps",
    "deployment_elements", "deployment_frac_differ_base", "bound", "note", "seconds",
]


# --- configuration -------------------------------------------------------------------------

@dataclass(frozen=True)
class ParityConfig:
    """What a module-flag measurement runs: the model, its base flags and the fixed data."""

    model: str = "ivit_micro"
    base: str = "legacy"  # preset every flag is toggled from
    num_classes: int = 10
    img_size: int | None = None  # None: the model's default
    batch: int = 4  # training batch (and each of the two eval batches)
    steps: int = 3  # optimizer steps (train -> eval cycles) measured per flag
    calib_steps: int = 3  # optimizer steps under the base before the common state is saved
    lr: float = 2e-3
    seed: int = 0

    def __post_init__(self):
        qvit.model_config(self.model)  # raises on an unknown model
        Flags.preset(self.base)
        for name in ("batch", "steps", "num_classes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.steps < 2:
            raise ValueError("steps must be >= 2: the naive caches only fail in a second "
                             "train -> eval cycle")

    def image_size(self) -> int:
        return self.img_size or qvit.model_config(self.model)[1]["img_size"]


def _batches(cfg: ParityConfig, n: int, offset: int) -> list[tuple[Tensor, Tensor]]:
    """``n`` fixed (image, label) batches: seeded normal images, seeded labels."""
    g = torch.Generator().manual_seed(cfg.seed * 1000 + offset)
    s = cfg.image_size()
    return [(torch.randn(cfg.batch, 3, s, s, generator=g),
             torch.randint(0, cfg.num_classes, (cfg.batch,), generator=g)) for _ in range(n)]


def _build(cfg: ParityConfig, flags: Flags, state: dict | None) -> nn.Module:
    torch.manual_seed(cfg.seed)
    model = qvit.create_model(cfg.model, num_classes=cfg.num_classes, img_size=cfg.img_size,
                              flags=flags)
    if state is not None:
        model.load_state_dict(state, strict=True)
    return model


def _optimizer(model: nn.Module, lr: float) -> torch.optim.Optimizer:
    # Plain per-parameter loop: deterministic and the same for every module flag.
    return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05, foreach=False)


# --- capturing activations ------------------------------------------------------------------

def deployment_reference(x: Tensor, pre_scale: Tensor, out_scale: Tensor, num_bits: int,
                         identity: Tensor | None = None,
                         identity_scale: Tensor | None = None) -> Tensor:
    """The int64 integers an integer-only deployment computes for a requantizing QuantAct:
    input integers round(x / scale), the scale ratio as a 31-bit dyadic m * 2^-e
    (`frexp_device`), ``round_half_even(z * m / 2^e)`` in int64 (`dyadic_requantize_int64`),
    plus the residual rescaled the same way, clamped to ``num_bits``."""
    shape = P._act_shape(x)

    def one(v: Tensor, s: Tensor) -> Tensor:
        s = s.detach().view(shape)
        z = torch.round(v.detach() / s)
        ratio = s.to(torch.float64) / out_scale.detach().to(torch.float32).to(torch.float64)
        m, e = P.frexp_device(ratio)
        return P.dyadic_requantize_int64(z, m, e)

    with torch.no_grad():
        ref = one(x, pre_scale)
        if identity is not None:
            ref = ref + one(identity, identity_scale)
        n = 2 ** (num_bits - 1) - 1
        return ref.clamp(-n - 1, n) if num_bits in (4, 8, 16, 32) else ref


@dataclass
class _Stats:
    """Running comparison of tensors: largest difference in steps, differing elements."""

    max_steps: float = 0.0
    n_differ: int = 0
    n: int = 0
    worst: str = ""

    def add(self, a: Tensor, b: Tensor, step: Tensor, name: str,
            step_b: Tensor | None = None) -> None:
        """Compare ``b`` with ``a`` (integers times ``step``). Where both share the step, the
        difference is counted in whole integers (float32 products carry rounding noise)."""
        a, b = a.detach(), b.detach()
        if a.shape != b.shape:
            self.n += a.numel()
            self.n_differ += a.numel()
            self.max_steps, self.worst = math.inf, name
            return
        differ = a != b
        nd = int(differ.sum())
        self.n += a.numel()
        self.n_differ += nd
        if nd:
            s = step.detach().double().abs()
            if step_b is None or torch.equal(step.detach(), step_b.detach()):
                diff = (torch.round(a.double() / s) - torch.round(b.double() / s)).abs()
            else:
                diff = (a.double() - b.double()).abs() / s
            d = float(diff.max())
            d = math.inf if math.isnan(d) else d  # NaN differences count as infinitely far
            if d > self.max_steps:
                self.max_steps, self.worst = d, name

    def merge(self, o: _Stats) -> None:
        self.n += o.n
        self.n_differ += o.n_differ
        if o.max_steps > self.max_steps:
            self.max_steps, self.worst = o.max_steps, o.worst

    @property
    def frac(self) -> float:
        return self.n_differ / self.n if self.n else 0.0


Records = dict  # (module name, call index) -> (output, scale)


class ActivationRecorder:
    """Forward hooks on every QuantAct (and the classifier head) of a model: the output and
    scale of every call, keyed by (module name, call index within the forward); optionally
    each requantizing call's agreement with the int64 deployment reference, and teacher
    forcing (each hooked module's output replaced by a reference model's for the same call,
    so that every segment between two QuantActs starts from the reference's values and a
    difference measures that segment alone)."""

    def __init__(self, model: nn.Module):
        self.records: Records = {}
        self.deploy = _Stats()
        self.check_deployment = False
        self.forcing: Records | None = None
        self._calls: dict[str, int] = {}
        self._handles = []
        for name, m in model.named_modules():
            if isinstance(m, QuantAct):
                self._handles.append(m.register_forward_hook(self._hook(name, m),
                                                             with_kwargs=True))
        head = getattr(model, "head", None)
        if isinstance(head, nn.Module):
            self._handles.append(head.register_forward_hook(self._hook("logits", None),
                                                            with_kwargs=True))

    def reset(self, *, check_deployment: bool = False, forcing: Records | None = None) -> None:
        """Start recording a new forward."""
        self.records, self._calls = {}, {}
        self.check_deployment, self.forcing = check_deployment, forcing

    def remove(self) -> None:
        for h in self._handles:
            h.remove()

    def _hook(self, name: str, module: QuantAct | None):
        def hook(mod, args, kwargs, output):
            idx = self._calls.get(name, 0)
            self._calls[name] = idx + 1
            out, scale = output
            self.records[(name, idx)] = (out.detach().clone(), scale.detach().clone())
            if module is not None and self.check_deployment:
                self._check(name, module, args, kwargs, out, scale)
            if self.forcing is not None and (name, idx) in self.forcing:
                ref_out, ref_scale = self.forcing[(name, idx)]
                return ref_out.clone(), ref_scale.clone()
            return None
        return hook

    def _check(self, name, module, args, kwargs, out, scale) -> None:
        names = ("x", "pre_act_scaling_factor", "identity", "identity_scaling_factor")
        call = dict(zip(names, args, strict=False))
        call.update(kwargs)
        if call.get("pre_act_scaling_factor") is None:
            return  # input quantization, not a requantization
        try:
            ref = deployment_reference(call["x"], call["pre_act_scaling_factor"], scale,
                                       module.activation_bit, call.get("identity"),
                                       call.get("identity_scaling_factor"))
        except ValueError:
            return  # scale ratio outside the dyadic range: no reference
        q = torch.round(out.detach().double() / scale.detach().double().view(-1))
        self.deploy.add(q, ref.double(), torch.ones(()), name)


def _compare(ra: Records, rb: Records) -> tuple[_Stats, _Stats]:
    """(every tensor, logits only), in units of the base tensor's quantization step."""
    every, logits = _Stats(), _Stats()
    for key in sorted(ra.keys() & rb.keys()):
        (a, sa), (b, sb) = ra[key], rb[key]
        name = f"{key[0]}[{key[1]}]"
        every.add(a, b, sa, name, sb)
        if key[0] == "logits":
            logits.add(a, b, sa, name, sb)
    return every, logits


# --- one model's trajectory -------------------------------------------------------------------

@dataclass
class _Trajectory:
    """Everything one model produced on the fixed schedule, for comparison."""

    evals: list[list[Records]] = field(default_factory=list)  # per phase: one per batch
    trains: list[Records] = field(default_factory=list)  # one per training forward
    states: list[dict] = field(default_factory=list)  # state before each eval / train fwd
    grads: list[Tensor | None] = field(default_factory=list)  # first step's param grads
    input_grad: Tensor | None = None
    params: dict[str, Tensor] = field(default_factory=dict)
    deploy: _Stats = field(default_factory=_Stats)
    train_losses: list[float] = field(default_factory=list)


def _state(model: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _states_equal(a: dict, b: dict) -> bool:
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


def _trajectory(cfg: ParityConfig, flags: Flags, state: dict, train_batches, eval_batches,
                patch: Callable[[nn.Module], Any] | None = None,
                reference: _Trajectory | None = None) -> _Trajectory:
    """Run the schedule: eval; then ``steps`` x (train step, eval) on the fixed batches."""
    model = _build(cfg, flags, state)
    if patch is not None:
        patch(model)
    rec = ActivationRecorder(model)
    opt = _optimizer(model, cfg.lr)
    t = _Trajectory()

    def evaluate(phase: int):
        t.states.append(_state(model))
        ref = reference.evals[phase] if reference is not None else None
        t.evals.append(_eval_phase(model, rec, eval_batches, ref))

    evaluate(0)
    for i, (x, y) in enumerate(train_batches[:cfg.steps]):
        model.train()
        t.states.append(_state(model))
        rec.reset()
        x = x.clone().requires_grad_(i == 0)
        torch.manual_seed(cfg.seed + i)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        t.trains.append(rec.records)
        t.train_losses.append(float(loss.detach()))
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


def _rel_l2(a: Tensor, b: Tensor) -> float:
    na = float(a.double().norm())
    d = float((a.double() - b.double()).norm())
    if d == 0.0:
        return 0.0
    return d / na if na > 0 else math.inf


def _grads_rel(ga: list, gb: list) -> tuple[float, bool]:
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
    return _rel_l2(torch.cat(flat_a), torch.cat(flat_b)), equal


# --- classification ---------------------------------------------------------------------------

def classify(m: dict, bound: dict[str, float] | None) -> str:
    """The parity class of measurements ``m`` (a row's numbers), judged against ``bound``
    (the flag's declared near-exact bound; `DEFAULT_BOUND` where it declares none).

    ``forward_*`` are local (teacher-forced: each segment between QuantActs from the base's
    values, so one flipped rounding is not counted again in everything downstream),
    ``e2e_*`` end to end; both only on bit-identical state, where a stale eval cache shows
    and the drift of diverged training does not. The bound applies to the local numbers."""
    forward_exact = m["forward_frac_differ"] == 0.0 and m.get("e2e_frac_differ", 0.0) == 0.0
    if forward_exact and m["grads_equal"] and m["params_equal_after_k"]:
        return "exact"
    b = dict(DEFAULT_BOUND if bound is None else bound)
    within = (m["forward_frac_differ"] <= b.get("forward_frac_differ", 0.0)
              and m["forward_max_steps"] <= b.get("forward_max_steps", 0.0))
    if "grad_rel_diff" in b:
        within = within and max(m["grad_rel_diff"], m["input_grad_rel_diff"]) <= b[
            "grad_rel_diff"]
    if "params_rel_diff" in b:
        within = within and m["params_rel_diff"] <= b["params_rel_diff"]
    elif forward_exact and m["grads_equal"]:
        within = False  # identical forward and gradients, yet training differs: unexplained
    if within:
        return "near-exact"
    if forward_exact and not m["grads_equal"]:
        return "forward-exact-gradient-differs"
    return "differs"


def satisfies(measured: str, expected: str) -> bool:
    """Whether a measured class keeps the promise of the declared one (``exact`` keeps every
    promise; ``statistical`` is kept by anything but ``differs``; ``differs`` promises
    nothing)."""
    if measured == expected or expected == "differs":
        return True
    if measured == "exact":
        return True
    if expected == "statistical":
        return measured != "differs"
    return False


# From the strongest promise to the weakest, for combining two declarations: a gradient
# beyond the near-exact bound is a weaker promise than a bounded difference.
_WEAKNESS = ("exact", "near-exact", "forward-exact-gradient-differs", "statistical", "differs")


def pair_expectation(name: str, from_value: Any, to_value: Any) -> str:
    """Expected class of moving flag ``name`` between two values: the declared class of the
    non-legacy one; between two non-legacy values, the weaker of the two declarations
    (e.g. layernorm_newton no_grad_sqrt_grad -> no_grad: forward-exact-gradient-differs)."""
    spec = Flags.spec(name)
    ea, eb = spec.expected_parity(from_value), spec.expected_parity(to_value)
    if from_value == to_value:
        return "exact"
    if ea == "exact":
        return eb
    if eb == "exact":
        return ea
    return max(ea, eb, key=_WEAKNESS.index)


def _match(measured: str, expected: str) -> str:
    if measured == "not measured":
        return "not measured"
    if measured == expected:
        return "ok"
    return "ok (stronger)" if satisfies(measured, expected) else "MISMATCH"


# --- module flags -----------------------------------------------------------------------------

@dataclass
class Baseline:
    """The common start (calibrated state), the fixed batches and the base's trajectory."""

    cfg: ParityConfig
    flags: Flags
    state: dict
    train_batches: list
    eval_batches: list
    trajectory: _Trajectory


def prepare_baseline(cfg: ParityConfig, base_flags: Flags | None = None) -> Baseline:
    """Build and calibrate the base model, then run the schedule on it once."""
    flags = Flags.preset(cfg.base) if base_flags is None else base_flags
    model = _build(cfg, flags, None)
    opt = _optimizer(model, cfg.lr)
    model.train()
    for x, y in _batches(cfg, cfg.calib_steps, offset=1):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    state = _state(model)
    train_b, eval_b = _batches(cfg, cfg.steps, offset=2), _batches(cfg, 2, offset=3)
    traj = _trajectory(cfg, flags, state, train_b, eval_b)
    return Baseline(cfg, flags, state, train_b, eval_b, traj)


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
    b = _trajectory(cfg, flags, baseline.state, baseline.train_batches,
                    baseline.eval_batches, patch, reference=a)
    # Only forwards on bit-identical state count as forward parity: teacher-forced eval
    # batches (local: each segment from the base's values), free-running eval batches and
    # training forwards (end to end); evals after training diverged are drift.
    local, e2e, logits, drift, later = _Stats(), _Stats(), _Stats(), _Stats(), _Stats()
    for i in range(len(a.evals)):
        if _states_equal(a.states[2 * i], b.states[2 * i]):
            for j, (ra, rb) in enumerate(zip(a.evals[i], b.evals[i], strict=True)):
                every, lg = _compare(ra, rb)
                (local if j else e2e).merge(every)
                if not j:
                    logits.merge(lg)
                if i:
                    later.merge(every)
        else:
            drift.merge(_compare(a.evals[i][0], b.evals[i][0])[0])
        if i < len(a.trains) and _states_equal(a.states[2 * i + 1], b.states[2 * i + 1]):
            every, lg = _compare(a.trains[i], b.trains[i])
            e2e.merge(every)
            logits.merge(lg)
    grad_rel, grads_equal = _grads_rel(a.grads, b.grads)
    input_rel = _rel_l2(a.input_grad, b.input_grad)
    grads_equal = grads_equal and torch.equal(a.input_grad, b.input_grad)
    params_equal = all(torch.equal(a.params[k], b.params[k]) for k in a.params)
    params_rel = _rel_l2(torch.cat([v.reshape(-1) for v in a.params.values()]),
                         torch.cat([v.reshape(-1) for v in b.params.values()]))
    row = dict(
        model=cfg.model, flag=flag, scope=spec.scope, change=spec.change, base=cfg.base,
        from_value=from_value, to_value=value,
        forward_max_steps=local.max_steps, forward_frac_differ=local.frac,
        forward_elements=local.n, e2e_max_steps=e2e.max_steps, e2e_frac_differ=e2e.frac,
        logits_max_steps=logits.max_steps,
        logits_frac_differ=logits.frac, grad_rel_diff=grad_rel, input_grad_rel_diff=input_rel,
        grads_equal=grads_equal, params_equal_after_k=params_equal,
        params_rel_diff=params_rel, k_steps=len(a.trains),
        eval_drift_max_steps=drift.max_steps,
        deployment_frac_differ=b.deploy.frac, deployment_max_steps=b.deploy.max_steps,
        deployment_elements=b.deploy.n, deployment_frac_differ_base=a.deploy.frac,
        bound=json.dumps(spec.bound) if spec.bound else "",
    )
    measured = classify(row, spec.bound)
    expected = pair_expectation(flag, from_value, value)
    notes = []
    if local.n_differ:
        notes.append(f"worst local tensor {local.worst}")
    if later.n_differ and later.n_differ == local.n_differ + e2e.n_differ:
        notes.append(f"only evals after an optimizer step differ, on identical state "
                     f"({later.worst}): a stale eval cache")
    if b.deploy.n_differ:
        notes.append(f"{b.deploy.n_differ} of {b.deploy.n} requantized integers off the int64 "
                     f"reference (worst {b.deploy.worst})")
    row.update(measured_class=measured, expected_class=expected,
               match=_match(measured, expected), note="; ".join(notes),
               seconds=round(time.perf_counter() - t0, 2))
    return row


def _toggles(base: Flags, scope: str, flags: Iterable[str] | None, to: Flags | None
             ) -> list[tuple[str, Any]]:
    names = list(flags) if flags else list(Flags.names(scope))
    for n in names:
        Flags.spec(n)
    out = []
    for n in names:
        spec = Flags.spec(n)
        if spec.scope != scope:
            continue
        if to is not None:
            if getattr(to, n) != getattr(base, n):
                out.append((n, getattr(to, n)))
            continue
        values = list(spec.values())
        if spec.type is bool:  # both sides of a switch, even where every preset is off
            values += [v for v in (False, True) if v not in values]
        out.extend((n, v) for v in values if v != getattr(base, n))
    return out


def parity_table(model: str = "ivit_micro", *, base: str = "legacy", to: str | None = None,
                 flags: Iterable[str] | None = None, steps: int = 3, batch: int = 4,
                 seed: int = 0, img_size: int | None = None, loop: bool = True,
                 loop_steps: int = 3, loop_epochs: int = 1, threads: int | None = 1,
                 log: Callable[[str], None] | None = print) -> pd.DataFrame:
    """One row per (flag, value) toggled alone from preset ``base`` (to every other value of
    the flag, or, with preset ``to``, to that preset's value for each flag the two differ
    in): module flags measured on the model, loop flags from short harness runs.
    ``threads``: torch intra-op threads while measuring (restored after; one thread is
    both the fastest on these tiny tensors and immune to the thread pool's scheduling)."""
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        return _parity_table(model, base, to, flags, steps, batch, seed, img_size, loop,
                             loop_steps, loop_epochs, log)
    finally:
        torch.set_num_threads(previous)


def _parity_table(model, base, to, flags, steps, batch, seed, img_size, loop, loop_steps,
                  loop_epochs, log) -> pd.DataFrame:
    cfg = ParityConfig(model=model, base=base, steps=steps, batch=batch, seed=seed,
                       img_size=img_size)
    base_flags = Flags.preset(base)
    to_flags = Flags.preset(to) if to else None
    rows = []
    module = _toggles(base_flags, "module", flags, to_flags)
    if module:
        t0 = time.perf_counter()
        baseline = prepare_baseline(cfg, base_flags)
        if log:
            log(f"[parity] {model}: base {base} calibrated and run in "
                f"{time.perf_counter() - t0:.1f}s")
        for name, value in module:
            row = measure_flag(baseline, name, value)
            rows.append(row)
            if log:
                log(f"[parity] {model} {name}={value}: {row['measured_class']} "
                    f"(expected {row['expected_class']}) {row['match']} [{row['seconds']}s]")
    loop_t = _toggles(base_flags, "loop", flags, to_flags) if loop else []
    if loop_t:
        rows.extend(loop_parity_rows(model, base_flags, loop_t, seed=seed, img_size=img_size,
                                     steps=loop_steps, epochs=loop_epochs,
                                     batch=max(batch, 8), log=log))
    df = pd.DataFrame(rows)
    for c in PARITY_COLUMNS:
        if c not in df:
            df[c] = np.nan
    return df[PARITY_COLUMNS]


# --- loop flags -------------------------------------------------------------------------------

_LOOP_METRICS = ("train_loss", "eval_loss", "top1", "top5")  # compared across a toggle


def _loop_skip_reason(name: str, value: Any) -> str | None:
    if name == "compile_model" and value:
        if sys.platform.startswith("win"):
            return "torch.compile is not supported on this platform"
        if not torch.cuda.is_available():
            return ("not measured on CPU: torch.compile (inductor) of a micro model's first "
                    "forward+backward did not finish in 5 minutes on the 2-core reference "
                    "machine; measured where a GPU is present")
    if name == "cuda_synchronize_per_step" and not torch.cuda.is_available():
        return None  # the flag is a no-op without CUDA; measured anyway (both paths run)
    return None


def loop_parity_rows(model: str, base: Flags, toggles: list[tuple[str, Any]], *,
                     seed: int = 0, img_size: int | None = None, steps: int = 3,
                     batch: int = 8, epochs: int = 1, out_dir: str | Path | None = None,
                     log: Callable[[str], None] | None = print) -> list[dict]:
    """Loop flags from short harness runs (``epochs`` x ``steps`` steps, the same seed):
    final train/eval loss and top-1 compared bit for bit across each toggle."""
    try:
        from harness import runner
    except ImportError as exc:  # the loop lands separately
        return [_loop_row(model, base, n, v, "not measured", f"harness.runner unavailable: "
                          f"{exc}") for n, v in toggles]
    import tempfile

    tmp = tempfile.TemporaryDirectory(prefix="parity-loop-") if out_dir is None else None
    out = Path(tmp.name if tmp else out_dir)

    def spec(cfg_name: str, flags: Flags):
        return runner.RunSpec(config=cfg_name, flags=flags, model=model, dataset=dataset,
                              img_size=img_size, epochs=epochs, steps_per_epoch=steps,
                              eval_steps=2, batch_size=batch, seed=seed, device="cpu",
                              warmup_epochs=0, count_syncs="off", sched="none")

    # digits are 32x32; other sizes train on the synthetic set (bit comparison needs no labels
    # that mean anything)
    native = qvit.model_config(model)[1]["img_size"]
    dataset = "digits" if (img_size or native) == 32 else "synthetic"
    specs, skipped = {"base": spec("base", base)}, {}
    for n, v in toggles:
        why = _loop_skip_reason(n, v)
        if why:
            skipped[(n, v)] = why
        else:
            specs[(n, v)] = spec(f"{n}={v}", base.replace(**{n: v}))
    rows = []
    try:
        t0 = time.perf_counter()
        table = runner.run_sweep(list(specs.values()), out, executor="inline", progress=False)
        finals = _final_metrics(table)
        if log:
            log(f"[parity] {model}: {len(specs)} loop-flag runs in "
                f"{time.perf_counter() - t0:.1f}s")
        base_m = finals.get("base")
        for n, v in toggles:
            if (n, v) in skipped:
                rows.append(_loop_row(model, base, n, v, "not measured", skipped[(n, v)]))
                continue
            got = finals.get(f"{n}={v}")
            if base_m is None or got is None:
                rows.append(_loop_row(model, base, n, v, "not measured",
                                      "harness run failed: " + _status_text(table, n, v)))
                continue
            opt = (optimizer_step_parity(model, base, v, seed=seed, img_size=img_size)
                   if n == "fused_optimizer" else None)
            rows.append(_loop_measured_row(model, base, n, v, base_m, got, opt))
            if log:
                r = rows[-1]
                log(f"[parity] {model} {n}={v}: {r['measured_class']} "
                    f"(expected {r['expected_class']}) {r['match']}")
    finally:
        if tmp is not None:
            tmp.cleanup()
    return rows


def _final_metrics(table: pd.DataFrame) -> dict[str, dict]:
    out = {}
    for cfg_name, t in table.groupby("config"):
        t = t.sort_values("epoch")
        if (t["status"].fillna("ok") != "ok").any() or not len(t):
            continue
        last = t.iloc[-1]
        out[cfg_name] = {k: float(last[k]) for k in _LOOP_METRICS if k in t}
    return out


def _status_text(table: pd.DataFrame, n: str, v: Any) -> str:
    t = table[table["config"] == f"{n}={v}"]
    if not len(t):
        return "no rows"
    last = t.iloc[-1]
    return f"{last.get('status', '?')} {str(last.get('error', ''))[:200]}"


def _loop_row(model, base, n, v, measured, note, **numbers) -> dict:
    spec = Flags.spec(n)
    expected = pair_expectation(n, getattr(base, n), v)
    row = dict(model=model, flag=n, scope="loop", change=spec.change,
               base=base.describe(), from_value=getattr(base, n), to_value=v,
               measured_class=measured, expected_class=expected,
               match=_match(measured, expected), note=note,
               bound=json.dumps(spec.bound) if spec.bound else "")
    row.update(numbers)
    return row


def _loop_measured_row(model, base, n, v, a: dict, b: dict, optimizer: dict | None = None
                       ) -> dict:
    """Classify a loop flag from the final metrics of two harness runs. Training parity is
    judged on eval loss and top-1 (functions of the final parameters); the reported
    train_loss is an epoch mean whose summation may legitimately differ (flag 9 sums it on
    the device), so its difference is noted, not classified. ``optimizer``: the isolated
    optimizer-step measurement, for flags that act in the optimizer (fused_optimizer)."""
    keys = [k for k in ("eval_loss", "top1", "top5") if k in a]

    def same(k):
        return a[k] == b[k] or (math.isnan(a[k]) and math.isnan(b[k]))

    equal = all(same(k) for k in keys)
    notes = []
    if optimizer is not None:
        measured = optimizer["class"]
        how = "bit-identical" if optimizer["equal"] else f"rel L2 {optimizer['rel']:.3g}"
        notes.append(f"optimizer step isolated (identical gradients, {optimizer['k']} "
                     f"steps): params {how}")
        params_equal, params_rel = optimizer["equal"], optimizer["rel"]
    else:
        params_equal, params_rel = equal, (0.0 if equal else np.nan)
        if equal:
            measured = "exact"
        elif n == "num_workers":
            measured = "statistical"  # differs only through data order, by construction
        else:
            measured = "differs"
    notes.append("harness runs: final eval loss and top-1 bit-identical" if equal else
                 "harness runs: final " + ", ".join(f"{k} {a[k]:.6g} vs {b[k]:.6g}"
                                                   for k in keys if not same(k)))
    if not same("train_loss"):
        notes.append(f"reported train_loss {a['train_loss']:.9g} vs {b['train_loss']:.9g} "
                     f"(epoch mean accumulated differently)")
    return _loop_row(model, base, n, v, measured, "; ".join(notes),
                     params_equal_after_k=params_equal, params_rel_diff=params_rel)


def optimizer_step_parity(model: str, base: Flags, value: bool, *, steps: int = 3,
                          batch: int = 4, seed: int = 0, img_size: int | None = None,
                          lr: float = 1e-3, weight_decay: float = 0.05) -> dict:
    """fused_optimizer isolated: two copies of one model, the same gradients (computed on
    the first copy, copied to the second) for ``steps`` steps, the harness's optimizer built
    with ``fused`` = the base value and ``value``; parameters compared after each step."""
    from harness.loop import build_optimizer

    cfg = ParityConfig(model=model, steps=max(steps, 2), batch=batch, seed=seed,
                       img_size=img_size)
    ma, mb = _build(cfg, base, None), _build(cfg, base, None)
    mb.load_state_dict(ma.state_dict())
    dev = torch.device("cpu")
    oa = build_optimizer(ma, opt="adamw", lr=lr, weight_decay=weight_decay,
                         fused=base.fused_optimizer, device=dev)
    ob = build_optimizer(mb, opt="adamw", lr=lr, weight_decay=weight_decay, fused=value,
                         device=dev)
    ma.train()
    for x, y in _batches(cfg, steps, offset=4):
        oa.zero_grad(set_to_none=True)
        F.cross_entropy(ma(x), y).backward()
        for pa, pb in zip(ma.parameters(), mb.parameters(), strict=True):
            pb.grad = None if pa.grad is None else pa.grad.detach().clone()
        oa.step()
        ob.step()
    pa = torch.cat([p.detach().reshape(-1) for p in ma.parameters()])
    pb = torch.cat([p.detach().reshape(-1) for p in mb.parameters()])
    equal, rel = torch.equal(pa, pb), _rel_l2(pa, pb)
    bound = (Flags.spec("fused_optimizer").bound or {}).get("params_rel_diff", 0.0)
    cls = "exact" if equal else ("near-exact" if rel <= bound else "differs")
    return {"class": cls, "equal": equal, "rel": rel, "k": steps}


# --- accuracy parity ----------------------------------------------------------------------------

@dataclass(frozen=True)
class AccuracyParity:
    """The verdict of `accuracy_parity`: ``equivalent``, and how it was reached."""

    config_a: str
    config_b: str
    metric: str
    method: str  # "exact" | "tost-paired" | "tost-unpaired"
    equivalent: bool
    n: int
    mean_diff: float  # mean of a - b
    margin: float | None
    p_value: float  # TOST p (max of the two one-sided p); 0/1 for the exact check
    ci: tuple[float, float]  # the (1 - 2 alpha) interval of the difference
    detail: str = ""


def tost_paired(diffs: np.ndarray, margin: float, alpha: float = 0.05
                ) -> tuple[float, tuple[float, float]]:
    """Two one-sided t-tests of H0: |mean diff| >= margin over paired differences; returns
    (p, the 1 - 2 alpha confidence interval). Zero-spread differences are decided exactly."""
    from scipy import stats as sps

    d = np.asarray(diffs, float)
    n = len(d)
    mean = float(d.mean())
    sd = float(d.std(ddof=1)) if n > 1 else math.nan
    if n < 2 or sd == 0.0 or not math.isfinite(sd):
        inside = abs(mean) < margin and (n >= 2 or sd == 0.0)
        return (0.0 if inside else 1.0), (mean, mean)
    se = sd / math.sqrt(n)
    p_low = sps.t.sf((mean + margin) / se, n - 1)  # H0: mean <= -margin
    p_high = sps.t.cdf((mean - margin) / se, n - 1)  # H0: mean >= margin
    half = sps.t.ppf(1 - alpha, n - 1) * se
    return float(max(p_low, p_high)), (mean - half, mean + half)


def tost_unpaired(a: np.ndarray, b: np.ndarray, margin: float, alpha: float = 0.05
                  ) -> tuple[float, tuple[float, float]]:
    """Welch TOST of H0: |mean(a) - mean(b)| >= margin."""
    from scipy import stats as sps

    a, b = np.asarray(a, float), np.asarray(b, float)
    mean = float(a.mean() - b.mean())
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    se = math.sqrt(va + vb)
    if se == 0.0 or not math.isfinite(se):
        return (0.0 if abs(mean) < margin else 1.0), (mean, mean)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    p_low = sps.t.sf((mean + margin) / se, df)
    p_high = sps.t.cdf((mean - margin) / se, df)
    half = sps.t.ppf(1 - alpha, df) * se
    return float(max(p_low, p_high)), (mean - half, mean + half)


def _finals(table: pd.DataFrame, config: str, model: str | None) -> pd.DataFrame:
    t = table[table["config"] == config]
    if model is not None:
        t = t[t["model"] == model]
    if "status" in t:
        bad = t[t["status"].fillna("ok") != "ok"]
        if len(bad):
            statuses = ", ".join(sorted(map(str, set(bad["status"]))))
            raise ValueError(f"config {config!r} has failed runs ({statuses}); "
                             f"accuracy parity needs finished runs")
    if not len(t):
        raise ValueError(f"no runs of config {config!r}"
                         + (f" for model {model!r}" if model else "")
                         + f"; configs in the table: {sorted(set(table['config']))}")
    keys = [k for k in ("model", "seed", "repeat") if k in t]
    return t.sort_values("epoch").groupby(keys, dropna=False).tail(1).set_index(keys)


def _differing_flags(table: pd.DataFrame, a: str, b: str) -> dict[str, tuple]:
    out = {}
    for name in Flags.names():
        if name not in table:
            continue
        va = set(table.loc[table["config"] == a, name])
        vb = set(table.loc[table["config"] == b, name])
        if len(va) == 1 and len(vb) == 1 and va != vb:
            out[name] = (next(iter(va)), next(iter(vb)))
    return out


def accuracy_parity(table: pd.DataFrame, config_a: str, config_b: str, *,
                    metric: str = "top1", margin: float | None = None, alpha: float = 0.05,
                    exact: bool | None = None, model: str | None = None,
                    losses: tuple[str, ...] = ("eval_loss",)) -> AccuracyParity:
    """Are configs ``a`` and ``b`` of a runs table equivalent in final ``metric``?

    ``exact=True``: the final ``metric`` and ``losses`` must be identical run for run (paired
    by seed/repeat): the test for flags whose training is bit-identical. The default losses
    leave out ``train_loss``, an epoch mean whose summation is itself a loop flag
    (``loss_item_per_step``: on the device in float32 vs in Python); pass it to include it.
    ``exact=False``: a TOST equivalence test over seeds (paired where the seeds match, Welch
    otherwise): equivalent when the difference lies within +-``margin`` at level ``alpha``;
    "no significant difference" is not evidence of equivalence. ``exact=None`` picks exact
    when every flag the two configs differ in is declared ``exact``.
    """
    fa, fb = _finals(table, config_a, model), _finals(table, config_b, model)
    if exact is None:
        diff = _differing_flags(table, config_a, config_b)
        exact = bool(diff) and all(pair_expectation(n, *v) == "exact" for n, v in diff.items())
    if metric not in fa:
        raise ValueError(f"metric {metric!r} not in the table; columns: {list(fa.columns)}")
    common = fa.index.intersection(fb.index)
    if exact:
        cols = [metric] + [c for c in losses if c in fa and c != metric]
        if len(common) == 0:
            raise ValueError(f"exact parity pairs runs by seed/repeat; {config_a!r} and "
                             f"{config_b!r} share none")
        bad = []
        for c in cols:
            x, y = fa.loc[common, c].to_numpy(float), fb.loc[common, c].to_numpy(float)
            same = (x == y) | (np.isnan(x) & np.isnan(y))
            if not same.all():
                i = int(np.argmax(~same))
                bad.append(f"{c}: {x[i]!r} vs {y[i]!r} at {common[i]}")
        d = (fa.loc[common, metric].to_numpy(float) - fb.loc[common, metric].to_numpy(float))
        return AccuracyParity(config_a, config_b, metric, "exact", not bad, len(common),
                              float(np.nanmean(d)), None, 0.0 if not bad else 1.0,
                              (float(np.nanmin(d)), float(np.nanmax(d))), "; ".join(bad))
    if margin is None or not margin > 0:
        raise ValueError("an equivalence test needs margin > 0 (the largest difference in "
                         f"{metric} you accept as equivalent, e.g. 0.01 for one point)")
    if len(common) >= 2:
        d = fa.loc[common, metric].to_numpy(float) - fb.loc[common, metric].to_numpy(float)
        p, ci = tost_paired(d, margin, alpha)
        method, n, mean = "tost-paired", len(common), float(d.mean())
    else:
        xa, xb = fa[metric].to_numpy(float), fb[metric].to_numpy(float)
        if min(len(xa), len(xb)) < 2:
            raise ValueError("an equivalence test needs at least two seeds per config")
        p, ci = tost_unpaired(xa, xb, margin, alpha)
        method, n, mean = "tost-unpaired", min(len(xa), len(xb)), float(xa.mean() - xb.mean())
    eq = p < alpha
    return AccuracyParity(config_a, config_b, metric, method, eq, n, mean, margin, p, ci,
                          f"{1 - 2 * alpha:.0%} CI of {metric} difference "
                          f"[{ci[0]:.4g}, {ci[1]:.4g}] vs margin +-{margin:g}")


def assert_accuracy_parity(table: pd.DataFrame, config_a: str, config_b: str, *,
                           metric: str = "top1", margin: float | None = None,
                           alpha: float = 0.05, exact: bool | None = None,
                           model: str | None = None, losses: tuple[str, ...] = ("eval_loss",)
                           ) -> AccuracyParity:
    """`accuracy_parity`, raising AssertionError (with the numbers) when not equivalent."""
    r = accuracy_parity(table, config_a, config_b, metric=metric, margin=margin, alpha=alpha,
                        exact=exact, model=model, losses=losses)
    if not r.equivalent:
        if r.method == "exact":
            raise AssertionError(f"{config_a} vs {config_b}: final results not identical "
                                 f"({r.detail})")
        raise AssertionError(f"{config_a} vs {config_b}: {metric} not shown equivalent within "
                             f"+-{margin:g} (TOST p={r.p_value:.3g} >= {alpha}, n={r.n}, "
                             f"mean diff {r.mean_diff:.4g}; {r.detail})")
    return r


def accuracy_runs(model: str, configs: dict[str, Flags], seeds: Iterable[int], *,
                  steps: int = 4, batch: int = 16, eval_images: int = 64,
                  img_size: int | None = None, lr: float = 2e-3,
                  data: tuple[Tensor, Tensor, Tensor, Tensor] | None = None) -> pd.DataFrame:
    """A small runs table (the runner's columns: config, flags, seed, repeat, epoch, top1,
    train_loss, eval_loss, status) from in-process training on scikit-learn's digits: each
    config and seed trained ``steps`` AdamW steps from the same seeded start, then evaluated.
    For accuracy-parity tests in CI time; real tables come from `harness.runner`."""
    if data is None:
        data = _digits(img_size or qvit.model_config(model)[1]["img_size"])
    xtr, ytr, xva, yva = data
    xva, yva = xva[:eval_images], yva[:eval_images]
    rows = []
    for seed in seeds:
        g = torch.Generator().manual_seed(seed)
        order = torch.randperm(len(xtr), generator=g)[:steps * batch].view(steps, batch)
        for name, flags in configs.items():
            torch.manual_seed(seed)
            m = qvit.create_model(model, num_classes=10, img_size=img_size, flags=flags)
            opt = _optimizer(m, lr)
            m.train()
            losses = []
            for idx in order:
                loss = F.cross_entropy(m(xtr[idx]), ytr[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                losses.append(float(loss.detach()))
            m.eval()
            with torch.no_grad():
                logits = torch.cat([m(xva[i:i + batch]) for i in range(0, len(xva), batch)])
            rows.append(dict(config=name, model=model, seed=seed, repeat=seed, epoch=0,
                             top1=float((logits.argmax(1) == yva).float().mean()),
                             train_loss=float(np.mean(losses)),
                             eval_loss=float(F.cross_entropy(logits, yva)), status="ok",
                             **flags.to_dict()))
    return pd.DataFrame(rows)


def _digits(img_size: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    x = F.interpolate(x, size=(img_size, img_size), mode="bilinear", align_corners=False)
    x = ((x - 0.5) / 0.5).expand(-1, 3, -1, -1).contiguous()
    y = torch.tensor(d.target, dtype=torch.int64)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    x, y = x[perm], y[perm]
    split = int(0.8 * len(y))
    return x[:split], y[:split], x[split:], y[split:]


# --- output ---------------------------------------------------------------------------------------

def format_table(df: pd.DataFrame) -> str:
    """A readable fixed-width table of the key columns."""
    cols = ["model", "flag", "from_value", "to_value", "measured_class", "expected_class",
            "match", "forward_max_steps", "forward_frac_differ", "grad_rel_diff",
            "params_equal_after_k", "deployment_frac_differ"]
    show = df[[c for c in cols if c in df]].copy()

    def fmt(v):
        if isinstance(v, float):
            if math.isnan(v):
                return "-"
            return "0" if v == 0 else f"{v:.3g}"
        return str(v)

    show = show.map(fmt) if hasattr(show, "map") else show.applymap(fmt)
    return show.to_string(index=False)


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m harness parity",
        description="Toggle each flag alone on the same weights, ranges and inputs; measure "
                    "forward, backward, training and deployment parity; compare the class "
                    "with the flag's declaration (exit 1 on a mismatch).")
    p.add_argument("--model", action="append", default=None,
                   help="model name (repeat or comma-separate for several; default ivit_micro)")
    p.add_argument("--out", required=True, help="folder for parity.csv (one per model: "
                   "DIR/parity.csv for one model, DIR/<model>/parity.csv for several)")
    p.add_argument("--base", default="legacy", choices=qvit.PRESETS,
                   help="preset every flag is toggled from (default legacy)")
    p.add_argument("--to", default=None, choices=qvit.PRESETS,
                   help="toggle only the flags where this preset differs from --base, to its "
                        "value (a preset pair)")
    p.add_argument("--flags", default=None, help="comma-separated flags (default: all)")
    p.add_argument("--steps", type=int, default=3, help="optimizer steps k (>= 2)")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--img-size", type=int, default=None)
    p.add_argument("--no-loop", action="store_true", help="skip the loop flags")
    p.add_argument("--loop-steps", type=int, default=3, help="steps per epoch of the loop "
                   "flags' harness runs")
    p.add_argument("--loop-epochs", type=int, default=1, help="epochs of the loop flags' "
                   "harness runs (2+ also compares across an epoch boundary)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    models = [m for spec in (args.model or ["ivit_micro"]) for m in spec.split(",") if m]
    flags = [f.strip() for f in args.flags.split(",") if f.strip()] if args.flags else None
    mismatches = []
    for model in models:
        df = parity_table(model, base=args.base, to=args.to, flags=flags, steps=args.steps,
                          batch=args.batch, seed=args.seed, img_size=args.img_size,
                          loop=not args.no_loop, loop_steps=args.loop_steps,
                          loop_epochs=args.loop_epochs,
                          log=lambda s: print(s, file=sys.stderr, flush=True))
        out = Path(args.out) / model if len(models) > 1 else Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        df.to_csv(out / "parity.csv", index=False)
        print(f"\n== parity of {model} (base {args.base}"
              + (f" -> {args.to}" if args.to else "") + f"): {out / 'parity.csv'}")
        print(format_table(df))
        bad = df[df["match"] == "MISMATCH"]
        mismatches.extend(f"{model} {r.flag}={r.to_value}: measured {r.measured_class}, "
                          f"declared {r.expected_class} ({r.note})" for r in bad.itertuples())
    if mismatches:
        print("\n" + "!" * 78 + "\nPARITY MISMATCH against the flag declarations "
              "(qvit/flags.py):\n  " + "\n  ".join(mismatches) + "\n" + "!" * 78,
              file=sys.stderr)
        return 1
    print("\nevery measured flag satisfies its declared parity class")
    return 0


if __name__ == "__main__":
    sys.exit(main())
