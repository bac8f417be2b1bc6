"""qvit.ops.act_range: every path of QuantAct's range observation (scope, reduction,
first-call check) gives the same running range, per rank, from an empty range and with
momentum."""

import itertools

import pytest
import torch

from qvit.ops import act_range

PATHS = list(itertools.product(("per_channel", "global"), ("min_max", "aminmax"),
                               ("sync", "where")))


@pytest.mark.parametrize("dim", [2, 3, 4])
def test_every_range_path_gives_the_same_range(dim):
    g = torch.Generator().manual_seed(dim)
    shape = {2: (40, 12), 3: (3, 17, 12), 4: (3, 12, 5, 7)}[dim]
    xs = [torch.randn(shape, generator=g) * (i + 1) for i in range(3)]
    ranges = []
    for path in PATHS:
        lo, hi = torch.zeros(1), torch.zeros(1)
        rec = []
        for x in xs:
            lo, hi = act_range.observe(x, lo, hi, 0.95, path)
            assert lo.shape == hi.shape == (1,)
            rec += [lo, hi]
        ranges.append(rec)
    for rec in ranges[1:]:
        assert all(torch.equal(a, b) for a, b in zip(rec, ranges[0], strict=True))
    assert torch.equal(ranges[0][0], xs[0].min().reshape(1))  # the first call takes the batch's
