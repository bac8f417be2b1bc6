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
import pickle
import zipfile
from collections.abc import Callable
from functools import partial
from typing import Any

import timm
import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch import nn

from .flags import Flags
from .models import QuantModel, QuantSwin, QuantViT
from .variants import VARIANTS, check_name

__all__ = ["create_model", "list_models", "create_float_reference", "load_float_weights",
           "model_config", "default_cfgs"]

_VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {}  # filled from variants.VARIANTS
# timm's pretrained configs, keyed by the timm name (qvit_<name>); read by timm's
# register_model. No weights: url is empty (pretrained=True is refused).
default_cfgs: dict[str, dict[str, Any]] = {}
# The statistics the harness normalizes the micro models' data with (harness/data.py,
# MEAN_STD["digits"]; tests/qvit/test_timm.py keeps them equal).
DIGITS_MEAN_STD = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


def _cfg(family: str, arch: dict[str, Any], **kw: Any) -> dict[str, Any]:
    size = arch["img_size"]
    cfg = dict(url="", num_classes=1000, input_size=(3, size, size), pool_size=None,
               crop_pct=0.875, interpolation="bicubic", fixed_input_size=True,
               mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD,
               first_conv="patch_embed.proj", classifier="head")
    if family == "swin":
        cfg.update(crop_pct=0.9, classifier="head.fc", pool_size=_swin_pool_size(arch, size))
    cfg.update(kw)
    return cfg


def _swin_pool_size(arch: dict[str, Any], img_size: int) -> tuple[int, int]:
    side = img_size // arch["patch_size"] // 2 ** (len(arch["depths"]) - 1)
    return (side, side)


def _variant(name: str, family: str, cfg: dict[str, Any] | None = None, **arch: Any) -> None:
    _VARIANTS[name] = (family, arch)
    default_cfgs[f"qvit_{name}"] = _cfg(family, arch, **(cfg or {}))

    def _timm_entry(pretrained: bool = False, pretrained_cfg=None, pretrained_cfg_overlay=None,
                    **kwargs):
        if pretrained:
            raise ValueError("qvit models have no pretrained quantized weights; create the "
                             "model, then qvit.load_float_weights(model, <timm checkpoint>) "
                             "or qvit.load_ivit_checkpoint(model, <I-ViT checkpoint>)")
        features_only = kwargs.pop("features_only", False)
        kwargs.pop("cache_dir", None)
        from timm.models import resolve_pretrained_cfg

        cfg = resolve_pretrained_cfg(f"qvit_{name}", pretrained_cfg=pretrained_cfg,
                                     pretrained_cfg_overlay=pretrained_cfg_overlay)
        if features_only:
            return _feature_net(name, family, cfg.to_dict(), kwargs)
        return create_model(name, pretrained_cfg=cfg.to_dict(), **kwargs)

    _timm_entry.__name__ = f"qvit_{name}"
    _timm_entry.__module__ = __name__
    timm.models.register_model(_timm_entry)


def _feature_net(name: str, family: str, cfg: dict[str, Any], kwargs: dict[str, Any]
                 ) -> nn.Module:
    """``features_only=True``: the model in timm's FeatureGetterNet (`forward_intermediates`,
    pruned after the last index), with timm's default indices: the last 3 blocks of a ViT,
    every stage of a Swin."""
    from timm.models._features import FeatureGetterNet

    feature_cls = kwargs.pop("feature_cls", "getter")
    if feature_cls != "getter":
        raise ValueError(f"qvit models give features through forward_intermediates: "
                         f"feature_cls='getter' (timm's FeatureGetterNet), got {feature_cls!r}")
    feature_cfg = dict(kwargs.pop("feature_cfg", None) or {})
    feature_cfg.pop("feature_cls", None)
    out_indices = kwargs.pop("out_indices", feature_cfg.pop("out_indices", None))
    for key in ("output_fmt", "norm"):
        if key in kwargs:
            feature_cfg[key] = kwargs.pop(key)
    kwargs.setdefault("num_classes", 0)
    model = create_model(name, pretrained_cfg=cfg, **kwargs)
    if out_indices is None:
        out_indices = 3 if family == "vit" else tuple(range(len(model.feature_info)))
    net = FeatureGetterNet(model, out_indices=out_indices, **feature_cfg)
    net.pretrained_cfg = net.default_cfg = model.pretrained_cfg  # as timm's builder does
    return net


_MICRO = dict(mean=DIGITS_MEAN_STD[0], std=DIGITS_MEAN_STD[1], crop_pct=1.0,
              interpolation="bilinear")

for _name, (_family, _arch) in VARIANTS.items():
    _variant(_name, _family, cfg=_MICRO if _name in ("ivit_micro", "swin_micro") else None,
             **_arch)

_FAMILIES: dict[str, Callable[..., QuantModel]] = {"vit": QuantViT, "swin": QuantSwin}


