"""harness.sweep.executors: options, the shard merge, the local executor (block after block, each
in one child process), and a tiny spec end to end through submitit's local executor (the code
path of the Slurm executor: one job per repeat block), with a job killed mid-block and a
resume. The real Slurm cluster test is tests/harness/sweep/test_slurm_real.py."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import threading
import time
import types
from pathlib import Path

import pandas as pd
import pytest

from harness import cli, records
from harness import spec as ablate
from harness.run.runner import INFLIGHT
from harness.sweep import executors
from harness.sweep import runs as sweep_runs
from harness.sweep.executors import ExecutorOptions, options_from, parse_options, parse_time_limit

ROOT = Path(__file__).resolve().parents[3]

TINY = """
name = "tiny_cluster"
description = "2 configs x 2 blocks of ivit_micro, 1 epoch of 2 steps (executor tests)"
[run]
models = ["ivit_micro"]
dataset = "digits"
epochs = 1
warmup_epochs = 0
steps_per_epoch = 2
eval_steps = 1
batch_size = 16
eval_batch_size = 16
repeats = 2
device = "cpu"
seed = 0
pretrained = false
[design]
kind = "configs"
baseline = "legacy"
aa_control = false
configs = [{name = "legacy", flags = "legacy,num_workers=0"},
           {name = "seed", flags = "seed,num_workers=0"}]
