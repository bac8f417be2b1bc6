"""The fused autograd nodes of IntSoftmax and IntGELU (flags fused_int_softmax and
fused_int_gelu): the integer forward of `qvit.primitives.int_exp_shift` and the modules'
normalization under no_grad, one node whose backward replays the legacy STE chain's."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd import Function

from .primitives import INT32_MAX

__all__ = ["LN2", "int_softmax", "int_gelu", "check_fusable"]

# --- fused integer softmax and GELU (flags fused_int_softmax, fused_int_gelu) --------------
#
# The same integer forward as `int_exp_shift` + the modules' normalization, computed under
# no_grad, with one autograd node whose backward replays the legacy STE graph's backward:
# every node's derivative formula as torch writes it (e.g. reciprocal: -g * (r * r); pow
# of a constant base: g * (p * ln 2)), every floor passed straight through, and every
# tensor that several nodes feed summed in the order autograd's engine sums it (nodes run
# latest-created first). The gradients are bit-identical to the legacy ones.

LN2 = 0.6931471805599453  # torch's pow backward: log(base) of the Scalar base 2


def _exp_shift_slope(b: Tensor, x0: Tensor, n: int, slope: bool
                     ) -> tuple[Tensor, tuple | None]:
    """`int_exp_shift`'s value of ``b`` (no grad) and, with ``slope``, what its backward
    (`_exp_shift_grad`) needs: the shifted mantissa e, the power p = 2^(n-q) and the two
    masks of the binary max (tie: half the gradient, torch's rule)."""
    c = b + torch.floor(b / 2)
    c -= torch.floor(b / 2**4)
    low = n * x0
    d = torch.max(c, low)
    q = torch.floor(d / x0)
    r = d - x0 * q
    e = r / 2 - x0
    p = 2 ** (n - q)
    exp_int = torch.clamp(torch.floor(e * p), min=0)  # e > 0: the clamp passes everything
    if not slope:
        return exp_int, None
    return exp_int, (e, p, c > low, c == low, x0)


def _exp_shift_grad(g: Tensor, saved: tuple) -> Tensor:
    """d loss / d b of `int_exp_shift`'s legacy graph from g = d loss / d exp.

    exp = floor(e * p): e gets g p, p gets g e; p = 2^(n - q) hands q -(g e)(p ln 2);
    e = r / 2 - x0 hands r (g p) / 2, which r = d - x0 q hands d and (times -x0) q; q =
    floor(d / x0) hands d its sum / x0; the max hands c its share; and b, used three times
    (c = b + floor(b/2) - floor(b/16)), is summed as the engine does: -g/16 + g first,
    then g/2."""
    e, p, above, tie, x0 = saved
    g_r = (g * p).div_(2)
    g_q = (g * e).mul_(p * LN2).neg_()
    g_q += g_r.neg() * x0
    g_d = g_q.div_(x0).add_(g_r)
    g_c = torch.where(tie, g_d / 2, g_d).masked_fill_(~(above | tie), 0)
    return (g_c / 2**4).neg_().add_(g_c).add_(g_c / 2)


def _normalize_fwd(exp_int: Tensor, exp_sum: Tensor, output_bit: int):
    """floor(exp_int * floor(I / min(sum, I)) / 2^(32-b)) and what its backward needs.
    ``I / t`` is written as torch evaluates it (Tensor.__rtruediv__: reciprocal, then *)."""
    recip = exp_sum.clamp_max(INT32_MAX).reciprocal()
    factor = torch.floor(recip * INT32_MAX)
    out = torch.floor(exp_int * factor / 2 ** (31 - output_bit + 1))
    return out, factor, recip


def _normalize_bwd(g_out: Tensor, exp_int: Tensor, factor: Tensor, recip: Tensor,
                   exp_sum: Tensor, output_bit: int, sum_dim: bool):
    """Gradients to exp_int (direct) and to exp_sum from g_out, by torch's formulas: mul
    (g * other, summed over broadcast dims), reciprocal (-g * (r * r)), clamp_max (where
    sum <= I, compared in double: a float32 sum of 2^31 gets none)."""
    gu = g_out / 2 ** (31 - output_bit + 1)
    g_factor = gu * exp_int
    if sum_dim:
        g_factor = g_factor.sum(dim=-1, keepdim=True)
    g_sum = g_factor.mul_(INT32_MAX).neg_().mul_(recip * recip)
    # a where on a mask of exp_sum's layout, as torch's clamp_max backward: the result
    # takes that layout (a row sum of it follows, which depends on the layout)
    g_sum = torch.where(exp_sum >= 2.0**31, 0.0, g_sum)
    return gu.mul_(factor), g_sum


def _scatter_max(g: Tensor, idx: Tensor, g_max: Tensor) -> Tensor:
    """Adds ``g_max`` (the gradient of a keepdim max over the last dim) at its index."""
    return g.scatter_add_(-1, idx, g_max)


class _IntSoftmaxFn(Function):
    @staticmethod
    def forward(ctx, x, scale, x0, n, output_bit):
        a = x / scale
        mx = a.max(dim=-1, keepdim=True)
        b = a - mx.values
        exp_int, slope = _exp_shift_slope(b, x0, n, True)
        exp_sum = exp_int.sum(dim=-1, keepdim=True)
        out, factor, recip = _normalize_fwd(exp_int, exp_sum, output_bit)
        ctx.save_for_backward(scale, exp_int, factor, recip, exp_sum, mx.indices)
        ctx.slope = slope
        ctx.output_bit = output_bit
        return out

    @staticmethod
    def backward(ctx, g_out):
        scale, exp_int, factor, recip, exp_sum, idx = ctx.saved_tensors
        g_exp, g_sum = _normalize_bwd(g_out, exp_int, factor, recip, exp_sum,
                                      ctx.output_bit, True)
        g_b = _exp_shift_grad(g_exp.add_(g_sum), ctx.slope)
        g_a = _scatter_max(g_b, idx, -g_b.sum(dim=-1, keepdim=True))
        return g_a.div_(scale), None, None, None, None


def check_fusable(x: Tensor, scale: Tensor) -> bool:
    """Whether the fused node applies: True when a gradient to ``x`` is wanted."""
    if not (torch.is_grad_enabled() and x.requires_grad):
        return False
    if scale.requires_grad:
        raise ValueError("the fused integer softmax/GELU pass no gradient to the scale; "
                         "detach the scale or turn fused_int_softmax/fused_int_gelu off")
    return True


def int_softmax(x: Tensor, scale: Tensor, x0_int: Tensor, n: int, output_bit: int) -> Tensor:
    """Integer softmax values floor(2^(b-1) * exp / sum) (Shiftmax) of ``x`` at ``scale``,
    fused: one autograd node (see above). The caller multiplies by the output scale."""
    if check_fusable(x, scale):
        return _IntSoftmaxFn.apply(x, scale, x0_int, n, output_bit)
    with torch.no_grad():
        a = x / scale
        b = a - a.max(dim=-1, keepdim=True).values
        exp_int, _ = _exp_shift_slope(b, x0_int, n, False)
        return _normalize_fwd(exp_int, exp_int.sum(dim=-1, keepdim=True), output_bit)[0]


class _IntGELUFn(Function):
    @staticmethod
    def forward(ctx, x, scale, x0, n, output_bit):
        pre = x / scale
        mx = pre.max(dim=-1, keepdim=True)
        exp_int, slope = _exp_shift_slope(pre - mx.values, x0, n, True)
        exp_max, slope_max = _exp_shift_slope(-mx.values, x0, n, True)
        exp_sum = exp_int + exp_max
        sig, factor, recip = _normalize_fwd(exp_int, exp_sum, output_bit)
        ctx.save_for_backward(scale, pre, sig, exp_int, factor, recip, exp_sum, mx.indices)
        ctx.slopes = slope, slope_max
        ctx.output_bit = output_bit
        return pre * sig

    @staticmethod
    def backward(ctx, g_out):
        scale, pre, sig, exp_int, factor, recip, exp_sum, idx = ctx.saved_tensors
        slope, slope_max = ctx.slopes
        g_pre = g_out * sig  # y = pre * sig: first into pre (the engine's order) ...
        g_exp, g_sum = _normalize_bwd(g_out * pre, exp_int, factor, recip, exp_sum,
                                      ctx.output_bit, False)
        g_b = _exp_shift_grad(g_exp.add_(g_sum), slope)  # into exp(pre - max)
        g_pre += g_b  # ... then through pre - max ...
        g_max = (-g_b.sum(dim=-1, keepdim=True)).sub_(_exp_shift_grad(
            g_sum.sum(dim=-1, keepdim=True), slope_max))  # and into exp(-max)
        g_pre = _scatter_max(g_pre, idx, g_max)  # ... then through the max
        return g_pre.div_(scale), None, None, None, None


def int_gelu(x: Tensor, scale: Tensor, x0_int: Tensor, n: int, output_bit: int) -> Tensor:
    """ShiftGELU values pre * sigmoid_int of ``x`` at ``scale`` (``x0_int`` of the sigmoid's
    scale 1.702 * scale), fused: one autograd node. The caller multiplies by the output
    scale."""
    if check_fusable(x, scale):
        return _IntGELUFn.apply(x, scale, x0_int, n, output_bit)
    with torch.no_grad():
        pre = x / scale
        xm = pre.max(dim=-1, keepdim=True).values
        exp_int, _ = _exp_shift_slope(pre - xm, x0_int, n, False)
        exp_max, _ = _exp_shift_slope(-xm, x0_int, n, False)
        return pre * _normalize_fwd(exp_int, exp_int + exp_max, output_bit)[0]
