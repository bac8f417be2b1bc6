"""qvit.deploy: the deployed integer model bit for bit against qvit.reference's integer
deployment (every intermediate, both families, one 224 model), against the QAT eval (per
layer, logits, top-1), its state dict round trip, what it refuses, and evaluate_deployed."""

import io
import time

import numpy as np
import pytest
import torch

import qvit
from qvit import Flags
from qvit.deploy import arith, compile_deployed, deploy, from_config, layers
from qvit.deploy.compare import evaluate_deployed, layer_differences, record_deployed
from qvit.deploy.layers import IntGELU, IntSoftmax, Requant
from qvit.deploy.model import Mlp
from qvit.deploy.reference_model import reference_forward

from .._util import MICRO, batch, model_from
from ..test_timm import ivit_layout


def _assert_bit_exact(model, images):
    deployed = deploy(model)
    with torch.no_grad(), record_deployed(deployed) as got:
        logits = deployed(images)
    want_logits, want = reference_forward(model, images)
    assert set(got) == set(want)
    for name, ref in want.items():
        ours = got[name].cpu().numpy().astype(np.int64)
        ref = np.asarray(ref).astype(np.int64)
        assert ours.shape == ref.shape, name
        assert np.array_equal(ours, ref), f"{name}: {(ours != ref).mean():.2%} differ"
    assert np.array_equal(logits.cpu().numpy(), want_logits)
    for gemm in ("int8", "float32"):  # and as it runs: lookup tables, either GEMM, either
        for requant in ("int64", "float64"):  # requantizer arithmetic
            deployed.set_int_gemm(gemm)
            deployed.set_requant(requant)
            with torch.no_grad():
                assert np.array_equal(deployed(images).cpu().numpy(), want_logits), (
                    gemm, requant)
    deployed.set_int_gemm("auto")
    deployed.set_requant("auto")
    return deployed


@pytest.mark.parametrize("preset", ["best", "legacy"])
@pytest.mark.parametrize("name", MICRO)
def test_deployed_equals_reference_bit_for_bit(name, preset):
    _assert_bit_exact(model_from(name, Flags.preset(preset)), batch(3, n=2)[0])


def _calibrated_224(name):
    torch.manual_seed(0)
    model = qvit.create_model(name, num_classes=1000)
    g = torch.Generator().manual_seed(1)
    return qvit.calibrate(model, [torch.randn(2, 3, 224, 224, generator=g)])


@pytest.mark.slow
def test_deployed_equals_reference_at_224():
    """DeiT-tiny at 224, one image: every intermediate (~40 s on one loaded core)."""
    t = time.perf_counter()
    _assert_bit_exact(_calibrated_224("deit_tiny_patch16_224"),
                      torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(2)))
    print(f"224 reference check: {time.perf_counter() - t:.1f} s")


@pytest.mark.parametrize("name", MICRO)
def test_deployed_agrees_with_qat_eval(name):
    """Against the QAT model's float32 eval: the input quantizer equal, every requantizer
    within a few steps where it differs at all (float32 rounding moves integers, the
    residual streams carry them on), the logits close and top-1 the same."""
    model = model_from(name, Flags.preset("best"))
    deployed = deploy(model)
    r = layer_differences(model, deployed, batch(5, n=32)[0])
    assert r["layers"]["q_input"]["frac"] == 0
    assert r["top1_agreement"] == 1.0
    assert r["logits_max_abs_diff"] < 0.05
    first = next(v for k, v in r["layers"].items() if "blocks.0." in k)
    assert first["frac"] < 1e-3  # a block's first requantizer: nearly all equal


