# The swap table and the intrusive LRU lists of the swap-LRU layer.
#
# Design.  Every page of every region has one 64-bit word in ``SwapTable.words`` (an
# ``array('Q')``), and two 32-bit links in ``prev``/``next`` (``array('I')``).  A region owns a
# contiguous extent [base, base + npages) of this global page-number space, so a region's swap
# table is the slice ``words[base:base+npages]`` and an entry's *global number* ``g = base + index``
# names it everywhere (the LRU, the policies, the writeback batches) without any reverse map.
# Each LRU list is circular and doubly linked through ``prev``/``next`` with a sentinel that is
# itself a global number (one reserved word), so unlinking needs no knowledge of which list an
# entry is on: ``next[prev[g]] = next[g]; prev[next[g]] = prev[g]``.
#
# Memory per page: 8 B (word) + 4 B (prev) + 4 B (next) = 16 B, plus the array over-allocation of
# CPython (1/16 on growth), i.e. about 17 B per page -- under the 24 B of the kernel's proposed
# virtual-swap descriptor and 8 B more than the kernel's swap table (8 B per slot, Kairui Song's
# "swap table" series), because the LRU linkage lives here instead of in a 56 B zswap_entry
# (mm/zswap.c: struct zswap_entry holds rb node, swpentry, length, pool, handle, objcg and a
# list_head).  The cost is per *region page*; for regions that are entirely swapped out it is the
# cost per swapped-out entry.  Side tables: a same-filled value or backend handle that does not fit
# its field goes into ``SwapTable.side`` (a dict, ~80 B per entry; see ``encode_value``), and the
# disk tier keeps a 4 B checksum per slot (swapd/layer/tier.py).  32-bit links bound the global
# space to 2^32 - 1 pages (16 TiB of managed memory).  Measured by ``swapd bench metadata`` at
# 1,000,000 entries (synthetic corpus, zsmalloc): 19.1 B per entry by tracemalloc -- 16.0 B of
# arrays, ~1 B of array over-allocation, 2.1 B of side table (2.5% of the entries: the corpus's
# same-filled pages with random words).
#
# Word layout (little end first):
#   bits 0-2   tag: 0 RESIDENT (no copy), 1 SAME_FILLED, 2.. = 2 + tier index (up to 6 tiers)
#   bit  3     REF    second-chance referenced bit (set on store, cleared by a rotation;
#                     mm/zswap.c: entry->referenced and shrink_memcg_cb's LRU_ROTATE)
#   bit  4     WB     under writeback: off every list, the copy still valid in its tier
#   bit  5     CLEAN  the page is resident again (non-exclusive load) and this copy is clean
#   bit  6     SIDE   the payload is in ``side[g]`` (value or key too wide for the word)
#   same-filled: bits 7-63 the value, as a 57-bit two's-complement number
#   tier entry:  bits 7-19 the compressed length (0 for a tier that stores whole pages),
#                bits 20-63 the tier key (backend handle or disk slot)
#
# Invariants (checked by ``_check``):
#   - extents of regions, sentinels and free space tile [0, len(words)) without overlap;
#   - every list is a consistent circular doubly-linked list through its sentinel;
#   - free words are 0.
# The owner (SwapLayer) checks the coupling between words and lists: an entry with a tier tag and
# without WB is on exactly the list of (its client, its tier); a WB entry is on no list.
#
# Lock order: none here.  SwapTable is not thread-safe; every call is made under SwapLayer.lock.
# Prior art: the kernel's swap table (mm/swap_table.h: a per-cluster array of one atomic word per
# swap slot, holding a folio, a shadow or NULL), zram's per-slot table
# (drivers/block/zram/zram_drv.c: handle, flags and size per slot), and list_lru's intrusive
# lists (mm/list_lru.c).
"""The swap table: one word per page, and the intrusive LRU lists over global page numbers."""

from __future__ import annotations

import enum
from array import array

from sortedcontainers import SortedDict

from swapd.errors import InvariantError

__all__ = [
    "CLEAN",
    "KEY_SHIFT",
    "LEN_BITS",
    "LEN_SHIFT",
    "NIL",
    "REF",
    "SIDE",
    "TAG_MASK",
    "TAG_RESIDENT",
    "TAG_SAME",
    "TAG_TIER0",
    "WB",
    "EntryState",
    "SwapTable",
]


