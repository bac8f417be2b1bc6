"""Models: registry (ours and timm's), shapes, float weights, state dicts across presets."""

import pytest
import timm
import torch

import qvit
from qvit import Flags

from ._util import MICRO, batch, calibrated_state, model_from

ALL = qvit.list_models()


def test_registry_lists_every_variant():
    assert set(ALL) == {"deit_tiny_patch16_224", "deit_small_patch16_224",
                        "deit_base_patch16_224", "swin_tiny_patch4_window7_224",
                        "swin_small_patch4_window7_224", "swin_base_patch4_window7_224",
                        "ivit_micro", "swin_micro"}
    assert qvit.list_models("swin*") == [n for n in ALL if n.startswith("swin")]


@pytest.mark.parametrize("name", ALL)
def test_every_model_builds_with_its_float_twin_parameter_names(name):
    model = qvit.create_model(name, num_classes=10)
    ref = qvit.create_float_reference(name, num_classes=10)
    ours = {k: tuple(p.shape) for k, p in model.named_parameters()}
    theirs = {k: tuple(v.shape) for k, v in ref.state_dict().items()
              if not k.endswith(("relative_position_index", "attn_mask"))}
    assert ours == theirs


@pytest.mark.filterwarnings("ignore::qvit.UncalibratedWarning")  # shapes only
@pytest.mark.parametrize("name", ["deit_tiny_patch16_224", "swin_tiny_patch4_window7_224"])
def test_224_models_forward(name):
    model = qvit.create_model(name, num_classes=10).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 224, 224)).shape == (1, 10)


@pytest.mark.parametrize("name", MICRO)
def test_micro_models_learn_a_fixed_batch(name):
    model = qvit.create_model(name, num_classes=10)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    x, y = batch(1, 16)
    losses = []
    for _ in range(20):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_swin_micro_exercises_shifted_windows_and_merging():
    model = qvit.create_model("swin_micro", num_classes=10)
    assert len(model.layers) >= 2 and model.layers[1].downsample is not None
    shifts = [b.shift_size for s in model.layers for b in s.blocks]
    assert any(shifts) and all(b.attn_mask is not None for s in model.layers for b in s.blocks
                               if b.shift_size)


def test_timm_finds_the_models_under_a_qvit_prefix():
    model = timm.create_model("qvit_ivit_micro", num_classes=7)
    assert isinstance(model, qvit.QuantViT) and model.num_classes == 7
    assert "qvit_swin_micro" in timm.list_models("qvit_*")
    with pytest.raises(ValueError, match="load_float_weights"):
        timm.create_model("qvit_ivit_micro", pretrained=True)


@pytest.mark.parametrize("name", MICRO)
def test_state_dict_keys_do_not_depend_on_flags(name):
    keys = {p: {k: v.shape for k, v in qvit.create_model(name, num_classes=10,
                                                        flags=Flags.preset(p)).state_dict().items()}
            for p in ("legacy", "seed", "best")}
    assert keys["legacy"] == keys["seed"] == keys["best"]


@pytest.mark.parametrize("name", MICRO)
def test_checkpoint_round_trip_evaluates_identically(name, tmp_path):
    model = model_from(name, Flags.preset("seed")).eval()
    x, _ = batch(3)
    with torch.no_grad():
        want = model(x)
    path = tmp_path / "ckpt.pt"
    torch.save(model.state_dict(), path)
    for preset in ("seed", "legacy"):  # a fast-trained checkpoint loads into any preset
        fresh = qvit.create_model(name, num_classes=10, flags=Flags.preset(preset))
        fresh.load_state_dict(torch.load(path, weights_only=True), strict=True)
        fresh.eval()
        with torch.no_grad():
            got = fresh(x)
        if preset == "seed":
            assert torch.equal(got, want)
        else:
            assert torch.allclose(got, want, atol=0.1)


