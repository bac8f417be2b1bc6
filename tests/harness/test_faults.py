"""Fault injection: what the harness's files and entry points do when the disk, the folder,
another process or the data misbehaves (issue 11). Small tables, no training.

Covered here: each copy of the runs table recovers the other (missing, truncated, garbage,
stale); tables honour the umask; two processes contending for one output folder; disk full
during a write; a read-only or forbidden output folder; a corrupt image in an ImageFolder.
"""

import errno
import fnmatch
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest

from harness import errors, records
from harness.analysis.report import build_report
from harness.records import files
from harness.records import outdir as safety
from harness.spec import datasets, design_configs
from qvit import Flags
from tests.harness.harness_env import child_env

REPO = Path(__file__).resolve().parents[2]


def _row(run_id="r1", epoch=1, **kw):
    row = dict(run_id=run_id, config="seed", model="m", dataset="digits", repeat=0, seed=0,
               block=0, order=0, epoch=epoch, warmup=epoch == 1, steps=3, train_s=2.71,
               eval_s=0.5, top1=50.0, status="ok", git_commit="1234e567", error="")
    row.update(Flags.preset("seed").to_dict())
    row.update(kw)
    return row


def _table(tmp_path, n=3):
    return records.append_rows(tmp_path, [_row(f"r{i}", 1, train_s=1.0 + i) for i in range(n)])


# --- each table recovers from the other ----------------------------------------------------

def _break(path: Path, how: str) -> None:
    if how == "missing":
        path.unlink()
    elif how == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    else:
        path.write_bytes(b"\x00garbage, not a table\x00")


@pytest.mark.parametrize("how", ["missing", "truncated", "garbage"])
def test_parquet_recovered_from_csv(tmp_path, capsys, how):
    before = _table(tmp_path)
    csv_bytes = (tmp_path / records.CSV).read_bytes()
    _break(tmp_path / records.TABLE, how)
    t = records.read_table(tmp_path)
    pd.testing.assert_frame_equal(t, before)  # dtypes too (the commit stays a string)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "runs.parquet unreadable (" in err[0]
    assert "); recovered 3 rows from runs.csv" in err[0]
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / records.TABLE).pipe(
        records.normalize), before)  # rewritten from the csv
    assert (tmp_path / records.CSV).read_bytes() == csv_bytes  # the survivor is untouched
    records.read_table(tmp_path)
    assert capsys.readouterr().err == ""  # said once: nothing left to recover


def test_a_run_after_a_lost_parquet_keeps_the_csv_rows(tmp_path):
    """The issue's case: parquet gone, the next write must not replace runs.csv with fewer
    rows (train_s 2.71 became 9.85)."""
    _table(tmp_path)
    (tmp_path / records.TABLE).unlink()
    t = records.append_rows(tmp_path, [_row("new", 1, train_s=9.85)])
    assert sorted(t["run_id"]) == ["new", "r0", "r1", "r2"]
    csv = pd.read_csv(tmp_path / records.CSV)
    assert sorted(csv["run_id"]) == ["new", "r0", "r1", "r2"]
    assert list(csv.sort_values("run_id")["train_s"]) == [9.85, 1.0, 2.0, 3.0]


def test_a_stale_copy_never_replaces_the_one_with_more_rows(tmp_path):
    records.append_rows(tmp_path, [_row("a")])
    old = (tmp_path / records.TABLE).read_bytes()
    records.append_rows(tmp_path, [_row("b")])
    (tmp_path / records.TABLE).write_bytes(old)  # e.g. restored from an older copy
    assert sorted(records.read_table(tmp_path)["run_id"]) == ["a", "b"]
    assert len(pd.read_parquet(tmp_path / records.TABLE)) == 2


@pytest.mark.parametrize("how", ["missing", "truncated", "garbage"])
def test_csv_recovered_from_parquet(tmp_path, capsys, how):
    before = _table(tmp_path)
    _break(tmp_path / records.CSV, how)
    pd.testing.assert_frame_equal(records.read_table(tmp_path), before)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "runs.csv unreadable (" in err[0] and "3 rows" in err[0]
    assert len(pd.read_csv(tmp_path / records.CSV)) == 3


