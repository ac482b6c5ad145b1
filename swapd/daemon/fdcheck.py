"""Descriptors a client hands over are not trusted: what ``map`` checks, and why.

Design.  A client sends a memfd and a userfaultfd with ``map``.  The daemon's
copies share their *open file descriptions* with the client's copies, so the
client can change some of their state at any time afterwards (file status flags,
size, seals); the rest is fixed at open.  ``check_memfd`` and ``check_uffd``
check, at ``map`` time, every property the daemon relies on, against the
descriptor itself rather than what the client said:

* memfd: a shmem file (``fstatfs`` magic TMPFS_MAGIC: not a regular file named
  ``/memfd:...``, not hugetlbfs -- 4 KiB pages, ``st_blksize``), opened
  read-write and not ``O_PATH`` (the daemon reads it and punches holes), no
  write seal (``F_SEAL_WRITE``/``F_SEAL_FUTURE_WRITE`` make the hole punch fail,
  ``mm/shmem.c``: shmem_fallocate), exactly the region's size, and not already
  the memfd of another region (two regions over one file would punch each
  other's pages).  When the memfd still allows sealing the daemon adds
  ``F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL``: its size can no longer change
  and no write seal can be added later.
* userfaultfd: the kind, and that the client's range is registered with *this*
  context: the daemon registers the range again through its copy, which fails
  with EBUSY when another userfaultfd owns it (``fs/userfaultfd.c``:
  userfaultfd_register).  A blocking userfaultfd is fine: the daemon reads it
  with ``RWF_NOWAIT`` (``swapd/kernel/uffd.py``), so a client that clears
  ``O_NONBLOCK`` on its copy later cannot block the loop.
* the mapping (``swapd.daemon.procfs.check_mapping``): shared, this memfd's
  device *and* inode, at file offset ``address - start`` for every VMA.

What a client can still change afterwards -- the size of a memfd created
without ``MFD_ALLOW_SEALING``, its mappings, its registration -- makes the
daemon's ioctls or reads on that region fail; the pager and the reclaimer turn
such a failure into the loss of that region or session (never an exception in
the loop, never another client's pages).  Every check raises
:class:`~swapd.daemon.errors.Refused` with ``bad_fd`` naming the problem.
"""

from __future__ import annotations

import ctypes
import fcntl
import os

from swapd.daemon.errors import Refused

__all__ = ["F_SEAL_FUTURE_WRITE", "check_memfd", "fs_magic", "seal_memfd"]

TMPFS_MAGIC = 0x01021994  # include/uapi/linux/magic.h
HUGETLBFS_MAGIC = 0x958458F6
F_SEAL_SEAL, F_SEAL_SHRINK, F_SEAL_GROW, F_SEAL_WRITE = 0x1, 0x2, 0x4, 0x8
F_SEAL_FUTURE_WRITE = 0x10  # include/uapi/linux/fcntl.h, 5.1
_F_GET_SEALS = 1034
_F_ADD_SEALS = 1033
_PAGE_SIZE = 4096

_libc = ctypes.CDLL(None, use_errno=True)
_libc.fstatfs.argtypes = [ctypes.c_int, ctypes.c_void_p]
_libc.fstatfs.restype = ctypes.c_int


def fs_magic(fd: int) -> int:
    """``f_type`` of the file system holding ``fd`` (``fstatfs``); OSError on failure.

    ``struct statfs`` begins with ``__fsword_t f_type`` (a long on x86-64 and arm64).
    """
    buf = ctypes.create_string_buffer(128)  # sizeof(struct statfs) is 120
    if _libc.fstatfs(fd, buf) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    return int.from_bytes(buf.raw[:8], "little") & 0xFFFFFFFF


def check_memfd(fd: int, length: int) -> os.stat_result:
    """Check a client's memfd for a region of ``length`` bytes; return its stat.  Refused."""
    try:
        fl = fcntl.fcntl(fd, fcntl.F_GETFL)
        st = os.fstat(fd)
        magic = fs_magic(fd)
    except OSError as exc:
        raise Refused("bad_fd", f"descriptor 0 cannot be inspected: {exc.strerror}") from exc
    if fl & os.O_PATH:
        raise Refused("bad_fd", "descriptor 0 is an O_PATH descriptor, not an open memfd")
    if magic == HUGETLBFS_MAGIC:
        raise Refused("bad_fd", "descriptor 0 is a hugetlbfs memfd (MFD_HUGETLB): swapd pages "
                      "4 KiB pages")
    if magic != TMPFS_MAGIC:
        raise Refused("bad_fd", f"descriptor 0 is not a memfd (file system magic {magic:#x})")
    if st.st_blksize != _PAGE_SIZE:
        raise Refused("bad_fd", f"descriptor 0 has {st.st_blksize}-byte pages, not 4096")
    if fl & os.O_ACCMODE != os.O_RDWR:
        raise Refused("bad_fd", "descriptor 0 is not open read-write (O_RDWR): the daemon reads "
                      "the memfd and punches holes in it")
    try:
        seals = fcntl.fcntl(fd, _F_GET_SEALS)
    except OSError as exc:
        raise Refused("bad_fd", f"descriptor 0: F_GET_SEALS failed: {exc.strerror}") from exc
    if seals & (F_SEAL_WRITE | F_SEAL_FUTURE_WRITE):
        raise Refused("bad_fd", f"descriptor 0 is write-sealed (seals {seals:#x}): the daemon "
                      "could not punch evicted pages out of it")
    if st.st_size != length:
        raise Refused("bad_fd", f"memfd size {st.st_size} != region length {length}")
    return st


def seal_memfd(fd: int) -> int:
    """Add SHRINK|GROW|SEAL where sealing is still allowed; return the seals now.  O(1).

    A memfd made without MFD_ALLOW_SEALING already has F_SEAL_SEAL and is left alone.
    """
    seals = fcntl.fcntl(fd, _F_GET_SEALS)
    if not seals & F_SEAL_SEAL:
        try:
            fcntl.fcntl(fd, _F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL)
        except OSError as exc:
            raise Refused("bad_fd", f"descriptor 0: cannot seal its size: {exc.strerror}") from exc
        seals = fcntl.fcntl(fd, _F_GET_SEALS)
    return int(seals)
