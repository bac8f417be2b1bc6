"""`qvit.reference` over whole models: the integer deployment of a QAT model, computed on
Python integers (numpy object arrays; GEMMs in int64 with their bounds checked) from the
QAT model's float parameters and running ranges alone.

Nothing here uses `qvit.deploy`'s tensor code or the QAT model's forward: every weight,
scale, multiplier and constant is derived again (numpy float32 for the scale formulas, as
the QAT code computes them in torch float32; `qvit.reference` for frexp, the requantizer
and the integer nonlinearities). `reference_forward` returns every intermediate under the
deployed model's module names, and the logits.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .. import reference as R
from ..models import QuantSwin, QuantViT
from ..modules import QuantAct, TerLinear

__all__ = ["reference_forward"]

F32 = np.float32
EPS = np.finfo(np.float32).eps


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()


def _obj(a: np.ndarray) -> np.ndarray:
    return np.asarray(a).astype(np.int64).astype(object)


def _round(a: np.ndarray) -> np.ndarray:
    return np.round(a).astype(np.int64).astype(object)  # numpy rounds half to even


def _scale(min_val, max_val, bits: int) -> np.ndarray:
    """symmetric_scale in float32: max(-min, max) / (2^(b-1) - 1), at least eps."""
    s = np.maximum(-_np(min_val).astype(F32), _np(max_val).astype(F32)) / F32(2 ** (bits - 1) - 1)
    return np.maximum(s, F32(EPS)).astype(F32)


def _quantize(x: np.ndarray, scale: np.ndarray, bits: int) -> np.ndarray:
    """clamp(round(fl32(1 / scale) * x)) (I-ViT's symmetric quantizer)."""
    n = 2 ** (bits - 1)
    return np.clip(_round((F32(1) / scale.astype(F32)) * x.astype(F32)), -n, n - 1)


def _matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a64, b64 = np.asarray(a).astype(np.int64), np.asarray(b).astype(np.int64)
    bound = int(np.abs(a64).max(initial=0)) * int(np.abs(b64).max(initial=0)) * a64.shape[-1]
    if bound >= 2**62:
        raise ValueError("reference GEMM beyond int64")
    return np.matmul(a64, b64).astype(object)


class _Walk:
    def __init__(self, model):
        self.model = model
        self.out: dict[str, Any] = {}

    # --- layers -----------------------------------------------------------------------------

    def act_scale(self, q: QuantAct) -> np.ndarray:
        return _scale(q.min_val, q.max_val, q.activation_bit)

    def requant(self, name: str, q: QuantAct, z, in_scale, identity=None, id_scale=None):
        s = self.act_scale(q)
        y = R.fixedpoint_mul(z, np.asarray(in_scale, F32).reshape(-1), float(s[0]),
                             q.activation_bit, identity,
                             None if id_scale is None else np.asarray(id_scale, F32).reshape(-1))
        self.out[name] = y
        return y, s

    def weights(self, mod, in_scale: np.ndarray):
        if isinstance(mod, TerLinear):
            raise NotImplementedError("the reference models 8-bit weights, not ternary")
        w = _np(mod.weight).astype(F32).reshape(mod.weight.shape[0], -1)
        n = F32(2 ** (mod.weight_bit - 1) - 1)
        ws = np.maximum(np.maximum(-w.min(axis=1), w.max(axis=1)) / n, F32(EPS)).astype(F32)
        w_int = np.clip(_round((F32(1) / ws)[:, None] * w), -128, 127)
        bs = (ws * in_scale.astype(F32)).astype(F32)
        b_int = None
        if mod.bias is not None:
            b_int = np.clip(_round((F32(1) / bs) * _np(mod.bias).astype(F32)), -2**31, 2**31 - 1)
        return w_int, b_int, bs

    def linear(self, name: str, mod, x, in_scale):
        w_int, b_int, bs = self.weights(mod, in_scale)
        acc = _matmul(x, w_int.T)
        if b_int is not None:
            acc = acc + b_int
        self.out[name] = acc
        return acc, bs

    def layernorm(self, name: str, mod, x):
        C = mod.weight.shape[0]
        os0 = (np.sqrt(F32(C)) / F32(2**30)).astype(F32)
        w, b = _np(mod.weight).astype(F32), _np(mod.bias).astype(F32)
        bias_int = np.floor((b / w) / os0).astype(np.int64).astype(object)
        y = R.int_layernorm(x, bias_int)
        self.out[name] = y
        return y, (os0 * w).astype(F32)

    def softmax(self, name: str, mod, x, s):
        x0 = int(np.floor(-(F32(1) / s[0])))
        p = R.shiftmax(x, x0, mod.exp_bits, mod.output_bit)
        self.out[name] = p
        return p, np.array([2.0 ** -(mod.output_bit - 1)], F32)

    def gelu(self, name: str, mod, x, s):
        sig = (s * F32(1.702)).astype(F32)
        x0 = int(np.floor(-(F32(1) / sig[0])))
        y = R.shift_gelu(x, x0, mod.exp_bits, mod.output_bit)
        self.out[name] = y
        return y, (s * F32(2.0 ** -(mod.output_bit - 1))).astype(F32)

    def matmul(self, name: str, a, b):
        y = _matmul(a, b)
        self.out[name] = y
        return y

    # --- blocks -----------------------------------------------------------------------------

    def attention(self, p: str, attn, x, s, mask_float):
        B, N, C = x.shape
        H = attn.num_heads
        acc, bs = self.linear(p + "qkv", attn.qkv, x, s)
        qkv, s_qkv = self.requant(p + "q_qkv", attn.q_qkv, acc, bs)
        qkv = qkv.reshape(B, N, 3, H, C // H).transpose(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        sc = self.matmul(p + "matmul_qk", q, k.transpose(0, 1, 3, 2))
        pre = ((s_qkv * s_qkv).astype(F32) * F32(attn.scale)).astype(F32)
        sc, s_sc = self.requant(p + "q_scores", attn.q_scores, sc, pre)
        if attn.window_size is not None:
            tq = attn.q_bias_table
            s_t = self.act_scale(tq)
            table = _quantize(_np(attn.relative_position_bias_table), s_t, tq.activation_bit)
            n = attn.window_size**2
            idx = _np(attn.relative_position_index).reshape(-1)
            bias = table[idx].reshape(n, n, -1).transpose(2, 0, 1)[None]
            sc, s_sc = self.requant(p + "q_scores_biased", attn.q_scores_biased, sc, s_sc,
                                    bias, s_t)
        if mask_float is not None:
            mask = _round(mask_float.astype(F32) / s_sc.astype(F32))
            nw = mask.shape[0]
            sc = (sc.reshape(B // nw, nw, H, N, N) + mask[None, :, None]).reshape(B, H, N, N)
        pr, s_p = self.softmax(p + "softmax", attn.softmax, sc, s_sc)
        ctx = self.matmul(p + "matmul_av", pr, v)
        ctx, s_c = self.requant(p + "q_context", attn.q_context,
                                ctx.transpose(0, 2, 1, 3).reshape(B, N, C),
                                (s_p * s_qkv).astype(F32))
        acc, bs = self.linear(p + "proj", attn.proj, ctx, s_c)
        return self.requant(p + "q_out", attn.q_out, acc, bs)

    def windows(self, p: str, blk, x, s):
        if blk.window_size is None:
            return self.attention(p + "attn.", blk.attn, x, s, None)
        Hh, W = blk.input_resolution
        B, L, C = x.shape
        ws, sh = blk.window_size, blk.shift_size
        x = x.reshape(B, Hh, W, C)
        if sh:
            x = np.roll(x, (-sh, -sh), axis=(1, 2))
        w = x.reshape(B, Hh // ws, ws, W // ws, ws, C).transpose(0, 1, 3, 2, 4, 5)
        mask = None if blk.attn_mask is None else _np(blk.attn_mask)
        w, s = self.attention(p + "attn.", blk.attn, w.reshape(-1, ws * ws, C), s, mask)
        x = w.reshape(B, Hh // ws, W // ws, ws, ws, C).transpose(0, 1, 3, 2, 4, 5)
        x = x.reshape(B, Hh, W, C)
        if sh:
            x = np.roll(x, (sh, sh), axis=(1, 2))
        return x.reshape(B, L, C), s

    def block(self, p: str, blk, x, s):
        y, os_ = self.layernorm(p + "norm1", blk.norm1, x)
        y, s1 = self.requant(p + "q_norm1", blk.q_norm1, y, os_)
        y, s1 = self.windows(p, blk, y, s1)
        h, sh = self.requant(p + "q_res1", blk.q_res1, y, s1, x, s)
        y, os_ = self.layernorm(p + "norm2", blk.norm2, h)
        y, s2 = self.requant(p + "q_norm2", blk.q_norm2, y, os_)
        mlp = blk.mlp
        acc, bs = self.linear(p + "mlp.fc1", mlp.fc1, y, s2)
        y, s2 = self.requant(p + "mlp.q_fc1", mlp.q_fc1, acc, bs)
        y, s2 = self.gelu(p + "mlp.act", mlp.act, y, s2)
        y, s2 = self.requant(p + "mlp.q_act", mlp.q_act, y, s2)
        acc, bs = self.linear(p + "mlp.fc2", mlp.fc2, y, s2)
        y, s2 = self.requant(p + "mlp.q_out", mlp.q_out, acc, bs)
        return self.requant(p + "q_res2", blk.q_res2, y, s2, h, sh)

    def embed(self, images: np.ndarray):
        m = self.model
        s_in = self.act_scale(m.q_input)
        x = _quantize(images, s_in.reshape(1, -1, 1, 1), 8)
        self.out["q_input"] = x
        pe = m.patch_embed
        B, C, H, W = x.shape
        pch = pe.patch_size
        patches = x.reshape(B, C, H // pch, pch, W // pch, pch).transpose(0, 2, 4, 1, 3, 5)
        acc, bs = self.linear("patch_embed.proj", pe.proj,
                              patches.reshape(B, -1, C * pch * pch), s_in)
        if pe.norm is not None:
            acc, s = self.requant("patch_embed.q_proj", pe.q_proj, acc, bs)
            acc, bs = self.layernorm("patch_embed.norm", pe.norm, acc)
        return self.requant("patch_embed.q_out", pe.q_out, acc, bs)

    def vit(self, images):
        m = self.model
        x, s = self.embed(images)
        cls = _round(_np(m.cls_token).astype(F32) / s.astype(F32))
        x = np.concatenate([np.broadcast_to(cls, (x.shape[0], 1, x.shape[2])), x], axis=1)
        s_pos = self.act_scale(m.q_pos)
        pos = _quantize(_np(m.pos_embed), s_pos, m.q_pos.activation_bit)
        x, s = self.requant("q_embed", m.q_embed, x, s, pos, s_pos)
        for i, blk in enumerate(m.blocks):
            x, s = self.block(f"blocks.{i}.", blk, x, s)
        x, os_ = self.layernorm("norm", m.norm, x)
        x = x[:, 0] if m.global_pool == "token" else R.round_div(x[:, 1:].sum(axis=1),
                                                                  x.shape[1] - 1)
        x, s = self.requant("q_head", m.q_head, x, os_)
        return self.head("head.fc", m.head, x, s)

    def swin(self, images):
        m = self.model
        x, s = self.embed(images)
        if m.absolute_pos_embed is not None:
            s_pos = self.act_scale(m.q_pos)
            pos = _quantize(_np(m.absolute_pos_embed), s_pos, m.q_pos.activation_bit)
            x, s = self.requant("q_embed", m.q_embed, x, s, pos, s_pos)
        else:
            x, s = self.requant("q_embed", m.q_embed, x, s)
        for i, stage in enumerate(m.layers):
            if stage.downsample is not None:
                ds = stage.downsample
                Hh, W = ds.input_resolution
                B, L, C = x.shape
                g = x.reshape(B, Hh, W, C)
                g = np.concatenate([g[:, 0::2, 0::2], g[:, 1::2, 0::2], g[:, 0::2, 1::2],
                                    g[:, 1::2, 1::2]], -1).reshape(B, -1, 4 * C)
                p = f"layers.{i}.downsample."
                y, os_ = self.layernorm(p + "norm", ds.norm, g)
                y, s = self.requant(p + "q_norm", ds.q_norm, y, os_)
                acc, bs = self.linear(p + "reduction", ds.reduction, y, s)
                x, s = self.requant(p + "q_out", ds.q_out, acc, bs)
            for j, blk in enumerate(stage.blocks):
                x, s = self.block(f"layers.{i}.blocks.{j}.", blk, x, s)
        x, os_ = self.layernorm("norm", m.norm, x)
        x, s = self.requant("q_norm", m.q_norm, x, os_)
        x, s = self.requant("q_pool", m.q_pool, R.round_div(x.sum(axis=1), x.shape[1]), s)
        return self.head("head.fc", m.head.fc, x, s)

    def head(self, name, fc, x, s):
        acc, bs = self.linear(name, fc, x, s)
        return np.asarray(acc, dtype=np.int64).astype(F32) * bs


def reference_forward(model, images: torch.Tensor) -> tuple[np.ndarray, dict[str, Any]]:
    """(float32 logits, {deployed module name: integer array}) of ``model``'s integer
    deployment on ``images``, computed by `qvit.reference`'s arithmetic from the QAT
    model's parameters and ranges (Python integers: slow, for checks)."""
    if not isinstance(model, (QuantViT, QuantSwin)):
        raise ValueError(f"reference_forward takes a QuantViT or QuantSwin, got "
                         f"{type(model).__name__}")
    walk = _Walk(model)
    x = _np(images).astype(F32)
    logits = walk.vit(x) if isinstance(model, QuantViT) else walk.swin(x)
    return logits, walk.out
