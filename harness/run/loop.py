"""The training loop: one epoch of training, one of evaluation, both paths of every loop flag.

The loop flags (``qvit.Flags.specs(scope="loop")``) and what each path does here:

* ``cuda_synchronize_per_step``: ``torch.cuda.synchronize()`` after every step, or not (no
  effect on the CPU, where nothing is queued).
* ``loss_item_per_step``: ``loss.item()`` every step (a host read; NaN is caught at once), or
  a device-side sum read once at the end of the epoch.
* ``grad_scaler_without_autocast``: timm's ``NativeScaler`` (a GradScaler with no autocast:
  scale, unscale, an inf/NaN scan of all grads with its host read, then step), or plain
  ``backward()`` + optional clipping + ``step()``.
* ``plot_every``: learning-curve PNGs every N epochs (and after the last) — `plots.py`.
* ``num_workers``: DataLoader worker processes — `data.Batches`.
* ``fused_optimizer``: the optimizer's fused (or foreach) implementation, or the
  per-parameter loop.
* ``preload_to_device``: the dataset as device tensors indexed per batch, or a DataLoader.
* ``compile_model``: compile the model (`qvit.compile.compile_model`; ``compile_scope``: block
  by block or whole; ``compile_cuda_graphs``: CUDA graphs), its compile time in ``compile_s``.
"""

from __future__ import annotations

import collections
import contextlib
import inspect
import math
import statistics
import time
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from harness.run import measure

__all__ = ["NonFiniteLoss", "TrainResult", "EvalResult", "build_optimizer", "train_step",
           "train_one_epoch", "evaluate", "evaluate_deployed", "compile_seconds",
           "FaultInjector"]


class NonFiniteLoss(RuntimeError):
    """The training loss became NaN or inf."""


@dataclass
class TrainResult:
    steps: int
    images: int
    train_s: float  # the training phase, wall clock: what a user waits for
    startup_s: float  # loader/iterator creation and the first batch (worker start-up)
    data_s: float  # waiting for the later batches
    step_times: list  # seconds of each timed step's compute (forward, backward, step)
    loss: float
    syncs_per_step: float  # NaN where syncs were not counted
    sync_kinds: dict  # counts by kind over the counted steps (and "...@epoch_end")
    counted_steps: int
    # CUDA's own count over the counted steps (torch.cuda.set_sync_debug_mode), a
    # cross-check of syncs_per_step; NaN off CUDA or where syncs were not counted
    cuda_debug_syncs_per_step: float = math.nan

    @property
    def compute_s(self) -> float:
        return float(sum(self.step_times))

    @property
    def step_s_median(self) -> float:
        return statistics.median(self.step_times) if self.step_times else math.nan


@dataclass
class EvalResult:
    eval_s: float
    top1: float
    top5: float
    loss: float
    images: int


class FaultInjector:
    """Test hook: make a given epoch/step fail the way real runs fail. ``fault`` is one of
    ``oom`` (torch.OutOfMemoryError), ``nan`` (the loss becomes NaN), ``error`` (a
    RuntimeError) or ``hang`` (sleep, for a test to kill the process)."""

    FAULTS = ("oom", "nan", "error", "hang")

    def __init__(self, fault: str, epoch: int = 1, step: int = 0):
        if fault not in self.FAULTS:
            raise ValueError(f"fault must be one of {self.FAULTS}, got {fault!r}")
        self.fault, self.epoch, self.step = fault, epoch, step

    def maybe(self, epoch: int, step: int, loss: torch.Tensor) -> torch.Tensor:
        if epoch != self.epoch or step != self.step:
            return loss
        if self.fault == "oom":
            raise torch.OutOfMemoryError("injected: CUDA out of memory. Tried to allocate 2 GiB")
        if self.fault == "error":
            raise RuntimeError("injected error")
        if self.fault == "hang":
            time.sleep(3600)
        return loss * float("nan")


