"""The designs: the configs a spec compares, generated from the one flag declaration.

- ``timeline``: cumulative stages by seed change number (legacy -> stage1 .. stage4 -> seed);
- ``one_at_a_time``: each flag moved alone from the base (legacy) to its "on" value;
- ``leave_one_out``: each flag moved alone back from the base (seed) to its legacy value;
- ``factorial``: every combination of two levels of a named subset of flags;
- ``fractional``: a Plackett-Burman screen or a resolution IV fraction (pyDOE3) over flags;
- ``configs``: an explicit list of named configs (``Flags.parse`` strings).

A one-flag move that cannot act under its base (`qvit.paths`) is not timed (`not_run`); a
two-level design over nested factors is refused. Plain functions of a spec
(`harness.spec.ablation.AblationSpec`), no I/O.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from harness.spec.schema import SEED_STAGE_NAMES, SEED_STAGES  # noqa: F401 (re-exported)
from qvit.flags import Flags
from qvit.paths import acts, why_inert, why_same
from qvit.variants import VARIANTS

if TYPE_CHECKING:
    from harness.spec.ablation import AblationSpec

__all__ = ["Config", "AA_CONTROL", "DESIGNS", "FRACTIONAL_METHODS", "on_value",
           "design_configs", "baseline_name", "not_run", "device_type", "families"]

DESIGNS = ("timeline", "one_at_a_time", "leave_one_out", "factorial", "fractional", "configs")
FRACTIONAL_METHODS = ("plackett_burman", "resolution_iv")
AA_CONTROL = "A/A"  # the null control's config name: the baseline a second time


@dataclass(frozen=True)
class Config:
    """One configuration of a design: a name, its flags, and what it is in the design.

    ``flag`` names the one flag a one-at-a-time / leave-one-out config moves; ``levels``
    holds the coded levels (-1/+1) of a factorial or fractional run; ``in_design`` is False
    for a config added only as a baseline (e.g. the base of a Plackett-Burman screen).
    """

    name: str
    flags: Flags
    float_reference: bool = False
    flag: str | None = None
    stage: int | None = None
    levels: dict[str, int] = field(default_factory=dict)
    in_design: bool = True
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "flags": self.flags.to_dict(),
                "float_reference": self.float_reference, "flag": self.flag,
                "stage": self.stage, "levels": dict(self.levels),
                "in_design": self.in_design, "note": self.note,
                "describe": self.flags.describe()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Config:
        return cls(name=d["name"], flags=Flags.from_dict(d["flags"]),
                   float_reference=d.get("float_reference", False), flag=d.get("flag"),
                   stage=d.get("stage"), levels=dict(d.get("levels") or {}),
                   in_design=d.get("in_design", True), note=d.get("note", ""))




def on_value(name: str, spec: AblationSpec | None = None) -> Any:
    """The value a flag moves to when it is switched "on": the spec's [design.values] entry,
    else its seed value where that differs from legacy, else its best value."""
    fs = Flags.spec(name)
    if spec is not None and name in spec.values:
        return Flags.coerce(name, spec.values[name])
    return fs.seed if fs.seed != fs.legacy else fs.best


def _movable(spec: AblationSpec, base: Flags, target) -> list[str]:
    names = spec.flags if spec.flags is not None else Flags.names()
    return [n for n in names if target(n) != getattr(base, n)]


def timeline(spec: AblationSpec) -> list[Config]:
    """legacy, then each stage adding the seed values of its changes' flags (cumulative).
    Flags with no seed change (our own) keep the base value throughout."""
    base = spec.base_flags()
    configs = [Config("legacy" if spec.base in (None, "legacy") else "base", base, stage=0)]
    current = base
    for i, (changes, name) in enumerate(zip(spec.stages, spec.stage_names, strict=False), start=1):
        moved = {s.name: s.seed for s in Flags.specs() if s.change in changes}
        current = current.replace(**moved)
        configs.append(Config(name, current, stage=i,
                              note="+ changes " + ",".join(map(str, changes))))
    return configs


def one_at_a_time(spec: AblationSpec) -> list[Config]:
    """The base (legacy), then one config per flag moved alone to its on-value."""
    base = spec.base_flags()
    configs = [Config(spec.base or "legacy", base)]
    for name in _movable(spec, base, lambda n: on_value(n, spec)):
        value = on_value(name, spec)
        configs.append(Config(f"+{name}", base.replace(**{name: value}), flag=name,
                              note=f"{name}: {getattr(base, name)!r} -> {value!r}"))
    return configs


def leave_one_out(spec: AblationSpec) -> list[Config]:
    """The base (seed), then one config per flag moved alone back to its legacy value."""
    base = spec.base_flags()
    configs = [Config(spec.base or "seed", base)]
    for name in _movable(spec, base, lambda n: Flags.spec(n).legacy):
        value = Flags.spec(name).legacy
        configs.append(Config(f"-{name}", base.replace(**{name: value}), flag=name,
                              note=f"{name}: {getattr(base, name)!r} -> {value!r}"))
    return configs


def _two_levels(spec: AblationSpec, base: Flags) -> dict[str, tuple[Any, Any]]:
    levels = {}
    for name in spec.flags or ():
        if name in spec.levels:
            lo, hi = (Flags.coerce(name, v) for v in spec.levels[name])
        else:
            lo, hi = getattr(base, name), on_value(name, spec)
            if lo == hi:
                lo = Flags.spec(name).legacy
        if lo == hi:
            raise ValueError(f"flag {name!r} has one level only ({lo!r}) from base "
                             f"{spec.base or 'legacy'!r}; give [design.levels].{name} = "
                             f"[low, high]")
        levels[name] = (lo, hi)
    return levels


def _coded_configs(spec: AblationSpec, matrix, prefix: str, bits: bool) -> list[Config]:
    """Configs from a coded (-1/+1) design matrix; named by level bits (factorial) or by
    run number (fractional: too many flags for a readable name)."""
    base = spec.base_flags()
    levels = _two_levels(spec, base)
    names = list(levels)
    configs = []
    for i, row in enumerate(matrix, start=1):
        coded = {n: int(1 if x > 0 else -1) for n, x in zip(names, row, strict=False)}
        values = {n: levels[n][1] if c > 0 else levels[n][0] for n, c in coded.items()}
        code = "".join("1" if coded[n] > 0 else "0" for n in names) if bits else f"{i:02d}"
        configs.append(Config(f"{prefix}{code}", base.replace(**values), levels=coded))
    return configs


def factorial(spec: AblationSpec) -> list[Config]:
    """All 2^k combinations of the named flags' two levels; the all-low run is the base."""
    k = len(spec.flags or ())
    if k > 8:
        raise ValueError(f"a full factorial over {k} flags is {2 ** k} configs; use "
                         f"kind = 'fractional' (at most 8 flags for 'factorial')")
    matrix = list(itertools.product((-1, 1), repeat=k))
    return _coded_configs(spec, matrix, "f", bits=True)


