"""The layer's batch operations (store_batch, load_run, free_batch) under both implementations:
each equals the loop of single-page operations it replaces, state for state.

Deterministic: pages from ``Corpus.synthetic`` and seeded ``random.Random``; ``_check()`` after
every phase.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest

from swapd.arena import PAGE_SIZE
from swapd.compress import fill_page
from swapd.corpus import Corpus
from swapd.errors import CorruptPageError, EntryNotFoundError, ObjectSizeError, StoreRejected
from swapd.layer import CompressedTier, DiskTier, EntryState, LayerConfig, SwapLayer, TierLimits
from swapd.plugins import available_backends, make_backend
from tests.layer_state import IMPLS, running, state_bytes

BACKENDS = sorted(available_backends())
LIMITS = TierLimits(ram_total_bytes=1 << 30)


def make_layer(backend: str, tmp: Path | None, which: str = "python", **cfg: Any) -> SwapLayer:
    with running(which):
        be = make_backend(backend, max_pages=8192)
    tiers: list[Any] = [CompressedTier("lz4", be, LIMITS)]
    if tmp is not None:
        tiers.append(DiskTier(tmp, 4096 * PAGE_SIZE))
    return SwapLayer(tiers, config=LayerConfig(**cfg), clock=lambda: 0.0)


def mixed_pages(n: int, seed: int) -> list[bytes]:
    """Compressible corpus pages, zero and other same-filled pages, random (incompressible)."""
    corpus = Corpus.synthetic(n, seed=seed)
    rng = random.Random(seed)
    out = []
    for i in range(n):
        k = rng.randrange(10)
        if k == 0:
            out.append(bytes(PAGE_SIZE))
        elif k == 1:
            out.append(fill_page(rng.getrandbits(64)))
        elif k == 2:
            out.append(rng.randbytes(PAGE_SIZE))
        else:
            out.append(corpus.page(i))
    return out


def text_pages(n: int, seed: int) -> list[bytes]:
    """Compressible pages, distinct per call."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        b = bytearray()
        while len(b) < PAGE_SIZE:
            b += rng.choice([b"swap ", b"zpool ", b"lru "]) + str(rng.randrange(1 << 16)).encode()
        out.append(bytes(b[:PAGE_SIZE]))
    return out


