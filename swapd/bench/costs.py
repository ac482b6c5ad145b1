"""Measure the per-page cost table of `swapd sim` on this machine (JSON for --costs).

Every figure is a median over ``--reps`` repetitions of a per-page mean, measured here
with the real code paths:

* ``fault_us``: client-observed fault round trip of a minimal Python pager (a
  cross-process shmem MISSING fault answered with ``UFFDIO_COPY``; the (a) side of
  ``swapd bench faults``).  If userfaultfd is unavailable, the docs/design.md sec. 11 figure is
  kept and the table says so.
* ``compress_us`` / ``decompress_us``: the chosen compressor on the corpus's pages.
* ``disk_write_us``: ``DiskTier.store_batch`` of ``writeback_batch`` (32) pages, per page,
  as the layer's writeback calls it (buffered ``pwritev``; the page cache absorbs it).
* ``disk_read_us``: ``DiskTier.load`` of a page after the file's page cache was dropped
  (``fdatasync`` + ``POSIX_FADV_DONTNEED``): a cold read from the device, with its CRC.
* ``evict_us``: ``preadv`` of a 64-page batch from a memfd into a reused buffer plus the
  ``fallocate(PUNCH_HOLE)``, per page; the write-protect ioctl of the real eviction
  (docs/design.md sec. 11.1: ~0.4 us per page in 64-page batches) needs a client and is not
  included.

* ``remote_write_us`` / ``remote_read_us``: the Redis tier (``RedisTier.store_batch`` of 32
  pages, per page; ``RedisTier.load`` of one page) against Redis on a test host in a network
  namespace (swapd/testhosts.py), when this machine can make one (root, ``redis-server``);
  otherwise the built-in defaults are kept and the table says why.

``--dir`` puts the disk file on the file system the disk tier will use (default: the
system temporary directory).  Writes the table to ``-o FILE`` (default costs.json).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from swapd.pages import PAGE_SIZE as PAGE


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Add the benchmark's options."""
    p.add_argument("-o", "--output", default="costs.json", metavar="FILE",
                   help="where to write the cost table (default costs.json)")
    p.add_argument("--dir", default=None, help="directory for the disk-tier file")
    p.add_argument("--compressor", default="lz4")
    p.add_argument("--corpus", default=None, metavar="FILE",
                   help="pages to compress (default: a synthetic corpus of 1024 pages)")
    p.add_argument("--pages", type=int, default=2048, help="pages per disk measurement")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--no-faults", action="store_true",
                   help="do not measure the fault round trip (keep the docs/design.md "
                        "sec. 11 figure)")
    p.add_argument("--json", action="store_true", help="print the table as JSON")


def _median_per_page(reps: int, fn: Any, n: int) -> float:
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) / n * 1e6)
    return statistics.median(times)


def _compress(pages: list[bytes], name: str, reps: int) -> tuple[float, float]:
    from swapd.compress import get_compressor

    c = get_compressor(name)
    comp = [c.compress(p) for p in pages]

    def cz() -> None:
        for p in pages:
            c.compress(p)

    def dz() -> None:
        for d in comp:
            c.decompress(d)

    return _median_per_page(reps, cz, len(pages)), _median_per_page(reps, dz, len(pages))


def _disk(pages: list[bytes], n: int, reps: int, workdir: str) -> tuple[float, float]:
    from swapd.layer import DiskTier

    data = [pages[i % len(pages)] for i in range(n)]
    w_us: list[float] = []
    r_us: list[float] = []
    order = list(range(n))
    random.Random(1).shuffle(order)
    for _ in range(reps):
        tier = DiskTier(workdir, (n + 64) * PAGE)
        try:
            keys: list[int] = []
            t0 = time.perf_counter()
            for i in range(0, n, 32):
                keys.extend(tier.store_batch(data[i:i + 32]))
            w_us.append((time.perf_counter() - t0) / n * 1e6)
            os.fdatasync(tier.fd)
            os.posix_fadvise(tier.fd, 0, 0, os.POSIX_FADV_DONTNEED)
            sample = [keys[i] for i in order[: min(n, 512)]]
            t0 = time.perf_counter()
            for k in sample:
                tier.load(k)
            r_us.append((time.perf_counter() - t0) / len(sample) * 1e6)
        finally:
            tier.close()
    return statistics.median(w_us), statistics.median(r_us)


def _remote(pages: list[bytes], n: int, reps: int) -> tuple[float, float]:
    """(write, read) microseconds per page through the Redis tier on a test host."""
    from swapd.testhosts import HostNet, RedisServer
    from swapd.tiers.redis import RedisTier

    data = [pages[i % len(pages)] for i in range(n)]
    w_us: list[float] = []
    r_us: list[float] = []
    with HostNet(1) as net:
        srv = RedisServer(net.hosts[0])
        try:
            for rep in range(reps):
                tier = RedisTier(srv.url, namespace=f"costs-{os.getpid()}-{rep}")
                try:
                    keys: list[int] = []
                    t0 = time.perf_counter()
                    for i in range(0, n, 32):
                        keys.extend(tier.store_batch(data[i:i + 32]))
                    w_us.append((time.perf_counter() - t0) / n * 1e6)
                    sample = keys[: min(n, 512)]
                    t0 = time.perf_counter()
                    for k in sample:
                        tier.load(k)
                    r_us.append((time.perf_counter() - t0) / len(sample) * 1e6)
                finally:
                    tier.close()
        finally:
            srv.stop()
    return statistics.median(w_us), statistics.median(r_us)


