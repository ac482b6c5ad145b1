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
# State (docs/state-format.md, section 5.3; one state region of kind "z3fold"): every live
# object is a record of the shared handle table (backends/_objtable.py: page, buddy, foreign
# bit, size, generation, CRC-32) -- the kernel's buddy slots.  The page header lives where the
# kernel keeps struct z3fold_header, in the page's first chunk(s), as u32 words: list links
# (pfn + 1), the three chunk counts, start_middle, the record of each buddy, the foreign count,
# the list the page is on, the queued flag and a magic word.  A byte per arena page (``kinds``)
# tells headed, headless and foreign pages apart; the unbuddied list heads are the ``lists``
# array, the NEEDS_COMPACTING pages one more list from the ``queued_head`` scalar; the mask
# and the counters are scalars.
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
from collections.abc import Mapping
from dataclasses import dataclass
from itertools import pairwise
from typing import Any, cast

from backends._layout import CHECKSUM_CRC32, adopt_regions
from backends._objtable import (
    BUD_MASK,
    BUD_SHIFT,
    FOREIGN_BIT,
    H_INFO,
    H_WORDS,
    HANDLE_SCALARS,
    REC_MASK,
    SIZE_MASK,
    ObjectTablePool,
)
from swapd.arena import DEFAULT_MAX_PAGES, PAGE_SHIFT, PAGE_SIZE
from swapd.backend import PoolStats
from swapd.errors import ConfigError, InvariantError, PoolExhaustedError
from swapd.state import ArraySpec, StateFormatError, StateRegion

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


# The page header, u32 words at the start of a headed page (struct z3fold_header).
(ZH_PREV, ZH_NEXT, ZH_FIRST, ZH_MIDDLE, ZH_LAST, ZH_START_MIDDLE, ZH_H_FIRST, ZH_H_MIDDLE,
 ZH_H_LAST, ZH_FOREIGN, ZH_LST, ZH_QUEUED, ZH_MAGIC) = range(13)
Z3FOLD_MAGIC = 0x7A33666C  # "z3fl"
NO_LIST = 0xFFFFFFFF
KIND_NONE, KIND_HEADED, KIND_HEADLESS = 0, 1, 2  # the kinds[] byte of an arena page
STATE_KIND = "z3fold"
STATE_VERSION = 1
SCALARS = (*HANDLE_SCALARS, "mask", "pages", "headless", "queued", "queued_head", "unbuddied",
           "objects", "bytes", "foreign", "in_page", "moves", "compacted", "zhdr_chunks",
           "compact_on_free", "max_pages")
_COUNTERS = ("mask", "pages", "headless", "queued", "queued_head", "unbuddied", "objects",
             "bytes", "foreign", "in_page", "moves", "compacted")


