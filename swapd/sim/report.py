"""The answer of a sweep: a summary on the terminal, and one self-contained HTML page.

Design.  Both read the results a sweep wrote (``sweep.json``: its ``meta``, its
``summary`` from :func:`swapd.sim.sweep.summarize` and every result) and never
rerun anything.  The HTML page embeds the PNG figures as ``data:`` URIs and
carries its own style, so it can be mailed or attached as one file; all text is
escaped.  No state, no locks.
"""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from swapd.errors import ConfigError

MIB = 1 << 20

FIGURE_NOTES = {
    "mrc.png": "Miss ratio against resident capacity; one line per (policy, backend); "
               "the exact LRU curve (Mattson stack distances) drawn dashed on top.",
    "time.png": "Modelled time per access against capacity (full mode): faults, "
                "decompression, disk reads and writebacks, at the cost table's figures.",
    "density.png": "Bytes of pool memory per page held in the pool (lower is denser), "
                   "with the pages the pool did not take beside it.",
    "occupancy.png": "Where pages are over the run, for one run per backend.",
    "pools.png": "Modelled time per access against pool size.",
}


def _mib(b: Any) -> str:
    return "-" if b is None else f"{int(b) / MIB:g} MiB"


def summary_rows(summary: dict[str, Any]) -> tuple[list[list[str]], list[list[str]]]:
    """The summary as rows of text: (best policy per capacity, smallest pools)."""
    best = []
    for r in summary.get("best_policy", []):
        row = [str(r["capacity"]) if r["capacity"] else "(recorded)",
               r.get("backend") or "(policy-only)",
               r["best_miss_ratio_policy"], f"{r['miss_ratio']:.4f}"]
        if r.get("backend") is not None:
            row += [r["best_time_policy"], f"{r['modelled_us_per_access']:.2f}",
                    _mib(r.get("pool_bytes"))]
        else:
            row += ["-", "-", "-"]
        best.append(row)
    pools = [[str(r["capacity"]) if r["capacity"] else "(recorded)", r["policy"], r["backend"],
              r["compressor"],
              _mib(r["disk_bytes"]), _mib(r["smallest_pool_bytes"]),
              f"{r['modelled_us_per_access']:.2f}", f"{r['best_us_per_access']:.2f}"]
             for r in summary.get("smallest_pool", [])]
    return best, pools


BEST_HEAD = ["capacity", "backend", "lowest miss ratio", "miss ratio", "lowest time",
             "us/access", "its pool"]
POOL_HEAD = ["capacity", "policy", "backend", "compressor", "disk", "smallest pool",
             "us/access", "best us/access"]


def print_summary(results: Sequence[dict[str, Any]], meta: dict[str, Any]) -> None:
    """Print the sweep's answer as tables."""
    from rich.console import Console
    from rich.table import Table

    from swapd.sim.sweep import summarize

    within = float(meta.get("within_percent", 5.0))
    summary = summarize(list(results), within)
    best, pools = summary_rows(summary)
    import sys

    con = Console(width=None if sys.stdout.isatty() else 120)
    t = Table(title=f"best policy per capacity: {meta.get('trace_name', meta.get('trace'))}")
    ncol = len(BEST_HEAD) if any(r[1] != "(policy-only)" for r in best) else 4
    for h in BEST_HEAD[:ncol]:
        t.add_column(h)
    for row in best:
        t.add_row(*row[:ncol])
    con.print(t)
    if pools:
        # columns with one value for every row are said once, in the title
        keep = [i for i in range(len(POOL_HEAD))
                if i >= 5 or len({row[i] for row in pools}) > 1]
        same = ", ".join(f"{POOL_HEAD[i]} {pools[0][i]}" for i in range(5) if i not in keep)
        t = Table(title=f"smallest pool within {within:g}% of the best modelled time"
                        + (f" ({same})" if same else ""))
        for i in keep:
            t.add_column(POOL_HEAD[i])
        for row in pools:
            t.add_row(*(row[i] for i in keep))
        con.print(t)
    for o in summary["overflow"]:
        con.print(f"[bold red]overflow[/]: {o['label']} / {o['backend']} at capacity "
                  f"{o['capacity']}, pool {_mib(o['pool_bytes'])}, disk {_mib(o['disk_bytes'])}: "
                  f"{o['overflow_pages']} pages did not fit")


