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


def _named_command(argv: list[str]) -> str | None:
    """The command module ``argv`` names (its first non-option word), or None.  O(files)."""
    word = next((a for a in argv if not a.startswith("-")), None)
    if word is None:
        return None
    mod = word.replace("-", "_")
    return mod if mod in command_modules() else None


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """Build the ``swapd`` parser with every command module that imports (``only``: that
    one command module, so that ``swapd serve`` does not import the benches, the simulator
    and the terminal UI: a restarted daemon's clients wait while it starts)."""
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
    for mod in [only] if only is not None else command_modules():
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
        # a command narrating itself (the daemon, the exporter) sets LOG_LEVEL = logging.INFO
        p.set_defaults(_run=m.run, _log_level=getattr(m, "LOG_LEVEL", logging.WARNING))
    return parser


def journald_stderr() -> bool:
    """True if stderr is connected to the journal (``$JOURNAL_STREAM`` is ``DEV:INODE`` of it).

    systemd.exec(5): a service compares the variable with fstat() of its stderr,
    since a child may have inherited the variable but not the stream.
    """
    import os

    val = os.environ.get("JOURNAL_STREAM", "")
    try:
        dev, ino = (int(x) for x in val.split(":"))
        st = os.fstat(2)
    except (ValueError, OSError):
        return False
    return (st.st_dev, st.st_ino) == (dev, ino)


class JournalFormatter(logging.Formatter):
    """``<PRIORITY>logger: message`` -- journald records the priority and its own timestamp
    (sd-daemon(3): a ``<N>`` prefix on a line of stderr sets its syslog level)."""

    _PRIO = ((logging.CRITICAL, 2), (logging.ERROR, 3), (logging.WARNING, 4),
             (logging.INFO, 6))

    def format(self, record: logging.LogRecord) -> str:
        prio = next((p for lvl, p in self._PRIO if record.levelno >= lvl), 7)
        text = f"{record.name}: {record.getMessage()}"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return "\n".join(f"<{prio}>{line}" for line in text.splitlines())


def setup_logging(verbose: int, base: int = logging.WARNING) -> None:
    """Log to stderr at ``base`` (less with ``-v``); no own timestamps under journald."""
    handler = logging.StreamHandler()
    if journald_stderr():
        handler.setFormatter(JournalFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(max(logging.DEBUG, min(base, logging.WARNING - 10 * min(verbose, 2))))


def main(argv: list[str] | None = None) -> int:
    """Run the ``swapd`` command line; return the exit status."""
    try:
        import swapd.impl  # noqa: F401  (SWAPD_IMPL is checked once, here, before any command)
    except SwapdError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    args_list = sys.argv[1:] if argv is None else argv
    only = None if "--version" in args_list else _named_command(args_list)
    parser = build_parser(only)
    args = parser.parse_args(args_list)
    setup_logging(args.verbose, getattr(args, "_log_level", logging.WARNING))
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
