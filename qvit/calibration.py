"""Calibration as a step: observe activation ranges on data before evaluating.

A model built from float weights (or freshly created) has every QuantAct range empty; its
eval forward quantizes with the empty range's scale and predicts near chance. `calibrate`
runs forwards in which the QuantActs observe their ranges, under no_grad, and hands the
model back in the mode it came in.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from timm.layers import DropPath
from torch import nn

from .blocks import IViTDropPath
from .models import QuantModel

__all__ = ["calibrate"]


def calibrate(model: nn.Module, batches: Iterable[Any], steps: int | None = None) -> nn.Module:
    """Observe the QuantAct ranges of ``model`` on ``batches`` (an iterable of image tensors
    or of ``(images, labels)``; at most ``steps`` of them when given).

    The forwards run in training mode under ``torch.no_grad()`` (so the ranges move as in
    training: the first batch sets them, later ones by momentum), with dropout and drop path
    off (they would widen the ranges beyond what eval sees). No parameter changes. The model
    returns to the mode it was in, every submodule as it was, with its eval caches dropped.
    Returns the model.
    """
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int)
                              or steps < 1):
        raise ValueError(f"steps must be a positive int or None (all batches), got {steps!r}")
    modes = {m: m.training for m in model.modules()}
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    seen = 0
    try:
        model.train()
        for m in model.modules():
            if isinstance(m, (nn.Dropout, DropPath, IViTDropPath)):
                m.eval()
        with torch.no_grad():
            for batch in batches:
                if steps is not None and seen >= steps:
                    break
                x = batch[0] if isinstance(batch, (tuple, list)) else batch
                if not isinstance(x, torch.Tensor):
                    raise ValueError(f"calibrate takes batches of image tensors or (images, "
                                     f"labels), got a {type(x).__name__}")
                model(x.to(device))
                seen += 1
    finally:
        for m, training in modes.items():
            m.training = training
        if isinstance(model, QuantModel):  # (the eval caches follow the ranges by themselves)
            model._check_calibration = True
    if seen == 0:
        raise ValueError("calibrate got no batches; pass a non-empty iterable of images "
                         "(e.g. a DataLoader over training data)")
    return model
