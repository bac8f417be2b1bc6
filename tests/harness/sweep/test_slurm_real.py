"""The Slurm executor on a real (single-node) Slurm cluster: `bash scripts/slurm_local.sh
start`, then ``QVIT_REAL_SLURM=1 pytest -m slurm tests/harness/sweep/test_slurm_real.py`` (what
``nox -s slurm`` does). Skipped unless QVIT_REAL_SLURM=1.

A tiny spec (ivit_micro, 2 configs x 2 blocks, 1 epoch of 2 steps, CPU) goes through
``python -m harness ablate --executor slurm``: one array task per block; block 0's job is
cancelled (scancel) after its first run, while its second runs; the submission ends with
block 0 unfinished; the resume submits block 0 alone and redoes only its unfinished run; the
table then has every run once, the finished rows from before the cancel untouched, and the
same schema and numbers as the same spec run with the local executor."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest

from harness import records
from harness.sweep import executors
from tests.harness.sweep.test_executors import (
    ROOT,
    check_table,
    child_env,
    compare_to_local,
    harness_cmd,
    tiny_specs,
    wait_mid_block,
    write_tiny,
)

pytestmark = [
    pytest.mark.slurm,
    pytest.mark.skipif(os.environ.get("QVIT_REAL_SLURM") != "1",
                       reason="real Slurm test: bash scripts/slurm_local.sh start, then "
                              "QVIT_REAL_SLURM=1 (nox -s slurm)"),
]


def _say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')} test] {msg}", flush=True)


@pytest.fixture(scope="module")
def cluster():
    if not shutil.which("sbatch"):
        pytest.fail("no sbatch: run `bash scripts/slurm_local.sh start` first")
    info = subprocess.run(["sinfo", "-h", "-o", "%P %a %D %T"], capture_output=True,
                          text=True)
    if info.returncode != 0 or not any(w in info.stdout for w in ("idle", "mixed",
                                                                     "alloc")):
        pytest.fail(f"no usable Slurm node (sinfo: {info.stdout.strip()} "
                    f"{info.stderr.strip()}): run `bash scripts/slurm_local.sh start`")
    _say(f"sinfo: {info.stdout.strip()}")
    return info.stdout


def _run_logged(cmd, log: Path, timeout: float) -> int:
    with open(log, "w") as fh:
        rc = subprocess.run(cmd, cwd=ROOT, env=child_env(), stdout=fh,
                            stderr=subprocess.STDOUT, timeout=timeout).returncode
    print(log.read_text(), flush=True)
    return rc


def _squeue_state(job_id: str) -> str | None:
    return (executors.squeue_states() or {}).get(job_id)


def test_slurm_cancel_resume_and_local_parity(cluster, tmp_path):
    t_start = time.monotonic()
    spec_path = write_tiny(tmp_path)
    specs = tiny_specs(spec_path)
    out = tmp_path / "slurm"

    # 1. submit; cancel block 0's job while its second run is in flight
    log1 = tmp_path / "submit1.log"
    cmd = harness_cmd(spec_path, out, "--executor", "slurm", "--retries", "0",
                      "--time-limit", "10")
    _say("submitting: " + " ".join(cmd[1:]))
    with open(log1, "w") as fh:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=child_env(), stdout=fh,
                                stderr=subprocess.STDOUT)
        try:
            rec = wait_mid_block(out, 0, proc, timeout=240)
            first, second = rec["todo"]
            _say(f"block 0 is in job {rec['job_id']} on {rec['hostname']}: run {first} "
                 f"finished, {second} running -> scancel {rec['job_id']}")
            subprocess.run(["scancel", rec["job_id"]], check=True)
            rc = proc.wait(timeout=240)
        finally:
            if proc.poll() is None:
                proc.kill()
    print(log1.read_text(), flush=True)
    assert rc == 0
    text = log1.read_text()
    assert f"job {rec['job_id']} CANCELLED" in text and "unfinished" in text
    assert _squeue_state(rec["job_id"]) in ("CANCELLED", None)
    t1 = records.read_table(out)
    check_table(t1, specs, finished_blocks=[1])
    kept = t1[t1["run_id"] == first].reset_index(drop=True)
    assert len(kept) == 1 and kept["status"].iloc[0] == "ok"
    cut = t1[t1["run_id"] == second]  # the run in flight: nothing, or its error row
    assert (cut["status"] != "ok").all()
    assert (t1["hostname"] == rec["hostname"]).all()
    _say(f"after the cancel: {len(t1)} rows; block 1 finished, block 0 has "
         f"{int(t1['block'].eq(0).sum())} row(s) (run {first})")

    # 2. resume: block 0 alone, only its unfinished run
    log2 = tmp_path / "submit2.log"
    _say("resuming")
    assert _run_logged(harness_cmd(spec_path, out, "--executor", "slurm", "--time-limit", "10"),
                       log2, timeout=240) == 0
    assert "1 finished already; 1 to run" in log2.read_text()
    rec2 = json.loads((out / executors.JOBS_DIR / "blocks" / "block0.json").read_text())
    assert rec2["todo"] == [second] and rec2["state"] == "done"
    assert rec2["job_id"] != rec["job_id"]
    t2 = records.read_table(out)
    check_table(t2, specs, finished_blocks=[0, 1])
    # the row finished before the cancel is the same row (steps may have been float64 then:
    # the cancelled run's error row had none)
    pd.testing.assert_frame_equal(t2[t2["run_id"] == first].reset_index(drop=True), kept,
                                  check_dtype=False)
    assert set(t2["status"]) == {"ok"}
    assert not list((out / "shards").glob("*.parquet"))
    assert not (out / executors.JOBS_DIR / "active.json").exists()

    # 3. the same spec with the local executor: same schema, same numbers
    local = tmp_path / "local"
    _say("the same spec with the local executor")
    assert _run_logged(harness_cmd(spec_path, local, "--executor", "local"),
                       tmp_path / "local.log", timeout=300) == 0
    side = compare_to_local(t2, records.read_table(local), specs)
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        _say("slurm vs local, per run (identical in every number compared):\n"
             + side.to_string(index=False))
    _say(f"columns: {len(t2.columns)} (identical names and dtypes); "
         f"test took {time.monotonic() - t_start:.0f} s")
