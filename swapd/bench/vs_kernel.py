"""Kernel swap on zram under a memory cgroup vs swapd, on the same workload.

``swapd bench vs-kernel [--size 256M] [--limit 64M] [--reps 3] [--json]`` (root, zram, a
memory cgroup).  The workload fills SIZE with corpus pages, then touches every page once
in a seeded random order, then once sequentially, and reports nanoseconds per page for
each access phase.  It runs, interleaved ``--reps`` times:

* **kernel**: an anonymous private mapping in a process confined to a fresh memory
  cgroup (v1 ``memory.limit_in_bytes`` or v2 ``memory.max``, whichever the machine has)
  with LIMIT bytes, swapping to a zram device set to lz4 (``drivers/block/zram``; the
  zram swap path reads one page per fault: no readahead, since swap readahead is skipped
  for ``SWP_SYNCHRONOUS_IO`` devices in ``mm/memory.c:do_swap_page``);
* **swapd**: a region of the same size from ``swapd.client`` with a resident limit of
  LIMIT bytes, served by a ``swapd serve`` started for the run on built-in defaults;
* **swapd+colocate** (with ``--colocate``): the same with ``[pager] colocate = true``, the
  opt-in CPU placement that serves each client thread on the CPU it faults on.

Medians are reported.  Targets (issue 4): random at most 2x the kernel; sequential faster
than the kernel.  The machine's swap and cgroups are left as found: the zram device is
swapped off, reset and removed, the cgroup removed, the daemon stopped.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from swapd.pages import PAGE_SIZE as PAGE

# The child workload.  It receives its parameters as JSON in argv[1] and prints one JSON
# line with ns/page for each phase.  The same code runs over a kernel mapping and over a
# swapd region, so the two sides differ only in who pages the memory.
CHILD = r"""
import json, mmap, random, sys, time
p = json.loads(sys.argv[1])
size, seed = p["size"], p["seed"]
n = size // 4096
sys.path.insert(0, p["root"])
from swapd.corpus import Corpus
corpus = Corpus.open(p["corpus"]) if p["corpus"] else Corpus.synthetic(p["corpus_pages"], seed)
pages = [corpus.page(i) for i in range(len(corpus))]
if p["mode"] == "kernel":
    buf = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    keep = None
else:
    from swapd.client import connect
    keep = connect(p["socket"])
    keep.set_limit(p["limit"])
    buf = keep.map(size, name="vs-kernel")
view = memoryview(buf)
resident = []  # swapd: the client's resident pages after each phase (the limit is honoured?)
def note():
    if keep is not None:
        resident.append(keep.stats()["resident_pages"])
t0 = time.perf_counter()
np_ = len(pages)
for i in range(n):
    view[i * 4096:(i + 1) * 4096] = pages[i % np_]
t1 = time.perf_counter()
note()
order = list(range(n))
random.Random(seed).shuffle(order)
s = 0
t2 = time.perf_counter()
for i in order:
    s += view[i * 4096 + 2048]
t3 = time.perf_counter()
note()
t3 = time.perf_counter()
for i in range(n):
    s += view[i * 4096 + 2048]
t4 = time.perf_counter()
note()
bad = sum(1 for i in range(0, n, 97) if view[i * 4096:(i + 1) * 4096] != pages[i % np_])
print(json.dumps({"fill_ns_per_page": (t1 - t0) / n * 1e9,
                  "random_ns_per_page": (t3 - t2) / n * 1e9,
                  "sequential_ns_per_page": (t4 - t3) / n * 1e9,
                  "mismatches": bad, "checksum": s,
                  "max_resident_pages": max(resident) if resident else 0}))
view.release()
if keep is not None:
    buf.close()
    keep.close()
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Add the benchmark's options."""
    p.add_argument("--size", default="256M", help="workload size (default 256M)")
    p.add_argument("--limit", default="64M", help="resident limit (default 64M)")
    p.add_argument("--reps", type=int, default=3, help="interleaved repetitions (default 3)")
    p.add_argument("--corpus", help="corpus file (default: a synthetic corpus)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--colocate", action="store_true",
                   help="also run swapd with [pager] colocate = true")
    p.add_argument("--json", action="store_true", help="print JSON only")


