"""Pure functions of integer-only quantization: STE, symmetric quantization, frexp, dyadic
requantization, the shift-based integer exp and the integer Newton square root.

Each function takes the paths it can run as keyword arguments (the modules read them from
`qvit.Flags`); nothing here holds state or moves tensors between devices, except the legacy
`batch_frexp`, whose host round trip is the thing being measured.
"""

from __future__ import annotations

import decimal
from decimal import Decimal

import numpy as np
import torch
from torch import Tensor
from torch.autograd import Function

__all__ = [
    "EPS_F32", "float32_eps", "floor_ste", "round_ste", "symmetric_scale",
    "symmetric_quantize", "ternary_quantize", "batch_frexp", "frexp_device", "frexp31",
    "act_scale_shape", "fixedpoint_mul", "dyadic_requantize_int64", "int_exp_shift",
    "int_sqrt_newton",
    "INT32_MAX", "NEWTON_MODES", "newton_sqrt_forward", "newton_sqrt_backward",
]

EPS_F32: float = torch.finfo(torch.float32).eps  # seed change 15: evaluated once
INT32_MAX = 2**31 - 1
FREXP_BITS = 31  # mantissa bits of the dyadic multiplier (I-ViT's max_bit)


def float32_eps(constant: bool) -> float:
    """float32 eps; ``constant=False`` asks torch every call, as the legacy code did."""
    return EPS_F32 if constant else torch.finfo(torch.float32).eps


# --- straight-through estimators --------------------------------------------------------

def _ste_function(op, name: str, copy_grad: bool) -> type[Function]:
    """An STE as an autograd.Function: ``op`` forward, identity backward. The legacy ones
    (Python dispatch on every call, seed change 4) return ``grad_output.clone()``; the lean
    ones (flag ste_lean) hand the same values on without the full-size copy."""

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


def _straight_through(value: Tensor, x: Tensor) -> Tensor:
    """``value`` forward, the gradient of ``x`` backward. Written as value + (x - x): that
    is exactly ``value`` for every finite x. (The seed's form ``x + (f(x) - x).detach()`` is
    exact for floor and round, but not for a saturating quantizer: with x = 4.3e7 and
    f(x) = clamp(round(x), -128, 127), f(x) - x rounds and the sum misses 127.)"""
    return value.detach() + (x - x.detach())


def floor_ste(x: Tensor, inline: bool = True, lean: bool = False) -> Tensor:
    """floor(x) with an identity gradient; ``inline=False`` is the legacy autograd.Function,
    ``lean=True`` the same Function without its gradient copy (takes precedence)."""
    if lean:
        return _FloorSTELean.apply(x)
    if inline:
        return _straight_through(torch.floor(x.detach()), x)
    return _FloorSTE.apply(x)


def round_ste(x: Tensor, inline: bool = True, lean: bool = False) -> Tensor:
    """round(x) (half to even) with an identity gradient."""
    if lean:
        return _RoundSTELean.apply(x)
    if inline:
        return _straight_through(torch.round(x.detach()), x)
    return _RoundSTE.apply(x)


# --- symmetric quantization -------------------------------------------------------------

def symmetric_scale(num_bits: int, min_val: Tensor, max_val: Tensor, *,
                    eps_constant: bool = True) -> Tensor:
    """Scale of symmetric ``num_bits`` quantization of the range [min_val, max_val]."""
    with torch.no_grad():
        n = 2 ** (num_bits - 1) - 1
        return (torch.max(-min_val, max_val) / float(n)).clamp_(min=float32_eps(eps_constant))


def _scale_shape(x: Tensor, scale: Tensor, is_weight: bool) -> Tensor:
    # Weights: one scale per output channel (dim 0); activations: per last (3D) or channel dim.
    if is_weight:
        return scale.view(-1, *([1] * (x.dim() - 1))) if x.dim() in (2, 4) else scale.view(-1)
    shapes = {2: (1, -1), 3: (1, 1, -1), 4: (1, -1, 1, 1)}
    if x.dim() not in shapes:
        raise ValueError(f"activations must be 2-D, 3-D or 4-D to quantize, got {x.dim()}-D")
    return scale.view(shapes[x.dim()])


