"""The allocator backend contract suite, shipped with swapd (``swapd.testing``).

Run against any installed backend, from any directory, without a swapd source tree::

    pytest --swapd-backend NAME            # a backend registered in swapd.backends
    pytest --swapd-backend NAME:opt=value  # with backend options
    pytest --swapd-backend pkg.mod:Class   # a class that is not registered (yet)

(the ``swapd`` pytest plugin, :mod:`swapd.testing.plugin`, collects this module when
``--swapd-backend`` is given and no test paths are).  Every test calls ``_check()`` after
every operation and compares the pool against a shadow dict of what it should hold, so a
backend passes only if its content, its accounting and its real memory (``mincore`` of the
arena) all agree with what was stored.  docs/writing-a-backend.md walks through it.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest

from swapd.arena import PAGE_SIZE
from swapd.backend import Backend, PoolStats
from swapd.errors import (
    ConfigError,
    DataTypeError,
    DoubleFreeError,
    InvalidHandleError,
    ObjectSizeError,
    PoolExhaustedError,
)
from swapd.testing import BackendVariant

Shadow = dict[int, bytes]


def _pattern(rng: random.Random, size: int) -> bytes:
    """Distinct, non-trivial content: random bytes (so overlap or shifts show)."""
    return rng.randbytes(size)


def store(pool: Backend, shadow: Shadow, data: bytes) -> int:
    """malloc + write + _check; records the object in ``shadow``."""
    h = pool.malloc(len(data))
    assert isinstance(h, int) and not isinstance(h, bool) and h > 0, f"handle {h!r}"
    assert h not in shadow, f"handle {h} returned twice while live"
    pool._check()
    pool.write(h, data)
    pool._check()
    shadow[h] = data
    return h


def release(pool: Backend, shadow: Shadow, h: int) -> None:
    """free + _check; forgets the object."""
    pool.free(h)
    del shadow[h]
    pool._check()


def verify(pool: Backend, shadow: Shadow) -> None:
    """Every object reads back as written, and the accounting equals the shadow."""
    for h, data in shadow.items():
        got = pool.read(h)
        assert bytes(got) == data, f"{pool.name}: object {h} ({len(data)} B) corrupted"
    st = pool.stats()
    assert isinstance(st, PoolStats)
    assert st.objects == len(shadow)
    assert st.object_bytes == sum(len(d) for d in shadow.values())
    assert st.total_pages == pool.total_pages()
    assert st.pool_bytes == pool.total_pages() * PAGE_SIZE
    # The pool cannot hold more bytes than its pages.
    assert st.object_bytes <= pool.total_pages() * PAGE_SIZE
    pool._check()


def assert_resident(pool: Backend) -> None:
    """The arena's real resident pages are exactly what the pool says it holds, plus the
    arena's bounded cache of freed pages; once the cache is trimmed, exactly the pool."""
    arena = pool.arena
    assert arena.cached_pages <= arena.cache_pages
    assert arena.resident_pages() == pool.total_pages() + arena.cached_pages, (
        f"{pool.name}: mincore says {arena.resident_pages()} pages resident, "
        f"total_pages() = {pool.total_pages()}, cached = {arena.cached_pages}")
    arena.trim()
    assert arena.cached_pages == 0
    assert arena.resident_pages() == pool.total_pages(), (
        f"{pool.name}: after trim, mincore says {arena.resident_pages()} pages resident, "
        f"total_pages() = {pool.total_pages()}")


# -- identity ---------------------------------------------------------------------------------


def test_identity(swapd_pool: Backend) -> None:
    """The contract: identity."""
    pool = swapd_pool
    assert isinstance(pool, Backend)
    assert isinstance(pool.name, str) and pool.name
    assert isinstance(pool.description, str) and pool.description
    assert isinstance(pool.version, str) and pool.version
    assert 0 < pool.max_size <= PAGE_SIZE
    assert pool.total_pages() == 0
    st = pool.stats()
    assert (st.total_pages, st.objects, st.object_bytes, st.pages_compacted) == (0, 0, 0, 0)
    with pytest.raises(AttributeError):
        st.objects = 1  # type: ignore[misc]  # a frozen snapshot
    pool._check()


def test_unknown_option_is_a_config_error(swapd_backend: BackendVariant) -> None:
    """The contract: unknown option is a config error."""
    with pytest.raises(ConfigError):
        swapd_backend.make(max_pages=8, no_such_option_xyz=1)


# -- round trips, overlap, accounting --------------------------------------------------------


