"""Disk-tier writeback throughput with sealing (AES-GCM) against without (CRC-32), one run.

Each round fills a fresh layer's compressed tier with ``--pages`` corpus pages and times
``writeback`` of all of them into a disk tier -- decompress, seal or checksum, one pwritev per
contiguous run -- and then the loads back from the disk tier (read, open or check).  Rounds
alternate sealed and plain (the order rotated each round); the medians give
``writeback_pages_per_s_sealed`` / ``_plain``, ``writeback_ratio`` (sealed / plain rate),
and the same for ``load``.  Wall time (the write goes to the page cache; the disk tier's file is
in ``--state-dir``, default a temporary directory).  The machine is shared: record ``loadavg``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from swapd.bench.common import add_corpus_arguments, load_corpus, print_json, print_table
from swapd.compress import same_filled_value
from swapd.config import LayerSection
from swapd.layer import CompressedTier, DiskTier, TierLimits
from swapd.layer.build import build_layer
from swapd.plugins import make_backend


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``swapd bench seal``."""
    add_corpus_arguments(p)
    p.add_argument("--pages", type=int, default=8192, help="pages per round (8192 = 32 MiB)")
    p.add_argument("--reps", type=int, default=7, help="rounds per variant (median)")
    p.add_argument("--state-dir", default=None, help="directory for the disk tier's file")
    p.add_argument("--json", action="store_true", help="print JSON")


def _round(pages: list[bytes], sealed: bool, state_dir: str) -> tuple[float, float]:
    n = len(pages)
    be = make_backend("zsmalloc", max_pages=2 * n + 1024)
    tiers: list[Any] = [CompressedTier("lz4", be, TierLimits(ram_total_bytes=1 << 40)),
                        DiskTier(state_dir, (n + 64) * 4096, seal=sealed)]
    lay = build_layer(LayerSection(), Path(state_dir), tiers=tiers,
                      options={"pool_limit_bytes": 1 << 40, "shrinker_start_percent": 100.0})
    try:
        r = lay.add_region("bench", n)
        for i, pg in enumerate(pages):
            lay.store(r, i, pg)
        t0 = time.perf_counter()
        done = lay.writeback(n)
        t1 = time.perf_counter()
        if done != n:
            raise RuntimeError(f"wrote back {done} of {n} pages")
        for i in range(n):
            lay.load(r, i)
        t2 = time.perf_counter()
        return t1 - t0, t2 - t1
    finally:
        lay.close()


def run(args: argparse.Namespace) -> int:
    """Interleaved rounds of both variants; print a table or JSON."""
    if not args.corpus and not args.synthetic:
        args.synthetic = 2048
    if args.pages <= 0 or args.reps <= 0:
        print("error: --pages and --reps must be positive")
        return 2
    corpus = load_corpus(args)
    usable = [pg for pg in corpus if same_filled_value(pg) is None]  # same-filled: no I/O
    if not usable:
        print("error: the corpus has only same-filled pages")
        return 2
    pages = [usable[i % len(usable)] for i in range(args.pages)]
    wb: dict[str, list[float]] = {"sealed": [], "plain": []}
    ld: dict[str, list[float]] = {"sealed": [], "plain": []}
    with tempfile.TemporaryDirectory(dir=args.state_dir) as tmp:
        for rep in range(args.reps):
            order = ["sealed", "plain"] if rep % 2 == 0 else ["plain", "sealed"]
            for name in order:
                w, lt = _round(pages, name == "sealed", tmp)
                wb[name].append(w)
                ld[name].append(lt)
    n = len(pages)
    out: dict[str, Any] = {"pages": n, "reps": args.reps}
    for name in ("sealed", "plain"):
        out[f"writeback_pages_per_s_{name}"] = n / statistics.median(wb[name])
        out[f"load_pages_per_s_{name}"] = n / statistics.median(ld[name])
    for path in ("writeback", "load"):
        out[f"{path}_ratio"] = (out[f"{path}_pages_per_s_sealed"]
                                / out[f"{path}_pages_per_s_plain"])
    out["loadavg"] = list(os.getloadavg())
    if args.json:
        print_json(out)
        return 0
    print_table(f"disk tier, {n} pages, medians of {args.reps} interleaved rounds",
                ["path", "sealed pages/s", "plain pages/s", "sealed/plain"],
                [("writeback", out["writeback_pages_per_s_sealed"],
                  out["writeback_pages_per_s_plain"], out["writeback_ratio"]),
                 ("load", out["load_pages_per_s_sealed"], out["load_pages_per_s_plain"],
                  out["load_ratio"])],
                caption=f"loadavg {out['loadavg']}")
    return 0
