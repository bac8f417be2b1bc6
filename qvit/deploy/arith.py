"""The integer arithmetic of the deployed model: pure functions on integer tensors.

Every function takes and returns integer tensors (int8/int16/int32/int64) and computes
in int64 where a product could leave int32; nothing here rounds through a float. The
formulas are I-ViT's integer deployment arithmetic (the QAT code's float32 formulas with
every quantity an exact integer): `qvit.reference` states each one on Python integers and
the tests hold these to it.

* `requantize`: round_half_even(z * m / 2^e), the dyadic requantizer, in three integer ops;
  `requantize_float64` the same integers from float64 operations (`split_multiplier`),
  for processors whose vectors have no int64 multiply or arithmetic shift (AVX2);
* `floor_div`: floor(a / b), exactly, through one float64 division (vectorized, where
  int64 division is not);
* `round_div`: round_half_even(s / d) for a positive integer d (means, pooling);
* `shift_exp`: I-ViT's shift-based integer exp (Shiftmax and ShiftGELU share it);
* `shiftmax`, `shift_gelu`, `int_layernorm` (with `isqrt_newton`);
* the same by lookup tables, built from the functions above (so equal by construction,
  and tested on every input they take): `exp_table` with `shiftmax_by_table` (the shift
  exp of x - max(x) is one of a few hundred values, saturating below n x0), and
  `gelu_table` with `gelu_by_table` (ShiftGELU of an int8 x, requantized to int8, depends
  only on x and its row's max: 256 x 256 int8 entries, the sigmoid's per-element
  division and the requantizer's multiply included).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["NORM_ONE", "NEWTON_START", "NEWTON_ITERATIONS", "EXP_SHIFT_CAP", "requantize",
           "FLOAT64_REQUANT_E", "float64_requant_exact", "split_multiplier",
           "requantize_float64",
           "clamp_bits", "FLOAT_DIVISION_BOUND", "floor_div", "round_div", "shift_exp",
           "shiftmax", "shift_gelu", "gelu_given_max", "isqrt_newton", "int_layernorm",
           "EXP_TABLE_LIMIT", "exp_table", "shiftmax_by_table", "gelu_table",
           "gelu_by_table"]

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


# AVX2 has no int64 vector multiply and no int64 arithmetic shift: compiled, `requantize`
# runs near scalar speed there, while float64 vectors multiply, floor and round. Splitting
# the 31-bit m at bit 16 keeps every float64 product exact; the last sum bounds e from
# above (exact below 2, 2^(e+1) units of 2^-e, up to e = 52; at or above 2 it rounds, but
# to a value below 2.5 that rounds to 2 as the exact one does), the result from below
# (|z m| < 2^62, so |z m / 2^e| < 2^52 from e = 10). I-LayerNorm's requantizers sit at 52
FLOAT64_REQUANT_E = (10, 52)
_SPLIT = 16


def float64_requant_exact(m: Tensor, e: Tensor) -> bool:
    """Whether `requantize_float64` gives `requantize`'s integers for every (m, e) pair
    here: m a 31-bit mantissa (2^30 <= m < 2^31, as `frexp` gives) and e within
    `FLOAT64_REQUANT_E` (and |z m| < 2^62, as `requantize` needs)."""
    lo, hi = FLOAT64_REQUANT_E
    return bool(((m >= 2**30) & (m < 2**31) & (e >= lo) & (e <= hi)).all())


def split_multiplier(m: Tensor, e: Tensor) -> tuple[Tensor, Tensor]:
    """(mh, ml) float64 with m 2^-e = mh + ml: floor(m / 2^16) 2^(16-e) and
    (m mod 2^16) 2^-e, the constants of `requantize_float64` (both exact)."""
    m, e = m.to(torch.int64), e.to(torch.float64)
    return ((m >> _SPLIT).to(torch.float64) * torch.exp2(_SPLIT - e),
            (m & (2**_SPLIT - 1)).to(torch.float64) * torch.exp2(-e))


def requantize_float64(z: Tensor, mh: Tensor, ml: Tensor) -> Tensor:
    """round_half_even(z * m / 2^e), as `requantize`, in float64 (an exact integer), from
    `split_multiplier`'s constants, where `float64_requant_exact`. Exact: |z| < 2^32
    (|z m| < 2^62, m >= 2^30), so a = z mh (|z floor(m / 2^16)| < 2^47) and b = z ml
    (< 2^48 units of 2^-e) are exact products; q, the even integer below a, is exact;
    a - q in [0, 2) is an exact difference; s = (a - q) + b, with |b| < 2^(48-e) <= 1/16,
    is exact below 2 for e <= 52 (fewer than 2^53 units of 2^-e) and rounds to [2, 2.5)
    from [2, 2.0625) above it: either way round(s) is the exact one's; q is even, so
    rounding half to even after subtracting it rounds as before; the result is below
    2^52."""
    zf = z.to(torch.float64)
    a = zf * mh
    q = torch.floor(a * 0.5) * 2
    return q + torch.round((a - q) + zf * ml)


def clamp_bits(t: Tensor, bits: int) -> Tensor:
    """Clamp to signed ``bits`` integers, stored in the narrowest integer type (``t``:
    integer, or float64 holding integers)."""
    n = 2 ** (bits - 1)
    return t.clamp(-n, n - 1).to(_DTYPES.get(bits, torch.int64))


# x86 has no SIMD integer division: an int64 floor division runs element by element (in
# aten's kernels and in inductor's C++), and the per-element ones (Shiftmax's and ShiftGELU's
# exp, ShiftGELU's sigmoid, I-LayerNorm's factor where inductor inlines it) took most of a
# deployed ViT's time. One float64 division, floored, gives the same integer (`floor_div`)
FLOAT_DIVISION_BOUND = 2**52


def floor_div(a: Tensor | int, b: Tensor | int) -> Tensor:
    """floor(a / b) of integers (int64 tensors or ints; b != 0) with |a| + |b| <
    `FLOAT_DIVISION_BOUND`, as an int64 tensor: one float64 division, floored. Exact: both
    operands are exact in float64, and a quotient that is not an integer lies at least
    1/|b| from the next one, while float64 rounds it by at most (|a|/|b| + 1) 2^-53 <
    1/|b| there: the rounded quotient never reaches an integer the exact one does not.
    Under ONNX export an integer Div (the exported graph stays integer)."""
    if torch.onnx.is_in_onnx_export():
        return torch.div(torch.as_tensor(a), b, rounding_mode="floor")
    fa = a.to(torch.float64) if isinstance(a, Tensor) else float(a)
    fb = b.to(torch.float64) if isinstance(b, Tensor) else float(b)
    return torch.floor(fa / fb).to(torch.int64)


def round_div(s: Tensor, d: int) -> Tensor:
    """round_half_even(s / d) for integer ``s`` and a positive integer ``d``."""
    q = floor_div(s, d)
    r2 = (s - q * d) * 2
    return q + ((r2 > d) | ((r2 == d) & (q % 2 == 1))).to(q.dtype)


def shift_exp(b: Tensor, x0: Tensor, n: int) -> Tensor:
    """I-ViT's shift exp of integers ``b`` (int64; b <= 0 in Shiftmax) with x0 =
    floor(-1 / scale) < 0 and shift bound ``n``: c = b + floor(b/2) - floor(b/16),
    d = max(c, n x0), q = floor(d / x0), r = d - x0 q, exp = floor((r/2 - x0) 2^(n-q)),
    that is ((r - 2 x0) << (n - q)) >> 1 (r - 2 x0 > 0, so no clamp at 0 is needed)."""
    c = b + (b >> 1) - (b >> 4)
    d = torch.maximum(c, n * x0)
    q = floor_div(d, x0)  # |d| <= n |x0| + 1.5 |b|: far below 2^52
    r = d - x0 * q
    return ((r - 2 * x0) << (n - q).clamp_max(EXP_SHIFT_CAP)) >> 1


def shiftmax(x: Tensor, x0: Tensor, n: int, output_bit: int) -> Tensor:
    """Integer softmax over the last dim: floor(exp * floor(I / sum) / 2^(32 - bits)),
    I = 2^31 (`NORM_ONE`), the sum clamped to I; values in [0, 2^(bits-1) - 1]."""
    x = x.to(torch.int64)
    e = shift_exp(x - x.amax(dim=-1, keepdim=True), x0, n)
    return _normalize(e, output_bit)


def _normalize(e: Tensor, output_bit: int) -> Tensor:
    """Shiftmax's last step: floor(e * floor(I / sum e) / 2^(32 - bits)) over the last dim."""
    factor = floor_div(NORM_ONE, e.sum(dim=-1, keepdim=True).clamp_max(NORM_ONE))
    return ((e * factor) >> (32 - output_bit)).to(_DTYPES[16 if output_bit > 8 else 8])


