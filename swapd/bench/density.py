"""Pool memory of every backend for the pages of a corpus, side by side with the kernel's zram.

``swapd bench density --corpus FILE [--json] [--no-zram] [--backend NAME ...]``

Every page of the corpus is stored through every installed backend the way the
kernel stores a page:

* same-filled pages (every 64-bit word equal) are detected first and not stored;
  they are counted in ``same_filled_pages`` (zram's ``same_pages``);
* the rest are compressed with lz4 (``lz4.block``, no size prefix, acceleration 1
  -- the kernel's ``LZ4_compress_fast`` default, ``crypto/lz4.c``);
* a backend that takes whole pages (``max_size >= PAGE_SIZE``) gets the page raw,
  as a PAGE_SIZE "huge" object, when the compressed length is at least its
  ``huge_class_size`` (``getattr(backend, "huge_class_size", backend.max_size)``):
  this is zram's ``zram_write_page`` -> ``write_incompressible_page``;
* a backend whose ``max_size`` is below PAGE_SIZE (zbud: 3968 B) cannot hold a
  page that compresses worse than that: the page is rejected and counted in
  ``reject_compress_poor``, as zswap does on the allocator's -ENOSPC
  (``mm/zswap.c``).

``pool_bytes`` is ``total_pages() * 4096`` after all stores (no compaction, as zram
does not compact on its own).  As root on a kernel with zram, the same pages are
written to a fresh zram device set to lz4 (``swapd.kernel.zram``) and its
``mm_stat`` is reported next to the backends; the device is reset and removed
afterwards.  The compressed sizes Python's lz4 produces are checked against the
kernel's ``compr_data_size`` for the same pages (``lz4_check`` in the JSON).

JSON (``--json``): ``{"pages", "orig_bytes", "compressor": "lz4", "backends": {NAME:
{"pool_bytes", "compressed_bytes", "stored_pages", "same_filled_pages",
"reject_compress_poor", "huge_pages", "objects_per_pool_page", "ratio_to_zram",
"ratio_to_zsmalloc", ...}}, "zram": null | {"orig_data_size", "compr_data_size",
"mem_used_total", "same_pages", "huge_pages", ...}, "histogram": {...},
"lz4_check": ...}``.
"""

from __future__ import annotations

import argparse
from typing import Any

import lz4.block

from swapd.arena import PAGE_SIZE
from swapd.bench.common import (
    add_backend_arguments,
    add_corpus_arguments,
    backend_names,
    load_corpus,
    mib,
    print_json,
    print_table,
)
from swapd.compress import same_filled_value
from swapd.corpus import Corpus
from swapd.plugins import make_backend

