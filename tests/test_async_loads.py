"""A slow disk delays only the faults that need it (issue 13, item 4): slow-tier loads run on the
daemon's load workers (swapd/daemon/loader.py), and the loop serves every other fault meanwhile.

The disk is a real file system (swapd/kernel/fuse.py) whose reads are *held* on cue: a held read
is unanswered until the test releases it, so every test orders events ("B finished while A's
read was still held") instead of timing them.  Client A's pages go to the disk (its
``zswap_max_bytes`` is 0), client B's stay in the compressed tier or are never written.  Timeouts
below only bound a failure (a hang), they are not measured.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from swapd.kernel.fuse import FaultFS, fuse_unavailable
from tests.test_daemon_helpers import BASE_CONFIG, ROOT, client_cmd, daemon_running, needs_uffd

pytestmark = [needs_uffd,
              pytest.mark.skipif(fuse_unavailable() is not None, reason=str(fuse_unavailable()))]

NPAGES = 64

# Client A: its pages on the disk; commands on stdin, one JSON line per event on stdout.
A_CLIENT = """
import ctypes, hashlib
_out_lock = threading.Lock()
def out(**kw):  # one whole line per event, whichever thread prints it
    with _out_lock:
        sys.stdout.write(json.dumps(kw) + "\\n")
        sys.stdout.flush()
def page(i):
    return hashlib.blake2b(b"A%d" % i, digest_size=64).digest() * 64
c = connect(SOCK, name="A")
c.ctl("zswap_max_bytes", 0, client=c.server["session"], set_value=True)  # straight to disk
c.set_limit(16 * 4096)
reg = c.map(NPAGES * 4096)
for i in range(NPAGES):
    reg[i * 4096:(i + 1) * 4096] = page(i)
reg.advise(0, NPAGES * 4096, "cold")
c.set_limit(4 * NPAGES * 4096)  # room for every page: no reclaim from now on
st = c.stats()
out(ev="stored", disk=st["layer"]["disk_pages"], pages=st["pages"])
view = memoryview(reg)
scratch = os.memfd_create("scratch")
scratches = [os.memfd_create("scratch") for _ in range(4)]
def read(i, tag):
    # through a system call: the thread waits in the kernel without the GIL (a load from
    # Python code would hold it while its fault waits, and stop the main thread too)
    fd = scratches[tag]  # its own file: a write holds the file's lock while it faults
    try:
        os.pwrite(fd, view[i * 4096:(i + 1) * 4096], i * 4096)
    except OSError as exc:
        out(ev="read", i=i, tag=tag, ok=False, errno=exc.errno)
        return
    out(ev="read", i=i, tag=tag, ok=os.pread(fd, 4096, i * 4096) == page(i), errno=0)
for line in sys.stdin:
    cmd = line.split()
    if cmd[0] == "read":  # in a thread: the main thread stays free for commands
        for tag in range(int(cmd[2]) if len(cmd) > 2 else 1):
            threading.Thread(target=read, args=(int(cmd[1]), tag), daemon=True).start()
        out(ev="reading", i=int(cmd[1]))
    elif cmd[0] == "readnow":
        read(int(cmd[1]), 0)
    elif cmd[0] == "munmap":  # unmap pages [first, NPAGES) behind the library's back
        first = int(cmd[1])
        base = reg.address
        libc = ctypes.CDLL(None, use_errno=True)
        libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        rc = libc.munmap(base + first * 4096, (NPAGES - first) * 4096)
        out(ev="unmapped", rc=rc)
    elif cmd[0] == "stats":
        st = c.stats()
        out(ev="stats", counters=st["counters"], pages=st["pages"])
    elif cmd[0] == "verify":
        bad, efault = [], []
        for i in range(int(cmd[1]) if len(cmd) > 1 else NPAGES):
            try:
                os.pwrite(scratch, view[i * 4096:(i + 1) * 4096], 0)
            except OSError:
                efault.append(i)
                continue
            if os.pread(scratch, 4096, 0) != page(i):
                bad.append(i)
        st = c.stats()
        out(ev="verified", bad=bad, efault=efault, counters=st["counters"], pages=st["pages"])
    elif cmd[0] == "quit":
        break
