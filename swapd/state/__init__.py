# State regions: swapd's per-page and per-object state as fixed-layout arrays in a memfd.
#
# Design.  Everything the layer, the tiers, the backends and the arena know about a stored page
# lives in a *region*: one memfd (memfd_create(MFD_CLOEXEC), mapped MAP_SHARED) that starts with
# a one-page header and then holds named arrays of fixed-width records.  A region is mapped once
# at its largest (reserved) size, so the memoryviews over it never move while the file grows;
# the file is grown with ftruncate(2) as arrays fill (a shmem file's unused range costs nothing)
# and ranges are released with fallocate(PUNCH_HOLE|KEEP_SIZE).  Because the state is a file and
# not Python objects, another process that receives the fd (SCM_RIGHTS, /proc/PID/fd/N) can map
# it and read every page the daemon stores, and a restarted daemon can adopt it.  The format is
# written down in docs/state-format.md; this module is its reference implementation.
#
# API (what the layer, the tiers, the backends and the compiled implementation code against):
#
#   ArraySpec(name, fmt, capacity, record_size=0)
#       an array of ``capacity`` records; ``fmt`` is a struct/memoryview format char
#       (B H I Q b h i q) and record_size (bytes, default the format's size) a multiple of it.
#   StateRegion.create(kind, kind_version, arrays, scalars) -> StateRegion
#       a new memfd with a header naming the region's kind (<= 16 ASCII bytes), the kind's own
#       layout version, the arrays (placed page-aligned in the given order) and up to 32 named
#       u64 scalars (all 0).
#   StateRegion.adopt(fd, kind, kind_version, *, writable=True) -> StateRegion
#       validate the header of an existing region and map it; takes ownership of ``fd``.  A
#       header this code cannot read (magic, layout version, page size, kind or kind version,
#       array table) raises StateFormatError naming the field.  ``writable=False`` maps the
#       file's current size read-only (a reader in another process); views then cover only the
#       records inside the file.
#   region.view(name) -> memoryview   typed view (cast to the array's fmt) of the whole array:
#       record i's field j is ``view[i * (record_size // itemsize) + j]``.  Never moves.
#   region.mmap_of(name) -> mmap      a separate mapping whose byte 0 is the array's record 0
#       (the arena's pages: page pfn at ``pfn << PAGE_SHIFT``).
#   region.count(name) / region.set_count(name, n)
#       the number of records in use (a high-water mark the owner keeps); set_count grows the
#       file to cover them first.  region.ensure(name, n) grows the file without touching count.
#   region.release(name, start, n)    punch the whole pages of records [start, start+n) and zero
#       any partial page at the edges: the records read as zero afterwards and cost no memory.
#   region.data_runs(name, start, n)  runs of records in pages that hold data (lseek SEEK_DATA):
#       the others read as zero, and a scan must skip them (a shmem read fault allocates).
#   region.get(name) / region.set(name, value)   the named u64 scalars of the header.
#   region.scalars, region.scalar_index(name)    the header as a 'Q' view, and the index of a
#       scalar's value in it (for hot paths that update a counter in place).
#   region.fd, region.kind, region.writable, region.allocated_bytes(), region._check(), close().
#
# Invariants (``_check``): the header's magic, versions, page size and array table are valid;
# arrays are page-aligned, ascending, disjoint and inside the reservation; every count is at most
# its capacity and the file covers every array's counted records (a reader may read them).
# Lock order: none.  A region is not thread-safe: its owner serializes calls under its own lock
# (SwapLayer.lock for the swap table, PageArena._lock, DiskTier._lock, a backend's locks).
# Prior art: the kernel's swap table (mm/swap_table.h, one word per slot in flat arrays),
# zram's per-slot table (drivers/block/zram/zram_drv.c), and systemd-journald's state in a memfd
# stored in the service manager's fd store (src/journal/journald-server.c).
"""State regions: fixed-layout arrays in a memfd, with a versioned header (docs/state-format.md)."""

