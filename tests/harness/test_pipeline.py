"""A tiny spec runs end to end through nox's code path (`python -m harness ablate`) into a
report from a float-pretrained, calibrated start, then resumes without rerunning; a changed
setting, library version or source file makes other run ids (not reused)."""

import pytest

from harness import cli, records
from harness.spec import settings

TINY = """
name = "tiny"
description = "two configs (and the A/A control), two blocks, micro model"
[run]
models = ["ivit_micro"]
epochs = 2
warmup_epochs = 1
steps_per_epoch = 2
eval_steps = 1
batch_size = 16
eval_batch_size = 16
repeats = 2
device = "cpu"
pretrain_epochs = 1
calibration_steps = 1
[design]
kind = "configs"
baseline = "legacy"
configs = [{name = "legacy", flags = "legacy,num_workers=0"},
           {name = "seed", flags = "seed,num_workers=0"}]
"""


@pytest.mark.slow
def test_tiny_spec_end_to_end(tmp_path, monkeypatch):
    monkeypatch.setenv("QVIT_CACHE", str(tmp_path / "cache"))
    spec = tmp_path / "tiny.toml"
    spec.write_text(TINY)
    out = tmp_path / "results" / "tiny"
    args = ["ablate", str(spec), "--out", str(out)]
    assert cli.main(args) == 0
    table = records.read_table(out)
    assert len(table) == 3 * 1 * 2 * 2  # configs (with A/A) x models x blocks x epochs
    assert set(table["status"]) == {"ok"}
    assert table["pretrained_top1"].notna().all()  # every run started from the float twin
    assert len(list((tmp_path / "cache" / "pretrained").glob("*.pt"))) == 1
    runs = table.drop_duplicates("run_id")
    assert sorted(runs.groupby("block").size()) == [3, 3]
    text = (out / "report.md").read_text()
    assert "## Speed per config" in text and "A/A" in text and "float-pretrained" in text
    assert not (out.parent / "README.md").exists()  # nothing outside the folder it owns
    assert not any((out / "checkpoints").iterdir()) and not any((out / "shards").iterdir())
    # resume: nothing left to run, the table is unchanged
    assert cli.main(args) == 0
    assert records.read_table(out).equals(table)
    # another setting is another identity: none of its runs counts as finished
    spec2, _, _, _ = cli.prepare_ablate([str(spec), "--out", str(out), "--steps-per-epoch", "3"])
    from harness import spec as ablate
    from harness.sweep import runs as sweep_runs

    ids = {s.run_id for s in sweep_runs.to_runspecs(spec2, ablate.plan(spec2))}
    assert not ids & set(table["run_id"])


def test_identity_covers_code_settings_and_versions(tmp_path, monkeypatch):
    from harness.run.runner import RunSpec
    from qvit.flags import Flags

    settings.code_digest.cache_clear()  # the tree as it is now
    spec = RunSpec("a", Flags.preset("seed"), settings.RunSettings(model="ivit_micro"))
    base = spec.run_id
    assert RunSpec("a", Flags.preset("seed"), settings.RunSettings(model="ivit_micro")
                   ).run_id == base  # deterministic
    assert RunSpec("a", Flags.preset("seed"), settings.RunSettings(
        model="ivit_micro", batch_size=32)).run_id != base
    assert RunSpec("a", Flags.preset("best"), spec.settings).run_id != base
    # a library version
    monkeypatch.setattr(settings, "library_versions", lambda: {"torch": "0.0-other"})
    assert spec.run_id != base
    monkeypatch.undo()
    # a source file of qvit/ or harness/ (committed or not): a copy of the tree, one edit
    import shutil

    for pkg in ("qvit", "harness"):
        shutil.copytree(settings._ROOT / pkg, tmp_path / pkg,
                        ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(settings, "_ROOT", tmp_path)
    settings.code_digest.cache_clear()
    try:
        same = settings.code_digest()
        (tmp_path / "qvit" / "ops" / "requant.py").write_text(
            (tmp_path / "qvit" / "ops" / "requant.py").read_text() + "\n# edited\n")
        settings.code_digest.cache_clear()
        assert settings.code_digest() != same
    finally:
        monkeypatch.undo()
        settings.code_digest.cache_clear()
    assert spec.run_id == base


BOTH = TINY.replace('name = "tiny"', 'name = "both"').replace(
    "repeats = 2", 'repeats = 2\nmethods = ["epochs", "steps"]\nrounds = 2\n'
    'epochs_for = "loop_flags"').replace(
    '{name = "seed", flags = "seed,num_workers=0"}',
    '{name = "frexp", flags = "legacy,num_workers=0,use_frexp=false"},\n'
    '           {name = "host_loss", flags = "legacy,num_workers=0,loss_item_per_step=false"}')


@pytest.mark.slow
def test_both_methods_split_configs_by_where_their_flags_act(tmp_path, monkeypatch):
    monkeypatch.setenv("QVIT_CACHE", str(tmp_path / "cache"))
    spec = tmp_path / "both.toml"
    spec.write_text(BOTH)
    out = tmp_path / "both"
    assert cli.main(["ablate", str(spec), "--out", str(out)]) == 0
    table = records.read_table(out)
    assert set(table["status"]) == {"ok"}
    by = table.groupby("method")["config"].apply(set)
    # a module flag is timed step by step; a loop flag acting around the step by epochs
    assert by["steps"] == {"legacy", "frexp", "A/A"}
    assert by["epochs"] == {"legacy", "host_loss", "A/A"}
    steps = table[table["method"] == "steps"]
    assert (steps.groupby("config").size() == 2 * 2).all()  # 2 sessions x 2 rounds
    assert sorted(steps["block"].unique()) == [0, 1]  # a session is a block
    text = (out / "report.md").read_text()
    assert "interleaved step x" in text and "95% t-CI over 2 blocks" in text
    assert "over 2 sessions, 4 paired rounds" in text and "A/A step ratio, interleaved" in text
