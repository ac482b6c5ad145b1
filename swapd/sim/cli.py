"""``swapd sim``: replay traces through the real policies, layer and backends.

  swapd sim --trace FILE [--format F] --policy P [--param K=V] --capacity N [--json]
        policy-only: a cache of N pages run by policy P (comparable with libCacheSim)
  swapd sim --trace FILE --policy P --capacity N --backend B [--backend-opt K=V]
            [--pool-mib M] [--disk-mib D] [--allow-overflow]
        full mode: N resident pages, then the real layer (compressed tier on backend B
        with a pool limit of M MiB, then a disk tier of D MiB; --disk-mib 0: none).
        Resident pages never exceed N; a tier too small for the trace stops the run
        with an error naming the tier and the size it needs (--allow-overflow: count
        the pages that did not fit instead, in the text and the JSON)
  swapd sim gen KIND -n N [--seed S] [--set K=V ...] -o FILE
        write a synthetic trace (kinds: zipf, scan, shift, loop, mix; see gen --help)
  swapd sim sweep --trace FILE --policies P,Q --capacities A,B|--points K
            [--param P.K=V1,V2] [--backends B,C] [--pool-mib M1,M2] [--disk-mib D1,D2]
            [--compressor C1,C2] [--scheduler tcp://HOST:PORT] -o DIR
        every combination, on every core (or a Dask cluster); writes sweep.csv,
        sweep.json and PNG figures, and prints the answer (best policy per capacity,
        smallest pool within --within % of the best modelled time)
  swapd sim report DIR
        one self-contained HTML page (DIR/report.html) of a sweep's plots and tables
  swapd sim writeback --trace FILE --capacity N --backend B --pool-mib M
        the allocator-owned writeback experiment: a per-page LRU inside the allocator
        writing back whole pages of objects (zsmalloc's 2022 writeback) against the
        layer's per-object LRU, on the same fault/eviction stream
  swapd sim mrc --trace FILE [--capacities ...|--points K]
        the exact LRU miss-ratio curve in one pass (Mattson stack distances)

Trace formats: text (one page id per line), csv (time,page,op,size), oracleGeneral
(libCacheSim binary; .zst accepted).  A trace recorded by ``swapd serve --record``
is the fault/eviction stream below the daemon's resident set: see
docs/simulator.md for what each mode does with it.  Page contents come from
--corpus FILE (``swapd corpus capture``) or a synthetic corpus; modelled time from
--costs FILE (``swapd bench costs``) or built-in figures (docs/design.md sec. 11).
Every bad input is reported as one ``error:`` line before any work starts.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
from pathlib import Path
from typing import Any

from swapd.config import parse_literal
from swapd.errors import ConfigError
from swapd.sim.costs import DEFAULT_COSTS, CostTable

MIB = 1 << 20


def _kv(s: str) -> tuple[str, Any]:
    if "=" not in s:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {s!r}")
    k, v = s.split("=", 1)
    if not k.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {s!r}")
    return k.strip(), parse_literal(v.strip())


def _raw_kv(s: str) -> tuple[str, str]:
    if "=" not in s or not s.split("=", 1)[0].strip():
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {s!r}")
    k, v = s.split("=", 1)
    return k.strip(), v.strip()


def _int_list(s: str) -> list[int]:
    try:
        out = [int(x) for x in s.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {s!r}") from None
    if not out:
        raise argparse.ArgumentTypeError("expected at least one integer")
    return out


def _float_list(s: str) -> list[float]:
    try:
        out = [float(x) for x in s.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {s!r}") from None
    if not out:
        raise argparse.ArgumentTypeError("expected at least one number")
    return out


def _name_list(s: str) -> list[str]:
    out = [x.strip() for x in s.split(",") if x.strip()]
    if not out:
        raise argparse.ArgumentTypeError("expected at least one name")
    return out


def _positive_int(s: str) -> int:
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {s!r}") from None
    if v <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {v}")
    return v


def _add_trace(p: argparse.ArgumentParser, required: bool) -> None:
    p.add_argument("--trace", required=required, metavar="FILE", help="the trace to replay")
    p.add_argument("--format", dest="fmt", default=None, metavar="F",
                   help="text, csv or oracleGeneral (default: detected)")


def _add_full(p: argparse.ArgumentParser, sweep: bool = False) -> None:
    g = p.add_argument_group("full mode (the real layer below the resident set)")
    if sweep:
        g.add_argument("--pool-mib", type=_float_list, default=None, metavar="M1,M2",
                       help="compressed pool limits in MiB (default: half the capacity)")
        g.add_argument("--disk-mib", type=_float_list, default=[256.0], metavar="D1,D2",
                       help="disk tier sizes in MiB, 0 for none (default 256)")
        g.add_argument("--compressor", type=_name_list, default=["lz4"], metavar="C1,C2",
                       help="compressors: lz4, zstd, none (default lz4)")
    else:
        g.add_argument("--pool-mib", type=float, default=None, metavar="M",
                       help="compressed pool limit in MiB (default: half the resident capacity)")
        g.add_argument("--disk-mib", type=float, default=256.0, metavar="D",
                       help="disk tier size in MiB, 0 for none (default 256)")
        g.add_argument("--compressor", default="lz4", help="lz4, zstd or none (default lz4)")
    g.add_argument("--backend-opt", action="append", type=_raw_kv, default=[],
                   metavar="NAME=VALUE",
                   help="a backend option (repeatable; `swapd backends` lists them)")
    g.add_argument("--allow-overflow", action="store_true",
                   help="count pages no tier can hold instead of stopping the run")
    if not sweep:
        g.add_argument("--tiers", default=None, metavar="T1,T2",
                       help="the chain of tiers, fastest first (swapd.tiers plugins: "
                            "compressed, disk, redis; default compressed,disk)")
        g.add_argument("--tier-opt", action="append", type=_raw_kv, default=[],
                       metavar="TIER.KEY=VALUE",
                       help="an option of a tier of the chain, e.g. redis.url=redis://H:P "
                            "(repeatable; as [tier.TIER] in the daemon's config)")
        g.add_argument("--config", default=None, metavar="FILE",
                       help="take the chain and its [tier.NAME] options from the daemon's "
                            "config file ([layer] tiers); --tiers/--tier-opt win over it")
    g.add_argument("--demotion", default="lru", metavar="P",
                   help="the layer's demotion policy (default lru)")
    g.add_argument("--layer", action="append", type=_kv, default=[], metavar="K=V",
                   help="a swapd.layer.LayerConfig field, e.g. reject_to_disk_when_full=true")
    g.add_argument("--corpus", default=None, metavar="FILE",
                   help="page contents (swapd corpus capture); default: synthetic corpus")
    g.add_argument("--corpus-pages", type=_positive_int, default=4096, metavar="N",
                   help="pages of the synthetic corpus (default 4096)")
    g.add_argument("--costs", default=None, metavar="FILE",
                   help="cost table from `swapd bench costs` (default: docs/design.md "
                        "sec. 11 figures)")
    g.add_argument("--seed", type=int, default=0, help="seed of page contents (default 0)")
    g.add_argument("--shrink-interval", type=float, default=0.1, metavar="S",
                   help="modelled seconds between proactive shrinker runs (default 0.1, the "
                        "daemon's; 0: never)")
    g.add_argument("--compact-interval", type=float, default=1.0, metavar="S",
                   help="modelled seconds between layer.compact() calls (default 1; 0: only "
                        "when writeback stalls)")
    g.add_argument("--window", type=int, default=None, metavar="N",
                   help="record a time-series point every N requests (default: 200 points "
                        "per run in sweeps, none for one run)")
    g.add_argument("--daemon-config", default="", metavar="FILE",
                   help="daemon mode: size and place as the daemon with this swapd.toml does "
                        "(or 'defaults'); --capacity is the client's resident limit")
    g.add_argument("--region-pages", type=int, default=0, metavar="N",
                   help="daemon mode: pages per daemon region of the trace (0: unbounded)")


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Add the options of ``swapd sim`` and its subcommands to ``p``."""
    _add_trace(p, required=False)
    p.add_argument("--policy", default="lru", help="reclaim policy of resident pages")
    p.add_argument("--param", action="append", type=_kv, default=[], metavar="K=V",
                   help="a policy parameter (repeatable; `swapd policies` lists them)")
    p.add_argument("--capacity", type=int, default=None, metavar="N",
                   help="resident capacity in pages")
    p.add_argument("--backend", default=None, metavar="B",
                   help="allocator backend: switches to full mode")
    p.add_argument("--check-every", type=int, default=0, metavar="N",
                   help="full mode: run every _check() each N requests")
    p.add_argument("--replay", action="store_true",
                   help="a trace recorded by `swapd serve --record`: replay the daemon's own "
                        "stores and loads through the layer (needs --backend; no resident "
                        "policy runs; see docs/simulator.md)")
    p.add_argument("--refbit", action="store_true",
                   help="a recorded trace's referenced-bit samples (op a) count as accesses")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    _add_full(p)
    sub = p.add_subparsers(dest="sim_cmd", metavar="{gen,sweep,report,writeback,mrc}")

    from swapd.sim.gen import GENERATORS, PARAM_DOCS

    kinds = "\n".join(
        f"  {g.name}: {g.doc}\n" + "".join(
            f"    {k}={v!r}: {PARAM_DOCS.get(g.name, {}).get(k, '')}\n"
            for k, v in g.params.items()) for g in GENERATORS.values())
    g = sub.add_parser("gen", help="write a synthetic trace",
                       description="Write a seeded synthetic trace.  Kinds, with each "
                                   "parameter (set with --set NAME=VALUE) and its default:\n\n"
                                   + kinds + "\nExample: swapd sim gen mix -n 100000 --set "
                                   "parts=zipf:3/alpha=0.9,loop:1/pages=3000 -o mix.txt",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    g.add_argument("kind", choices=sorted(GENERATORS))
    g.add_argument("-n", "--requests", type=_positive_int, default=100000,
                   help="requests (default 1e5)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--set", action="append", type=_kv, default=[], metavar="K=V",
                   help="a generator parameter (repeatable)")
    g.add_argument("-o", "--output", required=True, metavar="FILE")
    g.add_argument("--format", dest="fmt", default=None,
                   help="text, csv or oracleGeneral (default: from the file name, else csv)")

    s = sub.add_parser("sweep", help="run many simulations on every core",
                       description="Sweep capacities x policies (x backends x pools x disks x "
                                   "compressors: full mode), then print the answer.")
    _add_trace(s, required=True)
    s.add_argument("--policies", type=_name_list, default=["lru"], metavar="P,Q")
    s.add_argument("--param", action="append", type=_raw_kv, default=[],
                   metavar="[POLICY.]NAME=V1,V2",
                   help="policy parameter values to sweep (repeatable); with POLICY. only "
                        "for that policy, e.g. s3fifo.small_ratio=0.1,0.25")
    s.add_argument("--capacities", type=_int_list, default=None, metavar="A,B,...")
    s.add_argument("--points", type=_positive_int, default=8,
                   help="log-spaced capacities from 1%% to 100%% of the distinct pages")
    s.add_argument("--backends", type=_name_list, default=[], metavar="B,C",
                   help="full mode over these backends (default: policy-only)")
    s.add_argument("--within", type=float, default=5.0, metavar="PCT",
                   help="summary: smallest pool within PCT %% of the best time (default 5)")
    s.add_argument("--workers", type=_positive_int, default=None,
                   help="processes (default: cores)")
    s.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="run the jobs on this Dask distributed scheduler (tcp://HOST:PORT; "
                        "needs the distributed extra)")
    s.add_argument("--ship-trace", action="store_true",
                   help="with --scheduler: send the trace with each job instead of reading "
                        "it from the same path on the workers")
    s.add_argument("--refbit", action="store_true",
                   help="a recorded trace's referenced-bit samples (op a) count as accesses")
    s.add_argument("--replay", action="store_true",
                   help="a trace recorded by `swapd serve --record`: replay the daemon's own "
                        "stores and loads for every backend, pool, disk and compressor (no "
                        "resident policy: --policies, --capacities and --param do not apply)")
    s.add_argument("--no-mattson", action="store_true", help="skip the Mattson LRU curve")
    s.add_argument("--no-plots", action="store_true", help="skip the PNG figures")
    s.add_argument("--no-progress", action="store_true")
    s.add_argument("-o", "--output", required=True, metavar="DIR")
    s.add_argument("--json", action="store_true", help="print the results as JSON")
    _add_full(s, sweep=True)

    r = sub.add_parser("report", help="one self-contained HTML page of a sweep",
                       description="Write DIR/report.html from DIR/sweep.json and its PNGs.")
    r.add_argument("dir", metavar="DIR", help="the sweep's output directory")
    r.add_argument("-o", "--output", default=None, metavar="FILE",
                   help="default: DIR/report.html")

    w = sub.add_parser("writeback", help="allocator-owned writeback vs the layer's LRU",
                       description=_wb_doc())
    _add_trace(w, required=True)
    w.add_argument("--policy", default="lru", help="reclaim policy of resident pages")
    w.add_argument("--capacity", type=_positive_int, required=True, metavar="N")
    w.add_argument("--backend", required=True, metavar="B")
    w.add_argument("--pool-mib", type=float, required=True, metavar="M")
    w.add_argument("--compressor", default="lz4")
    w.add_argument("--backend-opt", action="append", type=_raw_kv, default=[],
                   metavar="NAME=VALUE")
    w.add_argument("--corpus", default=None, metavar="FILE")
    w.add_argument("--corpus-pages", type=_positive_int, default=4096, metavar="N")
    w.add_argument("--costs", default=None, metavar="FILE")
    w.add_argument("--seed", type=int, default=0)
    w.add_argument("--json", action="store_true")

    m = sub.add_parser("mrc", help="exact LRU miss-ratio curve (Mattson, one pass)")
    _add_trace(m, required=True)
    m.add_argument("--capacities", type=_int_list, default=None, metavar="A,B,...")
    m.add_argument("--points", type=_positive_int, default=12)
    m.add_argument("--json", action="store_true")