def fractional(spec: AblationSpec) -> list[Config]:
    """A two-level screen through pyDOE3: Plackett-Burman (main effects, aliased with
    two-flag interactions) or a resolution IV fraction (main effects clear of them).
    The all-low base is added as a baseline outside the design if the design lacks it."""
    import pyDOE3

    k = len(spec.flags or ())
    if k < 2:
        raise ValueError("a fractional design needs at least 2 flags")
    if spec.method == "plackett_burman":
        matrix = _plackett_burman(pyDOE3, k)
    else:
        matrix = pyDOE3.fracfact_by_res(k, 4)
    prefix = "pb" if spec.method == "plackett_burman" else "r4_"
    configs = _coded_configs(spec, matrix, prefix, bits=False)
    if not any(all(v < 0 for v in c.levels.values()) for c in configs):
        levels = _two_levels(spec, spec.base_flags())
        low = spec.base_flags().replace(**{n: lo for n, (lo, _) in levels.items()})
        configs.insert(0, Config("base", low, levels={n: -1 for n in levels},
                                 in_design=False, note="all flags low; baseline only"))
    return configs


def _plackett_burman(pyDOE3, k: int):
    """pyDOE3 builds PB matrices only for some run counts (e.g. none with 28 runs): take the
    smallest one it can build with at least k columns and keep k of them (columns of a PB
    matrix are balanced and mutually orthogonal, so any k of them are too)."""
    for width in range(k, 4 * k + 4):
        try:
            return pyDOE3.pbdesign(width)[:, :k]
        except AssertionError:
            continue
    raise ValueError(f"pyDOE3 cannot build a Plackett-Burman design for {k} flags")


