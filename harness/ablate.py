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
alike. The runs go through ``harness.runner.run_sweep`` (one process per run, resumable);
afterwards ``harness.report`` writes ``report.md`` next to the table.

    >>> spec = load_spec("ablations/seed_timeline.toml")          # doctest: +SKIP
    >>> [c.name for c in design_configs(spec)]                     # doctest: +SKIP
    ['legacy', 'stage1', 'stage2', 'stage3', 'stage4', 'seed']
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import itertools
import json
import random
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomllib

import qvit
from qvit import Flags

__all__ = [
    "AblationSpec", "Config", "DESIGNS", "SEED_STAGES", "SEED_STAGE_NAMES", "SEED_MINUTES",
    "load_spec", "parse_spec", "design_configs", "on_value", "block_orders", "plan",
    "run_design", "write_design", "read_design", "main",
]

DESIGNS = ("timeline", "one_at_a_time", "leave_one_out", "factorial", "fractional", "configs")
FRACTIONAL_METHODS = ("plackett_burman", "resolution_iv")
DATASETS = ("digits", "cifar10", "cifar100", "imagefolder", "synthetic")

# The seed's published table (FLAGS.md): which changes each stage adds, and its epoch minutes.
SEED_STAGES = ((2, 3), (4, 5, 6), (7, 8, 9), (10, 11, 12, 13), (14, 15, 16))
SEED_STAGE_NAMES = ("stage1", "stage2", "stage3", "stage4", "seed")
SEED_MINUTES = (38.0, 20.0, 15.0, 12.0, 10.5, 10.0)

# Models known without importing the model registry (used only if qvit has none yet).
_FALLBACK_MODELS = ("ivit_micro", "swin_micro", "deit_tiny_patch16_224",
                    "deit_small_patch16_224", "deit_base_patch16_224",
                    "swin_tiny_patch4_window7_224", "swin_small_patch4_window7_224")

_TOP_KEYS = {"name": str, "description": str, "run": dict, "design": dict, "report": dict,
             "executor": dict}  # [executor]: harness.executors (local, slurm, ...)
_RUN_KEYS = {
    "models": list, "dataset": str, "data_dir": str, "img_size": int, "num_classes": int,
    "epochs": int, "warmup_epochs": int, "steps_per_epoch": int, "eval_steps": int,
    "batch_size": int, "lr": float, "repeats": int, "device": str, "seed": int,
}
_DESIGN_KEYS = {
    "kind": str, "base": str, "baseline": str, "flags": list, "values": dict, "levels": dict,
    "stages": list, "stage_names": list, "method": str, "configs": list,
}
_REPORT_KEYS = {"reference_minutes": list, "reference_label": str, "iqr_warn": float,
                "title": str}
_CONFIG_KEYS = {"name": str, "flags": str, "float_reference": bool, "note": str}


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
        return cls(name=d["name"], flags=Flags(**d["flags"]),
                   float_reference=d.get("float_reference", False), flag=d.get("flag"),
                   stage=d.get("stage"), levels=dict(d.get("levels") or {}),
                   in_design=d.get("in_design", True), note=d.get("note", ""))


