# The generalized swap-LRU layer: slot-free entries, one LRU above the tiers, zswap's admission.
#
# Design.  A swapped-out page is (region, index); its state is one word of the swap table
# (swapd/layer/table.py).  No swap slot exists for a page in the compressed tier; a disk slot is
# taken only when the entry is written back.  Every stored entry is on exactly one LRU list: the
# list of (its client, its tier), hottest at the head.  A store links the entry at the head of its
# client's fastest-tier list with the referenced bit set (mm/zswap.c: zswap_store() sets
# entry->referenced; shrink_memcg_cb() rotates a referenced entry instead of writing it back).
# Demotion (``writeback``) takes the coldest entries of the fastest tier of one client at a time,
# clients in round robin (mm/zswap.c: shrink_worker() walks memcgs round robin), decompresses them
# and writes them to the next tier in one batch (32 by default, the kernel's
# SWAP_CLUSTER_MAX-sized walks), so the disk gets contiguous runs.
#
# Admission is zswap_check_limits(): a pool limit (bytes, or percent of RAM), and after the limit
# was hit (zswap_pool_reached_full) no store is accepted until the pool is under the accept
# threshold (90% of the limit).  Where the kernel then rejects the page -- which sends the hottest
# page to disk while colder ones stay compressed, the LRU inversion of the 2023 kernel-build
# measurements -- this layer by default *shrinks until it can accept*: it writes back the coldest
# entries before it takes the new page.  ``reject_to_disk_when_full`` restores the kernel's
# behaviour (the page goes straight to the next tier, and the proactive shrinker is asked to bring
# the pool under the threshold, as shrink_worker is queued), so the inversion counter can be
# compared.  Same-filled pages live in the word (zswap_is_page_same_filled before 6.12, zram's
# ZRAM_SAME); incompressible pages are stored raw when a lower tier can take them later (as
# mm/zswap.c's 2025 "store compression-failed pages as-is" does, counting
# stored_incompressible_pages), else rejected as reject_compress_poor; a backend whose
# largest object is below a page (zbud) cannot hold them raw, so with a lower tier they go there
# directly -- counted as reject_compress_poor and, when colder entries stay in the pool, as an
# inversion, the bypass the 2023 discussion named as the same bug.  Loads are exclusive
# by default (zswap_exclusive_loads): the copy is freed and the page is RESIDENT; with
# ``exclusive_loads=False`` a clean copy is kept (CLEAN) and is simply dropped, never written back,
# when it is chosen for demotion.
#
# LRU inversion: counted when an entry is placed in a slower tier while its client still has an
# entry in a faster tier that is colder in the layer's LRU order (that order is swap-out recency,
# adjusted by non-exclusive loads and by the second-chance rotation).  Demotion by the built-in LRU
# always takes the tail, so it counts none; a demotion policy plugin (``demotion_policy``) or the
# kernel-like mode can.  The check is the same code for all of them.
#
# Proactive shrinker (``shrink_step``): when the pool is above ``shrinker_start_percent`` of its
# limit (or the kernel-like mode asked for a shrink), write back one batch.  Swapin feedback as in
# zswap_shrinker_count(): pages loaded from a slower tier since the last step are subtracted from
# the number of entries eligible for writeback (nr_disk_swapins), and a refault of a page written
# back less than ``shrinker_refault_window`` seconds ago makes the shrinker back off exponentially
# (the workingset refault-distance idea, with an injected clock).
#
# Disk faults (writeback).  A batch whose write fails (TierIOError) or finds the next tier full
# (TierFullError, or ENOSPC/EDQUOT from the file system) leaves its entries in the faster tier and
# stops writeback for a back-off interval that doubles on each failure (``shrinker_backoff_min``
# .. ``shrinker_backoff_max`` seconds on the injected clock) and resets on the first success, so
# a failing disk costs one write attempt per interval, never a busy loop.  A full disk is counted
# (``writeback_disk_full``) and logged once when writeback stops and once when it resumes; I/O
# errors are counted (``writeback_io_errors``).  A failed read raises from ``load`` for that page
# only (the daemon poisons it); the entry stays, so the page is never served as zeros.
#
# Concurrency.  One layer lock protects the swap table, the lists, the clients and the counters.
# Compression (store) runs outside it; the I/O of a writeback or of a direct disk store runs
# outside it too: the victims are marked WB and taken off the lists under the lock, written out
# without it, and committed under it only if their word is unchanged (a concurrent load,
# invalidate or store wins, and the new slot is freed) -- the kernel's zswap_writeback_entry()
# re-validates the entry against the tree the same way.  A load from a memory tier (and its
# decompression) runs under the lock; a load from a slow tier marks the entry busy (WB, off its
# list, its key's free deferred) and reads without the lock, so a slot or handle is never freed
# under a reader and a load may run on any thread (the daemon's load workers).  ``nowait``
# loads raise WouldBlockError instead of reading a slow tier.  The caller serializes
# store/load/invalidate of the *same* page (the daemon has one authority per page; its
# in-flight set keeps a second load of a page from starting); anything else may run
# concurrently, including writeback, shrink_step and compact.
#
# Lock order: SwapLayer._lock -> backend locks -> PageArena._lock;
#             SwapLayer._lock -> DiskTier._lock.  Policies are called only under SwapLayer._lock.
# Invariants (``_check``): every entry with a tier tag and without WB is on the list of its
# client and tier, and every list member has such a word; the per-client gauges equal a recount;
# backend objects = entries in the compressed tier; disk slots in use >= disk entries (= when no
# I/O is in flight); the table's, the tiers' and the policy's own checks pass.
"""The swap-LRU layer: ``SwapLayer``, ``LayerConfig``, ``LayerStats``."""

from __future__ import annotations

import errno
import itertools
import logging
import time
from array import array
from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any, cast

import swapd._native.zsmalloc as _native_zs
import swapd.impl as _impl
from swapd.arena import PAGE_SHIFT, PAGE_SIZE
from swapd.compress import fill_page, same_filled_value
from swapd.errors import (
    ConfigError,
    CorruptPageError,
    EntryNotFoundError,
    InvariantError,
    ObjectSizeError,
    PoolExhaustedError,
    StoreRejected,
    TierFullError,
    TierIOError,
    WouldBlockError,
)
from swapd.layer.table import (
    CLEAN,
    EXT_LIST,
    EXT_REGION,
    KEY_MAX,
    KEY_SHIFT,
    LEN_MASK,
    LEN_SHIFT,
    MAX_TIERS,
    NIL,
    REF,
    SIDE,
    TAG_MASK,
    TAG_SAME,
    TAG_TIER0,
    WB,
    EntryState,
    SwapTable,
    decode_value,
    encode_value,
    pack_name,
    unpack_name,
)
from swapd.layer.tier import CompressedTier, Tier  # CompressedTier: the compressed contract

# The compiled implementation of the batch operations, or None (swapd/impl.py chose, once).
_NATIVE = _impl.native()
_fast_of = _native_zs.fast_of  # a backend's compiled zsmalloc fast paths, or None

__all__ = ["LayerConfig", "LayerStats", "SwapLayer"]

log = logging.getLogger(__name__)

Page = bytes | bytearray | memoryview
_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)  # a disk tier without room


@dataclass(frozen=True)
class LayerConfig:
    """Tunables of the layer (zswap's module parameters where they exist).

    ``pool_limit_bytes`` wins over ``pool_limit_percent`` (of the compressed tier's
    ``limits.ram_total_bytes``; zswap's max_pool_percent).  ``accept_threshold_percent``
    is zswap's accept_threshold_percent.  ``store_incompressible``: keep pages that do not
    compress raw in the pool when a slower tier exists.  ``second_chance``: the referenced bit.
    Shrinker knobs: ``shrinker_start_percent`` of the limit, ``shrinker_batch`` pages per step,
    ``shrinker_refault_window`` seconds, back-off between ``shrinker_backoff_min`` and
    ``shrinker_backoff_max`` seconds, ``shrinker_recent`` written-back entries remembered.
    ``clean_first``: when the pool needs room, free the clean copies kept by non-exclusive
    loads (oldest first) before writing anything back.
    """

    pool_limit_bytes: int | None = None
    pool_limit_percent: float = 20.0
    accept_threshold_percent: float = 90.0
    shrink_until_accept: bool = True
    store_incompressible: bool = True
    exclusive_loads: bool = True
    same_filled: bool = True
    writeback_batch: int = 32
    reject_to_disk_when_full: bool = False
    second_chance: bool = True
    clean_first: bool = True
    shrinker_start_percent: float = 80.0
    shrinker_batch: int = 32
    shrinker_refault_window: float = 1.0
    shrinker_backoff_min: float = 0.05
    shrinker_backoff_max: float = 5.0
    shrinker_recent: int = 4096

    def __post_init__(self) -> None:
        if self.pool_limit_bytes is not None and self.pool_limit_bytes < 0:
            raise ConfigError(f"pool_limit_bytes must be >= 0, got {self.pool_limit_bytes}")
        for name in ("pool_limit_percent", "accept_threshold_percent", "shrinker_start_percent"):
            v = getattr(self, name)
            if not 0 <= v <= 100:
                raise ConfigError(f"{name} must be within 0..100, got {v}")
        if self.writeback_batch <= 0 or self.shrinker_batch <= 0:
            raise ConfigError("writeback_batch and shrinker_batch must be positive")
        if self.shrinker_backoff_min <= 0 or self.shrinker_backoff_max < self.shrinker_backoff_min:
            raise ConfigError("need 0 < shrinker_backoff_min <= shrinker_backoff_max")
        if self.shrinker_recent < 0 or self.shrinker_refault_window < 0:
            raise ConfigError("shrinker_recent and shrinker_refault_window must be >= 0")


@dataclass(frozen=True)
class LayerStats:
    """A snapshot of the layer's counters, kernel names (mm/zswap.c debugfs, vmstat, zram).

    Gauges: ``stored_pages`` (entries in the compressed tier plus same-filled ones, as
    zswap_stored_pages), ``same_filled_pages``, ``stored_incompressible_pages``,
    ``pool_total_size`` (bytes of backend pages in total; per client, its compressed bytes),
    ``disk_slots_used``, ``disk_pages`` (entries on disk), and zram's mm_stat
    ``orig_data_size`` / ``compr_data_size`` / ``mem_used_total``.  Events: the rejects
    (kernel names, plus ``reject_disk_fail``: a page bound for the disk tier found it full or
    failing), ``pool_limit_hit`` (stores that found the pool full: at its limit, or still above
    the accept threshold after hitting it; the kernel counts only the former),
    ``written_back_pages``, ``zswpin``, ``zswpout``, ``zswpwb``, ``pswpin`` / ``pswpout``
    (disk-tier reads / writes), ``lru_inversions``, ``clean_dropped``, ``shrinker_backoffs``,
    ``refaults_soon``; disk faults of writeback: ``writeback_io_errors`` (batches whose write
    failed), ``writeback_disk_full`` (batches that found the disk full), ``writeback_backoffs``
    (times writeback was skipped while backing off after either).  ``clean_kept_bytes``:
    compressed bytes of the clean copies kept by non-exclusive loads (the page is resident
    again; the pool limit counts them, and they are the first thing freed when the pool
    needs room).
    """

    stored_pages: int = 0
    pool_total_size: int = 0
    written_back_pages: int = 0
    reject_compress_poor: int = 0
    reject_compress_fail: int = 0
    reject_alloc_fail: int = 0
    reject_reclaim_fail: int = 0
    reject_disk_fail: int = 0
    pool_limit_hit: int = 0
    stored_incompressible_pages: int = 0
    same_filled_pages: int = 0
    zswpin: int = 0
    zswpout: int = 0
    zswpwb: int = 0
    pswpin: int = 0
    pswpout: int = 0
    lru_inversions: int = 0
    clean_dropped: int = 0
    shrinker_backoffs: int = 0
    refaults_soon: int = 0
    orig_data_size: int = 0
    compr_data_size: int = 0
    mem_used_total: int = 0
    disk_slots_used: int = 0
    disk_pages: int = 0
    writeback_io_errors: int = 0
    writeback_disk_full: int = 0
    writeback_backoffs: int = 0
    clean_kept_bytes: int = 0

    @property
    def mm_stat(self) -> str:
        """zram's mm_stat line: orig_data_size compr_data_size mem_used_total (bytes)."""
        return f"{self.orig_data_size} {self.compr_data_size} {self.mem_used_total}"

    def as_dict(self) -> dict[str, int]:
        """The counters as a plain dict (for JSON)."""
        return {f.name: int(getattr(self, f.name)) for f in fields(self)}