def test_ranges_survive_a_reload_and_a_device_move():
    sd = calibrated_state("ivit_micro")
    ranges = {k: v for k, v in sd.items() if k.endswith(("min_val", "max_val"))}
    assert ranges and any(v.abs().sum() > 0 for v in ranges.values())
    model = model_from("ivit_micro", Flags()).to(torch.device("cpu"))
    assert all(torch.equal(model.state_dict()[k], v) for k, v in ranges.items())


def test_set_flags_switches_paths_of_one_instance():
    model = model_from("ivit_micro", Flags.preset("legacy")).eval()
    x, _ = batch(5, 16)
    with torch.no_grad():
        a = model(x)
        model.set_flags(Flags.preset("seed"))
        b = model(x)
        model.set_flags(Flags.preset("legacy"))
        c = model(x)
    assert torch.equal(a, c) and not torch.equal(a, b)
    assert all(m.flags == Flags.preset("legacy") for m in model.modules()
               if isinstance(m, qvit.modules.QuantModule))
    with pytest.raises(ValueError, match="qvit.Flags"):
        model.set_flags("seed")


@pytest.mark.parametrize("name", MICRO)
def test_float_reference_attention_path(name):
    """``attention`` sets every attention's path (None: timm's own default, sdpa for ViT,
    explicit for Swin); the two paths are the same function of the same weights."""
    def paths(model):
        return {m.fused_attn for m in model.modules() if hasattr(m, "fused_attn")}

    assert paths(qvit.create_float_reference(name, num_classes=10)) == {name == "ivit_micro"}
    torch.manual_seed(0)
    fused = qvit.create_float_reference(name, num_classes=10, attention="sdpa").eval()
    torch.manual_seed(0)
    explicit = qvit.create_float_reference(name, num_classes=10, attention="explicit").eval()
    assert paths(fused) == {True} and paths(explicit) == {False}
    sd = fused.state_dict()
    assert all(torch.equal(sd[k], v) for k, v in explicit.state_dict().items())
    x, _ = batch(0)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), explicit(x), rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="use 'explicit', 'sdpa' or None"):
        qvit.create_float_reference(name, attention="flash")


@pytest.mark.parametrize("name", MICRO)
def test_float_weights_load_strictly(name, tmp_path):
    ref = qvit.create_float_reference(name, num_classes=10)
    torch.save({"model": ref.state_dict()}, tmp_path / "float.pth")
    model = qvit.create_model(name, num_classes=10)
    qvit.load_float_weights(model, tmp_path / "float.pth")
    for k, p in model.named_parameters():
        assert torch.equal(p, ref.state_dict()[k])


def test_float_weights_that_do_not_fit_get_a_clear_error(tmp_path):
    ref = qvit.create_float_reference("ivit_micro", num_classes=100)
    model = qvit.create_model("ivit_micro", num_classes=10)
    with pytest.raises(ValueError, match=r"shape mismatch: .*head\.weight.*exclude"):
        qvit.load_float_weights(model, ref)
    qvit.load_float_weights(model, ref, exclude=("head.*",))  # new classifier head: fine
    wrong = qvit.create_float_reference("swin_micro", num_classes=10)
    with pytest.raises(ValueError, match="missing .*unexpected"):
        qvit.load_float_weights(model, wrong)
    with pytest.raises(ValueError, match="does not exist"):
        qvit.load_float_weights(model, tmp_path / "nope.pth")


def test_original_swin_checkpoint_format_is_converted():
    """Microsoft's layout: merging at the end of a stage (layers.i-1) and a bare head."""
    import re

    ref = qvit.create_float_reference("swin_micro", num_classes=10)
    sd = ref.state_dict()
    original = {}
    for k, v in sd.items():
        k = re.sub(r"layers\.(\d+)\.downsample",
                   lambda m: f"layers.{int(m.group(1)) - 1}.downsample", k)
        original[k.replace("head.fc.", "head.")] = v
    assert "layers.0.downsample.norm.weight" in original and "head.weight" in original
    model = qvit.create_model("swin_micro", num_classes=10)
    qvit.load_float_weights(model, original)
    for k, p in model.named_parameters():
        assert torch.equal(p, sd[k])


