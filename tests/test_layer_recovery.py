"""Adoption after a crash mid-update (swapd/layer/core.py ``_repair_lists_locked``): the swap
table's words are the truth, and an LRU list that disagrees with them is rebuilt.

A SIGKILL can land between a word's update and its list's; the test makes that state by hand
(an entry unlinked, its word unchanged) in the layer's own memfd regions and adopts them.
"""

from __future__ import annotations

import logging
import os
import random
from pathlib import Path

import pytest

from swapd.layer import DiskTier, EntryState, LayerConfig, SwapLayer
from swapd.pages import PAGE_SIZE


def test_a_list_torn_by_a_crash_is_rebuilt_from_the_words(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    rng = random.Random(1)
    layer = SwapLayer([DiskTier(tmp_path, 256 * PAGE_SIZE, seal=False)], config=LayerConfig(),
                      clock=lambda: 0.0)
    pages = [rng.randbytes(PAGE_SIZE) for _ in range(64)]
    r = layer.add_region("a", 64)
    for i, pg in enumerate(pages):
        layer.store(r, i, pg)
    assert all(layer.state(r, i) is EntryState.DISK for i in range(64))
    table = layer._table
    with layer._lock:
        g = next(iter(layer._regions.values())).base + 17
        table.unlink(g)  # the crash: the entry left its list, its word still says "on disk"
    fds = {k: os.dup(v) for k, v in layer.state_fds().items()}
    with caplog.at_level(logging.WARNING, logger="swapd.layer.core"):
        new = SwapLayer.adopt(fds, config=LayerConfig(), clock=lambda: 0.0)
    try:
        assert "rebuilt in page order" in caplog.text
        new._check()
        (rid,) = new.regions()
        for i, pg in enumerate(pages):
            assert new.load(rid, i) == pg
        new._check()
    finally:
        new.close()
        layer.close(keep_state=True)


def test_adopted_clients_are_renamed_by_their_owner(tmp_path: Path) -> None:
    """An adopted layer numbers its clients in the order they first stored; the owner gives
    them its names back (``rename_clients``), here swapping two, and removing one client
    then frees that client's pages only."""
    layer = SwapLayer([DiskTier(tmp_path, 256 * PAGE_SIZE, seal=False)], config=LayerConfig(),
                      clock=lambda: 0.0)
    ra = layer.add_region(2, 8)  # session 2 stores first: the table numbers it 1
    rb = layer.add_region(1, 8)
    for i in range(8):
        layer.store(ra, i, bytes([0xA0 + i]) * PAGE_SIZE)
        layer.store(rb, i, bytes([0xB0 + i]) * PAGE_SIZE)
    fds = {k: os.dup(v) for k, v in layer.state_fds().items()}
    new = SwapLayer.adopt(fds, config=LayerConfig(), clock=lambda: 0.0)
    try:
        assert new.regions() == {ra: (1, 8), rb: (2, 8)}  # by number, not by the old names
        with pytest.raises(ValueError, match="two clients one name"):
            new.rename_clients({1: 2})
        with pytest.raises(KeyError, match="no client 3"):
            new.rename_clients({3: 1})
        new.rename_clients({1: 2, 2: 1})
        assert new.regions() == {ra: (2, 8), rb: (1, 8)}
        new._check()
        new.remove_client(1)
        assert list(new.regions()) == [ra]
        for i in range(8):
            assert new.load(ra, i) == bytes([0xA0 + i]) * PAGE_SIZE
        new._check()
    finally:
        new.close()
        layer.close(keep_state=True)


@pytest.mark.parametrize("backend", ["zsmalloc", "zbud", "z3fold"])
def test_an_object_no_entry_names_is_freed_at_adoption(
        backend: str, caplog: pytest.LogCaptureFixture) -> None:
    """A crash between a store's malloc and the table's commit leaves an object nothing
    names: the adopted compressed tier frees it (``CompressedTier.reconcile``), so the
    tier's object count matches the table again and the invariant check holds."""
    from swapd.layer.tier import CompressedTier
    from swapd.plugins import make_backend

    rng = random.Random(2)
    be = make_backend(backend)
    layer = SwapLayer([CompressedTier("lz4", be)], config=LayerConfig(), clock=lambda: 0.0)
    r = layer.add_region("a", 32)
    pages = [rng.randbytes(300) + bytes(PAGE_SIZE - 300) for _ in range(32)]
    for i, pg in enumerate(pages):
        layer.store(r, i, pg)
    orphan = be.malloc(700)  # the crash: allocated and written, never named by a word
    be.write(orphan, rng.randbytes(700))
    fds = {k: os.dup(v) for k, v in layer.state_fds().items()}
    with caplog.at_level(logging.WARNING, logger="swapd.layer.core"):
        new = SwapLayer.adopt(fds, config=LayerConfig(), clock=lambda: 0.0)
    try:
        assert "released 1 key(s) no entry references" in caplog.text
        assert new._tiers[0].keys_in_use() == 32
        new._check()
        (rid,) = new.regions()
        for i, pg in enumerate(pages):
            assert new.load(rid, i) == pg
        new._check()
    finally:
        new.close()
        layer.close(keep_state=True)


@pytest.mark.parametrize("cut", ["malloc_before_header", "malloc_before_record", "free_after_slot"])
def test_zsmalloc_torn_by_a_crash_is_repaired_at_adoption(cut: str) -> None:
    """A SIGKILL inside zsmalloc's malloc or free leaves its records, chain, counters and
    headers disagreeing; adoption repairs them (``ZsPool._repair_torn``) so the pool passes
    its own check and every other object reads back."""
    from backends.zsmalloc import (
        C_BYTES,
        C_OBJECTS,
        H_INFO,
        H_WORDS,
        IDX_MASK,
        IDX_SHIFT,
        SIZE_MASK,
        ZsPool,
    )
    from swapd.plugins import make_backend

    rng = random.Random(3)
    be = make_backend("zsmalloc")
    objs = {}
    for _ in range(64):
        data = rng.randbytes(rng.randrange(40, 900))
        h = be.malloc(len(data))
        be.write(h, data)
        objs[h] = data
    victim = next(iter(objs))
    hi = (victim >> IDX_SHIFT) & IDX_MASK
    if cut == "malloc_before_header":  # record live, header not yet written, counters short
        h = be.malloc(300)
        loc = be.locate(h)
        be._au64[(loc.parts[0][0] - 8) >> 3] = 0  # the 8-byte handle header before the object
        c2 = be._class_for[300]
        be._C[c2.base + C_OBJECTS] -= 1
        be._C[c2.base + C_BYTES] -= 300
    elif cut == "malloc_before_record":  # record popped off the chain, never made live
        be.free(victim)
        del objs[victim]
        be._S[be._s_hfree] = be._H[hi * H_WORDS]
    else:  # free(): counters down and slot back on the zspage, record still live
        data = objs.pop(victim)
        info = be._H[hi * H_WORDS + H_INFO]
        be.free(victim)
        be._H[hi * H_WORDS + H_INFO] = info | (len(data) & SIZE_MASK)
        be._S[be._s_hfree] = be._H[hi * H_WORDS]  # and never chained
    fds = {k: os.dup(v) for k, v in be.state_fds().items()}
    new = ZsPool.adopt(fds)
    try:
        new._check()
        for h, data in objs.items():
            assert new.read_verified(h) == data
        h = new.malloc(500)
        new.write(h, b"y" * 500)
        new._check()
    finally:
        new.close()
        be.close()
