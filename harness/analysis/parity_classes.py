"""Parity classes: classifying measurements, whether a measured class keeps a declared one,
and what a flag's move between two values is declared to keep."""

from __future__ import annotations

from typing import Any

from qvit import Flags

# Bound used to call a difference "near-exact" when the flag declares none.
DEFAULT_BOUND = {"forward_frac_differ": 1e-3, "forward_max_steps": 1.0}

# Every column of parity.csv, in order.
PARITY_COLUMNS = [
    "model", "flag", "scope", "change", "base", "from_value", "to_value", "measured_class",
    "expected_class", "match", "forward_max_steps", "forward_frac_differ", "forward_elements",
    "e2e_max_steps", "e2e_frac_differ", "logits_max_steps", "logits_frac_differ",
    "grad_rel_diff", "input_grad_rel_diff",
    "grads_equal", "params_equal_after_k", "params_rel_diff", "k_steps",
    "eval_drift_max_steps", "deployment_frac_differ", "deployment_max_steps",
    "deployment_elements", "deployment_frac_differ_base", "bound", "note", "seconds",
]

# The columns a reader is shown (the CLI's printed table, the reports); parity.csv keeps all.
SHOWN_COLUMNS = ("model", "flag", "from_value", "to_value", "expected_class", "measured_class",
                 "match", "forward_max_steps", "forward_frac_differ", "grad_rel_diff",
                 "params_equal_after_k", "deployment_frac_differ")


__all__ = ["classify", "satisfies", "pair_expectation", "match_label", "DEFAULT_BOUND",
           "PARITY_COLUMNS", "SHOWN_COLUMNS"]


def classify(m: dict, bound: dict[str, float] | None) -> str:
    """The parity class of measurements ``m`` (a row's numbers), judged against ``bound``
    (the flag's declared near-exact bound; `DEFAULT_BOUND` where it declares none).

    ``forward_*`` are local (teacher-forced: each segment between QuantActs from the base's
    values, so one flipped rounding is not counted again in everything downstream),
    ``e2e_*`` end to end; both only on bit-identical state, where a stale eval cache shows
    and the drift of diverged training does not. The bound applies to the local numbers."""
    forward_exact = m["forward_frac_differ"] == 0.0 and m.get("e2e_frac_differ", 0.0) == 0.0
    if forward_exact and m["grads_equal"] and m["params_equal_after_k"]:
        return "exact"
    b = dict(DEFAULT_BOUND if bound is None else bound)
    within = (m["forward_frac_differ"] <= b.get("forward_frac_differ", 0.0)
              and m["forward_max_steps"] <= b.get("forward_max_steps", 0.0))
    if "grad_rel_diff" in b:
        within = within and max(m["grad_rel_diff"], m["input_grad_rel_diff"]) <= b[
            "grad_rel_diff"]
    if "params_rel_diff" in b:
        within = within and m["params_rel_diff"] <= b["params_rel_diff"]
    elif forward_exact and m["grads_equal"]:
        within = False  # identical forward and gradients, yet training differs: unexplained
    if within:
        return "near-exact"
    if forward_exact and not m["grads_equal"]:
        return "forward-exact-gradient-differs"
    return "differs"


def satisfies(measured: str, expected: str) -> bool:
    """Whether a measured class keeps the promise of the declared one (``exact`` keeps every
    promise; ``statistical`` is kept by anything but ``differs``; ``differs`` promises
    nothing)."""
    if measured == expected or expected == "differs":
        return True
    if measured == "exact":
        return True
    if expected == "statistical":
        return measured != "differs"
    return False


# From the strongest promise to the weakest, for combining two declarations: a gradient
# beyond the near-exact bound is a weaker promise than a bounded difference.
_WEAKNESS = ("exact", "near-exact", "forward-exact-gradient-differs", "statistical", "differs")


def pair_expectation(name: str, from_value: Any, to_value: Any) -> str:
    """Expected class of moving flag ``name`` between two values: the declared class of the
    non-legacy one; between two non-legacy values, the weaker of the two declarations
    (e.g. layernorm_newton no_grad_sqrt_grad -> no_grad: forward-exact-gradient-differs)."""
    spec = Flags.spec(name)
    ea, eb = spec.expected_parity(from_value), spec.expected_parity(to_value)
    if from_value == to_value:
        return "exact"
    if ea == "exact":
        return eb
    if eb == "exact":
        return ea
    return max(ea, eb, key=_WEAKNESS.index)


def match_label(measured: str, expected: str) -> str:
    """The table's ``match`` column: ok, ok (stronger), MISMATCH or not measured."""
    if measured == "not measured":
        return "not measured"
    if measured == expected:
        return "ok"
    return "ok (stronger)" if satisfies(measured, expected) else "MISMATCH"
