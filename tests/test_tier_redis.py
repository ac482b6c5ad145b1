"""The Redis tier (swapd/tiers/redis.py) under the layer and the daemon, with Redis servers on
test hosts in network namespaces (swapd/testhosts.py): the chain compressed -> disk -> redis,
a cut link, Redis Cluster with a primary killed, and the daemon configured from its file.

Each test checks every page byte for byte; nothing asserts a timing.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from swapd.arena import PAGE_SIZE
from swapd.errors import CorruptPageError, StoreRejected, TierIOError
from swapd.layer import CompressedTier, DiskTier, EntryState, LayerConfig, SwapLayer, TierLimits
from swapd.plugins import make_backend
from swapd.tiers.redis import RedisTier, decode_page, encode_page
from tests.test_daemon_helpers import BASE_CONFIG, daemon_running, needs_uffd, run_client

LIMITS = TierLimits(ram_total_bytes=1 << 30)


def page(rng: random.Random, i: int) -> bytes:
    head = rng.randbytes(1400) + i.to_bytes(8, "little")
    return (head + f"remote {i} ".encode() * 400)[:PAGE_SIZE]


def remote_layer(tmp: Path, redis: RedisTier, *, pool_pages: int = 6,
                 disk_pages: int | None = 16) -> SwapLayer:
    tiers: list[Any] = [CompressedTier("lz4", make_backend("zsmalloc", max_pages=4096), LIMITS)]
    if disk_pages:
        tiers.append(DiskTier(tmp, disk_pages * PAGE_SIZE))
    tiers.append(redis)
    return SwapLayer(tiers, config=LayerConfig(pool_limit_bytes=pool_pages * PAGE_SIZE),
                     clock=lambda: 0.0)


@pytest.fixture
def redis_tier(redis_tier_options: dict[str, Any]) -> Iterator[RedisTier]:
    opts = dict(redis_tier_options)
    opts.pop("capacity_bytes", None)
    t = RedisTier(opts.pop("url"), **opts)
    yield t
    t.close()


def test_value_format_detects_damage() -> None:
    rng = random.Random(1)
    pg = page(rng, 0)
    v = encode_page(pg)
    assert v[:4] == b"SWP1" and len(v) < PAGE_SIZE
    assert decode_page(v, "k") == pg
    for bad in (None, v[:6], b"XXXX" + v[4:], v[:-1] + bytes([v[-1] ^ 1])):
        with pytest.raises(CorruptPageError):
            decode_page(bad, "k")


def test_chain_with_disk_and_redis_keeps_every_page(tmp_path: Path,
                                                     redis_tier: RedisTier) -> None:
    layer = remote_layer(tmp_path, redis_tier)
    rng = random.Random(2)
    n = 300
    pages = [page(rng, i) for i in range(n)]
    r = layer.add_region("a", n)
    for i, pg in enumerate(pages):
        layer.store(r, i, pg)
    layer._check()
    states = [layer.state(r, i) for i in range(n)]
    assert EntryState.REMOTE in states and EntryState.DISK in states
    assert redis_tier.stats()["keys"] == states.count(EntryState.REMOTE)
    # readahead of a remote run: one round trip
    first = states.index(EntryState.REMOTE)
    run = layer.swapped_run(r, first, 32)
    trips = redis_tier.stats()["round_trips"]
    got = layer.load_many(r, first, run)
    assert got == pages[first:first + len(got)] and len(got) > 1
    assert redis_tier.stats()["round_trips"] - trips <= 2  # the GETs, and maybe queued deletes
    for i in range(n):
        if i < first or i >= first + len(got):
            assert layer.load(r, i) == pages[i]
    assert layer.stats().lru_inversions == 0
    layer._check()
    layer.close()


def test_cut_link_stops_demotion_and_loses_nothing(tmp_path: Path, redis_host: Any,
                                                   redis_tier: RedisTier) -> None:
    redis_tier.retry_s = 0.5
    layer = remote_layer(tmp_path, redis_tier, disk_pages=None)
    rng = random.Random(3)
    kept: dict[int, bytes] = {}
    n = 200
    r = layer.add_region("a", n)
    for i in range(100):
        pg = page(rng, i)
        layer.store(r, i, pg)
        kept[i] = pg
    remote_before = [i for i in kept if layer.state(r, i) is EntryState.REMOTE]
    assert remote_before
    redis_host.host.cut()
    try:
        refused = 0
        for i in range(100, n):
            pg = page(rng, i)
            try:
                layer.store(r, i, pg)
                kept[i] = pg
            except StoreRejected:
                refused += 1  # the daemon keeps such a page resident
        assert refused > 0
        assert not redis_tier.available()
        # a page whose only copy is remote cannot be read now: an error, never other data
        with pytest.raises(TierIOError):
            layer.load(r, remote_before[0])
        layer._check()
    finally:
        redis_host.host.restore()
    for i, pg in kept.items():
        assert layer.load(r, i) == pg
    layer._check()
    layer.close()


def test_redis_cluster_primary_killed_loses_nothing(tmp_path: Path) -> None:
    from swapd.testhosts import HostNet, redis_cluster, unavailable_reason

    why = unavailable_reason()
    if why:
        pytest.skip(why)
    with HostNet(6) as net, redis_cluster(net, 3) as nodes:
        tier = RedisTier(nodes[0].url, cluster=True, replicas=1, namespace="failover",
                         retry_s=20.0, timeout_s=0.5)
        layer = remote_layer(tmp_path, tier, disk_pages=None)
        rng = random.Random(4)
        n = 300
        pages = [page(rng, i) for i in range(n)]
        r = layer.add_region("a", n)
        for i, pg in enumerate(pages):
            layer.store(r, i, pg)
        remote = [i for i in range(n) if layer.state(r, i) is EntryState.REMOTE]
        assert len(remote) > 100
        assert tier.stats()["wait_failures"] == 0
        nodes[0].stop()  # a primary dies; its replica takes over its slots
        lost = mismatched = 0
        for i in range(n):
            try:
                got = layer.load(r, i)
            except (TierIOError, CorruptPageError):
                lost += 1
                continue
            mismatched += got != pages[i]
        assert (lost, mismatched) == (0, 0)
        assert tier.stats()["retries"] > 0  # the failover was felt, and waited out
        layer._check()
        layer.close()


@needs_uffd
def test_daemon_runs_the_chain_from_its_config(tmp_path: Path, redis_host: Any) -> None:
    config = BASE_CONFIG.replace('[layer]\n', '[layer]\ntiers = ["compressed", "disk", "redis"]\n'
                                 ).replace('disk_bytes = "64M"', 'disk_bytes = "256K"')
    config += f'[tier.redis]\nurl = "{redis_host.url}"\nnamespace = "daemon-test"\n'
    with daemon_running(tmp_path, config) as d:
        r = run_client("""
            rng = random.Random(5)
            with connect(SOCK) as c:
                c.set_limit(32 * 4096)
                reg = c.map(2 << 20)
                n = len(reg) // 4096
                pages = [rng.randbytes(1500) + bytes(2596) for _ in range(n)]
                for i in range(n):
                    reg[i * 4096:(i + 1) * 4096] = pages[i]
                reg.advise(0, len(reg), "cold")
                cold = c.stats("all")["total"]["tiers"]
                bad = sum(reg[i * 4096:(i + 1) * 4096] != pages[i] for i in range(n))
                bad += sum(reg[i * 4096:(i + 1) * 4096] != pages[i] for i in range(n))
                out(bad=bad, cold=cold, stats=c.stats("all")["total"]["tiers"])
        """, d.socket)
        assert r["bad"] == 0
        assert [t["name"] for t in r["cold"]] == ["compressed", "disk", "redis"]
        assert r["cold"][2]["entries"] > 0, r["cold"]  # every page evicted: some are remote
        assert r["stats"][2]["loads"] >= r["cold"][2]["entries"], r["stats"]  # all read back


def test_adopted_layer_finds_its_remote_pages(tmp_path: Path,
                                               redis_tier_options: dict[str, Any]) -> None:
    """A restarted daemon adopts the id table with the swap table: every remote page comes
    back, ids the table does not reference are released, nothing is reused early."""
    import os

    opts = dict(redis_tier_options)
    opts.pop("capacity_bytes", None)
    url = opts.pop("url")
    tier = RedisTier(url, **opts)
    disk = DiskTier(tmp_path, 16 * PAGE_SIZE, seal=False)
    layer = SwapLayer([disk, tier], config=LayerConfig(), clock=lambda: 0.0)
    rng = random.Random(7)
    n = 120
    pages = [page(rng, i) for i in range(n)]
    r = layer.add_region("a", n)
    for i, pg in enumerate(pages):
        layer.store(r, i, pg)
    remote = [i for i in range(n) if layer.state(r, i) is EntryState.REMOTE]
    assert remote
    tier.store_batch([page(rng, 999)])  # a store the table never committed (a crash)
    fds = {k: os.dup(v) for k, v in layer.state_fds().items()}
    assert "tier1.redis-ids" in fds
    # the old process is gone without cleaning up (its tier must not delete the keys)
    tier._keep = True
    new = SwapLayer.adopt(fds, config=LayerConfig(), clock=lambda: 0.0,
                          tier_options={"redis": {"url": url, "retry_s": 2.0}})
    try:
        new._check()
        (rid,) = new.regions()
        adopted = new.tier_stats()[1]
        assert adopted["keys"] == len(remote)  # the stray id was released
        for i in range(n):
            assert new.load(rid, i) == pages[i]
        new._check()
    finally:
        new.close()
        # the old layer's table now describes the new owner's state: release only its own
        # handles (as its process's exit would), never its entries
        disk.close()
        tier.close()


@needs_uffd
def test_remote_pages_survive_a_restart_and_a_crash(tmp_path: Path, redis_host: Any) -> None:
    """The Redis tier's id table goes to the fd store with the layer's other state: after a
    SIGKILL and after a graceful restart every remote page comes back, none is poisoned."""
    import signal

    from tests.test_restart import PAGES, Client, _start, managed_daemon

    config = BASE_CONFIG.replace('[layer]\n', '[layer]\ntiers = ["disk", "redis"]\n'
                                 ).replace('disk_bytes = "64M"', 'disk_bytes = "256K"')
    config += f'[tier.redis]\nurl = "{redis_host.url}"\nnamespace = "restart-test"\n'
    with managed_daemon(tmp_path, config) as (m, sock):
        _start(m, tmp_path)
        c = Client(sock)
        try:
            assert c.read()["phase"] == "written"
            c.send("settle")
            c.read()
            import redis

            store = redis.Redis.from_url(redis_host.url)
            remote = len(store.keys(b"swapd:restart-test:*"))
            store.close()
            assert remote > PAGES // 2  # most pages are only on the remote store
            m.stop(signal.SIGKILL)
            assert "layer.tier1.redis-ids" in m.store.names(), m.store.names()
            _start(m, tmp_path)
            c.send("verify")
            r = c.read()
            assert r["bad"] == [] and r["poisoned"] == [], r
            assert r["pages"]["SWAPPED"] + r["pages"]["RESIDENT"] == PAGES, r
            m.stop(signal.SIGTERM)
            _start(m, tmp_path)
            c.send("verify")
            r = c.read()
            assert r["bad"] == [] and r["poisoned"] == [], r
            c.send("quit")
            assert c.read()["phase"] == "done"
        finally:
            c.close()
        log = (tmp_path / "daemon.log").read_text()
        assert "Traceback" not in log, log[-4000:]
