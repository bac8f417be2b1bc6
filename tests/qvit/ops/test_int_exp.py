"""qvit.ops.int_exp, softmax, gelu: the shift-based integer exp against the paper's integer
recipe, and every path of IntSoftmax and IntGELU (chain under each STE form, fused, lean)
against the reference chain at zero tolerance: values, input gradients and the memory
layouts they hand on (later reductions sum in a layout-dependent order)."""

import math
from fractions import Fraction

import pytest
import torch

from qvit import Flags
from qvit.modules import IntGELU, IntSoftmax
from qvit.ops import int_exp as E
from qvit.ops.softmax import softmax_fused, softmax_lean
from qvit.ops.ste import STE_PATHS

LEGACY = Flags.preset("legacy")


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
    for path in STE_PATHS:
        got, out_scale = E.int_exp_shift(xs, scale, n, ste=path)
        want = [_int_exp_reference(int(i), x0, n) for i in xs.tolist()]
        assert got.tolist() == want
        assert torch.equal(out_scale, scale / 2**n)
    # e^x within the shift approximation's error (a few percent)
    approx = got * out_scale
    true = torch.exp(xs * 0.0123)
    near = xs * 0.0123 > -5
    assert ((approx - true).abs() / true)[near].max() < 0.15  # shift approximation error


def test_pow2_int_is_exact():
    k = torch.arange(-126, 128, dtype=torch.float32)
    want = torch.tensor([2.0**v for v in range(-126, 128)], dtype=torch.float32)
    assert torch.equal(E.pow2_int(k), want)
    assert torch.equal(E.pow2_int(k[130:150]), 2 ** k[130:150])  # torch's pow, as the chain


@pytest.mark.parametrize("seed", range(3))
def test_first_max_index_is_torch_max_index_with_ties(seed):
    g = torch.Generator().manual_seed(seed)
    a = torch.randint(-3, 3, (7, 5, 33), generator=g).float()  # many ties at the max
    b = a - a.amax(dim=-1, keepdim=True)
    got = E.first_max_index(b, torch.empty_like(b))
    assert torch.equal(got, a.max(dim=-1, keepdim=True).indices)


# --- the modules on every path ------------------------------------------------------------------

# the reference chain under each STE form, then the fused and lean nodes (and best)
CONFIGS = [LEGACY, LEGACY.replace(inline_ste=True), LEGACY.replace(ste_impl="lean"),
           LEGACY.replace(int_exp_impl="fused"), LEGACY.replace(int_exp_impl="lean"),
           Flags.preset("best")]


def _runs(make, x, s, g_out, configs=CONFIGS):
    res = []
    for flags in configs:
        m = make()
        m.flags = flags
        xi = x.clone().requires_grad_(True)
        y, _ = m(xi, s)
        y.backward(g_out)
        res.append((y.detach(), xi.grad))
    return res


def _assert_all_bitwise(res, layouts=False):
    y0, g0 = res[0]
    for y, g in res[1:]:
        assert torch.equal(y, y0)
        assert torch.equal(g, g0), (g - g0).abs().max()
        if layouts:
            assert y.stride() == y0.stride() and g.stride() == g0.stride()


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("bits, masked", [(8, True), (8, False), (16, False)])
def test_every_softmax_path_is_bitwise_the_chain(bits, masked, seed):
    g = torch.Generator().manual_seed(5 + seed)
    sv = 0.005 + 0.01 * seed
    x = torch.round(torch.randn(3, 2, 16, 16, generator=g) * 60).clamp(-128, 127) * sv
    if masked:  # Swin's shifted-window mask: far below the max, exp is 0 (the max's floor)
        x[..., :5] -= 100.0
    x[0, 0, 0] = x[0, 0, 0].max()  # ties at the row max (argmax picks one)
    s = torch.tensor([sv])
    go = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed))
    res = _runs(lambda: IntSoftmax(bits), x, s, go)
    _assert_all_bitwise(res)
    unit = IntSoftmax(bits).out_unit
    with torch.no_grad():  # the no-grad (eval) forms give the same values
        x0 = E.exp_x0_int(s)
        assert torch.equal(softmax_fused(x, s, x0, IntSoftmax.exp_bits, bits, unit), res[0][0])
        assert torch.equal(softmax_lean(x, s, x0, IntSoftmax.exp_bits, bits, unit), res[0][0])


@pytest.mark.parametrize("scale", [0.0037, 0.02, 0.2])
def test_every_gelu_path_is_bitwise_the_chain(scale):
    # 8-bit inputs at a small scale: sums reach 2^31 (the float32 INT32_MAX), where torch's
    # clamp_max passes no gradient; the fused and lean backwards must agree
    g = torch.Generator().manual_seed(7)
    x = torch.round(torch.randn(8, 16, 64, generator=g) * 30).clamp(-128, 127) * scale
    x[0, 0] = 0.0  # a row whose max is 0
    go = torch.randn(x.shape, generator=torch.Generator().manual_seed(8))
    res = _runs(lambda: IntGELU(), x, torch.tensor([scale]), go)
    _assert_all_bitwise(res)
    assert res[0][1].abs().sum() > 0


@pytest.mark.parametrize("layout", ["contiguous", "permuted"])
def test_softmax_and_gelu_nodes_keep_the_chains_layouts(layout):
    """A transposed input and an incoming gradient in a third layout: the nodes' outputs
    and their row sums follow the chain's layouts, so every bit agrees (the fused GELU's
    exp_sum gradient did not, before it took the mask's layout)."""
    g = torch.Generator().manual_seed(3)
    x = torch.round(torch.randn(2, 3, 9, 9, generator=g) * 40).clamp(-128, 127) * 0.03
    go = torch.randn(2, 3, 9, 9, generator=g)
    if layout == "permuted":
        x = x.transpose(-1, -2).contiguous().transpose(-1, -2)
        go = go.permute(3, 2, 1, 0).contiguous().permute(3, 2, 1, 0)
    configs = [LEGACY] + [LEGACY.replace(int_exp_impl=v) for v in ("fused", "lean")]
    for make in (lambda: IntSoftmax(8), lambda: IntGELU(8)):
        res = _runs(make, x, torch.tensor([0.03]), go, configs)
        _assert_all_bitwise(res, layouts=True)
        assert res[0][1].abs().sum() > 0


@pytest.mark.parametrize("make", [lambda: IntSoftmax(8), lambda: IntGELU(8)],
                         ids=["softmax", "gelu"])
def test_int_exp_gradient_at_a_tied_clamp(make):
    """The integer exp takes max(c, n * x0); where c equals n * x0 exactly the chain's max
    splits the gradient in halves. Inputs far below the row max land there: the lean and
    fused nodes must split it the same way (bitwise)."""
    s = torch.tensor([0.125])
    x0 = float(E.exp_x0_int(s))
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
    configs = [LEGACY] + [LEGACY.replace(int_exp_impl=v) for v in ("fused", "lean")]
    _assert_all_bitwise(_runs(make, x, s, go, configs))


def test_a_scale_with_gradient_takes_the_chain():
    x = torch.randn(2, 4, requires_grad=True)
    s = torch.tensor([0.1], requires_grad=True)
    with pytest.raises(ValueError, match="detach the scale"):
        softmax_fused(x, s, E.exp_x0_int(s.detach()), 15, 8, torch.tensor([1 / 128]))
    for impl in ("fused", "lean"):  # the module falls back to the chain, which passes one
        m = IntSoftmax(8)
        m.flags = Flags.preset("best").replace(int_exp_impl=impl)
        y, _ = m(x, s)
        s.grad = None
        y.sum().backward()
        assert s.grad is not None
