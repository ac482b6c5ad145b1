"""Full-mode simulation: resident set + reclaim policy + the real swap-LRU layer.

Design.  A trace replaces userfaultfd; everything below the fault is the real
code the daemon runs.  The simulator keeps a resident set of ``capacity`` pages
ordered by a reclaim policy (a :class:`swapd.policy.Policy` plugin, the
daemon's ``[reclaim] policy``).  On an access:

* resident page: a hit, ``policy.access``;
* otherwise a fault.  A page never touched before is a first-touch fault (the
  daemon answers it with ``UFFDIO_ZEROPAGE``).  A page stored in the layer is a
  *refault*: ``layer.state`` names the tier (same-filled, compressed, disk) and
  ``layer.load`` returns its bytes, which are checked against the expected
  contents (a wrong byte is an InvariantError: the simulator doubles as an
  end-to-end test of the layer and backends).  If the resident set is full,
  ``policy.victims`` chooses pages to evict and each is handed to
  ``layer.store`` with its current contents.
* a write gives the page new contents (:mod:`swapd.sim.contents`); if a clean
  copy is kept in the layer (``exclusive_loads=False``) it is invalidated.

The resident set never exceeds its target (``_resident_target()``: the
capacity; the shared resident-set sizer of the fault path decides it once it
exists), so a run measures the configuration it was given.  A store the layer
rejects means the tiers below cannot hold the trace: the run stops with
:class:`TierOverflowError`, which names the tier that was full and the size the
trace needs there (at most its distinct pages minus the capacity, the pages
that can be out at once).  With ``allow_overflow`` the rejected page goes to an
unbounded *overflow* store instead (counted per reason and in
``overflow_pages``; a refault from it is costed as a disk read), so resident
pages stay at the capacity and the miss ratio stays that of the policy, while
the report says how many pages did not fit.  (The daemon, which cannot drop a
page, keeps a rejected page resident; a simulator that did the same would
report a larger resident set than asked for, and miss ratios better than
policy-only ones.)  Once a store is refused for lack of room, later victims go
to the overflow store without a store attempt until a load or a compaction
frees room: each attempt would repeat the same futile writeback first (what
made overflowing runs 8x slower).

The layer is built as the daemon builds it from ``[layer]`` of its config
(:class:`swapd.config.LayerSection`): a :class:`CompressedTier` (backend plugin,
compressor, pool limit) followed, unless the disk is disabled, by a
:class:`DiskTier` in a temporary directory; ``SwapLayer`` gets the simulator's
clock (:func:`build_layer` calls ``swapd.layer.build.build_layer`` itself, with
the simulator's clock, pool limit and arena size).  Page
ids are mapped, in first-touch order, to dense indices, which are
split into regions of ``REGION_PAGES`` pages of one client, so traces of 64-bit
hashed ids (libCacheSim) work without a sparse swap table.

Modelled time (the injected clock, in seconds) advances by the cost table's
per-page costs (:mod:`swapd.sim.costs`): a fault costs ``fault_us``, plus
``decompress_us`` from the compressed tier or ``disk_read_us`` from disk; an
eviction costs ``evict_us + compress_us``; a writeback ``decompress_us +
disk_write_us`` (the disk tier stores whole pages), added at the end of the run
(writeback runs beside the workload in the daemon, so it does not move the
clock).  No ``time.*`` is read.  The daemon's periodic work runs on the same
clock: the proactive shrinker every ``shrink_interval_s`` (the daemon's
``ShrinkerThread``: ``shrink_step`` again while it writes back) and, if asked,
``layer.compact()`` every ``compact_interval_s`` (default 1 s: zsmalloc's pool
is compacted by its shrinker under memory pressure, ``zs_shrinker_scan`` in
``mm/zsmalloc.c``, not only when a store stalls; the layer itself compacts when
writeback stops freeing pages, as in the daemon), and once more at the end of
the run, before the pool's density is read.

Daemon mode (``daemon_config``: the daemon's TOML file, or ``"defaults"``).  The
sizing follows the daemon's own decisions instead of a capacity: the resident-set
sizer the daemon runs (:mod:`swapd.policy.sizer`, built from the config's
``[reclaim]``, with ``capacity`` as the client's resident limit) charges every
placement; a fault that does not fit evicts a batch first (direct reclaim), a
readahead run is shrunk to what fits, and background reclaim restores the low
watermark after each fault (the daemon does it when its loop is idle, i.e.
between a client's faults).  Placement follows the pager (``[pager]``):
readahead of the swapped-out run after a sequential fault, its window doubling
from ``readahead_min`` to ``readahead_max``; zero-fill-ahead of never-touched
pages after a sequential first touch; and clean pages -- a read fault keeps the
stored copy (``layer.load(exclusive=False)``), the eviction of a page still
clean reuses it (``layer.store_clean``: no compression), a write frees it.  Page
ids are the daemon's (region id << 32 | index, as ``swapd serve --record``
writes them): the page after ``p`` is ``p + 1``, up to ``region_pages`` per
region (0: unbounded).  Hits do not reach the daemon, so in this mode they are
not told to the policy either; the daemon's software referenced bit (which does
tell it about some) is not modelled -- the documented nondeterminism of a
replay (tests/test_sim_daemon_replay.py).

Invariants (``_check``): every dense page is in exactly one of {never touched,
resident (tracked by the policy), stored in the layer, overflow}; resident
pages never exceed the capacity; the layer's ``state``
agrees; counts add up (hits + faults == accesses).  Lock order: none (one
thread drives the layer; the layer takes its own locks).

Prior art: the daemon's reclaim path (docs/design.md section 6), ``mm/zswap.c``'s
store/load/writeback counters, libCacheSim's request loop.
"""

