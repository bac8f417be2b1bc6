"""Inference speed of the deployed integer model, side by side in one process.

For each model: the deployed integer model eager and compiled
(`qvit.deploy.compile_deployed`), the QAT model's eval under the ``best`` flags, and its
float twin (timm, same architecture), all on the
same batch, in rounds whose order is shuffled per round (interleaved: drift in the
machine's load hits every variant alike). Each round times ``--iters`` forwards of one
variant; images/s per round; reported as the median and the mean with its Student-t
interval over the ``--rounds`` rounds (scipy.stats, n - 1 degrees of freedom), and each
variant's speed relative to the QAT eval (ratio of medians). Writes speed.csv, speed.json
and speed.csv, exactness.csv, report.json and report.md (commit, machine, versions, dates)
to ``--out``.

Exactness (the micro models, ``--exactness pretrained``): each model as I-ViT starts QAT (the
float twin trained on digits by the harness, cached, loaded and calibrated), deployed, and
run beside its QAT eval on the whole held-out split: per requantizer the fraction of
elements that differ and the largest difference in steps, the logits' largest difference,
top-1 of both and their agreement (`qvit.deploy.compare`).

    OMP_NUM_THREADS=2 python scripts/deploy_speed.py --out results/deploy
    python scripts/deploy_speed.py --models ivit_micro --rounds 2 --iters 1 --batch 4 \
        --exactness random --out /tmp/d
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path

import pandas as pd
import torch
from scipy import stats

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # qvit, harness from a checkout

import qvit  # noqa: E402
from harness.analysis.report.fmt import ci  # noqa: E402
from harness.analysis.stats import agreement_interval, ratio_interval  # noqa: E402
from qvit import Flags  # noqa: E402
from qvit.deploy import compile_deployed, deploy  # noqa: E402
from qvit.deploy.layers import resolve_requant  # noqa: E402

# the deployed model compiled with some of its speed choices off (the same integers, timed
# beside): as it computed before int_gemm, lookup_tables and requant existed (int8 GEMMs,
# every layer its own arithmetic, int64 requantizers), and with only the last one off
BASELINES = {"compiled_int8_no_tables": dict(int_gemm="int8", lookup_tables=False,
                                             requant="int64"),
             "compiled_int64_requant": dict(requant="int64")}
VARIANTS = ("deployed", "deployed_compiled", *BASELINES, "qat_best", "float")
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
    # the float twin as timm runs it (its default attention: fused SDPA for DeiT)
    flt = qvit.create_float_reference(name, num_classes=qat.num_classes).eval()
    x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(1))
    fns = {"deployed": dep, "qat_best": qat, "float": flt}
    info = {}
    with torch.no_grad():
        ref = dep(x)
        info["int_gemm"] = dep.int_gemm_used()
        info["requant"] = resolve_requant(dep.config["requant"], x.device)
        for v in ("deployed_compiled", *BASELINES):
            if v not in args.variants:
                continue  # (deployed only where timed)
            fns[v] = compile_deployed(dep if v == "deployed_compiled" else
                                      deploy(qat, **BASELINES[v]))
            t = time.perf_counter()  # (the first call compiles)
            out = fns[v](x)
            sfx = "" if v == "deployed_compiled" else "_" + v
            info["compile_s" + sfx] = time.perf_counter() - t
            info["compiled_exact" + sfx] = bool(torch.equal(out, ref))
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
    for v in variants:
        s = _summary(per[v])
        # throughput ratios paired within rounds: geometric mean and its t interval
        (vq, vq_lo, vq_hi, _), (vf, vf_lo, vf_hi, _) = (
            ratio_interval(per[v], per[base]) for base in ("qat_best", "float"))
        rows.append(dict(model=name, batch=batch, variant=v, **s, vs_qat=vq, vs_qat_lo=vq_lo,
                         vs_qat_hi=vq_hi, vs_float=vf, vs_float_lo=vf_lo, vs_float_hi=vf_hi,
                         rounds=per[v]))
    return rows, info


def _exactness_model(name: str, start: str, images: int | None):
    """The QAT model the exactness is measured on, and the held-out images (normalized)
    with their labels, in batches of 64: digits at the model's size."""
    from harness.run.data import MEAN_STD, Batches, normalize_batch
    from harness.run.pretrained import start_from_pretrained
    from harness.run.runner import RunSpec, build_model, validate_spec
    from harness.spec.settings import RunSettings

    s = RunSettings(model=name, dataset="digits", device="cpu", pretrained=start == "pretrained")
    spec = RunSpec("best", Flags.preset("best"), s)
    bundle = validate_spec(s)
    torch.manual_seed(0)
    model = build_model(spec)
    if start == "pretrained":
        from harness.sweep.pretrain import ensure_pretrained

        ensure_pretrained(s, progress=False)
        start_from_pretrained(model, spec, bundle, torch.device("cpu"))
    else:
        x, _ = bundle.train.all()
        qvit.calibrate(model, [normalize_batch(x[:64], MEAN_STD[s.dataset])])
    val = Batches(bundle.val, batch_size=64, device=torch.device("cpu"), num_workers=0,
                  preload=True, shuffle=False, drop_last=False, max_steps=None, seed=0)
    x, y = (torch.cat(t) for t in zip(*val.epoch(0), strict=True))
    x, y = normalize_batch(x[:images], MEAN_STD[s.dataset]), y[:images]
    return model.eval(), list(zip(x.split(64), y.split(64), strict=True))


