"""What a run spends outside its measured epochs: the warm-up trains `warmup_steps` steps and
evaluates one batch, draws no plot; the float pretraining evaluates its last epoch only; the
runs of a block share one loaded dataset; the set-up's seconds are recorded."""

import math
import sys
from pathlib import Path

import pytest
import torch

from harness.run import runner
from harness.run.runner import RunSpec, execute_block, execute_run, train_in_memory
from harness.spec.settings import RunSettings
from qvit import Flags

TINY = "harness_tiny:tiny_cnn"  # tests/harness/harness_tiny.py
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # harness_tiny.py
BASE = dict(model=TINY, epochs=3, steps_per_epoch=4, batch_size=8, eval_batch_size=128,
            device="cpu", pretrained=False)


@pytest.fixture(autouse=True)
def _restore_torch_state():
    det = torch.are_deterministic_algorithms_enabled()
    threads = torch.get_num_threads()
    yield
    torch.use_deterministic_algorithms(det)
    torch.set_num_threads(threads)


def _spec(config="c", flags="best", **kw):
    return RunSpec(config, Flags.parse(flags).replace(num_workers=0),
                   RunSettings(**{**BASE, **kw}))


def test_a_warmup_epoch_trains_warmup_steps_and_evaluates_one_batch(tmp_path, monkeypatch):
    plotted = []
    monkeypatch.setattr(runner, "plot_learning_curves", lambda h, *a: plotted.append(len(h)))
    df = execute_run(_spec(flags="best,plot_every=1", warmup_steps=2), tmp_path)
    assert (df["status"] == "ok").all(), df["error"].tolist()
    assert list(df["warmup"]) == [True, False, False]
    assert list(df["steps"]) == [2, 4, 4]
    assert list(df["eval_images"]) == [128, 364, 364]  # one batch; the whole held-out split
    assert plotted == [2, 3]  # measured epochs only, though plot_every is 1


def test_without_warmup_steps_a_warmup_epoch_is_a_whole_one(tmp_path):
    df = execute_run(_spec(), tmp_path)
    assert list(df["steps"]) == [4, 4, 4]


def test_the_epoch_end_read_counts_over_a_whole_epoch_in_a_short_warmup(tmp_path):
    """best reads the loss once per epoch: 1/4 sync per step of a 4-step epoch, also where
    the counted (warm-up) epoch ran 2 steps."""
    df = execute_run(_spec(warmup_steps=2, count_syncs="first"), tmp_path)
    assert df["syncs_per_step"].iloc[0] == pytest.approx(1 / 4)


def test_the_setup_time_is_recorded_on_the_first_row(tmp_path):
    df = execute_run(_spec(), tmp_path)
    assert df["setup_s"].iloc[0] > 0 and df["setup_s"].iloc[1:].isna().all()


def test_the_float_pretraining_evaluates_its_last_epoch_only():
    spec = RunSpec("float", Flags.preset("best").replace(num_workers=0),
                   RunSettings(**{**BASE, "warmup_epochs": 0}))
    _, rows = train_in_memory(spec)
    assert [r["eval_images"] for r in rows] == [0, 0, 364]
    assert math.isnan(rows[0]["top1"]) and not math.isnan(rows[-1]["top1"])


def test_the_runs_of_a_block_load_the_dataset_once(tmp_path, monkeypatch):
    calls = []
    real = runner.load_dataset
    monkeypatch.setattr(runner, "load_dataset", lambda *a, **k: calls.append(a) or real(*a, **k))
    runner._load_dataset.cache_clear()
    execute_block([_spec("a", epochs=2), _spec("b", epochs=2)], tmp_path)
    assert len(calls) == 1


def test_the_warmup_evaluates_without_loader_workers(tmp_path, monkeypatch):
    """Workers start in every epoch's loaders (measured there); the warm-up's one batch is
    for the model's first calls in eval."""
    seen = []
    real = runner.loop.evaluate
    monkeypatch.setattr(runner.loop, "evaluate", lambda m, batches, **k: seen.append(
        (len(batches), batches.num_workers)) or real(m, batches, **k))
    spec = RunSpec("w", Flags.parse("best,preload_to_device=false,num_workers=2"),
                   RunSettings(**BASE, warmup_steps=2))
    df = execute_run(spec, tmp_path)
    assert (df["status"] == "ok").all(), df["error"].tolist()
    assert seen == [(1, 0), (3, 2), (3, 2)]
