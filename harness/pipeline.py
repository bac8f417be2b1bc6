"""A spec from design to report: the one path behind ``harness ablate`` and ``harness run``.

`run_spec` owns its output folder for the whole sweep (checked, then locked), writes the
design, runs every unfinished run of it (`executors.run_sweep`; the step-interleaved
sessions with `executors.run_interleaved`), and builds the report inside that folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from harness.analysis.report import build_report
from harness.records.outdir import check_out_dir, owned_dir_lock
from harness.run.interleave import session_run_ids
from harness.spec import AblationSpec, design_configs, plan, write_design
from harness.sweep.executors import run_interleaved, run_sweep
from harness.sweep.runs import sessions_of, to_runspecs

__all__ = ["run_spec"]


def run_spec(spec: AblationSpec, out: Path, executor: Any = "local", *, report: bool = True,
             progress: bool = True) -> Path | None:
    """Run a validated spec into ``out`` (owned and locked for the whole sweep): the design,
    the runs (finished ones of the same identity skipped), the report. Returns report.md."""
    out = check_out_dir(out)
    with owned_dir_lock(out):
        configs = design_configs(spec)
        specs = to_runspecs(spec, plan(spec, configs)) if "epochs" in spec.methods else []
        sessions = sessions_of(spec, configs) if "steps" in spec.methods else []
        ids = [s.run_id for s in specs] + [i for x in sessions for i in session_run_ids(x)]
        write_design(spec, configs, ids, out)
        if specs:
            run_sweep(specs, out, executor, progress=progress)
        if sessions:
            run_interleaved(sessions, out, progress=progress)
        if report:
            return build_report(out)
    return None
