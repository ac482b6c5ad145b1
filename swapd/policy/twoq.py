"""2Q, the full version (Johnson and Shasha, VLDB '94): A1in FIFO, A1out ghost FIFO, Am LRU.

Design: a new key enters A1in, a FIFO; hits in A1in change nothing (a burst of
correlated references counts once).  A key evicted from A1in is remembered in
A1out (keys only).  A miss whose key is in A1out is a second, uncorrelated
reference: the key enters Am, an LRU, and leaves A1out.  Hits in Am refresh
the key.  To evict ("reclaimfor" in the paper): if |A1in| > Kin, A1in's oldest
key goes (to A1out); otherwise Am's least recently used key goes (and is not
remembered).  If Am is empty the A1in key goes anyway.  A1out keeps at most
Kout keys, oldest dropped first.

Three ``OrderedDict``s; every operation is O(1) (ghost trimming O(1) amortized).

Parameters (libCacheSim ``TwoQ`` names in brackets; defaults are the paper's
recommendation and libCacheSim's):

* ``kin`` = 0.25 [``Ain-size-ratio=0.25``]: Kin = ``int(C * kin)``.
* ``kout`` = 0.5 [``Aout-size-ratio=0.5``]: Kout = ``int(C * kout)``.

libCacheSim also caps Am at ``C - Kin`` (Am is its own LRU sub-cache, which
evicts internally); in a pure cache simulation that cap never binds (after
the first fill |A1in| >= Kin whenever the cache is full, and there are no
ghost hits before it), so the results are the same.  The order of operations
matches libCacheSim's: A1out is searched for the incoming key before the
eviction that makes room, and trimmed after it (the one extra A1out key after
``victims`` is trimmed by the next ``insert``).  C is ``capacity``, or, with
``capacity=None`` (the daemon's use), the number of tracked keys at the time.

Invariant: A1in, Am and A1out are pairwise disjoint; |A1out| <= Kout_last + 1.

Lock order: none; not thread-safe (the owner serializes calls).

Prior art: libCacheSim ``libCacheSim/cache/eviction/TwoQ.c``; T. Johnson,
D. Shasha, "2Q: A Low Overhead High Performance Buffer Management
Replacement Algorithm", VLDB '94, section 2.2 (full version).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from swapd.policy import Key
from swapd.policy._util import EvictOnePolicy, already_tracked, check_disjoint, fail, ratio


class TwoQ(EvictOnePolicy):
    """Full 2Q (VLDB '94); O(1) amortized per operation."""

    name = "2q"
    description = "2Q: A1in FIFO + A1out ghost + Am LRU (VLDB'94, libCacheSim TwoQ)"

    def __init__(self, capacity: int | None = None, *, kin: float = 0.25, kout: float = 0.5,
                 **params: Any) -> None:
        super().__init__(capacity, **params)
        self.kin = ratio(self.name, "kin", kin)
        self.kout = ratio(self.name, "kout", kout, hi=16.0)
        self._a1in: OrderedDict[Key, None] = OrderedDict()  # FIFO, oldest first
        self._am: OrderedDict[Key, None] = OrderedDict()  # LRU, coldest first
        self._a1out: OrderedDict[Key, None] = OrderedDict()  # ghost FIFO, oldest first
        self._kout_last = 0  # the Kout applied by the last trim (for _check)

    def _c(self) -> int:
        cap = self.capacity
        return cap if cap is not None else len(self._a1in) + len(self._am)

    @property
    def a1in_size(self) -> int:
        """Number of keys in A1in."""
        return len(self._a1in)

    @property
    def am_size(self) -> int:
        """Number of keys in Am."""
        return len(self._am)

    @property
    def a1out_size(self) -> int:
        """Number of ghost keys in A1out."""
        return len(self._a1out)

    def where(self, key: Key) -> str | None:
        """Which queue holds ``key``: "A1in", "Am", "A1out" or None.  O(1)."""
        for name, q in (("A1in", self._a1in), ("Am", self._am), ("A1out", self._a1out)):
            if key in q:
                return name
        return None

    def insert(self, key: Key) -> None:
        """Track ``key``: into Am if A1out remembers it, else into A1in.  O(1) amortized."""
        a1in, am, a1out = self._a1in, self._am, self._a1out
        if key in a1in or key in am:
            already_tracked(self.name, key)
        if key in a1out:
            del a1out[key]
            am[key] = None
        else:
            a1in[key] = None
        kout = int(self._c() * self.kout)
        while len(a1out) > kout:
            a1out.popitem(last=False)
        self._kout_last = kout

    def access(self, key: Key) -> None:
        """A hit: nothing in A1in, refresh in Am (KeyError if untracked).  O(1)."""
        if key not in self._a1in:
            self._am.move_to_end(key)

    def remove(self, key: Key) -> None:
        """Stop tracking ``key`` (KeyError if untracked; A1out is not searched).  O(1)."""
        if key in self._a1in:
            del self._a1in[key]
        else:
            del self._am[key]

    def _evict_one(self) -> Key:
        a1in, am = self._a1in, self._am
        c = self._c()
        if len(a1in) > int(c * self.kin) or not am:
            k = a1in.popitem(last=False)[0]
            a1out = self._a1out
            kout = int(c * self.kout)
            if kout > 0:
                while len(a1out) > kout:
                    a1out.popitem(last=False)
                a1out[k] = None
            else:
                a1out.clear()
            self._kout_last = kout
            return k
        return am.popitem(last=False)[0]

    def __contains__(self, key: object) -> bool:
        return key in self._a1in or key in self._am

    def __len__(self) -> int:
        return len(self._a1in) + len(self._am)

    def request(self, key: Key) -> bool:
        """One simulator step, same result as ``Policy.request``.  O(1) amortized."""
        if key in self._a1in:
            return True
        am = self._am
        if key in am:
            am.move_to_end(key)
            return True
        cap = self.capacity
        if cap is not None:
            over = len(self) + 1 - cap
            while over > 0:
                self._evict_one()
                over -= 1
        self.insert(key)
        return False

    def _check(self) -> None:
        """Queues disjoint; A1out within Kout + 1.  O(n)."""
        check_disjoint(self.name, A1in=self._a1in, Am=self._am, A1out=self._a1out)
        if len(self._a1out) > self._kout_last + 1:
            fail(self.name, f"A1out holds {len(self._a1out)} keys > Kout {self._kout_last} + 1")
        for name, q in (("A1in", self._a1in), ("Am", self._am), ("A1out", self._a1out)):
            for k, v in q.items():
                if v is not None:
                    fail(self.name, f"{name} key {k!r} maps to {v!r}, not None")