def _wb_doc() -> str:
    from swapd.sim import wbexp

    return (wbexp.__doc__ or "").split("\n\n")[0]


# -- validation: every check runs before any work -------------------------------------------


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


def _check_policy(name: str, params: dict[str, Any]) -> None:
    """ConfigError/PluginError now, rather than in a worker after other jobs ran."""
    from swapd.plugins import make_policy

    make_policy(name, 8, **params)


def _check_backend(name: str, options: dict[str, Any]) -> dict[str, Any]:
    from swapd.plugins import check_backend_options

    return check_backend_options(name, options)


def _check_compressor(name: str) -> None:
    from swapd.compress import get_compressor

    get_compressor(name)


def _check_layer_options(opts: dict[str, Any], demotion: str) -> None:
    import dataclasses

    from swapd.layer import LayerConfig
    from swapd.plugins import make_policy

    names = {f.name for f in dataclasses.fields(LayerConfig)}
    for k in opts:
        if k not in names:
            raise ConfigError(f"--layer: unknown option {k!r}; LayerConfig fields are "
                              f"{', '.join(sorted(names))}")
    if demotion != "lru":
        make_policy(demotion, None)


def _check_intervals(args: argparse.Namespace) -> None:
    if args.shrink_interval < 0:
        raise ConfigError(f"--shrink-interval must be >= 0, got {args.shrink_interval}")
    if args.compact_interval < 0:
        raise ConfigError(f"--compact-interval must be >= 0, got {args.compact_interval}")
    if args.window is not None and args.window < 0:
        raise ConfigError(f"--window must be >= 0, got {args.window}")


