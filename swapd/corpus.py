"""Corpora of real page contents, and ``swapd corpus capture``.

Compression ratios, allocator density and throughput all depend on what the
pages hold, so every measurement in swapd draws page contents from a corpus: a
file of raw 4 KiB pages captured from live processes (or, where capture is not
possible, a documented synthetic mix).

Capture (root): for each pid, ``/proc/PID/maps`` names the mappings; only
private anonymous ones are taken -- ``[heap]``, ``[stack]``, unnamed and
``[anon:...]`` mappings with ``p`` in their permissions -- never file-backed,
shared, or special ones (``[vvar]``, ``[vdso]``, ``[vsyscall]``...).  For each
page, ``/proc/PID/pagemap`` (``Documentation/admin-guide/mm/pagemap.rst``: one
u64 per page, bit 63 "present", bits 0-54 the PFN) says whether it is present;
pages that are not present are skipped, so reading ``/proc/PID/mem`` never
faults in a never-touched page of the target, and pages mapped to the shared
zero page (the PFN of our own read-faulted anonymous page) are skipped too:
they cost no memory and the kernel never swaps them.  Without ``--pid`` the
command starts a workload process of its own that builds a realistic Python
heap (see ``_WORKLOAD``), captures it and stops it.

File format (little-endian), written atomically (temporary file in the same
directory, fsync, rename, fsync of the directory)::

    struct corpus_header {          /* 32 bytes at offset 0 */
        char magic[8];              /* "SWPDCORP" */
        u32  version;               /* 1 */
        u32  meta_len;              /* bytes of JSON metadata after the header */
        u64  npages;                /* pages in the file */
        u64  data_offset;           /* where page 0 starts; a multiple of 4096 */
    };
    /* then meta_len bytes of UTF-8 JSON (an object: source, pids, created, ...),
       zero padding up to data_offset, then npages * 4096 bytes of raw pages. */

The file size is exactly ``data_offset + npages * 4096``; anything else is a
:class:`~swapd.errors.CorpusFormatError`.

Synthetic mix (:meth:`Corpus.synthetic`), each page drawn independently from
one ``random.Random(seed)``: 10% zero pages, 3% same-filled with a random
word, 30% text (log lines and JSON-ish records from a fixed vocabulary), 32%
structured binary (64-bit records: pointer-like values near a few bases, small
integers, flags, zero padding), 10% sparse (mostly zero with a few random runs),
15% random bytes (incompressible).

A :class:`Corpus` is read-only after construction and safe to share between
threads.  No locks.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import datetime
import json
import mmap
import os
import random
import re
import struct
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from swapd.arena import PAGE_SHIFT, PAGE_SIZE
from swapd.errors import CaptureError, CorpusFormatError

MAGIC = b"SWPDCORP"
VERSION = 1
_HEADER = struct.Struct("<8sIIQQ")  # struct corpus_header above
_PAGEMAP_PRESENT = 1 << 63
_PAGEMAP_PFN_MASK = (1 << 55) - 1
_SPECIAL = re.compile(r"^\[(?!heap\]|stack\]|anon:).*\]$")  # [vvar], [vdso], [vsyscall], ...

#: The synthetic mix: (kind, weight in percent).  Documented in the module docstring.
SYNTHETIC_MIX: tuple[tuple[str, int], ...] = (
    ("zero", 10),
    ("same_filled", 3),
    ("text", 30),
    ("binary", 32),
    ("sparse", 10),
    ("random", 15),
)


class Corpus:
    """A read-only sequence of 4 KiB pages with metadata.

    ``len(corpus)`` pages; ``corpus.page(i)`` returns page ``i`` as 4096 bytes;
    iteration yields the pages in order; ``corpus.meta`` is the metadata dict.
    """

    def __init__(self, data: bytes | mmap.mmap, offset: int, npages: int,
                 meta: dict[str, Any], path: str | None = None) -> None:
        if len(data) < offset + npages * PAGE_SIZE:
            raise CorpusFormatError(
                f"{path or 'corpus'}: {npages} pages need {offset + npages * PAGE_SIZE} bytes, "
                f"have {len(data)}")
        self._data = data  # read-only; never written after construction
        self._offset = offset
        self._npages = npages
        self.meta = meta
        self.path = path

    # -- construction ---------------------------------------------------------------

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> Corpus:
        """Open a corpus file (memory-mapped, read-only).  O(1) plus the header.

        Raises CorpusFormatError if the file cannot be opened or is not a
        complete corpus.
        """
        p = os.fspath(path)
        try:
            f = open(p, "rb")  # noqa: SIM115 - closed by the with below
        except OSError as exc:
            raise CorpusFormatError(f"cannot open corpus {p}: {exc.strerror}") from exc
        with f:
            head = f.read(_HEADER.size)
            if len(head) < _HEADER.size:
                raise CorpusFormatError(f"{p}: too short for a corpus header")
            magic, version, meta_len, npages, offset = _HEADER.unpack(head)
            if magic != MAGIC:
                raise CorpusFormatError(f"{p}: not a swapd corpus (bad magic {magic!r})")
            if version != VERSION:
                raise CorpusFormatError(f"{p}: corpus format version {version}, "
                                        f"this swapd reads {VERSION}")
            if offset % PAGE_SIZE or offset < _HEADER.size + meta_len:
                raise CorpusFormatError(f"{p}: bad data offset {offset}")
            try:
                meta = json.loads(f.read(meta_len).decode())
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise CorpusFormatError(f"{p}: corrupt metadata: {exc}") from exc
            if not isinstance(meta, dict):
                raise CorpusFormatError(f"{p}: metadata is not a JSON object")
            size = os.fstat(f.fileno()).st_size
            if size != offset + npages * PAGE_SIZE:
                raise CorpusFormatError(
                    f"{p}: size {size} != {offset} + {npages} pages * {PAGE_SIZE} (truncated?)")
            data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        return cls(data, offset, npages, meta, p)

    @classmethod
    def from_pages(cls, pages: Iterable[bytes], meta: dict[str, Any] | None = None) -> Corpus:
        """Build an in-memory corpus from pages (each exactly 4096 bytes).  O(n)."""
        buf = bytearray()
        n = 0
        for pg in pages:
            if len(pg) != PAGE_SIZE:
                raise CorpusFormatError(f"page {n} has {len(pg)} bytes, not {PAGE_SIZE}")
            buf += pg
            n += 1
        return cls(bytes(buf), 0, n, dict(meta or {}))

    @classmethod
    def synthetic(cls, npages: int, seed: int = 0) -> Corpus:
        """A deterministic in-memory corpus of the documented mix.  O(npages)."""
        gen = _SyntheticPages(random.Random(seed))
        kinds = [k for k, _ in SYNTHETIC_MIX]
        weights = [w for _, w in SYNTHETIC_MIX]
        rng = gen.rng
        counts = dict.fromkeys(kinds, 0)
        pages = []
        for kind in rng.choices(kinds, weights, k=npages):
            counts[kind] += 1
            pages.append(gen.make(kind))
        meta = {"source": "synthetic", "seed": seed, "pids": [], "created": _now(),
                "mix": dict(SYNTHETIC_MIX), "kinds": counts}
        return cls.from_pages(pages, meta)

    # -- access -------------------------------------------------------------------------

    def __len__(self) -> int:
        return self._npages

    def page(self, i: int) -> bytes:
        """Page ``i`` (negative counts from the end) as 4096 bytes.  O(1) + copy."""
        if i < 0:
            i += self._npages
        if not 0 <= i < self._npages:
            raise IndexError(f"page {i} out of range 0..{self._npages - 1}")
        off = self._offset + (i << PAGE_SHIFT)
        return bytes(self._data[off:off + PAGE_SIZE])

    def __iter__(self) -> Iterator[bytes]:
        data, off = self._data, self._offset
        for i in range(self._npages):
            o = off + (i << PAGE_SHIFT)
            yield bytes(data[o:o + PAGE_SIZE])

    def _check(self) -> None:
        """Verify the layout: every page lies inside the data.  O(1)."""
        from swapd.errors import InvariantError

        if self._npages < 0 or self._offset < 0:
            raise InvariantError(f"corpus: bad layout {self._offset=} {self._npages=}")
        if isinstance(self._data, mmap.mmap) and self._data.closed:
            return  # closed: nothing left to check
        if len(self._data) < self._offset + self._npages * PAGE_SIZE:
            raise InvariantError(f"corpus: {self._npages} pages do not fit in "
                                 f"{len(self._data)} bytes after offset {self._offset}")

    def close(self) -> None:
        """Unmap the file (file-backed corpora); the corpus is unusable afterwards."""
        if isinstance(self._data, mmap.mmap):
            self._data.close()

    def __enter__(self) -> Corpus:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Corpus({self.path or self.meta.get('source', 'memory')!r}, {self._npages} pages)"


def write_corpus(path: str | os.PathLike[str], pages: Iterable[bytes],
                 meta: dict[str, Any]) -> int:
    """Write ``pages`` (each 4096 bytes) and ``meta`` to ``path`` atomically.

    Streams the pages; returns how many were written.  On any error the target
    is left untouched and the temporary file removed.  O(n).
    """
    p = Path(os.fspath(path))
    meta_b = json.dumps(meta, sort_keys=True).encode()
    offset = -(-(_HEADER.size + len(meta_b)) // PAGE_SIZE) * PAGE_SIZE
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent or ".")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(_HEADER.pack(MAGIC, VERSION, len(meta_b), 0, offset))
            f.write(meta_b)
            f.write(b"\0" * (offset - _HEADER.size - len(meta_b)))
            n = 0
            for pg in pages:
                if len(pg) != PAGE_SIZE:
                    raise CorpusFormatError(f"page {n} has {len(pg)} bytes, not {PAGE_SIZE}")
                f.write(pg)
                n += 1
            f.seek(0)
            f.write(_HEADER.pack(MAGIC, VERSION, len(meta_b), n, offset))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    dfd = os.open(p.parent or ".", os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
    return n


# -- synthetic pages -------------------------------------------------------------------------


class _SyntheticPages:
    """Generators for each kind of the synthetic mix, all from one rng."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        letters = "etaoinshrdlcumwfgypbvkjxqz"
        self.words = ["".join(rng.choices(letters, k=rng.randint(2, 9))) for _ in range(400)]
        self.bases = [rng.randrange(0x7F0000000000, 0x7FFFFFFFFFFF) & ~0xFFF for _ in range(4)]

    def make(self, kind: str) -> bytes:
        return getattr(self, f"_{kind}")()  # type: ignore[no-any-return]

    def _zero(self) -> bytes:
        return bytes(PAGE_SIZE)

    def _same_filled(self) -> bytes:
        return self.rng.getrandbits(64).to_bytes(8, "little") * (PAGE_SIZE // 8)

    def _text(self) -> bytes:
        rng, words = self.rng, self.words
        parts: list[str] = []
        size = 0
        while size < PAGE_SIZE:
            if rng.random() < 0.5:
                line = (f"2024-05-{rng.randint(1, 28):02d}T{rng.randint(0, 23):02d}:"
                        f"{rng.randint(0, 59):02d}:{rng.randint(0, 59):02d} "
                        f"{rng.choice(('INFO', 'WARN', 'DEBUG', 'ERROR'))} "
                        f"{' '.join(rng.choices(words, k=rng.randint(3, 12)))} "
                        f"id={rng.randint(0, 99999)}\n")
            else:
                line = (f'{{"name": "{rng.choice(words)}", "id": {rng.randint(0, 1 << 20)}, '
                        f'"tags": ["{rng.choice(words)}", "{rng.choice(words)}"], '
                        f'"score": {rng.random():.4f}}},\n')
            parts.append(line)
            size += len(line)
        return "".join(parts).encode()[:PAGE_SIZE]

    def _binary(self) -> bytes:
        rng = self.rng
        base = rng.choice(self.bases)
        out = bytearray()
        while len(out) < PAGE_SIZE:
            # a 32-byte record: two pointers near one base, a small int, flags
            out += struct.pack("<QQqI4x", base + (rng.randrange(1 << 16) << 3),
                               base + (rng.randrange(1 << 16) << 3) if rng.random() < 0.7 else 0,
                               rng.randint(-100, 10000), rng.choice((0, 1, 3, 0x80000000)))
        return bytes(out[:PAGE_SIZE])

    def _sparse(self) -> bytes:
        rng = self.rng
        page = bytearray(PAGE_SIZE)
        for _ in range(rng.randint(1, 6)):
            n = rng.randint(8, 256)
            at = rng.randrange(PAGE_SIZE - n)
            page[at:at + n] = rng.randbytes(n)
        return bytes(page)

    def _random(self) -> bytes:
        return self.rng.randbytes(PAGE_SIZE)


# -- capture from live processes -------------------------------------------------------------


@dataclass(frozen=True)
class Mapping:
    """One line of ``/proc/PID/maps`` that capture takes."""

    start: int
    end: int
    perms: str
    name: str


@dataclass
class CaptureStats:
    """What a capture saw, stored in the corpus metadata."""

    mappings: int = 0
    pages: int = 0
    not_present: int = 0
    zero_pfn: int = 0
    unreadable: int = 0
    by_mapping: dict[str, int] = field(default_factory=dict)


def private_anon_mappings(pid: int) -> list[Mapping]:
    """Private anonymous, readable mappings of ``pid`` (heap, stack, anonymous).  O(maps)."""
    try:
        text = Path(f"/proc/{pid}/maps").read_text()
    except FileNotFoundError as exc:
        raise CaptureError(f"no process with pid {pid}") from exc
    except PermissionError as exc:
        raise CaptureError(f"cannot read /proc/{pid}/maps: permission denied "
                           f"(capture needs root)") from exc
    out = []
    for line in text.splitlines():
        parts = line.split(None, 5)
        addrs, perms, inode = parts[0], parts[1], parts[4]
        name = parts[5].strip() if len(parts) > 5 else ""
        if perms[0] != "r" or perms[3] != "p" or inode != "0":
            continue
        if name and (not name.startswith("[") or _SPECIAL.match(name)):
            continue  # file-backed (or deleted file) or [vvar]/[vdso]/[vsyscall]...
        lo, hi = (int(x, 16) for x in addrs.split("-"))
        out.append(Mapping(lo, hi, perms, name or "[anon]"))
    return out


def zero_page_pfn() -> int:
    """The PFN of the kernel's shared zero page (0 if pagemap hides PFNs).

    Read-faults one page of a fresh anonymous mapping of our own (which maps the
    zero page) and reads its PFN from ``/proc/self/pagemap``.
    """
    m = mmap.mmap(-1, PAGE_SIZE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    try:
        _ = m[0]
        anchor = ctypes.c_char.from_buffer(m)
        addr = ctypes.addressof(anchor)
        del anchor
        with open("/proc/self/pagemap", "rb") as f:
            entry = int.from_bytes(os.pread(f.fileno(), 8, (addr >> PAGE_SHIFT) * 8), "little")
        return entry & _PAGEMAP_PFN_MASK if entry & _PAGEMAP_PRESENT else 0
    finally:
        m.close()


def capture_pages(pids: Iterable[int], max_pages: int,
                  stats: CaptureStats | None = None) -> Iterator[bytes]:
    """Yield up to ``max_pages`` present private anonymous pages of ``pids``.

    Pages are read with ``pread`` on ``/proc/PID/mem`` in runs of contiguous
    present pages.  O(mapped pages) pagemap reads plus O(captured pages) copies.
    Raises CaptureError if a process cannot be read at all.
    """
    st = stats if stats is not None else CaptureStats()
    zpfn = zero_page_pfn()
    for pid in pids:
        maps = private_anon_mappings(pid)
        try:
            pm = os.open(f"/proc/{pid}/pagemap", os.O_RDONLY)
            mem = os.open(f"/proc/{pid}/mem", os.O_RDONLY)
        except FileNotFoundError as exc:
            raise CaptureError(f"process {pid} exited during capture") from exc
        except PermissionError as exc:
            raise CaptureError(f"cannot open /proc/{pid}/mem: permission denied "
                               f"(capture needs root)") from exc
        try:
            for m in maps:
                st.mappings += 1
                for page in _capture_mapping(pm, mem, m, zpfn, st):
                    yield page
                    st.pages += 1
                    st.by_mapping[m.name] = st.by_mapping.get(m.name, 0) + 1
                    if st.pages >= max_pages:
                        return
        finally:
            os.close(pm)
            os.close(mem)


def _capture_mapping(pm: int, mem: int, m: Mapping, zpfn: int,
                     st: CaptureStats) -> Iterator[bytes]:
    chunk = 4096  # pagemap entries per read (16 MiB of address space)
    for first in range(m.start >> PAGE_SHIFT, m.end >> PAGE_SHIFT, chunk):
        last = min(first + chunk, m.end >> PAGE_SHIFT)
        raw = os.pread(pm, (last - first) * 8, first * 8)
        entries = struct.unpack(f"<{len(raw) // 8}Q", raw)
        run_start = -1
        for k, e in enumerate((*entries, 0)):  # a trailing 0 closes the last run
            take = bool(e & _PAGEMAP_PRESENT) and not (zpfn and e & _PAGEMAP_PFN_MASK == zpfn)
            if k < len(entries) and not take:
                if e & _PAGEMAP_PRESENT:
                    st.zero_pfn += 1
                else:
                    st.not_present += 1
            if take and run_start < 0:
                run_start = k
            elif not take and run_start >= 0:
                yield from _read_run(mem, first + run_start, k - run_start, st)
                run_start = -1


def _read_run(mem: int, pfn: int, n: int, st: CaptureStats) -> Iterator[bytes]:
    for at in range(0, n, 256):
        cnt = min(256, n - at)
        try:
            data = os.pread(mem, cnt * PAGE_SIZE, (pfn + at) << PAGE_SHIFT)
        except OSError:
            data = b""
        if len(data) == cnt * PAGE_SIZE:
            for i in range(cnt):
                yield data[i * PAGE_SIZE:(i + 1) * PAGE_SIZE]
            continue
        for i in range(cnt):  # page by page, skipping what cannot be read
            try:
                pg = os.pread(mem, PAGE_SIZE, (pfn + at + i) << PAGE_SHIFT)
            except OSError:
                pg = b""
            if len(pg) == PAGE_SIZE:
                yield pg
            else:
                st.unreadable += 1


# The workload a capture without --pid runs: a Python process that builds a heap
# like a real service's -- records as dicts, parsed JSON, strings and log lines,
# objects with attributes, numeric arrays, sets and tuples, a few random blobs
# (keys, compressed data) and zero-initialized I/O buffers filled only at their start --
# until its resident size reaches the target, then says "ready" and waits on stdin.
_WORKLOAD = r"""
import array, json, random, sys
target = int(sys.argv[1]) << 20
rng = random.Random(int(sys.argv[2]))
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096
words = ["".join(rng.choices("etaoinshrdlcumwfgypbvkjxqz", k=rng.randint(2, 10)))
         for _ in range(3000)]
class Obj:
    def __init__(self, i):
        self.id = i
        self.name = rng.choice(words).title()
        self.parent = None
        self.children = []
        self.weight = rng.random() * 100
        self.flags = rng.getrandbits(8)
keep = []
i = 0
while rss() < target:
    recs = [{"id": i * 1000 + k, "user": rng.choice(words), "email":
             f"{rng.choice(words)}@{rng.choice(words)}.com", "score": round(rng.gauss(50, 15), 3),
             "tags": rng.sample(words, 3), "active": rng.random() < 0.8} for k in range(400)]
    keep.append(recs)
    keep.append(json.loads(json.dumps(recs[:200])))
    keep.append([f"2024-05-{rng.randint(1, 28):02d} {rng.choice(('GET', 'POST'))} "
                 f"/api/{rng.choice(words)}/{rng.randint(1, 9999)} {rng.choice((200, 404, 500))} "
                 f"{rng.randint(1, 900)}ms" for _ in range(300)])
    objs = [Obj(i * 1000 + k) for k in range(300)]
    for o in objs[1:]:
        o.parent = objs[rng.randrange(len(objs))]
        o.parent.children.append(o)
    keep.append(objs)
    walk = array.array("d", [0.0]) * 2048
    for k in range(1, len(walk)):
        walk[k] = walk[k - 1] + rng.gauss(0, 1)
    keep.append(walk)
    keep.append(array.array("i", (rng.randint(0, 1000) for _ in range(2048))))
    keep.append({rng.randrange(1 << 40) for _ in range(500)})
    keep.append([(rng.choice(words), rng.randint(0, 100)) for _ in range(300)])
    keep.append(" ".join(rng.choices(words, k=2000)))
    if i % 4 == 0:
        keep.append(rng.randbytes(16384))
    if i % 3 == 0:  # an I/O buffer, allocated zeroed and filled only at its start
        buf = bytearray(65536)
        buf[:rng.randint(100, 6000)] = b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\n" * 140
        keep.append(buf)
    i += 1
sys.stdout.write("ready\n")
sys.stdout.flush()
sys.stdin.read()
"""


@contextlib.contextmanager
def workload(mib: int, seed: int = 0) -> Iterator[int]:
    """Run the built-in heap workload until its RSS is ``mib`` MiB; yield its pid.

    The process is stopped (stdin closed, then killed if needed) and reaped on exit.
    """
    proc = subprocess.Popen([sys.executable, "-c", _WORKLOAD, str(mib), str(seed)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if line.strip() != b"ready":
            raise CaptureError(f"workload process failed to start (exit {proc.wait()})")
        yield proc.pid
    finally:
        if proc.stdin is not None:
            with contextlib.suppress(BrokenPipeError):
                proc.stdin.close()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def capture(out: str | os.PathLike[str], pids: list[int] | None = None, mib: int = 64,
            seed: int = 0) -> Corpus:
    """Capture up to ``mib`` MiB of pages of ``pids`` (or of the built-in workload) to ``out``.

    Returns the corpus opened from ``out``.  Raises CaptureError.
    """
    max_pages = mib << (20 - PAGE_SHIFT)
    st = CaptureStats()
    meta: dict[str, Any] = {"created": _now(), "kernel": os.uname().release, "mib_cap": mib,
                            "page_size": PAGE_SIZE}
    if pids:
        meta.update(source="capture", pids=pids, comm=_comms(pids))
        pages = list(capture_pages(pids, max_pages, st))
    else:
        # The interpreter itself adds ~10 MiB; grow the heap a little beyond the cap.
        with workload(mib + mib // 8 + 8, seed) as pid:
            meta.update(source="workload", pids=[pid], comm=_comms([pid]), seed=seed)
            pages = list(capture_pages([pid], max_pages, st))
    meta.update(mappings=st.mappings, skipped_not_present=st.not_present,
                skipped_zero_pfn=st.zero_pfn, unreadable=st.unreadable,
                by_mapping=st.by_mapping)
    write_corpus(out, pages, meta)
    return Corpus.open(out)


def _comms(pids: list[int]) -> dict[str, str]:
    out = {}
    for pid in pids:
        try:
            out[str(pid)] = Path(f"/proc/{pid}/comm").read_text().strip()
        except OSError:
            out[str(pid)] = "?"
    return out


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


# -- command line --------------------------------------------------------------------------


def add_arguments(p: argparse.ArgumentParser) -> None:
    """``swapd corpus capture OUT [--pid PID ...] [--mib N] [--synthetic]`` and ``info FILE``."""
    sub = p.add_subparsers(dest="corpus_cmd", metavar="ACTION", required=True)
    cap = sub.add_parser("capture", help="write a corpus file of real (or synthetic) pages",
                         description="Capture private anonymous pages of live processes "
                                     "(root), or of a workload of our own without --pid.")
    cap.add_argument("out", metavar="OUT", help="corpus file to write (atomically)")
    cap.add_argument("--pid", type=int, action="append", default=[],
                     help="process to capture (repeatable); default: a built-in workload")
    cap.add_argument("--mib", type=int, default=64, help="cap on the corpus size (default 64)")
    cap.add_argument("--synthetic", action="store_true",
                     help="write the documented synthetic mix instead of capturing")
    cap.add_argument("--seed", type=int, default=0, help="seed for --synthetic and the workload")
    info = sub.add_parser("info", help="print a corpus file's metadata and size")
    info.add_argument("file", metavar="FILE")


def run(args: argparse.Namespace) -> int:
    """Run ``swapd corpus ACTION``."""
    if args.corpus_cmd == "info":
        with Corpus.open(args.file) as c:
            print(json.dumps({"pages": len(c), "bytes": len(c) * PAGE_SIZE, "meta": c.meta},
                             indent=2, sort_keys=True))
        return 0
    if args.mib <= 0:
        from swapd.errors import ConfigError

        raise ConfigError(f"--mib must be positive, got {args.mib}")
    if args.synthetic:
        if args.pid:
            from swapd.errors import ConfigError

            raise ConfigError("--synthetic and --pid exclude each other")
        syn = Corpus.synthetic(args.mib << (20 - PAGE_SHIFT), args.seed)
        write_corpus(args.out, syn, syn.meta)
        n = len(syn)
    else:
        if os.geteuid() != 0:
            raise CaptureError("capture reads /proc/PID/mem and pagemap PFNs: run as root, "
                               "or use --synthetic")
        with capture(args.out, args.pid or None, args.mib, args.seed) as c:
            n = len(c)
    print(f"wrote {n} pages ({n * PAGE_SIZE / (1 << 20):.1f} MiB) to {args.out}")
    return 0
