"""zsmalloc-specific tests: the class table, straddling objects, fullness groups, the huge
class, compaction, both lock modes under threads, and _check catching corruption.

The generic contract (round trips, accounting, misuse) is tests/test_backend_contract.py.
Hand computations below follow mm/zsmalloc.c (calculate_zspage_chain_size, can_merge,
get_fullness_group) and the examples in the 6.3 chain-size commits.
"""

from __future__ import annotations

import itertools
import random
import threading
from collections.abc import Iterator

import pytest

from backends.zsmalloc import (
    ZS_HANDLE_SIZE,
    ZS_SIZE_CLASSES,
    ZsPool,
    calculate_zspage_chain_size,
    fullness_group,
    get_size_class_index,
)
from swapd.arena import PAGE_SIZE
from swapd.errors import (
    ConfigError,
    DataTypeError,
    DoubleFreeError,
    InvalidHandleError,
    InvariantError,
    ObjectSizeError,
    PoolExhaustedError,
)


@pytest.fixture
def pool() -> Iterator[ZsPool]:
    p = ZsPool(max_pages=4096)
    yield p
    p.close()


def _brute_chain(size: int, chain: int) -> tuple[int, int]:
    """(pages, objects) per zspage with the least waste, by enumeration (first best wins)."""
    if size & (size - 1) == 0:
        return 1, PAGE_SIZE // size
    wastes = [(k * PAGE_SIZE % size, k) for k in range(1, chain + 1)]
    best = min(wastes)[1]  # ties: the smallest k, as the kernel's strict '<' keeps it
    return best, best * PAGE_SIZE // size


# -- the class table ------------------------------------------------------------------


def test_255_class_indexes_16_bytes_apart() -> None:
    assert ZS_SIZE_CLASSES == 255
    assert get_size_class_index(1) == 0
    assert get_size_class_index(32) == 0
    assert get_size_class_index(33) == 1
    assert get_size_class_index(48) == 1
    assert get_size_class_index(49) == 2
    assert get_size_class_index(4096) == 254
    assert get_size_class_index(4104) == 254  # clamped, as min_t(..., ZS_SIZE_CLASSES - 1)


@pytest.mark.parametrize(("size", "chain", "expected"), [
    # class 208 (the 6.3 "rework zspage chain size selection" example): waste 144, 80, 16,
    # 160, 96, 32, 176, 112 bytes for 1..8 pages -> 3 pages, 59 objects.
    (208, 8, 3),
    # class 1568 (the "make zspage chain size configurable" example): waste 960, 352, 1312,
    # 704, 96, ... -> 5 pages with a chain of 8, 2 pages with the old limit of 4.
    (1568, 8, 5),
    (1568, 4, 2),
    # 3632, the largest non-huge class at chain 8: only 8 pages leave little (80 bytes).
    (3632, 8, 8),
    (3648, 8, 1),
    (2048, 8, 1),  # a power of two is always one page
    (32, 8, 1),
])
def test_chain_size_hand_computed(size: int, chain: int, expected: int) -> None:
    assert calculate_zspage_chain_size(size, chain) == expected
    assert _brute_chain(size, chain)[0] == expected


def test_classes_match_an_independent_merge(pool: ZsPool) -> None:
    # Walk the 255 sizes from the top: a size joins the class above it when its
    # (pages, objects) equals that class's.
    reps: list[tuple[int, int, int]] = []
    for i in range(254, -1, -1):
        size = min(32 + 16 * i, PAGE_SIZE)
        ppz, opz = _brute_chain(size, 8)
        if reps and reps[-1][1:] == (ppz, opz):
            continue
        reps.append((size, ppz, opz))
    got = [(c.size, c.pages_per_zspage, c.objs_per_zspage) for c in pool.classes]
    assert got == sorted(reps)
    assert len(got) == len(reps) < 255
    for a, b in itertools.pairwise(got):
        assert a[1:] != b[1:], "adjacent distinct classes must differ (else they merge)"