from __future__ import annotations

import dataclasses
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from swapd.arena import PAGE_SIZE
from swapd.errors import ConfigError, InvariantError, StoreRejected
from swapd.plugins import make_policy
from swapd.sim.contents import PageContents, PageSource
from swapd.sim.costs import DEFAULT_COSTS, CostTable
from swapd.sim.trace import Request

REGION_SHIFT = 16
REGION_PAGES = 1 << REGION_SHIFT
_MASK = REGION_PAGES - 1

RECLAIM_BATCH = 32  # victims tried per fault at most (SWAP_CLUSTER_MAX, mm/vmscan.c)

# where[d] values
_NEW, _RES, _OUT, _OVF = 0, 1, 2, 3

# store rejects for lack of room (not for a page that does not compress)
_ROOM_REASONS = frozenset(("pool_limit_hit", "reject_alloc_fail", "reject_reclaim_fail",
                           "reject_disk_fail"))


class TierOverflowError(ConfigError):
    """A tier of a full-mode run was too small for the trace (see the module docstring)."""


class _Rejected(Exception):
    """A store the layer rejected, on its way to the driver loop (which knows the request)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class FullConfig:
    """Parameters of a full-mode run.

    ``pool_bytes``: the compressed tier's pool limit.  ``disk_bytes``: size of
    the disk tier (0: no disk tier, zswap without a swapfile).
    ``layer_options``: overrides of :class:`swapd.layer.LayerConfig` fields
    (e.g. ``{"reject_to_disk_when_full": True}``).  ``window``: record a time
    series point every ``window`` requests (0: none).  ``check_every``: run
    every ``_check()`` every that many requests (0: only at the end).
    ``shrink_interval_s``: modelled seconds between runs of the layer's proactive
    shrinker (the daemon's ``[reclaim] interval_ms``, 100 ms; each run repeats
    ``shrink_step`` while it writes back, as ``ShrinkerThread`` does; 0: never).
    ``compact_interval_s``: modelled seconds between ``layer.compact()`` calls
    (0: only when the layer stalls).  ``allow_overflow``: pages the tiers reject go
    to an unbounded overflow store instead of stopping the run.  ``backend_options``:
    the backend's own options (``swapd.plugins.make_backend`` checks them).
    ``trace_pages``: the trace's distinct pages, when known, for the size an
    overflow error names.  ``disk_seal``: seal disk-tier pages as the daemon does (off: the
    simulator's scratch file keeps no secret, and modelled time does not include it).
    """

    policy: str = "lru"
    capacity: int = 1024
    params: tuple[tuple[str, Any], ...] = ()
    backend: str = "zsmalloc"
    compressor: str = "lz4"
    pool_bytes: int = 2 << 20
    disk_bytes: int = 64 << 20
    demotion_policy: str = "lru"
    layer_options: tuple[tuple[str, Any], ...] = ()
    seed: int = 0
    window: int = 0
    check_every: int = 0
    verify: bool = True
    shrink_interval_s: float = 0.1
    compact_interval_s: float = 1.0
    allow_overflow: bool = False
    backend_options: tuple[tuple[str, Any], ...] = ()
    trace_pages: int = 0
    disk_seal: bool = False  # the simulator's scratch disk has no secret to keep
    #: the chain of tiers (names of swapd.tiers plugins, fastest first); () = compressed, then
    #: disk when ``disk_bytes`` > 0.  ``tier_options``: ``(name, ((key, value), ...))`` each.
    tiers: tuple[str, ...] = ()
    tier_options: tuple[tuple[str, tuple[tuple[str, Any], ...]], ...] = ()
    daemon_config: str = ""  # daemon mode: a swapd.toml path, or "defaults" (see above)
    region_pages: int = 0  # daemon mode: pages per daemon region (0: unbounded)

    def __post_init__(self) -> None:
        if self.capacity <= 0:
            raise ConfigError(f"capacity must be positive, got {self.capacity}")
        if self.pool_bytes <= 0:
            raise ConfigError(f"pool limit must be positive, got {self.pool_bytes} bytes")
        if self.disk_bytes < 0:
            raise ConfigError(f"disk size must be >= 0, got {self.disk_bytes} bytes")
        if self.shrink_interval_s < 0 or self.compact_interval_s < 0:
            raise ConfigError("shrink and compact intervals must be >= 0")


@dataclass(frozen=True)
class FullResult:
    """Outcome of a full-mode run (all counts are pages; times are modelled)."""

    mode: str
    config: dict[str, Any]
    accesses: int
    hits: int
    misses: int  # faults: first_touch + refaults
    first_touch: int
    refaults: int
    refaults_by_tier: dict[str, int]
    evictions: int  # pages handed to layer.store and accepted
    store_rejects: dict[str, int]
    overflow_pages: int  # rejected pages sent to the overflow store (allow_overflow)
    overflow_max: int  # most pages in the overflow store at once
    writes: int
    max_resident: int
    pages_compacted: int
    shrink_runs: int
    shrink_written: int
    layer: dict[str, Any]  # LayerStats as a dict (kernel counter names)
    modelled_time_s: float
    costs: dict[str, Any]
    series: tuple[dict[str, Any], ...] = field(default=())
    daemon: dict[str, int] = field(default_factory=dict)  # daemon mode: its counters

    @property
    def miss_ratio(self) -> float:
        return self.misses / self.accesses if self.accesses else 0.0

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["miss_ratio"] = self.miss_ratio
        lay = self.layer
        orig = lay.get("orig_data_size", 0) - lay.get("same_filled_pages", 0) * PAGE_SIZE
        compr = lay.get("compr_data_size", 0)
        used = lay.get("mem_used_total", 0)
        in_pool = lay.get("stored_pages", 0) - lay.get("same_filled_pages", 0)
        d["compression_ratio"] = orig / compr if compr else None
        # pages held per page of pool memory (same-filled entries use none and are left out)
        d["pool_density"] = in_pool * PAGE_SIZE / used if used else None
        # the same as bytes of pool memory per page stored in it (lower is denser)
        d["pool_bytes_per_page"] = used / in_pool if in_pool else None
        d["pool_pages_stored"] = in_pool
        d["lru_inversions"] = lay.get("lru_inversions", 0)
        d["writebacks"] = lay.get("written_back_pages", 0)
        d["modelled_us_per_access"] = (self.modelled_time_s * 1e6 / self.accesses
                                       if self.accesses else 0.0)
        d["series"] = list(self.series)
        return d


def build_layer(cfg: FullConfig, clock: Callable[[], float], workdir: str) -> Any:
    """Build the layer with the daemon's own construction, with ``cfg``'s overrides.

    Calls :func:`swapd.layer.build.build_layer` (the daemon's own construction) with a
    ``[layer]`` section that carries ``cfg``'s backend, compressor, demotion policy, pool limit
    and disk tier (in ``workdir``; none if ``cfg.disk_bytes`` is 0), with the simulator's
    ``clock``, an arena sized for the pool limit, and ``cfg.layer_options`` as LayerConfig
    overrides (the pool limit wins over them).  Raises ConfigError for unknown options.
    """
    from swapd.config import LayerSection
    from swapd.layer.build import build_layer as layer_build_layer

    section = LayerSection(backend=cfg.backend, compressor=cfg.compressor,
                           disk=bool(cfg.disk_bytes),
                           disk_bytes=cfg.disk_bytes or LayerSection.disk_bytes,
                           demotion_policy=cfg.demotion_policy,
                           pool_limit_bytes=cfg.pool_bytes, disk_seal=cfg.disk_seal)
    options = {**dict(cfg.layer_options), "pool_limit_bytes": cfg.pool_bytes}
    pool_pages = -(-cfg.pool_bytes // PAGE_SIZE)
    return layer_build_layer(section, Path(workdir), clock=clock,
                             max_pages=2 * pool_pages + 256, options=options,
                             backend_options=dict(cfg.backend_options),
                             tiers=list(cfg.tiers) or None,
                             tier_options={n: dict(o) for n, o in cfg.tier_options},
                             instance=f"sim-{os.getpid()}")


def _stats_dict(stats: Any) -> dict[str, Any]:
    if dataclasses.is_dataclass(stats) and not isinstance(stats, type):
        return dataclasses.asdict(stats)
    return dict(vars(stats))


class FullSim:
    """One full-mode simulation over the real layer (see the module docstring).

    Use as a context manager or call :meth:`close`: the layer, the backend's
    arena and the disk tier's temporary directory are released there.
    """

    def __init__(self, cfg: FullConfig, corpus: PageSource,
                 costs: CostTable = DEFAULT_COSTS, workdir: str | None = None) -> None:
        from swapd.layer import EntryState

        self.cfg = cfg
        self.costs = costs
        self.contents = PageContents(corpus, cfg.seed)
        self._now_us = 0.0  # the injected clock, microseconds of modelled time
        # Sized for the resident capacity (queues, ghosts), as in policy-only mode, so that a
        # run without rejected stores faults exactly where policy-only mode misses.  Built
        # before the temporary directory, so a bad policy leaves nothing behind.
        self.policy = make_policy(cfg.policy, cfg.capacity, **dict(cfg.params))
        self._tmp = tempfile.mkdtemp(prefix="swapd-sim-", dir=workdir)
        try:
            self.layer = build_layer(cfg, self._clock, self._tmp)
        except BaseException:
            shutil.rmtree(self._tmp, ignore_errors=True)
            raise
        self._EntryState = EntryState
        self._client = "sim"
        self._regions: list[int] = []  # region id of dense block i
        self._dense: dict[int, int] = {}  # trace page id -> dense index
        self._page_of: list[int] = []  # dense index -> trace page id
        self._version: list[int] = []  # dense index -> writes seen
        self._where = bytearray()  # dense index -> _NEW / _RES / _OUT
        self._resident = 0
        # counters
        self.accesses = self.hits = self.first_touch = self.refaults = 0
        self.evictions = self.writes = self.max_resident = 0
        self.overflow_pages = self.overflow_now = self.overflow_max = 0
        self.readahead_loads = self.resident_faults = 0  # replay only
        # allow_overflow: the reason the last store was refused for lack of room, until a
        # load or a compaction frees some (then stores are tried again)
        self._tiers_full: str | None = None
        self._replay_cost_us = 0.0
        self._replayed = False
        self.refaults_by_tier: dict[str, int] = {}
        self.store_rejects: dict[str, int] = {}
        self.series: list[dict[str, Any]] = []
        self.pages_compacted = 0
        self.shrink_runs = 0  # proactive shrinker runs (each: shrink_step until no progress)
        self.shrink_written = 0  # pages those runs wrote back
        self._next_shrink_us = cfg.shrink_interval_s * 1e6  # modelled time of the next run
        self._next_compact_us = cfg.compact_interval_s * 1e6
        self._next_bg_us = min(self._next_shrink_us if cfg.shrink_interval_s else float("inf"),
                               self._next_compact_us if cfg.compact_interval_s else float("inf"))
        self._closed = False
        self._dm: _DaemonModel | None = None
        if cfg.daemon_config:
            self._dm = _DaemonModel(self, cfg)

    # -- the clock ----------------------------------------------------------------------

    def _clock(self) -> float:
        return self._now_us * 1e-6

    # -- pages ----------------------------------------------------------------------------

    def _dense_index(self, page: int) -> int:
        d = self._dense.get(page)
        if d is None:
            d = self._dense[page] = len(self._page_of)
            self._page_of.append(page)
            self._version.append(0)
            self._where.append(_NEW)
            if d >> REGION_SHIFT >= len(self._regions):
                self._regions.append(self.layer.add_region(self._client, REGION_PAGES))
        return d

    def _resident_target(self) -> int:
        """Pages the resident set may hold now: the capacity.  The one place that decides
        how many pages to evict (the fault path's resident-set sizer plugs in here)."""
        return self.cfg.capacity

    def _evict_for_room(self) -> None:
        """Make room for one page: store the policy's victims until it fits the target.

        Never leaves more than the target resident: a victim the layer rejects raises
        :class:`TierOverflowError`, or with ``allow_overflow`` goes to the overflow store.
        """
        over = self._resident + 1 - self._resident_target()
        if over <= 0:
            return
        pol = self.policy
        layer = self.layer
        costs = self.costs
        regions = self._regions
        where = self._where
        for v in pol.victims(over):
            self._now_us += costs.evict_us + costs.compress_us
            self._resident -= 1
            if self._tiers_full is not None:  # refused for lack of room, none freed since
                self.store_rejects[self._tiers_full] += 1
                where[v] = _OVF
                self.overflow_pages += 1
                self.overflow_now += 1
                if self.overflow_now > self.overflow_max:
                    self.overflow_max = self.overflow_now
                continue
            data = self.contents.data(self._page_of[v], self._version[v])
            try:
                layer.store(regions[v >> REGION_SHIFT], v & _MASK, data)
            except StoreRejected as exc:
                self.store_rejects[exc.reason] = self.store_rejects.get(exc.reason, 0) + 1
                if not self.cfg.allow_overflow:
                    raise _Rejected(exc.reason) from exc
                if exc.reason in _ROOM_REASONS:
                    # Until a load or a compaction frees room, every store would be refused
                    # the same way after the same futile writeback attempts: skip them.
                    self._tiers_full = exc.reason
                where[v] = _OVF
                self.overflow_pages += 1
                self.overflow_now += 1
                if self.overflow_now > self.overflow_max:
                    self.overflow_max = self.overflow_now
                continue
            where[v] = _OUT
            self.evictions += 1

    def _overflow_error(self, reason: str, request: int) -> TierOverflowError:
        """The error for a store rejected with ``reason``: which tier, and what it needs."""
        cfg = self.cfg
        distinct = max(cfg.trace_pages, len(self._page_of))
        out_max = max(0, distinct - cfg.capacity)
        need_mib = out_max * PAGE_SIZE / (1 << 20)
        at = f"at request {request}"
        hint = "or pass --allow-overflow to count the pages that do not fit"
        known = "" if cfg.trace_pages else "at least "
        if reason == "reject_compress_poor" and not cfg.disk_bytes:
            return TierOverflowError(
                f"full mode: the compressed tier ({cfg.backend}) rejects a page that does not "
                f"compress and there is no disk tier ({at}); give one with --disk-mib "
                f"{math.ceil(need_mib)} ({known}{out_max} pages can be out at once), {hint}")
        if cfg.disk_bytes and reason in ("reject_reclaim_fail", "reject_disk_fail",
                                         "reject_compress_poor"):
            return TierOverflowError(
                f"full mode: the disk tier ({cfg.disk_bytes / (1 << 20):.1f} MiB) is full "
                f"{at} ({reason}); this trace needs up to {need_mib:.1f} MiB there "
                f"({known}{distinct} distinct pages - {cfg.capacity} resident): "
                f"--disk-mib {math.ceil(need_mib)}, {hint}")
        if not cfg.disk_bytes:
            st = self.layer.stats()
            in_pool = max(1, st.stored_pages - st.same_filled_pages)
            per_page = max(1.0, st.pool_total_size / in_pool)
            need = out_max * per_page / (1 << 20)
            return TierOverflowError(
                f"full mode: the compressed tier's pool ({cfg.pool_bytes / (1 << 20):.2f} MiB, "
                f"{cfg.backend}) is full {at} ({reason}) and there is no disk tier; at "
                f"{per_page:.0f} bytes of pool per page this trace needs about {need:.1f} MiB "
                f"({known}{out_max} pages out at once): --pool-mib {math.ceil(need * 1.1)} or "
                f"--disk-mib {math.ceil(need_mib)}, {hint}")
        return TierOverflowError(
            f"full mode: the layer rejected a page {at} ({reason}) with a pool of "
            f"{cfg.pool_bytes / (1 << 20):.2f} MiB and a disk tier of "
            f"{cfg.disk_bytes / (1 << 20):.1f} MiB; this trace can have {known}{out_max} pages "
            f"({need_mib:.1f} MiB) out at once, {hint}")

    def _fault_in(self, d: int) -> None:
        costs = self.costs
        st = self._where[d]
        if st == _NEW:
            self.first_touch += 1
            self._now_us += costs.fault_us
        elif st == _OVF:
            self._now_us += costs.fault_us + costs.disk_read_us
            self.refaults_by_tier["overflow"] = self.refaults_by_tier.get("overflow", 0) + 1
            self.refaults += 1
            self.overflow_now -= 1
        else:
            region, index = self._regions[d >> REGION_SHIFT], d & _MASK
            state = self.layer.state(region, index)
            data = self.layer.load(region, index)
            self._tiers_full = None  # the load freed room in a tier
            name = state.value if hasattr(state, "value") else str(state)
            self._now_us += costs.fault_us + costs.read_us(name)
            self.refaults_by_tier[name] = self.refaults_by_tier.get(name, 0) + 1
            self.refaults += 1
            if self.cfg.verify:
                want = self.contents.data(self._page_of[d], self._version[d])
                if data != want:
                    raise InvariantError(
                        f"layer returned wrong contents for page {self._page_of[d]} "
                        f"(from {name}, version {self._version[d]})")
        self._evict_for_room()
        self.policy.insert(d)
        self._where[d] = _RES
        self._resident += 1
        if self._resident > self.max_resident:
            self.max_resident = self._resident

    # -- the driver ------------------------------------------------------------------------

    def run(self, requests: Iterable[Request]) -> FullResult:
        """Replay ``requests``; return the result.  O(n) layer operations."""
        window = self.cfg.window
        check_every = self.cfg.check_every
        pol = self.policy
        exclusive = dict(self.cfg.layer_options).get("exclusive_loads", True)
        dense = self._dense
        where = self._where
        n = self.accesses
        shrink_us = self.cfg.shrink_interval_s * 1e6
        compact_us = self.cfg.compact_interval_s * 1e6
        next_bg = self._next_bg_us
        dm = self._dm
        for req in requests:
            n += 1
            d = dense.get(req.page)
            if d is None:
                d = self._dense_index(req.page)
            if dm is not None:
                dm.access(req.page, d, req.op == "w")
            elif where[d] == _RES:
                pol.access(d)
                self.hits += 1
            else:
                try:
                    self._fault_in(d)
                except _Rejected as exc:
                    raise self._overflow_error(exc.reason, n) from exc
            if req.op == "w":
                self.writes += 1
                self._version[d] += 1
                if not exclusive and where[d] == _RES and dm is None:
                    self.layer.invalidate(self._regions[d >> REGION_SHIFT], d & _MASK)
            if self._now_us >= next_bg:
                next_bg = self._background(shrink_us, compact_us)
            if window and n % window == 0:
                self.accesses = n
                self._sample()
            if check_every and n % check_every == 0:
                self.accesses = n
                self._check()
        self.accesses = n
        self._next_bg_us = next_bg
        return self.result()

    def _background(self, shrink_us: float, compact_us: float) -> float:
        """The daemon's periodic work at modelled time now; return when it is next due."""
        now = self._now_us
        nxt = float("inf")
        if shrink_us > 0 and now >= self._next_shrink_us:
            self.shrink_runs += 1
            for _ in range(64):  # ShrinkerThread: again at once while it writes back
                w = self.layer.shrink_step()
                if w <= 0:
                    break
                self.shrink_written += w
            self._next_shrink_us = now + shrink_us
        if compact_us > 0 and now >= self._next_compact_us:
            freed = self.layer.compact()
            self.pages_compacted += freed
            if freed:
                self._tiers_full = None
            self._next_compact_us = now + compact_us
        if shrink_us > 0:
            nxt = min(nxt, self._next_shrink_us)
        if compact_us > 0:
            nxt = min(nxt, self._next_compact_us)
        return nxt

    def replay(self, events: Iterable[Request]) -> FullResult:
        """Drive the layer with a recorded trace's own stores and loads (``--replay``).

        ``events`` come from ``read_trace(..., events=True)`` of a ``swapd serve --record``
        trace: ``e`` stores the page (its current contents), ``r``/``w``/``p`` load a page
        that is stored (``p``: readahead, no fault), ``w`` gives the page new contents, ``a``
        is a sampled hit.  No resident policy runs: the daemon's decisions are replayed, so
        the layer sees exactly the daemon's stores and loads, and the backend, compressor,
        pool, disk and demotion policy can be varied on a real workload.  The clock is the
        trace's (microseconds since the daemon started), so the shrinker runs at the
        recorded pace; modelled time is the cost table's sum.  A store the layer refuses
        leaves the page resident, as in the daemon (counted in ``store_rejects``).
        O(n) layer operations.
        """
        layer = self.layer
        costs = self.costs
        where = self._where
        dense = self._dense
        regions = self._regions
        shrink_us = self.cfg.shrink_interval_s * 1e6
        compact_us = self.cfg.compact_interval_s * 1e6
        next_bg = self._next_bg_us
        cost = 0.0
        n = self.accesses
        for req in events:
            d = dense.get(req.page)
            if d is None:
                d = self._dense_index(req.page)
            self._now_us = max(self._now_us, float(req.time))
            op = req.op
            if op == "e":
                if where[d] == _OUT:  # stored twice without a load: the daemon's copy won
                    layer.invalidate(regions[d >> REGION_SHIFT], d & _MASK)
                data = self.contents.data(self._page_of[d], self._version[d])
                cost += costs.evict_us + costs.compress_us
                try:
                    layer.store(regions[d >> REGION_SHIFT], d & _MASK, data)
                except StoreRejected as exc:
                    self.store_rejects[exc.reason] = self.store_rejects.get(exc.reason, 0) + 1
                    where[d] = _RES
                else:
                    where[d] = _OUT
                    self.evictions += 1
            elif op == "a":
                n += 1
                self.hits += 1
            else:
                if op != "p":
                    n += 1
                st = where[d]
                if st == _OUT:
                    region, index = regions[d >> REGION_SHIFT], d & _MASK
                    state = layer.state(region, index)
                    data = layer.load(region, index)
                    tier = state.value if hasattr(state, "value") else str(state)
                    cost += costs.read_us(tier)
                    if self.cfg.verify and data != self.contents.data(self._page_of[d],
                                                                      self._version[d]):
                        raise InvariantError(f"layer returned wrong contents for page "
                                             f"{self._page_of[d]} (from {tier})")
                    if op == "p":
                        self.readahead_loads += 1
                        self.refaults_by_tier["readahead"] = (
                            self.refaults_by_tier.get("readahead", 0) + 1)
                    else:
                        self.refaults += 1
                        cost += costs.fault_us
                        self.refaults_by_tier[tier] = self.refaults_by_tier.get(tier, 0) + 1
                elif op != "p":
                    if st == _NEW:
                        self.first_touch += 1
                    else:
                        self.resident_faults += 1  # write-protect or repeated fault
                    cost += costs.fault_us
                where[d] = _RES
                if op == "w":
                    self.writes += 1
                    self._version[d] += 1
            if self._now_us >= next_bg:
                next_bg = self._background(shrink_us, compact_us)
        self.accesses = n
        self._next_bg_us = next_bg
        self._replay_cost_us += cost
        self._replayed = True
        return self.result()

    def finish(self) -> None:
        """End of the run: the background work due, then one compaction (when compaction
        is on), so the pool's density is read after the compaction a live pool would get."""
        if self.cfg.compact_interval_s > 0:
            self.pages_compacted += self.layer.compact()

    def _sample(self) -> None:
        s = self.layer.stats()
        self.series.append({
            "accesses": self.accesses,
            "misses": self.first_touch + self.refaults,
            "resident": self._resident,
            "stored_pages": s.stored_pages,
            "same_filled_pages": s.same_filled_pages,
            "disk_pages": s.disk_slots_used,
            "pool_total_size": s.pool_total_size,
            "written_back_pages": s.written_back_pages,
            "modelled_time_s": self._clock(),
        })

    def result(self) -> FullResult:
        """The counters so far, with the layer's stats and modelled time."""
        lay = _stats_dict(self.layer.stats())
        # each demotion: decompressed out of a compressed tier, written into the next tier
        wb_us = 0.0
        for t in self.layer.tier_stats():
            if t.get("demoted_out") and t.get("state") == "compressed":
                wb_us += t["demoted_out"] * self.costs.decompress_us
            if t.get("demoted_in"):
                wb_us += t["demoted_in"] * self.costs.write_us(str(t.get("state")))
        cfg = dataclasses.asdict(self.cfg)
        cfg["params"] = dict(self.cfg.params)
        cfg["layer_options"] = dict(self.cfg.layer_options)
        if self._replayed:
            cfg["replay"] = True
            cfg["resident_faults"] = self.resident_faults
            cfg["readahead_loads"] = self.readahead_loads
        elapsed_us = (self._replay_cost_us if self._replayed else self._now_us) + wb_us
        return FullResult(
            mode="replay" if self._replayed else "full", config=cfg, accesses=self.accesses,
            hits=self.hits, misses=self.first_touch + self.refaults + self.resident_faults,
            first_touch=self.first_touch,
            refaults=self.refaults, refaults_by_tier=dict(self.refaults_by_tier),
            evictions=self.evictions, store_rejects=dict(self.store_rejects),
            overflow_pages=self.overflow_pages, overflow_max=self.overflow_max,
            writes=self.writes, max_resident=self.max_resident,
            pages_compacted=self.pages_compacted, shrink_runs=self.shrink_runs,
            shrink_written=self.shrink_written, layer=lay,
            modelled_time_s=elapsed_us * 1e-6, costs=self.costs.to_dict(),
            series=tuple(self.series),
            daemon=dict(self._dm.counters) if self._dm is not None else {})

    def _check(self) -> None:
        """Verify the simulator's invariants and call every ``_check()`` below.  O(pages)."""
        if self._replayed:  # no resident policy: only the layer's side can be checked
            self._check_layer_side()
            return
        if self.hits + self.first_touch + self.refaults != self.accesses:
            raise InvariantError(f"hits {self.hits} + faults {self.first_touch + self.refaults}"
                                 f" != accesses {self.accesses}")
        res = self._where.count(_RES)
        if self._dm is not None:
            self._dm._check()
        if res > self.cfg.capacity:
            raise InvariantError(f"{res} resident pages above the capacity {self.cfg.capacity}")
        if self._where.count(_OVF) != self.overflow_now:
            raise InvariantError(f"{self._where.count(_OVF)} overflow pages, counter "
                                 f"{self.overflow_now}")
        if res != self._resident or res != len(self.policy):
            raise InvariantError(f"{res} resident pages, counter {self._resident}, "
                                 f"policy tracks {len(self.policy)}")
        ES = self._EntryState
        for d, w in enumerate(self._where):
            if w == _RES and d not in self.policy:
                raise InvariantError(f"resident page {self._page_of[d]} is not in the policy")
            if w == _OUT:
                st = self.layer.state(self._regions[d >> REGION_SHIFT], d & _MASK)
                if st is ES.RESIDENT:
                    raise InvariantError(f"page {self._page_of[d]} is swapped out but the "
                                         f"layer has no copy")
        self.policy._check()
        self._check_layer_side()

    def _check_layer_side(self) -> None:
        ES = self._EntryState
        for d, w in enumerate(self._where):
            if w == _OUT:
                st = self.layer.state(self._regions[d >> REGION_SHIFT], d & _MASK)
                if st is ES.RESIDENT:
                    raise InvariantError(f"page {self._page_of[d]} is swapped out but the "
                                         f"layer has no copy")
        self.layer._check()
        self.contents._check()

    # -- teardown ----------------------------------------------------------------------------

    def close(self) -> None:
        """Release the layer (and with it the backend's arena) and the temporary directory."""
        if self._closed:
            return
        self._closed = True
        try:
            self.layer.close()
        finally:
            shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self) -> FullSim:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def run_replay(events: Iterable[Request], cfg: FullConfig, corpus: PageSource,
               costs: CostTable = DEFAULT_COSTS, check: bool = True) -> FullResult:
    """Replay a recorded trace's stores and loads through the layer (:meth:`FullSim.replay`)."""
    with FullSim(cfg, corpus, costs) as sim:
        sim.replay(events)
        sim.finish()
        if check:
            sim._check()
        return sim.result()


class _DaemonModel:
    """Daemon mode of :class:`FullSim`: the daemon's sizer, readahead, zero-fill-ahead and
    clean pages over the simulator's resident set (see the module docstring)."""

    def __init__(self, sim: FullSim, cfg: FullConfig) -> None:
        from swapd.config import Config, load_config
        from swapd.policy.sizer import SizerConfig, WatermarkSizer

        dc = Config() if cfg.daemon_config == "defaults" else load_config(cfg.daemon_config)
        rc, pc = dc.reclaim, dc.pager
        self.sim = sim
        self.sizer = WatermarkSizer(SizerConfig(
            batch_pages=rc.batch_pages, low_watermark_pages=rc.low_watermark_pages,
            hard_slack_pages=rc.hard_slack_pages,
            global_limit_pages=dc.limits.global_resident_bytes // PAGE_SIZE), sim._clock)
        self.ra_min = max(1, pc.readahead_min)
        self.ra_max = max(self.ra_min, pc.readahead_max)
        self.npages = cfg.region_pages or (1 << 32)
        self.resident = 0  # the Account the sizer reads (mirrors sim._resident)
        self.limit_pages = cfg.capacity
        self.reclaiming = False
        self.clean = bytearray()  # dense index -> 1 if its stored copy is kept clean
        self.ra: dict[int, list[int]] = {}  # daemon region -> [ra_next, ra_window]
        # the daemon's counter names (swapd.daemon.session.Counters)
        self.counters = dict.fromkeys(
            ("faults", "zero_faults", "zero_ahead_pages", "swapins", "readahead_pages",
             "evicted_pages", "clean_drops", "clean_faults", "direct_reclaims",
             "background_reclaims", "charge_overruns", "wp_faults"), 0)
        # the simulator's policy is sized for a capacity; the daemon's is unbounded
        sim.policy = make_policy(cfg.policy, None, **dict(cfg.params))

    def _d(self, page: int) -> int:
        sim = self.sim
        d = sim._dense.get(page)
        if d is None:
            d = sim._dense_index(page)
        if d >= len(self.clean):
            self.clean.extend(bytes(d + 1 - len(self.clean)))
        return d

    def access(self, page: int, d: int, write: bool) -> None:
        """One recorded fault (or a write to a write-protected clean page)."""
        sim = self.sim
        self._d(page)
        st = sim._where[d]
        c = self.counters
        if st == _RES:  # a hit here; for the daemon a write to a clean (protected) page
            sim.hits += 1
            if write and self.clean[d]:
                self.clean[d] = 0
                c["wp_faults"] += 1
                sim.layer.invalidate(sim._regions[d >> REGION_SHIFT], d & _MASK)
            return
        c["faults"] += 1
        rid, idx = page >> 32, page & 0xFFFFFFFF
        ra = self.ra.setdefault(rid, [-1, 0])
        if st == _NEW:
            self._zero(page, d, idx, ra)
        else:
            self._swapin(page, d, idx, ra, write)
        self._background()

    def _charge(self, want: int, minimum: int = 1) -> int:
        """The pager's _charge_locked: direct reclaim first if the charge does not fit."""
        self.resident = self.sim._resident
        ch = self.sizer.charge(self, want, minimum)
        if not ch.reclaim:
            return ch.allowed
        self.counters["direct_reclaims"] += 1
        self.evict(ch.reclaim)
        room = self.limit_pages + self.sizer.config.hard_slack_pages - self.sim._resident
        if room < minimum and self.limit_pages >= minimum:
            self.counters["charge_overruns"] += 1
        return min(want, max(room, minimum))

    def _place(self, d: int) -> None:
        sim = self.sim
        sim.policy.insert(d)
        sim._where[d] = _RES
        sim._resident += 1
        if sim._resident > sim.max_resident:
            sim.max_resident = sim._resident

    def _zero(self, page: int, d: int, idx: int, ra: list[int]) -> None:
        sim = self.sim
        window = 1
        seq = idx == ra[0]

        def holes(limit: int) -> int:
            k = 1
            end = min(self.npages - idx, limit)
            while k < end and sim._where[self._d(page + k)] == _NEW:
                k += 1
            return k

        if seq:
            window = holes(min(self.ra_max, max(self.ra_min, ra[1] * 2)))
        if sim._resident + window > self.limit_pages:
            window = holes(self._charge(window))
        sim.first_touch += 1
        sim._now_us += sim.costs.fault_us
        for j in range(window):
            self._place(self._d(page + j))
        self.counters["zero_faults"] += 1
        if window > 1:
            self.counters["zero_ahead_pages"] += window - 1
            ra[1] = window
        else:
            ra[1] = 1 if seq else 0
        ra[0] = idx + window

    def _load(self, d: int, exclusive: bool) -> None:
        sim = self.sim
        region, index = sim._regions[d >> REGION_SHIFT], d & _MASK
        state = sim.layer.state(region, index)
        data = sim.layer.load(region, index, exclusive)
        ES = sim._EntryState
        cost = sim.costs.decompress_us if state is ES.COMPRESSED else (
            sim.costs.disk_read_us if state is ES.DISK else 0.0)
        sim._now_us += cost
        name = state.value if hasattr(state, "value") else str(state)
        sim.refaults_by_tier[name] = sim.refaults_by_tier.get(name, 0) + 1
        if sim.cfg.verify:
            want = sim.contents.data(sim._page_of[d], sim._version[d])
            if data != want:
                raise InvariantError(f"layer returned wrong contents for page "
                                     f"{sim._page_of[d]} (daemon mode, from {name})")
        if not exclusive:
            self.clean[d] = 1

    def _swapin(self, page: int, d: int, idx: int, ra: list[int], write: bool) -> None:
        sim = self.sim
        c = self.counters
        window = min(self.ra_max, max(self.ra_min, ra[1] * 2)) if idx == ra[0] else 0
        want = max(1, window)
        allowed = want
        if sim._resident + want > self.limit_pages:
            allowed = self._charge(want)
        sim._now_us += sim.costs.fault_us
        self._load(d, write)
        if not write:
            c["clean_faults"] += 1
        self._place(d)
        sim.refaults += 1
        c["swapins"] += 1
        ra[1] = window
        ra[0] = idx + 1
        k = 0
        while k < allowed - 1 and idx + 1 + k < self.npages:
            nd = sim._dense.get(page + 1 + k)
            if nd is None or sim._where[nd] != _OUT:
                break
            self._load(nd, False)
            self._place(nd)
            k += 1
        if k:
            c["readahead_pages"] += k
            ra[0] = idx + 1 + k

    def evict(self, n: int) -> int:
        """One batch of the policy's victims: clean ones dropped, the others stored."""
        sim = self.sim
        layer = sim.layer
        costs = sim.costs
        done = 0
        for v in sim.policy.victims(n):
            region, index = sim._regions[v >> REGION_SHIFT], v & _MASK
            if self.clean[v]:
                self.clean[v] = 0
                if layer.store_clean(region, index):
                    sim._now_us += costs.evict_us
                    self.counters["clean_drops"] += 1
                    sim._where[v] = _OUT
                    sim._resident -= 1
                    sim.evictions += 1
                    done += 1
                    continue
            data = sim.contents.data(sim._page_of[v], sim._version[v])
            sim._now_us += costs.evict_us + costs.compress_us
            try:
                layer.store(region, index, data)
            except StoreRejected as exc:
                sim.store_rejects[exc.reason] = sim.store_rejects.get(exc.reason, 0) + 1
                sim.policy.insert(v)
                continue
            sim._where[v] = _OUT
            sim._resident -= 1
            sim.evictions += 1
            done += 1
        self.counters["evicted_pages"] += done
        return done

    def _background(self) -> None:
        while True:
            self.resident = self.sim._resident
            n = self.sizer.background(self)
            if not n or not self.evict(n):
                return
            self.counters["background_reclaims"] += 1

    def _check(self) -> None:
        sim = self.sim
        for d, w in enumerate(sim._where):
            if d < len(self.clean) and self.clean[d] and w != _RES:
                raise InvariantError(f"page {sim._page_of[d]} is marked clean but not resident")
        if sim._resident > max(self.limit_pages + self.sizer.config.hard_slack_pages, 1) \
                and not sim.store_rejects:
            raise InvariantError(f"{sim._resident} resident pages over the limit "
                                 f"{self.limit_pages}")


def run_full(requests: Iterable[Request], cfg: FullConfig, corpus: PageSource,
             costs: CostTable = DEFAULT_COSTS, check: bool = True) -> FullResult:
    """Run a full-mode simulation of ``requests``; ``check`` runs every ``_check()`` at the end."""
    with FullSim(cfg, corpus, costs) as sim:
        sim.run(requests)
        sim.finish()
        if check:
            sim._check()
        return sim.result()
