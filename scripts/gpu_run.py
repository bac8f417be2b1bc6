"""Issue #23 in one prepared run: parity on the device, the seed's timeline, and legacy / seed /
best / float on DeiT-T and Swin-T at 224, sized from numbers (docs/gpu.md).

    python scripts/gpu_run.py --smoke --out $OUT             # GPU: tiny sizes, prints the plan
    python scripts/gpu_run.py --blocks 3 --steps 12 ... --out $OUT   # GPU: the measurement
    python scripts/gpu_run.py --smoke --device cpu --models ivit_micro,swin_micro \\
        --img-size 32 --batch-size 4 --out /tmp/x             # the same path on a CPU (CI)

Phases, each logged to OUT/work/ and timed:

1. ``env``: device name, driver, torch / CUDA versions, the machine.
2. ``parity``: on the device, per model: best's eval logits bitwise equal to legacy's on the
   same weights and ranges; one AdamW step (gradients and parameters) bitwise; the device
   frexp (``frexp_device``) bitwise equal to the host ``batch_frexp`` on the model's own
   scales and on edge values; and a probe of the sync counter against CUDA's sync debug
   mode, op by op.
3. ``timeline``: ``harness ablate ablations/gpu_seed_timeline.toml`` (whole epochs).
4. ``best``: ``harness ablate ablations/gpu_best.toml`` (whole epochs and step-interleaved
   sessions; ``best_compiled`` added with ``--compile``).
5. ``report``: ``harness report`` on both folders (rebuilt from their tables), the summary,
   and, with ``--smoke``, the plan: the sizes whose predicted wall time fits ``--budget-min``,
   from the smoke's own step times and overheads.

Everything goes under OUT/work/, packed into OUT/gpu_results.tar.gz; OUT also gets
summary.md, summary.json, plan.json (smoke) and run.log, at most 8 files (what the device
tool brings back). The summary is printed last. Exit status 1 when a phase failed or parity
broke (the summary says which); the later phases still run.

This file imports no harness module at its top (the harness is driven by its command line);
the parity phase imports qvit, and harness's sync counter where it is found.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import platform
import shlex
import subprocess
import sys
import tarfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import tomllib

ROOT = Path(__file__).resolve().parent.parent
SPECS = {"timeline": ROOT / "ablations" / "gpu_seed_timeline.toml",
         "best": ROOT / "ablations" / "gpu_best.toml"}
GPU_MODELS = ("deit_tiny_patch16_224", "swin_tiny_patch4_window7_224")
INTERLEAVE_WARMUP = 3     # harness.run.interleave.Session.warmup: untimed rounds per session
SAFETY = 1.25             # predicted minutes are multiplied by this before they must fit
COMPILED = {"name": "best_compiled", "flags": "best,compile_model=true",
            "note": "best, torch.compile (qvit_inductor)"}


@dataclass(frozen=True)
class Sizes:
    """What a run of this script measures; the plan chooses these from the smoke's numbers."""

    blocks: int = 3          # epoch blocks of each ablation (>= 3 for the issue)
    sessions: int = 3        # step-interleaved sessions per model
    steps: int = 10          # training steps per epoch (1 warm-up epoch + measured epochs)
    epochs: int = 2          # epochs per run, the warm-up one included
    eval_steps: int = 2      # eval batches per epoch
    rounds: int = 6          # rounds per interleaved session
    sync_steps: int = 4      # steps whose syncs are counted (in the warm-up epoch)
    compile: bool = False    # add best,compile_model=true to the best design

    def args(self) -> list[str]:
        out = ["--blocks", str(self.blocks), "--sessions", str(self.sessions), "--steps",
               str(self.steps), "--epochs", str(self.epochs), "--eval-steps",
               str(self.eval_steps), "--rounds", str(self.rounds), "--sync-steps",
               str(self.sync_steps)]
        return out + (["--compile"] if self.compile else [])


SMOKE = Sizes(blocks=2, sessions=2, steps=3, epochs=2, eval_steps=1, rounds=2, sync_steps=2)
MEASURE = Sizes()


@dataclass
class Phase:
    name: str
    ok: bool = True
    seconds: float = 0.0
    note: str = ""
    data: dict = field(default_factory=dict)


# --- small helpers ----------------------------------------------------------------------------

class Log:
    """Prints and appends to OUT/run.log."""

    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)

    def __call__(self, *parts: Any) -> None:
        line = " ".join(str(p) for p in parts)
        print(line, flush=True)
        with self.path.open("a") as f:
            f.write(line + "\n")


def toml_dumps(data: dict) -> str:
    """A TOML writer for what a spec holds (tables, arrays of tables, scalars, arrays)."""

    def val(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, str):
            return json.dumps(v)
        if isinstance(v, (list, tuple)):
            return "[" + ", ".join(val(x) for x in v) + "]"
        raise TypeError(f"cannot write {type(v).__name__} to TOML")

    def table(prefix: str, d: dict) -> list[str]:
        lines = [f"{k} = {val(v)}" for k, v in d.items()
                 if not isinstance(v, dict) and not (isinstance(v, list) and v
                                                      and isinstance(v[0], dict))]
        for k, v in d.items():
            name = f"{prefix}.{k}" if prefix else k
            if isinstance(v, dict):
                lines += ["", f"[{name}]", *table(name, v)]
            elif isinstance(v, list) and v and isinstance(v[0], dict):
                for item in v:
                    lines += ["", f"[[{name}]]", *table(name, item)]
        return lines

    return "\n".join(table("", data)).lstrip() + "\n"


