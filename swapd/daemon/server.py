"""The daemon: control socket, sessions, and the event loop that drives the pager.

Design.  One main thread runs an epoll loop over the listening socket, every
client's control socket and pidfd, and every region's userfaultfd; it parses
control requests (``swapd.protocol``), serves faults through the
:class:`~swapd.daemon.pager.Pager`, and ends a session on pidfd POLLIN/POLLHUP
(the client exited -- nothing arrives on a uffd then), socket EOF, or ESRCH
from an ioctl.  A second thread, the :class:`~swapd.daemon.reclaim.Reclaimer`,
evicts.  A fault is never served by a thread of the client: a faulting Python
thread holds the GIL (DESIGN.md sec. 6).

Ending a session frees what it had in every tier (``layer.remove_client``),
closes the daemon's copies of its memfds and userfaultfds (the memfd pages go
with the last reference), its pidfd and its socket.  If an eviction batch of
that session is in phase 2, the reclaimer finishes the layer cleanup
(``Session.evicting``).

Authentication: the peer's SO_PEERCRED uid/gid (and SO_PEERGROUPS) must be
root, the daemon's own uid, or listed in ``[daemon] allowed_users/groups``.
Quotas: ``max_clients``, and per client ``max_regions`` and
``max_managed_bytes``; the resident limit a client asks for is capped at the
global limit.  Every refused request gets an error reply naming the problem and
the daemon keeps serving; descriptors of a refused request are closed.

Lock order: ``Daemon.lock`` (session table) -> ``Session.lock`` -> layer locks;
``Daemon.fd_lock`` (the epoll fd table) is a leaf.  The main thread is the only
one that reads sockets and uffds.

Prior art: systemd-swap's service shape (notify, status), UMap's
handler/client split, MECHANISMS.md sec. 5 "Exit and death handling".
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import grp
import itertools
import logging
import os
import pwd
import select
import signal
import socket
import stat
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from swapd import protocol
from swapd.config import PAGE_SIZE, Config
from swapd.daemon.pager import Pager
from swapd.daemon.reclaim import Reclaimer
from swapd.daemon.session import (
    EVICTING,
    GONE,
    HOLE,
    RESIDENT,
    STATE_NAMES,
    SWAPPED,
    LatencySummary,
    LayerLike,
    ManagedRegion,
    Session,
)
from swapd.errors import (
    ClientGoneError,
    ConfigError,
    EntryNotFoundError,
    InvariantError,
    ProtocolError,
    SwapdError,
)
from swapd.kernel import memfd as kmemfd
from swapd.kernel import uffd as kuffd
from swapd.kernel.errors import KernelError

log = logging.getLogger(__name__)

_SO_PEERGROUPS = getattr(socket, "SO_PEERGROUPS", 59)  # <asm-generic/socket.h>, 4.13
_ORDER = {"uffd": 0, "pidfd": 1, "conn": 2, "wake": 3, "listen": 4}  # per epoll batch
_REQUIRED_FEATURES = kuffd.UFFD_FEATURE_MISSING_SHMEM | kuffd.UFFD_FEATURE_WP_HUGETLBFS_SHMEM


class Refused(Exception):
    """Internal: a request is refused with ``code`` and a message naming the problem."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class Connection:
    """A client's control socket and its frame reader (main thread only)."""

    def __init__(self, sock: socket.socket, session: Session) -> None:
        self.sock = sock
        self.reader = protocol.FrameReader(sock)
        self.session = session
        self.closed = False


def _as_dict(obj: Any) -> dict[str, Any]:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {k: v for k, v in dataclasses.asdict(obj).items()
                if isinstance(v, int | float | str | bool) or v is None}
    if isinstance(obj, dict):
        return dict(obj)
    return dict(vars(obj))


def build_layer(cfg: Config, state_path: Path, *, clock: Callable[[], float] | None = None,
                max_pages: int | None = None,
                options: Mapping[str, Any] | None = None) -> LayerLike:
    """The daemon's layer from ``cfg.layer`` (see :func:`swapd.layer.build.build_layer`)."""
    from swapd.layer.build import build_layer as build

    return build(cfg.layer, state_path, clock=clock, max_pages=max_pages, options=options)


