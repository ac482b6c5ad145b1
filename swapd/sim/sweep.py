"""Sweeps: one trace over capacities x policies x backends x pools x disks x compressors.

Design.  A sweep is a list of independent :class:`Job` s (plain, picklable
values: each worker opens the trace and builds its own policy, layer and
corpus, so nothing is shared between processes).  Jobs run in a
``concurrent.futures.ProcessPoolExecutor`` of ``workers`` processes (default:
the machine's cores); a rich progress bar counts finished jobs.  Without
backends the jobs are policy-only; with backends every (policy, capacity,
backend, pool size, disk size, compressor) is a full-mode run.  A policy may
appear several times with different parameters (``--param``); its label then
names them.  An LRU stack-distance pass (Mattson) runs as one more job and gives
the exact LRU curve at every capacity for comparison.

With a ``scheduler`` address the jobs go to a Dask distributed cluster instead
(:func:`run_sweep`; the optional ``distributed`` extra): the same picklable jobs,
run by ``run_job`` on the workers, which read the trace and the corpus from the
same path (a shared file system), or from the bytes shipped with each job when
``ship`` is set (the trace is then written to a worker's temporary directory).
Progress and outputs are the same as with the local pool.

A worker process runs many jobs of one trace and one corpus: it builds the
synthetic corpus (about a second of CPU) and parses the trace once, and keeps
both for its later jobs (:func:`_job_corpus`, :func:`_job_requests`; one of
each, keyed by what defines them, so a job of another trace or corpus replaces
them).  A corpus is read-only and a full-mode run only iterates the requests,
so sharing them between runs cannot change a result.

Results are written to ``OUT/sweep.csv`` (one row per job, flat columns) and
``OUT/sweep.json`` (parameters plus every result with its time series), and,
when matplotlib is installed, to PNG figures (:mod:`swapd.sim.plots`).

Results are ordered by (backend, policy label, capacity, pool, disk, compressor)
whatever order the workers finish in, so the output files of a sweep are
deterministic.  :func:`summarize` turns results into the answer: the best policy
per capacity, and the smallest pool within N% of the best modelled time.
"""

from __future__ import annotations

import concurrent.futures as cf
import csv
import json
import math
import multiprocessing
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from swapd.errors import ConfigError
from swapd.sim.costs import DEFAULT_COSTS, CostTable
from swapd.sim.trace import Request, read_pages, read_trace


@dataclass(frozen=True)
class Job:
    """One simulation of a sweep (picklable)."""

    kind: str  # "policy-only", "full", "replay" (a recorded trace) or "mattson"
    trace: str
    fmt: str | None
    policy: str = "lru"
    capacity: int = 0
    params: tuple[tuple[str, Any], ...] = ()
    backend: str | None = None
    compressor: str = "lz4"
    pool_bytes: int = 0
    disk_bytes: int = 0
    layer_options: tuple[tuple[str, Any], ...] = ()
    demotion_policy: str = "lru"
    shrink_interval_s: float = 0.1
    compact_interval_s: float = 0.0
    corpus: str | None = None  # path; None = synthetic
    corpus_pages: int = 4096
    seed: int = 0
    window: int = 0
    costs: tuple[tuple[str, Any], ...] = ()
    capacities: tuple[int, ...] = field(default=())  # for "mattson"
    label: str = ""  # the policy with its parameters, e.g. "s3fifo small_ratio=0.25"
    backend_options: tuple[tuple[str, Any], ...] = ()
    allow_overflow: bool = False
    trace_pages: int = 0  # distinct pages (for overflow messages)
    trace_data: bytes | None = None  # the trace itself, shipped to remote workers
    refbit: bool = False  # a recorded trace's referenced-bit samples count as accesses


def open_corpus(path: str | None, npages: int, seed: int) -> Any:
    """The corpus of a run: the file at ``path``, or the synthetic mix."""
    from swapd.corpus import Corpus

    return Corpus.open(path) if path else Corpus.synthetic(npages, seed)


# this process's synthetic corpus and parsed trace, kept for its next job (module docstring)
_corpus_cache: dict[tuple[int, int], Any] = {}
_trace_cache: dict[tuple[Any, ...], list[Request]] = {}


