"""Statistics assembly: the replies of the ``stats`` request (docs/protocol.md).

``session_stats`` is one client's view (its pages by state, the pager's
counters, fault service-time percentiles and the layer's kernel-named counters
for that client); ``all_stats`` adds the daemon's own figures and the totals,
including the counters of sessions that already ended.  Both read under the
session's lock and the layer's; nothing here is on the fault path.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import TYPE_CHECKING, Any

import swapd.impl as swapd_impl
from swapd import protocol
from swapd.config import PAGE_SIZE
from swapd.daemon.session import (
    STATE_NAMES,
    LatencySummary,
    Session,
)
from swapd.errors import EntryNotFoundError

if TYPE_CHECKING:
    from swapd.daemon.server import Daemon

__all__ = ["all_stats", "as_dict", "daemon_info", "histogram", "session_stats"]


def as_dict(obj: Any) -> dict[str, Any]:
    """The scalar fields of a stats dataclass (or a dict, or an object's vars)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {k: v for k, v in dataclasses.asdict(obj).items()
                if isinstance(v, int | float | str | bool) or v is None}
    if isinstance(obj, dict):
        return dict(obj)
    return dict(vars(obj))


def runs_of(pages: set[int]) -> list[list[int]]:
    """``[first, count]`` runs of a set of page indices, ascending.  O(n log n)."""
    runs: list[list[int]] = []
    for i in sorted(pages):
        if runs and runs[-1][0] + runs[-1][1] == i:
            runs[-1][1] += 1
        else:
            runs.append([i, 1])
    return runs


# Per client these LayerStats names would mean something else than in total (the client's
# compressed bytes and disk pages, not the pool's pages and the disk's slots): a client's view
# leaves them out, and its share of the pool is compr_data_size (docs/protocol.md, stats).
_TOTAL_ONLY = ("pool_total_size", "mem_used_total", "disk_slots_used")
# A stats reply stays below the frame limit: clients beyond this budget go to the next page.
_PAGE_BUDGET = protocol.MAX_FRAME - 16 * 1024


def histogram(s: Session) -> dict[str, Any]:
    """The session's fault service-time histogram (swapd/metrics.py), copied.  O(64)."""
    return {"counts": list(s.fault_hist), "sum_ns": s.fault_ns}


_NO_LATENCY = LatencySummary(0, 0.0, 0.0, 0.0, 0.0).as_dict()


def session_stats(daemon: Daemon, s: Session, *, latency: bool = True) -> dict[str, Any]:
    """One client's statistics.  O(pages of its regions + samples log samples).

    ``latency=False`` leaves the percentiles at zero (no sort of the kept samples; the
    exporter reads the histogram instead).
    """
    assert daemon.layer is not None
    with s.lock:
        states = dict.fromkeys(STATE_NAMES, 0)
        for r in s.regions.values():
            for code, n in enumerate(r.state_counts()):
                states[STATE_NAMES[code]] += n
        out: dict[str, Any] = {
            "session": s.id, "pid": s.pid, "uid": s.uid, "name": s.name,
            "regions": len(s.regions), "managed_pages": s.managed_pages,
            "resident_pages": s.resident, "limit_pages": s.limit_pages,
            "pages": states, "counters": s.counters.as_dict(),
            "latency": (LatencySummary.of(list(s.latency_ns)).as_dict() if latency
                        else dict(_NO_LATENCY)),
            "poisoned": {str(r.id): runs_of(r.poisoned) for r in s.regions.values()
                         if r.poisoned},
            "fault_histogram": histogram(s),
            "knobs": client_knobs(daemon, s),
        }
    try:
        layer = as_dict(daemon.layer.stats(s.id))
    except EntryNotFoundError:  # no region stored anything yet, or already freed
        layer = {}
    for k in _TOTAL_ONLY:
        layer.pop(k, None)
    out["layer"] = layer
    return out


def client_knobs(daemon: Daemon, s: Session) -> dict[str, Any]:
    """The per-client runtime knobs of ``swapd ctl`` in effect for ``s``."""
    from swapd.daemon.control import client_knobs as knobs

    return knobs(daemon, s)


