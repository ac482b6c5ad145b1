"""``swapd corpus``: capture real pages to measure with (see :mod:`swapd.corpus`)."""

from __future__ import annotations

from swapd import corpus as _impl
from swapd.corpus import add_arguments, run

HELP = "capture real pages to measure with"
DESCRIPTION = _impl.__doc__
__all__ = ["DESCRIPTION", "HELP", "add_arguments", "run"]