def explicit(spec: AblationSpec) -> list[Config]:
    return [Config(c["name"], Flags.parse(c["flags"]), float_reference=c["float_reference"],
                   note=c["note"]) for c in spec.configs]


_GENERATORS = {"timeline": timeline, "one_at_a_time": one_at_a_time,
               "leave_one_out": leave_one_out, "factorial": factorial,
               "fractional": fractional, "configs": explicit}


def device_type(spec: AblationSpec) -> str | None:
    """The device type the spec's runs will have, where the spec says it ("auto": None)."""
    d = spec.settings.device
    return "cuda" if d.startswith("cuda") else "cpu" if d == "cpu" else None


def families(spec: AblationSpec) -> list[str]:
    return sorted({VARIANTS[m][0] for m in spec.models})


def not_run(spec: AblationSpec) -> dict[str, str]:
    """``{config: why}`` of the one-flag configs (one-at-a-time, leave-one-out) left out
    because their move runs exactly the base's code on every model of the spec
    (`qvit.paths.why_same`): timing them would rank noise beside real effects."""
    if spec.kind not in ("one_at_a_time", "leave_one_out"):
        return {}
    configs = _GENERATORS[spec.kind](spec)
    base = configs[0].flags
    out = {}
    for c in configs[1:]:
        whys = {why_same(base, c.flags, device_type=device_type(spec), family=f)
                for f in families(spec)}
        if None not in whys:
            out[c.name] = "; ".join(sorted(whys))
    return out


def _check_factors(spec: AblationSpec, configs: list[Config]) -> None:
    """Refuse a factor that acts in some runs of a two-level design and not in others on
    one model family (nested under another factor, e.g. ``cache_exp_x0`` under
    ``cache_eval_act_scale``): its "main effect" would be an interaction. A factor that
    acts in no run of a family (a Swin-only cache on a ViT) is kept: its effect there is
    none by construction, and the report says so."""
    for fam in families(spec):
        for name in spec.flags or ():
            live = {c.name: acts(c.flags, name, device_type=device_type(spec), family=fam)
                    for c in configs}
            if any(live.values()) and not all(live.values()):
                dead = next(n for n, v in live.items() if not v)
                flags = next(c.flags for c in configs if c.name == dead)
                raise ValueError(
                    f"[design].flags: {name!r} cannot act in run {dead!r} "
                    f"({why_inert(flags, name, device_type=device_type(spec), family=fam)}): "
                    f"fix what it needs in the base instead of varying both")


def design_configs(spec: AblationSpec) -> list[Config]:
    """The configs of the spec's design, baseline first, and (by default) the null control:
    the baseline a second time under another name (A/A), whose ratio shows what noise
    looks like. One-flag configs whose move cannot act are left out (`not_run`); a
    two-level design whose factors are nested is refused (`_check_factors`)."""
    configs = _GENERATORS[spec.kind](spec)
    if spec.kind in ("factorial", "fractional"):
        _check_factors(spec, configs)
    skip = not_run(spec)
    configs = [c for c in configs if c.name not in skip]
    base = baseline_name(spec, configs)
    configs = sorted(configs, key=lambda c: c.name != base)
    if spec.aa_control:
        b = configs[0]
        configs.append(Config(AA_CONTROL, b.flags, float_reference=b.float_reference,
                              in_design=False, note=f"null control: {b.name} again"))
    return configs


def baseline_name(spec: AblationSpec, configs: list[Config]) -> str:
    if spec.baseline is not None:
        return spec.baseline
    if spec.kind == "configs":
        plain = [c for c in configs if not c.float_reference]
        return (plain or configs)[0].name
    if spec.kind in ("factorial", "fractional"):
        for c in configs:
            if c.levels and all(v < 0 for v in c.levels.values()):
                return c.name
    return configs[0].name

