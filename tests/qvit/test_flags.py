"""The one declaration of every flag: metadata, presets, parsing, errors."""

import dataclasses

import pytest

from qvit import PARITY_CLASSES, Flags

FLAGS_MD_NAMES = {  # the public names of FLAGS.md (issue 2's frexp_on_device: RENAMED)
    "fp64_fixedpoint", "use_frexp", "inline_ste", "layernorm_newton",
    "global_act_minmax", "reuse_constant_tensors", "cache_eval_weights", "cache_eval_act_scale",
    "cache_exp_x0", "cache_rel_pos_bias", "eps_constant", "cuda_synchronize_per_step",
    "loss_item_per_step", "grad_scaler_without_autocast", "plot_every", "num_workers"}


def test_every_public_flag_is_declared_with_metadata():
    names = set(Flags.names())
    assert FLAGS_MD_NAMES <= names
    for spec in Flags.specs():
        assert spec.scope in ("module", "loop")
        assert spec.help and spec.type in (bool, int, str)
        for v in spec.values():
            assert spec.expected_parity(v) in PARITY_CLASSES
        if spec.change is not None:
            assert spec.seed != spec.legacy


def test_presets_take_declared_values():
    for preset in ("legacy", "seed", "best", "fastest"):
        f = Flags.preset(preset)
        for spec in Flags.specs():
            assert getattr(f, spec.name) == getattr(spec, preset)
    assert Flags() == Flags.preset("best")
    assert Flags.preset("legacy").use_frexp and not Flags.preset("seed").use_frexp


def test_fastest_is_best_compiled_block_by_block():
    """The fast exact path: best's flags, compiled by block (CUDA graphs where there is
    CUDA); every flag it moves from best keeps the numbers."""
    fastest = Flags.parse("fastest")
    moved = fastest.diff(Flags.preset("best"))
    assert set(moved) == {"compile_model", "compile_cuda_graphs"}
    assert fastest.compile_scope == "block"
    assert all(Flags.spec(n).expected_parity(v) == "exact" for n, (v, _) in moved.items())
    assert Flags.parse("fastest,compile_scope=model").describe() == \
        "fastest,compile_scope=model"
    with pytest.raises(ValueError, match="compile_scope needs compile_model=true"):
        Flags.parse("best,compile_scope=model")


def test_flags_are_frozen_and_hashable():
    f = Flags.preset("seed")
    with pytest.raises(dataclasses.FrozenInstanceError):
        f.use_frexp = True
    assert hash(f) == hash(Flags.preset("seed"))
    assert f.digest() == Flags.preset("seed").digest() != Flags.preset("legacy").digest()


def test_parse_preset_then_overrides():
    f = Flags.parse("seed,use_frexp=true,plot_every=1,layernorm_newton=ste")
    assert f.use_frexp is True and f.plot_every == 1 and f.layernorm_newton == "ste"
    assert f.inline_ste is True  # untouched seed value
    assert Flags.parse(f.describe()) == f
    assert Flags.parse("use_frexp=0") == Flags().replace(use_frexp=False)
    assert Flags.parse(None) == Flags()


@pytest.mark.parametrize("text, match", [
    ("seed,use_frexpp=true", "did you mean 'use_frexp'"),
    ("sed", "did you mean 'seed'"),
    ("seed,use_frexp=yes", "true/false"),
    ("seed,plot_every=often", "integer"),
    ("seed,layernorm_newton=nograd", "did you mean 'no_grad'"),
    ("seed,legacy", "preset may only come first"),
    ("seed,plot_every=0", ">= 1"),
])
def test_bad_flag_text_names_the_valid_choices(text, match):
    with pytest.raises(ValueError, match=match):
        Flags.parse(text)


def test_type_checks_on_construction():
    with pytest.raises(ValueError, match="True or False"):
        Flags(use_frexp="false")
    with pytest.raises(ValueError, match="int"):
        Flags(num_workers=True)


def test_diff_and_describe():
    legacy, seed = Flags.preset("legacy"), Flags.preset("seed")
    d = legacy.diff(seed)
    assert d["use_frexp"] == (True, False) and "requant_impl" not in d
    assert seed.describe() == "seed"
    assert "use_frexp=true" in seed.replace(use_frexp=True).describe()