def test_round_trip_random_sizes(swapd_pool: Backend) -> None:
    """The contract: round trip random sizes."""
    pool = swapd_pool
    rng = random.Random(1)
    shadow: Shadow = {}
    sizes = [1, 2, 15, 16, 17, 63, 64, 65, pool.max_size - 1, pool.max_size]
    sizes += [rng.randint(1, pool.max_size) for _ in range(150)]
    for size in sizes:
        data = _pattern(rng, size)
        h = store(pool, shadow, data)
        assert bytes(pool.read(h)) == data
        assert pool.size_of(h) == size
    verify(pool, shadow)
    for h in list(shadow):
        release(pool, shadow, h)
    verify(pool, shadow)
    assert pool.total_pages() == 0


def test_write_accepts_every_bytes_like(swapd_pool: Backend) -> None:
    """The contract: write accepts every bytes like."""
    pool = swapd_pool
    shadow: Shadow = {}
    h = store(pool, shadow, b"a" * 100)
    for data in (bytearray(b"b" * 100), memoryview(b"c" * 100), memoryview(b"d" * 100)[0:100]):
        pool.write(h, data)
        pool._check()
        assert bytes(pool.read(h)) == bytes(data)
    # A multi-byte memoryview of the right byte length is accepted as bytes.
    import array

    arr = array.array("I", range(25))
    pool.write(h, memoryview(arr))
    assert bytes(pool.read(h)) == arr.tobytes()


