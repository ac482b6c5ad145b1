"""Every class of hostile client (issue 13) against one daemon while a victim verifies its pages.

One daemon (``swapd serve`` in a temporary directory, or ``--socket`` to use a running one whose
pid is given by ``--pid``), one victim client (swapd/bench/_victim.py: 512 pages, a 64-page
resident limit, so its pages keep being evicted and faulted back, every read checked), and the
attacks of swapd/bench/_attacks.py one after the other.  Per attack: ``daemon_alive`` (the
process lives and a new client gets hello and ping answered), ``victim_max_stall_ms`` (the
longest single access of the victim while the attack ran), ``fds_leaked`` (the daemon's
descriptors after the attack, once settled, minus before).  Then ``victim_mismatches`` (pages
that read wrong, over the whole run) and ``daemon_rss_growth_bytes`` (RSS at the end minus after
a warm-up attack round).  Targets: alive after every attack, 0 mismatches, 0 descriptors leaked,
victim stall at most 500 ms.  ``sparse_quota`` also reports ``daemon_bytes_per_mapped_page``
(the daemon's RSS plus its state memfds' blocks, grown while its sessions hold regions mapped to
their quota and untouched, per mapped page: target about 0) and ``daemon_bytes_per_used_page``
(the same after a run of pages of one region is written and evicted).  As root with FUSE, the
daemon's disk tier is a FaultFS (swapd/kernel/fuse.py) and ``slow_disk`` makes every disk read
take 1 s while a client faults its disk pages back one at a time (the victim's pages are in
memory: it must not wait for them).  The machine is shared: ``loadavg`` is recorded.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from collections.abc import Callable
from typing import Any

from swapd.bench import _attacks as atk
from swapd.bench.common import print_json, print_table

#: keys an attack may report beside the common ones (the last round's value is kept)
_FIGURES = ("daemon_bytes_per_mapped_page", "daemon_bytes_per_used_page", "used_pages",
            "mapped_bytes", "slow_reads", "attacker_seconds", "attacker_disk_pages",
            "attacker_mismatches")


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``swapd bench hostile``."""
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--workdir", default=None, help="directory for the daemon (default: temp)")
    p.add_argument("--rounds", type=int, default=1, help="rounds of every attack (1)")
    p.add_argument("--load-workers", type=int, default=None,
                   help="the daemon's [pager] load_workers (default: the built-in; 0 loads "
                        "slow-tier pages on the event loop, as before)")


def _attacks(sock: str, pid: int, fs: Any = None) -> dict[str, Callable[[], Any]]:
    out: dict[str, Callable[[], Any]] = {
        "frames": lambda: atk.attack_frames(sock),
        "descriptors_without_frames": lambda: atk.attack_descriptors_without_frames(sock),
        "bad_map_descriptors": lambda: atk.attack_bad_map_descriptors(sock),
        "changed_descriptors": lambda: atk.attack_changed_descriptors(sock),
        "idle_connections": lambda: atk.attack_idle_connections(sock, n=40, hold_s=3.0),
        "fault_storm": lambda: atk.attack_fault_storm(sock, seconds=3.0, procs=2),
        "long_requests": lambda: atk.attack_long_requests(sock, rounds=2),
        "sparse_quota": lambda: atk.attack_sparse_quota(sock, sessions=8, daemon_pid=pid),
        "many_mappings": lambda: atk.attack_many_mappings(sock, mappings=60_000, rounds=20),
        "fuzz_10k": lambda: atk.fuzz_frames(sock, 10_000, seed=3),
    }
    if os.geteuid() == 0:
        out["emfile"] = lambda: atk.attack_emfile(sock, pid, seconds=2.0)
    if fs is not None:  # the daemon's disk on a FUSE file system that can be made slow
        out["slow_disk"] = lambda: atk.attack_slow_disk(sock, fs, delay_s=1.0, pages=6)
    return out


def _slow_disk_fs(work: str) -> Any:
    """A FaultFS (swapd/kernel/fuse.py) for the daemon's disk tier, or None without FUSE."""
    from swapd.kernel.fuse import FaultFS, fuse_unavailable

    if fuse_unavailable() is not None:
        return None
    mnt = os.path.join(work, "disk")
    os.mkdir(mnt)
    return FaultFS(mnt, capacity=512 << 20)


def run(args: argparse.Namespace) -> int:
    """Run every attack against one daemon; print a table or JSON."""
    with tempfile.TemporaryDirectory(dir=args.workdir) as work:
        fs = _slow_disk_fs(work)
        config = atk.BENCH_CONFIG
        if args.load_workers is not None:
            config += f"[pager]\nload_workers = {args.load_workers}\n"
        if fs is not None:
            config = config.replace('disk_bytes = "256M"',
                                    f'disk_bytes = "256M"\ndisk_path = "{fs.mountpoint}"')
        try:
            d = atk.BenchDaemon(work, config)
        except BaseException:
            if fs is not None:
                fs.close()
            raise
        victim: atk.Victim | None = None
        try:
            victim = atk.Victim(d.socket, pages=512, limit_pages=64)
            w = d.watch
            result: dict[str, Any] = {"attacks": {}}
            attacks = _attacks(d.socket, d.proc.pid, fs)
            mismatches = 0
            rss0 = 0
            for rnd in range(args.rounds + 1):  # round 0 warms up (not reported)
                for name, fn in attacks.items():
                    mismatches += victim.report()["mismatches"]
                    before = w.fds()
                    got = fn()
                    rep = victim.report()
                    mismatches += rep["mismatches"]
                    alive = w.alive() and atk.ping(d.socket)
                    leaked = max(0, w.settled_fds(before) - before)
                    if rnd == 0:
                        continue
                    prev = result["attacks"].get(name, {"victim_max_stall_ms": 0.0,
                                                        "fds_leaked": 0, "daemon_alive": True})
                    result["attacks"][name] = {
                        "daemon_alive": bool(alive and prev["daemon_alive"]),
                        "victim_max_stall_ms": round(max(rep["max_stall_ms"],
                                                         prev["victim_max_stall_ms"]), 1),
                        "fds_leaked": leaked + prev["fds_leaked"],
                        "victim_alive": bool(rep["alive"]),
                        **{k: v for k, v in (got or {}).items() if k in _FIGURES},
                    }
                if rnd == 0:
                    rss0 = w.rss()
            final = victim.finish()
            mismatches += final["mismatches"]
            result["victim_mismatches"] = mismatches
            result["daemon_rss_growth_bytes"] = w.rss() - rss0
            result["victim_alive"] = bool(final["alive"])
            result["loadavg"] = list(os.getloadavg())
        finally:
            if victim is not None:
                victim.close()
            rc = d.stop()
            if fs is not None:  # after the daemon: it holds the disk file
                fs.close()
        result["daemon_exit_status"] = rc
    if args.json:
        print_json(result)
        return 0
    print_table("hostile clients against one daemon, a victim verifying its pages",
                ["attack", "daemon alive", "victim max stall ms", "fds leaked"],
                [(n, str(a["daemon_alive"]), a["victim_max_stall_ms"], a["fds_leaked"])
                 for n, a in result["attacks"].items()],
                caption=f"victim mismatches {result['victim_mismatches']}, daemon RSS growth "
                        f"{result['daemon_rss_growth_bytes']} bytes, loadavg {result['loadavg']}")
    return 0
