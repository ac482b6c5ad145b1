"""The allocator-owned writeback experiment: an LRU of allocator pages against the layer's
per-object LRU, on the same fault/eviction stream.

Question.  swapd's layer keeps one LRU of *objects* (compressed pages) above the
allocators, and demotes the coldest objects one by one.  The alternative, which
Linux ran from 2011 (zbud) to 2023 (zsmalloc), is *allocator-owned writeback*: the
allocator keeps an LRU of its own pages, ordered by the most recent object added
to each page, and when the pool is full it writes back every object of the
coldest page so that the page itself is freed (mm/zbud.c zbud_reclaim_page(),
mm/z3fold.c z3fold_reclaim_page(), and the 2022 series "zsmalloc: add a LRU to
zs_pool to keep track of zspages in LRU order" / "zsmalloc: implement writeback
mechanism for zsmalloc": zs_malloc() moves the zspage to the head of pool->lru,
zs_reclaim_page() takes the tail zspage and calls the evict handler for each of
its objects).  This module runs both on one stream so the argument is measured.

Design.  A resident set of ``capacity`` pages ordered by a reclaim policy (as in
full mode) turns the trace into a stream of evictions (stores) and refaults
(loads) below it.  The stream is fed, request by request, to two tier models
that differ only in how they choose what to write back:

* ``object-lru`` (the layer's way): objects in store order; writeback takes the
  coldest object.
* ``page-lru`` (the allocator's way): allocator pages ordered by their newest
  object (a store moves its page to the head, as zs_malloc's move_to_front
  does); writeback takes the tail page and writes back all of its objects, the
  coldest first, which frees the page.

Both models store into a real backend (the allocator's own placement decides
which objects share a page) through a real compressor, with the same pool
limit and the same admission: a store into a full pool first writes back until
the pool is under zswap's accept threshold (90% of the limit); the disk tier is
unbounded.  Loads are exclusive (the object is freed).  Same-filled pages are
kept outside the pool and incompressible pages are stored raw when the backend
takes a whole page (else they go straight to disk), as in the layer.  Both
compact the way the layer does: when two writeback rounds free no page
(objects freed one by one leave their pages partly used), ``backend.compact()``
runs; the page LRU then rebuilds its lists, each page as recent as its newest
object.  A third column runs the same trace through the
real layer (full mode, its defaults: referenced-bit second chance, shrinker),
to show how close the ``object-lru`` model is to the layer itself.

Measured, with the same code for both models: writebacks (objects demoted),
LRU inversions (an object written back while an object stored earlier --
colder in store order -- stays in the pool), refaults served from the disk
tier (the cost of writing back the wrong objects), pages freed by writeback,
and modelled time (the cost table: a fault, plus a decompression or a disk
read; an eviction and a compression per store; a decompression and a disk
write per writeback).

Which page holds an object is asked of the backend: its optional
``page_of(handle)`` method, or, for the three shipped backends, their object
records (:func:`page_of`).  Invariants (``_check`` of each model): every pool
object is on exactly one page list and in the store order, the page lists hold
exactly the live handles, the backend's own ``_check`` passes.  One thread;
no locks of its own.
"""

from __future__ import annotations

import importlib
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from typing import Any

from swapd.arena import PAGE_SIZE
from swapd.compress import same_filled_value
from swapd.errors import ConfigError, InvariantError
from swapd.plugins import make_backend, make_policy
from swapd.sim.contents import PageContents, PageSource
from swapd.sim.costs import DEFAULT_COSTS, CostTable
from swapd.sim.trace import Request

ACCEPT_PERCENT = 90  # zswap's accept_thr_percent default


@dataclass(frozen=True)
class WritebackConfig:
    """Parameters of the experiment (see the module docstring)."""

    policy: str = "lru"
    capacity: int = 1024
    backend: str = "zsmalloc"
    compressor: str = "lz4"
    pool_bytes: int = 2 << 20
    seed: int = 0
    backend_options: tuple[tuple[str, Any], ...] = ()
    real_layer: bool = True  # also run the trace through the real layer (full mode)

    def __post_init__(self) -> None:
        if self.capacity <= 0:
            raise ConfigError(f"capacity must be positive, got {self.capacity}")
        if self.pool_bytes < PAGE_SIZE:
            raise ConfigError(f"pool limit must be at least one page, got {self.pool_bytes}")


