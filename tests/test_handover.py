"""The recovery scan by runs (swapd/daemon/handover.py): ``recover_pages`` gives, for every
page at once, what the one-page rule ``recover_page`` (docs/design.md sec. 9) gives, and the
run helpers find what a page-by-page loop finds."""

from __future__ import annotations

import itertools
import random
from pathlib import Path

import pytest

from swapd.daemon import handover as ho
from swapd.errors import EntryNotFoundError
from swapd.layer import DiskTier, LayerConfig, SwapLayer
from swapd.pages import PAGE_SIZE


def _one(old: int, resident: int, stored: int) -> int:
    v = ho.recover_page(old, bool(resident), bool(stored))
    return ho.LOST if v < 0 else v


def test_recover_pages_is_recover_page_for_every_page() -> None:
    rng = random.Random(7)
    for n in (1, 7, 4096, 20000):
        # every old state, including values no daemon writes (they count as HOLE)
        old = bytes(rng.choice([0, 1, 2, 3, 4, 4, 3, 9, 255]) for _ in range(n))
        resident = bytes(rng.random() < 0.3 for _ in range(n))
        stored = bytes(rng.random() < 0.6 for _ in range(n))
        got = ho.recover_pages(old, resident, stored)
        assert got == bytes(_one(o, r, s) for o, r, s in zip(old, resident, stored))
    every = [(o, r, s) for o in range(256) for r in (0, 1) for s in (0, 1)]
    got = ho.recover_pages(bytes(o for o, _, _ in every), bytes(r for _, r, _ in every),
                           bytes(s for _, _, s in every))
    assert [_one(o, r, s) for o, r, s in every] == list(got)


def test_run_helpers_agree_with_a_loop() -> None:
    rng = random.Random(3)
    a = bytes(rng.random() < 0.5 for _ in range(5000))
    b = bytes(rng.random() < 0.5 for _ in range(5000))
    assert ho.both(a, b) == bytes(x & y for x, y in zip(a, b))
    states = bytes(rng.choice([0, 1, 3, 3, 3]) for _ in range(5000))
    for value in (0, 1, 3, 4):
        runs = ho.byte_runs(states, value)
        flat = [i for first, n in runs for i in range(first, first + n)]
        assert flat == [i for i, v in enumerate(states) if v == value]
        assert all(n > 0 for _, n in runs)
        assert all(f1 + n1 < f2 for (f1, n1), (f2, _) in itertools.pairwise(runs))  # maximal
        assert ho.indices_of(states, value) == flat
    assert ho.byte_runs(b"") == [] and ho.indices_of(b"", 1) == []


def test_page_states_are_read_and_written_without_filling_holes() -> None:
    """Recovery reads the old states with pread and writes back only the pages that change,
    so a sparse region's page-state memfd stays sparse across a restart."""
    import os

    npages = 64 * 4096  # 64 pages of state bytes
    fd, mm = ho.create_page_state(5, npages)
    try:
        mm[4096 * 10 + 3] = ho.SWAPPED
        blocks = os.fstat(fd).st_blocks
        old = ho.read_page_state(fd, npages)
        assert len(old) == npages and old.count(0) == npages - 1 and old[4096 * 10 + 3] == 3
        assert os.fstat(fd).st_blocks == blocks  # reading the holes allocated nothing
        new = bytearray(old)
        new[4096 * 10 + 3] = ho.RESIDENT
        new[4096 * 20] = ho.GONE
        ho.write_page_state(mm, old, bytes(new))
        assert os.fstat(fd).st_blocks == blocks + 4096 // 512  # one more page: the changed one
        assert ho.read_page_state(fd, npages) == bytes(new)
    finally:
        mm.close()
        os.close(fd)


def test_a_read_fault_cut_short_keeps_its_clean_copy(tmp_path: Path) -> None:
    """A non-exclusive load keeps the layer's copy, clean, before ``UFFDIO_COPY`` places the
    page; a crash in between leaves the page in neither the memfd nor (as ``load`` sees it)
    the layer.  Recovery turns the clean copy back into the stored copy for a page whose old
    state is SWAPPED, so the page is served instead of poisoned; a clean copy of a page the
    old daemon had RESIDENT (the client discarded it since) is left alone."""
    layer = SwapLayer([DiskTier(tmp_path, 64 * PAGE_SIZE, seal=False)],
                      config=LayerConfig(exclusive_loads=False), clock=lambda: 0.0)
    try:
        r = layer.add_region("a", 4)
        pages = [bytes([0x41 + i]) * PAGE_SIZE for i in range(4)]
        for i, pg in enumerate(pages):
            layer.store(r, i, pg)
        for i in (0, 1, 2):
            assert layer.load(r, i) == pages[i]  # read faults: the copies stay, clean
        copies = layer.copies(r)
        assert copies == bytes([2, 2, 2, 1])
        with pytest.raises(EntryNotFoundError, match="not swapped out"):
            layer.load(r, 0)
        # page 0: the fault was cut short (SWAPPED, not in the memfd); page 1: placed
        # (resident); page 2: placed, then discarded by the client (RESIDENT, not in the memfd)
        old = bytes([ho.SWAPPED, ho.RESIDENT, ho.RESIDENT, ho.SWAPPED])
        resident = bytes([0, 1, 0, 0])
        assert ho.restore_clean_copies(layer, r, copies, resident, old) == []
        assert layer.copies(r) == bytes([1, 2, 2, 1])
        assert layer.load(r, 0) == pages[0]  # served, not poisoned
        assert layer.load(r, 3) == pages[3]
        layer._check()
    finally:
        layer.close()
