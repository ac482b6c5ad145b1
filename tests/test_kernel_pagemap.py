"""swapd.kernel.pagemap on a real client: PAGEMAP_SCAN categories, the software referenced
bit (process_madvise(MADV_PAGEOUT) then PRESENT), and plain pagemap words."""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Iterator

import pytest

from swapd.kernel import pagemap as P
from swapd.kernel.errors import KernelError, ProcessGoneError
from swapd.kernel.memfd import PageBuffer, punch_hole
from swapd.kernel.pagemap import PageRegion, open_pagemap, pagemap_scan, read_pagemap_entries
from swapd.kernel.pidfd import MADV_PAGEOUT, pidfd_open, process_madvise
from tests.test_kernel_support import (  # noqa: F401  (fixtures)
    PAGE,
    PAGEMAP_SCAN_SKIP,
    UFFD_SKIP,
    ClientProcess,
    client_fixture,
    kernel_alarm_fixture,
)

pytestmark = [pytest.mark.usefixtures("kernel_alarm"), UFFD_SKIP, PAGEMAP_SCAN_SKIP]


@pytest.fixture
def plain(kernel_alarm: None) -> Iterator[ClientProcess]:
    """A client mapping 1100 memfd pages, no userfaultfd."""
    c = ClientProcess(1100, mode=0)
    yield c
    c.close()


def test_pagemap_scan_ioctl_number() -> None:
    assert P.PAGEMAP_SCAN == 0xC0606610  # _IOWR('f', 16, struct pm_scan_arg), 96 bytes


def test_referenced_bit_via_pageout_then_present(plain: ClientProcess) -> None:
    c = plain
    end = c.addr(16)
    # Client and test on one CPU: the folios the client faults in wait in that CPU's
    # LRU-add batch, which process_madvise's lru_add_drain() then drains (see below).
    cpu = min(os.sched_getaffinity(0))
    saved = os.sched_getaffinity(0)
    os.sched_setaffinity(c.pid, {cpu})
    os.sched_setaffinity(0, {cpu})
    try:
        _referenced_bit(c, end)
    finally:
        os.sched_setaffinity(0, saved)


def _referenced_bit(c: ClientProcess, end: int) -> None:
    assert c.command("T 0 8 1") == "ok"
    present = dict(category_mask=P.PAGE_IS_PRESENT, return_mask=P.PAGE_IS_PRESENT)
    assert pagemap_scan(c.pid, c.base, end, **present) == [
        PageRegion(c.base, c.addr(8), P.PAGE_IS_PRESENT)]
    # PAGEOUT skips folios it cannot isolate from the LRU, and a folio faulted in moments
    # ago may still sit in another CPU's LRU-add batch (mm/madvise.c drains only the
    # caller's CPU with lru_add_drain()).  The batch drains soon; retry a bounded number
    # of times, as the daemon's referenced-bit sweep simply does on its next pass.
    pidfd = pidfd_open(c.pid)
    try:
        for _attempt in range(100):
            assert process_madvise(pidfd, [(c.base, 16 * PAGE)], MADV_PAGEOUT) == 16 * PAGE
            if not pagemap_scan(c.pid, c.base, end, **present):
                break
            time.sleep(0.01)
    finally:
        os.close(pidfd)
    assert pagemap_scan(c.pid, c.base, end, **present) == []  # all unmapped
    assert os.fstat(c.memfd).st_blocks == 8 * PAGE // 512  # no swap: page cache kept
    assert c.command("T 3 2 1") == "ok"  # the client touches pages 3 and 4 again
    (r,) = pagemap_scan(c.pid, c.base, end, **present)
    assert (r.start, r.end, r.npages) == (c.addr(3), c.addr(5), 2)
    words = read_pagemap_entries(c.pid, c.base, 8)
    assert [bool(w & P.PM_PRESENT) for w in words] == [i in (3, 4) for i in range(8)]
    assert words[3] & P.PM_FILE


