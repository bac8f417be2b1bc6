"""One run in this process: the loop flags' paths, sync counts legacy vs seed, statuses of
failed runs, determinism, the device refused before any run."""

import json
import sys
from pathlib import Path

import pytest
import torch

from harness.run import runner
from harness.run.loop import FaultInjector
from harness.run.runner import FAULT_ENV, RunSpec, check_specs, execute_run
from harness.spec.settings import RunSettings
from qvit import Flags

TINY = "harness_tiny:tiny_cnn"  # tests/harness/harness_tiny.py
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # harness_tiny.py
BASE = dict(epochs=2, steps_per_epoch=3, eval_steps=2, batch_size=8, device="cpu",
            pretrained=False)


@pytest.fixture(autouse=True)
def _restore_torch_state():
    """execute_run sets the process's torch state as a run asks (deterministic algorithms
    off unless asked, threads): put back the test session's (tests/conftest.py)."""
    import torch

    det = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    threads = torch.get_num_threads()
    yield
    torch.use_deterministic_algorithms(det, warn_only=warn_only)
    torch.set_num_threads(threads)


def _spec(flags="best", model=TINY, **kw):
    config = kw.pop("config", "c")
    f = Flags.parse(flags) if isinstance(flags, str) else flags
    return RunSpec(config=config, flags=f.replace(num_workers=0)
                   if "num_workers" not in str(flags) else f,
                   settings=RunSettings(model=model, **{**BASE, **kw}))


def test_rows_per_epoch_and_warmup(tmp_path):
    df = execute_run(_spec(epochs=3), tmp_path)
    assert (df["status"] == "ok").all(), df["error"].tolist()
    assert list(df["epoch"]) == [1, 2, 3] and list(df["warmup"]) == [True, False, False]
    assert (df["status"] == "ok").all() and (df["steps"] == 3).all()
    assert df["syncs_per_step"].notna().tolist() == [True, False, False]  # count_syncs first
    assert not df["resumed"].any()
    for col in ("train_s", "eval_s", "epoch_s", "images_per_s", "peak_mem_mb", "top5"):
        assert (df[col] > 0).all(), col
    assert df["git_commit"].iloc[0] and df["hostname"].iloc[0]


@pytest.mark.slow
def test_same_flags_seed_and_data_give_the_same_numbers(tmp_path):
    spec = _spec("legacy,num_workers=2", model="ivit_micro", epochs=2, steps_per_epoch=2,
                 eval_steps=1, eval_batch_size=16)
    cols = ["train_loss", "eval_loss", "top1", "top5"]
    a = execute_run(spec, tmp_path / "a")[cols]
    b = execute_run(spec, tmp_path / "b")[cols]
    assert a.equals(b)


@pytest.mark.parametrize("flag", ["preload_to_device", "loss_item_per_step",
                                  "grad_scaler_without_autocast", "num_workers"])
def test_exact_loop_flags_keep_the_numbers(tmp_path, flag):
    base = Flags.preset("best").replace(num_workers=0)
    other = base.replace(**{flag: 2 if flag == "num_workers" else
                            not getattr(base, flag)})
    cols = ["train_loss", "eval_loss", "top1"]
    a = execute_run(_spec(base), tmp_path / "a")[cols]
    b = execute_run(_spec(other, config="d"), tmp_path / "b")[cols]
    assert a.equals(b)


def test_other_loop_paths_run(tmp_path, monkeypatch):
    plotted = []  # learning curves are drawn inside the timed epoch, rendered, not kept
    real = runner.plot_learning_curves
    monkeypatch.setattr(runner, "plot_learning_curves",
                        lambda history, *a: plotted.append(len(history)) or real(history, *a))
    flags = Flags.preset("best").replace(num_workers=0, fused_optimizer=False, plot_every=2)
    df = execute_run(_spec(flags, epochs=3, mixup=0.8, cutmix=1.0, smoothing=0.1,
                           ema_decay=0.9, clip_grad=1.0, sched="none", opt="sgd"), tmp_path)
    assert (df["status"] == "ok").all(), df["error"].tolist()
    assert plotted == [2, 3]  # every plot_every epochs, and after the last
    assert not (tmp_path / "plots").exists()


