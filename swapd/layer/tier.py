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
# a tag checked on every load: a mismatch is CorruptPageError and the data is never returned.
# Without a sealer the tag is a CRC-32 (zlib) of the page.  With a ``Sealer``
# (swapd/layer/seal.py; the daemon's default) the slot's bytes are AES-GCM ciphertext instead and
# the sealer's per-slot record (write counter and GCM tag) replaces the CRC: the file reveals
# nothing, and a changed, moved or stale slot fails as CorruptPageError the same way.  Pages go to
# disk uncompressed (before sealing), as zswap_writeback_entry() decompresses into the swap cache
# before __swap_writepage().  The file is allocated up front (fallocate, as swapon(8) wants a
# swap file without holes), so a file system without room fails at start, not mid-run; where
# fallocate is not supported the file stays sparse and a full file system shows up as ENOSPC on
# a write (TierIOError with that errno; the layer then stops writeback, swapd/layer/core.py).
#
# DiskTier's state is a memfd region of kind ``disk`` (docs/state-format.md section 4): a slot
# bitmap (``used``, bit ``k & 7`` of byte ``k >> 3``) and one tag record per slot (``tag``:
# 4 bytes of CRC-32, or the sealer's RECORD bytes -- the sealer's table *is* that array).  The
# extent allocator's dicts, SortedList and free-slot byte map are indexes over the bitmap,
# rebuilt from it by ``DiskTier.adopt``.  A slot's bit is set when it is allocated (before its
# data is written) and cleared when it is freed; its tag is written after its data.  The seal
# key is never in the region (``Sealer.export_state`` hands it over separately).
#
# Invariants: DiskTier -- free extents are disjoint, coalesced, inside [0, nslots), and the
# allocator's views (by start, by end, by length, the free-slot map) hold the same extents;
# used slots = nslots - free slots; the bitmap's clear bits are exactly the free extents.
# Lock order: SwapLayer.lock -> DiskTier._lock (a leaf; also taken alone by the writeback thread
# for slot allocation).  Backend locks and the arena lock are below SwapLayer.lock.
"""Tiers: the documented ``Tier`` contract, ``CompressedTier`` and ``DiskTier``."""

from __future__ import annotations

import errno
import fcntl
import itertools
import logging
import os
import threading
import zlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from sortedcontainers import SortedList

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
from swapd.layer.seal import RECORD as SEAL_RECORD
from swapd.layer.seal import Sealer
from swapd.layer.table import EntryState, pack_name, unpack_name
from swapd.pages import PAGE_SHIFT, PAGE_SIZE
from swapd.state import ArraySpec, StateFormatError, StateRegion

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
    * ``load_nowait(key)``: the page if it is at hand without waiting (a disk page in the page
      cache), else None; optional (default None), called under the layer lock, never blocks.
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
    #: what the layer records for this tier in its state (<= 8 ASCII bytes;
    #: docs/state-format.md: the table's ``tier<i>`` scalars)
    state_name: ClassVar[str] = "other"

    def state_fds(self) -> dict[str, int]:
        """Named fds of the tier's state regions (docs/state-format.md); none by default."""
        return {}

    def describe_state(self, put: Callable[[str, int], None], index: int) -> None:
        """Record in the swap table's scalars what :meth:`adopt_state` needs besides the
        fds (``put(name, value)``; names are suffixed with the tier's index).  Nothing by
        default."""
        return None

    @classmethod
    def adopt_state(cls, fds: Mapping[str, int], *, get: Callable[[str], int], index: int,
                    writable: bool, options: Mapping[str, Any],
                    seal_state: bytes | None = None) -> Tier:
        """The tier whose state regions ``fds`` names (taken over), for a restarted daemon.

        ``get`` reads the scalars :meth:`describe_state` recorded, ``options`` are the tier's
        ``[tier.NAME]`` options.  StateFormatError when the tier cannot adopt its state (the
        default: a tier without state regions cannot survive its process).
        """
        raise StateFormatError(f"tier {cls.name!r} keeps no state a restarted daemon can adopt")

    def reconcile(self, live: set[int]) -> int:
        """After an adoption: release every key the table does not reference (a crash between
        a store and the table's commit).  Returns the keys released.  Default: none."""
        return 0

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

    def load_nowait(self, key: int) -> bytes | None:
        """The page of ``key`` if it can be had without waiting for I/O (a slow tier's page in
        the page cache), else None; errors as :meth:`load`.  Called under the layer lock, on
        the daemon's loop thread: it must not block.  Default: None (always wait)."""
        return None

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

    def keys_in_use(self) -> int | None:
        """Live keys, for the layer's invariant check (None: the tier cannot tell).  O(1)."""
        return None

    def stats(self) -> dict[str, int]:
        """The tier's own counters (errors, retries...), for ``swapd stats``."""
        return {}

    @abstractmethod
    def _check(self) -> None:
        """Verify invariants (InvariantError).  O(n)."""

    @abstractmethod
    def close(self) -> None:
        """Release the tier's resources."""

    def detach(self) -> None:
        """Release this process's handles but keep every stored page where it is (the state
        went to a successor: a restart).  Default: :meth:`close`, for tiers whose data dies
        with their handles or survives them anyway (a file kept open by the fd store)."""
        self.close()


