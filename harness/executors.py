"""Where the runs of a sweep execute: here (``local``, one child process per run, as
`harness.runner.run_sweep` does; ``inline``) or on a cluster through submitit (``slurm``;
``submitit-local`` is submitit's local executor through the same code path, for CI).

On a cluster the unit shipped to a job is a whole repeat block: every run of the block, in
the block's shuffled order, one after another on one machine and one device, so that every
speed ratio the statistics take (configs paired within a block) is measured on one device.
Blocks spread over the jobs of a job array (one array task per block).

Inside a job each run is its own process, ``python -m harness.runner SPEC OUT --shard``
(`harness.runner.execute_run` with ``shard=True``): it writes every epoch's rows to
``<out>/shards/<run_id>.parquet`` (atomic replace) with the provenance of the machine it ran
on (hostname, device name). The submitting process is the only writer of ``runs.parquet`` /
``runs.csv``: it folds the shards in (`merge`) as jobs end, and deletes them once no job of
its own is left.

Resume: finished runs are skipped, on the cluster as here. A job that dies (preempted, node
failure, time limit, scancel) leaves the rest of its block unfinished; the block goes back
to a job (up to ``retries`` times in the same submission, except after a cancel, which
means stop; and at the next submission). A run a dead job left half done is redone whole;
a finished run is never replaced by a half-done redo (`merge`). A block whose finished runs
were measured on another machine or device than the job now running it is redone whole, so
that a finished block is always one machine and one device.

Spec (``[executor]`` table of an ablation spec; every key optional)::

    [executor]
    kind = "slurm"              # local (default) | inline | slurm | submitit-local
    partition = "gpu"
    gpus_per_job = 1            # default: 1 when the runs are on cuda, else 0
    cpus_per_job = 8
    mem_gb = 32
    time_limit = "02:00:00"     # minutes (int) or [D-]HH:MM:SS; default 60 minutes
    max_parallel = 4            # array tasks running at once
    retries = 1                 # resubmissions of blocks whose job died
    setup = ["module load cuda"]            # shell lines run before the job
    options = {account = "proj", qos = "normal", exclusive = true}   # more sbatch options

Command line: ``--executor slurm --partition gpu --gpus-per-job 1 --time-limit 120
--slurm-option account=proj --slurm-option exclusive`` (overrides the spec's table).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import difflib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from . import records

__all__ = ["EXECUTORS", "ExecutorOptions", "parse_options", "add_arguments", "options_from",
           "run_blocks", "run_block", "BlockRunner", "merge", "block_identities",
           "blocks_needing_work", "parse_time_limit"]

EXECUTORS = ("local", "inline", "slurm", "submitit-local")
CLUSTER_EXECUTORS = ("slurm", "submitit-local")
JOBS_DIR = "jobs"  # <out>/jobs: submitit's folders (pickles, logs) and block records
# Slurm job states after which the job is over (squeue %T). Anything else (PENDING,
# RUNNING, REQUEUED, COMPLETING, SUSPENDED, ...) is still on its way.
TERMINAL_STATES = ("COMPLETED", "CANCELLED", "FAILED", "TIMEOUT", "NODE_FAIL", "PREEMPTED",
                   "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE", "SPECIAL_EXIT", "REVOKED",
                   "GONE", "FINISHED", "INTERRUPTED", "NO PROCESS AND NO RESULT")
DEFAULT_TIME_LIMIT_MIN = 60


# --- options -----------------------------------------------------------------------------

@dataclass(frozen=True)
class ExecutorOptions:
    """How and where the blocks of a sweep run (see the module docstring)."""

    kind: str = "local"
    partition: str | None = None
    gpus_per_job: int | None = None  # None: 1 when the runs are on cuda, else 0
    cpus_per_job: int | None = None
    mem_gb: float | None = None
    time_limit: int | str | None = None  # minutes, or [D-]HH:MM:SS
    max_parallel: int | None = None
    retries: int = 1
    setup: tuple[str, ...] = ()
    options: dict[str, Any] = field(default_factory=dict)
    poll_s: float = 5.0  # how often the submitting process looks at its jobs

    def __post_init__(self):
        kind = self.kind.replace("_", "-") if isinstance(self.kind, str) else self.kind
        if kind not in EXECUTORS:
            raise ValueError(f"executor kind must be one of {', '.join(EXECUTORS)}, got "
                             f"{self.kind!r}")
        object.__setattr__(self, "kind", kind)
        for name in ("gpus_per_job", "cpus_per_job", "max_parallel", "retries"):
            v = getattr(self, name)
            low = 1 if name in ("cpus_per_job", "max_parallel") else 0
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < low):
                raise ValueError(f"[executor].{name} must be an int >= {low}, got {v!r}")
        if self.mem_gb is not None and not (isinstance(self.mem_gb, (int, float))
                                            and self.mem_gb > 0):
            raise ValueError(f"[executor].mem_gb must be > 0, got {self.mem_gb!r}")
        if self.time_limit is not None:
            parse_time_limit(self.time_limit)
        if isinstance(self.setup, str):
            object.__setattr__(self, "setup", (self.setup,))
        object.__setattr__(self, "setup", tuple(self.setup))
        if not isinstance(self.options, dict):
            raise ValueError(f"[executor].options must be a table of sbatch options, got "
                             f"{self.options!r}")
        if not self.poll_s > 0:
            raise ValueError(f"poll_s must be > 0, got {self.poll_s}")

    def replace(self, **kw: Any) -> ExecutorOptions:
        return dataclasses.replace(self, **{k: v for k, v in kw.items() if v is not None})

    def time_limit_min(self) -> int:
        if self.time_limit is None:
            return DEFAULT_TIME_LIMIT_MIN
        return parse_time_limit(self.time_limit)


def parse_time_limit(value: int | str) -> int:
    """Minutes from an int, or a Slurm time string (MM, HH:MM:SS, D-HH[:MM[:SS]])."""
    if isinstance(value, bool):
        raise ValueError(f"time_limit must be minutes or [D-]HH:MM:SS, got {value!r}")
    if isinstance(value, (int, float)):
        if value <= 0:
            raise ValueError(f"time_limit must be > 0 minutes, got {value!r}")
        return int(-(-value // 1))
    m = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", str(value).strip())
    if not m:
        raise ValueError(f"time_limit must be minutes or [D-]HH:MM:SS, got {value!r}")
    d, a, b, c = m.groups()
    parts = [int(x) for x in (a, b, c) if x is not None]
    if d is None:  # MM | MM:SS | HH:MM:SS (Slurm's reading)
        days = 0
        if len(parts) == 1:
            h, mi, s = 0, parts[0], 0
        elif len(parts) == 2:
            h, mi, s = 0, parts[0], parts[1]
        else:
            h, mi, s = parts
    else:  # D-HH | D-HH:MM | D-HH:MM:SS
        days = int(d)
        h, mi, s = (parts + [0, 0])[:3]
    minutes = days * 1440 + h * 60 + mi + (1 if s else 0)
    if minutes <= 0:
        raise ValueError(f"time_limit must be > 0, got {value!r}")
    return minutes


_OPTION_KEYS = {f.name for f in dataclasses.fields(ExecutorOptions)} - {"poll_s"}


def parse_options(table: dict[str, Any] | None) -> ExecutorOptions:
    """Validate an ``[executor]`` table of a spec (ValueError naming what would be right)."""
    table = dict(table or {})
    for key in table:
        if key not in _OPTION_KEYS:
            close = difflib.get_close_matches(key, sorted(_OPTION_KEYS), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"[executor] has no key {key!r}{hint}; valid: "
                             f"{', '.join(sorted(_OPTION_KEYS))}")
    if "setup" in table and isinstance(table["setup"], list):
        table["setup"] = tuple(table["setup"])
    return ExecutorOptions(**table)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The executor's command-line options (``python -m harness ablate``)."""
    g = p.add_argument_group("executor (override the spec's [executor] table)")
    g.add_argument("--executor", choices=EXECUTORS, default=None,
                   help="local (default): one process per run here; slurm: one job per "
                        "repeat block through submitit; submitit-local: the same through "
                        "submitit's local executor")
    g.add_argument("--partition", help="Slurm partition")
    g.add_argument("--gpus-per-job", type=int, help="GPUs per job (default: 1 on cuda, else 0)")
    g.add_argument("--cpus-per-job", type=int, help="CPUs per job")
    g.add_argument("--mem-gb", type=float, help="memory per job (GB)")
    g.add_argument("--time-limit", help="per job: minutes or [D-]HH:MM:SS (default 60 min)")
    g.add_argument("--max-parallel", type=int, help="array tasks (blocks) running at once")
    g.add_argument("--retries", type=int, help="resubmissions of blocks whose job died "
                                               "(default 1)")
    g.add_argument("--slurm-option", action="append", default=[], metavar="KEY[=VALUE]",
                   help="extra sbatch option, e.g. account=proj, qos=high, exclusive "
                        "(repeatable)")


