"""Store+load round trips per second through each backend, against bare lz4 on the same pages.

``swapd bench throughput --corpus FILE [--json] [--reps R] [--pages N] [--backend NAME ...]``

One pass over the pages of the corpus that are not same-filled (those never reach a
backend) does, for every page, a store -- lz4 compress, ``malloc``, ``write`` -- and
then, for every page, a load -- ``read``, lz4 decompress, ``free`` -- so the pool fills
to the whole corpus and empties again, as a swap-out burst followed by swap-ins would.
Pages whose compressed length reaches the backend's ``huge_class_size`` are stored raw
and loaded by copy (zram's huge pages); pages a backend cannot hold (compressed above
its ``max_size`` < PAGE_SIZE: zbud) are rejected after compression, counted, and count as
processed.  The bare-lz4 variant does the compress and the decompress of the same pages
and nothing else.  Every variant runs once per round, in a rotated order, for ``--reps``
rounds; the figure is the median of the thread's CPU time per round (``time.thread_time``:
every variant runs in this one thread, so other processes on a busy machine do not skew the
ratios).  Before timing, one checked pass verifies that every
page comes back intact through every backend.

Implementations (swapd/impl.py).  ``impl`` names the one that runs: under the compiled one a
zsmalloc pool's ``malloc``/``write``/``read``/``free`` are its compiled fast paths, and two
more variants run in the same rounds: ``bare_lz4_batch``, the compiled lz4 alone over the
whole pass (``compress_pages``, then ``decode_pages``), and, per backend with compiled fast
paths, the **batch path** (``batch_pages_per_s``): one ``compress_pages`` call, one
``store_objects`` call (malloc + write + CRC-32 of every object, the GIL released), then one
``decode_objects`` and one ``free_objects`` -- what the layer's ``store_batch`` and
``load_run`` do with the compiled zsmalloc.  Its ratio is given against bare lz4 (python-lz4,
the issue's baseline) and against ``bare_lz4_batch``.

JSON: ``{"impl": str, "loadavg": float, "pages": n, "reps": r, "bare_lz4": {"pages_per_s":
float}, "bare_lz4_batch": {...} (compiled), "backends": {NAME: {"pages_per_s": float,
"ratio_to_bare_lz4": float, "huge_pages": int, "rejected_pages": int, and with the batch
path "batch_pages_per_s", "batch_ratio_to_bare_lz4", "batch_ratio_to_bare_lz4_batch"}}}``.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from typing import Any

import lz4.block

from swapd.arena import PAGE_SIZE
from swapd.backend import Backend
from swapd.bench.common import (
    add_backend_arguments,
    add_corpus_arguments,
    backend_names,
    interleaved_medians,
    load_corpus,
    print_json,
    print_table,
)
from swapd.compress import same_filled_value
from swapd.plugins import make_backend


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``swapd bench throughput``."""
    add_corpus_arguments(p)
    add_backend_arguments(p)
    p.add_argument("--json", action="store_true", help="print the JSON object only")
    p.add_argument("--reps", type=int, default=5, help="rounds; the median is reported (5)")
    p.add_argument("--pages", type=int, default=0,
                   help="use only the first N non-same-filled pages (default: all)")


def bare_lz4(pages: list[bytes]) -> Callable[[], object]:
    """A pass of lz4 compress of every page, then decompress of every page."""
    compress, decompress = lz4.block.compress, lz4.block.decompress

    def run() -> object:
        comp = [compress(pg, store_size=False) for pg in pages]
        for c in comp:
            decompress(c, uncompressed_size=PAGE_SIZE)
        return comp

    return run


