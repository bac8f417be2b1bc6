"""Ablation specs, the designs generated from them, and running a design.

A spec (``ablations/*.toml``) is declarative: what to train (``[run]``), which configs to
compare (``[design]``) and what to print beside the measurements (``[report]``). Every
config is a ``qvit.Flags`` generated from the one flag declaration:

- ``timeline``: cumulative stages by seed change number (legacy -> stage1 .. stage4 -> seed);
- ``one_at_a_time``: each flag moved alone from the base (legacy) to its "on" value;
- ``leave_one_out``: each flag moved alone back from the base (seed) to its legacy value;
- ``factorial``: every combination of two levels of a named subset of flags;
- ``fractional``: a Plackett-Burman screen or a resolution IV fraction (pyDOE3) over flags;
- ``configs``: an explicit list of named configs (``Flags.parse`` strings).

Running a design: every repeat is a block holding every (model, config) pair, in an order
shuffled per block from the spec's seed, so that the machine's drift falls on all configs
alike. `harness.pipeline.run_spec` runs a spec (``harness.executors``: one process per
block, resumable) and writes its report (``harness.report``).

    >>> spec = load_spec("ablations/seed_timeline.toml")          # doctest: +SKIP
    >>> [c.name for c in design_configs(spec)]                     # doctest: +SKIP
    ['legacy', 'stage1', 'stage2', 'stage3', 'stage4', 'seed']
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomllib
from pydantic import BaseModel, ValidationError

from qvit.flags import Flags
from qvit.paths import acts, why_inert, why_same
from qvit.variants import VARIANTS

from .executor_options import parse_options
from .options import one_line, unknown
from .settings import RunSettings
from .spec_schema import (
    SEED_MINUTES,
    SEED_STAGE_NAMES,
    SEED_STAGES,
    ReportTable,
    SpecFile,
    SweepTable,
)

__all__ = [
    "AblationSpec", "Config", "DESIGNS", "SEED_STAGES", "SEED_STAGE_NAMES", "SEED_MINUTES",
    "load_spec", "parse_spec", "design_configs", "on_value", "block_orders", "plan",
    "write_design", "read_design", "to_runspecs", "sessions_of", "AA_CONTROL",
]

DESIGNS = ("timeline", "one_at_a_time", "leave_one_out", "factorial", "fractional", "configs")
FRACTIONAL_METHODS = ("plackett_burman", "resolution_iv")
AA_CONTROL = "A/A"  # the null control's config name: the baseline a second time


# --- the spec -------------------------------------------------------------------------------

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


@dataclass(frozen=True)
class AblationSpec:
    """A validated ablation spec. Build it with `load_spec` / `parse_spec`."""

    name: str
    models: tuple[str, ...]
    kind: str
    settings: RunSettings  # the run settings of [run] (its model: the first of models)
    repeats: int = 5
    methods: tuple[str, ...] = ("epochs",)
    rounds: int = 6
    epochs_for: str = "all"
    description: str = ""
    base: str | None = None
    baseline: str | None = None
    flags: tuple[str, ...] | None = None
    values: dict[str, Any] = field(default_factory=dict)
    levels: dict[str, tuple[Any, Any]] = field(default_factory=dict)
    stages: tuple[tuple[int, ...], ...] = SEED_STAGES
    stage_names: tuple[str, ...] = SEED_STAGE_NAMES
    method: str = "plackett_burman"
    configs: tuple[dict[str, Any], ...] = ()
    aa_control: bool = True
    report: ReportTable = field(default_factory=ReportTable)
    source: str | None = None  # the TOML text it came from, copied into the results folder
    executor: dict[str, Any] = field(default_factory=dict)  # [executor] (harness.executors)

    def replace(self, **kw: Any) -> AblationSpec:
        """A copy with sweep keys (models, repeats) or run settings overridden (e.g. from
        the command line), re-validated."""
        sweep = {k: kw.pop(k) for k in ("models", "repeats", "methods") if k in kw}
        sweep = {k: v for k, v in sweep.items() if v is not None}
        settings = self.settings.replace(**kw) if kw else self.settings
        out = dataclasses.replace(self, settings=settings, **sweep)
        _validate_run(out)
        return out

    def base_flags(self) -> Flags:
        default = "seed" if self.kind == "leave_one_out" else "legacy"
        return Flags.parse(self.base or default)


def load_spec(path: str | Path) -> AblationSpec:
    """Read and fully validate a spec file; raises ValueError naming what would be right."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"no ablation spec at {str(path)!r}")
    text = path.read_text()
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"{path}: not valid TOML: {e}") from None
    data.setdefault("name", path.stem)
    try:
        return parse_spec(data, source=text)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None