def options_from(table: dict[str, Any] | ExecutorOptions | None,
                 args: argparse.Namespace | None = None) -> ExecutorOptions:
    """The spec's ``[executor]`` table with the command line's options on top."""
    opts = table if isinstance(table, ExecutorOptions) else parse_options(table)
    if args is None:
        return opts
    extra = dict(opts.options)
    for item in getattr(args, "slurm_option", None) or []:
        key, eq, value = item.partition("=")
        key = key.strip().lstrip("-")
        if not key:
            raise ValueError(f"--slurm-option needs KEY[=VALUE], got {item!r}")
        extra[key] = value if eq else True
    time_limit = getattr(args, "time_limit", None)
    if isinstance(time_limit, str) and time_limit.isdigit():
        time_limit = int(time_limit)
    return opts.replace(kind=getattr(args, "executor", None),
                        partition=getattr(args, "partition", None),
                        gpus_per_job=getattr(args, "gpus_per_job", None),
                        cpus_per_job=getattr(args, "cpus_per_job", None),
                        mem_gb=getattr(args, "mem_gb", None), time_limit=time_limit,
                        max_parallel=getattr(args, "max_parallel", None),
                        retries=getattr(args, "retries", None), options=extra)


# --- the table: state across table and shards ---------------------------------------------

