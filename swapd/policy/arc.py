"""ARC: Adaptive Replacement Cache (Megiddo and Modha, FAST '03).

Design: four LRU lists, coldest first.  T1 holds keys seen once recently, T2
keys seen at least twice; B1 and B2 are their ghosts (keys only, evicted from
T1 and T2).  The target size ``p`` of T1 adapts: a miss whose key is in B1
means T1 was too small, so ``p += max(|B2| / |B1|, 1)`` (at most C); a miss
in B2 means T2 was too small, so ``p -= max(|B1| / |B2|, 1)`` (at least 0).
``p`` is a real number and the ratios are real divisions, as in libCacheSim
(which switched from integers to match the reference ``ARC.py`` it was
cross-checked with; the paper leaves it open).
A ghost hit enters T2, any other miss enters T1; a hit in T1 moves the key to
T2's MRU end, a hit in T2 refreshes it.  REPLACE (one victim) takes T1's LRU
key into B1 if ``|T1| > p`` (or ``|T1| == p`` and the incoming key was in B2,
or T2 is empty), else T2's LRU key into B2.  After an insert the directory is
trimmed as in the paper's case IV: B1's LRU keys go while ``|T1| + |B1| > C``,
then B2's (B1's if B2 is empty) while ``|T1|+|T2|+|B1|+|B2| > 2C``.

Four ``OrderedDict``s; every operation is O(1) (trimming is O(1) amortized).

Order of operations, the one variant point.  The paper (and libCacheSim's
``ARC``) adapt ``p`` on a ghost hit *before* the REPLACE that makes room for the
key.  The policy contract separates ``victims`` from ``insert`` (the daemon
reclaims under pressure, with no incoming key), and ``Policy.request`` calls
``victims`` first; so by default ``p`` adapts when the ghost-hit key is
inserted, one REPLACE later than in the paper, with ghost sizes that already
include that REPLACE's victim.  Misses that are not ghost hits, and all hits,
are exactly the paper's, because the directory is trimmed after the insert
(the paper trims before REPLACE; the trimmed keys are the same).

* ``adapt_before_replace`` (default False): True makes ``request``/``replay``
  the paper's exact order (libCacheSim ``ARC``; it has no parameters), at the
  cost that ``request`` then differs from ``victims`` + ``insert``, which
  keep the default order.

C is ``capacity``; with ``capacity=None`` (the daemon's use) C is the number
of tracked keys after the insert, so the ghosts hold up to about as many keys
as are tracked, and ``p`` is clamped to that C.

Invariant: T1, T2, B1, B2 are pairwise disjoint; ``0 <= p <= C_last``;
``|T1| + |B1| <= C_last`` and the directory holds at most ``2 * C_last`` keys
(``C_last``: the C of the last insert), unless more keys than C were
inserted without victims, in which case the sizes reached by the last insert's
trim are the bounds (``victims`` only moves keys from T to B).

Lock order: none; not thread-safe (the owner serializes calls).

Prior art: libCacheSim ``libCacheSim/cache/eviction/ARC.c``; N. Megiddo,
D. Modha, "ARC: A Self-Tuning, Low Overhead Replacement Cache", FAST '03,
Fig. 4.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from swapd.policy import Key, Policy
from swapd.policy._util import already_tracked, check_disjoint, fail, flag


class ARC(Policy):
    """Adaptive Replacement Cache (FAST '03); O(1) amortized per operation."""

    name = "arc"
    description = "ARC: adaptive recency/frequency split with ghosts (FAST'03)"

    def __init__(self, capacity: int | None = None, *, adapt_before_replace: bool = False,
                 **params: Any) -> None:
        super().__init__(capacity, **params)
        self.adapt_before_replace = flag(self.name, "adapt_before_replace",
                                         adapt_before_replace)
        self._t1: OrderedDict[Key, None] = OrderedDict()  # seen once, LRU first
        self._t2: OrderedDict[Key, None] = OrderedDict()  # seen twice+, LRU first
        self._b1: OrderedDict[Key, None] = OrderedDict()  # ghosts of T1, LRU first
        self._b2: OrderedDict[Key, None] = OrderedDict()  # ghosts of T2, LRU first
        self.p = 0.0  # target size of T1, 0 <= p <= C (a real number, as in libCacheSim)
        self._c_last = 0  # the C applied by the last insert (for _check)
        self._l1_bound = 0  # |T1| + |B1| <= this until the next insert (for _check)
        self._dir_bound = 0  # |T1| + |T2| + |B1| + |B2| <= this, likewise

    @property
    def t1_size(self) -> int:
        """Number of keys in T1 (seen once recently)."""
        return len(self._t1)

    @property
    def t2_size(self) -> int:
        """Number of keys in T2 (seen at least twice recently)."""
        return len(self._t2)

    @property
    def ghost_sizes(self) -> tuple[int, int]:
        """(|B1|, |B2|)."""
        return len(self._b1), len(self._b2)

    def where(self, key: Key) -> str | None:
        """Which list holds ``key``: "T1", "T2", "B1", "B2" or None.  O(1)."""
        for name, q in (("T1", self._t1), ("T2", self._t2), ("B1", self._b1), ("B2", self._b2)):
            if key in q:
                return name
        return None

    def _adapt(self, key: Key, c: int) -> bool:
        """Adapt ``p`` if ``key`` is a ghost; True if it was in B2.  O(1)."""
        b1, b2 = self._b1, self._b2
        if key in b1:
            self.p = min(self.p + max(len(b2) / len(b1), 1.0), float(c))
            return False
        self.p = max(self.p - max(len(b1) / len(b2), 1.0), 0.0)
        return True

    def _replace(self, in_b2: bool) -> Key:
        """The paper's REPLACE: one key from T1 to B1 or from T2 to B2.  O(1)."""
        t1 = self._t1
        n1 = len(t1)
        if n1 and (n1 > self.p or (in_b2 and n1 == self.p) or not self._t2):
            k = t1.popitem(last=False)[0]
            self._b1[k] = None
        else:
            k = self._t2.popitem(last=False)[0]
            self._b2[k] = None
        return k

    def _place(self, key: Key, c: int) -> None:
        """Put untracked ``key`` in T2 (ghost hit) or T1, then trim.  O(1) amortized."""
        b1, b2 = self._b1, self._b2
        if key in b1:
            del b1[key]
            self._t2[key] = None
        elif key in b2:
            del b2[key]
            self._t2[key] = None
        else:
            self._t1[key] = None
        self._trim(c)

    def _trim(self, c: int) -> None:
        t1, b1, b2 = self._t1, self._b1, self._b2
        while b1 and len(t1) + len(b1) > c:
            b1.popitem(last=False)
        n_t = len(t1) + len(self._t2)
        while (b1 or b2) and n_t + len(b1) + len(b2) > 2 * c:
            (b2 if b2 else b1).popitem(last=False)
        if self.p > c:
            self.p = float(c)
        self._c_last = c
        # Above capacity (keys inserted without victims) B1 may run empty before
        # |T1| + |B1| <= C; the bounds then hold with the sizes reached here.
        self._l1_bound = max(c, len(t1) + len(b1))
        self._dir_bound = max(2 * c, n_t + len(b1) + len(b2))

    def insert(self, key: Key) -> None:
        """Track ``key``: into T2 (adapting ``p``) if a ghost, else into T1.  O(1) amortized."""
        if key in self._t1 or key in self._t2:
            already_tracked(self.name, key)
        cap = self.capacity
        c = cap if cap is not None else len(self._t1) + len(self._t2) + 1
        if key in self._b1 or key in self._b2:
            self._adapt(key, c)
        self._place(key, c)

    def access(self, key: Key) -> None:
        """A hit: T1 -> T2's MRU end, or refresh in T2 (KeyError if untracked).  O(1)."""
        t1 = self._t1
        if key in t1:
            del t1[key]
            self._t2[key] = None
        else:
            self._t2.move_to_end(key)

    def remove(self, key: Key) -> None:
        """Stop tracking ``key`` (KeyError if untracked; ghosts are not searched).  O(1)."""
        if key in self._t1:
            del self._t1[key]
        else:
            del self._t2[key]

    def victims(self, n: int = 1) -> list[Key]:
        """Run REPLACE up to ``n`` times; return the keys, in eviction order.  O(n)."""
        n = min(n, len(self))
        rep = self._replace
        return [rep(False) for _ in range(n)]

    def __contains__(self, key: object) -> bool:
        return key in self._t1 or key in self._t2

    def __len__(self) -> int:
        return len(self._t1) + len(self._t2)

    def request(self, key: Key) -> bool:
        """One simulator step; with ``adapt_before_replace`` the paper's exact order.

        O(1) amortized.
        """
        t1, t2 = self._t1, self._t2
        if key in t1:
            del t1[key]
            t2[key] = None
            return True
        if key in t2:
            t2.move_to_end(key)
            return True
        cap = self.capacity
        if cap is None or not self.adapt_before_replace:
            return super().request(key)
        over = len(t1) + len(t2) + 1 - cap
        in_b2 = False
        if key in self._b1 or key in self._b2:
            in_b2 = self._adapt(key, cap)
        for _ in range(over):
            self._replace(in_b2)
        self._place(key, cap)
        return False

    def _check(self) -> None:
        """Lists disjoint; ``p`` and the directory within the bounds of the last C.  O(n)."""
        t1, t2, b1, b2 = self._t1, self._t2, self._b1, self._b2
        check_disjoint(self.name, T1=t1, T2=t2, B1=b1, B2=b2)
        c = self._c_last
        if not 0 <= self.p <= max(c, 0):
            fail(self.name, f"p = {self.p} outside [0, {c}]")
        if len(t1) + len(b1) > self._l1_bound:
            fail(self.name, f"|T1| + |B1| = {len(t1) + len(b1)} > {self._l1_bound}")
        total = len(t1) + len(t2) + len(b1) + len(b2)
        if total > self._dir_bound:
            fail(self.name, f"directory holds {total} keys > {self._dir_bound}")
        for name, q in (("T1", t1), ("T2", t2), ("B1", b1), ("B2", b2)):
            for k, v in q.items():
                if v is not None:
                    fail(self.name, f"{name} key {k!r} maps to {v!r}, not None")
