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
# Handles: the kernel's handle is the object's address.  Ours is an opaque
# integer from a counter (never reused) mapped to (offset, size, page, buddy),
# so that a stale or doubly-freed handle is caught by name instead of
# corrupting a neighbour.  The layout -- and hence density -- is unaffected.
#
# Deviations, none of which changes where an object lands: zbud's LRU and
# reclaim (removed from the kernel in 6.5, the LRU moved into zswap) are not
# modelled; the pool lock is held across alloc_page (the kernel drops it).
#
# Lock order: ZbudPool._lock -> PageArena._lock (the arena lock is a leaf).
# Invariants (checked by _check): every page in _pages holds 1 or 2 objects;
#   first_chunks + last_chunks <= NCHUNKS (so the buddies never overlap and
#   neither touches the header chunk); a page with two buddies is on
#   _lists[0] (buddied), one with one buddy on _lists[NCHUNKS - used chunks];
#   bit i of _mask is set iff _lists[i] is non-empty; pages held ==
#   arena.pages_in_use.

"""The zbud allocator backend: at most two objects per page (``mm/zbud.c``)."""

from __future__ import annotations

import mmap
import threading
from dataclasses import dataclass
from typing import Any, cast

from backends._objtable import ObjectTablePool
from swapd.arena import DEFAULT_MAX_PAGES, PAGE_SHIFT, PAGE_SIZE
from swapd.backend import PoolStats
from swapd.errors import InvariantError

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


