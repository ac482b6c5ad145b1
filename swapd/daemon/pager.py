"""The pager: resolves the userfaultfd events of every client region.

Design.  The daemon's main thread reads events from each region's userfaultfd
when epoll reports it readable and calls :meth:`Pager.handle_events` -- one read
of at most ``slice_events`` faults per call, so one client's fault storm cannot
hold the loop (epoll is level-triggered: the rest comes next turn).  Every
placement is charged first (:meth:`Pager._charge_locked`, the sizer of
:mod:`swapd.policy.sizer`): a fault that would take its client over the
resident limit pays for one eviction batch first (direct reclaim, the memcg
charge path), a readahead or zero-fill-ahead run is shrunk to what fits, so the
client's memfds never hold more than its limit.  For each page fault, under the
owning ``Session.lock`` and by the page's state byte (``swapd.daemon.session``):

* MISSING on SWAPPED (the hot path): charge, ``layer.load`` and ``UFFDIO_COPY``
  of that page, then the bookkeeping (state, policy, counters, latency sample,
  trace record) and readahead: the contiguous run of SWAPPED pages after it
  (``layer.swapped_run``), loaded into one contiguous page-aligned buffer
  (``layer.load_run``) and placed with ONE multi-page ``UFFDIO_COPY``.  A random
  fault wakes its thread with its own COPY; a sequential one only after the run
  is placed (woken earlier, the thread would fault again on the next page
  before the run is there).  The window adapts like the kernel's swap readahead
  (``mm/swap_state.c``, ``swap_vma_readahead``, which sizes the window from
  readahead hits): a fault on the page where the previous fault or readahead
  ended is sequential and doubles the window, starting at ``readahead_min`` (4)
  up to ``readahead_max`` (64); any other fault is random and resets it to 0 (no
  readahead), so random access does not pay for pages it will not touch.
  Clean pages: a read fault and readahead load non-exclusively (the layer keeps
  the compressed copy) and place the pages write-protected
  (``UFFDIO_COPY_MODE_WP``); ``ManagedRegion.clean`` marks them.  Evicting a page
  that is still clean only drops it (``layer.store_clean``, no compression), as
  the kernel's reclaim drops a clean swap-cache page; a write fault loads
  exclusively and places the page writable.  A same-filled page comes back from
  ``layer.load`` as a filled page and is copied like any other.
* MISSING on SWAPPED in a slow tier (disk, remote): with load workers
  (``swapd.daemon.loader``), the loads of the loop never wait (``nowait``): a page at hand
  (a disk page in the page cache, ``Tier.load_nowait``) is loaded here as any other, a page
  that needs a slow tier's I/O raises WouldBlockError and the fault, with its readahead run,
  is handed to a worker (:meth:`Pager._submit_locked`), which loads it non-exclusively.
  The thread stays blocked; the loop serves other faults.  :meth:`Pager.complete_load`
  (loop thread, on the workers' eventfd) then charges, places (the faulting page first,
  writable for a write fault whose copy is freed only after the COPY; the run
  write-protected), accounts and wakes; see :meth:`Pager._complete_locked` for pages
  discarded, unmapped or unloadable meanwhile.  A fault on a page being loaded
  (``ManagedRegion.loading``) joins that load.  A synchronous readahead run stops at the
  first page it cannot load at once and hands the rest to a worker.
* MISSING on HOLE (never written): ``UFFDIO_ZEROPAGE``; a first touch where the
  last one ended zero-fills a run of HOLE pages ahead (zero-fill-ahead, window
  as readahead's), so a sequential fill pays one fault per run.
* MISSING on RESIDENT/EVICTING: a stale duplicate (the page is already there,
  EEXIST -> wake) or the client punched its own page (ZEROPAGE succeeds: the
  page reads as zeros, as after ``MADV_REMOVE``).
* WP on EVICTING: the client writes to a page being evicted; the eviction of
  that page is aborted (state back to RESIDENT, write protection cleared, which
  wakes the writer); phase 3 of the batch drops the stored copy.
* WP on SWAPPED: the batch finished first; ``UFFDIO_WAKE`` and the client
  refaults MISSING and gets the stored copy (docs/design.md sec. 11.4, resolution b).
* WP on a clean RESIDENT page: the first write; the kept copy is freed
  (``layer.invalidate``) and the protection cleared.
* WP on RESIDENT/HOLE otherwise: a stale uffd-wp marker; clear it.
* UNMAP of the whole region: free everything (layer and fds); of a part: the
  pages there become GONE and their stored copies are dropped.  REMAP of the
  whole region moves it; a partial mremap cannot be followed and the region is
  dropped (the client then blocks on its own uffd instead of reading zeros).

EAGAIN with nothing done (an unread non-cooperative event) is handled by
draining the region's events -- applying UNMAP/REMAP at once and queueing
faults -- and retrying.  ESRCH (client gone) ends the session; ENOENT (the
page was unmapped without an UNMAP event reaching us first) makes that page
GONE and drops its stored copy.  A page that cannot be loaded (checksum mismatch, disk
I/O error) is never served: it is poisoned (``UFFDIO_POISON``), so only that
access raises SIGBUS.

Fault latency is recorded as the daemon's service time: from the epoll wakeup
that reported the event to the return of the COPY/ZEROPAGE that woke the thread.

Lock order: ``Session.lock`` -> layer locks; the pager takes no other lock
while holding ``Session.lock`` except the leaf ``Daemon.fd_lock`` (through the
``forget_fd`` callback).  Direct reclaim runs with ``Session.lock`` held except
during its stores (phase 2), so a fault re-reads its page's state after a charge
that reclaimed.  Only the daemon's main thread calls ``handle_events``;
the reclaimer may call :meth:`mark_gone_locked` under ``Session.lock``.

Prior art: ``mm/swap_state.c`` (readahead window), ``mm/workingset.c``
(refault distance), UMap's fill workers (LLNL umap ``FillWorkers.cpp``),
docs/design.md secs. 11.3, 11.4, 11.6.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import logging
import os
import re
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from swapd.daemon.session import (
    EVICTING,
    GONE,
    HOLE,
    PAGE_SHIFT,
    PAGE_SIZE,
    RESIDENT,
    SWAPPED,
    LayerLike,
    ManagedRegion,
    SampleRing,
    page_key,
)
from swapd.errors import (
    ClientGoneError,
    CorruptPageError,
    EntryNotFoundError,
    SwapdError,
    TierIOError,
    WouldBlockError,
)
from swapd.kernel import memfd as kmemfd
from swapd.kernel.errors import (
    UffdClientGoneError,
    UffdError,
    UffdEventPendingError,
    UffdExistsError,
    UffdPartialCopyError,
    UffdRangeGoneError,
)
from swapd.kernel.uffd import (
    UFFD_PAGEFAULT_FLAG_WP,
    UFFD_PAGEFAULT_FLAG_WRITE,
    ForkEvent,
    PagefaultEvent,
    RemapEvent,
    RemoveEvent,
    UnmapEvent,
)
from swapd.policy.sizer import Sizer, SizerConfig, WatermarkSizer

if TYPE_CHECKING:
    from swapd.daemon.loader import Loader, LoadJob

log = logging.getLogger(__name__)

_MAX_RETRIES = 1000  # EAGAIN retries after draining events, per ioctl
_RESIDENT_RUN = bytes((RESIDENT,)) * 1024  # state bytes for a placed run (readahead_max <= 256)
_ONES = b"\x01" * 1024  # clean flags for a placed run
_RESIDENT_OR_EVICTING = re.compile(bytes([ord("["), RESIDENT, EVICTING, ord("]")]))
SLICE_EVENTS = 64  # events of one region handled per call of handle_events (one loop slice)


COLOCATE_EVERY = 256  # faults between two checks of the faulting thread's CPU
COLOCATE_STREAK = 8  # consecutive faults of another thread before the loop follows it


def thread_cpu(pid: int, tid: int) -> int | None:
    """The CPU thread ``tid`` of process ``pid`` last ran on, or None if it is gone.

    ``/proc/PID/task/TID/stat`` field 39 (``processor``, proc(5)); the fields are
    counted after the command name, which may itself contain spaces and parentheses.
    """
    try:
        with open(f"/proc/{pid}/task/{tid}/stat", "rb") as f:
            stat = f.read()
        return int(stat.rsplit(b")", 1)[1].split()[36])
    except (OSError, IndexError, ValueError):
        return None


class RegionGone(Exception):
    """Internal: the region was dropped while an event was being handled."""


class PageGone(Exception):
    """Internal: ENOENT -- the page's address is no longer registered (unmapped)."""


