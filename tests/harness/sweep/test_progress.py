"""A sweep's progress: runs done / total, the config under way, failures and an ETA from
the runs finished so far; a tqdm bar on a terminal (recorded through a pseudo-terminal) and
a log line per finished run off one; nothing at all with ``progress=False``."""

import fcntl
import io
import json
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest

from harness import records
from harness.run.runner import RunSpec
from harness.spec.settings import RunSettings
from harness.sweep.progress import EpochLog, Progress, RunWatcher, format_eta
from qvit import Flags
from tests.harness.harness_env import child_env

HERE = Path(__file__).resolve().parents[1]  # tests/harness: harness_tiny.py
ROOT = HERE.parent.parent
TINY = ["--model", "harness_tiny:tiny_cnn", "--epochs", "1", "--steps-per-epoch", "2",
        "--eval-steps", "1", "--batch-size", "8", "--device", "cpu", "--no-pretrained"]
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def _env(fault=None):
    return child_env(fault, omp_threads=1)


def _cmd(out, configs):
    return [sys.executable, "-m", "harness", "run", *TINY,
            *[a for c in configs for a in ("--flags", f"{c}=best")], "--out", str(out)]


def _seconds(text: str) -> int:
    parts = [int(p) for p in text.split(":")]
    return sum(p * 60 ** i for i, p in enumerate(reversed(parts)))


# --- the display itself (no child processes) ------------------------------------------------

def test_eta_from_the_runs_finished_so_far_by_model_and_config():
    out = io.StringIO()  # not a terminal: log lines
    p = Progress({"a0": "A", "a1": "A", "b0": "B", "b1": "B"}, total=5, stream=out)
    assert p.done == 1 and p.eta() is None  # nothing finished yet: no estimate
    p.finish("a0", True, "A: ok", duration=10.0)
    assert p.eta() == pytest.approx(30.0)  # a1 like a0; B unknown yet: the mean so far
    p.finish("b0", True, "B: ok", duration=2.0)
    assert p.eta() == pytest.approx(12.0)  # a1 10 s + b1 2 s
    p.finish("b1", False, "B: FAILED (error in epoch 1: boom)", duration=0.1)
    assert p.eta() == pytest.approx(10.0)  # a failure's duration estimates nothing
    p.finish("a1", True, "A: ok", duration=9.0)
    assert p.eta() == 0.0 and p.done == 5
    lines = out.getvalue().splitlines()
    assert len(lines) == 4
    assert "run 2/5 A: ok; failed 0;" in lines[0] and lines[0].endswith("ETA 00:30")
    assert "run 4/5 B: FAILED (error in epoch 1: boom); failed 1;" in lines[2]
    assert lines[3].endswith("failed 1; elapsed 00:00, ETA 00:00")
    assert format_eta(None) == "?" and format_eta(3725) == "1:02:05"


def test_disabled_progress_says_nothing():
    out = io.StringIO()
    p = Progress({"a": "A"}, total=1, enabled=False, stream=out)
    p.start("a", "A")
    p.say("compiling")
    p.finish("a", False, "A: FAILED")
    p.close()
    assert out.getvalue() == ""


def test_pretraining_off_a_terminal_logs_its_epochs_every_few_seconds():
    out = io.StringIO()
    log = EpochLog("pretraining ivit_micro", 30, every_s=3600.0, stream=out)
    for epoch in range(1, 31):
        log({"epoch": epoch, "top1": 50.0 + epoch})
    lines = out.getvalue().splitlines()  # within the hour: the last epoch only
    assert len(lines) == 1 and lines[0].endswith(
        "pretraining ivit_micro: epoch 30/30, top-1 80.0%, elapsed 00:00, ETA 00:00")
    out = io.StringIO()
    log = EpochLog("pretraining ivit_micro", 3, every_s=0.0, stream=out)
    for epoch in range(1, 4):
        log({"epoch": epoch, "top1": 50.0})
    assert [line.split(": ", 1)[1][:12] for line in out.getvalue().splitlines()] == \
        ["epoch 1/3, t", "epoch 2/3, t", "epoch 3/3, t"]


def _spec(config, block=0, epochs=2, **flags):
    flags = Flags.preset("best").replace(**flags) if flags else Flags.preset("best")
    return RunSpec(config, flags, RunSettings(model="harness_tiny:tiny_cnn", epochs=epochs,
                                              device="cpu"), block=block)


