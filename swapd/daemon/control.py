"""Runtime control: the ``ctl`` request (``swapd ctl``) and SIGHUP reload.

Design.  A running daemon has *knobs*: every configuration key marked live in
``swapd/config.py`` (``reclaim.policy``, ``layer.pool_limit_bytes``,
``layer.accept_threshold_percent``, ``limits.global_resident_bytes`` ...), plus
``shrinker`` (proactive writeback on/off); and per client ``resident_bytes``
(its resident limit), ``zswap_max_bytes`` (a cap on its compressed bytes, as
cgroup v2's ``memory.zswap.max``), ``writeback`` (may its pages go to the disk
tier, as ``memory.zswap.writeback``) and ``record`` (a trace of its own faults
and evictions).  A change is validated exactly as the file's value would be
(:func:`swapd.config.convert` and the cross-checks), applied to the live
object that uses it (the reclaimer, the pager, the layer, the admission), and
recorded in ``Daemon.cfg`` with the source ``swapd ctl``; the reply carries the
value now in effect, read back from that object.

A reload (SIGHUP, ``systemctl reload``) reads the file again, keeps the command
line's overrides, runs the start-up checks, and then either applies every
changed live key or -- if any key that cannot change live differs -- refuses
the whole reload, naming those keys; nothing is half applied.  Values set with
``swapd ctl`` are replaced by the file's on reload (the file is the truth).

Authorisation: ``ctl`` is refused (``permission``) unless the peer is root or
the daemon's own uid; ``stats`` shows the knobs to every allowed client.

Runs on the loop thread only (requests and the reload both do).  Lock order as
the daemon's: ``Session.lock`` -> ``Daemon.lock`` -> layer locks.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from swapd import config as C
from swapd.daemon.errors import Refused
from swapd.daemon.session import RESIDENT, Session, page_key
from swapd.errors import ConfigError, SwapdError
from swapd.pages import PAGE_SIZE

if TYPE_CHECKING:
    from swapd.daemon.server import Daemon

log = logging.getLogger("swapd.daemon.control")

__all__ = ["CLIENT_KNOBS", "authorised", "client_knobs", "global_knobs", "reload",
           "set_client", "set_global"]

SOURCE = "swapd ctl"
CLIENT_KNOBS = ("resident_bytes", "zswap_max_bytes", "writeback", "record")


def authorised(session: Session) -> bool:
    """Whether the session's peer may change knobs: root or the daemon's own uid."""
    return session.uid == 0 or session.uid == os.geteuid()


def live_keys() -> list[str]:
    """The global knob names: every live configuration key, then ``shrinker``."""
    return [f"{k.table}.{k.name}" for k in C.all_keys() if k.live] + ["shrinker"]


def global_knobs(daemon: Daemon) -> dict[str, Any]:
    """Every global knob's value in effect, read from the objects that use it."""
    return {name: _get(daemon, name) for name in live_keys()}


def _get(daemon: Daemon, name: str) -> Any:
    if name == "shrinker":
        return daemon.shrinker_enabled
    table, key = name.split(".", 1)
    r, p, layer = daemon.reclaimer, daemon.pager, daemon.layer
    if table == "reclaim" and r is not None:
        live = {"batch_pages": r.batch, "low_watermark_pages": r.low_wm,
                "hard_slack_pages": r.hard_slack, "refbit_slice_pages": r.refbit_slice}
        if key in live:
            return live[key]
    if table == "pager" and p is not None and key in ("readahead_min", "readahead_max"):
        return p.ra_min if key == "readahead_min" else p.ra_max
    if table == "limits" and key == "global_resident_bytes" and r is not None:
        return r.global_limit * PAGE_SIZE
    if table == "layer" and key == "demotion_policy" and hasattr(layer, "demotion_policy"):
        return layer.demotion_policy  # type: ignore[union-attr]
    if table == "layer" and layer is not None and hasattr(layer, "config"):
        return getattr(layer.config, key)
    value = getattr(getattr(daemon.cfg, table), key)
    return list(value) if isinstance(value, tuple) else value


