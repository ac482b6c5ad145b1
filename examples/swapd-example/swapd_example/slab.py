"""``slab``: an example allocator backend -- fixed-size slots in whole arena pages.

Design.  Objects are rounded up to a size class (a multiple of ``class_step`` bytes,
default 256); a page of class ``c`` holds ``PAGE_SIZE // c`` slots.  Each class keeps
the pages that have a free slot in a dict (insertion order), so ``malloc`` takes the
oldest page with room in O(1), or a new arena page.  A handle is a counter value that
is never reused, mapped to its record ``[pfn, slot, size]``; the record indirection is
what lets ``compact`` move an object without its handle changing.  A page whose last
object is freed goes back to the arena at once, so ``total_pages`` is exactly the pages
held.  Objects above ``PAGE_SIZE - class_step`` bytes get a page of their own (class
``PAGE_SIZE``), so ``max_size`` is a whole page.

Lock order: ``SlabPool._lock`` -> ``PageArena._lock`` (the arena's own).
Invariants (``_check``): every record's (pfn, slot) is used by no other record; each
page's used-slot count equals the records pointing into it and is below its capacity
iff the page is on its class's partial list; object bytes and counts add up; the
arena's pages in use equal the pages this pool holds.

Prior art: the kernel's slab allocators (one cache per object size), and zsmalloc's
size classes and compaction (``mm/zsmalloc.c``), much simplified.
"""

from __future__ import annotations

import threading
from typing import Any

from swapd.arena import DEFAULT_MAX_PAGES, PAGE_SHIFT, PAGE_SIZE
from swapd.backend import Backend, Buffer, PoolStats
from swapd.errors import (
    ConfigError,
    DoubleFreeError,
    InvalidHandleError,
    InvariantError,
)


class _Page:
    """One arena page of one size class: which slots are used."""

    __slots__ = ("cls", "free", "handles", "pfn")

    def __init__(self, pfn: int, cls: int) -> None:
        self.pfn = pfn
        self.cls = cls  # slot size in bytes
        n = PAGE_SIZE // cls
        self.free = list(range(n - 1, -1, -1))  # free slots, lowest on top
        self.handles: dict[int, int] = {}  # slot -> handle