@dataclass(frozen=True)
class AblationSpec:
    """A validated ablation spec. Build it with `load_spec` / `parse_spec`."""

    name: str
    models: tuple[str, ...]
    kind: str
    description: str = ""
    dataset: str = "digits"
    data_dir: str | None = None
    img_size: int | None = None
    num_classes: int = 10
    epochs: int = 3
    warmup_epochs: int = 1
    steps_per_epoch: int | None = None
    eval_steps: int | None = None
    batch_size: int = 32
    lr: float = 1e-3
    repeats: int = 3
    device: str = "cpu"
    seed: int = 0
    base: str | None = None
    baseline: str | None = None
    flags: tuple[str, ...] | None = None
    values: dict[str, Any] = field(default_factory=dict)
    levels: dict[str, tuple[Any, Any]] = field(default_factory=dict)
    stages: tuple[tuple[int, ...], ...] = SEED_STAGES
    stage_names: tuple[str, ...] = SEED_STAGE_NAMES
    method: str = "plackett_burman"
    configs: tuple[dict[str, Any], ...] = ()
    reference_minutes: tuple[float, ...] | None = None
    reference_label: str = "seed (RTX 3060, CIFAR-10)"
    iqr_warn: float = 0.10
    title: str | None = None
    source: str | None = None  # the TOML text it came from, copied into the results folder
    executor: dict[str, Any] = field(default_factory=dict)  # [executor] (harness.executors)

    def replace(self, **kw: Any) -> AblationSpec:
        """A copy with run settings overridden (e.g. from the command line), re-validated."""
        out = dataclasses.replace(self, **{k: v for k, v in kw.items() if v is not None})
        _validate_run(out)
        return out

    def base_flags(self) -> Flags:
        default = "seed" if self.kind == "leave_one_out" else "legacy"
        return Flags.parse(self.base or default)


def _closest(name: str, options) -> str:
    match = difflib.get_close_matches(str(name), [str(o) for o in options], n=1)
    return f" (did you mean {match[0]!r}?)" if match else ""


def _refuse(where: str, name: str, valid) -> ValueError:
    valid = list(valid)
    return ValueError(f"unknown {where} {name!r}{_closest(name, valid)}; "
                      f"valid: {', '.join(map(str, valid))}")


def _check_keys(table: dict, allowed: dict, where: str) -> None:
    for key, value in table.items():
        if key not in allowed:
            raise _refuse(f"key in {where}", key, allowed)
        want = allowed[key]
        ok = isinstance(value, want) or (want is float and isinstance(value, int))
        if isinstance(value, bool) and want in (int, float):
            ok = False
        if not ok:
            raise ValueError(f"{where}.{key} must be a {want.__name__}, got {value!r}")


def known_models() -> tuple[str, ...]:
    """Model names a spec may use: qvit's registry when it has one."""
    lister = getattr(qvit, "list_models", None)
    if lister is not None:
        try:
            names = tuple(lister())
            if names:
                return names
        except Exception:  # noqa: BLE001 - a broken registry should not hide the fallback
            pass
    return _FALLBACK_MODELS


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


def parse_spec(data: dict[str, Any], source: str | None = None) -> AblationSpec:
    """Validate a spec given as a dict (the parsed TOML) and build an `AblationSpec`."""
    _check_keys(data, _TOP_KEYS, "spec")
    for section in ("run", "design"):
        if section not in data:
            raise ValueError(f"spec needs a [{section}] table")
    run, design, report = data["run"], data["design"], data.get("report", {})
    _check_keys(run, _RUN_KEYS, "[run]")
    _check_keys(design, _DESIGN_KEYS, "[design]")
    _check_keys(report, _REPORT_KEYS, "[report]")
    if "name" not in data:
        raise ValueError("spec needs a name")
    if "models" not in run or not run["models"]:
        raise ValueError("[run].models must list at least one model")
    kind = design.get("kind")
    if kind is None:
        raise ValueError(f"[design].kind is required; valid: {', '.join(DESIGNS)}")
    if kind not in DESIGNS:
        raise _refuse("design", kind, DESIGNS)

    kw: dict[str, Any] = {k: v for k, v in run.items() if k != "models"}
    kw["models"] = tuple(run["models"])
    if "flags" in design:
        kw["flags"] = tuple(design["flags"])
    if "levels" in design:
        kw["levels"] = {k: tuple(v) if isinstance(v, list) else v
                        for k, v in design["levels"].items()}
    if "stages" in design:
        kw["stages"] = tuple(tuple(s) for s in design["stages"])
    if "stage_names" in design:
        kw["stage_names"] = tuple(design["stage_names"])
    if "configs" in design:
        kw["configs"] = tuple(design["configs"])
    for key in ("base", "baseline", "values", "method"):
        if key in design:
            kw[key] = design[key]
    if "reference_minutes" in report:
        kw["reference_minutes"] = tuple(float(m) for m in report["reference_minutes"])
    for key in ("reference_label", "iqr_warn", "title"):
        if key in report:
            kw[key] = report[key]
    if "executor" in data:
        from harness.executors import parse_options

        parse_options(data["executor"])  # ValueError naming what would be right
        kw["executor"] = dict(data["executor"])
    spec = AblationSpec(name=data["name"], kind=kind,
                        description=data.get("description", ""), source=source, **kw)
    _validate_run(spec)
    _validate_design(spec)
    return spec


