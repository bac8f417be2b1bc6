"""harness.parity: every flag against its declared parity class on the micro models, the
int64 deployment reference, the classification rules, accuracy parity (harness.analysis.equivalence:
exact / TOST over harness runs), and proof that the checks bite: naive versions of the seed's
caches 10 and 12 and a requantization that drops a rounding step are all caught.

Models run at their smallest img_size (16 for ivit_micro, 32 for swin_micro) with batch 2
and one torch thread: the same code paths as the reference reports at a fraction of the
time."""

import math

import numpy as np
import pandas as pd
import pytest
import torch

from harness import parity as H
from harness.analysis import equivalence as E
from qvit import Flags
from qvit import modules as M
from qvit.ops import int_exp as X
from qvit.ops import requant as R

MICRO = ("ivit_micro", "swin_micro")
LEGACY = Flags.preset("legacy")
MODULE_CASES = [(s.name, v) for s in Flags.specs("module") for v in s.values() if v != s.legacy]



# the smallest input each micro model takes (Swin: patches of 4, 4x4 windows, one merge)
SMALLEST = {"ivit_micro": 16, "swin_micro": 32}

@pytest.fixture(scope="module", autouse=True)
def one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def baselines(one_thread):
    return {m: H.prepare_baseline(H.ParityConfig(model=m, img_size=SMALLEST[m], batch=2,
                                                 steps=3))
            for m in MICRO}


# --- every module flag, as declared -------------------------------------------------------

@pytest.mark.parametrize("model", MICRO)
@pytest.mark.parametrize("flag, value", MODULE_CASES, ids=[f"{n}={v}" for n, v in MODULE_CASES])
def test_module_flag_satisfies_declaration(baselines, model, flag, value):
    row = H.measure_flag(baselines[model], flag, value)
    assert row["expected_class"] == Flags.spec(flag).expected_parity(value)
    assert row["match"] != "MISMATCH", (
        f"{model} {flag}={value}: measured {row['measured_class']}, declared "
        f"{row['expected_class']}: {row}")
    # the legacy base is the integer-only deployment, bit for bit
    assert row["deployment_frac_differ_base"] == 0.0
    assert row["k_steps"] == 3 and row["forward_elements"] > 0
    if row["measured_class"] == "exact":
        assert row["params_equal_after_k"] and row["grads_equal"]
        assert row["forward_max_steps"] == 0 and row["logits_frac_differ"] == 0
        assert row["deployment_frac_differ"] == 0.0


def test_seed_float_shortcut_differs_from_deployment_on_a_small_fraction(baselines):
    row = H.measure_flag(baselines["ivit_micro"], "fp64_fixedpoint", False)
    assert row["measured_class"] == "near-exact"
    assert 0 < row["deployment_frac_differ"] < 1e-3
    assert row["deployment_max_steps"] == 1.0
    assert 0 < row["forward_frac_differ"] <= 1e-3 and row["forward_max_steps"] == 1.0


def test_layernorm_no_grad_keeps_forward_and_changes_gradients(baselines):
    row = H.measure_flag(baselines["ivit_micro"], "layernorm_newton", "no_grad")
    assert row["measured_class"] == "forward-exact-gradient-differs"
    assert row["forward_frac_differ"] == 0 and row["e2e_frac_differ"] == 0
    assert row["grad_rel_diff"] > 1e-3 and row["input_grad_rel_diff"] > 1e-3
    row = H.measure_flag(baselines["ivit_micro"], "layernorm_newton", "no_grad_sqrt_grad")
    assert row["measured_class"] == "exact" and row["grad_rel_diff"] == 0.0


# --- proof that the checks bite -------------------------------------------------------------

def _naive_cache10(orig):
    """The seed's change 10: eval reuses the integer weights of the last *training* forward,
    which the optimizer has stepped past since (one step stale)."""

    def quantized_weight(self):
        if not self.flags.cache_eval_weights:
            return orig(self)
        if not self.training and getattr(self, "_naive_w", None) is not None:
            return self._naive_w
        with torch.no_grad():
            scale = self._weight_scale(self.weight)
        w_int = self._quantize_weight(self.weight, scale)
        if self.training:
            self._naive_w = (w_int.detach(), scale)
        return w_int, scale

    return quantized_weight


def _naive_x0(self, scaling_factor):
    """The seed's change 12: x0 cached in eval and never invalidated in training."""
    if self.flags.cache_exp_x0 and not self.training:
        if getattr(self, "_naive_x0", None) is None:
            self._naive_x0 = X.exp_x0_int(scaling_factor)
        return self._naive_x0
    return X.exp_x0_int(scaling_factor)


