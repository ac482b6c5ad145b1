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
