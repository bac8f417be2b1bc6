"""From a trained (or loaded, calibrated) QAT model to its deployed integer model.

The scales every QAT module computes with are read by one probe forward in eval (they do
not depend on the batch in eval), so the deployed multipliers come from the very float32
scales the QAT model uses; weights, biases and constants are quantized by the QAT
modules' own code. Only the arithmetic after that is the deployed model's own.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from .. import modules as qm
from ..models import QuantModel, QuantSwin, QuantViT
from ..ops import int_exp
from ..ops.gelu import SIGMOID_FACTOR
from ..ops.requant import frexp_device
from . import arith, layers
from .intmm import check_int_gemm
from .model import DeployedModel, DeployedSwin, DeployedViT, Head

__all__ = ["dyadic", "probe_scales", "config_of", "check_deployable", "deploy"]

_PROBED = (qm.QuantAct, qm.QuantLinear, qm.QuantConv2d, qm.QuantMatMul, qm.IntLayerNorm,
           qm.IntSoftmax, qm.IntGELU)


def dyadic(in_scale: Tensor, out_scale: Tensor) -> tuple[Tensor, Tensor]:
    """(m, e) int64 of the requantizer from ``in_scale`` (one per channel, or one) to
    ``out_scale``: frexp (31-bit mantissa) of the float64 ratio of the float32 scales,
    as I-ViT's requantizer computes it. Refuses shifts a 64-bit deployment cannot do."""
    ratio = in_scale.detach().reshape(-1).to(torch.float64) / out_scale.detach().reshape(
        -1).to(torch.float32).to(torch.float64)
    m, e = frexp_device(ratio)
    m, e = m.to(torch.int64), e.to(torch.int64)
    if not ((e >= 1) & (e <= 62)).all():
        raise ValueError(f"a requantizer's scale ratio {ratio.min().item():.3g}.."
                         f"{ratio.max().item():.3g} is outside [2^-31, 2^30): the model's "
                         "activation scales are degenerate (recalibrate it)")
    return m, e


def probe_scales(model: QuantModel) -> dict[str, dict[str, Any]]:
    """One eval forward on zeros, recording each module's input and output scales."""
    seen: dict[str, dict[str, Any]] = {}

    def hook(name):
        def record(module, args, out):
            entry = dict(out=out[1].detach().clone())
            if len(args) > 1 and isinstance(args[1], Tensor):
                entry["in"] = args[1].detach().clone()
            if len(args) > 3 and isinstance(args[3], Tensor):
                entry["id"] = args[3].detach().clone()
            seen[name] = entry
        return record

    handles = [m.register_forward_hook(hook(n)) for n, m in model.named_modules()
               if isinstance(m, _PROBED)]
    p = next(model.parameters())
    size = model.patch_embed.img_size
    x = torch.zeros(1, model.patch_embed.proj.in_channels, size, size, device=p.device,
                    dtype=p.dtype)
    modes = {m: m.training for m in model.modules()}
    try:
        model.eval()
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
        for m, t in modes.items():
            m.training = t
    return seen


def config_of(model: QuantModel) -> dict[str, Any]:
    """The `DeployedModel` config of a QAT model's architecture."""
    pe = model.patch_embed
    common = dict(img_size=pe.img_size, patch_size=pe.patch_size,
                  in_chans=pe.proj.in_channels, num_classes=model.num_classes,
                  embed_dim=pe.proj.out_channels)
    if isinstance(model, QuantViT):
        blk = model.blocks[0]
        return dict(family="vit", **common, depth=len(model.blocks),
                    num_heads=blk.attn.num_heads, mlp_hidden=blk.mlp.fc1.out_features,
                    qkv_bias=blk.attn.qkv.bias is not None,
                    softmax_bits=blk.attn.softmax.output_bit, global_pool=model.global_pool)
    blocks = [b for s in model.layers for b in s.blocks]
    return dict(family="swin", **common, depths=[len(s.blocks) for s in model.layers],
                num_heads=[s.blocks[0].attn.num_heads for s in model.layers],
                window_size=max(b.window_size for b in blocks),
                mlp_hidden=[s.blocks[0].mlp.fc1.out_features for s in model.layers],
                qkv_bias=blocks[0].attn.qkv.bias is not None,
                ape=model.absolute_pos_embed is not None)


