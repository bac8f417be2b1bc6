"""Accuracy parity over a runs table: are two configs equivalent in their final results?

Two ways to say yes, chosen per pair of configs:

- **exact**: the final metric and losses are identical run for run (paired by seed/repeat):
  the test for flags whose training is bit-identical (declared ``exact``);
- **TOST**: two one-sided t-tests (statsmodels' `ttost_paired` where the seeds pair up, Welch's
  `ttost_ind` otherwise): equivalent when the difference lies within +-``margin`` at level
  ``alpha``. "No significant difference" is not evidence of equivalence; too few seeds or too
  wide a spread fail the test.

The table is the one harness sweeps write (`harness.run.runner.run_sweep`, `python -m harness run`,
`python -m harness ablate`): one row per run and epoch with ``config``, ``model``, ``seed``,
``repeat``, ``epoch``, ``status``, the metrics and one column per flag. Use it in your own
pytest::

    from harness.analysis.equivalence import assert_accuracy_parity
    from harness.records import read_table

    def test_best_keeps_accuracy():
        table = read_table("runs/cmp")  # e.g. python -m harness run ... --out runs/cmp
        assert_accuracy_parity(table, "best", "legacy", margin=1.0)  # within one point

The deployed integer model (runs with ``eval_deployed``: `qvit.deploy` evaluated after the
last epoch) is asked about by its config's name with ``:deployed`` appended, its top-1 read
from ``deployed_top1``: ``assert_accuracy_parity(table, "best:deployed", "best")`` asks
whether deployment keeps best's accuracy (paired run for run), ``("best:deployed",
"legacy")`` compares it with another config's QAT eval; ``metric="deployed_top1"``
compares two configs' deployed models.

Top-1 and top-5 are in percent. The default margin, `DEFAULT_MARGIN_PP` = 1.0 point, is
about 3.6 images of the default held-out split (364 digits): small enough to catch a real
loss, large enough that one flipped image is not one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from statsmodels.stats.weightstats import CompareMeans, DescrStatsW, ttost_ind, ttost_paired

from harness.analysis.parity_classes import pair_expectation
from qvit import Flags

__all__ = ["AccuracyParity", "accuracy_parity", "assert_accuracy_parity", "tost_paired",
           "tost_unpaired", "DEFAULT_MARGIN_PP", "DEPLOYED"]

DEFAULT_MARGIN_PP = 1.0  # top-1/top-5 points
DEPLOYED = ":deployed"  # "best:deployed": the deployed integer model of best's runs
_PERCENT_METRICS = ("top1", "top5", "deployed_top1")


@dataclass(frozen=True)
class AccuracyParity:
    """The verdict of `accuracy_parity`: ``equivalent``, and how it was reached."""

    config_a: str
    config_b: str
    metric: str
    method: str  # "exact" | "tost-paired" | "tost-unpaired"
    equivalent: bool
    n: int
    mean_diff: float  # mean of a - b
    margin: float | None
    p_value: float  # TOST p (max of the two one-sided p); 0/1 for the exact check
    ci: tuple[float, float]  # the (1 - 2 alpha) interval of the difference
    detail: str = ""


def _decided(mean: float, margin: float) -> tuple[float, tuple[float, float]]:
    """Differences without spread (identical in every block): equivalent iff inside."""
    return (0.0 if abs(mean) < margin else 1.0), (mean, mean)


def tost_paired(diffs: np.ndarray, margin: float, alpha: float = 0.05
                ) -> tuple[float, tuple[float, float]]:
    """Two one-sided t-tests of H0: |mean diff| >= margin over paired differences
    (statsmodels `ttost_paired`); returns (p, the 1 - 2 alpha confidence interval).
    Differences without spread are decided exactly (p 0 inside the margin, 1 outside); fewer
    than two differences give p = 1 (no evidence)."""
    d = np.asarray(diffs, float)
    if len(d) < 2:
        mean = float(d.mean()) if len(d) else math.nan
        return 1.0, (mean, mean)
    mean = float(d.mean())
    if np.ptp(d) == 0.0:  # every difference the same (std computes a rounding residue)
        return _decided(mean, margin)
    p = ttost_paired(d, np.zeros_like(d), -margin, margin)[0]
    lo, hi = DescrStatsW(d).tconfint_mean(alpha=2 * alpha)
    return float(p), (float(lo), float(hi))


def tost_unpaired(a: np.ndarray, b: np.ndarray, margin: float, alpha: float = 0.05
                  ) -> tuple[float, tuple[float, float]]:
    """Welch TOST of H0: |mean(a) - mean(b)| >= margin (statsmodels `ttost_ind`, unequal
    variances); returns (p, the 1 - 2 alpha interval of mean(a) - mean(b)). Both samples
    without spread are decided exactly; fewer than two values on a side give p = 1."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    if min(len(a), len(b)) < 2:
        mean = float(a.mean() - b.mean()) if len(a) and len(b) else math.nan
        return 1.0, (mean, mean)
    mean = float(a.mean() - b.mean())
    if np.ptp(a) == 0.0 and np.ptp(b) == 0.0:
        return _decided(mean, margin)
    p = ttost_ind(a, b, -margin, margin, usevar="unequal")[0]
    lo, hi = CompareMeans(DescrStatsW(a), DescrStatsW(b)).tconfint_diff(
        alpha=2 * alpha, usevar="unequal")
    return float(p), (float(lo), float(hi))