def _table(head: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    h = "".join(f"<th>{html.escape(str(c))}</th>" for c in head)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>"
                   for r in rows)
    return f"<table><thead><tr>{h}</tr></thead><tbody>{body}</tbody></table>"


_STYLE = """body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:13px}
td,th{border:1px solid #ccc;padding:3px 7px;text-align:right}
th{background:#f0f0f0}figure{margin:1.5em 0}img{max-width:100%}
.warn{color:#b00;font-weight:bold}code{background:#f4f4f4;padding:1px 3px}"""


def write_report(sweep_dir: str | Path, output: str | Path | None = None) -> Path:
    """Write one self-contained HTML page for the sweep in ``sweep_dir``; return its path.

    ConfigError when ``sweep_dir`` holds no ``sweep.json`` or it cannot be read.
    """
    d = Path(sweep_dir)
    src = d / "sweep.json"
    if not src.is_file():
        raise ConfigError(f"{d}: no sweep.json (run `swapd sim sweep -o {d}` first)")
    try:
        data = json.loads(src.read_text(encoding="utf-8"))
        meta = data.get("meta", {})
        results = data["results"]
    except (json.JSONDecodeError, KeyError, AttributeError) as exc:
        raise ConfigError(f"{src}: not a sweep result: {exc}") from exc
    out = Path(output) if output else d / "report.html"
    if out.is_dir():
        raise ConfigError(f"-o {out}: is a directory")
    from swapd.sim.sweep import summarize

    within = float(meta.get("within_percent", 5.0))
    summary = summarize(results, within)
    best, pools = summary_rows(summary)
    name = meta.get("trace_name") or meta.get("trace", "?")
    parts = [f"<!doctype html><html><head><meta charset='utf-8'>"
             f"<title>swapd sweep: {html.escape(str(name))}</title>"
             f"<style>{_STYLE}</style></head><body>",
             f"<h1>swapd sweep: {html.escape(str(name))}</h1>"]
    params = [(k, v) for k, v in meta.items() if k not in ("labels",) and v not in (None, [], {})]
    parts.append("<h2>Parameters</h2>" + _table(["parameter", "value"], [
        (k, ", ".join(map(str, v)) if isinstance(v, list) else v) for k, v in params]))
    parts.append("<h2>Answer</h2>")
    parts.append("<h3>Best policy per capacity</h3>" + _table(BEST_HEAD, best))
    if pools:
        parts.append(f"<h3>Smallest pool within {within:g}% of the best modelled time</h3>"
                     "<p>With the resident set held at its capacity, the pool size does not "
                     "change which accesses miss, only where the misses are served from; "
                     "modelled time is the measure.</p>" + _table(POOL_HEAD, pools))
    for o in summary["overflow"]:
        parts.append(f"<p class='warn'>overflow: {html.escape(str(o))}</p>")
    parts.append("<h2>Figures</h2>")
    for png in sorted(d.glob("*.png")):
        b64 = base64.b64encode(png.read_bytes()).decode("ascii")
        note = FIGURE_NOTES.get(png.name, "")
        parts.append(f"<figure><img alt='{html.escape(png.name)}' "
                     f"src='data:image/png;base64,{b64}'><figcaption>"
                     f"<code>{html.escape(png.name)}</code> {html.escape(note)}"
                     f"</figcaption></figure>")
    cols = ["label", "backend", "compressor", "capacity", "pool_bytes", "disk_bytes",
            "miss_ratio", "refaults", "writebacks", "lru_inversions", "pool_bytes_per_page",
            "overflow_pages", "modelled_us_per_access"]
    rows = []
    for r in results:
        if r.get("mode") == "mattson":
            continue
        rows.append([_fmt(r.get(c)) for c in cols])
    parts.append("<h2>Every run</h2>" + _table(cols, rows))
    parts.append(f"<p>Costs: {html.escape(str(meta.get('costs_source') or 'n/a'))}</p>")
    parts.append("</body></html>\n")
    out.write_text("".join(parts), encoding="utf-8")
    return out


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)
