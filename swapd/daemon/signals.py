"""The daemon's signal handlers (installed by ``swapd serve`` on the main thread)."""

from __future__ import annotations

import signal
from typing import Protocol

__all__ = ["install_signal_handlers"]


class _Stoppable(Protocol):
    def stop(self) -> None: ...


def install_signal_handlers(daemon: _Stoppable) -> None:
    """SIGTERM/SIGINT stop the loop (main thread only)."""
    def handler(signum: int, frame: object) -> None:
        daemon.stop()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
