"""The allocator backend contract, shaped like the kernel's ``struct zpool_driver``.

An allocator backend stores variable-sized objects (compressed pages) in whole
pages of a :class:`~swapd.arena.PageArena` and names each object with an opaque
integer handle, as ``mm/zpool.c`` / ``mm/zsmalloc.c`` do (``zs_malloc`` returns
an ``unsigned long`` handle, never a pointer).  The layer above charges a pool
limit against :meth:`Backend.total_pages`, so that number must be the pages the
backend really holds.

Backends are plugins: a class registered in the entry-point group
``swapd.backends`` (see ``pyproject.toml``).  The core never imports a backend
by name.  A checklist for a backend author:

* subclass :class:`Backend`, set ``name``, ``description`` and ``version``;
* accept ``max_pages`` (arena size), ``arena_cache_pages`` and your own
  keyword options in ``__init__`` and pass the first two to
  ``Backend.__init__``; reject unknown options with
  :class:`~swapd.errors.ConfigError`;
* implement every abstract method with the complexity and failures stated here;
* make every method safe to call from several threads at once;
* implement ``_check`` so that it verifies every invariant of your layout,
  including that no two live objects overlap;
* run the shipped contract suite: ``pytest --swapd-backend NAME`` (the
  ``swapd.testing`` pytest plugin; no swapd source tree needed).
  docs/writing-a-backend.md walks through a complete example
  (``examples/swapd-example``).

Contract statements a backend author can rely on and must keep:

* **Handles** are positive ints, unique among live objects.  A backend may
  reuse a freed handle (zsmalloc recycles its handle slab objects); the layer
  never uses a handle after freeing it and never frees one twice.  A freed
  handle that has not been reissued must still raise (InvalidHandleError on
  read/write, DoubleFreeError on free).  Handles survive ``compact()``.
* **The arena API** is all a backend may use for object memory:
  ``arena.alloc_page()`` (PoolExhaustedError at ``max_pages``),
  ``arena.free_page(pfn)``, ``arena.buf`` (page ``pfn`` is
  ``buf[pfn << 12 : (pfn + 1) << 12]``), ``arena.pages_in_use``; a page goes back
  as soon as its last object is freed (the suite checks resident memory with
  ``mincore``).
* **Size limits**: ``0 < size <= max_size <= PAGE_SIZE``; an object's size never
  changes.  A backend with ``max_size < PAGE_SIZE`` cannot hold a page that does
  not compress; the layer sends such pages to the next tier.
* **Options** are the keyword parameters of ``__init__``, each with a default;
  :func:`swapd.plugins.make_backend` checks names and types against them (and
  converts strings) for the config's ``[backend.NAME]``, ``swapd sim
  --backend-opt`` and ``swapd bench --backend-opt``; the constructor does the
  range checks.
* ``page_of(handle)`` (optional) names the page holding an object, for
  ``swapd sim writeback``.

Misuse raises the named errors of :mod:`swapd.errors` and leaves the pool
intact: :class:`InvalidHandleError` (unknown or freed handle),
:class:`DoubleFreeError`, :class:`ObjectSizeError` (size 0, above
``max_size``, or data whose length differs from the allocated size),
:class:`DataTypeError` (data not bytes-like) and :class:`PoolExhaustedError`.

Handles.  A handle is an opaque positive int.  A backend may reuse the handle of
a freed object for a later one (the shipped ones reuse handle *records* and put a
generation in the handle, so a stale handle is still caught; see
``backends/_layout.py``).  Handles below ``2**44`` fit the swap table's key
field; a larger handle still works but costs the layer a side-table entry
(``swapd/layer/table.py``).  Size limits: ``max_size`` is at most PAGE_SIZE; a
backend whose ``max_size`` is below PAGE_SIZE gets no page that compresses worse
(the layer rejects it, as zswap does on -ENOSPC).

Opting into the array layout (docs/state-format.md).  A backend whose every piece
of state -- handle records, page descriptors, list links, free lists, counters --
lives in the arrays and scalars of state regions (``swapd.state.StateRegion``),
with Python objects holding only what the configuration determines, sets
``uses_state_layout = True`` and implements:

* :meth:`Backend.state_fds` -- ``{"arena": fd, KIND: fd, ...}``, the regions
  another process needs to read the pool;
* :meth:`Backend.adopt` -- a classmethod rebuilding the backend from those fds
  (validating every header; ``writable=False`` for a reader in another process);
* :meth:`Backend.checksum` -- the CRC-32 recorded for each object at its last
  write, so a reader tells a whole object from a torn one
  (:meth:`Backend.read_verified` checks it);
* a section of docs/state-format.md giving each record's offsets, widths and
  meaning, precise enough for a C reader.

A backend written against the older contract (no regions, Python objects)
keeps working unchanged: the defaults below say it has no state to hand over
and no checksums.  :class:`swapd.backend_adapter.StateTableAdapter` wraps such a
backend to give it compact handles and per-object checksums in a state region.
"""

