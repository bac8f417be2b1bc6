"""``harness compare A B``: B / A ratios with intervals and verdicts on committed reference
folders; a folder against itself is the same everywhere; rows of another machine or other
run settings are refused; a planted 20% slowdown fails ``--fail-slower 5%``, a planted 2%
change does not; a table's rows split by git revision."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from harness import records
from harness.analysis import compare as cmp
from harness.cli import main

ROOT = Path(__file__).resolve().parents[3]
RESULTS = ROOT / "results"
MICRO = RESULTS / "cpu-xeon-2c" / "speed_micro"  # step-interleaved, 5 sessions, an A/A control
TIME_COLUMNS = ("epoch_s", "train_s", "eval_s", "compute_s", "data_s", "startup_s",
                "step_s_median")


def _compare(a, b):
    return cmp.compare(cmp.load_side(str(a), str(b)), cmp.load_side(str(b), str(a)))


def _planted(src: Path, dst: Path, factor: float, noise: float = 0.02, seed: int = 1,
             commit: str | None = None) -> Path:
    """A copy of ``src`` whose every time is ``factor`` times as long, with independent
    log-normal noise (sd ``noise``) per row so the intervals have a width; ``commit``: also
    recorded under that git commit (new run ids), beside the original rows."""
    if not dst.exists():
        shutil.copytree(src, dst)
    t = records.read_table(src)
    rng = np.random.default_rng(seed)
    scale = factor * np.exp(rng.normal(0.0, noise, len(t)))
    for col in TIME_COLUMNS:
        t[col] = t[col] * scale
    t["step_times"] = [json.dumps([x * s for x in json.loads(v)]) if v else v
                       for v, s in zip(t["step_times"], scale, strict=True)]
    if commit is None:
        (dst / records.TABLE).unlink()
        (dst / records.CSV).unlink()
    else:
        t["git_commit"] = commit
        t["run_id"] = t["run_id"] + "-" + commit[:6]
    records.append_rows(dst, t.to_dict("records"))
    return dst


def test_a_folder_against_itself_is_the_same_everywhere(capsys):
    result = _compare(MICRO, MICRO)
    ratios = [c for c in cmp.METRICS if c in result]
    assert ratios == ["interleaved step"]  # the step method only in this folder
    assert (result["verdict"] == "same").all()
    assert (result["interleaved step"] == 1.0).all()
    assert (result["interleaved step_n"] == 5).all()
    assert main(["compare", str(MICRO), str(MICRO), "--fail-slower", "0%"]) == 0
    out = capsys.readouterr().out
    assert out.count("| same |") == len(result) == 10  # 2 models x 5 configs


@pytest.mark.slow
def test_two_committed_folders_of_one_machine_and_settings(tmp_path):
    """The seed timeline and the `best` design: measured alike at other commits; configs
    both hold are compared, one whose flags differ under the same name says so."""
    out = tmp_path / "cmp.md"
    epyc = RESULTS / "cpu-epyc-2c"
    assert main(["compare", str(epyc / "seed_timeline"), str(epyc / "best"),
                 "--out", str(out)]) == 0
    result = _compare(epyc / "seed_timeline", epyc / "best")
    assert set(result["config"]) == {"legacy", "seed", "A/A"}
    for name in ("epoch", "step"):
        assert result[f"{name}_verdict"].isin(cmp.VERDICTS).all()
        assert ((result[f"{name}_lo"] <= result[name]) &
                (result[name] <= result[f"{name}_hi"])).all()
        assert (result[f"{name}_n"] == 5).all()
    legacy = result[result["config"] == "legacy"]
    assert (legacy["note"] == "").all() and legacy["top1_equivalent"].all()
    aa = result[result["config"] == "A/A"]  # the baseline again: legacy vs seed here
    assert aa["note"].str.startswith("flags differ: ").all()
    text = out.read_text()
    assert "| ivit_micro | legacy |" in text and "![B / A" in text
    assert out.with_suffix(".png").is_file()


@pytest.mark.parametrize("a,b,differ", [
    ("cpu-xeon-2c/speed_compiled_micro", "cpu-epyc-2c/speed_compiled_micro",
     ["device_name", "cpu_model"]),
    ("cpu-xeon-2c/speed_micro", "cpu-xeon-2c/speed_micro_malloc_retain",
     ["setting malloc_retain False vs True"]),
])
def test_rows_measured_unlike_are_refused_naming_what_differs(capsys, a, b, differ):
    assert main(["compare", str(RESULTS / a), str(RESULTS / b)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not measured alike" in err and "Traceback" not in err
    for what in differ:
        assert what in err


@pytest.mark.slow
def test_a_planted_slowdown_fails_the_check_and_a_small_change_does_not(tmp_path, capsys):
    slow = _planted(MICRO, tmp_path / "slow", 1.20)
    assert main(["compare", str(MICRO), str(slow), "--fail-slower", "5%"]) == 1
    err = capsys.readouterr().err
    assert err.count("slower: ") == 10, err  # every model x config
    result = _compare(MICRO, slow)
    assert (result["interleaved step_lo"] > 1.15).all()
    assert (result["verdict"] == "slower").all()

    small = _planted(MICRO, tmp_path / "small", 1.02)
    assert main(["compare", str(MICRO), str(small), "--fail-slower", "5%"]) == 0
    assert "slower: " not in capsys.readouterr().err
    faster = _compare(slow, MICRO)  # the other way round
    assert (faster["verdict"] == "faster").all()


@pytest.mark.slow
def test_rows_of_two_revisions_in_one_table(tmp_path, capsys):
    folder = _planted(MICRO, tmp_path / "two", 1.20, commit="f" * 40)
    old = records.read_table(MICRO)["git_commit"].iloc[0]
    assert main(["compare", f"{folder}@{old[:8]}", f"{folder}@ffffff",
                 "--fail-slower", "5%"]) == 1
    capsys.readouterr()
    assert main(["compare", old[:8], f"{folder}@ffffff", "--fail-slower", "5%"]) == 1
    capsys.readouterr()
    assert main(["compare", f"{folder}@0123", str(folder)]) == 2
    err = capsys.readouterr().err
    assert "revision '0123' is not one of the commits" in err and old[:12] in err
    assert cmp.parse_percent("5%") == cmp.parse_percent("5") == cmp.parse_percent("0.05")
