# z3fold: up to three compressed objects per page, modelled on mm/z3fold.c.
#
# Design (mm/z3fold.c, Vitaly Wool 2016, based on zbud, read at torvalds/linux
# 014284a0815f, the 6.4-era file; removed from mainline in 6.15): pages are cut
# into 64 chunks of 64 bytes (NCHUNKS_ORDER 6).  The z3fold header sits at the
# start of the page and takes ZHDR_SIZE_ALIGNED =
# round_up(sizeof(struct z3fold_header), CHUNK_SIZE) bytes.  On x86-64 without
# lock debugging the header of the 5.x/6.x kernels is 88 bytes (list_head 16,
# page_lock 4, kref 4, work_struct 32, slots 8, pool 8, cpu 2, four chunk
# counts 8, bit-fields 2, padded to 8), so it takes TWO chunks and leaves
# NCHUNKS = 62 chunks of data and 62 unbuddied lists.  (The source comment's
# "63" dates from the first, smaller header; the 2016 per-page-lock series
# outgrew one chunk, which is why ZHDR_SIZE_ALIGNED is a round_up.)  The header
# size is an option (``header_bytes``) for other configurations.
#
# A page holds a FIRST object right after the header, a LAST object against the
# end of the page, and a MIDDLE object placed right after FIRST when both
# others are taken (start_middle = ZHDR_CHUNKS + first_chunks).  Objects larger
# than PAGE_SIZE - ZHDR_SIZE_ALIGNED - CHUNK_SIZE get a whole "headless" page
# with no header (largest object: PAGE_SIZE).  Pages with a free buddy sit on
# unbuddied[n], n = num_free_chunks() (with a middle object: the larger of the
# gaps before and after it, each usable only if its buddy slot is free);
# __z3fold_alloc takes the head of the first non-empty list from index
# size_to_chunks(size) upward, get_free_buddy() picks the slot.  Pages with all
# three buddies are on no list.
#
# Compaction, as the kernel does it: z3fold_free() marks the page
# NEEDS_COMPACTING and queues compact_page_work (run at once when the page was on
# no list).  do_compact_page() then (1) if the page holds a single object and no
# foreign handle, tries compact_single_buddy(): move that object into another
# unbuddied page found by __z3fold_alloc and free this page; else (2)
# z3fold_compact_page(): a lone middle object becomes FIRST next to the header;
# a middle object with only FIRST (or only LAST) beside it slides next to it if
# that gains at least BIG_CHUNK_GAP (3) chunks; and puts the page back on its
# unbuddied list.  Handles stay valid because a z3fold handle points at a
# buddy slot (struct z3fold_buddy_slots) that records page and buddy; our
# handle table is that indirection.  An object moved to another page keeps its
# slot in the old page's slot block, so it is a "foreign handle" of its new
# page, and a page with foreign handles is never emptied by
# compact_single_buddy (kernel rule).  In-page compaction frees no page; only
# compact_single_buddy does.  The kernel has no zpool .compact for z3fold:
# compaction happens only through this per-free work (and page migration,
# which queues the same work).  Here, with ``compact_on_free=True`` (default)
# the work runs synchronously at the end of free(), as if the workqueue ran
# before the next allocation; with ``compact_on_free=False`` pages stay queued
# (off the unbuddied lists, skipped by allocation, as NEEDS_COMPACTING pages
# are) until compact() runs the work.  compact() also re-runs do_compact_page on
# every page that could still gain (a single movable object, or a middle object
# that can slide) -- what migration's re-queue would do -- and returns the
# pages freed.
#
# Deviations: one set of unbuddied lists -- the kernel keeps them per CPU,
# searches its own CPU's lists in full and other CPUs' only for an exact fit,
# so with several CPUs it finds fewer partly filled pages; this model is the
# one-CPU case.  No z3fold LRU/reclaim (gone with zswap's 6.5 LRU rework).  No
# MIDDLE_CHUNK_MAPPED/mapped_count: read/write copy under the pool lock, so no
# object is mapped while compaction runs.  No stale-page list (the kernel's
# pages_nr already drops when a page is released to it).  The last three move
# no object.
#
# Lock order: Z3foldPool._lock -> PageArena._lock (the arena lock is a leaf).
# One pool lock stands in for the kernel's pool lock + per-page locks.
# Invariants (checked by _check): live regions of a page never overlap and never
#   touch the header chunks; each buddy's chunk count matches its object's
#   size; a page with a free buddy and not queued for compaction is on
#   _lists[num_free_chunks()], a full or queued page on none; headless pages
#   hold one object larger than the non-headless maximum at offset 0;
#   foreign counts match; pages held == arena.pages_in_use.