class EntryState(enum.Enum):
    """Where a page's data lives (what ``SwapLayer.state`` reports)."""

    RESIDENT = "resident"        # no swapped-out copy (or only a clean copy of a resident page)
    SAME_FILLED = "same_filled"  # the value is in the swap table word
    COMPRESSED = "compressed"    # an object in a CompressedTier's backend
    DISK = "disk"                # a slot of a DiskTier
    REMOTE = "remote"            # reserved for a remote tier


TAG_MASK = 0x7
TAG_RESIDENT = 0
TAG_SAME = 1
TAG_TIER0 = 2
MAX_TIERS = 6
REF = 1 << 3
WB = 1 << 4
CLEAN = 1 << 5
SIDE = 1 << 6
FLAG_MASK = REF | WB | CLEAN | SIDE
VALUE_SHIFT = 7
VALUE_BITS = 57
LEN_SHIFT = 7
LEN_BITS = 13
LEN_MASK = (1 << LEN_BITS) - 1
KEY_SHIFT = 20
KEY_BITS = 44
KEY_MAX = (1 << KEY_BITS) - 1
NIL = 0xFFFFFFFF  # never a valid global number (the space is bounded below it)
MAX_GLOBAL = NIL - 1
_VALUE_MIN = -(1 << (VALUE_BITS - 1))
_VALUE_MAX = (1 << (VALUE_BITS - 1)) - 1
_U64 = (1 << 64) - 1


def encode_value(value: int) -> int | None:
    """Return the word payload (already shifted) for a same-filled 64-bit ``value``, or None.

    The value is read as a signed 64-bit number; it fits when it is in the 57-bit signed range,
    which holds 0 and -1 (all ones), by far the most common fills.  O(1).
    """
    v = value - (1 << 64) if value >> 63 else value
    if _VALUE_MIN <= v <= _VALUE_MAX:
        return (v & ((1 << VALUE_BITS) - 1)) << VALUE_SHIFT
    return None


def decode_value(word: int) -> int:
    """Inverse of ``encode_value``: the unsigned 64-bit value of a same-filled word.  O(1)."""
    v = word >> VALUE_SHIFT
    if v >> (VALUE_BITS - 1):
        v -= 1 << VALUE_BITS
    return v & _U64


