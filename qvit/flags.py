"""Every optimization as a flag, declared once.

`Flags` is a frozen dataclass with one field per flag. Each field carries its metadata
(`FlagSpec`): the seed change it comes from, where it acts (``module`` code in qvit or the
training ``loop`` in harness), its legacy / seed / best values, the parity we expect when it
is toggled, one line of help, and how it depends on the others: what it ``requires`` to act,
what it ``overrides``, and the device or model family it needs. The seed's changes keep their
own flags; our own implementations are one choice per operation (``*_impl``, each value a
path in ``qvit/ops/<operation>.py``). `qvit.paths` resolves what a combination runs, and
`Flags.parse` refuses a flag named that cannot act there. Models, the harness loop,
ablation designs and reports all read this one declaration; adding a flag touches this file,
`qvit.paths`, its two code paths and its parity test.

    >>> Flags.preset("legacy").use_frexp
    True
    >>> Flags.parse("seed,use_frexp=true").use_frexp
    True
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

__all__ = ["FlagSpec", "Flags", "PARITY_CLASSES", "PRESETS", "RENAMED", "SCOPES", "markdown_table",
           "renamed_table", "migrate"]

# What toggling a flag may do to the numbers, from strongest to weakest guarantee.
PARITY_CLASSES = (
    "exact",  # forward, gradients and parameters after training steps bit-identical
    "forward-exact-gradient-differs",  # eval forward bit-identical, gradients differ
    "near-exact",  # differs within a declared bound (e.g. 1 LSB on a tiny fraction)
    "statistical",  # only the distribution of results is the same (e.g. data order)
    "differs",  # changes the numbers; not an optimization in the parity sense
)
SCOPES = ("module", "loop")
PRESETS = ("legacy", "seed", "best", "fastest")


@dataclass(frozen=True)
class FlagSpec:
    """Metadata of one flag. ``parity`` maps each non-legacy value to its expected class."""

    name: str
    type: type
    change: int | None  # seed change number (FLAGS.md); None for our own beyond-seed flags
    scope: Literal["module", "loop"]
    legacy: Any
    seed: Any
    best: Any
    fastest: Any  # the fast exact path: best, compiled (best's value unless declared)
    parity: dict[Any, str]
    help: str
    choices: tuple[Any, ...] | None = None
    # Bound for "near-exact": the largest fraction of requantized elements allowed to differ,
    # and the largest difference in quantization steps; for gradients, relative L2.
    bound: dict[str, float] | None = None
    # What the flag needs to act, per value ("*": every value): {value: {flag: allowed}}
    requires: dict[Any, dict[str, tuple]] = dataclasses.field(default_factory=dict)
    # Flags that this flag's value leaves unable to act: {value: {flag: why}}
    overrides: dict[Any, dict[str, str]] = dataclasses.field(default_factory=dict)
    device: str | None = None  # acts on this device type only ("cuda")
    family: str | None = None  # acts in this model family only ("swin")

    def expected_parity(self, value: Any) -> str:
        """Expected parity class when moving this flag from its legacy value to ``value``."""
        if value == self.legacy:
            return "exact"
        if value in self.parity:
            return self.parity[value]
        if "*" in self.parity:
            return self.parity["*"]
        raise ValueError(f"flag {self.name!r} declares no parity for value {value!r}")

    def values(self) -> tuple[Any, ...]:
        """The values the flag takes in ablations: its choices, or legacy/seed/best."""
        if self.choices is not None:
            return self.choices
        seen: list[Any] = []
        for v in (self.legacy, self.seed, self.best):
            if v not in seen:
                seen.append(v)
        return tuple(seen)


_AS_BEST = object()


def _flag(*, change, scope, legacy, seed, best, parity, help, choices=None, bound=None,
          requires=None, overrides=None, device=None, family=None, fastest=_AS_BEST):
    # The field default is the `best` value: a plain `Flags()` is what we recommend.
    meta = dict(change=change, scope=scope, legacy=legacy, seed=seed, best=best,
                fastest=best if fastest is _AS_BEST else fastest,
                parity=parity if isinstance(parity, dict) else {"*": parity},
                help=help, choices=choices, bound=bound, requires=requires or {},
                overrides=overrides or {}, device=device, family=family)
    return dataclasses.field(default=best, metadata={"qvit": meta})


def _seed_change(change: int, help: str, **kw):
    # a seed change that keeps the numbers: off in legacy, on in seed and best, exact
    return _flag(change=change, scope="module", legacy=False, seed=True, best=True,
                 parity="exact", help=help, **kw)


def _impl(choices: tuple[str, ...], help: str, **kw):
    # one of our implementations of an operation: "reference" in legacy and seed, the last
    # (fastest) choice in best, every choice the same bits
    return _flag(change=None, scope="module", legacy="reference", seed="reference",
                 best=choices[-1], choices=choices, parity="exact", help=help, **kw)


def _ours(help: str):
    # beyond the seed, keeping the numbers: off in legacy and seed, on in best, exact
    return _flag(change=None, scope="module", legacy=False, seed=False, best=True,
                 parity="exact", help=help)


@dataclass(frozen=True)
class Flags:
    """All optimization flags of qvit and its training loop. Defaults are the `best` preset."""

    # --- module flags (qvit) ------------------------------------------------------------
    fp64_fixedpoint: bool = _flag(
        change=2, scope="module", legacy=True, seed=False, best=True, parity="near-exact",
        bound={"forward_frac_differ": 1e-3, "forward_max_steps": 1.0},
        help="dyadic requantization (fixedpoint_mul) in float64 instead of float32")
    use_frexp: bool = _flag(
        change=3, scope="module", legacy=True, seed=False, best=True, parity="near-exact",
        bound={"forward_frac_differ": 1e-3, "forward_max_steps": 1.0},
        help="requantize by an integer mantissa and shift (frexp, 31 bits) instead of one "
             "float multiply")
    inline_ste: bool = _seed_change(
        4, "straight-through estimators as x + (f(x) - x).detach() instead of "
           "autograd.Function classes")
    layernorm_newton: str = _flag(
        change=5, scope="module", legacy="ste", seed="no_grad", best="no_grad_sqrt_grad",
        choices=("ste", "no_grad", "no_grad_sqrt_grad"),
        parity={"no_grad": "forward-exact-gradient-differs", "no_grad_sqrt_grad": "exact"},
        bound={"forward_frac_differ": 0.0, "forward_max_steps": 0.0, "grad_rel_diff": 1e-5},
        help="IntLayerNorm's integer Newton sqrt: under autograd with floor STE, under "
             "no_grad (drops the std gradient), or under no_grad in one autograd node whose "
             "backward replays the STE chain's (same bits)")
    global_act_minmax: bool = _seed_change(
        6, "QuantAct running range from x.min()/x.max() instead of per-channel "
           "reshape/transpose then reduce")
    reuse_constant_tensors: bool = _seed_change(
        7, "constants (zero point, output scales, sqrt(dim)) as buffers instead of "
           "torch.tensor(...).to(device) per call")
    cache_eval_weights: bool = _seed_change(
        10, "in eval, quantize weights once per weight change instead of every batch")
    cache_eval_act_scale: bool = _seed_change(
        11, "QuantAct recomputes its scale only while collecting statistics, not in eval")
    # (keyed on activation scales, which QuantAct replaces on every eval call unless
    # cache_eval_act_scale keeps them: without it these caches never hit)
    cache_exp_x0: bool = _seed_change(
        12, "IntGELU/IntSoftmax cache x0_int = floor(-1/scale) in eval",
        requires={True: {"cache_eval_act_scale": (True,)}})
    cache_rel_pos_bias: bool = _seed_change(
        13, "Swin attention caches the gathered quantized relative position bias in eval",
        family="swin", requires={True: {"cache_eval_act_scale": (True,)}})
    eps_constant: bool = _seed_change(
        15, "float32 eps as a module constant instead of torch.finfo(...) per call")
    act_init_without_sync: bool = _ours(
        "QuantAct's first-call check min==max on the device (torch.where) instead of "
        "`if torch.eq(min, max).all()`, a host sync per call")
    act_aminmax: bool = _ours(
        "QuantAct's batch range by one torch.aminmax pass instead of min() then max()")
    layernorm_bias_grad: bool = _flag(
        change=None, scope="module", legacy=False, seed=False, best=False, parity="differs",
        help="IntLayerNorm's bias receives its straight-through gradient (through the floor "
             "of bias / weight / scale, the weight there detached); off: I-ViT's frozen bias "
             "(its forward reads bias.data.detach(): the LayerNorm biases never train)")
    # --- our implementations: one choice per operation (qvit/ops/<operation>.py) ----------
    ste_impl: str = _impl(
        ("reference", "lean"),
        "straight-through estimators: reference (as inline_ste chooses: I-ViT's "
        "autograd.Function or the seed's inline form) or lean (a Function whose backward "
        "passes the gradient on without the legacy clone() and whose quantize forward "
        "rounds in place); same values forward and backward",
        overrides={"lean": {"inline_ste": "every STE is the lean Function"}})
    requant_impl: str = _impl(
        ("reference", "device_frexp", "fused", "lean"),
        "QuantAct's requantizer: reference (I-ViT's fixedpoint_mul; its frexp by numpy + "
        "Decimal on the host), device_frexp (the same, frexp by torch.frexp on the "
        "tensor's device: no host round trip), fused (device frexp; the dyadic m * 2^-e "
        "formed once per channel, one multiply rounded in place) or lean (quantizer and "
        "requantizer as one autograd node each: the multiplier from the float bits of the "
        "scale ratio, one pass, the output scale folded in); same bits",
        requires={"device_frexp": {"use_frexp": (True,)}})
    int_exp_impl: str = _impl(
        ("reference", "fused", "lean"),
        "IntSoftmax and IntGELU: reference (the STE chain), fused (one autograd.Function "
        "each: the integer forward under no_grad, backward the chain's operations in "
        "autograd's order) or lean (one node each, in place, 2^k from exponent bits, float "
        "masks, the row max by amax and its first index, the output scale folded in); "
        "same bits")
    layernorm_impl: str = _impl(
        ("reference", "lean"),
        "IntLayerNorm: reference (the STE chain around the Newton sqrt) or lean (one "
        "autograd node with its Newton sqrt, in place, backward the chain's formulas in "
        "its order); same bits",
        overrides={"lean": {"layernorm_newton": "ste and no_grad_sqrt_grad run as one node "
                                                "with the same gradient"}})
    linear_impl: str = _impl(
        ("reference", "lean"),
        "QuantLinear/QuantConv2d/QuantMatMul: reference or lean (the weight's per-channel "
        "range by amin/amax, no indices; the product rescaled in place, no second "
        "full-size buffer); same bits")
    # --- loop flags (harness) -----------------------------------------------------------
    cuda_synchronize_per_step: bool = _flag(
        change=8, scope="loop", legacy=True, seed=False, best=False, parity="exact",
        device="cuda", help="torch.cuda.synchronize() after every step")
    loss_item_per_step: bool = _flag(
        change=9, scope="loop", legacy=True, seed=False, best=False, parity="exact",
        help="loss.item() every step instead of a device-side sum read once per epoch")
    grad_scaler_without_autocast: bool = _flag(
        change=14, scope="loop", legacy=True, seed=False, best=False, parity="exact",
        help="timm NativeScaler (GradScaler) with no autocast: an inf/NaN scan of all grads")
    plot_every: int = _flag(
        change=16, scope="loop", legacy=1, seed=5, best=5, parity="exact",
        help="write learning-curve plots every N epochs (and after the last)")
    num_workers: int = _flag(
        change=2, scope="loop", legacy=8, seed=4, best=4, parity="statistical",
        requires={"*": {"preload_to_device": (False,)}},
        help="DataLoader worker processes")
    fused_optimizer: bool = _flag(
        change=None, scope="loop", legacy=False, seed=False, best=True, parity="near-exact",
        bound={"params_rel_diff": 1e-5},
        help="optimizer step as one fused/foreach kernel instead of a per-parameter loop")
    preload_to_device: bool = _flag(
        change=None, scope="loop", legacy=False, seed=False, best=True, parity="exact",
        help="keep a dataset that fits on the device and index batches there (no DataLoader)")
    compile_model: bool = _flag(
        change=None, scope="loop", legacy=False, seed=False, best=False, fastest=True,
        parity="exact",
        help="torch.compile the model (`qvit.compile.compile_model`, as compile_scope says) "
             "with the run's compile_backend, by default qvit_inductor (inductor with aten's "
             "float sums, frexp, random numbers and accumulating index_put, no pattern "
             "rewrites or layout optimization, backward traced for eager's gradient layout; "
             "plain inductor is not exact); one graph per mode and block structure, "
             "no graph break (eval caches bypassed while tracing); compile time falls in the "
             "warm-up epoch, less once inductor's on-disk cache holds the graphs; a float "
             "reference compiles whole with the run's float_compile_backend")
    compile_scope: str = _flag(
        change=None, scope="loop", legacy="block", seed="block", best="block",
        choices=("block", "model"), parity="exact",
        requires={"*": {"compile_model": (True,)}},
        help="what compile_model compiles: block (PyTorch's regional compilation: each "
             "transformer block, patch merging and the patch embedding on its own; blocks of "
             "one structure share one compiled graph per mode, so the cold start is a "
             "block's, not the depth's) or model (the whole model as one graph per mode)")
    compile_cuda_graphs: bool = _flag(
        change=None, scope="loop", legacy=False, seed=False, best=False, fastest=True,
        parity="exact", device="cuda", requires={"*": {"compile_model": (True,)}},
        help="the compiled graphs replayed as CUDA graphs (torch.compile's "
             "mode=\"reduce-overhead\"): one launch per graph instead of one per kernel; "
             "a best step reads nothing on the host, so nothing breaks the replay")

    _SPECS: ClassVar[dict[str, FlagSpec]]

    # --- validation -----------------------------------------------------------------------
    def __post_init__(self):
        for spec in self.specs():
            value = getattr(self, spec.name)
            if spec.type is bool and not isinstance(value, bool):
                raise ValueError(f"flag {spec.name!r} must be True or False, got {value!r}")
            if spec.type is int and (isinstance(value, bool) or not isinstance(value, int)):
                raise ValueError(f"flag {spec.name!r} must be an int, got {value!r}")
            if spec.choices is not None and value not in spec.choices:
                raise ValueError(
                    f"flag {spec.name!r} must be one of {', '.join(map(repr, spec.choices))}; "
                    f"got {value!r}{_closest(str(value), [str(c) for c in spec.choices])}")
            if spec.name in ("plot_every",) and value < 1:
                raise ValueError(f"flag 'plot_every' must be >= 1, got {value}")
            if spec.name == "num_workers" and value < 0:
                raise ValueError(f"flag 'num_workers' must be >= 0, got {value}")

    # --- declaration access ---------------------------------------------------------------
    @classmethod
    def specs(cls, scope: str | None = None) -> tuple[FlagSpec, ...]:
        """Every flag's metadata, in declaration order; optionally only one scope."""
        if scope is not None and scope not in SCOPES:
            raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")
        return tuple(s for s in cls._SPECS.values() if scope is None or s.scope == scope)

    @classmethod
    def spec(cls, name: str) -> FlagSpec:
        """The metadata of flag ``name``; an unknown name raises with the closest match."""
        try:
            return cls._SPECS[name]
        except KeyError:
            if name in RENAMED:
                raise ValueError(f"flag {name!r} is now {RENAMED[name]} (one choice per "
                                 f"operation since qvit 0.2; docs/flags.md lists every "
                                 f"flag)") from None
            raise ValueError(f"unknown flag {name!r}{_closest(name, list(cls._SPECS))}; "
                             f"valid flags: {', '.join(cls._SPECS)}") from None

    @classmethod
    def names(cls, scope: str | None = None) -> tuple[str, ...]:
        return tuple(s.name for s in cls.specs(scope))

    # --- construction ---------------------------------------------------------------------
    @classmethod
    def preset(cls, name: str) -> Flags:
        """``legacy`` (the seed's Before), ``seed`` (its After), ``best`` (ours, eager) or
        ``fastest`` (best compiled: the fast exact path)."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}{_closest(name, list(PRESETS))}; "
                             f"valid presets: {', '.join(PRESETS)}")
        return cls(**{s.name: getattr(s, name) for s in cls.specs()})

    @classmethod
    def parse(cls, text: str | Flags | None) -> Flags:
        """Parse ``"preset[,name=value,...]"``; without a preset the overrides apply to best.
        A flag named here that cannot act with the others (`qvit.paths.acts`) is refused,
        saying what it needs or what overrides it.

        >>> Flags.parse("seed,use_frexp=true,plot_every=1").plot_every
        1
        """
        if text is None:
            return cls()
        if isinstance(text, Flags):
            return text
        if not isinstance(text, str):
            raise ValueError(f"flags must be a string like 'seed,use_frexp=true', got {text!r}")
        parts = [p.strip() for p in text.split(",") if p.strip()]
        base = cls()
        if parts and "=" not in parts[0]:
            base = cls.preset(parts.pop(0))
        overrides = {}
        for part in parts:
            if "=" not in part:
                raise ValueError(f"expected name=value after the preset, got {part!r} "
                                 f"(a preset may only come first: {', '.join(PRESETS)})")
            name, raw = (s.strip() for s in part.split("=", 1))
            overrides[name] = cls.coerce(name, raw)
        flags = base.replace(**overrides)
        from .paths import Paths, acts, why_inert

        for name, value in overrides.items():
            # refused: a value that runs what the preset's value runs, or a flag that no
            # value moves here
            was = getattr(base, name)
            same = (not acts(flags, name) if value == was
                    else Paths.of(flags) == Paths.of(flags.replace(**{name: was})))
            if same:
                raise ValueError(f"{name}={_fmt(value)} cannot act in {text!r}: "
                                 f"{why_inert(flags, name)}")
        return flags

    @classmethod
    def coerce(cls, name: str, raw: Any) -> Any:
        """Convert ``raw`` (a string from a CLI or spec, or a value) to flag ``name``'s type."""
        spec = cls.spec(name)
        if not isinstance(raw, str):
            if spec.type is bool and raw in (0, 1) and not isinstance(raw, bool):
                return bool(raw)
            return raw
        text = raw.strip()
        if spec.type is bool:
            table = {"true": True, "1": True, "false": False, "0": False}
            if text.lower() not in table:
                raise ValueError(f"flag {name!r} takes true/false (or 1/0), got {raw!r}")
            return table[text.lower()]
        if spec.type is int:
            try:
                return int(text)
            except ValueError:
                raise ValueError(f"flag {name!r} takes an integer, got {raw!r}") from None
        return text

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Flags:
        """Flags from a recorded ``to_dict()`` (a design.json, a table row), spellings of
        earlier versions migrated (`migrate`)."""
        return cls(**migrate(d))

    def paths(self, **context: Any) -> Any:
        """What this config runs (`qvit.paths.Paths.of`; ``device_type``, ``family``)."""
        from .paths import Paths

        return Paths.of(self, **context)

    def replace(self, **overrides: Any) -> Flags:
        """A copy with some flags changed; unknown names raise with the closest match."""
        for name in overrides:
            self.spec(name)
        return dataclasses.replace(self, **overrides)

    # --- reporting --------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {s.name: getattr(self, s.name) for s in self.specs()}

    def __iter__(self) -> Iterator[tuple[str, Any]]:
        return iter(self.to_dict().items())

    def digest(self) -> str:
        """A short stable hash of all values, for naming runs and caching results."""
        blob = json.dumps(self.to_dict(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]

    def diff(self, other: Flags) -> dict[str, tuple[Any, Any]]:
        """``{name: (self_value, other_value)}`` for every flag that differs."""
        return {n: (v, getattr(other, n)) for n, v in self if getattr(other, n) != v}

    def describe(self) -> str:
        """Preset name if this equals one, else the shortest ``preset,k=v`` spelling."""
        best_text = None
        for p in PRESETS:
            d = Flags.preset(p).diff(self)
            text = ",".join([p] + [f"{k}={_fmt(v[1])}" for k, v in d.items()])
            if best_text is None or len(text) < len(best_text):
                best_text = text
        return best_text


def markdown_table() -> str:
    """The flag table of docs/flags.md, rendered from the declaration (a test keeps it
    equal): values per preset, parity, what each flag needs, what it overrides, and the
    presets it can act in (`qvit.paths.acts`)."""
    from .paths import acts

    rows = ["| flag | seed change | scope | legacy | seed | best | fastest | expected parity | "
            "needs | overrides | acts in | what |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for s in Flags.specs():
        parity = ", ".join(f"{_fmt(v)}: {c}" if v != "*" else c for v, c in s.parity.items())
        needs = [f"{'' if v == '*' else f'{_fmt(v)}: '}"
                 + " and ".join(f"{o}={'/'.join(map(_fmt, a))}" for o, a in req.items())
                 for v, req in s.requires.items()]
        needs += [f"{s.device.upper()}" for _ in [0] if s.device] + [
            f"a {s.family} model" for _ in [0] if s.family]
        over = [f"{_fmt(v)}: " + "; ".join(f"{o} ({why})" for o, why in o_map.items())
                for v, o_map in s.overrides.items()]
        where = [p for p in PRESETS if acts(Flags.preset(p), s.name)]
        rows.append(f"| `{s.name}` | {s.change if s.change is not None else 'beyond'} | "
                    f"{s.scope} | {_fmt(s.legacy)} | {_fmt(s.seed)} | {_fmt(s.best)} | "
                    f"{_fmt(s.fastest)} | {parity} | {'; '.join(needs) or '-'} | "
                    f"{'; '.join(over) or '-'} | {', '.join(where) or 'none'} | {s.help} |")
    return "\n".join(rows)


def renamed_table() -> str:
    """The old spellings of docs/flags.md, rendered from `RENAMED` (a test keeps it equal)."""
    rows = ["| qvit 0.1 flag | today |", "|---|---|"]
    rows += [f"| `{old}=true` | `{new}` |" for old, new in RENAMED.items()]
    return "\n".join(rows)


# Flags of qvit 0.1 that became values of one choice per operation, and their new spelling
RENAMED = {
    "ste_lean": "ste_impl=lean", "requant_fused": "requant_impl=fused",
    "frexp_on_device": "requant_impl=device_frexp", "lean_quant_act": "requant_impl=lean",
    "fused_int_softmax": "int_exp_impl=fused", "fused_int_gelu": "int_exp_impl=fused",
    "lean_int_exp": "int_exp_impl=lean", "lean_layernorm": "layernorm_impl=lean",
    "lean_linear": "linear_impl=lean",
}


def migrate(d: dict[str, Any]) -> dict[str, Any]:
    """A flags dict recorded by qvit 0.1 (`RENAMED`), as the flags that run the same code
    today; a dict without old names is returned as it is. 0.1's lean QuantAct forced the
    range flags on (they are set so); a 0.1 combination that no choice expresses (fused
    requantization with the host frexp, one of the two fused exps alone, a lean STE with
    per-call zero points) raises a ValueError naming it."""
    if not any(k in d for k in RENAMED):
        return d
    d = dict(d)
    old = {k: bool(d.pop(k)) for k in RENAMED if k in d}
    frexp, fp64 = d.get("use_frexp", True), d.get("fp64_fixedpoint", True)

    def unexpressible(what: str) -> ValueError:
        return ValueError(f"a qvit 0.1 config with {what} runs no path of qvit 0.2; "
                          f"re-run it with today's flags (docs/flags.md)")

    if old.get("lean_quant_act") and fp64 and frexp:
        d["requant_impl"] = "lean"
        d.update(global_act_minmax=True, act_aminmax=True, act_init_without_sync=True)
    elif old.get("requant_fused"):
        if frexp and not old.get("frexp_on_device"):
            raise unexpressible("requant_fused and the host frexp")
        d["requant_impl"] = "fused"
    else:
        d["requant_impl"] = ("device_frexp" if old.get("frexp_on_device") and frexp
                             else "reference")
    fused = (old.get("fused_int_softmax", False), old.get("fused_int_gelu", False))
    if old.get("lean_int_exp"):
        d["int_exp_impl"] = "lean"
    elif fused[0] != fused[1]:
        raise unexpressible("one of fused_int_softmax / fused_int_gelu alone")
    else:
        d["int_exp_impl"] = "fused" if fused[0] else "reference"
    d["layernorm_impl"] = ("lean" if old.get("lean_layernorm")
                           and d.get("layernorm_newton") != "no_grad" else "reference")
    d["linear_impl"] = "lean" if old.get("lean_linear") else "reference"
    if old.get("ste_lean") and not d.get("reuse_constant_tensors", True):
        raise unexpressible("ste_lean and reuse_constant_tensors=false")
    d["ste_impl"] = "lean" if old.get("ste_lean") else "reference"
    return d


def _fmt(v: Any) -> str:
    return str(v).lower() if isinstance(v, bool) else str(v)


def _closest(name: str, options: list[str]) -> str:
    match = difflib.get_close_matches(name, options, n=1)
    return f" (did you mean {match[0]!r}?)" if match else ""


def _build_specs() -> dict[str, FlagSpec]:
    specs = {}
    hints = {"bool": bool, "int": int, "str": str}
    for f in dataclasses.fields(Flags):
        meta = f.metadata["qvit"]
        specs[f.name] = FlagSpec(name=f.name, type=hints[f.type], **meta)
        bad_parity = any(c not in PARITY_CLASSES for c in meta["parity"].values())
        if meta["scope"] not in SCOPES or bad_parity:
            raise TypeError(f"flag {f.name!r}: bad scope or parity class in its declaration")
    for spec in specs.values():  # dependencies name declared flags
        named = [o for req in spec.requires.values() for o in req]
        named += [o for ov in spec.overrides.values() for o in ov]
        if any(o not in specs or o == spec.name for o in named):
            raise TypeError(f"flag {spec.name!r}: requires/overrides name an unknown flag")
    return specs


Flags._SPECS = _build_specs()
