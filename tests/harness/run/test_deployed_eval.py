"""The ``eval_deployed`` run setting: after the last epoch the runner also evaluates the
deployed integer model (`qvit.deploy`); the runs table records deployed_top1 and
deployed_agreement (NaN for a float reference and for older tables), the report shows them
beside the QAT top-1, and `assert_accuracy_parity` answers about the deployed model."""

import copy
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from harness import records
from harness.analysis import stats
from harness.analysis.equivalence import accuracy_parity, assert_accuracy_parity
from harness.analysis.report.sections import Context, accuracy
from harness.run import loop, runner
from harness.run.data import MEAN_STD, normalize_batch
from harness.run.runner import RunSpec, execute_run
from harness.spec.settings import RunSettings
from qvit import Flags
from qvit.deploy import deploy

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # harness_tiny.py
# four eval batches of 25: 100 held-out images, so every top-1 is a whole percent and every
# agreement a multiple of 0.01 (the report prints one and three decimals); three batches of
# the default 128 evaluated 384 images, through the QAT model each epoch and the deployed one
TINY = dict(model="ivit_micro", epochs=2, warmup_epochs=1, steps_per_epoch=2, eval_steps=4,
            batch_size=8, eval_batch_size=25, device="cpu", pretrained=False,
            eval_deployed=True)
DEPLOYED = ["deployed_top1", "deployed_agreement"]


@pytest.fixture(autouse=True)
def _restore_torch_state():
    det, threads = torch.are_deterministic_algorithms_enabled(), torch.get_num_threads()
    yield
    torch.use_deterministic_algorithms(det)
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A quantized and a float-reference run of ivit_micro into one folder, with the model
    the runner's deployed eval saw (a copy, taken as it is called)."""
    out = tmp_path_factory.mktemp("deployed")
    seen = []
    real = loop.evaluate_deployed

    def spy(model, batches, **kw):
        seen.append(copy.deepcopy(getattr(model, "_orig_mod", model)))
        return real(model, batches, **kw)

    mp = pytest.MonkeyPatch()
    mp.setattr(loop, "evaluate_deployed", spy)
    try:
        flags = Flags.preset("best").replace(num_workers=0)
        specs = [RunSpec("q", flags, RunSettings(**TINY)),
                 RunSpec("float", flags, RunSettings(**TINY), float_reference=True)]
        for spec in specs:
            execute_run(spec, out)
    finally:
        mp.undo()
    records.merge_shards(out)
    return out, specs, seen


def _recompute(model, settings: RunSettings):
    """Top-1 of the QAT eval and of `deploy(model)`, and their agreement, on the images the
    runner evaluated (the held-out split's first eval_steps batches), computed here."""
    bundle = runner.validate_spec(settings)
    x, y = bundle.val.all()
    n = settings.eval_steps * (settings.eval_batch_size or settings.batch_size)
    x, y = normalize_batch(x[:n], MEAN_STD[settings.dataset]), y[:n]
    model.eval()
    with torch.no_grad():
        pq, pd_ = model(x).argmax(1), deploy(model)(x).argmax(1)
    return (100 * (pq == y).double().mean().item(), 100 * (pd_ == y).double().mean().item(),
            (pq == pd_).double().mean().item())


def test_deployed_columns_equal_an_independent_recomputation(runs):
    out, specs, seen = runs
    t = records.read_table(out)
    assert set(DEPLOYED) <= set(t.columns) and (t["status"] == "ok").all(), t["error"].tolist()
    q = t[t["config"] == "q"].sort_values("epoch")
    assert q[DEPLOYED].iloc[0].isna().all()  # the last epoch only
    last = q.iloc[-1]
    assert 0.0 <= last["deployed_agreement"] <= 1.0 and 0.0 <= last["deployed_top1"] <= 100.0
    assert len(seen) == 1  # the float reference is not deployed
    qat_top1, dep_top1, agreement = _recompute(seen[0], specs[0].settings)
    assert last["top1"] == pytest.approx(qat_top1)  # the same images as the harness eval
    assert last["deployed_top1"] == pytest.approx(dep_top1)
    assert last["deployed_agreement"] == pytest.approx(agreement)


def test_float_reference_gets_nan_not_an_error(runs):
    t = records.read_table(runs[0])
    f = t[t["config"] == "float"]
    assert len(f) == 2 and (f["status"] == "ok").all() and f[DEPLOYED].isna().all().all()