def test_merged_sizes_use_the_larger_class() -> None:
    # With chain 4 (pre-6.3), 1568 has 2 pages / 5 objects, like 1632: they merge, and an
    # object needing 1568 bytes (1560 + the 8-byte header) is stored in a 1632-byte slot.
    old = ZsPool(max_pages=64, chain_size=4)
    new = ZsPool(max_pages=64)
    try:
        assert old.class_for(1560).size == 1632
        assert new.class_for(1560).size == 1568
        assert new.class_for(1560).pages_per_zspage == 5
        assert new.class_for(1560).objs_per_zspage == 13
    finally:
        old.close()
        new.close()


def test_huge_class_size_follows_the_handle_header() -> None:
    faithful = ZsPool(max_pages=64)
    oob = ZsPool(max_pages=64, handle_header=False)
    try:
        # Kernel: largest non-huge class 3632 minus (ZS_HANDLE_SIZE - 1).
        assert faithful.huge_class_size == 3632 - (ZS_HANDLE_SIZE - 1) == 3625
        assert not faithful.class_for(3624).huge
        assert faithful.class_for(3625).huge
        assert faithful.class_for(PAGE_SIZE).huge
        assert oob.huge_class_size == 3633
        assert not oob.class_for(3632).huge
        assert oob.class_for(3633).huge
        # Out of band, an object may fit a smaller class: 1561 + 8 bytes no longer fit the
        # 1568-byte class, 1561 alone does.
        assert oob.class_for(1561).size == 1568 < faithful.class_for(1561).size
    finally:
        faithful.close()
        oob.close()


def test_fullness_group_steps() -> None:
    assert fullness_group(0, 128) == 0
    assert fullness_group(1, 128) == 1  # 0% by integer division, still ZS_INUSE_RATIO_10
    assert fullness_group(13, 128) == 2  # 10%
    assert fullness_group(127, 128) == 10  # 99%
    assert fullness_group(128, 128) == 11  # full
    assert fullness_group(1, 2) == 6  # 50%


# -- objects ------------------------------------------------------------------------------


def test_straddling_object_round_trip(pool: ZsPool) -> None:
    # Class 208 (3 pages, 59 slots): slot 19 starts at 3952; its payload (after the
    # 8-byte header) starts at 3960, so a 200-byte object has 136 bytes in the first page
    # and 64 in the second.
    cls = pool.class_for(200)
    assert cls.size == 208
    rng = random.Random(5)
    handles = []
    for _ in range(20):
        h = pool.malloc(200)
        data = rng.randbytes(200)
        pool.write(h, data)
        handles.append((h, data))
        pool._check()
    h19, d19 = handles[19]
    loc = pool.locate(h19)
    (a, n1), (b, n2) = loc.parts
    assert loc.slot == 19 and (n1, n2) == (136, 64)
    assert a >> 12 == loc.pages[0] and b >> 12 == loc.pages[1] and b & 4095 == 0
    assert pool.read(h19) == d19
    # The two slices really are at the end of one arena page and the start of the next.
    assert bytes(pool.arena.buf[a:a + n1]) + bytes(pool.arena.buf[b:b + n2]) == d19
    # write accepts any bytes-like object, also across the boundary
    new = bytearray(rng.randbytes(200))
    pool.write(h19, memoryview(new))
    assert pool.read(h19) == bytes(new)
    pool.write(h19, new)
    assert pool.read(h19) == bytes(new)
    for h, d in handles[:19]:
        assert pool.read(h) == d
    pool._check()


def test_handle_header_is_in_the_arena(pool: ZsPool) -> None:
    h = pool.malloc(100)
    a = pool.locate(h).parts[0][0]
    # the kernel's obj_malloc: the handle, tagged OBJ_ALLOCATED_TAG, heads the chunk
    assert int.from_bytes(pool.arena.buf[a - 8:a], "little") == (h << 1) | 1
    oob = ZsPool(max_pages=64, handle_header=False)
    try:
        h2 = oob.malloc(100)
        assert oob.locate(h2).parts[0][0] & 4095 == 0  # payload at the slot start
    finally:
        oob.close()


