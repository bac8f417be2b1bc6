"""The two per-layer pieces of QuantLinear, QuantConv2d and QuantMatMul that have paths
(`Paths.weight_range`, `Paths.rescale`): the weight's per-output-channel range, by
``min_max`` (min/max(dim), which also compute indices nobody reads) or ``amin_amax``
(vectorized reductions, a tenth of the time); and the rescale of the integer product by its
scale, into a ``copy`` or ``in_place`` into the product the layer has just made (the same
values; autograd's in-place multiply has the same backward, grad * scale). The products
themselves are float32 GEMMs on integer values (exact while sums stay below 2^24)."""

from __future__ import annotations

from torch import Tensor

__all__ = ["weight_range", "rescale_copy", "rescale_in_place", "RESCALE"]


def weight_range(w: Tensor, path: str) -> tuple[Tensor, Tensor]:
    """Per-output-channel (min, max) of ``w`` by ``path`` ("min_max" or "amin_amax")."""
    v = w.reshape(w.shape[0], -1)
    if path == "amin_amax":
        return v.amin(dim=1), v.amax(dim=1)
    return v.min(dim=1).values, v.max(dim=1).values


def rescale_copy(out: Tensor, scale: Tensor) -> Tensor:
    return out * scale


def rescale_in_place(out: Tensor, scale: Tensor) -> Tensor:
    return out.mul_(scale)


RESCALE = {"copy": rescale_copy, "in_place": rescale_in_place}
