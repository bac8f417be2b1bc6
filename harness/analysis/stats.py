"""Statistics of an ablation table: per config against the design's baseline, and flag effects.

Input is the runner's long table (one row per run x epoch). Failed runs, warm-up epochs and
the first epoch after a resume are dropped; each run is reduced to medians of its measured
epochs (step time: the median of every measured step, pooled); configs are compared with the
baseline *within blocks* (the same repeat, the same training seed, neighbours in time).

Intervals: a ratio is the geometric mean over blocks of baseline / config, with a t interval
on the log ratios (n - 1 degrees of freedom; exact for log-normal noise, and it keeps its
coverage at small n where a percentile bootstrap does not). One block gives no interval
("n/a"). Accuracy differences get a paired t interval and a TOST equivalence verdict at a
stated margin (`harness.analysis.equivalence`).

- `run_level(table)`: one row per run.
- `summarize(table, baseline)`: per (model, config): epoch / train / step / data+loop
  times, speedups with intervals, top-1 and its difference from the baseline, syncs; rows
  of the step-interleaved method (``method == "steps"``) summarized apart (`interleaved`)
  into their own ``*_interleaved`` columns, never paired with epoch runs.
- `effects(table, levels)`: main effects (and two-flag interactions where the design
  resolves them) of coded two-level flags, by least squares on log time with block terms.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Iterable
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats as sps

__all__ = ["TIME_COLUMNS", "measured", "run_level", "ratio_interval", "paired", "summarize",
           "interleaved", "effects", "compile_seconds", "IQR_WARN", "INTERVAL_METHOD"]

# epoch_s: train + eval + plots (what the seed timed); train_s: the training phase;
# step_s: compute of one step (model arithmetic); other_s: train_s minus step compute
# (data loading, loader start-up, loop bookkeeping)
TIME_COLUMNS = ("epoch_s", "train_s", "eval_s", "step_s", "other_s")
IQR_WARN = 0.10  # torch.utils.benchmark warns above 10% IQR/median
INTERVAL_METHOD = "t on log ratios over blocks"


def measured(table: pd.DataFrame) -> pd.DataFrame:
    """Rows that count for timing: status ok, not warm-up, not the first after a resume."""
    t = table[table["status"].fillna("ok") == "ok"]
    for col in ("warmup", "resumed"):
        if col in t:
            t = t[~t[col].fillna(False).astype(bool)]
    return t.copy()


def _pooled_steps(rows: pd.DataFrame) -> float:
    times: list[float] = []
    for text in rows.get("step_times", pd.Series(dtype=str)).dropna():
        if text:
            times += json.loads(text)
    if times:
        return float(np.median(times))
    return float(rows["step_s_median"].median()) if "step_s_median" in rows else np.nan


def run_level(table: pd.DataFrame) -> pd.DataFrame:
    """One row per run: medians of the measured epochs' times, the pooled median step time,
    the last epoch's accuracy, syncs per step (counted epochs, warm-up or not)."""
    t = measured(table).sort_values(["run_id", "epoch"])
    ok = table[table["status"].fillna("ok") == "ok"]
    rows = []
    for run_id, g in t.groupby("run_id", sort=False):
        first = g.iloc[0]
        last = ok[ok["run_id"] == run_id].sort_values("epoch").iloc[-1]
        row = {k: first[k] for k in ("run_id", "model", "config", "block") if k in g}
        row["float_reference"] = bool(first.get("float_reference", False))
        if "compile_model" in g:  # which float reference it is divided by
            row["compile_model"] = bool(first["compile_model"])
        row["n_epochs"] = len(g)
        for col in ("epoch_s", "train_s", "eval_s", "startup_s", "data_s", "plot_s"):
            if col in g:
                row[col] = float(g[col].median())
        if "compute_s" in g and g["compute_s"].notna().any():
            row["other_s"] = float((g["train_s"] - g["compute_s"]).median())
        row["step_s"] = _pooled_steps(g)
        row["n_steps_timed"] = int(sum(len(json.loads(x)) for x in g.get(
            "step_times", pd.Series(dtype=str)).dropna() if x))
        if "other_s" not in row:  # tables without compute_s: the median step for each step
            steps = float(g["steps"].median()) if "steps" in g else np.nan
            row["other_s"] = row.get("train_s", np.nan) - steps * row["step_s"]
        for col in ("top1", "top5", "eval_loss", "train_loss", "eval_images",
                    "pretrained_top1", "deployed_top1", "deployed_agreement"):
            if col in last:
                row[col] = last[col]
        mine = ok[ok["run_id"] == run_id]
        for col in ("syncs_per_step", "cuda_debug_syncs_per_step"):
            if col in mine:
                row[col] = float(mine[col].median())
        if "peak_mem_mb" in g:
            row["peak_mem_mb"] = float(g["peak_mem_mb"].max())
        rows.append(row)
    return pd.DataFrame(rows)


