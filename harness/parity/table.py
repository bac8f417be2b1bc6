"""The parity table of a model: every flag (or a preset pair's differing flags) toggled alone
from the base, module flags measured on the model, loop flags from short harness runs."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import pandas as pd
import torch

from harness.parity.config import PARITY_COLUMNS, ParityConfig
from harness.parity.loop_flags import loop_parity_rows
from harness.parity.module_flags import measure_flag, prepare_baseline
from qvit import Flags
from qvit.paths import why_same
from qvit.variants import VARIANTS

__all__ = ["toggles", "parity_table", "run_parity"]


def toggles(base: Flags, scope: str, flags: Iterable[str] | None, to: Flags | None,
            *, family: str | None = None, acting: bool = True) -> list[tuple[str, Any]]:
    """(flag, value) pairs of ``scope`` to move alone from ``base``: to every other value of
    each flag (both sides of a switch), or with ``to`` to its value where it differs.
    Only the moves that change what runs on a model of ``family`` (`qvit.paths`);
    ``acting=False``: only the others (the moves that cannot act there)."""
    return [(n, v) for n, v in _all_toggles(base, scope, flags, to)
            if (why_same(base, base.replace(**{n: v}), family=family) is None) == acting]


def _all_toggles(base: Flags, scope: str, flags: Iterable[str] | None, to: Flags | None
                 ) -> list[tuple[str, Any]]:
    names = list(flags) if flags else list(Flags.names(scope))
    for n in names:
        Flags.spec(n)
    out = []
    for n in names:
        spec = Flags.spec(n)
        if spec.scope != scope:
            continue
        if to is not None:
            if getattr(to, n) != getattr(base, n):
                out.append((n, getattr(to, n)))
            continue
        values = list(spec.values())
        if spec.type is bool:  # both sides of a switch, even where every preset is off
            values += [v for v in (False, True) if v not in values]
        out.extend((n, v) for v in values if v != getattr(base, n))
    return out


def parity_table(model: str = "ivit_micro", *, log: Callable[[str], None] | None = print,
                 **settings) -> pd.DataFrame:
    """One row per (flag, value) toggled alone from preset ``base`` (to every other value of
    the flag, or, with preset ``to``, to that preset's value for each flag the two differ
    in): module flags measured on the model, loop flags from short harness runs.
    ``settings``: the fields of `ParityConfig` (base, to, flags, steps, batch, seed,
    img_size, loop, loop_steps, loop_epochs, threads, ...)."""
    return run_parity(ParityConfig(model=model, **settings), log=log)


def run_parity(cfg: ParityConfig, *, log: Callable[[str], None] | None = print
               ) -> pd.DataFrame:
    """`parity_table` for a config; torch runs on ``cfg.threads`` intra-op threads while
    measuring (restored after)."""
    previous = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    try:
        return _table(cfg, log)
    finally:
        torch.set_num_threads(previous)


NO_EFFECT = "no effect possible"


def _inert_row(model: str, base: Flags, name: str, value: Any, family: str) -> dict:
    """A move that runs the base's code: not measured, said so."""
    spec = Flags.spec(name)
    return dict(model=model, flag=name, scope=spec.scope, change=spec.change,
                base=base.describe(), from_value=getattr(base, name), to_value=value,
                measured_class=NO_EFFECT, expected_class=NO_EFFECT, match="ok",
                note=why_same(base, base.replace(**{name: value}), family=family))


def _table(cfg: ParityConfig, log: Callable[[str], None] | None) -> pd.DataFrame:
    base_flags = Flags.preset(cfg.base)
    to_flags = Flags.preset(cfg.to) if cfg.to else None
    rows = []
    family = VARIANTS[cfg.model][0]
    for scope in ("module", "loop") if cfg.loop else ("module",):
        for name, value in toggles(base_flags, scope, cfg.flags, to_flags, family=family,
                                   acting=False):
            rows.append(_inert_row(cfg.model, base_flags, name, value, family))
    module = toggles(base_flags, "module", cfg.flags, to_flags, family=family)
    if module:
        t0 = time.perf_counter()
        baseline = prepare_baseline(cfg, base_flags)
        if log:
            log(f"[parity] {cfg.model}: base {cfg.base} calibrated and run in "
                f"{time.perf_counter() - t0:.1f}s")
        for name, value in module:
            row = measure_flag(baseline, name, value)
            rows.append(row)
            if log:
                log(f"[parity] {cfg.model} {name}={value}: {row['measured_class']} "
                    f"(expected {row['expected_class']}) {row['match']} [{row['seconds']}s]")
    loop_t = toggles(base_flags, "loop", cfg.flags, to_flags, family=family) if cfg.loop else []
    if loop_t:
        rows.extend(loop_parity_rows(cfg.model, base_flags, loop_t, seed=cfg.seed,
                                     img_size=cfg.img_size, steps=cfg.loop_steps,
                                     epochs=cfg.loop_epochs, batch=max(cfg.batch, 8),
                                     log=log))
    df = pd.DataFrame(rows)
    for c in PARITY_COLUMNS:
        if c not in df:
            df[c] = np.nan
    return df[PARITY_COLUMNS]
