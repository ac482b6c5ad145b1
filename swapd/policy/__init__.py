"""Victim-selection policies (the "which pages" half of a tier policy).

A :class:`Policy` tracks a set of keys -- any hashable page identifier, e.g. a
``(region, index)`` pair in the daemon or an integer page id in the simulator --
and, when asked, chooses victims among them.  It is told about every insert,
access (hit) and removal.  It does not decide *how many* pages to evict: that
is the sizing half, left to the daemon's reclaimer, the layer's pool limit, or
the simulator's capacity.  memtierd and TMO keep the same split.

Policies are plugins in the entry-point group ``swapd.policies``.  Shipped:
``lru``, ``fifo``, ``clock``, ``sieve``, ``s3fifo``, ``arc``, ``2q``; each
module documents its variant and parameters so that results can be reproduced
in other simulators (libCacheSim names are given where they differ).

Contract, for a policy author:

* ``insert(key)``: ``key`` (not tracked) becomes tracked.  A policy with ghost
  history (ARC, 2Q, S3-FIFO) may use it to place the key.
* ``access(key)``: a hit on a tracked key.
* ``remove(key)``: ``key`` leaves for a reason other than this policy's choice
  (freed, invalidated, faulted in).  Unknown keys raise KeyError.
* ``victims(n)``: choose up to ``n`` tracked keys, stop tracking them, and
  return them coldest first.  Returns fewer only if fewer are tracked.
* ``request(key) -> bool``: the cache-simulator step -- a hit is an access,
  a miss inserts the key after evicting down to ``capacity`` (if set).
  Returns True on a hit.  Policies may override it with a faster path that
  behaves identically.
* ``capacity``: the cache size in keys the policy sizes its internal queues
  and ghosts for; ``None`` means "unbounded, victims only on demand" (the
  daemon's use).  ``resize(capacity)`` changes it.
* ``_check()``: verify invariants, raising InvariantError.

Allowed context: policies are not thread-safe; the owner serializes calls.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Hashable, Iterable
from typing import Any, ClassVar

Key = Hashable


class Policy(ABC):
    """Base class of victim-selection policies (see the module docstring)."""

    name: ClassVar[str]
    description: ClassVar[str]
    version: ClassVar[str] = "0.1.0"

    def __init__(self, capacity: int | None = None, **params: Any) -> None:
        if params:
            from swapd.errors import ConfigError

            raise ConfigError(
                f"policy {self.name!r} does not take parameter(s): {', '.join(sorted(params))}"
            )
        if capacity is not None and capacity <= 0:
            from swapd.errors import ConfigError

            raise ConfigError(f"policy {self.name!r}: capacity must be positive, got {capacity}")
        self.capacity = capacity

    @abstractmethod
    def insert(self, key: Key) -> None:
        """Start tracking ``key``.  O(1) amortized in the shipped policies."""

    @abstractmethod
    def access(self, key: Key) -> None:
        """Record a hit on tracked ``key``.  O(1)."""

    @abstractmethod
    def remove(self, key: Key) -> None:
        """Stop tracking ``key`` (KeyError if not tracked).  O(1) amortized."""

    @abstractmethod
    def victims(self, n: int = 1) -> list[Key]:
        """Choose, untrack and return up to ``n`` victims, coldest first."""

    @abstractmethod
    def __contains__(self, key: object) -> bool:
        """Whether ``key`` is tracked.  O(1)."""

    @abstractmethod
    def __len__(self) -> int:
        """Number of tracked keys.  O(1)."""

    @abstractmethod
    def _check(self) -> None:
        """Verify the policy's invariants (raises InvariantError).  O(n)."""

    def resize(self, capacity: int | None) -> None:
        """Change ``capacity``; does not evict (the owner calls ``victims``)."""
        self.capacity = capacity

    def request(self, key: Key) -> bool:
        """One cache-simulator step; True on a hit (see the module docstring)."""
        if key in self:
            self.access(key)
            return True
        cap = self.capacity
        if cap is not None:
            over = len(self) + 1 - cap
            if over > 0:
                self.victims(over)
        self.insert(key)
        return False

    def replay(self, keys: Iterable[Key]) -> int:
        """Run ``request`` over ``keys``; return the number of misses."""
        misses = 0
        req = self.request
        for k in keys:
            if not req(k):
                misses += 1
        return misses
