"""Contract and behaviour tests of the swap-LRU layer (swapd/layer/), over every backend.

Deterministic: pages come from ``Corpus.synthetic`` or are built from a seeded
``random.Random``; the shrinker runs on an injected clock.  ``_check()`` is called after
every phase.
"""

from __future__ import annotations

import os
import random
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from swapd.arena import PAGE_SIZE
from swapd.compress import fill_page
from swapd.corpus import Corpus
from swapd.errors import (
    ConfigError,
    CorruptPageError,
    EntryNotFoundError,
    InvariantError,
    ObjectSizeError,
    StoreRejected,
    TierFullError,
)
from swapd.layer import (
    CompressedTier,
    DiskTier,
    EntryState,
    LayerConfig,
    SwapLayer,
    TierLimits,
)
from swapd.plugins import available_backends, make_backend

BACKENDS = sorted(available_backends())
LIMITS = TierLimits(ram_total_bytes=1 << 30)


def text_page(rng: random.Random) -> bytes:
    """A compressible page (words from a small vocabulary), distinct per call."""
    words = [b"alpha", b"beta", b"gamma", b"delta", b"swap", b"zpool", b"page", b"lru"]
    out = bytearray()
    while len(out) < PAGE_SIZE:
        out += rng.choice(words) + b" " + str(rng.randrange(1 << 20)).encode() + b"\n"
    return bytes(out[:PAGE_SIZE])


def random_page(rng: random.Random) -> bytes:
    return rng.randbytes(PAGE_SIZE)


