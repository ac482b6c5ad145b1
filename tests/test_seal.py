"""Sealed disk-tier pages (swapd/layer/seal.py): nothing readable on disk, tampering detected.

Deterministic: pages come from a seeded ``random.Random``; the file is a real file in tmp_path.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from swapd.arena import PAGE_SIZE
from swapd.errors import ConfigError, CorruptPageError, InvariantError
from swapd.layer import DiskTier
from swapd.layer.seal import RECORD, STATE_BYTES, Sealer


def _pages(seed: int, n: int) -> list[bytes]:
    rng = random.Random(seed)
    return [(b"secret-%06d " % i) * (PAGE_SIZE // 14) + rng.randbytes(PAGE_SIZE % 14)
            for i in range(n)]


def test_sealed_file_reveals_nothing(tmp_path: Path) -> None:
    pages = _pages(1, 16)
    dt = DiskTier(tmp_path, 32 * PAGE_SIZE, seal=True, keep=True)
    try:
        keys = dt.store_batch(pages)
        assert [dt.load(k) for k in keys] == pages
        raw = Path(dt.path).read_bytes()
        assert b"secret" not in raw  # another reader of the file sees ciphertext only
        assert dt.sealer is not None and dt.sealer.sealed == 16
        dt._check()
    finally:
        dt.close()
        os.unlink(dt.path)


@pytest.mark.parametrize("attack", ["flip", "swap", "replay", "freed", "zero"])
def test_tampering_is_corruption(tmp_path: Path, attack: str) -> None:
    pages = _pages(2, 8)
    dt = DiskTier(tmp_path, 16 * PAGE_SIZE, seal=True)
    try:
        keys = dt.store_batch(pages)
        a, b = keys[2], keys[5]
        if attack == "flip":
            os.pwrite(dt.fd, b"\x01", a * PAGE_SIZE + 100)
        elif attack == "swap":  # move slot b's bytes into slot a
            os.pwrite(dt.fd, os.pread(dt.fd, PAGE_SIZE, b * PAGE_SIZE), a * PAGE_SIZE)
        elif attack == "replay":  # an old copy of the same slot, after it was rewritten
            old = os.pread(dt.fd, PAGE_SIZE, a * PAGE_SIZE)
            dt.free(a)
            assert dt.store_batch([pages[0]]) == [a]
            os.pwrite(dt.fd, old, a * PAGE_SIZE)
        elif attack == "freed":
            dt.free(a)
        elif attack == "zero":  # what a sparse or lost block reads as
            os.pwrite(dt.fd, bytes(PAGE_SIZE), a * PAGE_SIZE)
        with pytest.raises(CorruptPageError):
            dt.load(a)
        others = [k for k in keys if k != a]
        assert [dt.load(k) for k in others] == [pages[keys.index(k)] for k in others]
        dt._check()
    finally:
        dt.close()


def test_state_hand_over_opens_old_slots_and_never_reuses_a_nonce(tmp_path: Path) -> None:
    pages = _pages(3, 4)
    dt = DiskTier(tmp_path, 8 * PAGE_SIZE, seal=True)
    try:
        keys = dt.store_batch(pages)
        old = dt.sealer
        assert old is not None
        state = old.export_state()
        assert len(state) == STATE_BYTES
        new = Sealer.from_state(state, 8, table=old.table)
        data = os.pread(dt.fd, PAGE_SIZE, keys[1] * PAGE_SIZE)
        assert new.open(keys[1], data) == pages[1]
        gen_old = int.from_bytes(old.table[keys[3] * RECORD:keys[3] * RECORD + 8], "little")
        new.seal(7, pages[0])
        gen_new = int.from_bytes(new.table[7 * RECORD:7 * RECORD + 8], "little")
        assert gen_new > gen_old  # the counter came along: no (key, nonce) pair repeats
        other = Sealer(8)  # another key opens nothing
        with pytest.raises(CorruptPageError):
            other.open(keys[1], data)
        new._check()
    finally:
        dt.close()


def test_sealer_refuses_bad_state() -> None:
    with pytest.raises(ConfigError, match="need 32"):
        Sealer(4, key=b"short")
    with pytest.raises(ConfigError, match="bad magic"):
        Sealer.from_state(bytes(STATE_BYTES), 4)
    with pytest.raises(ConfigError, match="writable bytes"):
        Sealer(4, table=bytearray(RECORD))
    s = Sealer(4)
    s.seal(1, bytes(PAGE_SIZE))
    s.table[1 * RECORD:1 * RECORD + 8] = (1 << 40).to_bytes(8, "little")
    with pytest.raises(InvariantError):
        s._check()


def test_seeded_stress_sealed_tier(tmp_path: Path) -> None:
    rng = random.Random(4)
    dt = DiskTier(tmp_path, 64 * PAGE_SIZE, seal=True)
    live: dict[int, bytes] = {}
    try:
        for _ in range(300):
            op = rng.random()
            if op < 0.5 and len(live) < 60:
                batch = [rng.randbytes(PAGE_SIZE) for _ in range(rng.randint(1, 6))]
                keys = dt.store_batch(batch[: 64 - len(live)])
                live.update(zip(keys, batch))
            elif op < 0.8 and live:
                k = rng.choice(sorted(live))
                assert dt.load(k) == live[k]
            elif live:
                k = rng.choice(sorted(live))
                dt.free(k)
                del live[k]
        dt._check()
        assert all(dt.load(k) == v for k, v in live.items())
    finally:
        dt.close()
