"""Every rounding site against the exact reference (`qvit.reference`: Python integers and
fractions, no qvit tensor code), on constructed ties in both signs, at the clamps, and on
random data; every path a flag selects. (The quantizers' and STEs' ties: tests/qvit/ops.)"""

import itertools
from fractions import Fraction

import numpy as np
import pytest
import torch

from qvit import reference as R
from qvit.ops import requant as RQ

# --- the reference itself, on hand-worked values ------------------------------------------


def test_reference_rounding_rules():
    assert [R.round_half_even(Fraction(k, 2)) for k in (-5, -3, -1, 1, 3, 5)] == [
        -2, -2, 0, 0, 2, 2]
    assert [R.round_half_away(Fraction(k, 2)) for k in (-5, -3, -1, 1, 3, 5)] == [
        -3, -2, -1, 1, 2, 3]
    assert R.frexp(0.75) == (3 * 2**29, 31) and R.frexp(-0.75) == (-3 * 2**29, 31)
    assert R.frexp(1.0) == (2**30, 30) and R.frexp(0.0) == (0, 31)
    # 0.5 ulp of the 31-bit mantissa: away from zero, both signs
    assert R.frexp((2**30 + 0.5) / 2**31) == (2**30 + 1, 31)
    assert R.frexp(-(2**30 + 0.5) / 2**31) == (-(2**30 + 1), 31)
    assert R.requantize(3, 0.25, 0.5) == 2 and R.requantize(-3, 0.25, 0.5) == -2
    assert R.requantize(5, 0.25, 0.5) == 2 and R.requantize(-5, 0.25, 0.5) == -2
    assert R.quantize(127.5 * 0.25, 0.25, 8) == 127 and R.quantize(-128.5 * 0.25, 0.25, 8) == -128
    assert R.quantize(-2.5 * 0.25, 0.25, 8) == -2 and R.quantize(1.5 * 0.25, 0.25, 8) == 2


# --- frexp ----------------------------------------------------------------------------------

def _frexp_inputs():
    g = torch.Generator().manual_seed(0)
    x = torch.exp(torch.empty(400, dtype=torch.float64).uniform_(-30, 10, generator=g))
    ties = [(2**30 + 0.5) / 2**31, (2**30 + 1.5) / 2**31, (2**31 - 0.5) / 2**31,
            0.75 + 2.0**-33, 3 * 2.0**-40 + 2.0**-72]  # mantissa * 2^31 ends in exactly .5
    edge = [1.0, 0.5, 2.0**-20, 3.0, 1 - 2.0**-40, 1 - 2.0**-53, 1 - 2.0**-32 - 2.0**-53]
    x = torch.cat([x, torch.tensor(ties + edge, dtype=torch.float64)])
    return torch.cat([x, -x])  # both signs


@pytest.mark.parametrize("fn", [RQ.frexp_device, RQ.batch_frexp])
def test_frexp_matches_the_exact_reference_ties_and_signs(fn):
    x = _frexp_inputs()
    m, e = fn(x)
    want = [R.frexp(v) for v in x.tolist()]
    assert [(int(a), int(b)) for a, b in zip(m.tolist(), e.tolist(), strict=True)] == want
    # a tie really is one, in both signs: |m| ended up odd, half away from zero
    i = x.tolist().index(-(2**30 + 0.5) / 2**31)
    assert m[i].item() == -(2**30 + 1)


# --- requantization: every path, ties in both signs, the clamps ------------------------------

PATHS = [dict(fp64=fp64, use_frexp=fr, frexp=fx, fused=fu, ste=st)
         for fp64, fr, fx, fu, st in itertools.product(
             (True, False), (True, False), ("host", "device"), (True, False),
             ("function", "inline", "lean"))
         if fr or fx == "device"]


