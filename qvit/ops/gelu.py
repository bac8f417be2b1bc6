"""IntGELU (I-ViT's ShiftGELU): x * sigmoid(1.702 x), the sigmoid from the shift-based
integer exp, exp(x - max) / (exp(x - max) + exp(-max)), times the output scale. Every path
takes ``(x, scale, x0, n, output_bit, out_scale, ste)`` with ``x0`` of the sigmoid's scale
1.702 * scale, and returns the output values:

* ``chain``: the STE chain (`qvit.ops.int_exp`'s pieces);
* ``fused``: one autograd.Function replaying the chain's backward (`_IntGELUFused`);
* ``lean``: one node, in place, the output scale folded in (`_IntGELULean`).
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

__all__ = ["SIGMOID_FACTOR", "gelu_chain", "gelu_fused", "gelu_lean", "GELU"]

SIGMOID_FACTOR = 1.702  # GELU(x) ~ x * sigmoid(1.702 x)


def gelu_chain(x: Tensor, scale: Tensor, x0: Tensor, n: int, output_bit: int,
               out_scale: Tensor, ste: str = "inline") -> Tensor:
    pre_x_int = x / scale
    x_int_max = pre_x_int.max(dim=-1, keepdim=True).values
    exp_int, _ = int_exp_shift(pre_x_int - x_int_max, scale, n, x0_int=x0, ste=ste)
    exp_int_max, _ = int_exp_shift(-x_int_max, scale, n, x0_int=x0, ste=ste)
    sigmoid_int = normalize(exp_int, exp_int + exp_int_max, output_bit, ste)
    return pre_x_int * sigmoid_int * out_scale


class _IntGELUFused(Function):
    @staticmethod
    def forward(ctx, x, scale, x0, n, output_bit):
        pre = x / scale
        mx = pre.max(dim=-1, keepdim=True)
        exp_int, slope = exp_shift_slope(pre - mx.values, x0, n, True)
        exp_max, slope_max = exp_shift_slope(-mx.values, x0, n, True)
        exp_sum = exp_int + exp_max
        sig, factor, recip = normalize_fwd(exp_int, exp_sum, output_bit)
        ctx.save_for_backward(scale, pre, sig, exp_int, factor, recip, exp_sum, mx.indices)
        ctx.slopes = slope, slope_max
        ctx.output_bit = output_bit
        return pre * sig

    @staticmethod
    def backward(ctx, g_out):
        scale, pre, sig, exp_int, factor, recip, exp_sum, idx = ctx.saved_tensors
        slope, slope_max = ctx.slopes
        g_pre = g_out * sig  # y = pre * sig: first into pre (the engine's order) ...
        g_exp, g_sum = normalize_bwd(g_out * pre, exp_int, factor, recip, exp_sum,
                                     ctx.output_bit, False)
        g_b = exp_shift_grad(g_exp.add_(g_sum), slope)  # into exp(pre - max)
        g_pre += g_b  # ... then through pre - max ...
        g_max = (-g_b.sum(dim=-1, keepdim=True)).sub_(exp_shift_grad(
            g_sum.sum(dim=-1, keepdim=True), slope_max))  # and into exp(-max)
        g_pre = scatter_max(g_pre, idx, g_max)  # ... then through the max
        return g_pre.div_(scale), None, None, None, None


def gelu_fused(x: Tensor, scale: Tensor, x0: Tensor, n: int, output_bit: int,
               out_scale: Tensor, ste: str = "inline") -> Tensor:
    if check_fusable(x, scale):
        return _IntGELUFused.apply(x, scale, x0, n, output_bit) * out_scale
    with torch.no_grad():
        pre = x / scale
        xm = pre.max(dim=-1, keepdim=True).values
        exp_int, _ = exp_shift_slope(pre - xm, x0, n, False)
        exp_max, _ = exp_shift_slope(-xm, x0, n, False)
        return pre * normalize_fwd(exp_int, exp_int + exp_max, output_bit)[0] * out_scale


class _IntGELULean(Function):
    @staticmethod
    def forward(ctx, x, scale, x0, n, output_bit, out_scale):
        pre = torch.div(x, scale)
        mx = pre.amax(dim=-1, keepdim=True)
        b = torch.sub(pre, mx)
        scratch = torch.empty_like(b)
        idx = first_max_index(b, scratch)
        exp_int, slope = exp_shift_lean(b, x0, n, scratch)
        exp_max, slope_max = exp_shift_lean(mx.neg(), x0, n)
        exp_sum = exp_int + exp_max
        recip = torch.clamp_max(exp_sum, INT32_MAX).reciprocal_()
        factor = torch.mul(recip, INT32_MAX).floor_()
        sig = torch.mul(exp_int, factor).mul_(2.0 ** (output_bit - 32)).floor_()
        # clamp_max's backward passes nothing where the sum reaches 2^31: folded into r^2
        rr = recip.mul_(recip).mul_(torch.lt(exp_sum, 2.0**31, out=exp_sum))
        ctx.save_for_backward(scale, pre, sig, exp_int, factor, rr, idx, x0, out_scale,
                              *slope, *slope_max)
        ctx.output_bit = output_bit
        return torch.mul(pre, sig).mul_(out_scale)

    @staticmethod
    def backward(ctx, g_out):
        scale, pre, sig, exp_int, factor, rr, idx, x0, out_scale, *slopes = ctx.saved_tensors
        g = torch.mul(g_out, out_scale)
        g_pre = torch.mul(g, sig)  # y = pre * sig: first into pre (the engine's order)
        gu = g.mul_(pre).mul_(2.0 ** (ctx.output_bit - 32))
        # rr first: exp_sum's layout (the chain's clamp_max backward is a where on a mask
        # of exp_sum's layout; its row sum below depends on it)
        g_sum = torch.mul(rr, torch.mul(gu, exp_int).mul_(INT32_MAX).neg_())
        g_b = exp_shift_grad_lean(gu.mul_(factor).add_(g_sum), *slopes[:3], x0)
        g_pre.add_(g_b)
        g_max = g_b.sum(dim=-1, keepdim=True).neg_().sub_(
            exp_shift_grad_lean(g_sum.sum(dim=-1, keepdim=True), *slopes[3:], x0))
        g_pre.scatter_add_(-1, idx, g_max)
        return g_pre.div_(scale), None, None, None, None, None


def gelu_lean(x: Tensor, scale: Tensor, x0: Tensor, n: int, output_bit: int,
              out_scale: Tensor, ste: str = "inline") -> Tensor:
    return _IntGELULean.apply(x, scale, x0, n, output_bit, out_scale)


GELU = {"chain": gelu_chain, "fused": gelu_fused, "lean": gelu_lean}