def _finals(table: pd.DataFrame, config: str, model: str | None) -> pd.DataFrame:
    """The last epoch of every finished run of ``config``, indexed by (model, seed, repeat)."""
    t = table[table["config"] == config]
    if model is not None:
        t = t[t["model"] == model]
    if "status" in t:
        bad = t[t["status"].fillna("ok") != "ok"]
        if len(bad):
            statuses = ", ".join(sorted(map(str, set(bad["status"]))))
            raise ValueError(f"config {config!r} has failed runs ({statuses}); "
                             f"accuracy parity needs finished runs")
    if not len(t):
        raise ValueError(f"no runs of config {config!r}"
                         + (f" for model {model!r}" if model else "")
                         + f"; configs in the table: {sorted(set(table['config']))}")
    keys = [k for k in ("model", "seed", "repeat") if k in t]
    return t.sort_values("epoch").groupby(keys, dropna=False).tail(1).set_index(keys)


def _deployed_side(finals: pd.DataFrame, config: str, metric: str) -> pd.DataFrame:
    """``finals`` with ``metric`` read from the deployed model's column."""
    if metric != "top1":
        raise ValueError(f"{config}{DEPLOYED}: the deployed model records top-1 only "
                         f"(deployed_top1), not {metric!r}; ask metric='top1'")
    return _with_values(finals.assign(top1=finals.get("deployed_top1", np.nan)),
                        f"{config}{DEPLOYED}", "top1")


def _with_values(finals: pd.DataFrame, label: str, metric: str) -> pd.DataFrame:
    if metric in finals and finals[metric].isna().all():
        raise ValueError(f"{label} has no {metric} in the table: the deployed model is "
                         "evaluated by runs with eval_deployed (--eval-deployed), of "
                         "quantized configs only")
    return finals


def _differing_flags(table: pd.DataFrame, a: str, b: str) -> dict[str, tuple]:
    out = {}
    for name in Flags.names():
        if name not in table:
            continue
        va = set(table.loc[table["config"] == a, name])
        vb = set(table.loc[table["config"] == b, name])
        if len(va) == 1 and len(vb) == 1 and va != vb:
            out[name] = (next(iter(va)), next(iter(vb)))
    return out


def _exact(fa: pd.DataFrame, fb: pd.DataFrame, config_a: str, config_b: str, metric: str,
           losses: tuple[str, ...]) -> AccuracyParity:
    common = fa.index.intersection(fb.index)
    if len(common) == 0:
        raise ValueError(f"exact parity pairs runs by seed/repeat; {config_a!r} and "
                         f"{config_b!r} share none")
    bad = []
    for c in [metric] + [c for c in losses if c in fa and c != metric]:
        x, y = fa.loc[common, c].to_numpy(float), fb.loc[common, c].to_numpy(float)
        same = (x == y) | (np.isnan(x) & np.isnan(y))
        if not same.all():
            i = int(np.argmax(~same))
            run = ", ".join(f"{k}={v}" for k, v in zip(common.names, np.atleast_1d(common[i]),
                                                       strict=True))
            bad.append(f"{c}: {float(x[i])!r} vs {float(y[i])!r} ({run})")
    d = fa.loc[common, metric].to_numpy(float) - fb.loc[common, metric].to_numpy(float)
    return AccuracyParity(config_a, config_b, metric, "exact", not bad, len(common),
                          float(np.nanmean(d)), None, 0.0 if not bad else 1.0,
                          (float(np.nanmin(d)), float(np.nanmax(d))), "; ".join(bad))


def _tost(fa: pd.DataFrame, fb: pd.DataFrame, config_a: str, config_b: str, metric: str,
          margin: float | None, alpha: float) -> AccuracyParity:
    if margin is None or not margin > 0:
        raise ValueError("an equivalence test needs margin > 0 (the largest difference in "
                         f"{metric} you accept as equivalent, e.g. 0.01 for one point)")
    common = fa.index.intersection(fb.index)
    if len(common) >= 2:
        d = fa.loc[common, metric].to_numpy(float) - fb.loc[common, metric].to_numpy(float)
        p, ci = tost_paired(d, margin, alpha)
        method, n, mean = "tost-paired", len(common), float(d.mean())
    else:
        xa, xb = fa[metric].to_numpy(float), fb[metric].to_numpy(float)
        if min(len(xa), len(xb)) < 2:
            raise ValueError("an equivalence test needs at least two seeds per config")
        p, ci = tost_unpaired(xa, xb, margin, alpha)
        method, n, mean = "tost-unpaired", min(len(xa), len(xb)), float(xa.mean() - xb.mean())
    return AccuracyParity(config_a, config_b, metric, method, p < alpha, n, mean, margin, p,
                          ci, f"{1 - 2 * alpha:.0%} CI of {metric} difference "
                              f"[{ci[0]:.4g}, {ci[1]:.4g}] vs margin +-{margin:g}")


