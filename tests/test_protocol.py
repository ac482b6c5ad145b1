"""The control protocol: framing (unit) and every kind of bad input against a live daemon.

The live tests share one daemon (module fixture) and check after each refusal
that the connection -- and the daemon, for other clients -- keeps working.
"""

from __future__ import annotations

import json
import mmap
import os
import socket
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from swapd import protocol
from swapd.errors import DaemonGoneError, ProtocolError
from tests.test_daemon_helpers import BASE_CONFIG, ROOT, DaemonProc, needs_uffd

# --- framing -------------------------------------------------------------------------------


def test_encode_decode_roundtrip() -> None:
    obj = {"op": "map", "id": 7, "length": 4096, "name": "ü"}
    frame = protocol.encode(obj)
    (n,) = struct.unpack("<I", frame[:4])
    assert n == len(frame) - 4
    assert protocol.decode_body(frame[4:]) == obj


def test_oversized_frame_refused() -> None:
    with pytest.raises(ProtocolError, match="exceeds MAX_FRAME"):
        protocol.encode({"x": "a" * protocol.MAX_FRAME})


@pytest.mark.parametrize("body,msg", [(b"\xff\xfe", "not UTF-8 JSON"), (b"{", "not UTF-8 JSON"),
                                      (b"[1]", "JSON list, not an object")])
def test_decode_rejects(body: bytes, msg: str) -> None:
    with pytest.raises(ProtocolError, match=msg):
        protocol.decode_body(body)


def test_frame_reader_partial_frames_and_fds() -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    b.setblocking(False)
    r = protocol.FrameReader(b)
    try:
        frame = protocol.encode({"op": "ping", "id": 1})
        a.send(frame[:3])
        r.feed()
        assert r.frames() == []
        a.send(frame[3:])
        r.feed()
        assert r.frames() == [({"op": "ping", "id": 1}, [])]
        rfd, wfd = os.pipe()
        protocol.send_frame(a, {"op": "map", "id": 2}, [rfd, wfd])
        os.close(rfd)
        os.close(wfd)
        r.feed()
        [(obj, fds)] = r.frames()
        assert obj == {"op": "map", "id": 2} and len(fds) == 2
        assert all(os.get_inheritable(fd) is False for fd in fds)  # MSG_CMSG_CLOEXEC
        for fd in fds:
            os.close(fd)
        a.send(struct.pack("<I", 5) + b"nope!")
        r.feed()
        [(err, _)] = r.frames()
        assert isinstance(err, ProtocolError)
        a.send(struct.pack("<I", 0))
        r.feed()
        assert r.frames() == [] and r.fatal is not None and "frame length 0" in r.fatal
        a.close()
        r.feed()
        assert r.eof
    finally:
        r.close()
        b.close()
        a.close()


def test_recv_frame_eof_is_daemon_gone() -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    a.close()
    with pytest.raises(DaemonGoneError):
        protocol.recv_frame(b)
    b.close()


# --- live daemon -------------------------------------------------------------------------------

QUOTA_CONFIG = BASE_CONFIG.replace('default_resident_bytes = "1M"',
                                   'default_resident_bytes = "1M"\nmax_regions = 3\n'
                                   'max_managed_bytes = "4M"\nmax_clients = 4')


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProc]:
    from tests.test_daemon_helpers import uffd_unavailable

    why = uffd_unavailable()
    if why:
        pytest.skip(why)
    d = DaemonProc(tmp_path_factory.mktemp("proto"), QUOTA_CONFIG)
    try:
        yield d
    except BaseException:
        d.stop()
        raise
    d.assert_clean_exit()


