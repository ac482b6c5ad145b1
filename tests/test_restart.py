"""A client keeps its data across daemon restarts: graceful (SIGTERM, ``restart`` op) and crash
(SIGKILL), with the real daemon under the service manager of swapd.kernel.fdstore (systemd's
rules for the fd store; the same one ``swapd supervise`` runs).

The client is a separate process that writes every page of a region under a small resident
limit, then verifies every page on command while the daemon is restarted under it.  A page
that was stored when the daemon was killed, and whose stored copy died with it, must be
poisoned and reported, never read as zeros or stale data.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from swapd.kernel.fdstore import ServiceManager
from tests.test_daemon_helpers import BASE_CONFIG, ROOT, client_cmd, needs_uffd

pytestmark = needs_uffd

PAGES = 1024  # 4 MiB under a 64-page limit

CLIENT = """
import hashlib
def page(i, seed):
    return hashlib.blake2b(f"{seed}/{i}".encode(), digest_size=64).digest() * 64
with connect(SOCK, name="restart-test") as c:
    c.set_limit(64 * 4096)
    reg = c.map(PAGES * 4096)
    n = len(reg) // 4096
    seed = 1
    for i in range(n):
        reg[i * 4096:(i + 1) * 4096] = page(i, seed)
    out(phase="written", counters=c.stats()["counters"])
    for line in sys.stdin:
        cmd = line.split()
        if cmd[0] == "verify":
            poisoned = set(reg.poisoned_pages())
            bad = [i for i in range(n)
                   if i not in poisoned and reg[i * 4096:(i + 1) * 4096] != page(i, seed)]
            st = c.stats()
            out(phase="verified", bad=bad, poisoned=sorted(poisoned), restarts=c.restarts,
                counters=st["counters"], pages=st["pages"])
        elif cmd[0] == "settle":  # wait until the daemon evicted most pages again
            while c.stats()["pages"]["SWAPPED"] < n // 2:
                time.sleep(0.05)
            out(phase="settled", pages=c.stats()["pages"])
        elif cmd[0] == "touch":  # reread one page that must be poisoned: SIGBUS
            reg[int(cmd[1]) * 4096]
            out(phase="touched")
        elif cmd[0] == "restart":
            c._request("restart")
            out(phase="restart sent")
        elif cmd[0] == "quit":
            break
