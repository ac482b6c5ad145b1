"""Sessions (one per connected client) and the regions they hand to the daemon.

Design.  A :class:`Session` is one client connection: its peer credentials, a
pidfd that reports its exit, its quotas and resident limit, its reclaim policy
instance (victims are chosen per client, as the kernel reclaims per memcg), its
counters, and its :class:`ManagedRegion` s.  A region is one memfd the client
mapped ``MAP_SHARED`` at ``start`` and registered with a userfaultfd; the daemon
holds copies of both descriptors and the layer's region id.

Each page of a region has one state byte (``ManagedRegion.state``):

=========  ===================================================================
HOLE       nothing in the memfd, nothing stored: a fault gets UFFDIO_ZEROPAGE
RESIDENT   in the memfd's page cache; tracked by the session's reclaim policy
           (unless an eviction batch that was aborted still owns it)
EVICTING   write-protected by an eviction batch that is storing it
SWAPPED    stored in the layer; the memfd has a hole there
GONE       the client unmapped that part of the region (munmap)
=========  ===================================================================

Transitions (all under ``Session.lock``): HOLE -> RESIDENT (zero fault),
SWAPPED -> RESIDENT (fault-in or readahead), RESIDENT -> EVICTING (batch
phase 1), EVICTING -> SWAPPED (phase 3, after the punch), EVICTING -> RESIDENT
(phase 3 after a store rejection, or the pager after a WP fault: eviction
aborted), any -> HOLE (advise dontneed), any -> GONE (partial munmap).

Memory: a region's per-page arrays (its state byte, the ``clean`` byte and the 8-byte refault
clock) are mappings that cost nothing until written (:func:`lazy_zeros`, or the page-state memfd
of the restart keeper), and every value they hold for a page never touched is 0.  So a client
that maps a large region and touches few pages costs the daemon a 4 KiB page of each array per
used stretch of 4096 (state, clean) or 512 (clock) pages, not bytes per mapped page; scans over
a region (``count``, ``runs_in_use``) visit only the runs that may hold nonzero bytes.

Invariants (checked by ``_check``): ``Session.resident`` equals the number of
pages in RESIDENT or EVICTING over its live regions; every policy key is a
RESIDENT page; no two live regions of a session overlap; a region is in the
daemon's tables iff ``not dropped``.

Lock order: ``Daemon.lock`` (tables) -> ``Session.lock`` -> the layer's own
locks.  ``Session.lock`` is held by the pager for one fault, by the reclaimer
for phases 1 and 3 of a batch (never while the layer compresses in phase 2),
and by the control handlers for one request.

Prior art: the per-memcg LRU and limits of ``mm/memcontrol.c`` /
``mm/vmscan.c``; UMap's per-region fill/evict state (LLNL umap, ``PageRegion``).
"""

from __future__ import annotations

import array
import collections
import itertools
import mmap
import os
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from swapd.daemon.handover import state_runs
from swapd.errors import InvariantError
from swapd.pages import PAGE_SHIFT as PAGE_SHIFT
from swapd.pages import PAGE_SIZE as PAGE_SIZE

if TYPE_CHECKING:
    from collections.abc import Mapping

    from swapd.kernel.uffd import Userfaultfd
    from swapd.policy import Policy


HOLE, RESIDENT, EVICTING, SWAPPED, GONE = range(5)
_MAP_NORESERVE: int = getattr(mmap, "MAP_NORESERVE", 0x4000)  # include/uapi/asm-generic/mman.h
_CHUNK = 1 << 20  # pages of state a scan copies at a time
STATE_NAMES = ("HOLE", "RESIDENT", "EVICTING", "SWAPPED", "GONE")


class LayerLike(Protocol):
    """The part of ``swapd.layer.SwapLayer`` the daemon uses (the layer contract)."""

    def add_region(self, client: Any, npages: int) -> int: ...
    def remove_region(self, region: int) -> None: ...
    def remove_client(self, client: Any) -> None: ...
    def store(self, region: int, index: int, page: bytes | bytearray | memoryview) -> None: ...
    def load(self, region: int, index: int, exclusive: bool | None = None, *,
             nowait: bool = False) -> bytes: ...
    def store_clean(self, region: int, index: int) -> bool: ...
    def store_batch(self, region: int, start: int,
                    pages: bytes | bytearray | memoryview) -> list[bool]: ...
    def load_run(self, region: int, start: int, n: int,
                 into: bytes | bytearray | memoryview, exclusive: bool | None = None, *,
                 nowait: bool = False) -> int: ...
    def needs_io(self, region: int, index: int) -> bool: ...
    def same_filled_value(self, region: int, index: int) -> int | None: ...
    def swapped_run(self, region: int, index: int, max_pages: int) -> int: ...
    def invalidate(self, region: int, index: int) -> None: ...
    def has_copy(self, region: int, index: int) -> bool: ...
    def copies(self, region: int) -> bytes: ...
    def free_batch(self, region: int, start: int, n: int) -> int: ...
    def peek(self, region: int, index: int) -> bytes: ...
    def regions(self) -> dict[int, tuple[Any, int]]: ...
    def clients(self) -> list[Any]: ...
    def rename_clients(self, names: Mapping[Any, Any]) -> None: ...
    def stats(self, client: Any = None) -> Any: ...
    def tier_stats(self) -> list[dict[str, Any]]: ...
    def shrink_step(self) -> int: ...
    def _check(self) -> None: ...
    def close(self) -> None: ...


