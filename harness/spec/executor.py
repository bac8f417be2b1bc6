"""Executor options: the ``[executor]`` table of a spec and its command-line options
(imports nothing heavy, so specs are checked before torch loads). See `harness.sweep.executors`."""

from __future__ import annotations

import argparse
import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any

from harness.spec.options import closest

__all__ = ["EXECUTORS", "CLUSTER_EXECUTORS", "ExecutorOptions", "parse_time_limit",
           "parse_options", "add_arguments", "options_from", "DEFAULT_TIME_LIMIT_MIN"]

EXECUTORS = ("local", "slurm", "submitit-local")
CLUSTER_EXECUTORS = ("slurm", "submitit-local")
DEFAULT_TIME_LIMIT_MIN = 60



# --- options -----------------------------------------------------------------------------

@dataclass(frozen=True)
class ExecutorOptions:
    """How and where the blocks of a sweep run (see the module docstring)."""

    kind: str = "local"
    partition: str | None = None
    gpus_per_job: int | None = None  # None: 1 when the runs are on cuda, else 0
    cpus_per_job: int | None = None
    mem_gb: float | None = None
    time_limit: int | str | None = None  # minutes, or [D-]HH:MM:SS
    max_parallel: int | None = None
    retries: int = 1
    setup: tuple[str, ...] = ()
    options: dict[str, Any] = field(default_factory=dict)
    poll_s: float = 5.0  # how often the submitting process looks at its jobs

    def __post_init__(self):
        kind = self.kind.replace("_", "-") if isinstance(self.kind, str) else self.kind
        if kind not in EXECUTORS:
            raise ValueError(f"executor kind must be one of {', '.join(EXECUTORS)}, got "
                             f"{self.kind!r}")
        object.__setattr__(self, "kind", kind)
        for name in ("gpus_per_job", "cpus_per_job", "max_parallel", "retries"):
            v = getattr(self, name)
            low = 1 if name in ("cpus_per_job", "max_parallel") else 0
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < low):
                raise ValueError(f"[executor].{name} must be an int >= {low}, got {v!r}")
        if self.mem_gb is not None and not (isinstance(self.mem_gb, (int, float))
                                            and self.mem_gb > 0):
            raise ValueError(f"[executor].mem_gb must be > 0, got {self.mem_gb!r}")
        if self.time_limit is not None:
            parse_time_limit(self.time_limit)
        if isinstance(self.setup, str):
            object.__setattr__(self, "setup", (self.setup,))
        object.__setattr__(self, "setup", tuple(self.setup))
        if not isinstance(self.options, dict):
            raise ValueError(f"[executor].options must be a table of sbatch options, got "
                             f"{self.options!r}")
        if not self.poll_s > 0:
            raise ValueError(f"poll_s must be > 0, got {self.poll_s}")

    def replace(self, **kw: Any) -> ExecutorOptions:
        return dataclasses.replace(self, **{k: v for k, v in kw.items() if v is not None})

    def time_limit_min(self) -> int:
        if self.time_limit is None:
            return DEFAULT_TIME_LIMIT_MIN
        return parse_time_limit(self.time_limit)


def parse_time_limit(value: int | str) -> int:
    """Minutes from an int, or a Slurm time string (MM, HH:MM:SS, D-HH[:MM[:SS]])."""
    if isinstance(value, bool):
        raise ValueError(f"time_limit must be minutes or [D-]HH:MM:SS, got {value!r}")
    if isinstance(value, (int, float)):
        if value <= 0:
            raise ValueError(f"time_limit must be > 0 minutes, got {value!r}")
        return int(-(-value // 1))
    m = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", str(value).strip())
    if not m:
        raise ValueError(f"time_limit must be minutes or [D-]HH:MM:SS, got {value!r}")
    d, a, b, c = m.groups()
    parts = [int(x) for x in (a, b, c) if x is not None]
    if d is None:  # MM | MM:SS | HH:MM:SS (Slurm's reading)
        days = 0
        if len(parts) == 1:
            h, mi, s = 0, parts[0], 0
        elif len(parts) == 2:
            h, mi, s = 0, parts[0], parts[1]
        else:
            h, mi, s = parts
    else:  # D-HH | D-HH:MM | D-HH:MM:SS
        days = int(d)
        h, mi, s = (parts + [0, 0])[:3]
    minutes = days * 1440 + h * 60 + mi + (1 if s else 0)
    if minutes <= 0:
        raise ValueError(f"time_limit must be > 0, got {value!r}")
    return minutes


_OPTION_KEYS = {f.name for f in dataclasses.fields(ExecutorOptions)} - {"poll_s"}


def parse_options(table: dict[str, Any] | None) -> ExecutorOptions:
    """Validate an ``[executor]`` table of a spec (ValueError naming what would be right)."""
    table = dict(table or {})
    for key in table:
        if key not in _OPTION_KEYS:
            hint = closest(key, sorted(_OPTION_KEYS))
            raise ValueError(f"[executor] has no key {key!r}{hint}; valid: "
                             f"{', '.join(sorted(_OPTION_KEYS))}")
    if "setup" in table and isinstance(table["setup"], list):
        table["setup"] = tuple(table["setup"])
    return ExecutorOptions(**table)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The executor's command-line options (``python -m harness ablate``)."""
    g = p.add_argument_group("executor (override the spec's [executor] table)")
    g.add_argument("--executor", choices=EXECUTORS, default=None,
                   help="local (default): one process per repeat block here; slurm: one "
                        "job per block through submitit; submitit-local: the same through "
                        "submitit's local executor")
    g.add_argument("--partition", help="Slurm partition")
    g.add_argument("--gpus-per-job", type=int, help="GPUs per job (default: 1 on cuda, else 0)")
    g.add_argument("--cpus-per-job", type=int, help="CPUs per job")
    g.add_argument("--mem-gb", type=float, help="memory per job (GB)")
    g.add_argument("--time-limit", help="per job: minutes or [D-]HH:MM:SS (default 60 min)")
    g.add_argument("--max-parallel", type=int, help="array tasks (blocks) running at once")
    g.add_argument("--retries", type=int, help="resubmissions of blocks whose job died "
                                               "(default 1)")
    g.add_argument("--slurm-option", action="append", default=[], metavar="KEY[=VALUE]",
                   help="extra sbatch option, e.g. account=proj, qos=high, exclusive "
                        "(repeatable)")


def options_from(table: dict[str, Any] | ExecutorOptions | None,
                 args: argparse.Namespace | None = None) -> ExecutorOptions:
    """The spec's ``[executor]`` table with the command line's options on top."""
    opts = table if isinstance(table, ExecutorOptions) else parse_options(table)
    if args is None:
        return opts
    extra = dict(opts.options)
    for item in getattr(args, "slurm_option", None) or []:
        key, eq, value = item.partition("=")
        key = key.strip().lstrip("-")
        if not key:
            raise ValueError(f"--slurm-option needs KEY[=VALUE], got {item!r}")
        extra[key] = value if eq else True
    time_limit = getattr(args, "time_limit", None)
    if isinstance(time_limit, str) and time_limit.isdigit():
        time_limit = int(time_limit)
    return opts.replace(kind=getattr(args, "executor", None),
                        partition=getattr(args, "partition", None),
                        gpus_per_job=getattr(args, "gpus_per_job", None),
                        cpus_per_job=getattr(args, "cpus_per_job", None),
                        mem_gb=getattr(args, "mem_gb", None), time_limit=time_limit,
                        max_parallel=getattr(args, "max_parallel", None),
                        retries=getattr(args, "retries", None), options=extra)
