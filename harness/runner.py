"""Runs: one config, one repeat, its own process; sweeps of runs that resume.

    >>> spec = RunSpec(config="seed", flags=Flags.preset("seed"), model="ivit_micro",
    ...                epochs=3)                                   # doctest: +SKIP
    >>> table = run_sweep([spec], "runs/demo")                     # doctest: +SKIP

`execute_run(spec, out_dir)` trains and evaluates one run in the calling process, appending
one row per epoch to the table (`harness.records`); `run_sweep` starts one child process per
run (``python -m harness.runner <spec.json> <out>``), in order, skipping runs the table
already holds as finished. A cluster executor calls `execute_run(spec, out, shard=True)`
inside its job and `records.merge_shards(out)` afterwards.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
import math
import os
import random
import signal
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from qvit import Flags

from . import records
from .data import DATASETS, native_img_size

__all__ = ["RunSpec", "execute_run", "run_sweep", "validate_spec", "resolve_device",
           "model_img_size", "build_model", "FAULT_ENV", "COUNT_SYNCS"]

COUNT_SYNCS = ("warmup", "all", "off")
# Test hook: JSON {config: {"fault": "oom|nan|error|hang", "epoch": 1, "step": 0}}.
FAULT_ENV = "QVIT_HARNESS_FAULT"


@dataclass(frozen=True)
class RunSpec:
    """One run: a config (a name and its flags) of one model on one dataset, one repeat."""

    config: str  # name of the config, e.g. "legacy"
    flags: Flags  # all flags (module flags build the model; loop flags drive the loop)
    model: str  # a qvit model name, or "package.module:factory" for any nn.Module factory
    dataset: str = "digits"  # digits (embedded) | cifar10 | cifar100 | imagefolder | synthetic
    data_dir: str | None = None
    img_size: int | None = None  # None: the model's default
    num_classes: int = 10
    epochs: int = 3
    steps_per_epoch: int | None = None  # None: a full pass over the training data
    eval_steps: int | None = None  # None: the whole validation set
    batch_size: int = 64
    eval_batch_size: int | None = None  # None: batch_size
    lr: float = 1e-3
    weight_decay: float = 0.05
    opt: str = "adamw"  # timm create_optimizer_v2 name
    sched: str = "cosine"  # timm create_scheduler_v2 name, or "none"
    lr_warmup_epochs: int = 0  # scheduler warm-up (not to be confused with warmup_epochs)
    min_lr: float = 0.0
    clip_grad: float | None = None  # gradient-norm clipping (both scaler paths)
    smoothing: float = 0.0  # label smoothing (LabelSmoothingCrossEntropy)
    mixup: float = 0.0  # timm Mixup alpha (0: off)
    cutmix: float = 0.0  # timm CutMix alpha (0: off)
    ema_decay: float = 0.0  # timm ModelEmaV3 decay (0: off); eval then uses the EMA weights
    warmup_epochs: int = 1  # first epochs marked `warmup` in the table
    repeat: int = 0
    seed: int = 0
    device: str = "auto"  # cpu | cuda | cuda:N | mps | auto
    block: int = 0  # repeat block index (ablation designs)
    order: int = 0  # position within the block
    float_reference: bool = False  # train qvit.create_float_reference (loop flags only)
    count_syncs: str = "warmup"  # count host syncs in: warm-up epochs | all epochs | off
    sync_count_steps: int | None = 8  # steps counted per counted epoch (None: all); the
    # counter's hooks slow the steps they watch, so by default only a few, in warm-up
    compile_backend: str = "inductor"  # torch.compile backend when compile_model is set

    def __post_init__(self):
        if isinstance(self.flags, (str, type(None))):
            object.__setattr__(self, "flags", Flags.parse(self.flags))
        if isinstance(self.flags, dict):
            object.__setattr__(self, "flags", Flags(**self.flags))
        if not isinstance(self.flags, Flags):
            raise ValueError(f"flags must be a qvit.Flags or a string like 'seed', "
                             f"got {self.flags!r}")
        if not self.config or not isinstance(self.config, str):
            raise ValueError(f"config must be a non-empty name, got {self.config!r}")
        if self.dataset not in DATASETS:
            raise ValueError(f"unknown dataset {self.dataset!r}; valid: {', '.join(DATASETS)}")
        for name in ("num_classes", "epochs", "batch_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        for name in ("steps_per_epoch", "eval_steps", "eval_batch_size", "img_size",
                     "sync_count_steps"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise ValueError(f"{name} must be a positive int or None, got {v!r}")
        if not 0 <= self.warmup_epochs < self.epochs:
            raise ValueError(f"warmup_epochs ({self.warmup_epochs}) must lie in "
                             f"0..epochs-1 ({self.epochs - 1})")
        if self.count_syncs not in COUNT_SYNCS:
            raise ValueError(f"count_syncs must be one of {COUNT_SYNCS}, got "
                             f"{self.count_syncs!r}")
        if not (self.lr > 0):
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if (self.mixup or self.cutmix) and self.batch_size % 2:
            raise ValueError(f"mixup/cutmix need an even batch_size, got {self.batch_size}")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"ema_decay must lie in [0, 1), got {self.ema_decay}")
        if not (self.device in ("cpu", "cuda", "mps", "auto") or
                self.device.startswith("cuda:")):
            raise ValueError(f"device must be cpu, cuda, cuda:N, mps or auto, got "
                             f"{self.device!r}")

    # --- identity and serialization ----------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["flags"] = self.flags.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunSpec:
        d = dict(d)
        d["flags"] = Flags(**d["flags"])
        return cls(**d)

    @property
    def run_id(self) -> str:
        """Stable id from everything that defines what is run (not block/order: where a
        run sits in a schedule does not make it another run)."""
        d = self.to_dict()
        d.pop("block")
        d.pop("order")
        digest = hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode())
        safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in
                       f"{self.config}-{self.model}")
        return f"{safe}-r{self.repeat}-{digest.hexdigest()[:10]}"


# --- resolution and validation -----------------------------------------------------------------

def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for, but CUDA is not available here; use "
                         f"--device cpu (or auto)")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError("device 'mps' asked for, but MPS is not available here; use cpu")
    return dev


def _factory(model: str):
    mod, _, fn = model.partition(":")
    try:
        return getattr(importlib.import_module(mod), fn)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"model {model!r}: cannot import factory {fn!r} from {mod!r} ({e})"
                         ) from None


def build_model(spec: RunSpec) -> torch.nn.Module:
    """The model of a run: a qvit model with the run's flags, its float reference, or a
    ``module:factory`` (called with num_classes, img_size, flags)."""
    if ":" in spec.model:
        return _factory(spec.model)(num_classes=spec.num_classes, img_size=spec.img_size,
                                    flags=spec.flags)
    import qvit

    if spec.float_reference:
        return qvit.create_float_reference(spec.model, num_classes=spec.num_classes,
                                           img_size=spec.img_size)
    return qvit.create_model(spec.model, num_classes=spec.num_classes, img_size=spec.img_size,
                             flags=spec.flags)


def model_img_size(spec: RunSpec) -> int:
    """The input resolution the run's model is built for (without building a qvit model)."""
    if spec.img_size is not None:
        return spec.img_size
    if ":" in spec.model:
        return int(getattr(build_model(spec), "default_img_size", 32))
    import qvit

    _, arch = qvit.registry.model_config(spec.model)
    return int(arch["img_size"])


