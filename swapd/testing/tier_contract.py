"""The Tier contract (swapd/layer/tier.py), as a suite any tier can run.

Shipped in the package and collected by the ``swapd`` pytest plugin: a third party runs
``pytest --swapd-tier NAME[:option=value,...]`` (or ``pkg.mod:Class``) against its own tier
without a swapd source tree; swapd's own tests run it over every tier of the entry-point group
``swapd.tiers`` (tests/test_tier_contract.py).  A tier gets its options from the spec and from
the ``swapd_tier_options`` fixture (a project's conftest gives what only a test can make, such
as the address of a store it started).  The suite stores up to 64 pages at once: give a tier
at least that room.  Deterministic: pages from a seeded ``random.Random``.
"""

from __future__ import annotations

import random
import threading
from pathlib import Path

import pytest

from swapd.errors import ConfigError, TierFullError
from swapd.layer.table import EntryState
from swapd.layer.tier import Tier, TierContext
from swapd.pages import PAGE_SIZE
from swapd.testing import TierVariant


def page(rng: random.Random, i: int) -> bytes:
    """A page that compresses (a repeated line) and is distinct per ``i``."""
    line = f"page {i} {rng.randrange(1 << 30)} ".encode()
    return (line * (PAGE_SIZE // len(line) + 1))[:PAGE_SIZE]


def test_store_load_round_trip(swapd_tier: Tier) -> None:
    """store_batch gives distinct keys; load, load_batch (and load_nowait, when it does not
    say None) give the pages back; free."""
    rng = random.Random(1)
    pages = [page(rng, i) for i in range(40)]
    keys = swapd_tier.store_batch(pages)
    assert len(keys) == len(pages) and len(set(keys)) == len(keys)
    assert isinstance(swapd_tier.state, EntryState) and swapd_tier.name
    swapd_tier._check()
    for k, pg in zip(keys, pages):
        assert swapd_tier.load(k) == pg
    assert swapd_tier.load_batch(keys[5:15]) == pages[5:15]
    for k, pg in zip(keys[:8], pages):  # optional: the page if at hand, else None
        assert swapd_tier.load_nowait(k) in (None, pg)
    assert swapd_tier.used_bytes() > 0
    swapd_tier.free_batch(keys[:20])
    for k in keys[20:]:
        swapd_tier.free(k)
    swapd_tier._check()


def test_keys_are_reusable_after_free(swapd_tier: Tier) -> None:
    """A freed key may be reused; a live one is never handed out twice."""
    rng = random.Random(2)
    p0, p1, p2 = page(rng, 0), page(rng, 1), page(rng, 2)
    a = swapd_tier.store_batch([p0, p1])
    swapd_tier.free(a[0])
    b = swapd_tier.store_batch([p2])
    assert b[0] != a[1]  # a live key is never handed out twice
    assert swapd_tier.load(b[0]) == p2 and swapd_tier.load(a[1]) == p1
    swapd_tier.free_batch([a[1], b[0]])
    swapd_tier._check()


def test_full_tier_stores_a_prefix_or_refuses(swapd_tier: Tier) -> None:
    """A tier never holds more than its capacity: it stores a prefix or TierFullError."""
    cap = swapd_tier.capacity_bytes()
    if cap is None:
        pytest.skip(f"tier {swapd_tier.name} has no capacity of its own")
    rng = random.Random(3)
    stored: list[int] = []
    for _ in range(cap // PAGE_SIZE + 8):
        try:  # random pages do not compress: each takes at least a page in any tier
            got = swapd_tier.store_batch([rng.randbytes(PAGE_SIZE)])
        except TierFullError:
            break
        assert len(got) <= 1
        if not got:
            break
        stored += got
    else:
        pytest.fail(f"tier {swapd_tier.name} took more than its capacity {cap}")
    assert swapd_tier.used_bytes() <= cap
    swapd_tier.free_batch(stored)
    assert swapd_tier.store_batch([rng.randbytes(PAGE_SIZE)])  # room again


def test_concurrent_loads_and_stores(swapd_tier: Tier) -> None:
    """Loads from several threads while another stores and frees: every page intact."""
    rng = random.Random(4)
    pages = [page(rng, i) for i in range(64)]
    keys = swapd_tier.store_batch(pages)
    errors: list[BaseException] = []

    def reader(lo: int) -> None:
        try:
            for _ in range(3):
                for k, pg in zip(keys[lo:lo + 16], pages[lo:lo + 16]):
                    assert swapd_tier.load(k) == pg
        except BaseException as exc:  # reported below
            errors.append(exc)

    def writer() -> None:
        try:
            r = random.Random(5)
            for i in range(20):
                more = swapd_tier.store_batch([page(r, 100 + i)])
                swapd_tier.free_batch(more)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=reader, args=(lo,)) for lo in range(0, 64, 16)]
    threads.append(threading.Thread(target=writer))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    swapd_tier.free_batch(keys)
    swapd_tier._check()


def test_bad_option_is_refused_by_name(swapd_tier_variant: TierVariant,
                                       tmp_path: Path) -> None:
    """An option the tier does not have is refused by name (ConfigError)."""
    ctx = TierContext(state_path=tmp_path)
    with pytest.raises(ConfigError, match="no_such_option"):
        swapd_tier_variant.make(ctx, no_such_option=1)


__all__ = [n for n in list(globals()) if n.startswith("test_")]