def _key(name: str) -> C.Key:
    if name == "shrinker":
        return C.Key("", "shrinker", "bool", True, "proactive writeback", True, False, {})
    table, _, key = name.partition(".")
    if not key:
        raise Refused("bad_request", f"unknown knob {name!r} (knobs: {', '.join(live_keys())})")
    try:
        k = C.key(table, key)
    except ConfigError as exc:
        raise Refused("bad_request", f"unknown knob {name!r}: {exc}") from exc
    if not k.live:
        raise Refused("bad_request", f"{k.where} cannot change in a running daemon (set it in "
                      "the configuration file and restart)")
    return k


def set_global(daemon: Daemon, name: str, value: Any, *, source: str = SOURCE) -> Any:
    """Change global knob ``name``; returns the value now in effect.  Raises Refused."""
    k = _key(name)
    try:
        v = C.convert(k, value)
    except ConfigError as exc:
        raise Refused("bad_request", str(exc)) from exc
    if name == "shrinker":
        _set_shrinker(daemon, bool(v))
        return _get(daemon, name)
    try:
        new = C.replace(daemon.cfg, k.table, source=source, **{k.name: v})
    except ConfigError as exc:
        raise Refused("bad_request", str(exc)) from exc
    _apply(daemon, k, new)
    daemon.cfg = new
    daemon.admission.cfg = new
    log.info("%s = %r (%s)", name, _get(daemon, name), source)
    return _get(daemon, name)


def _apply(daemon: Daemon, k: C.Key, new: C.Config) -> None:
    """Make ``new``'s value of ``k`` take effect in the live objects."""
    r, p, layer = daemon.reclaimer, daemon.pager, daemon.layer
    v = getattr(getattr(new, k.table), k.name)
    if k.table == "reclaim":
        if k.name == "policy":
            _switch_policy(daemon, v)
        elif r is not None:
            attr = {"batch_pages": "batch", "low_watermark_pages": "low_wm",
                    "hard_slack_pages": "hard_slack", "refbit_slice_pages": "refbit_slice"}
            setattr(r, attr[k.name], v)
            if k.name == "refbit_slice_pages":
                r.refbit_ok = v > 0
            r.kick()
    elif k.table == "pager" and p is not None:
        p.ra_min, p.ra_max = new.pager.readahead_min, new.pager.readahead_max
    elif k.table == "limits" and k.name == "global_resident_bytes" and r is not None:
        cap = v // PAGE_SIZE
        r.global_limit = cap
        for s in daemon.live_sessions():
            with s.lock:
                s.limit_pages = min(s.limit_pages, cap)
        r.kick()
    elif k.table == "daemon" and k.name in ("allowed_users", "allowed_groups"):
        from swapd.daemon.admission import resolve_groups, resolve_users

        daemon.admission.allowed_uids = resolve_users(new.daemon.allowed_users)
        daemon.admission.allowed_gids = resolve_groups(new.daemon.allowed_groups)
    elif k.table == "layer" and k.name == "demotion_policy" and layer is not None:
        if not hasattr(layer, "set_demotion_policy"):
            raise Refused("unavailable", f"{k.where}: this layer cannot switch policies")
        try:
            layer.set_demotion_policy(v)
        except SwapdError as exc:
            raise Refused("bad_request", f"{k.where}: {exc}") from exc
    elif k.table == "layer" and layer is not None:
        if not hasattr(layer, "reconfigure"):
            raise Refused("unavailable", f"{k.where}: this layer cannot be reconfigured")
        try:
            layer.reconfigure(new.layer.layer_config())
        except ConfigError as exc:
            raise Refused("bad_request", f"{k.where}: {exc}") from exc
        if r is not None:
            r.kick()


