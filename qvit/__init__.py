"""qvit: integer-only quantized vision transformers (I-ViT DeiT and Swin) with every
training-speed optimization as a feature flag, both code paths kept."""

from .calibration import calibrate
from .flags import PARITY_CLASSES, PRESETS, Flags, FlagSpec
from .ivit import load_ivit_checkpoint
from .models import QuantModel, QuantSwin, QuantViT, UncalibratedWarning
from .registry import (
                       create_float_reference,
                       create_model,
                       list_models,
                       load_float_weights,
                       model_config,
)

__all__ = ["FlagSpec", "Flags", "PARITY_CLASSES", "PRESETS", "QuantModel", "QuantSwin",
           "QuantViT", "UncalibratedWarning", "calibrate", "create_float_reference",
           "create_model", "list_models", "load_float_weights", "load_ivit_checkpoint",
           "model_config"]
