"""Memory of the swap-LRU layer per swapped-out page, at one million entries.

Stores ``--entries`` pages (default 1,000,000) into a layer with a compressed tier (and, with
``--disk-fraction F``, writes back that fraction to a disk tier), then reports:

* ``bytes_per_entry`` -- tracemalloc: bytes still allocated by code in ``swapd/layer/`` (the swap
  table words, the LRU links, side tables, per-client state, the disk tier's checksums), divided
  by the entries.  Target: at most 24 (the kernel's proposed virtual-swap descriptor);
* ``rss_bytes_per_entry`` -- the whole process's RSS growth (``/proc/self/statm`` resident:
  anonymous memory *and* the shared memfd mappings of the state regions) minus the pool's own
  pages (the arena's resident pages, ``mincore``), per entry: everything the daemon pays per
  swapped-out page besides the compressed bytes.  Target: at most 32
  (``target_rss_bytes_per_entry``);
* ``backend_state_bytes_per_entry`` -- the memory the backend's own state regions hold (their
  memfds' ``st_blocks``; the arena excluded), per entry; ``table_state_bytes_per_entry`` the same
  for the swap table's region;
* ``bytes_per_mapped_untouched_page`` -- after the stores, one more region of
  ``--untouched-pages`` pages (default 2^22: 16 GiB) is added and never stored to: the growth
  of RSS plus the swap table region's ``st_blocks``, per page of it.  Target about 0: the
  table's words and links are written only for pages that are used (swapd/layer/table.py);
  ``bytes_per_used_page`` repeats ``rss_bytes_per_entry`` beside it;
* ``impl`` -- which implementation ran (``SWAPD_IMPL``, swapd/impl.py);
* ``backend_bytes_per_entry`` -- tracemalloc for ``backends/`` alone, for comparison;
* ``side_table_entries`` and ``side_bytes_per_entry`` -- same-filled values / handles too wide for
  the word (see swapd/layer/table.py).

Pages cycle through ``--synthetic N`` corpus pages (default 4096) or ``--corpus FILE``; the
entries are spread over ``--regions`` regions that are entirely swapped out.  Two passes over
the same pages: first untraced (RSS), then under tracemalloc (which slows it several-fold; a
million entries take minutes).  The object-size int created at the layer's ``malloc`` call is
kept by the backend, so it is counted in ``backend_bytes_per_entry``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import tracemalloc
from pathlib import Path
from typing import Any

from swapd.arena import PAGE_SIZE
from swapd.bench.common import add_corpus_arguments, load_corpus, print_json, print_table
from swapd.errors import StoreRejected
from swapd.impl import IMPL
from swapd.layer import CompressedTier, DiskTier, LayerConfig, SwapLayer, TierLimits
from swapd.plugins import make_backend


def _region_bytes(fds: dict[str, int]) -> int:
    """Memory the memfds ``fds`` hold (``st_blocks`` * 512)."""
    return sum(os.fstat(fd).st_blocks * 512 for fd in fds.values())


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``swapd bench metadata``."""
    add_corpus_arguments(p)
    p.add_argument("--entries", type=int, default=1_000_000, help="entries to store (1M)")
    p.add_argument("--regions", type=int, default=16, help="regions to spread them over")
    p.add_argument("--backend", default="zsmalloc", help="backend of the compressed tier")
    p.add_argument("--disk-fraction", type=float, default=0.0,
                   help="fraction of the entries to write back to a disk tier (default 0)")
    p.add_argument("--state-dir", default=None, help="directory for the disk tier's file")
    p.add_argument("--untouched-pages", type=int, default=1 << 22,
                   help="pages of a region added after the stores and never used (2^22)")
    p.add_argument("--rss-only", action="store_true",
                   help="skip the (slow) tracemalloc pass; its keys are null")
    p.add_argument("--json", action="store_true", help="print JSON")


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _malloc_lines() -> list[tuple[str, int]]:
    """(file, line) of every backend ``malloc`` call in the layer.  The object-size int created
    on that line is kept by the backend (in its per-object record), so it is charged to the
    backend, not to the layer.  Read before the run (the source must match the loaded code)."""
    import swapd.layer as pkg

    out = []
    for path in sorted(Path(pkg.__file__).parent.glob("*.py")):
        for no, line in enumerate(path.read_text().splitlines(), 1):
            if ".malloc(" in line and not line.lstrip().startswith("#"):
                out.append((str(path), no))
    return out


