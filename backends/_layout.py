# Design: what the array backends (zsmalloc, zbud, z3fold) share about their state layout.
#
# A backend that opts into the array layout keeps every piece of mutable state -- handle
# records, page descriptors, list heads and links, free lists, counters -- in the arrays and
# scalars of one state region (swapd/state: a memfd with a versioned header, mapped once at its
# reserved size and grown with ftruncate), never in Python containers.  Python objects hold only
# what the configuration determines (class geometry, locks).  So the whole pool -- this region
# plus the arena's pages -- can be handed to another process, which reads it with the record
# formats of docs/state-format.md.
#
# Lists are index-linked: a record names its neighbours by record index, and index 0 of every
# record array is reserved so that 0 means "none".  Free records are chained through one of
# their words from a head kept in a scalar; the high-water mark is the array's count.
#
# Handles carry a generation: a handle record keeps an 8-bit generation that is bumped each
# time the record is handed out again, and the handle names both, so a handle used after its
# object was freed (and its record reused) is caught as stale, except after a multiple of 256
# reuses of the same record.  Handles are below 2**44 so that they fit the swap table's key
# field (swapd/layer/table.py) without a side table.
#
# Per-object checksums: CRC-32 as zlib computes it (CRC-32/ISO-HDLC: polynomial 0x04C11DB7,
# reflected, initial value and final xor 0xFFFFFFFF; crc32(b"123456789") == 0xCBF43926).  It is
# the checksum Python's standard library has in C (crc32c, Castagnoli, would need a dependency
# or a pure-Python loop on every store); a C reader has it in zlib as crc32().  A record's
# checksum is that of the object's bytes as last written (0 before the first write), so a reader
# that finds another value has found an object torn by a crash or never completely written.
"""Shared definitions of the array backends' state layout (docs/state-format.md)."""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Final

from swapd.errors import NotAdoptableError
from swapd.state import StateRegion

if TYPE_CHECKING:
    from swapd.arena import PageArena

#: The per-object checksum (CRC-32/ISO-HDLC, zlib's ``crc32``).
crc32: Final = zlib.crc32
#: The value of a layout's ``checksum`` scalar naming that algorithm.
CHECKSUM_CRC32: Final = 1
#: Handles are below this (the swap table's 44-bit key field).
HANDLE_LIMIT: Final = 1 << 44
#: Bits of a handle's generation.
GEN_BITS: Final = 8
GEN_MASK: Final = (1 << GEN_BITS) - 1

__all__ = ["CHECKSUM_CRC32", "GEN_BITS", "GEN_MASK", "HANDLE_LIMIT", "crc32"]


def adopt_regions(name: str, kind: str, version: int, fds: Mapping[str, int], *,
                  writable: bool) -> tuple[PageArena, StateRegion]:
    """The arena and the backend's own region named by ``fds`` (``{"arena", kind}``), taken
    over; NotAdoptableError if one is missing, StateFormatError (naming the field) if a header
    cannot be read.  On failure nothing stays open.  O(1)."""
    from swapd.arena import PageArena

    missing = {"arena", kind} - set(fds)
    if missing:
        raise NotAdoptableError(f"{name}: adopt needs the fds {sorted(missing)}")
    arena = PageArena.adopt(fds["arena"], writable=writable)
    try:
        state = StateRegion.adopt(fds[kind], kind, version, writable=writable)
    except BaseException:
        arena.close()
        raise
    return arena, state
