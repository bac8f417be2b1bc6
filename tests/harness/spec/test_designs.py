"""Designs generate the configs they should, from the one flag declaration; specs are
validated completely before anything runs."""

from pathlib import Path

import numpy as np
import pytest

from harness import cli
from harness import spec as ablate
from harness.spec import designs
from harness.sweep import runs as sweep_runs
from qvit import Flags

ROOT = Path(__file__).resolve().parents[3]
SPECS = sorted((ROOT / "ablations").glob("*.toml"))

RUN = {"models": ["ivit_micro"], "epochs": 2, "repeats": 3}
AA = ablate.AA_CONTROL


def spec(design, run=None, **top):
    """A spec without the A/A control (these tests look at the design's own configs)."""
    return ablate.parse_spec({"name": "t", "run": {**RUN, **(run or {})},
                              "design": {"aa_control": False, **design}, **top})


@pytest.mark.parametrize("path", SPECS, ids=[p.stem for p in SPECS])
def test_shipped_specs_load_and_plan(path):
    s = ablate.load_spec(path)
    configs = ablate.design_configs(s)
    assert configs[0].name == ablate.baseline_name(s, configs)
    # (the GPU specs: 3 blocks, sized to a short lent machine; docs/gpu.md)
    assert s.repeats >= (3 if s.name.startswith("gpu_") else 5)
    assert s.settings.epochs > s.settings.warmup_epochs >= 1
    assert configs[-1].name == AA and configs[-1].flags == configs[0].flags  # null control
    by_epochs = ablate.epoch_configs(s, configs)
    assert len(ablate.plan(s, configs)) == len(by_epochs) * len(s.models) * s.repeats
    if s.epochs_for == "loop_flags":  # module flags only by the steps method
        moved = [set(configs[0].flags.diff(c.flags)) for c in by_epochs[1:-1]]
        assert moved and all(m & set(Flags.names("loop")) for m in moved)
        assert {configs[0].name, AA} <= {c.name for c in by_epochs}
        inner = {c.config for x in sweep_runs.sessions_of(s, configs) for c in x.specs}
        assert inner >= {c.name for c in configs if c.flag in Flags.names("module")}
        assert not inner & {c.name for c in configs if c.flag in (
            "num_workers", "plot_every", "loss_item_per_step", "preload_to_device")}


def test_epochs_for_loop_flags_needs_no_steps_method_to_be_harmless():
    s = ablate.load_spec(ROOT / "ablations" / "one_at_a_time.toml").replace(methods=["epochs"])
    configs = ablate.design_configs(s)
    assert ablate.epoch_configs(s, configs) == configs  # without steps every config runs


def test_steps_method_alone_runs_no_whole_epochs():
    """methods = ["steps"] (ablations/speed_224.toml) times the step only: no epoch runs
    (they were planned, 50 of them, before the fix)."""
    s = ablate.load_spec(ROOT / "ablations" / "speed_224.toml")
    configs = ablate.design_configs(s)
    assert s.methods == ("steps",)
    assert ablate.epoch_configs(s, configs) == [] and ablate.plan(s, configs) == []
    assert len(sweep_runs.sessions_of(s, configs)) == len(s.models) * s.repeats


def test_timeline_stages_end_at_the_seed_preset():
    s = ablate.load_spec(ROOT / "ablations" / "seed_timeline.toml")
    configs = ablate.design_configs(s)
    assert [c.name for c in configs] == ["legacy", "stage1", "stage2", "stage3", "stage4", "seed",
                                         AA]
    configs = configs[:-1]
    assert configs[0].flags == Flags.preset("legacy")
    assert configs[-1].flags == Flags.preset("seed")
    # cumulative: each stage moves exactly the flags of its seed changes, to their seed value
    for prev, cur, changes in zip(configs, configs[1:], ablate.SEED_STAGES, strict=False):
        moved = prev.flags.diff(cur.flags)
        expect = {f.name for f in Flags.specs() if f.change in changes
                  and f.seed != f.legacy}
        assert set(moved) == expect
        assert all(getattr(cur.flags, n) == Flags.spec(n).seed for n in moved)
    stage1 = configs[1].flags.diff(configs[0].flags)
    assert set(stage1) == {"fp64_fixedpoint", "use_frexp", "num_workers"}
    # beyond-seed flags never move in the timeline
    for f in Flags.specs():
        if f.change is None:
            assert {getattr(c.flags, f.name) for c in configs} == {f.legacy}


