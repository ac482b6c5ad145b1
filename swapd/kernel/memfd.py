"""memfd_create(2), hole punching and hole walking, and a reusable page buffer.

A client's managed memory is a memfd (shmem) that the client maps
MAP_SHARED; the daemon never maps it (docs/design.md sec. 11.4: reading a hole
through a daemon mapping allocates a zero page and the client then reads zeros
with no fault).  The daemon reads pages with ``preadv`` into a
:class:`PageBuffer` (a hole reads as zeros without allocating), frees them with
``fallocate(PUNCH_HOLE|KEEP_SIZE)``, and finds what is resident with
``lseek(SEEK_DATA/SEEK_HOLE)`` (51 ns per page, no mapping needed).

``PageBuffer`` is page-aligned and pre-touched so that neither ``preadv`` into
it nor UFFDIO_COPY out of it takes page faults: a fresh 256 KiB ``os.pread``
buffer doubled the eviction read cost (docs/design.md sec. 11.4).

Prior art: ``mm/shmem.c`` (``shmem_fallocate``, ``shmem_file_llseek``) and
``mm/memfd.c``.
"""

from __future__ import annotations

import errno as _errno
import mmap
import os
from types import TracebackType
from typing import Final

from swapd.errors import InvariantError
from swapd.kernel import _libc
from swapd.kernel.errors import kernel_error
from swapd.kernel.mm import address_of
from swapd.pages import PAGE_SIZE as _PAGE_SIZE

PAGE_SIZE: Final = _PAGE_SIZE
FALLOC_FL_KEEP_SIZE: Final = 0x01  # include/uapi/linux/falloc.h
FALLOC_FL_PUNCH_HOLE: Final = 0x02  # 2.6.38; shmem since 3.5
MFD_CLOEXEC: Final = 0x0001  # include/uapi/linux/memfd.h, 3.17


def memfd_create(name: str, *, cloexec: bool = True) -> int:
    """Create an anonymous shmem file; returns its fd (``/proc/self/fd`` shows ``/memfd:name``)."""
    try:
        return os.memfd_create(name, MFD_CLOEXEC if cloexec else 0)
    except OSError as exc:
        raise kernel_error(exc.errno or _errno.EIO, "memfd_create") from exc


def punch_hole(fd: int, offset: int, length: int) -> None:
    """Free ``[offset, offset+length)`` of the file (size unchanged); reads give zeros.

    Mapped PTEs in every process are zapped; for a range registered with
    userfaultfd-WP, uffd-wp markers survive.  Generates no userfaultfd event.
    """
    if _libc.fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length) != 0:
        raise kernel_error(_libc.get_errno(), "fallocate(PUNCH_HOLE)")


def seek_data(fd: int, offset: int) -> int | None:
    """The first offset >= ``offset`` that holds data, or None if only holes follow."""
    try:
        return os.lseek(fd, offset, os.SEEK_DATA)
    except OSError as exc:
        if exc.errno == _errno.ENXIO:
            return None
        raise kernel_error(exc.errno or _errno.EIO, "lseek(SEEK_DATA)") from exc


def seek_hole(fd: int, offset: int) -> int:
    """The first offset >= ``offset`` in a hole; the end of the file counts as a hole.

    Raises KernelError(ENXIO) if ``offset`` is at or beyond the end of the file.
    """
    try:
        return os.lseek(fd, offset, os.SEEK_HOLE)
    except OSError as exc:
        raise kernel_error(exc.errno or _errno.EIO, "lseek(SEEK_HOLE)") from exc


def file_size(fd: int) -> int:
    """The file's size in bytes (``fstat``)."""
    try:
        return os.fstat(fd).st_size
    except OSError as exc:
        raise kernel_error(exc.errno or _errno.EIO, "fstat") from exc


def allocated_bytes(fd: int) -> int:
    """Bytes of memory (or disk) the file really holds: ``st_blocks`` * 512."""
    try:
        return os.fstat(fd).st_blocks * 512
    except OSError as exc:
        raise kernel_error(exc.errno or _errno.EIO, "fstat") from exc


def resize(fd: int, size: int) -> None:
    """``ftruncate(fd, size)``: grow (the new range reads as zeros, costs nothing) or cut."""
    try:
        os.ftruncate(fd, size)
    except OSError as exc:
        raise kernel_error(exc.errno or _errno.EIO, "ftruncate") from exc


