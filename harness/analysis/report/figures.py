"""The figures of a report (seaborn), each written to a PNG beside report.md."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from harness.records.files import save_figure

__all__ = ["timeline", "flag_speedup", "accuracy_vs_speed", "epoch_times", "effects"]

FIG_DPI = 110


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
    save_figure(fig, path, dpi=FIG_DPI)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path.name


def _forest(ax, frame, key: str, value: str, order, models, palette) -> None:
    """One row per ``key``, one dot with its interval (``value``, ``value_lo``/``_hi``) per
    model, on a log axis around 1."""
    for i, model in enumerate(models):
        s = frame[frame["model"] == model].set_index(key).reindex(order)
        y = np.arange(len(order)) + (i - (len(models) - 1) / 2) * 0.3
        v = s[value].to_numpy(float)
        err = np.abs(np.vstack([v - s[f"{value}_lo"].to_numpy(float),
                                s[f"{value}_hi"].to_numpy(float) - v]))
        ax.errorbar(v, y, xerr=err, fmt="o", capsize=3, color=palette[i], label=model)
    ax.axvline(1.0, color="grey", lw=0.8)
    ax.set_yticks(np.arange(len(order)), order)
    ax.invert_yaxis()
    _plain_log_x(ax)


def timeline(summary, order, reference, label, path):
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
                    capsize=3, color=palette[i], label=f"{model} (measured, 95% t-CI)")
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


def flag_speedup(per_flag, path, xlabel):
    plt, sns = _plt()
    models = list(dict.fromkeys(per_flag["model"]))
    order = (per_flag.groupby("flag")["flag_speedup"].apply(lambda s: np.exp(np.log(s).mean()))
             .sort_values(ascending=False).index.tolist())
    fig, ax = plt.subplots(figsize=(7.5, (0.22 + 0.12 * len(models)) * len(order) + 1.5))
    palette = sns.color_palette("deep")
    _forest(ax, per_flag, "flag", "flag_speedup", order, models, palette)
    ax.set_xlabel(xlabel)
    ax.set_title("Per-flag speedup (95% t-CI over blocks)")
    ax.legend(fontsize=8)
    return _save(fig, path)


def accuracy_vs_speed(summary, baseline, path):
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


def epoch_times(epochs, order, path):
    plt, sns = _plt()
    long = epochs.melt(id_vars=["model", "config"], value_vars=["epoch_s", "train_s"],
                       var_name="phase", value_name="seconds")
    long["phase"] = long["phase"].str.replace("_s", "", regex=False)
    with warnings.catch_warnings():  # seaborn 0.13 passes matplotlib's deprecated `vert`
        warnings.simplefilter("ignore", DeprecationWarning)
        g = sns.catplot(data=long, x="seconds", y="config", hue="model", col="phase",
                        kind="box", order=order, sharex=False,
                        height=max(3.0, 0.3 * len(order) + 1.2), aspect=1.1, fliersize=2)
    g.set_titles("{col_name} (measured epochs)")
    path = Path(path)
    save_figure(g.figure, path, dpi=FIG_DPI, bbox_inches="tight")
    import matplotlib.pyplot as mpl

    mpl.close(g.figure)
    return path.name


def effects(eff, path):
    plt, sns = _plt()
    e = eff[eff["response"] == "epoch_s"].copy()
    order = (e.groupby("term")["effect"].apply(lambda s: s.abs().mean())
             .sort_values(ascending=False).index.tolist())
    fig, ax = plt.subplots(figsize=(7.5, (0.22 + 0.12 * e["model"].nunique()) * len(order) + 1.5))
    palette = sns.color_palette("deep")
    models = list(dict.fromkeys(e["model"]))
    _forest(ax, e, "term", "factor", order, models, palette)
    ax.set_xlabel("epoch time at low / at high (x; > 1: the high level is faster)")
    ax.set_title("Effects on epoch time (95% t intervals)")
    ax.legend(fontsize=8)
    return _save(fig, path)
