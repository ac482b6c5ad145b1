"""The protocol fuzzer: ``--frames`` random and mutated frames against one daemon while a victim
client verifies its pages.

Frames (swapd/bench/_attacks.py ``fuzz_frames``): random bytes, mutated valid requests with
ill-typed and extreme fields, deeply nested JSON, huge integers, stray descriptors on frames of
ops that take none, and bad length headers; the fuzzer reconnects whenever the daemon closes
its connection.  Reports ``frames``, ``daemon_alive`` (process alive and a new client served),
``victim_mismatches``, ``fds_leaked`` (the daemon's descriptors after, settled, minus before),
plus the connections closed and ``loadavg`` (the machine is shared).
"""

from __future__ import annotations

import argparse
import os
import tempfile
from typing import Any

from swapd.bench import _attacks as atk
from swapd.bench.common import print_json, print_table


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``swapd bench fuzz``."""
    p.add_argument("--frames", type=int, default=100_000, help="frames to send (100000)")
    p.add_argument("--seed", type=int, default=0, help="seed of the fuzzer (0)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--workdir", default=None, help="directory for the daemon (default: temp)")


def run(args: argparse.Namespace) -> int:
    """Fuzz one daemon; print a table or JSON."""
    if args.frames <= 0:
        print("error: --frames must be positive")
        return 2
    with tempfile.TemporaryDirectory(dir=args.workdir) as work:
        d = atk.BenchDaemon(work)
        victim: atk.Victim | None = None
        try:
            victim = atk.Victim(d.socket, pages=512, limit_pages=64)
            victim.report()
            before = d.watch.fds()
            res = atk.fuzz_frames(d.socket, args.frames, seed=args.seed)
            alive = d.watch.alive() and atk.ping(d.socket)
            rep = victim.report()
            final = victim.finish()
            victim.close()
            victim = None
            after = d.watch.settled_fds(before - 1)
            out: dict[str, Any] = {
                "frames": res["frames"], "daemon_alive": bool(alive),
                "victim_mismatches": rep["mismatches"] + final["mismatches"],
                "fds_leaked": max(0, after - (before - 1)),
                "connections_closed": res["closed"],
                "victim_max_stall_ms": round(rep["max_stall_ms"], 1),
                "loadavg": list(os.getloadavg()),
            }
        finally:
            if victim is not None:
                victim.close()
            d.stop()
    if args.json:
        print_json(out)
        return 0
    print_table(f"protocol fuzzer, seed {args.seed}", list(out), [list(out.values())])
    return 0
