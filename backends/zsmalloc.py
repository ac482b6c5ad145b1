# Design: a model of the kernel's zsmalloc (mm/zsmalloc.c) over a PageArena, its state kept
# in fixed-layout arrays of one state region (docs/state-format.md, "zsmalloc").
#
# Objects are sorted by size into size classes 16 bytes apart, from 32 B to 4096 B
# (ZS_MIN_ALLOC_SIZE, ZS_SIZE_CLASS_DELTA = PAGE_SIZE >> CLASS_BITS, 255 classes).  A class
# stores its objects in equal slots of "zspages": chains of 1..chain_size single pages
# taken from the arena one at a time, so a slot may straddle the boundary between two
# pages of a chain (such an object is then two slices of the arena).  The chain length
# of each class is the one with the least tail waste (calculate_zspage_chain_size, since
# 6.3, CONFIG_ZSMALLOC_CHAIN_SIZE default 8); adjacent classes with the same (pages per
# zspage, objects per zspage) are merged into the larger one (can_merge in
# zs_create_pool): 119 distinct classes remain with chain size 8.  Classes with one object
# in one page are "huge": everything above the largest non-huge class lands in the single
# 4096-byte huge class.
#
# Every zspage of a class sits in one of 12 fullness groups (ZS_INUSE_RATIO_0, _10, ...,
# _99, _100, since 6.3): 0 = empty (freed at once), 11 = full, g in 1..10 when
# (100 * inuse / objs) // 10 + 1 == g.  zs_malloc takes the most recently inserted
# zspage of the fullest non-full group (find_get_zspage).  compact() follows
# __zs_compact: per class, from the largest class down, move objects from the sparsest
# zspage (isolate_src_zspage) into the densest one (isolate_dst_zspage) until
# zs_can_compact says no whole zspage can be freed, and give emptied zspages' pages back
# to the arena.  Handles are indirect, as in the kernel (a handle names a record of the
# handle table, which says where the object lives), so they survive compaction.
#
# Handle header.  The kernel adds ZS_HANDLE_SIZE (8 bytes) to every request before it
# picks a class, and stores the handle in the first 8 bytes of every non-huge object
# (obj_malloc: link->handle, tagged OBJ_ALLOCATED_TAG), so that migration can find the
# handle of an object it moves (find_alloced_obj).  handle_header=True (the default) models
# that faithfully: the word (handle << 1 | 1) is written at the start of the slot, so the
# model packs exactly as densely as the kernel and compaction finds an object's handle in
# the arena.  handle_header=False keeps the handle out of band (as zswap keeps its
# zswap_entry outside the pool): each object asks 8 bytes less and may fall one class
# lower, huge_class_size moves up by 8, and compaction finds a slot's handle by one scan of
# the handle table per compaction (O(handles)).  That is not a sure gain: what a class
# costs per object is not monotonic in its size (on a 24 MiB heap corpus it was 0.7% *more*
# pages), so the default stays faithful; then the model's pool pages equal the kernel's for
# the same objects (`swapd bench density` against zram, tests/bench/RESULTS.md).
#
# State layout (one state region of kind "zsmalloc"; every record is little-endian u32 or
# u64 words; record 0 of "handles" and "zspages" is reserved so that index 0 means none):
#   classes[256]  24 u64: size, pages_per_zspage, objs_per_zspage, huge, rep (the class
#                 that holds this index's sizes), nonempty group mask, zspages, objects,
#                 object_bytes, heads[12] of the fullness lists (zspage index, 0 = empty)
#                 -- heads[0] unused --, then per-group zspage counts are in "fullness"
#   fullness[256] 12 u64: zspages per fullness group
#   handles[]     3 u32: loc, info, crc32.  info = size (bits 0-12, 0 = free record) |
#                 slot (bits 13-23; 0x7FF = huge: loc is the arena page) | gen (bits 24-31).
#                 loc = zspage index of a live object; of a free record, the next free record
#   zspages[]     4 u32: first_page (pfn; 0xFFFFFFFF = free descriptor), prev, next (fullness
#                 list links; a free descriptor's next chains the free ones), inuse (u16) |
#                 freeobj (u16 << 16; first free slot, 0xFFFF = none)
#   pages[pfn]    u32: the next page of the same zspage (0xFFFFFFFF after the last)
# In the arena, a free slot starts with the u32 (next free slot << 1) (the kernel's
# link_free; 0xFFFF << 1 ends the chain), an allocated slot with handle_header with the u64
# (handle << 1 | 1).  A handle is gen << 36 | record << 8 | class index (bits 0-7, so that
# free/read/write find the class, and its lock, without a pool-wide lookup, as the 2026
# "encode size_class index into obj" patches do).  Huge objects (one per page, always in
# fullness group 11, never moved) get no zspage descriptor: the handle record names their
# page, as the kernel keeps a huge object's handle in its page descriptor.
#
# Not modelled: page migration of single zspage pages (zs_page_migrate) and the deferred
# free when a zspage's pages cannot be locked (kick_deferred_free): the arena never moves
# or locks pages.  zs_malloc drops the class lock around alloc_zspage because the page
# allocator may sleep; here the lock is held, the arena does not sleep.
#
# Hot paths (malloc/free/read/write) are written for CPython: attributes aliased into
# locals, per class a precomputed slot table (page of the chain, offset, room to the page
# end), a bit mask of non-empty fullness groups so that find_get_zspage is O(1), locks
# acquired and released directly (cheaper than ``with`` in 3.11).  A slot's page is found
# by walking the zspage's page chain (``pages``), at most chain_size - 1 steps, as the
# kernel's get_next_page walks page->index.
#
# Locks.  lock="class" gives each size class its own lock (the kernel before 6.2 and
# again since 6.11, "mm/zsmalloc: change back to per-size_class lock"); lock="pool" makes
# every class share one pool lock (6.2 to 6.10, commit c0547d0b6a4b "zsmalloc:
# consolidate zs_pool's migrate_lock and size_class's locks", part of the zsmalloc
# writeback series).  The switch only decides which lock object the classes point at;
# the code paths are the same.  A class's records (its class and fullness records, its
# zspages, its objects' handle records and slots) change only under its lock.  The free
# chains of handle records and zspage descriptors and the region's growth are under
# ``_meta_lock`` (the kernel's handle and zspage slab caches).  Reads and writes copy under
# the class lock, which also stands in for the kernel's per-zspage lock against migration.
#
# Lock order: ZsPool._compact_lock -> SizeClass.lock (ascending class index when several
# are held, only in _check) -> ZsPool._meta_lock (leaf) ; SizeClass.lock -> PageArena._lock
# (leaf; never taken with _meta_lock held).
#
# Invariants (checked by ZsPool._check):
#   * a zspage with inuse objects is listed in exactly the group fg_of[inuse] of its class
#     (lists doubly linked, group counts and mask right); no empty zspage is kept;
#   * its free chain holds exactly objs - inuse distinct slots; every other slot belongs to
#     exactly one live handle record, whose size fits the slot and maps to this class; with
#     the header, the slot's header word is that handle;
#   * no page is in two zspages or is also a huge object's page;
#   * free handle records and free zspage descriptors are exactly their chains;
#   * the sum of pages of all zspages and huge objects == the arena's pages in use.
#
# Prior art: mm/zsmalloc.c (Linux 6.18: get_size_class_index, calculate_zspage_chain_size,
# can_merge, get_fullness_group, find_get_zspage, obj_malloc, obj_free, zs_can_compact,
# __zs_compact, migrate_zspage), Documentation/mm/zsmalloc.rst.
"""zsmalloc: size classes, multi-page zspages and compaction, as in ``mm/zsmalloc.c``.

See the comment at the top of this file for the design, the state layout, invariants and
lock order.
"""

from __future__ import annotations

import mmap
import threading
from collections.abc import Iterator, Mapping
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any, ClassVar, cast

from backends._layout import CHECKSUM_CRC32, GEN_MASK, HANDLE_LIMIT, adopt_regions, crc32
from swapd._native.zsmalloc import attach, detach, lock_type
from swapd.arena import DEFAULT_MAX_PAGES, PAGE_SHIFT, PAGE_SIZE
from swapd.backend import Backend, Buffer, PoolStats
from swapd.errors import (
    ConfigError,
    DoubleFreeError,
    InvalidHandleError,
    InvariantError,
    PoolExhaustedError,
)
from swapd.state import ArraySpec, StateFormatError, StateRegion