def lazy_zeros(nbytes: int) -> mmap.mmap:
    """``nbytes`` zero bytes that cost memory only where written: a private anonymous mapping
    (reads of unwritten pages map the shared zero page; ``MAP_NORESERVE``: no commit charge for
    the untouched rest).  Indexes and slices like a bytearray.  O(1)."""
    return mmap.mmap(-1, max(nbytes, 1), flags=mmap.MAP_PRIVATE | _MAP_NORESERVE)


def page_key(region_id: int, index: int) -> int:
    """The reclaim policy's key of a page: region id in the high bits.  O(1)."""
    return (region_id << 32) | index


@dataclass
class Counters:
    """Per-session event counters (under Session.lock); snapshot with ``as_dict``."""

    faults: int = 0  # MISSING faults served
    wp_faults: int = 0  # write-protect faults served
    zero_faults: int = 0  # served with UFFDIO_ZEROPAGE
    zero_ahead_pages: int = 0  # HOLE pages zero-filled ahead of a sequential first touch
    swapins: int = 0  # faults that loaded a stored page (major faults)
    refaults: int = 0  # swapins of pages evicted less than `refault_window` evictions ago
    readahead_pages: int = 0  # pages copied in ahead of a fault
    readahead_hits: int = 0  # ... later touched (approximated by sequential faults)
    evicted_pages: int = 0  # pages stored and punched
    eviction_aborts: int = 0  # a write during eviction cancelled the page's eviction
    store_rejects: int = 0  # the layer refused the page; it stayed resident
    direct_reclaims: int = 0  # batches run by a fault whose charge did not fit (direct reclaim)
    background_reclaims: int = 0  # batches run in the background (below the low watermark)
    charge_overruns: int = 0  # placements made over the limit: nothing could be evicted
    clean_drops: int = 0  # evictions of still-clean pages: dropped, their kept copy reused
    clean_faults: int = 0  # read faults placed write-protected with the copy kept
    refbit_sampled: int = 0  # pages whose referenced bit was read (PAGEMAP_SCAN)
    refbit_referenced: int = 0  # ... that had been touched since their PAGEOUT zap
    poisoned_pages: int = 0  # unrecoverable pages poisoned (SIGBUS on access)
    worker_loads: int = 0  # faults on a slow tier's page, loaded by a load worker
    load_joins: int = 0  # faults on a page a load worker was loading already (no second load)

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


