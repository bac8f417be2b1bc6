"""Runs in this process: one config of one model, one repeat, epoch by epoch, resumable.

    >>> spec = RunSpec(config="seed", flags=Flags.preset("seed"),
    ...                settings=RunSettings(model="ivit_micro", epochs=3))   # doctest: +SKIP
    >>> execute_block([spec], "runs/demo")                                     # doctest: +SKIP

`execute_run(spec, out)` trains and evaluates one run, writing one row per finished epoch to
its shard (`harness.records`) and a checkpoint after every epoch, so a run killed in epoch k
resumes after epoch k-1 with nothing lost or duplicated; the first epoch after a resume is
marked ``resumed`` and left out of timing statistics. `execute_block` runs the runs of one
repeat block in their order; it is what a child process (``python -m harness.run.runner
BLOCK.json OUT``) and a cluster job execute. Spawning children and sweeps: `executors`.
"""

from __future__ import annotations

import copy
import functools
import json
import math
import os
import random
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from harness import records
from harness.errors import child_main, io_fault
from harness.records.files import save_torch, write_text
from harness.run import loop, measure
from harness.run.data import MEAN_STD, Batches, check_labels, load_dataset, native_img_size
from harness.run.plots import plot_learning_curves
from harness.run.process import apply_process_settings
from harness.spec.settings import RunSettings, digest, identity
from qvit import Flags

__all__ = ["RunSpec", "execute_run", "execute_block", "train_in_memory", "validate_spec",
           "check_specs", "resolve_device", "model_img_size", "build_model", "base_row",
           "FAULT_ENV", "CHECKPOINTS", "INFLIGHT", "CODE_CHANGED", "CODE_CHANGED_MESSAGE"]

# Test hook: JSON {config: {"fault": "oom|nan|error|hang", "epoch": 1, "step": 0}}.
FAULT_ENV = "QVIT_HARNESS_FAULT"
CHECKPOINTS = "checkpoints"  # <out>/checkpoints/<run_id>.pt while a run is unfinished
INFLIGHT = "inflight.json"  # <out>/jobs/<block>/inflight.json: the run a child is in
# A child whose run ids differ from its parent's (qvit/ or harness/ edited since the sweep
# started: another identity) runs nothing and exits with this code.
CODE_CHANGED = 3
CODE_CHANGED_MESSAGE = ("the source of qvit/ or harness/ changed since this sweep started "
                        "(the runs would have other identities); nothing more was run: rerun "
                        "the same command to measure the code as it is now")


@dataclass(frozen=True)
class RunSpec:
    """One run: a config (a name and its flags) under one set of run settings, one repeat."""

    config: str
    flags: Flags
    settings: RunSettings = field(default_factory=RunSettings)
    float_reference: bool = False  # train qvit.create_float_reference (loop flags only)
    repeat: int = 0
    block: int = 0  # repeat block (ablation designs); where a run sits is not its identity
    order: int = 0

    @property
    def compile_backend(self) -> str:
        """compile_model's backend for this run: a float reference has no bits to keep."""
        s = self.settings
        return s.float_compile_backend if self.float_reference else s.compile_backend

    def compile_options(self, device_type: str) -> dict[str, Any]:
        """loop.compile_model's keywords: `compile_backend`, and the scope and CUDA graphs
        the flags resolve to on this device."""
        p = self.flags.paths(device_type=device_type)
        return dict(backend=self.compile_backend, scope=p.compiled,
                    cuda_graphs=p.cuda_graphs == "replay")

    def __post_init__(self):
        if not isinstance(self.flags, Flags):
            raise ValueError(f"flags must be a qvit.Flags, got {self.flags!r}; use "
                             f"Flags.parse('seed,...')")
        if not isinstance(self.settings, RunSettings):
            raise ValueError(f"settings must be a RunSettings, got {self.settings!r}")
        if not self.config or not isinstance(self.config, str):
            raise ValueError(f"config must be a non-empty name, got {self.config!r}")

    @property
    def model(self) -> str:
        return self.settings.model

    @property
    def epochs(self) -> int:
        return self.settings.epochs

    def identity(self) -> dict[str, Any]:
        return identity(self.settings, self.flags.to_dict(), config=self.config,
                        float_reference=self.float_reference, repeat=self.repeat)

    @property
    def run_id(self) -> str:
        """Readable prefix + a digest of the run's whole identity (`settings.identity`)."""
        safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in
                       f"{self.config}-{self.model}")
        return f"{safe}-r{self.repeat}-{digest(self.identity())}"

    def to_dict(self) -> dict[str, Any]:
        return {"config": self.config, "flags": self.flags.to_dict(),
                "settings": self.settings.model_dump(), "float_reference": self.float_reference,
                "repeat": self.repeat, "block": self.block, "order": self.order}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunSpec:
        return cls(config=d["config"], flags=Flags.from_dict(d["flags"]),
                   settings=RunSettings(**d["settings"]),
                   float_reference=d.get("float_reference", False), repeat=d.get("repeat", 0),
                   block=d.get("block", 0), order=d.get("order", 0))


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
    import importlib

    mod, _, fn = model.partition(":")
    try:
        return getattr(importlib.import_module(mod), fn)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"model {model!r}: cannot import factory {fn!r} from {mod!r} ({e})"
                         ) from None