def _validate_run(spec: AblationSpec) -> None:
    models = known_models()
    for m in spec.models:
        if not isinstance(m, str) or m not in models:
            raise _refuse("model", m, models)
    if len(set(spec.models)) != len(spec.models):
        raise ValueError(f"[run].models lists a model twice: {list(spec.models)}")
    if spec.dataset not in DATASETS:
        raise _refuse("dataset", spec.dataset, DATASETS)
    if spec.dataset == "imagefolder" and not spec.data_dir:
        raise ValueError("dataset 'imagefolder' needs [run].data_dir")
    for key, low in (("epochs", 1), ("repeats", 1), ("batch_size", 1), ("num_classes", 2),
                     ("warmup_epochs", 0)):
        if getattr(spec, key) < low:
            raise ValueError(f"[run].{key} must be >= {low}, got {getattr(spec, key)}")
    for key in ("steps_per_epoch", "eval_steps", "img_size"):
        value = getattr(spec, key)
        if value is not None and value < 1:
            raise ValueError(f"[run].{key} must be >= 1, got {value}")
    if spec.warmup_epochs >= spec.epochs:
        raise ValueError(f"[run].warmup_epochs ({spec.warmup_epochs}) must be smaller than "
                         f"epochs ({spec.epochs}): warm-up epochs are excluded from statistics")
    if not (spec.device in ("cpu", "cuda", "mps") or spec.device.startswith("cuda:")):
        raise ValueError(f"[run].device must be cpu, cuda, cuda:N or mps, got {spec.device!r}")


def _validate_design(spec: AblationSpec) -> None:
    names = Flags.names()
    for name in spec.flags or ():
        Flags.spec(name)  # raises with the closest match and the valid flags
    if spec.flags is not None and len(set(spec.flags)) != len(spec.flags):
        raise ValueError(f"[design].flags lists a flag twice: {list(spec.flags)}")
    for name, value in spec.values.items():
        if name not in names:
            raise _refuse("flag in [design.values]", name, names)
        Flags().replace(**{name: Flags.coerce(name, value)})  # type / choices check
    for name, pair in spec.levels.items():
        if name not in names:
            raise _refuse("flag in [design.levels]", name, names)
        if not isinstance(pair, tuple) or len(pair) != 2 or pair[0] == pair[1]:
            raise ValueError(f"[design.levels].{name} must be two different values "
                             f"[low, high], got {pair!r}")
        for v in pair:
            Flags().replace(**{name: Flags.coerce(name, v)})
    if spec.base is not None:
        Flags.parse(spec.base)
    if spec.method not in FRACTIONAL_METHODS:
        raise _refuse("fractional method", spec.method, FRACTIONAL_METHODS)
    if spec.kind == "timeline":
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
    if spec.kind in ("factorial", "fractional") and not spec.flags:
        raise ValueError(f"a {spec.kind} design needs [design].flags (the factors)")
    if spec.kind == "configs":
        if not spec.configs:
            raise ValueError("a 'configs' design needs [[design.configs]] entries")
        for i, c in enumerate(spec.configs):
            if not isinstance(c, dict):
                raise ValueError(f"[[design.configs]] #{i} must be a table")
            _check_keys(c, _CONFIG_KEYS, f"[[design.configs]] #{i}")
            if "name" not in c:
                raise ValueError(f"[[design.configs]] #{i} needs a name")
            Flags.parse(c.get("flags", "best"))
    configs = design_configs(spec)  # generation errors surface here, before anything runs
    names_ = [c.name for c in configs]
    if len(set(names_)) != len(names_):
        raise ValueError(f"config names repeat: {names_}")
    if spec.baseline is not None and spec.baseline not in names_:
        raise _refuse("baseline config", spec.baseline, names_)
    if len(configs) < 1:
        raise ValueError("the design has no configs")


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
    return [Config(c["name"], Flags.parse(c.get("flags", "best")),
                   float_reference=bool(c.get("float_reference", False)),
                   note=c.get("note", "")) for c in spec.configs]


