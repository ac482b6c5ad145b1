"""What a Prometheus scrape costs: /metrics time for 64 clients, and the fault path with and
without a scrape every 100 ms.

Runs a daemon (``swapd serve``), an exporter (``swapd exporter``) and a worker process
holding ``--clients`` sessions (64), each with a region of ``--pages`` pages.  A round is:
the worker evicts every region (``advise cold``) and touches every page, timing each touch
(the fault round trip as the client sees it: a swap-in through the daemon; readahead is
off so that every touch is a fault).  Rounds
alternate between *idle* and *scraped* (a thread GETs /metrics every ``--scrape-ms``
during the round), ``--reps`` of each, interleaved; each mode's figure is the median over
its rounds of the per-round median touch time.  ``scrape_ms`` is the median time of one
GET of /metrics over HTTP (``--scrapes`` of them, clients idle); ``stats_request_ms`` the
daemon's share of it (one ``stats all`` request over the socket).  The target: scraping
costs the fault path at most 5% (``fault_p50_us_scraped / fault_p50_us_idle <= 1.05``).

The machine is shared; ``loadavg`` is recorded with the figures.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from swapd.bench.common import print_json, print_table

WORKER = r"""
import json, sys, time
from swapd.client import connect
sock, nclients, npages = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
clients = [connect(sock, name=f"bench{i}") for i in range(nclients)]
regions = []
for i, c in enumerate(clients):
    c.set_limit(2 * npages * 4096)
    r = c.map(npages * 4096)
    for p in range(npages):
        r[p * 4096:p * 4096 + 16] = b"%08d%08d" % (i, p)
    regions.append(r)
print(json.dumps({"ready": 1}), flush=True)
clock = time.perf_counter_ns
for line in sys.stdin:
    samples = []
    for r in regions:
        r.advise(0, npages * 4096, "cold")
    for r in regions:
        for p in range(npages):
            t = clock()
            r[p * 4096:p * 4096 + 1]
            samples.append(clock() - t)
    samples.sort()
    print(json.dumps({"p50_us": samples[len(samples) // 2] / 1000, "n": len(samples)}),
          flush=True)
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    """``--clients``, ``--pages``, ``--reps``, ``--scrape-ms``, ``--scrapes``, ``--json``."""
    p.add_argument("--clients", type=int, default=64, help="client sessions (default 64)")
    p.add_argument("--pages", type=int, default=64, help="pages per client region (64)")
    p.add_argument("--reps", type=int, default=7, help="rounds of each mode (default 7)")
    p.add_argument("--scrape-ms", type=float, default=100.0,
                   help="scrape period during scraped rounds (default 100)")
    p.add_argument("--scrapes", type=int, default=21, help="timed scrapes (default 21)")
    p.add_argument("--json", action="store_true", help="print JSON")


def _wait_ready(proc: subprocess.Popen[bytes], notify: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    notify.settimeout(0.2)
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"error: the daemon exited with {proc.returncode}")
        if time.monotonic() > deadline:
            raise SystemExit("error: the daemon did not become ready")
        try:
            if b"READY=1" in notify.recv(4096).split(b"\n"):
                return
        except TimeoutError:
            continue


def run(args: argparse.Namespace) -> int:
    """Run the measurement; prints a table or JSON; returns 0."""
    import socket

    work = Path(tempfile.mkdtemp(prefix="swapd-bench-exporter-"))
    procs: list[subprocess.Popen[Any]] = []
    try:
        sock = work / "swapd.sock"
        cfg = work / "swapd.toml"
        # readahead off: every touch of an evicted page is one fault through the daemon
        cfg.write_text('[layer]\npool_limit_bytes = "256M"\ndisk = false\n'
                       '[pager]\nreadahead_min = 1\nreadahead_max = 1\n'
                       f'[limits]\nmax_clients = {args.clients + 8}\n'
                       'global_resident_bytes = "4G"\n')
        notify_path = work / "notify.sock"
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        notify.bind(str(notify_path))
        env = dict(os.environ, NOTIFY_SOCKET=str(notify_path))
        env.pop("WATCHDOG_USEC", None)
        log = open(work / "daemon.log", "wb")  # noqa: SIM115 (closed below)
        daemon = subprocess.Popen([sys.executable, "-m", "swapd", "serve", "--socket", str(sock),
                                   "--state-dir", str(work / "state"), "--config", str(cfg)],
                                  stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env)
        procs.append(daemon)
        _wait_ready(daemon, notify, 60)
        notify.close()
        exporter = subprocess.Popen([sys.executable, "-m", "swapd", "exporter", "--listen",
                                     "127.0.0.1:0", "--socket", str(sock)],
                                    stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        procs.append(exporter)
        assert exporter.stderr is not None
        m = re.search(r"serving (http://\S+/metrics)", exporter.stderr.readline())
        if not m:
            raise SystemExit("error: the exporter did not start")
        url = m.group(1)
        worker = subprocess.Popen([sys.executable, "-c", WORKER, str(sock), str(args.clients),
                                   str(args.pages)], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True)
        procs.append(worker)
        assert worker.stdin is not None and worker.stdout is not None
        if '"ready"' not in worker.stdout.readline():
            raise SystemExit("error: the bench worker did not start")

        def get() -> float:
            t = time.perf_counter()
            with urllib.request.urlopen(url, timeout=30) as r:
                body = r.read()
            if b"swapd_up 1.0" not in body:
                raise SystemExit("error: the exporter could not reach the daemon")
            return time.perf_counter() - t

        scrape_s = statistics.median(get() for _ in range(args.scrapes))
        from swapd.client import connect

        with connect(sock, name="bench-stats") as sc:  # the daemon's share of a scrape
            def one() -> float:
                t = time.perf_counter()
                sc.stats("all", latency=False)
                return time.perf_counter() - t

            stats_s = statistics.median(one() for _ in range(args.scrapes))

        def round_(scraped: bool) -> float:
            stop = threading.Event()

            def scraper() -> None:
                while not stop.wait(args.scrape_ms / 1000):
                    get()

            th = threading.Thread(target=scraper, daemon=True)
            if scraped:
                th.start()
            assert worker.stdin is not None and worker.stdout is not None
            worker.stdin.write("go\n")
            worker.stdin.flush()
            r = json.loads(worker.stdout.readline())
            stop.set()
            if scraped:
                th.join()
            return float(r["p50_us"])

        round_(False)  # warm-up
        idle: list[float] = []
        scraped: list[float] = []
        for i in range(2 * args.reps):
            (scraped if i % 2 else idle).append(round_(bool(i % 2)))
        out = {
            "scrape_ms": round(scrape_s * 1000, 2),
            "stats_request_ms": round(stats_s * 1000, 2),
            "fault_p50_us_idle": round(statistics.median(idle), 2),
            "fault_p50_us_scraped": round(statistics.median(scraped), 2),
            "clients": args.clients, "pages_per_client": args.pages, "reps": args.reps,
            "scrape_period_ms": args.scrape_ms,
            "ratio_scraped_idle": round(statistics.median(scraped) / statistics.median(idle), 3),
            "rounds_idle_us": [round(x, 1) for x in idle],
            "rounds_scraped_us": [round(x, 1) for x in scraped],
            "loadavg": list(os.getloadavg()),
        }
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(20)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(10)
        with contextlib.suppress(NameError):
            log.close()
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        print_json(out)
    else:
        print_table("swapd bench exporter", ["figure", "value"],
                    [(k, v) for k, v in out.items() if not k.startswith("rounds")])
    return 0
