import sys

from harness.parity.cli import main

sys.exit(main())
