"""Measure the compile_model flag: compile time, graphs, parity with eager, step times.

For each model: an eager model under ``--flags`` and a copy of it (same weights, same
calibrated ranges) compiled by `qvit.compile.compile_model` (``--scope``: block by block or
whole; ``--backend``). Records the first compiled
eval call (compile time), the eval logits against eager's, then ``--steps`` AdamW training
steps on both (same batches, same drop-path draws) comparing losses, gradients and the whole
state (parameters and ranges) after every step, then the eval logits again; the graphs and
graph breaks dynamo made; and the steady-state training step (forward, backward, AdamW)
of both, interleaved in one process in an order shuffled per round, the median of
``--repeats`` rounds after ``--warmup`` rounds. Prints one markdown table. Cold compile
times need an empty inductor cache (a fresh ``TORCHINDUCTOR_CACHE_DIR``); warm ones a second
process on the same cache. On a shared machine read the CPU seconds beside each compile
time (this process and the compilers it waited for; ``TORCHINDUCTOR_COMPILE_THREADS=1``
compiles in this process, so that they count every compiler): what it takes alone.

    TORCHINDUCTOR_CACHE_DIR=$(mktemp -d) OMP_NUM_THREADS=2 \
        python scripts/compile_check.py --models ivit_micro swin_micro --scope block
"""

from __future__ import annotations

import argparse
import copy
import random
import resource
import statistics
import sys
import time

import torch
import torch.nn.functional as F

import qvit
import qvit.compile
from qvit import Flags