def test_scan_continues_past_a_full_vector_and_honours_max_pages(plain: ClientProcess) -> None:
    c = plain
    assert c.command("T 0 550 2") == "ok"  # every other page: 550 one-page regions
    present = dict(category_mask=P.PAGE_IS_PRESENT, return_mask=P.PAGE_IS_PRESENT)
    with open_pagemap(c.pid) as pm:
        regions = pagemap_scan(pm, c.base, c.addr(1100), **present)
        assert len(regions) == 550  # more than one ioctl's vector (512)
        assert [r.start for r in regions] == [c.addr(i) for i in range(0, 1100, 2)]
        assert all(r.npages == 1 for r in regions)
        limited = pagemap_scan(pm, c.base, c.addr(1100), max_pages=520, **present)
        assert len(limited) == 520 and limited == regions[:520]
        holes = pagemap_scan(pm, c.base, c.addr(8), category_mask=P.PAGE_IS_PRESENT,
                             category_inverted=P.PAGE_IS_PRESENT, return_mask=0)
        assert [(r.start, r.end) for r in holes] == [(c.addr(i), c.addr(i + 1))
                                                     for i in (1, 3, 5, 7)]
        with pytest.raises(KernelError) as ei:
            pagemap_scan(pm, c.base + 1, c.addr(8), **present)
        assert ei.value.errno == errno.EINVAL


def test_categories_with_sync_write_protect(client: ClientProcess) -> None:
    c = client
    u = c.uffd
    assert u is not None
    with PageBuffer(8) as src:
        u.copy(c.base, src.address, 8 * PAGE)
    u.writeprotect(c.addr(2), PAGE, wp=True)  # present, protected
    u.writeprotect(c.addr(5), PAGE, wp=True)
    punch_hole(c.memfd, 5 * PAGE, PAGE)  # evicted: a uffd-wp marker
    everything = 0xFF
    regions = pagemap_scan(c.pid, c.base, c.addr(16), category_mask=0,
                           category_anyof_mask=everything,
                           return_mask=(P.PAGE_IS_WRITTEN | P.PAGE_IS_FILE
                                        | P.PAGE_IS_PRESENT | P.PAGE_IS_SWAPPED))
    wfp = P.PAGE_IS_WRITTEN | P.PAGE_IS_FILE | P.PAGE_IS_PRESENT
    assert regions == [
        PageRegion(c.addr(0), c.addr(2), wfp),
        PageRegion(c.addr(2), c.addr(3), P.PAGE_IS_FILE | P.PAGE_IS_PRESENT),
        PageRegion(c.addr(3), c.addr(5), wfp),
        PageRegion(c.addr(5), c.addr(6), P.PAGE_IS_SWAPPED),
        PageRegion(c.addr(6), c.addr(8), wfp),
        PageRegion(c.addr(8), c.addr(16), P.PAGE_IS_WRITTEN),  # never mapped
    ]
    # sync WP: WP_MATCHING is silently skipped (docs/design.md sec. 11.5)
    assert pagemap_scan(c.pid, c.base, c.addr(16), category_mask=P.PAGE_IS_WRITTEN,
                        return_mask=P.PAGE_IS_WRITTEN, flags=P.PM_SCAN_WP_MATCHING) == []
    w = read_pagemap_entries(c.pid, c.base, 8)
    assert w[2] & P.PM_PRESENT and w[2] & P.PM_UFFD_WP
    assert w[5] & P.PM_SWAP and w[5] & P.PM_UFFD_WP and not w[5] & P.PM_PRESENT


def test_gone_process(kernel_alarm: None) -> None:
    c = ClientProcess(4, mode=0)
    pm = open_pagemap(c.pid)
    try:
        c.send("Q")
        assert c.proc.wait(timeout=10) == 0
        with pytest.raises(ProcessGoneError):
            pagemap_scan(c.pid, c.base, c.addr(4), category_mask=P.PAGE_IS_PRESENT,
                         return_mask=P.PAGE_IS_PRESENT)
        with pytest.raises(ProcessGoneError):
            read_pagemap_entries(c.pid, c.base, 4)
        with pytest.raises(ProcessGoneError) as ei:  # an fd opened before the exit
            pagemap_scan(pm, c.base, c.addr(4), category_mask=P.PAGE_IS_PRESENT,
                         return_mask=P.PAGE_IS_PRESENT)
        assert ei.value.errno == errno.ESRCH
    finally:
        pm.close()
        c.close()
