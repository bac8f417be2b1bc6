"""``python -m harness parity``: the parity table of one or more models, written to
``parity.csv`` and printed; exit 1 when a measured class breaks its flag's declaration.

The options are generated from `ParityConfig` (one ``--kebab-case`` option per field, its
description as help), plus ``--model`` (repeat or comma-separate for several models) and
``--out``."""

from __future__ import annotations

import argparse
import math
import sys

import pandas as pd

from harness.errors import friendly_errors
from harness.parity.config import SHOWN_COLUMNS, ParityConfig
from harness.parity.table import run_parity
from harness.records.files import write_text
from harness.records.outdir import claim_out_dir
from harness.spec.options import add_options, validated, values_from_args

__all__ = ["format_table", "main"]


def format_table(df: pd.DataFrame) -> str:
    """A readable fixed-width table of the shown columns (`SHOWN_COLUMNS`)."""
    show = df[[c for c in SHOWN_COLUMNS if c in df]].copy()

    def fmt(v):
        if isinstance(v, float):
            if math.isnan(v):
                return "-"
            return "0" if v == 0 else f"{v:.3g}"
        return str(v)

    show = show.map(fmt) if hasattr(show, "map") else show.applymap(fmt)
    return show.to_string(index=False)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m harness parity",
        description="Toggle each flag alone on the same weights, ranges and inputs; measure "
                    "forward, backward, training and deployment parity; compare the class "
                    "with the flag's declaration (exit 1 on a mismatch).")
    p.add_argument("--model", action="append", dest="models", metavar="MODEL",
                   help="model name (repeat or comma-separate for several; default ivit_micro)")
    p.add_argument("--out", required=True, help="folder for parity.csv (one per model: "
                   "DIR/parity.csv for one model, DIR/<model>/parity.csv for several)")
    add_options(p, ParityConfig, exclude=("model",))
    return p


def _configs(p: argparse.ArgumentParser, args: argparse.Namespace) -> list[ParityConfig]:
    models = [m for spec in (args.models or ["ivit_micro"]) for m in spec.split(",") if m]
    values = values_from_args(ParityConfig, args)
    try:
        return [validated(ParityConfig, {**values, "model": m}) for m in models]
    except ValueError as e:
        p.error(str(e))


@friendly_errors
def main(argv: list[str] | None = None) -> int:
    p = _parser()
    args = p.parse_args(argv)
    mismatches = []
    configs = _configs(p, args)
    root = claim_out_dir(args.out, "parity", ",".join(c.model for c in configs))
    for cfg in configs:
        df = run_parity(cfg, log=lambda s: print(s, file=sys.stderr, flush=True))
        out = root / cfg.model if len(configs) > 1 else root
        out.mkdir(parents=True, exist_ok=True)
        write_text(out / "parity.csv", df.to_csv(index=False))
        print(f"\n== parity of {cfg.model} (base {cfg.base}"
              + (f" -> {cfg.to}" if cfg.to else "") + f"): {out / 'parity.csv'}")
        print(format_table(df))
        bad = df[df["match"] == "MISMATCH"]
        mismatches.extend(f"{cfg.model} {r.flag}={r.to_value}: measured {r.measured_class}, "
                          f"declared {r.expected_class} ({r.note})" for r in bad.itertuples())
    if mismatches:
        print("\n" + "!" * 78 + "\nPARITY MISMATCH against the flag declarations "
              "(qvit/flags.py):\n  " + "\n  ".join(mismatches) + "\n" + "!" * 78,
              file=sys.stderr)
        return 1
    print("\nevery measured flag satisfies its declared parity class")
    return 0
