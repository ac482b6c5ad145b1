"""swapd stats: print a running daemon's counters.

Connects to the control socket and prints the daemon's version, tiers,
policies and runtime knobs, then, in total and per client, the layer's
kernel-named counters (stored_pages, zswpin, zswpout, zswpwb,
written_back_pages, reject_* ...), the pager's fault counters and the fault
service-time percentiles (p50/p99).  ``pool_total_size`` (bytes of pool
pages) appears in the total only; a client's share of the pool is its
``compr_data_size``.  Its own connection is not counted as a client.
--json prints the raw reply, including the effective configuration
(``daemon.config``); --config prints that configuration as TOML (``swapd
config show`` prints a file's, with each value's source).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

HELP = "print a running daemon's counters"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Add ``swapd stats``'s options (socket, --json, --config)."""
    p.add_argument("--socket", metavar="PATH", help="control socket path")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--config", action="store_true",
                   help="print the running daemon's effective configuration (TOML) instead")


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.1f}"
    return str(v)


def render(stats: dict[str, Any]) -> str:
    """A plain-text rendering of ``Client.stats("all")``."""
    d = stats["daemon"]
    t = stats["total"]
    info = d.get("info", {})
    lines = [f"swapd {info.get('version', '?')} pid {d['pid']} on {d['socket']}: "
             f"{d['clients']} client(s), up {d['uptime_s']:.0f}s, "
             f"global limit {d['global_limit_pages']} pages, impl {d.get('impl', '?')}"]
    if info:
        lines.append(f"  tiers: {info['backend']} + {info['compressor']}, disk {info['disk']}; "
                     f"reclaim policy {info['reclaim_policy']}, demotion "
                     f"{info['demotion_policy']}; config {d.get('config_file') or 'defaults'}")
    knobs = d.get("knobs") or {}
    if knobs:
        lines.append("  knobs: " + "  ".join(f"{k} {_fmt(v)}" for k, v in knobs.items()))

    def block(title: str, s: dict[str, Any]) -> None:
        lat = s["latency"]
        lines.append(f"\n[{title}]")
        lines.append(f"  resident_pages {s['resident_pages']}  managed_pages {s['managed_pages']}"
                     + (f"  limit_pages {s['limit_pages']}" if "limit_pages" in s else ""))
        lines.append(f"  fault latency (service): n={lat['count']} p50={lat['p50_us']:.1f}us "
                     f"p99={lat['p99_us']:.1f}us max={lat['max_us']:.1f}us")
        lines.append("  " + "  ".join(f"{k} {v}" for k, v in s["counters"].items()))
        layer = s.get("layer") or {}
        if layer:
            lines.append("  layer: " + "  ".join(f"{k} {_fmt(v)}" for k, v in layer.items()))

    block("total", t)
    for ts in t.get("tiers", []):
        cap = ts.get("capacity_bytes")
        lines.append(f"  tier {ts['tier']} {ts['name']}: {ts['entries']} entries, "
                     f"{ts['used_bytes']} bytes" + (f" of {cap}" if cap else "")
                     + ("" if ts.get("available", True) else " (unavailable)")
                     + f", demoted in {ts.get('demoted_in', 0)} out {ts.get('demoted_out', 0)}"
                     + f", load errors {ts.get('load_errors', 0)}")
    for c in stats["clients"]:
        block(f"client {c['session']} pid {c['pid']} {c['name']}", c)
    return "\n".join(lines)


def render_config(d: dict[str, Any]) -> str:
    """The daemon's effective configuration (``daemon.config`` of the reply) as TOML."""
    from swapd.cmd.config import toml_value
    from swapd.config import all_keys

    keys = {(k.table, k.name): k for k in all_keys()}
    out = [f"# effective configuration of swapd pid {d['pid']} "
           f"(file: {d.get('config_file') or 'none, built-in defaults'}; knobs changed with "
           "swapd ctl included)"]
    for table, values in (d.get("config") or {}).items():
        for name, opts in (values.items() if table in ("backend", "tier") else [(None, values)]):
            out.append(f"\n[{table}.{name}]" if name else f"\n[{table}]")
            for key, v in opts.items():
                out.append(f"{key} = {toml_value(keys.get((table, key)), v)}")
    return "\n".join(out)


def run(args: argparse.Namespace) -> int:
    """Print the daemon's counters, as text or JSON; returns the exit status (0)."""
    from swapd.client import connect

    with connect(args.socket, name="swapd-stats") as client:
        stats = client.stats("all", latency=not args.config)
    if args.config:
        print(render_config(stats["daemon"]))
        return 0
    if args.json:
        json.dump(stats, sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        print(render(stats))
    return 0