@pytest.mark.parametrize("model", MICRO)
def test_naive_cache10_is_caught(baselines, model, monkeypatch):
    # the baseline (legacy, no cache) is already computed: only the toggled model is naive
    monkeypatch.setattr(M._QuantWeightMixin, "quantized_weight",
                        _naive_cache10(M._QuantWeightMixin.quantized_weight))
    row = H.measure_flag(baselines[model], "cache_eval_weights", True)
    assert row["measured_class"] == "differs" and row["match"] == "MISMATCH"
    assert row["params_equal_after_k"] and row["grads_equal"]  # training is untouched ...
    assert "stale eval cache" in row["note"]  # ... only evals after a step differ


@pytest.mark.parametrize("model", MICRO)
def test_naive_cache12_is_caught(baselines, model, monkeypatch):
    monkeypatch.setattr(M._IntExpModule, "_x0", _naive_x0)
    row = H.measure_flag(baselines[model], "cache_exp_x0", True)
    assert row["measured_class"] != "exact" and row["match"] == "MISMATCH"
    assert row["params_equal_after_k"] and "stale eval cache" in row["note"]


def test_requantization_without_final_rounding_is_caught(baselines, monkeypatch):
    """The float32 requantization path with its final round() dropped."""
    orig = R._requantize_int

    def no_round(z_int, in_scale, out_scale, *, fp64, use_frexp, frexp, **kw):
        if fp64:
            return orig(z_int, in_scale, out_scale, fp64=fp64, use_frexp=use_frexp,
                        frexp=frexp, **kw)
        new_scale = in_scale.float() / out_scale.float()
        if not use_frexp:
            return z_int.float() * new_scale
        m, e = R.FREXP[frexp](new_scale)
        return z_int.float() * m.float() / (2.0 ** e).float()

    monkeypatch.setattr(R, "_requantize_int", no_round)
    row = H.measure_flag(baselines["ivit_micro"], "fp64_fixedpoint", False)
    assert row["measured_class"] == "differs" and row["match"] == "MISMATCH"
    assert row["deployment_frac_differ"] > 1e-2


def test_requantization_without_input_rounding_is_caught(baselines, monkeypatch):
    """The device-frexp path with round(pre_act / scale) dropped: subtle (a fraction of a
    percent of elements move by one step) but not the bit-exact path it is declared to be,
    and off the integer-only deployment."""
    orig = R.fixedpoint_mul

    def fixedpoint_mul(pre_act, pre_act_scale, num_bits, z_scale, identity=None,
                       identity_scale=None, *, fp64, use_frexp, frexp="device", fused=False,
                       **rest):
        kw = dict(fp64=fp64, use_frexp=use_frexp, frexp=frexp, fused=fused)
        if frexp != "device":
            return orig(pre_act, pre_act_scale, num_bits, z_scale, identity, identity_scale,
                        **kw, **rest)
        shape = R.act_scale_shape(pre_act)
        n = 2 ** (num_bits - 1) - 1
        with torch.no_grad():
            s = pre_act_scale.view(shape)
            out = R._requantize_int(pre_act / s, s, z_scale, **kw)  # no torch.round
            if identity is not None:
                si = identity_scale.view(shape)
                out = R._requantize_int(identity / si, si, z_scale, **kw) + out
            out = torch.clamp(out.float(), -n - 1, n)
        zs = z_scale.detach()
        sur = pre_act / zs if identity is None else pre_act / zs + identity / zs
        return sur + (out - sur).detach()

    monkeypatch.setattr(R, "fixedpoint_mul", fixedpoint_mul)
    row = H.measure_flag(baselines["ivit_micro"], "requant_impl", "device_frexp")
    assert row["measured_class"] != "exact" and row["match"] == "MISMATCH"
    assert row["deployment_frac_differ"] > 0


# --- the int64 deployment reference ----------------------------------------------------------

@pytest.mark.parametrize("bits, residual", [(8, False), (16, True)])
def test_deployment_reference_is_the_legacy_requantization(bits, residual):
    g = torch.Generator().manual_seed(1)
    c = 48
    pre_scale = torch.rand(c, generator=g) * 1e-4 + 1e-6
    x = torch.randint(-2**20, 2**20, (16, 20, c), generator=g).float() * pre_scale
    out_scale = torch.tensor([0.013])
    ident = id_scale = None
    if residual:
        id_scale = torch.tensor([0.0021])
        ident = torch.randint(-2**15, 2**15, (16, 20, c), generator=g).float() * id_scale
    ref = H.deployment_reference(x, pre_scale, out_scale, bits, ident, id_scale)

    def path(**kw):
        return R.fixedpoint_mul(x, pre_scale, bits, out_scale, ident, id_scale, **kw)

    legacy = path(fp64=True, use_frexp=True, frexp="host")
    assert torch.equal(legacy.to(torch.int64), ref)
    assert torch.equal(path(fp64=True, use_frexp=True, frexp="device"), legacy)
    seed = path(fp64=False, use_frexp=False)
    frac = (seed.to(torch.int64) != ref).float().mean().item()
    assert frac < 1e-2 and (seed.to(torch.int64) - ref).abs().max() <= 1


