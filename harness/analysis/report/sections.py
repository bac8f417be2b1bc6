"""The sections of a report, one function each: (markdown, findings) from the statistics.

`Context` carries what every section reads: the design, the table of this design's runs, the
per-config summary, the folder. Each section returns its markdown and the one-line findings
it contributes to the top of the report.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from harness.analysis import stats
from harness.analysis.parity_classes import SHOWN_COLUMNS
from harness.analysis.report import budget, figures
from harness.analysis.report.fmt import ci, drop_empty, isnan, md_table, mean_sd, pp, pp_ci
from harness.records.files import write_text
from harness.spec import AA_CONTROL, SEED_MINUTES
from qvit.flags import Flags
from qvit.paths import why_same
from qvit.variants import VARIANTS

__all__ = ["Context", "SECTIONS", "setup"]

NO_EFFECT = "no effect possible with these flags"


@dataclass
class Context:
    folder: Path
    meta: dict[str, Any]  # design.json
    table: pd.DataFrame  # this design's rows only
    ignored: int  # rows of the folder's table that belong to other identities
    summary: pd.DataFrame
    order: list[str]  # config names, design order
    parity: pd.DataFrame | None
    device_type: str
    figures: bool = True  # draw the figures (False: tables only, quicker)
    figs: dict[str, str] = field(default_factory=dict)

    @property
    def baseline(self) -> str:
        return self.meta["baseline"]

    @property
    def models(self) -> list[str]:
        source = self.summary if "model" in self.summary else self.table
        return list(dict.fromkeys(source["model"]))

    @property
    def configs(self) -> dict:
        return {c.name: c for c in self.meta["configs"]}

    @property
    def report(self) -> dict:
        return self.meta.get("report") or {}

    @property
    def by_epochs(self) -> pd.DataFrame:
        """The rows of the epochs method (the steps method's rounds are not blocks)."""
        t = self.table
        return t[t["method"].fillna("epochs") != "steps"] if "method" in t else t

    @property
    def n_blocks(self) -> int:
        return int(self.by_epochs["block"].nunique()) if len(self.by_epochs) else 0

    def interval_label(self) -> str:
        n = self.n_blocks
        return f"95% t-CI over {n} blocks" if n >= 2 else "no interval: 1 block"

    def row(self, model: str, config: str) -> pd.Series | None:
        """The summary row of (model, config), or None."""
        s = self.summary
        r = s[(s["model"] == model) & (s["config"] == config)]
        return r.iloc[0] if len(r) else None

    def rounds_label(self) -> str:
        """The interleaved method's n, or "" where the design has none."""
        s = self.summary
        if "n_sessions" not in s or not s["n_sessions"].notna().any():
            return ""
        return (f"; interleaved: 95% t-CI over {int(s['n_sessions'].max())} sessions, "
                f"{int(s['n_rounds'].max())} paired rounds in all")

    def no_effect(self, config: str, model: str) -> str | None:
        """Why ``config`` cannot differ from the baseline on ``model`` here (None: it can):
        the two run the same code paths (`qvit.paths.why_same`)."""
        c, base = self.configs.get(config), self.configs.get(self.baseline)
        if c is None or base is None or config in (self.baseline, AA_CONTROL):
            return None
        if c.float_reference != base.float_reference:
            return None
        family = VARIANTS[model][0] if model in VARIANTS else None
        return why_same(base.flags, c.flags, device_type=self.device_type, family=family)


def _has(r: pd.Series, col: str) -> bool:
    return not isnan(r.get(col, np.nan))


# --- sections ------------------------------------------------------------------------------------

def timeline(ctx: Context) -> tuple[str, list[str]]:
    if ctx.meta["kind"] != "timeline":
        return "", []
    order = [c for c in ctx.order if c != AA_CONTROL]
    rep = ctx.report
    reference = rep.get("reference_minutes") or (list(SEED_MINUTES) if len(order) == len(
        SEED_MINUTES) else None)
    if ctx.figures:
        ctx.figs["timeline"] = figures.timeline(
            ctx.summary, order, reference, rep.get("reference_label") or "seed",
            ctx.folder / "fig_timeline.png")
    notes = {c.name: c.note for c in ctx.meta["configs"]}
    rows, findings = [], []
    for i, name in enumerate(order):
        row = {"stage": name, "adds": notes.get(name, "").replace("+ changes ", "") or "-"}
        if reference is not None and i < len(reference):
            row["seed min"] = f"{reference[i]:g}"
            row["seed ratio"] = f"{reference[0] / reference[i]:.2f}"
        for m in ctx.models:
            r = ctx.row(m, name)
            if r is not None:
                row[f"{m} epoch ratio"] = ci(r["speedup"], r["speedup_lo"], r["speedup_hi"])
                row[f"{m} step ratio"] = ci(r["speedup_step"], r["speedup_step_lo"],
                                            r["speedup_step_hi"])
        rows.append(row)
    for m in ctx.models:
        s = ctx.summary[ctx.summary["model"] == m].set_index("config").reindex(order)
        findings.append(f"{m}: timeline epoch ratios " + " -> ".join(
            f"{v:.2f}" for v in s["speedup"]) + "; step (arithmetic) ratios " + " -> ".join(
            f"{v:.2f}" for v in s["speedup_step"]) + (
            " (seed's epoch ratios: " + " -> ".join(f"{reference[0] / x:.2f}"
                                                   for x in reference) + ")"
            if reference else ""))
    text = ("## The seed timeline\n\nEach stage adds the seed's changes to the one before "
            "(FLAGS.md). Epoch ratio = legacy epoch time / stage epoch time (train + eval + "
            "plots, what the seed timed); step ratio = the same for the compute of one "
            f"training step (model arithmetic alone). {ctx.interval_label()}; the seed's "
            "ratios are its published minutes on an RTX 3060 (GPU: host round trips cost "
            "far more there).\n\n" + md_table(pd.DataFrame(rows))
            + (f"\n![timeline]({ctx.figs['timeline']})\n" if "timeline" in ctx.figs else ""))
    return text, findings


def _speed_row(ctx: Context, r: pd.Series) -> dict[str, Any]:
    why = ("baseline" if r["config"] == ctx.baseline
           else ctx.no_effect(r["config"], r["model"]))
    g = r.get
    row = {"model": r["model"], "config": r["config"],
           "epoch s": g("epoch_s_median", np.nan), "step ms": 1e3 * g("step_s_median", np.nan),
           "data+loop s": g("other_s_median", np.nan)}
    epochs, inter = _has(r, "epoch_s_median"), _has(r, "step_s_interleaved")
    if why:
        shown = "(baseline)" if why == "baseline" else NO_EFFECT
        row.update({"epoch x": shown if epochs else "", "step x": shown if epochs else "",
                    "data+loop x": ""})
    else:
        row["epoch x"] = ci(g("speedup", np.nan), g("speedup_lo"), g("speedup_hi"))
        row["step x"] = ci(g("speedup_step", np.nan), g("speedup_step_lo"),
                           g("speedup_step_hi"))
        row["data+loop x"] = ci(g("speedup_other", np.nan), g("speedup_other_lo"),
                                g("speedup_other_hi"))
    if inter:
        row["interleaved step ms"] = 1e3 * r["step_s_interleaved"]
        row["interleaved step x"] = "(baseline)" if why == "baseline" else (
            NO_EFFECT if why else ci(r["speedup_interleaved"], r["speedup_interleaved_lo"],
                                     r["speedup_interleaved_hi"]))
    if _has(r, "float_multiple"):
        row["step / float step"] = ci(r["float_multiple"], r["float_multiple_lo"],
                                      r["float_multiple_hi"])
    if _has(r, "float_multiple_interleaved"):
        row["interleaved step / float"] = ci(r["float_multiple_interleaved"],
                                             r["float_multiple_interleaved_lo"],
                                             r["float_multiple_interleaved_hi"])
    row["compile s (first / later blocks)"] = stats.compile_seconds(ctx.table, r["model"],
                                                                    r["config"])
    row["syncs/step"] = r.get("syncs_per_step", np.nan)
    row["CUDA debug syncs/step"] = r.get("cuda_debug_syncs_per_step", np.nan)  # cross-check
    row["peak MiB"] = r.get("peak_mem_mb", np.nan)
    row["IQR/med"] = ("" if isnan(g("iqr_rel")) else f"{r['iqr_rel']:.1%}") + (
        " (!)" if g("wide_spread") is True else "")
    row["blocks"] = r.get("n_pairs", np.nan)
    return row


def speed(ctx: Context) -> tuple[str, list[str]]:
    """Per config: where the time goes (epoch / step compute / data and loop), each ratio
    with its interval, so every speedup is attributed."""
    table = drop_empty(pd.DataFrame([_speed_row(ctx, r) for _, r in ctx.summary.iterrows()]))
    iqr = (ctx.meta.get("report") or {}).get("iqr_warn", stats.IQR_WARN)
    kind = "CUDA allocator peak" if ctx.device_type == "cuda" else \
        "process peak RSS within the epoch"
    text = (f"## Speed per config: where the time goes\n\nBaseline `{ctx.baseline}`; ratios "
            f"are baseline / config (> 1: faster), geometric means over blocks "
            f"({ctx.interval_label()}; `[n/a]`: one block). **epoch**: one epoch's wall "
            f"time (train + eval + plots), what the seed measured; **step**: median compute "
            f"time of one training step (forward, backward, optimizer), i.e. the model "
            f"arithmetic; **data+loop**: the training phase minus step compute (data "
            f"loading, loader and worker start-up, loop bookkeeping). Method: epochs, each "
            f"run in a child process shared by its block, warm-up epochs and the first "
            f"epoch after a resume excluded. " + (
                f"**interleaved step**: every config's model in one process takes one "
                f"training step in turn, round after round in a shuffled order, paired "
                f"within rounds ({ctx.rounds_label()[2:]}): model arithmetic and optimizer "
                f"only, the most precise figure on a noisy machine. "
                if ctx.rounds_label() else "") + (
                "**/ float**: config step / float reference step, paired, against the float "
                "compiled as the config is (`compile_model`) where the design has both. "
                if "float_reference" in ctx.table and ctx.table["float_reference"].any()
                else "") + f"`{NO_EFFECT}`: the flags this config moves "
            f"cannot act here (this device, this model or the other flags: qvit.paths). "
            f"Peak memory: {kind}. `(!)`: epoch-time IQR/median "
            f"above {iqr:.0%}.\n\n" + md_table(table))
    findings = []
    for m in ctx.models:
        s = ctx.summary[(ctx.summary["model"] == m) &
                        ~ctx.summary["config"].isin([ctx.baseline, AA_CONTROL])]
        s = s[[ctx.no_effect(c, m) is None for c in s["config"]]]
        if "float_multiple" in s:
            s = s[s["float_multiple"].isna() | (s["float_multiple"] != 1)]
        if "speedup" in s:
            s = s[s["speedup"].notna()]
        if len(s) and "speedup" in s:
            f = s.loc[s["speedup"].idxmax()]
            findings.append(
                f"{m}: fastest config `{f['config']}`: epoch x{f['speedup']:.2f}, of which "
                f"step (arithmetic) x{f['speedup_step']:.2f} and data+loop "
                f"x{f['speedup_other']:.2f} vs {ctx.baseline}")
    return text, findings


def accuracy(ctx: Context) -> tuple[str, list[str]]:
    s = ctx.summary
    if "top1_mean" not in s:
        return "", []
    margin = ctx.report.get("margin_pp", 1.0)
    settings = ctx.meta.get("settings") or {}
    classes = settings.get("num_classes", 10)
    images = int(np.nanmedian(s["eval_images"])) if "eval_images" in s else 0
    rows, findings = [], []
    untrained = sorted(set(s.loc[s["top1_mean"].isna(), "config"]))
    s = s[s["top1_mean"].notna()]
    for _, r in s.iterrows():
        base = r["config"] == ctx.baseline
        eq = r.get("equivalent", np.nan)
        verdict = "" if base or isnan(eq) else ("equivalent" if eq else "not shown equivalent")
        rows.append({"model": r["model"], "config": r["config"],
                     "top-1 % (sd)": mean_sd(r["top1_mean"], r["top1_std"]),
                     "d top-1 pts": "" if base else pp_ci(r["top1_diff"], r["top1_diff_lo"],
                                                          r["top1_diff_hi"]),
                     f"TOST at +-{margin:g} pts": verdict,
                     "float start top-1 %": r.get("pretrained_top1", np.nan),
                     "deployed top-1 %": r.get("deployed_top1", np.nan),
                     "agreement with QAT eval": r.get("deployed_agreement", np.nan)})
        if not base and eq is False:
            findings.append(f"{r['model']}/{r['config']}: top-1 {pp(r['top1_diff'])} pts vs "
                            f"{ctx.baseline}, not shown equivalent at +-{margin:g}")
    low = s[s["top1_mean"] < 90]
    if len(low):
        findings.append("top-1 below 90% for " + ", ".join(
            f"{r.model}/{r.config} ({r.top1_mean:.1f}%)" for r in low.itertuples()))
    table = pd.DataFrame(rows)  # deployed (qvit.deploy) where runs had eval_deployed
    deployed = ""
    if not (len(table) and table["deployed top-1 %"].notna().any()):
        table = table.drop(columns=["deployed top-1 %", "agreement with QAT eval"], errors="ignore")
    elif images:
        deployed = (f" Deployed: the integer model (`qvit.deploy`) on the same images; its "
                    f"agreement with the QAT eval (the fraction of equal predictions) is the "
                    f"lowest of the runs, and {images} images bound what it can show: with "
                    f"none differing, its exact 95% interval starts at "
                    f"{100 * stats.agreement_interval(images, images)[0]:.1f}%.")
    start = "a float-pretrained start (the float twin trained on this data, calibrated)" if \
        settings.get("pretrained") else "random weights"
    text = (f"## Accuracy\n\nTop-1 after the last epoch on the whole held-out split "
            f"({images} images: one image = {100 / max(images, 1):.2f} points; chance "
            f"{100 / classes:.0f}%), from {start}. The difference to `{ctx.baseline}` is "
            f"paired within blocks ({ctx.interval_label()}); the TOST verdict asks whether "
            f"it lies within +-{margin:g} points (alpha 0.05, `harness.analysis.equivalence`)."
            f"{deployed}\n\n"
            + md_table(table)
            + (f"\n{len(untrained)} configs ran only the step-interleaved method (no "
               "training run, no accuracy here); what they do to the numbers is measured by "
               "`harness parity` (bitwise, per flag).\n" if untrained else ""))
    return text, findings


def _per_flag(ctx: Context) -> pd.DataFrame:
    """One row per (model, flag) for one-at-a-time / leave-one-out designs."""
    kind = ctx.meta["kind"]
    rows = []
    for _, r in ctx.summary.iterrows():
        c = ctx.configs.get(r["config"])
        if c is None or not c.flag:
            continue
        flip = kind == "leave_one_out"  # the config switched the flag off
        inv = (lambda v: 1 / v) if flip else (lambda v: v)
        lo, hi = ("speedup_hi", "speedup_lo") if flip else ("speedup_lo", "speedup_hi")
        slo, shi = ("speedup_step_hi", "speedup_step_lo") if flip else \
            ("speedup_step_lo", "speedup_step_hi")
        why = ctx.no_effect(r["config"], r["model"])
        rows.append({"model": r["model"], "flag": c.flag,
                     "change": Flags.spec(c.flag).change or "",
                     "move": c.note.split(": ", 1)[-1],
                     "flag_speedup": inv(r.get("speedup", np.nan)),
                     "flag_speedup_lo": inv(r.get(lo, np.nan)),
                     "flag_speedup_hi": inv(r.get(hi, np.nan)),
                     "step": inv(r.get("speedup_step", np.nan)),
                     "step_lo": inv(r.get(slo, np.nan)), "step_hi": inv(r.get(shi, np.nan)),
                     "no_effect": why or "",
                     **_interleaved_flag(r, flip),
                     "top1_diff": r.get("top1_diff", np.nan) * (-1 if flip else 1)})
    return pd.DataFrame(rows)


def _interleaved_flag(r: pd.Series, flip: bool) -> dict[str, float]:
    v, lo, hi = (r.get(f"speedup_interleaved{x}", np.nan) for x in ("", "_lo", "_hi"))
    if flip:
        v, lo, hi = 1 / v, 1 / hi, 1 / lo
    return {"interleaved": v, "interleaved_lo": lo, "interleaved_hi": hi}


def per_flag(ctx: Context) -> tuple[str, list[str]]:
    if ctx.meta["kind"] not in ("one_at_a_time", "leave_one_out"):
        return "", []
    pf = _per_flag(ctx)
    if pf.empty:
        return "", []
    write_text(ctx.folder / "per_flag.csv", pf.to_csv(index=False))
    live = pf[(pf["no_effect"] == "") & pf["flag_speedup"].notna()]
    if len(live) and ctx.figures:
        ctx.figs["flags"] = figures.flag_speedup(
            live, ctx.folder / "fig_flag_speedup.png", "epoch speedup of the flag (x)")
    show = pd.DataFrame({
        "model": pf["model"], "flag": pf["flag"], "change": pf["change"], "move": pf["move"],
        "epoch x": [NO_EFFECT if w else ci(a, b, c) for a, b, c, w in zip(
            pf["flag_speedup"], pf["flag_speedup_lo"], pf["flag_speedup_hi"], pf["no_effect"],
            strict=True)],
        "step x": ["" if w else ci(a, b, c) for a, b, c, w in zip(
            pf["step"], pf["step_lo"], pf["step_hi"], pf["no_effect"], strict=True)],
        "interleaved step x": ["" if w else ci(a, b, c) for a, b, c, w in zip(
            pf["interleaved"], pf["interleaved_lo"], pf["interleaved_hi"], pf["no_effect"],
            strict=True)],
        "d top-1 pts": [pp(v) for v in pf["top1_diff"]]})
    show = drop_empty(show)
    if ctx.parity is not None and {"model", "flag"} <= set(ctx.parity):
        pcols = [c for c in ("model", "flag", "expected_class", "measured_class")
                 if c in ctx.parity]
        show = show.merge(ctx.parity[pcols].drop_duplicates(["model", "flag"]),
                          on=["model", "flag"], how="left")
    text = ("## Per-flag speedup\n\nOne config per flag, moved alone; epoch and step "
            f"(arithmetic) ratios ({ctx.interval_label()}{ctx.rounds_label()}); a flag "
            "that acts inside the model has its interleaved step ratio and, where the design "
            "runs whole epochs only for loop flags, no epoch ratio. Measured parity beside it "
            "where "
            "`parity.csv` is present.\n\n" + md_table(show)
            + (f"\n![per-flag speedup]({ctx.figs['flags']})\n" if "flags" in ctx.figs else "")
            + _not_run_text(ctx))
    findings = []
    for col, what in (("flag_speedup", "epoch"), ("interleaved", "interleaved step")):
        ranked = _clear_effects(pf, col)
        if len(ranked):
            findings.append(f"flags with the largest {what} effect whose interval excludes 1 "
                            "(geometric mean over models): " + ", ".join(
                                f"{f} x{v:.2f}" for f, v in ranked.head(3).items()))
    return text, findings


def _not_run_text(ctx: Context) -> str:
    """The one-flag configs the design left out: their move runs the base's code."""
    skipped = ctx.meta.get("not_run") or {}
    rows = pd.DataFrame({"config": list(skipped), "timed": NO_EFFECT,
                         "why (qvit.paths)": list(skipped.values())})
    return ("\nNot run: these moves leave every code path of the base as it is (on every "
            "model of the design): nothing to time.\n\n" + md_table(rows)) if skipped else ""


def _clear_effects(pf: pd.DataFrame, col: str) -> pd.Series:
    """Per flag, the geometric mean over models of ``col`` where its interval excludes 1 on
    every model measured, largest effect first."""
    live = pf[(pf["no_effect"] == "") & pf[col].notna()]
    clear = live.groupby("flag").filter(
        lambda g: bool(((g[f"{col}_lo"] > 1) | (g[f"{col}_hi"] < 1)).all()))
    if clear.empty:
        return pd.Series(dtype=float)
    return clear.groupby("flag")[col].apply(lambda v: float(np.exp(np.log(v).mean()))
                                            ).sort_values(key=lambda v: -np.abs(np.log(v)))


def effects(ctx: Context) -> tuple[str, list[str]]:
    levels = {c.name: c.levels for c in ctx.meta["configs"] if c.levels and c.in_design}
    if ctx.meta["kind"] not in ("factorial", "fractional") or not levels:
        return "", []
    eff = stats.effects(ctx.by_epochs, levels)
    if eff.empty:
        return "", []
    write_text(ctx.folder / "effects.csv", eff.to_csv(index=False))
    if ctx.figures:
        ctx.figs["effects"] = figures.effects(eff, ctx.folder / "fig_effects.png")
    e = eff[eff["response"].isin(["epoch_s", "top1"])].copy()
    e["estimate [95% CI]"] = [
        ci(r.factor, r.factor_lo, r.factor_hi, suffix="x") if r.response != "top1"
        else f"{pp_ci(r.effect, r.effect_lo, r.effect_hi)} pts" for r in e.itertuples()]
    e = e[["model", "response", "term", "kind", "estimate [95% CI]", "p", "dof"]]
    inter = eff["kind"].eq("interaction").any()
    text = ("## Flag effects\n\nLeast squares over all measured runs with block terms; each "
            "flag coded -1 (low) / +1 (high). Epoch time is fit on the log scale (effect = "
            "time at low / time at high: > 1 means the high level is faster); top-1 is a "
            "difference in points. " + ("Two-flag interactions are resolved and estimated."
                                        if inter else "Main effects only (this design "
                                        "aliases two-flag interactions).")
            + "\n\n" + md_table(e)
            + (f"\n![effects]({ctx.figs['effects']})\n" if "effects" in ctx.figs else ""))
    clear = eff[(eff["response"] == "epoch_s") & ((eff["factor_lo"] > 1) | (eff["factor_hi"] < 1))]
    top = (clear.groupby("term")["effect"]
           .apply(lambda v: float(np.mean(v))).sort_values(key=lambda v: -v.abs()))
    return text, ["largest effects on epoch time whose interval excludes 1: " + ", ".join(
        f"{t} x{math.exp(-v):.2f}" for t, v in top.head(3).items())] if len(top) else []


def parity(ctx: Context) -> tuple[str, list[str]]:
    if ctx.parity is None or ctx.meta["kind"] in ("one_at_a_time", "leave_one_out"):
        return "", []
    keep = [c for c in SHOWN_COLUMNS if c in ctx.parity]
    return "## Parity (harness parity)\n\n" + md_table(ctx.parity[keep]), []


def distributions(ctx: Context) -> tuple[str, list[str]]:
    epochs = stats.measured(ctx.by_epochs)
    if epochs.empty or not ctx.figures:
        return "", []
    ctx.figs["times"] = figures.epoch_times(epochs, ctx.order, ctx.folder / "fig_times.png")
    text = ("## Time distributions\n\nEvery measured epoch of every run.\n\n"
            f"![epoch and train times]({ctx.figs['times']})\n")
    if "top1_diff" in ctx.summary and ctx.summary["top1_diff"].notna().any():
        ctx.figs["acc"] = figures.accuracy_vs_speed(
            ctx.summary[ctx.summary["config"] != AA_CONTROL], ctx.baseline,
            ctx.folder / "fig_accuracy_vs_speed.png")
        text += f"\n![accuracy vs speed]({ctx.figs['acc']})\n"
    return text, []


def comparison(ctx: Context) -> tuple[str, list[str]]:
    """Committed reference results beside the fresh ones, labelled as such."""
    other = ctx.report.get("compare_with")
    if not other:
        return "", []
    path = Path(other)
    if not (path / "design.json").is_file() or path.resolve() == ctx.folder.resolve():
        return "", []
    from harness.analysis.report import load_design_table

    meta, table, _ = load_design_table(path)
    ref = stats.summarize(table, meta["baseline"])
    prov = provenance(table)
    rows = []
    for _, r in ctx.summary.iterrows():
        q = ref[(ref["model"] == r["model"]) & (ref["config"] == r["config"])]
        if len(q):
            q = q.iloc[0]
            row = {"model": r["model"], "config": r["config"]}
            for col, name in (("speedup", "epoch x"), ("speedup_step", "step x"),
                              ("speedup_interleaved", "interleaved step x")):
                for where, x in (("here", r), ("reference", q)):
                    row[f"{name} ({where})"] = ci(x.get(col, np.nan), x.get(f"{col}_lo"),
                                                  x.get(f"{col}_hi"))
            rows.append(row)
    if not rows:
        return "", []
    # compare_with is named from the working directory; the link is read from this report
    link = Path(os.path.relpath(path.resolve(), ctx.folder.resolve())).as_posix()
    text = (f"## Beside the committed reference results\n\nThe reference figures come from "
            f"[{other}]({link}) — measured "
            f"on {prov.get('machine', '?')} at commit {prov.get('git_commit', '?')} "
            f"({prov.get('dates', '?')}), not on this machine. Compare ratios, not seconds.\n\n"
            + md_table(drop_empty(pd.DataFrame(rows))))
    return text, []


def warnings(ctx: Context) -> tuple[str, list[str]]:
    out = []
    spread = ctx.summary[ctx.summary["wide_spread"].fillna(False).astype(bool)] \
        if "wide_spread" in ctx.summary else ctx.summary.iloc[:0]
    for r in spread.itertuples():
        out.append(f"{r.model}/{r.config}: epoch-time IQR/median {r.iqr_rel:.1%}; treat its "
                   f"ratio with care")
    failed = ctx.table[ctx.table["status"].fillna("ok") != "ok"]
    for rid, g in failed.groupby("run_id"):
        last = (str(g["error"].iloc[0]).strip().splitlines() or [""])[-1]  # the exception
        out.append(f"run {rid}: {g['status'].iloc[0]}: {last[:200]}")
    if ctx.n_blocks < 2 and len(ctx.by_epochs):
        out.append("one block only: no intervals; use repeats >= 2 (>= 5 for references)")
    if ctx.ignored:
        out.append(f"{ctx.ignored} rows in this folder's table belong to runs of other "
                   f"identities (older code or settings) and are not used")
    if not out:
        return "", []
    return "## Warnings\n\n" + "\n".join(f"- {w}" for w in out) + "\n", []


def provenance(table: pd.DataFrame) -> dict[str, str]:
    out = {}
    for col, name in (("git_commit", "git_commit"), ("git_dirty", "dirty tree"),
                      ("device_name", "machine"), ("torch_version", "torch"),
                      ("timm_version", "timm"), ("code_digest", "code digest"),
                      ("threads", "torch threads")):
        if col in table:
            vals = [str(v) for v in dict.fromkeys(table[col].dropna()) if str(v) != ""]
            if vals:
                out[name] = ", ".join(vals[:3]) + (" ..." if len(vals) > 3 else "")
    if "ended" in table:
        ended = sorted(v for v in table["ended"].dropna() if v)
        if ended:
            out["dates"] = f"{ended[0][:16]} .. {ended[-1][:16]}"
    return out


def _epoch_setup(ctx: Context, st: dict) -> list[tuple[str, str]]:
    return [("data", f"{st.get('dataset')}, batch {st.get('batch_size')}, "
                     f"{st.get('steps_per_epoch') or 'all'} steps/epoch, eval on "
                     f"{st.get('eval_steps') or 'the whole held-out split'}"),
            ("epochs", f"{st.get('epochs')} per run ({st.get('warmup_epochs')} warm-up, not "
                       f"measured{budget.warmup_text(ctx.by_epochs)})"),
            ("blocks", f"{ctx.n_blocks} (each: every model x config, shuffled, one process)"),
            ("a run costs", budget.cost_text(budget.run_costs(ctx.by_epochs)))]


def setup(ctx: Context) -> str:
    st = ctx.meta.get("settings") or {}
    prov = provenance(ctx.table)
    rows = [("spec", "[spec.toml](spec.toml)" if (ctx.folder / "spec.toml").is_file() else
             "none: `harness run` (the command is in the description)"),
            ("design", f"{ctx.meta['kind']}, {len(ctx.order)} configs"
             + (" (incl. the A/A control)" if AA_CONTROL in ctx.order else "")
             + f", baseline `{ctx.baseline}`"),
            ("models", ", ".join(ctx.models)),
            *(_epoch_setup(ctx, st) if len(ctx.by_epochs) else
              [("data", f"{st.get('dataset')}, batch {st.get('batch_size')}"),
               ("method", f"steps only{ctx.rounds_label()} (no whole epochs)")]),
            ("start", "float-pretrained + calibrated" if st.get("pretrained") else "random"),
            ("device", f"{st.get('device')}; deterministic algorithms "
                       f"{'on' if st.get('deterministic') else 'off'}"
                       + ("; glibc keeps freed memory (malloc_retain)"
                          if st.get("malloc_retain") else "")),
            *prov.items()]
    return md_table(pd.DataFrame(rows, columns=["", "value"]))


def method(ctx: Context) -> tuple[str, list[str]]:
    return ("## Method\n\nEvery repeat is a block holding every (model, config) run in an "
            "order shuffled per block (seeded), run one after another in one process, so "
            "drift falls on all configs alike; configs within a block share the training "
            "seed and data order. A run's epoch time is the median of its measured epochs; "
            "its step time is the median of every measured step (counted-sync steps left "
            "out). A ratio is the geometric mean over blocks of baseline / config with a "
            f"{stats.INTERVAL_METHOD} interval (Student t, n - 1 degrees of freedom). Rows "
            "are used only if their run id (a digest of settings, flags, code, library "
            "versions and machine) belongs to this design.\n"), []


SECTIONS = (budget.reliability, timeline, speed, accuracy, per_flag, effects, parity, comparison,
            distributions, warnings, method)
