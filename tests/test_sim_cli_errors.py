"""Every bad input to ``swapd sim`` is one ``error:`` line and exit 2, before any work starts
(nothing written, no job run)."""

from __future__ import annotations

from pathlib import Path

import pytest

from swapd.cli import main
from swapd.sim.gen import generate
from swapd.sim.trace import write_trace


@pytest.fixture(scope="module")
def trace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    p = tmp_path_factory.mktemp("t") / "z.txt"
    write_trace(p, generate("zipf", 2000, 1, pages=300))
    return p


def _fails(capsys: pytest.CaptureFixture[str], argv: list[str], *words: str) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    for w in words:
        assert w in err[0], err[0]


def test_sweep_output_onto_a_file(trace: Path, tmp_path: Path,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "file"
    f.write_text("x")
    _fails(capsys, ["sim", "sweep", "--trace", str(trace), "-o", str(f)], "not a directory")
    assert f.read_text() == "x"


def test_points_zero_is_refused_by_the_parser(trace: Path, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as ei:
        main(["sim", "sweep", "--trace", str(trace), "--points", "0", "-o", str(tmp_path / "o")])
    assert ei.value.code == 2
    assert "must be positive" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_empty_trace(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing\n")
    _fails(capsys, ["sim", "sweep", "--trace", str(empty), "-o", str(tmp_path / "o")],
           "no requests")
    _fails(capsys, ["sim", "--trace", str(empty), "--capacity", "5"], "no requests")
    _fails(capsys, ["sim", "mrc", "--trace", str(empty)], "no requests")
    assert not (tmp_path / "o").exists()


def test_unknown_policy_before_any_job(trace: Path, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    _fails(capsys, ["sim", "sweep", "--trace", str(trace), "--policies", "lru,bogus",
                    "-o", str(tmp_path / "o")], "bogus")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(("extra", "words"), [
    (["--param", "s3fifo.no_such=1"], ["no_such"]),
    (["--param", "lru.x=1"], ["lru"]),
    (["--param", "clock.bits=1,99"], ["bits"]),
    (["--backends", "nosuch"], ["nosuch"]),
    (["--backends", "zbud", "--backend-opt", "nope=1"], ["nope"]),
    (["--backends", "zsmalloc", "--backend-opt", "chain_size=x"], ["chain_size"]),
    (["--backends", "zbud", "--compressor", "lz4,rot13"], ["rot13"]),
    (["--backends", "zbud", "--pool-mib", "0"], ["--pool-mib"]),
    (["--backends", "zbud", "--disk-mib", "-1"], ["--disk-mib"]),
    (["--backends", "zbud", "--layer", "nope=1"], ["nope"]),
    (["--backends", "zbud", "--demotion", "nosuch"], ["nosuch"]),
    (["--backends", "zbud", "--costs", "/nonexistent/costs.json"], []),
    (["--pool-mib", "4"], ["full mode"]),
    (["--ship-trace"], ["--scheduler"]),
    (["--within", "-1"], ["--within"]),
])
def test_sweep_bad_inputs(trace: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                          extra: list[str], words: list[str]) -> None:
    out = tmp_path / "o"
    _fails(capsys, ["sim", "sweep", "--trace", str(trace), "--policies", "lru,s3fifo,clock",
                    "--capacities", "10,50", "--no-progress", "-o", str(out), *extra], *words)
    assert not (out / "sweep.json").exists()


@pytest.mark.parametrize(("extra", "words"), [
    (["--capacity", "10", "--backend-opt", "x=1"], ["full mode"]),
    (["--capacity", "10", "--backend", "zbud", "--backend-opt", "x=1"], ["x"]),
    (["--capacity", "10", "--param", "nope=1"], ["nope"]),
    (["--capacity", "10", "--policy", "nosuch"], ["nosuch"]),
    (["--replay"], ["--backend"]),
    (["--replay", "--backend", "zbud"], ["CSV"]),
])
def test_one_run_bad_inputs(trace: Path, capsys: pytest.CaptureFixture[str],
                            extra: list[str], words: list[str]) -> None:
    _fails(capsys, ["sim", "--trace", str(trace), *extra], *words)


def test_replay_of_a_trace_without_evictions(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    t = tmp_path / "t.csv"
    write_trace(t, generate("loop", 100, 0, pages=10))
    _fails(capsys, ["sim", "--trace", str(t), "--replay", "--backend", "zbud"], "no eviction")


def test_gen_and_report_bad_inputs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _fails(capsys, ["sim", "gen", "zipf", "--set", "nope=1", "-o", str(tmp_path / "g.txt")],
           "nope")
    _fails(capsys, ["sim", "gen", "mix", "--set", "parts=zipf:3,bogus:1",
                    "-o", str(tmp_path / "g.txt")], "bogus")
    _fails(capsys, ["sim", "gen", "zipf", "-o", str(tmp_path)], "directory")
    assert not (tmp_path / "g.txt").exists()
    _fails(capsys, ["sim", "report", str(tmp_path)], "sweep.json")
    _fails(capsys, ["sim", "writeback", "--trace", str(tmp_path / "none.txt"), "--capacity",
                    "5", "--backend", "zbud", "--pool-mib", "1"], "no such trace")
