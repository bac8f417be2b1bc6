"""Reports of ablation runs: results/<name>/report.md with tables and seaborn figures.

`build_report(folder)` reads the runner's table (``runs.parquet`` or ``runs.csv``), the
design the ablation saved (``design.json``) and, when present, the parity table
(``parity.csv``); it writes ``summary.csv`` (per model x config statistics),
``effects.csv`` (factorial / fractional designs), the figures ``fig_*.png``, ``report.md``
and ``report.json`` (the key findings, for the index). `write_index(results)` writes
``results/README.md`` listing every report. ``python -m harness report DIR...`` does both.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from harness import stats
from harness.ablate import SEED_MINUTES, read_design

__all__ = ["load_table", "build_report", "write_index", "main", "md_table"]

FIG_DPI = 110


# --- inputs -----------------------------------------------------------------------------------


# the parity columns a report shows (parity.csv keeps them all)
PARITY_SHOWN = ("model", "flag", "from_value", "to_value", "expected_class", "measured_class",
                "match", "forward_max_steps", "forward_frac_differ", "grad_rel_diff",
                "params_equal_after_k", "deployment_frac_differ")

def load_table(folder: str | Path) -> pd.DataFrame:
    """The runner's long table in ``folder`` (parquet preferred, csv otherwise)."""
    folder = Path(folder)
    if (folder / "runs.parquet").is_file():
        return pd.read_parquet(folder / "runs.parquet")
    if (folder / "runs.csv").is_file():
        return pd.read_csv(folder / "runs.csv")
    raise ValueError(f"no runs.parquet or runs.csv in {str(folder)!r}")


def _has_table(folder: Path) -> bool:
    return (folder / "runs.parquet").is_file() or (folder / "runs.csv").is_file()


def _design(folder: Path, table: pd.DataFrame) -> dict[str, Any]:
    meta = read_design(folder)
    if meta is not None:
        return meta
    configs = list(dict.fromkeys(table["config"]))
    base = "legacy" if "legacy" in configs else configs[0]
    return {"name": folder.name, "kind": "configs", "baseline": base, "configs": [],
            "models": list(dict.fromkeys(table["model"])), "title": None,
            "description": "", "reference_minutes": None, "iqr_warn": stats.IQR_WARN}


# --- formatting -------------------------------------------------------------------------------

