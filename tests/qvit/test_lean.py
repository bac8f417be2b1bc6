"""The lean nodes (`qvit.lean`, flags lean_quant_act, lean_int_exp, lean_layernorm,
lean_linear) at zero tolerance: against the exact deployment reference where the arithmetic
is integer, and against the legacy chains they replace (values, every gradient, and the
memory layout of what they hand on: later reductions sum in a layout-dependent order)."""

import pytest
import torch

from qvit import Flags
from qvit import fused as FU
from qvit import lean as L
from qvit import primitives as P
from qvit import reference as R
from qvit.modules import IntGELU, IntLayerNorm, IntSoftmax, QuantAct, QuantLinear, QuantMatMul

from .test_reference import _frexp_inputs, _reference_out, _tie_case

LEGACY = Flags.preset("legacy")


# --- the dyadic multiplier and 2^k from the bits ---------------------------------------------

def test_dyadic_multiplier_is_frexp31_m_times_2_to_the_minus_e():
    """Ties of the 31st mantissa bit (rounded away from zero), a mantissa that rounds up to
    2^31 (a carry into the exponent), random ratios over 40 octaves."""
    x = _frexp_inputs()
    x = x[x > 0]
    r = L.dyadic_multiplier(x, torch.ones(1))
    m, e = P.frexp_device(x)
    assert torch.equal(r, m * torch.pow(2.0, -e))
    for v, got in zip(x.tolist(), r.tolist(), strict=True):
        mi, ei = R.frexp(v)
        assert got == mi * 2.0**-ei
    carry = L.dyadic_multiplier(torch.tensor([1 - 2.0**-40], dtype=torch.float64),
                                torch.ones(1))
    assert carry.item() == 1.0  # 2^31 * 2^-31


def test_dyadic_multiplier_of_float32_scales_is_the_requantizers():
    g = torch.Generator().manual_seed(5)
    s_in = torch.rand(64, generator=g) * 1e-3 + 1e-6
    s_out = torch.tensor([0.0173])
    ratio = s_in.to(torch.float64) / s_out.to(torch.float64)
    m, e = P.frexp_device(ratio)
    assert torch.equal(L.dyadic_multiplier(s_in, s_out), m / 2.0**e)


def test_pow2_int_is_exact():
    k = torch.arange(-126, 128, dtype=torch.float32)
    want = torch.tensor([2.0**v for v in range(-126, 128)], dtype=torch.float32)
    assert torch.equal(L.pow2_int(k), want)
    assert torch.equal(L.pow2_int(k[130:150]), 2 ** k[130:150])  # torch's pow, as legacy


@pytest.mark.parametrize("seed", range(3))
def test_first_max_index_is_torch_max_index_with_ties(seed):
    g = torch.Generator().manual_seed(seed)
    a = torch.randint(-3, 3, (7, 5, 33), generator=g).float()  # many ties at the max
    b = a - a.amax(dim=-1, keepdim=True)
    got = L.first_max_index(b, torch.empty_like(b))
    assert torch.equal(got, a.max(dim=-1, keepdim=True).indices)


# --- QuantAct's node ---------------------------------------------------------------------------

@pytest.mark.parametrize("bits, residual", [(8, False), (16, True), (8, True)])
def test_lean_requantize_equals_the_integer_reference_at_ties(bits, residual):
    x, x_half, in_scale, out_scale, ident, id_scale = _tie_case(bits, residual)
    for inp in (x, x_half):
        want = _reference_out(inp, in_scale, out_scale, bits, ident, id_scale)
        xi = inp.clone().requires_grad_(True)
        got = L.requantize(xi, in_scale, out_scale, bits, ident, id_scale)
        assert torch.equal(got.detach(), want * out_scale)
        got.backward(torch.ones_like(got))
        assert torch.equal(xi.grad, torch.ones_like(xi) * out_scale / out_scale)


