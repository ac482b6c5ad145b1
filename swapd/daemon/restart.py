"""Session ownership across daemon processes: keep, hand over, adopt, recover.

Design (docs/design.md, "Restart and crash recovery"; the names and formats are
in :mod:`swapd.daemon.handover`).  :class:`Keeper` is the daemon's one owner of
what must outlive it:

* as the daemon acquires a descriptor it goes to the fd store -- the listening
  socket at start, a session's connection and pidfd at admission, a region's
  memfd, userfaultfd and page-state memfd at ``map`` -- and the session registry
  is rewritten before the reply that makes the change visible; when a session
  ends or a region is dropped its names are removed (``reconcile``);
* a graceful stop (SIGTERM, ``swapd ctl restart``) stops taking work (the loop
  has returned, the reclaimer is stopped after its batch), makes every stored
  page reachable by the next daemon -- when the layer cannot hand its state
  over, the stored pages are written back into the clients' memfds, where the
  next daemon finds them resident -- marks the registry clean and leaves every
  session's descriptors in the store (:meth:`Keeper.hand_over`);
* the next daemon (:meth:`Keeper.adopt`) takes its listening socket and the
  registry from ``LISTEN_FDS``, re-creates every session whose process is alive,
  rebuilds each region's page states by the recovery scan, poisons the pages
  that were lost, ``UFFDIO_WAKE``s every registered range (a thread blocked on
  a fault the old daemon read but never resolved retries), and removes from the
  store whatever nothing adopted.  After a crash (registry not clean) each
  adopted connection gets one ``restarted`` notice: a request the old daemon
  read but never answered is to be sent again (docs/protocol.md).

Without a store (``swapd serve`` alone) the keeper does nothing and a stop ends
every session, as before.

Lock order: as the daemon's (``Session.lock`` -> ``Daemon.lock`` -> layer
locks).  The keeper runs on the loop thread (start, requests, reconcile, stop).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import select
import socket
import struct
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from swapd import protocol
from swapd.daemon import handover as ho
from swapd.daemon.handover import HandoverFormatError, Registry, StoreLink
from swapd.daemon.session import (
    EVICTING,
    GONE,
    PAGE_SHIFT,
    PAGE_SIZE,
    RESIDENT,
    SWAPPED,
    ManagedRegion,
    Session,
    lazy_zeros,
    page_key,
)
from swapd.daemon.stats import runs_of
from swapd.errors import CorruptPageError, EntryNotFoundError, SwapdError, TierIOError
from swapd.kernel import memfd as kmemfd
from swapd.kernel.errors import KernelError

if TYPE_CHECKING:
    from swapd.daemon.server import Daemon

log = logging.getLogger(__name__)

EX_RESTART = 75  # exit status after ``swapd ctl restart`` (EX_TEMPFAIL; the unit restarts it)
EX_REFUSED = 78  # exit status when stored state is in a format this daemon cannot read (EX_CONFIG)

__all__ = ["EX_REFUSED", "EX_RESTART", "Keeper"]


class Keeper:
    """What outlives the daemon's process (see the module docstring)."""

    def __init__(self, daemon: Daemon, *, store: StoreLink | None = None) -> None:
        self.daemon = daemon
        self.link = store or StoreLink()
        self.registry: Registry | None = None
        self.passed: dict[str, int] = {}  # LISTEN_FDS not yet adopted (start only)
        self.max_sid = 0
        self.max_rid = 0
        self.handed_over = False  # hand_over() done: close() must not end sessions
        self.restart_requested = False
        self.adopted_sessions = 0
        self._crash = False
        self.regions: dict[int, ManagedRegion] = {}  # rid -> region with a page-state memfd
        self._next_reconcile = 0.0
        self.layer_kept = False  # the layer's state regions are in the store (or adopted)
        self.layer_adopted = False
        self._seal: tuple[Any, int, int] | None = None  # (sealer, memfd, reserved next_gen)
        self.recovered = {"resident": 0, "swapped": 0, "poisoned": 0, "hole": 0}

    @property
    def enabled(self) -> bool:
        """Whether a manager keeps an fd store for this daemon."""
        return self.link.enabled

    # --- start ----------------------------------------------------------------------------

    def remove_orphan_files(self, state_path: Path) -> None:
        """Remove disk-tier files in ``state_path`` that no daemon holds (a fresh start).

        A disk tier holds a ``flock`` on its file for as long as any descriptor of it is
        open -- the fd store's included -- so a file whose lock can be taken belongs to
        nobody: a daemon that crashed without a store, or a store that was released.
        """
        import fcntl

        if not state_path.is_dir():
            return
        for f in sorted(state_path.glob("*.swap")):
            try:
                fd = os.open(f, os.O_RDWR | os.O_CLOEXEC)
            except OSError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                continue  # held: another daemon's, or kept in a store
            try:
                f.unlink()
                log.warning("removed disk tier file %s: no daemon adopted it", f)
            except OSError as exc:
                log.warning("cannot remove orphan disk tier file %s: %s", f, exc)
            finally:
                os.close(fd)

    def adopt_layer(self) -> Any:
        """The layer over the stored state regions (``layer.*``), or None if none were passed.

        Raises HandoverFormatError (nothing is removed from the store) if a region is in a
        format this daemon cannot read.
        """
        from swapd.layer.build import adopt_layer
        from swapd.state import StateFormatError

        fds = {n[len("layer."):]: fd for n, fd in self.passed.items() if n.startswith("layer.")}
        if not fds:
            return None
        for n in fds:
            del self.passed["layer." + n]
            self.link.names.add("layer." + n)
        seal_fd = fds.pop("seal", None)
        try:
            seal_state = None
            if seal_fd is not None:
                seal_state = _read_seal(seal_fd)
            layer = adopt_layer(self.daemon.cfg.layer, fds, seal_state=seal_state,
                                tier_options=self.daemon.cfg.tier)
        except (StateFormatError, HandoverFormatError, SwapdError) as exc:
            self.handed_over = True  # refuse by name; leave the store as it is
            self.link.enabled = False
            raise HandoverFormatError(f"layer state: {exc}") from exc
        self.layer_kept = self.layer_adopted = True
        if seal_fd is not None:
            sealer = _sealer_of(layer)
            if sealer is not None:
                self._seal = (sealer, seal_fd, 0)
                self._reserve_seal()
            else:
                os.close(seal_fd)
        return layer

    def store_layer(self, layer: Any) -> None:
        """Keep a new layer's state regions (and its disk sealer's key) in the store."""
        if not self.enabled:
            return
        fds = getattr(layer, "state_fds", None)
        if fds is None:
            return
        named = fds()
        sealer = _sealer_of(layer)
        why = _adoption_probe(layer, named, sealer, self.daemon.cfg.tier)
        if why is not None:
            log.warning("the layer cannot hand its state over (%s): at a restart its stored "
                        "pages are written back into the clients' memfds, at a crash they are "
                        "lost (poisoned)", why)
            return
        for name, fd in named.items():
            self.link.store("layer." + name, fd)
        if sealer is not None:
            fd = kmemfd.memfd_create("swapd-seal")
            self._seal = (sealer, fd, 0)
            self._reserve_seal()
            self.link.store("layer.seal", fd)
        self.layer_kept = True

    def _reserve_seal(self) -> None:
        """Keep the stored sealer state ``SEAL_RESERVE`` counters ahead of the sealer.

        AES-GCM must never see a nonce twice: a successor starts at the stored counter, so
        the stored counter must be above every counter this daemon will have used when it
        dies.  It is rewritten (one small ``pwrite``) before the sealer gets within half a
        reservation of it.
        """
        if self._seal is None:
            return
        sealer, fd, reserved = self._seal
        magic, version, key, next_gen = _SEAL.unpack(sealer.export_state())
        if reserved and next_gen < reserved - SEAL_RESERVE // 2:
            return
        reserved = next_gen + SEAL_RESERVE
        os.pwrite(fd, _SEAL.pack(magic, version, key, reserved), 0)
        self._seal = (sealer, fd, reserved)

    def take_listener(self) -> socket.socket | None:
        """The listening socket from ``LISTEN_FDS`` (a socket unit's or our stored one)."""
        fd = self.passed.pop("listen", None)
        if fd is None:
            return None
        sock = socket.socket(fileno=fd)
        sock.setblocking(False)
        self.link.names.add("listen")
        return sock

    def store_listener(self, sock: socket.socket) -> None:
        """Keep the listening socket this daemon bound."""
        self.link.store("listen", sock.fileno())

    def adopt(self) -> None:
        """Adopt the registry and every live session from ``LISTEN_FDS``; store the rest.

        Raises HandoverFormatError (nothing is removed from the store) if the
        registry or a page-state memfd is in a format this daemon cannot read.
        """
        try:
            self._adopt()
        except HandoverFormatError:
            # refuse by name and leave the store as it is, for a daemon that can read it
            self.handed_over = True
            self.link.enabled = False
            raise

    def _adopt(self) -> None:
        t0 = time.monotonic()
        passed = self.passed
        reg_fd = passed.pop("sessions", None)
        if reg_fd is None:
            self.registry = Registry.create()
            self.link.store("sessions", self.registry.fd)
            self._drop_orphans()
            return
        self.registry, obj = Registry.adopt(reg_fd)
        self.link.names.add("sessions")
        if obj is None:
            log.warning("session registry: no valid slot; no session to adopt")
            obj = {}
        fmt = obj.get("format", ho.FORMAT_VERSION)
        if fmt != ho.FORMAT_VERSION:
            raise HandoverFormatError(f"session registry: format {fmt} is not supported "
                                      f"(this swapd reads format {ho.FORMAT_VERSION})")
        for e in obj.get("sessions", []):
            for r in e.get("regions", []):
                if not isinstance(r, dict):
                    raise HandoverFormatError("session registry: a region is not an object")
        self.max_sid = int(obj.get("max_sid", 0))
        self.max_rid = int(obj.get("max_rid", 0))
        d = self.daemon
        d._sids = itertools.count(self.max_sid + 1)
        d._rids = itertools.count(self.max_rid + 1)
        crash = not obj.get("clean", False)
        self._crash = crash
        self._name_layer_clients(obj.get("sessions", []))
        for e in obj.get("sessions", []):
            self._adopt_session(e, crash)
        self._drop_unadopted_layer_regions()
        self._drop_orphans()
        self.commit(clean=False)
        r = self.recovered
        log.warning("adopted %d session(s) after a %s: %d pages resident, %d stored, %d "
                    "poisoned (lost with the old daemon); in %.0f ms", self.adopted_sessions,
                    "crash" if crash else "graceful restart", r["resident"], r["swapped"],
                    r["poisoned"], (time.monotonic() - t0) * 1000)

    def _name_layer_clients(self, sessions: list[dict[str, Any]]) -> None:
        """Give the adopted layer's clients their sessions' ids back, before any session is
        adopted.  O(regions).

        An adopted layer names its clients by number (``SwapLayer.adopt``), in the order
        they first stored, which is not the order of the session ids; the daemon names a
        session's layer client by the session id (``add_region``, ``remove_client``).
        Left as numbers, ending session 2 would free the pages of whichever session the
        layer numbered 2.  The registry says which session owns each layer region; a layer
        client that no session owns (or that two claim) is freed now: its pages belong to
        nobody the registry knows, and a region that loses its layer region here finds its
        stored pages missing and poisons them (the recovery scan).
        """
        layer = self.daemon.layer
        if not self.layer_adopted or layer is None:
            return
        lregions = layer.regions()
        owner: dict[Any, int] = {}
        disputed: set[Any] = set()
        for e in sessions:
            sid = int(e["sid"])
            for r in e.get("regions", []):
                got = lregions.get(int(r.get("lrid", -1)))
                if got is None:
                    continue
                key = got[0]
                if owner.setdefault(key, sid) != sid:
                    disputed.add(key)
        claimed: dict[int, Any] = {}
        for key, sid in sorted(owner.items(), key=lambda kv: kv[1]):
            if key in disputed or sid in claimed:
                disputed.add(key)
            else:
                claimed[sid] = key
        for key in layer.clients():
            if key in disputed or key not in owner:
                log.warning("layer client %s belongs to no session in the registry%s; its "
                            "stored pages are freed", key,
                            " (claimed twice)" if key in disputed else "")
                with contextlib.suppress(SwapdError, KeyError):
                    layer.remove_client(key)
        layer.rename_clients({key: sid for sid, key in claimed.items()})

    def _drop_unadopted_layer_regions(self) -> None:
        """Free what the adopted layer holds for regions no session adopted."""
        layer = self.daemon.layer
        if not self.layer_adopted or layer is None:
            return
        live = {r.layer_region for s in self.daemon.sessions.values()
                for r in s.regions.values()}
        sids = set(self.daemon.sessions)
        for lrid, (client, _n) in sorted(layer.regions().items()):
            if lrid not in live:
                log.info("layer region %d (client %s) belongs to no adopted session; freed",
                         lrid, client)
                with contextlib.suppress(SwapdError, KeyError):
                    layer.remove_region(lrid)
        for client in list(layer.clients()):
            if client not in sids:
                with contextlib.suppress(SwapdError, KeyError):
                    layer.remove_client(client)

    def _drop_orphans(self) -> None:
        for name, fd in sorted(self.passed.items()):
            log.warning("fd store: %r was not adopted by anything; removing it", name)
            with contextlib.suppress(OSError):
                os.close(fd)
            self.link.names.add(name)
            self.link.remove(name)
        self.passed.clear()

    def _adopt_session(self, e: dict[str, Any], crash: bool) -> None:
        from swapd.daemon.ops import Connection
        from swapd.plugins import make_policy

        d = self.daemon
        sid = int(e["sid"])
        prefix = ho.session_prefix(sid)
        mine = {n: fd for n, fd in self.passed.items() if n.startswith(prefix)}
        for n in mine:
            del self.passed[n]
        self.link.names.update(mine)
        pidfd = mine.pop(prefix + "pidfd", -1)
        conn_fd = mine.pop(prefix + "conn", -1)
        alive = pidfd >= 0 and not select.select([pidfd], [], [], 0)[0]
        if not alive:
            log.info("client %d (pid %s) exited during the restart; freeing it", sid,
                     e.get("pid"))
            for fd in [pidfd, conn_fd, *mine.values()]:
                if fd >= 0:
                    os.close(fd)
            self.link.remove_prefix(prefix)
            return
        cfg = d.cfg
        session = Session(sid, int(e["pid"]), int(e["uid"]), int(e["gid"]),
                          limit_pages=int(e["limit_pages"]),
                          policy=make_policy(cfg.reclaim.policy),
                          latency_samples=cfg.pager.latency_samples)
        session.pidfd = pidfd
        session.name = str(e.get("name", ""))
        session.token = str(e.get("token", ""))
        session.hello = True
        with d.lock:
            d.sessions[sid] = session
            d.clients_total += 1
        d.loop.register(pidfd, "pidfd", session)
        for r in e.get("regions", []):
            rp = ho.region_prefix(sid, int(r["rid"]))
            fds = (mine.pop(rp + "memfd", -1), mine.pop(rp + "uffd", -1),
                   mine.pop(rp + "state", -1))
            if min(fds) < 0:
                log.error("client %d region %s: descriptors missing from the store; dropped",
                          sid, r["rid"])
                for fd in fds:
                    if fd >= 0:
                        os.close(fd)
                self.link.remove_prefix(rp)
                continue
            with session.lock:
                self._adopt_region(session, r, *fds)
        for name, fd in mine.items():  # of regions the registry does not know
            os.close(fd)
            self.link.remove(name)
        if conn_fd >= 0:
            sock = socket.socket(fileno=conn_fd)
            sock.setblocking(False)
            conn = Connection(sock, session)
            session.conn = conn
            d.loop.register(conn_fd, "conn", conn)
            if crash:  # a request the old daemon read may never be answered: say so
                with contextlib.suppress(OSError):
                    sock.send(protocol.encode(protocol.error_reply(
                        None, "restarted", "the daemon restarted after a crash; send an "
                        "unanswered request again")))
        self.adopted_sessions += 1

    def _adopt_region(self, session: Session, r: dict[str, Any], memfd: int, ufd: int,
                      state_fd: int) -> None:
        from swapd.kernel import uffd as kuffd

        d = self.daemon
        layer = d.layer
        assert layer is not None
        rid, start, npages = int(r["rid"]), int(r["start"]), int(r["npages"])
        try:
            state = ho.adopt_page_state(state_fd, npages)
        except BaseException:
            for fd in (memfd, ufd, state_fd):
                os.close(fd)
            raise
        uffd = kuffd.Userfaultfd.from_fd(ufd)
        lrid = int(r.get("lrid", -1))
        if not self.layer_adopted or layer.regions().get(lrid, (None, -1))[1] != npages:
            if self.layer_adopted:
                log.error("client %d region %d: the layer has no region %d of %d pages; "
                          "its stored pages are lost", session.id, rid, lrid, npages)
            lrid = layer.add_region(session.id, npages)
            copies = bytes(npages)
            stored = bytearray(npages)
        else:
            copies = layer.copies(lrid)
            stored = bytearray(copies.replace(b"\x02", b"\x01"))
        region = ManagedRegion(rid, session, start, npages, memfd, uffd, lrid,
                               str(r.get("name", "")), state=state, state_fd=state_fd)
        resident = bytearray(npages)
        for first, n in ho.resident_runs(memfd, npages):
            resident[first:first + n] = b"\x01" * n
        for first, n in r.get("poisoned", []):  # poisoned by an earlier daemon
            region.poisoned.update(range(int(first), int(first) + int(n)))
        # The recovery scan (docs/design.md sec. 9, handover.recover_page), by runs: the
        # bytes of each page's old state, residency and stored copy are combined into one
        # code per page and translated to the new state at once (ho.recover_pages).
        old = ho.read_page_state(state_fd, npages)  # not through the mapping (see there)
        for first, n in ho.byte_runs(ho.both(resident, stored)):
            layer.free_batch(lrid, first, n)  # the memfd's copy is the newer one
            stored[first:first + n] = bytes(n)
        for i in ho.restore_clean_copies(layer, lrid, copies, resident, old):
            stored[i] = 0
        if self._crash:  # after a crash every stored copy is checked before it counts
            for first, n in ho.byte_runs(stored):
                for i in range(first, first + n):
                    try:
                        layer.peek(lrid, i)
                    except (CorruptPageError, TierIOError, EntryNotFoundError) as exc:
                        log.error("region %d page %d: stored copy fails verification (%s)",
                                  rid, i, exc)
                        with contextlib.suppress(SwapdError):
                            layer.invalidate(lrid, i)
                        stored[i] = 0
        new = ho.recover_pages(old, resident, stored)
        lost = ho.indices_of(new, ho.LOST)
        unwp = ho.indices_of(old, EVICTING)
        ho.write_page_state(state, old, new.replace(bytes([ho.LOST]), bytes([GONE])))
        counts = self.recovered
        policy = session.policy
        for first, n in ho.byte_runs(new, RESIDENT):
            for i in range(first, first + n):
                policy.insert(page_key(rid, i))
        n_res = new.count(RESIDENT)
        session.resident += n_res
        counts["resident"] += n_res
        counts["swapped"] += new.count(SWAPPED)
        counts["hole"] += new.count(ho.HOLE) + new.count(GONE)
        session.regions[rid] = region
        session.managed_pages += npages
        self.regions[rid] = region
        d.loop.register(uffd.fd, "uffd", region)
        for i in unwp:  # a batch was cut short: its write protection goes
            with contextlib.suppress(KernelError):
                uffd.writeprotect(region.address(i), PAGE_SIZE, wp=False, dontwake=True)
        for i in lost:
            self._poison(region, i)
        with contextlib.suppress(KernelError):  # faults read by the old daemon: retry
            uffd.wake(start, npages << PAGE_SHIFT)

    def _poison(self, region: ManagedRegion, i: int) -> None:
        addr = region.address(i)
        try:
            region.uffd.writeprotect(addr, PAGE_SIZE, wp=False, dontwake=True)
            region.uffd.poison(addr, PAGE_SIZE)
        except SwapdError as exc:
            log.error("region %s page %d: poison failed: %s", region.id, i, exc)
        region.session.counters.poisoned_pages += 1
        region.poisoned.add(i)
        self.recovered["poisoned"] += 1

    # --- while serving -----------------------------------------------------------------------

    def snapshot(self, *, clean: bool) -> dict[str, Any]:
        """The registry's content: every live session and region."""
        sessions = []
        for s in list(self.daemon.sessions.values()):
            if s.dead:
                continue
            regions = [{"rid": r.id, "start": r.start, "npages": r.npages, "name": r.name,
                        "lrid": r.layer_region, "poisoned": runs_of(r.poisoned)}
                       for r in list(s.regions.values()) if not r.dropped]
            sessions.append({"sid": s.id, "pid": s.pid, "uid": s.uid, "gid": s.gid,
                             "name": s.name, "token": s.token, "limit_pages": s.limit_pages,
                             "regions": regions})
        return {"format": ho.FORMAT_VERSION, "clean": clean, "max_sid": self.max_sid,
                "max_rid": self.max_rid, "daemon_pid": os.getpid(), "sessions": sessions}

    def commit(self, *, clean: bool = False) -> None:
        """Rewrite the registry (before the reply that makes a change visible)."""
        if self.registry is not None and self.enabled:
            self.registry.write(self.snapshot(clean=clean))

    def session_opened(self, session: Session) -> bool:
        """Store a new session's connection and pidfd, then record it.  False if the store
        did not take them (the caller ends the session: it could not survive a restart)."""
        self.max_sid = max(self.max_sid, session.id)
        if not self.enabled:
            return True
        prefix = ho.session_prefix(session.id)
        ok = session.conn is None or self.link.store(prefix + "conn",
                                                     session.conn.sock.fileno())
        ok = ok and self.link.store(prefix + "pidfd", session.pidfd, poll=False)
        if not ok:
            self.link.remove_prefix(prefix)
            return False
        self.commit()
        return True

    def page_state(self, rid: int, npages: int) -> tuple[Any, int]:
        """The page-state bytes of a new region and their memfd (-1 without a store)."""
        if not self.enabled:
            return lazy_zeros(npages), -1
        fd, mm = ho.create_page_state(rid, npages)
        return mm, fd

    def region_mapped(self, region: ManagedRegion) -> bool:
        """Store a new region's memfd, userfaultfd and page states, then record it.  False
        if the store did not take them (the caller drops the region and refuses the map)."""
        self.max_rid = max(self.max_rid, region.id)
        if not self.enabled:
            return True
        self.regions[region.id] = region
        p = ho.region_prefix(region.session.id, region.id)
        ok = (self.link.store(p + "memfd", region.memfd)
              and self.link.store(p + "uffd", region.uffd.fd, poll=False)
              and self.link.store(p + "state", region.state_fd))
        if not ok:
            self.link.remove_prefix(p)
            return False
        self.commit()
        return True

    def conn_replaced(self, session: Session) -> None:
        """A session's connection changed (re-attach): store the new one."""
        if self.enabled and session.conn is not None:
            name = ho.session_prefix(session.id) + "conn"
            self.link.remove(name)
            self.link.store(name, session.conn.sock.fileno())
            self.commit()

    def session_ended(self, session: Session) -> None:
        """Remove an ended session's names from the store."""
        for r in [r for r in self.regions.values() if r.session is session]:
            r.close_state()
            del self.regions[r.id]
        if self.enabled:
            self.link.remove_prefix(ho.session_prefix(session.id))
            self.commit()

    def tick(self, now: float) -> None:
        """From the loop: the sealer's reservation; about once a second :meth:`reconcile`."""
        if self._seal is not None:
            self._reserve_seal()
        if self.enabled and now >= self._next_reconcile:
            self._next_reconcile = now + 1.0
            self.reconcile()

    def reconcile(self) -> None:
        """Remove the names of regions dropped since (unmap, munmap, errors).  O(regions)."""
        if not self.enabled:
            return
        for r in [r for r in self.regions.values() if r.dropped]:
            r.close_state()
            del self.regions[r.id]
        live = set()
        for s in list(self.daemon.sessions.values()):
            for r in list(s.regions.values()):
                live.add(ho.region_prefix(s.id, r.id))
        stale = {n.rsplit(".", 1)[0] + "." for n in self.link.names
                 if n.startswith("c") and ".r" in n}
        changed = False
        for p in sorted(stale - live):
            self.link.remove_prefix(p)
            changed = True
        if changed:
            self.commit()

    # --- stop -------------------------------------------------------------------------------

    def hand_over(self) -> None:
        """Graceful stop with a store: leave everything for the next daemon (module doc)."""
        t0 = time.monotonic()
        d = self.daemon
        if d.pager is not None:  # loads in flight: their pages stay stored (SWAPPED)
            d.pager.cancel_loads()
        if d.reclaimer is not None:
            d.reclaimer.stop()
        if d.shrinker is not None:
            d.shrinker.stop()
            d.shrinker = None
        self._reserve_seal()
        pages = 0
        for s in list(d.sessions.values()):
            if self.layer_kept:
                break  # the layer's regions are in the store: nothing to write back
            with s.lock:
                if s.dead:
                    continue
                for r in list(s.regions.values()):
                    if not r.dropped:
                        pages += self._write_back_locked(r)
        self.reconcile()
        self.commit(clean=True)
        self.handed_over = True
        log.warning("handed over %d session(s) to the next daemon (%s) in %.0f ms",
                    len(d.sessions),
                    "the layer's state regions stay in the fd store" if self.layer_kept else
                    f"{pages} stored pages written back into the clients' memfds",
                    (time.monotonic() - t0) * 1000)

    def abandon(self) -> None:
        """The loop failed: leave every descriptor in the store and the registry as it is
        (not clean), as a SIGKILL would; :meth:`Daemon.close` then closes only this
        process's copies and the next daemon recovers (docs/design.md sec. 9)."""
        d = self.daemon
        if d.reclaimer is not None:
            d.reclaimer.stop()
        if d.shrinker is not None:
            d.shrinker.stop()
            d.shrinker = None
        self.handed_over = True
        log.error("the event loop failed; %d session(s) stay in the fd store for the next "
                  "daemon to recover", len(d.sessions))

    def _write_back_locked(self, region: ManagedRegion) -> int:
        """Put every SWAPPED page of ``region`` back into its memfd.  O(npages).

        The layer's stored copies die with this process; the memfd does not.  A
        page that cannot be loaded is poisoned.
        """
        layer = self.daemon.layer
        assert layer is not None
        state = region.state
        done = 0
        i = 0
        n = region.npages
        while i < n:
            if state[i] != SWAPPED:
                i += 1
                continue
            j = i
            pages: list[bytes] = []
            while j < n and state[j] == SWAPPED and len(pages) < 64:
                try:
                    pages.append(layer.load(region.layer_region, j))
                except (CorruptPageError, TierIOError, EntryNotFoundError) as exc:
                    log.error("region %s page %d cannot be loaded (%s): poisoning it",
                              region.id, j, exc)
                    break
                j += 1
            if pages:
                os.pwritev(region.memfd, pages, i << PAGE_SHIFT)
                state[i:i + len(pages)] = bytes([RESIDENT]) * len(pages)
                done += len(pages)
            if j < n and state[j] == SWAPPED and len(pages) < 64:
                self._poison(region, j)
                state[j] = GONE
                j += 1
            i = j
        return done