class ZbudPool(ObjectTablePool):
    """A zbud pool: two buddies per page, unbuddied lists indexed by free chunks.

    Thread-safe: every method takes the pool lock (the kernel's zbud_pool.lock).
    """

    name = "zbud"
    description = "mm/zbud.c: at most 2 objects per page, 64 B chunks, first/last buddies"
    version = "0.1.0"

    def __init__(self, *, max_pages: int = DEFAULT_MAX_PAGES, **options: Any) -> None:
        super().__init__(max_pages=max_pages, **options)
        # The arena's mmap (memoryview.obj): slicing it copies out in one step, and
        # mmap.move() is memmove.
        self._mm = cast(mmap.mmap, self.arena.buf.obj)
        self._lock = threading.Lock()
        # page -> [first_chunks, last_chunks]; 0 means that buddy is free.  Under _lock.
        self._pages: dict[int, list[int]] = {}
        # _lists[i] for i >= 1: pages with one buddy and i free chunks; _lists[0]: buddied.
        # Dicts used as ordered sets: insertion = list_add at the head, popitem() =
        # list_first_entry + list_del.  Under _lock.
        self._lists: list[dict[int, None]] = [{} for _ in range(NCHUNKS)]
        self._mask = 0  # under _lock; bit i set iff _lists[i] is non-empty
        # handle -> (arena byte offset, size, page, buddy).  Under _lock.
        self._objs: dict[int, tuple[int, int, int, int]] = {}
        self._next_handle = 1  # under _lock; handles are never reused
        self._bytes = 0  # under _lock; sum of live object sizes
        self._chunks = 0  # under _lock; sum of live object chunk counts

    # -- zpool_driver surface ----------------------------------------------------------

    @property
    def max_size(self) -> int:
        """Largest object: PAGE_SIZE - ZHDR_SIZE_ALIGNED - CHUNK_SIZE = 3968 bytes."""
        return MAX_OBJECT_SIZE

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
            lists = self._lists
            m = self._mask >> chunks
            if m:
                i = (m & -m).bit_length() - 1 + chunks
                lst = lists[i]
                pfn = lst.popitem()[0]
                if not lst:
                    self._mask &= ~(1 << i)
                page = self._pages[pfn]
                bud = FIRST if page[FIRST] == 0 else LAST
            else:
                pfn = self.arena.alloc_page()  # PoolExhaustedError leaves the pool as it was
                page = [0, 0]
                self._pages[pfn] = page
                bud = FIRST
            page[bud] = chunks
            idx = BUDDIED if page[FIRST] and page[LAST] else NCHUNKS - chunks
            lists[idx][pfn] = None
            self._mask |= 1 << idx
            base = pfn << PAGE_SHIFT
            if bud == FIRST:
                off = base + ZHDR_SIZE_ALIGNED
            else:
                off = base + PAGE_SIZE - (chunks << CHUNK_SHIFT)
            handle = self._next_handle
            self._next_handle = handle + 1
            self._objs[handle] = (off, size, pfn, bud)
            self._bytes += size
            self._chunks += chunks
        return handle

    def free(self, handle: int) -> None:
        """Free the object as zbud_free does; an emptied page goes back to the arena.  O(1)."""
        with self._lock:
            rec = self._objs.pop(handle, None)
            if rec is None:
                self._raise_bad_handle(handle, freeing=True)
            _off, size, pfn, bud = rec
            page = self._pages[pfn]
            first, last = page
            old = BUDDIED if first and last else NCHUNKS - first - last
            lists = self._lists
            lst = lists[old]
            del lst[pfn]
            if not lst:
                self._mask &= ~(1 << old)
            chunks = page[bud]
            page[bud] = 0
            self._bytes -= size
            self._chunks -= chunks
            if page[FIRST] == 0 and page[LAST] == 0:
                del self._pages[pfn]
                self.arena.free_page(pfn)
            else:
                idx = NCHUNKS - page[FIRST] - page[LAST]
                lists[idx][pfn] = None
                self._mask |= 1 << idx

    def total_pages(self) -> int:
        """Pages the pool holds (zbud_get_pool_size).  O(1)."""
        return len(self._pages)

    def compact(self) -> int:
        """zbud never moves objects (the kernel has no zbud compaction): returns 0."""
        return 0

    def stats(self) -> ZbudStats:
        """A frozen snapshot of the pool's accounting.  O(1)."""
        with self._lock:
            buddied = len(self._lists[BUDDIED])
            return ZbudStats(
                total_pages=len(self._pages),
                objects=len(self._objs),
                object_bytes=self._bytes,
                pages_compacted=0,
                buddied_pages=buddied,
                unbuddied_pages=len(self._pages) - buddied,
                chunks_used=self._chunks,
            )

    # -- introspection for tests and tools -------------------------------------------------

    def locate(self, handle: int) -> Placement:
        """Where a live object sits in its page.  O(1)."""
        with self._lock:
            rec = self._objs.get(handle)
            if rec is None:
                self._raise_bad_handle(handle, freeing=False)
            off, size, pfn, bud = rec
            return Placement(pfn, BUDDY_NAMES[bud], off - (pfn << PAGE_SHIFT), size,
                             self._pages[pfn][bud])

    def unbuddied_index(self, pfn: int) -> int | None:
        """Free chunks of the unbuddied list page ``pfn`` is on, None if buddied.  O(1)."""
        with self._lock:
            page = self._pages.get(pfn)
            if page is None:
                raise KeyError(f"zbud: page {pfn} is not in the pool")
            if page[FIRST] and page[LAST]:
                return None
            return NCHUNKS - page[FIRST] - page[LAST]

    # -- helpers --------------------------------------------------------------------------

    def _check(self) -> None:
        """Verify every invariant of the layout (raises InvariantError).  O(objects + pages)."""
        with self._lock:
            self.arena._check()
            pages = self._pages
            if len(pages) != self.arena.pages_in_use:
                raise InvariantError(
                    f"zbud: {len(pages)} pages held but the arena has "
                    f"{self.arena.pages_in_use} in use")
            listed = 0
            for i, lst in enumerate(self._lists):
                if bool(lst) != bool(self._mask >> i & 1):
                    raise InvariantError(f"zbud: mask bit {i} disagrees with list {i}")
                listed += len(lst)
                for pfn in lst:
                    page = pages.get(pfn)
                    if page is None:
                        raise InvariantError(f"zbud: list {i} holds page {pfn} not in the pool")
                    first, last = page
                    want = BUDDIED if first and last else NCHUNKS - first - last
                    if want != i:
                        raise InvariantError(
                            f"zbud: page {pfn} ({first}+{last} chunks) on list {i}, "
                            f"belongs on {want}")
            if self._mask >> NCHUNKS:
                raise InvariantError("zbud: mask has bits beyond the lists")
            if listed != len(pages):
                raise InvariantError(f"zbud: {listed} pages on lists, {len(pages)} in the pool")
            seen: dict[tuple[int, int], int] = {}
            total = chunk_sum = 0
            for handle, (off, size, pfn, bud) in self._objs.items():
                page = pages.get(pfn)
                if page is None:
                    raise InvariantError(f"zbud: handle {handle} points at a freed page {pfn}")
                chunks = page[bud]
                if chunks == 0 or size_to_chunks(size) != chunks:
                    raise InvariantError(
                        f"zbud: handle {handle} of {size} B in a {chunks}-chunk buddy")
                base = pfn << PAGE_SHIFT
                want = (base + ZHDR_SIZE_ALIGNED if bud == FIRST
                        else base + PAGE_SIZE - (chunks << CHUNK_SHIFT))
                if off != want:
                    raise InvariantError(f"zbud: handle {handle} at {off}, expected {want}")
                if (pfn, bud) in seen:
                    raise InvariantError(
                        f"zbud: handles {seen[(pfn, bud)]} and {handle} share a buddy")
                seen[(pfn, bud)] = handle
                total += size
                chunk_sum += chunks
            for pfn, (first, last) in pages.items():
                if first == 0 and last == 0:
                    raise InvariantError(f"zbud: empty page {pfn} still held")
                if first + last > NCHUNKS:
                    raise InvariantError(
                        f"zbud: page {pfn} buddies overlap ({first}+{last} > {NCHUNKS} chunks)")
                for bud, chunks in ((FIRST, first), (LAST, last)):
                    if bool(chunks) != ((pfn, bud) in seen):
                        raise InvariantError(
                            f"zbud: page {pfn} {BUDDY_NAMES[bud]} buddy has {chunks} chunks "
                            f"but {'no' if chunks else 'a'} live handle")
            if total != self._bytes or chunk_sum != self._chunks:
                raise InvariantError(
                    f"zbud: accounting says {self._bytes} B / {self._chunks} chunks, "
                    f"objects hold {total} B / {chunk_sum} chunks")
            if any(h >= self._next_handle or h <= 0 for h in self._objs):
                raise InvariantError("zbud: a live handle outside the issued range")
