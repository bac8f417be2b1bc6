"""``python -m harness``: ``run`` (train configs, record the table), and ``ablate``,
``report``, ``parity`` (dispatched to their modules).

    python -m harness run --model ivit_micro --flags seed --epochs 3 --out runs/demo
    python -m harness run --model swin_micro --flags legacy --flags seed --flags fast=best \\
        --repeats 2 --steps-per-epoch 10 --out runs/cmp
    python -m harness ablate ablations/seed_timeline.toml --device cpu
"""

from __future__ import annotations

import argparse
import importlib
import sys

__all__ = ["main", "build_run_parser", "specs_from_args"]

_DISPATCH = {"ablate": "harness.ablate", "report": "harness.report", "parity": "harness.parity"}


def _positive(text: str) -> int:
    v = int(text)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return v


def build_run_parser(prog: str = "python -m harness run") -> argparse.ArgumentParser:
    from qvit import PRESETS, Flags

    from .data import DATASETS

    p = argparse.ArgumentParser(
        prog=prog, description="Train and evaluate configs (flag sets) of a model, one process "
        "per run, and record one row per epoch to OUT/runs.parquet and OUT/runs.csv. "
        "Rerunning the same command skips finished runs.")
    p.add_argument("--model", required=True, help="qvit model (e.g. ivit_micro, swin_micro, "
                   "deit_tiny_patch16_224) or package.module:factory")
    p.add_argument("--flags", action="append", metavar="[NAME=]SPEC", help=(
        f"a config: a preset ({', '.join(PRESETS)}) with overrides, e.g. "
        f"'seed,use_frexp=true'; 'NAME=SPEC' names it (default: its spelling); repeat for "
        f"several configs. Flags: {', '.join(Flags.names())}"))
    p.add_argument("--float-reference", action="store_true",
                   help="add a config 'float': the float timm model of the same architecture")
    p.add_argument("--set", action="append", default=[], metavar="FLAG=VALUE",
                   help="override one flag in every config (e.g. num_workers=0)")
    p.add_argument("--dataset", default="digits", choices=DATASETS,
                   help="digits (embedded, default), cifar10, cifar100, imagefolder, synthetic")
    p.add_argument("--data-dir", help="where CIFAR (python archive) or the ImageFolder tree is")
    p.add_argument("--img-size", type=_positive, help="build the model for this input size")
    p.add_argument("--num-classes", type=_positive,
                   help="classes of the model head (default: the dataset's)")
    p.add_argument("--epochs", type=_positive, default=3)
    p.add_argument("--warmup-epochs", type=int, default=None,
                   help="first epochs marked warm-up in the table (default 1, or 0 when "
                        "--epochs is 1)")
    p.add_argument("--steps-per-epoch", type=_positive, help="cap training steps per epoch")
    p.add_argument("--eval-steps", type=_positive, help="cap evaluation batches")
    p.add_argument("--batch-size", type=_positive, default=64)
    p.add_argument("--eval-batch-size", type=_positive)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--opt", default="adamw", help="timm optimizer name (create_optimizer_v2)")
    p.add_argument("--sched", default="cosine",
                   help="timm scheduler name (create_scheduler_v2), or none")
    p.add_argument("--lr-warmup-epochs", type=int, default=0)
    p.add_argument("--min-lr", type=float, default=0.0)
    p.add_argument("--clip-grad", type=float, help="clip the gradient norm to this")
    p.add_argument("--smoothing", type=float, default=0.0, help="label smoothing")
    p.add_argument("--mixup", type=float, default=0.0, help="timm Mixup alpha")
    p.add_argument("--cutmix", type=float, default=0.0, help="timm CutMix alpha")
    p.add_argument("--ema", type=float, default=0.0, metavar="DECAY",
                   help="keep a timm ModelEmaV3 with this decay and evaluate it")
    p.add_argument("--repeats", type=_positive, default=1,
                   help="repeat blocks: every config once per block, with seed+block")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N, mps or auto")
    p.add_argument("--count-syncs", default="warmup", choices=("warmup", "all", "off"),
                   help="epochs in which host syncs are counted (default: warm-up)")
    p.add_argument("--sync-count-steps", type=int, default=8,
                   help="steps counted per counted epoch (0: all of them)")
    p.add_argument("--compile-backend", default="inductor")
    p.add_argument("--executor", default="local", choices=("local", "inline"),
                   help="local: one process per run (default); inline: in this process")
    p.add_argument("--out", required=True, help="output folder (table, plots, specs)")
    p.add_argument("--no-progress", action="store_true")
    return p


