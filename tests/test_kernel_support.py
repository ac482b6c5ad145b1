"""Harness for the kernel-binding tests: a real client process and a per-test alarm.

:class:`ClientProcess` starts a small Python program (``CHILD_SRC``) in a new
process.  It creates a memfd, maps it MAP_SHARED, optionally creates a
userfaultfd (API handshake + REGISTER), and sends both fds to the test over a
socketpair with SCM_RIGHTS -- exactly what a swapd client does.  Then it obeys
one-line commands (read/write a page, madvise, munmap, fork, exit) and answers
each with one line.  A command that touches a missing page blocks in the child
until the test resolves the fault; the test reads the answer afterwards.

Nothing may hang the suite: every wait has a timeout, the ``kernel_alarm``
fixture raises TimeoutError after ``ALARM_S`` seconds (SIGALRM), and
:meth:`ClientProcess.close` kills and reaps the child (and its forks).
"""

from __future__ import annotations

import os
import select
import signal
import socket
import subprocess
import sys
import zlib
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

import pytest

from swapd.kernel import uffd as U
from swapd.kernel.uffd import UffdEvent, Userfaultfd

PAGE = 4096
ALARM_S = 30
ROOT = Path(__file__).resolve().parent.parent

DEFAULT_FEATURES = (U.UFFD_FEATURE_MISSING_SHMEM | U.UFFD_FEATURE_WP_HUGETLBFS_SHMEM
                    | U.UFFD_FEATURE_THREAD_ID | U.UFFD_FEATURE_EVENT_FORK
                    | U.UFFD_FEATURE_EVENT_REMOVE | U.UFFD_FEATURE_EVENT_UNMAP
                    | U.UFFD_FEATURE_POISON)
DEFAULT_MODE = U.UFFDIO_REGISTER_MODE_MISSING | U.UFFDIO_REGISTER_MODE_WP

CHILD_SRC = r"""
import mmap, os, socket, sys, zlib
from swapd.kernel import memfd as M, mm
from swapd.kernel.uffd import Userfaultfd

PAGE = 4096
sock = socket.socket(fileno=int(sys.argv[1]))
npages, features, mode = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
user_mode_only = sys.argv[5] == "1"
fd = M.memfd_create("swapd-test")
os.ftruncate(fd, npages * PAGE)
m = mmap.mmap(fd, npages * PAGE, mmap.MAP_SHARED)
base = mm.address_of(m)
fds = [fd]
ufd = -1
if mode:
    u = Userfaultfd.create(user_mode_only=user_mode_only)
    u.api(features)
    u.register(base, npages * PAGE, mode)
    fds.append(u.fd)
    ufd = u.fd
socket.send_fds(sock, [f"hello {base} {os.getpid()} {fd} {ufd}\n".encode()], fds)

def page(i):
    return m[i * PAGE:(i + 1) * PAGE]

f = sock.makefile("r")
for line in f:
    cmd, *a = line.split()
    a = [int(x) for x in a]
    if cmd == "R":        # read page a0 -> crc32
        out = f"ok {zlib.crc32(page(a[0]))}"
    elif cmd == "W":      # fill page a0 with byte a1
        m[a[0] * PAGE:(a[0] + 1) * PAGE] = bytes([a[1]]) * PAGE
        out = "ok"
    elif cmd == "T":      # write one byte to a1 pages: a0, a0 + a2, a0 + 2 * a2, ...
        for i in range(a[0], a[0] + a[1] * a[2], a[2]):
            m[i * PAGE] = 1
        out = "ok"
    elif cmd == "K":      # the kernel writes page a0: readv(/dev/zero) into it
        z = os.open("/dev/zero", os.O_RDONLY)
        try:
            out = f"ok {os.readv(z, [memoryview(m)[a[0] * PAGE:(a[0] + 1) * PAGE]])}"
        except OSError as e:
            out = f"errno {e.errno}"
        finally:
            os.close(z)
    elif cmd == "w":      # write byte a1 at offset 0 of page a0
        m[a[0] * PAGE] = a[1]
        out = "ok"
    elif cmd == "M":      # madvise(pages a0..a0+a1, advice a2)
        mm.madvise(base + a[0] * PAGE, a[1] * PAGE, a[2])
        out = "ok"
    elif cmd == "U":      # munmap everything
        m.close()
        out = "ok"
    elif cmd == "F":      # fork; the grandchild reads page a0 and reports
        pid = os.fork()
        if pid == 0:
            try:
                sock.sendall(f"gc {os.getpid()} {zlib.crc32(page(a[0]))}\n".encode())
            finally:
                os._exit(0)
        _, status = os.waitpid(pid, 0)
        out = f"ok {pid} {status}"
    elif cmd == "Q":      # exit without unmapping (munmap would send EVENT_UNMAP)
        os._exit(0)
    else:
        out = f"error {cmd}"
    sock.sendall((out + "\n").encode())
"""