def test_recorder_reads_requantized_integers():
    torch.manual_seed(0)
    import qvit

    m = qvit.create_model("ivit_micro", num_classes=10, img_size=16, flags=LEGACY)
    m.train()
    m(torch.randn(2, 3, 16, 16))
    m.eval()
    rec = H.ActivationRecorder(m)
    rec.reset(check_deployment=True)
    with torch.no_grad():
        logits = m(torch.randn(2, 3, 16, 16))
    rec.remove()
    assert torch.equal(rec.records[("logits", 0)][0], logits)
    q, s = rec.records[("blocks.0.q_res2", 0)]
    ints = q / s  # integers up to float32 rounding of q * s / s
    assert (ints - torch.round(ints)).abs().max() < 1e-2 and ints.abs().max() <= 2**15
    assert rec.deploy.n > 0 and rec.deploy.n_differ == 0


# --- classification rules --------------------------------------------------------------------

def _m(**kw):
    base = dict(forward_frac_differ=0.0, forward_max_steps=0.0, e2e_frac_differ=0.0,
                grads_equal=True, grad_rel_diff=0.0, input_grad_rel_diff=0.0,
                params_equal_after_k=True, params_rel_diff=0.0)
    base.update(kw)
    return base


def test_classify():
    assert H.classify(_m(), None) == "exact"
    nograd = _m(grads_equal=False, grad_rel_diff=0.07, params_equal_after_k=False,
                params_rel_diff=1e-4)
    bound = Flags.spec("layernorm_newton").bound
    assert H.classify(nograd, bound) == "forward-exact-gradient-differs"
    assert H.classify({**nograd, "grad_rel_diff": 1e-7, "input_grad_rel_diff": 1e-7},
                      bound) == "near-exact"
    lsb = _m(forward_frac_differ=1e-5, forward_max_steps=1.0, e2e_frac_differ=1e-3,
             grads_equal=False, grad_rel_diff=1e-6, params_equal_after_k=False)
    fp64 = Flags.spec("fp64_fixedpoint").bound
    assert H.classify(lsb, fp64) == "near-exact"
    assert H.classify({**lsb, "forward_max_steps": 2.0}, fp64) == "differs"
    assert H.classify({**lsb, "forward_frac_differ": 0.01}, fp64) == "differs"
    stale = _m(forward_frac_differ=0.2, forward_max_steps=40.0)
    assert H.classify(stale, None) == "differs"
    assert H.classify(_m(params_equal_after_k=False, params_rel_diff=1e-3), None) == "differs"


def test_satisfies_and_pair_expectation():
    assert H.satisfies("exact", "near-exact") and H.satisfies("exact", "statistical")
    assert not H.satisfies("near-exact", "exact")
    assert not H.satisfies("forward-exact-gradient-differs", "near-exact")
    assert not H.satisfies("differs", "statistical") and H.satisfies("differs", "differs")
    assert H.pair_expectation("use_frexp", True, False) == "near-exact"
    assert H.pair_expectation("use_frexp", False, True) == "near-exact"
    assert H.pair_expectation("inline_ste", True, False) == "exact"
    assert H.pair_expectation("layernorm_newton", "no_grad_sqrt_grad",
                              "no_grad") == "forward-exact-gradient-differs"


def test_toggles_from_best_satisfy_declarations():
    """From the best preset, moving the LayerNorm flag between its two non-legacy values."""
    b = H.prepare_baseline(H.ParityConfig(model="ivit_micro", base="best", img_size=16,
                                          batch=2, steps=2))
    row = H.measure_flag(b, "layernorm_newton", "no_grad")
    assert row["from_value"] == "no_grad_sqrt_grad" and row["match"] == "ok"
    assert row["measured_class"] == "forward-exact-gradient-differs"
    assert H.measure_flag(b, "fp64_fixedpoint", False)["match"] != "MISMATCH"


