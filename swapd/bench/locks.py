"""zsmalloc with per-class locks vs one pool lock: parallel writers outside the GIL.

With the compiled implementation (swapd/impl.py), ``swapd bench locks [--writers N]
[--files PATH ...] [--rounds N] [--reps N] [--json]`` runs N writer threads on every CPU
allowed, each storing its share of a corpus of variable-size objects into one zsmalloc pool
and freeing them again, round after round, with the compiled batch calls
(``ZsFast.store_objects``: malloc + write + CRC-32 of each object; ``free_objects``) which
take the class (or pool) lock per object with the GIL released -- so the writers really run
on both CPUs at once and contend for the locks the way kernel CPUs do.  The objects are what
a build server's cache would store: the 4 KiB pages of object files (``--files``: files or
directories, by default the shared objects of this Python's ``lib-dynload``) compressed with
lz4, huge ones (at or above ``huge_class_size``, stored one per page) left out.  A call that
needs a new zspage or empties one drops to the pool's Python path (under the GIL) for that
object.  Reported per mode (``class``, ``pool``), medians of ``--reps`` interleaved runs:
``ops_per_s`` (a store or a free is one op), ``lock_wait_ms`` (time writers spent waiting for
the class/pool and meta mutexes, summed over writers), ``contended`` (share of lock
acquisitions that had to wait), and ``cpu_per_wall`` (process CPU time over wall time: near
the CPU count when the writers run in parallel).  ``--gil`` runs the old GIL-bound bench
below instead (it is also what runs under ``SWAPD_IMPL=python``).

The GIL-bound bench: ``swapd bench locks --gil [--threads N] [--ops N] [--reps N]
[--cpus one|all|LIST] [--json]`` runs N threads at once
on one zsmalloc pool (``backends/zsmalloc.py``), with ``lock="class"`` (a lock per size
class: the kernel before 6.2 and again since 6.11, "mm/zsmalloc: change back to
per-size_class lock") and with ``lock="pool"`` (one lock for the pool: 6.2 to 6.10,
commit c0547d0b6a4b "zsmalloc: consolidate zs_pool's migrate_lock and size_class's
locks").  Each thread repeats: store an object (``malloc`` + ``write``), load a random
live one (``read``, verified), and free its oldest once it holds more than ``--window``
objects; each store, load and free counts as one op.  Two workloads:

* ``few-classes``: object sizes 1400..1440 bytes, which fall into 3 size classes (pages
  that compress alike, as the hottest data of one workload often do);
* ``many-classes``: sizes 64..3600 bytes, spread over about a hundred classes.

The runs are interleaved (every repetition runs every workload in both modes, the order of
the modes alternating), and the median ops/s of ``--reps`` repetitions is reported with
the ratio class/pool per workload, as a table or, with ``--json``, as JSON.  By default
the process is pinned to one CPU: only one thread runs Python at a time anyway, and on a
VM a GIL hand-off to a thread parked on another vCPU waits tens of microseconds for that
vCPU to wake (see docs/design.md sec. 11), which swamps the lock costs with noise; ``--cpus all``
measures with it.

How to read the numbers.  CPython's GIL lets one thread run Python code at a time, so
these threads never execute allocator code in parallel the way kernel CPUs do.  What the
bench measures is the cost of lock hand-off and contention *under the GIL*: when the
interpreter switches a thread out (every ``--switch-interval`` seconds) while it holds a
lock, every thread that next needs that lock blocks in the kernel, and the GIL changes
hands again, a convoy.  With one pool lock every thread needs that lock; with per-class
locks only threads whose objects fall into the same class do.  So a class/pool ratio above
1 means the pool lock's convoys cost throughput here, and about 1 means they did not.  The
kernel debate measured something else: CPUs running truly in parallel and bouncing one
lock's cache line.  In 2022 the pool lock was judged to make no significant difference
(it was a step towards writeback inside zsmalloc); in 2024, with that writeback gone, the
per-class locks came back after a kernel build with zswap showed about 27% more system
time with the pool lock).  Take from this bench the direction
and how it changes with the number of classes the hot objects fall into, not the
magnitude: real parallel contention on many CPUs widens the gap, and the GIL caps
parallelism at one thread.  Note also what both modes share: the page arena's lock and
its page faults and madvise calls, which the many-classes workload pays more often (a
few hundred live objects spread over ~100 classes keep zspages emptying and refilling).
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from backends.zsmalloc import ZsPool
from swapd.bench.common import print_json, print_table

MODES = ("class", "pool")


@dataclass(frozen=True)
class Workload:
    """Object sizes drawn uniformly from ``lo..hi`` bytes."""

    name: str
    lo: int
    hi: int


WORKLOADS = (Workload("few-classes", 1400, 1440), Workload("many-classes", 64, 3600))


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``swapd bench locks``."""
    p.add_argument("--gil", action="store_true",
                   help="run the GIL-bound bench (Python threads calling malloc/write/read/free)")
    p.add_argument("--writers", type=int, default=8,
                   help="writer threads outside the GIL (default 8)")
    p.add_argument("--files", action="append", default=[], metavar="PATH",
                   help="files or directories whose pages are the objects (repeatable; "
                        "default: this Python's lib-dynload shared objects)")
    p.add_argument("--rounds", type=int, default=20,
                   help="store-and-free rounds per writer per run (default 20)")
    p.add_argument("--max-objects", type=int, default=20000,
                   help="objects of the corpus used (default 20000)")
    p.add_argument("--threads", type=int, default=4, help="threads at once (default 4)")
    p.add_argument("--ops", type=int, default=30000,
                   help="ops (store, load or free) per thread per run (default 30000)")
    p.add_argument("--reps", type=int, default=5, help="interleaved repetitions (default 5)")
    p.add_argument("--window", type=int, default=256,
                   help="live objects a thread keeps before freeing its oldest (default 256)")
    p.add_argument("--switch-interval", type=float, default=None, metavar="SECONDS",
                   help="sys.setswitchinterval for the runs (default: leave CPython's, "
                        f"{sys.getswitchinterval()} s)")
    p.add_argument("--cpus", default="one", metavar="LIST",
                   help="CPUs to run on: 'one' (default: the first CPU allowed, so that GIL "
                        "hand-offs do not wait for another CPU to wake), 'all' (leave the "
                        "affinity alone) or a comma-separated list of CPU numbers")
    p.add_argument("--seed", type=int, default=0, help="seed of the sizes and data (default 0)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def _payloads(w: Workload, seed: int, n: int = 512) -> list[bytes]:
    rng = random.Random(seed)
    return [rng.randbytes(rng.randint(w.lo, w.hi)) for _ in range(n)]


def _worker(pool: ZsPool, payloads: list[bytes], ops: int, window: int, seed: int,
            start: threading.Barrier, errors: list[BaseException], counts: list[int]) -> None:
    """Store, load (verified) and free until ``ops`` ops are done, then free what is left;
    append the ops done (the final frees included) to ``counts``."""
    malloc, write, read, free = pool.malloc, pool.write, pool.read, pool.free
    rng = random.Random(seed)
    pick = rng.randrange
    live: deque[tuple[int, bytes]] = deque()
    n = len(payloads)
    done = 0
    i = 0
    try:
        start.wait()
        while done < ops:
            data = payloads[i % n]
            i += 1
            h = malloc(len(data))
            write(h, data)
            live.append((h, data))
            h, data = live[pick(len(live))]
            if read(h) != data:
                raise AssertionError(f"handle {h:#x} read back wrong data")
            done += 2
            if len(live) > window:
                h, _ = live.popleft()
                free(h)
                done += 1
    except BaseException as exc:  # reported by the main thread
        errors.append(exc)
        start.abort()
    finally:
        for h, _ in live:
            free(h)
        counts.append(done + len(live))


def run_once(mode: str, w: Workload, threads: int, ops: int, window: int, seed: int) -> float:
    """One run: ``threads`` threads on a fresh pool; return ops per second."""
    pool = ZsPool(lock=mode, max_pages=threads * (window + 1) * 2 + 1024)
    try:
        start = threading.Barrier(threads + 1)
        errors: list[BaseException] = []
        counts: list[int] = []
        ts = [threading.Thread(target=_worker,
                               args=(pool, _payloads(w, seed * 1000 + k), ops, window,
                                     seed * 1000 + k, start, errors, counts))
              for k in range(threads)]
        for t in ts:
            t.start()
        try:
            start.wait()
        except threading.BrokenBarrierError:
            pass  # a worker failed before the start; its error is raised below
        t0 = time.perf_counter()
        for t in ts:
            t.join()
        elapsed = time.perf_counter() - t0
        if errors:
            raise errors[0]
        pool._check()
        if pool.total_pages():
            raise AssertionError(f"{pool.total_pages()} pages left after freeing everything")
        return sum(counts) / elapsed
    finally:
        pool.close()


def _parse_cpus(spec: str) -> set[int] | None:
    """The CPU set ``--cpus`` names; None for 'all'.  ValueError if it is not allowed."""
    allowed = os.sched_getaffinity(0)
    if spec == "all":
        return None
    if spec == "one":
        return {min(allowed)}
    cpus = {int(c) for c in spec.split(",") if c.strip()}
    if not cpus or not cpus <= allowed:
        raise ValueError(f"{spec!r} is not a subset of the allowed CPUs {sorted(allowed)}")
    return cpus


def classes_touched(w: Workload) -> int:
    """How many distinct size classes objects of ``w.lo..w.hi`` bytes fall into."""
    pool = ZsPool(max_pages=8)
    try:
        return len({pool.class_for(s).index for s in range(w.lo, w.hi + 1)})
    finally:
        pool.close()


def file_objects(paths: list[str], limit: int, huge: int) -> list[bytes]:
    """lz4 blocks of the 4 KiB pages of the files under ``paths`` (below ``huge`` bytes; pages
    that are all one byte value left out, as swap keeps those in the swap table)."""
    import lz4.block

    files: list[str] = []
    for p in paths:
        if os.path.isdir(p):
            for root, _dirs, names in os.walk(p):
                files.extend(os.path.join(root, n) for n in sorted(names))
        else:
            files.append(p)
    out: list[bytes] = []
    for f in sorted(files):
        try:
            with open(f, "rb") as fh:
                data = fh.read()
        except OSError:
            continue
        for o in range(0, len(data) - 4095, 4096):
            pg = data[o:o + 4096]
            if pg.count(pg[:1]) == 4096:
                continue
            c = lz4.block.compress(pg, store_size=False)
            if len(c) < huge:
                out.append(c)
                if len(out) >= limit:
                    return out
    return out


def _default_files() -> list[str]:
    import sysconfig

    d = sysconfig.get_config_var("DESTSHARED") or ""
    return [d] if d and os.path.isdir(d) else [os.path.dirname(os.__file__)]


def _writer(pool: ZsPool, fast: object, src: bytes, lens: object, rounds: int,
            start: threading.Barrier, errors: list[BaseException], counts: list[int]) -> None:
    """Store every object of ``src``/``lens`` and free them all, ``rounds`` times."""
    from array import array

    n = len(lens)  # type: ignore[arg-type]
    st, fr = fast.store_objects, fast.free_objects  # type: ignore[attr-defined]
    view = memoryview(src)
    ops = 0
    try:
        start.wait()
        for _ in range(rounds):
            handles = array("Q", bytes(8 * n))
            j = 0
            while j < n:
                j = st(src, lens, handles, j)
                if j < n:  # a new zspage: the pool's Python path
                    k = lens[j]  # type: ignore[index]
                    h = pool.malloc(k)
                    pool.write(h, view[j * 4096:j * 4096 + k])
                    handles[j] = h
                    j += 1
            j = 0
            while j < n:
                j = fr(handles, j)
                if j < n:  # an emptied zspage: the pool's Python path
                    pool.free(handles[j])
                    j += 1
            ops += 2 * n
    except BaseException as exc:
        errors.append(exc)
        start.abort()
    counts.append(ops)


def run_writers(mode: str, objects: list[bytes], writers: int, rounds: int) -> dict[str, float]:
    """One run of the compiled writers on a fresh pool; ops/s, lock wait, contention."""
    from array import array

    from swapd._native.zsmalloc import fast_of

    pool = ZsPool(lock=mode, max_pages=len(objects) + 4096 * writers)
    try:
        fast = fast_of(pool)
        if fast is None:
            raise SystemExit("error: the compiled zsmalloc is not running (see swapd --version)")
        shares = [objects[k::writers] for k in range(writers)]
        srcs = []
        for sh in shares:
            buf = bytearray(4096 * len(sh))
            for j, o in enumerate(sh):
                buf[j * 4096:j * 4096 + len(o)] = o
            srcs.append((bytes(buf), array("i", [len(o) for o in sh])))
        locks: list[Any] = list(dict.fromkeys(
            [c.lock for c in pool.classes] + [getattr(pool, "_meta_lock", None)]))
        locks = [lk for lk in locks if lk is not None]
        before = [lk.stats() for lk in locks]
        start = threading.Barrier(writers + 1)
        errors: list[BaseException] = []
        counts: list[int] = []
        ts = [threading.Thread(target=_writer, args=(pool, fast, src, lens, rounds, start,
                                                     errors, counts))
              for src, lens in srcs]
        for t in ts:
            t.start()
        try:
            start.wait()
        except threading.BrokenBarrierError:
            pass
        c0 = time.process_time()
        t0 = time.perf_counter()
        for t in ts:
            t.join()
        wall = time.perf_counter() - t0
        cpu = time.process_time() - c0
        if errors:
            raise errors[0]
        pool._check()
        if pool.total_pages():
            raise AssertionError(f"{pool.total_pages()} pages left after freeing everything")
        after = [lk.stats() for lk in locks]
        acq = sum(a["acquires"] - b["acquires"] for a, b in zip(after, before))
        cont = sum(a["contended"] - b["contended"] for a, b in zip(after, before))
        wait = sum(a["wait_ns"] - b["wait_ns"] for a, b in zip(after, before))
        return {"ops_per_s": sum(counts) / wall, "lock_wait_ms": wait / 1e6,
                "contended": cont / acq if acq else 0.0, "cpu_per_wall": cpu / wall}
    finally:
        pool.close()


def run_compiled(args: argparse.Namespace) -> int:
    """The writers bench (module docstring); table or JSON."""
    for opt in ("writers", "rounds", "reps", "max_objects"):
        if getattr(args, opt) <= 0:
            print(f"error: --{opt.replace('_', '-')} must be positive", file=sys.stderr)
            return 2
    probe = ZsPool(max_pages=8)
    huge = probe.huge_class_size
    probe.close()
    paths = args.files or _default_files()
    objects = file_objects(paths, args.max_objects, huge)
    if len(objects) < args.writers:
        print(f"error: --files gave {len(objects)} objects, fewer than the writers",
              file=sys.stderr)
        return 2
    runs: dict[str, list[dict[str, float]]] = {m: [] for m in MODES}
    for r in range(args.reps):
        for mode in (MODES if r % 2 == 0 else MODES[::-1]):
            runs[mode].append(run_writers(mode, objects, args.writers, args.rounds))
    from swapd.impl import describe

    med = {m: {k: statistics.median(x[k] for x in runs[m]) for k in runs[m][0]} for m in MODES}
    sizes = sorted(len(o) for o in objects)
    cpus = sorted(os.sched_getaffinity(0))
    probe = ZsPool(max_pages=8)
    nclasses = len({probe.class_for(sz).index for sz in set(sizes)})
    probe.close()
    result: dict[str, object] = {
        "impl": describe(), "loadavg": os.getloadavg()[0], "writers": args.writers,
        "cpus": cpus, "rounds": args.rounds, "reps": args.reps,
        "objects": len(objects), "object_bytes_median": sizes[len(sizes) // 2],
        "object_bytes_range": [sizes[0], sizes[-1]], "files": paths, "classes": nclasses,
        **{m: {**med[m], "runs": runs[m]} for m in MODES},
        "class_over_pool": med["class"]["ops_per_s"] / med["pool"]["ops_per_s"],
    }
    if args.json:
        print_json(result)
        return 0
    rows = [(m, med[m]["ops_per_s"], med[m]["lock_wait_ms"], f"{100 * med[m]['contended']:.2f}%",
             med[m]["cpu_per_wall"]) for m in MODES]
    print_table(f"zsmalloc lock modes: {args.writers} writers outside the GIL on CPUs "
                f"{','.join(map(str, cpus))}, {len(objects):,} objects "
                f"({nclasses} classes), median of {args.reps}",
                ("lock", "ops/s", "lock wait ms", "contended", "cpu/wall"), rows,
                caption=f"class/pool {med['class']['ops_per_s'] / med['pool']['ops_per_s']:.2f}"
                        f"; loadavg {os.getloadavg()[0]:.2f}; objects: lz4 pages of "
                        f"{', '.join(paths)}")
    return 0


def run(args: argparse.Namespace) -> int:
    """Run the benchmark; print a table or JSON; 0 on success."""
    from swapd.impl import native

    if not args.gil:
        if native() is not None:
            return run_compiled(args)
        print("note: the compiled implementation is not running; running the GIL-bound "
              "bench (--gil)", file=sys.stderr)
    for opt in ("threads", "ops", "reps", "window"):
        if getattr(args, opt) <= 0:
            print(f"error: --{opt} must be positive", file=sys.stderr)
            return 2
    try:
        cpus = _parse_cpus(args.cpus)
    except ValueError as exc:
        print(f"error: --cpus: {exc}", file=sys.stderr)
        return 2
    old_affinity = os.sched_getaffinity(0)
    if cpus is not None:
        os.sched_setaffinity(0, cpus)  # threads started later inherit it
    old_interval = sys.getswitchinterval()
    if args.switch_interval is not None:
        sys.setswitchinterval(args.switch_interval)
    runs: dict[str, dict[str, list[float]]] = {w.name: {m: [] for m in MODES} for w in WORKLOADS}
    try:
        for r in range(args.reps):
            for w in WORKLOADS:
                order = MODES if r % 2 == 0 else MODES[::-1]
                for mode in order:
                    runs[w.name][mode].append(
                        run_once(mode, w, args.threads, args.ops, args.window, args.seed + r))
    finally:
        sys.setswitchinterval(old_interval)
        os.sched_setaffinity(0, old_affinity)
    cpu_list = sorted(cpus if cpus is not None else old_affinity)
    result: dict[str, object] = {
        "threads": args.threads, "ops_per_thread": args.ops, "reps": args.reps,
        "window": args.window, "switch_interval_s": args.switch_interval or old_interval,
        "cpus": cpu_list,
        "workloads": {},
    }
    rows = []
    for w in WORKLOADS:
        med = {m: statistics.median(runs[w.name][m]) for m in MODES}
        ratio = med["class"] / med["pool"]
        ncls = classes_touched(w)
        result["workloads"][w.name] = {  # type: ignore[index]
            "sizes": [w.lo, w.hi], "classes": ncls,
            **{m: {"ops_per_s": med[m], "runs": runs[w.name][m]} for m in MODES},
            "class_over_pool": ratio,
        }
        rows.append((w.name, f"{w.lo}..{w.hi}", ncls, med["class"], med["pool"], ratio))
    if args.json:
        print_json(result)
    else:
        print_table(f"zsmalloc lock modes, {args.threads} threads on CPU(s) "
                    f"{','.join(map(str, cpu_list))}, median of {args.reps} "
                    f"interleaved runs ({args.ops} ops per thread)",
                    ("workload", "object bytes", "classes", "lock=class ops/s",
                     "lock=pool ops/s", "class/pool"), rows,
                    caption="ops: store (malloc+write), load (read), free; under the GIL, "
                            "see `swapd bench locks --help`")
    return 0
