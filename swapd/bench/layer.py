"""Store+load throughput through the swap-LRU layer against the backend alone, and LRU inversions.

Throughput: the same pages (compressible, not same-filled, so that both paths do the same work)
go through (a) the backend alone -- compress, malloc, write, then read, decompress, free -- and
(b) the layer -- ``store`` then ``load`` -- with a compressed tier on a fresh pool of the same
backend and no pool pressure.  Rounds alternate, as in ``common.interleaved_medians``, but are
timed in CPU time of the benchmarking thread, so that other processes on a busy machine do not
skew the ratio; the medians give ``backend_pages_per_s`` and ``layer_pages_per_s`` (store+load
round trips per second) and ``overhead`` = backend rate / layer rate - 1.  Target: at most 0.25
(issue 4); at most 0.10 with the compiled implementation (issue 8).  Under the compiled
implementation (``impl``, swapd/impl.py) a zsmalloc backend also runs the batch paths side by
side: the backend alone through its compiled batch calls (``compress_pages``,
``store_objects``, ``decode_objects``, ``free_objects``; swapd/bench/throughput.py's batch
path) against the layer's ``store_batch`` and ``load_run`` in runs of ``--run`` pages (the
reclaimer's eviction batches and the pager's readahead runs): ``batch_overhead`` and the
``batch`` record.

Inversions: ``--pages`` pages are stored in a known recency order (page 0 coldest) into a layer
whose pool is limited to ``--pool-fraction`` of their uncompressed size, with a disk tier below.
The default mode (shrink until accept) and the kernel-like mode (reject to disk when full) are
reported side by side; in both, ``shrink_step`` runs every 32 stores as a lagging shrink worker
(with the proactive start at 100% of the limit, so it acts only on a limit hit):
``lru_inversions`` (the layer's counter), ``recency_inversions`` (computed here from the known
order, at the end: pages on disk more recent than the oldest page left in the pool -- the
shrinker later writes back the colder pages, so it can be 0 where the counter is not),
``written_back_pages``, ``disk_slots_used``, ``pool_limit_hit``, ``pswpout``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from swapd.arena import PAGE_SIZE
from swapd.bench.common import (
    add_backend_arguments,
    add_corpus_arguments,
    backend_names,
    load_corpus,
    print_json,
    print_table,
)
from swapd.compress import get_compressor, same_filled_value
from swapd.config import LayerSection
from swapd.errors import StoreRejected
from swapd.layer import (
    CompressedTier,
    DiskTier,
    EntryState,
    SwapLayer,
    TierLimits,
)
from swapd.layer.build import build_layer
from swapd.plugins import make_backend


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``swapd bench layer``."""
    add_corpus_arguments(p)
    add_backend_arguments(p)
    p.add_argument("--reps", type=int, default=7, help="rounds per variant (median)")
    p.add_argument("--pages", type=int, default=4000, help="pages of the inversion experiment")
    p.add_argument("--pool-fraction", type=float, default=0.1,
                   help="pool limit as a fraction of the inversion pages' size (0.1)")
    p.add_argument("--state-dir", default=None, help="directory for the disk tier's file")
    p.add_argument("--run", type=int, default=64,
                   help="pages per store_batch / load_run in the batch variant (64)")
    p.add_argument("--json", action="store_true", help="print JSON")


def _cpu_medians(variants: dict[str, Callable[[], object]], reps: int) -> dict[str, float]:
    """Like common.interleaved_medians, but timing the CPU time of this thread
    (``time.thread_time``), so that other processes on a busy machine do not skew the ratio."""
    names = list(variants)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(reps):
        k = r % len(names)
        for n in names[k:] + names[:k]:
            t0 = time.thread_time()
            variants[n]()
            times[n].append(time.thread_time() - t0)
    return {n: statistics.median(ts) for n, ts in times.items()}


def _layer(tiers: list[Any], **options: Any) -> SwapLayer:
    """The layer over ``tiers`` (built here), by the one construction (swapd/layer/build.py)."""
    return build_layer(LayerSection(), Path(tempfile.gettempdir()), tiers=tiers,
                       options=options)