def compile_seconds(table: pd.DataFrame, model: str, config: str) -> str:
    """A config's compile time, "first / later": the seconds of its first block (its runs or
    session; cold where that found inductor's on-disk cache empty) and the median of the
    later blocks' (warm); "" where it compiled nothing."""
    if "compile_s" not in table:
        return ""
    t = table[(table["model"] == model) & (table["config"] == config)]
    per_block = t.groupby("block", sort=True)["compile_s"].sum(min_count=1).dropna()
    if not (per_block > 0).any():
        return ""
    later = per_block.iloc[1:]
    return f"{per_block.iloc[0]:.0f}" + (f" / {later.median():.0f}" if len(later) else "")


def ratio_interval(base: np.ndarray, other: np.ndarray, level: float = 0.95
                   ) -> tuple[float, float, float, int]:
    """Geometric mean of base / other over paired blocks, its t interval on the log scale
    (NaN bounds for fewer than 2 pairs), and n."""
    base, other = np.asarray(base, float), np.asarray(other, float)
    ok = np.isfinite(base) & np.isfinite(other) & (base > 0) & (other > 0)
    logs = np.log(base[ok] / other[ok])
    n = len(logs)
    if n == 0:
        return (np.nan, np.nan, np.nan, 0)
    mean = float(logs.mean())
    if n < 2:
        return (math.exp(mean), np.nan, np.nan, n)
    half = float(sps.t.ppf(0.5 + level / 2, n - 1) * logs.std(ddof=1) / math.sqrt(n))
    return (math.exp(mean), math.exp(mean - half), math.exp(mean + half), n)


