"""The handle table shared by the backends that keep one pool lock (zbud, z3fold).

Both keep every live object as a fixed-width record in the ``handles`` array of the
backend's state region (docs/state-format.md, section 5): where the object lives (its
arena page and buddy), its size, a generation and the CRC-32 of its bytes.  Each
backend keeps its page headers in the arena page itself (the kernel's ``struct
zbud_header`` / ``struct z3fold_header``), so the record names the page and the buddy,
and the backend's ``_offset`` finds the bytes from that header.

Record (3 u32): ``loc`` (the arena page; of a free record, the next free record),
``info`` (size bits 0-12, 0 = free; buddy bits 13-14; foreign bit 15; gen bits 24-31),
``crc``.  A handle is ``gen << 32 | record``: records are reused (free chain from the
``handle_free`` scalar), the generation tells a stale handle from the live one.

Lock order: ``_lock`` -> ``PageArena._lock``.  Invariant: a record is live iff its size
is non-zero; the free records are exactly the chain from ``handle_free``.
"""

from __future__ import annotations

import mmap
import threading
from typing import NoReturn

from backends._layout import GEN_MASK, crc32
from swapd.backend import Backend, Buffer
from swapd.errors import DoubleFreeError, InvalidHandleError, InvariantError, PoolExhaustedError
from swapd.state import StateRegion

H_WORDS = 3
H_LOC, H_INFO, H_CRC = range(3)
SIZE_MASK = (1 << 13) - 1
BUD_SHIFT = 13
BUD_MASK = 3
FOREIGN_BIT = 1 << 15
GEN_SHIFT = 24
REC_BITS = 32
REC_MASK = (1 << REC_BITS) - 1
HANDLE_SCALARS = ("handle_free", "checksum")