def _validated(model: type[BaseModel], data: Any, where: str) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise ValueError(one_line(e, where, model)) from None


def parse_spec(data: dict[str, Any], source: str | None = None, *, min_repeats: int = 2
               ) -> AblationSpec:
    """Validate a spec given as a dict (the parsed TOML) and build an `AblationSpec`. A
    design compares with intervals, which need ``min_repeats`` >= 2 blocks (`harness run`
    asks for 1: a quick look, reported without intervals)."""
    if not isinstance(data, dict):
        raise ValueError("a spec is a TOML table")
    top = _validated(SpecFile, data, "spec")
    run = dict(top.run)
    sweep = _validated(SweepTable, {k: run.pop(k) for k in SweepTable.model_fields if k in run},
                       "[run]")
    run_keys = set(RunSettings.model_fields) - {"model"}
    for key in run:
        if key not in run_keys:
            raise unknown("key in [run]", key, sorted(run_keys | set(SweepTable.model_fields)))
    if sweep.repeats < min_repeats:
        raise ValueError(f"[run].repeats = {sweep.repeats} gives no intervals: a design "
                         f"needs >= {min_repeats} blocks (5 for reference results)")
    settings = _validated(RunSettings, {**run, "model": sweep.models[0]}, "[run]")
    if top.executor:
        parse_options(top.executor)  # ValueError naming what would be right
    d = top.design
    spec = AblationSpec(
        name=top.name, models=tuple(sweep.models), kind=d.kind, settings=settings,
        repeats=sweep.repeats, methods=tuple(sweep.methods), rounds=sweep.rounds,
        epochs_for=sweep.epochs_for,
        description=top.description, base=d.base, baseline=d.baseline,
        flags=tuple(d.flags) if d.flags is not None else None, values=dict(d.values),
        levels={k: tuple(v) for k, v in d.levels.items()},
        stages=tuple(tuple(x) for x in d.stages), stage_names=tuple(d.stage_names),
        method=d.method, configs=tuple(c.model_dump() for c in d.configs),
        aa_control=d.aa_control, report=top.report, source=source,
        executor=dict(top.executor))
    _validate_run(spec)
    _validate_design(spec)
    return spec


def _validate_run(spec: AblationSpec) -> None:
    from qvit.variants import model_names

    from .safety import check_dataset

    if len(set(spec.models)) != len(spec.models):
        raise ValueError(f"[run].models lists a model twice: {list(spec.models)}")
    for m in spec.models:
        if ":" not in m and m not in model_names():
            raise unknown("model", m, model_names())
        spec.settings.replace(model=m)
    check_dataset(spec.settings.dataset, spec.settings.data_dir)  # layout, files readable


