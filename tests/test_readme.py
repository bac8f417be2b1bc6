"""README.md is an entry point: short, every module in its Layout, every relative link of
README.md, docs/ and results/ resolving."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_readme_is_short():
    assert len(README) <= 10_000, f"README.md is {len(README)} characters"


def test_every_module_is_in_the_layout():
    layout = README[README.index("## Layout"):]
    for pkg in ("qvit", "harness"):
        for p in (ROOT / pkg).rglob("*.py"):
            if p.stem in ("__init__", "__main__"):
                continue
            assert re.search(rf"\b{p.stem}\b", layout), f"{p.relative_to(ROOT)} not in Layout"


def _markdown_files():
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md")),
            *sorted((ROOT / "results").rglob("*.md"))]


@pytest.mark.parametrize("path", _markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(path):
    text = path.read_text()
    text = re.sub(r"```.*?```", "", text, flags=re.S)
    missing = [t for t in re.findall(r"\]\(([^)\s]+)\)", text)
               if "://" not in t and not t.startswith(("#", "mailto:"))
               and not (path.parent / t.split("#")[0]).exists()]
    assert not missing, f"{path.relative_to(ROOT)}: {missing}"
