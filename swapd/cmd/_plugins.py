"""The listing shared by ``swapd backends`` and ``swapd policies``.

A plugin that fails to load is listed with the reason; the others still load.
Exit status is 0 when at least one plugin of the group loaded.
"""

from __future__ import annotations

import argparse
import json

from rich.console import Console
from rich.table import Table

from swapd.plugins import _options_of, discover


def options_of(cls: type | None) -> dict[str, str]:
    """A plugin's options (constructor keyword parameters) and their defaults, as text."""
    if cls is None:
        return {}
    return {k: repr(p.default) for k, p in _options_of(cls).items()
            if k not in ("capacity",) and p.default is not p.empty}


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Add the listing options (``--json``)."""
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def list_group(group: str, title: str, args: argparse.Namespace,
               extra: dict[str, str] | None = None) -> int:
    """Print the plugins of ``group`` (table or JSON); 0 when at least one loaded.

    ``extra``: fields added to every JSON entry and shown as the table's caption."""
    infos = discover(group)
    more = extra or {}
    if args.json:
        print(json.dumps([
            {"name": i.name, "description": i.description, "version": i.version,
             "target": i.target, "distribution": i.distribution, "ok": i.ok, "error": i.error,
             "options": options_of(i.cls), **more}
            for i in infos
        ], indent=2))
    else:
        caption = "  ".join(f"{k}: {v}" for k, v in more.items()) or None
        table = Table(title=title, caption=caption)
        for col in ("name", "description", "options (defaults)", "version", "status"):
            table.add_column(col)
        for i in infos:
            status = "ok" if i.ok else f"[red]failed: {i.error}[/red]"
            opts = ", ".join(f"{k}={v}" for k, v in options_of(i.cls).items())
            table.add_row(i.name, i.description, opts, i.version, status)
        Console().print(table)
    return 0 if any(i.ok for i in infos) else 1