os._exit(0)
""".replace("NPAGES", str(NPAGES))

# Client B: pages that stay in memory (compressed, or never written: zero pages).
B_CLIENT = """
def page(i):
    return (b"B%05d" % i) * 682 + b"B" * 4
c = connect(SOCK, name="B")
c.set_limit(16 * 4096)
reg = c.map(256 * 4096)
for i in range(0, 256, 2):  # odd pages are never written: they read as zeros
    reg[i * 4096:(i + 1) * 4096] = page(i)
reg.advise(0, 256 * 4096, "cold")
out(ev="ready", layer=c.stats()["layer"])
for line in sys.stdin:
    if line.strip() == "go":
        bad = [i for i in range(256) if reg[i * 4096:(i + 1) * 4096] !=
               (page(i) if i % 2 == 0 else bytes(4096))]
        st = c.stats()
        out(ev="done", bad=bad, faults=st["counters"]["faults"],
            disk_reads=st["layer"].get("pswpin", 0))
    elif line.strip() == "quit":
        break
"""


class Proc:
    """A client process driven line by line (its lines are read by a thread into a queue)."""

    def __init__(self, code: str, sock: Path) -> None:
        self.p = subprocess.Popen(client_cmd(code, sock), stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                  cwd=ROOT)
        self.lines: queue.Queue[str] = queue.Queue()
        self._reader = threading.Thread(target=self._read_lines, daemon=True)
        self._reader.start()

    def _read_lines(self) -> None:
        assert self.p.stdout is not None
        for line in self.p.stdout:
            self.lines.put(line)
        self.lines.put("")  # end of output

    def ready(self) -> bool:
        """Whether a line is waiting (without blocking)."""
        return not self.lines.empty()

    def read(self, timeout: float = 120.0) -> dict[str, Any]:
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError("the client did not answer (is the daemon's loop "
                                 "blocked?)") from None
        if not line:
            err = self.p.stderr.read() if self.p.stderr else ""
            raise AssertionError(f"client exited ({self.p.wait()}): {err[-2000:]}")
        obj: dict[str, Any] = json.loads(line)
        return obj

    def expect(self, ev: str, timeout: float = 120.0) -> dict[str, Any]:
        obj = self.read(timeout)
        assert obj["ev"] == ev, obj
        return obj

    def send(self, cmd: str) -> None:
        assert self.p.stdin is not None
        self.p.stdin.write(cmd + "\n")
        self.p.stdin.flush()

    def close(self) -> None:
        if self.p.poll() is None:
            self.p.kill()
        self.p.wait(10)
        self._reader.join(10)
        for f in (self.p.stdin, self.p.stdout, self.p.stderr):
            if f is not None:
                f.close()


@pytest.fixture
def fs(tmp_path: Path) -> Iterator[FaultFS]:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    f = FaultFS(mnt, capacity=256 << 20)
    try:
        yield f
    finally:
        f.close()


def _config(fs: FaultFS, extra: str = "") -> str:
    return BASE_CONFIG.replace(
        'disk_bytes = "64M"', f'disk_bytes = "16M"\ndisk_path = "{fs.mountpoint}"{extra}')


def _start_a(sock: Path, *, disk_second: bool = True) -> Proc:
    a = Proc(A_CLIENT, sock)
    st = a.expect("stored")
    assert st["pages"]["SWAPPED"] == NPAGES, st
    if disk_second:  # (disk_pages counts a disk tier below the compressed one)
        assert st["disk"] >= NPAGES, st
    return a


def _wait_counter(a: Proc, name: str, at_least: int) -> dict[str, Any]:
    """Ask A for its counters until ``name`` reaches ``at_least`` (bounded by a hang guard)."""
    for _ in range(2000):
        a.send("stats")
        st = a.expect("stats")
        if st["counters"][name] >= at_least:
            return st
        time.sleep(0.01)
    raise AssertionError(f"{name} never reached {at_least}: {st}")


def test_slow_disk_delays_only_the_faults_that_need_it(fs: FaultFS, tmp_path: Path) -> None:
    with daemon_running(tmp_path, _config(fs)) as d:
        a = _start_a(d.socket)
        b = Proc(B_CLIENT, d.socket)
        try:
            assert b.expect("ready")["layer"]["disk_pages"] == 0
            fs.hold_reads()
            a.send("read 5")
            a.expect("reading")
            assert fs.wait_held(1), "A's fault never reached the disk"
            b.send("go")
            done = b.expect("done")  # with loads on the loop thread this hangs: A's read holds it
            assert done["bad"] == [] and done["faults"] >= 256 and done["disk_reads"] == 0, done
            # the order of events: B finished every access while A's read was still held
            assert fs.held == 1
            assert not a.ready(), "A's fault completed before its read was released"
            fs.release_reads()
            r = a.expect("read")
            assert r["i"] == 5 and r["ok"], r
            a.send("verify")
            v = a.expect("verified")
            assert v["bad"] == [] and v["efault"] == [], v
            assert v["counters"]["worker_loads"] >= 1 and v["counters"]["poisoned_pages"] == 0
            a.send("quit")
            b.send("quit")
            assert a.p.wait(60) == 0 and b.p.wait(60) == 0
        finally:
            fs.release_reads()
            a.close()
            b.close()


def test_duplicate_faults_share_one_load(fs: FaultFS, tmp_path: Path) -> None:
    with daemon_running(tmp_path, _config(fs)) as d:
        a = _start_a(d.socket)
        try:
            fs.hold_reads()
            reads = fs.reads
            a.send("read 7 3")  # three threads fault on the same page
            a.expect("reading")
            assert fs.wait_held(1)
            _wait_counter(a, "load_joins", 2)  # the other two joined the load in flight
            assert fs.held == 1 and not a.ready()
            fs.release_reads()
            got = [a.expect("read") for _ in range(3)]
            assert sorted(r["tag"] for r in got) == [0, 1, 2] and all(r["ok"] for r in got), got
            assert fs.reads - reads == 1  # one read of the disk for the three faults
            a.send("verify")
            v = a.expect("verified")
            assert v["bad"] == [] and v["efault"] == [], v
            assert v["counters"]["worker_loads"] >= 1 and v["counters"]["load_joins"] >= 2
        finally:
            fs.release_reads()
            a.close()


def test_unmap_during_a_load_drops_only_the_unmapped_pages(fs: FaultFS, tmp_path: Path) -> None:
    """A sequential fault loads a readahead run on a worker; the client unmaps most of that
    run while the read is held: the faulting page arrives, nothing is placed where the region
    is gone, nothing is poisoned, and the daemon's invariants hold (checked every second)."""
    with daemon_running(tmp_path, _config(fs)) as d:
        a = _start_a(d.socket)
        try:
            a.send("readnow 0")
            assert a.expect("read")["ok"]
            fs.hold_reads()
            a.send("read 1")  # sequential: page 1 and a readahead run after it
            a.expect("reading")
            assert fs.wait_held(1)
            a.send("munmap 2")  # pages 2.. go while their load is in flight
            assert a.expect("unmapped")["rc"] == 0
            assert fs.held == 1 and not a.ready()
            fs.release_reads()
            r = a.expect("read")
            assert r["i"] == 1 and r["ok"], r
            a.send("verify 2")
            v = a.expect("verified")
            assert v["bad"] == [] and v["efault"] == [], v
            assert v["counters"]["poisoned_pages"] == 0, v
            assert v["pages"]["GONE"] == NPAGES - 2, v
            a.send("quit")
            assert a.p.wait(60) == 0
        finally:
            fs.release_reads()
            a.close()
    assert "Traceback" not in d.log.read_text()