def _switch_policy(daemon: Daemon, name: str) -> None:
    """Give every session a new reclaim policy, seeded with its resident pages.  O(pages)."""
    from swapd.plugins import make_policy

    try:
        make_policy(name)
    except SwapdError as exc:
        raise Refused("bad_request", f"[reclaim] policy: {exc}") from exc
    for s in daemon.live_sessions():
        policy = make_policy(name)
        with s.lock:
            for region in s.regions.values():
                state = region.state
                rid = region.id
                for first, n in region.runs_in_use():  # the other pages are HOLE
                    raw = bytes(state[first:first + n])
                    i = raw.find(RESIDENT)
                    while i >= 0:
                        policy.insert(page_key(rid, first + i))
                        i = raw.find(RESIDENT, i + 1)
            s.policy = policy


def _set_shrinker(daemon: Daemon, on: bool) -> None:
    daemon.shrinker_enabled = on
    if daemon.cfg.reclaim.inline or daemon.layer is None:
        return  # the loop calls shrink_step only while shrinker_enabled
    if not on and daemon.shrinker is not None:
        daemon.shrinker.stop()
        daemon.shrinker = None
    elif on and daemon.shrinker is None:
        from swapd.layer import ShrinkerThread

        daemon.shrinker = ShrinkerThread(
            daemon.layer, interval=daemon.cfg.reclaim.interval_ms / 1000.0).start()
    log.info("shrinker = %s (%s)", "on" if on else "off", SOURCE)


# --- per client ----------------------------------------------------------------------------


def client_knobs(daemon: Daemon, s: Session) -> dict[str, Any]:
    """The per-client knobs in effect for ``s`` (caller may hold ``s.lock``)."""
    layer = daemon.layer
    cap = wb = None
    if layer is not None and hasattr(layer, "client_limits"):
        cap, wb = layer.client_limits(s.id)
    return {"resident_bytes": s.limit_pages * PAGE_SIZE, "zswap_max_bytes": cap,
            "writeback": True if wb is None else wb,
            "record": s.recorder.path if s.recorder is not None else None}


def set_client(daemon: Daemon, s: Session, name: str, value: Any) -> Any:
    """Change knob ``name`` of session ``s``; returns the value now in effect."""
    layer = daemon.layer
    if name == "resident_bytes":
        want = _size(name, value)
        eff = min(want, daemon.cfg.limits.global_resident_bytes) // PAGE_SIZE
        with s.lock:
            s.limit_pages = eff
        if daemon.reclaimer is not None:
            daemon.reclaimer.kick()
    elif name in ("zswap_max_bytes", "writeback"):
        if layer is None or not hasattr(layer, "set_client_limits"):
            raise Refused("unavailable", f"{name}: this layer has no per-client limits")
        if name == "zswap_max_bytes":
            cap = None if value in (None, "max") else _size(name, value)
            layer.set_client_limits(s.id, zswap_max_bytes=cap)
        else:
            if not isinstance(value, bool):
                raise Refused("bad_request", f"writeback: expected true or false, got {value!r}")
            layer.set_client_limits(s.id, writeback=value)
    elif name == "record":
        _record(daemon, s, value)
    else:
        raise Refused("bad_request", f"unknown client knob {name!r} (client knobs: "
                      f"{', '.join(CLIENT_KNOBS)})")
    with s.lock:
        eff_value = client_knobs(daemon, s)[name]
    log.info("client %d (pid %d): %s = %r (%s)", s.id, s.pid, name, eff_value, SOURCE)
    return eff_value


def _size(name: str, value: Any) -> int:
    try:
        v = C.parse_size(value, name)
    except ConfigError as exc:
        raise Refused("bad_request", str(exc)) from exc
    if v % PAGE_SIZE:
        raise Refused("bad_request", f"{name}: must be a multiple of {PAGE_SIZE}, got {v}")
    return v


class _ClientRecorder:
    """A per-client trace: the ``--record`` format (swapd.daemon.recorder), its own file."""

    def __init__(self, path: Path) -> None:
        from swapd.daemon.recorder import Recorder

        self.path = str(path)
        self.rec = Recorder(self.path)

    def record(self, page: int, op: str) -> None:
        self.rec.record(page, op)

    def close(self) -> None:
        self.rec.close()


