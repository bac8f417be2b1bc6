"""The plan of a spec: every repeat is a block holding every (model, config) pair, in an order
shuffled per block from the spec's seed, so that the machine's drift falls on all configs
alike; the configs the step-interleaved method measures per session; the design file
(``design.json``) the report reads. Plain data: the run package turns it into runs
(`harness.sweep.runs`).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.spec.designs import AA_CONTROL, Config, baseline_name, design_configs, not_run

if TYPE_CHECKING:
    from harness.spec.ablation import AblationSpec
from qvit.flags import Flags
from qvit.paths import acts_inside_step
from qvit.variants import VARIANTS

__all__ = ["PlannedRun", "block_orders", "epoch_configs", "plan", "session_configs",
           "design_files", "read_design", "format_plan"]



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


def session_configs(spec: AblationSpec, configs: list[Config], model: str) -> list[Config]:
    """The configs of one step-interleaved session on ``model``: those whose move from the
    baseline can act inside a training step (a config moving only loop flags that act
    around the step, e.g. workers or plots, is left to the epochs method)."""
    ref = {c.name: c for c in configs}[baseline_name(spec, configs)].flags
    return [c for c in configs if acts_inside_step(ref, c.flags, family=VARIANTS[model][0])]


def design_files(spec: AblationSpec, configs: list[Config], run_ids: list[str]
                 ) -> dict[str, str]:
    """What the report needs besides the table, as file name -> text (written by
    `harness.records.files.write_design`): ``design.json`` (the spec, the configs, and the
    run ids of this plan: rows of other identities in the table are not this design's) and
    the spec's source as ``spec.toml``."""
    meta = {"name": spec.name, "kind": spec.kind, "description": spec.description,
            "baseline": baseline_name(spec, configs), "models": list(spec.models),
            "repeats": spec.repeats, "methods": list(spec.methods), "rounds": spec.rounds,
            "epochs_for": spec.epochs_for,
            "settings": spec.settings.model_dump(),
            "method": spec.method if spec.kind == "fractional" else None,
            "report": spec.report.model_dump(), "configs": [c.to_dict() for c in configs],
            "not_run": not_run(spec), "run_ids": run_ids}
    files = {"design.json": json.dumps(meta, indent=1, default=str) + "\n"}
    if spec.source is not None:
        files["spec.toml"] = spec.source
    return files


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
    inner = ([len(session_configs(spec, configs, m)) for m in spec.models]
             if "steps" in spec.methods else [])
    steps = (f"; steps method: {spec.repeats * len(inner)} sessions of "
             f"{'/'.join(map(str, dict.fromkeys(inner)))} interleaved models x "
             f"{spec.rounds} rounds") if inner else ""
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
