"""Model registry (timm style): each variant is a few lines of architecture arguments.

`create_model(name, num_classes=..., img_size=..., flags=...)` builds a quantized model;
`create_float_reference(name, ...)` builds timm's float model of the same architecture (the
speed floor, and the source of float weights); `load_float_weights` starts QAT from float
weights with strict key checking. Every variant is also registered with timm as
``qvit_<name>`` (timm's own names stay the float models).
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Callable
from functools import partial
from typing import Any

import timm
import torch
from torch import nn

from .flags import Flags
from .models import QuantModel, QuantSwin, QuantViT
from .variants import VARIANTS, check_name

__all__ = ["create_model", "list_models", "create_float_reference", "load_float_weights",
           "model_config"]

_VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {}  # filled from variants.VARIANTS


def _variant(name: str, family: str, **arch: Any) -> None:
    _VARIANTS[name] = (family, arch)

    def _timm_entry(pretrained: bool = False, **kwargs):
        if pretrained:
            raise ValueError("qvit models have no pretrained quantized weights; create the "
                             "model, then qvit.load_float_weights(model, <timm checkpoint>)")
        kwargs.pop("pretrained_cfg", None)
        kwargs.pop("pretrained_cfg_overlay", None)
        kwargs.pop("cache_dir", None)
        return create_model(name, **kwargs)

    _timm_entry.__name__ = f"qvit_{name}"
    _timm_entry.__module__ = __name__
    timm.models.register_model(_timm_entry)


for _name, (_family, _arch) in VARIANTS.items():
    _variant(_name, _family, **_arch)

_FAMILIES: dict[str, Callable[..., QuantModel]] = {"vit": QuantViT, "swin": QuantSwin}


def list_models(pattern: str = "*") -> list[str]:
    """Names of the registered quantized models, optionally filtered by a glob pattern."""
    return sorted(n for n in _VARIANTS if fnmatch.fnmatch(n, pattern))


def model_config(name: str) -> tuple[str, dict[str, Any]]:
    """(family, architecture kwargs) of a registered model; unknown names raise."""
    check_name(name)
    family, arch = _VARIANTS[name]
    return family, dict(arch)


def _check_common(name: str, num_classes: int, img_size: int | None) -> tuple[str, dict]:
    family, arch = model_config(name)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    if img_size is not None:
        if isinstance(img_size, bool) or not isinstance(img_size, int) or img_size < 1:
            raise ValueError(f"img_size must be a positive int, got {img_size!r}")
        multiple = arch["patch_size"] * (arch.get("window_size", 1)
                                         * 2 ** (len(arch.get("depths", (0,))) - 1)
                                         if family == "swin" else 1)
        if img_size % multiple:
            raise ValueError(f"{name} needs img_size divisible by {multiple} (patch size"
                             f"{', windows and merging' if family == 'swin' else ''}); got "
                             f"{img_size}; e.g. {max(multiple, img_size // multiple * multiple)}")
        arch["img_size"] = img_size
    return family, arch


def create_model(name: str, *, num_classes: int, img_size: int | None = None,
                 flags: Flags | str | None = None, ternary: bool = False,
                 **overrides: Any) -> QuantModel:
    """Build quantized model ``name`` (see `list_models`) with ``flags`` (a `Flags`, a spec
    string such as ``"seed,use_frexp=true"``, or None for the `best` preset)."""
    family, arch = _check_common(name, num_classes, img_size)
    arch.update(overrides)
    model = _FAMILIES[family](num_classes=num_classes, flags=Flags.parse(flags),
                              ternary=ternary, **arch)
    model.variant, model.arch = name, arch
    return model


def create_float_reference(name: str, *, num_classes: int, img_size: int | None = None,
                           **overrides: Any) -> nn.Module:
    """timm's float model with the architecture of quantized ``name``: same depth, widths,
    patching and windows, and the same parameter names (its weights load into ours)."""
    from timm.models.swin_transformer import SwinTransformer
    from timm.models.vision_transformer import VisionTransformer

    family, arch = _check_common(name, num_classes, img_size)
    arch.update(overrides)
    arch.pop("softmax_bits", None)
    if family == "vit":
        return VisionTransformer(num_classes=num_classes, qkv_bias=True,
                                 norm_layer=partial(nn.LayerNorm, eps=1e-6), **arch)
    arch.setdefault("drop_path_rate", 0.1)
    return SwinTransformer(num_classes=num_classes, norm_layer=partial(nn.LayerNorm, eps=1e-6),
                           **arch)


def _float_keys(model: QuantModel) -> dict[str, torch.Size]:
    """The keys a float checkpoint must provide: every parameter (QuantAct ranges and other
    buffers come from calibration, not from float weights)."""
    return {k: p.shape for k, p in model.named_parameters()}


def _read_state_dict(source: Any) -> dict[str, torch.Tensor]:
    if isinstance(source, nn.Module):
        return source.state_dict()
    if isinstance(source, (str, os.PathLike)):
        if not os.path.isfile(source):
            raise ValueError(f"float checkpoint {os.fspath(source)!r} does not exist")
        source = torch.load(source, map_location="cpu", weights_only=True)
    if not isinstance(source, dict):
        raise ValueError(f"expected a state dict, a checkpoint path or a module, got "
                         f"{type(source).__name__}")
    for key in ("model", "state_dict", "model_ema"):
        if key in source and isinstance(source[key], dict):
            return source[key]
    return source


def load_float_weights(model: QuantModel, source: Any, *, exclude: tuple[str, ...] = (),
                       ) -> QuantModel:
    """Load float weights (timm checkpoint file, state dict or module) into ``model``.

    Keys are checked strictly: every parameter must be present with its shape, and nothing
    else may be there (timm's non-persistent buffers aside). ``exclude`` takes glob patterns
    of parameters to keep at their initial values, e.g. ``("head.*",)`` for a new class
    count. Original-format Swin checkpoints are converted by timm's own filter first.
    """
    sd = dict(_read_state_dict(source))
    if isinstance(model, QuantSwin) and ("head.weight" in sd or "layers.0.downsample.norm.weight"
                                         in sd):
        from timm.models.swin_transformer import checkpoint_filter_fn
        sd = checkpoint_filter_fn(sd, _float_shadow(model))
    for k in [k for k in sd if k.endswith(("relative_position_index", "attn_mask"))]:
        del sd[k]  # derived buffers, rebuilt by the model itself
    expected = _float_keys(model)
    keep = {k for k in expected if any(fnmatch.fnmatch(k, p) for p in exclude)}
    sd = {k: v for k, v in sd.items() if k not in keep}
    missing = sorted(set(expected) - set(sd) - keep)
    unexpected = sorted(set(sd) - set(expected))
    wrong = sorted(f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(expected[k])}"
                   for k in set(sd) & set(expected) if sd[k].shape != expected[k])
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)}: {', '.join(missing[:8])}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)}: {', '.join(unexpected[:8])}")
        if wrong:
            parts.append(f"shape mismatch: {'; '.join(wrong[:8])}")
        raise ValueError("float weights do not fit this model (" + " | ".join(parts) + "). "
                         "Check the model name, num_classes and img_size; pass "
                         "exclude=('head.*',) to keep a new classifier head.")
    state = model.state_dict()
    state.update({k: v.to(state[k].dtype) for k, v in sd.items()})
    model.load_state_dict(state, strict=True)
    return model


def _float_shadow(model: QuantModel) -> nn.Module:
    """A float timm model with ``model``'s architecture, for timm's checkpoint filter."""
    if not hasattr(model, "variant"):
        raise ValueError("build the model with qvit.create_model to load float weights into it")
    return create_float_reference(model.variant, num_classes=model.num_classes,
                                  **{k: v for k, v in model.arch.items()
                                     if k not in _VARIANTS[model.variant][1]
                                     or k == "img_size"})


def check_model_args(name: str, num_classes: int, img_size: int | None) -> None:
    """Refuse (ValueError) what `create_model` would refuse for these arguments, without
    building the model."""
    _check_common(name, num_classes, img_size)
