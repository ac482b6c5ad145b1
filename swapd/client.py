"""The swapd client library: hand memory to the daemon and use it like any buffer.

Usage::

    with swapd.client.connect() as client:
        client.set_limit(64 << 20)           # keep at most 64 MiB resident
        region = client.map(512 << 20)       # a Region: an mmap the daemon pages
        region[0:5] = b"hello"
        region.advise(0, 1 << 20, "cold")    # evict this MiB now
        print(client.stats()["faults"])
        region.close()

Design (docs/protocol.md has the wire format; docs/design.md sec. 11 the reasons):

* A :class:`Region` is a memfd of the requested size mapped ``MAP_SHARED``
  (it *is* an :class:`mmap.mmap`, so it supports the buffer protocol, slicing and
  ``memoryview``).  The range is registered with a userfaultfd in
  ``MISSING|WP`` mode (synchronous write-protect) with ``EVENT_UNMAP``, and the
  memfd and the userfaultfd are sent to the daemon with SCM_RIGHTS.  The daemon
  serves every fault and evicts pages by write-protect, read, punch-hole.
* The client **keeps its own copy of the userfaultfd** for as long as the region
  is mapped.  If the daemon dies, a thread that touches an evicted page stays
  blocked in the kernel (state D/S, killable with SIGKILL, not interruptible by
  other signals) instead of reading zeros: the userfaultfd context outlives the
  daemon because the client still holds it.  Under a service manager with an fd
  store the next daemon re-adopts the region and ``UFFDIO_WAKE``s it, so the
  thread retries and is served (docs/design.md sec. 9); without one it stays
  blocked until the process is killed.  Pages that were resident
  stay readable and writable.  In Python a fault blocks while holding the GIL,
  so the other threads of the process stop too.
* **Fails closed**: once the daemon's socket is closed, the next library call
  (``map``, ``set_limit``, ``stats``, ``advise``, ``ping``) raises
  :class:`~swapd.errors.DaemonGoneError`, and so does every later one.
* **fork**: every region is ``MADV_DONTFORK``.  A child process does not
  inherit the mapping (touching it there is a SIGSEGV, never silent zeros), and
  its copies of the client's descriptors are closed by an ``at-fork`` hook, so
  a child cannot disturb the parent's connection; a child that needs swapd
  memory connects on its own.  (Without DONTFORK or EVENT_FORK, a child's read
  of an evicted page would silently allocate a zero page in the shared memfd.)
* **Unprivileged clients**: with ``vm.unprivileged_userfaultfd=0`` a non-root
  process gets a userfaultfd only with ``UFFD_USER_MODE_ONLY`` (used
  automatically when the plain call is refused) or through ``/dev/userfaultfd``
  (mode 0600 by default; a site may grant a group access).  Caveat of
  user-mode-only: a *kernel* access to a missing page -- ``read(2)`` or
  ``recv(2)`` into the region, ``write(2)`` from it -- fails with ``EFAULT``
  instead of being served; copy through a bounce buffer, or ``advise(...,
  "willneed")`` the range first.

Thread-safety: a Client serializes its requests with a lock, so regions and the
client may be used from several threads.

Prior art: UMap's client/handler split (LLNL umap), and the mechanisms measured
in docs/design.md secs. 11.2, 11.6 and 11.7.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import itertools
import mmap
import os
import socket
import sys
import threading
import time
import weakref
from pathlib import Path
from types import TracebackType
from typing import Any

from swapd import protocol
from swapd.config import default_socket_path
from swapd.errors import (
    DaemonGoneError,
    ProtocolError,
    QuotaExceededError,
    RequestError,
    SwapdError,
)
from swapd.pages import PAGE_SIZE

_MADV_DONTFORK = 10  # <asm-generic/mman-common.h>

# Live clients, so that a forked child can drop its copies of their descriptors.
_CLIENTS: weakref.WeakSet[Client] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for c in list(_CLIENTS):
        c._forked()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _uffd_features() -> int:
    from swapd.kernel import uffd as k

    return (k.UFFD_FEATURE_MISSING_SHMEM | k.UFFD_FEATURE_WP_HUGETLBFS_SHMEM
            | k.UFFD_FEATURE_EVENT_UNMAP | k.UFFD_FEATURE_EVENT_REMAP | k.UFFD_FEATURE_THREAD_ID
            | k.UFFD_FEATURE_POISON)


def _create_uffd(k: Any, denied: type[Exception]) -> Any:
    """A userfaultfd: the system call, else /dev/userfaultfd, else UFFD_USER_MODE_ONLY."""
    try:
        return k.Userfaultfd.create(nonblock=True, cloexec=True)
    except (denied, PermissionError):
        pass
    if os.access("/dev/userfaultfd", os.R_OK | os.W_OK):
        with contextlib.suppress(denied, PermissionError):
            return k.Userfaultfd.create(nonblock=True, cloexec=True, via_device=True)
    return k.Userfaultfd.create(nonblock=True, cloexec=True, user_mode_only=True)


def _address_of(m: mmap.mmap) -> int:
    """Start address of a writable mmap (the ctypes export is released at once)."""
    obj = ctypes.c_char.from_buffer(m)
    try:
        return ctypes.addressof(obj)
    finally:
        del obj


class Region(mmap.mmap):
    """Memory paged by swapd: an ``mmap.mmap`` over a memfd, plus the daemon's region id.

    Attributes: ``id`` (the daemon's region id), ``address``, ``size``, ``name``.
    Supports everything ``mmap.mmap`` does (buffer protocol, slicing, ``find``,
    context manager).  ``close()`` hands the region back to the daemon first.
    """

    id: int
    address: int
    size: int  # type: ignore[assignment]  # shadows mmap.size(): the mapped length
    name: str
    _client: Client | None
    _memfd: int
    _uffd: Any  # swapd.kernel.uffd.Userfaultfd

    def __new__(cls, memfd: int, size: int) -> Region:
        return super().__new__(cls, memfd, size, flags=mmap.MAP_SHARED,
                               prot=mmap.PROT_READ | mmap.PROT_WRITE)

    def advise(self, offset: int, length: int, advice: str) -> None:
        """Advise the daemon about ``[offset, offset+length)``; page-aligned.

        ``"cold"``: evict those pages now (kept compressed or on disk);
        ``"willneed"``: bring evicted pages back now (up to the resident limit);
        ``"dontneed"``: discard the contents (the pages read as zeros afterwards).
        Raises RequestError (``bad_range``) or DaemonGoneError.
        """
        if self._client is None:
            raise ProtocolError("region is closed")
        end = offset + length
        while True:  # the daemon takes at most MAX_ADVISE bytes per request
            n = min(end - offset, protocol.MAX_ADVISE)
            self._client._request("advise", region=self.id, offset=offset, length=n,
                                  advice=advice)
            offset += n
            if offset >= end:
                return

    def poisoned_pages(self) -> list[int]:
        """Indices of the pages lost with a crashed daemon: touching one raises SIGBUS.

        Never wrong data: such a page was stored when the daemon died and its
        stored copy could not be recovered (docs/design.md).
        """
        if self._client is None:
            raise ProtocolError("region is closed")
        runs = self._client.stats().get("poisoned", {}).get(str(self.id), [])
        return [i for first, n in runs for i in range(first, first + n)]

    def close(self) -> None:
        """Unmap the region and free everything the daemon holds for it.  Idempotent.

        While the daemon is alive: munmap first (the daemon reads the UNMAP
        event at once and drops the region), then confirm over the socket.  When
        the daemon is known to be gone, the client's userfaultfd is closed first,
        so that the munmap does not wait for a reader that will never come.
        Raises BufferError (nothing changed) while memoryviews of it exist.
        """
        client = self._client
        if client is None or self.closed:
            return
        if client._gone:
            self._uffd.close()
            super().close()
        else:
            super().close()  # BufferError leaves everything as it was
            with contextlib.suppress(SwapdError):
                client._request("unmap", region=self.id, _ok_codes=("not_found",))
            self._uffd.close()
        os.close(self._memfd)
        client._regions.pop(self.id, None)
        self._client = None

    def __del__(self) -> None:
        """Garbage-collected without close(): close our uffd copy *before* the munmap.

        Then the munmap cannot wait for a reader of its UNMAP event: if the daemon
        is alive its copy keeps the context and it reads the event; if it is gone,
        ours was the last reference and the kernel drops the registration.  (No
        memoryview can exist here, so the munmap cannot fail.)
        """
        if getattr(self, "_client", None) is None or self.closed:
            return
        with contextlib.suppress(Exception):
            self._uffd.close()
        with contextlib.suppress(Exception):
            mmap.mmap.close(self)
        with contextlib.suppress(Exception):
            os.close(self._memfd)

    def _forked(self) -> None:
        """In a forked child: drop the descriptors (the mapping was not inherited)."""
        with contextlib.suppress(OSError):
            self._uffd.close()
        with contextlib.suppress(OSError):
            os.close(self._memfd)
        self._client = None

    def __repr__(self) -> str:
        state = "closed" if self._client is None else f"id={self.id}"
        return f"<swapd Region {self.name!r} {state} size={self.size} at {self.address:#x}>"


class Client:
    """A connection to the daemon (see :func:`connect`).  Thread-safe."""

    def __init__(self, sock: socket.socket, hello: dict[str, Any]) -> None:
        self._sock = sock  # under _lock
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._gone = False  # the daemon closed the socket: fail closed
        self._regions: dict[int, Region] = {}
        self.server = hello
        self.page_size = int(hello.get("page_size", PAGE_SIZE))
        self._path: Path | None = None  # the socket, to re-attach on (connect() sets it)
        self._reconnect_s = 30.0
        self._resent: set[int] = set()  # ids of the current request sent before a restart
        self._sent: set[int] = set()  # every id the current request was sent under
        self._orphans: set[int] = set()  # ids whose replies are still due and unwanted
        self.restarts = 0  # daemon restarts this client noticed
        _CLIENTS.add(self)

    # --- requests -------------------------------------------------------------------

    def _request(self, op: str, *, _fds: list[int] | None = None,
                 _ok_codes: tuple[str, ...] = (), **fields: Any) -> dict[str, Any]:
        """Send one request and wait for its reply.  Raises the mapped error.

        A daemon restart is a pause: the connection survives it in the service
        manager's fd store.  After a crash the new daemon sends a ``restarted``
        notice, and the request is sent again (requests are idempotent: a
        ``map`` of the same range returns the same region).  If the connection
        itself was lost, the session is re-attached on a new one with its token.
        """
        with self._lock:
            if self._gone:
                raise DaemonGoneError("the swapd daemon has gone away (socket closed)")
            req = {"op": op, **fields}
            req_id = next(self._ids)
            try:
                try:
                    protocol.send_frame(self._sock, {**req, "id": req_id}, _fds)
                    reply = self._read_reply(req_id, req, _fds)
                except (DaemonGoneError, OSError):
                    if not self._reattach_locked():
                        raise
                    req_id = next(self._ids)
                    protocol.send_frame(self._sock, {**req, "id": req_id}, _fds)
                    reply = self._read_reply(req_id, req, _fds)
            except DaemonGoneError:
                self._gone = True
                raise
            except OSError as exc:
                self._gone = True
                raise DaemonGoneError(f"control socket failed: {exc}") from exc
        if reply.get("id") not in self._sent:  # the request's id, or a copy's sent again
            raise ProtocolError(f"reply id {reply.get('id')!r} does not match request {req_id}")
        if reply.get("ok") is True:
            return reply
        code = str(reply.get("error", "internal"))
        message = str(reply.get("message", ""))
        if code in _ok_codes or (code == "not_found" and op == "unmap" and self._resent):
            return reply
        if code == "quota":
            raise QuotaExceededError(message)
        raise RequestError(code, message)

    def _read_reply(self, req_id: int, req: dict[str, Any],
                    fds: list[int] | None) -> dict[str, Any]:
        """Read frames until the reply to ``req_id`` (or to a resent copy of it)."""
        self._resent = set()
        self._sent = {req_id}
        want = {req_id}
        while True:
            reply, got = protocol.recv_frame(self._sock)
            for fd in got:  # the daemon never sends descriptors
                os.close(fd)
            rid = reply.get("id")
            if rid is None and reply.get("error") == "restarted":
                # the daemon restarted after a crash: it may never have read the request
                new_id = next(self._ids)
                protocol.send_frame(self._sock, {**req, "id": new_id}, fds)
                self._resent |= want
                want.add(new_id)
                self._sent.add(new_id)
                self.restarts += 1
                continue
            if rid in want:
                want.discard(rid)
                # the other copies' replies are still to come: skip them later
                self._orphans |= want
                return reply
            if rid in self._orphans:
                self._orphans.discard(rid)
                continue
            return reply

    def _reattach_locked(self) -> bool:
        """The connection is gone: re-attach the session on a new one (same token)."""
        token = self.server.get("session_token")
        if not token or self._path is None:
            return False
        try:
            sock = _connect(self._path, timeout=self._reconnect_s, retry=self._reconnect_s)
            protocol.send_frame(sock, {"op": "hello", "id": 0,
                                       "version": protocol.PROTOCOL_VERSION,
                                       "session_token": token})
            reply, got = protocol.recv_frame(sock)
            for fd in got:
                os.close(fd)
        except (OSError, SwapdError):
            return False
        if not reply.get("ok"):
            sock.close()
            return False
        with contextlib.suppress(OSError):
            self._sock.close()
        self._sock = sock
        self._orphans.clear()
        self.restarts += 1
        return True

    def ping(self) -> None:
        """Round trip to the daemon; raises DaemonGoneError if it is gone."""
        self._request("ping")

    def map(self, nbytes: int, name: str | None = None) -> Region:
        """Create a region of ``nbytes`` (rounded up to pages) paged by the daemon.

        Raises QuotaExceededError, RequestError or DaemonGoneError; on failure
        nothing is left behind.
        """
        from swapd.kernel import uffd as k
        from swapd.kernel.errors import KernelPermissionError

        if nbytes <= 0:
            raise RequestError("bad_range", f"size must be positive, got {nbytes}")
        size = -(-nbytes // PAGE_SIZE) * PAGE_SIZE
        name = name or f"swapd-{os.getpid()}"
        memfd = os.memfd_create(name, os.MFD_CLOEXEC)
        region: Region | None = None
        uffd: Any = None
        try:
            os.ftruncate(memfd, size)
            region = Region(memfd, size)
            address = _address_of(region)
            region.madvise(_MADV_DONTFORK)
            uffd = _create_uffd(k, KernelPermissionError)
            uffd.api(_uffd_features())
            uffd.register(address, size,
                          k.UFFDIO_REGISTER_MODE_MISSING | k.UFFDIO_REGISTER_MODE_WP)
            reply = self._request("map", _fds=[memfd, uffd.fd], length=size, address=address,
                                  name=name)
        except BaseException:
            if uffd is not None:
                uffd.close()  # before the munmap: no UNMAP event to wait for
            if region is not None:
                mmap.mmap.close(region)
            os.close(memfd)
            raise
        region.id = int(reply["region"])
        region.address = address
        region.size = size
        region.name = name
        region._client = self
        region._memfd = memfd
        region._uffd = uffd
        self._regions[region.id] = region
        return region

    def set_limit(self, resident_bytes: int) -> int:
        """Set this client's resident limit; returns the limit in effect (capped by quota)."""
        return int(self._request("set_limit", resident_bytes=resident_bytes)["resident_bytes"])

    def stats(self, scope: str = "client", *, latency: bool = True) -> dict[str, Any]:
        """The daemon's counters for this client (``scope="client"``) or all (``"all"``).

        ``"all"`` comes in pages (each reply stays below the frame limit); they are
        joined here, so the result holds every client.  ``latency=False`` (``"all"``
        only) spares the daemon the percentiles, which sort every kept sample.
        """
        extra: dict[str, Any] = {} if latency else {"latency": False}
        reply = self._request("stats", scope=scope, **extra)
        stats: dict[str, Any] = reply["stats"]
        while scope == "all" and stats.get("next_after") is not None:
            more = self._request("stats", scope=scope, after=stats["next_after"],
                                 **extra)["stats"]
            stats["clients"].extend(more["clients"])
            stats["next_after"] = more.get("next_after")
        stats.pop("next_after", None)
        return stats

    def ctl(self, knob: str | None = None, value: Any = None, *, client: int | None = None,
            set_value: bool = False) -> Any:
        """Read (or with ``set_value``, change) a runtime knob; returns the value in effect.

        ``knob`` None returns every knob: ``{"knobs": {...}, "clients": {id: {...}}}``.
        ``client``: a session id, for the per-client knobs.  Changing needs root or
        the daemon's uid (RequestError ``permission`` otherwise).
        """
        fields: dict[str, Any] = {}
        if knob is not None:
            fields["knob"] = knob
        if client is not None:
            fields["client"] = client
        if set_value:
            fields["value"] = value
        reply = self._request("ctl", **fields)
        if knob is None:
            return {"knobs": reply["knobs"], "clients": reply["clients"]}
        return reply["value"]

    # --- lifetime ---------------------------------------------------------------------

    def close(self) -> None:
        """Close every region, then the connection.  Idempotent."""
        for region in list(self._regions.values()):
            region.close()
        with self._lock:
            self._gone = True
            self._sock.close()
        _CLIENTS.discard(self)

    @property
    def closed(self) -> bool:
        return self._sock.fileno() < 0

    def _forked(self) -> None:
        """In a forked child: forget the parent's regions and connection (see module doc)."""
        for region in list(self._regions.values()):
            region._forked()
        self._regions.clear()
        self._gone = True
        with contextlib.suppress(OSError):
            self._sock.close()
        self._lock = threading.Lock()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def _connect(path: Path, *, timeout: float | None, retry: float = 0.0) -> socket.socket:
    """Connect to ``path``; while it refuses (a daemon restarting without a held listening
    socket), retry for ``retry`` seconds.  A missing socket fails at once."""
    deadline = time.monotonic() + retry
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            sock.settimeout(timeout)
            sock.connect(str(path))
            sock.settimeout(None)
            return sock
        except ConnectionRefusedError:
            sock.close()
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.05)
        except BaseException:
            sock.close()
            raise