def test_both_copies_unreadable_is_one_clear_error(tmp_path):
    _table(tmp_path)
    _break(tmp_path / records.TABLE, "truncated")
    _break(tmp_path / records.CSV, "garbage")
    with pytest.raises(ValueError) as info:
        records.read_table(tmp_path)
    msg = str(info.value)
    assert str(tmp_path / "runs.parquet") in msg and str(tmp_path / "runs.csv") in msg
    assert "restore one of them" in msg and "\n" not in msg
    with pytest.raises(ValueError):
        records.append_rows(tmp_path, [_row("x")])  # nothing is written over them either
    assert (tmp_path / records.CSV).read_bytes().startswith(b"\x00garbage")


# --- permissions -------------------------------------------------------------------------------

@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o027, 0o640)])
def test_tables_are_written_with_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        _table(tmp_path, 1)
        records.write_shard(tmp_path, "s", [_row("s")])
    finally:
        os.umask(old)
    for path in (tmp_path / records.TABLE, tmp_path / records.CSV,
                 tmp_path / "shards" / "s.parquet"):
        assert path.stat().st_mode & 0o777 == mode, path


# --- one sweep per output folder -------------------------------------------------------------

def _python(code: str, *args: str, **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *args], env=env,
                            text=True, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, **kw)


_HOLD = """
    import sys
    from harness.records.outdir import owned_dir_lock
    with owned_dir_lock(sys.argv[1]):
        print("held", flush=True)
        sys.stdin.read()
"""


def test_second_process_is_refused_while_the_first_holds_the_folder(tmp_path):
    holder = _python(_HOLD, str(tmp_path))
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(safety.OutDirBusy) as info:
            with safety.owned_dir_lock(tmp_path):
                pytest.fail("a second holder got in")
        msg = str(info.value)
        assert f"is in use by pid {holder.pid} on " in msg and "(command " in msg
        assert msg.endswith("wait for it to finish or use another --out") and "\n" not in msg
        assert f"pid={holder.pid}" in (tmp_path / safety.LOCK_NAME).read_text()  # unaffected
    finally:
        holder.communicate("", timeout=60)
    assert holder.returncode == 0  # the first one finished normally
    with safety.owned_dir_lock(tmp_path):  # and the folder is free again
        assert f"pid={os.getpid()}" in (tmp_path / safety.LOCK_NAME).read_text()
        with safety.owned_dir_lock(tmp_path):  # re-entrant within one process
            pass


def test_a_lock_left_by_a_killed_process_is_taken_over(tmp_path):
    holder = _python(_HOLD, str(tmp_path))
    assert holder.stdout.readline().strip() == "held"
    holder.kill()  # SIGKILL: no cleanup, the lock file stays with its pid in it
    holder.communicate(timeout=60)
    assert f"pid={holder.pid}" in (tmp_path / safety.LOCK_NAME).read_text()
    with safety.owned_dir_lock(tmp_path):
        assert f"pid={os.getpid()}" in (tmp_path / safety.LOCK_NAME).read_text()


def test_the_refused_cli_says_one_line_and_leaves_the_holder_alone(tmp_path):
    cli = """
        import sys
        from harness.errors import friendly_errors
        from harness.records.outdir import owned_dir_lock

        @friendly_errors
        def main(argv):
            with owned_dir_lock(argv[0]):
                print("ran", flush=True)
            return 0

        sys.exit(main(sys.argv[1:]))
    """
    with safety.owned_dir_lock(tmp_path):
        out, err = _python(cli, str(tmp_path)).communicate("", timeout=60)
        assert out == "" and err.count("\n") == 1 and "Traceback" not in err
        assert f"is in use by pid {os.getpid()}" in err
        assert f"pid={os.getpid()}" in (tmp_path / safety.LOCK_NAME).read_text()


