"""Restart without loss: what the daemon keeps in the fd store, and how the next one adopts it.

Design (docs/design.md, "Restart and crash recovery").  Every descriptor the
daemon needs to serve a client goes to the service manager's fd store the
moment the daemon acquires it, not at shutdown, so that a crash loses nothing
a graceful restart would keep (``swapd.kernel.sdnotify``; systemd or ``swapd
supervise``).  The names:

=====================  ========================================================
``listen``             the listening socket (unless a socket unit passes it)
``sessions``           the session registry (below)
``c<S>.conn``          session S's control socket
``c<S>.pidfd``         session S's pidfd (``FDPOLL=0``: a reaped pid HUPs)
``c<S>.r<R>.memfd``    region R's memfd (the client's pages)
``c<S>.r<R>.uffd``     region R's userfaultfd (``FDPOLL=0``)
``c<S>.r<R>.state``    region R's page-state bytes (below)
``layer.<name>``       the layer's state regions, when the layer can hand them over
=====================  ========================================================

The session registry is a memfd holding the session table as JSON in two slots
written alternately, each with a sequence number and a CRC-32; a reader takes
the valid slot with the higher sequence number, so a write torn by a crash
leaves the previous table.  Header (page 0, little-endian)::

    struct registry_header { u8 magic[8] = "SWPDSESS"; u32 version; u32 page_size;
                             u64 slot_bytes; }
    struct slot { u64 seq; u32 length; u32 crc32; u8 json[length]; }  /* at 4096, 4096+slot_bytes */

A region's page states (``swapd.daemon.session``: HOLE, RESIDENT, EVICTING,
SWAPPED, GONE; one byte per page) live in a memfd of their own, so that they
survive the process::

    struct page_state_header { u8 magic[8] = "SWPDPGST"; u32 version; u32 page_size;
                               u64 npages; u64 region; }   /* page 0; the bytes from 4096 */

Recovery is a scan (:func:`recover_page`): a page present in the memfd is
RESIDENT, and a stored copy of it is dropped (the client may have written it
after the copy was taken); a page absent from the memfd whose copy the layer
still holds is SWAPPED; a page absent from both that the old daemon recorded
as SWAPPED or EVICTING is lost and is poisoned (``UFFDIO_POISON``: SIGBUS for
that access, never zeros); GONE stays GONE; anything else is a HOLE.  A
format this code cannot read is refused by name (:class:`HandoverFormatError`)
and the descriptors stay stored for a daemon that can.

Thread-safety: the registry and the store link are used by the loop thread only.
Prior art: systemd-journald's and systemd-logind's use of the fd store; the
two-slot commit of a database's double-write header; ``mm/shmem.c``'s
``SEEK_DATA``/``SEEK_HOLE`` for the residency scan.
"""

from __future__ import annotations

import contextlib
import json
import logging
import mmap
import os
import re
import struct
import zlib
from collections.abc import Iterable
from typing import Any, Final

from swapd.errors import SwapdError
from swapd.kernel import memfd as kmemfd
from swapd.kernel import sdnotify

log = logging.getLogger(__name__)

PAGE_SIZE: Final = mmap.PAGESIZE
FORMAT_VERSION: Final = 1  # of the registry's JSON, its header and the page-state header
REGISTRY_MAGIC: Final = b"SWPDSESS"
PAGESTATE_MAGIC: Final = b"SWPDPGST"
SLOT_BYTES: Final = 1 << 20  # per slot; the memfd is sparse, only written pages cost
_REG_HDR: Final = struct.Struct("<8sIIQ")
_SLOT_HDR: Final = struct.Struct("<QII")
_PGST_HDR: Final = struct.Struct("<8sIIQQ")

HOLE, RESIDENT, EVICTING, SWAPPED, GONE = range(5)  # as swapd.daemon.session


class HandoverFormatError(SwapdError):
    """Stored state in a format this daemon cannot read; the message names it."""


# --- the fd store link -------------------------------------------------------------------------


