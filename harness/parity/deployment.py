"""The int64 reference of what an integer-only deployment computes for a requantizing
QuantAct, from the pieces of `qvit.ops.requant` (`frexp_device`,
`dyadic_requantize_int64`)."""

from __future__ import annotations

import torch
from torch import Tensor

from qvit.ops import requant

__all__ = ["deployment_reference"]

def deployment_reference(x: Tensor, pre_scale: Tensor, out_scale: Tensor, num_bits: int,
                         identity: Tensor | None = None,
                         identity_scale: Tensor | None = None) -> Tensor:
    """The int64 integers an integer-only deployment computes for a requantizing QuantAct:
    input integers round(x / scale), the scale ratio as a 31-bit dyadic m * 2^-e
    (`frexp_device`), ``round_half_even(z * m / 2^e)`` in int64 (`dyadic_requantize_int64`),
    plus the residual rescaled the same way, clamped to ``num_bits``."""
    shape = requant.act_scale_shape(x)

    def one(v: Tensor, s: Tensor) -> Tensor:
        s = s.detach().view(shape)
        z = torch.round(v.detach() / s)
        ratio = s.to(torch.float64) / out_scale.detach().to(torch.float32).to(torch.float64)
        m, e = requant.frexp_device(ratio)
        return requant.dyadic_requantize_int64(z, m, e)

    with torch.no_grad():
        ref = one(x, pre_scale)
        if identity is not None:
            ref = ref + one(identity, identity_scale)
        n = 2 ** (num_bits - 1) - 1
        return ref.clamp(-n - 1, n) if num_bits in (4, 8, 16, 32) else ref