def validate_spec(spec: RunSpec, *, load_data: bool = True):
    """Everything that would fail later, refused now with what would be right: an unknown
    model, a model/img_size mismatch, a missing or malformed data directory, labels outside
    num_classes. Returns the loaded `DataBundle` (or None without ``load_data``)."""
    from .data import check_labels, load_dataset

    if ":" not in spec.model:
        import qvit

        qvit.registry.model_config(spec.model)  # unknown model: ValueError with a hint
        if spec.img_size is not None:
            qvit.registry._check_common(spec.model, spec.num_classes, spec.img_size)
    size = model_img_size(spec)
    native = native_img_size(spec.dataset)
    if native is not None and native != size:
        raise ValueError(
            f"model {spec.model} is built for {size}x{size} inputs but {spec.dataset} images "
            f"are {native}x{native}: pass --img-size {native} to build the model for them, or "
            f"use --dataset synthetic/imagefolder (which take the model's size)")
    if not load_data:
        return None
    bundle = load_dataset(spec.dataset, data_dir=spec.data_dir, img_size=size,
                          num_classes=spec.num_classes, seed=spec.seed)
    check_labels(bundle, spec.num_classes)
    return bundle


# --- one run ---------------------------------------------------------------------------------

def check_specs(specs: list[RunSpec], *, validate: bool = True) -> None:
    """Refuse a sweep before any work: duplicate run ids, or (``validate``) any spec whose
    model, data or sizes would fail (checked once per distinct model/data combination)."""
    ids = [s.run_id for s in specs]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise ValueError(f"specs share run ids {dup}: give repeats distinct `repeat` values")
    if validate:
        checked: set = set()
        for s in specs:
            key = (s.model, s.dataset, s.data_dir, s.img_size, s.num_classes, s.float_reference)
            if key not in checked:
                validate_spec(s)
                checked.add(key)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _fault_for(spec: RunSpec):
    from .loop import FaultInjector

    raw = os.environ.get(FAULT_ENV)
    if not raw:
        return None
    conf = json.loads(raw).get(spec.config)
    return FaultInjector(**conf) if conf else None


