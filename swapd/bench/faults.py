"""Fault latency: a bare pager vs swapd's compressed and disk tiers, and readahead.

``swapd bench faults [--pages N] [--reps R] [--json]`` measures, in one run and on this
machine, what a client thread sees when it touches a page that is not resident:

* (a) **bare**: the floor -- a minimal Python pager (one thread, blocking ``poll`` on the
  userfaultfd) that answers every MISSING fault with one ``UFFDIO_COPY`` of a constant
  page (docs/design.md section 11.3: 22-28 us here in quiet periods);
* (b) **compressed**: ``swapd serve`` on built-in defaults, every page of the region
  evicted into the compressed tier (zsmalloc + lz4) with ``advise cold``;
* (c) **disk**: ``swapd serve`` with a 256 KiB pool limit, so that evicted pages are
  written back to the disk tier and faults are served from it;
* (d) **sequential**: per-page client time of a sequential scan over evicted memory with
  readahead (the default, adaptive 4..64 pages) and without (``readahead_max = 1``);
* (e) **copy floor** (``copy_floor_us_per_page``): a bare pager placing 64 ready pages
  (already in its buffer, nothing to load or decompress) into a registered memfd range with
  ONE ``UFFDIO_COPY``, per page -- what a readahead run costs the kernel at the least.  The
  range is punched out again between copies (not timed); the median of ``--copy-reps`` copies.

Each latency is the client's own ``perf_counter_ns`` around one touch.  To measure one
fault per touch even with readahead on, (a)-(c) touch every ``--stride``-th page (default
128, beyond readahead's reach) in a seeded random order.  The sides run interleaved
``--reps`` times; p50 and p99 are medians over repetitions.  Targets: (b) p50 at most 1.5x
(a) (issue 4); readahead from the compressed tier at most 2x the copy floor per page
(``ratios.readahead_over_copy_floor``, issue 8; it replaced "8x cheaper than single faults",
which rewards slow single faults).  ``impl`` names the implementation the daemons ran
(swapd/impl.py; SWAPD_IMPL is passed on to them).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import select
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from swapd.pages import PAGE_SIZE as PAGE

# The client.  Parameters as JSON in argv[1]; prints one JSON line.  The latency loop is
# the same for every side.
CHILD = r"""
import json, mmap, os, random, socket, sys, time
p = json.loads(sys.argv[1])
sys.path.insert(0, p["root"])
n, stride, seed = p["pages"], p["stride"], p["seed"]
size = n * 4096
perf = time.perf_counter_ns

def latencies(view):
    idx = list(range(0, n, stride))
    random.Random(seed).shuffle(idx)
    out = []
    s = 0
    for i in idx:
        t = perf()
        s += view[i * 4096 + 1000]
        out.append(perf() - t)
    return out

if p["mode"] == "bare":
    from swapd.kernel import uffd as U
    from swapd.kernel.memfd import memfd_create
    fd = memfd_create("bench-bare")
    os.ftruncate(fd, size)
    m = mmap.mmap(fd, size, flags=mmap.MAP_SHARED)
    uf = U.Userfaultfd.create()
    uf.api(U.UFFD_FEATURE_MISSING_SHMEM)
    from swapd.kernel.mm import address_of
    addr = address_of(m)
    uf.register(addr, size, U.UFFDIO_REGISTER_MODE_MISSING)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(p["socket"])
    socket.send_fds(s, [addr.to_bytes(8, "little")], [uf.fd])
    assert s.recv(1) == b"g"
    view = memoryview(m)
    lat = latencies(view)
    print(json.dumps({"lat": lat}))
    view.release()
    s.close()
