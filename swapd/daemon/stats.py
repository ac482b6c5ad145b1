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
from swapd.config import PAGE_SIZE
from swapd.daemon.session import (
    EVICTING,
    GONE,
    HOLE,
    RESIDENT,
    STATE_NAMES,
    SWAPPED,
    LatencySummary,
    Session,
)
from swapd.errors import EntryNotFoundError

if TYPE_CHECKING:
    from swapd.daemon.server import Daemon

__all__ = ["all_stats", "as_dict", "session_stats"]


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


def session_stats(daemon: Daemon, s: Session) -> dict[str, Any]:
    """One client's statistics.  O(pages of its regions)."""
    assert daemon.layer is not None
    with s.lock:
        states = dict.fromkeys(STATE_NAMES, 0)
        for r in s.regions.values():
            for code in (HOLE, RESIDENT, EVICTING, SWAPPED, GONE):
                states[STATE_NAMES[code]] += r.count(code)
        out: dict[str, Any] = {
            "session": s.id, "pid": s.pid, "uid": s.uid, "name": s.name,
            "regions": len(s.regions), "managed_pages": s.managed_pages,
            "resident_pages": s.resident, "limit_pages": s.limit_pages,
            "pages": states, "counters": s.counters.as_dict(),
            "latency": LatencySummary.of(list(s.latency_ns)).as_dict(),
            "poisoned": {str(r.id): runs_of(r.poisoned) for r in s.regions.values()
                         if r.poisoned},
        }
    try:
        out["layer"] = as_dict(daemon.layer.stats(s.id))
    except EntryNotFoundError:  # no region stored anything yet, or already freed
        out["layer"] = {}
    return out


def all_stats(daemon: Daemon) -> dict[str, Any]:
    """The daemon's, the totals' and every live client's statistics."""
    assert daemon.layer is not None
    sessions = [s for s in list(daemon.sessions.values()) if not s.dead]
    clients = [session_stats(daemon, s) for s in sessions]
    counters: dict[str, int] = dict(daemon.departed)
    for c in clients:
        for k, v in c["counters"].items():
            counters[k] = counters.get(k, 0) + v
    samples = list(daemon.pager.latency_ns) if daemon.pager is not None else []
    return {
        "daemon": {"pid": os.getpid(), "uptime_s": round(time.monotonic() - daemon.started, 3),
                   "socket": str(daemon.socket_path), "clients": len(clients),
                   "clients_total": daemon.clients_total,
                   "global_limit_pages": daemon.cfg.limits.global_resident_bytes // PAGE_SIZE,
                   "reclaimer_errors": daemon.reclaimer.errors if daemon.reclaimer else 0,
                   "impl": swapd_impl.describe()},
        "total": {"resident_pages": sum(c["resident_pages"] for c in clients),
                  "managed_pages": sum(c["managed_pages"] for c in clients),
                  "counters": counters,
                  "latency": LatencySummary.of(samples).as_dict(),
                  "layer": as_dict(daemon.layer.stats()),
                  "tiers": daemon.layer.tier_stats()},
        "clients": clients,
    }
