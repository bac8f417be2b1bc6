"""Symmetric (and ternary) quantization with a straight-through gradient, and QuantAct's
input quantizer.

Paths: the STE form (`Paths.ste`: ``function``, ``inline``, ``lean``), the zero point
(`Paths.constants`: ``per_call`` builds ``torch.tensor(0.)`` on every call, seed change 7,
adding nothing to the value) and, for QuantAct's input, `Paths.act_quantize`: ``chain``
(symmetric_quantize, then the module's ``q * scale``) or ``lean`` (`quantize_act`, one node
with the same values and gradient).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd import Function

from .ste import straight_through

__all__ = ["EPS_F32", "float32_eps", "symmetric_scale", "symmetric_quantize",
           "ternary_quantize", "quantize_act"]

EPS_F32: float = torch.finfo(torch.float32).eps  # seed change 15: evaluated once


def float32_eps(constant: bool) -> float:
    """float32 eps; ``constant=False`` asks torch every call, as the legacy code did."""
    return EPS_F32 if constant else torch.finfo(torch.float32).eps


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
    gradient copy: the same values, forward and backward (ste path lean)."""

    @staticmethod
    def forward(ctx, x, qmin, qmax, s, zero_point):
        ctx.save_for_backward(s)
        q = torch.mul(1.0 / s, x)
        if zero_point is not None:
            q.add_(zero_point)
        return q.round_().clamp_(qmin, qmax)

    @staticmethod
    def backward(ctx, grad_output):
        (s,) = ctx.saved_tensors
        return grad_output / s, None, None, None, None


def _quantize_ste(x: Tensor, s: Tensor, qmin: int, qmax: int, ste: str,
                  constants: str) -> Tensor:
    zero_point = None if constants == "buffer" else torch.tensor(0.0).to(x.device)
    s = s.detach()
    if ste == "lean":
        return _QuantizeSTELean.apply(x, qmin, qmax, s, zero_point)
    if ste == "function":
        return _QuantizeSTEFunction.apply(x, qmin, qmax, s, zero_point)
    with torch.no_grad():
        q = 1.0 / s * x
        if zero_point is not None:
            q = q + zero_point
        q = torch.clamp(torch.round(q), qmin, qmax)
    return straight_through(q, x / s)  # x / s carries the legacy backward, grad / scale


def symmetric_quantize(x: Tensor, num_bits: int, scale: Tensor, *, is_weight: bool,
                       ste: str = "inline", constants: str = "buffer") -> Tensor:
    """Integer values of ``x`` in [-2^(b-1), 2^(b-1)-1] (as float), gradient 1/scale (STE).
    ``scale`` is per output channel for weights, per tensor (or last dim) for activations."""
    n = 2 ** (num_bits - 1) - 1
    s = _scale_shape(x, scale, is_weight)
    return _quantize_ste(x, s, -n - 1, n, ste, constants)


def ternary_quantize(w: Tensor, scale: Tensor, *, ste: str = "inline",
                     constants: str = "buffer") -> Tensor:
    """Ternary weights {-1, 0, 1} = clamp(round(w / scale), -1, 1) per output channel, STE."""
    return _quantize_ste(w, _scale_shape(w, scale, True), -1, 1, ste, constants)


class _QuantizeAct(Function):
    """QuantAct's input quantization times its scale: clamp(round((1/s) * x)) * s, backward
    (g * s) / s: the chain's values (the zero point adds nothing) and its gradient (the
    module's multiply by s, then the STE's division)."""

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
    times the scale, as one node (act_quantize path lean)."""
    n = 2 ** (num_bits - 1) - 1
    return _QuantizeAct.apply(x, scale, -n - 1, n)
