"""``swapd ctl``: read and change a running daemon's knobs without a restart.

* ``swapd ctl`` (or ``swapd ctl list``) -- every knob and its value in effect,
  then every client's knobs;
* ``swapd ctl get KNOB`` / ``swapd ctl set KNOB VALUE`` -- a global knob: any key
  marked live in docs/config.md as ``TABLE.KEY`` (``reclaim.policy``,
  ``layer.pool_limit_bytes``, ``layer.accept_threshold_percent``,
  ``limits.global_resident_bytes`` ...) or ``shrinker`` (``on``/``off``);
* ``swapd ctl client ID KNOB [VALUE]`` -- a client's knob (ID as ``swapd
  stats`` shows it): ``resident_bytes``, ``zswap_max_bytes`` (a cap on its
  compressed bytes, ``max`` for none; cgroup v2's memory.zswap.max),
  ``writeback`` (``on``/``off``: may its pages go to the disk tier;
  memory.zswap.writeback) and ``record`` (``on``, a file name in the state
  directory, or ``off``: a trace of its faults and evictions);
* ``swapd ctl restart`` -- hand every client over to a new daemon process
  through the service manager's fd store (docs/protocol.md, ``restart``).

Every change is checked like the configuration file's value and answered with
the value now in effect.  Changing needs root or the daemon's uid.  Values:
``on``/``off``/``true``/``false``, numbers, sizes (``64M``), names.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

HELP = "read and change a running daemon's knobs (policies, limits, per-client caps)"
__all__ = ["HELP", "add_arguments", "parse_value", "run"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    """``list``, ``get KNOB``, ``set KNOB VALUE``, ``client ID KNOB [VALUE]``; ``--json``."""
    p.add_argument("--socket", metavar="PATH", help="control socket path")
    p.add_argument("--json", action="store_true", help="print JSON")
    sub = p.add_subparsers(dest="action", metavar="ACTION")
    sub.add_parser("list", help="every knob in effect (the default)")
    g = sub.add_parser("get", help="one global knob")
    g.add_argument("knob")
    s = sub.add_parser("set", help="change a global knob; prints the value now in effect")
    s.add_argument("knob")
    s.add_argument("value")
    c = sub.add_parser("client", help="read or change a knob of one client")
    c.add_argument("client", type=int, metavar="ID")
    c.add_argument("knob")
    c.add_argument("value", nargs="?")
    sub.add_parser("restart", help="hand every client over to a new daemon process (fd store)")


def parse_value(text: str) -> Any:
    """A command-line value: on/off/true/false, max, a JSON number or list, else the string."""
    low = text.strip().lower()
    if low in ("on", "true", "yes"):
        return True
    if low in ("off", "false", "no"):
        return False
    if low == "max":
        return None
    try:
        v = json.loads(text)
    except ValueError:
        return text
    return v if isinstance(v, int | float | list) and not isinstance(v, bool) else text


def _show(v: Any, knob: str = "") -> str:
    if isinstance(v, bool):
        return "on" if v else "off"
    if v is None:
        return "max" if knob == "zswap_max_bytes" else "-"
    return str(v)


def run(args: argparse.Namespace) -> int:
    """Run the chosen action against the daemon; returns the exit status."""
    from swapd.client import connect

    action = args.action or "list"
    with connect(args.socket, name="swapd-ctl") as c:
        if action == "list":
            everything = c.ctl()
            if args.json:
                print(json.dumps(everything, indent=1))
                return 0
            for k, v in everything["knobs"].items():
                print(f"{k:<36} {_show(v, k)}")
            for sid, knobs in everything["clients"].items():
                print(f"\nclient {sid}")
                for k, v in knobs.items():
                    print(f"  {k:<34} {_show(v, k)}")
            return 0
        if action == "restart":
            reply = c._request("restart")
            print(f"daemon pid {reply['pid']} is handing its clients over to a new process")
            return 0
        if action == "get":
            value = c.ctl(args.knob)
        elif action == "set":
            value = c.ctl(args.knob, parse_value(args.value), set_value=True)
        elif args.value is None:
            value = c.ctl(args.knob, client=args.client)
        else:
            value = c.ctl(args.knob, parse_value(args.value), client=args.client,
                          set_value=True)
    if args.json:
        json.dump({"knob": args.knob, "value": value}, sys.stdout)
        sys.stdout.write("\n")
    else:
        print(f"{args.knob} = {_show(value, args.knob)}")
    return 0
