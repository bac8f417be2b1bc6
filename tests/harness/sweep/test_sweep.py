"""Sweeps through ``harness run``: every repeat block in one child process; failures recorded
while the block goes on; a real SIGKILL of the child mid-epoch, then the same command again
resumes after the last finished epoch, losing and duplicating nothing; a second ``harness
run`` into a folder in use is refused and runs nothing."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from harness import records
from harness.run.runner import CHECKPOINTS, INFLIGHT
from harness.spec import read_design
from harness.sweep.executors import JOBS_DIR
from tests.harness.harness_env import child_env

HERE = Path(__file__).resolve().parents[1]  # tests/harness: harness_tiny.py
ROOT = HERE.parent.parent
ARGS = ["--model", "harness_tiny:tiny_cnn", "--steps-per-epoch", "2", "--eval-steps", "1",
        "--batch-size", "8", "--device", "cpu", "--no-pretrained"]


def _cmd(out, configs, epochs=2):
    flags = [a for c in configs for a in ("--flags", f"{c}=best")]
    return [*ARGS, "--epochs", str(epochs), *flags, "--out", str(out)]


def _env(fault=None):
    return child_env(fault)


def _design_ids(out) -> dict[str, str]:
    """config -> run id of the design the sweep wrote (the ids its children record under;
    computed from the code as it was then, so an edit of the tree meanwhile does not
    matter). A run id starts with ``<config>-<model>``."""
    return {rid.split("-", 1)[0]: rid for rid in read_design(out)["run_ids"]}


def _sweep(out, configs, fault=None, epochs=2, **kw):
    return subprocess.Popen([sys.executable, "-m", "harness", "run",
                             *_cmd(out, configs, epochs)],
                            cwd=ROOT, env=_env(fault), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True,
                            **kw)


def _stop(proc) -> None:
    """A sweep the test leaves running (a failed assertion): stop it and its children."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()


@pytest.mark.slow
def test_failures_are_recorded_and_the_sweep_goes_on(tmp_path):
    configs = ["ok", "oom", "nan", "boom"]
    fault = {"oom": {"fault": "oom", "epoch": 1}, "nan": {"fault": "nan", "epoch": 2},
             "boom": {"fault": "error", "epoch": 1, "step": 1}}
    proc = _sweep(tmp_path, configs, fault)
    log, _ = proc.communicate(timeout=900)
    assert proc.returncode == 1, log  # some runs failed: a non-zero exit, all recorded
    assert "Traceback" not in log, log
    t = records.read_table(tmp_path)
    ids = _design_ids(tmp_path)
    assert set(ids) == set(configs) and set(t["run_id"]) == set(ids.values())
    last = {c: t[t["run_id"] == ids[c]].sort_values("epoch").iloc[-1] for c in configs}
    assert {c: r["status"] for c, r in last.items()} == \
        {"ok": "ok", "oom": "oom", "nan": "nan", "boom": "error"}
    assert last["ok"]["epoch"] == 2 and last["nan"]["epoch"] == 2
    assert "injected error" in last["boom"]["error"]
    # one block: the four runs in its order, in one process that went on after each failure
    assert sorted(t["order"].unique()) == [0, 1, 2, 3]
    assert set(t["block"]) == {0}
    for c in configs:  # each failure said in one line on stderr
        if c != "ok":
            assert f"run {ids[c]} epoch" in log, log
    assert (tmp_path / "report.md").is_file()


def _wait_in_epoch2(out: Path, config: str, proc, timeout: float = 600) -> tuple[str, int]:
    """Wait until the run of ``config`` has recorded epoch 1 (its shard) and hangs in epoch
    2; returns its run id and the pid of the block's child process (the one in flight)."""
    inflight = out / JOBS_DIR / "blocks" / "block0" / INFLIGHT
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the sweep ended before the kill: {proc.communicate()[0]}")
        try:
            info = json.loads(inflight.read_text())
        except (OSError, ValueError):
            info = {}
        run_id = info.get("run_id", "")
        shard = out / "shards" / f"{run_id}.parquet"
        if run_id.startswith(f"{config}-") and shard.is_file():
            rows = records.read_shard(shard)
            if rows is not None and (rows["epoch"] == 1).any():
                return run_id, int(info["pid"])
        time.sleep(0.2)
    proc.kill()
    pytest.fail(f"run {config} never reached epoch 2: {proc.communicate()[0]}")