def build_optimizer(model: nn.Module, *, opt: str, lr: float, weight_decay: float,
                    fused: bool, device: torch.device) -> torch.optim.Optimizer:
    """timm's ``create_optimizer_v2``; ``fused`` picks the fused kernel where the optimizer
    has one for this device, else foreach; otherwise the per-parameter loop."""
    from timm.optim import create_optimizer_v2

    if not fused:
        return create_optimizer_v2(model, opt=opt, lr=lr, weight_decay=weight_decay,
                                   foreach=False)
    probe = create_optimizer_v2(model, opt=opt, lr=lr, weight_decay=weight_decay)
    has_fused = "fused" in inspect.signature(type(probe).__init__).parameters
    if has_fused and device.type in ("cuda", "cpu", "mps"):
        try:
            return create_optimizer_v2(model, opt=opt, lr=lr, weight_decay=weight_decay,
                                       fused=True)
        except (RuntimeError, ValueError, TypeError):
            pass  # this optimizer/device has no fused kernel: use foreach
    return create_optimizer_v2(model, opt=opt, lr=lr, weight_decay=weight_decay, foreach=True)


def compile_model(model: nn.Module, backend: str, *, scope: str = "model",
                  cuda_graphs: bool = False) -> nn.Module:
    """`qvit.compile.compile_model` (qvit's backends registered first): the module to call,
    its blocks compiled (``scope="block"``) or whole; a model without qvit's blocks (the
    float reference, a plug-in model) whole (the harness's one place that compiles a
    model)."""
    import qvit.compile

    if not qvit.compile.regions(model):
        scope = "model"
    return qvit.compile.compile_model(model, scope=scope, backend=backend,
                                      cuda_graphs=cuda_graphs)


def compile_seconds() -> float:
    """Total seconds torch.compile has spent in this process so far (dynamo + inductor)."""
    try:
        from torch._dynamo.utils import compilation_time_metrics
    except ImportError:
        return 0.0
    total = 0.0
    for key, times in compilation_time_metrics.items():
        if key in ("_compile.compile_inner", "compile_inner"):  # outermost, includes backend
            total += sum(times)
    return total


def train_step(model: nn.Module, x: torch.Tensor, target: torch.Tensor, *, optimizer=None,
               loss_fn=F.cross_entropy, scaler=None, clip_grad: float | None = None,
               on_loss=None) -> torch.Tensor:
    """One training step, the only one in the harness: forward, loss, backward, optional
    gradient clipping, optimizer step. ``scaler`` (timm ``NativeScaler``) takes over backward,
    clipping and step; ``on_loss`` may replace the loss before backward (fault injection).
    Gradients are zeroed before backward and left in ``.grad`` afterwards, so a caller can
    read this step's gradients; without an optimizer nothing is stepped. Returns the loss,
    detached (no host read)."""
    loss = loss_fn(model(x), target)
    if on_loss is not None:
        loss = on_loss(loss)
    if optimizer is not None:
        optimizer.zero_grad(set_to_none=True)
    else:
        model.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler(loss, optimizer, clip_grad=clip_grad,
               parameters=model.parameters() if clip_grad else None)
        return loss.detach()
    loss.backward()
    if clip_grad:
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
    if optimizer is not None:
        optimizer.step()
    return loss.detach()


