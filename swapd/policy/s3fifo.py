"""S3-FIFO: a small probationary FIFO, a main FIFO with 2-bit CLOCK, and a ghost FIFO.

Design (Yang et al., "FIFO queues are all you need for cache eviction",
SOSP '23): a new key enters the small queue S (about 10% of the cache), unless
it is remembered in the ghost queue G, in which case it enters the main queue
M.  A hit only raises the key's frequency (0..3, saturating: a 2-bit counter).
To evict: if M holds more than its share, or S is empty, evict from M, else
from S.  Evicting from S takes its oldest key: if its frequency is at least
the move-to-main threshold it moves to M (frequency reset to 0) and the scan
goes on; otherwise it leaves the cache and its key is remembered in G.
Evicting from M is CLOCK with a 2-bit counter: a key with frequency f > 0 is
reinserted at M's tail with f - 1; a key with 0 leaves.  G is a FIFO of keys
only; a key found in G on insert is taken out of G.

Three ``OrderedDict``s (S and M: key -> frequency; G: key -> None).  A key is
moved between queues at most once per hit it received, so ``victims`` is O(1)
amortized per victim; every other operation is O(1).

Parameters and variant (libCacheSim names in brackets):

* ``small_ratio`` = 0.1 [``small-size-ratio=0.10``]: |S| target =
  ``int(C * small_ratio)``, |M| target = ``C - |S| target``.
* ``ghost_ratio`` = None: G holds at most ``|M| target`` keys (ghost size =
  main size, as in the paper).  A float gives ``int(C * ghost_ratio)``
  [``ghost-size-ratio=0.90``, which equals the main size up to rounding].
* ``move_to_main_threshold`` = 1: a key leaves S for M if it was hit at least
  this many times while in S (the paper: "accessed at least once").
  libCacheSim's default is 2 [``move-to-main-threshold=2``].
* ``fill_main_before_evict`` = False: the original algorithm (libCacheSim
  ``S3FIFOv0``).  True reproduces libCacheSim's current ``S3FIFO``: until the
  first eviction, a new key goes to M once S is at its target size.

So libCacheSim's ``S3FIFO`` is ``S3FIFO(C, move_to_main_threshold=2,
fill_main_before_evict=True, ghost_ratio=0.9)``; its ``S3FIFOv0`` is the
same with ``fill_main_before_evict=False``.  The order of operations matches
libCacheSim's (the ghost is looked up before the eviction that makes room,
and trimmed after it).  One libCacheSim quirk is not copied: it refuses to
cache any key while ``int(C * small_ratio) <= 1`` (caches under 20 objects),
as an object must be smaller than S.  C is ``capacity``, or, with
``capacity=None`` (the daemon's use), the number of tracked keys at the time
of the eviction or insert.

Invariant: S, M and G are pairwise disjoint; frequencies are in 0..3; |G| is
at most its limit + 1 (the +1 only between a ``victims`` call and the next
``insert``, the slot libCacheSim's lookup-before-evict order needs).

Lock order: none; not thread-safe (the owner serializes calls).

Prior art: libCacheSim ``libCacheSim/cache/eviction/S3FIFO.c`` and
``S3FIFOv0.c``; SOSP '23 paper, Algorithm 1.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from swapd.policy import Key
from swapd.policy._util import (
    EvictOnePolicy,
    already_tracked,
    check_disjoint,
    fail,
    flag,
    integer,
    ratio,
)


class S3FIFO(EvictOnePolicy):
    """S3-FIFO (SOSP '23); O(1) amortized per operation."""

    name = "s3fifo"
    description = "S3-FIFO: small FIFO + main 2-bit CLOCK + ghost (SOSP'23)"

    def __init__(self, capacity: int | None = None, *, small_ratio: float = 0.1,
                 ghost_ratio: float | None = None, move_to_main_threshold: int = 1,
                 fill_main_before_evict: bool = False, **params: Any) -> None:
        super().__init__(capacity, **params)
        self.small_ratio = ratio(self.name, "small_ratio", small_ratio, hi=0.99)
        self.ghost_ratio = (None if ghost_ratio is None
                            else ratio(self.name, "ghost_ratio", ghost_ratio, hi=16.0))
        self.move_to_main_threshold = integer(self.name, "move_to_main_threshold",
                                              move_to_main_threshold, lo=1, hi=3)
        self.fill_main_before_evict = flag(self.name, "fill_main_before_evict",
                                           fill_main_before_evict)
        self._small: OrderedDict[Key, int] = OrderedDict()  # S: key -> freq, oldest first
        self._main: OrderedDict[Key, int] = OrderedDict()  # M: key -> freq, oldest first
        self._ghost: OrderedDict[Key, None] = OrderedDict()  # G: evicted from S, oldest first
        self._has_evicted = False  # for fill_main_before_evict
        self._ghost_limit_last = 0  # limit applied at the last trim (for _check)

    # -- sizes -------------------------------------------------------------------

    def _c(self) -> int:
        cap = self.capacity
        return cap if cap is not None else len(self._small) + len(self._main)

    def _small_target(self, c: int) -> int:
        return int(c * self.small_ratio)

    def _ghost_limit(self, c: int) -> int:
        gr = self.ghost_ratio
        if gr is None:
            return c - int(c * self.small_ratio)
        return int(c * gr)

    def _trim_ghost(self, c: int) -> None:
        limit = self._ghost_limit(c)
        ghost = self._ghost
        while len(ghost) > limit:
            ghost.popitem(last=False)
        self._ghost_limit_last = limit

    def where(self, key: Key) -> str | None:
        """Which queue holds ``key``: "small", "main", "ghost" or None.  O(1)."""
        if key in self._small:
            return "small"
        if key in self._main:
            return "main"
        return "ghost" if key in self._ghost else None

    # -- contract ------------------------------------------------------------------

    def insert(self, key: Key) -> None:
        """Queue ``key`` in M if G remembers it, else in S.  O(1) amortized."""
        small, main, ghost = self._small, self._main, self._ghost
        if key in small or key in main:
            already_tracked(self.name, key)
        if key in ghost:
            del ghost[key]
            main[key] = 0
        elif (self.fill_main_before_evict and not self._has_evicted
              and len(small) >= self._small_target(self._c())):
            main[key] = 0
        else:
            small[key] = 0
        self._trim_ghost(self._c())

    def access(self, key: Key) -> None:
        """Raise ``key``'s frequency, saturating at 3 (KeyError if untracked).  O(1)."""
        q = self._small if key in self._small else self._main
        f = q[key]
        if f < 3:
            q[key] = f + 1

    def remove(self, key: Key) -> None:
        """Stop tracking ``key`` (KeyError if untracked; G is not searched).  O(1)."""
        if key in self._small:
            del self._small[key]
        else:
            del self._main[key]

    def _evict_main(self) -> Key:
        main = self._main
        pop = main.popitem
        while True:
            k, f = pop(last=False)
            if not f:
                return k
            main[k] = f - 1

    def _evict_one(self) -> Key:
        small, main = self._small, self._main
        c = self._c()
        self._has_evicted = True
        if len(main) > c - self._small_target(c) or not small:
            return self._evict_main()
        thr = self.move_to_main_threshold
        ghost = self._ghost
        limit = self._ghost_limit(c)
        while small:
            k, f = small.popitem(last=False)
            if f >= thr:
                main[k] = 0
                continue
            # G may exceed its limit by this one key until the next insert trims
            # it: libCacheSim looks the incoming key up in G before evicting.
            if limit > 0:
                while len(ghost) > limit:
                    ghost.popitem(last=False)
                ghost[k] = None
            else:
                ghost.clear()
            self._ghost_limit_last = limit
            return k
        return self._evict_main()

    def __contains__(self, key: object) -> bool:
        return key in self._small or key in self._main

    def __len__(self) -> int:
        return len(self._small) + len(self._main)

    def request(self, key: Key) -> bool:
        """One simulator step, same result as ``Policy.request``.  O(1) amortized."""
        q = self._small if key in self._small else self._main
        f = q.get(key)
        if f is not None:
            if f < 3:
                q[key] = f + 1
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
        """Queues disjoint, frequencies in 0..3, G within its limit + 1.  O(n)."""
        check_disjoint(self.name, small=self._small, main=self._main, ghost=self._ghost)
        for qname, q in (("small", self._small), ("main", self._main)):
            for k, f in q.items():
                if not isinstance(f, int) or not 0 <= f <= 3:
                    fail(self.name, f"{qname} key {k!r} has frequency {f!r} outside 0..3")
        if len(self._ghost) > self._ghost_limit_last + 1:
            fail(self.name, f"ghost holds {len(self._ghost)} keys, limit "
                            f"{self._ghost_limit_last} + 1")
        for k, v in self._ghost.items():
            if v is not None:
                fail(self.name, f"ghost key {k!r} maps to {v!r}, not None")