def _finished(rows: pd.DataFrame, epochs: int | None) -> bool:
    if not len(rows):
        return False
    run_id = rows["run_id"].iloc[0]
    n = epochs if epochs is not None else int(rows["epoch"].max())
    return run_id in records.finished_run_ids(rows, {run_id: n})


def _read_shard(path: Path) -> pd.DataFrame | None:
    try:
        return records.normalize(pd.read_parquet(path))
    except (OSError, ValueError) as e:  # a foreign or broken file: leave it, say so
        print(f"[executor] skipping unreadable shard {path}: {e}", file=sys.stderr)
        return None


def _overlay(table: pd.DataFrame, shards: Iterable[Path],
             epochs: dict[str, int] | None) -> tuple[pd.DataFrame, list[Path]]:
    """The table with the shards folded in: a shard's rows replace all rows of its run,
    unless the table holds that run finished and the shard does not (a redo that died)."""
    epochs = epochs or {}
    used = []
    for path in shards:
        part = _read_shard(path)
        if part is None:
            continue
        used.append(path)
        if not len(part):
            continue
        for run_id, new in part.groupby("run_id", sort=False):
            old = table[table["run_id"] == run_id]
            if _finished(old, epochs.get(run_id)) and not _finished(new, epochs.get(run_id)):
                continue
            table = records._concat(table[table["run_id"] != run_id], new)
    return table, used


def current_rows(out_dir: str | os.PathLike, epochs: dict[str, int] | None = None
                 ) -> pd.DataFrame:
    """What the table will hold once the shards are merged (reads only)."""
    out_dir = Path(out_dir)
    table, _ = _overlay(records.read_table(out_dir),
                        sorted((out_dir / "shards").glob("*.parquet")), epochs)
    return table