_GENERATORS = {"timeline": timeline, "one_at_a_time": one_at_a_time,
               "leave_one_out": leave_one_out, "factorial": factorial,
               "fractional": fractional, "configs": explicit}


def design_configs(spec: AblationSpec) -> list[Config]:
    """The configs of the spec's design, baseline first."""
    configs = _GENERATORS[spec.kind](spec)
    base = baseline_name(spec, configs)
    return sorted(configs, key=lambda c: c.name != base)


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
    """One run of the plan; `to_runspec` turns it into the runner's RunSpec."""

    config: Config
    model: str
    block: int
    order: int

    def fields(self, spec: AblationSpec) -> dict[str, Any]:
        return dict(config=self.config.name, flags=self.config.flags, model=self.model,
                    dataset=spec.dataset, data_dir=spec.data_dir, img_size=spec.img_size,
                    num_classes=spec.num_classes, epochs=spec.epochs,
                    warmup_epochs=spec.warmup_epochs,
                    steps_per_epoch=spec.steps_per_epoch, eval_steps=spec.eval_steps,
                    batch_size=spec.batch_size, lr=spec.lr, repeat=self.block,
                    # one training seed per block: configs within a block are paired
                    seed=spec.seed + self.block, device=spec.device, block=self.block,
                    order=self.order, float_reference=self.config.float_reference)


def plan(spec: AblationSpec, configs: list[Config] | None = None) -> list[PlannedRun]:
    """Every repeat is a block with every (model, config) pair, shuffled per block."""
    configs = configs if configs is not None else design_configs(spec)
    pairs = [(m, c) for m in spec.models for c in configs]
    runs = []
    for b, order in enumerate(block_orders(len(pairs), spec.repeats, spec.seed)):
        for pos, i in enumerate(order):
            model, config = pairs[i]
            runs.append(PlannedRun(config, model, b, pos))
    return runs


def to_runspecs(spec: AblationSpec, runs: list[PlannedRun]) -> list[Any]:
    """The runner's RunSpec for each planned run (fields it lacks are left out)."""
    from harness.runner import RunSpec

    names = {f.name for f in dataclasses.fields(RunSpec)}
    out = []
    for r in runs:
        kw = {k: v for k, v in r.fields(spec).items() if k in names and v is not None}
        out.append(RunSpec(**kw))
    return out


def write_design(spec: AblationSpec, configs: list[Config], out_dir: Path) -> None:
    """Save what the report needs besides the table: the spec and the configs."""
    out_dir.mkdir(parents=True, exist_ok=True)
    meta = {"name": spec.name, "kind": spec.kind, "description": spec.description,
            "title": spec.title, "baseline": baseline_name(spec, configs),
            "models": list(spec.models), "dataset": spec.dataset, "epochs": spec.epochs,
            "warmup_epochs": spec.warmup_epochs, "steps_per_epoch": spec.steps_per_epoch,
            "eval_steps": spec.eval_steps, "batch_size": spec.batch_size,
            "repeats": spec.repeats, "device": spec.device, "seed": spec.seed,
            "method": spec.method if spec.kind == "fractional" else None,
            "reference_minutes": list(spec.reference_minutes or []) or None,
            "reference_label": spec.reference_label, "iqr_warn": spec.iqr_warn,
            "configs": [c.to_dict() for c in configs]}
    (out_dir / "design.json").write_text(json.dumps(meta, indent=1, default=str) + "\n")
    if spec.source is not None:
        (out_dir / "spec.toml").write_text(spec.source)


