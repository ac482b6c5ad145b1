"""FIFO: evict the key inserted longest ago; hits change nothing.

Design: one ``collections.OrderedDict`` in insertion order, oldest first.
``access`` only checks that the key is tracked.  Every operation is O(1).

Variant (reproducible in libCacheSim as ``FIFO``, no parameters): a miss
inserts at the tail of the queue; eviction takes the head, one key per missing
slot; a key that is removed and inserted again starts at the tail.
``capacity=None``: nothing is evicted unless the owner calls ``victims``.

Invariant: ``_od`` holds exactly the tracked keys, each mapped to None, in
insertion order (first = oldest).

Lock order: none; not thread-safe (the owner serializes calls).

Prior art: libCacheSim ``libCacheSim/cache/eviction/FIFO.c``.
"""

from __future__ import annotations

from collections.abc import Iterable

from swapd.policy import Key
from swapd.policy._util import QueuePolicy


class FIFO(QueuePolicy):
    """First in, first out; O(1) per operation."""

    name = "fifo"
    description = "first in, first out; hits are ignored (libCacheSim FIFO)"

    def access(self, key: Key) -> None:
        """A hit changes nothing (KeyError if untracked).  O(1)."""
        if key not in self._od:
            raise KeyError(key)

    def request(self, key: Key) -> bool:
        """One simulator step, same result as ``Policy.request``.  O(1) amortized."""
        od = self._od
        if key in od:
            return True
        self._admit(key)
        return False

    def replay(self, keys: Iterable[Key]) -> int:
        """``request`` over ``keys``, inlined; returns the misses.  O(1) amortized per key."""
        od = self._od
        cap = self.capacity
        if cap is not None and len(od) > cap:
            return super().replay(keys)
        pop = od.popitem
        misses = 0
        for k in keys:
            if k not in od:
                misses += 1
                if cap is not None and len(od) >= cap:
                    pop(last=False)
                od[k] = None
        return misses
