"""Where a number came from: code version, library versions, machine. One dict per process."""

from __future__ import annotations

import functools
import os
import socket
import subprocess
from pathlib import Path

import torch

from harness.spec.settings import cpu_model

__all__ = ["PROVENANCE_COLUMNS", "provenance"]

PROVENANCE_COLUMNS = ("git_commit", "git_dirty", "torch_version", "timm_version",
                      "cuda_version", "device_name", "cpu_model", "hostname")

_REPO = Path(__file__).resolve().parents[2]


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(_REPO), *args], capture_output=True,
                             text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _timm_version() -> str:
    """timm's version without importing timm (torchvision and dynamo come with it: seconds
    in a run's process whose model is not timm's); the imported module's where it is
    loaded already, or where its metadata is missing."""
    import importlib.metadata
    import sys

    if "timm" not in sys.modules:
        try:
            return importlib.metadata.version("timm")
        except importlib.metadata.PackageNotFoundError:
            pass
    import timm

    return timm.__version__


@functools.cache
def _static(device_type: str, device_index: int | None, exclude: str | None, threads: int
            ) -> dict:
    commit = _git("rev-parse", "HEAD") or ""
    # dirty = tracked code changed; the output folder (often inside the repo) does not count
    args = ["status", "--porcelain", "--untracked-files=no", "--", "."]
    if exclude:
        args.append(f":(exclude){exclude}")
    status = _git(*args)
    if device_type == "cuda" and torch.cuda.is_available():
        name = torch.cuda.get_device_name(device_index or 0)
    elif device_type == "mps":
        name = "Apple MPS"
    else:
        name = f"cpu ({cpu_model()}, {os.cpu_count()} cores, {threads} threads)"
    return {
        "git_commit": commit,
        "git_dirty": bool(status) if status is not None else False,
        "torch_version": torch.__version__,
        "timm_version": _timm_version(),
        "cuda_version": torch.version.cuda or "",
        "device_name": name,
        "cpu_model": cpu_model(),
        "hostname": socket.gethostname(),
    }


def provenance(device: torch.device | str = "cpu", out_dir: str | os.PathLike | None = None,
               *, threads: int) -> dict:
    """The provenance columns for runs on ``device`` with ``threads`` intra-op threads (the
    record of `harness.run.process.apply_process_settings`) writing into ``out_dir``."""
    device = torch.device(device)
    exclude = None
    if out_dir is not None:
        try:
            exclude = str(Path(out_dir).resolve().relative_to(_REPO))
        except ValueError:
            exclude = None
    return dict(_static(device.type, device.index, exclude, threads))