@pytest.mark.parametrize("name", MICRO)
def test_state_dict_round_trip(name):
    deployed = deploy(model_from(name, Flags()))
    buf = io.BytesIO()
    torch.save({"config": deployed.config, "state": deployed.state_dict()}, buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)
    fresh = from_config(saved["config"])
    fresh.load_state_dict(saved["state"], strict=True)
    x = batch(9, n=4)[0]
    assert fresh.config == deployed.config  # (int_gemm, lookup_tables, requant too)
    with torch.no_grad():  # (the tables rebuilt from the loaded constants)
        assert torch.equal(fresh(x), deployed(x))
    assert not any("lut" in k for k in saved["state"])  # derived, not stored
    assert not any(k.split(".")[-1] in ("mh", "ml", "mh_id", "ml_id") for k in saved["state"])
    splits = {n: m.mh for n, m in deployed.named_modules() if isinstance(m, Requant)}
    assert any(v is not None for v in splits.values())  # (most requantizers take float64)
    for n, m in fresh.named_modules():  # the float64 constants rebuilt from (m, e)
        if isinstance(m, Requant):
            assert (m.mh is None) is (splits[n] is None), n
            assert m.mh is None or torch.equal(m.mh, splits[n]), n
    assert {v.dtype for k, v in saved["state"].items() if k.endswith("fc1.weight")} == {
        torch.int8}
    assert {v.dtype for k, v in saved["state"].items() if k.endswith("fc1.bias")} == {
        torch.int32}


@pytest.mark.parametrize("name", MICRO)
def test_int_gemm_and_lookup_tables_change_no_integer(name):
    """Each choice of GEMM and tables: the same logits; the tables are what runs where on
    (ShiftGELU's module is not called), and `layer_by_layer` turns them off only inside."""
    model = model_from(name, Flags.preset("best"))
    x = batch(4, n=8)[0]
    outs = {}
    for gemm in ("int8", "float32", "auto"):
        for tables in (False, True):
            dep = deploy(model, int_gemm=gemm, lookup_tables=tables)
            assert dep.config["int_gemm"] == gemm and dep.config["lookup_tables"] == tables
            called = []
            gelus = [m for m in dep.modules() if isinstance(m, IntGELU)]
            hooks = [m.register_forward_hook(lambda *a, c=called: c.append(1)) for m in gelus]
            with torch.no_grad():
                outs[gemm, tables] = dep(x)
                assert bool(called) is not tables
                with dep.layer_by_layer():
                    assert torch.equal(dep(x), outs[gemm, tables])
                    assert all(m.act_lut is None for m in dep.modules()
                               if isinstance(m, Mlp))
            assert all(m.exp_lut is not None for m in dep.modules()
                       if isinstance(m, IntSoftmax)) is tables
            for h in hooks:
                h.remove()
    first = outs["int8", False]
    assert all(torch.equal(o, first) for o in outs.values())
    with pytest.raises(ValueError, match="int_gemm must be one of") as e:
        deploy(model, int_gemm="int16")
    _one_line(e)


@pytest.mark.parametrize("name", MICRO)
def test_requant_arithmetic_changes_no_integer(name, monkeypatch):
    """int64 and float64 requantizers: the same logits, and float64 is what runs where
    chosen (in the requantizers whose (m, e) it holds exactly; the rest stay int64), with
    the products handed on as float64 where a float GEMM computed them, and I-LayerNorm's
    output."""
    model = model_from(name, Flags.preset("best"))
    x = batch(4, n=8)[0]
    calls = []
    f64 = arith.requantize_float64
    monkeypatch.setattr(arith, "requantize_float64", lambda *a: calls.append(1) or f64(*a))
    outs = {}
    for requant in ("int64", "float64", "auto"):
        dep = deploy(model, requant=requant, int_gemm="float32")
        assert dep.config["requant"] == requant
        calls.clear()
        accs = []
        hooks = [m.register_forward_hook(lambda mod, a, out, c=accs: c.append(out.dtype))
                 for m in dep.modules()
                 if isinstance(m, (layers.IntLinear, layers.IntMatMul, layers.IntLayerNorm))]
        with torch.no_grad():
            outs[requant] = dep(x)
        for h in hooks:
            h.remove()
        runs = {"int64": False, "float64": True, "auto": layers.FLOAT64_REQUANT_FAST}
        assert bool(calls) is runs[requant], requant
        want = torch.float64 if runs[requant] else torch.int64
        assert set(accs) == {want}, (requant, set(accs))
    assert torch.equal(outs["int64"], outs["float64"])
    assert torch.equal(outs["int64"], outs["auto"])
    lo, hi = arith.FLOAT64_REQUANT_E  # float64 exactly where every e lies within
    for n, m in dep.named_modules():  # (swin_micro's stage-1 I-LayerNorm ones: e = 53)
        if isinstance(m, Requant):
            assert (m.mh is None) is not bool(((m.e >= lo) & (m.e <= hi)).all()), n
    with pytest.raises(ValueError, match="requant must be one of") as e:
        deploy(model, requant="int32")
    _one_line(e)