def exactness(name: str, start: str, images: int | None = None) -> tuple[list[dict], dict]:
    """Per requantizer (pooled over the held-out split, or its first ``images``) and for
    the whole model."""
    from qvit.deploy.compare import evaluate_deployed, layer_differences

    model, batches = _exactness_model(name, start, images)
    dep = deploy(model)
    per: dict[str, dict] = {}
    for x, _ in batches:
        for layer, d in layer_differences(model, dep, x)["layers"].items():
            p = per.setdefault(layer, dict(differ=0.0, numel=0, max_steps=0))
            p["differ"] += d["frac"] * d["numel"]
            p["numel"] += d["numel"]
            p["max_steps"] = max(p["max_steps"], d["max_steps"])
    layers = [dict(model=name, layer=k, frac_differ=v["differ"] / v["numel"],
                   max_steps=v["max_steps"], elements=v["numel"]) for k, v in per.items()]
    r = evaluate_deployed(model, batches, dep)
    lo, hi = agreement_interval(r["n"] - len(r["disagreements"]), r["n"])
    whole = dict(model=name, start=start, images=r["n"], qat_top1=100 * r["qat_top1"],
                 deployed_top1=100 * r["top1"], agreement=r["agreement"],
                 agreement_lo=lo, agreement_hi=hi, disagreements=len(r["disagreements"]),
                 logits_max_abs_diff=r["logits_max_abs_diff"],
                 layers_differing=sum(v["frac_differ"] > 0 for v in layers),
                 layers=len(layers), max_steps=max(v["max_steps"] for v in layers))
    return layers, whole


def _setup_rows(meta: dict) -> list[tuple[str, str]]:
    return [("command", f"`{meta['command']}`"), ("git_commit", meta["git_commit"]),
            ("dirty tree", str(meta["git_dirty"])), ("machine", meta["device_name"]),
            ("torch", meta["torch_version"]), ("timm", meta["timm_version"]),
            ("torch threads", str(meta["threads"])), ("OMP_NUM_THREADS", str(meta["omp"])),
            ("dates", f"{meta['started']} .. {meta['ended']}")]