def _classify(exc: BaseException) -> str:
    from .loop import NonFiniteLoss

    if isinstance(exc, NonFiniteLoss):
        return "nan"
    if isinstance(exc, (torch.OutOfMemoryError, MemoryError)) or \
            "out of memory" in str(exc).lower():
        return "oom"
    return "error"


def _base_row(spec: RunSpec, prov: dict) -> dict:
    row = dict(run_id=spec.run_id, config=spec.config, model=spec.model, dataset=spec.dataset,
               float_reference=spec.float_reference, repeat=spec.repeat, seed=spec.seed,
               block=spec.block, order=spec.order)
    row.update(spec.flags.to_dict())
    row.update(prov)
    return row


def execute_run(spec: RunSpec, out_dir: str | os.PathLike, *, shard: bool = False,
                progress: bool = False) -> pd.DataFrame:
    """Train and evaluate one run in this process; append a row per epoch as it ends (to
    the table, or with ``shard`` to ``<out>/shards/<run_id>.parquet``). An OOM, a NaN loss
    or an exception ends the run with a row whose status says so (oom, nan, error); it is
    not raised. Returns the run's rows."""
    from .provenance import provenance

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []

    def emit(row: dict) -> None:
        rows.append(row)
        if shard:
            records.write_shard(out_dir, spec.run_id, rows)
        else:
            records.append_rows(out_dir, [row])

    if not shard:
        records.drop_run(out_dir, spec.run_id)  # an unfinished or failed earlier attempt
    try:
        device = resolve_device(spec.device)
    except ValueError as e:
        device = torch.device("cpu")
        emit({**_base_row(spec, provenance(device, out_dir)), "epoch": 1, "warmup": True,
              "status": "error", "error": f"ValueError: {e}"})
        return records.normalize(pd.DataFrame(rows))
    base = _base_row(spec, provenance(device, out_dir))
    epoch = 1
    try:
        state = _setup(spec, device)
        history: list[dict] = []
        for epoch in range(1, spec.epochs + 1):
            row = _run_epoch(spec, state, epoch, out_dir, history, progress)
            emit({**base, **row})
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # noqa: BLE001 - every failure is recorded, the sweep goes on
        status = _classify(exc)
        tb = "".join(traceback.format_exception_only(type(exc), exc)).strip()
        if status == "error":
            tb = traceback.format_exc(limit=-6).strip()
        emit({**base, "epoch": epoch, "warmup": epoch <= spec.warmup_epochs,
              "status": status, "error": tb[-4000:]})
    return records.normalize(pd.DataFrame(rows))


@dataclass
class _State:
    device: torch.device
    model: torch.nn.Module
    train_model: torch.nn.Module
    optimizer: Any
    scheduler: Any
    scaler: Any
    loss_fn: Any
    eval_ema: Any
    mixup: Any
    train_batches: Any
    val_batches: Any
    mean_std: tuple
    fault: Any
    updates: int = 0