def train_one_epoch(model: nn.Module, batches, epoch: int, *, optimizer, scheduler,
                    loss_fn, flags, device: torch.device, mean_std, mixup=None, ema=None,
                    scaler=None, clip_grad: float | None = None, count_syncs: bool = False,
                    count_steps: int | None = None,
                    updates_done: int = 0, progress=None, fault: FaultInjector | None = None,
                    epoch_steps: int | None = None) -> TrainResult:
    """One training epoch. No syncs are added inside it: one `phase_boundary` at each end;
    the loss is read per step only when ``flags.loss_item_per_step`` asks for it.
    ``epoch_steps``: the steps of a whole epoch, over which the epoch-end read counts in
    ``syncs_per_step`` (default: the steps run; a shortened warm-up epoch passes more)."""
    from harness.run.data import normalize_batch

    model.train()
    timer = measure.StepTimer(device)
    n = len(batches)
    window = _CountWindow.for_epoch(device, optimizer, n, count_syncs, count_steps)
    losses = _LossSum(device, per_step=flags.loss_item_per_step)
    measure.phase_boundary(device)
    t0 = time.perf_counter()
    it = iter(batches.epoch(epoch))  # loader and workers start here
    steps = images = 0
    startup_s = data_s = 0.0
    try:
        for step in range(n):
            t_fetch = time.perf_counter()
            x, y = next(it)
            waited = time.perf_counter() - t_fetch
            if step == 0:
                startup_s = time.perf_counter() - t0
            else:
                data_s += waited
            window.before(step)
            timer.begin(timed=not window.active)
            x = normalize_batch(x, mean_std)
            target = y
            if mixup is not None:
                x, target = mixup(x, y)
            loss = train_step(model, x, target, optimizer=optimizer, loss_fn=loss_fn,
                              scaler=scaler if flags.grad_scaler_without_autocast else None,
                              clip_grad=clip_grad,
                              on_loss=None if fault is None else
                              (lambda v, s=step: fault.maybe(epoch, s, v)))
            updates_done += 1
            if ema is not None:
                ema.update(model, step=updates_done)
            if scheduler is not None:
                scheduler.step_update(num_updates=updates_done)
            losses.add(loss, epoch, step)
            if flags.cuda_synchronize_per_step and device.type == "cuda":
                torch.cuda.synchronize(device)
            timer.end()
            steps += 1
            images += x.shape[0]
            window.after(step)
            if progress is not None:
                progress.update(1)
    finally:
        window.close()
    # the seed path's one read per epoch: counted apart, and spread over all steps
    with (measure.count_host_syncs(device) if window.count else contextlib.nullcontext()
          ) as end:
        mean_loss = losses.mean(steps)
    measure.phase_boundary(device)
    train_s = time.perf_counter() - t0
    if not math.isfinite(mean_loss):
        raise NonFiniteLoss(f"mean training loss of epoch {epoch} is {mean_loss}")
    per_step = float("nan")
    syncs = dict(window.kinds)
    if window.steps:
        per_step = sum(window.kinds.values()) / window.steps + end.count / (epoch_steps or steps)
        syncs.update({f"{k}@epoch_end": v for k, v in end.by_kind.items()})
    debug = window.cuda_debug / window.steps if window.steps and window.cuda_debug is not None \
        else math.nan
    return TrainResult(steps, images, train_s, startup_s, data_s, timer.step_times(),
                       mean_loss, per_step, syncs, window.steps, debug)


class _LossSum:
    """The epoch's training loss: read every step (``per_step``, the seed's legacy path:
    a host read, and NaN caught at once), or summed on the device and read once."""

    def __init__(self, device: torch.device, per_step: bool):
        self.per_step, self.host = per_step, 0.0
        # float64 on the device: the same sum, in the same order, as the host path's floats
        self.dev = torch.zeros((), device=device, dtype=torch.float64)

    def add(self, loss: torch.Tensor, epoch: int, step: int) -> None:
        if self.per_step:
            value = loss.item()
            if not math.isfinite(value):
                raise NonFiniteLoss(f"loss is {value} at epoch {epoch}, step {step}")
            self.host += value
        else:
            self.dev += loss.detach().double()

    def mean(self, steps: int) -> float:
        return self.host / max(steps, 1) if self.per_step else \
            (self.dev / max(steps, 1)).item()