@pytest.mark.parametrize("gemm, requant", [("auto", "auto"), ("int8", "int64"),
                                           ("float32", "float64")])
def test_deployed_model_traces_as_one_graph(gemm, requant):
    """Every GEMM and requantizer choice traces without a graph break (a probe of the CPU
    inside the forward broke the compiled graph at every linear layer)."""
    import torch._dynamo

    dep = deploy(model_from("ivit_micro", Flags()), int_gemm=gemm, requant=requant)
    with torch.no_grad():
        explained = torch._dynamo.explain(dep)(batch(6, n=2)[0])
    assert explained.graph_break_count == 0, explained.break_reasons
    assert explained.graph_count == 1


@pytest.mark.parametrize("name", MICRO)
def test_ivit_checkpoint_deploys(name):
    model = model_from(name, Flags())
    fresh = qvit.create_model(name, num_classes=10)
    qvit.load_ivit_checkpoint(fresh, ivit_layout(model))
    a, b = deploy(model), deploy(fresh)
    x = batch(11, n=4)[0]
    with torch.no_grad():
        assert torch.equal(a(x), b(x))


def _one_line(excinfo) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg
    return msg


def test_refuses_bad_input():
    with pytest.raises(ValueError, match="never observed.*calibrate") as e:
        deploy(qvit.create_model("ivit_micro", num_classes=10))
    _one_line(e)
    with pytest.raises(ValueError, match="float model") as e:
        deploy(qvit.create_float_reference("ivit_micro", num_classes=10))
    _one_line(e)
    with pytest.raises(ValueError, match="not a qvit model") as e:
        deploy(torch.nn.Sequential(qvit.modules.QuantAct(8)))
    _one_line(e)
    model = model_from("ivit_micro", Flags())
    model.reset_classifier(0)
    with pytest.raises(ValueError, match="classifier") as e:
        deploy(model)
    _one_line(e)
    with pytest.raises(ValueError, match="family"):
        from_config({"family": "resnet"})


def test_deploy_leaves_the_model_as_it_was():
    model = model_from("swin_micro", Flags())
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    deploy(model)
    assert model.training and all(m.training for m in model.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_evaluate_deployed():
    model = model_from("swin_micro", Flags())
    loader = [batch(20 + i, n=8) for i in range(3)]
    r = evaluate_deployed(model, loader)
    assert r["n"] == 24 and 0 <= r["top1"] <= 1 and 0 <= r["qat_top1"] <= 1
    assert r["agreement"] == 1 - len(r["disagreements"]) / 24
    assert r["agreement"] >= 0.95
    assert set(r) == {"top1", "qat_top1", "agreement", "n", "logits_max_abs_diff",
                      "disagreements"}
    with pytest.raises(ValueError, match="no batches"):
        evaluate_deployed(model, [])


@pytest.mark.slow
def test_compiled_deployed_model_is_exact():
    """`compile_deployed` (inductor, CPU, its options) of the deployed Swin: the same
    integers."""
    deployed = deploy(model_from("swin_micro", Flags()))
    x = batch(13, n=8)[0]
    with torch.no_grad():
        assert torch.equal(compile_deployed(deployed)(x), deployed(x))


@pytest.mark.parametrize("name", MICRO)
def test_every_local_difference_is_float32_rounding(name, monkeypatch):
    """Each QAT I-LayerNorm, Shiftmax and ShiftGELU on the deployed model's own integer
    inputs: in float32 they move integers (rounded sums and products, q x s / s off the
    integer, floor(I / t) from a float reciprocal); the same QAT formulas in float64, with
    I = 2^31 - 1 as float64 holds it (float32 holds 2^31, the deployed model's I), give
    the deployed integers exactly, every element."""
    from qvit.deploy import arith
    from qvit.deploy.compare import local_differences

    model = model_from(name, Flags.preset("best"))
    x = batch(7, n=16)[0]
    f32 = local_differences(model, deploy(model), x, torch.float32)
    assert any(v["frac"] > 0 for v in f32.values())
    monkeypatch.setattr(arith, "NORM_ONE", 2**31 - 1)
    f64 = local_differences(model, deploy(model), x, torch.float64)
    assert len(f64) == len(f32) > 0
    assert {k: v for k, v in f64.items() if v["frac"]} == {}