def _row(spec, epoch, status="ok", **kw):
    return {"run_id": spec.run_id, "config": spec.config, "model": spec.model,
            "epoch": epoch, "status": status, "warmup": epoch == 1, "resumed": False,
            "epoch_s": 1.5 * epoch, "top1": 40.0 + epoch, "compile_s": 0.0, "error": "",
            "block": spec.block, **kw}


def test_the_watcher_follows_shards_and_inflight_runs(tmp_path):
    """The submitting process learns from the children's files: the run in flight (and,
    for a compiled one, a compiling line, then its seconds), each run's end with its
    epoch time and top-1, a failure in the count."""
    a, b = _spec("a", compile_model=True), _spec("b")
    out = io.StringIO()
    inflight = tmp_path / "inflight.json"
    watcher = RunWatcher([a, b], tmp_path, Progress({a.run_id: "a", b.run_id: "b"},
                                                    total=2, stream=out),
                         lambda block: inflight)
    watcher.watch([0])
    inflight.write_text(json.dumps({"run_id": a.run_id}))
    watcher.poll()
    assert watcher.progress.running[a.run_id][0] == "harness_tiny:tiny_cnn a"
    records.write_shard(tmp_path, a.run_id, [_row(a, 1, compile_s=4.25)])
    watcher.poll()
    assert watcher.progress.done == 0  # one epoch of two: not ended
    records.write_shard(tmp_path, a.run_id, [_row(a, 1, compile_s=4.25), _row(a, 2)])
    inflight.write_text(json.dumps({"run_id": b.run_id}))
    watcher.poll()
    watcher.poll()  # nothing new: nothing said twice
    records.write_shard(tmp_path, b.run_id, [_row(b, 1, "error", error="x\nValueError: boom")])
    watcher.poll()
    lines = [line.split("] ", 1)[1] for line in out.getvalue().splitlines()]
    assert lines[0] == "compiling harness_tiny:tiny_cnn a (torch.compile, in its first epoch)"
    assert lines[1] == "compiled harness_tiny:tiny_cnn a in 4.2 s"
    assert lines[2].startswith("run 1/2 harness_tiny:tiny_cnn a: ok, epoch 3.00 s, "
                               "top-1 42.0%; failed 0;")
    assert lines[3].startswith("run 2/2 harness_tiny:tiny_cnn b: FAILED (error in epoch 1: "
                               "ValueError: boom); failed 1;")
    assert len(lines) == 4 and watcher.progress.eta() == 0.0


# --- whole sweeps in child processes ----------------------------------------------------------

@pytest.mark.slow
def test_log_lines_off_a_terminal(tmp_path):
    """Off a terminal (nox, Slurm, CI): a line per finished run with its epoch time, top-1,
    failures so far and the ETA; a failed run counts."""
    proc = subprocess.run(_cmd(tmp_path, ["a", "b", "c"]), cwd=ROOT, capture_output=True,
                          text=True, timeout=900, env=_env({"b": {"fault": "error",
                                                                  "epoch": 1}}))
    assert proc.returncode == 1, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if "] run " in line]
    assert len(lines) == 3, proc.stderr
    for k, line in enumerate(lines, 1):
        assert f"run {k}/3 (block 1/1) harness_tiny:tiny_cnn " in line, line
        assert re.search(r"elapsed \d\d:\d\d, ETA (\d\d:\d\d|\?)$", line), line
    ok = [line for line in lines if " b: " not in line]
    assert all(re.search(r": ok, epoch \d+\.\d\d s, top-1 \d+\.\d%", line) for line in ok)
    failed = next(line for line in lines if " b: " in line)
    assert "FAILED (error in epoch 1:" in failed and "injected error" in failed
    assert lines[-1].endswith("failed 1; elapsed " + lines[-1].split("elapsed ")[1])
    assert "failed 1;" in lines[-1] and lines[-1].endswith("ETA 00:00")
    assert "\r" not in proc.stderr  # no bar drawn into a log