def test_cuda_timeline_uses_the_seed_models():
    s = ablate.load_spec(ROOT / "ablations" / "seed_timeline_cuda.toml")
    assert s.models == ("deit_tiny_patch16_224", "swin_tiny_patch4_window7_224")
    assert s.settings.device == "cuda" and s.settings.img_size == 224


def test_one_at_a_time_moves_each_flag_alone():
    s = spec({"kind": "one_at_a_time"})
    configs = ablate.design_configs(s)
    legacy = Flags.preset("legacy")
    movable = [f.name for f in Flags.specs() if ablate.on_value(f.name) != f.legacy]
    skipped = ablate.not_run(s)
    assert len(configs) == 1 + len(movable) - len(skipped)
    assert configs[0].flags == legacy
    for c in configs[1:]:
        d = legacy.diff(c.flags)
        assert list(d) == [c.flag]
        assert d[c.flag][1] == ablate.on_value(c.flag)
    # seed flags move to their seed value, beyond-seed flags to their best value
    by_flag = {c.flag: c for c in configs[1:]}
    assert by_flag["layernorm_newton"].flags.layernorm_newton == "no_grad"
    assert by_flag["requant_impl"].flags.requant_impl == "lean"
    assert "compile_model" not in by_flag  # its on-value equals legacy: nothing to move


def test_one_at_a_time_subset_and_value_override():
    s = spec({"kind": "one_at_a_time", "flags": ["use_frexp", "compile_model"],
              "values": {"compile_model": True}})
    assert [c.name for c in ablate.design_configs(s)] == ["legacy", "+use_frexp",
                                                          "+compile_model"]


def test_leave_one_out_moves_each_flag_back_from_seed():
    s = spec({"kind": "leave_one_out"})
    configs = ablate.design_configs(s)
    seed = Flags.preset("seed")
    differs = [f.name for f in Flags.specs() if f.seed != f.legacy]
    skipped = ablate.not_run(s)
    assert configs[0].flags == seed and len(configs) == 1 + len(differs) - len(skipped)
    assert all(c.name not in skipped for c in configs)
    for c in configs[1:]:
        assert seed.diff(c.flags) == {c.flag: (Flags.spec(c.flag).seed,
                                               Flags.spec(c.flag).legacy)}


def test_factorial_is_every_combination():
    flags = ["cache_eval_weights", "cache_exp_x0", "cache_rel_pos_bias"]
    s = spec({"kind": "factorial", "base": "seed", "flags": flags,
              "levels": {f: [False, True] for f in flags}})
    configs = ablate.design_configs(s)
    assert len(configs) == 8
    assert len({c.flags for c in configs}) == 8
    assert configs[0].name == "f000" and all(v == -1 for v in configs[0].levels.values())
    for c in configs:
        for f in flags:
            assert getattr(c.flags, f) is (c.levels[f] > 0)
        # flags outside the factors stay at the base
        assert {k for k in Flags.preset("seed").diff(c.flags)} <= set(flags)


def _independent_flags() -> list[str]:
    """Flags that move from legacy and act in every two-level run with one another: none
    requires another or is overridden by another (those are nested factors, refused)."""
    overridden = {n for o in Flags.specs() for ov in o.overrides.values() for n in ov}
    overriding = {o.name for o in Flags.specs() if o.overrides}
    return [f.name for f in Flags.specs() if ablate.on_value(f.name) != f.legacy
            and not f.requires and f.name not in overridden | overriding]