@pytest.mark.slow
def test_kill_mid_epoch_then_resume_and_a_second_sweep_is_refused(tmp_path):
    """kill -9 of the block's child in epoch 2 of run b (3 epochs): the dead run is recorded
    (SIGKILL) and the block goes on in a new child; meanwhile a second ``harness run`` into
    the same folder is refused in one line naming the holder. The same command again resumes
    b after its last finished epoch (epoch 1 kept as it was, epoch 2 marked ``resumed``);
    the other runs are not run again."""
    configs = ["a", "b", "c"]
    proc = _sweep(tmp_path, configs, {"b": {"fault": "hang", "epoch": 2, "step": 0}},
                  epochs=3)
    try:
        _kill_mid_epoch_then_resume(tmp_path, configs, proc)
    finally:
        _stop(proc)


def _kill_mid_epoch_then_resume(tmp_path, configs, proc):
    _, child = _wait_in_epoch2(tmp_path, "b", proc)
    ids = _design_ids(tmp_path)

    # a second sweep into the folder in use: refused, one line naming the holder
    design = (tmp_path / "design.json").stat().st_mtime_ns
    second = subprocess.run([sys.executable, "-m", "harness", "run",
                             *_cmd(tmp_path, configs, 3)], cwd=ROOT, env=_env(),
                            capture_output=True, text=True, timeout=600)
    assert second.returncode == 1, second.stderr
    lines = second.stderr.strip().splitlines()
    assert len(lines) == 1 and f"in use by pid {proc.pid}" in lines[0], second.stderr
    assert "Traceback" not in second.stderr
    assert (tmp_path / "design.json").stat().st_mtime_ns == design  # it touched nothing

    os.kill(child, signal.SIGKILL)  # a real SIGKILL of the child, mid-epoch
    log, _ = proc.communicate(timeout=600)
    assert proc.returncode == 1, log  # b failed (killed)
    t1 = records.read_table(tmp_path)
    b = t1[t1["run_id"] == ids["b"]].sort_values("epoch")
    assert list(b["epoch"]) == [1, 2] and list(b["status"]) == ["ok", "error"], log
    assert "SIGKILL" in b["error"].iloc[1], log
    assert (tmp_path / CHECKPOINTS / f"{ids['b']}.pt").is_file()  # epoch 1's, kept to resume
    for c in ("a", "c"):  # the block went on after the killed run, in a new child
        assert list(t1[t1["run_id"] == ids[c]]["status"]) == ["ok"] * 3, log
    assert not t1.duplicated(["run_id", "epoch"]).any()

    proc = _sweep(tmp_path, configs, epochs=3)  # the same command again: resume b only
    log, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, log
    assert _design_ids(tmp_path) == ids, "the code changed between the two sweeps"
    t2 = records.read_table(tmp_path)
    assert not t2.duplicated(["run_id", "epoch"]).any()
    assert len(t2) == 9
    key = ["run_id", "epoch"]
    for c in ("a", "c"):  # finished rows untouched (not run again: same times)
        old = t1[t1["run_id"] == ids[c]].sort_values(key).reset_index(drop=True)
        new = t2[t2["run_id"] == ids[c]].sort_values(key).reset_index(drop=True)
        pd.testing.assert_frame_equal(old, new)
    b2 = t2[t2["run_id"] == ids["b"]].sort_values("epoch").reset_index(drop=True)
    assert list(b2["status"]) == ["ok"] * 3 and list(b2["epoch"]) == [1, 2, 3]
    assert list(b2["resumed"]) == [False, True, False]  # the first epoch after the resume
    # epoch 1 (before the kill) is the same row: resumed after it, not redone
    pd.testing.assert_frame_equal(b2.iloc[:1], b.iloc[:1].reset_index(drop=True))
    assert not (tmp_path / CHECKPOINTS / f"{ids['b']}.pt").exists()  # finished: removed
    assert not list((tmp_path / "shards").glob("*.parquet"))
