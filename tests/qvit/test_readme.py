"""The README's flag table is the declaration's, rendered: one source of truth."""

import re
from pathlib import Path

from qvit.flags import markdown_table


def test_readme_flag_table_matches_the_declaration():
    text = (Path(__file__).parents[2] / "README.md").read_text()
    block = re.search(r"<!-- flags-table:.*?-->\n(.*?)\n<!-- /flags-table -->", text, re.S)
    assert block, "README lost its flags-table markers"
    assert block.group(1) == markdown_table(), (
        "README flag table is stale: paste qvit.flags.markdown_table() between the markers")
