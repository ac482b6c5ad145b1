"""The control requests: reading a client's frames, dispatching them, replying.

Each request of docs/protocol.md is one ``_op_NAME`` method taking the session,
the decoded object and the descriptors that came with the frame, and returning
the reply's result fields or raising :class:`~swapd.daemon.errors.Refused` with
a protocol error code.  Descriptors a handler does not take (it sets their slot
to -1 when it does) are closed after it returns; an error of one request costs
nothing but its reply, and a bug (an unexpected exception) costs that request an
``internal`` reply.  A client that does not read its replies loses its session.

Runs on the loop thread only.  Lock order: ``Session.lock`` -> ``Daemon.lock``
-> layer locks.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import time
from typing import TYPE_CHECKING, Any

from swapd import protocol
from swapd.config import PAGE_SIZE
from swapd.daemon.errors import Refused
from swapd.daemon.fdcheck import check_memfd, seal_memfd
from swapd.daemon.procfs import SMAPS_BUDGET, check_mapping, fd_kind
from swapd.daemon.session import ManagedRegion, Session
from swapd.daemon.stats import all_stats, session_stats
from swapd.errors import ProtocolError
from swapd.kernel import memfd as kmemfd
from swapd.kernel import uffd as kuffd
from swapd.kernel.errors import KernelError

if TYPE_CHECKING:
    import socket

    from swapd.daemon.server import Daemon

log = logging.getLogger("swapd.daemon.server")

__all__ = ["Connection", "Ops"]

_REQUIRED_FEATURES = kuffd.UFFD_FEATURE_MISSING_SHMEM | kuffd.UFFD_FEATURE_WP_HUGETLBFS_SHMEM


class Connection:
    """A client's control socket and its frame reader (loop thread only)."""

    def __init__(self, sock: socket.socket, session: Session) -> None:
        self.sock = sock
        self.reader = protocol.FrameReader(sock)
        self.session = session
        self.closed = False
        self.opened = time.monotonic()  # for hello_timeout_s (Admission.reap)
        self.partial_since = -1.0  # when a frame started arriving and is not whole yet


