"""The daemon's signal handlers (installed by ``swapd serve`` on the main thread).

SIGTERM/SIGINT stop the loop.  SIGHUP asks for a reload of the configuration
file (``ExecReload=`` of the unit): the handler only sets a flag and wakes the
loop, which reloads between events (swapd.daemon.control.reload), so a signal
arriving in the middle of a fault never runs code under the fault's locks.
"""

from __future__ import annotations

import signal
from typing import Protocol

__all__ = ["install_signal_handlers"]


class _Stoppable(Protocol):
    def stop(self) -> None: ...


def install_signal_handlers(daemon: _Stoppable) -> None:
    """SIGTERM/SIGINT stop the loop; SIGHUP requests a reload if the daemon can (main thread)."""
    def handler(signum: int, frame: object) -> None:
        daemon.stop()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    request_reload = getattr(daemon, "request_reload", None)
    if request_reload is not None:
        def hup(signum: int, frame: object) -> None:
            request_reload()

        signal.signal(signal.SIGHUP, hup)
