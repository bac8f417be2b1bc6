"""Lean, exact implementations of the hot paths: each quant module's work as one autograd
node with few full-size passes, most of them in place, and small saved state.

Every function here computes the same bits as the reference path it replaces (the legacy
STE chain, `qvit.primitives`, `qvit.fused`), for finite values: the same floating-point
operations on the same operands in the same order, or operations proven to give the same
result. The proofs used, each a property of IEEE-754 round-to-nearest arithmetic:

* multiplying or dividing by a power of two is exact (no overflow, no subnormal result),
  so ``x / 2 == x * 0.5`` and ``fl(z * m) / 2^e == fl(z * (m * 2^-e))``;
* ``a + b == b + a`` and ``a * b == b * a`` (so two-term gradient sums may arrive in either
  order); ``-(a * b) == (-a) * b``; ``a - b == a + (-b)``; ``a - b == 0`` iff ``a == b``
  (gradual underflow);
* a float32 holding an integer k in [-126, 127] gives ``2^k`` exactly from its exponent
  bits, ``(k + 127) << 23``; a float64 ratio rounded to 31 significant bits, ties away from
  zero, is ``m * 2^-e`` of the 31-bit frexp (`qvit.primitives.frexp_device`).

Masks (``where``, ``masked_fill``) become multiplications by 0, 1/2 or 1: the same values,
except that a zeroed gradient may be -0.0 where the reference has +0.0 (equal under
``torch.equal`` and in every later sum). All float32 only: callers fall back to the
reference paths for other dtypes.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd import Function

from .fused import LN2
from .primitives import INT32_MAX, act_scale_shape, newton_sqrt_backward, newton_sqrt_forward

__all__ = ["dyadic_multiplier", "requantize", "quantize_act", "first_max_index",
           "int_softmax", "int_gelu", "int_layer_norm", "pow2_int"]

_ROUND_BIT = 1 << (52 - 31)  # half a unit in the 31st significant bit of a float64
_KEEP_31 = -(1 << (52 - 30))  # clears the 22 low mantissa bits (int64 two's complement)


# --- requantization -----------------------------------------------------------------------

def dyadic_multiplier(in_scale: Tensor, out_scale: Tensor) -> Tensor:
    """m * 2^-e (float64) for (m, e) = frexp31(in_scale / out_scale), from the ratio's bits:
    adding half a unit of the 31st significant bit to the bit pattern and clearing the bits
    below it rounds the (positive, normal) ratio to 31 significant bits, ties away from
    zero: the rounding of frexp's Decimal ROUND_HALF_UP; a carry into the exponent is the
    mantissa rounding up to 2^31. Two integer ops instead of frexp, pow and division."""
    ratio = in_scale.to(torch.float64) / out_scale.to(torch.float32).to(torch.float64)
    bits = ratio.view(torch.int64)
    return ((bits + _ROUND_BIT) & _KEEP_31).view(torch.float64)


def _rescale(v: Tensor, scale: Tensor, out_scale: Tensor) -> Tensor:
    """round(round(v / scale) * m * 2^-e) in float64: one addend of the requantizer."""
    z = torch.div(v, scale).round_()
    # (a mixed float32 x float64 multiply would take torch's slow casting loop)
    return z.to(torch.float64).mul_(dyadic_multiplier(scale, out_scale)).round_(), z


class _Requantize(Function):
    """QuantAct's requantization and its output scale: forward
    clamp(round(x/s_x) * r_x [+ round(id/s_id) * r_id]) * s (float64 where the product
    needs it, in place elsewhere); backward (g * s) / s to x and to the residual, the
    module's multiply then the STE's division. Outputs keep the reference's memory layouts
    (x's, or the residual's where one is added; a gradient's, its incoming one's): later
    reductions sum in an order that depends on the layout."""

    @staticmethod
    def forward(ctx, x, identity, in_scale, id_scale, scale, lo, hi):
        t, out = _rescale(x, in_scale, scale)
        if identity is not None:  # the sum takes the residual's memory layout, as the
            ti, zi = _rescale(identity, id_scale, scale)  # reference's does
            if ti.shape == t.shape:
                t, out = ti.add_(t), zi
            else:
                t = ti + t
                out = torch.empty_like(t, dtype=x.dtype)
        out.copy_(t)
        if lo is not None:
            out.clamp_(lo, hi)
        ctx.save_for_backward(scale)
        ctx.has_identity = identity is not None
        return out.mul_(scale)

    @staticmethod
    def backward(ctx, g):
        (s,) = ctx.saved_tensors
        gx = torch.mul(g, s).div_(s)
        # the same values for the residual: one tensor for both (autograd copies or sums
        # where it has to; it accumulates in place only into unshared buffers)
        return gx, (gx if ctx.has_identity else None), None, None, None, None, None


def requantize(x: Tensor, pre_scale: Tensor, scale: Tensor, num_bits: int,
               identity: Tensor | None = None, id_scale: Tensor | None = None) -> Tensor:
    """`qvit.primitives.fixedpoint_mul` (float64, frexp) times the output scale, as one
    node: the same values and gradients as the reference requantizer followed by the
    module's ``q * scale``."""
    shape = act_scale_shape(x)
    n = 2 ** (num_bits - 1) - 1
    lo, hi = (-n - 1, n) if num_bits in (4, 8, 16, 32) else (None, None)
    return _Requantize.apply(x, identity, pre_scale.view(shape), None if identity is None
                             else id_scale.view(shape), scale, lo, hi)



