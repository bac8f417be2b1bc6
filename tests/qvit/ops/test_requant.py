"""qvit.ops.requant: frexp on the host and on the device, the requantizer's chain, fused and
lean forms against each other and against the exact reference (values, gradients and the
memory layouts they hand on), in all four arithmetics (float64/float32 x dyadic/float), and
QuantAct's requantizing module on every path."""

import itertools
import math
from fractions import Fraction

import numpy as np
import pytest
import torch

from qvit import Flags
from qvit import reference as R
from qvit.modules import QuantAct
from qvit.ops import requant as RQ

from ..test_reference import _frexp_inputs, _reference_out, _tie_case

ARITHMETIC = list(itertools.product((True, False), (True, False)))  # (fp64, use_frexp)
LEGACY = Flags.preset("legacy")


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


# --- frexp --------------------------------------------------------------------------------

def test_frexp_device_matches_host_batch_frexp_bit_for_bit():
    x = _scales().view(8, -1)
    m_cpu, e_cpu = RQ.batch_frexp(x)
    m_dev, e_dev = RQ.frexp_device(x)
    assert torch.equal(m_cpu, m_dev) and torch.equal(e_cpu, e_dev)


def test_frexp_against_exact_reference():
    x = _scales(500, seed=1)
    m, e = RQ.frexp_device(x)
    for xi, mi, ei in zip(x.tolist(), m.tolist(), e.tolist(), strict=True):
        assert (mi, ei) == _frexp_reference(xi)
        assert 2**30 <= mi <= 2**31


def test_batch_frexp_is_a_host_round_trip_numpy_reference():
    x = torch.tensor([0.3, 0.7], dtype=torch.float64)
    m, e = RQ.batch_frexp(x)
    nm, ne = np.frexp(x.numpy())
    assert torch.equal(e, torch.from_numpy(31.0 - ne))
    assert torch.equal(m, torch.from_numpy(np.floor(nm * 2**31 + 0.5)))


# --- the chain and its fused form ------------------------------------------------------------

