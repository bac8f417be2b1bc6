"""qvit: integer-only quantized vision transformers (I-ViT DeiT and Swin) with every
training-speed optimization as a feature flag."""

from .flags import FlagSpec, Flags, PARITY_CLASSES, PRESETS

__all__ = ["FlagSpec", "Flags", "PARITY_CLASSES", "PRESETS"]