def daemon_info(daemon: Daemon) -> dict[str, Any]:
    """Version, tiers and policies in effect (``swapd_info`` of the exporter)."""
    from swapd import __version__

    cfg = daemon.cfg
    return {"version": __version__, "backend": cfg.layer.backend,
            "compressor": cfg.layer.compressor, "reclaim_policy": cfg.reclaim.policy,
            "demotion_policy": cfg.layer.demotion_policy,
            "disk": "on" if cfg.layer.disk else "off"}


def all_stats(daemon: Daemon, *, exclude: Session | None = None,
              after: int = 0, latency: bool = True,
              uid: int | None = None) -> dict[str, Any]:
    """The daemon's, the totals' and every live client's statistics.

    ``uid``: only that user's clients, and totals over them alone (no layer-wide or tier
    counters, no ended sessions): what a user who is neither root nor the daemon's uid may
    see (docs/protocol.md, "What a client can learn about another").

    ``exclude``: the asking session (a ``swapd stats`` connection is not a client
    to report).  The clients are paged to keep the reply below the frame limit:
    those with a session id above ``after``, as many as fit; ``next_after`` is
    the id to continue from, or None.  The daemon's figures and the totals are in
    the first page only (``after`` = 0).  ``latency=False`` skips the percentiles
    (sorting the daemon's 65536 kept samples costs tens of ms of the loop's time).
    """
    import json

    from swapd.config import as_dict as config_dict

    assert daemon.layer is not None
    sessions = sorted((s for s in list(daemon.sessions.values())
                       if not s.dead and s is not exclude and (uid is None or s.uid == uid)),
                      key=lambda s: s.id)
    out: dict[str, Any] = {}
    budget = _PAGE_BUDGET
    if after == 0:
        counters: dict[str, int] = dict(daemon.departed) if uid is None else {}
        hist = list(daemon.departed_hist) if uid is None else [0] * len(daemon.departed_hist)
        hist_ns = daemon.departed_fault_ns if uid is None else 0
        resident = managed = 0
        for s in sessions:
            with s.lock:
                for k, v in s.counters.as_dict().items():
                    counters[k] = counters.get(k, 0) + v
                resident += s.resident
                managed += s.managed_pages
            for i, n in enumerate(list(s.fault_hist)):
                hist[i] += n
            hist_ns += s.fault_ns
        if not latency:
            samples = []
        elif uid is None:
            samples = list(daemon.pager.latency_ns) if daemon.pager is not None else []
        else:
            samples = [t for s in sessions for t in s.latency_ns]
        cfg = daemon.cfg
        out["daemon"] = {
            "pid": os.getpid(), "uptime_s": round(time.monotonic() - daemon.started, 3),
            "socket": str(daemon.socket_path), "clients": len(sessions),
            "clients_total": daemon.clients_total if uid is None else len(sessions),
            "global_limit_pages": cfg.limits.global_resident_bytes // PAGE_SIZE,
            "reclaimer_errors": daemon.reclaimer.errors if daemon.reclaimer else 0,
            "map_vmflags_unchecked": daemon.ops.vmflags_unchecked if uid is None else 0,
            "impl": swapd_impl.describe(),
            "info": daemon_info(daemon),
            "knobs": daemon_knobs(daemon),
            "last_reload": daemon.last_reload,
            "config_file": cfg.path or None,
            "config": config_dict(cfg),
        }
        out["total"] = {"resident_pages": resident, "managed_pages": managed,
                        "counters": counters,
                        "latency": LatencySummary.of(samples).as_dict(),
                        "fault_histogram": {"counts": hist, "sum_ns": hist_ns},
                        "layer": as_dict(daemon.layer.stats()) if uid is None else {},
                        "tiers": daemon.layer.tier_stats() if uid is None else []}
        budget -= len(json.dumps(out))
    clients: list[dict[str, Any]] = []
    next_after = None
    for s in sessions:
        if s.id <= after:
            continue
        c = session_stats(daemon, s, latency=latency)
        size = len(json.dumps(c)) + 1
        if clients and size > budget:
            next_after = clients[-1]["session"]
            break
        budget -= size
        clients.append(c)
    out["clients"] = clients
    out["next_after"] = next_after
    return out


def daemon_knobs(daemon: Daemon) -> dict[str, Any]:
    """The global runtime knobs of ``swapd ctl`` in effect."""
    from swapd.daemon.control import global_knobs

    return global_knobs(daemon)