def _clock() -> tuple[float, float]:
    """(wall, CPU) seconds: CPU of this process and of the children it waited for."""
    use = [resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    return time.perf_counter(), sum(u.ru_utime + u.ru_stime for u in use)


def _since(start: tuple[float, float]) -> tuple[float, float]:
    return tuple(b - a for a, b in zip(start, _clock(), strict=True))


def _diff(a: torch.Tensor, b: torch.Tensor) -> tuple[bool, float, float]:
    d = (a - b).abs()
    return torch.equal(a, b), (d > 0).float().mean().item(), d.max().item()


def _state_equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return all(torch.equal(sa[k], sb[k]) for k in sa)


def _step(model, module, opt, x, y, seed: int):
    torch.manual_seed(seed)  # drop-path draws
    loss = F.cross_entropy(model(x), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    grads = {k: p.grad.clone() for k, p in module.named_parameters() if p.grad is not None}
    opt.step()
    return loss.detach(), grads


def check(name: str, args) -> dict:
    from torch._dynamo.utils import counters

    torch.manual_seed(0)
    flags = Flags.parse(args.flags)
    eager = qvit.create_model(name, num_classes=10, flags=flags)
    size = eager.pretrained_cfg["input_size"][-1]
    g = torch.Generator().manual_seed(1)

    def batch():
        return (torch.randn(args.batch, 3, size, size, generator=g),
                torch.randint(0, 10, (args.batch,), generator=g))

    x_eval, _ = batch()
    eager.train()
    with torch.no_grad():  # calibrate the ranges
        for _ in range(2):
            eager(batch()[0])
    twin = copy.deepcopy(eager)
    torch._dynamo.reset()
    counters.clear()
    compiled = qvit.compile.compile_model(twin, scope=args.scope, backend=args.backend)
    row = {"model": name, "backend": f"{args.backend} ({args.scope})", "batch": args.batch}

    eager.eval()
    twin.eval()
    with torch.no_grad():
        ref = eager(x_eval)
        t = _clock()
        out = compiled(x_eval)
        row["eval_compile_s"], row["eval_compile_cpu_s"] = _since(t)
    row["eval_equal"], row["eval_frac"], row["eval_max"] = _diff(out, ref)
    print(f"{name}: first eval {row['eval_compile_s']:.1f} s ({row['eval_compile_cpu_s']:.1f} "
          f"CPU s)", file=sys.stderr, flush=True)

    eager.train()
    twin.train()
    opt_e = torch.optim.AdamW(eager.parameters(), lr=1e-3)
    opt_c = torch.optim.AdamW(twin.parameters(), lr=1e-3)
    row["steps"], row["first_diverged"] = args.steps, None
    row["loss_equal"] = row["grads_equal"] = True
    for i in range(args.steps):
        x, y = batch()
        le, ge = _step(eager, eager, opt_e, x, y, 100 + i)
        t = _clock()
        lc, gc = _step(compiled, twin, opt_c, x, y, 100 + i)
        if i == 0:
            row["train_compile_s"], row["train_compile_cpu_s"] = _since(t)
            print(f"{name}: first training step {row['train_compile_s']:.1f} s "
                  f"({row['train_compile_cpu_s']:.1f} CPU s)", file=sys.stderr, flush=True)
        row["loss_equal"] &= torch.equal(le, lc)
        row["grads_equal"] &= all(torch.equal(ge[k], gc[k]) for k in ge)
        if row["first_diverged"] is None and not _state_equal(eager, twin):
            row["first_diverged"] = i + 1
    row["params_equal"] = _state_equal(eager, twin)
    eager.eval()
    twin.eval()
    with torch.no_grad():
        row["eval_after_equal"], _, row["eval_after_max"] = _diff(compiled(x_eval),
                                                                  eager(x_eval))
    row["graphs"] = counters["stats"]["unique_graphs"]
    row["graph_breaks"] = sum(counters["graph_break"].values())

    # steady state: one training step each, interleaved, shuffled per round
    eager.train()
    twin.train()
    times = {"eager": [], "compiled": []}
    rng = random.Random(0)
    for r in range(args.warmup + args.repeats):
        x, y = batch()
        order = [("eager", eager, eager, opt_e), ("compiled", compiled, twin, opt_c)]
        rng.shuffle(order)
        for key, model, module, opt in order:
            t = time.perf_counter()
            _step(model, module, opt, x, y, 1000 + r)
            if r >= args.warmup:
                times[key].append(time.perf_counter() - t)
    row["step_eager_ms"] = 1e3 * statistics.median(times["eager"])
    row["step_compiled_ms"] = 1e3 * statistics.median(times["compiled"])
    return row


def markdown(rows: list[dict]) -> str:
    head = ("| model | backend | eval compile s (CPU s) | train compile s (CPU s) "
            "| graphs (breaks) "
            "| eval logits equal? (frac, max diff) | train: loss/grads/params equal after N "
            "steps? | eval equal after training? | step ms eager / compiled (batch) |")
    lines = [head, "|" + "---|" * 9]
    for r in rows:
        div = ("yes" if r["params_equal"] and r["loss_equal"] and r["grads_equal"]
               else f"no (state differs from step {r['first_diverged']})")
        lines.append(
            f"| {r['model']} | {r['backend']} | {r['eval_compile_s']:.1f} "
            f"({r['eval_compile_cpu_s']:.1f}) | {r['train_compile_s']:.1f} "
            f"({r['train_compile_cpu_s']:.1f}) | {r['graphs']} ({r['graph_breaks']}) "
            f"| {'yes' if r['eval_equal'] else 'no'} ({r['eval_frac']:.3g}, "
            f"{r['eval_max']:.3g}) | {div}, N={r['steps']} "
            f"| {'yes' if r['eval_after_equal'] else 'no'} ({r['eval_after_max']:.3g}) "
            f"| {r['step_eager_ms']:.1f} / {r['step_compiled_ms']:.1f} ({r['batch']}) |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["ivit_micro", "swin_micro"])
    p.add_argument("--flags", default="best,compile_model=true")
    p.add_argument("--backend", default=qvit.compile.BACKEND)
    p.add_argument("--scope", choices=qvit.compile.SCOPES, default="block")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--repeats", type=int, default=9)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    for name in args.models:
        rows.append(check(name, args))
        print(f"done {name}: {rows[-1]}", file=sys.stderr, flush=True)
    print(f"torch {torch.__version__}, {args.threads} threads, flags {args.flags}\n")
    print(markdown(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