def _configs(args) -> list[tuple[str, object]]:
    from qvit import Flags

    out = []
    for text in args.flags or ([] if args.float_reference else ["best"]):
        name, spec = None, text
        head = text.split(",", 1)[0]
        if "=" in head and head.split("=", 1)[0] not in Flags.names():
            name, spec = text.split("=", 1)
        flags = Flags.parse(spec)
        out.append((name or flags.describe(), flags))
    if args.float_reference:
        out.append(("float", Flags()))
    overrides = {}
    for item in args.set:
        if "=" not in item:
            raise ValueError(f"--set takes FLAG=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        overrides[k.strip()] = Flags.coerce(k.strip(), v)
    out = [(n, f.replace(**overrides)) for n, f in out]
    names = [n for n, _ in out]
    if len(set(names)) != len(names):
        raise ValueError(f"two configs share a name in {names}; name them: --flags NAME=SPEC")
    return out


def specs_from_args(args) -> list:
    """RunSpecs of a parsed ``run`` command: every config in each repeat block."""
    from .data import dataset_num_classes
    from .runner import RunSpec

    num_classes = args.num_classes or dataset_num_classes(args.dataset, args.data_dir)
    specs = []
    for block in range(args.repeats):
        for order, (name, flags) in enumerate(_configs(args)):
            specs.append(RunSpec(
                config=name, flags=flags, model=args.model, dataset=args.dataset,
                data_dir=args.data_dir, img_size=args.img_size, num_classes=num_classes,
                epochs=args.epochs,
                warmup_epochs=(min(1, args.epochs - 1) if args.warmup_epochs is None
                               else args.warmup_epochs),
                steps_per_epoch=args.steps_per_epoch, eval_steps=args.eval_steps,
                batch_size=args.batch_size, eval_batch_size=args.eval_batch_size, lr=args.lr,
                weight_decay=args.weight_decay, opt=args.opt, sched=args.sched,
                lr_warmup_epochs=args.lr_warmup_epochs, min_lr=args.min_lr,
                clip_grad=args.clip_grad, smoothing=args.smoothing, mixup=args.mixup,
                cutmix=args.cutmix, ema_decay=args.ema, repeat=block, seed=args.seed + block,
                device=args.device, block=block, order=order,
                float_reference=name == "float" and args.float_reference,
                count_syncs=args.count_syncs,
                sync_count_steps=args.sync_count_steps or None,
                compile_backend=args.compile_backend))
    return specs


def summarize(table, run_ids) -> str:
    """Per config: last top-1, median train seconds after warm-up, syncs per step."""
    import pandas as pd

    t = table[table["run_id"].isin(set(run_ids))]
    if not len(t):
        return "(no rows)"
    rows = []
    for (model, config), g in t.groupby(["model", "config"], sort=False):
        last = g.sort_values("epoch").groupby("run_id").tail(1)
        timed = g[(~g["warmup"]) & (g["status"] == "ok")]
        rows.append({"model": model, "config": config, "runs": g["run_id"].nunique(),
                     "status": ",".join(sorted(set(last["status"]))),
                     "top1": last["top1"].mean(),
                     "train_s": timed["train_s"].median() if len(timed) else float("nan"),
                     "images_per_s": timed["images_per_s"].median() if len(timed)
                     else float("nan"),
                     "syncs_per_step": g["syncs_per_step"].dropna().median()})
    return pd.DataFrame(rows).to_string(index=False, float_format=lambda v: f"{v:.3g}")


def cmd_run(argv: list[str]) -> int:
    from .runner import run_sweep

    args = build_run_parser().parse_args(argv)
    try:
        specs = specs_from_args(args)
        table = run_sweep(specs, args.out, executor=args.executor,
                          progress=not args.no_progress)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    ids = [s.run_id for s in specs]
    print(summarize(table, ids))
    mine = table[table["run_id"].isin(set(ids))]
    bad = mine[mine["status"] != "ok"]
    for _, r in bad.iterrows():
        print(f"run {r['run_id']} epoch {r['epoch']}: {r['status']}: "
              f"{str(r['error']).splitlines()[-1] if r['error'] else ''}", file=sys.stderr)
    print(f"table: {args.out}/runs.parquet ({len(table)} rows)")
    return 1 if len(bad) else 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = ["run", *_DISPATCH]
    if not argv or argv[0] in ("-h", "--help"):
        print(f"usage: python -m harness {{{','.join(commands)}}} ...\n\n{__doc__}")
        return 0 if argv else 2
    cmd, rest = argv[0], argv[1:]
    if cmd == "run":
        return cmd_run(rest)
    if cmd in _DISPATCH:
        module = importlib.import_module(_DISPATCH[cmd])  # written by its owners
        return int(module.main(rest) or 0)
    print(f"unknown command {cmd!r}; use one of: {', '.join(commands)}", file=sys.stderr)
    return 2
