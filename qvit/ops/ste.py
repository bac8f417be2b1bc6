"""Straight-through estimators: floor or round forward, the identity backward.

Paths (`Paths.ste`):

* ``function``: I-ViT's autograd.Function (Python dispatch on every call), whose backward
  returns ``grad_output.clone()``;
* ``inline``: seed change 4, ``floor(x) + (x - x.detach())`` in plain autograd ops;
* ``lean``: the Function without the full-size gradient copy (ours), the same values.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd import Function

__all__ = ["STE_PATHS", "floor_ste", "round_ste", "straight_through", "FLOOR", "ROUND"]

STE_PATHS = ("function", "inline", "lean")


def _ste_function(op, name: str, copy_grad: bool) -> type[Function]:
    """An STE as an autograd.Function: ``op`` forward, identity backward (cloned for the
    legacy one)."""

    def forward(ctx, x):
        return op(x)

    def backward(ctx, grad_output):
        return grad_output.clone() if copy_grad else grad_output

    return type(name, (Function,), {"forward": staticmethod(forward),
                                    "backward": staticmethod(backward)})


_FloorSTE = _ste_function(torch.floor, "_FloorSTE", copy_grad=True)
_RoundSTE = _ste_function(torch.round, "_RoundSTE", copy_grad=True)
_FloorSTELean = _ste_function(torch.floor, "_FloorSTELean", copy_grad=False)
_RoundSTELean = _ste_function(torch.round, "_RoundSTELean", copy_grad=False)


def straight_through(value: Tensor, x: Tensor) -> Tensor:
    """``value`` forward, the gradient of ``x`` backward. Written as value + (x - x): that
    is exactly ``value`` for every finite x. (The seed's form ``x + (f(x) - x).detach()`` is
    exact for floor and round, but not for a saturating quantizer: with x = 4.3e7 and
    f(x) = clamp(round(x), -128, 127), f(x) - x rounds and the sum misses 127.)"""
    return value.detach() + (x - x.detach())


def _floor_inline(x: Tensor) -> Tensor:
    return straight_through(torch.floor(x.detach()), x)


def _round_inline(x: Tensor) -> Tensor:
    return straight_through(torch.round(x.detach()), x)


# the implementation of each path, bound once by the modules
FLOOR = {"function": _FloorSTE.apply, "inline": _floor_inline, "lean": _FloorSTELean.apply}
ROUND = {"function": _RoundSTE.apply, "inline": _round_inline, "lean": _RoundSTELean.apply}


def floor_ste(x: Tensor, ste: str = "inline") -> Tensor:
    """floor(x) with an identity gradient, by path ``ste`` (`STE_PATHS`)."""
    return FLOOR[ste](x)


def round_ste(x: Tensor, ste: str = "inline") -> Tensor:
    """round(x) (half to even) with an identity gradient."""
    return ROUND[ste](x)
