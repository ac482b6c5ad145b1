# Tiers of the swap-LRU layer: where a swapped-out page's data lives.
#
# Design.  A tier stores whole pages under an integer key and gives them back; it keeps no LRU and
# makes no policy decision (the layer above owns recency, admission and demotion, as mm/zswap.c
# owns them above zpool).  Tiers are the only code of the layer that performs system calls: the
# disk tier's file I/O, and reading the RAM size for a pool limit (``system_ram_bytes``).
#
# CompressedTier wraps a compressor (swapd/compress.py) and an allocator backend (swapd/backend.py,
# shaped like struct zpool_driver).  The layer compresses outside its lock and calls ``put``
# (malloc + write) under it, like zswap_store() compresses into a per-CPU buffer and then
# zpool_malloc()s.  An object of exactly PAGE_SIZE bytes is a raw (incompressible) page: the
# layer only stores compressed data that is smaller than a page, so the length tells them apart
# (mm/zswap.c's 2025 change that stores compression-failed pages as-is tells them apart the
# same way).
#
# DiskTier is a file of 4 KiB slots, created with mode 0600 (O_EXCL) in the state directory.
# Its slot allocator keeps free extents in sortedcontainers (by start, for coalescing, and by
# (length, start), for best fit), so a writeback batch gets contiguous slots and goes to the file
# in one pwritev(2) per run, as the kernel's swap allocator hands out clusters
# (mm/swapfile.c: scan_swap_map_try_ssd_cluster) and writes them with one bio.  Each slot carries
# a CRC-32 (zlib) checked on every load: a mismatch is CorruptPageError and the data is never
# returned.  With a ``Sealer`` (swapd/layer/seal.py; the daemon's default) the slot's bytes are
# AES-GCM ciphertext instead and the per-slot GCM tag replaces the CRC: the file reveals nothing,
# and a changed, moved or stale slot fails as CorruptPageError the same way.  Pages go to disk
# uncompressed (before sealing), as zswap_writeback_entry() decompresses into the swap cache
# before __swap_writepage().  The file is allocated up front (fallocate, as swapon(8) wants a
# swap file without holes), so a file system without room fails at start, not mid-run; where
# fallocate is not supported the file stays sparse and a full file system shows up as ENOSPC on
# a write (TierIOError with that errno; the layer then stops writeback, swapd/layer/core.py).
#
# Invariants: DiskTier -- free extents are disjoint, coalesced, inside [0, nslots), and the two
# sorted views hold the same extents; used slots = nslots - free slots.
# Lock order: SwapLayer.lock -> DiskTier._lock (a leaf; also taken alone by the writeback thread
# for slot allocation).  Backend locks and the arena lock are below SwapLayer.lock.
"""Tiers: the documented ``Tier`` contract, ``CompressedTier`` and ``DiskTier``."""

from __future__ import annotations

import errno
import itertools
import os
import threading
import zlib
from abc import ABC, abstractmethod
from array import array
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from sortedcontainers import SortedDict, SortedList

from swapd.arena import PAGE_SHIFT, PAGE_SIZE
from swapd.backend import Backend
from swapd.compress import Compressor, get_compressor
from swapd.errors import (
    ConfigError,
    CorruptPageError,
    InvariantError,
    TierFullError,
    TierIOError,
)
from swapd.kernel import _libc
from swapd.layer.seal import Sealer
from swapd.layer.table import EntryState

__all__ = [
    "CompressedTier",
    "DiskTier",
    "SlotAllocator",
    "Tier",
    "TierContext",
    "TierLimits",
    "system_ram_bytes",
]


def system_ram_bytes() -> int:
    """Total RAM of this machine in bytes (sysconf; the kernel's totalram_pages())."""
    return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))


@dataclass(frozen=True)
class TierLimits:
    """Facts a pool limit is computed from: the RAM size, and an optional hard cap in bytes."""

    ram_total_bytes: int
    max_bytes: int | None = None

    @classmethod
    def from_system(cls, max_bytes: int | None = None) -> TierLimits:
        """Limits with this machine's RAM size."""
        return cls(system_ram_bytes(), max_bytes)