class StoreLink:
    """The daemon's view of the fd store: what it stored under which name.

    ``enabled`` when the manager offers a store (``$NOTIFY_SOCKET`` and
    ``$FDSTORE``); otherwise every call is a no-op and a restart loses the
    clients, as before.
    """

    def __init__(self, enabled: bool | None = None) -> None:
        self.capacity = sdnotify.store_capacity()
        self.enabled = self.capacity > 0 if enabled is None else enabled
        self.names: set[str] = set()  # stored by us or adopted

    def store(self, name: str, fd: int, *, poll: bool = True) -> bool:
        """Keep ``fd`` under ``name`` (the manager gets a duplicate).

        False when the store has no room left (the manager would drop the descriptor
        silently: ``FDSTORE=`` is its capacity) or the request was not delivered; the
        caller must then not rely on ``fd`` surviving a restart.  True without a store.
        """
        if not self.enabled:
            return True
        if len(self.names) >= self.capacity > 0:
            log.error("fd store full (%d descriptors, FileDescriptorStoreMax=): %r not stored",
                      self.capacity, name)
            return False
        if not sdnotify.store_fds(name, [fd], poll=poll):
            return False
        self.names.add(name)
        return True

    def remove(self, name: str) -> None:
        """Close the manager's copies stored under ``name``."""
        if self.enabled and name in self.names:
            sdnotify.remove_fds(name)
            self.names.discard(name)

    def remove_prefix(self, prefix: str) -> None:
        """Remove every name that starts with ``prefix`` (a session's or a region's)."""
        for name in sorted(n for n in self.names if n.startswith(prefix)):
            self.remove(name)


def session_prefix(sid: int) -> str:
    """The prefix of session ``sid``'s stored names."""
    return f"c{sid}."


def region_prefix(sid: int, rid: int) -> str:
    """The prefix of region ``rid``'s stored names (inside its session's)."""
    return f"c{sid}.r{rid}."


# --- the session registry ----------------------------------------------------------------------


