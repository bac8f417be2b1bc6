"""Statistics of an ablation table: per config against the design's baseline, and flag effects.

Input is the runner's long table (one row per run x epoch). Warm-up epochs and failed runs
are dropped; each run is reduced to the median of its measured epochs; configs are compared
with the baseline *within blocks* (the same repeat, the same training seed, neighbouring in
time), and intervals come from a seeded bootstrap over blocks.

- `run_level(table)`: one row per run (medians over measured epochs, final accuracy).
- `summarize(table, baseline)`: per (model, config): median train / eval / epoch seconds,
  speedup vs the baseline (geometric mean of paired ratios, bootstrap 95% interval), top-1
  mean / spread and its paired difference from the baseline with an interval, syncs per
  step, timing spread IQR/median and a warning where it is too wide.
- `effects(table, levels)`: main effects (and two-flag interactions where the design
  resolves them) of coded two-level flags, by least squares on log time with block terms.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats as sps

__all__ = ["TIME_COLUMNS", "measured", "run_level", "bootstrap_ci", "paired",
           "summarize", "effects", "synthetic_runs", "IQR_WARN"]

TIME_COLUMNS = ("epoch_s", "train_s", "eval_s")
IQR_WARN = 0.10  # torch.utils.benchmark warns above 10% IQR/median
N_BOOT = 4000


def measured(table: pd.DataFrame, warmup_epochs: int | None = None) -> pd.DataFrame:
    """Rows that count: status ok and not a warm-up epoch (the table's ``warmup`` column,
    else ``epoch < warmup_epochs``)."""
    t = table
    if "status" in t:
        t = t[t["status"].fillna("ok") == "ok"]
    if "warmup" in t:
        t = t[~t["warmup"].astype(bool)]
    elif warmup_epochs:  # epochs may count from 0 or from 1
        t = t[t["epoch"] - t["epoch"].min() >= warmup_epochs]
    t = t.copy()
    t["epoch_s"] = t["train_s"] + t["eval_s"].fillna(0.0)
    return t


def _last(s: pd.Series):
    s = s.dropna()
    return s.iloc[-1] if len(s) else np.nan


def run_level(table: pd.DataFrame, warmup_epochs: int | None = None) -> pd.DataFrame:
    """One row per run: medians of the measured epochs' times, the last epoch's accuracy."""
    t = measured(table, warmup_epochs).sort_values(["run_id", "epoch"])
    agg: dict[str, Any] = {"epoch_s": "median", "train_s": "median", "eval_s": "median",
                           "epoch": "count"}
    optional = {"step_s_median": "median", "syncs_per_step": "median",
                "images_per_s": "median", "peak_mem_mb": "max", "top1": _last,
                "top5": _last, "train_loss": _last, "eval_loss": _last}
    agg.update({k: v for k, v in optional.items() if k in t})
    keys = ["run_id", "model", "config", "block"]
    extra = [c for c in ("float_reference",) if c in t]
    out = t.groupby(keys + extra, dropna=False).agg(agg).reset_index()
    if "syncs_per_step" in table:
        # the runner counts syncs in warm-up epochs only (counting costs time): use every
        # ok epoch that has a count
        ok = table if "status" not in table else table[table["status"].fillna("ok") == "ok"]
        syncs = ok.groupby("run_id")["syncs_per_step"].median()
        out["syncs_per_step"] = out["run_id"].map(syncs)
    return out.rename(columns={"epoch": "n_epochs"})


def bootstrap_ci(values: np.ndarray, stat=np.mean, *, n_boot: int = N_BOOT, level: float = 0.95,
                 seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of ``stat`` over the first axis (resampling blocks)."""
    values = np.asarray(values, dtype=float)
    n = len(values)
    if n == 0:
        return (np.nan, np.nan)
    if n == 1:
        v = float(stat(values))
        return (v, v)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_boot, n))
    boots = np.apply_along_axis(stat, 1, values[idx]) if stat not in (np.mean, np.median) \
        else stat(values[idx], axis=1)
    a = (1 - level) / 2
    lo, hi = np.quantile(boots, [a, 1 - a])
    return (float(lo), float(hi))


def paired(runs: pd.DataFrame, model: str, config: str, baseline: str, column: str
           ) -> pd.DataFrame:
    """Config and baseline runs of one model joined on block (inner join)."""
    r = runs[runs["model"] == model]
    a = r[r["config"] == config][["block", column]]
    b = r[r["config"] == baseline][["block", column]]
    return a.merge(b, on="block", suffixes=("", "_base")).dropna()


def _ratio(pairs: pd.DataFrame, column: str, seed: int) -> tuple[float, float, float]:
    """Geometric mean of baseline / config over blocks, with its bootstrap interval."""
    if pairs.empty:
        return (np.nan, np.nan, np.nan)
    logs = np.log(pairs[f"{column}_base"].to_numpy() / pairs[column].to_numpy())
    lo, hi = bootstrap_ci(logs, np.mean, seed=seed)
    return (float(np.exp(logs.mean())), float(np.exp(lo)), float(np.exp(hi)))


def _iqr_rel(values: Iterable[float]) -> float:
    v = np.asarray(list(values), dtype=float)
    v = v[~np.isnan(v)]
    if len(v) < 2:
        return np.nan
    q1, med, q3 = np.quantile(v, [0.25, 0.5, 0.75])
    return float((q3 - q1) / med) if med > 0 else np.nan


