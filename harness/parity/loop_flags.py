"""Loop flags, classified from short harness runs (`harness.run.runner`, bit for bit on the final
losses and top-1), and the optimizer step isolated for ``fused_optimizer``."""

from __future__ import annotations

import json
import math
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

import qvit
from harness import records
from harness.analysis.parity_classes import match_label, pair_expectation
from harness.parity.config import ParityConfig, build_model, fixed_batches
from harness.parity.trajectory import rel_l2
from harness.run import runner
from harness.run.loop import build_optimizer, train_step
from harness.spec.settings import RunSettings
from qvit import Flags

__all__ = ["run_harness", "loop_parity_rows", "optimizer_step_parity"]

_LOOP_METRICS = ("train_loss", "eval_loss", "top1", "top5")  # compared across a toggle


def run_harness(model: str, configs: dict[str, Flags], out_dir: str | Path, *,
                seeds: Iterable[int] = (0,), img_size: int | None = None, epochs: int = 1,
                steps: int = 3, batch: int = 8, eval_steps: int = 2,
                eval_batch: int | None = None) -> pd.DataFrame:
    """Short harness runs, in this process, of every config and seed (``epochs`` x ``steps``
    steps of ``batch``, ``eval_steps`` eval batches of ``eval_batch`` (default: the run
    setting's default eval batch), on the CPU, no LR schedule, no sync counting); returns
    the results table of ``out_dir``. Digits where the model takes 32x32
    input, the synthetic set otherwise (bit comparison needs no labels that mean anything).
    The one place parity builds harness runs."""
    native = qvit.model_config(model)[1]["img_size"]
    dataset = "digits" if (img_size or native) == 32 else "synthetic"
    specs = [runner.RunSpec(config=name, flags=flags, settings=RunSettings(
        model=model, dataset=dataset, img_size=img_size, epochs=epochs, steps_per_epoch=steps,
        eval_steps=eval_steps, batch_size=batch, seed=seed, device="cpu", warmup_epochs=0,
        count_syncs="off", sched="none", pretrained=False, deterministic=True,
        **({} if eval_batch is None else {"eval_batch_size": eval_batch})))
             for seed in seeds for name, flags in configs.items()]
    runner.execute_block(specs, out_dir)
    return records.merge_shards(out_dir, remove=True)


def _loop_skip_reason(name: str, value: Any) -> str | None:
    # (compile_model is measured on the CPU too: compiled block by block, its cold start is
    # a block's, not the whole model's)
    if name == "compile_model" and value and sys.platform.startswith("win"):
        return "torch.compile is not supported on this platform"
    return None  # cuda_synchronize_per_step without CUDA: a no-op, measured anyway


def loop_parity_rows(model: str, base: Flags, toggles: list[tuple[str, Any]], *,
                     seed: int = 0, img_size: int | None = None, steps: int = 3,
                     batch: int = 8, epochs: int = 1, out_dir: str | Path | None = None,
                     log: Callable[[str], None] | None = print) -> list[dict]:
    """Loop flags from short harness runs (``epochs`` x ``steps`` steps, the same seed):
    final train/eval loss and top-1 compared bit for bit across each toggle."""
    skipped = {(n, v): why for n, v in toggles if (why := _loop_skip_reason(n, v))}
    configs = {"base": base}
    configs.update({f"{n}={v}": base.replace(**{n: v}) for n, v in toggles
                    if (n, v) not in skipped})
    with tempfile.TemporaryDirectory(prefix="parity-loop-") as tmp:
        t0 = time.perf_counter()
        table = run_harness(model, configs, tmp if out_dir is None else out_dir,
                            seeds=(seed,), img_size=img_size, epochs=epochs, steps=steps,
                            batch=batch)
    finals = _final_metrics(table)
    if log:
        log(f"[parity] {model}: {len(configs)} loop-flag runs in "
            f"{time.perf_counter() - t0:.1f}s")
    rows = []
    for n, v in toggles:
        base_m, got = finals.get("base"), finals.get(f"{n}={v}")
        if (n, v) in skipped:
            rows.append(_loop_row(model, base, n, v, "not measured", skipped[(n, v)]))
            continue
        if base_m is None or got is None:
            rows.append(_loop_row(model, base, n, v, "not measured",
                                  "harness run failed: " + _status_text(table, n, v)))
            continue
        opt = (optimizer_step_parity(model, base, v, seed=seed, img_size=img_size)
               if n == "fused_optimizer" else None)
        rows.append(_loop_measured_row(model, base, n, v, base_m, got, opt))
        if log:
            r = rows[-1]
            log(f"[parity] {model} {n}={v}: {r['measured_class']} "
                f"(expected {r['expected_class']}) {r['match']}")
    return rows