class Daemon:
    """The swap daemon (see the module docstring).  ``serve_forever`` runs the loop."""

    def __init__(self, cfg: Config, *, layer: LayerLike | None = None,
                 socket_path: str | os.PathLike[str] | None = None,
                 state_dir: str | os.PathLike[str] | None = None,
                 notify: Callable[[str], bool] | None = None) -> None:
        self.cfg = cfg
        self.socket_path = Path(socket_path) if socket_path else cfg.socket_path()
        self.state_path = Path(state_dir) if state_dir else cfg.state_path()
        self._layer_arg = layer
        self.layer: LayerLike | None = layer
        self.notify = notify or (lambda _s: False)
        self.lock = threading.Lock()  # guards sessions (and the id counters)
        self.sessions: dict[int, Session] = {}  # under lock
        self._sids = itertools.count(1)
        self._rids = itertools.count(1)
        self.fd_lock = threading.Lock()  # leaf; guards _fds and epoll registration
        self._fds: dict[int, tuple[str, Any]] = {}  # fd -> (kind, object)
        self.ep: select.epoll | None = None
        self.listener: socket.socket | None = None
        self.pager: Pager | None = None
        self.reclaimer: Reclaimer | None = None
        self.shrinker: Any = None  # swapd.layer.ShrinkerThread
        self._stop = False
        self._wake_r = -1
        self._wake_w = -1
        self.started = time.monotonic()
        self.clients_total = 0
        self.departed: dict[str, int] = {}  # counters of ended sessions (main thread)
        self.allowed_uids = self._resolve_users(cfg.daemon.allowed_users)
        self.allowed_gids = self._resolve_groups(cfg.daemon.allowed_groups)
        self._recorder: Any = None
        self._status = ""
        self._status_n = -1  # session count of the last STATUS= (main thread)
        self._yielding = False  # inside _serve_faults_now: no nested reclaim
        self._loop: threading.Thread | None = None  # the thread running serve_forever

    # --- setup / teardown -----------------------------------------------------------------

    @staticmethod
    def _resolve_users(users: tuple[str | int, ...]) -> set[int]:
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

    @staticmethod
    def _resolve_groups(groups: tuple[str | int, ...]) -> set[int]:
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

    def start(self) -> None:
        """Build the layer, bind the socket, start the reclaimer.  Raises SwapdError."""
        cfg = self.cfg
        if self.layer is None:
            self.layer = build_layer(cfg, self.state_path)
        layer = self.layer
        if cfg.daemon.record:
            self._recorder = _Recorder(cfg.daemon.record)
        rec = self._recorder.record if self._recorder is not None else None
        self.pager = Pager(layer, readahead_min=cfg.pager.readahead_min,
                           colocate=cfg.pager.colocate,
                           readahead_max=cfg.pager.readahead_max, forget_fd=self._forget_fd,
                           recorder=rec)
        rc = cfg.reclaim
        self.reclaimer = Reclaimer(
            layer, sessions=self._live_sessions, batch_pages=rc.batch_pages,
            low_watermark_pages=rc.low_watermark_pages, hard_slack_pages=rc.hard_slack_pages,
            global_limit_pages=cfg.limits.global_resident_bytes // PAGE_SIZE,
            refbit_slice_pages=rc.refbit_slice_pages, interval_s=rc.interval_ms / 1000.0,
            mark_gone=self.pager.mark_gone_locked,
            between_stores=self._serve_faults_now, recorder=rec)
        self.ep = select.epoll()
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._register(self._wake_r, "wake", None)
        self.listener = self._bind()
        self._register(self.listener.fileno(), "listen", self.listener)
        if not rc.inline:
            from swapd.layer import ShrinkerThread

            self.reclaimer.start()
            self.shrinker = ShrinkerThread(layer, interval=rc.interval_ms / 1000.0).start()

    def _bind(self) -> socket.socket:
        path = self.socket_path
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
        if path.exists() or path.is_symlink():
            if not stat.S_ISSOCK(path.lstat().st_mode):
                raise ConfigError(f"{path} exists and is not a socket")
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
            try:
                probe.connect(str(path))
            except OSError:
                path.unlink()  # stale socket of a dead daemon
            else:
                raise ConfigError(f"another daemon is serving {path}")
            finally:
                probe.close()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC
                             | socket.SOCK_NONBLOCK)
        try:
            sock.bind(str(path))
            os.chmod(path, self.cfg.daemon.socket_mode)
            if self.cfg.daemon.socket_group:
                gid = self._resolve_groups((self.cfg.daemon.socket_group,)).pop()
                os.chown(path, -1, gid)
            sock.listen(64)
        except OSError as exc:
            sock.close()
            raise ConfigError(f"cannot listen on {path}: {exc.strerror}") from exc
        return sock

    def close(self) -> None:
        """End every session, stop the reclaimer, release the layer and the socket."""
        if self.reclaimer is not None:
            self.reclaimer.stop()
        if self.shrinker is not None:
            self.shrinker.stop()
        for s in list(self.sessions.values()):
            self.end_session(s, "daemon stopping")
        if self.listener is not None:
            self.listener.close()
            with contextlib.suppress(OSError):
                self.socket_path.unlink()
            self.listener = None
        if self.pager is not None:
            self.pager.close()
        if self.ep is not None:
            self.ep.close()
            self.ep = None
        for fd in (self._wake_r, self._wake_w):
            if fd >= 0:
                os.close(fd)
        self._wake_r = self._wake_w = -1
        if self.layer is not None and self._layer_arg is None:
            self.layer.close()
        if self._recorder is not None:
            self._recorder.close()

    def stop(self) -> None:
        """Ask the loop to return (thread- and signal-safe)."""
        self._stop = True
        if self._wake_w >= 0:
            with contextlib.suppress(OSError):
                os.write(self._wake_w, b"x")

    # --- fd table -------------------------------------------------------------------------

    def _register(self, fd: int, kind: str, obj: Any) -> None:
        assert self.ep is not None
        with self.fd_lock:
            self._fds[fd] = (kind, obj)
            self.ep.register(fd, select.EPOLLIN)

    def _forget_fd(self, fd: int) -> None:
        if fd < 0:
            return
        with self.fd_lock:
            if self._fds.pop(fd, None) is not None and self.ep is not None:
                with contextlib.suppress(OSError):
                    self.ep.unregister(fd)

    def _live_sessions(self) -> Iterator[Session]:
        with self.lock:
            return iter([s for s in self.sessions.values() if not s.dead])

    # --- the loop -------------------------------------------------------------------------

    def serve_forever(self, *, ready: Callable[[], None] | None = None) -> None:
        """Run until :meth:`stop`.  Notifies READY=1 once the socket is being served."""
        assert self.ep is not None and self.pager is not None and self.reclaimer is not None
        self._loop = threading.current_thread()
        wd_usec = int(os.environ.get("WATCHDOG_USEC", "0") or 0)
        wd_interval = self.cfg.daemon.watchdog_interval_s or (wd_usec / 2e6 if wd_usec else 0)
        next_wd = 0.0
        next_check = 0.0
        self.notify("READY=1\nSTATUS=serving " + str(self.socket_path))
        if ready is not None:
            ready()
        ep = self.ep
        fds = self._fds
        reclaimer = self.reclaimer
        inline = self.cfg.reclaim.inline
        interval = self.cfg.reclaim.interval_ms / 1000.0
        next_sweep = 0.0
        while not self._stop:
            busy = inline and reclaimer.needs_work()
            events = ep.poll(0 if busy else (interval if inline else 0.5))
            if busy and not events:
                reclaimer.step()  # idle between faults: evict one batch
            t0 = time.perf_counter_ns()
            if len(events) > 1:  # departures before admissions (quota), faults first
                events.sort(key=lambda e: _ORDER.get(fds.get(e[0], ("",))[0], 0))
            for fd, _mask in events:
                entry = fds.get(fd)
                if entry is None:
                    continue
                try:
                    self._on_event(entry, t0)
                except InvariantError:
                    raise
                except Exception:  # a bug must cost one client, not all of them
                    log.exception("handling %s failed", entry[0])
                    owner = entry[1]
                    s = getattr(owner, "session", owner)
                    if isinstance(s, Session):
                        self.end_session(s, "internal error (see the log)")
            now = time.monotonic()
            if inline and now >= next_sweep:
                reclaimer.sweep_refbits()
                self.layer.shrink_step()  # type: ignore[union-attr]
                next_sweep = now + interval
            if wd_interval and now >= next_wd:
                self.notify("WATCHDOG=1")
                next_wd = now + wd_interval
            if self.cfg.daemon.check_invariants and now >= next_check:
                self._check()
                next_check = now + 1.0
            if len(self.sessions) != self._status_n:  # no formatting on the fault path
                self._update_status()
        self.notify("STOPPING=1")

    def _serve_faults_now(self) -> None:
        """Eviction on the loop thread (inline reclaim, direct reclaim, ``advise cold``),
        phase 2: serve the uffd events that are pending right now.

        Other descriptors are left for the main loop (epoll is level-triggered);
        no reclaim runs from here.
        """
        if self._yielding or self.ep is None or threading.current_thread() is not self._loop:
            return  # the reclaimer thread's batches: the loop serves faults meanwhile
        self._yielding = True
        try:
            events = self.ep.poll(0)
            if not events:
                return
            t0 = time.perf_counter_ns()
            for fd, _mask in events:
                entry = self._fds.get(fd)
                if entry is not None and entry[0] == "uffd":
                    self._on_event(entry, t0)
        finally:
            self._yielding = False

    def _on_event(self, entry: tuple[str, Any], t0: int) -> None:
        """Handle one ready descriptor of the epoll table."""
        assert self.pager is not None and self.reclaimer is not None
        pager = self.pager
        reclaimer = self.reclaimer
        kind, obj = entry
        if kind == "uffd":
            region: ManagedRegion = obj
            try:
                pager.handle_events(region, t0)
            except ClientGoneError as exc:
                self.end_session(region.session, str(exc))
                return
            except KernelError as exc:
                log.error("region %s: %s", region.id, exc)
                with region.session.lock:
                    pager.drop_region_locked(region, f"uffd failed: {exc}")
                return
            s = region.session
            if s.resident > s.limit_pages and not s.dead and not self._yielding:
                reclaimer.direct(s)
        elif kind == "conn":
            self._on_conn(obj)
        elif kind == "pidfd":
            self.end_session(obj, "client process exited")
        elif kind == "listen":
            self._accept()
        elif kind == "wake":
            with contextlib.suppress(OSError):
                os.read(self._wake_r, 4096)

    def _update_status(self) -> None:
        n = self._status_n = len(self.sessions)
        status = f"STATUS=serving {n} client{'s' if n != 1 else ''}"
        if status != self._status:
            self._status = status
            self.notify(status)

    def _check(self) -> None:
        """Run every structure's invariant check (debug flag).  O(everything)."""
        for s in list(self.sessions.values()):
            if not s.dead:
                s._check()
        assert self.layer is not None
        self.layer._check()

    # --- connections ----------------------------------------------------------------------

    def _accept(self) -> None:
        assert self.listener is not None
        while True:
            try:
                sock, _ = self.listener.accept()
            except BlockingIOError:
                return
            except OSError as exc:
                log.warning("accept failed: %s", exc)
                return
            sock.setblocking(False)
            try:
                self._admit(sock)
            except Exception:
                log.exception("admitting a client failed")
                sock.close()

    def _peer_allowed(self, sock: socket.socket, uid: int, gid: int) -> bool:
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

    def _send_now(self, sock: socket.socket, obj: dict[str, Any]) -> None:
        """Refuse a connection: read its hello (briefly), reply, close.

        Reading first matters: closing an AF_UNIX socket with unread input makes
        the peer's read fail with ECONNRESET before it sees the reply.
        """
        with contextlib.suppress(OSError):
            sock.settimeout(0.2)
            with contextlib.suppress(OSError):
                sock.recv(protocol.MAX_FRAME + 4)
            sock.send(protocol.encode(obj))
            sock.shutdown(socket.SHUT_WR)

    def _admit(self, sock: socket.socket) -> None:
        from swapd.kernel.pidfd import peer_credentials
        from swapd.plugins import make_policy

        pid, uid, gid = peer_credentials(sock)
        if not self._peer_allowed(sock, uid, gid):
            log.warning("refusing pid %d uid %d gid %d: not allowed", pid, uid, gid)
            self._send_now(sock, protocol.error_reply(
                None, "permission", f"uid {uid} / gid {gid} is not allowed by the daemon's "
                "[daemon] allowed_users/allowed_groups"))
            sock.close()
            return
        lim = self.cfg.limits
        if len([s for s in self.sessions.values() if not s.dead]) >= lim.max_clients:
            self._send_now(sock, protocol.error_reply(
                None, "quota", f"the daemon already serves max_clients={lim.max_clients}"))
            sock.close()
            return
        try:
            pidfd = os.pidfd_open(pid)
        except OSError as exc:
            log.warning("pidfd_open(%d): %s", pid, exc)
            sock.close()
            return
        policy = make_policy(self.cfg.reclaim.policy)
        with self.lock:
            sid = next(self._sids)
            session = Session(sid, pid, uid, gid, limit_pages=min(
                lim.default_resident_bytes, lim.global_resident_bytes) // PAGE_SIZE,
                policy=policy, latency_samples=self.cfg.pager.latency_samples)
            session.pidfd = pidfd
            self.sessions[sid] = session
            self.clients_total += 1
        conn = Connection(sock, session)
        session.conn = conn
        self._register(sock.fileno(), "conn", conn)
        self._register(pidfd, "pidfd", session)
        log.info("client %d (pid %d uid %d) connected", sid, pid, uid)

    def end_session(self, session: Session, reason: str) -> None:
        """Free everything of a session in every tier and close its fds.  Idempotent."""
        assert self.pager is not None and self.layer is not None
        with session.lock:
            if session.dead:
                return
            session.dead = True
            log.info("client %d (pid %d) ended: %s", session.id, session.pid, reason)
            for region in list(session.regions.values()):
                self.pager.drop_region_locked(region, reason)
            if session.evicting == 0 and not session.layer_freed:
                with contextlib.suppress(EntryNotFoundError):  # never stored anything
                    self.layer.remove_client(session.id)
                session.layer_freed = True
            self._forget_fd(session.pidfd)
            session.close_fds_locked()
        conn: Connection | None = session.conn
        if conn is not None and not conn.closed:
            conn.closed = True
            self._forget_fd(conn.sock.fileno())
            conn.reader.close()
            conn.sock.close()
        with self.lock:
            self.sessions.pop(session.id, None)
        for k, v in session.counters.as_dict().items():
            self.departed[k] = self.departed.get(k, 0) + v

    def _on_conn(self, conn: Connection) -> None:
        if conn.closed:
            return
        try:
            conn.reader.feed()
        except OSError as exc:
            self.end_session(conn.session, f"socket error: {exc}")
            return
        for obj, fds in conn.reader.frames():
            try:
                reply = self._dispatch(conn.session, obj, fds)
            finally:
                for fd in fds:  # whatever a handler did not take
                    if fd >= 0:
                        with contextlib.suppress(OSError):
                            os.close(fd)
            if not self._reply(conn, reply):
                return
            if conn.session.dead:
                return
        if conn.reader.fatal is not None:
            self._reply(conn, protocol.error_reply(None, "malformed", conn.reader.fatal))
            self.end_session(conn.session, f"protocol error: {conn.reader.fatal}")
            return
        if conn.reader.eof:
            self.end_session(conn.session, "control socket closed")

    def _reply(self, conn: Connection, reply: dict[str, Any]) -> bool:
        try:
            data = protocol.encode(reply)
        except ProtocolError as exc:
            data = protocol.encode(protocol.error_reply(reply.get("id"), "internal", str(exc)))
        try:
            sent = conn.sock.send(data)
            if sent != len(data):
                raise BlockingIOError(errno.EAGAIN, "short send")
        except OSError as exc:
            # a client that does not read its replies, or has gone
            self.end_session(conn.session, f"cannot send reply: {exc}")
            return False
        return True

    # --- requests -------------------------------------------------------------------------

    def _dispatch(self, session: Session, obj: dict[str, Any] | ProtocolError,
                  fds: list[int]) -> dict[str, Any]:
        if isinstance(obj, ProtocolError):
            return protocol.error_reply(None, "malformed", str(obj).removeprefix("malformed: "))
        req_id = obj.get("id")
        if req_id is not None and (isinstance(req_id, bool) or not isinstance(req_id, int)):
            return protocol.error_reply(None, "bad_request", "'id' must be an integer")
        op = obj.get("op")
        try:
            if not isinstance(op, str):
                raise Refused("bad_request", "missing 'op' (a string)")
            if op not in protocol.OPS:
                raise Refused("unknown_op", f"unknown op {op!r} (known: "
                              f"{', '.join(protocol.OPS)})")
            if op != "map" and fds:
                raise Refused("bad_fd", f"op {op!r} takes no file descriptors, got {len(fds)}")
            if op != "hello" and not session.hello:
                raise Refused("bad_request", "the first request must be 'hello'")
            handler = getattr(self, f"_op_{op}")
            result: dict[str, Any] = handler(session, obj, fds)
        except Refused as r:
            return protocol.error_reply(req_id, r.code, r.message)
        except (SwapdError, OSError) as exc:
            log.exception("request %r of client %d failed", op, session.id)
            return protocol.error_reply(req_id, "internal", f"{type(exc).__name__}: {exc}")
        return {"id": req_id, "ok": True, **result}

    @staticmethod
    def _int(obj: dict[str, Any], key: str, *, minimum: int = 0) -> int:
        v = obj.get(key)
        if isinstance(v, bool) or not isinstance(v, int):
            raise Refused("bad_request", f"{key!r} must be an integer, got {v!r}")
        if v < minimum:
            raise Refused("bad_request", f"{key!r} must be >= {minimum}, got {v}")
        return v

    def _op_hello(self, session: Session, obj: dict[str, Any], fds: list[int]) -> dict[str, Any]:
        if session.hello:
            raise Refused("bad_request", "hello was already done")
        v = obj.get("version")
        if v != protocol.PROTOCOL_VERSION:
            raise Refused("version", f"protocol version {v!r} is not supported; this daemon "
                          f"speaks version {protocol.PROTOCOL_VERSION}")
        name = obj.get("name", "")
        session.name = name[:64] if isinstance(name, str) else ""
        session.hello = True
        lim = self.cfg.limits
        return {"version": protocol.PROTOCOL_VERSION, "page_size": PAGE_SIZE,
                "pid": os.getpid(), "session": session.id,
                "resident_bytes": session.limit_pages * PAGE_SIZE,
                "max_managed_bytes": lim.max_managed_bytes, "max_regions": lim.max_regions}

    def _op_ping(self, session: Session, obj: dict[str, Any], fds: list[int]) -> dict[str, Any]:
        return {}

    def _op_map(self, session: Session, obj: dict[str, Any], fds: list[int]) -> dict[str, Any]:
        assert self.layer is not None
        length = self._int(obj, "length", minimum=1)
        address = self._int(obj, "address", minimum=1)
        name = obj.get("name", "")
        if not isinstance(name, str):
            raise Refused("bad_request", "'name' must be a string")
        if len(fds) != 2:
            raise Refused("bad_fd", f"map needs 2 descriptors (memfd, userfaultfd), "
                          f"got {len(fds)}")
        if length % PAGE_SIZE or address % PAGE_SIZE:
            raise Refused("bad_range", f"address {address:#x} and length {length} must be "
                          f"multiples of the page size {PAGE_SIZE}")
        memfd, ufd = fds
        if not kmemfd.is_memfd(memfd):
            raise Refused("bad_fd", f"descriptor 0 is not a memfd ({_fd_kind(memfd)})")
        if not kuffd.is_userfaultfd(ufd):
            raise Refused("bad_fd", f"descriptor 1 is not a userfaultfd ({_fd_kind(ufd)})")
        st = os.fstat(memfd)
        if st.st_size != length:
            raise Refused("bad_fd", f"memfd size {st.st_size} != region length {length}")
        npages = length // PAGE_SIZE
        lim = self.cfg.limits
        with session.lock:
            if len(session.regions) + 1 > lim.max_regions:
                raise Refused("quota", f"max_regions={lim.max_regions} regions already mapped")
            if (session.managed_pages + npages) * PAGE_SIZE > lim.max_managed_bytes:
                raise Refused("quota", f"{length} more bytes would exceed max_managed_bytes="
                              f"{lim.max_managed_bytes} (mapped: "
                              f"{session.managed_pages * PAGE_SIZE})")
            for r in session.regions.values():
                if address < r.end and r.start < address + length:
                    raise Refused("bad_range", f"[{address:#x}, {address + length:#x}) "
                                  f"overlaps region {r.id} at [{r.start:#x}, {r.end:#x})")
        _check_mapping(session.pid, address, length, st.st_ino)
        uffd = kuffd.Userfaultfd.from_fd(ufd)
        fds[1] = -1  # owned by uffd now
        adopted = False
        try:
            feats = uffd.features or 0
            if feats & _REQUIRED_FEATURES != _REQUIRED_FEATURES:
                raise Refused("bad_fd", f"userfaultfd lacks features MISSING_SHMEM|"
                              f"WP_HUGETLBFS_SHMEM (enabled: {feats:#x})")
            if feats & kuffd.UFFD_FEATURE_EVENT_FORK:
                raise Refused("bad_fd", "userfaultfd has EVENT_FORK enabled; swapd does not "
                              "serve forked children: use MADV_DONTFORK instead")
            if feats & kuffd.UFFD_FEATURE_SIGBUS:
                raise Refused("bad_fd", "userfaultfd has FEATURE_SIGBUS: faults would never "
                              "reach the daemon")
            with session.lock:
                if session.dead:
                    raise Refused("internal", "session ended")
                lrid = self.layer.add_region(session.id, npages)
                with self.lock:
                    rid = next(self._rids)
                region = ManagedRegion(rid, session, address, npages, memfd, uffd, lrid, name)
                fds[0] = -1  # owned by the region now
                adopted = True
                session.regions[rid] = region
                session.managed_pages += npages
                self._register(uffd.fd, "uffd", region)
        finally:
            if not adopted:
                uffd.close()
        return {"region": rid}

    def _region(self, session: Session, obj: dict[str, Any]) -> ManagedRegion:
        rid = self._int(obj, "region", minimum=0)
        region = session.regions.get(rid)
        if region is None or region.dropped:
            raise Refused("not_found", f"no region {rid} in this session")
        return region

    def _op_unmap(self, session: Session, obj: dict[str, Any], fds: list[int]) -> dict[str, Any]:
        assert self.pager is not None
        with session.lock:
            region = self._region(session, obj)
            with contextlib.suppress(KernelError):
                region.uffd.unregister(region.start, region.end - region.start)
            self.pager.drop_region_locked(region, "unmap request")
        return {}

    def _op_set_limit(self, session: Session, obj: dict[str, Any],
                      fds: list[int]) -> dict[str, Any]:
        assert self.reclaimer is not None
        want = self._int(obj, "resident_bytes", minimum=0)
        eff = min(want, self.cfg.limits.global_resident_bytes) // PAGE_SIZE
        with session.lock:
            session.limit_pages = eff
        self.reclaimer.kick()
        return {"resident_bytes": eff * PAGE_SIZE}

    def _op_advise(self, session: Session, obj: dict[str, Any], fds: list[int]) -> dict[str, Any]:
        assert self.pager is not None and self.reclaimer is not None
        offset = self._int(obj, "offset")
        length = self._int(obj, "length", minimum=1)
        advice = obj.get("advice")
        if advice not in protocol.ADVICE:
            raise Refused("bad_request", f"advice {advice!r} is not one of "
                          f"{', '.join(protocol.ADVICE)}")
        with session.lock:
            region = self._region(session, obj)
            if offset % PAGE_SIZE or length % PAGE_SIZE:
                raise Refused("bad_range", f"offset {offset} and length {length} must be "
                              f"multiples of {PAGE_SIZE}")
            if offset + length > region.npages * PAGE_SIZE:
                raise Refused("bad_range", f"[{offset}, {offset + length}) is beyond the "
                              f"region's {region.npages * PAGE_SIZE} bytes")
            i0, n = offset // PAGE_SIZE, length // PAGE_SIZE
            if advice == "dontneed":
                return {"pages": self.pager.discard_locked(region, i0, n)}
            if advice == "willneed":
                budget = max(0, session.limit_pages - session.resident)
                return {"pages": self.pager.prefetch_locked(region, i0, n, budget)}
        return {"pages": self.reclaimer.evict_range(session, region, i0, n)}

    def _op_stats(self, session: Session, obj: dict[str, Any], fds: list[int]) -> dict[str, Any]:
        scope = obj.get("scope", "client")
        if scope == "client":
            return {"stats": self.session_stats(session)}
        if scope == "all":
            return {"stats": self.all_stats()}
        raise Refused("bad_request", f"scope {scope!r} is not 'client' or 'all'")

    # --- statistics -----------------------------------------------------------------------

    def session_stats(self, s: Session) -> dict[str, Any]:
        assert self.layer is not None
        with s.lock:
            states = dict.fromkeys(STATE_NAMES, 0)
            for r in s.regions.values():
                for code in (HOLE, RESIDENT, EVICTING, SWAPPED, GONE):
                    states[STATE_NAMES[code]] += r.state.count(code)
            out: dict[str, Any] = {
                "session": s.id, "pid": s.pid, "uid": s.uid, "name": s.name,
                "regions": len(s.regions), "managed_pages": s.managed_pages,
                "resident_pages": s.resident, "limit_pages": s.limit_pages,
                "pages": states, "counters": s.counters.as_dict(),
                "latency": LatencySummary.of(list(s.latency_ns)).as_dict(),
            }
        try:
            out["layer"] = _as_dict(self.layer.stats(s.id))
        except EntryNotFoundError:  # no region stored anything yet, or already freed
            out["layer"] = {}
        return out

    def all_stats(self) -> dict[str, Any]:
        assert self.layer is not None
        sessions = [s for s in list(self.sessions.values()) if not s.dead]
        clients = [self.session_stats(s) for s in sessions]
        counters: dict[str, int] = dict(self.departed)
        for c in clients:
            for k, v in c["counters"].items():
                counters[k] = counters.get(k, 0) + v
        samples = list(self.pager.latency_ns) if self.pager is not None else []
        return {
            "daemon": {"pid": os.getpid(), "uptime_s": round(time.monotonic() - self.started, 3),
                       "socket": str(self.socket_path), "clients": len(clients),
                       "clients_total": self.clients_total,
                       "global_limit_pages": self.cfg.limits.global_resident_bytes // PAGE_SIZE,
                       "reclaimer_errors": self.reclaimer.errors if self.reclaimer else 0},
            "total": {"resident_pages": sum(c["resident_pages"] for c in clients),
                      "managed_pages": sum(c["managed_pages"] for c in clients),
                      "counters": counters,
                      "latency": LatencySummary.of(samples).as_dict(),
                      "layer": _as_dict(self.layer.stats())},
            "clients": clients,
        }


