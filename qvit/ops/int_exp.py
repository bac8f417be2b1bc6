"""The shift-based integer exp (I-ViT's Shiftmax/ShiftGELU) and the integer normalization
that IntSoftmax and IntGELU share: the chain's pieces (STE primitives), the fused nodes'
value-and-slope form with its backward, and the lean nodes' in-place form with its
backward. `qvit.ops.softmax` and `qvit.ops.gelu` assemble them into each path.

The fused and lean backwards replay the chain's: every node's derivative formula as torch
writes it (reciprocal: -g * (r * r); pow of a constant base: g * (p * ln 2)), every floor
passed straight through, and every tensor that several nodes feed summed in the order
autograd's engine sums it (nodes run latest-created first). Where the lean forms differ
from the fused ones they use exact IEEE-754 facts: multiplying by a power of two is exact,
``x / 2 == x * 0.5``; a float32 integer k in [-126, 127] gives 2^k from its exponent bits
``(k + 127) << 23``; masks become multiplications by 0, 1/2 or 1 (a zeroed gradient may be
-0.0 where the chain has +0.0: equal under ``torch.equal`` and in every later sum).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .ste import FLOOR

__all__ = ["INT32_MAX", "LN2", "exp_x0_int", "int_exp_shift", "normalize",
           "exp_shift_slope", "exp_shift_grad", "normalize_fwd", "normalize_bwd",
           "scatter_max", "check_fusable", "pow2_int", "first_max_index", "exp_shift_lean",
           "exp_shift_grad_lean"]

INT32_MAX = 2**31 - 1
LN2 = 0.6931471805599453  # torch's pow backward: log(base) of the Scalar base 2


# --- the chain ----------------------------------------------------------------------------

def exp_x0_int(scaling_factor: Tensor) -> Tensor:
    """x0_int = floor(-1 / scale): the integer of -ln 2 after the shift approximation."""
    with torch.no_grad():
        return torch.floor(-1.0 / scaling_factor)


def int_exp_shift(x_int: Tensor, scaling_factor: Tensor, n: int, *,
                  x0_int: Tensor | None = None, ste: str = "inline"
                  ) -> tuple[Tensor, Tensor]:
    """Shift-based integer exp of non-positive ``x_int`` (I-ViT Shiftmax/ShiftGELU).

    e^x = 2^(x log2 e) with x log2 e ~ x + x/2 - x/16; then 2^(-q) * (1 + r/2) with the
    quotient q and remainder r of division by x0 = -1 (in integer units). ``n`` bounds the
    shift (the result is scaled by 2^n). ``x0_int`` may be passed in (cached in eval).
    """
    floor = FLOOR[ste]
    x_int = x_int + floor(x_int / 2) - floor(x_int / 2**4)
    if x0_int is None:
        x0_int = exp_x0_int(scaling_factor)
    x_int = torch.max(x_int, n * x0_int)
    q = floor(x_int / x0_int)
    r = x_int - x0_int * q
    exp_int = r / 2 - x0_int
    exp_int = torch.clamp(floor(exp_int * 2 ** (n - q)), min=0)
    return exp_int, scaling_factor / 2**n


def normalize(exp_int: Tensor, exp_sum: Tensor, output_bit: int, ste: str = "inline"
              ) -> Tensor:
    """floor(exp_int / exp_sum * 2^(output_bit-1)) with integer ops only (the chain)."""
    floor = FLOOR[ste]
    factor = floor(INT32_MAX / exp_sum.clamp_max(INT32_MAX))
    return floor(exp_int * factor / 2 ** (31 - output_bit + 1))


# --- the fused nodes' pieces --------------------------------------------------------------

def exp_shift_slope(b: Tensor, x0: Tensor, n: int, slope: bool
                    ) -> tuple[Tensor, tuple | None]:
    """`int_exp_shift`'s value of ``b`` (no grad) and, with ``slope``, what its backward
    (`exp_shift_grad`) needs: the shifted mantissa e, the power p = 2^(n-q) and the two
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


def exp_shift_grad(g: Tensor, saved: tuple) -> Tensor:
    """d loss / d b of `int_exp_shift`'s chain from g = d loss / d exp.

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


def normalize_fwd(exp_int: Tensor, exp_sum: Tensor, output_bit: int):
    """floor(exp_int * floor(I / min(sum, I)) / 2^(32-b)) and what its backward needs.
    ``I / t`` is written as torch evaluates it (Tensor.__rtruediv__: reciprocal, then *)."""
    recip = exp_sum.clamp_max(INT32_MAX).reciprocal()
    factor = torch.floor(recip * INT32_MAX)
    out = torch.floor(exp_int * factor / 2 ** (31 - output_bit + 1))
    return out, factor, recip


def normalize_bwd(g_out: Tensor, exp_int: Tensor, factor: Tensor, recip: Tensor,
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


def scatter_max(g: Tensor, idx: Tensor, g_max: Tensor) -> Tensor:
    """Adds ``g_max`` (the gradient of a keepdim max over the last dim) at its index."""
    return g.scatter_add_(-1, idx, g_max)


def check_fusable(x: Tensor, scale: Tensor) -> bool:
    """Whether the fused node applies: True when a gradient to ``x`` is wanted."""
    if not (torch.is_grad_enabled() and x.requires_grad):
        return False
    if scale.requires_grad:
        raise ValueError("the fused integer softmax/GELU pass no gradient to the scale; "
                         "detach the scale or set int_exp_impl=reference")
    return True


# --- the lean nodes' pieces ---------------------------------------------------------------

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


def exp_shift_lean(b: Tensor, x0: Tensor, n: int, scratch: Tensor | None = None
                   ) -> tuple[Tensor, tuple]:
    """`int_exp_shift`'s value of ``b`` and what its backward needs: the weight w of the
    max(c, n x0) (1 above, 1/2 at a tie, 0 below), the mantissa e and the power
    p = 2^(n - q). ``b``'s buffer becomes w; ``scratch`` (b's shape and layout), when
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


def exp_shift_grad_lean(g: Tensor, w: Tensor, e: Tensor, p: Tensor, x0: Tensor) -> Tensor:
    """d loss / d b from g = d loss / d exp (``g`` is consumed), the operations of
    `exp_shift_grad` in its order: g_r = (g p) / 2; g_q = -(g e)(p ln 2) - g_r x0; g_d =
    g_q / x0 + g_r; times w; then -g/16 + g + g/2. From the max on, the result takes b's
    memory layout (w's), as the chain's does (its max backward is a ``where`` on a mask of
    b's layout): the row sums after it depend on the layout."""
    g_r = torch.mul(g, p, out=torch.empty_like(w)).mul_(0.5)
    t = torch.mul(p, LN2, out=torch.empty_like(w))
    g.mul_(e).mul_(t).neg_()
    g.sub_(torch.mul(g_r, x0, out=t))
    g.div_(x0).add_(g_r)
    g_c = torch.mul(w, g, out=t)  # w first: w's layout
    out = torch.mul(g_c, -0.0625, out=g_r).add_(g_c)
    return out.add_(torch.mul(g_c, 0.5, out=g))