# struct seal_state of swapd/layer/seal.py (Sealer.export_state): magic, version, key, next_gen
_SEAL = struct.Struct("<4sI32sQ")
SEAL_RESERVE = 1 << 32  # counters reserved ahead of the sealer in the stored state


def _read_seal(fd: int) -> bytes:
    state = os.pread(fd, _SEAL.size, 0)
    if len(state) != _SEAL.size:
        raise HandoverFormatError(f"seal state: {len(state)} bytes, need {_SEAL.size}")
    return state


def _sealer_of(layer: Any) -> Any:
    """The disk tier's sealer of ``layer``, or None (the layer keeps its tiers private)."""
    for t in getattr(layer, "_tiers", ()):
        sealer = getattr(t, "sealer", None)
        if sealer is not None:
            return sealer
    return None


def _adoption_probe(layer: Any, fds: dict[str, int], sealer: Any,
                    tier_options: Any = None) -> str | None:
    """Whether a successor could adopt ``layer``'s state regions: adopt duplicates of them
    (the layer is new and empty, so this is cheap) and let go.  None, or why not."""
    from swapd.layer.core import SwapLayer
    from swapd.state import StateFormatError

    dups = {name: os.dup(fd) for name, fd in fds.items()}
    try:
        probe = SwapLayer.adopt(dups, seal_state=sealer.export_state() if sealer else None,
                                tier_options=tier_options)
    except (StateFormatError, SwapdError, KeyError) as exc:
        for fd in dups.values():
            with contextlib.suppress(OSError):
                os.close(fd)
        return str(exc)
    probe.close(keep_state=True)
    return None
