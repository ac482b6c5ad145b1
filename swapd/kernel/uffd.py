"""userfaultfd(2): the ABI of ``include/uapi/linux/userfaultfd.h`` in Python.

Design.  A :class:`Userfaultfd` owns one userfaultfd file descriptor.  Every
ioctl packs its argument struct with a precompiled :class:`struct.Struct` into
an argument buffer allocated once (per thread, see below) and passes the
buffer's address to ``ioctl(2)`` through ctypes; nothing is allocated per call
on the fault path except the Python ints.  A failed ioctl raises the
:mod:`swapd.kernel.errors` class that says what the pager must do next
(``UffdExistsError`` benign, ``UffdPartialCopyError`` continue,
``UffdEventPendingError`` drain events then retry, ``UffdRangeGoneError``,
``UffdClientGoneError``, ...).

All ioctls act on the address space of the process that *created* the
userfaultfd (``ctx->mm``), whoever calls them: the daemon resolves a client's
faults with a descriptor the client passed it over SCM_RIGHTS.  The ``src`` of
UFFDIO_COPY is an address in the caller's own memory (e.g. a
:class:`swapd.kernel.memfd.PageBuffer`).

Thread safety.  The ioctl methods may be called from several threads at once:
each thread gets its own argument buffers (``threading.local``), and the kernel
serializes what needs serializing.  ``close()`` must not race with them.

Invariants.  ``fd == -1`` iff closed.  ``features`` is the feature mask this fd
was opened with (by :meth:`api`, or read from fdinfo by :meth:`from_fd`).

Prior art: ``fs/userfaultfd.c`` and ``mm/userfaultfd.c`` (kernel side), the
selftests ``tools/testing/selftests/mm/uffd-common.c``, and pyroute2 for
quoting each C struct above its Python layout.  Kernel versions name the
release that introduced each feature bit or ioctl.
"""

from __future__ import annotations

import ctypes
import errno as _errno
import os
import struct
import threading
from dataclasses import dataclass
from types import TracebackType
from typing import Final

from swapd.errors import InvariantError
from swapd.kernel import _libc
from swapd.kernel.errors import FdTypeError, UffdBadMessageError, kernel_error, uffd_error

# --- userfaultfd(2) flags ------------------------------------------------------------

#: Only user-mode faults are handled; kernel-mode accesses (``read(2)`` into the
#: range) fail with EFAULT.  Lets an unprivileged process create a userfaultfd
#: with ``vm.unprivileged_userfaultfd=0``.  Linux 5.11.
UFFD_USER_MODE_ONLY: Final = 1

#: ``include/uapi/linux/userfaultfd.h``: ``#define UFFD_API ((__u64)0xAA)``.
UFFD_API: Final = 0xAA

# --- feature bits (struct uffdio_api.features), with the release that added each -----

UFFD_FEATURE_PAGEFAULT_FLAG_WP: Final = 1 << 0  # 4.3 (bit), WP usable on anon 5.7
UFFD_FEATURE_EVENT_FORK: Final = 1 << 1  # 4.11; needs CAP_SYS_PTRACE
UFFD_FEATURE_EVENT_REMAP: Final = 1 << 2  # 4.11
UFFD_FEATURE_EVENT_REMOVE: Final = 1 << 3  # 4.11 (was EVENT_MADVDONTNEED)
UFFD_FEATURE_MISSING_HUGETLBFS: Final = 1 << 4  # 4.11
UFFD_FEATURE_MISSING_SHMEM: Final = 1 << 5  # 4.11
UFFD_FEATURE_EVENT_UNMAP: Final = 1 << 6  # 4.11
UFFD_FEATURE_SIGBUS: Final = 1 << 7  # 4.14
UFFD_FEATURE_THREAD_ID: Final = 1 << 8  # 4.14
UFFD_FEATURE_MINOR_HUGETLBFS: Final = 1 << 9  # 5.13
UFFD_FEATURE_MINOR_SHMEM: Final = 1 << 10  # 5.14
UFFD_FEATURE_EXACT_ADDRESS: Final = 1 << 11  # 5.18
UFFD_FEATURE_WP_HUGETLBFS_SHMEM: Final = 1 << 12  # 5.19
UFFD_FEATURE_WP_UNPOPULATED: Final = 1 << 13  # 6.4
UFFD_FEATURE_POISON: Final = 1 << 14  # 6.6
UFFD_FEATURE_WP_ASYNC: Final = 1 << 15  # 6.7
UFFD_FEATURE_MOVE: Final = 1 << 16  # 6.8