class Z3foldPool(ObjectTablePool):
    """A z3fold pool: first/middle/last buddies, headless pages, in-page compaction.

    Options: ``compact_on_free`` (default True: run the kernel's per-free
    compaction work at once), ``header_bytes`` (sizeof(struct z3fold_header),
    default 88 -> two header chunks).  Thread-safe: every method takes the
    pool lock.
    """

    name = "z3fold"
    description = "mm/z3fold.c: up to 3 objects per page, headless pages, middle compaction"
    version = "0.2.0"

    def __init__(self, *, max_pages: int = DEFAULT_MAX_PAGES, compact_on_free: bool = True,
                 header_bytes: int = Z3FOLD_HEADER_BYTES, **options: Any) -> None:
        if not isinstance(header_bytes, int) or not 0 < header_bytes <= PAGE_SIZE - CHUNK_SIZE:
            # BUILD_BUG_ON(ZHDR_SIZE_ALIGNED > PAGE_SIZE - CHUNK_SIZE) in init_z3fold
            raise ConfigError(f"z3fold: header_bytes must be in 1..{PAGE_SIZE - CHUNK_SIZE}, "
                              f"got {header_bytes!r}")
        if not isinstance(compact_on_free, bool):
            raise ConfigError(f"z3fold: compact_on_free must be a bool, got {compact_on_free!r}")
        super().__init__(max_pages=max_pages, **options)
        zhdr_chunks = (header_bytes + CHUNK_SIZE - 1) >> CHUNK_SHIFT  # ZHDR_CHUNKS
        self.state = StateRegion.create(STATE_KIND, STATE_VERSION, [
            ArraySpec("handles", "I", 3 * max_pages + 1, H_WORDS * 4),
            ArraySpec("lists", "I", TOTAL_CHUNKS - zhdr_chunks),
            ArraySpec("kinds", "B", max_pages),
        ], SCALARS)
        st = self.state
        st.set_count("handles", 1)
        st.set_count("lists", TOTAL_CHUNKS - zhdr_chunks)
        st.set("checksum", CHECKSUM_CRC32)
        st.set("max_pages", max_pages)
        st.set("zhdr_chunks", zhdr_chunks)
        st.set("compact_on_free", int(compact_on_free))
        self._setup()

    def _setup(self) -> None:
        st = self.state
        self.compact_on_free = bool(st.get("compact_on_free"))
        self.zhdr_chunks = st.get("zhdr_chunks")
        self.zhdr_size = self.zhdr_chunks << CHUNK_SHIFT  # ZHDR_SIZE_ALIGNED
        self.nchunks = TOTAL_CHUNKS - self.zhdr_chunks  # NCHUNKS
        #: Largest object stored beside a header; anything larger is headless.
        self.max_buddy_size = PAGE_SIZE - self.zhdr_size - CHUNK_SIZE
        # The arena's mmap (memoryview.obj): slicing it copies out in one step, and
        # mmap.move() is memmove.
        self._mm = cast(mmap.mmap, self.arena.buf.obj)
        self._au32 = self.arena.buf.cast("I")  # page headers
        self._lock = threading.Lock()
        self._init_table()
        self._L = st.view("lists")
        self._K = st.view("kinds")
        self._s = {k: st.scalar_index(k) for k in _COUNTERS}

    @classmethod
    def adopt(cls, fds: Mapping[str, int], *, writable: bool = True) -> Z3foldPool:
        """A pool over the regions ``fds`` (``{"arena", "z3fold"}``), taken over.  Headers are
        validated (StateFormatError naming the field).  O(1); ``_check()`` verifies the rest."""
        self = cls.__new__(cls)
        self.arena, self.state = adopt_regions("z3fold", STATE_KIND, STATE_VERSION, fds,
                                               writable=writable)
        try:
            st = self.state
            if st.get("checksum") != CHECKSUM_CRC32:
                raise StateFormatError(f"z3fold: checksum algorithm {st.get('checksum')}")
            zc = st.get("zhdr_chunks")
            if not 1 <= zc < TOTAL_CHUNKS or st.capacity("lists") != TOTAL_CHUNKS - zc:
                raise StateFormatError(f"z3fold: zhdr_chunks {zc} with "
                                       f"{st.capacity('lists')} lists")
            self._setup()
        except BaseException:
            self.close()
            raise
        return self

    def _get(self, key: str) -> int:
        return int(self._S[self._s[key]])

    def _add(self, key: str, delta: int) -> None:
        self._S[self._s[key]] += delta

    # -- zpool_driver surface ----------------------------------------------------------

    @property
    def max_size(self) -> int:
        """Largest object: PAGE_SIZE (objects above max_buddy_size are headless)."""
        return PAGE_SIZE

    def _offset(self, pfn: int, bud: int) -> int:
        """Arena offset of buddy ``bud`` of page ``pfn``.  O(1)."""
        base = pfn << PAGE_SHIFT
        if bud == FIRST:
            return base + self.zhdr_size
        if bud == LAST:
            return base + PAGE_SIZE - (self._au32[(pfn << 10) + ZH_LAST] << CHUNK_SHIFT)
        if bud == MIDDLE:
            return base + (self._au32[(pfn << 10) + ZH_START_MIDDLE] << CHUNK_SHIFT)
        return base

    def _set_kind_locked(self, pfn: int, kind: int) -> None:
        """kinds[pfn] = kind, growing the array to cover ``pfn``.  O(1) amortized."""
        if pfn >= self.state.count("kinds"):
            self.state.set_count("kinds", pfn + 1)
        self._K[pfn] = kind

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
            if not self._has_room_for_rec():
                raise PoolExhaustedError(f"z3fold: all {self._hcap - 1} handles are in use")
            if size > self.max_buddy_size:
                pfn = self.arena.alloc_page()
                self._set_kind_locked(pfn, KIND_HEADLESS)
                self._add("headless", 1)
                handle = self._new_rec_locked(pfn, HEADLESS, size)
            else:
                chunks = (size + CHUNK_SIZE - 1) >> CHUNK_SHIFT
                pfn = self._find_locked(chunks)
                if pfn >= 0:
                    bud = self._free_buddy(pfn, chunks)
                else:
                    pfn = self.arena.alloc_page()
                    h = pfn << 10
                    A = self._au32
                    for w in range(ZH_MAGIC):
                        A[h + w] = 0
                    A[h + ZH_LST] = NO_LIST
                    A[h + ZH_MAGIC] = Z3FOLD_MAGIC
                    self._set_kind_locked(pfn, KIND_HEADED)
                    self._add("pages", 1)
                    bud = FIRST
                handle = self._new_rec_locked(pfn, bud, size)
                self._place(pfn, bud, chunks, handle & REC_MASK)
                self._add_to_unbuddied_locked(pfn)
            self._add("objects", 1)
            self._add("bytes", size)
        return handle

    def free(self, handle: int) -> None:
        """Free the object as z3fold_free does, then run the page's compaction work.

        O(1) plus, with compact_on_free, one move of at most PAGE_SIZE bytes.
        """
        with self._lock:
            hi = self._rec_locked(handle, "free")
            H, A = self._H, self._au32
            hb = hi * H_WORDS
            pfn = H[hb]
            info = H[hb + H_INFO]
            bud = (info >> BUD_SHIFT) & BUD_MASK
            self._add("bytes", -(info & SIZE_MASK))
            self._add("objects", -1)
            self._free_rec_locked(hi)
            if bud == HEADLESS:
                self._K[pfn] = KIND_NONE
                self._add("headless", -1)
                self.arena.free_page(pfn)
                return
            h = pfn << 10
            A[h + ZH_FIRST + bud - FIRST] = 0
            A[h + ZH_H_FIRST + bud - FIRST] = 0
            if info & FOREIGN_BIT:
                A[h + ZH_FOREIGN] -= 1
                self._add("foreign", -1)
            if A[h + ZH_LST] != NO_LIST:
                self._list_del_locked(pfn)
            if not (A[h + ZH_FIRST] or A[h + ZH_MIDDLE] or A[h + ZH_LAST]):
                if A[h + ZH_QUEUED]:
                    self._unqueue_locked(pfn)
                self._release_page_locked(pfn)
                return
            if A[h + ZH_QUEUED]:
                return  # test_and_set_bit(NEEDS_COMPACTING) was already set
            if self.compact_on_free:
                self._do_compact_page_locked(pfn)
            else:
                self._queue_locked(pfn)

    def total_pages(self) -> int:
        """Pages the pool holds, headless ones included (z3fold_get_pool_size).  O(1)."""
        with self._lock:
            return self._get("pages") + self._get("headless")

    def compact(self) -> int:
        """Run do_compact_page on queued pages and on every page that can still gain.

        A page gains when it holds a single object and no foreign handle
        (compact_single_buddy may move it out and free the page) or a middle
        object that z3fold_compact_page would move.  Pages are visited in page
        order.  Returns the pages freed (only compact_single_buddy frees any).
        Handles stay valid.  O(arena pages) for the page order, plus the bytes moved.
        """
        with self._lock:
            freed = 0
            for pfn in sorted(self._queue_pages_locked()):
                freed += self._do_compact_page_locked(pfn)
            K, A = self._K, self._au32
            for pfn in range(self.state.count("kinds")):
                if K[pfn] != KIND_HEADED or not self._can_gain(pfn):
                    continue
                if A[(pfn << 10) + ZH_LST] != NO_LIST:
                    self._list_del_locked(pfn)
                freed += self._do_compact_page_locked(pfn)
            self._add("compacted", freed)
            return freed

    def stats(self) -> Z3foldStats:
        """A frozen snapshot of the pool's accounting.  O(1)."""
        with self._lock:
            g = self._get
            listed = g("pages") - g("queued")
            return Z3foldStats(
                total_pages=g("pages") + g("headless"),
                objects=g("objects"),
                object_bytes=g("bytes"),
                pages_compacted=g("compacted"),
                buddied_pages=listed - g("unbuddied"),
                unbuddied_pages=g("unbuddied"),
                headless_pages=g("headless"),
                queued_pages=g("queued"),
                foreign_objects=g("foreign"),
                in_page_compactions=g("in_page"),
                single_buddy_moves=g("moves"),
            )

    # -- introspection for tests and tools -------------------------------------------------

    def locate(self, handle: int) -> Placement:
        """Where a live object sits in its page.  O(1)."""
        with self._lock:
            hi = self._rec_locked(handle, "locate")
            hb = hi * H_WORDS
            pfn = self._H[hb]
            info = self._H[hb + H_INFO]
            bud = (info >> BUD_SHIFT) & BUD_MASK
            chunks = TOTAL_CHUNKS if bud == HEADLESS else \
                self._au32[(pfn << 10) + ZH_FIRST + bud - FIRST]
            off = self._offset(pfn, bud)
            return Placement(pfn, BUDDY_NAMES[bud], off - (pfn << PAGE_SHIFT),
                             info & SIZE_MASK, chunks)

    def unbuddied_index(self, pfn: int) -> int | None:
        """Index of the unbuddied list page ``pfn`` is on, None if on none.  O(1)."""
        with self._lock:
            kind = self._K[pfn] if 0 <= pfn < self.state.count("kinds") else KIND_NONE
            if kind == KIND_HEADLESS:
                return None
            if kind != KIND_HEADED:
                raise KeyError(f"z3fold: page {pfn} is not in the pool")
            lst = self._au32[(pfn << 10) + ZH_LST]
            return None if lst == NO_LIST else int(lst)

    def close(self) -> None:
        """Release the views, the state region and the arena."""
        v = getattr(self, "_au32", None)
        if v is not None:
            v.release()
        super().close()

    # -- lists (index-linked through the page headers), all under _lock ---------------------

    def _link_locked(self, pfn: int, head: int) -> int:
        """Put ``pfn`` before the page ``head`` (pfn + 1, 0 = none); return pfn + 1."""
        A = self._au32
        h = pfn << 10
        A[h + ZH_PREV] = 0
        A[h + ZH_NEXT] = head
        if head:
            A[((head - 1) << 10) + ZH_PREV] = pfn + 1
        return pfn + 1

    def _unlink_locked(self, pfn: int) -> tuple[int, int]:
        """Take ``pfn`` out of its list; return its (prev, next) as pfn + 1."""
        A = self._au32
        h = pfn << 10
        p, n = A[h + ZH_PREV], A[h + ZH_NEXT]
        if p:
            A[((p - 1) << 10) + ZH_NEXT] = n
        if n:
            A[((n - 1) << 10) + ZH_PREV] = p
        A[h + ZH_PREV] = A[h + ZH_NEXT] = 0
        return p, n

    def _list_del_locked(self, pfn: int) -> None:
        """list_del_init(&zhdr->buddy) for a page on an unbuddied list.  O(1)."""
        assert self._lock.locked()
        A = self._au32
        i = A[(pfn << 10) + ZH_LST]
        p, n = self._unlink_locked(pfn)
        if not p:
            self._L[i] = n
            if not n:
                self._S[self._s["mask"]] &= ~(1 << i)
        A[(pfn << 10) + ZH_LST] = NO_LIST
        self._add("unbuddied", -1)

    def _queue_locked(self, pfn: int) -> None:
        """Set NEEDS_COMPACTING: the page waits (on no unbuddied list) for compact()."""
        S, qi = self._S, self._s["queued_head"]
        S[qi] = self._link_locked(pfn, S[qi])
        self._au32[(pfn << 10) + ZH_QUEUED] = 1
        self._add("queued", 1)

    def _unqueue_locked(self, pfn: int) -> None:
        """Clear NEEDS_COMPACTING and take the page off the queue.  O(1)."""
        p, n = self._unlink_locked(pfn)
        if not p:
            self._S[self._s["queued_head"]] = n
        self._au32[(pfn << 10) + ZH_QUEUED] = 0
        self._add("queued", -1)

    def _queue_pages_locked(self) -> list[int]:
        """The queued pages.  O(queued)."""
        out = []
        A = self._au32
        p = self._S[self._s["queued_head"]]
        while p:
            out.append(p - 1)
            if len(out) > self.arena.max_pages:
                raise InvariantError("z3fold: the queue has a cycle")
            p = A[((p - 1) << 10) + ZH_NEXT]
        return out

    def _list_pages_locked(self, i: int) -> list[int]:
        """The pages of unbuddied list ``i``, head first.  O(list)."""
        out = []
        A = self._au32
        p = self._L[i]
        while p:
            out.append(p - 1)
            if len(out) > self.arena.max_pages:
                raise InvariantError(f"z3fold: list {i} has a cycle")
            p = A[((p - 1) << 10) + ZH_NEXT]
        return out

    def _release_page_locked(self, pfn: int) -> None:
        """An empty headed page goes back to the arena.  O(1)."""
        self._au32[(pfn << 10) + ZH_MAGIC] = 0
        self._K[pfn] = KIND_NONE
        self._add("pages", -1)
        self.arena.free_page(pfn)

    # -- the kernel's helpers, all called with _lock held ----------------------------------

    def _num_free_chunks(self, pfn: int) -> int:
        """num_free_chunks(): the largest free run usable by a free buddy slot.  O(1)."""
        A = self._au32
        h = pfn << 10
        first, middle, last = A[h + ZH_FIRST], A[h + ZH_MIDDLE], A[h + ZH_LAST]
        if middle:
            sm = A[h + ZH_START_MIDDLE]
            before = 0 if first else sm - self.zhdr_chunks
            after = 0 if last else TOTAL_CHUNKS - (sm + middle)
            return int(max(before, after))
        return int(self.nchunks - first - last)

    def _free_buddy(self, pfn: int, chunks: int) -> int:
        """get_free_buddy(): the slot a ``chunks``-chunk object takes in ``pfn``.  O(1)."""
        A = self._au32
        h = pfn << 10
        if A[h + ZH_MIDDLE]:
            if not A[h + ZH_FIRST] and chunks <= A[h + ZH_START_MIDDLE] - self.zhdr_chunks:
                return FIRST
            if not A[h + ZH_LAST]:
                return LAST
            return HEADLESS  # no slot: the kernel WARNs; the list invariant rules it out
        if not A[h + ZH_FIRST]:
            return FIRST
        if not A[h + ZH_LAST]:
            return LAST
        return MIDDLE

    def _place(self, pfn: int, bud: int, chunks: int, hi: int) -> int:
        """Give slot ``bud`` of ``pfn`` to record ``hi``; return the arena offset.  O(1)."""
        A = self._au32
        h = pfn << 10
        if bud == FIRST:
            A[h + ZH_FIRST] = chunks
            A[h + ZH_H_FIRST] = hi
        elif bud == LAST:
            A[h + ZH_LAST] = chunks
            A[h + ZH_H_LAST] = hi
        elif bud == MIDDLE:
            A[h + ZH_MIDDLE] = chunks
            A[h + ZH_START_MIDDLE] = A[h + ZH_FIRST] + self.zhdr_chunks
            A[h + ZH_H_MIDDLE] = hi
        else:
            raise InvariantError(f"z3fold: page {pfn} on an unbuddied list has no free buddy")
        return self._offset(pfn, bud)

    def _find_locked(self, chunks: int) -> int:
        """__z3fold_alloc's search: pop the head of the first list >= chunks, or -1.  O(1)."""
        assert self._lock.locked()
        m = self._S[self._s["mask"]] >> chunks
        if not m:
            return -1
        i = (m & -m).bit_length() - 1 + chunks
        pfn = int(self._L[i] - 1)
        self._list_del_locked(pfn)
        return pfn

    def _add_to_unbuddied_locked(self, pfn: int) -> None:
        """add_to_unbuddied(): list the page under its free chunks if a buddy is free."""
        assert self._lock.locked()
        A = self._au32
        h = pfn << 10
        if A[h + ZH_FIRST] and A[h + ZH_MIDDLE] and A[h + ZH_LAST]:
            return
        i = self._num_free_chunks(pfn)
        self._L[i] = self._link_locked(pfn, self._L[i])
        self._S[self._s["mask"]] |= 1 << i
        A[h + ZH_LST] = i
        self._add("unbuddied", 1)

    def _can_gain(self, pfn: int) -> bool:
        """Would do_compact_page change anything for this page?  O(1)."""
        A = self._au32
        h = pfn << 10
        first, middle, last = A[h + ZH_FIRST], A[h + ZH_MIDDLE], A[h + ZH_LAST]
        n = (first > 0) + (middle > 0) + (last > 0)
        if n == 1 and not A[h + ZH_FOREIGN]:
            return True
        if not middle or (first and last):
            return False
        if not first and not last:
            return True
        sm = A[h + ZH_START_MIDDLE]
        if first:
            return bool(sm - (first + self.zhdr_chunks) >= BIG_CHUNK_GAP)
        return bool(TOTAL_CHUNKS - (last + sm + middle) >= BIG_CHUNK_GAP)

    def _do_compact_page_locked(self, pfn: int) -> int:
        """do_compact_page() for a non-empty page off the lists; returns pages freed (0/1)."""
        assert self._lock.locked()
        A = self._au32
        h = pfn << 10
        if A[h + ZH_QUEUED]:
            self._unqueue_locked(pfn)
        n = (A[h + ZH_FIRST] > 0) + (A[h + ZH_MIDDLE] > 0) + (A[h + ZH_LAST] > 0)
        if n == 1 and not A[h + ZH_FOREIGN] and self._compact_single_buddy_locked(pfn):
            self._release_page_locked(pfn)
            return 1
        self._compact_page_locked(pfn)
        self._add_to_unbuddied_locked(pfn)
        return 0

    def _compact_single_buddy_locked(self, pfn: int) -> bool:
        """compact_single_buddy(): move the page's only object into another page.

        The page must be off the lists (so the search cannot find it).  The
        moved object becomes a foreign handle of its new page.  O(size).
        """
        assert self._lock.locked()
        A, H = self._au32, self._H
        h = pfn << 10
        if A[h + ZH_FIRST]:
            chunks, hi, bud = A[h + ZH_FIRST], A[h + ZH_H_FIRST], FIRST
        elif A[h + ZH_MIDDLE]:
            chunks, hi, bud = A[h + ZH_MIDDLE], A[h + ZH_H_MIDDLE], MIDDLE
        else:
            chunks, hi, bud = A[h + ZH_LAST], A[h + ZH_H_LAST], LAST
        npfn = self._find_locked(chunks)
        if npfn < 0:
            return False
        nbud = self._free_buddy(npfn, chunks)
        hb = hi * H_WORDS
        info = H[hb + H_INFO]
        size = info & SIZE_MASK
        off = self._offset(pfn, bud)
        noff = self._place(npfn, nbud, chunks, hi)
        self._mm.move(noff, off, size)
        A[(npfn << 10) + ZH_FOREIGN] += 1
        self._add("foreign", 1)
        H[hb] = npfn
        H[hb + H_INFO] = (info & ~(BUD_MASK << BUD_SHIFT)) | (nbud << BUD_SHIFT) | FOREIGN_BIT
        self._add_to_unbuddied_locked(npfn)
        for w in (ZH_FIRST, ZH_MIDDLE, ZH_LAST, ZH_H_FIRST, ZH_H_MIDDLE, ZH_H_LAST):
            A[h + w] = 0
        self._add("moves", 1)
        return True

    def _compact_page_locked(self, pfn: int) -> None:
        """z3fold_compact_page(): move the middle object within its page if it pays."""
        assert self._lock.locked()
        A, H = self._au32, self._H
        h = pfn << 10
        first, middle, last = A[h + ZH_FIRST], A[h + ZH_MIDDLE], A[h + ZH_LAST]
        if not middle:
            return
        zc = self.zhdr_chunks
        sm = A[h + ZH_START_MIDDLE]
        to_first = not first and not last
        if to_first:
            dst = zc  # the lone middle object becomes FIRST (first_num++ in the kernel)
        elif first and not last and sm - (first + zc) >= BIG_CHUNK_GAP:
            dst = first + zc
        elif last and not first and TOTAL_CHUNKS - (last + sm + middle) >= BIG_CHUNK_GAP:
            dst = TOTAL_CHUNKS - last - middle
        else:
            return
        hi = A[h + ZH_H_MIDDLE]
        hb = hi * H_WORDS
        info = H[hb + H_INFO]
        size = info & SIZE_MASK
        off = (pfn << PAGE_SHIFT) + (sm << CHUNK_SHIFT)
        noff = (pfn << PAGE_SHIFT) + (dst << CHUNK_SHIFT)
        if noff != off:
            self._mm.move(noff, off, size)  # mchunk_memmove: the ranges may overlap
        if to_first:
            A[h + ZH_FIRST], A[h + ZH_H_FIRST] = middle, hi
            A[h + ZH_MIDDLE] = A[h + ZH_H_MIDDLE] = A[h + ZH_START_MIDDLE] = 0
            H[hb + H_INFO] = (info & ~(BUD_MASK << BUD_SHIFT)) | (FIRST << BUD_SHIFT)
        else:
            A[h + ZH_START_MIDDLE] = dst
        self._add("in_page", 1)

    # -- invariants ---------------------------------------------------------------------

    def _check(self) -> None:
        """Verify every invariant of the layout (raises InvariantError).  O(objects + pages)."""
        with self._lock:
            self._check_locked()

    def _check_locked(self) -> None:
        """_check with the pool lock held.  O(objects + pages)."""
        assert self._lock.locked()
        self.arena._check()
        self.state._check()
        A, K, zc, g = self._au32, self._K, self.zhdr_chunks, self._get
        headed = [p for p in range(self.state.count("kinds")) if K[p] == KIND_HEADED]
        headless = [p for p in range(self.state.count("kinds")) if K[p] == KIND_HEADLESS]
        if len(headed) != g("pages") or len(headless) != g("headless"):
            raise InvariantError(f"z3fold: {len(headed)} headed / {len(headless)} headless "
                                 f"pages, counted {g('pages')} / {g('headless')}")
        held = len(headed) + len(headless)
        if held != self.arena.pages_in_use:
            raise InvariantError(f"z3fold: {held} pages held, arena has "
                                 f"{self.arena.pages_in_use} in use")
        headed_set = set(headed)
        mask = listed = 0
        for i in range(self.nchunks):
            prev = 0
            for pfn in self._list_pages_locked(i):
                mask |= 1 << i
                listed += 1
                if pfn not in headed_set or A[(pfn << 10) + ZH_LST] != i or \
                        A[(pfn << 10) + ZH_PREV] != prev:
                    raise InvariantError(f"z3fold: list {i} holds page {pfn} wrongly")
                prev = pfn + 1
        if mask != g("mask") or listed != g("unbuddied"):
            raise InvariantError(f"z3fold: mask {g('mask'):#x} / {g('unbuddied')} listed, lists "
                                 f"say {mask:#x} / {listed}")
        queued = self._queue_pages_locked()
        if len(queued) != g("queued") or any(
                p not in headed_set or not A[(p << 10) + ZH_QUEUED] for p in queued):
            raise InvariantError(f"z3fold: queue of {len(queued)} pages, counted {g('queued')}")
        live = self._live_records_locked()
        total = foreign_total = slots = 0
        for pfn in headed:
            h = pfn << 10
            if A[h + ZH_MAGIC] != Z3FOLD_MAGIC:
                raise InvariantError(f"z3fold: page {pfn} has no z3fold header")
            regions = []
            foreign = 0
            for bud, chunks, hi, start in (
                    (FIRST, A[h + ZH_FIRST], A[h + ZH_H_FIRST], zc),
                    (MIDDLE, A[h + ZH_MIDDLE], A[h + ZH_H_MIDDLE], A[h + ZH_START_MIDDLE]),
                    (LAST, A[h + ZH_LAST], A[h + ZH_H_LAST], TOTAL_CHUNKS - A[h + ZH_LAST])):
                if bool(chunks) != bool(hi):
                    raise InvariantError(f"z3fold: page {pfn} {BUDDY_NAMES[bud]}: "
                                         f"{chunks} chunks, record {hi}")
                if not chunks:
                    continue
                rec = live.get(hi)
                if rec is None:
                    raise InvariantError(f"z3fold: page {pfn} slot holds dead record {hi}")
                rpfn, rbud, size, rforeign = rec
                if (rpfn, rbud) != (pfn, bud):
                    raise InvariantError(f"z3fold: record {hi} says page {rpfn} "
                                         f"{BUDDY_NAMES[rbud]}, slot is {pfn} {BUDDY_NAMES[bud]}")
                if size_to_chunks(size) != chunks or size > self.max_buddy_size:
                    raise InvariantError(f"z3fold: record {hi} of {size} B in a "
                                         f"{chunks}-chunk buddy")
                if start < zc:
                    raise InvariantError(f"z3fold: record {hi} overlaps the header")
                regions.append((start, start + chunks, hi))
                foreign += rforeign
                total += size
                slots += 1
            if not regions:
                raise InvariantError(f"z3fold: empty page {pfn} still held")
            regions.sort()
            for (_s0, e0, h0), (s1, _e1, h1) in pairwise(regions):
                if s1 < e0:
                    raise InvariantError(f"z3fold: records {h0} and {h1} overlap in page {pfn}")
            if regions[-1][1] > TOTAL_CHUNKS:
                raise InvariantError(f"z3fold: page {pfn} object runs past the page end")
            if foreign != A[h + ZH_FOREIGN]:
                raise InvariantError(f"z3fold: page {pfn} counts {A[h + ZH_FOREIGN]} foreign "
                                     f"handles, holds {foreign}")
            foreign_total += foreign
            full = A[h + ZH_FIRST] and A[h + ZH_MIDDLE] and A[h + ZH_LAST]
            lst = A[h + ZH_LST]
            if A[h + ZH_QUEUED]:
                if lst != NO_LIST:
                    raise InvariantError(f"z3fold: queued page {pfn} is on list {lst}")
            elif full:
                if lst != NO_LIST:
                    raise InvariantError(f"z3fold: full page {pfn} on list {lst}")
            elif lst != self._num_free_chunks(pfn):
                raise InvariantError(f"z3fold: page {pfn} on list {lst}, has "
                                     f"{self._num_free_chunks(pfn)} free chunks")
        nheadless = 0
        headless_set = set(headless)
        for hi, (pfn, bud, size, _f) in live.items():
            if bud != HEADLESS:
                continue
            nheadless += 1
            if pfn not in headless_set or not self.max_buddy_size < size <= PAGE_SIZE:
                raise InvariantError(f"z3fold: headless record {hi}: page {pfn}, {size} B")
            headless_set.discard(pfn)
            total += size
        if headless_set:
            raise InvariantError(f"z3fold: headless pages {sorted(headless_set)} without record")
        if slots + nheadless != len(live) or len(live) != g("objects"):
            raise InvariantError(f"z3fold: {len(live)} records, {slots} buddies + "
                                 f"{nheadless} headless pages, counted {g('objects')}")
        if total != g("bytes") or foreign_total != g("foreign"):
            raise InvariantError(f"z3fold: accounting {g('bytes')} B / {g('foreign')} foreign, "
                                 f"objects hold {total} B / {foreign_total}")
