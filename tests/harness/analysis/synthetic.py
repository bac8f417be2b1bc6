"""Runner-shaped tables with known effects, for the statistics and report tests."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pandas as pd


def _identity(model: str, name: str, c: dict[str, Any], run_id: str, block: int
              ) -> dict[str, Any]:
    """The columns every synthetic row shares: who it is, its flags, its provenance."""
    return {"config": name, "model": model, "dataset": "digits", "repeat": block,
            "block": block, "resumed": False, "status": "ok", "error": "", "run_id": run_id,
            "float_reference": bool(c.get("float_reference", False)),
            "git_commit": "synthetic", "device_name": "cpu (synthetic)",
            "ended": "2026-01-01T00:00:00",
            **(c["flags"].to_dict() if c.get("flags") is not None else {})}


def synthetic_runs(configs: dict[str, dict[str, Any]], *, models=("ivit_micro",),
                   repeats: int = 4, epochs: int = 3, warmup_epochs: int = 1,
                   base_time: float = 2.0, noise: float = 0.02, drift: float = 0.0,
                   seed: int = 0, eval_share: float = 0.25, steps: int = 10) -> pd.DataFrame:
    """``configs`` maps name -> {"time": multiplier of base_time, "step": multiplier of the
    step compute (default: "time"), "top1": accuracy (percent), "flags": qvit.Flags,
    "syncs": syncs per step, "float_reference": bool}. Times get lognormal noise (sd
    ``noise``), a per-block factor and a linear ``drift`` over run order; warm-up epochs
    are 3x slower. Step compute is half of the training phase at multiplier 1."""
    rng = np.random.default_rng(seed)
    names = list(configs)
    rows = []
    order_global = 0
    for block in range(repeats):
        block_factor = math.exp(rng.normal(0, noise))
        order = rng.permutation(len(names) * len(models))
        for pos, i in enumerate(order):
            model, name = models[i // len(names)], names[i % len(names)]
            c = configs[name]
            for epoch in range(1, epochs + 1):
                warm = epoch <= warmup_epochs
                t = base_time * c.get("time", 1.0) * block_factor * (1 + drift * order_global)
                t *= math.exp(rng.normal(0, noise)) * (3.0 if warm else 1.0)
                train = t * (1 - eval_share)
                step = base_time * (1 - eval_share) * 0.5 / steps * c.get(
                    "step", c.get("time", 1.0)) * block_factor
                step_times = [step * math.exp(rng.normal(0, noise)) for _ in range(steps)]
                rows.append({
                    **_identity(model, name, c, f"{model}-{name}-r{block}", block),
                    "order": pos, "seed": block, "epoch": epoch, "method": "epochs",
                    "warmup": warm, "steps": steps, "epoch_s": t, "train_s": train,
                    "eval_s": t * eval_share, "step_s_median": float(np.median(step_times)),
                    "step_times": json.dumps(step_times), "compute_s": float(sum(step_times)),
                    "images_per_s": 1000 / t, "peak_mem_mb": 100.0,
                    "syncs_per_step": c.get("syncs", 1.0),
                    "top1": c.get("top1", 80.0) + rng.normal(0, c.get("top1_sd", 0.5)),
                    "top5": 99.0, "eval_images": 364, "train_loss": 0.5, "eval_loss": 0.6})
            order_global += 1
    return pd.DataFrame(rows)


def synthetic_steps(configs: dict[str, dict[str, Any]], *, models=("ivit_micro",),
                    sessions: int = 5, rounds: int = 6, step_time: float = 0.1,
                    noise: float = 0.02, instance_sd: float = 0.0, seed: int = 1
                    ) -> pd.DataFrame:
    """Rows of the step-interleaved method (``method = "steps"``): one per (model, config,
    session, round); a config's step is ``configs[name]["step"]`` (or "time") x
    ``step_time`` times a per-round factor, lognormal noise and, per session and config, a
    lognormal instance offset (sd ``instance_sd``: a model instance's lasting speed)."""
    rng = np.random.default_rng(seed)
    rows = []
    for model in models:
        for b in range(sessions):
            offset = {name: math.exp(rng.normal(0, instance_sd)) for name in configs}
            for r in range(rounds):
                round_factor = math.exp(rng.normal(0, noise))
                for name, c in configs.items():
                    t = step_time * c.get("step", c.get("time", 1.0)) * round_factor * \
                        offset[name] * math.exp(rng.normal(0, noise))
                    rows.append({
                        **_identity(model, name, c, f"{model}-{name}-steps-b{b}r{r}", b),
                        "repeat": r, "order": 0, "seed": b, "epoch": 1, "method": "steps",
                        "warmup": False, "steps": 1, "train_s": t, "compute_s": t,
                        "step_s_median": t, "step_times": json.dumps([t])})
    return pd.DataFrame(rows)