def _fmt(v: Any, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else ""
    if isinstance(v, (float, np.floating)):
        return f"{v:.{digits}g}" if abs(v) < 1e4 else f"{v:.0f}"
    return str(v).replace("|", "\\|")


def md_table(df: pd.DataFrame, digits: int = 3) -> str:
    """A GitHub-flavoured markdown table (no tabulate dependency)."""
    if df.empty:
        return "_(empty)_\n"
    cols = [str(c) for c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for row in df.itertuples(index=False):
        lines.append("| " + " | ".join(_fmt(v, digits) for v in row) + " |")
    return "\n".join(lines) + "\n"


def _ci(v: float, lo: float, hi: float, fmt: str = "{:.2f}", suffix: str = "") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    text = fmt.format(v) + suffix
    if not (math.isnan(lo) or math.isnan(hi)):
        text += f" [{fmt.format(lo)}, {fmt.format(hi)}]"
    return text


def _mean_sd(m: float, sd: float) -> str:
    if m is None or math.isnan(m):
        return ""
    return f"{m:.1f}" + ("" if sd is None or math.isnan(sd) else f" ({sd:.1f})")


def _pp(v: float) -> str:  # top-1 percentage points (the runner records top-1 in percent)
    return "" if v is None or math.isnan(v) else f"{v:+.1f}"


# --- figures ----------------------------------------------------------------------------------

def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    sns.set_theme(style="whitegrid", context="notebook")
    return plt, sns


def _plain_log_x(ax) -> None:
    """Log x axis labelled 0.8, 1, 1.5 ... instead of 10^0 with offsets."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 1.2, 1.5, 2.0, 3.0, 5.0, 7.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())


def _save(fig, path: Path) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=FIG_DPI)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path.name


def _fig_timeline(summary, order, reference, label, path):
    plt, sns = _plt()
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    x = np.arange(len(order))
    palette = sns.color_palette("deep")
    models = list(dict.fromkeys(summary["model"]))
    for i, model in enumerate(models):
        s = summary[summary["model"] == model].set_index("config").reindex(order)
        y = s["speedup"].to_numpy(float)
        err = np.vstack([y - s["speedup_lo"].to_numpy(float), s["speedup_hi"].to_numpy(float) - y])
        ax.errorbar(x + (i - (len(models) - 1) / 2) * 0.08, y, yerr=np.abs(err), marker="o",
                    capsize=3, color=palette[i], label=f"{model} (measured, 95% CI)")
    if reference is not None:
        ref = reference[0] / np.asarray(reference, float)
        ax.plot(x[:len(ref)], ref, "k--", marker="s", label=label)
        for xi, (m, r) in enumerate(zip(reference, ref, strict=False)):
            ax.annotate(f"{m:g} min", (xi, r), textcoords="offset points", xytext=(4, 6),
                        fontsize=8)
    ax.axhline(1.0, color="grey", lw=0.8)
    ax.set_xticks(x, order)
    ax.set_ylabel("epoch speedup vs legacy (x)")
    ax.set_title("Seed timeline: cumulative stages")
    ax.legend(fontsize=8)
    return _save(fig, path)


def _fig_flag_speedup(per_flag, path, xlabel):
    plt, sns = _plt()
    models = list(dict.fromkeys(per_flag["model"]))
    order = (per_flag.groupby("flag")["flag_speedup"].apply(lambda s: np.exp(np.log(s).mean()))
             .sort_values(ascending=False).index.tolist())
    fig, ax = plt.subplots(figsize=(7.5, (0.22 + 0.12 * len(models)) * len(order) + 1.5))
    palette = sns.color_palette("deep")
    for i, model in enumerate(models):
        s = per_flag[per_flag["model"] == model].set_index("flag").reindex(order)
        y = np.arange(len(order)) + (i - (len(models) - 1) / 2) * 0.3
        v = s["flag_speedup"].to_numpy(float)
        err = np.abs(np.vstack([v - s["flag_speedup_lo"].to_numpy(float),
                                s["flag_speedup_hi"].to_numpy(float) - v]))
        ax.errorbar(v, y, xerr=err, fmt="o", capsize=3, color=palette[i], label=model)
    ax.axvline(1.0, color="grey", lw=0.8)
    ax.set_yticks(np.arange(len(order)), order)
    ax.invert_yaxis()
    _plain_log_x(ax)
    ax.set_xlabel(xlabel)
    ax.set_title("Per-flag epoch speedup (95% bootstrap CI over blocks)")
    ax.legend(fontsize=8)
    return _save(fig, path)


def _fig_acc_vs_speed(summary, baseline, path):
    plt, sns = _plt()
    s = summary[summary["config"] != baseline]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    sns.scatterplot(data=s, x="speedup", y=s["top1_diff"], hue="model", style="model",
                    ax=ax, s=60)
    xerr = np.abs(np.vstack([s["speedup"] - s["speedup_lo"], s["speedup_hi"] - s["speedup"]]))
    yerr = np.abs(np.vstack([s["top1_diff"] - s["top1_diff_lo"],
                             s["top1_diff_hi"] - s["top1_diff"]]))
    ax.errorbar(s["speedup"], s["top1_diff"], xerr=xerr, yerr=yerr, fmt="none",
                ecolor="grey", alpha=0.5, lw=0.8)
    if len(s) <= 30:
        for _, r in s.iterrows():
            ax.annotate(r["config"], (r["speedup"], r["top1_diff"]), fontsize=7,
                        textcoords="offset points", xytext=(3, 3))
    ax.axhline(0, color="grey", lw=0.8)
    ax.axvline(1, color="grey", lw=0.8)
    ax.set_xlabel(f"epoch speedup vs {baseline} (x)")
    ax.set_ylabel(f"top-1 difference vs {baseline} (points)")
    ax.set_title("Accuracy difference vs speedup (95% CIs)")
    return _save(fig, path)


def _fig_epoch_times(epochs, order, path):
    plt, sns = _plt()
    long = epochs.melt(id_vars=["model", "config"], value_vars=["train_s", "eval_s"],
                       var_name="phase", value_name="seconds")
    long["phase"] = long["phase"].str.replace("_s", "", regex=False)
    import warnings

    with warnings.catch_warnings():  # seaborn 0.13 passes matplotlib's deprecated `vert`
        warnings.simplefilter("ignore", DeprecationWarning)
        g = sns.catplot(data=long, x="seconds", y="config", hue="model", col="phase",
                        kind="box", order=order, sharex=False,
                        height=max(3.0, 0.3 * len(order) + 1.2), aspect=1.1, fliersize=2)
    g.set_titles("{col_name} epoch time (measured epochs)")
    path = Path(path)
    g.figure.savefig(path, dpi=FIG_DPI, bbox_inches="tight")
    import matplotlib.pyplot as mpl

    mpl.close(g.figure)
    return path.name


def _fig_syncs(summary, order, path):
    plt, sns = _plt()
    fig, ax = plt.subplots(figsize=(7, 0.28 * len(order) + 1.6))
    sns.barplot(data=summary, x="syncs_per_step", y="config", hue="model", order=order, ax=ax)
    ax.set_xlabel("host-device syncs per training step (median)")
    ax.set_ylabel("")
    ax.set_title("Syncs per step")
    return _save(fig, path)


def _fig_effects(eff, path):
    plt, sns = _plt()
    e = eff[eff["response"] == "epoch_s"].copy()
    order = (e.groupby("term")["effect"].apply(lambda s: s.abs().mean())
             .sort_values(ascending=False).index.tolist())
    fig, ax = plt.subplots(figsize=(7.5, (0.22 + 0.12 * e["model"].nunique()) * len(order) + 1.5))
    palette = sns.color_palette("deep")
    models = list(dict.fromkeys(e["model"]))
    for i, model in enumerate(models):
        s = e[e["model"] == model].set_index("term").reindex(order)
        y = np.arange(len(order)) + (i - (len(models) - 1) / 2) * 0.3
        v = s["factor"].to_numpy(float)
        err = np.abs(np.vstack([v - s["factor_lo"].to_numpy(float),
                                s["factor_hi"].to_numpy(float) - v]))
        ax.errorbar(v, y, xerr=err, fmt="o", capsize=3, color=palette[i], label=model)
    ax.axvline(1.0, color="grey", lw=0.8)
    ax.set_yticks(np.arange(len(order)), order)
    ax.invert_yaxis()
    _plain_log_x(ax)
    ax.set_xlabel("epoch time at low / at high (x; > 1: the high level is faster)")
    ax.set_title("Effects on epoch time (95% t intervals)")
    ax.legend(fontsize=8)
    return _save(fig, path)


# --- the report -------------------------------------------------------------------------------

def _geo(values) -> float:
    v = np.asarray([x for x in values if x and not math.isnan(x)], float)
    return float(np.exp(np.log(v).mean())) if len(v) else np.nan


def _per_flag(summary: pd.DataFrame, configs, kind: str) -> pd.DataFrame:
    """One row per (model, flag) for one-at-a-time / leave-one-out designs. The flag's
    speedup is what switching it on buys: config vs baseline in one-at-a-time, baseline vs
    config in leave-one-out (there the config switched it off)."""
    by_name = {c.name: c for c in configs if c.flag}
    rows = []
    for _, r in summary[summary["config"].isin(by_name)].iterrows():
        c = by_name[r["config"]]
        if kind == "leave_one_out":
            v, lo, hi = 1 / r["speedup"], 1 / r["speedup_hi"], 1 / r["speedup_lo"]
            d, dlo, dhi = -r["top1_diff"], -r["top1_diff_hi"], -r["top1_diff_lo"]
        else:
            v, lo, hi = r["speedup"], r["speedup_lo"], r["speedup_hi"]
            d, dlo, dhi = r["top1_diff"], r["top1_diff_lo"], r["top1_diff_hi"]
        rows.append({"model": r["model"], "flag": c.flag, "change": _change(c.flag),
                     "move": c.note.split(": ", 1)[-1], "flag_speedup": v,
                     "flag_speedup_lo": lo, "flag_speedup_hi": hi, "top1_diff": d,
                     "top1_diff_lo": dlo, "top1_diff_hi": dhi,
                     "syncs_per_step": r.get("syncs_per_step", np.nan),
                     "iqr_rel": r["iqr_rel"]})
    return pd.DataFrame(rows)


def _change(flag: str):
    from qvit import Flags

    c = Flags.spec(flag).change
    return "" if c is None else str(c)


def _provenance(table: pd.DataFrame) -> dict[str, str]:
    out = {}
    for col in ("device_name", "cpu_model", "torch_version", "timm_version", "cuda_version",
                "git_commit", "git_dirty", "hostname"):
        if col in table:
            vals = [str(v) for v in dict.fromkeys(table[col].dropna())]
            if vals:
                out[col] = ", ".join(vals[:3]) + (" ..." if len(vals) > 3 else "")
    return out


def build_report(folder: str | Path, *, seed: int = 0) -> Path:
    """Compute the statistics of ``folder``'s table and write its report; returns the path
    of report.md."""
    folder = Path(folder)
    table = load_table(folder)
    meta = _design(folder, table)
    configs = meta["configs"]
    kind, baseline = meta["kind"], meta["baseline"]
    warm = meta.get("warmup_epochs")
    iqr_warn = meta.get("iqr_warn") or stats.IQR_WARN
    config_order = [c.name for c in configs] or list(dict.fromkeys(table["config"]))
    config_order = [c for c in config_order if c in set(table["config"])]
    flag_text = {c.name: c.flags.describe() for c in configs}

    summary = stats.summarize(table, baseline, warmup_epochs=warm, iqr_warn=iqr_warn,
                              seed=seed)
    rank = {c: i for i, c in enumerate(config_order)}
    summary = summary.sort_values(["model", "config"],
                                  key=lambda s: s.map(rank) if s.name == "config" else s)
    summary.to_csv(folder / "summary.csv", index=False)
    epochs = stats.measured(table, warm)
    models = list(dict.fromkeys(summary["model"]))

    levels = {c.name: c.levels for c in configs if c.levels and c.in_design}
    eff = pd.DataFrame()
    if kind in ("factorial", "fractional") and levels:
        eff = stats.effects(table, levels, warmup_epochs=warm)
        eff.to_csv(folder / "effects.csv", index=False)
    per_flag = _per_flag(summary, configs, kind) if kind in (
        "one_at_a_time", "leave_one_out") else pd.DataFrame()
    if not per_flag.empty:
        per_flag.to_csv(folder / "per_flag.csv", index=False)
    parity = pd.read_csv(folder / "parity.csv") if (folder / "parity.csv").is_file() else None

    findings: list[str] = []
    sections: list[str] = []
    figs: dict[str, str] = {}

    # timeline
    if kind == "timeline":
        reference = meta.get("reference_minutes") or (list(SEED_MINUTES) if len(
            config_order) == len(SEED_MINUTES) else None)
        figs["timeline"] = _fig_timeline(summary, config_order, reference,
                                         meta.get("reference_label") or "seed", folder /
                                         "fig_timeline.png")
        rows = []
        notes = {c.name: c.note for c in configs}
        for i, name in enumerate(config_order):
            row = {"stage": name, "adds": notes.get(name, "").replace("+ changes ", "") or "-"}
            if reference is not None and i < len(reference):
                row["seed epoch (min)"] = f"{reference[i]:g}"
                row["seed ratio"] = f"{reference[0] / reference[i]:.2f}"
            for m in models:
                r = summary[(summary["model"] == m) & (summary["config"] == name)]
                if len(r):
                    r = r.iloc[0]
                    row[f"{m} epoch (s)"] = f"{r['epoch_s_median']:.3g}"
                    row[f"{m} ratio [95% CI]"] = _ci(r["speedup"], r["speedup_lo"],
                                                     r["speedup_hi"])
            rows.append(row)
        tl = pd.DataFrame(rows)
        sections.append("## The seed timeline\n\nEach stage adds the seed's changes to the "
                        "one before (FLAGS.md). Ratio = legacy epoch time / stage epoch "
                        "time (train + eval), the geometric mean of ratios paired within "
                        "blocks; the seed's ratios are its published minutes on an RTX "
                        "3060.\n\n" + md_table(tl) + f"\n![timeline]({figs['timeline']})\n")
        for m in models:
            s = summary[summary["model"] == m].set_index("config").reindex(config_order)
            ratios = " -> ".join(f"{v:.2f}" for v in s["speedup"])
            findings.append(f"{m}: timeline ratios {ratios} (seed's: " + (
                " -> ".join(f"{reference[0] / x:.2f}" for x in reference)
                if reference else "n/a") + ")")
            steps = s["speedup"].to_numpy(float)
            gains = {config_order[i]: steps[i] / steps[i - 1] for i in range(1, len(steps))}
            top = sorted(gains, key=lambda k: -abs(math.log(gains[k])))[:3]
            findings.append(f"{m}: largest stage steps " + ", ".join(
                f"{k} ({notes.get(k, '').replace('+ ', '')}) x{gains[k]:.2f}" for k in top))

    # per config
    cols = []
    for _, r in summary.iterrows():
        row = {"model": r["model"], "config": r["config"],
               "flags": flag_text.get(r["config"], ""),
               "train s": r["train_s_median"], "eval s": r["eval_s_median"],
               "speedup [95% CI]": _ci(r["speedup"], r["speedup_lo"], r["speedup_hi"]),
               "train x": _ci(r["speedup_train"], r["speedup_train_lo"],
                              r["speedup_train_hi"]),
               "eval x": _ci(r["speedup_eval"], r["speedup_eval_lo"], r["speedup_eval_hi"]),
               "top-1 % (sd)": _mean_sd(r.get("top1_mean", np.nan), r.get("top1_std", np.nan)),
               "d top-1 pts [95% CI]": (f"{_pp(r['top1_diff'])} [{_pp(r['top1_diff_lo'])}, "
                                        f"{_pp(r['top1_diff_hi'])}]"
                                        if "top1_diff" in r and r["config"] != baseline
                                        else ""),
               "syncs/step": r.get("syncs_per_step", np.nan),
               "IQR/med": ("" if math.isnan(r["iqr_rel"]) else f"{r['iqr_rel']:.1%}")
               + (" (!)" if r["wide_spread"] else ""),
               "runs": r["n_runs"]}
        if "float_multiple" in r and not math.isnan(r["float_multiple"]):
            row["x float step"] = _ci(r["float_multiple"], r["float_multiple_lo"],
                                      r["float_multiple_hi"])
        cols.append(row)
    speed = pd.DataFrame(cols)
    if kind in ("factorial", "fractional", "timeline"):
        speed = speed.drop(columns=["flags"])
    text = (f"## Speed and accuracy per config\n\nBaseline: `{baseline}`. Times are medians "
            f"of measured epochs (warm-up excluded); speedup = baseline / config, paired "
            f"within blocks; top-1 is the last epoch's, its difference paired within "
            f"blocks. `(!)` marks an epoch-time IQR/median above {iqr_warn:.0%}.\n\n"
            + md_table(speed))
    if parity is not None and per_flag.empty:
        keep = [c for c in PARITY_SHOWN if c in parity]
        text += "\n### Parity (harness.parity)\n\n" + md_table(parity[keep])
    sections.append(text)

    if "float_multiple" in summary and summary["float_multiple"].notna().any():
        f = summary[summary["float_multiple"].notna()]
        findings.append("quantized / float step time: " + ", ".join(
            f"{r.model}/{r.config} x{r.float_multiple:.2f}" for r in f.itertuples()
            if not r.config.startswith("float")))

    # per flag
    if not per_flag.empty:
        xlabel = ("epoch speedup of switching the flag on, from legacy (x)"
                  if kind == "one_at_a_time" else
                  "epoch slowdown of switching the flag off, from seed (x)")
        figs["flags"] = _fig_flag_speedup(per_flag, folder / "fig_flag_speedup.png", xlabel)
        show = per_flag.copy()
        show["speedup [95% CI]"] = [_ci(a, b, c) for a, b, c in zip(
            show["flag_speedup"], show["flag_speedup_lo"], show["flag_speedup_hi"], strict=False)]
        show["d top-1 pts [95% CI]"] = [f"{_pp(a)} [{_pp(b)}, {_pp(c)}]" for a, b, c in zip(
            show["top1_diff"], show["top1_diff_lo"], show["top1_diff_hi"], strict=False)]
        show = show.sort_values(["model", "flag_speedup"], ascending=[True, False])
        keep = ["model", "flag", "change", "move", "speedup [95% CI]",
                "d top-1 pts [95% CI]", "syncs_per_step"]
        show = show[keep]
        if parity is not None and "flag" in parity:
            on = ["model", "flag"] if "model" in parity else ["flag"]
            pcols = [c for c in (*on, "to_value", "expected_class", "measured_class")
                     if c in parity]
            pt = parity[pcols].drop_duplicates(on)
            show = show.merge(pt, on=on, how="left")
        what = ("each flag moved alone from the base to its on-value" if kind ==
                "one_at_a_time" else "each flag moved alone back to legacy from the base; "
                "the speedup shown is what the flag is worth (config / baseline)")
        sections.append(f"## Per-flag speedup\n\nOne config per flag: {what}. Measured "
                        f"parity from `parity.csv` beside it where present.\n\n"
                        + md_table(show) + f"\n![per-flag speedup]({figs['flags']})\n")
        mean = (per_flag.groupby("flag")["flag_speedup"].apply(_geo)
                .sort_values(key=lambda s: -np.abs(np.log(s))))
        findings.append("flags with the largest effect (geometric mean over models): "
                        + ", ".join(f"{f} x{v:.2f}" for f, v in mean.head(3).items()))

    # effects
    if not eff.empty:
        figs["effects"] = _fig_effects(eff, folder / "fig_effects.png")
        e = eff[eff["response"].isin(["epoch_s", "top1"])].copy()
        e["estimate [95% CI]"] = [
            _ci(r.factor, r.factor_lo, r.factor_hi, suffix="x") if r.response != "top1"
            else f"{_pp(r.effect)} [{_pp(r.effect_lo)}, {_pp(r.effect_hi)}] pts"
            for r in e.itertuples()]
        e = e[["model", "response", "term", "kind", "estimate [95% CI]", "p", "dof"]]
        inter = eff["kind"].eq("interaction").any()
        sections.append(
            "## Flag effects\n\nLeast squares over all measured runs with block terms; each "
            "flag coded -1 (low) / +1 (high). Epoch time is fit on the log scale, so its "
            "effect is a ratio (time at low / time at high: > 1 means the high level is "
            "faster); top-1 is a difference in points (high - low). "
            + ("Two-flag interactions are resolved by this design and estimated."
               if inter else "This design does not resolve two-flag interactions (aliased "
               "with each other or with main effects): main effects only.")
            + "\n\n" + md_table(e) + f"\n![effects]({figs['effects']})\n")
        top = (eff[eff["response"] == "epoch_s"].groupby("term")["effect"]
               .apply(lambda s: float(np.mean(s))).sort_values(key=lambda s: -s.abs()))
        findings.append("largest effects on epoch time: " + ", ".join(
            f"{t} x{math.exp(-v):.2f}" for t, v in top.head(3).items()))

    if not findings:
        others = summary[summary["config"] != baseline]
        for m in models:
            o = others[others["model"] == m]
            if len(o):
                f = o.loc[o["speedup"].idxmax()]
                findings.append(f"{m}: fastest config {f['config']} x{f['speedup']:.2f} "
                                f"[{f['speedup_lo']:.2f}, {f['speedup_hi']:.2f}] vs "
                                f"{baseline}, top-1 {_pp(f.get('top1_diff', np.nan))} pts")

    # figures for every design
    if "top1_diff" in summary and summary["top1_diff"].notna().any() and len(config_order) > 1:
        figs["acc"] = _fig_acc_vs_speed(summary, baseline, folder / "fig_accuracy_vs_speed.png")
        sections.append(f"## Accuracy difference vs speedup\n\n![accuracy vs speed]"
                        f"({figs['acc']})\n")
    figs["times"] = _fig_epoch_times(epochs, config_order, folder / "fig_epoch_times.png")
    sections.append(f"## Epoch-time distributions\n\nEvery measured epoch of every run "
                    f"(warm-up excluded).\n\n![epoch times]({figs['times']})\n")
    if "syncs_per_step" in summary and summary["syncs_per_step"].notna().any():
        figs["syncs"] = _fig_syncs(summary, config_order, folder / "fig_syncs.png")
        sections.append(f"## Syncs per step\n\n![syncs per step]({figs['syncs']})\n")

    wide = summary[summary["wide_spread"]]
    warnings = [f"{r.model}/{r.config}: epoch-time IQR/median {r.iqr_rel:.1%} "
                f"(> {iqr_warn:.0%}); treat its speedup with care" for r in wide.itertuples()]
    failed = table[table.get("status", pd.Series("ok", index=table.index)).fillna("ok")
                   != "ok"] if "status" in table else table.iloc[:0]
    for rid, g in failed.groupby("run_id"):
        err = str(g["error"].iloc[0])[:120] if "error" in g else ""
        warnings.append(f"run {rid}: status {g['status'].iloc[0]} {err}")
    short = summary[summary["n_pairs"] < summary["n_runs"].max()]
    for r in short.itertuples():
        warnings.append(f"{r.model}/{r.config}: only {r.n_pairs} blocks paired with the "
                        f"baseline")

    # assemble
    title = meta.get("title") or f"Ablation: {meta['name']}"
    prov = _provenance(table)
    setup = pd.DataFrame([
        ("spec", f"`ablations/{meta['name']}.toml` (copy: [spec.toml](spec.toml))"),
        ("design", kind + (f" ({meta['method']})" if meta.get("method") else "")
         + f", {len(config_order)} configs, baseline `{baseline}`"),
        ("models", ", ".join(models)),
        ("data", f"{meta.get('dataset', '')}, batch {meta.get('batch_size', '')}, "
                 f"{meta.get('steps_per_epoch') or 'all'} steps/epoch, eval steps "
                 f"{meta.get('eval_steps') or 'all'}"),
        ("epochs", f"{meta.get('epochs', '')} ({warm} warm-up, excluded)"),
        ("blocks", f"{table['block'].nunique()} (each: every model x config, shuffled)"),
        ("device", meta.get("device", "")),
        *[(k, v) for k, v in prov.items()],
        ("report built", _dt.datetime.now().strftime("%Y-%m-%d %H:%M")),
    ], columns=["", "value"])
    lines = [f"# {title}\n", (meta.get("description") or "") + "\n",
             "## Key findings\n", *[f"- {f}" for f in findings], "",
             "## Setup\n", md_table(setup), *sections]
    if warnings:
        lines += ["## Warnings\n", *[f"- {w}" for w in warnings], ""]
    raw = ["runs.parquet" if (folder / "runs.parquet").is_file() else None,
           "runs.csv" if (folder / "runs.csv").is_file() else None, "summary.csv",
           "per_flag.csv" if not per_flag.empty else None,
           "effects.csv" if not eff.empty else None,
           "parity.csv" if parity is not None else None, "design.json"]
    lines += ["## Raw tables\n", *[f"- [{r}]({r})" for r in raw if r], "",
              "## Method\n",
              "Every repeat is a block holding every (model, config) run in an order "
              "shuffled per block (seeded), so drift on the machine falls on all configs "
              "alike; configs within a block share the training seed. Warm-up epochs and "
              "failed runs are excluded. A run's time is the median of its measured epochs; "
              "a speedup is the geometric mean over blocks of baseline / config, with a "
              f"percentile bootstrap 95% interval over blocks ({stats.N_BOOT} resamples, "
              "seeded). Accuracy differences are paired the same way. With few blocks the "
              "intervals are coarse.\n"]
    path = folder / "report.md"
    path.write_text("\n".join(lines))
    (folder / "report.json").write_text(json.dumps(
        {"name": meta["name"], "title": title, "kind": kind, "models": models,
         "device": meta.get("device"), "findings": findings, "warnings": len(warnings),
         "built": _dt.datetime.now().isoformat(timespec="seconds"),
         "hardware": prov.get("cpu_model") or prov.get("device_name")}, indent=1) + "\n")
    return path


def write_index(results: str | Path) -> Path:
    """results/README.md: one entry per report below ``results``."""
    results = Path(results)
    entries = []
    for rj in sorted(results.glob("*/report.json")):
        info = json.loads(rj.read_text())
        entries.append((rj.parent.name, info))
    lines = ["# Results\n",
             "Reports written by `nox -s ablate` (one folder per spec in `ablations/`); "
             "rebuild them from their tables with `nox -s report`.\n"]
    if entries:
        lines += ["| report | design | models | device | hardware | built |",
                  "|---|---|---|---|---|---|"]
        for name, info in entries:
            lines.append(f"| [{info.get('title') or name}]({name}/report.md) | "
                         f"{info.get('kind', '')} | {', '.join(info.get('models', []))} | "
                         f"{info.get('device') or ''} | {info.get('hardware') or ''} | "
                         f"{info.get('built', '')[:10]} |")
        lines.append("")
        for name, info in entries:
            if info.get("findings"):
                lines.append(f"**{name}**: " + "; ".join(info["findings"]) + "\n")
    else:
        lines.append("_No reports yet._\n")
    path = results / "README.md"
    path.write_text("\n".join(lines))
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m harness report",
                                description="Rebuild reports from recorded tables.")
    p.add_argument("dirs", nargs="*", default=["results"],
                   help="report folders (with runs.parquet/csv) or a parent like results/")
    args = p.parse_args(argv)
    parents = set()
    built = 0
    for d in map(Path, args.dirs):
        if not d.is_dir():
            print(f"error: no folder {str(d)!r}", file=sys.stderr)
            return 2
        folders = [d] if _has_table(d) else sorted(x for x in d.iterdir() if _has_table(x))
        for f in folders:
            print(f"report: {build_report(f)}")
            built += 1
            parents.add(f.parent)
        if not _has_table(d):
            parents.add(d)
    for parent in parents:
        write_index(parent)
    if not built:
        print("no tables found (runs.parquet / runs.csv)", file=sys.stderr)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