def _record(daemon: Daemon, s: Session, value: Any) -> None:
    """Start (True, or a file name in the state directory) or stop (False) ``s``'s trace."""
    if value is False or value is None:
        if s.recorder is not None:
            s.recorder.close()
            s.recorder = None
    else:
        if isinstance(value, str) and value:
            if "/" in value or value.startswith("."):
                raise Refused("bad_request", f"record: a file name in the state directory, "
                              f"not a path: {value!r}")
            name = value
        elif value is True:
            name = f"trace-client{s.id}-pid{s.pid}.csv"
        else:
            raise Refused("bad_request", f"record: expected true, false or a file name, "
                          f"got {value!r}")
        if s.recorder is not None:
            s.recorder.close()
        try:
            s.recorder = _ClientRecorder(daemon.state_path / name)
        except OSError as exc:
            raise Refused("unavailable", f"record: cannot create {daemon.state_path / name}: "
                          f"{exc.strerror}") from exc
    _route_records(daemon)


def _route_records(daemon: Daemon) -> None:
    """Point the pager and the reclaimer at the recorders in use (None when none is)."""
    recording = [s for s in daemon.live_sessions() if s.recorder is not None]
    glob = daemon.recorder
    if not recording:
        fn = glob.record if glob is not None else None
    else:
        def fn(page: int, op: str) -> None:
            if glob is not None:
                glob.record(page, op)
            rid = page >> 32
            for s in recording:
                if rid in s.regions and s.recorder is not None:
                    s.recorder.record(page, op)
                    return

    if daemon.pager is not None:
        daemon.pager.recorder = fn
    if daemon.reclaimer is not None:
        daemon.reclaimer.recorder = fn


def session_ended(daemon: Daemon, s: Session) -> None:
    """Close ``s``'s trace, if any, and stop routing to it."""
    if s.recorder is not None:
        s.recorder.close()
        s.recorder = None
        _route_records(daemon)


# --- reload ----------------------------------------------------------------------------------


def reload(daemon: Daemon) -> bool:
    """Read the configuration file again and apply it (see the module doc).  True if applied."""
    old = daemon.cfg
    try:
        new = C.load_config(old.path or None, default_file=not old.path)
        for src_key, src in old.sources.items():  # the command line's overrides stay
            if src.startswith("--"):
                table, key = src_key.split(".", 1)
                new = C.replace(new, table, source=src, **{key: getattr(getattr(old, table),
                                                                         key)})
        for warning in C.check_startup(new, state_path=daemon.state_path):
            log.warning("reload: %s", warning)
    except SwapdError as exc:
        return _refuse(daemon, str(exc))
    changes = C.differences(old, new)
    fixed = [(t, k) for t, k, _, _ in changes
             if t.startswith(("backend.", "tier.")) or not C.key(t, k).live]
    if fixed:
        names = ", ".join(f"[{t}] {k}" if k != "*" else f"[{t}]" for t, k in fixed)
        return _refuse(daemon, f"{names} cannot change in a running daemon (restart to apply); "
                       "nothing was changed")
    applied = []
    try:
        for t, k, a, b in changes:
            set_global(daemon, f"{t}.{k}", b, source=new.source(t, k))
            applied.append(f"[{t}] {k}: {a!r} -> {b!r}")
    except Refused as exc:
        return _refuse(daemon, exc.message + (f" (applied before it: {'; '.join(applied)})"
                                              if applied else ""))
    daemon.cfg = new
    daemon.admission.cfg = new
    what = "; ".join(applied) if applied else "no change"
    log.info("reloaded %s: %s", new.path or "built-in defaults", what)
    daemon.last_reload = {"ok": True, "message": what}
    daemon.notify(f"STATUS=reloaded: {what}"[:200])
    return True


def _refuse(daemon: Daemon, message: str) -> bool:
    log.error("reload refused: %s", message)
    daemon.last_reload = {"ok": False, "message": message}
    daemon.notify(f"STATUS=reload refused: {message}"[:200])
    return False