"""The z3fold allocator backend: up to three objects per page (``mm/z3fold.c``)."""

from __future__ import annotations

import mmap
import threading
from dataclasses import dataclass
from itertools import pairwise
from typing import Any, cast

from backends._objtable import ObjectTablePool
from swapd.arena import DEFAULT_MAX_PAGES, PAGE_SHIFT, PAGE_SIZE
from swapd.backend import PoolStats
from swapd.errors import ConfigError, InvariantError

NCHUNKS_ORDER = 6
CHUNK_SHIFT = PAGE_SHIFT - NCHUNKS_ORDER
CHUNK_SIZE = 1 << CHUNK_SHIFT  # 64 bytes
TOTAL_CHUNKS = PAGE_SIZE >> CHUNK_SHIFT  # 64
#: sizeof(struct z3fold_header) on x86-64, Linux 5.x-6.14, no lock debugging.
Z3FOLD_HEADER_BYTES = 88
BIG_CHUNK_GAP = 3  # z3fold_compact_page moves a middle object only for this gain

HEADLESS = 0
FIRST = 1
MIDDLE = 2
LAST = 3
BUDDY_NAMES = ("headless", "first", "middle", "last")


def size_to_chunks(size: int) -> int:
    """Chunks needed for ``size`` bytes (rounded up), as z3fold's size_to_chunks.  O(1)."""
    return (size + CHUNK_SIZE - 1) >> CHUNK_SHIFT


@dataclass(frozen=True)
class Z3foldStats(PoolStats):
    """z3fold accounting with page counts per state and compaction counters."""

    buddied_pages: int  # all three buddies used (on no list)
    unbuddied_pages: int  # on an unbuddied list
    headless_pages: int
    queued_pages: int  # NEEDS_COMPACTING, waiting for compact() (compact_on_free=False)
    foreign_objects: int  # objects moved into another page by compact_single_buddy
    in_page_compactions: int  # middle objects moved by z3fold_compact_page
    single_buddy_moves: int  # objects moved by compact_single_buddy (each frees a page)


@dataclass(frozen=True)
class Placement:
    """Where an object lives: arena page, buddy, byte offset in the page, size."""

    pfn: int
    buddy: str  # "headless", "first", "middle" or "last"
    offset: int  # bytes from the start of the page
    size: int
    chunks: int


class _Page:
    """One z3fold page with a header (the fields of struct z3fold_header we need).

    All fields under Z3foldPool._lock.
    """

    __slots__ = ("first", "foreign", "h_first", "h_last", "h_middle", "last", "lst",
                 "middle", "queued", "start_middle")

    def __init__(self) -> None:
        self.first = 0  # first_chunks; 0 => FIRST free
        self.middle = 0  # middle_chunks; 0 => MIDDLE free
        self.last = 0  # last_chunks; 0 => LAST free
        self.start_middle = 0  # chunk index of the middle object (stale once it is freed)
        self.h_first = 0  # handle of each buddy, 0 when free (the buddy slots)
        self.h_middle = 0
        self.h_last = 0
        self.foreign = 0  # foreign_handles: objects whose slot lives in another page's block
        self.lst = -1  # index of the unbuddied list the page is on, -1 for none
        self.queued = False  # NEEDS_COMPACTING: off the lists until compaction runs