def _trace_info(trace: str, fmt: str | None) -> tuple[int, int]:
    """(requests, distinct pages) of ``trace``; ConfigError if it has no request.  O(n)."""
    from swapd.sim.trace import read_pages

    p = Path(trace)
    if not p.exists():
        raise ConfigError(f"{trace}: no such trace file")
    if p.is_dir():
        raise ConfigError(f"{trace}: is a directory, not a trace file")
    seen: set[int] = set()
    n = 0
    for page in read_pages(trace, fmt):
        seen.add(page)
        n += 1
    if n == 0:
        raise ConfigError(f"{trace}: the trace has no requests")
    return n, len(seen)


def _check_output_dir(path: str) -> None:
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise ConfigError(f"-o {path}: exists and is not a directory")
    parent = p.parent if not p.exists() else p
    while not parent.exists():
        parent = parent.parent
    if not os.access(parent, os.W_OK):
        raise ConfigError(f"-o {path}: {parent} is not writable")


def _check_output_file(path: str) -> None:
    p = Path(path)
    if p.is_dir():
        raise ConfigError(f"-o {path}: is a directory")
    if not p.parent.exists():
        raise ConfigError(f"-o {path}: directory {p.parent} does not exist")


# -- commands ---------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    """Run ``swapd sim`` (or its subcommand); return the exit status."""
    cmd = getattr(args, "sim_cmd", None)
    if cmd == "gen":
        return _run_gen(args)
    if cmd == "sweep":
        return _run_sweep(args)
    if cmd == "mrc":
        return _run_mrc(args)
    if cmd == "report":
        return _run_report(args)
    if cmd == "writeback":
        return _run_writeback(args)
    return _run_one(args)