def page_of(backend: Any, handle: int) -> Hashable:
    """The allocator page (zspage for zsmalloc) that holds ``handle``'s object.

    Uses the backend's ``page_of`` method when it has one; for the shipped
    backends, their object records.  ConfigError for a backend that says neither.
    """
    f = getattr(backend, "page_of", None)
    if f is not None:
        return f(handle)  # type: ignore[no-any-return]
    return _page_lookup(backend)(handle)


def _page_lookup(backend: Any) -> Callable[[int], Hashable]:
    """A function handle -> page for a shipped backend (its records, read-only)."""
    mod = importlib.import_module(type(backend).__module__)
    if hasattr(backend, "_by_index") and hasattr(mod, "CLASS_BITS"):
        mask = (1 << mod.CLASS_BITS) - 1
        by_index = backend._by_index

        def zs(h: int) -> Hashable:
            rec = by_index[h & mask].handles[h]
            return id(rec[4])  # the ZsPage object: one LRU entry per zspage

        return zs
    objs = getattr(backend, "_objs", None)
    if isinstance(objs, dict):
        def pfn(h: int) -> Hashable:
            return int(objs[h][2])  # (offset, size, pfn, ...) in zbud and z3fold

        return pfn
    raise ConfigError(f"backend {backend.name!r} does not say which page holds an object: "
                      f"give it a page_of(handle) method to run the writeback experiment")