def _side(config: str) -> tuple[str, bool]:
    """("best", True) for "best:deployed"; (config, False) otherwise."""
    if config.endswith(DEPLOYED):
        return config[: -len(DEPLOYED)], True
    return config, False


def accuracy_parity(table: pd.DataFrame, config_a: str, config_b: str, *,
                    metric: str = "top1", margin: float | None = None, alpha: float = 0.05,
                    exact: bool | None = None, model: str | None = None,
                    losses: tuple[str, ...] = ("eval_loss",)) -> AccuracyParity:
    """Are configs ``a`` and ``b`` of a runs table equivalent in final ``metric``?

    ``exact=True``: the final ``metric`` and ``losses`` must be identical run for run (paired
    by seed/repeat): the test for flags whose training is bit-identical. The default losses
    leave out ``train_loss``, an epoch mean whose summation is itself a loop flag
    (``loss_item_per_step``: on the device in float32 vs in Python); pass it to include it.
    ``exact=False``: a TOST equivalence test over seeds (paired where the seeds match, Welch
    otherwise): equivalent when the difference lies within +-``margin`` at level ``alpha``;
    "no significant difference" is not evidence of equivalence. ``exact=None`` picks exact
    when every flag the two configs differ in is declared ``exact``. A config named
    ``NAME:deployed`` (`DEPLOYED`) is NAME's deployed integer model (its ``deployed_top1``).
    """
    (name_a, dep_a), (name_b, dep_b) = _side(config_a), _side(config_b)
    fa, fb = _finals(table, name_a, model), _finals(table, name_b, model)
    if dep_a or dep_b:  # the deployed eval records no loss
        fa = _deployed_side(fa, name_a, metric) if dep_a else fa
        fb = _deployed_side(fb, name_b, metric) if dep_b else fb
        losses = ()
    elif metric.startswith("deployed_"):
        fa, fb = _with_values(fa, name_a, metric), _with_values(fb, name_b, metric)
    if margin is None and metric in _PERCENT_METRICS:
        margin = DEFAULT_MARGIN_PP
    if exact is None:
        diff = _differing_flags(table, name_a, name_b)
        exact = bool(diff) and all(pair_expectation(n, *v) == "exact" for n, v in diff.items())
    if metric not in fa:
        raise ValueError(f"metric {metric!r} not in the table; columns: {list(fa.columns)}")
    if exact:
        return _exact(fa, fb, config_a, config_b, metric, losses)
    return _tost(fa, fb, config_a, config_b, metric, margin, alpha)


def assert_accuracy_parity(table: pd.DataFrame, config_a: str, config_b: str, *,
                           metric: str = "top1", margin: float | None = None,
                           alpha: float = 0.05, exact: bool | None = None,
                           model: str | None = None, losses: tuple[str, ...] = ("eval_loss",)
                           ) -> AccuracyParity:
    """Assert that configs ``config_a`` and ``config_b`` of a runs table are equivalent in
    their final ``metric``; return the verdict (`AccuracyParity`) when they are.

    ``table``: a harness results table (`harness.records.read_table(folder)`), several seeds
    per config for a TOST. ``margin``: the largest difference of ``metric`` you accept as
    equivalent, in the metric's units (top-1 is in percent: 1.0 is one point, the default
    for top-1/top-5, `DEFAULT_MARGIN_PP`); required for other metrics unless the check is
    exact. ``exact``: True demands identical final results run for run,
    False a TOST at level ``alpha``, None (default) exact where every flag the two configs
    differ in is declared ``exact`` (`qvit.flags`). ``model``: restrict to one model of the
    table. See `accuracy_parity` for ``losses``. ``config_a`` or ``config_b`` named
    ``NAME:deployed``: NAME's deployed integer model (runs with ``eval_deployed``), e.g.
    ``assert_accuracy_parity(table, "best:deployed", "best", exact=True)``: its top-1
    equals the QAT eval's run for run.

    Raises AssertionError when not equivalent, with the numbers: the differing values for the
    exact check; p, n, the mean difference and the confidence interval against the margin for
    a TOST. Raises ValueError for a table it cannot judge (a config missing, failed runs, no
    margin for a TOST, fewer than two seeds). Example::

        table = harness.records.read_table("runs/cmp")
        r = assert_accuracy_parity(table, "best", "legacy")  # +-1 top-1 point
        print(r.method, r.p_value, r.ci)  # e.g. tost-paired 0.003 (-0.4, 0.6)
    """
    r = accuracy_parity(table, config_a, config_b, metric=metric, margin=margin, alpha=alpha,
                        exact=exact, model=model, losses=losses)
    if r.equivalent:
        return r
    if r.method == "exact":
        raise AssertionError(f"{config_a} vs {config_b}: final results not identical over "
                             f"{r.n} paired runs ({r.detail})")
    raise AssertionError(f"{config_a} vs {config_b}: {metric} not shown equivalent within "
                         f"+-{r.margin:g} (TOST p={r.p_value:.3g} >= alpha {alpha}, n={r.n}, "
                         f"mean diff {r.mean_diff:.4g}; {r.detail})")
