"""The fd store protocol, both sides: swapd.kernel.sdnotify (the daemon's) against
swapd.kernel.fdstore (the service manager's, systemd's rules), with real processes.

The manager here plays systemd: it reads the notify datagrams with their
credentials and descriptors, keeps the store, honours FDSTOREREMOVE and FDPOLL,
drops descriptors that poll as errors, and starts the next process with
LISTEN_FDS / LISTEN_FDNAMES / LISTEN_PID.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path

import pytest

from swapd.kernel import sdnotify
from swapd.kernel.fdstore import FdStore, FdStoreFullError, ServiceManager

# A service that reports what it received, then runs one command from argv.
CHILD = r"""
import json, os, sys
from swapd.kernel import sdnotify
got = sdnotify.listen_fds()
info = []
for fd, name in got:
    info.append([fd, name, os.readlink(f"/proc/self/fd/{fd}")])
with open(sys.argv[1], "w") as f:
    json.dump({"fds": info, "pid": os.getpid(), "store": sdnotify.store_capacity(),
               "env_left": "LISTEN_FDS" in os.environ}, f)
cmd = sys.argv[2]
if cmd == "store":
    r, w = os.pipe()
    m = os.memfd_create("kept")
    os.write(m, b"state")
    assert sdnotify.store_fds("pipe.r", [r])
    assert sdnotify.store_fds("mem", [m])
    assert sdnotify.store_fds("mem", [m])  # equal to a stored one: not stored twice
    assert sdnotify.store_fds("pipe.w", [w], poll=False)
elif cmd == "remove":
    assert sdnotify.remove_fds("pipe.w")
elif cmd == "uffd":
    from swapd.kernel import uffd
    raw = uffd.Userfaultfd.create(nonblock=True)      # API not done: polls EPOLLERR
    raw2 = uffd.Userfaultfd.create(nonblock=True)
    ok = uffd.Userfaultfd.create(nonblock=True)
    ok.api(0)
    assert sdnotify.store_fds("uffd.raw", [raw.fd])
    assert sdnotify.store_fds("uffd.raw.nopoll", [raw2.fd], poll=False)
    assert sdnotify.store_fds("uffd.ready", [ok.fd])
sdnotify.notify("READY=1\nSTATUS=done " + cmd)
"""


def _child(tmp_path: Path, out: str, cmd: str) -> list[str]:
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    return [sys.executable, str(script), str(tmp_path / out), cmd]


def _report(tmp_path: Path, out: str) -> dict:
    return json.loads((tmp_path / out).read_text())


def test_store_pass_remove_across_starts(tmp_path: Path) -> None:
    with ServiceManager(_child(tmp_path, "a.json", "store"), store_max=16) as m:
        m.start()
        assert m.wait(ready=True, timeout=60)
        assert m.wait(exited=True, timeout=60)
        assert m.status == "done store"
        # the duplicate memfd was suppressed; the write end is kept with FDPOLL=0
        assert sorted(m.store.names()) == ["mem", "pipe.r", "pipe.w"]
        first = _report(tmp_path, "a.json")
        assert first["fds"] == [] and first["store"] == 16

        m.argv[2:] = [str(tmp_path / "b.json"), "remove"]
        pid = m.start()
        assert m.wait(exited=True, timeout=60)
        second = _report(tmp_path, "b.json")
        assert second["pid"] == pid and not second["env_left"]
        # newest first, from fd 3 on, with their names
        assert [(fd, n) for fd, n, _ in second["fds"]] == [(3, "pipe.w"), (4, "mem"),
                                                           (5, "pipe.r")]
        assert second["fds"][1][2].startswith("/memfd:kept")
        # the write end's removal closed the last writer: the polled read end hung up
        assert m.store.names() == ["mem"]
        # the stored memfd is the same file the first process wrote
        mem = next(e.fd for e in m.store.entries if e.name == "mem")
        assert os.pread(mem, 5, 0) == b"state"


def test_what_a_process_stored_just_before_exiting_is_kept(tmp_path: Path) -> None:
    """The manager reads the notify socket before it forgets the exited main pid (as
    systemd's manager.c dispatches notify messages before SIGCHLD): datagrams still queued
    when the process is reaped are its, not a stranger's.  Regression: they were dropped as
    coming from "pid X, but only the main pid 0 may send"."""
    with ServiceManager(_child(tmp_path, "a.json", "store"), store_max=16) as m:
        m.start()
        os.waitid(os.P_PID, m.main_pid, os.WEXITED | os.WNOWAIT)  # exited, not yet reaped
        assert not m.log  # nothing dispatched yet
        assert m.wait(exited=True, timeout=60)  # reaps, and reads what is queued
        assert sorted(m.store.names()) == ["mem", "pipe.r", "pipe.w"]
        assert m.status == "done store"


def test_polled_fds_that_report_errors_are_dropped(tmp_path: Path) -> None:
    with ServiceManager(_child(tmp_path, "u.json", "uffd"), store_max=16) as m:
        m.start()
        assert m.wait(exited=True, timeout=60)
        # the pipe-less uffd without UFFDIO_API polls EPOLLERR: dropped unless FDPOLL=0
        assert sorted(m.store.names()) == ["uffd.raw.nopoll", "uffd.ready"]


def test_hangup_drops_a_polled_pipe(tmp_path: Path) -> None:
    store = FdStore(4)
    r, w = os.pipe()
    r2, w2 = os.pipe()
    store.add(r, "r", poll=True)
    store.add(r2, "r2", poll=False)
    assert store.check() == []
    os.close(w)
    os.close(w2)
    assert [e.name for e in store.check()] == ["r"]
    assert store.names() == ["r2"]
    store.close()


def test_full_store_refuses_and_closes(tmp_path: Path) -> None:
    store = FdStore(1)
    a = os.memfd_create("a")
    b = os.memfd_create("b")
    assert store.add(a, None)
    with pytest.raises(FdStoreFullError):
        store.add(b, "b")
    with pytest.raises(OSError):
        os.fstat(b)  # consumed
    assert store.names() == ["stored"]
    store.close()


def test_only_the_main_process_may_store(tmp_path: Path) -> None:
    with ServiceManager([sys.executable, "-c", "pass"], store_max=4) as m:
        m.main_pid = os.getpid() + 1_000_000  # someone else is the main process
        fd = os.memfd_create("x")
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            import array
            s.sendmsg([b"FDSTORE=1\nFDNAME=x"],
                      [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]).tobytes())],
                      0, m.notify_path)
        os.close(fd)
        notes = m.dispatch(1.0)
        assert len(notes) == 1 and notes[0].fields == {}
        assert len(m.store) == 0
        m.main_pid = 0


def test_names_are_checked() -> None:
    assert sdnotify.fdname_is_valid("c1.r2.uffd")
    assert not sdnotify.fdname_is_valid("a:b")
    assert not sdnotify.fdname_is_valid("x" * 256)
    assert not sdnotify.fdname_is_valid("tab\there")
    with pytest.raises(ValueError, match="invalid"):
        sdnotify.store_fds("a:b", [0])


def test_listen_fds_requires_our_pid(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LISTEN_PID", str(os.getpid() + 1))
    monkeypatch.setenv("LISTEN_FDS", "1")
    assert sdnotify.listen_fds() == []
    assert "LISTEN_FDS" not in os.environ