def markdown(rows: list[dict], infos: dict, meta: dict, layers: list[dict],
             whole: list[dict]) -> str:
    """report.md: setup, speed, exactness, method."""
    speed = pd.DataFrame(rows).drop(columns=["rounds"], errors="ignore")
    out = ["# Deployed integer model: inference speed and exactness", "",
           "`qvit.deploy` (integer GEMMs, dyadic requantizers, integer Shiftmax, ShiftGELU "
           "and I-LayerNorm) against the QAT model's eval (`best` flags) and the float twin "
           "(timm, same architecture), in one process on the CPU.", "", "## Setup", "",
           "|  | value |", "|---|---|", *(f"| {k} | {v} |" for k, v in _setup_rows(meta)),
           "", "## Speed", "",
           f"Images/s over {meta['rounds']} interleaved rounds x {meta['iters']} forwards per "
           "variant (the order shuffled per round): median, and mean with its 95% Student-t "
           "interval (n - 1 df); x QAT and x float: throughput over the QAT eval's and over "
           "the float twin's (timm's eager forward, its default attention) in the same round, "
           "geometric mean over rounds with its 95% t-interval (log scale).", "",
           "| model | batch | variant | median img/s | mean [95% t-interval] | IQR/median "
           "| x QAT | x float |", "|---|---|---|---|---|---|---|---|"]
    for r in speed.itertuples():
        out.append(f"| {r.model} | {r.batch} | {r.variant} | {r.median:.1f} | {r.mean:.1f} "
                   f"[{r.ci95_lo:.1f}, {r.ci95_hi:.1f}] | {r.iqr_over_median:.2f} | "
                   f"{ci(r.vs_qat, r.vs_qat_lo, r.vs_qat_hi)} | "
                   f"{ci(r.vs_float, r.vs_float_lo, r.vs_float_hi)} |")
    out += ["", "`deployed`: `qvit.deploy(model)` (its defaults: `int_gemm=\"auto\"`, "
            "`requant=\"auto\"`, lookup tables on); compiled with some of them off: "
            + "; ".join(f"`{v}`: `deploy(model, " + ", ".join(
                f"{k}={o!r}".replace("'", '"') for k, o in kw.items()) + ")`"
                for v, kw in BASELINES.items())
            + " (the first: the arithmetic before those choices existed). Every variant's "
            "logits equal the eager deployed model's (the columns below).", "",
            "| model | int8 linear layers' GEMM (auto) | requantizers (auto) | compile s "
            "| compiled == eager (bits) | " + " | ".join(
                f"compile s, {v} | == eager (bits)" for v in BASELINES) + " |",
            "|---|---|---|---|---|" + "---|---|" * len(BASELINES)]
    out += [f"| {m} | {i.get('int_gemm', '-')} | {i.get('requant', '-')} | "
            f"{i.get('compile_s', float('nan')):.1f} | {i.get('compiled_exact', '-')} | "
            + " | ".join(f"{i.get('compile_s_' + v, float('nan')):.1f} | "
                         f"{i.get('compiled_exact_' + v, '-')}" for v in BASELINES) + " |"
            for m, i in infos.items()]
    rounds = {(r["model"], r["variant"]): r["rounds"] for r in rows}
    for v in BASELINES:
        paired = [(m, ratio_interval(rounds[m, "deployed_compiled"], rounds[m, v]))
                  for m in infos if (m, "deployed_compiled") in rounds and (m, v) in rounds]
        if paired:
            out += ["", f"Compiled, `deployed` over `{v}` (throughput, paired within rounds: "
                    "geometric mean [95% t]): " + "; ".join(
                        f"{m} {ci(g, lo, hi)}" for m, (g, lo, hi, _) in paired) + "."]
    if any(r["variant"] in BASELINES for r in rows):
        out += ["", "Each variant compiles in the same process, one after the other: a "
                "later one may reuse kernels an earlier one built (compile times above)."]
    if whole:
        out += ["", "## Exactness against the QAT eval", "",
                "Each micro model deployed and run beside its QAT eval on the whole held-out "
                "split (digits): top-1 of both, their agreement (fraction of equal "
                "predictions, with its exact 95% binomial interval: n images bound what "
                "it can show), the logits' largest absolute difference, and per requantizer "
                "the fraction of elements that differ and the largest difference in steps. "
                "The deployed model is bit-exact with `qvit.reference`; what differs here is "
                "float32 rounding in the QAT eval (docs/deploy.md).", "",
                "| model | start | images | QAT top-1 % | deployed top-1 % | agreement | "
                "disagreements | logits max diff | layers differing | max steps |",
                "|---|---|---|---|---|---|---|---|---|---|"]
        out += [f"| {w['model']} | {w['start']} | {w['images']} | {w['qat_top1']:.2f} | "
                f"{w['deployed_top1']:.2f} | "
                f"{ci(w['agreement'], w['agreement_lo'], w['agreement_hi'], '{:.4f}')} | "
                f"{w['disagreements']} | "
                f"{w['logits_max_abs_diff']:.3g} | {w['layers_differing']}/{w['layers']} | "
                f"{w['max_steps']} |" for w in whole]
        out += ["", "Per requantizer (those that differ anywhere; all: exactness.csv):", "",
                "| model | requantizer | elements differing | max steps | elements |",
                "|---|---|---|---|---|"]
        out += [f"| {v['model']} | {v['layer']} | {v['frac_differ']:.2e} | "
                f"{v['max_steps']} | {v['elements']} |" for v in layers if v["frac_differ"]]
    return "\n".join(out) + "\n"


