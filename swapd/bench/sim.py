"""Simulator speed: policy-only LRU replay against a bare OrderedDict LRU loop, and full mode.

Both policy-only contenders replay the same in-memory zipf trace with the same
capacity, in interleaved repetitions (A B A B ...), and the medians are
compared: ``swapd sim``'s policy-only path (``run_policy_only`` -> the ``lru``
plugin's ``replay``, i.e. through the policy contract) against the loop a
reader would write by hand with ``collections.OrderedDict``.  Target (issue 5):
policy-only >= 0.8x the bare loop.  Both must report the same miss count (checked).
Full mode (resident set + real layer + a backend + disk tier, synthetic corpus)
is measured on a smaller trace, as requests per second of wall time, on a run whose
tiers hold the trace without overflow (checked: no store rejected, no overflow
page; the disk tier is sized for every page of the trace).

JSON: {"ordereddict_req_per_s", "policy_only_req_per_s", "full_req_per_s", ...,
"loadavg"}.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any


def ordereddict_lru(keys: Sequence[int], cap: int) -> int:
    """The bare loop: an OrderedDict LRU of ``cap`` keys; returns the misses."""
    od: OrderedDict[int, None] = OrderedDict()
    move = od.move_to_end
    pop = od.popitem
    misses = 0
    for k in keys:
        if k in od:
            move(k)
        else:
            misses += 1
            if len(od) >= cap:
                pop(last=False)
            od[k] = None
    return misses


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Add the bench's options (trace length, capacity, repetitions, full mode)."""
    p.add_argument("--requests", type=int, default=300_000, help="policy-only trace length")
    p.add_argument("--pages", type=int, default=30_000, help="distinct pages of the zipf trace")
    p.add_argument("--capacity", type=int, default=3_000)
    p.add_argument("--reps", type=int, default=5, help="interleaved repetitions")
    p.add_argument("--full-requests", type=int, default=20_000)
    p.add_argument("--full-capacity", type=int, default=500)
    p.add_argument("--backend", default="zsmalloc")
    p.add_argument("--backend-opt", action="append", default=[], metavar="NAME=VALUE",
                   help="a backend option of the full-mode run (repeatable)")
    p.add_argument("--json", action="store_true")


def run(args: argparse.Namespace) -> int:
    """Run policy-only and full mode; print a table or JSON; returns 0."""
    from swapd.errors import ConfigError
    from swapd.plugins import check_backend_options
    from swapd.sim.gen import generate
    from swapd.sim.policy_only import run_policy_only

    opts: dict[str, str] = {}
    for kv in args.backend_opt:
        k, eq, v = kv.partition("=")
        if not eq:
            raise ConfigError(f"--backend-opt: expected NAME=VALUE, got {kv!r}")
        opts[k.strip()] = v.strip()
    args.backend_options = check_backend_options(args.backend, opts)
    keys = [r.page for r in generate("zipf", args.requests, seed=1, pages=args.pages, alpha=0.9)]
    t_od: list[float] = []
    t_pol: list[float] = []
    m_od = m_pol = -1
    for _ in range(args.reps):
        t0 = time.perf_counter()
        m_od = ordereddict_lru(keys, args.capacity)
        t1 = time.perf_counter()
        m_pol = run_policy_only(keys, "lru", args.capacity).misses
        t2 = time.perf_counter()
        t_od.append(t1 - t0)
        t_pol.append(t2 - t1)
    if m_od != m_pol:
        print(f"error: miss counts differ: OrderedDict {m_od}, policy {m_pol}", file=sys.stderr)
        return 1
    od_rps = args.requests / statistics.median(t_od)
    pol_rps = args.requests / statistics.median(t_pol)
    full_rps, full_res = _full(args)
    out: dict[str, Any] = {
        "ordereddict_req_per_s": od_rps,
        "policy_only_req_per_s": pol_rps,
        "full_req_per_s": full_rps,
        "policy_only_vs_ordereddict": pol_rps / od_rps,
        "target_ratio": 0.8,
        "requests": args.requests, "capacity": args.capacity, "reps": args.reps,
        "misses": m_od,
        "full": {"requests": args.full_requests, "capacity": args.full_capacity,
                 "backend": args.backend, "backend_options": args.backend_options,
                 "miss_ratio": full_res.get("miss_ratio"),
                 "refaults_by_tier": full_res.get("refaults_by_tier"),
                 "overflow_pages": full_res.get("overflow_pages"),
                 "store_rejects": full_res.get("store_rejects")},
        "loadavg": os.getloadavg(),
    }
    if args.json:
        json.dump(out, sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        print(f"policy-only LRU (swapd sim): {pol_rps:12,.0f} req/s (median of {args.reps})")
        print(f"bare OrderedDict LRU loop:   {od_rps:12,.0f} req/s")
        print(f"ratio: {pol_rps / od_rps:.3f}x (target >= 0.8x)")
        print(f"full mode ({args.backend}):   {full_rps:12,.0f} req/s "
              f"(miss ratio {full_res.get('miss_ratio', 0):.3f})")
    return 0


def _full(args: argparse.Namespace) -> tuple[float, dict[str, Any]]:
    from swapd.corpus import Corpus
    from swapd.errors import ConfigError
    from swapd.sim.full import FullConfig, FullSim
    from swapd.sim.gen import generate

    reqs = list(generate("zipf", args.full_requests, seed=2, pages=args.full_capacity * 6,
                         alpha=0.9, write_ratio=0.1))
    corpus = Corpus.synthetic(1024, seed=0)
    distinct = len({r.page for r in reqs})
    cfg = FullConfig(policy="lru", capacity=args.full_capacity, backend=args.backend,
                     pool_bytes=args.full_capacity * 4096 // 2,
                     disk_bytes=max(64 << 20, (distinct + 64) * 4096),
                     backend_options=tuple(sorted(args.backend_options.items())),
                     trace_pages=distinct)  # overflow would stop the run (TierOverflowError)
    with FullSim(cfg, corpus) as sim:
        t0 = time.perf_counter()
        res = sim.run(reqs)
        dt = time.perf_counter() - t0
        sim._check()
    d = res.to_dict()
    if d["overflow_pages"] or d["store_rejects"]:
        raise ConfigError(f"the full-mode run overflowed ({d['store_rejects']}): not measured")
    return args.full_requests / dt, d