else:
    from swapd.client import connect
    from swapd.corpus import Corpus
    corpus = Corpus.synthetic(1024, seed)
    pages = [corpus.page(i) for i in range(len(corpus))]
    with connect(p["socket"]) as c:
        c.set_limit(size + (1 << 20))
        r = c.map(size, name="bench-faults")
        view = memoryview(r)
        for i in range(n):
            view[i * 4096:(i + 1) * 4096] = pages[i % len(pages)]
        r.advise(0, size, "cold")
        res = {}
        if p.get("barrier"):  # --clients: every client measures at the same time
            print("ready", flush=True)
            sys.stdin.readline()
        if p["latency"]:
            res["lat"] = latencies(view)
            r.advise(0, size, "cold")
        if p["scan"]:
            t = perf()
            s = 0
            for i in range(n):
                s += view[i * 4096 + 1000]
            res["scan_ns_per_page"] = (perf() - t) / n
        bad = sum(1 for i in range(0, n, 61) if view[i*4096:(i+1)*4096] != pages[i % len(pages)])
        res["mismatches"] = bad
        res["stats"] = c.stats()
        view.release()
        r.close()
    print(json.dumps(res))
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Add the benchmark's options."""
    p.add_argument("--pages", type=int, default=16384,
                   help="pages per region (default 16384 = 64 MiB)")
    p.add_argument("--stride", type=int, default=128,
                   help="touch every STRIDE-th page for latencies (default 128)")
    p.add_argument("--reps", type=int, default=3, help="interleaved repetitions (default 3)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--copy-reps", type=int, default=200,
                   help="UFFDIO_COPY calls timed for the copy floor (default 200)")
    p.add_argument("--clients", type=int, default=1,
                   help="also run N compressed-side clients at once and report each one's "
                        "p99 (per_client_p99_us; issue 9 fairness: largest <= 2x smallest)")
    p.add_argument("--json", action="store_true", help="print JSON only")


def _impl_name() -> str:
    from swapd.impl import describe

    return describe()


def _root() -> str:
    return str(Path(__file__).resolve().parents[2])


def _child(params: dict[str, object], stdin: bool = False) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", CHILD, json.dumps({**params, "root": _root()})],
                            stdin=subprocess.PIPE if stdin else None,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(proc: subprocess.Popen[str], what: str) -> dict[str, object]:
    try:
        out, err = proc.communicate(timeout=900)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise SystemExit(f"error: {what} client timed out") from None
    if proc.returncode != 0:
        raise SystemExit(f"error: {what} client failed (exit {proc.returncode}): "
                         f"{err.strip()[-2000:]}")
    result: dict[str, object] = json.loads(out.strip().splitlines()[-1])
    if result.get("mismatches"):
        raise SystemExit(f"error: {what}: the client read back wrong data")
    return result


def bare_side(pages: int, stride: int, seed: int, workdir: Path) -> list[int]:
    """(a): serve a client's faults with UFFDIO_COPY of one constant page."""
    from swapd.kernel.memfd import PageBuffer
    from swapd.kernel.uffd import PagefaultEvent, Userfaultfd

    path = str(workdir / "bare.sock")
    with contextlib.closing(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)) as lsock:
        lsock.bind(path)
        lsock.listen(1)
        proc = _child({"mode": "bare", "socket": path, "pages": pages, "stride": stride,
                       "seed": seed})
        lsock.settimeout(30)
        conn, _ = lsock.accept()
        with conn:
            _msg, fds, _flags, _addr = socket.recv_fds(conn, 64, 1)
            uffd = Userfaultfd.from_fd(fds[0])
            src = PageBuffer(1)
            src.view[:] = bytes(range(256)) * 16
            stop = threading.Event()

            def serve() -> None:
                poller = select.poll()
                poller.register(uffd.fd, select.POLLIN)
                while not stop.is_set():
                    if not poller.poll(100):
                        continue
                    for ev in uffd.read_events():
                        if isinstance(ev, PagefaultEvent):
                            with contextlib.suppress(OSError):
                                uffd.copy(ev.address & ~(PAGE - 1), src.address, PAGE)

            t = threading.Thread(target=serve, name="bare-pager", daemon=True)
            t.start()
            conn.sendall(b"g")
            try:
                result = _finish(proc, "bare")
            finally:
                stop.set()
                t.join()
                uffd.close()
                src.close()
    lat = result["lat"]
    assert isinstance(lat, list)
    return [int(x) for x in lat]


