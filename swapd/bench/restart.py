"""Clients keep their data while the daemon is restarted gracefully and killed at random moments.

Runs ``swapd serve`` under the service manager of ``swapd.kernel.fdstore`` (the fd store with
systemd's rules, as ``swapd supervise`` does) and ``--clients`` client processes, each writing
every page of a ``--size`` region under a ``--limit`` resident limit and then reading every
page back against what it wrote, in a random order, pass after pass, rewriting some pages with
a new generation as it goes.  Meanwhile the daemon is restarted gracefully (SIGTERM)
``--restarts`` times and killed (SIGKILL) ``--kills`` times, in a seeded random order at random
moments.  At the end every client verifies every page once more.

Keys: ``restarts``, ``kills``, ``pages`` (page verifications), ``mismatched_pages`` (a page read
back different from what was written, never allowed), ``lost_pages`` (pages poisoned at a graceful
restart, target 0), ``poisoned_pages`` (pages poisoned after the kills: those whose stored copy
died with the daemon; ``kill_details`` accounts for each kill's), ``client_errors`` (a client
that failed or died other than by touching a page the daemon reported poisoned),
``max_stall_ms`` (the longest a client access waited across a graceful restart; target <= 1000),
``max_stall_ms_kill`` (the same across kills), ``restart_stop_ms`` (signal to the old
daemon's exit: the hand-over) and ``restart_start_ms`` (its exit to the next one's
``READY=1``: process start, imports, adoption), each ``{"median", "max"}``, ``tiers``,
``loadavg``.  The daemon runs with its bytecode cached in the work directory
(``PYTHONPYCACHEPREFIX``), as an installed package has it.  The machine is shared:
record ``loadavg`` with the figures.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from swapd.bench.common import print_json, print_table
from swapd.config import parse_size
from swapd.errors import ConfigError

# The client: writes every page, then verifies pages in random order until told to stop.
# Progress and stalls go to stdout as JSON lines; before each access the page index is
# written to a shared file, so that a SIGBUS death can be matched to the page it touched.
CLIENT = r"""
import ctypes, hashlib, json, mmap, os, random, signal, sys, time
ctypes.CDLL(None).prctl(1, signal.SIGKILL, 0, 0, 0)  # die with the bench
from swapd.client import connect
sock, size, limit, seed, progress = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), \
    int(sys.argv[4]), sys.argv[5]
pf = open(progress, "r+b")
prog = mmap.mmap(pf.fileno(), 16)
def out(**kw):
    print(json.dumps(kw), flush=True)
def page(i, g):
    return hashlib.blake2b(b"%d/%d/%d" % (seed, i, g), digest_size=64).digest() * 64
rng = random.Random(seed)
c = connect(sock, name="bench-restart", wait=30.0)
c.set_limit(limit)
reg = c.map(size)
n = size // 4096
gen = bytearray(n)
for i in range(n):
    prog[0:8] = i.to_bytes(8, "little")
    reg[i * 4096:(i + 1) * 4096] = page(i, 0)
out(phase="written", pages=n)
checked = bad = 0
stalls = []
poisoned = set()
seen_restarts = -1
final = False
stop_at = None
t_report = time.monotonic()
order = list(range(n))
while True:
    rng.shuffle(order)
    for i in order:
        if c.restarts != seen_restarts or (checked & 1023) == 0:
            seen_restarts = c.restarts
            poisoned = set(reg.poisoned_pages())
        if i in poisoned:
            continue
        prog[0:8] = i.to_bytes(8, "little")
        t0 = time.monotonic()
        ok = reg[i * 4096:(i + 1) * 4096] == page(i, gen[i])
        dt = time.monotonic() - t0
        if dt > 0.05:
            stalls.append([t0, dt])
        checked += 1
        if not ok:
            bad += 1
            out(phase="mismatch", page=i, gen=gen[i])
        if rng.random() < 0.125:
            gen[i] = (gen[i] + 1) & 0xFF
            t0 = time.monotonic()
            reg[i * 4096:(i + 1) * 4096] = page(i, gen[i])
            dt = time.monotonic() - t0
            if dt > 0.05:
                stalls.append([t0, dt])
        now = time.monotonic()
        if now - t_report > 0.5:
            t_report = now
            out(phase="progress", checked=checked, bad=bad, stalls=stalls,
                poisoned=len(poisoned))
            stalls = []
            r, _, _ = __import__("select").select([sys.stdin], [], [], 0)
            if r and sys.stdin.readline().strip() == "final":
                final = True
                break
    if final:
        break
