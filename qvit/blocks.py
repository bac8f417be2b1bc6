"""Transformer blocks shared by I-ViT (DeiT) and Swin: one attention (with an optional
relative position bias and window mask), one MLP, one block (with optional shifted
windows), patch embedding and patch merging. Submodule names follow timm's, so float timm
weights load by name; quantizers are named by the tensor they quantize."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import DropPath as TimmDropPath
from timm.layers import trunc_normal_
from torch import Tensor, nn

from .modules import (
    IntGELU,
    IntLayerNorm,
    IntSoftmax,
    QuantAct,
    QuantConv2d,
    QuantLinear,
    QuantMatMul,
    QuantModule,
    caches_enabled,
    key_matches,
    source_key,
)
from .ops.windows import (
    gather_tokens,
    reverse_roll,
    roll_partition,
    shifted_window_mask,
    window_order,
)

__all__ = ["Attention", "Mlp", "TransformerBlock", "PatchEmbed", "PatchMerging",
           "IViTDropPath", "DROP_PATH_IMPLS", "drop_path_layer", "int_layer_norm"]

DROP_PATH_IMPLS = ("ivit", "timm")


class IViTDropPath(nn.Module):
    """Stochastic depth with I-ViT's arithmetic and sampling, so that a training run with
    drop path reproduces I-ViT's: one uniform draw per sample (torch.rand in x's dtype),
    kept where floor(keep + u) is 1; kept samples are x / keep (a division, where timm
    multiplies by a mask holding 1 / keep, and draws with bernoulli_)."""

    def __init__(self, drop_prob: float = 0.0):
        super().__init__()
        self.drop_prob = drop_prob
        self.drops = drop_prob > 0
        # the keep probability as a tensor (eager casts the float to x's dtype all the
        # same): a compiled block takes it as an input, so blocks of every rate share one
        # graph (`qvit.compile`), and inductor cannot turn x / keep into x * (1 / keep)
        self.register_buffer("keep", torch.tensor(1 - drop_prob, dtype=torch.float32),
                             persistent=False)

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}"

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or not self.drops:  # (bools: a compiled block guards on these)
            return x
        keep = self.keep.to(x.dtype)
        u = torch.rand((x.shape[0],) + (1,) * (x.dim() - 1), dtype=x.dtype, device=x.device)
        mask = u.add_(keep).floor_()  # 1 with probability keep, else 0
        return x.div(keep) * mask


def drop_path_layer(drop_prob: float, impl: str = "ivit") -> nn.Module:
    """The stochastic-depth module of a block: I-ViT's (default) or timm's; Identity at 0.
    A model option, not a flag: every preset samples and scales alike."""
    if impl not in DROP_PATH_IMPLS:
        raise ValueError(f"drop_path_impl must be one of {DROP_PATH_IMPLS}, got {impl!r}")
    if drop_prob <= 0:
        return nn.Identity()
    return IViTDropPath(drop_prob) if impl == "ivit" else TimmDropPath(drop_prob)


def int_layer_norm(dim: int) -> IntLayerNorm:
    return IntLayerNorm(dim, eps=1e-6)


class Attention(QuantModule):
    """Multi-head self-attention on quantized tokens.

    With ``window_size`` it is Swin's window attention: a learned relative position bias,
    quantized and added as a residual through the dyadic requantizer, and an optional
    shifted-window mask. Seed change 13 caches the gathered bias in eval.
    """

    def __init__(self, dim: int, num_heads: int, *, qkv_bias: bool = True,
                 softmax_bits: int = 8, window_size: int | None = None,
                 attn_drop: float = 0.0, proj_drop: float = 0.0, linear=QuantLinear):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} must be divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = linear(dim, dim * 3, bias=qkv_bias)
        self.q_qkv = QuantAct(8)
        self.matmul_qk = QuantMatMul()
        self.q_scores = QuantAct(8)
        self.window_size = window_size
        if window_size is not None:
            self.relative_position_bias_table = nn.Parameter(
                torch.zeros((2 * window_size - 1) ** 2, num_heads))
            trunc_normal_(self.relative_position_bias_table, std=0.02)
            self.register_buffer("relative_position_index",
                                 _relative_position_index(window_size), persistent=False)
            self.q_bias_table = QuantAct(8)
            self.q_scores_biased = QuantAct(8)
            self._bias_cache: tuple | None = None
        self.softmax = IntSoftmax(softmax_bits)
        self.attn_drop = nn.Dropout(attn_drop)
        self.matmul_av = QuantMatMul()
        self.q_context = QuantAct(8)
        self.proj = linear(dim, dim)
        self.q_out = QuantAct(16)
        self.proj_drop = nn.Dropout(proj_drop)
        self.flags = self.flags

    PATH_FIELDS = ("rel_pos_bias_eval",)

    def _bind(self, p) -> None:
        self._bias_cached = p.rel_pos_bias_eval == "cached"

    def invalidate_cache(self) -> None:
        self._bias_cache = None

    def _bias_sources(self) -> tuple[Tensor, ...]:
        """What the quantized bias is derived from: the table, and the range and scale of
        its quantizer (an EMA update or a load moves them without touching the table)."""
        q = self.q_bias_table
        return (self.relative_position_bias_table, q.min_val, q.max_val, q.act_scaling_factor)

    def relative_position_bias(self) -> tuple[Tensor, Tensor]:
        """The quantized bias (heads, N, N) and its scale; cached in eval (flag 13), keyed
        on its sources (`_bias_sources`)."""
        table = self.relative_position_bias_table
        cacheable = (self._bias_cached and not self.training and caches_enabled()
                     and not (torch.is_grad_enabled() and table.requires_grad))
        if cacheable and self._bias_cache is not None and key_matches(self._bias_cache[0],
                                                                      *self._bias_sources()):
            return self._bias_cache[1], self._bias_cache[2]
        table_q, scale = self.q_bias_table(table)
        n = self.window_size**2
        bias = table_q[self.relative_position_index.view(-1)].view(n, n, -1)
        bias = bias.permute(2, 0, 1).contiguous()
        # keyed after the quantizer ran: it may have refreshed its scale (flag 11)
        self._assign(_bias_cache=(source_key(*self._bias_sources()), bias, scale)
                     if cacheable else None)
        return bias, scale

    def forward(self, x: Tensor, scale: Tensor, mask: Tensor | None = None
                ) -> tuple[Tensor, Tensor]:
        B, N, C = x.shape
        x, scale = self.qkv(x, scale)
        x, qkv_scale = self.q_qkv(x, scale)
        q, k, v = x.reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        attn, scale = self.matmul_qk(q, qkv_scale, k.transpose(-2, -1), qkv_scale)
        attn, scale = self.q_scores(attn * self.scale, scale * self.scale)
        if self.window_size is not None:
            bias, bias_scale = self.relative_position_bias()
            attn, scale = self.q_scores_biased(attn, scale, bias.unsqueeze(0), bias_scale)
        if mask is not None:
            nw = mask.shape[0]
            attn = attn.view(B // nw, nw, self.num_heads, N, N) + mask.unsqueeze(1).unsqueeze(0)
            attn = attn.view(-1, self.num_heads, N, N)
        attn, scale = self.softmax(attn, scale)
        attn = self.attn_drop(attn)
        x, scale = self.matmul_av(attn, scale, v, qkv_scale)
        x, scale = self.q_context(x.transpose(1, 2).reshape(B, N, C), scale)
        x, scale = self.proj(x, scale)
        x, scale = self.q_out(x, scale)
        return self.proj_drop(x), scale


def _relative_position_index(window_size: int) -> Tensor:
    coords = torch.stack(torch.meshgrid(torch.arange(window_size), torch.arange(window_size),
                                        indexing="ij")).flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (window_size - 1)
    return rel[:, :, 0] * (2 * window_size - 1) + rel[:, :, 1]


class Mlp(nn.Module):
    """fc1 -> ShiftGELU -> fc2 with 8-bit activations and a 16-bit output."""

    def __init__(self, dim: int, hidden: int, drop: float = 0.0, linear=QuantLinear):
        super().__init__()
        self.fc1 = linear(dim, hidden)
        self.q_fc1 = QuantAct(8)
        self.act = IntGELU(8)
        self.q_act = QuantAct(8)
        self.fc2 = linear(hidden, dim)
        self.q_out = QuantAct(16)
        self.drop = nn.Dropout(drop)

    def forward(self, x: Tensor, scale: Tensor) -> tuple[Tensor, Tensor]:
        x, scale = self.q_fc1(*self.fc1(x, scale))
        x, scale = self.q_act(*self.act(x, scale))
        x = self.drop(x)
        x, scale = self.q_out(*self.fc2(x, scale))
        return self.drop(x), scale


class TransformerBlock(nn.Module):
    """Pre-norm residual block: LN -> attention -> +x -> LN -> MLP -> +x, with the residual
    sums requantized to 16 bits. With ``input_resolution``/``window_size`` the attention runs
    in (shifted) windows, as in Swin."""

    def __init__(self, dim: int, num_heads: int, *, mlp_ratio: float = 4.0,
                 qkv_bias: bool = True, softmax_bits: int = 8, drop: float = 0.0,
                 attn_drop: float = 0.0, drop_path: float = 0.0, linear=QuantLinear,
                 input_resolution: tuple[int, int] | None = None, window_size: int | None = None,
                 shift_size: int = 0, drop_path_impl: str = "ivit"):
        super().__init__()
        self.input_resolution = input_resolution
        if window_size is not None:
            if input_resolution is None:
                raise ValueError("window attention needs input_resolution=(H, W)")
            if min(input_resolution) <= window_size:  # one window covers it: no shift
                window_size, shift_size = min(input_resolution), 0
            if not 0 <= shift_size < window_size:
                raise ValueError(f"shift_size must be in [0, {window_size}), got {shift_size}")
            if any(r % window_size for r in input_resolution):
                raise ValueError(f"resolution {input_resolution} is not a multiple of the "
                                 f"window size {window_size}; choose img_size accordingly")
        self.window_size, self.shift_size = window_size, shift_size
        self.norm1 = int_layer_norm(dim)
        self.q_norm1 = QuantAct(8)
        self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias, softmax_bits=softmax_bits,
                              window_size=window_size, attn_drop=attn_drop, proj_drop=drop,
                              linear=linear)
        self.drop_path = drop_path_layer(drop_path, drop_path_impl)
        self.q_res1 = QuantAct(16)
        self.norm2 = int_layer_norm(dim)
        self.q_norm2 = QuantAct(8)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=drop, linear=linear)
        self.q_res2 = QuantAct(16)
        mask = (shifted_window_mask(*input_resolution, window_size, shift_size)
                if window_size is not None and shift_size > 0 else None)
        self.register_buffer("attn_mask", mask, persistent=False)
        # set by share_window_code: the windows as one token gather each way, and the mask
        for name in ("window_order", "window_inverse", "window_mask"):
            self.register_buffer(name, None, persistent=False)

    def share_window_code(self) -> None:
        """Move the tokens into windows and back by one precomputed gather each way
        (`qvit.ops.windows.window_order`) instead of roll and partition, with a zero mask
        where the block does not shift: the same values, and the shifted and unshifted
        blocks of a stage then run one code, so regional compilation compiles one graph
        for both (`qvit.compile.compile_model` calls it). No-op without windows or with a
        single window (nothing to shift, no other block structure)."""
        if self.window_size is None:
            return
        (H, W), ws = self.input_resolution, self.window_size
        windows = (H // ws) * (W // ws)
        if windows == 1:
            return
        like = next(self.parameters())
        order = window_order(H, W, ws, self.shift_size).to(like.device)
        mask = self.attn_mask
        if mask is None:
            mask = like.new_zeros(windows, ws * ws, ws * ws)
        self.window_order, self.window_inverse = order, torch.argsort(order)
        self.window_mask = mask

    def _attend(self, x: Tensor, scale: Tensor) -> tuple[Tensor, Tensor]:
        if self.window_size is None:
            return self.attn(x, scale)
        H, W = self.input_resolution
        B, L, C = x.shape
        if L != H * W:
            raise ValueError(f"expected {H}x{W}={H * W} tokens, got {L}")
        ws, shift = self.window_size, self.shift_size
        if self.window_order is not None:  # one gather each way (share_window_code)
            windows = gather_tokens(x, self.window_order, self.window_inverse)
            windows, scale = self.attn(windows.reshape(-1, ws * ws, C), scale,
                                       mask=self.window_mask)
            return gather_tokens(windows.reshape(B, L, C), self.window_inverse,
                                 self.window_order), scale
        windows, scale = self.attn(roll_partition(x, H, W, ws, shift), scale,
                                   mask=self.attn_mask)
        return reverse_roll(windows, H, W, ws, shift), scale

    def forward(self, x_in: Tensor, scale_in: Tensor) -> tuple[Tensor, Tensor]:
        x, scale = self.q_norm1(*self.norm1(x_in, scale_in))
        x, scale = self._attend(x, scale)
        x_mid, scale_mid = self.q_res1(self.drop_path(x), scale, x_in, scale_in)
        x, scale = self.q_norm2(*self.norm2(x_mid, scale_mid))
        x, scale = self.mlp(x, scale)
        return self.q_res2(self.drop_path(x), scale, x_mid, scale_mid)


class PatchEmbed(nn.Module):
    """Non-overlapping patches by a quantized conv; optional LayerNorm (Swin); 16-bit out."""

    def __init__(self, img_size: int, patch_size: int, in_chans: int, embed_dim: int,
                 norm: bool = False):
        super().__init__()
        if img_size % patch_size:
            raise ValueError(f"img_size {img_size} must be a multiple of patch_size {patch_size}")
        self.img_size, self.patch_size = img_size, patch_size
        self.grid_size = (img_size // patch_size,) * 2
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.proj = QuantConv2d(in_chans, embed_dim, patch_size, stride=patch_size)
        if norm:
            self.q_proj = QuantAct(8)
            self.norm = int_layer_norm(embed_dim)
        else:
            self.norm = None
        self.q_out = QuantAct(16)

    def forward(self, x: Tensor, scale: Tensor) -> tuple[Tensor, Tensor]:
        if x.shape[-2:] != (self.img_size, self.img_size):
            raise ValueError(f"input images are {tuple(x.shape[-2:])}, the model was built for "
                             f"{self.img_size}x{self.img_size}; pass img_size= to create_model")
        x, scale = self.proj(x, scale)
        x = x.flatten(2).transpose(1, 2)
        if self.norm is not None:
            x, scale = self.norm(*self.q_proj(x, scale))
        return self.q_out(x, scale)


class PatchMerging(nn.Module):
    """Swin downsampling: concatenate 2x2 neighbours, LayerNorm, linear 4C -> 2C."""

    def __init__(self, dim: int, input_resolution: tuple[int, int], linear=QuantLinear):
        super().__init__()
        H, W = input_resolution
        if H % 2 or W % 2:
            raise ValueError(f"patch merging needs an even resolution, got {H}x{W}")
        self.input_resolution = input_resolution
        self.norm = int_layer_norm(4 * dim)
        self.q_norm = QuantAct(8)
        self.reduction = linear(4 * dim, 2 * dim, bias=False)
        self.q_out = QuantAct(8)

    def forward(self, x: Tensor, scale: Tensor) -> tuple[Tensor, Tensor]:
        H, W = self.input_resolution
        B, L, C = x.shape
        x = x.view(B, H, W, C)
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], -1)
        x, scale = self.q_norm(*self.norm(x.view(B, -1, 4 * C), scale))
        return self.q_out(*self.reduction(x, scale))


def global_avg_tokens(x: Tensor) -> Tensor:
    """(B, L, C) -> (B, C, 1), the pooling of I-ViT's Swin head."""
    return F.adaptive_avg_pool1d(x.transpose(1, 2), 1)
