"""The pager: resolves the userfaultfd events of every client region.

Design.  The daemon's main thread reads events from each region's userfaultfd
when epoll reports it readable and calls :meth:`Pager.handle_events`.  For each
page fault, under the owning ``Session.lock`` and by the page's state byte
(``swapd.daemon.session``):

* MISSING on SWAPPED: ``layer.load`` (exclusive), ``UFFDIO_COPY`` of that page
  alone -- which wakes the faulting thread -- then readahead: the contiguous
  run of SWAPPED pages after it (``layer.swapped_run``), loaded into the same
  page-aligned buffer and copied with one ``UFFDIO_COPY``.  The window adapts
  like the kernel's swap readahead (``mm/swap_state.c``, ``swap_vma_readahead``,
  which sizes the window from readahead hits): a fault on the page where the
  previous fault or readahead ended is sequential and doubles the window,
  starting at ``readahead_min`` (4) up to ``readahead_max`` (64); any other
  fault is random and resets it to 0 (no readahead), so random access does not
  pay for pages it will not touch.  A page stored
  as same-filled zero is resolved with ``UFFDIO_ZEROPAGE``.
* MISSING on HOLE (never written): ``UFFDIO_ZEROPAGE``.
* MISSING on RESIDENT/EVICTING: a stale duplicate (the page is already there,
  EEXIST -> wake) or the client punched its own page (ZEROPAGE succeeds: the
  page reads as zeros, as after ``MADV_REMOVE``).
* WP on EVICTING: the client writes to a page being evicted; the eviction of
  that page is aborted (state back to RESIDENT, write protection cleared, which
  wakes the writer); phase 3 of the batch drops the stored copy.
* WP on SWAPPED: the batch finished first; ``UFFDIO_WAKE`` and the client
  refaults MISSING and gets the stored copy (MECHANISMS.md 2.3, resolution b).
* WP on RESIDENT/HOLE: a stale uffd-wp marker; clear it.
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
``forget_fd`` callback).  Only the daemon's main thread calls ``handle_events``;
the reclaimer may call :meth:`mark_gone_locked` under ``Session.lock``.

Prior art: ``mm/swap_state.c`` (readahead window), ``mm/workingset.c``
(refault distance), UMap's fill workers (LLNL umap ``FillWorkers.cpp``),
MECHANISMS.md secs. 2.2, 2.3, 2.5.
"""

from __future__ import annotations

import collections
import logging
import os
import time
from collections.abc import Callable
from typing import Any

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
    page_key,
)
from swapd.errors import (
    ClientGoneError,
    CorruptPageError,
    EntryNotFoundError,
    SwapdError,
    TierIOError,
)
from swapd.kernel import memfd as kmemfd
from swapd.kernel.errors import (
    UffdClientGoneError,
    UffdEventPendingError,
    UffdExistsError,
    UffdPartialCopyError,
    UffdRangeGoneError,
)
from swapd.kernel.uffd import ForkEvent, PagefaultEvent, RemapEvent, RemoveEvent, UnmapEvent

log = logging.getLogger(__name__)

