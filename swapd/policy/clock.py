"""CLOCK (second chance, FIFO-reinsertion) with an n-bit reference counter.

Design: one ``collections.OrderedDict`` mapping key -> reference counter, in
clock order: the first entry is under the hand, the last entry was inserted
(or passed over) most recently.  A hit raises the key's counter by one, up to
``2**bits - 1``.  To choose a victim, the hand looks at the first entry: a
counter of 0 is evicted; otherwise the counter is decremented and the key is
moved to the end (the hand passes it).  Each pass over a key is paid for by an
earlier hit, so ``victims`` is O(1) amortized per victim; every other
operation is O(1).

Variant (defaults reproduce libCacheSim's ``Clock`` with its default
``n-bit-counter=1``):

* ``bits`` (default 1): counter width; libCacheSim ``n-bit-counter``.
  ``bits=1`` is the classic referenced bit; ``bits=2`` is the main queue of
  S3-FIFO.
* ``insert_referenced`` (default False): whether a newly inserted key starts
  with counter 1 (referenced) instead of 0.  libCacheSim inserts with 0
  (``Clock_insert``); True is libCacheSim's ``init-freq=1`` (newer versions).
  The kernel's zswap does the opposite: ``zswap_store``
  sets ``entry->referenced = true`` (``mm/zswap.c``, 6.8+), so a freshly
  stored entry survives one shrinker pass; ``insert_referenced=True`` is that
  behaviour.
* ``capacity=None``: nothing is evicted unless the owner calls ``victims``.

A loop larger than the cache misses on every access (no hit ever sets a bit).

Invariant: every counter is in ``[0, 2**bits - 1]``; ``_od`` holds exactly
the tracked keys.

Lock order: none; not thread-safe (the owner serializes calls).

Prior art: libCacheSim ``libCacheSim/cache/eviction/Clock.c``; Corbato's
CLOCK (1968); the second-chance rotation of ``mm/zswap.c`` (``shrink_memcg_cb``
rotates a referenced entry instead of writing it back, 6.8+).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from typing import Any

from swapd.policy import Key, Policy
from swapd.policy._util import already_tracked, fail, flag, integer


class Clock(Policy):
    """Second-chance CLOCK with an n-bit counter; O(1) amortized per operation."""

    name = "clock"
    description = "CLOCK / second chance, n-bit counter (libCacheSim Clock)"

    def __init__(self, capacity: int | None = None, *, bits: int = 1,
                 insert_referenced: bool = False, **params: Any) -> None:
        super().__init__(capacity, **params)
        self.bits = integer(self.name, "bits", bits, lo=1, hi=8)
        self.insert_referenced = flag(self.name, "insert_referenced", insert_referenced)
        self._max = (1 << self.bits) - 1  # counter ceiling
        self._init = 1 if self.insert_referenced else 0  # counter of a new key
        self._od: OrderedDict[Key, int] = OrderedDict()  # key -> counter; first is under the hand

    def insert(self, key: Key) -> None:
        """Track ``key`` just behind the hand.  O(1)."""
        od = self._od
        if key in od:
            already_tracked(self.name, key)
        od[key] = self._init

    def access(self, key: Key) -> None:
        """Raise ``key``'s counter by one, saturating (KeyError if untracked).  O(1)."""
        od = self._od
        c = od[key]
        if c < self._max:
            od[key] = c + 1

    def remove(self, key: Key) -> None:
        """Stop tracking ``key`` (KeyError if untracked).  O(1)."""
        del self._od[key]

    def victims(self, n: int = 1) -> list[Key]:
        """Sweep the hand; untrack and return up to ``n`` keys whose counter is 0.

        O(n) amortized (each pass over a key consumes one earlier hit).
        """
        od = self._od
        n = min(n, len(od))
        pop = od.popitem
        out: list[Key] = []
        while len(out) < n:
            k, c = pop(last=False)
            if c:
                od[k] = c - 1  # second chance: behind the hand again
            else:
                out.append(k)
        return out

    def __contains__(self, key: object) -> bool:
        return key in self._od

    def __len__(self) -> int:
        return len(self._od)

    def request(self, key: Key) -> bool:
        """One simulator step, same result as ``Policy.request``.  O(1) amortized."""
        od = self._od
        c = od.get(key)
        if c is not None:
            if c < self._max:
                od[key] = c + 1
            return True
        cap = self.capacity
        if cap is not None and len(od) + 1 > cap:
            self.victims(len(od) + 1 - cap)
        od[key] = self._init
        return False

    def replay(self, keys: Iterable[Key]) -> int:
        """``request`` over ``keys``, inlined; returns the misses.  O(1) amortized per key."""
        od = self._od
        cap = self.capacity
        if cap is not None and len(od) > cap:
            return super().replay(keys)
        get = od.get
        pop = od.popitem
        mx = self._max
        init = self._init
        misses = 0
        for k in keys:
            c = get(k)
            if c is not None:
                if c < mx:
                    od[k] = c + 1
                continue
            misses += 1
            if cap is not None and len(od) >= cap:
                while True:
                    v, cv = pop(last=False)
                    if not cv:
                        break
                    od[v] = cv - 1
            od[k] = init
        return misses

    def _check(self) -> None:
        """Every counter is within ``[0, 2**bits - 1]``.  O(n)."""
        mx = self._max
        for k, c in self._od.items():
            if not isinstance(c, int) or not 0 <= c <= mx:
                fail(self.name, f"key {k!r} has counter {c!r} outside [0, {mx}]")