def build_model(spec: RunSpec) -> torch.nn.Module:
    """The model of a run: a qvit model with the run's flags, its float reference, or a
    ``module:factory`` (called with num_classes, img_size, flags)."""
    import qvit

    s = spec.settings
    if ":" in s.model:
        return _factory(s.model)(num_classes=s.num_classes, img_size=s.img_size,
                                 flags=spec.flags)
    if spec.float_reference:
        return qvit.create_float_reference(s.model, num_classes=s.num_classes,
                                           img_size=s.img_size,
                                           attention=s.float_attention)
    return qvit.create_model(s.model, num_classes=s.num_classes, img_size=s.img_size,
                             flags=spec.flags)


def model_img_size(settings: RunSettings) -> int:
    """The input resolution the run's model is built for (without building a qvit model)."""
    import qvit

    if settings.img_size is not None:
        return settings.img_size
    if ":" in settings.model:
        spec = RunSpec("probe", Flags(), settings)
        return int(getattr(build_model(spec), "default_img_size", 32))
    _, arch = qvit.registry.model_config(settings.model)
    return int(arch["img_size"])


def validate_spec(settings: RunSettings, *, load_data: bool = True):
    """Everything that would fail later, refused now with what would be right: an unknown
    model, a model/img_size mismatch, the device, a missing or malformed data directory,
    labels outside num_classes. Returns the loaded `DataBundle` (or None)."""
    import qvit

    resolve_device(settings.device)
    if ":" not in settings.model:
        qvit.registry.model_config(settings.model)  # unknown model: ValueError with a hint
        if settings.img_size is not None:
            qvit.registry.check_model_args(settings.model, settings.num_classes,
                                           settings.img_size)
    size = model_img_size(settings)
    native = native_img_size(settings.dataset)
    if native is not None and native != size:
        raise ValueError(
            f"model {settings.model} is built for {size}x{size} inputs but {settings.dataset} "
            f"images are {native}x{native}: pass --img-size {native} (img_size = {native} in "
            f"a spec's [run]) to build the model for them, or use dataset "
            f"synthetic/imagefolder (which take the model's size)")
    if settings.eval_deployed and ":" in settings.model:  # (qvit's own models deploy)
        from qvit.deploy.convert import check_deployable

        try:
            check_deployable(build_model(RunSpec("probe", Flags(), settings)), calibrated=False)
        except ValueError as e:
            raise ValueError(f"eval_deployed: model {settings.model}: {e}") from None
    if not load_data:
        return None
    bundle = _load_dataset(settings.dataset, settings.data_dir, size, settings.num_classes,
                           settings.seed)
    check_labels(bundle, settings.num_classes)
    return bundle


@functools.lru_cache(maxsize=1)
def _load_dataset(dataset: str, data_dir: str | None, img_size: int, num_classes: int,
                  seed: int):
    """The runs of a block share one loaded dataset (read-only: batches copy out of it)
    instead of each loading it again in its set-up."""
    return load_dataset(dataset, data_dir=data_dir, img_size=img_size,
                        num_classes=num_classes, seed=seed)