class Pager:
    """Serves faults and events for every region (see the module docstring).

    ``forget_fd(fd)`` is called (under ``Session.lock``) before the daemon's copy
    of a region's userfaultfd is closed, so that the daemon's epoll table drops it.
    ``recorder(page, op)`` (optional) is told of every fault served.
    """

    def __init__(self, layer: LayerLike, *, readahead_min: int, readahead_max: int,
                 forget_fd: Callable[[int], None],
                 recorder: Callable[[int, str], None] | None = None,
                 clock_ns: Callable[[], int] = time.perf_counter_ns,
                 colocate: bool = False, sizer: Sizer | None = None,
                 clean_pages: bool = True, zero_ahead: bool = True,
                 slice_events: int = SLICE_EVENTS) -> None:
        self.layer = layer
        # The charge of every placement (see the module docstring); ``reclaim(session, n)``
        # is the reclaimer's direct_locked, set by the daemon (None: never reclaim here).
        self.sizer: Sizer = sizer or WatermarkSizer(SizerConfig())
        self.reclaim: Callable[[Any, int], int] | None = None
        self.clean_pages = clean_pages  # read faults: write-protected, copy kept
        self.zero_ahead = zero_ahead  # sequential first-touch faults: zero-fill a run
        self.slice_events = max(1, slice_events)
        # CPU placement (main thread only): the loop follows the CPU of the thread whose
        # faults it serves, checked when the faulting thread changes and every
        # COLOCATE_EVERY faults.  _cpu is the CPU the loop is pinned to, -1 if none.
        self.colocate = colocate
        self._cpu = -1
        self._place_tid = -1
        self._since_place = 0
        self._cand_tid = -1  # a thread other than _place_tid faulting in a streak
        self._cand_n = 0
        self.ra_min = max(1, readahead_min)
        self.ra_max = max(self.ra_min, readahead_max)
        self.forget_fd = forget_fd
        self.recorder = recorder
        self.clock_ns = clock_ns
        # Page-aligned source of UFFDIO_COPY: the faulting page + the readahead run.
        # Used by the main thread only.
        self.buf = kmemfd.PageBuffer(1 + self.ra_max)
        self._page0 = self.buf.view[:PAGE_SIZE]  # the faulting page's slot
        self._src0 = self.buf.address
        self._src1 = self.buf.address + PAGE_SIZE  # the readahead run's first page
        # Fault service times of every client, departed ones included (main thread only).
        self.latency_ns = SampleRing(65536)  # the daemon's, over every client
        # Slow-tier loads on worker threads (swapd/daemon/loader.py), set by the daemon; None:
        # every load runs on the loop thread.
        self.loader: Loader | None = None

    def close(self) -> None:
        """Release the copy buffer."""
        self._page0.release()
        self.buf.close()

    # --- the event loop's entry point -----------------------------------------------------

    def handle_events(self, region: ManagedRegion, t0: int) -> None:
        """Read and resolve everything queued on ``region``'s uffd.  O(events).

        Raises ClientGoneError when the client's address space is gone (the
        caller ends the session).
        """
        session = region.session
        reads = 0
        while True:
            with session.lock:
                if region.dropped or session.dead:
                    return
                events: collections.deque[Any] = region.pending
                if not events:
                    # Fairness: one read (at most slice_events faults) per call; the
                    # loop's level-triggered epoll reports the rest on its next turn,
                    # after the other clients' descriptors.
                    if reads:
                        return
                    events.extend(region.uffd.read_events(self.slice_events))
                    reads += 1
                    if not events:
                        return
                try:
                    while events:
                        ev = events.popleft()
                        try:
                            self._dispatch_locked(region, ev, t0)
                        except PageGone:
                            self._gone_locked(region, ev)
                        if region.dropped:
                            return
                except RegionGone:
                    return
                except UffdClientGoneError as exc:
                    raise ClientGoneError(f"client {session.pid} is gone: {exc}") from exc

    # --- dispatch -------------------------------------------------------------------------

    def _dispatch_locked(self, region: ManagedRegion, ev: Any, t0: int) -> None:
        if isinstance(ev, PagefaultEvent):
            self._fault_locked(region, ev, t0)
        elif isinstance(ev, UnmapEvent):
            self._unmap_locked(region, ev.start, ev.end)
        elif isinstance(ev, RemapEvent):
            self._remap_locked(region, ev)
        elif isinstance(ev, RemoveEvent):
            # MADV_DONTNEED on a shared mapping keeps the page cache; nothing to do.
            pass
        elif isinstance(ev, ForkEvent):
            # Regions are refused when EVENT_FORK is enabled; never serve a child.
            log.warning("region %s: unexpected FORK event; closing the child's uffd", region.id)
            os.close(ev.ufd)

    def _gone_locked(self, region: ManagedRegion, ev: Any) -> None:
        """The event's page was unmapped under us (ENOENT): forget it (state GONE)."""
        addr = getattr(ev, "address", None)
        idx = region.index_of(addr) if addr is not None else -1
        if idx >= 0:
            self.mark_gone_locked(region, idx, 1)

    def mark_gone_locked(self, region: ManagedRegion, start: int, n: int) -> None:
        """Pages ``[start, start+n)`` were unmapped: drop their copies, state GONE."""
        session = region.session
        session._assert_locked()
        for i in range(start, start + n):
            st = region.state[i]
            if st in (RESIDENT, EVICTING):
                session.resident -= 1
                key = page_key(region.id, i)
                if key in session.policy:
                    session.policy.remove(key)
            if st != GONE:
                self.layer.invalidate(region.layer_region, i)
                region.state[i] = GONE
                region.clean[i] = 0

    def _drain_locked(self, region: ManagedRegion) -> None:
        """Read pending events: apply UNMAP/REMAP now, queue faults for later."""
        pending = region.pending
        for ev in region.uffd.read_events(64):
            if isinstance(ev, PagefaultEvent):
                pending.append(ev)
            else:
                self._dispatch_locked(region, ev, 0)
                if region.dropped:
                    raise RegionGone()

    def _ioctl_locked(self, region: ManagedRegion, fn: Callable[..., Any], *args: Any,
                      **kw: Any) -> Any:
        """Run a uffd ioctl, draining events and retrying on EAGAIN-pending."""
        for _ in range(_MAX_RETRIES):
            try:
                return fn(*args, **kw)
            except UffdEventPendingError:
                self._drain_locked(region)
            except UffdRangeGoneError:
                raise PageGone() from None
        log.error("region %s: events keep arriving; giving up on this ioctl", region.id)
        raise RegionGone()

    # --- faults ---------------------------------------------------------------------------

    def _fault_locked(self, region: ManagedRegion, ev: PagefaultEvent, t0: int) -> None:
        """Resolve one page fault.  The hot case (MISSING on SWAPPED) goes first and does
        nothing before its COPY but locate the page; the recorder is told afterwards."""
        addr = ev.address
        flags = ev.flags
        start = region.start
        if not start <= addr < region.end:
            log.warning("region %s: fault at %#x outside the region; waking", region.id, addr)
            self._ioctl_locked(region, region.uffd.wake, addr & ~(PAGE_SIZE - 1), PAGE_SIZE)
            return
        idx = (addr - start) >> PAGE_SHIFT
        st = region.state[idx]
        try:
            if flags & UFFD_PAGEFAULT_FLAG_WP:
                self._wp_locked(region, idx, st)
            elif st == SWAPPED:
                job = region.loading.get(idx) if region.loading else None
                if job is not None:  # a worker is loading it: the placement wakes this one too
                    job.waiters.append(t0)
                    region.session.counters.load_joins += 1
                else:
                    self._swapin_locked(region, idx, t0,
                                        bool(flags & UFFD_PAGEFAULT_FLAG_WRITE))
            else:
                self._missing_locked(region, idx, st, t0)
        finally:  # counted and recorded even if the page turned out to be unmapped
            if not flags & UFFD_PAGEFAULT_FLAG_WP:
                region.session.counters.faults += 1
            if self.recorder is not None:
                self.recorder(page_key(region.id, idx),
                              "w" if flags & UFFD_PAGEFAULT_FLAG_WRITE else "r")
            if self.colocate:
                self._follow_locked(region, ev.ptid)

    def _follow_locked(self, region: ManagedRegion, tid: int) -> None:
        """Pin the event loop and the faulting thread to the CPU that thread ran on.

        Why: the thread blocked in its fault is woken by our UFFDIO_COPY, and its next
        fault wakes us.  When the two run on different vCPUs that halt when idle, each of
        those wake-ups is an IPI to a halted vCPU, 50-100 us on these machines
        (docs/design.md sec. 11.8: a blocking handler pinned to the same vCPU 23-44 us per
        fault, to different vCPUs 107-139 us).  Pinning only the loop is not enough: the loop
        is still busy after the COPY, so the scheduler wakes the client on the other,
        idle vCPU.  Measured with ``swapd demo --size 128M --limit 32M`` on a quiet
        machine: client time per page, random access 43 -> 20 us, sequential 68 -> 19 us
        (``taskset -c 0`` on both gives the same).  The faulting thread's affinity is
        narrowed to the CPU it was running on (inside its own mask), a side effect a
        client sees in ``sched_getaffinity``.  On by default (``[pager] colocate``): the
        limit holds because faults pay for their own reclaim (:meth:`_charge_locked`).
        The CPU is read from ``/proc/PID/task/TID/stat`` (field 39, ``processor``) only
        when the faulting thread changes or every COLOCATE_EVERY faults.  The loop follows
        another thread only after COLOCATE_STREAK consecutive faults of it: when several
        clients fault in turns, it stays where it is and nobody's affinity is narrowed
        (chasing each of them would cost two affinity changes per fault and pile the
        clients onto few CPUs).
        """
        if tid == self._place_tid:
            n = self._since_place + 1
            self._cand_tid = -1
            if n < COLOCATE_EVERY:
                self._since_place = n
                return
        else:
            if tid != self._cand_tid:
                self._cand_tid = tid
                self._cand_n = 1
                return
            self._cand_n += 1
            if self._cand_n < COLOCATE_STREAK:
                return
            self._cand_tid = -1
        self._since_place = 0
        self._place_tid = tid
        cpu = thread_cpu(region.session.pid, tid)
        if cpu is None:
            return
        try:
            if cpu != self._cpu:
                os.sched_setaffinity(0, {cpu})
                self._cpu = cpu
            os.sched_setaffinity(tid, {cpu})
        except OSError as exc:  # CPU offline, outside our cpuset, or thread gone
            log.debug("colocate: cannot place on CPU %s: %s", cpu, exc)

    def _wp_locked(self, region: ManagedRegion, idx: int, st: int) -> None:
        """A write to a write-protected page (see the module docstring)."""
        region.session.counters.wp_faults += 1
        addr = region.address(idx)
        uffd = region.uffd
        if st == SWAPPED:
            self._ioctl_locked(region, uffd.wake, addr, PAGE_SIZE)
            return
        if st == EVICTING:
            region.state[idx] = RESIDENT  # phase 3 drops the stored copy
            region.session.counters.eviction_aborts += 1
        elif region.clean[idx]:  # the first write to a clean page: its kept copy goes
            region.clean[idx] = 0
            self.layer.invalidate(region.layer_region, idx)
        self._ioctl_locked(region, uffd.writeprotect, addr, PAGE_SIZE, wp=False)

    def _missing_locked(self, region: ManagedRegion, idx: int, st: int, t0: int) -> None:
        """A MISSING fault on a page that is not SWAPPED (see the module docstring)."""
        session = region.session
        if st == HOLE:
            self._zero_locked(region, idx, t0)
            return
        if st == GONE:
            self._ioctl_locked(region, region.uffd.wake, region.address(idx), PAGE_SIZE)
        else:  # RESIDENT/EVICTING: stale duplicate, or the client punched its own page
            if region.clean[idx] and self._zeropage_locked(region, idx):
                region.clean[idx] = 0  # punched by the client: it reads zeros, copy is stale
                self.layer.invalidate(region.layer_region, idx)
            elif not region.clean[idx]:
                self._zeropage_locked(region, idx)
        self._latency(session, t0)

    def _charge_locked(self, region: ManagedRegion, want: int, minimum: int = 1) -> int:
        """Charge ``want`` pages (``minimum`` of them needed) before placing them; returns
        how many may be placed.  O(1), or one direct-reclaim batch.

        A charge that does not fit makes this fault pay for reclaim first (the sizer's
        direct reclaim); ``Session.lock`` is released during its stores, so the caller
        re-reads the page's state afterwards.  If nothing could be evicted (every store
        refused) the ``minimum`` pages are placed anyway -- a client is never left blocked --
        and counted as ``charge_overruns``.  Raises RegionGone if the region went away.
        """
        session = region.session
        c = self.sizer.charge(session, want, minimum)
        if not c.reclaim:
            return c.allowed
        if self.reclaim is not None:
            self.reclaim(session, c.reclaim)
            if region.dropped or session.dead:
                raise RegionGone()
        room = session.limit_pages + self.sizer.config.hard_slack_pages - session.resident
        if room < minimum and session.limit_pages >= minimum:
            session.counters.charge_overruns += 1
        return min(want, max(room, minimum))

    def _zero_locked(self, region: ManagedRegion, idx: int, t0: int) -> None:
        """MISSING on HOLE: zero-fill the page (charged first).  A first touch where the
        last one ended is sequential (a fill) and zero-fills a run of HOLE pages ahead, its
        window doubling like readahead's, so a fill pays one fault per run."""
        session = region.session
        window = 1
        if self.zero_ahead and idx == region.ra_next:
            window = min(self.ra_max, max(self.ra_min, region.ra_window * 2))
            end = min(region.npages, idx + window)
            state = region.state
            k = 1
            while idx + k < end and state[idx + k] == HOLE:
                k += 1
            window = k
        if session.resident + window > session.limit_pages:
            window = self._charge_locked(region, window)
            if region.state[idx] != HOLE:  # the reclaim let another fault in first
                self._missing_locked(region, idx, region.state[idx], t0)
                return
            state = region.state
            k = 1
            while k < window and state[idx + k] == HOLE:
                k += 1
            window = k
        placed = self._zeropage_run_locked(region, idx, window)
        self._latency(session, t0)
        region.state[idx:idx + placed] = _RESIDENT_RUN[:placed]
        base = region.id << 32
        insert = session.policy.insert
        for j in range(idx, idx + placed):
            insert(base | j)
        session.resident += placed
        session.counters.zero_faults += 1
        if placed > 1:
            session.counters.zero_ahead_pages += placed - 1
            region.ra_window = window
        else:
            region.ra_window = 1 if idx == region.ra_next else 0
        region.ra_next = idx + placed

    def _latency(self, session: Any, t0: int) -> None:
        dt = self.clock_ns() - t0
        session.latency_ns.append(dt)
        session.fault_hist[dt.bit_length()] += 1  # swapd/metrics.py: log2 buckets, no lock
        session.fault_ns += dt
        self.latency_ns.append(dt)

    def _zeropage_locked(self, region: ManagedRegion, idx: int) -> bool:
        """ZEROPAGE one page; False if it was present (EEXIST: woken instead)."""
        addr = region.address(idx)
        try:
            self._ioctl_locked(region, region.uffd.zeropage, addr, PAGE_SIZE)
        except UffdExistsError:
            self._ioctl_locked(region, region.uffd.wake, addr, PAGE_SIZE)
            return False
        return True

    def _zeropage_run_locked(self, region: ManagedRegion, idx: int, n: int) -> int:
        """ZEROPAGE the HOLE pages ``[idx, idx+n)`` (one ioctl); returns pages to account.

        The first page is always accounted (present one way or another); after a
        partial zero-fill the rest of the run is left as HOLE.
        """
        if n <= 1:
            self._zeropage_locked(region, idx)
            return 1
        addr = region.address(idx)
        try:
            done = int(self._ioctl_locked(region, region.uffd.zeropage, addr,
                                          n << PAGE_SHIFT))
        except UffdExistsError:
            self._ioctl_locked(region, region.uffd.wake, addr, PAGE_SIZE)
            return 1
        except UffdPartialCopyError as exc:
            done = int(exc.copied)
        return max(1, done >> PAGE_SHIFT)

    def _copy_locked(self, region: ManagedRegion, addr: int, src: int, length: int, *,
                     wp: bool = False, dontwake: bool = False) -> int:
        """COPY ``length`` bytes; returns bytes placed by this call (EEXIST -> 0, woken).

        The common case is one ioctl.  EEXIST (the first page is present) wakes and
        returns 0; a partial copy returns the bytes done; other errors (an unread event,
        the range gone, the client gone) take :meth:`_copy_slow_locked`.
        """
        uffd = region.uffd
        try:
            return uffd.copy(addr, src, length, wp=wp, dontwake=dontwake)
        except UffdExistsError:
            self._ioctl_locked(region, uffd.wake, addr, PAGE_SIZE)
            return 0
        except UffdPartialCopyError as exc:
            return int(exc.copied)
        except UffdError:
            return self._copy_slow_locked(region, addr, src, length, wp, dontwake)

    def _copy_slow_locked(self, region: ManagedRegion, addr: int, src: int,
                          length: int, wp: bool, dontwake: bool = False) -> int:
        """:meth:`_copy_locked` after an error: retry, draining events on EAGAIN-pending."""
        try:
            return int(self._ioctl_locked(region, region.uffd.copy, addr, src, length,
                                          wp=wp, dontwake=dontwake))
        except UffdExistsError:
            self._ioctl_locked(region, region.uffd.wake, addr, PAGE_SIZE)
            return 0
        except UffdPartialCopyError as exc:
            return int(exc.copied)

    def _poison_locked(self, region: ManagedRegion, idx: int, exc: Exception) -> None:
        """Page ``idx`` cannot be loaded: poison it (SIGBUS on access, never wrong data)."""
        log.error("region %s page %d cannot be loaded (%s): poisoning it", region.id, idx, exc)
        addr = region.address(idx)
        try:
            region.uffd.writeprotect(addr, PAGE_SIZE, wp=False, dontwake=True)
            region.uffd.poison(addr, PAGE_SIZE)
        except SwapdError as perr:
            log.error("region %s page %d: poison failed: %s", region.id, idx, perr)
        region.state[idx] = GONE
        region.session.counters.poisoned_pages += 1

    def _swapin_locked(self, region: ManagedRegion, idx: int, t0: int, write: bool) -> None:
        """MISSING on SWAPPED: charge, load, COPY the page (waking the thread), then
        bookkeeping and readahead.  O(1) before the COPY (plus a direct-reclaim batch when
        the charge does not fit), O(window) readahead after it.

        A read fault keeps the stored copy (non-exclusive load) and places the page
        write-protected: evicting it while it is still clean only drops it.  A write fault
        frees the copy.  A same-filled page comes back from ``layer.load`` as a filled page
        and is copied like any other.
        """
        session = region.session
        # readahead: a fault where the last one (or its readahead) ended is sequential and
        # doubles the window (from ra_min up to ra_max); any other fault resets it to 0.
        # The window counts the faulting page (COPY p, then [p+1, p+k)).
        if idx == region.ra_next:
            window = min(self.ra_max, max(self.ra_min, region.ra_window * 2))
        else:
            window = 0
        want = max(1, window)
        allowed = want
        nowait = self.loader is not None
        if session.resident + want > session.limit_pages:
            if nowait and self.layer.needs_io(region.layer_region, idx):
                self._submit_locked(region, idx, window, t0, write)  # charged when loaded
                return
            allowed = self._charge_locked(region, want)
            st = region.state[idx]
            if st != SWAPPED:  # the reclaim let another fault (or event) in first
                self._missing_locked(region, idx, st, t0)
                return
        clean = self.clean_pages and not write
        try:
            data = self.layer.load(region.layer_region, idx, not clean, nowait=nowait)
        except WouldBlockError:  # a slow tier: a load worker reads it, the loop goes on
            self._submit_locked(region, idx, window, t0, write)
            return
        except (CorruptPageError, TierIOError, EntryNotFoundError) as exc:
            self._poison_locked(region, idx, exc)
            self._latency(session, t0)
            return
        self._page0[:] = data
        addr = region.start + (idx << PAGE_SHIFT)
        # A sequential fault wakes its thread only after the readahead run is placed: woken
        # at once, the thread would fault again on the next page before the run is there
        # (a second round trip), and on a shared CPU it would preempt the run's placement.
        later = allowed > 1
        placed = self._copy_locked(region, addr, self._src0, PAGE_SIZE, wp=clean,
                                   dontwake=later)
        if not later:
            self._latency(session, t0)  # the thread is awake: the rest is off its path
        region.state[idx] = RESIDENT
        if clean:
            if placed:
                region.clean[idx] = 1
                session.counters.clean_faults += 1
            else:  # the page was there already: it is the authority, the copy is stale
                self.layer.invalidate(region.layer_region, idx)
        session.resident += 1
        session.policy.insert((region.id << 32) | idx)
        c = session.counters
        c.swapins += 1
        ev = region.evicted_seq[idx]  # 0: never evicted
        if ev and session.eviction_seq - ev < session.limit_pages:
            c.refaults += 1
        if window:
            c.readahead_hits += 1
        region.ra_window = window
        if later:
            try:
                self._readahead_locked(region, idx + 1, allowed - 1)
            finally:
                if placed:
                    self._ioctl_locked(region, region.uffd.wake, addr, PAGE_SIZE)
                self._latency(session, t0)
        else:
            region.ra_next = idx + 1

    def _readahead_locked(self, region: ManagedRegion, start: int, window: int) -> int:
        """Copy in up to ``window`` SWAPPED pages from ``start`` (already charged); returns
        pages placed."""
        region.ra_next = start
        if window <= 0 or start >= region.npages:
            return 0
        window = min(window, region.npages - start, self.ra_max)
        n = self.layer.swapped_run(region.layer_region, start, window)
        state = region.state
        loading = region.loading
        # our state is the authority: stop at the first page that is not SWAPPED (or is
        # being loaded by a worker)
        k = 0
        while k < n and state[start + k] == SWAPPED and start + k not in loading:
            k += 1
        if k == 0:
            return 0
        return self._copy_run_locked(region, start, k, readahead=True)

    def _copy_run_locked(self, region: ManagedRegion, start: int, k: int, *,
                         readahead: bool) -> int:
        """Load the SWAPPED run ``[start, start+k)`` into one contiguous buffer (pages 1..k)
        and place it with ONE multi-page UFFDIO_COPY; returns pages placed.  O(k).

        The run is charged by the caller.  With clean pages on, the loads keep the stored
        copies and the run is placed write-protected (nobody has written it yet).  A page
        that cannot be loaded is poisoned and ends the run there.  With load workers, the
        run's loads do not wait: from the first page in a slow tier on, the rest of the run
        goes to a worker (:meth:`_submit_run_locked`) and is placed when it is loaded.
        """
        load = self.layer.load
        load_run = self.layer.load_run
        rid = region.layer_region
        view = self.buf.view
        clean = self.clean_pages
        exclusive = not clean
        nowait = self.loader is not None
        end = start + k
        i = start
        off = PAGE_SIZE
        rest = False
        try:
            while i < end:
                # the run is decompressed straight into the buffer; load() then tells why it
                # stopped (raising), or takes the one page the batch did not (a disk page)
                n = load_run(rid, i, end - i, view[off:off + ((end - i) << PAGE_SHIFT)],
                             exclusive, nowait=nowait)
                i += n
                off += n << PAGE_SHIFT
                if i < end:
                    view[off:off + PAGE_SIZE] = load(rid, i, exclusive, nowait=nowait)
                    off += PAGE_SIZE
                    i += 1
        except WouldBlockError:
            rest = True
        except (CorruptPageError, TierIOError, EntryNotFoundError) as exc:
            self._poison_locked(region, i, exc)
        loaded = i - start
        placed = 0
        if loaded:
            placed = self._place_run_locked(region, start, loaded, self._src1,
                                            readahead=readahead, kept=False)
        if rest and not region.dropped:
            self._submit_run_locked(region, i, end - i)
            if readahead:
                region.ra_next = end
        return placed

    def _place_run_locked(self, region: ManagedRegion, start: int, loaded: int, src: int, *,
                          readahead: bool, kept: bool) -> int:
        """Place the loaded run ``[start, start+loaded)`` from address ``src`` with one
        multi-page UFFDIO_COPY (write-protected with clean pages on) and account it; returns
        pages placed.  ``kept``: the layer kept the copies (a worker's non-exclusive load);
        without clean pages they are freed once placed.  After a partial copy (a page became
        present: the client wrote it) the rest goes page by page, and a present page wins (its
        kept copy is freed).  O(loaded).
        """
        session = region.session
        rid = region.layer_region
        clean = self.clean_pages
        i = start + loaded
        dst = region.start + (start << PAGE_SHIFT)
        present: list[int] = []
        try:
            done = self._copy_locked(region, dst, src, loaded << PAGE_SHIFT, wp=clean)
            for j in range(done >> PAGE_SHIFT, loaded):
                if not self._copy_locked(region, dst + (j << PAGE_SHIFT),
                                         src + (j << PAGE_SHIFT), PAGE_SIZE, wp=clean):
                    present.append(start + j)
        except PageGone:  # unmapped meanwhile: the loaded copies have nowhere to go
            self.mark_gone_locked(region, start, loaded)
            return 0
        region.state[start:i] = _RESIDENT_RUN[:loaded]
        if clean:
            region.clean[start:i] = _ONES[:loaded]
            for j in present:
                region.clean[j] = 0
                self.layer.invalidate(rid, j)
        elif kept:
            for j in range(start, i):
                self.layer.invalidate(rid, j)
        insert = session.policy.insert
        base = region.id << 32
        for j in range(start, i):
            insert(base | j)
        session.resident += loaded
        if readahead:
            session.counters.readahead_pages += loaded
            if not kept:  # a worker's run: the faults that came meanwhile moved ra_next on
                region.ra_next = i
            if self.recorder is not None:  # a load without a fault (op "p")
                for j in range(start, i):
                    self.recorder(base | j, "p")
        return loaded

    # --- slow-tier loads on the load workers (swapd/daemon/loader.py) ---------------------

    def _submit_locked(self, region: ManagedRegion, idx: int, window: int, t0: int,
                       write: bool) -> None:
        """A fault on a page in a slow tier: claim it and the readahead run after it (the
        SWAPPED pages no worker is loading yet) and hand them to a load worker.  O(window).
        The fault's thread stays blocked until :meth:`complete_load` places the page."""
        from swapd.daemon.loader import LoadJob

        assert self.loader is not None
        n = 1
        if window > 1:
            end = min(region.npages, idx + min(window, self.ra_max))
            state = region.state
            loading = region.loading
            while idx + n < end and state[idx + n] == SWAPPED and idx + n not in loading:
                n += 1
        job = LoadJob(region, idx, n, fault=True, write=write, window=window, t0=t0)
        self._claim_locked(region, job)
        region.ra_window = window
        region.ra_next = idx + n if window else idx + 1
        region.session.counters.worker_loads += 1

    def _submit_run_locked(self, region: ManagedRegion, start: int, n: int) -> None:
        """Readahead of the SWAPPED run ``[start, start+n)`` (a prefix not being loaded
        already) on a load worker; nobody waits for it."""
        from swapd.daemon.loader import LoadJob

        state = region.state
        loading = region.loading
        k = 0
        while k < n and state[start + k] == SWAPPED and start + k not in loading:
            k += 1
        if k:
            self._claim_locked(region, LoadJob(region, start, k, fault=False))

    def _claim_locked(self, region: ManagedRegion, job: LoadJob) -> None:
        assert self.loader is not None
        loading = region.loading
        for j in range(job.start, job.start + job.n):
            loading[j] = job
        self.loader.submit(job)

    def complete_load(self, job: LoadJob) -> None:
        """Loop thread: a worker finished ``job``.  Charge, place, account and wake (see
        :meth:`_complete_locked`); the job's pages are released from ``loading``.

        Raises ClientGoneError when the client's address space is gone (the caller ends the
        session).
        """
        region = job.region
        session = region.session
        try:
            with session.lock:
                try:
                    self._complete_locked(job)
                except (RegionGone, PageGone):
                    pass
                except UffdClientGoneError as exc:
                    raise ClientGoneError(f"client {session.pid} is gone: {exc}") from exc
                finally:
                    loading = region.loading
                    for j in range(job.start, job.start + job.n):
                        if loading.get(j) is job:
                            del loading[j]
        finally:
            if self.loader is not None:
                self.loader.release(job)

    def _complete_locked(self, job: LoadJob) -> None:
        """Place what ``job`` loaded.  O(job.n) plus one charge.

        The prefix of the loaded pages that are still SWAPPED is charged (a charge that does
        not fit pays for direct reclaim or shrinks the run) and placed: the faulting page
        first -- writable for a write fault, whose kept copy is freed only now that the page
        is in place -- then the rest as one write-protected run, then the fault is woken.  A
        loaded page that is not placed becomes a stored page again (``layer.store_clean``);
        a page that the client discarded or unmapped meanwhile was freed by that event and is
        skipped.  A page that could not be loaded is poisoned if it is still SWAPPED.  Threads
        waiting on a page of the run that was not placed are woken to fault again.
        """
        region = job.region
        session = region.session
        if region.dropped or session.dead:
            return  # its layer entries went with it; the drop woke the waiting threads
        start, n = job.start, job.n
        state = region.state
        rid = region.layer_region
        loaded = job.loaded
        k = 0
        placed = 0
        try:
            while k < loaded and state[start + k] == SWAPPED:
                k += 1
            err = job.error
            bad = start + loaded
            if err is not None and bad < start + n and state[bad] == SWAPPED:
                if not isinstance(err, CorruptPageError | TierIOError | EntryNotFoundError):
                    raise err
                # not found: poisoned unless the page was discarded and stored anew meanwhile
                # (then it faults again and gets that copy)
                if not (isinstance(err, EntryNotFoundError) and self.layer.has_copy(rid, bad)):
                    self._poison_locked(region, bad, err)
            if k and session.resident + k > session.limit_pages:
                allowed = self._charge_locked(region, k)  # may release the lock
                k = min(k, allowed)
                j = 0
                while j < k and state[start + j] == SWAPPED:
                    j += 1
                k = j
            if k:
                try:
                    placed = self._place_job_locked(job, k)
                except PageGone:  # unmapped under us: its copies go
                    self.mark_gone_locked(region, start, k)
        finally:
            if not region.dropped:
                for j in range(start + placed, start + loaded):
                    if state[j] == SWAPPED:  # loaded but not placed: a stored page again
                        self._restore_locked(job, j)
                if placed < n:  # whoever waits on the rest faults again
                    with contextlib.suppress(SwapdError):
                        region.uffd.wake(region.address(start + placed), (n - placed) << PAGE_SHIFT)
            for t0 in job.waiters:
                self._latency(session, t0)

    def _place_job_locked(self, job: LoadJob, k: int) -> int:
        """Place the first ``k`` pages of ``job`` (charged, all SWAPPED); returns how many."""
        region = job.region
        session = region.session
        assert job.buf is not None
        src = job.buf.address
        start = job.start
        if not job.fault:
            return self._place_run_locked(region, start, k, src, readahead=True, kept=True)
        rid = region.layer_region
        clean = self.clean_pages and not job.write
        addr = region.address(start)
        later = k > 1
        placed = self._copy_locked(region, addr, src, PAGE_SIZE, wp=clean, dontwake=later)
        region.state[start] = RESIDENT
        if placed and clean:
            region.clean[start] = 1
            session.counters.clean_faults += 1
        else:  # a writable page (its copy is freed now that it is in place), or the page
            self.layer.invalidate(rid, start)  # was there already: it is the authority
        session.resident += 1
        session.policy.insert((region.id << 32) | start)
        c = session.counters
        c.swapins += 1
        if session.eviction_seq - region.evicted_seq[start] < session.limit_pages:
            c.refaults += 1
        if job.window:
            c.readahead_hits += 1
        done = 1
        if later:
            try:
                done += self._place_run_locked(region, start + 1, k - 1, src + PAGE_SIZE,
                                               readahead=True, kept=True)
            finally:
                if placed:
                    self._ioctl_locked(region, region.uffd.wake, addr, PAGE_SIZE)
        return done

    def _restore_locked(self, job: LoadJob, j: int) -> None:
        """Page ``j`` of ``job`` was loaded (its copy kept, clean) but is not placed: make
        the kept copy the stored page again, or store the loaded bytes if there is none."""
        rid = job.region.layer_region
        if self.layer.store_clean(rid, j):
            return
        assert job.buf is not None
        off = (j - job.start) << PAGE_SHIFT
        try:
            self.layer.store(rid, j, job.buf.view[off:off + PAGE_SIZE])
        except SwapdError as exc:  # it cannot be kept: never served as zeros
            self._poison_locked(job.region, j, exc)

    def cancel_loads(self) -> None:
        """Hand-over (the loop has stopped): wait for the running loads, cancel the queued
        ones, and make every loaded page a stored page again (``layer.store_clean``), so the
        next daemon finds it SWAPPED and stored; the waiting threads fault again there."""
        loader = self.loader
        if loader is None:
            return
        n = loader.in_flight()
        if n:
            log.warning("hand-over: waiting for %d load(s) in flight", n)
        loader.wait_idle(cancel=True)
        for job in loader.take_done():
            region = job.region
            with region.session.lock:
                loading = region.loading
                for j in range(job.start, job.start + job.n):
                    if loading.get(j) is job:
                        del loading[j]
                if not region.dropped and not region.session.dead:
                    state = region.state
                    for j in range(job.start, job.start + job.loaded):
                        if state[j] == SWAPPED:
                            self._restore_locked(job, j)
            loader.release(job)

    def prefetch_locked(self, region: ManagedRegion, start: int, npages: int,
                        budget: int) -> int:
        """``advise willneed``: copy in SWAPPED pages of the range, at most ``budget``."""
        session = region.session
        session._assert_locked()
        done = 0
        i = start
        end = start + npages
        state = region.state
        loading = region.loading
        while i < end and done < budget:
            if state[i] != SWAPPED or i in loading:
                i += 1
                continue
            k = 1
            while i + k < end and k < self.ra_max and done + k < budget and \
                    state[i + k] == SWAPPED and i + k not in loading:
                k += 1
            k = self.sizer.charge(session, k, 0).allowed  # a prefetch never reclaims
            if k <= 0:
                break
            done += self._copy_run_locked(region, i, k, readahead=False)
            i += k
        return done

    def discard_locked(self, region: ManagedRegion, start: int, npages: int) -> int:
        """``advise dontneed``: drop contents of the range; it reads as zeros after."""
        session = region.session
        session._assert_locked()
        state = region.state
        dropped = 0
        pages = itertools.chain.from_iterable(  # the pages outside these runs are HOLE
            range(a, a + n) for a, n in region.runs_in_use(start, start + npages))
        for i in pages:
            st = state[i]
            if st in (GONE, HOLE):
                continue
            key = page_key(region.id, i)
            if st == SWAPPED:
                self.layer.invalidate(region.layer_region, i)
            else:  # RESIDENT or EVICTING (the batch's phase 3 drops its stored copy)
                if region.clean[i]:
                    region.clean[i] = 0
                    self.layer.invalidate(region.layer_region, i)
                session.resident -= 1
                if key in session.policy:
                    session.policy.remove(key)
            state[i] = HOLE
            dropped += 1
        kmemfd.punch_hole(region.memfd, start << PAGE_SHIFT, npages << PAGE_SHIFT)
        return dropped

    # --- address-space events -------------------------------------------------------------

    def _unmap_locked(self, region: ManagedRegion, start: int, end: int) -> None:
        lo = max(start, region.start)
        hi = min(end, region.end)
        if lo >= hi:
            return
        if lo == region.start and hi == region.end:
            self.drop_region_locked(region, "unmapped by the client")
            raise RegionGone()
        i0 = (lo - region.start) >> PAGE_SHIFT
        n = (hi - lo + PAGE_SIZE - 1) >> PAGE_SHIFT
        self.discard_locked(region, i0, n)
        for i in range(i0, i0 + n):
            region.state[i] = GONE

    def _remap_locked(self, region: ManagedRegion, ev: RemapEvent) -> None:
        if ev.src == region.start and ev.length == region.end - region.start:
            region.start = ev.dst
            region.end = ev.dst + ev.length
            return
        if ev.src + ev.length <= region.start or ev.src >= region.end:
            return
        self.drop_region_locked(region, "partial mremap of the region is not supported")
        raise RegionGone()

    def drop_region_locked(self, region: ManagedRegion, reason: str) -> None:
        """Free everything of ``region`` (layer entries, policy keys, fds).  Idempotent.

        Caller holds ``Session.lock``.  O(npages).
        """
        session = region.session
        session._assert_locked()
        if region.dropped:
            return
        log.info("region %s of client %s dropped: %s", region.id, session.pid, reason)
        region.dropped = True
        policy = session.policy
        state = region.state
        for first, n in region.runs_in_use():  # pages outside the runs are HOLE
            for m in _RESIDENT_OR_EVICTING.finditer(bytes(state[first:first + n])):
                i = first + m.start()
                session.resident -= 1
                key = page_key(region.id, i)
                if key in policy:
                    policy.remove(key)
        session.regions.pop(region.id, None)
        session.managed_pages -= region.npages
        for job in set(region.loading.values()):  # threads waiting on a worker's load: wake
            with contextlib.suppress(SwapdError):  # them (they fault again, on nothing)
                region.uffd.wake(region.address(job.start), job.n << PAGE_SHIFT)
        if not session.layer_freed:
            try:
                self.layer.remove_region(region.layer_region)
            except (KeyError, SwapdError) as exc:  # already gone with its client
                log.debug("remove_region %s: %s", region.layer_region, exc)
        self.forget_fd(region.uffd.fd)
        region.uffd.close()
        os.close(region.memfd)
        region.memfd = -1