class _QuantizeSTEFunction(Function):
    """Legacy STE quantizer (I-ViT's SymmetricQuantFunction): an autograd.Function."""

    @staticmethod
    def forward(ctx, x, qmin, qmax, s, zero_point):
        q = 1.0 / s * x
        if zero_point is not None:
            q = q + zero_point
        ctx.save_for_backward(s)
        return torch.clamp(torch.round(q), qmin, qmax)

    @staticmethod
    def backward(ctx, grad_output):
        (s,) = ctx.saved_tensors
        return grad_output.clone() / s, None, None, None, None


class _QuantizeSTELean(Function):
    """`_QuantizeSTEFunction` with its forward in place (one buffer instead of three) and no
    gradient copy: the same values, forward and backward (flag ste_lean)."""

    @staticmethod
    def forward(ctx, x, qmin, qmax, s):
        ctx.save_for_backward(s)
        return torch.mul(1.0 / s, x).round_().clamp_(qmin, qmax)

    @staticmethod
    def backward(ctx, grad_output):
        (s,) = ctx.saved_tensors
        return grad_output / s, None, None, None


def _quantize_ste(x: Tensor, s: Tensor, qmin: int, qmax: int, inline_ste: bool,
                  constant_zero_point: bool, lean: bool = False) -> Tensor:
    # The zero point of symmetric quantization is 0; the legacy code built it as a tensor on
    # every call (`torch.tensor(0.).to(device)`, seed change 7), adding nothing to the value.
    zero_point = None if constant_zero_point else torch.tensor(0.0).to(x.device)
    s = s.detach()
    if lean and zero_point is None:
        return _QuantizeSTELean.apply(x, qmin, qmax, s)
    if not inline_ste:
        return _QuantizeSTEFunction.apply(x, qmin, qmax, s, zero_point)
    with torch.no_grad():
        q = 1.0 / s * x
        if zero_point is not None:
            q = q + zero_point
        q = torch.clamp(torch.round(q), qmin, qmax)
    return _straight_through(q, x / s)  # x / s carries the legacy backward, grad / scale


def symmetric_quantize(x: Tensor, num_bits: int, scale: Tensor, *, is_weight: bool,
                       inline_ste: bool = True, constant_zero_point: bool = True,
                       lean: bool = False) -> Tensor:
    """Integer values of ``x`` in [-2^(b-1), 2^(b-1)-1] (as float), gradient 1/scale (STE).
    ``scale`` is per output channel for weights, per tensor (or last dim) for activations."""
    n = 2 ** (num_bits - 1) - 1
    s = _scale_shape(x, scale, is_weight)
    return _quantize_ste(x, s, -n - 1, n, inline_ste, constant_zero_point, lean)


def ternary_quantize(w: Tensor, scale: Tensor, *, inline_ste: bool = True,
                     constant_zero_point: bool = True, lean: bool = False) -> Tensor:
    """Ternary weights {-1, 0, 1} = clamp(round(w / scale), -1, 1) per output channel, STE."""
    return _quantize_ste(w, _scale_shape(w, scale, True), -1, 1, inline_ste,
                         constant_zero_point, lean)


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


def frexp31(inputs: Tensor, *, on_device: bool) -> tuple[Tensor, Tensor]:
    return frexp_device(inputs) if on_device else batch_frexp(inputs)


# --- dyadic requantization ---------------------------------------------------------------

_ACT_SCALE_SHAPES = {2: (1, -1), 3: (1, 1, -1), 4: (1, -1, 1, 1)}


def act_scale_shape(x: Tensor) -> tuple[int, ...]:
    """The view that broadcasts an activation's per-channel scale over ``x`` (channels last
    for tokens, second for images)."""
    shape = _ACT_SCALE_SHAPES.get(x.dim())
    if shape is None:
        raise ValueError(f"requantization takes 2-D, 3-D or 4-D activations, got {x.dim()}-D")
    return shape


