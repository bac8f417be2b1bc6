"""Two sets of results of the same design compared: did the code get faster or slower?

``python -m harness compare A B [--fail-slower 5%] [--out cmp.md]``. Each side is

- ``FOLDER``: the rows of the folder's design (``design.json``: its latest sweep);
- ``FOLDER@REV``: the rows of the folder's table measured at git revision ``REV`` (a
  commit the table's ``git_commit`` column holds, or a prefix of one, or a name git
  resolves); a table keeps the rows of every code version swept into it;
- ``REV`` alone: a revision of the other side's folder (``compare runs/demo@v1 runs/demo``
  and ``compare v1 runs/demo`` say the same).

A is the base: every ratio is B / A (above 1: B is slower). Per (model, config) both hold:

- epoch time, step time (epoch method) and the interleaved step (step method), each a
  geometric mean of B / A over blocks (sessions) paired by their rank, with its t interval
  (`stats.ratio_interval`): A's and B's blocks are independent measurements, so pairing
  them by rank gives independent differences and a valid interval for their n;
- the final top-1 difference B - A with its TOST verdict at +-1 point
  (`equivalence.accuracy_parity`, paired by seed);
- a verdict per ratio: ``slower`` when its interval lies wholly above the A/A band,
  ``faster`` when wholly below it, else ``same``. The A/A band is how far the A/A null
  control's interval (the baseline run twice in each block, `harness.spec.AA_CONTROL`)
  reaches from 1, the wider of A's and B's: a ratio no larger than what noise alone gave
  is no change. Without an A/A control the band is 1 itself.

The code may differ (that is what is compared); rows measured on another machine, under
other run settings or other library versions are refused, naming what differs.
"""

from __future__ import annotations

import math
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from harness import records
from harness.analysis import stats
from harness.analysis.equivalence import DEFAULT_MARGIN_PP, accuracy_parity
from harness.analysis.report.fmt import ci, md_table, pp_ci
from harness.records.files import save_figure
from harness.spec import AA_CONTROL
from harness.spec.planning import read_design

__all__ = ["Side", "load_side", "check_comparable", "compare", "slower_than", "to_markdown",
           "plot_ratios", "parse_percent", "METRICS", "MACHINE", "LIBRARIES"]

# ratio name -> (the run-level column, the summary column of the A/A control's interval)
METRICS = {"epoch": ("epoch_s", "speedup"), "step": ("step_s", "speedup_step"),
           "interleaved step": ("step_s_interleaved", "speedup_interleaved")}
MACHINE = ("hostname", "device_name", "cpu_model")
LIBRARIES = ("torch_version", "timm_version", "cuda_version")
ROW_SETTINGS = ("dataset", "threads")  # run settings every row records
VERDICTS = ("faster", "slower", "same", "n/a")


@dataclass(frozen=True)
class Side:
    """One side of a comparison: its rows and what they were measured under."""

    name: str  # as the user wrote it
    rows: pd.DataFrame
    settings: dict | None  # the design's run settings (a folder), None for a revision
    baseline: str | None  # the design's baseline config (for its A/A control)


def _resolve_rev(table: pd.DataFrame, rev: str, folder: Path) -> str:
    commits = sorted(set(table["git_commit"].astype(str)) - {""})
    hits = [c for c in commits if c.startswith(rev.lower())]
    if not hits:
        try:
            out = subprocess.run(["git", "rev-parse", "--verify", f"{rev}^{{commit}}"],
                                 capture_output=True, text=True, timeout=10)
            full = out.stdout.strip() if out.returncode == 0 else ""
        except (OSError, subprocess.TimeoutExpired):
            full = ""
        hits = [c for c in commits if full and c == full]
    if len(hits) != 1:
        held = ", ".join(c[:12] for c in commits) or "none"
        what = "matches several" if hits else "is not one"
        raise ValueError(f"revision {rev!r} {what} of the commits {folder} holds rows of "
                         f"({held}); give one of them (a unique prefix)")
    return hits[0]