BUCKET = 512  # histogram bucket width, bytes of compressed length


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``swapd bench density``."""
    add_corpus_arguments(p)
    add_backend_arguments(p)
    p.add_argument("--json", action="store_true", help="print the JSON object only")
    p.add_argument("--no-zram", action="store_true",
                   help="skip the kernel zram side even when it is available")


def compress_corpus(corpus: Corpus) -> tuple[int, list[tuple[int, bytes]]]:
    """Return (same-filled page count, [(page index, lz4 bytes)] of the others).  O(n)."""
    compress = lz4.block.compress
    same = 0
    out: list[tuple[int, bytes]] = []
    for i, pg in enumerate(corpus):
        if same_filled_value(pg) is not None:
            same += 1
        else:
            out.append((i, compress(pg, store_size=False)))
    return same, out


def store_through(name: str, corpus: Corpus, same: int,
                  comp: list[tuple[int, bytes]]) -> dict[str, Any]:
    """Store every non-same-filled page in a fresh ``name`` pool; return its figures."""
    pool = make_backend(name, max_pages=len(corpus) + 8192)
    try:
        max_size = pool.max_size
        whole_pages = max_size >= PAGE_SIZE
        huge = int(getattr(pool, "huge_class_size", max_size))
        malloc, write = pool.malloc, pool.write
        stored = rejected = huge_pages = 0
        for idx, data in comp:
            n = len(data)
            if whole_pages:
                if n >= huge:
                    data = corpus.page(idx)
                    n = PAGE_SIZE
                    huge_pages += 1
            elif n > max_size:
                rejected += 1
                continue
            write(malloc(n), data)
            stored += 1
        pool._check()
        st = pool.stats()
        pool_bytes = pool.total_pages() * PAGE_SIZE
        assert st.objects == stored
        return {
            "pool_bytes": pool_bytes,
            "compressed_bytes": st.object_bytes,
            "stored_pages": stored,
            "same_filled_pages": same,
            "reject_compress_poor": rejected,
            "huge_pages": huge_pages,
            "huge_threshold": huge if whole_pages else None,
            "total_pages": pool.total_pages(),
            "objects_per_pool_page": stored / pool.total_pages() if pool.total_pages() else 0.0,
            "pool_bytes_per_compressed_byte": (pool_bytes / st.object_bytes
                                               if st.object_bytes else 0.0),
        }
    finally:
        pool.close()


def measure_zram(corpus: Corpus) -> dict[str, Any] | None:
    """Write the corpus to a fresh lz4 zram device; its mm_stat, or None if unavailable."""
    from swapd.kernel.zram import ZramDevice, zram_unavailable_reason

    if zram_unavailable_reason() is not None:
        return None
    with ZramDevice(max(len(corpus), 1) * PAGE_SIZE, "lz4") as z:
        z.write_pages(corpus)
        mm = z.mm_stat()
        device = z.name
    return {"device": device, "algorithm": "lz4", **vars(mm)}


def histogram(comp: list[tuple[int, bytes]]) -> dict[str, Any]:
    """Compressed-length histogram in BUCKET-byte buckets; the last bucket is >= 4096."""
    nb = PAGE_SIZE // BUCKET + 1
    counts = [0] * nb
    for _, data in comp:
        counts[min(len(data) // BUCKET, nb - 1)] += 1
    sizes = sorted(len(d) for _, d in comp)
    return {
        "bucket_bytes": BUCKET,
        "labels": [f"{i * BUCKET}-{(i + 1) * BUCKET - 1}" for i in range(nb - 1)]
        + [f">={PAGE_SIZE}"],
        "counts": counts,
        "median": sizes[len(sizes) // 2] if sizes else 0,
        "mean": sum(sizes) / len(sizes) if sizes else 0.0,
    }


def lz4_check(comp: list[tuple[int, bytes]], huge: int | None,
              zram: dict[str, Any]) -> dict[str, Any]:
    """Python's lz4 sizes, counted as zram counts them, against the kernel's figures."""
    py_huge = sum(1 for _, d in comp if huge is not None and len(d) >= huge)
    py_compr = sum(PAGE_SIZE if huge is not None and len(d) >= huge else len(d)
                   for _, d in comp)
    return {
        "huge_threshold": huge,
        "python_compr_data_size": py_compr,
        "kernel_compr_data_size": zram["compr_data_size"],
        "python_over_kernel": py_compr / zram["compr_data_size"] if zram["compr_data_size"]
        else None,
        "python_huge_pages": py_huge,
        "kernel_huge_pages": zram["huge_pages"],
        "python_same_pages_match": None,
    }


def run(args: argparse.Namespace) -> int:
    """Run the density benchmark."""
    corpus = load_corpus(args)
    names = backend_names(args)
    same, comp = compress_corpus(corpus)
    result: dict[str, Any] = {
        "pages": len(corpus),
        "orig_bytes": len(corpus) * PAGE_SIZE,
        "compressor": "lz4",
        "corpus": corpus.path or corpus.meta.get("source", "memory"),
        "backends": {},
        "zram": None,
    }
    for name in names:
        result["backends"][name] = store_through(name, corpus, same, comp)
    zram = None if args.no_zram else measure_zram(corpus)
    result["zram"] = zram
    zs = result["backends"].get("zsmalloc")
    for r in result["backends"].values():
        r["ratio_to_zram"] = (r["pool_bytes"] / zram["mem_used_total"]
                              if zram and zram["mem_used_total"] else None)
        r["ratio_to_zsmalloc"] = r["pool_bytes"] / zs["pool_bytes"] if zs else None
    result["histogram"] = histogram(comp)
    if zram:
        check = lz4_check(comp, zs["huge_threshold"] if zs else None, zram)
        check["python_same_pages_match"] = zram["same_pages"] == same
        result["lz4_check"] = check
    else:
        result["lz4_check"] = None
    if args.json:
        print_json(result)
    else:
        _print(result)
    return 0


def _print(r: dict[str, Any]) -> None:
    rows: list[list[object]] = []
    for name, b in r["backends"].items():
        rows.append([name, b["stored_pages"], b["same_filled_pages"], b["huge_pages"],
                     b["reject_compress_poor"], mib(b["compressed_bytes"]), mib(b["pool_bytes"]),
                     b["pool_bytes_per_compressed_byte"], b["objects_per_pool_page"],
                     "" if b["ratio_to_zram"] is None else b["ratio_to_zram"],
                     "" if b["ratio_to_zsmalloc"] is None else b["ratio_to_zsmalloc"]])
    z = r["zram"]
    if z:
        stored = r["pages"] - z["same_pages"]
        used = z["mem_used_total"]
        zs = r["backends"].get("zsmalloc")
        rows.append([f"zram (kernel, {z['device']})", stored, z["same_pages"], z["huge_pages"], 0,
                     mib(z["compr_data_size"]), mib(used),
                     used / z["compr_data_size"] if z["compr_data_size"] else 0.0,
                     stored / (used / PAGE_SIZE) if used else 0.0, 1.0,
                     used / zs["pool_bytes"] if zs else ""])
    caption = (f"{r['pages']:,} pages ({mib(r['orig_bytes'])}) of {r['corpus']}; "
               f"compressor lz4; " + ("zram: not measured (needs root and zram)"
                                      if not z else "zram reset and removed afterwards"))
    print_table("density: pool memory after storing every page",
                ["backend", "stored", "same", "huge", "rejected", "compressed", "pool",
                 "pool/compr", "objs/page", "vs zram", "vs zsmalloc"], rows, caption)
    h = r["histogram"]
    total = sum(h["counts"]) or 1
    print_table(f"compressed-size distribution (lz4; median {h['median']} B, "
                f"mean {h['mean']:.0f} B)",
                ["compressed bytes", "pages", "share"],
                [[lab, c, f"{100 * c / total:.1f}%"] for lab, c in zip(h["labels"], h["counts"])])
    c = r["lz4_check"]
    if c:
        ratio = c["python_over_kernel"]
        print(f"lz4 check: Python lz4 {c['python_compr_data_size']:,} B vs kernel "
              f"compr_data_size {c['kernel_compr_data_size']:,} B "
              f"({'n/a' if ratio is None else f'{ratio:.4f}x'}); huge pages "
              f"{c['python_huge_pages']} vs {c['kernel_huge_pages']}; same-filled pages "
              f"{'match' if c['python_same_pages_match'] else 'DIFFER'}")
