"""Measurement that does not disturb what it measures.

* `count_host_syncs()` counts host-device synchronizations (a value read from the device on
  the host, or a device-to-host copy, or ``torch.cuda.synchronize()``) at the torch-function
  and dispatcher levels, so the seed's sync-related changes show as counts even on the CPU,
  where nothing actually waits. It only looks at tensor metadata, never at values: it adds
  no syncs of its own.
* `StepTimer` times steps with CUDA events (read once, at the end of a phase) on CUDA and
  with ``time.perf_counter`` on the CPU; `phase_boundary` is the one sync per phase.
* `peak_memory_mb` / `reset_peak_memory` read the CUDA allocator's peak or the process's peak
  RSS on the CPU.
"""

from __future__ import annotations

import collections
import contextlib
import threading
import time
import warnings
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = ["SyncCounter", "count_host_syncs", "StepTimer", "phase_boundary",
           "peak_memory_mb", "reset_peak_memory", "SYNC_METHODS", "SYNC_OPS"]

_T = torch.Tensor
# Python-level entry points that read a device value on the host (or copy it there).
SYNC_METHODS = {
    _T.item: "item", _T.tolist: "tolist", _T.numpy: "numpy", _T.__bool__: "bool",
    _T.__int__: "int", _T.__float__: "float", _T.__index__: "index",
    _T.__complex__: "complex", _T.__array__: "numpy", _T.cpu: "to_host",
}
_TO_METHODS = {_T.to}
# Dispatcher ops that read a device value on the host, or whose output shape depends on the
# data (the host must wait for the device to size the output: a sync on CUDA).
SYNC_OPS = {
    "aten::_local_scalar_dense": "item",
    "aten::nonzero": "data_dependent_shape",
    "aten::masked_select": "data_dependent_shape",
    "aten::_unique2": "data_dependent_shape",
    "aten::unique_dim": "data_dependent_shape",
    "aten::unique_consecutive": "data_dependent_shape",
    "aten::is_nonzero": "bool",
    "aten::equal": "bool",
}


@dataclass
class SyncCounter:
    """What `count_host_syncs` found. ``count`` is the total; ``by_kind`` splits it."""

    device: torch.device
    count: int = 0
    by_kind: collections.Counter = field(default_factory=collections.Counter)
    cuda_debug_count: int | None = None  # torch.cuda.set_sync_debug_mode cross-check

    _state: object = field(default=None, repr=False)

    def add(self, kind: str, n: int = 1) -> None:
        self.count += n
        self.by_kind[kind] += n

    def host_resident(self, tensors) -> None:
        """Declare tensors that live on the host by design (e.g. a non-capturable
        optimizer's step counters): reading them is no sync, even on the CPU."""
        for t in tensors:
            self._state.mark_host(t)


def _is_host_target(args, kwargs, on_cpu: bool) -> bool:
    """Whether a ``Tensor.to(...)`` call copies to the host. On the CPU only an explicit
    ``.to("cpu")`` says so: ``.to(other.device)`` there is the same-device move that
    device-agnostic code makes (GradScaler's ``scale.to(outputs.device)``), not a read."""
    cands = list(args[1:]) + [kwargs.get("device")]
    for a in cands:
        if isinstance(a, str):
            return torch.device(a).type == "cpu"
        if isinstance(a, torch.device):
            return a.type == "cpu" and not on_cpu
        if isinstance(a, torch.Tensor):
            return a.device.type == "cpu" and not on_cpu
    return False