# fs/userfaultfd.c marks a handshaken context with this internal bit; fdinfo shows it.
_UFFD_FEATURE_INITIALIZED: Final = 1 << 31

# --- ioctl command bits (uffdio_api.ioctls, uffdio_register.ioctls) --------------

_UFFDIO_REGISTER: Final = 0x00
_UFFDIO_UNREGISTER: Final = 0x01
_UFFDIO_WAKE: Final = 0x02
_UFFDIO_COPY: Final = 0x03
_UFFDIO_ZEROPAGE: Final = 0x04
_UFFDIO_MOVE: Final = 0x05  # 6.8
_UFFDIO_WRITEPROTECT: Final = 0x06  # 5.7
_UFFDIO_CONTINUE: Final = 0x07  # 5.13
_UFFDIO_POISON: Final = 0x08  # 6.6
_UFFDIO_API: Final = 0x3F
UFFDIO: Final = 0xAA

# --- register modes, ioctl modes, event codes, fault flags ---------------------------

UFFDIO_REGISTER_MODE_MISSING: Final = 1 << 0
UFFDIO_REGISTER_MODE_WP: Final = 1 << 1  # 5.7
UFFDIO_REGISTER_MODE_MINOR: Final = 1 << 2  # 5.13

UFFDIO_COPY_MODE_DONTWAKE: Final = 1 << 0
UFFDIO_COPY_MODE_WP: Final = 1 << 1  # 5.7
UFFDIO_ZEROPAGE_MODE_DONTWAKE: Final = 1 << 0
UFFDIO_WRITEPROTECT_MODE_WP: Final = 1 << 0
UFFDIO_WRITEPROTECT_MODE_DONTWAKE: Final = 1 << 1
UFFDIO_CONTINUE_MODE_DONTWAKE: Final = 1 << 0
UFFDIO_CONTINUE_MODE_WP: Final = 1 << 1  # 6.4
UFFDIO_POISON_MODE_DONTWAKE: Final = 1 << 0

UFFD_EVENT_PAGEFAULT: Final = 0x12
UFFD_EVENT_FORK: Final = 0x13
UFFD_EVENT_REMAP: Final = 0x14
UFFD_EVENT_REMOVE: Final = 0x15
UFFD_EVENT_UNMAP: Final = 0x16

UFFD_PAGEFAULT_FLAG_WRITE: Final = 1 << 0  # a write fault
UFFD_PAGEFAULT_FLAG_WP: Final = 1 << 1  # reason: VM_UFFD_WP (write to a protected page)
UFFD_PAGEFAULT_FLAG_MINOR: Final = 1 << 2  # reason: VM_UFFD_MINOR; 5.13

# /dev/userfaultfd (6.1): ``#define USERFAULTFD_IOC_NEW _IO(USERFAULTFD_IOC, 0x00)``
USERFAULTFD_IOC_NEW: Final = _libc.ioc(0, UFFDIO, 0x00, 0)

# --- struct layouts: quoted from include/uapi/linux/userfaultfd.h (x86_64, packed u64s) ---

# struct uffdio_api {
#     __u64 api;       /* in: UFFD_API */
#     __u64 features;  /* in: features to enable; out: all features the kernel supports */
#     __u64 ioctls;    /* out: UFFD_API_IOCTLS */
# };
_API = struct.Struct("=QQQ")

# struct uffdio_range { __u64 start; __u64 len; };
_RANGE = struct.Struct("=QQ")

