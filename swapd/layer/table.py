# The swap table and the intrusive LRU lists of the swap-LRU layer.
#
# Design.  Every page of every region has one 64-bit word in ``SwapTable.words`` and two 32-bit
# links in ``prev``/``next``: arrays of a memfd state region of kind ``swaptable``
# (swapd/state/, docs/state-format.md section 2), so another process given the fd can read
# the table and a restarted daemon can adopt it (``SwapTable.adopt``).  A region owns a
# contiguous extent [base, base + npages) of this global page-number space, so a region's swap
# table is the slice ``words[base:base+npages]`` and an entry's *global number* ``g = base + index``
# names it everywhere (the LRU, the policies, the writeback batches) without any reverse map.
# Each LRU list is circular and doubly linked through ``prev``/``next`` with a sentinel that is
# itself a global number (one reserved word), so unlinking needs no knowledge of which list an
# entry is on: ``next[prev[g]] = next[g]; prev[next[g]] = prev[g]``.
#
# Memory per page: 8 B (word) + 4 B (prev) + 4 B (next) = 16 B of the region's file, which grows
# with ftruncate (the file grows by at least 256 KiB or an eighth at a time) -- and a shmem file's
# page costs memory only once written.  A page that has never been stored has an all-zero word
# (RESIDENT, no copy) and zero links: global number 0 is reserved, so a link of 0 (``NIL``) means
# "on no list" and ``alloc_extent`` writes nothing for a region's pages.  The table's memory is
# therefore proportional to the pages *used* (stored at least once), in 4 KiB steps of each array
# (512 words, 1024 links), not to the pages mapped; a freed extent's ranges are punched again
# (``release``).  Per used entry that is under the 24 B of the kernel's proposed virtual-swap
# descriptor and 8 B more than the kernel's swap table (8 B per slot, Kairui Song's "swap table"
# series), because the LRU linkage lives here instead of in a 56 B zswap_entry (mm/zswap.c:
# struct zswap_entry holds rb node, swpentry, length, pool, handle, objcg and a list_head).
# Side table: a same-filled value or backend handle that does not fit
# its field goes into a 16 B record of the ``side`` array ({g + 1, value}) and the word holds the
# record's index instead (SIDE flag; see ``encode_value``); the disk tier keeps a checksum per
# slot (swapd/layer/tier.py).  Extents (regions and list sentinels) are 48 B records of the
# ``extents`` array; the SortedDicts over them are indexes rebuilt on adoption.  32-bit links
# bound the global space to 2^32 - 1 pages (16 TiB of managed memory).
#
# Word layout (little end first):
#   bits 0-2   tag: 0 RESIDENT (no copy), 1 SAME_FILLED, 2.. = 2 + tier index (up to 6 tiers)
#   bit  3     REF    second-chance referenced bit (set on store, cleared by a rotation;
#                     mm/zswap.c: entry->referenced and shrink_memcg_cb's LRU_ROTATE)
#   bit  4     WB     under writeback: off every list, the copy still valid in its tier
#   bit  5     CLEAN  the page is resident again (non-exclusive load) and this copy is clean
#   bit  6     SIDE   the value or key is in side record ``word >> 20`` (too wide for the word)
#   same-filled: bits 7-63 the value, as a 57-bit two's-complement number (SIDE: bits 7-19 0)
#   tier entry:  bits 7-19 the compressed length (0 for a tier that stores whole pages),
#                bits 20-63 the tier key (backend handle or disk slot), or with SIDE the side
#                record's index
#
# Invariants (checked by ``_check``):
#   - global number 0 (word and links) is all zero;
#   - extents of regions, sentinels and free space tile [1, top) without overlap;
#   - every list is a consistent circular doubly-linked list through its sentinel;
#   - free words are 0;
#   - side records in use are exactly those named by a SIDE word, each naming its word (g + 1).
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

from sortedcontainers import SortedDict

from swapd.errors import InvariantError
from swapd.state import ArraySpec, StateRegion