def load_side(text: str, other: str | None = None) -> Side:
    """The rows a side names (see the module's doc); ``other``: the other side's text, whose
    folder a bare revision refers to."""
    folder, rev = Path(text), None
    if not folder.is_dir():
        head, sep, tail = text.rpartition("@")
        if sep and Path(head).is_dir():
            folder, rev = Path(head), tail
        elif other is not None and not Path(text).exists():
            base = other.rpartition("@")[0] if not Path(other).is_dir() else other
            if not base or not Path(base).is_dir():
                raise ValueError(f"{text!r} is not a folder, and {other!r} names no folder "
                                 f"whose rows a revision could select")
            folder, rev = Path(base), text
        else:
            raise ValueError(f"{text!r} is not a results folder (one with runs.parquet); "
                             f"give FOLDER, FOLDER@REV or a revision of the other folder")
    meta = read_design(folder)
    table = records.read_table(folder)
    if not len(table):
        raise ValueError(f"{folder} holds no runs table (runs.parquet or runs.csv)")
    if rev is None:
        ids = set((meta or {}).get("run_ids") or table["run_id"])
        rows = table[table["run_id"].isin(ids)]
        settings = dict(meta["settings"]) if meta else None
    else:
        commit = _resolve_rev(table, rev, folder)
        rows = table[table["git_commit"].astype(str) == commit]
        settings = None
    rows = rows[rows["status"].fillna("ok") == "ok"].reset_index(drop=True)
    if not len(rows):
        raise ValueError(f"{text}: no finished runs to compare")
    return Side(text, rows, settings, (meta or {}).get("baseline"))


def _values(rows: pd.DataFrame, column: str) -> set[str]:
    return {str(v) for v in rows[column].dropna().unique()} if column in rows else set()


def check_comparable(a: Side, b: Side) -> None:
    """Refuse, in one line naming every difference, sides measured on other machines,
    library versions or run settings (the code may differ: that is what is compared)."""
    diffs = []
    for col in MACHINE + LIBRARIES + ROW_SETTINGS:
        va, vb = _values(a.rows, col), _values(b.rows, col)
        if va != vb:
            diffs.append(f"{col} {', '.join(sorted(va))!r} vs {', '.join(sorted(vb))!r}")
    if a.settings is not None and b.settings is not None:
        for key in sorted(set(a.settings) | set(b.settings)):
            if key != "model" and a.settings.get(key) != b.settings.get(key):
                diffs.append(f"setting {key} {a.settings.get(key)!r} vs "
                             f"{b.settings.get(key)!r}")
    if diffs:
        raise ValueError(f"{a.name} and {b.name} were not measured alike: "
                         + "; ".join(diffs) + " (compare rows of one machine, run settings "
                         "and library versions; only the code may differ)")


def _per_block(rows: pd.DataFrame) -> pd.DataFrame:
    """One row per (model, config, block): the run-level times (epoch method) and the
    median interleaved step of each session (step method)."""
    method = rows["method"].fillna("epochs")
    epochs, steps = rows[method != "steps"], rows[method == "steps"]
    parts = []
    if len(epochs):
        parts.append(stats.run_level(epochs))
    if len(steps):
        s = stats.measured(steps)
        parts.append(s.groupby(["model", "config", "block"], as_index=False)["compute_s"]
                     .median().rename(columns={"compute_s": "step_s_interleaved"}))
    out = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
    return out.groupby(["model", "config", "block"], as_index=False).first()


def _aa_band(side: Side) -> dict[tuple[str, str], float]:
    """(model, ratio name) -> how far the A/A control's interval reaches from 1 (log)."""
    if side.baseline is None or AA_CONTROL not in set(side.rows["config"]):
        return {}
    rows = side.rows[side.rows["config"].isin([side.baseline, AA_CONTROL])]
    s = stats.summarize(rows, side.baseline)
    out = {}
    for _, r in s[s["config"] == AA_CONTROL].iterrows():
        for name, (_, col) in METRICS.items():
            lo, hi = r.get(f"{col}_lo", np.nan), r.get(f"{col}_hi", np.nan)
            if np.isfinite(lo) and np.isfinite(hi):
                out[(r["model"], name)] = max(abs(math.log(lo)), abs(math.log(hi)))
    return out


def _verdict(r: float, lo: float, hi: float, band: float) -> str:
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return "n/a"
    if lo > math.exp(band):
        return "slower"
    if hi < math.exp(-band):
        return "faster"
    return "same"