def test_preset_pair_toggles_only_differing_flags():
    legacy, seed = Flags.preset("legacy"), Flags.preset("seed")
    got = dict(H.toggles(legacy, "module", None, seed))
    inert = dict(H.toggles(legacy, "module", None, seed, acting=False))
    # the x0 and bias caches need cache_eval_act_scale, which legacy lacks: not toggled alone
    assert set(inert) == {"cache_exp_x0", "cache_rel_pos_bias"}
    assert {**got, **inert} == {n: v[1] for n, v in legacy.diff(seed).items()
                                if Flags.spec(n).scope == "module"}
    assert ("layernorm_newton", "no_grad_sqrt_grad") in H.toggles(legacy, "module", None, None)


# --- accuracy parity ---------------------------------------------------------------------------

def _table(values: dict[str, list[float]], **flags_per_config) -> pd.DataFrame:
    rows = []
    for cfg, vals in values.items():
        for seed, v in enumerate(vals):
            for epoch in (0, 1):
                rows.append(dict(config=cfg, model="m", seed=seed, repeat=seed, epoch=epoch,
                                 top1=v if epoch else 0.0, eval_loss=1.0 - v,
                                 train_loss=1.0, status="ok",
                                 **flags_per_config.get(cfg, {})))
    return pd.DataFrame(rows)


def test_tost_equivalence_and_exactness():
    t = _table({"a": [0.80, 0.82, 0.79, 0.81, 0.80], "b": [0.805, 0.815, 0.795, 0.80, 0.81],
                "c": [0.70, 0.73, 0.69, 0.72, 0.70], "d": [0.80, 0.82, 0.79, 0.81, 0.80]})
    r = E.assert_accuracy_parity(t, "a", "b", margin=0.02, exact=False)
    assert r.method == "tost-paired" and r.p_value < 0.05 and r.ci[0] > -0.02
    with pytest.raises(AssertionError, match="not shown equivalent"):
        E.assert_accuracy_parity(t, "a", "c", margin=0.02, exact=False)
    # too few seeds to show equivalence is a failure, not a pass
    few = _table({"a": [0.8, 0.9], "b": [0.85, 0.8]})
    assert not E.accuracy_parity(few, "a", "b", margin=0.02, exact=False).equivalent
    assert E.assert_accuracy_parity(t, "a", "d", exact=True).method == "exact"
    with pytest.raises(AssertionError, match="not identical"):
        E.assert_accuracy_parity(t, "a", "b", exact=True)
    with pytest.raises(ValueError, match="margin"):  # no default margin but for top-1/top-5
        E.accuracy_parity(t, "a", "b", metric="eval_loss", exact=False)
    with pytest.raises(ValueError, match="no runs"):
        E.accuracy_parity(t, "a", "zzz", margin=0.1)


def test_tost_unpaired_and_auto_exact():
    t = _table({"a": [0.80, 0.82, 0.79], "b": [0.81, 0.80, 0.80]},
               a={"inline_ste": False, "use_frexp": True},
               b={"inline_ste": True, "use_frexp": True})
    with pytest.raises(AssertionError, match="not identical"):  # inline_ste is declared exact
        E.assert_accuracy_parity(t, "a", "b")
    t2 = t.copy()
    t2.loc[t2["config"] == "b", "seed"] += 10  # no shared seeds: Welch
    t2.loc[t2["config"] == "b", "use_frexp"] = False
    r = E.accuracy_parity(t2, "a", "b", margin=0.05)
    assert r.method == "tost-unpaired" and r.equivalent
    p, (lo, hi) = E.tost_paired(np.array([0.0, 0.0, 0.0]), 0.01)
    assert p == 0.0 and lo == hi == 0.0


def test_accuracy_parity_every_module_flag(one_thread, tmp_path):
    """Every module flag of ivit_micro (harness runs on digits, a few AdamW steps, 5 seeds
    where training is not bit-identical): exact identity where the declared class is exact,
    TOST otherwise. No DataLoader workers: every config shares the loop flags, and worker
    processes would only cost time."""
    base = LEGACY.replace(num_workers=0)
    exact = {f"{n}={v}": base.replace(**{n: v}) for n, v in MODULE_CASES
             if Flags.spec(n).expected_parity(v) == "exact"}
    inexact = {f"{n}={v}": base.replace(**{n: v}) for n, v in MODULE_CASES
               if f"{n}={v}" not in exact}
    kw = dict(img_size=32, steps=3, batch=16, eval_steps=6, eval_batch=16)  # 96 eval images
    t1 = H.run_harness("ivit_micro", {"legacy": base, **exact}, tmp_path / "exact", **kw)
    t3 = H.run_harness("ivit_micro", {"legacy": base, **inexact}, tmp_path / "tost",
                       seeds=range(5), **kw)
    for cfg in exact:
        r = E.assert_accuracy_parity(t1, cfg, "legacy")  # auto: exact
        assert r.method == "exact"
    for cfg in inexact:  # margin: two of the 96 eval images (0.1 points was below one image)
        r = E.assert_accuracy_parity(t3, cfg, "legacy", margin=2.1, exact=False)
        assert r.method == "tost-paired"


