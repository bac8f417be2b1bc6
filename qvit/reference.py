"""I-ViT's integer-only deployment arithmetic, exactly, independent of qvit's tensor code.

Pure functions on Python integers and `fractions.Fraction` (arrays as numpy object arrays of
Python ints, so nothing overflows or rounds unseen). Nothing here calls `qvit.primitives`:
the tests hold the training code to these, and a bug in a primitive cannot move the
reference with it.

    >>> frexp(0.75)
    (1610612736, 31)
    >>> requantize(3, 0.25, 0.5)   # 3 * 0.5 = 1.5: a tie, to even
    2
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np

__all__ = ["round_half_even", "round_half_away", "frexp", "scale_ratio", "requantize",
           "fixedpoint_mul", "quantize"]


def round_half_even(q: Fraction) -> int:
    """Nearest integer, ties to even (torch.round, numpy.round, IEEE)."""
    fl = math.floor(q)
    rem = q - fl
    if rem > Fraction(1, 2) or (rem == Fraction(1, 2) and fl % 2):
        return fl + 1
    return fl


def round_half_away(q: Fraction) -> int:
    """Nearest integer, ties away from zero (Decimal ROUND_HALF_UP, I-ViT's batch_frexp)."""
    n = math.floor(abs(q) + Fraction(1, 2))
    return n if q >= 0 else -n


def frexp(x: float, bits: int = 31) -> tuple[int, int]:
    """(m, e) with x = m / 2^e up to rounding: the mantissa of x in [1/2, 1) (as numpy.frexp
    and torch.frexp define it), times 2^bits, rounded half away from zero; so
    2^(bits-1) <= |m| <= 2^bits. x = 0 gives (0, bits)."""
    f = Fraction(x)
    if f == 0:
        return 0, bits
    exp = 0  # |f| / 2^exp in [1/2, 1)
    while abs(f) / Fraction(2) ** exp >= 1:
        exp += 1
    while abs(f) / Fraction(2) ** exp < Fraction(1, 2):
        exp -= 1
    return round_half_away(f / Fraction(2) ** exp * 2**bits), bits - exp


def scale_ratio(in_scale: float, out_scale: float) -> float:
    """The requantizer's scale ratio as I-ViT computes it: both float32 scales widened to
    float64, one float64 (IEEE, correctly rounded) division."""
    return float(np.float64(np.float32(in_scale)) / np.float64(np.float32(out_scale)))


def requantize(z: int, in_scale: float, out_scale: float) -> int:
    """round_half_even(z * m / 2^e) for (m, e) = frexp(in_scale / out_scale): the dyadic
    rescale of one integer."""
    m, e = frexp(scale_ratio(in_scale, out_scale))
    return round_half_even(Fraction(int(z) * m, 2**e))


def _dyadic(z: np.ndarray, scales: np.ndarray, out_scale: float) -> np.ndarray:
    """requantize over an object array z (..., C) with per-channel (C,) or per-tensor (1,)
    scales, one frexp per distinct scale."""
    out = np.empty(z.shape, dtype=object)
    flat_s = np.broadcast_to(scales, z.shape[-1:]) if scales.size > 1 else None
    cache: dict[float, tuple[int, int]] = {}
    for c in range(z.shape[-1]):
        s = float(flat_s[c]) if flat_s is not None else float(scales.reshape(-1)[0])
        if s not in cache:
            cache[s] = frexp(scale_ratio(s, out_scale))
        m, e = cache[s]
        prod = z[..., c] * m
        q = prod >> e  # floor
        rem = prod - (q << e)
        half = 1 << (e - 1)
        up = (rem > half) | ((rem == half) & (q % 2 == 1))
        out[..., c] = q + up.astype(object)
    return out


def fixedpoint_mul(z: np.ndarray, in_scale: np.ndarray, out_scale: float, num_bits: int,
                   z_identity: np.ndarray | None = None,
                   identity_scale: np.ndarray | None = None) -> np.ndarray:
    """I-ViT's requantizer on integers: dyadic rescale of ``z`` (last dim = channels,
    ``in_scale`` per channel or per tensor) plus that of the residual ``z_identity``, then
    clamped to ``num_bits`` signed integers. Returns an object array of Python ints."""
    z = np.asarray(z).astype(np.int64).astype(object)
    out = _dyadic(z, np.asarray(in_scale, dtype=np.float32).reshape(-1), out_scale)
    if z_identity is not None:
        zi = np.broadcast_to(np.asarray(z_identity).astype(np.int64), z.shape).astype(object)
        out = out + _dyadic(zi, np.asarray(identity_scale, dtype=np.float32).reshape(-1),
                            out_scale)
    n = 2 ** (num_bits - 1)
    return np.clip(out, -n, n - 1)


def quantize(x: float, scale: float, num_bits: int) -> int:
    """I-ViT's symmetric quantizer of one value: round_half_even of the float32 product
    (1 / scale) * x (both roundings float32, as the training code computes it), clamped to
    [-2^(b-1), 2^(b-1) - 1]."""
    inv = np.float32(1.0) / np.float32(scale)
    q = round_half_even(Fraction(float(np.float32(inv * np.float32(x)))))
    n = 2 ** (num_bits - 1)
    return min(max(q, -n), n - 1)


# --- I-ViT's integer nonlinearities (the deployed model's arithmetic, qvit.deploy) ---------
#
# On numpy object arrays of Python ints (any shape, the reduction over the last axis), each
# written as the formula reads; Python's // and ** neither overflow nor round.

__all__ += ["NORM_ONE", "round_div", "shift_exp", "shiftmax", "shift_gelu", "isqrt_newton",
            "int_layernorm"]

# I = 2^31: I-ViT's INT32_MAX (2^31 - 1) as its float32 arithmetic holds it, the constant
# every trained model has computed floor(I / t) with (and clamped t to).
NORM_ONE = 2**31


def _ints(x) -> np.ndarray:
    return np.asarray(x, dtype=object)


def round_div(s, d: int) -> np.ndarray:
    """round_half_even(s / d) elementwise (a rounded mean: s a sum of d integers)."""
    return np.vectorize(lambda v: round_half_even(Fraction(int(v), d)), otypes=[object])(
        _ints(s))


def shift_exp(b, x0: int, n: int) -> np.ndarray:
    """I-ViT's shift exp of integers b (scale s, x0 = floor(-1/s) < 0, shift bound n):
    b + floor(b/2) - floor(b/16), at least n x0; q = floor(that / x0), r = that - x0 q;
    floor((r/2 - x0) * 2^(n-q)), as Fractions (no shift bound: 2^(n-q) may be huge)."""

    def one(v: int) -> int:
        c = max(v + v // 2 - v // 16, n * x0)
        q = c // x0
        r = c - x0 * q
        return math.floor((Fraction(r, 2) - x0) * Fraction(2) ** (n - q))

    return np.vectorize(one, otypes=[object])(_ints(b))


def _normalize(e: np.ndarray, total: np.ndarray, output_bit: int) -> np.ndarray:
    """floor(e * floor(I / min(total, I)) / 2^(32 - bits))."""
    factor = NORM_ONE // np.minimum(total, NORM_ONE)
    return (e * factor) // 2 ** (32 - output_bit)


def shiftmax(x, x0: int, n: int, output_bit: int) -> np.ndarray:
    """I-ViT's integer softmax over the last axis."""
    x = _ints(x)
    e = shift_exp(x - x.max(axis=-1, keepdims=True), x0, n)
    return _normalize(e, e.sum(axis=-1, keepdims=True), output_bit)


def shift_gelu(x, x0: int, n: int, output_bit: int) -> np.ndarray:
    """I-ViT's ShiftGELU: x * sigmoid, sigmoid = exp(x - max) / (exp(x - max) + exp(-max))
    normalized as the softmax (max over the last axis; x0 of the scale 1.702 s)."""
    x = _ints(x)
    xm = x.max(axis=-1, keepdims=True)
    e = shift_exp(x - xm, x0, n)
    return x * _normalize(e, e + shift_exp(-xm, x0, n), output_bit)


def isqrt_newton(v: int, iterations: int = 10, start: int = 2**16) -> int:
    """I-LayerNorm's integer square root: ten steps k <- floor((k + floor(v/k)) / 2)."""
    k = start
    for _ in range(iterations):
        k = (k + v // k) // 2
    return k


def int_layernorm(x, bias_int) -> np.ndarray:
    """I-LayerNorm over the last axis: y = x - round_half_even(mean x), std =
    isqrt_newton(sum y^2), floor(y * floor(I / std) / 2) + bias_int."""
    x = _ints(x)
    y = x - round_div(x.sum(axis=-1, keepdims=True), x.shape[-1])
    std = np.vectorize(isqrt_newton, otypes=[object])((y * y).sum(axis=-1, keepdims=True))
    return (y * (NORM_ONE // std)) // 2 + _ints(bias_int)
