# Design: a model of the kernel's zsmalloc (mm/zsmalloc.c) over a PageArena.
#
# Objects are sorted by size into size classes 16 bytes apart, from 32 B to 4096 B
# (ZS_MIN_ALLOC_SIZE, ZS_SIZE_CLASS_DELTA = PAGE_SIZE >> CLASS_BITS, 255 classes).  A class
# stores its objects in equal slots of "zspages": chains of 1..chain_size single pages
# taken from the arena one at a time, so a slot may straddle the boundary between two
# pages of a chain (such an object is then two slices of the arena).  The chain length
# of each class is the one with the least tail waste (calculate_zspage_chain_size, since
# 6.3, CONFIG_ZSMALLOC_CHAIN_SIZE default 8); adjacent classes with the same (pages per
# zspage, objects per zspage) are merged into the larger one (can_merge in
# zs_create_pool).  Classes with one object in one page are "huge": everything above
# the largest non-huge class lands in the single 4096-byte huge class.
#
# Every zspage of a class sits in one of 12 fullness groups (ZS_INUSE_RATIO_0, _10, ...,
# _99, _100, since 6.3): 0 = empty (freed at once), 11 = full, g in 1..10 when
# (100 * inuse / objs) // 10 + 1 == g.  zs_malloc takes the most recently inserted
# zspage of the fullest non-full group (find_get_zspage).  compact() follows
# __zs_compact: per class, from the largest class down, move objects from the sparsest
# zspage (isolate_src_zspage) into the densest one (isolate_dst_zspage) until
# zs_can_compact says no whole zspage can be freed, and give emptied zspages' pages back
# to the arena.  Handles are indirect, as in the kernel (a handle names a slot in the
# handle table, which records where the object lives), so they survive compaction.
#
# Handle header.  The kernel adds ZS_HANDLE_SIZE (8 bytes) to every request before it
# picks a class, and stores the handle in the first 8 bytes of every non-huge object
# (obj_malloc: link->handle), so that migration can find the handle of an object it
# moves (find_alloced_obj).  handle_header=True (the default) models that faithfully:
# the 8 bytes are reserved and written in the arena, so the model packs exactly as
# densely as the kernel.  handle_header=False keeps the handle out of band (in the
# zspage's Python metadata, as zswap keeps its zswap_entry outside the pool): each object
# then asks 8 bytes less and may fall one class lower, and huge_class_size
# (zs_huge_class_size) moves up by 8.  That is not a sure gain: what a class costs per
# object (pages_per_zspage * PAGE_SIZE / objs_per_zspage) is not monotonic in its size,
# and every class in use has one partly filled zspage, so the total can move either way
# (on a 24 MiB heap corpus it was 0.7% *more* pages).  The default therefore stays
# faithful, and then the model's pool pages equal the kernel's for the same objects
# (measured with `swapd bench density` against zram: 0.994x on that corpus, the
# difference being Python's lz4 output, 0.2% smaller than the kernel's).  In both modes
# the model also keeps a slot -> handle list per zspage (ZsPage.owners) so that compaction
# does not have to parse headers; with the header on, _check verifies that they agree.
#
# Not modelled: page migration of single zspage pages (zs_page_migrate) and the deferred
# free when a zspage's pages cannot be locked (kick_deferred_free): the arena never moves
# or locks pages.  zs_malloc drops the class lock around alloc_zspage because the page
# allocator may sleep; here the lock is held, the arena does not sleep.
#
# Hot paths (malloc/free/read/write) are written for CPython: per class, a precomputed
# slot table (page of the chain, offset, room to the page end), a bit mask of non-empty
# fullness groups and the newest zspage of each group, so find_get_zspage is O(1); locks
# are acquired and released directly (cheaper than ``with`` in 3.11).
#
# Locks.  lock="class" gives each size class its own lock (the kernel before 6.2 and
# again since 6.11, "mm/zsmalloc: change back to per-size_class lock"); lock="pool" makes
# every class share one pool lock (6.2 to 6.10, commit c0547d0b6a4b "zsmalloc:
# consolidate zs_pool's migrate_lock and size_class's locks", part of the zsmalloc
# writeback series).  The switch only decides which lock object the classes point at;
# the code paths are the same.  A handle carries its class index in its low 8 bits (as
# the 2026 "encode size_class index into obj" patches do), so free/read/write find the
# class, and its lock, without a pool-wide lookup (the kernel needs pool->lock, an rwlock
# since 6.11, to find the zspage of a handle safely).  Reads and writes copy under the
# class lock, which also stands in for the kernel's per-zspage lock against migration.
#
# Lock order: ZsPool._compact_lock -> SizeClass.lock (ascending class index when several
# are held, only in _check) -> PageArena._lock (leaf).
#
# Invariants (checked by ZsPool._check):
#   * a zspage with inuse objects is in exactly the group fg_of[inuse] of its class, and
#     in no other; no empty zspage is kept; inuse == objs - len(free) == live owners;
#   * every live handle's record points at a slot of a zspage of its class whose owner
#     is that handle, and its bytes lie inside that slot's pages;
#   * no two live objects (header included) overlap; no page is in two zspages;
#   * the sum of pages of all zspages == the arena's pages in use == total_pages().
#
# Prior art: mm/zsmalloc.c (Linux 6.18: get_size_class_index, calculate_zspage_chain_size,
# can_merge, get_fullness_group, find_get_zspage, obj_malloc, obj_free, zs_can_compact,
# __zs_compact, migrate_zspage), Documentation/mm/zsmalloc.rst.
"""zsmalloc: size classes, multi-page zspages and compaction, as in ``mm/zsmalloc.c``.

See the comment at the top of this file for the design, invariants and lock order.
"""

