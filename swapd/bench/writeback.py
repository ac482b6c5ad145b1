"""Allocator-owned writeback against the layer's per-object LRU (``swapd sim writeback``).

For each trace (synthetic, from ``swapd.sim.gen``: an IRM zipf, a shifting working
set, a hot set with scans, and a phased mix) and each backend, runs
:func:`swapd.sim.wbexp.run_writeback_experiment`: one resident set and its
fault/eviction stream, fed to a per-object LRU (the layer's way), a per-page LRU that
writes back whole allocator pages (zsmalloc's 2022 writeback; zbud and z3fold's
``*_reclaim_page``) and the real layer.  The figures are counts and modelled time, not
wall time, so they do not depend on the machine's load: writebacks, LRU inversions,
refaults served from disk, and modelled microseconds per access.

JSON: {"rows": [{"trace", "backend", "mode", "writebacks", "lru_inversions",
"refaults_disk", "refaults_compressed", "modelled_us_per_access", ...}], "config": ...,
"loadavg"}.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from swapd.bench.common import add_backend_arguments, backend_names, print_json, print_table

TRACES: dict[str, tuple[str, dict[str, Any]]] = {
    "zipf": ("zipf", {"pages": 8000, "alpha": 0.9, "write_ratio": 0.1}),
    "shift": ("shift", {"pages": 20000, "wss": 2500, "period": 8000, "step": 600,
                        "write_ratio": 0.1}),
    "scan": ("scan", {"hot": 1500, "cold": 20000, "scan_len": 1500, "scan_every": 6000,
                      "write_ratio": 0.1}),
    "mix": ("mix", {"parts": "zipf:3/pages=6000/alpha=0.8,loop:1/pages=3000",
                    "phase_len": 5000, "write_ratio": 0.1}),
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Add the bench's options (requests, capacity, pool, traces, backends)."""
    p.add_argument("--requests", type=int, default=60_000, help="requests per trace")
    p.add_argument("--capacity", type=int, default=1500, help="resident pages")
    p.add_argument("--pool-mib", type=float, default=4.0, help="compressed pool limit")
    p.add_argument("--policy", default="lru", help="resident-set policy")
    p.add_argument("--traces", default=",".join(TRACES),
                   help=f"comma-separated, from {', '.join(TRACES)}")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--backend-opt", action="append", default=[], metavar="NAME=VALUE",
                   help="a backend option, for every backend measured (repeatable)")
    p.add_argument("--no-real-layer", action="store_true",
                   help="skip the third column (the real layer)")
    add_backend_arguments(p)
    p.add_argument("--json", action="store_true")


def run(args: argparse.Namespace) -> int:
    """Run the experiment on every (trace, backend); print the table or JSON."""
    from swapd.corpus import Corpus
    from swapd.errors import ConfigError
    from swapd.plugins import check_backend_options
    from swapd.sim.gen import generate
    from swapd.sim.wbexp import WritebackConfig, run_writeback_experiment

    traces = [t.strip() for t in args.traces.split(",") if t.strip()]
    bad = [t for t in traces if t not in TRACES]
    if bad or not traces:
        raise ConfigError(f"unknown trace(s) {', '.join(bad) or '(none)'}; choose from "
                          f"{', '.join(TRACES)}")
    if args.requests <= 0 or args.capacity <= 0 or args.pool_mib <= 0:
        raise ConfigError("--requests, --capacity and --pool-mib must be positive")
    opts: dict[str, str] = {}
    for kv in args.backend_opt:
        k, eq, v = kv.partition("=")
        if not eq:
            raise ConfigError(f"--backend-opt: expected NAME=VALUE, got {kv!r}")
        opts[k.strip()] = v.strip()
    backends = backend_names(args)
    checked = {b: check_backend_options(b, opts) for b in backends}
    corpus = Corpus.synthetic(4096, args.seed)
    rows: list[dict[str, Any]] = []
    for t in traces:
        kind, params = TRACES[t]
        reqs = list(generate(kind, args.requests, args.seed, **params))
        for b in backends:
            cfg = WritebackConfig(policy=args.policy, capacity=args.capacity, backend=b,
                                  pool_bytes=int(args.pool_mib * (1 << 20)), seed=args.seed,
                                  backend_options=tuple(sorted(checked[b].items())),
                                  real_layer=not args.no_real_layer)
            res = run_writeback_experiment(reqs, cfg, corpus)
            for m in res["modes"]:
                rows.append({"trace": t, "backend": b, "evictions": res["evictions"], **m})
    load = os.getloadavg()
    out: dict[str, Any] = {"rows": rows,
           "config": {"requests": args.requests, "capacity": args.capacity,
                      "pool_mib": args.pool_mib, "policy": args.policy, "seed": args.seed,
                      "traces": {t: TRACES[t] for t in traces}, "backend_options": opts},
           "loadavg": load}
    if args.json:
        print_json(out)
        return 0
    print_table(
        f"allocator-owned writeback vs per-object LRU ({args.policy}, capacity "
        f"{args.capacity}, pool {args.pool_mib:g} MiB, {args.requests} requests per trace)",
        ["trace", "backend", "mode", "writebacks", "LRU inversions", "refaults from disk",
         "refaults from pool", "us/access"],
        [[r["trace"], r["backend"], r["mode"], r["writebacks"], r["lru_inversions"],
          r["refaults_disk"], r["refaults_compressed"], r["modelled_us_per_access"]]
         for r in rows],
        caption=f"loadavg {load[0]:.2f} (figures are counts and modelled time)")
    return 0
