"""``swapd serve --record``: the CSV trace of the faults and evictions the daemon handles.

The trace is ``time,page,op,size``; its meaning and how ``swapd sim`` replays it
are in :class:`Recorder`.  The recorder is called from the pager (faults) and
the reclaimer (evictions), so it takes its own leaf lock.

Lock order: ``Recorder.lock`` is a leaf.
"""

from __future__ import annotations

import threading
import time

from swapd.config import PAGE_SIZE

__all__ = ["Recorder"]


class Recorder:
    """``--record``: the CSV trace ``time,page,op,size`` that ``swapd sim`` replays.

    One row per event the daemon handles: ``time`` in microseconds since the
    daemon started, ``page`` = region id << 32 | page index, ``size`` 4096, and
    ``op``:

    * ``r`` a read fault, ``w`` a write (MISSING|WRITE or write-protect) fault;
    * ``e`` a page evicted and stored in the layer (a ``layer.store``);
    * ``p`` a page brought in by readahead (a ``layer.load`` without a fault);
    * ``a`` a resident page the software referenced bit found referenced (a
      sampled hit: one row per page per sweep, however often it was touched).

    Accesses that hit resident memory never reach the daemon, so the ``r``/``w``
    rows are the miss stream of the daemon's resident set and ``a`` rows are all
    it knows of the hits.  What each ``swapd sim`` mode does with such a trace is
    in docs/simulator.md: ``--replay`` drives the layer with exactly the
    daemon's stores and loads (``e``, and ``r``/``w``/``p`` of evicted pages);
    the other modes replay ``r``/``w`` (and, with ``--refbit``, ``a``) as
    accesses and make their own eviction decisions.
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