def _ratio(ga: pd.DataFrame, gb: pd.DataFrame, column: str) -> tuple[float, ...]:
    """B / A over blocks paired by rank, with its t interval and n."""
    if column not in ga or column not in gb:
        return (np.nan, np.nan, np.nan, 0)
    a = ga.sort_values("block")[column].dropna().to_numpy(float)
    b = gb.sort_values("block")[column].dropna().to_numpy(float)
    n = min(len(a), len(b))
    return stats.ratio_interval(b[:n], a[:n])


def _top1(a: Side, b: Side, model: str, config: str) -> dict:
    both = pd.concat([a.rows[a.rows["config"] == config].assign(config="A"),
                      b.rows[b.rows["config"] == config].assign(config="B")],
                     ignore_index=True)
    both = both[both["top1"].notna() & (both["method"].fillna("epochs") != "steps")]
    try:
        res = accuracy_parity(both, "B", "A", model=model, exact=False,
                              margin=DEFAULT_MARGIN_PP)
    except ValueError:  # fewer than two seeds, or no top-1 (the step method)
        return {}
    return {"top1_diff": res.mean_diff, "top1_lo": res.ci[0], "top1_hi": res.ci[1],
            "top1_equivalent": bool(res.equivalent)}


def _flags_differ(ga: pd.DataFrame, gb: pd.DataFrame) -> str:
    """The flags a config name holds differently on the two sides (a preset changed with
    the code, or one name for two configs): said beside its row."""
    from qvit import Flags

    out = []
    for name in Flags.names():
        va, vb = _values(ga, name), _values(gb, name)
        if va and vb and va != vb:
            out.append(f"{name} {'/'.join(sorted(va))}->{'/'.join(sorted(vb))}")
    more = f" and {len(out) - 3} more" if len(out) > 3 else ""
    return ("flags differ: " + ", ".join(out[:3]) + more) if out else ""


def compare(a: Side, b: Side) -> pd.DataFrame:
    """One row per (model, config) both sides hold: each ratio B / A with its interval, n,
    A/A band and verdict; the top-1 difference and its TOST verdict; the overall verdict."""
    check_comparable(a, b)
    pa, pb = _per_block(a.rows), _per_block(b.rows)
    bands = [_aa_band(a), _aa_band(b)]
    keys = pa[["model", "config"]].drop_duplicates().merge(
        pb[["model", "config"]].drop_duplicates())
    if keys.empty:
        raise ValueError(f"{a.name} and {b.name} share no (model, config); A holds "
                         f"{sorted(set(pa['config']))}, B {sorted(set(pb['config']))}")
    rows = []
    for model, config in keys.itertuples(index=False):
        ga = pa[(pa["model"] == model) & (pa["config"] == config)]
        gb = pb[(pb["model"] == model) & (pb["config"] == config)]
        row: dict = {"model": model, "config": config}
        for name, (column, _) in METRICS.items():
            r, lo, hi, n = _ratio(ga, gb, column)
            if n == 0:
                continue
            band = max(bd.get((model, name), 0.0) for bd in bands)
            row.update({name: r, f"{name}_lo": lo, f"{name}_hi": hi, f"{name}_n": n,
                        f"{name}_band": math.exp(band) - 1,
                        f"{name}_verdict": _verdict(r, lo, hi, band)})
        row.update(_top1(a, b, model, config))
        row["note"] = _flags_differ(*(s.rows[(s.rows["model"] == model) &
                                             (s.rows["config"] == config)] for s in (a, b)))
        found = {row[k] for k in row if k.endswith("_verdict")} - {"same", "n/a"}
        row["verdict"] = "mixed" if len(found) > 1 else (found.pop() if found else "same")
        rows.append(row)
    return pd.DataFrame(rows)


def slower_than(result: pd.DataFrame, threshold: float) -> list[str]:
    """The ratios whose whole interval lies above 1 + ``threshold`` (B slower by more)."""
    out = []
    for _, r in result.iterrows():
        for name in METRICS:
            lo = r.get(f"{name}_lo", np.nan)
            if np.isfinite(lo) and lo > 1 + threshold:
                out.append(f"{r['model']} {r['config']}: {name} B/A "
                           f"{ci(r[name], lo, r[f'{name}_hi'])} is wholly above "
                           f"{1 + threshold:g}")
    return out


