"""README's "Accuracy parity in your own tests" runs as written: its shell command (the
defaults are the shipped recipe, #26), then its Python block's test against the table the
command wrote. The command and the code are read from README.md, so they cannot drift.

Five blocks, as the shipped specs run: at three, best vs legacy on ivit_micro measured a 90% CI
of [-1.15, +0.78] top-1 points (TOST p 0.066 at +-1, not shown); at four [-0.70, +0.42]. The
two differ in flags not declared exact, so a TOST, not equality."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SECTION = "### Accuracy parity in your own tests"


def readme_example() -> tuple[list[str], str]:
    """(the section's ``python -m harness`` command, its Python block)."""
    text = (ROOT / "README.md").read_text()
    assert SECTION in text, f"README.md lost its section {SECTION!r}"
    section = text.split(SECTION, 1)[1].split("\n## ", 1)[0].split("\n### ", 1)[0]
    shell = re.search(r"```bash\n(.*?)```", section, re.S)
    code = re.search(r"```python\n(.*?)```", section, re.S)
    assert shell and code, "the section needs a ```bash and a ```python block"
    command = shlex.split(shell.group(1).replace("\\\n", " "))
    assert command[:3] == ["python", "-m", "harness"], command
    return [sys.executable, *command[1:]], code.group(1)


@pytest.mark.slow
def test_readme_accuracy_parity_example_runs_as_written(tmp_path, monkeypatch):
    command, code = readme_example()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=1800)
    assert done.returncode == 0, done.stderr[-3000:]
    monkeypatch.chdir(tmp_path)  # the example reads its folder relative to where it ran
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    tests = [f for name, f in namespace.items() if name.startswith("test_")]
    assert tests, "the README's Python block defines no test"
    for test in tests:
        test()