def _throughput(backend: str, pages: list[bytes], reps: int) -> dict[str, Any]:
    comp = get_compressor("lz4")
    n = len(pages)
    arena = 4 * n + 1024
    be_alone = make_backend(backend, max_pages=arena)
    be_layer = make_backend(backend, max_pages=arena)
    lay = _layer([CompressedTier(comp, be_layer, TierLimits(ram_total_bytes=1 << 40))],
                 pool_limit_bytes=1 << 40)
    region = lay.add_region("bench", n)

    def alone() -> None:
        compress, decompress = comp.compress, comp.decompress
        malloc, write, read, free = be_alone.malloc, be_alone.write, be_alone.read, be_alone.free
        handles = []
        for pg in pages:
            c = compress(pg)
            h = malloc(len(c))
            write(h, c)
            handles.append(h)
        for h in handles:
            decompress(read(h), PAGE_SIZE)
            free(h)

    def layered() -> None:
        store, load = lay.store, lay.load
        for i, pg in enumerate(pages):
            store(region, i, pg)
        for i in range(n):
            load(region, i)

    try:
        med = _cpu_medians({"backend": alone, "layer": layered}, reps)
        lay._check()
    finally:
        lay.close()
        be_alone.close()
    b_rate = n / med["backend"]
    l_rate = n / med["layer"]
    return {"backend": backend, "pages": n, "backend_pages_per_s": b_rate,
            "layer_pages_per_s": l_rate, "overhead": b_rate / l_rate - 1,
            "target_overhead": 0.25}


def _throughput_batch(backend: str, pages: list[bytes], reps: int,
                      run: int) -> dict[str, Any] | None:
    """Backend alone through the compiled batch calls vs the layer's store_batch/load_run."""
    from swapd._native.zsmalloc import fast_of
    from swapd.bench.throughput import batch_round_trip
    from swapd.impl import native

    nat = native()
    n = len(pages)
    arena = 4 * n + 1024
    be_alone = make_backend(backend, max_pages=arena, arena_cache_pages=arena)
    be_layer = make_backend(backend, max_pages=arena, arena_cache_pages=arena)
    fast = fast_of(be_alone)
    if nat is None or fast is None:
        be_alone.close()
        be_layer.close()
        return None
    lay = _layer([CompressedTier("lz4", be_layer, TierLimits(ram_total_bytes=1 << 40))],
                 pool_limit_bytes=1 << 40)
    region = lay.add_region("bench", n)
    src = b"".join(pages)
    out = bytearray(len(src))
    alone = batch_round_trip(nat, fast, be_alone, pages)

    def layered() -> None:
        view = memoryview(src)
        dst = memoryview(out)
        for s0 in range(0, n, run):
            k = min(run, n - s0)
            lay.store_batch(region, s0, view[s0 * PAGE_SIZE:(s0 + k) * PAGE_SIZE])
        for s0 in range(0, n, run):
            k = min(run, n - s0)
            if lay.load_run(region, s0, k, dst[s0 * PAGE_SIZE:(s0 + k) * PAGE_SIZE]) != k:
                raise AssertionError("load_run stopped early")

    try:
        layered()
        if out != src:
            raise AssertionError("the layer's batch paths returned other bytes")
        med = _cpu_medians({"backend": alone, "layer": layered}, reps)
        lay._check()
    finally:
        lay.close()
        be_alone.close()
    b_rate = n / med["backend"]
    l_rate = n / med["layer"]
    return {"backend": backend, "pages": n, "run": run, "backend_pages_per_s": b_rate,
            "layer_pages_per_s": l_rate, "overhead": b_rate / l_rate - 1}