class Clock:
    """An injected clock that tests advance by hand."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def make_layer(backend: str, tmp: Path | None, *, disk_pages: int = 4096,
               clock: Clock | None = None, policy: str = "lru", preallocate: bool = True,
               seal: bool = False, **cfg: Any) -> SwapLayer:
    tier = CompressedTier("lz4", make_backend(backend, max_pages=8192), LIMITS)
    tiers: list[Any] = [tier]
    if tmp is not None:
        tiers.append(DiskTier(tmp, disk_pages * PAGE_SIZE, preallocate=preallocate, seal=seal))
    return SwapLayer(tiers, config=LayerConfig(**cfg), clock=clock or Clock(),
                     demotion_policy=policy)


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def corpus() -> Corpus:
    return Corpus.synthetic(600, seed=3)


@pytest.fixture
def layer(backend: str, tmp_path: Path) -> Iterator[SwapLayer]:
    lay = make_layer(backend, tmp_path)
    yield lay
    lay.close()


# -- contract ------------------------------------------------------------------------------


def test_round_trip_every_page_kind(layer: SwapLayer, corpus: Corpus) -> None:
    r = layer.add_region("a", len(corpus))
    rejected = set()
    for i, pg in enumerate(corpus):
        try:
            layer.store(r, i, pg)
        except StoreRejected:
            rejected.add(i)
    layer._check()
    assert not rejected  # a disk tier is present: nothing is refused
    st = layer.stats()
    assert st.zswpout + st.pswpout == len(corpus)
    assert st.same_filled_pages > 0 and st.stored_incompressible_pages + st.pswpout > 0
    for i, pg in enumerate(corpus):
        assert layer.state(r, i) is not EntryState.RESIDENT
        assert layer.load(r, i) == pg
        assert layer.state(r, i) is EntryState.RESIDENT
    layer._check()
    st = layer.stats()
    assert st.stored_pages == 0 and st.pool_total_size == 0 and st.disk_slots_used == 0


def test_states_same_filled_and_runs(layer: SwapLayer) -> None:
    rng = random.Random(1)
    r = layer.add_region("a", 16)
    layer.store(r, 0, fill_page(0))
    layer.store(r, 1, fill_page(0x0101010101010101))  # too wide for the word: side table
    layer.store(r, 2, fill_page(0xFFFFFFFFFFFFFFFF))
    layer.store(r, 3, text_page(rng))
    layer._check()
    assert [layer.state(r, i) for i in range(5)] == [EntryState.SAME_FILLED] * 3 + [
        EntryState.COMPRESSED, EntryState.RESIDENT]
    assert layer.same_filled_value(r, 0) == 0
    assert layer.same_filled_value(r, 1) == 0x0101010101010101
    assert layer.same_filled_value(r, 2) == 0xFFFFFFFFFFFFFFFF
    assert layer.same_filled_value(r, 3) is None
    assert layer.swapped_run(r, 0, 64) == 4
    assert layer.swapped_run(r, 1, 2) == 2
    assert layer.swapped_run(r, 4, 64) == 0
    assert layer.load(r, 1) == fill_page(0x0101010101010101)
    assert layer.swapped_run(r, 0, 64) == 1
    st = layer.stats("a")
    assert st.same_filled_pages == 2 and st.stored_pages == 3
    assert st.pool_total_size == st.compr_data_size > 0
    assert st.mm_stat == f"{3 * PAGE_SIZE} {st.compr_data_size} {st.mem_used_total}"
    total = layer.stats()
    assert total.mem_used_total >= PAGE_SIZE and total.as_dict()["zswpout"] == 4
    layer.invalidate(r, 3)
    layer.invalidate(r, 3)  # no error when there is no copy
    assert layer.state(r, 3) is EntryState.RESIDENT
    layer._check()


def test_errors(layer: SwapLayer) -> None:
    r = layer.add_region("a", 4)
    with pytest.raises(EntryNotFoundError):
        layer.load(r, 0)
    with pytest.raises(EntryNotFoundError):
        layer.store(r, 4, fill_page(0))
    with pytest.raises(EntryNotFoundError):
        layer.store(r + 100, 0, fill_page(0))
    with pytest.raises(ObjectSizeError):
        layer.store(r, 0, b"x" * 100)
    layer.remove_region(r)
    with pytest.raises(EntryNotFoundError):
        layer.state(r, 0)
    with pytest.raises(EntryNotFoundError):
        layer.remove_client("nobody")
    with pytest.raises(ConfigError):
        LayerConfig(accept_threshold_percent=120)


def test_store_replaces_older_copy(layer: SwapLayer) -> None:
    rng = random.Random(2)
    r = layer.add_region("a", 2)
    a, b = text_page(rng), text_page(rng)
    layer.store(r, 0, a)
    layer.store(r, 0, b)
    layer._check()
    assert layer.stats().stored_pages == 1
    assert layer.load(r, 0) == b


def test_non_exclusive_load_keeps_a_clean_copy(backend: str, tmp_path: Path) -> None:
    rng = random.Random(4)
    lay = make_layer(backend, tmp_path, exclusive_loads=False)
    try:
        r = lay.add_region("a", 8)
        pages = [text_page(rng) for _ in range(8)]
        for i, pg in enumerate(pages):
            lay.store(r, i, pg)
        assert lay.load(r, 2) == pages[2]
        assert lay.state(r, 2) is EntryState.RESIDENT and lay.has_copy(r, 2)
        with pytest.raises(EntryNotFoundError):
            lay.load(r, 2)  # resident: nothing to load
        assert lay.stats().stored_pages == 8
        lay._check()
        # demotion drops clean copies instead of writing them
        assert lay.writeback(64) == 7
        st = lay.stats()
        assert st.clean_dropped == 1 and st.written_back_pages == 7
        assert not lay.has_copy(r, 2)
        for i in (0, 1, 3):
            assert lay.load(r, i) == pages[i]  # from disk, clean copy kept there
        lay.invalidate(r, 0)
        lay._check()
        assert lay.stats().disk_slots_used == 6
        # a clean page is swapped out again without its data
        assert lay.store_clean(r, 1) and lay.state(r, 1) is EntryState.DISK
        assert not lay.store_clean(r, 1) and not lay.store_clean(r, 0)
        assert lay.load(r, 1) == pages[1]
        lay.store(r, 0, pages[0])
        assert lay.load(r, 0) == pages[0] and lay.store_clean(r, 0)
        assert lay.state(r, 0) is EntryState.COMPRESSED
        lay._check()
    finally:
        lay.close()


def test_clean_copies_are_dropped_to_make_room(backend: str, tmp_path: Path) -> None:
    rng = random.Random(18)
    lay = make_layer(backend, tmp_path, exclusive_loads=False, pool_limit_bytes=30 * PAGE_SIZE)
    try:
        r = lay.add_region("a", 400)
        n = 0
        while lay.stats().pool_limit_hit == 0:
            lay.store(r, n, text_page(rng))
            if lay.stats().pool_limit_hit == 0:
                assert lay.load(r, n)  # resident again, a clean copy stays in the pool
            n += 1
        st = lay.stats()
        assert st.clean_dropped > 0 and st.reject_reclaim_fail == 0
        assert st.written_back_pages <= 1  # room came from clean copies, not from writeback
        lay._check()
    finally:
        lay.close()


def test_remove_client_frees_every_tier(backend: str, tmp_path: Path, corpus: Corpus) -> None:
    lay = make_layer(backend, tmp_path)
    try:
        ra = lay.add_region("a", 300)
        rb = lay.add_region("b", 300)
        for i in range(300):
            lay.store(ra, i, corpus.page(i))
            lay.store(rb, i, corpus.page(300 + i))
        lay.writeback(100)
        lay._check()
        wb = lay.stats("a").zswpwb + lay.stats("b").zswpwb
        assert wb == lay.stats().written_back_pages == 100
        lay.remove_client("a")
        lay._check()
        assert lay.clients() == ["b"]
        lay.remove_region(rb)
        lay._check()
        st = lay.stats()
        assert st.stored_pages == 0 and st.disk_slots_used == 0 and st.pool_total_size == 0
        assert st.zswpout + st.pswpout - st.zswpwb == 600  # departed clients' events stay
        ra2 = lay.add_region("a", 10)  # the freed extents are reused
        lay.store(ra2, 9, corpus.page(0))
        lay._check()
    finally:
        lay.close()


# -- admission, writeback, inversions ----------------------------------------------------------


def _fill(lay: SwapLayer, r: int, pages: list[bytes]) -> None:
    for i, pg in enumerate(pages):
        lay.store(r, i, pg)


def test_shrink_until_accept_writes_back_coldest_without_inversion(
        backend: str, tmp_path: Path) -> None:
    rng = random.Random(5)
    pages = [text_page(rng) for _ in range(600)]
    lay = make_layer(backend, tmp_path, pool_limit_bytes=40 * PAGE_SIZE)
    try:
        r = lay.add_region("a", len(pages))
        _fill(lay, r, pages)  # stored in recency order: page 0 coldest
        lay._check()
        st = lay.stats()
        assert st.pool_limit_hit > 0 and st.written_back_pages > 0
        assert st.lru_inversions == 0
        assert st.pool_total_size <= 40 * PAGE_SIZE
        on_disk = [i for i in range(len(pages)) if lay.state(r, i) is EntryState.DISK]
        in_pool = [i for i in range(len(pages)) if lay.state(r, i) is EntryState.COMPRESSED]
        assert on_disk and in_pool
        # the coldest pages went to disk: every page on disk is older than every page in the pool
        assert max(on_disk) < min(in_pool)
        for i, pg in enumerate(pages):
            assert lay.load(r, i) == pg
        lay._check()
    finally:
        lay.close()


def test_kernel_like_mode_counts_inversions(backend: str, tmp_path: Path) -> None:
    rng = random.Random(6)
    pages = [text_page(rng) for _ in range(400)]
    lay = make_layer(backend, tmp_path, pool_limit_bytes=40 * PAGE_SIZE,
                     reject_to_disk_when_full=True)
    try:
        r = lay.add_region("a", len(pages))
        _fill(lay, r, pages)
        lay._check()
        st = lay.stats()
        assert st.written_back_pages == 0
        assert st.lru_inversions == st.pswpout > 0  # each hot page sent to disk past colder ones
        assert lay.state(r, 0) is EntryState.COMPRESSED  # the coldest stayed in the pool
        assert lay.state(r, len(pages) - 1) is EntryState.DISK
        # the queued shrink work brings the pool under the accept threshold
        while lay.shrink_step():
            pass
        assert lay.stats().pool_total_size <= lay.accept_pages * PAGE_SIZE
        for i, pg in enumerate(pages):
            assert lay.load(r, i) == pg
        lay._check()
    finally:
        lay.close()


def test_accept_threshold_hysteresis_without_disk(backend: str) -> None:
    rng = random.Random(7)
    lay = make_layer(backend, None, pool_limit_bytes=100 * PAGE_SIZE)
    try:
        r = lay.add_region("a", 1000)
        stored = []
        i = 0
        while True:
            try:
                lay.store(r, i, text_page(rng))
            except StoreRejected as exc:
                assert exc.reason == "pool_limit_hit"
                break
            stored.append(i)
            i += 1
        assert lay.stats().pool_limit_hit == 1
        # below the limit but above 90% of it, the pool still refuses (zswap_pool_reached_full)
        in_between = 0
        while True:
            pages = lay.stats().pool_total_size // PAGE_SIZE
            if pages <= lay.accept_pages:
                lay.store(r, i, text_page(rng))
                break
            with pytest.raises(StoreRejected):
                lay.store(r, i, text_page(rng))
            in_between += pages < lay.limit_pages
            lay.invalidate(r, stored.pop())
        assert in_between > 0
        lay._check()
        assert lay.stats().reject_reclaim_fail == 0
    finally:
        lay.close()


def test_incompressible_pages(backend: str, tmp_path: Path) -> None:
    rng = random.Random(8)
    noise = [random_page(rng) for _ in range(4)]
    alone = make_layer(backend, None)
    try:
        r = alone.add_region("a", 4)
        with pytest.raises(StoreRejected) as ei:
            alone.store(r, 0, noise[0])
        assert ei.value.reason == "reject_compress_poor"
        assert alone.stats().reject_compress_poor == 1
    finally:
        alone.close()
    lay = make_layer(backend, tmp_path)
    try:
        r = lay.add_region("a", 4)
        _fill(lay, r, noise)
        st = lay.stats()
        raw_ok = lay._t0c is not None and lay._t0c.max_object >= PAGE_SIZE
        if raw_ok:
            assert st.stored_incompressible_pages == 4 and st.pswpout == 0
        else:  # the backend cannot hold a raw page: straight to disk, seen as inversions
            assert st.pswpout == 4 and st.reject_compress_poor == 4 and st.lru_inversions == 0
        assert [lay.load(r, i) for i in range(4)] == noise
        lay._check()
    finally:
        lay.close()


def test_second_chance_rotates_referenced_entries(backend: str, tmp_path: Path) -> None:
    rng = random.Random(9)
    lay = make_layer(backend, tmp_path)
    try:
        r = lay.add_region("a", 8)
        _fill(lay, r, [text_page(rng) for _ in range(8)])
        # all are referenced: the first pass rotates them, then the coldest go
        assert lay.writeback(3) == 3
        assert [lay.state(r, i) for i in range(4)] == [EntryState.DISK] * 3 + [
            EntryState.COMPRESSED]
        lay.store(r, 0, text_page(rng))  # a new, referenced entry is skipped once
        assert lay.writeback(5) == 5
        assert lay.state(r, 0) is EntryState.COMPRESSED
        lay._check()
    finally:
        lay.close()


def test_disk_full_leaves_entries_and_counts_reject(backend: str, tmp_path: Path) -> None:
    rng = random.Random(10)
    pages = [text_page(rng) for _ in range(200)]
    lay = make_layer(backend, tmp_path, disk_pages=16, pool_limit_bytes=20 * PAGE_SIZE)
    try:
        r = lay.add_region("a", len(pages))
        refused = set()
        for i, pg in enumerate(pages):
            try:
                lay.store(r, i, pg)
            except StoreRejected as exc:
                assert exc.reason == "reject_reclaim_fail"
                refused.add(i)
            lay._check()
        st = lay.stats()
        assert refused and st.reject_reclaim_fail > 0
        assert st.disk_slots_used == 16 and st.written_back_pages == 16
        for i, pg in enumerate(pages):
            if i not in refused:
                assert lay.load(r, i) == pg
        lay._check()
    finally:
        lay.close()


def test_arena_exhaustion_makes_room_by_writeback(backend: str, tmp_path: Path) -> None:
    """The backend's arena runs out before the pool limit: writeback makes room instead."""
    rng = random.Random(17)
    pages = [text_page(rng) for _ in range(120)]
    tiers: list[Any] = [CompressedTier("lz4", make_backend(backend, max_pages=16), LIMITS),
                        DiskTier(tmp_path, 256 * PAGE_SIZE)]
    lay = SwapLayer(tiers, config=LayerConfig(pool_limit_bytes=1 << 30), clock=Clock())
    try:
        r = lay.add_region("a", len(pages))
        _fill(lay, r, pages)
        st = lay.stats()
        assert st.written_back_pages > 0 and st.reject_alloc_fail == 0
        assert st.pool_total_size <= 16 * PAGE_SIZE
        lay._check()
        assert [lay.load(r, i) for i in range(len(pages))] == pages
    finally:
        lay.close()
    alone = SwapLayer([CompressedTier("lz4", make_backend(backend, max_pages=4), LIMITS)],
                      config=LayerConfig(pool_limit_bytes=1 << 30))
    try:
        r = alone.add_region("a", len(pages))
        with pytest.raises(StoreRejected) as ei:
            _fill(alone, r, pages)
        assert ei.value.reason == "reject_alloc_fail"
        alone._check()
    finally:
        alone.close()