def test_safety_imports_nothing_heavy():
    code = """
        import sys
        import harness.errors, harness.records.outdir, harness.spec.datasets
        print(sorted({"torch", "timm", "pandas", "numpy"} & set(sys.modules)))
    """
    out, err = _python(code).communicate("", timeout=60)
    assert out.strip() == "[]", err


# --- disk full ------------------------------------------------------------------------------

def _disk_full_for(monkeypatch, name: str) -> None:
    """Writes of ``name`` (through the atomic write: its temporary file) fail with ENOSPC."""
    real = os.fsync

    def fsync(fd):
        if Path(os.readlink(f"/proc/self/fd/{fd}")).name.startswith(f".{name}."):
            raise OSError(errno.ENOSPC, "No space left on device")
        real(fd)

    monkeypatch.setattr(files.os, "fsync", fsync)


@pytest.mark.parametrize("writer", ["to_parquet", "to_csv"])
def test_disk_full_keeps_the_table(tmp_path, monkeypatch, capsys, writer):
    _table(tmp_path)
    before = {p: p.read_bytes() for p in (tmp_path / records.TABLE, tmp_path / records.CSV)}
    _disk_full_for(monkeypatch, records.TABLE if writer == "to_parquet" else records.CSV)

    @errors.friendly_errors(tmp_path)
    def main(argv):
        records.append_rows(tmp_path, [_row("new")])
        return 0

    assert main([]) == 1
    err = capsys.readouterr().err
    name = records.TABLE if writer == "to_parquet" else records.CSV
    assert err.count("\n") == 1, err
    assert err.startswith(f"cannot write {tmp_path / name}: no space left on device (ENOSPC); ")
    assert err.endswith(f"kept in {tmp_path}; free space and rerun the same command to resume\n")
    assert not list(tmp_path.glob(".*.tmp"))  # no half-written file left behind
    monkeypatch.undo()
    if writer == "to_parquet":  # nothing was replaced
        assert {p: p.read_bytes() for p in before} == before
    t = records.read_table(tmp_path)  # csv behind the parquet: brought level, nothing lost
    assert {"r0", "r1", "r2"} <= set(t["run_id"])
    assert len(pd.read_csv(tmp_path / records.CSV)) == len(t)


def test_friendly_errors_codes_and_what_propagates(tmp_path, capsys):
    def fails(exc):
        @errors.friendly_errors(tmp_path)
        def main(argv):
            raise exc
        return main([])

    assert fails(KeyboardInterrupt()) == 130
    assert capsys.readouterr().err == (f"interrupted (Ctrl-C); finished runs are kept in "
                                       f"{tmp_path}; rerun the same command to resume\n")
    assert fails(errors.Terminated(signal.SIGTERM)) == 143
    assert capsys.readouterr().err.startswith("stopped by SIGTERM; finished runs are kept in ")
    assert fails(ValueError("stages = [2, 3] is not a list of stage names")) == 2
    assert capsys.readouterr().err == "error: stages = [2, 3] is not a list of stage names\n"
    wrapped = RuntimeError("writer died")
    wrapped.__cause__ = OSError(errno.ENOSPC, "No space left on device", "/x/runs.csv")
    assert fails(wrapped) == 1  # the disk-full cause is found behind a wrapper
    assert capsys.readouterr().err.startswith(
        "cannot write /x/runs.csv: no space left on device (ENOSPC); finished runs are kept")
    assert fails(OSError(errno.EROFS, "Read-only file system", "/ro/runs.csv")) == 1
    err = capsys.readouterr().err
    assert err.startswith("cannot write /ro/runs.csv: read-only file system (EROFS); ")
    assert "; make it writable and rerun the same command" in err
    assert fails(OSError(errno.EIO, "Input/output error", "/d/x.pt")) == 1
    err = capsys.readouterr().err
    assert err.startswith("cannot write /d/x.pt: input/output error (EIO); ")
    assert "; check the disk and rerun the same command" in err
    # pyarrow leaves the errno in its message only
    assert fails(OSError("Error writing bytes to file. Detail: [errno 122] Disk quota")) == 1
    assert "disk quota exceeded (EDQUOT); " in capsys.readouterr().err
    with pytest.raises(RuntimeError, match="a bug"):
        fails(RuntimeError("a bug"))  # not the user's to fix: the traceback stays
    with pytest.raises(FileNotFoundError):
        fails(FileNotFoundError(errno.ENOENT, "gone"))
    with pytest.raises(SystemExit) as info, errors.friendly_errors() as fe:
        fe.what = tmp_path / "later"
        raise KeyboardInterrupt
    assert info.value.code == 130 and "kept in " + str(tmp_path / "later") in \
        capsys.readouterr().err