class _State:
    """Shared between the two modes: what counts as a device tensor, and nesting depth."""

    def __init__(self, counter: SyncCounter):
        self.counter = counter
        self.on_cpu = counter.device.type == "cpu"
        # Host copies made by `.cpu()`/`.to('cpu')` (and tensors derived from them): reading
        # them again is no further sync. On a real device their device says so already.
        self.host: dict[int, weakref.ref] = {}
        self.depth = threading.local()

    def mark_host(self, t: torch.Tensor) -> None:
        if len(self.host) > 4096:  # drop entries whose tensors are gone
            self.host = {k: r for k, r in self.host.items() if r() is not None}
        self.host[id(t)] = weakref.ref(t)

    def is_host_copy(self, t: torch.Tensor) -> bool:
        r = self.host.get(id(t))
        return r is not None and r() is t

    def is_device_tensor(self, t) -> bool:
        if not isinstance(t, torch.Tensor):
            return False
        if self.on_cpu:
            return t.device.type == "cpu" and not self.is_host_copy(t)
        return t.device.type != "cpu"


class _CountingMode:
    """A torch mode that counts into a shared `_State`."""

    def __init__(self, state: _State):
        super().__init__()
        self.s = state


class _SyncFunctionMode(_CountingMode, TorchFunctionMode):

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        kind = SYNC_METHODS.get(func)
        if kind is None and func in _TO_METHODS and _is_host_target(args, kwargs, self.s.on_cpu):
            kind = "to_host"
        if kind is not None and args and self.s.is_device_tensor(args[0]):
            self.s.counter.add(kind)
            d = getattr(self.s.depth, "n", 0)
            self.s.depth.n = d + 1
            try:
                out = func(*args, **kwargs)
            finally:
                self.s.depth.n = d
            if kind == "to_host" and isinstance(out, torch.Tensor):
                if out is args[0]:  # a no-op on the CPU: mark an alias, not the original
                    try:
                        out = out.view_as(out)
                    except RuntimeError:
                        return out
                self.s.mark_host(out)
            return out
        out = func(*args, **kwargs)
        if self.s.host and isinstance(out, torch.Tensor) and args and \
                isinstance(args[0], torch.Tensor) and self.s.is_host_copy(args[0]):
            self.s.mark_host(out)  # e.g. x.cpu().float(): still on the host
        return out