@pytest.mark.parametrize("kwargs, match", [
    (dict(name="ivit_mikro", num_classes=10), "did you mean 'ivit_micro'"),
    (dict(name="ivit_micro", num_classes=-1), "num_classes"),
    (dict(name="swin_micro", num_classes=10, img_size=36), "divisible by 32"),
    (dict(name="ivit_micro", num_classes=10, flags="seed,use_frexp=maybe"), "true/false"),
])
def test_bad_model_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        qvit.create_model(kwargs.pop("name"), **kwargs)


def test_wrong_input_size_is_refused_before_any_work():
    model = qvit.create_model("ivit_micro", num_classes=10)
    with pytest.raises(ValueError, match="img_size"):
        model(torch.randn(2, 3, 64, 64))
    big = qvit.create_model("ivit_micro", num_classes=10, img_size=64)
    assert big(torch.randn(2, 3, 64, 64)).shape == (2, 10)


def test_ternary_option_puts_terlinear_in_the_blocks():
    model = qvit.create_model("ivit_micro", num_classes=10, ternary=True)
    assert isinstance(model.blocks[0].attn.qkv, qvit.modules.TerLinear)
    assert not isinstance(model.head, qvit.modules.TerLinear)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


# --- I-ViT parity options: drop path, Swin's absolute position embedding ------------------

def test_ivit_drop_path_samples_and_scales_as_described():
    """One torch.rand draw per sample (x's dtype), kept where floor(keep + u) == 1, kept
    samples divided by keep (I-ViT's arithmetic, not timm's multiply by a 1/keep mask)."""
    from qvit.blocks import IViTDropPath

    x = torch.randn(64, 5, 7)
    dp = IViTDropPath(0.3).train()
    torch.manual_seed(11)
    got = dp(x)
    torch.manual_seed(11)
    u = torch.rand(64, 1, 1)
    kept = torch.floor(0.7 + u)
    assert torch.equal(got, x.div(0.7) * kept)
    assert 0 < kept.sum() < 64
    assert torch.equal(dp.eval()(x), x)  # identity in eval
    assert not torch.equal(x.div(0.7), x * (1 / 0.7))  # the arithmetic matters


@pytest.mark.parametrize("name", MICRO)
def test_drop_path_implementation_is_a_model_option(name):
    from timm.layers import DropPath as TimmDropPath

    from qvit.blocks import IViTDropPath

    def kinds(m):
        return {type(mod) for mod in m.modules() if isinstance(mod, (IViTDropPath,
                                                                    TimmDropPath))}

    assert kinds(qvit.create_model(name, num_classes=10, drop_path_rate=0.1)) == {IViTDropPath}
    assert kinds(qvit.create_model(name, num_classes=10, drop_path_rate=0.1,
                                   drop_path_impl="timm")) == {TimmDropPath}
    with pytest.raises(ValueError, match="drop_path_impl must be one of"):
        qvit.create_model(name, num_classes=10, drop_path_impl="torch")


def test_swin_absolute_position_embedding_is_quantized_like_deit_pos_embed():
    model = qvit.create_model("swin_micro", num_classes=10, ape=True)
    assert model.absolute_pos_embed.shape == (1, model.patch_embed.num_patches, 48)
    assert 0.005 < model.absolute_pos_embed.std().item() < 0.03  # trunc_normal(std=.02)
    assert isinstance(model.q_pos, qvit.modules.QuantAct) and model.q_pos.activation_bit == 16
    assert "absolute_pos_embed" in model.state_dict() and "q_pos.max_val" in model.state_dict()
    assert "absolute_pos_embed" in model.no_weight_decay()  # as the float twin (with the
    # relative position bias tables, tests/qvit/test_timm.py)
    x, y = batch(1)
    torch.nn.functional.cross_entropy(model(x), y).backward()
    assert model.absolute_pos_embed.grad.abs().sum() > 0
    plain = qvit.create_model("swin_micro", num_classes=10)
    assert plain.absolute_pos_embed is None and "absolute_pos_embed" not in plain.state_dict()
