"""swapd demo: page realistic memory through the daemon and verify every byte.

Starts a daemon (a subprocess in a temporary directory, stopped at the end) or
uses a running one (--socket PATH of a live daemon), then runs a client that
maps --size of memory filled with realistic page contents (a synthetic corpus
of zero, same-filled, text, binary and random pages, or a captured corpus with
--corpus) under a --limit resident limit.  Phases: fill, random access (80% to
a hot set, 30% writes), sequential scan (every 8th page written), verify.
Each page's expected content is known (corpus page + a versioned patch), each
page has a CRC-32 that every read is checked against, and the final pass
checks all of them.  Exits 1 on any mismatch.

The final table shows faults, the daemon's fault service-time p50/p99,
compression ratio, tier occupancy, writebacks, LRU inversions and the client's
time per page in each phase.
"""

from __future__ import annotations

import argparse
import array
import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from swapd.config import PAGE_SIZE, parse_size
from swapd.errors import ConfigError, SwapdError

PATCH = 64  # bytes written per page write

HELP = "run the daemon with a demo client and verify its data"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Add ``swapd demo``'s options (size, limit, socket, corpus, pool, ops, seed, output)."""
    p.add_argument("--size", default="512M", help="memory to map (default 512M)")
    p.add_argument("--limit", default="64M", help="resident limit (default 64M)")
    p.add_argument("--socket", metavar="PATH",
                   help="use the daemon serving PATH (default: start one)")
    p.add_argument("--corpus", metavar="FILE", help="captured corpus (swapd corpus capture)")
    p.add_argument("--pool", default=None,
                   help="compressed pool limit of the started daemon (default size/4)")
    p.add_argument("--ops", type=int, default=None,
                   help="random-phase accesses (default: pages/2)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--record", metavar="FILE",
                   help="the started daemon records its trace here (swapd serve --record)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


# --- the daemon -------------------------------------------------------------------------------


def _stop_with_parent() -> None:
    """In the daemon child: SIGTERM when the demo dies, so no daemon is left behind."""
    import ctypes

    pr_set_pdeathsig = 1  # <linux/prctl.h>
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0)


@contextlib.contextmanager
def started_daemon(workdir: Path, *, pool_bytes: int, disk_bytes: int,
                   timeout: float = 60.0, record: str | None = None) -> Iterator[Path]:
    """Run ``swapd serve`` in ``workdir`` until the block ends; yields its socket path.

    Waits for the daemon's READY=1 on a private $NOTIFY_SOCKET (the systemd
    protocol), so the socket is served when this yields.
    """
    sock_path = workdir / "swapd.sock"
    cfg = workdir / "swapd.toml"
    cfg.write_text(f"[layer]\npool_limit_bytes = {pool_bytes}\ndisk_bytes = {disk_bytes}\n"
                   "[limits]\nglobal_resident_bytes = \"16G\"\n")
    notify_path = workdir / "notify.sock"
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
    notify.bind(str(notify_path))
    log = open(workdir / "daemon.log", "wb")  # noqa: SIM115 (closed below)
    env = dict(os.environ, NOTIFY_SOCKET=str(notify_path))
    env.pop("WATCHDOG_USEC", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "swapd", "serve", "--socket", str(sock_path),
         "--state-dir", str(workdir / "state"), "--config", str(cfg),
         *(["--record", record] if record else [])],
        stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env, start_new_session=True,
        preexec_fn=_stop_with_parent)
    try:
        deadline = time.monotonic() + timeout
        notify.settimeout(0.2)
        while True:
            if proc.poll() is not None:
                log.flush()
                tail = (workdir / "daemon.log").read_text(errors="replace")[-2000:]
                raise SwapdError(f"the daemon exited with {proc.returncode}:\n{tail}")
            if time.monotonic() > deadline:
                raise SwapdError(f"the daemon did not become ready in {timeout:.0f}s")
            try:
                msg = notify.recv(4096).decode(errors="replace")
            except TimeoutError:
                continue
            if "READY=1" in msg.split("\n"):
                break
        yield sock_path
    finally:
        notify.close()
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()


# --- the workload ----------------------------------------------------------------------------


