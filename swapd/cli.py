"""The ``swapd`` command line.

Each subcommand is a module of :mod:`swapd.cmd` exposing ``HELP``,
``add_arguments(parser)`` and ``run(args) -> int``; this file discovers and
wires them.  Benchmarks are modules of :mod:`swapd.bench` behind ``swapd bench
NAME``.  Expected failures print one line, ``error: ...``, and exit 2.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import pkgutil
import sys
from types import ModuleType

from swapd.errors import SwapdError


def _import(modname: str) -> ModuleType | str:
    """Import a command module; return it, or a one-line reason it is unavailable."""
    try:
        return importlib.import_module(modname)
    except Exception as exc:  # a broken command must not break the others
        return f"{type(exc).__name__}: {exc}"


def _unavailable(reason: str, what: str) -> int:
    print(f"error: {what} is unavailable: {reason}", file=sys.stderr)
    return 2


def command_modules() -> list[str]:
    """The command module names under ``swapd.cmd``, sorted.  O(files)."""
    import swapd.cmd

    return sorted(m.name for m in pkgutil.iter_modules(swapd.cmd.__path__)
                  if not m.name.startswith("_"))


def _impl_line() -> str:
    """Which implementation runs (swapd/impl.py), or why none could be chosen."""
    try:
        from swapd.impl import describe
    except SwapdError as exc:
        return f"error: {exc}"
    return describe()


def build_parser() -> argparse.ArgumentParser:
    """Build the ``swapd`` parser with every command module that imports."""
    from swapd import __version__

    parser = argparse.ArgumentParser(
        prog="swapd",
        description="A userspace swap daemon with a generalized swap-LRU layer.",
    )
    parser.add_argument("--version", action="version",
                        version=f"swapd {__version__} (impl: {_impl_line()})")
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="more logging (repeat for debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for mod in command_modules():
        name = mod.replace("_", "-")
        m = _import(f"swapd.cmd.{mod}")
        if isinstance(m, str):
            p = sub.add_parser(name, help=f"(unavailable: {m})")
            p.set_defaults(_run=lambda a, r=m, n=name: _unavailable(r, n))
            continue
        help_ = getattr(m, "HELP", name)
        p = sub.add_parser(name, help=help_,
                           description=getattr(m, "DESCRIPTION", None) or m.__doc__ or help_,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        m.add_arguments(p)
        p.set_defaults(_run=m.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the ``swapd`` command line; return the exit status."""
    try:
        import swapd.impl  # noqa: F401  (SWAPD_IMPL is checked once, here, before any command)
    except SwapdError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
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
