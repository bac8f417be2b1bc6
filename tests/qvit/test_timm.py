"""timm's model contract (the concerns of timm's tests/test_models.py, one test each,
parametrized over the registry's CPU-sized models), calibration, and I-ViT checkpoints."""

import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import timm
import torch
from timm.models._features import FeatureGetterNet
from timm.optim import create_optimizer_v2

import qvit
from qvit import Flags

from ._util import MICRO, batch, calibrated_state, model_from

CPU_MODELS = ["ivit_micro", "swin_micro", "deit_tiny_patch16_224",
              "swin_tiny_patch4_window7_224"]


def _batch_size(name):
    return 2 if name in MICRO else 1


def _input(model, n):
    return torch.randn(n, *model.pretrained_cfg["input_size"])


@pytest.mark.parametrize("name", CPU_MODELS)
def test_forward_backward_at_the_default_input_size(name):
    model = timm.create_model(f"qvit_{name}", num_classes=42).train()
    x = _input(model, _batch_size(name))
    out = model(x)
    assert out.shape == (x.shape[0], 42) and not torch.isnan(out).any()
    out.mean().backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None]
    # I-ViT's I-LayerNorm adds its bias as integers of bias/weight, detached: no gradient
    assert all(n.endswith(".bias") and "norm" in n for n in no_grad)


@pytest.mark.parametrize("name", CPU_MODELS)
def test_default_cfg_features_head_and_classifier_resets(name):
    model = timm.create_model(f"qvit_{name}")
    assert model.num_classes == 1000 and model.default_cfg is model.pretrained_cfg
    cfg = timm.data.resolve_data_config(model=model)
    x = torch.randn(_batch_size(name), *cfg["input_size"])  # the model takes its own config
    state = model.state_dict()
    assert cfg_name_exists(state, model.pretrained_cfg["first_conv"])
    assert cfg_name_exists(state, model.pretrained_cfg["classifier"])
    qvit.calibrate(model, [x]).eval()
    with torch.no_grad():
        logits = model(x)
        features = model.forward_features(x)
        pre = model.forward_head(features, pre_logits=True)
        assert torch.equal(model.forward_head(features), logits)
        assert features.shape[-1] == model.num_features and pre.shape == (len(x),
                                                                          model.head_hidden_size)
        pool = model.pretrained_cfg["pool_size"]
        if pool is not None:  # Swin: NHWC feature map, as timm's
            assert features.shape[1:3] == pool
        # the 224 models (CPU time) go through the head only after a reset
        run = model if name in MICRO else (lambda _: model.forward_head(features))
        model.reset_classifier(0)
        assert model.num_classes == 0 and torch.equal(run(x), pre)
        model.reset_classifier(5)
        assert run(x).shape == (len(x), 5)
        assert model.get_classifier().weight.shape == (5, model.num_features)
        extractor = timm.create_model(f"qvit_{name}", num_classes=0)
        run = extractor if name in MICRO else (lambda _: extractor.forward_head(features))
        assert run(x).shape == (len(x), model.num_features)


def cfg_name_exists(state, module):
    return f"{module}.weight" in state


@pytest.mark.parametrize("name", MICRO)
def test_reset_classifier_keeps_flags_device_and_pooling_choices(name):
    model = qvit.create_model(name, num_classes=10, flags=Flags.preset("seed"))
    model.reset_classifier(3)
    assert model.get_classifier().flags == Flags.preset("seed")
    with pytest.raises(ValueError, match="global_pool must be one of"):
        model.reset_classifier(3, "max")
    with pytest.raises(ValueError, match="num_classes must be an int >= 0"):
        model.reset_classifier(-1)
    x, _ = batch(1)
    unpooled = qvit.create_model(name, num_classes=0, global_pool="")(x)
    assert unpooled.dim() == (4 if name == "swin_micro" else 3)


def test_deit_average_pooling():
    model = qvit.create_model("ivit_micro", num_classes=7, global_pool="avg")
    assert model(batch(1)[0]).shape == (4, 7)


