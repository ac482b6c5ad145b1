"""Hostile clients: one function per class of attack of issue 13, shared by
``swapd bench hostile`` / ``fuzz`` / ``soak`` and tests/test_hostile.py.

Each ``attack_NAME(sock_path, ...)`` runs one class against a running daemon and returns what
the attacker saw (``{"codes": [error codes of the replies], ...}``); it cleans up everything it
created (sockets, memfds, mappings, child processes) before it returns.  :class:`Victim` runs
the victim client (swapd/bench/_victim.py) in its own process; :class:`DaemonWatch` reads the
daemon's descriptor count and RSS from ``/proc``.  Nothing here is a stand-in: these are real
sockets, memfds and userfaultfds, sent to the real daemon.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import mmap
import os
import random
import select
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

from swapd import protocol
from swapd.errors import DaemonGoneError, ProtocolError

PAGE = 4096
_MADV_DONTFORK = 10


# --- watching the daemon -------------------------------------------------------------------


_STATE_MEMFDS = ("/memfd:swapd-state", "/memfd:swapd-pagestate")


class DaemonWatch:
    """The daemon process ``pid`` as /proc shows it."""

    def __init__(self, pid: int) -> None:
        self.pid = pid

    def alive(self) -> bool:
        try:
            with open(f"/proc/{self.pid}/stat") as f:
                return f.read().split(") ", 1)[1][0] not in "ZX"
        except OSError:
            return False

    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def rss(self) -> int:
        with open(f"/proc/{self.pid}/statm") as f:
            return int(f.read().split()[1]) * PAGE

    def memory(self) -> int:
        """RSS plus the allocated bytes (``st_blocks``) of the daemon's state memfds (the swap
        table, arenas, page states: swapd/state/, swapd/daemon/handover.py), which can hold
        memory without being mapped.  Counts a mapped state page twice: an upper bound."""
        held = 0
        fd_dir = f"/proc/{self.pid}/fd"
        for name in os.listdir(fd_dir):
            try:
                if os.readlink(f"{fd_dir}/{name}").startswith(_STATE_MEMFDS):
                    held += os.stat(f"{fd_dir}/{name}").st_blocks * 512
            except FileNotFoundError:  # closed meanwhile
                continue
        return self.rss() + held

    def settled_fds(self, baseline: int, timeout: float = 3.0) -> int:
        """The descriptor count once it is back at ``baseline`` (or after ``timeout``)."""
        deadline = time.monotonic() + timeout
        n = self.fds()
        while n > baseline and time.monotonic() < deadline:
            time.sleep(0.05)
            n = self.fds()
        return n


def ping(path: str | os.PathLike[str], timeout: float = 10.0) -> bool:
    """Whether the daemon answers a fresh client's hello and ping within ``timeout`` (a full
    listen backlog -- EAGAIN on connect -- is retried, as a client would)."""
    from swapd.client import connect

    deadline = time.monotonic() + timeout
    while True:
        try:
            with connect(path, timeout=timeout, name="ping") as c:
                c.ping()
            return True
        except DaemonGoneError as exc:
            busy = isinstance(exc.__cause__, BlockingIOError)
            if not busy or time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        except (OSError, ProtocolError):
            return False


# --- the victim ------------------------------------------------------------------------------


class Victim:
    """The victim client in a child process (see swapd/bench/_victim.py)."""

    def __init__(self, path: str | os.PathLike[str], *, pages: int = 512, limit_pages: int = 64,
                 seed: int = 1) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "swapd.bench._victim", str(path), "--pages", str(pages),
             "--limit-pages", str(limit_pages), "--seed", str(seed)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            first = self._line(60.0)
        except BaseException:
            self.close()
            raise
        if not first.get("ready"):
            self.close()
            raise RuntimeError(f"victim did not start: {first}")

    def _line(self, timeout: float) -> dict[str, Any]:
        assert self.proc.stdout is not None
        r, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not r:
            raise TimeoutError("victim did not answer")
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"victim exited with {self.proc.wait()}")
        out: dict[str, Any] = json.loads(line)
        return out

    def report(self, timeout: float = 60.0) -> dict[str, Any]:
        """Accesses, mismatches and the longest stall since the last report."""
        assert self.proc.stdin is not None
        self.proc.stdin.write("r\n")
        self.proc.stdin.flush()
        return self._line(timeout)

    def finish(self, timeout: float = 120.0) -> dict[str, Any]:
        """Check every page once more and stop; the final report."""
        assert self.proc.stdin is not None
        self.proc.stdin.write("q\n")
        self.proc.stdin.flush()
        out = self._line(timeout)
        self.proc.wait(timeout)
        return out

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        for f in (self.proc.stdin, self.proc.stdout):
            if f is not None:
                with contextlib.suppress(OSError):
                    f.close()


# --- raw protocol ------------------------------------------------------------------------------


def raw(path: str | os.PathLike[str], timeout: float = 10.0) -> socket.socket:
    """A connected socket, nothing sent."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    s.settimeout(timeout)
    s.connect(os.fspath(path))
    return s


