"""Where the runs of a sweep execute, and the sweep itself (`run_sweep`).

The unit of work is a repeat block: every run of the block, in the block's shuffled order,
one after another in ONE child process (``python -m harness.run.runner BLOCK.json OUT``,
`harness.run.runner.execute_block`) on one machine and one device, so every speed ratio the
statistics take (configs paired within a block) is measured on one device in one process
life. `run_block` spawns that child and, if the child dies (the OOM killer, a signal), records
the run it was in as failed and starts a new child for the rest. It is the one way a child
is run: ``local`` calls `run_block` here, block after block; ``slurm`` / ``submitit-local``
ship each block to a job of a job array (submitit), whose body is the same `run_block`.

Every run writes its rows to ``<out>/shards/<run_id>.parquet`` as its epochs end (and a
checkpoint, so a killed run resumes after its last finished epoch). The submitting process
is the only writer of ``runs.parquet`` / ``runs.csv``: it folds the shards in
(`records.merge_shards`) after each block or job, and when it starts (what a killed earlier
sweep left). Finished runs (same identity: `harness.spec.settings.identity`) are skipped.

Resume on a cluster: a job that dies (preempted, node failure, time limit, scancel) leaves
the rest of its block unfinished; the block goes back to a job (up to ``retries`` times,
except after a cancel, which means stop; and at the next submission). A block whose finished
runs were measured on another machine or device than the job now running it is redone whole.

Options: the ``[executor]`` table of a spec (`harness.spec.executor.ExecutorOptions`, its
one declaration; docs/cluster.md), under the command line's (``--executor slurm --partition
gpu ...``). An option the executor cannot act on is refused (``local`` takes none;
``submitit-local`` no partition, CPU, memory or sbatch options, and starts its jobs in
`waves` of ``max_parallel``, where Slurm's array holds them itself).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
from submitit.helpers import Checkpointable

from harness import records
from harness.errors import IO_FAULT_EXIT, FaultChannel
from harness.records.files import write_text
from harness.run.process import expected_threads
from harness.run.runner import (
    CODE_CHANGED,
    CODE_CHANGED_MESSAGE,
    INFLIGHT,
    RunSpec,
    base_row,
    resolve_device,
)
from harness.spec.executor import (
    CLUSTER_EXECUTORS,
    EXECUTORS,
    ExecutorOptions,
    options_from,
    parse_options,
    parse_time_limit,
)
from harness.sweep.progress import Progress, RunWatcher

__all__ = ["EXECUTORS", "ExecutorOptions", "parse_options", "options_from",
           "run_sweep", "run_block", "run_interleaved", "spawn", "BlockRunner",
           "block_identities", "blocks_needing_work", "parse_time_limit", "squeue_states", "waves"]

JOBS_DIR = "jobs"  # <out>/jobs: submitit's folders (pickles, logs) and block records
TICK_S = 1.0  # how often a waiting sweep looks at its children's progress
# Slurm job states after which the job is over (squeue %T). Anything else (PENDING,
# RUNNING, REQUEUED, COMPLETING, SUSPENDED, ...) is still on its way.
TERMINAL_STATES = ("COMPLETED", "CANCELLED", "FAILED", "TIMEOUT", "NODE_FAIL", "PREEMPTED",
                   "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE", "SPECIAL_EXIT", "REVOKED",
                   "GONE", "FINISHED", "INTERRUPTED", "NO PROCESS AND NO RESULT")


# --- the table: state across table and shards ---------------------------------------------

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
    write_text(path, json.dumps(data, indent=1, sort_keys=True, default=str) + "\n")


def _child_env() -> dict:
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join([root] + [p for p in
                                                  env.get("PYTHONPATH", "").split(os.pathsep)
                                                  if p])
    return env


def spawn(module: str, payload: dict, out: Path, work: Path, progress: bool = False,
          tick: Callable[[], None] | None = None) -> int:
    """The one way the harness runs a child: ``python -m MODULE PAYLOAD.json OUT`` with the
    payload written to ``work/payload.json``; stopping the parent stops the child. ``tick``
    is called about every second while the child runs (the sweep's progress). The child
    ignores Ctrl-C (the parent stops it; its traceback would say nothing); a write its disk
    refused ends it with `IO_FAULT_EXIT` and is raised here, as an OSError."""
    path = work / "payload.json"
    _write_json(path, payload)
    cmd = [sys.executable, "-m", module, str(path), str(out)]
    if progress:
        cmd.append("--progress")
    channel = FaultChannel()
    with _sigint_ignored():  # inherited by the child, kept through exec
        proc = subprocess.Popen(cmd, env={**_child_env(), **channel.env},
                                stdin=subprocess.DEVNULL, pass_fds=channel.pass_fds)
    try:
        with _sigterm_raises():
            rc = None
            while tick is not None and rc is None:
                try:
                    rc = proc.wait(timeout=TICK_S)
                except subprocess.TimeoutExpired:
                    tick()
            if rc is None:
                rc = proc.wait()
    except BaseException:  # stopped (Ctrl-C, a signal, a requeue): stop the child too
        proc.kill()
        proc.wait()
        raise
    finally:
        fault = channel.close()  # the write the child's disk refused, if it named one
    if rc == IO_FAULT_EXIT and fault is not None:
        raise fault
    return rc


@contextlib.contextmanager
def _sigint_ignored():
    try:
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@contextlib.contextmanager
def _sigterm_raises():
    """SIGTERM as SystemExit(143) while waiting for a child, where nothing else handles it:
    its default action ends this process at once and leaves the child running, writing into
    the output folder beside the next sweep. A handler already set (`run_block`'s: finish
    the run, start no more) is left alone."""
    def _raise(signum, frame):
        raise SystemExit(128 + signum)

    try:
        if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
            yield
            return
        previous = signal.signal(signal.SIGTERM, _raise)
    except ValueError:  # not the main thread: signals are the main thread's
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _record_dead_run(spec, out: Path, rc: int, prov: dict) -> None:
    """The child died inside ``spec``'s run without recording its end: say so in its shard
    (its finished epochs and checkpoint stay; the next sweep resumes it)."""
    why = (f"run process killed by {signal.Signals(-rc).name} (the OOM killer, a time limit "
           f"or a user)" if rc < 0 else f"run process exited with code {rc}")
    done = records.resumable_epochs(records.run_rows(out, spec.run_id), spec.run_id)
    epoch = done + 1
    process = {"threads": expected_threads(spec.settings)}
    row = {**base_row(spec, prov, process), "epoch": epoch,
           "warmup": epoch <= spec.settings.warmup_epochs, "status": "error",
           "error": f"{why}; job {_job_id()} on {socket.gethostname()}"}
    records.append_shard_rows(out, spec.run_id, [row])


def run_block(spec_dicts: list[dict], out_dir: str, progress: bool = False,
              tick: Callable[[], None] | None = None) -> dict:
    """Run one repeat block here (the body of a job, or of a local sweep's step): its
    unfinished runs in their order in one child process; a child that dies is blamed for
    the run it was in and the rest go on in a new child. Finished runs are skipped, unless
    finished runs of the block were measured on another machine or device: then the whole
    block is redone here. Returns a summary (also ``<out>/jobs/blocks/block<b>.json``)."""
    from harness.records.provenance import provenance

    out = Path(out_dir)
    specs = sorted((RunSpec.from_dict(d) for d in spec_dicts), key=lambda s: s.order)
    blocks = {s.block for s in specs}
    if len(blocks) != 1:
        raise ValueError(f"a job runs one block, got blocks {sorted(blocks)}")
    block = blocks.pop()
    # the device the runs resolve to (auto: cuda where there is one), as their rows name it
    prov = provenance(resolve_device(specs[0].settings.device), out,
                      threads=expected_threads(specs[0].settings))
    me = (prov["hostname"], prov["device_name"])
    state = records.current_rows(out)
    done = _finished_ids(state, specs)
    others = _identity(state[state["run_id"].isin(done)]) - {me}
    todo = specs if others else [s for s in specs if s.run_id not in done]
    summary = {"block": block, "job_id": _job_id(), "hostname": me[0], "device_name": me[1],
               "pid": os.getpid(), "started": time.time(), "state": "running",
               "runs": [s.run_id for s in specs], "todo": [s.run_id for s in todo],
               "redo_whole_block_from": sorted(map(list, others))}
    work = _block_work(out, block)
    _write_json(work.with_suffix(".json"), summary)
    if others:
        print(f"[block {block}] finished runs were measured on {sorted(others)}, this job "
              f"runs on {me}: redoing the whole block here", flush=True)
        for s in todo:
            records.discard_run(out, s.run_id)
    stop = []  # SIGTERM (scancel, the end of a time limit): start no more runs
    previous = signal.getsignal(signal.SIGTERM)

    def _on_term(signum, frame):
        stop.append(signum)
        if callable(previous):  # a local sweep's (`errors.signals_raise`): stop at once
            previous(signum, frame)

    with contextlib.suppress(ValueError):  # (not in the main thread: no handler)
        signal.signal(signal.SIGTERM, _on_term)
    while todo and not stop:
        rc = spawn("harness.run.runner", {"specs": [s.to_dict() for s in todo],
                                      "run_ids": [s.run_id for s in todo],
                                      "inflight": str(work / INFLIGHT)}, out, work, progress, tick)
        if rc == 0:
            break
        if rc == CODE_CHANGED:  # the child would record under other run ids: stop here
            raise ValueError(f"block {block}: {CODE_CHANGED_MESSAGE}")
        inflight = _read_inflight(work / INFLIGHT)
        dead = next((s for s in todo if s.run_id == inflight), todo[0])
        if not stop:
            _record_dead_run(dead, out, rc, prov)
        todo = todo[todo.index(dead) + 1:]
    summary.update(state="stopped" if stop else "done", ended=time.time())
    _write_json(work.with_suffix(".json"), summary)
    if stop:  # the job's outcome says so too (submitit records the error, not a success)
        raise RuntimeError(f"block {block}: job {summary['job_id']} stopped by signal "
                           f"{stop[0]} (scancel or time limit); its unfinished runs are "
                           f"left to redo")
    return summary


def _block_work(out: Path, block: int) -> Path:
    return out / JOBS_DIR / "blocks" / f"block{block}"


def _read_inflight(path: Path) -> str | None:
    try:
        return json.loads(path.read_text())["run_id"]
    except (OSError, ValueError, KeyError):
        return None


class BlockRunner(Checkpointable):  # submitit requeues it on a time limit or preemption
    """The callable a job runs: `run_block`. On a time limit or preemption submitit calls
    `checkpoint` and requeues the same block; the requeued job skips the runs finished."""

    def __call__(self, spec_dicts: list[dict], out_dir: str) -> dict:
        return run_block(spec_dicts, out_dir)


# --- the submitting process ----------------------------------------------------------------

def squeue_states() -> dict[str, str] | None:
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
    params: dict[str, Any] = dict(name=name, timeout_min=opts.time_limit, nodes=1,
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
        states = squeue_states() or {}
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


def _prepare(specs: list, out: Path, validate: bool, progress: bool) -> None:
    """Before any run: specs valid (device, model, data), pretrained starts made."""
    from harness.run.runner import check_specs
    from harness.sweep.pretrain import ensure_pretrained

    check_specs(specs, validate=validate)
    made = set()
    for s in specs:
        if s.settings.pretrained and s.settings.model not in made:
            ensure_pretrained(s.settings, progress=progress)
            made.add(s.settings.model)


def run_sweep(specs: list, out_dir: str | os.PathLike,
              options: ExecutorOptions | dict | str = "local", *, progress: bool = True,
              validate: bool = True) -> pd.DataFrame:
    """Run every unfinished block of ``specs`` (locally, block after block, or as cluster
    jobs), merge the results into the table and return it. Everything is checked, and the
    pretrained starts made, before the first run starts."""
    if isinstance(options, str):
        options = ExecutorOptions(kind=options)
    elif isinstance(options, dict):
        options = parse_options(options)
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    _prepare(specs, out, validate, progress)
    say = _log if progress else (lambda msg: None)
    if options.kind in CLUSTER_EXECUTORS:
        _check_no_active_jobs(out, options.kind)
    table = records.merge_shards(out, remove=True)  # what a killed earlier sweep left
    todo = blocks_needing_work(table, specs)
    blocks = _by_block(specs)
    say(f"{len(blocks)} blocks, {len(blocks) - len(todo)} finished already; "
        f"{len(todo)} to run ({options.kind})")
    watcher = _watcher(specs, table, out, options, len(todo), progress)
    say = watcher.progress.say if progress else say
    try:
        if options.kind in CLUSTER_EXECUTORS:
            _run_jobs(specs, blocks, todo, out, options, say, watcher)
        else:
            for b in todo:
                watcher.watch([b])
                watcher.progress.at(f"block {list(blocks).index(b) + 1}/{len(blocks)}")
                run_block([s.to_dict() for s in blocks[b]], str(out), progress=progress,
                          tick=watcher.poll)
                watcher.poll()
                records.merge_shards(out, remove=True)
    except BaseException:  # keep what finished; on a full disk the shards keep it
        with contextlib.suppress(OSError, ValueError):
            records.merge_shards(out, remove=True)
        raise
    finally:
        watcher.progress.close()
    records.merge_shards(out, remove=True)
    table = records.read_table(out)
    left = blocks_needing_work(table, specs)
    if left:
        say(f"blocks {left} are unfinished (runs failed, jobs died or were cancelled); run "
            f"the same command again to redo them (finished runs are kept)")
    return table


def _watcher(specs, table, out: Path, options: ExecutorOptions, n_blocks: int,
             progress: bool) -> RunWatcher:
    """The sweep's progress, fed by watching its children's shards."""
    done = _finished_ids(table, specs)
    pending = {s.run_id: (s.model, s.config) for s in specs if s.run_id not in done}
    parallel = (options.max_parallel or n_blocks) if options.kind in CLUSTER_EXECUTORS else 1
    bar = Progress(pending, total=len(specs), unit="runs", title="sweep", enabled=progress,
                   parallel=max(1, parallel))
    return RunWatcher(specs, out, bar, lambda b: _block_work(out, b) / INFLIGHT)


def run_interleaved(sessions: list, out_dir: str | os.PathLike, *, progress: bool = True
                    ) -> None:
    """Step-interleaved sessions (`harness.run.interleave`), each in a child process here;
    sessions whose rows the table holds are skipped."""
    from harness.run.interleave import session_run_ids, session_summary

    out = Path(out_dir).resolve()
    have = set(records.merge_shards(out, remove=True)["run_id"])
    pending = {str(i): s.specs[0].model for i, s in enumerate(sessions)
               if not set(session_run_ids(s)) <= have}
    with Progress(pending, total=len(sessions), unit="sessions", title="step-interleaved",
                  enabled=progress) as bar:
        for i, session in enumerate(sessions):
            if str(i) not in pending:
                continue
            model = session.specs[0].model
            bar.at(f"block {session.index}")
            bar.start(str(i), f"{model}, {len(session.specs)} configs x {session.rounds} "
                              f"rounds")
            rc = spawn("harness.run.interleave", session.to_dict(), out,
                       out / JOBS_DIR / f"steps{i}", progress=progress, tick=bar.tick)
            table = records.merge_shards(out, remove=True)
            if rc != 0:
                bar.finish(str(i), False, f"{model}: FAILED (exit {rc}); its rows are missing "
                                          f"from the report; rerun to retry")
            else:
                bar.finish(str(i), True, f"{model}: {session_summary(session, table)}")


def waves(todo: list[int], options: ExecutorOptions) -> list[list[int]]:
    """The submissions of ``todo``: Slurm holds an array to ``max_parallel`` running tasks
    itself; submitit's local executor starts every job it is given at once, so there the
    blocks go in waves of ``max_parallel`` (each waits for the one before to end)."""
    k = options.max_parallel if options.kind == "submitit-local" else None
    k = k or max(1, len(todo))
    return [todo[i:i + k] for i in range(0, len(todo), k)]


def _submit(ex, blocks, todo, out: Path, kind: str, say) -> dict:
    payload = [[s.to_dict() for s in blocks[b]] for b in todo]
    jobs = ex.map_array(BlockRunner(), payload, [str(out)] * len(todo))
    job_of = dict(zip(todo, jobs, strict=True))
    _write_json(_active_path(out), {"kind": kind, "submitter_pid": os.getpid(),
                                    "jobs": [str(j.job_id) for j in jobs],
                                    "blocks": {str(b): str(j.job_id)
                                               for b, j in job_of.items()}})
    say("submitted " + ", ".join(f"block {b} -> job {j.job_id}" for b, j in job_of.items()))
    return job_of


def _wait(job_of: dict, out: Path, options: ExecutorOptions, say, watcher: RunWatcher
          ) -> dict[int, str]:
    """Poll the jobs until each has ended; merge shards whenever one ends."""
    final: dict[int, str] = {}
    last: dict[int, str] = {}
    while len(final) < len(job_of):
        for _ in range(max(1, round(options.poll_s / TICK_S))):
            time.sleep(min(TICK_S, options.poll_s))
            watcher.poll()
        squeue = squeue_states() if options.kind == "slurm" else None
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
            records.merge_shards(out, remove=False)
    return final


def _run_jobs(specs, blocks, todo, out: Path, options: ExecutorOptions, say,
              watcher: RunWatcher) -> None:
    """Blocks as a job array; blocks whose job died are resubmitted up to
    ``options.retries`` times (not after a cancel)."""
    on_cuda = any(str(s.settings.device).startswith("cuda") for s in specs)
    ex = _make_executor(options, out / JOBS_DIR, f"qvit-{out.name}", on_cuda)
    attempt = 0
    cancelled: set[int] = set()
    job_of: dict = {}
    try:
        while todo:
            final: dict[int, str] = {}
            for wave in waves(todo, options):
                job_of = _submit(ex, blocks, wave, out, options.kind, say)
                watcher.watch(wave, started=False)
                final |= _wait(job_of, out, options, say, watcher)
            left = blocks_needing_work(records.merge_shards(out, remove=False), specs)
            cancelled |= {b for b in left if final.get(b) == "CANCELLED"}
            todo = [b for b in left if b not in cancelled]
            if not todo or attempt >= options.retries:
                break
            attempt += 1
            say(f"blocks {todo} unfinished after their jobs ended: resubmitting (retry "
                f"{attempt} of {options.retries})")
    except BaseException:
        # stopped here (Ctrl-C, an error): stop the jobs too, keep what they finished
        for job in job_of.values():
            with contextlib.suppress(Exception):
                job.cancel(check=False)
        time.sleep(1)
        raise
    _active_path(out).unlink(missing_ok=True)


def _report_outcome(job, block: int, state: str, say) -> None:
    if state != "COMPLETED" and state != "FINISHED":
        say(f"block {block}: job {job.job_id} ended {state}; its block's unfinished runs "
            f"are left to redo (logs: {job.paths.stdout.parent})")
        return
    with contextlib.suppress(Exception):
        outcome, result = job._get_outcome_and_result()
        if outcome == "error":
            say(f"block {block}: job {job.job_id} raised:\n{result}")
