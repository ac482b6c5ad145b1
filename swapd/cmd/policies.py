"""``swapd policies``: list the victim-selection policies (entry points ``swapd.policies``).

A policy that fails to load is listed with the reason; the others still load.
Exit status is 0 when at least one policy loaded.
"""

from __future__ import annotations

import argparse

from swapd.cmd._plugins import add_arguments, list_group
from swapd.plugins import POLICIES_GROUP

HELP = "list victim-selection policies and their load status"
__all__ = ["HELP", "add_arguments", "run"]


def run(args: argparse.Namespace) -> int:
    """List the policies; returns the exit status."""
    return list_group(POLICIES_GROUP, "policies (entry points: swapd.policies)", args)
