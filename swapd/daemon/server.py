"""The daemon: the composition root that owns the sessions.

Design.  :class:`Daemon` builds the layer (``swapd.layer.build``), the
:class:`~swapd.daemon.pager.Pager`, the :class:`~swapd.daemon.reclaim.Reclaimer`
and the listening socket, and owns the session table: a session is opened by
:mod:`~swapd.daemon.admission` when a peer is admitted and ended here, by
:meth:`Daemon.end_session`, on pidfd POLLIN/POLLHUP (the client exited),
socket EOF, ESRCH from an ioctl, or a bug in one of its requests.  The rest of
the daemon is one module per concern:

* :mod:`swapd.daemon.loop` -- the epoll event loop (``EventLoop``), watchdog, status;
* :mod:`swapd.daemon.admission` -- authentication, ``max_clients``, accepting;
* :mod:`swapd.daemon.ops` -- frames, request dispatch and the request handlers;
* :mod:`swapd.daemon.stats` -- the ``stats`` replies;
* :mod:`swapd.daemon.procfs` -- what is read from ``/proc`` about clients;
* :mod:`swapd.daemon.recorder` -- ``--record``; :mod:`swapd.daemon.signals`.

A fault is never served by a thread of the client: a faulting Python thread
holds the GIL (docs/design.md).  A second thread, the reclaimer, evicts.

Ending a session frees what it had in every tier (``layer.remove_client``),
closes the daemon's copies of its memfds and userfaultfds (the memfd pages go
with the last reference), its pidfd and its socket.  If an eviction batch of
that session is in phase 2, the reclaimer finishes the layer cleanup
(``Session.evicting``).

Lock order: ``Session.lock`` -> ``Daemon.lock`` (the session table and id
counters) -> layer locks; ``EventLoop.fd_lock`` is a leaf.

Prior art: systemd-swap's service shape (notify, status), UMap's
handler/client split.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import secrets
import socket
import stat
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from swapd.config import PAGE_SIZE, Config
from swapd.daemon.admission import Admission, resolve_groups
from swapd.daemon.handover import passed_fds
from swapd.daemon.loop import EventLoop
from swapd.daemon.ops import Connection, Ops
from swapd.daemon.pager import Pager
from swapd.daemon.reclaim import Reclaimer
from swapd.daemon.recorder import Recorder
from swapd.daemon.restart import EX_RESTART, Keeper
from swapd.daemon.session import LayerLike, Session
from swapd.daemon.signals import install_signal_handlers
from swapd.daemon.stats import all_stats, session_stats
from swapd.errors import ConfigError, EntryNotFoundError
from swapd.kernel.sdnotify import listen_fds

log = logging.getLogger(__name__)

__all__ = ["Daemon", "build_layer", "install_signal_handlers"]


def build_layer(cfg: Config, state_path: Path, *, clock: Callable[[], float] | None = None,
                max_pages: int | None = None,
                options: Mapping[str, Any] | None = None) -> LayerLike:
    """The daemon's layer from ``cfg.layer`` (see :func:`swapd.layer.build.build_layer`)."""
    from swapd.layer.build import build_layer as build

    return build(cfg.layer, state_path, clock=clock, max_pages=max_pages, options=options,
                 tiers=cfg.tier_chain(), tier_options=cfg.tier,
                 backend_options=cfg.backend_options())


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
        self.loop: EventLoop | Any = None  # EventLoop once started
        self.listener: socket.socket | None = None
        self.pager: Pager | None = None
        self.reclaimer: Reclaimer | None = None
        self.loader: Any = None  # swapd.daemon.loader.Loader: slow-tier loads
        self.shrinker: Any = None  # swapd.layer.ShrinkerThread
        self.started = time.monotonic()
        self.clients_total = 0
        self.departed: dict[str, int] = {}  # counters of ended sessions (loop thread)
        self.departed_hist = [0] * 64  # fault histograms of ended sessions (loop thread)
        self.departed_fault_ns = 0
        self.shrinker_enabled = True  # swapd ctl shrinker=off: no proactive writeback
        self.reload_requested = False  # SIGHUP: the loop reloads the config between events
        self.last_reload: dict[str, Any] | None = None  # {"ok", "message"} of the last reload
        self.admission = Admission(self, cfg)
        self.ops = Ops(self)
        self.recorder: Recorder | None = None
        self.keeper = Keeper(self)  # what outlives the process (fd store, registry)
        self.exit_status = 0  # of `swapd serve`: EX_RESTART after a requested restart

    # --- setup / teardown -----------------------------------------------------------------

    def start(self, marks: list[tuple[str, float]] | None = None) -> None:
        """Build the layer, bind the socket, start the reclaimer.  Raises SwapdError.

        ``marks``: ``(what, time.monotonic())`` is appended after the layer and after the
        sessions (how long a restart's clients wait for each; ``swapd serve`` logs them).
        """
        marks = marks if marks is not None else []
        cfg = self.cfg
        keeper = self.keeper
        keeper.passed = passed_fds(listen_fds())
        if self.layer is None:
            self.layer = keeper.adopt_layer()  # the stored state regions, after a restart
        if self.layer is None:
            keeper.remove_orphan_files(self.state_path)
            self.layer = build_layer(cfg, self.state_path)
            keeper.store_layer(self.layer)
        layer = self.layer
        marks.append(("layer adopted" if keeper.layer_adopted else "layer", time.monotonic()))
        if cfg.daemon.record:
            self.recorder = Recorder(cfg.daemon.record)
        rec = self.recorder.record if self.recorder is not None else None
        self.loop = loop = EventLoop(self)
        self.pager = Pager(layer, readahead_min=cfg.pager.readahead_min,
                           colocate=cfg.pager.colocate,
                           readahead_max=cfg.pager.readahead_max, forget_fd=loop.forget,
                           recorder=rec)
        rc = cfg.reclaim
        self.reclaimer = Reclaimer(
            layer, sessions=self.live_sessions, batch_pages=rc.batch_pages,
            low_watermark_pages=rc.low_watermark_pages, hard_slack_pages=rc.hard_slack_pages,
            global_limit_pages=cfg.limits.global_resident_bytes // PAGE_SIZE,
            refbit_slice_pages=rc.refbit_slice_pages, interval_s=rc.interval_ms / 1000.0,
            mark_gone=self.pager.mark_gone_locked,
            between_stores=loop.serve_faults_now, recorder=rec)
        self.pager.sizer = self.reclaimer.sizer
        self.pager.reclaim = self.reclaimer.direct_locked
        if cfg.pager.load_workers:  # slow-tier loads off the loop thread
            from swapd.daemon.loader import Loader

            self.loader = Loader(layer, workers=cfg.pager.load_workers,
                                 npages=cfg.pager.readahead_max)
            self.pager.loader = self.loader
            loop.register(self.loader.fd, "loads", self.loader)
        self.listener = keeper.take_listener()
        if self.listener is None:
            self.listener = self._bind()
            keeper.store_listener(self.listener)
        loop.register(self.listener.fileno(), "listen", self.listener)
        keeper.adopt()
        marks.append(("sessions", time.monotonic()))
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
                gid = resolve_groups((self.cfg.daemon.socket_group,)).pop()
                if gid != os.getegid():  # no chown(2) needed (and none allowed by the unit)
                    os.chown(path, -1, gid)
            sock.listen(64)
        except OSError as exc:
            sock.close()
            raise ConfigError(f"cannot listen on {path}: {exc.strerror}") from exc
        return sock

    def close(self) -> None:
        """End every session, stop the reclaimer, release the layer and the socket.

        After a hand-over (``Keeper.hand_over``) the sessions are not ended: only
        this process's copies of their descriptors are closed, and the socket
        stays (the fd store keeps it).
        """
        if self.reclaimer is not None:
            self.reclaimer.stop()
        if self.shrinker is not None:
            self.shrinker.stop()
        for s in list(self.sessions.values()):
            if self.keeper.handed_over:
                self._release_session(s)
            else:
                self.end_session(s, "daemon stopping")
        if self.listener is not None:
            self.listener.close()
            if not self.keeper.handed_over:
                with contextlib.suppress(OSError):
                    self.socket_path.unlink()
            self.listener = None
        if self.keeper.registry is not None:
            self.keeper.registry.close()
        if self.loader is not None:  # before the layer closes: no worker reads it after
            if self.loop is not None:
                self.loop.forget(self.loader.fd)
            self.loader.close()
            self.loader = None
        if self.pager is not None:
            self.pager.close()
        if self.loop is not None:
            self.loop.close()
            self.loop = None
        if self.layer is not None and self._layer_arg is None and not (
                self.keeper.handed_over and self.keeper.layer_kept):
            self.layer.close()  # after a hand-over the store keeps the layer's regions
        if self.recorder is not None:
            self.recorder.close()

    def stop(self) -> None:
        """Ask the loop to return (thread- and signal-safe)."""
        if self.loop is not None:
            self.loop.stop()

    def request_reload(self) -> None:
        """SIGHUP: reload the configuration on the loop thread (signal-safe)."""
        self.reload_requested = True
        if self.loop is not None:
            self.loop.wake()

    def reload(self) -> None:
        """Reload the configuration file now (loop thread; see swapd.daemon.control)."""
        from swapd.daemon.control import reload

        self.reload_requested = False
        reload(self)

    def serve_forever(self, *, ready: Callable[[], None] | None = None) -> None:
        """Run the event loop until :meth:`stop` (see :meth:`EventLoop.run`).

        With an fd store, a stop hands every session over to the next daemon.
        """
        assert self.loop is not None, "start() first"
        try:
            self.loop.run(ready=ready)
        except BaseException:
            # a bug stopped the loop: with a store, leave everything in it as a SIGKILL
            # would, so that the next daemon recovers every session (never end them here)
            if self.keeper.enabled:
                self.keeper.abandon()
            raise
        if self.keeper.enabled:
            self.keeper.hand_over()

    def request_restart(self) -> None:
        """``swapd ctl restart``: hand over and exit with EX_RESTART (the manager restarts)."""
        self.keeper.restart_requested = True
        self.exit_status = EX_RESTART
        self.stop()

    def check(self) -> None:
        """Run every structure's invariant check (debug flag).  O(everything)."""
        for s in list(self.sessions.values()):
            if not s.dead:
                s._check()
        assert self.layer is not None
        self.layer._check()

    # --- sessions ---------------------------------------------------------------------------

    def live_sessions(self) -> Iterator[Session]:
        """The sessions not ended, as a snapshot."""
        with self.lock:
            return iter([s for s in self.sessions.values() if not s.dead])

    def managed_bytes_of_uid(self, uid: int) -> int:
        """Bytes mapped by the live sessions of ``uid`` (the per-uid quota).  O(sessions)."""
        with self.lock:
            return sum(s.managed_pages for s in self.sessions.values()
                       if s.uid == uid and not s.dead) * PAGE_SIZE

    def sessions_of_uid(self, uid: int) -> int:
        """Live sessions of ``uid`` (the per-uid quota).  O(sessions)."""
        with self.lock:
            return sum(1 for s in self.sessions.values() if s.uid == uid and not s.dead)

    def region_of_file(self, dev: int, ino: int) -> int | None:
        """The id of a live region over the memfd ``(dev, ino)``, or None.  O(regions)."""
        with self.lock:
            sessions = list(self.sessions.values())
        for s in sessions:
            for r in list(s.regions.values()):
                if r.file == (-1, -1) and r.memfd >= 0:  # adopted after a restart
                    with contextlib.suppress(OSError):
                        st = os.fstat(r.memfd)
                        r.file = (st.st_dev, st.st_ino)
                if r.file == (dev, ino) and not r.dropped:
                    return r.id
        return None

    def new_region_id(self) -> int:
        """A daemon-wide unique region id."""
        with self.lock:
            return next(self._rids)

    def open_session(self, sock: socket.socket, pid: int, uid: int, gid: int,
                     pidfd: int) -> Session:
        """A new session for an admitted peer; its socket and pidfd join the loop."""
        from swapd.plugins import make_policy

        lim = self.cfg.limits
        policy = make_policy(self.cfg.reclaim.policy)
        with self.lock:
            sid = next(self._sids)
            session = Session(sid, pid, uid, gid, limit_pages=min(
                lim.default_resident_bytes, lim.global_resident_bytes) // PAGE_SIZE,
                policy=policy, latency_samples=self.cfg.pager.latency_samples)
            session.pidfd = pidfd
            self.sessions[sid] = session
            self.clients_total += 1
        session.token = secrets.token_hex(16)
        conn = Connection(sock, session)
        session.conn = conn
        self.loop.register(sock.fileno(), "conn", conn)
        self.loop.register(pidfd, "pidfd", session)
        log.info("client %d (pid %d uid %d) connected", sid, pid, uid)
        if not self.keeper.session_opened(session):
            self.end_session(session, "the fd store did not take its descriptors "
                             "(FileDescriptorStoreMax= reached?)")
        return session

    def reattach(self, fresh: Session, token: str) -> Session | None:
        """Move ``fresh``'s connection to the live session named by ``token`` (hello).

        The session must belong to the same process.  ``fresh`` (which owns
        nothing yet) is ended.  Returns the session, or None if no such session.
        """
        with self.lock:
            target = next((s for s in self.sessions.values() if s.token == token
                           and not s.dead and s is not fresh), None)
        if target is None or target.pid != fresh.pid:
            return None
        conn = fresh.conn
        fresh.conn = None
        old = target.conn
        if old is not None and not old.closed:
            old.closed = True
            self.loop.forget(old.sock.fileno())
            old.reader.close()
            old.sock.close()
        conn.session = target
        target.conn = conn
        self.end_session(fresh, "re-attached to its earlier session")
        self.keeper.conn_replaced(target)
        log.info("client %d (pid %d) re-attached", target.id, target.pid)
        return target

    def _release_session(self, session: Session) -> None:
        """Close this process's copies of a session's descriptors; the store keeps them."""
        with session.lock:
            for region in list(session.regions.values()):
                self.loop.forget(region.uffd.fd)
                region.uffd.close()
                os.close(region.memfd)
                region.memfd = -1
                region.close_state()
            self.loop.forget(session.pidfd)
            session.close_fds_locked()
        conn: Connection | None = session.conn
        if conn is not None and not conn.closed:
            conn.closed = True
            self.loop.forget(conn.sock.fileno())
            conn.reader.close()
            conn.sock.close()

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
            self.loop.forget(session.pidfd)
            session.close_fds_locked()
        conn: Connection | None = session.conn
        if conn is not None and not conn.closed:
            conn.closed = True
            self.loop.forget(conn.sock.fileno())
            conn.reader.close()
            conn.sock.close()
        with self.lock:
            self.sessions.pop(session.id, None)
        self.keeper.session_ended(session)
        for k, v in session.counters.as_dict().items():
            self.departed[k] = self.departed.get(k, 0) + v
        for i, n in enumerate(session.fault_hist):
            self.departed_hist[i] += n
        self.departed_fault_ns += session.fault_ns
        if session.recorder is not None:
            from swapd.daemon.control import session_ended

            session_ended(self, session)

    # --- statistics (kept as methods for callers of the daemon object) -----------------------

    def session_stats(self, s: Session) -> dict[str, Any]:
        """One client's statistics (:func:`swapd.daemon.stats.session_stats`)."""
        return session_stats(self, s)

    def all_stats(self) -> dict[str, Any]:
        """Every client's and the daemon's statistics (:func:`swapd.daemon.stats.all_stats`)."""
        return all_stats(self)
