"""sd_notify(3) and sd_listen_fds(3) without libsystemd: the daemon's side of the service manager.

Notifications.  The daemon tells its manager ``READY=1`` once its socket is
served, ``STATUS=...`` on state changes and ``WATCHDOG=1`` from its main loop
(``Type=notify``).  The protocol is newline-separated ``KEY=VALUE`` assignments
in one datagram to the AF_UNIX socket named by ``$NOTIFY_SOCKET``; a leading
``@`` means the abstract namespace.

The file descriptor store.  A datagram carrying ``FDSTORE=1`` and descriptors
(``SCM_RIGHTS``) asks the manager to keep them, under the name ``FDNAME=`` (at
most 255 printable ASCII characters, no ``:``; ``stored`` if absent).  The
manager watches each stored descriptor for ``EPOLLERR``/``EPOLLHUP`` and drops
it when one is reported, unless the datagram also says ``FDPOLL=0``: a
userfaultfd that is blocking or not yet initialised polls as ``EPOLLERR``
(``fs/userfaultfd.c``, ``userfaultfd_poll``), and a pidfd of a reaped process
polls as ``EPOLLHUP``, so both are stored with ``FDPOLL=0``.  A descriptor
equal to one already stored is not stored twice.  ``FDSTOREREMOVE=1`` with
``FDNAME=`` closes every stored descriptor of that name.  On the next start the
manager passes its socket units' descriptors and then the stored ones from fd
3 on, with ``LISTEN_FDS`` (the count), ``LISTEN_FDNAMES`` (``:``-separated
names) and ``LISTEN_PID`` (the new process's pid); ``FDSTORE`` holds the
store's capacity (``FileDescriptorStoreMax=``).  The stored descriptors stay in
the store while the new process runs: a daemon removes what it no longer needs.
Semantics follow systemd ``src/core/service.c`` (``service_notify_message``,
``service_add_fd_store``, ``service_collect_fds``) and
``src/libsystemd/sd-daemon/sd-daemon.c``.  :mod:`swapd.kernel.fdstore` is the
manager's side of the same protocol (``swapd supervise``).

A store request must not be dropped silently (the descriptor would be lost at
the next crash), so it is sent blocking, with a timeout; status datagrams are
sent with ``MSG_DONTWAIT`` and may be dropped.
"""

from __future__ import annotations

import array
import logging
import os
import socket
from typing import Final

log = logging.getLogger(__name__)

SD_LISTEN_FDS_START: Final = 3  # <systemd/sd-daemon.h>
FDNAME_MAX: Final = 255  # src/basic/fd-util.c, fdname_is_valid()
SCM_MAX_FD: Final = 253  # include/net/scm.h: descriptors per SCM_RIGHTS message
_STORE_TIMEOUT_S: Final = 5.0


def _address() -> str | None:
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return None
    return "\0" + path[1:] if path[0] == "@" else path


def notify(state: str) -> bool:
    """Send ``state`` (e.g. ``"READY=1\nSTATUS=serving"``) to the manager; never blocks.

    Returns False without doing anything when ``$NOTIFY_SOCKET`` is unset, and
    False (logged at debug level) if the datagram cannot be sent; True once sent.
    The datagram goes with ``MSG_DONTWAIT``: a notification socket whose queue is
    full (a slow or vanished reader) must not stall a daemon's event loop.  A
    dropped ``STATUS=`` is harmless; ``READY=1`` is sent first, into an empty queue.
    """
    path = _address()
    if path is None:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(state.encode(), socket.MSG_DONTWAIT, path)
    except OSError as exc:
        log.debug("sd_notify %r to %r not delivered: %s", state,
                  os.environ.get("NOTIFY_SOCKET"), exc)
        return False
    return True


def fdname_is_valid(name: str) -> bool:
    """A name the manager accepts in ``FDNAME=``/``LISTEN_FDNAMES`` (systemd's rule)."""
    return (len(name) <= FDNAME_MAX and ":" not in name
            and all(" " <= ch < "\x7f" for ch in name))


def store_capacity() -> int:
    """The manager's fd store capacity (``$FDSTORE``), 0 when there is no store.

    systemd sets ``FDSTORE=`` to ``FileDescriptorStoreMax=`` since v254; with an
    older systemd the unit sets it with ``Environment=`` (systemd/swapd.service).
    """
    if _address() is None:
        return 0
    v = os.environ.get("FDSTORE", "")
    return int(v) if v.isdigit() else 0


def _send_blocking(data: bytes, fds: list[int]) -> bool:
    path = _address()
    if path is None:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.settimeout(_STORE_TIMEOUT_S)
            anc = ([(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())]
                   if fds else [])
            sock.sendmsg([data], anc, 0, path)
    except OSError as exc:
        log.error("fd store request %r not delivered to %r: %s", data[:80],
                  os.environ.get("NOTIFY_SOCKET"), exc)
        return False
    return True


def store_fds(name: str, fds: list[int], *, poll: bool = True) -> bool:
    """Ask the manager to keep ``fds`` under ``name`` (``FDSTORE=1``); True once sent.

    ``poll=False`` sends ``FDPOLL=0`` (for userfaultfds and pidfds, see the module
    docstring).  More than :data:`SCM_MAX_FD` descriptors go in several datagrams.
    Raises ValueError for a name the manager would refuse.  The caller keeps its
    own copies (the manager receives duplicates).
    """
    if not fdname_is_valid(name):
        raise ValueError(f"fd store name {name!r} is invalid (at most {FDNAME_MAX} printable "
                         "ASCII characters, no ':')")
    msg = f"FDSTORE=1\nFDNAME={name}" + ("" if poll else "\nFDPOLL=0")
    ok = True
    for i in range(0, len(fds), SCM_MAX_FD):
        ok = _send_blocking(msg.encode(), fds[i:i + SCM_MAX_FD]) and ok
    return ok


def remove_fds(name: str) -> bool:
    """Ask the manager to close every stored descriptor named ``name``; True once sent."""
    if not fdname_is_valid(name) or not name:
        raise ValueError(f"fd store name {name!r} is invalid")
    return _send_blocking(f"FDSTOREREMOVE=1\nFDNAME={name}".encode(), [])


def listen_fds(*, unset_environment: bool = True) -> list[tuple[int, str]]:
    """The descriptors passed by the manager, as ``(fd, name)`` from fd 3 on (sd_listen_fds).

    Empty unless ``$LISTEN_PID`` is this process and ``$LISTEN_FDS`` is a count.
    Each passed descriptor is made close-on-exec.  A missing or short
    ``$LISTEN_FDNAMES`` names the rest ``unknown``.  With ``unset_environment``
    the three variables are removed (so a child does not take them for its own).
    """
    pid = os.environ.get("LISTEN_PID", "")
    count = os.environ.get("LISTEN_FDS", "")
    names = os.environ.get("LISTEN_FDNAMES")
    if unset_environment:
        for k in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
            os.environ.pop(k, None)
    if not pid.isdigit() or int(pid) != os.getpid() or not count.isdigit():
        return []
    n = int(count)
    split = names.split(":") if names else []
    out: list[tuple[int, str]] = []
    for i in range(n):
        fd = SD_LISTEN_FDS_START + i
        try:
            os.set_inheritable(fd, False)
        except OSError as exc:
            log.error("LISTEN_FDS: descriptor %d is not open: %s", fd, exc)
            continue
        out.append((fd, split[i] if i < len(split) else "unknown"))
    return out


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