class _QuantizeAct(Function):
    """QuantAct's input quantization times its scale: clamp(round((1/s) * x)) * s, backward
    (g * s) / s."""

    @staticmethod
    def forward(ctx, x, scale, lo, hi):
        ctx.save_for_backward(scale)
        return torch.mul(1.0 / scale, x).round_().clamp_(lo, hi).mul_(scale)

    @staticmethod
    def backward(ctx, g):
        (s,) = ctx.saved_tensors
        return torch.mul(g, s).div_(s), None, None, None


def quantize_act(x: Tensor, scale: Tensor, num_bits: int) -> Tensor:
    """Symmetric ``num_bits`` quantization of an activation at its (one-element) scale,
    times the scale, as one node."""
    n = 2 ** (num_bits - 1) - 1
    return _QuantizeAct.apply(x, scale, -n - 1, n)


# --- the shift-based integer exp (IntSoftmax, IntGELU) ---------------------------------------

def pow2_int(k: Tensor, out: Tensor | None = None) -> Tensor:
    """2^k for a float32 tensor of integers k in [-126, 127], from the exponent bits (in
    ``out``, an int32 tensor of k's shape, when given)."""
    bits = k.to(torch.int32) if out is None else out.copy_(k)
    return bits.add_(127).bitwise_left_shift_(23).view(torch.float32)


def first_max_index(b: Tensor, scratch: Tensor) -> Tensor:
    """The index (int64, keepdim) of the first zero in each row of b = a - max(a): the index
    torch.max(dim) returns (its first maximal value). Three float passes, in ``scratch``
    (b's shape and layout), instead of the indexed reduction."""
    n = b.shape[-1]
    hit = torch.eq(b, 0, out=scratch)
    hit.mul_(torch.arange(n, 0, -1, dtype=b.dtype, device=b.device))
    return hit.amax(dim=-1, keepdim=True).neg_().add_(n).clamp_(0, n - 1).long()