def test_demotion_policy_plugin(backend: str, tmp_path: Path) -> None:
    from swapd.plugins import available_policies

    if "fifo" not in available_policies():
        pytest.skip("the fifo policy plugin is not installed")
    rng = random.Random(11)
    pages = [text_page(rng) for _ in range(300)]
    lay = make_layer(backend, tmp_path, policy="fifo", exclusive_loads=False,
                     pool_limit_bytes=30 * PAGE_SIZE, clean_first=False)
    try:
        r = lay.add_region("a", len(pages))
        for i, pg in enumerate(pages):
            lay.store(r, i, pg)
            if i % 3 == 0 and i >= 3 and lay.state(r, i - 3) is not EntryState.RESIDENT:
                lay.load(r, i - 3)  # an access FIFO ignores: its victims are not the LRU tail
            lay._check()
        st = lay.stats()
        assert st.written_back_pages > 0 and st.lru_inversions > 0
        for i, pg in enumerate(pages):
            if lay.state(r, i) is not EntryState.RESIDENT:
                assert lay.load(r, i) == pg
        lay._check()
    finally:
        lay.close()


# -- shrinker -----------------------------------------------------------------------------------


def test_shrinker_writes_back_and_backs_off_on_refaults(backend: str, tmp_path: Path) -> None:
    rng = random.Random(12)
    clock = Clock()
    pages = [text_page(rng) for _ in range(200)]
    lay = make_layer(backend, tmp_path, clock=clock, pool_limit_bytes=100 * PAGE_SIZE,
                     shrinker_start_percent=50.0, shrinker_batch=8,
                     shrinker_refault_window=1.0, shrinker_backoff_min=0.5)
    try:
        r = lay.add_region("a", len(pages))
        n = 0
        while lay.stats().pool_total_size <= 85 * PAGE_SIZE:
            lay.store(r, n, pages[n])
            n += 1
        assert lay.shrink_step() == 8
        assert lay.state(r, 0) is EntryState.DISK
        # a page written back moments ago is refaulted: the shrinker backs off
        clock.now += 0.1
        assert lay.load(r, 0) == pages[0]
        assert lay.shrink_step() == 0
        assert lay.stats().shrinker_backoffs == 1 and lay.stats().refaults_soon == 1
        clock.now += 0.2
        assert lay.shrink_step() == 0  # still backing off
        clock.now += 0.5
        # the disk swapin is subtracted from the eligible entries once, then it writes again
        assert lay.shrink_step() > 0
        # a refault after the window does not count as soon
        clock.now += 10
        i = next(i for i in range(n) if lay.state(r, i) is EntryState.DISK)
        assert lay.load(r, i) == pages[i]
        assert lay.stats().refaults_soon == 1
        while lay.shrink_step():
            pass
        assert lay.stats().pool_total_size <= lay.shrink_start_pages * PAGE_SIZE
        lay._check()
    finally:
        lay.close()


