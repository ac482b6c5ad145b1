"""Unit tests of the swap table, its intrusive lists, the slot allocator, and the disk-only
layer.  Seeded random operations are checked against simple models."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from swapd.arena import PAGE_SIZE
from swapd.errors import InvariantError, StateFormatError, StoreRejected
from swapd.layer import DiskTier, EntryState, LayerConfig, SlotAllocator, SwapLayer, SwapTable
from swapd.layer.table import FIRST_GLOBAL, NIL, decode_value, encode_value
from swapd.state import ArraySpec, StateRegion


@given(st.integers(min_value=0, max_value=(1 << 64) - 1))
def test_same_filled_value_round_trips_when_it_fits(value: int) -> None:
    payload = encode_value(value)
    if payload is None:
        signed = value - (1 << 64) if value >> 63 else value
        assert not -(1 << 56) <= signed < (1 << 56)
    else:
        assert payload < 1 << 64 and payload & 0x7F == 0
        assert decode_value(payload | 1) == value


def test_common_fills_fit_the_word() -> None:
    for v in (0, 1, 0xFFFFFFFFFFFFFFFF, 0xFFFFFFFF, (1 << 56) - 1):
        assert encode_value(v) is not None
    assert encode_value(0x0101010101010101) is None


def test_lists_against_a_model() -> None:
    rng = random.Random(1)
    t = SwapTable()
    base = t.alloc_extent(200)
    lists = [t.new_list() for _ in range(3)]
    model: list[list[int]] = [[] for _ in lists]  # hottest first
    where: dict[int, int] = {}
    for _ in range(3000):
        g = base + rng.randrange(200)
        if g in where:
            if rng.random() < 0.5:
                t.unlink(g)
                model[where.pop(g)].remove(g)
            else:
                k = where[g]
                t.unlink(g)
                model[k].remove(g)
                t.push_head(lists[k], g)
                model[k].insert(0, g)
        else:
            k = rng.randrange(3)
            if rng.random() < 0.5:
                t.push_head(lists[k], g)
                model[k].insert(0, g)
            else:
                t.push_tail(lists[k], g)
                model[k].append(g)
            where[g] = k
        if rng.random() < 0.05:
            for s, m in zip(lists, model):
                assert t.check_list(s) == m
                assert t.tail(s) == (m[-1] if m else s)
    for s, m in zip(lists, model):
        assert t.check_list(s) == m
        assert t.iter_list(s, 5) == m[:5]
    t._check()
    for g in list(where):
        t.unlink(g)
    assert t.prev[base] == NIL
    for s in lists:
        t.drop_list(s)
    t.free_extent(base)
    t._check()
    assert t.top == FIRST_GLOBAL  # everything freed: the arrays are trimmed


def test_extents_reuse_and_coalesce() -> None:
    t = SwapTable()
    a, b, c = t.alloc_extent(10), t.alloc_extent(20), t.alloc_extent(5)
    assert (a, b, c) == (1, 11, 31)  # global number 0 is reserved: a link of 0 is NIL
    t.free_extent(a)
    t.free_extent(b)
    t._check()
    assert t.alloc_extent(25) == 1  # the two freed extents coalesced
    d = t.alloc_extent(5)
    assert d == 26
    t.words[d] = 1
    with pytest.raises(InvariantError):  # a bug in the owner: freeing an extent with a live word
        t.free_extent(d)
    t.words[d] = 0
    t.free_extent(d)
    t._check()
    s = t.new_list()
    t.push_head(s, 1)
    with pytest.raises(InvariantError):
        t.drop_list(s)


def test_slot_allocator_against_a_model() -> None:
    rng = random.Random(2)
    a = SlotAllocator(500)
    used: set[int] = set()
    for _ in range(2000):
        if rng.random() < 0.5 and len(used) < 500:
            runs = a.alloc(rng.randrange(1, 40))
            for start, n in runs:
                got = set(range(start, start + n))
                assert not got & used
                used |= got
        elif used:
            slot = rng.choice(sorted(used))
            a.free(slot)
            used.discard(slot)
            with pytest.raises(InvariantError):
                a.free(slot)
        assert a.free_slots == 500 - len(used)
        if rng.random() < 0.05:
            a._check()
            assert all(a.is_free(s) != (s in used) for s in range(500))
    a._check()


def test_alloc_prefers_one_run() -> None:
    a = SlotAllocator(100)
    runs = a.alloc(10)
    assert runs == [(0, 10)]
    for s in (2, 3, 5, 6, 7):
        a.free(s)
    assert a.alloc(3) == [(5, 3)]  # best fit: the 3-slot hole, not the 2-slot one
    a._check()


def test_disk_only_layer(tmp_path: Path) -> None:
    rng = random.Random(3)
    disk = DiskTier(tmp_path, 8 * PAGE_SIZE)
    lay = SwapLayer([disk], config=LayerConfig())
    try:
        r = lay.add_region("a", 16)
        pages = [rng.randbytes(PAGE_SIZE) for _ in range(8)]
        for i, pg in enumerate(pages):
            lay.store(r, i, pg)
        lay.store(r, 8, bytes(PAGE_SIZE))  # same-filled: in the word, no slot
        with pytest.raises(StoreRejected) as ei:
            lay.store(r, 9, pages[0])
        assert ei.value.reason == "reject_disk_fail"
        st = lay.stats()
        assert st.pswpout == 8 and st.zswpout == 1 and st.disk_slots_used == 8
        assert lay.state(r, 3) is EntryState.DISK
        assert lay.writeback(8) == 0  # nowhere to demote to
        lay._check()
        assert [lay.load(r, i) for i in range(8)] == pages
        assert lay.load(r, 8) == bytes(PAGE_SIZE)
        assert lay.stats().pswpin == 8
        lay._check()
    finally:
        lay.close()


def test_table_region_adopted_after_random_operations_has_the_same_indexes() -> None:
    """Seeded extents and side records; the table adopted from its memfd rebuilds the same
    extent index, free extents and side table, and both pass _check."""
    import os

    from swapd.layer.table import EXT_LIST, EXT_REGION, SIDE

    rng = random.Random(81)
    t = SwapTable(1 << 16, max_extents=1024)
    live: dict[int, int] = {}  # base -> npages
    sides: dict[int, int] = {}  # g -> word
    for step in range(600):
        r = rng.random()
        if r < 0.4 or not live:
            n = rng.randrange(1, 64)
            base = t.alloc_extent(n, EXT_REGION if n > 1 else EXT_LIST, step, step % 7)
            live[base] = n
        elif r < 0.6:
            base = rng.choice(sorted(live))
            for g in [g for g in sides if base <= g < base + live[base]]:
                t.side.free(sides.pop(g))
                t.words[g] = 0
            t.free_extent(base)
            del live[base]
        else:
            base = rng.choice(sorted(live))
            g = base + rng.randrange(live[base])
            if g in sides:
                t.side.free(sides.pop(g))
                t.words[g] = 0
            else:
                w = 1 | t.side.put(g, rng.getrandbits(64))
                t.words[g] = w
                sides[g] = w
                assert w & SIDE
    t._check()
    u = SwapTable.adopt(os.dup(t.region.fd), writable=False)
    try:
        assert dict(u._extents) == dict(t._extents) == live
        assert dict(u._free) == dict(t._free)
        assert u.side.as_dict() == t.side.as_dict()
        assert {g: u.side.value(w) for g, w in sides.items()} == t.side.as_dict()
        assert u.extent_records() == t.extent_records()
        u._check()
    finally:
        u.close()
        t.close()


def test_untouched_pages_cost_no_table_memory() -> None:
    """A region's words and links are not written when it is added: never-stored pages are
    holes of the table's memfd; freeing the region punches what its used pages allocated."""
    t = SwapTable()
    try:
        before = t.allocated_bytes()
        big = t.alloc_extent(1 << 20)  # 4 GiB of client memory
        assert t.allocated_bytes() - before < 64 << 10
        assert t.used(big, 1 << 20) == []
        s = t.new_list()
        for i in (5, 300_000, 900_000):
            t.words[big + i] = 1 << 3  # REF on a RESIDENT word: any nonzero value
            t.push_head(s, big + i)
        grown = t.allocated_bytes() - before
        assert grown <= 3 * 3 * 2 * PAGE_SIZE  # a page of each array per used entry, at most
        assert [g for r in t.used(big, 1 << 20) for g in r if t.words[g]] == \
            [big + 5, big + 300_000, big + 900_000]
        for i in (5, 300_000, 900_000):
            t.unlink(big + i)
            t.words[big + i] = 0
        t.drop_list(s)
        t.free_extent(big)
        t._check()
        assert t.allocated_bytes() - before < 64 << 10
    finally:
        t.close()


