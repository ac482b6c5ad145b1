"""``python -m swapd``: the same as the ``swapd`` command."""

import sys

from swapd.cli import main

sys.exit(main())