class CompressedTier(Tier):
    """Compressed pages in an allocator backend (zswap's pool: compressor + zpool)."""

    state = EntryState.COMPRESSED
    compressed = True
    state_name = "compress"
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

    def keys_in_use(self) -> int:
        return self.objects()

    def reconcile(self, live: set[int]) -> int:
        """Free every object of the backend that ``live`` does not name (a crash between a
        store's ``malloc`` and the table's commit, or between a word's release and the
        object's ``free``).  Returns the objects freed; 0 for a backend that cannot list
        its objects.  O(objects)."""
        handles = self.backend.live_handles()
        if handles is None:
            return 0
        stale = [h for h in handles if h not in live]
        for h in stale:
            self.backend.free(h)
        return len(stale)

    def _check(self) -> None:
        self.backend._check()

    def describe_state(self, put: Callable[[str, int], None], index: int) -> None:
        put(f"codec{index}", pack_name(self.compressor.name))

    @classmethod
    def adopt_state(cls, fds: Mapping[str, int], *, get: Callable[[str], int], index: int,
                    writable: bool, options: Mapping[str, Any],
                    seal_state: bytes | None = None) -> CompressedTier:
        return cls.adopt(fds, unpack_name(get(f"codec{index}")), writable=writable)

    @classmethod
    def adopt(cls, fds: Mapping[str, int], codec: str, *, writable: bool = True,
              limits: TierLimits | None = None) -> CompressedTier:
        """The compressed tier whose backend's state regions ``fds`` names (as
        :meth:`state_fds` does; taken over).  The backend is the plugin named by one of the
        fds (``"zsmalloc"``, ...) and must implement ``adopt(fds, *, writable)``; StateFormatError
        otherwise.  ``codec`` is the compressor's name.
        """
        from swapd.plugins import available_backends

        backends = available_backends()
        names = [n for n in fds if n in backends]
        if len(names) != 1 or not hasattr(backends[names[0]], "adopt"):
            raise StateFormatError(f"compressed tier: state fds {sorted(fds)} name no backend "
                                   "that can adopt its state")
        backend = backends[names[0]].adopt(fds, writable=writable)
        return cls(get_compressor(codec), backend, limits)

    def state_fds(self) -> dict[str, int]:
        """The backend's state fds (its ``state_fds()``), else its arena's."""
        own = getattr(self.backend, "state_fds", None)
        if own is not None:
            return dict(own())
        arena = getattr(self.backend, "arena", None)
        return arena.state_fds() if arena is not None else {}

    def close(self) -> None:
        self.backend.close()