class Raw:
    """A hand-driven connection (no client library)."""

    def __init__(self, path: Path, hello: bool = True) -> None:
        self.s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.s.settimeout(30)
        self.s.connect(str(path))
        self.n = 0
        if hello:
            r = self.req("hello", version=protocol.PROTOCOL_VERSION)
            assert r["ok"], r

    def req(self, op: str | None, fds: list[int] | None = None, **kw: Any) -> dict[str, Any]:
        self.n += 1
        obj: dict[str, Any] = {"id": self.n, **kw}
        if op is not None:
            obj["op"] = op
        protocol.send_frame(self.s, obj, fds)
        return self.recv()

    def recv(self) -> dict[str, Any]:
        obj, fds = protocol.recv_frame(self.s)
        assert fds == []
        return obj

    def close(self) -> None:
        self.s.close()


def refused(reply: dict[str, Any], code: str, text: str) -> None:
    assert reply["ok"] is False, reply
    assert reply["error"] == code, reply
    assert text in reply["message"], reply


@pytest.fixture
def raw(daemon: DaemonProc) -> Iterator[Raw]:
    r = Raw(daemon.socket)
    yield r
    assert r.req("ping")["ok"], "the connection must survive a refused request"
    r.close()
    other = Raw(daemon.socket)  # ... and the daemon keeps serving others
    assert other.req("ping")["ok"]
    other.close()


@needs_uffd
def test_handshake_errors(daemon: DaemonProc) -> None:
    r = Raw(daemon.socket, hello=False)
    refused(r.req("ping"), "bad_request", "first request must be 'hello'")
    refused(r.req("hello", version=99), "version", "version 99 is not supported")
    refused(r.req("hello"), "version", "None is not supported")
    ok = r.req("hello", version=1, name="t")
    assert ok["ok"] and ok["version"] == 1 and ok["page_size"] == 4096
    refused(r.req("hello", version=1), "bad_request", "already done")
    r.close()


@needs_uffd
def test_malformed_requests(raw: Raw) -> None:
    refused(raw.req("frobnicate"), "unknown_op", "unknown op 'frobnicate'")
    refused(raw.req(None), "bad_request", "missing 'op'")
    protocol.send_frame(raw.s, {"op": "ping", "id": "x"})
    refused(raw.recv(), "bad_request", "'id' must be an integer")
    raw.s.sendall(struct.pack("<I", 6) + b"hello!")
    refused(raw.recv(), "malformed", "not UTF-8 JSON")
    raw.s.sendall(struct.pack("<I", 2) + b"[]")
    refused(raw.recv(), "malformed", "JSON list, not an object")
    refused(raw.req("set_limit", resident_bytes=-1), "bad_request", "'resident_bytes' must be")
    refused(raw.req("set_limit", resident_bytes="1M"), "bad_request", "must be an integer")
    refused(raw.req("stats", scope="everything"), "bad_request", "scope 'everything'")
    refused(raw.req("unmap", region=12345), "not_found", "no region 12345")
    refused(raw.req("advise", region=1, offset=0, length=4096, advice="forget"), "bad_request",
            "advice 'forget'")


@needs_uffd
def test_unexpected_fds_are_refused_and_closed(raw: Raw) -> None:
    rfd, wfd = os.pipe()
    try:
        refused(raw.req("ping", fds=[rfd]), "bad_fd", "takes no file descriptors")
    finally:
        os.close(wfd)
        os.close(rfd)


def _memfd(size: int) -> int:
    fd = os.memfd_create("t", os.MFD_CLOEXEC)
    os.ftruncate(fd, size)
    return fd


def _uffd(features: int | None = None) -> Any:
    from swapd.kernel import uffd as k

    u = k.Userfaultfd.create()
    u.api(features if features is not None else
          k.UFFD_FEATURE_MISSING_SHMEM | k.UFFD_FEATURE_WP_HUGETLBFS_SHMEM)
    return u