def _run_gen(args: argparse.Namespace) -> int:
    from swapd.sim.gen import generate
    from swapd.sim.trace import normalize_format, write_trace

    _check_output_file(args.output)
    if args.fmt:
        normalize_format(args.fmt)
    reqs = generate(args.kind, args.requests, args.seed, **dict(args.set))
    first = next(reqs, None)  # the generator's own checks run before anything is written
    if first is None:
        raise ConfigError(f"generator {args.kind!r} produced no requests")
    n = write_trace(args.output, itertools.chain([first], reqs), args.fmt)
    print(f"wrote {n} requests to {args.output}", file=sys.stderr)
    return 0


def _tier_chain(args: argparse.Namespace) -> tuple[tuple[str, ...], Any]:
    """The chain and tier options of --config, --tiers and --tier-opt (checked by name)."""
    from swapd.plugins import available_tiers

    tiers: tuple[str, ...] = ()
    opts: dict[str, dict[str, Any]] = {}
    if getattr(args, "config", None):
        from swapd.config import load_config

        cfg = load_config(args.config)
        tiers = cfg.tier_chain()
        opts = {n: dict(o) for n, o in cfg.tier.items()}
    if getattr(args, "tiers", None):
        tiers = tuple(t.strip() for t in args.tiers.split(",") if t.strip())
    known = available_tiers()
    for t in tiers:
        if t not in known:
            raise ConfigError(f"--tiers: no tier {t!r} (known: {', '.join(sorted(known))})")
    if tiers and len(set(tiers)) != len(tiers):
        raise ConfigError(f"--tiers: a tier appears twice in {','.join(tiers)}")
    for key, value in getattr(args, "tier_opt", []):
        name, _, opt = key.partition(".")
        if not opt or name not in (tiers or ("compressed", "disk")):
            raise ConfigError(f"--tier-opt {key}={value}: expected TIER.KEY=VALUE for a tier "
                              f"of the chain ({','.join(tiers or ('compressed', 'disk'))})")
        opts.setdefault(name, {})[opt] = parse_literal(value)
    return tiers, tuple(sorted((n, tuple(sorted(o.items()))) for n, o in opts.items()))


