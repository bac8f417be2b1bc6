"""IntSoftmax (I-ViT's Shiftmax): softmax over the last dim from the shift-based integer
exp, floor(2^(b-1) * exp / sum) times the output unit 2^-(b-1). Every path takes
``(x, scale, x0, n, output_bit, out_unit, ste)`` and returns the output values:

* ``chain``: the STE chain (`qvit.ops.int_exp`'s pieces), gradients through autograd, to
  the scale too;
* ``fused``: one autograd.Function, the integer forward under no_grad and the chain's
  backward replayed (`_IntSoftmaxFused`);
* ``lean``: one node, in place, the output unit folded in (`_IntSoftmaxLean`).

All three give the same values and gradients to ``x`` (the fused and lean nodes pass none
to the scale: the module takes the chain when the scale wants one).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd import Function

from .int_exp import (
    INT32_MAX,
    check_fusable,
    exp_shift_grad,
    exp_shift_grad_lean,
    exp_shift_lean,
    exp_shift_slope,
    first_max_index,
    int_exp_shift,
    normalize,
    normalize_bwd,
    normalize_fwd,
    scatter_max,
)

__all__ = ["softmax_chain", "softmax_fused", "softmax_lean", "SOFTMAX"]


def softmax_chain(x: Tensor, scale: Tensor, x0: Tensor, n: int, output_bit: int,
                  out_unit: Tensor, ste: str = "inline") -> Tensor:
    x_int = x / scale
    x_int = x_int - x_int.max(dim=-1, keepdim=True).values
    exp_int, _ = int_exp_shift(x_int, scale, n, x0_int=x0, ste=ste)
    return normalize(exp_int, exp_int.sum(dim=-1, keepdim=True), output_bit, ste) * out_unit


class _IntSoftmaxFused(Function):
    @staticmethod
    def forward(ctx, x, scale, x0, n, output_bit):
        a = x / scale
        mx = a.max(dim=-1, keepdim=True)
        b = a - mx.values
        exp_int, slope = exp_shift_slope(b, x0, n, True)
        exp_sum = exp_int.sum(dim=-1, keepdim=True)
        out, factor, recip = normalize_fwd(exp_int, exp_sum, output_bit)
        ctx.save_for_backward(scale, exp_int, factor, recip, exp_sum, mx.indices)
        ctx.slope = slope
        ctx.output_bit = output_bit
        return out

    @staticmethod
    def backward(ctx, g_out):
        scale, exp_int, factor, recip, exp_sum, idx = ctx.saved_tensors
        g_exp, g_sum = normalize_bwd(g_out, exp_int, factor, recip, exp_sum,
                                     ctx.output_bit, True)
        g_b = exp_shift_grad(g_exp.add_(g_sum), ctx.slope)
        g_a = scatter_max(g_b, idx, -g_b.sum(dim=-1, keepdim=True))
        return g_a.div_(scale), None, None, None, None


def softmax_fused(x: Tensor, scale: Tensor, x0: Tensor, n: int, output_bit: int,
                  out_unit: Tensor, ste: str = "inline") -> Tensor:
    if check_fusable(x, scale):
        return _IntSoftmaxFused.apply(x, scale, x0, n, output_bit) * out_unit
    with torch.no_grad():
        a = x / scale
        b = a - a.max(dim=-1, keepdim=True).values
        exp_int, _ = exp_shift_slope(b, x0, n, False)
        return normalize_fwd(exp_int, exp_int.sum(dim=-1, keepdim=True),
                             output_bit)[0] * out_unit


class _IntSoftmaxLean(Function):
    @staticmethod
    def forward(ctx, x, scale, x0, n, output_bit, out_unit):
        b = torch.div(x, scale)
        b.sub_(b.amax(dim=-1, keepdim=True))
        scratch = torch.empty_like(b)
        idx = first_max_index(b, scratch)
        exp_int, slope = exp_shift_lean(b, x0, n, scratch)
        exp_sum = exp_int.sum(dim=-1, keepdim=True)
        recip = exp_sum.clamp_max(INT32_MAX).reciprocal()
        factor = torch.floor(recip * INT32_MAX)
        out = torch.mul(exp_int, factor).mul_(2.0 ** (output_bit - 32)).floor_()
        ctx.save_for_backward(scale, exp_int, factor, recip, exp_sum, idx, x0, out_unit,
                              *slope)
        ctx.output_bit = output_bit
        return out.mul_(out_unit)

    @staticmethod
    def backward(ctx, g_out):
        scale, exp_int, factor, recip, exp_sum, idx, x0, out_unit, *slope = ctx.saved_tensors
        g = torch.mul(g_out, out_unit).mul_(2.0 ** (ctx.output_bit - 32))
        g_sum = torch.mul(g, exp_int).sum(dim=-1, keepdim=True)
        g_sum = g_sum.mul_(INT32_MAX).neg_().mul_(recip * recip)
        g_sum.masked_fill_(exp_sum >= 2.0**31, 0)  # rows: clamp_max passes none at 2^31
        g_b = exp_shift_grad_lean(g.mul_(factor).add_(g_sum), *slope, x0)
        g_b.scatter_add_(-1, idx, g_b.sum(dim=-1, keepdim=True).neg_())
        return g_b.div_(scale), None, None, None, None, None


def softmax_lean(x: Tensor, scale: Tensor, x0: Tensor, n: int, output_bit: int,
                 out_unit: Tensor, ste: str = "inline") -> Tensor:
    return _IntSoftmaxLean.apply(x, scale, x0, n, output_bit, out_unit)


SOFTMAX = {"chain": softmax_chain, "fused": softmax_fused, "lean": softmax_lean}