def _tie_case(bits, residual):
    """Integers z (odd: z * 1/2 is a tie) at per-channel scales whose ratio to the output
    scale is 1/2 or 3/4; input values sitting on ties of round(x / scale) too; values past
    both clamps."""
    c = 6
    in_scale = torch.tensor([2.0**-8, 2.0**-8, 1.5 * 2.0**-8, 2.0**-8, 2.0**-8, 2.0**-8])
    out_scale = torch.tensor([2.0**-7])
    n = 2 ** (bits - 1)
    z = torch.tensor([[1, 3, 5, 7, 2 * n - 1, 2 * n + 1],
                      [-1, -3, -5, -7, -2 * n - 1, -2 * n - 3]], dtype=torch.float32)
    z = torch.cat([z, z + 2]).view(2, 2, c)
    x = z * in_scale  # exact: z is small, the scales are powers of two (times 3/2)
    x_half = (z + 0.5) * in_scale  # round(x / scale) itself on a tie
    ident = id_scale = None
    if residual:
        id_scale = torch.tensor([2.0**-9])
        ident = torch.tensor([3.0, -3.0, 5.0, -5.0, 1.0, -1.0]).expand(2, 2, c) * id_scale
    return x, x_half, in_scale, out_scale, ident, id_scale


def _reference_out(x, in_scale, out_scale, bits, ident, id_scale):
    z = np.vectorize(lambda v, s: R.round_half_even(Fraction(v) / Fraction(s)), otypes=[object])(
        x.double().numpy(), in_scale.double().numpy())
    zi = None
    if ident is not None:
        zi = np.vectorize(lambda v: R.round_half_even(Fraction(v) / Fraction(id_scale.item())),
                          otypes=[object])(ident.double().numpy())
    out = R.fixedpoint_mul(z, in_scale.numpy(), out_scale.item(), bits, zi,
                           None if id_scale is None else id_scale.numpy())
    return torch.tensor(out.astype(np.int64).tolist(), dtype=torch.float32)


@pytest.mark.parametrize("bits, residual", [(8, False), (16, True), (8, True)])
@pytest.mark.parametrize("path", PATHS, ids=lambda p: "-".join(str(v) for v in p.values()))
def test_requantization_ties_both_signs_every_path(path, bits, residual):
    x, x_half, in_scale, out_scale, ident, id_scale = _tie_case(bits, residual)
    for inp in (x, x_half):
        want = _reference_out(inp, in_scale, out_scale, bits, ident, id_scale)
        xi = inp.clone().requires_grad_(True)
        got = RQ.fixedpoint_mul(xi, in_scale, bits, out_scale, ident, id_scale, **path)
        assert torch.equal(got.detach(), want), (got.detach() - want)
        got.backward(torch.ones_like(got))
        assert torch.equal(xi.grad, torch.full_like(xi, 1) / out_scale)  # STE: 1 / z_scale


@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("residual", [False, True])
def test_requantization_random_data_equals_the_reference(fused, residual):
    g = torch.Generator().manual_seed(3)
    x_int = torch.randint(-30000, 30000, (3, 5, 24), generator=g).float()
    in_scale = torch.rand(24, generator=g) * 1e-3 + 1e-5
    z_scale = torch.tensor([2e-2])
    ident = ident_scale = None
    if residual:
        ident_scale = torch.tensor([3e-3])
        ident = torch.randint(-3000, 3000, (3, 5, 24), generator=g).float() * ident_scale
    x = x_int * in_scale
    want = _reference_out(x, in_scale, z_scale, 16, ident, ident_scale)
    for frexp in ("host", "device"):
        out = RQ.fixedpoint_mul(x, in_scale, 16, z_scale, ident, ident_scale, fp64=True,
                                use_frexp=True, frexp=frexp, fused=fused)
        assert torch.equal(out, want)


def test_dyadic_int64_helper_equals_the_reference():
    g = torch.Generator().manual_seed(2)
    z = torch.randint(-2**20, 2**20, (2000,), generator=g)
    m = torch.randint(2**30, 2**31, (2000,), generator=g)
    e = torch.randint(20, 50, (2000,), generator=g)
    z[:4], m[:4], e[:4] = torch.tensor([3, -3, 5, -5]), 2**30, 31  # exact ties
    got = RQ.dyadic_requantize_int64(z, m, e)
    want = [R.round_half_even(Fraction(int(a) * int(b), 2 ** int(c)))
            for a, b, c in zip(z, m, e, strict=True)]
    assert got.tolist() == want
