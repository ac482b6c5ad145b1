"""z3fold-specific checks, computed by hand from the rules of ``mm/z3fold.c``.

With the default 88-byte header (two chunks): FIRST lands at byte 128, LAST
against the end of the page, MIDDLE right after FIRST; objects above 3904
bytes get a headless page; pages sit on unbuddied[num_free_chunks()].  The
compaction work that follows every free is checked case by case: a middle
object sliding next to LAST or FIRST (only for a gain of three chunks or
more), a lone middle object becoming FIRST, a single object moving to another
page (compact_single_buddy) and becoming a foreign handle there, a page with a
foreign handle never emptied that way -- always with content and handles
intact.  ``_check()`` runs after every operation, also with two threads.  The
generic contract lives in ``tests/test_backend_contract.py``.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator

import pytest

from backends.z3fold import (
    BIG_CHUNK_GAP,
    CHUNK_SIZE,
    TOTAL_CHUNKS,
    Z3FOLD_HEADER_BYTES,
    Z3foldPool,
    Z3foldStats,
    size_to_chunks,
)
from swapd.arena import PAGE_SIZE
from swapd.errors import ConfigError, ObjectSizeError
from swapd.plugins import make_backend


@pytest.fixture
def pool() -> Iterator[Z3foldPool]:
    p = Z3foldPool(arena_cache_pages=0, max_pages=4096)
    yield p
    p.close()


def ch(n: int) -> int:
    """Bytes of an object that takes exactly ``n`` chunks."""
    return n * CHUNK_SIZE


def put(pool: Z3foldPool, size: int) -> int:
    """malloc + write a pattern derived from the handle + _check."""
    h = pool.malloc(size)
    pool._check()
    pool.write(h, content(h, size))
    pool._check()
    return h


def content(h: int, size: int) -> bytes:
    """A pattern that differs per handle and per position, so moves that shift show."""
    return bytes((h * 7 + i) & 0xFF for i in range(size))


def drop(pool: Z3foldPool, h: int) -> None:
    pool.free(h)
    pool._check()


def where(pool: Z3foldPool, h: int) -> tuple[int, str, int]:
    """(page, buddy, offset in page) of a live object, after checking its content."""
    loc = pool.locate(h)
    assert bytes(pool.read(h)) == content(h, loc.size), f"object {h} corrupted"
    return loc.pfn, loc.buddy, loc.offset


# -- geometry -----------------------------------------------------------------------------------


def test_geometry_of_the_default_header(pool: Z3foldPool) -> None:
    # sizeof(struct z3fold_header) = 88 on x86-64 -> round_up(88, 64) = 128: two chunks.
    assert Z3FOLD_HEADER_BYTES == 88 and CHUNK_SIZE == 64 and TOTAL_CHUNKS == 64
    assert (pool.zhdr_chunks, pool.zhdr_size, pool.nchunks) == (2, 128, 62)
    # z3fold_alloc: size > PAGE_SIZE - ZHDR_SIZE_ALIGNED - CHUNK_SIZE -> headless.
    assert pool.max_buddy_size == 4096 - 128 - 64 == 3904
    assert pool.max_size == PAGE_SIZE
    assert [size_to_chunks(s) for s in (1, 64, 65, 3904)] == [1, 1, 2, 61]
    assert BIG_CHUNK_GAP == 3


def test_one_chunk_header_option() -> None:
    p = Z3foldPool(arena_cache_pages=0, max_pages=8, header_bytes=64)
    try:
        assert (p.zhdr_chunks, p.nchunks, p.max_buddy_size) == (1, 63, 3968)
        h = put(p, 3968)
        assert where(p, h)[1:] == ("first", 64)
        assert where(p, put(p, 3969))[1:] == ("headless", 0)
    finally:
        p.close()


@pytest.mark.parametrize("bad", [0, -8, PAGE_SIZE - CHUNK_SIZE + 1, "88"])
def test_bad_header_size_is_a_config_error(bad: object) -> None:
    with pytest.raises(ConfigError):
        Z3foldPool(arena_cache_pages=0, max_pages=8, header_bytes=bad)  # type: ignore[arg-type]


def test_compact_on_free_must_be_a_bool() -> None:
    with pytest.raises(ConfigError):
        Z3foldPool(arena_cache_pages=0, max_pages=8, compact_on_free="no")  # type: ignore[arg-type]


def test_registered_as_entry_point() -> None:
    p = make_backend("z3fold", arena_cache_pages=0, max_pages=4)
    try:
        assert isinstance(p, Z3foldPool) and p.name == "z3fold" and p.max_size == PAGE_SIZE
    finally:
        p.close()


# -- placement and lists ------------------------------------------------------------------------


def test_first_last_middle_placement(pool: Z3foldPool) -> None:
    a = put(pool, 100)  # 2 chunks
    assert where(pool, a) == (0, "first", 128)
    assert pool.unbuddied_index(0) == 60  # 62 - 2
    b = put(pool, 200)  # 4 chunks
    assert where(pool, b) == (0, "last", PAGE_SIZE - 4 * 64)
    assert pool.unbuddied_index(0) == 56
    c = put(pool, 300)  # 5 chunks: MIDDLE right after FIRST, start_middle = 2 + 2
    assert where(pool, c) == (0, "middle", 4 * 64)
    assert pool.unbuddied_index(0) is None  # all three buddies: on no list
    st = pool.stats()
    assert isinstance(st, Z3foldStats)
    assert (st.total_pages, st.buddied_pages, st.unbuddied_pages, st.headless_pages) == (
        1, 1, 0, 0)
    assert (st.objects, st.object_bytes) == (3, 600)


def test_three_small_objects_per_page_then_a_new_page(pool: Z3foldPool) -> None:
    hs = [put(pool, 1) for _ in range(4)]
    assert [where(pool, h) for h in hs] == [
        (0, "first", 128), (0, "last", 4032), (0, "middle", 192), (1, "first", 128)]


def test_headless_pages(pool: Z3foldPool) -> None:
    big = put(pool, 3904)  # the largest object beside a header: 61 chunks, FIRST
    assert where(pool, big) == (0, "first", 128)
    assert pool.unbuddied_index(0) == 1
    hl = put(pool, 3905)  # one byte more: a whole page with no header
    assert where(pool, hl) == (1, "headless", 0)
    assert pool.unbuddied_index(1) is None
    full = put(pool, PAGE_SIZE)
    assert where(pool, full) == (2, "headless", 0)
    assert pool.locate(full).size == PAGE_SIZE
    with pytest.raises(ObjectSizeError):
        pool.malloc(PAGE_SIZE + 1)
    pool._check()
    # Headless pages are never on a list: a one-chunk object goes to page 0.
    one = put(pool, 64)
    assert where(pool, one) == (0, "last", PAGE_SIZE - 64)
    st = pool.stats()
    assert (st.total_pages, st.headless_pages, st.buddied_pages, st.unbuddied_pages) == (
        3, 2, 0, 1)
    drop(pool, hl)
    assert pool.total_pages() == pool.arena.pages_in_use == 2
    assert where(pool, full) == (2, "headless", 0)


def test_density_by_the_packing_rule() -> None:
    cases = [
        ({}, ch(20), 99, 33),   # 3 x 20 = 60 <= 62 chunks: three per page
        ({}, ch(21), 100, 50),  # 3 x 21 = 63 > 62: two per page
        ({"header_bytes": 64}, ch(21), 99, 33),  # a one-chunk header fits three
        ({}, 3905, 20, 20),     # headless: one per page
        ({}, 1, 60, 20),        # never more than three
    ]
    for options, size, n, pages in cases:
        p = Z3foldPool(arena_cache_pages=0, max_pages=256, **options)
        try:
            hs = [put(p, size) for _ in range(n)]
            assert p.total_pages() == pages, (options, size)
            for h in hs:
                where(p, h)
        finally:
            p.close()


def test_first_fit_from_the_smallest_sufficient_list(pool: Z3foldPool) -> None:
    # Three pages with one 61-, 41- and 51-chunk FIRST each: 1, 21 and 11 free chunks.
    a = put(pool, ch(61))
    b = put(pool, ch(41))
    c = put(pool, ch(51))
    assert [pool.unbuddied_index(p) for p in (0, 1, 2)] == [1, 21, 11]
    assert where(pool, put(pool, ch(10)))[:2] == (2, "last")  # list 11
    assert where(pool, put(pool, ch(11)))[:2] == (1, "last")  # list 21
    # Pages 0 and 2 are both on list 1 now; page 2 was listed last, so it is at the
    # head (list_add) and takes the object, as MIDDLE after its 51-chunk FIRST.
    assert [pool.unbuddied_index(p) for p in (0, 1, 2)] == [1, 10, 1]
    assert where(pool, put(pool, ch(1))) == (2, "middle", 53 * 64)
    for h in (a, b, c):
        where(pool, h)


# -- compaction after free ---------------------------------------------------------------------


def _full_page(pool: Z3foldPool, first: int, last: int, middle: int) -> tuple[int, int, int]:
    """A page with FIRST, LAST and MIDDLE of the given chunk counts (in that order)."""
    f, lst, m = put(pool, ch(first)), put(pool, ch(last)), put(pool, ch(middle))
    pfn = pool.locate(f).pfn
    assert where(pool, lst)[:2] == (pfn, "last")
    assert where(pool, m) == (pfn, "middle", (2 + first) * 64)
    return f, lst, m


def test_middle_slides_next_to_last_when_first_is_freed(pool: Z3foldPool) -> None:
    a, b, c = _full_page(pool, 2, 4, 5)
    drop(pool, a)
    # first free, last taken: gap after middle = 64 - (4 + 4 + 5) = 51 >= 3, so the
    # middle object moves to chunk 64 - 4 - 5 = 55.
    assert where(pool, c) == (0, "middle", 55 * 64)
    assert where(pool, b) == (0, "last", 60 * 64)
    assert pool.unbuddied_index(0) == 53  # the gap before it: 55 - 2
    assert pool.stats().in_page_compactions == 1
    # A 53-chunk object fits before the middle one: it becomes FIRST.
    d = put(pool, ch(53))
    assert where(pool, d) == (0, "first", 128)
    assert pool.unbuddied_index(0) is None
    assert where(pool, c) == (0, "middle", 55 * 64)


def test_lone_middle_becomes_first(pool: Z3foldPool) -> None:
    a, b, c = _full_page(pool, 2, 4, 5)
    drop(pool, a)
    drop(pool, b)
    # One object left, no other page to move it to: z3fold_compact_page moves the
    # lone middle object next to the header and calls it FIRST (first_num++).
    assert where(pool, c) == (0, "first", 128)
    assert pool.unbuddied_index(0) == 57
    assert pool.stats().in_page_compactions == 2
    # The same handle now frees a FIRST buddy.
    drop(pool, c)
    assert pool.total_pages() == 0


@pytest.mark.parametrize(("new_first", "middle_at"), [
    (3, 5),     # gap 49 - (3 + 2) = 44 >= 3: slides to chunk 5
    (44, 46),   # gap exactly BIG_CHUNK_GAP: slides
    (45, 49),   # gap 2 < BIG_CHUNK_GAP: not worth the memmove, stays
])
def test_middle_slides_next_to_first_when_last_is_freed(pool: Z3foldPool, new_first: int,
                                                        middle_at: int) -> None:
    a, b, m = _full_page(pool, 10, 10, 5)  # middle at chunk 12
    drop(pool, a)
    assert where(pool, m) == (0, "middle", 49 * 64)  # 64 - 10 - 5
    f = put(pool, ch(new_first))  # fits before the middle object: FIRST
    assert where(pool, f) == (0, "first", 128)
    moves = pool.stats().in_page_compactions
    drop(pool, b)
    assert where(pool, m) == (0, "middle", middle_at * 64)
    assert pool.stats().in_page_compactions == moves + (middle_at != 49)
    # The page is listed by the free run after the middle object.
    assert pool.unbuddied_index(0) == TOTAL_CHUNKS - (middle_at + 5)


def test_single_object_moves_to_another_page(pool: Z3foldPool) -> None:
    a, b, m = _full_page(pool, 20, 20, 10)  # page 0 full, on no list
    d, p = put(pool, ch(15)), put(pool, ch(40))  # page 1: 15 + 40 chunks
    assert where(pool, d)[:2] == (1, "first") and where(pool, p)[:2] == (1, "last")
    drop(pool, m)  # page 0 keeps FIRST + LAST: 22 free chunks, unbuddied[22]
    assert pool.unbuddied_index(0) == 22
    drop(pool, p)
    # Page 1 holds one object: compact_single_buddy finds page 0 on list 22 and moves
    # it there as MIDDLE (start_middle = 2 + 20), then page 1 is freed.
    assert where(pool, d) == (0, "middle", 22 * 64)
    st = pool.stats()
    assert (st.total_pages, st.single_buddy_moves, st.foreign_objects) == (1, 1, 1)
    assert st.pages_compacted == 0  # freed by free()'s work, not by compact()
    # The moved object is a foreign handle of page 0.  Freeing FIRST slides it next to
    # LAST (gap 64 - (20 + 22 + 15) = 7 >= 3) ...
    drop(pool, a)
    assert where(pool, d) == (0, "middle", 29 * 64)
    # ... and once alone it is not moved to another page (foreign handles pin the
    # page) but becomes FIRST in place.
    q = put(pool, ch(30))  # somewhere for it to go, if the rule were broken
    assert where(pool, q)[:2] == (1, "first")
    drop(pool, b)
    assert where(pool, d) == (0, "first", 128)
    assert pool.stats().foreign_objects == 1
    assert pool.stats().single_buddy_moves == 1
    drop(pool, d)
    assert pool.stats().foreign_objects == 0
    assert pool.total_pages() == 1


def test_compact_moves_what_could_not_move_at_free_time(pool: Z3foldPool) -> None:
    _a, _b, m = _full_page(pool, 20, 20, 10)
    d, p = put(pool, ch(15)), put(pool, ch(40))
    drop(pool, p)  # page 1 single, but page 0 is full: nowhere to go
    assert where(pool, d) == (1, "first", 128)
    assert pool.unbuddied_index(1) == 47
    drop(pool, m)  # now page 0 has 22 free chunks
    assert pool.total_pages() == 2
    assert pool.compact() == 1
    pool._check()
    assert where(pool, d) == (0, "middle", 22 * 64)
    st = pool.stats()
    assert (st.total_pages, st.pages_compacted, st.foreign_objects) == (1, 1, 1)
    assert pool.compact() == 0  # nothing left to gain
    pool._check()


def test_deferred_compaction_runs_in_compact() -> None:
    p = Z3foldPool(arena_cache_pages=0, max_pages=64, compact_on_free=False)
    try:
        a, b, c = _full_page(p, 2, 4, 5)
        drop(p, a)
        # NEEDS_COMPACTING: nothing moved yet, and the page is off the lists.
        assert where(p, c) == (0, "middle", 4 * 64)
        assert p.unbuddied_index(0) is None
        assert p.stats().queued_pages == 1
        e = put(p, 1)  # allocation skips the queued page
        assert where(p, e) == (1, "first", 128)
        drop(p, b)  # a second free of a queued page leaves it queued
        assert p.stats().queued_pages == 1
        # compact() runs page 0's work: it holds one object and no foreign handle, so
        # compact_single_buddy moves it into page 1 (unbuddied[61]) as LAST and page 0
        # is freed.
        assert p.compact() == 1
        p._check()
        assert where(p, c) == (1, "last", PAGE_SIZE - 5 * 64)
        assert where(p, e) == (1, "first", 128)
        st = p.stats()
        assert (st.queued_pages, st.total_pages, st.pages_compacted) == (0, 1, 1)
        assert (st.in_page_compactions, st.single_buddy_moves, st.foreign_objects) == (0, 1, 1)
    finally:
        p.close()


def test_freeing_the_last_object_of_a_queued_page() -> None:
    p = Z3foldPool(arena_cache_pages=0, max_pages=8, compact_on_free=False)
    try:
        a, b = put(p, 100), put(p, 100)
        drop(p, a)
        assert p.stats().queued_pages == 1
        drop(p, b)
        st = p.stats()
        assert (st.queued_pages, st.total_pages) == (0, 0)
        assert p.compact() == 0
    finally:
        p.close()


# -- seeded stress and threads --------------------------------------------------------------------


@pytest.mark.parametrize("compact_on_free", [True, False])
@pytest.mark.parametrize("seed", [0, 1])
def test_seeded_stress_check_after_every_operation(compact_on_free: bool, seed: int) -> None:
    rng = random.Random(seed)
    p = Z3foldPool(arena_cache_pages=0, max_pages=1024, compact_on_free=compact_on_free)
    live: dict[int, bytes] = {}
    try:
        for _ in range(1500):
            r = rng.random()
            if r < 0.5 or not live:
                size = rng.choice((rng.randint(1, 400), rng.randint(900, 1700),
                                   rng.randint(1, PAGE_SIZE)))
                h = p.malloc(size)
                p._check()
                data = rng.randbytes(size)
                p.write(h, data)
                live[h] = data
            elif r < 0.9:
                h = rng.choice(list(live))
                p.free(h)
                del live[h]
            elif r < 0.97:
                h = rng.choice(list(live))  # rewrite after whatever moves happened
                live[h] = rng.randbytes(len(live[h]))
                p.write(h, live[h])
            else:
                before = p.total_pages()
                freed = p.compact()
                assert p.total_pages() == before - freed
            p._check()
        for h, data in live.items():
            assert p.read(h) == data
        st = p.stats()
        assert st.objects == len(live) and st.object_bytes == sum(map(len, live.values()))
        assert p.arena.resident_pages() == p.total_pages()
    finally:
        p.close()


def test_two_threads_check_after_every_operation(pool: Z3foldPool) -> None:
    errors: list[BaseException] = []
    kept: dict[int, bytes] = {}
    kept_lock = threading.Lock()

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        mine: dict[int, bytes] = {}
        try:
            for _ in range(700):
                r = rng.random()
                if mine and r < 0.45:
                    h = rng.choice(list(mine))
                    assert pool.read(h) == mine.pop(h)
                    pool.free(h)
                elif r < 0.97:
                    data = rng.randbytes(rng.choice((rng.randint(1, 1500),
                                                     rng.randint(1, PAGE_SIZE))))
                    h = pool.malloc(len(data))
                    pool.write(h, data)
                    mine[h] = data
                else:
                    pool.compact()
                pool._check()
            with kept_lock:
                kept.update(mine)
        except BaseException as exc:  # reported in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(s,)) for s in (21, 22)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    pool._check()
    assert pool.stats().objects == len(kept)
    for h, data in kept.items():
        assert pool.read(h) == data
    for h in kept:
        drop(pool, h)
    assert pool.total_pages() == 0