def test_micro_configs_carry_the_statistics_the_harness_feeds_them():
    from harness.run.data import MEAN_STD

    for name in MICRO:
        cfg = timm.create_model(f"qvit_{name}", num_classes=10).pretrained_cfg
        assert (cfg["mean"], cfg["std"]) == MEAN_STD["digits"]
        assert cfg["input_size"] == (3, 32, 32) and cfg["num_classes"] == 1000
    big = qvit.create_model("ivit_micro", num_classes=10, img_size=64)
    assert big.pretrained_cfg["input_size"] == (3, 64, 64)  # the size it was built for
    with pytest.raises(ValueError, match="feature_cls='getter'"):
        timm.create_model("qvit_ivit_micro", features_only=True, feature_cls="hook")


@pytest.mark.parametrize("name", MICRO)
def test_backward_reaches_every_parameter_with_layernorm_bias_grad(name):
    """timm's test_model_backward: every parameter gets a gradient, once the LayerNorm
    biases get theirs (layernorm_bias_grad; I-ViT's are frozen)."""
    model = timm.create_model(f"qvit_{name}", num_classes=42,
                              flags="best,layernorm_bias_grad=true").train()
    model(_input(model, 2)).mean().backward()
    assert [n for n, p in model.named_parameters() if p.grad is None] == []


# --- timm's feature API --------------------------------------------------------------------

