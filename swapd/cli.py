"""The ``swapd`` command line.

Each subcommand lives in its own module exposing ``add_arguments(parser)`` and
``run(args) -> int``; this file only wires them together.  Benchmarks live in
the source tree under ``tests/bench/`` (one module per ``swapd bench NAME``),
so ``swapd bench`` works from a source checkout (the README's install is an
editable one).  Expected failures print one line, ``error: ...``, and exit 2.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from pathlib import Path
from types import ModuleType

from swapd.errors import SwapdError

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "backends": ("swapd.cmd_plugins", "list allocator backends and their load status"),
    "policies": ("swapd.cmd_plugins", "list victim-selection policies and their load status"),
    "corpus": ("swapd.corpus", "capture real pages to measure with"),
    "serve": ("swapd.daemon.main", "run the swap daemon"),
    "stats": ("swapd.daemon.stats_cmd", "print a running daemon's counters"),
    "demo": ("swapd.demo", "run the daemon with a demo client and verify its data"),
    "sim": ("swapd.sim.cli", "replay traces through the real layer and policies"),
}

# swapd bench NAME -> module under tests/bench/
BENCHES: dict[str, str] = {
    "density": "density",
    "throughput": "throughput",
    "locks": "locks",
    "metadata": "metadata",
    "layer": "layer",
    "faults": "faults",
    "vs-kernel": "vs_kernel",
    "costs": "costs",
    "sim": "sim",
}

REPO_ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = REPO_ROOT / "tests" / "bench"


def _import(modname: str) -> ModuleType | str:
    """Import a command module; return it, or a one-line reason it is unavailable."""
    try:
        return importlib.import_module(modname)
    except ModuleNotFoundError as exc:
        if exc.name and modname.startswith(exc.name):
            return "not built yet"
        return f"{type(exc).__name__}: {exc}"
    except Exception as exc:  # a broken command must not break the others
        return f"{type(exc).__name__}: {exc}"


def _unavailable(reason: str, what: str) -> int:
    print(f"error: {what} is unavailable: {reason}", file=sys.stderr)
    return 2


def _add_bench(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    bench = sub.add_parser("bench", help="run a benchmark (code under tests/bench/)",
                           description="Benchmarks. Targets are ratios measured side by side "
                                       "in one run; medians are reported.")
    bsub = bench.add_subparsers(dest="bench", metavar="NAME", required=True)
    if BENCH_DIR.is_dir() and str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    for name, mod in BENCHES.items():
        if not (BENCH_DIR / f"{mod}.py").is_file():
            continue
        m = _import(f"tests.bench.{mod}")
        if isinstance(m, str):
            p = bsub.add_parser(name, help=f"(unavailable: {m})")
            p.set_defaults(_run=lambda a, r=m, n=name: _unavailable(r, f"bench {n}"))
            continue
        doc = (m.__doc__ or "").strip().splitlines()
        p = bsub.add_parser(name, help=doc[0] if doc else name, description=m.__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
        m.add_arguments(p)
        p.set_defaults(_run=m.run)


def build_parser() -> argparse.ArgumentParser:
    """Build the ``swapd`` parser with every command module that imports."""
    from swapd import __version__

    parser = argparse.ArgumentParser(
        prog="swapd",
        description="A userspace swap daemon with a generalized swap-LRU layer.",
    )
    parser.add_argument("--version", action="version", version=f"swapd {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="more logging (repeat for debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (modname, help_) in COMMANDS.items():
        m = _import(modname)
        if isinstance(m, str):
            if m == "not built yet":
                continue
            p = sub.add_parser(name, help=f"{help_} (unavailable: {m})")
            p.set_defaults(_run=lambda a, r=m, n=name: _unavailable(r, n))
            continue
        p = sub.add_parser(name, help=help_, description=(m.__doc__ or help_),
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        add = getattr(m, f"add_{name}_arguments", None) or m.add_arguments
        run = getattr(m, f"run_{name}", None) or m.run
        add(p)
        p.set_defaults(_run=run)
    _add_bench(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the ``swapd`` command line; return the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING - 10 * min(args.verbose, 2),
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    try:
        rc = args._run(args)
    except SwapdError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0
    return int(rc or 0)