def _requantize_int(z_int: Tensor, in_scale: Tensor, out_scale: Tensor, *, fp64: bool,
                    use_frexp: bool, frexp_on_device: bool, fused: bool = False) -> Tensor:
    """round(z_int * in_scale / out_scale): the integer rescale of one addend.

    ``fused`` (flag requant_fused): the dyadic multiplier m * 2^-e is formed once on the
    (per-channel) scale, and the full-size tensor sees one multiply and one rounding, in
    place, instead of a multiply, a division and a rounding into fresh buffers. Bit for bit
    the same: scaling by a power of two commutes with rounding, so
    fl(z * fl(m * 2^-e)) = fl(z * m) / 2^e (no overflow or subnormals at these magnitudes).
    ``z_int`` is consumed (overwritten) on that path.
    """
    dtype = torch.float64 if fp64 else torch.float32
    # The legacy code divides the float32 scales in float64 (out_scale cast float->double).
    new_scale = in_scale.to(dtype) / out_scale.to(torch.float32).to(dtype)
    if not use_frexp:
        if fused:
            return z_int.to(dtype).mul_(new_scale).round_()
        return torch.round(z_int.to(dtype) * new_scale)
    m, e = frexp31(new_scale, on_device=frexp_on_device)
    if fused:
        return z_int.to(dtype).mul_(m.to(dtype) / (2.0 ** e).to(dtype)).round_()
    return torch.round(z_int.to(dtype) * m.to(dtype) / (2.0 ** e).to(dtype))


def _fixedpoint_function(name: str, copy_grad: bool) -> type[Function]:
    """The requantizer as an autograd.Function: forward runs ``run()``, backward is the STE
    grad / z_scale to ``pre_act`` and ``identity``. The legacy one copies the gradient
    first; the lean one (flag ste_lean) does not, with the same values."""

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
                   fp64: bool, use_frexp: bool, frexp_on_device: bool,
                   inline_ste: bool = True, fused: bool = False, lean: bool = False
                   ) -> Tensor:
    """Requantize ``pre_act`` (scale ``pre_act_scale``), plus an optional residual ``identity``
    (scale ``identity_scale``), to ``num_bits`` integers of scale ``z_scale``.

    With ``use_frexp`` the rescale is the dyadic m * 2^-e that an integer-only deployment
    computes (exact in float64); without it, one float multiply (the seed's shortcut).
    Gradient: grad / z_scale to ``pre_act`` and ``identity`` (STE), none to the scales.
    """
    shape = act_scale_shape(pre_act)
    n = 2 ** (num_bits - 1) - 1
    kw = dict(fp64=fp64, use_frexp=use_frexp, frexp_on_device=frexp_on_device, fused=fused)

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
    if lean:
        return _FixedpointMulLean.apply(pre_act, identity, run, z_scale)
    if not inline_ste:
        return _FixedpointMul.apply(pre_act, identity, run, z_scale)
    out = run()
    zs = z_scale.detach()
    surrogate = pre_act / zs
    if identity is not None:
        # divide before the broadcast sums, in the legacy Function's order (bit-exact grads)
        surrogate = surrogate + identity.expand(out.shape) / zs
    return _straight_through(out, surrogate)


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


# --- integer nonlinearities ----------------------------------------------------------------

def exp_x0_int(scaling_factor: Tensor) -> Tensor:
    """x0_int = floor(-1 / scale): the integer of -ln 2 after the shift approximation."""
    with torch.no_grad():
        return torch.floor(-1.0 / scaling_factor)


def int_exp_shift(x_int: Tensor, scaling_factor: Tensor, n: int, *,
                  x0_int: Tensor | None = None, inline_ste: bool = True, lean: bool = False
                  ) -> tuple[Tensor, Tensor]:
    """Shift-based integer exp of non-positive ``x_int`` (I-ViT Shiftmax/ShiftGELU).

    e^x = 2^(x log2 e) with x log2 e ~ x + x/2 - x/16; then 2^(-q) * (1 + r/2) with the
    quotient q and remainder r of division by x0 = -1 (in integer units). ``n`` bounds the
    shift (the result is scaled by 2^n). ``x0_int`` may be passed in (cached in eval).
    """
    ste = dict(inline=inline_ste, lean=lean)
    x_int = x_int + floor_ste(x_int / 2, **ste) - floor_ste(x_int / 2**4, **ste)
    if x0_int is None:
        x0_int = exp_x0_int(scaling_factor)
    x_int = torch.max(x_int, n * x0_int)
    q = floor_ste(x_int / x0_int, **ste)
    r = x_int - x0_int * q
    exp_int = r / 2 - x0_int
    exp_int = torch.clamp(floor_ste(exp_int * 2 ** (n - q), **ste), min=0)
    return exp_int, scaling_factor / 2**n


