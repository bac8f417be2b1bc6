"""The shape of the code: no import cycles in qvit/ or harness/ (imports inside functions
count), no function over 80 lines, no file over 600, one training step in the harness."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("qvit", "harness")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _sources() -> dict[str, Path]:
    return {_module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def _imports(name: str, path: Path, modules: set[str]) -> set[str]:
    """Modules of ours that ``name`` imports, anywhere in the file."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    tree = ast.parse(path.read_text())
    type_only = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
                 and getattr(node.test, "id", None) == "TYPE_CHECKING"
                 for n in ast.walk(node)}  # imports for annotations only: no runtime edge
    for node in ast.walk(tree):
        if id(node) in type_only:
            continue
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")
                up = up[:len(up) - (node.level - 1)]
                base = ".".join(up + ([base] if base else []))
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in modules:
                t = t.rpartition(".")[0]
            if t and t != name:
                out.add(t)
    return out


def _graph() -> dict[str, set[str]]:
    src = _sources()
    mods = set(src)
    # a package's __init__ is imported whenever one of its modules is
    return {n: _imports(n, p, mods) for n, p in src.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if m.startswith(n + "."):
                continue  # a package importing its own modules is no cycle
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if not state.get(m):
                found = visit(m)
                if found:
                    return found
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if not state.get(n):
            found = visit(n)
            if found:
                return found
    return None


def test_no_import_cycles():
    cycle = _cycle(_graph())
    assert cycle is None, " -> ".join(cycle)


def test_the_cycle_finder_finds_cycles():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


@pytest.mark.parametrize("name,path", sorted(_sources().items()))
def test_short_files_and_functions(name, path):
    text = path.read_text()
    assert text.count("\n") <= 600, f"{name}: {text.count(chr(10))} lines"
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            n = node.end_lineno - node.lineno + 1
            assert n <= 80, f"{name}.{node.name}: {n} lines"


def test_one_training_step_in_the_harness():
    calls = [p for p in (ROOT / "harness").rglob("*.py") if ".backward(" in p.read_text()]
    assert [p.name for p in calls] == ["loop.py"]
    assert (ROOT / "harness" / "run" / "loop.py").read_text().count(".backward(") == 1


def test_no_private_names_imported_across_modules():
    for name, path in _sources().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").split(
                    ".")[0] in PACKAGES):
                private = [a.name for a in node.names if a.name.startswith("_")
                           and not a.name.startswith("__")]
                assert not private, f"{name} imports private {private} from {node.module}"


# harness/ in the order of its pipeline: each package imports only packages before it
# (analysis skips the run and sweep packages: building a report never loads the trainer);
# the entry points (cli, pipeline) sit on top.
LAYERS = ("errors", "spec", "records", "run", "sweep", "analysis", "parity")
ALLOWED = {
    "errors": set(), "spec": {"errors"}, "records": {"errors", "spec"},
    "run": {"errors", "spec", "records"}, "sweep": {"errors", "spec", "records", "run"},
    "analysis": {"errors", "spec", "records"},
    "parity": {"errors", "spec", "records", "run", "analysis"},
}


def _layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == "harness" and len(parts) > 1 else None


def _upward_edges(graph: dict[str, set[str]]) -> list[str]:
    bad = []
    for name, targets in graph.items():
        here = _layer(name)
        if here not in ALLOWED:
            continue  # the entry points and the package itself
        for t in targets:
            there = _layer(t)
            if there is not None and there != here and there not in ALLOWED[here]:
                bad.append(f"{name} -> {t}")
    return sorted(bad)


def test_harness_packages_import_only_downward():
    graph = _graph()
    layers = {_layer(n) for n in graph if n.startswith("harness.")}
    assert layers - {None} <= set(ALLOWED) | {"cli", "pipeline", "__main__"}, layers
    assert _upward_edges(graph) == []


def test_the_layer_check_finds_an_upward_edge():
    assert _upward_edges({"harness.analysis.stats": {"harness.run.loop"},
                          "harness.run.loop": {"harness.spec.settings"}}) == [
        "harness.analysis.stats -> harness.run.loop"]


def test_building_a_report_imports_nothing_of_the_trainer():
    import subprocess
    import sys

    code = ("import sys, harness.analysis.report, harness.analysis.equivalence; "
            "print(sorted(m for m in sys.modules if m.split('.')[:2] in "
            "(['harness', 'run'], ['harness', 'sweep'], ['harness', 'parity'])))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT, check=True).stdout
    assert out.strip() == "[]"


def test_modules_that_name_the_repository_find_it():
    """A module moved one package deeper must still find the repository (the code digest
    hashes qvit/ and harness/; provenance asks git there)."""
    from harness.records import provenance
    from harness.spec import settings

    assert settings._ROOT == ROOT and provenance._REPO == ROOT
    assert any(p.name == "flags.py" for p in settings._sources())


def test_no_two_test_files_share_a_name():
    names = [p.name for p in (ROOT / "tests").rglob("test_*.py")]
    assert sorted({n for n in names if names.count(n) > 1}) == []