from __future__ import annotations

import mmap
import os
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from swapd.errors import InvariantError, StateFormatError
from swapd.kernel.memfd import (
    allocated_bytes,
    file_size,
    map_reserved,
    memfd_create,
    punch_hole,
    resize,
    seek_data,
    seek_hole,
)
from swapd.pages import PAGE_SIZE

__all__ = [
    "HEADER_BYTES",
    "LAYOUT_VERSION",
    "MAGIC",
    "MAX_ARRAYS",
    "MAX_SCALARS",
    "ArraySpec",
    "StateFormatError",
    "StateRegion",
]

MAGIC = b"SWAPDST\x00"
LAYOUT_VERSION = 1
HEADER_BYTES = PAGE_SIZE
MAX_SCALARS = 32
MAX_ARRAYS = 32
NAME_BYTES = 16

# struct region_header (little-endian, offset 0 of the memfd; docs/state-format.md):
#   u8  magic[8];  u32 version;  u32 header_bytes;  u32 page_size;  u16 narrays;  u16 nscalars;
#   char kind[16]; u32 kind_version; u32 flags; u64 reserved_bytes; u64 spare;
_HDR = struct.Struct("<8sIIIHH16sIIQQ")
# struct scalar { char name[16]; u64 value; }  x MAX_SCALARS, at SCALARS_OFF
_SCALAR = struct.Struct("<16sQ")
# struct array_desc { char name[16]; char fmt[4]; u32 record_size; u64 offset; u64 capacity;
#                     u64 count; u64 spare[2]; }  x MAX_ARRAYS, at ARRAYS_OFF
_ARRAY = struct.Struct("<16s4sIQQQ16x")
SCALARS_OFF = _HDR.size                                 # 64
ARRAYS_OFF = SCALARS_OFF + MAX_SCALARS * _SCALAR.size   # 832
_END = ARRAYS_OFF + MAX_ARRAYS * _ARRAY.size            # 2880 <= HEADER_BYTES
_FORMATS = {"B": 1, "b": 1, "H": 2, "h": 2, "I": 4, "i": 4, "Q": 8, "q": 8}
_GROW_MIN = 256 << 10  # the file grows by at least this much (or an eighth of its size)

assert _HDR.size == 64 and _ARRAY.size == 64 and _END <= HEADER_BYTES


@dataclass(frozen=True)
class ArraySpec:
    """One array of a region: ``capacity`` records of ``record_size`` bytes viewed as ``fmt``."""

    name: str
    fmt: str
    capacity: int
    record_size: int = 0  # 0: the size of one ``fmt`` item

    def size(self) -> int:
        """Bytes of one record."""
        return self.record_size or _FORMATS[self.fmt]


@dataclass
class _Array:
    name: str
    fmt: str
    record_size: int
    offset: int
    capacity: int
    index: int  # position in the header's array table


def _round_up(n: int, m: int) -> int:
    return (n + m - 1) // m * m


def _name(raw: bytes, what: str) -> str:
    try:
        return raw.rstrip(b"\x00").decode("ascii")
    except UnicodeDecodeError as exc:
        raise StateFormatError(f"state region: {what} name {raw!r} is not ASCII") from exc


def _encode_name(name: str, what: str) -> bytes:
    raw = name.encode("ascii")
    if not 0 < len(raw) <= NAME_BYTES or b"\x00" in raw:
        raise ValueError(f"{what} name {name!r} must be 1..{NAME_BYTES} ASCII bytes")
    return raw