from __future__ import annotations

import itertools
import mmap
import struct
import threading
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any, ClassVar, cast

from swapd.arena import DEFAULT_MAX_PAGES, PAGE_SHIFT, PAGE_SIZE
from swapd.backend import Backend, Buffer, PoolStats
from swapd.errors import (
    ConfigError,
    DoubleFreeError,
    InvalidHandleError,
    InvariantError,
    PoolExhaustedError,
)

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


_pack_handle = struct.Struct("<Q").pack_into  # the 8-byte handle header


def _not_a_handle(handle: object) -> InvalidHandleError:
    return InvalidHandleError(f"zsmalloc: {handle!r} is not a handle of this pool")


class ZsPage:
    """A chain of arena pages holding ``objs_per_zspage`` equal slots of one class.

    All fields are under ``cls.lock``.
    """

    __slots__ = ("cls", "fg", "free", "inuse", "owners", "pages")

    def __init__(self, cls: SizeClass, pages: tuple[int, ...]) -> None:
        n = cls.objs_per_zspage
        self.cls = cls
        self.pages = pages  # arena page numbers, first page first
        self.inuse = 0  # live objects
        # Free slots, a LIFO stack like the kernel's in-place freelist: slot 0 first.
        self.free: list[int] = list(range(n - 1, -1, -1))
        self.fg = ZS_INUSE_RATIO_0  # fullness group this zspage is listed in (0: none)
        self.owners: list[int] = [0] * n  # slot -> handle (0: free); the reverse map

    def __repr__(self) -> str:
        return f"<ZsPage class={self.cls.size} pages={self.pages} inuse={self.inuse}>"


# A live object's record in the handle table:
# (address, length in first page, address of the rest (0), length of the rest (0),
#  zspage, slot).  An object that straddles a page boundary has two parts.
_Rec = tuple[int, int, int, int, ZsPage, int]


class SizeClass:
    """One (possibly merged) size class: its zspages, fullness groups and handles.

    Every mutable field is under ``lock`` (a class lock, or the shared pool lock).
    """

    __slots__ = (
        "fg_of",
        "groups",
        "handles",
        "hdr",
        "huge",
        "index",
        "lock",
        "newest",
        "nonempty",
        "object_bytes",
        "objs_per_zspage",
        "pages_per_zspage",
        "seq",
        "size",
        "slot_pos",
        "zspages",
    )

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
        self.fg_of = [fullness_group(i, objs_per_zspage) for i in range(objs_per_zspage + 1)]
        # groups[g]: zspages in fullness group g, insertion-ordered (newest last).
        self.groups: list[dict[ZsPage, None]] = [{} for _ in range(NR_FULLNESS_GROUPS)]
        # newest[g]: the zspage most recently listed in groups[g] (its list head), or None.
        self.newest: list[ZsPage | None] = [None] * NR_FULLNESS_GROUPS
        self.nonempty = 0  # bit g set <=> groups[g] is not empty
        # slot_pos[i] = (page of the chain, offset in it, bytes to that page's end) of the
        # payload of slot i (after the header): objects longer than that straddle pages.
        self.slot_pos: list[tuple[int, int, int]] = []
        for i in range(objs_per_zspage):
            off = i * size + self.hdr
            inp = off & _PAGE_MASK
            self.slot_pos.append((off >> PAGE_SHIFT, inp, PAGE_SIZE - inp))
        self.handles: dict[int, _Rec] = {}  # live handle -> record
        self.seq = 0  # handles issued so far (a handle is seq << 8 | index)
        self.zspages = 0  # zspages allocated
        self.object_bytes = 0  # sum of live objects' sizes

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


