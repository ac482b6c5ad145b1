"""A page arena of real memory for the allocator backends, in a state region.

The arena's pages are the ``pages`` array of a memfd state region (kind
``arena``, docs/state-format.md section 3), mapped MAP_SHARED once at its
largest size, so another process given the fd can read the pool, and a
restarted daemon can adopt it.  Pages are handed out one 4 KiB page at a time,
lowest free page first.  A page handed out is touched so that it is really
backed; a page given back is punched out of the memfd
(``fallocate(PUNCH_HOLE)``) so the kernel frees it at once.  Therefore
``pages_in_use`` is what the pool really costs in RAM, and
:meth:`PageArena.resident_pages` (``mincore(2)``, which for a shmem mapping
reports the file's page cache) lets a test prove it.

This mirrors how ``mm/zsmalloc.c`` takes pages from the page allocator
(``alloc_page``) for each zspage and frees them back when the zspage empties.

Like the kernel's per-cpu page lists (``mm/page_alloc.c``: ``free_unref_page``
parks a freed page on the pcp list, ``rmqueue_pcplist`` hands it out again
without touching the buddy allocator, and ``free_pcppages_bulk`` returns
``pcp->batch`` pages once the list grows past ``pcp->high``), the arena keeps up
to ``cache_pages`` freed pages resident in a LIFO cache.  A page freed and
allocated again costs neither a hole punch nor a first-touch fault, and when
the cache overflows, a batch of its highest-numbered pages goes back to the
kernel with one ``fallocate`` per contiguous run.  Cached pages are not in
use: ``pages_in_use`` (what ``total_pages()`` reports, like zsmalloc's
``pages_allocated``) excludes them, ``cached_pages`` reports them,
``resident_pages()`` sees them, and :meth:`PageArena.trim` returns them.

State in the region: one byte per page in the ``state`` array (FREE 0, USED 1,
CACHED 2) and the scalars ``top``, ``in_use`` and ``cache_pages``.  The free
list and the cache are Python indexes over that array, rebuilt from it by
:meth:`PageArena.adopt` (the cache's LIFO order is not kept).

Lock order: backend locks -> ``PageArena._lock``.  The arena lock is a leaf.
Invariant: a page index below ``_top`` is in exactly one of {in use, cache,
free list} and its state byte says which; pages in use or cached are resident,
pages on the free list and above ``_top`` are not (they are holes).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import threading

from sortedcontainers import SortedList

from swapd.errors import InvariantError, PoolExhaustedError
from swapd.kernel.memfd import punch_hole
from swapd.pages import PAGE_SHIFT, PAGE_SIZE
from swapd.state import ArraySpec, StateRegion

__all__ = ["DEFAULT_CACHE_PAGES", "DEFAULT_MAX_PAGES", "KIND", "KIND_VERSION", "PAGE_SHIFT",
           "PAGE_SIZE", "PageArena"]

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
_libc.mincore.restype = ctypes.c_int

DEFAULT_MAX_PAGES = 1 << 20  # 4 GiB of address space reserved, nothing committed
DEFAULT_CACHE_PAGES = 256  # freed pages kept resident for reuse (1 MiB), like pcp->high
KIND = "arena"
KIND_VERSION = 1
FREE, USED, CACHED = 0, 1, 2  # the state byte of a page


class PageArena:
    """Hands out whole pages of a memfd state region.

    ``buf`` is a writable memoryview over the whole ``pages`` array; page ``pfn``
    occupies ``buf[pfn << 12 : (pfn + 1) << 12]`` and ``buf.obj`` is the mmap
    whose byte 0 is page 0.  ``region`` is the state region (``region.fd`` is
    what another process needs).
    """

    def __init__(self, max_pages: int = DEFAULT_MAX_PAGES,
                 cache_pages: int = DEFAULT_CACHE_PAGES, *,
                 region: StateRegion | None = None) -> None:
        if max_pages <= 0:
            raise ValueError(f"max_pages must be positive, got {max_pages}")
        if cache_pages < 0:
            raise ValueError(f"cache_pages must not be negative, got {cache_pages}")
        if region is None:
            region = StateRegion.create(KIND, KIND_VERSION, [
                ArraySpec("state", "B", max_pages),
                ArraySpec("pages", "B", max_pages, PAGE_SIZE),
            ], ["top", "in_use", "cache_pages"])
            region.set("cache_pages", cache_pages)
        self.region = region
        self.max_pages = max_pages
        self.cache_pages = cache_pages
        self._state = region.view("state")  # under _lock for writers
        self._mm = region.mmap_of("pages")
        self._pages_off = region.offset("pages")
        self._covered = 0  # pages inside the memfd's size (grown before they are touched)
        self.buf = memoryview(self._mm)
        self.address = 0
        self._anchor: ctypes.c_char | None = None
        if region.writable:
            self._anchor = ctypes.c_char.from_buffer(self._mm)
            self.address = ctypes.addressof(self._anchor)
        self._lock = threading.Lock()
        self._free: SortedList = SortedList()  # under _lock; pages below _top not in use
        self._top = 0  # under _lock; pages >= _top were never handed out (or trimmed)
        self._in_use = 0  # under _lock
        self._cache: list[int] = []  # under _lock; freed pages still resident, LIFO
        self._scalars = region.scalars
        self._i_top = region.scalar_index("top")
        self._i_in_use = region.scalar_index("in_use")

    @classmethod
    def adopt(cls, fd: int, *, writable: bool = True) -> PageArena:
        """The arena of state region ``fd`` (taken over: closed with the arena).

        The free list and the cache are rebuilt from the state bytes.  StateFormatError if
        ``fd`` is not an arena region this code reads.  O(top).
        """
        region = StateRegion.adopt(fd, KIND, KIND_VERSION, writable=writable)
        try:
            self = cls(region.capacity("pages"), region.get("cache_pages"), region=region)
            top = region.get("top")
            state = self._state
            self._top = top
            self._covered = region.count("pages")
            for pfn in range(top):
                s = state[pfn]
                if s == USED:
                    self._in_use += 1
                elif s == CACHED:
                    self._cache.append(pfn)
                else:
                    self._free.add(pfn)
        except BaseException:
            region.close()
            raise
        return self

    def state_fds(self) -> dict[str, int]:
        """The arena's named state fd: ``{"arena": fd}``."""
        return {KIND: self.region.fd}

    # -- allocation -------------------------------------------------------------

    def alloc_page(self) -> int:
        """Return the lowest free page number, backed by real memory.  O(log n).

        Raises :class:`PoolExhaustedError` when every page is in use.
        """
        with self._lock:
            if self._cache:
                self._in_use += 1
                self._scalars[self._i_in_use] = self._in_use
                pfn: int = self._cache.pop()
                self._state[pfn] = USED
                return pfn  # still resident: no fault to take
            if self._free:
                pfn = self._free.pop(0)
            elif self._top < self.max_pages:
                pfn = self._top
                if pfn >= self._covered:  # grow the memfd (and the arrays' counts) first
                    self._covered = min(self.max_pages, pfn + 64)
                    self.region.set_count("pages", self._covered)
                    self.region.set_count("state", self._covered)
                self._top += 1
                self._scalars[self._i_top] = self._top
            else:
                raise PoolExhaustedError(
                    f"page arena exhausted: all {self.max_pages} pages are in use"
                )
            self._in_use += 1
            self._scalars[self._i_in_use] = self._in_use
            self._state[pfn] = USED
        # Touch the page so that the kernel backs it now: what we count, we pay.
        self._mm[pfn << PAGE_SHIFT] = 0
        return pfn

    def free_page(self, pfn: int) -> None:
        """Stop using page ``pfn``.  O(log n).

        The page is parked in the cache while it has room; otherwise it goes
        back to the kernel (a hole punched in the memfd) at once.
        """
        with self._lock:
            if not 0 <= pfn < self._top or self._state[pfn] != USED:
                raise InvariantError(f"page {pfn} freed but not in use")
            self._in_use -= 1
            self._scalars[self._i_in_use] = self._in_use
            self._state[pfn] = CACHED
            cache = self._cache
            cache.append(pfn)
            if len(cache) > self.cache_pages:
                # free_pcppages_bulk(): a batch of the highest pages, so the arena's top
                # can shrink and the runs are long.
                cache.sort()
                n = max(1, self.cache_pages // 4)
                self._release_locked(cache[-n:])
                del cache[-n:]

    def trim(self) -> int:
        """Give every cached page back to the kernel; return how many.  O(c log n)."""
        with self._lock:
            cached, self._cache = self._cache, []
            self._release_locked(sorted(cached))
        return len(cached)

    def _release_locked(self, pfns: list[int]) -> None:
        """Return sorted pages that are neither in use nor cached to the kernel (one
        ``fallocate(PUNCH_HOLE)`` per contiguous run) and free-list them.  O(k log n)."""
        assert self._lock.locked()
        i, k = 0, len(pfns)
        fd, off = self.region.fd, self._pages_off
        state = self._state
        while i < k:
            j = i + 1
            while j < k and pfns[j] == pfns[j - 1] + 1:
                j += 1
            punch_hole(fd, off + (pfns[i] << PAGE_SHIFT), (j - i) << PAGE_SHIFT)
            i = j
        free = self._free
        for pfn in pfns:
            state[pfn] = FREE
            free.add(pfn)
        while free and free[-1] == self._top - 1:
            free.pop()
            self._top -= 1
        self._scalars[self._i_top] = self._top

    # -- accounting -----------------------------------------------------------------

    @property
    def pages_in_use(self) -> int:
        """Pages handed out and not given back.  O(1)."""
        return self._in_use

    @property
    def cached_pages(self) -> int:
        """Freed pages kept resident for reuse (see :meth:`trim`).  O(1)."""
        return len(self._cache)

    def resident_pages(self) -> int:
        """Pages of the arena the kernel reports resident (``mincore``).  O(top)."""
        n = self._top
        if n == 0:
            return 0
        if not self.address:  # a read-only adopter: count what the file holds
            return int(self.region.allocated_bytes() >> PAGE_SHIFT)
        vec = (ctypes.c_ubyte * n)()
        if _libc.mincore(ctypes.c_void_p(self.address), n * PAGE_SIZE, vec) != 0:
            err = ctypes.get_errno()
            raise OSError(err, "mincore failed on the page arena")
        return sum(b & 1 for b in bytes(vec))

    def _check(self) -> None:
        """Assert the arena's invariants (and its state bytes and region).  O(n)."""
        with self._lock:
            if any(not 0 <= p < self._top for p in self._free):
                raise InvariantError("free page outside the used range")
            if any(not 0 <= p < self._top for p in self._cache):
                raise InvariantError("cached page outside the used range")
            if len(set(self._cache)) != len(self._cache) or any(
                p in self._free for p in self._cache
            ):
                raise InvariantError("a cached page is cached twice or also free")
            if len(self._cache) > self.cache_pages:
                raise InvariantError(f"{len(self._cache)} cached pages > {self.cache_pages}")
            if len(self._free) + len(self._cache) + self._in_use != self._top:
                raise InvariantError(
                    f"arena accounting: {len(self._free)} free + {len(self._cache)} cached + "
                    f"{self._in_use} in use != top {self._top}"
                )
            state = bytes(self._state[:self._top])
            if (state.count(USED) != self._in_use or state.count(CACHED) != len(self._cache)
                    or any(state[p] != CACHED for p in self._cache)
                    or any(self._state[self._top:self._covered])):
                raise InvariantError("arena: the state bytes disagree with the free list "
                                     "and the cache")
            if (self.region.get("top"), self.region.get("in_use")) != (self._top, self._in_use):
                raise InvariantError("arena: the region's scalars disagree with the arena")
            self.region._check()

    def close(self) -> None:
        """Unmap the arena and close its memfd.  Views handed out must have been released."""
        if self.region.fd < 0:
            return
        self.buf.release()
        self._anchor = None
        self.region.close()