@needs_uffd
def test_map_with_wrong_descriptors(raw: Raw) -> None:
    size = 16 * 4096
    refused(raw.req("map", length=size, address=1 << 30), "bad_fd", "needs 2 descriptors")
    rfd, wfd = os.pipe()
    mfd = _memfd(size)
    u = _uffd()
    try:
        refused(raw.req("map", fds=[rfd, wfd], length=size, address=1 << 30), "bad_fd",
                "descriptor 0 is not a memfd (pipe:")
        refused(raw.req("map", fds=[mfd, mfd], length=size, address=1 << 30), "bad_fd",
                "descriptor 1 is not a userfaultfd (/memfd:t")
        refused(raw.req("map", fds=[mfd, u.fd], length=2 * size, address=1 << 30), "bad_fd",
                f"memfd size {size} != region length {2 * size}")
        refused(raw.req("map", fds=[mfd], length=size, address=1 << 30), "bad_fd",
                "got 1")
    finally:
        for fd in (rfd, wfd, mfd):
            os.close(fd)
        u.close()


@needs_uffd
def test_map_with_bad_ranges(raw: Raw) -> None:
    from swapd.kernel import uffd as k
    from swapd.kernel.mm import address_of

    size = 16 * 4096
    mfd = _memfd(size)
    u = _uffd()
    m = mmap.mmap(mfd, size)
    addr = address_of(m)
    try:
        refused(raw.req("map", fds=[mfd, u.fd], length=size, address=addr + 100), "bad_range",
                "multiples of the page size")
        refused(raw.req("map", fds=[mfd, u.fd], length=size - 100, address=addr), "bad_range",
                "multiples of the page size")
        refused(raw.req("map", fds=[mfd, u.fd], length=size, address=4096), "bad_range",
                "is not mapped in process")
        # mapped but neither registered nor DONTFORK
        refused(raw.req("map", fds=[mfd, u.fd], length=size, address=addr), "bad_range",
                "not registered with userfaultfd MISSING")
        u.register(addr, size, k.UFFDIO_REGISTER_MODE_MISSING | k.UFFDIO_REGISTER_MODE_WP)
        refused(raw.req("map", fds=[mfd, u.fd], length=size, address=addr), "bad_range",
                "not MADV_DONTFORK")
        other = _memfd(size)
        try:
            m.madvise(mmap.MADV_DONTFORK)
            refused(raw.req("map", fds=[other, u.fd], length=size, address=addr), "bad_range",
                    "not a shared mapping of the memfd that was sent")
        finally:
            os.close(other)
    finally:
        u.close()  # unregisters; nothing was ever touched
        m.close()
        os.close(mfd)


@needs_uffd
def test_map_with_unsupported_uffd_features(raw: Raw) -> None:
    from swapd.kernel import uffd as k

    size = 4096
    mfd = _memfd(size)
    try:
        for feats, text in [(k.UFFD_FEATURE_MISSING_SHMEM, "lacks features"),
                            (k.UFFD_FEATURE_MISSING_SHMEM | k.UFFD_FEATURE_WP_HUGETLBFS_SHMEM
                             | k.UFFD_FEATURE_EVENT_FORK, "EVENT_FORK"),
                            (k.UFFD_FEATURE_MISSING_SHMEM | k.UFFD_FEATURE_WP_HUGETLBFS_SHMEM
                             | k.UFFD_FEATURE_SIGBUS, "FEATURE_SIGBUS")]:
            m = mmap.mmap(mfd, size)
            from swapd.kernel.mm import address_of

            addr = address_of(m)
            m.madvise(mmap.MADV_DONTFORK)
            u = _uffd(feats)
            try:
                u.register(addr, size, k.UFFDIO_REGISTER_MODE_MISSING
                           | k.UFFDIO_REGISTER_MODE_WP)
                refused(raw.req("map", fds=[mfd, u.fd], length=size, address=addr), "bad_fd",
                        text)
            finally:
                u.close()
                m.close()
    finally:
        os.close(mfd)