def test_version_1_table_is_refused_by_name() -> None:
    region = StateRegion.create("swaptable", 1, [ArraySpec("words", "Q", 16)])
    fd = os.dup(region.fd)
    region.close()
    try:
        with pytest.raises(StateFormatError, match="kind version 1; this swapd reads version 2"):
            SwapTable.adopt(fd)
    finally:
        os.close(fd)


def test_slot_allocator_choices_match_a_reference() -> None:
    """The allocator picks the very extents of a plain best-fit over a sorted list (best fit
    for the whole request, lowest start first; else the largest extents, highest start
    first), so a disk tier's runs -- and its pwritev count -- do not depend on how the
    extents are indexed."""
    rng = random.Random(5)
    n = 400
    a = SlotAllocator(n)
    ref: list[tuple[int, int]] = [(0, n)]  # free extents (start, length), by start
    used: set[int] = set()

    def ref_alloc(k: int) -> list[tuple[int, int]]:
        runs = []
        while k > 0 and ref:
            fit = [(ln, s) for s, ln in ref if ln >= k]
            ln, s = min(fit) if fit else max((ln, s) for s, ln in ref)
            ref.remove((s, ln))
            take = min(k, ln)
            if ln > take:
                ref.append((s + take, ln - take))
                ref.sort()
            runs.append((s, take))
            k -= take
        return runs

    def ref_free(slot: int) -> None:
        free = sorted([*ref, (slot, 1)])
        merged: list[tuple[int, int]] = []
        for s, ln in free:
            if merged and merged[-1][0] + merged[-1][1] == s:
                merged[-1] = (merged[-1][0], merged[-1][1] + ln)
            else:
                merged.append((s, ln))
        ref[:] = merged

    for _ in range(3000):
        if rng.random() < 0.45 and len(used) < n:
            k = rng.randrange(1, 24)
            runs = a.alloc(k)
            assert runs == ref_alloc(k)
            for s, ln in runs:
                used.update(range(s, s + ln))
        elif used:
            slot = rng.choice(sorted(used))
            a.free(slot)
            ref_free(slot)
            used.discard(slot)
        assert a.extents() == ref
    a._check()