@pytest.mark.parametrize("name", MICRO)
def test_forward_intermediates_follows_timms_contract(name):
    """timm's test_model_forward_intermediates: one intermediate per feature_info entry
    (channels, reduction), the final output equal to forward_features; indices as last-n or
    a list, intermediates_only, stop_early, the output formats and the final norm."""
    model = model_from(name, Flags()).eval()
    x = batch(5, 2)[0]
    info = timm.models.FeatureInfo(model.feature_info, len(model.feature_info))
    with torch.no_grad():
        out, inter = model.forward_intermediates(x)
        assert torch.equal(out, model.forward_features(x))
        assert len(inter) == len(model.feature_info)
        for c, r, y in zip(info.channels(), info.reduction(), inter, strict=True):
            assert y.shape == (2, c, 32 // r, 32 // r) and not torch.isnan(y).any()
        last = model.forward_intermediates(x, indices=1, intermediates_only=True)
        assert len(last) == 1 and torch.equal(last[0], inter[-1])
        first = model.forward_intermediates(x, indices=[0], stop_early=True,
                                            intermediates_only=True)
        assert torch.equal(first[0], inter[0])
        other = "NLC" if name == "ivit_micro" else "NHWC"
        flat = model.forward_intermediates(x, output_fmt=other, intermediates_only=True)
        assert flat[0].shape[-1] == info.channels()[0]
        with pytest.raises(ValueError, match="output_fmt"):
            model.forward_intermediates(x, output_fmt="NDHWC")
        normed = model.forward_intermediates(x, indices=1, norm=True, intermediates_only=True)
        if name == "swin_micro":  # the final norm on the last stage: forward_features'
            assert torch.equal(normed[0], out.permute(0, 3, 1, 2))
        else:  # on every block; the last one's is forward_features' (class token aside)
            assert torch.equal(normed[0].flatten(2).transpose(1, 2), out[:, 1:])
        if name == "ivit_micro":
            pairs = model.forward_intermediates(x, indices=1, return_prefix_tokens=True,
                                                intermediates_only=True)
            assert pairs[0][1].shape == (2, 1, model.embed_dim)
        model.set_grad_checkpointing()
        assert torch.equal(model.forward_intermediates(x)[0], out)


@pytest.mark.parametrize("name", MICRO)
def test_forward_intermediates_are_the_same_under_every_preset(name):
    x = batch(6, 2)[0]
    got = {}
    for preset in ("legacy", "seed", "best"):
        model = model_from(name, Flags.preset(preset)).eval()
        with torch.no_grad():
            got[preset] = model.forward_intermediates(x, norm=True)
    for preset in ("seed", "best"):
        assert torch.equal(got[preset][0], got["legacy"][0]) == (preset == "best")
    for a, b in zip(got["best"][1], got["legacy"][1], strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("name", MICRO)
def test_features_only_is_timms_feature_getter_net(name):
    """timm's test_model_forward_features / _intermediates_features: features_only=True gives
    timm's FeatureGetterNet with its feature_info, timm's default indices, the outputs of
    forward_intermediates at them; the model behind is pruned after the last index."""
    net = timm.create_model(f"qvit_{name}", features_only=True, flags="legacy").eval()
    assert isinstance(net, FeatureGetterNet)
    assert net.default_cfg["input_size"] == (3, 32, 32)
    n = len(net.model.feature_info)
    want = list(range(n - 3, n)) if name == "ivit_micro" else list(range(n))
    assert net.out_indices == want
    full = model_from(name, Flags.preset("legacy")).eval()
    net.model.load_state_dict(full.state_dict(), strict=False)
    x = batch(8, 1)[0]
    with torch.no_grad():
        outs = net(x)
        ref = full.forward_intermediates(x, indices=want, intermediates_only=True)
    assert [o.shape[1] for o in outs] == net.feature_info.channels()
    assert all(torch.equal(a, b) for a, b in zip(outs, ref, strict=True))
    picked = timm.create_model(f"qvit_{name}", features_only=True, out_indices=(0,))
    assert picked.feature_info.channels() == [full.feature_info[0]["num_chs"]]
    if name == "swin_micro":  # pruned to the first stage: its norm and head are gone
        assert len(picked.model.layers) == 1 and picked.model.num_classes == 0


# timm's own tests/test_models.py against these models, where a checkout of timm is given
# (QVIT_TIMM_CHECKOUT=<pytorch-image-models>): timm's classification of ViT-style models
# (NON_STD_FILTERS) extended to qvit's DeiTs, forward_intermediates' tests (FEAT_INTER_FILTERS)
# to qvit's registry, fx and torchscript left out.
TIMM_CHECKOUT = os.environ.get("QVIT_TIMM_CHECKOUT")


def timm_test_file(checkout: str, dest) -> str:
    """A copy of timm's tests/test_models.py that also tests the qvit_* models (registered
    by importing qvit), creating them with $QVIT_TIMM_FLAGS where that is set."""
    src = (Path(checkout) / "tests" / "test_models.py").read_text()
    edits = [
        ("from timm.models import get_notrace_modules, get_notrace_functions\n",
         "from timm.models import get_notrace_modules, get_notrace_functions\n"
         "import qvit  # registers the qvit_* models\n"
         "if os.environ.get('QVIT_TIMM_FLAGS'):\n"
         "    _timm_create_model = create_model\n"
         "    def create_model(name, *args, **kwargs):\n"
         "        if name.startswith('qvit_'):\n"
         "            kwargs['flags'] = os.environ['QVIT_TIMM_FLAGS']\n"
         "        return _timm_create_model(name, *args, **kwargs)\n"),
        ("NUM_NON_STD = len(NON_STD_FILTERS)",
         "NON_STD_FILTERS += ['qvit_deit*', 'qvit_ivit*']\n"
         "FEAT_INTER_FILTERS += ['registry']\n"
         "NUM_NON_STD = len(NON_STD_FILTERS)"),
    ]
    for old, new in edits:
        if old not in src:
            raise ValueError(f"timm's test_models.py changed: {old.strip()!r} not found")
        src = src.replace(old, new, 1)
    path = Path(dest) / "test_models.py"
    path.write_text("import os\n" + src)
    (Path(dest) / "pytest.ini").write_text("[pytest]\n")
    return str(path)


# swin_micro has two stages: timm's feature tests want at least three feature levels
TWO_STAGES = {"test_model_forward_features[1-qvit_swin_micro]",
              "test_model_forward_intermediates[1-qvit_swin_micro]"}
FROZEN_BIAS = {f"test_model_backward[2-qvit_{n}]" for n in CPU_MODELS}


@pytest.mark.skipif(not TIMM_CHECKOUT, reason="QVIT_TIMM_CHECKOUT (a timm checkout) not set")
@pytest.mark.parametrize("flags, failing", [
    ("best,layernorm_bias_grad=true", TWO_STAGES),
    ("best", TWO_STAGES | FROZEN_BIAS),  # I-ViT's frozen LayerNorm biases get no gradient
])
def test_timms_own_model_tests_pass(flags, failing, tmp_path):
    path = timm_test_file(TIMM_CHECKOUT, tmp_path)
    env = {**os.environ, "QVIT_TIMM_FLAGS": flags, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(Path(qvit.__file__).parents[1]),
                                          os.environ.get("PYTHONPATH", "")])}
    models = " or ".join(f"qvit_{n}" for n in CPU_MODELS)
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider", "-c",
         str(tmp_path / "pytest.ini"), path, "-k", f"({models}) and not fx and not torchscript",
         "-W", "ignore::pytest.PytestUnknownMarkWarning"],
        env=env, capture_output=True, text=True, cwd=tmp_path)
    tail = run.stdout[-3000:]
    passed = re.findall(r"^PASSED \S+::(\S+)", run.stdout, re.M)
    failed = re.findall(r"^FAILED \S+::(\S+)", run.stdout, re.M)
    assert len(passed) >= 14 and set(failed) == failing, tail


