"""``swapd sim``: replay traces through the real policies, layer and backends.

  swapd sim --trace FILE [--format F] --policy P --capacity N [--json]
        policy-only: a cache of N pages run by policy P (comparable with libCacheSim)
  swapd sim --trace FILE --policy P --capacity N --backend B [--pool-mib M] [--disk-mib D]
        full mode: N resident pages, then the real layer (compressed tier on backend B
        with a pool limit of M MiB, then a disk tier of D MiB; --disk-mib 0: none)
  swapd sim gen KIND -n N [--seed S] [--set K=V ...] -o FILE
        write a synthetic trace (kinds: zipf, scan, shift, loop)
  swapd sim sweep --trace FILE --policies P,Q --capacities A,B|--points K [--backends B,C] -o DIR
        miss-ratio curves etc. on every core; writes sweep.csv, sweep.json and PNG figures
  swapd sim mrc --trace FILE [--capacities ...|--points K]
        the exact LRU miss-ratio curve in one pass (Mattson stack distances)

Trace formats: text (one page id per line), csv (time,page,op,size), oracleGeneral
(libCacheSim binary; .zst accepted).  Page contents come from --corpus FILE
(``swapd corpus capture``) or a synthetic corpus; modelled time from --costs FILE
(``swapd bench costs``) or built-in figures from docs/design.md sec. 11.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from swapd.errors import ConfigError
from swapd.sim.costs import DEFAULT_COSTS, CostTable

MIB = 1 << 20


def _kv(s: str) -> tuple[str, Any]:
    if "=" not in s:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {s!r}")
    k, v = s.split("=", 1)
    return k.strip(), _literal(v.strip())


def _literal(v: str) -> Any:
    low = v.lower()
    if low in ("true", "yes", "on"):
        return True
    if low in ("false", "no", "off"):
        return False
    if low in ("none", "null"):
        return None
    for conv in (int, float):
        try:
            return conv(v)
        except ValueError:
            pass
    return v


def _int_list(s: str) -> list[int]:
    try:
        return [int(x) for x in s.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {s!r}") from None


def _name_list(s: str) -> list[str]:
    return [x.strip() for x in s.split(",") if x.strip()]


def _add_trace(p: argparse.ArgumentParser, required: bool) -> None:
    p.add_argument("--trace", required=required, metavar="FILE", help="the trace to replay")
    p.add_argument("--format", dest="fmt", default=None, metavar="F",
                   help="text, csv or oracleGeneral (default: detected)")


def _add_full(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("full mode (the real layer below the resident set)")
    g.add_argument("--pool-mib", type=float, default=None, metavar="M",
                   help="compressed pool limit in MiB (default: half the resident capacity)")
    g.add_argument("--disk-mib", type=float, default=256.0, metavar="D",
                   help="disk tier size in MiB, 0 for none (default 256)")
    g.add_argument("--compressor", default="lz4", help="lz4, zstd or none (default lz4)")
    g.add_argument("--demotion", default="lru", metavar="P",
                   help="the layer's demotion policy (default lru)")
    g.add_argument("--layer", action="append", type=_kv, default=[], metavar="K=V",
                   help="a swapd.layer.LayerConfig field, e.g. reject_to_disk_when_full=true")
    g.add_argument("--corpus", default=None, metavar="FILE",
                   help="page contents (swapd corpus capture); default: synthetic corpus")
    g.add_argument("--corpus-pages", type=int, default=4096, metavar="N",
                   help="pages of the synthetic corpus (default 4096)")
    g.add_argument("--costs", default=None, metavar="FILE",
                   help="cost table from `swapd bench costs` (default: docs/design.md "
                        "sec. 11 figures)")
    g.add_argument("--seed", type=int, default=0, help="seed of page contents (default 0)")
    g.add_argument("--shrink-interval", type=float, default=0.1, metavar="S",
                   help="modelled seconds between proactive shrinker runs (default 0.1, the "
                        "daemon's; 0: never)")
    g.add_argument("--compact-interval", type=float, default=0.0, metavar="S",
                   help="modelled seconds between layer.compact() calls (default 0: never)")
    g.add_argument("--window", type=int, default=0, metavar="N",
                   help="record a time-series point every N requests")


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Add the options of ``swapd sim`` and its subcommands to ``p``."""
    _add_trace(p, required=False)
    p.add_argument("--policy", default="lru", help="reclaim policy of resident pages")
    p.add_argument("--param", action="append", type=_kv, default=[], metavar="K=V",
                   help="a policy parameter (repeatable)")
    p.add_argument("--capacity", type=int, default=None, metavar="N",
                   help="resident capacity in pages")
    p.add_argument("--backend", default=None, metavar="B",
                   help="allocator backend: switches to full mode")
    p.add_argument("--check-every", type=int, default=0, metavar="N",
                   help="full mode: run every _check() each N requests")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    _add_full(p)
    sub = p.add_subparsers(dest="sim_cmd", metavar="{gen,sweep,mrc}")

    from swapd.sim.gen import GENERATORS

    kinds = "\n".join(
        f"  {g.name}: {g.doc}\n    parameters: "
        + ", ".join(f"{k}={v}" for k, v in g.params.items()) for g in GENERATORS.values())
    g = sub.add_parser("gen", help="write a synthetic trace",
                       description="Write a seeded synthetic trace.\n\n" + kinds,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    g.add_argument("kind", choices=sorted(GENERATORS))
    g.add_argument("-n", "--requests", type=int, default=100000, help="requests (default 1e5)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--set", action="append", type=_kv, default=[], metavar="K=V",
                   help="a generator parameter (repeatable)")
    g.add_argument("-o", "--output", required=True, metavar="FILE")
    g.add_argument("--format", dest="fmt", default=None,
                   help="text, csv or oracleGeneral (default: from the file name, else csv)")

    s = sub.add_parser("sweep", help="run many simulations on every core",
                       description="Sweep capacities x policies (x backends: full mode).")
    _add_trace(s, required=True)
    s.add_argument("--policies", type=_name_list, default=["lru"], metavar="P,Q")
    s.add_argument("--capacities", type=_int_list, default=None, metavar="A,B,...")
    s.add_argument("--points", type=int, default=8,
                   help="log-spaced capacities from 1%% to 100%% of the distinct pages")
    s.add_argument("--backends", type=_name_list, default=[], metavar="B,C",
                   help="full mode over these backends (default: policy-only)")
    s.add_argument("--workers", type=int, default=None, help="processes (default: cores)")
    s.add_argument("--no-mattson", action="store_true", help="skip the Mattson LRU curve")
    s.add_argument("--no-plots", action="store_true", help="skip the PNG figures")
    s.add_argument("--no-progress", action="store_true")
    s.add_argument("-o", "--output", required=True, metavar="DIR")
    s.add_argument("--json", action="store_true", help="print the results as JSON")
    _add_full(s)

    m = sub.add_parser("mrc", help="exact LRU miss-ratio curve (Mattson, one pass)")
    _add_trace(m, required=True)
    m.add_argument("--capacities", type=_int_list, default=None, metavar="A,B,...")
    m.add_argument("--points", type=int, default=12)
    m.add_argument("--json", action="store_true")


def _costs(args: argparse.Namespace) -> CostTable:
    return CostTable.load(args.costs) if args.costs else DEFAULT_COSTS


def _pool_bytes(args: argparse.Namespace, capacity: int) -> int:
    if args.pool_mib is None:
        return max(4096, capacity * 4096 // 2)
    if args.pool_mib <= 0:
        raise ConfigError(f"--pool-mib must be positive, got {args.pool_mib}")
    return int(args.pool_mib * MIB)


def _disk_bytes(args: argparse.Namespace) -> int:
    if args.disk_mib < 0:
        raise ConfigError(f"--disk-mib must be >= 0, got {args.disk_mib}")
    return int(args.disk_mib * MIB)


def run(args: argparse.Namespace) -> int:
    """Run ``swapd sim`` (or its subcommand); return the exit status."""
    cmd = getattr(args, "sim_cmd", None)
    if cmd == "gen":
        return _run_gen(args)
    if cmd == "sweep":
        return _run_sweep(args)
    if cmd == "mrc":
        return _run_mrc(args)
    return _run_one(args)


def _run_gen(args: argparse.Namespace) -> int:
    from swapd.sim.gen import generate
    from swapd.sim.trace import write_trace

    n = write_trace(args.output, generate(args.kind, args.requests, args.seed, **dict(args.set)),
                    args.fmt)
    print(f"wrote {n} requests to {args.output}", file=sys.stderr)
    return 0


def _run_one(args: argparse.Namespace) -> int:
    if not args.trace:
        raise ConfigError("swapd sim needs --trace FILE (or a subcommand: gen, sweep, mrc)")
    if args.capacity is None or args.capacity <= 0:
        raise ConfigError("swapd sim needs --capacity N (pages, > 0)")
    from swapd.sim.trace import read_pages, read_trace

    params = dict(args.param)
    if args.backend is None:
        from swapd.sim.policy_only import run_policy_only

        res = run_policy_only(read_pages(args.trace, args.fmt), args.policy, args.capacity,
                              params, window=args.window)
        d = res.to_dict()
    else:
        from swapd.sim.full import FullConfig, run_full
        from swapd.sim.sweep import open_corpus

        cfg = FullConfig(policy=args.policy, capacity=args.capacity,
                         params=tuple(sorted(params.items())), backend=args.backend,
                         compressor=args.compressor, pool_bytes=_pool_bytes(args, args.capacity),
                         disk_bytes=_disk_bytes(args), demotion_policy=args.demotion,
                         layer_options=tuple(sorted(dict(args.layer).items())), seed=args.seed,
                         window=args.window, check_every=args.check_every,
                         shrink_interval_s=args.shrink_interval,
                         compact_interval_s=args.compact_interval)
        corpus = open_corpus(args.corpus, args.corpus_pages, args.seed)
        try:
            d = run_full(read_trace(args.trace, args.fmt), cfg, corpus, _costs(args)).to_dict()
        finally:
            getattr(corpus, "close", lambda: None)()
    d["trace"] = args.trace
    if args.json:
        json.dump(d, sys.stdout, indent=1, default=str)
        sys.stdout.write("\n")
    else:
        _print_summary(d)
    return 0


def _print_summary(d: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"swapd sim ({d['mode']}): {d['trace']}", show_header=False)
    t.add_column("what")
    t.add_column("value", justify="right")
    t.add_row("policy", f"{d['policy'] if 'policy' in d else d['config']['policy']}")
    cap = d.get("capacity", d.get("config", {}).get("capacity"))
    t.add_row("capacity (pages)", str(cap))
    t.add_row("accesses", f"{d['accesses']}")
    t.add_row("misses", f"{d['misses']}")
    t.add_row("miss ratio", f"{d['miss_ratio']:.4f}")
    if d["mode"] == "full":
        cfg = d["config"]
        t.add_row("backend / compressor", f"{cfg['backend']} / {cfg['compressor']}")
        t.add_row("pool limit / disk", f"{cfg['pool_bytes'] / MIB:.2f} MiB / "
                                      f"{cfg['disk_bytes'] / MIB:.0f} MiB")
        t.add_row("first-touch faults", str(d["first_touch"]))
        t.add_row("refaults", str(d["refaults"]))
        for tier, n in sorted(d["refaults_by_tier"].items()):
            t.add_row(f"  from {tier}", str(n))
        t.add_row("evictions (stores accepted)", str(d["evictions"]))
        for reason, n in sorted(d["store_rejects"].items()):
            t.add_row(f"  rejected: {reason}", str(n))
        cr, dens = d.get("compression_ratio"), d.get("pool_density")
        t.add_row("compression ratio", f"{cr:.2f}" if cr else "-")
        t.add_row("pool density", f"{dens:.2f}" if dens else "-")
        t.add_row("writebacks", str(d["writebacks"]))
        t.add_row("LRU inversions", str(d["lru_inversions"]))
        for k in ("zswpin", "zswpout", "zswpwb", "pool_limit_hit", "reject_compress_poor",
                  "reject_reclaim_fail", "same_filled_pages", "stored_pages"):
            if k in d["layer"]:
                t.add_row(k, str(d["layer"][k]))
        t.add_row("modelled time", f"{d['modelled_time_s']:.4f} s "
                                   f"({d['modelled_us_per_access']:.2f} us/access)")
        t.add_row("costs from", d["costs"]["source"])
    Console().print(t)


def _capacities(args: argparse.Namespace) -> list[int]:
    if args.capacities:
        if min(args.capacities) <= 0:
            raise ConfigError("capacities must be positive")
        return sorted(set(args.capacities))
    from swapd.sim.sweep import auto_capacities

    return auto_capacities(args.trace, args.fmt, args.points)


def _run_sweep(args: argparse.Namespace) -> int:
    from swapd.sim.sweep import make_jobs, run_sweep

    caps = _capacities(args)
    full: dict[str, Any] = {}
    if args.backends:
        pool = (int(args.pool_mib * MIB) if args.pool_mib else 0)
        full = {"compressor": args.compressor, "disk_bytes": _disk_bytes(args),
                "layer_options": tuple(sorted(dict(args.layer).items())),
                "corpus": args.corpus, "corpus_pages": args.corpus_pages, "seed": args.seed,
                "demotion_policy": args.demotion, "shrink_interval_s": args.shrink_interval,
                "compact_interval_s": args.compact_interval,
                "costs": tuple(sorted(_costs(args).to_dict().items()))}
    jobs = make_jobs(args.trace, args.fmt, args.policies, caps, args.backends,
                     mattson=not args.no_mattson, window=args.window, **full)
    if args.backends:  # pool limit per capacity unless given
        import dataclasses

        jobs = [dataclasses.replace(j, pool_bytes=pool or max(4096, j.capacity * 4096 // 2))
                if j.kind == "full" else j for j in jobs]
    out = run_sweep(jobs, args.output, workers=args.workers, progress=not args.no_progress,
                    plots=not args.no_plots,
                    meta={"trace": args.trace, "policies": args.policies, "capacities": caps,
                          "backends": args.backends})
    if args.json:
        json.dump({"csv": str(out.csv), "json": str(out.json),
                   "figures": [str(f) for f in out.figures], "results": list(out.results)},
                  sys.stdout, indent=1, default=str)
        sys.stdout.write("\n")
    else:
        print(f"wrote {out.csv}, {out.json}" + "".join(f", {f}" for f in out.figures))
    return 0


def _run_mrc(args: argparse.Namespace) -> int:
    from swapd.sim.mattson import stack_distances
    from swapd.sim.trace import read_pages

    sd = stack_distances(list(read_pages(args.trace, args.fmt)))
    if args.capacities:
        caps = sorted(set(args.capacities))
    else:
        from swapd.sim.sweep import auto_capacities

        caps = auto_capacities(args.trace, args.fmt, args.points)
    curve = sd.curve(caps)
    if args.json:
        json.dump({"accesses": sd.accesses, "distinct": sd.distinct,
                   "curve": [{"capacity": c, "misses": m,
                              "miss_ratio": m / sd.accesses if sd.accesses else 0.0}
                             for c, m in curve]}, sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        print(f"# {sd.accesses} accesses, {sd.distinct} distinct pages")
        print("capacity,misses,miss_ratio")
        for c, m in curve:
            print(f"{c},{m},{m / sd.accesses if sd.accesses else 0.0:.6f}")
    return 0
