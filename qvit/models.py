"""The two model families, built from the shared blocks: I-ViT (DeiT) and Swin."""

from __future__ import annotations

import torch
from timm.layers import trunc_normal_
from torch import Tensor, nn

from .blocks import (
    PatchEmbed,
    PatchMerging,
    TransformerBlock,
    _norm,
    drop_path_layer,
    global_avg_tokens,
)
from .flags import Flags
from .modules import QuantAct, QuantLinear, QuantModule, TerLinear

__all__ = ["QuantModel", "QuantViT", "QuantSwin"]


class QuantModel(nn.Module):
    """What every qvit model shares: flags, caches, freezing, weight-decay exclusions."""

    default_img_size: int

    def __init__(self, flags: Flags | None):
        super().__init__()
        self._flags = Flags() if flags is None else flags

    @property
    def flags(self) -> Flags:
        return self._flags

    def set_flags(self, flags: Flags) -> QuantModel:
        """Switch this instance to other module paths (weights and ranges are untouched)."""
        if not isinstance(flags, Flags):
            raise ValueError(f"set_flags takes a qvit.Flags, got {type(flags).__name__}; "
                             f"use qvit.Flags.parse({flags!r})")
        self._flags = flags
        for m in self.modules():
            if isinstance(m, QuantModule):
                m.flags = flags
                m.invalidate_cache()
        return self

    def fix(self) -> QuantModel:
        """Freeze every activation range (QuantAct) for evaluation or export."""
        for m in self.modules():
            if isinstance(m, QuantModule):
                m.fix()
        return self

    def unfix(self) -> QuantModel:
        for m in self.modules():
            if isinstance(m, QuantModule):
                m.unfix()
        return self

    def _init_weights(self, m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.zeros_(m.bias)
            nn.init.ones_(m.weight)

    def _finish_init(self) -> None:
        self.apply(self._init_weights)
        self.set_flags(self._flags)


class QuantViT(QuantModel):
    """I-ViT: DeiT with integer GELU, softmax and LayerNorm and dyadic requantization."""

    def __init__(self, *, img_size: int = 224, patch_size: int = 16, in_chans: int = 3,
                 num_classes: int = 1000, embed_dim: int = 768, depth: int = 12,
                 num_heads: int = 12, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 softmax_bits: int = 16, drop_rate: float = 0.0, attn_drop_rate: float = 0.0,
                 drop_path_rate: float = 0.0, ternary: bool = False, flags: Flags | None = None,
                 drop_path_impl: str = "ivit"):
        super().__init__(flags)
        drop_path_layer(0.0, drop_path_impl)  # validates the name
        self.default_img_size = img_size
        self.num_classes = num_classes
        linear = TerLinear if ternary else QuantLinear
        self.q_input = QuantAct(8)
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.patch_embed.num_patches + 1, embed_dim))
        self.q_pos = QuantAct(16)
        self.q_embed = QuantAct(16)
        self.pos_drop = nn.Dropout(drop_rate)
        dpr = torch.linspace(0, drop_path_rate, depth).tolist()
        self.blocks = nn.ModuleList(
            TransformerBlock(embed_dim, num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias,
                             softmax_bits=softmax_bits, drop=drop_rate, attn_drop=attn_drop_rate,
                             drop_path=dpr[i], linear=linear, drop_path_impl=drop_path_impl)
            for i in range(depth))
        self.norm = _norm(embed_dim)
        self.q_head = QuantAct(8)
        self.head = QuantLinear(embed_dim, num_classes)
        trunc_normal_(self.pos_embed, std=0.02)
        trunc_normal_(self.cls_token, std=0.02)
        self._finish_init()

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {"pos_embed", "cls_token"}

    def forward_features(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x, scale = self.patch_embed(*self.q_input(x))
        x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1)  # shares scale
        pos, pos_scale = self.q_pos(self.pos_embed)
        x, scale = self.q_embed(x, scale, pos, pos_scale)
        x = self.pos_drop(x)
        for blk in self.blocks:
            x, scale = blk(x, scale)
        x, scale = self.norm(x, scale)
        return self.q_head(x[:, 0], scale)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(*self.forward_features(x))[0]