@pytest.mark.parametrize("name", CPU_MODELS)
def test_layer_decay_groups_and_weight_decay_match_the_float_twin(name):
    def groups(model):
        names = {id(p): n for n, p in model.named_parameters()}
        opt = create_optimizer_v2(model, "adamw", lr=1e-3, weight_decay=0.05, layer_decay=0.75)
        return {names[id(p)]: (round(g["lr_scale"], 12), g["weight_decay"])
                for g in opt.param_groups for p in g["params"]}

    ours = groups(qvit.create_model(name, num_classes=10))
    assert len({s for s, _ in ours.values()}) > 3  # per-layer learning-rate scales
    assert ours == groups(qvit.create_float_reference(name, num_classes=10))
    if "swin" in name:
        tables = [n for n in ours if n.endswith("relative_position_bias_table")]
        assert tables and all(ours[n][1] == 0.0 for n in tables)


@pytest.mark.parametrize("name", MICRO)
def test_grad_checkpointing_gives_the_same_step(name):
    def step(checkpointing):
        model = model_from(name, Flags())
        model.set_grad_checkpointing(checkpointing)
        x, y = batch(11)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        return loss, {k: p.grad for k, p in model.named_parameters()
                      if p.grad is not None}, model.state_dict()

    plain, ckpt = step(False), step(True)
    assert torch.equal(plain[0], ckpt[0])
    assert plain[1].keys() == ckpt[1].keys()
    assert all(torch.equal(plain[1][k], ckpt[1][k]) for k in plain[1])
    assert all(torch.equal(plain[2][k], ckpt[2][k]) for k in plain[2])  # ranges observed once


@pytest.mark.parametrize("name", MICRO)
def test_calibrate_observes_ranges_and_restores_the_mode(name):
    model = qvit.create_model(name, num_classes=10)
    params = {k: p.clone() for k, p in model.named_parameters()}
    assert len(model.uncalibrated_quantizers()) == sum(
        isinstance(m, qvit.modules.QuantAct) for m in model.modules())
    data = [(batch(i)[0], batch(i)[1]) for i in range(3)]
    model.eval()
    assert qvit.calibrate(model, data, steps=2) is model
    assert not model.training and model.uncalibrated_quantizers() == []
    assert all(torch.equal(p, params[k]) for k, p in model.named_parameters())
    manual = qvit.create_model(name, num_classes=10)  # the hand-written loop it replaces
    manual.load_state_dict({k: v for k, v in params.items()}, strict=False)
    with torch.no_grad():
        for x, _ in data[:2]:
            manual(x)
    assert all(torch.equal(v, manual.state_dict()[k]) for k, v in model.state_dict().items())
    qvit.calibrate(model.train(), (x for x, _ in data))  # bare images, a generator
    assert model.training
    with pytest.raises(ValueError, match="no batches"):
        qvit.calibrate(model, [])


