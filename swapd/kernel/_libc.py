"""ctypes handles on the few libc entry points the kernel bindings call.

Each entry point gets its own ctypes function object with fixed ``argtypes``
(``CDLL.__getitem__`` returns a fresh object, so two signatures of the variadic
``syscall(2)`` do not clobber each other).  All are created once at import; a
call costs about 0.4 us on top of the system call (docs/design.md sec. 11.0).
Errors are read with :func:`ctypes.get_errno` (``use_errno=True``).

x86_64 system call numbers (``arch/x86/entry/syscalls/syscall_64.tbl``) are
used for calls glibc 2.36 does not wrap everywhere.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform

from swapd.pages import PAGE_SHIFT as PAGE_SHIFT
from swapd.pages import PAGE_SIZE as PAGE_SIZE

if platform.machine() not in ("x86_64", "AMD64"):  # pragma: no cover - other arches
    # The ioctl numbers and structs are arch-independent, the syscall numbers are not.
    raise ImportError(f"swapd.kernel supports x86_64 only, not {platform.machine()}")

SYS_userfaultfd = 323  # Linux 4.3
SYS_pidfd_open = 434  # Linux 5.3
SYS_pidfd_getfd = 438  # Linux 5.6
SYS_process_madvise = 440  # Linux 5.10


libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)

_c_long = ctypes.c_long

syscall1 = libc["syscall"]
syscall1.argtypes = [_c_long, _c_long]
syscall1.restype = _c_long

syscall3 = libc["syscall"]
syscall3.argtypes = [_c_long, _c_long, _c_long, _c_long]
syscall3.restype = _c_long

syscall5 = libc["syscall"]
syscall5.argtypes = [_c_long, _c_long, _c_long, _c_long, _c_long, _c_long]
syscall5.restype = _c_long

ioctl = libc["ioctl"]
ioctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p]
ioctl.restype = ctypes.c_int

madvise = libc["madvise"]
madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
madvise.restype = ctypes.c_int

fallocate = libc["fallocate64"]
fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
fallocate.restype = ctypes.c_int

get_errno = ctypes.get_errno


def ioc(direction: int, type_: int, nr: int, size: int) -> int:
    """``_IOC(dir, type, nr, size)`` of ``include/uapi/asm-generic/ioctl.h``."""
    return (direction << 30) | (size << 16) | (type_ << 8) | nr


IOC_WRITE = 1
IOC_READ = 2


def iowr(type_: int, nr: int, size: int) -> int:
    """``_IOWR(type, nr, size)``: userspace passes and reads back the struct."""
    return ioc(IOC_READ | IOC_WRITE, type_, nr, size)


def ior(type_: int, nr: int, size: int) -> int:
    """``_IOR(type, nr, size)`` (UFFDIO_UNREGISTER/WAKE use it, see userfaultfd.h)."""
    return ioc(IOC_READ, type_, nr, size)
