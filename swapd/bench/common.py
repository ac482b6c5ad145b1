"""Shared helpers of the ``swapd bench`` modules: corpus and backend options, median
timing, rich tables and JSON output.  Small and stable on purpose: other benches import it.

Benchmarks report medians of repetitions, and every target is a ratio measured side by
side in one run (see the issue); these helpers exist so every bench does it the same way.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from swapd.corpus import Corpus
from swapd.errors import ConfigError


def add_corpus_arguments(p: argparse.ArgumentParser) -> None:
    """Add ``--corpus FILE``, ``--synthetic N`` and ``--seed S``."""
    p.add_argument("--corpus", metavar="FILE",
                   help="corpus file to measure (from `swapd corpus capture`)")
    p.add_argument("--synthetic", type=int, metavar="N",
                   help="instead of --corpus, a synthetic corpus of N pages")
    p.add_argument("--seed", type=int, default=0, help="seed of --synthetic (default 0)")


def load_corpus(args: argparse.Namespace) -> Corpus:
    """The corpus the options name; ConfigError naming --corpus when there is none."""
    if getattr(args, "corpus", None) and getattr(args, "synthetic", None):
        raise ConfigError("give either --corpus FILE or --synthetic N, not both")
    if getattr(args, "corpus", None):
        return Corpus.open(args.corpus)
    n = getattr(args, "synthetic", None)
    if n is not None:
        if n <= 0:
            raise ConfigError(f"--synthetic needs a positive page count, got {n}")
        return Corpus.synthetic(n, getattr(args, "seed", 0))
    raise ConfigError("no corpus: pass --corpus FILE (make one with `swapd corpus capture "
                      "FILE`) or --synthetic N")


def add_backend_arguments(p: argparse.ArgumentParser) -> None:
    """Add ``--backend NAME`` (repeatable; default: every installed backend)."""
    p.add_argument("--backend", action="append", default=[], metavar="NAME",
                   help="backend to measure (repeatable; default: all installed)")


def backend_names(args: argparse.Namespace) -> list[str]:
    """The backends the options name, checked against the installed ones."""
    from swapd.plugins import available_backends

    have = sorted(available_backends())
    want = list(getattr(args, "backend", None) or have)
    unknown = [n for n in want if n not in have]
    if unknown:
        raise ConfigError(f"unknown backend(s) {', '.join(unknown)}; installed: "
                          f"{', '.join(have) or 'none'}")
    if not want:
        raise ConfigError("no backend is installed (see `swapd backends`)")
    return want


def timed(fn: Callable[[], object],
          clock: Callable[[], float] = time.perf_counter) -> float:
    """Seconds one call of ``fn`` takes (``clock``: wall time by default)."""
    t0 = clock()
    fn()
    return clock() - t0


def interleaved_medians(variants: dict[str, Callable[[], object]], reps: int,
                        clock: Callable[[], float] = time.perf_counter) -> dict[str, float]:
    """Median seconds per variant over ``reps`` rounds; each round runs every variant once,
    in an order rotated by one each round, so drift hits all variants alike.  ``clock``:
    ``time.thread_time`` measures this thread's CPU time (for single-threaded variants on a
    busy machine)."""
    names = list(variants)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(reps):
        k = r % len(names)
        for n in names[k:] + names[:k]:
            times[n].append(timed(variants[n], clock))
    return {n: statistics.median(ts) for n, ts in times.items()}


def print_json(obj: Any) -> None:
    """Print ``obj`` as indented JSON on stdout."""
    json.dump(obj, sys.stdout, indent=2, sort_keys=False)
    sys.stdout.write("\n")


def print_table(title: str, columns: Sequence[str], rows: Iterable[Sequence[object]],
                caption: str | None = None) -> None:
    """Print a rich table; numeric cells are right-aligned."""
    from rich.console import Console
    from rich.table import Table

    rows = [list(r) for r in rows]
    table = Table(title=title, caption=caption)
    for i, col in enumerate(columns):
        numeric = bool(rows) and all(isinstance(r[i], int | float) for r in rows if r[i] != "")
        table.add_column(col, justify="right" if numeric else "left")
    for r in rows:
        table.add_row(*(_cell(v) for v in r))
    console = Console()
    if not console.is_terminal:
        console = Console(width=160)  # pipes and files: do not squeeze to 80 columns
    console.print(table)


def _cell(v: object) -> str:
    if isinstance(v, float):
        return f"{v:,.3f}" if abs(v) < 100 else f"{v:,.0f}"
    if isinstance(v, int) and not isinstance(v, bool):
        return f"{v:,}"
    return str(v)


def mib(nbytes: int) -> str:
    """``nbytes`` as MiB with two decimals."""
    return f"{nbytes / (1 << 20):.2f} MiB"