def check_specs(specs: list[RunSpec], *, validate: bool = True) -> None:
    """Refuse a sweep before any work: duplicate run ids, or (``validate``) any spec whose
    device, model, data or sizes would fail (checked once per distinct combination)."""
    ids = [s.run_id for s in specs]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise ValueError(f"specs share run ids {dup}: give repeats distinct `repeat` values")
    if validate:
        checked: set = set()
        for s in specs:
            st = s.settings
            key = (st.model, st.dataset, st.data_dir, st.img_size, st.num_classes, st.device,
                   st.eval_deployed)
            if key not in checked:
                validate_spec(st)
                checked.add(key)


# --- one run -------------------------------------------------------------------------------------

def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _fault_for(spec: RunSpec) -> loop.FaultInjector | None:
    raw = os.environ.get(FAULT_ENV)
    if not raw:
        return None
    conf = json.loads(raw).get(spec.config)
    return loop.FaultInjector(**conf) if conf else None


def _classify(exc: BaseException) -> str:
    if isinstance(exc, loop.NonFiniteLoss):
        return "nan"
    if isinstance(exc, (torch.OutOfMemoryError, MemoryError)) or \
            "out of memory" in str(exc).lower():
        return "oom"
    return "error"


def base_row(spec: RunSpec, prov: dict, process: dict[str, int]) -> dict:
    """The columns every row of ``spec``'s run shares; ``process``: the process settings in
    force (`apply_process_settings`), recorded as they were applied."""
    s = spec.settings
    row = dict(run_id=spec.run_id, config=spec.config, model=s.model, dataset=s.dataset,
               float_reference=spec.float_reference, repeat=spec.repeat, seed=s.seed,
               block=spec.block, order=spec.order, method="epochs",
               code_digest=spec.identity()["code"], **process)
    row.update(spec.flags.to_dict())
    row.update(prov)
    return row


@dataclass
class _State:
    """What a run carries from epoch to epoch (and through a checkpoint)."""

    device: torch.device
    model: torch.nn.Module
    train_model: torch.nn.Module
    optimizer: Any
    scheduler: Any
    scaler: Any
    loss_fn: Any
    ema: Any
    mixup: Any
    train_batches: Any
    val_batches: Any
    mean_std: tuple
    fault: Any
    pretrained: dict
    updates: int = 0
    history: list = field(default_factory=list)


def _loss_fn(s: RunSettings):
    from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

    if s.mixup > 0 or s.cutmix > 0:
        return SoftTargetCrossEntropy()
    if s.smoothing > 0:
        return LabelSmoothingCrossEntropy(smoothing=s.smoothing)
    return torch.nn.CrossEntropyLoss()


def _setup(spec: RunSpec, device: torch.device) -> _State:
    from timm.data import Mixup
    from timm.scheduler import create_scheduler_v2
    from timm.utils import ModelEmaV3, NativeScaler

    from harness.run.pretrained import start_from_pretrained

    s, flags = spec.settings, spec.flags  # (process settings: applied by the caller)
    bundle = validate_spec(s)
    _seed_everything(s.seed)
    model = build_model(spec).to(device)
    train_batches = Batches(bundle.train, batch_size=s.batch_size, device=device,
                            num_workers=flags.num_workers, preload=flags.preload_to_device,
                            shuffle=True, drop_last=True, max_steps=s.steps_per_epoch,
                            seed=s.seed)
    val_batches = Batches(bundle.val, batch_size=s.eval_batch_size or s.batch_size,
                          device=device, num_workers=flags.num_workers,
                          preload=flags.preload_to_device, shuffle=False, drop_last=False,
                          max_steps=s.eval_steps, seed=s.seed)
    pretrained = start_from_pretrained(model, spec, bundle, device) if s.pretrained else {}
    train_model = (loop.compile_model(model, **spec.compile_options(device.type))
                   if flags.compile_model else model)
    optimizer = loop.build_optimizer(model, opt=s.opt, lr=s.lr, weight_decay=s.weight_decay,
                                fused=flags.fused_optimizer, device=device)
    scheduler = None
    if s.sched != "none":
        scheduler, _ = create_scheduler_v2(optimizer, sched=s.sched, num_epochs=s.epochs,
                                           warmup_epochs=s.lr_warmup_epochs, min_lr=s.min_lr,
                                           updates_per_epoch=len(train_batches))
    mixup = None
    if s.mixup > 0 or s.cutmix > 0:
        mixup = Mixup(mixup_alpha=s.mixup, cutmix_alpha=s.cutmix, label_smoothing=s.smoothing,
                      num_classes=s.num_classes)
    ema = ModelEmaV3(model, decay=s.ema_decay) if s.ema_decay > 0 else None
    scaler = NativeScaler(device=device.type) if flags.grad_scaler_without_autocast else None
    return _State(device, model, train_model, optimizer, scheduler, scaler, _loss_fn(s), ema,
                  mixup, train_batches, val_batches, MEAN_STD[s.dataset], _fault_for(spec),
                  pretrained)