class Z3foldPool(ObjectTablePool):
    """A z3fold pool: first/middle/last buddies, headless pages, in-page compaction.

    Options: ``compact_on_free`` (default True: run the kernel's per-free
    compaction work at once), ``header_bytes`` (sizeof(struct z3fold_header),
    default 88 -> two header chunks).  Thread-safe: every method takes the
    pool lock.
    """

    name = "z3fold"
    description = "mm/z3fold.c: up to 3 objects per page, headless pages, middle compaction"
    version = "0.1.0"

    def __init__(self, *, max_pages: int = DEFAULT_MAX_PAGES, compact_on_free: bool = True,
                 header_bytes: int = Z3FOLD_HEADER_BYTES, **options: Any) -> None:
        if not isinstance(header_bytes, int) or not 0 < header_bytes <= PAGE_SIZE - CHUNK_SIZE:
            # BUILD_BUG_ON(ZHDR_SIZE_ALIGNED > PAGE_SIZE - CHUNK_SIZE) in init_z3fold
            raise ConfigError(f"z3fold: header_bytes must be in 1..{PAGE_SIZE - CHUNK_SIZE}, "
                              f"got {header_bytes!r}")
        if not isinstance(compact_on_free, bool):
            raise ConfigError(f"z3fold: compact_on_free must be a bool, got {compact_on_free!r}")
        super().__init__(max_pages=max_pages, **options)
        self.compact_on_free = compact_on_free
        self.zhdr_chunks = (header_bytes + CHUNK_SIZE - 1) >> CHUNK_SHIFT  # ZHDR_CHUNKS
        self.zhdr_size = self.zhdr_chunks << CHUNK_SHIFT  # ZHDR_SIZE_ALIGNED
        self.nchunks = TOTAL_CHUNKS - self.zhdr_chunks  # NCHUNKS
        #: Largest object stored beside a header; anything larger is headless.
        self.max_buddy_size = PAGE_SIZE - self.zhdr_size - CHUNK_SIZE
        # The arena's mmap (memoryview.obj): slicing it copies out in one step, and
        # mmap.move() is memmove.
        self._mm = cast(mmap.mmap, self.arena.buf.obj)
        self._lock = threading.Lock()
        self._pages: dict[int, _Page] = {}  # under _lock; pages with a header
        self._headless: dict[int, int] = {}  # under _lock; headless page -> its handle
        # _lists[i], under _lock: pages with a free buddy and i free chunks.  Dicts as
        # ordered sets: insertion = list_add at the head, popitem() = list_first_entry.
        self._lists: list[dict[int, None]] = [{} for _ in range(self.nchunks)]
        self._mask = 0  # under _lock; bit i set iff _lists[i] is non-empty
        self._queued: dict[int, None] = {}  # under _lock; NEEDS_COMPACTING pages
        # handle -> [arena byte offset, size, page, buddy, foreign (0/1)].  Under _lock.
        self._objs: dict[int, list[int]] = {}
        self._next_handle = 1  # under _lock; handles are never reused
        self._bytes = 0  # under _lock
        self._foreign = 0  # under _lock; live foreign objects
        self._in_page = 0  # under _lock; z3fold_compact_page moves
        self._moves = 0  # under _lock; compact_single_buddy moves
        self._compacted = 0  # under _lock; pages freed by compact()

    # -- zpool_driver surface ----------------------------------------------------------

    @property
    def max_size(self) -> int:
        """Largest object: PAGE_SIZE (objects above max_buddy_size are headless)."""
        return PAGE_SIZE

    def malloc(self, size: int) -> int:
        """Allocate ``size`` bytes as z3fold_alloc does and return a handle.

        Headless page above max_buddy_size; else first fit over the unbuddied
        lists from size_to_chunks(size) upward (O(1) with the non-empty-list
        bitmask), else a new page.  Raises ObjectSizeError, DataTypeError or
        PoolExhaustedError.
        """
        if type(size) is not int or size <= 0 or size > PAGE_SIZE:
            self._check_size(size)  # raises for every bad size; lets int subclasses through
            size = int(size)
        with self._lock:
            handle = self._next_handle
            if size > self.max_buddy_size:
                pfn = self.arena.alloc_page()
                self._headless[pfn] = handle
                self._objs[handle] = [pfn << PAGE_SHIFT, size, pfn, HEADLESS, 0]
            else:
                chunks = (size + CHUNK_SIZE - 1) >> CHUNK_SHIFT
                pfn = self._find_locked(chunks)
                if pfn >= 0:
                    page = self._pages[pfn]
                    bud = self._free_buddy(page, chunks)
                else:
                    pfn = self.arena.alloc_page()
                    page = _Page()
                    self._pages[pfn] = page
                    bud = FIRST
                self._objs[handle] = [self._place(page, pfn, bud, chunks, handle), size, pfn,
                                      bud, 0]
                self._add_to_unbuddied_locked(page, pfn)
            self._next_handle = handle + 1
            self._bytes += size
        return handle

    def free(self, handle: int) -> None:
        """Free the object as z3fold_free does, then run the page's compaction work.

        O(1) plus, with compact_on_free, one move of at most PAGE_SIZE bytes.
        """
        with self._lock:
            rec = self._objs.pop(handle, None)
            if rec is None:
                self._raise_bad_handle(handle, freeing=True)
            _off, size, pfn, bud, foreign = rec
            self._bytes -= size
            if bud == HEADLESS:
                del self._headless[pfn]
                self.arena.free_page(pfn)
                return
            page = self._pages[pfn]
            if bud == FIRST:
                page.first = page.h_first = 0
            elif bud == MIDDLE:
                page.middle = page.h_middle = 0
            else:
                page.last = page.h_last = 0
            if foreign:
                page.foreign -= 1
                self._foreign -= 1
            if page.lst >= 0:
                self._list_del_locked(page, pfn)
            if not (page.first or page.middle or page.last):
                if page.queued:
                    del self._queued[pfn]
                del self._pages[pfn]
                self.arena.free_page(pfn)
                return
            if page.queued:
                return  # test_and_set_bit(NEEDS_COMPACTING) was already set
            if self.compact_on_free:
                self._do_compact_page_locked(page, pfn)
            else:
                page.queued = True
                self._queued[pfn] = None

    def total_pages(self) -> int:
        """Pages the pool holds, headless ones included (z3fold_get_pool_size).  O(1)."""
        with self._lock:
            return len(self._pages) + len(self._headless)

    def compact(self) -> int:
        """Run do_compact_page on queued pages and on every page that can still gain.

        A page gains when it holds a single object and no foreign handle
        (compact_single_buddy may move it out and free the page) or a middle
        object that z3fold_compact_page would move.  Pages are visited in page
        order.  Returns the pages freed (only compact_single_buddy frees any).
        Handles stay valid.  O(pages log pages) for the page order, plus the
        bytes moved.
        """
        with self._lock:
            freed = 0
            pages = self._pages
            for pfn in sorted(self._queued):
                freed += self._do_compact_page_locked(pages[pfn], pfn)
            for pfn in sorted(pages):
                cand = pages.get(pfn)
                if cand is None or not self._can_gain(cand):
                    continue
                if cand.lst >= 0:
                    self._list_del_locked(cand, pfn)
                freed += self._do_compact_page_locked(cand, pfn)
            self._compacted += freed
            return freed

    def stats(self) -> Z3foldStats:
        """A frozen snapshot of the pool's accounting.  O(NCHUNKS)."""
        with self._lock:
            listed = len(self._pages) - len(self._queued)
            buddied = listed - sum(len(lst) for lst in self._lists)
            return Z3foldStats(
                total_pages=len(self._pages) + len(self._headless),
                objects=len(self._objs),
                object_bytes=self._bytes,
                pages_compacted=self._compacted,
                buddied_pages=buddied,
                unbuddied_pages=listed - buddied,
                headless_pages=len(self._headless),
                queued_pages=len(self._queued),
                foreign_objects=self._foreign,
                in_page_compactions=self._in_page,
                single_buddy_moves=self._moves,
            )

    # -- introspection for tests and tools -------------------------------------------------

    def locate(self, handle: int) -> Placement:
        """Where a live object sits in its page.  O(1)."""
        with self._lock:
            rec = self._objs.get(handle)
            if rec is None:
                self._raise_bad_handle(handle, freeing=False)
            off, size, pfn, bud, _foreign = rec
            if bud == HEADLESS:
                chunks = TOTAL_CHUNKS
            else:
                page = self._pages[pfn]
                chunks = (page.first, page.middle, page.last)[bud - 1]
            return Placement(pfn, BUDDY_NAMES[bud], off - (pfn << PAGE_SHIFT), size, chunks)

    def unbuddied_index(self, pfn: int) -> int | None:
        """Index of the unbuddied list page ``pfn`` is on, None if on none.  O(1)."""
        with self._lock:
            if pfn in self._headless:
                return None
            page = self._pages.get(pfn)
            if page is None:
                raise KeyError(f"z3fold: page {pfn} is not in the pool")
            return page.lst if page.lst >= 0 else None

    # -- the kernel's helpers, all called with _lock held ----------------------------------

    def _num_free_chunks(self, page: _Page) -> int:
        """num_free_chunks(): the largest free run usable by a free buddy slot.  O(1)."""
        if page.middle:
            before = 0 if page.first else page.start_middle - self.zhdr_chunks
            after = 0 if page.last else TOTAL_CHUNKS - (page.start_middle + page.middle)
            return max(before, after)
        return self.nchunks - page.first - page.last

    def _free_buddy(self, page: _Page, chunks: int) -> int:
        """get_free_buddy(): the slot a ``chunks``-chunk object takes in ``page``.  O(1)."""
        if page.middle:
            if not page.first and chunks <= page.start_middle - self.zhdr_chunks:
                return FIRST
            if not page.last:
                return LAST
            return HEADLESS  # no slot: the kernel WARNs; the list invariant rules it out
        if not page.first:
            return FIRST
        if not page.last:
            return LAST
        return MIDDLE

    def _place(self, page: _Page, pfn: int, bud: int, chunks: int, handle: int) -> int:
        """Give slot ``bud`` of ``page`` to ``handle``; return the arena offset.  O(1)."""
        base = pfn << PAGE_SHIFT
        if bud == FIRST:
            page.first = chunks
            page.h_first = handle
            return base + self.zhdr_size
        if bud == LAST:
            page.last = chunks
            page.h_last = handle
            return base + PAGE_SIZE - (chunks << CHUNK_SHIFT)
        if bud == MIDDLE:
            page.middle = chunks
            page.start_middle = page.first + self.zhdr_chunks
            page.h_middle = handle
            return base + (page.start_middle << CHUNK_SHIFT)
        raise InvariantError(f"z3fold: page {pfn} on an unbuddied list has no free buddy")

    def _find_locked(self, chunks: int) -> int:
        """__z3fold_alloc's search: pop the head of the first list >= chunks, or -1.  O(1)."""
        assert self._lock.locked()
        m = self._mask >> chunks
        if not m:
            return -1
        i = (m & -m).bit_length() - 1 + chunks
        lst = self._lists[i]
        pfn = lst.popitem()[0]
        if not lst:
            self._mask &= ~(1 << i)
        self._pages[pfn].lst = -1
        return pfn

    def _list_del_locked(self, page: _Page, pfn: int) -> None:
        """list_del_init(&zhdr->buddy) for a page on an unbuddied list.  O(1)."""
        assert self._lock.locked()
        i = page.lst
        lst = self._lists[i]
        del lst[pfn]
        if not lst:
            self._mask &= ~(1 << i)
        page.lst = -1

    def _add_to_unbuddied_locked(self, page: _Page, pfn: int) -> None:
        """add_to_unbuddied(): list the page under its free chunks if a buddy is free."""
        assert self._lock.locked()
        if page.first and page.middle and page.last:
            return
        i = self._num_free_chunks(page)
        self._lists[i][pfn] = None
        self._mask |= 1 << i
        page.lst = i

    def _can_gain(self, page: _Page) -> bool:
        """Would do_compact_page change anything for this page?  O(1)."""
        n = (page.first > 0) + (page.middle > 0) + (page.last > 0)
        if n == 1 and not page.foreign:
            return True
        if not page.middle or (page.first and page.last):
            return False
        if not page.first and not page.last:
            return True
        if page.first:
            return page.start_middle - (page.first + self.zhdr_chunks) >= BIG_CHUNK_GAP
        return TOTAL_CHUNKS - (page.last + page.start_middle + page.middle) >= BIG_CHUNK_GAP

    def _do_compact_page_locked(self, page: _Page, pfn: int) -> int:
        """do_compact_page() for a non-empty page off the lists; returns pages freed (0/1)."""
        assert self._lock.locked()
        if page.queued:
            page.queued = False
            del self._queued[pfn]
        n = (page.first > 0) + (page.middle > 0) + (page.last > 0)
        if n == 1 and not page.foreign and self._compact_single_buddy_locked(page, pfn):
            del self._pages[pfn]
            self.arena.free_page(pfn)
            return 1
        self._compact_page_locked(page, pfn)
        self._add_to_unbuddied_locked(page, pfn)
        return 0

    def _compact_single_buddy_locked(self, page: _Page, pfn: int) -> bool:
        """compact_single_buddy(): move the page's only object into another page.

        The page must be off the lists (so the search cannot find it).  The
        moved object becomes a foreign handle of its new page.  O(size).
        """
        assert self._lock.locked()
        if page.first:
            chunks, handle = page.first, page.h_first
        elif page.middle:
            chunks, handle = page.middle, page.h_middle
        else:
            chunks, handle = page.last, page.h_last
        npfn = self._find_locked(chunks)
        if npfn < 0:
            return False
        npage = self._pages[npfn]
        nbud = self._free_buddy(npage, chunks)
        rec = self._objs[handle]
        off, size = rec[0], rec[1]
        noff = self._place(npage, npfn, nbud, chunks, handle)
        self._mm.move(noff, off, size)
        npage.foreign += 1
        self._foreign += 1
        rec[0], rec[2], rec[3], rec[4] = noff, npfn, nbud, 1
        self._add_to_unbuddied_locked(npage, npfn)
        page.first = page.middle = page.last = 0
        page.h_first = page.h_middle = page.h_last = 0
        self._moves += 1
        return True

    def _compact_page_locked(self, page: _Page, pfn: int) -> None:
        """z3fold_compact_page(): move the middle object within its page if it pays."""
        assert self._lock.locked()
        if not page.middle:
            return
        zc = self.zhdr_chunks
        to_first = not page.first and not page.last
        if to_first:
            dst = zc  # the lone middle object becomes FIRST (first_num++ in the kernel)
        elif page.first and not page.last and page.start_middle - (page.first + zc) >= \
                BIG_CHUNK_GAP:
            dst = page.first + zc
        elif page.last and not page.first and TOTAL_CHUNKS - (
                page.last + page.start_middle + page.middle) >= BIG_CHUNK_GAP:
            dst = TOTAL_CHUNKS - page.last - page.middle
        else:
            return
        rec = self._objs[page.h_middle]
        off, size = rec[0], rec[1]
        noff = (pfn << PAGE_SHIFT) + (dst << CHUNK_SHIFT)
        if noff != off:
            self._mm.move(noff, off, size)  # mchunk_memmove: the ranges may overlap
        rec[0] = noff
        if to_first:
            page.first, page.h_first = page.middle, page.h_middle
            page.middle = page.h_middle = page.start_middle = 0
            rec[3] = FIRST
        else:
            page.start_middle = dst
        self._in_page += 1

    # -- invariants ---------------------------------------------------------------------

    def _check(self) -> None:
        """Verify every invariant of the layout (raises InvariantError).  O(objects + pages)."""
        with self._lock:
            self._check_locked()

    def _check_locked(self) -> None:
        """_check with the pool lock held.  O(objects + pages)."""
        assert self._lock.locked()
        self.arena._check()
        pages, objs, zc = self._pages, self._objs, self.zhdr_chunks
        held = len(pages) + len(self._headless)
        if held != self.arena.pages_in_use:
            raise InvariantError(f"z3fold: {held} pages held, arena has "
                                 f"{self.arena.pages_in_use} in use")
        if set(pages) & set(self._headless):
            raise InvariantError("z3fold: a page is both headless and headed")
        for i, lst in enumerate(self._lists):
            if bool(lst) != bool(self._mask >> i & 1):
                raise InvariantError(f"z3fold: mask bit {i} disagrees with list {i}")
            for pfn in lst:
                page = pages.get(pfn)
                if page is None or page.lst != i:
                    raise InvariantError(f"z3fold: list {i} holds page {pfn} wrongly")
        if self._mask >> self.nchunks:
            raise InvariantError("z3fold: mask has bits beyond the lists")
        for pfn in self._queued:
            if pfn not in pages or not pages[pfn].queued:
                raise InvariantError(f"z3fold: queued page {pfn} is not marked")
        total = foreign_total = slots = 0
        for pfn, page in pages.items():
            regions = []
            foreign = 0
            for bud, chunks, handle, start in (
                    (FIRST, page.first, page.h_first, zc),
                    (MIDDLE, page.middle, page.h_middle, page.start_middle),
                    (LAST, page.last, page.h_last, TOTAL_CHUNKS - page.last)):
                if bool(chunks) != bool(handle):
                    raise InvariantError(f"z3fold: page {pfn} {BUDDY_NAMES[bud]}: "
                                         f"{chunks} chunks, handle {handle}")
                if not chunks:
                    continue
                rec = objs.get(handle)
                if rec is None:
                    raise InvariantError(f"z3fold: page {pfn} slot holds dead handle {handle}")
                off, size, rpfn, rbud, rforeign = rec
                if (rpfn, rbud) != (pfn, bud):
                    raise InvariantError(f"z3fold: handle {handle} says page {rpfn} "
                                         f"{BUDDY_NAMES[rbud]}, slot is {pfn} {BUDDY_NAMES[bud]}")
                if size_to_chunks(size) != chunks or size > self.max_buddy_size:
                    raise InvariantError(f"z3fold: handle {handle} of {size} B in a "
                                         f"{chunks}-chunk buddy")
                if off != (pfn << PAGE_SHIFT) + (start << CHUNK_SHIFT):
                    raise InvariantError(f"z3fold: handle {handle} at {off}, buddy starts at "
                                         f"chunk {start} of page {pfn}")
                if start < zc:
                    raise InvariantError(f"z3fold: handle {handle} overlaps the header")
                regions.append((start, start + chunks, handle))
                foreign += rforeign
                total += size
                slots += 1
            if not regions:
                raise InvariantError(f"z3fold: empty page {pfn} still held")
            regions.sort()
            for (_s0, e0, h0), (s1, _e1, h1) in pairwise(regions):
                if s1 < e0:
                    raise InvariantError(f"z3fold: handles {h0} and {h1} overlap in page {pfn}")
            if regions[-1][1] > TOTAL_CHUNKS:
                raise InvariantError(f"z3fold: page {pfn} object runs past the page end")
            if foreign != page.foreign:
                raise InvariantError(f"z3fold: page {pfn} counts {page.foreign} foreign "
                                     f"handles, holds {foreign}")
            foreign_total += foreign
            full = page.first and page.middle and page.last
            if page.queued:
                if page.lst >= 0 or pfn not in self._queued:
                    raise InvariantError(f"z3fold: queued page {pfn} is on list {page.lst}")
            elif full:
                if page.lst >= 0:
                    raise InvariantError(f"z3fold: full page {pfn} on list {page.lst}")
            elif page.lst != self._num_free_chunks(page) or pfn not in self._lists[page.lst]:
                raise InvariantError(f"z3fold: page {pfn} on list {page.lst}, has "
                                     f"{self._num_free_chunks(page)} free chunks")
        for pfn, handle in self._headless.items():
            rec = objs.get(handle)
            if rec is None or rec[2:4] != [pfn, HEADLESS] or rec[0] != pfn << PAGE_SHIFT:
                raise InvariantError(f"z3fold: headless page {pfn} and handle {handle} disagree")
            if not self.max_buddy_size < rec[1] <= PAGE_SIZE:
                raise InvariantError(f"z3fold: headless handle {handle} has {rec[1]} B")
            total += rec[1]
        if slots + len(self._headless) != len(objs):
            raise InvariantError(f"z3fold: {len(objs)} handles, {slots} buddies + "
                                 f"{len(self._headless)} headless pages")
        if total != self._bytes or foreign_total != self._foreign:
            raise InvariantError(f"z3fold: accounting {self._bytes} B / {self._foreign} foreign, "
                                 f"objects hold {total} B / {foreign_total}")
        if any(h >= self._next_handle or h <= 0 for h in objs):
            raise InvariantError("z3fold: a live handle outside the issued range")
