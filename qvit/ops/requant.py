"""Dyadic requantization: round(z * s_in / s_out) to ``num_bits`` integers, with an optional
residual added at its own scale; and the frexp that gives the 31-bit dyadic multiplier.

The arithmetic (the seed's flags): ``requant_float`` float64 (fp64_fixedpoint) or float32;
``multiplier`` dyadic (use_frexp: m * 2^-e with a 31-bit integer m, what an integer-only
deployment computes) or one float multiply (the seed's shortcut).

The implementation (`Paths.requant`, `Paths.frexp`):

* ``chain`` (`fixedpoint_mul`): I-ViT's requantizer; its (m, e) from `batch_frexp` (numpy
  + Decimal on the host: a round trip per call) or `frexp_device` (torch.frexp: the same
  bits); the STE backward as `Paths.ste` chooses;
* ``fused`` (`fixedpoint_mul(fused=True)`): the multiplier m * 2^-e formed once per channel,
  one in-place multiply and rounding on the full-size tensor;
* ``lean`` (`requantize`): one autograd node with the module's ``q * scale`` folded in, the
  multiplier from the float bits of the ratio (`lean_multiplier`).

Every path gives the same bits for the same arithmetic; `dyadic_requantize_int64` is the
integer form a deployment computes, for checks.
"""

from __future__ import annotations

import decimal
from decimal import Decimal

import numpy as np
import torch
from torch import Tensor
from torch.autograd import Function

from .ste import straight_through

__all__ = ["FREXP_BITS", "batch_frexp", "frexp_device", "FREXP", "act_scale_shape",
           "fixedpoint_mul", "dyadic_requantize_int64", "dyadic_multiplier",
           "lean_multiplier", "requantize"]

FREXP_BITS = 31  # mantissa bits of the dyadic multiplier (I-ViT's max_bit)


# --- frexp: scale = m * 2^-e with a 31-bit integer mantissa --------------------------------

def batch_frexp(inputs: Tensor, max_bit: int = FREXP_BITS) -> tuple[Tensor, Tensor]:
    """The legacy reference (I-ViT): numpy frexp on the host, mantissa rounded half up to
    ``max_bit`` bits through Python Decimal, one element at a time. Returns float64 tensors
    (m, e) on the input's device with ``inputs == m / 2**e``."""
    shape = inputs.shape
    m_f, e_f = np.frexp(inputs.detach().reshape(-1).cpu().numpy())
    m_int = [int(Decimal(float(m) * 2**max_bit).quantize(Decimal("1"),
                                                      rounding=decimal.ROUND_HALF_UP))
             for m in m_f]
    m = torch.tensor(m_int, dtype=torch.float64).view(shape)
    e = torch.from_numpy(float(max_bit) - e_f.astype(np.float64)).view(shape)
    return m.to(inputs.device), e.to(inputs.device)


def frexp_device(inputs: Tensor, max_bit: int = FREXP_BITS) -> tuple[Tensor, Tensor]:
    """Same (m, e) as `batch_frexp`, bit for bit, computed on the input's own device.

    torch.frexp gives the mantissa in [0.5, 1) (or (-1, -0.5]); scaling by 2^max_bit is
    exact in float64, and so is adding 0.5 to its magnitude (the product has at most 53
    significant bits below 2^31), so sign * floor(|.| + 0.5) is Decimal's ROUND_HALF_UP:
    ties go away from zero, for negative inputs too.
    """
    mant, exp = torch.frexp(inputs.detach().to(torch.float64))
    t = mant * 2.0**max_bit
    m = torch.floor(t.abs() + 0.5).copysign_(t)
    return m, float(max_bit) - exp.to(torch.float64)


FREXP = {"host": batch_frexp, "device": frexp_device}

_ACT_SCALE_SHAPES = {2: (1, -1), 3: (1, 1, -1), 4: (1, -1, 1, 1)}


def act_scale_shape(x: Tensor) -> tuple[int, ...]:
    """The view that broadcasts an activation's per-channel scale over ``x`` (channels last
    for tokens, second for images)."""
    shape = _ACT_SCALE_SHAPES.get(x.dim())
    if shape is None:
        raise ValueError(f"requantization takes 2-D, 3-D or 4-D activations, got {x.dim()}-D")
    return shape


# --- the chain (I-ViT's fixedpoint_mul) and its fused form ----------------------------------