class SlotAllocator:
    """Free extents of ``nslots`` slots, kept by start, by end and by (length, start).

    Not thread-safe (DiskTier._lock).  ``alloc`` is best fit for the whole request, else it
    takes the largest extents first: O(log n) per extent touched.  ``free`` coalesces through
    the by-start and by-end dicts (O(1) each) and a byte per slot (1: free) that answers
    ``is_free`` and catches a double free in O(1): one sorted index (``by_len``) is left, the
    only one allocation needs.  The byte map costs nslots bytes (1/4096 of the disk).
    """

    def __init__(self, nslots: int) -> None:
        self.nslots = nslots
        self.by_start: dict[int, int] = {}  # start -> length
        self._by_end: dict[int, int] = {}   # start + length -> start
        self.by_len: SortedList = SortedList()    # (length, start)
        self._free_map = bytearray(nslots)  # slot -> 1 if free
        self.free_slots = 0
        if nslots:
            self._add(0, nslots)
            self._free_map[:] = b"\x01" * nslots

    @classmethod
    def from_free_runs(cls, nslots: int, runs: Sequence[tuple[int, int]]) -> SlotAllocator:
        """An allocator whose free extents are ``runs`` ((start, length), disjoint and not
        touching, as ``_free_runs`` gives them).  O(nslots + runs log runs)."""
        self = cls(0)
        self.nslots = nslots
        self._free_map = bytearray(nslots)
        for start, n in runs:
            self._add(start, n)
            self._free_map[start:start + n] = b"\x01" * n
        return self

    def _add(self, start: int, n: int) -> None:
        self.by_start[start] = n
        self._by_end[start + n] = start
        self.by_len.add((n, start))
        self.free_slots += n

    def _remove(self, start: int) -> int:
        n = self.by_start.pop(start)
        del self._by_end[start + n]
        self.by_len.remove((n, start))
        self.free_slots -= n
        return n

    def alloc(self, n: int) -> list[tuple[int, int]]:
        """Allocate up to ``n`` slots as runs [(start, count)], fewest runs first."""
        runs: list[tuple[int, int]] = []
        by_len = self.by_len
        fm = self._free_map
        while n > 0 and by_len:
            i = by_len.bisect_left((n, -1))
            length, start = by_len[i] if i < len(by_len) else by_len[-1]
            self._remove(start)
            take = min(n, length)
            if length > take:
                self._add(start + take, length - take)
            fm[start:start + take] = bytes(take)
            runs.append((start, take))
            n -= take
        return runs

    def free(self, slot: int, n: int = 1) -> None:
        """Return ``n`` slots from ``slot``, coalescing with neighbours.  O(log n)."""
        if slot < 0 or slot + n > self.nslots:
            raise InvariantError(f"slot {slot} out of range")
        end = slot + n
        fm = self._free_map
        if fm.find(1, slot, end) >= 0:
            raise InvariantError(f"slot {slot} freed twice")
        fm[slot:end] = b"\x01" * n
        ps = self._by_end.get(slot)
        if ps is not None:
            n += self._remove(ps)
            slot = ps
        if end in self.by_start:
            n += self._remove(end)
        self._add(slot, n)

    def is_free(self, slot: int) -> bool:
        """Whether ``slot`` is free.  O(1)."""
        return 0 <= slot < self.nslots and self._free_map[slot] == 1

    def extents(self) -> list[tuple[int, int]]:
        """The free extents (start, length) in order of start.  O(n log n)."""
        return sorted(self.by_start.items())

    def _check(self) -> None:
        pos = -1
        total = 0
        fm = bytearray(self.nslots)
        for s, n in self.extents():
            if n <= 0 or s < 0 or s + n > self.nslots:
                raise InvariantError(f"slot extent ({s}, {n}) out of range")
            if s <= pos:
                raise InvariantError(f"slot extents overlap or touch at {s}")
            pos = s + n
            total += n
            fm[s:s + n] = b"\x01" * n
        if total != self.free_slots:
            raise InvariantError(f"free slots {self.free_slots} != extents' {total}")
        if sorted((n, s) for s, n in self.by_start.items()) != list(self.by_len):
            raise InvariantError("slot allocator: the extents by start and by length differ")
        if self._by_end != {s + n: s for s, n in self.by_start.items()}:
            raise InvariantError("slot allocator: the extents by start and by end differ")
        if fm != self._free_map:
            raise InvariantError("slot allocator: the free-slot map disagrees with the extents")


DISK_KIND = "disk"
DISK_KIND_VERSION = 1


def _free_runs(bitmap: bytes, nslots: int) -> list[tuple[int, int]]:
    """Runs ``(start, length)`` of clear bits among the first ``nslots`` bits.  O(nslots)."""
    free = ~int.from_bytes(bitmap, "little") & ((1 << nslots) - 1)
    runs: list[tuple[int, int]] = []
    while free:
        low = (free & -free).bit_length() - 1
        shifted = free >> low
        n = ((shifted ^ (shifted + 1)) >> 1).bit_length()
        runs.append((low, n))
        free &= ~(((1 << n) - 1) << low)
    return runs


TAG_CRC32 = 1    # tag_kind: 4-byte CRC-32 (zlib) of the slot's bytes, little-endian
TAG_AES_GCM = 2  # tag_kind: the Sealer's record (u64 write counter, 16-byte GCM tag)

_log = logging.getLogger(__name__)
_disk_serial = itertools.count()