# --- checkpoints: a run resumes after its last finished epoch --------------------------------

def _checkpoint_path(out_dir: Path, spec: RunSpec) -> Path:
    return out_dir / CHECKPOINTS / f"{spec.run_id}.pt"


def _save_checkpoint(out_dir: Path, spec: RunSpec, st: _State, epoch: int) -> None:
    """State dicts only (``torch.load(weights_only=True)`` reads them), atomically."""
    state = {"epoch": epoch, "updates": st.updates, "model": st.model.state_dict(),
             "optimizer": st.optimizer.state_dict(),
             "scheduler": st.scheduler.state_dict() if st.scheduler is not None else None,
             "ema": st.ema.state_dict() if st.ema is not None else None,
             "scaler": st.scaler.state_dict() if st.scaler is not None else None,
             "rng_cpu": torch.get_rng_state(),
             "rng_cuda": torch.cuda.get_rng_state_all() if st.device.type == "cuda" else [],
             "history": json.dumps(st.history, default=float)}
    path = _checkpoint_path(out_dir, spec)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_torch(state, path)


def _resume(out_dir: Path, spec: RunSpec, st: _State) -> int:
    """Load the checkpoint of the run's last finished epoch; returns that epoch (0: none).
    Rows recorded after it (an epoch that died half-way) are dropped."""
    path = _checkpoint_path(out_dir, spec)
    done = records.resumable_epochs(records.run_rows(out_dir, spec.run_id), spec.run_id)
    if not path.is_file() or done == 0:
        records.drop_shard_rows_after(out_dir, spec.run_id, 0)
        return 0
    ck = torch.load(path, weights_only=True, map_location=st.device)
    epoch = min(int(ck["epoch"]), done)
    if epoch != int(ck["epoch"]):  # the table lost an epoch the checkpoint has: start over
        records.drop_shard_rows_after(out_dir, spec.run_id, 0)
        return 0
    st.model.load_state_dict(ck["model"])
    st.optimizer.load_state_dict(ck["optimizer"])
    for part, obj in (("scheduler", st.scheduler), ("ema", st.ema), ("scaler", st.scaler)):
        if obj is not None and ck[part] is not None:
            obj.load_state_dict(ck[part])
    torch.set_rng_state(ck["rng_cpu"])
    if ck["rng_cuda"]:
        torch.cuda.set_rng_state_all(ck["rng_cuda"])
    st.updates = int(ck["updates"])
    st.history = json.loads(ck["history"])
    records.drop_shard_rows_after(out_dir, spec.run_id, epoch)
    return epoch


def _first_steps(batches: Batches, steps: int | None, num_workers: int | None = None
                 ) -> Batches:
    """The same batches (preloaded tensors shared), only the first ``steps`` of an epoch
    (and, given, through ``num_workers`` loader processes)."""
    if steps is None or steps >= len(batches):
        return batches
    capped = copy.copy(batches)
    capped.steps = steps
    capped.num_workers = batches.num_workers if num_workers is None else num_workers
    return capped