@contextlib.contextmanager
def daemon(workdir: Path, name: str, config: str) -> Iterator[str]:
    """Run ``swapd serve`` with ``config`` (TOML text) on a private socket and state dir."""
    d = workdir / name
    d.mkdir()
    (d / "swapd.toml").write_text(config)
    sock = d / "swapd.sock"
    proc = subprocess.Popen([sys.executable, "-m", "swapd", "serve", "--socket", str(sock),
                             "--state-dir", str(d), "--config", str(d / "swapd.toml")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while not sock.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                err = proc.stderr.read() if proc.stderr else ""
                raise SystemExit(f"error: swapd serve ({name}) did not come up: "
                                 f"{err.strip()[-2000:]}")
            time.sleep(0.05)
        yield str(sock)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


CONFIGS = {
    "compressed": "",
    "disk": "[layer]\npool_limit_bytes = \"256K\"\n",
    "no_readahead": "[pager]\nreadahead_min = 1\nreadahead_max = 1\n",
}


COPY_RUN = 64  # pages placed by one UFFDIO_COPY for the copy floor


def copy_floor(reps: int) -> float:
    """(e): median microseconds per page of one UFFDIO_COPY of COPY_RUN ready pages."""
    import mmap

    from swapd.kernel import uffd as U
    from swapd.kernel.memfd import PageBuffer, memfd_create, punch_hole
    from swapd.kernel.mm import address_of

    size = COPY_RUN * PAGE
    fd = memfd_create("bench-copy-floor")
    try:
        os.ftruncate(fd, size)
        m = mmap.mmap(fd, size, flags=mmap.MAP_SHARED)
        uf = U.Userfaultfd.create()
        src = PageBuffer(COPY_RUN)
        try:
            uf.api(U.UFFD_FEATURE_MISSING_SHMEM)
            dst = address_of(m)
            uf.register(dst, size, U.UFFDIO_REGISTER_MODE_MISSING)
            src.view[:] = bytes(range(256)) * (size // 256)
            per_page: list[float] = []
            for _ in range(reps):
                punch_hole(fd, 0, size)  # the range is missing again (also unmaps it)
                t = time.perf_counter_ns()
                uf.copy(dst, src.address, size)
                per_page.append((time.perf_counter_ns() - t) / COPY_RUN / 1000.0)
            if m[size - PAGE:size] != bytes(src.view[size - PAGE:size]):
                raise SystemExit("error: copy floor: the copied pages read back wrong")
            return statistics.median(per_page)
        finally:
            uf.close()
            src.close()
            m.close()
    finally:
        os.close(fd)


def _pct(values: list[int], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))] / 1000.0


def run(args: argparse.Namespace) -> int:
    """Run every side interleaved; print p50/p99 and per-page scan costs."""
    if args.pages < args.stride * 8:
        raise SystemExit("error: --pages must be at least 8 x --stride")
    if not os.access("/dev/userfaultfd", os.R_OK) and os.geteuid() != 0:
        print("note: not root; userfaultfd may be refused", file=sys.stderr)
    lat: dict[str, list[tuple[float, float]]] = {"bare": [], "compressed": [], "disk": []}
    floor: list[float] = []
    scan: dict[str, list[float]] = {"readahead": [], "no_readahead": []}
    if args.clients < 1:
        raise SystemExit("error: --clients must be at least 1")
    per_client: list[list[float]] = [[] for _ in range(args.clients)]  # p99 per rep
    base = {"pages": args.pages, "stride": args.stride, "seed": args.seed}
    with tempfile.TemporaryDirectory(prefix="swapd-bench-faults-") as tmp:
        w = Path(tmp)
        with daemon(w, "compressed", CONFIGS["compressed"]) as s_comp, \
                daemon(w, "disk", CONFIGS["disk"]) as s_disk, \
                daemon(w, "no_readahead", CONFIGS["no_readahead"]) as s_nora:
            for rep in range(args.reps):
                repdir = w / f"bare-{rep}"
                repdir.mkdir()
                b = bare_side(args.pages, args.stride, args.seed + rep, repdir)
                lat["bare"].append((_pct(b, 0.5), _pct(b, 0.99)))
                for side, sock in (("compressed", s_comp), ("disk", s_disk)):
                    r = _finish(_child({**base, "mode": "swapd", "socket": sock,
                                        "latency": True, "scan": side == "compressed",
                                        "seed": args.seed + rep}), side)
                    lv = r["lat"]
                    assert isinstance(lv, list)
                    lat[side].append((_pct(lv, 0.5), _pct(lv, 0.99)))
                    if side == "compressed":
                        scan["readahead"].append(float(r["scan_ns_per_page"]))  # type: ignore[arg-type]
                floor.append(copy_floor(args.copy_reps))
                r = _finish(_child({**base, "mode": "swapd", "socket": s_nora, "latency": False,
                                    "scan": True, "seed": args.seed + rep}), "no_readahead")
                scan["no_readahead"].append(float(r["scan_ns_per_page"]))  # type: ignore[arg-type]
                if args.clients > 1:  # N clients faulting at once on one daemon
                    procs = [_child({**base, "mode": "swapd", "socket": s_comp,
                                     "latency": True, "scan": False, "barrier": True,
                                     "seed": args.seed + rep * 100 + k}, stdin=True)
                             for k in range(args.clients)]
                    for proc in procs:  # all filled and evicted: measure together
                        assert proc.stdout is not None
                        proc.stdout.readline()
                    for proc in procs:
                        assert proc.stdin is not None
                        proc.stdin.write("go\n")
                        proc.stdin.flush()
                    for k, proc in enumerate(procs):
                        lv = _finish(proc, f"client {k}")["lat"]
                        assert isinstance(lv, list)
                        per_client[k].append(_pct(lv, 0.99))
                if not args.json:
                    print(f"rep {rep + 1}/{args.reps}: p50 bare {lat['bare'][-1][0]:.1f} "
                          f"compressed {lat['compressed'][-1][0]:.1f} "
                          f"disk {lat['disk'][-1][0]:.1f} us; scan "
                          f"{scan['readahead'][-1] / 1000:.1f} vs "
                          f"{scan['no_readahead'][-1] / 1000:.1f} us/page", file=sys.stderr)
    result: dict[str, dict[str, float]] = {
        side: {"p50_us": statistics.median(x[0] for x in v),
               "p99_us": statistics.median(x[1] for x in v)} for side, v in lat.items()
    }
    result["sequential"] = {
        "readahead_us_per_page": statistics.median(scan["readahead"]) / 1000.0,
        "no_readahead_us_per_page": statistics.median(scan["no_readahead"]) / 1000.0,
    }
    result["copy_floor_us_per_page"] = statistics.median(floor)  # type: ignore[assignment]
    if args.clients > 1:
        result["per_client_p99_us"] = [statistics.median(v) for v in per_client]  # type: ignore[assignment]
    result["ratios"] = {
        "compressed_p50_over_bare": result["compressed"]["p50_us"] / result["bare"]["p50_us"],
        "disk_p50_over_bare": result["disk"]["p50_us"] / result["bare"]["p50_us"],
        "readahead_speedup": result["sequential"]["no_readahead_us_per_page"]
        / result["sequential"]["readahead_us_per_page"],
        "readahead_over_copy_floor": result["sequential"]["readahead_us_per_page"]
        / statistics.median(floor),
    }
    if args.clients > 1:
        pc = [statistics.median(v) for v in per_client]
        result["ratios"]["per_client_p99_max_over_min"] = max(pc) / min(pc)
    result["loadavg"] = list(os.getloadavg())  # type: ignore[assignment]
    if args.json:
        print(json.dumps({**result, "impl": _impl_name(),
                          "loadavg": os.getloadavg()[0],
                          "params": {**base, "reps": args.reps}}, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"fault latency, {args.pages} pages, stride {args.stride}, "
                    f"median of {args.reps}")
    for col in ("side", "p50 us", "p99 us", "p50 / bare"):
        t.add_column(col, justify="right")
    for side in ("bare", "compressed", "disk"):
        t.add_row(side, f"{result[side]['p50_us']:.1f}", f"{result[side]['p99_us']:.1f}",
                  f"{result[side]['p50_us'] / result['bare']['p50_us']:.2f}x")
    Console().print(t)
    sq = result["sequential"]
    print(f"sequential scan: {sq['readahead_us_per_page']:.2f} us/page with readahead, "
          f"{sq['no_readahead_us_per_page']:.2f} without "
          f"({result['ratios']['readahead_speedup']:.1f}x)")
    print(f"copy floor: {result['copy_floor_us_per_page']:.2f} us/page (one UFFDIO_COPY of "
          f"{COPY_RUN} ready pages); readahead is "
          f"{result['ratios']['readahead_over_copy_floor']:.2f}x that (impl {_impl_name()})")
    if args.clients > 1:
        pcs = ", ".join(f"{x:.1f}" for x in result["per_client_p99_us"])  # type: ignore[attr-defined]
        print(f"{args.clients} clients at once, p99 us each: {pcs} (max/min "
              f"{result['ratios']['per_client_p99_max_over_min']:.2f})")
    print(f"load average {result['loadavg']}")
    return 0
