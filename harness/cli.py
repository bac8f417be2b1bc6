"""``python -m harness``: ``run`` (train configs of one model, record the table, report),
``ablate`` (a declarative spec), ``compare`` (two results: faster, slower or the same),
``report``, ``parity``, ``pretrain``.

    python -m harness run --model ivit_micro --flags seed --epochs 3 --out runs/demo
    python -m harness run --model swin_micro --flags legacy --flags seed --flags fast=best \\
        --repeats 5 --steps-per-epoch 10 --out runs/cmp
    python -m harness ablate ablations/seed_timeline.toml --device cpu
    python -m harness compare runs/before runs/after --fail-slower 5%

``run`` is an explicit ``configs`` design built from the command line: it goes through the
same validation, sweep and report as ``ablate`` (one declaration of run settings,
`harness.spec.settings.RunSettings`, generates the options of both).
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path
from typing import Any

from harness.errors import friendly_errors
from harness.spec.options import add_options, values_from_args
from harness.spec.settings import RunSettings

__all__ = ["main", "run_parser", "ablate_parser", "compare_parser", "spec_from_args",
           "prepare_ablate"]

_DISPATCH = {"report": "harness.analysis.report", "parity": "harness.parity",
             "pretrain": "harness.sweep.pretrain"}


def run_parser(prog: str = "python -m harness run") -> argparse.ArgumentParser:
    from qvit.flags import PRESETS, Flags

    p = argparse.ArgumentParser(
        prog=prog, description="Train and evaluate configs (flag sets) of a model, each "
        "repeat block in one process, record one row per epoch to OUT/runs.parquet and "
        "OUT/runs.csv, and write OUT/report.md. Rerunning the same command skips finished "
        "runs.")
    p.add_argument("--flags", action="append", metavar="[NAME=]SPEC", help=(
        f"a config: a preset ({', '.join(PRESETS)}) with overrides, e.g. "
        f"'seed,use_frexp=true'; 'NAME=SPEC' names it (default: its spelling); repeat for "
        f"several configs (default: best). Flags: {', '.join(Flags.names())}"))
    p.add_argument("--float-reference", action="store_true",
                   help="add a config 'float': the float timm model of the same architecture")
    p.add_argument("--aa-control", action="store_true",
                   help="add the null control: the first config a second time (A/A)")
    p.add_argument("--repeats", type=int, default=1, help="repeat blocks (every config "
                   "once per block, training seed + block; >= 2 for intervals)")
    p.add_argument("--out", required=True, help="output folder (table, report)")
    add_options(p, RunSettings)
    _add_executor_options(p)
    return p


def _add_executor_options(p: argparse.ArgumentParser) -> None:
    from harness.spec.executor import ExecutorOptions

    add_options(p, ExecutorOptions, exclude=("setup", "poll_s"),
                title="executor (over the spec's [executor] table)")


def _configs(args) -> list[dict]:
    from qvit.flags import Flags

    out = []
    for text in args.flags or ([] if args.float_reference else ["best"]):
        name, spec = None, text
        head = text.split(",", 1)[0]
        if "=" in head and head.split("=", 1)[0] not in Flags.names():
            name, spec = text.split("=", 1)
        out.append({"name": name or Flags.parse(spec).describe(), "flags": spec})
    if args.float_reference:
        out.append({"name": "float", "flags": "best", "float_reference": True})
    return out


def spec_from_args(args, argv: list[str] | None = None):
    """The `AblationSpec` of a parsed ``run`` command (validated like a spec file);
    ``argv`` (default: this process's) is the command line its description quotes."""
    from harness.spec.ablation import parse_spec

    settings = values_from_args(RunSettings, args)
    model = settings.pop("model", RunSettings.model_fields["model"].default)
    if "warmup_epochs" not in settings and settings.get("epochs") == 1:
        settings["warmup_epochs"] = 0  # one epoch: nothing to warm up with
    return parse_spec({"name": Path(args.out).name or "run",
                       "description": "harness run " + " ".join(
                           sys.argv[2:] if argv is None else argv),
                       "run": {**settings, "models": [model], "repeats": args.repeats},
                       "design": {"kind": "configs", "configs": _configs(args),
                                  "aa_control": args.aa_control}}, min_repeats=1)


@friendly_errors
def cmd_run(argv: list[str]) -> int:
    from harness.spec.executor import options_from
    from harness.spec.planning import read_design

    args = run_parser().parse_args(argv)
    spec = spec_from_args(args, argv)
    executor = options_from(None, args)
    from harness import records  # torch and timm load from here on, after every check
    from harness.pipeline import run_spec

    _print_report(run_spec(spec, Path(args.out), executor, command='run'))

    table = records.read_table(args.out)
    ids = set((read_design(args.out) or {}).get("run_ids") or table["run_id"])
    bad = table[(table["status"] != "ok") & table["run_id"].isin(ids)]  # this design's runs
    for _, r in bad.iterrows():
        last = str(r["error"]).splitlines()[-1] if r["error"] else ""
        print(f"run {r['run_id']} epoch {r['epoch']}: {r['status']}: {last}", file=sys.stderr)
    return 1 if len(bad) else 0


def ablate_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m harness ablate",
                                description="Run an ablation spec and write its report.")
    p.add_argument("spec", help="ablation spec (TOML), e.g. ablations/seed_timeline.toml")
    p.add_argument("--out", help="output folder (default runs/<spec name>/; the committed "
                   "reference results live in results/<machine>/<spec name>/)")
    p.add_argument("--repeats", type=int, help="override [run].repeats (blocks)")
    p.add_argument("--models", help="override [run].models (comma separated)")
    p.add_argument("--dry-run", action="store_true", help="print configs and plan, run nothing")
    p.add_argument("--no-report", action="store_true", help="do not write the report")
    add_options(p, RunSettings, exclude=("model",))  # any run setting, over the spec's
    _add_executor_options(p)  # --executor local|slurm|..., --partition, --gpus-per-job, ...
    return p