def _setup(spec: RunSpec, device: torch.device) -> _State:
    from timm.data import Mixup
    from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
    from timm.scheduler import create_scheduler_v2
    from timm.utils import ModelEmaV3, NativeScaler

    from .data import MEAN_STD, Batches
    from .loop import build_optimizer

    _seed_everything(spec.seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = False
    bundle = validate_spec(spec)
    flags = spec.flags
    _seed_everything(spec.seed)
    model = build_model(spec).to(device)
    train_model = model
    if flags.compile_model:
        train_model = torch.compile(model, backend=spec.compile_backend)
    optimizer = build_optimizer(model, opt=spec.opt, lr=spec.lr,
                                weight_decay=spec.weight_decay,
                                fused=flags.fused_optimizer, device=device)
    data_seed = spec.seed
    train_batches = Batches(bundle.train, batch_size=spec.batch_size, device=device,
                            num_workers=flags.num_workers, preload=flags.preload_to_device,
                            shuffle=True, drop_last=True, max_steps=spec.steps_per_epoch,
                            seed=data_seed)
    val_batches = Batches(bundle.val, batch_size=spec.eval_batch_size or spec.batch_size,
                          device=device, num_workers=flags.num_workers,
                          preload=flags.preload_to_device, shuffle=False, drop_last=False,
                          max_steps=spec.eval_steps, seed=data_seed)
    scheduler = None
    if spec.sched != "none":
        scheduler, _ = create_scheduler_v2(optimizer, sched=spec.sched, num_epochs=spec.epochs,
                                           warmup_epochs=spec.lr_warmup_epochs,
                                           min_lr=spec.min_lr,
                                           updates_per_epoch=len(train_batches))
    mixup = None
    if spec.mixup > 0 or spec.cutmix > 0:
        mixup = Mixup(mixup_alpha=spec.mixup, cutmix_alpha=spec.cutmix,
                      label_smoothing=spec.smoothing, num_classes=spec.num_classes)
        loss_fn = SoftTargetCrossEntropy()
    elif spec.smoothing > 0:
        loss_fn = LabelSmoothingCrossEntropy(smoothing=spec.smoothing)
    else:
        loss_fn = torch.nn.CrossEntropyLoss()
    ema = ModelEmaV3(model, decay=spec.ema_decay) if spec.ema_decay > 0 else None
    scaler = NativeScaler(device=device.type) if flags.grad_scaler_without_autocast else None
    return _State(device, model, train_model, optimizer, scheduler, scaler, loss_fn, ema,
                  mixup, train_batches, val_batches, MEAN_STD[spec.dataset], _fault_for(spec))


def _run_epoch(spec: RunSpec, st: _State, epoch: int, out_dir: Path, history: list,
               progress: bool) -> dict:
    from . import measure
    from .loop import compile_seconds, evaluate, train_one_epoch
    from .plots import plot_learning_curves

    t0 = time.perf_counter()
    c0 = compile_seconds()
    measure.reset_peak_memory(st.device)
    warm = epoch <= spec.warmup_epochs
    count = spec.count_syncs == "all" or (spec.count_syncs == "warmup" and warm)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(st.train_batches), desc=f"{spec.config} epoch {epoch}",
                   position=1, leave=False, unit="step", disable=not sys.stderr.isatty())
    try:
        tr = train_one_epoch(st.train_model, st.train_batches, epoch, optimizer=st.optimizer,
                             scheduler=st.scheduler, loss_fn=st.loss_fn, flags=spec.flags,
                             device=st.device, mean_std=st.mean_std, mixup=st.mixup,
                             ema=st.eval_ema, scaler=st.scaler, clip_grad=spec.clip_grad,
                             count_syncs=count,
                             count_steps=spec.sync_count_steps, updates_done=st.updates,
                             progress=bar, fault=st.fault)
    finally:
        if bar is not None:
            bar.close()
    st.updates += tr.steps
    if st.scheduler is not None:
        st.scheduler.step(epoch)
    eval_model = st.eval_ema.module if st.eval_ema is not None else st.train_model
    ev = evaluate(eval_model, st.val_batches, device=st.device, mean_std=st.mean_std,
                  num_classes=spec.num_classes)
    row = dict(epoch=epoch, warmup=warm, steps=tr.steps, train_s=tr.train_s, eval_s=ev.eval_s,
               compile_s=compile_seconds() - c0, step_s_median=tr.step_s_median,
               images_per_s=tr.images / tr.train_s if tr.train_s > 0 else math.nan,
               peak_mem_mb=measure.peak_memory_mb(st.device), syncs_per_step=tr.syncs_per_step,
               top1=ev.top1, top5=ev.top5, train_loss=tr.loss, eval_loss=ev.loss,
               status="ok", error="")
    history.append(row)
    if tr.counted_steps:  # what the syncs were, for a look behind the one number
        path = out_dir / "syncs" / f"{spec.run_id}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        old = json.loads(path.read_text()) if path.is_file() and epoch > 1 else {}
        old[str(epoch)] = {"counted_steps": tr.counted_steps, "steps": tr.steps,
                           "by_kind": tr.sync_kinds, "syncs_per_step": tr.syncs_per_step}
        path.write_text(json.dumps(old, indent=1, sort_keys=True) + "\n")
    if epoch % spec.flags.plot_every == 0 or epoch == spec.epochs:
        plot_learning_curves(history, out_dir / "plots" / f"{spec.run_id}.png",
                             f"{spec.model} {spec.config} ({spec.dataset}, repeat "
                             f"{spec.repeat})")
    row["wall_s"] = time.perf_counter() - t0
    return row


# --- sweeps --------------------------------------------------------------------------------