# --- the output folder -----------------------------------------------------------------------

def test_out_naming_a_file_is_refused(tmp_path):
    f = tmp_path / "results.txt"
    f.write_text("keep me")
    with pytest.raises(ValueError, match=r"^--out .*results.txt is an existing file, not a"):
        safety.check_out_dir(f)
    assert f.read_text() == "keep me"
    assert safety.check_out_dir(tmp_path / "a" / "b") == tmp_path / "a" / "b"
    assert (tmp_path / "a" / "b").is_dir() and not list((tmp_path / "a" / "b").iterdir())


def test_unwritable_out_refused_simulated(tmp_path, monkeypatch):
    """Simulated (tests run as root, who ignores permission bits): creating the probe file
    fails as on a read-only file system. Checks the message, not the kernel."""
    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(safety.tempfile, "mkstemp", read_only)
    with pytest.raises(ValueError, match=r"^--out .* is not writable \(Read-only file system\)"):
        safety.check_out_dir(tmp_path)


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores permission bits")
def test_unwritable_out_refused_by_permissions(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o555)
    try:
        with pytest.raises(ValueError, match="is not writable"):
            safety.check_out_dir(ro)
        with pytest.raises(ValueError, match="cannot be created"):
            safety.check_out_dir(ro / "sub")
    finally:
        ro.chmod(0o755)


@pytest.mark.skipif(not Path("/sys/kernel").is_dir(), reason="no sysfs")
def test_unwritable_out_refused_by_the_kernel():
    """Real refusals, even for root: sysfs takes no new files or folders."""
    with pytest.raises(ValueError, match=r"^--out /sys/kernel is not writable \("):
        safety.check_out_dir("/sys/kernel")
    with pytest.raises(ValueError, match=r"^--out /sys/harness-out cannot be created \("):
        safety.check_out_dir("/sys/harness-out")


# --- a corrupt image -----------------------------------------------------------------------------

def test_corrupt_image_named_before_anything_loads(tmp_path):
    from PIL import Image

    for split in ("train", "val"):
        for c in ("ant", "bee"):
            (tmp_path / split / c).mkdir(parents=True)
            for i in range(2):
                Image.new("RGB", (8, 8), (i * 50, 0, 0)).save(tmp_path / split / c / f"{i}.png")
    good = tmp_path / "train" / "bee" / "1.png"
    shutil.copy(good, tmp_path / "train" / "bee" / "2.png")
    datasets.check_dataset("imagefolder", tmp_path)
    bad = tmp_path / "train" / "bee" / "3.jpg"
    bad.write_bytes(b"this is not an image")
    with pytest.raises(ValueError) as info:
        datasets.check_dataset("imagefolder", tmp_path)
    assert str(info.value).startswith(f"unreadable image {bad} (")
    assert str(info.value).endswith("): remove or replace it") and "\n" not in str(info.value)
    bad.unlink()
    cut = tmp_path / "val" / "ant" / "0.png"
    cut.write_bytes(cut.read_bytes()[:-20])  # a PNG cut short
    with pytest.raises(ValueError, match=f"^unreadable image {cut} "):
        datasets.check_dataset("imagefolder", tmp_path)


# --- sweeps (issue 27): a user's --out, a full disk, a stop signal ----------------------------

HERE = Path(__file__).resolve().parent  # harness_tiny.py: the children import it from here
TINY = ["--model", "harness_tiny:tiny_cnn", "--steps-per-epoch", "2", "--eval-steps", "1",
        "--batch-size", "8", "--device", "cpu", "--no-pretrained", "--threads", "1"]