__all__ = [
    "CLEAN",
    "EXT_LIST",
    "EXT_REGION",
    "FIRST_GLOBAL",
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
    "SideTable",
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
NIL = 0  # global number 0 is reserved (never an entry or a sentinel): a link of 0 is "none"
FIRST_GLOBAL = 1  # the first global number handed out
MAX_GLOBAL = 0xFFFFFFFF
_VALUE_MIN = -(1 << (VALUE_BITS - 1))
_VALUE_MAX = (1 << (VALUE_BITS - 1)) - 1
_U64 = (1 << 64) - 1

KIND = "swaptable"
KIND_VERSION = 2  # 2: links are 0 when on no list, global number 0 reserved
DEFAULT_MAX_ENTRIES = 1 << 28  # global page numbers reserved (4 GiB of address space), 1 TiB
DEFAULT_MAX_EXTENTS = 1 << 20  # regions + list sentinels
EXT_REGION = 1  # an extent record's kind: a region's pages (id = region id)
EXT_LIST = 2    # a list sentinel (id = tier index)
EXT_FIELDS = 6  # base, npages, kind, id, client, spare
#: the table region's scalars: ``top`` (global numbers in use), ``ntiers``, ``tier0..5`` and
#: ``codec0..5`` (the owner's names of its tiers and compressors, ASCII packed into a u64)
SCALARS = ("top", "ntiers", *(f"tier{i}" for i in range(MAX_TIERS)),
           *(f"codec{i}" for i in range(MAX_TIERS)))


def pack_name(name: str) -> int:
    """Up to 8 ASCII bytes as a little-endian u64 (names in the region's scalars)."""
    raw = name.encode("ascii")
    if len(raw) > 8:
        raise ValueError(f"name {name!r} is longer than 8 bytes")
    return int.from_bytes(raw, "little")


def unpack_name(value: int) -> str:
    """Inverse of :func:`pack_name`."""
    return value.to_bytes(8, "little").rstrip(b"\0").decode("ascii")


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


class SideTable:
    """Values and keys too wide for their word: 16 B records ``{g + 1, value}``.

    A word with SIDE holds its record's index in bits 20-63.  Free records have g + 1 == 0 and
    are reused (a Python list of their indexes, rebuilt on adoption).  Not thread-safe.
    """

    def __init__(self, region: StateRegion) -> None:
        self._region = region
        self._v = region.view("side")  # record i: [2i] = g + 1 (0: free), [2i + 1] = value
        self._top = region.count("side")
        self._free = [i for i in range(self._top) if not self._v[2 * i]]
        self._n = self._top - len(self._free)

    def put(self, g: int, value: int) -> int:
        """Store ``value`` for entry ``g``; return ``SIDE | index << KEY_SHIFT`` for its word."""
        if self._free:
            i = self._free.pop()
        else:
            i = self._top
            self._region.set_count("side", i + 1)
            self._top = i + 1
        self._v[2 * i + 1] = value
        self._v[2 * i] = g + 1
        self._n += 1
        return SIDE | (i << KEY_SHIFT)

    def value(self, w: int) -> int:
        """The value a SIDE word names.  O(1)."""
        return int(self._v[2 * (w >> KEY_SHIFT) + 1])

    def free(self, w: int) -> None:
        """Release the record a SIDE word names.  O(1)."""
        i = w >> KEY_SHIFT
        self._v[2 * i] = 0
        self._v[2 * i + 1] = 0
        self._free.append(i)
        self._n -= 1

    def owners(self) -> dict[int, int]:
        """``{record index: g}`` of the records in use.  O(records)."""
        v = self._v
        return {i: int(v[2 * i]) - 1 for i in range(self._top) if v[2 * i]}

    def as_dict(self) -> dict[int, int]:
        """``{g: value}`` of the records in use.  O(records)."""
        v = self._v
        return {int(v[2 * i]) - 1: int(v[2 * i + 1]) for i in range(self._top) if v[2 * i]}

    def __len__(self) -> int:
        return self._n


class SwapTable:
    """Global arrays of swap-table words and LRU links, carved into region extents.

    ``words``, ``prev`` and ``next`` are views of the region's arrays: they never move, and
    entries at or above ``top`` read as 0 (NIL links).  Not thread-safe: the owner serializes
    calls (SwapLayer.lock).
    """

    def __init__(self, max_entries: int = DEFAULT_MAX_ENTRIES, *,
                 max_extents: int = DEFAULT_MAX_EXTENTS,
                 region: StateRegion | None = None) -> None:
        if region is None:
            if not FIRST_GLOBAL < max_entries <= MAX_GLOBAL:
                raise ValueError(f"max_entries must be in {FIRST_GLOBAL + 1}..{MAX_GLOBAL}, "
                                 f"got {max_entries}")
            region = StateRegion.create(KIND, KIND_VERSION, [
                ArraySpec("words", "Q", max_entries),
                ArraySpec("prev", "I", max_entries),
                ArraySpec("next", "I", max_entries),
                ArraySpec("extents", "Q", max_extents, 8 * EXT_FIELDS),
                ArraySpec("side", "Q", max_entries, 16),
            ], SCALARS)
            for name in ("words", "prev", "next"):
                region.set_count(name, FIRST_GLOBAL)  # global number 0: reserved, all zero
            region.set("top", FIRST_GLOBAL)
        self.region = region
        self.max_entries = region.capacity("words")
        self.words = region.view("words")  # one word per page, see the module comment
        self.prev = region.view("prev")    # LRU links (global numbers); NIL when off every list
        self.next = region.view("next")
        self.side = SideTable(region)
        self._ext = region.view("extents")
        self._ext_top = region.count("extents")  # extent records ever used
        self._ext_free: list[int] = []            # free record indexes below _ext_top
        self._ext_rec: dict[int, int] = {}        # base -> record index
        self.top = region.get("top")              # global numbers in use: [0, top)
        self._extents: SortedDict = SortedDict()  # base -> npages, allocated extents
        self._free: SortedDict = SortedDict()     # base -> npages, free extents (coalesced)

    @classmethod
    def adopt(cls, fd: int, *, writable: bool = True) -> SwapTable:
        """The table of state region ``fd`` (taken over: closed with the table).

        The extent indexes and the free extents are rebuilt from the extent records, the side
        table's free list from its records.  StateFormatError if ``fd`` is not a swap table
        region this code reads.  O(extents + side records).
        """
        region = StateRegion.adopt(fd, KIND, KIND_VERSION, writable=writable)
        try:
            t = cls(region=region)
            ext = t._ext
            for i in range(t._ext_top):
                r = i * EXT_FIELDS
                if ext[r + 2]:
                    t._extents[int(ext[r])] = int(ext[r + 1])
                    t._ext_rec[int(ext[r])] = i
                else:
                    t._ext_free.append(i)
            pos = FIRST_GLOBAL
            for base, n in t._extents.items():
                if base > pos:
                    t._free[pos] = base - pos
                pos = base + n
            if pos != t.top:
                raise InvariantError(f"swap table: extents end at {pos}, top is {t.top}")
        except BaseException:
            region.close()
            raise
        return t

    def extent_records(self) -> list[tuple[int, int, int, int, int]]:
        """``(base, npages, kind, id, client)`` of every extent in use, by base.  O(extents)."""
        ext = self._ext
        out = []
        for base, i in self._ext_rec.items():
            r = i * EXT_FIELDS
            out.append((int(base), int(ext[r + 1]), int(ext[r + 2]), int(ext[r + 3]),
                        int(ext[r + 4])))
        return sorted(out)

    # -- extents ------------------------------------------------------------------------

    def alloc_extent(self, npages: int, kind: int = EXT_REGION, ident: int = 0,
                     client: int = 0) -> int:
        """Reserve ``npages`` consecutive global numbers; return the base.

        ``kind``, ``ident`` and ``client`` are recorded in the extent's record (what a reader
        needs to find a region's pages).  First fit over the free extents (few: one per removed
        region), else the arrays grow.  O(free extents + npages).
        """
        if npages <= 0:
            raise ValueError(f"an extent needs at least one page, got {npages}")
        base = -1
        for fbase, n in self._free.items():
            if n >= npages:
                del self._free[fbase]
                if n > npages:
                    self._free[fbase + npages] = n - npages
                base = int(fbase)
                break
        if base < 0:
            base = self.top
            if base + npages > self.max_entries:
                raise MemoryError(f"swap table: all {self.max_entries} global page numbers "
                                  "are in use")
            region = self.region
            for name in ("words", "prev", "next"):
                region.set_count(name, base + npages)  # grown, not written: NIL links are 0
            self.top = base + npages
            region.set("top", self.top)
        if self._ext_free:
            i = self._ext_free.pop()
        else:
            i = self._ext_top
            self.region.set_count("extents", i + 1)
            self._ext_top = i + 1
        r = i * EXT_FIELDS
        ext = self._ext
        ext[r] = base
        ext[r + 1] = npages
        ext[r + 3] = ident
        ext[r + 4] = client
        ext[r + 2] = kind  # last: a record with a kind is complete
        self._ext_rec[base] = i
        self._extents[base] = npages
        return base

    def free_extent(self, base: int) -> None:
        """Release an extent and punch its words and links.

        Its words must already be 0 and its entries unlinked (InvariantError otherwise, and
        nothing is freed).  O(log n + used pages of the extent).
        """
        npages = self._extents[base]
        for run in self.used(base, npages):
            if any(self.words[run.start:run.stop]) or any(self.prev[run.start:run.stop]):
                raise InvariantError(f"swap table: extent at {base} freed with a live word "
                                     "or link")
        del self._extents[base]
        i = self._ext_rec.pop(base)
        r = i * EXT_FIELDS
        ext = self._ext
        ext[r + 2] = 0  # first: a record without a kind is free
        for f in (0, 1, 3, 4):
            ext[r + f] = 0
        self._ext_free.append(i)
        region = self.region
        for name in ("words", "prev", "next"):
            region.release(name, base, npages)  # all zero already: give the memory back
        free = self._free
        # coalesce with the free extent after and before
        nxt = base + npages
        if nxt in free:
            npages += free.pop(nxt)
        j = free.bisect_left(base)
        if j > 0:
            pbase = free.keys()[j - 1]
            if pbase + free[pbase] == base:
                base = pbase
                npages += free.pop(pbase)
        if base + npages == self.top:
            # the free extent is at the top: give the memory back
            self.top = base
            region.set("top", base)
            for name in ("words", "prev", "next"):
                region.set_count(name, base)
        else:
            free[base] = npages

    # -- lists ----------------------------------------------------------------------------

    def new_list(self, tier: int = 0, client: int = 0) -> int:
        """Allocate a sentinel and return it; the list is empty.  O(1) amortized."""
        s = self.alloc_extent(1, EXT_LIST, tier, client)
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
        limit = self.top
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
        n = self.top
        region = self.region
        if not (region.count("words") == region.count("prev") == region.count("next") == n
                == region.get("top")):
            raise InvariantError("swap table: word and link counts differ from top")
        spans = sorted([(int(b), int(c), True) for b, c in self._extents.items()]
                       + [(int(b), int(c), False) for b, c in self._free.items()])
        if self.words[0] or self.prev[0] or self.next[0]:
            raise InvariantError("swap table: reserved global number 0 is not all zero")
        pos = FIRST_GLOBAL
        prev_free = False
        for b, c, used in spans:
            if b != pos or c <= 0:
                raise InvariantError(f"swap table: extent at {b} (len {c}) does not follow {pos}")
            if not used:
                if prev_free:
                    raise InvariantError(f"swap table: free extent at {b} not coalesced")
                if any(any(self.words[r.start:r.stop]) for r in self.used(b, c)):
                    raise InvariantError(f"swap table: free extent at {b} has a nonzero word")
            prev_free = not used
            pos = b + c
        if pos != n:
            raise InvariantError(f"swap table: extents cover {pos} of {n} words")
        if prev_free:
            raise InvariantError("swap table: free extent at the top was not trimmed")
        owners = self.side.owners()
        if len(owners) != len(self.side):
            raise InvariantError(f"swap table: {len(owners)} side records, {len(self.side)} "
                                 "counted")
        for i, g in owners.items():
            w = self.words[g] if 0 <= g < n else 0
            if not w & SIDE or w >> KEY_SHIFT != i:
                raise InvariantError(f"swap table: side record {i} names entry {g} whose word "
                                     f"{w:#x} does not name it")
        recs = self.extent_records()
        if [(b, c) for b, c, *_ in recs] != [(int(b), int(c)) for b, c in self._extents.items()]:
            raise InvariantError("swap table: extent records differ from the extent index")
        region._check()

    def used(self, base: int, npages: int) -> list[range]:
        """Ranges of global numbers in [base, base + npages) whose words may be nonzero: the
        rest were never written and read as 0.  A scan over a region visits only these, so
        it neither costs time per mapped page nor allocates the holes it would read.
        O(runs)."""
        return [range(i, i + c) for i, c in self.region.data_runs("words", base, npages)]

    def nbytes(self) -> int:
        """Bytes of words and links in use (16 per global number)."""
        return 16 * self.top

    def allocated_bytes(self) -> int:
        """Memory the table's region really holds (``st_blocks``)."""
        return self.region.allocated_bytes()

    def state_fds(self) -> dict[str, int]:
        """The table's named state fd: ``{"table": fd}``."""
        return {"table": self.region.fd}

    def close(self) -> None:
        """Unmap the table and close its memfd (idempotent)."""
        self.region.close()
