"""Process file descriptors: exit notification, fd fetching, remote madvise, peer creds.

The daemon keeps a pidfd per client in its poll set: a userfaultfd shows
nothing when its process exits (no POLLHUP, read gives EAGAIN, ioctls give
ESRCH), while a pidfd polls ``POLLIN|POLLHUP`` (docs/design.md sec. 11.6).
``pidfd_getfd`` lets a restarted daemon take a client's userfaultfd back
(sec. 2.6); ``process_madvise(MADV_PAGEOUT)`` clears the software referenced
bit of a client's pages (sec. 2.4); SO_PEERCRED authenticates a client.

Prior art: ``kernel/pid.c`` (pidfd_open, pidfd_getfd), ``mm/madvise.c``
(process_madvise), ``net/core/sock.c`` (SO_PEERCRED).
"""

from __future__ import annotations

import ctypes
import errno as _errno
import os
import socket
import struct
from typing import Final

from swapd.kernel import _libc
from swapd.kernel.errors import ProcessGoneError, kernel_error
from swapd.kernel.mm import MADV_COLD, MADV_PAGEOUT

__all__ = ["MADV_COLD", "MADV_PAGEOUT", "peer_credentials", "pidfd_getfd", "pidfd_open",
           "process_madvise"]

IOV_MAX: Final = 1024  # UIO_MAXIOV, include/uapi/linux/uio.h


class _Iovec(ctypes.Structure):
    """``struct iovec { void *iov_base; size_t iov_len; };`` (include/uapi/linux/uio.h)."""

    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


# struct ucred { __u32 pid; __u32 uid; __u32 gid; };   (include/linux/socket.h)
_UCRED = struct.Struct("=iII")


def pidfd_open(pid: int) -> int:
    """``pidfd_open(pid, 0)`` (5.3): an fd that polls POLLIN|POLLHUP once ``pid`` exits.

    Raises ProcessGoneError (ESRCH) if no such process exists.
    """
    try:
        return os.pidfd_open(pid, 0)
    except OSError as exc:
        if exc.errno == _errno.ESRCH:
            raise ProcessGoneError(_errno.ESRCH, "pidfd_open", f"no process {pid}") from exc
        raise kernel_error(exc.errno or _errno.EIO, "pidfd_open") from exc


def pidfd_getfd(pidfd: int, targetfd: int) -> int:
    """``pidfd_getfd`` (5.6): duplicate fd ``targetfd`` of the process into ours.

    Needs PTRACE_MODE_ATTACH_REALCREDS on the target.  Raises ProcessGoneError
    (ESRCH), KernelPermissionError (EPERM) or KernelError(EBADF) if the target
    has no such fd.  The new fd is close-on-exec.
    """
    fd = _libc.syscall3(_libc.SYS_pidfd_getfd, pidfd, targetfd, 0)
    if fd < 0:
        err = _libc.get_errno()
        raise kernel_error(err, "pidfd_getfd",
                           f"the process has no fd {targetfd}" if err == _errno.EBADF else None)
    return int(fd)


def process_madvise(pidfd: int, ranges: list[tuple[int, int]], advice: int) -> int:
    """``process_madvise`` (5.10) ``advice`` on ``(address, length)`` ranges of a process.

    Only MADV_COLD, MADV_PAGEOUT (and MADV_WILLNEED, MADV_COLLAPSE) are allowed;
    needs CAP_SYS_NICE and PTRACE_MODE_READ.  Returns the bytes advised, which
    is less than the total only if the kernel stopped early.  O(ranges + pages).
    """
    total = 0
    for base in range(0, len(ranges), IOV_MAX):
        chunk = ranges[base : base + IOV_MAX]
        iov = (_Iovec * len(chunk))(*[_Iovec(a, n) for a, n in chunk])
        want = sum(n for _, n in chunk)
        done = _libc.syscall5(_libc.SYS_process_madvise, pidfd, ctypes.addressof(iov),
                              len(chunk), advice, 0)
        if done < 0:
            err = _libc.get_errno()
            if total:
                return total
            raise kernel_error(err, f"process_madvise({advice})")
        total += done
        if done < want:
            break
    return total


def peer_credentials(sock: socket.socket) -> tuple[int, int, int]:
    """``(pid, uid, gid)`` of the peer of a connected UNIX socket (SO_PEERCRED).

    The credentials are those of the process that called ``connect`` (or
    ``socketpair``), captured at that time.  Raises KernelError(ENOTCONN) when
    the socket has no peer credentials (unconnected, or not AF_UNIX: the
    kernel then reports pid 0).
    """
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    except OSError as exc:
        raise kernel_error(exc.errno or _errno.EIO, "getsockopt(SO_PEERCRED)") from exc
    pid, uid, gid = _UCRED.unpack(raw)
    if pid <= 0:
        raise kernel_error(_errno.ENOTCONN, "getsockopt(SO_PEERCRED)",
                           "the socket has no peer credentials")
    return pid, uid, gid
