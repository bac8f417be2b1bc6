"""Reports of ablation runs: ``<folder>/report.md`` with tables and seaborn figures.

`build_report(folder)` reads the design the ablation saved (``design.json``: configs, run
settings, and the run ids of this design) and the runs table, keeps the rows of this design's
runs (rows of other identities are counted and named, never used), computes the statistics
(`harness.analysis.stats`) and writes ``summary.csv``, the figures, ``report.md`` and
``report.json``, section by section (`sections.SECTIONS`). It writes only inside
``folder``. `write_index(root)` writes ``root/README.md`` listing the reports below a
results root the user names:
``python -m harness report --index results``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import pandas as pd

from harness import records
from harness.analysis import stats
from harness.analysis.report import budget, sections
from harness.analysis.report.fmt import md_table
from harness.errors import friendly_errors
from harness.records.files import write_text
from harness.records.outdir import harness_folder
from harness.spec.planning import read_design

__all__ = ["build_report", "write_index", "load_design_table", "main", "md_table"]


def load_design_table(folder: Path) -> tuple[dict[str, Any], pd.DataFrame, int]:
    """(design, this design's rows, number of rows of other identities) of a folder."""
    meta = read_design(folder)
    if meta is None:
        raise ValueError(f"{folder} has no design.json: `harness report` reads folders "
                         f"written by `harness ablate` or `harness run`")
    table = records.read_table(folder)
    ids = set(meta.get("run_ids") or table["run_id"])
    mine = table[table["run_id"].isin(ids)].reset_index(drop=True)
    return meta, mine, len(table) - len(mine)


def _device_type(table: pd.DataFrame) -> str:
    names = [str(n) for n in table.get("device_name", pd.Series(dtype=str)).unique()]
    return "cuda" if any(n and not n.startswith(("cpu", "Apple")) for n in names) else "cpu"


def build_report(folder: str | Path, *, figures: bool = True) -> Path:
    """Compute the statistics of ``folder``'s design and write its report (inside
    ``folder`` only; ``figures=False``: tables only); returns the path of report.md."""
    folder = Path(folder)
    meta, table, ignored = load_design_table(folder)
    order = [c.name for c in meta["configs"] if c.name in set(table["config"])]
    rep = meta.get("report") or {}
    ok = table[table["status"].fillna("ok") == "ok"]
    summary = stats.summarize(ok if len(ok) else table, meta["baseline"],
                              iqr_warn=rep.get("iqr_warn", stats.IQR_WARN),
                              margin=rep.get("margin_pp", 1.0)) if len(ok) else pd.DataFrame()
    title = rep.get("title") or f"Ablation: {meta['name']}"
    lines = [f"# {title}\n", (meta.get("description") or "") + "\n"]
    if summary.empty:  # every run failed: say so instead of a report of nothing
        ctx = sections.Context(folder, meta, table, ignored, summary, order, None, "cpu")
        body, _ = sections.warnings(ctx)
        lines += ["No run finished an epoch; nothing to compare.\n", body]
        return _write(folder, lines, _findings_json(meta["name"], title, ctx, []))
    rank = {c: i for i, c in enumerate(order)}
    summary = summary.sort_values(["model", "config"], key=lambda s: s.map(rank)
                                  if s.name == "config" else s).reset_index(drop=True)
    write_text(folder / "summary.csv", summary.to_csv(index=False))
    parity = pd.read_csv(folder / "parity.csv") if (folder / "parity.csv").is_file() else None
    ctx = sections.Context(folder, meta, table, ignored, summary, order, parity,
                           _device_type(table), figures)
    findings: list[str] = []
    body: list[str] = []
    for section in sections.SECTIONS:
        text, found = section(ctx)
        findings += found
        if text:
            body.append(text)
    lines += ["## Key findings\n", *[f"- {f}" for f in findings], "",
              "## Setup\n", sections.setup(ctx), *body,
              "## Raw tables\n\n- [runs.parquet](runs.parquet), [runs.csv](runs.csv) (every "
              "epoch of every run)\n- [summary.csv](summary.csv) (per model x config)\n"
              "- [design.json](design.json)\n"]
    return _write(folder, lines, _findings_json(meta["name"], title, ctx, findings))


def _write(folder: Path, lines: list[str], findings_json: str) -> Path:
    path = write_text(folder / "report.md", "\n".join(lines))
    write_text(folder / "report.json", findings_json)
    return path


# Every index the harness writes says how it was made; a README.md without it is someone's own.
INDEX_SIGNATURE = "`python -m harness report --index"


def write_index(root: str | Path) -> Path:
    """``root/README.md``: one entry per report folder below ``root`` at any depth (e.g.
    ``results/<machine>/<report>/``), then the parity tables and the notes (other
    Markdown files) found there."""
    root = Path(root)
    index = _index_path(root)
    entries = [(rj.parent.relative_to(root).as_posix(), json.loads(rj.read_text()))
               for rj in sorted(root.rglob("report.json"))]
    lines = ["# Results\n", "Reports written by `harness ablate` / `harness run`, one folder "
             "per machine and report (`<machine>/<report>/`); each says where its figures "
             "came from. Rebuild them from their tables with `nox -s report` (this index: "
             f"{INDEX_SIGNATURE} results`).\n"]
    if entries:
        lines += ["| report | design | models | detection limit (A/A) | machine | dates | "
                  "commit |", "|---|---|---|---|---|---|---|"]
        for name, info in entries:
            lines.append(f"| [{name}]({name}/report.md): {info.get('title') or name} | "
                         f"{info.get('kind', '')} | {', '.join(info.get('models', []))} | "
                         f"{_index_limits(info.get('detection_limits') or {})} | "
                         f"{info.get('machine') or ''} | {info.get('dates') or ''} | "
                         f"{(info.get('commit') or '')[:10]} |")
        lines.append("")
        for name, info in entries:
            if info.get("findings"):
                lines.append(f"**{name}**: " + "; ".join(info["findings"]) + "\n")
    else:
        lines.append("_No reports yet._\n")
    reports = {root / name for name, _ in entries}
    others = [("Parity tables", [p for p in sorted(root.rglob("parity.csv"))
                                 if p.parent not in reports]),
              ("Notes", [p for p in sorted(root.rglob("*.md")) if p.parent not in reports
                         and p != root / "README.md"])]
    for title, paths in others:
        if paths:
            lines += [f"## {title}\n", *[f"- [{p.relative_to(root).as_posix()}]"
                                          f"({p.relative_to(root).as_posix()})" for p in paths],
                      ""]
    return write_text(index, "\n".join(lines))


def _index_path(root: Path) -> Path:
    """root/README.md, refused before any work when it is not the harness's own index."""
    if not root.is_dir():
        raise ValueError(f"--index {root}: no such folder; name an existing results root "
                         f"(the parent of report folders)")
    index = root / "README.md"
    if index.exists() and INDEX_SIGNATURE not in index.read_text(errors="replace"):
        raise ValueError(f"{index} exists and is not an index the harness wrote (no "
                         f"{INDEX_SIGNATURE!r} in it): name a results root whose README.md "
                         f"the harness wrote, or move that README.md away")
    return index


def _index_limits(limits: dict[str, dict[str, float]]) -> str:
    """The largest detection limit over models, per measure: none larger is missed."""
    worst: dict[str, float] = {}
    for by_measure in limits.values():
        for measure, v in by_measure.items():
            worst[measure] = max(v, worst.get(measure, 0.0))
    return budget.limit_text(worst)


@friendly_errors
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m harness report",
                                description="Rebuild reports from recorded tables.")
    p.add_argument("dirs", nargs="*", help="report folders (written by harness ablate/run)")
    p.add_argument("--no-figures", action="store_true", help="tables only (quicker)")
    p.add_argument("--index", metavar="ROOT", help="also write ROOT/README.md listing the "
                   "reports in ROOT's subfolders (a results root you name)")
    args = p.parse_args(argv)
    if not args.dirs and not args.index:
        p.error("name report folders to rebuild, or --index ROOT to index a results root")
    if args.index:
        _index_path(Path(args.index))
    for d in map(Path, args.dirs):
        if not d.is_dir():
            raise ValueError(f"no folder {str(d)!r}")
        if not harness_folder(d):
            raise ValueError(f"{d} is not a folder written by the harness (no .harness.json "
                             f"and no design.json of a sweep): name one that `harness run` or "
                             f"`harness ablate` wrote")
        print(f"report: {build_report(d, figures=not args.no_figures)}")
    if args.index:
        print(f"index: {write_index(args.index)}")
    return 0


def _findings_json(name: str, title: str, ctx: sections.Context, findings: list[str]) -> str:
    prov = sections.provenance(ctx.table)
    limits = budget.limits_by_model(budget.detection_limits(ctx.summary))
    return json.dumps({"name": name, "title": title, "kind": ctx.meta["kind"],
                       "models": ctx.models, "findings": findings,
                       "detection_limits": limits,
                       "machine": prov.get("machine"), "dates": prov.get("dates"),
                       "commit": prov.get("git_commit")}, indent=1) + "\n"
