"""Checkpoints of the official I-ViT code (zkkli/I-ViT), DeiT and Swin, loaded strictly.

The layouts differ by known renames only:

* DeiT parameter names are identical; Swin's patch merging sits at the end of stage ``i`` in
  I-ViT (``layers.{i}.downsample.*``) and at the start of stage ``i+1`` here, and I-ViT's
  Swin classifier is ``head.*`` where ours is ``head.fc.*`` (timm's naming).
* I-ViT names its activation quantizers ``qact*``, ours are named by what they quantize
  (``q_*``); the tables below are the correspondence, module by module.
* I-ViT saves buffers derived from the weights or from the current batch (``weight_integer``,
  ``bias_integer``, ``fc_scaling_factor``, ``conv_scaling_factor``, ``norm_scaling_factor``,
  the matmul/softmax/GELU output scales, Swin's ``relative_position_index`` and
  ``attn_mask``): dropped, the model recomputes them. Its unused quantizers (``act_out``;
  in DeiT ``attn.qact_softmax``) are dropped too.
* I-ViT keeps the running ranges (``min_val``/``max_val``) as plain attributes, so they are
  not in its checkpoints; only each quantizer's ``act_scaling_factor`` is. Eval needs only
  that scale; the range is set to the symmetric ``[-m, m]`` whose scale is that scale, bit
  for bit (``m = scale * (2^(bits-1) - 1)``, nudged by an ulp where float rounding needs it),
  so eval is exact under every flag. Further training continues the running range from that
  symmetric range (the asymmetric one I-ViT had is not recoverable). A quantizer whose saved
  scale is zero (never run in I-ViT) cannot be derived: its range stays empty and a warning
  says to run `qvit.calibrate`.
"""

from __future__ import annotations

import re
import warnings
from typing import Any

import torch
from torch import nn

from . import modules as qm
from .blocks import Attention, Mlp, PatchEmbed, PatchMerging, TransformerBlock
from .models import QuantModel, QuantSwin, QuantViT
from .ops import quantize as Q
from .registry import key_mismatch, read_state_dict

__all__ = ["load_ivit_checkpoint"]

_BLOCK_ACTS = {"qact1": "q_norm1", "qact2": "q_res1", "qact3": "q_norm2", "qact4": "q_res2"}
_MLP_ACTS = {"qact_gelu": "q_fc1", "qact1": "q_act", "qact2": "q_out"}
_NONLINEAR = {"matmul_1": "matmul_qk", "matmul_2": "matmul_av"}

# (qvit module class) -> {I-ViT child name: qvit child name}; None: unused in I-ViT, dropped.
_VIT_NAMES: dict[type, dict[str, str | None]] = {
    QuantViT: {"qact_input": "q_input", "qact_pos": "q_pos", "qact1": "q_embed",
               "qact2": "q_head", "act_out": None},
    TransformerBlock: _BLOCK_ACTS,
    Attention: {"qact1": "q_qkv", "qact_attn1": "q_scores", "qact2": "q_context",
                "qact3": "q_out", "qact_softmax": None, "int_softmax": "softmax", **_NONLINEAR},
    Mlp: _MLP_ACTS,
    PatchEmbed: {"qact": "q_out"},
}
_SWIN_NAMES: dict[type, dict[str, str | None]] = {
    QuantSwin: {"qact_input": "q_input", "qact_pos": "q_pos", "qact1": "q_embed",
                "qact2": "q_norm", "qact3": "q_pool", "act_out": None},
    TransformerBlock: _BLOCK_ACTS,
    Attention: {"qact1": "q_qkv", "qact_attn1": "q_scores", "qact_table": "q_bias_table",
                "qact2": "q_scores_biased", "qact3": "q_context", "qact4": "q_out",
                "log_int_softmax": "softmax", **_NONLINEAR},
    Mlp: _MLP_ACTS,
    PatchEmbed: {"qact_before_norm": "q_proj", "qact": "q_out"},
    PatchMerging: {"qact1": "q_norm", "qact2": "q_out"},
}
# Buffers I-ViT saves that qvit derives (from the weights, or per batch): leaf names by the
# qvit module type they belong to.
_DERIVED: tuple[tuple[type, frozenset[str]], ...] = (
    (qm.QuantConv2d, frozenset({"weight_integer", "bias_integer", "conv_scaling_factor"})),
    (qm.QuantLinear, frozenset({"weight_integer", "bias_integer", "fc_scaling_factor"})),
    (qm.IntLayerNorm, frozenset({"norm_scaling_factor", "bias_integer"})),
    ((qm.QuantMatMul, qm.IntSoftmax, qm.IntGELU), frozenset({"act_scaling_factor"})),
    (Attention, frozenset({"relative_position_index"})),
    (TransformerBlock, frozenset({"attn_mask"})),
)


def _swin_rename(key: str) -> str:
    m = re.match(r"layers\.(\d+)\.downsample\.(.*)", key)
    if m:
        return f"layers.{int(m.group(1)) + 1}.downsample.{m.group(2)}"
    if key.startswith("head.") and not key.startswith("head.fc."):
        return "head.fc." + key[len("head."):]
    return key


