"""``swapd sim sweep --scheduler ADDRESS`` runs the jobs on a Dask distributed cluster and
writes the same results as the local process pool (the ``distributed`` extra)."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import pytest

from swapd.cli import main
from swapd.sim.gen import generate
from swapd.sim.trace import write_trace

distributed = pytest.importorskip("distributed", reason="the distributed extra is not installed")


@pytest.fixture(scope="module")
def cluster() -> Any:
    """A local cluster of two worker processes, stopped at the end."""
    lc = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None, host="127.0.0.1")
    try:
        yield lc
    finally:
        lc.close()


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
@pytest.mark.parametrize("ship", [False, True])
def test_sweep_on_a_cluster_equals_the_local_sweep(cluster: Any, tmp_path: Path,
                                                   ship: bool) -> None:
    trace = tmp_path / "t.txt"
    write_trace(trace, generate("mix", 4000, 3, parts="zipf:3/pages=400,loop:1/pages=150"))
    common = ["sim", "sweep", "--trace", str(trace), "--policies", "lru,s3fifo",
              "--capacities", "40,120", "--backends", "zbud", "--pool-mib", "0.25",
              "--disk-mib", "8", "--no-progress", "--no-plots"]
    assert main([*common, "-o", str(tmp_path / "local"), "--workers", "1"]) == 0
    remote = [*common, "-o", str(tmp_path / "dask"), "--scheduler", cluster.scheduler_address]
    assert main([*remote, "--ship-trace"] if ship else remote) == 0
    a, b = _rows(tmp_path / "local" / "sweep.csv"), _rows(tmp_path / "dask" / "sweep.csv")
    assert len(a) == len(b) == 2 + 4  # Mattson points + 2 policies x 2 capacities
    assert a == b


def test_an_unreachable_scheduler_is_one_error_line(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    trace = tmp_path / "t.txt"
    write_trace(trace, generate("loop", 100, 0, pages=10))
    assert main(["sim", "sweep", "--trace", str(trace), "--capacities", "5", "--no-progress",
                 "--no-plots", "-o", str(tmp_path / "o"), "--scheduler",
                 "tcp://127.0.0.1:9"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: cannot reach the Dask scheduler"), err