class StateRegion:
    """A memfd holding a header and named fixed-layout arrays (see the module comment)."""

    def __init__(self, fd: int, mm: mmap.mmap, kind: str, kind_version: int, writable: bool,
                 reserved: int, arrays: dict[str, _Array], scalars: dict[str, int]) -> None:
        self.fd = fd
        self.kind = kind
        self.kind_version = kind_version
        self.writable = writable
        self.reserved_bytes = reserved
        self._mm = mm
        self._size = file_size(fd)  # owner: the file's size, which only it changes
        self._arrays = arrays
        self._scalar_slot = scalars  # name -> index of the value in self.scalars
        self.scalars = memoryview(mm)[:HEADER_BYTES].cast("Q")
        self._views: list[memoryview] = [self.scalars]
        self._maps: list[mmap.mmap] = []

    # -- construction ----------------------------------------------------------------------

    @classmethod
    def create(cls, kind: str, kind_version: int, arrays: Sequence[ArraySpec],
               scalars: Iterable[str] = (), *, name: str | None = None) -> StateRegion:
        """A new region with zeroed arrays and scalars.  O(1) memory until arrays are used."""
        kraw = _encode_name(kind, "kind")
        snames = list(scalars)
        if len(arrays) > MAX_ARRAYS or len(snames) > MAX_SCALARS:
            raise ValueError(f"a region holds at most {MAX_ARRAYS} arrays and "
                             f"{MAX_SCALARS} scalars")
        if len(set(snames)) != len(snames) or len({a.name for a in arrays}) != len(arrays):
            raise ValueError("array and scalar names must be unique")
        hdr = bytearray(HEADER_BYTES)
        off = HEADER_BYTES
        table: dict[str, _Array] = {}
        for i, spec in enumerate(arrays):
            if spec.fmt not in _FORMATS:
                raise ValueError(f"array {spec.name!r}: format {spec.fmt!r} is not one of "
                                 f"{''.join(_FORMATS)}")
            rs = spec.size()
            if rs <= 0 or rs % _FORMATS[spec.fmt] or spec.capacity <= 0:
                raise ValueError(f"array {spec.name!r}: bad record size {rs} or capacity "
                                 f"{spec.capacity}")
            _ARRAY.pack_into(hdr, ARRAYS_OFF + i * _ARRAY.size, _encode_name(spec.name, "array"),
                             spec.fmt.encode(), rs, off, spec.capacity, 0)
            table[spec.name] = _Array(spec.name, spec.fmt, rs, off, spec.capacity, i)
            off += _round_up(spec.capacity * rs, PAGE_SIZE)
        slots: dict[str, int] = {}
        for i, sname in enumerate(snames):
            _SCALAR.pack_into(hdr, SCALARS_OFF + i * _SCALAR.size, _encode_name(sname, "scalar"),
                              0)
            slots[sname] = (SCALARS_OFF + i * _SCALAR.size + NAME_BYTES) // 8
        reserved = off
        _HDR.pack_into(hdr, 0, MAGIC, LAYOUT_VERSION, HEADER_BYTES, PAGE_SIZE, len(arrays),
                       len(snames), kraw, kind_version, 0, reserved, 0)
        fd = memfd_create(name or f"swapd-state:{kind}")
        try:
            resize(fd, HEADER_BYTES)
            mm = map_reserved(fd, reserved)
        except BaseException:
            os.close(fd)
            raise
        mm[:HEADER_BYTES] = hdr
        return cls(fd, mm, kind, kind_version, True, reserved, table, slots)

    @classmethod
    def adopt(cls, fd: int, kind: str, kind_version: int, *,
              writable: bool = True) -> StateRegion:
        """Validate the header of region ``fd`` and map it; the region owns ``fd`` afterwards.

        StateFormatError (naming the field) if the header is not one this code reads; the
        caller then still owns ``fd``.  A
        writable adopter must be the region's only writer (see ``map_reserved``).
        """
        size = file_size(fd)
        if size < HEADER_BYTES:
            raise StateFormatError(f"state region: file of {size} bytes is shorter than its "
                                   f"{HEADER_BYTES}-byte header")
        with mmap.mmap(fd, HEADER_BYTES, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ) as hm:
            hdr = bytes(hm)
        arrays, slots, reserved = cls._parse(hdr, kind, kind_version, size)
        mm = map_reserved(fd, reserved, writable=writable)
        return cls(fd, mm, kind, kind_version, writable, reserved, arrays, slots)

    @staticmethod
    def _parse(hdr: bytes, kind: str, kind_version: int,
               size: int) -> tuple[dict[str, _Array], dict[str, int], int]:
        (magic, version, hbytes, psize, narrays, nscalars, kraw, kver, _flags, reserved,
         _spare) = _HDR.unpack_from(hdr, 0)
        if magic != MAGIC:
            raise StateFormatError(f"state region: magic {magic!r} is not {MAGIC!r}")
        if version != LAYOUT_VERSION:
            raise StateFormatError(f"state region: layout version {version}; this swapd reads "
                                   f"version {LAYOUT_VERSION}")
        if hbytes != HEADER_BYTES or psize != PAGE_SIZE:
            raise StateFormatError(f"state region: header of {hbytes} bytes, page size {psize}; "
                                   f"expected {HEADER_BYTES} and {PAGE_SIZE}")
        got = _name(kraw, "kind")
        if got != kind:
            raise StateFormatError(f"state region: kind {got!r}, expected {kind!r}")
        if kver != kind_version:
            raise StateFormatError(f"state region {kind!r}: kind version {kver}; this swapd "
                                   f"reads version {kind_version}")
        if narrays > MAX_ARRAYS or nscalars > MAX_SCALARS:
            raise StateFormatError(f"state region {kind!r}: {narrays} arrays, {nscalars} "
                                   f"scalars exceed {MAX_ARRAYS}/{MAX_SCALARS}")
        if reserved % PAGE_SIZE or reserved < HEADER_BYTES or size > reserved:
            raise StateFormatError(f"state region {kind!r}: reserved size {reserved} is not a "
                                   f"page multiple holding the file's {size} bytes")
        arrays: dict[str, _Array] = {}
        end = HEADER_BYTES
        for i in range(narrays):
            raw, fraw, rs, off, cap, count = _ARRAY.unpack_from(hdr, ARRAYS_OFF + i * _ARRAY.size)
            name = _name(raw, "array")
            fmt = _name(fraw, f"array {name!r} format")
            if fmt not in _FORMATS or rs <= 0 or rs % _FORMATS[fmt]:
                raise StateFormatError(f"state region {kind!r}: array {name!r} has format "
                                       f"{fmt!r} and record size {rs}")
            if off != end or cap <= 0 or off + cap * rs > reserved or count > cap:
                raise StateFormatError(f"state region {kind!r}: array {name!r} at {off} with "
                                       f"{count}/{cap} records does not fit the layout")
            arrays[name] = _Array(name, fmt, rs, off, cap, i)
            end = off + _round_up(cap * rs, PAGE_SIZE)
        if end != reserved:
            raise StateFormatError(f"state region {kind!r}: arrays end at {end}, reserved "
                                   f"{reserved}")
        slots: dict[str, int] = {}
        for i in range(nscalars):
            raw, _v = _SCALAR.unpack_from(hdr, SCALARS_OFF + i * _SCALAR.size)
            slots[_name(raw, "scalar")] = (SCALARS_OFF + i * _SCALAR.size + NAME_BYTES) // 8
        return arrays, slots, reserved

    # -- arrays ----------------------------------------------------------------------------

    def _array(self, name: str) -> _Array:
        a = self._arrays.get(name)
        if a is None:
            raise StateFormatError(f"state region {self.kind!r} has no array {name!r} "
                                   f"(it has {', '.join(self._arrays) or 'none'})")
        return a

    def _mapped_records(self, a: _Array) -> int:
        if self.writable:
            return a.capacity
        return max(0, min(a.capacity, (len(self._mm) - a.offset) // a.record_size))

    def view(self, name: str) -> memoryview:
        """A view of array ``name`` cast to its format (read-only for a reader).  O(1)."""
        a = self._array(name)
        n = self._mapped_records(a)
        raw = memoryview(self._mm)[a.offset:a.offset + n * a.record_size]
        v: memoryview = raw.cast(a.fmt)  # type: ignore[call-overload]
        self._views.append(v)
        return v

    def mmap_of(self, name: str) -> mmap.mmap:
        """A separate mapping of array ``name`` whose byte 0 is record 0.  O(1)."""
        a = self._array(name)
        n = self._mapped_records(a) * a.record_size
        if n == 0:
            raise StateFormatError(f"state region {self.kind!r}: array {name!r} is not in "
                                   "the file")
        if self.writable:
            mm = mmap.mmap(self.fd, n, flags=mmap.MAP_SHARED,
                           prot=mmap.PROT_READ | mmap.PROT_WRITE, offset=a.offset) \
                if file_size(self.fd) >= a.offset + n else self._map_beyond(a.offset, n)
        else:
            mm = mmap.mmap(self.fd, n, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ,
                           offset=a.offset)
        self._maps.append(mm)
        return mm

    def _map_beyond(self, offset: int, n: int) -> mmap.mmap:
        size = file_size(self.fd)
        resize(self.fd, offset + n)
        try:
            return mmap.mmap(self.fd, n, flags=mmap.MAP_SHARED,
                             prot=mmap.PROT_READ | mmap.PROT_WRITE, offset=offset)
        finally:
            resize(self.fd, size)

    def capacity(self, name: str) -> int:
        """Records the array can hold."""
        return self._array(name).capacity

    def record_size(self, name: str) -> int:
        """Bytes per record of array ``name``."""
        return self._array(name).record_size

    def offset(self, name: str) -> int:
        """Byte offset of array ``name`` in the file."""
        return self._array(name).offset

    def _count_slot(self, a: _Array) -> int:
        return (ARRAYS_OFF + a.index * _ARRAY.size + 40) // 8

    def count_index(self, name: str) -> int:
        """Index of array ``name``'s record count in ``self.scalars`` (for hot paths)."""
        return self._count_slot(self._array(name))

    def count(self, name: str) -> int:
        """Records in use (the owner's high-water mark).  O(1)."""
        return int(self.scalars[self._count_slot(self._array(name))])

    def ensure(self, name: str, n: int) -> None:
        """Grow the file so that records [0, n) of array ``name`` are inside it.  O(1)."""
        a = self._array(name)
        if n > a.capacity:
            raise MemoryError(f"state region {self.kind!r}: array {name!r} holds "
                              f"{a.capacity} records, {n} asked")
        end = a.offset + n * a.record_size
        if end > self._size:
            self._grow(end)

    def _grow(self, end: int) -> None:
        if not self.writable:
            raise StateFormatError(f"state region {self.kind!r} is mapped read-only")
        new = min(self.reserved_bytes,
                  _round_up(max(end, self._size + max(_GROW_MIN, self._size // 8)), PAGE_SIZE))
        resize(self.fd, new)
        self._size = new

    def set_count(self, name: str, n: int) -> None:
        """Set the records in use of array ``name``, growing the file first.  O(1)."""
        self.ensure(name, n)
        self.scalars[self._count_slot(self._array(name))] = n

    def release(self, name: str, start: int, n: int) -> None:
        """Zero records [start, start+n) of ``name``: whole pages are punched (freed), the
        partial pages at the edges are written with zeros.  O(n) bytes touched at most."""
        if n <= 0:
            return
        a = self._array(name)
        if start < 0 or start + n > a.capacity:
            raise ValueError(f"array {name!r}: records [{start}, {start + n}) out of range")
        lo = a.offset + start * a.record_size
        hi = min(a.offset + (start + n) * a.record_size, self._size)
        if hi <= lo:
            return
        plo, phi = _round_up(lo, PAGE_SIZE), hi // PAGE_SIZE * PAGE_SIZE
        if plo < phi:
            punch_hole(self.fd, plo, phi - plo)
            self._zero(lo, plo)
            self._zero(phi, hi)
        else:
            self._zero(lo, hi)

    def _zero(self, lo: int, hi: int) -> None:
        """Write zeros to bytes [lo, hi) of one page, unless that page is a hole (writing
        would allocate it).  O(hi - lo)."""
        if hi <= lo:
            return
        page = lo // PAGE_SIZE * PAGE_SIZE
        if seek_data(self.fd, page) != page:
            return
        self._mm[lo:hi] = bytes(hi - lo)

    def data_runs(self, name: str, start: int, n: int) -> list[tuple[int, int]]:
        """``(first, count)`` runs of records in [start, start+n) of array ``name`` whose
        pages hold data (``lseek(SEEK_DATA)``): every other record reads as zero and costs no
        memory.  Reading a hole through the mapping would allocate it (a shmem read fault
        allocates), so a scan over a sparse array visits only these runs.  O(runs)."""
        a = self._array(name)
        rs = a.record_size
        lo = a.offset + max(0, start) * rs
        end = min(a.offset + (start + n) * rs, self._size if self.writable else
                  file_size(self.fd))
        runs: list[tuple[int, int]] = []
        off = lo
        while off < end:
            data = seek_data(self.fd, off)
            if data is None or data >= end:
                break
            hole = min(seek_hole(self.fd, data), end)
            first = (max(data, lo) - a.offset) // rs
            last = (hole - a.offset + rs - 1) // rs
            if runs and runs[-1][0] + runs[-1][1] >= first:
                f0, c0 = runs.pop()
                first, last = f0, max(last, f0 + c0)
            runs.append((first, last - first))
            off = hole
        return runs

    # -- scalars ---------------------------------------------------------------------------

    def scalar_index(self, name: str) -> int:
        """Index of scalar ``name``'s value in ``self.scalars``."""
        i = self._scalar_slot.get(name)
        if i is None:
            raise StateFormatError(f"state region {self.kind!r} has no scalar {name!r}")
        return i

    def get(self, name: str) -> int:
        """The value of scalar ``name``.  O(1)."""
        return int(self.scalars[self.scalar_index(name)])

    def set(self, name: str, value: int) -> None:
        """Set scalar ``name`` (an unsigned 64-bit value).  O(1)."""
        self.scalars[self.scalar_index(name)] = value

    # -- accounting and checks -------------------------------------------------------------

    def allocated_bytes(self) -> int:
        """Memory the region's file holds now (``st_blocks``; holes cost nothing)."""
        return allocated_bytes(self.fd)

    def _check(self) -> None:
        """Re-read the header and verify it (InvariantError).  O(arrays)."""
        size = file_size(self.fd)
        try:
            arrays, slots, reserved = self._parse(bytes(self._mm[:HEADER_BYTES]), self.kind,
                                                  self.kind_version, size)
        except StateFormatError as exc:
            raise InvariantError(f"state region {self.kind!r}: {exc}") from exc
        if reserved != self.reserved_bytes or set(arrays) != set(self._arrays) or \
                slots != self._scalar_slot:
            raise InvariantError(f"state region {self.kind!r}: header differs from its owner")
        for name, a in arrays.items():
            need = a.offset + self.count(name) * a.record_size
            if self.count(name) and need > size:
                raise InvariantError(f"state region {self.kind!r}: {self.count(name)} records "
                                     f"of {name!r} end at {need}, beyond the file ({size})")

    def close(self) -> None:
        """Unmap the region and close its fd (idempotent).  Views handed out die with it."""
        if self.fd < 0:
            return
        for v in self._views:
            v.release()
        self._views.clear()
        for m in [*self._maps, self._mm]:
            try:
                m.close()
            except BufferError:
                pass  # a view someone still holds pins it; unmapped when that view goes
        self._maps.clear()
        os.close(self.fd)
        self.fd = -1

    def __enter__(self) -> StateRegion:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