def round_trip(pool: Backend, pages: list[bytes], check: bool = False) -> Callable[[], object]:
    """A pass of store (compress, malloc, write) of every page, then load (read,
    decompress, free) of every page, through ``pool``; with ``check``, verify each page."""
    compress, decompress = lz4.block.compress, lz4.block.decompress
    malloc, write, read, free = pool.malloc, pool.write, pool.read, pool.free
    max_size = pool.max_size
    whole = max_size >= PAGE_SIZE
    huge = int(getattr(pool, "huge_class_size", max_size)) if whole else 1 << 62

    def run() -> object:
        stored: list[tuple[int, bool, int]] = []  # (handle, raw?, page index)
        append = stored.append
        for i, pg in enumerate(pages):
            c = compress(pg, store_size=False)
            n = len(c)
            if n >= huge:
                h = malloc(PAGE_SIZE)
                write(h, pg)
                append((h, True, i))
            elif n <= max_size:
                h = malloc(n)
                write(h, c)
                append((h, False, i))
        for h, raw, i in stored:
            data = read(h) if raw else decompress(read(h), uncompressed_size=PAGE_SIZE)
            free(h)
            if check and bytes(data) != pages[i]:
                raise AssertionError(f"{pool.name}: page {i} came back corrupted")
        return stored

    return run


def bare_lz4_batch(nat: Any, pages: list[bytes]) -> Callable[[], object]:
    """A pass of the compiled lz4 over all pages: compress_pages, then decode_pages."""
    from array import array

    n = len(pages)
    src = b"".join(pages)
    comp = bytearray(n * PAGE_SIZE)
    out = bytearray(n * PAGE_SIZE)

    def run() -> object:
        lens = array("i", bytes(4 * n))
        vals = array("Q", bytes(8 * n))
        nat.compress_pages(src, n, comp, lens, vals, False)
        items = [memoryview(comp)[j * PAGE_SIZE:j * PAGE_SIZE + k] if k > 0 else
                 pages[j] for j, k in enumerate(lens)]
        if nat.decode_pages(items, out) != n:
            raise AssertionError("compiled lz4: a page did not decode")
        return lens

    return run


def batch_round_trip(nat: Any, fast: Any, pool: Backend, pages: list[bytes],
                     check: bool = False) -> Callable[[], object]:
    """The batch path through a pool with compiled fast paths (see the module docstring):
    compress_pages, store_objects (slow paths through the pool's malloc/write, in order),
    decode_objects, free_objects (slow ones through the pool's free)."""
    from array import array

    n = len(pages)
    src = b"".join(pages)
    comp = bytearray(n * PAGE_SIZE)
    cview = memoryview(comp)
    out = bytearray(n * PAGE_SIZE)
    huge = int(getattr(pool, "huge_class_size", PAGE_SIZE))

    def run() -> object:
        lens = array("i", bytes(4 * n))
        vals = array("Q", bytes(8 * n))
        nat.compress_pages(src, n, comp, lens, vals, False)
        objs = array("i", bytes(4 * n))
        for j, k in enumerate(lens):
            if 0 < k < huge:
                objs[j] = k
            else:  # stored raw, as zram stores huge pages
                objs[j] = PAGE_SIZE
                cview[j * PAGE_SIZE:(j + 1) * PAGE_SIZE] = pages[j]
        handles = array("Q", bytes(8 * n))
        j = 0
        while j < n:
            j = fast.store_objects(comp, objs, handles, j)
            if j < n:  # a slow path (a huge object, a new zspage): the pool's own calls
                k = objs[j]
                h = pool.malloc(k)
                pool.write(h, cview[j * PAGE_SIZE:j * PAGE_SIZE + k])
                handles[j] = h
                j += 1
        # decompress every page; raw ones are copied (decode_objects tells them by size)
        if fast.decode_objects(handles, array("Q", bytes(8 * n)), out) != n:
            raise AssertionError(f"{pool.name}: the batch path lost a page")
        if check and out != src:
            raise AssertionError(f"{pool.name}: the batch path returned other bytes")
        j = 0
        while j < n:
            j = fast.free_objects(handles, j)
            if j < n:
                pool.free(handles[j])
                j += 1
        return handles

    return run


def classify(pool: Backend, pages: list[bytes]) -> tuple[int, int]:
    """(huge pages, rejected pages) of ``pages`` for ``pool``."""
    max_size = pool.max_size
    whole = max_size >= PAGE_SIZE
    huge = int(getattr(pool, "huge_class_size", max_size)) if whole else 1 << 62
    lens = [len(lz4.block.compress(pg, store_size=False)) for pg in pages]
    return sum(n >= huge for n in lens), sum(n < huge and n > max_size for n in lens)


