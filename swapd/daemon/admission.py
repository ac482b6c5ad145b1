"""Admission: who may connect, and how a connection becomes a session.

Authentication is the peer's ``SO_PEERCRED`` uid/gid (and ``SO_PEERGROUPS``):
root, the daemon's own uid, or a user or group of ``[daemon] allowed_users`` /
``allowed_groups``.  The quotas checked here are ``max_clients`` and
``max_sessions_per_uid`` (so one user cannot take every session; root and the
daemon's own uid, who can stop the daemon anyway, are not capped); per-session
quotas are checked by the requests (:mod:`swapd.daemon.ops`).  A connection that
has not said ``hello``, or is in the middle of a frame, for ``hello_timeout_s``
is closed (:meth:`Admission.reap`), so idle or half-open connections cannot
hold sessions.  When ``accept`` fails for lack of descriptors or memory
(EMFILE, ENFILE, ENOBUFS, ENOMEM) the listening socket leaves the epoll set for
a back-off that doubles up to a second (one log line per pause): the pending
connection stays queued, and the level-triggered listener cannot spin the loop.  A refused peer
gets one error reply and the connection is closed; the daemon keeps serving.
A connection that is admitted gets a pidfd (the only way to see the client's
exit: nothing arrives on a userfaultfd then) and becomes a
:class:`~swapd.daemon.session.Session` owned by the daemon's session table.

Runs on the loop thread only.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import grp
import logging
import os
import pwd
import socket
import time
from typing import TYPE_CHECKING, Any

from swapd import protocol
from swapd.errors import ConfigError

if TYPE_CHECKING:
    from swapd.config import Config
    from swapd.daemon.server import Daemon

log = logging.getLogger("swapd.daemon.server")

__all__ = ["Admission", "resolve_groups", "resolve_users"]

_SO_PEERGROUPS = getattr(socket, "SO_PEERGROUPS", 59)  # <asm-generic/socket.h>, 4.13
_NO_RESOURCES = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)
_PAUSE_MIN_S = 0.05
_PAUSE_MAX_S = 1.0
_LINGER = 64  # refused sockets kept open until their reply is read
_LINGER_S = 0.5


def _drain(sock: socket.socket) -> None:
    """Read and drop what ``sock`` holds now (descriptors included), never blocking."""
    for _ in range(4):
        try:
            data, anc, _f, _a = sock.recvmsg(protocol.MAX_FRAME + 4,
                                            socket.CMSG_SPACE(protocol.MAX_FDS * 4),
                                            socket.MSG_DONTWAIT | socket.MSG_CMSG_CLOEXEC)
        except OSError:
            return
        protocol.close_fds(anc)
        if not data:
            return


def _close_drained(sock: socket.socket) -> None:
    _drain(sock)
    sock.close()


def resolve_users(users: tuple[str | int, ...]) -> set[int]:
    """Root, the daemon's uid and ``users`` (names or uids) as uids; ConfigError names a bad one."""
    out = {0, os.geteuid()}
    for u in users:
        if isinstance(u, int):
            out.add(u)
        else:
            try:
                out.add(pwd.getpwnam(u).pw_uid)
            except KeyError as exc:
                raise ConfigError(f"[daemon] allowed_users: no such user {u!r}") from exc
    return out


def resolve_groups(groups: tuple[str | int, ...]) -> set[int]:
    """``groups`` (names or gids) as gids; ConfigError names a bad one."""
    out: set[int] = set()
    for g in groups:
        if isinstance(g, int):
            out.add(g)
        else:
            try:
                out.add(grp.getgrnam(g).gr_gid)
            except KeyError as exc:
                raise ConfigError(f"[daemon] allowed_groups: no such group {g!r}") from exc
    return out