def _child_env() -> dict:
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join([root] + [p for p in
                                                  env.get("PYTHONPATH", "").split(os.pathsep)
                                                  if p])
    return env


def _run_child(spec: RunSpec, out_dir: Path, progress: bool) -> int:
    spec_dir = out_dir / "specs"
    spec_dir.mkdir(parents=True, exist_ok=True)
    path = spec_dir / f"{spec.run_id}.json"
    path.write_text(json.dumps(spec.to_dict(), indent=1, sort_keys=True) + "\n")
    cmd = [sys.executable, "-m", "harness.runner", str(path), str(out_dir)]
    if progress:
        cmd.append("--progress")
    proc = subprocess.Popen(cmd, env=_child_env(), stdin=subprocess.DEVNULL)
    (out_dir / "specs" / f"{spec.run_id}.pid").write_text(f"{proc.pid}\n")
    try:
        return proc.wait()
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    finally:
        (out_dir / "specs" / f"{spec.run_id}.pid").unlink(missing_ok=True)


def _record_dead_child(spec: RunSpec, out_dir: Path, rc: int) -> None:
    """The child died without recording its end (killed, or crashed hard): say so."""
    from .provenance import provenance

    table = records.read_table(out_dir)
    mine = table[table["run_id"] == spec.run_id]
    if len(mine) and (mine["status"] != "ok").any():
        return  # the child recorded its own failure
    if len(mine) and (mine["status"] == "ok").all() and len(mine) >= spec.epochs:
        return
    why = (f"child process killed by {signal.Signals(-rc).name} (the kernel OOM killer, a "
           f"time limit or a user)" if rc < 0 else f"child process exited with code {rc}")
    epoch = int(mine["epoch"].max()) + 1 if len(mine) else 1
    try:
        device = resolve_device(spec.device)
    except ValueError:
        device = torch.device("cpu")
    row = {**_base_row(spec, provenance(device, out_dir)), "epoch": epoch,
           "warmup": epoch <= spec.warmup_epochs, "status": "error", "error": why}
    records.append_rows(out_dir, [row])


def run_sweep(specs: list[RunSpec], out_dir: str | os.PathLike, *, executor: Any = "local",
              progress: bool = True, validate: bool = True) -> pd.DataFrame:
    """Run every spec, in order, each in its own process (``executor="local"``; ``"inline"``
    runs them in this process, for debugging; ``"slurm"`` / ``"submitit-local"`` or an
    `harness.executors.ExecutorOptions`: one job per repeat block, `executors.run_blocks`).
    Runs the table in ``out_dir`` holds as
    finished are skipped; unfinished or failed ones are redone. Every spec is validated
    before the first run starts. Returns the whole table."""
    if executor not in ("local", "inline"):
        # slurm / submitit-local (a name, an executors.ExecutorOptions or an [executor]
        # table): one job per repeat block, results merged back into this table
        from .executors import options_from, run_blocks

        opts = options_from({"kind": executor} if isinstance(executor, str) else executor)
        if opts.kind not in ("local", "inline"):
            return run_blocks(specs, out_dir, opts, progress=progress, validate=validate)
        executor = opts.kind
    out_dir = Path(out_dir)
    check_specs(specs, validate=validate)
    out_dir.mkdir(parents=True, exist_ok=True)
    done = records.finished_run_ids(records.read_table(out_dir),
                                    {s.run_id: s.epochs for s in specs})
    todo = [s for s in specs if s.run_id not in done]
    from tqdm.auto import tqdm

    bar = tqdm(total=len(specs), initial=len(specs) - len(todo), desc="runs", unit="run",
               position=0, disable=not (progress and sys.stderr.isatty()))
    try:
        for s in todo:
            bar.set_postfix_str(f"{s.config} / {s.model}")
            if executor == "inline":
                execute_run(s, out_dir, progress=progress)
            else:
                rc = _run_child(s, out_dir, progress)
                if rc != 0:
                    _record_dead_child(s, out_dir, rc)
            bar.update(1)
    finally:
        bar.close()
    return records.read_table(out_dir)


def _main(argv: list[str] | None = None) -> int:
    """Child entry point: ``python -m harness.runner SPEC.json OUT [--progress] [--shard]``."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m harness.runner")
    p.add_argument("spec")
    p.add_argument("out")
    p.add_argument("--progress", action="store_true")
    p.add_argument("--shard", action="store_true")
    a = p.parse_args(argv)
    spec = RunSpec.from_dict(json.loads(Path(a.spec).read_text()))
    execute_run(spec, a.out, shard=a.shard, progress=a.progress)
    return 0


if __name__ == "__main__":
    sys.exit(_main())