def test_huge_objects_take_a_page_each(pool: ZsPool) -> None:
    rng = random.Random(1)
    objs = []
    for size in (pool.huge_class_size, 3900, PAGE_SIZE):
        h = pool.malloc(size)
        d = rng.randbytes(size)
        pool.write(h, d)
        objs.append((h, d))
        pool._check()
    assert pool.total_pages() == 3
    (cs,) = pool.stats().classes
    assert cs.huge and cs.size == PAGE_SIZE and cs.objects == 3 and cs.pages == 3
    for h, d in objs:
        assert pool.read(h) == d
        loc = pool.locate(h)
        assert loc.zspage == 0 and loc.parts[0][0] & 4095 == 0  # no header, no descriptor
    for h, _ in objs:
        pool.free(h)
        pool._check()
    assert pool.total_pages() == 0


def test_fullness_groups_and_fullest_first(pool: ZsPool) -> None:
    cls = pool.class_for(24)  # the 32-byte class: one page, 128 slots
    assert (cls.size, cls.pages_per_zspage, cls.objs_per_zspage) == (32, 1, 128)
    a = [pool.malloc(24) for _ in range(128)]  # one full zspage
    b = [pool.malloc(24) for _ in range(128)]  # and another
    assert pool.stats().classes[0].fullness[11] == 2
    for h in a[:115]:  # 13 left: 10% -> group 2
        pool.free(h)
    for h in b[:1]:  # 127 left: 99% -> group 10
        pool.free(h)
    pool._check()
    fullness = pool.stats().classes[0].fullness
    assert fullness[2] == 1 and fullness[10] == 1 and sum(fullness) == 2
    # find_get_zspage takes the fullest zspage: the new object goes to b's zspage.
    h = pool.malloc(24)
    assert pool.locate(h).zspage == pool.locate(b[1]).zspage
    assert pool.stats().classes[0].fullness[11] == 1
    for x in a[115:]:
        pool.free(x)
    assert pool.total_pages() == 1  # a's zspage emptied and went back to the arena
    pool._check()


# -- compaction ---------------------------------------------------------------------------


def test_compaction_frees_pages_and_keeps_content(pool: ZsPool) -> None:
    # Class 2048: one page, two slots.  100 objects fill 50 pages; freeing slot 0 of each
    # page leaves 50 half-full pages, and compaction packs them into 25.
    rng = random.Random(7)
    cls = pool.class_for(2000)
    assert (cls.size, cls.pages_per_zspage, cls.objs_per_zspage) == (2048, 1, 2)
    objs = {}
    for _ in range(100):
        h = pool.malloc(2000)
        objs[h] = rng.randbytes(2000)
        pool.write(h, objs[h])
    assert pool.total_pages() == 50
    for h in list(objs):
        if pool.locate(h).slot == 0:
            pool.free(h)
            del objs[h]
    pool._check()
    assert pool.total_pages() == 50
    assert pool.stats().classes[0].freeable == 25
    freed = pool.compact()
    assert freed == 25
    assert pool.total_pages() == 25
    assert pool.stats().pages_compacted == 25
    assert pool.stats().classes[0].freeable == 0
    pool._check()
    for h, d in objs.items():
        assert pool.read(h) == d
    assert pool.compact() == 0  # nothing left to gain


def test_compaction_across_classes_with_straddling_objects(pool: ZsPool) -> None:
    rng = random.Random(11)
    objs: dict[int, bytes] = {}
    for _ in range(3000):
        size = rng.choice((200, 1560, 2900, 300))
        h = pool.malloc(size)
        objs[h] = rng.randbytes(size)
        pool.write(h, objs[h])
    for h in rng.sample(sorted(objs), 2400):
        pool.free(h)
        del objs[h]
    before = pool.total_pages()
    freeable = sum(c.freeable for c in pool.stats().classes)
    freed = pool.compact()
    assert 0 < freed <= freeable
    assert pool.total_pages() == before - freed
    pool._check()
    for h, d in objs.items():
        assert pool.read(h) == d
    for h in objs:
        pool.free(h)
    assert pool.total_pages() == 0
    pool._check()