def _inversions(backend: str, pages: list[bytes], fraction: float, kernel_like: bool,
                state_dir: str | None) -> dict[str, Any]:
    n = len(pages)
    limit = int(n * PAGE_SIZE * fraction)
    with tempfile.TemporaryDirectory(dir=state_dir) as tmp:
        be = make_backend(backend, max_pages=4 * n + 1024)
        tiers: list[Any] = [CompressedTier("lz4", be, TierLimits(ram_total_bytes=1 << 40)),
                            DiskTier(tmp, (n + 64) * PAGE_SIZE)]
        # no proactive writeback below the limit: only the limit's own mechanisms act
        lay = _layer(tiers, pool_limit_bytes=limit, reject_to_disk_when_full=kernel_like,
                     shrinker_start_percent=100.0)
        try:
            r = lay.add_region("bench", n)
            rejected = 0
            for i, pg in enumerate(pages):
                try:
                    lay.store(r, i, pg)
                except StoreRejected:
                    rejected += 1
                if i % 32 == 31:
                    lay.shrink_step()  # the shrink worker, lagging 32 stores behind
            lay._check()
            st = lay.stats()
            in_pool = [i for i in range(n) if lay.state(r, i) is EntryState.COMPRESSED]
            on_disk = [i for i in range(n) if lay.state(r, i) is EntryState.DISK]
            oldest_in_pool = min(in_pool) if in_pool else n
            return {
                "mode": "kernel-like" if kernel_like else "default",
                "backend": backend,
                "pages": n,
                "pool_limit_bytes": limit,
                "lru_inversions": st.lru_inversions,
                "recency_inversions": sum(1 for i in on_disk if i > oldest_in_pool),
                "written_back_pages": st.written_back_pages,
                "disk_slots_used": st.disk_slots_used,
                "pool_limit_hit": st.pool_limit_hit,
                "pswpout": st.pswpout,
                "rejected": rejected,
                "pool_total_size": st.pool_total_size,
            }
        finally:
            lay.close()


def run(args: argparse.Namespace) -> int:
    """Run both experiments for each backend; print tables or JSON."""
    if not args.corpus and not args.synthetic:
        args.synthetic = 4096
    corpus = load_corpus(args)
    comp = get_compressor("lz4")
    usable = [pg for pg in corpus
              if same_filled_value(pg) is None and len(comp.compress(pg)) < PAGE_SIZE - 128]
    if not usable:
        print("error: the corpus has no compressible page")
        return 2
    inv_pages = [usable[i % len(usable)] for i in range(args.pages)]
    thr, inv, batch = [], [], []
    for name in backend_names(args):
        thr.append(_throughput(name, usable, args.reps))
        b = _throughput_batch(name, usable, args.reps, args.run)
        if b is not None:
            batch.append(b)
        for kernel_like in (False, True):
            inv.append(_inversions(name, inv_pages, args.pool_fraction, kernel_like,
                                   args.state_dir))
    if args.json:
        # top level: zsmalloc (zswap's default allocator) when measured, else the first backend
        from swapd.impl import describe

        main = next((t for t in thr if t["backend"] == "zsmalloc"), thr[0])
        out: dict[str, Any] = dict(main)
        out["impl"] = describe()
        out["loadavg"] = os.getloadavg()[0]
        mb = next((b for b in batch if b["backend"] == main["backend"]), None)
        if mb is not None:
            out["batch_overhead"] = mb["overhead"]
            out["batch"] = mb
        for i in inv:
            if i["backend"] == main["backend"]:
                key = "inversion_default" if i["mode"] == "default" else "inversion_kernel_like"
                out[key] = i
        out["throughput"] = thr
        out["throughput_batch"] = batch
        out["inversions"] = inv
        print_json(out)
        return 0
    print_table("store+load round trips per second (medians)",
                ["backend", "pages", "backend/s", "layer/s", "overhead"],
                [(t["backend"], t["pages"], t["backend_pages_per_s"], t["layer_pages_per_s"],
                  f"{100 * t['overhead']:+.1f}%") for t in thr],
                caption="target: overhead <= +25% (python), +10% (compiled)")
    if batch:
        print_table(f"compiled batch paths, runs of {args.run} pages (medians)",
                    ["backend", "pages", "backend/s", "layer/s", "overhead"],
                    [(b["backend"], b["pages"], b["backend_pages_per_s"],
                      b["layer_pages_per_s"], f"{100 * b['overhead']:+.1f}%") for b in batch])
    cols = ["backend", "mode", "lru_inversions", "recency_inversions", "written_back_pages",
            "disk_slots_used", "pool_limit_hit", "pswpout"]
    print_table(f"inversion experiment ({args.pages} pages, pool {args.pool_fraction:.0%})",
                cols, [[i[c] for c in cols] for i in inv])
    return 0