def test_shrinker_thread(backend: str, tmp_path: Path) -> None:
    import threading

    from swapd.layer import ShrinkerThread

    rng = random.Random(13)
    lay = make_layer(backend, tmp_path, pool_limit_bytes=60 * PAGE_SIZE,
                     shrinker_start_percent=30.0)
    done = threading.Event()

    class Watch:
        def shrink_step(self) -> int:
            n = lay.shrink_step()
            if n == 0:
                done.set()
            return n

    try:
        r = lay.add_region("a", 100)
        _fill(lay, r, [text_page(rng) for _ in range(100)])
        with ShrinkerThread(Watch(), interval=0.01) as th:
            assert done.wait(30)
        assert th.errors == 0 and th.written > 0
        assert lay.stats().pool_total_size <= lay.shrink_start_pages * PAGE_SIZE
        lay._check()
    finally:
        lay.close()


# -- disk tier ------------------------------------------------------------------------------------


def test_disk_tier_file_batches_and_checksums(tmp_path: Path) -> None:
    rng = random.Random(14)
    dt = DiskTier(tmp_path, 64 * PAGE_SIZE)
    try:
        assert stat.S_IMODE(os.stat(dt.path).st_mode) == 0o600
        pages = [rng.randbytes(PAGE_SIZE) for _ in range(32)]
        keys = dt.store_batch(pages)
        assert keys == list(range(32)) and dt.writes == 1  # one pwritev for the run
        assert [dt.load(k) for k in keys] == pages
        for k in keys[::2]:
            dt.free(k)
        dt._check()
        keys2 = dt.store_batch(pages[:20])  # 16 holes of 1 + the tail run
        assert len(keys2) == 20 and dt.used_slots() == 36
        os.pwrite(dt.fd, b"\x01", keys[1] * PAGE_SIZE + 7)
        with pytest.raises(CorruptPageError):
            dt.load(keys[1])
        rest = dt.store_batch(pages)
        assert len(rest) == 28  # only a prefix fits
        with pytest.raises(TierFullError):
            dt.store_batch(pages[:1])
        with pytest.raises(InvariantError):
            dt.free(999)
        dt._check()
    finally:
        dt.close()
    assert not os.path.exists(dt.path)