def _full_config(args: argparse.Namespace, distinct: int) -> Any:
    from swapd.sim.full import FullConfig

    params = dict(args.param)
    bopts = _check_backend(args.backend, dict(args.backend_opt))
    _check_compressor(args.compressor)
    layer_opts = dict(args.layer)
    _check_layer_options(layer_opts, args.demotion)
    tiers, topts = _tier_chain(args)
    return FullConfig(policy=args.policy, capacity=args.capacity,
                      tiers=tiers, tier_options=topts,
                      params=tuple(sorted(params.items())), backend=args.backend,
                      compressor=args.compressor, pool_bytes=_pool_bytes(args, args.capacity),
                      disk_bytes=_disk_bytes(args), demotion_policy=args.demotion,
                      layer_options=tuple(sorted(layer_opts.items())), seed=args.seed,
                      window=args.window or 0, check_every=args.check_every,
                      shrink_interval_s=args.shrink_interval,
                      compact_interval_s=args.compact_interval,
                      allow_overflow=args.allow_overflow,
                      backend_options=tuple(sorted(bopts.items())), trace_pages=distinct,
                      daemon_config=getattr(args, "daemon_config", ""),
                      region_pages=getattr(args, "region_pages", 0))


def _run_one(args: argparse.Namespace) -> int:
    if not args.trace:
        raise ConfigError("swapd sim needs --trace FILE (or a subcommand: gen, sweep, report, "
                          "writeback, mrc)")
    if args.replay:
        return _run_replay(args)
    if args.capacity is None or args.capacity <= 0:
        raise ConfigError("swapd sim needs --capacity N (pages, > 0)")
    _check_intervals(args)
    params = dict(args.param)
    _check_policy(args.policy, params)
    if args.backend is None and (args.backend_opt or args.allow_overflow):
        raise ConfigError("--backend-opt and --allow-overflow need full mode (--backend B)")
    _, distinct = _trace_info(args.trace, args.fmt)
    from swapd.sim.trace import read_pages, read_trace

    if args.backend is None:
        from swapd.sim.policy_only import run_policy_only

        res = run_policy_only(read_pages(args.trace, args.fmt, refbit=args.refbit), args.policy,
                              args.capacity, params, window=args.window or 0)
        d = res.to_dict()
    else:
        from swapd.sim.full import run_full
        from swapd.sim.sweep import open_corpus

        cfg = _full_config(args, distinct)
        costs = _costs(args)
        corpus = open_corpus(args.corpus, args.corpus_pages, args.seed)
        try:
            d = run_full(read_trace(args.trace, args.fmt, refbit=args.refbit), cfg, corpus,
                         costs).to_dict()
        finally:
            getattr(corpus, "close", lambda: None)()
    d["trace"] = args.trace
    d["distinct_pages"] = distinct
    if args.json:
        json.dump(d, sys.stdout, indent=1, default=str)
        sys.stdout.write("\n")
    else:
        _print_summary(d)
    return 0


