"""Sweeps: one trace over capacities x policies x backends, on every core.

Design.  A sweep is a list of independent :class:`Job` s (plain, picklable
values: each worker opens the trace and builds its own policy, layer and
corpus, so nothing is shared between processes).  Jobs run in a
``concurrent.futures.ProcessPoolExecutor`` of ``workers`` processes (default:
the machine's cores); a rich progress bar counts finished jobs.  Without
backends the jobs are policy-only; with backends every (policy, capacity,
backend) is a full-mode run.  An LRU stack-distance pass (Mattson) runs as one
more job and gives the exact LRU curve at every capacity for comparison.

Results are written to ``OUT/sweep.csv`` (one row per job, flat columns) and
``OUT/sweep.json`` (parameters plus every result with its time series), and,
when matplotlib is installed, to PNG figures (:mod:`swapd.sim.plots`).

Results are ordered by (backend, policy, capacity) whatever order the workers
finish in, so the output files of a sweep are deterministic.
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
from swapd.sim.trace import read_pages, read_trace


@dataclass(frozen=True)
class Job:
    """One simulation of a sweep (picklable)."""

    kind: str  # "policy-only", "full" or "mattson"
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


def open_corpus(path: str | None, npages: int, seed: int) -> Any:
    """The corpus of a run: the file at ``path``, or the synthetic mix."""
    from swapd.corpus import Corpus

    return Corpus.open(path) if path else Corpus.synthetic(npages, seed)


def run_job(job: Job) -> dict[str, Any]:
    """Run one job and return its result as a dict (executed in a worker process)."""
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

        r = run_policy_only(read_pages(job.trace, job.fmt), job.policy, job.capacity,
                            dict(job.params), window=job.window)
        d = r.to_dict()
        d["backend"] = None
        return d
    if job.kind == "full":
        from swapd.sim.full import FullConfig, run_full

        if job.backend is None:
            raise ConfigError("a full-mode job needs a backend")
        cfg = FullConfig(policy=job.policy, capacity=job.capacity, params=job.params,
                         backend=job.backend, compressor=job.compressor,
                         pool_bytes=job.pool_bytes, disk_bytes=job.disk_bytes,
                         layer_options=job.layer_options, seed=job.seed, window=job.window,
                         demotion_policy=job.demotion_policy,
                         shrink_interval_s=job.shrink_interval_s,
                         compact_interval_s=job.compact_interval_s)
        costs = CostTable.from_dict(dict(job.costs)) if job.costs else DEFAULT_COSTS
        corpus = open_corpus(job.corpus, job.corpus_pages, job.seed)
        try:
            res = run_full(read_trace(job.trace, job.fmt), cfg, corpus, costs)
        finally:
            close = getattr(corpus, "close", None)
            if close is not None:
                close()
        d = res.to_dict()
        d["policy"] = job.policy
        d["capacity"] = job.capacity
        d["backend"] = job.backend
        return d
    raise ConfigError(f"unknown job kind {job.kind!r}")


def auto_capacities(trace: str, fmt: str | None, points: int) -> list[int]:
    """``points`` capacities log-spaced from 1% to 100% of the trace's distinct pages."""
    distinct = len(set(read_pages(trace, fmt)))
    if distinct == 0:
        raise ConfigError(f"{trace}: the trace is empty")
    if points <= 1:
        return [max(1, distinct // 2)]
    lo = max(1.0, distinct / 100)
    caps = {max(1, round(lo * (distinct / lo) ** (i / (points - 1)))) for i in range(points)}
    return sorted(caps)


def make_jobs(trace: str, fmt: str | None, policies: Sequence[str], capacities: Sequence[int],
              backends: Sequence[str] = (), *, mattson: bool = True, window: int = 0,
              **full: Any) -> list[Job]:
    """The jobs of a sweep.  ``full`` holds the full-mode fields of :class:`Job`."""
    if not policies:
        raise ConfigError("a sweep needs at least one policy")
    if not capacities or min(capacities) <= 0:
        raise ConfigError("a sweep needs positive capacities")
    jobs: list[Job] = []
    if mattson:
        jobs.append(Job("mattson", trace, fmt, capacities=tuple(sorted(capacities))))
    for pol in policies:
        for cap in sorted(capacities):
            if backends:
                for b in backends:
                    jobs.append(Job("full", trace, fmt, pol, cap, backend=b, window=window,
                                    **full))
            else:
                jobs.append(Job("policy-only", trace, fmt, pol, cap, window=window))
    return jobs


_CSV_FIELDS = ("mode", "policy", "backend", "capacity", "accesses", "hits", "misses",
               "miss_ratio", "first_touch", "refaults", "refaults_same_filled",
               "refaults_compressed", "refaults_disk", "evictions", "store_rejects",
               "writebacks", "lru_inversions", "compression_ratio", "pool_density",
               "stored_pages", "pool_total_size", "modelled_time_s", "modelled_us_per_access")


def _csv_rows(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for r in results:
        if r["mode"] == "mattson":
            for pt in r["curve"]:
                rows.append({"mode": "mattson", "policy": "lru", "capacity": pt["capacity"],
                             "accesses": pt["accesses"], "misses": pt["misses"],
                             "hits": pt["accesses"] - pt["misses"],
                             "miss_ratio": pt["miss_ratio"]})
            continue
        row = {k: r.get(k) for k in _CSV_FIELDS if not isinstance(r.get(k), dict | list)}
        if r["mode"] == "full":
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


def _order(r: dict[str, Any]) -> tuple[int, str, str, int]:
    return (0 if r["mode"] == "mattson" else 1, r.get("backend") or "", r.get("policy") or "",
            int(r.get("capacity") or 0))


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
              on_result: Callable[[dict[str, Any]], None] | None = None) -> SweepOutput:
    """Run ``jobs`` on ``workers`` processes and write CSV, JSON and figures to ``outdir``."""
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    nworkers = max(1, min(workers or os.cpu_count() or 1, len(jobs)))
    results: list[dict[str, Any]] = []
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    with Progress("[progress.description]{task.description}", BarColumn(),
                  MofNCompleteColumn(), TimeElapsedColumn(), disable=not progress) as bar:
        task = bar.add_task("sweep", total=len(jobs))
        if nworkers == 1:
            for j in jobs:
                r = run_job(j)
                results.append(r)
                if on_result:
                    on_result(r)
                bar.advance(task)
        else:
            # spawn, not fork: the progress bar's refresh thread is running in this process
            ctx = multiprocessing.get_context("spawn")
            with cf.ProcessPoolExecutor(max_workers=nworkers, mp_context=ctx) as ex:
                futs = [ex.submit(run_job, j) for j in jobs]
                for fut in cf.as_completed(futs):
                    r = fut.result()
                    results.append(r)
                    if on_result:
                        on_result(r)
                    bar.advance(task)
    results.sort(key=_order)
    csv_path = out / "sweep.csv"
    with open(csv_path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(_CSV_FIELDS), extrasaction="ignore")
        w.writeheader()
        for row in _csv_rows(results):
            w.writerow({k: ("" if v is None else v) for k, v in row.items()})
    json_path = out / "sweep.json"
    with open(json_path, "w", encoding="utf-8") as f:
        json.dump({"meta": meta or {}, "jobs": len(jobs), "results": results}, f, indent=1,
                  default=_json_default)
        f.write("\n")
    figs: tuple[Path, ...] = ()
    if plots:
        from swapd.sim.plots import write_figures

        figs = tuple(write_figures(results, out))
    return SweepOutput(tuple(results), csv_path, json_path, figs)


def _json_default(o: object) -> Any:
    if isinstance(o, float) and math.isnan(o):
        return None
    if isinstance(o, tuple | set):
        return list(o)
    return str(o)