def _remove_if_orphan(path: str) -> None:
    """Remove the disk-tier file ``path`` if no process holds its lock (a leftover)."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise ConfigError(f"disk tier: cannot open {path}: {exc.strerror}") from exc
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            raise ConfigError(f"disk tier: {path} is in use by another swapd instance (give "
                              "each daemon its own state directory)") from exc
        os.unlink(path)
        _log.warning("removed disk tier file %s: no daemon adopted it", path)
    finally:
        os.close(fd)


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
    room; silently sparse where fallocate is not supported).  A Sealer instance passed in is
    taken over: its records move into the tier's region and ``self.sealer`` is its successor
    (``Sealer.from_state``); do not use the instance afterwards.
    """

    state = EntryState.DISK
    state_name = "disk"
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
        if os.path.isdir(path):
            # named per instance, not per process: a restarted daemon re-adopts it (through
            # the fd store), and a file that nobody holds is a leftover (docs/design.md sec. 9)
            path = os.path.join(path, f"{ctx.instance}.swap")
            _remove_if_orphan(path)
        return cls(path, int(opts.get("size_bytes", ctx.disk_bytes)),
                   seal=bool(opts.get("seal", ctx.disk_seal)))

    def __init__(self, path: str | os.PathLike[str], size_bytes: int, *,
                 keep: bool = False, seal: Sealer | bool = False,
                 preallocate: bool = True) -> None:
        nslots = size_bytes >> PAGE_SHIFT
        if nslots <= 0:
            raise ConfigError(f"disk tier: size {size_bytes} is below one page")
        if seal is not False and seal is not True and seal.nslots != nslots:
            raise ConfigError(f"disk tier: sealer of {seal.nslots} slots for {nslots} slots")
        p = os.fspath(path)
        if os.path.isdir(p):
            p = os.path.join(p, f"swapd-{os.getpid()}-{next(_disk_serial)}.swap")
        try:
            fd = os.open(p, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise ConfigError(f"disk tier: cannot create {p}: {exc.strerror}") from exc
        # held for as long as any descriptor of the file is open (an fd store's too): the
        # mark of a file in use, which an orphan sweep must leave alone
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        region: StateRegion | None = None
        try:
            try:
                os.ftruncate(fd, nslots << PAGE_SHIFT)
            except OSError as exc:
                raise ConfigError(f"disk tier: cannot size {p}: {exc.strerror}") from exc
            preallocated = False
            if preallocate:
                err = _fallocate(fd, nslots << PAGE_SHIFT)
                if err == 0:
                    preallocated = True
                elif err not in (errno.EOPNOTSUPP, errno.ENOSYS):
                    raise ConfigError(f"disk tier: cannot allocate {nslots << PAGE_SHIFT} "
                                      f"bytes for {p}: {os.strerror(err)}")
            sealed = seal is not False
            tag_size = SEAL_RECORD if sealed else 4
            region = StateRegion.create(DISK_KIND, DISK_KIND_VERSION, [
                ArraySpec("used", "B", (nslots + 7) // 8),
                ArraySpec("tag", "B", nslots, tag_size),
            ], ["nslots", "tag_size", "tag_kind"])
            region.set("nslots", nslots)
            region.set("tag_size", tag_size)
            region.set("tag_kind", TAG_AES_GCM if sealed else TAG_CRC32)
            region.set_count("used", (nslots + 7) // 8)
            region.set_count("tag", nslots)
            sealer: Sealer | None = None
            if seal is True:
                sealer = Sealer(nslots, table=region.view("tag"))
            elif seal is not False:
                tags = region.view("tag")
                tags[:] = seal.table[:nslots * SEAL_RECORD]
                sealer = Sealer.from_state(seal.export_state(), nslots, table=tags)
        except BaseException:
            if region is not None:
                region.close()
            os.close(fd)
            os.unlink(p)
            raise
        self._setup(p, fd, region, sealer, keep, SlotAllocator(nslots))
        self.preallocated = preallocated

    def _setup(self, path: str, fd: int, region: StateRegion, sealer: Sealer | None,
               keep: bool, alloc: SlotAllocator) -> None:
        self.path = path
        self.fd = fd
        self._keep = keep
        self.region = region
        self.sealer = sealer
        self.preallocated = False
        self.nslots = alloc.nslots
        self._lock = threading.Lock()
        self._alloc = alloc  # under _lock
        self._used = region.view("used")  # under _lock: slot bitmap
        # slot -> CRC-32 (unsealed; under _lock for writers); a sealer keeps its own records
        self._crc = region.view("tag").cast("I") if sealer is None else None
        self.writes = 0  # under _lock: pwritev calls
        self.io_errors = 0  # under _lock

    @classmethod
    def adopt_state(cls, fds: Mapping[str, int], *, get: Callable[[str], int], index: int,
                    writable: bool, options: Mapping[str, Any],
                    seal_state: bytes | None = None) -> DiskTier:
        if DISK_KIND not in fds or "file" not in fds:
            raise StateFormatError(f"disk tier: state fds {sorted(fds)} lack "
                                   f"{DISK_KIND!r} and 'file'")
        return cls.adopt(fds[DISK_KIND], fds["file"], writable=writable, seal_state=seal_state)

    @classmethod
    def adopt(cls, region_fd: int, file_fd: int, *, path: str = "", writable: bool = True,
              seal_state: bytes | None = None, keep: bool = True) -> DiskTier:
        """The disk tier of state region ``region_fd`` over the slot file ``file_fd`` (both
        taken over).  The free extents are rebuilt from the slot bitmap.  A sealed tier needs
        ``seal_state`` (``Sealer.export_state()`` of its owner: the key is never in the region).
        StateFormatError if the region is not a disk region this code reads, or its tags are of
        a kind it cannot check.  ``path`` is informational; the file is removed on close only if
        ``keep`` is False.  O(nslots).
        """
        region = StateRegion.adopt(region_fd, DISK_KIND, DISK_KIND_VERSION, writable=writable)
        try:
            nslots = region.get("nslots")
            kind, size = region.get("tag_kind"), region.get("tag_size")
            sealer: Sealer | None = None
            if (kind, size) == (TAG_AES_GCM, SEAL_RECORD):
                if seal_state is None:
                    raise StateFormatError("disk region: sealed slots, and no seal state to "
                                           "open them")
                if not writable:
                    raise StateFormatError("disk region: sealed slots can only be adopted "
                                           "writable (the sealer writes its records)")
                sealer = Sealer.from_state(seal_state, nslots, table=region.view("tag"))
            elif (kind, size) != (TAG_CRC32, 4):
                raise StateFormatError(f"disk region: tags of kind {kind} and {size} bytes; "
                                       f"this swapd checks kind {TAG_CRC32} (4 bytes) and "
                                       f"{TAG_AES_GCM} ({SEAL_RECORD} bytes)")
            alloc = SlotAllocator.from_free_runs(
                nslots, _free_runs(bytes(region.view("used")[:(nslots + 7) // 8]), nslots))
            self = cls.__new__(cls)
            self._setup(path or f"/proc/self/fd/{file_fd}", file_fd, region, sealer, keep, alloc)
        except BaseException:
            region.close()
            raise
        return self

    def reconcile(self, live: set[int]) -> int:
        """Free every allocated slot that ``live`` does not name (a crash after the slots of a
        writeback were allocated and before the table named them).  O(nslots)."""
        with self._lock:
            used = self._used
            stale = [k for k in range(self.nslots)
                     if used[k >> 3] >> (k & 7) & 1 and k not in live]
        for k in stale:
            self.free(k)
        return len(stale)

    def state_fds(self) -> dict[str, int]:
        """``{"disk": region fd, "file": slot file fd}``."""
        return {DISK_KIND: self.region.fd, "file": self.fd}

    def used_slots(self) -> int:
        """Slots in use.  O(1)."""
        return self.nslots - self._alloc.free_slots

    def used_bytes(self) -> int:
        return self.used_slots() << PAGE_SHIFT

    def capacity_bytes(self) -> int:
        return self.nslots << PAGE_SHIFT

    def keys_in_use(self) -> int:
        return self.used_slots()

    def stats(self) -> dict[str, int]:
        return {"io_errors": self.io_errors, "writes": self.writes}

    def _mark_locked(self, start: int, n: int, on: bool) -> None:
        used = self._used
        for k in range(start, start + n):
            if on:
                used[k >> 3] |= 1 << (k & 7)
            else:
                used[k >> 3] &= ~(1 << (k & 7)) & 0xFF

    def _unalloc_locked(self, runs: list[tuple[int, int]]) -> None:
        for start, n in runs:
            self._alloc.free(start, n)
            self._mark_locked(start, n, False)
            if self.sealer is not None:
                for k in range(start, start + n):
                    self.sealer.forget(k)

    def store_batch(self, pages: Sequence[bytes]) -> list[int]:
        """Write a prefix of ``pages`` to contiguous runs of slots, one pwritev per run."""
        if not pages:
            return []
        with self._lock:
            runs = self._alloc.alloc(len(pages))
            for start, n in runs:
                self._mark_locked(start, n, True)
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
                    self._finish_short_write(chunk, start << PAGE_SHIFT, done)
                keys.extend(range(start, start + n))
                if self.sealer is None:
                    crcs.extend(zlib.crc32(pg) for pg in chunk)
                i += n
        except OSError as exc:
            with self._lock:
                self._unalloc_locked(runs)
                self.io_errors += 1
            raise TierIOError(exc.errno or 0, f"disk tier {self.path}: write failed: "
                              f"{exc.strerror or exc}") from exc
        except BaseException:
            with self._lock:
                self._unalloc_locked(runs)
            raise
        with self._lock:
            crc = self._crc
            if crc is not None:
                for k, c in zip(keys, crcs):
                    crc[k] = c
            self.writes += len(runs)
        return keys

    def _finish_short_write(self, chunk: Sequence[bytes], offset: int, done: int) -> None:
        """A pwritev stopped short (a file system splits large writes; the split after the
        last that fit fails): write the rest, so the real error (ENOSPC, EIO) is raised."""
        rest = memoryview(b"".join(chunk))[done:]
        pos = offset + done
        while rest:
            n = os.pwrite(self.fd, rest, pos)
            if n <= 0:
                raise OSError(errno.EIO, f"write of {len(rest)} bytes made no progress")
            rest = rest[n:]
            pos += n

    def load(self, key: int) -> bytes:
        """Read slot ``key`` and check its tag (or open its seal).  O(PAGE_SIZE) plus a pread."""
        try:
            data = os.pread(self.fd, PAGE_SIZE, key << PAGE_SHIFT)
        except OSError as exc:
            with self._lock:
                self.io_errors += 1
            raise TierIOError(exc.errno, f"disk tier {self.path}: read of slot {key} failed: "
                              f"{exc.strerror}") from exc
        if len(data) != PAGE_SIZE:
            raise TierIOError(0, f"disk tier {self.path}: short read of slot {key}")
        return self._opened(key, data)

    def load_nowait(self, key: int) -> bytes | None:
        """Slot ``key`` if the page cache holds it: ``preadv2(RWF_NOWAIT)`` (preadv2(2)) reads
        without waiting for I/O, and fails with EAGAIN when it would wait; a file system that
        cannot promise that (EOPNOTSUPP, e.g. FUSE) is always waited for.  O(PAGE_SIZE)."""
        buf = bytearray(PAGE_SIZE)
        try:
            n = os.preadv(self.fd, [buf], key << PAGE_SHIFT, os.RWF_NOWAIT)
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.EOPNOTSUPP, errno.EINVAL):
                return None
            with self._lock:
                self.io_errors += 1
            raise TierIOError(exc.errno, f"disk tier {self.path}: read of slot {key} failed: "
                              f"{exc.strerror}") from exc
        if n != PAGE_SIZE:  # a part was cached: the rest would wait
            return None
        return self._opened(key, bytes(buf))

    def _opened(self, key: int, data: bytes) -> bytes:
        """The page read from slot ``key`` after its tag check (or its seal opened)."""
        if self.sealer is not None:
            try:
                return self.sealer.open(key, data)
            except CorruptPageError as exc:
                raise CorruptPageError(f"disk tier {self.path}: {exc}") from exc
        assert self._crc is not None
        if zlib.crc32(data) != self._crc[key]:
            raise CorruptPageError(f"disk tier {self.path}: slot {key} fails its checksum")
        return data

    def free(self, key: int) -> None:
        with self._lock:
            self._alloc.free(key)
            self._mark_locked(key, 1, False)
            if self._crc is not None:
                self._crc[key] = 0
            if self.sealer is not None:
                self.sealer.forget(key)

    def is_used(self, key: int) -> bool:
        with self._lock:
            return not self._alloc.is_free(key)

    def _check(self) -> None:
        with self._lock:
            self._alloc._check()
            runs = _free_runs(bytes(self._used[:(self.nslots + 7) // 8]), self.nslots)
            if runs != self._alloc.extents():
                raise InvariantError(f"disk tier {self.path}: the slot bitmap disagrees with "
                                     "the free extents")
            self.region._check()
        if self.sealer is not None:
            self.sealer._check()

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
            if self._crc is not None:
                self._crc.release()
            self.region.close()
            if not self._keep:
                try:
                    os.unlink(self.path)
                except FileNotFoundError:
                    pass