@pytest.mark.parametrize("method", ["plackett_burman", "resolution_iv"])
@pytest.mark.parametrize("n_flags", [7, None])
def test_fractional_is_balanced_and_orthogonal(method, n_flags):
    import pyDOE3

    flags = _independent_flags()[:n_flags]
    assert len(flags) >= 7
    s = spec({"kind": "fractional", "method": method, "flags": flags})
    configs = [c for c in ablate.design_configs(s) if c.in_design]
    if method == "plackett_burman":
        assert len(configs) % 4 == 0 and len(flags) < len(configs) <= len(flags) + 12
    else:
        assert len(configs) == len(pyDOE3.fracfact_by_res(len(flags), 4))
    assert len(configs) < 2 ** len(flags)
    x = np.array([[c.levels[f] for f in flags] for c in configs])
    assert (x.sum(axis=0) == 0).all()  # each flag high in half the runs
    assert (x.T @ x == len(x) * np.eye(len(flags))).all()  # main effects orthogonal
    base = ablate.design_configs(s)[0]
    assert base.name == ablate.baseline_name(s, ablate.design_configs(s))
    assert base.flags == Flags.preset("legacy")


@pytest.mark.parametrize("k", [7, 23, 24])  # 24: pyDOE3 has no 28-run PB
def test_plackett_burman_matrix_is_balanced_and_orthogonal(k):
    import pyDOE3

    x = designs._plackett_burman(pyDOE3, k)
    assert x.shape[1] == k and len(x) % 4 == 0 and k < len(x) <= k + 12
    assert (x.sum(axis=0) == 0).all()
    assert (x.T @ x == len(x) * np.eye(k)).all()


def test_fractional_over_an_overridden_flag_is_refused():
    with pytest.raises(ValueError, match=r"'inline_ste' cannot act in run .*ste_impl=lean "
                                         r"overrides it"):
        spec({"kind": "fractional", "flags": ["ste_impl", "inline_ste", "use_frexp"]})


def test_explicit_configs_with_float_reference():
    s = spec({"kind": "configs", "baseline": "seed", "configs": [
        {"name": "seed", "flags": "seed"}, {"name": "best", "flags": "best"},
        {"name": "float", "flags": "best", "float_reference": True}]})
    configs = ablate.design_configs(s)
    assert [c.name for c in configs] == ["seed", "best", "float"]
    assert configs[2].float_reference and configs[1].flags == Flags.preset("best")


@pytest.mark.parametrize("mutate,match", [
    (lambda d: d["design"].update(flags=["use_frxp"]), "did you mean 'use_frexp'"),
    (lambda d: d["run"].update(models=["ivit_mikro"]), "did you mean 'ivit_micro'"),
    (lambda d: d["design"].update(kind="one_at_time"), "did you mean 'one_at_a_time'"),
    (lambda d: d["run"].update(epoch=3), "did you mean 'epochs'"),
    (lambda d: d.update(desing={}), "did you mean 'design'"),
    (lambda d: d["design"].update(values={"plot_every": "x"}), "integer"),
    (lambda d: d["design"].update(values={"layernorm_newton": "sqrt"}), "must be one of"),
    (lambda d: d["run"].update(epochs=1), "warmup_epochs"),
    (lambda d: d["run"].update(dataset="imagenet"), "not one of digits, cifar10"),
    (lambda d: d["run"].update(repeats="3"), "valid integer"),
    (lambda d: d["run"].update(repeats=1), "needs >= 2 blocks"),
    (lambda d: d["run"].update(lr="fast"), "valid number"),
    (lambda d: d["design"].update(kind="timeline", stages=[2, 3]), r"stages\.0: input should"),
    (lambda d: d["design"].update(kind="factorial", flags=[1, 2]), r"flags\.0: input should"),
    (lambda d: d["design"].update(kind="configs", configs=[{"name": "a", "flag": "seed"}]),
     "unknown key 'flag' in spec.design.configs.0 \\(did you mean 'flags'\\?\\)"),
    (lambda d: d["design"].update(baseline="nope"), "baseline config"),
    (lambda d: d["design"].update(kind="timeline", stages=[[2, 3], [1]],
                                  stage_names=["a", "b"]), "seed change 1"),
    (lambda d: d["design"].update(kind="timeline", stage_names=["a"]), "5 stages but 1"),
])
def test_bad_specs_are_refused_with_the_closest_match(mutate, match):
    data = {"name": "t", "run": dict(RUN), "design": {"kind": "one_at_a_time"}}
    mutate(data)
    with pytest.raises(ValueError, match=match):
        ablate.parse_spec(data)


