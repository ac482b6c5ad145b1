"""/proc/PID/pagemap: the PAGEMAP_SCAN ioctl (6.7) and plain pagemap words.

The daemon cannot see the accessed bit of a client's pages; it can see whether
a page is *mapped* in the client (PAGE_IS_PRESENT), whether it is a hole with a
uffd-wp marker (PAGE_IS_SWAPPED) and whether it is write-protected (present
without PAGE_IS_WRITTEN).  Zapping a slice with
``process_madvise(MADV_PAGEOUT)`` and scanning PRESENT later is the software
referenced bit (docs/design.md sec. 11.5).  Kernel cost: 18 ns per page for a
PRESENT scan; parsing costs ~0.4 us per returned region, so ask for large
regions (a small ``return_mask``) and use ``max_pages``.

Both calls need PTRACE_MODE_READ on the target.  ``pid_or_fd`` is a pid (the
file is opened and closed per call) or an object with ``fileno()`` for an open
``/proc/PID/pagemap`` (see :func:`open_pagemap`); a bare int is always a pid.

Prior art: ``fs/proc/task_mmu.c`` (``do_pagemap_scan``, ``pagemap_read``) and
``Documentation/admin-guide/mm/pagemap.rst``.
"""

from __future__ import annotations

import ctypes
import errno as _errno
import os
import struct
from dataclasses import dataclass
from typing import Final, Protocol

from swapd.kernel import _libc
from swapd.kernel.errors import KernelError, ProcessGoneError, kernel_error

# --- PAGEMAP_SCAN (include/uapi/linux/fs.h, Linux 6.7) ------------------------------

PAGE_IS_WPALLOWED: Final = 1 << 0  # uffd async write-protection is enabled on the VMA
PAGE_IS_WRITTEN: Final = 1 << 1  # written since write-protected (or never protected)
PAGE_IS_FILE: Final = 1 << 2  # file-backed (shmem/memfd included)
PAGE_IS_PRESENT: Final = 1 << 3  # mapped in the process
PAGE_IS_SWAPPED: Final = 1 << 4  # swap entry or PTE marker (e.g. uffd-wp on a hole)
PAGE_IS_PFNZERO: Final = 1 << 5  # the shared zero page
PAGE_IS_HUGE: Final = 1 << 6  # THP or hugetlb
PAGE_IS_SOFT_DIRTY: Final = 1 << 7  # soft-dirty bit set; 6.8

PM_SCAN_WP_MATCHING: Final = 1 << 0  # write-protect the matched pages (async WP VMAs only)
PM_SCAN_CHECK_WPASYNC: Final = 1 << 1  # EPERM if a VMA is not async-WP

# struct page_region {
#     __u64 start;
#     __u64 end;
#     __u64 categories;
# };
_PAGE_REGION = struct.Struct("=QQQ")

# struct pm_scan_arg {
#     __u64 size;                 /* sizeof(struct pm_scan_arg) = 96 */
#     __u64 flags;                /* PM_SCAN_* */
#     __u64 start;
#     __u64 end;
#     __u64 walk_end;             /* out: where the walk stopped */
#     __u64 vec;                  /* struct page_region *  */
#     __u64 vec_len;
#     __u64 max_pages;            /* 0 = no limit */
#     __u64 category_inverted;    /* categories that match when 0 */
#     __u64 category_mask;        /* all of these must match */
#     __u64 category_anyof_mask;  /* at least one of these must match */
#     __u64 return_mask;          /* categories reported in page_region */
# };
_PM_SCAN_ARG = struct.Struct("=12Q")

PAGEMAP_SCAN: Final = _libc.iowr(ord("f"), 16, _PM_SCAN_ARG.size)

_VEC_LEN = 512  # regions fetched per ioctl

# --- /proc/PID/pagemap words (Documentation/admin-guide/mm/pagemap.rst) ------------

PM_PFN_MASK: Final = (1 << 55) - 1  # bits 0-54: PFN (0 without CAP_SYS_ADMIN)
PM_SOFT_DIRTY: Final = 1 << 55
PM_MMAP_EXCLUSIVE: Final = 1 << 56
PM_UFFD_WP: Final = 1 << 57  # 5.19 for shmem: uffd-wp bit or marker
PM_FILE: Final = 1 << 61  # file page or shared anon
PM_SWAP: Final = 1 << 62  # swapped, or a PTE marker (a uffd-wp hole reads 62 + 57)
PM_PRESENT: Final = 1 << 63


class _HasFileno(Protocol):
    def fileno(self) -> int: ...


@dataclass(frozen=True, slots=True)
class PageRegion:
    """``[start, end)`` of pages that share the ``categories`` (PAGE_IS_* & return_mask)."""

    start: int
    end: int
    categories: int

    @property
    def npages(self) -> int:
        """Pages in the region."""
        return (self.end - self.start) >> _libc.PAGE_SHIFT


