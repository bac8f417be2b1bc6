"""What to run, decided before anything runs: run settings (`settings`, the one declaration
of each setting, from which the CLI options come: `options`), executor options (`executor`),
the spec file's schema (`schema`), datasets (`datasets`: the one list, checked without
loading), ablation specs (`ablation`), their designs (`designs`) and plans (`planning`).

Imports no torch: a bad spec is refused within a second. The names below are the spec
API in one place, loaded on first use (so `datasets` alone stays free of pydantic and qvit).
"""

from __future__ import annotations

import importlib
from typing import Any

_API = {
    **dict.fromkeys(("AblationSpec", "load_spec", "parse_spec"), "ablation"),
    **dict.fromkeys(("AA_CONTROL", "DESIGNS", "SEED_STAGE_NAMES", "SEED_STAGES", "Config",
                     "baseline_name", "design_configs", "device_type", "families",
                     "fractional", "not_run", "on_value"), "designs"),
    **dict.fromkeys(("PlannedRun", "block_orders", "epoch_configs", "format_plan", "plan",
                     "read_design", "session_configs", "design_files"), "planning"),
    "SEED_MINUTES": "schema", "RunSettings": "settings",
}

__all__ = sorted(_API)


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(importlib.import_module(f"harness.spec.{_API[name]}"), name)
    raise AttributeError(f"module 'harness.spec' has no attribute {name!r}")
