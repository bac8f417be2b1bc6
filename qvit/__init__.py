"""qvit: integer-only quantized vision transformers (I-ViT DeiT and Swin) with every
training-speed optimization as a feature flag, both code paths kept."""

from .flags import PARITY_CLASSES, PRESETS, Flags, FlagSpec
from .models import QuantModel, QuantSwin, QuantViT
from .registry import (
                       create_float_reference,
                       create_model,
                       list_models,
                       load_float_weights,
                       model_config,
)

__all__ = ["FlagSpec", "Flags", "PARITY_CLASSES", "PRESETS", "QuantModel", "QuantSwin",
           "QuantViT", "create_float_reference", "create_model", "list_models",
           "load_float_weights", "model_config"]
