"""`swapd sim` full mode over any chain of tiers (swapd/sim/full.py), from flags or from the
daemon's config file, with each tier's cost (swapd/sim/costs.py).  Deterministic: seeded
traces and contents; the Redis tier runs against Redis on a test host (tests/conftest.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from swapd.cli import main
from swapd.sim.costs import DEFAULT_COSTS, CostTable


@pytest.fixture(scope="module")
def trace(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("chain") / "zipf.txt"
    assert main(["sim", "gen", "zipf", "-n", "12000", "--seed", "3", "--set", "alpha=0.8",
                 "--set", "pages=2000", "-o", str(path)]) == 0
    return str(path)


def _run(capsys: pytest.CaptureFixture[str], argv: list[str]) -> dict[str, Any]:
    capsys.readouterr()
    assert main(argv) == 0
    out: dict[str, Any] = json.loads(capsys.readouterr().out)
    return out


def test_costs_of_each_tier_and_old_tables() -> None:
    assert DEFAULT_COSTS.read_us("compressed") == DEFAULT_COSTS.decompress_us
    assert DEFAULT_COSTS.read_us("disk") == DEFAULT_COSTS.disk_read_us
    assert DEFAULT_COSTS.read_us("remote") == DEFAULT_COSTS.remote_read_us
    assert DEFAULT_COSTS.read_us("same_filled") == 0.0
    assert DEFAULT_COSTS.write_us("remote") == DEFAULT_COSTS.remote_write_us
    old = {k: 1.0 for k in ("fault_us", "evict_us", "compress_us", "decompress_us",
                            "disk_read_us", "disk_write_us")}
    t = CostTable.from_dict(old)  # a table from before the chain: remote costs default
    assert t.remote_read_us == DEFAULT_COSTS.remote_read_us
    t = CostTable.from_dict({**old, "remote_read_us": 7})
    assert t.read_us("remote") == 7.0


def test_chain_from_flags_charges_each_tier(trace: str,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    base = ["sim", "--trace", trace, "--policy", "clock", "--capacity", "400", "--backend",
            "zsmalloc", "--pool-mib", "1", "--disk-mib", "16", "--json"]
    two = _run(capsys, [*base, "--tiers", "compressed,disk"])
    assert two["refaults_by_tier"].get("disk", 0) > 0
    assert two["layer"]["lru_inversions"] == 0
    one = _run(capsys, [*base, "--tiers", "compressed", "--allow-overflow"])
    assert "disk" not in one["refaults_by_tier"]


def test_bad_chain_is_one_error_line(trace: str, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["sim", "--trace", trace, "--policy", "clock", "--capacity", "400", "--backend",
            "zsmalloc"]
    assert main([*base, "--tiers", "compressed,bogus"]) == 2
    assert "no tier 'bogus'" in capsys.readouterr().err
    assert main([*base, "--tier-opt", "redis.url=x"]) == 2
    assert "TIER.KEY=VALUE" in capsys.readouterr().err


def test_chain_with_redis_from_the_daemons_config(trace: str, tmp_path: Path, redis_host: Any,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    conf = tmp_path / "swapd.toml"
    conf.write_text('[layer]\ntiers = ["compressed", "disk", "redis"]\n'
                    f'[tier.redis]\nurl = "{redis_host.url}"\n')
    r = _run(capsys, ["sim", "--trace", trace, "--policy", "clock", "--capacity", "400",
                      "--backend", "zsmalloc", "--pool-mib", "1", "--disk-mib", "1",
                      "--config", str(conf), "--json"])
    by_tier = r["refaults_by_tier"]
    assert by_tier.get("remote", 0) > 0 and by_tier.get("disk", 0) > 0, by_tier
    assert r["layer"]["lru_inversions"] == 0
    # modelled time charges every remote refault its round trip
    assert r["modelled_time_s"] * 1e6 >= by_tier["remote"] * DEFAULT_COSTS.remote_read_us