def request(s: socket.socket, obj: dict[str, Any], fds: list[int] | None = None) -> dict[str, Any]:
    """Send one frame and return the reply (descriptors in it are closed)."""
    protocol.send_frame(s, obj, fds)
    reply, got = protocol.recv_frame(s)
    for fd in got:
        os.close(fd)
    return reply


def hello(path: str | os.PathLike[str], name: str = "attacker") -> socket.socket:
    s = raw(path)
    r = request(s, {"op": "hello", "id": 0, "version": protocol.PROTOCOL_VERSION, "name": name})
    if not r.get("ok"):
        s.close()
        raise DaemonGoneError(f"hello refused: {r}")
    return s


def code(reply: dict[str, Any]) -> str:
    return "ok" if reply.get("ok") else str(reply.get("error"))


def closed_by_peer(s: socket.socket, timeout: float = 10.0) -> bool:
    """Whether the daemon closes ``s`` (EOF or reset) within ``timeout``; replies are read."""
    s.settimeout(timeout)
    try:
        while True:
            if not s.recv(65536):
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except (TimeoutError, OSError):
        return False


# --- regions built by hand ---------------------------------------------------------------------


class RawRegion:
    """A memfd mapped shared and registered with a userfaultfd, as docs/protocol.md says --
    each step can be changed by the attack before the descriptors go out."""

    def __init__(self, npages: int, *, sealing: bool = False, memfd_size: int | None = None,
                 map_offset: int = 0, dontfork: bool = True, register: bool = True,
                 uffd_nonblock: bool = True) -> None:
        from swapd.client import _address_of, _uffd_features
        from swapd.kernel import uffd as k

        self.size = npages * PAGE
        flags = os.MFD_CLOEXEC | (os.MFD_ALLOW_SEALING if sealing else 0)
        self.memfd = os.memfd_create("attack", flags)
        os.ftruncate(self.memfd, self.size + map_offset if memfd_size is None else memfd_size)
        self.map = mmap.mmap(self.memfd, self.size, flags=mmap.MAP_SHARED,
                             prot=mmap.PROT_READ | mmap.PROT_WRITE, offset=map_offset)
        if memfd_size is None and map_offset:
            os.ftruncate(self.memfd, self.size)  # size right, mapping at the wrong offset
        self.address = _address_of(self.map)
        if dontfork:
            self.map.madvise(_MADV_DONTFORK)
        self.uffd = k.Userfaultfd.create(nonblock=uffd_nonblock, cloexec=True)
        self.uffd.api(_uffd_features())
        if register:
            self.uffd.register(self.address, self.size,
                               k.UFFDIO_REGISTER_MODE_MISSING | k.UFFDIO_REGISTER_MODE_WP)

    def map_request(self, s: socket.socket, *, fds: list[int] | None = None,
                    **over: Any) -> dict[str, Any]:
        obj = {"op": "map", "id": 1, "length": self.size, "address": self.address, **over}
        return request(s, obj, [self.memfd, self.uffd.fd] if fds is None else fds)

    def close(self) -> None:
        self.uffd.close()
        with contextlib.suppress(BufferError, ValueError):
            self.map.close()
        os.close(self.memfd)