from __future__ import annotations

import zlib
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from swapd.arena import DEFAULT_CACHE_PAGES, DEFAULT_MAX_PAGES, PAGE_SIZE, PageArena
from swapd.errors import CorruptPageError, DataTypeError, NotAdoptableError, ObjectSizeError

Buffer = bytes | bytearray | memoryview


@dataclass(frozen=True)
class PoolStats:
    """A snapshot of a pool's accounting.

    ``total_pages``: arena pages the pool holds (what a pool limit is charged).
    ``objects``: live handles.  ``object_bytes``: sum of their sizes.
    ``pages_compacted``: pages freed by ``compact()`` since creation.
    """

    total_pages: int
    objects: int
    object_bytes: int
    pages_compacted: int

    @property
    def pool_bytes(self) -> int:
        return self.total_pages * PAGE_SIZE


class Backend(ABC):
    """A zpool-like allocator of objects in a page arena.

    Allowed context for every method: any thread; methods take the backend's own
    locks.  Handles are opaque positive integers, unique among live objects.
    """

    #: Registry name (matches the entry-point name).
    name: ClassVar[str]
    #: One line for ``swapd backends``.
    description: ClassVar[str]
    #: Version of the backend implementation.
    version: ClassVar[str] = "0.1.0"
    #: True when all of the backend's state lives in state regions (see the module doc).
    uses_state_layout: ClassVar[bool] = False

    def __init__(self, *, max_pages: int = DEFAULT_MAX_PAGES,
                 arena_cache_pages: int = DEFAULT_CACHE_PAGES, **options: Any) -> None:
        """Create the arena: ``max_pages`` reserved, up to ``arena_cache_pages`` freed
        pages kept resident for reuse (0 returns every freed page at once)."""
        if options:
            from swapd.errors import ConfigError

            raise ConfigError(
                f"backend {self.name!r} does not take option(s): {', '.join(sorted(options))}"
            )
        self.arena = PageArena(max_pages, cache_pages=arena_cache_pages)

    # -- the zpool_driver surface -------------------------------------------------

    @property
    @abstractmethod
    def max_size(self) -> int:
        """Largest object ``malloc`` accepts, in bytes (at most PAGE_SIZE)."""

    @abstractmethod
    def malloc(self, size: int) -> int:
        """Reserve ``size`` bytes and return a handle.

        Raises ObjectSizeError for ``size <= 0`` or ``size > max_size``, and
        PoolExhaustedError when no page can be had.  Complexity is stated by
        each backend (amortized O(1) or O(log n) in the shipped ones).
        """

    @abstractmethod
    def free(self, handle: int) -> None:
        """Release the object.  Pages left empty go back to the arena.

        Raises InvalidHandleError for an unknown handle, DoubleFreeError for a
        handle already freed.
        """

    @abstractmethod
    def read(self, handle: int) -> bytes:
        """Return a copy of the object's ``size`` bytes.  O(size).

        Raises InvalidHandleError for an unknown or freed handle.
        """

    @abstractmethod
    def write(self, handle: int, data: Buffer) -> None:
        """Store ``data`` (exactly the allocated size) into the object.  O(size).

        Raises InvalidHandleError, DataTypeError (not bytes-like) or
        ObjectSizeError (wrong length).
        """

    @abstractmethod
    def total_pages(self) -> int:
        """Pages the pool holds in its arena.  O(1)."""

    @abstractmethod
    def compact(self) -> int:
        """Move objects to free pages; return the number of pages freed.

        Handles stay valid.  Backends that cannot move objects return 0.
        """

    @abstractmethod
    def stats(self) -> PoolStats:
        """Return a frozen snapshot of the pool's accounting.  O(1) or O(classes)."""

    @abstractmethod
    def _check(self) -> None:
        """Verify every invariant (raises InvariantError).  O(objects + pages)."""

    # -- the state layout (optional; see the module doc) ----------------------------

    def state_fds(self) -> dict[str, int]:
        """The state regions holding the pool, by name.  O(1).

        The default names only the arena (``{"arena": fd}``): a backend whose handles live
        in Python objects cannot be adopted from it.  The fds stay owned by the backend; a
        receiver dups them.
        """
        return dict(self.arena.state_fds())

    @classmethod
    def adopt(cls, fds: Mapping[str, int], *, writable: bool = True) -> Backend:
        """Rebuild a backend from the regions :meth:`state_fds` named, taking over the fds.

        ``writable=False`` maps them read-only: a reader in another process may ``read``,
        ``read_verified``, ``stats`` and ``_check`` but must not change the pool.  Raises
        NotAdoptableError when the backend keeps its state in Python objects, and
        ``swapd.state.StateFormatError`` naming the field when a header does not match.
        """
        raise NotAdoptableError(
            f"backend {cls.name!r} keeps its state in Python objects; it cannot be adopted")

    def checksum(self, handle: int) -> int | None:
        """The CRC-32 (zlib's) of the object as last written, None without checksums.

        Raises InvalidHandleError for a handle not live.  O(1).
        """
        self.size_of(handle)  # validates the handle
        return None

    def read_verified(self, handle: int) -> bytes:
        """``read`` and, if the backend keeps checksums, verify it.  O(size).

        Raises CorruptPageError naming the handle when the bytes do not match the
        checksum (a torn or never completed object), InvalidHandleError otherwise.
        """
        data = self.read(handle)
        want = self.checksum(handle)
        if want is not None and zlib.crc32(data) != want:
            raise CorruptPageError(
                f"{self.name}: object {handle:#x} ({len(data)} B) fails its checksum "
                f"(stored {want:#010x}, read {zlib.crc32(data):#010x})")
        return data

    def live_handles(self) -> list[int] | None:
        """Every live handle, for the layer's reconcile after an adoption (a crash between
        a store's ``malloc`` and the swap table's commit leaves an object nothing names).
        None: this backend cannot enumerate its objects (then nothing is released).
        O(objects); called only while nothing else uses the pool."""
        return None

    # -- helpers shared by implementations -----------------------------------------

    def size_of(self, handle: int) -> int:
        """Size in bytes of a live object (InvalidHandleError otherwise)."""
        return len(self.read(handle))

    def close(self) -> None:
        """Release the arena.  The pool must not be used afterwards."""
        self.arena.close()

    def _check_size(self, size: int) -> None:
        if not isinstance(size, int) or isinstance(size, bool):
            raise DataTypeError(f"{self.name}: size must be an int, got {type(size).__name__}")
        if size <= 0:
            raise ObjectSizeError(f"{self.name}: cannot allocate {size} bytes")
        if size > self.max_size:
            raise ObjectSizeError(
                f"{self.name}: {size} bytes is above the largest object ({self.max_size} bytes)"
            )

    def _check_data(self, data: object, size: int) -> memoryview:
        """Validate ``data`` for ``write`` and return a byte view of it."""
        if not isinstance(data, bytes | bytearray | memoryview):
            raise DataTypeError(
                f"{self.name}: write needs a bytes-like object, got {type(data).__name__}"
            )
        view = memoryview(data).cast("B") if isinstance(data, memoryview) else memoryview(data)
        if view.nbytes != size:
            raise ObjectSizeError(
                f"{self.name}: write of {view.nbytes} bytes into an object of {size} bytes"
            )
        return view