class SlabPool(Backend):
    """Size-classed slots in whole pages.  malloc/free O(1); read/write O(size);
    compact O(objects moved)."""

    name = "slab"
    description = "example: fixed-size slots per size class (swapd-example package)"
    version = "0.1.0"

    def __init__(self, *, max_pages: int = DEFAULT_MAX_PAGES, class_step: int = 256,
                 **options: Any) -> None:
        if not isinstance(class_step, int) or isinstance(class_step, bool) or \
                class_step < 16 or PAGE_SIZE % class_step:
            raise ConfigError(f"slab: class_step must divide {PAGE_SIZE} and be >= 16, "
                              f"got {class_step!r}")
        super().__init__(max_pages=max_pages, **options)  # unknown options -> ConfigError
        self.class_step = class_step
        self._lock = threading.Lock()
        self._objs: dict[int, list[int]] = {}  # under _lock; handle -> [pfn, slot, size]
        self._pages: dict[int, _Page] = {}  # under _lock; pfn -> page
        self._partial: dict[int, dict[int, None]] = {}  # under _lock; class -> pfns with room
        self._next = 1  # under _lock; handles below it were handed out (never reused)
        self._bytes = 0  # under _lock
        self._compacted = 0  # under _lock

    @property
    def max_size(self) -> int:
        """Largest object: a whole page."""
        return PAGE_SIZE

    def _class_of(self, size: int) -> int:
        step = self.class_step
        c = -(-size // step) * step
        return PAGE_SIZE if c > PAGE_SIZE - step else c

    def _record_locked(self, handle: int, op: str) -> list[int]:
        rec = self._objs.get(handle) if type(handle) is int else None
        if rec is None:
            if type(handle) is int and 0 < handle < self._next:
                if op == "free":
                    raise DoubleFreeError(f"slab: handle {handle} was already freed")
                raise InvalidHandleError(f"slab: {op} of freed handle {handle}")
            raise InvalidHandleError(f"slab: {op} of unknown handle {handle!r}")
        return rec

    def malloc(self, size: int) -> int:
        """Reserve ``size`` bytes; return a new handle.  O(1)."""
        self._check_size(size)
        cls = self._class_of(size)
        with self._lock:
            partial = self._partial.setdefault(cls, {})
            if partial:
                page = self._pages[next(iter(partial))]
            else:
                pfn = self.arena.alloc_page()  # PoolExhaustedError leaves the pool as it was
                page = self._pages[pfn] = _Page(pfn, cls)
                partial[pfn] = None
            slot = page.free.pop()
            if not page.free:
                del partial[page.pfn]
            h = self._next
            self._next += 1
            page.handles[slot] = h
            self._objs[h] = [page.pfn, slot, size]
            self._bytes += size
            return h

    def free(self, handle: int) -> None:
        """Release the object; an emptied page goes back to the arena.  O(1)."""
        with self._lock:
            pfn, slot, size = self._record_locked(handle, "free")
            del self._objs[handle]
            self._bytes -= size
            self._release_slot_locked(self._pages[pfn], slot)

    def _release_slot_locked(self, page: _Page, slot: int) -> None:
        del page.handles[slot]
        page.free.append(slot)
        partial = self._partial[page.cls]
        if not page.handles:
            partial.pop(page.pfn, None)
            del self._pages[page.pfn]
            self.arena.free_page(page.pfn)
        else:
            partial[page.pfn] = None

    def _offset(self, pfn: int, slot: int, cls: int) -> int:
        return (pfn << PAGE_SHIFT) + slot * cls

    def read(self, handle: int) -> bytes:
        """A copy of the object.  O(size)."""
        with self._lock:
            pfn, slot, size = self._record_locked(handle, "read")
            off = self._offset(pfn, slot, self._pages[pfn].cls)
            return bytes(self.arena.buf[off:off + size])

    def write(self, handle: int, data: Buffer) -> None:
        """Store exactly ``size`` bytes into the object.  O(size)."""
        with self._lock:
            pfn, slot, size = self._record_locked(handle, "write")
            view = self._check_data(data, size)
            off = self._offset(pfn, slot, self._pages[pfn].cls)
            self.arena.buf[off:off + size] = view

    def page_of(self, handle: int) -> int:
        """The arena page holding the object (the optional hook of ``swapd sim writeback``)."""
        with self._lock:
            return self._record_locked(handle, "page_of")[0]

    def total_pages(self) -> int:
        """Arena pages held.  O(1)."""
        return len(self._pages)

    def compact(self) -> int:
        """Move objects from the emptiest partial pages into the fullest ones, per class;
        return the pages freed.  Handles stay valid (their records are updated)."""
        freed = 0
        with self._lock:
            buf = self.arena.buf
            for cls, partial in self._partial.items():
                while len(partial) > 1:
                    pages = sorted((self._pages[p] for p in partial),
                                   key=lambda pg: len(pg.handles))
                    src, dst = pages[0], pages[-1]
                    if len(src.handles) > len(dst.free):
                        break  # the sparsest page does not fit into the fullest one
                    for slot, h in list(src.handles.items()):
                        new = dst.free.pop()
                        a = self._offset(src.pfn, slot, cls)
                        b = self._offset(dst.pfn, new, cls)
                        buf[b:b + cls] = buf[a:a + cls]
                        dst.handles[new] = h
                        self._objs[h][0:2] = [dst.pfn, new]
                        self._release_slot_locked(src, slot)
                    if not dst.free:
                        partial.pop(dst.pfn, None)
                    freed += 1
            self._compacted += freed
        return freed

    def stats(self) -> PoolStats:
        """A frozen snapshot.  O(1)."""
        with self._lock:
            return PoolStats(len(self._pages), len(self._objs), self._bytes, self._compacted)

    def _check(self) -> None:
        """Verify every invariant of the module docstring (InvariantError).  O(objects)."""
        with self._lock:
            self.arena._check()
            seen: dict[tuple[int, int], int] = {}
            for h, (pfn, slot, size) in self._objs.items():
                page = self._pages.get(pfn)
                if page is None:
                    raise InvariantError(f"slab: handle {h} points to unheld page {pfn}")
                if (pfn, slot) in seen or page.handles.get(slot) != h:
                    raise InvariantError(f"slab: slot {pfn}:{slot} of handle {h} is shared "
                                         f"or not recorded")
                if not 0 < size <= page.cls:
                    raise InvariantError(f"slab: object of {size} bytes in class {page.cls}")
                seen[(pfn, slot)] = h
            for pfn, page in self._pages.items():
                n = PAGE_SIZE // page.cls
                if len(page.handles) + len(page.free) != n or not page.handles:
                    raise InvariantError(f"slab: page {pfn} slot accounting is wrong")
                if (pfn in self._partial.get(page.cls, {})) != bool(page.free):
                    raise InvariantError(f"slab: page {pfn} partial-list membership is wrong")
            if sum(r[2] for r in self._objs.values()) != self._bytes:
                raise InvariantError("slab: object_bytes out of sync")
            if self.arena.pages_in_use != len(self._pages):
                raise InvariantError(f"slab: arena has {self.arena.pages_in_use} pages in "
                                     f"use, the pool holds {len(self._pages)}")
