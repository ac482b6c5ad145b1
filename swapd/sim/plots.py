"""PNG figures of a sweep (needs the ``plot`` extra: matplotlib).

* ``mrc.png``: miss ratio against capacity, one line per policy (and backend
  in full mode), with the Mattson LRU curve dashed.
* ``occupancy.png`` (full mode): for one run per backend (the first policy at
  the middle capacity), resident pages, compressed-tier pages, disk pages and
  cumulative writebacks over the trace.
* ``density.png`` (full mode): pool density (pages held in the pool per page of
  pool memory, same-filled entries left out) per backend and policy, at the
  middle capacity, at the end of the run.

Curves that are identical for several backends (faults do not depend on the
backend unless stores are rejected) are drawn once, labelled with every backend.

Uses the non-interactive Agg backend; nothing is shown.  When matplotlib is not
installed :func:`write_figures` returns no figures and logs why.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def write_figures(results: list[dict[str, Any]], outdir: Path) -> list[Path]:
    """Write the figures that ``results`` allow into ``outdir``; return their paths."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib is not installed (pip install 'swapd[plot]'): no figures")
        return []
    written: list[Path] = []
    curves: dict[str, list[tuple[int, float]]] = defaultdict(list)
    full = [r for r in results if r.get("mode") == "full"]
    for r in results:
        if r.get("mode") == "mattson":
            curves["lru (Mattson)"] = [(p["capacity"], p["miss_ratio"]) for p in r["curve"]]
        elif r.get("mode") in ("policy-only", "full"):
            label = r["policy"] if r.get("backend") is None else f"{r['policy']}/{r['backend']}"
            curves[label].append((int(r["capacity"]), float(r["miss_ratio"])))
    curves = _merge_identical(curves)
    if curves:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for label, pts in sorted(curves.items()):
            pts.sort()
            ax.plot([p[0] for p in pts], [p[1] for p in pts],
                    linestyle="--" if "Mattson" in label else "-",
                    marker=None if "Mattson" in label else "o", markersize=3, label=label)
        ax.set_xscale("log")
        ax.set_xlabel("resident capacity (pages)")
        ax.set_ylabel("miss ratio (faults / accesses)" if full else "miss ratio")
        ax.set_title("Miss-ratio curves")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
        p = outdir / "mrc.png"
        fig.tight_layout()
        fig.savefig(p, dpi=110)
        plt.close(fig)
        written.append(p)
    if full:
        reps = _representatives(full)
        fig, axes = plt.subplots(len(reps), 1, figsize=(7, 2.6 * len(reps)), squeeze=False)
        for ax, r in zip(axes[:, 0], reps):
            s = r.get("series") or []
            x = [pt["accesses"] for pt in s]
            for key, label in (("resident", "resident"), ("stored_pages", "compressed tier"),
                               ("disk_pages", "disk tier"),
                               ("written_back_pages", "written back (cumulative)")):
                ax.plot(x, [pt[key] for pt in s], label=label)
            ax.set_title(f"{r['backend']}: {r['policy']}, capacity {r['capacity']}",
                         fontsize=9)
            ax.set_ylabel("pages")
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=7)
        axes[-1, 0].set_xlabel("requests")
        p = outdir / "occupancy.png"
        fig.tight_layout()
        fig.savefig(p, dpi=110)
        plt.close(fig)
        written.append(p)
        fig, ax = plt.subplots(figsize=(7, 4))
        mid = _middle_capacity(full)
        at_mid = [r for r in full if r["capacity"] == mid]
        labels = [f"{r['backend']}\n{r['policy']}" for r in at_mid]
        vals = [r.get("pool_density") or 0.0 for r in at_mid]
        ax.bar(range(len(vals)), vals)
        ax.set_xticks(range(len(vals)), labels, fontsize=7)
        ax.set_ylabel("pages in pool / pages of pool memory")
        ax.set_title(f"Pool density per backend (capacity {mid})")
        ax.grid(True, axis="y", alpha=0.3)
        p = outdir / "density.png"
        fig.tight_layout()
        fig.savefig(p, dpi=110)
        plt.close(fig)
        written.append(p)
    return written


def _middle_capacity(full: list[dict[str, Any]]) -> int:
    caps = sorted({int(r["capacity"]) for r in full})
    return caps[len(caps) // 2]


def _representatives(full: list[dict[str, Any]]) -> list[dict[str, Any]]:
    mid = _middle_capacity(full)
    first_policy = sorted({r["policy"] for r in full})[0]
    reps: dict[str, dict[str, Any]] = {}
    for r in full:
        if r["capacity"] == mid and r["policy"] == first_policy:
            reps.setdefault(r["backend"], r)
    return [reps[b] for b in sorted(reps)]


def _merge_identical(curves: dict[str, list[tuple[int, float]]]
                     ) -> dict[str, list[tuple[int, float]]]:
    """Merge ``policy/backend`` curves with identical points into one labelled with all."""
    groups: dict[tuple[str, tuple[tuple[int, float], ...]], list[str]] = defaultdict(list)
    out: dict[str, list[tuple[int, float]]] = {}
    for label, pts in curves.items():
        if "/" not in label:
            out[label] = pts
            continue
        pol, backend = label.split("/", 1)
        groups[(pol, tuple(sorted(pts)))].append(backend)
    for (pol, shared), backends in groups.items():
        out[f"{pol}/{','.join(sorted(backends))}"] = list(shared)
    return out