def _run_args(out, configs=("a",), epochs=1, repeats=1):
    flags = [a for c in configs for a in ("--flags", f"{c}=best")]
    return [*TINY, "--epochs", str(epochs), "--repeats", str(repeats), *flags,
            "--out", str(out)]


def _env(fault=None):
    return child_env(fault, omp_threads=1)


def _sigint_as_at_a_terminal():
    # a shell's background job (pytest under `cmd &`, some CI runners) starts with SIGINT
    # ignored, and Python installs its Ctrl-C handler only where SIGINT is not ignored: the
    # sweep starts as from a terminal, whatever started the tests
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _harness_run(out, configs=("a",), fault=None, epochs=1, **kw):
    return subprocess.Popen([sys.executable, "-m", "harness", "run",
                             *_run_args(out, configs, epochs)], cwd=REPO, env=_env(fault),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, preexec_fn=_sigint_as_at_a_terminal, **kw)


def _finish(proc, timeout=600) -> tuple[int, str]:
    try:
        log, _ = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    return proc.returncode, log


def _last_line(log: str) -> str:
    return [line for line in log.splitlines() if line.strip()][-1]


def _ids(out) -> dict[str, str]:
    from harness.spec import read_design

    return {rid.split("-", 1)[0]: rid for rid in read_design(out)["run_ids"]}


def test_a_users_folder_given_as_out_is_refused_and_untouched(tmp_path):
    """The issue's case: ``harness run --out`` a folder holding the user's report.md and
    summary.csv replaced both without a word."""
    (tmp_path / "report.md").write_text("# my own report\n")
    (tmp_path / "summary.csv").write_text("mine,yes\n")
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    rc, log = _finish(_harness_run(tmp_path))
    assert rc == 2 and log.count("\n") == 1, log
    assert log == (f"error: --out {tmp_path} is not a harness folder (no .harness.json) and "
                   f"would overwrite report.md, summary.csv: name a new or empty folder; the "
                   f"harness writes only into folders it made\n")
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


@pytest.fixture
def disk(tmp_path, monkeypatch):
    from tests.harness.full_disk import Disk

    d = Disk(tmp_path / "disk", monkeypatch)
    yield d
    d.close()


def _checkpoint_payload(work: Path, out: Path) -> Path:
    from harness.cli import run_parser, spec_from_args
    from harness.spec import design_configs, plan
    from harness.sweep.runs import to_runspecs

    spec = spec_from_args(run_parser().parse_args(_run_args(out)), [])
    specs = to_runspecs(spec, plan(spec, design_configs(spec)))
    work.mkdir(parents=True)
    path = files.write_text(work / "payload.json", json.dumps(
        {"specs": [s.to_dict() for s in specs], "run_ids": [s.run_id for s in specs],
         "inflight": str(work / "inflight.json")}))
    return path


def test_a_checkpoint_the_disk_refuses_is_handed_to_the_parent_not_recorded(
        tmp_path, monkeypatch):
    """In a block's child: the disk refuses the checkpoint (ENOSPC), the child records no
    failed run (the run is not at fault and resumes later), names the write to its parent
    on the fault channel and exits with IO_FAULT_EXIT."""
    from harness.run import runner
    from tests.harness.full_disk import Disk

    monkeypatch.syspath_prepend(str(HERE))
    out = tmp_path / "out"
    disk = Disk(out / runner.CHECKPOINTS, monkeypatch, size="1m")
    try:
        payload = _checkpoint_payload(tmp_path / "work", out)
        channel = errors.FaultChannel()
        monkeypatch.setenv(*next(iter(channel.env.items())))
        disk.fill()
        assert runner._main([str(payload), str(out)]) == errors.IO_FAULT_EXIT
        fault = channel.close()
        (run_id,) = json.loads(payload.read_text())["run_ids"]
        assert fault.errno == errno.ENOSPC
        assert fault.filename == str(out / runner.CHECKPOINTS / f"{run_id}.pt")
        assert len(records.run_rows(out, run_id)) == 0  # no "error" row: nothing to blame
    finally:
        disk.close()


