"""harness.analysis.equivalence: TOST over seeds (statsmodels) and exact identity on a results
table; zero-variance differences, a clear pass, a clear fail and the messages a user reads."""

import math

import numpy as np
import pandas as pd
import pytest

from harness.analysis.equivalence import (
    accuracy_parity,
    assert_accuracy_parity,
    tost_paired,
    tost_unpaired,
)


def _table(finals: dict[str, list[float]]) -> pd.DataFrame:
    """A harness-shaped table: per config one run per seed, two epochs, the last one final."""
    rows = [dict(config=cfg, model="m", seed=seed, repeat=0, epoch=epoch,
                 top1=v if epoch == 2 else 0.1, eval_loss=1.0 - v, status="ok")
            for cfg, vals in finals.items() for seed, v in enumerate(vals) for epoch in (1, 2)]
    return pd.DataFrame(rows)


@pytest.mark.parametrize("shift, equivalent", [(0.0, True), (0.005, True), (0.02, False),
                                                (-0.03, False)])
def test_zero_variance_is_decided_by_the_mean(shift, equivalent):
    d = np.full(4, shift)
    p, (lo, hi) = tost_paired(d, margin=0.01)
    assert p == (0.0 if equivalent else 1.0) and lo == hi == pytest.approx(shift)
    p, (lo, hi) = tost_unpaired(np.full(3, 0.8 + shift), np.full(3, 0.8), margin=0.01)
    assert p == (0.0 if equivalent else 1.0) and lo == hi == pytest.approx(shift)
    r = accuracy_parity(_table({"a": list(0.8 + d), "b": [0.8] * 4}), "a", "b",
                        margin=0.01, exact=False)
    assert r.equivalent is equivalent and not math.isnan(r.p_value)
    assert not any(math.isnan(c) for c in r.ci)


def test_identical_results_in_every_block_are_equivalent():
    t = _table({"a": [0.81, 0.79, 0.80], "b": [0.81, 0.79, 0.80]})
    r = assert_accuracy_parity(t, "a", "b", margin=0.01, exact=False)
    assert r.method == "tost-paired" and r.p_value == 0.0 and r.ci == (0.0, 0.0)
    assert assert_accuracy_parity(t, "a", "b", exact=True).method == "exact"


def test_clear_pass():
    rng = np.random.default_rng(0)
    a = 0.80 + rng.normal(0, 0.01, 8)
    t = _table({"a": list(a), "b": list(a + rng.normal(0, 0.002, 8))})
    r = assert_accuracy_parity(t, "a", "b", margin=0.01)
    assert r.equivalent and r.method == "tost-paired" and r.n == 8
    assert r.p_value < 1e-3 and -0.01 < r.ci[0] <= r.mean_diff <= r.ci[1] < 0.01
    lo, hi = r.ci
    p, ci = tost_paired(np.asarray(a) - (t[(t.config == "b") & (t.epoch == 2)].top1.to_numpy()),
                        0.01)
    assert p == r.p_value and ci == (lo, hi)


def test_clear_fail_and_its_message():
    t = _table({"a": [0.80, 0.82, 0.79, 0.81], "b": [0.70, 0.71, 0.69, 0.72]})
    r = accuracy_parity(t, "a", "b", margin=0.02, exact=False)
    assert not r.equivalent and r.p_value > 0.5 and r.ci[0] > 0.02
    with pytest.raises(AssertionError) as e:
        assert_accuracy_parity(t, "a", "b", margin=0.02, exact=False)
    msg = str(e.value)
    for part in ("a vs b", "top1 not shown equivalent within +-0.02", "TOST p=",
                 ">= alpha 0.05", "n=4", f"mean diff {r.mean_diff:.4g}",
                 f"[{r.ci[0]:.4g}, {r.ci[1]:.4g}]"):
        assert part in msg, (part, msg)


def test_exact_failure_names_the_differing_values():
    t = _table({"a": [0.8, 0.9], "b": [0.8, 0.85]})
    with pytest.raises(AssertionError, match=r"not identical over 2 paired runs .*top1: "
                                             r"0\.9 vs 0\.85"):
        assert_accuracy_parity(t, "a", "b", exact=True)


def test_what_cannot_be_judged_is_a_value_error():
    t = _table({"a": [0.8, 0.9], "b": [0.8, 0.85]})
    with pytest.raises(ValueError, match="margin > 0"):  # no default margin for a loss
        accuracy_parity(t, "a", "b", metric="eval_loss", exact=False)
    assert accuracy_parity(t, "a", "b", exact=False).margin == 1.0  # top-1: one point
    with pytest.raises(ValueError, match="no runs of config 'c'"):
        accuracy_parity(t, "a", "c", margin=0.1)
    one = _table({"a": [0.8], "b": [0.8]})
    with pytest.raises(ValueError, match="at least two seeds"):
        accuracy_parity(one.assign(seed=[0, 0, 1, 1]), "a", "b", margin=0.1, exact=False)
    failed = t.copy()
    failed.loc[failed["config"] == "b", "status"] = "nan"
    with pytest.raises(ValueError, match="failed runs"):
        accuracy_parity(failed, "a", "b", margin=0.1)
    p, _ = tost_paired(np.array([0.0]), 0.1)  # one difference: no evidence
    assert p == 1.0
