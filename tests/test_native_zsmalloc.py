"""The compiled zsmalloc (swapd/_native/_core.c: ZsFast, Mutex) against the Python reference.

A reference pool and a compiled pool get the same seeded operations -- malloc, write, read,
free, compaction -- and their state regions and arenas must stay byte-identical; writers in
threads (the compiled batch calls release the GIL) must leave a pool that passes ``_check``
with every object intact; the Mutex behaves like ``threading.Lock``.
"""

from __future__ import annotations

import random
import threading
import zlib
from array import array
from typing import Any

import pytest

from swapd._native.zsmalloc import fast_of
from swapd.arena import PAGE_SHIFT, PAGE_SIZE
from swapd.errors import DoubleFreeError, InvalidHandleError, ObjectSizeError
from swapd.plugins import make_backend
from tests.layer_state import native_or_skip, running


def _pool(which: str, **opts: Any) -> Any:
    with running(which):
        pool = make_backend("zsmalloc", **opts)
    if which == "compiled" and fast_of(pool) is None:
        pool.close()
        pytest.skip("this zsmalloc keeps no state region: it has no compiled fast paths")
    return pool


def _bytes(pool: Any) -> tuple[bytes, bytes]:
    st = pool.state
    return bytes(st._mm[:st._size]), bytes(pool.arena.buf[:pool.arena._top << PAGE_SHIFT])


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("header", [True, False])
def test_pool_differential(seed: int, header: bool) -> None:
    native_or_skip()
    rng = random.Random(seed)
    chain = rng.choice((4, 8, 16))
    pools = [_pool(w, max_pages=2048, chain_size=chain, handle_header=header)
             for w in ("python", "compiled")]
    live: list[tuple[int, bytes]] = []
    try:
        for step in range(1500):
            op = rng.choices(("malloc", "free", "read", "rewrite", "compact", "bad"),
                             (50, 30, 10, 6, 2, 2))[0]
            if op == "malloc" or not live:
                size = rng.choice((rng.randint(1, 64), rng.randint(1, PAGE_SIZE),
                                   rng.randint(3500, PAGE_SIZE)))
                data = rng.randbytes(size)
                hs = [p.malloc(size) for p in pools]
                assert hs[0] == hs[1], (seed, step)
                for p in pools:
                    p.write(hs[0], data)
                live.append((hs[0], data))
            elif op == "free":
                h, _ = live.pop(rng.randrange(len(live)))
                for p in pools:
                    p.free(h)
            elif op == "read":
                h, data = rng.choice(live)
                assert [p.read(h) for p in pools] == [data, data]
                assert [p.checksum(h) for p in pools] == [zlib.crc32(data)] * 2
            elif op == "rewrite":
                k = rng.randrange(len(live))
                h, data = live[k]
                data = rng.randbytes(len(data))
                live[k] = (h, data)
                for p in pools:
                    p.write(h, data)
            elif op == "compact":
                assert pools[0].compact() == pools[1].compact()
            else:  # misuse gets the same named error from both
                h, _ = rng.choice(live)
                for p in pools:
                    with pytest.raises(InvalidHandleError):
                        p.read(h ^ (1 << 36))
                    with pytest.raises(ObjectSizeError):
                        p.write(h, b"x" * (p.size_of(h) + 1))
            if step % 100 == 0:
                assert _bytes(pools[0]) == _bytes(pools[1]), (seed, step)
        for p in pools:
            p._check()
        assert _bytes(pools[0]) == _bytes(pools[1])
        h, _ = live.pop()
        for p in pools:
            p.free(h)
            with pytest.raises(DoubleFreeError):
                p.free(h)
    finally:
        for p in pools:
            p.close()


@pytest.mark.parametrize("lock", ["class", "pool"])
def test_writers_outside_the_gil(lock: str) -> None:
    """Threads store and free with the compiled batch calls (GIL released, locks taken in C)
    while another thread reads, frees and compacts through the pool's own methods."""
    native_or_skip()
    pool = _pool("compiled", max_pages=8192, lock=lock)
    fast = fast_of(pool)
    errors: list[BaseException] = []

    def writer(seed: int) -> None:
        try:
            rng = random.Random(seed)
            for _ in range(6):
                objs = [rng.randbytes(rng.randint(20, 3000)) for _ in range(300)]
                src = bytearray(PAGE_SIZE * len(objs))
                for j, o in enumerate(objs):
                    src[j * PAGE_SIZE:j * PAGE_SIZE + len(o)] = o
                lens = array("i", [len(o) for o in objs])
                hs = array("Q", bytes(8 * len(objs)))
                j = 0
                while j < len(objs):
                    j = fast.store_objects(src, lens, hs, j)
                    if j < len(objs):
                        h = pool.malloc(lens[j])
                        pool.write(h, objs[j])
                        hs[j] = h
                        j += 1
                out = bytearray(PAGE_SIZE)
                for h, o in zip(hs, objs):
                    assert pool.read(h) == o
                    assert pool.checksum(h) == zlib.crc32(o)
                del out
                j = 0
                while j < len(objs):
                    j = fast.free_objects(hs, j)
                    if j < len(objs):
                        pool.free(hs[j])
                        j += 1
        except BaseException as exc:
            errors.append(exc)

    stop = threading.Event()

    def compactor() -> None:
        try:
            while not stop.is_set():
                pool.compact()
        except BaseException as exc:
            errors.append(exc)

    ts = [threading.Thread(target=writer, args=(k,)) for k in range(4)]
    c = threading.Thread(target=compactor)
    try:
        c.start()
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        stop.set()
        c.join()
        assert not errors, errors[0]
        pool._check()
        assert pool.stats().objects == 0 and pool.total_pages() == 0
    finally:
        stop.set()
        pool.close()


def test_mutex_is_a_lock() -> None:
    nat = native_or_skip()
    m = nat.Mutex()
    assert not m.locked()
    assert m.acquire() is True and m.locked()
    assert m.acquire(blocking=False) is False
    assert m.acquire(timeout=0.01) is False
    m.release()
    with pytest.raises(RuntimeError, match="unlocked"):
        m.release()
    with m:
        assert m.locked()
    assert not m.locked()
    st = m.stats()
    assert st["acquires"] == 2 and st["contended"] == 0

    held = threading.Event()
    go = threading.Event()

    def holder() -> None:
        with m:
            held.set()
            go.wait(5)

    t = threading.Thread(target=holder)
    t.start()
    held.wait(5)
    waiter = threading.Thread(target=lambda: (m.acquire(), m.release()))
    waiter.start()
    go.set()  # the waiter blocked (GIL released) until the holder let go
    t.join()
    waiter.join()
    assert m.stats()["acquires"] == 4