def merge(out_dir: str | os.PathLike, epochs: dict[str, int] | None = None, *,
          remove: bool = False) -> pd.DataFrame:
    """Fold the shards into ``runs.parquet``/``runs.csv`` (one atomic replace under the
    table's lock). Rows are unique by (run_id, epoch): a shard holds all rows of its run so
    far and replaces the table's rows of that run; a finished run in the table is kept
    against an unfinished shard (`_overlay`). ``remove`` deletes the merged shards: only when
    no job is writing any more (a job replaces its shard each epoch)."""
    out_dir = Path(out_dir)
    shards = sorted((out_dir / "shards").glob("*.parquet"))
    with records._locked(out_dir):
        table = records._read(out_dir / records.TABLE)
        if shards or not (out_dir / records.TABLE).is_file():
            table, used = _overlay(table, shards, epochs)
            records._write(out_dir, table)
        else:
            used = []
        if remove:
            for path in used:
                path.unlink(missing_ok=True)
    return table


def _identity(rows: pd.DataFrame) -> set[tuple[str, str]]:
    return set(zip(rows["hostname"].astype(str), rows["device_name"].astype(str), strict=True))


def block_identities(table: pd.DataFrame) -> dict[int, set[tuple[str, str]]]:
    """(hostname, device name) pairs each block's rows were measured on."""
    return {int(b): _identity(g) for b, g in table.groupby("block")}


def _finished_ids(table: pd.DataFrame, specs) -> set[str]:
    return records.finished_run_ids(table, {s.run_id: s.epochs for s in specs})


def blocks_needing_work(table: pd.DataFrame, specs) -> list[int]:
    """Blocks with a run not finished, or with finished runs from more than one machine or
    device (such a block is redone whole on one)."""
    done = _finished_ids(table, specs)
    out = []
    for b, group in _by_block(specs).items():
        ids = {s.run_id for s in group}
        fin = table[table["run_id"].isin(ids & done)]
        if not ids <= done or len(_identity(fin)) > 1:
            out.append(b)
    return out


def _by_block(specs) -> dict[int, list]:
    blocks: dict[int, list] = {}
    for s in specs:
        blocks.setdefault(int(s.block), []).append(s)
    return {b: sorted(g, key=lambda s: s.order) for b, g in sorted(blocks.items())}


# --- inside a job --------------------------------------------------------------------------

def _job_id() -> str:
    env = os.environ
    if env.get("SLURM_ARRAY_JOB_ID"):
        return f"{env['SLURM_ARRAY_JOB_ID']}_{env.get('SLURM_ARRAY_TASK_ID', '0')}"
    return env.get("SLURM_JOB_ID") or env.get("SUBMITIT_LOCAL_JOB_ID") or f"pid{os.getpid()}"


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True, default=str) + "\n")
    os.replace(tmp, path)


def _run_child(spec, out_dir: Path) -> int:
    """One run in its own process, writing its shard (the local runner's child, --shard)."""
    from .runner import _child_env

    spec_dir = out_dir / "specs"
    spec_dir.mkdir(parents=True, exist_ok=True)
    path = spec_dir / f"{spec.run_id}.json"
    path.write_text(json.dumps(spec.to_dict(), indent=1, sort_keys=True) + "\n")
    proc = subprocess.Popen([sys.executable, "-m", "harness.runner", str(path), str(out_dir),
                             "--shard"], env=_child_env(), stdin=subprocess.DEVNULL)
    pid_file = spec_dir / f"{spec.run_id}.pid"
    pid_file.write_text(f"{proc.pid}\n")
    try:
        return proc.wait()
    except BaseException:  # the job is being stopped (signal, requeue): stop the run too
        proc.kill()
        proc.wait()
        raise
    finally:
        pid_file.unlink(missing_ok=True)


