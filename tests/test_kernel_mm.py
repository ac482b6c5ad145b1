"""swapd.kernel.mm: madvise on our own memory and buffer addresses."""

from __future__ import annotations

import ctypes
import errno
import faulthandler
import mmap
import os
import signal

import pytest

from swapd.kernel.errors import KernelError
from swapd.kernel.mm import MADV_DOFORK, MADV_DONTFORK, MADV_DONTNEED, address_of, madvise

PAGE = 4096


def test_address_of_matches_ctypes() -> None:
    ba = bytearray(100)
    assert address_of(ba) == ctypes.addressof(ctypes.c_char.from_buffer(ba))
    m = mmap.mmap(-1, 2 * PAGE)
    addr = address_of(m)
    assert addr % PAGE == 0
    assert address_of(memoryview(m)[PAGE:]) == addr + PAGE
    m.close()  # address_of left no buffer export behind
    with pytest.raises(TypeError):
        address_of(b"read-only")


def test_madvise_dontneed_zeroes_private_anon_memory() -> None:
    m = mmap.mmap(-1, 2 * PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    try:
        m[:] = b"\x55" * (2 * PAGE)
        madvise(address_of(m), PAGE, MADV_DONTNEED)
        assert m[:PAGE] == bytes(PAGE) and m[PAGE:] == b"\x55" * PAGE
    finally:
        m.close()


def test_madvise_unaligned_is_einval() -> None:
    m = mmap.mmap(-1, PAGE)
    try:
        with pytest.raises(KernelError) as ei:
            madvise(address_of(m) + 1, PAGE, MADV_DONTNEED)
        assert ei.value.errno == errno.EINVAL
    finally:
        m.close()


def _fork_and_touch(m: mmap.mmap) -> int:
    pid = os.fork()
    if pid == 0:  # child: touch the mapping, exit 0 if that worked
        faulthandler.disable()  # a SIGSEGV here is expected: no traceback dump
        try:
            _ = m[0]
        finally:
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    return status


def test_dontfork_child_has_no_mapping() -> None:
    m = mmap.mmap(-1, PAGE, flags=mmap.MAP_SHARED | mmap.MAP_ANONYMOUS)
    try:
        m[0] = 1
        madvise(address_of(m), PAGE, MADV_DONTFORK)
        status = _fork_and_touch(m)
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGSEGV
        madvise(address_of(m), PAGE, MADV_DOFORK)
        status = _fork_and_touch(m)
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    finally:
        m.close()
