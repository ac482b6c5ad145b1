"""The resident-set sizer: how many pages to reclaim, and when (the other half of a policy).

Design.  A reclaim policy (:mod:`swapd.policy`) chooses *which* pages go; the
sizer decides *how many* and *when*.  One sizer instance is run by the daemon
(the pager charges every placement through it, the reclaimer asks it for
background work) and by ``swapd sim`` full mode, so that the simulator's
evictions follow the daemon's decisions.  It keeps no per-client state of its
own: the caller passes an :class:`Account` (the daemon's ``Session``, the
simulator's account), whose ``reclaiming`` flag holds the hysteresis.  It makes
no system call and reads time only through the injected clock.

The limits, in pages, for a client with resident limit ``L`` (the memcg's
``memory.max``):

* **charge** (``mm/memcontrol.c``: ``try_charge_memcg`` ->
  ``try_to_free_mem_cgroup_pages``): a placement of ``want`` pages (a fault and
  its readahead run, ``willneed``) is charged before the pages are placed.  If
  it fits under ``L + hard_slack`` it is granted whole.  If only part of it
  fits, and at least ``minimum`` pages (the faulting page) fit, the run is
  shrunk to what fits.  Otherwise the faulting task pays for reclaim first:
  ``max(batch, shortfall)`` pages, as the kernel reclaims at least
  ``SWAP_CLUSTER_MAX`` pages for a charge that failed -- direct reclaim.  So
  the resident set never exceeds ``L + hard_slack`` (``hard_slack`` is 0 by
  default: a hard limit).
* **background** (``mm/vmscan.c``'s kswapd watermarks, per client here): once
  the headroom ``L - resident`` falls below ``low_watermark``, the client is
  *reclaiming* and background reclaim evicts one batch at a time until the
  headroom is ``low_watermark + batch`` (hysteresis: it does not restart for
  every page).  Background work normally runs when the event loop is idle; if
  the loop has not been idle for ``max_defer_s`` (a fault storm), it runs
  anyway, one batch per loop iteration, so headroom is restored even then.
* **global**: the sum of resident sets above ``global_limit`` is reclaimed in
  the background from the largest client (``shrink_node``'s proportional scan,
  simplified); the per-client charge does not wait for it.

Invariants: ``0 <= allowed <= want``; ``reclaim > 0`` only when fewer than
``minimum`` pages fit; after the caller reclaims ``reclaim`` pages the granted
``allowed`` pages fit under ``L + hard_slack`` (under ``minimum`` when the limit
is smaller than that: a limit of 0 still lets a fault place its own page).  Lock order: none (pure);
callers hold whatever protects the account they pass.

Prior art: ``mm/memcontrol.c`` (``try_charge_memcg``, ``memory.high``),
``mm/vmscan.c`` (watermarks, ``SWAP_CLUSTER_MAX``), memtierd and TMO's split of
"which" from "how many".
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from swapd.errors import ConfigError, InvariantError

__all__ = ["Account", "Charge", "Sizer", "SizerConfig", "WatermarkSizer", "make_sizer"]


class Account(Protocol):
    """What the sizer reads (and, for the hysteresis, writes) of one client."""

    resident: int  # pages resident (placed and not yet evicted)
    limit_pages: int  # the client's resident limit
    reclaiming: bool  # hysteresis: background reclaim started and not finished


@dataclass(frozen=True)
class Charge:
    """The answer to a charge: evict ``reclaim`` pages first, then place ``allowed``."""

    reclaim: int
    allowed: int


@dataclass(frozen=True)
class SizerConfig:
    """The sizer's parameters (the daemon's ``[reclaim]`` table)."""

    batch_pages: int = 64
    low_watermark_pages: int = 64
    hard_slack_pages: int = 0
    global_limit_pages: int = 1 << 40
    max_defer_s: float = 0.01

    def __post_init__(self) -> None:
        if self.batch_pages <= 0:
            raise ConfigError(f"batch_pages must be positive, got {self.batch_pages}")
        for name in ("low_watermark_pages", "hard_slack_pages", "global_limit_pages"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.max_defer_s < 0:
            raise ConfigError(f"max_defer_s must be >= 0, got {self.max_defer_s}")


class Sizer(ABC):
    """The sizing contract (see the module docstring).  Not thread-safe: the caller
    serializes calls for one account (the daemon holds the account's Session.lock)."""

    name = "sizer"

    def __init__(self, config: SizerConfig, clock: Callable[[], float]) -> None:
        self.config = config
        self.batch = config.batch_pages
        self.clock = clock

    def reconfigure(self, **changes: object) -> None:
        """Change parameters (live reload); raises ConfigError for a bad value."""
        self.config = dataclasses.replace(self.config, **changes)  # type: ignore[arg-type]
        self.batch = self.config.batch_pages

    @abstractmethod
    def charge(self, acct: Account, want: int, minimum: int = 1) -> Charge:
        """Charge ``want`` pages, of which ``minimum`` are needed (0 for a prefetch).  O(1)."""

    @abstractmethod
    def background(self, acct: Account) -> int:
        """Pages to evict from ``acct`` now in the background (one batch at most); updates
        the hysteresis flag.  0 when nothing is due.  O(1)."""

    @abstractmethod
    def global_excess(self, total_resident: int) -> int:
        """Pages to evict (one batch at most) because the clients together are over the
        global limit.  O(1)."""

    @abstractmethod
    def background_due(self, idle: bool) -> bool:
        """Whether background work may run now: the loop is idle, or it has not been idle
        for too long.  O(1)."""


class WatermarkSizer(Sizer):
    """Hard limit with direct reclaim, low watermark with one batch of hysteresis."""

    name = "watermark"

    def __init__(self, config: SizerConfig | None = None,
                 clock: Callable[[], float] = lambda: 0.0) -> None:
        super().__init__(config or SizerConfig(), clock)
        self._last_idle = clock()  # caller's clock: when the loop was last idle

    def charge(self, acct: Account, want: int, minimum: int = 1) -> Charge:
        """See :meth:`Sizer.charge`.  O(1)."""
        if want <= 0:
            return Charge(0, 0)
        minimum = min(minimum, want)
        room = acct.limit_pages + self.config.hard_slack_pages - acct.resident
        if room >= want:
            return Charge(0, want)
        if room >= minimum:
            return Charge(0, max(room, 0))
        if acct.limit_pages + self.config.hard_slack_pages < minimum:
            # a limit below one page (0): evict everything, then place the faulting page
            # anyway -- a client is never left blocked -- and let it go at the next charge
            return Charge(acct.resident, minimum)
        shortfall = minimum - room
        reclaim = max(self.batch, shortfall)
        # reclaim never goes past the pages resident (the caller may get fewer)
        reclaim = min(reclaim, acct.resident)
        return Charge(reclaim, min(want, room + reclaim))

    def background(self, acct: Account) -> int:
        """See :meth:`Sizer.background`.  O(1)."""
        cfg = self.config
        headroom = acct.limit_pages - acct.resident
        if headroom < cfg.low_watermark_pages:
            acct.reclaiming = True
        target = cfg.low_watermark_pages + self.batch  # headroom to restore
        if acct.reclaiming and headroom >= target:
            acct.reclaiming = False
        if not acct.reclaiming or acct.resident <= 0:
            return 0
        return min(self.batch, target - headroom, acct.resident)

    def global_excess(self, total_resident: int) -> int:
        """See :meth:`Sizer.global_excess`.  O(1)."""
        over = total_resident - self.config.global_limit_pages
        return min(self.batch, over) if over > 0 else 0

    def background_due(self, idle: bool) -> bool:
        """See :meth:`Sizer.background_due`.  O(1)."""
        now = self.clock()
        if idle:
            self._last_idle = now
            return True
        return now - self._last_idle >= self.config.max_defer_s

    def _check_charge(self, acct: Account, want: int, minimum: int, c: Charge) -> None:
        """Verify the invariants of one answer (tests).  O(1)."""
        if not 0 <= c.allowed <= max(want, 0):
            raise InvariantError(f"charge granted {c.allowed} of {want} pages")
        if c.reclaim and acct.limit_pages + self.config.hard_slack_pages - acct.resident \
                >= min(minimum, want):
            raise InvariantError("charge asks for reclaim although the minimum fits")
        if acct.resident - c.reclaim + c.allowed > \
                max(acct.limit_pages + self.config.hard_slack_pages, minimum) and c.allowed:
            raise InvariantError(f"charge grants {c.allowed} pages over the limit")


SIZERS: dict[str, type[Sizer]] = {"watermark": WatermarkSizer}


def make_sizer(name: str, config: SizerConfig, clock: Callable[[], float]) -> Sizer:
    """The sizer called ``name`` (``watermark``).  Raises ConfigError for an unknown name."""
    cls = SIZERS.get(name)
    if cls is None:
        raise ConfigError(f"unknown sizer {name!r} (known: {', '.join(sorted(SIZERS))})")
    return cls(config, clock)  # type: ignore[call-arg]
