"""The statistics recover known effects from synthetic tables shaped like the runner's."""

import itertools
import json
import math

import numpy as np
import pandas as pd
import pytest

from harness.analysis import stats

from .synthetic import synthetic_runs, synthetic_steps


def table(configs, **kw):
    kw.setdefault("repeats", 6)
    return synthetic_runs(configs, **kw)


def test_speedup_and_accuracy_difference_recover_known_values():
    cfg = {"base": {"time": 1.0, "top1": 80.0}, "fast": {"time": 0.5, "top1": 80.0},
           "worse": {"time": 0.8, "top1": 70.0}}
    s = stats.summarize(table(cfg, models=("m1", "m2"), drift=0.002), "base").set_index(
        ["model", "config"])
    for m in ("m1", "m2"):
        fast, worse, base = s.loc[(m, "fast")], s.loc[(m, "worse")], s.loc[(m, "base")]
        assert fast["speedup_lo"] <= 2.0 <= fast["speedup_hi"]
        assert abs(fast["speedup"] - 2.0) < 0.05 and abs(worse["speedup"] - 1.25) < 0.04
        assert worse["top1_diff_hi"] < -5 and abs(worse["top1_diff"] + 10) < 2
        assert not worse["equivalent"]
        assert base["speedup"] == 1.0 and base["top1_diff"] == 0.0
        assert math.isclose(fast["train_s_median"] / fast["eval_s_median"], 3.0, rel_tol=1e-6)
        assert abs(fast["speedup_train"] - 2.0) < 0.05


def test_step_time_and_the_rest_are_attributed_apart():
    # "loader": the epoch is 2x faster but the step compute is unchanged: all of the gain is
    # data+loop; "arith": the step is 2x faster, the epoch only by what the step is of it
    cfg = {"base": {"time": 1.0}, "loader": {"time": 0.6, "step": 1.0},
           "arith": {"time": 0.8, "step": 0.5}}
    s = stats.summarize(table(cfg, noise=0.001), "base").set_index("config")
    assert s.loc["loader", "speedup_step"] == pytest.approx(1.0, rel=0.01)
    assert s.loc["loader", "speedup_other"] == pytest.approx(5.0, rel=0.05)
    assert s.loc["arith", "speedup_step"] == pytest.approx(2.0, rel=0.01)
    assert s.loc["arith", "speedup"] == pytest.approx(1.25, rel=0.01)


def test_step_time_pools_every_measured_step():
    t = table({"base": {}}, repeats=1, epochs=4, warmup_epochs=1, steps=10)
    runs = stats.run_level(t)
    assert runs["n_steps_timed"].iloc[0] == 30  # 3 measured epochs x 10 steps
    pooled = np.median(sum((json.loads(x) for x in t[~t["warmup"]]["step_times"]), []))
    assert runs["step_s"].iloc[0] == pytest.approx(pooled)


def test_warmup_and_resumed_epochs_are_excluded():
    cfg = {"base": {"time": 1.0}, "b": {"time": 1.0}}
    t = table(cfg, noise=0.0, epochs=4, warmup_epochs=2)
    runs = stats.run_level(t)
    assert (runs["n_epochs"] == 2).all()
    assert np.allclose(runs["epoch_s"], 2.0)  # warm-up epochs are 3x slower
    t.loc[t["epoch"] == 3, "resumed"] = True
    t.loc[t["epoch"] == 3, "epoch_s"] = 99.0
    assert np.allclose(stats.run_level(t)["epoch_s"], 2.0)


def test_failed_runs_are_dropped_and_pairing_follows_blocks():
    cfg = {"base": {"time": 1.0}, "b": {"time": 0.5}}
    t = table(cfg, noise=0.0, repeats=3)
    t.loc[(t["config"] == "b") & (t["block"] == 0), "status"] = "oom"
    s = stats.summarize(t, "base").set_index("config")
    assert s.loc["b", "n_runs"] == 2 and s.loc["b", "n_pairs"] == 2
    assert s.loc["b", "speedup"] == pytest.approx(2.0)


def test_one_block_has_no_interval():
    r, lo, hi, n = stats.ratio_interval(np.array([2.0]), np.array([1.0]))
    assert (r, n) == (2.0, 1) and math.isnan(lo) and math.isnan(hi)
    s = stats.summarize(table({"a": {}, "b": {"time": 0.5}}, repeats=1), "a")
    assert s["speedup_lo"].isna().all()


@pytest.mark.parametrize("n", [3, 5, 8])
def test_interval_reaches_its_nominal_coverage(n):
    """A 95% interval must cover the true ratio in >= 90% of simulated designs at small n
    (the percentile bootstrap over 3 blocks covered ~74%)."""
    rng = np.random.default_rng(n)
    true, sims, hits = 1.3, 2000, 0
    for _ in range(sims):
        block = np.exp(rng.normal(0, 0.2, n))  # drift shared by both configs of a block
        base = block * np.exp(rng.normal(0, 0.05, n))
        other = block / true * np.exp(rng.normal(0, 0.05, n))
        _, lo, hi, _ = stats.ratio_interval(base, other)
        hits += lo <= true <= hi
    assert hits / sims >= 0.93