# struct uffdio_register {
#     struct uffdio_range range;
#     __u64 mode;      /* UFFDIO_REGISTER_MODE_{MISSING,WP,MINOR} */
#     __u64 ioctls;    /* out: ioctls available on the range */
# };
_REGISTER = struct.Struct("=QQQQ")

# struct uffdio_copy {
#     __u64 dst; __u64 src; __u64 len;
#     __u64 mode;      /* UFFDIO_COPY_MODE_{DONTWAKE,WP} */
#     __s64 copy;      /* out: bytes copied, or -errno */
# };
_COPY = struct.Struct("=QQQQq")

# struct uffdio_zeropage {
#     struct uffdio_range range;
#     __u64 mode;      /* UFFDIO_ZEROPAGE_MODE_DONTWAKE */
#     __s64 zeropage;  /* out: bytes zeroed, or -errno */
# };
# struct uffdio_continue {                          (5.13)
#     struct uffdio_range range;
#     __u64 mode;      /* UFFDIO_CONTINUE_MODE_{DONTWAKE,WP} */
#     __s64 mapped;    /* out: bytes mapped, or -errno */
# };
# struct uffdio_poison {                            (6.6)
#     struct uffdio_range range;
#     __u64 mode;      /* UFFDIO_POISON_MODE_DONTWAKE */
#     __s64 updated;   /* out: bytes poisoned, or -errno */
# };
_RANGE_MODE_RESULT = struct.Struct("=QQQq")

# struct uffdio_writeprotect {                      (5.7)
#     struct uffdio_range range;
#     __u64 mode;      /* UFFDIO_WRITEPROTECT_MODE_{WP,DONTWAKE} */
# };
_WRITEPROTECT = struct.Struct("=QQQ")

# struct uffd_msg {
#     __u8  event;
#     __u8  reserved1; __u16 reserved2; __u32 reserved3;
#     union {
#         struct { __u64 flags; __u64 address; union { __u32 ptid; } feat; } pagefault;
#         struct { __u32 ufd; } fork;
#         struct { __u64 from; __u64 to; __u64 len; } remap;
#         struct { __u64 start; __u64 end; } remove;   /* REMOVE and UNMAP */
#         struct { __u64 reserved1, reserved2, reserved3; } reserved;
#     } arg;
# } __packed;                                       /* 32 bytes */
# The union is read as three u64 words; the u32 members are the low half of a word.
_MSG = struct.Struct("=B7xQQQ")
UFFD_MSG_SIZE: Final = _MSG.size

_S64 = struct.Struct("=q")

_ioc_uffd = _libc.iowr
UFFDIO_API: Final = _ioc_uffd(UFFDIO, _UFFDIO_API, _API.size)
UFFDIO_REGISTER: Final = _ioc_uffd(UFFDIO, _UFFDIO_REGISTER, _REGISTER.size)
UFFDIO_UNREGISTER: Final = _libc.ior(UFFDIO, _UFFDIO_UNREGISTER, _RANGE.size)
UFFDIO_WAKE: Final = _libc.ior(UFFDIO, _UFFDIO_WAKE, _RANGE.size)
UFFDIO_COPY: Final = _ioc_uffd(UFFDIO, _UFFDIO_COPY, _COPY.size)
UFFDIO_ZEROPAGE: Final = _ioc_uffd(UFFDIO, _UFFDIO_ZEROPAGE, _RANGE_MODE_RESULT.size)
UFFDIO_WRITEPROTECT: Final = _ioc_uffd(UFFDIO, _UFFDIO_WRITEPROTECT, _WRITEPROTECT.size)
UFFDIO_CONTINUE: Final = _ioc_uffd(UFFDIO, _UFFDIO_CONTINUE, _RANGE_MODE_RESULT.size)
UFFDIO_POISON: Final = _ioc_uffd(UFFDIO, _UFFDIO_POISON, _RANGE_MODE_RESULT.size)


def ioctl_bit(nr: int) -> int:
    """The bit of ioctl number ``nr`` (e.g. ``_UFFDIO_COPY``) in an ``ioctls`` mask."""
    return 1 << nr


