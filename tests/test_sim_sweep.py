"""Sweeps and the ``swapd sim`` command line: CSV, JSON and PNG in a temporary directory."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from swapd.cli import main
from swapd.sim.gen import generate
from swapd.sim.mattson import stack_distances
from swapd.sim.sweep import auto_capacities, make_jobs, run_sweep
from swapd.sim.trace import read_pages, write_trace


@pytest.fixture
def trace(tmp_path: Path) -> Path:
    p = tmp_path / "zipf.csv"
    write_trace(p, generate("zipf", 3000, seed=9, pages=500, alpha=0.9, write_ratio=0.2))
    return p


def _png(p: Path) -> bool:
    return p.is_file() and p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_policy_only_sweep_writes_csv_json_png(trace: Path, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib", reason="the plot extra is not installed")
    caps = [20, 60, 200]
    jobs = make_jobs(str(trace), None, ["lru", "fifo", "s3fifo"], caps)
    out = run_sweep(jobs, tmp_path / "out", workers=2, progress=False)
    rows = list(csv.DictReader(out.csv.open()))
    by = {(r["mode"], r["policy"], int(r["capacity"])): r for r in rows}
    assert len(rows) == 3 * 3 + 3  # the policies plus the Mattson curve
    sd = stack_distances(list(read_pages(trace)))
    for c in caps:
        # the Mattson curve and the LRU replay agree exactly, and with a direct computation
        assert int(by[("mattson", "lru", c)]["misses"]) == sd.misses(c)
        assert int(by[("policy-only", "lru", c)]["misses"]) == sd.misses(c)
        for pol in ("lru", "fifo", "s3fifo"):
            r = by[("policy-only", pol, c)]
            assert int(r["accesses"]) == 3000
            assert float(r["miss_ratio"]) == pytest.approx(int(r["misses"]) / 3000)
    doc = json.loads(out.json.read_text())
    assert doc["jobs"] == len(jobs) and len(doc["results"]) == len(jobs)
    assert [f.name for f in out.figures] == ["mrc.png"]
    assert _png(tmp_path / "out" / "mrc.png")


def test_full_sweep_writes_occupancy_and_density(trace: Path, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib", reason="the plot extra is not installed")
    jobs = make_jobs(str(trace), None, ["lru"], [50, 150], ["zsmalloc", "zbud"], window=500,
                     pool_bytes=25 * 4096, disk_bytes=4 << 20, corpus_pages=128)
    out = run_sweep(jobs, tmp_path / "full", workers=2, progress=False)
    assert {f.name for f in out.figures} == {"mrc.png", "occupancy.png", "density.png",
                                            "time.png"}
    assert all(_png(f) for f in out.figures)
    rows = [r for r in csv.DictReader(out.csv.open()) if r["mode"] == "full"]
    assert len(rows) == 4
    for r in rows:
        assert int(r["hits"]) + int(r["misses"]) == int(r["accesses"]) == 3000
        assert int(r["first_touch"]) + int(r["refaults"]) == int(r["misses"])
        assert float(r["pool_density"]) > 0


def test_auto_capacities(trace: Path) -> None:
    caps = auto_capacities(str(trace), None, 5)
    distinct = len(set(read_pages(trace)))
    assert caps == sorted(caps) and caps[-1] == distinct and caps[0] >= 1 and len(caps) >= 4


# -- the command line ------------------------------------------------------------------------


def test_cli_gen_then_sim_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    t = tmp_path / "loop.oracleGeneral"
    assert main(["sim", "gen", "loop", "-n", "1000", "--set", "pages=100", "-o", str(t)]) == 0
    assert main(["sim", "--trace", str(t), "--policy", "lru", "--capacity", "99",
                 "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["accesses"] == 1000 and d["misses"] == 1000 and d["miss_ratio"] == 1.0
    assert main(["sim", "--trace", str(t), "--capacity", "100", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["misses"] == 100


def test_cli_full_mode_json(trace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sim", "--trace", str(trace), "--policy", "clock", "--capacity", "80",
                 "--backend", "zsmalloc", "--pool-mib", "0.1", "--disk-mib", "4",
                 "--corpus-pages", "128", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["mode"] == "full" and d["accesses"] == 3000
    assert d["hits"] + d["misses"] == 3000
    for k in ("refaults_by_tier", "lru_inversions", "writebacks", "pool_density",
              "compression_ratio", "modelled_time_s", "layer", "costs"):
        assert k in d
    assert "zswpout" in d["layer"] and "docs/design.md sec. 11" in d["costs"]["source"]


def test_cli_sweep_and_mrc(trace: Path, tmp_path: Path,
                           capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "sw"
    assert main(["sim", "sweep", "--trace", str(trace), "--policies", "lru,sieve",
                 "--capacities", "30,90", "--workers", "1", "--no-progress", "--no-plots",
                 "-o", str(out)]) == 0
    assert (out / "sweep.csv").is_file() and (out / "sweep.json").is_file()
    capsys.readouterr()
    assert main(["sim", "mrc", "--trace", str(trace), "--capacities", "30,90", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    sd = stack_distances(list(read_pages(trace)))
    assert [p["misses"] for p in d["curve"]] == [sd.misses(30), sd.misses(90)]


def test_cli_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.txt"
    bad.write_text("1\nx\n")
    assert main(["sim", "--trace", str(bad), "--capacity", "5"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "record 2" in err and str(bad) in err
    assert main(["sim", "--trace", str(bad)]) == 2
    assert "--capacity" in capsys.readouterr().err
    assert main(["sim", "--trace", str(bad), "--capacity", "5", "--policy", "nope"]) == 2
    assert "nope" in capsys.readouterr().err
    assert main(["sim", "--trace", str(tmp_path / "absent.csv"), "--capacity", "5"]) == 2
    assert "no such trace file" in capsys.readouterr().err


def test_cli_human_summary(trace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sim", "--trace", str(trace), "--capacity", "40", "--backend", "zbud",
                 "--pool-mib", "0.05", "--corpus-pages", "64"]) == 0
    out = capsys.readouterr().out
    for word in ("miss ratio", "refaults", "LRU inversions", "modelled time",
                 "docs/design.md sec. 11"):
        assert word in out


def test_bench_sim_and_costs_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "sim", "--requests", "3000", "--pages", "500", "--capacity", "50",
                 "--reps", "1", "--full-requests", "300", "--full-capacity", "30",
                 "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    for k in ("ordereddict_req_per_s", "policy_only_req_per_s", "full_req_per_s"):
        assert d[k] > 0
    out = tmp_path / "costs.json"
    assert main(["bench", "costs", "-o", str(out), "--pages", "64", "--reps", "1",
                 "--no-faults", "--dir", str(tmp_path)]) == 0
    from swapd.sim.costs import CostTable

    t = CostTable.load(out)
    assert t.compress_us > 0 and t.disk_read_us > 0 and "bench costs" in t.source
    assert [p.name for p in tmp_path.iterdir()] == ["costs.json"]  # the disk file is gone


def test_sweep_results_do_not_depend_on_what_a_worker_ran_before(trace: Path,
                                                                  tmp_path: Path) -> None:
    """A worker keeps the synthetic corpus and the parsed trace for its next jobs
    (swapd/sim/sweep.py): every result of a full sweep whose pages reach the disk tier is
    the same, counters, series and modelled time, as each job's run in a fresh state, in
    one process or in two."""
    from swapd.sim import sweep

    jobs = make_jobs(str(trace), None, ["lru", "s3fifo"], [50, 150], ["zsmalloc", "zbud"],
                     window=500, pool_bytes=16 * 4096, disk_bytes=4 << 20, corpus_pages=128,
                     mattson=False)

    def fresh(job: sweep.Job) -> dict[str, object]:
        sweep._corpus_cache.clear()
        sweep._trace_cache.clear()
        return sweep.run_job(job)

    alone = sorted((fresh(j) for j in jobs), key=sweep._order)
    assert all(r["writebacks"] > 0 and r["refaults_by_tier"].get("disk", 0) > 0
               for r in alone)  # the disk tier's slot allocator is exercised
    one = run_sweep(jobs, tmp_path / "one", workers=1, progress=False, plots=False)
    two = run_sweep(jobs, tmp_path / "two", workers=2, progress=False, plots=False)
    assert sweep._trace_cache and sweep._corpus_cache  # the in-process run kept them
    assert list(one.results) == alone
    assert list(two.results) == alone
    assert (tmp_path / "one" / "sweep.csv").read_bytes() == \
        (tmp_path / "two" / "sweep.csv").read_bytes()
