"""Zero-tolerance tests of the beyond-seed primitives: fused requantization, lean STEs and
the fused integer softmax, each against the path it replaces."""

import pytest
import torch

from qvit import fused as FU
from qvit import primitives as P
from qvit.flags import Flags
from qvit.modules import IntGELU, IntSoftmax


def _ints(shape, lo, hi, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(lo, hi, shape, generator=g).to(torch.float32)


@pytest.mark.parametrize("fp64", [True, False])
@pytest.mark.parametrize("use_frexp", [True, False])
def test_requant_fused_is_bit_identical(fp64, use_frexp):
    z = _ints((4, 9, 16), -2**20, 2**20, 0)
    g = torch.Generator().manual_seed(1)
    in_scale = (torch.rand(1, 1, 16, generator=g) + 0.1) * 1e-4
    out_scale = torch.tensor([3e-3])
    kw = dict(fp64=fp64, use_frexp=use_frexp, frexp_on_device=True)
    ref = P._requantize_int(z.clone(), in_scale, out_scale, **kw)
    got = P._requantize_int(z.clone(), in_scale, out_scale, fused=True, **kw)
    assert torch.equal(got, ref)


def test_requant_fused_matches_the_integer_dyadic_reference():
    z = _ints((8, 5, 32), -2**21, 2**21, 2)
    g = torch.Generator().manual_seed(3)
    in_scale = (torch.rand(1, 1, 32, generator=g) + 0.05) * 1e-5
    out_scale = torch.tensor([2e-3])
    got = P._requantize_int(z.clone(), in_scale, out_scale, fp64=True, use_frexp=True,
                            frexp_on_device=True, fused=True)
    ratio = in_scale.to(torch.float64) / out_scale.to(torch.float64)
    m, e = P.frexp_device(ratio)
    ref = P.dyadic_requantize_int64(z, m.expand_as(z), e.expand_as(z))
    assert torch.equal(got.to(torch.int64), ref)


@pytest.mark.parametrize("identity", [False, True])
@pytest.mark.parametrize("inline", [False, True])
def test_fixedpoint_mul_fused_and_lean_same_values_and_gradients(identity, inline):
    g = torch.Generator().manual_seed(4)
    x = torch.randn(4, 9, 16, generator=g) * 3
    idt = torch.randn(4, 9, 16, generator=g) if identity else None
    s_in, s_id, s_out = torch.full((16,), 1e-3), torch.tensor([2e-3]), torch.tensor([0.05])
    outs = []
    for fused, lean in [(False, False), (True, False), (False, True), (True, True)]:
        xi = x.clone().requires_grad_(True)
        ii = idt.clone().requires_grad_(True) if identity else None
        y = P.fixedpoint_mul(xi, s_in, 8, s_out, ii, s_id if identity else None, fp64=True,
                             use_frexp=True, frexp_on_device=True, inline_ste=inline,
                             fused=fused, lean=lean)
        y.backward(torch.linspace(-1, 1, y.numel()).view_as(y))
        outs.append((y, xi.grad, ii.grad if identity else None))
    for y, gx, gi in outs[1:]:
        assert torch.equal(y, outs[0][0])
        assert torch.equal(gx, outs[0][1])
        assert gi is None or torch.equal(gi, outs[0][2])


@pytest.mark.parametrize("fn", [P.floor_ste, P.round_ste])
def test_lean_ste_equals_legacy_function(fn):
    x = torch.randn(64) * 10
    a, b = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    ya, yb = fn(a, inline=False), fn(b, inline=False, lean=True)
    assert torch.equal(ya, yb)
    (ya * torch.arange(64.0)).sum().backward()
    (yb * torch.arange(64.0)).sum().backward()
    assert torch.equal(a.grad, b.grad)


def test_lean_quantize_equals_legacy_function():
    w = torch.randn(8, 16)
    scale = w.abs().amax(dim=1) / 127
    a, b = w.clone().requires_grad_(True), w.clone().requires_grad_(True)
    ya = P.symmetric_quantize(a, 8, scale, is_weight=True, inline_ste=False)
    yb = P.symmetric_quantize(b, 8, scale, is_weight=True, inline_ste=False, lean=True)
    assert torch.equal(ya, yb)
    ya.pow(2).sum().backward()
    yb.pow(2).sum().backward()
    assert torch.equal(a.grad, b.grad)


def _grad_pair(make, flag, x, s, seed, fused_flags=("inline_ste", "ste_lean")):
    """Forward values and input gradients of ``make()`` under every STE path of the legacy
    chain and with ``flag`` on (fused), for one upstream gradient."""
    legacy = Flags.preset("legacy")
    configs = [legacy, legacy.replace(inline_ste=True), legacy.replace(ste_lean=True),
               legacy.replace(**{flag: True}), legacy.replace(lean_int_exp=True),
               Flags.preset("best")]
    res = []
    for flags in configs:
        m = make()
        m.flags = flags
        xi = x.clone().requires_grad_(True)
        y, _ = m(xi, s)
        y.backward(torch.randn(y.shape, generator=torch.Generator().manual_seed(seed)))
        res.append((y.detach(), xi.grad))
    return res


def _assert_all_bitwise(res):
    for y, g in res[1:]:
        assert torch.equal(y, res[0][0])
        assert torch.equal(g, res[0][1]), (g - res[0][1]).abs().max()


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("bits, masked", [(8, True), (8, False), (16, False)])
def test_fused_softmax_is_bitwise_the_legacy_chain(bits, masked, seed):
    g = torch.Generator().manual_seed(5 + seed)
    sv = 0.005 + 0.01 * seed
    x = torch.round(torch.randn(3, 2, 16, 16, generator=g) * 60).clamp(-128, 127) * sv
    if masked:  # Swin's shifted-window mask: far below the max, exp is 0 (the max's floor)
        x[..., :5] -= 100.0
    x[0, 0, 0] = x[0, 0, 0].max()  # ties at the row max (argmax picks one)
    s = torch.tensor([sv])
    res = _grad_pair(lambda: IntSoftmax(bits), "fused_int_softmax", x, s, seed)
    _assert_all_bitwise(res)
    with torch.no_grad():  # the no-grad (eval) path gives the same values
        assert torch.equal(FU.int_softmax(x, s, P.exp_x0_int(s), IntSoftmax.exp_bits, bits),
                           res[0][0] / IntSoftmax(bits).out_unit)


@pytest.mark.parametrize("scale", [0.0037, 0.02, 0.2])
def test_fused_gelu_is_bitwise_the_legacy_chain(scale):
    # 8-bit inputs at a small scale: sums reach 2^31 (the float32 INT32_MAX), where torch's
    # clamp_max passes no gradient; the fused backward must agree
    g = torch.Generator().manual_seed(7)
    x = torch.round(torch.randn(8, 16, 64, generator=g) * 30).clamp(-128, 127) * scale
    x[0, 0] = 0.0  # a row whose max is 0
    res = _grad_pair(lambda: IntGELU(), "fused_int_gelu", x, torch.tensor([scale]), 8)
    _assert_all_bitwise(res)
    assert res[0][1].abs().sum() > 0


def test_fused_paths_refuse_a_scale_with_gradient():
    x = torch.randn(2, 4, requires_grad=True)
    s = torch.tensor([0.1], requires_grad=True)
    with pytest.raises(ValueError, match="detach the scale"):
        FU.int_softmax(x, s, P.exp_x0_int(s.detach()), 15, 8)
    m = IntSoftmax(8)  # the module falls back to the unfused chain, which passes gradient
    m.flags = Flags.preset("best")
    y, _ = m(x, s)
    y.sum().backward()
    assert s.grad is not None


@pytest.mark.parametrize("lo, hi", [(1, 2**12), (2**12, 2**24), (2**24, 2**34)])
def test_newton_sqrt_grad_is_bitwise_the_legacy_chain(lo, hi):
    # small variances: ten steps from 2^16 have not converged; large: they have
    g = torch.Generator().manual_seed(9)
    v = torch.randint(lo, hi, (64, 1), generator=g).to(torch.float32)
    go = torch.randn(64, 1, generator=g)
    res = []
    for mode, inline, lean in [("ste", False, False), ("ste", True, False),
                               ("ste", False, True), ("no_grad_sqrt_grad", True, True)]:
        vi = v.clone().requires_grad_(True)
        k = P.int_sqrt_newton(vi, mode, inline_ste=inline, lean=lean)
        k.backward(go)
        res.append((k.detach(), vi.grad))
    _assert_all_bitwise(res)
