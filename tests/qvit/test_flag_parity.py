"""Every module flag against its declared parity class, on calibrated micro models, through
train -> eval -> train -> eval cycles (where the seed's naive caches 10 and 12 fail)."""

import pytest
import torch

from qvit import Flags

from ._util import MICRO, batch, grads_rel_diff, model_from, rel_l2, trajectory

LEGACY = Flags.preset("legacy")
CASES = [(s.name, v) for s in Flags.specs("module") for v in s.values() if v != s.legacy]


@pytest.fixture(scope="module")
def legacy_runs():
    return {name: trajectory(name, LEGACY) for name in MICRO}


def _all_equal(xs, ys):
    return all(torch.equal(a, b) for a, b in zip(xs, ys, strict=True))


@pytest.mark.parametrize("model_name", MICRO)
@pytest.mark.parametrize("flag, value", CASES, ids=[f"{n}={v}" for n, v in CASES])
def test_flag_matches_its_declared_parity(legacy_runs, model_name, flag, value):
    ref = legacy_runs[model_name]
    # cache flags are judged through train -> eval -> train -> eval cycles
    got = trajectory(model_name, LEGACY.replace(**{flag: value}),
                     cycles=2 if flag.startswith("cache_") else 1)
    spec = Flags.spec(flag)
    expected = spec.expected_parity(value)
    forward_equal = torch.equal(got["logits"][0], ref["logits"][0])
    grad_diff = max(rel_l2(got["input_grad"], ref["input_grad"]),
                    grads_rel_diff(got["param_grads"], ref["param_grads"]))
    if expected == "exact":
        n = len(got["logits"])
        assert _all_equal(got["logits"], ref["logits"][:n]), "eval logits differ"
        assert torch.equal(got["input_grad"], ref["input_grad"])
        assert all(torch.equal(got["param_grads"][k], g) for k, g in ref["param_grads"].items())
        if n == len(ref["logits"]):
            assert all(torch.equal(got["state"][k], v) for k, v in ref["state"].items()), \
                "parameters or ranges differ after training steps"
    elif expected == "forward-exact-gradient-differs":
        assert forward_equal
        assert grad_diff > 1e-3, f"gradient unexpectedly unchanged ({grad_diff:.2e})"
    elif expected == "near-exact":
        bound = spec.bound or {}
        if "grad_rel_diff" in bound:
            assert forward_equal
            assert grad_diff < bound["grad_rel_diff"], f"gradient rel diff {grad_diff:.2e}"
        else:  # requantization rounding: logits move by a few quantization steps at most
            assert rel_l2(got["logits"][0], ref["logits"][0]) < 0.05
    else:
        pytest.fail(f"no check for class {expected}")


@pytest.mark.parametrize("model_name", MICRO)
def test_best_eval_logits_bit_identical_to_legacy(model_name):
    x, _ = batch(11, 16)
    outs = {}
    for preset in ("legacy", "best"):
        m = model_from(model_name, Flags.preset(preset)).eval()
        with torch.no_grad():
            outs[preset] = m(x)
    assert torch.equal(outs["best"], outs["legacy"])


@pytest.mark.parametrize("model_name", MICRO)
def test_seed_shortcut_is_not_bit_exact(model_name):
    """The float32 shortcut moves logits (the reason `best` exists); if this ever passes as
    equal, the parity checks above have lost their power."""
    x, _ = batch(11, 32)
    outs = []
    for preset in ("legacy", "seed"):
        m = model_from(model_name, Flags.preset(preset)).eval()
        with torch.no_grad():
            outs.append(m(x))
    assert not torch.equal(outs[0], outs[1])


@pytest.mark.parametrize("model_name", MICRO)
def test_layernorm_sqrt_grad_keeps_legacy_gradient_and_no_grad_does_not(model_name):
    ref = trajectory(model_name, LEGACY, cycles=1)
    diffs = {}
    for mode in ("no_grad", "no_grad_sqrt_grad"):
        got = trajectory(model_name, LEGACY.replace(layernorm_newton=mode), cycles=1)
        diffs[mode] = rel_l2(got["input_grad"], ref["input_grad"])
    assert diffs["no_grad_sqrt_grad"] < 1e-5 < 1e-3 < diffs["no_grad"], diffs