def _requantize_int(z_int: Tensor, in_scale: Tensor, out_scale: Tensor, *, fp64: bool,
                    use_frexp: bool, frexp: str, fused: bool) -> Tensor:
    """round(z_int * in_scale / out_scale): the integer rescale of one addend.

    ``fused``: the dyadic multiplier m * 2^-e is formed once on the (per-channel) scale,
    and the full-size tensor sees one multiply and one rounding, in place, instead of a
    multiply, a division and a rounding into fresh buffers. Bit for bit the same: scaling by
    a power of two commutes with rounding, so fl(z * fl(m * 2^-e)) = fl(z * m) / 2^e (no
    overflow or subnormals at these magnitudes). ``z_int`` is consumed on that path.
    """
    dtype = torch.float64 if fp64 else torch.float32
    # The legacy code divides the float32 scales in float64 (out_scale cast float->double).
    new_scale = in_scale.to(dtype) / out_scale.to(torch.float32).to(dtype)
    if not use_frexp:
        if fused:
            return z_int.to(dtype).mul_(new_scale).round_()
        return torch.round(z_int.to(dtype) * new_scale)
    m, e = FREXP[frexp](new_scale)
    if fused:
        return z_int.to(dtype).mul_(m.to(dtype) / (2.0 ** e).to(dtype)).round_()
    return torch.round(z_int.to(dtype) * m.to(dtype) / (2.0 ** e).to(dtype))


def _fixedpoint_function(name: str, copy_grad: bool) -> type[Function]:
    """The requantizer as an autograd.Function: forward runs ``run()``, backward is the STE
    grad / z_scale to ``pre_act`` and ``identity``. The legacy one (ste path function)
    copies the gradient first; the lean one does not, with the same values."""

    def forward(ctx, pre_act, identity, run, z_scale):
        ctx.has_identity = identity is not None
        ctx.save_for_backward(z_scale)
        return run()

    def backward(ctx, grad_output):
        (z_scale,) = ctx.saved_tensors

        def grad():
            return (grad_output.clone() if copy_grad else grad_output) / z_scale

        return grad(), (grad() if ctx.has_identity else None), None, None

    return type(name, (Function,), {"forward": staticmethod(forward),
                                    "backward": staticmethod(backward)})


_FixedpointMul = _fixedpoint_function("_FixedpointMul", copy_grad=True)
_FixedpointMulLean = _fixedpoint_function("_FixedpointMulLean", copy_grad=False)


def fixedpoint_mul(pre_act: Tensor, pre_act_scale: Tensor, num_bits: int, z_scale: Tensor,
                   identity: Tensor | None = None, identity_scale: Tensor | None = None, *,
                   fp64: bool, use_frexp: bool, frexp: str = "device", fused: bool = False,
                   ste: str = "inline") -> Tensor:
    """Requantize ``pre_act`` (scale ``pre_act_scale``), plus an optional residual ``identity``
    (scale ``identity_scale``), to ``num_bits`` integers of scale ``z_scale``.

    With ``use_frexp`` the rescale is the dyadic m * 2^-e (its (m, e) by ``frexp``: "host"
    or "device"); without it, one float multiply. Gradient: grad / z_scale to ``pre_act``
    and ``identity`` (STE, in the form ``ste`` names), none to the scales.
    """
    shape = act_scale_shape(pre_act)
    n = 2 ** (num_bits - 1) - 1
    kw = dict(fp64=fp64, use_frexp=use_frexp, frexp=frexp, fused=fused)

    def run():
        with torch.no_grad():
            in_scale = pre_act_scale.view(shape)
            out = _requantize_int(torch.round(pre_act / in_scale), in_scale, z_scale, **kw)
            if identity is not None:
                id_scale = identity_scale.view(shape)
                out = _requantize_int(torch.round(identity / id_scale), id_scale, z_scale,
                                      **kw) + out
            out = out.to(torch.float32)
            return torch.clamp(out, -n - 1, n) if num_bits in (4, 8, 16, 32) else out

    def run_fused():  # the same arithmetic, in place where a buffer is ours
        with torch.no_grad():
            in_scale = pre_act_scale.view(shape)
            out = _requantize_int(torch.div(pre_act, in_scale).round_(), in_scale, z_scale,
                                  **kw)
            if identity is not None:
                id_scale = identity_scale.view(shape)
                rid = _requantize_int(torch.div(identity, id_scale).round_(), id_scale,
                                      z_scale, **kw)
                out = rid.add_(out) if rid.shape == out.shape else rid + out
            out = out.to(torch.float32)
            return out.clamp_(-n - 1, n) if num_bits in (4, 8, 16, 32) else out

    if fused:
        run = run_fused
    if ste == "lean":
        return _FixedpointMulLean.apply(pre_act, identity, run, z_scale)
    if ste == "function":
        return _FixedpointMul.apply(pre_act, identity, run, z_scale)
    out = run()
    zs = z_scale.detach()
    surrogate = pre_act / zs
    if identity is not None:
        # divide before the broadcast sums, in the legacy Function's order (bit-exact grads)
        surrogate = surrogate + identity.expand(out.shape) / zs
    return straight_through(out, surrogate)


