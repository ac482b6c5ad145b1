"""The resident-set sizer (swapd.policy.sizer) and the layer's clean copies."""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import pytest

from swapd.arena import PAGE_SIZE
from swapd.errors import ConfigError, StoreRejected
from swapd.layer import EntryState
from swapd.policy.sizer import SizerConfig, WatermarkSizer, make_sizer
from tests.test_layer import make_layer, text_page


@dataclass
class Acct:
    resident: int
    limit_pages: int
    reclaiming: bool = False


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_charge_fits_shrinks_or_reclaims() -> None:
    s = WatermarkSizer(SizerConfig(batch_pages=32, low_watermark_pages=16))
    a = Acct(resident=100, limit_pages=256)
    assert (s.charge(a, 64).reclaim, s.charge(a, 64).allowed) == (0, 64)
    a.resident = 240  # 16 pages of room: a readahead run is shrunk, no reclaim
    c = s.charge(a, 64)
    assert (c.reclaim, c.allowed) == (0, 16)
    a.resident = 256  # no room: the faulting client reclaims a batch first
    c = s.charge(a, 64)
    assert (c.reclaim, c.allowed) == (32, 32)
    assert s.charge(a, 1, minimum=0).allowed == 0  # a prefetch never reclaims
    c = s.charge(Acct(5, 0), 1)  # a zero limit: evict everything, place the faulting page
    assert (c.reclaim, c.allowed) == (5, 1)


def test_background_hysteresis_and_global_limit() -> None:
    s = WatermarkSizer(SizerConfig(batch_pages=32, low_watermark_pages=16,
                                   global_limit_pages=1000))
    a = Acct(resident=230, limit_pages=256)  # headroom 26 >= 16: nothing due
    assert s.background(a) == 0 and not a.reclaiming
    a.resident = 250  # headroom 6 < 16: reclaim until headroom 48, a batch at a time
    assert s.background(a) == 32 and a.reclaiming
    a.resident = 218  # headroom 38: still reclaiming (hysteresis), 10 more pages
    assert s.background(a) == 10
    a.resident = 208
    assert s.background(a) == 0 and not a.reclaiming
    a.resident = 230  # below the low watermark again? no: headroom 26
    assert s.background(a) == 0
    assert s.global_excess(990) == 0 and s.global_excess(1010) == 10
    assert s.global_excess(5000) == 32


def test_background_due_when_idle_or_deferred_too_long() -> None:
    clock = Clock()
    s = make_sizer("watermark", SizerConfig(max_defer_s=0.01), clock)
    assert s.background_due(idle=True)
    clock.t = 0.005
    assert not s.background_due(idle=False)
    clock.t = 0.02
    assert s.background_due(idle=False)
    with pytest.raises(ConfigError, match="unknown sizer"):
        make_sizer("nope", SizerConfig(), clock)
    with pytest.raises(ConfigError, match="batch_pages"):
        SizerConfig(batch_pages=0)


def test_sizer_random_stress_keeps_the_limit() -> None:
    """Seeded random placements and evictions: after doing what the sizer says, the
    resident set never exceeds the limit (reclaim always possible here)."""
    rng = random.Random(9)
    for slack in (0, 8):
        s = WatermarkSizer(SizerConfig(batch_pages=rng.choice([1, 8, 64]),
                                       low_watermark_pages=rng.choice([0, 4, 64]),
                                       hard_slack_pages=slack))
        a = Acct(resident=0, limit_pages=rng.randrange(1, 300))
        for _ in range(5000):
            want = rng.randrange(1, 80)
            minimum = rng.choice([0, 1, 1, 1])
            c = s.charge(a, want, minimum)
            s._check_charge(a, want, minimum, c)
            a.resident -= c.reclaim
            a.resident += c.allowed
            assert 0 <= a.resident <= max(a.limit_pages + slack, minimum)
            if rng.random() < 0.3:
                a.resident -= min(a.resident, s.background(a))
            if rng.random() < 0.01:
                a.limit_pages = rng.randrange(1, 300)
                a.resident -= max(0, a.resident - a.limit_pages)