_MAX_RETRIES = 1000  # EAGAIN retries after draining events, per ioctl


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
                 clock_ns: Callable[[], int] = time.perf_counter_ns) -> None:
        self.layer = layer
        self.ra_min = max(1, readahead_min)
        self.ra_max = max(self.ra_min, readahead_max)
        self.forget_fd = forget_fd
        self.recorder = recorder
        self.clock_ns = clock_ns
        # Page-aligned source of UFFDIO_COPY: the faulting page + the readahead run.
        # Used by the main thread only.
        self.buf = kmemfd.PageBuffer(1 + self.ra_max)
        # Fault service times of every client, departed ones included (main thread only).
        self.latency_ns: collections.deque[int] = collections.deque(maxlen=65536)

    def close(self) -> None:
        self.buf.close()

    # --- the event loop's entry point -----------------------------------------------------

    def handle_events(self, region: ManagedRegion, t0: int) -> None:
        """Read and resolve everything queued on ``region``'s uffd.  O(events).

        Raises ClientGoneError when the client's address space is gone (the
        caller ends the session).
        """
        session = region.session
        first = True
        first_t0 = t0
        while True:
            with session.lock:
                if region.dropped or session.dead:
                    return
                events: collections.deque[Any] = region.pending
                if not events:
                    events.extend(region.uffd.read_events(64))
                    if not events:
                        return
                    t0 = first_t0 if first else self.clock_ns()
                    first = False
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
        session = region.session
        idx = region.index_of(ev.address)
        uffd = region.uffd
        page_addr = ev.address & ~(PAGE_SIZE - 1)
        if idx < 0:
            log.warning("region %s: fault at %#x outside the region; waking", region.id,
                        ev.address)
            self._ioctl_locked(region, uffd.wake, page_addr, PAGE_SIZE)
            return
        st = region.state[idx]
        c = session.counters
        if self.recorder is not None:
            self.recorder(page_key(region.id, idx), "w" if ev.is_write else "r")
        if ev.is_wp:
            c.wp_faults += 1
            if st == SWAPPED:
                self._ioctl_locked(region, uffd.wake, page_addr, PAGE_SIZE)
            else:
                if st == EVICTING:
                    region.state[idx] = RESIDENT  # phase 3 drops the stored copy
                    c.eviction_aborts += 1
                self._ioctl_locked(region, uffd.writeprotect, page_addr, PAGE_SIZE, wp=False)
            return
        c.faults += 1
        if st == SWAPPED:
            self._swapin_locked(region, idx, t0)
            return
        if st == HOLE:
            self._zeropage_locked(region, idx)
            region.state[idx] = RESIDENT
            session.resident += 1
            session.policy.insert(page_key(region.id, idx))
            c.zero_faults += 1
        elif st == GONE:
            self._ioctl_locked(region, uffd.wake, page_addr, PAGE_SIZE)
        else:  # RESIDENT/EVICTING: stale duplicate, or the client punched its own page
            self._zeropage_locked(region, idx)
        self._latency(session, t0)

    def _latency(self, session: Any, t0: int) -> None:
        dt = self.clock_ns() - t0
        session.latency_ns.append(dt)
        self.latency_ns.append(dt)

    def _zeropage_locked(self, region: ManagedRegion, idx: int) -> None:
        addr = region.address(idx)
        try:
            self._ioctl_locked(region, region.uffd.zeropage, addr, PAGE_SIZE)
        except UffdExistsError:
            self._ioctl_locked(region, region.uffd.wake, addr, PAGE_SIZE)

    def _copy_locked(self, region: ManagedRegion, addr: int, src: int, length: int) -> int:
        """COPY ``length`` bytes; returns bytes placed by this call (EEXIST -> 0, woken)."""
        try:
            return int(self._ioctl_locked(region, region.uffd.copy, addr, src, length))
        except UffdExistsError:
            self._ioctl_locked(region, region.uffd.wake, addr, PAGE_SIZE)
            return 0
        except UffdPartialCopyError as exc:
            return int(exc.copied)

    def _load_locked(self, region: ManagedRegion, idx: int, dst: memoryview) -> bool:
        """Load page ``idx`` into ``dst``; False (page poisoned) if it cannot be served."""
        try:
            data = self.layer.load(region.layer_region, idx)
        except (CorruptPageError, TierIOError, EntryNotFoundError) as exc:
            log.error("region %s page %d cannot be loaded (%s): poisoning it", region.id, idx,
                      exc)
            addr = region.address(idx)
            try:
                region.uffd.writeprotect(addr, PAGE_SIZE, wp=False, dontwake=True)
                region.uffd.poison(addr, PAGE_SIZE)
            except SwapdError as perr:
                log.error("region %s page %d: poison failed: %s", region.id, idx, perr)
            region.state[idx] = GONE
            region.session.counters.poisoned_pages += 1
            return False
        dst[:] = data
        return True

    def _swapin_locked(self, region: ManagedRegion, idx: int, t0: int) -> None:
        session = region.session
        c = session.counters
        layer = self.layer
        rid = region.layer_region
        key = page_key(region.id, idx)
        addr = region.address(idx)
        if layer.same_filled_value(rid, idx) == 0:
            layer.invalidate(rid, idx)
            region.state[idx] = HOLE  # if the zeropage below fails, the page is still zero
            self._zeropage_locked(region, idx)
        else:
            buf = self.buf
            if not self._load_locked(region, idx, buf.page(0)):
                self._latency(session, t0)
                return
            self._copy_locked(region, addr, buf.address, PAGE_SIZE)
        region.state[idx] = RESIDENT
        session.resident += 1
        session.policy.insert(key)
        c.swapins += 1
        if session.eviction_seq - region.evicted_seq[idx] < session.limit_pages:
            c.refaults += 1
        self._latency(session, t0)
        # readahead: adapt the window, then copy the contiguous swapped run after idx
        if idx == region.ra_next:
            region.ra_window = min(self.ra_max, max(self.ra_min, region.ra_window * 2))
            c.readahead_hits += 1
        else:
            region.ra_window = 0  # random access: no readahead until a sequential fault
        # the window counts the faulting page (MECHANISMS.md: COPY p, then [p+1, p+k))
        self._readahead_locked(region, idx + 1, region.ra_window - 1)

    def _readahead_locked(self, region: ManagedRegion, start: int, window: int) -> int:
        """Copy in up to ``window`` SWAPPED pages from ``start``; returns pages placed."""
        region.ra_next = start
        if window <= 0 or start >= region.npages:
            return 0
        window = min(window, region.npages - start, self.ra_max)
        n = self.layer.swapped_run(region.layer_region, start, window)
        state = region.state
        # our state is the authority: stop at the first page that is not SWAPPED
        k = 0
        while k < n and state[start + k] == SWAPPED:
            k += 1
        if k == 0:
            return 0
        return self._copy_run_locked(region, start, k, readahead=True)

    def _copy_run_locked(self, region: ManagedRegion, start: int, k: int, *,
                         readahead: bool) -> int:
        """Load and copy the SWAPPED run ``[start, start+k)``; returns pages placed."""
        session = region.session
        buf = self.buf
        loaded = 0
        for j in range(k):
            dst = buf.page(1 + j)
            if not self._load_locked(region, start + j, dst):
                break  # poisoned: stop the run there
            loaded += 1
        if loaded == 0:
            return 0
        src = buf.address + PAGE_SIZE
        try:
            done = self._copy_locked(region, region.address(start), src, loaded * PAGE_SIZE)
            done_pages = done >> PAGE_SHIFT
            # pages after a partial copy: one at a time (a present page wins: the client
            # wrote it)
            for j in range(done_pages, loaded):
                self._copy_locked(region, region.address(start + j), src + j * PAGE_SIZE,
                                  PAGE_SIZE)
        except PageGone:  # unmapped meanwhile: the loaded copies have nowhere to go
            self.mark_gone_locked(region, start, loaded)
            return 0
        for j in range(loaded):
            i = start + j
            region.state[i] = RESIDENT
            session.policy.insert(page_key(region.id, i))
        session.resident += loaded
        if readahead:
            session.counters.readahead_pages += loaded
            region.ra_next = start + loaded
        return loaded

    def prefetch_locked(self, region: ManagedRegion, start: int, npages: int,
                        budget: int) -> int:
        """``advise willneed``: copy in SWAPPED pages of the range, at most ``budget``."""
        region.session._assert_locked()
        done = 0
        i = start
        end = start + npages
        state = region.state
        while i < end and done < budget:
            if state[i] != SWAPPED:
                i += 1
                continue
            k = 1
            while i + k < end and k < self.ra_max and done + k < budget and \
                    state[i + k] == SWAPPED:
                k += 1
            done += self._copy_run_locked(region, i, k, readahead=False)
            i += k
        return done

    def discard_locked(self, region: ManagedRegion, start: int, npages: int) -> int:
        """``advise dontneed``: drop contents of the range; it reads as zeros after."""
        session = region.session
        session._assert_locked()
        state = region.state
        dropped = 0
        for i in range(start, start + npages):
            st = state[i]
            if st in (GONE, HOLE):
                continue
            key = page_key(region.id, i)
            if st == SWAPPED:
                self.layer.invalidate(region.layer_region, i)
            else:  # RESIDENT or EVICTING (the batch's phase 3 drops its stored copy)
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
        for i in range(region.npages):
            st = state[i]
            if st in (RESIDENT, EVICTING):
                session.resident -= 1
                key = page_key(region.id, i)
                if key in policy:
                    policy.remove(key)
        session.regions.pop(region.id, None)
        session.managed_pages -= region.npages
        if not session.layer_freed:
            try:
                self.layer.remove_region(region.layer_region)
            except (KeyError, SwapdError) as exc:  # already gone with its client
                log.debug("remove_region %s: %s", region.layer_region, exc)
        self.forget_fd(region.uffd.fd)
        region.uffd.close()
        os.close(region.memfd)
        region.memfd = -1


