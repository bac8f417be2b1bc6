"""Interleaved training-step times of presets and the float reference, in one process.

    PYTHONPATH=. python scripts/step_ratio.py ivit_micro seed best float
Each repeat runs one step of every config in turn (AdamW, batch 64, 32x32, 10 classes);
medians over repeats after 2 warm-up steps; ratios to the first config. torch intra-op
threads: $NT (default 1; this 2-core host is shared, and 2 threads spin under contention).
"""
import os
import statistics as st
import sys
import time

import torch

import qvit
from qvit import Flags

torch.set_num_threads(int(os.environ.get("NT", "1")))
torch.manual_seed(0)
name, configs = sys.argv[1], sys.argv[2:]
repeats = int(os.environ.get("REPEATS", "9"))
x, y = torch.randn(64, 3, 32, 32), torch.randint(0, 10, (64,))
runs = {}
for c in configs:
    if c == "float":
        m = qvit.create_float_reference(name, num_classes=10)
        fused = True
    else:
        flags = Flags.parse(c)
        m = qvit.create_model(name, num_classes=10, flags=flags)
        fused = flags.fused_optimizer
    opt = torch.optim.AdamW(m.parameters(), lr=1e-3, foreach=fused)
    runs[c] = (m.train(), opt)


def step(m, opt):
    loss = torch.nn.functional.cross_entropy(m(x), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


times = {c: [] for c in configs}
for r in range(repeats + 2):
    for c, (m, opt) in runs.items():
        t = time.perf_counter()
        step(m, opt)
        times[c].append(time.perf_counter() - t)
med = {c: st.median(v[2:]) for c, v in times.items()}
print(f"{name} threads={torch.get_num_threads()} repeats={repeats}")
for c in configs:
    ratio = {o: med[c] / med[o] for o in configs if o != c}
    print(f"  {c:10s} step {med[c]:.4f} s  " + "  ".join(f"/{o}={v:.3f}" for o, v in ratio.items()))
