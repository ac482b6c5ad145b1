"""Trace formats: round trips, detection, malformed input, and the generators."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from swapd.errors import ConfigError, TraceFormatError
from swapd.sim.gen import GENERATORS, generate
from swapd.sim.trace import (
    ORACLE_RECORD,
    Request,
    detect_format,
    next_access_vtimes,
    read_pages,
    read_trace,
    write_trace,
)


def _reqs(n: int = 500, seed: int = 3) -> list[Request]:
    return list(generate("zipf", n, seed, pages=200, alpha=0.8, write_ratio=0.3))


def test_csv_round_trip_keeps_every_field(tmp_path: Path) -> None:
    reqs = _reqs()
    reqs[5] = Request(1.5, 2**64 - 1, "w", 8192)  # float time, largest id, odd size
    p = tmp_path / "t.csv"
    assert write_trace(p, reqs) == len(reqs)
    assert list(read_trace(p)) == reqs
    assert list(read_pages(p)) == [r.page for r in reqs]


def test_eviction_rows_are_events_skipped_unless_asked(tmp_path: Path) -> None:
    """``swapd serve --record`` writes the daemon's evictions as op ``e``: kept in the
    file, skipped by replays (the simulated policy makes its own decisions)."""
    p = tmp_path / "rec.csv"
    p.write_text("time,page,op,size\n0,7,w,4096\n5,7,e,4096\n9,7,r,4096\n")
    assert list(read_trace(p)) == [Request(0, 7, "w"), Request(9, 7, "r")]
    assert list(read_pages(p)) == [7, 7]
    events = list(read_trace(p, events=True))
    assert [r.op for r in events] == ["w", "e", "r"]
    q = tmp_path / "copy.csv"
    assert write_trace(q, events) == 3
    assert list(read_trace(q, events=True)) == events


def test_text_round_trip_keeps_pages(tmp_path: Path) -> None:
    reqs = _reqs()
    p = tmp_path / "t.txt"
    write_trace(p, reqs)
    back = list(read_trace(p))
    assert [r.page for r in back] == [r.page for r in reqs]
    assert [r.time for r in back] == list(range(len(reqs)))  # virtual time
    assert all(r.op == "r" and r.size == 4096 for r in back)


def test_oracle_general_round_trip_and_layout(tmp_path: Path) -> None:
    reqs = [Request(t, pg, "r", 4096) for t, pg in enumerate([7, 9, 7, 2**63 + 5, 9, 7])]
    p = tmp_path / "t.oracleGeneral"
    write_trace(p, reqs)
    raw = p.read_bytes()
    assert len(raw) == 24 * len(reqs)
    recs = list(ORACLE_RECORD.iter_unpack(raw))
    # next_access_vtime: 1-based index of the next request to the same object, -1 if none
    assert [r[3] for r in recs] == [3, 5, 6, -1, -1, -1]
    assert recs[3][1] == 2**63 + 5
    assert list(read_trace(p)) == reqs


def test_oracle_general_skips_zero_size_records(tmp_path: Path) -> None:
    p = tmp_path / "z.bin"
    p.write_bytes(ORACLE_RECORD.pack(0, 1, 4096, -1) + ORACLE_RECORD.pack(1, 2, 0, -1)
                  + ORACLE_RECORD.pack(2, 3, 100, -1))
    assert list(read_pages(p)) == [1, 3]


def test_next_access_vtimes() -> None:
    assert next_access_vtimes([1, 2, 1, 1, 3]) == [3, -1, 4, -1, -1]
    assert next_access_vtimes([]) == []


def test_zst_round_trip(tmp_path: Path) -> None:
    pytest.importorskip("zstandard", reason="the zstd extra is not installed")
    reqs = _reqs(200)
    p = tmp_path / "t.oracleGeneral.zst"
    write_trace(p, reqs)
    assert detect_format(p) == "oracleGeneral"
    assert [r.page for r in read_trace(p)] == [r.page for r in reqs]


@pytest.mark.parametrize("fmt", ["text", "csv", "oracleGeneral"])
def test_detection_by_content(tmp_path: Path, fmt: str) -> None:
    p = tmp_path / "trace.data"
    write_trace(p, _reqs(50), fmt)
    assert detect_format(p) == fmt
    assert [r.page for r in read_trace(p)] == [r.page for r in _reqs(50)]


def test_csv_header_may_reorder_and_omit_columns(tmp_path: Path) -> None:
    p = tmp_path / "r.csv"
    p.write_text("# recorded by hand\npage,op,time\n5,w,0.5\n6,r,1\n\n7,,2\n")
    assert list(read_trace(p)) == [Request(0.5, 5, "w"), Request(1, 6, "r"), Request(2, 7, "r")]


def test_explicit_format_overrides_detection(tmp_path: Path) -> None:
    p = tmp_path / "x.csv"
    p.write_text("1\n2\n3\n")
    assert list(read_pages(p, "text")) == [1, 2, 3]
    with pytest.raises(ConfigError, match="unknown trace format"):
        read_pages(p, "parquet")


@pytest.mark.parametrize(("name", "content", "fmt", "record", "reason"), [
    ("bad.txt", "1\n2\nthree\n", "text", 3, "not an integer"),
    ("neg.txt", "1\n-4\n", "text", 2, "outside"),
    ("big.txt", f"{2**64}\n", "text", 1, "outside"),
    ("op.csv", "time,page,op,size\n0,1,r,4096\n1,2,x,4096\n", "csv", 3, "op 'x'"),
    ("short.csv", "0,1,r,4096\n5\n", "csv", 2, "at least 2 fields"),
    ("time.csv", "0,1\nnow,2\n", "csv", 2, "time 'now'"),
    ("size.csv", "0,1,r,0\n", "csv", 1, "size 0"),
    ("nohdr.csv", "page,op\n1,r\n", "csv", 1, "lacks the time column"),
])
def test_malformed_text_traces_name_file_record_reason(tmp_path: Path, name: str, content: str,
                                                       fmt: str, record: int,
                                                       reason: str) -> None:
    p = tmp_path / name
    p.write_text(content)
    with pytest.raises(TraceFormatError, match=reason) as ei:
        list(read_trace(p, fmt))
    assert ei.value.path == str(p)
    assert ei.value.record == record
    assert str(p) in str(ei.value) and f"record {record}" in str(ei.value)


def test_truncated_oracle_record(tmp_path: Path) -> None:
    p = tmp_path / "cut.oracleGeneral"
    p.write_bytes(ORACLE_RECORD.pack(0, 1, 4096, -1) * 3 + b"\x01" * 10)
    with pytest.raises(TraceFormatError, match="truncated record: 10 of 24") as ei:
        list(read_trace(p))
    assert ei.value.record == 4


def test_bad_oracle_next_access(tmp_path: Path) -> None:
    p = tmp_path / "n.bin"
    p.write_bytes(ORACLE_RECORD.pack(0, 1, 4096, -1) + struct.pack("<IQIq", 1, 1, 4096, -7))
    with pytest.raises(TraceFormatError) as ei:
        list(read_trace(p))
    assert ei.value.record == 2 and "below -1" in ei.value.reason


def test_non_utf8_text_is_a_format_error(tmp_path: Path) -> None:
    p = tmp_path / "b.txt"
    p.write_bytes(b"1\n2\n\xff\xfe\n")
    with pytest.raises(TraceFormatError, match="UTF-8") as ei:
        list(read_trace(p, "text"))
    assert ei.value.record == 3


def test_write_rejects_values_the_format_cannot_hold(tmp_path: Path) -> None:
    with pytest.raises(TraceFormatError, match="u32"):
        write_trace(tmp_path / "t.oracleGeneral", [Request(2**32, 1)])
    with pytest.raises(TraceFormatError, match="op"):
        write_trace(tmp_path / "t.csv", [Request(0, 1, "x")])


# -- generators ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(GENERATORS))
def test_generators_are_deterministic_from_the_seed(kind: str) -> None:
    a = list(generate(kind, 3000, seed=11, write_ratio=0.2))
    b = list(generate(kind, 3000, seed=11, write_ratio=0.2))
    c = list(generate(kind, 3000, seed=12, write_ratio=0.2))
    assert a == b
    assert a != c  # the seed matters (writes at least)
    assert len(a) == 3000 and [r.time for r in a] == list(range(3000))
    assert {r.op for r in a} == {"r", "w"}


def test_zipf_is_skewed_and_in_range() -> None:
    reqs = list(generate("zipf", 20000, seed=1, pages=1000, alpha=1.2))
    pages = [r.page for r in reqs]
    assert min(pages) >= 0 and max(pages) < 1000
    counts = sorted((pages.count(p) for p in set(pages)), reverse=True)
    assert counts[0] > 10 * (20000 / 1000)  # the top page is far above uniform


def test_loop_and_scan_shapes() -> None:
    assert [r.page for r in generate("loop", 7, pages=3)] == [0, 1, 2, 0, 1, 2, 0]
    reqs = [r.page for r in generate("scan", 60, seed=0, hot=5, cold=100, scan_len=10,
                                     scan_every=20)]
    assert all(p < 5 for p in reqs[:20])
    assert reqs[20:30] == list(range(5, 15))  # a sequential scan of the cold region
    assert reqs[50:60] == list(range(15, 25))  # the next scan continues
    sh = [r.page for r in generate("shift", 400, seed=0, pages=1000, wss=10, period=100,
                                   step=50)]
    assert all(0 <= p < 10 for p in sh[:100]) and all(50 <= p < 60 for p in sh[100:200])


def test_generator_errors() -> None:
    with pytest.raises(ConfigError, match="unknown generator"):
        generate("pareto", 10)
    with pytest.raises(ConfigError, match="does not take"):
        generate("loop", 10, alpha=1.0)
    with pytest.raises(ConfigError, match="positive"):
        list(generate("zipf", 10, pages=0))