def _final_metrics(table: pd.DataFrame) -> dict[str, dict]:
    out = {}
    for cfg_name, t in table.groupby("config"):
        t = t.sort_values("epoch")
        if (t["status"].fillna("ok") != "ok").any() or not len(t):
            continue
        last = t.iloc[-1]
        out[cfg_name] = {k: float(last[k]) for k in _LOOP_METRICS if k in t}
    return out


def _status_text(table: pd.DataFrame, n: str, v: Any) -> str:
    t = table[table["config"] == f"{n}={v}"]
    if not len(t):
        return "no rows"
    last = t.iloc[-1]
    return f"{last.get('status', '?')} {str(last.get('error', ''))[:200]}"


def _loop_row(model, base, n, v, measured, note, **numbers) -> dict:
    spec = Flags.spec(n)
    expected = pair_expectation(n, getattr(base, n), v)
    row = dict(model=model, flag=n, scope="loop", change=spec.change,
               base=base.describe(), from_value=getattr(base, n), to_value=v,
               measured_class=measured, expected_class=expected,
               match=match_label(measured, expected), note=note,
               bound=json.dumps(spec.bound) if spec.bound else "")
    row.update(numbers)
    return row


def _loop_measured_row(model, base, n, v, a: dict, b: dict, optimizer: dict | None = None
                       ) -> dict:
    """Classify a loop flag from the final metrics of two harness runs. Training parity is
    judged on eval loss and top-1 (functions of the final parameters); the reported
    train_loss is an epoch mean whose summation may legitimately differ (flag 9 sums it on
    the device), so its difference is noted, not classified. ``optimizer``: the isolated
    optimizer-step measurement, for flags that act in the optimizer (fused_optimizer)."""
    keys = [k for k in ("eval_loss", "top1", "top5") if k in a]

    def same(k):
        return a[k] == b[k] or (math.isnan(a[k]) and math.isnan(b[k]))

    equal = all(same(k) for k in keys)
    notes = []
    if optimizer is not None:
        measured = optimizer["class"]
        how = "bit-identical" if optimizer["equal"] else f"rel L2 {optimizer['rel']:.3g}"
        notes.append(f"optimizer step isolated (identical gradients, {optimizer['k']} "
                     f"steps): params {how}")
        params_equal, params_rel = optimizer["equal"], optimizer["rel"]
    else:
        params_equal, params_rel = equal, (0.0 if equal else np.nan)
        if equal:
            measured = "exact"
        elif n == "num_workers":
            measured = "statistical"  # differs only through data order, by construction
        else:
            measured = "differs"
    notes.append("harness runs: final eval loss and top-1 bit-identical" if equal else
                 "harness runs: final " + ", ".join(f"{k} {a[k]:.6g} vs {b[k]:.6g}"
                                                   for k in keys if not same(k)))
    if not same("train_loss"):
        notes.append(f"reported train_loss {a['train_loss']:.9g} vs {b['train_loss']:.9g} "
                     f"(epoch mean accumulated differently)")
    return _loop_row(model, base, n, v, measured, "; ".join(notes),
                     params_equal_after_k=params_equal, params_rel_diff=params_rel)


def optimizer_step_parity(model: str, base: Flags, value: bool, *, steps: int = 3,
                          batch: int = 4, seed: int = 0, img_size: int | None = None,
                          lr: float = 1e-3, weight_decay: float = 0.05) -> dict:
    """fused_optimizer isolated: two copies of one model, the same gradients (computed on
    the first copy, copied to the second) for ``steps`` steps, the harness's optimizer built
    with ``fused`` = the base value and ``value``; parameters compared after each step."""
    cfg = ParityConfig(model=model, steps=max(steps, 2), batch=batch, seed=seed,
                       img_size=img_size)
    ma, mb = build_model(cfg, base, None), build_model(cfg, base, None)
    mb.load_state_dict(ma.state_dict())
    dev = torch.device("cpu")
    oa = build_optimizer(ma, opt="adamw", lr=lr, weight_decay=weight_decay,
                         fused=base.fused_optimizer, device=dev)
    ob = build_optimizer(mb, opt="adamw", lr=lr, weight_decay=weight_decay, fused=value,
                         device=dev)
    ma.train()
    for x, y in fixed_batches(cfg, steps, offset=4):
        train_step(ma, x, y)  # backward only: the gradients go to both optimizers
        for pa, pb in zip(ma.parameters(), mb.parameters(), strict=True):
            pb.grad = None if pa.grad is None else pa.grad.detach().clone()
        oa.step()
        ob.step()
    pa = torch.cat([p.detach().reshape(-1) for p in ma.parameters()])
    pb = torch.cat([p.detach().reshape(-1) for p in mb.parameters()])
    equal, rel = torch.equal(pa, pb), rel_l2(pa, pb)
    bound = (Flags.spec("fused_optimizer").bound or {}).get("params_rel_diff", 0.0)
    cls = "exact" if equal else ("near-exact" if rel <= bound else "differs")
    return {"class": cls, "equal": equal, "rel": rel, "k": steps}