# -- stress with _check after every operation -----------------------------------------


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("handle_header", [True, False])
def test_random_ops_check_after_each(seed: int, handle_header: bool) -> None:
    rng = random.Random(seed)
    pool = ZsPool(max_pages=2048, chain_size=rng.choice((4, 8, 16)), handle_header=handle_header)
    live: dict[int, bytes] = {}
    try:
        for _ in range(400):
            op = rng.choices(("malloc", "free", "read", "rewrite", "compact"),
                             weights=(50, 30, 10, 8, 2))[0]
            if op == "malloc" or not live:
                size = rng.choice((rng.randint(1, 64), rng.randint(1, PAGE_SIZE),
                                   rng.randint(3500, PAGE_SIZE)))
                h = pool.malloc(size)
                live[h] = rng.randbytes(size)
                pool.write(h, live[h])
            elif op == "free":
                h = rng.choice(sorted(live))
                pool.free(h)
                del live[h]
            elif op == "read":
                h = rng.choice(sorted(live))
                assert pool.read(h) == live[h]
            elif op == "rewrite":
                h = rng.choice(sorted(live))
                live[h] = rng.randbytes(len(live[h]))
                pool.write(h, live[h])
            else:
                pool.compact()
            pool._check()
        st = pool.stats()
        assert st.objects == len(live)
        assert st.object_bytes == sum(map(len, live.values()))
        assert st.total_pages == pool.arena.pages_in_use == sum(c.pages for c in st.classes)
        for h, d in live.items():
            assert pool.read(h) == d
    finally:
        pool.close()


# -- threads --------------------------------------------------------------------------


@pytest.mark.parametrize("lock", ["class", "pool"])
def test_lock_modes_under_threads(lock: str) -> None:
    pool = ZsPool(max_pages=8192, lock=lock)
    assert len(pool._locks) == (1 if lock == "pool" else len(pool.classes))
    errors: list[BaseException] = []
    stop = threading.Event()

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        live: dict[int, bytes] = {}
        try:
            for _ in range(1500):
                if len(live) < 40 or rng.random() < 0.5:
                    size = rng.choice((rng.randint(100, 300), rng.randint(1, PAGE_SIZE)))
                    h = pool.malloc(size)
                    data = rng.randbytes(size)
                    pool.write(h, data)
                    live[h] = data
                else:
                    h = rng.choice(list(live))
                    assert pool.read(h) == live.pop(h)
                    pool.free(h)
            for h, d in live.items():
                assert pool.read(h) == d
                pool.free(h)
        except BaseException as exc:  # reported in the main thread
            errors.append(exc)

    def compactor() -> None:
        try:
            while not stop.is_set():
                pool.compact()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(s,)) for s in range(4)]
    comp = threading.Thread(target=compactor)
    comp.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stop.set()
    comp.join()
    try:
        assert not errors, errors[0]
        pool._check()
        assert pool.total_pages() == 0
        assert pool.stats().objects == 0
    finally:
        pool.close()


# -- misuse and failures ------------------------------------------------------------------


