"""scripts/mutants.py stays applicable: every mutant's text is found once in its file (a
mutant whose code moved is reported "stale" and checks nothing; two went stale unseen)."""
import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]


def _module():
    spec = importlib.util.spec_from_file_location("mutants", ROOT / "scripts" / "mutants.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["mutants"] = module  # (its dataclasses look their module up)
    spec.loader.exec_module(module)
    return module


def _mutants():
    return _module().MUTANTS


@pytest.mark.parametrize("mutant", _mutants(), ids=lambda m: m.name)
def test_mutant_applies_once(mutant):
    text = (ROOT / mutant.path).read_text()
    assert text.count(mutant.old) == 1, (
        f"{mutant.name}: its text occurs {text.count(mutant.old)} times in {mutant.path}; "
        "update the mutant to the code as it is now")
    assert mutant.old != mutant.new
    for test in mutant.tests:
        path = test.split("::")[0]
        if path.endswith(".py"):
            assert (ROOT / path).is_file(), f"{mutant.name}: no {path}"


def test_mutant_names_are_unique():
    names = [m.name for m in _mutants()]
    assert len(names) == len(set(names))


def test_a_sibling_list_of_mutants_joins_the_check(tmp_path):
    """scripts/mutants_ivit_constants.py's IVIT_CONSTANT_MUTANTS is appended when the file
    exists; it may import the script as ``mutants``."""
    module = _module()
    extra = tmp_path / "extra_mutants.py"
    extra.write_text(
        "from mutants import M, REF\n"
        "IVIT_CONSTANT_MUTANTS = [M('a', 'qvit/ivit.py', 'x', 'y', (REF,), 'w'),\n"
        "                         ('b', 'qvit/ivit.py', 'x', 'z', (REF,), 'w')]\n")
    got = module._extra_mutants(extra)
    assert [m.name for m in got] == ["a", "b"]
    assert all(isinstance(m, module.Mutant) for m in got)
    assert module._extra_mutants(tmp_path / "absent.py") == []
