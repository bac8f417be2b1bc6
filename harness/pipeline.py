"""A spec from design to report: the one path behind ``harness ablate`` and ``harness run``.

`run_spec` owns its output folder for the whole sweep (claimed: new, empty or the harness's
own, then locked), writes the design, runs every unfinished run of it
(`executors.run_sweep`; the step-interleaved sessions with `executors.run_interleaved`), and
builds the report inside that folder. A sweep stopped on the way (Ctrl-C, SIGTERM, a write
the disk refused) ends in `SweepStopped`: one line saying what stopped it, how many runs are
finished and kept, and that the same command resumes.
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

from harness import records
from harness.analysis.report import build_report
from harness.errors import SweepStopped, describe_stop, signals_raise
from harness.records.files import write_design
from harness.records.outdir import claim_out_dir, owned_dir_lock
from harness.run.interleave import session_run_ids
from harness.spec import AblationSpec, design_configs, plan
from harness.sweep.executors import run_interleaved, run_sweep
from harness.sweep.runs import sessions_of, to_runspecs

__all__ = ["run_spec"]


def run_spec(spec: AblationSpec, out: Path, executor: Any = "local", *, report: bool = True,
             progress: bool = True, command: str = "ablate") -> Path | None:
    """Run a validated spec into ``out`` (claimed and locked for the whole sweep): the
    design, the runs (finished ones of the same identity skipped), the report. Returns
    report.md. ``command`` is what the folder's marker names."""
    out = claim_out_dir(out, command, spec.name)
    with owned_dir_lock(out):
        configs = design_configs(spec)
        specs = to_runspecs(spec, plan(spec, configs)) if "epochs" in spec.methods else []
        sessions = sessions_of(spec, configs) if "steps" in spec.methods else []
        ids = [s.run_id for s in specs] + [i for x in sessions for i in session_run_ids(x)]
        try:
            with signals_raise(signal.SIGTERM):
                write_design(spec, configs, ids, out)
                if specs:
                    run_sweep(specs, out, executor, progress=progress)
                if sessions:
                    run_interleaved(sessions, out, progress=progress)
                if report:
                    return build_report(out)
        except (Exception, KeyboardInterrupt) as exc:
            stopped = _stopped(exc, out, specs, sessions)
            if stopped is None:
                raise
            raise stopped from None
    return None


def _finished(out: Path, specs: list, sessions: list) -> tuple[int, int] | None:
    """(finished, all) runs of this design in the folder's table and shards; None when the
    folder cannot be read either."""
    try:
        rows = records.current_rows(out)
    except (OSError, ValueError):
        return None
    done = records.finished_run_ids(rows, {s.run_id: s.epochs for s in specs})
    have = set(rows["run_id"])
    done_sessions = [x for x in sessions if set(session_run_ids(x)) <= have]
    return len(done) + len(done_sessions), len(specs) + len(sessions)


def _stopped(exc: BaseException, out: Path, specs: list, sessions: list
             ) -> SweepStopped | None:
    """The one line of a sweep that Ctrl-C, a signal or the disk stopped; None for other
    errors (bugs keep their traceback)."""
    found = describe_stop(exc, str(out))
    if found is None:
        return None
    code, what, remedy = found
    counted = _finished(out, specs, sessions)
    kept = (f"{counted[0]} of {counted[1]} runs finished and kept in {out}" if counted
            else f"the finished runs are kept in {out}")
    todo = f"{remedy} and rerun" if remedy else "rerun"
    return SweepStopped(f"{what}; {kept}; {todo} the same command to resume", code)