def derived_spec(which: str, sizes: Sizes, *, device: str, models: list[str],
                 batch_size: int | None, img_size: int | None) -> dict:
    """The shipped spec with this run's sizes (what the measurement ran is written beside
    its results, so the report's spec is the one measured)."""
    spec = tomllib.loads(SPECS[which].read_text())
    run = spec["run"]
    run.update(models=list(models), device=device, repeats=sizes.blocks,
               epochs=sizes.epochs, steps_per_epoch=sizes.steps, eval_steps=sizes.eval_steps,
               sync_count_steps=sizes.sync_steps)
    if batch_size:
        run["batch_size"] = batch_size
    if img_size:
        run["img_size"] = img_size
    if which == "best":
        run["rounds"] = sizes.rounds
        # sessions and blocks are both `repeats` in one spec: the larger of the two runs
        run["repeats"] = max(sizes.blocks, sizes.sessions)
        if sizes.compile:
            spec["design"]["configs"].append(dict(COMPILED))
    return spec


def _import_first(names: tuple[str, ...], attr: str):
    """``attr`` from the first module of ``names`` that has it (the harness is being
    reorganized into packages; the counter may move)."""
    for name in names:
        try:
            mod = importlib.import_module(name)
        except ImportError:
            continue
        if hasattr(mod, attr):
            return getattr(mod, attr)
    import pkgutil

    import harness

    for info in pkgutil.walk_packages(harness.__path__, "harness."):
        try:
            mod = importlib.import_module(info.name)
        except Exception:  # noqa: BLE001 - a module that does not import is not the one
            continue
        if hasattr(mod, attr):
            return getattr(mod, attr)
    raise ImportError(f"no harness module defines {attr}")


# --- 1. env -----------------------------------------------------------------------------------

def env_info(device: str) -> dict:
    import torch

    info = {"python": platform.python_version(), "torch": torch.__version__,
            "cuda_version": torch.version.cuda or "", "device": device,
            "device_name": "cpu: " + (platform.processor() or platform.machine()),
            "driver": "", "cpu_count": os.cpu_count(), "commit": _commit()}
    try:
        import timm

        info["timm"] = timm.__version__
    except ImportError:
        info["timm"] = ""
    if device.startswith("cuda") and torch.cuda.is_available():
        idx = torch.device(device).index or 0
        info["device_name"] = torch.cuda.get_device_name(idx)
        props = torch.cuda.get_device_properties(idx)
        info["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
        info["multiprocessors"] = props.multi_processor_count
        info["cudnn"] = torch.backends.cudnn.version()
        try:
            q = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,clocks.sm,"
                                "clocks.max.sm,power.limit", "--format=csv,noheader"],
                               capture_output=True, text=True, timeout=30)
            info["nvidia_smi"] = q.stdout.strip()
            if q.returncode == 0 and q.stdout.strip():
                info["driver"] = q.stdout.strip().splitlines()[0].split(",")[1].strip()
        except (OSError, subprocess.TimeoutExpired) as e:
            info["nvidia_smi"] = f"unavailable: {e}"
    return info


def _commit() -> str:
    try:
        q = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                           capture_output=True, text=True, timeout=10)
        if q.returncode == 0:
            return q.stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        pass
    stamp = ROOT / ".whl" / "COMMIT"  # written by scripts/gpu_wheels.sh (no .git there)
    return " ".join(stamp.read_text().split()) if stamp.exists() else ""


# --- 2. parity --------------------------------------------------------------------------------

def _bitwise(a, b) -> bool:
    import torch

    return a.shape == b.shape and a.dtype == b.dtype and bool(
        torch.equal(a.view(-1).view(torch.uint8) if a.is_floating_point() else a,
                    b.view(-1).view(torch.uint8) if b.is_floating_point() else b))


def frexp_parity(device: str, scales: list) -> dict:
    """``frexp_device`` against the host ``batch_frexp`` on ``device``: the model's scales and
    their ratios, and edge values (powers of two, ties of the 31-bit rounding, tiny, huge,
    negative)."""
    import torch

    requant = importlib.import_module("qvit.ops.requant")
    g = torch.Generator().manual_seed(0)
    edge = [2.0 ** k for k in range(-40, 20, 3)] + [-(2.0 ** -7), 1e-30, 3e38, 0.75,
                                                      1.0 - 2.0 ** -40]
    ties = (torch.randint(1, 2**30, (64,), generator=g).double() * 2 + 1) / 2.0**32
    rnd = torch.exp(torch.empty(2048, dtype=torch.float64).uniform_(-30, 10, generator=g))
    parts = [torch.tensor(edge, dtype=torch.float64), ties, rnd,
             rnd.float().double()] + [s.detach().double().reshape(-1).cpu() for s in scales]
    x = torch.cat(parts).to(device)
    x32 = x.float()
    out = {"values": int(x.numel())}
    for name, v in (("float64", x), ("float32", x32)):
        mh, eh = requant.batch_frexp(v)
        md, ed = requant.frexp_device(v)
        out[name] = _bitwise(mh, md) and _bitwise(eh, ed)
        out[f"{name}_mismatches"] = int(((mh != md) | (eh != ed)).sum().item())
    out["equal"] = out["float64"] and out["float32"]
    return out