def parse_size(text: str) -> int:
    """Parse ``512M``, ``1G``, ``4096`` into bytes (page-aligned)."""
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    mult = units.get(t[-1:], 1)
    num = t[:-1] if t[-1:] in units else t
    try:
        value = int(float(num) * mult)
    except ValueError:
        raise SystemExit(f"error: bad size {text!r} (use e.g. 256M)") from None
    if value <= 0 or value % PAGE:
        raise SystemExit(f"error: size {text!r} must be a positive multiple of 4096")
    return value


# -- the kernel side: zram swap and a memory cgroup ----------------------------------------


@contextlib.contextmanager
def zram_swap(disksize: int) -> Iterator[str]:
    """Hot-add a zram device (lz4), make it swap, and remove it afterwards."""
    ctl = Path("/sys/class/zram-control")
    if not ctl.is_dir():
        raise SystemExit("error: this kernel has no zram (no /sys/class/zram-control)")
    dev_id = int((ctl / "hot_add").read_text())
    block = Path(f"/sys/block/zram{dev_id}")
    dev = f"/dev/zram{dev_id}"
    swapped_on = False
    try:
        (block / "comp_algorithm").write_text("lz4")
        (block / "disksize").write_text(str(disksize))
        subprocess.run(["mkswap", dev], check=True, capture_output=True)
        subprocess.run(["swapon", "-p", "32767", dev], check=True, capture_output=True)
        swapped_on = True
        yield dev
    finally:
        if swapped_on:
            subprocess.run(["swapoff", dev], check=False, capture_output=True)
        with contextlib.suppress(OSError):
            (block / "reset").write_text("1")
        with contextlib.suppress(OSError):
            (ctl / "hot_remove").write_text(str(dev_id))


@contextlib.contextmanager
def memory_cgroup(limit: int) -> Iterator[Path]:
    """Create a memory cgroup (v1 or v2) limited to ``limit`` bytes; yield its procs file."""
    v1 = Path("/sys/fs/cgroup/memory")
    v2 = Path("/sys/fs/cgroup")
    name = f"swapd-bench-{os.getpid()}"
    if (v1 / "memory.limit_in_bytes").exists():
        cg = v1 / name
        cg.mkdir()
        limit_file = "memory.limit_in_bytes"
    elif "memory" in (v2 / "cgroup.controllers").read_text(errors="replace").split():
        cg = v2 / name
        cg.mkdir()
        limit_file = "memory.max"
    else:
        raise SystemExit("error: no memory cgroup controller (neither v1 nor v2)")
    try:
        (cg / limit_file).write_text(str(limit))
        yield cg / "cgroup.procs"
    finally:
        for _ in range(50):
            try:
                cg.rmdir()
                break
            except OSError:
                time.sleep(0.1)


def _run_child(params: dict[str, object], procs: Path | None) -> dict[str, float]:
    def enter_cgroup() -> None:
        if procs is not None:
            procs.write_text(str(os.getpid()))

    root = str(Path(__file__).resolve().parents[2])
    out = subprocess.run([sys.executable, "-c", CHILD, json.dumps({**params, "root": root})],
                         capture_output=True, text=True, timeout=1800, preexec_fn=enter_cgroup,
                         check=False)
    if out.returncode != 0:
        raise SystemExit(f"error: {params['mode']} workload failed "
                         f"(exit {out.returncode}): {out.stderr.strip()[-2000:]}")
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    if result["mismatches"]:
        raise SystemExit(f"error: {params['mode']} workload read back wrong data")
    limit_pages = int(params["limit"]) // PAGE  # type: ignore[call-overload]
    if result["max_resident_pages"] > limit_pages + 1024:
        print(f"warning: {params['mode']} run held up to {result['max_resident_pages']:.0f} "
              f"resident pages against a limit of {limit_pages}: its times do not count",
              file=sys.stderr)
    return result


