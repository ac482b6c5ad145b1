"""Policy-only simulation: a cache of N pages and a victim-selection policy.

Design.  The trace's page ids are fed, in chunks, to the policy's own
``replay`` (the :class:`swapd.policy.Policy` cache-simulator step: a hit is an
access, a miss evicts down to ``capacity`` and inserts), so the loop that runs
is the policy's and this module adds no per-request work.  Every object has
the size of one page (libCacheSim's ``--ignore-obj-size``), so results are
comparable with libCacheSim run on the same trace with a cache of N objects and
the same policy variant (each policy module documents its variant).

A time series of misses per window of ``window`` requests is kept when asked
(for plots of the miss ratio over time).  The policy's ``_check()`` runs at the
end of every run (O(capacity)).

Not thread-safe; a run owns its policy.  Prior art: libCacheSim's
``cachesim`` (same request loop, same miss definition).
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field
from itertools import islice
from typing import Any

from swapd.plugins import make_policy

_CHUNK = 1 << 16


@dataclass(frozen=True)
class PolicyResult:
    """Outcome of a policy-only run.

    ``misses`` counts cold misses too.  ``series``: (requests so far, misses so
    far) at the end of each window, when a window was asked for.
    """

    mode: str
    policy: str
    params: tuple[tuple[str, Any], ...]
    capacity: int
    accesses: int
    misses: int
    series: tuple[tuple[int, int], ...] = field(default=())

    @property
    def hits(self) -> int:
        return self.accesses - self.misses

    @property
    def miss_ratio(self) -> float:
        return self.misses / self.accesses if self.accesses else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode, "policy": self.policy, "params": dict(self.params),
            "capacity": self.capacity, "accesses": self.accesses, "hits": self.hits,
            "misses": self.misses, "miss_ratio": self.miss_ratio,
            "series": [list(s) for s in self.series],
        }


def run_policy_only(keys: Iterable[Hashable], policy: str, capacity: int,
                    params: dict[str, Any] | None = None, window: int = 0) -> PolicyResult:
    """Replay ``keys`` through policy ``policy`` with a cache of ``capacity`` pages.

    O(n) policy steps.  ``window`` > 0 records a (requests, misses) point every
    ``window`` requests.  Raises PluginError/ConfigError for a bad policy or
    parameters, InvariantError if the policy's final ``_check`` fails.
    """
    prm = dict(params or {})
    pol = make_policy(policy, capacity, **prm)
    replay = pol.replay
    accesses = misses = 0
    series: list[tuple[int, int]] = []
    if window <= 0 and isinstance(keys, list | tuple):  # in memory: one call, no copies
        misses = replay(keys)
        pol._check()
        return PolicyResult("policy-only", policy, tuple(sorted(prm.items())), capacity,
                            len(keys), misses)
    it = iter(keys)
    step = window if window > 0 else _CHUNK
    while True:
        chunk = list(islice(it, step))
        if not chunk:
            break
        misses += replay(chunk)
        accesses += len(chunk)
        if window > 0:
            series.append((accesses, misses))
    pol._check()
    return PolicyResult("policy-only", policy, tuple(sorted(prm.items())), capacity, accesses,
                        misses, tuple(series))