@dataclass(frozen=True)
class TierContext:
    """What a tier built from the configuration may need (``Tier.from_config``).

    ``instance`` names this daemon instance (it namespaces files and remote keys, so that a
    restarted daemon finds its own); ``state_path`` is the state directory; ``compressor``,
    ``backend``, ``backend_options`` and ``max_pages`` are the ``[layer]`` defaults for
    compressed tiers; ``disk_path``/``disk_bytes`` the defaults of a disk tier.
    """

    state_path: Path
    instance: str = "swapd"
    compressor: str = "lz4"
    backend: str = "zsmalloc"
    backend_options: Mapping[str, Any] = field(default_factory=dict)
    max_pages: int | None = None
    disk_path: str = ""
    disk_bytes: int = 4 << 30
    disk_seal: bool = True


def _options(where: str, options: Mapping[str, Any], allowed: Mapping[str, type | tuple[type, ...]]
             ) -> dict[str, Any]:
    """Check ``options`` against ``allowed`` (name -> type); ConfigError names a bad one."""
    out: dict[str, Any] = {}
    for k, v in options.items():
        if k not in allowed:
            raise ConfigError(f"[tier.{where}] unknown option {k!r} (known: "
                              f"{', '.join(sorted(allowed)) or 'none'})")
        if (isinstance(v, bool) and allowed[k] is not bool) or not isinstance(v, allowed[k]):
            raise ConfigError(f"[tier.{where}] {k}: wrong type {type(v).__name__} ({v!r})")
        out[k] = v
    return out


class Tier(ABC):
    """A place for swapped-out pages, addressed by integer keys.

    Contract for a tier author (one contract suite, ``tests/test_tier_contract.py``, runs it
    against every tier registered in the entry-point group ``swapd.tiers``):

    * ``state``: the EntryState the layer reports for pages in this tier.
    * ``name``: the tier's name in statistics (``"compressed"``, ``"disk"``, ``"redis"``).
    * ``store_batch(pages)``: store whole pages, return one key per stored page, in order.  It may
      store only a prefix (fewer keys than pages) when it runs out of room; it raises
      TierFullError when it can store none, TierIOError on an I/O error (then it stored none).
    * ``load(key)``: the page (PAGE_SIZE bytes); CorruptPageError if its check fails, TierIOError
      when it cannot be read now (the layer keeps the entry; the daemon poisons the access).
    * ``load_batch(keys)``: the pages of ``keys`` in order, for readahead: a tier whose round trip
      dominates (remote) fetches them at once.  The default calls ``load`` per key.  Errors as
      ``load``; a tier may return a shorter list (a prefix) instead of failing on a later key.
    * ``free(key)``: release the key; it may be reused at once.  ``free_batch(keys)``: the same
      for many (one round trip for a remote tier).
    * ``used_bytes()``: memory or disk the tier holds now.  ``capacity_bytes()``: what it may hold
      (None: no bound of its own).  ``available()``: False while the tier cannot take stores (a
      remote store that cannot be reached): the layer then demotes nothing into it.
    * ``_check()``, ``close()``.

    What runs where (the layer's lock, ``SwapLayer._lock``):

    * A tier with ``slow = False`` (memory) is called under the layer lock, and must not block.
    * A tier with ``slow = True`` (disk, network) is called *outside* the layer lock for
      ``store_batch``, ``load``, ``load_batch``, and the reads of a demotion, so a slow tier
      delays only the faults that need it.  The layer marks such an entry busy (off every list)
      while its I/O runs and defers the ``free`` of its key until the I/O is over, so a key is
      never freed or reused under a reader.  ``free`` may be called under the lock: a slow tier
      makes it cheap (a remote tier queues it).
    * Compression belongs to the tier: a tier with ``compressed = True`` keeps objects whose
      length the layer records in the word, and offers ``compress``/``put``/``get``/``decode``/
      ``total_pages``/``limits``/``max_object`` (see :class:`CompressedTier`); the layer
      compresses outside its lock and calls ``put`` under it, as zswap_store() does.

    Allowed context: any thread; a tier protects its own state.  The layer never calls ``load``
    or ``free`` on a key while another thread may ``free`` it.
    """

    state: ClassVar[EntryState]
    #: True when the tier keeps compressed objects whose length the layer records in the word.
    compressed: ClassVar[bool] = False
    #: True when the tier's I/O may block (disk, network): it then runs outside the layer lock.
    slow: ClassVar[bool] = False
    #: The tier's name in statistics and in the configuration's chain.
    name: str = "tier"
    #: One line for ``swapd tiers`` / plugin listings.
    description: ClassVar[str] = ""

    @classmethod
    def from_config(cls, ctx: TierContext, options: Mapping[str, Any]) -> Tier:
        """Build the tier from its ``[tier.NAME]`` options (ConfigError names a bad one).

        The entry point of a tier plugin names a class with this classmethod.
        """
        raise ConfigError(f"tier {cls.__name__} cannot be built from the configuration")

    @abstractmethod
    def store_batch(self, pages: Sequence[bytes]) -> list[int]:
        """Store a prefix of ``pages``; return their keys (see the class docstring)."""

    @abstractmethod
    def load(self, key: int) -> bytes:
        """Return the page stored under ``key``."""

    def load_batch(self, keys: Sequence[int]) -> list[bytes]:
        """Return the pages of ``keys``, in order (a prefix on a later failure)."""
        out: list[bytes] = []
        for k in keys:
            try:
                out.append(self.load(k))
            except (CorruptPageError, TierIOError):
                if not out:
                    raise
                break
        return out

    @abstractmethod
    def free(self, key: int) -> None:
        """Release ``key``."""

    def free_batch(self, keys: Sequence[int]) -> None:
        """Release every key of ``keys``."""
        for k in keys:
            self.free(k)

    @abstractmethod
    def used_bytes(self) -> int:
        """Bytes of memory or disk held now.  O(1)."""

    def capacity_bytes(self) -> int | None:
        """Bytes the tier may hold (None: bounded only by its own errors).  O(1)."""
        return None

    def available(self) -> bool:
        """Whether the tier takes stores now (a remote tier that cannot be reached: False)."""
        return True

    def stats(self) -> dict[str, int]:
        """The tier's own counters (errors, retries...), for ``swapd stats``."""
        return {}

    @abstractmethod
    def _check(self) -> None:
        """Verify invariants (InvariantError).  O(n)."""

    @abstractmethod
    def close(self) -> None:
        """Release the tier's resources."""