@contextlib.contextmanager
def swapd_daemon(workdir: Path, config: str = "") -> Iterator[str]:
    """Start ``swapd serve`` on a private socket and state directory (with ``config``, TOML
    text, if given); stop it afterwards."""
    sock = workdir / "swapd.sock"
    state = workdir / "state"
    state.mkdir(parents=True)
    cmd = [sys.executable, "-m", "swapd", "serve", "--socket", str(sock),
           "--state-dir", str(state)]
    if config:
        (workdir / "swapd.toml").write_text(config)
        cmd += ["--config", str(workdir / "swapd.toml")]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while not sock.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                err = proc.stderr.read() if proc.stderr else ""
                raise SystemExit(f"error: swapd serve did not come up: {err.strip()[-2000:]}")
            time.sleep(0.05)
        yield str(sock)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run(args: argparse.Namespace) -> int:
    """Run the kernel and swapd sides interleaved and print medians."""
    if os.geteuid() != 0:
        print("error: bench vs-kernel needs root (zram swap and a memory cgroup)",
              file=sys.stderr)
        return 2
    if any(line.strip() for line in Path("/proc/swaps").read_text().splitlines()[1:]):
        print("note: the machine already has swap enabled; the kernel side may use it too",
              file=sys.stderr)
    size, limit = parse_size(args.size), parse_size(args.limit)
    base: dict[str, object] = {"size": size, "limit": limit, "seed": args.seed,
                               "corpus": args.corpus, "corpus_pages": 4096}
    sides = ["kernel", "swapd"] + (["swapd+colocate"] if args.colocate else [])
    runs: dict[str, list[dict[str, float]]] = {side: [] for side in sides}
    # Kernel swap is on only while the kernel side runs: with swap enabled, the daemon's
    # process_madvise(MADV_PAGEOUT) sampling would really swap the client's shmem pages.
    with tempfile.TemporaryDirectory(prefix="swapd-vs-kernel-") as tmp, \
            contextlib.ExitStack() as stack:
        socks = {"swapd": stack.enter_context(swapd_daemon(Path(tmp) / "default"))}
        if args.colocate:
            socks["swapd+colocate"] = stack.enter_context(
                swapd_daemon(Path(tmp) / "colocate", "[pager]\ncolocate = true\n"))
        for rep in range(args.reps):
            with zram_swap(2 * size) as _dev, memory_cgroup(limit) as procs:
                runs["kernel"].append(_run_child({**base, "mode": "kernel"}, procs))
            for side, sock in socks.items():
                runs[side].append(_run_child({**base, "mode": "swapd", "socket": sock}, None))
            if not args.json:
                print(f"rep {rep + 1}/{args.reps}: " + ", ".join(
                    f"{side} {runs[side][-1]['random_ns_per_page']:.0f} / "
                    f"{runs[side][-1]['sequential_ns_per_page']:.0f} ns" for side in sides)
                    + " (random / sequential)", file=sys.stderr)
    keys = ("random_ns_per_page", "sequential_ns_per_page", "fill_ns_per_page",
            "max_resident_pages")
    result: dict[str, object] = {
        side: {k: statistics.median(r[k] for r in rs) for k in keys} for side, rs in runs.items()
    }
    k = result["kernel"]
    assert isinstance(k, dict)
    ratios: dict[str, float] = {}
    for side in sides[1:]:
        sd = result[side]
        assert isinstance(sd, dict)
        tag = side.replace("+", "_")
        ratios[f"random_{tag}_over_kernel"] = sd["random_ns_per_page"] / k["random_ns_per_page"]
        ratios[f"sequential_{tag}_over_kernel"] = (sd["sequential_ns_per_page"]
                                                  / k["sequential_ns_per_page"])
    result["ratios"] = ratios
    result["params"] = {"size": size, "limit": limit, "reps": args.reps, "seed": args.seed,
                        "corpus": args.corpus or "synthetic"}
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"vs-kernel: {size >> 20} MiB under a {limit >> 20} MiB limit, "
                        f"median of {args.reps}")
    for col in ("side", "fill ns/page", "random ns/page", "sequential ns/page"):
        table.add_column(col, justify="right")
    for side in sides:
        r = result[side]
        assert isinstance(r, dict)
        table.add_row(side, f"{r['fill_ns_per_page']:.0f}", f"{r['random_ns_per_page']:.0f}",
                      f"{r['sequential_ns_per_page']:.0f}")
    for side in sides[1:]:
        tag = side.replace("+", "_")
        table.add_row(f"{side}/kernel", "", f"{ratios[f'random_{tag}_over_kernel']:.2f}x",
                      f"{ratios[f'sequential_{tag}_over_kernel']:.2f}x")
    Console().print(table)
    return 0
