"""Swin's windows: a token grid into (shifted) windows and back, and the shifted-window mask.

Two paths, the same values (a permutation moves values, it computes none):

* `roll_partition` / `reverse_roll`: ``torch.roll`` and `window_partition` (timm's and
  I-ViT's order) and back; whether a block rolls is Python control flow on its shift.
* `window_order` folds the roll and the partition into one token order, applied by
  `gather_tokens` (and its inverse back). A shifted and an unshifted block of one stage then
  run the same code on tensors of the same shapes (the unshifted one with a zero mask), so
  PyTorch's regional compilation compiles one graph for both instead of two (`qvit.compile`).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["window_partition", "window_reverse", "roll_partition", "reverse_roll",
           "shifted_window_mask", "window_order", "gather_tokens"]


def window_partition(x: Tensor, ws: int) -> Tensor:
    """(B, H, W, C) -> (B * H/ws * W/ws, ws, ws, C)"""
    B, H, W, C = x.shape
    x = x.view(B, H // ws, ws, W // ws, ws, C)
    return x.permute(0, 1, 3, 2, 4, 5).contiguous().view(-1, ws, ws, C)


def window_reverse(windows: Tensor, ws: int, H: int, W: int) -> Tensor:
    """Inverse of `window_partition`."""
    B = windows.shape[0] // ((H // ws) * (W // ws))
    x = windows.view(B, H // ws, W // ws, ws, ws, -1)
    return x.permute(0, 1, 3, 2, 4, 5).contiguous().view(B, H, W, -1)


def roll_partition(x: Tensor, H: int, W: int, ws: int, shift: int) -> Tensor:
    """(B, H*W, C) tokens of a row-major H x W grid -> (B * windows, ws*ws, C): the grid
    rolled back by ``shift`` on both axes (Swin's shifted windows), then cut into windows."""
    B, _, C = x.shape
    x = x.view(B, H, W, C)
    if shift:
        x = torch.roll(x, shifts=(-shift, -shift), dims=(1, 2))
    return window_partition(x, ws).view(-1, ws * ws, C)


def reverse_roll(windows: Tensor, H: int, W: int, ws: int, shift: int) -> Tensor:
    """Inverse of `roll_partition`: (B * windows, ws*ws, C) -> (B, H*W, C)."""
    C = windows.shape[-1]
    x = window_reverse(windows.view(-1, ws, ws, C), ws, H, W)
    if shift:
        x = torch.roll(x, shifts=(shift, shift), dims=(1, 2))
    return x.view(x.shape[0], H * W, C)


def shifted_window_mask(H: int, W: int, ws: int, shift: int) -> Tensor:
    """(windows, ws*ws, ws*ws): 0 between tokens of one region of the rolled grid, -100
    between tokens that the roll brought together from opposite edges."""
    img = torch.zeros((1, H, W, 1))
    cnt = 0
    for h in (slice(0, -ws), slice(-ws, -shift), slice(-shift, None)):
        for w in (slice(0, -ws), slice(-ws, -shift), slice(-shift, None)):
            img[:, h, w, :] = cnt
            cnt += 1
    win = window_partition(img, ws).view(-1, ws * ws)
    mask = win.unsqueeze(1) - win.unsqueeze(2)
    return mask.masked_fill(mask != 0, -100.0).masked_fill(mask == 0, 0.0)


def window_order(H: int, W: int, ws: int, shift: int) -> Tensor:
    """The token (of the row-major H x W grid) at each position of the rolled, partitioned
    grid: ``x[:, order]`` equals roll-then-partition flattened to (B, H*W, C)."""
    return roll_partition(torch.arange(H * W).view(1, H * W, 1), H, W, ws, shift).reshape(-1)


class _GatherTokens(torch.autograd.Function):
    # backward gathers by the inverse permutation: index's own backward would scatter-add
    # into zeros (an accumulating index_put, serial on the CPU) for the same values
    @staticmethod
    def forward(ctx, x: Tensor, order: Tensor, inverse: Tensor) -> Tensor:
        ctx.save_for_backward(inverse)
        return x[:, order]

    @staticmethod
    def backward(ctx, grad: Tensor):
        (inverse,) = ctx.saved_tensors
        return grad[:, inverse], None, None


def gather_tokens(x: Tensor, order: Tensor, inverse: Tensor) -> Tensor:
    """``x[:, order]`` for (B, L, C) tokens and a permutation ``order`` of L whose inverse is
    ``inverse``; its gradient is the inverse gather."""
    return _GatherTokens.apply(x, order, inverse)
