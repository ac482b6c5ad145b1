"""Disk faults cost only the pages they touch (issue 13, item 4), injected through a real file
system: a FUSE file system served by this process (swapd/kernel/fuse.py) that answers EIO on
chosen reads and writes, runs out of space, or has its bytes changed behind the reader's back.

Deterministic: pages from a seeded ``random.Random``; the layer's clock is injected.  Every test
unmounts what it mounted.
"""

from __future__ import annotations

import json
import logging
import os
import random
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from swapd.arena import PAGE_SIZE
from swapd.errors import ConfigError, CorruptPageError, TierIOError
from swapd.kernel.fuse import FaultFS, fuse_unavailable
from swapd.layer import CompressedTier, DiskTier, EntryState, LayerConfig, SwapLayer, TierLimits
from swapd.plugins import make_backend
from tests.test_daemon_helpers import BASE_CONFIG, ROOT, daemon_running, needs_uffd

pytestmark = pytest.mark.skipif(fuse_unavailable() is not None, reason=str(fuse_unavailable()))


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def fs(tmp_path: Path) -> Iterator[FaultFS]:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    f = FaultFS(mnt, capacity=64 << 20)
    try:
        yield f
    finally:
        f.close()


def _pages(seed: int, n: int) -> list[bytes]:
    rng = random.Random(seed)
    return [((b"page %d " % i + rng.randbytes(16)) * PAGE_SIZE)[:PAGE_SIZE] for i in range(n)]


def _layer(fs: FaultFS, clock: Clock, disk_pages: int = 256, **disk: object) -> SwapLayer:
    tiers = [CompressedTier("lz4", make_backend("zsmalloc", max_pages=4096),
                            TierLimits(ram_total_bytes=1 << 30)),
             DiskTier(fs.mountpoint, disk_pages * PAGE_SIZE, seal=True, **disk)]  # type: ignore[arg-type]
    return SwapLayer(tiers, config=LayerConfig(pool_limit_bytes=1 << 30), clock=clock)


def test_no_room_is_found_at_start(fs: FaultFS) -> None:
    fs.capacity = 1 << 20
    with pytest.raises(ConfigError, match="cannot allocate 2097152 bytes"):
        DiskTier(fs.mountpoint, 512 * PAGE_SIZE)
    assert fs.files() == []  # nothing left behind
    dt = DiskTier(fs.mountpoint, 128 * PAGE_SIZE)
    try:
        assert dt.preallocated and fs.used() == 128 * PAGE_SIZE
    finally:
        dt.close()


def test_failed_read_costs_that_page_only(fs: FaultFS) -> None:
    clock = Clock()
    lay = _layer(fs, clock)
    try:
        r = lay.add_region("a", 16)
        pages = _pages(1, 16)
        for i, pg in enumerate(pages):
            lay.store(r, i, pg)
        assert lay.writeback(16) == 16
        disk = lay._tiers[1]
        assert isinstance(disk, DiskTier)
        slot = next(k for k in range(16) if disk.is_used(k))
        fs.fail_reads = {slot * PAGE_SIZE}
        bad = []
        for i in range(16):
            try:
                assert lay.load(r, i) == pages[i]
            except TierIOError:
                bad.append(i)
        assert len(bad) == 1
        assert lay.state(r, bad[0]) is EntryState.DISK  # kept: poisoned by the daemon, not zeros
        lay._check()
    finally:
        lay.close()


def test_failed_write_keeps_entries_and_backs_off(fs: FaultFS) -> None:
    clock = Clock()
    lay = _layer(fs, clock)
    try:
        r = lay.add_region("a", 32)
        pages = _pages(2, 32)
        for i, pg in enumerate(pages):
            lay.store(r, i, pg)
        fs.fail_writes = True
        assert lay.writeback(32) == 0
        writes = fs.writes
        for _ in range(50):  # no busy loop: no write reaches the disk while backing off
            assert lay.writeback(32) == 0
        assert fs.writes == writes
        st = lay.stats()
        assert st.writeback_io_errors == 1 and st.writeback_backoffs == 50
        assert all(lay.state(r, i) is EntryState.COMPRESSED for i in range(32))
        fs.fail_writes = False
        clock.now += 60.0
        assert lay.writeback(32) == 32  # the disk is back: writeback resumes
        assert [lay.load(r, i) for i in range(32)] == pages
        lay._check()
    finally:
        lay.close()