def _act_inputs(dim, seed):
    """Activations of rank ``dim`` (C channels), non-contiguous (a transposed view), with
    per-channel input scales; a residual in another layout; an incoming gradient in a third."""
    g = torch.Generator().manual_seed(seed)
    c = 12
    shape = {2: (40, c), 3: (3, 17, c), 4: (3, c, 5, 7)}[dim]
    s_in = torch.rand(c, generator=g) * 1e-3 + 1e-4
    view = {2: (1, -1), 3: (1, 1, -1), 4: (1, -1, 1, 1)}[dim]
    x = (torch.randint(-2**18, 2**18, shape, generator=g).float() * s_in.view(view))
    x = x.transpose(0, -1).contiguous().transpose(0, -1)  # same values, other strides
    ident = torch.randint(-2**14, 2**14, shape, generator=g).float() * 3e-3
    grad = torch.randn(shape[::-1], generator=g).permute(*reversed(range(dim)))
    return x, s_in, ident, torch.tensor([3e-3]), grad


@pytest.mark.parametrize("dim", [2, 3, 4])
@pytest.mark.parametrize("residual", ["none", "same", "broadcast"])
def test_lean_requantize_is_fixedpoint_mul_times_scale_values_grads_layouts(dim, residual):
    x, s_in, ident, id_scale, grad = _act_inputs(dim, dim)
    if residual == "broadcast":
        ident = ident[:1]
    s_out = torch.tensor([0.02])
    outs = []
    for lean in (False, True):
        xi = x.clone().requires_grad_(True)  # clone keeps the strides
        ii = None if residual == "none" else ident.clone().requires_grad_(True)
        si = None if residual == "none" else id_scale
        if lean:
            y = L.requantize(xi, s_in, s_out, 8, ii, si)
        else:
            y = P.fixedpoint_mul(xi, s_in, 8, s_out, ii, si, fp64=True, use_frexp=True,
                                 frexp_on_device=True, fused=True, lean=True) * s_out.view(-1)
        y.backward(grad)
        outs.append((y.detach(), xi.grad, None if ii is None else ii.grad))
    (y0, gx0, gi0), (y1, gx1, gi1) = outs
    assert torch.equal(y1, y0) and y1.stride() == y0.stride()
    assert torch.equal(gx1, gx0) and gx1.stride() == gx0.stride()
    assert gi0 is None or (torch.equal(gi1, gi0) and gi1.stride() == gi0.stride())


@pytest.mark.parametrize("bits", [8, 16])
def test_lean_quantize_act_ties_and_clamps(bits):
    s = 2.0**-5
    n = 2 ** (bits - 1)
    k = [0.5, 1.5, 2.5, n - 0.5, n + 0.5, n + 3.5]
    v = torch.tensor(k + [-a for a in k]) * s
    want = torch.tensor([float(R.quantize(a, s, bits)) for a in v.tolist()]) * s
    xi = v.view(2, 1, -1).clone().requires_grad_(True)
    got = L.quantize_act(xi, torch.tensor([s]), bits)
    assert torch.equal(got.reshape(-1), want)
    got.backward(torch.full_like(got, 3.0))
    assert torch.equal(xi.grad, torch.full_like(xi, 3.0 * s / s))


def _quant_act_pair(flags_a, flags_b, shape, residual, seed):
    """The same QuantAct step (range observation from an empty range, then a second call
    with momentum) under two flag sets: outputs, gradients, ranges."""
    res = []
    for flags in (flags_a, flags_b):
        g = torch.Generator().manual_seed(seed)
        act = QuantAct(8)
        act.flags = flags
        rec = []
        for _ in range(2):
            x = (torch.randn(shape, generator=g) * 40).requires_grad_(True)
            s = torch.rand(shape[-1], generator=g) + 0.1
            ident = torch.randn(shape, generator=g).requires_grad_(True) if residual else None
            y, scale = act(x, s, ident, torch.tensor([0.05]) if residual else None)
            y.backward(torch.randn(shape, generator=g))
            rec += [y, scale, x.grad, act.min_val, act.max_val]
            rec += [ident.grad] if residual else []
        res.append(rec)
    return res


@pytest.mark.parametrize("residual", [False, True])
def test_lean_quant_act_module_is_legacy_bit_for_bit(residual):
    a, b = _quant_act_pair(LEGACY, LEGACY.replace(lean_quant_act=True), (4, 9, 16),
                           residual, 11)
    assert all(torch.equal(u, v) for u, v in zip(a, b, strict=True))


def test_lean_quant_act_leaves_the_seed_shortcuts_alone():
    seed = Flags.preset("seed")
    act = QuantAct(8)
    act.flags = seed.replace(lean_quant_act=True)
    assert act.paths()["quantize"] == "primitives"  # float32 shortcut: not the lean node
    act.flags = Flags.preset("best")
    assert act.paths()["quantize"] == "lean node"


