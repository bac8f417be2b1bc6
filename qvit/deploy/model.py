"""The deployed models: DeiT (`DeployedViT`) and Swin (`DeployedSwin`) on integer tensors.

Built from a plain config (`DeployedModel.config`, what `from_config` takes), so a
deployed model round-trips through its state dict alone; `qvit.deploy.deploy` fills one
from a trained QAT model. Submodule names are the QAT model's: ``blocks.0.attn.q_qkv`` is
the requantizer of QAT's ``blocks.0.attn.q_qkv``.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import Tensor, nn

from ..ops.windows import reverse_roll, roll_partition
from . import arith
from .intmm import check_int_gemm, resolve_int_gemm
from .layers import (
    InputQuant,
    IntGELU,
    IntLayerNorm,
    IntLinear,
    IntMatMul,
    IntPatchConv,
    IntSoftmax,
    Requant,
    check_requant,
)

__all__ = ["DeployedModel", "DeployedViT", "DeployedSwin", "from_config", "COMPILE_OPTIONS",
           "compile_deployed"]


class Attention(nn.Module):
    """Integer (window) attention: qkv, q k^T, [+ relative position bias, + shift mask],
    Shiftmax, P v, proj. ``tokens``: N (the relative position bias's shape)."""

    def __init__(self, dim: int, num_heads: int, tokens: int, qkv_bias: bool,
                 softmax_bits: int, window: bool):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = IntLinear(dim, 3 * dim, qkv_bias)
        self.q_qkv = Requant(8, 3 * dim)
        self.matmul_qk = IntMatMul(2**7, 2**7)  # int8 q, k
        self.q_scores = Requant(8)
        self.window = window
        if window:
            self.q_scores_biased = Requant(8)
            self.register_buffer("bias_rq", torch.zeros(num_heads, tokens, tokens,
                                                        dtype=torch.int64))
        self.softmax = IntSoftmax(softmax_bits)
        self.matmul_av = IntMatMul(2 ** (softmax_bits - 1), 2**7)  # softmax, int8 v
        self.q_context = Requant(8)
        self.proj = IntLinear(dim, dim)
        self.q_out = Requant(16, dim)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        B, N, C = x.shape
        qkv = self.q_qkv(self.qkv(x)).view(B, N, 3, self.num_heads, C // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        s = self.q_scores(self.matmul_qk(q, k.transpose(-2, -1)))
        if self.window:
            s = self.q_scores_biased(s, offset=self.bias_rq)
        if mask is not None:
            nw = mask.shape[0]
            s = (s.view(B // nw, nw, self.num_heads, N, N) + mask.unsqueeze(1)).view(
                B, self.num_heads, N, N)
        p = self.softmax(s)
        ctx = self.q_context(self.matmul_av(p, v).transpose(1, 2).reshape(B, N, C))
        return self.q_out(self.proj(ctx))


class Mlp(nn.Module):
    """fc1 -> int8 -> ShiftGELU -> int8 -> fc2 -> 16 bit; ShiftGELU and its requantizer by
    one table lookup (`arith.gelu_by_table`) where `build_tables` made the table."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = IntLinear(dim, hidden)
        self.q_fc1 = Requant(8, hidden)
        self.act = IntGELU(8)
        self.q_act = Requant(8)
        self.fc2 = IntLinear(hidden, dim)
        self.q_out = Requant(16, dim)
        self.register_buffer("act_lut", None, persistent=False)  # from act's x0, q_act's m, e

    def build_tables(self, on: bool) -> None:
        self.act_lut = arith.gelu_table(
            self.act.x0, self.act.exp_bits, self.act.output_bit, self.q_act.m, self.q_act.e,
            self.q_act.half_m1, self.q_act.bits) if on else None

    def forward(self, x: Tensor) -> Tensor:
        h = self.q_fc1(self.fc1(x))
        if self.act_lut is not None:
            return self.q_out(self.fc2(arith.gelu_by_table(h, self.act_lut)))
        return self.q_out(self.fc2(self.q_act(self.act(h))))


def window_geometry(resolution: tuple[int, int] | None, window_size: int | None,
                    shift_size: int) -> tuple[int | None, int]:
    """The QAT block's rule: one window covering the grid takes its size and no shift."""
    if window_size is not None and resolution is not None and min(resolution) <= window_size:
        return min(resolution), 0
    return window_size, shift_size


class Block(nn.Module):
    """LN -> attention -> +x (16 bit) -> LN -> MLP -> +x (16 bit), (shifted) windows for
    Swin. The shift mask is integer: round(mask / scale) of the softmax input's scale."""

    def __init__(self, dim: int, num_heads: int, hidden: int, tokens: int, qkv_bias: bool,
                 softmax_bits: int, resolution: tuple[int, int] | None = None,
                 window_size: int | None = None, shift_size: int = 0):
        super().__init__()
        self.resolution = resolution
        self.window_size, self.shift_size = window_geometry(resolution, window_size,
                                                            shift_size)
        n = tokens if self.window_size is None else self.window_size**2
        self.norm1 = IntLayerNorm(dim)
        self.q_norm1 = Requant(8, dim)
        self.attn = Attention(dim, num_heads, n, qkv_bias, softmax_bits,
                              self.window_size is not None)
        self.q_res1 = Requant(16, 1, 1)
        self.norm2 = IntLayerNorm(dim)
        self.q_norm2 = Requant(8, dim)
        self.mlp = Mlp(dim, hidden)
        self.q_res2 = Requant(16, 1, 1)
        mask = None
        if self.window_size is not None and self.shift_size > 0:
            nw = (resolution[0] // self.window_size) * (resolution[1] // self.window_size)
            mask = torch.zeros(nw, n, n, dtype=torch.int32)
        self.register_buffer("attn_mask", mask)

    def _attend(self, x: Tensor) -> Tensor:
        if self.window_size is None or self.resolution is None:
            return self.attn(x)
        H, W = self.resolution
        ws, shift = self.window_size, self.shift_size
        w = self.attn(roll_partition(x, H, W, ws, shift), self.attn_mask)
        return reverse_roll(w, H, W, ws, shift)

    def forward(self, x: Tensor) -> Tensor:
        h = self.q_res1(self._attend(self.q_norm1(self.norm1(x))), x)
        return self.q_res2(self.mlp(self.q_norm2(self.norm2(h))), h)


class PatchEmbed(nn.Module):
    def __init__(self, in_chans: int, embed_dim: int, patch_size: int, norm: bool):
        super().__init__()
        self.proj = IntPatchConv(in_chans, embed_dim, patch_size)
        self.has_norm = norm
        if norm:
            self.q_proj = Requant(8, embed_dim)
            self.norm = IntLayerNorm(embed_dim)
        self.q_out = Requant(16, embed_dim)

    def forward(self, x: Tensor) -> Tensor:
        x = self.proj(x)
        if self.has_norm:
            x = self.norm(self.q_proj(x))
        return self.q_out(x)


class PatchMerging(nn.Module):
    def __init__(self, dim: int, resolution: tuple[int, int]):
        super().__init__()
        self.resolution = resolution
        self.norm = IntLayerNorm(4 * dim)
        self.q_norm = Requant(8, 4 * dim)
        self.reduction = IntLinear(4 * dim, 2 * dim, bias=False)
        self.q_out = Requant(8, 2 * dim)

    def forward(self, x: Tensor) -> Tensor:
        H, W = self.resolution
        B, L, C = x.shape
        x = x.view(B, H, W, C)
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2],
                       x[:, 1::2, 1::2]], -1).view(B, -1, 4 * C)
        return self.q_out(self.reduction(self.q_norm(self.norm(x))))


class Head(nn.Module):
    """The classifier: int8 features -> int64 accumulator -> float32 logits (acc x
    scale, the one float multiply after the input)."""

    def __init__(self, dim: int, num_classes: int):
        super().__init__()
        self.fc = IntLinear(dim, num_classes)
        self.register_buffer("logit_scale", torch.ones(num_classes))

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(x).to(torch.float32) * self.logit_scale


class DeployedModel(nn.Module):
    """What both families share: the config they are built from, and three choices that
    change its speed, never its integers: ``int_gemm`` (the int8 linear layers' GEMM, one
    of `intmm.INT_GEMMS`), ``requant`` (the requantizers' arithmetic, one of
    `layers.REQUANT_ARITHS`) and ``lookup_tables`` (Shiftmax's exp and ShiftGELU with its
    requantizer by tables derived from the layers' constants, rebuilt whenever a state
    dict is loaded)."""

    config: dict[str, Any]
    family: str

    def _options(self, int_gemm: str, lookup_tables: bool, requant: str) -> None:
        self.config.update(int_gemm=int_gemm, lookup_tables=bool(lookup_tables))
        self.set_int_gemm(int_gemm)
        self.set_requant(requant)
        self.register_load_state_dict_post_hook(lambda module, keys: module.refresh_tables())
        self.refresh_tables()

    def extra_repr(self) -> str:
        return (f"family={self.family}, int_gemm={self.config['int_gemm']}, "
                f"requant={self.config['requant']}, "
                f"lookup_tables={self.config['lookup_tables']}")

    def set_int_gemm(self, choice: str) -> None:
        """The int8 linear layers' GEMM: "auto", "int8" or "float32" (`intmm.INT_GEMMS`)."""
        check_int_gemm(choice)
        self.config["int_gemm"] = choice
        for m in self.modules():
            if isinstance(m, IntLinear):
                m.gemm = choice

    def set_requant(self, choice: str) -> None:
        """The requantizers' arithmetic: "auto", "int64" or "float64"
        (`layers.REQUANT_ARITHS`)."""
        check_requant(choice)
        self.config["requant"] = choice
        for m in self.modules():  # the requantizers and the layers that feed them
            if isinstance(m, (Requant, IntLinear, IntMatMul, IntLayerNorm)):
                m.requant = choice

    def int_gemm_used(self) -> str:
        """What ``int_gemm`` runs on the model's device: "int8" or "float32"."""
        return resolve_int_gemm(self.config["int_gemm"], self.head.logit_scale.device)

    def refresh_tables(self) -> None:
        """(Re)build the lookup tables from the layers' constants (or drop them where
        ``lookup_tables`` is off)."""
        self._build_tables(self.config["lookup_tables"])

    def _build_tables(self, on: bool) -> None:
        with torch.no_grad():
            for m in self.modules():
                if isinstance(m, (IntSoftmax, Mlp)):
                    m.build_tables(on)

    @contextlib.contextmanager
    def layer_by_layer(self):
        """Inside, every integer layer runs as its own module (no tables), so hooks on
        ShiftGELU and its requantizer see their outputs; the same integers."""
        self._build_tables(False)
        try:
            yield self
        finally:
            self.refresh_tables()


class DeployedViT(DeployedModel):
    """I-ViT DeiT on integers. ``global_pool``: "token" (class token) or "avg" (the patch
    tokens' mean, rounded half to even)."""

    family = "vit"

    def __init__(self, *, img_size: int, patch_size: int, in_chans: int, num_classes: int,
                 embed_dim: int, depth: int, num_heads: int, mlp_hidden: int,
                 qkv_bias: bool = True, softmax_bits: int = 16, global_pool: str = "token",
                 int_gemm: str = "auto", lookup_tables: bool = True, requant: str = "auto"):
        super().__init__()
        self.config = dict(family="vit", img_size=img_size, patch_size=patch_size,
                           in_chans=in_chans, num_classes=num_classes, embed_dim=embed_dim,
                           depth=depth, num_heads=num_heads, mlp_hidden=mlp_hidden,
                           qkv_bias=qkv_bias, softmax_bits=softmax_bits,
                           global_pool=global_pool)
        if global_pool not in ("token", "avg"):
            raise ValueError(f"deploy supports global_pool 'token' or 'avg', got "
                             f"{global_pool!r}")
        self.global_pool = global_pool
        tokens = (img_size // patch_size) ** 2 + 1
        self.q_input = InputQuant(8)
        self.patch_embed = PatchEmbed(in_chans, embed_dim, patch_size, norm=False)
        self.q_embed = Requant(16, 1)
        # the class token (integer at the patch tokens' scale, unclamped, as QAT's
        # q_embed rounds it) and the position embedding requantized to q_embed's scale
        self.register_buffer("cls_int", torch.zeros(1, 1, embed_dim, dtype=torch.int32))
        self.register_buffer("pos_rq", torch.zeros(1, tokens, embed_dim, dtype=torch.int64))
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, mlp_hidden, tokens, qkv_bias, softmax_bits)
            for _ in range(depth))
        self.norm = IntLayerNorm(embed_dim)
        self.q_head = Requant(8, embed_dim)
        self.head = Head(embed_dim, num_classes)
        self._options(int_gemm, lookup_tables, requant)

    def forward_features(self, x: Tensor) -> Tensor:
        """Integer tokens after the final I-LayerNorm (int64, per-channel scale)."""
        x = self.patch_embed(self.q_input(x))
        x = torch.cat((self.cls_int.expand(x.shape[0], -1, -1), x.to(torch.int32)), dim=1)
        x = self.q_embed(x, offset=self.pos_rq)
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)

    def forward(self, x: Tensor) -> Tensor:
        x = self.forward_features(x)
        if self.global_pool == "token":
            x = x[:, 0]
        else:
            x = arith.round_div(x[:, 1:].sum(dim=1), x.shape[1] - 1)
        return self.head(self.q_head(x))


