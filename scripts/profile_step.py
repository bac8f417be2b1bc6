"""Op counts and top ops of qvit training steps (forward, backward, AdamW), as markdown.

    PYTHONPATH=. python scripts/profile_step.py ivit_micro best            # top 25 ops
    PYTHONPATH=. python scripts/profile_step.py ivit_micro best --top 40 --modules
    PYTHONPATH=. python scripts/profile_step.py ivit_micro best --compile  # compiled step
    PYTHONPATH=. python scripts/profile_step.py ivit_micro best --deployed --compile
    PYTHONPATH=. python scripts/profile_step.py ivit_micro float --inference --compile

Batch $BATCH (default 64), the model's default image size (or $IMG), 10 classes, torch
threads $NT (default 1); 3 warm-up steps, then $STEPS (default 3) profiled steps. Prints
the op counts per step (calls of the elementwise ops the speed issue names), the top ops by
self CPU time (per step), and with ``--modules`` the CPU time per module class (forward,
inclusive) and per autograd backward node. Timings under the profiler are inflated; use
step_ratio.py for times, this for what runs.

``--compile`` profiles the step compiled as a harness run compiles it (the run settings'
``compile_backend`` for qvit models, ``float_compile_backend`` for the float; block by block
or whole as the flags' ``compile_scope`` says, also where they leave ``compile_model`` off), with
inductor's kernel profiling on (each generated C++ kernel a profiler event; a cache entry of
its own): the first warm-up step compiles (minutes cold), and a table groups the step's time
into matmuls and convolutions, inductor's kernels, qvit's opaque aten calls and the rest.

``--inference`` profiles eval forwards under ``torch.no_grad()`` instead of training steps;
``--deployed`` the integer model `qvit.deploy` makes of the model under those flags
(calibrated on random batches first; compiled by `qvit.deploy.compile_deployed`), to see
where its time goes beside the float twin's (``float --inference``): the integer GEMMs
(``aten::_int_mm``) and attention products fall in the matmul group.
"""
import argparse
import collections
import os
import time

import torch
from torch.profiler import ProfilerActivity, profile, record_function

import qvit
from harness.spec.settings import RunSettings
from qvit import Flags

COUNTED = ("aten::mul", "aten::mul_", "aten::div", "aten::div_", "aten::copy_",
           "aten::floor", "aten::floor_", "aten::pow", "aten::round", "aten::round_",
           "aten::where", "aten::mm", "aten::bmm", "aten::addmm", "aten::empty",
           "aten::empty_strided")


GROUPS = (  # (group, what its events' names start with), first match wins
    ("matmul, conv (aten)", ("aten::mm", "aten::bmm", "aten::addmm", "aten::_int_mm",
                             "aten::_scaled_dot", "aten::convolution", "aten::mkldnn_conv")),
    ("inductor kernels", ("graph_",)),
    ("qvit opaque aten calls", ("qvit::", "aten::sum", "aten::mean", "aten::frexp",
                                "aten::index_put")),
    ("optimizer", ("Optimizer.", "aten::_foreach", "aten::lerp", "aten::addc")),
)


def _group_table(events, steps: int, total: float, unit: str = "step") -> str:
    """The step's self CPU time by `GROUPS` (the rest in "other")."""
    ms, calls = collections.Counter(), collections.Counter()
    for e in events:
        g = next((g for g, pre in GROUPS if e.key.startswith(pre)), "other")
        ms[g] += e.self_cpu_time_total / steps / 1e3
        calls[g] += e.count / steps
    rows = [f"| group | self CPU ms/{unit} | % | calls/{unit} |", "|---|---|---|---|"]
    for g in [g for g, _ in GROUPS] + ["other"]:
        rows.append(f"| {g} | {ms[g]:.2f} | {100 * ms[g] / total:.1f} | {calls[g]:.0f} |")
    return "\n".join(rows) + "\n"


def _profile_kernels() -> None:
    """Make each C++ kernel inductor generates from here on a profiler event."""
    import torch._inductor.config as inductor_config

    inductor_config.cpp.enable_kernel_profile = True


def _compiled(model, flags: Flags, float_reference: bool):
    """The model compiled as a harness run with ``flags`` compiles it (the backend for it;
    block by block or whole as ``compile_scope`` says, also where ``compile_model`` is off),
    kernels profiled."""
    from harness.run import loop
    from harness.run.runner import RunSpec

    _profile_kernels()
    spec = RunSpec("profile", flags.replace(compile_model=True), float_reference=float_reference)
    return loop.compile_model(model, **spec.compile_options("cpu"))


def _deployed(model, img: int, compiled: bool):
    """The integer model of ``model`` (calibrated on two random batches first), compiled by
    `qvit.deploy.compile_deployed` with inductor's kernel profiling on where asked."""
    from qvit.deploy import compile_deployed, deploy

    g = torch.Generator().manual_seed(0)
    qvit.calibrate(model, [torch.randn(8, 3, img, img, generator=g) for _ in range(2)])
    dep = deploy(model.eval())
    if not compiled:
        return dep
    _profile_kernels()
    return compile_deployed(dep)


