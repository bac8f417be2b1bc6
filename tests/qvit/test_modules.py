"""Quant modules: running ranges, freezing, buffers, devices, caches."""

import inspect

import pytest
import torch

import qvit.blocks
import qvit.models
import qvit.modules
import qvit.primitives
from qvit import Flags
from qvit.modules import (
    IntGELU,
    IntLayerNorm,
    IntSoftmax,
    QuantAct,
    QuantConv2d,
    QuantLinear,
    TerLinear,
)


def test_no_device_hardcoding_in_ops():
    for mod in (qvit.primitives, qvit.modules, qvit.blocks, qvit.models):
        src = inspect.getsource(mod)
        assert ".cuda(" not in src and '"cuda"' not in src


def test_quant_act_running_range_with_momentum():
    act = QuantAct(8, act_range_momentum=0.9)
    a, b = torch.randn(4, 5, 6), torch.randn(4, 5, 6) * 3
    act(a)
    assert act.min_val.item() == a.min().item() and act.max_val.item() == a.max().item()
    act(b)
    want_min = a.min() * 0.9 + b.min() * (1 - 0.9)
    assert act.min_val.item() == pytest.approx(want_min.item(), rel=1e-6)
    scale = max(-act.min_val.item(), act.max_val.item()) / 127
    assert act.act_scaling_factor.item() == pytest.approx(scale, rel=1e-6)


def test_quant_act_freeze_and_eval_keep_the_range():
    act = QuantAct(8)
    act(torch.randn(10, 4))
    frozen = act.max_val.clone()
    act.fix()
    act(torch.randn(10, 4) * 100)
    assert torch.equal(act.max_val, frozen)
    act.unfix()
    act.eval()
    act(torch.randn(10, 4) * 100)
    assert torch.equal(act.max_val, frozen)
    act.train()
    act(torch.randn(10, 4) * 100)
    assert not torch.equal(act.max_val, frozen)


def test_quant_act_output_is_integers_times_scale():
    act = QuantAct(8)
    y, s = act(torch.randn(3, 7, 9))
    q = y / s
    assert (q - torch.round(q)).abs().max() < 1e-3 and torch.round(q).abs().max() <= 128


def test_quant_act_ranges_are_persistent_buffers():
    act = QuantAct(16)
    act(torch.randn(5, 5))
    sd = act.state_dict()
    assert set(sd) == {"min_val", "max_val", "act_scaling_factor"}
    fresh = QuantAct(16)
    fresh.load_state_dict(sd)
    fresh.eval()
    act.eval()
    x = torch.randn(5, 5)
    assert torch.equal(fresh(x)[0], act(x)[0])


@pytest.mark.parametrize("cls", [QuantLinear, TerLinear])
def test_quant_linear_integer_weights_and_scales(cls):
    lin = cls(16, 8)
    x_scale = torch.tensor([0.05])
    x = torch.randint(-100, 100, (4, 16)).float() * x_scale
    y, s = lin(x, x_scale)
    w_int, w_scale = lin.quantized_weight()
    assert torch.equal(w_int, torch.round(w_int))
    if cls is TerLinear:
        assert set(w_int.unique().tolist()) <= {-1.0, 0.0, 1.0}
    else:
        assert w_int.abs().max() <= 128
    assert torch.equal(s, w_scale * x_scale)
    out_int = y / s
    assert torch.allclose(out_int, torch.round(out_int), atol=1e-3)


def test_quant_conv2d_output_scale_per_channel():
    conv = QuantConv2d(3, 6, 4, stride=4)
    x_scale = torch.tensor([0.1])
    y, s = conv(torch.randint(-5, 5, (2, 3, 8, 8)).float() * x_scale, x_scale)
    assert y.shape == (2, 6, 2, 2) and s.shape == (1, 6, 1, 1)


def test_int_layernorm_close_to_float_layernorm():
    ln = IntLayerNorm(64)
    ln.weight.data.uniform_(0.5, 1.5)
    ln.bias.data.uniform_(-0.2, 0.2)
    scale = torch.tensor([1e-3])
    x = torch.round(torch.randn(8, 10, 64) * 2 / scale) * scale
    y, _ = ln(x, scale)
    ref = torch.nn.functional.layer_norm(x, (64,), ln.weight, ln.bias, eps=1e-6)
    assert (y - ref).abs().max() < 0.05


def test_int_gelu_and_softmax_close_to_float():
    scale = torch.tensor([0.02])
    x = torch.round(torch.randn(4, 8, 32) * 2 / scale) * scale
    g, _ = IntGELU(8)(x, scale)
    # ShiftGELU's integer divide (2^31-1) // sum quantizes the sigmoid coarsely (I-ViT)
    assert ((g - x * torch.sigmoid(1.702 * x)).abs() <= 0.1 * x.abs() + 0.05).all()
    p, ps = IntSoftmax(8)(x, scale)
    assert (p - torch.softmax(x, -1)).abs().max() < 0.05
    assert torch.equal(ps, torch.tensor([1 / 128]))


def test_weight_cache_refills_after_an_optimizer_step_in_eval_mode():
    lin = QuantLinear(8, 4)
    lin.flags = Flags.preset("seed")
    lin.eval()
    s = torch.tensor([0.1])
    x = torch.randn(2, 8)
    with torch.no_grad():
        before = lin(x, s)[0]
        lin.weight.add_(0.5)  # an optimizer step taken while in eval
        after = lin(x, s)[0]
        uncached = QuantLinear(8, 4)
        uncached.load_state_dict(lin.state_dict())
        uncached.eval()
        want = uncached(x, s)[0]
    assert not torch.equal(before, after) and torch.equal(after, want)


def test_fix_unfix_exist_on_every_module():
    for cls in (QuantLinear, QuantAct, IntGELU, IntSoftmax):
        m = cls(4, 4) if cls is QuantLinear else cls()
        m.fix()
        m.unfix()
