"""The zram binding, run for real (root and a kernel with zram; skipped otherwise).

Writes a known mix of pages to a fresh lz4 zram device and checks the kernel's
``mm_stat`` against what was written, that every page reads back intact, and that
the device is gone (or reset) afterwards.
"""

from __future__ import annotations

import random
from pathlib import Path

import lz4.block
import pytest

from swapd.arena import PAGE_SIZE
from swapd.compress import fill_page, same_filled_value
from swapd.errors import ZramError
from swapd.kernel.zram import MmStat, ZramDevice, zram_unavailable_reason

REASON = zram_unavailable_reason()
needs_zram = pytest.mark.skipif(REASON is not None, reason=f"no usable zram: {REASON}")


def test_mm_stat_parse() -> None:
    m = MmStat.parse("  8192  1000  12288  0  12288  1  0  0  0\n")
    assert m.orig_data_size == 8192 and m.compr_data_size == 1000
    assert m.mem_used_total == 12288 and m.same_pages == 1 and m.huge_pages_since == 0
    old = MmStat.parse("4096 10 4096 0 4096 0 0 1")  # before 5.15: 8 fields
    assert old.huge_pages == 1 and old.huge_pages_since == 0
    with pytest.raises(ZramError):
        MmStat.parse("1 2 3")


def test_bad_disksize() -> None:
    with pytest.raises(ZramError):
        ZramDevice(1000)
    with pytest.raises(ZramError):
        ZramDevice(0)


def _mix(seed: int) -> tuple[list[bytes], int, int]:
    """Pages: 20 zero, 12 same-filled, 60 text-like, 16 random; returns (pages, same, rnd)."""
    rng = random.Random(seed)
    pages = [bytes(PAGE_SIZE)] * 20
    pages += [fill_page(rng.getrandbits(64) | 1) for _ in range(12)]
    words = [rng.randbytes(rng.randint(2, 8)).hex() for _ in range(200)]
    pages += [(" ".join(rng.choices(words, k=900)).encode() + bytes(PAGE_SIZE))[:PAGE_SIZE]
              for _ in range(60)]
    pages += [rng.randbytes(PAGE_SIZE) for _ in range(16)]
    rng.shuffle(pages)
    return pages, 32, 16


@needs_zram
def test_mm_stat_matches_what_was_written() -> None:
    pages, same, rnd = _mix(1)
    with ZramDevice(256 * PAGE_SIZE, "lz4") as z:
        name = z.name
        assert z.read_attr("comp_algorithm").split().count("[lz4]") == 1
        assert int(z.read_attr("disksize")) == 256 * PAGE_SIZE
        assert z.mm_stat().orig_data_size == 0
        assert z.write_pages(pages) == len(pages)
        m = z.mm_stat()
        assert m.orig_data_size == len(pages) * PAGE_SIZE
        assert m.same_pages == same
        assert m.huge_pages == rnd  # random pages do not compress: stored raw
        # The kernel's lz4 and Python's lz4.block agree on compressed sizes (within 2%).
        py = sum(len(c) if len(c) < 3000 else PAGE_SIZE
                 for c in (lz4.block.compress(p, store_size=False) for p in pages
                           if same_filled_value(p) is None))
        assert abs(m.compr_data_size - py) <= 0.02 * py
        assert m.mem_used_total >= m.compr_data_size - m.huge_pages * PAGE_SIZE
        for i, pg in enumerate(pages):
            assert z.read_page(i) == pg, f"page {i} read back wrong"
        # Overwriting pages with more data updates the counters.
        z.write_pages([bytes(PAGE_SIZE)] * 4, first=len(pages))
        assert z.mm_stat().same_pages == same + 4
    assert not Path(f"/sys/block/{name}").exists() or _is_reset(name)


def _is_reset(name: str) -> bool:
    base = Path("/sys/block") / name
    return (base / "initstate").read_text().strip() == "0" and \
        (base / "disksize").read_text().strip() == "0"


@needs_zram
def test_cleanup_on_error_and_reset() -> None:
    name = ""
    with pytest.raises(ZramError, match="beyond disksize"), ZramDevice(8 * PAGE_SIZE) as z:
        name = z.name
        z.write_pages([bytes(range(256)) * 16] * 8)
        z.write_pages([bytes(PAGE_SIZE)], first=8)
    assert name
    assert not Path(f"/sys/block/{name}").exists() or _is_reset(name)


@needs_zram
def test_reset_frees_everything() -> None:
    with ZramDevice(64 * PAGE_SIZE) as z:
        z.write_pages([random.Random(2).randbytes(PAGE_SIZE)] * 10)
        assert z.mm_stat().orig_data_size == 10 * PAGE_SIZE
        z.reset()
        assert z.read_attr("initstate") == "0"
        assert z.mm_stat() == MmStat(0, 0, 0, 0, 0, 0, 0, 0, 0)
        with pytest.raises(ZramError, match="not open"):
            z.write_pages([bytes(PAGE_SIZE)])


@needs_zram
def test_existing_devices_are_left_alone() -> None:
    before = {p.name for p in Path("/sys/block").glob("zram*")}
    with ZramDevice(16 * PAGE_SIZE) as z:
        name = z.name
        if z.hot_added:
            assert name not in before  # a device of our own, never one in use
        z.write_pages([bytes(PAGE_SIZE)])
    if name not in before:
        assert not Path(f"/sys/block/{name}").exists()
    else:
        assert _is_reset(name)