def _job_corpus(job: Job) -> tuple[Any, bool]:
    """The corpus of ``job`` and whether the caller must close it.  A synthetic corpus is
    built once per process (it is immutable and holds no resource); a file is opened per
    job (a memory map: O(1))."""
    if job.corpus:
        return open_corpus(job.corpus, job.corpus_pages, job.seed), True
    key = (job.corpus_pages, job.seed)
    corpus = _corpus_cache.get(key)
    if corpus is None:
        _corpus_cache.clear()
        corpus = _corpus_cache[key] = open_corpus(None, job.corpus_pages, job.seed)
    return corpus, False


def _job_requests(job: Job, *, events: bool = False) -> list[Request]:
    """The requests of ``job``'s trace, parsed once per process while the file's size and
    modification time stay the same."""
    st = os.stat(job.trace)
    key = (os.path.abspath(job.trace), job.fmt, events, job.refbit, st.st_size,
           st.st_mtime_ns)
    reqs = _trace_cache.get(key)
    if reqs is None:
        _trace_cache.clear()  # one trace at a time: a list of requests is not small
        reqs = list(read_trace(job.trace, job.fmt, events=events,
                               refbit=job.refbit and not events))
        _trace_cache[key] = reqs
    return reqs


def run_job(job: Job) -> dict[str, Any]:
    """Run one job and return its result as a dict (executed in a worker process)."""
    if job.trace_data is not None:  # shipped: write it where this worker can read it
        import tempfile

        suffix = Path(job.trace).name
        with tempfile.TemporaryDirectory(prefix="swapd-job-") as d:
            local = Path(d) / suffix
            local.write_bytes(job.trace_data)
            import dataclasses

            r = run_job(dataclasses.replace(job, trace=str(local), trace_data=None))
            r["trace"] = job.trace
            return r
    r = _run_job(job)
    r["label"] = job.label or job.policy
    if job.kind in ("full", "replay"):
        r["pool_bytes"] = job.pool_bytes
        r["disk_bytes"] = job.disk_bytes
        r["compressor"] = job.compressor
    return r


def _run_job(job: Job) -> dict[str, Any]:
    if job.kind == "mattson":
        from swapd.sim.mattson import stack_distances

        sd = stack_distances(list(read_pages(job.trace, job.fmt)))
        return {"mode": "mattson", "policy": "lru", "backend": None,
                "curve": [{"capacity": c, "accesses": sd.accesses, "misses": m,
                           "miss_ratio": m / sd.accesses if sd.accesses else 0.0}
                          for c, m in sd.curve(job.capacities)],
                "distinct": sd.distinct, "accesses": sd.accesses}
    if job.kind == "policy-only":
        from swapd.sim.policy_only import run_policy_only

        r = run_policy_only(read_pages(job.trace, job.fmt, refbit=job.refbit), job.policy,
                            job.capacity, dict(job.params), window=job.window)
        d = r.to_dict()
        d["backend"] = None
        return d
    if job.kind in ("full", "replay"):
        from swapd.sim.full import FullConfig, run_full, run_replay

        if job.backend is None:
            raise ConfigError("a full-mode job needs a backend")
        cfg = FullConfig(policy=job.policy, capacity=max(1, job.capacity), params=job.params,
                         backend=job.backend, compressor=job.compressor,
                         pool_bytes=job.pool_bytes, disk_bytes=job.disk_bytes,
                         layer_options=job.layer_options, seed=job.seed, window=job.window,
                         demotion_policy=job.demotion_policy,
                         shrink_interval_s=job.shrink_interval_s,
                         compact_interval_s=job.compact_interval_s,
                         allow_overflow=job.allow_overflow,
                         backend_options=job.backend_options, trace_pages=job.trace_pages)
        costs = CostTable.from_dict(dict(job.costs)) if job.costs else DEFAULT_COSTS
        corpus, owned = _job_corpus(job)
        try:
            if job.kind == "replay":
                res = run_replay(_job_requests(job, events=True), cfg, corpus, costs)
            else:
                res = run_full(_job_requests(job), cfg, corpus, costs)
        finally:
            close = getattr(corpus, "close", None)
            if owned and close is not None:
                close()
        d = res.to_dict()
        d["policy"] = "recorded" if job.kind == "replay" else job.policy
        d["capacity"] = job.capacity
        d["backend"] = job.backend
        return d
    raise ConfigError(f"unknown job kind {job.kind!r}")


def auto_capacities(trace: str, fmt: str | None, points: int) -> list[int]:
    """``points`` capacities log-spaced from 1% to 100% of the trace's distinct pages."""
    distinct = len(set(read_pages(trace, fmt)))
    if distinct == 0:
        raise ConfigError(f"{trace}: the trace has no requests")
    return capacities_for(distinct, points)