[executor]
kind = "submitit-local"
time_limit = 10
"""

# what must not differ between a run here and the same run in a job (CPU, same seed)
NUMBERS = ["steps", "top1", "top5", "train_loss", "eval_loss"]


# --- helpers shared with tests/harness/sweep/test_slurm_real.py ----------------------------

def write_tiny(folder: Path) -> Path:
    path = folder / "tiny_cluster.toml"
    path.write_text(TINY)
    return path


def tiny_specs(spec_path: Path):
    spec = ablate.load_spec(spec_path)
    return sweep_runs.to_runspecs(spec, ablate.plan(spec))


def harness_cmd(spec_path: Path, out: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "harness", "ablate", str(spec_path), "--out", str(out),
            "--no-report", *args]


def child_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    env.setdefault("OMP_NUM_THREADS", "2")
    return env


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def wait_mid_block(out: Path, block: int, proc, timeout: float = 300) -> dict:
    """Wait until the job of ``block`` has finished the block's first run and started the
    second; returns the block record the job wrote (jobs/blocks/block<b>.json) with
    ``current`` (the run in flight) and ``child`` (the pid of the block's child process)
    from its inflight.json."""
    path = out / executors.JOBS_DIR / "blocks" / f"block{block}.json"
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        rec = _read_json(path) if path.is_file() else None
        if rec and len(rec["todo"]) >= 2:
            now = _read_json(path.with_suffix("") / INFLIGHT) or {}
            if now.get("run_id") == rec["todo"][1]:
                return {**rec, "current": now["run_id"], "child": int(now["pid"])}
            if rec and rec["state"] == "done":
                raise AssertionError(f"block {block} ended before it could be killed: {rec}")
        alive = proc.is_alive() if hasattr(proc, "is_alive") else proc.poll() is None
        if not alive:
            raise AssertionError("the submitting process ended before the kill")
        time.sleep(0.1)
    raise AssertionError(f"block {block} never reached its second run in {timeout} s")


def check_table(table: pd.DataFrame, specs, *, finished_blocks=None) -> None:
    """Rows unique by (run_id, epoch), provenance filled, each finished block on one
    machine/device, and (if given) exactly these blocks finished."""
    assert list(table.columns) == list(records.columns())
    mine = table[table["run_id"].isin({s.run_id for s in specs})]
    assert not mine.duplicated(["run_id", "epoch"]).any()
    assert (mine["hostname"] != "").all() and (mine["device_name"] != "").all()
    done = records.finished_run_ids(mine, {s.run_id: s.epochs for s in specs})
    fin = mine[mine["run_id"].isin(done)]
    assert all(len(ids) == 1 for ids in executors.block_identities(fin).values())
    if finished_blocks is not None:
        blocks = {}
        for s in specs:
            blocks.setdefault(s.block, set()).add(s.run_id)
        assert {b for b, ids in blocks.items() if ids <= done} == set(finished_blocks)


def compare_to_local(cluster: pd.DataFrame, local: pd.DataFrame, specs) -> pd.DataFrame:
    """Same schema (columns and dtypes) and, per run and epoch, the same numbers."""
    assert list(cluster.columns) == list(local.columns)
    assert dict(cluster.dtypes.astype(str)) == dict(local.dtypes.astype(str))
    ids = {s.run_id for s in specs}
    key = ["run_id", "epoch"]
    a = cluster[cluster["run_id"].isin(ids)].sort_values(key).reset_index(drop=True)
    b = local[local["run_id"].isin(ids)].sort_values(key).reset_index(drop=True)
    assert list(a["run_id"]) == list(b["run_id"]) and len(a) == len(ids)
    assert (a["status"] == "ok").all() and (b["status"] == "ok").all()
    for col in NUMBERS:
        assert a[col].tolist() == b[col].tolist(), (col, a[col].tolist(), b[col].tolist())
    side = a[key + ["config", "block", "order", "hostname"] + NUMBERS[1:]].merge(
        b[key + NUMBERS[1:]], on=key, suffixes=("_cluster", "_local"))
    return side


# --- options --------------------------------------------------------------------------------

def test_time_limits():
    assert parse_time_limit(90) == 90
    assert parse_time_limit("45") == 45
    assert parse_time_limit("10:30") == 11  # MM:SS, rounded up
    assert parse_time_limit("02:00:00") == 120
    assert parse_time_limit("1-0") == 1440
    assert parse_time_limit("1-02:30") == 1590
    for bad in ("soon", 0, -5, "1:2:3:4", True):
        with pytest.raises(ValueError):
            parse_time_limit(bad)


def test_options_from_spec_and_cli():
    table = {"kind": "slurm", "partition": "gpu", "gpus_per_job": 1, "time_limit": "01:00:00",
             "options": {"account": "proj"}, "setup": ["module load cuda"]}
    opts = parse_options(table)
    assert opts.kind == "slurm" and opts.time_limit == 60 and opts.setup == (
        "module load cuda",)
    p = cli.ablate_parser()
    args = p.parse_args(["x.toml", "--partition", "debug", "--time-limit", "5",
                         "--slurm-option", "qos=high", "--slurm-option", "exclusive",
                         "--retries", "0"])
    merged = options_from(table, args)
    assert merged.kind == "slurm" and merged.partition == "debug"
    assert merged.time_limit == 5 and merged.retries == 0 and merged.gpus_per_job == 1
    assert merged.options == {"account": "proj", "qos": "high", "exclusive": True}
    assert options_from(None, p.parse_args(["x.toml"])).kind == "local"
    local = options_from(table, p.parse_args(["x.toml", "--executor", "local"]))
    assert local == ExecutorOptions(kind="local")  # the Slurm table's options left out
    with pytest.raises(ValueError, match="partition"):
        parse_options({"partiton": "gpu"})
    with pytest.raises(ValueError, match="kind"):
        ExecutorOptions(kind="pbs")
    assert parse_options({"kind": "submitit_local"}).kind == "submitit-local"
    assert parse_options({"kind": "slurm", "setup": "module load cuda"}).setup == (
        "module load cuda",)


def test_executor_options_are_generated_from_the_model():
    """Every spec key of [executor] (but the spec-only setup and poll_s) is an option of
    both commands, with the model's validation and one-line errors."""
    for parser in (cli.ablate_parser(), cli.run_parser()):
        dests = {a.dest for a in parser._actions}
        assert set(ExecutorOptions.model_fields) - {"setup", "poll_s"} <= dests
    p = cli.ablate_parser()
    opts = options_from({"kind": "slurm"}, p.parse_args(
        ["x.toml", "--time-limit", "1-00:30", "--mem-gb", "8", "--max-parallel", "3"]))
    assert (opts.time_limit, opts.mem_gb, opts.max_parallel) == (1470, 8.0, 3)
    for argv, key in ((["--retries", "-1"], "retries"), (["--time-limit", "soon"], "time_limit"),
                      (["--cpus-per-job", "0"], "cpus_per_job")):
        with pytest.raises(ValueError, match=rf"^\[executor\]\.{key}: [^\n]*$"):
            options_from(None, p.parse_args(["x.toml", *argv]))
    with pytest.raises(ValueError, match=r"^\[executor\]\.kind: 'pbs' is not one of local, "
                       r"slurm, submitit-local$"):
        parse_options({"kind": "pbs"})
    with pytest.raises(ValueError, match="needs KEY"):
        options_from(None, p.parse_args(["x.toml", "--slurm-option", "=x"]))


def test_spec_executor_table(tmp_path):
    spec = ablate.load_spec(write_tiny(tmp_path))
    assert spec.executor == {"kind": "submitit-local", "time_limit": 10}
    bad = TINY.replace("time_limit = 10", "gpus = 2")
    (tmp_path / "bad.toml").write_text(bad)
    with pytest.raises(ValueError, match="gpus_per_job"):
        ablate.load_spec(tmp_path / "bad.toml")


# --- the merge --------------------------------------------------------------------------------

def _row(run_id, epoch, status="ok", host="a", block=0, wall=1.0):
    return {"run_id": run_id, "config": run_id, "model": "m", "dataset": "digits",
            "block": block, "epoch": epoch, "status": status, "hostname": host,
            "device_name": "cpu", "epoch_s": wall}


def test_merge_keeps_finished_rows_and_never_duplicates(tmp_path):
    epochs = {"r1": 2, "r2": 2, "r3": 2}
    records.append_rows(tmp_path, [_row("r1", 1), _row("r1", 2), _row("r2", 1)])
    # r1: a redo that died after one epoch must not replace the finished run
    records.write_shard(tmp_path, "r1", [_row("r1", 1, host="b", wall=9.0)])
    # r2: the redo finished; r3: a new run, one epoch so far
    records.write_shard(tmp_path, "r2", [_row("r2", 1, wall=2.0), _row("r2", 2, wall=2.0)])
    records.write_shard(tmp_path, "r3", [_row("r3", 1)])
    t = records.merge_shards(tmp_path, epochs)
    assert not t.duplicated(["run_id", "epoch"]).any()
    assert t.set_index(["run_id", "epoch"])["epoch_s"].to_dict() == {
        ("r1", 1): 1.0, ("r1", 2): 1.0, ("r2", 1): 2.0, ("r2", 2): 2.0, ("r3", 1): 1.0}
    # merging again (shards kept while jobs may still write) changes nothing
    t2 = records.merge_shards(tmp_path, epochs)
    pd.testing.assert_frame_equal(t, t2)
    assert len(list((tmp_path / "shards").glob("*.parquet"))) == 3
    records.merge_shards(tmp_path, epochs, remove=True)
    assert not list((tmp_path / "shards").glob("*.parquet"))
    pd.testing.assert_frame_equal(records.read_table(tmp_path), t)
    assert (tmp_path / "runs.csv").is_file()


def test_blocks_needing_work(tmp_path):
    specs = tiny_specs(write_tiny(tmp_path))
    by = {(s.block, s.order): s for s in specs}
    rows = [dict(_row(s.run_id, 1, block=s.block), config=s.config) for s in specs]
    table = records.normalize(pd.DataFrame(rows))
    assert executors.blocks_needing_work(table, specs) == []
    # block 1's second run unfinished -> block 1; a block on two machines -> redone too
    other = table["run_id"] == by[(1, 1)].run_id
    assert executors.blocks_needing_work(table[~other], specs) == [1]
    mixed = table.copy()
    mixed.loc[mixed["run_id"] == by[(0, 1)].run_id, "hostname"] = "b"
    assert executors.blocks_needing_work(mixed, specs) == [0]


@pytest.mark.parametrize("opts", ["local", ExecutorOptions(kind="local")])
def test_local_executor_runs_blocks_here(tmp_path, monkeypatch, opts):
    """`executor="local"` (also as options) runs each unfinished block with `run_block`
    here, block after block in the plan's order (never through submitit)."""
    specs = tiny_specs(write_tiny(tmp_path))
    calls = []

    def fake_run_block(spec_dicts, out_dir, progress=False, tick=None):
        calls.append([(d["block"], d["order"], d["config"]) for d in spec_dicts])
        for d in spec_dicts:  # finish the block's runs, as its child would
            spec = next(s for s in specs if s.block == d["block"] and s.order == d["order"])
            records.append_shard_rows(out_dir, spec.run_id, [
                {**_row(spec.run_id, 1, block=spec.block), "config": spec.config}])
        return {}

    monkeypatch.setattr(executors, "run_block", fake_run_block)
    monkeypatch.setattr(executors, "_make_executor", lambda *a, **k: pytest.fail("submitit"))
    out = tmp_path / "out"
    table = executors.run_sweep(specs, out, opts, progress=False, validate=False)
    want = [[(s.block, s.order, s.config) for s in sorted(specs, key=lambda s: s.order)
             if s.block == b] for b in (0, 1)]
    assert calls == want
    check_table(table, specs, finished_blocks=[0, 1])
    executors.run_sweep(specs, out, opts, progress=False, validate=False)
    assert len(calls) == 2  # nothing left to run


def test_child_refuses_runs_of_another_identity(tmp_path, capsys):
    """A block's child whose run ids differ from the ones its parent planned (qvit/ or
    harness/ edited meanwhile) runs nothing and says why; the parent stops the sweep."""
    from harness.run import runner

    specs = tiny_specs(write_tiny(tmp_path))
    payload = tmp_path / "payload.json"
    payload.write_text(json.dumps({"specs": [s.to_dict() for s in specs[:1]],
                                   "run_ids": ["planned-with-other-code"],
                                   "inflight": str(tmp_path / INFLIGHT)}))
    assert runner._main([str(payload), str(tmp_path / "out")]) == runner.CODE_CHANGED
    assert "changed since this sweep started" in capsys.readouterr().err
    assert not (tmp_path / "out").exists() and not (tmp_path / INFLIGHT).exists()


# --- end to end through submitit's local executor ----------------------------------------------

class _Submitter(threading.Thread):
    """`run_sweep` in a thread (the test watches and kills jobs meanwhile)."""

    def __init__(self, specs, out, opts):
        super().__init__(daemon=True)
        self.args, self.error, self.table = (specs, out, opts), None, None

    def run(self):
        try:
            self.table = executors.run_sweep(*self.args)
        except BaseException as e:  # noqa: BLE001 - re-raised by the test
            self.error = e


@pytest.mark.slow
def test_submitit_local_kill_and_resume(tmp_path, capfd):
    """Blocks as jobs (submitit LocalExecutor, the Slurm executor's code path): block 0's
    job is killed after its first run (the job process and its run, as a node failure
    would); the block is left unfinished, the finished run kept; the resume redoes only the
    unfinished run; the table then matches a local run of the same spec in schema and
    numbers."""
    spec_path = write_tiny(tmp_path)
    specs = tiny_specs(spec_path)
    out = tmp_path / "cluster"
    opts = ExecutorOptions(kind="submitit-local", retries=0, time_limit=10, poll_s=0.5)
    sub = _Submitter(specs, out, opts)
    sub.start()
    rec = wait_mid_block(out, 0, sub)
    first, second = rec["todo"]
    os.kill(rec["pid"], signal.SIGKILL)  # the job ...
    with contextlib.suppress(OSError):  # ... and its block's child, in the second run
        os.kill(rec["child"], signal.SIGKILL)
    sub.join(timeout=300)
    assert not sub.is_alive() and sub.error is None, sub.error
    err = capfd.readouterr().err
    assert "blocks [0] are unfinished" in err, err
    t1 = records.read_table(out)
    check_table(t1, specs, finished_blocks=[1])
    kept = t1[t1["run_id"] == first]
    assert len(kept) == 1 and kept["status"].iloc[0] == "ok"
    assert not (out / executors.JOBS_DIR / "active.json").exists()

    # resume: only block 0's second run is redone; the first keeps its row
    t2 = executors.run_sweep(specs, out, opts)
    assert "2 blocks, 1 finished already; 1 to run" in capfd.readouterr().err
    rec = json.loads((out / executors.JOBS_DIR / "blocks" / "block0.json").read_text())
    assert rec["todo"] == [second] and rec["state"] == "done"
    check_table(t2, specs, finished_blocks=[0, 1])
    pd.testing.assert_frame_equal(t2[t2["run_id"] == first].reset_index(drop=True),
                                  kept.reset_index(drop=True), check_dtype=False)
    assert set(t2["status"]) == {"ok"}
    assert not list((out / "shards").glob("*.parquet"))

    # a second resume has nothing to do
    t3 = executors.run_sweep(specs, out, opts)
    assert "2 finished already; 0 to run" in capfd.readouterr().err
    pd.testing.assert_frame_equal(t3, t2)

    # the same spec run with the local executor (same runs, same seeds): the same numbers
    local = tmp_path / "local"
    assert cli.main(["ablate", str(spec_path), "--out", str(local), "--no-report",
                     "--executor", "local"]) == 0
    side = compare_to_local(t2, records.read_table(local), specs)
    assert len(side) == 4


# --- retries, with a stand-in for submitit (fast) ------------------------------------------------

class _FakeJob:
    def __init__(self, folder: Path, job_id: str, state: str):
        self.job_id, self.state = job_id, state
        self.paths = types.SimpleNamespace(result_pickle=folder / f"{job_id}_result.pkl",
                                           stdout=folder / f"{job_id}.out")
        if state == "FINISHED":
            self.paths.result_pickle.write_bytes(b"")

    def cancel(self, check=True):
        pass

    def _get_outcome_and_result(self):
        return "success", None


class _FakeExecutor:
    """Runs nothing: writes finished shards for the runs of each block, except where
    ``plan`` (one entry per submission: block -> final state) says the job died after
    its first run."""

    def __init__(self, out: Path, plan: list[dict[int, str]]):
        self.out, self.plan, self.submitted = out, plan, []

    def map_array(self, fn, payload, outs):
        from harness.run.runner import RunSpec, base_row

        states = self.plan[len(self.submitted)]
        self.submitted.append([d[0]["block"] for d in payload])
        jobs = []
        for dicts in payload:
            specs = [RunSpec.from_dict(d) for d in dicts]
            state = states.get(specs[0].block, "FINISHED")
            for s in specs[:1] if state != "FINISHED" else specs:
                prov = {"hostname": "node1", "device_name": "cpu"}
                row = {**base_row(s, prov, {"threads": 1}), "epoch": 1, "status": "ok", "top1": 1.0}
                records.write_shard(self.out, s.run_id, [row])
            jobs.append(_FakeJob(self.out, f"{len(self.submitted)}_{specs[0].block}", state))
        return jobs


def test_options_an_executor_cannot_act_on_are_refused(capsys):
    """`--max-parallel` under the local executor (block after block) or `--mem-gb` under
    submitit's (which ignores it) would be taken and do nothing: refused in one line; a
    spec's Slurm table run locally leaves out (and names) what cannot act there."""
    p = cli.ablate_parser()
    with pytest.raises(ValueError, match=r"^\[executor\]: max_parallel cannot act with "
                       r"executor 'local' \(it runs the blocks one after another in this "
                       r"process\); use executor 'slurm' or 'submitit-local', or leave it "
                       r"out$"):
        options_from(None, p.parse_args(["x.toml", "--max-parallel", "2"]))
    with pytest.raises(ValueError, match=r"cpus_per_job, mem_gb cannot act with executor "
                       r"'submitit-local' .*; use executor 'slurm', or leave them out$"):
        options_from(None, p.parse_args(["x.toml", "--executor", "submitit-local",
                                         "--mem-gb", "3", "--cpus-per-job", "2"]))
    for kind, key in (("local", "setup"), ("submitit-local", "partition"),
                      ("submitit-local", "options")):
        with pytest.raises(ValueError, match=key):
            parse_options({"kind": kind, key: {"options": {"qos": "x"}}.get(key, "x")})
    assert parse_options({"kind": "local", "time_limit": 60}).kind == "local"  # the default
    table = {"kind": "slurm", "partition": "gpu", "max_parallel": 3, "mem_gb": 8}
    opts = options_from(table, p.parse_args(["x.toml", "--executor", "submitit-local"]))
    assert opts == ExecutorOptions(kind="submitit-local", max_parallel=3)
    assert "the spec's partition, mem_gb cannot act here (left out)" in capsys.readouterr().err
    with pytest.raises(ValueError, match="partition cannot act"):
        options_from(table, p.parse_args(["x.toml", "--executor", "local", "--partition", "x"]))


@pytest.mark.parametrize("max_parallel, submitted", [(None, [[0, 1]]), (1, [[0], [1]]),
                                                     (2, [[0, 1]])])
def test_submitit_local_starts_its_jobs_in_waves_of_max_parallel(tmp_path, monkeypatch,
                                                                 max_parallel, submitted):
    """submitit's local executor starts every job it is given at once (6 blocks of a
    timing sweep on 2 cores ran 4-5x slower): max_parallel blocks per submission."""
    specs = tiny_specs(write_tiny(tmp_path))
    out = tmp_path / "out"
    fake = _FakeExecutor(out, [{}, {}])
    monkeypatch.setattr(executors, "_make_executor", lambda *a, **k: fake)
    opts = ExecutorOptions(kind="submitit-local", max_parallel=max_parallel, poll_s=0.01)
    table = executors.run_sweep(specs, out, opts, progress=False, validate=False)
    assert fake.submitted == submitted
    check_table(table, specs, finished_blocks=[0, 1])
    slurm = ExecutorOptions(kind="slurm", max_parallel=1)  # Slurm's array holds them itself
    assert executors.waves([0, 1, 2], slurm) == [[0, 1, 2]]


@pytest.mark.parametrize("died, resubmitted", [("FAILED", True), ("CANCELLED", False)])
def test_retries_resubmit_dead_blocks_not_cancelled_ones(tmp_path, monkeypatch, died,
                                                         resubmitted):
    specs = tiny_specs(write_tiny(tmp_path))
    out = tmp_path / "out"
    fake = _FakeExecutor(out, [{0: died}, {}])
    monkeypatch.setattr(executors, "_make_executor", lambda *a, **k: fake)
    opts = ExecutorOptions(kind="submitit-local", retries=1, poll_s=0.01)
    table = executors.run_sweep(specs, out, opts, progress=False, validate=False)
    assert fake.submitted == ([[0, 1], [0]] if resubmitted else [[0, 1]])
    check_table(table, specs, finished_blocks=[0, 1] if resubmitted else [1])
    assert len(table) == (4 if resubmitted else 3)


def test_sigterm_to_the_parent_stops_its_child(tmp_path):
    """`spawn`'s child dies with its parent on SIGTERM (the default action would end the
    parent alone, leaving the child writing into the output folder beside the next sweep)."""
    import subprocess

    (tmp_path / "sleeper.py").write_text(
        "import os, sys, time\n"
        "open(os.path.join(sys.argv[2], 'pid'), 'w').write(str(os.getpid()))\n"
        "time.sleep(60)\n")
    parent = subprocess.Popen(
        [sys.executable, "-c", "import sys; from pathlib import Path; "
         "from harness.sweep.executors import spawn; "
         f"spawn('sleeper', {{}}, Path(r'{tmp_path}'), Path(r'{tmp_path}'))"],
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(tmp_path)])})
    pid_file = tmp_path / "pid"
    deadline = time.monotonic() + 60
    while not (pid_file.exists() and pid_file.read_text()) and time.monotonic() < deadline:
        time.sleep(0.05)
    child = int(pid_file.read_text())
    try:
        parent.send_signal(signal.SIGTERM)
        assert parent.wait(timeout=30) == 128 + signal.SIGTERM
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                os.kill(child, 0)
            except ProcessLookupError:
                break
            time.sleep(0.05)
        else:
            pytest.fail("the child outlived its parent's SIGTERM")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signal.SIGKILL)