@contextlib.contextmanager
def raw_region(npages: int, **kw: Any) -> Iterator[RawRegion]:
    r = RawRegion(npages, **kw)
    try:
        yield r
    finally:
        r.close()


# --- the attacks ---------------------------------------------------------------------------------


def attack_frames(path: str | os.PathLike[str], rounds: int = 1, seed: int = 0) -> dict[str, Any]:
    """Frames of every bad shape on a session that said hello: each gets an error reply or
    the connection closed; a new connection follows a closed one."""
    rng = random.Random(seed)
    deep = b"[" * 100_000 + b"]" * 100_000
    bodies: list[bytes] = [
        b"\xff\xfe\xfd", b"not json", b"[1,2,3]", b'"str"', b"null", deep[:60_000],
        b'{"op":"ping","id":' + b"9" * 5000 + b"}",
        b'{"op":"stats","id":1,"scope":' + b"[" * 30_000 + b"]" * 30_000 + b"}",
        b'{"op":"map","id":1,"length":' + b"1" * 4000 + b',"address":4096}',
        b'{"op":"advise","id":1,"region":-1,"offset":1e308,"length":NaN,"advice":"cold"}',
        b'{"op":"set_limit","id":1,"resident_bytes":' + b"9" * 4000 + b"}",
        b'{"op":"hello","id":1,"version":1}', b'{"op":"unmap","id":true,"region":1}',
        b'{"op":' + b'"x"' * 3 + b"}", b'{"id":1}', b'{"op":"\\ud800","id":1}',
    ]
    codes: list[str] = []
    closed = 0
    for _ in range(rounds):
        s = hello(path)
        try:
            for body in bodies + [rng.randbytes(rng.randrange(1, 200)) for _ in range(8)]:
                try:
                    s.sendall(protocol.HEADER.pack(len(body)) + body)
                    reply, fds = protocol.recv_frame(s)
                    for fd in fds:
                        os.close(fd)
                    codes.append(code(reply))
                except (DaemonGoneError, ProtocolError, OSError):
                    closed += 1
                    s.close()
                    s = hello(path)
            for header in (b"\x00\x00\x00\x00", struct.pack("<I", protocol.MAX_FRAME + 1),
                           b"\xff\xff\xff\xff"):
                s.sendall(header)
                codes.append(code(protocol.recv_frame(s)[0]))
                closed += int(closed_by_peer(s))
                s.close()
                s = hello(path)
        finally:
            s.close()
    return {"codes": codes, "closed": closed}