class Admission:
    """The listening socket's side of the daemon: accept, authenticate, admit."""

    def __init__(self, daemon: Daemon, cfg: Config) -> None:
        self.daemon = daemon
        self.cfg = cfg
        self.allowed_uids = resolve_users(cfg.daemon.allowed_users)
        self.allowed_gids = resolve_groups(cfg.daemon.allowed_groups)
        self.pause_s = 0.0  # loop thread: current accept back-off (0 = none)
        self.accept_pauses = 0  # loop thread: times accept ran out of descriptors or memory
        self.refused = 0  # loop thread: connections refused (permission, quota)
        self.reaped = 0  # loop thread: connections closed for idling before hello / mid-frame
        self._lingering: collections.deque[tuple[float, socket.socket]] = collections.deque()

    def accept(self, listener: socket.socket) -> None:
        """Admit the pending connections of ``listener`` (non-blocking), at most 64 per call
        so a connection flood shares the loop with the faults."""
        for _ in range(64):
            try:
                sock, _ = listener.accept()
            except BlockingIOError:
                self.pause_s = 0.0
                return
            except OSError as exc:
                if exc.errno in _NO_RESOURCES:
                    self._pause(exc)
                    return
                log.warning("accept failed: %s", exc)
                return
            sock.setblocking(False)
            try:
                self.admit(sock)
            except OSError as exc:
                sock.close()
                if exc.errno in _NO_RESOURCES:  # e.g. pidfd_open: the same shortage
                    self._pause(exc)
                    return
                log.exception("admitting a client failed")
            except Exception:
                log.exception("admitting a client failed")
                sock.close()

    def _pause(self, exc: OSError) -> None:
        self.pause_s = min(_PAUSE_MAX_S, max(_PAUSE_MIN_S, self.pause_s * 2))
        self.accept_pauses += 1
        log.warning("accept failed: %s; not accepting for %.2f s", exc.strerror, self.pause_s)
        self.daemon.loop.pause_listener(self.pause_s)

    def peer_allowed(self, sock: socket.socket, uid: int, gid: int) -> bool:
        """Whether the peer's uid, gid or supplementary groups are allowed."""
        if uid in self.allowed_uids or gid in self.allowed_gids:
            return True
        if not self.allowed_gids:
            return False
        try:
            raw = sock.getsockopt(socket.SOL_SOCKET, _SO_PEERGROUPS, 4 * 256)
        except OSError:
            return False
        groups = {int.from_bytes(raw[i:i + 4], "little") for i in range(0, len(raw), 4)}
        return bool(groups & self.allowed_gids)

    def refuse(self, sock: socket.socket, obj: dict[str, Any]) -> None:
        """Refuse a connection without blocking: reply ``obj``, close a moment later.

        Closing an AF_UNIX socket with unread input makes the peer's read fail with
        ECONNRESET before it sees the reply, so the socket lingers (at most
        ``_LINGER`` of them, ``_LINGER_S`` each) and its input is drained before
        the close (:meth:`reap`).  Never blocks the loop.
        """
        with contextlib.suppress(OSError):
            sock.setblocking(False)
            _drain(sock)
            sock.send(protocol.encode(obj), socket.MSG_DONTWAIT)
            sock.shutdown(socket.SHUT_WR)
        self._lingering.append((time.monotonic() + _LINGER_S, sock))
        while len(self._lingering) > _LINGER:
            _close_drained(self._lingering.popleft()[1])

    def admit(self, sock: socket.socket) -> None:
        """Authenticate ``sock``'s peer, check ``max_clients``, open its session."""
        from swapd.kernel.pidfd import peer_credentials

        pid, uid, gid = peer_credentials(sock)
        if not self.peer_allowed(sock, uid, gid):
            log.warning("refusing pid %d uid %d gid %d: not allowed", pid, uid, gid)
            self.refuse(sock, protocol.error_reply(
                None, "permission", f"uid {uid} / gid {gid} is not allowed by the daemon's "
                "[daemon] allowed_users/allowed_groups"))
            return
        lim = self.cfg.limits
        if len([s for s in self.daemon.sessions.values() if not s.dead]) >= lim.max_clients:
            self.refused += 1
            self.refuse(sock, protocol.error_reply(
                None, "quota", f"the daemon already serves max_clients={lim.max_clients}"))
            return
        if uid not in (0, os.geteuid()) and \
                self.daemon.sessions_of_uid(uid) >= lim.max_sessions_per_uid:
            self.refused += 1
            log.warning("refusing pid %d uid %d: max_sessions_per_uid=%d", pid, uid,
                        lim.max_sessions_per_uid)
            self.refuse(sock, protocol.error_reply(
                None, "quota", f"uid {uid} already has max_sessions_per_uid="
                f"{lim.max_sessions_per_uid} sessions"))
            return
        try:
            pidfd = os.pidfd_open(pid)
        except OSError as exc:
            if exc.errno in _NO_RESOURCES:
                raise  # accept() pauses
            log.warning("pidfd_open(%d): %s", pid, exc)
            sock.close()
            return
        self.daemon.open_session(sock, pid, uid, gid, pidfd)

    def reap(self, now: float) -> int:
        """Close connections without ``hello`` or mid-frame for ``hello_timeout_s``.
        O(sessions); run by the loop about twice a second.  Returns the number closed."""
        while self._lingering and self._lingering[0][0] <= now:
            _close_drained(self._lingering.popleft()[1])
        timeout = self.cfg.limits.hello_timeout_s
        d = self.daemon
        n = 0
        for s in list(d.sessions.values()):
            conn = s.conn
            if s.dead or conn is None or conn.closed:
                continue
            if conn.reader.pending:
                if conn.partial_since < 0:
                    conn.partial_since = now
            else:
                conn.partial_since = -1.0
            if not s.hello and now - conn.opened > timeout:
                why = f"no hello within hello_timeout_s={timeout}"
            elif conn.partial_since >= 0 and now - conn.partial_since > timeout:
                why = f"a frame unfinished for hello_timeout_s={timeout}"
            else:
                continue
            self.reaped += 1
            d.end_session(s, why)
            n += 1
        return n
