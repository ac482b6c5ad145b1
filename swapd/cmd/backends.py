"""``swapd backends``: list the allocator backends (entry points ``swapd.backends``).

A backend that fails to load is listed with the reason; the others still load.  The listing
names the implementation that runs them (compiled or the pure-Python reference, see
swapd/impl.py): the table's caption, and "impl" in every JSON entry.
Exit status is 0 when at least one backend loaded.
"""

from __future__ import annotations

import argparse

from swapd.cmd._plugins import add_arguments, list_group
from swapd.plugins import BACKENDS_GROUP

HELP = "list allocator backends and their load status"
__all__ = ["HELP", "add_arguments", "run"]


def run(args: argparse.Namespace) -> int:
    """List the allocator backends; returns the exit status."""
    from swapd.impl import describe

    return list_group(BACKENDS_GROUP, "allocator backends (entry points: swapd.backends)", args,
                      extra={"impl": describe()})
