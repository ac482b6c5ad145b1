"""SIEVE: a FIFO queue with a visited bit and a hand that keeps its place.

Design (Zhang et al., "SIEVE is Simpler than LRU", NSDI '24): keys sit in one
queue in insertion order; new keys enter at the head, never move on a hit, and
a hit only sets the key's visited bit.  The hand starts at the tail (oldest)
and moves toward the head: a visited key has its bit cleared and is passed
over (it stays where it is, unlike CLOCK, which moves it to the head); the
first unvisited key is evicted, and the hand stays at the next newer key for
the following eviction.  When the hand runs off the head it wraps to the
tail.  Because kept keys do not move, new keys are evicted quickly ("quick
demotion") while old popular keys stay ("lazy promotion").

The queue is a doubly linked list of ``_Node``s with a dict from key to node,
because the hand needs a stable position in the middle of the queue (an
OrderedDict cannot hold one).  Each hit sets at most one bit that the hand
clears once, so ``victims`` is O(1) amortized per victim; every other
operation is O(1).

Variant (reproduces libCacheSim's ``Sieve``, which has no parameters): new
keys are inserted unvisited; a hit sets the bit (1 bit, no counter); after an
eviction the hand points at the evicted key's newer neighbour, or at nothing
(restart at the tail) if the evicted key was the head; ``remove`` of the key
under the hand moves the hand to its newer neighbour (``Sieve_remove_obj``).
``capacity=None``: nothing is evicted unless the owner calls ``victims``.

Invariant: the list from ``_head`` along ``older`` links visits exactly the
keys of ``_nodes``, ``newer`` links mirror ``older`` links, and ``_hand`` is
None or a node of the list.

Lock order: none; not thread-safe (the owner serializes calls).

Prior art: libCacheSim ``libCacheSim/cache/eviction/Sieve.c``; the NSDI '24
paper's Algorithm 1.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from swapd.policy import Key
from swapd.policy._util import EvictOnePolicy, already_tracked, fail


class _Node:
    """One queued key: its neighbours toward the head (newer) and tail (older)."""

    __slots__ = ("key", "newer", "older", "visited")

    def __init__(self, key: Key, older: _Node | None) -> None:
        self.key = key
        self.newer: _Node | None = None
        self.older = older
        self.visited = False


class Sieve(EvictOnePolicy):
    """SIEVE (NSDI '24); O(1) amortized per operation."""

    name = "sieve"
    description = "SIEVE: FIFO + visited bit + sticky hand (NSDI'24, libCacheSim Sieve)"

    def __init__(self, capacity: int | None = None, **params: Any) -> None:
        super().__init__(capacity, **params)
        self._nodes: dict[Key, _Node] = {}  # key -> node, exactly the tracked keys
        self._head: _Node | None = None  # newest
        self._tail: _Node | None = None  # oldest
        self._hand: _Node | None = None  # next node to examine; None = start at the tail

    def insert(self, key: Key) -> None:
        """Queue ``key`` at the head, unvisited.  O(1)."""
        nodes = self._nodes
        if key in nodes:
            already_tracked(self.name, key)
        head = self._head
        node = _Node(key, head)
        if head is None:
            self._tail = node
        else:
            head.newer = node
        self._head = node
        nodes[key] = node

    def access(self, key: Key) -> None:
        """Set ``key``'s visited bit (KeyError if untracked).  O(1)."""
        self._nodes[key].visited = True

    def _unlink(self, node: _Node) -> None:
        newer, older = node.newer, node.older
        if newer is None:
            self._head = older
        else:
            newer.older = older
        if older is None:
            self._tail = newer
        else:
            older.newer = newer

    def remove(self, key: Key) -> None:
        """Stop tracking ``key`` (KeyError if untracked); the hand steps past it.  O(1)."""
        node = self._nodes.pop(key)
        if node is self._hand:
            self._hand = node.newer
        self._unlink(node)

    def _evict_one(self) -> Key:
        node = self._hand or self._tail
        assert node is not None
        while node.visited:
            node.visited = False
            node = node.newer or self._tail
            assert node is not None
        self._hand = node.newer
        self._unlink(node)
        del self._nodes[node.key]
        return node.key

    def __contains__(self, key: object) -> bool:
        return key in self._nodes

    def __len__(self) -> int:
        return len(self._nodes)

    def request(self, key: Key) -> bool:
        """One simulator step, same result as ``Policy.request``.  O(1) amortized."""
        node = self._nodes.get(key)
        if node is not None:
            node.visited = True
            return True
        cap = self.capacity
        if cap is not None:
            over = len(self._nodes) + 1 - cap
            while over > 0:
                self._evict_one()
                over -= 1
        self.insert(key)
        return False

    def replay(self, keys: Iterable[Key]) -> int:
        """``request`` over ``keys``; returns the misses.  O(1) amortized per key."""
        get = self._nodes.get
        req = self.request
        misses = 0
        for k in keys:
            node = get(k)
            if node is not None:
                node.visited = True
            elif not req(k):
                misses += 1
        return misses

    def _check(self) -> None:
        """Walk the list: links mirror, every node is tracked once, the hand is on it.  O(n)."""
        seen = 0
        hand_found = self._hand is None
        node = self._head
        newer: _Node | None = None
        nodes = self._nodes
        while node is not None:
            if node.newer is not newer:
                fail(self.name, f"node {node.key!r}: newer link does not mirror older link")
            if nodes.get(node.key) is not node:
                fail(self.name, f"node {node.key!r} is not the dict's node for its key")
            if node is self._hand:
                hand_found = True
            seen += 1
            if seen > len(nodes):
                fail(self.name, "list is longer than the key dict (a cycle?)")
            newer, node = node, node.older
        if newer is not self._tail:
            fail(self.name, "tail pointer is not the last node of the list")
        if seen != len(nodes):
            fail(self.name, f"list has {seen} nodes, dict has {len(nodes)}")
        if not hand_found:
            fail(self.name, "hand points at a node that is not in the list")
