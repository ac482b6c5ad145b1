"""``swapd top``: a live view of a running daemon, refreshed every second.

One row per client: resident memory against its limit, compressed bytes (its
share of the pool), bytes on disk, faults per second, p99 fault service time,
refaults, writebacks (zswpwb) and LRU inversions.  Above them, the daemon:
version, policies, the pool's density (original bytes per pool byte, per
backend), disk use and the daemon's CPU.  Rates are counter differences over
the refresh interval.  ``--sort KEY`` orders the rows (descending; ``id``
ascending); on a terminal a key changes the order while it runs (``f`` faults,
``r`` resident, ``c`` compressed, ``d`` disk, ``p`` p99, ``R`` refaults, ``w``
writebacks, ``i`` inversions, ``n`` name, ``I`` id; ``q`` quits); ``--once``
prints one frame (measured over one ``--interval``) for scripts; ``--json``
prints that frame's rows as JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from swapd.errors import ConfigError
from swapd.pages import PAGE_SIZE as PAGE

HELP = "a live view of the daemon's clients and tiers (like top)"
__all__ = ["HELP", "SORT_KEYS", "Frame", "Row", "add_arguments", "frame", "render", "run"]



@dataclass(frozen=True)
class Row:
    """One client in one frame."""

    id: int
    pid: int
    name: str
    resident: int  # bytes
    limit: int  # bytes
    compressed: int  # bytes (compr_data_size)
    disk: int  # bytes on the disk tier
    faults_s: float
    p99_us: float
    refaults: int
    writebacks: int
    inversions: int


@dataclass(frozen=True)
class Frame:
    """The daemon's figures and the client rows of one refresh."""

    version: str
    pid: int
    uptime_s: float
    clients: int
    backend: str
    compressor: str
    reclaim_policy: str
    demotion_policy: str
    pool_bytes: int
    stored_bytes: int
    density: float  # original bytes per pool byte (0 when the pool is empty)
    disk_bytes: int
    disk_capacity: int
    cpu_percent: float
    faults_s: float
    rows: list[Row]
    tiers: list[str] = field(default_factory=list)  # one line per tier of the chain


SORT_KEYS: dict[str, Callable[[Row], Any]] = {
    "faults": lambda r: -r.faults_s, "resident": lambda r: -r.resident,
    "compressed": lambda r: -r.compressed, "disk": lambda r: -r.disk,
    "p99": lambda r: -r.p99_us, "refaults": lambda r: -r.refaults,
    "writebacks": lambda r: -r.writebacks, "inversions": lambda r: -r.inversions,
    "id": lambda r: r.id, "name": lambda r: r.name,
}


# Keys of the live view: key -> sort order.
SORT_BY_KEY = {"f": "faults", "r": "resident", "c": "compressed", "d": "disk", "p": "p99",
               "R": "refaults", "w": "writebacks", "i": "inversions", "n": "name", "I": "id"}


def add_arguments(p: argparse.ArgumentParser) -> None:
    """``--socket``, ``--sort KEY``, ``--interval S``, ``--once``, ``--json``."""
    p.add_argument("--socket", metavar="PATH", help="control socket path")
    p.add_argument("--sort", default="faults", choices=sorted(SORT_KEYS),
                   help="order of the client rows (default: faults per second)")
    p.add_argument("--interval", type=float, default=1.0, metavar="S",
                   help="refresh interval in seconds (default 1)")
    p.add_argument("--once", action="store_true", help="print one frame and exit")
    p.add_argument("--json", action="store_true", help="with --once: the frame as JSON")