@pytest.mark.parametrize("name", MICRO)
def test_uncalibrated_eval_warns_once_and_calibrated_flows_do_not(name):
    model = qvit.create_model(name, num_classes=10).eval()
    x, y = batch(3)
    with pytest.warns(qvit.UncalibratedWarning, match="qvit.calibrate"):
        with torch.no_grad():
            model(x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with torch.no_grad():
            model.eval()(x)  # once per model
        trained = qvit.create_model(name, num_classes=10)  # the harness's flow: train, eval
        opt = torch.optim.SGD(trained.parameters(), lr=0.01)
        torch.nn.functional.cross_entropy(trained(x), y).backward()
        opt.step()
        trained.eval()
        with torch.no_grad():
            trained(x)
        model_from(name, Flags()).eval()(x)  # a loaded calibrated state


def test_float_weights_of_another_size_resample_the_position_embedding(tmp_path):
    from timm.layers import resample_abs_pos_embed

    ref = qvit.create_float_reference("ivit_micro", num_classes=10)
    model = qvit.create_model("ivit_micro", num_classes=10, img_size=48)
    qvit.load_float_weights(model, ref)
    want = resample_abs_pos_embed(ref.pos_embed.detach(), new_size=[12, 12])
    assert torch.equal(model.pos_embed.detach(), want) and model.pos_embed.shape[1] == 145
    extractor = qvit.create_model("swin_micro", num_classes=0)  # the float head has no place
    qvit.load_float_weights(extractor, qvit.create_float_reference("swin_micro"))


def test_a_file_that_is_not_a_checkpoint_gets_a_one_line_error(tmp_path):
    bad = tmp_path / "weights.pth"
    bad.write_text("not a checkpoint\n")
    model = qvit.create_model("ivit_micro", num_classes=10)
    with pytest.raises(ValueError, match="is not a PyTorch checkpoint") as info:
        qvit.load_float_weights(model, bad)
    assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match="is not a PyTorch checkpoint"):
        qvit.load_ivit_checkpoint(model, bad)


# --- I-ViT checkpoints -------------------------------------------------------------------
# The layout of zkkli/I-ViT's state dicts, written here from the mapping (independently of
# qvit.ivit's tables): qvit name -> I-ViT name, per family.
_IVIT_DEIT = [
    (r"^q_input\.", "qact_input."), (r"^patch_embed\.q_out\.", "patch_embed.qact."),
    (r"^q_pos\.", "qact_pos."), (r"^q_embed\.", "qact1."), (r"^q_head\.", "qact2."),
    (r"\.q_norm1\.", ".qact1."), (r"\.q_res1\.", ".qact2."), (r"\.q_norm2\.", ".qact3."),
    (r"\.q_res2\.", ".qact4."),
    (r"\.attn\.q_qkv\.", ".attn.qact1."), (r"\.attn\.q_scores\.", ".attn.qact_attn1."),
    (r"\.attn\.q_context\.", ".attn.qact2."), (r"\.attn\.q_out\.", ".attn.qact3."),
    (r"\.attn\.softmax\.", ".attn.int_softmax."),
    (r"\.mlp\.q_fc1\.", ".mlp.qact_gelu."), (r"\.mlp\.q_act\.", ".mlp.qact1."),
    (r"\.mlp\.q_out\.", ".mlp.qact2."),
    (r"\.matmul_qk\.", ".matmul_1."), (r"\.matmul_av\.", ".matmul_2."),
]
_IVIT_SWIN = [
    (r"^q_input\.", "qact_input."), (r"^patch_embed\.q_proj\.", "patch_embed.qact_before_norm."),
    (r"^patch_embed\.q_out\.", "patch_embed.qact."), (r"^q_embed\.", "qact1."),
    (r"^q_norm\.", "qact2."), (r"^q_pool\.", "qact3."), (r"^head\.fc\.", "head."),
    (r"\.q_norm1\.", ".qact1."), (r"\.q_res1\.", ".qact2."), (r"\.q_norm2\.", ".qact3."),
    (r"\.q_res2\.", ".qact4."),
    (r"\.attn\.q_qkv\.", ".attn.qact1."), (r"\.attn\.q_scores\.", ".attn.qact_attn1."),
    (r"\.attn\.q_bias_table\.", ".attn.qact_table."),
    (r"\.attn\.q_scores_biased\.", ".attn.qact2."), (r"\.attn\.q_context\.", ".attn.qact3."),
    (r"\.attn\.q_out\.", ".attn.qact4."), (r"\.attn\.softmax\.", ".attn.log_int_softmax."),
    (r"\.mlp\.q_fc1\.", ".mlp.qact_gelu."), (r"\.mlp\.q_act\.", ".mlp.qact1."),
    (r"\.mlp\.q_out\.", ".mlp.qact2."),
    (r"\.downsample\.q_norm\.", ".downsample.qact1."),
    (r"\.downsample\.q_out\.", ".downsample.qact2."),
    (r"\.matmul_qk\.", ".matmul_1."), (r"\.matmul_av\.", ".matmul_2."),
    (r"^layers\.(\d+)\.downsample\.", lambda m: f"layers.{int(m.group(1)) - 1}.downsample."),
]


