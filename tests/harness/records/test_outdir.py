"""The output folder is the harness's only when it is new, empty, marked or written by the
harness before markers existed; anything else is refused in one line, before anything is
written. Every file goes through one atomic write: a failed write leaves the old file."""

import errno
import json
import os
import shutil
from pathlib import Path

import pytest

from harness.errors import io_fault
from harness.records import files
from harness.records.outdir import MARKER, claim_out_dir, harness_folder
from tests.harness.full_disk import Disk

ROOT = Path(__file__).resolve().parents[3]


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_a_users_files_are_refused_and_untouched(tmp_path):
    (tmp_path / "report.md").write_text("my notes")
    (tmp_path / "summary.csv").write_text("a,b\n1,2\n")
    (tmp_path / "data.bin").write_bytes(b"\x00\x01")
    before = _snapshot(tmp_path)
    with pytest.raises(ValueError) as info:
        claim_out_dir(tmp_path, "run", "demo")
    msg = str(info.value)
    assert msg == (f"--out {tmp_path} is not a harness folder (no {MARKER}) and would "
                   f"overwrite report.md, summary.csv: name a new or empty folder; the harness "
                   f"writes only into folders it made")
    assert _snapshot(tmp_path) == before  # nothing written, not even a lock or a marker


def test_a_folder_of_other_files_is_refused_too(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "photos").mkdir()
    with pytest.raises(ValueError, match=r"and holds notes\.txt, photos/: name a new or empty"):
        claim_out_dir(tmp_path, "run", "demo")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt", "photos"]


def test_new_and_empty_folders_are_claimed_and_marked(tmp_path):
    new = claim_out_dir(tmp_path / "a" / "new", "ablate", "seed_timeline")
    marker = json.loads((new / MARKER).read_text())
    assert marker["command"] == "ablate" and marker["spec"] == "seed_timeline"
    assert marker["written_by"] == "qvit harness"
    (tmp_path / "empty").mkdir()
    claim_out_dir(tmp_path / "empty", "run", "x")
    assert json.loads((tmp_path / "empty" / MARKER).read_text())["command"] == "run"
    # marked: claimed again, whatever it holds now (the harness's report, say); marker kept
    (new / "report.md").write_text("the harness's report")
    claim_out_dir(new, "run", "other")
    assert json.loads((new / MARKER).read_text())["spec"] == "seed_timeline"


@pytest.mark.parametrize("folder", ["results/cpu-epyc-2c/best",
                                    "results/cpu-epyc-avx512-2c/parity/ivit_micro"])
def test_folders_the_harness_wrote_before_markers_are_its_own(tmp_path, folder):
    """The committed results (design.json and the table; parity.csv) carry no marker."""
    copy = tmp_path / "copy"
    shutil.copytree(ROOT / folder, copy)
    assert not (copy / MARKER).exists() and harness_folder(copy)
    claim_out_dir(copy, "ablate", "best")
    assert (copy / MARKER).is_file()


def test_a_users_design_or_parity_file_is_not_the_harnesss(tmp_path):
    (tmp_path / "design.json").write_text(json.dumps({"title": "my design"}))
    (tmp_path / "parity.csv").write_text("name,value\nx,1\n")
    assert not harness_folder(tmp_path)
    with pytest.raises(ValueError, match="would overwrite design.json, parity.csv"):
        claim_out_dir(tmp_path, "parity", "ivit_micro")


def test_the_cli_report_refuses_a_users_folder(tmp_path, capsys):
    from harness.analysis import report

    (tmp_path / "report.md").write_text("mine")
    assert report.main([str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {tmp_path} is not a folder written by the harness")
    assert err.count("\n") == 1 and (tmp_path / "report.md").read_text() == "mine"


# --- the one atomic write -----------------------------------------------------------------------

def test_a_failed_write_leaves_the_old_file(tmp_path):
    path = files.write_text(tmp_path / "report.md", "old")
    with pytest.raises(RuntimeError, match="renderer died"), files.atomic_file(path) as fh:
        fh.write(b"half of the new")
        raise RuntimeError("renderer died")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["report.md"]  # no temporary file left


def test_a_disk_error_names_the_target_with_its_errno(tmp_path, monkeypatch):
    path = files.write_text(tmp_path / "runs.csv", "old")

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(files.os, "fsync", full)
    with pytest.raises(OSError) as info:
        files.write_text(path, "new")
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(path)
    assert io_fault(info.value) is info.value
    assert path.read_text() == "old" and len(list(tmp_path.iterdir())) == 1


@pytest.fixture
def disk(tmp_path, monkeypatch):
    d = Disk(tmp_path / "disk", monkeypatch, size="1m")
    yield d
    d.close()


def test_a_checkpoint_on_a_full_disk_raises_oserror_not_torchs_iostream_error(disk):
    """torch.save to a path on a full disk raises RuntimeError('... iostream error');
    `save_torch` streams into the temporary file, so the disk's OSError comes through,
    naming the checkpoint; the old checkpoint stays."""
    import torch

    path = files.save_torch({"w": torch.ones(3)}, disk.path / "c.pt")
    disk.fill()
    with pytest.raises(OSError) as info:
        files.save_torch({"w": torch.zeros(100_000)}, path)
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(path)
    assert torch.equal(torch.load(path)["w"], torch.ones(3))
    assert sorted(p.name for p in disk.path.iterdir() if p.name != ".filler") == ["c.pt"]


def test_writes_keep_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        path = files.write_text(tmp_path / "x.json", "{}")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o640


def test_parity_refuses_a_users_folder_before_measuring(tmp_path, capsys):
    from harness.parity import main

    (tmp_path / "parity.csv").write_text("my,own\n")
    assert main(["--model", "ivit_micro", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --out {tmp_path} is not a harness folder") and \
        "would overwrite parity.csv" in err and err.count("\n") == 1
    assert (tmp_path / "parity.csv").read_text() == "my,own\n"
