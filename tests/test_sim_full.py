"""Full mode: the real layer under a resident set; counters must be consistent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from swapd.corpus import Corpus
from swapd.errors import ConfigError, SwapdError
from swapd.plugins import available_backends, available_policies
from swapd.sim.contents import PageContents, mix64
from swapd.sim.costs import DEFAULT_COSTS, CostTable
from swapd.sim.full import FullConfig, FullSim, TierOverflowError, run_full
from swapd.sim.gen import generate
from swapd.sim.policy_only import run_policy_only
from swapd.sim.trace import Request

CORPUS = Corpus.synthetic(256, seed=4)


def _reqs(n: int = 3000, pages: int = 600, seed: int = 2) -> list[Request]:
    return list(generate("zipf", n, seed, pages=pages, alpha=0.9, write_ratio=0.2))


def _consistent(d: dict[str, object], n: int) -> None:
    lay = d["layer"]
    assert isinstance(lay, dict)
    assert d["accesses"] == n
    assert d["hits"] + d["misses"] == n  # type: ignore[operator]
    assert d["misses"] == d["first_touch"] + d["refaults"]  # type: ignore[operator]
    by_tier = d["refaults_by_tier"]
    assert isinstance(by_tier, dict)
    assert sum(by_tier.values()) == d["refaults"]
    # every refault was a load from the layer: zswpin counts loads of the compressed tier
    # and of same-filled entries (as mm/zswap.c does), pswpin the disk tier
    assert by_tier.get("compressed", 0) + by_tier.get("same_filled", 0) == lay["zswpin"]
    assert by_tier.get("disk", 0) == lay["pswpin"]
    # an accepted store went to the pool (zswpout) or, bypassing it, straight to disk
    assert d["evictions"] == lay["zswpout"] + lay["pswpout"] - lay["zswpwb"]
    assert d["writebacks"] == lay["written_back_pages"]
    assert d["modelled_time_s"] > 0  # type: ignore[operator]


@pytest.mark.parametrize("backend", sorted(available_backends()))
def test_full_mode_counters_are_consistent(backend: str) -> None:
    reqs = _reqs()
    cfg = FullConfig(policy="lru", capacity=100, backend=backend, pool_bytes=60 * 4096,
                     disk_bytes=8 << 20, window=500, check_every=1000)
    res = run_full(reqs, cfg, CORPUS)
    d = res.to_dict()
    _consistent(d, len(reqs))
    assert d["refaults_by_tier"].get("disk", 0) > 0  # the pool was small: pages reached disk
    assert d["writebacks"] > 0
    # the default layer shrinks until it accepts; only pages that bypass the pool (too big
    # for the backend's largest object, e.g. zbud's raw pages) can be inverted
    assert d["lru_inversions"] <= d["layer"]["reject_compress_poor"]
    if backend == "zsmalloc":
        assert d["lru_inversions"] == 0
    assert d["compression_ratio"] > 1 and d["pool_density"] > 0
    assert [p["accesses"] for p in d["series"]] == list(range(500, 3001, 500))
    # with no rejected store, faults are exactly policy-only misses
    assert not d["store_rejects"]
    assert d["misses"] == run_policy_only([r.page for r in reqs], "lru", 100).misses


@pytest.mark.parametrize("policy", sorted(available_policies()))
def test_full_mode_faults_equal_policy_only_misses(policy: str) -> None:
    reqs = _reqs(2000, 400, seed=7)
    cfg = FullConfig(policy=policy, capacity=80, backend="zsmalloc", pool_bytes=16 << 20,
                     disk_bytes=1 << 20)
    d = run_full(reqs, cfg, CORPUS).to_dict()
    _consistent(d, len(reqs))
    assert not d["store_rejects"]
    assert d["misses"] == run_policy_only([r.page for r in reqs], policy, 80).misses
    assert d["layer"]["written_back_pages"] == 0


def test_kernel_like_mode_counts_inversions() -> None:
    reqs = _reqs(4000, 800, seed=3)
    base = {"policy": "lru", "capacity": 100, "backend": "zsmalloc", "pool_bytes": 40 * 4096,
            "disk_bytes": 8 << 20}
    ours = run_full(reqs, FullConfig(**base), CORPUS).to_dict()
    kern = run_full(reqs, FullConfig(**base, layer_options=(("reject_to_disk_when_full", True),)),
                    CORPUS).to_dict()
    assert ours["lru_inversions"] == 0
    assert kern["lru_inversions"] > 0
    _consistent(kern, len(reqs))


def test_no_disk_tier_and_a_tiny_pool_stops_with_the_tier_and_size() -> None:
    reqs = _reqs(1500, 500, seed=5)
    cfg = FullConfig(capacity=50, backend="zsmalloc", pool_bytes=8 * 4096, disk_bytes=0,
                     trace_pages=len({r.page for r in reqs}))
    with FullSim(cfg, CORPUS) as sim, pytest.raises(TierOverflowError) as ei:
        sim.run(reqs)
    msg = str(ei.value)
    assert "compressed tier" in msg and "--allow-overflow" in msg and "request" in msg
    assert "\n" not in msg


def test_a_full_disk_tier_names_the_size_needed() -> None:
    reqs = _reqs(3000, 800, seed=6)
    distinct = len({r.page for r in reqs})
    cfg = FullConfig(capacity=50, backend="zbud", pool_bytes=8 * 4096, disk_bytes=64 * 4096,
                     trace_pages=distinct)
    with FullSim(cfg, CORPUS) as sim, pytest.raises(TierOverflowError) as ei:
        sim.run(reqs)
    msg = str(ei.value)
    need = (distinct - 50) * 4096 / (1 << 20)
    assert "disk tier (0.2 MiB) is full" in msg, msg
    assert f"{need:.1f} MiB" in msg, msg


def test_allow_overflow_keeps_the_capacity_and_the_policy_miss_ratio() -> None:
    from swapd.sim.policy_only import run_policy_only

    reqs = _reqs(1500, 500, seed=5)
    cfg = FullConfig(capacity=50, backend="zsmalloc", pool_bytes=8 * 4096, disk_bytes=0,
                     allow_overflow=True)
    with FullSim(cfg, CORPUS) as sim:
        d = sim.run(reqs).to_dict()
        sim._check()
    _consistent(d, len(reqs))
    assert d["store_rejects"]  # a tiny pool and no disk: stores are refused
    assert d["overflow_pages"] > 0 and d["refaults_by_tier"].get("overflow", 0) > 0
    assert d["max_resident"] == 50  # never above the capacity
    po = run_policy_only([r.page for r in reqs], "lru", 50)
    assert d["misses"] == po.misses  # the overflow store keeps the policy's own behaviour


def test_layer_data_is_verified_and_writes_change_contents() -> None:
    pc = PageContents(CORPUS, seed=1)
    assert pc.data(5, 0) == pc.data(5, 0)
    versions = {pc.index(5, v) for v in range(20)}
    assert len(versions) > 5  # writes move the page around the corpus
    assert pc.index(5, 0) == mix64(mix64(1 ^ 5) ^ 0) % len(CORPUS)
    with pytest.raises(ConfigError):
        PageContents(Corpus.from_pages([]))


def test_full_mode_is_deterministic_and_cleans_up(tmp_path: Path) -> None:
    reqs = _reqs(1500, 300)
    cfg = FullConfig(capacity=60, backend="zbud", pool_bytes=30 * 4096, disk_bytes=4 << 20)
    a = run_full(reqs, cfg, CORPUS).to_dict()
    b = run_full(reqs, cfg, CORPUS).to_dict()
    for k in ("misses", "refaults_by_tier", "evictions", "layer", "modelled_time_s"):
        assert a[k] == b[k]
    sim = FullSim(cfg, CORPUS, workdir=str(tmp_path))
    sim.run(reqs[:200])
    assert os.listdir(tmp_path)
    sim.close()
    assert os.listdir(tmp_path) == []


def test_costs_table(tmp_path: Path) -> None:
    p = tmp_path / "c.json"
    t = CostTable(1.0, 2.0, 3.0, 4.0, 5.0, 6.0, "test")
    t.save(p)
    assert CostTable.load(p) == t
    p.write_text('{"fault_us": 1}')
    with pytest.raises(ConfigError, match="missing"):
        CostTable.load(p)
    assert "docs/design.md sec. 11" in DEFAULT_COSTS.source
    reqs = _reqs(800, 200)
    cfg = FullConfig(capacity=50, backend="zsmalloc", pool_bytes=20 * 4096, disk_bytes=4 << 20)
    slow = run_full(reqs, cfg, CORPUS, CostTable(10, 0, 0, 0, 0, 0, "x"))
    fast = run_full(reqs, cfg, CORPUS, CostTable(1, 0, 0, 0, 0, 0, "x"))
    assert slow.modelled_time_s == pytest.approx(10 * fast.modelled_time_s)
    assert fast.modelled_time_s == pytest.approx(fast.misses * 1e-6)


def test_unknown_layer_option_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="unknown layer option"):
        FullSim(FullConfig(layer_options=(("pool_limt", 1),)), CORPUS)


def test_background_shrinker_and_compaction_run_on_modelled_time() -> None:
    # every page touched once: no refault holds the shrinker back (nr_disk_swapins)
    reqs = [Request(t, t, "w" if t % 3 else "r") for t in range(2000)]
    base = {"capacity": 60, "backend": "zsmalloc", "pool_bytes": 40 * 4096,
            "disk_bytes": 16 << 20}
    quiet = run_full(reqs, FullConfig(**base, shrink_interval_s=0.0), CORPUS).to_dict()
    busy = run_full(reqs, FullConfig(**base, shrink_interval_s=0.001, compact_interval_s=0.001),
                    CORPUS).to_dict()
    for d in (quiet, busy):
        _consistent(d, len(reqs))
    assert quiet["shrink_runs"] == quiet["shrink_written"] == quiet["pages_compacted"] == 0
    # at most one run per modelled millisecond (modelled time also counts writebacks)
    assert 10 < busy["shrink_runs"] <= busy["modelled_time_s"] * 1000 + 1
    assert busy["shrink_written"] > 0
    # the proactive shrinker writes back before the pool is full: fewer synchronous
    # pool_limit_hit events on the store path
    assert busy["layer"]["pool_limit_hit"] < quiet["layer"]["pool_limit_hit"]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_non_exclusive_loads_keep_clean_copies_and_writes_drop_them(seed: int) -> None:
    reqs = list(generate("shift", 3000, seed, pages=600, wss=150, period=400, step=40,
                         write_ratio=0.3))
    cfg = FullConfig(capacity=70, backend="zsmalloc", pool_bytes=50 * 4096, disk_bytes=4 << 20,
                     layer_options=(("exclusive_loads", False),), check_every=250, seed=seed)
    d = run_full(reqs, cfg, CORPUS).to_dict()  # every load is checked byte for byte
    _consistent(d, len(reqs))
    assert d["refaults"] > 0



def test_a_bad_policy_leaves_no_temporary_directory(tmp_path: Path) -> None:
    cfg = FullConfig(policy="no-such-policy", capacity=10, backend="zbud",
                     pool_bytes=8 * 4096, disk_bytes=0)
    with pytest.raises(SwapdError):
        FullSim(cfg, CORPUS, workdir=str(tmp_path))
    assert os.listdir(tmp_path) == []
