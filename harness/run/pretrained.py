"""The pretrained start of a run, as I-ViT starts QAT: float weights, then calibration.

A user does not train an integer-only ViT from random weights: I-ViT loads a float DeiT/Swin
checkpoint, lets QuantAct observe activation ranges, and fine-tunes. The harness does the
same on its own data: `harness.sweep.pretrain.ensure_pretrained` trains the float twin of the
model (`qvit.create_float_reference`, the same architecture and parameter names) on the
run's dataset once and caches the state dict under ``$QVIT_CACHE`` (default
``~/.cache/qvit``), keyed by its own identity (model, dataset, size, classes, epochs, seed,
library versions).
`start_from_pretrained` loads it into a run's model and calibrates the quantized one.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

import torch

from harness.spec.settings import RunSettings, digest, library_versions

__all__ = ["PRETRAIN_VERSION", "cache_dir", "pretrained_path", "pretrain_settings",
           "start_from_pretrained"]

PRETRAIN_VERSION = 2  # bump when the float training recipe below changes (2: explicit attention)


def cache_dir() -> Path:
    return Path(os.environ.get("QVIT_CACHE") or Path.home() / ".cache" / "qvit")


def _key(s: RunSettings) -> dict[str, Any]:
    return {"model": s.model, "dataset": s.dataset, "data_dir": s.data_dir,
            "img_size": s.img_size, "num_classes": s.num_classes, "epochs": s.pretrain_epochs,
            "seed": 0, "recipe": PRETRAIN_VERSION, "versions": library_versions()}


def pretrain_settings(s: RunSettings) -> RunSettings:
    """The float training recipe of the pretrained start: AdamW, cosine, full passes, on
    torch's default threads whatever the runs measure on (it measures nothing; a 1-thread
    design would otherwise pretrain at half speed on 2 cores, and into other weights)."""
    from harness.run.process import DEFAULT_THREADS

    return s.replace(epochs=s.pretrain_epochs, warmup_epochs=0, steps_per_epoch=None,
                     threads=DEFAULT_THREADS,
                     eval_steps=None, batch_size=64, lr=1e-3, weight_decay=0.05,
                     sched="cosine", seed=0, pretrained=False, count_syncs="off",
                     deterministic=False, mixup=0.0, cutmix=0.0, smoothing=0.0, ema_decay=0.0,
                     float_attention="explicit")


def pretrained_path(s: RunSettings) -> Path:
    """Where the float checkpoint of these settings is (made or not)."""
    return cache_dir() / "pretrained" / f"{s.model}-{s.dataset}-{digest(_key(s))}.pt"


def _calibration_batches(bundle, s: RunSettings, device: torch.device, mean_std):
    from harness.run.data import Batches, normalize_batch

    batches = Batches(bundle.train, batch_size=s.batch_size, device=device, num_workers=0,
                      preload=False, shuffle=True, drop_last=True,
                      max_steps=s.calibration_steps, seed=s.seed)
    for x, _ in batches.epoch(0):
        yield normalize_batch(x, mean_std)


def start_from_pretrained(model: torch.nn.Module, spec, bundle, device: torch.device
                          ) -> dict[str, float]:
    """Load the cached float weights into ``model`` (strictly) and, for a quantized model,
    calibrate its activation ranges on training batches. Returns the float checkpoint's
    held-out top-1 (percent) for the table. A missing checkpoint is an error that says how
    to make it (the sweep makes them before any run starts)."""
    import qvit
    from harness.run.data import MEAN_STD

    s = spec.settings
    path = pretrained_path(s)
    if not path.is_file():
        raise ValueError(f"no float-pretrained checkpoint for {s.model} on {s.dataset} at "
                         f"{path}; make it with `python -m harness pretrain --model {s.model} "
                         f"--dataset {s.dataset}` or set pretrained = false")
    state = torch.load(path, map_location=device, weights_only=True)
    if spec.float_reference:
        model.load_state_dict(state["model"])
    else:
        qvit.load_float_weights(model, state["model"])
        with contextlib.suppress(StopIteration):
            qvit.calibrate(model, _calibration_batches(bundle, s, device, MEAN_STD[s.dataset]),
                           steps=s.calibration_steps)
    return {"pretrained_top1": float(state["top1"])}
