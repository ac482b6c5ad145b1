"""The page arena: real pages handed out lowest first, returned to the kernel on free.

``resident_pages()`` (mincore) must follow ``pages_in_use`` exactly: that is what
makes a backend's ``total_pages()`` true memory.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator

import pytest

from swapd.arena import PAGE_SIZE, PageArena
from swapd.errors import InvariantError, PoolExhaustedError


@pytest.fixture
def arena() -> Iterator[PageArena]:
    a = PageArena(256, cache_pages=0)
    yield a
    a.close()


def test_lowest_free_page_first(arena: PageArena) -> None:
    pages = [arena.alloc_page() for _ in range(5)]
    assert pages == [0, 1, 2, 3, 4]
    arena.free_page(1)
    arena.free_page(3)
    arena._check()
    assert arena.alloc_page() == 1
    assert arena.alloc_page() == 3
    assert arena.alloc_page() == 5
    arena._check()


def test_resident_follows_use(arena: PageArena) -> None:
    assert arena.resident_pages() == 0
    pages = [arena.alloc_page() for _ in range(40)]
    assert arena.pages_in_use == 40
    assert arena.resident_pages() == 40
    rng = random.Random(0)
    for p in rng.sample(pages, 25):
        arena.free_page(p)
        pages.remove(p)
    arena._check()
    assert arena.pages_in_use == 15
    assert arena.resident_pages() == 15
    for p in pages:
        arena.free_page(p)
    assert arena.pages_in_use == 0
    assert arena.resident_pages() == 0
    arena._check()


def test_freed_page_comes_back_zeroed(arena: PageArena) -> None:
    p = arena.alloc_page()
    off = p * PAGE_SIZE
    arena.buf[off:off + PAGE_SIZE] = b"\xab" * PAGE_SIZE
    arena.free_page(p)
    q = arena.alloc_page()
    assert q == p
    assert bytes(arena.buf[off:off + PAGE_SIZE]) == bytes(PAGE_SIZE)


def test_pages_are_independent(arena: PageArena) -> None:
    pages = [arena.alloc_page() for _ in range(8)]
    for p in pages:
        arena.buf[p * PAGE_SIZE:(p + 1) * PAGE_SIZE] = bytes([p + 1]) * PAGE_SIZE
    for p in pages:
        assert bytes(arena.buf[p * PAGE_SIZE:(p + 1) * PAGE_SIZE]) == bytes([p + 1]) * PAGE_SIZE


def test_exhaustion_and_recovery() -> None:
    a = PageArena(4, cache_pages=0)
    try:
        got = [a.alloc_page() for _ in range(4)]
        with pytest.raises(PoolExhaustedError):
            a.alloc_page()
        a._check()
        assert a.pages_in_use == 4
        a.free_page(got[2])
        assert a.alloc_page() == got[2]
        with pytest.raises(PoolExhaustedError):
            a.alloc_page()
    finally:
        a.close()


def test_bad_free_is_an_invariant_error(arena: PageArena) -> None:
    p = arena.alloc_page()
    arena.alloc_page()
    arena.free_page(p)
    with pytest.raises(InvariantError):
        arena.free_page(p)  # already free
    with pytest.raises(InvariantError):
        arena.free_page(200)  # never handed out
    arena._check()
    assert arena.pages_in_use == 1


@pytest.mark.parametrize("n", [0, -3])
def test_bad_size(n: int) -> None:
    with pytest.raises(ValueError):
        PageArena(n)


def test_threads_get_distinct_pages() -> None:
    a = PageArena(4096, cache_pages=0)
    try:
        owned: list[list[int]] = [[] for _ in range(4)]

        def work(i: int) -> None:
            rng = random.Random(i)
            mine = owned[i]
            for _ in range(800):
                if mine and rng.random() < 0.4:
                    a.free_page(mine.pop(rng.randrange(len(mine))))
                else:
                    mine.append(a.alloc_page())

        ts = [threading.Thread(target=work, args=(i,)) for i in range(4)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        allp = [p for m in owned for p in m]
        assert len(allp) == len(set(allp))
        assert a.pages_in_use == len(allp)
        a._check()
        assert a.resident_pages() == len(allp)
    finally:
        a.close()


def test_freed_pages_are_cached_resident_and_reused_then_trimmed() -> None:
    """Like a per-cpu page list: freed pages stay resident up to the cache size, are
    handed out again first, and ``trim`` returns them to the kernel."""
    a = PageArena(64, cache_pages=4)
    try:
        pages = [a.alloc_page() for _ in range(10)]
        for p in pages[:6]:
            a.free_page(p)
        a._check()
        assert a.pages_in_use == 4 and a.cached_pages == 4
        assert a.resident_pages() == 8  # 4 in use + 4 cached; 2 returned at once
        again = a.alloc_page()
        assert again in pages[:4]  # reused from the cache (LIFO), no fault taken
        assert a.cached_pages == 3
        assert a.trim() == 3
        a._check()
        assert a.cached_pages == 0 and a.resident_pages() == a.pages_in_use == 5
    finally:
        a.close()


def test_adoption_rebuilds_the_free_list_and_cache_from_the_state_bytes() -> None:
    """The arena is a state region: another mapping of its memfd sees the same pages, and
    the free list and cache rebuilt from the state bytes equal the owner's."""
    import os

    rng = random.Random(7)
    a = PageArena(512, cache_pages=16)
    try:
        held: list[int] = []
        for _ in range(2000):
            if held and rng.random() < 0.45:
                a.free_page(held.pop(rng.randrange(len(held))))
            else:
                p = a.alloc_page()
                a.buf[p * PAGE_SIZE:p * PAGE_SIZE + 8] = p.to_bytes(8, "little")
                held.append(p)
        a._check()
        b = PageArena.adopt(os.dup(a.region.fd), writable=False)
        try:
            assert b.pages_in_use == a.pages_in_use == len(held)
            assert sorted(b._cache) == sorted(a._cache) and list(b._free) == list(a._free)
            for p in held:
                assert bytes(b.buf[p * PAGE_SIZE:p * PAGE_SIZE + 8]) == p.to_bytes(8, "little")
            b._check()
        finally:
            b.close()
        c = PageArena.adopt(os.dup(a.region.fd))  # a new owner (a is not used meanwhile)
        try:
            for p in held:
                c.free_page(p)
            c.trim()
            c._check()
            assert c.pages_in_use == 0 and c.resident_pages() == 0
        finally:
            c.close()
    finally:
        a.close()