_EVENTS = ("written_back_pages", "reject_compress_poor", "reject_compress_fail",
           "reject_alloc_fail", "reject_reclaim_fail", "reject_disk_fail", "pool_limit_hit",
           "zswpin", "zswpout", "zswpwb", "pswpin", "pswpout", "lru_inversions",
           "clean_dropped")


_TIER_EVENTS = ("demoted_in", "demoted_out", "loads", "load_errors", "store_errors",
                "unavailable_skips")


class _Client:
    """Per-client lists and counters.  Every field is under SwapLayer._lock."""

    __slots__ = ("clean_bytes", "clean_dropped", "compr_bytes", "counts", "incompressible",
                 "key", "lists", "lru_inversions", "num", "pool_limit_hit", "pswpin", "pswpout",
                 "regions",
                 "reject_alloc_fail", "reject_compress_fail", "reject_compress_poor",
                 "reject_disk_fail", "reject_reclaim_fail", "same", "stored",
                 "written_back_pages", "zswpin", "zswpout", "zswpwb")

    def __init__(self, key: Hashable, lists: list[int], num: int = 0) -> None:
        self.key = key
        self.num = num                  # the client's number in the table's extent records
        self.lists = lists              # sentinel of this client's list in each tier
        self.counts = [0] * len(lists)  # entries on each list (WB entries are on none)
        self.regions: set[int] = set()
        self.stored = 0                 # entries in tier 0 (compressed) + same-filled
        self.same = 0
        self.incompressible = 0
        self.compr_bytes = 0
        self.clean_bytes = 0            # compressed bytes of CLEAN copies in tier 0
        # events (the names of _EVENTS)
        self.written_back_pages = 0
        self.reject_compress_poor = 0
        self.reject_compress_fail = 0
        self.reject_alloc_fail = 0
        self.reject_reclaim_fail = 0
        self.reject_disk_fail = 0
        self.pool_limit_hit = 0
        self.zswpin = 0
        self.zswpout = 0
        self.zswpwb = 0
        self.pswpin = 0
        self.pswpout = 0
        self.lru_inversions = 0
        self.clean_dropped = 0


class _Region:
    __slots__ = ("base", "client", "npages")

    def __init__(self, base: int, npages: int, client: _Client) -> None:
        self.base = base
        self.npages = npages
        self.client = client


