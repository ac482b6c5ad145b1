"""zbud-specific checks, computed by hand from the rules of ``mm/zbud.c``.

Where the buddies land (first after the one-chunk header, last against the end
of the page), chunk arithmetic, the largest object, which unbuddied list a page
sits on, first fit from the smallest sufficient list (LIFO within a list), the
packing density that follows, and a seeded comparison against a plain
transcription of ``zbud_alloc``/``zbud_free``.  ``_check()`` runs after every
operation, also with two threads at once.  The generic contract lives in
``tests/test_backend_contract.py``.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator

import pytest

from backends.zbud import (
    CHUNK_SIZE,
    MAX_OBJECT_SIZE,
    NCHUNKS,
    ZHDR_SIZE_ALIGNED,
    ZbudPool,
    ZbudStats,
    size_to_chunks,
)
from swapd.arena import PAGE_SIZE
from swapd.errors import ObjectSizeError
from swapd.plugins import make_backend


@pytest.fixture
def pool() -> Iterator[ZbudPool]:
    p = ZbudPool(arena_cache_pages=0, max_pages=4096)
    yield p
    p.close()


def put(pool: ZbudPool, size: int, fill: int | None = None) -> int:
    """malloc + write a recognisable pattern + _check."""
    h = pool.malloc(size)
    pool._check()
    pool.write(h, bytes([(h if fill is None else fill) & 0xFF]) * size)
    pool._check()
    return h


def drop(pool: ZbudPool, h: int) -> None:
    pool.free(h)
    pool._check()


def chunks(n: int) -> int:
    """Bytes of an object that takes exactly ``n`` chunks."""
    return n * CHUNK_SIZE


def test_geometry_matches_the_kernel() -> None:
    # NCHUNKS_ORDER 6: 64 chunks of 64 B, one taken by the header -> 63 for data.
    assert CHUNK_SIZE == 64 and ZHDR_SIZE_ALIGNED == 64 and NCHUNKS == 63
    # zbud_alloc: size > PAGE_SIZE - ZHDR_SIZE_ALIGNED - CHUNK_SIZE -> -ENOSPC.
    assert MAX_OBJECT_SIZE == PAGE_SIZE - 2 * 64 == 3968
    assert [size_to_chunks(s) for s in (1, 63, 64, 65, 128, 129, 3968)] == [
        1, 1, 1, 2, 2, 3, 62]


def test_registered_as_entry_point() -> None:
    p = make_backend("zbud", arena_cache_pages=0, max_pages=4)
    try:
        assert isinstance(p, ZbudPool) and p.name == "zbud" and p.max_size == 3968
    finally:
        p.close()


def test_largest_object(pool: ZbudPool) -> None:
    h = put(pool, MAX_OBJECT_SIZE)
    loc = pool.locate(h)
    assert (loc.buddy, loc.offset, loc.chunks) == ("first", 64, 62)
    assert pool.unbuddied_index(loc.pfn) == 1  # 63 - 62 free chunks
    with pytest.raises(ObjectSizeError):
        pool.malloc(MAX_OBJECT_SIZE + 1)
    pool._check()
    # The one free chunk takes a one-chunk last buddy: 62 + 1 = NCHUNKS, page full.
    g = put(pool, 64)
    loc2 = pool.locate(g)
    assert (loc2.pfn, loc2.buddy, loc2.offset) == (loc.pfn, "last", PAGE_SIZE - 64)
    assert pool.unbuddied_index(loc.pfn) is None
    assert bytes(pool.read(h)) == bytes([h & 0xFF]) * MAX_OBJECT_SIZE
    assert bytes(pool.read(g)) == bytes([g & 0xFF]) * 64


def test_first_left_justified_last_right_justified(pool: ZbudPool) -> None:
    a = put(pool, 100)  # 2 chunks
    la = pool.locate(a)
    assert (la.buddy, la.offset, la.chunks) == ("first", ZHDR_SIZE_ALIGNED, 2)
    assert pool.unbuddied_index(la.pfn) == 61
    b = put(pool, 1000)  # 16 chunks, fits the 61 free ones
    lb = pool.locate(b)
    assert (lb.pfn, lb.buddy, lb.chunks) == (la.pfn, "last", 16)
    assert lb.offset == PAGE_SIZE - 16 * 64 == 3072
    assert pool.unbuddied_index(la.pfn) is None  # buddied
    st = pool.stats()
    assert isinstance(st, ZbudStats)
    assert (st.total_pages, st.buddied_pages, st.unbuddied_pages, st.chunks_used) == (1, 1, 0, 18)
    # Freeing the first buddy leaves the last where it is; the page goes to
    # unbuddied[63 - 16] and the next object becomes the first buddy again.
    drop(pool, a)
    assert pool.locate(b).offset == 3072
    assert pool.unbuddied_index(la.pfn) == 47
    c = put(pool, 47 * 64)  # exactly the free chunks
    lc = pool.locate(c)
    assert (lc.pfn, lc.buddy, lc.offset) == (la.pfn, "first", 64)
    assert bytes(pool.read(b)) == bytes([b & 0xFF]) * 1000
    assert bytes(pool.read(c)) == bytes([c & 0xFF]) * 47 * 64
    # 48 chunks no longer fit anywhere: a new page.
    d = put(pool, 47 * 64 + 1)
    assert pool.locate(d).pfn != la.pfn
    assert pool.total_pages() == 2


def test_pages_return_to_the_arena(pool: ZbudPool) -> None:
    a, b = put(pool, 2000), put(pool, 1900)  # 32 + 30 chunks = 62 <= 63: one page
    assert pool.locate(a).pfn == pool.locate(b).pfn
    assert pool.total_pages() == pool.arena.pages_in_use == 1
    drop(pool, b)
    assert pool.total_pages() == 1
    drop(pool, a)
    assert pool.total_pages() == pool.arena.pages_in_use == 0
    assert pool.arena.resident_pages() == 0


def _full_page(pool: ZbudPool, first_chunks: int) -> tuple[int, int]:
    """A page holding ``first_chunks`` + (63 - first_chunks): exactly full."""
    a = put(pool, chunks(first_chunks))
    b = put(pool, chunks(NCHUNKS - first_chunks))
    assert pool.locate(a).pfn == pool.locate(b).pfn
    assert pool.unbuddied_index(pool.locate(a).pfn) is None
    return a, b


def test_first_fit_from_the_smallest_sufficient_list(pool: ZbudPool) -> None:
    full = [_full_page(pool, first) for first in (50, 20, 40)]
    pages = [pool.locate(a).pfn for a, _ in full]
    for _a, b in full:
        drop(pool, b)  # the page keeps its first buddy: 63 - first free chunks
    p50, p20, p40 = pages
    assert [pool.unbuddied_index(p) for p in pages] == [13, 43, 23]
    # 20 chunks: lists 20..22 are empty, list 23 is the smallest that fits.
    h = put(pool, chunks(20))
    assert (pool.locate(h).pfn, pool.locate(h).buddy) == (p40, "last")
    assert pool.locate(h).offset == PAGE_SIZE - 20 * 64
    # 14 chunks: list 13 is too small, list 43 is next.
    h = put(pool, chunks(14))
    assert pool.locate(h).pfn == p20
    assert pool.unbuddied_index(p20) is None
    h = put(pool, chunks(13))
    assert pool.locate(h).pfn == p50
    # Every page is full: one chunk needs a new page.
    h = put(pool, 1)
    assert pool.locate(h).pfn not in pages
    assert pool.stats().buddied_pages == 3


def test_lists_are_lifo(pool: ZbudPool) -> None:
    # Three pages that end up on the same list, unbuddied[33]; the one listed
    # last is at the head (list_add) and is taken first (list_first_entry).
    firsts = [_full_page(pool, 30) for _ in range(3)]
    pfns = [pool.locate(a).pfn for a, _ in firsts]
    for _a, b in (firsts[1], firsts[0], firsts[2]):
        drop(pool, b)
    assert {pool.unbuddied_index(p) for p in pfns} == {33}
    order = [pool.locate(put(pool, chunks(33))).pfn for _ in range(3)]
    assert order == [pfns[2], pfns[0], pfns[1]]


@pytest.mark.parametrize(("sizes", "pages"), [
    ([31 * 64], 30),           # 31 + 31 = 62 <= 63 chunks: two buddies per page
    ([32 * 64], 60),           # 32 + 32 > 63: one object per page
    ([32 * 64, 31 * 64], 30),  # alternating 32 and 31 chunks: 63, exactly full pages
    ([1], 30),                 # tiny objects: never more than two per page
])
def test_density_follows_the_packing_rule(pool: ZbudPool, sizes: list[int], pages: int) -> None:
    hs = [put(pool, sizes[i % len(sizes)]) for i in range(60)]
    assert pool.total_pages() == pages
    for h in hs:
        assert bytes(pool.read(h)) == bytes([h & 0xFF]) * pool.locate(h).size


def test_compact_moves_nothing(pool: ZbudPool) -> None:
    hs = [put(pool, 700) for _ in range(10)]
    for h in hs[::2]:
        drop(pool, h)
    where = {h: pool.locate(h) for h in hs[1::2]}
    pages = pool.total_pages()
    assert pool.compact() == 0
    pool._check()
    assert pool.total_pages() == pages
    assert {h: pool.locate(h) for h in hs[1::2]} == where


class RefZbud:
    """A plain transcription of zbud_alloc/zbud_free: lists scanned one by one.

    Pages are numbered as the arena numbers them (lowest free first), so the
    reference predicts the exact (page, buddy, offset) of every object.
    """

    def __init__(self) -> None:
        self.pages: dict[int, list[int]] = {}  # pfn -> [first_chunks, last_chunks]
        self.unbuddied: list[list[int]] = [[] for _ in range(NCHUNKS)]  # head at [0]
        self.where: dict[int, tuple[int, int]] = {}  # object -> (pfn, 0 first / 1 last)

    def alloc(self, obj: int, size: int) -> tuple[int, str, int]:
        c = size_to_chunks(size)
        for i in range(c, NCHUNKS):
            if self.unbuddied[i]:
                pfn = self.unbuddied[i].pop(0)
                bud = 0 if self.pages[pfn][0] == 0 else 1
                break
        else:
            pfn = 0
            while pfn in self.pages:
                pfn += 1
            self.pages[pfn] = [0, 0]
            bud = 0
        page = self.pages[pfn]
        page[bud] = c
        if 0 in page:
            self.unbuddied[NCHUNKS - sum(page)].insert(0, pfn)
        self.where[obj] = (pfn, bud)
        off = 64 if bud == 0 else PAGE_SIZE - c * 64
        return pfn, ("first", "last")[bud], off

    def free(self, obj: int) -> None:
        pfn, bud = self.where.pop(obj)
        page = self.pages[pfn]
        if 0 in page:
            self.unbuddied[NCHUNKS - sum(page)].remove(pfn)
        page[bud] = 0
        if page == [0, 0]:
            del self.pages[pfn]
        else:
            self.unbuddied[NCHUNKS - sum(page)].insert(0, pfn)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_a_transcription_of_the_kernel(pool: ZbudPool, seed: int) -> None:
    rng = random.Random(seed)
    ref = RefZbud()
    live: dict[int, bytes] = {}
    for _ in range(1500):
        if live and rng.random() < 0.45:
            h = rng.choice(list(live))
            drop(pool, h)
            ref.free(h)
            del live[h]
        else:
            size = rng.choice((rng.randint(1, 600), rng.randint(900, 2200),
                               rng.randint(1, MAX_OBJECT_SIZE)))
            h = pool.malloc(size)
            pool._check()
            data = rng.randbytes(size)
            pool.write(h, data)
            live[h] = data
            loc = pool.locate(h)
            assert (loc.pfn, loc.buddy, loc.offset) == ref.alloc(h, size)
        assert pool.total_pages() == len(ref.pages)
    for h, data in live.items():
        assert bytes(pool.read(h)) == data


def test_two_threads_check_after_every_operation(pool: ZbudPool) -> None:
    errors: list[BaseException] = []
    kept: dict[int, bytes] = {}
    kept_lock = threading.Lock()

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        mine: dict[int, bytes] = {}
        try:
            for _ in range(700):
                if mine and rng.random() < 0.45:
                    h = rng.choice(list(mine))
                    assert bytes(pool.read(h)) == mine.pop(h)
                    pool.free(h)
                else:
                    data = rng.randbytes(rng.randint(1, MAX_OBJECT_SIZE))
                    h = pool.malloc(len(data))
                    pool.write(h, data)
                    mine[h] = data
                pool._check()
            with kept_lock:
                kept.update(mine)
        except BaseException as exc:  # reported in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(s,)) for s in (11, 12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    pool._check()
    assert pool.stats().objects == len(kept)
    for h, data in kept.items():
        assert bytes(pool.read(h)) == data
    for h in kept:
        drop(pool, h)
    assert pool.total_pages() == 0