def prepare_ablate(argv: list[str] | None) -> tuple[Any, Any, Path, argparse.Namespace]:
    """Parse and validate everything (no torch yet): the spec, the executor, the folder."""
    from harness.spec.ablation import load_spec
    from harness.spec.executor import options_from

    args = ablate_parser().parse_args(argv)
    spec = load_spec(args.spec)
    models = tuple(m.strip() for m in args.models.split(",")) if args.models else None
    spec = spec.replace(models=models, repeats=args.repeats,
                        **values_from_args(RunSettings, args))
    executor = options_from(spec.executor, args)
    out = Path(args.out) if args.out else Path("runs") / spec.name
    return spec, executor, out, args


@friendly_errors
def cmd_ablate(argv: list[str]) -> int:
    from harness.spec import design_configs, format_plan, plan

    spec, executor, out, args = prepare_ablate(argv)
    configs = design_configs(spec)
    print(format_plan(spec, configs, plan(spec, configs)))
    if args.dry_run:
        return 0
    from harness.pipeline import run_spec  # torch and timm load here, after every check

    path = run_spec(spec, out, executor, report=not args.no_report)
    if path is not None:
        _print_report(path)
    return 0


def _print_report(path: Path) -> None:
    """The report's path and its findings (report.json), for logs that show nothing else:
    nox's, a Slurm job's, CI's."""
    print(f"report: {path}")
    summary = Path(path).with_name("report.json")
    if summary.is_file():
        for finding in json.loads(summary.read_text()).get("findings", []):
            print(f"  - {finding}")


def compare_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m harness compare", description=(
            "Compare two results of the same design, B against A: per (model, config) the "
            "ratio B/A of epoch, step and interleaved step time with t intervals, the top-1 "
            "difference with its TOST verdict, and a verdict (faster / slower / same within "
            "the A/A noise). Only the code may differ: rows of another machine, run settings "
            "or library versions are refused."))
    p.add_argument("a", metavar="A", help="the base: a results folder, FOLDER@REV (its rows "
                   "measured at git revision REV) or a revision of B's folder")
    p.add_argument("b", metavar="B", help="compared with A: a folder, FOLDER@REV or a "
                   "revision of A's folder")
    p.add_argument("--fail-slower", metavar="PCT", help="exit 1 when any ratio's interval "
                   "lies wholly above 1 + PCT (B slower by more than PCT), e.g. 5%%")
    p.add_argument("--out", metavar="FILE.md", help="also write the table there, and the "
                   "figure of the ratios beside it (FILE.png)")
    return p


@friendly_errors
def cmd_compare(argv: list[str]) -> int:
    from harness.analysis import compare as cmp
    from harness.records.files import write_text

    args = compare_parser().parse_args(argv)
    threshold = cmp.parse_percent(args.fail_slower) if args.fail_slower else None
    a = cmp.load_side(args.a, other=args.b)
    b = cmp.load_side(args.b, other=args.a)
    result = cmp.compare(a, b)
    figure = None
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        figure = cmp.plot_ratios(result, out.with_suffix(".png")).name
    text = cmp.to_markdown(result, a, b, figure)
    print(text)
    if args.out:
        write_text(args.out, text)
    if threshold is None:
        return 0
    slower = cmp.slower_than(result, threshold)
    for line in slower:
        print(f"slower: {line}", file=sys.stderr)
    return 1 if slower else 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = ["run", "ablate", "compare", *_DISPATCH]
    if not argv or argv[0] in ("-h", "--help"):
        print(f"usage: python -m harness {{{','.join(commands)}}} ...\n\n{__doc__}")
        return 0 if argv else 2
    cmd, rest = argv[0], argv[1:]
    if cmd == "run":
        return cmd_run(rest)
    if cmd == "ablate":
        return cmd_ablate(rest)
    if cmd == "compare":
        return cmd_compare(rest)
    if cmd in _DISPATCH:
        return int(importlib.import_module(_DISPATCH[cmd]).main(rest) or 0)
    print(f"error: unknown command {cmd!r}; use one of: {', '.join(commands)}",
          file=sys.stderr)
    return 2
