"""qvit.ops.quantize: symmetric and ternary quantization on every STE path and zero-point
form, and QuantAct's lean input quantizer, against references at zero tolerance."""

import itertools

import pytest
import torch

from qvit import reference as R
from qvit.ops import quantize as Q
from qvit.ops.ste import STE_PATHS

PATHS = [dict(ste=s, constants=c) for s, c in itertools.product(STE_PATHS,
                                                                  ("per_call", "buffer"))]


def _ids(p):
    return f"{p['ste']}-{p['constants']}"


def test_symmetric_quantize_reference():
    w = torch.randn(16, 32)
    v = w.reshape(16, -1)
    scale = Q.symmetric_scale(8, v.min(1).values, v.max(1).values)
    ref_scale = torch.max(v.min(1).values.abs(), v.max(1).values) / 127
    assert torch.equal(scale, ref_scale)
    q = Q.symmetric_quantize(w, 8, scale, is_weight=True)
    ref = torch.clamp(torch.round(w * (1 / scale[:, None])), -128, 127)
    assert torch.equal(q, ref)
    assert q.abs().max() <= 127


def test_symmetric_quantize_paths_agree_and_zero_point_is_free():
    x = torch.randn(8, 16, requires_grad=True)
    s = torch.tensor([0.02])
    outs, grads = [], []
    for path in PATHS:
        y = Q.symmetric_quantize(x, 8, s, is_weight=False, **path)
        (g,) = torch.autograd.grad((y * torch.arange(16.0)).sum(), x)
        outs.append(y.detach())
        grads.append(g)
    assert all(torch.equal(o, outs[0]) for o in outs)
    assert all(torch.equal(g, grads[0]) for g in grads)


@pytest.mark.parametrize("constants", ["per_call", "buffer"])
def test_lean_quantize_equals_the_legacy_function(constants):
    w = torch.randn(8, 16)
    scale = w.abs().amax(dim=1) / 127
    a, b = w.clone().requires_grad_(True), w.clone().requires_grad_(True)
    ya = Q.symmetric_quantize(a, 8, scale, is_weight=True, ste="function", constants=constants)
    yb = Q.symmetric_quantize(b, 8, scale, is_weight=True, ste="lean", constants=constants)
    assert torch.equal(ya, yb)
    ya.pow(2).sum().backward()
    yb.pow(2).sum().backward()
    assert torch.equal(a.grad, b.grad)


def test_ternary_quantize():
    w = torch.randn(8, 16)
    s = w.abs().mean(1)
    q = Q.ternary_quantize(w, s)
    assert set(q.unique().tolist()) <= {-1.0, 0.0, 1.0}
    assert torch.equal(q, torch.clamp(torch.round(w * (1 / s[:, None])), -1, 1))


def test_inline_quantize_is_exact_where_the_seeds_formula_is_not():
    g = torch.Generator().manual_seed(5)
    x = torch.empty(100000).uniform_(-1e9, 1e9, generator=g)  # saturated activations
    q = torch.clamp(torch.round(x), -128, 127)
    assert not torch.equal(x + (q - x), q)  # the seed's inline form drifts when clamped
    got = Q.symmetric_quantize(x.view(1, -1), 8, torch.tensor([1.0]), is_weight=False,
                               ste="inline")
    assert torch.equal(got, q.view(1, -1))


def _tie_values(bits, scale):
    n = 2 ** (bits - 1)
    k = [0.5, 1.5, 2.5, 3.5, n - 1.5, n - 0.5, n + 0.5, n + 3.5]
    ks = k + [-v for v in k]
    return torch.tensor(ks) * scale


@pytest.mark.parametrize("path", PATHS, ids=_ids)
@pytest.mark.parametrize("bits", [8, 16])
def test_symmetric_quantize_ties_and_clamps_both_signs(path, bits):
    s = 2.0**-5
    v = _tie_values(bits, s)
    want = torch.tensor([float(R.quantize(a, s, bits)) for a in v.tolist()])
    for is_weight, x, scale in ((False, v.view(1, -1), torch.tensor([s])),
                                (True, v.view(2, -1), torch.tensor([s, s]))):
        got = Q.symmetric_quantize(x, bits, scale, is_weight=is_weight, **path)
        assert torch.equal(got.reshape(-1), want)
    assert want.max() == 2 ** (bits - 1) - 1 and want.min() == -(2 ** (bits - 1))


@pytest.mark.parametrize("path", PATHS, ids=_ids)
def test_ternary_quantize_ties_both_signs(path):
    s = torch.tensor([0.25, 0.5])
    w = torch.tensor([[0.125, -0.125, 0.375, -0.375], [0.25, -0.25, 0.75, -0.75]])
    got = Q.ternary_quantize(w, s, **path)
    assert torch.equal(got, torch.tensor([[0.0, 0.0, 1.0, -1.0], [0.0, 0.0, 1.0, -1.0]]))


@pytest.mark.parametrize("bits", [8, 16])
def test_lean_quantize_act_ties_and_clamps(bits):
    s = 2.0**-5
    n = 2 ** (bits - 1)
    k = [0.5, 1.5, 2.5, n - 0.5, n + 0.5, n + 3.5]
    v = torch.tensor(k + [-a for a in k]) * s
    want = torch.tensor([float(R.quantize(a, s, bits)) for a in v.tolist()]) * s
    xi = v.view(2, 1, -1).clone().requires_grad_(True)
    got = Q.quantize_act(xi, torch.tensor([s]), bits)
    assert torch.equal(got.reshape(-1), want)
    got.backward(torch.full_like(got, 3.0))
    assert torch.equal(xi.grad, torch.full_like(xi, 3.0 * s / s))


def test_lean_quantize_act_is_the_chain_where_x_over_s_and_x_times_inverse_round_apart():
    """The chain quantizes (1/s) * x; x / s rounds differently for some x near a half step.
    Those x are searched for and both paths compared on them (values and gradients)."""
    s = torch.tensor([0.1])
    k = torch.arange(-120, 120, dtype=torch.float32) + 0.5
    x = torch.cat([torch.nextafter(k * s, torch.tensor(d)) for d in (-1e9, 0.0, 1e9)] +
                  [k * s])
    apart = torch.round(x * (1.0 / s)) != torch.round(x / s)
    assert apart.sum() >= 10  # the constructed cases exist
    x = x[apart].view(1, 1, -1)
    for path in PATHS:
        a = x.clone().requires_grad_(True)
        b = x.clone().requires_grad_(True)
        want = Q.symmetric_quantize(a, 8, s, is_weight=False, **path) * s
        got = Q.quantize_act(b, s, 8)
        assert torch.equal(got, want)
        want.backward(torch.ones_like(want))
        got.backward(torch.ones_like(got))
        assert torch.equal(b.grad, a.grad)
