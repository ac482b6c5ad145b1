"""The daemon's event loop: one epoll over every descriptor the daemon serves.

Design.  The loop thread waits on one epoll set holding the listening socket,
every client's control socket and pidfd, every region's userfaultfd and a wake
pipe.  Each ready descriptor is handled by kind: a userfaultfd by the
:class:`~swapd.daemon.pager.Pager` (then direct reclaim if the session is over
its limit), the load workers' eventfd by placing the pages they loaded from a slow
tier (:meth:`~swapd.daemon.pager.Pager.complete_load`), a control socket by
:class:`~swapd.daemon.ops.Ops`, a pidfd by ending
the session (the client exited: nothing arrives on a userfaultfd then), the
listening socket by :class:`~swapd.daemon.admission.Admission`.  Within one
batch of events, faults go first and departures before admissions (quotas).
With inline reclaim (``[reclaim] inline``) the loop runs background reclaim (one
batch, when the sizer says a client's headroom fell below its low watermark)
whenever it finds no event -- or, if it has found events every time for
``max_defer`` (a fault storm), once per turn anyway -- and sweeps the software
referenced bit and runs the layer's shrinker on its interval.  Faults that would
cross a limit pay for their own reclaim in the pager (direct reclaim), so the
limit holds whichever CPU the loop runs on (``[pager] colocate``).

Fairness: each turn handles at most one slice of each ready region (the pager
reads at most ``SLICE_EVENTS`` faults per call; epoll is level-triggered, so the
rest comes next turn, after the other clients); a batch evicted on the loop
thread (``advise cold``, background reclaim) serves the pending faults of every
client every 8 stores and feeds the watchdog there, so no client's fault storm
or long ``advise cold`` holds another's faults for more than one slice.

Busy-polling (``[pager] busy_poll_us``, 0 = off): before the loop blocks in
epoll it polls without blocking for that long, like KVM's halt-polling, so a
fault arriving soon after the last one finds the loop awake (measured in
tests/bench/RESULTS.md).  The loop feeds the watchdog (``WATCHDOG=1``), sends
``STATUS=`` when the number of clients changes, and runs every invariant check
once a second under ``--check``.  A handler's unexpected exception costs its
client the session, never the loop (an :class:`InvariantError` stops it).

Lock order: ``EventLoop.fd_lock`` (the descriptor table) is a leaf.  Only the
loop thread reads sockets and userfaultfds; the reclaimer thread may call
:meth:`EventLoop.forget` and :meth:`EventLoop.serve_faults_now` (a no-op off the
loop thread).
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import threading
import time
from typing import TYPE_CHECKING, Any

from swapd.daemon.session import ManagedRegion, Session
from swapd.errors import ClientGoneError, InvariantError
from swapd.kernel.errors import KernelError

if TYPE_CHECKING:
    from collections.abc import Callable

    from swapd.daemon.server import Daemon

log = logging.getLogger("swapd.daemon.server")

__all__ = ["EventLoop"]

_ORDER = {"loads": 0, "uffd": 0, "pidfd": 1, "conn": 2, "wake": 3, "listen": 4}  # per batch


class EventLoop:
    """The epoll loop of one daemon (see the module docstring)."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.ep = select.epoll()
        self.fd_lock = threading.Lock()  # leaf; guards fds and epoll registration
        self.fds: dict[int, tuple[str, Any]] = {}  # fd -> (kind, object), under fd_lock
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.register(self._wake_r, "wake", None)
        self._stop = False
        self._thread: threading.Thread | None = None  # the thread running run()
        self._yielding = False  # inside serve_faults_now: no nested reclaim
        self._wd_interval = 0.0  # loop thread: watchdog period (0: none)
        self._next_wd = 0.0  # loop thread: when WATCHDOG=1 is due
        self._status = ""
        self._status_n = -1  # session count of the last STATUS= (loop thread)
        self._listen_paused: tuple[int, Any] | None = None  # (fd, socket) out of the set
        self._listen_resume = 0.0  # loop thread: when the paused listener comes back

    # --- the descriptor table ------------------------------------------------------------

    def register(self, fd: int, kind: str, obj: Any) -> None:
        """Watch ``fd`` for input; ``kind`` is uffd, loads, conn, pidfd, listen or wake."""
        with self.fd_lock:
            self.fds[fd] = (kind, obj)
            self.ep.register(fd, select.EPOLLIN)

    def forget(self, fd: int) -> None:
        """Stop watching ``fd`` (before it is closed).  Idempotent; any thread."""
        if fd < 0:
            return
        with self.fd_lock:
            if self.fds.pop(fd, None) is not None:
                with contextlib.suppress(OSError):
                    self.ep.unregister(fd)

    def pause_listener(self, seconds: float) -> None:
        """Take the listening socket out of the set for ``seconds`` (accept ran out of
        descriptors: level-triggered, it would wake the loop at once, forever)."""
        d = self.daemon
        if d.listener is None or self._listen_paused is not None:
            return
        fd = d.listener.fileno()
        self.forget(fd)
        self._listen_paused = (fd, d.listener)
        self._listen_resume = time.monotonic() + seconds

    def _maybe_resume_listener(self, now: float) -> None:
        if self._listen_paused is not None and now >= self._listen_resume:
            fd, sock = self._listen_paused
            self._listen_paused = None
            if self.daemon.listener is sock:
                self.register(fd, "listen", sock)

    # --- running ---------------------------------------------------------------------------

    def stop(self) -> None:
        """Ask :meth:`run` to return (thread- and signal-safe)."""
        self._stop = True
        self.wake()

    def wake(self) -> None:
        """Make :meth:`run` look at its flags now (thread- and signal-safe)."""
        if self._wake_w >= 0:
            with contextlib.suppress(OSError):
                os.write(self._wake_w, b"x")

    def close(self) -> None:
        """Close the epoll set and the wake pipe (after :meth:`run` returned)."""
        self.ep.close()
        for fd in (self._wake_r, self._wake_w):
            if fd >= 0:
                os.close(fd)
        self._wake_r = self._wake_w = -1

    def run(self, *, ready: Callable[[], None] | None = None) -> None:
        """Serve until :meth:`stop`.  Notifies READY=1 once the socket is being served."""
        d = self.daemon
        assert d.pager is not None and d.reclaimer is not None and d.layer is not None
        self._thread = threading.current_thread()
        cfg = d.cfg
        wd_usec = int(os.environ.get("WATCHDOG_USEC", "0") or 0)
        wd_interval = cfg.daemon.watchdog_interval_s or (wd_usec / 2e6 if wd_usec else 0)
        self._next_wd = 0.0
        next_check = 0.0
        d.notify("READY=1\nSTATUS=serving " + str(d.socket_path))
        if ready is not None:
            ready()
        ep = self.ep
        fds = self.fds
        reclaimer = d.reclaimer
        layer = d.layer
        inline = cfg.reclaim.inline
        interval = cfg.reclaim.interval_ms / 1000.0
        sizer = reclaimer.sizer
        spin_ns = cfg.pager.busy_poll_us * 1000
        clock_ns = time.perf_counter_ns
        next_sweep = 0.0
        next_reap = 0.0
        stalled_until = 0.0  # inline reclaim made no progress: not busy before this
        self._wd_interval = wd_interval
        while not self._stop:
            busy = inline and time.monotonic() >= stalled_until and reclaimer.needs_work()
            events = ep.poll(0)
            if not events and not busy:
                if spin_ns:  # bounded busy-polling before blocking (halt-polling)
                    until = clock_ns() + spin_ns
                    while not events and clock_ns() < until:
                        events = ep.poll(0)
                if not events:
                    events = ep.poll(interval if inline else 0.5)
            if busy and sizer.background_due(idle=not events):
                # idle (or deferred too long): one background batch
                rejects = self._store_rejects()
                if reclaimer.step() == 0 and self._store_rejects() > rejects:
                    # the layer refused every page of the batch (pool full, the disk failing
                    # or full; it backs off itself): wait an interval instead of spinning
                    stalled_until = time.monotonic() + interval
            t0 = time.perf_counter_ns()
            if len(events) > 1:  # departures before admissions (quota), faults first
                events.sort(key=lambda e: _ORDER.get(fds.get(e[0], ("",))[0], 0))
            for fd, _mask in events:
                entry = fds.get(fd)
                if entry is None:
                    continue
                try:
                    self.on_event(entry, t0)
                except InvariantError:
                    raise
                except Exception:  # a bug must cost one client, not all of them
                    log.exception("handling %s failed", entry[0])
                    owner = entry[1]
                    s = getattr(owner, "session", owner)
                    if isinstance(s, Session):
                        d.end_session(s, "internal error (see the log)")
            now = time.monotonic()
            if inline and now >= next_sweep:
                reclaimer.sweep_refbits()
                if d.shrinker_enabled:
                    layer.shrink_step()
                next_sweep = now + interval
            if now >= next_reap:  # idle and half-open connections, refused ones lingering
                d.admission.reap(now)
                self._maybe_resume_listener(now)
                next_reap = now + 0.25
            if wd_interval and now >= self._next_wd:
                d.notify("WATCHDOG=1")
                self._next_wd = now + wd_interval
            d.keeper.tick(now)
            if d.cfg.daemon.check_invariants and now >= next_check:
                d.check()
                next_check = now + 1.0
            if d.reload_requested:  # SIGHUP, applied between events
                d.reload()
            if len(d.sessions) != self._status_n:  # no formatting on the fault path
                self._update_status()
        d.notify("STOPPING=1")

    def _store_rejects(self) -> int:
        """Pages the layer refused so far, over the live sessions.  O(sessions)."""
        return sum(s.counters.store_rejects for s in self.daemon.live_sessions())

    def serve_faults_now(self) -> None:
        """Eviction on the loop thread (inline reclaim, direct reclaim, ``advise cold``),
        phase 2: serve the uffd events that are pending right now.

        Other descriptors are left for the main loop (epoll is level-triggered);
        no reclaim runs from here.
        """
        if self._yielding or threading.current_thread() is not self._thread:
            return  # the reclaimer thread's batches: the loop serves faults meanwhile
        self._yielding = True
        try:
            if self._wd_interval:  # a long advise cold must not starve the watchdog
                now = time.monotonic()
                if now >= self._next_wd:
                    self.daemon.notify("WATCHDOG=1")
                    self._next_wd = now + self._wd_interval
            events = self.ep.poll(0)
            if not events:
                return
            t0 = time.perf_counter_ns()
            for fd, _mask in events:
                entry = self.fds.get(fd)
                if entry is not None and entry[0] == "uffd":
                    self.on_event(entry, t0)
        finally:
            self._yielding = False

    def on_event(self, entry: tuple[str, Any], t0: int) -> None:
        """Handle one ready descriptor of the epoll table."""
        d = self.daemon
        pager, reclaimer = d.pager, d.reclaimer
        assert pager is not None and reclaimer is not None
        kind, obj = entry
        if kind == "uffd":
            region: ManagedRegion = obj
            try:
                pager.handle_events(region, t0)
            except ClientGoneError as exc:
                d.end_session(region.session, str(exc))
                return
            except KernelError as exc:
                log.error("region %s: %s", region.id, exc)
                with region.session.lock:
                    pager.drop_region_locked(region, f"uffd failed: {exc}")
                return
            s = region.session
            if reclaimer.threaded and not s.dead:
                reclaimer.direct(s)  # kicks the reclaimer thread when background work is due
        elif kind == "loads":  # load workers finished slow-tier loads: place them
            for job in obj.take_done():
                s = job.region.session
                try:
                    pager.complete_load(job)
                except ClientGoneError as exc:
                    d.end_session(s, str(exc))
                except KernelError as exc:
                    log.error("region %s: %s", job.region.id, exc)
                    with s.lock:
                        pager.drop_region_locked(job.region, f"uffd failed: {exc}")
                except InvariantError:
                    raise
                except Exception:  # a bug must cost one client, not all of them
                    log.exception("completing %r failed", job)
                    d.end_session(s, "internal error (see the log)")
                else:
                    if reclaimer.threaded and not s.dead:
                        reclaimer.direct(s)
        elif kind == "conn":
            d.ops.on_conn(obj)
        elif kind == "pidfd":
            d.end_session(obj, "client process exited")
        elif kind == "listen":
            assert d.listener is not None
            d.admission.accept(d.listener)
        elif kind == "wake":
            with contextlib.suppress(OSError):
                os.read(self._wake_r, 4096)

    def _update_status(self) -> None:
        d = self.daemon
        n = self._status_n = len(d.sessions)
        status = f"STATUS=serving {n} client{'s' if n != 1 else ''}"
        if status != self._status:
            self._status = status
            d.notify(status)