def _exp_shift(b: Tensor, x0: Tensor, n: int, scratch: Tensor | None = None
               ) -> tuple[Tensor, tuple]:
    """`qvit.primitives.int_exp_shift`'s value of ``b`` and what its backward needs: the
    weight w of the max(c, n x0) (1 above, 1/2 at a tie, 0 below), the mantissa e and the
    power p = 2^(n - q). ``b``'s buffer becomes w; ``scratch`` (b's shape and layout), when
    given, becomes e."""
    c = torch.mul(b, 0.5) if scratch is None else torch.mul(b, 0.5, out=scratch)
    c.floor_().add_(b)  # b + floor(b / 2)
    c.sub_(b.mul_(0.0625).floor_())  # - floor(b / 16)
    low = x0 * n
    w = torch.sub(c, low, out=b).sign_().add_(1).mul_(0.5)
    d = c.clamp_(min=low)
    q = torch.div(d, x0).floor_()
    t = torch.mul(q, x0)
    e = d.sub_(t).mul_(0.5).sub_(x0)  # r = d - x0 q; e = r / 2 - x0
    p = pow2_int(q.neg_().add_(n), out=t.view(torch.int32))  # n - q in [0, n]
    exp_int = torch.mul(e, p, out=q).floor_().clamp_(min=0)
    return exp_int, (w, e, p)


def _exp_shift_grad(g: Tensor, w: Tensor, e: Tensor, p: Tensor, x0: Tensor) -> Tensor:
    """d loss / d b from g = d loss / d exp (``g`` is consumed), the operations of
    `qvit.fused`'s exp backward in its order: g_r = (g p) / 2; g_q = -(g e)(p ln 2) -
    g_r x0; g_d = g_q / x0 + g_r; times w; then -g/16 + g + g/2. From the max on, the
    result takes b's memory layout (w's), as the reference's does (its max backward is a
    ``where`` on a mask of b's layout): the row sums after it depend on the layout."""
    g_r = torch.mul(g, p, out=torch.empty_like(w)).mul_(0.5)
    t = torch.mul(p, LN2, out=torch.empty_like(w))
    g.mul_(e).mul_(t).neg_()
    g.sub_(torch.mul(g_r, x0, out=t))
    g.div_(x0).add_(g_r)
    g_c = torch.mul(w, g, out=t)  # w first: w's layout
    out = torch.mul(g_c, -0.0625, out=g_r).add_(g_c)
    return out.add_(torch.mul(g_c, 0.5, out=g))


class _IntSoftmax(Function):
    @staticmethod
    def forward(ctx, x, scale, x0, n, output_bit, out_unit):
        b = torch.div(x, scale)
        b.sub_(b.amax(dim=-1, keepdim=True))
        scratch = torch.empty_like(b)
        idx = first_max_index(b, scratch)
        exp_int, slope = _exp_shift(b, x0, n, scratch)
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
        g_b = _exp_shift_grad(g.mul_(factor).add_(g_sum), *slope, x0)
        g_b.scatter_add_(-1, idx, g_b.sum(dim=-1, keepdim=True).neg_())
        return g_b.div_(scale), None, None, None, None, None


def int_softmax(x: Tensor, scale: Tensor, x0: Tensor, n: int, output_bit: int,
                out_unit: Tensor) -> Tensor:
    """IntSoftmax (Shiftmax) of ``x`` at ``scale`` times ``out_unit``, as one lean node:
    the values and gradients of the legacy chain (`qvit.fused.int_softmax` * out_unit)."""
    return _IntSoftmax.apply(x, scale, x0, n, output_bit, out_unit)


class _IntGELU(Function):
    @staticmethod
    def forward(ctx, x, scale, x0, n, output_bit, out_scale):
        pre = torch.div(x, scale)
        mx = pre.amax(dim=-1, keepdim=True)
        b = torch.sub(pre, mx)
        scratch = torch.empty_like(b)
        idx = first_max_index(b, scratch)
        exp_int, slope = _exp_shift(b, x0, n, scratch)
        exp_max, slope_max = _exp_shift(mx.neg(), x0, n)
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
        # rr first: exp_sum's layout (the reference's clamp_max backward is a where on a
        # mask of exp_sum's layout; its row sum below depends on it)
        g_sum = torch.mul(rr, torch.mul(gu, exp_int).mul_(INT32_MAX).neg_())
        g_b = _exp_shift_grad(gu.mul_(factor).add_(g_sum), *slopes[:3], x0)
        g_pre.add_(g_b)
        g_max = g_b.sum(dim=-1, keepdim=True).neg_().sub_(
            _exp_shift_grad(g_sum.sum(dim=-1, keepdim=True), *slopes[3:], x0))
        g_pre.scatter_add_(-1, idx, g_max)
        return g_pre.div_(scale), None, None, None, None, None