def agreement_interval(agree: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """The exact (Clopper-Pearson) interval of an agreement of ``agree`` in ``n`` (e.g.
    equal predictions of two models). ``n`` bounds what it can show: with none differing
    the 95% interval starts at 0.025^(1/n), 99.0% at n = 364; 99.9% needs n >= 3688."""
    ci = sps.binomtest(agree, n).proportion_ci(confidence_level=level, method="exact")
    return ci.low, ci.high


def paired(runs: pd.DataFrame, model: str, config: str, baseline: str, column: str,
           on: tuple[str, ...] = ("block",)) -> pd.DataFrame:
    """Config and baseline rows of one model joined on ``on`` (inner join): runs on their
    block; the interleaved method's steps on (session, round)."""
    r = runs[runs["model"] == model]
    a = r[r["config"] == config][[*on, column]]
    b = r[r["config"] == baseline][[*on, column]]
    return a.merge(b, on=list(on), suffixes=("", "_base")).dropna()


def _iqr_rel(values: Iterable[float]) -> float:
    v = np.asarray(list(values), dtype=float)
    v = v[~np.isnan(v)]
    if len(v) < 2:
        return np.nan
    q1, med, q3 = np.quantile(v, [0.25, 0.5, 0.75])
    return float((q3 - q1) / med) if med > 0 else np.nan


def _speedups(runs: pd.DataFrame, model: str, config: str, baseline: str) -> dict:
    row: dict[str, Any] = {}
    for col in TIME_COLUMNS:
        if col not in runs:
            continue
        name = "speedup" if col == "epoch_s" else f"speedup_{col[:-2]}"
        pairs = paired(runs, model, config, baseline, col)
        r, lo, hi, n = ratio_interval(pairs[f"{col}_base"], pairs[col])
        row.update({name: r, f"{name}_lo": lo, f"{name}_hi": hi})
        if col == "epoch_s":
            row["n_pairs"] = n
    return row


def _accuracy(runs: pd.DataFrame, model: str, config: str, baseline: str, g: pd.DataFrame,
              margin: float) -> dict:
    from harness.analysis.equivalence import tost_paired

    row: dict[str, Any] = {"top1_mean": float(g["top1"].mean()),
                           "top1_std": float(g["top1"].std(ddof=1)) if len(g) > 1 else np.nan}
    pairs = paired(runs, model, config, baseline, "top1")
    diffs = (pairs["top1"] - pairs["top1_base"]).to_numpy(float)
    row["top1_diff"] = float(diffs.mean()) if len(diffs) else np.nan
    row["top1_diff_lo"] = row["top1_diff_hi"] = row["equivalent"] = np.nan
    if len(diffs) >= 2:
        sd = diffs.std(ddof=1)
        half = float(sps.t.ppf(0.975, len(diffs) - 1) * sd / math.sqrt(len(diffs)))
        row["top1_diff_lo"], row["top1_diff_hi"] = row["top1_diff"] - half, \
            row["top1_diff"] + half
        p, _ = tost_paired(diffs, margin)
        row["equivalent"] = bool(p < 0.05)
    return row


def _compiled(g: pd.DataFrame) -> bool:
    return bool(g["compile_model"].iloc[0]) if "compile_model" in g else False


def _float_for(t: pd.DataFrame) -> dict[bool | None, str]:
    """The float references of a table keyed by ``compile_model`` (see `_float_of`); under
    None the first one."""
    if "float_reference" not in t or not len(t):
        return {}
    floats = t[t["float_reference"].fillna(False).astype(bool)]
    out: dict[bool | None, str] = {}
    for config, g in floats.groupby("config", sort=False):
        out.setdefault(_compiled(g), config)
        out.setdefault(None, config)
    return out


def _float_of(floats: dict[bool | None, str], g: pd.DataFrame) -> str | None:
    """The float reference a config's rows ``g`` are divided by, like for like: the float
    compiled as the config is, else the only (first) float of the design."""
    return floats.get(_compiled(g), floats.get(None))


def _float_multiple(runs: pd.DataFrame, model: str, config: str, float_config: str) -> dict:
    pairs = paired(runs, model, config, float_config, "step_s")
    r, lo, hi, _ = ratio_interval(pairs["step_s"], pairs["step_s_base"])  # config / float
    return {"float_multiple": r, "float_multiple_lo": lo, "float_multiple_hi": hi}


def summarize(table: pd.DataFrame, baseline: str, *, iqr_warn: float = IQR_WARN,
              float_config: str | None = None, margin: float = 1.0) -> pd.DataFrame:
    """Per (model, config) statistics against ``baseline`` (see the module docstring).

    Speedups are baseline time / config time (> 1: the config is faster); ``float_multiple``
    is config step time / float step time, paired within blocks. ``margin`` is the top-1
    equivalence margin in points.
    """
    if "method" in table and (table["method"] == "steps").any():
        steps = table[table["method"] == "steps"]
        rest = table[table["method"] != "steps"]
        by_epochs = summarize(rest, baseline, iqr_warn=iqr_warn, float_config=float_config,
                              margin=margin) if len(rest) else pd.DataFrame()
        inter = interleaved(steps, baseline)
        if by_epochs.empty:
            return inter
        return by_epochs.merge(inter, on=["model", "config"], how="outer", sort=False)
    epochs = measured(table)
    runs = run_level(table)
    floats = _float_for(runs) if float_config is None else {}
    rows = []
    for (model, config), g in runs.groupby(["model", "config"], sort=False):
        e = epochs[(epochs["model"] == model) & (epochs["config"] == config)]
        row: dict[str, Any] = {"model": model, "config": config, "n_runs": len(g),
                               "n_epochs": int(g["n_epochs"].sum()),
                               "n_steps_timed": int(g["n_steps_timed"].sum())}
        for col in TIME_COLUMNS + ("startup_s", "data_s"):
            if col in g:
                row[f"{col}_median"] = float(g[col].median())
        row["iqr_rel"] = _iqr_rel(e["epoch_s"]) if "epoch_s" in e else np.nan
        row.update(_speedups(runs, model, config, baseline))
        if "top1" in g:
            row.update(_accuracy(runs, model, config, baseline, g, margin))
        for col, how in (("syncs_per_step", "median"), ("cuda_debug_syncs_per_step", "median"),
                         ("peak_mem_mb", "max"),
                         ("eval_images", "median"), ("pretrained_top1", "median"),
                         ("deployed_top1", "mean"), ("deployed_agreement", "min")):
            if col in g:
                row[col] = float(getattr(g[col], how)())
        against = float_config or _float_of(floats, g)
        if against is not None:
            row.update(_float_multiple(runs, model, config, against))
        row["wide_spread"] = bool(row["iqr_rel"] > iqr_warn) if not math.isnan(
            row["iqr_rel"]) else False
        rows.append(row)
    return pd.DataFrame(rows)


def interleaved(table: pd.DataFrame, baseline: str) -> pd.DataFrame:
    """Per (model, config) of the step-interleaved method (rows ``method == "steps"``, one
    per config, session and round): the median step time; the ratio baseline / config,
    paired within rounds, reduced to one geometric mean per session, with its t interval
    over sessions (a session's instances carry their own offsets, so rounds are not
    independent blocks); config / float alike. Kept apart from the epoch method's columns
    (``*_interleaved``)."""
    t = measured(table)
    t = t.assign(step_s=t["compute_s"])
    floats = _float_for(t)
    rows = []
    for (model, config), g in t.groupby(["model", "config"], sort=False):
        row: dict[str, Any] = {"model": model, "config": config,
                               "step_s_interleaved": float(g["step_s"].median()),
                               "n_sessions": int(g["block"].nunique()),
                               "n_rounds": int(len(g))}
        for name, other, inverse in (("speedup_interleaved", baseline, False),
                                     ("float_multiple_interleaved", _float_of(floats, g),
                                      True)):
            if other is None:
                continue
            r, lo, hi = _session_ratio(t, model, config, other, inverse)
            row.update({name: r, f"{name}_lo": lo, f"{name}_hi": hi})
        rows.append(row)
    return pd.DataFrame(rows)


def _session_ratio(t: pd.DataFrame, model: str, config: str, other: str, inverse: bool
                   ) -> tuple[float, float, float]:
    """other / config step time (config / other if ``inverse``): paired within rounds,
    one geometric mean per session, t interval over sessions."""
    pairs = paired(t, model, config, other, "step_s", on=("block", "repeat"))
    if pairs.empty:
        return (np.nan, np.nan, np.nan)
    logs = np.log(pairs["step_s"] / pairs["step_s_base"]) * (1 if inverse else -1)
    per_session = logs.groupby(pairs["block"]).mean().to_numpy()
    ratio, lo, hi, _ = ratio_interval(np.exp(per_session), np.ones_like(per_session))
    return ratio, lo, hi


def _design_matrix(codes: pd.DataFrame, flags: list[str], interactions: bool
                   ) -> tuple[np.ndarray, list[str]]:
    cols = [codes[f].to_numpy(float) for f in flags]
    names = list(flags)
    if interactions:
        for a, b in itertools.combinations(range(len(flags)), 2):
            cols.append(cols[a] * cols[b])
            names.append(f"{flags[a]}:{flags[b]}")
    return np.column_stack(cols) if cols else np.zeros((len(codes), 0)), names


def interactions_resolved(levels: dict[str, dict[str, int]], flags: list[str]) -> bool:
    """True when the distinct design points separate every main effect and two-flag
    interaction (full column rank of [1, mains, 2FIs]); False for screens and res. III/IV."""
    if len(flags) < 2:
        return False
    codes = pd.DataFrame([{f: v[f] for f in flags} for v in levels.values()]).drop_duplicates()
    x, _ = _design_matrix(codes, flags, True)
    x = np.column_stack([np.ones(len(codes)), x])
    return np.linalg.matrix_rank(x) == x.shape[1]


def effects(table: pd.DataFrame, levels: dict[str, dict[str, int]], *,
            responses: tuple[str, ...] = ("epoch_s", "train_s", "eval_s", "top1"),
            interactions: bool | None = None,
            level: float = 0.95) -> pd.DataFrame:
    """Effects of coded two-level flags, per model and response.

    ``levels`` maps config name -> {flag: -1 or +1}; configs not in it (e.g. a baseline
    outside the design) are left out. Times are fit on the log scale with block terms, so an
    effect is a ratio: ``factor`` = time at low / time at high (> 1: the high level is
    faster). ``top1`` is fit on its own scale: ``effect`` = top-1 at high - at low. Intervals
    are t intervals from the residuals of the least-squares fit over all runs.
    """
    if not levels:
        return pd.DataFrame()
    flags = list(next(iter(levels.values())))
    if interactions is None:
        interactions = interactions_resolved(levels, flags)
    runs = run_level(table)
    runs = runs[runs["config"].isin(levels)]
    codes = pd.DataFrame([{"config": c, **v} for c, v in levels.items()])
    runs = runs.merge(codes, on="config")
    out = []
    for model, g in runs.groupby("model", sort=False):
        x, names = _design_matrix(g, flags, interactions)
        blocks = pd.get_dummies(g["block"].astype(str), drop_first=True).to_numpy(float)
        full = np.column_stack([np.ones(len(g)), x, blocks])
        for resp in responses:
            if resp not in g or g[resp].isna().all():
                continue
            y = g[resp].to_numpy(float)
            log = resp != "top1"
            if log:
                y = np.log(y)
            coef, *_ = np.linalg.lstsq(full, y, rcond=None)
            dof = len(y) - np.linalg.matrix_rank(full)
            resid = y - full @ coef
            if dof > 0:
                sigma2 = float(resid @ resid) / dof
                cov = sigma2 * np.linalg.pinv(full.T @ full)
                se = np.sqrt(np.clip(np.diag(cov), 0, None))
                tq = sps.t.ppf(0.5 + level / 2, dof)
            else:
                se = np.full(full.shape[1], np.nan)
                tq = np.nan
            for j, term in enumerate(names, start=1):
                eff, s = 2 * coef[j], 2 * se[j]  # high - low = 2 x coefficient (coded +-1)
                lo, hi = eff - tq * s, eff + tq * s
                p = float(2 * sps.t.sf(abs(eff / s), dof)) if dof > 0 and s > 0 else np.nan
                row = {"model": model, "response": resp, "term": term,
                       "kind": "interaction" if ":" in term else "main",
                       "effect": float(eff), "effect_lo": float(lo), "effect_hi": float(hi),
                       "se": float(s), "p": p, "dof": int(dof), "n_runs": len(y)}
                if log:  # time ratio low / high: > 1 means the high level is faster
                    row.update(factor=float(np.exp(-eff)), factor_lo=float(np.exp(-hi)),
                               factor_hi=float(np.exp(-lo)))
                out.append(row)
    return pd.DataFrame(out)
