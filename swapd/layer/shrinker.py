# A background thread that runs the layer's proactive shrinker.
#
# Design: the policy lives in SwapLayer.shrink_step() (clock-injected, testable without threads);
# this wrapper only calls it in a loop -- at once again while it makes progress, otherwise after
# ``interval`` seconds -- like the kernel queues shrink_worker on zswap's shrink_wq.  Waiting uses
# threading.Event.wait, so stop() interrupts a sleep at once.  An exception from a step is logged
# with its traceback and counted, and the loop goes on (a failing disk must not kill the daemon).
# Lock order: none of its own; shrink_step takes SwapLayer's locks.
"""``ShrinkerThread``: the proactive shrinker as a daemon thread."""

from __future__ import annotations

import logging
import threading
from typing import Protocol

log = logging.getLogger(__name__)


class _Shrinkable(Protocol):
    def shrink_step(self) -> int: ...


class ShrinkerThread:
    """Calls ``layer.shrink_step()`` every ``interval`` seconds (at once while it writes back)."""

    def __init__(self, layer: _Shrinkable, interval: float = 0.1) -> None:
        if interval <= 0:
            raise ValueError(f"interval must be positive, got {interval}")
        self._layer = layer
        self._interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.steps = 0        # written by the thread only
        self.written = 0      # pages written back by the thread
        self.errors = 0

    def start(self) -> ShrinkerThread:
        """Start the thread (once)."""
        if self._thread is not None:
            raise RuntimeError("shrinker thread already started")
        self._thread = threading.Thread(target=self._run, name="swapd-shrinker", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        wait = 0.0
        while not self._stop.wait(wait):
            try:
                n = self._layer.shrink_step()
            except Exception:
                self.errors += 1
                log.exception("shrinker step failed")
                n = 0
            self.steps += 1
            self.written += n
            wait = 0.0 if n > 0 else self._interval

    def stop(self, timeout: float | None = 5.0) -> None:
        """Ask the thread to stop and join it."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def __enter__(self) -> ShrinkerThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
