"""Reports build from tables alone (nox -s report) for every design: the A/A control, time
attribution, intervals labelled with their n, flags that cannot act here, rows of other
identities left out, and nothing written outside the report's folder."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from harness import spec as ablate
from harness.analysis import report
from harness.records.files import write_design
from harness.spec import AA_CONTROL
from harness.sweep import runs as sweep_runs

from .synthetic import synthetic_runs, synthetic_steps

ROOT = Path(__file__).resolve().parents[3]


def fake_results(folder, spec_name, *, parity=False, repeats=5, times=None, noise=0.02):
    spec = ablate.load_spec(ROOT / "ablations" / f"{spec_name}.toml").replace(repeats=repeats)
    configs = ablate.design_configs(spec)
    rng = np.random.default_rng(0)
    times = times or {}
    cfg = {c.name: {"time": times.get(c.name, 1.0 if i == 0 or c.name == AA_CONTROL else
                                      float(np.exp(-rng.uniform(0, 0.6)))),
                    "top1": 95.0, "flags": c.flags, "syncs": float(i % 3),
                    "float_reference": c.float_reference} for i, c in enumerate(configs)}
    st = spec.settings
    by_epochs = {c.name for c in ablate.epoch_configs(spec, configs)}
    t = synthetic_runs({k: v for k, v in cfg.items() if k in by_epochs}, models=spec.models,
                       repeats=repeats, epochs=st.epochs, warmup_epochs=st.warmup_epochs,
                       noise=noise)
    if "steps" in spec.methods:  # the configs of its interleaved sessions
        inner = {c.config for x in sweep_runs.sessions_of(spec, configs) for c in x.specs}
        t = pd.concat([t, synthetic_steps({k: v for k, v in cfg.items() if k in inner},
                                          models=spec.models, sessions=repeats,
                                          rounds=spec.rounds, noise=noise)],
                      ignore_index=True)
    folder.mkdir(parents=True, exist_ok=True)
    write_design(spec, configs, sorted(set(t["run_id"])), folder)
    t.to_csv(folder / "runs.csv", index=False)
    if parity:
        pd.DataFrame({"model": ["ivit_micro"] * 2, "flag": ["use_frexp", "inline_ste"],
                      "from_value": [True, False], "to_value": [False, True],
                      "measured_class": ["near-exact", "exact"],
                      "expected_class": ["near-exact", "exact"]}).to_csv(
            folder / "parity.csv", index=False)
    return spec, configs, t


@pytest.mark.parametrize("name,figs", [
    ("seed_timeline", ["fig_timeline.png"]),
    ("one_at_a_time", ["fig_flag_speedup.png"]),
    ("factorial_caches", ["fig_effects.png"]),
])
def test_report_per_design(tmp_path, name, figs):
    folder = tmp_path / name
    fake_results(folder, name, parity=name == "one_at_a_time")
    text = report.build_report(folder).read_text()
    for fig in figs + ["fig_times.png", "fig_accuracy_vs_speed.png"]:
        assert (folder / fig).stat().st_size > 1000 and f"({fig})" in text
    for section in ("## Key findings", "## Reliability: the A/A null control",
                    "## Speed per config: where the time goes", "## Accuracy", "## Method"):
        assert section in text
    assert "95% t-CI over 5 blocks" in text and "chance 10%" in text and "364 images" in text
    summary = pd.read_csv(folder / "summary.csv")
    assert {"speedup", "speedup_lo", "speedup_hi", "speedup_step", "speedup_other",
            "top1_diff", "equivalent", "iqr_rel"} <= set(summary)
    assert AA_CONTROL in set(summary["config"])
    if name == "seed_timeline":
        assert "| stage1 | 2,3 | 20 | 1.90 |" in text
        assert "timeline epoch ratios 1.00 ->" in text
    if name == "one_at_a_time":
        assert "measured_class" in text and "largest epoch effect" in text
        # a CPU cannot show an effect of torch.cuda.synchronize: not timed, said why
        row = [ln for ln in text.splitlines() if "| +cuda_synchronize_per_step |" in ln][0]
        assert "no effect possible with these flags" in row and "CUDA only" in row
        assert "| cuda_synchronize_per_step |" not in text  # no ratio of noise for it
    if name == "factorial_caches":
        assert "interaction" in pd.read_csv(folder / "effects.csv")["kind"].tolist()
    assert len(list(folder.iterdir())) <= 40


def test_an_aa_interval_excluding_one_marks_the_report_unreliable(tmp_path):
    folder = tmp_path / "t"
    fake_results(folder, "seed_timeline", times={AA_CONTROL: 0.8}, noise=0.01)
    text = report.build_report(folder, figures=False).read_text()
    assert "**UNRELIABLE**" in text and "UNRELIABLE: A/A interval excludes 1" in text
    ok = tmp_path / "ok"
    fake_results(ok, "seed_timeline", noise=0.01)
    assert "UNRELIABLE" not in report.build_report(ok, figures=False).read_text()


def test_one_block_is_reported_without_an_interval(tmp_path):
    folder = tmp_path / "t"
    spec, configs, t = fake_results(folder, "seed_timeline", repeats=2)
    t = t[t["block"] == 0]
    t.to_csv(folder / "runs.csv", index=False)
    text = report.build_report(folder, figures=False).read_text()
    assert "[n/a]" in text and "no interval: 1 block" in text and "one block only" in text


def test_rows_of_other_identities_are_never_pooled(tmp_path):
    folder = tmp_path / "t"
    spec, configs, t = fake_results(folder, "seed_timeline", noise=0.0)
    stale = t.copy()
    stale["run_id"] = stale["run_id"] + "-older-code"
    stale["epoch_s"] *= 10
    pd.concat([t, stale]).to_csv(folder / "runs.csv", index=False)
    text = report.build_report(folder, figures=False).read_text()
    summary = pd.read_csv(folder / "summary.csv")
    assert (summary["n_runs"] == 5).all()  # 5 blocks, not 10: the stale rows are not used
    assert f"{len(stale)} rows in this folder's table belong to runs of other" in text


def test_report_writes_only_inside_its_folder(tmp_path):
    (tmp_path / "README.md").write_text("the user's own readme\n")
    fake_results(tmp_path / "mine", "seed_timeline")
    assert report.main([str(tmp_path / "mine"), "--no-figures"]) == 0
    assert (tmp_path / "README.md").read_text() == "the user's own readme\n"
    assert report.main([str(tmp_path / "mine"), "--index", str(tmp_path / "idx")]) == 2


def test_index_of_a_named_results_root(tmp_path):
    fake_results(tmp_path / "seed_timeline", "seed_timeline")
    fake_results(tmp_path / "screen", "screen")
    args = [str(tmp_path / "seed_timeline"), str(tmp_path / "screen"), "--index",
            str(tmp_path), "--no-figures"]
    assert report.main(args) == 0
    index = (tmp_path / "README.md").read_text()
    assert "(seed_timeline/report.md)" in index and "(screen/report.md)" in index
    assert "Main effects only" in (tmp_path / "screen" / "report.md").read_text()


def test_index_alone_rebuilds_only_the_index(tmp_path, capsys):
    """`report --index ROOT` with no folders (as the module's docstring shows) writes the
    index and rebuilds no report; with neither, one usage line."""
    fake_results(tmp_path / "seed_timeline", "seed_timeline")
    assert report.main([str(tmp_path / "seed_timeline"), "--no-figures"]) == 0
    built = (tmp_path / "seed_timeline" / "report.md").stat().st_mtime_ns
    assert report.main(["--index", str(tmp_path)]) == 0
    assert "(seed_timeline/report.md)" in (tmp_path / "README.md").read_text()
    assert (tmp_path / "seed_timeline" / "report.md").stat().st_mtime_ns == built
    with pytest.raises(SystemExit):
        report.main([])
    assert "--index ROOT" in capsys.readouterr().err


def test_index_never_overwrites_a_readme_it_did_not_write(tmp_path, capsys):
    """A results root with the user's own README.md: refused in one line, the file kept;
    the harness's own index is rewritten."""
    fake_results(tmp_path / "seed_timeline", "seed_timeline")
    (tmp_path / "README.md").write_text("# my project\n")
    args = [str(tmp_path / "seed_timeline"), "--index", str(tmp_path), "--no-figures"]
    assert report.main(args) == 2
    err = capsys.readouterr().err
    assert "is not an index the harness wrote" in err and err.count("\n") == 1
    assert (tmp_path / "README.md").read_text() == "# my project\n"
    (tmp_path / "README.md").unlink()
    assert report.main(args) == 0 and report.main(args) == 0  # its own index: rewritten
    assert "(seed_timeline/report.md)" in (tmp_path / "README.md").read_text()


def test_index_finds_reports_tables_and_notes_at_any_depth(tmp_path):
    """results/<machine>/<report>/ (and deeper) all reach the index, not only one level."""
    fake_results(tmp_path / "cpu-a" / "seed_timeline", "seed_timeline")
    fake_results(tmp_path / "cpu-b" / "speed" / "screen", "screen")
    (tmp_path / "cpu-a" / "parity" / "ivit_micro").mkdir(parents=True)
    (tmp_path / "cpu-a" / "parity" / "ivit_micro" / "parity.csv").write_text("model\n")
    (tmp_path / "NOTES.md").write_text("# notes\n")
    args = [str(tmp_path / "cpu-a" / "seed_timeline"), str(tmp_path / "cpu-b" / "speed" /
            "screen"), "--index", str(tmp_path), "--no-figures"]
    assert report.main(args) == 0
    index = (tmp_path / "README.md").read_text()
    for link in ("cpu-a/seed_timeline/report.md", "cpu-b/speed/screen/report.md",
                 "cpu-a/parity/ivit_micro/parity.csv", "NOTES.md"):
        assert f"({link})" in index, link
    assert "(README.md)" not in index and "seed_timeline/report.md)" in index


def test_report_of_a_folder_without_a_design_says_what_it_needs(tmp_path, capsys):
    assert report.main([str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "has no design.json" in err and "Traceback" not in err and err.count("\n") == 1


def test_md_table_escapes_pipes():
    assert "a\\|b" in report.md_table(pd.DataFrame({"x": ["a|b"]}))


def test_committed_reference_is_shown_beside_and_labelled(tmp_path):
    import json

    ref, here = tmp_path / "reference", tmp_path / "here"
    fake_results(ref, "best")
    fake_results(here, "best", noise=0.03)
    meta = json.loads((here / "design.json").read_text())
    meta["report"]["compare_with"] = str(ref)
    (here / "design.json").write_text(json.dumps(meta))
    text = report.build_report(here, figures=False).read_text()
    section = text.split("## Beside the committed reference results", 1)[1].split("\n## ")[0]
    assert "not on this machine" in section and "at commit synthetic" in section
    assert "epoch x (reference)" in section and "interleaved step x (reference)" in section
    assert section.count("| ivit_micro |") == 5  # seed, legacy, best, float, A/A
    meta["report"]["compare_with"] = str(here)  # a folder is not its own reference
    (here / "design.json").write_text(json.dumps(meta))
    assert "Beside the committed" not in report.build_report(here, figures=False).read_text()


def test_reference_link_resolves_from_wherever_the_report_lies(tmp_path, monkeypatch):
    """compare_with names a folder from the working directory; the link is relative to the
    report's own folder, so a report at results/<machine>/<name>/ links right (it once
    assumed runs/<name>/, one level deep)."""
    import json

    monkeypatch.chdir(tmp_path)
    fake_results(tmp_path / "results" / "ref-machine" / "best", "best")
    here = tmp_path / "results" / "other-machine" / "best"
    fake_results(here, "best", noise=0.03)
    meta = json.loads((here / "design.json").read_text())
    meta["report"]["compare_with"] = "results/ref-machine/best"
    (here / "design.json").write_text(json.dumps(meta))
    text = report.build_report(here, figures=False).read_text()
    link = text.split("[results/ref-machine/best](", 1)[1].split(")", 1)[0]
    assert (here / link / "design.json").is_file(), link


def _aa_limit(t: pd.DataFrame, model: str, measure: str, baseline: str = "legacy"
             ) -> float:
    """The A/A interval's half-width as a percentage, from the runs table alone: per block,
    the baseline's measured value over the A/A control's, t on the log ratios over blocks
    (interleaved: per round, one mean per session, t over sessions)."""
    import json
    import math

    from scipy import stats as sps

    t = t[(t["model"] == model) & ~t["warmup"]]
    if measure == "interleaved step":
        t = t[t["method"] == "steps"].set_index(["block", "repeat", "config"])["compute_s"]
        logs = np.log(t.xs(baseline, level="config") / t.xs(AA_CONTROL, level="config"))
        logs = logs.groupby(level="block").mean()
    else:
        t = t[t["method"] == "epochs"]
        value = t["epoch_s"] if measure == "epoch" else \
            t["step_times"].map(lambda s: float(np.median(json.loads(s))))
        per_block = value.groupby([t["config"], t["block"]]).median()
        logs = np.log(per_block[baseline] / per_block[AA_CONTROL])
    n = len(logs)
    return math.expm1(sps.t.ppf(0.975, n - 1) * logs.std(ddof=1) / math.sqrt(n))


@pytest.mark.parametrize("name", ["seed_timeline", "best"])
def test_detection_limit_is_the_aa_half_width(tmp_path, name):
    import json

    folder = tmp_path / name
    _, _, t = fake_results(folder, name, noise=0.03)
    text = report.build_report(folder, figures=False).read_text()
    limits = json.loads((folder / "report.json").read_text())["detection_limits"]
    baseline = json.loads((folder / "design.json").read_text())["baseline"]
    measures = ["epoch", "step"] + (["interleaved step"] if name == "best" else [])
    assert set(limits) == set(t["model"])
    for model, by_measure in limits.items():
        assert list(by_measure) == measures
        for measure in measures:
            expected = _aa_limit(t, model, measure, baseline)
            assert by_measure[measure] == pytest.approx(expected, abs=1e-4)
            assert f"+-{expected:.1%}" in text.split("**Detection limit**")[1]
    assert "no effect larger than this here" in text


def test_a_detection_limit_above_ten_percent_is_warned(tmp_path):
    import json

    noisy, quiet = tmp_path / "noisy", tmp_path / "quiet"
    _, _, t = fake_results(noisy, "seed_timeline", noise=0.15)
    fake_results(quiet, "seed_timeline", noise=0.005)
    assert report.main([str(noisy), str(quiet), "--no-figures", "--index", str(tmp_path)]) == 0
    text = (noisy / "report.md").read_text()
    worst = max(_aa_limit(t, "ivit_micro", m) for m in ("epoch", "step"))
    assert worst > 0.10 and "**NOISY**: the detection limit is above 10%" in text
    findings = json.loads((noisy / "report.json").read_text())["findings"]
    assert findings[0].startswith("NOISY: detection limit above 10% on ivit_micro")
    calm = (quiet / "report.md").read_text()
    assert "**Detection limit**" in calm and "NOISY" not in calm
    assert "detection limit epoch" in calm and "%, step " in calm
    assert not any("(!)" in f for f in json.loads((quiet / "report.json").read_text())["findings"])
    index = {ln.split("](")[1].split("/")[0]: ln for ln in
             (tmp_path / "README.md").read_text().splitlines() if "/report.md)" in ln}
    assert "(!)" in index["noisy"] and "(!)" not in index["quiet"] and "epoch " in index["quiet"]


def test_setup_says_what_a_run_costs_from_its_recorded_columns(tmp_path):
    folder = tmp_path / "t"
    _, _, t = fake_results(folder, "seed_timeline")
    old = report.build_report(folder, figures=False).read_text()
    assert "| a run costs | median per run: set-up not recorded, warm-up" in old
    t["setup_s"] = np.where(t["warmup"], 0.5, np.nan)  # on the first row of each run
    t.to_csv(folder / "runs.csv", index=False)
    (folder / "runs.parquet").unlink(missing_ok=True)
    text = report.build_report(folder, figures=False).read_text()
    row = [ln for ln in text.splitlines() if ln.startswith("| a run costs |")][0]
    runs = t.groupby("run_id")
    warm = runs.apply(lambda g: g.loc[g["warmup"], "epoch_s"].sum()).median()
    meas = runs.apply(lambda g: g.loc[~g["warmup"], "epoch_s"].sum()).median()
    ev = runs.apply(lambda g: g.loc[~g["warmup"], "eval_s"].sum()).median()
    assert (f"set-up 0.50 s, warm-up {warm:.2f} s, measured {meas:.2f} s (of which eval "
            f"{ev:.2f} s); {t['run_id'].nunique()} runs") in row
    assert "1 warm-up, not measured: 10 steps, eval of 364 images" in text
