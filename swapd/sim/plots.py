"""PNG figures of a sweep (needs the ``plot`` extra: matplotlib).

Every title names the trace (its file name, requests and distinct pages) and the
run's parameters (backends, pool, disk, compressor), so a figure read on its own
says what it shows.

* ``mrc.png``: miss ratio against capacity, one line per (policy, backend) --
  never merged, even when two lines coincide (they then overlap, and the legend
  still lists both) -- with the exact LRU curve (Mattson) drawn last, dashed and
  black, so it stays visible on top of LRU's line.
* ``time.png`` (full mode): modelled time per access against capacity, one line
  per (policy, backend).
* ``density.png`` (full mode): at the middle capacity, bytes of pool memory per
  page held in the pool (lower is denser; pages in the pool only, so a backend
  that refuses incompressible pages is not flattered), and beside it the pages
  the pool did not take (sent to disk or rejected) per backend.
* ``occupancy.png`` (full mode, needs a time series: sweeps record 200 points per
  run unless ``--window 0``): one panel per backend (the first policy at the
  middle capacity): resident pages, compressed-tier pages, disk pages and
  cumulative writebacks over the trace.  Without a series it is not written and
  the reason is logged.
* ``pools.png`` (full mode, several pool sizes): modelled time per access
  against pool size at the middle capacity.

With several pool sizes, disk sizes or compressors, the per-capacity figures
use the largest pool, the largest disk and the first compressor (named in the
title); ``pools.png`` and the CSV have the rest.

Uses the non-interactive Agg backend; nothing is shown.  When matplotlib is not
installed :func:`write_figures` returns no figures and logs why.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)
MIB = 1 << 20


def _label(r: dict[str, Any]) -> str:
    lab = r.get("label") or r["policy"]
    return lab if r.get("backend") is None else f"{lab} / {r['backend']}"


def _mib(b: int) -> str:
    return f"{b / MIB:g} MiB"


def _trace_title(meta: dict[str, Any], results: list[dict[str, Any]]) -> str:
    name = meta.get("trace_name") or Path(str(meta.get("trace", "?"))).name
    req = meta.get("requests")
    dist = meta.get("distinct_pages")
    if req is None:
        acc = [r.get("accesses") for r in results if r.get("accesses")]
        req = acc[0] if acc else "?"
    return f"{name} ({req} requests" + (f", {dist} distinct pages)" if dist else ")")


def _select(full: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Per (capacity, policy, backend): the run with the largest disk, the first compressor
    and the largest pool; and a description of that choice."""
    disk = max(int(r.get("disk_bytes") or 0) for r in full)
    comp = sorted({r.get("compressor") or "" for r in full})[0]
    per: dict[tuple[int, str], dict[str, Any]] = {}
    for r in full:
        if int(r.get("disk_bytes") or 0) != disk or (r.get("compressor") or "") != comp:
            continue
        k = (int(r["capacity"]), _label(r))
        if k not in per or int(r.get("pool_bytes") or 0) > int(per[k].get("pool_bytes") or 0):
            per[k] = r
    pools = {int(r.get("pool_bytes") or 0) for r in full}
    costs = str(full[0].get("costs", {}).get("source", ""))
    short = "built-in" if costs.startswith("built-in") else Path(costs).name if costs else ""
    return list(per.values()), {"pool": max(pools), "disk": disk, "compressor": comp,
                                "costs": short, "pool_varies": len(pools) > 1}