def _check_recorded(trace: str, fmt: str | None) -> str:
    """The format of ``trace`` if it is a recorded trace with evictions; ConfigError if not."""
    from swapd.sim.trace import detect_format, normalize_format, read_trace

    f = normalize_format(fmt) if fmt else detect_format(trace)
    if f != "csv":
        raise ConfigError(f"--replay needs a CSV trace recorded by `swapd serve --record`, "
                          f"not {f}")
    if not any(r.op == "e" for r in read_trace(trace, f, events=True)):
        raise ConfigError(f"{trace}: no eviction rows (op e): not a trace recorded by "
                          f"`swapd serve --record`, or the daemon never evicted")
    return f


def _run_replay(args: argparse.Namespace) -> int:
    from swapd.sim.full import run_replay
    from swapd.sim.sweep import open_corpus
    from swapd.sim.trace import read_trace

    if args.backend is None:
        raise ConfigError("--replay drives the layer: it needs --backend B")
    if args.capacity is not None:
        raise ConfigError("--replay replays the daemon's own evictions: --capacity does not apply")
    _check_intervals(args)
    _, distinct = _trace_info(args.trace, args.fmt)
    fmt = _check_recorded(args.trace, args.fmt)
    args.capacity = 1  # unused by the replay; FullConfig wants a positive number
    cfg = _full_config(args, distinct)
    costs = _costs(args)
    corpus = open_corpus(args.corpus, args.corpus_pages, args.seed)
    try:
        d = run_replay(read_trace(args.trace, fmt, events=True), cfg, corpus, costs).to_dict()
    finally:
        getattr(corpus, "close", lambda: None)()
    d["trace"] = args.trace
    d["distinct_pages"] = distinct
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
    if d["mode"] == "replay":
        t.add_row("capacity (pages)", "(the daemon's, as recorded)")
        t.add_row("readahead loads", str(d["config"]["readahead_loads"]))
    else:
        t.add_row("capacity (pages)", str(cap))
    t.add_row("accesses / distinct pages", f"{d['accesses']} / {d.get('distinct_pages', '?')}")
    t.add_row("misses", f"{d['misses']}")
    t.add_row("miss ratio", f"{d['miss_ratio']:.4f}")
    if d["mode"] in ("full", "replay"):
        cfg = d["config"]
        t.add_row("backend / compressor", f"{cfg['backend']} / {cfg['compressor']}")
        if cfg.get("backend_options"):
            t.add_row("backend options", ", ".join(f"{k}={v}" for k, v in
                                                   cfg["backend_options"].items()))
        t.add_row("pool limit / disk", f"{cfg['pool_bytes'] / MIB:.2f} MiB / "
                                      f"{cfg['disk_bytes'] / MIB:.0f} MiB")
        t.add_row("max resident (pages)", str(d["max_resident"]))
        t.add_row("first-touch faults", str(d["first_touch"]))
        t.add_row("refaults", str(d["refaults"]))
        for tier, n in sorted(d["refaults_by_tier"].items()):
            t.add_row(f"  from {tier}", str(n))
        t.add_row("evictions (stores accepted)", str(d["evictions"]))
        for reason, n in sorted(d["store_rejects"].items()):
            t.add_row(f"  rejected: {reason}", str(n))
        if d.get("overflow_pages"):
            t.add_row("[bold red]OVERFLOW: pages no tier could hold[/]",
                      f"[bold red]{d['overflow_pages']} (at most {d['overflow_max']} at "
                      f"once)[/]")
        cr, dens = d.get("compression_ratio"), d.get("pool_bytes_per_page")
        t.add_row("compression ratio", f"{cr:.2f}" if cr else "-")
        t.add_row("pool bytes per stored page", f"{dens:.0f}" if dens else "-")
        t.add_row("pages compacted", str(d["pages_compacted"]))
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
    if d.get("overflow_pages"):
        print(f"warning: {d['overflow_pages']} pages did not fit in the tiers (overflow); "
              f"the tier figures describe a smaller configuration than the one asked for",
              file=sys.stderr)