def list_models(pattern: str = "*") -> list[str]:
    """Names of the registered quantized models, optionally filtered by a glob pattern."""
    return sorted(n for n in _VARIANTS if fnmatch.fnmatch(n, pattern))


def model_config(name: str) -> tuple[str, dict[str, Any]]:
    """(family, architecture kwargs) of a registered model; unknown names raise."""
    check_name(name)
    family, arch = _VARIANTS[name]
    return family, dict(arch)


def _img_size(img_size: Any) -> int | None:
    if isinstance(img_size, (tuple, list)) and len(img_size) == 2 and img_size[0] == img_size[1]:
        img_size = img_size[0]  # timm passes (H, W); the models are square
    if img_size is not None and (isinstance(img_size, bool) or not isinstance(img_size, int)
                                 or img_size < 1):
        raise ValueError(f"img_size must be a positive int (or a square (H, W)), got "
                         f"{img_size!r}")
    return img_size


def _check_common(name: str, num_classes: int, img_size: int | None) -> tuple[str, dict]:
    family, arch = model_config(name)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 0:
        raise ValueError(f"num_classes must be an int >= 0 (0: no classifier), got "
                         f"{num_classes!r}")
    img_size = _img_size(img_size)
    if img_size is not None:
        multiple = arch["patch_size"] * (arch.get("window_size", 1)
                                         * 2 ** (len(arch.get("depths", (0,))) - 1)
                                         if family == "swin" else 1)
        if img_size % multiple:
            raise ValueError(f"{name} needs img_size divisible by {multiple} (patch size"
                             f"{', windows and merging' if family == 'swin' else ''}); got "
                             f"{img_size}; e.g. {max(multiple, img_size // multiple * multiple)}")
        arch["img_size"] = img_size
    return family, arch


def create_model(name: str, *, num_classes: int | None = None, img_size: int | None = None,
                 flags: Flags | str | None = None, ternary: bool = False,
                 pretrained_cfg: dict[str, Any] | None = None, **overrides: Any) -> QuantModel:
    """Build quantized model ``name`` (see `list_models`) with ``flags`` (a `Flags`, a spec
    string such as ``"seed,use_frexp=true"``, or None for the `best` preset).

    ``num_classes`` defaults to the model's pretrained config's (1000, timm's); 0 builds a
    feature extractor (forward returns pooled features). The model carries timm's
    ``pretrained_cfg`` (input size, mean/std, crop, classifier), its input size the model's.
    """
    model_config(name)  # an unknown name raises, with a suggestion
    cfg = dict(pretrained_cfg or default_cfgs[f"qvit_{name}"])
    if num_classes is None:
        num_classes = cfg.get("num_classes") or 1000
    family, arch = _check_common(name, num_classes, img_size)
    arch.update(overrides)
    model = _FAMILIES[family](num_classes=num_classes, flags=Flags.parse(flags),
                              ternary=ternary, **arch)
    model.variant, model.arch = name, arch
    size, chans = arch["img_size"], arch.get("in_chans", 3)
    cfg["input_size"] = (chans, size, size)
    if family == "swin":
        cfg["pool_size"] = _swin_pool_size(arch, size)
    model.pretrained_cfg = cfg
    return model


def create_float_reference(name: str, *, num_classes: int = 1000, img_size: int | None = None,
                           attention: str | None = None, **overrides: Any) -> nn.Module:
    """timm's float model with the architecture of quantized ``name``: same depth, widths,
    patching and windows, and the same parameter names (its weights load into ours).

    ``attention`` sets every attention's path: ``"sdpa"`` ``F.scaled_dot_product_attention``,
    ``"explicit"`` ``softmax(q k^T) v`` (the quantized models' form); None keeps timm's
    default (sdpa for ViT, explicit for Swin). The weights and state dict are the same."""
    from timm.models.swin_transformer import SwinTransformer
    from timm.models.vision_transformer import VisionTransformer

    if attention not in (None, "explicit", "sdpa"):
        raise ValueError(f"attention={attention!r}: use 'explicit', 'sdpa' or None (timm's "
                         f"default)")
    family, arch = _check_common(name, num_classes, img_size)
    arch.update(overrides)
    arch.pop("softmax_bits", None)
    if family == "vit":
        model = VisionTransformer(num_classes=num_classes, qkv_bias=True,
                                  norm_layer=partial(nn.LayerNorm, eps=1e-6), **arch)
    else:
        arch.setdefault("drop_path_rate", 0.1)
        model = SwinTransformer(num_classes=num_classes,
                                norm_layer=partial(nn.LayerNorm, eps=1e-6), **arch)
    if attention is not None:
        for module in model.modules():
            if hasattr(module, "fused_attn"):  # timm's Attention, WindowAttention
                module.fused_attn = attention == "sdpa"
    return model


