"""Parity: what each flag does to the numbers, measured, classified and checked against the
expectation declared with the flag (`qvit.FlagSpec.expected_parity`, `FlagSpec.bound`).

Module flags are measured on the model itself. One model is built under the base preset
(``legacy`` by default) and calibrated (a few seeded AdamW steps on fixed batches, so that
every QuantAct has a range); its state dict is the common start. For each flag and each of
its other values, a second model loads the same state under ``base.replace(flag=value)`` and
both run in lockstep on the same batches:

- **forward**: eval logits and every QuantAct's requantized integers (captured by forward
  hooks, ``q = out / scale``), as the largest difference in quantization steps of the
  base's tensor and the fraction of elements that differ. Counted on every forward where
  both models hold bit-identical state: the first eval, each training forward, and each
  eval after an optimizer step as long as training has not diverged;
- **backward**: relative L2 difference of the parameter gradients and the input gradient;
- **training**: ``k`` optimizer steps on fixed batches with an eval phase (two eval batches:
  cache fill and cache hit) after each step, i.e. train -> eval -> train -> eval cycles, the
  sequence where the seed's naive caches 10 and 12 go stale; then whether the parameters
  are bit-identical and their relative L2 distance;
- **deployment fidelity**: each requantizing QuantAct's integers against a pure int64
  dyadic reference (`frexp_device` + `dyadic_requantize_int64`) of what an integer-only
  deployment computes from the same input integers and scales.

Each flag is classified ``exact``, ``forward-exact-gradient-differs``, ``near-exact``
(within the flag's declared bound, or `DEFAULT_BOUND`) or ``differs``; loop flags are
classified from short harness runs (`harness.run.runner`), bit for bit on the final losses and
top-1. A measured class that does not satisfy the declared one is a MISMATCH: printed
loudly, and the CLI exits non-zero.

Accuracy parity over a results table of harness sweeps (exact identity, or a TOST over
seeds) lives in `harness.analysis.equivalence`.

The package by job: `config` (ParityConfig, the columns, the fixed model/data/optimizer),
`deployment` (the int64 reference), `recorder` (forward hooks, teacher forcing, tensor
distances), `trajectory` (one model's recorded schedule), `classify` (parity classes),
`module_flags` and `loop_flags` (the two measurements), `table` (the whole table) and `cli`.

    python -m harness parity --model ivit_micro --out runs/parity/ivit_micro
"""

from harness.analysis.parity_classes import classify, match_label, pair_expectation, satisfies
from harness.parity.cli import format_table, main
from harness.parity.config import (
    DEFAULT_BOUND,
    PARITY_COLUMNS,
    SHOWN_COLUMNS,
    ParityConfig,
    build_model,
    fixed_batches,
    parity_optimizer,
)
from harness.parity.deployment import deployment_reference
from harness.parity.loop_flags import loop_parity_rows, optimizer_step_parity, run_harness
from harness.parity.module_flags import Baseline, measure_flag, prepare_baseline
from harness.parity.recorder import ActivationRecorder, Records, TensorStats, compare_records
from harness.parity.table import parity_table, run_parity, toggles
from harness.parity.trajectory import Trajectory, run_trajectory

__all__ = [
    "PARITY_COLUMNS", "SHOWN_COLUMNS", "DEFAULT_BOUND", "ParityConfig", "Baseline",
    "measure_flag", "prepare_baseline", "parity_table", "run_parity", "toggles",
    "loop_parity_rows", "optimizer_step_parity", "run_harness", "classify", "satisfies",
    "pair_expectation", "match_label", "deployment_reference", "ActivationRecorder",
    "Records", "TensorStats", "compare_records", "Trajectory", "run_trajectory",
    "build_model", "fixed_batches", "parity_optimizer", "format_table", "main",
]
