"""The control protocol between swapd and its clients (documented in docs/protocol.md).

Design: a UNIX stream socket carrying frames.  A frame is a 4-byte
little-endian unsigned length N (1 <= N <= MAX_FRAME) followed by N bytes of
UTF-8 JSON encoding one object.  File descriptors travel as SCM_RIGHTS
ancillary data on the sendmsg() that carries the frame; the receiver attaches
every descriptor that arrives while a frame is being read to that frame.  A
client has at most one request in flight (it waits for the reply), so the
attachment is unambiguous; descriptors nobody claims are closed.

Every request is ``{"op": str, "id": int, ...}``; every reply is
``{"id": same, "ok": true, ...}`` or ``{"id": same, "ok": false, "error":
CODE, "message": text}`` with CODE one of :data:`ERROR_CODES`.  The first
request must be ``hello`` with ``"version": PROTOCOL_VERSION``.

This module is shared by the client library (blocking socket) and the daemon
(non-blocking socket, :class:`FrameReader`); it performs no policy.

Hostile input (docs/protocol.md, "Trust boundary"): the daemon's reader takes any
byte string.  It reads at most one frame's worth per call (a client that keeps
sending cannot hold the loop or grow the buffer beyond ``MAX_FRAME``), every
body error -- invalid UTF-8, JSON nested past the parser's depth, integers with
more digits than Python converts -- is a ``malformed`` reply, and descriptors are
never lost: a control message cut short (``MSG_CTRUNC``: more than ``MAX_FDS``)
or more than ``MAX_FDS`` descriptors waiting without a frame is fatal for the
connection, and every received descriptor not handed to a frame is closed.
"""

from __future__ import annotations

import array
import errno
import json
import os
import socket
import struct
from typing import Any

from swapd.errors import DaemonGoneError, ProtocolError

PROTOCOL_VERSION = 1
MAX_FRAME = 64 * 1024
MAX_FDS = 4  # per frame
MAX_ADVISE = 64 << 20  # bytes per advise request: the daemon's work per request is bounded
HEADER = struct.Struct("<I")  # u32 length, little-endian

# Error codes of a failed reply (``"error"``), the same strings the daemon uses.
ERROR_CODES = (
    "malformed",        # frame or JSON cannot be parsed, or is not an object
    "bad_request",      # missing/ill-typed field, request before hello
    "unknown_op",       # "op" is not one of OPS
    "version",          # hello with an unsupported version
    "bad_fd",           # missing, extra, or wrong kind of file descriptor
    "bad_range",        # unaligned, zero-sized, overlapping or unmapped range
    "quota",            # a per-client quota (bytes, regions) or the client count
    "not_found",        # unknown region id
    "permission",       # peer credentials not allowed (the connection is closed)
    "unavailable",      # a kernel feature the request needs is absent
    "internal",         # a bug in the daemon; the request had no effect
    "restarted",        # notice (id null): the daemon restarted after a crash; resend
)

OPS = ("hello", "map", "unmap", "set_limit", "advise", "stats", "ping", "restart", "ctl")
ADVICE = ("cold", "willneed", "dontneed")

_CMSG_SPACE = socket.CMSG_SPACE(MAX_FDS * 4)


def encode_body(obj: dict[str, Any]) -> bytes:
    """The JSON body of a frame for ``obj`` (no size check).  O(size)."""
    return json.dumps(obj, separators=(",", ":")).encode()


def encode(obj: dict[str, Any]) -> bytes:
    """Encode one frame (header + JSON body).  O(size)."""
    body = encode_body(obj)
    if len(body) > MAX_FRAME:
        raise ProtocolError(f"frame of {len(body)} bytes exceeds MAX_FRAME {MAX_FRAME}")
    return HEADER.pack(len(body)) + body


def decode_body(body: bytes) -> dict[str, Any]:
    """Decode a frame body; raises ProtocolError("malformed: ...") for any bad body."""
    try:
        obj = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProtocolError(f"malformed: body is not UTF-8 JSON: {exc}") from exc
    except RecursionError as exc:
        raise ProtocolError("malformed: JSON nested too deeply") from exc
    except ValueError as exc:  # e.g. an integer beyond sys.get_int_max_str_digits()
        raise ProtocolError(f"malformed: {exc}") from exc
    if not isinstance(obj, dict):
        raise ProtocolError(f"malformed: body is a JSON {type(obj).__name__}, not an object")
    return obj


def send_frame(sock: socket.socket, obj: dict[str, Any], fds: list[int] | None = None) -> None:
    """Send one frame (and ``fds`` with its first byte) on a blocking socket."""
    data = encode(obj)
    try:
        if fds:
            anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())]
            sent = sock.sendmsg([data], anc)
        else:
            sent = sock.send(data)
        if sent < len(data):
            sock.sendall(data[sent:])
    except (BrokenPipeError, ConnectionResetError) as exc:
        raise DaemonGoneError(f"the peer closed the socket: {exc}") from exc


def _fds_from_ancdata(ancdata: list[tuple[int, int, bytes]]) -> list[int]:
    fds: list[int] = []
    for level, ctype, cdata in ancdata:
        if level == socket.SOL_SOCKET and ctype == socket.SCM_RIGHTS:
            a = array.array("i")
            a.frombytes(cdata[: len(cdata) - (len(cdata) % a.itemsize)])
            fds.extend(a)
    return fds


