"""Helpers for the daemon, client and protocol tests: a real daemon process and real clients.

Every daemon is a ``python -m swapd serve`` subprocess in a temporary directory,
started with a private ``$NOTIFY_SOCKET`` so the helper knows when the socket
is served (READY=1), stopped with SIGTERM (SIGKILL after a timeout), and
checked to leave no disk-tier file behind.  Clients run as subprocesses with a
timeout, so a bug that blocks a faulting thread fails a test instead of hanging
the suite.  Nothing here is a stand-in: these are the real daemon and library.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent

BASE_CONFIG = """
[daemon]
check_invariants = true
[limits]
default_resident_bytes = "1M"
[layer]
pool_limit_bytes = "512K"
disk_bytes = "64M"
[reclaim]
batch_pages = 32
hard_slack_pages = 64
low_watermark_pages = 16
interval_ms = 20
refbit_slice_pages = 256
"""


def uffd_unavailable() -> str | None:
    """Why this machine cannot run the daemon tests, or None."""
    try:
        from swapd.kernel.uffd import Userfaultfd

        Userfaultfd.create().close()
    except Exception as exc:
        return f"userfaultfd unavailable: {exc}"
    if not hasattr(os, "pidfd_open"):
        return "pidfd_open unavailable"
    return None


needs_uffd = pytest.mark.skipif(uffd_unavailable() is not None,
                                reason=str(uffd_unavailable()))


def _die_with_parent() -> None:
    """In the daemon child: SIGKILL when the test process dies (even if it is killed)."""
    import ctypes

    pr_set_pdeathsig = 1  # <linux/prctl.h>
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)


class DaemonProc:
    """A running ``swapd serve`` (see the module docstring)."""

    def __init__(self, workdir: Path, config: str = BASE_CONFIG, extra: list[str] | None = None,
                 timeout: float = 60.0, env: dict[str, str] | None = None) -> None:
        self.workdir = workdir
        self.socket = workdir / "swapd.sock"
        self.state = workdir / "state"
        self.config = workdir / "swapd.toml"
        self.config.write_text(config)
        self.log = workdir / "daemon.log"
        notify_path = workdir / "notify.sock"
        self._notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self._notify.bind(str(notify_path))
        self.notifications: list[str] = []
        env = dict(os.environ, NOTIFY_SOCKET=str(notify_path), PYTHONUNBUFFERED="1",
                   **(env or {}))
        self._logf = open(self.log, "wb")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "swapd", "-v", "serve", "--socket", str(self.socket),
             "--state-dir", str(self.state), "--config", str(self.config), *(extra or [])],
            stdin=subprocess.DEVNULL, stdout=self._logf, stderr=self._logf, env=env,
            cwd=ROOT, start_new_session=True, preexec_fn=_die_with_parent)
        deadline = time.monotonic() + timeout
        self._notify.settimeout(0.1)
        while True:
            if self.proc.poll() is not None:
                self._logf.close()
                self._notify.close()
                raise AssertionError(f"daemon exited {self.proc.returncode}:\n{self.log_text()}")
            if time.monotonic() > deadline:
                self.kill()
                raise AssertionError(f"daemon not ready in {timeout}s:\n{self.log_text()}")
            try:
                msg = self._notify.recv(4096).decode()
            except TimeoutError:
                continue
            self.notifications.append(msg)
            if "READY=1" in msg.split("\n"):
                break

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")[-6000:]

    def drain_notifications(self) -> list[str]:
        self._notify.settimeout(0.05)
        while True:
            try:
                self.notifications.append(self._notify.recv(4096).decode())
            except (TimeoutError, OSError):
                return self.notifications

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM and wait; returns the exit status (SIGKILL after ``timeout``)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.send_signal(signal.SIGUSR1)  # stacks into the log, then kill
                time.sleep(0.5)
                self.kill()
        if not self._logf.closed:
            self._logf.close()
        self._notify.close()
        return self.proc.returncode

    def assert_clean_exit(self) -> None:
        rc = self.stop()
        assert rc == 0, f"daemon exit status {rc}:\n{self.log_text()}"
        leftovers = list(self.state.glob("*")) if self.state.exists() else []
        assert leftovers == [], f"the daemon left files behind: {leftovers}"
        assert not self.socket.exists(), "the daemon left its socket behind"
        assert "Traceback" not in self.log_text(), self.log_text()


@contextmanager
def daemon_running(tmp_path: Path, config: str = BASE_CONFIG, extra: list[str] | None = None,
                   env: dict[str, str] | None = None) -> Iterator[DaemonProc]:
    d = DaemonProc(tmp_path, config, extra, env=env)
    try:
        yield d
    except BaseException:
        d.stop()
        raise
    d.assert_clean_exit()


PRELUDE = """
import ctypes, json, mmap, os, random, signal, sys, threading, time, zlib
ctypes.CDLL(None).prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG: die with the test
from swapd.client import connect
from swapd.errors import DaemonGoneError, QuotaExceededError, RequestError
SOCK = sys.argv[1]
def out(**kw):
    print(json.dumps(kw), flush=True)
"""


def client_cmd(code: str, sock: Path) -> list[str]:
    return [sys.executable, "-c", PRELUDE + textwrap.dedent(code), str(sock)]


def run_client(code: str, sock: Path, timeout: float = 90.0) -> dict[str, Any]:
    """Run ``code`` as a client process; return the JSON object of its last output line."""
    p = subprocess.run(client_cmd(code, sock), capture_output=True, text=True, timeout=timeout,
                       cwd=ROOT)
    assert p.returncode == 0, f"client failed ({p.returncode}):\n{p.stdout}\n{p.stderr}"
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
    assert lines, f"client printed no result:\n{p.stdout}\n{p.stderr}"
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def stats_all(sock: Path) -> dict[str, Any]:
    """The daemon's ``stats all`` through the real client library."""
    from swapd.client import connect

    with connect(sock, name="test-stats") as c:
        return c.stats("all")


def wait_for(pred: Any, timeout: float = 15.0, what: str = "condition") -> Any:
    """Poll ``pred()`` until it returns a truthy value; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_helpers_reject_a_broken_config(tmp_path: Path) -> None:
    """The helper reports a daemon that cannot start (and the daemon says why)."""
    with pytest.raises(AssertionError, match="unknown key 'bogus'"):
        DaemonProc(tmp_path, "[layer]\nbogus = 1\n", timeout=30)
