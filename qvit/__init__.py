"""qvit: integer-only quantized vision transformers (I-ViT DeiT and Swin) with every
training-speed optimization as a feature flag, both code paths kept.

`import qvit` registers the models with timm (``qvit_<name>``). The flags (`qvit.Flags`) and
the model table (`qvit.variants`) need no torch: with ``QVIT_DEFER_IMPORTS=1`` (set by
``python -m harness``) the models, the registry and the loaders load on first use instead
(PEP 562), so a command line or a spec is checked in a second, before torch loads."""

from __future__ import annotations

import importlib
import os
from typing import Any

from .flags import PARITY_CLASSES, PRESETS, Flags, FlagSpec

__all__ = ["FlagSpec", "Flags", "PARITY_CLASSES", "PRESETS", "QuantModel", "QuantSwin",
           "QuantViT", "UncalibratedWarning", "calibrate", "create_float_reference",
           "create_model", "list_models", "load_float_weights", "load_ivit_checkpoint",
           "model_config"]

_LAZY = {"calibrate": "calibration", "load_ivit_checkpoint": "ivit", "QuantModel": "models",
         "QuantSwin": "models", "QuantViT": "models", "UncalibratedWarning": "models",
         "create_float_reference": "registry", "create_model": "registry",
         "list_models": "registry", "load_float_weights": "registry",
         "model_config": "registry"}


def __getattr__(name: str) -> Any:
    if name in ("blocks", "calibration", "ivit", "models", "modules", "ops", "paths",
                "reference", "registry", "variants"):  # qvit.registry etc. when deferred
        return importlib.import_module(f".{name}", __name__)
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'qvit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if os.environ.get("QVIT_DEFER_IMPORTS") != "1":
    from . import registry as _registry  # noqa: F401 - registers qvit_<name> with timm