def _capacities(args: argparse.Namespace, distinct: int) -> list[int]:
    if args.capacities:
        if min(args.capacities) <= 0:
            raise ConfigError("capacities must be positive")
        return sorted(set(args.capacities))
    from swapd.sim.sweep import capacities_for

    return capacities_for(distinct, args.points)


def _sweep_policies(args: argparse.Namespace) -> list[tuple[str, tuple[tuple[str, Any], ...]]]:
    """(policy, params) for every policy and combination of ``--param`` values; checked."""
    from swapd.plugins import available_policies

    known = available_policies()
    for name in args.policies:
        if name not in known:
            raise ConfigError(f"unknown policy {name!r}; available: "
                              f"{', '.join(sorted(known))}")
    per: dict[str, dict[str, list[Any]]] = {p: {} for p in args.policies}
    for key, raw in args.param:
        pol, dot, pname = key.rpartition(".")
        vals = [parse_literal(v.strip()) for v in raw.split(",") if v.strip()]
        if not vals:
            raise ConfigError(f"--param {key}=: no value")
        targets = [pol] if dot else list(args.policies)
        for t in targets:
            if t not in per:
                raise ConfigError(f"--param {key}: policy {t!r} is not in --policies")
            per[t][pname] = vals
    out: list[tuple[str, tuple[tuple[str, Any], ...]]] = []
    for name in args.policies:
        names = sorted(per[name])
        for combo in itertools.product(*(per[name][n] for n in names)):
            params = tuple(zip(names, combo))
            _check_policy(name, dict(params))
            out.append((name, params))
    return out


