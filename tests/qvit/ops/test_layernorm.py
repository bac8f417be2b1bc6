"""qvit.ops.layernorm: the integer Newton square root (ste, no_grad, node) against the
integer recipe, its gradients, and I-LayerNorm's lean node against the chain under every
Newton mode and STE form (values, gradients to x and weight, layouts)."""

import pytest
import torch

from qvit import Flags
from qvit.modules import IntLayerNorm
from qvit.ops import layernorm as LN
from qvit.ops.ste import STE_PATHS

LEGACY = Flags.preset("legacy")


def _isqrt_newton_reference(v: int, iters=10) -> int:
    k = 2**16
    for _ in range(iters):
        k = (k + v // k) // 2
    return k


@pytest.mark.parametrize("mode", LN.NEWTON_MODES)
def test_int_sqrt_newton_against_integer_reference(mode):
    g = torch.Generator().manual_seed(4)
    v = torch.randint(1, 2**24, (2000,), generator=g).double()
    got = LN.int_sqrt_newton(v, mode)
    want = [_isqrt_newton_reference(int(i)) for i in v.tolist()]
    assert got.tolist() == want


def test_int_sqrt_newton_gradients():
    # LayerNorm variances in the models: sums of squared 16-bit integers over channels
    v = (torch.rand(50, dtype=torch.float64) * 1e9 + 1e8).requires_grad_()
    g_ste = torch.autograd.grad(LN.int_sqrt_newton(v, "ste").sum(), v)[0]
    g_true = torch.autograd.grad(LN.int_sqrt_newton(v, "no_grad_sqrt_grad").sum(), v)[0]
    assert torch.allclose(g_true, 0.5 / v.detach().sqrt())
    assert ((g_ste - g_true).norm() / g_true.norm()) < 1e-5
    assert not LN.int_sqrt_newton(v, "no_grad").requires_grad


def test_newton_sqrt_grad_follows_the_chain_when_not_converged():
    # 8-bit LayerNorm inputs: variances ~1e4, ten steps from 2^16 have not converged
    v = (torch.rand(64, dtype=torch.float64) * 1e4 + 100).requires_grad_()
    g_ste = torch.autograd.grad(LN.int_sqrt_newton(v, "ste").sum(), v)[0]
    g_fwd = torch.autograd.grad(LN.int_sqrt_newton(v, "no_grad_sqrt_grad").sum(), v)[0]
    assert ((g_ste - g_fwd).norm() / g_ste.norm()) < 1e-10
    assert torch.equal(LN.int_sqrt_newton(v, "no_grad_sqrt_grad"),
                       LN.int_sqrt_newton(v, "ste"))


@pytest.mark.parametrize("lo, hi", [(1, 2**12), (2**12, 2**24), (2**24, 2**34)])
def test_newton_sqrt_node_is_bitwise_the_ste_chain(lo, hi):
    # small variances: ten steps from 2^16 have not converged; large: they have
    g = torch.Generator().manual_seed(9)
    v = torch.randint(lo, hi, (64, 1), generator=g).to(torch.float32)
    go = torch.randn(64, 1, generator=g)
    res = []
    for mode, path in [("ste", p) for p in STE_PATHS] + [("no_grad_sqrt_grad", "lean")]:
        vi = v.clone().requires_grad_(True)
        k = LN.int_sqrt_newton(vi, mode, ste=path)
        k.backward(go)
        res.append((k.detach(), vi.grad))
    for k, gv in res[1:]:
        assert torch.equal(k, res[0][0]) and torch.equal(gv, res[0][1])


def _layernorm_runs(x, s, g_out, configs):
    res = []
    for flags in configs:
        torch.manual_seed(0)
        ln = IntLayerNorm(x.shape[-1])
        with torch.no_grad():
            ln.weight.uniform_(0.5, 1.5)
            ln.bias.uniform_(-0.3, 0.3)
        ln.flags = flags
        xi = x.clone().requires_grad_(True)
        y, scale = ln(xi, s)
        y.backward(g_out)
        res.append((y.detach(), scale.detach(), xi.grad, ln.weight.grad, ln.paths()))
    return res


@pytest.mark.parametrize("newton", LN.NEWTON_MODES)
@pytest.mark.parametrize("case", ["contiguous", "transposed", "small_variance"])
def test_lean_layernorm_is_the_chain(newton, case):
    g = torch.Generator().manual_seed(6)
    x = torch.round(torch.randn(3, 11, 24, generator=g) * 3000) * 0.01
    if case == "small_variance":  # ten Newton steps from 2^16 have not converged
        x = torch.round(torch.randn(3, 11, 24, generator=g) * 3) * 0.01
    go = torch.randn(3, 11, 24, generator=g)
    if case == "transposed":
        x = x.transpose(0, 1).contiguous().transpose(0, 1)
        go = go.transpose(1, 2).contiguous().transpose(1, 2)
    base = LEGACY.replace(layernorm_newton=newton)
    configs = [base, base.replace(inline_ste=True), base.replace(ste_impl="lean"),
               base.replace(layernorm_impl="lean")]
    (y0, s0, gx0, gw0, p0), *rest = _layernorm_runs(x, torch.tensor([0.01]), go, configs)
    assert p0["layernorm"] == "chain" and rest[-1][4]["layernorm"] == "lean"
    for y1, s1, gx1, gw1, _ in rest:
        assert torch.equal(y1, y0) and y1.stride() == y0.stride() and torch.equal(s1, s0)
        assert torch.equal(gx1, gx0) and gx1.stride() == gx0.stride()
        assert torch.equal(gw1, gw0) and gw1.abs().sum() > 0


def test_lean_layernorm_newton_modes_ste_and_node_are_one_path():
    """Under layernorm_impl=lean, layernorm_newton ste and no_grad_sqrt_grad run the same
    node (the declaration says so); no_grad drops the std term (a different gradient)."""
    best = Flags.preset("best")
    p = {m: best.replace(layernorm_newton=m).paths().newton for m in LN.NEWTON_MODES}
    assert p["ste"] == p["no_grad_sqrt_grad"] == "in_layernorm" and p["no_grad"] == "no_grad"


def test_lean_layernorm_falls_back_to_the_chain_on_float64_input():
    """Under `best` (lean LayerNorm, Newton "in_layernorm") a float64 input takes the chain,
    which must know the lean node's Newton path (it raised KeyError: 'in_layernorm')."""
    from qvit import Flags

    g = torch.Generator().manual_seed(3)
    x = (torch.randint(-60, 60, (2, 5, 16), generator=g) * 0.05).double()
    s = torch.tensor([0.05], dtype=torch.float64)
    g_out = torch.randn(2, 5, 16, generator=g, dtype=torch.float64)
    best, legacy = _layernorm_runs(x, s, g_out, [Flags.preset("best"),
                                                  Flags.preset("legacy")])
    for a, b in zip(best[:4], legacy[:4], strict=True):
        assert torch.equal(a, b)