def _fill(pages: list[bytes], entries: int, regions: int, backend: str, ndisk: int,
          state_dir: str | None, malloc_lines: list[tuple[str, int]] | None,
          untouched: int = 0) -> dict[str, Any]:
    """Build a layer, store ``entries`` pages (write back ``ndisk``), measure, tear down.
    With ``malloc_lines`` (see _malloc_lines) it traces allocations, else it measures RSS."""
    trace = malloc_lines is not None
    per_region = -(-entries // regions)
    be = make_backend(backend, max_pages=entries + 4096)
    tmp = tempfile.TemporaryDirectory(dir=state_dir)
    tiers: list[Any] = [CompressedTier("lz4", be, TierLimits(ram_total_bytes=1 << 40)),
                        DiskTier(tmp.name, (ndisk + 64) * PAGE_SIZE)]
    rss0 = _rss_bytes()
    if trace:
        tracemalloc.start(1)
    lay = SwapLayer(tiers, config=LayerConfig(pool_limit_bytes=1 << 40))
    out: dict[str, Any] = {}
    try:
        stored = rejected = 0
        npages = len(pages)
        for r in range(regions):
            n = min(per_region, entries - stored)
            if n <= 0:
                break
            rid = lay.add_region(("client", r % 4), n)
            store = lay.store
            for i in range(n):
                try:
                    store(rid, i, pages[(stored + i) % npages])
                except StoreRejected:
                    rejected += 1
            stored += n
        if ndisk:
            lay.writeback(ndisk)
        swapped = stored - rejected
        out["entries"] = swapped
        out["rejected"] = rejected
        if trace:
            snap = tracemalloc.take_snapshot()
            tracemalloc.stop()
            assert malloc_lines is not None
            excl = [tracemalloc.Filter(False, f, lineno=n) for f, n in malloc_lines]
            mine = snap.filter_traces([tracemalloc.Filter(True, "*/swapd/layer/*"), *excl])
            charged = snap.filter_traces([tracemalloc.Filter(True, f, lineno=n)
                                          for f, n in malloc_lines])
            theirs = snap.filter_traces([tracemalloc.Filter(True, "*/backends/*")])
            out["layer_bytes"] = sum(s.size for s in mine.statistics("filename"))
            out["backend_bytes"] = (sum(s.size for s in theirs.statistics("filename"))
                                    + sum(s.size for s in charged.statistics("filename")))
            out["table_bytes"] = lay._table.nbytes()
            out["side_table_entries"] = len(lay._table.side)
            out["side_bytes"] = sys.getsizeof(lay._table.side) + 32 * len(lay._table.side)
            st = lay.stats()
            out["same_filled_pages"] = st.same_filled_pages
            out["disk_pages"] = st.disk_pages
            out["compressed_pages"] = st.stored_pages - st.same_filled_pages
        else:
            out["rss_bytes"] = _rss_bytes() - rss0 - be.arena.resident_pages() * PAGE_SIZE
            fds = {k: v for k, v in be.state_fds().items() if k != "arena"}
            out["backend_state_bytes"] = _region_bytes(fds) if be.uses_state_layout else 0
            out["table_state_bytes"] = _region_bytes(lay._table.state_fds())
            before = _rss_bytes() + out["table_state_bytes"]
            if untouched:
                lay.add_region(("client", 0), untouched)
            out["untouched_bytes"] = (_rss_bytes() + _region_bytes(lay._table.state_fds())
                                      - before)
        return out
    finally:
        if tracemalloc.is_tracing():
            tracemalloc.stop()
        lay.close()
        tmp.cleanup()


def measure(pages: list[bytes], entries: int, regions: int, backend: str,
            disk_fraction: float, state_dir: str | None, *, trace: bool = True,
            untouched: int = 1 << 22) -> dict[str, Any]:
    """Two passes on the same pages: RSS without tracing, then (``trace``) tracemalloc for the
    layer's Python bytes.  Without ``trace`` the tracemalloc keys are None."""
    ndisk = int(entries * disk_fraction)
    # RSS first: the traced pass would leave freed memory in the allocator for reuse
    lines = _malloc_lines()
    b = _fill(pages, entries, regions, backend, ndisk, state_dir, None, untouched)
    a = _fill(pages, entries, regions, backend, ndisk, state_dir, lines) if trace else None
    n = b["entries"]

    def per(key: str) -> float | None:
        return None if a is None else a[key] / n

    return {
        "entries": n,
        "rejected": b["rejected"],
        "bytes_per_entry": per("layer_bytes"),
        "table_array_bytes_per_entry": per("table_bytes"),
        "rss_bytes_per_entry": b["rss_bytes"] / n,
        "backend_state_bytes_per_entry": b["backend_state_bytes"] / n,
        "table_state_bytes_per_entry": b["table_state_bytes"] / n,
        "backend_bytes_per_entry": per("backend_bytes"),
        "side_table_entries": None if a is None else a["side_table_entries"],
        "side_bytes_per_entry": per("side_bytes"),
        "same_filled_pages": None if a is None else a["same_filled_pages"],
        "compressed_pages": None if a is None else a["compressed_pages"],
        "disk_pages": None if a is None else a["disk_pages"],
        "backend": backend,
        "target_bytes_per_entry": 24,
        "meets_target": None if a is None else a["layer_bytes"] / n <= 24,
        "target_rss_bytes_per_entry": 32,
        "meets_rss_target": b["rss_bytes"] / n <= 32,
        "untouched_pages": untouched,
        "bytes_per_mapped_untouched_page": b["untouched_bytes"] / untouched if untouched
        else None,
        "bytes_per_used_page": b["rss_bytes"] / n,
        "impl": IMPL,
        "loadavg": os.getloadavg()[0],
    }


def run(args: argparse.Namespace) -> int:
    """Run the measurement and print a table or JSON."""
    if not args.corpus and not args.synthetic:
        args.synthetic = 4096
    corpus = load_corpus(args)
    pages = list(corpus)
    res = measure(pages, args.entries, args.regions, args.backend, args.disk_fraction,
                  args.state_dir, trace=not args.rss_only, untouched=args.untouched_pages)
    if args.json:
        print_json(res)
    else:
        print_table(f"layer metadata at {res['entries']:,} entries", ["measure", "value"],
                    [(k, v) for k, v in res.items()])
    return 0
