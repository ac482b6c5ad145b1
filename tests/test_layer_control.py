"""The layer's runtime knobs (swapd ctl): reconfigure() and the per-client limits, the
counterparts of zswap's module parameters and cgroup v2's memory.zswap.max /
memory.zswap.writeback.  Each test ends with the layer's invariant check."""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path

import pytest

from swapd.arena import PAGE_SIZE
from swapd.errors import ConfigError, StoreRejected, SwapdError
from swapd.layer import LayerConfig, SwapLayer
from tests.test_layer import BACKENDS, make_layer, text_page


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def test_reconfigure_changes_limits_and_refuses_fixed_fields(backend: str,
                                                             tmp_path: Path) -> None:
    lay = make_layer(backend, tmp_path, pool_limit_bytes=64 * PAGE_SIZE)
    try:
        assert lay.limit_pages == 64
        new = dataclasses.replace(lay.config, pool_limit_bytes=32 * PAGE_SIZE,
                                  accept_threshold_percent=50.0)
        assert lay.reconfigure(new) == new and lay.config == new
        assert (lay.limit_pages, lay.accept_pages) == (32, 16)
        with pytest.raises(ConfigError, match="cannot change same_filled, second_chance"):
            lay.reconfigure(dataclasses.replace(new, same_filled=False, second_chance=False))
        assert lay.config == new
        rng = random.Random(1)
        r = lay.add_region("a", 400)
        for i in range(400):
            lay.store(r, i, text_page(rng))
        assert lay.stats().pool_total_size <= 32 * PAGE_SIZE
        lay._check()
    finally:
        lay.close()


def test_zswap_max_sends_the_client_to_disk_and_leaves_others_alone(backend: str,
                                                                     tmp_path: Path) -> None:
    lay = make_layer(backend, tmp_path)
    try:
        rng = random.Random(2)
        a, b = lay.add_region("a", 200), lay.add_region("b", 200)
        assert lay.set_client_limits("a", zswap_max_bytes=8 * PAGE_SIZE) == (8 * PAGE_SIZE, True)
        pages = [text_page(rng) for _ in range(200)]
        for i, p in enumerate(pages):
            lay.store(a, i, p)
            lay.store(b, i, p)
        sa, sb = lay.stats("a"), lay.stats("b")
        assert sa.compr_data_size <= 8 * PAGE_SIZE
        assert sa.disk_pages > 0 and sa.pool_limit_hit == sa.disk_pages
        assert sb.disk_pages == 0 and sb.stored_pages == 200
        assert all(lay.load(a, i) == p for i, p in enumerate(pages))  # nothing lost
        lay._check()
        assert lay.set_client_limits("a", zswap_max_bytes=None) == (None, True)
        assert lay.client_limits("a") == (None, True)
    finally:
        lay.close()


def test_writeback_off_keeps_the_client_out_of_the_disk_tier(backend: str,
                                                             tmp_path: Path) -> None:
    lay = make_layer(backend, tmp_path, pool_limit_bytes=32 * PAGE_SIZE)
    try:
        rng = random.Random(3)
        a, b = lay.add_region("a", 300), lay.add_region("b", 300)
        lay.set_client_limits("a", writeback=False)
        for i in range(8):
            lay.store(a, i, text_page(rng))
        for i in range(300):  # b's stores make room by writing back b's entries only
            lay.store(b, i, text_page(rng))
            if i % 30 == 0:
                lay.store(a, 8 + i // 30, text_page(rng))
        assert lay.stats("a").disk_pages == 0 and lay.stats("a").zswpwb == 0
        assert lay.stats("a").stored_pages == 18
        assert lay.stats("b").disk_pages > 0  # b's entries made the room
        lay._check()
        # a cap with writeback off: over the cap, stores are refused (the page stays resident)
        lay.set_client_limits("a", zswap_max_bytes=0)
        with pytest.raises(StoreRejected, match="pool_limit_hit"):
            lay.store(a, 0, text_page(rng))
        lay._check()
        lay.remove_client("a")
        assert lay.client_limits("a") == (None, True)
    finally:
        lay.close()


def test_client_limits_reject_bad_values(tmp_path: Path) -> None:
    lay: SwapLayer = make_layer(BACKENDS[0], tmp_path)
    try:
        with pytest.raises(ConfigError, match="zswap_max_bytes must be >= 0"):
            lay.set_client_limits("a", zswap_max_bytes=-1)
        assert LayerConfig() == lay.config
    finally:
        lay.close()


@pytest.mark.parametrize("policy", ["fifo", "s3fifo"])
def test_demotion_policy_switches_live(backend: str, tmp_path: Path, policy: str) -> None:
    lay = make_layer(backend, tmp_path, pool_limit_bytes=16 * PAGE_SIZE)
    try:
        rng = random.Random(4)
        r = lay.add_region("a", 300)
        pages = [text_page(rng) for _ in range(300)]
        for i in range(150):
            lay.store(r, i, pages[i])
        assert lay.set_demotion_policy(policy) == policy == lay.demotion_policy
        lay._check()  # the policy holds exactly the tier-0 entries
        for i in range(150, 300):
            lay.store(r, i, pages[i])
        lay._check()
        assert lay.set_demotion_policy("lru") == "lru"
        lay.writeback(8)
        lay._check()
        assert all(lay.load(r, i) == p for i, p in enumerate(pages))
        with pytest.raises(SwapdError, match=r"no swapd\.policies plugin named 'nope'"):
            lay.set_demotion_policy("nope")
        assert lay.demotion_policy == "lru"
    finally:
        lay.close()
