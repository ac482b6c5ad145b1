"""The service manager's side of the notify protocol: the file descriptor store, and starting
a service with the stored descriptors.

Design.  :class:`FdStore` keeps descriptors under names exactly as systemd's
``src/core/service.c`` does: ``add`` refuses beyond ``max_fds`` (``EXFULL``; the
rest of that message is closed), suppresses a descriptor equal to one already
stored (``same_fd``: same inode and same open flags, devices never equal), and
unless the datagram said ``FDPOLL=0`` watches it with an epoll interest of 0 --
so only ``EPOLLERR``/``EPOLLHUP`` are reported -- and drops it when one is
(``on_fd_store_io``); a descriptor that cannot be polled (a regular file,
``EPERM``) is kept unwatched.  ``remove(name)`` closes every entry of that name
(``FDSTOREREMOVE=1``).  ``collect`` lists the entries newest first, as
``service_collect_fds`` walks the list that ``LIST_PREPEND`` built.

:class:`ServiceManager` owns a notify socket (``AF_UNIX``/``SOCK_DGRAM`` with
``SO_PASSCRED``: a datagram without credentials, with truncated control data,
or from another pid than the main process -- ``NotifyAccess=main`` -- is
ignored and its descriptors closed), the store, and the main process.  ``start``
forks and, in the child, moves the socket descriptors then the stored ones to
fd 3 on and execs with ``NOTIFY_SOCKET``, ``FDSTORE`` (the capacity),
``LISTEN_FDS``, ``LISTEN_FDNAMES`` and ``LISTEN_PID`` (the child's own pid, set
after the fork as ``exec_spawn`` does).  The store survives the main process:
it is passed again at the next start, and closed by :meth:`ServiceManager.close`
(``systemctl stop``).  ``swapd supervise`` runs a restart loop over this class,
and the tests use it as the service manager, so the daemon has one code path
with systemd and without it (``swapd.kernel.sdnotify`` is the daemon's side).

Thread-safety: none; one thread drives a manager.
"""

from __future__ import annotations

import array
import contextlib
import errno
import logging
import os
import select
import shutil
import socket
import stat
import struct
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

from swapd.kernel.sdnotify import SD_LISTEN_FDS_START, fdname_is_valid

log = logging.getLogger(__name__)

NOTIFY_BUFFER_MAX: Final = 4096  # src/core/manager.c: PIPE_BUF
NOTIFY_FD_MAX: Final = 768  # src/core/manager.c
NOTIFY_RCVBUF_SIZE: Final = 8 << 20  # src/core/manager.c
_UCRED: Final = struct.Struct("=iII")  # struct ucred {pid_t pid; uid_t uid; gid_t gid;}
_ANC_SPACE: Final = socket.CMSG_SPACE(NOTIFY_FD_MAX * 4) + socket.CMSG_SPACE(_UCRED.size)


class FdStoreFullError(OSError):
    """The store holds ``FileDescriptorStoreMax`` descriptors already (EXFULL)."""


@dataclass
class StoredFd:
    """One entry of the store: the manager's own descriptor, its name, whether it is polled."""

    fd: int
    name: str
    poll: bool


def same_fd(a: int, b: int) -> bool:
    """Whether two descriptors are the same open file, by systemd's ``same_fd`` rule."""
    sa, sb = os.fstat(a), os.fstat(b)
    if (sa.st_dev, sa.st_ino, stat.S_IFMT(sa.st_mode)) != \
            (sb.st_dev, sb.st_ino, stat.S_IFMT(sb.st_mode)):
        return False
    if stat.S_ISCHR(sa.st_mode) or stat.S_ISBLK(sa.st_mode):
        return False
    import fcntl

    return fcntl.fcntl(a, fcntl.F_GETFL) == fcntl.fcntl(b, fcntl.F_GETFL)