def int_gelu(x: Tensor, scale: Tensor, x0: Tensor, n: int, output_bit: int,
             out_scale: Tensor) -> Tensor:
    """ShiftGELU of ``x`` at ``scale`` (``x0`` of the sigmoid's scale) times ``out_scale``,
    as one lean node: the values and gradients of the legacy chain."""
    return _IntGELU.apply(x, scale, x0, n, output_bit, out_scale)


# --- I-LayerNorm --------------------------------------------------------------------------

class _IntLayerNorm(Function):
    """IntLayerNorm's forward, ``(floor(y * floor(I / sqrt_int(var)) / 2) + bias_int) *
    s0 w`` with y = x/s - round(mean(x/s)), and the legacy graph's backward to x and the
    weight, each node's formula as torch writes it (mean: g / C; pow: g * (2 y);
    reciprocal: -g * (r * r); mul: g * other, summed to the operand's shape by sum_to_size,
    autograd's own reduction); the two tensors that take two gradients (y and x/s) sum
    them in either order (a two-term sum commutes)."""

    @staticmethod
    def forward(ctx, x, scale, weight, bias_int, s0, iterations):
        y = torch.div(x, scale)
        mean = y.mean(dim=-1, keepdim=True).round_()
        y.sub_(mean)
        t = torch.mul(y, y)
        var = t.sum(dim=-1, keepdim=True)
        std, newton = newton_sqrt_forward(var, iterations)
        recip = std.reciprocal()
        factor = torch.floor(recip * INT32_MAX)
        # (traced: a new buffer, of t's layout; dynamo refuses out= where that is not
        # contiguous, as on Swin's channel-strided tokens)
        s = torch.mul(y, factor, out=None if torch.compiler.is_compiling() else t)
        s.mul_(0.5).floor_().add_(bias_int)
        out_scale = s0 * weight
        ctx.save_for_backward(y, s, factor, recip, out_scale, scale, s0, *newton)
        return torch.mul(s, out_scale)

    @staticmethod
    def backward(ctx, g_out):
        y, s, factor, recip, out_scale, scale, s0, *newton = ctx.saved_tensors
        g_weight = None
        if ctx.needs_input_grad[2]:
            g_weight = torch.mul(g_out, s).sum_to_size(out_scale.shape).mul_(s0)
        g = torch.mul(g_out, out_scale).mul_(0.5)  # into s, through the floor, / 2
        g_factor = torch.mul(g, y).sum_to_size(factor.shape)
        g_std = g_factor.mul_(INT32_MAX).neg_().mul_(recip * recip)
        g_var = newton_sqrt_backward(g_std, tuple(newton))
        g.mul_(factor).add_(torch.mul(y, g_var).mul_(2))  # y's two gradients
        g.add_(g.sum_to_size(factor.shape).neg_().div_(y.shape[-1]))  # mean's, then x/s's
        return g.div_(scale), None, g_weight, None, None, None


def int_layer_norm(x: Tensor, scale: Tensor, weight: Tensor, bias_int: Tensor, s0: Tensor,
                   iterations: int = 10) -> Tensor:
    """IntLayerNorm's output (values times the output scale s0 * weight) as one lean node,
    gradients to ``x`` and ``weight`` as the legacy chain's (``bias_int`` carries none)."""
    return _IntLayerNorm.apply(x, scale, weight, bias_int, s0, iterations)