# --- IntSoftmax, IntGELU ---------------------------------------------------------------------

def _exp_module_runs(make, x, s, g_out):
    """Legacy chain, fused node, lean node."""
    res = []
    for flags in (LEGACY, LEGACY.replace(fused_int_softmax=True, fused_int_gelu=True),
                  LEGACY.replace(lean_int_exp=True)):
        m = make()
        m.flags = flags
        xi = x.clone().requires_grad_(True)
        y, _ = m(xi, s)
        y.backward(g_out)
        res.append((y.detach(), xi.grad))
    return res


@pytest.mark.parametrize("layout", ["contiguous", "permuted"])
def test_lean_softmax_and_gelu_keep_the_legacy_layouts(layout):
    """A transposed input and an incoming gradient in a third layout: the nodes' outputs
    and their row sums follow the legacy chain's layouts, so every bit agrees (the fused
    GELU's exp_sum gradient did not, before it took the mask's layout)."""
    g = torch.Generator().manual_seed(3)
    x = torch.round(torch.randn(2, 3, 9, 9, generator=g) * 40).clamp(-128, 127) * 0.03
    go = torch.randn(2, 3, 9, 9, generator=g)
    if layout == "permuted":
        x = x.transpose(-1, -2).contiguous().transpose(-1, -2)
        go = go.permute(3, 2, 1, 0).contiguous().permute(3, 2, 1, 0)
    for make in (lambda: IntSoftmax(8), lambda: IntGELU(8)):
        (y0, g0), *nodes = _exp_module_runs(make, x, torch.tensor([0.03]), go)
        for y1, g1 in nodes:
            assert torch.equal(y1, y0) and y1.stride() == y0.stride()
            assert torch.equal(g1, g0) and g1.stride() == g0.stride() and g1.abs().sum() > 0


def test_lean_softmax_values_under_no_grad():
    g = torch.Generator().manual_seed(4)
    x = torch.round(torch.randn(3, 2, 16, 16, generator=g) * 60).clamp(-128, 127) * 0.01
    s = torch.tensor([0.01])
    unit = torch.tensor([2.0**-7])
    with torch.no_grad():
        want = FU.int_softmax(x, s, P.exp_x0_int(s), 15, 8) * unit
        assert torch.equal(L.int_softmax(x, s, P.exp_x0_int(s), 15, 8, unit), want)


# --- IntLayerNorm ----------------------------------------------------------------------------

def _layernorm_pair(x, s, g_out, newton, weight_scale=1.0):
    res = []
    for lean in (False, True):
        torch.manual_seed(0)
        ln = IntLayerNorm(x.shape[-1])
        with torch.no_grad():
            ln.weight.uniform_(0.5, 1.5).mul_(weight_scale)
            ln.bias.uniform_(-0.3, 0.3)
        ln.flags = LEGACY.replace(lean_layernorm=lean, layernorm_newton=newton)
        xi = x.clone().requires_grad_(True)
        y, scale = ln(xi, s)
        y.backward(g_out)
        res.append((y.detach(), scale.detach(), xi.grad, ln.weight.grad, ln.paths()))
    return res


@pytest.mark.parametrize("newton", ["ste", "no_grad_sqrt_grad"])
@pytest.mark.parametrize("case", ["contiguous", "transposed", "small_variance"])
def test_lean_layernorm_is_the_legacy_chain(newton, case):
    g = torch.Generator().manual_seed(6)
    x = torch.round(torch.randn(3, 11, 24, generator=g) * 3000) * 0.01
    if case == "small_variance":  # ten Newton steps from 2^16 have not converged
        x = torch.round(torch.randn(3, 11, 24, generator=g) * 3) * 0.01
    go = torch.randn(3, 11, 24, generator=g)
    if case == "transposed":
        x = x.transpose(0, 1).contiguous().transpose(0, 1)
        go = go.transpose(1, 2).contiguous().transpose(1, 2)
    (y0, s0, gx0, gw0, p0), (y1, s1, gx1, gw1, p1) = _layernorm_pair(
        x, torch.tensor([0.01]), go, newton)
    assert p0["layernorm"] == "chain" and p1["layernorm"] == "lean node"
    assert torch.equal(y1, y0) and y1.stride() == y0.stride() and torch.equal(s1, s0)
    assert torch.equal(gx1, gx0) and gx1.stride() == gx0.stride()
    assert torch.equal(gw1, gw0) and gw1.abs().sum() > 0


