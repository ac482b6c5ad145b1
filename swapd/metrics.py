"""Prometheus exposition of a running daemon's counters (``swapd exporter``).

Design.  :class:`SwapdCollector` is a prometheus-client collector that, at
scrape time, sends one ``stats`` request (scope ``all``) over the daemon's
control socket and turns the reply into metric families.  Nothing is kept or
counted in between: the daemon's fault path is never touched by a scrape except
through that one request, which the daemon's loop answers between events (its
cost on the fault path is measured by ``swapd bench exporter``).

Names follow Prometheus' conventions over the kernel's counter names: events
are counters with ``_total`` (``swapd_zswpout_total``,
``swapd_lru_inversions_total``), sizes are gauges in bytes
(``swapd_pool_total_size_bytes``), page counts keep the kernel's ``_pages``
names (``swapd_stored_pages``).  Totals have no labels; the same figures per
client are ``swapd_client_*`` with labels ``session``, ``pid`` and ``name``
(two names, so that summing a family never double counts).  One meaning per
name: ``swapd_pool_total_size_bytes`` is the pool's memory (backend pages, as
zswap's ``pool_total_size``), while a client's share is its compressed bytes,
``swapd_client_compr_data_size_bytes``.

The fault service time is the histogram ``swapd_fault_duration_seconds``
(``swapd_client_fault_duration_seconds`` per client).  The daemon keeps, per
session, 64 counts indexed by ``ns.bit_length()`` (bucket i holds service
times in [2^(i-1), 2^i) ns), incremented by the loop thread alone -- no lock,
one list store per fault -- plus the sum in ns.  The exposition turns them into
cumulative buckets with ``le`` = 2^i ns for i in 10..30 (1.02 us .. 1.07 s)
and ``+Inf``.

A scrape that cannot reach the daemon exposes ``swapd_up 0`` and nothing
else; the next scrape reconnects.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from swapd.errors import SwapdError
from swapd.pages import PAGE_SIZE

__all__ = ["HIST_MAX_LOG2", "HIST_MIN_LOG2", "LAYER_GAUGES", "StatsSource", "SwapdCollector",
           "histogram_buckets", "layer_metric_name"]

HIST_MIN_LOG2 = 10  # first bucket: le = 2^10 ns
HIST_MAX_LOG2 = 30  # last finite bucket: le = 2^30 ns

# LayerStats fields that are levels, not events; the value's unit decides the suffix.
LAYER_GAUGES: Mapping[str, str] = {
    "stored_pages": "", "same_filled_pages": "", "stored_incompressible_pages": "",
    "disk_slots_used": "", "disk_pages": "",
    "pool_total_size": "_bytes", "orig_data_size": "_bytes", "compr_data_size": "_bytes",
    "mem_used_total": "_bytes",
}
# Per client these names mean something else than in total (the client's compressed bytes,
# not the pool's pages): only compr_data_size is exposed per client.
_TOTAL_ONLY = frozenset({"pool_total_size", "mem_used_total", "disk_slots_used"})

StatsSource = Callable[[], dict[str, Any]]


def layer_metric_name(key: str) -> tuple[str, bool]:
    """``(name without prefix, is_counter)`` of a LayerStats field."""
    if key in LAYER_GAUGES:
        return key + LAYER_GAUGES[key], False
    return key + "_total", True


def histogram_buckets(counts: list[int]) -> list[tuple[str, float]]:
    """Cumulative ``(le, count)`` pairs from the daemon's log2 counts (see the module doc)."""
    out: list[tuple[str, float]] = []
    acc = sum(counts[:HIST_MIN_LOG2 + 1])
    out.append((repr((1 << HIST_MIN_LOG2) / 1e9), float(acc)))
    for i in range(HIST_MIN_LOG2 + 1, HIST_MAX_LOG2 + 1):
        acc += counts[i] if i < len(counts) else 0
        out.append((repr((1 << i) / 1e9), float(acc)))
    out.append(("+Inf", float(sum(counts))))
    return out


class ClientSource:
    """Fetches ``stats("all")`` over one kept connection, reconnecting after a failure."""

    def __init__(self, socket_path: str | None, name: str = "swapd-exporter") -> None:
        self.socket_path = socket_path
        self.name = name
        self._client: Any = None
        self._lock = threading.Lock()  # one request in flight per connection

    def __call__(self) -> dict[str, Any]:
        from swapd.client import connect

        with self._lock:
            if self._client is None:
                self._client = connect(self.socket_path, name=self.name)
            try:
                stats: dict[str, Any] = self._client.stats("all", latency=False)
                return stats
            except (SwapdError, OSError):
                self.close_locked()
                raise

    def close_locked(self) -> None:
        """Drop the connection (caller holds the lock, or no other thread uses it)."""
        if self._client is not None:
            self._client.close()
            self._client = None

    def close(self) -> None:
        """Close the kept connection."""
        with self._lock:
            self.close_locked()


class SwapdCollector(Collector):
    """A prometheus-client collector over ``source()`` (one ``stats`` reply per scrape)."""

    def __init__(self, source: StatsSource) -> None:
        self.source = source
        self.errors = 0  # scrapes that could not reach the daemon

    def describe(self) -> list[Metric]:
        """Nothing up front: the families depend on the daemon's reply (unchecked registry)."""
        return []

    def collect(self) -> Iterator[Metric]:
        """Scrape the daemon once and yield every family."""
        up = GaugeMetricFamily("swapd_up", "1 if the daemon answered this scrape")
        try:
            stats = self.source()
        except (SwapdError, OSError):
            self.errors += 1
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from families(stats)