def _record_on_a_terminal(cmd, env, timeout=900) -> str:
    """Run ``cmd`` with stdout and stderr on a pseudo-terminal (120 columns); its output."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=slave,
                            stderr=slave, start_new_session=True)
    os.close(slave)
    chunks, deadline = [], time.time() + timeout
    try:
        while time.time() < deadline:
            ready, _, _ = select.select([master], [], [], 1.0)
            if not ready:
                if proc.poll() is not None:
                    break
                continue
            try:
                data = os.read(master, 65536)
            except OSError:  # the other end closed
                break
            if not data:
                break
            chunks.append(data)
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    assert proc.returncode == 0, b"".join(chunks).decode(errors="replace")
    return b"".join(chunks).decode(errors="replace")


@pytest.mark.slow
def test_a_bar_on_a_terminal_with_a_decreasing_eta(tmp_path):
    """On a terminal one bar: runs done / total, the block, the config under way, failures
    so far, elapsed, and an ETA that counts down to zero."""
    text = _record_on_a_terminal(_cmd(tmp_path, ["a", "b", "c"]), _env())
    frames = [ANSI.sub("", f) for f in re.split(r"[\r\n]", text)]
    bars = [f for f in frames if f.startswith("sweep:")]
    assert bars, text
    done = [int(m.group(1)) for f in bars if (m := re.search(r"\| (\d)/3 runs \[", f))]
    assert done[0] == 0 and done[-1] == 3 and done == sorted(done), bars
    assert any("block 1/1, now harness_tiny:tiny_cnn " in f for f in bars), bars
    assert all("failed 0" in f for f in bars if "ETA" in f), bars
    etas = [_seconds(m.group(1)) for f in bars if (m := re.search(r"ETA ([\d:]+),", f))]
    assert len(etas) >= 2 and etas[0] > etas[-1] == 0, bars
    assert not any("] run " in f for f in frames)  # no log lines on a terminal


def test_interleaved_sessions_report_progress_and_compile_warm_ups(tmp_path, capsys,
                                                                 monkeypatch):
    """Step-interleaved sessions: a line per finished session with each config's median
    step and the ETA, a failed session counted; a compiled config says it compiles in the
    warm-up rounds and how long that took."""
    from harness.run import interleave
    from harness.sweep import executors

    sys.path.insert(0, str(HERE))  # harness_tiny, imported in this process
    monkeypatch.setattr(interleave, "compile_model", lambda model, backend, **options: model)
    settings = RunSettings(model="harness_tiny:tiny_cnn", batch_size=8, device="cpu",
                           pretrained=False)
    specs = (RunSpec("a", Flags.preset("best"), settings),
             RunSpec("b", Flags.preset("best").replace(compile_model=True), settings))
    sessions = [interleave.Session(specs, rounds=2, warmup=1, index=i) for i in range(3)]

    def spawn_here(module, payload, out, work, progress=False, tick=None):
        session = interleave.Session.from_dict(payload)
        if session.index == 1:
            return 1  # a session whose child died
        interleave.measure_session(session, out, progress=progress)
        return 0

    monkeypatch.setattr(executors, "spawn", spawn_here)
    executors.run_interleaved(sessions, tmp_path, progress=True)
    lines = [line.split("] ", 1)[1] for line in capsys.readouterr().err.splitlines()]
    assert lines[0] == ("compiling harness_tiny:tiny_cnn b (torch.compile, in the warm-up "
                        "rounds)")
    assert re.fullmatch(r"compiled in \d+\.\d s \(warm-up rounds \d+\.\d s\)", lines[1])
    assert re.match(r"session 1/3 \(block 0\) harness_tiny:tiny_cnn: step median "
                    r"a \d+\.\d ms, b \d+\.\d ms; failed 0; elapsed \d\d:\d\d, "
                    r"ETA \d\d:\d\d$",
                    lines[2]), lines[2]
    assert lines[3].startswith("session 2/3 (block 1) harness_tiny:tiny_cnn: FAILED "
                               "(exit 1)")
    assert "; failed 1;" in lines[3]
    assert lines[-1].startswith("session 3/3 (block 2)") and lines[-1].endswith("ETA 00:00")
    assert len(lines) == 7 and lines[4].startswith("compiling")  # session 3 compiles too
    executors.run_interleaved(sessions, tmp_path, progress=True)  # only the failed one again
    assert "] session 3/3 (block 1) " in capsys.readouterr().err  # 2 of 3 done before
    monkeypatch.setattr(executors, "spawn", lambda *a, **k: 1)
    executors.run_interleaved(sessions, tmp_path, progress=False)
    assert capsys.readouterr().err == ""  # progress=False: silent