class ManagedRegion:
    """One client region: memfd mapped at ``start`` in the client, ``npages`` pages."""

    def __init__(self, rid: int, session: Session, start: int, npages: int, memfd: int,
                 uffd: Userfaultfd, layer_region: int, name: str, *,
                 state: mmap.mmap | bytearray | None = None, state_fd: int = -1) -> None:
        self.id = rid  # daemon-wide, also the protocol's region id
        self.session = session
        self.start = start  # client virtual address of page 0
        self.npages = npages
        self.end = start + (npages << PAGE_SHIFT)
        self.memfd = memfd  # the daemon's copy; closed when dropped
        self.uffd = uffd  # the daemon's copy; closed when dropped
        self.layer_region = layer_region
        self.name = name
        self.file = (-1, -1)  # the memfd's (st_dev, st_ino), set once by map
        # Under Session.lock; one of HOLE..GONE per page.  With a restart keeper it maps a
        # page-state memfd (swapd.daemon.handover), so that it outlives the process.
        self.state: mmap.mmap | bytearray = state if state is not None else lazy_zeros(npages)
        self.state_fd = state_fd  # the page-state memfd, -1 if none; closed by close_state
        # Pages lost with a crashed daemon and poisoned at recovery (under Session.lock);
        # reported by ``stats`` so that a client can tell which pages will raise SIGBUS.
        self.poisoned: set[int] = set()
        # Under Session.lock: 1 = RESIDENT, write-protected, and the layer keeps its clean
        # copy (a read fault's non-exclusive load); a write clears it and frees the copy.
        # Not kept across a restart: an adopted page is treated as dirty (its stale kept
        # copy is replaced when it is stored again).
        self.clean = lazy_zeros(npages)
        self.dropped = False  # under Session.lock; True once freed (fds closed)
        # Readahead (under Session.lock): window in pages, index expected next if sequential.
        self.ra_window = 0
        self.ra_next = -1
        # Software referenced bit sweep (reclaimer only): next slice to zap, slice zapped last.
        self.sweep_cursor = 0
        self.sweep_pending: tuple[int, int] | None = None
        # Pages a load worker is loading -> their LoadJob (swapd/daemon/loader.py), under
        # Session.lock: a fault on one joins that load instead of starting another.
        self.loading: dict[int, Any] = {}
        # Faults read while draining for an EAGAIN retry, served next (under Session.lock).
        self.pending: collections.deque[Any] = collections.deque()
        # Per page: Session.eviction_seq when last evicted (>= 1; 0: never evicted), for the
        # refault distance (mm/workingset.c); under Session.lock.
        self._seq_map = lazy_zeros(8 * npages)
        self.evicted_seq = memoryview(self._seq_map).cast("q")

    def address(self, index: int) -> int:
        return self.start + (index << PAGE_SHIFT)

    def index_of(self, address: int) -> int:
        """Page index of a client address, or -1 if outside the region.  O(1)."""
        if self.start <= address < self.end:
            return (address - self.start) >> PAGE_SHIFT
        return -1

    def runs_in_use(self, lo: int = 0, hi: int | None = None) -> list[tuple[int, int]]:
        """``(first, count)`` runs of pages in [lo, hi) (default: the region) whose state may
        be other than HOLE, in chunks of at most ``_CHUNK`` pages: with a page-state memfd,
        the runs its ``lseek(SEEK_DATA)`` reports (a scan must not read its holes: a shmem
        read fault allocates them); else the whole range (unwritten pages of a private
        mapping read as the zero page).  O(runs)."""
        hi = self.npages if hi is None else min(hi, self.npages)
        runs = (state_runs(self.state_fd, self.npages) if self.state_fd >= 0
                else [(0, self.npages)])
        out: list[tuple[int, int]] = []
        for a, n in runs:
            a, e = max(a, lo), min(a + n, hi)
            out.extend((b, min(_CHUNK, e - b)) for b in range(a, e, _CHUNK))
        return out

    def state_counts(self) -> list[int]:
        """Pages in each state, indexed by state code.  O(pages in use)."""
        found = [0] * len(STATE_NAMES)
        for first, n in self.runs_in_use():
            raw = bytes(self.state[first:first + n])
            for code in (RESIDENT, EVICTING, SWAPPED, GONE):
                found[code] += raw.count(code)
        found[HOLE] = self.npages - sum(found)
        return found

    def count(self, *states: int) -> int:
        """Pages in any of ``states``.  O(pages in use)."""
        found = self.state_counts()
        return sum(found[s] for s in set(states))

    def close_state(self) -> None:
        """Unmap and close the page-state memfd (after the region is dropped).  Idempotent."""
        if self.state_fd >= 0:
            runs = self.runs_in_use()
            state, self.state = self.state, lazy_zeros(self.npages)
            for first, n in runs:
                self.state[first:first + n] = state[first:first + n]
            if isinstance(state, mmap.mmap):
                state.close()
            os.close(self.state_fd)
            self.state_fd = -1

    def __repr__(self) -> str:
        return f"<region {self.id} {self.name!r} {self.start:#x}+{self.npages}p>"