class SwapTable:
    """Global arrays of swap-table words and LRU links, carved into region extents.

    Not thread-safe: the owner serializes calls (SwapLayer.lock).
    """

    def __init__(self) -> None:
        self.words = array("Q")   # one word per page, see the module comment
        self.prev = array("I")    # LRU links (global numbers); NIL when off every list
        self.next = array("I")
        self.side: dict[int, int] = {}  # g -> same-filled value or tier key (word has SIDE)
        self._extents: SortedDict = SortedDict()  # base -> npages, allocated extents
        self._free: SortedDict = SortedDict()     # base -> npages, free extents (coalesced)

    # -- extents ------------------------------------------------------------------------

    def alloc_extent(self, npages: int) -> int:
        """Reserve ``npages`` consecutive global numbers; return the base.

        First fit over the free extents (few: one per removed region), else the arrays grow.
        O(free extents + npages).
        """
        if npages <= 0:
            raise ValueError(f"an extent needs at least one page, got {npages}")
        for base, n in self._free.items():
            if n >= npages:
                del self._free[base]
                if n > npages:
                    self._free[base + npages] = n - npages
                self._extents[base] = npages
                return int(base)
        base = len(self.words)
        if base + npages > MAX_GLOBAL:
            raise MemoryError("swap table: 2^32 global page numbers exhausted")
        self.words.frombytes(bytes(8 * npages))
        links = b"\xff" * (4 * npages)
        self.prev.frombytes(links)
        self.next.frombytes(links)
        self._extents[base] = npages
        return base

    def free_extent(self, base: int) -> None:
        """Release an extent (its words must already be 0 and its entries unlinked).  O(log n)."""
        npages = self._extents.pop(base)
        free = self._free
        # coalesce with the free extent after and before
        nxt = base + npages
        if nxt in free:
            npages += free.pop(nxt)
        i = free.bisect_left(base)
        if i > 0:
            pbase = free.keys()[i - 1]
            if pbase + free[pbase] == base:
                base = pbase
                npages += free.pop(pbase)
        if base + npages == len(self.words):
            # the free extent is at the top: give the memory back
            del self.words[base:]
            del self.prev[base:]
            del self.next[base:]
        else:
            free[base] = npages

    # -- lists ----------------------------------------------------------------------------

    def new_list(self) -> int:
        """Allocate a sentinel and return it; the list is empty.  O(1) amortized."""
        s = self.alloc_extent(1)
        self.prev[s] = s
        self.next[s] = s
        return s

    def drop_list(self, s: int) -> None:
        """Free an empty list's sentinel."""
        if self.next[s] != s:
            raise InvariantError(f"list {s} dropped while not empty")
        self.prev[s] = NIL
        self.next[s] = NIL
        self.free_extent(s)

    def push_head(self, s: int, g: int) -> None:
        """Link ``g`` as the hottest entry of list ``s``.  O(1)."""
        nxt = self.next
        h = nxt[s]
        nxt[g] = h
        self.prev[g] = s
        self.prev[h] = g
        nxt[s] = g

    def push_tail(self, s: int, g: int) -> None:
        """Link ``g`` as the coldest entry of list ``s``.  O(1)."""
        prv = self.prev
        t = prv[s]
        prv[g] = t
        self.next[g] = s
        self.next[t] = g
        prv[s] = g

    def unlink(self, g: int) -> None:
        """Take ``g`` off whatever list it is on (no-op if on none).  O(1)."""
        prv = self.prev
        nxt = self.next
        p = prv[g]
        if p == NIL:
            return
        n = nxt[g]
        nxt[p] = n
        prv[n] = p
        prv[g] = NIL
        nxt[g] = NIL

    def tail(self, s: int) -> int:
        """The coldest entry of list ``s``, or ``s`` itself when empty.  O(1)."""
        return int(self.prev[s])

    def iter_list(self, s: int, limit: int) -> list[int]:
        """Members of list ``s`` from hottest to coldest (at most ``limit``).  O(limit)."""
        out: list[int] = []
        nxt = self.next
        g = nxt[s]
        while g != s and len(out) < limit:
            out.append(int(g))
            g = nxt[g]
        return out

    # -- checks -----------------------------------------------------------------------------

    def check_list(self, s: int) -> list[int]:
        """Verify list ``s`` and return its members hottest first.  O(len)."""
        nxt, prv = self.next, self.prev
        out: list[int] = []
        g = s
        limit = len(self.words)
        while True:
            n = nxt[g]
            if n == NIL or n >= limit:
                raise InvariantError(f"list {s}: broken next link at {g}")
            if prv[n] != g:
                raise InvariantError(f"list {s}: prev[{n}]={prv[n]} but next[{g}]={n}")
            if n == s:
                return out
            out.append(int(n))
            if len(out) > limit:
                raise InvariantError(f"list {s}: cycle that misses its sentinel")
            g = n

    def _check(self) -> None:
        """Verify extents tile the arrays and free words are clear.  O(pages)."""
        n = len(self.words)
        if not (len(self.prev) == len(self.next) == n):
            raise InvariantError("swap table: word and link arrays differ in length")
        spans = sorted([(int(b), int(c), True) for b, c in self._extents.items()]
                       + [(int(b), int(c), False) for b, c in self._free.items()])
        pos = 0
        prev_free = False
        for b, c, used in spans:
            if b != pos or c <= 0:
                raise InvariantError(f"swap table: extent at {b} (len {c}) does not follow {pos}")
            if not used:
                if prev_free:
                    raise InvariantError(f"swap table: free extent at {b} not coalesced")
                if any(self.words[b:b + c]):
                    raise InvariantError(f"swap table: free extent at {b} has a nonzero word")
            prev_free = not used
            pos = b + c
        if pos != n:
            raise InvariantError(f"swap table: extents cover {pos} of {n} words")
        if prev_free:
            raise InvariantError("swap table: free extent at the top was not trimmed")
        for g in self.side:
            if not self.words[g] & SIDE:
                raise InvariantError(f"swap table: side entry for {g} without the SIDE flag")

    def nbytes(self) -> int:
        """Bytes held by the arrays (allocated items, not counting over-allocation)."""
        return (self.words.itemsize * len(self.words) + self.prev.itemsize * len(self.prev)
                + self.next.itemsize * len(self.next))