@pytest.mark.parametrize("seal", [False, True], ids=["crc", "sealed"])
def test_corrupt_disk_page_is_never_served(backend: str, tmp_path: Path, seal: bool) -> None:
    rng = random.Random(15)
    lay = make_layer(backend, tmp_path, seal=seal)
    try:
        r = lay.add_region("a", 4)
        _fill(lay, r, [text_page(rng) for _ in range(4)])
        lay.writeback(4)
        disk = lay._tiers[1]
        assert isinstance(disk, DiskTier)
        os.pwrite(disk.fd, b"\x00" * 8, 0)  # the slot of the coldest page
        bad = [i for i in range(4) if not _loads(lay, r, i)]
        assert len(bad) == 1
        assert lay.state(r, bad[0]) is EntryState.DISK  # kept, to be poisoned by the daemon
        with pytest.raises(CorruptPageError):
            lay.load(r, bad[0])
        lay._check()
    finally:
        lay.close()


def _loads(lay: SwapLayer, r: int, i: int) -> bool:
    try:
        lay.load(r, i)
    except CorruptPageError:
        return False
    return True


def test_disk_io_error_leaves_entries(backend: str, tmp_path: Path) -> None:
    """A real ENOSPC: the disk file lives on a 64 KiB tmpfs but claims 1 MiB."""
    import subprocess

    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a small tmpfs (needs root)")
    try:
        with pytest.raises(ConfigError, match="cannot allocate 1048576 bytes"):
            DiskTier(mnt, 256 * PAGE_SIZE)  # preallocated: no room is found at start
        assert not list(mnt.iterdir())
        rng = random.Random(16)
        clock = Clock()
        lay = make_layer(backend, mnt, disk_pages=256, preallocate=False, clock=clock)
        try:
            r = lay.add_region("a", 64)
            pages = [text_page(rng) for _ in range(64)]
            _fill(lay, r, pages)
            written = sum(lay.writeback(8) for _ in range(8))
            st = lay.stats()
            assert written < 64 and st.reject_reclaim_fail > 0
            # the full disk stopped writeback: one failed batch, then skips until the back-off
            assert st.writeback_disk_full == 1 and st.writeback_backoffs > 0
            disk = lay._tiers[1]
            assert isinstance(disk, DiskTier)
            errors = disk.io_errors
            assert lay.writeback(8) == 0 and disk.io_errors == errors  # no I/O while stopped
            clock.now += 10.0
            assert lay.writeback(8) == 0 and disk.io_errors == errors + 1  # retried once
            lay._check()
            assert [lay.load(r, i) for i in range(64)] == pages
            lay._check()
        finally:
            lay.close()
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