def shift_gelu(x: Tensor, x0: Tensor, n: int, output_bit: int) -> Tensor:
    """ShiftGELU: x * sigmoid, the sigmoid floor(exp(x - max) * floor(I / sum) /
    2^(32 - bits)) with sum = exp(x - max) + exp(-max) clamped to I (max over the last
    dim, x0 of the sigmoid's scale 1.702 s). int32 out (|x| * 2^(bits-1) at most)."""
    x = x.to(torch.int64)
    return gelu_given_max(x, x.amax(dim=-1, keepdim=True), x0, n, output_bit)


def gelu_given_max(x: Tensor, xm: Tensor, x0: Tensor, n: int, output_bit: int) -> Tensor:
    """ShiftGELU of int64 ``x`` whose row maximum is ``xm`` (broadcast), int32 out."""
    e = shift_exp(x - xm, x0, n)
    total = (e + shift_exp(-xm, x0, n)).clamp_max(NORM_ONE)
    sig = (e * floor_div(NORM_ONE, total)) >> (32 - output_bit)
    return (x * sig).to(torch.int32)


# The longest exp table (entries) `exp_table` builds; beyond it (a softmax input scale
# below about 1/6000 for Shiftmax's n = 15) Shiftmax computes its exp
EXP_TABLE_LIMIT = 2**16


