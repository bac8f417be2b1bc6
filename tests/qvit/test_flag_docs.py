"""docs/flags.md's tables are the declaration's, rendered: one source of truth."""

import re
from pathlib import Path

import pytest

from qvit.flags import markdown_table, renamed_table

DOC = Path(__file__).parents[2] / "docs" / "flags.md"


@pytest.mark.parametrize("marker, render", [("flags-table", markdown_table),
                                            ("renamed-table", renamed_table)])
def test_docs_flag_tables_match_the_declaration(marker, render):
    text = DOC.read_text()
    block = re.search(rf"<!-- {marker}:.*?-->\n(.*?)\n<!-- /{marker} -->", text, re.S)
    assert block, f"docs/flags.md lost its {marker} markers"
    assert block.group(1) == render(), (
        f"docs/flags.md {marker} is stale: paste qvit.flags.{render.__name__}() between "
        "the markers")


def test_no_flag_is_a_no_op_in_best_unless_the_table_says_so():
    from qvit import Flags
    from qvit.paths import inert

    head, _, *lines = markdown_table().splitlines()
    column = [c.strip() for c in head.split("|")].index("acts in")
    rows = {r.split("|")[1].strip().strip("`"): r for r in lines}
    for name in inert(Flags.preset("best")):
        acts_in = rows[name].split("|")[column]
        assert "best" not in acts_in.split(", "), name