def connect(path: str | os.PathLike[str] | None = None, *, timeout: float | None = 10.0,
            name: str | None = None, wait: float = 0.0) -> Client:
    """Connect to the daemon's socket (default: the runtime directory's swapd.sock).

    Performs the versioned handshake.  While the daemon restarts, connecting
    waits: under a service manager the listening socket is held across the
    restart and the handshake is answered by the next daemon; ``wait`` seconds
    more are spent retrying a socket that refuses connections.  Raises
    DaemonGoneError if nobody listens and RequestError (``version``/
    ``permission``) if the daemon refuses.
    """
    sock_path = Path(path) if path is not None else default_socket_path()
    try:
        sock = _connect(sock_path, timeout=timeout, retry=wait)
    except (FileNotFoundError, ConnectionRefusedError) as exc:
        raise DaemonGoneError(f"no swapd daemon listening on {sock_path}: {exc.strerror}"
                              " (start one with `swapd serve`)") from exc
    except OSError as exc:
        if exc.errno in (errno.EACCES, errno.EPERM):
            raise RequestError("permission", f"cannot connect to {sock_path}: "
                               f"{exc.strerror}") from exc
        raise DaemonGoneError(f"cannot connect to {sock_path}: {exc}") from exc
    try:
        protocol.send_frame(sock, {"op": "hello", "id": 0, "version": protocol.PROTOCOL_VERSION,
                                   "name": name or Path(sys.argv[0]).name})
        reply, fds = protocol.recv_frame(sock)
        for fd in fds:
            os.close(fd)
    except (FileNotFoundError, ConnectionRefusedError) as exc:
        sock.close()
        raise DaemonGoneError(f"no swapd daemon listening on {sock_path}: {exc.strerror}"
                              " (start one with `swapd serve`)") from exc
    except OSError as exc:
        sock.close()
        if isinstance(exc, DaemonGoneError):
            raise
        if exc.errno in (errno.EACCES, errno.EPERM):
            raise RequestError("permission", f"cannot connect to {sock_path}: "
                               f"{exc.strerror}") from exc
        raise DaemonGoneError(f"cannot connect to {sock_path}: {exc}") from exc
    except BaseException:
        sock.close()
        raise
    if not reply.get("ok"):
        sock.close()
        raise RequestError(str(reply.get("error", "internal")), str(reply.get("message", "")))
    client = Client(sock, reply)
    client._path = sock_path
    return client