def check_deployable(model: nn.Module, *, calibrated: bool = True) -> None:
    """Refuse (ValueError, one line) a model `deploy` cannot deploy: not a qvit QuantViT or
    QuantSwin, no classifier, a pooling it does not compute, and (``calibrated``) activation
    ranges never observed. ``calibrated=False``: the architecture only (before training)."""
    if not isinstance(model, (QuantViT, QuantSwin)):
        kind = ("a float model" if not any(isinstance(m, qm.QuantModule)
                                           for m in model.modules()) else "not a qvit model")
        raise ValueError(f"deploy takes a qvit QuantViT or QuantSwin, got "
                         f"{type(model).__name__} ({kind}); build it with "
                         "qvit.create_model, load or train its weights, then calibrate")
    if model.num_classes == 0:
        raise ValueError("deploy needs a classifier (num_classes > 0); the deployed model "
                         "returns logits")
    empty = model.uncalibrated_quantizers() if calibrated else []
    if empty:
        raise ValueError(f"deploy: {len(empty)} activation ranges were never observed "
                         f"(e.g. {empty[0]}); run qvit.calibrate(model, batches) or train "
                         "first")
    if isinstance(model, QuantViT) and model.global_pool not in ("token", "avg"):
        raise ValueError(f"deploy supports global_pool 'token' or 'avg', got "
                         f"{model.global_pool!r}")
    if isinstance(model, QuantSwin) and model.global_pool != "avg":
        raise ValueError("deploy supports Swin with global_pool='avg' only")


def _int(t: Tensor, dtype: torch.dtype, what: str) -> Tensor:
    info = torch.iinfo(dtype)
    if t.numel() and (t.min() < info.min or t.max() > info.max):
        raise ValueError(f"{what} does not fit {dtype} (range {t.min().item():.0f}.."
                         f"{t.max().item():.0f})")
    return t.to(dtype)


class _Converter:
    def __init__(self, qat: QuantModel, probe: dict[str, dict[str, Any]]):
        self.qat, self.probe = qat, probe
        self.modules = dict(qat.named_modules())

    def requant(self, name: str, dst: layers.Requant) -> None:
        rec = self.probe[name]
        dst.set_multiplier(*dyadic(rec["in"], rec["out"]))
        if dst.has_identity:
            dst.set_multiplier(*dyadic(rec["id"], rec["out"]), identity=True)

    def constant(self, name: str, value_int: Tensor, identity: bool) -> Tensor:
        """A constant integer tensor requantized by QuantAct ``name`` (its main input or
        its residual), in int64, unclamped (the clamp follows the sum)."""
        rec = self.probe[name]
        m, e = dyadic(rec["id" if identity else "in"], rec["out"])
        return arith.requantize(value_int, m, e, (1 << (e - 1)) - 1)

    def linear(self, name: str, dst: layers.IntLinear) -> Tensor:
        """Weights and bias of QuantLinear/QuantConv2d ``name``; returns the bias scale."""
        src = self.modules[name]
        w_int, w_scale = src.quantized_weight()
        bias_scale = w_scale * self.probe[name]["in"]
        dst.weight.copy_(_int(w_int.reshape(dst.weight.shape), torch.int8, f"{name}.weight"))
        if dst.bias is not None:
            dst.bias.copy_(_int(src.quantized_bias(bias_scale), torch.int32, f"{name}.bias"))
        return bias_scale

    def layernorm(self, name: str, dst: layers.IntLayerNorm) -> None:
        src = self.modules[name]
        out_scale = src.dim_sqrt / 2**30
        bias_int = torch.floor(src.bias.detach() / src.weight.detach() / out_scale)
        if not torch.isfinite(bias_int).all():
            raise ValueError(f"{name}: a LayerNorm weight is zero; its integer bias "
                             "bias / weight is undefined")
        dst.bias_int.copy_(_int(bias_int, torch.int32, f"{name} integer bias"))

    def walk(self, dst: nn.Module, prefix: str = "") -> None:
        """Fill every leaf of ``dst`` from the QAT module of the same name."""
        for name, child in dst.named_children():
            full = prefix + name
            if isinstance(child, layers.Requant):
                self.requant(full, child)
            elif isinstance(child, layers.IntLinear):
                self.linear(full, child)
            elif isinstance(child, layers.IntLayerNorm):
                self.layernorm(full, child)
            elif isinstance(child, layers.IntSoftmax):
                child.x0.copy_(int_exp.exp_x0_int(self.probe[full]["in"]).reshape(()))
            elif isinstance(child, layers.IntGELU):
                sig = self.probe[full]["in"] * SIGMOID_FACTOR
                child.x0.copy_(int_exp.exp_x0_int(sig).reshape(()))
            elif isinstance(child, layers.InputQuant):
                child.scale.copy_(self.probe[full]["out"].reshape(1))
            elif isinstance(child, (layers.IntMatMul, Head)):
                pass  # (nothing to fill; the head: `deploy`, its QAT name differs)
            else:
                self.walk(child, full + ".")