class Pages:
    """Expected contents: page i = corpus page base[i] with a versioned patch."""

    def __init__(self, corpus: Any, npages: int, rng: random.Random) -> None:
        self.corpus = corpus
        ncorpus = len(corpus)
        self.base = array.array("I", (rng.randrange(ncorpus) for _ in range(npages)))
        self.version = array.array("I", bytes(4 * npages))
        self.crc = array.array("I", bytes(4 * npages))

    def expected(self, i: int) -> bytes:
        page: bytes = self.corpus.page(self.base[i])
        v = self.version[i]
        if v == 0:
            return page
        off = (i % (PAGE_SIZE // PATCH)) * PATCH
        return page[:off] + self.patch(i, v) + page[off + PATCH:]

    @staticmethod
    def patch(i: int, v: int) -> bytes:
        return ((i << 32 | v).to_bytes(8, "little")) * (PATCH // 8)


def run(args: argparse.Namespace) -> int:
    """Run the demo (starting a daemon unless --socket); returns 1 on any mismatch."""
    try:
        size = parse_size(args.size, "--size")
        limit = parse_size(args.limit, "--limit")
        pool = parse_size(args.pool, "--pool") if args.pool else max(size // 4, 1 << 20)
    except ConfigError:
        raise
    if args.record and args.socket:
        raise ConfigError("--record needs a started daemon: it cannot be given with --socket")
    if args.record and Path(args.record).is_dir():
        raise ConfigError(f"--record {args.record}: is a directory")
    if size < PAGE_SIZE or size % PAGE_SIZE or limit % PAGE_SIZE:
        raise ConfigError("--size and --limit must be multiples of 4096 (--size at least one page)")
    with contextlib.ExitStack() as stack:
        if args.socket:
            sock = Path(args.socket)
        else:
            work = Path(tempfile.mkdtemp(prefix="swapd-demo-"))
            stack.callback(shutil.rmtree, work, True)
            sock = stack.enter_context(started_daemon(
                work, pool_bytes=pool, disk_bytes=2 * size + (64 << 20),
                record=os.path.abspath(args.record) if args.record else None))
        result = workload(sock, size, limit, args)
    if args.json:
        json.dump(result, sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        show(result)
    return 1 if result["mismatches"] else 0


def workload(sock: Path, size: int, limit: int, args: argparse.Namespace) -> dict[str, Any]:
    """Map, fill, access, verify; return the figures."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from swapd.client import connect
    from swapd.corpus import Corpus

    rng = random.Random(args.seed)
    npages = size // PAGE_SIZE
    corpus = Corpus.open(args.corpus) if args.corpus else Corpus.synthetic(2048, args.seed)
    pages = Pages(corpus, npages, rng)
    ops = args.ops if args.ops is not None else npages // 2
    hot = max(1, min(npages, int(limit // PAGE_SIZE * 3 // 4)))
    mismatches = 0
    bad_pages: list[int] = []
    phase_s: dict[str, float] = {}
    phase_pages: dict[str, int] = {}
    crc32 = zlib.crc32

    def check(region: Any, i: int) -> None:
        nonlocal mismatches
        o = i * PAGE_SIZE
        if crc32(region[o:o + PAGE_SIZE]) != pages.crc[i]:
            mismatches += 1
            if len(bad_pages) < 16:
                bad_pages.append(i)

    def write(region: Any, i: int) -> None:
        v = pages.version[i] + 1
        pages.version[i] = v
        off = i * PAGE_SIZE + (i % (PAGE_SIZE // PATCH)) * PATCH
        region[off:off + PATCH] = pages.patch(i, v)
        pages.crc[i] = crc32(pages.expected(i))

    progress = Progress(TextColumn("{task.description:<10}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), disable=args.no_progress or args.json,
                        transient=False)
    with connect(sock, name="swapd-demo") as client, progress:
        eff_limit = client.set_limit(limit)
        region = client.map(size, name="swapd-demo")
        step = 256
        # 1. fill
        t = progress.add_task("fill", total=npages)
        t0 = time.perf_counter()
        for i in range(npages):
            page = pages.expected(i)
            pages.crc[i] = crc32(page)
            region[i * PAGE_SIZE:(i + 1) * PAGE_SIZE] = page
            if i % step == 0:
                progress.update(t, completed=i)
        progress.update(t, completed=npages)
        phase_s["fill"], phase_pages["fill"] = time.perf_counter() - t0, npages
        # 2. random: 80% of accesses to a hot set about the resident limit's size
        t = progress.add_task("random", total=ops)
        hot_base = rng.randrange(max(1, npages - hot + 1))
        t0 = time.perf_counter()
        for k in range(ops):
            i = hot_base + rng.randrange(hot) if rng.random() < 0.8 else rng.randrange(npages)
            if rng.random() < 0.3:
                write(region, i)
            else:
                check(region, i)
            if k % step == 0:
                progress.update(t, completed=k)
        progress.update(t, completed=ops)
        phase_s["random"], phase_pages["random"] = time.perf_counter() - t0, ops
        # 3. sequential scan, every 8th page written
        t = progress.add_task("sequential", total=npages)
        t0 = time.perf_counter()
        for i in range(npages):
            if i % 8 == 7:
                write(region, i)
            else:
                check(region, i)
            if i % step == 0:
                progress.update(t, completed=i)
        progress.update(t, completed=npages)
        phase_s["sequential"], phase_pages["sequential"] = time.perf_counter() - t0, npages
        # 4. verify every page
        t = progress.add_task("verify", total=npages)
        t0 = time.perf_counter()
        for i in range(npages):
            check(region, i)
            if i % step == 0:
                progress.update(t, completed=i)
        progress.update(t, completed=npages)
        phase_s["verify"], phase_pages["verify"] = time.perf_counter() - t0, npages
        mine = client.stats()
        deadline = time.monotonic() + 5.0  # let the reclaimer settle below the limit
        while mine["resident_pages"] > mine["limit_pages"] and time.monotonic() < deadline:
            time.sleep(0.05)
            mine = client.stats()
        region.close()
    layer = mine.get("layer") or {}
    orig = layer.get("orig_data_size", 0)
    compr = layer.get("compr_data_size", 0)
    return {
        "size_bytes": size, "limit_bytes": eff_limit, "pages": npages, "random_ops": ops,
        "corpus": corpus.meta.get("source", "?"),
        "mismatches": mismatches, "bad_pages": bad_pages,
        "phase_seconds": phase_s,
        "phase_us_per_page": {k: phase_s[k] / max(1, phase_pages[k]) * 1e6 for k in phase_s},
        "counters": mine["counters"], "latency": mine["latency"],
        "resident_pages": mine["resident_pages"], "limit_pages": mine["limit_pages"],
        "page_states": mine["pages"], "layer": layer,
        "compression_ratio": (orig / compr) if compr else None,
    }


def show(r: dict[str, Any]) -> None:
    """Print the demo's result table (faults, latency, compression, tiers, time per phase)."""
    from rich.console import Console
    from rich.table import Table

    c = r["counters"]
    lat = r["latency"]
    layer = r["layer"]
    tab = Table(title=f"swapd demo: {r['size_bytes'] >> 20} MiB under a "
                      f"{r['limit_bytes'] >> 20} MiB resident limit ({r['corpus']} corpus)")
    tab.add_column("metric")
    tab.add_column("value", justify="right")
    rows: list[tuple[str, str]] = [
        ("faults (MISSING)", f"{c['faults']:,}"),
        ("  swap-ins / zero-fills", f"{c['swapins']:,} / {c['zero_faults']:,}"),
        ("  readahead pages", f"{c['readahead_pages']:,}"),
        ("  write-protect faults (eviction races)", f"{c['wp_faults']:,} "
                                                     f"({c['eviction_aborts']:,} aborted)"),
        ("fault service time p50 / p99", f"{lat['p50_us']:.0f} us / {lat['p99_us']:.0f} us"),
        ("evicted pages", f"{c['evicted_pages']:,}"),
        ("store rejects (kept resident)", f"{c['store_rejects']:,}"),
        ("compression ratio", f"{r['compression_ratio']:.2f}" if r["compression_ratio"]
         else "-"),
        ("compressed tier: pages / compressed bytes",
         f"{layer.get('stored_pages', 0):,} / {layer.get('compr_data_size', 0):,}"),
        ("same-filled pages", f"{layer.get('same_filled_pages', 0):,}"),
        ("disk tier pages", f"{layer.get('disk_pages', 0):,}"),
        ("writebacks (zswpwb)", f"{layer.get('zswpwb', 0):,}"),
        ("LRU inversions", f"{layer.get('lru_inversions', 0):,}"),
        ("resident pages / limit", f"{r['resident_pages']:,} / {r['limit_pages']:,}"),
    ]
    for k, v in r["phase_us_per_page"].items():
        rows.append((f"client time, {k}", f"{v:.1f} us/page ({r['phase_seconds'][k]:.1f} s)"))
    rows.append(("MISMATCHES", f"{r['mismatches']}" + (f" (pages {r['bad_pages']})"
                                                         if r["bad_pages"] else "")))
    for k, v in rows:
        tab.add_row(k, v)
    con = Console()
    con.print(tab)
    con.print("[bold green]all pages verified[/]" if not r["mismatches"]
              else "[bold red]DATA MISMATCH[/]")
