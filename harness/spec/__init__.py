"""What to run, decided before anything runs: run settings (`settings`, the one declaration
of each setting, from which the CLI options come: `options`), executor options (`executor`),
the spec file's schema (`schema`), datasets (`datasets`: the one list, checked without
loading), ablation specs (`ablation`), their designs (`designs`) and plans (`plan`).

Imports no torch: a bad spec is refused within a second. The names below are the spec
API in one place.
"""

from harness.spec.ablation import AblationSpec, load_spec, parse_spec
from harness.spec.designs import (
    AA_CONTROL,
    DESIGNS,
    SEED_STAGE_NAMES,
    SEED_STAGES,
    Config,
    baseline_name,
    design_configs,
    device_type,
    families,
    fractional,
    not_run,
    on_value,
)
from harness.spec.plan import (
    PlannedRun,
    block_orders,
    epoch_configs,
    format_plan,
    plan,
    read_design,
    session_configs,
    write_design,
)
from harness.spec.schema import SEED_MINUTES
from harness.spec.settings import RunSettings

__all__ = ["AblationSpec", "load_spec", "parse_spec", "AA_CONTROL", "DESIGNS", "SEED_STAGES",
           "SEED_STAGE_NAMES", "SEED_MINUTES", "Config", "baseline_name", "design_configs",
           "device_type", "families", "fractional", "not_run", "on_value", "PlannedRun",
           "block_orders", "epoch_configs", "format_plan", "plan", "read_design",
           "session_configs", "write_design", "RunSettings"]
