"""Named exceptions for failed system calls of the kernel bindings.

Every binding in :mod:`swapd.kernel` turns a failed system call into a
subclass of :class:`KernelError`, which is an :class:`OSError` (``.errno`` is
the kernel's errno) and a :class:`swapd.errors.SwapdError`.  Besides the errno
it carries ``op`` (the call that failed, e.g. ``"UFFDIO_COPY"``) and
``meaning`` (what that errno means *for that call* on Linux 6.18, as measured in
docs/design.md sec. 11.10 and read in ``fs/userfaultfd.c`` / ``mm/userfaultfd.c``).

The userfaultfd errors are split by what the pager must do next:

=============================  ======  =============================================
exception                      errno   what the caller does
=============================  ======  =============================================
:class:`UffdExistsError`       EEXIST  benign race: the page is already there; done
                                       (the ioctl did not wake: ``wake()`` if unsure)
:class:`UffdPartialCopyError`  EAGAIN  ``.copied`` bytes were copied and woken;
                                       continue from ``dst + copied``
:class:`UffdEventPendingError` EAGAIN  nothing copied: a FORK/REMAP/REMOVE/UNMAP
                                       event is unread; drain events, then retry
:class:`UffdRangeGoneError`    ENOENT  the range is not (or no longer) registered
:class:`UffdClientGoneError`   ESRCH   the client's mm is gone; drop the client
:class:`UffdInvalidError`      EINVAL  bad alignment, mode or range: a bug
:class:`UffdFaultError`        EFAULT  bad source buffer (COPY) or no page in the
                                       page cache (CONTINUE)
=============================  ======  =============================================

Other errnos of the non-userfaultfd calls map to :class:`ProcessGoneError`
(ESRCH, ENOENT of ``/proc/PID``), :class:`KernelPermissionError` (EPERM,
EACCES) and :class:`FdTypeError` (an fd of the wrong kind); anything else is a
plain :class:`KernelError`.
"""

from __future__ import annotations

import errno as _errno
import os

from swapd.errors import ClientGoneError, SwapdError


class KernelError(SwapdError, OSError):
    """A system call failed.  ``errno``, ``op`` and ``meaning`` say which and why."""

    default_meaning: str = ""

    def __init__(self, err: int, op: str, meaning: str | None = None) -> None:
        meaning = meaning or self.default_meaning or os.strerror(err)
        super().__init__(err, f"{op}: {meaning} [{_errno.errorcode.get(err, err)}]")
        self.op = op
        self.meaning = meaning


class KernelPermissionError(KernelError):
    """EPERM/EACCES: missing capability (CAP_SYS_PTRACE, CAP_SYS_NICE) or ptrace access."""

    default_meaning = "not permitted (capability or ptrace access missing)"


class ProcessGoneError(KernelError, ClientGoneError):
    """ESRCH: the target process has exited (or its address space is gone)."""

    default_meaning = "the process has exited"


class FdTypeError(KernelError):
    """A file descriptor is not of the kind the call needs (not a userfaultfd, ...)."""

    default_meaning = "file descriptor of the wrong kind"


# --- userfaultfd ----------------------------------------------------------------


class UffdError(KernelError):
    """Base class of the userfaultfd ioctl errors."""


class UffdExistsError(UffdError):
    """EEXIST: a page is already mapped at the destination (a benign race)."""

    default_meaning = "a page is already present at the destination; nothing was woken"


class UffdAgainError(UffdError):
    """EAGAIN from a userfaultfd ioctl (see the two subclasses)."""


class UffdPartialCopyError(UffdAgainError):
    """EAGAIN with ``copied`` > 0: stopped at a present page; the copied part is woken."""

    default_meaning = "partial: stopped at a page that is already present"

    def __init__(self, op: str, copied: int, length: int) -> None:
        super().__init__(_errno.EAGAIN, op, f"partial: {copied} of {length} bytes done, "
                         "stopped at a page that is already present")
        self.copied = copied
        self.length = length


class UffdEventPendingError(UffdAgainError):
    """EAGAIN with nothing done: a non-cooperative event is unread; drain, then retry."""

    default_meaning = "a FORK/REMAP/REMOVE/UNMAP event is pending; read events, then retry"


class UffdRangeGoneError(UffdError):
    """ENOENT: the destination is not in a VMA registered with this userfaultfd."""

    default_meaning = "the range is not registered (unmapped or unregistered)"


class UffdClientGoneError(UffdError, ProcessGoneError):
    """ESRCH: the process whose memory this userfaultfd serves has exited."""

    default_meaning = "the client's address space is gone (process exited)"


