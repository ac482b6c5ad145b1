"""The reclaimer: keeps every client under its resident limit and the daemon under its own.

Design.  How many pages go, and when, is the sizer's decision
(:mod:`swapd.policy.sizer`, shared with ``swapd sim`` full mode); this module
carries it out.  Three callers:

* **direct reclaim** (:meth:`Reclaimer.direct_locked`): the pager charges every
  placement before it places it; a charge that does not fit makes the faulting
  client pay for one batch of its own victims first (``mm/memcontrol.c``:
  ``try_charge_memcg`` -> ``try_to_free_mem_cgroup_pages``).  That batch runs
  under the client's ``Session.lock`` except for phase 2, and does not serve
  other faults between its stores: it is one bounded slice of the loop.
* **background reclaim** (:meth:`Reclaimer.step`, inline on the event loop when
  it is idle; or :meth:`balance` on the reclaimer thread when ``inline`` is
  off): one batch per call for the session whose headroom fell below the low
  watermark (the sizer's hysteresis), or from the largest session while the
  clients together exceed the global limit.
* **``advise cold``** (:meth:`evict_range`): the pages of a range, in batches.

An eviction batch has three phases (docs/design.md sec. 11.4):

1. under ``Session.lock``: take victims from the policy, group them into runs
   of contiguous pages per region, ``UFFDIO_WRITEPROTECT`` each run, mark the
   pages EVICTING and ``preadv`` them into a reused page-aligned buffer.  Never
   a daemon mapping of the memfd (a read through it would allocate a zero page
   the client then reads silently), never a page that is not RESIDENT.
2. without the lock: ``layer.store_batch`` each run (compression happens here, so the
   pager keeps serving faults meanwhile: from its own thread, or -- when the
   batch runs on the event loop's thread (inline or direct reclaim, ``advise
   cold``) -- through ``between_stores``, which serves pending faults every 8
   stores).  A refused page (False in ``store_batch``'s result) is noted.
3. under ``Session.lock``: a page still EVICTING becomes SWAPPED and its run is
   punched out of the memfd (``fallocate(PUNCH_HOLE)``); a refused page becomes
   RESIDENT again and is un-protected -- nothing is lost.  A page whose state
   changed meanwhile (a write aborted its eviction, the client discarded or
   unmapped it) keeps the new state and its stored copy is invalidated.

Recency (docs/design.md secs. 10 and 11.5): faults insert pages into the policy; the software
referenced bit adds hits for resident pages: each sweep zaps a slice of a
region with ``process_madvise(MADV_PAGEOUT)`` (the client's PTEs go, the page
cache stays; with no swap the data stays in the memfd), and the next sweep
reads ``PAGEMAP_SCAN`` PRESENT over that slice: pages the client touched since
were mapped again, and count as an ``access`` in the policy.

Lock order: ``Session.lock`` -> layer locks (see ``swapd.daemon.session``);
``Reclaimer._cond`` is a leaf (kick only sets a flag).

Prior art: ``mm/vmscan.c`` (watermarks, direct reclaim), ``mm/zswap.c``
(``shrink_memcg_cb``'s second chance), docs/design.md secs. 11.4 and 11.5.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from swapd.daemon.session import (
    EVICTING,
    PAGE_SHIFT,
    RESIDENT,
    SWAPPED,
    LayerLike,
    ManagedRegion,
    Session,
    page_key,
)
from swapd.errors import EntryNotFoundError, SwapdError
from swapd.kernel import memfd as kmemfd
from swapd.kernel.errors import (
    KernelError,
    UffdClientGoneError,
    UffdEventPendingError,
    UffdRangeGoneError,
)
from swapd.policy.sizer import Sizer, SizerConfig, WatermarkSizer

log = logging.getLogger(__name__)


@dataclass
class _Run:
    region: ManagedRegion
    start: int  # first page index
    count: int
    offset: int  # first page's index in the batch buffer
    stored: list[bool]


class Reclaimer:
    """Evicts resident pages (see the module docstring).  Thread-safe entry points."""

    def __init__(self, layer: LayerLike, *, sessions: Callable[[], Iterable[Session]],
                 batch_pages: int, low_watermark_pages: int, hard_slack_pages: int,
                 global_limit_pages: int, refbit_slice_pages: int, interval_s: float,
                 mark_gone: Callable[[ManagedRegion, int, int], None],
                 between_stores: Callable[[], None] | None = None,
                 recorder: Callable[[int, str], None] | None = None,
                 sizer: Sizer | None = None) -> None:
        self.layer = layer
        self.recorder = recorder  # ``--record``: told of every page evicted (op "e")
        self.sessions = sessions
        if sizer is None:
            sizer = WatermarkSizer(SizerConfig(
                batch_pages=batch_pages, low_watermark_pages=low_watermark_pages,
                hard_slack_pages=hard_slack_pages, global_limit_pages=global_limit_pages),
                clock=time.monotonic)
        self.sizer = sizer
        self.refbit_slice = refbit_slice_pages
        self.interval = interval_s
        self.mark_gone = mark_gone  # pager's mark_gone_locked: pages unmapped under us
        # Serve pending faults between stores of phase 2 when the batch runs on the event
        # loop's thread (no lock is held then); a no-op on the reclaimer thread.
        self.between_stores = between_stores
        self._tls = threading.local()  # per-thread PageBuffer
        self._cond = threading.Condition()
        self._kicked = False  # under _cond
        self._stop = False  # under _cond
        self._thread: threading.Thread | None = None
        self.refbit_ok = refbit_slice_pages > 0  # cleared on the first EPERM/ENOSYS
        self.errors = 0

    # --- thread ---------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="swapd-reclaim", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout=10)

    # The sizer's knobs, as the live-reload code (swapd.daemon.control) reads and sets them.
    @property
    def batch(self) -> int:
        return self.sizer.batch

    @batch.setter
    def batch(self, v: int) -> None:
        self.sizer.reconfigure(batch_pages=v)

    @property
    def low_wm(self) -> int:
        return self.sizer.config.low_watermark_pages

    @low_wm.setter
    def low_wm(self, v: int) -> None:
        self.sizer.reconfigure(low_watermark_pages=v)

    @property
    def hard_slack(self) -> int:
        return self.sizer.config.hard_slack_pages

    @hard_slack.setter
    def hard_slack(self, v: int) -> None:
        self.sizer.reconfigure(hard_slack_pages=v)

    @property
    def global_limit(self) -> int:
        return self.sizer.config.global_limit_pages

    @global_limit.setter
    def global_limit(self, v: int) -> None:
        self.sizer.reconfigure(global_limit_pages=v)

    @property
    def threaded(self) -> bool:
        """Whether background reclaim runs on the reclaimer thread (not inline)."""
        return self._thread is not None

    def kick(self) -> None:
        """Ask the thread to balance now (cheap; called by the pager)."""
        with self._cond:
            if not self._kicked:
                self._kicked = True
                self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                if not self._kicked and not self._stop:
                    self._cond.wait(self.interval)
                if self._stop:
                    return
                kicked, self._kicked = self._kicked, False
            try:
                self.balance()
                if not kicked:
                    self.sweep_refbits()
            except Exception:  # keep reclaiming; a bug here must not stop the daemon
                self.errors += 1
                log.exception("reclaimer pass failed")

    # --- sizing (the sizer decides; these carry it out) ------------------------------------

    def balance(self) -> int:
        """Background reclaim until no session and not the daemon needs any (the reclaimer
        thread).  Returns pages evicted."""
        total = 0
        while True:
            n = self.step()
            if n == 0:
                return total
            total += n

    def needs_work(self) -> bool:
        """True while background reclaim is due for a session or the daemon.  O(sessions).

        Updates the sizer's hysteresis flags (``Session.reclaiming``).
        """
        sizer = self.sizer
        total = 0
        work = False
        for s in self.sessions():
            total += s.resident
            if sizer.background(s):
                work = True
        return work or sizer.global_excess(total) > 0

    def step(self) -> int:
        """One background batch for the session with the least headroom among those the
        sizer says are due, else for the largest one if the global limit is exceeded.
        Returns pages evicted (0: nothing was due, or nothing could be evicted)."""
        sizer = self.sizer
        best: Session | None = None
        best_n = 0
        best_room = 0
        total = 0
        live = [s for s in self.sessions() if not s.dead]
        for s in live:
            total += s.resident
            n = sizer.background(s)
            room = s.limit_pages - s.resident
            if n and (best is None or room < best_room):
                best, best_n, best_room = s, n, room
        if best is None:
            over = sizer.global_excess(total)
            if over and live:
                best = max(live, key=lambda x: x.resident)
                best_n = over
        if best is None:
            return 0
        n = self.evict(best, best_n)
        if n:
            best.counters.background_reclaims += 1
        return n

    def direct(self, session: Session) -> int:
        """Kick the background thread when ``session`` needs reclaim (compatibility entry:
        the pager's charge does the direct reclaim).  Returns 0."""
        if self.sizer.background(session):
            self.kick()
        return 0

    def direct_locked(self, session: Session, n: int) -> int:
        """Direct reclaim: evict up to ``n`` of ``session``'s victims now, from the faulting
        path, ``Session.lock`` held (released during phase 2).  No fault is served between
        the stores.  Returns pages evicted."""
        session._assert_locked()
        if n <= 0 or session.dead:
            return 0
        session.counters.direct_reclaims += 1
        return self._evict_victims_locked(session, n, serve=False)

    # --- eviction -------------------------------------------------------------------------

    def _buffer(self, npages: int) -> kmemfd.PageBuffer:
        """This thread's batch buffer for the current nesting depth.

        A batch on the loop's thread may serve faults in its phase 2, and such a fault may
        pay for a direct-reclaim batch of its own: each depth has its own buffer.
        """
        tls = self._tls
        bufs: list[kmemfd.PageBuffer] | None = getattr(tls, "bufs", None)
        if bufs is None:
            bufs = tls.bufs = []
            tls.depth = 0
        d: int = tls.depth
        while len(bufs) <= d:
            bufs.append(kmemfd.PageBuffer(self.batch))
        buf = bufs[d]
        if buf.npages < npages:
            buf.close()
            buf = bufs[d] = kmemfd.PageBuffer(max(npages, self.batch))
        return buf

    def evict(self, session: Session, n: int) -> int:
        """Evict up to ``n`` victims of ``session``'s policy.  Returns pages evicted."""
        if n <= 0:
            return 0
        with session.lock:
            if session.dead:
                return 0
            return self._evict_victims_locked(session, n, serve=True)

    def _evict_victims_locked(self, session: Session, n: int, *, serve: bool) -> int:
        """Take ``n`` victims from the policy and evict them (lock held).  O(n log n)."""
        keys = session.policy.victims(n)
        if not keys:
            return 0
        pages: dict[int, list[int]] = {}
        for key in keys:
            k = int(key)  # type: ignore[call-overload]
            pages.setdefault(k >> 32, []).append(k & 0xFFFFFFFF)
        spans: list[tuple[ManagedRegion, int, int]] = []
        for rid, idxs in pages.items():
            region = session.regions.get(rid)
            if region is None:
                continue
            idxs.sort()
            i = 0
            while i < len(idxs):
                j = i + 1
                while j < len(idxs) and idxs[j] == idxs[j - 1] + 1:
                    j += 1
                spans.append((region, idxs[i], j - i))
                i = j
        return self._evict_spans_locked(session, spans, serve=serve)

    def evict_range(self, session: Session, region: ManagedRegion, start: int,
                    npages: int) -> int:
        """``advise cold``: evict the RESIDENT, policy-tracked pages of a range now."""
        total = 0
        i = start
        end = start + npages
        while i < end:
            with session.lock:
                if session.dead or region.dropped:
                    return total
                spans: list[tuple[ManagedRegion, int, int]] = []
                taken = 0
                policy = session.policy
                state = region.state
                while i < end and taken < self.batch:
                    key = page_key(region.id, i)
                    if state[i] == RESIDENT and key in policy:
                        policy.remove(key)
                        if spans and spans[-1][1] + spans[-1][2] == i:
                            r, s0, c = spans[-1]
                            spans[-1] = (r, s0, c + 1)
                        else:
                            spans.append((region, i, 1))
                        taken += 1
                    i += 1
                if not spans:
                    continue
                total += self._evict_spans_locked(session, spans)
        return total

    def _drop_clean_locked(self, session: Session, region: ManagedRegion, start: int,
                           count: int) -> list[tuple[ManagedRegion, int, int]]:
        """Evict the still-clean pages of a span by dropping them: the layer's clean copy
        becomes the stored copy again (``layer.store_clean``, no compression) and the page
        is punched, as the kernel's reclaim drops a clean swap-cache page.  Returns the
        rest of the span (the dirty pages, and clean ones whose copy the layer freed) as
        sub-spans.  O(count).  Session.lock held."""
        clean = region.clean
        state = region.state
        rest: list[tuple[ManagedRegion, int, int]] = []
        punch: list[tuple[int, int]] = []
        store_clean = self.layer.store_clean
        lrid = region.layer_region
        c = session.counters
        record = self.recorder
        for i in range(start, start + count):
            if clean[i]:
                clean[i] = 0
                if state[i] == RESIDENT and store_clean(lrid, i):
                    state[i] = SWAPPED
                    session.resident -= 1
                    session.eviction_seq += 1
                    region.evicted_seq[i] = session.eviction_seq
                    _extend(punch, i)
                    c.clean_drops += 1
                    c.evicted_pages += 1
                    if record is not None:
                        record(page_key(region.id, i), "e")
                    continue
            if rest and rest[-1][1] + rest[-1][2] == i:
                rest[-1] = (region, rest[-1][1], rest[-1][2] + 1)
            else:
                rest.append((region, i, 1))
        for s0, n in punch:
            kmemfd.punch_hole(region.memfd, s0 << PAGE_SHIFT, n << PAGE_SHIFT)
        return rest

    def _evict_spans_locked(self, session: Session,
                            spans: list[tuple[ManagedRegion, int, int]], *,
                            serve: bool = True) -> int:
        """Phase 1 under the lock (held on entry), then phases 2 and 3.  Returns pages.

        Still-clean pages are dropped in phase 1 (:meth:`_drop_clean_locked`); the others
        are write-protected, read and stored.  ``serve``: serve pending faults between
        the stores of phase 2 (not for direct reclaim).
        """
        session._assert_locked()
        dropped = 0
        split: list[tuple[ManagedRegion, int, int]] = []
        for region, start, count in spans:
            if region.dropped or not any(region.clean[start:start + count]):
                split.append((region, start, count))
                continue
            before = session.resident
            split.extend(self._drop_clean_locked(session, region, start, count))
            dropped += before - session.resident
        spans = split
        npages = sum(c for _, _, c in spans)
        if npages == 0:
            return dropped
        buf = self._buffer(npages)
        runs: list[_Run] = []
        off = 0
        policy = session.policy
        work = list(reversed(spans))
        while work:
            region, start, count = work.pop()
            keys = [page_key(region.id, i) for i in range(start, start + count)]
            if region.dropped or any(region.state[i] != RESIDENT
                                     for i in range(start, start + count)):
                # cannot happen (victims are RESIDENT); keep the books straight anyway
                for k, i in zip(keys, range(start, start + count)):
                    if region.state[i] == RESIDENT and k not in policy:
                        policy.insert(k)
                continue
            try:
                region.uffd.writeprotect(region.address(start), count << PAGE_SHIFT, wp=True)
            except UffdEventPendingError:
                for k in keys:
                    policy.insert(k)  # the pager drains the event; retry later
                continue
            except UffdRangeGoneError:
                # part of the run was unmapped (no UNMAP event): page by page, and the
                # pages that are gone are forgotten
                if count > 1:
                    work.extend((region, i, 1) for i in range(start + count - 1, start - 1, -1))
                else:
                    self.mark_gone(region, start, 1)
                continue
            except UffdClientGoneError:
                for k in keys:
                    policy.insert(k)
                continue  # the pidfd reports the exit; the daemon ends the session
            state = region.state
            for i in range(start, start + count):
                state[i] = EVICTING
            view = buf.view[off << PAGE_SHIFT:(off + count) << PAGE_SHIFT]
            got = os.preadv(region.memfd, [view], start << PAGE_SHIFT)
            if got != count << PAGE_SHIFT:  # the memfd cannot shrink (F_SEAL?): be safe
                view[got:] = bytes(len(view) - got)
            runs.append(_Run(region, start, count, off, [False] * count))
            off += count
        if not runs:
            return dropped
        session.evicting += 1
        tls = self._tls
        tls.depth += 1
        session.lock.release()
        try:
            self._store_runs(buf, runs, serve=serve)
        finally:
            session.lock.acquire()
            session.evicting -= 1
            tls.depth -= 1
        return dropped + self._commit_locked(session, runs)

    def _store_runs(self, buf: kmemfd.PageBuffer, runs: list[_Run], *,
                    serve: bool = True) -> None:
        """Phase 2: compress and store (no lock held), one ``store_batch`` per run -- per 8
        pages when ``between_stores`` must serve faults in between (``serve``)."""
        store_batch = self.layer.store_batch
        view = buf.view
        yield_ = self.between_stores if serve else None
        step = 8 if yield_ is not None else 1 << 30
        for run in runs:
            lrid = run.region.layer_region
            for j in range(0, run.count, step):
                k = min(step, run.count - j)
                o = (run.offset + j) << PAGE_SHIFT
                try:
                    run.stored[j:j + k] = store_batch(lrid, run.start + j,
                                                      view[o:o + (k << PAGE_SHIFT)])
                except (KeyError, SwapdError) as exc:  # region removed meanwhile
                    log.debug("store %s/%s+%s failed: %s", lrid, run.start + j, k, exc)
                if yield_ is not None:
                    yield_()

    def _commit_locked(self, session: Session, runs: list[_Run]) -> int:
        """Phase 3 (Session.lock held): punch stored pages, restore refused ones."""
        session._assert_locked()
        if session.dead:
            if session.evicting == 0 and not session.layer_freed:
                with contextlib.suppress(EntryNotFoundError):  # never stored anything
                    self.layer.remove_client(session.id)
                session.layer_freed = True
            return 0
        evicted = 0
        policy = session.policy
        c = session.counters
        layer = self.layer
        record = self.recorder
        for run in runs:
            region = run.region
            if region.dropped:
                continue
            state = region.state
            punch: list[tuple[int, int]] = []
            unwp: list[tuple[int, int]] = []
            for j in range(run.count):
                i = run.start + j
                key = page_key(region.id, i)
                st = state[i]
                if st == EVICTING:
                    if run.stored[j]:
                        state[i] = SWAPPED
                        session.resident -= 1
                        session.eviction_seq += 1
                        region.evicted_seq[i] = session.eviction_seq
                        _extend(punch, i)
                        evicted += 1
                        if record is not None:
                            record(key, "e")
                    else:
                        state[i] = RESIDENT
                        policy.insert(key)
                        _extend(unwp, i)
                        c.store_rejects += 1
                else:
                    if run.stored[j]:
                        layer.invalidate(region.layer_region, i)
                    if st == RESIDENT and key not in policy:
                        policy.insert(key)
            for start, count in punch:
                kmemfd.punch_hole(region.memfd, start << PAGE_SHIFT, count << PAGE_SHIFT)
            for start, count in unwp:
                try:
                    region.uffd.writeprotect(region.address(start), count << PAGE_SHIFT,
                                             wp=False)
                except KernelError as exc:  # client gone: nothing to restore
                    log.debug("un-WP after reject failed: %s", exc)
        c.evicted_pages += evicted
        return evicted

    # --- the software referenced bit ------------------------------------------------------

    def sweep_refbits(self) -> None:
        """One sweep step per session: sample the slice zapped last time, zap the next."""
        if not self.refbit_ok:
            return
        from swapd.kernel import pagemap, pidfd

        for s in list(self.sessions()):
            if s.dead:
                continue
            with s.lock:
                regions = [r for r in s.regions.values() if not r.dropped]
                pfd = s.pidfd
            if not regions or pfd < 0:
                continue
            for region in regions:
                pending = region.sweep_pending
                try:
                    if pending is not None:
                        lo, hi = pending
                        found = pagemap.pagemap_scan(
                            s.pid, region.address(lo), region.address(hi),
                            category_mask=pagemap.PAGE_IS_PRESENT,
                            return_mask=pagemap.PAGE_IS_PRESENT)
                        with s.lock:
                            if region.dropped:
                                continue
                            self._mark_referenced_locked(s, region, lo, hi, found)
                    lo = region.sweep_cursor
                    hi = min(region.npages, lo + self.refbit_slice)
                    region.sweep_cursor = 0 if hi >= region.npages else hi
                    pidfd.process_madvise(pfd, [(region.address(lo), (hi - lo) << PAGE_SHIFT)],
                                          pidfd.MADV_PAGEOUT)
                    region.sweep_pending = (lo, hi)
                except KernelError as exc:
                    if exc.errno in (1, 13, 38):  # EPERM, EACCES, ENOSYS: turn it off
                        log.warning("software referenced bit disabled: %s", exc)
                        self.refbit_ok = False
                        return
                    log.debug("refbit sweep of region %s: %s", region.id, exc)
                    region.sweep_pending = None

    def _mark_referenced_locked(self, s: Session, region: ManagedRegion, lo: int, hi: int,
                                found: Iterable[object]) -> None:
        policy = s.policy
        state = region.state
        c = s.counters
        c.refbit_sampled += hi - lo
        for pr in found:
            a = max(region.index_of(pr.start), lo)  # type: ignore[attr-defined]
            b = min((pr.end - region.start) >> PAGE_SHIFT, hi)  # type: ignore[attr-defined]
            for i in range(a, b):
                key = page_key(region.id, i)
                if state[i] == RESIDENT and key in policy:
                    policy.access(key)
                    c.refbit_referenced += 1
                    if self.recorder is not None:  # a sampled hit (op "a")
                        self.recorder(key, "a")


def _extend(runs: list[tuple[int, int]], i: int) -> None:
    """Append page ``i`` to a list of (start, count) runs, merging with the last."""
    if runs and runs[-1][0] + runs[-1][1] == i:
        s0, c = runs[-1]
        runs[-1] = (s0, c + 1)
    else:
        runs.append((i, 1))