ZS_ALIGN = 8
ZS_HANDLE_SIZE = 8
ZS_MIN_ALLOC_SIZE = 32
ZS_MAX_ALLOC_SIZE = PAGE_SIZE
CLASS_BITS = 8
ZS_SIZE_CLASS_DELTA = PAGE_SIZE >> CLASS_BITS  # 16 bytes
ZS_SIZE_CLASSES = -(-(ZS_MAX_ALLOC_SIZE - ZS_MIN_ALLOC_SIZE) // ZS_SIZE_CLASS_DELTA) + 1  # 255
ZS_INUSE_RATIO_0 = 0
ZS_INUSE_RATIO_99 = 10
ZS_INUSE_RATIO_100 = 11
NR_FULLNESS_GROUPS = 12
DEFAULT_CHAIN_SIZE = 8  # CONFIG_ZSMALLOC_CHAIN_SIZE default (mm/Kconfig, range 4..16)

#: The state region's kind and kind version (docs/state-format.md).
STATE_KIND = "zsmalloc"
STATE_VERSION = 1

# classes[] record: 24 u64 words.
C_WORDS = 24
C_SIZE, C_PPZ, C_OPZ, C_HUGE, C_REP, C_NONEMPTY, C_ZSPAGES, C_OBJECTS, C_BYTES = range(9)
C_HEADS = 9  # heads[g] at C_HEADS + g, g in 0..11 (heads[0] unused: empty zspages are freed)
# fullness[] record: 12 u64 words, zspages per group.
F_WORDS = NR_FULLNESS_GROUPS
# handles[] record: 3 u32 words.
H_WORDS = 3
H_LOC, H_INFO, H_CRC = range(3)
SIZE_BITS = 13
SLOT_SHIFT = SIZE_BITS
SLOT_BITS = 11
GEN_SHIFT = SLOT_SHIFT + SLOT_BITS  # 24
SIZE_MASK = (1 << SIZE_BITS) - 1
SLOT_MASK = (1 << SLOT_BITS) - 1
HUGE_SLOT = SLOT_MASK  # slot field of a huge object's record: loc is its page
# zspages[] record: 4 u32 words; word 3 is two u16: inuse, freeobj.
Z_WORDS = 4
Z_FIRST, Z_PREV, Z_NEXT = range(3)
Z_INUSE_H, Z_FREEOBJ_H = 6, 7  # u16 indexes within a record (8 u16 per record)
NO_PAGE = 0xFFFFFFFF
NO_SLOT = 0xFFFF
LINK_END = NO_SLOT << 1
# Handle: gen << 36 | record << 8 | class index.
IDX_SHIFT = CLASS_BITS
IDX_BITS = 28
IDX_MASK = (1 << IDX_BITS) - 1
HGEN_SHIFT = IDX_SHIFT + IDX_BITS  # 36
MAX_HANDLES = IDX_MASK  # records 1..2**28-1

SCALARS = ("chain_size", "handle_header", "lock_pool", "huge_class_size", "checksum",
           "max_pages", "handle_free", "zspage_free", "pages_compacted")

_PAGE_MASK = PAGE_SIZE - 1
_PARTIAL_MASK = ((1 << (ZS_INUSE_RATIO_99 + 1)) - 1) & ~1  # groups 1..10
_CLASS_MASK = (1 << CLASS_BITS) - 1


def get_size_class_index(size: int) -> int:
    """Index of the size class that holds ``size`` bytes (the kernel's function).  O(1)."""
    idx = 0
    if size > ZS_MIN_ALLOC_SIZE:
        idx = -(-(size - ZS_MIN_ALLOC_SIZE) // ZS_SIZE_CLASS_DELTA)
    return min(ZS_SIZE_CLASSES - 1, idx)


def calculate_zspage_chain_size(class_size: int, chain_size: int = DEFAULT_CHAIN_SIZE) -> int:
    """Pages per zspage with the least tail waste, 1..chain_size (first best wins).  O(chain)."""
    if class_size & (class_size - 1) == 0:
        return 1
    best, min_waste = 1, PAGE_SIZE * chain_size + 1
    for i in range(1, chain_size + 1):
        waste = (i * PAGE_SIZE) % class_size
        if waste < min_waste:
            min_waste, best = waste, i
    return best


def fullness_group(inuse: int, objs_per_zspage: int) -> int:
    """The kernel's get_fullness_group: 0 empty, 11 full, else 10% steps 1..10.  O(1)."""
    if inuse == 0:
        return ZS_INUSE_RATIO_0
    if inuse == objs_per_zspage:
        return ZS_INUSE_RATIO_100
    return (100 * inuse // objs_per_zspage) // 10 + 1


def _not_a_handle(handle: object) -> InvalidHandleError:
    return InvalidHandleError(f"zsmalloc: {handle!r} is not a handle of this pool")


class SizeClass:
    """One (possibly merged) size class: its geometry and lock.

    Its mutable state lives in the pool's arrays (record ``index`` of ``classes`` and
    ``fullness``), under ``lock`` (a class lock, or the shared pool lock).
    """

    __slots__ = ("base", "fbase", "fg_of", "hdr", "huge", "index", "lock",
                 "objs_per_zspage", "pages_per_zspage", "size", "slot_pos")

    def __init__(self, index: int, size: int, pages_per_zspage: int, objs_per_zspage: int,
                 handle_size: int, lock: threading.Lock) -> None:
        self.index = index
        self.size = size  # slot size
        self.pages_per_zspage = pages_per_zspage
        self.objs_per_zspage = objs_per_zspage
        # Huge: one object per page; the kernel keeps its handle in the page descriptor.
        self.huge = pages_per_zspage == 1 and objs_per_zspage == 1
        self.hdr = 0 if self.huge else handle_size  # payload offset in a slot
        self.lock = lock
        self.base = index * C_WORDS  # this class's record in the classes view
        self.fbase = index * F_WORDS  # and in the fullness view
        self.fg_of = [fullness_group(i, objs_per_zspage) for i in range(objs_per_zspage + 1)]
        # slot_pos[i] = (page of the chain, offset of the slot's start in that page, bytes
        # from the payload to that page's end): objects longer than that straddle pages.
        self.slot_pos: list[tuple[int, int, int]] = []
        for i in range(objs_per_zspage):
            off = i * size
            inp = off & _PAGE_MASK
            self.slot_pos.append((off >> PAGE_SHIFT, inp, PAGE_SIZE - inp - self.hdr))

    def __repr__(self) -> str:
        return (f"<SizeClass {self.index} size={self.size} "
                f"{self.pages_per_zspage}p/{self.objs_per_zspage}o>")


@dataclass(frozen=True)
class ZsClassStats:
    """One size class in use (the columns of the kernel's debugfs ``classes`` file).

    ``fullness``: zspages per fullness group, ZS_INUSE_RATIO_0 .. ZS_INUSE_RATIO_100.
    ``objs_allocated``: slots in allocated zspages; ``freeable``: pages compaction could
    free (zs_can_compact).
    """

    index: int
    size: int
    pages_per_zspage: int
    objs_per_zspage: int
    huge: bool
    objects: int
    object_bytes: int
    zspages: int
    pages: int
    objs_allocated: int
    freeable: int
    fullness: tuple[int, ...]


@dataclass(frozen=True)
class ZsPoolStats(PoolStats):
    """PoolStats plus the zsmalloc configuration and every size class in use."""

    lock: str
    chain_size: int
    handle_header: bool
    huge_class_size: int
    classes: tuple[ZsClassStats, ...]

    @property
    def objects_per_page(self) -> float:
        """Live objects per pool page (0.0 for an empty pool)."""
        return self.objects / self.total_pages if self.total_pages else 0.0


@dataclass(frozen=True)
class ZsLocation:
    """Where a live object lives: class, zspage (0 for a huge object), slot, the zspage's
    pages and the object's bytes as (arena address, length) parts (two when it straddles)."""

    class_index: int
    zspage: int
    slot: int
    pages: tuple[int, ...]
    parts: tuple[tuple[int, int], ...]
    size: int
    checksum: int


class ZsPool(Backend):
    """The zsmalloc allocator: options ``chain_size``, ``lock``, ``handle_header``.

    ``chain_size`` (1..16, default 8): most pages per zspage.  ``lock``: ``"class"``
    (default) or ``"pool"``.  ``handle_header`` (default True): reserve the kernel's
    8-byte handle header in each non-huge object.  Thread-safe.  Its state is the region
    ``self.state`` (kind "zsmalloc") plus the arena's pages.
    """

    name: ClassVar[str] = "zsmalloc"
    description: ClassVar[str] = (
        "size classes in 16 B steps over multi-page zspages, fullness groups, compaction "
        "(mm/zsmalloc.c)"
    )
    version: ClassVar[str] = "2.0.0"
    uses_state_layout: ClassVar[bool] = True

    def __init__(self, *, max_pages: int = DEFAULT_MAX_PAGES, chain_size: int = DEFAULT_CHAIN_SIZE,
                 lock: str = "class", handle_header: bool = True, **options: Any) -> None:
        if not isinstance(chain_size, int) or not 1 <= chain_size <= 16:
            raise ConfigError(f"zsmalloc: chain_size must be an int in 1..16, got {chain_size!r}")
        if lock not in ("class", "pool"):
            raise ConfigError(f"zsmalloc: lock must be 'class' or 'pool', got {lock!r}")
        super().__init__(max_pages=max_pages, **options)
        handle_cap = min(MAX_HANDLES, max_pages * (PAGE_SIZE // ZS_MIN_ALLOC_SIZE)) + 1
        self.state = StateRegion.create(STATE_KIND, STATE_VERSION, [
            ArraySpec("classes", "Q", _CLASS_MASK + 1, C_WORDS * 8),
            ArraySpec("fullness", "Q", _CLASS_MASK + 1, F_WORDS * 8),
            ArraySpec("handles", "I", handle_cap, H_WORDS * 4),
            ArraySpec("zspages", "I", max_pages + 1, Z_WORDS * 4),
            ArraySpec("pages", "I", max_pages),
        ], SCALARS)
        self._setup(chain_size, lock, bool(handle_header), max_pages, fresh=True)

    def _setup(self, chain_size: int, lock: str, handle_header: bool, max_pages: int, *,
               fresh: bool) -> None:
        """Build the class table (and, for a fresh region, write it).  O(classes * chain)."""
        st = self.state
        self.chain_size = chain_size
        self.lock_mode = lock
        self.handle_header = handle_header
        hs = ZS_HANDLE_SIZE if handle_header else 0
        self._hsize = hs
        self._buf = self.arena.buf
        # The arena's mmap: slicing it yields bytes in one copy.
        self._mm = cast(mmap.mmap, self.arena.buf.obj)
        self._au32 = self.arena.buf.cast("I")  # free-slot links
        self._au64 = self.arena.buf.cast("Q")  # handle headers
        self._C = st.view("classes")
        self._F = st.view("fullness")
        self._H = st.view("handles")
        self._Z = st.view("zspages")
        self._ZH = self._Z.cast("B").cast("H")
        self._P = st.view("pages")
        self._S = st.scalars
        self._s_hfree = st.scalar_index("handle_free")
        self._s_zfree = st.scalar_index("zspage_free")
        self._hcap = st.capacity("handles")
        # The handles array's record count as a slot of the header's u64 view: a handle is
        # looked up only below it (records past the file's end must not be touched).
        self._s_hcount = st.count_index("handles")
        self._hroom = st.count("handles")  # records known to be inside the file
        Lock = lock_type()  # threading.Lock, or the compiled implementation's Mutex
        pool_lock = Lock() if lock == "pool" else None

        # zs_create_pool: walk the classes from the largest down, merging a class into the
        # one above it when both have the same (pages per zspage, objects per zspage).
        # by_index has 256 entries so that any handle's low byte indexes it.
        by_index: list[SizeClass | None] = [None] * (_CLASS_MASK + 1)
        rep: dict[int, SizeClass] = {}
        prev: SizeClass | None = None
        largest_non_huge = 0
        for i in range(ZS_SIZE_CLASSES - 1, -1, -1):
            size = min(ZS_MIN_ALLOC_SIZE + i * ZS_SIZE_CLASS_DELTA, ZS_MAX_ALLOC_SIZE)
            ppz = calculate_zspage_chain_size(size, chain_size)
            opz = ppz * PAGE_SIZE // size
            if ppz != 1 and opz != 1 and not largest_non_huge:
                largest_non_huge = size
            if prev is not None and prev.pages_per_zspage == ppz and prev.objs_per_zspage == opz:
                rep[i] = prev
                continue
            cls = SizeClass(i, size, ppz, opz, hs, pool_lock or Lock())
            by_index[i] = cls
            rep[i] = cls
            prev = cls
        #: Smallest object size that lands in the huge class (zs_huge_class_size()).
        self.huge_class_size = largest_non_huge - hs + 1
        self._by_index = by_index  # class index -> class (None for merged indexes)
        self._classes = [c for c in by_index if c is not None]  # ascending index
        # _class_for[size]: the class of an object of ``size`` bytes, 1..PAGE_SIZE.
        self._class_for: list[SizeClass] = [rep[0]] + [
            rep[get_size_class_index(s + hs)] for s in range(1, ZS_MAX_ALLOC_SIZE + 1)
        ]
        self._huge_index = self._class_for[PAGE_SIZE].index
        # Unique locks, in class-index order (one entry in pool mode).
        self._locks: list[threading.Lock] = list(dict.fromkeys(c.lock for c in self._classes))
        self._compact_lock = threading.Lock()  # one compaction at a time (kernel: atomic)
        self._meta_lock = Lock()  # free chains of handles and zspages; growth
        self._rep = [rep[i] for i in range(ZS_SIZE_CLASSES)]  # index -> its class
        if fresh:
            st.set_count("classes", _CLASS_MASK + 1)
            st.set_count("fullness", _CLASS_MASK + 1)
            st.set_count("handles", 1)  # record 0 is reserved
            st.set_count("zspages", 1)
            st.set_count("pages", 0)
            C = self._C
            for i in range(ZS_SIZE_CLASSES):
                c = rep[i]
                b = i * C_WORDS
                # A merged index records its own nominal size and its representative.
                C[b + C_SIZE] = min(ZS_MIN_ALLOC_SIZE + i * ZS_SIZE_CLASS_DELTA, PAGE_SIZE)
                C[b + C_PPZ], C[b + C_OPZ] = c.pages_per_zspage, c.objs_per_zspage
                C[b + C_HUGE], C[b + C_REP] = int(c.huge), c.index
            values = {"chain_size": chain_size, "handle_header": int(handle_header),
                      "lock_pool": int(lock == "pool"), "huge_class_size": self.huge_class_size,
                      "checksum": CHECKSUM_CRC32, "max_pages": max_pages}
            for k, v in values.items():
                st.set(k, v)
        attach(self)  # the compiled fast paths (swapd/_native/zsmalloc.py) when they run

    # -- the state regions ------------------------------------------------------------

    def state_fds(self) -> dict[str, int]:
        """``{"arena": fd, "zsmalloc": fd}``: the regions that hold the pool.  O(1)."""
        return {**self.arena.state_fds(), STATE_KIND: self.state.fd}

    @classmethod
    def adopt(cls, fds: Mapping[str, int], *, writable: bool = True) -> ZsPool:
        """A pool over the regions ``fds`` (as :meth:`state_fds` names them), taken over.

        Every header is validated (StateFormatError naming the field), and the class
        table in the region must be the one this code computes for its chain size and
        handle header.  ``writable=False``: a read-only reader (read, read_verified,
        locate, stats, _check).  O(classes); ``_check()`` then verifies the rest.
        """
        self = cls.__new__(cls)
        self.arena, self.state = adopt_regions("zsmalloc", STATE_KIND, STATE_VERSION, fds,
                                               writable=writable)
        try:
            st = self.state
            chain, hdr, lock_pool = st.get("chain_size"), st.get("handle_header"), \
                st.get("lock_pool")
            if not 1 <= chain <= 16 or hdr not in (0, 1) or lock_pool not in (0, 1):
                raise StateFormatError(f"zsmalloc: chain_size {chain}, handle_header {hdr}, "
                                       f"lock_pool {lock_pool} out of range")
            if st.get("checksum") != CHECKSUM_CRC32:
                raise StateFormatError(f"zsmalloc: checksum algorithm {st.get('checksum')}; "
                                       f"this code reads {CHECKSUM_CRC32} (CRC-32)")
            if st.capacity("pages") < self.arena.max_pages:
                raise StateFormatError(f"zsmalloc: pages array of {st.capacity('pages')} "
                                       f"records for an arena of {self.arena.max_pages}")
            self._setup(int(chain), "pool" if lock_pool else "class", bool(hdr),
                        st.get("max_pages"), fresh=False)
            try:
                self._check_class_table()
            except InvariantError as exc:
                raise StateFormatError(str(exc)) from exc
            if st.get("huge_class_size") != self.huge_class_size:
                raise StateFormatError(f"zsmalloc: huge_class_size {st.get('huge_class_size')}"
                                       f" != computed {self.huge_class_size}")
            if writable:
                self._repair_torn()
        except BaseException:
            self.close()
            raise
        return self

    # -- the zpool_driver surface ------------------------------------------------------

    @property
    def max_size(self) -> int:
        """Largest object: PAGE_SIZE (it lands in the huge class)."""
        return ZS_MAX_ALLOC_SIZE

    @property
    def classes(self) -> tuple[SizeClass, ...]:
        """The distinct (unmerged) size classes, ascending."""
        return tuple(self._classes)

    def class_for(self, size: int) -> SizeClass:
        """The size class an object of ``size`` bytes goes to.  O(1)."""
        self._check_size(size)
        return self._class_for[size]

    def malloc(self, size: int) -> int:
        """Allocate ``size`` bytes in its size class; return the handle.

        Amortized O(1): O(chain) with a zspage that has room; O(objects per zspage) to
        build a new zspage's free chain otherwise.  Raises ObjectSizeError, DataTypeError,
        PoolExhaustedError (no page for a new zspage, or 2**28 - 1 live handles).
        """
        if type(size) is not int or not 0 < size <= ZS_MAX_ALLOC_SIZE:
            self._check_size(size)  # raises the named error
            size = int(size)
        cls = self._class_for[size]
        lock = cls.lock
        lock.acquire()
        try:
            # cache_alloc_handle: a free record, else a new one (the file grown in steps).
            S = self._S
            meta = self._meta_lock
            meta.acquire()
            hi = S[self._s_hfree]
            if hi:
                S[self._s_hfree] = self._H[hi * H_WORDS]
                meta.release()
            else:
                try:
                    hi = self._new_record_locked()
                finally:
                    meta.release()
            try:
                if cls.huge:
                    z = self.arena.alloc_page()
                    slot = HUGE_SLOT
                    C = self._C
                    b = cls.base
                    C[b + C_ZSPAGES] += 1
                    self._F[cls.fbase + ZS_INUSE_RATIO_100] += 1
                    a = 0
                else:
                    C = self._C
                    b = cls.base
                    mask = C[b + C_NONEMPTY] & _PARTIAL_MASK
                    if mask:
                        # find_get_zspage: the newest zspage of the fullest non-full group.
                        g = mask.bit_length() - 1
                        z = C[b + C_HEADS + g]
                    else:
                        z = self._alloc_zspage_locked(cls)
                        g = 0
                    # obj_malloc: pop the first free slot off the zspage's in-arena chain.
                    ZH = self._ZH
                    zh = z << 3
                    slot = ZH[zh + Z_FREEOBJ_H]
                    pno, off, _room = cls.slot_pos[slot]
                    pfn = self._Z[z << 2]
                    P = self._P
                    while pno:
                        pfn = P[pfn]
                        pno -= 1
                    a = (pfn << PAGE_SHIFT) + off
                    ZH[zh + Z_FREEOBJ_H] = self._au32[a >> 2] >> 1
                    inuse = ZH[zh + Z_INUSE_H] + 1
                    ZH[zh + Z_INUSE_H] = inuse
                    ng = cls.fg_of[inuse]
                    if ng != g:
                        if g:
                            self._unlist_locked(cls, z, g)
                        self._list_locked(cls, z, ng)
            except BaseException:
                self._put_record(hi)
                raise
            H = self._H
            hb = hi * H_WORDS
            gen = ((H[hb + H_INFO] >> GEN_SHIFT) + 1) & GEN_MASK
            H[hb] = z
            H[hb + H_INFO] = size | (slot << SLOT_SHIFT) | (gen << GEN_SHIFT)
            H[hb + H_CRC] = 0
            handle = (gen << HGEN_SHIFT) | (hi << IDX_SHIFT) | cls.index
            if cls.hdr:
                # obj_malloc: record the handle, tagged allocated, in the chunk's header --
                # before the counters, so that counters that agree with the records mean
                # the header was written (docs/state-format.md, recovery)
                self._au64[a >> 3] = (handle << 1) | 1
            C[b + C_OBJECTS] += 1
            C[b + C_BYTES] += size
            return handle
        finally:
            lock.release()

    def free(self, handle: int) -> None:
        """Free the object; an emptied zspage's pages go back to the arena at once.

        O(chain), plus O(pages per zspage) arena calls when the zspage empties.  Raises
        InvalidHandleError or DoubleFreeError.
        """
        if type(handle) is not int or not 0 < handle < HANDLE_LIMIT or (
                cls := self._by_index[handle & _CLASS_MASK]) is None:
            raise _not_a_handle(handle)
        lock = cls.lock
        lock.acquire()
        try:
            hi = (handle >> IDX_SHIFT) & IDX_MASK
            H = self._H
            hb = hi * H_WORDS
            info = H[hb + H_INFO] if 0 < hi < self._S[self._s_hcount] else 0
            size = info & SIZE_MASK
            if not size or info >> GEN_SHIFT != handle >> HGEN_SHIFT or (
                    ((info >> SLOT_SHIFT) & SLOT_MASK) == HUGE_SLOT) != cls.huge:
                raise self._bad_handle(handle, "free")
            z = H[hb]
            C = self._C
            b = cls.base
            C[b + C_OBJECTS] -= 1
            C[b + C_BYTES] -= size
            if cls.huge:
                C[b + C_ZSPAGES] -= 1
                self._F[cls.fbase + ZS_INUSE_RATIO_100] -= 1
                self.arena.free_page(z)
            else:
                slot = (info >> SLOT_SHIFT) & SLOT_MASK
                pno, off, _room = cls.slot_pos[slot]
                pfn = self._Z[z << 2]
                P = self._P
                while pno:
                    pfn = P[pfn]
                    pno -= 1
                # obj_free: push the slot on the zspage's in-arena free chain.
                ZH = self._ZH
                zh = z << 3
                self._au32[((pfn << PAGE_SHIFT) + off) >> 2] = ZH[zh + Z_FREEOBJ_H] << 1
                ZH[zh + Z_FREEOBJ_H] = slot
                inuse = ZH[zh + Z_INUSE_H] - 1
                ZH[zh + Z_INUSE_H] = inuse
                fg_of = cls.fg_of
                g = fg_of[inuse + 1]
                ng = fg_of[inuse]
                if ng != g:
                    self._unlist_locked(cls, z, g)
                    if ng:
                        self._list_locked(cls, z, ng)
                    else:
                        self._free_zspage_locked(cls, z)
            H[hb + H_INFO] = info & ~(SIZE_MASK | (SLOT_MASK << SLOT_SHIFT))  # keeps gen
            meta = self._meta_lock
            meta.acquire()
            S = self._S
            H[hb] = S[self._s_hfree]
            S[self._s_hfree] = hi
            meta.release()
        finally:
            lock.release()

    def read(self, handle: int) -> bytes:
        """Return a copy of the object.  O(size + chain).  Raises InvalidHandleError."""
        if type(handle) is not int or not 0 < handle < HANDLE_LIMIT or (
                cls := self._by_index[handle & _CLASS_MASK]) is None:
            raise _not_a_handle(handle)
        lock = cls.lock
        lock.acquire()
        try:
            hi = (handle >> IDX_SHIFT) & IDX_MASK
            hb = hi * H_WORDS
            H = self._H
            info = H[hb + H_INFO] if 0 < hi < self._S[self._s_hcount] else 0
            size = info & SIZE_MASK
            if not size or info >> GEN_SHIFT != handle >> HGEN_SHIFT:
                raise self._bad_handle(handle, "read")
            slot = (info >> SLOT_SHIFT) & SLOT_MASK
            mm = self._mm
            if slot == HUGE_SLOT:
                if not cls.huge:
                    raise self._bad_handle(handle, "read")
                a = H[hb] << PAGE_SHIFT
                out: bytes = mm[a:a + size]
                return out
            pno, off, room = cls.slot_pos[slot]
            pfn = self._Z[H[hb] << 2]
            P = self._P
            while pno:
                pfn = P[pfn]
                pno -= 1
            a = (pfn << PAGE_SHIFT) + off + cls.hdr
            if size <= room:
                out = mm[a:a + size]
                return out
            b = P[pfn] << PAGE_SHIFT
            return mm[a:a + room] + mm[b:b + size - room]
        finally:
            lock.release()

    def write(self, handle: int, data: Buffer) -> None:
        """Copy ``data`` (exactly the object's size) into the object and record its CRC-32.

        O(size + chain).  Raises InvalidHandleError, DataTypeError or ObjectSizeError.
        """
        if type(handle) is not int or not 0 < handle < HANDLE_LIMIT or (
                cls := self._by_index[handle & _CLASS_MASK]) is None:
            raise _not_a_handle(handle)
        lock = cls.lock
        lock.acquire()
        try:
            hi = (handle >> IDX_SHIFT) & IDX_MASK
            hb = hi * H_WORDS
            H = self._H
            info = H[hb + H_INFO] if 0 < hi < self._S[self._s_hcount] else 0
            size = info & SIZE_MASK
            if not size or info >> GEN_SHIFT != handle >> HGEN_SHIFT:
                raise self._bad_handle(handle, "write")
            if type(data) is not bytes or len(data) != size:
                data = self._check_data(data, size)
            slot = (info >> SLOT_SHIFT) & SLOT_MASK
            buf = self._buf
            if slot == HUGE_SLOT:
                if not cls.huge:
                    raise self._bad_handle(handle, "write")
                a = H[hb] << PAGE_SHIFT
                buf[a:a + size] = data
            else:
                pno, off, room = cls.slot_pos[slot]
                pfn = self._Z[H[hb] << 2]
                P = self._P
                while pno:
                    pfn = P[pfn]
                    pno -= 1
                a = (pfn << PAGE_SHIFT) + off + cls.hdr
                if size <= room:
                    buf[a:a + size] = data
                else:
                    view = memoryview(data)
                    buf[a:a + room] = view[:room]
                    b = P[pfn] << PAGE_SHIFT
                    buf[b:b + size - room] = view[room:]
            H[hb + H_CRC] = crc32(data)
        finally:
            lock.release()

    def size_of(self, handle: int) -> int:
        """Size in bytes of a live object.  O(1).  Raises InvalidHandleError."""
        return self.locate(handle).size

    def checksum(self, handle: int) -> int:
        """The CRC-32 recorded at the object's last write (0 before any).  O(1)."""
        return self.locate(handle).checksum

    def total_pages(self) -> int:
        """Pages held by all zspages and huge objects (== the arena's pages in use).  O(1)."""
        return self.arena.pages_in_use

    def compact(self) -> int:
        """Move objects from sparse zspages into dense ones; return pages freed.

        The kernel's zs_compact: one compaction at a time (a concurrent call returns 0),
        classes from the largest down, each under its own lock.  O(objects moved +
        zspages), plus one O(handles) scan without the handle header.  Handles stay valid.
        """
        if not self._compact_lock.acquire(blocking=False):
            return 0
        try:
            freed = 0
            for cls in reversed(self._classes):
                if cls.huge:
                    continue
                with cls.lock:
                    freed += self._compact_class_locked(cls)
            self.state.set("pages_compacted", self.state.get("pages_compacted") + freed)
            return freed
        finally:
            self._compact_lock.release()

    def stats(self) -> ZsPoolStats:
        """A snapshot of the pool and of every class in use.  O(classes)."""
        classes = []
        objects = object_bytes = 0
        C, F = self._C, self._F
        for cls in self._classes:
            with cls.lock:
                b = cls.base
                zspages = C[b + C_ZSPAGES]
                if not zspages:
                    continue
                n = C[b + C_OBJECTS]
                nbytes = C[b + C_BYTES]
                objects += n
                object_bytes += nbytes
                classes.append(ZsClassStats(
                    index=cls.index, size=cls.size, pages_per_zspage=cls.pages_per_zspage,
                    objs_per_zspage=cls.objs_per_zspage, huge=cls.huge, objects=n,
                    object_bytes=nbytes, zspages=zspages,
                    pages=zspages * cls.pages_per_zspage,
                    objs_allocated=zspages * cls.objs_per_zspage,
                    freeable=self._can_compact_locked(cls),
                    fullness=tuple(F[cls.fbase:cls.fbase + F_WORDS])))
        return ZsPoolStats(total_pages=self.total_pages(), objects=objects,
                           object_bytes=object_bytes,
                           pages_compacted=self.state.get("pages_compacted"),
                           lock=self.lock_mode, chain_size=self.chain_size,
                           handle_header=self.handle_header,
                           huge_class_size=self.huge_class_size, classes=tuple(classes))

    def close(self) -> None:
        """Release the views, the state region and the arena."""
        detach(self)
        for name in ("_ZH", "_au32", "_au64"):
            v = getattr(self, name, None)
            if v is not None:
                v.release()
        self.state.close()
        super().close()

    # -- introspection -------------------------------------------------------------------

    def locate(self, handle: int) -> ZsLocation:
        """Where a live object lives (for tests and tools).  O(chain).  InvalidHandleError."""
        if type(handle) is not int or not 0 < handle < HANDLE_LIMIT or (
                cls := self._by_index[handle & _CLASS_MASK]) is None:
            raise _not_a_handle(handle)
        with cls.lock:
            hi = (handle >> IDX_SHIFT) & IDX_MASK
            hb = hi * H_WORDS
            H = self._H
            info = H[hb + H_INFO] if 0 < hi < self._S[self._s_hcount] else 0
            size = info & SIZE_MASK
            slot = (info >> SLOT_SHIFT) & SLOT_MASK
            if not size or info >> GEN_SHIFT != handle >> HGEN_SHIFT or (
                    slot == HUGE_SLOT) != cls.huge:
                raise self._bad_handle(handle, "locate")
            if cls.huge:
                pfn = H[hb]
                return ZsLocation(cls.index, 0, 0, (pfn,), ((pfn << PAGE_SHIFT, size),), size,
                                  H[hb + H_CRC])
            z = H[hb]
            pages = tuple(self._zspage_pages(z))
            pno, off, room = cls.slot_pos[slot]
            a = (pages[pno] << PAGE_SHIFT) + off + cls.hdr
            parts: tuple[tuple[int, int], ...] = ((a, size),) if size <= room else (
                (a, room), (pages[pno + 1] << PAGE_SHIFT, size - room))
            return ZsLocation(cls.index, z, slot, pages, parts, size, H[hb + H_CRC])

    def page_of(self, handle: int) -> int:
        """The allocator page holding the object: its zspage index, or for a huge object
        ``-1 - pfn`` of its page (the Backend ABC's optional ``page_of``).  O(1)."""
        loc = self.locate(handle)
        return loc.zspage if loc.zspage else -1 - loc.pages[0]

    def zspage_inuse(self, zspage: int) -> int:
        """Live objects of a zspage (for tests).  O(1)."""
        return int(self._ZH[(zspage << 3) + Z_INUSE_H])

    # -- internals ----------------------------------------------------------------------

    def _bad_handle(self, handle: int, op: str) -> InvalidHandleError:
        """The error for a handle not live (caller holds its class lock)."""
        hi = (handle >> IDX_SHIFT) & IDX_MASK
        if 0 < hi < self.state.count("handles"):
            info = self._H[hi * H_WORDS + H_INFO]
            if info >> GEN_SHIFT == handle >> HGEN_SHIFT and not info & SIZE_MASK:
                if op == "free":
                    return DoubleFreeError(f"zsmalloc: double free of handle {handle:#x}")
                return InvalidHandleError(f"zsmalloc: {op} of freed handle {handle:#x}")
            if info >> GEN_SHIFT != handle >> HGEN_SHIFT:
                if op == "free":
                    return DoubleFreeError(
                        f"zsmalloc: double free of stale handle {handle:#x} (record reused)")
                return InvalidHandleError(
                    f"zsmalloc: {op} of stale handle {handle:#x} (freed, record reused)")
        return InvalidHandleError(f"zsmalloc: {op} of unknown handle {handle:#x}")

    def _new_record_locked(self) -> int:
        """A never-used handle record (caller holds _meta_lock).  O(1) amortized."""
        S = self._S
        hi = S[self._s_hcount]
        if hi >= self._hroom:
            if hi >= self._hcap:
                raise PoolExhaustedError(f"zsmalloc: all {self._hcap - 1} handles are in use")
            # Grow the file by at least 64 Ki records at a time; count stays the truth.
            room = min(self._hcap, hi + (1 << 16))
            self.state.ensure("handles", room)
            self._hroom = room
        S[self._s_hcount] = hi + 1
        return int(hi)

    def _put_record(self, hi: int) -> None:
        """Chain record ``hi`` (already marked free) on the free list.  O(1)."""
        meta = self._meta_lock
        meta.acquire()
        S = self._S
        self._H[hi * H_WORDS] = S[self._s_hfree]
        S[self._s_hfree] = hi
        meta.release()

    def _P_ensure(self, pfn: int) -> None:
        """Make pages[pfn] backed in the region's file.  O(1) amortized."""
        if pfn >= self.state.count("pages"):
            with self._meta_lock:
                if pfn >= self.state.count("pages"):
                    self.state.set_count("pages", pfn + 1)

    def _zspage_pages(self, z: int) -> Iterator[int]:
        """The pages of zspage ``z``, first first (walks ``pages``).  O(chain)."""
        pfn = self._Z[z << 2]
        P = self._P
        while pfn != NO_PAGE:
            yield pfn
            pfn = P[pfn]

    def _alloc_zspage_locked(self, cls: SizeClass) -> int:
        """alloc_zspage + init_zspage: take the chain's pages from the arena, link them and
        every slot into the free chain; return the zspage (on no list).  O(objs + pages).

        Unlike the kernel, which drops the class lock around the page allocation, the
        lock is held: the arena never sleeps.  On exhaustion the pages taken are returned
        and PoolExhaustedError propagates.
        """
        arena = self.arena
        pages: list[int] = []
        try:
            for _ in range(cls.pages_per_zspage):
                pages.append(arena.alloc_page())
        except PoolExhaustedError:
            for pfn in pages:
                arena.free_page(pfn)
            raise
        self._P_ensure(max(pages))
        P = self._P
        for i in range(len(pages) - 1):
            P[pages[i]] = pages[i + 1]
        P[pages[-1]] = NO_PAGE
        with self._meta_lock:
            S = self._S
            z = S[self._s_zfree]
            if z:
                S[self._s_zfree] = self._Z[(z << 2) + Z_NEXT]
            else:
                z = self.state.count("zspages")
                self.state.set_count("zspages", z + 1)  # below max_pages + 1: a page each
        Z = self._Z
        zb = z << 2
        Z[zb + Z_FIRST] = pages[0]
        Z[zb + Z_PREV] = Z[zb + Z_NEXT] = 0
        ZH = self._ZH
        ZH[(z << 3) + Z_INUSE_H] = 0
        ZH[(z << 3) + Z_FREEOBJ_H] = 0
        au32 = self._au32
        last = cls.objs_per_zspage - 1
        for i, (pno, off, _room) in enumerate(cls.slot_pos):
            au32[((pages[pno] << PAGE_SHIFT) + off) >> 2] = (i + 1) << 1 if i < last else LINK_END
        self._C[cls.base + C_ZSPAGES] += 1
        return int(z)

    def _free_zspage_locked(self, cls: SizeClass, z: int) -> None:
        """free_zspage of an empty zspage already off the fullness lists.  O(pages)."""
        self._C[cls.base + C_ZSPAGES] -= 1
        pages = list(self._zspage_pages(z))
        Z = self._Z
        zb = z << 2
        Z[zb + Z_FIRST] = NO_PAGE
        Z[zb + Z_PREV] = 0
        with self._meta_lock:
            S = self._S
            Z[zb + Z_NEXT] = S[self._s_zfree]
            S[self._s_zfree] = z
        free_page = self.arena.free_page
        for pfn in pages:
            free_page(pfn)

    def _list_locked(self, cls: SizeClass, z: int, g: int) -> None:
        """Insert zspage ``z`` at the head of fullness group ``g`` (list_add).  O(1)."""
        C, Z = self._C, self._Z
        hb = cls.base + C_HEADS + g
        head = C[hb]
        zb = z << 2
        Z[zb + Z_PREV] = 0
        Z[zb + Z_NEXT] = head
        if head:
            Z[(head << 2) + Z_PREV] = z
        C[hb] = z
        C[cls.base + C_NONEMPTY] |= 1 << g
        self._F[cls.fbase + g] += 1

    def _unlist_locked(self, cls: SizeClass, z: int, g: int) -> None:
        """Remove zspage ``z`` from fullness group ``g`` (list_del).  O(1)."""
        C, Z = self._C, self._Z
        zb = z << 2
        p = Z[zb + Z_PREV]
        n = Z[zb + Z_NEXT]
        if p:
            Z[(p << 2) + Z_NEXT] = n
        else:
            C[cls.base + C_HEADS + g] = n
            if not n:
                C[cls.base + C_NONEMPTY] &= ~(1 << g)
        if n:
            Z[(n << 2) + Z_PREV] = p
        Z[zb + Z_PREV] = Z[zb + Z_NEXT] = 0
        self._F[cls.fbase + g] -= 1

    def _can_compact_locked(self, cls: SizeClass) -> int:
        """zs_can_compact: pages that whole unused zspages' worth of slots would free."""
        if cls.huge:
            return 0
        b = cls.base
        wasted = self._C[b + C_ZSPAGES] * cls.objs_per_zspage - self._C[b + C_OBJECTS]
        return wasted // cls.objs_per_zspage * cls.pages_per_zspage if wasted > 0 else 0

    def _isolate_locked(self, cls: SizeClass, groups: range) -> int:
        """Take the newest zspage of the first non-empty group of ``groups`` off its list."""
        C = self._C
        for g in groups:
            z = C[cls.base + C_HEADS + g]
            if z:
                self._unlist_locked(cls, z, g)
                return int(z)
        return 0

    def _putback_locked(self, cls: SizeClass, z: int) -> int:
        """putback_zspage: list ``z`` in its fullness group; return the group."""
        g = cls.fg_of[self._ZH[(z << 3) + Z_INUSE_H]]
        if g:
            self._list_locked(cls, z, g)
        return g

    def _compact_class_locked(self, cls: SizeClass) -> int:
        """__zs_compact for one class; return pages freed.  O(objects moved)."""
        freed = 0
        dst = 0
        ZH = self._ZH
        opz = cls.objs_per_zspage
        if not self._can_compact_locked(cls):
            return 0
        # Without the header, a slot's handle comes from one scan, made while every zspage
        # of the class is still listed.
        owners = None if cls.hdr else self._owners_locked(cls)
        while self._can_compact_locked(cls):
            if not dst:
                dst = self._isolate_locked(cls, range(ZS_INUSE_RATIO_99, ZS_INUSE_RATIO_0, -1))
                if not dst:
                    break
            src = self._isolate_locked(cls, range(1, ZS_INUSE_RATIO_99 + 1))
            if not src:
                break
            self._migrate_zspage_locked(cls, src, dst, owners)
            if self._putback_locked(cls, src) == ZS_INUSE_RATIO_0:
                self._free_zspage_locked(cls, src)
                freed += cls.pages_per_zspage
            if ZH[(dst << 3) + Z_INUSE_H] == opz:
                self._putback_locked(cls, dst)
                dst = 0
        if dst:
            self._putback_locked(cls, dst)
        return freed

    def _repair_torn(self) -> int:
        """After a crash inside ``malloc`` or ``free``: make the handle records, the free
        record chain, the class counters and the object headers agree again.  Returns the
        records repaired.

        Cheap when nothing is torn: the free chain's length plus the counted objects must
        be the records handed out (O(free records + classes)).  Otherwise one scan of the
        records: a record popped off the chain but never made live goes back on it; a live
        record whose slot is still on its zspage's free chain (``free`` cut short) is freed;
        a live record whose slot is taken but whose header was never written (``malloc`` cut
        short) gets its header; the counters are recounted.  The objects' bytes are not
        trusted here: each load checks its CRC-32.
        """
        S, H, C = self._S, self._H, self._C
        nh = S[self._s_hcount]
        chain = 0
        end = S[self._s_hfree]  # nonzero after the walk: the chain loops or runs too long
        while end and chain < nh:
            chain += 1
            end = H[end * H_WORDS]
        counted = sum(C[c.base + C_OBJECTS] for c in self._classes)
        if chain + counted == nh - 1 and not end:
            return 0
        repaired = 0
        objs = dict.fromkeys((c.index for c in self._classes), 0)
        nbytes = dict(objs)
        free_recs: list[int] = []
        free_slots: dict[int, set[int]] = {}
        for hi in range(1, nh):
            hb = hi * H_WORDS
            info = H[hb + H_INFO]
            size = info & SIZE_MASK
            if not size:
                free_recs.append(hi)
                continue
            cls = self._class_for[size]
            slot = (info >> SLOT_SHIFT) & SLOT_MASK
            if cls.hdr and slot != HUGE_SLOT:
                z = H[hb]
                if z not in free_slots:
                    free_slots[z] = self._zspage_free_slots(z, cls)
                if slot in free_slots[z]:  # free() cut short: the slot went back first
                    H[hb + H_INFO] = info & ~(SIZE_MASK | (SLOT_MASK << SLOT_SHIFT))
                    free_recs.append(hi)
                    repaired += 1
                    continue
                a = self._slot_addr(z, cls, slot)
                want = (self._handle_of(hi, info, cls) << 1) | 1
                if self._au64[a >> 3] != want:  # malloc() cut short before the header
                    self._au64[a >> 3] = want
                    repaired += 1
            objs[cls.index] += 1
            nbytes[cls.index] += size
        for c in self._classes:
            if (C[c.base + C_OBJECTS], C[c.base + C_BYTES]) != (objs[c.index], nbytes[c.index]):
                C[c.base + C_OBJECTS], C[c.base + C_BYTES] = objs[c.index], nbytes[c.index]
                repaired += 1
        if chain != len(free_recs) or end:
            nxt = 0
            for r in reversed(free_recs):
                H[r * H_WORDS] = nxt
                nxt = r
            S[self._s_hfree] = nxt
            repaired += 1
        return repaired

    def _zspage_free_slots(self, z: int, cls: SizeClass) -> set[int]:
        """The slots on zspage ``z``'s in-arena free chain.  O(objects per zspage)."""
        out: set[int] = set()
        slot = self._ZH[(z << 3) + Z_FREEOBJ_H]
        while slot != NO_SLOT and slot < cls.objs_per_zspage and slot not in out:
            out.add(slot)
            slot = self._au32[self._slot_addr(z, cls, slot) >> 2] >> 1
        return out

    def _slot_addr(self, z: int, cls: SizeClass, slot: int) -> int:
        """Arena address of slot ``slot`` of zspage ``z`` (its header, or its free link).
        O(chain).  The hot paths (malloc, free, read, write) inline this walk."""
        pno, off, _room = cls.slot_pos[slot]
        pfn = self._Z[z << 2]
        P = self._P
        for _ in range(pno):
            pfn = P[pfn]
        return (pfn << PAGE_SHIFT) + off

    @staticmethod
    def _handle_of(hi: int, info: int, cls: SizeClass) -> int:
        """The handle of live record ``hi`` (whose info word is ``info``) in ``cls``."""
        return ((info >> GEN_SHIFT) << HGEN_SHIFT) | (hi << IDX_SHIFT) | cls.index

    def live_handles(self) -> list[int]:
        """Every live handle (``gen << 36 | record << 8 | class index``; the class is the one
        ``malloc`` picks for the object's size).  O(handles)."""
        with self._meta_lock:
            H = self._H
            out: list[int] = []
            for hi in range(1, self.state.count("handles")):
                info = H[hi * H_WORDS + H_INFO]
                size = info & SIZE_MASK
                if size:
                    out.append(self._handle_of(hi, info, self._class_for[size]))
            return out

    def _owners_locked(self, cls: SizeClass) -> dict[int, int]:
        """(zspage << 11 | slot) -> handle record, for the live objects of ``cls``: one scan
        of the handle table (find_alloced_obj without a handle header).  O(handles)."""
        zspages = set(self._class_zspages(cls))
        H = self._H
        out: dict[int, int] = {}
        for hi in range(1, self.state.count("handles")):
            hb = hi * H_WORDS
            info = H[hb + H_INFO]
            slot = (info >> SLOT_SHIFT) & SLOT_MASK
            if info & SIZE_MASK and slot != HUGE_SLOT and H[hb] in zspages:
                out[(H[hb] << SLOT_BITS) | slot] = hi
        return out

    def _class_zspages(self, cls: SizeClass) -> Iterator[int]:
        """Every listed zspage of ``cls``, group by group.  O(zspages of the class)."""
        C, Z = self._C, self._Z
        for g in range(1, NR_FULLNESS_GROUPS):
            z = C[cls.base + C_HEADS + g]
            while z:
                yield int(z)
                z = Z[(z << 2) + Z_NEXT]

    def _migrate_zspage_locked(self, cls: SizeClass, src: int, dst: int,
                               owners: dict[int, int] | None) -> None:
        """migrate_zspage: move src's objects, in slot order, into dst until either ends."""
        H, ZH, au32, au64 = self._H, self._ZH, self._au32, self._au64
        mm, buf = self._mm, self._buf
        hdr = cls.hdr
        opz = cls.objs_per_zspage
        spages = list(self._zspage_pages(src))
        dpages = list(self._zspage_pages(dst))
        sh, dh = src << 3, dst << 3
        for idx, (pno, off, room) in enumerate(cls.slot_pos):
            sa = (spages[pno] << PAGE_SHIFT) + off
            if owners is None:
                word = au64[sa >> 3]
                if not word & 1:
                    continue  # a free slot (its link has the tag bit clear)
                hi = (word >> (1 + IDX_SHIFT)) & IDX_MASK
            else:
                found = owners.get((src << SLOT_BITS) | idx)
                if found is None:
                    continue
                hi = found
            hb = hi * H_WORDS
            info = H[hb + H_INFO]
            size = info & SIZE_MASK
            a = sa + hdr
            if size <= room:
                data = mm[a:a + size]
            else:
                b = spages[pno + 1] << PAGE_SHIFT
                data = mm[a:a + room] + mm[b:b + size - room]
            # obj_malloc in dst
            didx = ZH[dh + Z_FREEOBJ_H]
            dpno, doff, droom = cls.slot_pos[didx]
            da = (dpages[dpno] << PAGE_SHIFT) + doff
            ZH[dh + Z_FREEOBJ_H] = au32[da >> 2] >> 1
            ZH[dh + Z_INUSE_H] += 1
            if hdr:
                au64[da >> 3] = au64[sa >> 3]
            da += hdr
            if size <= droom:
                buf[da:da + size] = data
            else:
                db = dpages[dpno + 1] << PAGE_SHIFT
                buf[da:da + droom] = data[:droom]
                buf[db:db + size - droom] = data[droom:]
            H[hb] = dst
            H[hb + H_INFO] = (info & ~(SLOT_MASK << SLOT_SHIFT)) | (didx << SLOT_SHIFT)
            if owners is not None:
                del owners[(src << SLOT_BITS) | idx]
                owners[(dst << SLOT_BITS) | didx] = hi
            # obj_free in src
            au32[sa >> 2] = ZH[sh + Z_FREEOBJ_H] << 1
            ZH[sh + Z_FREEOBJ_H] = idx
            ZH[sh + Z_INUSE_H] -= 1
            if ZH[dh + Z_INUSE_H] == opz or not ZH[sh + Z_INUSE_H]:
                break

    # -- invariants ---------------------------------------------------------------------

    def _check(self) -> None:
        """Verify every invariant of the header comment.  O(objects + pages)."""
        with ExitStack() as stack:
            stack.enter_context(self._compact_lock)
            for lk in self._locks:
                stack.enter_context(lk)
            stack.enter_context(self._meta_lock)
            self._check_locked()
        self.arena._check()

    def _check_class_table(self) -> None:
        """The class records are the geometry computed for this configuration.  O(classes)."""
        C = self._C
        for i, c in enumerate(self._rep):
            want = (min(ZS_MIN_ALLOC_SIZE + i * ZS_SIZE_CLASS_DELTA, PAGE_SIZE),
                    c.pages_per_zspage, c.objs_per_zspage, int(c.huge), c.index)
            got = tuple(C[i * C_WORDS:i * C_WORDS + C_REP + 1])
            if got != want:
                raise InvariantError(f"zsmalloc: class {i} record (size, pages, objects, huge, "
                                     f"rep) is {got}, computed {want}")

    def _check_locked(self) -> None:
        st = self.state
        st._check()
        self._check_class_table()
        C, F, H, Z, ZH, P = self._C, self._F, self._H, self._Z, self._ZH, self._P
        au32, au64 = self._au32, self._au64
        nz = st.count("zspages")
        nh = st.count("handles")
        npages = st.count("pages")
        zclass: dict[int, SizeClass] = {}  # live zspage -> class
        free_slots: dict[int, set[int]] = {}  # live zspage -> its free slots
        page_owner: dict[int, int] = {}  # pfn -> zspage (or -handle record for huge)
        total_pages = 0
        for cls in self._classes:
            b = cls.base
            if cls.huge:
                if C[b + C_NONEMPTY] or any(F[cls.fbase + g] for g in range(ZS_INUSE_RATIO_100)):
                    raise InvariantError(f"{cls}: the huge class has listed zspages")
                if F[cls.fbase + ZS_INUSE_RATIO_100] != C[b + C_ZSPAGES] or \
                        C[b + C_ZSPAGES] != C[b + C_OBJECTS]:
                    raise InvariantError(f"{cls}: huge zspages {C[b + C_ZSPAGES]}, objects "
                                         f"{C[b + C_OBJECTS]}, group 11 {F[cls.fbase + 11]}")
                total_pages += C[b + C_ZSPAGES]
                continue
            mask = 0
            count = 0
            if C[b + C_HEADS]:
                raise InvariantError(f"{cls}: empty zspages kept on the lists")
            for g in range(1, NR_FULLNESS_GROUPS):
                z = C[b + C_HEADS + g]
                prev = 0
                n = 0
                if z:
                    mask |= 1 << g
                while z:
                    if not 0 < z < nz or z in zclass:
                        raise InvariantError(f"{cls}: zspage {z} in group {g} is out of range "
                                             "or listed twice")
                    zb = z << 2
                    if Z[zb + Z_PREV] != prev:
                        raise InvariantError(f"{cls}: zspage {z} prev {Z[zb + Z_PREV]} != {prev}")
                    inuse = ZH[(z << 3) + Z_INUSE_H]
                    if not 0 < inuse <= cls.objs_per_zspage or cls.fg_of[inuse] != g:
                        raise InvariantError(f"{cls}: zspage {z} with {inuse} objects in "
                                             f"group {g}")
                    zclass[z] = cls
                    pages: list[int] = []
                    pfn = Z[zb + Z_FIRST]
                    while pfn != NO_PAGE:
                        if not 0 <= pfn < npages or pfn in page_owner or \
                                len(pages) >= cls.pages_per_zspage:
                            raise InvariantError(f"{cls}: zspage {z}: page {pfn} out of range, "
                                                 "in two zspages, or past the chain")
                        page_owner[pfn] = z
                        pages.append(pfn)
                        pfn = P[pfn]
                    if len(pages) != cls.pages_per_zspage:
                        raise InvariantError(f"{cls}: zspage {z} has {len(pages)} pages")
                    free: set[int] = set()
                    s = ZH[(z << 3) + Z_FREEOBJ_H]
                    while s != NO_SLOT:
                        if s >= cls.objs_per_zspage or s in free:
                            raise InvariantError(f"{cls}: zspage {z}: corrupt free chain at {s}")
                        free.add(s)
                        pno, off, _r = cls.slot_pos[s]
                        link = au32[((pages[pno] << PAGE_SHIFT) + off) >> 2]
                        if link & 1:
                            raise InvariantError(f"{cls}: zspage {z}: free slot {s} is tagged "
                                                 "allocated")
                        s = link >> 1
                    if len(free) != cls.objs_per_zspage - inuse:
                        raise InvariantError(f"{cls}: zspage {z}: {len(free)} free slots, "
                                             f"inuse {inuse}")
                    free_slots[z] = free
                    prev = z
                    n += 1
                    z = Z[zb + Z_NEXT]
                if F[cls.fbase + g] != n:
                    raise InvariantError(f"{cls}: group {g} counts {F[cls.fbase + g]}, lists {n}")
                count += n
            if mask != C[b + C_NONEMPTY]:
                raise InvariantError(f"{cls}: group mask {C[b + C_NONEMPTY]:#x} != {mask:#x}")
            if count != C[b + C_ZSPAGES]:
                raise InvariantError(f"{cls}: {count} zspages listed, {C[b + C_ZSPAGES]} counted")
            total_pages += count * cls.pages_per_zspage
        # Free zspage descriptors: exactly the chain.
        seen_free = 0
        z = self._S[self._s_zfree]
        while z:
            if not 0 < z < nz or z in zclass or Z[(z << 2) + Z_FIRST] != NO_PAGE or \
                    seen_free >= nz:
                raise InvariantError(f"zsmalloc: free zspage chain corrupt at {z}")
            seen_free += 1
            z = Z[(z << 2) + Z_NEXT]
        if seen_free + len(zclass) != nz - 1:
            raise InvariantError(f"zsmalloc: {len(zclass)} live + {seen_free} free zspages != "
                                 f"{nz - 1} descriptors")
        # Handle records.
        huge = self._by_index[self._huge_index]
        assert huge is not None
        owned: set[int] = set()
        objs = {c.index: 0 for c in self._classes}
        nbytes = {c.index: 0 for c in self._classes}
        live = 0
        for hi in range(1, nh):
            hb = hi * H_WORDS
            info = H[hb + H_INFO]
            size = info & SIZE_MASK
            if not size:
                continue
            live += 1
            slot = (info >> SLOT_SHIFT) & SLOT_MASK
            loc = H[hb]
            if slot == HUGE_SLOT:
                if not self.huge_class_size <= size <= PAGE_SIZE or loc in page_owner:
                    raise InvariantError(f"zsmalloc: huge record {hi}: {size} B in page {loc}")
                page_owner[loc] = -hi
                objs[huge.index] += 1
                nbytes[huge.index] += size
                continue
            zc = zclass.get(loc)
            if zc is None:
                raise InvariantError(f"zsmalloc: record {hi} points at zspage {loc}, not live")
            if self._class_for[size] is not zc:
                raise InvariantError(f"zsmalloc: record {hi}: {size} B in {zc}")
            if slot >= zc.objs_per_zspage or slot in free_slots[loc]:
                raise InvariantError(f"zsmalloc: record {hi}: slot {slot} free or out of range")
            key = (loc << SLOT_BITS) | slot
            if key in owned:
                raise InvariantError(f"zsmalloc: two records own slot {slot} of zspage {loc}")
            owned.add(key)
            if zc.hdr:
                word = au64[self._slot_addr(loc, zc, slot) >> 3]
                want = self._handle_of(hi, info, zc)
                if word != (want << 1) | 1:
                    raise InvariantError(f"zsmalloc: handle {want:#x}: header holds "
                                         f"{word:#x}")
            objs[zc.index] += 1
            nbytes[zc.index] += size
        for cls in self._classes:
            b = cls.base
            if objs[cls.index] != C[b + C_OBJECTS] or nbytes[cls.index] != C[b + C_BYTES]:
                raise InvariantError(f"{cls}: {objs[cls.index]} objects / {nbytes[cls.index]} B "
                                     f"live, counted {C[b + C_OBJECTS]} / {C[b + C_BYTES]}")
        in_zspages = sum(len(f) for f in free_slots.values())
        slots_total = sum(zclass[z].objs_per_zspage for z in zclass)
        if slots_total - in_zspages != len(owned):
            raise InvariantError(f"zsmalloc: {slots_total - in_zspages} slots in use, "
                                 f"{len(owned)} owned")
        seen_free = 0
        hi = self._S[self._s_hfree]
        while hi:
            if not 0 < hi < nh or H[hi * H_WORDS + H_INFO] & SIZE_MASK or seen_free >= nh:
                raise InvariantError(f"zsmalloc: free handle chain corrupt at {hi}")
            seen_free += 1
            hi = H[hi * H_WORDS]
        if seen_free + live != nh - 1:
            raise InvariantError(f"zsmalloc: {live} live + {seen_free} free records != {nh - 1}")
        if total_pages != self.arena.pages_in_use:
            raise InvariantError(
                f"zspages hold {total_pages} pages, the arena has {self.arena.pages_in_use} in use")