out(phase="done")
""".replace("PAGES", str(PAGES))

# The same client, but it maps its region only when told to (``map``): a session that
# connected first can map after a later one.
CLIENT_MAPS_LATE = CLIENT.replace(
    "    reg = c.map(", '    out(phase="connected")\n    sys.stdin.readline()\n    reg = c.map(', 1)


class Client:
    """The verifying client process, driven line by line."""

    def __init__(self, sock: Path, script: str = CLIENT) -> None:
        self.p = subprocess.Popen(client_cmd(script, sock), stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                  cwd=ROOT)

    def read(self, timeout: float = 120.0,
             manager: ServiceManager | None = None) -> dict[str, Any]:
        """The client's next JSON line; ``manager``: dispatch its notifications meanwhile (a
        daemon that stores descriptors waits for the manager to read them)."""
        assert self.p.stdout is not None
        import select

        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if manager is not None:
                manager.dispatch(0)
            if select.select([self.p.stdout], [], [], 1.0 if manager is None else 0.02)[0]:
                line = self.p.stdout.readline()
                if not line:
                    break
                if line.startswith("{"):
                    obj: dict[str, Any] = json.loads(line)
                    return obj
        err = self.p.stderr.read() if self.p.poll() is not None and self.p.stderr else ""
        raise AssertionError(f"client gave no answer (exit {self.p.poll()}): {err}")

    def send(self, cmd: str) -> None:
        assert self.p.stdin is not None
        self.p.stdin.write(cmd + "\n")
        self.p.stdin.flush()

    def close(self) -> None:
        if self.p.poll() is None:
            self.p.kill()
        self.p.wait(10)
        for f in (self.p.stdin, self.p.stdout, self.p.stderr):
            if f is not None:
                f.close()


@contextmanager
def managed_daemon(tmp_path: Path,
                   config: str = BASE_CONFIG) -> Iterator[tuple[ServiceManager, Path]]:
    sock = tmp_path / "swapd.sock"
    cfg = tmp_path / "swapd.toml"
    cfg.write_text(config)
    log = os.open(tmp_path / "daemon.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    argv = [sys.executable, "-m", "swapd", "-v", "serve", "--socket", str(sock),
            "--state-dir", str(tmp_path / "state"), "--config", str(cfg)]
    m = ServiceManager(argv, store_max=256, output=log, env={"PYTHONPATH": str(ROOT)})
    try:
        yield m, sock
    finally:
        m.close()
        os.close(log)


def _start(m: ServiceManager, tmp_path: Path) -> None:
    m.start()
    assert m.wait(ready=True, timeout=60), (tmp_path / "daemon.log").read_text()[-4000:]


def test_client_keeps_its_data_across_restarts_and_a_crash(tmp_path: Path) -> None:
    with managed_daemon(tmp_path) as (m, sock):
        _start(m, tmp_path)
        c = Client(sock)
        try:
            first = c.read()
            assert first["phase"] == "written"
            assert first["counters"]["evicted_pages"] > PAGES // 2  # most pages are stored

            # graceful: SIGTERM hands over; the next daemon adopts the session
            assert m.stop(signal.SIGTERM) == 0
            names = m.store.names()
            assert {"listen", "sessions", "c1.conn", "c1.pidfd", "c1.r1.memfd", "c1.r1.uffd",
                    "c1.r1.state"} <= set(names), names
            _start(m, tmp_path)
            c.send("verify")
            r = c.read()
            assert r["bad"] == [] and r["poisoned"] == [], r
            assert r["restarts"] == 0  # a pause, not an error: nothing had to be resent

            # a restart while the client is reading every page: it pauses, then goes on
            c.send("verify")
            time.sleep(0.05)
            assert m.stop(signal.SIGTERM) == 0
            _start(m, tmp_path)
            r = c.read()
            assert r["bad"] == [] and r["poisoned"] == [], r

            # the restart op (`swapd ctl restart`): exit status 75, the manager starts it again
            c.send("restart")
            assert c.read()["phase"] == "restart sent"
            assert m.wait(exited=True, timeout=60)
            assert os.waitstatus_to_exitcode(m.exit_status or 0) == 75
            _start(m, tmp_path)
            c.send("verify")
            r = c.read()
            assert r["bad"] == [] and r["poisoned"] == [], r

            # crash: evict again, then SIGKILL; the resident pages survive, every stored
            # page whose copy died with the daemon is poisoned and reported
            c.send("settle")
            before = c.read()["pages"]
            m.stop(signal.SIGKILL)
            _start(m, tmp_path)
            c.send("verify")
            r = c.read()
            assert r["bad"] == [], r
            assert before["SWAPPED"] > 0, before
            # every lost page is poisoned; with backends whose state is in their memfd regions
            # (docs/state-format.md, section 5) the compressed copies survive the crash too,
            # and only a copy caught mid-store can be lost
            assert len(r["poisoned"]) == r["pages"]["GONE"], r
            assert r["pages"]["RESIDENT"] + len(r["poisoned"]) <= PAGES, r
            assert r["counters"]["poisoned_pages"] == len(r["poisoned"])
            if r["poisoned"]:
                # a poisoned page raises SIGBUS in the client: never zeros, never stale data
                c.send(f"touch {r['poisoned'][0]}")
                assert c.p.wait(60) == -signal.SIGBUS
        finally:
            c.close()
        log = (tmp_path / "daemon.log").read_text()
        assert "Traceback" not in log, log[-4000:]
        assert "adopted 1 session(s) after a crash" in log


def test_unreadable_state_is_refused_by_name_and_kept(tmp_path: Path) -> None:
    with managed_daemon(tmp_path) as (m, sock):
        _start(m, tmp_path)
        c = Client(sock)
        try:
            assert c.read()["phase"] == "written"
            assert m.stop(signal.SIGTERM) == 0
            before = sorted(m.store.names())
            reg = next(e.fd for e in m.store.entries if e.name == "sessions")
            good = os.pread(reg, 12, 0)
            os.pwrite(reg, good[:8] + (99).to_bytes(4, "little"), 0)  # a future format
            m.start()
            assert m.wait(exited=True, timeout=60)
            assert os.waitstatus_to_exitcode(m.exit_status or 0) == 78
            log = (tmp_path / "daemon.log").read_text()
            assert "format version 99 is not supported" in log
            assert sorted(m.store.names()) == before  # nothing was removed
            os.pwrite(reg, good, 0)  # the "compatible daemon" comes
            _start(m, tmp_path)
            c.send("verify")
            r = c.read()
            assert r["bad"] == [] and r["poisoned"] == [], r
            c.send("quit")
            assert c.read()["phase"] == "done"
        finally:
            c.close()


def test_a_crash_keeps_the_pages_the_layer_hands_over(tmp_path: Path) -> None:
    """With a layer whose state regions can be adopted (here a disk tier alone, sealed), a
    SIGKILL loses no page: the stored copies come back with the regions."""
    config = BASE_CONFIG.replace("[layer]\n", '[layer]\ntiers = ["disk"]\n')
    with managed_daemon(tmp_path, config) as (m, sock):
        _start(m, tmp_path)
        c = Client(sock)
        try:
            assert c.read()["phase"] == "written"
            c.send("settle")
            before = c.read()["pages"]
            m.stop(signal.SIGKILL)
            assert "layer.tier0.disk" in m.store.names(), m.store.names()
            _start(m, tmp_path)
            c.send("verify")
            r = c.read()
            assert r["bad"] == [] and r["poisoned"] == [], r
            assert r["pages"]["SWAPPED"] + r["pages"]["RESIDENT"] == PAGES, (before, r)
            m.stop(signal.SIGTERM)  # and a graceful one on top
            _start(m, tmp_path)
            c.send("verify")
            r = c.read()
            assert r["bad"] == [] and r["poisoned"] == [], r
            c.send("quit")
            assert c.read()["phase"] == "done"
        finally:
            c.close()
        log = (tmp_path / "daemon.log").read_text()
        assert "Traceback" not in log, log[-4000:]


def test_each_session_keeps_its_own_stored_pages_after_the_layer_is_adopted(
        tmp_path: Path) -> None:
    """Regression: an adopted layer numbers its clients in the order they first stored, the
    daemon names them by session id.  Session 1 maps after session 2 here; before the fix,
    session 1 ending after a restart freed session 2's stored pages (the daemon then stopped
    on "no region" and the clients waited for it forever)."""
    with managed_daemon(tmp_path) as (m, sock):
        _start(m, tmp_path)
        first = Client(sock, CLIENT_MAPS_LATE)
        second: Client | None = None
        try:
            assert first.read(manager=m)["phase"] == "connected"
            second = Client(sock)
            assert second.read(manager=m)["phase"] == "written"
            first.send("map")
            assert first.read(manager=m)["phase"] == "written"
            assert m.stop(signal.SIGTERM) == 0
            assert "layer.table" in m.store.names(), m.store.names()  # the layer is adopted
            _start(m, tmp_path)
            first.send("quit")
            assert first.read(manager=m)["phase"] == "done"
            assert first.p.wait(60) == 0
            second.send("verify")
            r = second.read(manager=m)
            assert r["bad"] == [] and r["poisoned"] == [], r
            assert r["pages"]["SWAPPED"] + r["pages"]["RESIDENT"] == PAGES, r
            assert m.running()
        finally:
            first.close()
            if second is not None:
                second.close()
        log = (tmp_path / "daemon.log").read_text()
        assert "Traceback" not in log and "error:" not in log, log[-4000:]


def test_a_request_the_killed_daemon_read_is_sent_again(tmp_path: Path) -> None:
    """After a crash the new daemon's ``restarted`` notice makes the client send its
    outstanding request again, under a new id; the reply to that copy is the request's reply.
    Regression: when the killed daemon had read the request (so only the copy is answered),
    the client raised ProtocolError ("reply id N+1 does not match request N").  Here the test
    reads the request off the stored connection, as the killed daemon would have."""
    import select
    import socket

    with managed_daemon(tmp_path) as (m, sock):
        _start(m, tmp_path)
        c = Client(sock)
        try:
            assert c.read(manager=m)["phase"] == "written"
            m.stop(signal.SIGKILL)
            conn = next(e.fd for e in m.store.entries if e.name == "c1.conn")
            c.send("verify")  # its first request (stats) goes to a daemon that is gone
            with socket.socket(fileno=os.dup(conn)) as s:
                assert select.select([s], [], [], 60)[0], "the client sent nothing"
                assert s.recv(1 << 16, socket.MSG_DONTWAIT)  # read, never answered
            _start(m, tmp_path)
            r = c.read(manager=m)
            assert r["phase"] == "verified", r
            assert r["bad"] == [] and r["restarts"] >= 1, r
        finally:
            c.close()
        log = (tmp_path / "daemon.log").read_text()
        assert "Traceback" not in log, log[-4000:]


@pytest.mark.parametrize("cmd", [["supervise", "--store-max", "0"]])
def test_supervise_refuses_bad_options(cmd: list[str]) -> None:
    p = subprocess.run([sys.executable, "-m", "swapd", *cmd], capture_output=True, text=True,
                       cwd=ROOT, timeout=60)
    assert p.returncode == 2 and p.stderr.startswith("error: --store-max must be >= 1"), p


def test_orphan_disk_files_are_removed_and_held_ones_kept(tmp_path: Path) -> None:
    """A disk-tier file that no process holds (a crash without a store) is removed at start,
    with a log line; one that a live holder locks (an fd store) is left alone."""
    import fcntl

    from tests.test_daemon_helpers import daemon_running

    state = tmp_path / "state"
    state.mkdir()
    (state / "swapd-4242-0.swap").write_bytes(b"old")  # a per-process name of old
    (state / "swapd.swap").write_bytes(b"old")
    held = state / "other.swap"
    held.write_bytes(b"kept")
    fd = os.open(held, os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        with daemon_running(tmp_path) as d:
            log = d.log_text()
            assert "removed disk tier file" in log and "swapd-4242-0.swap" in log, log
            assert not (state / "swapd-4242-0.swap").exists()
            assert (state / "swapd.swap").exists()  # this daemon's own, new file
            with open(state / "swapd.swap", "rb") as f:
                assert f.read(3) != b"old"
            held.rename(tmp_path / "other.swap")  # out of the way of the clean-exit check
    finally:
        os.close(fd)


def test_a_session_reattaches_with_its_token(tmp_path: Path) -> None:
    """hello with the session token moves the session to a new connection; the library
    re-attaches by itself when its connection is gone, and a stranger's token is refused."""
    from tests.test_daemon_helpers import daemon_running, run_client

    with daemon_running(tmp_path) as d:
        r = run_client("""
            import socket
            from swapd import protocol
            with connect(SOCK) as c:
                reg = c.map(64 * 4096)
                reg[0:5] = b"hello"
                tok = c.server["session_token"]
                s2 = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                s2.connect(SOCK)
                protocol.send_frame(s2, {"op": "hello", "id": 0, "version": 1,
                                         "session_token": tok})
                again, _ = protocol.recv_frame(s2)
                # c's old connection was closed by the daemon: the next request re-attaches
                limit = c.set_limit(8 * 4096)
                s3 = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                s3.connect(SOCK)
                protocol.send_frame(s3, {"op": "hello", "id": 0, "version": 1,
                                         "session_token": "0" * 32})
                wrong, _ = protocol.recv_frame(s3)
                out(again=again, limit=limit, restarts=c.restarts, data=bytes(reg[0:5]).decode(),
                    session=c.server["session"], wrong=wrong)
                s2.close()
                s3.close()
        """, d.socket)
        assert r["again"]["ok"] and r["again"]["session"] == r["session"], r
        assert r["again"]["regions"] == [1], r
        assert r["limit"] == 8 * 4096 and r["restarts"] == 1 and r["data"] == "hello", r
        assert r["wrong"]["error"] == "not_found", r