class FdStore:
    """Named descriptors kept across restarts of a service (see the module docstring)."""

    def __init__(self, max_fds: int) -> None:
        self.max_fds = max_fds
        self.entries: list[StoredFd] = []  # newest first
        self._ep = select.epoll()
        self._watched: dict[int, StoredFd] = {}  # fd -> entry, polled entries only

    def __len__(self) -> int:
        return len(self.entries)

    def add(self, fd: int, name: str | None, *, poll: bool = True) -> bool:
        """Take ownership of ``fd`` under ``name`` (None: ``stored``).  O(n).

        Returns True if stored, False if an equal descriptor was stored already
        (``fd`` is closed).  Raises FdStoreFullError (``fd`` is closed) when full.
        """
        try:
            if len(self.entries) >= self.max_fds:
                raise FdStoreFullError(errno.EXFULL, f"fd store full ({self.max_fds} "
                                       "descriptors, FileDescriptorStoreMax=)")
            for e in self.entries:
                if same_fd(e.fd, fd):
                    log.debug("suppressing duplicate fd %d (%s) in the fd store", fd, name)
                    os.close(fd)
                    return False
        except BaseException:
            with contextlib.suppress(OSError):
                os.close(fd)
            raise
        entry = StoredFd(fd, name if name is not None else "stored", poll)
        if poll:
            try:
                self._ep.register(fd, 0)
                self._watched[fd] = entry
            except OSError as exc:
                if exc.errno != errno.EPERM:  # EPERM: not pollable (a regular file): keep it
                    os.close(fd)
                    raise
        self.entries.insert(0, entry)
        return True

    def remove(self, name: str) -> int:
        """Close every entry named ``name``; returns how many.  O(n)."""
        gone = [e for e in self.entries if e.name == name]
        for e in gone:
            self._unlink(e)
        return len(gone)

    def _unlink(self, e: StoredFd) -> None:
        self.entries.remove(e)
        if self._watched.pop(e.fd, None) is not None:
            with contextlib.suppress(OSError):
                self._ep.unregister(e.fd)
        os.close(e.fd)

    def check(self) -> list[StoredFd]:
        """Drop the polled entries that report EPOLLERR or EPOLLHUP; returns them."""
        dropped: list[StoredFd] = []
        for fd, mask in self._ep.poll(0):
            e = self._watched.get(fd)
            if e is not None and mask & (select.EPOLLERR | select.EPOLLHUP):
                log.debug("received %s on stored fd %d (%s), closing",
                          "EPOLLERR" if mask & select.EPOLLERR else "EPOLLHUP", fd, e.name)
                self._unlink(e)
                dropped.append(e)
        return dropped

    def collect(self) -> list[tuple[int, str]]:
        """``(fd, name)`` of every entry, newest first (the order passed at the next start)."""
        self.check()
        return [(e.fd, e.name) for e in self.entries]

    def names(self) -> list[str]:
        """The entries' names, newest first."""
        return [e.name for e in self.entries]

    def fileno(self) -> int:
        """An epoll descriptor that becomes readable when a watched entry reports an error."""
        return self._ep.fileno()

    def close(self) -> None:
        """Close every entry (the store is released, as at ``systemctl stop``)."""
        for e in list(self.entries):
            self._unlink(e)
        self._ep.close()


@dataclass
class Notification:
    """One accepted notify datagram: its assignments, sender pid, and what the store did."""

    pid: int
    fields: dict[str, str]
    stored: list[str] = field(default_factory=list)  # names, one per descriptor stored
    removed: int = 0


