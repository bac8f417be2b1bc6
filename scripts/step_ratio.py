"""Interleaved training-step times of presets, revisions and the float reference, in one
process.

    PYTHONPATH=. python scripts/step_ratio.py ivit_micro seed best float
    PYTHONPATH=. python scripts/step_ratio.py ivit_micro 015cdf7:best best   # before/after

A config is a flags spec (``best``, ``seed,use_frexp=true``), ``float`` (timm's float
model, its attention as the harness's float reference's), or ``REV:spec``: the flags spec
on qvit as of git revision REV (extracted with git archive into a temporary package, so two
versions of qvit run side by side). Each repeat runs one step (forward, backward, AdamW) of
every config in turn (batch $BATCH, default 64; the model's default image size, or $IMG; 10
classes); medians over repeats after 2 warm-up steps; ratios to every other config, paired per
round, with 95% t intervals (configs in an order shuffled per round).
torch intra-op threads: $NT (default 1; this 2-core host is shared, and 2 threads spin under
contention).
"""
import importlib
import io
import os
import random
import statistics as st
import subprocess
import sys
import tarfile
import tempfile
import time
import warnings
from pathlib import Path

import torch

import qvit
from harness.analysis.stats import ratio_interval
from harness.spec.settings import RunSettings, cpu_model

torch.set_num_threads(int(os.environ.get("NT", "1")))
torch.manual_seed(0)
name, configs = sys.argv[1], sys.argv[2:]
repeats = int(os.environ.get("REPEATS", "9"))
batch = int(os.environ.get("BATCH", "64"))
img = int(os.environ.get("IMG", qvit.variants.VARIANTS[name][1]["img_size"]))
x, y = torch.randn(batch, 3, img, img), torch.randint(0, 10, (batch,))
_tmp = tempfile.TemporaryDirectory()
sys.path.insert(0, _tmp.name)


def qvit_at(rev: str):
    """qvit as of git revision ``rev``, imported as package qvit_<rev>."""
    pkg = f"qvit_{rev.replace('-', '_').replace('.', '_')}"
    if pkg not in sys.modules:
        root = Path(__file__).resolve().parents[1]
        blob = subprocess.run(["git", "archive", rev, "qvit"], cwd=root, check=True,
                              capture_output=True).stdout
        with tarfile.open(fileobj=io.BytesIO(blob)) as tar:
            tar.extractall(_tmp.name, filter="data")
        os.rename(Path(_tmp.name) / "qvit", Path(_tmp.name) / pkg)
        with warnings.catch_warnings():  # its timm registrations overwrite ours: harmless
            warnings.simplefilter("ignore")
            importlib.import_module(pkg)
    return sys.modules[pkg]


runs = {}
for c in configs:
    if c == "float":
        m = qvit.create_float_reference(name, num_classes=10, img_size=img,  # as the harness
                                        attention=RunSettings().float_attention)
        fused = True
    else:
        lib, spec = (qvit_at(c.split(":", 1)[0]), c.split(":", 1)[1]) if ":" in c else (qvit, c)
        flags = lib.Flags.parse(spec)
        torch.manual_seed(0)
        m = lib.create_model(name, num_classes=10, img_size=img, flags=flags)
        fused = flags.fused_optimizer
    opt = torch.optim.AdamW(m.parameters(), lr=1e-3, foreach=fused)
    runs[c] = (m.train(), opt)


def step(m, opt):
    loss = torch.nn.functional.cross_entropy(m(x), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


# Each round runs every config once, in an order shuffled per round (seeded), so neither
# drift nor the position in a round favours one; ratios pair the configs within a round.
times = {c: [] for c in configs}
order = random.Random(0)
for _ in range(repeats + 2):
    for c in order.sample(configs, len(configs)):
        m, opt = runs[c]
        t = time.perf_counter()
        step(m, opt)
        times[c].append(time.perf_counter() - t)
kept = {c: v[2:] for c, v in times.items()}
med = {c: st.median(v) for c, v in kept.items()}
print(f"{name} threads={torch.get_num_threads()} repeats={repeats} batch={batch} img={img} "
      f"cpu={cpu_model()}")
print("ratio a/b: geometric mean of the rounds' paired ratios, 95% t interval over rounds")
for c in configs:
    print(f"  {c:16s} step median {med[c]:.4f} s")
    for o in configs:
        if o != c:
            g, lo, hi, n = ratio_interval(kept[c], kept[o])
            print(f"      {c} / {o} = {g:.3f} [{lo:.3f}, {hi:.3f}]  (n={n})")
