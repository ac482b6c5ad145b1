"""Corpus files, the synthetic mix, and capture from live processes (root)."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import lz4.block
import pytest

from swapd.arena import PAGE_SIZE
from swapd.cli import main as swapd_main
from swapd.compress import same_filled_value
from swapd.corpus import (
    MAGIC,
    SYNTHETIC_MIX,
    CaptureStats,
    Corpus,
    capture,
    capture_pages,
    private_anon_mappings,
    write_corpus,
)
from swapd.errors import CaptureError, CorpusFormatError

needs_root = pytest.mark.skipif(os.geteuid() != 0,
                                reason="capture reads /proc/PID/mem and pagemap PFNs: needs root")


def _pages(n: int, seed: int = 0) -> list[bytes]:
    return list(Corpus.synthetic(n, seed))


# -- file format ----------------------------------------------------------------------------


def test_write_and_open_round_trip(tmp_path: Path) -> None:
    pages = _pages(50)
    out = tmp_path / "c.corpus"
    assert write_corpus(out, iter(pages), {"source": "test", "pids": [1, 2]}) == 50
    with Corpus.open(out) as c:
        c._check()
        assert len(c) == 50
        assert c.meta["source"] == "test" and c.meta["pids"] == [1, 2]
        assert list(c) == pages
        assert c.page(0) == pages[0] and c.page(-1) == pages[-1]
        assert all(len(c.page(i)) == PAGE_SIZE for i in range(50))
        with pytest.raises(IndexError):
            c.page(50)
        with pytest.raises(IndexError):
            c.page(-51)


def test_header_layout(tmp_path: Path) -> None:
    out = tmp_path / "c.corpus"
    write_corpus(out, _pages(3), {"source": "x"})
    raw = out.read_bytes()
    magic, version, meta_len, npages, offset = struct.unpack_from("<8sIIQQ", raw)
    assert magic == MAGIC == b"SWPDCORP"
    assert version == 1 and npages == 3
    assert offset % PAGE_SIZE == 0 and offset >= 32 + meta_len
    assert len(raw) == offset + 3 * PAGE_SIZE
    assert raw[32:32 + meta_len].startswith(b"{")


def test_empty_corpus(tmp_path: Path) -> None:
    out = tmp_path / "e.corpus"
    write_corpus(out, [], {"source": "empty"})
    with Corpus.open(out) as c:
        assert len(c) == 0 and list(c) == []


def test_truncated_file_is_rejected(tmp_path: Path) -> None:
    out = tmp_path / "c.corpus"
    write_corpus(out, _pages(4), {})
    with open(out, "r+b") as f:
        f.truncate(out.stat().st_size - 100)
    with pytest.raises(CorpusFormatError, match="truncated"):
        Corpus.open(out)


@pytest.mark.parametrize("damage", ["magic", "version", "short"])
def test_not_a_corpus(tmp_path: Path, damage: str) -> None:
    out = tmp_path / "c.corpus"
    write_corpus(out, _pages(2), {})
    raw = bytearray(out.read_bytes())
    if damage == "magic":
        raw[:8] = b"NOTACORP"
    elif damage == "version":
        raw[8:12] = struct.pack("<I", 99)
    else:
        raw = raw[:10]
    out.write_bytes(raw)
    with pytest.raises(CorpusFormatError):
        Corpus.open(out)


def test_write_is_atomic(tmp_path: Path) -> None:
    out = tmp_path / "c.corpus"
    write_corpus(out, _pages(5), {"v": 1})

    def failing() -> Iterator[bytes]:
        yield bytes(PAGE_SIZE)
        raise RuntimeError("capture died")

    with pytest.raises(RuntimeError):
        write_corpus(out, failing(), {"v": 2})
    with pytest.raises(CorpusFormatError):
        write_corpus(out, [b"short page"], {"v": 3})
    with Corpus.open(out) as c:  # the old file, untouched
        assert c.meta == {"v": 1} and len(c) == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.corpus"]  # no temp files left


# -- synthetic --------------------------------------------------------------------------------


def test_synthetic_is_deterministic() -> None:
    assert _pages(64, seed=3) == _pages(64, seed=3)
    assert _pages(64, seed=3) != _pages(64, seed=4)
    c = Corpus.synthetic(10, seed=9)
    assert c.meta["source"] == "synthetic" and c.meta["seed"] == 9
    assert all(len(p) == PAGE_SIZE for p in c)


def test_synthetic_mix_matches_its_documentation() -> None:
    n = 3000
    c = Corpus.synthetic(n, seed=1)
    kinds = c.meta["kinds"]
    assert sum(kinds.values()) == n
    for kind, weight in SYNTHETIC_MIX:
        assert abs(kinds[kind] - n * weight / 100) < 0.25 * n * weight / 100 + 20, kind
    pages = list(c)
    zero = sum(p == bytes(PAGE_SIZE) for p in pages)
    same = sum(same_filled_value(p) is not None for p in pages)
    assert zero >= kinds["zero"]
    assert same >= kinds["zero"] + kinds["same_filled"]
    incompressible = sum(len(lz4.block.compress(p, store_size=False)) >= PAGE_SIZE
                         for p in pages)
    assert abs(incompressible - kinds["random"]) <= 0.02 * n


# -- capture (root) ----------------------------------------------------------------------------

_TARGET = r"""
import mmap, sys
marked = mmap.mmap(-1, 64 * 4096, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
for i in range(64):
    marked[i * 4096:(i + 1) * 4096] = (b"QAMARK%04d" % i) * 409 + b"......"
untouched = mmap.mmap(-1, 512 * 4096, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
readonly = mmap.mmap(-1, 32 * 4096, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
s = sum(readonly[i * 4096] for i in range(32))  # read faults: the shared zero page
f = open(sys.argv[1], "r+b")
filemap = mmap.mmap(f.fileno(), 16 * 4096, flags=mmap.MAP_PRIVATE)
_ = filemap[0]
print("ready", flush=True)
sys.stdin.read()
"""


@pytest.fixture
def target(tmp_path: Path) -> Iterator[int]:
    """A process with a marked anonymous mapping, an untouched one, a read-only-faulted
    one, and a file-backed mapping full of FILEBACKED."""
    backing = tmp_path / "file"
    backing.write_bytes(b"FILEBACKED" * (16 * PAGE_SIZE // 10 + 1))
    proc = subprocess.Popen([sys.executable, "-c", _TARGET, str(backing)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
        yield proc.pid
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()


@needs_root
def test_mappings_are_private_anonymous(target: int) -> None:
    maps = private_anon_mappings(target)
    names = {m.name for m in maps}
    assert "[heap]" in names or "[anon]" in names
    assert not any(n.startswith("/") for n in names)
    assert not names & {"[vvar]", "[vdso]", "[vsyscall]", "[vvar_vclock]"}
    assert all(m.perms[0] == "r" and m.perms[3] == "p" for m in maps)


@needs_root
def test_capture_pid_takes_present_anonymous_pages_only(target: int) -> None:
    st = CaptureStats()
    pages = list(capture_pages([target], 1 << 20, st))
    want = {(b"QAMARK%04d" % i) * 409 + b"......" for i in range(64)}
    marked = [p for p in pages if p in want]
    assert len(marked) == 64 and set(marked) == want  # each marked page exactly once
    assert not any(b"FILEBACKED" in p for p in pages)
    assert st.not_present >= 512  # the untouched mapping was not faulted in
    assert st.zero_pfn >= 32  # read-faulted pages map the zero page: skipped
    assert st.pages == len(pages)


@needs_root
def test_capture_respects_the_cap(target: int) -> None:
    pages = list(capture_pages([target], 10))
    assert len(pages) == 10


@needs_root
def test_capture_of_a_missing_pid() -> None:
    with pytest.raises(CaptureError, match="no process"):
        list(capture_pages([2 ** 22 + 7], 10))


@needs_root
def test_capture_builtin_workload(tmp_path: Path) -> None:
    out = tmp_path / "w.corpus"
    with capture(out, None, mib=4, seed=1) as c:
        assert 0 < len(c) <= 4 * 256
        assert c.meta["source"] == "workload"
        pid = c.meta["pids"][0]
        sizes = [len(lz4.block.compress(p, store_size=False)) for p in c]
        # Heap pages: mostly compressible, not all trivial.
        assert sorted(sizes)[len(sizes) // 2] < 3000
        assert sum(s > 64 for s in sizes) > len(sizes) // 2
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # the workload was stopped and reaped


# -- command line --------------------------------------------------------------------------------


def test_cli_synthetic(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "s.corpus"
    assert swapd_main(["corpus", "capture", str(out), "--synthetic", "--mib", "1"]) == 0
    with Corpus.open(out) as c:
        assert len(c) == 256 and c.meta["source"] == "synthetic"
    assert swapd_main(["corpus", "info", str(out)]) == 0
    assert '"pages": 256' in capsys.readouterr().out


@needs_root
def test_cli_capture_pid(tmp_path: Path, target: int) -> None:
    out = tmp_path / "p.corpus"
    assert swapd_main(["corpus", "capture", str(out), "--pid", str(target), "--mib", "1"]) == 0
    with Corpus.open(out) as c:
        assert c.meta["pids"] == [target] and c.meta["source"] == "capture"
        assert 0 < len(c) <= 256


def test_cli_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = swapd_main(["corpus", "capture", str(tmp_path / "x"), "--pid", str(2 ** 22 + 7)])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: ") and err.count("\n") == 1
    assert swapd_main(["corpus", "info", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot open corpus") and err.count("\n") == 1