# -- seeded random stress ---------------------------------------------------------------------


@pytest.mark.parametrize("seed", [1, 2])
def test_random_ops_against_a_model(backend: str, tmp_path: Path, seed: int) -> None:
    _random_ops(backend, tmp_path, seed, 1500)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(10, 16))
def test_random_ops_against_a_model_long(backend: str, tmp_path: Path, seed: int) -> None:
    _random_ops(backend, tmp_path, seed, 20000)


def _random_ops(backend: str, tmp_path: Path, seed: int, nops: int) -> None:
    """Seeded weighted random operations checked against a dict model; replay by seed."""
    rng = random.Random(seed)
    corpus = Corpus.synthetic(200, seed=seed)
    lay = make_layer(backend, tmp_path, disk_pages=400, pool_limit_bytes=30 * PAGE_SIZE,
                     exclusive_loads=rng.random() < 0.5)
    model: dict[tuple[int, int], bytes] = {}
    regions = {lay.add_region(c, 50): c for c in ("a", "b", "c")}
    try:
        for step in range(nops):
            op = rng.choices(["store", "load", "inval", "wb", "compact", "region"],
                             [50, 30, 8, 6, 3, 1])[0]
            r = rng.choice(list(regions))
            i = rng.randrange(50)
            if op == "store":
                pg = corpus.page(rng.randrange(len(corpus)))
                try:
                    lay.store(r, i, pg)
                    model[(r, i)] = pg
                except StoreRejected:
                    model.pop((r, i), None)
            elif op == "load":
                if (r, i) in model and lay.state(r, i) is not EntryState.RESIDENT:
                    assert lay.load(r, i) == model[(r, i)], (seed, step)
                else:
                    with pytest.raises(EntryNotFoundError):
                        lay.load(r, i)
                model.pop((r, i), None)
            elif op == "inval":
                lay.invalidate(r, i)
                model.pop((r, i), None)
            elif op == "wb":
                lay.writeback(rng.randrange(1, 40))
            elif op == "compact":
                lay.compact()
            else:
                client = regions.pop(r)
                lay.remove_region(r)
                for k in [k for k in model if k[0] == r]:
                    del model[k]
                regions[lay.add_region(client, 50)] = client
            if step % 50 == 0:
                lay._check()
        lay._check()
        if lay._t0c is not None and lay._t0c.max_object >= PAGE_SIZE:
            assert lay.stats().lru_inversions == 0  # only zbud's raw-page bypass makes some
        for (r, i), pg in model.items():
            assert lay.load(r, i) == pg
        lay._check()
    finally:
        lay.close()


