"""A soak: ``--clients`` clients for ``--minutes`` against one daemon, every page verified.

Each client is a victim process (swapd/bench/_victim.py: 256 pages, a 32-page resident limit,
random writes and verified reads); every ``--sample-s`` seconds the daemon's RSS and descriptor
count are sampled.  Reports ``mismatches`` (over all clients), ``clients_alive`` at the end,
the RSS and descriptor samples, and their growth after warm-up (the first fifth of the run):
``rss_growth_bytes`` and ``fd_growth`` between the warm-up's end and the end, and
``rss_growth_last_half_bytes`` (each session keeps up to ``[pager] latency_samples`` fault
latencies, which fill during the first minutes of a busy run).  Targets: 0
mismatches; RSS and descriptors flat after warm-up.  ``loadavg`` is recorded (shared machine).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from typing import Any

from swapd.bench import _attacks as atk
from swapd.bench.common import print_json, print_table


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``swapd bench soak``."""
    p.add_argument("--clients", type=int, default=16, help="client processes (16)")
    p.add_argument("--minutes", type=float, default=10.0, help="duration (10)")
    p.add_argument("--sample-s", type=float, default=5.0, help="sampling period (5 s)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--workdir", default=None, help="directory for the daemon (default: temp)")


def run(args: argparse.Namespace) -> int:
    """Run the soak; print a table or JSON."""
    if args.clients <= 0 or args.minutes <= 0:
        print("error: --clients and --minutes must be positive")
        return 2
    cfg = atk.BENCH_CONFIG.replace("max_sessions_per_uid = 48",
                                   f"max_sessions_per_uid = {max(48, args.clients + 4)}")
    with tempfile.TemporaryDirectory(dir=args.workdir) as work:
        d = atk.BenchDaemon(work, cfg)
        victims: list[atk.Victim] = []
        samples: list[dict[str, Any]] = []
        try:
            for i in range(args.clients):
                victims.append(atk.Victim(d.socket, pages=256, limit_pages=32, seed=i + 1))
            t0 = time.monotonic()
            end = t0 + args.minutes * 60
            mismatches = 0
            while True:
                now = time.monotonic()
                samples.append({"t_s": round(now - t0, 1), "rss": d.watch.rss(),
                                "fds": d.watch.fds()})
                if now >= end:
                    break
                time.sleep(min(args.sample_s, max(0.0, end - now)))
                for v in victims:
                    mismatches += v.report()["mismatches"]
            alive = 0
            for v in victims:
                fin = v.finish()
                mismatches += fin["mismatches"]
                alive += int(fin["alive"])
        finally:
            for v in victims:
                v.close()
            d.stop()
    warm = samples[max(1, len(samples) // 5) - 1]
    half = samples[len(samples) // 2]
    last = samples[-1]
    out: dict[str, Any] = {
        "clients": args.clients, "minutes": args.minutes, "mismatches": mismatches,
        "clients_alive": alive, "rss_growth_bytes": last["rss"] - warm["rss"],
        "fd_growth": last["fds"] - warm["fds"], "rss_after_warmup": warm["rss"],
        "rss_growth_last_half_bytes": last["rss"] - half["rss"],
        "fds_after_warmup": warm["fds"], "samples": samples, "loadavg": list(os.getloadavg()),
    }
    if args.json:
        print_json(out)
        return 0
    print_table(f"soak: {args.clients} clients, {args.minutes} min",
                ["mismatches", "clients alive", "RSS growth", "fd growth"],
                [(mismatches, alive, out["rss_growth_bytes"], out["fd_growth"])],
                caption=f"loadavg {out['loadavg']}")
    return 0
