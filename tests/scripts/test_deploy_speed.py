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