def test_misuse_gets_named_errors(pool: ZsPool) -> None:
    h = pool.malloc(100)
    pool.write(h, b"x" * 100)
    pool.free(h)
    with pytest.raises(DoubleFreeError):
        pool.free(h)
    with pytest.raises(InvalidHandleError):
        pool.read(h)
    with pytest.raises(InvalidHandleError):
        pool.write(h, b"x" * 100)
    unmerged = pool.classes[0].index
    merged = next(i for i in range(255) if i not in {c.index for c in pool.classes})
    for bad in (0, -1, (999 << 8) | unmerged, (1 << 8) | merged, 255, True, 1.5, "1", None):
        with pytest.raises(InvalidHandleError):
            pool.read(bad)  # type: ignore[arg-type]
        with pytest.raises(InvalidHandleError):
            pool.free(bad)  # type: ignore[arg-type]
    h = pool.malloc(300)
    with pytest.raises(ObjectSizeError):
        pool.write(h, b"x" * 299)
    with pytest.raises(DataTypeError):
        pool.write(h, "x" * 300)  # type: ignore[arg-type]
    for bad_size in (0, -5, PAGE_SIZE + 1):
        with pytest.raises(ObjectSizeError):
            pool.malloc(bad_size)
    with pytest.raises(DataTypeError):
        pool.malloc(10.0)  # type: ignore[arg-type]
    pool._check()


@pytest.mark.parametrize("opts", [{"chain_size": 0}, {"chain_size": 17}, {"lock": "zspage"},
                                  {"bogus": 1}])