def _record_dead_child(spec, out_dir: Path, rc: int, base: dict) -> None:
    """The run's process died without recording its end: add an error row to its shard."""
    path = out_dir / "shards" / f"{spec.run_id}.parquet"
    rows = _read_shard(path) if path.is_file() else None
    rows = rows if rows is not None else records.empty_table()
    if len(rows) and ((rows["status"] != "ok").any() or _finished(rows, spec.epochs)):
        return
    why = (f"run process killed by {signal.Signals(-rc).name} (the OOM killer, a time limit "
           f"or a user)" if rc < 0 else f"run process exited with code {rc}")
    epoch = int(rows["epoch"].max()) + 1 if len(rows) else 1
    row = {**base, "epoch": epoch, "warmup": epoch <= spec.warmup_epochs, "status": "error",
           "error": f"{why}; job {_job_id()} on {socket.gethostname()}"}
    records.write_shard(out_dir, spec.run_id, [*rows.to_dict("records"), row])


def run_block(spec_dicts: list[dict], out_dir: str) -> dict:
    """Run one repeat block here (the body of a job): its runs in their order, each in its
    own process writing its shard; finished runs are skipped, unless finished runs of the
    block were measured on another machine or device, in which case the whole block is
    redone here. Returns a summary (also written to ``<out>/jobs/blocks/block<b>.json``)."""
    import torch

    from .provenance import provenance
    from .runner import RunSpec, _base_row, resolve_device

    out = Path(out_dir)
    specs = sorted((RunSpec.from_dict(d) for d in spec_dicts), key=lambda s: s.order)
    blocks = {s.block for s in specs}
    if len(blocks) != 1:
        raise ValueError(f"a job runs one block, got blocks {sorted(blocks)}")
    block = blocks.pop()
    try:
        device = resolve_device(specs[0].device)
    except ValueError:
        device = torch.device("cpu")
    prov = provenance(device, out)
    me = (prov["hostname"], prov["device_name"])
    epochs = {s.run_id: s.epochs for s in specs}
    state = current_rows(out, epochs)
    done = records.finished_run_ids(state, epochs)
    fin = state[state["run_id"].isin(done)]
    others = _identity(fin) - {me}
    todo = specs if others else [s for s in specs if s.run_id not in done]
    summary = {"block": block, "job_id": _job_id(), "hostname": me[0], "device_name": me[1],
               "pid": os.getpid(), "started": time.time(), "state": "running",
               "runs": [s.run_id for s in specs], "todo": [s.run_id for s in todo],
               "redo_whole_block_from": sorted(map(list, others)), "current": None}
    status_path = out / JOBS_DIR / "blocks" / f"block{block}.json"
    _write_json(status_path, summary)
    if others:
        print(f"[block {block}] finished runs were measured on {sorted(others)}, this job "
              f"runs on {me}: redoing the whole block here", flush=True)
    stop = []  # SIGTERM (scancel, the end of a time limit): finish no more runs

    def _on_term(signum, frame):  # Slurm signals the run's process too; it ends the run
        stop.append(signum)

    with contextlib.suppress(ValueError):  # (not in the main thread: no handler)
        signal.signal(signal.SIGTERM, _on_term)
    for s in todo:
        if stop:
            break
        summary["current"] = s.run_id
        _write_json(status_path, summary)
        print(f"[block {block}] run {s.order}: {s.config} / {s.model} ({s.run_id}) on "
              f"{me[0]}, {me[1]}", flush=True)
        rc = _run_child(s, out)
        if rc != 0:
            _record_dead_child(s, out, rc, _base_row(s, prov))
    summary.update(state="stopped" if stop else "done", current=None, ended=time.time())
    _write_json(status_path, summary)
    if stop:  # the job's outcome says so too (submitit records the error, not a success)
        raise RuntimeError(f"block {block}: job {summary['job_id']} stopped by signal "
                           f"{stop[0]} (scancel or time limit); its unfinished runs are "
                           f"left to redo")
    return summary


try:  # a Checkpointable job is requeued by submitit on time limit / preemption
    from submitit.helpers import Checkpointable as _Checkpointable
except ImportError:  # pragma: no cover - submitit is a dependency; keep local runs working
    _Checkpointable = object


class BlockRunner(_Checkpointable):
    """The callable a job runs: `run_block`. On a time limit or preemption submitit calls
    `checkpoint` and requeues the same block; the requeued job skips the runs finished."""

    def __call__(self, spec_dicts: list[dict], out_dir: str) -> dict:
        return run_block(spec_dicts, out_dir)


# --- the submitting process ----------------------------------------------------------------