def test_compile_path_records_compile_time(tmp_path):
    flags = Flags.preset("best").replace(num_workers=0, compile_model=True)
    df = execute_run(_spec(flags, compile_backend="eager", epochs=2), tmp_path)
    assert (df["status"] == "ok").all(), df["error"].tolist()
    assert df["compile_s"].iloc[0] > 0


def test_compile_model_knows_the_default_backend():
    """The harness's one compile entry point registers qvit_inductor (the default
    compile_backend) before torch.compile looks the name up, for runs and sessions alike."""
    import torch

    from harness.run import loop

    assert RunSettings().compile_backend == "qvit_inductor"
    compiled = loop.compile_model(torch.nn.Linear(2, 2), RunSettings().compile_backend)
    assert "qvit_inductor" in torch._dynamo.list_backends()
    assert isinstance(compiled, torch._dynamo.eval_frame.OptimizedModule)


def test_float_reference_compiles_with_its_own_backend(tmp_path, monkeypatch):
    """compile_model on a float reference uses float_compile_backend (the fastest float),
    whole; on a qvit model compile_backend (eager's bits), as compile_scope says (block by
    default), in runs and interleaved sessions alike; CUDA graphs never on the CPU."""
    from harness.run import interleave, loop

    used = []

    def record(model, backend, *, scope, cuda_graphs):
        used.append((backend, scope, cuda_graphs))
        return model

    monkeypatch.setattr(loop, "compile_model", record)
    monkeypatch.setattr(interleave, "compile_model", record)
    flags = Flags.preset("fastest").replace(num_workers=0)
    settings = RunSettings(model="ivit_micro", **{**BASE, "epochs": 1, "warmup_epochs": 0,
                                                  "steps_per_epoch": 1})
    specs = [RunSpec(config=c, flags=flags, float_reference=c == "float", settings=settings)
             for c in ("best", "float")]
    assert [s.compile_backend for s in specs] == ["qvit_inductor", "inductor"]
    for spec in specs:
        execute_run(spec, tmp_path / spec.config)
    interleave._models(interleave.Session(tuple(specs)), torch.device("cpu"))
    assert used == [("qvit_inductor", "block", False), ("inductor", "block", False)] * 2
    assert specs[0].compile_options("cuda")["cuda_graphs"]  # fastest's CUDA graphs
    whole = RunSpec(config="w", flags=Flags.parse("fastest,compile_scope=model"),
                    settings=settings)
    assert whole.compile_options("cpu")["scope"] == "model"


def test_a_model_without_qvit_blocks_compiles_whole():
    """scope="block" compiles qvit's blocks; the float reference (timm's blocks) and a
    plug-in model have none: they compile whole."""
    import qvit
    from harness.run import loop

    float_twin = qvit.create_float_reference("ivit_micro", num_classes=10)
    for model in (float_twin, torch.nn.Linear(2, 2)):
        compiled = loop.compile_model(model, "eager", scope="block")
        assert isinstance(compiled, torch._dynamo.eval_frame.OptimizedModule)
    quant = qvit.create_model("ivit_micro", num_classes=10)
    assert loop.compile_model(quant, "eager", scope="block") is quant


def test_interleaved_session_records_each_configs_compile_time(tmp_path):
    """A session's compiled config carries its compile seconds (its warm-up rounds') on its
    first round's row, the eager config none: the report's compile column. (The tiny CNN:
    the bookkeeping is the session's, whatever the model; dynamo tracing ivit_micro cost a
    minute here for the same rows.)"""
    from harness import records
    from harness.run import interleave

    specs = tuple(_spec(flags, config=name, compile_backend="eager")
                  for name, flags in (("eager", "best"), ("compiled", "fastest")))
    torch._dynamo.reset()  # no frame this process compiled before (the same CNN) reused
    interleave.measure_session(interleave.Session(specs, rounds=2, warmup=1), tmp_path)
    t = records.merge_shards(tmp_path).sort_values(["config", "repeat"])
    compiled = t[t["config"] == "compiled"]["compile_s"].tolist()
    assert compiled[0] > 0 and compiled[1:] == [0.0]
    assert t[t["config"] == "eager"]["compile_s"].tolist() == [0.0, 0.0]


