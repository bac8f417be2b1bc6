"""What a design buys: the smallest effect it can detect, and what one of its runs costs.

The A/A control is the baseline run a second time under another name (`AA_CONTROL`): its
ratio to the baseline is noise alone. A config's ratio to the baseline has an interval of
about the same width, built the same way (`stats.ratio_interval`: t on log ratios over
blocks), so its interval excludes 1 only where the effect is larger than about the A/A
interval's half-width. That half-width, on the log scale, as a percentage (``exp(h) - 1``),
is the design's detection limit per model and measure: a ratio whose interval holds 1 then
reads "no effect larger than x% here". Above `LIMIT_WARN` the report says so in bold.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from harness.analysis.report.fmt import ci, drop_empty, isnan, md_table
from harness.spec import AA_CONTROL

__all__ = ["reliability", "MEASURES", "LIMIT_WARN", "detection_limits", "limits_by_model",
           "limit_text", "too_noisy", "run_costs", "warmup_text", "cost_text"]

# measure -> the summary column of its ratio (with _lo / _hi)
MEASURES = {"epoch": "speedup", "step": "speedup_step", "interleaved step": "speedup_interleaved"}
LIMIT_WARN = 0.10  # above a 10% detection limit a design sees only large effects


def detection_limits(summary: pd.DataFrame, control: str = AA_CONTROL) -> pd.DataFrame:
    """One row per (model, measure) with an A/A interval: ``limit`` = exp(h) - 1, h the
    half-width of the A/A interval of the log ratio (none with one block)."""
    rows = []
    if "config" in summary:
        for _, r in summary[summary["config"] == control].iterrows():
            for measure, col in MEASURES.items():
                lo, hi = r.get(f"{col}_lo", np.nan), r.get(f"{col}_hi", np.nan)
                if isnan(lo) or isnan(hi) or lo <= 0:
                    continue
                half = (math.log(hi) - math.log(lo)) / 2
                rows.append({"model": r["model"], "measure": measure,
                             "limit": math.expm1(half)})
    return pd.DataFrame(rows, columns=["model", "measure", "limit"])


def limits_by_model(limits: pd.DataFrame) -> dict[str, dict[str, float]]:
    """{model: {measure: limit}} (report.json)."""
    out: dict[str, dict[str, float]] = {}
    for r in limits.itertuples():
        out.setdefault(r.model, {})[r.measure] = round(float(r.limit), 4)
    return out


def limit_text(by_measure: dict[str, float]) -> str:
    """``epoch 5.5%, step 13.2% (!)``; ``(!)`` marks a limit above `LIMIT_WARN`."""
    return ", ".join(f"{m} {v:.1%}" + (" (!)" if v > LIMIT_WARN else "")
                     for m, v in by_measure.items())


def too_noisy(limits: pd.DataFrame) -> list[str]:
    """``model measure (x%)`` for every limit above `LIMIT_WARN`."""
    big = limits[limits["limit"] > LIMIT_WARN]
    return [f"{r.model} {r.measure} ({r.limit:.1%})" for r in big.itertuples()]


def run_costs(table: pd.DataFrame) -> dict[str, float]:
    """Median seconds per run of the epochs method, from the recorded columns: set-up
    (``setup_s``: data, model, float start and calibration, optimizer; absent in tables
    recorded before it existed), warm-up epochs, measured epochs and their evaluation."""
    t = table[table["status"].fillna("ok") == "ok"]
    if "method" in t:
        t = t[t["method"].fillna("epochs") != "steps"]
    if t.empty or "epoch_s" not in t:
        return {}
    warm = t["warmup"].fillna(False).astype(bool) if "warmup" in t else False
    per_run = pd.DataFrame({
        "setup": t["setup_s"] if "setup_s" in t else np.nan,
        "warm-up": t["epoch_s"].where(warm, 0.0),
        "measured": t["epoch_s"].where(~warm, 0.0),
        "eval": t["eval_s"].where(~warm, 0.0) if "eval_s" in t else np.nan,
    }).groupby(t["run_id"]).sum(min_count=1)
    return {k: float(v) for k, v in per_run.median().items() if not isnan(v)} | {
        "runs": float(len(per_run))}


def warmup_text(table: pd.DataFrame) -> str:
    """What a warm-up epoch ran, from its rows: ``: 2 steps, eval of 128 images``."""
    t = table[table["warmup"].fillna(False).astype(bool)] if "warmup" in table else table[:0]
    t = t[t["status"].fillna("ok") == "ok"]
    if t.empty or "steps" not in t:
        return ""
    images = t["eval_images"].median() if "eval_images" in t else np.nan
    return f": {t['steps'].median():.0f} steps" + (
        "" if isnan(images) else f", eval of {images:.0f} images")


def cost_text(costs: dict[str, float]) -> str:
    """The Setup table's line: what one run costs, median seconds."""
    if not costs:
        return ""
    parts = [f"{k.replace('setup', 'set-up')} {costs[k]:.2f} s"
             for k in ("setup", "warm-up", "measured") if k in costs]
    if "eval" in costs and "measured" in costs:
        parts[-1] += f" (of which eval {costs['eval']:.2f} s)"
    if "setup" not in costs:
        parts.insert(0, "set-up not recorded")
    return f"median per run: {', '.join(parts)}; {int(costs['runs'])} runs"


