"""The environment of a ``python -m harness`` child in the harness tests: the repository and
tests/harness (for ``harness_tiny``) on PYTHONPATH, an optional injected fault, and an
optional thread count (one thread keeps two children from fighting over two cores)."""

import json
import os
from pathlib import Path

from harness.run.runner import FAULT_ENV

TESTS_HARNESS = Path(__file__).resolve().parent
REPO = TESTS_HARNESS.parent.parent


def child_env(fault: dict | None = None, omp_threads: int | None = None) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), str(TESTS_HARNESS)]))
    if omp_threads is not None:
        env["OMP_NUM_THREADS"] = str(omp_threads)
    env.pop(FAULT_ENV, None)
    if fault:
        env[FAULT_ENV] = json.dumps(fault)
    return env