@pytest.mark.parametrize("attention", ["explicit", "sdpa"])
def test_float_reference_attention_is_the_run_setting(attention):
    """The float reference computes attention as the run setting says (default explicit:
    the quantized models' form; timm's ViT default would be sdpa); the float-pretraining
    recipe pins it (one checkpoint per recipe)."""
    from harness.run.pretrained import pretrain_settings

    assert RunSettings().float_attention == "explicit"
    settings = RunSettings(model="ivit_micro", float_attention=attention, **BASE)
    spec = RunSpec(config="float", flags=Flags.preset("best"), float_reference=True,
                   settings=settings)
    fused = {m.fused_attn for m in runner.build_model(spec).modules()
             if hasattr(m, "fused_attn")}
    assert fused == {attention == "sdpa"}
    assert pretrain_settings(settings).float_attention == "explicit"


def _syncs(tmp_path, flags, config):
    spec = _spec(flags, model="ivit_micro", config=config, epochs=1, warmup_epochs=0,
                 steps_per_epoch=3, eval_steps=1, batch_size=4, eval_batch_size=4,
                 count_syncs="all", sync_count_steps=None)  # syncs are counted in training
    df = execute_run(spec, tmp_path / config)
    assert (df["status"] == "ok").all(), df["error"].tolist()
    assert bool(df["counted"].iloc[0])
    return df["syncs_per_step"].iloc[0], json.loads(df["sync_kinds"].iloc[0])


@pytest.mark.slow
def test_syncs_per_step_legacy_vs_seed_on_cpu(tmp_path):
    """Changes 3 (frexp's host round trip per requantization), 9 (loss.item per step) and
    14 (GradScaler's found-inf read) show as counts on the CPU."""
    legacy = Flags.preset("legacy").replace(num_workers=0)
    seed = Flags.preset("seed").replace(num_workers=0)
    n_legacy, k_legacy = _syncs(tmp_path, legacy, "legacy")
    n_seed, k_seed = _syncs(tmp_path, seed, "seed")
    assert n_legacy > n_seed
    assert k_legacy.get("to_host", 0) > 0 and "to_host" not in k_seed  # change 3
    # change 9 alone: one read per step vs one per epoch (3 steps, 2 of them counted)
    n9, _ = _syncs(tmp_path, seed.replace(loss_item_per_step=True), "seed9")
    assert n9 - n_seed == pytest.approx(1 - 1 / 3)
    # change 14 alone: GradScaler's found-inf .item() per step
    n14, _ = _syncs(tmp_path, seed.replace(grad_scaler_without_autocast=True), "seed14")
    assert n14 - n_seed == pytest.approx(1.0)
    # beyond the seed: best has no sync per step left, only the one read per epoch
    n_best, _ = _syncs(tmp_path, Flags.preset("best").replace(num_workers=0), "best")
    assert n_best == pytest.approx(1 / 3)


@pytest.mark.parametrize("fault,status,per_step", [("oom", "oom", True),
                                                   ("nan", "nan", True),
                                                   ("nan", "nan", False),
                                                   ("error", "error", False)])
def test_failures_are_recorded_not_raised(tmp_path, monkeypatch, fault, status, per_step):
    monkeypatch.setenv(FAULT_ENV, json.dumps({"c": {"fault": fault, "epoch": 2, "step": 1}}))
    flags = Flags.preset("best").replace(num_workers=0, loss_item_per_step=per_step)
    df = execute_run(_spec(flags, epochs=3), tmp_path)
    assert list(df["status"]) == ["ok", status] and list(df["epoch"]) == [1, 2]
    assert df["error"].iloc[1]


def test_bad_device_is_refused_before_any_run(tmp_path):
    """The device is checked up front (`check_specs`, before a sweep starts), not recorded as
    an error row of every run."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    spec = _spec(device="cuda")
    with pytest.raises(ValueError, match="CUDA is not available"):
        check_specs([spec])
    with pytest.raises(ValueError, match="CUDA is not available"):
        execute_run(spec, tmp_path)
    assert not list(tmp_path.iterdir())  # nothing recorded


def test_fault_injector_validates():
    with pytest.raises(ValueError, match="fault must be one of"):
        FaultInjector("segfault")
