"""The command line: run (inline), the clear errors for bad input, dispatch."""

import sys
import types
from pathlib import Path

import pytest

from harness import records
from harness.cli import main

sys.path.insert(0, str(Path(__file__).parent))
TINY = ["--epochs", "2", "--steps-per-epoch", "2", "--eval-steps", "1", "--batch-size", "8",
        "--device", "cpu", "--set", "num_workers=0", "--no-progress", "--executor", "inline"]


def test_run_two_configs_and_rerun_skips(tmp_path, capsys):
    args = ["run", "--model", "harness_tiny:tiny_cnn", "--flags", "legacy", "--flags",
            "fast=best,plot_every=1", *TINY, "--out", str(tmp_path)]
    assert main(args) == 0
    t = records.read_table(tmp_path)
    assert sorted(t["config"].unique()) == ["fast", "legacy"] and len(t) == 4
    assert t[t["config"] == "fast"]["plot_every"].tolist() == [1, 1]
    out = capsys.readouterr().out
    assert "legacy" in out and "runs.parquet" in out
    assert main(args) == 0
    assert records.read_table(tmp_path)["wall_s"].tolist() == t["wall_s"].tolist()


@pytest.mark.parametrize("extra,message", [
    (["--model", "ivit_micro", "--num-classes", "5"], "pass --num-classes 10"),
    (["--model", "deit_tiny_patch16_224"], "pass --img-size 32"),
    (["--model", "ivit_mikro"], "did you mean 'ivit_micro'"),
    (["--model", "ivit_micro", "--dataset", "cifar10", "--data-dir", "/nonexistent"],
     "pass --data-dir"),
    (["--model", "ivit_micro", "--dataset", "imagefolder"], "needs --data-dir"),
    (["--model", "ivit_micro", "--flags", "seed,use_frexp=maybe"], "true/false"),
])
def test_bad_input_is_refused_before_training(tmp_path, capsys, monkeypatch, extra, message):
    monkeypatch.setenv("QVIT_HARNESS_DOWNLOAD", "0")
    assert main(["run", *extra, *TINY, "--out", str(tmp_path)]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "runs.parquet").exists()


def test_dispatch_to_other_modules(monkeypatch):
    seen = {}
    fake = types.ModuleType("harness.parity")
    fake.main = lambda argv: seen.setdefault("argv", argv) and 0
    monkeypatch.setitem(sys.modules, "harness.parity", fake)
    assert main(["parity", "--model", "ivit_micro"]) == 0
    assert seen["argv"] == ["--model", "ivit_micro"]
    assert main(["frobnicate"]) == 2