def _float_keys(model: QuantModel) -> dict[str, torch.Size]:
    """The keys a float checkpoint must provide: every parameter (QuantAct ranges and other
    buffers come from calibration, not from float weights)."""
    return {k: p.shape for k, p in model.named_parameters()}


def _load_file(path: str | os.PathLike, what: str) -> Any:
    """torch.load (weights only) or safetensors; anything else is a one-line ValueError."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"{what} {path!r} does not exist")
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        try:
            return load_file(path)
        except Exception as e:  # safetensors raises its own error types
            raise ValueError(f"{what} {path!r} is not a readable safetensors file "
                             f"({type(e).__name__})") from None
    with open(path, "rb") as f:
        head = f.read(2)
    if not (zipfile.is_zipfile(path) or head[:1] == b"\x80"):
        raise ValueError(f"{what} {path!r} is not a PyTorch checkpoint (torch.save zip or "
                         "pickle) nor a .safetensors file")
    import argparse

    try:
        # training scripts (timm's, I-ViT's) save their argparse.Namespace next to the weights
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if "weights only load failed" in reason.lower() or "weights_only" in reason:
            raise ValueError(f"{what} {path!r} holds Python objects other than tensors; if you "
                             "trust it, torch.load(path, weights_only=False) it yourself and "
                             "pass the state dict") from None
        raise ValueError(f"{what} {path!r} is not a readable PyTorch checkpoint "
                         f"({type(e).__name__}: {reason[:120]})") from None


def read_state_dict(source: Any, what: str = "float checkpoint") -> dict[str, torch.Tensor]:
    if isinstance(source, nn.Module):
        return source.state_dict()
    if isinstance(source, (str, os.PathLike)):
        source = _load_file(source, what)
    if not isinstance(source, dict):
        raise ValueError(f"expected a state dict, a checkpoint path or a module, got "
                         f"{type(source).__name__}")
    for key in ("model", "state_dict", "model_ema"):
        if key in source and isinstance(source[key], dict):
            return source[key]
    return source


def key_mismatch(missing: list[str], unexpected: list[str], wrong: list[str], n: int = 8
                 ) -> str:
    """One line naming the first ``n`` missing, unexpected and mis-shaped keys of a load."""
    parts = []
    if missing:
        parts.append(f"missing {len(missing)}: {', '.join(missing[:n])}")
    if unexpected:
        parts.append(f"unexpected {len(unexpected)}: {', '.join(sorted(unexpected)[:n])}")
    if wrong:
        parts.append(f"shape mismatch: {'; '.join(wrong[:n])}")
    return " | ".join(parts)


def load_float_weights(model: QuantModel, source: Any, *, exclude: tuple[str, ...] = (),
                       ) -> QuantModel:
    """Load float weights (timm checkpoint file, state dict or module) into ``model``.

    Keys are checked strictly: every parameter must be present with its shape, and nothing
    else may be there (timm's non-persistent buffers aside). ``exclude`` takes glob patterns
    of parameters to keep at their initial values, e.g. ``("head.*",)`` for a new class
    count. Original-format Swin checkpoints are converted by timm's own filter first.
    """
    sd = dict(read_state_dict(source))
    if isinstance(model, QuantSwin) and ("head.weight" in sd or "layers.0.downsample.norm.weight"
                                         in sd):
        from timm.models.swin_transformer import checkpoint_filter_fn
        sd = checkpoint_filter_fn(sd, _float_shadow(model))
    for k in [k for k in sd if k.endswith(("relative_position_index", "attn_mask"))]:
        del sd[k]  # derived buffers, rebuilt by the model itself
    if (isinstance(model, QuantViT) and "pos_embed" not in exclude and "pos_embed" in sd
            and sd["pos_embed"].ndim == 3 and sd["pos_embed"].shape[-1] == model.embed_dim
            and sd["pos_embed"].shape != model.pos_embed.shape):
        from timm.layers import resample_abs_pos_embed

        # another img_size (or patch grid): interpolate the grid part, as timm does
        sd["pos_embed"] = resample_abs_pos_embed(
            sd["pos_embed"].float(), new_size=list(model.patch_embed.grid_size),
            num_prefix_tokens=model.num_prefix_tokens)
    if model.num_classes == 0:  # a feature extractor: the checkpoint's classifier has no place
        sd = {k: v for k, v in sd.items() if not k.startswith("head.")}
    expected = _float_keys(model)
    keep = {k for k in expected if any(fnmatch.fnmatch(k, p) for p in exclude)}
    sd = {k: v for k, v in sd.items() if k not in keep}
    missing = sorted(set(expected) - set(sd) - keep)
    unexpected = sorted(set(sd) - set(expected))
    wrong = sorted(f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(expected[k])}"
                   for k in set(sd) & set(expected) if sd[k].shape != expected[k])
    if missing or unexpected or wrong:
        raise ValueError("float weights do not fit this model ("
                         + key_mismatch(missing, unexpected, wrong) + "). "
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
