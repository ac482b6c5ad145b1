# zbud: two compressed objects ("buddies") per page, modelled on mm/zbud.c.
#
# Design (mm/zbud.c, Seth Jennings 2013, read at torvalds/linux 1be537c6451b;
# removed from mainline in 6.15 together with z3fold): every pool page is cut
# into 64 chunks of 64 bytes (NCHUNKS_ORDER 6).  The first chunk holds the zbud
# header (ZHDR_SIZE_ALIGNED), so 63 chunks are left for data.  A page holds at
# most two objects: the *first* buddy left-justified right after the header, the *last* buddy
# right-justified against the end of the page, so that freeing either one
# coalesces with the slack between them.  Pages holding one buddy sit on
# ``unbuddied[n]`` where n is the number of free chunks; pages holding two sit
# on the buddied list (in the kernel ``buddied`` is a union with
# ``unbuddied[0]``, which is never searched; we keep the same union).
# ``zbud_alloc`` takes the head of the first non-empty list whose index is at
# least the object's chunk count (lists are LIFO: ``list_add`` at the head,
# ``list_first_entry`` from the head), and the page gets the first buddy if that
# slot is free, else the last.  Otherwise a fresh page is taken and the object
# becomes its first buddy.  The largest object is PAGE_SIZE - ZHDR - one chunk
# = 3968 bytes (62 chunks), as in ``zbud_alloc``'s -ENOSPC check.  Objects
# never move; zbud has no compaction (compact() returns 0).
#
# State (docs/state-format.md, section 5.2; one state region of kind "zbud"): every live
# object is a record of the shared handle table (backends/_objtable.py: page, buddy, size,
# generation, CRC-32).  The page header lives where the kernel keeps struct zbud_header: in
# the page's reserved first chunk, as u32 words (prev and next page on its list, as pfn + 1,
# 0 = none; first_chunks; last_chunks; a magic word).  The list heads (63 lists, [0] the
# buddied one) are the ``lists`` array (pfn + 1 of the head, 0 = empty); the non-empty mask
# and the counters are scalars.  The kernel's handle is the object's address; ours names a
# record, so that a stale or doubly-freed handle is caught by name instead of corrupting a
# neighbour.  The layout -- and hence density -- is unaffected.
#
# Deviations, none of which changes where an object lands: zbud's LRU and
# reclaim (removed from the kernel in 6.5, the LRU moved into zswap) are not
# modelled; the pool lock is held across alloc_page (the kernel drops it).
#
# Lock order: ZbudPool._lock -> PageArena._lock (the arena lock is a leaf).
# Invariants (checked by _check): every pool page is on exactly one list and
#   holds 1 or 2 objects; first_chunks + last_chunks <= NCHUNKS (so the buddies
#   never overlap and neither touches the header chunk); a page with two buddies
#   is on lists[0] (buddied), one with one buddy on lists[NCHUNKS - used chunks];
#   bit i of the mask is set iff lists[i] is non-empty; every buddy with chunks
#   is owned by exactly one live record; pages held == arena.pages_in_use.

"""The zbud allocator backend: at most two objects per page (``mm/zbud.c``)."""

from __future__ import annotations

import mmap
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, cast

from backends._layout import CHECKSUM_CRC32, adopt_regions
from backends._objtable import (
    BUD_MASK,
    BUD_SHIFT,
    H_INFO,
    H_WORDS,
    HANDLE_SCALARS,
    SIZE_MASK,
    ObjectTablePool,
)
from swapd.arena import DEFAULT_MAX_PAGES, PAGE_SHIFT, PAGE_SIZE
from swapd.backend import PoolStats
from swapd.errors import InvariantError, PoolExhaustedError
from swapd.state import ArraySpec, StateFormatError, StateRegion

NCHUNKS_ORDER = 6
CHUNK_SHIFT = PAGE_SHIFT - NCHUNKS_ORDER
CHUNK_SIZE = 1 << CHUNK_SHIFT  # 64 bytes
ZHDR_SIZE_ALIGNED = CHUNK_SIZE  # struct zbud_header fits one chunk
NCHUNKS = (PAGE_SIZE - ZHDR_SIZE_ALIGNED) >> CHUNK_SHIFT  # 63 chunks of data per page
MAX_OBJECT_SIZE = PAGE_SIZE - ZHDR_SIZE_ALIGNED - CHUNK_SIZE  # 3968 bytes, 62 chunks

FIRST = 0
LAST = 1
BUDDY_NAMES = ("first", "last")
BUDDIED = 0  # _lists[0] is the buddied list, as the kernel's union with unbuddied[0]


def size_to_chunks(size: int) -> int:
    """Chunks needed for ``size`` bytes (rounded up), as zbud's size_to_chunks.  O(1)."""
    return (size + CHUNK_SIZE - 1) >> CHUNK_SHIFT


