"""Primitives against independent references written from the paper's equations (I-ViT,
arXiv 2207.01405), at zero tolerance where the arithmetic is integer."""

import math
from fractions import Fraction

import numpy as np
import pytest
import torch

from qvit import primitives as P


def _scales(n=4000, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.exp(torch.empty(n, dtype=torch.float64).uniform_(-30, 10, generator=g))
    edge = torch.tensor([1.0, 0.5, 2.0**-20, 3.0, 1 - 2.0**-40, 0.75 + 2.0**-33,
                         (2**31 - 0.5) / 2**31, (2**30 + 0.5) / 2**31], dtype=torch.float64)
    return torch.cat([x, edge])


def _frexp_reference(x: float, bits=31):
    """Exact decomposition x = m / 2^e with m the mantissa in [2^30, 2^31] rounded half up."""
    f = Fraction(x)
    exp = math.floor(math.log2(f)) + 1 if f else 0
    while f and Fraction(2) ** (exp - 1) > f:
        exp -= 1
    while f and Fraction(2) ** exp <= f:
        exp += 1
    scaled = f / Fraction(2) ** exp * 2**bits
    m = math.floor(scaled + Fraction(1, 2))
    return m, bits - exp


def test_frexp_device_matches_cpu_batch_frexp_bit_for_bit():
    x = _scales().view(8, -1)
    m_cpu, e_cpu = P.batch_frexp(x)
    m_dev, e_dev = P.frexp_device(x)
    assert torch.equal(m_cpu, m_dev) and torch.equal(e_cpu, e_dev)


def test_frexp_against_exact_reference():
    x = _scales(500, seed=1)
    m, e = P.frexp_device(x)
    for xi, mi, ei in zip(x.tolist(), m.tolist(), e.tolist(), strict=True):
        assert (mi, ei) == _frexp_reference(xi)
        assert 2**30 <= mi <= 2**31


def test_fixedpoint_mul_gradient_is_ste_over_output_scale():
    x = torch.randn(2, 3, 5, requires_grad=True)
    z = torch.tensor([0.05])
    grads = []
    for inline in (False, True):
        x.grad = None
        out = P.fixedpoint_mul(x, torch.tensor([0.01]), 8, z, fp64=True, use_frexp=True,
                               frexp_on_device=True, inline_ste=inline)
        out.sum().backward()
        grads.append(x.grad.clone())
    assert torch.equal(grads[0], grads[1])
    assert torch.allclose(grads[0], torch.full_like(x, 1 / 0.05))


@pytest.mark.parametrize("inline", [False, True])
def test_floor_round_ste_values_and_identity_gradient(inline):
    x = (torch.randn(1000) * 100).requires_grad_()
    for fn, ref in ((P.floor_ste, torch.floor), (P.round_ste, torch.round)):
        y = fn(x, inline)
        assert torch.equal(y.detach(), ref(x.detach()))
        (g,) = torch.autograd.grad(y.sum(), x)
        assert torch.equal(g, torch.ones_like(x))


def test_symmetric_quantize_reference():
    w = torch.randn(16, 32)
    v = w.reshape(16, -1)
    scale = P.symmetric_scale(8, v.min(1).values, v.max(1).values)
    ref_scale = torch.max(v.min(1).values.abs(), v.max(1).values) / 127
    assert torch.equal(scale, ref_scale)
    q = P.symmetric_quantize(w, 8, scale, is_weight=True)
    ref = torch.clamp(torch.round(w * (1 / scale[:, None])), -128, 127)
    assert torch.equal(q, ref)
    assert q.abs().max() <= 127


def test_symmetric_quantize_paths_agree_and_zero_point_is_free():
    x = torch.randn(8, 16, requires_grad=True)
    s = torch.tensor([0.02])
    outs, grads = [], []
    for inline in (False, True):
        for const in (False, True):
            y = P.symmetric_quantize(x, 8, s, is_weight=False, inline_ste=inline,
                                     constant_zero_point=const)
            (g,) = torch.autograd.grad((y * torch.arange(16.0)).sum(), x)
            outs.append(y.detach())
            grads.append(g)
    assert all(torch.equal(o, outs[0]) for o in outs)
    assert all(torch.equal(g, grads[0]) for g in grads)


def test_ternary_quantize():
    w = torch.randn(8, 16)
    s = w.abs().mean(1)
    q = P.ternary_quantize(w, s)
    assert set(q.unique().tolist()) <= {-1.0, 0.0, 1.0}
    assert torch.equal(q, torch.clamp(torch.round(w * (1 / s[:, None])), -1, 1))


def _int_exp_reference(i: int, x0: int, n: int) -> int:
    """Shiftmax exp from the paper: I_p = I + I>>1 - I>>4; q = floor(I_p/x0); r = I_p - x0 q;
    exp = (r/2 - x0) << (n - q), floored."""
    ip = i + math.floor(i / 2) - math.floor(i / 16)
    ip = max(ip, n * x0)
    q = math.floor(Fraction(ip, x0))
    r = ip - x0 * q
    return max(math.floor((Fraction(r, 2) - x0) * Fraction(2) ** (n - q)), 0)


@pytest.mark.parametrize("n", [15, 23])
def test_int_exp_shift_against_integer_reference(n):
    scale = torch.tensor([0.0123])
    x0 = int(math.floor(-1 / 0.0123))
    xs = torch.arange(-1200, 1, dtype=torch.float32)
    for inline in (False, True):
        got, out_scale = P.int_exp_shift(xs, scale, n, inline_ste=inline)
        want = [_int_exp_reference(int(i), x0, n) for i in xs.tolist()]
        assert got.tolist() == want
        assert torch.equal(out_scale, scale / 2**n)
    # e^x within the shift approximation's error (a few percent)
    approx = got * out_scale
    true = torch.exp(xs * 0.0123)
    near = xs * 0.0123 > -5
    assert ((approx - true).abs() / true)[near].max() < 0.15  # shift approximation error


def _isqrt_newton_reference(v: int, iters=10) -> int:
    k = 2**16
    for _ in range(iters):
        k = (k + v // k) // 2
    return k


@pytest.mark.parametrize("mode", ["ste", "no_grad", "no_grad_sqrt_grad"])
def test_int_sqrt_newton_against_integer_reference(mode):
    g = torch.Generator().manual_seed(4)
    v = torch.randint(1, 2**24, (2000,), generator=g).double()
    got = P.int_sqrt_newton(v, mode)
    want = [_isqrt_newton_reference(int(i)) for i in v.tolist()]
    assert got.tolist() == want


def test_int_sqrt_newton_gradients():
    # LayerNorm variances in the models: sums of squared 16-bit integers over channels
    v = (torch.rand(50, dtype=torch.float64) * 1e9 + 1e8).requires_grad_()
    g_ste = torch.autograd.grad(P.int_sqrt_newton(v, "ste").sum(), v)[0]
    g_true = torch.autograd.grad(P.int_sqrt_newton(v, "no_grad_sqrt_grad").sum(), v)[0]
    assert torch.allclose(g_true, 0.5 / v.detach().sqrt())
    assert ((g_ste - g_true).norm() / g_true.norm()) < 1e-5
    assert not P.int_sqrt_newton(v, "no_grad").requires_grad


def test_batch_frexp_is_a_host_round_trip_numpy_reference():
    x = torch.tensor([0.3, 0.7], dtype=torch.float64)
    m, e = P.batch_frexp(x)
    nm, ne = np.frexp(x.numpy())
    assert torch.equal(e, torch.from_numpy(31.0 - ne))
    assert torch.equal(m, torch.from_numpy(np.floor(nm * 2**31 + 0.5)))


def test_bad_activation_rank_is_refused():
    with pytest.raises(ValueError, match="2-D, 3-D or 4-D"):
        P.fixedpoint_mul(torch.zeros(2, 2, 2, 2, 2), torch.ones(1), 8, torch.ones(1), fp64=True,
                         use_frexp=False, frexp_on_device=False)


def test_inline_ste_is_exact_where_the_seeds_formula_is_not():
    g = torch.Generator().manual_seed(5)
    x = torch.empty(100000).uniform_(-1e9, 1e9, generator=g)  # saturated activations
    q = torch.clamp(torch.round(x), -128, 127)
    assert not torch.equal(x + (q - x), q)  # the seed's inline form drifts when clamped
    s = torch.tensor([1.0])
    got = P.symmetric_quantize(x.view(1, -1), 8, s, is_weight=False, inline_ste=True)
    assert torch.equal(got, q.view(1, -1))
    for fn, ref in ((P.floor_ste, torch.floor), (P.round_ste, torch.round)):
        y = torch.empty(100000).uniform_(-3, 3, generator=g)
        assert torch.equal(fn(y, True), ref(y))


def test_newton_sqrt_grad_follows_legacy_chain_when_not_converged():
    # 8-bit LayerNorm inputs: variances ~1e4, ten steps from 2^16 have not converged
    v = (torch.rand(64, dtype=torch.float64) * 1e4 + 100).requires_grad_()
    g_ste = torch.autograd.grad(P.int_sqrt_newton(v, "ste").sum(), v)[0]
    g_fwd = torch.autograd.grad(P.int_sqrt_newton(v, "no_grad_sqrt_grad").sum(), v)[0]
    assert ((g_ste - g_fwd).norm() / g_ste.norm()) < 1e-10
    assert torch.equal(P.int_sqrt_newton(v, "no_grad_sqrt_grad"), P.int_sqrt_newton(v, "ste"))