class CompressedTier(Tier):
    """Compressed pages in an allocator backend (zswap's pool: compressor + zpool)."""

    state = EntryState.COMPRESSED
    compressed = True
    name = "compressed"
    description = "compressed pages in an allocator backend (zswap's pool)"

    @classmethod
    def from_config(cls, ctx: TierContext, options: Mapping[str, Any]) -> CompressedTier:
        """Options: ``backend``, ``compressor`` (default: the ``[layer]`` ones)."""
        from swapd.compress import get_compressor
        from swapd.plugins import make_backend

        opts = _options("compressed", options, {"backend": str, "compressor": str})
        name = opts.get("backend", ctx.backend)
        bopts = dict(ctx.backend_options) if name == ctx.backend else {}
        if ctx.max_pages is not None:
            bopts["max_pages"] = ctx.max_pages
        backend = make_backend(name, **bopts)
        try:
            return cls(get_compressor(opts.get("compressor", ctx.compressor)), backend)
        except BaseException:
            backend.close()
            raise

    def __init__(self, compressor: Compressor | str, backend: Backend,
                 limits: TierLimits | None = None) -> None:
        self.compressor = get_compressor(compressor) if isinstance(compressor, str) else compressor
        self.backend = backend
        self.limits = limits if limits is not None else TierLimits.from_system()
        self._compress = self.compressor.compress
        self._decompress = self.compressor.decompress
        self.max_object = int(backend.max_size)  # largest object the backend takes


    def compress(self, page: bytes | bytearray | memoryview) -> bytes:
        """Compressed bytes of ``page`` (may be >= PAGE_SIZE); ValueError on failure."""
        try:
            return self._compress(page)
        except Exception as exc:
            raise ValueError(f"{self.compressor.name}: compression failed: {exc}") from exc

    def put(self, data: bytes) -> int:
        """malloc + write ``data``; return the handle.  Backend errors propagate."""
        b = self.backend
        h = b.malloc(len(data))
        try:
            b.write(h, data)
        except BaseException:
            b.free(h)
            raise
        return int(h)

    def get(self, handle: int) -> bytes:
        """The stored object's bytes (the backend returns a copy)."""
        data = self.backend.read(handle)
        return data if type(data) is bytes else bytes(data)

    def decode(self, data: bytes) -> bytes:
        """The page from a stored object (raw when it is PAGE_SIZE long); CorruptPageError."""
        if len(data) == PAGE_SIZE:
            return data
        try:
            return self._decompress(data, PAGE_SIZE)
        except ValueError as exc:
            raise CorruptPageError(f"compressed object does not decompress: {exc}") from exc

    def store_batch(self, pages: Sequence[bytes]) -> list[int]:
        keys: list[int] = []
        for p in pages:
            c = self.compress(p)
            data = c if len(c) < PAGE_SIZE else bytes(p)
            if len(data) > self.max_object:
                break
            try:
                keys.append(self.put(data))
            except MemoryError:
                break
        if pages and not keys:
            raise TierFullError("compressed tier: no room for the batch")
        return keys

    def load(self, key: int) -> bytes:
        return self.decode(self.get(key))

    def free(self, key: int) -> None:
        self.backend.free(key)

    def total_pages(self) -> int:
        """Backend pages held (what the pool limit is charged).  O(1)."""
        return int(self.backend.total_pages())

    def used_bytes(self) -> int:
        return self.total_pages() << PAGE_SHIFT

    def compact(self) -> int:
        """Compact the backend; return the pages freed (handles stay valid)."""
        return int(self.backend.compact())

    def objects(self) -> int:
        """Objects the backend holds (for the layer's invariant check).  O(1)."""
        return int(self.backend.stats().objects)

    def _check(self) -> None:
        self.backend._check()

    def close(self) -> None:
        self.backend.close()