class Registry:
    """The session table in a memfd, committed through two alternating slots (module doc)."""

    def __init__(self, fd: int, seq: int) -> None:
        self.fd = fd
        self.seq = seq  # of the slot written last

    @classmethod
    def create(cls) -> Registry:
        """A new, empty registry memfd."""
        fd = kmemfd.memfd_create("swapd-sessions")
        os.ftruncate(fd, PAGE_SIZE + 2 * SLOT_BYTES)
        os.pwrite(fd, _REG_HDR.pack(REGISTRY_MAGIC, FORMAT_VERSION, PAGE_SIZE, SLOT_BYTES), 0)
        return cls(fd, 0)

    @classmethod
    def adopt(cls, fd: int) -> tuple[Registry, dict[str, Any] | None]:
        """Validate the header and read the latest valid slot (None if neither is).

        Raises HandoverFormatError naming the field that this code cannot read.
        """
        head = os.pread(fd, _REG_HDR.size, 0)
        if len(head) < _REG_HDR.size:
            raise HandoverFormatError("session registry: shorter than its header")
        magic, version, page_size, slot_bytes = _REG_HDR.unpack(head)
        if magic != REGISTRY_MAGIC:
            raise HandoverFormatError(f"session registry: magic {magic!r} is not "
                                      f"{REGISTRY_MAGIC!r}")
        if version != FORMAT_VERSION:
            raise HandoverFormatError(f"session registry: format version {version} is not "
                                      f"supported (this swapd reads version {FORMAT_VERSION})")
        if page_size != PAGE_SIZE or slot_bytes != SLOT_BYTES:
            raise HandoverFormatError(f"session registry: page size {page_size} / slot "
                                      f"{slot_bytes} bytes differ from {PAGE_SIZE} / "
                                      f"{SLOT_BYTES}")
        best: tuple[int, dict[str, Any]] | None = None
        for slot in (0, 1):
            off = PAGE_SIZE + slot * SLOT_BYTES
            seq, length, crc = _SLOT_HDR.unpack(os.pread(fd, _SLOT_HDR.size, off))
            if seq == 0 or length > SLOT_BYTES - _SLOT_HDR.size:
                continue
            body = os.pread(fd, length, off + _SLOT_HDR.size)
            if len(body) != length or zlib.crc32(body) != crc:
                log.warning("session registry: slot %d (seq %d) is torn; using the other",
                            slot, seq)
                continue
            try:
                obj = json.loads(body)
            except ValueError:
                continue
            if best is None or seq > best[0]:
                best = (seq, obj)
        if best is None:
            return cls(fd, 0), None
        return cls(fd, best[0]), best[1]

    def write(self, obj: dict[str, Any]) -> None:
        """Commit ``obj`` to the older slot.  Raises SwapdError if it does not fit."""
        body = json.dumps(obj, separators=(",", ":")).encode()
        if len(body) > SLOT_BYTES - _SLOT_HDR.size:
            raise SwapdError(f"session registry: {len(body)} bytes exceed a slot of "
                             f"{SLOT_BYTES}")
        seq = self.seq + 1
        off = PAGE_SIZE + (seq & 1) * SLOT_BYTES
        # the body first, its header (sequence number and CRC) last: a torn write fails the CRC
        os.pwrite(self.fd, body, off + _SLOT_HDR.size)
        os.pwrite(self.fd, _SLOT_HDR.pack(seq, len(body), zlib.crc32(body)), off)
        self.seq = seq

    def close(self) -> None:
        """Close this process's descriptor of the registry."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


# --- page states -------------------------------------------------------------------------------


def create_page_state(rid: int, npages: int) -> tuple[int, mmap.mmap]:
    """A page-state memfd for region ``rid``, all HOLE; returns (fd, the bytes' mapping)."""
    fd = kmemfd.memfd_create(f"swapd-pagestate-{rid}")
    try:
        os.ftruncate(fd, PAGE_SIZE + max(npages, 1))
        os.pwrite(fd, _PGST_HDR.pack(PAGESTATE_MAGIC, FORMAT_VERSION, PAGE_SIZE, npages, rid), 0)
        return fd, mmap.mmap(fd, max(npages, 1), mmap.MAP_SHARED,
                             mmap.PROT_READ | mmap.PROT_WRITE, offset=PAGE_SIZE)
    except BaseException:
        os.close(fd)
        raise


def adopt_page_state(fd: int, npages: int) -> mmap.mmap:
    """Map a stored page-state memfd of ``npages`` pages.  Raises HandoverFormatError."""
    magic, version, page_size, n, _rid = _PGST_HDR.unpack(os.pread(fd, _PGST_HDR.size, 0))
    if magic != PAGESTATE_MAGIC:
        raise HandoverFormatError(f"page states: magic {magic!r} is not {PAGESTATE_MAGIC!r}")
    if version != FORMAT_VERSION:
        raise HandoverFormatError(f"page states: format version {version} is not supported "
                                  f"(this swapd reads version {FORMAT_VERSION})")
    if page_size != PAGE_SIZE or n != npages:
        raise HandoverFormatError(f"page states: {n} pages of {page_size} bytes, the registry "
                                  f"says {npages} of {PAGE_SIZE}")
    return mmap.mmap(fd, max(npages, 1), mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE,
                     offset=PAGE_SIZE)


def resident_runs(memfd: int, npages: int) -> list[tuple[int, int]]:
    """``(first page, count)`` of every run of pages present in the memfd.  O(runs)."""
    runs: list[tuple[int, int]] = []
    end = npages * PAGE_SIZE
    off = 0
    while off < end:
        data = kmemfd.seek_data(memfd, off)
        if data is None or data >= end:
            break
        hole = min(kmemfd.seek_hole(memfd, data), end)
        first = data // PAGE_SIZE
        last = (hole + PAGE_SIZE - 1) // PAGE_SIZE
        runs.append((first, last - first))
        off = last * PAGE_SIZE
    return runs


def state_runs(fd: int, npages: int) -> list[tuple[int, int]]:
    """``(first, count)`` of the pages whose state bytes lie in data of page-state memfd ``fd``
    (the bytes from its offset 4096); every other page's byte is a hole: HOLE, never written,
    and costing no memory.  O(runs)."""
    runs: list[tuple[int, int]] = []
    end = PAGE_SIZE + npages
    off = PAGE_SIZE
    while off < end:
        data = kmemfd.seek_data(fd, off)
        if data is None or data >= end:
            break
        hole = min(kmemfd.seek_hole(fd, data), end)
        runs.append((data - PAGE_SIZE, hole - data))
        off = hole
    return runs


def read_page_state(fd: int, npages: int) -> bytes:
    """The ``npages`` state bytes of page-state memfd ``fd``, read with ``pread``: a hole
    reads as zeros (HOLE) and, unlike a read through a shared mapping, allocates nothing."""
    got = os.pread(fd, npages, PAGE_SIZE)
    return got + bytes(npages - len(got))


def write_page_state(state: Any, old: bytes, new: bytes) -> None:
    """Store ``new`` into the mapped page states ``state``, whose bytes are ``old``: only the
    pages of the memfd that change are written (an unchanged hole stays a hole)."""
    for off in range(0, len(new), PAGE_SIZE):
        chunk = new[off:off + PAGE_SIZE]
        if chunk != old[off:off + PAGE_SIZE]:
            state[off:off + len(chunk)] = chunk


def restore_clean_copies(layer: Any, lrid: int, copies: bytes, resident: bytes | bytearray,
                         old: bytes) -> list[int]:
    """Make the clean copies of pages that a read fault was bringing back stored copies again;
    returns the pages whose clean copy could not be (the caller counts them not stored).

    A read fault with non-exclusive loads keeps the layer's copy, marked clean, and then
    places the page with ``UFFDIO_COPY``; a crash in between leaves a page that the memfd
    does not hold, whose state byte still says SWAPPED (or EVICTING), and whose copy is whole
    but clean, which ``load`` refuses.  ``layer.store_clean`` turns it back into the
    swapped-out copy, so the recovery scan finds the page stored instead of poisoning it on
    its next fault.  A clean copy of any other page the memfd does not hold (one the client
    discarded) is left as it is.  ``copies`` as ``SwapLayer.copies`` gives them.  O(npages),
    in C, plus one call per such page.
    """
    failed: list[int] = []
    for i in indices_of(copies, 2):
        if not resident[i] and old[i] in (SWAPPED, EVICTING) and not layer.store_clean(lrid, i):
            failed.append(i)
    return failed


def recover_page(old: int, resident: bool, stored: bool) -> int:
    """The state of one page after a restart (the module docstring's rule).

    Returns RESIDENT, SWAPPED, HOLE or GONE, or -1 for a lost page (poison it).
    """
    if resident:
        return RESIDENT
    if stored:
        return SWAPPED
    if old in (SWAPPED, EVICTING):
        return -1
    if old == GONE:
        return GONE
    return HOLE


LOST: Final = 0xFF  # recover_pages: a lost page (poison it)


def _recover_table() -> bytes:
    codes = bytearray(256)
    for c in range(256):
        v = recover_page(c & 7, bool(c & 8), bool(c & 16))
        codes[c] = LOST if v < 0 else v
    return bytes(codes)


_RECOVER: Final = _recover_table()  # code (old | resident << 3 | stored << 4) -> new state
_KNOWN: Final = bytes(range(GONE + 1)) + bytes([HOLE]) * (255 - GONE)  # as recover_page


def recover_pages(old: bytes, resident: bytes | bytearray, stored: bytes | bytearray) -> bytes:
    """:func:`recover_page` of every page at once: ``old`` page states, ``resident`` and
    ``stored`` one byte (0 or 1) per page; the new states, :data:`LOST` for a lost page.
    O(npages), in C: the three are combined into one code per page (an unknown old state
    counts as HOLE, as in :func:`recover_page`) and translated by a table built from
    :func:`recover_page`."""
    n = len(old)
    code = (int.from_bytes(old.translate(_KNOWN), "little")
            | int.from_bytes(resident, "little") << 3
            | int.from_bytes(stored, "little") << 4)
    return code.to_bytes(n, "little").translate(_RECOVER)


def both(a: bytes | bytearray, b: bytes | bytearray) -> bytes:
    """The pages set in both of two 0/1-per-page maps of one length.  O(n), in C."""
    return (int.from_bytes(a, "little") & int.from_bytes(b, "little")).to_bytes(len(a),
                                                                                 "little")


def byte_runs(buf: bytes | bytearray, value: int = 1) -> list[tuple[int, int]]:
    """``(first, count)`` of every run of bytes equal to ``value``.  O(n), in C."""
    return [(m.start(), m.end() - m.start())
            for m in re.finditer(re.escape(bytes([value])) + b"+", buf)]


def indices_of(buf: bytes | bytearray, value: int) -> list[int]:
    """Every index of ``value`` in ``buf``.  O(n + matches)."""
    out: list[int] = []
    i = buf.find(value)
    while i >= 0:
        out.append(i)
        i = buf.find(value, i + 1)
    return out


def passed_fds(pairs: Iterable[tuple[int, str]]) -> dict[str, int]:
    """``LISTEN_FDS`` as name -> fd; a name passed twice keeps the first, closes the rest."""
    out: dict[str, int] = {}
    for fd, name in pairs:
        if name in out:
            log.warning("fd store: name %r passed twice; closing fd %d", name, fd)
            with contextlib.suppress(OSError):
                os.close(fd)
            continue
        out[name] = fd
    return out
