"""Trace formats of the simulator: read and written, streamed.

Design.  A trace is a sequence of :class:`Request` records (time, page id,
op, size).  Three on-disk formats are understood:

``text``
    One page id per line (decimal, or hexadecimal with ``0x``).  Blank lines
    and lines starting with ``#`` are skipped.  Time is the record's virtual
    time (its 0-based index among the requests), op is ``r``, size 4096.
``csv``
    ``time,page,op,size`` with op ``r`` or ``w``; a header line naming the
    columns is optional (and, when present, may order them differently).
    ``op`` and ``size`` may be omitted (``r`` and 4096).  This is also what
    ``swapd serve --record FILE`` writes (``swapd/daemon/recorder.py``), with
    three more ops: ``e`` a page the daemon evicted (stored in its layer), ``p``
    a page it brought in by readahead (loaded without a fault), ``a`` a resident
    page its software referenced bit found referenced (a sampled hit).  These
    are events, not accesses: the readers skip them unless asked
    (``events=True`` yields all three; ``refbit=True`` yields the ``a`` rows as
    read accesses), so that a replay lets the simulated policy make its own
    eviction decisions, while the daemon's are kept in the file for comparison
    (docs/simulator.md).
``oracleGeneral``
    libCacheSim's binary trace: packed 24-byte little-endian records::

        struct {                      /* libCacheSim traceReader/customizedReader/ */
            uint32_t clock_time;      /*   oracle/oracleGeneralBin.h               */
            uint64_t obj_id;
            uint32_t obj_size;
            int64_t  next_access_vtime;   /* -1: never again */
        } __attribute__((packed));

    As in libCacheSim's reader, records with ``obj_size == 0`` are skipped;
    ``next_access_vtime`` is the 1-based index of the next request to the same
    object (libCacheSim ``bin/traceUtils/traceConvOracleGeneral.cpp`` computes
    it in a backward pass) and the writer here computes it the same way.  The
    format has no op: every request reads.  A ``.zst`` suffix (the way public
    libCacheSim traces are shipped) is decompressed on the fly when the
    ``zstd`` extra is installed, for every format.

Invariants.  Readers are generators: they never hold more than one buffer of
the file.  Every malformed record raises
:class:`~swapd.errors.TraceFormatError` ``(path, record, reason)`` where
``record`` is 1-based (for the text formats, the line number).

Prior art: libCacheSim's readers (``libCacheSim/traceReader``), whose formats
and skipping rules are carried over so that public traces replay unchanged.
"""

from __future__ import annotations

import io
import os
import struct
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any, NamedTuple, cast

from swapd.errors import ConfigError, TraceFormatError
from swapd.pages import PAGE_SIZE

MAX_PAGE_ID = (1 << 64) - 1

FORMATS = ("text", "csv", "oracleGeneral")
_ALIASES = {
    "text": "text", "txt": "text", "plain": "text",
    "csv": "csv",
    "oraclegeneral": "oracleGeneral", "oracle": "oracleGeneral", "bin": "oracleGeneral",
    "binary": "oracleGeneral", "lcs": "oracleGeneral",
}

# struct { u32 clock_time; u64 obj_id; u32 obj_size; i64 next_access_vtime; } packed, LE
ORACLE_RECORD = struct.Struct("<IQIq")
assert ORACLE_RECORD.size == 24
_BIN_CHUNK = ORACLE_RECORD.size * 8192


class Request(NamedTuple):
    """One trace record: a page access.

    ``time``: trace time (seconds or virtual time, as the source has it).
    ``page``: page id, ``0 <= page < 2**64``.  ``op``: ``"r"`` or ``"w"``, or an
    event recorded by the daemon (not an access): ``"e"`` eviction, ``"p"``
    readahead load, ``"a"`` referenced-bit sample.
    ``size``: bytes accessed (4096 for page traces).
    """

    time: int | float
    page: int
    op: str = "r"
    size: int = PAGE_SIZE


def normalize_format(name: str) -> str:
    """Return the canonical format name for ``name`` (ConfigError if unknown)."""
    try:
        return _ALIASES[name.lower()]
    except KeyError:
        raise ConfigError(
            f"unknown trace format {name!r}; choose one of {', '.join(FORMATS)}"
        ) from None