class Pagemap:
    """An open ``/proc/PID/pagemap`` (pass it as ``pid_or_fd`` to avoid an open per call)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.fd = _open_pagemap(pid)  # -1 once closed

    def fileno(self) -> int:
        """The descriptor."""
        return self.fd

    def close(self) -> None:
        """Close the file (idempotent)."""
        fd, self.fd = self.fd, -1
        if fd >= 0:
            os.close(fd)

    def __enter__(self) -> Pagemap:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_pagemap(pid: int) -> Pagemap:
    """Open ``/proc/PID/pagemap``; ProcessGoneError if the process is gone."""
    return Pagemap(pid)


def _open_pagemap(pid: int) -> int:
    try:
        return os.open(f"/proc/{pid}/pagemap", os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError as exc:
        raise ProcessGoneError(_errno.ESRCH, "open pagemap", f"no process {pid}") from exc
    except OSError as exc:
        raise kernel_error(exc.errno or _errno.EIO, "open pagemap") from exc


def pagemap_scan(pid_or_fd: int | _HasFileno, start: int, end: int, *, category_mask: int,
                 category_anyof_mask: int = 0, category_inverted: int = 0, return_mask: int,
                 max_pages: int = 0, flags: int = 0) -> list[PageRegion]:
    """PAGEMAP_SCAN ``[start, end)``: the regions whose pages match the categories.

    A page matches if ``(categories ^ category_inverted)`` has every bit of
    ``category_mask`` and, if ``category_anyof_mask`` is set, one of its bits.
    Adjacent matching pages with equal ``categories & return_mask`` form one
    region.  Stops after ``max_pages`` pages if non-zero.  Repeats the ioctl
    until the walk reaches ``end``.  Raises ProcessGoneError, KernelError
    (EINVAL for bad masks or an unaligned range; EPERM for CHECK_WPASYNC).
    O(pages) in the kernel + O(regions) here.
    """
    if isinstance(pid_or_fd, int):
        fd = _open_pagemap(pid_or_fd)
        owned = True
    else:
        fd = pid_or_fd.fileno()
        owned = False
    try:
        return _scan(fd, start, end, flags, category_mask, category_anyof_mask,
                     category_inverted, return_mask, max_pages)
    finally:
        if owned:
            os.close(fd)


def _scan(fd: int, start: int, end: int, flags: int, category_mask: int, anyof: int,
          inverted: int, return_mask: int, max_pages: int) -> list[PageRegion]:
    vec = (ctypes.c_uint64 * (3 * _VEC_LEN))()
    vec_addr = ctypes.addressof(vec)
    vec_mem = memoryview(vec).cast("B")
    arg = bytearray(_PM_SCAN_ARG.size)
    anchor = ctypes.c_char.from_buffer(arg)
    arg_addr = ctypes.addressof(anchor)
    out: list[PageRegion] = []
    left = max_pages  # pages still wanted; the kernel never returns more than it is given
    shift = _libc.PAGE_SHIFT
    try:
        while start < end:
            _PM_SCAN_ARG.pack_into(arg, 0, _PM_SCAN_ARG.size, flags, start, end, 0, vec_addr,
                                   _VEC_LEN, left, inverted, category_mask, anyof,
                                   return_mask)
            n = _libc.ioctl(fd, PAGEMAP_SCAN, arg_addr)
            if n < 0:
                err = _libc.get_errno()
                if err == _errno.ESRCH:
                    raise ProcessGoneError(err, "PAGEMAP_SCAN")
                raise kernel_error(err, "PAGEMAP_SCAN")
            walk_end = _PM_SCAN_ARG.unpack_from(arg)[4]
            for s, e, cat in _PAGE_REGION.iter_unpack(vec_mem[: n * _PAGE_REGION.size]):
                if max_pages:
                    left -= (e - s) >> shift
                if out and out[-1].end == s and out[-1].categories == cat:
                    s = out.pop().start  # a region split across two ioctls
                out.append(PageRegion(s, e, cat))
            if walk_end <= start or (max_pages and left <= 0):
                break
            start = walk_end
    finally:
        del anchor
        vec_mem.release()
    return out


def read_pagemap_entries(pid: int, start: int, npages: int) -> list[int]:
    """The raw 64-bit pagemap words of ``npages`` pages from ``start`` (PM_* bits).

    55-127 ns per page (docs/design.md sec. 11.1).  O(npages).
    """
    fd = _open_pagemap(pid)
    try:
        want = npages * 8
        raw = os.pread(fd, want, (start >> _libc.PAGE_SHIFT) * 8)
    except OSError as exc:
        raise kernel_error(exc.errno or _errno.EIO, "pread(pagemap)") from exc
    finally:
        os.close(fd)
    if len(raw) != want:
        raise KernelError(_errno.EIO, "pread(pagemap)",
                          f"short read: {len(raw)} of {want} bytes")
    return list(struct.unpack(f"={npages}Q", raw))