def parse_percent(text: str) -> float:
    """``5%`` or ``5`` (percent) or ``0.05`` as a fraction."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(%?)\s*", text)
    if not m:
        raise ValueError(f"--fail-slower takes a percentage such as 5% or 2.5, got {text!r}")
    value = float(m.group(1))
    return value / 100 if m.group(2) or value >= 1 else value


def to_markdown(result: pd.DataFrame, a: Side, b: Side, figure: str | None = None) -> str:
    """The comparison as a Markdown section: a table and how to read it."""
    table = []
    for _, r in result.iterrows():
        row = {"model": r["model"], "config": r["config"]}
        for name in METRICS:
            if np.isfinite(r.get(name, np.nan)):
                row[f"{name} B/A"] = (f"{ci(r[name], r[f'{name}_lo'], r[f'{name}_hi'])} "
                                      f"n={int(r[f'{name}_n'])}: {r[f'{name}_verdict']}")
        if np.isfinite(r.get("top1_diff", np.nan)):
            row["top-1 B-A (pp)"] = (pp_ci(r["top1_diff"], r["top1_lo"], r["top1_hi"]) + ": "
                                     + ("equivalent" if r["top1_equivalent"] else
                                        "not shown equivalent"))
        row["verdict"] = r["verdict"] + (f" ({r['note']})" if r["note"] else "")
        table.append(row)
    bands = {name: result[f"{name}_band"].max() for name in METRICS
             if f"{name}_band" in result}
    noise = ", ".join(f"{k} +-{100 * v:.1f}%" for k, v in bands.items() if np.isfinite(v))
    text = (f"# {b.name} vs {a.name}\n\nRatios are B / A ({b.name} / {a.name}; above 1: B "
            f"is slower), geometric means over blocks paired by rank with 95% t intervals; "
            f"a verdict is `slower` or `faster` only when the interval lies wholly beyond "
            f"the A/A noise band ({noise or 'no A/A control: 1'}). Top-1: B - A in points, "
            f"TOST at +-{DEFAULT_MARGIN_PP:g}.\n\n"
            + md_table(pd.DataFrame(table).fillna("")))
    if figure:
        text += f"\n![B / A with 95% intervals]({figure})\n"
    return text


def plot_ratios(result: pd.DataFrame, path: Path) -> Path:
    """A seaborn figure: each ratio B / A with its interval, per config, one panel per
    model, the A/A band shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    sns.set_theme(style="whitegrid", context="notebook")
    long = []
    for _, r in result.iterrows():
        for name in METRICS:
            if np.isfinite(r.get(name, np.nan)):
                long.append({"model": r["model"], "config": r["config"], "ratio": name,
                             "B/A": r[name], "lo": r[f"{name}_lo"], "hi": r[f"{name}_hi"],
                             "band": r[f"{name}_band"]})
    data = pd.DataFrame(long)
    models = list(dict.fromkeys(data["model"]))
    configs = list(dict.fromkeys(data["config"]))
    names = list(dict.fromkeys(data["ratio"]))
    palette = sns.color_palette("colorblind", len(names))
    fig, axes = plt.subplots(1, len(models), figsize=(5 * len(models), 0.5 * len(configs) + 2),
                             squeeze=False, sharey=True)
    for ax, model in zip(axes[0], models, strict=True):
        for i, name in enumerate(names):
            s = data[(data["model"] == model) & (data["ratio"] == name)]
            y = np.array([configs.index(c) for c in s["config"]]) \
                + (i - (len(names) - 1) / 2) * 0.25
            v = s["B/A"].to_numpy(float)
            lo, hi = s["lo"].to_numpy(float), s["hi"].to_numpy(float)
            err = np.abs(np.vstack([v - np.where(np.isfinite(lo), lo, v),
                                    np.where(np.isfinite(hi), hi, v) - v]))
            ax.errorbar(v, y, xerr=err, fmt="o", capsize=3, color=palette[i], label=name)
        band = data.loc[data["model"] == model, "band"].max()
        if np.isfinite(band) and band > 0:
            ax.axvspan(1 / (1 + band), 1 + band, color="grey", alpha=0.15, lw=0)
        ax.axvline(1.0, color="grey", lw=0.8)
        ax.set_yticks(np.arange(len(configs)), configs)
        ax.set_title(model)
        ax.set_xlabel("B / A time (above 1: B slower)")
    axes[0][0].invert_yaxis()
    axes[0][-1].legend(loc="best", fontsize="small")
    fig.tight_layout()
    save_figure(fig, path, dpi=110)
    plt.close(fig)
    return path