def _spec(out, configs=("a",), repeats=1, epochs=1):
    from harness.cli import run_parser, spec_from_args

    return spec_from_args(run_parser().parse_args(_run_args(out, configs, epochs, repeats)),
                          [])


@pytest.mark.slow
def test_disk_full_at_a_table_and_a_report_write_then_resume(disk, monkeypatch, tmp_path):
    """A sweep of two blocks whose disk fills after the first block (the table's write
    fails), then, with space again, fills before the report (its first write fails): each
    stop is one SweepStopped line naming the file, the errno's meaning and the finished
    runs kept. With space, the same call finishes; the table holds every run once and the
    report equals one built from the same runs by an undisturbed sweep."""
    from harness import pipeline
    from harness.records import table as table_module

    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(REPO), str(HERE)]))
    monkeypatch.syspath_prepend(str(HERE))
    out = disk.path / "sweep"
    spec = _spec(out, repeats=2)
    merge, merges = table_module.merge_shards, []

    def merge_then_fill(*args, **kwargs):  # the merge after block 0: the disk is full
        merges.append(1)
        if len(merges) == 2:
            disk.fill()
        return merge(*args, **kwargs)

    monkeypatch.setattr(table_module, "merge_shards", merge_then_fill)
    with pytest.raises(errors.SweepStopped) as info:
        pipeline.run_spec(spec, out, progress=False)
    assert str(info.value) == (
        f"cannot write {out / 'runs.parquet'}: no space left on device (ENOSPC); 1 of 2 runs "
        f"finished and kept in {out}; free space and rerun the same command to resume")
    assert info.value.code == 1
    monkeypatch.setattr(table_module, "merge_shards", merge)
    disk.free()

    build = pipeline.build_report
    monkeypatch.setattr(pipeline, "build_report", lambda folder: (disk.fill(), build(folder))[1])
    with pytest.raises(errors.SweepStopped) as info:
        pipeline.run_spec(spec, out, progress=False)
    assert str(info.value).startswith(
        f"cannot write {out / 'summary.csv'}: no space left on device (ENOSPC); 2 of 2 runs "
        f"finished and kept in {out}; free space")
    monkeypatch.setattr(pipeline, "build_report", build)
    disk.free()

    assert pipeline.run_spec(spec, out, progress=False) == out / "report.md"
    t = records.read_table(out)
    assert len(t) == 2 and set(t["status"]) == {"ok"} and not t.duplicated("run_id").any()
    assert not [p for p in out.rglob("*.tmp")]  # no half-written file anywhere
    tops = {p.name for p in out.iterdir()} - {".filler"}
    assert all(any(fnmatch.fnmatch(n, o) for o in safety.OUTPUTS) for n in tops), tops

    ref = tmp_path / "undisturbed"  # the same runs, recorded without a fault
    files.write_design(spec, design_configs(spec), list(t["run_id"]), ref)
    records.append_rows(ref, t.to_dict("records"))
    build_report(ref)
    for name in ("report.md", "summary.csv", "report.json"):
        assert (out / name).read_text() == (ref / name).read_text(), name


@pytest.mark.slow
def test_disk_full_at_a_checkpoint_stops_the_sweep_in_one_line(disk, tmp_path):
    """The issue's case, on a real full file system: a block's child cannot write its
    checkpoint; the sweep ends in one line naming it, no traceback, the finished run kept;
    with space again the same command finishes the rest."""
    if not disk.real:
        pytest.skip("needs a real small file system (mount -t tmpfs, as root)")
    out = tmp_path / "out"
    assert _finish(_harness_run(out, ("a",)))[0] == 0  # a finished earlier
    disk.close()
    from tests.harness.full_disk import Disk

    full = Disk(out / "checkpoints", pytest.MonkeyPatch(), size="1m")
    try:
        full.fill()
        rc, log = _finish(_harness_run(out, ("a", "b")))
        ids = _ids(out)
        assert rc == 1 and "Traceback" not in log, log
        assert _last_line(log) == (
            f"cannot write {out}/checkpoints/{ids['b']}.pt: no space left on device (ENOSPC); "
            f"1 of 2 runs finished and kept in {out}; free space and rerun the same command "
            f"to resume"), log
        assert ids["b"] not in set(records.current_rows(out)["run_id"])  # nothing blamed
        full.free()
        rc, log = _finish(_harness_run(out, ("a", "b")))
        assert rc == 0, log
        t = records.read_table(out)
        assert sorted(t["run_id"]) == sorted(ids.values()) and set(t["status"]) == {"ok"}
    finally:
        full.close()


