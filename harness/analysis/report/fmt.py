"""Formatting for reports: markdown tables, ratios with their intervals, points."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["md_table", "ci", "pp", "pp_ci", "mean_sd", "isnan", "drop_empty"]


def isnan(v: Any) -> bool:
    return v is None or (isinstance(v, (float, np.floating)) and math.isnan(v))


def _cell(v: Any, digits: int = 3) -> str:
    if isnan(v):
        return ""
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else ""
    if isinstance(v, (float, np.floating)):
        return f"{v:.{digits}g}" if abs(v) < 10 ** digits else f"{v:.0f}"
    return str(v).replace("|", "\\|")


def drop_empty(df: pd.DataFrame) -> pd.DataFrame:
    """Without the columns no row fills (a method the design did not use)."""
    return df[[c for c in df.columns if df[c].map(lambda v: not isnan(v) and v != "").any()
               or c in ("model", "config")]]


def md_table(df: pd.DataFrame, digits: int = 3) -> str:
    """A GitHub-flavoured markdown table (no tabulate dependency)."""
    if df.empty:
        return "_(empty)_\n"
    cols = [str(c) for c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for row in df.itertuples(index=False):
        lines.append("| " + " | ".join(_cell(v, digits) for v in row) + " |")
    return "\n".join(lines) + "\n"


def ci(v: float, lo: float, hi: float, fmt: str = "{:.2f}", suffix: str = "") -> str:
    """``1.23 [1.10, 1.37]``; ``1.23 [n/a]`` without an interval (one block)."""
    if isnan(v):
        return ""
    text = fmt.format(v) + suffix
    return text + (" [n/a]" if isnan(lo) or isnan(hi) else
                   f" [{fmt.format(lo)}, {fmt.format(hi)}]")


def pp(v: float) -> str:  # top-1 percentage points (the runner records top-1 in percent)
    return "" if isnan(v) else f"{v:+.2f}"


def pp_ci(v: float, lo: float, hi: float) -> str:
    if isnan(v):
        return ""
    return f"{pp(v)} [n/a]" if isnan(lo) else f"{pp(v)} [{pp(lo)}, {pp(hi)}]"


def mean_sd(m: float, sd: float) -> str:
    if isnan(m):
        return ""
    return f"{m:.1f}" + ("" if isnan(sd) else f" ({sd:.1f})")