class DeployedSwin(DeployedModel):
    """Swin on integers: shifted windows with their integer mask, the quantized relative
    position bias, patch merging, average pooling (the mean rounded half to even)."""

    family = "swin"

    def __init__(self, *, img_size: int, patch_size: int, in_chans: int, num_classes: int,
                 embed_dim: int, depths: list[int], num_heads: list[int], window_size: int,
                 mlp_hidden: list[int], qkv_bias: bool = True, ape: bool = False,
                 int_gemm: str = "auto", lookup_tables: bool = True, requant: str = "auto"):
        super().__init__()
        self.config = dict(family="swin", img_size=img_size, patch_size=patch_size,
                           in_chans=in_chans, num_classes=num_classes, embed_dim=embed_dim,
                           depths=list(depths), num_heads=list(num_heads),
                           window_size=window_size, mlp_hidden=list(mlp_hidden),
                           qkv_bias=qkv_bias, ape=ape)
        grid = img_size // patch_size
        self.q_input = InputQuant(8)
        self.patch_embed = PatchEmbed(in_chans, embed_dim, patch_size, norm=True)
        self.ape = ape
        self.q_embed = Requant(16, 1)
        self.register_buffer("pos_rq", torch.zeros(1, grid * grid, embed_dim,
                                                   dtype=torch.int64) if ape else None)
        stages, dim = [], embed_dim
        for i, (depth, heads) in enumerate(zip(depths, num_heads, strict=True)):
            out_dim = embed_dim * 2**i
            res = (grid // 2 ** max(i - 1, 0),) * 2
            stage = nn.Module()
            stage.downsample = PatchMerging(dim, res) if i > 0 else None
            if i > 0:
                res = (res[0] // 2, res[1] // 2)
            stage.blocks = nn.ModuleList(
                Block(out_dim, heads, mlp_hidden[i], res[0] * res[1], qkv_bias, 8,
                      resolution=res, window_size=window_size,
                      shift_size=0 if j % 2 == 0 else window_size // 2)
                for j in range(depth))
            stages.append(stage)
            dim = out_dim
        self.layers = nn.ModuleList(stages)
        self.norm = IntLayerNorm(dim)
        self.q_norm = Requant(8, dim)
        self.q_pool = Requant(8)
        self.head = Head(dim, num_classes)
        self._options(int_gemm, lookup_tables, requant)

    def forward_features(self, x: Tensor) -> Tensor:
        x = self.patch_embed(self.q_input(x))
        x = self.q_embed(x, offset=self.pos_rq)
        for stage in self.layers:
            if stage.downsample is not None:
                x = stage.downsample(x)
            for blk in stage.blocks:
                x = blk(x)
        return self.norm(x)

    def forward(self, x: Tensor) -> Tensor:
        x = self.q_norm(self.forward_features(x))
        x = self.q_pool(arith.round_div(x.to(torch.int64).sum(dim=1), x.shape[1]))
        return self.head(x)


def from_config(config: dict[str, Any]) -> DeployedModel:
    """An empty deployed model of ``config`` (a `DeployedModel.config`), to load a state
    dict into."""
    cfg = dict(config)
    family = cfg.pop("family", None)
    if family == "vit":
        return DeployedViT(**cfg)
    if family == "swin":
        return DeployedSwin(**cfg)
    raise ValueError(f"config family must be 'vit' or 'swin', got {family!r}")


# On the CPU inductor inlines a run of elementwise ops into every consumer up to 50 ops
# (``realize_cpu_opcount_threshold``): the deployed model's per-row chains (I-LayerNorm's
# ten-step Newton square root, Shiftmax's normalizer) ran once per element of their row.
# Stored past 8 ops (4: slower, more stores), one run each on a 2-core AVX-512 EPYC: the
# forward of ivit_micro (batch 64) took 26.6 ms against its float twin's 15.2 (default: 38.0
# against 18.8), of DeiT-tiny (batch 8) 191 ms against 149 (default: 170 against 137); the
# compile 28 s instead of 48, 60 s instead of 125
COMPILE_OPTIONS = {"realize_cpu_opcount_threshold": 8}  # (applied where this inductor has it)


def compile_deployed(model: nn.Module, **kwargs) -> nn.Module:
    """``torch.compile(model, **kwargs)`` with `COMPILE_OPTIONS` under the caller's
    ``options`` (the same integers as the eager model: tested)."""
    from torch._inductor import config as inductor_config

    from ..compile import known_options

    options = {**known_options(inductor_config, COMPILE_OPTIONS),
               **(kwargs.pop("options", None) or {})}
    return torch.compile(model, options=options, **kwargs)
