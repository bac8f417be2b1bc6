"""The schema of an ablation spec file (``ablations/*.toml``): one pydantic model per TOML
table, unknown keys forbidden. `harness.spec.ablation.parse_spec` validates against it; the keys of
``[run]`` that are run settings come from `harness.spec.settings.RunSettings`, the rest (the
sweep: models, repeats, methods) from `SweepTable`."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["ConfigEntry", "DesignTable", "ReportTable", "SweepTable", "SpecFile",
           "SEED_STAGES", "SEED_STAGE_NAMES", "SEED_MINUTES"]

# The seed's published table (FLAGS.md): which changes each stage adds, and its epoch minutes.
SEED_STAGES = ((2, 3), (4, 5, 6), (7, 8, 9), (10, 11, 12, 13), (14, 15, 16))
SEED_STAGE_NAMES = ("stage1", "stage2", "stage3", "stage4", "seed")
SEED_MINUTES = (38.0, 20.0, 15.0, 12.0, 10.5, 10.0)


class _Table(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class ConfigEntry(_Table):
    name: str = Field(min_length=1)
    flags: str = "best"
    float_reference: bool = False
    note: str = ""


class DesignTable(_Table):
    """``[design]``: which configs to compare."""

    kind: Literal["timeline", "one_at_a_time", "leave_one_out", "factorial", "fractional",
                  "configs"]
    base: str | None = None
    baseline: str | None = None
    flags: list[str] | None = None
    values: dict[str, bool | int | str] = {}
    levels: dict[str, list[bool | int | str]] = {}
    stages: list[list[int]] = [list(s) for s in SEED_STAGES]
    stage_names: list[str] = list(SEED_STAGE_NAMES)
    method: Literal["plackett_burman", "resolution_iv"] = "plackett_burman"
    configs: list[ConfigEntry] = []
    aa_control: bool = Field(True, description="add the baseline a second time (A/A)")


class ReportTable(_Table):
    """``[report]``: what to print beside the measurements."""

    title: str | None = None
    reference_minutes: list[float] | None = None
    reference_label: str = "seed (RTX 3060, CIFAR-10)"
    iqr_warn: float = 0.10
    margin_pp: float = Field(1.0, gt=0, description="equivalence margin, top-1 points")
    compare_with: str | None = Field(None, description="a committed results folder shown "
                                     "beside the fresh figures")


class SweepTable(_Table):
    """The keys of ``[run]`` that are about the sweep, not a run."""

    models: list[str] = Field(min_length=1)
    repeats: int = Field(5, ge=1, description="repeat blocks (>= 2: intervals need two)")
    methods: list[Literal["epochs", "steps"]] = Field(
        ["epochs"], min_length=1, description="epochs: whole epochs per run (what a user "
        "waits for); steps: step-interleaved in one process (model arithmetic, precise)")
    rounds: int = Field(6, ge=2, description="rounds of each step-interleaved session "
                        "(`repeats` sessions per model, each in its own process)")
    epochs_for: Literal["all", "loop_flags"] = Field(
        "all", description="with both methods, which configs also run whole epochs: all, or "
        "only those moving a loop flag (plus the baseline, the A/A control and float "
        "references); a module flag acts inside the step, which the steps method measures")


class SpecFile(_Table):
    name: str
    description: str = ""
    run: dict[str, Any]
    design: DesignTable
    report: ReportTable = ReportTable()
    executor: dict[str, Any] = {}