def test_connecting_while_the_daemon_restarts_waits(tmp_path: Path) -> None:
    """The stored listening socket queues a connection made while no daemon runs; the next
    daemon answers its hello."""
    import threading

    from swapd.client import connect

    with managed_daemon(tmp_path) as (m, sock):
        _start(m, tmp_path)
        assert m.stop(signal.SIGTERM) == 0
        got: list[object] = []

        def client() -> None:
            try:
                with connect(sock, name="during-restart") as c:
                    c.ping()
                    got.append(c.server["pid"])
            except Exception as exc:  # reported below
                got.append(exc)

        t = threading.Thread(target=client)
        t.start()
        t.join(0.5)
        assert t.is_alive() and not got  # waiting, not failing
        _start(m, tmp_path)
        while t.is_alive():
            m.dispatch(0.05)
        assert got == [m.main_pid], got


def test_swapd_supervise_restarts_the_daemon_and_keeps_the_client(tmp_path: Path) -> None:
    """`swapd supervise` is the manager: a daemon killed under it comes back with the
    client's session; SIGTERM to the supervisor stops everything."""
    sock = tmp_path / "swapd.sock"
    cfg = tmp_path / "swapd.toml"
    cfg.write_text(BASE_CONFIG)
    with open(tmp_path / "supervise.log", "wb") as logf:
        sup = subprocess.Popen(
            [sys.executable, "-m", "swapd", "supervise", "--", "--socket", str(sock),
             "--state-dir", str(tmp_path / "state"), "--config", str(cfg)],
            stdout=logf, stderr=logf, cwd=ROOT, start_new_session=True)
    c: Client | None = None
    try:
        deadline = time.monotonic() + 60
        while not sock.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        c = Client(sock)
        assert c.read()["phase"] == "written"
        from swapd.client import connect

        with connect(sock, name="probe") as probe:
            first = probe.server["pid"]
        os.kill(first, signal.SIGKILL)
        c.send("verify")
        r = c.read()
        assert r["bad"] == [], r
        with connect(sock, name="probe") as probe:
            assert probe.server["pid"] != first
        c.send("quit")
        assert c.read()["phase"] == "done"
    finally:
        if c is not None:
            c.close()
        sup.send_signal(signal.SIGTERM)
        rc = sup.wait(60)
    assert rc == 0, (tmp_path / "supervise.log").read_text()[-3000:]
