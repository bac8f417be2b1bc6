"""The int64 reference of what an integer-only deployment computes for a requantizing
QuantAct, built from qvit's dyadic primitives (`frexp_device`, `dyadic_requantize_int64`)."""

from __future__ import annotations

import torch
from torch import Tensor

from qvit import primitives as P

__all__ = ["deployment_reference"]

# where a per-channel scale sits for 2-D (tokens, C), 3-D (B, N, C) and 4-D (B, C, H, W) input
_SCALE_SHAPE = {2: (1, -1), 3: (1, 1, -1), 4: (1, -1, 1, 1)}


def _scale_shape(x: Tensor) -> tuple[int, ...]:
    if x.dim() not in _SCALE_SHAPE:
        raise ValueError(f"requantization takes 2-D, 3-D or 4-D activations, got {x.dim()}-D")
    return _SCALE_SHAPE[x.dim()]


def deployment_reference(x: Tensor, pre_scale: Tensor, out_scale: Tensor, num_bits: int,
                         identity: Tensor | None = None,
                         identity_scale: Tensor | None = None) -> Tensor:
    """The int64 integers an integer-only deployment computes for a requantizing QuantAct:
    input integers round(x / scale), the scale ratio as a 31-bit dyadic m * 2^-e
    (`frexp_device`), ``round_half_even(z * m / 2^e)`` in int64 (`dyadic_requantize_int64`),
    plus the residual rescaled the same way, clamped to ``num_bits``."""
    shape = _scale_shape(x)

    def one(v: Tensor, s: Tensor) -> Tensor:
        s = s.detach().view(shape)
        z = torch.round(v.detach() / s)
        ratio = s.to(torch.float64) / out_scale.detach().to(torch.float32).to(torch.float64)
        m, e = P.frexp_device(ratio)
        return P.dyadic_requantize_int64(z, m, e)

    with torch.no_grad():
        ref = one(x, pre_scale)
        if identity is not None:
            ref = ref + one(identity, identity_scale)
        n = 2 ** (num_bits - 1) - 1
        return ref.clamp(-n - 1, n) if num_bits in (4, 8, 16, 32) else ref
