"""PROCMAP_QUERY and the map check's bounded cost (swapd/kernel/procmap.py, swapd/daemon/procfs.py).

A client with very many mappings must not make ``map`` read all of its smaps (0.4 s of the
event loop for 60,000 VMAs): the layout of the range is checked by one PROCMAP_QUERY per VMA,
and smaps only up to a budget.  The process under test is this one: its mappings are made at
fixed addresses so that thousands of them lie below the checked range.
"""

from __future__ import annotations

import ctypes
import mmap
import os

import pytest

from swapd.daemon.errors import Refused
from swapd.daemon.procfs import SMAPS_BUDGET, check_mapping
from swapd.kernel import procmap
from swapd.pages import PAGE_SIZE

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                       ctypes.c_int, ctypes.c_long]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_MAP_SHARED, _MAP_PRIVATE, _MAP_ANON, _MAP_FIXED_NOREPLACE = 0x01, 0x02, 0x20, 0x100000
_PROT_RW = mmap.PROT_READ | mmap.PROT_WRITE
_LOW = 0x2000_0000_0000  # the many small mappings
_HIGH = 0x3000_0000_0000  # the checked range, above all of them


def _map(addr: int, length: int, prot: int, flags: int, fd: int = -1, off: int = 0) -> int:
    got = _libc.mmap(addr, length, prot, flags | _MAP_FIXED_NOREPLACE, fd, off)
    if got in (None, ctypes.c_void_p(-1).value) or got != addr:
        pytest.fail(f"mmap at {addr:#x}: errno {ctypes.get_errno()}")
    return addr


def _have_procmap_query() -> bool:
    fd = procmap.open_maps(os.getpid())
    try:
        procmap.query(fd, 0)
        return True
    except procmap.Unsupported:
        return False
    finally:
        os.close(fd)


pytestmark = pytest.mark.skipif(not _have_procmap_query(),
                                reason="the kernel has no PROCMAP_QUERY (Linux < 6.11)")


@pytest.fixture
def memfd():
    fd = os.memfd_create("procmap-test", os.MFD_CLOEXEC)
    os.ftruncate(fd, 16 * PAGE_SIZE)
    try:
        yield fd, os.fstat(fd)
    finally:
        os.close(fd)


def test_query_reports_a_shared_memfd_mapping(memfd) -> None:
    fd, st = memfd
    addr = _map(_HIGH, 4 * PAGE_SIZE, _PROT_RW, _MAP_SHARED, fd, 2 * PAGE_SIZE)
    try:
        mfd = procmap.open_maps(os.getpid())
        try:
            v = procmap.query(mfd, addr + PAGE_SIZE)  # covering
            nxt = procmap.query(mfd, addr - 64 * PAGE_SIZE)  # the next one above a gap
        finally:
            os.close(mfd)
        assert v is not None and nxt is not None
        assert (v.start, v.end, v.offset) == (addr, addr + 4 * PAGE_SIZE, 2 * PAGE_SIZE)
        assert (v.inode, v.dev) == (st.st_ino, st.st_dev)
        assert v.shared and v.flags & procmap.VMA_WRITE
        assert nxt.start == addr
    finally:
        _libc.munmap(addr, 4 * PAGE_SIZE)


def test_many_mappings_below_do_not_make_map_read_all_smaps(memfd) -> None:
    """Thousands of VMAs below the range: the layout is still checked in full (a private or
    shifted mapping is refused), the VmFlags are reported unchecked instead of read."""
    fd, _st = memfd
    st = os.fstat(fd)
    n = 4 * SMAPS_BUDGET // 500  # smaps gives each VMA at least ~500 bytes: well over budget
    small = []
    try:
        for i in range(n):  # alternate protections so that neighbours never merge
            small.append(_map(_LOW + 2 * i * PAGE_SIZE, PAGE_SIZE,
                              mmap.PROT_READ if i % 2 else _PROT_RW, _MAP_PRIVATE | _MAP_ANON))
        addr = _map(_HIGH, 8 * PAGE_SIZE, _PROT_RW, _MAP_SHARED, fd, 0)
        try:
            assert check_mapping(os.getpid(), addr, 8 * PAGE_SIZE, st.st_ino,
                                 st.st_dev) is False
        finally:
            _libc.munmap(addr, 8 * PAGE_SIZE)
        addr = _map(_HIGH, 8 * PAGE_SIZE, _PROT_RW, _MAP_SHARED, fd, PAGE_SIZE)
        try:
            with pytest.raises(Refused, match="offset"):
                check_mapping(os.getpid(), addr, 8 * PAGE_SIZE, st.st_ino, st.st_dev)
        finally:
            _libc.munmap(addr, 8 * PAGE_SIZE)
        addr = _map(_HIGH, 8 * PAGE_SIZE, _PROT_RW, _MAP_PRIVATE, fd, 0)
        try:
            with pytest.raises(Refused, match="not a shared mapping"):
                check_mapping(os.getpid(), addr, 8 * PAGE_SIZE, st.st_ino, st.st_dev)
        finally:
            _libc.munmap(addr, 8 * PAGE_SIZE)
        with pytest.raises(Refused, match="not mapped"):
            check_mapping(os.getpid(), _HIGH, 8 * PAGE_SIZE, st.st_ino, st.st_dev)
    finally:
        for a in small:
            _libc.munmap(a, PAGE_SIZE)


def test_few_mappings_still_check_vmflags(memfd) -> None:
    """With the range within the budget, a mapping without uffd registration and
    MADV_DONTFORK is refused by name, as before."""
    fd, st = memfd
    addr = _map(_HIGH, 4 * PAGE_SIZE, _PROT_RW, _MAP_SHARED, fd, 0)
    try:
        # below _HIGH this process has only its executable and heap, far under the budget
        with pytest.raises(Refused, match="MADV_DONTFORK") as exc:
            check_mapping(os.getpid(), addr, 4 * PAGE_SIZE, st.st_ino, st.st_dev)
        assert "userfaultfd MISSING" in str(exc.value)
    finally:
        _libc.munmap(addr, 4 * PAGE_SIZE)


def test_kernel_without_procmap_query_reads_smaps_in_full(memfd, monkeypatch) -> None:
    """Before Linux 6.11 the ioctl is ENOTTY: the same checks come from smaps alone."""
    fd, st = memfd

    def unsupported(maps_fd: int, address: int) -> procmap.Vma | None:
        raise procmap.Unsupported("ENOTTY")

    monkeypatch.setattr(procmap, "query", unsupported)
    addr = _map(_HIGH, 4 * PAGE_SIZE, _PROT_RW, _MAP_SHARED, fd, PAGE_SIZE)
    try:
        with pytest.raises(Refused, match="offset"):
            check_mapping(os.getpid(), addr, 4 * PAGE_SIZE, st.st_ino, st.st_dev)
    finally:
        _libc.munmap(addr, 4 * PAGE_SIZE)
    addr = _map(_HIGH, 4 * PAGE_SIZE, _PROT_RW, _MAP_SHARED, fd, 0)
    try:
        with pytest.raises(Refused, match="MADV_DONTFORK"):
            check_mapping(os.getpid(), addr, 4 * PAGE_SIZE, st.st_ino, st.st_dev)
    finally:
        _libc.munmap(addr, 4 * PAGE_SIZE)