NEWTON_MODES = ("ste", "no_grad", "no_grad_sqrt_grad")


def newton_sqrt_forward(v: Tensor, iterations: int) -> tuple[Tensor, tuple]:
    """The integer Newton square root of ``v`` (no autograd) and what its backward needs:
    each step's k and v / k."""
    k = v.new_full(v.shape, 2**16)
    ks, vks = [], []
    for _ in range(iterations):
        vk = v / k
        ks.append(k)
        vks.append(vk)
        # floor((k + floor(v / k)) / 2), in one new buffer: a sum commutes, / 2 == * 0.5
        k = torch.floor(vk).add_(k).mul_(0.5).floor_()
    return k, (*ks, *vks)


def newton_sqrt_backward(g: Tensor, saved: tuple) -> Tensor:
    """d loss / d v of the legacy STE chain of the Newton steps, from g = d loss / d k, run
    in reverse mode with the legacy graph's operations in its order: for each step i (last
    first), k_i = floor((k + floor(v / k)) / 2) hands g / 2 to its sum; v receives
    (g / 2) / k (accumulated last step first, as autograd's input buffer does) and k
    receives g / 2 - (g / 2) * ((v / k) / k) (torch's div backward for the divisor)."""
    n = len(saved) // 2
    ks, vks = saved[:n], saved[n:]
    acc = None
    for i in reversed(range(n)):
        gs = g * 0.5  # (== g / 2)
        c = gs / ks[i]
        acc = c if acc is None else acc.add_(c)
        if i:  # the first step divides by the constant 2^16: no gradient to it
            g = gs.sub_(torch.div(vks[i], ks[i]).mul_(gs))  # gs * (v/k / k): a product commutes
    return acc


class _NewtonSqrtFn(Function):
    """The integer Newton square root under no_grad, one autograd node whose backward is the
    legacy STE chain's (`newton_sqrt_backward`). Bit-identical to mode ``ste``, without its
    40 autograd nodes."""

    @staticmethod
    def forward(ctx, v, iterations):
        k, saved = newton_sqrt_forward(v, iterations)
        ctx.save_for_backward(*saved)
        return k

    @staticmethod
    def backward(ctx, g):
        return newton_sqrt_backward(g, ctx.saved_tensors), None


def int_sqrt_newton(var_int: Tensor, mode: str, *, inline_ste: bool = True,
                    iterations: int = 10, lean: bool = False) -> Tensor:
    """Integer square root by ``iterations`` Newton steps from 2^16 (I-LayerNorm):
    k <- floor((k + floor(var / k)) / 2).

    ``ste``: under autograd with floor STE (the legacy gradient through every step);
    ``no_grad``: no gradient through the std at all (seed change 5);
    ``no_grad_sqrt_grad``: the same forward under no_grad in one autograd node whose
    backward is the ``ste`` chain's, bit for bit (`_NewtonSqrtFn`). Where ten steps from
    2^16 have converged that gradient is 1/(2 sqrt(var)); where they have not (small
    variances), it follows the iteration, as the legacy one does.
    """
    if mode == "ste":
        k = 2**16
        for _ in range(iterations):
            k = floor_ste((k + floor_ste(var_int / k, inline_ste, lean)) / 2, inline_ste, lean)
        return k
    if mode not in NEWTON_MODES:
        raise ValueError(f"layernorm_newton must be one of {NEWTON_MODES}, got {mode!r}")
    if mode == "no_grad_sqrt_grad" and torch.is_grad_enabled() and var_int.requires_grad:
        return _NewtonSqrtFn.apply(var_int, iterations)
    with torch.no_grad():
        return _newton_no_grad(var_int.detach(), iterations)


def _newton_no_grad(v: Tensor, iterations: int) -> Tensor:
    k = v.new_full(v.shape, 2**16)
    for _ in range(iterations):
        k = torch.floor((k + torch.floor(v / k)) / 2)
    return k