def _squeue_states() -> dict[str, str] | None:
    """job id -> state of this cluster's jobs (array tasks one per line); None without
    squeue."""
    try:
        out = subprocess.run(["squeue", "-h", "-r", "--states=all", "-o", "%i|%T"],
                             capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    states = {}
    for line in out.stdout.splitlines():
        jid, _, st = line.strip().partition("|")
        if jid:
            states[jid] = st.strip().upper()
    return states


def _job_state(job, kind: str, squeue: dict[str, str] | None) -> str:
    """The job's state; terminal ones are in TERMINAL_STATES. Works without Slurm
    accounting (sacct), which a small cluster may not have: squeue first."""
    if kind == "slurm":
        st = (squeue or {}).get(str(job.job_id))
        if st is None:  # gone from squeue (MinJobAge passed) or squeue unavailable
            if job.paths.result_pickle.exists():
                return "COMPLETED"
            with contextlib.suppress(Exception):
                st = job.watcher.get_state(job.job_id, mode="force").upper()
            if not st or st == "UNKNOWN":
                return "GONE" if squeue is not None else "UNKNOWN"
        return st.split()[0].upper()
    st = str(job.state).upper()
    if st == "FINISHED" and not job.paths.result_pickle.exists():
        return "FAILED"
    return st


def _ended(state: str) -> bool:
    return state in TERMINAL_STATES


def _make_executor(opts: ExecutorOptions, folder: Path, name: str, on_cuda: bool):
    import submitit

    cluster = "slurm" if opts.kind == "slurm" else "local"
    ex = submitit.AutoExecutor(folder=folder / "%j", cluster=cluster)
    gpus = opts.gpus_per_job if opts.gpus_per_job is not None else int(on_cuda)
    params: dict[str, Any] = dict(name=name, timeout_min=opts.time_limit_min(), nodes=1,
                                  tasks_per_node=1, gpus_per_node=gpus,
                                  cpus_per_task=opts.cpus_per_job, mem_gb=opts.mem_gb)
    if cluster == "slurm":
        params.update(slurm_partition=opts.partition,
                      slurm_array_parallelism=opts.max_parallel,
                      slurm_additional_parameters=dict(opts.options) or None,
                      slurm_setup=list(opts.setup) or None)
    else:
        params.update(local_setup=list(opts.setup) or None)
    ex.update_parameters(**{k: v for k, v in params.items() if v is not None})
    return ex


def _active_path(out: Path) -> Path:
    return out / JOBS_DIR / "active.json"


def _check_no_active_jobs(out: Path, kind: str) -> None:
    """Refuse to start while jobs of an earlier submission into this folder still run
    (they write shards; two writers of one block would race)."""
    path = _active_path(out)
    if not path.is_file():
        return
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError):
        return
    alive = []
    if info.get("kind") == "slurm":
        states = _squeue_states() or {}
        alive = [j for j in info.get("jobs", []) if j in states and not _ended(states[j])]
    else:
        for j in info.get("jobs", []):
            with contextlib.suppress(ValueError, OSError):
                os.kill(int(j), 0)
                alive.append(j)
    if alive and info.get("submitter_pid") != os.getpid():
        raise RuntimeError(f"jobs {alive} of an earlier submission into {out} are still "
                           f"running ({path}); wait for them or cancel them (scancel) first")


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')} executor] {msg}", file=sys.stderr, flush=True)


