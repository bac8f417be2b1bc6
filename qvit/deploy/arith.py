"""The integer arithmetic of the deployed model: pure functions on integer tensors.

Every function takes and returns integer tensors (int8/int16/int32/int64) and computes
in int64 where a product could leave int32; nothing here rounds through a float. The
formulas are I-ViT's integer deployment arithmetic (the QAT code's float32 formulas with
every quantity an exact integer): `qvit.reference` states each one on Python integers and
the tests hold these to it.

* `requantize`: round_half_even(z * m / 2^e), the dyadic requantizer, in three integer ops;
* `round_div`: round_half_even(s / d) for a positive integer d (means, pooling);
* `shift_exp`: I-ViT's shift-based integer exp (Shiftmax and ShiftGELU share it);
* `shiftmax`, `shift_gelu`, `int_layernorm` (with `isqrt_newton`).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["NORM_ONE", "NEWTON_START", "NEWTON_ITERATIONS", "EXP_SHIFT_CAP", "requantize",
           "clamp_bits", "round_div", "shift_exp", "shiftmax", "shift_gelu", "isqrt_newton",
           "int_layernorm"]

# The numerator of the integer divisions floor(I / t) (Shiftmax, ShiftGELU, I-LayerNorm) and
# the clamp of t: I-ViT writes INT32_MAX = 2^31 - 1, but computes in float32, where that
# constant is 2^31; 2^31 is what every trained model has computed with. (With 2^31 - 1,
# ShiftGELU, whose sums reach 2^30, would halve its sigmoid wherever a sum is a power of 2.)
NORM_ONE = 2**31
NEWTON_START = 2**16  # I-LayerNorm's Newton sqrt: 10 steps from 2^16
NEWTON_ITERATIONS = 10
# shift_exp of a positive argument (ShiftGELU's exp(-max) where every channel is negative)
# needs shifts beyond 63; from 2^40 on the value only enters a sum clamped to NORM_ONE,
# so the shift is capped there (the clamp then gives what the uncapped value gives).
EXP_SHIFT_CAP = 40

_DTYPES = {8: torch.int8, 16: torch.int16, 32: torch.int32}


def requantize(z: Tensor, m: Tensor, e: Tensor, half_m1: Tensor) -> Tensor:
    """round_half_even(z * m / 2^e) in int64, with ``half_m1 = 2^(e-1) - 1``: adding
    half_m1 and the parity bit of floor(z m / 2^e) before the floor shift rounds ties to
    even (remainder < half: stays; > half: up; == half: up exactly when the floor is odd).
    Needs |z * m| < 2^62 and 1 <= e <= 62 (checked where (m, e) are made)."""
    prod = z.to(torch.int64) * m
    return (prod + half_m1 + ((prod >> e) & 1)) >> e


def clamp_bits(t: Tensor, bits: int) -> Tensor:
    """Clamp to signed ``bits`` integers, stored in the narrowest integer type."""
    n = 2 ** (bits - 1)
    return t.clamp(-n, n - 1).to(_DTYPES.get(bits, torch.int64))


def round_div(s: Tensor, d: int) -> Tensor:
    """round_half_even(s / d) for integer ``s`` and a positive integer ``d``."""
    q = torch.div(s, d, rounding_mode="floor")
    r2 = (s - q * d) * 2
    return q + ((r2 > d) | ((r2 == d) & (q % 2 == 1))).to(q.dtype)


def shift_exp(b: Tensor, x0: Tensor, n: int) -> Tensor:
    """I-ViT's shift exp of integers ``b`` (int64; b <= 0 in Shiftmax) with x0 =
    floor(-1 / scale) < 0 and shift bound ``n``: c = b + floor(b/2) - floor(b/16),
    d = max(c, n x0), q = floor(d / x0), r = d - x0 q, exp = floor((r/2 - x0) 2^(n-q)),
    that is ((r - 2 x0) << (n - q)) >> 1 (r - 2 x0 > 0, so no clamp at 0 is needed)."""
    c = b + (b >> 1) - (b >> 4)
    d = torch.maximum(c, n * x0)
    q = torch.div(d, x0, rounding_mode="floor")
    r = d - x0 * q
    return ((r - 2 * x0) << (n - q).clamp_max(EXP_SHIFT_CAP)) >> 1


def shiftmax(x: Tensor, x0: Tensor, n: int, output_bit: int) -> Tensor:
    """Integer softmax over the last dim: floor(exp * floor(I / sum) / 2^(32 - bits)),
    I = 2^31 (`NORM_ONE`), the sum clamped to I; values in [0, 2^(bits-1) - 1]."""
    x = x.to(torch.int64)
    e = shift_exp(x - x.amax(dim=-1, keepdim=True), x0, n)
    factor = torch.div(NORM_ONE, e.sum(dim=-1, keepdim=True).clamp_max(NORM_ONE),
                       rounding_mode="floor")
    return ((e * factor) >> (32 - output_bit)).to(_DTYPES[16 if output_bit > 8 else 8])


def shift_gelu(x: Tensor, x0: Tensor, n: int, output_bit: int) -> Tensor:
    """ShiftGELU: x * sigmoid, the sigmoid floor(exp(x - max) * floor(I / sum) /
    2^(32 - bits)) with sum = exp(x - max) + exp(-max) clamped to I (max over the last
    dim, x0 of the sigmoid's scale 1.702 s). int32 out (|x| * 2^(bits-1) at most)."""
    x = x.to(torch.int64)
    xm = x.amax(dim=-1, keepdim=True)
    e = shift_exp(x - xm, x0, n)
    total = (e + shift_exp(-xm, x0, n)).clamp_max(NORM_ONE)
    sig = (e * torch.div(NORM_ONE, total, rounding_mode="floor")) >> (32 - output_bit)
    return (x * sig).to(torch.int32)


def isqrt_newton(v: Tensor, iterations: int = NEWTON_ITERATIONS) -> Tensor:
    """I-LayerNorm's integer square root: k <- floor((k + floor(v / k)) / 2) from 2^16."""
    k = torch.full_like(v, NEWTON_START)
    for _ in range(iterations):
        k = (k + torch.div(v, k, rounding_mode="floor")) >> 1
    return k


def int_layernorm(x: Tensor, bias_int: Tensor) -> Tensor:
    """I-LayerNorm over the last dim: y = x - round(mean x), std = isqrt_newton(sum y^2),
    floor(y * floor(I / std) / 2) + bias_int (int64; scale sqrt(C)/2^30 * weight)."""
    x = x.to(torch.int64)
    y = x - round_div(x.sum(dim=-1, keepdim=True), x.shape[-1])
    std = isqrt_newton((y * y).sum(dim=-1, keepdim=True))
    return ((y * torch.div(NORM_ONE, std, rounding_mode="floor")) >> 1) + bias_int
