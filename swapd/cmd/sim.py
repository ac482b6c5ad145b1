"""``swapd sim``: replay traces through the real layer and policies (see :mod:`swapd.sim.cli`)."""

from __future__ import annotations

from swapd.sim import cli as _impl
from swapd.sim.cli import add_arguments, run

HELP = "replay traces through the real layer and policies"
DESCRIPTION = _impl.__doc__
__all__ = ["DESCRIPTION", "HELP", "add_arguments", "run"]
