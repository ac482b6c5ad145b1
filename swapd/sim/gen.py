"""Seeded synthetic workloads for the simulator.

Design.  Each generator is a function ``(n, rng, **params) -> Iterator[Request]``
producing ``n`` page accesses at virtual times ``0..n-1``; every random draw
comes from the one injected ``random.Random(seed)``, so a workload is a pure
function of its parameters and seed.  Every request is a write with
probability ``write_ratio`` (a write changes the page's contents in full mode).
The kinds:

``zipf``
    Independent draws from a Zipf(``alpha``) popularity over ``pages`` pages:
    P(rank k) ~ 1/k**alpha.  Ranks are mapped to page ids by a seeded
    permutation, so popularity is not correlated with the page id.  This is the
    independent reference model libCacheSim's synthetic generator also uses.
``scan``
    A hot set of ``hot`` pages accessed uniformly at random, interrupted every
    ``scan_every`` accesses by a sequential scan of ``scan_len`` pages of a
    cold region of ``cold`` pages (each scan continues where the last one
    stopped, wrapping).  The classic test of scan resistance (2Q, ARC, S3-FIFO).
``shift``
    A working set of ``wss`` contiguous pages accessed uniformly at random; every
    ``period`` accesses the window slides forward by ``step`` pages, wrapping
    within ``pages``.  Models phase changes (refault-driven sizing).
``loop``
    A cyclic sequential loop over ``pages`` pages: 0, 1, ..., pages-1, 0, ...
    LRU's pathological case when the capacity is below the loop length.
``mix``
    Other generators combined.  ``parts`` lists them as
    ``KIND:WEIGHT[/NAME=VALUE...]`` separated by commas, e.g.
    ``zipf:3/alpha=0.9,scan:1/hot=500``.  With ``phase_len`` 0 the parts are
    interleaved request by request, each request drawn from part i with
    probability weight_i / sum(weights); with ``phase_len`` N > 0 the trace is a
    sequence of phases, part i running alone for N * weight_i requests, the
    parts in turn (a program moving between phases).  Each part has its own
    random stream (seeded from the mix's) and, unless ``shared`` is true, its own
    page ids (part i's ids are offset by i * 2**40), so parts compete for the
    cache without aliasing.

Prior art: the independent reference model and loop/scan patterns of the
cache literature (e.g. Megiddo & Modha, ARC, FAST '03; Yang et al., S3-FIFO,
SOSP '23) and libCacheSim's ``data_gen`` zipf generator.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import accumulate
from typing import Any

from swapd.config import parse_literal
from swapd.errors import ConfigError
from swapd.sim.trace import Request

_BATCH = 4096


def _ops(rng: random.Random, k: int, write_ratio: float) -> list[str]:
    if write_ratio <= 0.0:
        return ["r"] * k
    rnd = rng.random
    return ["w" if rnd() < write_ratio else "r" for _ in range(k)]


def _positive(name: str, v: int) -> int:
    if not isinstance(v, int) or v <= 0:
        raise ConfigError(f"generator parameter {name} must be a positive integer, got {v!r}")
    return v


def _ratio(v: float) -> float:
    if not 0.0 <= v <= 1.0:
        raise ConfigError(f"write_ratio must be within [0, 1], got {v}")
    return float(v)


def zipf(n: int, rng: random.Random, *, pages: int = 10000, alpha: float = 1.0,
         write_ratio: float = 0.0) -> Iterator[Request]:
    """Zipf(``alpha``) over ``pages`` pages.  O(pages) setup, O(log pages) per request."""
    _positive("pages", pages)
    wr = _ratio(write_ratio)
    if alpha < 0:
        raise ConfigError(f"zipf alpha must be >= 0, got {alpha}")
    cum = list(accumulate(1.0 / (k ** alpha) for k in range(1, pages + 1)))
    perm = list(range(pages))
    rng.shuffle(perm)
    ranks = range(pages)
    t = 0
    while t < n:
        k = min(_BATCH, n - t)
        draws = rng.choices(ranks, cum_weights=cum, k=k)
        ops = _ops(rng, k, wr)
        for i in range(k):
            yield Request(t + i, perm[draws[i]], ops[i])
        t += k


def scan(n: int, rng: random.Random, *, hot: int = 1000, cold: int = 100000,
         scan_len: int = 2000, scan_every: int = 10000,
         write_ratio: float = 0.0) -> Iterator[Request]:
    """Uniform hot set ``[0, hot)`` with sequential scans over ``[hot, hot+cold)``.  O(1)/req."""
    _positive("hot", hot)
    _positive("cold", cold)
    _positive("scan_len", scan_len)
    _positive("scan_every", scan_every)
    wr = _ratio(write_ratio)
    rnd = rng.randrange
    t = 0
    since = 0
    pos = 0
    while t < n:
        if since >= scan_every:
            for _ in range(min(scan_len, n - t)):
                yield Request(t, hot + pos, "w" if wr and rng.random() < wr else "r")
                pos = (pos + 1) % cold
                t += 1
            since = 0
            continue
        yield Request(t, rnd(hot), "w" if wr and rng.random() < wr else "r")
        since += 1
        t += 1


def shift(n: int, rng: random.Random, *, pages: int = 100000, wss: int = 2000,
          period: int = 20000, step: int = 500, write_ratio: float = 0.0) -> Iterator[Request]:
    """A uniform working set of ``wss`` pages sliding by ``step`` every ``period``.  O(1)/req."""
    _positive("pages", pages)
    _positive("wss", wss)
    _positive("period", period)
    _positive("step", step)
    if wss > pages:
        raise ConfigError(f"shift: wss ({wss}) exceeds pages ({pages})")
    wr = _ratio(write_ratio)
    rnd = rng.randrange
    base = 0
    for t in range(n):
        if t and t % period == 0:
            base = (base + step) % pages
        yield Request(t, (base + rnd(wss)) % pages, "w" if wr and rng.random() < wr else "r")


def loop(n: int, rng: random.Random, *, pages: int = 5000,
         write_ratio: float = 0.0) -> Iterator[Request]:
    """0, 1, ..., pages-1, 0, 1, ...  O(1)/req (the rng only draws writes)."""
    _positive("pages", pages)
    wr = _ratio(write_ratio)
    for t in range(n):
        yield Request(t, t % pages, "w" if wr and rng.random() < wr else "r")


def _parse_parts(spec: str) -> list[tuple[str, float, dict[str, Any]]]:
    """``KIND:WEIGHT[/NAME=VALUE...]`` items separated by commas -> (kind, weight, params)."""
    out: list[tuple[str, float, dict[str, Any]]] = []
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError("mix: parts must name at least one generator, e.g. 'zipf:3,loop:1'")
    for item in spec.split(","):
        fields = item.strip().split("/")
        head = fields[0]
        kind, _, w = head.partition(":")
        kind = kind.strip()
        if kind == "mix":
            raise ConfigError("mix: a part cannot itself be a mix")
        if kind not in GENERATORS:
            raise ConfigError(f"mix: unknown generator {kind!r} in parts; choose from "
                              f"{', '.join(k for k in sorted(GENERATORS) if k != 'mix')}")
        try:
            weight = float(w) if w.strip() else 1.0
        except ValueError:
            raise ConfigError(f"mix: weight {w!r} of part {kind!r} is not a number") from None
        if not weight > 0 or weight != weight or weight == float("inf"):
            raise ConfigError(f"mix: weight of part {kind!r} must be positive, got {w!r}")
        params: dict[str, Any] = {}
        for kv in fields[1:]:
            k, eq, v = kv.partition("=")
            if not eq:
                raise ConfigError(f"mix: expected NAME=VALUE in part {kind!r}, got {kv!r}")
            params[k.strip()] = parse_literal(v.strip())
        bad = set(params) - set(GENERATORS[kind].params)
        if bad:
            raise ConfigError(f"mix: generator {kind!r} does not take {', '.join(sorted(bad))}; "
                              f"it takes {', '.join(GENERATORS[kind].params)}")
        out.append((kind, weight, params))
    return out


MIX_STRIDE = 1 << 40


def mix(n: int, rng: random.Random, *, parts: str = "zipf:3,scan:1", phase_len: int = 0,
        shared: bool = False, write_ratio: float = -1.0) -> Iterator[Request]:
    """Other generators interleaved by weight, or in phases.  O(1)/req plus the parts' cost."""
    spec = _parse_parts(parts)
    if not isinstance(phase_len, int) or phase_len < 0:
        raise ConfigError(f"mix: phase_len must be an integer >= 0, got {phase_len!r}")
    if write_ratio != -1.0:
        _ratio(write_ratio)
    streams: list[Iterator[Request]] = []
    for kind, _w, params in spec:
        prm = dict(params)
        if write_ratio >= 0 and "write_ratio" not in prm:
            prm["write_ratio"] = write_ratio
        sub = random.Random(rng.getrandbits(64))
        streams.append(GENERATORS[kind].func(n, sub, **prm))
    weights = [w for _k, w, _p in spec]
    offsets = [0 if shared else i * MIX_STRIDE for i in range(len(spec))]
    t = 0
    if phase_len > 0:
        lens = [max(1, round(phase_len * w)) for w in weights]
        i = 0
        while t < n:
            st, off = streams[i], offsets[i]
            for _ in range(min(lens[i], n - t)):
                r = next(st)
                yield Request(t, r.page + off, r.op)
                t += 1
            i = (i + 1) % len(streams)
        return
    idx = range(len(streams))
    while t < n:
        k = min(_BATCH, n - t)
        for i in rng.choices(idx, weights=weights, k=k):
            r = next(streams[i])
            yield Request(t, r.page + offsets[i], r.op)
            t += 1