class ObjectTablePool(Backend):
    """A :class:`~swapd.backend.Backend` with one lock and a handle-record array."""

    uses_state_layout = True
    _mm: mmap.mmap  # the arena's mapping
    _lock: threading.Lock
    state: StateRegion

    def _init_table(self) -> None:
        """Views of the handle table (call once the region exists)."""
        st = self.state
        self._H = st.view("handles")
        self._S = st.scalars
        self._s_hfree = st.scalar_index("handle_free")
        self._s_hcount = st.count_index("handles")
        self._hcap = st.capacity("handles")

    def _offset(self, pfn: int, bud: int) -> int:
        """Arena byte offset of the object in buddy ``bud`` of page ``pfn`` (under _lock)."""
        raise NotImplementedError

    def _rec_locked(self, handle: object, op: str) -> int:
        """The record index of a live handle (raises the named error otherwise)."""
        if type(handle) is int and handle > 0:
            hi = handle & REC_MASK
            if 0 < hi < self._S[self._s_hcount]:
                info = self._H[hi * H_WORDS + H_INFO]
                if info & SIZE_MASK and info >> GEN_SHIFT == handle >> REC_BITS:
                    return hi
        self._raise_bad_handle(handle, freeing=op == "free")

    def _new_rec_locked(self, pfn: int, bud: int, size: int) -> int:
        """Hand out a record for a new object; return its handle.  O(1) amortized.

        PoolExhaustedError when the table is full (the caller has taken nothing yet).
        """
        S, H = self._S, self._H
        hi = S[self._s_hfree]
        if hi:
            S[self._s_hfree] = H[hi * H_WORDS]
        else:
            hi = S[self._s_hcount]
            if hi >= self._hcap:
                raise PoolExhaustedError(f"{self.name}: all {self._hcap - 1} handles are in use")
            self.state.set_count("handles", hi + 1)
        hb = hi * H_WORDS
        gen = ((H[hb + H_INFO] >> GEN_SHIFT) + 1) & GEN_MASK
        H[hb] = pfn
        H[hb + H_INFO] = size | (bud << BUD_SHIFT) | (gen << GEN_SHIFT)
        H[hb + H_CRC] = 0
        return int((gen << REC_BITS) | hi)

    def _free_rec_locked(self, hi: int) -> None:
        """Mark record ``hi`` free (keeping its generation) and chain it.  O(1)."""
        H, S = self._H, self._S
        hb = hi * H_WORDS
        H[hb + H_INFO] &= GEN_MASK << GEN_SHIFT
        H[hb] = S[self._s_hfree]
        S[self._s_hfree] = hi

    def _has_room_for_rec(self) -> bool:
        """Can a record be handed out without failing?  O(1)."""
        return bool(self._S[self._s_hfree]) or self._S[self._s_hcount] < self._hcap

    def read(self, handle: int) -> bytes:
        """Return a copy of the object.  O(size)."""
        with self._lock:
            hi = self._rec_locked(handle, "read")
            hb = hi * H_WORDS
            info = self._H[hb + H_INFO]
            off = self._offset(self._H[hb], (info >> BUD_SHIFT) & BUD_MASK)
            return self._mm[off:off + (info & SIZE_MASK)]

    def write(self, handle: int, data: Buffer) -> None:
        """Store ``data`` (exactly the object's size) into the object; record its CRC-32.
        O(size)."""
        with self._lock:
            hi = self._rec_locked(handle, "write")
            hb = hi * H_WORDS
            H = self._H
            info = H[hb + H_INFO]
            size = info & SIZE_MASK
            if type(data) is not bytes or len(data) != size:
                data = self._check_data(data, size)
            off = self._offset(H[hb], (info >> BUD_SHIFT) & BUD_MASK)
            self._mm[off:off + size] = data
            H[hb + H_CRC] = crc32(data)

    def size_of(self, handle: int) -> int:
        """Size in bytes of a live object (InvalidHandleError otherwise).  O(1)."""
        with self._lock:
            hi = self._rec_locked(handle, "size_of")
            return int(self._H[hi * H_WORDS + H_INFO] & SIZE_MASK)

    def page_of(self, handle: int) -> int:
        """The arena page holding the object (the Backend ABC's optional ``page_of``).  O(1)."""
        with self._lock:
            return int(self._H[self._rec_locked(handle, "page_of") * H_WORDS + H_LOC])

    def checksum(self, handle: int) -> int:
        """The CRC-32 recorded at the object's last write (0 before any).  O(1)."""
        with self._lock:
            hi = self._rec_locked(handle, "checksum")
            return int(self._H[hi * H_WORDS + H_CRC])

    def state_fds(self) -> dict[str, int]:
        """``{"arena": fd, NAME: fd}``: the regions that hold the pool.  O(1)."""
        return {**self.arena.state_fds(), self.name: self.state.fd}

    def close(self) -> None:
        """Release the state region and the arena."""
        self.state.close()
        super().close()

    def _raise_bad_handle(self, handle: object, *, freeing: bool) -> NoReturn:
        """Raise DoubleFreeError / InvalidHandleError for a handle not live (under _lock)."""
        if type(handle) is int and handle > 0:
            hi = handle & REC_MASK
            if 0 < hi < self._S[self._s_hcount] and handle >> REC_BITS <= GEN_MASK:
                what = "was freed" if self._H[hi * H_WORDS + H_INFO] >> GEN_SHIFT == \
                    handle >> REC_BITS else "is stale (freed, its record reused)"
                if freeing:
                    raise DoubleFreeError(f"{self.name}: handle {handle:#x} {what}: double free")
                raise InvalidHandleError(f"{self.name}: handle {handle:#x} {what}")
        raise InvalidHandleError(
            f"{self.name}: handle {handle!r} was never allocated by this pool")

    def live_handles(self) -> list[int]:
        """Every live handle (``gen << 32 | record``).  O(records)."""
        with self._lock:
            H = self._H
            out: list[int] = []
            for hi in range(1, self._S[self._s_hcount]):
                info = H[hi * H_WORDS + H_INFO]
                if info & SIZE_MASK:
                    out.append(((info >> GEN_SHIFT) << REC_BITS) | hi)
            return out

    def _live_records_locked(self) -> dict[int, tuple[int, int, int, int]]:
        """record -> (page, buddy, size, foreign) of every live object, after checking the
        free chain (InvariantError).  O(records)."""
        H = self._H
        n = self._S[self._s_hcount]
        live: dict[int, tuple[int, int, int, int]] = {}
        for hi in range(1, n):
            hb = hi * H_WORDS
            info = H[hb + H_INFO]
            if info & SIZE_MASK:
                live[hi] = (H[hb], (info >> BUD_SHIFT) & BUD_MASK, info & SIZE_MASK,
                            int(bool(info & FOREIGN_BIT)))
        seen = 0
        hi = self._S[self._s_hfree]
        while hi:
            if not 0 < hi < n or hi in live or seen >= n:
                raise InvariantError(f"{self.name}: free handle chain corrupt at {hi}")
            seen += 1
            hi = H[hi * H_WORDS]
        if seen + len(live) != n - 1:
            raise InvariantError(f"{self.name}: {len(live)} live + {seen} free records != "
                                 f"{n - 1}")
        return live