class SwapLayer:
    """Slot-free swap entries over a chain of tiers, with one LRU above them.

    ``tiers``: fastest first, e.g. ``[CompressedTier(...), DiskTier(...)]``.  ``clock``: seconds,
    used only by the proactive shrinker.  ``demotion_policy``: ``"lru"`` is the built-in LRU;
    another name loads that policy plugin (an experiment switch) to choose demotion victims.
    Thread-safe (see the module comment).
    """

    def __init__(self, tiers: Sequence[Tier], *, config: LayerConfig | None = None,
                 clock: Callable[[], float] | None = time.monotonic,
                 demotion_policy: str = "lru", table: SwapTable | None = None) -> None:
        import threading

        if not tiers or len(tiers) > MAX_TIERS:
            raise ConfigError(f"a layer needs 1..{MAX_TIERS} tiers, got {len(tiers)}")
        self._tiers = list(tiers)
        self._ntiers = len(tiers)
        self._config = cfg = config if config is not None else LayerConfig()
        self._clock = clock if clock is not None else time.monotonic
        self._lock = threading.Lock()
        self._table = table if table is not None else SwapTable()  # under _lock
        self._describe_tiers()
        # the table's arrays never change identity (they grow and shrink in place)
        self._words = self._table.words
        self._next = self._table.next
        self._prev = self._table.prev
        self._regions: dict[int, _Region] = {}       # under _lock
        self._clients: dict[Hashable, _Client] = {}  # under _lock
        self._rr: list[Hashable] = []                # under _lock: round-robin order of clients
        self._next_region = 1                        # under _lock
        self._next_client = 1                        # under _lock
        self._departed = {name: 0 for name in _EVENTS}  # under _lock: events of removed clients
        self._reached_full = False                   # under _lock: zswap_pool_reached_full
        self._shrink_requested = False               # under _lock: kernel-like mode's queued work
        self._io_inflight = 0                        # under _lock: slots allocated, not committed
        self._recent_wb: OrderedDict[int, float] = OrderedDict()  # under _lock: g -> time
        self._disk_swapins = 0                       # under _lock: nr_disk_swapins
        self._soon = 0                               # under _lock: refaults within the window
        self._soon_seen = 0                          # under _lock
        self._backoff = 0.0                          # under _lock: current back-off interval
        self._backoff_until = -1.0                   # under _lock
        self._backoffs = 0                           # under _lock
        # Writeback back-off per destination tier (under _lock): interval, no writeback into
        # that tier before ``_wb_until``, stopped by a full tier (logged once).
        self._wb_backoff = [0.0] * self._ntiers
        self._wb_until = [-1.0] * self._ntiers
        self._wb_stopped = [False] * self._ntiers
        self._wb_io_errors = 0                       # under _lock
        self._wb_full = 0                            # under _lock
        self._wb_skipped = 0                         # under _lock
        # CLEAN copies in tier 0 in the order they became clean (oldest first): freed first
        # when the pool needs room (they are redundant: the page is resident).
        self._clean: dict[int, _Client] = {}         # under _lock
        self._closed = False
        # Per-client limits (swapd ctl): client -> (zswap_max_bytes or None, writeback allowed),
        # as cgroup v2's memory.zswap.max / memory.zswap.writeback.  Under _lock; usually empty.
        self._caps: dict[Hashable, tuple[int | None, bool]] = {}
        t0 = self._tiers[0]
        # the admission of zswap applies to a compressed tier 0 (any tier with compressed=True
        # offers CompressedTier's methods; no tier is special-cased by its type)
        self._t0c: CompressedTier | None = cast(CompressedTier, t0) if t0.compressed else None
        self._set_limits(cfg)
        self._policy: Any = None
        self._demotion = demotion_policy  # the name in effect (set_demotion_policy)
        if demotion_policy != "lru":
            from swapd.plugins import make_policy

            self._policy = make_policy(demotion_policy)
        # the store fast path needs a compressed tier 0 and no policy to tell
        self._fast_ok = self._t0c is not None and self._policy is None
        self._ref_bit = REF if cfg.second_chance and self._policy is None else 0
        self._exclusive = cfg.exclusive_loads
        # Entries of slow tiers whose I/O runs outside the lock (a demotion's read, a load):
        # g -> -1 while in flight, or the key to free when the I/O ends if the entry was dropped
        # meanwhile (its key must not be reused under the reader).  Under _lock.
        self._busy: dict[int, int] = {}
        self._rr_tier = [0] * self._ntiers  # under _lock: round-robin position per source tier
        self._tier_events = [dict.fromkeys(_TIER_EVENTS, 0) for _ in self._tiers]  # under _lock

    # -- state ------------------------------------------------------------------------------

    def _describe_tiers(self) -> None:
        """Name the tiers in the table region's scalars (what a reader of the state needs)."""
        region = self._table.region
        if not region.writable:
            return
        region.set("ntiers", self._ntiers)
        for i, t in enumerate(self._tiers):
            region.set(f"tier{i}", pack_name(t.state_name))
            t.describe_state(region.set, i)

    def state_fds(self) -> dict[str, int]:
        """The named fds of every state region of the layer: ``"table"``, and each tier's
        regions prefixed ``"tier<i>."`` (e.g. ``tier0.arena``, ``tier1.disk``,
        ``tier1.file``).  Another process given these fds can read every stored page
        (docs/state-format.md); the fds stay the layer's (dup them to keep them).  O(tiers).
        """
        fds = self._table.state_fds()
        for i, t in enumerate(self._tiers):
            for name, fd in t.state_fds().items():
                fds[f"tier{i}.{name}"] = fd
        return fds

    @classmethod
    def adopt(cls, fds: Mapping[str, int], *, writable: bool = True,
              config: LayerConfig | None = None,
              clock: Callable[[], float] | None = time.monotonic,
              demotion_policy: str = "lru", seal_state: bytes | None = None,
              tier_options: Mapping[str, Mapping[str, Any]] | None = None) -> SwapLayer:
        """A layer over the state regions named by ``fds`` (as :meth:`state_fds` names them).

        The regions are taken over (closed with the layer): dup fds you want to keep.  The
        tiers are rebuilt from the table's description of them (``tier<i>``/``codec<i>``
        scalars), regions and clients from the table's extent records, gauges and list counts
        by a scan of the words.  A sealed disk tier needs ``seal_state`` (its sealer's
        ``export_state()``); a tier plugin gets its ``tier_options`` (``[tier.NAME]``), and is
        found by the ``state_name`` the table recorded for it (``Tier.adopt_state``).  Keys a
        tier holds that no word references are released (``Tier.reconcile``).  Clients are
        named by their number (an int) afterwards.  An
        entry found under writeback (WB) is linked at the tail of its tier's list.  With
        ``writable=False`` nothing is written: use :meth:`peek` and :meth:`regions`.
        StateFormatError if a region is not one this code reads.  O(pages).
        """
        from swapd.plugins import available_tiers
        from swapd.state import StateFormatError

        by_state = {c.state_name: c for c in available_tiers().values()}

        table = SwapTable.adopt(fds["table"], writable=writable)
        tiers: list[Tier] = []
        try:
            ntiers = table.region.get("ntiers")
            if not 0 < ntiers <= MAX_TIERS:
                raise StateFormatError(f"swap table: {ntiers} tiers")
            for i in range(ntiers):
                kind = unpack_name(table.region.get(f"tier{i}"))
                mine = {k[len(f"tier{i}."):]: v for k, v in fds.items()
                        if k.startswith(f"tier{i}.")}
                tcls = by_state.get(kind)
                if tcls is None:
                    raise StateFormatError(f"swap table: tier {i} is {kind!r}, which this "
                                           "swapd cannot adopt (no tier plugin keeps that "
                                           "state)")
                tiers.append(tcls.adopt_state(
                    mine, get=table.region.get, index=i, writable=writable,
                    options=dict((tier_options or {}).get(tcls.name, {})),
                    seal_state=seal_state))
            self = cls(tiers, config=config, clock=clock, demotion_policy=demotion_policy,
                       table=table)
            self._rebuild_locked()
            if writable:
                self._reconcile_tiers_locked()
        except BaseException:
            for t in tiers:
                t.close()
            table.close()
            raise
        return self

    def _rebuild_locked(self) -> None:
        """Rebuild regions, clients, gauges and list counts from the table.  O(pages)."""
        table = self._table
        words = table.words
        clients: dict[int, _Client] = {}

        def client(num: int) -> _Client:
            cl = clients.get(num)
            if cl is None:
                cl = clients[num] = _Client(num, [NIL] * self._ntiers, num)
            return cl

        for base, npages, kind, ident, num in table.extent_records():
            cl = client(num)
            if kind == EXT_LIST:
                cl.lists[ident] = base
            else:
                self._regions[ident] = _Region(base, npages, cl)
                cl.regions.add(ident)
                self._next_region = max(self._next_region, ident + 1)
        for num in sorted(clients):
            cl = clients[num]
            if NIL in cl.lists:
                raise InvariantError(f"adopted table: client {num} lacks a list sentinel")
            self._clients[num] = cl
            self._rr.append(num)
            self._next_client = max(self._next_client, num + 1)
        for reg in self._regions.values():
            cl = reg.client
            for g in itertools.chain.from_iterable(table.used(reg.base, reg.npages)):
                w = words[g]
                tag = w & TAG_MASK
                if tag == TAG_SAME:
                    cl.same += 1
                    cl.stored += 1
                elif tag >= TAG_TIER0:
                    t = tag - TAG_TIER0
                    if t >= self._ntiers:
                        raise InvariantError(f"adopted table: entry {g} in tier {t}")
                    self._count_locked(cl, t, (w >> LEN_SHIFT) & LEN_MASK)
                    if not w & WB:
                        cl.counts[t] += 1
                    elif table.region.writable:
                        words[g] = w & ~WB
                        table.push_tail(cl.lists[t], g)
                        cl.counts[t] += 1
        if table.region.writable:
            self._repair_lists_locked()
        if self._policy is not None:
            for cl in self._clients.values():
                for g in reversed(table.iter_list(cl.lists[0], table.top)):
                    self._policy.insert(g)

    def _repair_lists_locked(self) -> None:
        """After a crash, make every list agree with the words (the truth).

        A SIGKILL can land between a word's update and its list's (a load putting an entry
        back, a writeback returning its victims, a drop): a list is kept when it is whole and
        holds exactly its tier's entries, else it is rebuilt from the words in page order
        (its LRU order is lost; a warning says so).  O(pages).
        """
        table = self._table
        words = table.words
        for cl in self._clients.values():
            for t, s in enumerate(cl.lists):
                try:
                    members = table.check_list(s)
                except InvariantError:
                    members = None
                want = TAG_TIER0 + t
                if members is not None and len(members) == cl.counts[t] and all(
                        words[g] & TAG_MASK == want and not words[g] & WB for g in members):
                    continue
                log.warning("adopted table: client %s tier %d: its LRU list disagrees with "
                            "the swap table (a crash mid-update); rebuilt in page order",
                            cl.key, t)
                nxt, prv = table.next, table.prev
                if members:
                    for g in members:
                        nxt[g] = prv[g] = NIL
                nxt[s] = prv[s] = s
                n = 0
                for rid in sorted(cl.regions):
                    reg = self._regions[rid]
                    for g in itertools.chain.from_iterable(table.used(reg.base, reg.npages)):
                        w = words[g]
                        if w & TAG_MASK == want and not w & WB:
                            nxt[g] = prv[g] = NIL
                            table.push_tail(s, g)
                            n += 1
                cl.counts[t] = n

    def _reconcile_tiers_locked(self) -> None:
        """Let every tier release the keys no word of the table references.  O(pages).

        Only the keys of tiers that reconcile (override ``Tier.reconcile``) and hold more
        keys than the table names are collected: a restart's clients wait for this walk.
        """
        words = self._table.words
        # A tier whose key count equals the entries the table names in it has nothing to
        # release (after _rebuild_locked every entry is counted on its list): skip the walk.
        named = [sum(cl.counts[t] for cl in self._clients.values())
                 for t in range(len(self._tiers))]
        wants = [type(tier).reconcile is not Tier.reconcile and tier.keys_in_use() != named[t]
                 for t, tier in enumerate(self._tiers)]
        if not any(wants):
            return
        live: list[set[int]] = [set() for _ in self._tiers]
        tags = {TAG_TIER0 + t for t, want in enumerate(wants) if want}
        for reg in self._regions.values():
            for g in itertools.chain.from_iterable(self._table.used(reg.base, reg.npages)):
                w = words[g]
                if w & TAG_MASK in tags:
                    live[(w & TAG_MASK) - TAG_TIER0].add(self._key_locked(g, w))
        for t, tier in enumerate(self._tiers):
            if not wants[t]:
                continue
            released = tier.reconcile(live[t])
            if released:
                log.warning("adopted tier %d (%s): released %d key(s) no entry references",
                            t, tier.name, released)

    def regions(self) -> dict[int, tuple[Hashable, int]]:
        """``{region id: (client, npages)}``.  O(regions)."""
        with self._lock:
            return {rid: (r.client.key, r.npages) for rid, r in self._regions.items()}

    def peek(self, region: int, index: int) -> bytes:
        """The swapped-out page's bytes without changing any state (a reader's load).

        EntryNotFoundError if it has no copy; CorruptPageError, TierIOError as :meth:`load`.
        O(1) plus one decompression or one disk read, under the lock.
        """
        with self._lock:
            g, _ = self._lookup_locked(region, index)
            w = self._table.words[g]
            tag = w & TAG_MASK
            if not tag:
                raise EntryNotFoundError(f"page {index} of region {region} is not swapped out")
            if tag == TAG_SAME:
                return fill_page(self._table.side.value(w) if w & SIDE else decode_value(w))
            return self._tiers[tag - TAG_TIER0].load(self._key_locked(g, w))

    # -- runtime control (swapd ctl, SIGHUP) -----------------------------------------------

    def _set_limits(self, cfg: LayerConfig) -> None:
        """Pool limit, accept threshold and shrinker start, in pages, from ``cfg``.  O(1)."""
        if self._t0c is not None:
            lim = self._t0c.limits
            if cfg.pool_limit_bytes is not None:
                limit_bytes = cfg.pool_limit_bytes
            else:
                limit_bytes = int(lim.ram_total_bytes * cfg.pool_limit_percent / 100)
            if lim.max_bytes is not None:
                limit_bytes = min(limit_bytes, lim.max_bytes)
            self.limit_pages = limit_bytes >> PAGE_SHIFT
        else:
            self.limit_pages = 0
        self.accept_pages = int(self.limit_pages * cfg.accept_threshold_percent / 100)
        self.shrink_start_pages = int(self.limit_pages * cfg.shrinker_start_percent / 100)

    # Fields reconfigure() may change: admission and shrinker tunables.  The others shape
    # entries already stored (same_filled, exclusive_loads, second_chance...) or the fast
    # path chosen at construction.
    LIVE_FIELDS = frozenset({
        "pool_limit_bytes", "pool_limit_percent", "accept_threshold_percent",
        "shrink_until_accept", "reject_to_disk_when_full", "shrinker_start_percent",
        "shrinker_batch", "shrinker_refault_window", "shrinker_backoff_min",
        "shrinker_backoff_max"})

    @property
    def config(self) -> LayerConfig:
        """The configuration in effect."""
        return self._config

    def reconfigure(self, config: LayerConfig) -> LayerConfig:
        """Apply ``config`` to the running layer (as writing zswap's module parameters does).

        Only :attr:`LIVE_FIELDS` may differ from the configuration in effect; ConfigError
        names any other.  A lower pool limit takes effect at the next store (the pool is
        then full, and shrinks as entries are written back or loaded).  Returns the
        configuration now in effect.  O(1).
        """
        cur = self._config
        fixed = [f.name for f in fields(LayerConfig) if f.name not in self.LIVE_FIELDS
                 and getattr(config, f.name) != getattr(cur, f.name)]
        if fixed:
            raise ConfigError(f"cannot change {', '.join(fixed)} in a running layer")
        with self._lock:
            self._config = config
            self._set_limits(config)
            if self._t0c is not None and self._t0c.total_pages() < self.accept_pages:
                self._reached_full = False
        return config

    @property
    def demotion_policy(self) -> str:
        """The demotion policy in effect: ``"lru"`` (the layer's LRU) or a policy plugin name."""
        return self._demotion

    def set_demotion_policy(self, name: str) -> str:
        """Switch the demotion policy of a running layer; returns the name now in effect.

        A plugin policy is seeded with every tier-0 entry of every client, coldest first
        (as :meth:`adopt` does), so its order starts as the layer's LRU order; ``"lru"``
        drops the plugin (the lists are kept in both modes).  Entries under writeback
        finish as they started.  PluginError/ConfigError for an unknown name or bad
        parameters, before anything changes.  O(entries of tier 0).
        """
        policy = None
        if name != "lru":
            from swapd.plugins import make_policy

            policy = make_policy(name)
        with self._lock:
            if policy is not None:
                table = self._table
                for cl in self._clients.values():
                    for g in reversed(table.iter_list(cl.lists[0], table.top)):
                        policy.insert(g)
            self._policy = policy
            self._fast_ok = self._t0c is not None and policy is None
            self._ref_bit = REF if self._config.second_chance and policy is None else 0
            self._demotion = name
        return name

    def client_limits(self, client: Hashable) -> tuple[int | None, bool]:
        """``(zswap_max_bytes or None, writeback allowed)`` of ``client``.  O(1)."""
        with self._lock:
            return self._caps.get(client, (None, True))

    def set_client_limits(self, client: Hashable, *, zswap_max_bytes: int | bool | None = False,
                          writeback: bool | None = None) -> tuple[int | None, bool]:
        """Set ``client``'s cap on its compressed bytes and whether its entries may go to a
        slower tier (cgroup v2's memory.zswap.max and memory.zswap.writeback); an argument
        left out keeps its value.  Returns the limits in effect.  O(1).

        Over its cap, a store of the client does not enter the pool (mm/zswap.c:
        zswap_store() when obj_cgroup_may_zswap() fails): the page goes to the next tier
        if writeback is allowed, else it is rejected (counted as ``pool_limit_hit``) and
        stays resident.  With writeback off, demotion out of tier 0 skips the client, and
        pages that would bypass the pool (incompressible on zbud, the kernel-like full
        pool) are rejected instead of written to a slower tier, as mm/page_io.c's
        swap_writepage() keeps them in memory.  Entries already stored stay where they are.
        """
        with self._lock:
            cap, wb = self._caps.get(client, (None, True))
            if zswap_max_bytes is not False:
                if zswap_max_bytes is not None and (isinstance(zswap_max_bytes, bool)
                                                    or zswap_max_bytes < 0):
                    raise ConfigError(f"zswap_max_bytes must be >= 0, got {zswap_max_bytes}")
                cap = zswap_max_bytes if not isinstance(zswap_max_bytes, bool) else None
            if writeback is not None:
                wb = bool(writeback)
            if cap is None and wb:
                self._caps.pop(client, None)
            else:
                self._caps[client] = (cap, wb)
            return cap, wb

    # -- regions and clients ------------------------------------------------------------

    def add_region(self, client: Hashable, npages: int) -> int:
        """Register ``npages`` pages of ``client``; return the region id.

        Nothing is written per page (swapd/layer/table.py).  O(free extents)."""
        if npages <= 0:
            raise ValueError(f"a region needs at least one page, got {npages}")
        with self._lock:
            cl = self._clients.get(client)
            if cl is None:
                num = self._next_client
                self._next_client += 1
                cl = _Client(client, [self._table.new_list(t, num)
                                      for t in range(self._ntiers)], num)
                self._clients[client] = cl
                self._rr.append(client)
            rid = self._next_region
            base = self._table.alloc_extent(npages, EXT_REGION, rid, cl.num)
            self._next_region += 1
            self._regions[rid] = _Region(base, npages, cl)
            cl.regions.add(rid)
            return rid

    def remove_region(self, region: int) -> None:
        """Free every stored copy of the region's pages and forget it.  O(pages stored in it)."""
        with self._lock:
            reg = self._regions.pop(region, None)
            if reg is None:
                raise EntryNotFoundError(f"no region {region}")
            self._remove_region_locked(reg)
            reg.client.regions.discard(region)

    def _remove_region_locked(self, reg: _Region) -> None:
        words = self._table.words
        drop = self._drop_locked
        cl = reg.client
        for g in itertools.chain.from_iterable(self._table.used(reg.base, reg.npages)):
            if words[g]:
                drop(g, cl)
        self._table.free_extent(reg.base)

    def remove_client(self, client: Hashable) -> None:
        """Remove every region of ``client`` and free its copies in every tier.  O(pages)."""
        with self._lock:
            cl = self._clients.pop(client, None)
            if cl is None:
                raise EntryNotFoundError(f"no client {client!r}")
            for rid in sorted(cl.regions):
                self._remove_region_locked(self._regions.pop(rid))
            cl.regions.clear()
            for s in cl.lists:
                self._table.drop_list(s)
            for name in _EVENTS:
                self._departed[name] += getattr(cl, name)
            self._rr.remove(client)
            self._caps.pop(client, None)

    def rename_clients(self, names: Mapping[Hashable, Hashable]) -> None:
        """Rename clients, ``{old: new}``, all at once (so names may be swapped).  O(clients).

        An adopted layer names its clients by number (:meth:`adopt`); the owner of the state
        gives them back the names it uses (the daemon: session ids).  EntryNotFoundError for
        an old name that is no client; ValueError (nothing renamed) when two clients would
        end up with one name.
        """
        with self._lock:
            for old in names:
                if old not in self._clients:
                    raise EntryNotFoundError(f"no client {old!r}")
            kept = set(self._clients) - set(names)
            new = list(names.values())
            if len(set(new)) != len(new) or kept & set(new):
                raise ValueError(f"renaming clients {dict(names)!r} would give two clients "
                                 "one name")
            moved = {old: self._clients.pop(old) for old in names}
            caps = {old: self._caps.pop(old) for old in names if old in self._caps}
            for old, cl in moved.items():
                cl.key = names[old]
                self._clients[cl.key] = cl
                if old in caps:
                    self._caps[cl.key] = caps[old]
            self._rr[:] = [names.get(k, k) for k in self._rr]

    def _lookup_locked(self, region: int, index: int) -> tuple[int, _Client]:
        reg = self._regions.get(region)
        if reg is None or not 0 <= index < reg.npages:
            raise self._not_found(region, reg, index)
        return reg.base + index, reg.client

    @staticmethod
    def _not_found(region: int, reg: _Region | None, index: int = -1) -> EntryNotFoundError:
        if reg is None:
            return EntryNotFoundError(f"no region {region}")
        return EntryNotFoundError(f"page {index} is outside region {region} "
                                  f"({reg.npages} pages)")

    # -- entry helpers (all under _lock) ----------------------------------------------------

    def _key_locked(self, g: int, w: int) -> int:
        return self._table.side.value(w) if w & SIDE else w >> KEY_SHIFT

    def _drop_locked(self, g: int, cl: _Client) -> None:
        """Free whatever copy ``g`` has; the word becomes RESIDENT.  O(1).

        The word is cleared before the key it names is freed (docs/state-format.md, order
        of writes): a word never names a freed object, so a scan of the table is the truth.
        """
        table = self._table
        w = table.words[g]
        if not w:
            return
        tag = w & TAG_MASK
        key = self._key_locked(g, w) if tag >= TAG_TIER0 else 0
        table.words[g] = 0
        if tag == TAG_SAME:
            cl.same -= 1
            cl.stored -= 1
        elif tag >= TAG_TIER0:
            t = tag - TAG_TIER0
            if not w & WB:
                table.unlink(g)
                cl.counts[t] -= 1
                pol = self._policy
                if t == 0 and pol is not None and g in pol:
                    pol.remove(g)
            if w & WB and self._busy.get(g, 0) == -1:
                self._busy[g] = key  # a slow tier's I/O is reading it: freed when that ends
            else:
                self._tiers[t].free(key)
            self._uncount_locked(cl, t, w)
            if t:
                self._recent_wb.pop(g, None)
        if w & CLEAN:
            self._unclean_locked(g, cl, w)
        if w & SIDE:
            table.side.free(w)

    def _unclean_locked(self, g: int, cl: _Client, w: int) -> None:
        """Entry ``g`` stops being a clean copy (dropped or swapped out again).  O(1)."""
        if self._clean.pop(g, None) is not None:
            cl.clean_bytes -= (w >> LEN_SHIFT) & LEN_MASK

    def _make_clean_locked(self, g: int, cl: _Client, t: int, w: int) -> None:
        """Entry ``g`` (word ``w``) of tier ``t`` became a clean copy.  O(1)."""
        if t == 0 and self._tiers[0].compressed:
            self._clean[g] = cl
            cl.clean_bytes += (w >> LEN_SHIFT) & LEN_MASK

    def _drop_clean_locked(self, n: int) -> int:
        """Free up to ``n`` clean copies of tier 0, oldest first; return how many.  O(n)."""
        clean = self._clean
        done = 0
        while clean and done < n:
            g = next(iter(clean))
            cl = clean[g]
            self._drop_locked(g, cl)
            cl.clean_dropped += 1
            done += 1
        return done

    def _uncount_locked(self, cl: _Client, t: int, w: int) -> None:
        if self._tiers[t].compressed:
            length = (w >> LEN_SHIFT) & LEN_MASK
            if t == 0:
                cl.stored -= 1
            cl.compr_bytes -= length
            if length == PAGE_SIZE:
                cl.incompressible -= 1

    def _count_locked(self, cl: _Client, t: int, length: int) -> None:
        if self._tiers[t].compressed:
            if t == 0:
                cl.stored += 1
            cl.compr_bytes += length
            if length == PAGE_SIZE:
                cl.incompressible += 1

    def _make_word(self, g: int, t: int, key: int, length: int) -> int:
        w = (TAG_TIER0 + t) | (length << LEN_SHIFT)
        if key > KEY_MAX:
            return w | self._table.side.put(g, key)
        return w | (key << KEY_SHIFT)

    def _link_new_locked(self, g: int, cl: _Client, t: int, *, head: bool = True) -> None:
        if head:
            self._table.push_head(cl.lists[t], g)
        else:
            self._table.push_tail(cl.lists[t], g)
        cl.counts[t] += 1
        if t == 0 and self._policy is not None:
            self._policy.insert(g)

    # -- admission --------------------------------------------------------------------------

    def _pool_full_locked(self) -> bool:
        """zswap_check_limits(): True while the pool may not take a page.  O(1)."""
        t0 = self._t0c
        if t0 is None:
            return False
        cur = t0.total_pages()
        if cur >= self.limit_pages:
            self._reached_full = True
            return True
        if self._reached_full:
            if cur > self.accept_pages:
                return True
            self._reached_full = False
        return False

    def _reject_locked(self, cl: _Client, reason: str, detail: str = "") -> StoreRejected:
        setattr(cl, reason, getattr(cl, reason) + 1)
        return StoreRejected(reason, detail)

    # -- store ------------------------------------------------------------------------------

    def store(self, region: int, index: int, page: Page) -> None:
        """zswap_store(): take a copy of ``page`` (PAGE_SIZE bytes) for (region, index).

        Any older copy of the page is dropped first.  Raises StoreRejected(reason) -- the
        reason is the counter incremented -- and then the caller keeps the page resident;
        EntryNotFoundError for an unknown region or index.  Cost: one compression outside the
        lock plus O(1) under it, except when the pool is full (a writeback of the coldest
        entries, in batches, until the pool can accept).
        """
        if len(page) != PAGE_SIZE:
            raise ObjectSizeError(f"store: a page is {PAGE_SIZE} bytes, got {len(page)}")
        cfg = self._config
        # same_filled_value() rejects on the first/last word; test that here, without a call
        value = (same_filled_value(page)
                 if cfg.same_filled and page[:8] == page[-8:] else None)
        t0 = self._t0c
        data: bytes | None = None
        reject: str | None = None
        bypass = False  # the pool cannot hold this page even raw: it goes to the next tier
        if value is None and t0 is not None:
            try:
                c = t0._compress(page)
            except Exception:
                reject = "reject_compress_fail"
                c = b""
            if reject is None:
                maxobj = t0.max_object
                if len(c) < PAGE_SIZE and len(c) <= maxobj:
                    data = c
                elif cfg.store_incompressible and self._ntiers > 1:
                    if maxobj >= PAGE_SIZE:
                        data = bytes(page)
                    else:
                        bypass = True
                else:
                    reject = "reject_compress_poor"
        attempts = 0
        while True:
            direct = False
            exhausted = False
            with self._lock:
                reg = self._regions.get(region)
                if reg is None or not 0 <= index < reg.npages:
                    raise self._not_found(region, reg, index)
                g = reg.base + index
                cl = reg.client
                words = self._words
                if attempts == 0 and words[g]:
                    self._drop_locked(g, cl)
                capped = nowb = False
                if self._caps:  # per-client limits (set_client_limits)
                    cap, wb = self._caps.get(cl.key, (None, True))
                    nowb = not wb
                    capped = (cap is not None and data is not None
                              and cl.compr_bytes + len(data) > cap)
                if data is not None and not bypass and not capped and self._fast_ok:
                    # fast path: the pool is under its limit and was not full (O(1))
                    assert t0 is not None
                    be = t0.backend
                    if be.total_pages() < self.limit_pages and not self._reached_full:
                        try:
                            h = be.malloc(len(data))  # that int is the backend's to keep
                        except (PoolExhaustedError, ObjectSizeError):
                            pass  # the general path below redoes and counts it
                        else:
                            length = len(data)
                            try:
                                be.write(h, data)
                            except BaseException:
                                be.free(h)
                                raise
                            if h > KEY_MAX:
                                w = (TAG_TIER0 | (length << LEN_SHIFT)
                                     | self._table.side.put(g, h))
                            else:
                                w = TAG_TIER0 | (length << LEN_SHIFT) | (h << KEY_SHIFT)
                            words[g] = w | self._ref_bit
                            # push_head(cl.lists[0], g), inlined
                            s = cl.lists[0]
                            nxt = self._next
                            head = nxt[s]
                            nxt[g] = head
                            prv = self._prev
                            prv[g] = s
                            prv[head] = g
                            nxt[s] = g
                            cl.counts[0] += 1
                            cl.stored += 1
                            cl.compr_bytes += length
                            if length == PAGE_SIZE:
                                cl.incompressible += 1
                            cl.zswpout += 1
                            return
                if value is not None:
                    payload = encode_value(value)
                    words = self._table.words
                    if payload is None:
                        words[g] = TAG_SAME | self._table.side.put(g, value)
                    else:
                        words[g] = TAG_SAME | payload
                    cl.same += 1
                    cl.stored += 1
                    cl.zswpout += 1
                    return
                if reject is not None:
                    raise self._reject_locked(cl, reject)
                if t0 is None:
                    direct = True
                    target = 0
                elif capped:
                    cl.pool_limit_hit += 1
                    if nowb or self._ntiers == 1:
                        raise StoreRejected("pool_limit_hit", "the client's zswap_max_bytes")
                    direct = True
                    target = 1
                elif bypass:
                    cl.reject_compress_poor += 1  # counted, yet not refused: see below
                    if nowb:
                        raise StoreRejected("reject_compress_poor", "writeback is off")
                    direct = True
                    target = 1
                else:
                    assert data is not None
                    full = self._pool_full_locked()
                    if not full:
                        try:
                            h = t0.put(data)
                        except PoolExhaustedError:
                            exhausted = full = True
                        except ObjectSizeError as exc:
                            raise self._reject_locked(cl, "reject_compress_poor", str(exc)) from exc
                        else:
                            w = self._make_word(g, 0, h, len(data))
                            if cfg.second_chance and self._policy is None:
                                w |= REF
                            self._table.words[g] = w
                            self._link_new_locked(g, cl, 0)
                            self._count_locked(cl, 0, len(data))
                            cl.zswpout += 1
                            return
                    if attempts == 0:
                        cl.pool_limit_hit += 1
                    if self._ntiers == 1:
                        if exhausted:
                            raise self._reject_locked(cl, "reject_alloc_fail")
                        raise StoreRejected("pool_limit_hit")  # counted above
                    if cfg.reject_to_disk_when_full:
                        self._shrink_requested = True
                        if nowb:
                            raise StoreRejected("pool_limit_hit")  # counted above
                        direct = True
                        target = 1
                    elif not cfg.shrink_until_accept:
                        raise StoreRejected("pool_limit_hit")  # counted above
                    elif attempts >= 3:
                        raise self._reject_locked(cl, "reject_reclaim_fail",
                                                  "the pool stays full after writeback")
            if direct:
                self._store_direct(region, index, target, bytes(page))
                return
            if exhausted:  # the arena itself is full: make room whatever the limit says
                with self._lock:
                    ok = self._config.clean_first and \
                        self._drop_clean_locked(self._config.writeback_batch) > 0
                ok = ok or self.writeback(self._config.writeback_batch) > 0
                if not ok:
                    with self._lock:
                        _, cl = self._lookup_locked(region, index)
                        raise self._reject_locked(cl, "reject_alloc_fail")
            elif not self._shrink_until_accept():
                with self._lock:
                    _, cl = self._lookup_locked(region, index)
                    raise self._reject_locked(cl, "reject_reclaim_fail",
                                              "nothing could be written back")
            attempts += 1

    def _store_direct(self, region: int, index: int, t: int, page: bytes) -> None:
        """Write ``page`` straight into tier ``t`` (a disk-like tier), then link it.  A full
        tier with a tier after it first demotes a batch of its coldest entries there."""
        tier = self._tiers[t]
        with self._lock:
            self._io_inflight += 1
        try:
            try:
                try:
                    keys = tier.store_batch([page])
                except TierFullError:
                    if t + 1 >= self._ntiers or not self.writeback(
                            self._config.writeback_batch, t):
                        raise
                    keys = tier.store_batch([page])
            except (TierFullError, TierIOError) as exc:
                with self._lock:
                    _, cl = self._lookup_locked(region, index)
                    raise self._reject_locked(cl, "reject_disk_fail", str(exc)) from exc
            with self._lock:
                try:
                    g, cl = self._lookup_locked(region, index)
                except EntryNotFoundError:
                    tier.free(keys[0])
                    raise
                if self._table.words[g]:  # a concurrent store won
                    tier.free(keys[0])
                    return
                if t > 0 and any(cl.counts[:t]):
                    cl.lru_inversions += 1
                self._table.words[g] = self._make_word(g, t, keys[0], 0)
                self._link_new_locked(g, cl, t)
                if tier.compressed:
                    self._count_locked(cl, t, 0)
                    cl.zswpout += int(t == 0)
                else:
                    cl.pswpout += 1
        finally:
            with self._lock:
                self._io_inflight -= 1

    def _shrink_until_accept(self) -> bool:
        """Write back the coldest entries until the pool is under the accept threshold
        (the 2023 "shrink until can accept" fix of shrink_worker); return whether it is."""
        t0 = self._t0c
        assert t0 is not None
        stalls = 0
        last = t0.total_pages()
        while True:
            with self._lock:
                cur = t0.total_pages()
                if cur <= self.accept_pages and cur < self.limit_pages:
                    self._reached_full = False
                    return True
                # clean copies first: they cost nothing to lose
                if self._clean and self._config.clean_first:
                    self._drop_clean_locked(self._config.writeback_batch)
                    continue
                eligible = sum(c.counts[0] for c in self._clients.values())
            if eligible == 0 or self.writeback(self._config.writeback_batch) == 0:
                # nothing written; dropping clean copies may still have made room
                with self._lock:
                    cur = t0.total_pages()
                    if cur <= self.accept_pages and cur < self.limit_pages:
                        self._reached_full = False
                        return True
                return False
            cur = t0.total_pages()
            if cur >= last:
                stalls += 1
                if stalls >= 2:
                    t0.backend.compact()  # freed objects left their pages partly used
                    stalls = 0
            last = cur

    # -- load -------------------------------------------------------------------------------

    def load(self, region: int, index: int, exclusive: bool | None = None, *,
             nowait: bool = False) -> bytes:
        """zswap_load(): return the page (PAGE_SIZE bytes) and, by default, drop the copy.

        ``exclusive`` overrides ``exclusive_loads`` for this load: False keeps the copy as a
        clean copy (the daemon's read faults: the page is placed write-protected), True
        frees it (write faults).  ``nowait``: raise WouldBlockError, changing nothing, when
        the page lives in a slow tier (the daemon then loads it on a worker thread).

        Raises EntryNotFoundError when the page has no swapped-out copy, CorruptPageError when
        the copy fails its check (the entry stays, so every later load fails too), TierIOError.
        O(1) plus one decompression or one disk read, under the lock.
        """
        with self._lock:
            reg = self._regions.get(region)
            if reg is None or not 0 <= index < reg.npages:
                raise self._not_found(region, reg, index)
            g = reg.base + index
            cl = reg.client
            words = self._words
            w = words[g]
            tag = w & TAG_MASK
            if not tag or w & CLEAN:
                raise EntryNotFoundError(f"page {index} of region {region} is not swapped out")
            if exclusive is None:
                exclusive = self._exclusive
            t0 = self._t0c
            if tag == TAG_TIER0 and exclusive and t0 is not None and not w & (SIDE | WB):
                # fast path: an exclusive load from the compressed tier (zswap_load)
                h = w >> KEY_SHIFT
                be = t0.backend
                data = be.read(h)
                length = (w >> LEN_SHIFT) & LEN_MASK
                if length == PAGE_SIZE:
                    page = bytes(data)
                else:
                    try:
                        page = t0._decompress(data, PAGE_SIZE)
                    except ValueError as exc:
                        raise CorruptPageError(
                            f"page {index} of region {region}: compressed object does not "
                            f"decompress: {exc}") from exc
                words[g] = 0  # before the free: a word never names a freed object
                be.free(h)
                # unlink(g), inlined
                prv = self._prev
                nxt = self._next
                p = prv[g]
                n = nxt[g]
                nxt[p] = n
                prv[n] = p
                prv[g] = nxt[g] = NIL
                cl.counts[0] -= 1
                cl.stored -= 1
                cl.compr_bytes -= length
                if length == PAGE_SIZE:
                    cl.incompressible -= 1
                if self._policy is not None:
                    self._policy.remove(g)
                cl.zswpin += 1
                return page
            table = self._table
            if tag == TAG_SAME:
                value = table.side.value(w) if w & SIDE else decode_value(w)
                cl.zswpin += 1
                if exclusive:
                    self._drop_locked(g, cl)
                else:
                    table.words[g] = w | CLEAN
                return fill_page(value)
            t = tag - TAG_TIER0
            tier = self._tiers[t]
            key = self._key_locked(g, w)
            if nowait and tier.slow:
                # at hand without waiting (a disk page in the page cache)?  Else a worker's.
                try:
                    page_now = None if w & WB or g in self._busy else tier.load_nowait(key)
                except (CorruptPageError, TierIOError):
                    self._tier_events[t]["load_errors"] += 1
                    raise
                if page_now is None:
                    raise WouldBlockError(f"page {index} of region {region} is in the "
                                          f"{tier.name} tier")
                self._loaded_locked(g, cl, t, w, exclusive)
                return page_now
            if not (tier.slow and not w & WB and g not in self._busy):
                try:
                    page = tier.load(key)
                except (CorruptPageError, TierIOError):
                    self._tier_events[t]["load_errors"] += 1
                    raise
                self._loaded_locked(g, cl, t, w, exclusive)
                return page
            self._begin_io_locked(g, cl, t, w)
        # A slow tier: the read runs outside the lock (the entry is busy, off its list).
        return self._end_load(region, g, cl, t, w, tier.load_batch([key]), exclusive)[0]

    def load_many(self, region: int, index: int, n: int, *, one_stretch: bool = False,
                  exclusive: bool | None = None, nowait: bool = False) -> list[bytes]:
        """The pages of the swapped-out run from ``index`` (at most ``n``), loaded in order.

        For readahead: consecutive entries of one slow tier (same-filled pages among them
        included, they need no I/O) are fetched with one ``load_batch`` (one round trip to a
        remote tier) outside the lock; other entries as :meth:`load`.  Stops at the first
        page that is not swapped out or fails to load (a failure of the first page raises as
        :meth:`load` does); with ``one_stretch``, also after one slow-tier run or one other
        page.  ``exclusive`` as for :meth:`load` (for the entries it loads with
        :meth:`load`).  ``nowait``: stop before the first page of a slow tier (raise
        WouldBlockError if it is the first).  O(n) plus the I/O.
        """
        out: list[bytes] = []
        while len(out) < n:
            i = index + len(out)
            with self._lock:
                reg = self._regions.get(region)
                if reg is None or not 0 <= i < reg.npages:
                    if out:
                        return out
                    raise self._not_found(region, reg, i)
                g0 = reg.base + i
                cl = reg.client
                words = self._words
                w0 = words[g0]
                tag = w0 & TAG_MASK
                if not tag or w0 & CLEAN:
                    if out:
                        return out
                    raise EntryNotFoundError(f"page {i} of region {region} is not swapped out")
                t = tag - TAG_TIER0
                # (g, word, slow) of a run in one slow tier, same-filled entries among them
                run: list[tuple[int, int, bool]] = []
                # nowait: a slow tier's pages one at a time (load takes those at hand)
                if tag >= TAG_TIER0 and self._tiers[t].slow and not nowait:
                    end = min(reg.base + reg.npages, g0 + n - len(out))
                    g = g0
                    while g < end:
                        w = words[g]
                        wt = w & TAG_MASK
                        if wt == TAG_SAME and not w & CLEAN:
                            run.append((g, w, False))
                        elif wt != tag or w & (CLEAN | WB) or g in self._busy:
                            break
                        else:
                            run.append((g, w, True))
                        g += 1
                if run:
                    keys = [self._key_locked(g, w) for g, w, slow in run if slow]
                    for g, w, slow in run:
                        if slow:
                            self._begin_io_locked(g, cl, t, w)
            if not run:
                try:
                    out.append(self.load(region, i, exclusive, nowait=nowait))
                except (CorruptPageError, TierIOError, WouldBlockError):
                    if out:
                        return out
                    raise
                if one_stretch:
                    return out
                continue
            try:
                pages = self._tiers[t].load_batch(keys)
            except (CorruptPageError, TierIOError):
                pages = []
            k = 0  # index of the next slow entry's page in ``pages``
            for j, (g, w, slow) in enumerate(run):
                try:
                    if slow:
                        got = self._end_load(region, g, cl, t, w, pages[k:k + 1], exclusive)
                        k += 1
                    else:
                        got = [self._load_same(region, g, cl, w, exclusive)]
                except (CorruptPageError, TierIOError, EntryNotFoundError):
                    # the rest of the run stays swapped out, as it was (or was dropped
                    # meanwhile: then _end_load frees its key and says so)
                    for g2, w2, slow2 in run[j + 1:]:
                        if slow2:
                            try:
                                self._end_load(region, g2, cl, t, w2, None)
                            except EntryNotFoundError:
                                pass
                    if out or j:
                        return out
                    raise
                out.append(got[0])
            if k < len(keys) or len(pages) < len(keys) or one_stretch:
                return out
        return out

    def _load_same(self, region: int, g: int, cl: _Client, w: int,
                   exclusive: bool | None = None) -> bytes:
        """Load same-filled entry ``g`` (word ``w`` when the run was read), as :meth:`load`
        does (``exclusive`` as there); EntryNotFoundError if the word changed meanwhile.
        O(1) under the lock."""
        with self._lock:
            table = self._table
            if table.words[g] != w or self._clients.get(cl.key) is not cl:
                raise EntryNotFoundError(f"entry {g} of region {region} changed meanwhile")
            value = table.side.value(w) if w & SIDE else decode_value(w)
            cl.zswpin += 1
            if self._exclusive if exclusive is None else exclusive:
                self._drop_locked(g, cl)
            else:
                table.words[g] = w | CLEAN
            return fill_page(value)

    def _begin_io_locked(self, g: int, cl: _Client, t: int, w: int) -> None:
        """Mark entry ``g`` of slow tier ``t`` busy for I/O outside the lock: off its list,
        WB set (a demotion skips it), its key's free deferred.  O(1)."""
        self._table.unlink(g)
        cl.counts[t] -= 1
        self._words[g] = w | WB
        self._busy[g] = -1
        self._io_inflight += 1

    def _end_load(self, region: int, g: int, cl: _Client, t: int, w: int,
                  pages: list[bytes] | None, exclusive: bool | None = None) -> list[bytes]:
        """Finish a slow load begun by :meth:`_begin_io_locked`.

        ``pages`` is ``[page]`` on success, ``[]`` when the read failed (the error is read
        again under the lock to be raised), None to just put the entry back untouched.
        ``exclusive`` as for :meth:`load`.
        """
        tier = self._tiers[t]
        err: Exception | None = None
        if pages is not None and not pages:
            try:  # the batch failed somewhere: get this key's own error (or its page)
                pages = [tier.load(self._key_for(g, w))]
            except (CorruptPageError, TierIOError) as exc:
                err = exc
        with self._lock:
            self._io_inflight -= 1
            orphan = self._busy.pop(g, -1)
            if orphan >= 0 or self._words[g] != w | WB or self._clients.get(cl.key) is not cl:
                # dropped while the read ran (region or client removed): the key is ours
                if orphan >= 0:
                    tier.free(orphan)
                raise EntryNotFoundError(f"entry {g} of region {region} was dropped meanwhile")
            if pages is None or err is not None:
                self._words[g] = w  # the entry stays (every later load fails the same way)
                self._link_new_locked(g, cl, t)
                if err is not None:
                    self._tier_events[t]["load_errors"] += 1
                    raise err
                return []
            self._words[g] = w | WB  # _loaded_locked sees an entry off its list
            self._loaded_locked(g, cl, t, w | WB, exclusive)
            return pages

    def _key_for(self, g: int, w: int) -> int:
        with self._lock:
            return self._key_locked(g, w)

    def _loaded_locked(self, g: int, cl: _Client, t: int, w: int,
                       exclusive: bool | None = None) -> None:
        """Account a load of entry ``g`` from tier ``t``; drop the copy or keep it CLEAN."""
        tier = self._tiers[t]
        table = self._table
        self._tier_events[t]["loads"] += 1
        if tier.compressed:
            cl.zswpin += 1
        else:
            cl.pswpin += 1
            self._disk_swapins += 1
            wb_at = self._recent_wb.pop(g, None)
            if (wb_at is not None
                    and self._clock() - wb_at <= self._config.shrinker_refault_window):
                self._soon += 1
        if self._exclusive if exclusive is None else exclusive:
            self._drop_locked(g, cl)
        else:
            table.words[g] = (w | CLEAN) & ~(REF | WB)
            self._make_clean_locked(g, cl, t, w)
            if w & WB:  # off its list (I/O, or a writeback that will see the change)
                self._link_new_locked(g, cl, t)
            else:
                table.unlink(g)
                table.push_head(cl.lists[t], g)
                if t == 0 and self._policy is not None:
                    self._policy.access(g)

    def store_clean(self, region: int, index: int) -> bool:
        """Swap the page out again by reusing its clean copy, without data or compression.

        For a page loaded with ``exclusive_loads=False`` and not invalidated since (the daemon
        knows it was not written: it was restored write-protected).  Returns False when there
        is no clean copy; the caller then stores the page's data.  The entry becomes the most
        recently swapped-out one of its tier, referenced.  O(1).
        """
        with self._lock:
            g, cl = self._lookup_locked(region, index)
            table = self._table
            w = table.words[g]
            if not w & CLEAN:
                return False
            tag = w & TAG_MASK
            if tag == TAG_SAME:
                table.words[g] = w & ~CLEAN
                cl.zswpout += 1
                return True
            t = tag - TAG_TIER0
            self._unclean_locked(g, cl, w)
            table.words[g] = (w & ~CLEAN) | (self._ref_bit if t == 0 else 0)
            table.unlink(g)
            table.push_head(cl.lists[t], g)
            if t == 0 and self._policy is not None:
                self._policy.access(g)
            if self._tiers[t].compressed:
                cl.zswpout += int(t == 0)
            return True

    def invalidate(self, region: int, index: int) -> None:
        """zswap_invalidate(): drop any stored copy of the page; no error if none.  O(1)."""
        with self._lock:
            g, cl = self._lookup_locked(region, index)
            self._drop_locked(g, cl)

    # -- batch operations (the reclaimer's eviction runs, the pager's readahead runs) ---------
    #
    # Each batch operation is specified by the loop of single-page operations it replaces (the
    # pure-Python reference below is exactly that loop), and the compiled implementation
    # (swapd/impl.py) must leave the same state: tests/test_native_differential.py compares
    # the table, the counters and the pool byte for byte.  The compiled variants compress (or
    # decompress) the whole run in one call with the GIL released, then do the bookkeeping of
    # the whole run under one acquisition of the layer lock; whatever a run meets that the
    # batch does not take (a full pool, a page for the next tier, a disk-tier page) goes
    # through the single-page operation, in order, so the order of effects is the loop's.

    def _run_view(self, region: int, start: int, n: int, buf: Page) -> memoryview:
        """A byte view of ``buf`` holding ``n`` pages, after checking the run is in the region."""
        view = memoryview(buf).cast("B") if isinstance(buf, memoryview) else memoryview(buf)
        if view.nbytes < n * PAGE_SIZE:
            raise ObjectSizeError(f"a run of {n} pages needs {n * PAGE_SIZE} bytes, "
                                  f"the buffer has {view.nbytes}")
        with self._lock:
            reg = self._regions.get(region)
            if reg is None or start < 0 or n < 0 or start + n > reg.npages:
                raise self._not_found(region, reg, start + n - 1 if reg else start)
        return view

    def store_batch(self, region: int, start: int, pages: Page) -> list[bool]:
        """Store the run of pages ``start .. start+n-1`` of ``region`` from ``pages`` (n whole
        pages, back to back): ``free_batch`` of the run, then ``store`` of each page in order;
        entry j of the result is False where that store was refused (StoreRejected, counted as
        ``store`` counts it).

        Raises ObjectSizeError when ``pages`` is not whole pages, EntryNotFoundError when the
        run is not inside the region; a region removed meanwhile refuses the rest.  O(n)
        compressions plus O(n) under the lock (more when the pool is full: see ``store``).
        """
        view = memoryview(pages).cast("B") if isinstance(pages, memoryview) else memoryview(pages)
        n, rem = divmod(view.nbytes, PAGE_SIZE)
        if rem:
            raise ObjectSizeError(f"store_batch: {view.nbytes} bytes is not whole pages")
        view = self._run_view(region, start, n, view)
        nat = _NATIVE
        if (nat is not None and self._fast_ok and self._t0c is not None
                and self._t0c.compressor.name == "lz4" and not self._caps):
            # (per-client limits, set_client_limits, are applied by ``store`` only)
            return self._store_batch_native(nat, region, start, n, view)
        out = [False] * n
        try:
            self.free_batch(region, start, n)
        except EntryNotFoundError:
            return out
        for j in range(n):
            try:
                self.store(region, start + j, view[j * PAGE_SIZE:(j + 1) * PAGE_SIZE])
            except StoreRejected:
                continue
            except EntryNotFoundError:
                break
            out[j] = True
        return out

    def _store_batch_native(self, nat: Any, region: int, start: int, n: int,
                            view: memoryview) -> list[bool]:
        """store_batch with one compiled compression pass and one lock hold (see above); with
        the compiled zsmalloc, the objects are allocated and written by one compiled call."""
        cfg = self._config
        comp = bytearray(n * PAGE_SIZE)
        lens = array("i", bytes(4 * n))
        vals = array("Q", bytes(8 * n))
        nat.compress_pages(view, n, comp, lens, vals, cfg.same_filled)
        t0 = self._t0c
        assert t0 is not None
        be = t0.backend
        maxobj = t0.max_object
        lower = cfg.store_incompressible and self._ntiers > 1  # a raw page or a bypass
        # What each page needs, decided before any change: objs[j] > 0 an object of that many
        # bytes (PAGE_SIZE: the raw page), 0 none (same-filled: vals[j]; or refused:
        # reject[j]); STOP: the single-page path from j on (a side-table value, a bypass).
        stop = PAGE_SIZE + 1
        objs = array("i", lens)
        reject = [False] * n
        for j, length in enumerate(lens):
            if 0 < length <= maxobj:
                continue
            objs[j] = 0
            if length < 0:
                if encode_value(vals[j]) is None:
                    objs[j] = stop
            elif lower and maxobj >= PAGE_SIZE:
                objs[j] = PAGE_SIZE
            elif lower:
                objs[j] = stop
            else:
                reject[j] = True
        fast = _fast_of(be)
        handles = array("Q", bytes(8 * n))
        cview = memoryview(comp)
        out = [False] * n
        j = 0
        with self._lock:
            reg = self._regions.get(region)
            if reg is None or start + n > reg.npages:
                return out
            cl = reg.client
            words = self._words
            nxt = self._next
            prv = self._prev
            s = cl.lists[0]
            ref = self._ref_bit
            base = reg.base + start
            drop = self._drop_locked
            if any(words[base:base + n]):
                for g in range(base, base + n):
                    if words[g]:
                        drop(g, cl)
            while j < n:
                length = objs[j]
                if length >= stop:
                    break
                done = j  # pages [j, done) have their objects (if any) in handles[]
                admit = be.total_pages() < self.limit_pages and not self._reached_full
                if length and not admit:
                    break  # admission and writeback: the single-page path
                if fast is not None and admit:
                    # no new page comes to the pool in this call (that is a slow path, where
                    # it stops), so the admission check holds for every object it allocates
                    done = fast.store_objects(comp, objs, handles, j)
                if done == j and length:
                    # one object through the pool's own malloc (a huge object, a new zspage)
                    o = j * PAGE_SIZE
                    data = cview[o:o + length] if length < PAGE_SIZE else view[o:o + length]
                    try:
                        h = be.malloc(length)
                    except (PoolExhaustedError, ObjectSizeError):
                        break
                    try:
                        be.write(h, data)
                    except BaseException:
                        be.free(h)
                        raise
                    handles[j] = h
                    done = j + 1
                elif done == j:
                    done = j + 1
                if done > j:
                    if fast is None and max(handles[j:done]) > KEY_MAX:
                        self._link_side_locked(cl, base, j, done, objs, handles, reject, vals)
                    else:
                        nobj, nsame, nbytes, nraw, nrej = nat.link_run(
                            words, nxt, prv, s, base, lens, objs, handles, vals, ref, j, done)
                        cl.counts[0] += nobj
                        cl.stored += nobj + nsame
                        cl.same += nsame
                        cl.compr_bytes += nbytes
                        cl.incompressible += nraw
                        cl.zswpout += nobj + nsame
                        cl.reject_compress_poor += nrej
                    for i in range(j, done):
                        out[i] = not reject[i]
                j = done
        for k in range(j, n):
            try:
                self.store(region, start + k, view[k * PAGE_SIZE:(k + 1) * PAGE_SIZE])
            except StoreRejected:
                continue
            except EntryNotFoundError:
                break
            out[k] = True
        return out

    def _link_side_locked(self, cl: _Client, base: int, j: int, done: int, objs: Any,
                          handles: Any, reject: list[bool], vals: Any) -> None:
        """link_run's work in Python, for a run whose keys may need the side table."""
        for i in range(j, done):
            g = base + i
            length = objs[i]
            if not length:
                if reject[i]:
                    cl.reject_compress_poor += 1
                    continue
                self._words[g] = TAG_SAME | encode_value(vals[i])  # type: ignore[operator]
                cl.same += 1
                cl.stored += 1
                cl.zswpout += 1
                continue
            self._words[g] = self._make_word(g, 0, handles[i], length) | self._ref_bit
            self._link_new_locked(g, cl, 0)
            self._count_locked(cl, 0, length)
            cl.zswpout += 1

    def load_run(self, region: int, start: int, n: int, into: Page,
                 exclusive: bool | None = None, *, nowait: bool = False) -> int:
        """Load the run of pages ``start .. start+n-1`` of ``region`` into ``into`` (page j at
        byte j * PAGE_SIZE), as ``load`` of each page in order; return how many were loaded.

        Stops before the first page that is not swapped out or cannot be loaded (its entry
        stays; ``load`` of it raises the reason) -- so a caller places the prefix and asks
        ``load`` about the rest.  Raises ObjectSizeError when ``into`` is too small,
        EntryNotFoundError when the run is not inside the region.  O(n) decompressions.
        ``exclusive`` and ``nowait`` as for :meth:`load` (``nowait``: stops before the first
        page of a slow tier).
        """
        view = self._run_view(region, start, n, into)
        nat = _NATIVE
        if exclusive is None:
            exclusive = self._exclusive
        native = nat is not None and self._fast_ok
        done = 0
        while done < n:
            if native:  # the compressed stretch in one compiled call
                done += self._load_run_native(nat, region, start + done, n - done,
                                              view[done * PAGE_SIZE:], exclusive)
                if done >= n:
                    break
            # the next stretch: a slow tier's run in one load_batch (one round trip to a
            # remote tier), or one page
            try:
                pages = self.load_many(region, start + done, n - done, one_stretch=native,
                                       exclusive=exclusive, nowait=nowait)
            except (CorruptPageError, TierIOError, EntryNotFoundError, WouldBlockError):
                return done
            for page in pages:
                view[done * PAGE_SIZE:(done + 1) * PAGE_SIZE] = page
                done += 1
            if not pages:
                return done
        return done

    def _load_run_native(self, nat: Any, region: int, start: int, n: int,
                         view: memoryview, exclusive: bool = True) -> int:
        """load_run with the run's objects decoded in one compiled call (see above); not
        ``exclusive``: the copies stay, CLEAN, at the head of their list (as :meth:`load`)."""
        t0 = self._t0c
        assert t0 is not None
        be = t0.backend
        fast = _fast_of(be)
        done = 0
        while done < n:
            with self._lock:
                reg = self._regions.get(region)
                if reg is None or start + n > reg.npages:
                    return done
                cl = reg.client
                words = self._words
                base = reg.base + start
                handles = array("Q", bytes(8 * (n - done)))
                values = array("Q", bytes(8 * (n - done)))
                got = nat.gather_run(words, base + done, n - done, handles, values)
                hv = memoryview(handles)[:got]
                if not got:
                    k = 0
                elif fast is not None:
                    k = fast.decode_objects(hv, memoryview(values)[:got], view, done * PAGE_SIZE)
                else:
                    items = [be.read(h) if h else v for h, v in zip(hv, values)]
                    k = nat.decode_pages(items, view, done * PAGE_SIZE)
                if not exclusive:  # the copies stay, CLEAN, at the head of their list
                    self._keep_clean_run_locked(cl, base + done, k)
                    return done + k  # load_run's load_many takes what the batch did not
                # free the k objects in order (the compiled zsmalloc frees what it can)
                i = 0
                while i < k:
                    if fast is not None:
                        i = fast.free_objects(hv[:k], i)
                        if i >= k:
                            break
                    h = handles[i]
                    if h:
                        be.free(h)
                    i += 1
                nobj, nsame, nbytes, nraw = nat.unlink_run(words, self._next, self._prev,
                                                           base + done, k)
                cl.counts[0] -= nobj
                cl.stored -= nobj + nsame
                cl.same -= nsame
                cl.compr_bytes -= nbytes
                cl.incompressible -= nraw
                cl.zswpin += k
                pol = self._policy
                if pol is not None:
                    for g in range(base + done, base + done + k):
                        if g in pol:
                            pol.remove(g)
                done += k
                if k < got:
                    return done  # an object that does not decode: ``load`` reports it
            if done < n:  # a page the batch does not take: load_run's load_many takes it,
                return done  # with the rest of its slow tier's run in one batch
        return done

    def _keep_clean_run_locked(self, cl: _Client, g0: int, k: int) -> None:
        """A non-exclusive load of entries ``g0 .. g0+k-1`` (tier 0 or same-filled, not
        CLEAN, not WB): each becomes a clean copy at the head of its list.  O(k)."""
        words = self._words
        table = self._table
        pol = self._policy
        for g in range(g0, g0 + k):
            w = words[g]
            cl.zswpin += 1
            if w & TAG_MASK == TAG_SAME:
                words[g] = w | CLEAN
                continue
            words[g] = (w | CLEAN) & ~(REF | WB)
            self._make_clean_locked(g, cl, 0, w)
            table.unlink(g)
            table.push_head(cl.lists[0], g)
            if pol is not None:
                pol.access(g)

    def free_batch(self, region: int, start: int, n: int) -> int:
        """``invalidate`` pages ``start .. start+n-1`` of ``region`` under one lock hold;
        return how many had a copy.  EntryNotFoundError when the run is not inside the
        region.  O(n)."""
        with self._lock:
            reg = self._regions.get(region)
            if reg is None or start < 0 or n < 0 or start + n > reg.npages:
                raise self._not_found(region, reg, start + n - 1 if reg else start)
            cl = reg.client
            words = self._words
            freed = 0
            for g in range(reg.base + start, reg.base + start + n):
                if words[g]:
                    self._drop_locked(g, cl)
                    freed += 1
            return freed

    # -- queries ------------------------------------------------------------------------------

    def state(self, region: int, index: int) -> EntryState:
        """Where the page's data is.  A page with only a clean copy is RESIDENT.  O(1)."""
        with self._lock:
            g, _ = self._lookup_locked(region, index)
            w = self._table.words[g]
        tag = w & TAG_MASK
        if not tag or w & CLEAN:
            return EntryState.RESIDENT
        if tag == TAG_SAME:
            return EntryState.SAME_FILLED
        return self._tiers[tag - TAG_TIER0].state

    def needs_io(self, region: int, index: int) -> bool:
        """Whether loading the swapped-out page needs a slow tier's I/O (a ``nowait`` load
        would raise WouldBlockError).  O(1)."""
        with self._lock:
            g, _ = self._lookup_locked(region, index)
            w = self._table.words[g]
            tag = w & TAG_MASK
            return tag >= TAG_TIER0 and not w & CLEAN and self._tiers[tag - TAG_TIER0].slow

    def has_copy(self, region: int, index: int) -> bool:
        """Whether any stored copy exists (a swapped-out entry or a clean copy).  O(1)."""
        with self._lock:
            g, _ = self._lookup_locked(region, index)
            return bool(self._table.words[g])

    def copies(self, region: int) -> bytes:
        """:meth:`has_copy` of every page of ``region`` at once, for a restart's recovery
        scan: one byte per page, 0 without a copy, 1 for a swapped-out copy, 2 for a clean
        copy (kept by a non-exclusive load; :meth:`store_clean`).  EntryNotFoundError for an
        unknown region.  O(npages) in C; only the words in the table's data runs are read
        (reading a hole would allocate it)."""
        with self._lock:
            reg = self._regions.get(region)
            if reg is None:
                raise self._not_found(region, None)
            out = bytearray(reg.npages)
            words = self._words
            for r in self._table.used(reg.base, reg.npages):  # the rest read as 0
                ws = words[r.start:r.stop]
                got = bytes(map(bool, ws))
                if any(map(CLEAN.__and__, ws)):
                    clean = bytes(map(bool, map(CLEAN.__and__, ws)))
                    got = (int.from_bytes(got, "little")
                           + int.from_bytes(clean, "little")).to_bytes(len(got), "little")
                out[r.start - reg.base:r.stop - reg.base] = got
            return bytes(out)

    def same_filled_value(self, region: int, index: int) -> int | None:
        """The fill value of a same-filled swapped-out page, else None.  O(1)."""
        with self._lock:
            g, _ = self._lookup_locked(region, index)
            w = self._table.words[g]
            if w & TAG_MASK != TAG_SAME or w & CLEAN:
                return None
            return self._table.side.value(w) if w & SIDE else decode_value(w)

    def swapped_run(self, region: int, index: int, max_pages: int) -> int:
        """How many consecutive pages from ``index`` are swapped out (for readahead).

        O(result).  Stops at the region's end, at ``max_pages``, or at a resident page.
        """
        with self._lock:
            g, _ = self._lookup_locked(region, index)
            reg = self._regions[region]
            end = min(reg.base + reg.npages, g + max_pages)
            words = self._table.words
            n = 0
            while g < end:
                w = words[g]
                if not w & TAG_MASK or w & CLEAN:
                    break
                n += 1
                g += 1
            return n

    # -- writeback ----------------------------------------------------------------------------

    def _pick_locked(self, n: int, src: int = 0) -> list[tuple[int, _Client, int]]:
        """Choose up to ``n`` demotion victims from tier ``src``; mark them WB, off the lists.

        Returns (g, client, word before WB) coldest first.  CLEAN victims are dropped here
        instead (the page is resident; its copy need not go anywhere).  Counts inversions.
        Tier 0 uses the demotion policy when one is set, and the second-chance bit; slower
        tiers take the tails of their lists.  O(n + rotations).
        """
        table = self._table
        words = table.words
        prv = table.prev
        out: list[tuple[int, _Client, int]] = []
        if src == 0 and self._policy is not None:
            for g in self._policy.victims(n):
                cl = self._client_of_locked(g)
                s = cl.lists[0]
                if prv[s] != g:
                    cl.lru_inversions += 1
                self._take_locked(g, cl, out, 0)
            return out
        nclients = len(self._rr)
        tried = 0
        second = self._config.second_chance and src == 0
        while len(out) < n and tried < nclients:
            pos = self._rr_tier[src] % nclients
            cl = self._clients[self._rr[pos]]
            if src == 0 and self._caps and not self._caps.get(cl.key, (None, True))[1]:
                self._rr_tier[src] = pos + 1  # memory.zswap.writeback = 0: never demoted
                tried += 1
                continue
            s = cl.lists[src]
            budget = cl.counts[src] + n  # rotations are bounded by one pass over the list
            while len(out) < n and budget > 0:
                g = prv[s]
                if g == s:
                    break
                budget -= 1
                w = words[g]
                if second and w & REF:
                    words[g] = w & ~REF
                    table.unlink(g)
                    table.push_head(s, g)
                    continue
                self._take_locked(g, cl, out, src)
            if len(out) < n:
                tried += 1
            self._rr_tier[src] = pos + 1  # the next batch starts with the next client
        return out

    def _take_locked(self, g: int, cl: _Client, out: list[tuple[int, _Client, int]],
                     src: int = 0) -> None:
        table = self._table
        w = table.words[g]
        if w & CLEAN:
            self._drop_locked(g, cl)
            cl.clean_dropped += 1
            return
        table.unlink(g)
        cl.counts[src] -= 1
        table.words[g] = w | WB
        out.append((g, cl, w))

    def _client_of_locked(self, g: int) -> _Client:
        for reg in self._regions.values():
            if reg.base <= g < reg.base + reg.npages:
                return reg.client
        raise InvariantError(f"entry {g} belongs to no region")

    def _room_pages(self, t: int) -> int | None:
        """Pages tier ``t`` can still take (None: unbounded).  O(1)."""
        tier = self._tiers[t]
        cap = tier.capacity_bytes()
        if cap is None:
            return None
        return max(0, (cap - tier.used_bytes()) >> PAGE_SHIFT)

    def writeback(self, max_pages: int, src: int = 0) -> int:
        """zswap_writeback_entry() in batches: demote up to ``max_pages`` coldest entries of tier
        ``src`` (the fastest by default) into tier ``src + 1``.  Returns the pages demoted.

        When the next tier lacks room and a tier follows it, its coldest entries are demoted
        first (the chain moves in LRU order, so no inversion arises anywhere in it).  A tier
        that is not ``available()`` takes nothing: demotion stops there.  Reads from a slow
        source tier and the store into the next tier run outside the layer lock (see the module
        comment).  A full or failing next tier leaves the entries where they were (at the cold
        end), counts reject_reclaim_fail, and stops writeback for a back-off interval (the module
        comment); meanwhile this returns 0 at once.  O(max_pages) plus the I/O.
        """
        if src + 1 >= self._ntiers or max_pages <= 0:
            return 0
        ts, td = self._tiers[src], self._tiers[src + 1]
        done = 0
        if self._wb_until[src + 1] >= 0:
            now = self._clock()
            with self._lock:
                if now < self._wb_until[src + 1]:
                    self._wb_skipped += 1
                    return 0
        while done < max_pages:
            if not td.available():
                with self._lock:
                    self._tier_events[src + 1]["unavailable_skips"] += 1
                return done
            batch = min(max_pages - done, self._config.writeback_batch)
            with self._lock:
                batch = min(batch, sum(c.counts[src] for c in self._clients.values()))
            if batch <= 0:
                return done
            room = self._room_pages(src + 1)
            if room is not None and src + 2 < self._ntiers:
                cap = (td.capacity_bytes() or 0) >> PAGE_SHIFT
                batch = max(1, min(batch, cap))
                if room < batch:
                    self.writeback(batch - room, src + 1)  # cascade down the chain first
            with self._lock:
                victims = self._pick_locked(batch, src)
                if not victims:
                    return done
                keys_src = [self._key_locked(g, w) for g, _cl, w in victims]
                blobs: list[bytes] | None = None
                if ts.slow:
                    for g, _cl, _w in victims:
                        self._busy[g] = -1
                elif ts.compressed:
                    get = cast(CompressedTier, ts).get
                    blobs = [get(k) for k in keys_src]
                else:
                    blobs = [ts.load(k) for k in keys_src]
                self._io_inflight += 1
            n = 0
            try:
                pages: list[bytes] = []
                ok = len(victims)
                if blobs is None:
                    try:
                        pages = ts.load_batch(keys_src)
                    except (CorruptPageError, TierIOError):
                        pages = []
                    ok = len(pages)
                elif ts.compressed:
                    decode = cast(CompressedTier, ts).decode
                    for i, b in enumerate(blobs):
                        try:
                            pages.append(decode(b))
                        except CorruptPageError:
                            ok = i
                            break
                else:
                    pages = blobs
                keys: list[int] = []
                if pages:
                    try:
                        keys = td.store_batch(pages)
                    except (TierFullError, TierIOError) as exc:
                        keys = []
                        with self._lock:
                            self._tier_events[src + 1]["store_errors"] += 1
                        self._writeback_failed(src + 1, exc)
                    else:
                        if self._wb_until[src + 1] >= 0:
                            self._writeback_resumed(src + 1)
                n = self._commit_writeback(victims, keys, ok, src)
            finally:
                with self._lock:
                    self._io_inflight -= 1
            done += n
            if n < len(victims):
                return done
        return done

    def _writeback_failed(self, dst: int, exc: BaseException) -> None:
        """Count a failed writeback batch into tier ``dst`` and back off (see the module
        comment).  A full tier with a tier below it is not backed off: the next demotion
        cascades into that one first (no I/O is tried while no slot is free)."""
        tier = self._tiers[dst]
        full = isinstance(exc, TierFullError) or getattr(exc, "errno", None) in _FULL_ERRNOS
        cfg = self._config
        now = self._clock()
        with self._lock:
            if full and dst + 1 < self._ntiers and isinstance(exc, TierFullError):
                self._wb_full += 1
                return
            b = self._wb_backoff[dst] = min(cfg.shrinker_backoff_max, max(
                cfg.shrinker_backoff_min, self._wb_backoff[dst] * 2))
            self._wb_until[dst] = now + b
            if full:
                self._wb_full += 1
                stop = not self._wb_stopped[dst]
                self._wb_stopped[dst] = True
            else:
                self._wb_io_errors += 1
                stop = False
        if stop:
            log.warning("%s tier full: writeback stopped, retried every %.1f s at most (%s)",
                        tier.name, cfg.shrinker_backoff_max, exc)
        elif not full:
            log.error("%s tier write failed, writeback paused %.2f s: %s", tier.name, b, exc)

    def _writeback_resumed(self, dst: int) -> None:
        with self._lock:
            was_stopped = self._wb_stopped[dst]
            self._wb_backoff[dst] = 0.0
            self._wb_until[dst] = -1.0
            self._wb_stopped[dst] = False
        if was_stopped:
            log.warning("the next tier takes pages again: writeback resumed")

    def _commit_writeback(self, victims: list[tuple[int, _Client, int]], keys: list[int],
                          ok: int, src: int = 0) -> int:
        ts, td = self._tiers[src], self._tiers[src + 1]
        dst = src + 1
        now = self._clock()
        written = 0
        with self._lock:
            table = self._table
            words = table.words
            recent = self._recent_wb
            keep = self._config.shrinker_recent
            busy = self._busy
            ev_out = self._tier_events[src]
            ev_in = self._tier_events[dst]
            back: list[tuple[int, int, _Client, int]] = []
            for i, (g, cl, w) in enumerate(victims):
                orphan = busy.pop(g, -1) if ts.slow else -1
                if orphan >= 0:
                    ts.free(orphan)  # dropped while its read ran
                cur = words[g] if g < len(words) else 0
                alive = cur == (w | WB) and self._clients.get(cl.key) is cl
                if i < len(keys):
                    if not alive:  # loaded, invalidated or replaced meanwhile
                        td.free(keys[i])
                        continue
                    old_key = self._key_locked(g, w)
                    words[g] = self._make_word(g, dst, keys[i], 0)  # then free what w named
                    if w & SIDE:
                        table.side.free(w)
                    ts.free(old_key)
                    self._uncount_locked(cl, src, w)
                    self._count_locked(cl, dst, 0)
                    self._link_new_locked(g, cl, dst)
                    cl.written_back_pages += 1
                    if src == 0:
                        cl.zswpwb += 1
                    if not td.compressed:
                        cl.pswpout += 1
                    ev_out["demoted_out"] += 1
                    ev_in["demoted_in"] += 1
                    written += 1
                    if keep:
                        recent[g] = now
                        if len(recent) > keep:
                            recent.popitem(last=False)
                elif alive:
                    words[g] = w
                    back.append((i, g, cl, w))
                    if i < ok:  # the next tier was full or failed: the kernel's reclaim failure
                        cl.reject_reclaim_fail += 1
            # Unwritten entries go back to the cold end, warmest first so the coldest ends last;
            # an entry that failed to decode goes to the hot end so it is not retried at once.
            for i, g, cl, _w in reversed(back):
                self._link_new_locked(g, cl, src, head=(i == ok))
        return written

    # -- shrinker ------------------------------------------------------------------------------

    def shrink_step(self) -> int:
        """One step of the proactive shrinker; return the pages written back.

        Writes back up to ``shrinker_batch`` pages when the pool is above
        ``shrinker_start_percent`` of its limit (or, in the kernel-like mode, after a store hit
        the limit, until the accept threshold).  Backs off (exponentially, by the injected
        clock) after a refault of a recently written-back page, and subtracts disk swapins from
        the eligible entries (zswap_shrinker_count's nr_disk_swapins).  O(batch) plus the I/O.
        """
        cfg = self._config
        t0 = self._t0c
        if self._ntiers < 2:
            return 0
        lower = self._shrink_lower_tiers()
        if t0 is None:
            return lower
        now = self._clock()
        with self._lock:
            if now < self._backoff_until:
                return 0
            if self._soon > self._soon_seen:
                self._soon_seen = self._soon
                self._backoff = min(cfg.shrinker_backoff_max,
                                    max(cfg.shrinker_backoff_min, self._backoff * 2))
                self._backoff_until = now + self._backoff
                self._backoffs += 1
                return 0
            self._backoff /= 2
            if self._backoff < cfg.shrinker_backoff_min:
                self._backoff = 0.0
            cur = t0.total_pages()
            target = self.accept_pages if self._shrink_requested else self.shrink_start_pages
            if cur <= target:
                self._shrink_requested = False
                return 0
            freeable = sum(c.counts[0] for c in self._clients.values())
            consumed = min(freeable, self._disk_swapins)
            self._disk_swapins -= consumed
            n = min(cfg.shrinker_batch, freeable - consumed)
        if n <= 0:
            return lower
        return lower + self.writeback(n)

    def _shrink_lower_tiers(self) -> int:
        """Demote one batch from every middle tier that is above ``shrinker_start_percent`` of
        its capacity, slowest first, so each keeps room for the demotions into it."""
        cfg = self._config
        moved = 0
        for t in range(self._ntiers - 2, 0, -1):
            tier = self._tiers[t]
            cap = tier.capacity_bytes()
            if cap and tier.used_bytes() * 100 > cap * cfg.shrinker_start_percent:
                moved += self.writeback(cfg.shrinker_batch, t)
        return moved

    # -- compaction, stats, checks ----------------------------------------------------------------

    def compact(self) -> int:
        """Compact the compressed tiers' backends; return pages freed.  Runs without the layer
        lock (handles stay valid across compaction, by the backend contract)."""
        freed = 0
        for t in self._tiers:
            if t.compressed:
                freed += int(cast(CompressedTier, t).compact())
        return freed

    def clients(self) -> list[Hashable]:
        """Client ids with at least one region or list."""
        with self._lock:
            return list(self._clients)

    def stats(self, client: Hashable | None = None) -> LayerStats:
        """A frozen snapshot, for one client or (None) in total.  O(clients)."""
        with self._lock:
            if client is not None:
                cl = self._clients.get(client)
                if cl is None:
                    raise EntryNotFoundError(f"no client {client!r}")
                cls_ = [cl]
                ev = {name: getattr(cl, name) for name in _EVENTS}
            else:
                cls_ = list(self._clients.values())
                ev = dict(self._departed)
                for c in cls_:
                    for name in _EVENTS:
                        ev[name] += getattr(c, name)
            stored = sum(c.stored for c in cls_)
            same = sum(c.same for c in cls_)
            compr = sum(c.compr_bytes for c in cls_)
            disk_pages = sum(sum(c.counts[1:]) for c in cls_)
            if client is None:
                pool = sum(t.used_bytes() for t in self._tiers if t.compressed)
                slots = sum(t.used_bytes() for t in self._tiers if not t.compressed) >> PAGE_SHIFT
            else:
                pool = compr
                slots = disk_pages
            return LayerStats(
                stored_pages=stored,
                pool_total_size=pool,
                same_filled_pages=same,
                stored_incompressible_pages=sum(c.incompressible for c in cls_),
                orig_data_size=stored << PAGE_SHIFT,
                compr_data_size=compr,
                mem_used_total=pool,
                disk_slots_used=slots,
                disk_pages=disk_pages,
                clean_kept_bytes=sum(c.clean_bytes for c in cls_),
                shrinker_backoffs=self._backoffs,
                refaults_soon=self._soon,
                writeback_io_errors=self._wb_io_errors,
                writeback_disk_full=self._wb_full,
                writeback_backoffs=self._wb_skipped,
                **ev,
            )

    def tier_stats(self) -> list[dict[str, Any]]:
        """One dict per tier of the chain, fastest first: name, state, entries, bytes used and
        capacity, availability, the layer's events for it, and the tier's own counters."""
        with self._lock:
            entries = [0] * self._ntiers
            for cl in self._clients.values():
                for t, c in enumerate(cl.counts):
                    entries[t] += c
            busy = [0] * self._ntiers
            for g in self._busy:
                tag = self._words[g] & TAG_MASK if g < len(self._words) else 0
                if tag >= TAG_TIER0:
                    busy[tag - TAG_TIER0] += 1
            events = [dict(e) for e in self._tier_events]
        out: list[dict[str, Any]] = []
        for t, tier in enumerate(self._tiers):
            out.append({"tier": t, "name": tier.name, "state": tier.state.value,
                        "entries": entries[t] + busy[t], "used_bytes": tier.used_bytes(),
                        "capacity_bytes": tier.capacity_bytes(),
                        "available": tier.available(), "slow": tier.slow,
                        **events[t], **tier.stats()})
        return out

    def _check(self) -> None:
        """Verify every invariant of the layer, its table, tiers and policy.  O(pages)."""
        with self._lock:
            table = self._table
            table._check()
            words = table.words
            seen_keys: list[set[int]] = [set() for _ in self._tiers]
            tier0_tracked = 0
            nclean = 0
            for cl in self._clients.values():
                members: set[int] = set()
                stored = same = compr = incompressible = clean = 0
                on_list = [0] * self._ntiers
                for rid in cl.regions:
                    reg = self._regions.get(rid)
                    if reg is None or reg.client is not cl:
                        raise InvariantError(f"client {cl.key!r}: region {rid} is not its own")
                    for g in itertools.chain.from_iterable(table.used(reg.base, reg.npages)):
                        w = words[g]
                        if not w:
                            continue
                        tag = w & TAG_MASK
                        if tag == TAG_SAME:
                            same += 1
                            stored += 1
                            if w & (WB | REF):
                                raise InvariantError(f"same-filled entry {g} has WB/REF")
                            continue
                        if tag < TAG_TIER0 or tag - TAG_TIER0 >= self._ntiers:
                            raise InvariantError(f"entry {g}: bad tag {tag}")
                        t = tag - TAG_TIER0
                        key = self._key_locked(g, w)
                        if key in seen_keys[t]:
                            raise InvariantError(f"tier {t} key {key} used twice")
                        seen_keys[t].add(key)
                        if w & CLEAN and t == 0 and self._tiers[0].compressed:
                            clean += (w >> LEN_SHIFT) & LEN_MASK
                            nclean += 1
                            if self._clean.get(g) is not cl:
                                raise InvariantError(f"clean entry {g} is not indexed")
                        if self._tiers[t].compressed:
                            length = (w >> LEN_SHIFT) & LEN_MASK
                            compr += length
                            if t == 0:
                                stored += 1
                            if length == PAGE_SIZE:
                                incompressible += 1
                        if not w & WB:
                            members.add(g)
                            on_list[t] += 1
                            if t == 0:
                                tier0_tracked += 1
                        elif table.prev[g] != NIL:
                            raise InvariantError(f"entry {g} under writeback is on a list")
                for t, s in enumerate(cl.lists):
                    lst = table.check_list(s)
                    if len(lst) != cl.counts[t] or len(lst) != on_list[t]:
                        raise InvariantError(
                            f"client {cl.key!r} tier {t}: list has {len(lst)}, count "
                            f"{cl.counts[t]}, words say {on_list[t]}")
                    for g in lst:
                        if g not in members or words[g] & TAG_MASK != TAG_TIER0 + t:
                            raise InvariantError(f"client {cl.key!r} tier {t}: stray entry {g}")
                if clean != cl.clean_bytes:
                    raise InvariantError(f"client {cl.key!r}: clean bytes {cl.clean_bytes} "
                                         f"!= recount {clean}")
                if (stored, same, compr, incompressible) != (
                        cl.stored, cl.same, cl.compr_bytes, cl.incompressible):
                    raise InvariantError(
                        f"client {cl.key!r}: gauges {(cl.stored, cl.same, cl.compr_bytes)} "
                        f"!= recount {(stored, same, compr)}")
            if nclean != len(self._clean):
                raise InvariantError(f"{len(self._clean)} clean copies indexed, {nclean} found")
            for t, tier in enumerate(self._tiers):
                tier._check()
                used = tier.keys_in_use()
                if used is None:
                    continue
                if not tier.slow:
                    if used != len(seen_keys[t]):
                        raise InvariantError(f"tier {t} ({tier.name}) holds {used} objects, "
                                             f"table has {len(seen_keys[t])}")
                elif used < len(seen_keys[t]) or (not self._io_inflight
                                                  and used != len(seen_keys[t])):
                    raise InvariantError(
                        f"tier {t} ({tier.name}): {used} keys in use, table has "
                        f"{len(seen_keys[t])}")
            if self._policy is not None:
                self._policy._check()
                if len(self._policy) != tier0_tracked:
                    raise InvariantError(
                        f"policy tracks {len(self._policy)}, tier 0 lists hold {tier0_tracked}")

    def close(self, *, keep_state: bool = False) -> None:
        """Free every entry and close the tiers.  The layer must not be used afterwards; stop
        a ShrinkerThread that drives it first.  With ``keep_state`` (implied for a read-only
        adoption) nothing is freed: the regions are only unmapped and their fds closed, so
        another holder of the fds keeps every page."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            clients = list(self._clients)
        if not keep_state and self._table.region.writable:
            for c in clients:
                self.remove_client(c)
        for t in self._tiers:
            if keep_state:
                t.detach()  # the stored data stays for the holder of the state
            else:
                t.close()
        self._table.close()

    def __enter__(self) -> SwapLayer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
