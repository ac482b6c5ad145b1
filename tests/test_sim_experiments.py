"""The mix generator, the sweep's summary and HTML report, and the allocator-owned
writeback experiment (seeded runs ending in every model's ``_check``)."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest

from swapd.corpus import Corpus
from swapd.errors import ConfigError
from swapd.plugins import available_backends
from swapd.sim.gen import MIX_STRIDE, generate
from swapd.sim.sweep import make_jobs, run_sweep, summarize
from swapd.sim.trace import write_trace
from swapd.sim.wbexp import WritebackConfig, page_of, run_writeback_experiment

CORPUS = Corpus.synthetic(256, seed=3)


def test_mix_interleaves_by_weight_and_is_seeded() -> None:
    reqs = list(generate("mix", 20000, 7, parts="zipf:3/pages=500,loop:1/pages=50"))
    assert reqs == list(generate("mix", 20000, 7, parts="zipf:3/pages=500,loop:1/pages=50"))
    parts = Counter(r.page // MIX_STRIDE for r in reqs)
    assert set(parts) == {0, 1}
    assert 0.72 < parts[0] / len(reqs) < 0.78  # weight 3 of 4
    loop = [r.page - MIX_STRIDE for r in reqs if r.page >= MIX_STRIDE]
    assert loop[:60] == [i % 50 for i in range(60)]  # each part keeps its own order
    assert [r.time for r in reqs] == list(range(20000))


def test_mix_phases_and_shared_ids() -> None:
    reqs = list(generate("mix", 1000, 1, parts="loop:2/pages=10,scan:1/hot=5",
                         phase_len=100, shared=True))
    assert all(r.page < MIX_STRIDE for r in reqs)
    runs = [len(list(g)) for _k, g in __import__("itertools").groupby(
        reqs, key=lambda r: (r.time // 100) % 3 < 2)]
    assert runs[0] == 200  # part 0 runs 2 x 100 requests, then part 1 runs 100


@pytest.mark.parametrize(("parts", "words"), [
    ("", "at least one"), ("nosuch:1", "nosuch"), ("zipf:0", "positive"),
    ("zipf:x", "not a number"), ("zipf:1/nope=3", "nope"), ("mix:1", "cannot itself"),
    ("zipf:1/alpha", "NAME=VALUE"),
])
def test_mix_rejects_bad_parts(parts: str, words: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(words)):
        list(generate("mix", 10, 0, parts=parts))


def test_summary_and_report(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib", reason="the plot extra is not installed")
    from swapd.sim.report import write_report

    trace = tmp_path / "t.txt"
    write_trace(trace, generate("zipf", 3000, 2, pages=400, alpha=0.8))
    jobs = make_jobs(str(trace), None, ["lru", ("s3fifo", (("small_ratio", 0.25),))],
                     [40, 120], ["zbud"], pool_bytes=[16 * 4096, 64 * 4096],
                     disk_bytes=[8 << 20], window=300, corpus_pages=128, trace_pages=400)
    out = run_sweep(jobs, tmp_path / "o", workers=1, progress=False,
                    meta={"trace": str(trace), "trace_name": "t.txt", "pool_bytes": [1, 2]})
    s = summarize(list(out.results), 5.0)
    assert {b["capacity"] for b in s["best_policy"]} == {40, 120}
    labels = {r.get("label") for r in out.results}
    assert "s3fifo small_ratio=0.25" in labels
    for row in s["best_policy"]:
        runs = [r for r in out.results if r.get("capacity") == row["capacity"]
                and r.get("mode") == "full"]
        assert row["miss_ratio"] == min(r["miss_ratio"] for r in runs)
        assert row["modelled_us_per_access"] == min(r["modelled_us_per_access"] for r in runs)
    assert len(s["smallest_pool"]) == 4  # 2 capacities x 2 policies, each with 2 pools
    for p in s["smallest_pool"]:
        assert p["modelled_us_per_access"] <= p["best_us_per_access"] * 1.05
    assert {f.name for f in out.figures} >= {"mrc.png", "time.png", "density.png",
                                             "occupancy.png", "pools.png"}
    html = write_report(tmp_path / "o").read_text()
    assert html.count("data:image/png;base64,") == len(out.figures)
    assert "t.txt" in html and "Best policy per capacity" in html
    assert not re.search(r"""(src|href)=['"](?!data:)""", html)  # self-contained


@pytest.mark.parametrize("backend", sorted(available_backends()))
def test_writeback_experiment_models_hold_their_invariants(backend: str) -> None:
    reqs = list(generate("shift", 6000, 4, pages=3000, wss=600, period=1500, step=150,
                         write_ratio=0.2))
    cfg = WritebackConfig(capacity=200, backend=backend, pool_bytes=48 * 4096, seed=1)
    res = run_writeback_experiment(reqs, cfg, CORPUS)  # check=True: every _check runs
    obj, page, real = res["modes"]
    assert (obj["mode"], page["mode"], real["mode"]) == ("object-lru", "page-lru",
                                                         "layer (real)")
    assert obj["lru_inversions"] == 0  # it always takes the coldest object
    assert obj["writebacks"] > 0 and page["writebacks"] > 0
    for m in (obj, page):
        assert m["stores"] == res["evictions"]
        # every refault of a stored page is served by exactly one tier
        assert m["refaults_compressed"] + m["refaults_disk"] == \
            obj["refaults_compressed"] + obj["refaults_disk"]


def test_page_of_names_the_page_of_every_object() -> None:
    from swapd.plugins import make_backend

    for name in available_backends():
        be = make_backend(name, max_pages=64)
        try:
            hs = [be.malloc(s) for s in (100, 200, 1500, 3000, 64, 900)]
            pages = {page_of(be, h) for h in hs}
            assert 1 <= len(pages) <= len(hs) and len(pages) <= be.total_pages()
        finally:
            be.close()


def test_sweep_replays_a_recorded_trace_over_backends_and_pools(tmp_path: Path) -> None:
    from swapd.cli import main
    from swapd.sim.trace import Request

    rows = []
    t = 0
    for rnd in range(3):  # touch, evict, fault back in: the daemon's event order
        for p in range(300):
            rows.append(Request(t, p, "w" if rnd == 0 else "r"))
            t += 1
        for p in range(300):
            rows.append(Request(t, p, "e"))
            t += 1
    trace = tmp_path / "rec.csv"
    write_trace(trace, rows)
    out = tmp_path / "o"
    assert main(["sim", "sweep", "--trace", str(trace), "--replay", "--backends", "zbud,zsmalloc",
                 "--pool-mib", "0.25,1", "--disk-mib", "8", "--no-progress", "--workers", "1",
                 "-o", str(out)]) == 0
    import json

    res = [r for r in json.loads((out / "sweep.json").read_text())["results"]]
    assert len(res) == 4 and {r["mode"] for r in res} == {"replay"}
    for r in res:
        assert r["evictions"] == 900 and not r["store_rejects"]  # one store per e row
        assert r["refaults"] == 600  # the r rows of stored pages
    assert main(["sim", "sweep", "--trace", str(trace), "--replay", "--capacities", "5",
                 "--backends", "zbud", "-o", str(tmp_path / "x")]) == 2