def test_wide_timing_spread_is_flagged():
    cfg = {"base": {"time": 1.0}, "noisy": {"time": 1.0}}
    quiet = stats.summarize(table(cfg, noise=0.01), "base")
    loud = stats.summarize(table(cfg, noise=0.3), "base")
    assert not quiet["wide_spread"].any()
    assert loud["wide_spread"].all() and (loud["iqr_rel"] > 0.1).all()


def test_float_reference_multiple():
    cfg = {"seed": {"time": 1.0}, "best": {"time": 0.5},
           "float": {"time": 0.1, "float_reference": True}}
    s = stats.summarize(table(cfg, noise=0.0), "seed").set_index("config")
    assert s.loc["seed", "float_multiple"] == pytest.approx(10.0)
    assert s.loc["best", "float_multiple"] == pytest.approx(5.0)


def test_compiled_configs_are_divided_by_the_compiled_float():
    """Like for like: with a float reference compiled and one not, a compiled config's
    '/ float' is against the compiled float, an eager one's against the eager float (both
    methods); the first float listed is not the float of every config."""
    from qvit import Flags

    eager, compiled = Flags.preset("best"), Flags.preset("best").replace(compile_model=True)
    cfg = {"best": {"step": 1.0, "time": 1.0, "flags": eager},
           "best_compiled": {"step": 0.5, "time": 0.5, "flags": compiled},
           "float": {"step": 0.25, "time": 0.25, "float_reference": True, "flags": eager},
           "float_compiled": {"step": 0.1, "time": 0.1, "float_reference": True,
                              "flags": compiled}}
    for t in (table(cfg, noise=0.0), synthetic_steps(cfg, noise=0.0)):
        s = stats.summarize(t, "best").set_index("config")
        col = "float_multiple" if "float_multiple" in s else "float_multiple_interleaved"
        assert s.loc["best", col] == pytest.approx(4.0)
        assert s.loc["best_compiled", col] == pytest.approx(5.0)
        assert s.loc["float_compiled", col] == pytest.approx(1.0)


def test_identical_accuracy_is_equivalent_not_nan():
    cfg = {"base": {"top1": 90.0, "top1_sd": 0.0}, "same": {"top1": 90.0, "top1_sd": 0.0}}
    s = stats.summarize(table(cfg), "base").set_index("config")
    assert s.loc["same", "top1_diff"] == 0.0 and bool(s.loc["same", "equivalent"])


def _factorial(true, inter, flags, top1_flag):
    levels, cfg = {}, {}
    for bits in itertools.product((-1, 1), repeat=len(flags)):
        lv = dict(zip(flags, bits, strict=False))
        t = math.prod(true[f] for f in flags if lv[f] > 0)
        if lv[flags[0]] > 0 and lv[flags[1]] > 0:
            t *= inter
        name = "f" + "".join("1" if b > 0 else "0" for b in bits)
        levels[name] = lv
        cfg[name] = {"time": t, "top1": 80.0 + (5.0 if lv[top1_flag] > 0 else 0.0)}
    return levels, cfg


def test_factorial_main_effects_and_interaction_are_recovered():
    flags = ["A", "B", "C"]
    true = {"A": 0.7, "B": 0.9, "C": 1.0}
    levels, cfg = _factorial(true, 1.2, flags, "C")
    e = stats.effects(table(cfg, repeats=4, noise=0.01), levels).set_index(["response",
                                                                            "term"])
    # main effect (averaged over the other flags) on log time; interaction half of log 1.2
    exp_a = -(math.log(0.7) + 0.5 * math.log(1.2))
    exp_b = -(math.log(0.9) + 0.5 * math.log(1.2))
    for term, want in (("A", exp_a), ("B", exp_b), ("C", 0.0)):
        r = e.loc[("epoch_s", term)]
        assert abs(-r["effect"] - want) < 3 * r["se"], term  # within 3 standard errors
        assert r["factor_lo"] < r["factor"] < r["factor_hi"]
    assert e.loc[("epoch_s", "A"), "p"] < 1e-6 and e.loc[("epoch_s", "C"), "p"] > 1e-3
    ab = e.loc[("epoch_s", "A:B")]
    assert abs(ab["effect"] - 0.5 * math.log(1.2)) < 3 * ab["se"] and ab["p"] < 1e-3
    assert e.loc[("epoch_s", "A:C"), "p"] > 1e-3
    c = e.loc[("top1", "C")]
    assert abs(c["effect"] - 5.0) < 3 * c["se"] and c["p"] < 1e-3


