"""scripts/gpu_run.py (issue #23): the derived specs validate, the plan fits its budget, and
the smoke path runs end to end on the CPU (the GPU command must not fail on a typo or a
missing import)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import tarfile
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
import tomllib

from harness.spec.settings import RunSettings

ROOT = Path(__file__).resolve().parents[2]


def _gpu_run():
    spec = importlib.util.spec_from_file_location("gpu_run", ROOT / "scripts" / "gpu_run.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["gpu_run"] = mod
    spec.loader.exec_module(mod)
    return mod


g = _gpu_run()


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    env.setdefault("OMP_NUM_THREADS", "1")
    env["PYTHON"] = sys.executable  # gpu_run.sh runs $PYTHON (default python3)
    return env


@pytest.mark.parametrize("which", ["timeline", "best"])
@pytest.mark.parametrize("sizes", [g.SMOKE, g.MEASURE, replace(g.MEASURE, compile=True)])
def test_derived_specs_are_valid_toml_and_specs(tmp_path, which, sizes):
    spec = g.derived_spec(which, sizes, device="cuda", models=list(g.GPU_MODELS),
                          batch_size=None, img_size=None)
    text = g.toml_dumps(spec)
    assert tomllib.loads(text) == spec
    path = tmp_path / f"{which}.toml"
    path.write_text(text)
    q = subprocess.run([sys.executable, "-m", "harness", "ablate", str(path), "--dry-run",
                        "--device", "cpu"], cwd=ROOT, env=_env(), capture_output=True,
                       text=True, timeout=120)
    assert q.returncode == 0, q.stderr
    assert f"x {max(sizes.blocks, sizes.sessions) if which == 'best' else sizes.blocks} " \
           f"blocks" in q.stdout
    assert f"steps/epoch {sizes.steps}, batch 64" in q.stdout
    if which == "best":
        assert f"x {sizes.rounds} rounds" in q.stdout
        assert ("best_compiled" in q.stdout) == sizes.compile


def test_shipped_specs_are_the_issues_design():
    tl = tomllib.loads(g.SPECS["timeline"].read_text())
    best = tomllib.loads(g.SPECS["best"].read_text())
    for spec in (tl, best):
        # a spec says only what it changes from RunSettings' defaults (the shipped recipe)
        run = {**RunSettings().model_dump(), **spec["run"]}
        assert run["models"] == list(g.GPU_MODELS)
        assert (run["batch_size"], run["img_size"], run["num_classes"]) == (64, 224, 10)
        assert run["dataset"] == "synthetic" and run["device"] == "cuda"
        assert run["repeats"] >= 3
    assert tl["design"]["kind"] == "timeline" and tl["design"]["base"] == "legacy"
    assert best["run"]["methods"] == ["epochs", "steps"]
    names = [c["name"] for c in best["design"]["configs"]]
    assert names == ["legacy", "seed", "best", "float"]


def _fake_table(per_step: dict[str, float], steps: int = 3) -> pd.DataFrame:
    rows = []
    for model in g.GPU_MODELS:
        for config, t in per_step.items():
            for block in range(2):
                for epoch, warm in ((1, True), (2, False)):
                    train = 0.5 + steps * t
                    rows.append({"model": model, "config": config, "method": "epochs",
                                 "status": "ok", "warmup": warm, "epoch": epoch,
                                 "steps": steps, "train_s": train, "startup_s": 0.5,
                                 "eval_s": 0.2, "epoch_s": train + 0.3 + (0.5 if warm else 0),
                                 "compile_s": 0.0, "block": block})
            for r in range(2):
                rows.append({"model": model, "config": config, "method": "steps",
                             "status": "ok", "warmup": False, "epoch": 1, "steps": 1,
                             "train_s": t, "startup_s": 0.0, "eval_s": float("nan"),
                             "epoch_s": float("nan"), "compile_s": 0.0, "block": r})
    return pd.DataFrame(rows)


def _cost_model(per_step):
    table = _fake_table(per_step)
    costs = g.epoch_costs(table, g.SMOKE)
    steps = g.step_costs(table)
    return {"tl_costs": costs, "best_costs": costs, "steps": steps, "per_run_fixed_s": 1.0,
            "per_session_fixed_s": 3.0, "fixed_s": {"env": 2.0, "parity": 20.0}}


def test_epoch_costs_recover_the_table():
    costs = g.epoch_costs(_fake_table({"legacy": 0.4, "seed": 0.1}), g.SMOKE)
    c = costs[(g.GPU_MODELS[0], "legacy")]
    assert c.per_step == pytest.approx(0.4)
    assert c.per_eval_step == pytest.approx(0.2)  # eval_s over the smoke's one eval step
    assert c.epoch_fixed == pytest.approx(0.5 + 0.1)  # startup + plots/other
    assert c.warm_extra == pytest.approx(0.5)


@pytest.mark.parametrize("per_step", [{"legacy": 0.2, "seed": 0.05, "best": 0.02,
                                       "float": 0.01}, {"legacy": 0.05, "seed": 0.02}])
def test_plan_fits_the_budget_and_keeps_the_issues_minimum(per_step):
    m = _cost_model(per_step)
    sizes, pred, notes = g.choose(m, 8 * 60, compile_measured=False)
    assert sizes.blocks >= 3 and sizes.sessions >= 3
    assert pred["total"] * g.SAFETY <= 8 * 60
    assert pred == g.predict(m, sizes)
    # one more step per epoch no longer fits, unless steps is at its cap
    if sizes.steps < 50:
        assert g.predict(m, replace(sizes, steps=sizes.steps + 1))["total"] * g.SAFETY > 8 * 60 \
            or sizes.rounds < 12 or sizes.blocks < 5
    assert any("compile" in n for n in notes)
    assert not any("over the budget" in n for n in notes)


def test_plan_says_when_even_the_minimum_does_not_fit():
    m = _cost_model({"legacy": 30.0, "seed": 10.0})
    sizes, pred, notes = g.choose(m, 60, compile_measured=False)
    assert (sizes.blocks, sizes.sessions) == (3, 3)
    assert notes and "over the budget" in notes[0]


def test_plan_file_gives_the_measurement_its_sizes(tmp_path):
    plan = tmp_path / "plan.json"
    sizes = replace(g.MEASURE, steps=17, rounds=9, compile=True)
    plan.write_text(json.dumps({"sizes": sizes.__dict__}))
    args = g.parse_args(["--out", str(tmp_path), "--plan", str(plan)])
    assert args.sizes == sizes
    args = g.parse_args(["--out", str(tmp_path), "--plan", str(plan), "--steps", "5"])
    assert args.sizes == replace(sizes, steps=5)
    assert g.parse_args(g.SMOKE.args() + ["--out", "x"]).sizes == g.SMOKE
    assert g.parse_args(["--out", "x", "--smoke"]).sizes == g.SMOKE


def test_parity_phase_on_the_cpu(tmp_path):
    """Parity and the sync probes of both model families, in-process (the GPU's phase 1)."""
    q = subprocess.run(["bash", "scripts/gpu_run.sh", "--smoke", "--device", "cpu",
                        "--models", "ivit_micro,swin_micro", "--phases", "parity",
                        "--parity-batch", "2"],
                       cwd=ROOT, env={**_env(), "OUT": str(tmp_path)}, capture_output=True,
                       text=True, timeout=600)
    assert q.returncode == 0, q.stdout[-3000:] + q.stderr[-3000:]
    data = json.loads((tmp_path / "summary.json").read_text())
    models = data["parity"]["models"]
    assert [r["model"] for r in models] == ["ivit_micro", "swin_micro"]
    assert all(r["equal"] and r["control_step_equal"] for r in models)
    assert all(r["frexp"]["equal"] for r in models)
    census = {(r["model"], r["preset"]): r for r in data["parity"]["sync_census"]}
    assert len(census) == 6 and all("error" not in r for r in census.values())
    # the seed's host round trips show on the CPU too; best makes none in a step
    assert census[("ivit_micro", "legacy")]["counter"] > census[("ivit_micro", "seed")][
        "counter"] > census[("ivit_micro", "best")]["counter"] == 0
    assert "## Parity on the device" in q.stdout


@pytest.mark.slow
def test_smoke_runs_end_to_end_on_the_cpu(tmp_path):
    """The GPU smoke command's whole path (parity, both ablations through the harness CLI,
    both reports, the plan, the tarball) at the smallest sizes the CLI allows, one model."""
    out = tmp_path / "out"
    q = subprocess.run(["bash", "scripts/gpu_run.sh", "--smoke", "--device", "cpu",
                        "--models", "ivit_micro", "--batch-size", "4", "--img-size", "32",
                        "--steps", "2", "--threads", "1", "--parity-batch", "2"],
                       cwd=ROOT, env={**_env(), "OUT": str(out)}, capture_output=True,
                       text=True, timeout=900)
    assert q.returncode == 0, q.stdout[-4000:] + q.stderr[-4000:]
    files = sorted(p.name for p in out.iterdir() if p.is_file())
    assert files == ["gpu_results.tar.gz", "plan.json", "run.log", "summary.json",
                     "summary.md"]
    assert len(files) <= 8
    tail = q.stdout[-6000:]
    assert "## Plan for the measurement" in tail and "bash scripts/gpu_run.sh --blocks" in tail
    plan = json.loads((out / "plan.json").read_text())
    assert plan["sizes"]["blocks"] >= 3 and plan["predicted_s"]["total"] > 0
    data = json.loads((out / "summary.json").read_text())
    assert all(p["ok"] for p in data["phases"].values()), data["phases"]
    assert {r["design"] for r in data["syncs"]} == {"gpu_seed_timeline", "gpu_best"}
    with tarfile.open(out / "gpu_results.tar.gz") as tf:
        names = tf.getnames()
    for want in ("gpu_results/gpu_seed_timeline/report.md", "gpu_results/gpu_best/report.md",
                 "gpu_results/gpu_best/runs.parquet", "gpu_results/parity.json",
                 "gpu_results/env.json", "gpu_results/specs/gpu_best.toml"):
        assert want in names
    md = (out / "summary.md").read_text()
    assert "## timeline" in md and "## best" in md and "Syncs per training step" in md