class _SyncDispatchMode(_CountingMode, TorchDispatchMode):
    """Catches syncs that do not pass through a Python entry point (C++ callers)."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if getattr(self.s.depth, "n", 0) == 0:
            name = func._schema.name
            kind = SYNC_OPS.get(name)
            if kind is not None and args and self.s.is_device_tensor(args[0]):
                self.s.counter.add(kind)
            elif name == "aten::index" and len(args) > 1 and self.s.is_device_tensor(args[0]) \
                    and any(isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8)
                            for i in args[1]):
                self.s.counter.add("data_dependent_shape")  # x[mask] sizes its output
            elif name in ("aten::_to_copy", "aten::copy_") and len(args) >= 1:
                kind = _copy_kind(name, args, kwargs, self.s.on_cpu)
                if kind is not None:
                    self.s.counter.add(kind)
        return func(*args, **kwargs)


def _copy_kind(name: str, args, kwargs, on_cpu: bool) -> str | None:
    """"to_host" for a device-to-host copy; "from_host" for a blocking host-to-device copy
    (on a GPU a cudaMemcpy the host waits for, as CUDA's sync debug mode counts it; a
    ``non_blocking=True`` one is not); None otherwise (on the CPU there is no device to
    copy to)."""
    copy_ = name == "aten::copy_"
    src = args[1] if copy_ else args[0]  # (copy_(self, src, non_blocking=False))
    if not isinstance(src, torch.Tensor):
        return None
    if copy_:
        dst = args[0].device
        non_blocking = args[2] if len(args) > 2 else kwargs.get("non_blocking", False)
    else:
        dst = torch.device(kwargs["device"]) if kwargs.get("device") is not None else src.device
        non_blocking = kwargs.get("non_blocking", False)
    if dst.type == "cpu" and src.device.type != "cpu":
        return "to_host"
    if not on_cpu and src.device.type == "cpu" and dst.type != "cpu" and not non_blocking:
        return "from_host"
    return None


@contextlib.contextmanager
def count_host_syncs(device: str | torch.device = "cpu", *,
                     cuda_debug: bool = False) -> Iterator[SyncCounter]:
    """Count host-device syncs made inside the block.

    ``device`` is where the model lives. On a CUDA device a sync is a read of a CUDA tensor
    on the host; on the CPU (nothing waits there) every tensor stands for a device tensor,
    so the calls that *would* sync on a GPU are counted all the same: ``.item()``,
    ``.tolist()``, ``.numpy()``, ``bool()/int()/float()`` of a tensor, ``.cpu()`` and
    ``.to('cpu')`` (once per host round trip: reading the host copy again is free),
    ``aten::_local_scalar_dense`` from C++ callers, data-dependent shapes (``nonzero``,
    ``masked_select``, ``unique``), device-to-host copies, blocking host-to-device copies
    (on a GPU only: ``torch.tensor(...).to(device)``), and ``torch.cuda.synchronize()``.

    With ``cuda_debug=True`` on CUDA, ``torch.cuda.set_sync_debug_mode('warn')`` runs as a
    cross-check and its warning count lands in ``counter.cuda_debug_count``.

        >>> with count_host_syncs("cpu") as c:
        ...     _ = torch.ones(2).sum().item()
        >>> c.count
        1
    """
    counter = SyncCounter(torch.device(device))
    state = _State(counter)
    counter._state = state
    real_sync = torch.cuda.synchronize

    def counting_synchronize(*a, **k):
        counter.add("cuda_synchronize")
        return real_sync(*a, **k)

    use_debug = cuda_debug and counter.device.type == "cuda" and torch.cuda.is_available()
    old_debug = torch.cuda.get_sync_debug_mode() if use_debug else None
    with contextlib.ExitStack() as stack:
        rec = None
        if use_debug:
            rec = stack.enter_context(warnings.catch_warnings(record=True))
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
        torch.cuda.synchronize = counting_synchronize
        try:
            with _SyncFunctionMode(state), _SyncDispatchMode(state):
                yield counter
        finally:
            torch.cuda.synchronize = real_sync
            if use_debug:
                torch.cuda.set_sync_debug_mode(old_debug)
                counter.cuda_debug_count = sum(
                    1 for w in rec if "synchroniz" in str(w.message).lower())


# --- timing --------------------------------------------------------------------------------

def phase_boundary(device: torch.device) -> None:
    """The one sync at a phase boundary (start/end of train or eval), so that wall time
    covers the device work of that phase. Nothing on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class StepTimer:
    """Compute time of each step (between `begin` and `end`, data loading outside) without
    syncs inside the phase: CUDA events read after the phase's final sync, or
    ``perf_counter`` on the CPU. A step begun with ``timed=False`` is not kept."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.pairs: list = []
        self._open = None

    def begin(self, timed: bool = True) -> None:
        self._open = self._mark() if timed else None

    def end(self) -> None:
        if self._open is not None:
            self.pairs.append((self._open, self._mark()))
            self._open = None

    def _mark(self):
        if self.cuda:
            ev = torch.cuda.Event(enable_timing=True)
            ev.record()
            return ev
        return time.perf_counter()

    def step_times(self) -> list[float]:
        """Seconds per timed step; call after `phase_boundary` (reads the events)."""
        if self.cuda:
            return [a.elapsed_time(b) / 1e3 for a, b in self.pairs]
        return [b - a for a, b in self.pairs]


# --- memory ----------------------------------------------------------------------------------

PEAK_MEMORY_KIND = {"cuda": "CUDA allocator peak (max_memory_allocated) within the epoch",
                    "cpu": "process peak RSS within the epoch (VmHWM after resetting it)"}


def reset_peak_memory(device: torch.device) -> None:
    """Start a new peak: the CUDA allocator's, or on Linux the process's RSS high-water mark
    (writing 5 to /proc/self/clear_refs resets VmHWM)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def peak_memory_mb(device: torch.device) -> float:
    """The peak since `reset_peak_memory` (see PEAK_MEMORY_KIND); NaN where the platform
    cannot reset it (the lifetime peak would mean nothing per epoch)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        for line in open("/proc/self/status").read().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**10
    except OSError:
        pass
    return float("nan")
