"""The victim client of ``swapd bench hostile|fuzz|soak`` and tests/test_hostile.py.

Run as ``python -m swapd.bench._victim SOCKET [--pages N] [--limit-pages M] [--seed S]``: it
maps N pages with a resident limit of M pages (so its pages keep being evicted and faulted
back), and then writes and reads its pages without end, checking every read against what it
last wrote (a page holds its index and a write generation, so a page served from another
client or from an older write is caught).  It times every access; an access that blocks in a
fault is a stall.  Commands on stdin, one per line, each answered with one JSON line on stdout:

* ``r``: ``{"ops", "mismatches", "max_stall_ms", "alive"}`` since the last ``r``, then resets
  the maximum;
* ``q``: checks every page once more, prints the totals and exits (status 0).

A ``DaemonGoneError`` or any failed check is reported, never raised: the bench decides.
"""

from __future__ import annotations

import argparse
import json
import random
import struct
import sys
import threading
import time
from typing import Any

_HEAD = struct.Struct("<QQQ")  # magic, page index, generation


def _page(index: int, gen: int, seed: int) -> bytes:
    head = _HEAD.pack(0x5741505644494354, index, gen)  # "SWAPVDICT"
    body = random.Random(seed * 1_000_003 + index * 7919 + gen).randbytes(64)
    return (head + body * 64)[:4096]


def main(argv: list[str] | None = None) -> int:
    from swapd.client import connect
    from swapd.errors import SwapdError

    p = argparse.ArgumentParser(prog="swapd.bench._victim")
    p.add_argument("socket")
    p.add_argument("--pages", type=int, default=512)
    p.add_argument("--limit-pages", type=int, default=64)
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args(argv)
    import ctypes
    import signal

    ctypes.CDLL(None).prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG: die with the bench
    n = args.pages
    lock = threading.Lock()
    st: dict[str, Any] = {"ops": 0, "mismatches": 0, "max_stall_ms": 0.0, "alive": True,
                          "error": ""}
    stop = threading.Event()

    def report(final: bool = False) -> None:
        with lock:
            out = dict(st)
            st["max_stall_ms"] = 0.0
            st["ops"] = 0
        out["final"] = final
        sys.stdout.write(json.dumps(out) + "\n")
        sys.stdout.flush()

    def commands() -> None:
        for line in sys.stdin:
            if line.strip() == "r":
                report()
            elif line.strip() == "q":
                break
        stop.set()

    gens = [0] * n
    rng = random.Random(args.seed)
    try:
        client = connect(args.socket, name="victim")
        client.set_limit(args.limit_pages * 4096)
        region = client.map(n * 4096, name="victim")
        for i in range(n):
            region[i * 4096:(i + 1) * 4096] = _page(i, 0, args.seed)
    except (SwapdError, OSError) as exc:
        st["alive"] = False
        st["error"] = f"{type(exc).__name__}: {exc}"
        report(final=True)
        return 0
    threading.Thread(target=commands, daemon=True).start()
    sys.stdout.write(json.dumps({"ready": True}) + "\n")
    sys.stdout.flush()
    view = memoryview(region)
    while not stop.is_set():
        i = rng.randrange(n)
        t0 = time.perf_counter()
        if rng.random() < 0.3:
            gens[i] += 1
            region[i * 4096:(i + 1) * 4096] = _page(i, gens[i], args.seed)
            bad = 0
        else:
            bad = int(view[i * 4096:(i + 1) * 4096] != _page(i, gens[i], args.seed))
        dt = (time.perf_counter() - t0) * 1000.0
        with lock:
            st["ops"] += 1
            st["mismatches"] += bad
            if dt > st["max_stall_ms"]:
                st["max_stall_ms"] = dt
    bad = sum(int(view[i * 4096:(i + 1) * 4096] != _page(i, gens[i], args.seed))
              for i in range(n))
    with lock:
        st["mismatches"] += bad
    try:
        client.ping()
    except SwapdError as exc:
        st["alive"] = False
        st["error"] = f"{type(exc).__name__}: {exc}"
    report(final=True)
    view.release()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