def summarize(table: pd.DataFrame, baseline: str, *, warmup_epochs: int | None = None,
              iqr_warn: float = IQR_WARN, seed: int = 0, float_config: str | None = None
              ) -> pd.DataFrame:
    """Per (model, config) statistics against ``baseline`` (see the module docstring).

    Speedups are baseline time / config time (> 1: the config is faster). With
    ``float_config`` (a float-reference config), ``float_multiple`` is config step time /
    float step time, paired within blocks.
    """
    epochs = measured(table, warmup_epochs)
    runs = run_level(table, warmup_epochs)
    if float_config is None and "float_reference" in runs:
        floats = runs.loc[runs["float_reference"].fillna(False).astype(bool), "config"]
        float_config = floats.iloc[0] if len(floats) else None
    step_col = "step_s_median" if "step_s_median" in runs and \
        runs["step_s_median"].notna().any() else "train_s"
    rows = []
    for (model, config), g in runs.groupby(["model", "config"], sort=False):
        e = epochs[(epochs["model"] == model) & (epochs["config"] == config)]
        row: dict[str, Any] = {"model": model, "config": config, "n_runs": len(g),
                               "n_epochs": int(g["n_epochs"].sum())}
        for col in TIME_COLUMNS:
            row[f"{col}_median"] = float(e[col].median())
        row["step_s_median"] = float(g[step_col].median())
        row["iqr_rel"] = _iqr_rel(e["epoch_s"])
        row["iqr_rel_train"] = _iqr_rel(e["train_s"])
        for col in TIME_COLUMNS:
            name = "speedup" if col == "epoch_s" else f"speedup_{col[:-2]}"
            pairs = paired(runs, model, config, baseline, col)
            row[name], row[f"{name}_lo"], row[f"{name}_hi"] = _ratio(pairs, col, seed)
        row["n_pairs"] = len(paired(runs, model, config, baseline, "epoch_s"))
        if "top1" in g:
            row["top1_mean"] = float(g["top1"].mean())
            row["top1_std"] = float(g["top1"].std(ddof=1)) if len(g) > 1 else np.nan
            pairs = paired(runs, model, config, baseline, "top1")
            diffs = (pairs["top1"] - pairs["top1_base"]).to_numpy()
            row["top1_diff"] = float(diffs.mean()) if len(diffs) else np.nan
            row["top1_diff_lo"], row["top1_diff_hi"] = bootstrap_ci(diffs, np.mean, seed=seed)
        if "syncs_per_step" in g:
            row["syncs_per_step"] = float(g["syncs_per_step"].median())
        if "peak_mem_mb" in g:
            row["peak_mem_mb"] = float(g["peak_mem_mb"].max())
        if float_config is not None:
            pairs = paired(runs, model, config, float_config, step_col)
            inv = _ratio(pairs, step_col, seed)  # float / config; invert to config / float
            row["float_multiple"] = 1 / inv[0] if inv[0] else np.nan
            row["float_multiple_lo"] = 1 / inv[2] if inv[2] else np.nan
            row["float_multiple_hi"] = 1 / inv[1] if inv[1] else np.nan
        row["wide_spread"] = bool(row["iqr_rel"] > iqr_warn) if not math.isnan(
            row["iqr_rel"]) else False
        rows.append(row)
    return pd.DataFrame(rows)


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
            warmup_epochs: int | None = None, interactions: bool | None = None,
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
    runs = run_level(table, warmup_epochs)
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


def synthetic_runs(configs: dict[str, dict[str, Any]], *, models=("ivit_micro",),
                   repeats: int = 4, epochs: int = 3, warmup_epochs: int = 1,
                   base_time: float = 2.0, noise: float = 0.02, drift: float = 0.0,
                   seed: int = 0, eval_share: float = 0.25) -> pd.DataFrame:
    """A runner-shaped table with known effects, for tests and for developing reports.

    ``configs`` maps name -> {"time": multiplier of base_time, "top1": accuracy (percent),
    "flags": qvit.Flags (optional), "syncs": syncs per step, "float_reference": bool}.
    Times get lognormal noise (sd ``noise``), a per-block factor and a linear ``drift`` over
    run order; warm-up epochs are 3x slower.
    """
    rng = np.random.default_rng(seed)
    names = list(configs)
    rows = []
    order_global = 0
    for block in range(repeats):
        block_factor = math.exp(rng.normal(0, noise))
        order = rng.permutation(len(names) * len(models))
        for pos, i in enumerate(order):
            model, name = models[i // len(names)], names[i % len(names)]
            c = configs[name]
            flags = c.get("flags")
            run_id = f"{model}-{name}-r{block}"
            for epoch in range(epochs):
                warm = epoch < warmup_epochs
                t = base_time * c.get("time", 1.0) * block_factor * (1 + drift * order_global)
                t *= math.exp(rng.normal(0, noise)) * (3.0 if warm else 1.0)
                row = {"config": name, "model": model, "dataset": "digits", "repeat": block,
                       "block": block, "order": pos, "seed": block, "epoch": epoch,
                       "warmup": warm, "train_s": t * (1 - eval_share),
                       "eval_s": t * eval_share, "images_per_s": 1000 / t,
                       "step_s_median": t / 20, "peak_mem_mb": 100.0,
                       "syncs_per_step": c.get("syncs", 1.0),
                       "top1": c.get("top1", 80.0) + rng.normal(0, c.get("top1_sd", 0.5)),
                       "top5": 0.99, "train_loss": 0.5, "eval_loss": 0.6, "status": "ok",
                       "error": None, "run_id": run_id,
                       "float_reference": bool(c.get("float_reference", False)),
                       "compile_s": 0.0, "wall_s": t, "git_commit": "synthetic",
                       "git_dirty": False, "torch_version": "synthetic",
                       "timm_version": "", "cuda_version": None,
                       "device_name": "cpu", "cpu_model": "synthetic CPU",
                       "hostname": "synthetic"}
                if flags is not None:
                    row.update(flags.to_dict())
                rows.append(row)
            order_global += 1
    return pd.DataFrame(rows)