def _validate_design(spec: AblationSpec) -> None:
    names = Flags.names()
    for name in spec.flags or ():
        Flags.spec(name)  # raises with the closest match and the valid flags
    if spec.flags is not None and len(set(spec.flags)) != len(spec.flags):
        raise ValueError(f"[design].flags lists a flag twice: {list(spec.flags)}")
    for name, value in spec.values.items():
        if name not in names:
            raise unknown("flag in [design.values]", name, names)
        Flags().replace(**{name: Flags.coerce(name, value)})  # type / choices check
    for name, pair in spec.levels.items():
        if name not in names:
            raise unknown("flag in [design.levels]", name, names)
        if len(pair) != 2 or pair[0] == pair[1]:
            raise ValueError(f"[design.levels].{name} must be two different values "
                             f"[low, high], got {list(pair)!r}")
        for v in pair:
            Flags().replace(**{name: Flags.coerce(name, v)})
    if spec.base is not None:
        Flags.parse(spec.base)
    if spec.kind == "timeline":
        _validate_stages(spec)
    if spec.kind in ("factorial", "fractional") and not spec.flags:
        raise ValueError(f"a {spec.kind} design needs [design].flags (the factors)")
    if spec.kind == "configs":
        if not spec.configs:
            raise ValueError("a 'configs' design needs [[design.configs]] entries")
        for c in spec.configs:
            Flags.parse(c["flags"])
    configs = design_configs(spec)  # generation errors surface here, before anything runs
    names_ = [c.name for c in configs]
    if len(set(names_)) != len(names_):
        raise ValueError(f"config names repeat: {names_}")
    if spec.baseline is not None and spec.baseline not in names_:
        raise unknown("baseline config", spec.baseline, names_)


def _validate_stages(spec: AblationSpec) -> None:
    if len(spec.stage_names) != len(spec.stages):
        raise ValueError(f"[design]: {len(spec.stages)} stages but "
                         f"{len(spec.stage_names)} stage_names")
    changes = {s.change for s in Flags.specs() if s.change is not None}
    listed = [c for stage in spec.stages for c in stage]
    for c in listed:
        if c not in changes:
            raise ValueError(f"[design].stages: no flag comes from seed change {c}; "
                             f"changes with flags: {sorted(changes)}")
    if len(set(listed)) != len(listed):
        raise ValueError(f"[design].stages lists a change twice: {listed}")


# --- designs ----------------------------------------------------------------------------------

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


# --- plan and run -------------------------------------------------------------------------------

def block_orders(n: int, repeats: int, seed: int) -> list[list[int]]:
    """One shuffled order of range(n) per block, each from its own seeded generator
    (block b's order depends only on (seed, b), so adding repeats keeps earlier blocks)."""
    orders = []
    for b in range(repeats):
        order = list(range(n))
        random.Random(f"qvit-ablate:{seed}:{b}").shuffle(order)
        orders.append(order)
    return orders


@dataclass(frozen=True)
class PlannedRun:
    """One run of the plan; `to_runspecs` turns it into the runner's RunSpec."""

    config: Config
    model: str
    block: int
    order: int


def epoch_configs(spec: AblationSpec, configs: list[Config]) -> list[Config]:
    """The configs that run whole epochs: none without the epochs method; all, or
    (``epochs_for = "loop_flags"`` with the steps method beside) those moving a loop flag,
    the baseline, A/A and float references."""
    if "epochs" not in spec.methods:
        return []
    if spec.epochs_for == "all" or "steps" not in spec.methods:
        return configs
    base = baseline_name(spec, configs)
    by_name = {c.name: c for c in configs}
    loop = set(Flags.names("loop"))
    ref = by_name[base].flags
    return [c for c in configs if c.name in (base, AA_CONTROL) or c.float_reference
            or loop & set(ref.diff(c.flags))]


def plan(spec: AblationSpec, configs: list[Config] | None = None) -> list[PlannedRun]:
    """Every repeat is a block with every (model, config) pair that runs whole epochs
    (`epoch_configs`), shuffled per block."""
    configs = epoch_configs(spec, configs if configs is not None else design_configs(spec))
    pairs = [(m, c) for m in spec.models for c in configs]
    runs = []
    for b, order in enumerate(block_orders(len(pairs), spec.repeats, spec.settings.seed)):
        for pos, i in enumerate(order):
            model, config = pairs[i]
            runs.append(PlannedRun(config, model, b, pos))
    return runs


def to_runspecs(spec: AblationSpec, runs: list[PlannedRun]) -> list[Any]:
    """The runner's RunSpec of each planned run: one training seed per block (configs in
    a block are paired: same seed, same data order, neighbours in time)."""
    from .runner import RunSpec

    return [RunSpec(config=r.config.name, flags=r.config.flags,
                    settings=spec.settings.replace(model=r.model,
                                                   seed=spec.settings.seed + r.block),
                    float_reference=r.config.float_reference, repeat=r.block, block=r.block,
                    order=r.order) for r in runs]