def test_bad_options(opts: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        ZsPool(max_pages=8, **opts)  # type: ignore[arg-type]


def test_exhaustion_mid_zspage_returns_pages() -> None:
    pool = ZsPool(max_pages=5)
    try:
        first = [pool.malloc(200) for _ in range(59)]  # one full 3-page zspage of class 208
        pool.malloc(PAGE_SIZE)  # a huge page: 4 pages in use
        with pytest.raises(PoolExhaustedError):
            pool.malloc(200)  # needs 3 more pages, only 1 is left
        assert pool.total_pages() == 4
        pool._check()
        pool.free(first[0])
        pool.malloc(200)  # the freed slot is reused
        pool._check()
    finally:
        pool.close()


def test_check_catches_corruption(pool: ZsPool) -> None:
    from backends.zsmalloc import H_INFO, H_WORDS, IDX_MASK, IDX_SHIFT, Z_INUSE_H

    h = pool.malloc(100)
    h2 = pool.malloc(100)
    a = pool.locate(h).parts[0][0]
    pool._check()
    header = bytes(pool.arena.buf[a - 8:a])
    pool.arena.buf[a - 8:a] = ((h2 << 1) | 1).to_bytes(8, "little")  # clobber the header
    with pytest.raises(InvariantError, match="header"):
        pool._check()
    pool.arena.buf[a - 8:a] = header
    pool._check()
    z = pool.locate(h).zspage
    pool._ZH[(z << 3) + Z_INUSE_H] += 1  # a zspage's inuse count
    with pytest.raises(InvariantError):
        pool._check()
    pool._ZH[(z << 3) + Z_INUSE_H] -= 1
    pool._check()
    hb = ((h2 >> IDX_SHIFT) & IDX_MASK) * H_WORDS
    pool._H[hb + H_INFO] ^= 1 << 13  # move h2's record to another slot
    with pytest.raises(InvariantError):
        pool._check()
    pool._H[hb + H_INFO] ^= 1 << 13
    pool._check()
    pool._S[pool._s_hfree] = 7  # a free-handle chain pointing at nothing
    with pytest.raises(InvariantError, match="free handle chain"):
        pool._check()


def test_bench_locks_runs_both_modes() -> None:
    # The `swapd bench locks` machinery on a tiny run: both modes, content verified inside,
    # and every page back in the arena (run_once checks it and raises otherwise).
    from swapd.bench.locks import WORKLOADS, classes_touched, run_once

    few, many = WORKLOADS
    assert classes_touched(few) <= 3 < 50 < classes_touched(many)
    for mode in ("class", "pool"):
        for w in WORKLOADS:
            assert run_once(mode, w, threads=3, ops=600, window=16, seed=1) > 0


# -- the state regions: read back by another process ------------------------------------

_READER = r"""
import json, sys, zlib
from backends.zsmalloc import ZsPool
fds = json.loads(sys.argv[1])
handles = json.loads(sys.argv[2])
pool = ZsPool.adopt(fds, writable=False)
pool._check()
out = {str(h): zlib.crc32(pool.read_verified(h)) for h in handles}
print(json.dumps({"objects": pool.stats().objects, "crc": out}))
pool.close()
"""


@pytest.mark.parametrize("handle_header", [True, False])
def test_fresh_process_reads_the_pool_from_its_fds(handle_header: bool) -> None:
    import json
    import os
    import subprocess
    import sys
    import zlib

    pool = ZsPool(max_pages=4096, handle_header=handle_header, lock="pool")
    try:
        rng = random.Random(21)
        live: dict[int, bytes] = {}
        for _ in range(600):
            size = rng.choice((rng.randint(1, 300), rng.randint(1, PAGE_SIZE)))
            h = pool.malloc(size)
            live[h] = rng.randbytes(size)
            pool.write(h, live[h])
        for h in rng.sample(sorted(live), 400):
            pool.free(h)
            del live[h]
        assert pool.compact() > 0  # objects moved: the reader must follow the records
        pool._check()
        fds = pool.state_fds()
        assert set(fds) == {"arena", "zsmalloc"}
        dups = {k: os.dup(fd) for k, fd in fds.items()}
        try:
            res = subprocess.run(
                [sys.executable, "-c", _READER, json.dumps(dups), json.dumps(sorted(live))],
                pass_fds=tuple(dups.values()), capture_output=True, text=True, timeout=120,
                check=False)
        finally:
            for fd in dups.values():
                os.close(fd)
        assert res.returncode == 0, res.stderr
        got = json.loads(res.stdout)
        assert got["objects"] == len(live)
        assert got["crc"] == {str(h): zlib.crc32(d) for h, d in live.items()}
    finally:
        pool.close()


def test_adopt_takes_over_and_continues() -> None:
    import os

    pool = ZsPool(max_pages=1024)
    rng = random.Random(3)
    live = {}
    for _ in range(200):
        size = rng.randint(1, PAGE_SIZE)
        h = pool.malloc(size)
        live[h] = rng.randbytes(size)
        pool.write(h, live[h])
    fds = {k: os.dup(fd) for k, fd in pool.state_fds().items()}
    pool.close()  # the first owner goes away; the memfds live on in the dups
    again = ZsPool.adopt(fds)
    try:
        again._check()
        for h, d in live.items():
            assert again.read_verified(h) == d
        for h in list(live)[:100]:
            again.free(h)
            del live[h]
        for _ in range(100):
            h = again.malloc(1000)
            live[h] = rng.randbytes(1000)
            again.write(h, live[h])
        again._check()
        for h, d in live.items():
            assert again.read(h) == d
    finally:
        again.close()


def test_torn_object_fails_its_checksum(pool: ZsPool) -> None:
    from swapd.errors import CorruptPageError

    h = pool.malloc(500)
    pool.write(h, b"\x5a" * 500)
    assert pool.read_verified(h) == b"\x5a" * 500
    a = pool.locate(h).parts[0][0]
    pool.arena.buf[a + 100] ^= 0xFF  # a half-finished write
    with pytest.raises(CorruptPageError, match="checksum"):
        pool.read_verified(h)


def test_adopt_rejects_a_wrong_region() -> None:
    import os

    from swapd.errors import NotAdoptableError
    from swapd.state import StateFormatError

    pool = ZsPool(max_pages=64)
    try:
        fds = pool.state_fds()
        with pytest.raises(NotAdoptableError):
            ZsPool.adopt({"arena": fds["arena"]})
        swapped = {"arena": os.dup(fds["zsmalloc"]), "zsmalloc": os.dup(fds["arena"])}
        with pytest.raises(StateFormatError, match="kind"):
            ZsPool.adopt(swapped)
        for fd in swapped.values():
            try:
                os.close(fd)
            except OSError:
                pass
    finally:
        pool.close()