def _ivit_name(key, swin):
    for pattern, repl in _IVIT_SWIN if swin else _IVIT_DEIT:
        key = re.sub(pattern, repl, key)
    return key


def ivit_layout(model):
    """What I-ViT's ``model.state_dict()`` holds for ``model``'s weights and scales: its
    names, its derived buffers (integers, weight/norm/matmul/softmax/GELU scales), its unused
    quantizers, 0-dim activation scales and no running ranges."""
    from qvit import modules as M

    swin = isinstance(model, qvit.QuantSwin)
    sd = {}
    for key, v in model.state_dict().items():
        if key.endswith(("min_val", "max_val")):
            continue
        sd[_ivit_name(key, swin)] = v.reshape(()) if key.endswith("act_scaling_factor") else v
    derived = {}
    for path, m in model.named_modules():
        p = _ivit_name(path + ".", swin)
        if isinstance(m, M.QuantLinear | M.QuantConv2d):
            scale = m.weight.detach().abs().flatten(1).amax(1) / 127
            derived[p + ("conv" if isinstance(m, M.QuantConv2d) else "fc")
                    + "_scaling_factor"] = scale
            derived[p + "weight_integer"] = torch.round(
                m.weight.detach() / scale.view(-1, *[1] * (m.weight.dim() - 1)))
            if m.bias is not None:
                derived[p + "bias_integer"] = torch.zeros_like(m.bias)
        elif isinstance(m, M.IntLayerNorm):
            derived[p + "norm_scaling_factor"] = m.weight.detach() * 0.001
            derived[p + "bias_integer"] = torch.zeros_like(m.bias)
        elif isinstance(m, M.QuantMatMul | M.IntSoftmax | M.IntGELU):
            derived[p + "act_scaling_factor"] = torch.tensor([0.01])
        elif isinstance(m, qvit.blocks.Attention):
            if swin:
                derived[p + "relative_position_index"] = m.relative_position_index
            else:
                derived[p + "qact_softmax.act_scaling_factor"] = torch.zeros(1)  # unused
        elif isinstance(m, qvit.blocks.TransformerBlock) and m.attn_mask is not None:
            derived[p + "attn_mask"] = m.attn_mask
    derived["act_out.act_scaling_factor"] = torch.zeros(1)  # unused in I-ViT
    assert not set(derived) & set(sd)
    return {**sd, **derived}


@pytest.mark.parametrize("name", MICRO)
@pytest.mark.parametrize("preset", ["best", "legacy"])
def test_ivit_checkpoint_evaluates_bit_for_bit(name, preset, tmp_path):
    flags = Flags.preset(preset)
    model = model_from(name, flags).eval()
    x, _ = batch(21)
    with torch.no_grad():
        want = model(x)
    layout = ivit_layout(model)
    if name == "swin_micro":
        assert {"layers.0.downsample.reduction.weight", "head.weight",
                "layers.0.blocks.0.attn.qact_table.act_scaling_factor",
                "layers.0.blocks.1.attn_mask"} <= set(layout)
    else:
        assert {"blocks.0.attn.qact_softmax.act_scaling_factor", "qact2.act_scaling_factor",
                "blocks.0.mlp.qact_gelu.act_scaling_factor",
                "blocks.0.attn.matmul_1.act_scaling_factor"} <= set(layout)
    assert not any(k.endswith(("min_val", "max_val")) for k in layout)
    torch.save({"model": {f"module.{k}": v for k, v in layout.items()}}, tmp_path / "ivit.pth")
    for source in (layout, tmp_path / "ivit.pth"):
        fresh = qvit.create_model(name, num_classes=10, flags=flags)
        qvit.load_ivit_checkpoint(fresh, source)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            fresh.eval()
            with torch.no_grad():
                got = fresh(x)
        assert torch.equal(got, want)


