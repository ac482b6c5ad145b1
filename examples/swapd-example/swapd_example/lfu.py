"""``lfu``: an example victim-selection policy -- least frequently used, O(1).

Design.  Each tracked key has a use count, starting at 1 on insert and raised by each
``access`` up to ``max_count`` (a saturating counter, so a page that was hot long ago
cannot stay forever: with ``halve_every`` N > 0, every N accesses all counts are
halved, rounding up -- the aging of LFU-with-decay).  Keys live in one bucket per count,
each an insertion-ordered dict (the oldest first), so ``victims`` takes the oldest key
of the lowest non-empty count: coldest first, ties broken by recency of entry into
the bucket.  ``insert``/``access``/``remove`` are O(1); ``victims(n)`` is O(n +
max_count); halving is O(tracked keys) every ``halve_every`` accesses.

Invariants (``_check``): every tracked key is in exactly the bucket of its count;
counts are within 1..max_count; the length equals the keys in the buckets.  Not
thread-safe (the owner serializes calls, as the Policy contract says).

Prior art: O(1) LFU with frequency lists (Shah, Mitra, Matani 2010); the decay of
LFU-aging caches.
"""

from __future__ import annotations

from typing import Any

from swapd.errors import AlreadyTrackedError, ConfigError, InvariantError
from swapd.policy import Key, Policy


class LFU(Policy):
    """Least frequently used with a saturating, optionally decaying counter."""

    name = "lfu"
    description = "example: least frequently used, O(1) (swapd-example package)"
    version = "0.1.0"

    def __init__(self, capacity: int | None = None, *, max_count: int = 15,
                 halve_every: int = 0, **params: Any) -> None:
        super().__init__(capacity, **params)  # unknown parameters -> ConfigError
        if not isinstance(max_count, int) or isinstance(max_count, bool) or max_count < 1:
            raise ConfigError(f"lfu: max_count must be an integer >= 1, got {max_count!r}")
        if not isinstance(halve_every, int) or isinstance(halve_every, bool) or halve_every < 0:
            raise ConfigError(f"lfu: halve_every must be an integer >= 0, got {halve_every!r}")
        self.max_count = max_count
        self.halve_every = halve_every
        self._count: dict[Key, int] = {}
        self._buckets: list[dict[Key, None]] = [{} for _ in range(max_count + 1)]
        self._accesses = 0

    def insert(self, key: Key) -> None:
        """Track ``key`` with count 1.  O(1)."""
        if key in self._count:
            raise AlreadyTrackedError(key)
        self._count[key] = 1
        self._buckets[1][key] = None

    def access(self, key: Key) -> None:
        """Count a use of tracked ``key`` (KeyError if untracked).  O(1) amortized."""
        c = self._count[key]
        if c < self.max_count:
            del self._buckets[c][key]
            self._buckets[c + 1][key] = None
            self._count[key] = c + 1
        self._accesses += 1
        if self.halve_every and self._accesses % self.halve_every == 0:
            self._halve()

    def _halve(self) -> None:
        old = self._buckets
        self._buckets = [{} for _ in range(self.max_count + 1)]
        for c in range(1, self.max_count + 1):
            for k in old[c]:  # oldest first, so bucket order stays oldest first
                n = (c + 1) // 2
                self._count[k] = n
                self._buckets[n][k] = None

    def remove(self, key: Key) -> None:
        """Stop tracking ``key`` (KeyError if untracked).  O(1)."""
        c = self._count.pop(key)
        del self._buckets[c][key]

    def victims(self, n: int = 1) -> list[Key]:
        """Up to ``n`` keys, lowest count first, oldest first within a count.  O(n + max_count)."""
        out: list[Key] = []
        for c in range(1, self.max_count + 1):
            b = self._buckets[c]
            while b and len(out) < n:
                k = next(iter(b))
                del b[k]
                del self._count[k]
                out.append(k)
            if len(out) >= n:
                break
        return out

    def __contains__(self, key: object) -> bool:
        return key in self._count

    def __len__(self) -> int:
        return len(self._count)

    def _check(self) -> None:
        """Verify the invariants of the module docstring (InvariantError).  O(n)."""
        total = 0
        for c, b in enumerate(self._buckets):
            if c == 0 and b:
                raise InvariantError("lfu: keys with count 0")
            for k in b:
                if self._count.get(k) != c:
                    raise InvariantError(f"lfu: key {k!r} in bucket {c}, count "
                                         f"{self._count.get(k)}")
            total += len(b)
        if total != len(self._count):
            raise InvariantError(f"lfu: {total} keys in buckets, {len(self._count)} tracked")