def _resolve(model: QuantModel, key: str, names: dict[type, dict[str, str | None]]
             ) -> tuple[str, str, nn.Module | None]:
    """I-ViT key -> (qvit module path, leaf, qvit module), or module None for an unused
    I-ViT module; raises KeyError for a key with no place in ``model``."""
    *path, leaf = key.split(".")
    module: nn.Module = model
    out = []
    for part in path:
        table = names.get(type(module), {})
        renamed = part in table
        if renamed:
            part = table[part]
            if part is None:
                return ".".join(out), leaf, None
        child = module._modules.get(part)
        if child is None or (isinstance(child, qm.QuantAct) and not renamed):
            raise KeyError(key)  # quantizers only by their I-ViT names
        module = child
        out.append(part)
    return ".".join(out), leaf, module


def _symmetric_range(scale: torch.Tensor, bits: int) -> torch.Tensor:
    """An m > 0 with symmetric_scale(bits, -m, m) == scale bit for bit: scale * n, or the
    nearest float to it that rounds back (scale * n / n need not be scale)."""
    m = scale * float(2 ** (bits - 1) - 1)
    up = down = m
    candidates = [m]
    for _ in range(4):
        up = torch.nextafter(up, up * 2)
        down = torch.nextafter(down, torch.zeros_like(down))
        candidates += [up, down]
    for c in candidates:
        if torch.equal(Q.symmetric_scale(bits, -c, c), scale):
            return c
    return m  # not reached for float32 scales; eval uses the saved scale itself anyway


def _strip_prefix(sd: dict[str, Any]) -> dict[str, Any]:
    if sd and all(k.startswith("module.") for k in sd):  # saved from DistributedDataParallel
        return {k[len("module."):]: v for k, v in sd.items()}
    return sd


def load_ivit_checkpoint(model: QuantModel, path_or_state_dict: Any) -> QuantModel:
    """Load a checkpoint of the official I-ViT code into ``model`` (a qvit DeiT or Swin of
    the same architecture), strictly: every I-ViT key must have its place (or be one of the
    known derived or unused buffers) and every parameter and activation scale of ``model``
    must be provided, with its shape. Accepts a path (``torch.save``'d state dict, bare or
    under ``"model"``/``"state_dict"``; a ``module.`` prefix is stripped) or a state dict.
    Activation ranges are derived from the saved scales (see the module docstring)."""
    if isinstance(model, QuantSwin):
        names, rename = _SWIN_NAMES, _swin_rename
    elif isinstance(model, QuantViT):
        names, rename = _VIT_NAMES, (lambda k: k)
    else:
        raise ValueError(f"load_ivit_checkpoint takes a qvit QuantViT or QuantSwin, got "
                         f"{type(model).__name__}")
    sd = _strip_prefix(dict(read_state_dict(path_or_state_dict, what="I-ViT checkpoint")))
    params = dict(model.named_parameters())
    acts = {n: m for n, m in model.named_modules() if isinstance(m, qm.QuantAct)}
    new_params: dict[str, torch.Tensor] = {}
    scales: dict[str, torch.Tensor] = {}
    unknown: list[str] = []
    for key, value in sd.items():
        if not isinstance(value, torch.Tensor):
            unknown.append(key)
            continue
        try:
            path, leaf, module = _resolve(model, rename(key), names)
        except KeyError:
            unknown.append(key)
            continue
        if module is None:
            continue  # a quantizer I-ViT declares but never uses
        name = f"{path}.{leaf}" if path else leaf
        if name in params:
            new_params[name] = value
        elif isinstance(module, qm.QuantAct) and leaf == "act_scaling_factor":
            scales[path] = value
        elif any(isinstance(module, t) and leaf in leaves for t, leaves in _DERIVED):
            continue
        else:
            unknown.append(key)
    missing = sorted(set(params) - set(new_params)) + sorted(
        f"{n}.act_scaling_factor" for n in set(acts) - set(scales))
    wrong = sorted(f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(params[k].shape)}"
                   for k, v in new_params.items() if v.shape != params[k].shape)
    wrong += sorted(f"{k}.act_scaling_factor: {tuple(v.shape)}, expected one value"
                    for k, v in scales.items() if v.numel() != 1)
    if unknown or missing or wrong:
        raise ValueError(f"not an I-ViT checkpoint of this {type(model).__name__} ("
                         + key_mismatch(missing, unknown, wrong, 6) + "); check the model "
                         "name, num_classes and img_size (load timm float weights with "
                         "qvit.load_float_weights)")
    state = model.state_dict()
    for k, v in new_params.items():
        state[k] = v.detach().to(state[k].dtype)
    underived = []
    for n, s in scales.items():
        dtype = state[f"{n}.act_scaling_factor"].dtype
        s = s.detach().reshape(1).to(dtype)
        zero = torch.zeros_like(s)
        if not bool(s > 0):
            underived.append(n)
            state[f"{n}.min_val"], state[f"{n}.max_val"] = zero, zero
            state[f"{n}.act_scaling_factor"] = torch.full_like(s, Q.EPS_F32)
        else:
            m = _symmetric_range(s, acts[n].activation_bit)
            state[f"{n}.min_val"], state[f"{n}.max_val"] = -m, m
            state[f"{n}.act_scaling_factor"] = s
    model.load_state_dict(state, strict=True)
    if underived:
        warnings.warn(f"I-ViT checkpoint: no usable activation scale for {len(underived)} "
                      f"quantizers (e.g. {underived[0]}; saved as 0, never run in I-ViT): "
                      "their ranges are left empty; run qvit.calibrate(model, batches)",
                      stacklevel=2)
    return model