def test_tables_without_the_columns_stay_readable():
    old = records.normalize(pd.DataFrame({"run_id": ["a"], "config": ["q"], "top1": [90.0]}))
    assert old[DEPLOYED].isna().all().all() and old["top1"].tolist() == [90.0]


def test_report_shows_deployed_top1_and_agreement(runs):
    out = runs[0]
    t = records.read_table(out)
    ctx = Context(folder=out, meta={"baseline": "q", "settings": {"num_classes": 10}},
                  table=t, ignored=0, summary=stats.summarize(t, "q"), order=["q", "float"],
                  parity=None, device_type="cpu")
    text, _ = accuracy(ctx)
    head = next(ln for ln in text.splitlines() if ln.startswith("| model"))
    assert "deployed top-1 %" in head and "agreement with QAT eval" in head
    cols = [c.strip() for c in head.strip("|").split("|")]
    q = t[(t["config"] == "q")].sort_values("epoch").iloc[-1]
    rows = {r.split("|")[2].strip(): [c.strip() for c in r.strip("|").split("|")]
            for r in text.splitlines() if r.startswith("| ivit_micro")}
    i, j = cols.index("deployed top-1 %"), cols.index("agreement with QAT eval")
    assert float(rows["q"][i]) == pytest.approx(q["deployed_top1"], abs=1e-2)
    assert float(rows["q"][j]) == pytest.approx(q["deployed_agreement"], abs=1e-3)
    assert rows["float"][i] == "" and rows["float"][j] == ""
    n = int(ctx.summary["eval_images"].median())  # the held-out split's size, as reported
    assert f"({n} images: one image" in text
    assert f"{n} images bound what it can show" in text
    assert f"interval starts at {100 * 0.025 ** (1 / n):.1f}%" in text


def test_report_leaves_the_columns_out_without_deployed_evals(runs):
    t = records.read_table(runs[0]).drop(columns=DEPLOYED)
    ctx = Context(folder=runs[0], meta={"baseline": "q"}, table=t, ignored=0,
                  summary=stats.summarize(t, "q"), order=["q"], parity=None,
                  device_type="cpu")
    assert "deployed" not in accuracy(ctx)[0]


def _finals(deployed_top1, top1=(90.0, 92.0, 91.0)):
    return pd.DataFrame({"config": "best", "model": "m", "seed": range(3),
                         "repeat": range(3), "epoch": 4, "status": "ok", "top1": list(top1),
                         "eval_loss": 0.3, "deployed_top1": list(deployed_top1)})


def test_accuracy_parity_of_the_deployed_model():
    same = _finals([90.0, 92.0, 91.0])
    r = assert_accuracy_parity(same, "best:deployed", "best", exact=True)
    assert r.method == "exact" and r.config_a == "best:deployed"
    off = _finals([90.0, 91.0, 91.0])
    with pytest.raises(AssertionError, match="not identical"):
        assert_accuracy_parity(off, "best:deployed", "best", exact=True)
    r = accuracy_parity(off, "best:deployed", "best")  # TOST, paired, +-1 point by default
    assert r.method == "tost-paired" and r.margin == 1.0
    assert r.mean_diff == pytest.approx(-1 / 3)
    r = accuracy_parity(off, "best", "best", metric="deployed_top1")
    assert r.margin == 1.0 and r.mean_diff == 0


def test_accuracy_parity_refuses_a_table_without_deployed_evals():
    none = _finals([np.nan] * 3)
    with pytest.raises(ValueError, match="eval_deployed"):
        accuracy_parity(none, "best:deployed", "best")
    with pytest.raises(ValueError, match="eval_deployed"):
        accuracy_parity(none, "best", "best", metric="deployed_top1")
    with pytest.raises(ValueError, match="top-1 only"):
        accuracy_parity(_finals([90.0] * 3), "best:deployed", "best", metric="top5")


def test_a_model_that_cannot_deploy_is_refused_before_training():
    settings = RunSettings(**{**TINY, "model": "harness_tiny:tiny_cnn"})
    with pytest.raises(ValueError, match="eval_deployed: model harness_tiny:tiny_cnn: "
                                         "deploy takes a qvit"):
        runner.check_specs([RunSpec("c", Flags(), settings)])
    runner.check_specs([RunSpec("c", Flags(), settings.replace(eval_deployed=False))])