class ServiceManager:
    """Start a service with the stored descriptors and keep what it stores (module docstring).

    ``argv`` is the main command; ``socket_fds`` are ``(fd, name)`` pairs of
    listening sockets passed first at every start (a socket unit's; the manager
    keeps them); ``env`` is added to the inherited environment; ``output``
    becomes the main process's stdout and stderr.
    """

    def __init__(self, argv: Sequence[str], *, store_max: int,
                 socket_fds: Sequence[tuple[int, str]] = (),
                 env: Mapping[str, str] | None = None, output: int | None = None) -> None:
        exe = shutil.which(argv[0])
        if exe is None:
            raise FileNotFoundError(errno.ENOENT, f"command not found: {argv[0]}")
        self.argv = [exe, *argv[1:]]
        self.store = FdStore(store_max)
        self.socket_fds = list(socket_fds)
        self.env = dict(env or {})
        self.output = output  # the main process's stdout and stderr (None: inherited)
        self._dir = tempfile.mkdtemp(prefix="swapd-manager-")
        self.notify_path = os.path.join(self._dir, "notify")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC
                                  | socket.SOCK_NONBLOCK)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        with contextlib.suppress(OSError):  # as systemd's NOTIFY_RCVBUF_SIZE
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, NOTIFY_RCVBUF_SIZE)
        self.sock.bind(self.notify_path)
        self.main_pid = 0
        self.pidfd = -1
        self.ready = False
        self.stopping = False  # STOPPING=1 received from this main process
        self.status = ""
        self.exit_status: int | None = None  # os.waitpid status of the last main process
        self.log: list[Notification] = []  # accepted notifications, oldest first

    # --- the main process -------------------------------------------------------------------

    def start(self) -> int:
        """Start the main process with the socket and stored descriptors; returns its pid."""
        if self.main_pid:
            raise RuntimeError(f"main process {self.main_pid} is still running")
        passed = self.socket_fds + self.store.collect()
        env = dict(os.environ)
        env.update(self.env)
        for k in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
            env.pop(k, None)
        env["NOTIFY_SOCKET"] = self.notify_path
        if self.store.max_fds > 0:
            env["FDSTORE"] = str(self.store.max_fds)
        if passed:
            env["LISTEN_FDS"] = str(len(passed))
            env["LISTEN_FDNAMES"] = ":".join(n for _, n in passed)
        srcs = [fd for fd, _ in passed]
        floor = max([SD_LISTEN_FDS_START + len(srcs), *srcs, 2]) + 1
        self.ready = self.stopping = False
        self.exit_status = None
        pid = os.fork()
        if pid == 0:  # the child: only async-signal-safe steps until exec
            try:
                import fcntl

                if self.output is not None:
                    os.dup2(self.output, 1)
                    os.dup2(self.output, 2)
                tmp = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, floor) for fd in srcs]
                for i, fd in enumerate(tmp):
                    os.dup2(fd, SD_LISTEN_FDS_START + i, inheritable=True)
                if passed:
                    env["LISTEN_PID"] = str(os.getpid())
                os.execve(self.argv[0], self.argv, env)
            finally:
                os._exit(127)
        self.main_pid = pid
        self.pidfd = os.pidfd_open(pid)
        log.info("started %s as pid %d with %d descriptors", self.argv[0], pid, len(passed))
        return pid

    def signal(self, sig: int) -> None:
        """Send ``sig`` to the main process (if it runs)."""
        if self.pidfd >= 0:
            with contextlib.suppress(ProcessLookupError):
                signal_pidfd(self.pidfd, sig)

    def _reap(self) -> bool:
        if not self.main_pid:
            return True
        pid, status = os.waitpid(self.main_pid, os.WNOHANG)
        if pid == 0:
            return False
        # What it sent before exiting still counts, and is still its main pid's: read it
        # before forgetting that pid (systemd's src/core/manager.c dispatches notify
        # messages before SIGCHLD for the same reason).
        self.dispatch(0)
        self.exit_status = status
        os.close(self.pidfd)
        self.pidfd = -1
        self.main_pid = 0
        self.store.check()
        return True

    def running(self) -> bool:
        """Whether the main process is alive (reaps it if it exited)."""
        return self.main_pid != 0 and not self._reap()

    # --- the notify socket --------------------------------------------------------------------

    def _receive(self) -> Notification | None:
        """Read one datagram; None if none is queued.  Applies it (see the module doc)."""
        try:
            data, anc, flags, _ = self.sock.recvmsg(NOTIFY_BUFFER_MAX, _ANC_SPACE,
                                                    socket.MSG_CMSG_CLOEXEC)
        except BlockingIOError:
            return None
        fds: list[int] = []
        cred: tuple[int, int, int] | None = None
        for level, kind, cdata in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                a = array.array("i")
                a.frombytes(cdata[:len(cdata) - len(cdata) % a.itemsize])
                fds.extend(a)
            elif level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                cred = _UCRED.unpack(cdata[:_UCRED.size])
        try:
            if flags & socket.MSG_CTRUNC:
                log.warning("notify datagram with truncated control data, ignoring")
                return Notification(-1, {})
            if cred is None:
                log.warning("notify datagram without credentials, ignoring")
                return Notification(-1, {})
            pid = cred[0]
            if pid != self.main_pid or not self.main_pid:
                log.warning("notify datagram from pid %d, but only the main pid %d may send",
                            pid, self.main_pid)
                return Notification(pid, {})
            tags: dict[str, str] = {}
            for line in data.decode("utf-8", "replace").split("\n"):
                k, sep, v = line.partition("=")
                if sep:
                    tags[k] = v
            note = Notification(pid, tags)
            self._apply(note, fds)
            fds = []  # taken by the store (or closed by it)
            self.log.append(note)
            return note
        finally:
            for fd in fds:
                with contextlib.suppress(OSError):
                    os.close(fd)

    def _apply(self, note: Notification, fds: list[int]) -> None:
        tags = note.fields
        if tags.get("STOPPING") == "1":
            self.stopping = True
        elif tags.get("READY") == "1":
            self.ready = True
        if "STATUS" in tags:
            self.status = tags["STATUS"]
        if tags.get("FDSTOREREMOVE") == "1":
            gone = tags.get("FDNAME")
            if gone is None or not fdname_is_valid(gone):
                log.warning("FDSTOREREMOVE=1 requested, but no valid file descriptor name "
                            "passed, ignoring")
            else:
                note.removed = self.store.remove(gone)
        elif tags.get("FDSTORE") == "1":
            name: str | None = tags.get("FDNAME")
            if name is not None and not fdname_is_valid(name):
                log.warning("passed FDNAME= name is invalid, ignoring")
                name = None
            poll = tags.get("FDPOLL") != "0"
            while fds:
                fd = fds.pop(0)
                try:
                    if self.store.add(fd, name, poll=poll):
                        note.stored.append(name or "stored")
                except FdStoreFullError:
                    log.warning("cannot store more fds than FileDescriptorStoreMax=%d, "
                                "closing remaining", self.store.max_fds)
                    break
        for fd in fds:  # not taken: closed, as the manager does
            with contextlib.suppress(OSError):
                os.close(fd)
        fds.clear()

    def dispatch(self, timeout: float | None) -> list[Notification]:
        """Wait up to ``timeout`` for datagrams and apply all that are queued."""
        out: list[Notification] = []
        if timeout is None or timeout > 0:
            select.select([self.sock], [], [], timeout)
        while True:
            note = self._receive()
            if note is None:
                break
            out.append(note)
        self.store.check()
        return out

    def wait(self, *, ready: bool = False, exited: bool = False,
             timeout: float = 30.0) -> bool:
        """Dispatch until READY=1 (``ready``) or the main process exited (``exited``)."""
        deadline = time.monotonic() + timeout
        while True:
            if exited and not self.running():
                return True
            if ready and self.ready:
                return True
            if ready and not self.running():
                return False
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            rl = [self.sock] + ([self.pidfd] if self.pidfd >= 0 else [])
            select.select(rl, [], [], min(left, 0.5))
            self.dispatch(0)

    def stop(self, sig: int = 15, *, timeout: float = 30.0) -> int | None:
        """Signal the main process and wait for it (SIGKILL after ``timeout``); exit status."""
        if not self.running():
            return self.exit_status
        self.signal(sig)
        if not self.wait(exited=True, timeout=timeout):
            self.signal(9)
            self.wait(exited=True, timeout=timeout)
        return self.exit_status

    def close(self) -> None:
        """Stop the main process (SIGTERM), then release the store and the notify socket."""
        with contextlib.suppress(OSError, ChildProcessError):
            self.stop()
        self.store.close()
        self.sock.close()
        with contextlib.suppress(OSError):
            os.unlink(self.notify_path)
        with contextlib.suppress(OSError):
            os.rmdir(self._dir)

    def __enter__(self) -> ServiceManager:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def signal_pidfd(pidfd: int, sig: int) -> None:
    """``pidfd_send_signal(pidfd, sig, NULL, 0)`` (5.1): no pid-reuse race."""
    import signal as _signal

    _signal.pidfd_send_signal(pidfd, sig)