class Session:
    """One connected client (see the module docstring)."""

    def __init__(self, sid: int, pid: int, uid: int, gid: int, *, limit_pages: int,
                 policy: Policy, latency_samples: int) -> None:
        self.id = sid  # also the layer's client id
        self.pid = pid
        self.uid = uid
        self.gid = gid
        self.name = ""
        self.lock = threading.Lock()
        self.pidfd = -1  # closed at teardown
        self.hello = False  # handshake done
        self.token = ""  # secret naming the session to a re-attaching connection (hello)
        self.conn: Any = None  # the daemon's Connection (main thread only)
        self.regions: dict[int, ManagedRegion] = {}  # under lock; live regions by id
        self.managed_pages = 0  # under lock; sum of live regions' npages
        self.limit_pages = limit_pages  # under lock; resident limit
        self.resident = 0  # under lock; pages RESIDENT or EVICTING
        self.policy = policy  # under lock; keys are page_key(region, index) of RESIDENT pages
        self.counters = Counters()  # under lock
        self.latency_ns = SampleRing(latency_samples)
        # Fault service times as a histogram (swapd/metrics.py): fault_hist[ns.bit_length()]
        # counts, fault_ns sums.  Loop thread only, no lock: one writer, readers copy.
        self.fault_hist = [0] * 64
        self.fault_ns = 0
        self.recorder: Any = None  # ctl "record": this client's own trace (Recorder), or None
        self.dead = False  # under lock; torn down (pidfd HUP, EOF, ESRCH)
        self.evicting = 0  # under lock; eviction batches in phase 2
        self.reclaiming = False  # reclaimer only: over the limit, not yet at the low watermark
        self.layer_freed = False  # under lock; layer.remove_client done
        self.eviction_seq = 0  # under lock; evictions so far (refault distance clock)

    def _assert_locked(self) -> None:
        assert self.lock.locked(), "Session.lock must be held"

    def over_limit(self) -> int:
        """Pages above the resident limit (0 if under).  O(1); caller holds the lock."""
        return max(0, self.resident - self.limit_pages)

    def _check(self) -> None:
        """Verify the invariants of the module docstring.  O(pages + policy)."""
        with self.lock:
            resident = 0
            spans = []
            for rid, r in self.regions.items():
                if r.id != rid or r.dropped:
                    raise InvariantError(f"session {self.id}: region table broken at {rid}")
                resident += r.count(RESIDENT, EVICTING)
                spans.append((r.start, r.end))
            if resident != self.resident:
                raise InvariantError(f"session {self.id}: resident {self.resident} != "
                                     f"{resident} pages RESIDENT/EVICTING")
            spans.sort()
            for (_, e0), (s1, _) in itertools.pairwise(spans):
                if s1 < e0:
                    raise InvariantError(f"session {self.id}: overlapping regions")
            if len(self.policy) > resident:
                raise InvariantError(f"session {self.id}: policy tracks {len(self.policy)} "
                                     f"keys for {resident} resident pages")
            for r in self.regions.values():
                for first in range(0, r.npages, _CHUNK):
                    raw = bytes(r.clean[first:min(r.npages, first + _CHUNK)])
                    for m in re.finditer(b"[^\x00]", raw):
                        i = first + m.start()
                        if r.state[i] != RESIDENT:
                            raise InvariantError(f"session {self.id}: page {i} of region "
                                                 f"{r.id} is marked clean in state "
                                                 f"{STATE_NAMES[r.state[i]]}")
                for i in itertools.chain.from_iterable(
                        range(a, a + n) for a, n in r.runs_in_use()):
                    st = r.state[i]
                    if page_key(r.id, i) in self.policy and st != RESIDENT:
                        raise InvariantError(f"session {self.id}: policy tracks page {i} of "
                                             f"region {r.id} in state {STATE_NAMES[st]}")
            self.policy._check()

    def close_fds_locked(self) -> None:
        """Close the pidfd (teardown).  Caller holds the lock."""
        self._assert_locked()
        if self.pidfd >= 0:
            os.close(self.pidfd)
            self.pidfd = -1


class SampleRing:
    """The last ``maxlen`` fault service times, 8 bytes each (int64 in an ``array``).

    A deque of Python ints costs about 36 bytes a sample (the int object and its slot), so
    a session's 65,536 samples were 2.4 MB; here they are 512 KB at most, and the array only
    grows (amortised, as a list does) until it is full, then overwrites its oldest sample.
    Iteration yields oldest first.  One writer (the loop thread); readers copy with ``list``.
    """

    __slots__ = ("_a", "_i", "maxlen")

    def __init__(self, maxlen: int) -> None:
        if maxlen < 1:
            raise ValueError(f"maxlen {maxlen} must be at least 1")
        self.maxlen = maxlen
        self._a = array.array("q")
        self._i = 0  # the oldest sample once full

    def append(self, ns: int) -> None:
        a = self._a
        if len(a) < self.maxlen:
            a.append(ns)
        else:
            a[self._i] = ns
            self._i = (self._i + 1) % self.maxlen

    def __len__(self) -> int:
        return len(self._a)

    def __iter__(self) -> Iterator[int]:
        a, i = self._a, self._i
        return itertools.chain(a[i:], a[:i])


@dataclass(frozen=True)
class LatencySummary:
    """Fault service-time percentiles in microseconds over the kept samples."""

    count: int
    p50_us: float
    p90_us: float
    p99_us: float
    max_us: float

    @staticmethod
    def of(samples_ns: list[int]) -> LatencySummary:
        """Summarize ``samples_ns``.  O(n log n)."""
        if not samples_ns:
            return LatencySummary(0, 0.0, 0.0, 0.0, 0.0)
        s = sorted(samples_ns)
        n = len(s)

        def pct(p: float) -> float:
            return s[min(n - 1, int(p * n))] / 1000.0

        return LatencySummary(n, pct(0.50), pct(0.90), pct(0.99), s[-1] / 1000.0)

    def as_dict(self) -> dict[str, float | int]:
        return {"count": self.count, "p50_us": self.p50_us, "p90_us": self.p90_us,
                "p99_us": self.p99_us, "max_us": self.max_us}