@dataclass(frozen=True)
class ZbudStats(PoolStats):
    """zbud accounting; extras count pages per list and chunks used by objects."""

    buddied_pages: int
    unbuddied_pages: int
    chunks_used: int  # sum over objects of size_to_chunks(size)


@dataclass(frozen=True)
class Placement:
    """Where an object lives: arena page, buddy, byte offset in the page, size."""

    pfn: int
    buddy: str  # "first" or "last"
    offset: int  # bytes from the start of the page
    size: int
    chunks: int


# The page header, u32 words at the start of the page's first chunk (struct zbud_header).
ZH_PREV, ZH_NEXT, ZH_FIRST, ZH_LAST, ZH_MAGIC = range(5)
ZBUD_MAGIC = 0x7A627564  # "zbud"
STATE_KIND = "zbud"
STATE_VERSION = 1
SCALARS = (*HANDLE_SCALARS, "mask", "pages", "objects", "bytes", "chunks", "max_pages")


class ZbudPool(ObjectTablePool):
    """A zbud pool: two buddies per page, unbuddied lists indexed by free chunks.

    Thread-safe: every method takes the pool lock (the kernel's zbud_pool.lock).
    """

    name = "zbud"
    description = "mm/zbud.c: at most 2 objects per page, 64 B chunks, first/last buddies"
    version = "0.2.0"

    def __init__(self, *, max_pages: int = DEFAULT_MAX_PAGES, **options: Any) -> None:
        super().__init__(max_pages=max_pages, **options)
        self.state = StateRegion.create(STATE_KIND, STATE_VERSION, [
            ArraySpec("handles", "I", 2 * max_pages + 1, H_WORDS * 4),
            ArraySpec("lists", "I", NCHUNKS),
        ], SCALARS)
        st = self.state
        st.set_count("handles", 1)
        st.set_count("lists", NCHUNKS)
        st.set("checksum", CHECKSUM_CRC32)
        st.set("max_pages", max_pages)
        self._setup()

    def _setup(self) -> None:
        # The arena's mmap (memoryview.obj): slicing it copies out in one step.
        self._mm = cast(mmap.mmap, self.arena.buf.obj)
        self._au32 = self.arena.buf.cast("I")  # page headers
        self._lock = threading.Lock()
        self._init_table()
        self._L = self.state.view("lists")
        st = self.state
        self._s_mask, self._s_pages, self._s_objects, self._s_bytes, self._s_chunks = (
            st.scalar_index(k) for k in ("mask", "pages", "objects", "bytes", "chunks"))

    @classmethod
    def adopt(cls, fds: Mapping[str, int], *, writable: bool = True) -> ZbudPool:
        """A pool over the regions ``fds`` (``{"arena", "zbud"}``), taken over.  Headers are
        validated (StateFormatError naming the field).  O(1); ``_check()`` verifies the rest."""
        self = cls.__new__(cls)
        self.arena, self.state = adopt_regions("zbud", STATE_KIND, STATE_VERSION, fds,
                                               writable=writable)
        try:
            if self.state.get("checksum") != CHECKSUM_CRC32:
                raise StateFormatError(f"zbud: checksum algorithm {self.state.get('checksum')}")
            self._setup()
        except BaseException:
            self.close()
            raise
        return self

    # -- zpool_driver surface ----------------------------------------------------------

    @property
    def max_size(self) -> int:
        """Largest object: PAGE_SIZE - ZHDR_SIZE_ALIGNED - CHUNK_SIZE = 3968 bytes."""
        return MAX_OBJECT_SIZE

    def _offset(self, pfn: int, bud: int) -> int:
        """Arena offset of buddy ``bud`` of page ``pfn``: first after the header, last
        right-justified.  O(1)."""
        if bud == FIRST:
            return (pfn << PAGE_SHIFT) + ZHDR_SIZE_ALIGNED
        return ((pfn + 1) << PAGE_SHIFT) - (self._au32[(pfn << 10) + ZH_LAST] << CHUNK_SHIFT)

    def _list_add_locked(self, pfn: int, i: int) -> None:
        """list_add: page ``pfn`` at the head of list ``i``.  O(1)."""
        L, A = self._L, self._au32
        h = pfn << 10
        head = L[i]
        A[h + ZH_PREV] = 0
        A[h + ZH_NEXT] = head
        if head:
            A[((head - 1) << 10) + ZH_PREV] = pfn + 1
        L[i] = pfn + 1
        self._S[self._s_mask] |= 1 << i

    def _list_del_locked(self, pfn: int, i: int) -> None:
        """list_del: page ``pfn`` off list ``i``.  O(1)."""
        L, A = self._L, self._au32
        h = pfn << 10
        p, n = A[h + ZH_PREV], A[h + ZH_NEXT]
        if p:
            A[((p - 1) << 10) + ZH_NEXT] = n
        else:
            L[i] = n
            if not n:
                self._S[self._s_mask] &= ~(1 << i)
        if n:
            A[((n - 1) << 10) + ZH_PREV] = p
        A[h + ZH_PREV] = A[h + ZH_NEXT] = 0

    def malloc(self, size: int) -> int:
        """Allocate ``size`` bytes as zbud_alloc does and return a handle.

        First fit over the unbuddied lists from index size_to_chunks(size)
        upwards (O(1) with the non-empty-list bitmask), else a new page.
        Raises ObjectSizeError, DataTypeError or PoolExhaustedError.
        """
        if type(size) is not int or size <= 0 or size > MAX_OBJECT_SIZE:
            self._check_size(size)  # raises for every bad size; lets int subclasses through
            size = int(size)
        chunks = (size + CHUNK_SIZE - 1) >> CHUNK_SHIFT
        with self._lock:
            if not self._has_room_for_rec():
                raise PoolExhaustedError(f"zbud: all {self._hcap - 1} handles are in use")
            S, A = self._S, self._au32
            m = S[self._s_mask] >> chunks
            if m:
                i = (m & -m).bit_length() - 1 + chunks
                pfn = self._L[i] - 1
                self._list_del_locked(pfn, i)
                bud = FIRST if A[(pfn << 10) + ZH_FIRST] == 0 else LAST
            else:
                pfn = self.arena.alloc_page()  # PoolExhaustedError leaves the pool as it was
                h = pfn << 10
                A[h + ZH_FIRST] = A[h + ZH_LAST] = 0
                A[h + ZH_MAGIC] = ZBUD_MAGIC
                S[self._s_pages] += 1
                bud = FIRST
            h = pfn << 10
            A[h + ZH_FIRST + bud] = chunks
            first, last = A[h + ZH_FIRST], A[h + ZH_LAST]
            self._list_add_locked(pfn, BUDDIED if first and last else NCHUNKS - chunks)
            S[self._s_objects] += 1
            S[self._s_bytes] += size
            S[self._s_chunks] += chunks
            return self._new_rec_locked(pfn, bud, size)

    def free(self, handle: int) -> None:
        """Free the object as zbud_free does; an emptied page goes back to the arena.  O(1)."""
        with self._lock:
            hi = self._rec_locked(handle, "free")
            H, S, A = self._H, self._S, self._au32
            hb = hi * H_WORDS
            pfn = H[hb]
            info = H[hb + H_INFO]
            bud = (info >> BUD_SHIFT) & BUD_MASK
            size = info & SIZE_MASK
            h = pfn << 10
            first, last = A[h + ZH_FIRST], A[h + ZH_LAST]
            self._list_del_locked(pfn, BUDDIED if first and last else NCHUNKS - first - last)
            chunks = A[h + ZH_FIRST + bud]
            A[h + ZH_FIRST + bud] = 0
            S[self._s_objects] -= 1
            S[self._s_bytes] -= size
            S[self._s_chunks] -= chunks
            self._free_rec_locked(hi)
            first, last = A[h + ZH_FIRST], A[h + ZH_LAST]
            if first == 0 and last == 0:
                A[h + ZH_MAGIC] = 0
                S[self._s_pages] -= 1
                self.arena.free_page(pfn)
            else:
                self._list_add_locked(pfn, NCHUNKS - first - last)

    def total_pages(self) -> int:
        """Pages the pool holds (zbud_get_pool_size).  O(1)."""
        return int(self._S[self._s_pages])

    def compact(self) -> int:
        """zbud never moves objects (the kernel has no zbud compaction): returns 0."""
        return 0

    def stats(self) -> ZbudStats:
        """A frozen snapshot of the pool's accounting.  O(buddied pages)."""
        with self._lock:
            buddied = sum(1 for _ in self._list_pages_locked(BUDDIED))
            S = self._S
            pages = int(S[self._s_pages])
            return ZbudStats(
                total_pages=pages,
                objects=int(S[self._s_objects]),
                object_bytes=int(S[self._s_bytes]),
                pages_compacted=0,
                buddied_pages=buddied,
                unbuddied_pages=pages - buddied,
                chunks_used=int(S[self._s_chunks]),
            )

    def _list_pages_locked(self, i: int) -> Iterator[int]:
        """The pages of list ``i``, head first.  O(list)."""
        A = self._au32
        p = self._L[i]
        n = 0
        limit = self.arena.max_pages
        while p:
            n += 1
            if n > limit:
                raise InvariantError(f"zbud: list {i} has a cycle")
            yield p - 1
            p = A[((p - 1) << 10) + ZH_NEXT]

    # -- introspection for tests and tools -------------------------------------------------

    def locate(self, handle: int) -> Placement:
        """Where a live object sits in its page.  O(1)."""
        with self._lock:
            hi = self._rec_locked(handle, "locate")
            hb = hi * H_WORDS
            pfn = self._H[hb]
            info = self._H[hb + H_INFO]
            bud = (info >> BUD_SHIFT) & BUD_MASK
            off = self._offset(pfn, bud)
            return Placement(pfn, BUDDY_NAMES[bud], off - (pfn << PAGE_SHIFT),
                             info & SIZE_MASK, self._au32[(pfn << 10) + ZH_FIRST + bud])

    def unbuddied_index(self, pfn: int) -> int | None:
        """Free chunks of the unbuddied list page ``pfn`` is on, None if buddied.  O(1)."""
        with self._lock:
            h = pfn << 10
            if not 0 <= pfn < self.arena.max_pages or self._au32[h + ZH_MAGIC] != ZBUD_MAGIC:
                raise KeyError(f"zbud: page {pfn} is not in the pool")
            first, last = self._au32[h + ZH_FIRST], self._au32[h + ZH_LAST]
            if first and last:
                return None
            return NCHUNKS - first - last

    # -- helpers --------------------------------------------------------------------------

    def close(self) -> None:
        """Release the views, the state region and the arena."""
        v = getattr(self, "_au32", None)
        if v is not None:
            v.release()
        super().close()

    def _check(self) -> None:
        """Verify every invariant of the layout (raises InvariantError).  O(objects + pages)."""
        with self._lock:
            self.arena._check()
            self.state._check()
            A, S = self._au32, self._S
            pages: dict[int, tuple[int, int]] = {}
            mask = 0
            for i in range(NCHUNKS):
                prev = 0
                for pfn in self._list_pages_locked(i):
                    mask |= 1 << i
                    h = pfn << 10
                    if pfn in pages or A[h + ZH_MAGIC] != ZBUD_MAGIC:
                        raise InvariantError(f"zbud: list {i} holds page {pfn} twice or a page "
                                             "without a zbud header")
                    if A[h + ZH_PREV] != prev:
                        raise InvariantError(f"zbud: page {pfn} prev link {A[h + ZH_PREV]} != "
                                             f"{prev}")
                    prev = pfn + 1
                    first, last = A[h + ZH_FIRST], A[h + ZH_LAST]
                    want = BUDDIED if first and last else NCHUNKS - first - last
                    if want != i:
                        raise InvariantError(
                            f"zbud: page {pfn} ({first}+{last} chunks) on list {i}, "
                            f"belongs on {want}")
                    if first == 0 and last == 0:
                        raise InvariantError(f"zbud: empty page {pfn} still held")
                    if first + last > NCHUNKS:
                        raise InvariantError(
                            f"zbud: page {pfn} buddies overlap ({first}+{last} > {NCHUNKS} chunks)")
                    pages[pfn] = (first, last)
            if mask != S[self._s_mask]:
                raise InvariantError(f"zbud: mask {S[self._s_mask]:#x} != lists {mask:#x}")
            if len(pages) != S[self._s_pages] or len(pages) != self.arena.pages_in_use:
                raise InvariantError(
                    f"zbud: {len(pages)} pages on lists, {S[self._s_pages]} counted, arena has "
                    f"{self.arena.pages_in_use} in use")
            seen: dict[tuple[int, int], int] = {}
            total = chunk_sum = 0
            for hi, (pfn, bud, size, _foreign) in self._live_records_locked().items():
                page = pages.get(pfn)
                if page is None or bud not in (FIRST, LAST):
                    raise InvariantError(f"zbud: record {hi} points at page {pfn} buddy {bud}, "
                                         "not in the pool")
                chunks = page[bud]
                if chunks == 0 or size_to_chunks(size) != chunks:
                    raise InvariantError(
                        f"zbud: record {hi} of {size} B in a {chunks}-chunk buddy")
                if (pfn, bud) in seen:
                    raise InvariantError(
                        f"zbud: records {seen[(pfn, bud)]} and {hi} share a buddy")
                seen[(pfn, bud)] = hi
                total += size
                chunk_sum += chunks
            for pfn, (first, last) in pages.items():
                for bud, chunks in ((FIRST, first), (LAST, last)):
                    if bool(chunks) != ((pfn, bud) in seen):
                        raise InvariantError(
                            f"zbud: page {pfn} {BUDDY_NAMES[bud]} buddy has {chunks} chunks "
                            f"but {'no' if chunks else 'a'} live handle")
            if total != S[self._s_bytes] or chunk_sum != S[self._s_chunks] or \
                    len(seen) != S[self._s_objects]:
                raise InvariantError(
                    f"zbud: accounting says {S[self._s_objects]} objects, {S[self._s_bytes]} B / "
                    f"{S[self._s_chunks]} chunks; records hold {len(seen)}, {total} B / "
                    f"{chunk_sum} chunks")
