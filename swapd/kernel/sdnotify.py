"""sd_notify(3) without libsystemd: one datagram to ``$NOTIFY_SOCKET``.

The daemon tells systemd ``READY=1`` once its socket is served, ``STATUS=...``
on state changes and ``WATCHDOG=1`` from its main loop (``Type=notify``).  The
protocol is newline-separated ``KEY=VALUE`` assignments in one datagram to the
AF_UNIX socket named by ``$NOTIFY_SOCKET``; a leading ``@`` means the abstract
namespace.  Prior art: systemd ``src/libsystemd/sd-daemon/sd-daemon.c``.
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger(__name__)


def notify(state: str) -> bool:
    """Send ``state`` (e.g. ``"READY=1\nSTATUS=serving"``) to systemd; never blocks.

    Returns False without doing anything when ``$NOTIFY_SOCKET`` is unset, and
    False (logged at debug level) if the datagram cannot be sent; True once sent.
    The datagram goes with ``MSG_DONTWAIT``: a notification socket whose queue is
    full (a slow or vanished reader) must not stall a daemon's event loop.  A
    dropped ``STATUS=`` is harmless; ``READY=1`` is sent first, into an empty queue.
    """
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return False
    if path[0] == "@":
        path = "\0" + path[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(state.encode(), socket.MSG_DONTWAIT, path)
    except OSError as exc:
        log.debug("sd_notify %r to %r not delivered: %s", state,
                  os.environ.get("NOTIFY_SOCKET"), exc)
        return False
    return True


def watchdog_usec() -> int | None:
    """The watchdog interval systemd expects pings at (``$WATCHDOG_USEC``), or None.

    None also when ``$WATCHDOG_PID`` is set to another process.  Ping with
    ``notify("WATCHDOG=1")`` at half this interval.
    """
    pid = os.environ.get("WATCHDOG_PID")
    if pid and pid != str(os.getpid()):
        return None
    usec = os.environ.get("WATCHDOG_USEC", "")
    return int(usec) if usec.isdigit() and int(usec) > 0 else None
