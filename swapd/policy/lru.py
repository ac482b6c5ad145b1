"""LRU: evict the least recently inserted-or-accessed key.

Design: one ``collections.OrderedDict`` used as the recency list, coldest
first.  A hit is ``move_to_end``; a victim is ``popitem(last=False)``.  The
C implementation of OrderedDict makes every operation O(1), and the
simulator's fast path (``request``, ``replay``) is written as tightly as a
bare OrderedDict LRU loop, with the dict's methods aliased into locals, so
policy-only replay runs at the speed of the bare loop (issue 5's
``swapd bench sim`` target: >= 0.8x).

Variant (reproducible in libCacheSim as ``LRU``, no parameters): a miss
inserts at the MRU end; a hit moves to the MRU end; eviction takes the LRU
end, one key per missing slot.  ``capacity=None``: nothing is evicted unless
the owner calls ``victims``.

Invariant: ``_od`` holds exactly the tracked keys, each mapped to None, in
recency order (first = coldest).

Lock order: none; not thread-safe (the owner serializes calls).

Prior art: libCacheSim ``libCacheSim/cache/eviction/LRU.c``; the kernel's
zswap LRU (``mm/zswap.c``, one list_lru per memcg and node) is the same
structure with a second-chance bit added, which is our ``clock``.
"""

from __future__ import annotations

from collections.abc import Iterable

from swapd.policy import Key
from swapd.policy._util import QueuePolicy


class LRU(QueuePolicy):
    """Least recently used; O(1) per operation."""

    name = "lru"
    description = "least recently used (OrderedDict), libCacheSim LRU"

    def access(self, key: Key) -> None:
        """Make tracked ``key`` the most recently used (KeyError if untracked).  O(1)."""
        self._od.move_to_end(key)

    def request(self, key: Key) -> bool:
        """One simulator step, same result as ``Policy.request``.  O(1) amortized."""
        od = self._od
        if key in od:
            od.move_to_end(key)
            return True
        self._admit(key)
        return False

    def replay(self, keys: Iterable[Key]) -> int:
        """``request`` over ``keys``, inlined; returns the misses.  O(1) amortized per key."""
        od = self._od
        cap = self.capacity
        move = od.move_to_end
        pop = od.popitem
        misses = 0
        if cap is None:
            for k in keys:
                if k in od:
                    move(k)
                else:
                    misses += 1
                    od[k] = None
            return misses
        if len(od) > cap:  # shrunk by resize(): the general path evicts the excess
            return super().replay(keys)
        # Invariant of the loop: len(od) <= cap, so one pop makes room.
        for k in keys:
            if k in od:
                move(k)
            else:
                misses += 1
                if len(od) >= cap:
                    pop(last=False)
                od[k] = None
        return misses
