"""scripts/mutants_ivit_constants.py stays applicable: each mutant's text occurs once in its
file, and there are at least ten (issue #28)."""
import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]


def _mutants():
    spec = importlib.util.spec_from_file_location(
        "mutants_ivit_constants", ROOT / "scripts" / "mutants_ivit_constants.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.IVIT_CONSTANT_MUTANTS


MUTANTS = _mutants()


def test_there_are_at_least_ten_with_distinct_names():
    assert len(MUTANTS) >= 10 and len({m.name for m in MUTANTS}) == len(MUTANTS)


@pytest.mark.parametrize("mutant", MUTANTS, ids=lambda m: m.name)
def test_mutant_applies_once(mutant):
    text = (ROOT / mutant.path).read_text()
    assert text.count(mutant.old) == 1, f"{mutant.name}: found {text.count(mutant.old)} times"
    assert mutant.old != mutant.new
    for test in mutant.tests:
        assert (ROOT / test.split("::")[0]).is_file(), f"{mutant.name}: no {test}"