def _fd_kind(fd: int) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return "not an open descriptor"


def _check_mapping(pid: int, address: int, length: int, inode: int) -> None:
    """Check in /proc/PID/smaps that ``[address, +length)`` maps the memfd as we need.

    Shared, this memfd's inode at offset 0, registered with a uffd (VmFlags
    ``um`` and ``uw``) and ``MADV_DONTFORK`` (``dc``).  Raises Refused.
    """
    end = address + length
    covered = address
    try:
        with open(f"/proc/{pid}/smaps") as f:
            lines = f.read().splitlines()
    except OSError as exc:
        raise Refused("unavailable", f"cannot read /proc/{pid}/smaps: {exc.strerror}") from exc
    cur: tuple[int, int, str, int] | None = None
    vmas: list[tuple[int, int, str, int, set[str]]] = []
    for line in lines:
        head = line.split(None, 5)
        if len(head) >= 5 and "-" in head[0] and not head[0].endswith(":"):
            lo_s, hi_s = head[0].split("-")
            try:
                cur = (int(lo_s, 16), int(hi_s, 16), head[1], int(head[4]))
            except ValueError:
                cur = None
        elif line.startswith("VmFlags:") and cur is not None:
            vmas.append((*cur, set(line.split()[1:])))
            cur = None
    for lo, hi, perms, ino, flags in sorted(vmas):
        if hi <= covered or lo >= end:
            continue
        if lo > covered:
            break
        if ino != inode or not perms.endswith("s"):
            raise Refused("bad_range", f"[{lo:#x}, {hi:#x}) is not a shared mapping of the "
                          "memfd that was sent")
        missing = {"um", "uw", "dc"} - flags
        if missing:
            what = {"um": "registered with userfaultfd MISSING", "uw": "registered with "
                    "userfaultfd WP", "dc": "MADV_DONTFORK"}
            raise Refused("bad_range", f"[{lo:#x}, {hi:#x}) is not " +
                          " and not ".join(what[m] for m in sorted(missing)))
        covered = hi
        if covered >= end:
            return
    raise Refused("bad_range", f"[{address:#x}, {end:#x}) is not mapped in process {pid} "
                  f"(mapped up to {covered:#x})")