class Ops:
    """The request handlers of one daemon (see the module docstring)."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        # maps whose VmFlags (um/uw/dc) went unchecked: too many mappings below the range for
        # the bounded smaps read (swapd/daemon/procfs.py); their layout was checked in full
        self.vmflags_unchecked = 0

    def on_conn(self, conn: Connection) -> None:
        """Read what `conn` sent; answer every whole frame; end the session on EOF or error."""
        if conn.closed:
            return
        try:
            conn.reader.feed()
        except OSError as exc:
            self.daemon.end_session(conn.session, f"socket error: {exc}")
            return
        for obj, fds in conn.reader.frames():
            try:
                reply = self._dispatch(conn.session, obj, fds)
            finally:
                for fd in fds:  # whatever a handler did not take
                    if fd >= 0:
                        with contextlib.suppress(OSError):
                            os.close(fd)
            if not self._reply(conn, reply):
                return
            if conn.session.dead:
                return
        if conn.reader.fatal is not None:
            self._reply(conn, protocol.error_reply(None, "malformed", conn.reader.fatal))
            self.daemon.end_session(conn.session, f"protocol error: {conn.reader.fatal}")
            return
        if conn.reader.eof:
            self.daemon.end_session(conn.session, "control socket closed")

    def _reply(self, conn: Connection, reply: dict[str, Any]) -> bool:
        try:
            data = protocol.encode(reply)
        except ProtocolError as exc:
            data = protocol.encode(protocol.error_reply(reply.get("id"), "internal", str(exc)))
        try:
            sent = conn.sock.send(data)
            if sent != len(data):
                raise BlockingIOError(errno.EAGAIN, "short send")
        except OSError as exc:
            # a client that does not read its replies, or has gone
            self.daemon.end_session(conn.session, f"cannot send reply: {exc}")
            return False
        return True

    # --- requests -------------------------------------------------------------------------

    def _dispatch(self, session: Session, obj: dict[str, Any] | ProtocolError,
                  fds: list[int]) -> dict[str, Any]:
        if isinstance(obj, ProtocolError):
            return protocol.error_reply(None, "malformed", str(obj).removeprefix("malformed: "))
        req_id = obj.get("id")
        if req_id is not None and (isinstance(req_id, bool) or not isinstance(req_id, int)):
            return protocol.error_reply(None, "bad_request", "'id' must be an integer")
        op = obj.get("op")
        try:
            if not isinstance(op, str):
                raise Refused("bad_request", "missing 'op' (a string)")
            if op not in protocol.OPS:
                raise Refused("unknown_op", f"unknown op {op!r} (known: "
                              f"{', '.join(protocol.OPS)})")
            if op != "map" and fds:
                raise Refused("bad_fd", f"op {op!r} takes no file descriptors, got {len(fds)}")
            if op != "hello" and not session.hello:
                raise Refused("bad_request", "the first request must be 'hello'")
            handler = getattr(self, f"_op_{op}")
            result: dict[str, Any] = handler(session, obj, fds)
        except Refused as r:
            return protocol.error_reply(req_id, r.code, r.message)
        except Exception as exc:  # a bug costs this request, never the loop
            log.exception("request %r of client %d failed", op, session.id)
            return protocol.error_reply(req_id, "internal", f"{type(exc).__name__}: {exc}")
        return {"id": req_id, "ok": True, **result}

    @staticmethod
    def _int(obj: dict[str, Any], key: str, *, minimum: int = 0) -> int:
        v = obj.get(key)
        if isinstance(v, bool) or not isinstance(v, int):
            raise Refused("bad_request", f"{key!r} must be an integer, got {v!r}")
        if v < minimum:
            raise Refused("bad_request", f"{key!r} must be >= {minimum}, got {v}")
        return v

    def _op_hello(self, session: Session, obj: dict[str, Any], fds: list[int]) -> dict[str, Any]:
        if session.hello:
            raise Refused("bad_request", "hello was already done")
        v = obj.get("version")
        if v != protocol.PROTOCOL_VERSION:
            raise Refused("version", f"protocol version {v!r} is not supported; this daemon "
                          f"speaks version {protocol.PROTOCOL_VERSION}")
        token = obj.get("session_token")
        if token is not None:
            if not isinstance(token, str):
                raise Refused("bad_request", "'session_token' must be a string")
            target = self.daemon.reattach(session, token)
            if target is None:
                raise Refused("not_found", "no session of this process has that token (the "
                              "daemon stopped, or the session ended)")
            session = target
        else:
            name = obj.get("name", "")
            session.name = name[:64] if isinstance(name, str) else ""
            session.hello = True
        lim = self.daemon.cfg.limits
        return {"version": protocol.PROTOCOL_VERSION, "page_size": PAGE_SIZE,
                "pid": os.getpid(), "session": session.id, "session_token": session.token,
                "regions": sorted(session.regions),
                "resident_bytes": session.limit_pages * PAGE_SIZE,
                "max_managed_bytes": lim.max_managed_bytes, "max_regions": lim.max_regions}

    def _op_ping(self, session: Session, obj: dict[str, Any], fds: list[int]) -> dict[str, Any]:
        return {}

    def _op_map(self, session: Session, obj: dict[str, Any], fds: list[int]) -> dict[str, Any]:
        layer = self.daemon.layer
        assert layer is not None
        length = self._int(obj, "length", minimum=1)
        address = self._int(obj, "address", minimum=1)
        name = obj.get("name", "")
        if not isinstance(name, str):
            raise Refused("bad_request", "'name' must be a string")
        if len(fds) != 2:
            raise Refused("bad_fd", f"map needs 2 descriptors (memfd, userfaultfd), "
                          f"got {len(fds)}")
        if length % PAGE_SIZE or address % PAGE_SIZE:
            raise Refused("bad_range", f"address {address:#x} and length {length} must be "
                          f"multiples of the page size {PAGE_SIZE}")
        memfd, ufd = fds
        if not kmemfd.is_memfd(memfd):
            raise Refused("bad_fd", f"descriptor 0 is not a memfd ({fd_kind(memfd)})")
        if not kuffd.is_userfaultfd(ufd):
            raise Refused("bad_fd", f"descriptor 1 is not a userfaultfd ({fd_kind(ufd)})")
        st = check_memfd(memfd, length)
        npages = length // PAGE_SIZE
        lim = self.daemon.cfg.limits
        with session.lock:
            if len(session.regions) + 1 > lim.max_regions:
                raise Refused("quota", f"max_regions={lim.max_regions} regions already mapped")
            if (session.managed_pages + npages) * PAGE_SIZE > lim.max_managed_bytes:
                raise Refused("quota", f"{length} more bytes would exceed max_managed_bytes="
                              f"{lim.max_managed_bytes} (mapped: "
                              f"{session.managed_pages * PAGE_SIZE})")
            for r in session.regions.values():
                if (r.start, r.end) == (address, address + length) and \
                        os.fstat(r.memfd).st_ino == st.st_ino:
                    return {"region": r.id}  # sent again after a restart: the same region
                if address < r.end and r.start < address + length:
                    raise Refused("bad_range", f"[{address:#x}, {address + length:#x}) "
                                  f"overlaps region {r.id} at [{r.start:#x}, {r.end:#x})")
        uid_bytes = self.daemon.managed_bytes_of_uid(session.uid)
        if uid_bytes + length > lim.max_managed_bytes_per_uid:
            raise Refused("quota", f"{length} more bytes would exceed max_managed_bytes_per_uid="
                          f"{lim.max_managed_bytes_per_uid} for uid {session.uid} (mapped by "
                          f"its sessions: {uid_bytes})")
        other = self.daemon.region_of_file(st.st_dev, st.st_ino)
        if other is not None:
            raise Refused("bad_fd", f"descriptor 0 is already the memfd of region {other}")
        if not check_mapping(session.pid, address, length, st.st_ino, st.st_dev):
            self.vmflags_unchecked += 1
            log.info("client %d: VmFlags of [%#x, %#x) not checked (more than %d bytes of "
                     "/proc/%d/smaps below it); the layout was", session.id, address,
                     address + length, SMAPS_BUDGET, session.pid)
        uffd = kuffd.Userfaultfd.from_fd(ufd)
        fds[1] = -1  # owned by uffd now
        adopted = False
        try:
            feats = uffd.features or 0
            if feats & _REQUIRED_FEATURES != _REQUIRED_FEATURES:
                raise Refused("bad_fd", f"userfaultfd lacks features MISSING_SHMEM|"
                              f"WP_HUGETLBFS_SHMEM (enabled: {feats:#x})")
            if feats & kuffd.UFFD_FEATURE_EVENT_FORK:
                raise Refused("bad_fd", "userfaultfd has EVENT_FORK enabled; swapd does not "
                              "serve forked children: use MADV_DONTFORK instead")
            if feats & kuffd.UFFD_FEATURE_SIGBUS:
                raise Refused("bad_fd", "userfaultfd has FEATURE_SIGBUS: faults would never "
                              "reach the daemon")
            try:  # EBUSY: the range is registered with another userfaultfd (fdcheck.py)
                uffd.register(address, length, kuffd.UFFDIO_REGISTER_MODE_MISSING
                              | kuffd.UFFDIO_REGISTER_MODE_WP)
            except KernelError as exc:
                raise Refused("bad_fd", f"descriptor 1 does not serve [{address:#x}, "
                              f"{address + length:#x}) of process {session.pid}: {exc}") from exc
            seal_memfd(memfd)
            keeper = self.daemon.keeper
            with session.lock:
                if session.dead:
                    raise Refused("internal", "session ended")
                rid = self.daemon.new_region_id()
                state, state_fd = keeper.page_state(rid, npages)
                lrid = layer.add_region(session.id, npages)
                region = ManagedRegion(rid, session, address, npages, memfd, uffd, lrid, name,
                                       state=state, state_fd=state_fd)
                fds[0] = -1  # owned by the region now
                adopted = True
                session.regions[rid] = region
                session.managed_pages += npages
                region.file = (st.st_dev, st.st_ino)
                self.daemon.loop.register(uffd.fd, "uffd", region)
            if not keeper.region_mapped(region):  # stored and recorded before the reply
                assert self.daemon.pager is not None
                with session.lock:
                    with contextlib.suppress(KernelError):
                        region.uffd.unregister(region.start, region.end - region.start)
                    self.daemon.pager.drop_region_locked(region, "the fd store refused it")
                raise Refused("unavailable", "the service manager's fd store did not take the "
                              "region's descriptors (FileDescriptorStoreMax= reached?), so it "
                              "could not survive a daemon restart; the region is not mapped")
        finally:
            if not adopted:
                uffd.close()
        return {"region": rid}

    def _region(self, session: Session, obj: dict[str, Any]) -> ManagedRegion:
        rid = self._int(obj, "region", minimum=0)
        region = session.regions.get(rid)
        if region is None or region.dropped:
            raise Refused("not_found", f"no region {rid} in this session")
        return region

    def _op_unmap(self, session: Session, obj: dict[str, Any], fds: list[int]) -> dict[str, Any]:
        pager = self.daemon.pager
        assert pager is not None
        with session.lock:
            region = self._region(session, obj)
            with contextlib.suppress(KernelError):
                region.uffd.unregister(region.start, region.end - region.start)
            pager.drop_region_locked(region, "unmap request")
        return {}

    def _op_set_limit(self, session: Session, obj: dict[str, Any],
                      fds: list[int]) -> dict[str, Any]:
        reclaimer = self.daemon.reclaimer
        assert reclaimer is not None
        want = self._int(obj, "resident_bytes", minimum=0)
        eff = min(want, self.daemon.cfg.limits.global_resident_bytes) // PAGE_SIZE
        with session.lock:
            session.limit_pages = eff
        reclaimer.kick()
        return {"resident_bytes": eff * PAGE_SIZE}

    def _op_advise(self, session: Session, obj: dict[str, Any], fds: list[int]) -> dict[str, Any]:
        pager, reclaimer = self.daemon.pager, self.daemon.reclaimer
        assert pager is not None and reclaimer is not None
        offset = self._int(obj, "offset")
        length = self._int(obj, "length", minimum=1)
        advice = obj.get("advice")
        if advice not in protocol.ADVICE:
            raise Refused("bad_request", f"advice {advice!r} is not one of "
                          f"{', '.join(protocol.ADVICE)}")
        with session.lock:
            region = self._region(session, obj)
            if offset % PAGE_SIZE or length % PAGE_SIZE:
                raise Refused("bad_range", f"offset {offset} and length {length} must be "
                              f"multiples of {PAGE_SIZE}")
            if offset + length > region.npages * PAGE_SIZE:
                raise Refused("bad_range", f"[{offset}, {offset + length}) is beyond the "
                              f"region's {region.npages * PAGE_SIZE} bytes")
            if length > protocol.MAX_ADVISE:
                raise Refused("bad_range", f"advise of {length} bytes: at most "
                              f"{protocol.MAX_ADVISE} per request (bounded work on the loop; "
                              "split the range)")
            i0, n = offset // PAGE_SIZE, length // PAGE_SIZE
            if advice == "dontneed":
                return {"pages": pager.discard_locked(region, i0, n)}
            if advice == "willneed":
                budget = max(0, session.limit_pages - session.resident)
                return {"pages": pager.prefetch_locked(region, i0, n, budget)}
        return {"pages": reclaimer.evict_range(session, region, i0, n)}

    def _op_restart(self, session: Session, obj: dict[str, Any],
                    fds: list[int]) -> dict[str, Any]:
        """Hand everything over to a new daemon process (the manager starts it)."""
        if session.uid not in (0, os.geteuid()):
            raise Refused("permission", f"uid {session.uid} may not restart the daemon "
                          "(root or the daemon's own uid only)")
        keeper = self.daemon.keeper
        if not keeper.enabled:
            raise Refused("unavailable", "no fd store (run under systemd with "
                          "FileDescriptorStoreMax= or `swapd supervise`): a restart would "
                          "lose every client")
        self.daemon.request_restart()
        return {"pid": os.getpid()}

    def _op_stats(self, session: Session, obj: dict[str, Any], fds: list[int]) -> dict[str, Any]:
        scope = obj.get("scope", "client")
        if scope == "client":
            return {"stats": session_stats(self.daemon, session)}
        if scope == "all":
            after = self._int(obj, "after") if "after" in obj else 0
            # the asking connection (swapd stats, the exporter) is not a client to report,
            # unless it maps memory itself
            exclude = session if not session.regions else None
            latency = obj.get("latency", True)
            if not isinstance(latency, bool):
                raise Refused("bad_request", f"'latency' must be true or false, got {latency!r}")
            privileged = session.uid in (0, os.geteuid())
            return {"stats": all_stats(self.daemon, exclude=exclude, after=after,
                                       latency=latency, uid=None if privileged else session.uid)}
        raise Refused("bad_request", f"scope {scope!r} is not 'client' or 'all'")

    def _op_ctl(self, session: Session, obj: dict[str, Any], fds: list[int]) -> dict[str, Any]:
        """Read or change a runtime knob (swapd.daemon.control, docs/protocol.md)."""
        from swapd.daemon import control

        knob = obj.get("knob")
        client = obj.get("client")
        if knob is None:
            if "value" in obj:
                raise Refused("bad_request", "'value' without 'knob'")
            mine = None if control.authorised(session) else session.uid  # docs/protocol.md
            clients = {str(s.id): control.client_knobs(self.daemon, s)
                       for s in self.daemon.live_sessions() if mine in (None, s.uid)}
            return {"knobs": control.global_knobs(self.daemon), "clients": clients}
        if not isinstance(knob, str):
            raise Refused("bad_request", f"'knob' must be a string, got {knob!r}")
        target: Session | None = None
        if client is not None:
            sid = self._int(obj, "client", minimum=1)
            target = self.daemon.sessions.get(sid)
            if target is None or target.dead or (
                    target.uid != session.uid and not control.authorised(session)):
                raise Refused("not_found", f"no client {sid}")
        if "value" not in obj:  # read
            if target is not None:
                knobs = control.client_knobs(self.daemon, target)
                if knob not in knobs:
                    raise Refused("bad_request", f"unknown client knob {knob!r} (client knobs: "
                                  f"{', '.join(control.CLIENT_KNOBS)})")
                return {"knob": knob, "client": target.id, "value": knobs[knob]}
            knobs = control.global_knobs(self.daemon)
            if knob not in knobs:
                raise Refused("bad_request", f"unknown knob {knob!r} (knobs: "
                              f"{', '.join(knobs)})")
            return {"knob": knob, "value": knobs[knob]}
        if not control.authorised(session):
            raise Refused("permission", f"changing knobs is allowed to root and the daemon's "
                          f"uid ({os.geteuid()}) only, not uid {session.uid}")
        if target is not None:
            value = control.set_client(self.daemon, target, knob, obj["value"])
            return {"knob": knob, "client": target.id, "value": value}
        return {"knob": knob, "value": control.set_global(self.daemon, knob, obj["value"])}