def families(stats: dict[str, Any]) -> Iterator[Metric]:
    """Metric families of one ``stats("all")`` reply (docs/protocol.md)."""
    d = stats.get("daemon", {})
    info = d.get("info") or {}
    if info:
        names = sorted(info)
        i = GaugeMetricFamily("swapd_info", "the daemon's version, backend and policies",
                              labels=names)
        i.add_metric([str(info[k]) for k in names], 1)
        yield i
    for key, name, doc, counter in (
        ("clients", "swapd_clients", "clients connected now", False),
        ("clients_total", "swapd_clients_connected", "clients admitted since start", True),
        ("uptime_s", "swapd_uptime_seconds", "seconds since the daemon started", False),
        ("reclaimer_errors", "swapd_reclaimer_errors", "reclaimer batches that failed", True),
        ("map_vmflags_unchecked", "swapd_map_vmflags_unchecked",
         "maps whose VmFlags went unchecked (too many mappings below the range)", True),
    ):
        if key in d:
            yield (CounterMetricFamily(name, doc, value=d[key]) if counter
                   else GaugeMetricFamily(name, doc, value=d[key]))
    if "global_limit_pages" in d:
        yield GaugeMetricFamily("swapd_global_resident_limit_bytes",
                                "cap of the clients' resident memory",
                                value=d["global_limit_pages"] * PAGE_SIZE)
    total = stats.get("total", {})
    clients = stats.get("clients", [])
    yield from _scope("swapd_", total, [], [])
    yield from _tiers(total.get("tiers", []))
    labels = ["session", "pid", "name"]
    per: dict[str, Metric] = {}
    for c in clients:
        values = [str(c.get("session", "")), str(c.get("pid", "")), str(c.get("name", ""))]
        for fam in _scope("swapd_client_", c, labels, values, per_client=True):
            prev = per.get(fam.name)
            if prev is None:
                per[fam.name] = fam
            else:
                prev.samples.extend(fam.samples)
    yield from per.values()


# (key in a tier's stats, metric name, help, is a counter); labels: tier index and name
_TIER_METRICS = (
    ("entries", "swapd_tier_entries", "pages stored in the tier", False),
    ("used_bytes", "swapd_tier_used_bytes", "memory, disk or remote bytes the tier holds", False),
    ("capacity_bytes", "swapd_tier_capacity_bytes", "bytes the tier may hold", False),
    ("available", "swapd_tier_available", "1 while the tier takes stores", False),
    ("demoted_in", "swapd_tier_demoted_in", "pages demoted into the tier", True),
    ("demoted_out", "swapd_tier_demoted_out", "pages demoted out of the tier", True),
    ("loads", "swapd_tier_loads", "pages loaded from the tier", True),
    ("load_errors", "swapd_tier_load_errors", "loads that failed (poisoned pages)", True),
    ("store_errors", "swapd_tier_store_errors", "demotion batches the tier refused", True),
)


def _tiers(tiers: list[dict[str, Any]]) -> Iterator[Metric]:
    """One family per tier figure, a sample per tier of the chain (docs/design.md, tiers)."""
    labels = ["tier", "name"]
    for key, name, doc, counter in _TIER_METRICS:
        fam: CounterMetricFamily | GaugeMetricFamily = (
            CounterMetricFamily(name, doc, labels=labels) if counter
            else GaugeMetricFamily(name, doc, labels=labels))
        n = 0
        for t in tiers:
            v = t.get(key)
            if v is None:
                continue
            fam.add_metric([str(t.get("tier", "")), str(t.get("name", ""))], float(v))
            n += 1
        if n:
            yield fam


def _scope(prefix: str, s: Mapping[str, Any], labels: list[str], values: list[str], *,
           per_client: bool = False) -> Iterator[Metric]:
    """Families of one scope (the total, or one client) of a stats reply."""
    for key, unit in (("resident_pages", "resident_bytes"), ("managed_pages", "managed_bytes"),
                      ("limit_pages", "resident_limit_bytes")):
        if key in s:
            g = GaugeMetricFamily(prefix + unit, f"{key} x page size", labels=labels)
            g.add_metric(values, s[key] * PAGE_SIZE)
            yield g
    if per_client and "pages" in s:
        g = GaugeMetricFamily(prefix + "pages", "the client's pages by state",
                              labels=[*labels, "state"])
        for state, n in sorted(s["pages"].items()):
            g.add_metric([*values, state], n)
        yield g
    for key, v in sorted((s.get("counters") or {}).items()):
        c = CounterMetricFamily(prefix + key, f"pager counter {key}", labels=labels)
        c.add_metric(values, v)
        yield c
    for key, v in sorted((s.get("layer") or {}).items()):
        if not isinstance(v, int | float) or isinstance(v, bool):
            continue
        if per_client and key in _TOTAL_ONLY:
            continue
        name, counter = layer_metric_name(key)
        doc = f"layer {key} (kernel name)"
        if counter:
            cfam = CounterMetricFamily(prefix + name.removesuffix("_total"), doc, labels=labels)
            cfam.add_metric(values, v)
            yield cfam
        else:
            gfam = GaugeMetricFamily(prefix + name, doc, labels=labels)
            gfam.add_metric(values, v)
            yield gfam
    hist = s.get("fault_histogram")
    if hist:
        hfam = HistogramMetricFamily(prefix + "fault_duration_seconds",
                                     "fault service time: epoll wakeup to the thread's wake-up",
                                     labels=labels)
        hfam.add_metric(values, histogram_buckets(list(hist["counts"])),
                        sum_value=hist["sum_ns"] / 1e9)
        yield hfam


def stats_dataclass_fields() -> list[str]:
    """The LayerStats field names (what the exposition must classify)."""
    from swapd.layer.core import LayerStats

    return [f.name for f in dataclasses.fields(LayerStats)]
