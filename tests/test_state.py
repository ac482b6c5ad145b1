"""swapd.state: regions in real memfds, adoption by this and by a fresh process, refusal."""

from __future__ import annotations

import os
import random
import struct
import subprocess
import sys
from collections.abc import Iterator

import pytest

from swapd.errors import InvariantError
from swapd.pages import PAGE_SIZE
from swapd.state import (
    ARRAYS_OFF,
    HEADER_BYTES,
    LAYOUT_VERSION,
    MAGIC,
    ArraySpec,
    StateFormatError,
    StateRegion,
)

SPECS = [ArraySpec("words", "Q", 1 << 16), ArraySpec("recs", "I", 1000, 16),
         ArraySpec("pages", "B", 64, PAGE_SIZE)]


@pytest.fixture
def region() -> Iterator[StateRegion]:
    r = StateRegion.create("test", 3, SPECS, ["top", "n"])
    yield r
    r.close()


def test_header_fields_are_where_the_format_says(region: StateRegion) -> None:
    hdr = os.pread(region.fd, HEADER_BYTES, 0)
    magic, version, hbytes, psize, narrays, nscalars = struct.unpack_from("<8sIIIHH", hdr)
    assert (magic, version, hbytes, psize, narrays, nscalars) == (
        MAGIC, LAYOUT_VERSION, HEADER_BYTES, PAGE_SIZE, 3, 2)
    assert hdr[24:40].rstrip(b"\0") == b"test" and struct.unpack_from("<I", hdr, 40)[0] == 3
    name, fmt, rs, off, cap, count = struct.unpack_from("<16s4sIQQQ", hdr, ARRAYS_OFF + 64)
    assert (name.rstrip(b"\0"), fmt.rstrip(b"\0"), rs, cap, count) == (b"recs", b"I", 16, 1000, 0)
    assert off == HEADER_BYTES + 8 * (1 << 16) and off == region.offset("recs")
    region.set_count("recs", 7)
    assert struct.unpack_from("<Q", os.pread(region.fd, 8, ARRAYS_OFF + 64 + 40))[0] == 7
    region.set("n", 99)
    assert struct.unpack_from("<16sQ", os.pread(region.fd, 24, 64 + 24))[1] == 99


def test_views_never_move_and_the_file_grows(region: StateRegion) -> None:
    w = region.view("words")
    assert len(w) == 1 << 16 and w.format == "Q"
    assert os.fstat(region.fd).st_size == HEADER_BYTES
    region.set_count("words", 5000)
    assert os.fstat(region.fd).st_size >= HEADER_BYTES + 5000 * 8
    w[4999] = (1 << 64) - 1
    assert region.view("words")[4999] == (1 << 64) - 1
    recs = region.view("recs")
    region.set_count("recs", 3)
    recs[2 * 4 + 3] = 0xDEADBEEF  # record 2, field 3
    assert os.pread(region.fd, 4, region.offset("recs") + 2 * 16 + 12) == b"\xef\xbe\xad\xde"
    region._check()


def test_release_punches_and_zeroes(region: StateRegion) -> None:
    region.set_count("pages", 8)
    pages = region.mmap_of("pages")
    for i in range(8):
        pages[i * PAGE_SIZE:(i + 1) * PAGE_SIZE] = bytes([i + 1]) * PAGE_SIZE
    held = region.allocated_bytes()
    region.release("pages", 2, 4)
    assert region.allocated_bytes() == held - 4 * PAGE_SIZE
    assert pages[2 * PAGE_SIZE:6 * PAGE_SIZE] == bytes(4 * PAGE_SIZE)
    assert pages[PAGE_SIZE] == 2 and pages[6 * PAGE_SIZE] == 7
    w = region.view("words")
    region.set_count("words", 2000)
    for i in range(2000):
        w[i] = i + 1
    region.release("words", 10, 1500)  # partial pages at both edges are zeroed
    assert w[9] == 10 and w[1510] == 1511 and not any(w[10:1510])


