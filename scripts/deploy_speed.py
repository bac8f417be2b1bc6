"""Inference speed of the deployed integer model, side by side in one process.

For each model: the deployed integer model eager and under torch.compile, the QAT model's
eval under the ``best`` flags, and its float twin (timm, same architecture), all on the
same batch, in rounds whose order is shuffled per round (interleaved: drift in the
machine's load hits every variant alike). Each round times ``--iters`` forwards of one
variant; images/s per round; reported as the median and the mean with its Student-t
interval over the ``--rounds`` rounds (scipy.stats, n - 1 degrees of freedom), and each
variant's speed relative to the QAT eval (ratio of medians). Writes speed.csv, speed.json
(with torch version, machine and commit) and speed.md to ``--out``.

    OMP_NUM_THREADS=2 python scripts/deploy_speed.py --out runs/deploy
    python scripts/deploy_speed.py --models ivit_micro --rounds 3 --iters 1 --out /tmp/d
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from scipy import stats

import qvit
from qvit import Flags
from qvit.deploy import deploy

VARIANTS = ("deployed", "deployed_compiled", "qat_best", "float")
BATCH = {"ivit_micro": 64, "swin_micro": 64, "deit_tiny_patch16_224": 8,
         "swin_tiny_patch4_window7_224": 8}


def _calibrated(name: str, batch: int, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = qvit.create_model(name, num_classes=10 if "micro" in name else 1000,
                              flags=Flags.preset("best"))
    size = model.patch_embed.img_size
    g = torch.Generator().manual_seed(seed)
    qvit.calibrate(model, [torch.randn(min(batch, 8), 3, size, size, generator=g)])
    return model.eval()


def _timed(fn, x: torch.Tensor, iters: int) -> float:
    t = time.perf_counter()
    for _ in range(iters):
        fn(x)
    return iters * x.shape[0] / (time.perf_counter() - t)


def _summary(values: list[float]) -> dict:
    n = len(values)
    mean = statistics.fmean(values)
    sd = statistics.stdev(values) if n > 1 else float("nan")
    half = stats.t.ppf(0.975, n - 1) * sd / n**0.5 if n > 1 else float("nan")
    median = statistics.median(values)
    q = statistics.quantiles(values, n=4) if n >= 4 else None
    return dict(n=n, median=median, mean=mean, ci95_lo=mean - half, ci95_hi=mean + half,
                iqr_over_median=(q[2] - q[0]) / median if q else float("nan"))


def bench_model(name: str, args) -> tuple[list[dict], dict]:
    batch = args.batch or BATCH.get(name, 8)
    qat = _calibrated(name, batch, args.seed)
    size = qat.patch_embed.img_size
    dep = deploy(qat)
    flt = qvit.create_float_reference(name, num_classes=qat.num_classes,
                                      attention="explicit").eval()
    x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(1))
    fns = {"deployed": dep, "qat_best": qat, "float": flt}
    info = {}
    with torch.no_grad():
        ref = dep(x)
        if "deployed_compiled" in args.variants:
            fns["deployed_compiled"] = torch.compile(dep)
            t = time.perf_counter()  # (the first call compiles)
            out = fns["deployed_compiled"](x)
            info["compile_s"] = time.perf_counter() - t
            info["compiled_exact"] = bool(torch.equal(out, ref))
        info["top1_agreement_vs_qat"] = (qat(x).argmax(1) == ref.argmax(1)).double().mean().item()
        variants = [v for v in VARIANTS if v in args.variants]
        for v in variants:  # warm-up
            for _ in range(args.warmup):
                fns[v](x)
        per = {v: [] for v in variants}
        rng = random.Random(args.seed)
        for _ in range(args.rounds):
            order = variants[:]
            rng.shuffle(order)
            for v in order:
                per[v].append(_timed(fns[v], x, args.iters))
    rows = []
    base = statistics.median(per["qat_best"]) if "qat_best" in per else None
    for v in variants:
        s = _summary(per[v])
        rows.append(dict(model=name, batch=batch, variant=v, **s,
                         vs_qat=s["median"] / base if base else float("nan"),
                         rounds=per[v]))
    return rows, info


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _markdown(rows: list[dict], infos: dict, meta: dict) -> str:
    lines = ["# Deployed integer model: inference speed", "",
             f"commit {meta['commit']}, torch {meta['torch']}, {meta['machine']}, "
             f"{meta['threads']} threads; {meta['rounds']} interleaved rounds x "
             f"{meta['iters']} forwards; images/s: median, mean and its 95% Student-t "
             "interval (n - 1 df); x QAT = ratio of medians to the QAT eval (`best`).", "",
             "| model | batch | variant | median img/s | mean [95% t-interval] | IQR/median "
             "| x QAT |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['batch']} | {r['variant']} | {r['median']:.1f} | "
                     f"{r['mean']:.1f} [{r['ci95_lo']:.1f}, {r['ci95_hi']:.1f}] | "
                     f"{r['iqr_over_median']:.2f} | {r['vs_qat']:.2f} |")
    lines += ["", "| model | compile s | compiled == eager | top-1 agreement (bench batch) |",
              "|---|---|---|---|"]
    for m, i in infos.items():
        lines.append(f"| {m} | {i.get('compile_s', float('nan')):.1f} | "
                     f"{i.get('compiled_exact', '-')} | {i['top1_agreement_vs_qat']:.3f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=list(BATCH))
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    p.add_argument("--batch", type=int, default=None, help="default: 64 micro, 8 at 224")
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--iters", type=int, default=5, help="forwards per round and variant")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    if args.rounds < 2:
        p.error("--rounds must be at least 2 (a t-interval needs n >= 2)")
    meta = dict(commit=_commit(), torch=torch.__version__, machine=platform.processor()
                or platform.machine(), threads=torch.get_num_threads(), rounds=args.rounds,
                iters=args.iters, omp=os.environ.get("OMP_NUM_THREADS"),
                python=sys.version.split()[0])
    rows, infos = [], {}
    for name in args.models:
        r, info = bench_model(name, args)
        rows += r
        infos[name] = info
        print(_markdown(r, {name: info}, meta), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "speed.json").write_text(json.dumps(dict(meta=meta, rows=rows, info=infos),
                                                    indent=1))
    with open(args.out / "speed.csv", "w") as f:
        keys = [k for k in rows[0] if k != "rounds"]
        f.write(",".join(keys) + "\n")
        for r in rows:
            f.write(",".join(str(r[k]) for k in keys) + "\n")
    (args.out / "speed.md").write_text(_markdown(rows, infos, meta))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