IOCTL_COPY: Final = 1 << _UFFDIO_COPY
IOCTL_ZEROPAGE: Final = 1 << _UFFDIO_ZEROPAGE
IOCTL_WAKE: Final = 1 << _UFFDIO_WAKE
IOCTL_WRITEPROTECT: Final = 1 << _UFFDIO_WRITEPROTECT
IOCTL_CONTINUE: Final = 1 << _UFFDIO_CONTINUE
IOCTL_POISON: Final = 1 << _UFFDIO_POISON
IOCTL_MOVE: Final = 1 << _UFFDIO_MOVE


# --- results and events ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ApiResult:
    """What UFFDIO_API wrote back: every feature the kernel supports, and the fd's ioctls.

    Only the features passed to :meth:`Userfaultfd.api` are enabled; ``features``
    here is the kernel's full set (``0x1ffff`` on 6.18), useful to probe support.
    """

    features: int
    ioctls: int


@dataclass(frozen=True, slots=True)
class UffdFdInfo:
    """``/proc/self/fdinfo/FD`` of a userfaultfd: queue depths and enabled features."""

    pending: int  # faults queued and not yet read
    total: int  # faults not yet woken (read or not)
    api: int
    features: int  # the features ENABLED on this fd (not the kernel's full set)
    ioctls: int


@dataclass(frozen=True, slots=True)
class PagefaultEvent:
    """UFFD_EVENT_PAGEFAULT: a thread of the client faulted at ``address``.

    ``flags`` are UFFD_PAGEFAULT_FLAG_*; ``address`` is page-aligned unless
    UFFD_FEATURE_EXACT_ADDRESS is enabled; ``ptid`` is the faulting thread's id
    with UFFD_FEATURE_THREAD_ID, else 0.  A MISSING fault has ``flags`` 0
    (read) or WRITE; a write to a write-protected page has WRITE|WP.
    """

    flags: int
    address: int
    ptid: int

    @property
    def is_write(self) -> bool:
        """True for a write access."""
        return bool(self.flags & UFFD_PAGEFAULT_FLAG_WRITE)

    @property
    def is_wp(self) -> bool:
        """True if the fault is a write to a write-protected page (not a missing page)."""
        return bool(self.flags & UFFD_PAGEFAULT_FLAG_WP)

    @property
    def is_minor(self) -> bool:
        """True for a MINOR fault (page in the page cache, not mapped)."""
        return bool(self.flags & UFFD_PAGEFAULT_FLAG_MINOR)

    @property
    def page_address(self) -> int:
        """``address`` rounded down to its page."""
        return self.address & ~(_libc.PAGE_SIZE - 1)


@dataclass(frozen=True, slots=True)
class ForkEvent:
    """UFFD_EVENT_FORK: the client forked; ``ufd`` is a NEW fd in the reader's table.

    The child's faults arrive on ``ufd``; the reader owns it and must close it
    (e.g. wrap it with :meth:`Userfaultfd.from_fd`).  The message carries no pid:
    learn it from the child's first fault (THREAD_ID) or from the client.
    The client's ``fork()`` blocks until this event is read.
    """

    ufd: int


@dataclass(frozen=True, slots=True)
class RemapEvent:
    """UFFD_EVENT_REMAP: the client ``mremap``-ed ``[src, src+length)`` to ``dst``."""

    src: int
    dst: int
    length: int


@dataclass(frozen=True, slots=True)
class RemoveEvent:
    """UFFD_EVENT_REMOVE: MADV_DONTNEED/MADV_REMOVE on ``[start, end)``.

    The client's madvise blocks until the event is read.
    """

    start: int
    end: int


@dataclass(frozen=True, slots=True)
class UnmapEvent:
    """UFFD_EVENT_UNMAP: ``munmap`` of ``[start, end)``; the client blocks until it is read."""

    start: int
    end: int


UffdEvent = PagefaultEvent | ForkEvent | RemapEvent | RemoveEvent | UnmapEvent


# --- the file descriptor -------------------------------------------------------------