def test_full_disk_stops_writeback_with_a_counter_and_a_log_line(
        fs: FaultFS, caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    fs.fallocate_ok = False  # a file system without fallocate: the file stays sparse
    fs.capacity = 8 * PAGE_SIZE
    lay = _layer(fs, clock, disk_pages=64)
    try:
        r = lay.add_region("a", 32)
        pages = _pages(3, 32)
        for i, pg in enumerate(pages):
            lay.store(r, i, pg)
        with caplog.at_level(logging.WARNING, logger="swapd.layer.core"):
            written = sum(lay.writeback(8) for _ in range(10))
        assert written == 8  # what fit; then ENOSPC
        st = lay.stats()
        assert st.writeback_disk_full == 1 and st.writeback_backoffs > 0
        assert sum("disk tier full: writeback stopped" in m for m in caplog.messages) == 1
        assert [lay.load(r, i) for i in range(32)] == pages  # nothing lost
        lay._check()
    finally:
        lay.close()


def test_corrupted_bytes_on_disk_are_detected(fs: FaultFS) -> None:
    clock = Clock()
    lay = _layer(fs, clock)
    try:
        r = lay.add_region("a", 8)
        pages = _pages(4, 8)
        for i, pg in enumerate(pages):
            lay.store(r, i, pg)
        assert lay.writeback(8) == 8
        [name] = fs.files()
        fs.corrupt(name, 3 * PAGE_SIZE + 77, b"\x00\x01")
        results = []
        for i in range(8):
            try:
                results.append(lay.load(r, i) == pages[i])
            except CorruptPageError:
                results.append(None)
        assert results.count(None) == 1 and all(x for x in results if x is not None)
    finally:
        lay.close()


_POISON_CLIENT = """
import json, os, random, sys
from swapd.client import connect
c = connect(sys.argv[1], name="disk-victim")
c.set_limit(16 * 4096)
n = 256
r = c.map(n * 4096)
def page(i):
    return random.Random(i).randbytes(4096)  # incompressible: the small pool overflows to disk
for i in range(n):
    r[i * 4096:(i + 1) * 4096] = page(i)
r.advise(0, n * 4096, "cold")
print(json.dumps({"layer": c.stats()["layer"]}), flush=True)
sys.stdin.readline()  # the test injects the fault now
# read every page through a system call: a poisoned page is EFAULT there (SIGBUS for a load)
scratch = os.memfd_create("scratch")
view = memoryview(r)
poisoned, bad = [], []
for i in range(n):
    try:
        os.pwrite(scratch, view[i * 4096:(i + 1) * 4096], 0)
    except OSError:
        poisoned.append(i)
        continue
    if os.pread(scratch, 4096, 0) != page(i):
        bad.append(i)
view.release()
st = c.stats()
print(json.dumps({"efault": poisoned, "bad": bad,
                  "poisoned": st["counters"]["poisoned_pages"], "gone": st["pages"]["GONE"]}),
      flush=True)
"""


@needs_uffd
def test_daemon_poisons_only_the_page_whose_read_failed(fs: FaultFS, tmp_path: Path) -> None:
    work = tmp_path / "daemon"
    work.mkdir()
    cfg = BASE_CONFIG.replace('disk_bytes = "64M"', f'disk_bytes = "8M"\ndisk_path = '
                              f'"{fs.mountpoint}"').replace('pool_limit_bytes = "512K"',
                                                            'pool_limit_bytes = "64K"')
    with daemon_running(work, cfg) as d:
        p = subprocess.Popen([sys.executable, "-c", textwrap.dedent(_POISON_CLIENT),
                              str(d.socket)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             text=True, cwd=ROOT)
        try:
            assert p.stdout is not None and p.stdin is not None
            first = json.loads(p.stdout.readline())
            assert first["layer"]["disk_pages"] > 0, first
            fs.fail_reads = {0}  # slot 0: the first page written back
            p.stdin.write("go\n")
            p.stdin.flush()
            out = json.loads(p.stdout.readline())
            assert p.wait(60) == 0
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
        assert fs.failed_reads >= 1
        assert out["poisoned"] == 1 and out["gone"] == 1 and len(out["efault"]) == 1, out
        assert out["bad"] == []  # every other page, on disk or not, read back intact
    assert os.listdir(fs.mountpoint) == []