@needs_uffd
def test_quotas_overlap_and_advise_ranges(daemon: DaemonProc) -> None:
    from swapd.client import connect
    from swapd.errors import QuotaExceededError, RequestError

    with connect(daemon.socket) as c:
        with pytest.raises(QuotaExceededError, match="max_managed_bytes=4194304"):
            c.map(8 << 20)
        regs = [c.map(4096) for _ in range(2)]
        r0 = regs[0]
        mfd = _memfd(4096)
        u = _uffd()
        try:
            with pytest.raises(RequestError, match="overlaps region"):
                c._request("map", _fds=[mfd, u.fd], length=4096, address=r0.address)
        finally:
            u.close()
            os.close(mfd)
        regs.append(c.map(4096))
        with pytest.raises(QuotaExceededError, match="max_regions=3"):
            c.map(4096)
        for off, ln, text in [(100, 4096, "multiples of 4096"), (0, 4095, "multiples of 4096"),
                              (0, 8192, "beyond the region's 4096 bytes")]:
            with pytest.raises(RequestError, match=text) as ei:
                r0.advise(off, ln, "cold")
            assert ei.value.code == "bad_range"
        r0[0:3] = b"abc"
        r0.advise(0, 4096, "cold")
        assert r0[0:3] == b"abc"
        for r in regs:
            r.close()
        assert c.stats()["regions"] == 0
        c.map(4096).close()  # quota freed


@needs_uffd
def test_oversized_length_closes_only_that_connection(daemon: DaemonProc) -> None:
    r = Raw(daemon.socket)
    r.s.sendall(struct.pack("<I", 0xFFFFFFFF))
    refused(r.recv(), "malformed", "frame length 4294967295")
    with pytest.raises(DaemonGoneError):
        r.recv()
    r.close()
    other = Raw(daemon.socket)
    assert other.req("ping")["ok"]
    other.close()


@needs_uffd
def test_peer_credentials_are_checked(daemon: DaemonProc) -> None:
    """A uid that is not allowed is refused by name (SO_PEERCRED), not just by file mode."""
    import tempfile

    # a hard link of the socket where uid 65534 can reach it (pytest's tmp dirs are 0700)
    pub = Path(tempfile.mkdtemp(prefix="swapd-perm-"))
    link = pub / "s.sock"
    os.chmod(pub, 0o755)
    os.link(daemon.socket, link)
    code = f"""
import os, json, sys
sys.path.insert(0, {str(ROOT)!r})
from swapd.client import connect
from swapd.errors import RequestError, DaemonGoneError
os.setgid(65534); os.setuid(65534)
try:
    connect({str(link)!r})
    print(json.dumps({{"code": "connected"}}))
except RequestError as e:
    print(json.dumps({{"code": e.code, "message": e.message}}))
"""
    try:
        results = []
        for mode in (0o660, 0o666):
            os.chmod(link, mode)
            p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                               timeout=60)
            assert p.returncode == 0, p.stderr
            results.append(json.loads(p.stdout))
    finally:
        os.chmod(daemon.socket, 0o660)
        link.unlink()
        pub.rmdir()
    assert results[0]["code"] == "permission" and "Permission denied" in results[0]["message"]
    assert results[1]["code"] == "permission" and "uid 65534" in results[1]["message"], results


def _alone(daemon: DaemonProc) -> bool:
    """True once the daemon serves no client (the asking one is not counted)."""
    from swapd.errors import QuotaExceededError, RequestError
    from tests.test_daemon_helpers import stats_all

    try:
        return bool(stats_all(daemon.socket)["daemon"]["clients"] == 0)
    except (QuotaExceededError, RequestError):
        return False


@needs_uffd
def test_max_clients(daemon: DaemonProc) -> None:
    from tests.test_daemon_helpers import wait_for

    wait_for(lambda: _alone(daemon), what="earlier connections to end")
    conns = [Raw(daemon.socket) for _ in range(4)]
    try:
        extra = Raw(daemon.socket, hello=False)
        refused(extra.req("hello", version=1), "quota", "max_clients=4")
        extra.close()
    finally:
        for c in conns:
            c.close()
    wait_for(lambda: _alone(daemon), what="the connections to end")
