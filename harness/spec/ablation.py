"""Ablation specs: reading and validating ``ablations/*.toml``.

A spec (``ablations/*.toml``) is declarative: what to train (``[run]``), which configs to
compare (``[design]``) and what to print beside the measurements (``[report]``). Every
config is a ``qvit.Flags`` generated from the one flag declaration by a design
(`harness.spec.designs` lists them).

Running a design: every repeat is a block holding every (model, config) pair, in an order
shuffled per block from the spec's seed, so that the machine's drift falls on all configs
alike. `harness.pipeline.run_spec` runs a spec (``harness.sweep.executors``: one process per
block, resumable) and writes its report (``harness.analysis.report``).

    >>> spec = load_spec("ablations/seed_timeline.toml")          # doctest: +SKIP
    >>> [c.name for c in design_configs(spec)]                     # doctest: +SKIP
    ['legacy', 'stage1', 'stage2', 'stage3', 'stage4', 'seed']
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomllib

from harness.spec.designs import design_configs
from harness.spec.executor import parse_options
from harness.spec.options import unknown, validated
from harness.spec.schema import (
    SEED_MINUTES,
    SEED_STAGE_NAMES,
    SEED_STAGES,
    ReportTable,
    SpecFile,
    SweepTable,
)
from harness.spec.settings import RunSettings
from qvit.flags import Flags

__all__ = ["AblationSpec", "SEED_STAGES", "SEED_STAGE_NAMES", "SEED_MINUTES", "load_spec",
           "parse_spec"]


@dataclass(frozen=True)
class AblationSpec:
    """A validated ablation spec. Build it with `load_spec` / `parse_spec`; the defaults of
    its fields are the spec file's (`harness.spec.schema`, `RunSettings`), declared there
    only."""

    name: str
    models: tuple[str, ...]
    kind: str
    settings: RunSettings  # the run settings of [run] (its model: the first of models)
    repeats: int
    methods: tuple[str, ...]
    rounds: int
    epochs_for: str
    description: str
    base: str | None
    baseline: str | None
    flags: tuple[str, ...] | None
    values: dict[str, Any]
    levels: dict[str, tuple[Any, Any]]
    stages: tuple[tuple[int, ...], ...]
    stage_names: tuple[str, ...]
    method: str
    configs: tuple[dict[str, Any], ...]
    aa_control: bool
    report: ReportTable
    source: str | None  # the TOML text it came from, copied into the results folder
    executor: dict[str, Any]  # [executor] (harness.spec.executor.ExecutorOptions)

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


def parse_spec(data: dict[str, Any], source: str | None = None, *, min_repeats: int = 2
               ) -> AblationSpec:
    """Validate a spec given as a dict (the parsed TOML) and build an `AblationSpec`. A
    design compares with intervals, which need ``min_repeats`` >= 2 blocks (`harness run`
    asks for 1: a quick look, reported without intervals)."""
    if not isinstance(data, dict):
        raise ValueError("a spec is a TOML table")
    top = validated(SpecFile, data, "spec")
    run = dict(top.run)
    sweep = validated(SweepTable, {k: run.pop(k) for k in SweepTable.model_fields if k in run},
                       "[run]")
    run_keys = set(RunSettings.model_fields) - {"model"}
    for key in run:
        if key not in run_keys:
            raise unknown("key in [run]", key, sorted(run_keys | set(SweepTable.model_fields)))
    if sweep.repeats < min_repeats:
        raise ValueError(f"[run].repeats = {sweep.repeats} gives no intervals: a design "
                         f"needs >= {min_repeats} blocks (5 for reference results)")
    settings = validated(RunSettings, {**run, "model": sweep.models[0]}, "[run]")
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
    from harness.spec.datasets import check_dataset
    from qvit.variants import model_names

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