def write_figures(results: list[dict[str, Any]], outdir: Path,
                  meta: dict[str, Any] | None = None) -> list[Path]:
    """Write the figures that ``results`` allow into ``outdir``; return their paths."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib is not installed (pip install 'swapd[plot]'): no figures")
        return []
    meta = meta or {}
    tt = _trace_title(meta, results)
    written: list[Path] = []
    full_all = [r for r in results if r.get("mode") == "full"]
    replays = [r for r in results if r.get("mode") == "replay"]
    if replays and not full_all:
        return _replay_figures(replays, outdir, tt, plt)
    full, sel = _select(full_all) if full_all else ([], {})
    if not sel:
        pool_note = ""
    elif sel["pool_varies"] and not meta.get("pool_bytes"):
        pool_note = "pool: half the capacity's bytes"
    elif sel["pool_varies"]:
        pool_note = f"largest pool ({_mib(sel['pool'])})"
    else:
        pool_note = f"pool {_mib(sel['pool'])}"

    def save(fig: Any, name: str) -> None:
        p = outdir / name
        fig.tight_layout()
        fig.savefig(p, dpi=110)
        plt.close(fig)
        written.append(p)

    # -- mrc.png -----------------------------------------------------------------------
    curves: dict[str, list[tuple[int, float]]] = defaultdict(list)
    mattson: list[tuple[int, float]] = []
    for r in results:
        if r.get("mode") == "mattson":
            mattson = [(p["capacity"], p["miss_ratio"]) for p in r["curve"]]
        elif r.get("mode") == "policy-only":
            curves[_label(r)].append((int(r["capacity"]), float(r["miss_ratio"])))
    for r in full:
        curves[_label(r)].append((int(r["capacity"]), float(r["miss_ratio"])))
    if curves or mattson:
        fig, ax = plt.subplots(figsize=(8, 5))
        markers = "os^vD<>phx*"
        for i, (label, pts) in enumerate(sorted(curves.items())):
            pts.sort()
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=markers[i % len(markers)],
                    markersize=4, linewidth=1.2, alpha=0.85, label=label)
        if mattson:
            mattson.sort()
            ax.plot([p[0] for p in mattson], [p[1] for p in mattson], linestyle="--",
                    color="black", linewidth=1.6, zorder=10, label="LRU exact (Mattson)")
        ax.set_xscale("log")
        ax.set_xlabel("resident capacity (pages, log scale)")
        ax.set_ylabel("miss ratio (faults / accesses)")
        sub = (f"full mode, {pool_note}, disk {_mib(sel['disk'])}, {sel['compressor']}"
               if full else "policy-only")
        ax.set_title(f"Miss ratio: {tt}\n{sub}", fontsize=9)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7, ncol=2 if len(curves) > 8 else 1)
        save(fig, "mrc.png")
    if not full:
        return written
    sub = f"{pool_note}, disk {_mib(sel['disk'])}, {sel['compressor']}, costs: {sel['costs']}"

    # -- time.png ------------------------------------------------------------------------
    tcurves: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for r in full:
        tcurves[_label(r)].append((int(r["capacity"]), float(r["modelled_us_per_access"])))
    fig, ax = plt.subplots(figsize=(8, 5))
    for i, (label, pts) in enumerate(sorted(tcurves.items())):
        pts.sort()
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="os^vD<>phx*"[i % 11],
                markersize=4, label=label)
    ax.set_xscale("log")
    ax.set_ylim(bottom=0)
    ax.set_xlabel("resident capacity (pages, log scale)")
    ax.set_ylabel("modelled time per access (us)")
    ax.set_title(f"Modelled time per access: {tt}\n{sub}", fontsize=9)
    ax.grid(True, alpha=0.3, which="both")
    ax.legend(fontsize=7)
    save(fig, "time.png")

    # -- density.png ----------------------------------------------------------------------
    mid = _middle_capacity(full)
    first = sorted({r.get("label") or r["policy"] for r in full})[0]
    at_mid = sorted((r for r in full if r["capacity"] == mid
                     and (r.get("label") or r["policy"]) == first),
                    key=lambda r: r["backend"])
    if at_mid:
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 4))
        names = [r["backend"] for r in at_mid]
        vals = [r.get("pool_bytes_per_page") or 0.0 for r in at_mid]
        bars = a1.bar(range(len(vals)), vals, color="tab:blue")
        a1.bar_label(bars, fmt="%.0f", fontsize=8)
        a1.axhline(4096, color="gray", linestyle=":", linewidth=1)
        a1.text(len(vals) - 0.5, 4096, "one page", fontsize=7, va="bottom", ha="right")
        a1.set_xticks(range(len(vals)), names)
        a1.set_ylabel("bytes of pool memory per page in the pool")
        a1.set_title("density (lower is denser)", fontsize=9)
        lay = [r.get("layer", {}) for r in at_mid]
        raw = [int(la.get("stored_incompressible_pages", 0)) for la in lay]
        stored = [(r.get("pool_pages_stored") or 0) - n for r, n in zip(at_mid, raw)]
        refused = [int(la.get("reject_compress_poor", 0))
                   + sum(r.get("store_rejects", {}).values()) for r, la in zip(at_mid, lay)]
        x = list(range(len(at_mid)))
        for off, vals2, color, lab in (
                (-0.27, stored, "tab:blue", "in the pool, compressed"),
                (0.0, raw, "tab:orange", "in the pool raw (did not compress)"),
                (0.27, refused, "tab:red", "refused by the pool (sent to disk)")):
            b = a2.bar([i + off for i in x], vals2, width=0.27, color=color, label=lab)
            a2.bar_label(b, fontsize=7)
        a2.set_xticks(x, names)
        a2.set_ylabel("pages")
        a2.set_title("pages held (at the end) and refused (during the run)", fontsize=9)
        a2.legend(fontsize=7)
        fig.suptitle(f"Pool density: {tt}\n{first}, capacity {mid}, {sub}", fontsize=9)
        save(fig, "density.png")

    # -- occupancy.png -------------------------------------------------------------------
    reps = _representatives(full, first, mid)
    if not any(r.get("series") for r in reps):
        log.warning("occupancy.png not written: the runs recorded no time series "
                    "(--window 0); give --window N to draw it")
    else:
        fig, axes = plt.subplots(len(reps), 1, figsize=(8, 2.8 * len(reps)), squeeze=False)
        for ax, r in zip(axes[:, 0], reps):
            s = r.get("series") or []
            x = [pt["accesses"] for pt in s]
            for key, label in (("resident", "resident"), ("stored_pages", "compressed tier"),
                               ("disk_pages", "disk tier"),
                               ("written_back_pages", "written back (cumulative)")):
                ax.plot(x, [pt[key] for pt in s], label=label)
            ax.set_title(f"{r['backend']}: {r.get('label') or r['policy']}, capacity "
                         f"{r['capacity']}, pool {_mib(int(r.get('pool_bytes') or 0))}",
                         fontsize=8)
            ax.set_ylabel("pages")
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=7)
        axes[-1, 0].set_xlabel("requests")
        fig.suptitle(f"Occupancy: {tt}", fontsize=9)
        save(fig, "occupancy.png")

    # -- pools.png -------------------------------------------------------------------------
    if sel.get("pool_varies") and meta.get("pool_bytes"):
        pc: dict[str, list[tuple[float, float]]] = defaultdict(list)  # (MiB, us)
        for r in full_all:
            if r["capacity"] == mid and int(r.get("disk_bytes") or 0) == sel["disk"] \
                    and (r.get("compressor") or "") == sel["compressor"]:
                pc[_label(r)].append((int(r["pool_bytes"]) / MIB,
                                      float(r["modelled_us_per_access"])))
        fig, ax = plt.subplots(figsize=(8, 5))
        for label, ppts in sorted(pc.items()):
            ppts.sort()
            ax.plot([p[0] for p in ppts], [p[1] for p in ppts], marker="o", markersize=4,
                    label=label)
        ax.set_xlabel("pool limit (MiB)")
        ax.set_ylabel("modelled time per access (us)")
        ax.set_title(f"Pool size: {tt}\ncapacity {mid}, disk {_mib(sel['disk'])}, "
                     f"{sel['compressor']}", fontsize=9)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
        save(fig, "pools.png")
    return written


def _middle_capacity(full: list[dict[str, Any]]) -> int:
    caps = sorted({int(r["capacity"]) for r in full})
    return caps[len(caps) // 2]


def _representatives(full: list[dict[str, Any]], label: str, cap: int) -> list[dict[str, Any]]:
    """One run per backend: policy ``label`` at capacity ``cap``."""
    out: dict[str, dict[str, Any]] = {}
    for r in full:
        if r["capacity"] == cap and (r.get("label") or r["policy"]) == label:
            out.setdefault(r["backend"], r)
    return [out[b] for b in sorted(out)]


def _replay_figures(runs: list[dict[str, Any]], outdir: Path, tt: str, plt: Any) -> list[Path]:
    """A replayed recorded trace has no capacity axis: time, disk refaults and writebacks
    against pool size, one line per (backend, compressor, disk)."""
    lines: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in runs:
        key = (f"{r['backend']} / {r.get('compressor')}, disk "
               f"{_mib(int(r.get('disk_bytes') or 0))}")
        lines[key].append(r)
    fig, axes = plt.subplots(1, 3, figsize=(13, 4.2))
    for label, rs in sorted(lines.items()):
        rs.sort(key=lambda r: int(r.get("pool_bytes") or 0))
        x = [int(r.get("pool_bytes") or 0) / MIB for r in rs]
        axes[0].plot(x, [r["modelled_us_per_access"] for r in rs], marker="o", label=label)
        axes[1].plot(x, [r.get("refaults_by_tier", {}).get("disk", 0) for r in rs],
                     marker="o", label=label)
        axes[2].plot(x, [r.get("writebacks", 0) for r in rs], marker="o", label=label)
    for ax, ylab in zip(axes, ("modelled time per access (us)", "faults served from disk",
                               "writebacks (pages)")):
        ax.set_xlabel("pool limit (MiB)")
        ax.set_ylabel(ylab)
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"Replay of a recorded trace: {tt}\nthe daemon's own stores and loads, "
                 f"per backend and pool size", fontsize=9)
    p = outdir / "pools.png"
    fig.tight_layout()
    fig.savefig(p, dpi=110)
    plt.close(fig)
    return [p]