def uffd_unavailable_reason() -> str | None:
    """Why userfaultfd with the default test features cannot be used here, or None."""
    import errno

    from swapd.kernel.errors import KernelError

    try:
        with Userfaultfd.create() as u:
            supported = u.api(0).features
    except KernelError as exc:
        if exc.errno == errno.ENOSYS:
            return "the kernel has no userfaultfd (CONFIG_USERFAULTFD=n)"
        if exc.errno == errno.EPERM:
            return "userfaultfd needs CAP_SYS_PTRACE here (vm.unprivileged_userfaultfd=0)"
        raise
    missing = DEFAULT_FEATURES & ~supported
    if missing:
        return f"the kernel lacks userfaultfd features {missing:#x} (needs Linux >= 6.6)"
    return None


def pagemap_scan_unavailable_reason() -> str | None:
    """Why PAGEMAP_SCAN (Linux 6.7) cannot be used here, or None."""
    import errno

    from swapd.kernel import pagemap
    from swapd.kernel.errors import KernelError

    try:
        pagemap.pagemap_scan(os.getpid(), 0, PAGE, category_mask=0, return_mask=0)
    except KernelError as exc:
        if exc.errno in (errno.ENOTTY, errno.EINVAL, errno.ENOSYS):
            return f"PAGEMAP_SCAN is not supported by this kernel ({exc})"
        raise
    return None


UFFD_SKIP = pytest.mark.skipif(uffd_unavailable_reason() is not None,
                               reason=str(uffd_unavailable_reason()))
PAGEMAP_SCAN_SKIP = pytest.mark.skipif(pagemap_scan_unavailable_reason() is not None,
                                       reason=str(pagemap_scan_unavailable_reason()))


def crc(data: bytes | memoryview) -> int:
    """crc32 as the child computes it."""
    return zlib.crc32(data)