class SwinStage(nn.Module):
    """One Swin stage, timm's layout: optional patch merging first, then the blocks."""

    def __init__(self, dim: int, out_dim: int, input_resolution: tuple[int, int], depth: int,
                 num_heads: int, window_size: int, downsample: bool, mlp_ratio: float,
                 qkv_bias: bool, drop: float, attn_drop: float, drop_path: list[float], linear,
                 drop_path_impl: str = "ivit"):
        super().__init__()
        if downsample:
            self.downsample = PatchMerging(dim, input_resolution, linear=linear)
            input_resolution = (input_resolution[0] // 2, input_resolution[1] // 2)
        else:
            self.downsample = None
        self.blocks = nn.ModuleList(
            TransformerBlock(out_dim, num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias,
                             softmax_bits=8, drop=drop, attn_drop=attn_drop,
                             drop_path=drop_path[i], linear=linear,
                             input_resolution=input_resolution, window_size=window_size,
                             shift_size=0 if i % 2 == 0 else window_size // 2,
                             drop_path_impl=drop_path_impl)
            for i in range(depth))

    def forward(self, x: Tensor, scale: Tensor) -> tuple[Tensor, Tensor]:
        if self.downsample is not None:
            x, scale = self.downsample(x, scale)
        for blk in self.blocks:
            x, scale = blk(x, scale)
        return x, scale


class _Head(nn.Module):
    """Holds the classifier as ``head.fc`` (timm's Swin naming)."""

    def __init__(self, dim: int, num_classes: int):
        super().__init__()
        self.fc = QuantLinear(dim, num_classes)

    def forward(self, x: Tensor, scale: Tensor) -> tuple[Tensor, Tensor]:
        return self.fc(x, scale)


class QuantSwin(QuantModel):
    """Swin Transformer with I-ViT's integer modules (shifted windows, patch merging)."""

    def __init__(self, *, img_size: int = 224, patch_size: int = 4, in_chans: int = 3,
                 num_classes: int = 1000, embed_dim: int = 96, depths=(2, 2, 6, 2),
                 num_heads=(3, 6, 12, 24), window_size: int = 7, mlp_ratio: float = 4.0,
                 qkv_bias: bool = True, drop_rate: float = 0.0, attn_drop_rate: float = 0.0,
                 drop_path_rate: float = 0.1, ternary: bool = False, flags: Flags | None = None,
                 drop_path_impl: str = "ivit", ape: bool = False):
        super().__init__(flags)
        drop_path_layer(0.0, drop_path_impl)  # validates the name
        if len(depths) != len(num_heads):
            raise ValueError(f"depths {depths} and num_heads {num_heads} need the same length")
        self.default_img_size = img_size
        self.num_classes = num_classes
        linear = TerLinear if ternary else QuantLinear
        self.q_input = QuantAct(8)
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim, norm=True)
        if ape:  # absolute position embedding (the original Swin's option), quantized as
            # I-ViT does: 16-bit, added through the embedding's requantizer (DeiT's pos_embed)
            self.absolute_pos_embed = nn.Parameter(
                torch.zeros(1, self.patch_embed.num_patches, embed_dim))
            trunc_normal_(self.absolute_pos_embed, std=0.02)
            self.q_pos = QuantAct(16)
        else:
            self.absolute_pos_embed = None
        self.q_embed = QuantAct(16)
        self.pos_drop = nn.Dropout(drop_rate)
        dpr = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        grid = self.patch_embed.grid_size
        stages, dim = [], embed_dim
        for i, (depth, heads) in enumerate(zip(depths, num_heads, strict=True)):
            out_dim = embed_dim * 2**i
            res = (grid[0] // 2 ** max(i - 1, 0), grid[1] // 2 ** max(i - 1, 0))
            stages.append(SwinStage(dim, out_dim, res, depth, heads, window_size, i > 0,
                                    mlp_ratio, qkv_bias, drop_rate, attn_drop_rate,
                                    dpr[sum(depths[:i]):sum(depths[:i + 1])], linear,
                                    drop_path_impl))
            dim = out_dim
        self.layers = nn.ModuleList(stages)
        self.num_features = dim
        self.norm = _norm(dim)
        self.q_norm = QuantAct(8)
        self.q_pool = QuantAct(8)
        self.head = _Head(dim, num_classes)
        self._finish_init()

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {"absolute_pos_embed"}  # as the original Swin and I-ViT

    @torch.jit.ignore
    def no_weight_decay_keywords(self) -> set[str]:
        return {"relative_position_bias_table"}

    def forward_features(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x, scale = self.patch_embed(*self.q_input(x))
        if self.absolute_pos_embed is not None:
            pos, pos_scale = self.q_pos(self.absolute_pos_embed)
            x, scale = self.q_embed(x, scale, pos, pos_scale)
        else:
            x, scale = self.q_embed(x, scale)
        x = self.pos_drop(x)
        for stage in self.layers:
            x, scale = stage(x, scale)
        x, scale = self.q_norm(*self.norm(x, scale))
        x, scale = self.q_pool(global_avg_tokens(x), scale)
        return torch.flatten(x, 1), scale

    def forward(self, x: Tensor) -> Tensor:
        return self.head(*self.forward_features(x))[0]