def _wait_in_epoch2(out: Path, config: str, proc, timeout: float = 600) -> int:
    """The pid of the block's child once ``config``'s run recorded epoch 1 and hangs in
    epoch 2."""
    import time

    inflight = out / "jobs" / "blocks" / "block0" / "inflight.json"
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, proc.communicate()[0]
        try:
            info = json.loads(inflight.read_text())
        except (OSError, ValueError):
            info = {}
        shard = out / "shards" / f"{info.get('run_id', '')}.parquet"
        if info.get("run_id", "").startswith(f"{config}-") and shard.is_file():
            rows = records.read_shard(shard)
            if rows is not None and (rows["epoch"] == 1).any():
                return int(info["pid"])
        time.sleep(0.2)
    pytest.fail(f"run {config} never reached epoch 2")


@pytest.mark.slow
@pytest.mark.parametrize("target,sig", [("parent", signal.SIGTERM), ("group", signal.SIGINT),
                                        ("child", signal.SIGTERM)])
def test_a_stopped_sweep_ends_in_one_line_and_keeps_its_finished_runs(tmp_path, target, sig):
    """SIGTERM to the sweep, Ctrl-C (SIGINT to its process group, as a terminal sends it):
    one line, exit 128+signal, no traceback, the child stopped, the first run kept; the
    same command resumes the second. SIGTERM to the block's child (as the OOM killer's
    SIGKILL): the run it was in is recorded as failed and the sweep ends non-zero, no
    traceback."""
    from harness.spec import plan

    spec = _spec(tmp_path, ("a", "b"), epochs=2)
    first, last = (r.config.name for r in sorted(plan(spec, design_configs(spec)),
                                            key=lambda r: r.order))
    proc = _harness_run(tmp_path, ("a", "b"), {last: {"fault": "hang", "epoch": 2}}, epochs=2)
    child = _wait_in_epoch2(tmp_path, last, proc)
    {"parent": lambda: os.kill(proc.pid, sig), "group": lambda: os.killpg(proc.pid, sig),
     "child": lambda: os.kill(child, sig)}[target]()
    rc, log = _finish(proc, timeout=300)
    ids = _ids(tmp_path)
    assert "Traceback" not in log, log
    t = records.read_table(tmp_path)
    assert list(t[t["run_id"] == ids[first]]["status"]) == ["ok", "ok"], log
    if target == "child":
        assert rc == 1, log
        b = t[t["run_id"] == ids[last]].sort_values("epoch")
        assert list(b["status"]) == ["ok", "error"] and "SIGTERM" in b["error"].iloc[1]
        return
    stopped = "stopped by SIGTERM" if sig == signal.SIGTERM else "interrupted (Ctrl-C)"
    assert rc == 128 + sig and _last_line(log) == (
        f"{stopped}; 1 of 2 runs finished and kept in {tmp_path}; rerun the same command to "
        f"resume"), log
    with pytest.raises(ProcessLookupError):
        os.kill(child, 0)  # the child went with the sweep
    rc, log = _finish(_harness_run(tmp_path, ("a", "b"), epochs=2))
    assert rc == 0, log
    t = records.read_table(tmp_path)
    assert len(t) == 4 and set(t["status"]) == {"ok"}
    assert not t.duplicated(["run_id", "epoch"]).any()