def _meta(args, out: Path, argv: list[str]) -> dict:
    from harness.records.provenance import provenance

    return dict(provenance("cpu", out, threads=torch.get_num_threads()),
                threads=torch.get_num_threads(), omp=os.environ.get("OMP_NUM_THREADS"),
                rounds=args.rounds, iters=args.iters, python=sys.version.split()[0],
                command="python scripts/deploy_speed.py " + " ".join(argv),
                started=time.strftime("%Y-%m-%dT%H:%M"))


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=list(BATCH), choices=list(BATCH))
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    p.add_argument("--batch", type=int, default=None, help="default: 64 micro, 8 at 224")
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--iters", type=int, default=5, help="forwards per round and variant")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--exactness", choices=("pretrained", "random", "off"), default="pretrained",
                   help="the micro models' exactness on digits: from the float-pretrained "
                   "start (made and cached by the harness if missing), random weights, or off")
    p.add_argument("--held-out-images", type=int, default=None,
                   help="exactness on the first N held-out images (default: all 364)")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    if args.rounds < 2:
        p.error("--rounds must be at least 2 (a t-interval needs n >= 2)")
    if "qat_best" not in args.variants or "float" not in args.variants:
        p.error("--variants must include qat_best and float (the ratios' denominators)")
    return args


def main(argv=None) -> int:
    args = parse(argv)
    meta = _meta(args, args.out, sys.argv[1:] if argv is None else argv)
    rows, infos, layers, whole = [], {}, [], []
    for name in args.models:
        r, info = bench_model(name, args)
        rows += r
        infos[name] = info
        print(pd.DataFrame(r).drop(columns="rounds").to_string(index=False), flush=True)
    if args.exactness != "off":
        for name in (m for m in args.models if "micro" in m):
            per, w = exactness(name, args.exactness, args.held_out_images)
            layers += per
            whole.append(w)
            print(w, flush=True)
    meta["ended"] = time.strftime("%Y-%m-%dT%H:%M")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "report.json").write_text(json.dumps(
        dict(meta=meta, speed=rows, compile=infos, exactness=whole), indent=1, default=str))
    pd.DataFrame(rows).drop(columns="rounds").to_csv(args.out / "speed.csv", index=False)
    if layers:
        pd.DataFrame(layers).to_csv(args.out / "exactness.csv", index=False)
    (args.out / "report.md").write_text(markdown(rows, infos, meta, layers, whole))
    print(f"report: {args.out / 'report.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
