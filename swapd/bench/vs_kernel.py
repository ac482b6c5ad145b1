"""Kernel swap on zram under a memory cgroup vs swapd, on the same workload.

``swapd bench vs-kernel [--size 256M] [--limit 64M] [--reps 3] [--json]`` (root, zram, a
memory cgroup).  The workload fills SIZE with corpus pages (every page written once, the
limit forcing evictions all along), then touches every page once in a seeded random
order, then once sequentially, and reports nanoseconds per page for each phase.  It runs,
interleaved ``--reps`` times:

* **kernel**: an anonymous private mapping in a process confined to a fresh memory
  cgroup (v1 ``memory.limit_in_bytes`` or v2 ``memory.max``, whichever the machine has)
  with LIMIT bytes, swapping to a zram device set to lz4 (``drivers/block/zram``; the
  zram swap path reads one page per fault: no readahead, since swap readahead is skipped
  for ``SWP_SYNCHRONOUS_IO`` devices in ``mm/memory.c:do_swap_page``);
* **swapd**: a region of the same size from ``swapd.client`` with a resident limit of
  LIMIT bytes, served by a ``swapd serve`` started for the run on built-in defaults;
* **swapd+NAME** (with ``--side NAME=TOML``, repeatable): the same with extra daemon
  configuration, e.g. ``--side nocolocate='[pager]\ncolocate = false'``.

``max_resident_pages`` is measured from outside the daemon: the bench samples the
client's memfd's allocated blocks (``fstat`` ``st_blocks`` of ``/proc/PID/fd/N``) every
``--sample-ms`` (5) milliseconds; on the kernel side it is the cgroup's peak usage.
``daemon_cpu_ns_per_page`` is the daemon's CPU time (``/proc/PID/stat`` utime+stime) over
the run per page touched, so the CPU cost of a placement choice (busy-polling) shows.

Output keys (issue 9): ``{"kernel": {...}, "swapd": {"fill_ns_per_page",
"random_ns_per_page", "sequential_ns_per_page", "max_resident_pages", "limit_pages"}}``,
``"ratios"`` (each side over the kernel), ``"loadavg"`` (1/5/15-minute load at the end)
and ``"loadavg_start"``.  Medians of the interleaved repetitions.  Targets: fill at most
1.5x the kernel, random at most 1.0x, sequential at most 0.5x, and ``max_resident_pages``
at most the limit plus one eviction batch.  The machine's swap and cgroups are left as
found: the zram device is swapped off, reset and removed, the cgroup removed, the daemon
stopped.
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
import threading
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
resident = []  # swapd: the daemon's count after each phase (the outside sample is the figure)
def note():
    if keep is not None:
        resident.append(keep.stats()["resident_pages"])
print("ready", flush=True)
sys.stdin.readline()  # "go": the bench has set the limit and started sampling
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
                  "daemon_resident_pages": max(resident) if resident else 0}))
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
    p.add_argument("--side", action="append", default=[], metavar="NAME=TOML",
                   help="also run swapd with this configuration (TOML text, \\n for newlines)")
    p.add_argument("--sample-ms", type=float, default=5.0,
                   help="resident-size sampling period in ms (default 5)")
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
    """Create a memory cgroup (v1 or v2); yield its directory.  No limit is set here: the
    workload's child sets ``limit`` plus its own baseline once it is ready."""
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
        del limit_file
        yield cg
    finally:
        for _ in range(50):
            try:
                cg.rmdir()
                break
            except OSError:
                time.sleep(0.1)


class _Sampler(threading.Thread):
    """Samples, from outside the daemon, the allocated pages of the child's memfd (swapd)
    or the cgroup's usage (kernel) every ``period`` seconds; keeps the maximum."""

    def __init__(self, pid: int, cgroup: Path | None, period: float) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.cgroup = cgroup
        self.period = period
        self.stop = threading.Event()
        self.max_pages = 0
        self.samples = 0
        self.baseline = 0  # kernel side: the child's own usage before the workload
        self._fd = -1

    def _open_memfd(self) -> None:
        fddir = Path(f"/proc/{self.pid}/fd")
        with contextlib.suppress(OSError):
            for link in fddir.iterdir():
                with contextlib.suppress(OSError):
                    if os.readlink(link).startswith("/memfd:vs-kernel"):
                        self._fd = os.open(link, os.O_RDONLY | os.O_CLOEXEC)
                        return

    def _cgroup_pages(self) -> int:
        assert self.cgroup is not None
        return max(0, _cgroup_usage(self.cgroup) - self.baseline) // PAGE

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                if self.cgroup is not None:
                    pages = self._cgroup_pages()
                else:
                    if self._fd < 0:
                        self._open_memfd()
                    pages = os.fstat(self._fd).st_blocks * 512 // PAGE if self._fd >= 0 else 0
                self.samples += 1
                if pages > self.max_pages:
                    self.max_pages = pages
                self.stop.wait(self.period)
        except OSError:
            pass
        finally:
            if self._fd >= 0:
                os.close(self._fd)