def recv_frame(sock: socket.socket) -> tuple[dict[str, Any], list[int]]:
    """Receive one frame on a blocking socket; return (object, fds).

    Raises DaemonGoneError on EOF and ProtocolError on a malformed frame.
    """
    buf = bytearray()
    fds: list[int] = []
    need = HEADER.size
    length: int | None = None
    while True:
        while len(buf) < need:
            try:
                data, anc, _flags, _ = sock.recvmsg(need - len(buf), _CMSG_SPACE,
                                                   socket.MSG_CMSG_CLOEXEC)
            except (ConnectionResetError, BrokenPipeError) as exc:
                _close_all(fds)
                raise DaemonGoneError(f"the peer reset the socket: {exc}") from exc
            fds.extend(_fds_from_ancdata(anc))
            if not data:
                _close_all(fds)
                raise DaemonGoneError("the peer closed the socket")
            buf += data
        if length is None:
            (length,) = HEADER.unpack_from(buf)
            if not 0 < length <= MAX_FRAME:
                _close_all(fds)
                raise ProtocolError(f"malformed: frame length {length} not in 1..{MAX_FRAME}")
            need = HEADER.size + length
            continue
        break
    try:
        return decode_body(bytes(buf[HEADER.size:])), fds
    except ProtocolError:
        _close_all(fds)
        raise


def close_fds(ancdata: list[tuple[int, int, bytes]]) -> None:
    """Close every descriptor an SCM_RIGHTS control message brought in."""
    _close_all(_fds_from_ancdata(ancdata))


def _close_all(fds: list[int]) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass
    fds.clear()


class FrameReader:
    """Incremental frame parser for a non-blocking socket (the daemon side).

    ``feed()`` reads what is available; ``frames()`` yields complete
    ``(object_or_error, fds)`` pairs, where a malformed body yields a
    ProtocolError instance instead of the object so the caller can reply and go
    on.  A bad length cannot be resynchronised: ``fatal`` is set and the caller
    replies and closes.  Not thread-safe (one reader per connection).
    """

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = bytearray()
        self.fds: list[int] = []  # received, not yet attached to a frame
        self.eof = False
        self.fatal: str | None = None

    def feed(self) -> None:
        """Read what is available, at most one whole frame's worth, without blocking (even
        on a blocking socket).  Sets ``eof`` at end of stream, ``fatal`` on a cut control
        message or too many waiting descriptors.  O(MAX_FRAME)."""
        if self.eof:
            return
        room = HEADER.size + MAX_FRAME - len(self.buf)
        if room <= 0:
            return  # a whole frame is waiting: frames() first
        try:
            data, anc, flags, _ = self.sock.recvmsg(
                room, _CMSG_SPACE, socket.MSG_CMSG_CLOEXEC | socket.MSG_DONTWAIT)
        except BlockingIOError:
            return
        except OSError as exc:
            if exc.errno in (errno.ECONNRESET, errno.EPIPE, errno.ENOTCONN):
                self.eof = True
                return
            raise
        self.fds.extend(_fds_from_ancdata(anc))
        if not data:
            self.eof = True
        if self.fatal is None:
            if flags & socket.MSG_CTRUNC:
                self.fatal = f"control message truncated: more than {MAX_FDS} descriptors"
            elif len(self.fds) > MAX_FDS:
                self.fatal = f"{len(self.fds)} descriptors without a frame (at most {MAX_FDS})"
        if self.fatal is not None:
            _close_all(self.fds)
            return
        self.buf += data

    @property
    def pending(self) -> bool:
        """Whether part of a frame has arrived and not yet been parsed."""
        return bool(self.buf)

    def frames(self) -> list[tuple[dict[str, Any] | ProtocolError, list[int]]]:
        """Complete frames parsed so far, in order, with the fds attached to each."""
        out: list[tuple[dict[str, Any] | ProtocolError, list[int]]] = []
        while self.fatal is None and len(self.buf) >= HEADER.size:
            (length,) = HEADER.unpack_from(self.buf)
            if not 0 < length <= MAX_FRAME:
                self.fatal = f"frame length {length} not in 1..{MAX_FRAME}"
                break
            if len(self.buf) < HEADER.size + length:
                break
            body = bytes(self.buf[HEADER.size:HEADER.size + length])
            del self.buf[:HEADER.size + length]
            fds, self.fds = self.fds, []
            try:
                out.append((decode_body(body), fds))
            except ProtocolError as exc:
                out.append((exc, fds))
            except Exception as exc:  # never lose the frame's descriptors
                out.append((ProtocolError(f"malformed: {type(exc).__name__}: {exc}"), fds))
        if self.fatal is not None:
            _close_all(self.fds)
        return out

    def close(self) -> None:
        """Close every descriptor received and never attached."""
        _close_all(self.fds)


def error_reply(req_id: object, code: str, message: str) -> dict[str, Any]:
    """Build a failed reply."""
    assert code in ERROR_CODES, code
    return {"id": req_id, "ok": False, "error": code, "message": message}
