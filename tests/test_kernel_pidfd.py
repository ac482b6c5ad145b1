"""swapd.kernel.pidfd with real processes: exit via pidfd, pidfd_getfd, process_madvise,
SO_PEERCRED."""

from __future__ import annotations

import errno
import os
import select
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from swapd.errors import ClientGoneError
from swapd.kernel.errors import KernelError, ProcessGoneError
from swapd.kernel.memfd import is_memfd
from swapd.kernel.mm import MADV_DONTNEED
from swapd.kernel.pidfd import (
    MADV_COLD,
    MADV_PAGEOUT,
    peer_credentials,
    pidfd_getfd,
    pidfd_open,
    process_madvise,
)
from swapd.kernel.uffd import Userfaultfd, is_userfaultfd
from tests.test_kernel_support import (  # noqa: F401  (fixtures)
    PAGE,
    UFFD_SKIP,
    ClientProcess,
    client_fixture,
    kernel_alarm_fixture,
)

pytestmark = [pytest.mark.usefixtures("kernel_alarm"), UFFD_SKIP]


def _poll(fd: int, timeout_s: float) -> int:
    p = select.poll()
    p.register(fd, select.POLLIN)
    events = p.poll(timeout_s * 1000)
    return events[0][1] if events else 0


def test_pidfd_reports_exit_then_reap(kernel_alarm: None) -> None:
    c = ClientProcess(4, mode=0)
    pidfd = pidfd_open(c.pid)
    try:
        assert _poll(pidfd, 0.05) == 0  # alive
        c.send("Q")
        assert _poll(pidfd, 10) & select.POLLIN  # exited (a zombie: we are its parent)
        assert c.proc.wait(timeout=10) == 0
        assert _poll(pidfd, 10) == select.POLLIN | select.POLLHUP  # reaped: 0x11
        with pytest.raises(ProcessGoneError) as ei:
            process_madvise(pidfd, [(c.base, PAGE)], MADV_COLD)
        assert ei.value.errno == errno.ESRCH and isinstance(ei.value, ClientGoneError)
    finally:
        os.close(pidfd)
        c.close()
    with pytest.raises(ProcessGoneError):
        pidfd_open(c.pid)


def test_pidfd_getfd_takes_the_clients_fds_back(client: ClientProcess) -> None:
    pidfd = pidfd_open(client.pid)
    try:
        memfd = pidfd_getfd(pidfd, client.child_memfd_no)
        try:
            assert is_memfd(memfd)
            assert os.fstat(memfd).st_ino == os.fstat(client.memfd).st_ino
            assert not os.get_inheritable(memfd)
        finally:
            os.close(memfd)
        assert client.uffd is not None
        ufd = pidfd_getfd(pidfd, client.child_uffd_no)
        assert is_userfaultfd(ufd)
        with Userfaultfd.from_fd(ufd) as again:  # what a restarted daemon does
            assert again.features == client.uffd.features
        with pytest.raises(KernelError) as ei:
            pidfd_getfd(pidfd, 999)
        assert ei.value.errno == errno.EBADF and "no fd 999" in str(ei.value)
    finally:
        os.close(pidfd)


def test_process_madvise(kernel_alarm: None) -> None:
    c = ClientProcess(8, mode=0)
    pidfd = pidfd_open(c.pid)
    try:
        assert c.command("T 0 8 1") == "ok"
        ranges = [(c.base, 2 * PAGE), (c.base + 4 * PAGE, 4 * PAGE)]
        assert process_madvise(pidfd, ranges, MADV_COLD) == 6 * PAGE
        assert process_madvise(pidfd, [(c.base, 8 * PAGE)], MADV_PAGEOUT) == 8 * PAGE
        with pytest.raises(KernelError) as ei:  # DONTNEED is not allowed remotely
            process_madvise(pidfd, [(c.base, PAGE)], MADV_DONTNEED)
        assert ei.value.errno == errno.EINVAL
        many = [(c.base + (i % 8) * PAGE, PAGE) for i in range(1500)]  # > IOV_MAX
        assert process_madvise(pidfd, many, MADV_COLD) == 1500 * PAGE
    finally:
        os.close(pidfd)
        c.close()


_CONNECT = ("import socket, sys; s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); "
            "s.recv(1)")


def test_peer_credentials_of_a_connected_process(tmp_path: Path, kernel_alarm: None) -> None:
    path = str(tmp_path / "sock")
    with socket.socket(socket.AF_UNIX) as srv:
        srv.bind(path)
        srv.listen(1)
        srv.settimeout(20)
        proc = subprocess.Popen([sys.executable, "-c", _CONNECT, path])
        try:
            conn, _ = srv.accept()
            with conn:
                assert peer_credentials(conn) == (proc.pid, os.getuid(), os.getgid())
        finally:
            proc.kill()
            proc.wait(timeout=10)
    a, b = socket.socketpair()
    with a, b:
        assert peer_credentials(a) == (os.getpid(), os.getuid(), os.getgid())
    with socket.socket(socket.AF_UNIX) as lonely, pytest.raises(KernelError) as ei:
        peer_credentials(lonely)
    assert ei.value.errno == errno.ENOTCONN
