"""Reports build from tables alone (nox -s report) for every design, with figures."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from harness import ablate, report, stats

ROOT = Path(__file__).resolve().parents[2]


def fake_results(folder, spec_name, *, parity=False):
    spec = ablate.load_spec(ROOT / "ablations" / f"{spec_name}.toml")
    spec = spec.replace(repeats=3)
    configs = ablate.design_configs(spec)
    rng = np.random.default_rng(0)
    cfg = {c.name: {"time": 1.0 if i == 0 else float(np.exp(-rng.uniform(0, 0.6))),
                    "top1": 80.0, "flags": c.flags, "syncs": float(i % 3),
                    "float_reference": c.float_reference} for i, c in enumerate(configs)}
    t = stats.synthetic_runs(cfg, models=spec.models, repeats=3, epochs=spec.epochs,
                             warmup_epochs=spec.warmup_epochs)
    ablate.write_design(spec, configs, folder)
    t.to_csv(folder / "runs.csv", index=False)
    if parity:
        pd.DataFrame({"flag": ["use_frexp", "inline_ste"], "from_value": [True, False],
                      "to_value": [False, True], "measured_class": ["near-exact", "exact"],
                      "expected_class": ["near-exact", "exact"]}).to_csv(
            folder / "parity.csv", index=False)
    return spec, configs


@pytest.mark.parametrize("name,figs", [
    ("seed_timeline", ["fig_timeline.png"]),
    ("one_at_a_time", ["fig_flag_speedup.png"]),
    ("factorial_caches", ["fig_effects.png"]),
])
def test_report_per_design(tmp_path, name, figs):
    folder = tmp_path / name
    fake_results(folder, name, parity=name == "one_at_a_time")
    path = report.build_report(folder)
    text = path.read_text()
    for fig in figs + ["fig_epoch_times.png", "fig_syncs.png", "fig_accuracy_vs_speed.png"]:
        assert (folder / fig).stat().st_size > 1000 and f"({fig})" in text
    assert "## Key findings" in text and "## Speed and accuracy per config" in text
    summary = pd.read_csv(folder / "summary.csv")
    assert {"speedup", "speedup_lo", "speedup_hi", "top1_diff", "iqr_rel"} <= set(summary)
    if name == "seed_timeline":
        assert "| stage1 | 2,3 | 20 | 1.90 |" in text
        assert "timeline ratios 1.00 ->" in text
    if name == "one_at_a_time":
        assert "measured_class" in text and "flags with the largest effect" in text
    if name == "factorial_caches":
        assert "interaction" in pd.read_csv(folder / "effects.csv")["kind"].tolist()


def test_report_main_rebuilds_all_and_writes_the_index(tmp_path):
    fake_results(tmp_path / "seed_timeline", "seed_timeline")
    fake_results(tmp_path / "screen", "screen")
    assert report.main([str(tmp_path)]) == 0
    index = (tmp_path / "README.md").read_text()
    assert "(seed_timeline/report.md)" in index and "(screen/report.md)" in index
    assert "main effects only" in (tmp_path / "screen" / "report.md").read_text()


def test_report_of_a_folder_without_a_table_fails_clearly(tmp_path):
    with pytest.raises(ValueError, match="no runs.parquet or runs.csv"):
        report.build_report(tmp_path)


def test_md_table_escapes_pipes():
    assert "a\\|b" in report.md_table(pd.DataFrame({"x": ["a|b"]}))