# -- concurrency ---------------------------------------------------------------------------------


@pytest.mark.parametrize("exclusive", [True, False])
def test_concurrent_pagers_writeback_and_compaction(backend: str, tmp_path: Path,
                                                    exclusive: bool) -> None:
    """Two pager threads (each the only authority over its own client's pages), a writeback
    thread and a compaction/shrinker thread at once; then every check and every page."""
    import threading

    corpus = Corpus.synthetic(256, seed=21)
    lay = make_layer(backend, tmp_path, disk_pages=1024, pool_limit_bytes=40 * PAGE_SIZE,
                     exclusive_loads=exclusive, shrinker_start_percent=50.0)
    stop = threading.Event()
    errors: list[BaseException] = []
    models: dict[str, dict[int, bytes]] = {}
    regions = {c: lay.add_region(c, 128) for c in ("a", "b")}

    def pager(client: str, seed: int) -> None:
        rng = random.Random(seed)
        model: dict[int, bytes] = {}
        models[client] = model
        r = regions[client]
        try:
            for _ in range(1200):
                i = rng.randrange(128)
                op = rng.random()
                if op < 0.55:
                    pg = corpus.page(rng.randrange(len(corpus)))
                    try:
                        lay.store(r, i, pg)
                        model[i] = pg
                    except StoreRejected:
                        model.pop(i, None)
                elif op < 0.9:
                    if i in model:
                        assert lay.load(r, i) == model.pop(i)
                    else:
                        with pytest.raises(EntryNotFoundError):
                            lay.load(r, i)
                else:
                    lay.invalidate(r, i)
                    model.pop(i, None)
        except BaseException as exc:
            errors.append(exc)

    def background(fn: Any) -> None:
        try:
            while not stop.is_set():
                fn()
        except BaseException as exc:
            errors.append(exc)

    rng = random.Random(22)
    workers = [threading.Thread(target=pager, args=("a", 1)),
               threading.Thread(target=pager, args=("b", 2))]
    helpers = [threading.Thread(target=background,
                                args=(lambda: lay.writeback(rng.randrange(1, 48)),)),
               threading.Thread(target=background,
                                args=(lambda: (lay.compact(), lay.shrink_step()),))]
    try:
        for t in workers + helpers:
            t.start()
        for t in workers:
            t.join(120)
        stop.set()
        for t in helpers:
            t.join(120)
        assert not errors, errors
        lay._check()
        st = lay.stats()
        assert st.written_back_pages > 0
        for client, model in models.items():
            r = regions[client]
            for i in range(128):
                if i in model:
                    assert lay.load(r, i) == model[i]
                else:
                    assert lay.state(r, i) is EntryState.RESIDENT
        lay._check()
    finally:
        stop.set()
        lay.close()
