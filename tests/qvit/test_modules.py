"""Quant modules: running ranges, freezing, buffers, devices, caches."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import qvit
from qvit import Flags
from qvit import reference as R
from qvit.modules import (
    IntGELU,
    IntLayerNorm,
    IntSoftmax,
    QuantAct,
    QuantConv2d,
    QuantLinear,
    QuantModule,
    TerLinear,
)


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
    x_int = torch.randint(-5, 5, (2, 3, 8, 8)).float()
    y, s = conv(x_int * x_scale, x_scale)
    w_int, w_scale = conv.quantized_weight()
    b_int = torch.round(conv.bias.detach() / (w_scale * x_scale))
    want = torch.nn.functional.conv2d(x_int, w_int.detach(), b_int, stride=4)
    assert s.shape == (1, 6, 1, 1) and torch.equal(s.view(-1), w_scale * x_scale)
    assert torch.equal(y, want * s)


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


def test_fix_freezes_every_range_of_a_model_and_nothing_else():
    model = qvit.create_model("ivit_micro", num_classes=10, img_size=16)
    model(torch.randn(2, 3, 16, 16))
    ranges = {k: v.clone() for k, v in model.state_dict().items() if k.endswith("_val")}
    params = {k: p.clone() for k, p in model.named_parameters()}
    model.fix()
    model(torch.randn(2, 3, 16, 16) * 5)
    sd = model.state_dict()
    assert all(torch.equal(sd[k], v) for k, v in ranges.items())
    assert all(torch.equal(p, params[k]) for k, p in model.named_parameters())
    model.unfix()
    model(torch.randn(2, 3, 16, 16) * 5)
    assert not all(torch.equal(model.state_dict()[k], v) for k, v in ranges.items())


@pytest.mark.parametrize("cls", [QuantLinear, QuantConv2d])
def test_weights_quantized_per_output_channel_as_the_reference(cls):
    """Scale max(|min|, max) / 127 of each output channel; integers by the exact reference."""
    m = QuantLinear(12, 5) if cls is QuantLinear else QuantConv2d(3, 5, 2, stride=2)
    with torch.no_grad():
        m.weight.mul_(torch.arange(1.0, 6.0).view(-1, *([1] * (m.weight.dim() - 1))))
    w_int, scale = m.quantized_weight()
    rows = m.weight.detach().reshape(5, -1)
    want_scale = torch.maximum(-rows.min(dim=1).values, rows.max(dim=1).values) / 127
    assert torch.equal(scale, want_scale)
    want = [[R.quantize(v, s, 8) for v in row] for row, s in
            zip(rows.tolist(), want_scale.tolist(), strict=True)]
    assert w_int.reshape(5, -1).tolist() == want
    assert len(set(scale.tolist())) == 5


@pytest.mark.parametrize("preset", ["legacy", "best"])
def test_layernorm_bias_grad_is_the_straight_through_gradient(preset):
    """With layernorm_bias_grad the bias receives what a float LayerNorm's would: the sum of
    the output's gradient over the tokens (through the floor's STE; float rounding aside);
    without it, none (I-ViT)."""
    g = torch.Generator().manual_seed(3)
    ln = IntLayerNorm(16)
    with torch.no_grad():
        ln.weight.copy_(1 + 0.2 * torch.randn(16, generator=g))
        ln.bias.copy_(0.1 * torch.randn(16, generator=g))
    x = torch.round(torch.randn(2, 5, 16, generator=g) * 3000) * 1e-3
    up = torch.randn(2, 5, 16, generator=g)
    for on in (False, True):
        ln.flags = Flags.preset(preset).replace(layernorm_bias_grad=on)
        ln.zero_grad(set_to_none=True)
        y, _ = ln(x, torch.tensor([1e-3]))
        (y * up).sum().backward()
        if not on:
            assert ln.bias.grad is None
        else:
            torch.testing.assert_close(ln.bias.grad, up.sum(dim=(0, 1)), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("flags", ["legacy", "best"])
@pytest.mark.parametrize("name", ["ivit_micro", "swin_micro"])
def test_forwards_set_no_attribute_through_module_setattr(name, flags, monkeypatch):
    """A quantized module's forward (training, with its backward, and eval) replaces its
    ranges, scales and cache keys through `QuantModule._assign`, never
    nn.Module.__setattr__: under dynamo that path (and the register_buffer it calls) was a
    third of the bytecode traced per compiled region (swin_micro: 50k of 164k steps), and
    tracing is most of a warm compile start."""
    torch.manual_seed(0)
    model = qvit.create_model(name, num_classes=10, flags=Flags.parse(flags),
                              drop_path_rate=0.1)
    x = torch.randn(4, 3, model.patch_embed.img_size, model.patch_embed.img_size)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    calls = []
    real = nn.Module.__setattr__

    def counting(self, key, value):
        if isinstance(self, QuantModule):  # (not the model's once-per-eval calibration check)
            calls.append((type(self).__name__, key))
        return real(self, key, value)

    with monkeypatch.context() as m:
        m.setattr(nn.Module, "__setattr__", counting)
        F.cross_entropy(model(x), torch.zeros(4, dtype=torch.long)).backward()
    model.eval()
    with monkeypatch.context() as m, torch.no_grad():
        m.setattr(nn.Module, "__setattr__", counting)
        model(x), model(x)
    assert calls == [], calls
    moved = [k for k, v in model.state_dict().items()
             if k.endswith(("min_val", "max_val")) and not torch.equal(v, before[k])]
    assert moved  # the ranges were replaced all the same