def _evict(pages: list[bytes], reps: int) -> float:
    from swapd.kernel.memfd import PageBuffer, memfd_create, punch_hole

    batch = 64
    fd = memfd_create("swapd-bench-costs")
    buf = PageBuffer(batch)
    try:
        blob = b"".join(pages[i % len(pages)] for i in range(batch))
        times = []
        for _ in range(reps * 4):
            os.pwrite(fd, blob, 0)
            t0 = time.perf_counter()
            buf.pread_into(fd, 0, batch)
            punch_hole(fd, 0, batch * PAGE)
            times.append((time.perf_counter() - t0) / batch * 1e6)
        return statistics.median(times)
    finally:
        buf.close()
        os.close(fd)


def _fault(reps: int, workdir: Path) -> float:
    from swapd.bench.faults import bare_side

    meds = []
    for r in range(reps):
        d = workdir / f"fault-{r}"
        d.mkdir()
        lat = bare_side(4096, 4, r + 1, d)
        meds.append(statistics.median(lat) / 1000.0)
    return statistics.median(meds)


def run(args: argparse.Namespace) -> int:
    """Measure, write and print the cost table."""
    from swapd.corpus import Corpus
    from swapd.sim.costs import DEFAULT_COSTS, CostTable

    corpus = Corpus.open(args.corpus) if args.corpus else Corpus.synthetic(1024, seed=0)
    pages = [corpus.page(i) for i in range(min(len(corpus), 1024))]
    details: dict[str, Any] = {}
    comp_us, decomp_us = _compress(pages, args.compressor, args.reps)
    workdir = args.dir or tempfile.gettempdir()
    with tempfile.TemporaryDirectory(prefix="swapd-costs-", dir=workdir) as tmp:
        w_us, r_us = _disk(pages, args.pages, args.reps, tmp)
        evict_us = _evict(pages, args.reps)
        fault_us = DEFAULT_COSTS.fault_us
        fault_src = "docs/design.md sec. 11 (not measured: --no-faults)"
        if not args.no_faults:
            try:
                fault_us = _fault(max(1, min(args.reps, 3)), Path(tmp))
                fault_src = "measured: bare UFFDIO_COPY pager, median client latency"
            except (OSError, SystemExit) as exc:
                fault_src = f"docs/design.md sec. 11 (measurement failed: {exc})"
    from swapd.testhosts import unavailable_reason

    remote_w, remote_r = DEFAULT_COSTS.remote_write_us, DEFAULT_COSTS.remote_read_us
    why = unavailable_reason()
    remote_src = f"built-in default (not measured: {why})" if why else ""
    if not why:
        try:
            remote_w, remote_r = _remote(pages, min(args.pages, 2048), args.reps)
            remote_src = "measured: RedisTier on a test host (swapd/testhosts.py)"
        except Exception as exc:  # the rest of the table is still worth writing
            remote_src = f"built-in default (measurement failed: {exc})"
    details.update({
        "remote": remote_src,
        "fault": fault_src, "compressor": args.compressor,
        "corpus": args.corpus or "synthetic(1024, seed=0)",
        "disk_dir": workdir, "disk_write": "DiskTier.store_batch(32 pages), buffered",
        "disk_read": "DiskTier.load after fdatasync + POSIX_FADV_DONTNEED (cold)",
        "evict": "preadv 64 pages + PUNCH_HOLE on a memfd, per page (no write-protect)",
        "reps": args.reps,
    })
    table = CostTable(
        fault_us=fault_us, evict_us=evict_us, compress_us=comp_us, decompress_us=decomp_us,
        disk_read_us=r_us, disk_write_us=w_us,
        remote_read_us=remote_r, remote_write_us=remote_w,
        source=f"swapd bench costs on {platform.node()} "
               f"({datetime.datetime.now(datetime.UTC).strftime('%Y-%m-%dT%H:%M:%SZ')})")
    d = table.to_dict()
    d["details"] = details
    with open(args.output, "w", encoding="utf-8") as f:
        json.dump(d, f, indent=2)
        f.write("\n")
    CostTable.load(args.output)  # the file must be readable by `swapd sim --costs`
    if args.json:
        json.dump(d, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        for k in ("fault_us", "evict_us", "compress_us", "decompress_us", "disk_read_us",
                  "disk_write_us", "remote_read_us", "remote_write_us"):
            print(f"{k:15s} {d[k]:8.2f}   (docs/design.md sec. 11 default "
                  f"{getattr(DEFAULT_COSTS, k):.2f})")
        print(f"fault: {fault_src}")
        print(f"remote: {remote_src}")
        print(f"wrote {args.output}")
    return 0