# --- the report's section ---------------------------------------------------------------------

def reliability(ctx) -> tuple[str, list[str]]:
    """The report's section on the A/A null control (the baseline measured twice under two
    names) and the detection limit it gives; ``ctx``: a `sections.Context`."""
    rows, findings, bad = [], [], []
    limits = detection_limits(ctx.summary)
    by_model = limits_by_model(limits)
    for m in ctx.models:
        r = ctx.row(m, AA_CONTROL)
        if r is None:
            continue
        epoch = ci(r.get("speedup", np.nan), r.get("speedup_lo"), r.get("speedup_hi"))
        step = ci(r.get("speedup_step", np.nan), r.get("speedup_step_lo", np.nan),
                  r.get("speedup_step_hi", np.nan))
        inter = ci(r.get("speedup_interleaved", np.nan), r.get("speedup_interleaved_lo", np.nan),
                   r.get("speedup_interleaved_hi", np.nan))
        rows.append({"model": m, "A/A epoch ratio": epoch, "A/A step ratio": step,
                     "A/A step ratio, interleaved": inter})
        for lo, hi in ((r.get("speedup_lo", np.nan), r.get("speedup_hi", np.nan)),
                       (r.get("speedup_interleaved_lo", np.nan),
                        r.get("speedup_interleaved_hi", np.nan))):
            if not isnan(lo) and not (lo <= 1 <= hi) and m not in bad:
                bad.append(m)
        findings.append(f"{m}: A/A null control (the baseline twice) "
                        + "; ".join(f"{k} {v}" for k, v in (("epoch", epoch), ("step", step),
                                                              ("interleaved step", inter)) if v)
                        + (f"; detection limit {limit_text(by_model[m])}"
                           if m in by_model else ""))
    if not rows:
        return "", []
    verdict = ("**UNRELIABLE**: the A/A interval excludes 1 on " + ", ".join(bad)
               + " — the machine's noise or drift is larger than the intervals say; rerun "
               "on an idle machine before reading any ratio.\n") if bad else (
        "The A/A intervals contain 1: the design's intervals are consistent with its "
        "noise.\n")
    text = ("## Reliability: the A/A null control\n\nThe baseline config was run a second "
            f"time in every block (and every interleaved round) under the name "
            f"`{AA_CONTROL}`; its ratio to the baseline shows what noise alone looks like "
            f"({ctx.interval_label()}{ctx.rounds_label()}).\n\n"
            + md_table(drop_empty(pd.DataFrame(rows))) + "\n" + verdict + _limits(limits))
    noisy = too_noisy(limits)
    if noisy:
        findings.insert(0, f"NOISY: detection limit above {LIMIT_WARN:.0%} on "
                        + ", ".join(noisy))
    if bad:
        findings.insert(0, "UNRELIABLE: A/A interval excludes 1 on " + ", ".join(bad))
    return text, findings


def _limits(limits: pd.DataFrame) -> str:
    """The detection limit of each model and measure, and the warning above LIMIT_WARN."""
    if limits.empty:
        return ""
    wide = limits.pivot(index="model", columns="measure", values="limit")
    wide = wide[[m for m in MEASURES if m in wide]].map(lambda v: f"+-{v:.1%}")
    noisy = too_noisy(limits)
    return ("\n**Detection limit**: the half-width of the A/A interval (log scale), the "
            "smallest effect this design tells from noise; a ratio whose interval holds 1 "
            "means no effect larger than this here.\n\n"
            + md_table(wide.reset_index().rename_axis(None, axis=1))
            + (f"\n**NOISY**: the detection limit is above {LIMIT_WARN:.0%} on "
               + ", ".join(noisy) + ": effects smaller than that are invisible here; more "
               "blocks or an idle machine narrow it.\n" if noisy else ""))
