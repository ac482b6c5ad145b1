"""Seeded random-operation stress and property tests, over every installed backend.

* ``test_stress``: weighted random malloc/write/read/free/compact (and a little misuse)
  against a shadow dict; ``_check()`` every 64 operations and at the end.  All
  randomness flows from one ``random.Random(seed)``: a failure names its seed, and
  ``SWAPD_STRESS_SEED=S pytest tests/test_backend_stress.py -k stress`` replays it.
* ``test_threads``: several threads at once, each verifying its own objects.
* ``test_state_machine``: a hypothesis RuleBasedStateMachine (derandomized, so the
  default run is deterministic).
Longer variants are marked ``slow``.
"""

from __future__ import annotations

import os
import random
import threading

import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, settings
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    invariant,
    rule,
    run_state_machine_as_test,
)

from swapd.arena import PAGE_SIZE
from swapd.backend import Backend
from swapd.errors import DoubleFreeError, InvalidHandleError, PoolExhaustedError
from swapd.testing import BackendVariant

# operation -> weight
WEIGHTS = {"malloc": 34, "write": 14, "read": 22, "free": 26, "compact": 2, "misuse": 2}


def _size(rng: random.Random, max_size: int) -> int:
    """Sizes shaped like compressed pages: mostly 0.5-2 KiB, some tiny, some near max."""
    r = rng.random()
    if r < 0.15:
        return rng.randint(1, 256)
    if r < 0.85:
        return min(max_size, max(1, int(rng.gauss(1500, 500))))
    return rng.randint(max_size // 2, max_size)


def stress(pool: Backend, seed: int, ops: int, check_every: int = 64) -> dict[str, int]:
    """Run ``ops`` weighted random operations on ``pool``; return counts per operation."""
    rng = random.Random(seed)
    shadow: dict[int, bytes] = {}
    freed: list[int] = []
    names = list(WEIGHTS)
    weights = list(WEIGHTS.values())
    counts = dict.fromkeys([*names, "exhausted"], 0)
    for step in range(ops):
        op = rng.choices(names, weights)[0]
        if op in ("write", "read", "free") and not shadow:
            op = "malloc"
        counts[op] += 1
        if op == "malloc":
            data = rng.randbytes(_size(rng, pool.max_size))
            try:
                h = pool.malloc(len(data))
            except PoolExhaustedError:
                counts["exhausted"] += 1
                continue
            assert h not in shadow, f"step {step}: live handle {h} returned again"
            pool.write(h, data)
            shadow[h] = data
            if h in freed:
                freed.remove(h)  # a backend may reuse a freed handle's value
        elif op == "write":
            h = rng.choice(list(shadow))
            data = rng.randbytes(len(shadow[h]))
            pool.write(h, data)
            shadow[h] = data
        elif op == "read":
            h = rng.choice(list(shadow))
            assert bytes(pool.read(h)) == shadow[h], f"step {step}: object {h} corrupted"
        elif op == "free":
            h = rng.choice(list(shadow))
            pool.free(h)
            del shadow[h]
            freed.append(h)
            del freed[:-32]
        elif op == "compact":
            pages = pool.total_pages()
            n = pool.compact()
            assert pool.total_pages() == pages - n
        elif op == "misuse" and freed:
            h = freed[-1]
            with pytest.raises(DoubleFreeError):
                pool.free(h)
            with pytest.raises(InvalidHandleError):
                pool.read(h)
        if step % check_every == 0:
            pool._check()
            s = pool.stats()
            assert s.objects == len(shadow), f"step {step}"
            assert s.object_bytes == sum(map(len, shadow.values())), f"step {step}"
    pool._check()
    for h, data in shadow.items():
        assert bytes(pool.read(h)) == data, f"end: object {h} corrupted"
    s = pool.stats()
    assert s.objects == len(shadow)
    assert s.object_bytes == sum(map(len, shadow.values()))
    arena = pool.arena
    assert arena.resident_pages() == pool.total_pages() + arena.cached_pages
    arena.trim()
    assert arena.resident_pages() == pool.total_pages()
    for h in list(shadow):
        pool.free(h)
    pool._check()
    assert pool.total_pages() == 0
    return counts


def _seeds(default: list[int]) -> list[int]:
    env = os.environ.get("SWAPD_STRESS_SEED")
    return [int(env)] if env else default


def _run_stress(variant: BackendVariant, seed: int, ops: int, max_pages: int) -> None:
    pool = variant.make(max_pages=max_pages)
    try:
        stress(pool, seed, ops)
    except BaseException as exc:
        exc.add_note(f"replay: SWAPD_STRESS_SEED={seed} backend={variant.id} ops={ops} "
                     f"max_pages={max_pages}")
        print(f"stress failed: backend {variant.id}, seed {seed}")
        raise
    finally:
        pool.close()


@pytest.mark.parametrize("seed", _seeds([1, 2]))
def test_stress(backend_variant: BackendVariant, seed: int) -> None:
    _run_stress(backend_variant, seed, ops=1500, max_pages=1 << 14)


@pytest.mark.parametrize("seed", _seeds([3]))
def test_stress_small_arena(backend_variant: BackendVariant, seed: int) -> None:
    """A 48-page arena: malloc runs into PoolExhaustedError all the time."""
    _run_stress(backend_variant, seed, ops=1500, max_pages=48)


@pytest.mark.slow
@pytest.mark.parametrize("seed", _seeds(list(range(100, 106))))
def test_stress_long(backend_variant: BackendVariant, seed: int) -> None:
    _run_stress(backend_variant, seed, ops=30000, max_pages=1 << 16)


def _thread_worker(pool: Backend, seed: int, ops: int, errors: list[BaseException]) -> None:
    rng = random.Random(seed)
    mine: dict[int, bytes] = {}
    try:
        for _ in range(ops):
            r = rng.random()
            if r < 0.45 or not mine:
                data = rng.randbytes(_size(rng, pool.max_size))
                h = pool.malloc(len(data))
                pool.write(h, data)
                mine[h] = data
            elif r < 0.75:
                h = rng.choice(list(mine))
                assert bytes(pool.read(h)) == mine[h], f"thread seed {seed}: {h} corrupted"
            elif r < 0.98:
                h = rng.choice(list(mine))
                pool.free(h)
                del mine[h]
            else:
                pool.compact()
        for h, data in mine.items():
            assert bytes(pool.read(h)) == data
            pool.free(h)
    except BaseException as exc:  # reported by the main thread
        errors.append(exc)


@pytest.mark.parametrize("threads", [4])
def test_threads(backend_variant: BackendVariant, threads: int) -> None:
    pool = backend_variant.make(max_pages=1 << 15)
    try:
        errors: list[BaseException] = []
        ts = [threading.Thread(target=_thread_worker, args=(pool, 1000 + i, 600, errors))
              for i in range(threads)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        if errors:
            raise errors[0]
        pool._check()
        assert pool.stats().objects == 0
        assert pool.total_pages() == 0
    finally:
        pool.close()


# -- hypothesis: a state machine over the contract ------------------------------------------


class PoolMachine(RuleBasedStateMachine):
    """The contract as rules: every rule keeps the pool equal to a model dict."""

    variant: BackendVariant  # set by the test before the machine runs
    handles = Bundle("handles")
    freed = Bundle("freed")

    def __init__(self) -> None:
        super().__init__()
        self.pool = self.variant.make(max_pages=256)
        self.model: dict[int, bytes] = {}

    def teardown(self) -> None:
        self.pool.close()

    @rule(target=handles, size=st.integers(1, PAGE_SIZE), fill=st.binary(min_size=1, max_size=8))
    def malloc(self, size: int, fill: bytes) -> int:
        size = min(size, self.pool.max_size)
        data = (fill * (size // len(fill) + 1))[:size]
        try:
            h = self.pool.malloc(size)
        except PoolExhaustedError:
            return -1  # nothing stored; rules skip negative handles
        assert h not in self.model
        self.pool.write(h, data)
        self.model[h] = data
        return h

    @rule(h=handles, fill=st.binary(min_size=1, max_size=8))
    def write(self, h: int, fill: bytes) -> None:
        if h not in self.model:
            return
        size = len(self.model[h])
        data = (fill * (size // len(fill) + 1))[:size]
        self.pool.write(h, data)
        self.model[h] = data

    @rule(h=handles)
    def read(self, h: int) -> None:
        if h in self.model:
            assert bytes(self.pool.read(h)) == self.model[h]

    @rule(target=freed, h=consumes(handles))
    def free(self, h: int) -> int:
        if h not in self.model:
            return -1
        self.pool.free(h)
        del self.model[h]
        return h

    @rule(h=freed)
    def double_free(self, h: int) -> None:
        if h < 0 or h in self.model:  # skipped, or the value was reused by a later malloc
            return
        with pytest.raises(DoubleFreeError):
            self.pool.free(h)

    @rule()
    def compact(self) -> None:
        pages = self.pool.total_pages()
        freed = self.pool.compact()
        assert self.pool.total_pages() == pages - freed

    @invariant()
    def consistent(self) -> None:
        self.pool._check()
        s = self.pool.stats()
        assert s.objects == len(self.model)
        assert s.object_bytes == sum(map(len, self.model.values()))
        assert s.total_pages == self.pool.total_pages() <= 256


def _machine_test(variant: BackendVariant, examples: int, steps: int) -> None:
    machine = type(f"PoolMachine_{variant.id}", (PoolMachine,), {"variant": variant})
    run_state_machine_as_test(machine, settings=settings(
        max_examples=examples, stateful_step_count=steps, deadline=None, derandomize=True,
        database=None, suppress_health_check=[HealthCheck.too_slow]))


def test_state_machine(backend_variant: BackendVariant) -> None:
    _machine_test(backend_variant, examples=25, steps=40)


@pytest.mark.slow
def test_state_machine_long(backend_variant: BackendVariant) -> None:
    _machine_test(backend_variant, examples=300, steps=100)
