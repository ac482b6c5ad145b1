"""``swapd bench NAME``: the benchmarks (one module each under ``swapd/bench/``).

Targets are ratios measured side by side in one run; medians of interleaved
repetitions are reported.  ``tests/bench/RESULTS.md`` records the figures with
the commands that made them.  Benchmarks never run in the test suite.

A module ``swapd/bench/NAME.py`` is ``swapd bench NAME`` (underscores become
dashes) when it defines ``add_arguments(parser)`` and ``run(args) -> int``;
its docstring's first line is the one-line help.  Helpers (``common``) define
neither.
"""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import signal
import sys
from collections.abc import Callable

import swapd.bench

HELP = "run a benchmark (code under swapd/bench/)"
__all__ = ["HELP", "add_arguments", "bench_modules", "run"]


def bench_modules() -> list[str]:
    """Module names under ``swapd.bench``, sorted.  O(files)."""
    return sorted(m.name for m in pkgutil.iter_modules(swapd.bench.__path__)
                  if not m.name.startswith("_"))


def _unavailable(reason: str, name: str) -> int:
    print(f"error: bench {name} is unavailable: {reason}", file=sys.stderr)
    return 2


def add_arguments(p: argparse.ArgumentParser) -> None:
    """One subcommand per benchmark module; a module that fails to import is listed with why."""
    bsub = p.add_subparsers(dest="bench", metavar="NAME", required=True)
    for mod in bench_modules():
        name = mod.replace("_", "-")
        try:
            m = importlib.import_module(f"swapd.bench.{mod}")
        except Exception as exc:  # a broken bench must not break the others
            reason = f"{type(exc).__name__}: {exc}"
            q = bsub.add_parser(name, help=f"(unavailable: {reason})")
            q.set_defaults(_run=lambda a, r=reason, n=name: _unavailable(r, n))
            continue
        if not (hasattr(m, "add_arguments") and hasattr(m, "run")):
            continue
        doc = (m.__doc__ or "").strip().splitlines()
        q = bsub.add_parser(name, help=doc[0] if doc else name, description=m.__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
        m.add_arguments(q)
        q.set_defaults(_run=lambda a, r=m.run: _terminable(r, a))


_handler_pid = 0  # the process that installed _terminated


def _terminated(signum: int, frame: object) -> None:
    if os.getpid() != _handler_pid:
        # a child forked without exec (pyroute2's netns helpers are) inherits the handler:
        # there SIGTERM must kill as by default, not unwind the parent's code
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        return
    raise SystemExit(128 + signum)


def _terminable(fn: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Run a benchmark so that SIGTERM (``timeout(1)``, a CI job's end) exits through its
    ``finally`` blocks, as Ctrl-C does: its daemons, clients, managers and files go with it."""
    global _handler_pid
    _handler_pid = os.getpid()
    old = signal.signal(signal.SIGTERM, _terminated)
    try:
        return int(fn(args) or 0)
    finally:
        signal.signal(signal.SIGTERM, old)


def run(args: argparse.Namespace) -> int:
    """Run the chosen benchmark (argparse set ``_run`` on the subcommand)."""
    return int(args._run(args) or 0)