# --- loop flags through the harness runner, and the CLI -----------------------------------------

def test_loop_flags_and_their_accuracy_parity(tmp_path, one_thread):
    toggles = [(n, v) for n, v in H.toggles(LEGACY, "loop", None, None)
               if n != "compile_model"]
    rows = H.loop_parity_rows("ivit_micro", LEGACY, toggles, img_size=16, steps=2, batch=8,
                              out_dir=tmp_path, log=None)
    by = {r["flag"]: r for r in rows}
    assert set(by) == {n for n, _ in toggles}
    for r in rows:
        assert r["match"] != "MISMATCH", r
    from harness import records

    table = records.read_table(tmp_path)
    for n, v in toggles:
        exact = by[n]["measured_class"] == "exact"
        if exact:
            E.assert_accuracy_parity(table, f"{n}={v}", "base", exact=True)
            if n != "loss_item_per_step":  # flag 9 changes how the epoch mean is summed
                E.assert_accuracy_parity(table, f"{n}={v}", "base", exact=True,
                                         losses=("eval_loss", "train_loss"))
        assert by[n]["measured_class"] in ("exact", "near-exact", "statistical")


def test_compile_model_is_measured_on_cpu(monkeypatch):
    """compile_model's parity comes from a compiled harness run on the CPU too (block by
    block, as the flags say; dynamo's eager backend here, for the seconds: the bits of
    qvit_inductor are tests/qvit/test_compile.py's)."""
    from harness.run import loop

    compile_model, scopes = loop.compile_model, []

    def eager_backend(model, backend, *, scope, cuda_graphs):
        scopes.append(scope)
        return compile_model(model, "eager", scope=scope, cuda_graphs=cuda_graphs)

    monkeypatch.setattr(loop, "compile_model", eager_backend)
    rows = H.loop_parity_rows("ivit_micro", Flags.preset("best"), [("compile_model", True)],
                              img_size=16, steps=2, log=None)
    assert scopes == ["block"]
    assert rows[0]["measured_class"] == "exact", rows[0]
    assert rows[0]["match"] != "MISMATCH"


def test_cli_writes_table_and_fails_loudly_on_mismatch(tmp_path, monkeypatch, capsys):
    args = ["--model", "ivit_micro", "--out", str(tmp_path), "--img-size", "16",
            "--batch", "2", "--steps", "2", "--no-loop",
            "--flags", "cache_eval_weights,inline_ste"]
    assert H.main(args) == 0
    df = pd.read_csv(tmp_path / "parity.csv")
    need = {"flag", "from_value", "to_value", "measured_class", "expected_class",
            "forward_max_steps", "forward_frac_differ", "grad_rel_diff",
            "params_equal_after_k", "deployment_frac_differ"}
    assert need <= set(df.columns) and list(df["flag"]) == ["cache_eval_weights", "inline_ste"]
    assert "cache_eval_weights" in capsys.readouterr().out
    monkeypatch.setattr(M._QuantWeightMixin, "quantized_weight",
                        _naive_cache10(M._QuantWeightMixin.quantized_weight))
    assert H.main(args) == 1
    assert "PARITY MISMATCH" in capsys.readouterr().err
    df = pd.read_csv(tmp_path / "parity.csv")
    assert df.set_index("flag").loc["cache_eval_weights", "match"] == "MISMATCH"
    assert not math.isnan(df.set_index("flag").loc["cache_eval_weights", "forward_max_steps"])


def test_cli_refuses_bad_settings_in_one_line_before_measuring(tmp_path, capsys):
    """The options come from ParityConfig: a validator's own message, one line, exit 2."""
    for argv, says in ((["--steps", "1"], "steps: steps must be >= 2: the naive caches"),
                       (["--batch", "0"], "batch: input should be greater than or equal to 1"),
                       (["--flags", "cache_eval_weight"], "cache_eval_weights")):
        with pytest.raises(SystemExit) as e:
            H.main(["--out", str(tmp_path), *argv])
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert e.value.code == 2 and says in err, err
    assert not (tmp_path / "parity.csv").exists()