class _TierModel:
    """A compressed tier on a real backend, writing back into an unbounded disk tier."""

    name = "?"

    def __init__(self, cfg: WritebackConfig, costs: CostTable) -> None:
        from swapd.compress import get_compressor

        pool_pages = -(-cfg.pool_bytes // PAGE_SIZE)
        self.backend = make_backend(cfg.backend, **{**dict(cfg.backend_options),
                                                    "max_pages": 2 * pool_pages + 256})
        self.comp = get_compressor(cfg.compressor)
        self.limit = pool_pages
        self.accept = pool_pages * ACCEPT_PERCENT // 100
        self.costs = costs
        self._page = _page_lookup(self.backend) if not hasattr(self.backend, "page_of") \
            else self.backend.page_of
        self.order: OrderedDict[int, int] = OrderedDict()  # page -> handle, store order
        self.stamp: dict[int, int] = {}  # page -> store sequence number (pool objects)
        self.disk: set[int] = set()
        self.same: set[int] = set()  # same-filled pages: no pool memory, as in the layer
        self.compacted = 0
        self.stores = self.loads_pool = self.loads_disk = self.writebacks = 0
        self.inversions = self.bypass = self.pages_freed = self.max_pages = 0
        self.time_us = 0.0

    # the one inversion check, shared by both models
    def _write_back(self, page: int) -> None:
        """Demote ``page``'s object to disk; counts an inversion if a colder one stays."""
        order = self.order
        if next(iter(order)) != page:
            self.inversions += 1
        h = order.pop(page)
        del self.stamp[page]
        self._forget(page, h)
        self.backend.free(h)
        self._after_free()
        self.disk.add(page)
        self.writebacks += 1
        self.time_us += self.costs.decompress_us + self.costs.disk_write_us

    def _forget(self, page: int, handle: int) -> None:
        """Hook: the object of ``page`` leaves the pool (before its handle is freed)."""

    def _remember(self, page: int, handle: int) -> None:
        """Hook: a new object of ``page`` was stored at ``handle``."""

    def _compacted(self) -> None:
        """Hook: the backend compacted (objects may have moved to other pages)."""

    def _after_free(self) -> None:
        """Hook: an object was freed (a backend may move its page's other objects)."""

    def _reclaim_one(self) -> int:
        """Write back something; return the objects written back (0: nothing left)."""
        raise NotImplementedError

    def store(self, page: int, data: bytes) -> None:
        """zswap_store() with shrink-until-accept admission, as the layer does it: same-filled
        pages kept outside the pool, incompressible ones raw when the backend takes a whole
        page, else straight to disk.  O(1) amortized plus the writebacks."""
        self.stores += 1
        if data[:8] == data[-8:] and same_filled_value(data) is not None:
            self.same.add(page)
            return
        c = self.comp.compress(data)
        self.time_us += self.costs.evict_us + self.costs.compress_us
        be = self.backend
        if len(c) >= PAGE_SIZE or len(c) > be.max_size:
            if be.max_size < PAGE_SIZE:
                self.disk.add(page)
                self.bypass += 1
                self.time_us += self.costs.disk_write_us
                return
            c = bytes(data)
        if be.total_pages() >= self.limit:
            before = be.total_pages()
            stalls = 0
            last = before
            while be.total_pages() > self.accept and self._reclaim_one():
                cur = be.total_pages()
                if cur >= last:  # writeback freed no page: compact, as the layer does
                    stalls += 1
                    if stalls >= 2:
                        self.compacted += be.compact()
                        self._compacted()
                        stalls = 0
                last = cur
            self.pages_freed += max(0, before - be.total_pages())
        h = be.malloc(len(c))
        be.write(h, c)
        self.order[page] = h
        self.stamp[page] = self.stores
        self._remember(page, h)
        n = be.total_pages()
        if n > self.max_pages:
            self.max_pages = n

    def load(self, page: int) -> str:
        """Exclusive load; returns the tier it came from ("compressed" or "disk")."""
        if page in self.same:
            self.same.remove(page)
            self.loads_pool += 1
            self.time_us += self.costs.fault_us
            return "same_filled"
        h = self.order.pop(page, None)
        if h is not None:
            del self.stamp[page]
            self._forget(page, h)
            self.backend.free(h)
            self._after_free()
            self.loads_pool += 1
            self.time_us += self.costs.fault_us + self.costs.decompress_us
            return "compressed"
        self.disk.remove(page)  # KeyError: the stream is inconsistent
        self.loads_disk += 1
        self.time_us += self.costs.fault_us + self.costs.disk_read_us
        return "disk"

    def result(self, accesses: int, first_touch_us: float) -> dict[str, Any]:
        t = self.time_us + first_touch_us
        return {"mode": self.name, "stores": self.stores, "writebacks": self.writebacks,
                "lru_inversions": self.inversions, "refaults_compressed": self.loads_pool,
                "refaults_disk": self.loads_disk, "stored_to_disk_directly": self.bypass,
                "pages_freed_by_writeback": self.pages_freed,
                "pages_compacted": self.compacted,
                "max_pool_pages": self.max_pages, "pool_limit_pages": self.limit,
                "modelled_time_s": t * 1e-6,
                "modelled_us_per_access": t / accesses if accesses else 0.0}

    def _check(self) -> None:
        st = self.backend.stats()
        if st.objects != len(self.order):
            raise InvariantError(f"{self.name}: backend holds {st.objects} objects, model "
                                 f"{len(self.order)}")
        if self.disk & set(self.order) or self.same & set(self.order):
            raise InvariantError(f"{self.name}: a page is both in the pool and on disk")
        self.backend._check()

    def close(self) -> None:
        self.backend.close()


class ObjectLRU(_TierModel):
    """The layer's way: write back the coldest object."""

    name = "object-lru"

    def _reclaim_one(self) -> int:
        if not self.order:
            return 0
        self._write_back(next(iter(self.order)))
        return 1


class PageLRU(_TierModel):
    """The allocator's way: write back every object of the least recently stored-into page."""

    name = "page-lru"

    def __init__(self, cfg: WritebackConfig, costs: CostTable) -> None:
        super().__init__(cfg, costs)
        self.lru: OrderedDict[Hashable, dict[int, None]] = OrderedDict()  # tail first
        self.where: dict[int, Hashable] = {}  # trace page -> allocator page
        self._freed_from: Hashable | None = None  # page of the object just freed

    def _remember(self, page: int, handle: int) -> None:
        pg = self._page(handle)
        objs = self.lru.get(pg)
        if objs is None:
            objs = self.lru[pg] = {}
        else:
            self.lru.move_to_end(pg)  # move_to_front(): the newest object decides
        objs[page] = None
        self.where[page] = pg

    def _forget(self, page: int, handle: int) -> None:
        pg = self.where.pop(page)
        objs = self.lru[pg]
        del objs[page]
        if not objs:
            del self.lru[pg]
        else:
            self._freed_from = pg

    def _after_free(self) -> None:
        """z3fold compacts on free and may move the page's other objects elsewhere: follow
        them (a moved object joins its new page, which keeps its LRU position).  O(objects
        of one page)."""
        pg = self._freed_from
        self._freed_from = None
        if pg is None or pg not in self.lru:
            return
        for p in list(self.lru[pg]):
            now = self._page(self.order[p])
            if now != pg:
                del self.lru[pg][p]
                dst = self.lru.get(now)
                if dst is None:
                    dst = self.lru[now] = {}
                dst[p] = None
                self.where[p] = now
        if not self.lru[pg]:
            del self.lru[pg]

    def _reclaim_one(self) -> int:
        if not self.lru:
            return 0
        objs = next(iter(self.lru.values()))
        victims = sorted(objs, key=self.stamp.__getitem__)  # coldest first
        for p in victims:
            self._write_back(p)
        return len(victims)

    def _compacted(self) -> None:
        """Objects moved: rebuild the page lists, each page as recent as its newest object
        (zsmalloc's migration keeps a zspage's LRU position the same way)."""
        newest: dict[Hashable, int] = {}
        objs: dict[Hashable, dict[int, None]] = {}
        self.where.clear()
        for p, h in self.order.items():
            pg = self._page(h)
            objs.setdefault(pg, {})[p] = None
            self.where[p] = pg
            newest[pg] = max(newest.get(pg, -1), self.stamp[p])
        self.lru = OrderedDict((pg, objs[pg]) for pg in sorted(objs, key=newest.__getitem__))

    def _check(self) -> None:
        super()._check()
        held = {p for objs in self.lru.values() for p in objs}
        if held != set(self.order) or set(self.where) != held:
            raise InvariantError("page-lru: page lists and pool objects differ")
        for p, h in self.order.items():
            if self._page(h) != self.where[p]:
                raise InvariantError(f"page-lru: object of page {p} moved to another page")


_NEW, _RES, _OUT = 0, 1, 2


def run_writeback_experiment(requests: Iterable[Request], cfg: WritebackConfig,
                             corpus: PageSource, costs: CostTable = DEFAULT_COSTS,
                             check: bool = True) -> dict[str, Any]:
    """Run both tier models (and, with ``cfg.real_layer``, the real layer) on ``requests``.

    Returns ``{"config", "accesses", "hits", "first_touch", "evictions", "modes": [...]}``,
    one dict per mode with the counters of the module docstring.  O(n) model steps.
    """
    reqs = list(requests)
    policy = make_policy(cfg.policy, cfg.capacity)
    contents = PageContents(corpus, cfg.seed)
    models: list[_TierModel] = []
    try:
        models = [ObjectLRU(cfg, costs), PageLRU(cfg, costs)]
        state: dict[int, int] = {}
        version: dict[int, int] = {}
        resident = hits = first = evictions = 0
        first_us = 0.0
        cap = cfg.capacity
        for req in reqs:
            p = req.page
            st = state.get(p, _NEW)
            if st == _RES:
                policy.access(p)
                hits += 1
            else:
                if st == _NEW:
                    first += 1
                    first_us += costs.fault_us
                else:
                    for m in models:
                        m.load(p)
                over = resident + 1 - cap
                if over > 0:
                    for v in policy.victims(over):
                        data = contents.data(v, version.get(v, 0))
                        for m in models:
                            m.store(v, data)
                        state[v] = _OUT
                        resident -= 1
                        evictions += 1
                policy.insert(p)
                state[p] = _RES
                resident += 1
            if req.op == "w":
                version[p] = version.get(p, 0) + 1
        n = len(reqs)
        modes = []
        for m in models:
            if check:
                m._check()
            modes.append(m.result(n, first_us))
    finally:
        for m in models:
            m.close()
    if cfg.real_layer:
        modes.append(_real_layer(reqs, cfg, corpus, costs))
    return {"config": {"policy": cfg.policy, "capacity": cfg.capacity, "backend": cfg.backend,
                       "compressor": cfg.compressor, "pool_bytes": cfg.pool_bytes,
                       "backend_options": dict(cfg.backend_options),
                       "accept_percent": ACCEPT_PERCENT, "costs": costs.source},
            "accesses": len(reqs), "hits": hits, "first_touch": first,
            "evictions": evictions, "modes": modes}


def _real_layer(reqs: list[Request], cfg: WritebackConfig, corpus: PageSource,
                costs: CostTable) -> dict[str, Any]:
    from swapd.sim.full import FullConfig, run_full

    distinct = len({r.page for r in reqs})
    fc = FullConfig(policy=cfg.policy, capacity=cfg.capacity, backend=cfg.backend,
                    compressor=cfg.compressor, pool_bytes=cfg.pool_bytes,
                    disk_bytes=max(1 << 20, (distinct + 64) * PAGE_SIZE), seed=cfg.seed,
                    backend_options=cfg.backend_options, compact_interval_s=0.0,
                    trace_pages=distinct)
    d = run_full(reqs, fc, corpus, costs).to_dict()
    bt = d["refaults_by_tier"]
    return {"mode": "layer (real)", "stores": d["evictions"], "writebacks": d["writebacks"],
            "lru_inversions": d["lru_inversions"],
            "refaults_compressed": bt.get("compressed", 0) + bt.get("same_filled", 0),
            "refaults_disk": bt.get("disk", 0),
            "stored_to_disk_directly": d["layer"].get("reject_compress_poor", 0),
            "pages_freed_by_writeback": None, "pages_compacted": d["pages_compacted"],
            "max_pool_pages": None,
            "pool_limit_pages": -(-cfg.pool_bytes // PAGE_SIZE),
            "modelled_time_s": d["modelled_time_s"],
            "modelled_us_per_access": d["modelled_us_per_access"]}


ROWS = (("stores", "stores (evictions into the tiers)"), ("writebacks", "writebacks (objects)"),
        ("lru_inversions", "LRU inversions"),
        ("refaults_compressed", "refaults from the compressed tier (or same-filled)"),
        ("refaults_disk", "refaults from disk (slower tier)"),
        ("stored_to_disk_directly", "stored to disk directly (incompressible)"),
        ("pages_freed_by_writeback", "pool pages freed by writeback"),
        ("pages_compacted", "pool pages freed by compaction"),
        ("max_pool_pages", "most pool pages"),
        ("modelled_us_per_access", "modelled time per access (us)"))


def print_table(res: dict[str, Any]) -> None:
    """Print the experiment's table (one column per mode)."""
    from rich.console import Console
    from rich.table import Table

    c = res["config"]
    t = Table(title=f"allocator-owned writeback vs per-object LRU: {res.get('trace', '')}\n"
                    f"{c['policy']}, capacity {c['capacity']}, {c['backend']}/{c['compressor']}"
                    f", pool {c['pool_bytes'] / (1 << 20):g} MiB; {res['accesses']} accesses, "
                    f"{res['evictions']} evictions")
    t.add_column("")
    for m in res["modes"]:
        t.add_column(m["mode"], justify="right")
    for key, label in ROWS:
        vals = []
        for m in res["modes"]:
            v = m.get(key)
            vals.append("-" if v is None else f"{v:.2f}" if isinstance(v, float) else str(v))
        t.add_row(label, *vals)
    Console().print(t)