def test_objects_never_overlap(swapd_pool: Backend) -> None:
    """The contract: objects never overlap."""
    pool = swapd_pool
    rng = random.Random(2)
    shadow: Shadow = {}
    # Many objects of mixed sizes, small ones in bulk so that pages are shared.
    for _ in range(300):
        size = rng.choice((rng.randint(1, 128), rng.randint(100, 1500),
                           rng.randint(1, pool.max_size)))
        store(pool, shadow, _pattern(rng, size))
    verify(pool, shadow)
    # Rewrite each object with a new pattern, one at a time, and check all others each
    # time for a sample: a write that spills into a neighbour shows up at once.
    handles = list(shadow)
    for h in rng.sample(handles, 15):
        data = _pattern(rng, len(shadow[h]))
        pool.write(h, data)
        shadow[h] = data
        pool._check()
        verify(pool, shadow)
    # Free half, refill the holes, check again.
    for h in rng.sample(handles, len(handles) // 2):
        release(pool, shadow, h)
    for _ in range(150):
        store(pool, shadow, _pattern(rng, rng.randint(1, pool.max_size)))
    verify(pool, shadow)


def test_accounting_equals_what_is_stored(swapd_pool: Backend) -> None:
    """The contract: accounting equals what is stored."""
    pool = swapd_pool
    rng = random.Random(3)
    shadow: Shadow = {}
    for step in range(400):
        if shadow and rng.random() < 0.4:
            release(pool, shadow, rng.choice(list(shadow)))
        else:
            store(pool, shadow, _pattern(rng, rng.randint(1, pool.max_size)))
        st = pool.stats()
        assert st.objects == len(shadow), step
        assert st.object_bytes == sum(map(len, shadow.values())), step
        assert st.total_pages == pool.total_pages(), step
    verify(pool, shadow)


def test_resident_memory_equals_total_pages(swapd_pool: Backend) -> None:
    """The contract: resident memory equals total pages."""
    pool = swapd_pool
    rng = random.Random(4)
    shadow: Shadow = {}
    for _ in range(300):
        store(pool, shadow, _pattern(rng, rng.randint(1, pool.max_size)))
    assert pool.total_pages() > 0
    assert_resident(pool)
    for h in rng.sample(list(shadow), 200):
        release(pool, shadow, h)
    assert_resident(pool)
    pool.compact()
    pool._check()
    assert_resident(pool)
    verify(pool, shadow)
    for h in list(shadow):
        release(pool, shadow, h)
    assert pool.total_pages() == 0
    assert_resident(pool)


# -- exhaustion ---------------------------------------------------------------------------------


@pytest.mark.parametrize("sizes", ["large", "mixed"])
def test_exhaustion_then_recovery(swapd_backend: BackendVariant, sizes: str) -> None:
    """The contract: exhaustion then recovery."""
    max_pages = 16
    pool = swapd_backend.make(max_pages=max_pages)
    try:
        rng = random.Random(5)
        shadow: Shadow = {}

        def pick() -> int:
            if sizes == "large":
                return int(pool.max_size)
            return rng.randint(64, pool.max_size)

        # At most max_pages * 4096 / 64 objects fit, so the loop is bounded.
        failed = 0
        with pytest.raises(PoolExhaustedError):
            for _ in range(max_pages * PAGE_SIZE // 64 + 1):
                failed = pick()
                store(pool, shadow, _pattern(rng, failed))
        pool._check()
        assert pool.total_pages() <= max_pages
        assert shadow, "a 16-page pool could not store a single object"
        verify(pool, shadow)
        assert_resident(pool)
        before = pool.stats()
        # A failed malloc leaves nothing behind, however often it is retried.
        for _ in range(3):
            with pytest.raises(PoolExhaustedError):
                pool.malloc(failed)
        assert pool.stats() == before
        verify(pool, shadow)
        # Freeing makes room again: the pool is usable after exhaustion.
        for h in rng.sample(list(shadow), max(1, len(shadow) // 2)):
            release(pool, shadow, h)
        for _ in range(3):
            store(pool, shadow, _pattern(rng, rng.randint(1, 64)))
        store(pool, shadow, _pattern(rng, pool.max_size))
        verify(pool, shadow)
        for h in list(shadow):
            release(pool, shadow, h)
        assert pool.total_pages() == 0
        assert_resident(pool)
    finally:
        pool.close()


# -- misuse ---------------------------------------------------------------------------------------


@pytest.fixture
def populated(swapd_pool: Backend) -> tuple[Backend, Shadow]:
    """A pool holding 60 objects of mixed sizes, and its shadow."""
    pool = swapd_pool
    rng = random.Random(6)
    shadow: Shadow = {}
    for _ in range(60):
        store(pool, shadow, _pattern(rng, rng.randint(1, pool.max_size)))
    return pool, shadow


def _intact(pool: Backend, shadow: Shadow, before: PoolStats) -> None:
    assert pool.stats() == before, "misuse changed the pool's accounting"
    verify(pool, shadow)


def _misuse(pool: Backend, shadow: Shadow, exc: type[BaseException],
            call: Callable[[], object]) -> None:
    before = pool.stats()
    with pytest.raises(exc):
        call()
    _intact(pool, shadow, before)


NEVER_ISSUED = (0, -1, (1 << 62) + 12345)


@pytest.mark.parametrize("handle", NEVER_ISSUED)
def test_unknown_handle(populated: tuple[Backend, Shadow], handle: int) -> None:
    """The contract: unknown handle."""
    pool, shadow = populated
    assert handle not in shadow
    _misuse(pool, shadow, InvalidHandleError, lambda: pool.read(handle))
    _misuse(pool, shadow, InvalidHandleError, lambda: pool.write(handle, b"x"))
    _misuse(pool, shadow, InvalidHandleError, lambda: pool.free(handle))


def test_freed_handle(populated: tuple[Backend, Shadow]) -> None:
    """The contract: freed handle."""
    pool, shadow = populated
    h = next(iter(shadow))
    size = len(shadow[h])
    release(pool, shadow, h)
    _misuse(pool, shadow, InvalidHandleError, lambda: pool.read(h))
    _misuse(pool, shadow, InvalidHandleError, lambda: pool.write(h, bytes(size)))


def test_double_free(populated: tuple[Backend, Shadow]) -> None:
    """The contract: double free."""
    pool, shadow = populated
    h = list(shadow)[7]
    release(pool, shadow, h)
    _misuse(pool, shadow, DoubleFreeError, lambda: pool.free(h))
    # Still a double free the second time, and still intact.
    _misuse(pool, shadow, DoubleFreeError, lambda: pool.free(h))


@pytest.mark.parametrize("size", [0, -1, -4096])
def test_bad_size(populated: tuple[Backend, Shadow], size: int) -> None:
    """The contract: bad size."""
    pool, shadow = populated
    _misuse(pool, shadow, ObjectSizeError, lambda: pool.malloc(size))


def test_size_above_max(populated: tuple[Backend, Shadow]) -> None:
    """The contract: size above max."""
    pool, shadow = populated
    for size in (pool.max_size + 1, PAGE_SIZE + 1, 1 << 20):
        _misuse(pool, shadow, ObjectSizeError, lambda s=size: pool.malloc(s))  # type: ignore[misc]


@pytest.mark.parametrize("data", ["a string", 12, None, [1, 2, 3], 3.5])
def test_wrong_type_of_data(populated: tuple[Backend, Shadow], data: object) -> None:
    """The contract: wrong type of data."""
    pool, shadow = populated
    h = next(iter(shadow))
    _misuse(pool, shadow, DataTypeError, lambda: pool.write(h, data))  # type: ignore[arg-type]


@pytest.mark.parametrize("delta", [-1, 1, 4096])
def test_wrong_length(populated: tuple[Backend, Shadow], delta: int) -> None:
    """The contract: wrong length."""
    pool, shadow = populated
    h = next(h for h, d in shadow.items() if len(d) > 1)
    n = len(shadow[h]) + delta
    _misuse(pool, shadow, ObjectSizeError, lambda: pool.write(h, b"\xee" * max(n, 0)))


def test_empty_write_to_sized_object(populated: tuple[Backend, Shadow]) -> None:
    """The contract: empty write to sized object."""
    pool, shadow = populated
    h = next(iter(shadow))
    _misuse(pool, shadow, ObjectSizeError, lambda: pool.write(h, b""))


# -- compaction -----------------------------------------------------------------------------------


def test_compact_keeps_content(swapd_pool: Backend) -> None:
    """The contract: compact keeps content."""
    pool = swapd_pool
    rng = random.Random(7)
    shadow: Shadow = {}
    for _ in range(360):
        store(pool, shadow, _pattern(rng, rng.randint(1, 1200)))
    # Free 80% at random: many sparse pages.
    for h in rng.sample(list(shadow), 288):
        release(pool, shadow, h)
    before = pool.stats()
    pages = pool.total_pages()
    freed = pool.compact()
    pool._check()
    assert isinstance(freed, int) and freed >= 0
    assert pool.total_pages() == pages - freed
    assert pool.stats().pages_compacted == before.pages_compacted + freed
    verify(pool, shadow)
    assert_resident(pool)
    # A second compaction has (almost) nothing left to do and changes no content.
    pool.compact()
    verify(pool, shadow)
    # Handles survive compaction for every operation.
    for h in list(shadow)[:30]:
        data = _pattern(rng, len(shadow[h]))
        pool.write(h, data)
        shadow[h] = data
    for h in list(shadow)[30:60]:
        release(pool, shadow, h)
    for _ in range(60):
        store(pool, shadow, _pattern(rng, rng.randint(1, pool.max_size)))
    verify(pool, shadow)
    for h in list(shadow):
        release(pool, shadow, h)
    assert pool.total_pages() == 0


def test_compact_on_empty_pool(swapd_pool: Backend) -> None:
    """The contract: compact on empty pool."""
    pool = swapd_pool
    assert pool.compact() == 0
    pool._check()
    assert pool.total_pages() == 0


# -- the state layout: another process reads the pool from its fds ------------------------------

_READER = r"""
import importlib, json, sys, zlib
mod, qual, fds, handles = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), json.loads(sys.argv[4])
cls = getattr(importlib.import_module(mod), qual)
pool = cls.adopt(fds, writable=False)
pool._check()
print(json.dumps({"objects": pool.stats().objects,
                  "crc": {str(h): zlib.crc32(pool.read_verified(h)) for h in handles}}))
pool.close()
"""


def test_another_process_reads_the_pool_from_its_fds(swapd_pool: Backend) -> None:
    """The contract: a backend with the array layout (``uses_state_layout``) can be adopted
    read-only by another process from ``state_fds()`` and serves every object, checksum
    verified; any other backend refuses ``adopt`` with NotAdoptableError."""
    pool = swapd_pool
    import json
    import os
    import subprocess
    import sys
    import zlib

    from swapd.errors import NotAdoptableError

    if not pool.uses_state_layout:
        with pytest.raises(NotAdoptableError):
            type(pool).adopt(pool.state_fds())
        return
    rng = random.Random(8)
    shadow: Shadow = {}
    for _ in range(300):
        store(pool, shadow, _pattern(rng, rng.randint(1, pool.max_size)))
    for h in rng.sample(list(shadow), 200):
        release(pool, shadow, h)
    pool.compact()
    verify(pool, shadow)
    dups = {k: os.dup(fd) for k, fd in pool.state_fds().items()}
    try:
        res = subprocess.run(
            [sys.executable, "-c", _READER, type(pool).__module__, type(pool).__qualname__,
             json.dumps(dups), json.dumps(sorted(shadow))],
            pass_fds=tuple(dups.values()), capture_output=True, text=True, timeout=300,
            check=False)
    finally:
        for fd in dups.values():
            os.close(fd)
    assert res.returncode == 0, res.stderr
    got = json.loads(res.stdout)
    assert got["objects"] == len(shadow)
    assert got["crc"] == {str(h): zlib.crc32(d) for h, d in shadow.items()}


def test_checksums_follow_writes(swapd_pool: Backend) -> None:
    """The contract: ``checksum`` is None or the CRC-32 of the bytes last written, and
    ``read_verified`` returns them."""
    pool = swapd_pool
    import zlib

    shadow: Shadow = {}
    h = store(pool, shadow, b"\x01" * 300)
    want = pool.checksum(h)
    assert want is None or want == zlib.crc32(b"\x01" * 300)
    pool.write(h, b"\x02" * 300)
    assert pool.checksum(h) in (None, zlib.crc32(b"\x02" * 300))
    assert pool.read_verified(h) == b"\x02" * 300
    release(pool, shadow, h)
    with pytest.raises(InvalidHandleError):
        pool.checksum(h)


# ``from swapd.testing.backend_contract import *`` brings the tests and their fixture
__all__ = [n for n in list(globals()) if n.startswith("test_")] + ["populated"]