class _CountWindow:
    """Counts host syncs over steps ``first .. first+count-1`` only."""

    @classmethod
    def for_epoch(cls, device, optimizer, n: int, count_syncs: bool,
                  count_steps: int | None) -> _CountWindow:
        """From the second step (the first creates optimizer state and meets first-call
        paths) for ``count_steps`` steps, or every step with None. Counted steps run slower
        (the counter's hooks): their times are left out of the step times."""
        first = 1 if n > 1 else 0
        count = 0 if not count_syncs else (n - first if count_steps is None
                                           else min(count_steps, n - first))
        return cls(device, optimizer, first, count)

    def __init__(self, device, optimizer, first: int, count: int):
        self.device, self.optimizer, self.first, self.count = device, optimizer, first, count
        self.kinds: collections.Counter = collections.Counter()
        self.steps = 0
        self.cuda_debug: int | None = None  # CUDA's sync-debug warnings (CUDA only)
        self._cm = self._counter = None

    @property
    def active(self) -> bool:
        return self._cm is not None

    def before(self, step: int) -> None:
        if self.count and step == self.first:
            self._cm = measure.count_host_syncs(self.device, cuda_debug=True)
            self._counter = self._cm.__enter__()
            # torch keeps a non-capturable optimizer's step counters on the host by design:
            # their .item() is no device read even where the model lives on the CPU
            self._counter.host_resident(_host_step_counters(self.optimizer))

    def after(self, step: int) -> None:
        if self._cm is not None:
            self.steps += 1
            if step == self.first + self.count - 1:
                self.close()

    def close(self) -> None:
        if self._cm is not None:
            cm, self._cm = self._cm, None
            cm.__exit__(None, None, None)
            self.kinds.update(self._counter.by_kind)
            if self._counter.cuda_debug_count is not None:
                self.cuda_debug = (self.cuda_debug or 0) + self._counter.cuda_debug_count


def _host_step_counters(optimizer) -> list:
    out = []
    for group in optimizer.param_groups:
        if group.get("capturable") or group.get("fused"):
            continue
        for p in group["params"]:
            step = optimizer.state.get(p, {}).get("step")
            if isinstance(step, torch.Tensor) and step.device.type == "cpu":
                out.append(step)
    return out


@torch.no_grad()
def evaluate(model: nn.Module, batches, *, device: torch.device, mean_std, num_classes: int
             ) -> EvalResult:
    """Top-1, top-5 and mean cross-entropy on the validation batches; every sum stays on the
    device until one read at the end."""
    from harness.run.data import normalize_batch

    model.eval()
    it = batches.epoch(0)
    measure.phase_boundary(device)
    t0 = time.perf_counter()
    k = min(5, num_classes)
    sums = torch.zeros(4, device=device, dtype=torch.float64)  # loss, top1, top5, n
    for x, y in it:
        out = model(normalize_batch(x, mean_std)).float()
        topk = out.topk(k, dim=1).indices
        hit = topk == y[:, None]
        sums += torch.stack([F.cross_entropy(out, y, reduction="sum").double(),
                             hit[:, 0].sum().double(), hit.any(dim=1).sum().double(),
                             torch.full((), float(y.shape[0]), device=device,
                                        dtype=torch.float64)])  # no host-built tensor
    loss, c1, c5, n = sums.tolist()
    measure.phase_boundary(device)
    eval_s = time.perf_counter() - t0
    return EvalResult(eval_s, 100.0 * c1 / max(n, 1.0), 100.0 * c5 / max(n, 1.0),
                      loss / max(n, 1.0), int(n))


def evaluate_deployed(model: nn.Module, batches, *, mean_std) -> dict[str, float]:
    """The deployed integer model of ``model`` (`qvit.deploy`) on the validation batches,
    beside ``model``'s own eval: ``deployed_top1`` (percent, as ``top1``) and
    ``deployed_agreement`` (fraction of images whose top-1 prediction equals the QAT
    model's). Not timed: it runs after the epoch's measurements."""
    from harness.run.data import normalize_batch
    from qvit.deploy import deploy
    from qvit.deploy.compare import evaluate_deployed as compare

    qat = getattr(model, "_orig_mod", model)  # a compiled model's module
    r = compare(model, ((normalize_batch(x, mean_std), y) for x, y in batches.epoch(0)),
                deploy(qat))
    return {"deployed_top1": 100.0 * r["top1"], "deployed_agreement": r["agreement"]}