def test_a_failed_read_on_a_worker_poisons_that_page_only(fs: FaultFS, tmp_path: Path) -> None:
    with daemon_running(tmp_path, _config(fs)) as d:
        a = _start_a(d.socket)
        try:
            fs.fail_reads = {k * 4096 for k in range(16 << 8)}  # every slot, for now
            a.send("readnow 9")
            r = a.expect("read")
            assert r["errno"] == 14, r  # EFAULT: the page is poisoned, not served as zeros
            assert fs.failed_reads >= 1
            fs.fail_reads = set()
            a.send("verify")
            v = a.expect("verified")
            assert v["efault"] == [9] and v["bad"] == [], v
            assert v["counters"]["poisoned_pages"] == 1 and v["pages"]["GONE"] == 1, v
            assert v["counters"]["worker_loads"] >= 1
            a.send("quit")
            assert a.p.wait(60) == 0
        finally:
            a.close()


# --- restarts with loads in flight (tests/test_restart.py's service manager) ------------------


def _managed(tmp_path: Path, config: str) -> Any:
    from tests.test_restart import managed_daemon

    return managed_daemon(tmp_path, config)


def _wait_log(path: Path, text: str, timeout: float = 60.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if path.exists() and text in path.read_text():
            return
        time.sleep(0.05)
    raise AssertionError(f"{text!r} never appeared in {path}")


@pytest.mark.parametrize("how", ["handover", "sigkill"])
def test_a_restart_with_a_load_in_flight_loses_nothing(fs: FaultFS, tmp_path: Path,
                                                       how: str) -> None:
    """A graceful hand-over waits for the load in flight and leaves the page stored; a SIGKILL
    in the middle of the load loses nothing either (the load keeps the stored copy).  Either
    way the faulting thread gets its page from the next daemon."""
    from tests.test_restart import _start

    config = _config(fs).replace("[layer]\n", '[layer]\ntiers = ["disk"]\n')
    with _managed(tmp_path, config) as (m, sock):
        _start(m, tmp_path)
        a = _start_a(sock, disk_second=False)
        try:
            fs.hold_reads()
            a.send("read 11")
            a.expect("reading")
            assert fs.wait_held(1)
            if how == "handover":
                m.signal(signal.SIGTERM)
                _wait_log(tmp_path / "daemon.log", "hand-over: waiting for 1 load(s) in flight")
                assert m.running() and not a.ready()
                fs.release_reads()
                assert m.wait(exited=True, timeout=60)
                assert os.waitstatus_to_exitcode(m.exit_status or 0) == 0
            else:  # killed in the middle of the read (it ends when the read is answered)
                m.signal(signal.SIGKILL)
                fs.release_reads()
                assert m.wait(exited=True, timeout=60)
            assert not a.ready()  # the thread still waits for its page
            _start(m, tmp_path)
            r = a.expect("read")
            assert r["i"] == 11 and r["ok"], r
            a.send("verify")
            v = a.expect("verified")
            assert v["bad"] == [] and v["efault"] == [], v
            a.send("quit")
            assert a.p.wait(60) == 0
        finally:
            fs.release_reads()
            a.close()
    log = (tmp_path / "daemon.log").read_text()
    assert "Traceback" not in log, log[-4000:]


def test_a_disk_page_at_hand_is_read_without_waiting(fs: FaultFS, tmp_path: Path) -> None:
    """``DiskTier.load_nowait`` (preadv2 RWF_NOWAIT): a page in the page cache comes back on the
    loop thread (a worker's hand-off would cost more than the read); a file system that cannot
    promise not to wait (FUSE, FOPEN_DIRECT_IO) always goes to a worker."""
    from swapd.errors import WouldBlockError
    from swapd.layer import DiskTier, SwapLayer

    page = os.urandom(4096)
    slow = DiskTier(fs.mountpoint, 64 * 4096)
    try:
        assert slow.load_nowait(slow.store_batch([page])[0]) is None
    finally:
        slow.close()
    lay = SwapLayer([DiskTier(tmp_path, 64 * 4096, seal=True)])
    try:
        r = lay.add_region("a", 2)
        lay.store(r, 0, page)
        disk = lay._tiers[0]
        assert isinstance(disk, DiskTier)
        if disk.load_nowait(0) is None:
            pytest.skip(f"the file system of {tmp_path} does not take RWF_NOWAIT reads")
        assert lay.load(r, 0, False, nowait=True) == page  # from the page cache, kept clean
        assert lay.store_clean(r, 0)
        lay.store(r, 1, os.urandom(4096))
        os.fsync(disk.fd)  # clean, then out of the page cache
        os.posix_fadvise(disk.fd, 0, 0, os.POSIX_FADV_DONTNEED)
        with pytest.raises(WouldBlockError):  # (nothing changed: the next load reads it)
            lay.load(r, 0, nowait=True)
        assert lay.load(r, 0) == page
        lay._check()
    finally:
        lay.close()