def exp_table(x0: Tensor, n: int) -> Tensor | None:
    """shift_exp(-k) for k = 0..K (int64), K the first k from which it is constant (d =
    n x0: c = b + floor(b/2) - floor(b/16) does not increase as b falls), so that
    shift_exp(b) = table[min(-b, K)] for every b <= 0; None where K > `EXP_TABLE_LIMIT`."""
    x0i = int(x0)
    bound = (1 - n * x0i) * 16 // 23 + 2  # c(-k) <= 1 - 23k/16 <= n x0 from here on
    if bound > EXP_TABLE_LIMIT:
        return None
    b = -torch.arange(bound + 1, dtype=torch.int64, device=x0.device)
    c = b + (b >> 1) - (b >> 4)
    k = int(torch.nonzero(c <= n * x0i)[0])
    return shift_exp(b[:k + 1], x0.to(torch.int64), n)


def shiftmax_by_table(x: Tensor, table: Tensor, output_bit: int) -> Tensor:
    """`shiftmax` with the exp looked up in ``table`` (`exp_table` of its x0 and n)."""
    x = x.to(torch.int64)
    e = table[(x.amax(dim=-1, keepdim=True) - x).clamp_max(table.numel() - 1)]
    return _normalize(e, output_bit)


def gelu_table(x0: Tensor, n: int, output_bit: int, m: Tensor, e: Tensor,
               half_m1: Tensor, bits: int) -> Tensor:
    """(256, 256) int8: entry [xm + 128, x + 128] is ShiftGELU of an int8 ``x`` whose row
    maximum is ``xm``, requantized by a per-tensor (m, e) and clamped to ``bits`` (<= 8)
    integers; rows xm < x are never read."""
    if bits > 8:
        raise ValueError(f"gelu_table holds int8 outputs; its requantizer has {bits} bits")
    v = torch.arange(-128, 128, dtype=torch.int64, device=x0.device)
    g = gelu_given_max(v.view(1, -1), v.view(-1, 1), x0.to(torch.int64), n, output_bit)
    return clamp_bits(requantize(g, m, e, half_m1), bits).to(torch.int8).contiguous()


def gelu_by_table(x: Tensor, table: Tensor) -> Tensor:
    """ShiftGELU and its requantizer of int8 ``x`` (rows: the last dim) by `gelu_table`."""
    xm = x.amax(dim=-1, keepdim=True).to(torch.int64)  # (int64: ONNX's Gather index)
    return table.view(-1)[(xm + 128) * 256 + (x.to(torch.int64) + 128)]


def isqrt_newton(v: Tensor, iterations: int = NEWTON_ITERATIONS) -> Tensor:
    """I-LayerNorm's integer square root: k <- floor((k + floor(v / k)) / 2) from 2^16."""
    k = torch.full_like(v, NEWTON_START)
    for _ in range(iterations):
        k = (k + floor_div(v, k)) >> 1  # v = sum y^2 < C 2^34: far below 2^52
    return k


def int_layernorm(x: Tensor, bias_int: Tensor, dtype: torch.dtype = torch.int64) -> Tensor:
    """I-LayerNorm over the last dim: y = x - round(mean x), std = isqrt_newton(sum y^2),
    floor(y * floor(I / std) / 2) + bias_int (scale sqrt(C)/2^30 * weight), as ``dtype``:
    int64, or float64 holding the same integers for int8/int16 ``x`` and |bias_int| <
    2^31 (as `deploy` makes it): then |y| < 2^16, every sum of y^2 is below 2^53 for C <
    2^21 and y floor(I / std) below 2^47, so each float64 sum and product is exact in any
    order. The per-row mean, square root and factor are integers either way."""
    x = x.to(dtype)
    y = x - round_div(x.sum(dim=-1, keepdim=True), x.shape[-1]).to(dtype)
    std = isqrt_newton((y * y).sum(dim=-1, keepdim=True).to(torch.int64))
    prod = y * floor_div(NORM_ONE, std).to(dtype)
    half = torch.floor(prod * 0.5) if dtype.is_floating_point else prod >> 1
    return half + bias_int.to(dtype)

