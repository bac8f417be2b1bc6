"""scripts/deploy_speed.py, smoke-sized: the report reads like the other reports (command,
commit, machine, dates), carries every asked variant with images/s and intervals, ratios
to the QAT eval and the float twin, and the exactness of the micro models on the held-out
split (agreement equal to the pooled per-batch counts it reports)."""

import importlib.util
import json
from pathlib import Path

import pandas as pd
import pytest

_PATH = Path(__file__).parents[2] / "scripts" / "deploy_speed.py"


@pytest.fixture(scope="module")
def deploy_speed():
    spec = importlib.util.spec_from_file_location("deploy_speed", _PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_smoke_report(deploy_speed, tmp_path):
    out = tmp_path / "deploy"
    assert deploy_speed.main(["--models", "ivit_micro", "--variants", "deployed", "qat_best",
                              "float", "--rounds", "2", "--iters", "1", "--warmup", "0",
                              "--batch", "2", "--exactness", "random", "--held-out-images",
                              "40", "--out", str(out)]) == 0
    text = (out / "report.md").read_text()
    for part in ("## Setup", "| git_commit |", "| machine | cpu (", "| dates |",
                 "## Speed", "## Exactness against the QAT eval", "--exactness random"):
        assert part in text, part
    speed = pd.read_csv(out / "speed.csv")
    assert speed["variant"].tolist() == ["deployed", "qat_best", "float"]
    assert (speed["batch"] == 2).all() and (speed["median"] > 0).all()
    assert speed.set_index("variant").loc["qat_best", "vs_qat"] == 1.0
    assert speed.set_index("variant").loc["float", "vs_float"] == 1.0
    # x float: paired per round (geometric mean), not a ratio of medians
    rounds = {r["variant"]: r["rounds"] for r in
              json.loads((out / "report.json").read_text())["speed"]}
    dep = speed.set_index("variant").loc["deployed"]
    paired = [a / b for a, b in zip(rounds["deployed"], rounds["float"], strict=True)]
    assert dep["vs_float"] == pytest.approx((paired[0] * paired[1]) ** 0.5)
    assert dep["vs_float_lo"] <= dep["vs_float"] <= dep["vs_float_hi"]
    whole = json.loads((out / "report.json").read_text())["exactness"][0]
    assert whole["images"] == 40 and 0 <= whole["agreement"] <= 1
    assert whole["agreement"] == pytest.approx(1 - whole["disagreements"] / whole["images"])
    assert whole["agreement_lo"] <= whole["agreement"] <= whole["agreement_hi"]
    assert f"{whole['agreement']:.4f} [{whole['agreement_lo']:.4f}, " in text
    layers = pd.read_csv(out / "exactness.csv")
    assert {"layer", "frac_differ", "max_steps", "elements"} <= set(layers.columns)
    assert layers["frac_differ"].between(0, 1).all() and whole["layers"] == len(layers)


def test_refuses_bad_arguments_before_measuring(deploy_speed, tmp_path, capsys):
    with pytest.raises(SystemExit):
        deploy_speed.main(["--rounds", "1", "--out", str(tmp_path)])
    with pytest.raises(SystemExit):
        deploy_speed.main(["--variants", "deployed", "--out", str(tmp_path)])
    assert "qat_best and float" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_report_pairs_the_deployed_model_with_each_compiled_baseline(deploy_speed):
    """The compiled baselines' columns and paired ratios (rounds made up: no compile)."""
    rounds = {"deployed_compiled": [10.0, 12.0, 11.0], "compiled_int8_no_tables": [5.0, 6.0, 5.5],
              "compiled_int64_requant": [8.0, 9.6, 8.8], "qat_best": [9.0, 9.0, 9.0],
              "float": [20.0, 20.0, 20.0]}
    rows = [dict(model="ivit_micro", batch=4, variant=v, median=r[1], mean=r[1], ci95_lo=r[0],
                 ci95_hi=r[2], iqr_over_median=0.1, vs_qat=1.0, vs_qat_lo=1.0, vs_qat_hi=1.0,
                 vs_float=0.5, vs_float_lo=0.5, vs_float_hi=0.5, rounds=r)
            for v, r in rounds.items()]
    info = {"int_gemm": "float32", "requant": "float64", "compile_s": 3.0,
            "compiled_exact": True}
    for v in deploy_speed.BASELINES:
        info |= {f"compile_s_{v}": 4.0, f"compiled_exact_{v}": True}
    meta = dict(command="x", git_commit="abc", git_dirty=False, device_name="cpu (test)",
                torch_version="t", timm_version="t", threads=2, omp="2", started="s",
                ended="e", rounds=3, iters=1)
    text = deploy_speed.markdown(rows, {"ivit_micro": info}, meta, [], [])
    assert "| ivit_micro | float32 | float64 | 3.0 | True | 4.0 | True | 4.0 | True |" in text
    assert 'requant="int64"' in text
    assert "Compiled, `deployed` over `compiled_int8_no_tables` (throughput, paired" in text
    assert "ivit_micro 2.00 [2.00, 2.00]" in text  # 10/5, 12/6, 11/5.5
    assert "over `compiled_int64_requant`" in text and "ivit_micro 1.25 [1.25, 1.25]" in text
