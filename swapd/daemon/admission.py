"""Admission: who may connect, and how a connection becomes a session.

Authentication is the peer's ``SO_PEERCRED`` uid/gid (and ``SO_PEERGROUPS``):
root, the daemon's own uid, or a user or group of ``[daemon] allowed_users`` /
``allowed_groups``.  The quota checked here is ``max_clients``; per-session
quotas are checked by the requests (:mod:`swapd.daemon.ops`).  A refused peer
gets one error reply and the connection is closed; the daemon keeps serving.
A connection that is admitted gets a pidfd (the only way to see the client's
exit: nothing arrives on a userfaultfd then) and becomes a
:class:`~swapd.daemon.session.Session` owned by the daemon's session table.

Runs on the loop thread only.
"""

from __future__ import annotations

import contextlib
import grp
import logging
import os
import pwd
import socket
from typing import TYPE_CHECKING, Any

from swapd import protocol
from swapd.errors import ConfigError

if TYPE_CHECKING:
    from swapd.config import Config
    from swapd.daemon.server import Daemon

log = logging.getLogger("swapd.daemon.server")

__all__ = ["Admission", "resolve_groups", "resolve_users"]

_SO_PEERGROUPS = getattr(socket, "SO_PEERGROUPS", 59)  # <asm-generic/socket.h>, 4.13


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

    def accept(self, listener: socket.socket) -> None:
        """Admit every pending connection of ``listener`` (non-blocking)."""
        while True:
            try:
                sock, _ = listener.accept()
            except BlockingIOError:
                return
            except OSError as exc:
                log.warning("accept failed: %s", exc)
                return
            sock.setblocking(False)
            try:
                self.admit(sock)
            except Exception:
                log.exception("admitting a client failed")
                sock.close()

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

    @staticmethod
    def refuse(sock: socket.socket, obj: dict[str, Any]) -> None:
        """Refuse a connection: read its hello (briefly), reply ``obj``, close.

        Reading first matters: closing an AF_UNIX socket with unread input makes
        the peer's read fail with ECONNRESET before it sees the reply.
        """
        with contextlib.suppress(OSError):
            sock.settimeout(0.2)
            with contextlib.suppress(OSError):
                sock.recv(protocol.MAX_FRAME + 4)
            sock.send(protocol.encode(obj))
            sock.shutdown(socket.SHUT_WR)
        sock.close()

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
            self.refuse(sock, protocol.error_reply(
                None, "quota", f"the daemon already serves max_clients={lim.max_clients}"))
            return
        try:
            pidfd = os.pidfd_open(pid)
        except OSError as exc:
            log.warning("pidfd_open(%d): %s", pid, exc)
            sock.close()
            return
        self.daemon.open_session(sock, pid, uid, gid, pidfd)