class _Buffers:
    """One thread's argument buffers: a bytearray per struct and its address."""

    __slots__ = ("_anchors", "api", "api_addr", "copy", "copy_addr", "msgs", "reg",
                 "reg_addr", "rmr", "rmr_addr", "rng", "rng_addr", "wp", "wp_addr")

    def __init__(self, max_events: int = 64) -> None:
        self._anchors: list[ctypes.c_char] = []
        self.api, self.api_addr = self._alloc(_API.size)
        self.reg, self.reg_addr = self._alloc(_REGISTER.size)
        self.rng, self.rng_addr = self._alloc(_RANGE.size)
        self.copy, self.copy_addr = self._alloc(_COPY.size)
        self.rmr, self.rmr_addr = self._alloc(_RANGE_MODE_RESULT.size)
        self.wp, self.wp_addr = self._alloc(_WRITEPROTECT.size)
        self.msgs = bytearray(UFFD_MSG_SIZE * max_events)

    def _alloc(self, size: int) -> tuple[bytearray, int]:
        buf = bytearray(size)
        anchor = ctypes.c_char.from_buffer(buf)  # pins buf (no resize) while we live
        self._anchors.append(anchor)
        return buf, ctypes.addressof(anchor)


_nowait_ok = hasattr(os, "RWF_NOWAIT")  # cleared on the first EOPNOTSUPP


def _disable_nowait() -> None:
    global _nowait_ok
    _nowait_ok = False


def is_userfaultfd(fd: int) -> bool:
    """True if ``fd`` is an open userfaultfd (its /proc/self/fd link).  O(1)."""
    try:
        return os.readlink(f"/proc/self/fd/{fd}") == "anon_inode:[userfaultfd]"
    except OSError:
        return False