def attack_descriptors_without_frames(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Descriptors with no frame, more than a frame may carry, and cut control messages."""
    codes: list[str] = []
    closed = 0
    for n in (1, 3, 5, 16, 200):
        s = hello(path)
        pipes = [os.pipe() for _ in range((n + 1) // 2)]
        fds = [fd for p in pipes for fd in p][:n]
        try:
            anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack(f"{len(fds)}i", *fds))]
            with contextlib.suppress(OSError):
                s.sendmsg([b"\x05"], anc)  # one byte of a header, with descriptors
                s.sendmsg([b"\x00"], anc)
            closed += int(closed_by_peer(s, timeout=10.0))
        finally:
            s.close()
            for fd in {fd for p in pipes for fd in p}:
                os.close(fd)
    s = hello(path)
    try:  # descriptors on a frame of an op that takes none
        r, w = os.pipe()
        codes.append(code(request(s, {"op": "ping", "id": 3}, [r, w])))
        os.close(r)
        os.close(w)
    finally:
        s.close()
    return {"codes": codes, "closed": closed}


def attack_bad_map_descriptors(path: str | os.PathLike[str]) -> dict[str, Any]:
    """``map`` with descriptors of the wrong kind, mode, flags, seals, size or mapping."""
    out: dict[str, str] = {}
    s = hello(path)
    try:
        def run(name: str, make: Callable[[], RawRegion], fds: Callable[[RawRegion], list[int]]
                | None = None, **over: Any) -> None:
            region = make()
            extra: list[int] = []
            try:
                sent = fds(region) if fds else None
                if sent:
                    extra = [fd for fd in sent if fd not in (region.memfd, region.uffd.fd)]
                out[name] = code(region.map_request(s, fds=sent, **over))
            finally:
                for fd in extra:
                    os.close(fd)
                region.close()

        def reopen(flags: int) -> Callable[[RawRegion], list[int]]:
            return lambda r: [os.open(f"/proc/self/fd/{r.memfd}", flags), r.uffd.fd]

        def other_uffd(r: RawRegion) -> list[int]:
            from swapd.client import _uffd_features
            from swapd.kernel import uffd as k

            u = k.Userfaultfd.create(nonblock=True, cloexec=True)
            u.api(_uffd_features())
            fd = os.dup(u.fd)
            u.close()
            return [r.memfd, fd]

        def future_write(r: RawRegion) -> list[int]:
            fcntl.fcntl(r.memfd, 1033, 0x10)  # F_ADD_SEALS F_SEAL_FUTURE_WRITE
            return [r.memfd, r.uffd.fd]

        def regular_file(r: RawRegion) -> list[int]:
            # a regular file whose /proc/self/fd link reads like a memfd's ("/memfd:...")
            name = f"/memfd:swapd-attack-{os.getpid()}"
            fd = os.open(name, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            os.unlink(name)
            os.ftruncate(fd, r.size)
            return [fd, r.uffd.fd]

        def pipe(r: RawRegion) -> list[int]:
            rd, wr = os.pipe()
            os.close(wr)
            return [rd, r.uffd.fd]

        run("pipe_as_memfd", lambda: RawRegion(4), pipe)
        run("readonly_memfd", lambda: RawRegion(4), reopen(os.O_RDONLY))
        run("o_path_memfd", lambda: RawRegion(4), reopen(os.O_PATH))
        run("write_sealed_memfd", lambda: RawRegion(4, sealing=True), future_write)
        if os.access("/", os.W_OK):
            run("regular_file_as_memfd", lambda: RawRegion(4), regular_file)
        run("wrong_size_memfd", lambda: RawRegion(4, memfd_size=8 * PAGE))
        run("mapping_at_offset", lambda: RawRegion(4, map_offset=PAGE))
        run("another_uffd", lambda: RawRegion(4), other_uffd)
        run("unregistered_range", lambda: RawRegion(4, register=False))
        run("no_dontfork", lambda: RawRegion(4, dontfork=False))
        run("memfd_as_uffd", lambda: RawRegion(4), lambda r: [r.memfd, os.dup(r.memfd)])
        run("one_descriptor", lambda: RawRegion(4), lambda r: [r.memfd])
    finally:
        s.close()
    return {"codes": list(out.values()), "by_case": out}


_CHANGED_CHILD = r"""
import fcntl, json, os, sys, signal, ctypes
ctypes.CDLL(None).prctl(1, signal.SIGKILL, 0, 0, 0)
from swapd.bench._attacks import RawRegion, hello, code, PAGE
from swapd import protocol
path, how = sys.argv[1], sys.argv[2]
s = hello(path)
r = RawRegion(64, sealing=(how == "seal_after"))
rep = r.map_request(s)
rid = rep.get("region")
for i in range(64):
    r.map[i * PAGE:(i + 1) * PAGE] = bytes([i + 1]) * PAGE
def req(obj):
    return code(protocol.send_frame(s, obj) or protocol.recv_frame(s)[0])
req({"op": "advise", "id": 2, "region": rid, "offset": 0, "length": 64 * PAGE, "advice": "cold"})
if how == "truncate":
    os.ftruncate(r.memfd, 0)
elif how == "grow":
    os.ftruncate(r.memfd, 1 << 30)
elif how == "blocking_uffd":
    fl = fcntl.fcntl(r.uffd.fd, fcntl.F_GETFL)
    fcntl.fcntl(r.uffd.fd, fcntl.F_SETFL, fl & ~os.O_NONBLOCK)
elif how == "seal_after":
    try:
        fcntl.fcntl(r.memfd, 1033, 0x10)
    except OSError as exc:
        print(json.dumps({"seal": exc.errno}), flush=True)
elif how == "unregister":
    r.uffd.unregister(r.address, 64 * PAGE)
print(json.dumps({"map": code(rep), "changed": how}), flush=True)
# touch every page (a fault the daemon may no longer be able to serve: SIGBUS is fine)
if how != "unregister":
    for i in range(64):
        r.map[i * PAGE]
print(json.dumps({"touched": True, "stats": req({"op": "stats", "id": 3})}), flush=True)
req({"op": "advise", "id": 4, "region": rid, "offset": 0, "length": 64 * PAGE, "advice": "cold"})
print(json.dumps({"done": True}), flush=True)
r.close()  # the uffd before the munmap: nobody would read the UNMAP event otherwise
s.close()
"""


def attack_changed_descriptors(path: str | os.PathLike[str]) -> dict[str, Any]:
    """After a good ``map``, the client changes what it shares with the daemon through its
    own copies (size, status flags, seals, registration) and touches its pages."""
    out: dict[str, Any] = {}
    for how in ("truncate", "grow", "blocking_uffd", "seal_after", "unregister"):
        p = subprocess.run([sys.executable, "-c", _CHANGED_CHILD, os.fspath(path), how],
                           capture_output=True, text=True, timeout=60)
        out[how] = p.returncode
    return {"codes": [], "exit": out}


def attack_idle_connections(path: str | os.PathLike[str], n: int = 80,
                            hold_s: float = 1.0) -> dict[str, Any]:
    """Connections that never say hello, stop mid-header or mid-frame, or say hello and idle."""
    socks: list[socket.socket] = []
    codes: list[str] = []
    try:
        for i in range(n):
            try:
                s = raw(path, timeout=5.0)
            except OSError:
                codes.append("connect_failed")
                continue
            socks.append(s)
            kind = i % 4
            with contextlib.suppress(OSError):
                if kind == 1:
                    s.send(b"\x10\x00")  # half a header
                elif kind == 2:
                    s.send(protocol.HEADER.pack(100) + b'{"op":')  # half a frame
                elif kind == 3:
                    r = request(s, {"op": "hello", "id": 0, "version": 1})
                    codes.append(code(r))
        time.sleep(hold_s)
    finally:
        closed = sum(1 for s in socks if _peer_closed_now(s))
        for s in socks:
            s.close()
    return {"codes": codes, "connections": len(socks), "closed_by_daemon": closed}


def _peer_closed_now(s: socket.socket) -> bool:
    try:
        return s.recv(65536, socket.MSG_DONTWAIT | socket.MSG_PEEK) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


_STORM_CHILD = r"""
import sys, time, signal, ctypes
ctypes.CDLL(None).prctl(1, signal.SIGKILL, 0, 0, 0)
from swapd.client import connect
c = connect(sys.argv[1], name="storm")
c.set_limit(16 * 4096)
r = c.map(4096 * 1024)
end = time.monotonic() + float(sys.argv[2])
i = 0
while time.monotonic() < end:
    r[(i * 4099) % (4096 * 1024)] = i & 0xff
    i += 1
print(i)
"""


def attack_fault_storm(path: str | os.PathLike[str], seconds: float = 2.0,
                       procs: int = 2) -> dict[str, Any]:
    """Processes faulting as fast as they can with a tiny resident limit."""
    ps = [subprocess.Popen([sys.executable, "-c", _STORM_CHILD, os.fspath(path), str(seconds)],
                           stdout=subprocess.PIPE, text=True) for _ in range(procs)]
    touches = 0
    for p in ps:
        out, _ = p.communicate(timeout=seconds + 60)
        with contextlib.suppress(ValueError):
            touches += int(out.strip() or 0)
    return {"codes": [], "touches": touches}


_MAPPINGS_CHILD = r"""
import ctypes, signal, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.prctl(1, signal.SIGKILL, 0, 0, 0)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                      ctypes.c_int, ctypes.c_long]
from swapd.client import connect
n, rounds = int(sys.argv[2]), int(sys.argv[3])
base = 0x2000_0000_0000  # below where mmap places the regions: every one lies under them
for i in range(n):  # alternating protections: neighbours never merge into one VMA
    libc.mmap(base + 2 * i * 4096, 4096, 1 if i % 2 else 3, 0x22 | 0x100000, -1, 0)