def dyadic_requantize_int64(z_int: Tensor, m: Tensor, e: Tensor) -> Tensor:
    """Pure integer reference of the dyadic rescale: round_half_even(z * m / 2^e) in int64,
    as an integer-only deployment computes it (for parity checks, not for training)."""
    z = z_int.to(torch.int64)
    m = m.to(torch.int64)
    e = e.to(torch.int64)
    if (e < 1).any():
        raise ValueError("dyadic_requantize_int64 needs shifts e >= 1 (scale ratio < 2^30)")
    prod = z * m
    q = prod >> e  # floor division by 2^e (arithmetic shift)
    rem = prod - (q << e)
    half = torch.ones_like(e) << (e - 1)
    round_up = (rem > half) | ((rem == half) & (q % 2 == 1))
    return q + round_up.to(torch.int64)


# --- the lean node ------------------------------------------------------------------------
#
# The same bits as the chain by these IEEE-754 facts: multiplying or dividing by a power of
# two is exact (no overflow, no subnormal result), so fl(z * m) / 2^e == fl(z * (m * 2^-e));
# a positive normal float64 rounded to 31 significant bits, ties away from zero, is the
# 31-bit frexp's m * 2^-e; a float32 ratio has 24 significant bits, so its 31-bit form is
# itself.

_ROUND_BIT = 1 << (52 - 31)  # half a unit in the 31st significant bit of a float64
_KEEP_31 = -(1 << (52 - 30))  # clears the 22 low mantissa bits (int64 two's complement)


def dyadic_multiplier(ratio: Tensor) -> Tensor:
    """m * 2^-e (float64) for (m, e) = frexp31(ratio), from the ratio's float64 bits: adding
    half a unit of the 31st significant bit to the bit pattern and clearing the bits below
    it rounds the (positive, normal) ratio to 31 significant bits, ties away from zero: the
    rounding of frexp's Decimal ROUND_HALF_UP; a carry into the exponent is the mantissa
    rounding up to 2^31. Two integer ops instead of frexp, pow and division."""
    bits = ratio.to(torch.float64).view(torch.int64)
    return ((bits + _ROUND_BIT) & _KEEP_31).view(torch.float64)


def lean_multiplier(in_scale: Tensor, out_scale: Tensor, fp64: bool, use_frexp: bool
                    ) -> Tensor:
    """The chain's multiplier of one addend: the ratio of the scales in the chain's float
    type (the legacy float32 -> float64 casts), its dyadic form with ``use_frexp``."""
    dtype = torch.float64 if fp64 else torch.float32
    ratio = in_scale.to(dtype) / out_scale.to(torch.float32).to(dtype)
    return dyadic_multiplier(ratio).to(dtype) if use_frexp else ratio


def _rescale(v: Tensor, scale: Tensor, out_scale: Tensor, fp64: bool, use_frexp: bool
             ) -> tuple[Tensor, Tensor]:
    """round(round(v / scale) * multiplier): one addend of the requantizer, and the
    float32 buffer of round(v / scale) (free for the output)."""
    z = torch.div(v, scale).round_()
    mult = lean_multiplier(scale, out_scale, fp64, use_frexp)
    # (a mixed float32 x float64 multiply would take torch's slow casting loop)
    t = z.to(torch.float64).mul_(mult) if fp64 else torch.mul(z, mult)
    return t.round_(), z


class _Requantize(Function):
    """QuantAct's requantization and its output scale: forward
    clamp(round(x/s_x) * r_x [+ round(id/s_id) * r_id]) * s (in the chain's float type,
    in place where a buffer is ours); backward (g * s) / s to x and to the residual, the
    module's multiply then the STE's division. Outputs keep the reference's memory layouts
    (x's, or the residual's where one is added; a gradient's, its incoming one's): later
    reductions sum in an order that depends on the layout."""

    @staticmethod
    def forward(ctx, x, identity, in_scale, id_scale, scale, lo, hi, fp64, use_frexp):
        t, out = _rescale(x, in_scale, scale, fp64, use_frexp)
        if identity is not None:  # the sum takes the residual's memory layout, as the
            ti, zi = _rescale(identity, id_scale, scale, fp64, use_frexp)  # reference's
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
        return gx, (gx if ctx.has_identity else None), None, None, None, None, None, None, None


def requantize(x: Tensor, pre_scale: Tensor, scale: Tensor, num_bits: int,
               identity: Tensor | None = None, id_scale: Tensor | None = None, *,
               fp64: bool = True, use_frexp: bool = True) -> Tensor:
    """`fixedpoint_mul` times the output scale, as one node (requant path lean): the same
    values and gradients as the chain followed by the module's ``q * scale``."""
    shape = act_scale_shape(x)
    n = 2 ** (num_bits - 1) - 1
    lo, hi = (-n - 1, n) if num_bits in (4, 8, 16, 32) else (None, None)
    return _Requantize.apply(x, identity, pre_scale.view(shape), None if identity is None
                             else id_scale.view(shape), scale, lo, hi, fp64, use_frexp)
