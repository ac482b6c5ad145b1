"""The reclaimer: keeps every client under its resident limit and the daemon under its own.

Design.  A background thread wakes every ``interval_ms`` (or when kicked by the
pager after a fault) and, for each session over its limit, evicts batches of
the session's reclaim-policy victims until it is ``low_watermark_pages`` below
the limit; then, while the sum over sessions exceeds the global limit, it
evicts from the session with the most resident pages.  The pager runs one
batch itself (direct reclaim, ``mm/vmscan.c``'s throttling of an allocating
task) when a client runs more than ``hard_slack_pages`` over its limit.

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
                 recorder: Callable[[int, str], None] | None = None) -> None:
        self.layer = layer
        self.recorder = recorder  # ``--record``: told of every page evicted (op "e")
        self.sessions = sessions
        self.batch = batch_pages
        self.low_wm = low_watermark_pages
        self.hard_slack = hard_slack_pages
        self.global_limit = global_limit_pages
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

    # --- sizing ---------------------------------------------------------------------------

    def balance(self) -> int:
        """Evict until every session and the daemon are under their limits.  Returns pages."""
        total = 0
        sessions = list(self.sessions())
        for s in sessions:
            if s.dead or s.resident <= s.limit_pages:
                continue
            target = max(0, s.limit_pages - self.low_wm)
            while not s.dead and s.resident > target:
                n = self.evict(s, min(self.batch, s.resident - target))
                if n == 0:
                    break
                total += n
        while True:
            live = [s for s in sessions if not s.dead]
            resident = sum(s.resident for s in live)
            over = resident - self.global_limit
            if over <= 0 or not live:
                break
            victim = max(live, key=lambda s: s.resident)
            n = self.evict(victim, min(self.batch, over + self.low_wm))
            if n == 0:
                break
            total += n
        return total

    def needs_work(self) -> bool:
        """True while a session (or the daemon) is above its reclaim target.  O(sessions).

        Hysteresis: a session over its limit stays "reclaiming" until it is
        ``low_watermark_pages`` below it.
        """
        total = 0
        work = False
        for s in self.sessions():
            total += s.resident
            if s.resident > s.limit_pages:
                s.reclaiming = True
            elif s.resident <= max(0, s.limit_pages - self.low_wm):
                s.reclaiming = False
            work = work or s.reclaiming
        return work or total > self.global_limit

    def step(self) -> int:
        """One eviction batch for the session most above its target (the inline mode)."""
        best: Session | None = None
        best_over = 0
        total = 0
        live = list(self.sessions())
        for s in live:
            total += s.resident
            over = s.resident - max(0, s.limit_pages - self.low_wm) if s.reclaiming else 0
            if over > best_over:
                best, best_over = s, over
        if best is None and total > self.global_limit and live:
            best = max(live, key=lambda x: x.resident)
            best_over = total - self.global_limit + self.low_wm
        if best is None:
            return 0
        return self.evict(best, min(self.batch, best_over))

    def direct(self, session: Session) -> int:
        """Called by the pager after faults: kick the thread; when the client is more
        than ``hard_slack_pages`` over its limit, evict inline until it is not."""
        over = session.resident - session.limit_pages
        if over <= 0:
            return 0
        self.kick()
        total = 0
        while not session.dead and session.resident - session.limit_pages > self.hard_slack:
            session.counters.direct_reclaims += 1
            n = self.evict(session, min(self.batch, session.resident - session.limit_pages))
            if n == 0:
                break
            total += n
        return total

    # --- eviction -------------------------------------------------------------------------

    def _buffer(self, npages: int) -> kmemfd.PageBuffer:
        buf: kmemfd.PageBuffer | None = getattr(self._tls, "buf", None)
        if buf is None or buf.npages < npages:
            if buf is not None:
                buf.close()
            buf = kmemfd.PageBuffer(max(npages, self.batch))
            self._tls.buf = buf
        return buf

    def evict(self, session: Session, n: int) -> int:
        """Evict up to ``n`` victims of ``session``'s policy.  Returns pages evicted."""
        if n <= 0:
            return 0
        with session.lock:
            if session.dead:
                return 0
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
            return self._evict_spans_locked(session, spans)

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

    def _evict_spans_locked(self, session: Session,
                            spans: list[tuple[ManagedRegion, int, int]]) -> int:
        """Phase 1 under the lock (held on entry), then phases 2 and 3.  Returns pages."""
        session._assert_locked()
        npages = sum(c for _, _, c in spans)
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
            return 0
        session.evicting += 1
        session.lock.release()
        try:
            self._store_runs(buf, runs)
        finally:
            session.lock.acquire()
            session.evicting -= 1
        return self._commit_locked(session, runs)

    def _store_runs(self, buf: kmemfd.PageBuffer, runs: list[_Run]) -> None:
        """Phase 2: compress and store (no lock held), one ``store_batch`` per run -- per 8
        pages when ``between_stores`` must serve faults in between."""
        store_batch = self.layer.store_batch
        view = buf.view
        yield_ = self.between_stores
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
