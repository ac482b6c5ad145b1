# Sealing of the disk tier's pages: authenticated encryption with a key held only in memory.
#
# Design.  A page written to the disk tier's file is encrypted and authenticated with AES-256-GCM
# (``cryptography``'s AESGCM; AES-NI makes it cheaper than ChaCha20-Poly1305 on x86, and the
# two are interchangeable here).  The 16-byte tag takes the place of the CRC-32 the tier kept per
# slot: a swap file left behind by a crash, or read by another local user, shows only ciphertext,
# and any change to a slot's bytes -- or a slot's bytes moved to another slot, or an old copy of
# the same slot written back -- fails authentication and is reported as CorruptPageError, so the
# daemon poisons that page instead of serving it.
#
# Nonces.  GCM must never see the same (key, nonce) twice.  The 96-bit nonce is the slot number
# (u32) followed by a 64-bit write counter (``gen``) that increases on every seal and is never
# reset while the key lives: unique for the key's lifetime, even when a slot is rewritten.  The
# slot number is also the associated data, so the ciphertext is bound to its slot.  The counter
# travels with the key across a restart (``export_state`` / ``from_state``): a successor that
# reused the key with a counter from zero would repeat nonces.
#
# Per-slot record (the table that replaces the CRC array), ``RECORD`` bytes per slot:
#
#     offset 0   u64 gen    the write counter the slot was sealed with; 0 = nothing sealed
#     offset 8   u8[16]     the GCM tag
#
# ``gen`` starts at 1, so an all-zero record never authenticates anything: a freed slot, or a
# slot whose record was lost, fails as corrupt rather than reading as zeros.  The table is a
# writable buffer handed in (a bytearray by default; the state module can pass a memfd-backed
# view), so the key, the counter and the records are everything a restart must carry.
#
# Invariants (``_check``): ``next_gen`` is above every slot's gen; a record with gen 0 has an
# all-zero tag.  Lock order: DiskTier._lock -> Sealer._lock (a leaf: only the counter and the
# table's writes take it; AES runs outside it).
#
# Prior art: dm-crypt with an AEAD (drivers/md/dm-crypt.c, ``crypt_iv_*`` IV generators keyed
# by sector; its integrity mode keeps the tag beside the sector, dm-integrity), and the kernel's
# swap encryption proposals, which key each boot randomly so nothing survives the machine.
"""``Sealer``: AES-256-GCM sealing of disk-tier slots; the tag replaces the slot's CRC."""

from __future__ import annotations

import secrets
import struct
import threading

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from swapd.errors import ConfigError, CorruptPageError, InvariantError

__all__ = ["KEY_BYTES", "RECORD", "STATE_BYTES", "TAG_BYTES", "Sealer"]

KEY_BYTES = 32  # AES-256
TAG_BYTES = 16
RECORD = 8 + TAG_BYTES  # u64 gen + tag per slot
_GEN = struct.Struct("<Q")
_NONCE = struct.Struct("<IQ")  # u32 slot, u64 gen
_STATE = struct.Struct("<4sI32sQ")  # magic, version, key, next_gen
_MAGIC = b"SEAL"
_VERSION = 1
STATE_BYTES = _STATE.size
_ZERO_TAG = bytes(TAG_BYTES)


