"""The layer over a chain of N tiers (swapd/layer/core.py): demotion down the chain in LRU
order, cascades, tiers that become unavailable, and slow-tier I/O outside the layer lock.

Deterministic: pages from a seeded ``random.Random``; the shrinker's clock is injected;
threads meet on events, and no test asserts a timing.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from swapd.arena import PAGE_SIZE
from swapd.errors import EntryNotFoundError, StoreRejected, TierIOError
from swapd.layer import CompressedTier, DiskTier, EntryState, LayerConfig, SwapLayer, TierLimits
from swapd.plugins import make_backend

LIMITS = TierLimits(ram_total_bytes=1 << 30)


def page(rng: random.Random, i: int) -> bytes:
    """A page that compresses to about 1.5 KiB (random head, repeated tail), distinct per i."""
    head = rng.randbytes(1400) + i.to_bytes(8, "little")
    tail = f"chain {i} ".encode() * 400
    return (head + tail)[:PAGE_SIZE]


class GatedDisk(DiskTier):
    """A real disk tier whose loads can be held at a gate (to run I/O concurrently), and which
    can be marked unavailable (a store that cannot be reached)."""

    def __init__(self, path: Path, size: int) -> None:
        super().__init__(path, size)
        self.gate: threading.Event | None = None
        self.entered = threading.Event()
        self.up = True

    def load_batch(self, keys: Sequence[int]) -> list[bytes]:
        if self.gate is not None:
            self.entered.set()
            self.gate.wait()
        return super().load_batch(keys)

    def available(self) -> bool:
        return self.up

    def store_batch(self, pages: Sequence[bytes]) -> list[int]:
        if not self.up:
            raise TierIOError(111, "connection refused")
        return super().store_batch(pages)


def chain(tmp: Path, pool_pages: int, *sizes: int, **cfg: Any) -> tuple[SwapLayer, list[Any]]:
    tiers: list[Any] = [CompressedTier("lz4", make_backend("zsmalloc", max_pages=4096), LIMITS)]
    for n, size in enumerate(sizes):
        d = tmp / f"t{n}"
        d.mkdir()
        tiers.append(GatedDisk(d, size * PAGE_SIZE))
    config = LayerConfig(pool_limit_bytes=pool_pages * PAGE_SIZE, **cfg)
    return SwapLayer(tiers, config=config, clock=lambda: 0.0), tiers


def tiers_of(layer: SwapLayer, r: int, n: int) -> list[int]:
    order = {EntryState.COMPRESSED: 0}
    out = []
    for i in range(n):
        st = layer.state(r, i)
        out.append(order.get(st, -1))
    return out


def test_demotion_moves_down_the_chain_in_lru_order(tmp_path: Path) -> None:
    layer, tiers = chain(tmp_path, 8, 64, 4096)
    rng = random.Random(1)
    n = 400
    pages = [page(rng, i) for i in range(n)]
    r = layer.add_region("a", n)
    for i, pg in enumerate(pages):
        layer.store(r, i, pg)
        if i % 50 == 0:
            layer._check()
    layer._check()
    # every page has a copy; the oldest are deepest: tier index never increases with age
    where = []
    for i in range(n):
        assert layer.state(r, i) is not EntryState.RESIDENT
    for ts in layer.tier_stats():
        assert ts["entries"] >= 0
    t1, t2 = tiers[1], tiers[2]
    keys_t2 = t2.used_slots()
    keys_t1 = t1.used_slots()
    assert keys_t2 > 0 and keys_t1 > 0, layer.tier_stats()
    # recover the tier of each page from the tier stats' order: load each page and note which
    # tier's load counter moved
    before = [ts["loads"] for ts in layer.tier_stats()]
    for i in range(n):
        assert layer.load(r, i) == pages[i]
        after = [ts["loads"] for ts in layer.tier_stats()]
        moved = [a - b for a, b in zip(after, before)]
        where.append(moved.index(1) if 1 in moved else -1)
        before = after
    deepest_first = [w for w in where if w >= 0]
    assert deepest_first == sorted(deepest_first, reverse=True), where
    st = layer.stats()
    assert st.lru_inversions == 0
    ts = layer.tier_stats()
    assert ts[1]["demoted_in"] > 0 and ts[2]["demoted_in"] > 0 and ts[1]["demoted_out"] > 0
    layer._check()
    layer.close()


def test_unavailable_tier_takes_nothing_and_loses_nothing(tmp_path: Path) -> None:
    layer, tiers = chain(tmp_path, 8, 32, 4096)
    remote = tiers[2]
    remote.up = False
    rng = random.Random(2)
    pages = {}
    r = layer.add_region("a", 300)
    refused = 0
    for i in range(300):
        pg = page(rng, i)
        try:
            layer.store(r, i, pg)
            pages[i] = pg
        except StoreRejected:
            refused += 1  # the caller keeps the page resident
    layer._check()
    assert refused > 0 and remote.used_slots() == 0
    assert layer.tier_stats()[2]["unavailable_skips"] > 0
    remote.up = True
    for i, pg in pages.items():
        assert layer.load(r, i) == pg
    layer._check()
    layer.close()


def test_slow_load_runs_outside_the_lock(tmp_path: Path) -> None:
    layer, tiers = chain(tmp_path, 4, 4096)
    disk = tiers[1]
    rng = random.Random(3)
    n = 64
    pages = [page(rng, i) for i in range(n)]
    r = layer.add_region("a", n)
    for i, pg in enumerate(pages):
        layer.store(r, i, pg)
    on_disk = [i for i in range(n) if layer.state(r, i) is EntryState.DISK]
    in_pool = [i for i in range(n) if layer.state(r, i) is EntryState.COMPRESSED]
    assert on_disk and in_pool
    disk.gate = threading.Event()
    got: list[bytes] = []
    t = threading.Thread(target=lambda: got.append(layer.load(r, on_disk[0])))
    t.start()
    assert disk.entered.wait(30)
    # the disk read is held at its gate: the layer still serves the pool, stores and stats
    assert layer.load(r, in_pool[0]) == pages[in_pool[0]]
    layer.store(r, in_pool[0], pages[in_pool[0]])
    layer.stats()
    layer._check()
    disk.gate.set()
    t.join()
    assert got == [pages[on_disk[0]]]
    layer._check()
    layer.close()


def test_region_removed_during_a_slow_load_frees_the_key_once(tmp_path: Path) -> None:
    layer, tiers = chain(tmp_path, 4, 4096)
    disk = tiers[1]
    rng = random.Random(4)
    r = layer.add_region("a", 32)
    for i in range(32):
        layer.store(r, i, page(rng, i))
    victim = next(i for i in range(32) if layer.state(r, i) is EntryState.DISK)
    disk.gate = threading.Event()
    errors: list[BaseException] = []

    def load() -> None:
        try:
            layer.load(r, victim)
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=load)
    t.start()
    assert disk.entered.wait(30)
    layer.remove_region(r)
    layer._check()  # the busy entry's slot is still held: I/O is in flight
    disk.gate.set()
    t.join()
    assert len(errors) == 1 and isinstance(errors[0], EntryNotFoundError)
    assert disk.used_slots() == 0  # freed exactly once, after the read
    layer._check()
    layer.close()


def test_load_many_fetches_a_slow_run_in_one_batch(tmp_path: Path) -> None:
    layer, tiers = chain(tmp_path, 4, 4096)
    disk = tiers[1]
    calls: list[int] = []
    orig = disk.load_batch

    def counting(keys: Sequence[int]) -> list[bytes]:
        calls.append(len(keys))
        return orig(keys)

    disk.load_batch = counting  # type: ignore[method-assign]
    rng = random.Random(5)
    n = 96
    pages = [page(rng, i) for i in range(n)]
    r = layer.add_region("a", n)
    for i, pg in enumerate(pages):
        layer.store(r, i, pg)
    first = next(i for i in range(n) if layer.state(r, i) is EntryState.DISK)
    run = layer.swapped_run(r, first, 32)
    got = layer.load_many(r, first, run)
    assert got == pages[first:first + run]
    assert max(calls) > 1  # the disk part came in batches, not page by page
    layer._check()
    layer.close()


@pytest.mark.parametrize("exclusive", [True, False])
def test_chain_random_operations_keep_every_invariant(tmp_path: Path, exclusive: bool) -> None:
    layer, _tiers = chain(tmp_path, 6, 24, 4096, exclusive_loads=exclusive)
    rng = random.Random(6)
    n = 160
    r = layer.add_region("a", n)
    data: dict[int, bytes] = {}
    for step in range(1500):
        i = rng.randrange(n)
        op = rng.random()
        if op < 0.5:
            pg = page(rng, step)
            if i in data and not exclusive and layer.has_copy(r, i):
                layer.invalidate(r, i)
            try:
                layer.store(r, i, pg)
                data[i] = pg
            except StoreRejected:
                data.pop(i, None)
                layer.invalidate(r, i)
        elif op < 0.8 and i in data and layer.state(r, i) is not EntryState.RESIDENT:
            assert layer.load(r, i) == data[i]
            if exclusive:
                del data[i]
            else:
                layer.invalidate(r, i)
                del data[i]
        elif op < 0.9:
            layer.shrink_step()
        else:
            layer.writeback(rng.randrange(1, 16), rng.randrange(2))
        if step % 100 == 0:
            layer._check()
    for i, pg in data.items():
        assert layer.load(r, i) == pg
    assert layer.stats().lru_inversions == 0
    assert layer.tier_stats()[2]["demoted_in"] > 0  # the whole chain was exercised
    layer._check()
    layer.close()
