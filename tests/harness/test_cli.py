"""The command line: ``run`` (a configs design from the command line, each block in a child
process), the clear errors for bad input, ``report`` on a ``run`` folder, run identity,
dispatch."""

import json
import os
import re
import sys
import types
from pathlib import Path

import pytest

from harness import records
from harness.cli import main, run_parser, spec_from_args
from harness.run.runner import FAULT_ENV
from harness.spec import plan, read_design
from harness.sweep.runs import to_runspecs

HERE = Path(__file__).parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(HERE))
TINY = ["--epochs", "2", "--steps-per-epoch", "2", "--eval-steps", "1", "--batch-size", "8",
        "--device", "cpu", "--no-pretrained"]
MODEL = ["--model", "harness_tiny:tiny_cnn"]


@pytest.fixture(autouse=True)
def _child_path(monkeypatch):
    """The block's child process imports harness_tiny too."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), str(HERE)]))
    monkeypatch.delenv(FAULT_ENV, raising=False)


def _run_ids(argv):
    spec = spec_from_args(run_parser().parse_args(argv))
    return {s.config: s.run_id for s in to_runspecs(spec, plan(spec))}


def _broken_links(folder: Path) -> set[str]:
    """The relative links of report.md that name no file."""
    text = (folder / "report.md").read_text()
    return {t for t in re.findall(r"\]\(([^)#]+)\)", text)
            if "://" not in t and not (folder / t).exists()}


@pytest.mark.slow
def test_run_two_configs_rerun_skips_and_report_rebuilds(tmp_path, capsys):
    args = ["run", *MODEL, "--flags", "legacy=legacy,num_workers=0", "--flags",
            "fast=best,plot_every=1", *TINY, "--out", str(tmp_path)]
    assert main(args) == 0
    t = records.read_table(tmp_path)
    assert sorted(t["config"].unique()) == ["fast", "legacy"] and len(t) == 4
    assert t[t["config"] == "fast"]["plot_every"].tolist() == [1, 1]
    assert (t["status"] == "ok").all()
    out = capsys.readouterr().out
    assert f"report: {tmp_path / 'report.md'}" in out
    # the report's findings follow its path (what a log off a terminal shows of it)
    findings = json.loads((tmp_path / "report.json").read_text())["findings"]
    assert findings and all(f"\n  - {f}\n" in out for f in findings)
    report = (tmp_path / "report.md").read_text()
    assert "legacy" in report and "fast" in report and "runs.parquet" in report
    assert main(args) == 0  # finished runs (same identity) are skipped
    assert records.read_table(tmp_path)["epoch_s"].tolist() == t["epoch_s"].tolist()

    # `harness report DIR` on a `harness run` folder writes a proper report
    (tmp_path / "report.md").unlink()
    assert main(["report", str(tmp_path)]) == 0
    text = (tmp_path / "report.md").read_text()
    assert "harness_tiny:tiny_cnn" in text and "legacy" in text and "fast" in text
    assert "ablations/" not in text and "| ," not in text and "digits, batch 8" in text
    assert "Traceback" not in capsys.readouterr().err
    assert not _broken_links(tmp_path)


@pytest.mark.parametrize("extra,message", [
    (["--model", "ivit_micro", "--num-classes", "5"], "pass --num-classes 10"),
    (["--model", "deit_tiny_patch16_224"], "pass --img-size 32"),
    (["--model", "ivit_mikro"], "did you mean 'ivit_micro'"),
    (["--model", "ivit_micro", "--dataset", "cifar10", "--data-dir", "/nonexistent"],
     "pass --data-dir"),
    (["--model", "ivit_micro", "--dataset", "imagefolder"], "needs data_dir"),
    (["--model", "ivit_micro", "--flags", "seed,use_frexp=maybe"], "true/false"),
])
def test_bad_input_is_refused_before_training(tmp_path, capsys, monkeypatch, extra, message):
    monkeypatch.setenv("QVIT_HARNESS_DOWNLOAD", "0")
    assert main(["run", *extra, *TINY, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "runs.parquet").exists()


def test_cuda_without_cuda_is_refused_up_front(tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    argv = ["run", *MODEL, *TINY, "--device", "cuda", "--out", str(tmp_path)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "CUDA is not available" in err, err
    assert not (tmp_path / "runs.parquet").exists() and not (tmp_path / "shards").exists()
    assert not (tmp_path / "jobs").exists()  # no run started


@pytest.mark.slow
def test_every_run_failed_ends_with_a_report_of_the_failures(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv(FAULT_ENV, '{"x": {"fault": "error", "epoch": 1},'
                                  ' "y": {"fault": "error", "epoch": 1}}')
    argv = ["run", *MODEL, "--flags", "x=best", "--flags",
            "y=seed,num_workers=0", *TINY, "--out", str(tmp_path)]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    ids = read_design(tmp_path)["run_ids"]
    text = (tmp_path / "report.md").read_text()
    assert "No run finished" in text and len(ids) == 2
    for run_id in ids:
        assert f"run {run_id}: error" in text and f"run {run_id} epoch 1: error" in err
    assert "injected error" in text


@pytest.mark.slow
def test_one_epoch_counts_syncs_and_a_changed_setting_is_another_run(tmp_path):
    base = ["run", *MODEL, "--flags", "c=best", "--epochs", "1",
            "--steps-per-epoch", "2", "--eval-steps", "1", "--device", "cpu",
            "--no-pretrained", "--threads", "1", "--out", str(tmp_path)]
    assert main([*base, "--batch-size", "8"]) == 0
    t1 = records.read_table(tmp_path)
    assert len(t1) == 1 and not t1["warmup"].iloc[0]
    assert t1["syncs_per_step"].notna().all() and t1["counted"].all()  # one epoch: counted
    # another batch size: another identity; the finished run is not reused, nor pooled
    assert _run_ids([*base[1:], "--batch-size", "8"]) != \
        _run_ids([*base[1:], "--batch-size", "4"])
    [first] = read_design(tmp_path)["run_ids"]
    assert set(t1["run_id"]) == {first}
    assert main([*base, "--batch-size", "4"]) == 0
    [second] = read_design(tmp_path)["run_ids"]
    t2 = records.read_table(tmp_path)
    assert second != first and sorted(t2["run_id"]) == sorted([first, second])  # run anew
    assert (t2["status"] == "ok").all()
    report = (tmp_path / "report.md").read_text()
    # the process settings are recorded once, as applied: device_name names the threads
    # column's count (it named the count from before the run set it)
    for _, r in t2.iterrows():
        assert r["threads"] == 1 and r["device_name"].endswith(", 1 threads)")
    assert "1 rows in this folder's table belong to runs of other identities" in report


def test_run_ids_cover_every_setting(tmp_path):
    base = ["--flags", "c=best", "--out", str(tmp_path)]
    ref = _run_ids(base)["c"]
    assert _run_ids(base)["c"] == ref  # the same command: the same run
    for extra in (["--epochs", "3"], ["--steps-per-epoch", "5"], ["--batch-size", "8"],
                  ["--eval-steps", "2"], ["--seed", "1"], ["--threads", "1"],
                  ["--device", "cpu"], ["--no-pretrained"], ["--lr", "0.01"]):
        assert _run_ids([*base, *extra])["c"] != ref, extra


def test_dispatch_to_other_modules(monkeypatch):
    seen = {}
    fake = types.ModuleType("harness.parity")
    fake.main = lambda argv: seen.setdefault("argv", argv) and 0
    monkeypatch.setitem(sys.modules, "harness.parity", fake)
    assert main(["parity", "--model", "ivit_micro"]) == 0
    assert seen["argv"] == ["--model", "ivit_micro"]
    assert main(["frobnicate"]) == 2
