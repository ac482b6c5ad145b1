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

from collections import OrderedDict
from collections.abc import Iterable
from typing import Any

from swapd.policy import Key, Policy
from swapd.policy._util import already_tracked, fail


class FIFO(Policy):
    """First in, first out; O(1) per operation."""

    name = "fifo"
    description = "first in, first out; hits are ignored (libCacheSim FIFO)"

    def __init__(self, capacity: int | None = None, **params: Any) -> None:
        super().__init__(capacity, **params)
        self._od: OrderedDict[Key, None] = OrderedDict()  # oldest first

    def insert(self, key: Key) -> None:
        """Track ``key`` as the newest.  O(1)."""
        od = self._od
        if key in od:
            already_tracked(self.name, key)
        od[key] = None

    def access(self, key: Key) -> None:
        """A hit changes nothing (KeyError if untracked).  O(1)."""
        if key not in self._od:
            raise KeyError(key)

    def remove(self, key: Key) -> None:
        """Stop tracking ``key`` (KeyError if untracked).  O(1)."""
        del self._od[key]

    def victims(self, n: int = 1) -> list[Key]:
        """Untrack and return up to ``n`` oldest keys, oldest first.  O(n)."""
        od = self._od
        n = min(n, len(od))
        pop = od.popitem
        return [pop(last=False)[0] for _ in range(n)]

    def __contains__(self, key: object) -> bool:
        return key in self._od

    def __len__(self) -> int:
        return len(self._od)

    def request(self, key: Key) -> bool:
        """One simulator step, same result as ``Policy.request``.  O(1) amortized."""
        od = self._od
        if key in od:
            return True
        cap = self.capacity
        if cap is not None:
            over = len(od) + 1 - cap
            while over > 0:
                od.popitem(last=False)
                over -= 1
        od[key] = None
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

    def _check(self) -> None:
        """Every tracked key maps to None.  O(n)."""
        for k, v in self._od.items():
            if v is not None:
                fail(self.name, f"key {k!r} maps to {v!r}, not None")
