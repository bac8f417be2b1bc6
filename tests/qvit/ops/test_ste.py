"""qvit.ops.ste: every STE path against torch's floor/round, identity gradients, and the
lean Function against I-ViT's (the same values forward and backward)."""

from fractions import Fraction

import numpy as np
import pytest
import torch

from qvit import reference as R
from qvit.ops import ste


@pytest.mark.parametrize("path", ste.STE_PATHS)
def test_floor_round_ste_values_and_identity_gradient(path):
    x = (torch.randn(1000) * 100).requires_grad_()
    for fn, ref in ((ste.floor_ste, torch.floor), (ste.round_ste, torch.round)):
        y = fn(x, path)
        assert torch.equal(y.detach(), ref(x.detach()))
        (g,) = torch.autograd.grad(y.sum(), x)
        assert torch.equal(g, torch.ones_like(x))


@pytest.mark.parametrize("fn", [ste.floor_ste, ste.round_ste])
def test_lean_ste_equals_the_legacy_function(fn):
    x = torch.randn(64) * 10
    a, b = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    ya, yb = fn(a, "function"), fn(b, "lean")
    assert torch.equal(ya, yb)
    (ya * torch.arange(64.0)).sum().backward()
    (yb * torch.arange(64.0)).sum().backward()
    assert torch.equal(a.grad, b.grad)


@pytest.mark.parametrize("path", ste.STE_PATHS)
def test_round_and_floor_ste_ties_both_signs(path):
    x = torch.tensor([-3.5, -2.5, -1.5, -0.5, 0.5, 1.5, 2.5, 3.5, -2.0, 2.0, -0.25])
    r = ste.round_ste(x, path)
    assert r.tolist() == [R.round_half_even(Fraction(v)) for v in x.tolist()]
    f = ste.floor_ste(x, path)
    assert f.tolist() == [float(np.floor(v)) for v in x.tolist()]


def test_inline_floor_round_are_exact_on_large_values():
    g = torch.Generator().manual_seed(5)
    for fn, ref in ((ste.floor_ste, torch.floor), (ste.round_ste, torch.round)):
        y = torch.empty(100000).uniform_(-3, 3, generator=g)
        assert torch.equal(fn(y, "inline"), ref(y))
