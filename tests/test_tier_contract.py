"""The Tier contract (swapd/layer/tier.py), run against every tier of the entry-point group
``swapd.tiers``: the shipped ones and any third-party tier installed beside them.

A tier is built with ``from_config(ctx, options)``; the options a tier needs in a test (the
address of a store the test started) come from ``TIER_OPTIONS`` fixtures below, every other
tier gets none.  Deterministic: pages from a seeded ``random.Random``.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from swapd.arena import PAGE_SIZE
from swapd.errors import ConfigError, TierFullError
from swapd.layer import EntryState, Tier
from swapd.layer.tier import TierContext
from swapd.plugins import TIERS_GROUP, available_tiers, discover, make_tier

TIERS = sorted(available_tiers())


def page(rng: random.Random, i: int) -> bytes:
    """A page that compresses (a repeated line) and is distinct per ``i``."""
    line = f"page {i} {rng.randrange(1 << 30)} ".encode()
    return (line * (PAGE_SIZE // len(line) + 1))[:PAGE_SIZE]


@pytest.fixture(params=TIERS)
def tier(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Tier]:
    name = str(request.param)
    options: dict[str, Any] = {}
    if name in _NEEDS:
        options = request.getfixturevalue(_NEEDS[name])
    ctx = TierContext(state_path=tmp_path, instance=f"contract-{name}", max_pages=4096,
                      disk_bytes=512 * PAGE_SIZE)
    t = make_tier(name, ctx, options)
    yield t
    t.close()


# tier name -> fixture giving its options (a store the test starts); others need none
_NEEDS: dict[str, str] = {"redis": "redis_tier_options"}


def test_every_shipped_tier_is_registered() -> None:
    infos = {i.name: i for i in discover(TIERS_GROUP)}
    for name in ("compressed", "disk"):
        assert infos[name].ok, infos[name].error


def test_store_load_round_trip(tier: Tier) -> None:
    rng = random.Random(1)
    pages = [page(rng, i) for i in range(40)]
    keys = tier.store_batch(pages)
    assert len(keys) == len(pages) and len(set(keys)) == len(keys)
    assert isinstance(tier.state, EntryState) and tier.name
    tier._check()
    for k, pg in zip(keys, pages):
        assert tier.load(k) == pg
    assert tier.load_batch(keys[5:15]) == pages[5:15]
    assert tier.used_bytes() > 0
    tier.free_batch(keys[:20])
    for k in keys[20:]:
        tier.free(k)
    tier._check()


def test_keys_are_reusable_after_free(tier: Tier) -> None:
    rng = random.Random(2)
    p0, p1, p2 = page(rng, 0), page(rng, 1), page(rng, 2)
    a = tier.store_batch([p0, p1])
    tier.free(a[0])
    b = tier.store_batch([p2])
    assert b[0] != a[1]  # a live key is never handed out twice
    assert tier.load(b[0]) == p2 and tier.load(a[1]) == p1
    tier.free_batch([a[1], b[0]])
    tier._check()


def test_full_tier_stores_a_prefix_or_refuses(tier: Tier) -> None:
    cap = tier.capacity_bytes()
    if cap is None:
        pytest.skip(f"tier {tier.name} has no capacity of its own")
    rng = random.Random(3)
    stored: list[int] = []
    for _ in range(cap // PAGE_SIZE + 8):
        try:  # random pages do not compress: each takes at least a page in any tier
            got = tier.store_batch([rng.randbytes(PAGE_SIZE)])
        except TierFullError:
            break
        assert len(got) <= 1
        if not got:
            break
        stored += got
    else:
        pytest.fail(f"tier {tier.name} took more than its capacity {cap}")
    assert tier.used_bytes() <= cap
    tier.free_batch(stored)
    assert tier.store_batch([rng.randbytes(PAGE_SIZE)])  # room again


def test_concurrent_loads_and_stores(tier: Tier) -> None:
    rng = random.Random(4)
    pages = [page(rng, i) for i in range(64)]
    keys = tier.store_batch(pages)
    errors: list[BaseException] = []

    def reader(lo: int) -> None:
        try:
            for _ in range(3):
                for k, pg in zip(keys[lo:lo + 16], pages[lo:lo + 16]):
                    assert tier.load(k) == pg
        except BaseException as exc:  # reported below
            errors.append(exc)

    def writer() -> None:
        try:
            r = random.Random(5)
            for i in range(20):
                more = tier.store_batch([page(r, 100 + i)])
                tier.free_batch(more)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=reader, args=(lo,)) for lo in range(0, 64, 16)]
    threads.append(threading.Thread(target=writer))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    tier.free_batch(keys)
    tier._check()


def test_bad_option_is_refused_by_name(tmp_path: Path) -> None:
    ctx = TierContext(state_path=tmp_path)
    for name in TIERS:
        with pytest.raises(ConfigError, match="no_such_option"):
            make_tier(name, ctx, {"no_such_option": 1})