def test_lean_layernorm_leaves_no_grad_newton_to_the_chain():
    ln = IntLayerNorm(8)
    ln.flags = Flags.preset("best").replace(layernorm_newton="no_grad")
    assert ln.paths()["layernorm"] == "chain"


# --- QuantLinear, QuantMatMul ----------------------------------------------------------------

def test_lean_linear_and_matmul_are_legacy_bit_for_bit():
    g = torch.Generator().manual_seed(8)
    x = torch.round(torch.randn(2, 5, 16, generator=g) * 50) * 0.02
    a = torch.round(torch.randn(2, 3, 5, 8, generator=g) * 50) * 0.02
    res = []
    for lean in (False, True):
        torch.manual_seed(0)
        lin, mm = QuantLinear(16, 24), QuantMatMul()
        lin.flags = mm.flags = LEGACY.replace(lean_linear=lean)
        xi, ai = x.clone().requires_grad_(True), a.clone().requires_grad_(True)
        y, s = lin(xi, torch.tensor([0.02]))
        z, sz = mm(ai, torch.tensor([0.02]), ai.transpose(-1, -2), torch.tensor([0.02]))
        (y.pow(2).sum() + z.pow(2).sum()).backward()
        res.append([y, s, z, sz, xi.grad, ai.grad, lin.weight.grad, lin.bias.grad,
                    lin.weight_scaling_factor])
    assert all(torch.equal(u, v) for u, v in zip(*res, strict=True))


# --- constructed cases random data never reaches ---------------------------------------------

def test_lean_quantize_act_is_legacy_where_x_over_s_and_x_times_inverse_round_apart():
    """Legacy quantizes (1/s) * x; x / s rounds differently for some x near a half step.
    Those x are searched for and both paths compared on them (values and gradients)."""
    s = torch.tensor([0.1])
    k = torch.arange(-120, 120, dtype=torch.float32) + 0.5
    x = torch.cat([torch.nextafter(k * s, torch.tensor(d)) for d in (-1e9, 0.0, 1e9)] +
                  [k * s])
    apart = torch.round(x * (1.0 / s)) != torch.round(x / s)
    assert apart.sum() >= 10  # the constructed cases exist
    x = x[apart].view(1, 1, -1)
    for inline in (True, False):
        a = x.clone().requires_grad_(True)
        b = x.clone().requires_grad_(True)
        want = P.symmetric_quantize(a, 8, s, is_weight=False, inline_ste=inline,
                                    constant_zero_point=False) * s
        got = L.quantize_act(b, s, 8)
        assert torch.equal(got, want)
        want.backward(torch.ones_like(want))
        got.backward(torch.ones_like(got))
        assert torch.equal(b.grad, a.grad)


@pytest.mark.parametrize("make", [lambda: IntSoftmax(8), lambda: IntGELU(8)],
                         ids=["softmax", "gelu"])
def test_lean_int_exp_gradient_at_a_tied_clamp(make):
    """The integer exp takes max(c, n * x0); where c equals n * x0 exactly the legacy chain's
    max splits the gradient in halves. Inputs far below the row max land there: the lean and
    fused nodes must split it the same way (bitwise)."""
    s = torch.tensor([0.125])
    x0 = float(P.exp_x0_int(s))
    n = 15
    # b = x/s - max: c = b + floor(b/2) - floor(b/16) == n * x0 for some integer b
    b = torch.arange(-400, 1, dtype=torch.float64)
    c = b + torch.floor(b / 2) - torch.floor(b / 16)
    tied = b[c == n * x0]
    assert len(tied) >= 1
    row = torch.cat([torch.zeros(1), tied.float(), tied.float() - 1, tied.float() + 1,
                     torch.tensor([-3.0, -40.0])])
    x = (row * s).view(1, 1, -1).repeat(2, 3, 1)
    go = torch.randn(x.shape, generator=torch.Generator().manual_seed(5))
    (y0, g0), *nodes = _exp_module_runs(make, x, s, go)
    for y1, g1 in nodes:
        assert torch.equal(y1, y0) and torch.equal(g1, g0)