class ZsPool(Backend):
    """The zsmalloc allocator: options ``chain_size``, ``lock``, ``handle_header``.

    ``chain_size`` (1..16, default 8): most pages per zspage.  ``lock``: ``"class"``
    (default) or ``"pool"``.  ``handle_header`` (default True): reserve the kernel's
    8-byte handle header in each non-huge object.  Thread-safe.
    """

    name: ClassVar[str] = "zsmalloc"
    description: ClassVar[str] = (
        "size classes in 16 B steps over multi-page zspages, fullness groups, compaction "
        "(mm/zsmalloc.c)"
    )
    version: ClassVar[str] = "1.0.0"

    def __init__(self, *, max_pages: int = DEFAULT_MAX_PAGES, chain_size: int = DEFAULT_CHAIN_SIZE,
                 lock: str = "class", handle_header: bool = True, **options: Any) -> None:
        if not isinstance(chain_size, int) or not 1 <= chain_size <= 16:
            raise ConfigError(f"zsmalloc: chain_size must be an int in 1..16, got {chain_size!r}")
        if lock not in ("class", "pool"):
            raise ConfigError(f"zsmalloc: lock must be 'class' or 'pool', got {lock!r}")
        super().__init__(max_pages=max_pages, **options)
        self.chain_size = chain_size
        self.lock_mode = lock
        self.handle_header = bool(handle_header)
        hs = ZS_HANDLE_SIZE if self.handle_header else 0
        self._buf = self.arena.buf
        # The arena's mmap: slicing it yields bytes in one copy.
        self._mm = cast(mmap.mmap, self.arena.buf.obj)
        pool_lock = threading.Lock() if lock == "pool" else None

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
            cls = SizeClass(i, size, ppz, opz, hs, pool_lock or threading.Lock())
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
        # Unique locks, in class-index order (one entry in pool mode).
        self._locks: list[threading.Lock] = list(dict.fromkeys(c.lock for c in self._classes))
        self._compact_lock = threading.Lock()  # one compaction at a time (kernel: atomic)
        self._pages_compacted = 0  # under _compact_lock

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

        Amortized O(1): O(1) with a zspage that has room; O(pages per zspage) arena calls
        otherwise.  Raises ObjectSizeError, DataTypeError, PoolExhaustedError.
        """
        if type(size) is not int or not 0 < size <= ZS_MAX_ALLOC_SIZE:
            self._check_size(size)  # raises the named error
        cls = self._class_for[size]
        lock = cls.lock
        lock.acquire()
        try:
            mask = cls.nonempty & _PARTIAL_MASK
            if mask:
                # find_get_zspage: the newest zspage of the fullest non-full group.
                g = mask.bit_length() - 1
                zs = cls.newest[g]
                assert zs is not None
            else:
                zs = self._alloc_zspage_locked(cls)
                g = 0
            idx = zs.free.pop()
            inuse = zs.inuse + 1
            zs.inuse = inuse
            ng = cls.fg_of[inuse]
            if ng != g:
                groups = cls.groups
                if g:  # _unlist_locked, inlined
                    grp = groups[g]
                    del grp[zs]
                    if cls.newest[g] is zs:
                        if grp:
                            cls.newest[g] = next(reversed(grp))
                        else:
                            cls.newest[g] = None
                            cls.nonempty &= ~(1 << g)
                groups[ng][zs] = None
                cls.newest[ng] = zs
                cls.nonempty |= 1 << ng
                zs.fg = ng
            seq = cls.seq + 1
            cls.seq = seq
            handle = (seq << CLASS_BITS) | cls.index
            zs.owners[idx] = handle
            pno, inp, room = cls.slot_pos[idx]
            pages = zs.pages
            a = (pages[pno] << PAGE_SHIFT) + inp
            if size <= room:
                cls.handles[handle] = (a, size, 0, 0, zs, idx)
            else:
                cls.handles[handle] = (a, room, pages[pno + 1] << PAGE_SHIFT, size - room, zs, idx)
            cls.object_bytes += size
            if cls.hdr:
                # obj_malloc: record the handle in the header of the allocated chunk.
                _pack_handle(self._buf, a - ZS_HANDLE_SIZE, handle)
            return handle
        finally:
            lock.release()

    def free(self, handle: int) -> None:
        """Free the object; an emptied zspage's pages go back to the arena at once.

        O(1), plus O(pages per zspage) arena calls when the zspage empties.  Raises
        InvalidHandleError or DoubleFreeError.
        """
        if type(handle) is not int or handle <= 0 or (
                cls := self._by_index[handle & _CLASS_MASK]) is None:
            raise _not_a_handle(handle)
        lock = cls.lock
        lock.acquire()
        try:
            rec = cls.handles.pop(handle, None)
            if rec is None:
                raise self._bad_handle(cls, handle, "free")
            zs = rec[4]
            idx = rec[5]
            zs.owners[idx] = 0
            zs.free.append(idx)
            inuse = zs.inuse - 1
            zs.inuse = inuse
            cls.object_bytes -= rec[1] + rec[3]
            g = zs.fg
            ng = cls.fg_of[inuse]
            if ng != g:
                groups = cls.groups
                grp = groups[g]  # _unlist_locked, inlined
                del grp[zs]
                if cls.newest[g] is zs:
                    if grp:
                        cls.newest[g] = next(reversed(grp))
                    else:
                        cls.newest[g] = None
                        cls.nonempty &= ~(1 << g)
                zs.fg = ng
                if ng:
                    groups[ng][zs] = None
                    cls.newest[ng] = zs
                    cls.nonempty |= 1 << ng
                else:
                    self._free_zspage_locked(cls, zs)
        finally:
            lock.release()

    def read(self, handle: int) -> bytes:
        """Return a copy of the object.  O(size).  Raises InvalidHandleError."""
        if type(handle) is not int or handle <= 0 or (
                cls := self._by_index[handle & _CLASS_MASK]) is None:
            raise _not_a_handle(handle)
        lock = cls.lock
        lock.acquire()
        try:
            rec = cls.handles.get(handle)
            if rec is None:
                raise self._bad_handle(cls, handle, "read")
            a, n1, b, n2, _, _ = rec
            if not n2:
                out: bytes = self._mm[a:a + n1]
                return out
            mm = self._mm
            return mm[a:a + n1] + mm[b:b + n2]
        finally:
            lock.release()

    def write(self, handle: int, data: Buffer) -> None:
        """Copy ``data`` (exactly the object's size) into the object.  O(size).

        Raises InvalidHandleError, DataTypeError or ObjectSizeError.
        """
        if type(handle) is not int or handle <= 0 or (
                cls := self._by_index[handle & _CLASS_MASK]) is None:
            raise _not_a_handle(handle)
        lock = cls.lock
        lock.acquire()
        try:
            rec = cls.handles.get(handle)
            if rec is None:
                raise self._bad_handle(cls, handle, "write")
            a, n1, b, n2, _, _ = rec
            buf = self._buf
            if type(data) is bytes and len(data) == n1 + n2:
                if not n2:
                    buf[a:a + n1] = data
                    return
                view = memoryview(data)
            else:
                view = self._check_data(data, n1 + n2)
            buf[a:a + n1] = view[:n1]
            if n2:
                buf[b:b + n2] = view[n1:]
        finally:
            lock.release()

    def size_of(self, handle: int) -> int:
        """Size in bytes of a live object.  O(1).  Raises InvalidHandleError."""
        if type(handle) is not int or handle <= 0 or (
                cls := self._by_index[handle & _CLASS_MASK]) is None:
            raise _not_a_handle(handle)
        with cls.lock:
            rec = cls.handles.get(handle)
            if rec is None:
                raise self._bad_handle(cls, handle, "size_of")
            return rec[1] + rec[3]

    def total_pages(self) -> int:
        """Pages held by all zspages (== the arena's pages in use).  O(1)."""
        return self.arena.pages_in_use

    def compact(self) -> int:
        """Move objects from sparse zspages into dense ones; return pages freed.

        The kernel's zs_compact: one compaction at a time (a concurrent call returns 0),
        classes from the largest down, each under its own lock.  O(objects moved + zspages).
        Handles stay valid.
        """
        if not self._compact_lock.acquire(blocking=False):
            return 0
        try:
            freed = 0
            for cls in reversed(self._classes):
                with cls.lock:
                    freed += self._compact_class_locked(cls)
            self._pages_compacted += freed
            return freed
        finally:
            self._compact_lock.release()

    def stats(self) -> ZsPoolStats:
        """A snapshot of the pool and of every class in use.  O(classes)."""
        classes = []
        objects = object_bytes = 0
        for cls in self._classes:
            with cls.lock:
                if not cls.zspages:
                    continue
                n = len(cls.handles)
                allocated = cls.zspages * cls.objs_per_zspage
                objects += n
                object_bytes += cls.object_bytes
                classes.append(ZsClassStats(
                    index=cls.index, size=cls.size, pages_per_zspage=cls.pages_per_zspage,
                    objs_per_zspage=cls.objs_per_zspage, huge=cls.huge, objects=n,
                    object_bytes=cls.object_bytes, zspages=cls.zspages,
                    pages=cls.zspages * cls.pages_per_zspage, objs_allocated=allocated,
                    freeable=self._can_compact_locked(cls),
                    fullness=tuple(len(g) for g in cls.groups)))
        return ZsPoolStats(total_pages=self.total_pages(), objects=objects,
                           object_bytes=object_bytes, pages_compacted=self._pages_compacted,
                           lock=self.lock_mode, chain_size=self.chain_size,
                           handle_header=self.handle_header,
                           huge_class_size=self.huge_class_size, classes=tuple(classes))

    # -- internals ----------------------------------------------------------------------

    def _bad_handle(self, cls: SizeClass, handle: int, op: str) -> InvalidHandleError:
        """The error for a handle not live in ``cls`` (caller holds cls.lock)."""
        if 0 < handle >> CLASS_BITS <= cls.seq:
            if op == "free":
                return DoubleFreeError(f"zsmalloc: double free of handle {handle:#x}")
            return InvalidHandleError(f"zsmalloc: {op} of freed handle {handle:#x}")
        return InvalidHandleError(f"zsmalloc: {op} of unknown handle {handle:#x}")

    def _alloc_zspage_locked(self, cls: SizeClass) -> ZsPage:
        """alloc_zspage: take the chain's pages from the arena.  O(pages per zspage).

        Unlike the kernel, which drops the class lock around the page allocation, the
        lock is held: the arena never sleeps.  On exhaustion the pages taken are returned
        and PoolExhaustedError propagates.
        """
        alloc = self.arena.alloc_page
        pages: list[int] = []
        try:
            for _ in range(cls.pages_per_zspage):
                pages.append(alloc())
        except PoolExhaustedError:
            for pfn in pages:
                self.arena.free_page(pfn)
            raise
        cls.zspages += 1
        return ZsPage(cls, tuple(pages))

    def _free_zspage_locked(self, cls: SizeClass, zs: ZsPage) -> None:
        """free_zspage of an empty zspage already off the fullness lists."""
        cls.zspages -= 1
        free_page = self.arena.free_page
        for pfn in zs.pages:
            free_page(pfn)

    def _can_compact_locked(self, cls: SizeClass) -> int:
        """zs_can_compact: pages that whole unused zspages' worth of slots would free."""
        wasted = cls.zspages * cls.objs_per_zspage - len(cls.handles)
        return wasted // cls.objs_per_zspage * cls.pages_per_zspage if wasted > 0 else 0

    def _isolate_locked(self, cls: SizeClass, groups: range) -> ZsPage | None:
        """Take the newest zspage of the first non-empty group of ``groups`` off its list."""
        for g in groups:
            zs = cls.newest[g]
            if zs is not None:
                self._unlist_locked(cls, zs, g)
                zs.fg = ZS_INUSE_RATIO_0
                return zs
        return None

    def _unlist_locked(self, cls: SizeClass, zs: ZsPage, g: int) -> None:
        """Remove ``zs`` from fullness group ``g``, keeping newest and the mask right.  O(1)."""
        grp = cls.groups[g]
        del grp[zs]
        if cls.newest[g] is zs:
            if grp:
                cls.newest[g] = next(reversed(grp))
            else:
                cls.newest[g] = None
                cls.nonempty &= ~(1 << g)

    def _putback_locked(self, cls: SizeClass, zs: ZsPage) -> int:
        """putback_zspage: list ``zs`` in its fullness group; return the group."""
        g = cls.fg_of[zs.inuse]
        if g:
            cls.groups[g][zs] = None
            cls.newest[g] = zs
            cls.nonempty |= 1 << g
        zs.fg = g
        return g

    def _compact_class_locked(self, cls: SizeClass) -> int:
        """__zs_compact for one class; return pages freed.  O(objects moved)."""
        freed = 0
        dst: ZsPage | None = None
        while self._can_compact_locked(cls):
            if dst is None:
                dst = self._isolate_locked(cls, range(ZS_INUSE_RATIO_99, ZS_INUSE_RATIO_0, -1))
                if dst is None:
                    break
            src = self._isolate_locked(cls, range(1, ZS_INUSE_RATIO_99 + 1))
            if src is None:
                break
            self._migrate_zspage_locked(cls, src, dst)
            if self._putback_locked(cls, src) == ZS_INUSE_RATIO_0:
                self._free_zspage_locked(cls, src)
                freed += cls.pages_per_zspage
            if dst.inuse == cls.objs_per_zspage:
                self._putback_locked(cls, dst)
                dst = None
        if dst is not None:
            self._putback_locked(cls, dst)
        return freed

    def _migrate_zspage_locked(self, cls: SizeClass, src: ZsPage, dst: ZsPage) -> None:
        """migrate_zspage: move src's objects, in slot order, into dst until either ends."""
        handles = cls.handles
        mm = self._mm
        buf = self._buf
        hdr = cls.hdr
        for idx, handle in enumerate(src.owners):
            if not handle:
                continue
            a, n1, b, n2, _, _ = handles[handle]
            data = mm[a:a + n1] + mm[b:b + n2] if n2 else mm[a:a + n1]
            size = n1 + n2
            # obj_malloc in dst
            didx = dst.free.pop()
            dst.inuse += 1
            dst.owners[didx] = handle
            off = didx * cls.size + hdr
            inp = off & _PAGE_MASK
            pno = off >> PAGE_SHIFT
            da = (dst.pages[pno] << PAGE_SHIFT) + inp
            if inp + size <= PAGE_SIZE:
                buf[da:da + size] = data
                handles[handle] = (da, size, 0, 0, dst, didx)
            else:
                d1 = PAGE_SIZE - inp
                db = dst.pages[pno + 1] << PAGE_SHIFT
                buf[da:da + d1] = data[:d1]
                buf[db:db + size - d1] = data[d1:]
                handles[handle] = (da, d1, db, size - d1, dst, didx)
            if hdr:
                buf[da - ZS_HANDLE_SIZE:da] = handle.to_bytes(8, "little")
            # obj_free in src
            src.owners[idx] = 0
            src.free.append(idx)
            src.inuse -= 1
            if dst.inuse == cls.objs_per_zspage or not src.inuse:
                break

    # -- invariants ---------------------------------------------------------------------

    def _check(self) -> None:
        """Verify every invariant of the header comment.  O(objects + pages)."""
        with ExitStack() as stack:
            for lk in self._locks:
                stack.enter_context(lk)
            self._check_locked()
        self.arena._check()

    def _check_locked(self) -> None:
        spans: list[tuple[int, int, int]] = []  # (start, end, handle) of every live object
        seen_pages: set[int] = set()
        total_pages = 0
        for cls in self._classes:
            zspages: set[ZsPage] = set()
            mask = 0
            for g, grp in enumerate(cls.groups):
                if g == ZS_INUSE_RATIO_0 and grp:
                    raise InvariantError(f"{cls}: empty zspages kept on the lists")
                if grp:
                    mask |= 1 << g
                for zs in grp:
                    if zs in zspages:
                        raise InvariantError(f"{cls}: {zs} listed twice")
                    zspages.add(zs)
                    self._check_zspage(cls, zs, g)
                    for pfn in zs.pages:
                        if pfn in seen_pages:
                            raise InvariantError(f"page {pfn} belongs to two zspages")
                        seen_pages.add(pfn)
            if mask != cls.nonempty:
                raise InvariantError(f"{cls}: group mask {cls.nonempty:#x} != {mask:#x}")
            if len(zspages) != cls.zspages:
                raise InvariantError(f"{cls}: {len(zspages)} zspages listed, {cls.zspages} counted")
            total_pages += cls.zspages * cls.pages_per_zspage
            nbytes = 0
            for handle, rec in cls.handles.items():
                nbytes += self._check_object(cls, handle, rec, zspages, spans)
            live = sum(zs.inuse for zs in zspages)
            if live != len(cls.handles):
                raise InvariantError(f"{cls}: {len(cls.handles)} handles, {live} slots in use")
            if nbytes != cls.object_bytes:
                raise InvariantError(f"{cls}: object_bytes {cls.object_bytes} != {nbytes}")
        spans.sort()
        for (_s0, e0, h0), (s1, _, h1) in itertools.pairwise(spans):
            if s1 < e0:
                raise InvariantError(f"objects {h0:#x} and {h1:#x} overlap at {s1:#x}")
        if total_pages != self.arena.pages_in_use:
            raise InvariantError(
                f"zspages hold {total_pages} pages, the arena has {self.arena.pages_in_use} in use")

    def _check_zspage(self, cls: SizeClass, zs: ZsPage, g: int) -> None:
        if zs.cls is not cls or zs.fg != g or cls.fg_of[zs.inuse] != g:
            raise InvariantError(f"{zs}: in group {g}, fg={zs.fg}, expected {cls.fg_of[zs.inuse]}")
        if len(zs.pages) != cls.pages_per_zspage:
            raise InvariantError(f"{zs}: {len(zs.pages)} pages, class needs {cls.pages_per_zspage}")
        n = cls.objs_per_zspage
        if len(set(zs.free)) != len(zs.free) or any(not 0 <= i < n for i in zs.free):
            raise InvariantError(f"{zs}: corrupt free list {zs.free}")
        if zs.inuse != n - len(zs.free):
            raise InvariantError(f"{zs}: inuse {zs.inuse} but {len(zs.free)} of {n} slots free")
        if any(zs.owners[i] for i in zs.free):
            raise InvariantError(f"{zs}: a free slot has an owner")
        if sum(1 for h in zs.owners if h) != zs.inuse:
            raise InvariantError(f"{zs}: owners disagree with inuse {zs.inuse}")

    def _check_object(self, cls: SizeClass, handle: int, rec: _Rec, zspages: set[ZsPage],
                      spans: list[tuple[int, int, int]]) -> int:
        a, n1, b, n2, zs, idx = rec
        if handle & _CLASS_MASK != cls.index or zs not in zspages or zs.owners[idx] != handle:
            raise InvariantError(f"handle {handle:#x}: record {rec[:4]} slot {idx} not owned")
        size = n1 + n2
        if size > cls.size - cls.hdr:
            raise InvariantError(f"handle {handle:#x}: {size} bytes in a {cls.size}-byte slot")
        off = idx * cls.size + cls.hdr
        pno = off >> PAGE_SHIFT
        exp_a = (zs.pages[pno] << PAGE_SHIFT) + (off & _PAGE_MASK)
        if a != exp_a:
            raise InvariantError(f"handle {handle:#x}: address {a:#x}, slot says {exp_a:#x}")
        if (off & _PAGE_MASK) + size <= PAGE_SIZE:
            if n2 or b:
                raise InvariantError(f"handle {handle:#x}: split but fits one page")
        elif n1 != PAGE_SIZE - (off & _PAGE_MASK) or b != zs.pages[pno + 1] << PAGE_SHIFT:
            raise InvariantError(f"handle {handle:#x}: wrong split {rec[:4]}")
        start = a - cls.hdr
        if cls.hdr:
            stored = int.from_bytes(self._mm[start:a], "little")
            if stored != handle:
                raise InvariantError(f"handle {handle:#x}: header holds {stored:#x}")
        spans.append((start, a + n1, handle))
        if n2:
            spans.append((b, b + n2, handle))
        return size
