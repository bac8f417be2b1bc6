"""The two model families, built from the shared blocks: I-ViT (DeiT) and Swin."""

from __future__ import annotations

import contextlib
import warnings

import torch
import torch.utils.checkpoint
from timm.layers import trunc_normal_
from timm.models._features import feature_take_indices
from torch import Tensor, nn

from .blocks import (
    PatchEmbed,
    PatchMerging,
    TransformerBlock,
    drop_path_layer,
    global_avg_tokens,
    int_layer_norm,
)
from .flags import Flags
from .modules import QuantAct, QuantLinear, QuantModule, TerLinear

__all__ = ["QuantModel", "QuantViT", "QuantSwin", "UncalibratedWarning"]


class UncalibratedWarning(UserWarning):
    """An eval forward of a model whose activation ranges were never observed."""


class _NoHead(nn.Module):
    """The classifier of a ``num_classes=0`` model: passes (x, scale) through (timm's
    nn.Identity head, for a value and its scale)."""

    def forward(self, x: Tensor, scale: Tensor) -> tuple[Tensor, Tensor]:
        return x, scale


@contextlib.contextmanager
def _frozen_ranges(module: nn.Module):
    """QuantActs in ``module`` stop observing (their ranges and scales stay as they are)."""
    acts = [m for m in module.modules() if isinstance(m, QuantAct)]
    saved = [m.running_stat for m in acts]
    for m in acts:
        m.running_stat = False
    try:
        yield
    finally:
        for m, r in zip(acts, saved, strict=True):
            m.running_stat = r


def _checkpointed(block: nn.Module, x: Tensor, scale: Tensor) -> tuple[Tensor, Tensor]:
    """``block(x, scale)`` with activation checkpointing. The backward's recomputation runs
    with the block's ranges frozen: it neither observes the batch a second time nor uses a
    scale other than the forward's, so values and gradients equal the plain path's."""
    return torch.utils.checkpoint.checkpoint(
        block, x, scale, use_reentrant=False,
        context_fn=lambda: (contextlib.nullcontext(), _frozen_ranges(block)))


def _calibration_check(model: QuantModel, args) -> None:
    """Forward pre-hook: the first eval forward after ``eval()`` (or a load) checks, once,
    that the activation ranges were observed, and warns once per model if they were not."""
    if model.training or not model._check_calibration:
        return
    if torch.compiler.is_compiling() or torch.jit.is_scripting():
        return
    model._check_calibration = False
    if model._warned_uncalibrated:
        return
    empty = model.uncalibrated_quantizers()
    if empty:
        model._warned_uncalibrated = True
        total = sum(1 for _ in model._quantizers())
        warnings.warn(UncalibratedWarning(
            f"{type(model).__name__} evaluated with {len(empty)} of {total} activation ranges "
            f"never observed (e.g. {empty[0]}): it predicts near chance; run "
            "qvit.calibrate(model, batches) (or train) first"), stacklevel=3)


