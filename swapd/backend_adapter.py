"""An adapter that gives a backend written against the older contract the array layout's
handle records: compact, generation-checked handles and a CRC-32 per object.

Design.  A third-party backend that keeps its state in Python objects keeps working as it
is (the :class:`~swapd.backend.Backend` defaults say it has no checksums and cannot be
adopted).  Wrapped in :class:`StateTableAdapter`, it also gets what the shipped backends
offer on their own: every object has a record in the ``handles`` array of a state region of
kind ``adapted`` -- the wrapped backend's handle (u64), the size, a generation and the CRC-32
of the bytes last written (docs/state-format.md, section 5.5) -- so handles stay below 2**40
(they fit the swap table's key field, whatever the wrapped backend returns) and
:meth:`~swapd.backend.Backend.read_verified` can tell a torn object.  The wrapped backend's
own state is still Python objects, so the pool cannot be adopted by another process.

Lock order: ``StateTableAdapter._lock`` -> the wrapped backend's locks -> its arena's lock.
Invariant: a record is live iff its size is non-zero, and then its inner handle is live in
the wrapped backend with that size; the free records are exactly the chain from
``handle_free``.
"""

from __future__ import annotations

import threading
import zlib
from typing import Any, ClassVar, NoReturn

from swapd.backend import Backend, Buffer, PoolStats
from swapd.errors import DoubleFreeError, InvalidHandleError, InvariantError, PoolExhaustedError
from swapd.state import ArraySpec, StateRegion

KIND = "adapted"
KIND_VERSION = 1
R_WORDS = 4  # u32: inner handle low, inner handle high, info, crc
R_LO, R_HI, R_INFO, R_CRC = range(4)
SIZE_MASK = (1 << 13) - 1
GEN_SHIFT = 24
GEN_MASK = 0xFF
REC_MASK = (1 << 32) - 1
DEFAULT_RECORDS = 1 << 24

__all__ = ["StateTableAdapter"]


