"""QuantAct's running range: the batch's range, then the momentum update.

Paths (`Paths.act_range`, three independent parts):

* scope: ``per_channel`` (the legacy reshape/transpose, per-channel extremes, then the
  global one) or ``global`` (seed change 6: x.min()/x.max(); the same values, since the
  extreme of the extremes is the extreme);
* reduction: ``min_max`` (two passes) or ``aminmax`` (one pass, ours);
* first-call check: ``sync`` (``if torch.eq(min, max).all()``, a host read per call) or
  ``where`` (decided on the device, ours).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["batch_range", "new_range_sync", "new_range_where", "UPDATES", "observe"]


def batch_range(x: Tensor, scope: str, reduction: str) -> tuple[Tensor, Tensor]:
    """The batch's range, over the whole tensor (``global``) or, as the legacy code, per
    channel of a transposed copy (the caller takes the extreme of those)."""
    aminmax = reduction == "aminmax"
    if scope == "global":
        return torch.aminmax(x) if aminmax else (x.min(), x.max())
    if x.dim() == 4:
        x = x.permute(0, 2, 3, 1)
    v = x.reshape(-1, x.shape[-1]).transpose(0, 1)
    if aminmax:
        return torch.aminmax(v, dim=1)
    return v.min(dim=1).values, v.max(dim=1).values


def new_range_where(min_val: Tensor, max_val: Tensor, cur_min: Tensor, cur_max: Tensor,
                    m: float) -> tuple[Tensor, Tensor]:
    """The momentum update; the first call (empty range) takes the batch range, decided on
    the device."""
    first = torch.eq(min_val, max_val)
    return (torch.where(first, cur_min, min_val * m + cur_min * (1 - m)),
            torch.where(first, cur_max, max_val * m + cur_max * (1 - m)))


def new_range_sync(min_val: Tensor, max_val: Tensor, cur_min: Tensor, cur_max: Tensor,
                   m: float) -> tuple[Tensor, Tensor]:
    if torch.eq(min_val, max_val).all():  # a host sync on every call
        return cur_min, cur_max
    return min_val * m + cur_min * (1 - m), max_val * m + cur_max * (1 - m)


UPDATES = {"sync": new_range_sync, "where": new_range_where}


def observe(x: Tensor, min_val: Tensor, max_val: Tensor, momentum: float,
            path: tuple[str, str, str]) -> tuple[Tensor, Tensor]:
    """The new running range (one element each) after batch ``x``, by ``path`` (scope,
    reduction, first-call check)."""
    scope, reduction, check = path
    new_min, new_max = UPDATES[check](min_val, max_val, *batch_range(x, scope, reduction),
                                      momentum)
    if scope == "global":  # (already one value each)
        return new_min.reshape(1), new_max.reshape(1)
    return new_min.min().reshape(1), new_max.max().reshape(1)
