"""``python -m harness``: see `harness.cli`."""

import os
import sys

# qvit loads torch and timm on first use only: bad input is refused before they load
os.environ.setdefault("QVIT_DEFER_IMPORTS", "1")

from harness.cli import main  # noqa: E402

sys.exit(main())