def sessions_of(spec: AblationSpec, configs: list[Config]) -> list[Any]:
    """``repeats`` step-interleaved sessions per model (`harness.interleave`; each its own
    process and seed: the method's blocks), of the configs whose
    move from the baseline can act inside a training step (a config moving only loop flags
    that act around the step, e.g. workers or plots, is left to the epochs method)."""
    from qvit.paths import acts_inside_step
    from qvit.variants import VARIANTS

    from .interleave import Session
    from .runner import RunSpec

    ref = {c.name: c for c in configs}[baseline_name(spec, configs)].flags

    def session(m: str, b: int) -> Session:
        live = [c for c in configs
                if acts_inside_step(ref, c.flags, family=VARIANTS[m][0])]
        return Session(tuple(RunSpec(config=c.name, flags=c.flags,
                                     settings=spec.settings.replace(
                                         model=m, seed=spec.settings.seed + b),
                                     float_reference=c.float_reference) for c in live),
                       rounds=spec.rounds, index=b)

    return [session(m, b) for b in range(spec.repeats) for m in spec.models]


def write_design(spec: AblationSpec, configs: list[Config], run_ids: list[str],
                 out_dir: Path) -> None:
    """What the report needs besides the table: the spec, the configs, and the run ids of
    this plan (rows of other identities in the table are not this design's)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    meta = {"name": spec.name, "kind": spec.kind, "description": spec.description,
            "baseline": baseline_name(spec, configs), "models": list(spec.models),
            "repeats": spec.repeats, "methods": list(spec.methods), "rounds": spec.rounds,
            "epochs_for": spec.epochs_for,
            "settings": spec.settings.model_dump(),
            "method": spec.method if spec.kind == "fractional" else None,
            "report": spec.report.model_dump(), "configs": [c.to_dict() for c in configs],
            "not_run": not_run(spec), "run_ids": run_ids}
    _write_text(out_dir / "design.json", json.dumps(meta, indent=1, default=str) + "\n")
    if spec.source is not None:
        _write_text(out_dir / "spec.toml", spec.source)


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def read_design(out_dir: str | Path) -> dict[str, Any] | None:
    path = Path(out_dir) / "design.json"
    if not path.is_file():
        return None
    meta = json.loads(path.read_text())
    meta["configs"] = [Config.from_dict(c) for c in meta["configs"]]
    return meta


def format_plan(spec: AblationSpec, configs: list[Config], runs: list[PlannedRun]) -> str:
    base = baseline_name(spec, configs)
    st = spec.settings
    per_block = len(runs) // max(spec.repeats, 1)
    inner = sessions_of(spec, configs) if "steps" in spec.methods else []
    steps = (f"; steps method: {len(inner)} sessions of {len(inner[0].specs)} interleaved "
             f"models x {spec.rounds} rounds") if inner else ""
    lines = [f"spec {spec.name!r}: design {spec.kind}, {len(configs)} configs; "
             f"{per_block} (model, config) runs per block x {spec.repeats} blocks = "
             f"{len(runs)} runs of whole epochs{steps}; "
             f"{st.epochs} epochs ({st.warmup_epochs} warm-up), "
             f"steps/epoch {st.steps_per_epoch or 'all'}, batch {st.batch_size}, "
             f"{st.dataset}, {st.device}, pretrained start {'on' if st.pretrained else 'off'}",
             "configs:"]
    width = max(len(c.name) for c in configs)
    skipped = not_run(spec)
    for c in configs:
        tag = " (baseline)" if c.name == base else ""
        tag += " (float reference)" if c.float_reference else ""
        lines.append(f"  {c.name:<{width}}  {c.flags.describe()}{tag}")
    if skipped:
        lines.append("not run (no effect possible with these flags):")
        lines += [f"  {n}: {why}" for n, why in skipped.items()]
    lines.append("plan (block: order):")
    for b in range(spec.repeats):
        row = [f"{r.model}/{r.config.name}" for r in runs if r.block == b]
        lines.append(f"  block {b}: " + ", ".join(row))
    return "\n".join(lines)