def _short(name: str, width: int = 90) -> str:
    """An event's name cut to ``width`` characters (inductor's kernel names run to 200)."""
    return name if len(name) <= width else name[:width - 3] + "..."


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
    ap.add_argument("--compile", action="store_true",
                    help="profile the step compiled as a harness run compiles it "
                         "(its backend, the flags' compile_scope)")
    ap.add_argument("--inference", action="store_true",
                    help="eval forwards under torch.no_grad() instead of training steps")
    ap.add_argument("--deployed", action="store_true",
                    help="the integer model qvit.deploy makes of the model (implies "
                    "--inference)")
    args = ap.parse_args()
    if args.modules and args.compile:
        ap.error("--modules wraps module forwards in profiler ranges, which torch.compile "
                 "traces through: use one of --modules and --compile")
    if args.deployed and args.flags == "float":
        ap.error("--deployed deploys a quantized model: give its flags (e.g. best), not float")
    if args.deployed and args.modules:
        ap.error("--modules wraps the quantized model's module forwards; the deployed model "
                 "has other modules: use one of --modules and --deployed")
    args.inference = args.inference or args.deployed
    torch.set_num_threads(int(os.environ.get("NT", "1")))
    torch.manual_seed(0)
    batch, steps = int(os.environ.get("BATCH", "64")), int(os.environ.get("STEPS", "3"))
    img = int(os.environ.get("IMG", qvit.variants.VARIANTS[args.model][1]["img_size"]))
    flags = Flags()
    if args.flags == "float":
        m = qvit.create_float_reference(args.model, num_classes=10, img_size=img,
                                        attention=RunSettings().float_attention)
        fused = True
    else:
        flags = Flags.parse(args.flags)
        m = qvit.create_model(args.model, num_classes=10, img_size=img, flags=flags)
        fused = flags.fused_optimizer
    opt = torch.optim.AdamW(m.parameters(), lr=1e-3, foreach=fused)
    x, y = torch.randn(batch, 3, img, img), torch.randint(0, 10, (batch,))
    if args.modules:
        _wrap_modules(m)
    if args.deployed:
        model = _deployed(m, img, args.compile)
    else:
        model = _compiled(m, flags, args.flags == "float") if args.compile else m

    def step():
        if args.inference:
            with torch.no_grad():
                return model(x)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    if args.inference and not args.deployed:
        m.eval()

    t = time.perf_counter()
    step()
    first = time.perf_counter() - t
    for _ in range(2):
        step()
    with profile(activities=[ProfilerActivity.CPU]) as p:
        for _ in range(steps):
            step()
    events = p.key_averages()
    total = sum(e.self_cpu_time_total for e in events) / steps / 1e3
    how = (" deployed" if args.deployed else "") + (" compiled" if args.compile else "")
    unit = "forward" if args.inference else "step"
    print(f"## {args.model} `{args.flags}`{how}: batch {batch}, {img}x{img}, "
          f"{torch.get_num_threads()} thread(s), "
          f"{steps} {unit}s; self CPU {total:.1f} ms/{unit} (under the profiler)\n")
    if args.compile:
        print(f"First {unit} (compilation included): {first:.1f} s.\n")
    if args.compile or args.inference:
        print(_group_table(events, steps, total, unit))
    calls = collections.Counter({e.key: e.count for e in events})
    print(f"| op | calls/{unit} |\n|---|---|")
    for k in COUNTED:
        print(f"| `{k}` | {calls.get(k, 0) / steps:.0f} |")
    aten = sum(c for k, c in calls.items() if k.startswith("aten::"))
    print(f"| all aten ops | {aten / steps:.0f} |\n")
    ops = sorted((e for e in events if not e.key.startswith(("fwd:", "autograd::"))),
                 key=lambda e: -e.self_cpu_time_total)
    print(f"| op | self CPU ms/{unit} | % | calls/{unit} |\n|---|---|---|---|")
    for e in ops[:args.top]:
        ms = e.self_cpu_time_total / steps / 1e3
        print(f"| `{_short(e.key)}` | {ms:.2f} | {100 * ms / total:.1f} | {e.count / steps:.0f} |")
    if args.modules:
        rows = [e for e in events if e.key.startswith("fwd:") or "Backward" in e.key
                and not e.key.startswith("autograd::")]
        rows.sort(key=lambda e: -e.cpu_time_total)
        print(f"\n| module forward / backward node | CPU ms/{unit} (inclusive) | calls/{unit} |")
        print("|---|---|---|")
        for e in rows[:args.top]:
            print(f"| `{e.key}` | {e.cpu_time_total / steps / 1e3:.2f} | {e.count / steps:.0f} |")


if __name__ == "__main__":
    main()