def model_parity(model_name: str, device: str, *, batch: int, img_size: int | None,
                 num_classes: int = 10) -> dict:
    """best vs legacy on one model, on ``device``: the same weights and ranges (legacy
    calibrated, its state loaded into best), eval logits bitwise, then one AdamW step from
    that state on the same batch: loss, every gradient and every parameter bitwise. A
    legacy-vs-legacy control says whether the device itself is deterministic here."""
    import torch

    import qvit

    dev = torch.device(device)
    s = img_size or qvit.model_config(model_name)[1]["img_size"]
    g = torch.Generator().manual_seed(0)
    calib = [torch.randn(batch, 3, s, s, generator=g) for _ in range(2)]
    x = torch.randn(batch, 3, s, s, generator=g).to(dev)
    y = torch.randint(0, num_classes, (batch,), generator=g).to(dev)

    def make(preset: str, state=None):
        torch.manual_seed(0)
        m = qvit.create_model(model_name, num_classes=num_classes, img_size=img_size,
                              flags=qvit.Flags.preset(preset)).to(dev)
        if state is None:
            qvit.calibrate(m, [c.to(dev) for c in calib])
        else:
            m.load_state_dict(state, strict=True)
        return m

    legacy = make("legacy")
    state = {k: v.detach().clone() for k, v in legacy.state_dict().items()}
    res: dict[str, Any] = {"model": model_name, "batch": batch, "img_size": s}
    t0 = time.perf_counter()
    models = {"legacy": legacy, "best": make("best", state), "legacy2": make("legacy", state)}
    logits = {}
    with torch.no_grad():
        for k, m in models.items():
            m.eval()
            logits[k] = m(x).float()
    res["eval_logits_equal"] = _bitwise(logits["legacy"], logits["best"])
    res["eval_logits_max_abs_diff"] = float((logits["legacy"] - logits["best"]).abs().max())
    res["control_eval_equal"] = _bitwise(logits["legacy"], logits["legacy2"])
    after = {}
    for k, m in models.items():
        m.load_state_dict(state, strict=True)
        m.train()
        opt = torch.optim.AdamW(m.parameters(), lr=1e-3, weight_decay=0.05, foreach=False)
        torch.manual_seed(1)  # drop path draws the same masks in every model
        loss = torch.nn.functional.cross_entropy(m(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        grads = {n: p.grad.detach().clone() for n, p in m.named_parameters()
                 if p.grad is not None}
        opt.step()
        after[k] = (loss.detach(), grads, {n: p.detach().clone()
                                          for n, p in m.named_parameters()})

    def same(a: str, b: str) -> tuple[bool, bool, bool, list]:
        la, ga, pa = after[a]
        lb, gb, pb = after[b]
        bad_g = [n for n in ga if n not in gb or not _bitwise(ga[n], gb[n])]
        bad_p = [n for n in pa if not _bitwise(pa[n], pb[n])]
        return _bitwise(la, lb), not bad_g and ga.keys() == gb.keys(), not bad_p, \
            (bad_g + bad_p)[:5]

    res["loss_equal"], res["grads_equal"], res["step_params_equal"], res["first_diffs"] = \
        same("legacy", "best")
    c = same("legacy", "legacy2")
    res["control_step_equal"] = c[0] and c[1] and c[2]
    scales = [b for n, b in legacy.named_buffers() if "scale" in n.lower() and b.numel()]
    res["frexp"] = frexp_parity(device, scales)
    res["seconds"] = round(time.perf_counter() - t0, 2)
    res["equal"] = bool(res["eval_logits_equal"] and res["loss_equal"] and res["grads_equal"]
                        and res["step_params_equal"] and res["frexp"]["equal"])
    return res


def sync_probe(device: str) -> list[dict]:
    """Each kind of sync alone, counted by harness's counter and (on CUDA) by
    torch.cuda.set_sync_debug_mode: where the two disagree, which op it is."""
    import torch

    count_host_syncs = _import_first(("harness.run.measure",),
                                     "count_host_syncs")
    dev = torch.device(device)
    x = torch.arange(8, device=dev, dtype=torch.float32)
    host = torch.ones(8)
    pinned = host.pin_memory() if dev.type == "cuda" else host
    ops = {
        "item": lambda: x.sum().item(),
        "tolist": lambda: x.tolist(),
        "cpu": lambda: x.cpu(),
        "bool": lambda: bool(x.sum() > 0),
        "nonzero": lambda: x.nonzero(),
        "mask_index": lambda: x[x > 3],
        "cuda_synchronize": lambda: torch.cuda.synchronize() if dev.type == "cuda" else None,
        "h2d_blocking": lambda: host.to(dev),
        "h2d_non_blocking": lambda: pinned.to(dev, non_blocking=True),
        "tensor_to_device": lambda: torch.tensor(2.0).to(dev),
        "tensor_on_device": lambda: torch.tensor([1.0, 2.0], device=dev),
        "no_sync_arith": lambda: (x * 2 + 1).sum(),
    }
    out = []
    for name, fn in ops.items():
        with count_host_syncs(dev, cuda_debug=True) as c:
            fn()
        out.append({"op": name, "counter": c.count, "cuda_debug": c.cuda_debug_count,
                    "kinds": dict(c.by_kind)})
    return out


def sync_census(model_name: str, device: str, preset: str, *, batch: int,
                img_size: int | None, num_classes: int = 10) -> dict:
    """One training step of ``preset`` (after a warm-up step), its host syncs counted by
    harness's counter and, on CUDA, by torch.cuda.set_sync_debug_mode('warn'), each CUDA
    warning attributed to the Python line that made it: where the two counts differ, the
    lines say which op. Data normalization is harness's (the loop's own per-batch step)."""
    import collections
    import warnings

    import torch

    import qvit

    count_host_syncs = _import_first(("harness.run.measure",),
                                     "count_host_syncs")
    normalize_batch = _import_first(("harness.run.data",), "normalize_batch")
    dev = torch.device(device)
    s = img_size or qvit.model_config(model_name)[1]["img_size"]
    g = torch.Generator().manual_seed(0)
    x8 = torch.randint(0, 256, (batch, 3, s, s), generator=g, dtype=torch.uint8).to(dev)
    y = torch.randint(0, num_classes, (batch,), generator=g).to(dev)
    ms = ((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    torch.manual_seed(0)
    flags = qvit.Flags.preset(preset)
    model = qvit.create_model(model_name, num_classes=num_classes, img_size=img_size,
                              flags=flags).to(dev)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=dev.type == "cuda"
                            and flags.fused_optimizer, foreach=False if not
                            (dev.type == "cuda" and flags.fused_optimizer) else None)

    def step(count: bool):
        x = normalize_batch(x8, ms)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss

    step(False)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    sources: collections.Counter = collections.Counter()
    debug = None
    # a non-capturable optimizer keeps its step counters on the host by design (harness's
    # loop declares them the same way): reading them is no device read
    host_steps = [st["step"] for st in opt.state.values()
                  if isinstance(st.get("step"), torch.Tensor) and st["step"].device.type == "cpu"]
    with count_host_syncs(dev) as c:
        c.host_resident(host_steps)
        if dev.type == "cuda":
            with warnings.catch_warnings(record=True) as rec:
                warnings.simplefilter("always")
                old = torch.cuda.get_sync_debug_mode()
                torch.cuda.set_sync_debug_mode("warn")
                try:
                    step(True)
                finally:
                    torch.cuda.set_sync_debug_mode(old)
            hits = [w for w in rec if "synchroniz" in str(w.message).lower()]
            debug = len(hits)
            sources.update(f"{Path(w.filename).name}:{w.lineno}" for w in hits)
        else:
            step(True)
    return {"model": model_name, "preset": preset, "counter": c.count,
            "counter_kinds": dict(c.by_kind), "cuda_debug": debug,
            "cuda_debug_sources": dict(sources.most_common(12))}


def phase_parity(args, log: Log, work: Path) -> Phase:
    ph = Phase("parity")
    import torch

    torch.backends.cudnn.benchmark = False
    results = []
    for m in args.models:
        r = model_parity(m, args.device, batch=args.parity_batch, img_size=args.img_size)
        results.append(r)
        log(f"parity {m}: eval logits equal {r['eval_logits_equal']}, one AdamW step: loss "
            f"{r['loss_equal']} grads {r['grads_equal']} params {r['step_params_equal']}; "
            f"frexp device == host {r['frexp']['equal']} ({r['frexp']['values']} values); "
            f"control legacy==legacy eval {r['control_eval_equal']} step "
            f"{r['control_step_equal']} ({r['seconds']} s)")
    census = []
    for m in args.models:
        for preset in ("legacy", "seed", "best"):
            try:
                r = sync_census(m, args.device, preset, batch=args.parity_batch,
                                img_size=args.img_size)
            except Exception as e:  # noqa: BLE001 - a diagnosis, not a verdict
                r = {"model": m, "preset": preset, "error": f"{type(e).__name__}: {e}"}
            census.append(r)
            log(f"sync census {m} {preset}: counter {r.get('counter')} cuda debug "
                f"{r.get('cuda_debug')} {r.get('cuda_debug_sources') or r.get('error', '')}")
    probe = sync_probe(args.device)
    for p in probe:
        log(f"sync probe {p['op']:18s} counter {p['counter']}  cuda debug {p['cuda_debug']}")
    ph.ok = all(r["equal"] for r in results)
    ph.data = {"models": results, "sync_probe": probe, "sync_census": census}
    (work / "parity.json").write_text(json.dumps(ph.data, indent=1, default=str))
    return ph


# --- 3./4. the ablations ----------------------------------------------------------------------

def run_ablation(which: str, args, sizes: Sizes, log: Log, work: Path) -> Phase:
    ph = Phase(which)
    spec = derived_spec(which, sizes, device=args.device, models=args.models,
                        batch_size=args.batch_size, img_size=args.img_size)
    spec_path = work / "specs" / f"{spec['name']}.toml"
    spec_path.parent.mkdir(parents=True, exist_ok=True)
    spec_path.write_text(toml_dumps(spec))
    out = work / spec["name"]
    cmd = [sys.executable, "-m", "harness", "ablate", str(spec_path), "--out", str(out),
           "--no-report"]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    ph.data = {"cmd": shlex.join(cmd), "out": str(out), "spec": spec}
    log(f"$ {shlex.join(cmd)}")
    rc, note = _call(cmd, work / f"{which}.log")
    ph.ok = rc == 0
    if not ph.ok:
        ph.note = (note or f"exit {rc}") + ": " + _tail(work / f"{which}.log")
    return ph


DEADLINE = {"t": None}  # perf_counter time by which the script must have packed its files
RESERVE_S = 45.0        # kept for the reports, the summary and the tarball


def _call(cmd: list[str], log_path: Path, *, reserve: float = RESERVE_S) -> tuple[int, str]:
    """Run ``cmd`` (its own process group) into ``log_path``; past the deadline minus
    ``reserve`` the whole group is killed (the harness's block children too), so the script
    still writes its summary before the device tool's limit. Returns (exit code, note)."""
    import signal

    timeout = None
    if DEADLINE["t"] is not None:
        timeout = max(DEADLINE["t"] - reserve - time.perf_counter(), 5.0)
    with log_path.open("w") as f:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, env=_env(),
                                start_new_session=True)
        try:
            return proc.wait(timeout=timeout), ""
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            return -9, f"killed at the deadline after {timeout:.0f} s (partial results)"


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def _tail(path: Path, n: int = 3) -> str:
    try:
        lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
    except OSError:
        return ""
    return " | ".join(lines[-n:])[-600:]


def run_report(folder: Path, log: Log, work: Path) -> Phase:
    ph = Phase(f"report {folder.name}")
    cmd = [sys.executable, "-m", "harness", "report", str(folder)]
    log(f"$ {shlex.join(cmd)}")
    rc, note = _call(cmd, work / f"report_{folder.name}.log", reserve=10.0)
    ph.ok = rc == 0 and (folder / "report.md").exists()
    if not ph.ok:
        ph.note = (note or f"exit {rc}") + ": " + _tail(work / f"report_{folder.name}.log")
    return ph


def read_runs(folder: Path):
    """The runs table of a folder (the harness's parquet, CSV if that is unreadable)."""
    import pandas as pd

    for name, reader in (("runs.parquet", pd.read_parquet), ("runs.csv", pd.read_csv)):
        p = folder / name
        if p.exists():
            try:
                return reader(p)
            except Exception:  # noqa: BLE001 - try the other copy
                continue
    return pd.DataFrame()


# --- 5. the plan ------------------------------------------------------------------------------

@dataclass
class RunCost:
    """What one (model, config) run of whole epochs costs, from a smoke table."""

    per_step: float       # wall seconds per training step (train_s - startup_s) / steps
    epoch_fixed: float    # per epoch, not scaling with steps: startup, plots, ...
    per_eval_step: float  # eval seconds per eval batch
    warm_extra: float     # the warm-up epoch's first-call costs beyond a measured epoch
    compile_s: float = 0.0

    def epoch(self, steps: int, eval_steps: int) -> float:
        return self.epoch_fixed + steps * self.per_step + eval_steps * self.per_eval_step


def epoch_costs(table, smoke: Sizes) -> dict[tuple[str, str], RunCost]:
    """One `RunCost` per (model, config) of the epochs rows of a smoke table."""
    out = {}
    if table is None or not len(table):
        return out
    t = table[(table.get("method", "epochs") == "epochs") & (table["status"] == "ok")]
    for (model, config), g in t.groupby(["model", "config"]):
        meas = g[~g["warmup"].astype(bool)]
        warm = g[g["warmup"].astype(bool)]
        if not len(meas):
            continue
        steps = meas["steps"].clip(lower=1)
        per_step = float(((meas["train_s"] - meas["startup_s"]) / steps).median())
        eval_steps = max(smoke.eval_steps, 1)
        per_eval = float((meas["eval_s"] / eval_steps).median())
        fixed = float((meas["epoch_s"] - (meas["train_s"] - meas["startup_s"])
                       - meas["eval_s"]).median())
        extra = float(warm["epoch_s"].median() - meas["epoch_s"].median()) if len(warm) else 0.
        comp = float(g["compile_s"].fillna(0).max()) if "compile_s" in g else 0.0
        out[(model, config)] = RunCost(max(per_step, 0.0), max(fixed, 0.0),
                                       max(per_eval, 0.0), max(extra, 0.0), comp)
    return out


def step_costs(table) -> dict[tuple[str, str], float]:
    """Median seconds of one interleaved step per (model, config)."""
    if table is None or not len(table) or "method" not in table:
        return {}
    t = table[(table["method"] == "steps") & (table["status"] == "ok")]
    return {k: float(g["train_s"].median()) for k, g in t.groupby(["model", "config"])}


def predict_epochs(costs: dict, sizes: Sizes, per_run_fixed: float) -> float:
    """Seconds of one ablation's whole-epoch runs at ``sizes``."""
    per_block = sum(per_run_fixed + c.warm_extra + c.compile_s
                    + sizes.epochs * c.epoch(sizes.steps, sizes.eval_steps)
                    for c in costs.values())
    return sizes.blocks * per_block


def predict_sessions(steps: dict, sizes: Sizes, per_session_fixed: float, n_models: int
                     ) -> float:
    per_model = {}
    for (model, _), t in steps.items():
        per_model[model] = per_model.get(model, 0.0) + t
    rounds = INTERLEAVE_WARMUP + sizes.rounds
    return sizes.sessions * sum(per_session_fixed + rounds * v for v in per_model.values()) \
        if per_model else sizes.sessions * n_models * per_session_fixed


def smoke_model(phases: dict[str, Phase], smoke: Sizes) -> dict:
    """The cost model fitted on a smoke run: per-run fixed seconds (process start, model
    build, data) from the timeline's wall time minus its rows' epochs, the same for the
    best design's epoch runs, and the per-session fixed seconds from what is left."""
    tl, best = phases.get("timeline"), phases.get("best")
    m: dict[str, Any] = {"epoch_costs": {}, "step_costs": {}}
    tl_table = read_runs(Path(tl.data["out"])) if tl else None
    best_table = read_runs(Path(best.data["out"])) if best else None
    tl_costs = epoch_costs(tl_table, smoke)
    best_costs = epoch_costs(best_table, smoke)
    steps = step_costs(best_table)
    n_tl = max(len(tl_costs) * smoke.blocks, 1)
    fixed = 0.0
    if tl and tl_table is not None and len(tl_table):
        rows = float(tl_table["epoch_s"].fillna(0).sum())
        fixed = max((tl.seconds - rows) / n_tl, 0.0)
    m["per_run_fixed_s"] = fixed
    blocks_b = max(smoke.blocks, smoke.sessions)
    sess_fixed = 0.0
    if best and best_table is not None and len(best_table):
        ep = predict_epochs(best_costs, replace(smoke, blocks=blocks_b), fixed)
        inner = predict_sessions(steps, replace(smoke, sessions=blocks_b), 0.0,
                                 len({k[0] for k in steps}))
        n_sess = max(blocks_b * len({k[0] for k in steps}), 1)
        sess_fixed = max((best.seconds - ep - inner) / n_sess, 0.0)
    m["per_session_fixed_s"] = sess_fixed
    m["tl_costs"], m["best_costs"], m["steps"] = tl_costs, best_costs, steps
    m["epoch_costs"] = {f"{k[0]}/{k[1]}": asdict(v) for k, v in {**tl_costs}.items()}
    m["step_costs"] = {f"{k[0]}/{k[1]}": v for k, v in steps.items()}
    m["fixed_s"] = {name: phases[name].seconds for name in phases
                    if name not in ("timeline", "best")}
    return m


def predict(m: dict, sizes: Sizes) -> dict[str, float]:
    """Predicted seconds of each phase of a measurement at ``sizes``."""
    n_models = len({k[0] for k in m["tl_costs"]}) or 2
    best_costs = dict(m["best_costs"])
    if not sizes.compile:
        best_costs = {k: v for k, v in best_costs.items() if k[1] != COMPILED["name"]}
    steps = {k: v for k, v in m["steps"].items()
             if sizes.compile or k[1] != COMPILED["name"]}
    bb = max(sizes.blocks, sizes.sessions)
    out = {"timeline": predict_epochs(m["tl_costs"], sizes, m["per_run_fixed_s"]),
           "best": predict_epochs(best_costs, replace(sizes, blocks=bb), m["per_run_fixed_s"])
           + predict_sessions(steps, replace(sizes, sessions=bb), m["per_session_fixed_s"],
                              n_models)}
    out.update(m["fixed_s"])
    out["total"] = sum(out.values())
    return out


def choose(m: dict, budget_s: float, *, compile_measured: bool) -> tuple[Sizes, dict, list]:
    """The largest sizes whose predicted total (times SAFETY) fits the budget: blocks and
    sessions 3 (the issue's minimum) first, then steps, rounds, compile, more blocks."""
    notes = []

    def fits(s: Sizes) -> bool:
        return predict(m, s)["total"] * SAFETY <= budget_s

    s = Sizes(blocks=3, sessions=3, steps=4, epochs=2, eval_steps=1, rounds=4, sync_steps=3)
    if not fits(s):
        notes.append("even the minimum (3 blocks, 3 sessions, 4 steps, 4 rounds) is predicted "
                     "over the budget: it is planned anyway, expect the command to run long")
        return s, predict(m, s), notes
    grow = [("steps", 50), ("rounds", 12)]
    for name, top in grow:
        while getattr(s, name) < top and fits(replace(s, **{name: getattr(s, name) + 1})):
            s = replace(s, **{name: getattr(s, name) + 1})
    s = replace(s, sync_steps=min(4, max(s.steps - 1, 1)))
    if compile_measured and fits(replace(s, compile=True)):
        s = replace(s, compile=True)
    elif compile_measured:
        notes.append("best_compiled does not fit the budget: left out")
    else:
        notes.append("compile not measured by this smoke (run it with --compile to plan it)")
    for name, top in (("blocks", 5), ("sessions", 5)):
        while getattr(s, name) < top and fits(replace(s, **{name: getattr(s, name) + 1})):
            s = replace(s, **{name: getattr(s, name) + 1})
    if fits(replace(s, eval_steps=2)):
        s = replace(s, eval_steps=2)
    return s, predict(m, s), notes


# --- summary ----------------------------------------------------------------------------------

def _summary_rows(folder: Path) -> list[dict]:
    p = folder / "summary.csv"
    if not p.exists():
        return []
    import pandas as pd

    return pd.read_csv(p).to_dict("records")


def _fmt(v: Any, nd: int = 2) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if math.isnan(v):
            return "-"
        return f"{v:.{nd}f}"
    return str(v)


def _ci(row: dict, key: str) -> str:
    """``x [lo, hi]`` of a summary.csv ratio column, ``-`` where absent."""
    v = row.get(key)
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    lo, hi = row.get(f"{key}_lo"), row.get(f"{key}_hi")
    if lo is None or hi is None or (isinstance(lo, float) and math.isnan(lo)):
        return f"{v:.2f}"
    return f"{v:.2f} [{lo:.2f}, {hi:.2f}]"


def sync_table(folders: list[Path]) -> list[dict]:
    """Per (model, config): syncs per step by harness's counter and by CUDA's debug mode,
    medians over the counted epochs, and the counter's kinds."""
    rows = []
    for folder in folders:
        t = read_runs(folder)
        if not len(t) or "syncs_per_step" not in t:
            continue
        t = t[t["syncs_per_step"].notna()]
        for (model, config), g in t.groupby(["model", "config"]):
            ours = float(g["syncs_per_step"].median())
            cuda = float(g["cuda_debug_syncs_per_step"].median()) \
                if g["cuda_debug_syncs_per_step"].notna().any() else math.nan
            rows.append({"design": folder.name, "model": model, "config": config,
                         "counter": ours, "cuda_debug": cuda,
                         "equal": (not math.isnan(cuda)) and abs(ours - cuda) < 1e-9,
                         "kinds": str(g["sync_kinds"].iloc[0]) if "sync_kinds" in g else ""})
    return rows


def summarize(phases: dict[str, Phase], env: dict, work: Path, sizes: Sizes,
              plan: dict | None) -> tuple[str, dict]:
    lines = [f"# GPU run ({'smoke' if plan is not None else 'measurement'}): "
             f"{env.get('device_name')}", "",
             f"device {env.get('device_name')}, driver {env.get('driver') or '-'}, torch "
             f"{env.get('torch')} (CUDA {env.get('cuda_version') or '-'}), timm "
             f"{env.get('timm')}, Python {env.get('python')}, commit {env.get('commit') or '-'}",
             f"sizes: {' '.join(sizes.args())}", "", "## Phases", "",
             "| phase | ok | seconds | note |", "|---|---|---|---|"]
    for ph in phases.values():
        lines.append(f"| {ph.name} | {'ok' if ph.ok else 'FAILED'} | {ph.seconds:.1f} | "
                     f"{ph.note.replace('|', '/')[:300]} |")
    par = phases.get("parity")
    if par and par.data:
        lines += ["", "## Parity on the device (best vs legacy, same weights and ranges)", "",
                  "| model | eval logits | AdamW step: loss | grads | params | frexp device "
                  "== host | control legacy==legacy (eval, step) |",
                  "|---|---|---|---|---|---|---|"]
        for r in par.data.get("models", []):
            lines.append(f"| {r['model']} | {r['eval_logits_equal']} | {r['loss_equal']} | "
                         f"{r['grads_equal']} | {r['step_params_equal']} | "
                         f"{r['frexp']['equal']} ({r['frexp']['values']} values) | "
                         f"{r['control_eval_equal']}, {r['control_step_equal']} |")
        lines += ["", "sync probe (one op each): " + ", ".join(
            f"{p['op']} {p['counter']}/{_fmt(p['cuda_debug'])}"
            for p in par.data.get("sync_probe", [])) + " (counter/CUDA debug)"]
        census = par.data.get("sync_census") or []
        if census:
            lines += ["", "one training step, syncs (harness's normalize_batch + the model + "
                      "AdamW): counter vs CUDA debug, and the lines CUDA's warnings came from",
                      "", "| model | preset | counter | CUDA debug | CUDA's sources |",
                      "|---|---|---|---|---|"]
            for r in census:
                where = r.get("error") or ", ".join(
                    f"{k} x{v}" for k, v in (r.get("cuda_debug_sources") or {}).items())
                lines.append(f"| {r['model']} | {r['preset']} | {r.get('counter', '-')} | "
                             f"{_fmt(r.get('cuda_debug'))} | {where[:300]} |")
    for key in ("timeline", "best"):
        ph = phases.get(key)
        if not ph or "out" not in ph.data:
            continue
        rows = _summary_rows(Path(ph.data["out"]))
        if rows:
            lines += ["", f"## {key}: {Path(ph.data['out']).name}/report.md (baseline / config, "
                      "> 1 faster; 95% t-intervals)", "",
                      "| model | config | epoch x | step x | data+loop x | interleaved step x "
                      "| step / float | interleaved step / float | blocks |",
                      "|---|---|---|---|---|---|---|---|---|"]
            for r in rows:
                lines.append(
                    f"| {r.get('model')} | {r.get('config')} | {_ci(r, 'speedup')} | "
                    f"{_ci(r, 'speedup_step')} | {_ci(r, 'speedup_other')} | "
                    f"{_ci(r, 'speedup_interleaved')} | {_ci(r, 'float_multiple')} | "
                    f"{_ci(r, 'float_multiple_interleaved')} | {_fmt(r.get('n_runs'))} |")
    syncs = sync_table([Path(phases[k].data["out"]) for k in ("timeline", "best")
                        if k in phases and "out" in phases[k].data])
    if syncs:
        lines += ["", "## Syncs per training step: our counter vs CUDA's sync debug mode", "",
                  "| design | model | config | counter | CUDA debug | equal | kinds |",
                  "|---|---|---|---|---|---|---|"]
        lines += [f"| {r['design']} | {r['model']} | {r['config']} | {_fmt(r['counter'])} | "
                  f"{_fmt(r['cuda_debug'])} | {r['equal']} | {r['kinds'][:120]} |"
                  for r in syncs]
    if plan is not None:
        lines += ["", "## Plan for the measurement", "", plan["text"]]
    data = {"env": env, "sizes": asdict(sizes),
            "phases": {k: {"ok": v.ok, "seconds": v.seconds, "note": v.note}
                       for k, v in phases.items()},
            "parity": par.data if par else None, "syncs": syncs, "plan": plan}
    return "\n".join(lines) + "\n", data


# --- main -------------------------------------------------------------------------------------

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=os.environ.get("OUT"), help="output folder (default $OUT)")
    p.add_argument("--smoke", action="store_true", help="tiny sizes; fit the cost model and "
                   "print the plan for the measurement")
    p.add_argument("--device", default="cuda")
    p.add_argument("--models", default=",".join(GPU_MODELS))
    p.add_argument("--batch-size", type=int, default=None, help="override the specs' 64")
    p.add_argument("--img-size", type=int, default=None, help="override the specs' 224")
    p.add_argument("--parity-batch", type=int, default=8)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--budget-min", type=float, default=8.0,
                   help="minutes the measurement command must end within (the plan's target)")
    p.add_argument("--phases", default="parity,timeline,best,report")
    p.add_argument("--plan", help="a plan.json from a smoke run: take its sizes")
    d = MEASURE
    for name in ("blocks", "sessions", "steps", "epochs", "eval_steps", "rounds", "sync_steps"):
        p.add_argument("--" + name.replace("_", "-"), type=int, default=None,
                       help=f"(measurement default {getattr(d, name)}; smoke "
                       f"{getattr(SMOKE, name)})")
    p.add_argument("--compile", action="store_true", help="add best,compile_model=true")
    p.add_argument("--deadline-min", type=float, default=9.0,
                   help="minutes after which running harness commands are stopped so that "
                   "the summary and the tarball are still written (under the device "
                   "tool's timeout_s; 0: none)")
    args = p.parse_args(argv)
    if not args.out:
        p.error("--out (or $OUT) is required")
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    args.phases = [x.strip() for x in args.phases.split(",") if x.strip()]
    base = SMOKE if args.smoke else MEASURE
    if args.plan:
        base = Sizes(**json.loads(Path(args.plan).read_text())["sizes"])
    kw = {n: getattr(args, n) for n in ("blocks", "sessions", "steps", "epochs", "eval_steps",
                                        "rounds", "sync_steps") if getattr(args, n) is not None}
    if args.compile:
        kw["compile"] = True
    args.sizes = replace(base, **kw)
    return args


