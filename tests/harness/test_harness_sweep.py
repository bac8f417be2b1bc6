"""Sweeps: one child process per run; failures recorded while the sweep goes on; resume
after a real SIGKILL of a child loses no finished row and duplicates none."""

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
from harness.cli import build_run_parser, specs_from_args
from harness.runner import FAULT_ENV

HERE = Path(__file__).parent
ROOT = HERE.parent.parent
ARGS = ["--model", "harness_tiny:tiny_cnn", "--epochs", "2", "--steps-per-epoch", "2",
        "--eval-steps", "1", "--batch-size", "8", "--device", "cpu", "--set", "num_workers=0",
        "--no-progress"]


def _cmd(out, configs):
    flags = [a for c in configs for a in ("--flags", f"{c}=best")]
    return [*ARGS, *flags, "--out", str(out)]


def _env(fault=None):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(HERE)]))
    env.pop(FAULT_ENV, None)
    if fault:
        env[FAULT_ENV] = json.dumps(fault)
    return env


def _run_ids(out, configs):
    specs = specs_from_args(build_run_parser().parse_args(_cmd(out, configs)))
    return {s.config: s.run_id for s in specs}


def _sweep(out, configs, fault=None, **kw):
    return subprocess.Popen([sys.executable, "-m", "harness", "run", *_cmd(out, configs)],
                            cwd=ROOT, env=_env(fault), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **kw)


@pytest.mark.slow
def test_failures_are_recorded_and_the_sweep_goes_on(tmp_path):
    configs = ["ok", "oom", "nan", "boom"]
    fault = {"oom": {"fault": "oom", "epoch": 1}, "nan": {"fault": "nan", "epoch": 2},
             "boom": {"fault": "error", "epoch": 1, "step": 1}}
    proc = _sweep(tmp_path, configs, fault)
    log, _ = proc.communicate(timeout=900)
    assert proc.returncode == 1, log  # some runs failed: a non-zero exit, all recorded
    t = records.read_table(tmp_path)
    ids = _run_ids(tmp_path, configs)
    last = {c: t[t["run_id"] == ids[c]].sort_values("epoch").iloc[-1] for c in configs}
    assert {c: r["status"] for c, r in last.items()} == \
        {"ok": "ok", "oom": "oom", "nan": "nan", "boom": "error"}
    assert last["ok"]["epoch"] == 2 and last["nan"]["epoch"] == 2
    assert "injected error" in last["boom"]["error"]
    assert list(t["order"].unique()) == [0, 1, 2, 3]


@pytest.mark.slow
def test_resume_after_sigkill_of_a_child(tmp_path):
    configs = ["a", "b", "c"]
    ids = _run_ids(tmp_path, configs)
    proc = _sweep(tmp_path, configs, {"b": {"fault": "hang", "epoch": 2, "step": 0}})
    pid_file = tmp_path / "specs" / f"{ids['b']}.pid"
    deadline = time.time() + 600
    while time.time() < deadline:  # b has recorded epoch 1 and hangs in epoch 2
        t = records.read_table(tmp_path) if (tmp_path / "runs.parquet").exists() else None
        if t is not None and ((t["run_id"] == ids["b"]) & (t["epoch"] == 1)).any() \
                and pid_file.exists():
            break
        time.sleep(0.2)
    else:
        proc.kill()
        pytest.fail(f"run b never reached epoch 2: {proc.communicate()[0]}")
    os.kill(int(pid_file.read_text()), signal.SIGKILL)  # a real SIGKILL of the child
    log, _ = proc.communicate(timeout=900)
    t1 = records.read_table(tmp_path)
    b = t1[t1["run_id"] == ids["b"]].sort_values("epoch")
    assert list(b["status"]) == ["ok", "error"] and "SIGKILL" in b["error"].iloc[1], log
    for c in ("a", "c"):  # the sweep went on after the killed run
        assert list(t1[t1["run_id"] == ids[c]]["status"]) == ["ok", "ok"]

    proc = _sweep(tmp_path, configs)  # the same command again: redo b only
    log, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, log
    t2 = records.read_table(tmp_path)
    assert not t2.duplicated(["run_id", "epoch"]).any()
    assert len(t2) == 6
    key = ["run_id", "epoch"]
    for c in ("a", "c"):  # finished rows untouched (not rerun: same wall times)
        old = t1[t1["run_id"] == ids[c]].sort_values(key).reset_index(drop=True)
        new = t2[t2["run_id"] == ids[c]].sort_values(key).reset_index(drop=True)
        pd.testing.assert_frame_equal(old, new)
    b2 = t2[t2["run_id"] == ids["b"]].sort_values("epoch")
    assert list(b2["status"]) == ["ok", "ok"] and list(b2["epoch"]) == [1, 2]