done = 0
with connect(sys.argv[1], name="many-mappings") as c:
    for _ in range(rounds):
        r = c.map(1 << 20)
        r[0] = 1
        r.close()
        done += 1
print(done)
"""


def attack_many_mappings(path: str | os.PathLike[str], mappings: int = 60_000,
                         rounds: int = 20) -> dict[str, Any]:
    """A client with tens of thousands of VMAs below its regions maps and unmaps again and
    again: each ``map`` checks the range's layout, which must not cost the daemon's loop
    time in proportion to the client's mappings (/proc/PID/smaps: 0.4 s for 60,000)."""
    p = subprocess.Popen([sys.executable, "-c", _MAPPINGS_CHILD, os.fspath(path),
                          str(mappings), str(rounds)], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    out, err = p.communicate(timeout=600)
    codes = ["ok"] * int(out.strip() or 0)
    if p.returncode:
        codes.append(err.strip().splitlines()[-1] if err.strip() else f"exit {p.returncode}")
    return {"codes": codes, "mappings": mappings}


_SLOW_DISK_CHILD = r"""
import ctypes, json, random, signal, sys
ctypes.CDLL(None).prctl(1, signal.SIGKILL, 0, 0, 0)
from swapd.client import connect
c = connect(sys.argv[1], name="slow-disk")
n = int(sys.argv[2])
c.ctl("zswap_max_bytes", 0, client=c.server["session"], set_value=True)  # straight to disk
c.set_limit(4 * 4096)
r = c.map(n * 4096)
pages = [random.Random(i).randbytes(4096) for i in range(n)]
for i in range(n):
    r[i * 4096:(i + 1) * 4096] = pages[i]
r.advise(0, n * 4096, "cold")
c.set_limit(4 * n * 4096)
print(json.dumps({"disk_pages": c.stats()["layer"]["disk_pages"]}), flush=True)
sys.stdin.readline()  # the disk is slow now
bad = 0
for i in random.Random(0).sample(range(n), n):  # random order: one slow read per fault
    bad += r[i * 4096:(i + 1) * 4096] != pages[i]
print(json.dumps({"bad": bad}), flush=True)
"""


def attack_slow_disk(path: str | os.PathLike[str], fs: Any, *, delay_s: float = 1.0,
                     pages: int = 6) -> dict[str, Any]:
    """A client whose pages are on a disk that answers every read after ``delay_s`` (``fs``: the
    daemon's disk tier on a swapd.kernel.fuse.FaultFS): it faults them back one at a time."""
    p = subprocess.Popen([sys.executable, "-c", _SLOW_DISK_CHILD, os.fspath(path), str(pages)],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert p.stdin is not None and p.stdout is not None
    try:
        first = json.loads(p.stdout.readline() or "{}")
        fs.read_delay_s = delay_s
        reads = fs.reads
        t0 = time.monotonic()
        p.stdin.write("go\n")
        p.stdin.flush()
        last = json.loads(p.stdout.readline() or "{}")
        seconds = time.monotonic() - t0
    finally:
        fs.read_delay_s = 0.0
        if p.poll() is None:
            p.kill()
        p.wait(30)
        p.stdin.close()
        p.stdout.close()
    return {"codes": [], "attacker_disk_pages": first.get("disk_pages", 0),
            "attacker_mismatches": last.get("bad"), "slow_reads": fs.reads - reads,
            "attacker_seconds": round(seconds, 2)}


def attack_long_requests(path: str | os.PathLike[str], rounds: int = 3) -> dict[str, Any]:
    """The largest region the quota allows, then advise over all of it, and stats."""
    from swapd.client import connect

    codes: list[str] = []
    with connect(path, name="long-requests") as c:
        quota = int(c.server.get("max_managed_bytes", 1 << 30))
        size = min(quota, 4 << 30)
        try:
            r = c.map(size, name="huge-sparse")
        except Exception as exc:  # quota: the attack is the attempt
            codes.append(type(exc).__name__)
            return {"codes": codes}
        try:
            for _ in range(rounds):
                for adv in ("cold", "willneed", "dontneed"):
                    try:
                        c._request("advise", region=r.id, offset=0, length=size, advice=adv)
                        codes.append("ok")
                    except Exception as exc:
                        codes.append(getattr(exc, "code", type(exc).__name__))
                    r.advise(0, min(size, 256 << 20), adv)  # the library splits it
                c.stats("all")
        finally:
            r.close()
    return {"codes": codes}


def attack_sparse_quota(path: str | os.PathLike[str], sessions: int = 8,
                        daemon_pid: int = 0, used_pages: int = 8192) -> dict[str, Any]:
    """Many sessions of one user, each mapping sparse regions up to its quota.

    With ``daemon_pid``, also what that costs the daemon (:meth:`DaemonWatch.memory`):
    ``daemon_bytes_per_mapped_page`` while every region is held and untouched (target about
    0), then ``daemon_bytes_per_used_page`` after ``used_pages`` consecutive pages of one
    region are written (each a same-filled page: no compressed bytes) and evicted."""
    from swapd.client import connect

    clients: list[Any] = []
    codes: list[str] = []
    mapped = 0
    out: dict[str, Any] = {}
    w = DaemonWatch(daemon_pid) if daemon_pid else None
    try:
        m0 = w.memory() if w is not None else 0
        for _ in range(sessions):
            try:
                c = connect(path, name="sparse")
            except Exception as exc:
                codes.append(getattr(exc, "code", type(exc).__name__))
                continue
            clients.append(c)
            quota = int(c.server.get("max_managed_bytes", 1 << 30))
            chunk = min(quota, 1 << 30)
            while True:
                try:
                    c.map(chunk, name="sparse")
                    mapped += chunk
                except Exception as exc:
                    codes.append(getattr(exc, "code", type(exc).__name__))
                    break
                if len(c._regions) >= 4:
                    break
        for c in clients[:1]:
            c.stats("all")
        if w is not None and mapped:
            m1 = w.memory()
            out["daemon_bytes_per_mapped_page"] = round((m1 - m0) / (mapped // PAGE), 4)
            reg: Any = next(iter(clients[0]._regions.values()), None) if clients else None
            n = min(used_pages, reg.size // PAGE) if reg is not None else 0
            if n:
                for i in range(n):
                    reg[i * PAGE:(i + 1) * PAGE] = (i + 1).to_bytes(8, "little") * (PAGE // 8)
                reg.advise(0, n * PAGE, "cold")
                clients[0].stats()
                out["daemon_bytes_per_used_page"] = round((w.memory() - m1) / n, 1)
                out["used_pages"] = n
    finally:
        for c in clients:
            with contextlib.suppress(Exception):
                c.close()
    return {"codes": codes, "mapped_bytes": mapped, **out}


def attack_emfile(path: str | os.PathLike[str], daemon_pid: int, seconds: float = 1.5
                  ) -> dict[str, Any]:
    """The daemon runs out of descriptors (its RLIMIT_NOFILE lowered, root only) while
    connections keep arriving; then the limit comes back."""
    import resource

    w = DaemonWatch(daemon_pid)
    old = resource.prlimit(daemon_pid, resource.RLIMIT_NOFILE)
    socks: list[socket.socket] = []
    try:
        resource.prlimit(daemon_pid, resource.RLIMIT_NOFILE, (w.fds() + 4, old[1]))
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            try:
                socks.append(raw(path, timeout=1.0))
            except OSError:
                time.sleep(0.01)
            if len(socks) > 200:
                break
        time.sleep(max(0.0, end - time.monotonic()))
    finally:
        resource.prlimit(daemon_pid, resource.RLIMIT_NOFILE, old)
        for s in socks:
            s.close()
    return {"codes": [], "connections": len(socks)}


def fuzz_frames(path: str | os.PathLike[str], frames: int, seed: int = 0,
                on_progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    """``frames`` random frames (random bodies, mutated valid requests, bad headers, stray
    descriptors) over a few connections; reconnects after the daemon closes one."""
    rng = random.Random(seed)
    ops = [*protocol.OPS, "", "x" * 50]
    s = hello(path, "fuzz")
    sent = closed = 0
    try:
        while sent < frames:
            kind = rng.random()
            fds: list[int] = []
            if kind < 0.35:
                obj: Any = {"op": rng.choice(ops), "id": rng.choice([1, -1, 2**70, None, "x"])}
                for key in rng.sample(["region", "offset", "length", "advice", "scope",
                                       "resident_bytes", "address", "name", "version"],
                                      rng.randrange(0, 5)):
                    obj[key] = rng.choice([0, 1, -1, 4096, 2**64, 1.5, "cold", "all", None,
                                           [], {}, "\u0000", True])
                if obj["op"] == "map" or obj["op"] == "hello":
                    obj["op"] = "ping"  # no real map: descriptors come from the mutations
                body = json.dumps(obj).encode()
            elif kind < 0.7:
                body = rng.randbytes(rng.randrange(1, 300))
            elif kind < 0.85:
                d = rng.randrange(1, 5000)
                body = (b"[" * d + b"]" * d) if rng.random() < 0.5 else (
                    b'{"op":"ping","id":' + b"7" * d + b"}")
            else:
                body = json.dumps({"op": "ping", "id": 5}).encode()
                if rng.random() < 0.5:
                    r, w_ = os.pipe()
                    fds = [r, w_]
            header = protocol.HEADER.pack(len(body))
            if rng.random() < 0.02:
                header = protocol.HEADER.pack(rng.choice([0, protocol.MAX_FRAME + 1, 2**32 - 1]))
            try:
                data = header + body
                if fds:
                    anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("2i", *fds))]
                    s.sendmsg([data[:1]], anc)
                    s.sendall(data[1:])
                else:
                    s.sendall(data)
                protocol.recv_frame(s)
            except (DaemonGoneError, ProtocolError, OSError):
                closed += 1
                s.close()
                s = hello(path, "fuzz")
            finally:
                for fd in fds:
                    os.close(fd)
            sent += 1
            if on_progress is not None and sent % 1000 == 0:
                on_progress(sent)
    finally:
        s.close()
    return {"frames": sent, "closed": closed}



# --- a daemon for the benches ------------------------------------------------------------------

BENCH_CONFIG = """
[limits]
default_resident_bytes = "1M"
max_managed_bytes = "8G"
hello_timeout_s = 2.0
max_sessions_per_uid = 48
[layer]
pool_limit_bytes = "16M"
disk_bytes = "256M"
[reclaim]
batch_pages = 32
interval_ms = 20
"""


class BenchDaemon:
    """``swapd serve`` in a child process with its own socket, state and config in ``workdir``;
    :meth:`stop` ends it (SIGTERM, then SIGKILL) and removes nothing it did not create."""

    def __init__(self, workdir: str | os.PathLike[str], config: str = BENCH_CONFIG,
                 timeout: float = 60.0) -> None:
        import signal

        self.workdir = os.fspath(workdir)
        self.socket = os.path.join(self.workdir, "swapd.sock")
        cfg = os.path.join(self.workdir, "swapd.toml")
        with open(cfg, "w") as f:
            f.write(config)
        self.log_path = os.path.join(self.workdir, "daemon.log")
        self._log = open(self.log_path, "wb")  # noqa: SIM115 (closed by stop)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "swapd", "-v", "serve", "--socket", self.socket, "--state-dir",
             os.path.join(self.workdir, "state"), "--config", cfg],
            stdin=subprocess.DEVNULL, stdout=self._log, stderr=self._log,
            start_new_session=True)
        self._signal = signal
        deadline = time.monotonic() + timeout
        while not (os.path.exists(self.socket) and ping(self.socket, timeout=5.0)):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the daemon did not start; see {self.log_path}")
            time.sleep(0.1)
        self.watch = DaemonWatch(self.proc.pid)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(self._signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()
        return int(self.proc.returncode)