def _fill_attention(conv: _Converter, qat_blk, blk, prefix: str) -> None:
    attn, q = blk.attn, qat_blk.attn
    if attn.window:
        with torch.no_grad():
            bias, bias_scale = q.relative_position_bias()
        bias_int = torch.round(bias / bias_scale)
        attn.bias_rq.copy_(conv.constant(prefix + "attn.q_scores_biased", bias_int, True))
    if blk.attn_mask is not None:
        s = conv.probe[prefix + "attn.softmax"]["in"]
        blk.attn_mask.copy_(_int(torch.round(qat_blk.attn_mask / s), torch.int32,
                                 f"{prefix}attn_mask"))


def deploy(model: nn.Module, *, int_gemm: str = "auto", lookup_tables: bool = True,
           requant: str = "auto") -> DeployedModel:
    """The integer-only inference model of a trained, loaded or calibrated qvit model
    (QuantViT or QuantSwin): int8 weights, int32 biases, dyadic multipliers and integer
    constants; float only in the input quantizer and the logits (elsewhere only as a
    carrier of exact integers, where ``int_gemm`` and ``requant`` choose one). In eval
    mode, on the model's device. ``int_gemm``, ``lookup_tables``, ``requant``: how it
    computes, not what (`DeployedModel`). Refuses (ValueError, one line) anything else: a
    float model, an uncalibrated one, a model without a classifier, an unknown
    ``int_gemm`` or ``requant``."""
    check_deployable(model)
    check_int_gemm(int_gemm)
    layers.check_requant(requant)
    modes = {m: m.training for m in model.modules()}
    try:
        model.eval()  # (the quantizers called below must not observe)
        return _deploy(model, dict(int_gemm=int_gemm, lookup_tables=lookup_tables,
                                   requant=requant))
    finally:
        for m, t in modes.items():
            m.training = t


def _deploy(model: QuantModel, options: dict[str, Any]) -> DeployedModel:
    probe = probe_scales(model)
    p = next(model.parameters())
    dep = (DeployedViT if isinstance(model, QuantViT) else DeployedSwin)(
        **{k: v for k, v in config_of(model).items() if k != "family"}, **options
    ).to(p.device)
    conv = _Converter(model, probe)
    with torch.no_grad():
        conv.walk(dep)
        dep.head.logit_scale.copy_(conv.linear(
            "head" if isinstance(model, QuantViT) else "head.fc", dep.head.fc).reshape(-1))
        if isinstance(model, QuantViT):
            rec = probe["q_embed"]
            cls_int = torch.round(model.cls_token / rec["in"])
            dep.cls_int.copy_(_int(cls_int, torch.int32, "the class token"))
            pos = probe["q_pos"]["out"]
            pos_int = torch.round(model.q_pos(model.pos_embed)[0] / pos)
            dep.pos_rq.copy_(conv.constant("q_embed", pos_int, True))
            pairs = [(f"blocks.{i}.", b, d) for i, (b, d) in
                     enumerate(zip(model.blocks, dep.blocks, strict=True))]
        else:
            if model.absolute_pos_embed is not None:
                pos = probe["q_pos"]["out"]
                pos_int = torch.round(model.q_pos(model.absolute_pos_embed)[0] / pos)
                dep.pos_rq.copy_(conv.constant("q_embed", pos_int, True))
            pairs = [(f"layers.{i}.blocks.{j}.", b, d)
                     for i, (s, ds) in enumerate(zip(model.layers, dep.layers, strict=True))
                     for j, (b, d) in enumerate(zip(s.blocks, ds.blocks, strict=True))]
        for prefix, qb, db in pairs:
            _fill_attention(conv, qb, db, prefix)
    dep.refresh_tables()  # (from the constants just filled)
    return dep.eval()