class StateTableAdapter(Backend):
    """Wrap ``inner`` (a Backend); the adapter owns it and closes it.  Thread-safe."""

    name: ClassVar[str] = "adapted"
    description: ClassVar[str] = "handle records and checksums in a state region around a backend"
    version: ClassVar[str] = "1.0.0"

    def __init__(self, inner: Backend, *, records: int = DEFAULT_RECORDS) -> None:
        # No Backend.__init__: the wrapped backend owns the arena.
        self.inner = inner
        self.arena = inner.arena
        self._lock = threading.Lock()
        self.state = StateRegion.create(KIND, KIND_VERSION, [
            ArraySpec("handles", "I", records + 1, R_WORDS * 4),
        ], ["handle_free", "checksum"])
        self.state.set_count("handles", 1)
        self.state.set("checksum", 1)
        self._R = self.state.view("handles")
        self._S = self.state.scalars
        self._s_free = self.state.scalar_index("handle_free")
        self._s_count = self.state.count_index("handles")
        self._cap = self.state.capacity("handles")

    @property
    def max_size(self) -> int:
        """The wrapped backend's largest object."""
        return self.inner.max_size

    def _rec_locked(self, handle: object, freeing: bool = False) -> int:
        if type(handle) is int and handle > 0:
            ri = handle & REC_MASK
            if 0 < ri < self._S[self._s_count]:
                info = self._R[ri * R_WORDS + R_INFO]
                if info >> GEN_SHIFT == handle >> 32 <= GEN_MASK:
                    if info & SIZE_MASK:
                        return ri
                    if freeing:
                        raise DoubleFreeError(f"adapted {self.inner.name}: handle {handle:#x} "
                                              "freed twice")
                    raise InvalidHandleError(f"adapted {self.inner.name}: handle {handle:#x} "
                                             "was freed")
                if handle >> 32 <= GEN_MASK:
                    self._stale(handle, freeing)
        raise InvalidHandleError(f"adapted {self.inner.name}: unknown handle {handle!r}")

    def _stale(self, handle: int, freeing: bool) -> NoReturn:
        cls = DoubleFreeError if freeing else InvalidHandleError
        raise cls(f"adapted {self.inner.name}: handle {handle:#x} is stale (record reused)")

    def _inner(self, ri: int) -> int:
        b = ri * R_WORDS
        return int(self._R[b + R_LO] | (self._R[b + R_HI] << 32))

    def malloc(self, size: int) -> int:
        """The wrapped backend's malloc, plus a record.  O(inner) + O(1)."""
        self._check_size(size)
        with self._lock:
            S, R = self._S, self._R
            ri = S[self._s_free]
            if not ri and S[self._s_count] >= self._cap:
                raise PoolExhaustedError(f"adapted {self.inner.name}: all {self._cap - 1} "
                                         "handles are in use")
            inner = self.inner.malloc(size)
            if inner >> 64:
                self.inner.free(inner)
                raise InvariantError(f"{self.inner.name}: handle {inner:#x} is wider than 64 bits")
            if ri:
                S[self._s_free] = R[ri * R_WORDS + R_LO]
            else:
                ri = S[self._s_count]
                self.state.set_count("handles", ri + 1)
            b = ri * R_WORDS
            gen = ((R[b + R_INFO] >> GEN_SHIFT) + 1) & GEN_MASK
            R[b + R_LO], R[b + R_HI] = inner & REC_MASK, inner >> 32
            R[b + R_INFO] = size | (gen << GEN_SHIFT)
            R[b + R_CRC] = 0
            return int((gen << 32) | ri)

    def free(self, handle: int) -> None:
        """Free in the wrapped backend and release the record.  O(inner) + O(1)."""
        with self._lock:
            ri = self._rec_locked(handle, freeing=True)
            self.inner.free(self._inner(ri))
            b = ri * R_WORDS
            R = self._R
            R[b + R_INFO] &= GEN_MASK << GEN_SHIFT
            R[b + R_LO] = self._S[self._s_free]
            R[b + R_HI] = 0
            self._S[self._s_free] = ri

    def read(self, handle: int) -> bytes:
        """The wrapped backend's read.  O(size)."""
        with self._lock:
            return bytes(self.inner.read(self._inner(self._rec_locked(handle))))

    def write(self, handle: int, data: Buffer) -> None:
        """The wrapped backend's write, then the CRC-32 of ``data``.  O(size)."""
        with self._lock:
            ri = self._rec_locked(handle)
            self.inner.write(self._inner(ri), data)
            self._R[ri * R_WORDS + R_CRC] = zlib.crc32(data)

    def size_of(self, handle: int) -> int:
        """The object's size, from its record.  O(1)."""
        with self._lock:
            return int(self._R[self._rec_locked(handle) * R_WORDS + R_INFO] & SIZE_MASK)

    def checksum(self, handle: int) -> int:
        """The CRC-32 recorded at the object's last write (0 before any).  O(1)."""
        with self._lock:
            return int(self._R[self._rec_locked(handle) * R_WORDS + R_CRC])

    def total_pages(self) -> int:
        """The wrapped backend's pages.  O(inner)."""
        return self.inner.total_pages()

    def compact(self) -> int:
        """The wrapped backend's compaction (its handles stay valid, so do ours)."""
        with self._lock:
            return self.inner.compact()

    def stats(self) -> PoolStats:
        """The wrapped backend's snapshot."""
        return self.inner.stats()

    def close(self) -> None:
        """Close the wrapped backend and the region."""
        self.inner.close()
        self.state.close()

    def _check(self) -> None:
        """The wrapped backend's _check, and every record against it.  O(records + inner)."""
        with self._lock:
            self.state._check()
            self.inner._check()
            R, n = self._R, self._S[self._s_count]
            live = 0
            seen: set[int] = set()
            for ri in range(1, n):
                b = ri * R_WORDS
                size = R[b + R_INFO] & SIZE_MASK
                if not size:
                    continue
                live += 1
                inner = self._inner(ri)
                if inner in seen or self.inner.size_of(inner) != size:
                    raise InvariantError(f"adapted {self.inner.name}: record {ri} names inner "
                                         f"handle {inner:#x} twice or with the wrong size")
                seen.add(inner)
            free = 0
            ri = self._S[self._s_free]
            while ri:
                if not 0 < ri < n or R[ri * R_WORDS + R_INFO] & SIZE_MASK or free >= n:
                    raise InvariantError(f"adapted {self.inner.name}: free chain corrupt at {ri}")
                free += 1
                ri = R[ri * R_WORDS + R_LO]
            if live + free != n - 1 or live != self.inner.stats().objects:
                raise InvariantError(f"adapted {self.inner.name}: {live} live + {free} free "
                                     f"records of {n - 1}; the backend has "
                                     f"{self.inner.stats().objects} objects")

    @classmethod
    def wrapping(cls, backend_cls: type[Backend], **options: Any) -> StateTableAdapter:
        """``StateTableAdapter(backend_cls(**options))``."""
        return cls(backend_cls(**options))
