"""The object table shared by the backends that keep one pool lock (zbud, z3fold).

Both keep every live object as a record whose first two fields are its offset
in the arena and its size, in ``_objs`` (handle -> record) under ``_lock``, and
hand out handles from a counter that never goes back (``_next_handle``), so a
freed handle is told apart from one never allocated.  This base class holds
the methods that only need that much; each backend keeps its own placement.
zsmalloc keeps a table per size class instead (its lock is per class).

Lock order: ``_lock`` -> ``PageArena._lock``.
"""

from __future__ import annotations

import mmap
import threading
from collections.abc import Mapping, Sequence
from typing import NoReturn

from swapd.backend import Backend, Buffer
from swapd.errors import DoubleFreeError, InvalidHandleError


class ObjectTablePool(Backend):
    """A :class:`~swapd.backend.Backend` with one lock and a handle -> record table."""

    _mm: mmap.mmap  # the arena's mapping
    _lock: threading.Lock
    _objs: Mapping[int, Sequence[int]]  # under _lock; handle -> (offset, size, ...)
    _next_handle: int  # under _lock; every handle below it was handed out once

    def read(self, handle: int) -> bytes:
        """Return a copy of the object.  O(size)."""
        with self._lock:
            rec = self._objs.get(handle)
            if rec is None:
                self._raise_bad_handle(handle, freeing=False)
            off = rec[0]
            return self._mm[off : off + rec[1]]

    def write(self, handle: int, data: Buffer) -> None:
        """Store ``data`` (exactly the object's size) into the object.  O(size)."""
        with self._lock:
            rec = self._objs.get(handle)
            if rec is None:
                self._raise_bad_handle(handle, freeing=False)
            off, size = rec[0], rec[1]
            if type(data) is not bytes or len(data) != size:
                data = self._check_data(data, size)
            self._mm[off : off + size] = data

    def size_of(self, handle: int) -> int:
        """Size in bytes of a live object (InvalidHandleError otherwise).  O(1)."""
        with self._lock:
            rec = self._objs.get(handle)
            if rec is None:
                self._raise_bad_handle(handle, freeing=False)
            return rec[1]

    def _raise_bad_handle(self, handle: object, *, freeing: bool) -> NoReturn:
        """Raise DoubleFreeError / InvalidHandleError for a handle not live (under _lock)."""
        if type(handle) is int and 0 < handle < self._next_handle:
            if freeing:
                raise DoubleFreeError(f"{self.name}: handle {handle} was already freed")
            raise InvalidHandleError(f"{self.name}: handle {handle} was freed")
        raise InvalidHandleError(
            f"{self.name}: handle {handle!r} was never allocated by this pool")