def _ints(shape, lo, hi, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(lo, hi, shape, generator=g).to(torch.float32)


@pytest.mark.parametrize("fp64, use_frexp", ARITHMETIC)
def test_requant_fused_is_bit_identical(fp64, use_frexp):
    z = _ints((4, 9, 16), -2**20, 2**20, 0)
    g = torch.Generator().manual_seed(1)
    in_scale = (torch.rand(1, 1, 16, generator=g) + 0.1) * 1e-4
    out_scale = torch.tensor([3e-3])
    kw = dict(fp64=fp64, use_frexp=use_frexp, frexp="device")
    ref = RQ._requantize_int(z.clone(), in_scale, out_scale, fused=False, **kw)
    got = RQ._requantize_int(z.clone(), in_scale, out_scale, fused=True, **kw)
    assert torch.equal(got, ref)


def test_requant_fused_matches_the_integer_dyadic_reference():
    z = _ints((8, 5, 32), -2**21, 2**21, 2)
    g = torch.Generator().manual_seed(3)
    in_scale = (torch.rand(1, 1, 32, generator=g) + 0.05) * 1e-5
    out_scale = torch.tensor([2e-3])
    got = RQ._requantize_int(z.clone(), in_scale, out_scale, fp64=True, use_frexp=True,
                             frexp="device", fused=True)
    ratio = in_scale.to(torch.float64) / out_scale.to(torch.float64)
    m, e = RQ.frexp_device(ratio)
    ref = RQ.dyadic_requantize_int64(z, m.expand_as(z), e.expand_as(z))
    assert torch.equal(got.to(torch.int64), ref)


def test_float32_frexp_is_the_float_multiply():
    """A float32 ratio has 24 significant bits, so its 31-bit dyadic form is itself: in
    float32 use_frexp changes the work (frexp per call), never the values."""
    z = _ints((4, 9, 16), -2**15, 2**15, 6)
    in_scale = (torch.rand(1, 1, 16, generator=torch.Generator().manual_seed(7)) + 0.1) * 1e-3
    out_scale = torch.tensor([3e-2])
    for fused in (False, True):
        a = RQ._requantize_int(z.clone(), in_scale, out_scale, fp64=False, use_frexp=True,
                               frexp="host", fused=fused)
        b = RQ._requantize_int(z.clone(), in_scale, out_scale, fp64=False, use_frexp=False,
                               frexp="host", fused=fused)
        assert torch.equal(a, b)


def test_fixedpoint_mul_gradient_is_ste_over_output_scale():
    x = torch.randn(2, 3, 5, requires_grad=True)
    z = torch.tensor([0.05])
    grads = []
    for path in ("function", "inline", "lean"):
        x.grad = None
        out = RQ.fixedpoint_mul(x, torch.tensor([0.01]), 8, z, fp64=True, use_frexp=True,
                                frexp="device", ste=path)
        out.sum().backward()
        grads.append(x.grad.clone())
    assert all(torch.equal(g, grads[0]) for g in grads)
    assert torch.allclose(grads[0], torch.full_like(x, 1 / 0.05))


@pytest.mark.parametrize("identity", [False, True])
@pytest.mark.parametrize("ste", ["function", "inline", "lean"])
def test_fixedpoint_mul_fused_and_lean_ste_same_values_and_gradients(identity, ste):
    g = torch.Generator().manual_seed(4)
    x = torch.randn(4, 9, 16, generator=g) * 3
    idt = torch.randn(4, 9, 16, generator=g) if identity else None
    s_in, s_id, s_out = torch.full((16,), 1e-3), torch.tensor([2e-3]), torch.tensor([0.05])
    outs = []
    for fused, path in [(False, ste), (True, ste), (False, "lean"), (True, "lean")]:
        xi = x.clone().requires_grad_(True)
        ii = idt.clone().requires_grad_(True) if identity else None
        y = RQ.fixedpoint_mul(xi, s_in, 8, s_out, ii, s_id if identity else None, fp64=True,
                              use_frexp=True, frexp="device", ste=path, fused=fused)
        y.backward(torch.linspace(-1, 1, y.numel()).view_as(y))
        outs.append((y, xi.grad, ii.grad if identity else None))
    for y, gx, gi in outs[1:]:
        assert torch.equal(y, outs[0][0])
        assert torch.equal(gx, outs[0][1])
        assert gi is None or torch.equal(gi, outs[0][2])


def test_bad_activation_rank_is_refused():
    with pytest.raises(ValueError, match="2-D, 3-D or 4-D"):
        RQ.fixedpoint_mul(torch.zeros(2, 2, 2, 2, 2), torch.ones(1), 8, torch.ones(1),
                          fp64=True, use_frexp=False)


# --- the lean node ------------------------------------------------------------------------

def test_dyadic_multiplier_is_frexp31_m_times_2_to_the_minus_e():
    """Ties of the 31st mantissa bit (rounded away from zero), a mantissa that rounds up to
    2^31 (a carry into the exponent), random ratios over 40 octaves."""
    x = _frexp_inputs()
    x = x[x > 0]
    r = RQ.dyadic_multiplier(x)
    m, e = RQ.frexp_device(x)
    assert torch.equal(r, m * torch.pow(2.0, -e))
    for v, got in zip(x.tolist(), r.tolist(), strict=True):
        mi, ei = R.frexp(v)
        assert got == mi * 2.0**-ei
    carry = RQ.dyadic_multiplier(torch.tensor([1 - 2.0**-40], dtype=torch.float64))
    assert carry.item() == 1.0  # 2^31 * 2^-31


@pytest.mark.parametrize("fp64, use_frexp", ARITHMETIC)
def test_lean_multiplier_of_float32_scales_is_the_chains(fp64, use_frexp):
    g = torch.Generator().manual_seed(5)
    s_in = torch.rand(64, generator=g) * 1e-3 + 1e-6
    s_out = torch.tensor([0.0173])
    dtype = torch.float64 if fp64 else torch.float32
    ratio = s_in.to(dtype) / s_out.to(dtype)
    want = ratio
    if use_frexp:
        m, e = RQ.frexp_device(ratio)
        want = (m / 2.0**e).to(dtype)
    got = RQ.lean_multiplier(s_in, s_out, fp64, use_frexp)
    assert got.dtype == dtype and torch.equal(got, want)


@pytest.mark.parametrize("fp64, use_frexp", ARITHMETIC)
@pytest.mark.parametrize("bits, residual", [(8, False), (16, True), (8, True)])
def test_lean_requantize_equals_the_integer_reference_at_ties(bits, residual, fp64,
                                                              use_frexp):
    x, x_half, in_scale, out_scale, ident, id_scale = _tie_case(bits, residual)
    for inp in (x, x_half):
        want = _reference_out(inp, in_scale, out_scale, bits, ident, id_scale)
        xi = inp.clone().requires_grad_(True)
        got = RQ.requantize(xi, in_scale, out_scale, bits, ident, id_scale, fp64=fp64,
                            use_frexp=use_frexp)
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


@pytest.mark.parametrize("fp64, use_frexp", ARITHMETIC)
@pytest.mark.parametrize("dim", [2, 3, 4])
@pytest.mark.parametrize("residual", ["none", "same", "broadcast"])
def test_lean_requantize_is_the_chain_times_scale_values_grads_layouts(dim, residual, fp64,
                                                                       use_frexp):
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
            y = RQ.requantize(xi, s_in, s_out, 8, ii, si, fp64=fp64, use_frexp=use_frexp)
        else:
            y = RQ.fixedpoint_mul(xi, s_in, 8, s_out, ii, si, fp64=fp64, use_frexp=use_frexp,
                                  frexp="device", fused=True, ste="lean") * s_out.view(-1)
        y.backward(grad)
        outs.append((y.detach(), xi.grad, None if ii is None else ii.grad))
    (y0, gx0, gi0), (y1, gx1, gi1) = outs
    assert torch.equal(y1, y0) and y1.stride() == y0.stride()
    assert torch.equal(gx1, gx0) and gx1.stride() == gx0.stride()
    assert gi0 is None or (torch.equal(gi1, gi0) and gi1.stride() == gi0.stride())


# --- QuantAct on every path --------------------------------------------------------------------

def _quant_act_steps(flags, shape, residual, seed):
    """Two QuantAct calls (range observation from an empty range, then with momentum) under
    ``flags``: outputs, scales, gradients and ranges."""
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
    return rec


@pytest.mark.parametrize("fp64, use_frexp", ARITHMETIC)
@pytest.mark.parametrize("residual", [False, True])
def test_every_requant_impl_is_the_reference_chain_bit_for_bit(residual, fp64, use_frexp):
    base = LEGACY.replace(fp64_fixedpoint=fp64, use_frexp=use_frexp)
    ref = _quant_act_steps(base, (4, 9, 16), residual, 11)
    for impl in ("device_frexp", "fused", "lean"):
        got = _quant_act_steps(base.replace(requant_impl=impl), (4, 9, 16), residual, 11)
        assert all(torch.equal(u, v) for u, v in zip(ref, got, strict=True)), impl


def test_quant_act_binds_what_paths_names():
    act = QuantAct(8)
    for preset in ("legacy", "seed", "best"):
        flags = Flags.preset(preset)
        act.flags = flags
        p = flags.paths()
        assert act.paths() == {k: getattr(p, k) for k in QuantAct.PATH_FIELDS}
    assert act.paths()["act_quantize"] == "lean" and act.paths()["frexp"] == "bits"
