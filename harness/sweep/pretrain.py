"""Making the float-pretrained start of a run (`harness.run.pretrained` loads it).

    python -m harness pretrain --model ivit_micro [--dataset digits]   # make or find it
"""

from __future__ import annotations

import fcntl
import sys
import time
from pathlib import Path

from harness.errors import friendly_errors
from harness.records.files import save_torch
from harness.run.pretrained import pretrain_settings, pretrained_path
from harness.run.runner import RunSpec, train_in_memory
from harness.spec.settings import RunSettings
from harness.sweep.progress import EpochLog, format_eta
from qvit import Flags

__all__ = ["ensure_pretrained"]


def ensure_pretrained(s: RunSettings, *, progress: bool = True) -> Path:
    """The float checkpoint for ``s``: found in the cache, or made now (seconds to minutes,
    with a progress bar); concurrent callers wait for one another."""
    path = pretrained_path(s)
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if path.is_file():  # made by another process while this one waited
            return path
        print(f"making the float-pretrained start of {s.model} on {s.dataset} "
              f"({s.pretrain_epochs} epochs; cached in {path})", file=sys.stderr, flush=True)
        spec = RunSpec("float-pretrain", Flags.preset("best"), pretrain_settings(s),
                       float_reference=True)
        t0 = time.monotonic()
        # on a terminal a bar over the epochs; off one (logs), a line every few seconds
        log = EpochLog(f"pretraining {s.model}", spec.epochs) \
            if progress and not sys.stderr.isatty() else None
        model, rows = train_in_memory(spec, progress=progress, on_epoch=log)
        state = {"model": model.state_dict(), "top1": float(rows[-1]["top1"]),
                 "epochs": len(rows)}
        save_torch(state, path)
        print(f"float {s.model} on {s.dataset}: held-out top-1 {state['top1']:.1f}% "
              f"(pretrained in {format_eta(time.monotonic() - t0)})", file=sys.stderr,
              flush=True)
    return path


@friendly_errors
def main(argv: list[str] | None = None) -> int:
    """``python -m harness pretrain --model M [--dataset D] [--pretrain-epochs N] ...``"""
    import argparse

    from harness.spec.options import add_options, values_from_args

    p = argparse.ArgumentParser(prog="python -m harness pretrain", description=(
        "Make (or find) the float-pretrained start of a model on a dataset: its float twin "
        "trained on the training split, cached under $QVIT_CACHE (default ~/.cache/qvit)."))
    add_options(p, RunSettings)
    settings = RunSettings(**values_from_args(RunSettings, p.parse_args(argv)))
    print(ensure_pretrained(settings))
    return 0