@dataclass(frozen=True)
class GeneratorInfo:
    """A registered generator: its function and its parameters' defaults."""

    name: str
    func: Callable[..., Iterator[Request]]
    params: dict[str, Any]

    @property
    def doc(self) -> str:
        return (self.func.__doc__ or "").strip().splitlines()[0]


GENERATORS: dict[str, GeneratorInfo] = {
    "zipf": GeneratorInfo("zipf", zipf, {"pages": 10000, "alpha": 1.0, "write_ratio": 0.0}),
    "scan": GeneratorInfo("scan", scan, {"hot": 1000, "cold": 100000, "scan_len": 2000,
                                         "scan_every": 10000, "write_ratio": 0.0}),
    "shift": GeneratorInfo("shift", shift, {"pages": 100000, "wss": 2000, "period": 20000,
                                            "step": 500, "write_ratio": 0.0}),
    "loop": GeneratorInfo("loop", loop, {"pages": 5000, "write_ratio": 0.0}),
    "mix": GeneratorInfo("mix", mix, {"parts": "zipf:3,scan:1", "phase_len": 0,
                                      "shared": False, "write_ratio": -1.0}),
}

#: One line per parameter, for ``swapd sim gen --help``.
PARAM_DOCS: dict[str, dict[str, str]] = {
    "zipf": {"pages": "distinct pages", "alpha": "skew: P(rank k) ~ 1/k**alpha (0: uniform)",
             "write_ratio": "probability that a request writes (changes the page)"},
    "scan": {"hot": "pages of the uniformly accessed hot set",
             "cold": "pages of the cold region the scans walk",
             "scan_len": "pages per scan", "scan_every": "hot accesses between scans",
             "write_ratio": "probability that a request writes"},
    "shift": {"pages": "id space the window wraps in", "wss": "working-set pages",
              "period": "requests between shifts", "step": "pages the window moves",
              "write_ratio": "probability that a request writes"},
    "loop": {"pages": "loop length", "write_ratio": "probability that a request writes"},
    "mix": {"parts": "KIND:WEIGHT[/NAME=VALUE...] items, comma-separated",
            "phase_len": "0: interleave by weight; N: phases of N*weight requests per part",
            "shared": "true: parts share page ids (default: disjoint, offset i*2**40)",
            "write_ratio": "-1: each part's own; else given to every part"},
}


def generate(kind: str, n: int, seed: int = 0, **params: Any) -> Iterator[Request]:
    """Stream ``n`` requests of workload ``kind`` from ``random.Random(seed)``.

    Raises ConfigError for an unknown kind or parameter.
    """
    try:
        info = GENERATORS[kind]
    except KeyError:
        raise ConfigError(f"unknown generator {kind!r}; choose one of "
                          f"{', '.join(sorted(GENERATORS))}") from None
    bad = set(params) - set(info.params)
    if bad:
        raise ConfigError(f"generator {kind!r} does not take {', '.join(sorted(bad))}; "
                          f"it takes {', '.join(info.params)}")
    if n < 0:
        raise ConfigError(f"number of requests must be >= 0, got {n}")
    return info.func(n, random.Random(seed), **params)
