"""The committed reports rebuild from their tables to the same figures (what `nox -s report`
does): a copy of a committed report folder, rebuilt, gives the same report.json (key findings,
provenance) and the same table rows of report.md as committed."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from harness.analysis import report

ROOT = Path(__file__).resolve().parents[3]
RESULTS = ROOT / "results"
TABLE_FILES = ("runs.parquet", "runs.csv", "design.json", "spec.toml")


def table_rows(text: str) -> list[str]:
    """The rows of every Markdown table (the figures; the prose around them may change)."""
    return [line for line in text.splitlines() if line.startswith("|")]


@pytest.mark.parametrize("name", ["cpu-epyc-2c/best", "cpu-xeon-2c/speed_micro"])
def test_committed_report_rebuilds_to_the_same_figures(tmp_path, name):
    committed = RESULTS / name
    folder = tmp_path / Path(name).name
    folder.mkdir()
    for f in TABLE_FILES:  # the tables alone: nothing of the committed report is reused
        if (committed / f).is_file():
            shutil.copy(committed / f, folder / f)
    report.build_report(folder, figures=False)
    assert json.loads((folder / "report.json").read_text()) == json.loads(
        (committed / "report.json").read_text())
    assert table_rows((folder / "report.md").read_text()) == table_rows(
        (committed / "report.md").read_text())


def test_every_committed_report_sits_at_results_machine_report():
    """One level for every report: results/<machine>/<report>/ (the index finds them)."""
    folders = [p.parent.relative_to(RESULTS) for p in RESULTS.rglob("design.json")]
    assert folders and all(len(f.parts) == 2 for f in folders), folders
    index = (RESULTS / "README.md").read_text()
    for f in folders:
        assert f"({f.as_posix()}/report.md)" in index, f
