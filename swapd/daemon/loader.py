"""Load workers: slow-tier loads off the event loop's thread.

Design.  A fault (or a readahead run) whose page lives in a slow tier (disk, remote) is not
loaded on the loop thread, where one slow read would delay every client's faults: the pager
claims the run's pages (``ManagedRegion.loading``), hands a :class:`LoadJob` to this pool and
goes on serving other faults.  A worker thread performs the layer's load -- always
non-exclusive (``exclusive=False``): the stored copy stays, as a clean copy, until the page is
placed, so a daemon killed while a load is in flight loses nothing -- into the job's own
page-aligned buffer, and posts the job back: onto a queue, and one increment of an eventfd that
the loop's epoll watches (kind ``loads``).  The loop thread then charges, places
(``UFFDIO_COPY``), does the bookkeeping and wakes the thread (``Pager.complete_load``).  The
tier I/O (pread, AES-GCM, a Redis round trip, lz4) releases the GIL, so the loop runs
meanwhile.  The layer needs no thread of its own: a slow load marks the entry busy and reads
without the layer lock (swapd/layer/core.py), from whichever thread calls it.

A job never outlives :meth:`Loader.close`: queued jobs are cancelled (nothing loaded), running
ones are waited for.  :meth:`Loader.wait_idle` waits until nothing is queued or running (the
hand-over, docs/design.md sec. 9).

Lock order: ``Loader._cond`` is a leaf; workers take layer locks only without it.
Prior art: UMap's fill workers (LLNL umap ``FillWorkers.cpp``), which read pages for the
userfaultfd handler on a pool of threads.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import threading
from typing import TYPE_CHECKING

from swapd.kernel.memfd import PageBuffer
from swapd.pages import PAGE_SIZE

if TYPE_CHECKING:
    from swapd.daemon.session import LayerLike, ManagedRegion

log = logging.getLogger(__name__)

__all__ = ["LoadJob", "Loader"]


class LoadJob:
    """Pages ``[start, start+n)`` of ``region`` to load (page ``start`` first).

    ``fault``: a thread waits on page ``start`` (False: a readahead run nobody faulted on);
    ``write``: that fault was a write; ``window``: its readahead window; ``waiters``: the
    service-time origins of the faults waiting on the run (the first one's and duplicates').
    Filled by the worker: ``loaded`` pages from ``start`` are in ``buf`` (page j at j *
    PAGE_SIZE) and kept by the layer as clean copies; ``error`` is why page ``start + loaded``
    was not loaded (None: all were, or the job was cancelled).
    """

    __slots__ = ("buf", "cancelled", "error", "fault", "loaded", "n", "region", "start",
                 "waiters", "window", "write")

    def __init__(self, region: ManagedRegion, start: int, n: int, *, fault: bool,
                 write: bool = False, window: int = 0, t0: int | None = None) -> None:
        self.region = region
        self.start = start
        self.n = n
        self.fault = fault
        self.write = write
        self.window = window
        self.waiters: list[int] = [] if t0 is None else [t0]
        self.buf: PageBuffer | None = None
        self.loaded = 0
        self.error: BaseException | None = None
        self.cancelled = False

    def __repr__(self) -> str:
        return f"<load region {self.region.id} [{self.start}, +{self.n}) loaded {self.loaded}>"


class Loader:
    """``workers`` threads loading :class:`LoadJob` s of ``layer``; buffers of ``npages``."""

    def __init__(self, layer: LayerLike, *, workers: int, npages: int) -> None:
        if workers <= 0:
            raise ValueError(f"a loader needs at least one worker, got {workers}")
        self.layer = layer
        self.npages = npages
        self.fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)  # the loop watches it
        self._cond = threading.Condition(threading.Lock())
        self._queue: collections.deque[LoadJob] = collections.deque()  # under _cond
        self._done: collections.deque[LoadJob] = collections.deque()  # under _cond
        self._running = 0  # under _cond: jobs a worker is loading
        self._free: list[PageBuffer] = []  # under _cond: spare buffers
        self._keep = 2 * workers  # spare buffers kept
        self._stop = False  # under _cond
        self.submitted = 0  # under _cond
        self._threads = [threading.Thread(target=self._work, name=f"swapd-load-{i}",
                                          daemon=True) for i in range(workers)]
        for t in self._threads:
            t.start()

    # --- the loop thread's side -----------------------------------------------------------

    def submit(self, job: LoadJob) -> None:
        """Queue ``job`` (its pages are claimed by the caller).  O(1)."""
        with self._cond:
            if self._stop:
                raise RuntimeError("the loader is closed")
            job.buf = self._free.pop() if self._free else None
            self._queue.append(job)
            self.submitted += 1
            self._cond.notify()

    def take_done(self) -> list[LoadJob]:
        """The jobs finished since the last call (reads the eventfd).  O(jobs)."""
        with contextlib.suppress(BlockingIOError):
            os.eventfd_read(self.fd)
        with self._cond:
            out = list(self._done)
            self._done.clear()
        return out

    def release(self, job: LoadJob) -> None:
        """Give ``job``'s buffer back (after its pages were placed or dropped)."""
        buf, job.buf = job.buf, None
        if buf is None:
            return
        with self._cond:
            if len(self._free) < self._keep and not self._stop and buf.npages == self.npages:
                self._free.append(buf)
                return
        buf.close()

    def in_flight(self) -> int:
        """Jobs queued or being loaded.  O(1)."""
        with self._cond:
            return len(self._queue) + self._running

    def wait_idle(self, *, cancel: bool = False) -> None:
        """Wait until no job is queued or being loaded; ``cancel``: drop the queued ones
        (they finish with nothing loaded).  Their completions stay for :meth:`take_done`."""
        with self._cond:
            if cancel:
                while self._queue:
                    job = self._queue.popleft()
                    job.cancelled = True
                    self._done.append(job)
            while self._queue or self._running:
                self._cond.wait()

    def close(self) -> None:
        """Cancel queued jobs, wait for running ones, stop the workers, free the buffers."""
        self.wait_idle(cancel=True)
        with self._cond:
            self._stop = True
            self._cond.notify_all()
            done = list(self._done)
            self._done.clear()
            free, self._free = self._free, []
        for t in self._threads:
            t.join()
        for job in done:
            self.release(job)
        for buf in free:
            buf.close()
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    # --- the workers ------------------------------------------------------------------------

    def _work(self) -> None:
        cond = self._cond
        while True:
            with cond:
                while not self._queue and not self._stop:
                    cond.wait()
                if self._stop:
                    return
                job = self._queue.popleft()
                self._running += 1
            try:
                self._load(job)
            except BaseException as exc:  # reported to the loop, which decides
                job.error = exc
            with cond:
                self._running -= 1
                self._done.append(job)
                cond.notify_all()
            with contextlib.suppress(OSError):
                os.eventfd_write(self.fd, 1)

    def _load(self, job: LoadJob) -> None:
        """Load the job's run as the pager's synchronous readahead does: the layer's
        ``load_run`` (a slow tier's stretch in one ``load_batch``), and ``load`` for the page
        it stopped at (which loads it or raises why not).  Non-exclusive: the copies stay."""
        if job.buf is None or job.buf.npages < job.n:  # (readahead_max grew on a reload)
            if job.buf is not None:
                job.buf.close()
            job.buf = PageBuffer(max(self.npages, job.n))
        layer = self.layer
        rid = job.region.layer_region
        view = job.buf.view
        start, n = job.start, job.n
        i = 0
        try:
            while i < n:
                i += layer.load_run(rid, start + i, n - i, view[i * PAGE_SIZE:n * PAGE_SIZE],
                                    False)
                if i < n:
                    view[i * PAGE_SIZE:(i + 1) * PAGE_SIZE] = layer.load(rid, start + i, False)
                    i += 1
        except Exception as exc:
            job.error = exc
        finally:
            job.loaded = i

    def __repr__(self) -> str:
        return f"<Loader {len(self._threads)} workers, {self.in_flight()} in flight>"