class QuantModel(nn.Module):
    """What every qvit model shares: flags, caches, freezing, weight-decay exclusions."""

    default_img_size: int
    num_classes: int
    num_features: int
    global_pool: str
    _pools: tuple[str, ...]

    def __init__(self, flags: Flags | None):
        super().__init__()
        self._flags = Flags() if flags is None else flags
        self.pretrained_cfg: dict = {}  # timm's; filled by create_model
        self.grad_checkpointing = False
        self._check_calibration = False
        self._warned_uncalibrated = False
        self.register_forward_pre_hook(_calibration_check)
        self.register_load_state_dict_post_hook(_arm_calibration_check)

    @property
    def default_cfg(self) -> dict:
        """timm's older name of `pretrained_cfg`."""
        return self.pretrained_cfg

    # --- calibration ---------------------------------------------------------------------

    def train(self, mode: bool = True):
        if not mode:
            self._check_calibration = True  # checked by the next eval forward
        return super().train(mode)

    def _quantizers(self):
        """(name, QuantAct) of every activation quantizer the current head uses."""
        unused = self._unused_quantizers()
        return ((n, m) for n, m in self.named_modules()
                if isinstance(m, QuantAct) and n not in unused)

    def _unused_quantizers(self) -> set[str]:
        return set()

    # (a host-side check, run eagerly: dynamo would compile it as a frame of its own when the
    # compiled model's pre-hook calls it, and break at tolist)
    @torch.compiler.disable
    def uncalibrated_quantizers(self) -> list[str]:
        """Names of the QuantActs whose range was never observed (empty: min == max)."""
        acts = list(self._quantizers())
        if not acts:
            return []
        empty = torch.stack([torch.eq(m.min_val, m.max_val).all() for _, m in acts]).tolist()
        return [n for (n, _), e in zip(acts, empty, strict=True) if e]

    # --- timm's model contract -----------------------------------------------------------

    def _validate_pool(self, global_pool: str) -> str:
        if global_pool not in self._pools:
            raise ValueError(f"global_pool must be one of {self._pools} for "
                             f"{type(self).__name__}, got {global_pool!r}")
        return global_pool

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Activation checkpointing per block (recomputed with frozen ranges: same numbers)."""
        self.grad_checkpointing = enable

    def _block(self, block: nn.Module, x: Tensor, scale: Tensor) -> tuple[Tensor, Tensor]:
        if self.grad_checkpointing and torch.is_grad_enabled():
            return _checkpointed(block, x, scale)
        return block(x, scale)

    def _new_head(self, num_classes: int) -> nn.Module:
        if num_classes == 0:
            return _NoHead()
        head = QuantLinear(self.num_features, num_classes)
        self._init_weights(head)
        head.flags = self._flags
        p = next(self.parameters())
        return head.to(device=p.device, dtype=p.dtype)

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        raise NotImplementedError

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """A new classifier for ``num_classes`` (0: none, forward returns pooled features)."""
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 0:
            raise ValueError(f"num_classes must be an int >= 0, got {num_classes!r}")
        if global_pool is not None:
            self.global_pool = self._validate_pool(global_pool)
        self.num_classes = num_classes
        self._set_classifier(self._new_head(num_classes))

    def _set_classifier(self, head: nn.Module) -> None:
        raise NotImplementedError

    def feature_scale(self) -> Tensor:
        """The scale of `forward_features`' output: the final IntLayerNorm's output scale,
        which depends on its weight only (a probe through it, so the formula stays there)."""
        w = self.norm.weight
        probe = torch.arange(self.num_features, dtype=w.dtype, device=w.device).view(1, 1, -1)
        return self.norm(probe, torch.ones(1, dtype=w.dtype, device=w.device))[1]

    def forward_features(self, x: Tensor) -> Tensor:
        """timm's unpooled features (tokens after the final norm); their scale is
        `feature_scale()`, or use `forward_features_with_scale`."""
        return self.forward_features_with_scale(x)[0]

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """Pool, quantize and classify `forward_features`' output (``pre_logits``: stop
        before the classifier)."""
        return self.forward_head_with_scale(x, self.feature_scale(), pre_logits)[0]

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head_with_scale(*self.forward_features_with_scale(x))[0]

    # --- timm's feature API (features_only=True wraps the model in timm's FeatureGetterNet)

    @staticmethod
    def _check_output_fmt(output_fmt: str, allowed: tuple[str, ...]) -> None:
        if output_fmt not in allowed:
            raise ValueError(f"output_fmt must be one of {allowed}, got {output_fmt!r}")

    def _passthrough_norm(self) -> nn.Module:
        return _NoHead()  # (x, scale) -> (x, scale): a pruned final norm

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


def _arm_calibration_check(model: QuantModel, incompatible_keys) -> None:
    model._check_calibration = True


class QuantViT(QuantModel):
    """I-ViT: DeiT with integer GELU, softmax and LayerNorm and dyadic requantization."""

    def __init__(self, *, img_size: int = 224, patch_size: int = 16, in_chans: int = 3,
                 num_classes: int = 1000, embed_dim: int = 768, depth: int = 12,
                 num_heads: int = 12, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 softmax_bits: int = 16, drop_rate: float = 0.0, attn_drop_rate: float = 0.0,
                 drop_path_rate: float = 0.0, ternary: bool = False, global_pool: str = "token",
                 flags: Flags | None = None, drop_path_impl: str = "ivit"):
        super().__init__(flags)
        drop_path_layer(0.0, drop_path_impl)  # validates the name
        self._pools = ("token", "avg", "")
        self.global_pool = self._validate_pool(global_pool)
        self.default_img_size = img_size
        self.num_classes = num_classes
        self.num_features = self.head_hidden_size = self.embed_dim = embed_dim
        self.num_prefix_tokens = 1
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
        self.norm = int_layer_norm(embed_dim)
        self.q_head = QuantAct(8)
        self.head = QuantLinear(embed_dim, num_classes) if num_classes else _NoHead()
        self.feature_info = [dict(module=f"blocks.{i}", num_chs=embed_dim, reduction=patch_size)
                             for i in range(depth)]
        trunc_normal_(self.pos_embed, std=0.02)
        trunc_normal_(self.cls_token, std=0.02)
        self._finish_init()

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {"pos_embed", "cls_token"}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        """Parameter groups for timm's layer decay: embeddings, one per block, final norm."""
        return dict(stem=r"^cls_token|^pos_embed|^patch_embed",
                    blocks=r"^blocks\.(\d+)" if coarse else [(r"^blocks\.(\d+)", None),
                                                           (r"^norm", (99999,))])

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def _set_classifier(self, head: nn.Module) -> None:
        self.head = head

    def _embed(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x, scale = self.patch_embed(*self.q_input(x))
        x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1)  # shares scale
        pos, pos_scale = self.q_pos(self.pos_embed)
        x, scale = self.q_embed(x, scale, pos, pos_scale)
        return self.pos_drop(x), scale

    def forward_features_with_scale(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Tokens after the final norm (B, 1 + patches, C) and their scale."""
        x, scale = self._embed(x)
        for blk in self.blocks:
            x, scale = self._block(blk, x, scale)
        return self.norm(x, scale)

    def forward_intermediates(self, x: Tensor, indices: int | list[int] | None = None,
                              return_prefix_tokens: bool = False, norm: bool = False,
                              stop_early: bool = False, output_fmt: str = "NCHW",
                              intermediates_only: bool = False):
        """timm's ViT API: the blocks' outputs at ``indices`` (last n if an int, all if
        None), as values (their scales dropped), optionally through the final norm, as
        (B, C, H, W) ("NCHW") or tokens ("NLC") without the class token (``return_prefix_
        tokens``: (spatial, prefix) pairs); with the final features unless
        ``intermediates_only`` (those of `forward_features`, after the last block run)."""
        self._check_output_fmt(output_fmt, ("NCHW", "NLC"))
        take, max_index = feature_take_indices(len(self.blocks), indices)
        x, scale = self._embed(x)
        inter = []
        blocks = self.blocks[:max_index + 1] if stop_early else self.blocks
        for i, blk in enumerate(blocks):
            x, scale = self._block(blk, x, scale)
            if i in take:
                inter.append(self.norm(x, scale)[0] if norm else x)
        n = self.num_prefix_tokens
        prefix, inter = [y[:, :n] for y in inter], [y[:, n:] for y in inter]
        if output_fmt == "NCHW":
            H, W = self.patch_embed.grid_size
            inter = [y.reshape(y.shape[0], H, W, -1).permute(0, 3, 1, 2).contiguous()
                     for y in inter]
        if return_prefix_tokens:
            inter = list(zip(inter, prefix, strict=True))
        if intermediates_only:
            return inter
        return self.norm(x, scale)[0], inter

    def prune_intermediate_layers(self, indices: int | list[int] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> list[int]:
        """timm's: drop the blocks after the last of ``indices`` (and the final norm, the
        classifier where asked); returns the absolute indices kept."""
        take, max_index = feature_take_indices(len(self.blocks), indices)
        self.blocks = self.blocks[:max_index + 1]
        if prune_norm:
            self.norm = self._passthrough_norm()
        if prune_head:
            self.reset_classifier(0, "")
        return take

    def forward_head_with_scale(self, x: Tensor, scale: Tensor, pre_logits: bool = False
                                ) -> tuple[Tensor, Tensor]:
        """Pool (class token, token average or none), quantize to 8 bits, classify."""
        if self.global_pool == "token":
            x = x[:, 0]
        elif self.global_pool == "avg":
            x = x[:, self.num_prefix_tokens:].mean(dim=1)
        x, scale = self.q_head(x, scale)
        return (x, scale) if pre_logits else self.head(x, scale)


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
        self.grad_checkpointing = False

    def forward(self, x: Tensor, scale: Tensor) -> tuple[Tensor, Tensor]:
        if self.downsample is not None:
            x, scale = self.downsample(x, scale)
        for blk in self.blocks:
            if self.grad_checkpointing and torch.is_grad_enabled():
                x, scale = _checkpointed(blk, x, scale)
            else:
                x, scale = blk(x, scale)
        return x, scale


class _Head(nn.Module):
    """Holds the classifier as ``head.fc`` (timm's Swin naming)."""

    def __init__(self, dim: int, num_classes: int):
        super().__init__()
        self.fc = QuantLinear(dim, num_classes) if num_classes else _NoHead()

    def forward(self, x: Tensor, scale: Tensor) -> tuple[Tensor, Tensor]:
        return self.fc(x, scale)


class QuantSwin(QuantModel):
    """Swin Transformer with I-ViT's integer modules (shifted windows, patch merging)."""

    def __init__(self, *, img_size: int = 224, patch_size: int = 4, in_chans: int = 3,
                 num_classes: int = 1000, embed_dim: int = 96, depths=(2, 2, 6, 2),
                 num_heads=(3, 6, 12, 24), window_size: int = 7, mlp_ratio: float = 4.0,
                 qkv_bias: bool = True, drop_rate: float = 0.0, attn_drop_rate: float = 0.0,
                 drop_path_rate: float = 0.1, ternary: bool = False, global_pool: str = "avg",
                 flags: Flags | None = None, drop_path_impl: str = "ivit", ape: bool = False):
        super().__init__(flags)
        drop_path_layer(0.0, drop_path_impl)  # validates the name
        if len(depths) != len(num_heads):
            raise ValueError(f"depths {depths} and num_heads {num_heads} need the same length")
        self._pools = ("avg", "")
        self.global_pool = self._validate_pool(global_pool)
        self.default_img_size = img_size
        self.num_classes = num_classes
        self.output_fmt = "NHWC"
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
        self.feature_info = [dict(num_chs=embed_dim * 2**i, reduction=patch_size * 2**i,
                                  module=f"layers.{i}") for i in range(len(depths))]
        self.num_features = self.head_hidden_size = dim
        self.feature_grid = (grid[0] // 2 ** (len(depths) - 1), grid[1] // 2 ** (len(depths) - 1))
        self.norm = int_layer_norm(dim)
        self.q_norm = QuantAct(8)
        self.q_pool = QuantAct(8)
        self.head = _Head(dim, num_classes)
        self._finish_init()

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """As timm's float Swin: every relative position bias table (and an absolute
        position embedding, where there is one)."""
        return {n for n, _ in self.named_parameters()
                if "relative_position_bias_table" in n or n == "absolute_pos_embed"}

    @torch.jit.ignore
    def no_weight_decay_keywords(self) -> set[str]:
        return {"relative_position_bias_table"}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        """Parameter groups for timm's layer decay: embedding, each stage's merging with the
        previous stage's last block, one per block, final norm (timm's float Swin's)."""
        return dict(stem=r"^patch_embed|^absolute_pos_embed",
                    blocks=r"^layers\.(\d+)" if coarse else [
                        (r"^layers\.(\d+)\.downsample", (0,)),
                        (r"^layers\.(\d+)\.blocks\.(\d+)", None),
                        (r"^norm", (99999,))])

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        super().set_grad_checkpointing(enable)
        for stage in self.layers:
            stage.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head.fc

    def _set_classifier(self, head: nn.Module) -> None:
        self.head.fc = head

    def _unused_quantizers(self) -> set[str]:
        return {"q_pool"} if self.global_pool == "" else set()

    def _embed(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x, scale = self.patch_embed(*self.q_input(x))
        if self.absolute_pos_embed is not None:
            pos, pos_scale = self.q_pos(self.absolute_pos_embed)
            x, scale = self.q_embed(x, scale, pos, pos_scale)
        else:
            x, scale = self.q_embed(x, scale)
        return self.pos_drop(x), scale

    def forward_features_with_scale(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Features after the final norm, (B, H, W, C) as timm's Swin, and their scale."""
        x, scale = self._embed(x)
        for stage in self.layers:
            x, scale = stage(x, scale)
        x, scale = self.norm(x, scale)
        return x.view(x.shape[0], *self.feature_grid, x.shape[-1]), scale

    def _stage_grid(self, i: int) -> tuple[int, int]:
        grid = self.patch_embed.grid_size
        return grid[0] // 2**i, grid[1] // 2**i

    def forward_intermediates(self, x: Tensor, indices: int | list[int] | None = None,
                              norm: bool = False, stop_early: bool = False,
                              output_fmt: str = "NCHW", intermediates_only: bool = False):
        """timm's Swin API: the stages' outputs at ``indices`` (last n if an int, all if
        None) as values (their scales dropped), the last stage's through the final norm if
        ``norm``, as (B, C, H, W) ("NCHW") or (B, H, W, C) ("NHWC"); with the final features
        (B, H, W, C) unless ``intermediates_only`` (normed only where the last stage ran:
        then those of `forward_features`)."""
        self._check_output_fmt(output_fmt, ("NCHW", "NHWC"))
        take, max_index = feature_take_indices(len(self.layers), indices)
        x, scale = self._embed(x)
        last = len(self.layers) - 1
        inter = []
        stages = self.layers[:max_index + 1] if stop_early else self.layers
        i = 0
        for i, stage in enumerate(stages):
            x, scale = stage(x, scale)
            if i in take:
                y = self.norm(x, scale)[0] if norm and i == last else x
                y = y.reshape(y.shape[0], *self._stage_grid(i), y.shape[-1])
                inter.append(y.permute(0, 3, 1, 2).contiguous() if output_fmt == "NCHW" else y)
        if intermediates_only:
            return inter
        if i == last:
            x, scale = self.norm(x, scale)
        return x.reshape(x.shape[0], *self._stage_grid(i), x.shape[-1]), inter

    def prune_intermediate_layers(self, indices: int | list[int] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> list[int]:
        """timm's: drop the stages after the last of ``indices``; the final norm (sized for
        the last stage) and the classifier go with them, or where asked."""
        take, max_index = feature_take_indices(len(self.layers), indices)
        prune_end = max_index < len(self.layers) - 1
        if prune_norm or prune_end:
            self.norm = self._passthrough_norm()
        self.layers = self.layers[:max_index + 1]
        if prune_end:
            self.num_features = self.head_hidden_size = self.feature_info[max_index]["num_chs"]
            self.feature_grid = self._stage_grid(max_index)
        if prune_head or prune_end:
            self.reset_classifier(0, "")
        return take

    def forward_head_with_scale(self, x: Tensor, scale: Tensor, pre_logits: bool = False
                                ) -> tuple[Tensor, Tensor]:
        """Quantize to 8 bits, average the tokens (``global_pool="avg"``), classify."""
        B, H, W, C = x.shape
        x, scale = self.q_norm(x.view(B, H * W, C), scale)
        if self.global_pool == "avg":
            x, scale = self.q_pool(global_avg_tokens(x), scale)
            x = torch.flatten(x, 1)
        else:
            x = x.view(B, H, W, C)
        return (x, scale) if pre_logits else self.head(x, scale)