def test_factorial_flag_with_one_level_is_refused():
    with pytest.raises(ValueError, match="one level only"):
        spec({"kind": "factorial", "base": "legacy", "flags": ["compile_model", "use_frexp"]})


def test_errors_are_one_line_each():
    data = {"name": "t", "run": {**RUN, "epoch": 3}, "design": {"kind": "timeline",
                                                              "stages": [2, 3]}}
    with pytest.raises(ValueError) as e:
        ablate.parse_spec(data)
    assert "\n" not in str(e.value)


def test_cli_overrides_and_dry_run(tmp_path, capsys):
    path = ROOT / "ablations" / "seed_timeline.toml"
    rc = cli.main(["ablate", str(path), "--dry-run", "--repeats", "4", "--models", "ivit_micro",
                   "--epochs", "3", "--device", "cpu", "--no-pretrained"])
    out = capsys.readouterr().out
    assert rc == 0 and "7 (model, config) runs per block x 4 blocks = 28 runs" in out
    assert "pretrained start off" in out
    assert out.count("  block ") == 4
    rc = cli.main(["ablate", str(path), "--dry-run", "--models", "nope"])
    assert rc == 2 and "unknown model 'nope'" in capsys.readouterr().err
    rc = cli.main(["ablate", str(path), "--dry-run", "--epochs", "0"])
    assert rc == 2 and "epochs" in capsys.readouterr().err


def test_every_run_setting_is_an_option_of_both_commands():
    from harness.spec.settings import RunSettings

    run_opts = {a.dest for a in cli.run_parser()._actions}
    ablate_opts = {a.dest for a in cli.ablate_parser()._actions}
    for name in RunSettings.model_fields:
        assert name in run_opts
        assert name in ablate_opts or name == "model"


def test_leave_one_out_from_best_times_only_moves_that_act():
    """A flag that cannot act under `best` (overridden by another choice, CUDA-only on a CPU
    spec, Swin-only on a ViT, needing another flag) is not timed but listed with why."""
    s = ablate.load_spec(ROOT / "ablations" / "leave_one_out_best.toml")
    configs = ablate.design_configs(s)
    skipped = ablate.not_run(s)
    names = {c.name for c in configs}
    assert set(skipped) == {"-inline_ste", "-layernorm_newton", "-cache_rel_pos_bias",
                            "-cuda_synchronize_per_step", "-num_workers"}
    assert not names & set(skipped)
    assert "ste_impl=lean overrides it" in skipped["-inline_ste"]
    assert "CUDA only" in skipped["-cuda_synchronize_per_step"]
    assert "swin models only" in skipped["-cache_rel_pos_bias"]
    assert "needs preload_to_device=false" in skipped["-num_workers"]
    # every config that is run differs from the base in what it runs
    from qvit.paths import why_same
    base = configs[0].flags
    for c in configs[1:]:
        if c.name != AA:
            assert why_same(base, c.flags, device_type="cpu", family="vit") is None, c.name
    # on a Swin as well, the bias cache's move acts and is timed
    swin = s.replace(models=("ivit_micro", "swin_micro"))
    assert "-cache_rel_pos_bias" not in ablate.not_run(swin)
    assert "-cache_rel_pos_bias" in {c.name for c in ablate.design_configs(swin)}


def test_factorial_over_nested_factors_is_refused_in_one_line():
    with pytest.raises(ValueError, match=r"'cache_exp_x0' cannot act in run .*needs "
                                         r"cache_eval_act_scale=true") as e:
        spec({"kind": "factorial", "base": "seed",
              "flags": ["cache_eval_act_scale", "cache_exp_x0"],
              "levels": {"cache_eval_act_scale": [False, True],
                         "cache_exp_x0": [False, True]}})
    assert "\n" not in str(e.value)