class UffdInvalidError(UffdError):
    """EINVAL: unaligned address, bad mode or bad range (a caller bug)."""

    default_meaning = "invalid argument: unaligned or out-of-range address, or bad mode"


class UffdFaultError(UffdError):
    """EFAULT: bad source address (COPY) or no page in the page cache (CONTINUE)."""

    default_meaning = "bad source address, or no page in the page cache"


class UffdBadMessageError(UffdError):
    """read() on the userfaultfd returned a message this binding cannot parse."""

    default_meaning = "unparseable uffd_msg"


_UFFD_BY_ERRNO: dict[int, type[UffdError]] = {
    _errno.EEXIST: UffdExistsError,
    _errno.EAGAIN: UffdEventPendingError,
    _errno.ENOENT: UffdRangeGoneError,
    _errno.ESRCH: UffdClientGoneError,
    _errno.EINVAL: UffdInvalidError,
    _errno.EFAULT: UffdFaultError,
}

# What an errno means for one specific ioctl, where it differs from the class default
# (docs/design.md sec. 11.10; fs/userfaultfd.c, mm/userfaultfd.c).
_UFFD_MEANINGS: dict[tuple[str, int], str] = {
    ("UFFDIO_API", _errno.EINVAL): "API already negotiated on this fd, or a requested "
    "feature is not supported by this kernel",
    ("UFFDIO_API", _errno.EPERM): "UFFD_FEATURE_EVENT_FORK needs CAP_SYS_PTRACE",
    ("UFFDIO_REGISTER", _errno.EINVAL): "unaligned range, a VMA that cannot be registered "
    "(shmem needs MISSING_SHMEM / WP_HUGETLBFS_SHMEM / MINOR_SHMEM), or a mode the API "
    "features do not allow",
    ("UFFDIO_REGISTER", _errno.EBUSY): "the range is registered with another userfaultfd",
    ("UFFDIO_REGISTER", _errno.ENOMEM): "the address space is gone or out of memory",
    ("UFFDIO_UNREGISTER", _errno.ENOMEM): "the address space is gone or out of memory",
    ("UFFDIO_COPY", _errno.EFAULT): "the source address is not readable",
    ("UFFDIO_CONTINUE", _errno.EFAULT): "no page in the page cache at the destination "
    "(a hole)",
    ("UFFDIO_CONTINUE", _errno.EEXIST): "the page is already mapped",
    ("UFFDIO_POISON", _errno.EEXIST): "a page or a uffd-wp marker is present; remove WP "
    "with DONTWAKE first",
    ("UFFDIO_WRITEPROTECT", _errno.EINVAL): "unaligned range, range not registered in WP "
    "mode, or WP together with DONTWAKE",
    ("userfaultfd", _errno.EPERM): "vm.unprivileged_userfaultfd=0: needs CAP_SYS_PTRACE, "
    "UFFD_USER_MODE_ONLY or access to /dev/userfaultfd",
}

_GENERIC_BY_ERRNO: dict[int, type[KernelError]] = {
    _errno.EPERM: KernelPermissionError,
    _errno.EACCES: KernelPermissionError,
    _errno.ESRCH: ProcessGoneError,
}


def uffd_error(err: int, op: str, done: int = 0, length: int = 0) -> KernelError:
    """The exception for errno ``err`` of userfaultfd ioctl ``op``.  O(1).

    ``done`` is the ioctl's written-back count (``copy``, ``zeropage``,
    ``mapped``, ``updated``); with EAGAIN, ``done > 0`` means a partial result.
    """
    if err == _errno.EAGAIN and done > 0:
        return UffdPartialCopyError(op, done, length)
    meaning = _UFFD_MEANINGS.get((op, err))
    cls = _UFFD_BY_ERRNO.get(err)
    if cls is not None:
        return cls(err, op, meaning)
    if err in (_errno.EPERM, _errno.EACCES):
        return KernelPermissionError(err, op, meaning)
    return UffdError(err, op, meaning)


def kernel_error(err: int, op: str, meaning: str | None = None) -> KernelError:
    """The exception for errno ``err`` of a non-userfaultfd call ``op``.  O(1)."""
    return _GENERIC_BY_ERRNO.get(err, KernelError)(err, op, meaning)


def from_oserror(exc: OSError, op: str, meaning: str | None = None) -> KernelError:
    """Convert an :class:`OSError` raised by the :mod:`os` module (for ``raise ... from``)."""
    return kernel_error(exc.errno or _errno.EIO, op, meaning)