poisoned = set(reg.poisoned_pages())
for i in range(n):
    if i in poisoned:
        continue
    prog[0:8] = i.to_bytes(8, "little")
    checked += 1
    if reg[i * 4096:(i + 1) * 4096] != page(i, gen[i]):
        bad += 1
out(phase="done", checked=checked, bad=bad, stalls=stalls, poisoned=len(poisoned),
    restarts_seen=c.restarts)
reg.close()
c.close()
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``swapd bench restart``."""
    p.add_argument("--clients", type=int, default=4, help="client processes (default 4)")
    p.add_argument("--size", default="128M", help="region size per client (default 128M)")
    p.add_argument("--limit", default="32M", help="resident limit per client (default 32M)")
    p.add_argument("--restarts", type=int, default=50, help="graceful restarts R (default 50)")
    p.add_argument("--kills", type=int, default=50, help="SIGKILLs K (default 50)")
    p.add_argument("--gap", type=float, default=2.0,
                   help="mean seconds between two events (uniform in [gap/4, 7gap/4])")
    p.add_argument("--tiers", default="auto",
                   help="the layer's tiers: auto (compressed,disk when their state can be "
                        "handed over, else disk), or a comma-separated list")
    p.add_argument("--seed", type=int, default=1, help="seed of the event order and moments")
    p.add_argument("--json", action="store_true", help="print JSON")


def _tiers(choice: str) -> list[str]:
    if choice != "auto":
        return [t for t in choice.split(",") if t]
    from swapd.config import Config
    from swapd.daemon.restart import _adoption_probe, _sealer_of
    from swapd.layer.build import build_layer

    with tempfile.TemporaryDirectory() as d:
        cfg = Config()
        layer = build_layer(cfg.layer, Path(d), tiers=["compressed", "disk"])
        try:
            why = _adoption_probe(layer, layer.state_fds(), _sealer_of(layer))
        finally:
            layer.close()
    return ["compressed", "disk"] if why is None else ["disk"]


class _Client:
    def __init__(self, k: int, sock: Path, size: int, limit: int, seed: int,
                 work: Path) -> None:
        self.k = k
        self.progress = work / f"progress-{k}-{seed}"
        self.progress.write_bytes(bytes(16))
        self.p = subprocess.Popen(
            [sys.executable, "-c", CLIENT, str(sock), str(size), str(limit), str(seed),
             str(self.progress)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.checked = 0
        self.bad = 0
        self.stalls: list[tuple[float, float]] = []
        self.done: dict[str, Any] | None = None
        self.written = False

    def pump(self) -> None:
        """Read what the client printed."""
        assert self.p.stdout is not None
        while select.select([self.p.stdout], [], [], 0)[0]:
            line = self.p.stdout.readline()
            if not line:
                return
            if not line.startswith("{"):
                continue
            obj = json.loads(line)
            if obj["phase"] == "written":
                self.written = True
            elif obj["phase"] in ("progress", "done"):
                self.stalls.extend((a, b) for a, b in obj["stalls"])
                self.checked = max(self.checked, obj["checked"])
                self.bad = max(self.bad, obj["bad"])
                if obj["phase"] == "done":
                    self.done = obj

    def last_page(self) -> int:
        return int.from_bytes(self.progress.read_bytes()[:8], "little")


def _spread(ms: list[float]) -> dict[str, float]:
    """``{"median", "max"}`` of durations in ms (zeros when there are none)."""
    if not ms:
        return {"median": 0.0, "max": 0.0}
    v = sorted(ms)
    return {"median": round(v[len(v) // 2], 1), "max": round(v[-1], 1)}


def _serve(m: Any, timeout: float, work: Path, when: str) -> None:
    """Be the service manager for ``timeout`` seconds: apply what the daemon sends (it waits
    for its store requests to be read), and fail if it exited, which nothing here expects
    (a restart or kill is done by the caller, who waits for the next daemon)."""
    m.dispatch(timeout)
    if not m.running():
        status = m.exit_status
        code = os.waitstatus_to_exitcode(status) if status is not None else None
        raise ConfigError(f"the daemon exited (status {code}) {when}; see "
                          f"{work / 'daemon.log'}")


def _poisoned_now(m: Any, sock: Path) -> int:
    """The daemon's ``poisoned_pages`` in total, asked from a thread while the manager
    keeps dispatching (the daemon stores the asking connection's descriptors)."""
    import threading

    from swapd.client import connect

    got: list[int] = []

    def ask() -> None:
        with connect(sock, name="bench-restart-stats", wait=30.0) as sc:
            got.append(int(sc.stats("all")["total"]["counters"].get("poisoned_pages", 0)))

    t = threading.Thread(target=ask, daemon=True)
    t.start()
    while t.is_alive():
        m.dispatch(0.02)
    if not got:
        raise ConfigError("could not read the daemon's counters")
    return got[0]


def run(args: argparse.Namespace) -> int:
    """Run the clients and the restarts/kills; print the figures."""
    from swapd.kernel.fdstore import ServiceManager

    size, limit = parse_size(args.size), parse_size(args.limit)
    if args.clients < 1 or size < 4096 or limit < 4096 or args.restarts < 0 or args.kills < 0:
        raise ConfigError("--clients, --size, --limit must be positive; --restarts and "
                          "--kills must be >= 0")
    tiers = _tiers(args.tiers)
    rng = random.Random(args.seed)
    events = ["restart"] * args.restarts + ["kill"] * args.kills
    rng.shuffle(events)
    work = Path(tempfile.mkdtemp(prefix="swapd-bench-restart-"))
    sock = work / "swapd.sock"
    cfg = work / "swapd.toml"
    cfg.write_text(f"""
[limits]
default_resident_bytes = {limit}
max_managed_bytes = {size * 2}
global_resident_bytes = {limit * args.clients * 4}
[layer]
tiers = {json.dumps(tiers)}
disk_bytes = {size * args.clients + (64 << 20)}
""")
    log = os.open(work / "daemon.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    argv = [sys.executable, "-m", "swapd", "-v", "serve", "--socket", str(sock),
            "--state-dir", str(work / "state"), "--config", str(cfg)]
    # The daemon's bytecode is cached, as an installed package's is (pip compiles it): a
    # restart is measured without compiling the sources again, and the cache lives in the
    # work directory (PYTHONDONTWRITEBYTECODE, if set, is for the source tree).
    env = {"PYTHONPYCACHEPREFIX": str(work / "pycache"), "PYTHONDONTWRITEBYTECODE": ""}
    m = ServiceManager(argv, store_max=4096, output=log, env=env)
    clients: list[_Client] = []
    result: dict[str, Any] = {}
    timeline: list[tuple[float, float, str]] = []  # (down at, up at, kind)
    # per event: (ms from the signal until the old daemon was reaped, ms from then until
    # the next one said READY=1: process start, imports, adoption)
    phases: dict[str, list[tuple[float, float]]] = {"restart": [], "kill": []}
    kill_details: list[dict[str, Any]] = []
    client_errors = 0
    sigbus_accounted = 0
    lost_pages = 0
    try:
        m.start()
        if not m.wait(ready=True, timeout=120):
            raise ConfigError(f"the daemon did not start; see {work / 'daemon.log'}")
        clients = [_Client(k, sock, size, limit, args.seed * 1000 + k, work)
                   for k in range(args.clients)]
        deadline = time.monotonic() + 600
        while not all(c.written for c in clients):
            _serve(m, 0.1, work, "while the clients wrote")
            for c in clients:
                c.pump()
                if c.p.poll() is not None and not c.written:
                    raise ConfigError(f"client {c.k} failed while writing: "
                                      f"{c.p.stderr.read() if c.p.stderr else ''}")
            if time.monotonic() > deadline:
                raise ConfigError("the clients did not finish writing in 600 s")
        for seq, kind in enumerate(events):
            end = time.monotonic() + rng.uniform(args.gap / 4, args.gap * 7 / 4)
            while time.monotonic() < end:
                _serve(m, 0.05, work, f"before {kind} {seq}")
                for c in clients:
                    c.pump()
            t_down = time.monotonic()
            if kind == "restart":
                status = m.stop(signal.SIGTERM, timeout=60)
                if status is None or os.waitstatus_to_exitcode(status) != 0:
                    raise ConfigError(f"graceful stop {seq} ended with {status}; see "
                                      f"{work / 'daemon.log'}")
            else:
                m.signal(signal.SIGKILL)
                m.wait(exited=True, timeout=60)
            t_exit = time.monotonic()
            m.start()
            if not m.wait(ready=True, timeout=120):
                raise ConfigError(f"the daemon did not come back after {kind} {seq}; see "
                                  f"{work / 'daemon.log'}")
            t_up = time.monotonic()
            timeline.append((t_down, t_up, kind))
            phases[kind].append(((t_exit - t_down) * 1000, (t_up - t_exit) * 1000))
            total = _poisoned_now(m, sock)
            if kind == "kill":
                kill_details.append({"kill": len(kill_details) + 1, "poisoned": total,
                                     "down_ms": round((t_up - t_down) * 1000, 1)})
            else:
                lost_pages += total
        for c in clients:
            if c.p.poll() is None and c.p.stdin is not None:
                c.p.stdin.write("final\n")
                c.p.stdin.flush()
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and any(c.p.poll() is None for c in clients):
            _serve(m, 0.05, work, "while the clients verified")
            for c in clients:
                c.pump()
        for c in clients:
            c.pump()
            if c.p.poll() is None:
                raise ConfigError(f"client {c.k} did not finish its final pass in 600 s")
            rc = c.p.returncode
            if rc == -signal.SIGBUS:
                sigbus_accounted += 1  # it touched a page lost at a kill (in flight)
            elif rc != 0 or c.done is None:
                client_errors += 1
        pages = sum(c.checked for c in clients)
        mismatched = sum(c.bad for c in clients)

        def stall_for(kinds: str) -> float:
            worst = 0.0
            for c in clients:
                for t0, dt in c.stalls:
                    for down, up, k in timeline:
                        if k == kinds and t0 <= up and t0 + dt >= down:
                            worst = max(worst, dt)
            return round(worst * 1000, 1)

        result = {
            "restarts": args.restarts, "kills": args.kills, "pages": pages,
            "mismatched_pages": mismatched, "lost_pages": lost_pages,
            "poisoned_pages": sum(k["poisoned"] for k in kill_details),
            "client_errors": client_errors, "max_stall_ms": stall_for("restart"),
            "max_stall_ms_kill": stall_for("kill"), "sigbus_clients": sigbus_accounted,
            "kill_details": kill_details, "clients": args.clients, "size": size,
            "limit": limit, "tiers": tiers,
            "downtime_ms_max": round(max((u - d for d, u, _ in timeline), default=0) * 1000, 1),
            "restart_stop_ms": _spread([a for a, _ in phases["restart"]]),
            "restart_start_ms": _spread([b for _, b in phases["restart"]]),
            "kill_start_ms": _spread([b for _, b in phases["kill"]]),
            "loadavg": list(os.getloadavg()),
        }
    finally:
        for c in clients:
            if c.p.poll() is None:
                c.p.kill()
            with contextlib.suppress(Exception):
                c.p.wait(10)
            for f in (c.p.stdin, c.p.stdout, c.p.stderr):
                if f is not None:
                    f.close()
        m.close()
        os.close(log)
        if result:
            shutil.rmtree(work, ignore_errors=True)
    if args.json:
        print_json(result)
    else:
        print_table("swapd bench restart", ["figure", "value"],
                    [(k, v) for k, v in result.items() if k != "kill_details"])
    return 0