class _Recorder:
    """``--record``: the CSV trace ``time,page,op,size`` that ``swapd sim`` replays (issue 5).

    One row per event the daemon handles: ``time`` in microseconds since the
    daemon started, ``page`` = region id << 32 | page index, ``size`` 4096, and
    ``op`` ``r`` for a read fault, ``w`` for a write (MISSING|WRITE or
    write-protect) fault, ``e`` for a page evicted.  Accesses that hit resident
    memory never reach the daemon, so the accesses are the miss stream of the
    daemon's resident set.  ``swapd sim`` replays the ``r``/``w`` rows and skips
    the ``e`` rows (``swapd.sim.trace.read_trace(events=True)`` yields them), so
    the simulated policy makes its own eviction decisions while the daemon's
    stay in the file for comparison.
    """

    def __init__(self, path: str) -> None:
        self.f = open(path, "w", buffering=1 << 16)  # noqa: SIM115 (closed by close())
        self.f.write("time,page,op,size\n")
        self.t0 = time.monotonic_ns()
        self.lock = threading.Lock()

    def record(self, page: int, op: str) -> None:
        with self.lock:
            self.f.write(f"{(time.monotonic_ns() - self.t0) // 1000},{page},{op},{PAGE_SIZE}\n")

    def close(self) -> None:
        with self.lock:
            self.f.close()


def install_signal_handlers(daemon: Daemon) -> None:
    """SIGTERM/SIGINT stop the loop (main thread only)."""
    def handler(signum: int, frame: object) -> None:
        daemon.stop()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
