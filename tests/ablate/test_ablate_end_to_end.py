"""A tiny spec runs end to end through nox's code path (harness.ablate.main, what
`python -m harness ablate` calls) into a report, then resumes without rerunning."""

import pytest

pytest.importorskip("harness.runner")

from harness import ablate  # noqa: E402

TINY = """
name = "tiny"
description = "two configs, two blocks, micro models"
[run]
models = ["ivit_micro"]
dataset = "digits"
epochs = 2
warmup_epochs = 1
steps_per_epoch = 2
eval_steps = 1
batch_size = 16
repeats = 2
device = "cpu"
[design]
kind = "configs"
baseline = "legacy"
configs = [{name = "legacy", flags = "legacy,num_workers=0"},
           {name = "seed", flags = "seed,num_workers=0"}]
"""


@pytest.mark.slow
def test_tiny_spec_end_to_end(tmp_path, capsys):
    spec = tmp_path / "tiny.toml"
    spec.write_text(TINY)
    out = tmp_path / "results" / "tiny"
    # inline executor: same runner code path, without one process per run (CI time)
    args = [str(spec), "--out", str(out), "--executor", "inline"]
    assert ablate.main(args) == 0
    from harness.report import load_table

    table = load_table(out)
    assert len(table) == 2 * 1 * 2 * 2  # configs x models x blocks x epochs
    assert set(table["status"]) == {"ok"}
    # each block holds every (model, config) once, in the planned (shuffled) order
    runs = table.drop_duplicates("run_id")
    assert sorted(runs.groupby("block").size()) == [2, 2]
    text = (out / "report.md").read_text()
    assert "## Speed and accuracy per config" in text and "fig_epoch_times.png" in text
    assert (out / "summary.csv").is_file() and (out.parent / "README.md").is_file()
    # resume: nothing left to run, the table is unchanged
    assert ablate.main(args) == 0
    assert len(load_table(out)) == len(table)
