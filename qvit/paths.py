"""What a config runs: the implementation each flag combination selects, operation by
operation, computed from `qvit.Flags` alone (no torch, no model).

`Paths.of(flags)` is the one place that resolves how flags combine: which STE form, which
requantizer, which integer exp, and so on. The modules bind from it (`QuantModule._bind`
reads only a `Paths`), and the harness reads it to know what a config runs: a flag whose
every value leaves `Paths` unchanged cannot act there (`inert`), two configs with equal
`Paths` run the same code (`why_same`). The declarations that explain each case
(``requires``, ``overrides``, ``device``, ``family`` in `qvit.flags.FlagSpec`) are held to
this function by tests/qvit/test_paths.py.

    >>> Paths.of(Flags.preset("legacy")).requant
    'chain'
    >>> sorted(inert(Flags.preset("best")))
    ['inline_ste']
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # (the declaration is read from the Flags given: flags.py imports this)
    from .flags import Flags

__all__ = ["Paths", "inert", "why_inert", "why_same", "acts", "acts_inside_step",
           "AROUND_STEP", "FAMILIES", "DEVICE_TYPES"]

FAMILIES = ("vit", "swin")  # a model family decides whether Swin-only paths exist
DEVICE_TYPES = ("cpu", "cuda")


@dataclass(frozen=True)
class Paths:
    """The implementation of each part of the work, as the modules and the loop run it.

    Module parts (what `QuantModule.paths` reports per module):

    * ``ste``: "function" (I-ViT's autograd.Function, cloning the gradient), "inline"
      (value + (x - x.detach()), seed change 4) or "lean" (the Function without the clone);
    * ``constants``: "per_call" (zero points and output units built per call) or "buffer";
    * ``eps``: "per_call" (``torch.finfo`` per call) or "constant" — host-side only;
    * ``act_quantize``: QuantAct's input quantizer, "chain" (STE primitives) or "lean";
    * ``act_range``: (scope, reduction, first-call check) of QuantAct's range observation:
      ("per_channel" | "global", "min_max" | "aminmax", "sync" | "where");
    * ``act_scale_eval``: "every_call" or "cached" (seed change 11);
    * ``requant``: "chain" (I-ViT's fixedpoint_mul), "fused" (multiplier formed once, one
      in-place multiply) or "lean" (one node, output scale folded in);
    * ``requant_float``: "float64" or "float32" (seed change 2);
    * ``multiplier``: "dyadic" (31-bit m * 2^-e, seed change 3 off) or "float";
    * ``frexp``: where the dyadic multiplier's (m, e) come from: "host" (numpy + Decimal),
      "device" (torch.frexp), "bits" (the lean node's ratio bits) or "none";
    * ``weight_eval``: "every_call" or "cached" (seed change 10);
    * ``weight_range``: "min_max" or "amin_amax"; ``rescale``: "copy" or "in_place";
    * ``int_exp``: IntSoftmax/IntGELU as "chain", "fused" or "lean";
    * ``exp_x0_eval``: "every_call" or "cached" (seed change 12);
    * ``layernorm``: "chain" or "lean"; ``newton``: the Newton sqrt's gradient: "ste"
      (the STE chain), "no_grad" (none), "node" (one node replaying the chain's), or
      "in_layernorm" (inside the lean LayerNorm node, the chain's gradient);
    * ``layernorm_bias``: "frozen" (I-ViT: the bias's integers are detached, no gradient) or
      "straight_through" (flag layernorm_bias_grad: the floor's STE passes one);
    * ``rel_pos_bias_eval``: "every_call", "cached" (seed change 13) or "absent" (no
      relative position bias: not a Swin).

    Loop parts: ``cuda_sync`` ("every_step" | "none" | "no_op": not CUDA), ``loss_read``,
    ``grad_scaler``, ``plot_every``, ``data`` ("preloaded" | "dataloader"), ``workers`` (the
    DataLoader's, None without one), ``optimizer`` ("fused" | "loop"), ``compiled`` (what
    `qvit.compile.compile_model` compiles: "block" | "model" | "none"), ``cuda_graphs``
    ("replay" | "none" | "no_op": not CUDA).
    """

    ste: str
    constants: str
    eps: str
    act_quantize: str
    act_range: tuple[str, str, str]
    act_scale_eval: str
    requant: str
    requant_float: str
    multiplier: str
    frexp: str
    weight_eval: str
    weight_range: str
    rescale: str
    int_exp: str
    exp_x0_eval: str
    layernorm: str
    newton: str
    layernorm_bias: str
    rel_pos_bias_eval: str
    cuda_sync: str
    loss_read: str
    grad_scaler: bool
    plot_every: int
    data: str
    workers: int | None
    optimizer: str
    compiled: str
    cuda_graphs: str

    @classmethod
    def of(cls, flags: Flags, *, device_type: str | None = None, family: str | None = None
           ) -> Paths:
        """The paths of ``flags``; ``device_type`` ("cpu", "cuda") and ``family`` ("vit",
        "swin"), when given, also resolve what only exists on CUDA or in Swin."""
        if device_type is not None and device_type not in DEVICE_TYPES:
            raise ValueError(f"device_type must be one of {DEVICE_TYPES}, got {device_type!r}")
        if family is not None and family not in FAMILIES:
            raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")
        return _paths(flags, device_type, family)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def diff(self, other: Paths) -> dict[str, tuple[Any, Any]]:
        return {k: (v, getattr(other, k)) for k, v in self.to_dict().items()
                if getattr(other, k) != v}


@functools.lru_cache(maxsize=4096)
def _paths(f: Flags, device_type: str | None, family: str | None) -> Paths:
    lean_requant = f.requant_impl == "lean"
    if not f.use_frexp:
        frexp = "none"
    elif lean_requant:
        frexp = "bits"
    elif f.requant_impl == "reference":
        frexp = "host"
    else:  # device_frexp, fused
        frexp = "device"
    if f.layernorm_impl == "lean":
        # the lean node carries the chain's gradient through the sqrt (ste and
        # no_grad_sqrt_grad are bit-identical) or none (no_grad)
        newton = "no_grad" if f.layernorm_newton == "no_grad" else "in_layernorm"
    else:
        newton = {"ste": "ste", "no_grad": "no_grad", "no_grad_sqrt_grad": "node"}[
            f.layernorm_newton]
    return Paths(
        ste="lean" if f.ste_impl == "lean" else "inline" if f.inline_ste else "function",
        constants="buffer" if f.reuse_constant_tensors else "per_call",
        eps="constant" if f.eps_constant else "per_call",
        act_quantize="lean" if lean_requant else "chain",
        act_range=("global" if f.global_act_minmax else "per_channel",
                   "aminmax" if f.act_aminmax else "min_max",
                   "where" if f.act_init_without_sync else "sync"),
        act_scale_eval="cached" if f.cache_eval_act_scale else "every_call",
        requant={"reference": "chain", "device_frexp": "chain"}.get(f.requant_impl,
                                                                    f.requant_impl),
        requant_float="float64" if f.fp64_fixedpoint else "float32",
        multiplier="dyadic" if f.use_frexp else "float",
        frexp=frexp,
        weight_eval="cached" if f.cache_eval_weights else "every_call",
        weight_range="amin_amax" if f.linear_impl == "lean" else "min_max",
        rescale="in_place" if f.linear_impl == "lean" else "copy",
        int_exp={"reference": "chain"}.get(f.int_exp_impl, f.int_exp_impl),
        # (keyed on the activation scales: only kept where QuantAct keeps them)
        exp_x0_eval="cached" if f.cache_exp_x0 and f.cache_eval_act_scale else "every_call",
        layernorm="lean" if f.layernorm_impl == "lean" else "chain",
        newton=newton,
        layernorm_bias="straight_through" if f.layernorm_bias_grad else "frozen",
        rel_pos_bias_eval=("absent" if family == "vit" else
                           "cached" if f.cache_rel_pos_bias and f.cache_eval_act_scale
                           else "every_call"),
        cuda_sync=("no_op" if device_type == "cpu" else
                   "every_step" if f.cuda_synchronize_per_step else "none"),
        loss_read="every_step" if f.loss_item_per_step else "epoch_end",
        grad_scaler=f.grad_scaler_without_autocast,
        plot_every=f.plot_every,
        data="preloaded" if f.preload_to_device else "dataloader",
        workers=None if f.preload_to_device else f.num_workers,
        optimizer="fused" if f.fused_optimizer else "loop",
        compiled=f.compile_scope if f.compile_model else "none",
        cuda_graphs=("no_op" if device_type == "cpu" else
                     "replay" if f.compile_model and f.compile_cuda_graphs else "none"),
    )


def acts(flags: Flags, name: str, *, device_type: str | None = None,
         family: str | None = None) -> bool:
    """Whether flag ``name`` can act in ``flags``: some other value of it changes the
    paths (with everything else as it is)."""
    here = Paths.of(flags, device_type=device_type, family=family)
    current = getattr(flags, name)
    return any(Paths.of(flags.replace(**{name: v}), device_type=device_type, family=family)
               != here for v in _values(flags, name) if v != current)


def inert(flags: Flags, *, device_type: str | None = None, family: str | None = None
          ) -> dict[str, str]:
    """``{flag: why}`` for every flag that cannot act in ``flags``."""
    return {n: why_inert(flags, n, device_type=device_type, family=family)
            for n in type(flags).names() if not acts(flags, n, device_type=device_type,
                                               family=family)}


def why_inert(flags: Flags, name: str, value: Any = None, *, device_type: str | None = None,
              family: str | None = None) -> str:
    """Why flag ``name`` (at ``value``, default its value in ``flags``) cannot act in
    ``flags``, from the declarations: an unmet ``requires``, another flag's ``overrides``,
    a device or model family. One phrase, e.g. "ste_impl=lean overrides it (every STE is
    the lean Function)"."""
    spec = type(flags).spec(name)
    value = getattr(flags, name) if value is None else value
    reasons = []
    if spec.device is not None and device_type is not None and device_type != spec.device:
        reasons.append(f"it acts on {spec.device.upper()} only")
    if spec.family is not None and family is not None and family != spec.family:
        reasons.append(f"it acts in {spec.family} models only")
    # the requirement of this value, of every value, or (where this value needs nothing)
    # of the values it could move to
    keys = [value, "*"] + [k for k in spec.requires if k not in (value, "*")]
    for key in keys:
        for other, allowed in spec.requires.get(key, {}).items():
            if getattr(flags, other) not in allowed:
                need = " or ".join(f"{other}={_fmt(v)}" for v in allowed)
                what = name if key == "*" else f"{name}={_fmt(key)}"
                reasons.append(f"{what} needs {need}")
    for o in type(flags).specs():
        note = o.overrides.get(getattr(flags, o.name), {}).get(name)
        if note is not None:
            reasons.append(f"{o.name}={_fmt(getattr(flags, o.name))} overrides it ({note})")
    return "; ".join(reasons) or "no value of it changes what runs here"


def why_same(base: Flags, other: Flags, *, device_type: str | None = None,
             family: str | None = None) -> str | None:
    """Why configs ``base`` and ``other`` run the same code (so a report shows "no effect
    possible with these flags", not a ratio of noise), naming the flags that differ and
    why each cannot act; None if their paths differ."""
    kw = dict(device_type=device_type, family=family)
    if Paths.of(base, **kw) != Paths.of(other, **kw):
        return None
    moved = base.diff(other)
    if not moved:
        return "no flag differs"
    return "; ".join(f"{n}: {why_inert(other, n, **kw)}" for n in sorted(moved))


# Loop parts whose work happens around a training step (data, host reads, syncs, plots,
# the scaler's bookkeeping); every other part is the step's compute, which the
# step-interleaved method measures.
AROUND_STEP = frozenset({"cuda_sync", "loss_read", "grad_scaler", "plot_every", "data",
                         "workers"})


def acts_inside_step(base: Flags, other: Flags, *, device_type: str | None = None,
                     family: str | None = None) -> bool:
    """Whether moving from ``base`` to ``other`` can change one training step's compute:
    some part that runs inside the step differs (equal flags, an A/A control, count as
    acting: the control is measured like any config)."""
    if base == other:
        return True
    kw = dict(device_type=device_type, family=family)
    return bool(set(Paths.of(base, **kw).diff(Paths.of(other, **kw))) - AROUND_STEP)


def _values(flags: Flags, name: str) -> tuple[Any, ...]:
    spec = type(flags).spec(name)
    if spec.type is bool:
        return (False, True)
    if spec.choices is not None:
        return spec.choices
    # ints: the declared values and one more (a plot period or a worker count)
    return tuple(sorted({spec.legacy, spec.seed, spec.best, 0 if spec.name == "num_workers"
                         else 2}))


def _fmt(v: Any) -> str:
    return str(v).lower() if isinstance(v, bool) else str(v)
