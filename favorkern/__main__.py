"""``python -m favorkern``: the command line (as the ``favorkern`` script)."""

import sys

from .cli import main

sys.exit(main())