def _cgroup_usage(cg: Path) -> int:
    """Bytes charged to the cgroup now (v2 memory.current, v1 memory.usage_in_bytes)."""
    for name in ("memory.current", "memory.usage_in_bytes"):
        f = cg / name
        if f.exists():
            return int(f.read_text().split()[0])
    return 0


def _set_cgroup_limit(cg: Path, limit: int) -> None:
    """Limit the cgroup to ``limit`` bytes (v2 memory.max, v1 memory.limit_in_bytes)."""
    for name in ("memory.max", "memory.limit_in_bytes"):
        f = cg / name
        if f.exists():
            f.write_text(str(limit))
            return


def _cpu_ns(pid: int) -> int:
    """utime + stime of ``pid`` in nanoseconds (proc(5) fields 14 and 15)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()
    except OSError:
        return 0
    return (int(stat[11]) + int(stat[12])) * 1_000_000_000 // os.sysconf("SC_CLK_TCK")


def _run_child(params: dict[str, object], cgroup: Path | None, period: float,
               daemon_pid: int = 0) -> dict[str, float]:
    procs = cgroup / "cgroup.procs" if cgroup is not None else None

    def enter_cgroup() -> None:
        if procs is not None:
            procs.write_text(str(os.getpid()))

    root = str(Path(__file__).resolve().parents[2])
    proc = subprocess.Popen([sys.executable, "-c", CHILD, json.dumps({**params, "root": root})],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=enter_cgroup)
    sampler = _Sampler(proc.pid, cgroup, period)
    cpu0 = _cpu_ns(daemon_pid) if daemon_pid else 0
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()  # "ready": the region is mapped, the phases start
        if first.strip() == "ready":
            if cgroup is not None:
                # the interpreter and the corpus are the child's own: the limit is on
                # top of them, as swapd's limit is only on the region
                sampler.baseline = _cgroup_usage(cgroup)
                _set_cgroup_limit(cgroup, int(params["limit"]) + sampler.baseline)  # type: ignore[call-overload]
                proc.stdin.write("go\n")  # type: ignore[union-attr]
                proc.stdin.flush()  # type: ignore[union-attr]
            else:
                proc.stdin.write("go\n")  # type: ignore[union-attr]
                proc.stdin.flush()  # type: ignore[union-attr]
            sampler.start()
        out, err = proc.communicate(timeout=1800)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    finally:
        sampler.stop.set()
        if sampler.is_alive():
            sampler.join()
    cpu = _cpu_ns(daemon_pid) - cpu0 if daemon_pid else 0
    if proc.returncode != 0:
        raise SystemExit(f"error: {params['mode']} workload failed "
                         f"(exit {proc.returncode}): {err.strip()[-2000:]}")
    result: dict[str, float] = json.loads(out.strip().splitlines()[-1])
    if result["mismatches"]:
        raise SystemExit(f"error: {params['mode']} workload read back wrong data")
    limit_pages = int(params["limit"]) // PAGE  # type: ignore[call-overload]
    npages = int(params["size"]) // PAGE  # type: ignore[call-overload]
    result["max_resident_pages"] = sampler.max_pages
    result["resident_samples"] = sampler.samples
    result["limit_pages"] = limit_pages
    if daemon_pid:
        result["daemon_cpu_ns_per_page"] = cpu / (3 * npages)
    return result


@contextlib.contextmanager
def swapd_daemon(workdir: Path, config: str = "") -> Iterator[tuple[str, int]]:
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
    errf = open(workdir / "serve.log", "w+")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=errf, text=True)
    try:
        deadline = time.monotonic() + 30
        while not sock.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                errf.seek(0)
                err = errf.read()
                raise SystemExit(f"error: swapd serve did not come up: {err.strip()[-2000:]}")
            time.sleep(0.05)
        yield str(sock), proc.pid
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        errf.close()


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
    extra: dict[str, str] = {}
    for spec in args.side:
        name, sep, toml = spec.partition("=")
        if not sep or not name.isidentifier():
            print(f"error: --side {spec!r}: expected NAME=TOML", file=sys.stderr)
            return 2
        extra[f"swapd+{name}"] = toml.replace("\\n", "\n") + "\n"
    base: dict[str, object] = {"size": size, "limit": limit, "seed": args.seed,
                               "corpus": args.corpus, "corpus_pages": 4096}
    period = max(0.001, args.sample_ms / 1000.0)
    sides = ["kernel", "swapd", *extra]
    runs: dict[str, list[dict[str, float]]] = {side: [] for side in sides}
    load_start = os.getloadavg()
    # Kernel swap is on only while the kernel side runs: with swap enabled, the daemon's
    # process_madvise(MADV_PAGEOUT) sampling would really swap the client's shmem pages.
    with tempfile.TemporaryDirectory(prefix="swapd-vs-kernel-") as tmp, \
            contextlib.ExitStack() as stack:
        daemons = {"swapd": stack.enter_context(swapd_daemon(Path(tmp) / "default"))}
        for side, toml in extra.items():
            daemons[side] = stack.enter_context(
                swapd_daemon(Path(tmp) / side.replace("+", "-"), toml))
        for rep in range(args.reps):
            with zram_swap(2 * size) as _dev, memory_cgroup(limit) as cg:
                runs["kernel"].append(_run_child({**base, "mode": "kernel"}, cg, period))
            for side, (sock, pid) in daemons.items():
                runs[side].append(_run_child({**base, "mode": "swapd", "socket": sock}, None,
                                             period, pid))
            if not args.json:
                print(f"rep {rep + 1}/{args.reps}: " + ", ".join(
                    f"{side} {runs[side][-1]['fill_ns_per_page']:.0f} / "
                    f"{runs[side][-1]['random_ns_per_page']:.0f} / "
                    f"{runs[side][-1]['sequential_ns_per_page']:.0f} ns "
                    f"max {runs[side][-1]['max_resident_pages']:.0f} p" for side in sides)
                    + " (fill / random / sequential)", file=sys.stderr)
    keys = ("fill_ns_per_page", "random_ns_per_page", "sequential_ns_per_page",
            "max_resident_pages", "limit_pages")
    result: dict[str, object] = {}
    for side, rs in runs.items():
        d: dict[str, float] = {k: statistics.median(r[k] for r in rs) for k in keys}
        d["max_resident_pages"] = max(r["max_resident_pages"] for r in rs)  # worst rep
        if side != "kernel":
            d["daemon_resident_pages"] = max(r["daemon_resident_pages"] for r in rs)
            d["daemon_cpu_ns_per_page"] = statistics.median(
                r["daemon_cpu_ns_per_page"] for r in rs)
            d["resident_samples"] = min(r["resident_samples"] for r in rs)
        result[side] = d
    k = result["kernel"]
    assert isinstance(k, dict)
    ratios: dict[str, float] = {}
    for side in sides[1:]:
        sd = result[side]
        assert isinstance(sd, dict)
        tag = side.replace("+", "_")
        for phase in ("fill", "random", "sequential"):
            key = f"{phase}_ns_per_page"
            ratios[f"{phase}_{tag}_over_kernel"] = sd[key] / k[key]
    result["ratios"] = ratios
    result["loadavg"] = list(os.getloadavg())
    result["loadavg_start"] = list(load_start)
    result["params"] = {"size": size, "limit": limit, "reps": args.reps, "seed": args.seed,
                        "corpus": args.corpus or "synthetic", "sample_ms": args.sample_ms,
                        "sides": {"swapd": "built-in defaults", **extra}}
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"vs-kernel: {size >> 20} MiB under a {limit >> 20} MiB limit, "
                        f"median of {args.reps}")
    for col in ("side", "fill ns/page", "random ns/page", "sequential ns/page",
                "max resident pages"):
        table.add_column(col, justify="right")
    for side in sides:
        r = result[side]
        assert isinstance(r, dict)
        table.add_row(side, f"{r['fill_ns_per_page']:.0f}", f"{r['random_ns_per_page']:.0f}",
                      f"{r['sequential_ns_per_page']:.0f}",
                      f"{r['max_resident_pages']:.0f} / {r['limit_pages']:.0f}")
    for side in sides[1:]:
        tag = side.replace("+", "_")
        table.add_row(f"{side}/kernel", f"{ratios[f'fill_{tag}_over_kernel']:.2f}x",
                      f"{ratios[f'random_{tag}_over_kernel']:.2f}x",
                      f"{ratios[f'sequential_{tag}_over_kernel']:.2f}x", "")
    Console().print(table)
    print(f"load average {result['loadavg_start']} -> {result['loadavg']}")
    return 0