def _open_binary(path: str | os.PathLike[str]) -> IO[bytes]:
    p = os.fspath(path)
    try:
        return _open_binary_raw(p)
    except FileNotFoundError as exc:
        raise ConfigError(f"{p}: no such trace file") from exc
    except IsADirectoryError as exc:
        raise ConfigError(f"{p}: is a directory, not a trace file") from exc


def _open_binary_raw(p: str) -> IO[bytes]:
    if p.endswith(".zst"):
        try:
            import zstandard
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise ConfigError(
                f"{p}: reading .zst traces needs the zstd extra: pip install 'swapd[zstd]'"
            ) from exc
        raw = open(p, "rb")  # noqa: SIM115 - closed by the stream reader
        reader: Any = zstandard.ZstdDecompressor().stream_reader(raw, closefd=True)
        return cast(IO[bytes], io.BufferedReader(reader))
    return open(p, "rb")


def _strip_zst(path: str) -> str:
    return path[:-4] if path.endswith(".zst") else path


def detect_format(path: str | os.PathLike[str]) -> str:
    """Guess the format of the trace at ``path``.  O(1): reads at most 4 KiB.

    The file name decides first (``.txt``, ``.csv``, ``.oracleGeneral``,
    ``.bin``, optionally followed by ``.zst``); otherwise the content does: a
    NUL byte or bytes that are not UTF-8 mean oracleGeneral, a comma in the
    first data line means CSV, anything else is text.
    """
    p = _strip_zst(os.fspath(path))
    lower = p.lower()
    if lower.endswith(".csv"):
        return "csv"
    if lower.endswith((".txt", ".trace.txt")):
        return "text"
    if lower.endswith((".oraclegeneral", ".bin", ".og")) or "oraclegeneral" in lower:
        return "oracleGeneral"
    with _open_binary(path) as f:
        head = f.read(4096)
    if not head:
        return "text"
    if b"\0" in head:
        return "oracleGeneral"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(head) - 4:  # not merely a character cut at the 4 KiB boundary
            return "oracleGeneral"
        text = head[: exc.start].decode("utf-8")
    for line in text.splitlines():
        s = line.strip()
        if s and not s.startswith("#"):
            return "csv" if "," in s else "text"
    return "text"


def _parse_page(path: str, record: int, s: str) -> int:
    s = s.strip()
    try:
        v = int(s, 16) if s[:2].lower() == "0x" else int(s)
    except ValueError:
        raise TraceFormatError(path, record, f"page id {s!r} is not an integer") from None
    if v < 0 or v > MAX_PAGE_ID:
        raise TraceFormatError(path, record, f"page id {v} is outside [0, 2**64)")
    return v


def _decode(path: str, lineno: int, line: bytes) -> str:
    try:
        return line.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise TraceFormatError(path, lineno, f"not UTF-8 text: {exc.reason}") from None


def _read_text(path: str, pages_only: bool) -> Iterator[int] | Iterator[Request]:
    def gen() -> Iterator[object]:
        vt = 0
        with _open_binary(path) as f:
            for lineno, line in enumerate(f, 1):
                try:
                    v = int(line)  # int() parses ASCII bytes, whitespace included
                except ValueError:
                    s = _decode(path, lineno, line).strip()
                    if not s or s[0] == "#":
                        continue
                    v = _parse_page(path, lineno, s)
                if v < 0 or v > MAX_PAGE_ID:
                    raise TraceFormatError(path, lineno, f"page id {v} is outside [0, 2**64)")
                yield v if pages_only else Request(vt, v)
                vt += 1
    return gen()  # type: ignore[return-value]


_CSV_COLUMNS = ("time", "page", "op", "size")