def _run_sweep(args: argparse.Namespace) -> int:
    from swapd.sim.sweep import make_jobs, run_sweep

    _check_intervals(args)
    _check_output_dir(args.output)
    if args.within < 0:
        raise ConfigError(f"--within must be >= 0, got {args.within}")
    policies = _sweep_policies(args)
    full: dict[str, Any] = {}
    pools: list[int] = []
    disks: list[int] = []
    if args.backends:
        bopts = dict(args.backend_opt)
        for b in args.backends:
            _check_backend(b, bopts)
        for c in args.compressor:
            _check_compressor(c)
        layer_opts = dict(args.layer)
        _check_layer_options(layer_opts, args.demotion)
        if args.pool_mib:
            if min(args.pool_mib) <= 0:
                raise ConfigError(f"--pool-mib must be positive, got {args.pool_mib}")
            pools = sorted({int(m * MIB) for m in args.pool_mib})
        if min(args.disk_mib) < 0:
            raise ConfigError(f"--disk-mib must be >= 0, got {args.disk_mib}")
        disks = sorted({int(m * MIB) for m in args.disk_mib})
        costs = _costs(args)
        full = {"layer_options": tuple(sorted(layer_opts.items())),
                "corpus": args.corpus, "corpus_pages": args.corpus_pages, "seed": args.seed,
                "demotion_policy": args.demotion, "shrink_interval_s": args.shrink_interval,
                "compact_interval_s": args.compact_interval,
                "costs": tuple(sorted(costs.to_dict().items())),
                "backend_options": tuple(sorted(bopts.items())),
                "allow_overflow": args.allow_overflow}
        if args.corpus and not Path(args.corpus).is_file():
            raise ConfigError(f"--corpus {args.corpus}: no such file")
    elif args.backend_opt or args.allow_overflow or args.pool_mib:
        raise ConfigError("--backend-opt, --pool-mib and --allow-overflow need full mode "
                          "(--backends B,C)")
    if args.scheduler is not None:
        try:
            import distributed  # noqa: F401
        except ImportError as exc:
            raise ConfigError("--scheduler needs the distributed extra: "
                              "pip install 'swapd[distributed]'") from exc
    elif args.ship_trace:
        raise ConfigError("--ship-trace needs --scheduler")
    nreq, distinct = _trace_info(args.trace, args.fmt)
    if args.replay:
        if not args.backends:
            raise ConfigError("--replay drives the layer: it needs --backends B,C")
        if args.capacities or args.param or args.policies != ["lru"] or args.refbit:
            raise ConfigError("--replay replays the daemon's own decisions: --policies, "
                              "--capacities, --param and --refbit do not apply")
        _check_recorded(args.trace, args.fmt)
        caps = [0]
    else:
        caps = _capacities(args, distinct)
    if args.refbit:
        full["refbit"] = True
    window = args.window if args.window is not None else max(1, nreq // 200)
    jobs = make_jobs(args.trace, args.fmt, policies, caps, args.backends,
                     mattson=not args.no_mattson, window=window, pool_bytes=pools,
                     disk_bytes=disks, compressors=args.compressor if args.backends else (),
                     trace_pages=distinct, replay=args.replay, **full)
    if args.ship_trace:
        import dataclasses

        data = Path(args.trace).read_bytes()
        jobs = [dataclasses.replace(j, trace_data=data) for j in jobs]
    meta = {"trace": args.trace, "trace_name": Path(args.trace).name, "requests": nreq,
            "distinct_pages": distinct, "policies": [p for p, _ in policies],
            "labels": sorted({j.label for j in jobs if j.label}), "capacities": caps,
            "backends": args.backends, "pool_bytes": pools, "disk_bytes": disks,
            "compressors": args.compressor if args.backends else [],
            "backend_options": dict(args.backend_opt), "within_percent": args.within,
            "window": window, "scheduler": args.scheduler,
            "costs_source": _costs(args).source if args.backends else None}
    out = run_sweep(jobs, args.output, workers=args.workers, progress=not args.no_progress,
                    plots=not args.no_plots, meta=meta, scheduler=args.scheduler)
    if args.json:
        from swapd.sim.sweep import summarize

        json.dump({"csv": str(out.csv), "json": str(out.json),
                   "figures": [str(f) for f in out.figures],
                   "summary": summarize(list(out.results), args.within),
                   "results": list(out.results)},
                  sys.stdout, indent=1, default=str)
        sys.stdout.write("\n")
    else:
        from swapd.sim.report import print_summary

        print_summary(list(out.results), meta)
        print(f"wrote {out.csv}, {out.json}" + "".join(f", {f}" for f in out.figures))
        print(f"one page with all of it: swapd sim report {args.output}")
    return 0


def _run_report(args: argparse.Namespace) -> int:
    from swapd.sim.report import write_report

    out = write_report(args.dir, args.output)
    print(f"wrote {out}")
    return 0


def _run_writeback(args: argparse.Namespace) -> int:
    from swapd.sim.wbexp import WritebackConfig, print_table, run_writeback_experiment

    if args.pool_mib <= 0:
        raise ConfigError(f"--pool-mib must be positive, got {args.pool_mib}")
    _check_policy(args.policy, {})
    bopts = _check_backend(args.backend, dict(args.backend_opt))
    _check_compressor(args.compressor)
    costs = _costs(args)
    _trace_info(args.trace, args.fmt)
    cfg = WritebackConfig(policy=args.policy, capacity=args.capacity, backend=args.backend,
                          compressor=args.compressor, pool_bytes=int(args.pool_mib * MIB),
                          seed=args.seed, backend_options=tuple(sorted(bopts.items())))
    from swapd.sim.sweep import open_corpus
    from swapd.sim.trace import read_trace

    corpus = open_corpus(args.corpus, args.corpus_pages, args.seed)
    try:
        res = run_writeback_experiment(read_trace(args.trace, args.fmt), cfg, corpus, costs)
    finally:
        getattr(corpus, "close", lambda: None)()
    res["trace"] = args.trace
    if args.json:
        json.dump(res, sys.stdout, indent=1, default=str)
        sys.stdout.write("\n")
    else:
        print_table(res)
    return 0


def _run_mrc(args: argparse.Namespace) -> int:
    from swapd.sim.mattson import stack_distances
    from swapd.sim.trace import read_pages

    _, distinct = _trace_info(args.trace, args.fmt)
    if args.capacities and min(args.capacities) <= 0:
        raise ConfigError("capacities must be positive")
    sd = stack_distances(list(read_pages(args.trace, args.fmt)))
    if args.capacities:
        caps = sorted(set(args.capacities))
    else:
        from swapd.sim.sweep import capacities_for

        caps = capacities_for(distinct, args.points)
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
