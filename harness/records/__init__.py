"""Where every result lives: the runs table (`table`: schema, shards, atomic writes, resume),
its provenance columns (`provenance`) and the output folder a sweep owns (`outdir`).

``from harness import records; records.read_table(folder)``: the table's API is this
package's (loaded on first use, so `outdir`'s checks stay free of pandas and torch).
"""

from __future__ import annotations

import importlib
from typing import Any

_TABLE_NAMES = ("STATUSES", "FINAL_STATUSES", "ID_COLUMNS", "METRIC_COLUMNS", "columns",
                "empty_table", "append_rows", "read_table", "drop_run", "write_shard",
                "read_shard", "merge_shards", "current_rows", "normalize", "run_finished",
                "finished_run_ids", "resumable_epochs", "TABLE", "CSV", "run_rows",
                "append_shard_rows", "drop_shard_rows_after", "discard_run")

__all__ = list(_TABLE_NAMES)


def __getattr__(name: str) -> Any:
    if name in _TABLE_NAMES:
        return getattr(importlib.import_module("harness.records.table"), name)
    raise AttributeError(f"module 'harness.records' has no attribute {name!r}")
