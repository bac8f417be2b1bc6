"""Op counts and top ops of qvit training steps (forward, backward, AdamW), as markdown.

    PYTHONPATH=. python scripts/profile_step.py ivit_micro best            # top 25 ops
    PYTHONPATH=. python scripts/profile_step.py ivit_micro best --top 40 --modules

Batch $BATCH (default 64), the model's default image size (or $IMG), 10 classes, torch
threads $NT (default 1); 3 warm-up steps, then $STEPS (default 3) profiled steps. Prints
the op counts per step (calls of the elementwise ops the speed issue names), the top ops by
self CPU time (per step), and with ``--modules`` the CPU time per module class (forward,
inclusive) and per autograd backward node. Timings under the profiler are inflated; use
step_ratio.py for times, this for what runs.
"""
import argparse
import collections
import os

import torch
from torch.profiler import ProfilerActivity, profile, record_function

import qvit
from qvit import Flags

COUNTED = ("aten::mul", "aten::mul_", "aten::div", "aten::div_", "aten::copy_",
           "aten::floor", "aten::floor_", "aten::pow", "aten::round", "aten::round_",
           "aten::where", "aten::mm", "aten::bmm", "aten::addmm", "aten::empty",
           "aten::empty_strided")


def _wrap_modules(model):
    """Each module's forward inside record_function('fwd:<class>')."""
    for m in model.modules():
        m.forward = _recorded(m.forward, f"fwd:{type(m).__name__}")


def _recorded(fwd, name):
    def wrapped(*a, **k):
        with record_function(name):
            return fwd(*a, **k)
    return wrapped


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("flags", help="flags spec (best, seed, legacy, 'best,x=y') or float")
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--modules", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("NT", "1")))
    torch.manual_seed(0)
    batch, steps = int(os.environ.get("BATCH", "64")), int(os.environ.get("STEPS", "3"))
    img = int(os.environ.get("IMG", qvit.variants.VARIANTS[args.model][1]["img_size"]))
    if args.flags == "float":
        m, fused = qvit.create_float_reference(args.model, num_classes=10, img_size=img), True
    else:
        flags = Flags.parse(args.flags)
        m = qvit.create_model(args.model, num_classes=10, img_size=img, flags=flags)
        fused = flags.fused_optimizer
    opt = torch.optim.AdamW(m.parameters(), lr=1e-3, foreach=fused)
    x, y = torch.randn(batch, 3, img, img), torch.randint(0, 10, (batch,))
    if args.modules:
        _wrap_modules(m)

    def step():
        loss = torch.nn.functional.cross_entropy(m(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(3):
        step()
    with profile(activities=[ProfilerActivity.CPU]) as p:
        for _ in range(steps):
            step()
    events = p.key_averages()
    total = sum(e.self_cpu_time_total for e in events) / steps / 1e3
    print(f"## {args.model} `{args.flags}`: batch {batch}, {img}x{img}, "
          f"{torch.get_num_threads()} thread(s), "
          f"{steps} steps; self CPU {total:.1f} ms/step (under the profiler)\n")
    calls = collections.Counter({e.key: e.count for e in events})
    print("| op | calls/step |\n|---|---|")
    for k in COUNTED:
        print(f"| `{k}` | {calls.get(k, 0) / steps:.0f} |")
    aten = sum(c for k, c in calls.items() if k.startswith("aten::"))
    print(f"| all aten ops | {aten / steps:.0f} |\n")
    ops = sorted((e for e in events if not e.key.startswith(("fwd:", "autograd::"))),
                 key=lambda e: -e.self_cpu_time_total)
    print("| op | self CPU ms/step | % | calls/step |\n|---|---|---|---|")
    for e in ops[:args.top]:
        ms = e.self_cpu_time_total / steps / 1e3
        print(f"| `{e.key}` | {ms:.2f} | {100 * ms / total:.1f} | {e.count / steps:.0f} |")
    if args.modules:
        rows = [e for e in events if e.key.startswith("fwd:") or "Backward" in e.key
                and not e.key.startswith("autograd::")]
        rows.sort(key=lambda e: -e.cpu_time_total)
        print("\n| module forward / backward node | CPU ms/step (inclusive) | calls/step |")
        print("|---|---|---|")
        for e in rows[:args.top]:
            print(f"| `{e.key}` | {e.cpu_time_total / steps / 1e3:.2f} | {e.count / steps:.0f} |")


if __name__ == "__main__":
    main()