def test_layer_keeps_clean_copies_and_frees_them_first(tmp_path: Path) -> None:
    """Non-exclusive loads keep clean copies (clean_kept_bytes); store_clean reuses one; a
    full pool frees clean copies before it writes anything back."""
    rng = random.Random(4)
    pages = [text_page(rng) for _ in range(120)]
    lay = make_layer("zsmalloc", tmp_path, pool_limit_bytes=40 * PAGE_SIZE)
    try:
        r = lay.add_region("a", 400)
        for i in range(40):
            lay.store(r, i, pages[i])
        for i in range(40):
            assert lay.load(r, i, exclusive=False) == pages[i]
        st = lay.stats()
        assert st.clean_kept_bytes > 0 and lay.state(r, 0) is EntryState.RESIDENT
        assert lay.store_clean(r, 0)  # swapped out again without data
        assert lay.load(r, 0, exclusive=True) == pages[0]
        assert not lay.has_copy(r, 0)
        lay._check()
        wb0 = lay.stats().written_back_pages
        for i in range(40, 120):  # fill the pool: the clean copies go first
            lay.store(r, i, pages[i])
            lay._check()
        st = lay.stats()
        assert st.clean_dropped >= 30, st
        assert st.clean_kept_bytes < 2000
        assert st.written_back_pages - wb0 < 80
        for i in range(40, 120):
            assert lay.load(r, i) == pages[i]
        lay._check()
    finally:
        lay.close()


@pytest.mark.parametrize("seed", range(4))
def test_layer_clean_copies_random_stress(tmp_path: Path, seed: int) -> None:
    """Seeded random stores, exclusive and non-exclusive loads (single and run), store_clean,
    invalidations, batch stores and writeback under a tiny pool: data always right, every
    invariant (clean index and bytes included) holds."""
    rng = random.Random(seed)
    lay = make_layer("zsmalloc", tmp_path, pool_limit_bytes=24 * PAGE_SIZE, writeback_batch=4)
    n_pages = 120
    pages = [text_page(rng) for _ in range(40)]
    stored: dict[int, bytes] = {}  # swapped out: the data its copy must give back
    resident: dict[int, bytes] = {}  # resident: the page's current data
    try:
        r = lay.add_region("a", n_pages)
        for step in range(1500):
            op = rng.random()
            i = rng.randrange(n_pages)
            if op < 0.25 and i not in stored:
                pg = resident.get(i) or pages[rng.randrange(40)]
                if rng.random() < 0.5 and lay.store_clean(r, i):
                    stored[i] = resident.pop(i)
                    continue
                try:
                    lay.store(r, i, pg)
                except StoreRejected:
                    continue
                stored[i] = pg
                resident.pop(i, None)
            elif op < 0.5 and i in stored:
                assert lay.load(r, i, rng.random() < 0.5) == stored[i]
                resident[i] = stored.pop(i)
            elif op < 0.6:
                n = rng.randrange(1, 8)
                if i + n <= n_pages:
                    buf = bytearray(n * PAGE_SIZE)
                    k = lay.load_run(r, i, n, buf, rng.random() < 0.5)
                    for j in range(k):
                        assert bytes(buf[j * PAGE_SIZE:(j + 1) * PAGE_SIZE]) == stored[i + j]
                        resident[i + j] = stored.pop(i + j)
            elif op < 0.7 and i in resident:  # a write: the kept copy goes
                lay.invalidate(r, i)
                resident[i] = pages[rng.randrange(40)]
            elif op < 0.8:
                lay.writeback(rng.randrange(1, 10))
            elif op < 0.9:
                n = rng.randrange(1, 8)
                if i + n <= n_pages and not any(i + j in stored for j in range(n)):
                    pgs = [resident.get(i + j) or pages[rng.randrange(40)] for j in range(n)]
                    for j, ok in enumerate(lay.store_batch(r, i, b"".join(pgs))):
                        if ok:
                            stored[i + j] = pgs[j]
                            resident.pop(i + j, None)
                        else:
                            resident[i + j] = pgs[j]
            else:
                lay.shrink_step()
            if step % 25 == 0:
                lay._check()
        for i, pg in stored.items():
            assert lay.load(r, i) == pg
        lay._check()
    finally:
        lay.close()