def _run_epoch(spec: RunSpec, st: _State, epoch: int, resumed: bool, progress: bool, *,
               evaluate: bool = True) -> dict:
    """One epoch and its row. A warm-up epoch measures nothing: it trains ``warmup_steps``
    steps (first calls, optimizer state, the sync count) and evaluates one batch (the
    evaluation's first calls), without plots. ``evaluate=False``: no evaluation at all."""
    s = spec.settings
    t0 = time.perf_counter()
    c0 = loop.compile_seconds()
    measure.reset_peak_memory(st.device)
    warm = epoch <= s.warmup_epochs
    count = s.count_syncs == "all" or (s.count_syncs == "first" and epoch == 1)
    train_batches = _first_steps(st.train_batches, s.warmup_steps if warm else None)
    bar = None
    if progress and sys.stderr.isatty():
        from tqdm.auto import tqdm

        bar = tqdm(total=len(train_batches), desc=f"{spec.config} epoch {epoch}",
                   position=1, leave=False, unit="step")
    try:
        tr = loop.train_one_epoch(st.train_model, train_batches, epoch, optimizer=st.optimizer,
                             scheduler=st.scheduler, loss_fn=st.loss_fn, flags=spec.flags,
                             device=st.device, mean_std=st.mean_std, mixup=st.mixup,
                             ema=st.ema, scaler=st.scaler, clip_grad=s.clip_grad,
                             count_syncs=count, count_steps=s.sync_count_steps,
                             updates_done=st.updates, progress=bar, fault=st.fault,
                             epoch_steps=len(st.train_batches))
    finally:
        if bar is not None:
            bar.close()
    st.updates += tr.steps
    if st.scheduler is not None:
        st.scheduler.step(epoch)
    eval_model = st.ema.module if st.ema is not None else st.train_model
    # the warm-up's one batch: the model's first calls in eval (workers start in every epoch)
    ev = loop.evaluate(eval_model, _first_steps(st.val_batches, 1, 0) if warm else st.val_batches,
                       device=st.device, mean_std=st.mean_std, num_classes=s.num_classes
                       ) if evaluate else loop.EvalResult(0.0, math.nan, math.nan, math.nan, 0)
    row = dict(epoch=epoch, warmup=warm, resumed=resumed, counted=bool(tr.counted_steps),
               steps=tr.steps, train_s=tr.train_s, startup_s=tr.startup_s, data_s=tr.data_s,
               compute_s=tr.compute_s, eval_s=ev.eval_s, compile_s=loop.compile_seconds() - c0,
               step_s_median=tr.step_s_median, step_times=json.dumps(tr.step_times),
               images_per_s=tr.images / tr.train_s if tr.train_s > 0 else math.nan,
               peak_mem_mb=measure.peak_memory_mb(st.device),
               syncs_per_step=tr.syncs_per_step,
               cuda_debug_syncs_per_step=tr.cuda_debug_syncs_per_step,
               sync_kinds=json.dumps(tr.sync_kinds, sort_keys=True) if tr.counted_steps else "",
               top1=ev.top1, top5=ev.top5, eval_images=ev.images, train_loss=tr.loss,
               eval_loss=ev.loss, status="ok", error="", **st.pretrained)
    st.history.append({k: row[k] for k in ("epoch", "train_loss", "eval_loss", "top1",
                                           "top5")})
    t_plot = time.perf_counter()
    if not warm and (epoch % spec.flags.plot_every == 0 or epoch == s.epochs):
        # the seed drew learning curves inside its timed epoch; rendered, not kept
        plot_learning_curves(st.history, None, f"{s.model} {spec.config}")
    row["plot_s"] = time.perf_counter() - t_plot
    row["epoch_s"] = time.perf_counter() - t0  # train + eval + plot: what the seed timed
    if s.eval_deployed and epoch == s.epochs and not spec.float_reference:  # (untimed)
        row.update(loop.evaluate_deployed(eval_model, st.val_batches, mean_std=st.mean_std))
    row["ended"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    return row


def train_in_memory(spec: RunSpec, *, progress: bool = False, on_epoch=None
                    ) -> tuple[torch.nn.Module, list[dict]]:
    """Train one run here, keeping nothing on disk (the pretrained start's float training).
    Failures raise. Returns the model and one row per epoch (each also given to
    ``on_epoch`` as it ends, where one is given); only the last epoch is evaluated (its
    accuracy is the one kept)."""
    from tqdm.auto import tqdm

    device = resolve_device(spec.settings.device)
    apply_process_settings(spec.settings, device)
    st = _setup(spec, device)
    rows = []
    for epoch in tqdm(range(1, spec.epochs + 1), desc=f"{spec.model} {spec.config}",
                      unit="epoch", disable=not (progress and sys.stderr.isatty())):
        rows.append(_run_epoch(spec, st, epoch, resumed=False, progress=False,
                               evaluate=epoch == spec.epochs))
        if on_epoch is not None:
            on_epoch(rows[-1])
    return st.model, rows


def execute_run(spec: RunSpec, out_dir: str | os.PathLike, *, progress: bool = False
                ) -> pd.DataFrame:
    """Train and evaluate one run here, resuming after its last finished epoch; one row per
    epoch goes to the run's shard as the epoch ends. An OOM, a NaN loss or an exception ends
    the run with a row whose status says so (not raised). Returns the run's rows."""
    from harness.records.provenance import provenance

    out_dir = Path(out_dir)
    device = resolve_device(spec.settings.device)  # checked before the sweep started
    process = apply_process_settings(spec.settings, device)
    base = base_row(spec, provenance(device, out_dir, **process), process)
    epoch = 1
    try:
        t0 = time.perf_counter()
        st = _setup(spec, device)
        start = _resume(out_dir, spec, st)
        setup_s = time.perf_counter() - t0  # on the first row this process writes
        for epoch in range(start + 1, spec.epochs + 1):
            row = _run_epoch(spec, st, epoch, resumed=start > 0 and epoch == start + 1,
                             progress=progress)
            row["setup_s"], setup_s = setup_s, math.nan
            _save_checkpoint(out_dir, spec, st, epoch)
            records.append_shard_rows(out_dir, spec.run_id, [{**base, **row}])
        _checkpoint_path(out_dir, spec).unlink(missing_ok=True)
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # noqa: BLE001 - every failure is recorded, the sweep goes on
        if io_fault(exc) is not None:
            raise  # the disk's fault, not the run's: the sweep stops, the run resumes later
        status = _classify(exc)
        tb = "".join(traceback.format_exception_only(type(exc), exc)).strip()
        if status == "error":
            tb = traceback.format_exc(limit=-6).strip()
        records.append_shard_rows(out_dir, spec.run_id, [{
            **base, "epoch": epoch, "warmup": epoch <= spec.settings.warmup_epochs,
            "status": status, "error": tb[-4000:]}])
    return records.run_rows(out_dir, spec.run_id)


def execute_block(specs: list[RunSpec], out_dir: str | os.PathLike, *,
                  inflight: Path | None = None, progress: bool = False) -> None:
    """The runs of one block, in their order, in this process; ``inflight`` names the run
    under way (for the parent to blame if this process dies)."""
    from harness.run.plots import warm_up

    warm_up()
    for spec in sorted(specs, key=lambda s: s.order):
        if inflight is not None:
            write_text(inflight, json.dumps({"run_id": spec.run_id, "pid": os.getpid()}))
        execute_run(spec, out_dir, progress=progress)
    if inflight is not None:
        inflight.unlink(missing_ok=True)


@child_main
def _main(argv: list[str] | None = None) -> int:
    """Child entry point: ``python -m harness.run.runner BLOCK.json OUT [--progress]``."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m harness.run.runner")
    p.add_argument("block")
    p.add_argument("out")
    p.add_argument("--progress", action="store_true")
    a = p.parse_args(argv)
    payload = json.loads(Path(a.block).read_text())  # written by executors.spawn
    specs = [RunSpec.from_dict(d) for d in payload["specs"]]
    if payload.get("run_ids", [s.run_id for s in specs]) != [s.run_id for s in specs]:
        print(CODE_CHANGED_MESSAGE, file=sys.stderr, flush=True)
        return CODE_CHANGED
    execute_block(specs, a.out, inflight=Path(payload["inflight"]), progress=a.progress)
    return 0


if __name__ == "__main__":
    sys.exit(_main())