def _cpu_ticks(pid: int) -> int | None:
    """utime + stime of ``pid`` in clock ticks (proc(5) stat fields 14, 15), or None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        return int(fields[11]) + int(fields[12])
    except (OSError, IndexError, ValueError):
        return None


def frame(prev: dict[str, Any] | None, cur: dict[str, Any], dt: float,
          cpu: tuple[int | None, int | None] = (None, None), sort: str = "faults") -> Frame:
    """One frame from two ``stats("all")`` replies ``dt`` seconds apart (``prev`` may be None).

    ``cpu``: the daemon's CPU ticks at ``prev`` and ``cur``.
    """
    d = cur["daemon"]
    info = d.get("info", {})
    total_layer = cur["total"].get("layer", {})
    before = {c["session"]: c for c in (prev or {}).get("clients", [])}
    rows = []
    for c in cur["clients"]:
        p = before.get(c["session"])
        faults = c["counters"].get("faults", 0) + c["counters"].get("wp_faults", 0)
        pf = (p["counters"].get("faults", 0) + p["counters"].get("wp_faults", 0)) if p else faults
        layer = c.get("layer") or {}
        rows.append(Row(
            id=c["session"], pid=c["pid"], name=c.get("name", ""),
            resident=c["resident_pages"] * PAGE, limit=c["limit_pages"] * PAGE,
            compressed=layer.get("compr_data_size", 0), disk=layer.get("disk_pages", 0) * PAGE,
            faults_s=(faults - pf) / dt if dt > 0 and p else 0.0,
            p99_us=c["latency"].get("p99_us", 0.0), refaults=c["counters"].get("refaults", 0),
            writebacks=layer.get("zswpwb", 0), inversions=layer.get("lru_inversions", 0)))
    rows.sort(key=SORT_KEYS[sort])
    pool = total_layer.get("pool_total_size", 0)
    orig = total_layer.get("orig_data_size", 0)
    ticks = os.sysconf("SC_CLK_TCK")
    c0, c1 = cpu
    cpu_pct = ((c1 - c0) / ticks / dt * 100) if c0 is not None and c1 is not None and dt else 0.0
    cfg = d.get("config", {})
    tot = sum(r.faults_s for r in rows)
    return Frame(version=info.get("version", "?"), pid=d["pid"], uptime_s=d["uptime_s"],
                 clients=d["clients"], backend=info.get("backend", "?"),
                 compressor=info.get("compressor", "?"),
                 reclaim_policy=info.get("reclaim_policy", "?"),
                 demotion_policy=info.get("demotion_policy", "?"),
                 pool_bytes=pool, stored_bytes=orig, density=(orig / pool) if pool else 0.0,
                 disk_bytes=total_layer.get("disk_slots_used", 0) * PAGE,
                 disk_capacity=int(cfg.get("layer", {}).get("disk_bytes", 0)),
                 cpu_percent=cpu_pct, faults_s=tot, rows=rows,
                 tiers=[_tier_line(t) for t in cur["total"].get("tiers", [])])


def _tier_line(t: dict[str, Any]) -> str:
    """One tier of the chain: name, pages, bytes used of capacity, availability."""
    cap = t.get("capacity_bytes")
    used = f"{_mib(int(t.get('used_bytes', 0)))}" + (f"/{_mib(int(cap))}" if cap else "")
    down = "" if t.get("available", True) else " UNAVAILABLE"
    return (f"{t.get('tier', '?')}:{t.get('name', '?')} {t.get('entries', 0)} pages "
            f"{used} MiB{down}")


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.1f}"


def render(f: Frame, sort: str) -> Any:
    """The frame as a rich renderable (a header and a table)."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    head = Text.assemble(
        (f"swapd {f.version}", "bold"), f"  pid {f.pid}  up {f.uptime_s:.0f}s  ",
        f"{f.clients} client(s)  {f.faults_s:.0f} faults/s  CPU {f.cpu_percent:.0f}%\n",
        f"pool {f.backend}+{f.compressor}: {_mib(f.pool_bytes)} MiB holding "
        f"{_mib(f.stored_bytes)} MiB (density {f.density:.2f})   disk "
        f"{_mib(f.disk_bytes)} / {_mib(f.disk_capacity)} MiB   reclaim {f.reclaim_policy}, "
        f"demotion {f.demotion_policy}" + ("\ntiers " + "  ->  ".join(f.tiers)
                                             if f.tiers else ""))
    t = Table(title=None, expand=False, caption=f"sorted by {sort}")
    for col in ("ID", "PID", "NAME", "RES/LIMIT MiB", "COMPR MiB", "DISK MiB", "FAULTS/S",
                "P99 us", "REFAULTS", "WB", "INV"):
        t.add_column(col, justify="left" if col == "NAME" else "right")
    for r in f.rows:
        t.add_row(str(r.id), str(r.pid), r.name[:20], f"{_mib(r.resident)}/{_mib(r.limit)}",
                  _mib(r.compressed), _mib(r.disk), f"{r.faults_s:.0f}", f"{r.p99_us:.0f}",
                  str(r.refaults), str(r.writebacks), str(r.inversions))
    return Group(head, t)


def run(args: argparse.Namespace) -> int:
    """Show frames until Ctrl-C (or one with ``--once``); returns the exit status."""
    from rich.console import Console
    from rich.live import Live

    from swapd.client import connect

    if args.interval <= 0:
        raise ConfigError(f"--interval: must be positive, got {args.interval}")
    console = Console()
    if not console.is_terminal:  # a script's frame is not cut to 80 columns
        console = Console(width=200)
    with connect(args.socket, name="swapd-top") as c:
        prev = c.stats("all")
        pid = prev["daemon"]["pid"]
        cpu0 = _cpu_ticks(pid)
        t0 = time.monotonic()
        if args.once:
            time.sleep(args.interval)
            cur = c.stats("all")
            f = frame(prev, cur, time.monotonic() - t0, (cpu0, _cpu_ticks(pid)), args.sort)
            if args.json:
                print(json.dumps(asdict(f), indent=1))
            else:
                console.print(render(f, args.sort))
            return 0
        sort = args.sort
        with _keys() as read_key, Live(console=console, auto_refresh=False,
                                       screen=False) as live:
            while True:
                key = read_key(args.interval)
                if key == "q":
                    return 0
                sort = SORT_BY_KEY.get(key or "", sort)
                cur = c.stats("all")
                t1 = time.monotonic()
                cpu1 = _cpu_ticks(pid)
                live.update(render(frame(prev, cur, t1 - t0, (cpu0, cpu1), sort), sort),
                            refresh=True)
                prev, t0, cpu0 = cur, t1, cpu1


@contextlib.contextmanager
def _keys() -> Iterator[Callable[[float], str | None]]:
    """A reader of single key presses (cbreak mode while it lasts), or a plain sleep when
    stdin is not a terminal.  The reader waits up to its timeout and returns the key."""
    import select
    import sys

    fd = sys.stdin.fileno() if sys.stdin is not None else -1
    if fd < 0 or not os.isatty(fd):
        def sleep(timeout: float) -> str | None:
            time.sleep(timeout)
            return None

        yield sleep
        return
    import termios
    import tty

    saved = termios.tcgetattr(fd)
    tty.setcbreak(fd)

    def read(timeout: float) -> str | None:
        deadline = time.monotonic() + timeout
        key = None
        while (left := deadline - time.monotonic()) > 0:
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                key = os.read(fd, 1).decode(errors="replace")
                if key in SORT_BY_KEY or key == "q":
                    return key  # redraw at once in the new order
        return key

    try:
        yield read
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)