class Userfaultfd:
    """One userfaultfd descriptor and its ioctls (see the module docstring)."""

    def __init__(self, fd: int, features: int | None = None) -> None:
        """Wrap ``fd`` (owned from now on).  Prefer :meth:`create` or :meth:`from_fd`."""
        self.fd = fd  # -1 once closed
        self.features = features  # enabled features, None if unknown
        self._tls = threading.local()

    # -- construction -----------------------------------------------------------------

    @classmethod
    def create(cls, *, nonblock: bool = True, cloexec: bool = True,
               user_mode_only: bool = False, via_device: bool = False) -> Userfaultfd:
        """Create a userfaultfd for the calling process's address space.

        ``via_device`` opens ``/dev/userfaultfd`` (6.1) and issues
        USERFAULTFD_IOC_NEW instead of the system call: the way for an
        unprivileged process that was given access to the device node.  Raises
        :class:`~swapd.kernel.errors.KernelPermissionError` (EPERM) when neither
        privilege nor ``user_mode_only`` allows it.
        """
        flags = (os.O_NONBLOCK if nonblock else 0) | (os.O_CLOEXEC if cloexec else 0)
        if user_mode_only:
            flags |= UFFD_USER_MODE_ONLY
        if via_device:
            try:
                dev = os.open("/dev/userfaultfd", os.O_RDWR | os.O_CLOEXEC)
            except OSError as exc:
                raise kernel_error(exc.errno or _errno.EIO, "open /dev/userfaultfd") from exc
            try:
                fd = _libc.ioctl(dev, USERFAULTFD_IOC_NEW, flags)
                err = _libc.get_errno()
            finally:
                os.close(dev)
            if fd < 0:
                raise uffd_error(err, "USERFAULTFD_IOC_NEW")
        else:
            fd = _libc.syscall1(_libc.SYS_userfaultfd, flags)
            if fd < 0:
                raise uffd_error(_libc.get_errno(), "userfaultfd")
        return cls(int(fd))

    @classmethod
    def from_fd(cls, fd: int) -> Userfaultfd:
        """Adopt a userfaultfd received from a client (SCM_RIGHTS) or a fork event.

        Takes ownership of ``fd``.  Raises :class:`~swapd.kernel.errors.FdTypeError`
        if ``fd`` is not a userfaultfd.  ``features`` is read from fdinfo.
        """
        if not is_userfaultfd(fd):
            try:
                what = os.readlink(f"/proc/self/fd/{fd}")
            except OSError:
                what = "not open"
            raise FdTypeError(_errno.EINVAL, "Userfaultfd.from_fd",
                              f"fd {fd} is not a userfaultfd ({what})")
        uffd = cls(fd)
        uffd.features = uffd.fdinfo().features
        return uffd

    def fileno(self) -> int:
        """The descriptor, for ``select``/``poll``/``selectors``."""
        return self.fd

    def close(self) -> None:
        """Close our descriptor (idempotent).

        When the *last* reference to the userfaultfd goes (the client keeps its
        own copy, so normally not here), the kernel wakes blocked faulting
        threads and unregisters the ranges: holes then read as zeros.
        """
        fd, self.fd = self.fd, -1
        if fd >= 0:
            os.close(fd)

    def __enter__(self) -> Userfaultfd:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        feats = "?" if self.features is None else hex(self.features)
        return f"<Userfaultfd fd={self.fd} features={feats}>"

    def _check(self) -> None:
        """Raise InvariantError unless an open fd is a userfaultfd with ``features``.  O(1)."""
        if self.fd < 0:
            return
        if not is_userfaultfd(self.fd):
            raise InvariantError(f"fd {self.fd} is no longer a userfaultfd")
        if self.features is not None and self.fdinfo().features != self.features:
            raise InvariantError(f"features {self.features:#x} != fdinfo "
                                 f"{self.fdinfo().features:#x}")

    def _bufs(self) -> _Buffers:
        try:
            b: _Buffers = self._tls.b
        except AttributeError:
            b = self._tls.b = _Buffers()
        return b

    # -- handshake and registration -------------------------------------------------------

    def api(self, features: int) -> ApiResult:
        """UFFDIO_API: enable ``features`` (UFFD_FEATURE_* bits); once per fd.

        Raises UffdInvalidError if already done or a feature is unsupported,
        KernelPermissionError for EVENT_FORK without CAP_SYS_PTRACE.
        """
        b = self._bufs()
        _API.pack_into(b.api, 0, UFFD_API, features, 0)
        if _libc.ioctl(self.fd, UFFDIO_API, b.api_addr) != 0:
            raise uffd_error(_libc.get_errno(), "UFFDIO_API")
        _, kfeatures, ioctls = _API.unpack_from(b.api)
        self.features = features
        return ApiResult(kfeatures, ioctls)

    def register(self, start: int, length: int, mode: int) -> int:
        """UFFDIO_REGISTER ``[start, start+length)`` with UFFDIO_REGISTER_MODE_* ``mode``.

        Returns the mask of ioctls available on the range (bit ``1 << _UFFDIO_*``;
        see ``IOCTL_*``).  O(VMAs in range).
        """
        b = self._bufs()
        _REGISTER.pack_into(b.reg, 0, start, length, mode, 0)
        if _libc.ioctl(self.fd, UFFDIO_REGISTER, b.reg_addr) != 0:
            raise uffd_error(_libc.get_errno(), "UFFDIO_REGISTER")
        ioctls: int = _REGISTER.unpack_from(b.reg)[3]
        return ioctls

    def unregister(self, start: int, length: int) -> None:
        """UFFDIO_UNREGISTER ``[start, start+length)``; wakes threads faulting there."""
        b = self._bufs()
        _RANGE.pack_into(b.rng, 0, start, length)
        if _libc.ioctl(self.fd, UFFDIO_UNREGISTER, b.rng_addr) != 0:
            raise uffd_error(_libc.get_errno(), "UFFDIO_UNREGISTER")

    # -- resolving faults -------------------------------------------------------------------

    def copy(self, dst: int, src_addr: int, length: int, *, wp: bool = False,
             dontwake: bool = False) -> int:
        """UFFDIO_COPY ``length`` bytes from our ``src_addr`` to the client's ``dst``.

        ``dst`` and ``length`` page-aligned.  With ``wp`` the pages are mapped
        write-protected (the first write raises a WP fault).  Wakes threads
        faulting in the range unless ``dontwake``.  Returns ``length``.  Raises
        UffdExistsError (first page already present, nothing woken),
        UffdPartialCopyError (``.copied`` bytes done and woken),
        UffdEventPendingError, UffdRangeGoneError, UffdClientGoneError,
        UffdInvalidError, UffdFaultError.  O(pages).
        """
        try:
            b: _Buffers = self._tls.b  # the hot path: no extra call
        except AttributeError:
            b = self._bufs()
        buf = b.copy
        _COPY.pack_into(buf, 0, dst, src_addr, length,
                        (UFFDIO_COPY_MODE_WP if wp else 0)
                        | (UFFDIO_COPY_MODE_DONTWAKE if dontwake else 0), 0)
        if _libc.ioctl(self.fd, UFFDIO_COPY, b.copy_addr) == 0:
            return length
        err = _libc.get_errno()
        raise uffd_error(err, "UFFDIO_COPY", _S64.unpack_from(buf, 32)[0], length)

    def _range_mode_result(self, request: int, op: str, start: int, length: int,
                           mode: int) -> int:
        b = self._bufs()
        buf = b.rmr
        _RANGE_MODE_RESULT.pack_into(buf, 0, start, length, mode, 0)
        if _libc.ioctl(self.fd, request, b.rmr_addr) == 0:
            return length
        err = _libc.get_errno()
        raise uffd_error(err, op, _S64.unpack_from(buf, 24)[0], length)

    def zeropage(self, start: int, length: int, *, dontwake: bool = False) -> int:
        """UFFDIO_ZEROPAGE: map zero pages at ``[start, start+length)``; returns ``length``.

        Errors as :meth:`copy` (EEXIST when a page is present).  O(pages).
        """
        return self._range_mode_result(UFFDIO_ZEROPAGE, "UFFDIO_ZEROPAGE", start, length,
                                       UFFDIO_ZEROPAGE_MODE_DONTWAKE if dontwake else 0)

    def continue_(self, start: int, length: int, *, wp: bool = False,
                  dontwake: bool = False) -> int:
        """UFFDIO_CONTINUE (5.13): map pages already in the page cache; returns ``length``.

        Resolves MINOR faults.  UffdFaultError on a hole, UffdExistsError if
        already mapped.  O(pages).
        """
        mode = ((UFFDIO_CONTINUE_MODE_WP if wp else 0)
                | (UFFDIO_CONTINUE_MODE_DONTWAKE if dontwake else 0))
        return self._range_mode_result(UFFDIO_CONTINUE, "UFFDIO_CONTINUE", start, length, mode)

    def poison(self, start: int, length: int, *, dontwake: bool = False) -> int:
        """UFFDIO_POISON (6.6): later accesses to the range raise SIGBUS; returns ``length``.

        Needs UFFD_FEATURE_POISON at API time and PTEs that are none
        (UffdExistsError on a page or a uffd-wp marker: un-protect with
        ``writeprotect(..., wp=False, dontwake=True)`` first).  Wakes waiters.
        """
        return self._range_mode_result(UFFDIO_POISON, "UFFDIO_POISON", start, length,
                                       UFFDIO_POISON_MODE_DONTWAKE if dontwake else 0)

    def writeprotect(self, start: int, length: int, *, wp: bool,
                     dontwake: bool = False) -> None:
        """UFFDIO_WRITEPROTECT (5.7): set (``wp``) or clear write protection.

        Clearing wakes threads faulting in the range unless ``dontwake``; the
        kernel rejects ``wp`` together with ``dontwake`` (EINVAL).  Protecting a
        never-mapped shmem PTE installs a uffd-wp marker.  O(pages).
        """
        b = self._bufs()
        _WRITEPROTECT.pack_into(b.wp, 0, start, length,
                                (UFFDIO_WRITEPROTECT_MODE_WP if wp else 0)
                                | (UFFDIO_WRITEPROTECT_MODE_DONTWAKE if dontwake else 0))
        if _libc.ioctl(self.fd, UFFDIO_WRITEPROTECT, b.wp_addr) != 0:
            raise uffd_error(_libc.get_errno(), "UFFDIO_WRITEPROTECT")

    def wake(self, start: int, length: int) -> None:
        """UFFDIO_WAKE: wake threads waiting on faults in the range (they retry).

        Also re-delivers faults that were read but never resolved (daemon restart).
        """
        b = self._bufs()
        _RANGE.pack_into(b.rng, 0, start, length)
        if _libc.ioctl(self.fd, UFFDIO_WAKE, b.rng_addr) != 0:
            raise uffd_error(_libc.get_errno(), "UFFDIO_WAKE")

    # -- events -------------------------------------------------------------------------------

    def read_events(self, max_events: int = 64) -> list[UffdEvent]:
        """Read up to ``max_events`` queued messages; ``[]`` when none (EAGAIN).

        Never blocks (RWF_NOWAIT), even on a descriptor without O_NONBLOCK; on a kernel
        without RWF_NOWAIT for userfaultfd it falls back to read(2), which blocks on
        such a descriptor for the first message only.  A ForkEvent's
        ``ufd`` is a new descriptor the caller owns.  O(messages).
        """
        b = self._bufs()
        need = UFFD_MSG_SIZE * max_events
        if len(b.msgs) < need:
            b.msgs = bytearray(need)
        view = memoryview(b.msgs)[:need]
        try:
            if _nowait_ok:
                # RWF_NOWAIT: never block, whatever O_NONBLOCK says -- a client shares this
                # open file description and may clear the flag on its copy.
                # fs/userfaultfd.c: userfaultfd_read_iter() honours IOCB_NOWAIT (the file is
                # FMODE_NOWAIT since its 2024 conversion to ->read_iter, 6.10).
                n = os.preadv(self.fd, [view], -1, os.RWF_NOWAIT)
            else:
                n = os.readv(self.fd, [view])
        except BlockingIOError:
            return []
        except OSError as exc:
            if exc.errno != _errno.EOPNOTSUPP or not _nowait_ok:
                raise uffd_error(exc.errno or _errno.EIO, "read(userfaultfd)") from exc
            _disable_nowait()  # an older kernel: O_NONBLOCK is all there is
            return self.read_events(max_events)
        events: list[UffdEvent] = []
        append = events.append
        for event, a, c, d in _MSG.iter_unpack(view[:n]):
            if event == UFFD_EVENT_PAGEFAULT:
                append(PagefaultEvent(a, c, d & 0xFFFFFFFF))
            elif event == UFFD_EVENT_FORK:
                append(ForkEvent(a & 0xFFFFFFFF))
            elif event == UFFD_EVENT_REMOVE:
                append(RemoveEvent(a, c))
            elif event == UFFD_EVENT_UNMAP:
                append(UnmapEvent(a, c))
            elif event == UFFD_EVENT_REMAP:
                append(RemapEvent(a, c, d))
            else:
                raise UffdBadMessageError(_errno.EPROTO, "read(userfaultfd)",
                                          f"unknown uffd_msg event 0x{event:x}")
        return events

    def fdinfo(self) -> UffdFdInfo:
        """Parse ``/proc/self/fdinfo/FD`` (``pending``, ``total``, ``API: aa:feat:ioctls``)."""
        fields: dict[str, str] = {}
        try:
            with open(f"/proc/self/fdinfo/{self.fd}") as f:
                for line in f:
                    key, _, value = line.partition(":")
                    fields[key.strip()] = value.strip()
        except OSError as exc:
            raise kernel_error(exc.errno or _errno.EIO, "fdinfo") from exc
        try:
            api, feats, ioctls = (int(x, 16) for x in fields["API"].split(":"))
            feats &= ~_UFFD_FEATURE_INITIALIZED
            return UffdFdInfo(int(fields["pending"]), int(fields["total"]), api, feats, ioctls)
        except (KeyError, ValueError) as exc:
            raise UffdBadMessageError(_errno.EPROTO, "fdinfo",
                                      f"unexpected userfaultfd fdinfo: {fields}") from exc
