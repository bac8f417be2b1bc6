"""Process-wide settings of a run, applied in one place (`apply_process_settings`): torch's
intra-op threads, glibc's malloc policy, deterministic algorithms and cuDNN autotuning. What
it returns, read back after applying, is the one record of them (a row's ``threads``, the
thread count in its ``device_name``).

Threads and malloc act on the whole process, so every config measured in one process (an interleaved
session) runs under the same ones, and both are run settings (part of a result's identity).

glibc returns freed memory at the top of the heap to the kernel once more than its trim
threshold is free, and serves blocks above its mmap threshold (both adapt up to 32 MiB) by
fresh mappings: a training step that allocates and frees multi-MiB activations can then
page-fault on every first touch of them (the quantized step: ~4900 minor faults per
ivit_micro step, ~160 with `retain_freed_memory`). Keeping freed memory in the process is
what jemalloc/tcmalloc, or ``MALLOC_TRIM_THRESHOLD_`` / ``MALLOC_MMAP_THRESHOLD_``, do.
"""

from __future__ import annotations

import ctypes
import ctypes.util

import torch

__all__ = ["DEFAULT_THREADS", "apply_process_settings", "expected_threads",
           "retain_freed_memory"]

# torch's own intra-op thread count for this machine (one per core, or OMP_NUM_THREADS),
# read before any run sets another: what unmeasured work (the float pretraining) runs on
DEFAULT_THREADS = torch.get_num_threads()

_M_TRIM_THRESHOLD = -1  # glibc's mallopt parameters (malloc.h)
_M_MMAP_THRESHOLD = -3
_RETAIN_BYTES = 1 << 30  # no trimming, no mmap below 1 GiB (mallopt's int argument)


def retain_freed_memory() -> None:
    """Tell glibc to keep freed memory in the process (mallopt). Raises RuntimeError where
    there is no glibc (the setting cannot be honoured, and a result must not claim it)."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError) as e:
        raise RuntimeError(f"malloc_retain needs glibc's mallopt (Linux); not found here ({e}); "
                           "run with malloc_retain = false") from None
    for param in (_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD):
        if mallopt(param, _RETAIN_BYTES) != 1:
            raise RuntimeError(f"mallopt({param}, {_RETAIN_BYTES}) refused; run with "
                               "malloc_retain = false")


def apply_process_settings(settings, device: torch.device | str = "cpu") -> dict[str, int]:
    """Apply a run's process settings (before any model is built: ``settings`` is a
    `harness.spec.settings.RunSettings`) and return what is in force now: ``{"threads":
    n}``, read back from torch, the value rows and provenance record."""
    if settings.threads is not None:
        torch.set_num_threads(settings.threads)
    if settings.malloc_retain:
        retain_freed_memory()
    torch.use_deterministic_algorithms(settings.deterministic, warn_only=True)
    if torch.device(device).type == "cuda":
        torch.backends.cudnn.benchmark = not settings.deterministic
    return {"threads": torch.get_num_threads()}


def expected_threads(settings) -> int:
    """The thread count a run of ``settings`` will have (for a process that names its runs
    without running them, e.g. a sweep's parent recording a dead child's run)."""
    return settings.threads if settings.threads is not None else torch.get_num_threads()
