"""qvit.ops.linear: QuantLinear and QuantMatMul with the lean weight range and in-place
rescale are the reference bit for bit (values, every gradient, the weight scale)."""

import torch

from qvit import Flags
from qvit.modules import QuantLinear, QuantMatMul
from qvit.ops import linear

LEGACY = Flags.preset("legacy")


def test_weight_range_paths_agree():
    w = torch.randn(24, 3, 4, 4)
    assert all(torch.equal(a, b) for a, b in zip(linear.weight_range(w, "min_max"),
                                                 linear.weight_range(w, "amin_amax"),
                                                 strict=True))


def test_lean_linear_and_matmul_are_the_reference_bit_for_bit():
    g = torch.Generator().manual_seed(8)
    x = torch.round(torch.randn(2, 5, 16, generator=g) * 50) * 0.02
    a = torch.round(torch.randn(2, 3, 5, 8, generator=g) * 50) * 0.02
    res = []
    for impl in ("reference", "lean"):
        torch.manual_seed(0)
        lin, mm = QuantLinear(16, 24), QuantMatMul()
        lin.flags = mm.flags = LEGACY.replace(linear_impl=impl)
        xi, ai = x.clone().requires_grad_(True), a.clone().requires_grad_(True)
        y, s = lin(xi, torch.tensor([0.02]))
        z, sz = mm(ai, torch.tensor([0.02]), ai.transpose(-1, -2), torch.tensor([0.02]))
        (y.pow(2).sum() + z.pow(2).sum()).backward()
        res.append([y, s, z, sz, xi.grad, ai.grad, lin.weight.grad, lin.bias.grad,
                    lin.weight_scaling_factor])
    assert all(torch.equal(u, v) for u, v in zip(*res, strict=True))