def pack(out: Path, work: Path) -> Path:
    tar = out / "gpu_results.tar.gz"
    with tarfile.open(tar, "w:gz") as tf:
        tf.add(work, arcname="gpu_results")
    return tar


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = Path(args.out).resolve()
    work = out / "work"
    work.mkdir(parents=True, exist_ok=True)
    log = Log(out / "run.log")
    t_start = time.perf_counter()
    DEADLINE["t"] = t_start + args.deadline_min * 60 if args.deadline_min > 0 else None
    sizes = args.sizes
    log(f"gpu_run: {'smoke' if args.smoke else 'measurement'} on {args.device}; models "
        f"{','.join(args.models)}; sizes {' '.join(sizes.args())}")
    phases: dict[str, Phase] = {}

    def timed(name: str, fn) -> Phase:
        t0 = time.perf_counter()
        try:
            ph = fn()
        except Exception as e:  # noqa: BLE001 - a broken phase must not stop the others
            import traceback

            (work / f"{name}.error.txt").write_text(traceback.format_exc())
            ph = Phase(name, ok=False, note=f"{type(e).__name__}: {e}"[:400])
        ph.name = name
        ph.seconds = time.perf_counter() - t0
        phases[name] = ph
        log(f"[{name}] {'ok' if ph.ok else 'FAILED'} in {ph.seconds:.1f} s {ph.note}")
        return ph

    env: dict = {}

    def do_env() -> Phase:
        env.update(env_info(args.device))
        (work / "env.json").write_text(json.dumps(env, indent=1))
        return Phase("env", data=env)

    timed("env", do_env)
    if "parity" in args.phases:
        timed("parity", lambda: phase_parity(args, log, work))
    for which in ("timeline", "best"):
        if which in args.phases:
            timed(which, lambda w=which: run_ablation(w, args, sizes, log, work))
    if "report" in args.phases:
        for which in ("timeline", "best"):
            if which in phases and "out" in phases[which].data:
                folder = Path(phases[which].data["out"])
                if (folder / "design.json").exists():
                    timed(f"report_{which}", lambda f=folder: run_report(f, log, work))
    plan = None
    if args.smoke:
        m = smoke_model(phases, sizes)
        compile_measured = sizes.compile
        chosen, pred, notes = choose(m, args.budget_min * 60, compile_measured=compile_measured)
        cmd = "bash scripts/gpu_run.sh " + " ".join(chosen.args())
        text = (f"predicted minutes at {' '.join(chosen.args())}: "
                + ", ".join(f"{k} {v / 60:.2f}" for k, v in pred.items())
                + f" (x{SAFETY} safety must fit {args.budget_min:g} min)\n\n"
                + "".join(f"- {n}\n" for n in notes)
                + "\nstep seconds per config (interleaved medians): "
                + ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in sorted(m["step_costs"].items()))
                + "\n\nmeasurement command:\n\n    " + cmd + "\n")
        plan = {"sizes": asdict(chosen), "predicted_s": pred, "notes": notes, "command": cmd,
                "budget_min": args.budget_min, "safety": SAFETY, "text": text,
                "model": {k: m[k] for k in ("per_run_fixed_s", "per_session_fixed_s",
                                            "epoch_costs", "step_costs", "fixed_s")}}
        (out / "plan.json").write_text(json.dumps(plan, indent=1, default=str))
    text, data = summarize(phases, env, work, sizes, plan)
    data["wall_s"] = time.perf_counter() - t_start
    (out / "summary.md").write_text(text)
    (out / "summary.json").write_text(json.dumps(data, indent=1, default=str))
    (work / "summary.md").write_text(text)
    try:
        tar = pack(out, work)
        log(f"packed {tar} ({tar.stat().st_size / 2**20:.1f} MiB)")
    except OSError as e:
        log(f"packing failed: {e}")
    ok = all(ph.ok for ph in phases.values())
    print("\n" + text, flush=True)
    print(f"gpu_run: {'OK' if ok else 'FAILED'} in {(time.perf_counter() - t_start) / 60:.1f} "
          f"min; files in {out}", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