def run(args: argparse.Namespace) -> int:
    """Run the throughput benchmark."""
    from swapd.errors import ConfigError

    if args.reps <= 0:
        raise ConfigError(f"--reps must be positive, got {args.reps}")
    corpus = load_corpus(args)
    names = backend_names(args)
    pages = [pg for pg in corpus if same_filled_value(pg) is None]
    if args.pages > 0:
        pages = pages[:args.pages]
    if not pages:
        raise ConfigError("the corpus has no page that is not same-filled")
    from swapd._native.zsmalloc import fast_of
    from swapd.impl import describe, native

    nat = native()
    pools = {n: make_backend(n, max_pages=len(pages) + 8192) for n in names}
    try:
        variants: dict[str, Callable[[], object]] = {"bare_lz4": bare_lz4(pages)}
        if nat is not None:
            variants["bare_lz4_batch"] = bare_lz4_batch(nat, pages)
        extra: dict[str, dict[str, int]] = {}
        for n, pool in pools.items():
            round_trip(pool, pages, check=True)()
            pool._check()
            if pool.total_pages() != 0:
                raise AssertionError(f"{n}: {pool.total_pages()} pages left after freeing all")
            h, r = classify(pool, pages)
            extra[n] = {"huge_pages": h, "rejected_pages": r}
            variants[n] = round_trip(pool, pages)
            fast = fast_of(pool)
            if nat is not None and fast is not None:
                batch_round_trip(nat, fast, pool, pages, check=True)()
                pool._check()
                if pool.total_pages() != 0:
                    raise AssertionError(f"{n}: pages left after the batch path freed all")
                variants[f"{n}/batch"] = batch_round_trip(nat, fast, pool, pages)
        med = interleaved_medians(variants, args.reps, clock=time.thread_time)
    finally:
        for pool in pools.values():
            pool.close()
    bare = len(pages) / med["bare_lz4"]
    result: dict[str, Any] = {
        "impl": describe(),
        "loadavg": os.getloadavg()[0],
        "pages": len(pages),
        "reps": args.reps,
        "corpus": corpus.path or corpus.meta.get("source", "memory"),
        "bare_lz4": {"pages_per_s": bare},
        "backends": {},
    }
    bare_b = len(pages) / med["bare_lz4_batch"] if "bare_lz4_batch" in med else None
    if bare_b is not None:
        result["bare_lz4_batch"] = {"pages_per_s": bare_b, "ratio_to_bare_lz4": bare_b / bare}
    for n in names:
        pps = len(pages) / med[n]
        result["backends"][n] = {"pages_per_s": pps, "ratio_to_bare_lz4": pps / bare, **extra[n]}
        if f"{n}/batch" in med and bare_b is not None:
            bpps = len(pages) / med[f"{n}/batch"]
            result["backends"][n].update({"batch_pages_per_s": bpps,
                                          "batch_ratio_to_bare_lz4": bpps / bare,
                                          "batch_ratio_to_bare_lz4_batch": bpps / bare_b})
    if args.json:
        print_json(result)
    else:
        rows: list[list[object]] = [["bare lz4 (compress+decompress)", bare, 1.0,
                                     1e6 / bare, "", ""]]
        if bare_b is not None:
            rows.append(["bare lz4, compiled batch", bare_b, bare_b / bare, 1e6 / bare_b, "",
                         ""])
        for n, b in result["backends"].items():
            rows.append([n, b["pages_per_s"], b["ratio_to_bare_lz4"], 1e6 / b["pages_per_s"],
                         b["huge_pages"], b["rejected_pages"]])
            if "batch_pages_per_s" in b:
                rows.append([f"{n}, compiled batch path", b["batch_pages_per_s"],
                             b["batch_ratio_to_bare_lz4"], 1e6 / b["batch_pages_per_s"],
                             b["huge_pages"], b["rejected_pages"]])
        print_table("throughput: store+load round trips of one page",
                    ["variant", "pages/s", "vs bare lz4", "us/page", "huge", "rejected"], rows,
                    f"median of {args.reps} interleaved rounds over {len(pages):,} pages "
                    f"of {result['corpus']}; impl {result['impl']}; "
                    f"loadavg {result['loadavg']:.2f}")
    return 0