def run_blocks(specs: list, out_dir: str | os.PathLike,
               options: ExecutorOptions | dict | str = "slurm", *, progress: bool = True,
               validate: bool = True) -> pd.DataFrame:
    """Run every block of ``specs`` as one cluster job (a job array), merge the results into
    the table, and return it. Finished runs are skipped; blocks whose job died are
    resubmitted up to ``options.retries`` times (not after a cancel). Blocks still
    unfinished at the end are named on stderr and are redone by the next call."""
    from .runner import check_specs

    if isinstance(options, str):
        options = ExecutorOptions(kind=options)
    elif isinstance(options, dict):
        options = parse_options(options)
    if options.kind not in CLUSTER_EXECUTORS:
        raise ValueError(f"run_blocks runs cluster executors {CLUSTER_EXECUTORS}; for "
                         f"{options.kind!r} use harness.runner.run_sweep")
    out = Path(out_dir).resolve()
    check_specs(specs, validate=validate)
    out.mkdir(parents=True, exist_ok=True)
    _check_no_active_jobs(out, options.kind)
    epochs = {s.run_id: s.epochs for s in specs}
    blocks = _by_block(specs)
    table = merge(out, epochs)  # what an earlier submission left in shards
    todo = blocks_needing_work(table, specs)
    done_blocks = len(blocks) - len(todo)
    say = _log if progress else (lambda msg: None)
    say(f"{len(blocks)} blocks, {done_blocks} finished already; submitting {len(todo)} "
        f"({options.kind})")
    on_cuda = any(str(s.device).startswith("cuda") for s in specs)
    ex = _make_executor(options, out / JOBS_DIR, f"qvit-{out.name}", on_cuda)
    attempt = 0
    cancelled: set[int] = set()
    try:
        while todo:
            payload = [[s.to_dict() for s in blocks[b]] for b in todo]
            jobs = ex.map_array(BlockRunner(), payload, [str(out)] * len(todo))
            job_of = dict(zip(todo, jobs, strict=True))
            _write_json(_active_path(out), {"kind": options.kind, "submitter_pid": os.getpid(),
                                            "jobs": [str(j.job_id) for j in jobs],
                                            "blocks": {str(b): str(j.job_id)
                                                       for b, j in job_of.items()}})
            say("submitted " + ", ".join(f"block {b} -> job {j.job_id}"
                                         for b, j in job_of.items()))
            final: dict[int, str] = {}
            last: dict[int, str] = {}
            while len(final) < len(job_of):
                time.sleep(options.poll_s)
                squeue = _squeue_states() if options.kind == "slurm" else None
                changed = False
                for b, job in job_of.items():
                    if b in final:
                        continue
                    st = _job_state(job, options.kind, squeue)
                    if st != last.get(b):
                        say(f"block {b}: job {job.job_id} {st}")
                        last[b] = st
                    if _ended(st):
                        final[b] = st
                        changed = True
                        _report_outcome(job, b, st, say)
                if changed:
                    merge(out, epochs)
            table = merge(out, epochs)
            left = blocks_needing_work(table, specs)
            cancelled |= {b for b in left if final.get(b) == "CANCELLED"}
            retry = [b for b in left if b not in cancelled]
            if not retry or attempt >= options.retries:
                break
            attempt += 1
            say(f"blocks {retry} unfinished after their jobs ended "
                f"({', '.join(final[b] for b in retry)}): resubmitting (retry {attempt} of "
                f"{options.retries})")
            todo = retry
    except BaseException:
        # stopped here (Ctrl-C, an error): stop the jobs too, keep what they finished
        for job in list(locals().get("jobs", [])):
            with contextlib.suppress(Exception):
                job.cancel(check=False)
        time.sleep(1)
        merge(out, epochs)
        raise
    _active_path(out).unlink(missing_ok=True)
    table = merge(out, epochs, remove=True)
    left = blocks_needing_work(table, specs)
    if left:
        say(f"blocks {left} are unfinished (jobs died or were cancelled); run the same "
            f"command again to redo them (finished runs are kept)")
    mixed = {b: ids for b, ids in block_identities(table[table["run_id"].isin(
        _finished_ids(table, specs))]).items() if len(ids) > 1}
    if mixed:
        say(f"blocks measured on more than one machine/device: {mixed}")
    return records.read_table(out)


def _report_outcome(job, block: int, state: str, say) -> None:
    if state != "COMPLETED" and state != "FINISHED":
        say(f"block {block}: job {job.job_id} ended {state}; its block's unfinished runs "
            f"are left to redo (logs: {job.paths.stdout.parent})")
        return
    with contextlib.suppress(Exception):
        outcome, result = job._get_outcome_and_result()
        if outcome == "error":
            say(f"block {block}: job {job.job_id} raised:\n{result}")