def _parse_csv_row(path: str, lineno: int, fields: list[str],
                   cols: tuple[int, int, int, int]) -> Request:
    ti, pi, oi, si = cols
    n = len(fields)
    if n <= max(ti, pi):
        raise TraceFormatError(path, lineno, f"expected at least {max(ti, pi) + 1} fields "
                                             f"(time,page,op,size), got {n}")
    ts = fields[ti].strip()
    try:
        t: int | float = int(ts)
    except ValueError:
        try:
            t = float(ts)
        except ValueError:
            raise TraceFormatError(path, lineno, f"time {ts!r} is not a number") from None
    page = _parse_page(path, lineno, fields[pi])
    op = "r"
    if 0 <= oi < n:
        o = fields[oi].strip().lower()
        if o in ("r", "read"):
            op = "r"
        elif o in ("w", "write"):
            op = "w"
        elif o in ("e", "evict"):
            op = "e"
        elif o in ("a", "p"):
            op = o
        elif o:
            raise TraceFormatError(path, lineno,
                                   f"op {fields[oi].strip()!r} is not r, w, e, p or a")
    size = PAGE_SIZE
    if 0 <= si < n and fields[si].strip():
        try:
            size = int(fields[si])
        except ValueError:
            raise TraceFormatError(path, lineno,
                                   f"size {fields[si].strip()!r} is not an integer") from None
        if size <= 0:
            raise TraceFormatError(path, lineno, f"size {size} is not positive")
    return Request(t, page, op, size)


_EVENTS = frozenset("epa")


def _read_csv(path: str, pages_only: bool, events: bool = False,
              refbit: bool = False) -> Iterator[int] | Iterator[Request]:
    def gen() -> Iterator[object]:
        cols = (0, 1, 2, 3)
        first = True
        with _open_binary(path) as f:
            for lineno, raw in enumerate(f, 1):
                s = _decode(path, lineno, raw).strip()
                if not s or s[0] == "#":
                    continue
                fields = s.split(",")
                if first:
                    first = False
                    names = [x.strip().lower() for x in fields]
                    if "page" in names:
                        if "time" not in names:
                            raise TraceFormatError(path, lineno,
                                                   "CSV header lacks the time column")
                        cols = tuple(  # type: ignore[assignment]
                            names.index(c) if c in names else -1 for c in _CSV_COLUMNS)
                        continue
                r = _parse_csv_row(path, lineno, fields, cols)
                if r.op in _EVENTS and not events:
                    if not (refbit and r.op == "a"):
                        continue
                    r = r._replace(op="r")
                yield r.page if pages_only else r
    return gen()  # type: ignore[return-value]


def _read_oracle(path: str, pages_only: bool) -> Iterator[int] | Iterator[Request]:
    rec = ORACLE_RECORD
    rsize = rec.size

    def gen() -> Iterator[object]:
        n = 0  # records consumed so far
        with _open_binary(path) as f:
            while True:
                buf = f.read(_BIN_CHUNK)
                if not buf:
                    return
                tail = len(buf) % rsize
                if tail:
                    more = f.read(rsize - tail)
                    buf += more
                    tail = len(buf) % rsize
                    if tail:
                        raise TraceFormatError(
                            path, n + len(buf) // rsize + 1,
                            f"truncated record: {tail} of {rsize} bytes at the end of the file")
                for t, obj, size, nxt in rec.iter_unpack(buf):
                    n += 1
                    if size == 0:  # skipped, as libCacheSim's reader does
                        continue
                    if nxt < -1:
                        raise TraceFormatError(path, n, f"next_access_vtime {nxt} is below -1")
                    yield obj if pages_only else Request(t, obj, "r", size)
    return gen()  # type: ignore[return-value]


_READERS = {"text": _read_text, "csv": _read_csv, "oracleGeneral": _read_oracle}


def read_trace(path: str | os.PathLike[str], fmt: str | None = None, *,
               events: bool = False, refbit: bool = False) -> Iterator[Request]:
    """Stream the requests of the trace at ``path`` (format detected if ``fmt`` is None).

    ``events=True`` also yields the daemon's event rows (ops ``e``, ``p``, ``a``) of a
    CSV trace; ``refbit=True`` yields its ``a`` rows as read accesses.  O(1) memory;
    O(n) time.  Raises TraceFormatError on the first malformed record, ConfigError if
    the file does not exist.
    """
    p = os.fspath(path)
    f = normalize_format(fmt) if fmt else detect_format(p)
    if f == "csv":
        return _read_csv(p, False, events, refbit)  # type: ignore[return-value]
    return _READERS[f](p, False)  # type: ignore[return-value]


def read_pages(path: str | os.PathLike[str], fmt: str | None = None, *,
               refbit: bool = False) -> Iterator[int]:
    """Stream only the page ids of the trace at ``path`` (the fast path of policy-only mode).

    ``refbit=True``: a recorded trace's referenced-bit samples count as accesses."""
    p = os.fspath(path)
    f = normalize_format(fmt) if fmt else detect_format(p)
    if f == "csv":
        return _read_csv(p, True, False, refbit)  # type: ignore[return-value]
    return _READERS[f](p, True)  # type: ignore[return-value]