class SlotAllocator:
    """Free extents of ``nslots`` slots, kept by start and by (length, start).

    Not thread-safe (DiskTier._lock).  ``alloc`` is best fit for the whole request, else it
    takes the largest extents first.  O(log n) per extent touched.
    """

    def __init__(self, nslots: int) -> None:
        self.nslots = nslots
        self.by_start: SortedDict = SortedDict()  # start -> length
        self.by_len: SortedList = SortedList()    # (length, start)
        self.free_slots = 0
        if nslots:
            self._add(0, nslots)

    def _add(self, start: int, n: int) -> None:
        self.by_start[start] = n
        self.by_len.add((n, start))
        self.free_slots += n

    def _remove(self, start: int) -> int:
        n: int = self.by_start.pop(start)
        self.by_len.remove((n, start))
        self.free_slots -= n
        return n

    def alloc(self, n: int) -> list[tuple[int, int]]:
        """Allocate up to ``n`` slots as runs [(start, count)], fewest runs first."""
        runs: list[tuple[int, int]] = []
        by_len = self.by_len
        while n > 0 and by_len:
            i = by_len.bisect_left((n, -1))
            length, start = by_len[i] if i < len(by_len) else by_len[-1]
            self._remove(start)
            take = min(n, length)
            if length > take:
                self._add(start + take, length - take)
            runs.append((start, take))
            n -= take
        return runs

    def free(self, slot: int, n: int = 1) -> None:
        """Return ``n`` slots from ``slot``, coalescing with neighbours.  O(log n)."""
        if slot < 0 or slot + n > self.nslots:
            raise InvariantError(f"slot {slot} out of range")
        by_start = self.by_start
        keys = by_start.keys()
        i = by_start.bisect_right(slot)
        end = slot + n
        if i > 0 and keys[i - 1] + by_start[keys[i - 1]] > slot:
            raise InvariantError(f"slot {slot} freed twice")
        if i < len(keys) and keys[i] < end:
            raise InvariantError(f"slot {slot} freed twice")
        if i > 0 and keys[i - 1] + by_start[keys[i - 1]] == slot:
            ps = keys[i - 1]
            n += self._remove(ps)
            slot = ps
        if end in by_start:
            n += self._remove(end)
        self._add(slot, n)

    def is_free(self, slot: int) -> bool:
        """Whether ``slot`` is free.  O(log n)."""
        i = self.by_start.bisect_right(slot)
        if i == 0:
            return False
        s = self.by_start.keys()[i - 1]
        return bool(slot < s + self.by_start[s])

    def _check(self) -> None:
        pos = -1
        total = 0
        for s, n in self.by_start.items():
            if n <= 0 or s < 0 or s + n > self.nslots:
                raise InvariantError(f"slot extent ({s}, {n}) out of range")
            if s <= pos:
                raise InvariantError(f"slot extents overlap or touch at {s}")
            pos = s + n
            total += n
        if total != self.free_slots:
            raise InvariantError(f"free slots {self.free_slots} != extents' {total}")
        if sorted((n, s) for s, n in self.by_start.items()) != list(self.by_len):
            raise InvariantError("slot allocator: the two views differ")


