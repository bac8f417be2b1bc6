"""The model variants as plain data: name -> (family, architecture kwargs).

Kept apart from the registry (which builds models and imports torch and timm) so that a
command line or a spec naming a model is checked in a second, before the heavy imports.
``img_size`` is each variant's default input size.
"""

from __future__ import annotations

import difflib
from typing import Any

__all__ = ["VARIANTS", "model_names", "check_name"]

VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "deit_tiny_patch16_224": ("vit", dict(img_size=224, patch_size=16, embed_dim=192,
                                          depth=12, num_heads=3)),
    "deit_small_patch16_224": ("vit", dict(img_size=224, patch_size=16, embed_dim=384,
                                           depth=12, num_heads=6)),
    "deit_base_patch16_224": ("vit", dict(img_size=224, patch_size=16, embed_dim=768,
                                          depth=12, num_heads=12)),
    "swin_tiny_patch4_window7_224": ("swin", dict(img_size=224, patch_size=4, window_size=7,
                                                  embed_dim=96, depths=(2, 2, 6, 2),
                                                  num_heads=(3, 6, 12, 24))),
    "swin_small_patch4_window7_224": ("swin", dict(img_size=224, patch_size=4, window_size=7,
                                                   embed_dim=96, depths=(2, 2, 18, 2),
                                                   num_heads=(3, 6, 12, 24))),
    "swin_base_patch4_window7_224": ("swin", dict(img_size=224, patch_size=4, window_size=7,
                                                  embed_dim=128, depths=(2, 2, 18, 2),
                                                  num_heads=(4, 8, 16, 32))),
    # CPU-sized variants for 32x32 inputs: a training step at batch 64 well under a second
    # on two cores, deep enough to learn (4 blocks; Swin: two stages, shifted 4x4 windows on
    # the 8x8 stage-1 grid with their mask, patch merging to 4x4).
    "ivit_micro": ("vit", dict(img_size=32, patch_size=4, embed_dim=64, depth=4, num_heads=2,
                               mlp_ratio=2.0)),
    "swin_micro": ("swin", dict(img_size=32, patch_size=4, window_size=4, embed_dim=48,
                                depths=(2, 2), num_heads=(3, 6), mlp_ratio=2.0,
                                drop_path_rate=0.0)),
}


def model_names() -> list[str]:
    return sorted(VARIANTS)


def check_name(name: str) -> None:
    """Refuse an unknown model name (ValueError with the closest match)."""
    if name not in VARIANTS:
        match = difflib.get_close_matches(name, list(VARIANTS), n=1)
        hint = f" (did you mean {match[0]!r}?)" if match else ""
        raise ValueError(f"unknown model {name!r}{hint}; available: "
                         f"{', '.join(model_names())}")