def test_adopt_in_a_fresh_process_reads_what_was_written(region: StateRegion) -> None:
    rng = random.Random(8)
    w = region.view("words")
    region.set_count("words", 3000)
    vals = [rng.getrandbits(64) for _ in range(3000)]
    for i, v in enumerate(vals):
        w[i] = v
    region.set("top", 3000)
    region.set_count("pages", 1)
    region.mmap_of("pages")[:5] = b"hello"
    fd = os.dup(region.fd)
    code = (
        "import sys, hashlib\n"
        "from swapd.state import StateRegion\n"
        f"r = StateRegion.adopt({fd}, 'test', 3, writable=False)\n"
        "w = r.view('words')\n"
        "print(r.get('top'), r.count('words'), hashlib.sha256(w[:r.count('words')]).hexdigest(),"
        " bytes(r.mmap_of('pages')[:5]).decode())\n"
        "r._check(); r.close()\n"
    )
    try:
        out = subprocess.run([sys.executable, "-c", code], pass_fds=[fd], check=True,
                             capture_output=True, text=True).stdout.split()
    finally:
        os.close(fd)
    import hashlib

    want = hashlib.sha256(struct.pack(f"<{len(vals)}Q", *vals)).hexdigest()
    assert out == ["3000", "3000", want, "hello"]


def test_writable_adoption_keeps_growing(region: StateRegion) -> None:
    region.set_count("words", 10)
    region.view("words")[9] = 42
    other = StateRegion.adopt(os.dup(region.fd), "test", 3)
    try:
        assert other.view("words")[9] == 42 and other.count("words") == 10
        other.set_count("words", 60000)
        other.view("words")[59999] = 7
        assert region.view("words")[59999] == 7  # one file, two mappings
        other._check()
    finally:
        other.close()


@pytest.mark.parametrize("offset, raw, match", [
    (0, b"NOTSWAPD", "magic"),
    (8, struct.pack("<I", LAYOUT_VERSION + 1), "layout version"),
    (16, struct.pack("<I", 8192), "page size"),
    (40, struct.pack("<I", 4), "kind version"),
    (ARRAYS_OFF + 16, b"Z\0\0\0", "format"),
    (ARRAYS_OFF + 24, struct.pack("<Q", HEADER_BYTES + 8), "does not fit"),
])
def test_a_header_it_cannot_read_is_refused_by_name(region: StateRegion, offset: int,
                                                    raw: bytes, match: str) -> None:
    os.pwrite(region.fd, raw, offset)
    fd = os.dup(region.fd)
    try:
        with pytest.raises(StateFormatError, match=match):
            StateRegion.adopt(fd, "test", 3)
    finally:
        os.close(fd)
    with pytest.raises(InvariantError):
        region._check()


def test_wrong_kind_short_file_and_missing_names_are_refused(region: StateRegion) -> None:
    fd = os.dup(region.fd)
    try:
        with pytest.raises(StateFormatError, match="kind 'test', expected 'table'"):
            StateRegion.adopt(fd, "table", 3)
    finally:
        os.close(fd)
    with pytest.raises(StateFormatError, match="no array 'nope'"):
        region.view("nope")
    with pytest.raises(StateFormatError, match="no scalar 'nope'"):
        region.get("nope")
    fd = os.memfd_create("short")
    try:
        with pytest.raises(StateFormatError, match="shorter than"):
            StateRegion.adopt(fd, "test", 3)
    finally:
        os.close(fd)


def test_capacity_and_bad_specs(region: StateRegion) -> None:
    with pytest.raises(MemoryError):
        region.set_count("recs", 1001)
    with pytest.raises(ValueError, match="format"):
        StateRegion.create("x", 1, [ArraySpec("a", "d", 1)])
    with pytest.raises(ValueError, match="record size"):
        StateRegion.create("x", 1, [ArraySpec("a", "Q", 1, 12)])
    with pytest.raises(ValueError, match="ASCII"):
        StateRegion.create("a-kind-name-that-is-too-long", 1, [])