class ClientProcess:
    """A child process with a memfd mapping (and a registered userfaultfd) of ``npages``."""

    def __init__(self, npages: int = 16, *, features: int = DEFAULT_FEATURES,
                 mode: int = DEFAULT_MODE, user_mode_only: bool = False) -> None:
        self.npages = npages
        self.sock, theirs = socket.socketpair()
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        self.proc = subprocess.Popen(
            [sys.executable, "-c", CHILD_SRC, str(theirs.fileno()), str(npages), str(features),
             str(mode), "1" if user_mode_only else "0"], pass_fds=[theirs.fileno()], env=env)
        theirs.close()
        self.memfd = -1
        self.uffd: Userfaultfd | None = None
        self._buf = b""
        try:
            self.sock.settimeout(20)
            msg, fds, _, _ = socket.recv_fds(self.sock, 256, 2)
            if not msg.startswith(b"hello "):
                for fd in fds:
                    os.close(fd)
                raise RuntimeError(f"child did not start: {msg!r}")
            _, base, pid, memfd_no, uffd_no = msg.split()
            self.base, self.pid = int(base), int(pid)
            self.child_memfd_no, self.child_uffd_no = int(memfd_no), int(uffd_no)
            self.memfd = fds[0]
            if len(fds) > 1:
                self.uffd = Userfaultfd.from_fd(fds[1])
        except BaseException:
            self.close()
            raise

    def addr(self, page: int) -> int:
        """Address of ``page`` in the child."""
        return self.base + page * PAGE

    def send(self, cmd: str) -> None:
        """Send one command line."""
        self.sock.sendall((cmd + "\n").encode())

    def reply(self, timeout: float = 10.0) -> str:
        """The next answer line; TimeoutError if none within ``timeout`` seconds."""
        self.sock.settimeout(timeout)
        while b"\n" not in self._buf:
            try:
                chunk = self.sock.recv(4096)
            except TimeoutError:
                raise TimeoutError(f"no reply from child within {timeout} s") from None
            if not chunk:
                raise EOFError("child closed the socket")
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return line.decode()

    def has_reply(self, timeout: float) -> bool:
        """True if an answer arrives within ``timeout`` seconds (without consuming it)."""
        if b"\n" in self._buf:
            return True
        r, _, _ = select.select([self.sock], [], [], timeout)
        return bool(r)

    def command(self, cmd: str, timeout: float = 10.0) -> str:
        """Send ``cmd`` and return its answer (for commands that do not fault)."""
        self.send(cmd)
        return self.reply(timeout)

    def close(self) -> None:
        """Kill and reap the child, close every fd."""
        if self.proc.poll() is None:
            self.proc.kill()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:  # pragma: no cover - a D-state child
            pass
        if self.uffd is not None:
            self.uffd.close()
        if self.memfd >= 0:
            os.close(self.memfd)
            self.memfd = -1
        self.sock.close()


def wait_events(uffd: Userfaultfd, timeout: float = 10.0) -> list[UffdEvent]:
    """Poll ``uffd`` until messages are queued, then read them all."""
    poller = select.poll()
    poller.register(uffd.fd, select.POLLIN)
    if not poller.poll(timeout * 1000):
        raise TimeoutError(f"no userfaultfd event within {timeout} s")
    events = uffd.read_events()
    assert events, "poll said readable but read() found nothing"
    return events


def _on_alarm(signum: int, frame: FrameType | None) -> None:
    raise TimeoutError(f"kernel test exceeded {ALARM_S} s (SIGALRM)")


@pytest.fixture(name="kernel_alarm")
def kernel_alarm_fixture() -> Iterator[None]:
    """Fail (not hang) a test that runs longer than ALARM_S seconds."""
    old = signal.signal(signal.SIGALRM, _on_alarm)
    signal.alarm(ALARM_S)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


@pytest.fixture(name="client")
def client_fixture(kernel_alarm: None) -> Iterator[ClientProcess]:
    """A default client: 16 pages, MISSING|WP registered, fork/remove/unmap events."""
    c = ClientProcess()
    try:
        yield c
    finally:
        c.close()


# --- the harness's own checks --------------------------------------------------------


@UFFD_SKIP

def test_client_starts_and_sends_a_memfd_and_a_userfaultfd(client: ClientProcess) -> None:
    from swapd.errors import InvariantError
    from swapd.kernel.memfd import is_memfd

    assert is_memfd(client.memfd)
    assert client.uffd is not None and U.is_userfaultfd(client.uffd.fd)
    assert client.uffd.features == DEFAULT_FEATURES
    client.uffd._check()
    client.uffd.features = 0
    with pytest.raises(InvariantError):
        client.uffd._check()
    assert os.fstat(client.memfd).st_size == client.npages * PAGE
    assert client.base % PAGE == 0
    assert client.command("bogus") == "error bogus"


def test_alarm_turns_a_hang_into_a_failure(kernel_alarm: None) -> None:
    signal.alarm(1)
    with pytest.raises(TimeoutError):
        select.select([], [], [], 5)
