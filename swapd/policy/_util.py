"""Small helpers shared by the shipped policies (private).

Lock order: none; policies are not thread-safe and the owner serializes calls.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, NoReturn

from swapd.errors import AlreadyTrackedError, ConfigError, InvariantError
from swapd.policy import Key, Policy


def fail(policy: str, msg: str) -> NoReturn:
    """Raise InvariantError naming ``policy``; used by the ``_check()`` methods."""
    raise InvariantError(f"{policy}: {msg}")


def already_tracked(policy: str, key: Any) -> NoReturn:
    """Raise AlreadyTrackedError for an ``insert`` of a key that is tracked."""
    raise AlreadyTrackedError(f"{policy}: insert of {key!r}, which is already tracked")


def ratio(policy: str, name: str, value: float, *, lo: float = 0.0, hi: float = 1.0) -> float:
    """Validate a size ratio in ``[lo, hi]``; ConfigError otherwise."""
    try:
        v = float(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"policy {policy!r}: {name} must be a number, got {value!r}") from exc
    if not lo <= v <= hi:
        raise ConfigError(f"policy {policy!r}: {name} must be in [{lo}, {hi}], got {v}")
    return v


def integer(policy: str, name: str, value: int, *, lo: int, hi: int) -> int:
    """Validate an integer parameter in ``[lo, hi]``; ConfigError otherwise."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"policy {policy!r}: {name} must be an integer, got {value!r}")
    if not lo <= value <= hi:
        raise ConfigError(f"policy {policy!r}: {name} must be in [{lo}, {hi}], got {value}")
    return value


def flag(policy: str, name: str, value: bool) -> bool:
    """Validate a boolean parameter; ConfigError otherwise."""
    if not isinstance(value, bool):
        raise ConfigError(f"policy {policy!r}: {name} must be true or false, got {value!r}")
    return value


def trim_fifo(ghost: OrderedDict[Any, None], limit: int) -> None:
    """Drop the oldest entries of ``ghost`` until it holds at most ``limit``.

    O(1) amortized: every entry dropped was added once.
    """
    pop = ghost.popitem
    while len(ghost) > limit:
        pop(last=False)


def check_disjoint(policy: str, **parts: Any) -> None:
    """Fail unless the named key collections are pairwise disjoint.  O(n)."""
    names = list(parts)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            common = parts[a].keys() & parts[b].keys()
            if common:
                fail(policy, f"{a} and {b} share {sorted(map(repr, common))[:3]}")


class QueuePolicy(Policy):
    """Base of the policies kept as one ordered queue, coldest (or oldest) first: LRU and
    FIFO.  Subclasses give ``access`` (and their own fast ``request``/``replay``)."""

    def __init__(self, capacity: int | None = None, **params: Any) -> None:
        super().__init__(capacity, **params)
        self._od: OrderedDict[Key, None] = OrderedDict()  # the victim end first

    def insert(self, key: Key) -> None:
        """Track ``key`` at the far end from the victims.  O(1)."""
        od = self._od
        if key in od:
            already_tracked(self.name, key)
        od[key] = None

    def remove(self, key: Key) -> None:
        """Stop tracking ``key`` (KeyError if untracked).  O(1)."""
        del self._od[key]

    def _admit(self, key: Key) -> None:
        """The miss half of ``request``: evict from the victim end down to room for one,
        then track ``key``.  O(evicted)."""
        od = self._od
        cap = self.capacity
        if cap is not None:
            over = len(od) + 1 - cap
            while over > 0:
                od.popitem(last=False)
                over -= 1
        od[key] = None

    def victims(self, n: int = 1) -> list[Key]:
        """Untrack and return up to ``n`` keys from the victim end, in order.  O(n)."""
        od = self._od
        n = min(n, len(od))
        pop = od.popitem
        return [pop(last=False)[0] for _ in range(n)]

    def __contains__(self, key: object) -> bool:
        return key in self._od

    def __len__(self) -> int:
        return len(self._od)

    def _check(self) -> None:
        """Every tracked key maps to None.  O(n)."""
        for k, v in self._od.items():
            if v is not None:
                fail(self.name, f"key {k!r} maps to {v!r}, not None")


class EvictOnePolicy(Policy):
    """Base of the policies whose eviction is one step repeated (SIEVE's hand, S3-FIFO's
    and 2Q's queue walks): subclasses give ``_evict_one``, which untracks and returns the
    next victim of a non-empty cache."""

    def _evict_one(self) -> Key:
        raise NotImplementedError

    def victims(self, n: int = 1) -> list[Key]:
        """Untrack and return up to ``n`` keys in eviction order.  O(n) amortized."""
        n = min(n, len(self))
        ev = self._evict_one
        return [ev() for _ in range(n)]