class Sealer:
    """Seal and open the pages of ``nslots`` slots under one key.

    ``key``: 32 bytes (default: fresh random ones).  ``next_gen``: the first write counter
    (default 1; from ``export_state`` after a restart).  ``table``: a writable buffer of
    ``nslots * RECORD`` bytes for the per-slot records (default: a new zeroed bytearray).
    Thread-safe.
    """

    def __init__(self, nslots: int, *, key: bytes | None = None, next_gen: int = 1,
                 table: memoryview | bytearray | None = None) -> None:
        if key is None:
            key = secrets.token_bytes(KEY_BYTES)
        if len(key) != KEY_BYTES:
            raise ConfigError(f"seal key: {len(key)} bytes, need {KEY_BYTES}")
        if not 1 <= next_gen < 1 << 64:
            raise ConfigError(f"seal counter {next_gen} out of range")
        if nslots <= 0 or nslots >= 1 << 32:
            raise ConfigError(f"sealer: {nslots} slots out of range 1..2**32-1")
        if table is None:
            table = bytearray(nslots * RECORD)
        mv = memoryview(table).cast("B")
        if mv.readonly or len(mv) < nslots * RECORD:
            raise ConfigError(f"sealer: record table needs {nslots * RECORD} writable bytes")
        self.nslots = nslots
        self._key = bytes(key)  # never written anywhere but export_state()
        self._aead = AESGCM(self._key)
        self._lock = threading.Lock()
        self._next_gen = next_gen  # under _lock; the next write counter, never reused
        self._table = mv  # slot -> RECORD bytes (see the module comment)
        self.sealed = 0  # pages sealed (under _lock)
        self.failed_opens = 0  # pages that failed authentication (under _lock)

    # -- state across a restart -------------------------------------------------------------

    def export_state(self) -> bytes:
        """The key and the next counter (``STATE_BYTES`` bytes) for a successor.  O(1).

        Secret: hand it over only in daemon memory (a memfd in the fd store), never a file.
        """
        with self._lock:
            return _STATE.pack(_MAGIC, _VERSION, self._key, self._next_gen)

    @classmethod
    def from_state(cls, state: bytes, nslots: int, *,
                   table: memoryview | bytearray | None = None) -> Sealer:
        """A sealer that opens what the exporter sealed (with its record ``table``)."""
        if len(state) != STATE_BYTES:
            raise ConfigError(f"seal state: {len(state)} bytes, need {STATE_BYTES}")
        magic, version, key, next_gen = _STATE.unpack(state)
        if magic != _MAGIC or version != _VERSION:
            raise ConfigError(f"seal state: bad magic {magic!r} or version {version}")
        return cls(nslots, key=key, next_gen=next_gen, table=table)

    @property
    def table(self) -> memoryview:
        """The per-slot records (``nslots * RECORD`` bytes)."""
        return self._table

    # -- sealing ----------------------------------------------------------------------------

    def seal(self, slot: int, page: bytes | memoryview) -> bytes:
        """Encrypt ``page`` for ``slot``, record its counter and tag; return the ciphertext
        (same length).  O(len(page))."""
        with self._lock:
            gen = self._next_gen
            self._next_gen = gen + 1
            self.sealed += 1
        ad = slot.to_bytes(4, "little")
        out = self._aead.encrypt(_NONCE.pack(slot, gen), page, ad)
        n = len(out) - TAG_BYTES
        off = slot * RECORD
        with self._lock:
            _GEN.pack_into(self._table, off, gen)
            self._table[off + 8:off + RECORD] = out[n:]
        return out[:n]

    def open(self, slot: int, data: bytes) -> bytes:
        """The page sealed in ``slot`` from its ciphertext ``data``; CorruptPageError if it
        fails authentication (changed bytes, another slot's bytes, an old copy, no record).
        O(len(data))."""
        off = slot * RECORD
        rec = bytes(self._table[off:off + RECORD])
        (gen,) = _GEN.unpack_from(rec)
        if gen == 0:
            raise CorruptPageError(f"slot {slot} holds no sealed page")
        try:
            return self._aead.decrypt(_NONCE.pack(slot, gen), data + rec[8:],
                                      slot.to_bytes(4, "little"))
        except InvalidTag as exc:
            with self._lock:
                self.failed_opens += 1
            raise CorruptPageError(f"slot {slot} fails authentication (tampered, moved or "
                                   "stale)") from exc

    def forget(self, slot: int) -> None:
        """Clear ``slot``'s record: nothing opens there until it is sealed again.  O(1)."""
        off = slot * RECORD
        with self._lock:
            self._table[off:off + RECORD] = bytes(RECORD)

    def _check(self) -> None:
        """Counter above every record's, empty records all zero.  O(nslots)."""
        with self._lock:
            t = self._table
            for s in range(self.nslots):
                off = s * RECORD
                (gen,) = _GEN.unpack_from(t, off)
                if gen >= self._next_gen:
                    raise InvariantError(f"sealer: slot {s} gen {gen} >= next {self._next_gen}")
                if gen == 0 and bytes(t[off + 8:off + RECORD]) != _ZERO_TAG:
                    raise InvariantError(f"sealer: empty slot {s} has a tag")