def capacities_for(distinct: int, points: int) -> list[int]:
    """``points`` capacities log-spaced from 1% to 100% of ``distinct`` pages."""
    if points <= 0:
        raise ConfigError(f"--points must be positive, got {points}")
    if points == 1:
        return [max(1, distinct // 2)]
    lo = max(1.0, distinct / 100)
    caps = {max(1, round(lo * (distinct / lo) ** (i / (points - 1)))) for i in range(points)}
    return sorted(caps)


PolicySpec = str | tuple[str, tuple[tuple[str, Any], ...]]


def policy_label(name: str, params: Sequence[tuple[str, Any]]) -> str:
    """``name`` followed by its parameters, e.g. ``s3fifo small_ratio=0.25``."""
    return " ".join([name, *(f"{k}={v}" for k, v in params)])


def make_jobs(trace: str, fmt: str | None, policies: Sequence[PolicySpec],
              capacities: Sequence[int], backends: Sequence[str] = (), *,
              mattson: bool = True, window: int = 0, pool_bytes: Sequence[int] | int = (),
              disk_bytes: Sequence[int] | int = (), compressors: Sequence[str] = (),
              replay: bool = False, **full: Any) -> list[Job]:
    """The jobs of a sweep.  ``policies``: names, or (name, params) pairs.  Full mode
    (``backends`` given) runs every (policy, capacity, backend, pool, disk, compressor);
    an empty ``pool_bytes`` means half the capacity's bytes.  ``full`` holds the other
    full-mode fields of :class:`Job`."""
    if not policies:
        raise ConfigError("a sweep needs at least one policy")
    if not replay and (not capacities or min(capacities) <= 0):
        raise ConfigError("a sweep needs positive capacities")
    pools = [pool_bytes] if isinstance(pool_bytes, int) else list(pool_bytes)
    disks = [disk_bytes] if isinstance(disk_bytes, int) else list(disk_bytes)
    if not disks:
        disks = [full.pop("disk_bytes_default", 0)]
    full.pop("disk_bytes_default", None)
    comps = list(compressors) or [full.pop("compressor", "lz4")]
    full.pop("compressor", None)
    jobs: list[Job] = []
    if replay:  # a recorded trace: the daemon's own decisions, one run per tier setting
        for b in backends:
            for pb in pools or [8 << 20]:
                for db in disks:
                    for c in comps:
                        jobs.append(Job("replay", trace, fmt, "lru", 0, backend=b,
                                        label="recorded", pool_bytes=pb, disk_bytes=db,
                                        compressor=c, **full))
        return jobs
    if mattson:
        jobs.append(Job("mattson", trace, fmt, capacities=tuple(sorted(capacities))))
    for spec in policies:
        name, params = (spec, ()) if isinstance(spec, str) else spec
        label = policy_label(name, params)
        for cap in sorted(capacities):
            if not backends:
                jobs.append(Job("policy-only", trace, fmt, name, cap, params=params,
                                window=window, label=label,
                                refbit=bool(full.get("refbit", False))))
                continue
            for b in backends:
                for pb in pools or [max(4096, cap * 4096 // 2)]:
                    for db in disks:
                        for c in comps:
                            jobs.append(Job("full", trace, fmt, name, cap, params=params,
                                            backend=b, window=window, label=label,
                                            pool_bytes=pb, disk_bytes=db, compressor=c,
                                            **full))
    return jobs


_CSV_FIELDS = ("mode", "policy", "label", "backend", "compressor", "capacity", "pool_bytes",
               "disk_bytes", "accesses", "hits", "misses",
               "miss_ratio", "first_touch", "refaults", "refaults_same_filled",
               "refaults_compressed", "refaults_disk", "evictions", "store_rejects",
               "writebacks", "lru_inversions", "compression_ratio", "pool_density",
               "stored_pages", "pool_total_size", "pool_bytes_per_page", "overflow_pages",
               "modelled_time_s", "modelled_us_per_access")


def _csv_rows(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for r in results:
        if r["mode"] == "mattson":
            for pt in r["curve"]:
                rows.append({"mode": "mattson", "policy": "lru", "label": "lru (Mattson)",
                             "capacity": pt["capacity"],
                             "accesses": pt["accesses"], "misses": pt["misses"],
                             "hits": pt["accesses"] - pt["misses"],
                             "miss_ratio": pt["miss_ratio"]})
            continue
        row = {k: r.get(k) for k in _CSV_FIELDS if not isinstance(r.get(k), dict | list)}
        if r["mode"] in ("full", "replay"):
            bt = r.get("refaults_by_tier", {})
            row["refaults_same_filled"] = bt.get("same_filled", 0)
            row["refaults_compressed"] = bt.get("compressed", 0)
            row["refaults_disk"] = bt.get("disk", 0)
            row["store_rejects"] = sum(r.get("store_rejects", {}).values())
            lay = r.get("layer", {})
            row["stored_pages"] = lay.get("stored_pages")
            row["pool_total_size"] = lay.get("pool_total_size")
        rows.append(row)
    return rows


def _order(r: dict[str, Any]) -> tuple[int, str, str, int, int, int, str]:
    return (0 if r["mode"] == "mattson" else 1, r.get("backend") or "",
            r.get("label") or r.get("policy") or "", int(r.get("capacity") or 0),
            int(r.get("pool_bytes") or 0), int(r.get("disk_bytes") or 0),
            r.get("compressor") or "")


@dataclass(frozen=True)
class SweepOutput:
    """Where a sweep wrote its results, and the results."""

    results: tuple[dict[str, Any], ...]
    csv: Path
    json: Path
    figures: tuple[Path, ...]


def run_sweep(jobs: Sequence[Job], outdir: str | os.PathLike[str], *, workers: int | None = None,
              progress: bool = True, plots: bool = True,
              meta: dict[str, Any] | None = None,
              on_result: Callable[[dict[str, Any]], None] | None = None,
              scheduler: str | None = None) -> SweepOutput:
    """Run ``jobs`` and write CSV, JSON and figures to ``outdir``.

    Locally on ``workers`` processes (default: the machine's cores), or, with
    ``scheduler`` (``tcp://HOST:PORT``), on that Dask distributed cluster.
    """
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    nworkers = max(1, min(workers or os.cpu_count() or 1, len(jobs)))
    results: list[dict[str, Any]] = []
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    with Progress("[progress.description]{task.description}", BarColumn(),
                  MofNCompleteColumn(), TimeElapsedColumn(), disable=not progress) as bar:
        task = bar.add_task("sweep" if scheduler is None else f"sweep on {scheduler}",
                            total=len(jobs))

        def done(r: dict[str, Any]) -> None:
            results.append(r)
            if on_result:
                on_result(r)
            bar.advance(task)

        if scheduler is not None:
            _run_distributed(jobs, scheduler, done)
        elif nworkers == 1:
            for j in jobs:
                done(run_job(j))
        else:
            # spawn, not fork: the progress bar's refresh thread is running in this process
            ctx = multiprocessing.get_context("spawn")
            with cf.ProcessPoolExecutor(max_workers=nworkers, mp_context=ctx) as ex:
                # longest first: full-mode jobs at large capacities take longest
                order = sorted(range(len(jobs)), key=lambda i: -_weight(jobs[i]))
                futs = [ex.submit(run_job, jobs[i]) for i in order]
                for fut in cf.as_completed(futs):
                    done(fut.result())
    return write_outputs(results, out, jobs=len(jobs), meta=meta, plots=plots)


def _weight(job: Job) -> float:
    """A guess of a job's run time, to start the long ones first (the last job to finish
    sets the sweep's end).  A full-mode run's time goes with its faults, which fall as the
    capacity grows: the smallest capacities first."""
    if job.kind in ("full", "replay"):
        return 10.0 + 1.0 / max(1, job.capacity)
    if job.kind == "mattson":
        return 5.0
    return 1.0


def _run_distributed(jobs: Sequence[Job], address: str,
                     done: Callable[[dict[str, Any]], None]) -> None:
    """Send ``jobs`` to the Dask scheduler at ``address``; call ``done`` per result."""
    import importlib

    try:
        dist: Any = importlib.import_module("distributed")
    except ImportError as exc:
        raise ConfigError("--scheduler needs the distributed extra: "
                          "pip install 'swapd[distributed]'") from exc
    try:
        client = dist.Client(address, timeout=10, set_as_default=False)
    except OSError as exc:
        raise ConfigError(f"cannot reach the Dask scheduler at {address}: {exc}") from exc
    try:
        with client.as_current():
            futs = client.map(run_job, list(jobs), pure=False)
            for fut in dist.as_completed(futs):
                done(fut.result())
    finally:
        client.close()


def write_outputs(results: list[dict[str, Any]], out: Path, *, jobs: int,
                  meta: dict[str, Any] | None = None, plots: bool = True) -> SweepOutput:
    """Sort ``results`` and write ``sweep.csv``, ``sweep.json`` and the figures into ``out``."""
    results.sort(key=_order)
    csv_path = out / "sweep.csv"
    with open(csv_path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(_CSV_FIELDS), extrasaction="ignore")
        w.writeheader()
        for row in _csv_rows(results):
            w.writerow({k: ("" if v is None else v) for k, v in row.items()})
    summary = summarize(results, (meta or {}).get("within_percent", 5.0))
    json_path = out / "sweep.json"
    with open(json_path, "w", encoding="utf-8") as f:
        json.dump({"meta": meta or {}, "jobs": jobs, "summary": summary, "results": results},
                  f, indent=1, default=_json_default)
        f.write("\n")
    figs: tuple[Path, ...] = ()
    if plots:
        from swapd.sim.plots import write_figures

        figs = tuple(write_figures(results, out, meta or {}))
    return SweepOutput(tuple(results), csv_path, json_path, figs)


def summarize(results: Sequence[dict[str, Any]], within_percent: float = 5.0) -> dict[str, Any]:
    """The answer of a sweep.

    ``best_policy``: per capacity, the policy label with the lowest miss ratio (full mode:
    per backend too, and the lowest modelled time per access).  ``smallest_pool``: per
    (capacity, policy, backend, disk, compressor), the smallest pool whose modelled time
    per access is within ``within_percent`` % of the best over the pool sizes (with the
    resident set held at its capacity the pool does not change the miss ratio, only where
    the misses are served from, so time is the measure).  ``overflow``: runs that had pages
    no tier could hold.
    """
    runs = [r for r in results if r.get("mode") in ("policy-only", "full", "replay")]
    best: list[dict[str, Any]] = []
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for r in runs:
        groups.setdefault((r["capacity"], r.get("backend")), []).append(r)
    for (cap, backend), rs in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1] or "")):
        mr = min(rs, key=lambda r: (r["miss_ratio"], r.get("label") or r["policy"]))
        row: dict[str, Any] = {"capacity": cap, "backend": backend,
                               "best_miss_ratio_policy": mr.get("label") or mr["policy"],
                               "miss_ratio": mr["miss_ratio"]}
        if backend is not None:
            tm = min(rs, key=lambda r: (r["modelled_us_per_access"],
                                        r.get("label") or r["policy"]))
            row["best_time_policy"] = tm.get("label") or tm["policy"]
            row["modelled_us_per_access"] = tm["modelled_us_per_access"]
            row["pool_bytes"] = tm.get("pool_bytes")
        best.append(row)
    pools: list[dict[str, Any]] = []
    pgroups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for r in runs:
        if r.get("mode") in ("full", "replay"):
            key = (r["capacity"], r.get("label") or r["policy"], r.get("backend"),
                   r.get("disk_bytes"), r.get("compressor"))
            pgroups.setdefault(key, []).append(r)
    for key, rs in sorted(pgroups.items(),
                          key=lambda kv: (kv[0][0], *(str(x) for x in kv[0][1:]))):
        if len({r.get("pool_bytes") for r in rs}) < 2:
            continue
        t_best = min(r["modelled_us_per_access"] for r in rs)
        ok = [r for r in rs if r["modelled_us_per_access"] <= t_best * (1 + within_percent / 100)]
        small = min(ok, key=lambda r: r.get("pool_bytes") or 0)
        pools.append({"capacity": key[0], "policy": key[1], "backend": key[2],
                      "disk_bytes": key[3], "compressor": key[4],
                      "smallest_pool_bytes": small.get("pool_bytes"),
                      "modelled_us_per_access": small["modelled_us_per_access"],
                      "best_us_per_access": t_best, "within_percent": within_percent})
    overflow = [{"label": r.get("label") or r["policy"], "backend": r.get("backend"),
                 "capacity": r["capacity"], "pool_bytes": r.get("pool_bytes"),
                 "disk_bytes": r.get("disk_bytes"), "overflow_pages": r["overflow_pages"]}
                for r in runs if r.get("overflow_pages")]
    return {"best_policy": best, "smallest_pool": pools, "overflow": overflow,
            "within_percent": within_percent}


def _json_default(o: object) -> Any:
    if isinstance(o, float) and math.isnan(o):
        return None
    if isinstance(o, tuple | set):
        return list(o)
    return str(o)
