"""LRU miss-ratio curves in one pass: Mattson's stack distances.

Design.  LRU has the inclusion property: the content of an LRU cache of size c
is always the c most recently used distinct pages.  So one pass that computes,
for every access, its *stack distance* -- 1 + the number of distinct pages
touched since the previous access to the same page (infinite on a first
access) -- gives the hit count of every capacity at once: an access hits in a
cache of capacity c iff its distance is <= c (Mattson, Gecsei, Slutz, Traiger,
"Evaluation techniques for storage hierarchies", IBM Systems Journal 1970).

The distinct count is kept with a Fenwick (binary indexed) tree over access
times holding a 1 at the time of each page's most recent access: the distance
of an access at time t to a page last seen at time p is
1 + sum(tree[p+1 .. t-1]).  O(log n) per access, O(n log n) for the trace,
O(n) memory.

Invariant (checked by ``_check``): the tree holds exactly one 1 per distinct
page seen, at that page's last access time, and the histogram counts every
access exactly once.

Prior art: Mattson et al. 1970; Bennett & Kruskal's tree-based distance
counting (1975); libCacheSim's ``profiler`` computes the same curves.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass

from swapd.errors import InvariantError


@dataclass(frozen=True)
class StackDistances:
    """The result of one Mattson pass.

    ``accesses``: requests seen.  ``cold_misses``: first accesses (infinite
    distance).  ``hist[d]``: accesses with stack distance ``d`` (``hist[0]`` is
    always 0).
    """

    accesses: int
    cold_misses: int
    hist: tuple[int, ...]

    @property
    def distinct(self) -> int:
        """Number of distinct pages (= cold misses)."""
        return self.cold_misses

    def misses(self, capacity: int) -> int:
        """Misses of an LRU cache of ``capacity`` pages.  O(capacity)."""
        if capacity <= 0:
            return self.accesses
        return self.accesses - sum(self.hist[1:capacity + 1])

    def miss_ratio(self, capacity: int) -> float:
        return self.misses(capacity) / self.accesses if self.accesses else 0.0

    def curve(self, capacities: Sequence[int]) -> list[tuple[int, int]]:
        """(capacity, misses) for each capacity.  O(max capacity + len(capacities))."""
        hits = [0]
        for h in self.hist[1:]:
            hits.append(hits[-1] + h)
        top = len(hits) - 1
        return [(c, self.accesses - hits[min(max(c, 0), top)]) for c in capacities]


def stack_distances(keys: Iterable[Hashable]) -> StackDistances:
    """Compute the LRU stack-distance histogram of ``keys`` in one pass.  O(n log n)."""
    seq = keys if isinstance(keys, list) else list(keys)
    n = len(seq)
    tree = [0] * (n + 1)  # Fenwick tree over times 1..n
    last: dict[Hashable, int] = {}
    hist = [0] * (n + 2)
    cold = 0
    for t0, k in enumerate(seq):
        t = t0 + 1
        p = last.get(k)
        if p is None:
            cold += 1
        else:
            # distinct pages with last access in (p, t): prefix(t-1) - prefix(p)
            s = 0
            i = t - 1
            while i > 0:
                s += tree[i]
                i &= i - 1
            i = p
            while i > 0:
                s -= tree[i]
                i &= i - 1
            hist[s + 1] += 1
            i = p  # clear the old marker
            while i <= n:
                tree[i] -= 1
                i += i & -i
        i = t
        while i <= n:
            tree[i] += 1
            i += i & -i
        last[k] = t
    top = len(hist) - 1
    while top > 0 and hist[top] == 0:
        top -= 1
    result = StackDistances(n, cold, tuple(hist[:top + 1]))
    _check(result, tree, last, n)
    return result


def _check(sd: StackDistances, tree: list[int], last: dict[Hashable, int], n: int) -> None:
    """Verify the pass's invariants (raises InvariantError).  O(n)."""
    if sd.cold_misses + sum(sd.hist) != sd.accesses:
        raise InvariantError(f"histogram counts {sum(sd.hist)} + {sd.cold_misses} cold "
                             f"!= {sd.accesses} accesses")
    if sd.hist and sd.hist[0] != 0:
        raise InvariantError("stack distance 0 was counted")
    total = 0
    i = n
    while i > 0:
        total += tree[i]
        i &= i - 1
    if total != len(last) or len(last) != sd.cold_misses:
        raise InvariantError(f"tree holds {total} markers for {len(last)} distinct pages")