def _as_request(r: Request | int, i: int) -> Request:
    return Request(i, r) if isinstance(r, int) else r


def next_access_vtimes(pages: list[int]) -> list[int]:
    """For each request, the 1-based index of the next request to the same page, or -1.

    O(n) time and O(distinct pages) memory: one backward pass, as libCacheSim's
    ``traceConv`` does.
    """
    out = [-1] * len(pages)
    last: dict[int, int] = {}
    for i in range(len(pages) - 1, -1, -1):
        p = pages[i]
        j = last.get(p)
        if j is not None:
            out[i] = j + 1
        last[p] = i
    return out


def write_trace(path: str | os.PathLike[str], requests: Iterable[Request | int],
                fmt: str | None = None) -> int:
    """Write ``requests`` (Requests or bare page ids) to ``path``; return the count.

    ``fmt`` defaults to the format the file name implies (CSV otherwise).  The
    text format keeps page ids only; oracleGeneral keeps time (as u32), page
    and size and drops the op (it has none), and needs one pass over the
    requests held in memory to compute ``next_access_vtime``.  Raises
    TraceFormatError for a value the format cannot hold.
    """
    p = os.fspath(path)
    f = normalize_format(fmt) if fmt else _format_from_name(p)
    tmp = Path(p + ".tmp")
    n = 0
    if f == "oracleGeneral":
        reqs = [_as_request(r, i) for i, r in enumerate(requests)]
        nxt = next_access_vtimes([r.page for r in reqs])
        pack = ORACLE_RECORD.pack
        with open(tmp, "wb") as out:
            chunk: list[bytes] = []
            for i, r in enumerate(reqs):
                t = int(r.time)
                if not 0 <= t < (1 << 32):
                    raise TraceFormatError(p, i + 1, f"time {r.time} does not fit a u32")
                if not 0 < r.size < (1 << 32):
                    raise TraceFormatError(p, i + 1, f"size {r.size} does not fit a nonzero u32")
                if not 0 <= r.page <= MAX_PAGE_ID:
                    raise TraceFormatError(p, i + 1, f"page id {r.page} is outside [0, 2**64)")
                chunk.append(pack(t, r.page, r.size, nxt[i]))
                if len(chunk) >= 8192:
                    out.write(b"".join(chunk))
                    chunk.clear()
            out.write(b"".join(chunk))
        n = len(reqs)
    else:
        with open(tmp, "w", encoding="utf-8") as out:
            if f == "csv":
                out.write("time,page,op,size\n")
            lines: list[str] = []
            for i, r0 in enumerate(requests):
                r = _as_request(r0, i)
                if not 0 <= r.page <= MAX_PAGE_ID:
                    raise TraceFormatError(p, i + 1, f"page id {r.page} is outside [0, 2**64)")
                if f == "csv":
                    if r.op not in ("r", "w", "e", "p", "a"):
                        raise TraceFormatError(p, i + 1, f"op {r.op!r} is not r, w, e, p or a")
                    lines.append(f"{r.time},{r.page},{r.op},{r.size}\n")
                else:
                    lines.append(f"{r.page}\n")
                n += 1
                if len(lines) >= 8192:
                    out.write("".join(lines))
                    lines.clear()
            out.write("".join(lines))
    if p.endswith(".zst"):
        try:
            import zstandard
        except ImportError as exc:  # pragma: no cover - depends on the install
            tmp.unlink()
            raise ConfigError(f"{p}: writing .zst needs the zstd extra") from exc
        ztmp = Path(p + ".ztmp")
        with open(tmp, "rb") as src, open(ztmp, "wb") as dst:
            zstandard.ZstdCompressor().copy_stream(src, dst)
        tmp.unlink()
        tmp = ztmp
    os.replace(tmp, p)
    return n


def _format_from_name(path: str) -> str:
    lower = _strip_zst(path).lower()
    if lower.endswith(".txt"):
        return "text"
    if lower.endswith((".oraclegeneral", ".bin", ".og")) or "oraclegeneral" in lower:
        return "oracleGeneral"
    return "csv"