@pytest.fixture(params=IMPLS)
def which(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _loop_store(lay: SwapLayer, r: int, start: int, pages: list[bytes]) -> list[bool]:
    out = []
    for j, pg in enumerate(pages):
        try:
            lay.store(r, start + j, pg)
            out.append(True)
        except StoreRejected:
            out.append(False)
    return out


def load_all(lay: SwapLayer, r: int, start: int, n: int, buf: bytearray) -> list[int]:
    """load_run over the run, stepping over pages it stops at; return those (run-relative)."""
    view = memoryview(buf)
    i = 0
    skipped = []
    while i < n:
        i += lay.load_run(r, start + i, n - i, view[i * PAGE_SIZE:])
        if i < n:
            skipped.append(i)
            i += 1
    return skipped


@pytest.mark.parametrize("disk", [True, False])
def test_store_batch_equals_the_loop(which: str, backend: str, tmp_path: Path,
                                     disk: bool) -> None:
    pages = mixed_pages(300, seed=5)
    a = make_layer(backend, tmp_path / "a" if disk else None)
    b = make_layer(backend, tmp_path / "b" if disk else None, which)
    try:
        ra, rb = a.add_region("c", 400), b.add_region("c", 400)
        want = _loop_store(a, ra, 50, pages)
        with running(which):
            got = b.store_batch(rb, 50, b"".join(pages))
        assert got == want
        a._check()
        b._check()
        assert state_bytes(a) == state_bytes(b)
        buf = bytearray(len(pages) * PAGE_SIZE)
        with running(which):
            skipped = load_all(b, rb, 50, len(pages), buf)
        assert skipped == [j for j, ok in enumerate(want) if not ok]
        for j, pg in enumerate(pages):
            if want[j]:
                assert buf[j * PAGE_SIZE:(j + 1) * PAGE_SIZE] == pg, j
        assert b.stats().stored_pages == 0
        b._check()
    finally:
        a.close()
        b.close()


@pytest.fixture(autouse=True)
def _tmp_dirs(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()


def test_store_batch_through_a_full_pool_equals_the_loop(which: str, backend: str,
                                                         tmp_path: Path) -> None:
    pages = mixed_pages(400, seed=9)
    cfg = {"pool_limit_bytes": 64 * PAGE_SIZE}
    a = make_layer(backend, tmp_path / "a", **cfg)
    b = make_layer(backend, tmp_path / "b", which, **cfg)
    try:
        ra, rb = a.add_region("c", 400), b.add_region("c", 400)
        want = []
        got = []
        for s in range(0, 400, 32):
            want += _loop_store(a, ra, s, pages[s:s + 32])
            with running(which):
                got += b.store_batch(rb, s, b"".join(pages[s:s + 32]))
        assert got == want
        assert b.stats().written_back_pages > 0
        a._check()
        b._check()
        assert state_bytes(a) == state_bytes(b)
        # load everything back: compressed, disk and same-filled pages in one run
        buf = bytearray(400 * PAGE_SIZE)
        with running(which):
            k = b.load_run(rb, 0, 400, buf)
        assert k == 400
        assert buf == b"".join(pages)
        assert b.stats().stored_pages == 0
        b._check()
    finally:
        a.close()
        b.close()


def test_store_batch_rejects_like_store(which: str, backend: str) -> None:
    # no lower tier: incompressible pages are refused (reject_compress_poor), the rest stored
    pages = mixed_pages(100, seed=2)
    a, b = make_layer(backend, None), make_layer(backend, None, which)
    try:
        ra, rb = a.add_region("c", 100), b.add_region("c", 100)
        want = _loop_store(a, ra, 0, pages)
        with running(which):
            got = b.store_batch(rb, 0, memoryview(b"".join(pages)))
        assert got == want and not all(got)
        assert b.stats().reject_compress_poor == a.stats().reject_compress_poor > 0
        assert state_bytes(a) == state_bytes(b)
    finally:
        a.close()
        b.close()


def test_load_run_stops_before_a_bad_object(which: str, tmp_path: Path) -> None:
    pages = text_pages(64, seed=4)
    lay = make_layer("zsmalloc", None, which)
    try:
        r = lay.add_region("c", 64)
        with running(which):
            ok = lay.store_batch(r, 0, b"".join(pages))
        assert all(ok)
        # find a compressed (not same-filled, not raw) page and break its lz4 block
        bad = 37
        g = lay._regions[r].base + bad
        h = lay._words[g] >> 20
        be = lay._tiers[0].backend
        be.write(h, b"\xff" * be.size_of(h))
        buf = bytearray(64 * PAGE_SIZE)
        with running(which):
            k = lay.load_run(r, 0, 64, buf)
        assert k == bad
        assert buf[:k * PAGE_SIZE] == b"".join(pages[:k])
        assert buf[k * PAGE_SIZE:] == bytes((64 - k) * PAGE_SIZE)  # untouched
        with pytest.raises(CorruptPageError):
            lay.load(r, bad)
        assert lay.state(r, bad) is EntryState.COMPRESSED  # the entry stays
        with running(which):
            assert lay.load_run(r, bad + 1, 64 - bad - 1, buf) == 64 - bad - 1
        lay._check()
    finally:
        lay.close()


def test_load_run_stops_at_a_page_not_swapped_out(which: str) -> None:
    pages = text_pages(16, seed=1)
    lay = make_layer("zsmalloc", None, which)
    try:
        r = lay.add_region("c", 16)
        with running(which):
            lay.store_batch(r, 0, b"".join(pages[:8]))
            buf = bytearray(16 * PAGE_SIZE)
            assert lay.load_run(r, 0, 16, buf) == 8
            assert lay.load_run(r, 0, 8, buf) == 0
        lay._check()
    finally:
        lay.close()


def test_batch_errors(which: str) -> None:
    lay = make_layer("zsmalloc", None, which)
    try:
        r = lay.add_region("c", 8)
        with running(which):
            with pytest.raises(ObjectSizeError, match="whole pages"):
                lay.store_batch(r, 0, b"x" * 100)
            with pytest.raises(EntryNotFoundError):
                lay.store_batch(r, 4, bytes(5 * PAGE_SIZE))
            with pytest.raises(EntryNotFoundError):
                lay.store_batch(r + 1, 0, bytes(PAGE_SIZE))
            with pytest.raises(ObjectSizeError):
                lay.load_run(r, 0, 4, bytearray(PAGE_SIZE))
            with pytest.raises(EntryNotFoundError):
                lay.load_run(r, 6, 4, bytearray(4 * PAGE_SIZE))
            with pytest.raises(EntryNotFoundError):
                lay.free_batch(r, -1, 2)
        lay._check()
    finally:
        lay.close()


def test_free_batch(which: str, backend: str, tmp_path: Path) -> None:
    pages = mixed_pages(50, seed=6)
    lay = make_layer(backend, tmp_path / "a", which, pool_limit_bytes=16 * PAGE_SIZE)
    try:
        r = lay.add_region("c", 60)
        with running(which):
            stored = lay.store_batch(r, 5, b"".join(pages))
            assert lay.free_batch(r, 0, 60) == sum(stored)
            assert lay.free_batch(r, 0, 60) == 0
        assert lay.stats().stored_pages == 0 and lay.stats().disk_pages == 0
        assert all(lay.state(r, i) is EntryState.RESIDENT for i in range(60))
        lay._check()
    finally:
        lay.close()