@pytest.mark.parametrize("name", MICRO)
def test_ivit_checkpoint_is_loaded_strictly(name):
    model = model_from(name, Flags())
    layout = ivit_layout(model)
    fresh = qvit.create_model(name, num_classes=10)
    with pytest.raises(ValueError, match=r"unexpected 1: extra\.weight"):
        qvit.load_ivit_checkpoint(fresh, {**layout, "extra.weight": torch.zeros(1)})
    short = {k: v for k, v in layout.items() if not k.endswith("norm.weight")}
    with pytest.raises(ValueError, match=r"missing .*norm\.weight"):
        qvit.load_ivit_checkpoint(fresh, short)
    with pytest.raises(ValueError, match="shape mismatch"):
        qvit.load_ivit_checkpoint(qvit.create_model(name, num_classes=5), layout)
    with pytest.raises(ValueError, match="not an I-ViT checkpoint"):
        qvit.load_ivit_checkpoint(fresh, calibrated_state(name))  # qvit's own layout
    never_run = {k: (torch.zeros(()) if k.endswith("qact_input.act_scaling_factor") else v)
                 for k, v in layout.items()}
    with pytest.warns(UserWarning, match="q_input.*qvit.calibrate"):
        qvit.load_ivit_checkpoint(fresh, never_run)
    assert fresh.uncalibrated_quantizers() == ["q_input"]


@pytest.mark.parametrize("impl", ["ivit", "timm"])
def test_calibrate_turns_either_drop_path_off(impl):
    """Calibration observes ranges without stochastic depth, whichever implementation the
    model uses (a kept-sample rescale would widen the ranges)."""
    a = qvit.create_model("ivit_micro", num_classes=10, drop_path_rate=0.5,
                          drop_path_impl=impl)
    b = qvit.create_model("ivit_micro", num_classes=10, drop_path_rate=0.0)
    b.load_state_dict(a.state_dict())
    x = torch.randn(4, 3, 32, 32)
    torch.manual_seed(1)
    qvit.calibrate(a, [x])
    qvit.calibrate(b, [x])
    for (n, va), vb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(va, vb), n


# --- Swin's derived buffers are timm's ------------------------------------------------------

@pytest.mark.parametrize("window", [4, 7])
def test_swin_relative_position_index_and_window_masks_are_timms(window):
    """Every block's relative position index and shifted-window mask equal those of timm's
    float Swin of the same architecture (pretrained bias tables are read at the same
    offsets; a bijection of the index would pass every comparison of ours with ours)."""
    kw = dict(num_classes=0) if window == 4 else dict(num_classes=0, img_size=224, window_size=7)
    ours = qvit.create_model("swin_micro", **kw)
    theirs = qvit.create_float_reference("swin_micro", **kw)
    a = [b for s in ours.layers for b in s.blocks]
    b = [b for s in theirs.layers for b in s.blocks]
    assert len(a) == len(b) and any(x.attn_mask is not None for x in b)
    for i, (x, y) in enumerate(zip(a, b, strict=True)):
        assert torch.equal(x.attn.relative_position_index, y.attn.relative_position_index), i
        assert (x.attn_mask is None) == (y.attn_mask is None), i
        if y.attn_mask is not None:
            assert torch.equal(x.attn_mask, y.attn_mask), i


def test_swin_patch_merging_concatenates_in_timms_order():
    ours = qvit.create_model("swin_micro", num_classes=0).layers[1].downsample
    theirs = qvit.create_float_reference("swin_micro", num_classes=0).layers[1].downsample
    seen = []
    ours.norm.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    theirs.norm.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    H, W = ours.input_resolution
    C = ours.norm.normalized_shape[0] // 4
    x = torch.arange(2 * H * W * C, dtype=torch.float32).view(2, H * W, C)
    ours(x, torch.ones(1))
    theirs(x.view(2, H, W, C))
    assert torch.equal(seen[0], seen[1].reshape(seen[0].shape))