def map_reserved(fd: int, reserve: int, *, writable: bool = True) -> mmap.mmap:
    """Map ``reserve`` bytes of ``fd`` MAP_SHARED, however long the file is now.

    The mapping is made once at its largest size so that views of it never move;
    the file is then grown with :func:`resize` as it fills.  Touching the mapping
    beyond the end of the file raises SIGBUS (``mm/shmem.c``: a fault past
    ``i_size`` is VM_FAULT_SIGBUS), so owners grow the file before they use a
    range.  Python's ``mmap`` refuses a length beyond the file's size, so the file
    is briefly extended to ``reserve`` and cut back: call this only while no other
    process writes the file (at creation, or when adopting it as its only owner).
    A read-only mapping (``writable=False``) leaves the file alone and maps its
    current size (KernelError EINVAL for an empty file), which is all a reader may touch.
    """
    size = file_size(fd)
    if not writable:
        if size == 0:
            raise kernel_error(_errno.EINVAL, "mmap of an empty file")
        return mmap.mmap(fd, size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ)
    if size < reserve:
        resize(fd, reserve)
    try:
        return mmap.mmap(fd, reserve, flags=mmap.MAP_SHARED,
                         prot=mmap.PROT_READ | mmap.PROT_WRITE)
    finally:
        if size < reserve:
            resize(fd, size)


def is_memfd(fd: int) -> bool:
    """True if ``fd`` is an open memfd (its ``/proc/self/fd`` link starts with ``/memfd:``)."""
    try:
        return os.readlink(f"/proc/self/fd/{fd}").startswith("/memfd:")
    except OSError:
        return False


class PageBuffer:
    """A page-aligned, pre-touched buffer of ``npages`` pages, reused for I/O.

    ``address`` is the address of page 0 (a UFFDIO_COPY source), ``view`` a
    writable memoryview of the whole buffer.  Not thread-safe: one owner.
    Invariant: ``len(view) == npages * PAGE_SIZE`` until :meth:`close`.
    """

    def __init__(self, npages: int) -> None:
        if npages <= 0:
            raise ValueError(f"npages must be positive, got {npages}")
        self.npages = npages
        self._mm = mmap.mmap(-1, npages * PAGE_SIZE,
                             flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        for off in range(0, npages * PAGE_SIZE, PAGE_SIZE):
            self._mm[off] = 0  # pre-touch: a write fault per page, now rather than later
        self.address = address_of(self._mm)
        self.view = memoryview(self._mm)
        # one prebuilt view per page count, so pread_into allocates nothing sizeable
        self._views = [self.view[: n * PAGE_SIZE] for n in range(npages + 1)]

    def _check(self) -> None:
        """Raise InvariantError if the buffer's geometry is broken.  O(npages)."""
        if self._mm.closed:
            return
        if self.address % PAGE_SIZE or len(self.view) != self.npages * PAGE_SIZE:
            raise InvariantError(f"PageBuffer at {self.address:#x} of {len(self.view)} "
                                 f"bytes is not {self.npages} aligned pages")
        for n, v in enumerate(self._views):
            if len(v) != n * PAGE_SIZE:
                raise InvariantError(f"prebuilt view {n} has {len(v)} bytes")

    def page(self, index: int) -> memoryview:
        """A view of page ``index``.  O(1)."""
        return self.view[index * PAGE_SIZE : (index + 1) * PAGE_SIZE]

    def pread_into(self, fd: int, offset: int, npages: int) -> memoryview:
        """``preadv`` ``npages`` pages of ``fd`` at ``offset`` into the buffer's start.

        Returns a view of the bytes read: ``npages`` pages, fewer only if the
        file ends inside the range.  Holes read as zeros and stay holes.  The
        view is overwritten by the next call.  O(npages).
        """
        if not 0 < npages <= self.npages:
            raise ValueError(f"npages must be in 1..{self.npages}, got {npages}")
        try:
            n = os.preadv(fd, [self._views[npages]], offset)
        except OSError as exc:
            raise kernel_error(exc.errno or _errno.EIO, "preadv") from exc
        return self._views[npages] if n == npages * PAGE_SIZE else self.view[:n]

    def close(self) -> None:
        """Unmap the buffer (idempotent).

        Views returned by :meth:`pread_into` for whole reads are released here;
        if a caller still holds another view (a :meth:`page` or a short read),
        the mapping is unmapped when that view is released instead.
        """
        if not self._mm.closed:
            for v in self._views:
                v.release()
            self._views.clear()
            self.view.release()
            try:
                self._mm.close()
            except BufferError:
                pass  # an outstanding view pins it; freed with the last view

    def __enter__(self) -> PageBuffer:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
