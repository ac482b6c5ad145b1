"""A page arena of real memory for the allocator backends.

The arena reserves a range of private anonymous virtual memory up front
(``MAP_NORESERVE``, so the reservation costs nothing) and hands it out one
4 KiB page at a time, lowest free page first.  A page handed out is touched so
that it is really backed; a page given back is dropped with
``madvise(MADV_DONTNEED)`` so the kernel reclaims it at once.  Therefore
``pages_in_use`` is what the pool really costs in RAM, and
:meth:`PageArena.resident_pages` (``mincore(2)``) lets a test prove it.

This mirrors how ``mm/zsmalloc.c`` takes pages from the page allocator
(``alloc_page``) for each zspage and frees them back when the zspage empties.

Lock order: backend locks -> ``PageArena._lock``.  The arena lock is a leaf.
Invariant: a page index is in exactly one of {in use, free list, above ``_top``}.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import mmap
import threading

from sortedcontainers import SortedList

from swapd.errors import InvariantError, PoolExhaustedError

PAGE_SIZE = 4096
PAGE_SHIFT = 12
_MAP_NORESERVE = 0x4000  # <asm-generic/mman-common.h>; not exported by the mmap module

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
_libc.mincore.restype = ctypes.c_int

DEFAULT_MAX_PAGES = 1 << 20  # 4 GiB of address space reserved, nothing committed


class PageArena:
    """Hands out whole pages of a reserved anonymous mapping.

    ``buf`` is a writable memoryview over the whole reservation; page ``pfn``
    occupies ``buf[pfn << 12 : (pfn + 1) << 12]``.
    """

    def __init__(self, max_pages: int = DEFAULT_MAX_PAGES) -> None:
        if max_pages <= 0:
            raise ValueError(f"max_pages must be positive, got {max_pages}")
        self.max_pages = max_pages
        self._mm = mmap.mmap(
            -1,
            max_pages * PAGE_SIZE,
            flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | _MAP_NORESERVE,
        )
        self.buf = memoryview(self._mm)
        self._anchor = ctypes.c_char.from_buffer(self._mm)
        self.address = ctypes.addressof(self._anchor)
        self._lock = threading.Lock()
        self._free: SortedList = SortedList()  # under _lock; pages below _top not in use
        self._top = 0  # under _lock; pages >= _top were never handed out (or trimmed)
        self._in_use = 0  # under _lock

    # -- allocation -------------------------------------------------------------

    def alloc_page(self) -> int:
        """Return the lowest free page number, backed by real memory.  O(log n).

        Raises :class:`PoolExhaustedError` when every page is in use.
        """
        with self._lock:
            if self._free:
                pfn: int = self._free.pop(0)
            elif self._top < self.max_pages:
                pfn = self._top
                self._top += 1
            else:
                raise PoolExhaustedError(
                    f"page arena exhausted: all {self.max_pages} pages are in use"
                )
            self._in_use += 1
        # Touch the page so that the kernel backs it now: what we count, we pay.
        self._mm[pfn << PAGE_SHIFT] = 0
        return pfn

    def free_page(self, pfn: int) -> None:
        """Give page ``pfn`` back to the kernel (``MADV_DONTNEED``).  O(log n)."""
        self._mm.madvise(mmap.MADV_DONTNEED, pfn << PAGE_SHIFT, PAGE_SIZE)
        with self._lock:
            if not 0 <= pfn < self._top or pfn in self._free:
                raise InvariantError(f"page {pfn} freed but not in use")
            self._in_use -= 1
            if pfn == self._top - 1:
                self._top -= 1
                free = self._free
                while free and free[-1] == self._top - 1:
                    free.pop()
                    self._top -= 1
            else:
                self._free.add(pfn)

    # -- accounting -----------------------------------------------------------------

    @property
    def pages_in_use(self) -> int:
        """Pages handed out and not given back.  O(1)."""
        return self._in_use

    def resident_pages(self) -> int:
        """Pages of the reservation the kernel reports resident (``mincore``).  O(top)."""
        n = self._top
        if n == 0:
            return 0
        vec = (ctypes.c_ubyte * n)()
        if _libc.mincore(ctypes.c_void_p(self.address), n * PAGE_SIZE, vec) != 0:
            err = ctypes.get_errno()
            raise OSError(err, "mincore failed on the page arena")
        return sum(b & 1 for b in bytes(vec))

    def _check(self) -> None:
        """Assert the arena's invariants.  O(n)."""
        with self._lock:
            if any(not 0 <= p < self._top for p in self._free):
                raise InvariantError("free page outside the used range")
            if len(self._free) + self._in_use != self._top:
                raise InvariantError(
                    f"arena accounting: {len(self._free)} free + {self._in_use} in use "
                    f"!= top {self._top}"
                )

    def close(self) -> None:
        """Unmap the arena.  Views handed out must have been released."""
        self.buf.release()
        del self._anchor
        self._mm.close()