_disk_serial = itertools.count()


def _fallocate(fd: int, length: int) -> int:
    """fallocate(fd, 0, 0, length): 0, or the errno (EOPNOTSUPP where unsupported)."""
    if _libc.fallocate(fd, 0, 0, length) == 0:
        return 0
    return _libc.get_errno()


class DiskTier(Tier):
    """Uncompressed pages in 4 KiB slots of a file, each with a CRC-32 -- or, with ``seal``,
    sealed by a :class:`~swapd.layer.seal.Sealer` (``True``: a new random key).

    ``path`` is a directory (a new file ``swapd-<pid>-<n>.swap`` is created in it and removed on
    close) or a file path that must not exist yet (removed on close unless ``keep``).
    ``preallocate``: fallocate the whole file now (ConfigError when the file system has no
    room; silently sparse where fallocate is not supported).
    """

    state = EntryState.DISK
    slow = True
    name = "disk"
    description = "uncompressed pages in checksummed 4 KiB slots of a file"

    @classmethod
    def from_config(cls, ctx: TierContext, options: Mapping[str, Any]) -> DiskTier:
        """Options: ``path`` (a directory or a new file), ``size_bytes``, ``seal``."""
        opts = _options("disk", options, {"path": str, "size_bytes": int, "seal": bool})
        path = opts.get("path", ctx.disk_path)
        if not path:
            ctx.state_path.mkdir(parents=True, exist_ok=True, mode=0o700)
            path = str(ctx.state_path)
        return cls(path, int(opts.get("size_bytes", ctx.disk_bytes)),
                   seal=bool(opts.get("seal", ctx.disk_seal)))

    def __init__(self, path: str | os.PathLike[str], size_bytes: int, *,
                 keep: bool = False, seal: Sealer | bool = False,
                 preallocate: bool = True) -> None:
        nslots = size_bytes >> PAGE_SHIFT
        if nslots <= 0:
            raise ConfigError(f"disk tier: size {size_bytes} is below one page")
        p = os.fspath(path)
        if os.path.isdir(p):
            p = os.path.join(p, f"swapd-{os.getpid()}-{next(_disk_serial)}.swap")
        self.path = p
        self._keep = keep
        try:
            self.fd = os.open(p, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise ConfigError(f"disk tier: cannot create {p}: {exc.strerror}") from exc
        try:
            os.ftruncate(self.fd, nslots << PAGE_SHIFT)
        except OSError as exc:
            os.close(self.fd)
            os.unlink(p)
            raise ConfigError(f"disk tier: cannot size {p}: {exc.strerror}") from exc
        self.preallocated = False
        if preallocate:
            err = _fallocate(self.fd, nslots << PAGE_SHIFT)
            if err == 0:
                self.preallocated = True
            elif err not in (errno.EOPNOTSUPP, errno.ENOSYS):
                os.close(self.fd)
                os.unlink(p)
                raise ConfigError(f"disk tier: cannot allocate {nslots << PAGE_SHIFT} bytes for "
                                  f"{p}: {os.strerror(err)}")
        if seal is True:
            seal = Sealer(nslots)
        if seal is not False and seal.nslots != nslots:
            raise ConfigError(f"disk tier: sealer of {seal.nslots} slots for {nslots} slots")
        self.sealer: Sealer | None = seal or None
        self.nslots = nslots
        self._lock = threading.Lock()
        self._alloc = SlotAllocator(nslots)  # under _lock
        self._crc = array("I", bytes(4 * nslots))  # under _lock for writers; slot -> CRC-32
        self.writes = 0  # under _lock: pwritev calls
        self.io_errors = 0  # under _lock

    def used_slots(self) -> int:
        """Slots in use.  O(1)."""
        return self.nslots - self._alloc.free_slots

    def used_bytes(self) -> int:
        return self.used_slots() << PAGE_SHIFT

    def capacity_bytes(self) -> int:
        return self.nslots << PAGE_SHIFT

    def stats(self) -> dict[str, int]:
        return {"io_errors": self.io_errors, "writes": self.writes}

    def store_batch(self, pages: Sequence[bytes]) -> list[int]:
        """Write a prefix of ``pages`` to contiguous runs of slots, one pwritev per run."""
        if not pages:
            return []
        with self._lock:
            runs = self._alloc.alloc(len(pages))
        if not runs:
            raise TierFullError(f"disk tier {self.path}: all {self.nslots} slots in use")
        keys: list[int] = []
        crcs: list[int] = []
        i = 0
        try:
            for start, n in runs:
                chunk = pages[i:i + n]
                for pg in chunk:
                    if len(pg) != PAGE_SIZE:
                        raise ValueError(f"disk tier: page of {len(pg)} bytes")
                if self.sealer is not None:
                    seal = self.sealer.seal
                    chunk = [seal(start + j, pg) for j, pg in enumerate(chunk)]
                done = os.pwritev(self.fd, chunk, start << PAGE_SHIFT)
                if done != n << PAGE_SHIFT:
                    raise OSError(0, f"short write of {done} bytes")
                keys.extend(range(start, start + n))
                if self.sealer is None:
                    crcs.extend(zlib.crc32(pg) for pg in chunk)
                i += n
        except OSError as exc:
            with self._lock:
                for start, n in runs:
                    self._alloc.free(start, n)
                    if self.sealer is not None:
                        for k in range(start, start + n):
                            self.sealer.forget(k)
                self.io_errors += 1
            raise TierIOError(exc.errno or 0, f"disk tier {self.path}: write failed: "
                              f"{exc.strerror or exc}") from exc
        with self._lock:
            crc = self._crc
            for k, c in zip(keys, crcs):
                crc[k] = c
            self.writes += len(runs)
        return keys

    def load(self, key: int) -> bytes:
        """Read slot ``key`` and verify its CRC.  O(PAGE_SIZE) plus one pread."""
        try:
            data = os.pread(self.fd, PAGE_SIZE, key << PAGE_SHIFT)
        except OSError as exc:
            with self._lock:
                self.io_errors += 1
            raise TierIOError(exc.errno, f"disk tier {self.path}: read of slot {key} failed: "
                              f"{exc.strerror}") from exc
        if len(data) != PAGE_SIZE:
            raise TierIOError(0, f"disk tier {self.path}: short read of slot {key}")
        if self.sealer is not None:
            try:
                return self.sealer.open(key, data)
            except CorruptPageError as exc:
                raise CorruptPageError(f"disk tier {self.path}: {exc}") from exc
        if zlib.crc32(data) != self._crc[key]:
            raise CorruptPageError(f"disk tier {self.path}: slot {key} fails its checksum")
        return data

    def free(self, key: int) -> None:
        with self._lock:
            self._alloc.free(key)
            self._crc[key] = 0
            if self.sealer is not None:
                self.sealer.forget(key)

    def is_used(self, key: int) -> bool:
        with self._lock:
            return not self._alloc.is_free(key)

    def _check(self) -> None:
        with self._lock:
            self._alloc._check()
        if self.sealer is not None:
            self.sealer._check()

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
            if not self._keep:
                try:
                    os.unlink(self.path)
                except FileNotFoundError:
                    pass
