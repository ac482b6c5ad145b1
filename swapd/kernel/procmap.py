"""``PROCMAP_QUERY``: one VMA of another process, by address, without reading all of its maps.

Linux 6.11 added an ioctl on an open ``/proc/PID/maps`` (``fs/proc/task_mmu.c``,
``do_procmap_query``; the struct and flags are ``include/uapi/linux/fs.h``) that returns the
VMA covering an address -- or, with ``COVERING_OR_NEXT_VMA``, the next one above it -- with
its bounds, file offset, device and inode and its r/w/x/shared bits.  The kernel finds it with
one lookup in the mm's maple tree, so the cost does not grow with the process's number of
mappings, unlike ``/proc/PID/smaps``, which the kernel generates for every VMA (page-table
walks included: 0.4 s for 60,000 mappings on these machines) before the one asked about.

It needs the same access as reading the maps file (PTRACE_MODE_READ on the target); the
file is opened once per query batch.  ``Unsupported`` means the kernel predates the ioctl
(ENOTTY), so callers keep a reader of the text files.
"""

from __future__ import annotations

import ctypes
import errno as _errno
import os
from dataclasses import dataclass
from typing import Final

from swapd.kernel import _libc
from swapd.kernel.errors import ProcessGoneError, kernel_error

__all__ = ["VMA_EXEC", "VMA_READ", "VMA_SHARED", "VMA_WRITE", "Unsupported", "Vma", "open_maps",
           "query"]

VMA_READ: Final = 0x01  # PROCMAP_QUERY_VMA_READABLE
VMA_WRITE: Final = 0x02  # PROCMAP_QUERY_VMA_WRITABLE
VMA_EXEC: Final = 0x04  # PROCMAP_QUERY_VMA_EXECUTABLE
VMA_SHARED: Final = 0x08  # PROCMAP_QUERY_VMA_SHARED
_COVERING_OR_NEXT: Final = 0x10  # PROCMAP_QUERY_COVERING_OR_NEXT_VMA


class _ProcmapQuery(ctypes.Structure):
    """``struct procmap_query`` (include/uapi/linux/fs.h, 104 bytes)."""

    _fields_ = [
        ("size", ctypes.c_uint64),
        ("query_flags", ctypes.c_uint64),
        ("query_addr", ctypes.c_uint64),
        ("vma_start", ctypes.c_uint64),
        ("vma_end", ctypes.c_uint64),
        ("vma_flags", ctypes.c_uint64),
        ("vma_page_size", ctypes.c_uint64),
        ("vma_offset", ctypes.c_uint64),
        ("inode", ctypes.c_uint64),
        ("dev_major", ctypes.c_uint32),
        ("dev_minor", ctypes.c_uint32),
        ("vma_name_size", ctypes.c_uint32),
        ("build_id_size", ctypes.c_uint32),
        ("vma_name_addr", ctypes.c_uint64),
        ("build_id_addr", ctypes.c_uint64),
    ]


PROCMAP_QUERY: Final = _libc.iowr(ord("f"), 17, ctypes.sizeof(_ProcmapQuery))  # PROCFS_IOCTL_MAGIC


@dataclass(frozen=True, slots=True)
class Vma:
    """One VMA as the kernel reports it: ``[start, end)``, flags (``VMA_*``), file offset."""

    start: int
    end: int
    flags: int
    offset: int
    inode: int
    dev: int
    page_size: int

    @property
    def shared(self) -> bool:
        return bool(self.flags & VMA_SHARED)


def open_maps(pid: int) -> int:
    """An fd of ``/proc/PID/maps`` (O_RDONLY|O_CLOEXEC).  Raises ProcessGoneError or KernelError."""
    try:
        return os.open(f"/proc/{pid}/maps", os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError as exc:
        raise ProcessGoneError(_errno.ESRCH, "open", f"no process {pid}") from exc
    except OSError as exc:
        raise kernel_error(exc.errno or _errno.EIO, "open", f"/proc/{pid}/maps") from exc


class Unsupported(Exception):
    """The kernel has no PROCMAP_QUERY (before 6.11): read the text files instead."""


def query(maps_fd: int, address: int) -> Vma | None:
    """The VMA covering ``address`` or the next one above it.

    Returns the Vma, or ``None`` when no VMA lies at or above ``address``.  Raises Unsupported
    (ENOTTY/EINVAL from a kernel before 6.11), ProcessGoneError (ESRCH: the process exited) or
    KernelError.
    """
    q = _ProcmapQuery()
    q.size = ctypes.sizeof(q)
    q.query_flags = _COVERING_OR_NEXT
    q.query_addr = address
    if _libc.ioctl(maps_fd, PROCMAP_QUERY, ctypes.byref(q)) < 0:
        err = _libc.get_errno()
        if err == _errno.ENOENT:
            return None
        if err in (_errno.ENOTTY, _errno.EINVAL, _errno.EOPNOTSUPP):
            raise Unsupported(f"PROCMAP_QUERY: errno {err}")
        if err == _errno.ESRCH:
            raise ProcessGoneError(err, "PROCMAP_QUERY")
        raise kernel_error(err, "PROCMAP_QUERY", f"address {address:#x}")
    return Vma(q.vma_start, q.vma_end, q.vma_flags, q.vma_offset, q.inode,
               os.makedev(q.dev_major, q.dev_minor), q.vma_page_size)