def read_design(out_dir: str | Path) -> dict[str, Any] | None:
    path = Path(out_dir) / "design.json"
    if not path.is_file():
        return None
    meta = json.loads(path.read_text())
    meta["configs"] = [Config.from_dict(c) for c in meta["configs"]]
    return meta


def run_design(spec: AblationSpec, out_dir: str | Path, *, executor: Any = "local",
               progress: bool = True, report: bool = True):
    """Run every block of the design through the runner (resuming finished runs), then
    write the report. Returns the runs table."""
    from harness.runner import run_sweep

    out_dir = Path(out_dir)
    configs = design_configs(spec)
    write_design(spec, configs, out_dir)
    specs = to_runspecs(spec, plan(spec, configs))
    table = run_sweep(specs, out_dir, executor=executor, progress=progress)
    if report:
        from harness.report import build_report, write_index
        build_report(out_dir)
        write_index(out_dir.parent)
    return table


def format_plan(spec: AblationSpec, configs: list[Config], runs: list[PlannedRun]) -> str:
    base = baseline_name(spec, configs)
    lines = [f"spec {spec.name!r}: design {spec.kind}, {len(configs)} configs x "
             f"{len(spec.models)} models x {spec.repeats} blocks = {len(runs)} runs; "
             f"{spec.epochs} epochs ({spec.warmup_epochs} warm-up), "
             f"steps/epoch {spec.steps_per_epoch or 'all'}, batch {spec.batch_size}, "
             f"{spec.dataset}, {spec.device}", "configs:"]
    width = max(len(c.name) for c in configs)
    for c in configs:
        tag = " (baseline)" if c.name == base else ""
        tag += " (float reference)" if c.float_reference else ""
        lines.append(f"  {c.name:<{width}}  {c.flags.describe()}{tag}")
    lines.append("plan (block: order):")
    for b in range(spec.repeats):
        row = [f"{r.model}/{r.config.name}" for r in runs if r.block == b]
        lines.append(f"  block {b}: " + ", ".join(row))
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m harness ablate",
                                description="Run an ablation spec and write its report.")
    p.add_argument("spec", help="ablation spec (TOML), e.g. ablations/seed_timeline.toml")
    p.add_argument("--device", help="override [run].device (cpu, cuda, cuda:N)")
    p.add_argument("--out", help="output folder (default results/<spec name>/)")
    p.add_argument("--repeats", type=int, help="override [run].repeats (blocks)")
    p.add_argument("--epochs", type=int, help="override [run].epochs")
    p.add_argument("--steps-per-epoch", type=int, help="override [run].steps_per_epoch")
    p.add_argument("--models", help="override [run].models (comma separated)")
    p.add_argument("--dry-run", action="store_true", help="print configs and plan, run nothing")
    p.add_argument("--no-report", action="store_true", help="do not write the report")
    from harness.executors import add_arguments

    add_arguments(p)  # --executor local|slurm|..., --partition, --gpus-per-job, ...
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        spec = load_spec(args.spec)
        models = tuple(m.strip() for m in args.models.split(",")) if args.models else None
        spec = spec.replace(device=args.device, repeats=args.repeats, epochs=args.epochs,
                            steps_per_epoch=args.steps_per_epoch, models=models)
        from harness.executors import options_from

        executor = options_from(spec.executor, args)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    configs = design_configs(spec)
    runs = plan(spec, configs)
    print(format_plan(spec, configs, runs))
    if args.dry_run:
        return 0
    out = Path(args.out) if args.out else Path("results") / spec.name
    run_design(spec, out, executor=executor, report=not args.no_report)
    if not args.no_report:
        print(f"report: {out / 'report.md'}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

