"""swapd.kernel.memfd with real memfds: holes, punching, SEEK_DATA/SEEK_HOLE, PageBuffer."""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Iterator

import pytest

from swapd.kernel.errors import KernelError
from swapd.kernel.memfd import (
    PAGE_SIZE,
    PageBuffer,
    is_memfd,
    memfd_create,
    punch_hole,
    seek_data,
    seek_hole,
)
from swapd.kernel.pagemap import PM_PRESENT, read_pagemap_entries

PAGE = PAGE_SIZE


@pytest.fixture
def memfd() -> Iterator[int]:
    fd = memfd_create("swapd-test-memfd")
    os.ftruncate(fd, 16 * PAGE)
    yield fd
    os.close(fd)


def test_memfd_create_names_and_flags(memfd: int) -> None:
    assert os.readlink(f"/proc/self/fd/{memfd}").startswith("/memfd:swapd-test-memfd")
    assert not os.get_inheritable(memfd)  # MFD_CLOEXEC
    fd = memfd_create("inheritable", cloexec=False)
    try:
        assert os.get_inheritable(fd)
    finally:
        os.close(fd)


def test_is_memfd_rejects_other_fds(memfd: int) -> None:
    assert is_memfd(memfd)
    r, w = os.pipe()
    with tempfile.TemporaryFile() as f:
        assert not is_memfd(f.fileno())
    assert not is_memfd(r)
    os.close(r)
    os.close(w)
    assert not is_memfd(r)  # closed


def test_a_fresh_memfd_is_all_hole(memfd: int) -> None:
    assert seek_data(memfd, 0) is None
    assert seek_hole(memfd, 0) == 0
    assert os.fstat(memfd).st_blocks == 0


def test_punch_hole_frees_pages_and_reads_zero(memfd: int) -> None:
    os.pwrite(memfd, b"\xab" * (8 * PAGE), 0)
    blocks = os.fstat(memfd).st_blocks
    assert seek_data(memfd, 0) == 0 and seek_hole(memfd, 0) == 8 * PAGE
    punch_hole(memfd, 2 * PAGE, 3 * PAGE)
    assert os.fstat(memfd).st_blocks == blocks - 3 * PAGE // 512
    assert os.fstat(memfd).st_size == 16 * PAGE  # KEEP_SIZE
    assert seek_hole(memfd, 0) == 2 * PAGE
    assert seek_data(memfd, 2 * PAGE) == 5 * PAGE
    assert seek_data(memfd, 8 * PAGE) is None
    assert os.pread(memfd, 3 * PAGE, 2 * PAGE) == bytes(3 * PAGE)
    assert os.pread(memfd, PAGE, 5 * PAGE) == b"\xab" * PAGE


def test_seek_hole_past_the_end_and_bad_punch(memfd: int) -> None:
    with pytest.raises(KernelError) as ei:
        seek_hole(memfd, 16 * PAGE)
    assert ei.value.errno == errno.ENXIO
    r, w = os.pipe()
    try:
        with pytest.raises(KernelError) as bad:
            punch_hole(w, 0, PAGE)
        assert bad.value.errno == errno.ESPIPE and bad.value.op == "fallocate(PUNCH_HOLE)"
    finally:
        os.close(r)
        os.close(w)


def test_page_buffer_is_aligned_and_touched() -> None:
    with PageBuffer(8) as buf:
        assert buf.address % PAGE == 0
        assert len(buf.view) == 8 * PAGE
        assert len(buf.page(7)) == PAGE
        buf._check()
        entries = read_pagemap_entries(os.getpid(), buf.address, 8)
        assert all(e & PM_PRESENT for e in entries)  # every page resident already


def test_pread_into_reuses_the_buffer(memfd: int) -> None:
    data = bytes(range(256)) * (4 * PAGE // 256)
    os.pwrite(memfd, data, 4 * PAGE)
    punch_hole(memfd, 5 * PAGE, PAGE)
    with PageBuffer(4) as buf:
        v1 = buf.pread_into(memfd, 4 * PAGE, 4)
        assert bytes(v1) == data[:PAGE] + bytes(PAGE) + data[2 * PAGE :]
        assert seek_data(memfd, 5 * PAGE) == 6 * PAGE  # reading the hole did not fill it
        v2 = buf.pread_into(memfd, 6 * PAGE, 2)
        assert bytes(v2) == data[2 * PAGE :]
        assert bytes(buf.view[: 2 * PAGE]) == data[2 * PAGE :]  # same memory, overwritten
        assert buf.pread_into(memfd, 6 * PAGE, 2) is v2  # no new view per call
        short = buf.pread_into(memfd, 15 * PAGE, 4)  # the file ends after one page
        assert len(short) == PAGE
        short.release()
        with pytest.raises(ValueError):
            buf.pread_into(memfd, 0, 5)
    with pytest.raises(ValueError):  # released by close(): no use-after-unmap
        bytes(v2)
    pinned = PageBuffer(1)
    page = pinned.page(0)
    pinned.close()  # does not raise while a view is out
    page[0] = 1
    page.release()


def test_page_buffer_rejects_bad_sizes() -> None:
    with pytest.raises(ValueError):
        PageBuffer(0)