def test_screen_estimates_main_effects_only():
    import pyDOE3

    flags = [f"x{i}" for i in range(7)]
    true = dict(zip(flags, (0.6, 1.0, 0.85, 1.0, 1.0, 1.1, 1.0), strict=False))
    m = pyDOE3.pbdesign(len(flags))
    levels, cfg = {}, {}
    for i, row in enumerate(m):
        lv = {f: int(v) for f, v in zip(flags, row, strict=False)}
        levels[f"pb{i}"] = lv
        cfg[f"pb{i}"] = {"time": math.prod(true[f] for f in flags if lv[f] > 0)}
    assert not stats.interactions_resolved(levels, flags)
    e = stats.effects(table(cfg, repeats=3, noise=0.01), levels, responses=("epoch_s",))
    assert set(e["kind"]) == {"main"}
    e = e.set_index("term")
    for f, v in true.items():
        assert abs(e.loc[f, "effect"] - math.log(v)) < 3 * e.loc[f, "se"], f
    ranked = e["effect"].abs().sort_values(ascending=False).index[:3].tolist()
    assert ranked == ["x0", "x2", "x5"]


def test_summary_is_a_plain_table():
    s = stats.summarize(table({"a": {}, "b": {}}), "a")
    assert isinstance(s, pd.DataFrame) and len(s) == 2


def test_interleaved_rounds_are_summarized_apart_from_epoch_blocks():
    # the epochs method sees "fast" 2x faster per step; the interleaved sessions 1.25x.
    # Sessions are numbered 0..4 like blocks 0..5: pooling them would pair two methods' rows.
    cfg = {"base": {"time": 1.0}, "fast": {"time": 0.5}, "float": {"time": 0.25,
                                                                   "float_reference": True}}
    epochs = table(cfg, noise=0.001)
    steps = synthetic_steps({"base": {"step": 1.0}, "fast": {"step": 0.8},
                             "float": {"step": 0.4, "float_reference": True}},
                            sessions=5, rounds=6, noise=0.001)
    s = stats.summarize(pd.concat([epochs, steps], ignore_index=True), "base").set_index(
        "config")
    alone = stats.summarize(epochs, "base").set_index("config")
    for col in ("speedup", "speedup_step", "n_pairs", "n_runs", "step_s_median"):
        assert s.loc["fast", col] == pytest.approx(alone.loc["fast", col])
    assert s.loc["fast", "n_pairs"] == 6
    assert s.loc["fast", "n_sessions"] == 5 and s.loc["fast", "n_rounds"] == 30
    assert s.loc["fast", "speedup_interleaved"] == pytest.approx(1.25, rel=0.01)
    assert s.loc["fast", "speedup_interleaved_lo"] < 1.25 < s.loc["fast",
                                                                  "speedup_interleaved_hi"]
    assert s.loc["fast", "float_multiple_interleaved"] == pytest.approx(2.0, rel=0.01)
    only_steps = stats.summarize(steps, "base").set_index("config")
    assert "speedup" not in only_steps and only_steps.loc["fast", "n_sessions"] == 5


def test_interleaved_interval_covers_instance_offsets():
    # Two instances of one config differ by a lasting offset (memory placement): an A/A pair
    # whose rounds all share it. Intervals over sessions keep their coverage; intervals over
    # the rounds of one session (the method before) exclude 1 most of the time.
    hits, one_session_hits = 0, 0
    for seed in range(200):
        steps = synthetic_steps({"base": {}, "A/A": {}}, sessions=5, rounds=6, noise=0.01,
                                instance_sd=0.02, seed=seed)
        r = stats.interleaved(steps, "base").set_index("config").loc["A/A"]
        hits += r["speedup_interleaved_lo"] <= 1 <= r["speedup_interleaved_hi"]
        one = steps[steps["block"] == 0].assign(block=lambda d: d["repeat"])  # rounds as blocks
        q = stats.interleaved(one, "base").set_index("config").loc["A/A"]
        one_session_hits += q["speedup_interleaved_lo"] <= 1 <= q["speedup_interleaved_hi"]
    assert hits / 200 >= 0.90
    assert one_session_hits / 200 < 0.6


def test_compile_seconds_are_the_first_block_and_the_later_median():
    """A config's compile time in a report: its first block's seconds (cold where the cache
    was empty) and the median of the later blocks' (warm); nothing for an eager config."""
    t = pd.DataFrame({"model": "m", "block": [0, 0, 1, 2, 3, 0, 1],
                      "config": ["c"] * 5 + ["e"] * 2,
                      "compile_s": [90.0, 10.0, 4.0, 6.0, 30.0, 0.0, 0.0]})
    assert stats.compile_seconds(t, "m", "c") == "100 / 6"
    assert stats.compile_seconds(t, "m", "e") == ""
    assert stats.compile_seconds(t.drop(columns="compile_s"), "m", "c") == ""


def test_agreement_interval_is_exact_and_bounds_what_n_images_show():
    """Clopper-Pearson: 2 of 364 differing (the committed deploy report) reads 99.45%
    [98.03, 99.93]; with none differing, 364 images show no more than 0.025^(1/364) ~
    99.0%, and 99.9% needs 3688."""
    lo, hi = stats.agreement_interval(362, 364)
    assert (round(100 * lo, 2), round(100 * hi, 2)) == (98.03, 99.93)
    lo, hi = stats.agreement_interval(364, 364)
    assert hi == 1.0 and lo == pytest.approx(0.025 ** (1 / 364))
    assert stats.agreement_interval(3688, 3688)[0] >= 0.999
    assert stats.agreement_interval(3687, 3687)[0] < 0.999
