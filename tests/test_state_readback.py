"""A layer's state read back by a fresh process from its memfds (docs/state-format.md).

The parent builds a layer, stores pages (same-filled ones, side-table ones, disk-tier ones),
loads and invalidates some, removes a region, and hands ``layer.state_fds()`` to a child
process (``pass_fds``, as SCM_RIGHTS would).  The child adopts the regions -- read-only to peek
at every page, or as their new owner to load every page -- and reports a digest of each page,
which must equal the parent's bytes.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from swapd.corpus import Corpus
from swapd.errors import CorruptPageError, StateFormatError
from swapd.layer import DiskTier, LayerConfig, SwapLayer
from swapd.layer.table import SwapTable
from swapd.pages import PAGE_SIZE

CHILD = r"""
import hashlib, json, sys
from swapd.errors import CorruptPageError
from swapd.layer import SwapLayer
fds, writable = json.loads(sys.argv[1]), sys.argv[2] == "rw"
seal = sys.stdin.read().strip()  # the key travels apart from the regions, never in argv
lay = SwapLayer.adopt(fds, writable=writable, seal_state=bytes.fromhex(seal) if seal else None)
out = {}
if writable:
    lay._check()
for rid, (client, npages) in sorted(lay.regions().items()):
    for i in range(npages):
        if not lay.has_copy(rid, i):
            continue
        try:
            page = lay.load(rid, i) if writable else lay.peek(rid, i)
        except CorruptPageError as exc:
            out[f"{rid}:{i}"] = "corrupt: " + str(exc)
            continue
        out[f"{rid}:{i}"] = hashlib.sha256(page).hexdigest()
if writable:
    lay._check()
    out["left"] = lay.stats().disk_pages + lay.stats().stored_pages
lay.close()
print(json.dumps(out))
"""


def _child(fds: dict[str, int], mode: str, seal_state: bytes = b"") -> dict[str, Any]:
    res = subprocess.run([sys.executable, "-c", CHILD, json.dumps(fds), mode],
                         pass_fds=list(fds.values()), capture_output=True, text=True,
                         input=seal_state.hex(), timeout=120)
    assert res.returncode == 0, res.stderr
    out: dict[str, Any] = json.loads(res.stdout)
    return out


def _build(tmp: Path, seal: bool = False) -> tuple[SwapLayer, dict[str, str]]:
    """A disk-only layer holding pages of three regions; returns it and the expected digests."""
    lay = SwapLayer([DiskTier(tmp, 2048 * PAGE_SIZE, seal=seal)], config=LayerConfig(),
                    clock=lambda: 0.0)
    corpus = Corpus.synthetic(400, seed=11)
    pages = [bytes(corpus.page(i)) for i in range(len(corpus))]
    pages[5] = (0x0101010101010101).to_bytes(8, "little") * (PAGE_SIZE // 8)  # side table
    pages[6] = bytes(PAGE_SIZE)                                              # in the word
    r1 = lay.add_region("a", 200)
    r2 = lay.add_region("b", 150)
    r3 = lay.add_region("a", 50)
    want: dict[str, str] = {}
    for rid, n, off in ((r1, 200, 0), (r2, 150, 200), (r3, 50, 350)):
        for i in range(n):
            lay.store(rid, i, pages[off + i])
            want[f"{rid}:{i}"] = hashlib.sha256(pages[off + i]).hexdigest()
    for i in range(0, 200, 7):  # loaded back: no copy any more
        assert lay.load(r1, i) == pages[i]
        del want[f"{r1}:{i}"]
    for i in range(1, 150, 11):
        lay.invalidate(r2, i)
        del want[f"{r2}:{i}"]
    lay.remove_region(r3)  # its extent is freed: the reader must not see it
    for k in [k for k in want if k.startswith(f"{r3}:")]:
        del want[k]
    lay._check()
    return lay, want


def test_a_fresh_process_peeks_at_every_page(tmp_path: Path) -> None:
    lay, want = _build(tmp_path)
    try:
        fds = lay.state_fds()
        assert set(fds) == {"table", "tier0.disk", "tier0.file"}
        assert _child(fds, "ro") == want
        lay._check()  # the reader changed nothing
        assert _child(fds, "ro") == want
    finally:
        lay.close()


def test_a_fresh_process_adopts_the_layer_and_loads_every_page(tmp_path: Path) -> None:
    lay, want = _build(tmp_path)
    try:
        fds = lay.state_fds()
        got = _child(fds, "rw")
        assert got.pop("left") == 0
        assert got == want
    finally:
        lay.close(keep_state=True)  # the child owned the state last: only release it here


def test_a_sealed_disk_tier_is_adopted_with_its_seal_state(tmp_path: Path) -> None:
    lay, want = _build(tmp_path, seal=True)
    try:
        disk = lay._tiers[0]
        assert isinstance(disk, DiskTier) and disk.sealer is not None
        fds = lay.state_fds()
        bad = _child(fds, "rw")  # no key: the region is refused by name
    except AssertionError as exc:
        assert "sealed slots" in str(exc)
    else:
        raise AssertionError(f"adopted a sealed tier without its key: {bad}")
    try:
        got = _child(fds, "rw", disk.sealer.export_state())
        assert got.pop("left") == 0
        assert got == want
    finally:
        lay.close(keep_state=True)


def test_a_torn_disk_slot_is_caught_by_the_reader(tmp_path: Path) -> None:
    lay, want = _build(tmp_path)
    try:
        disk = lay._tiers[0]
        assert isinstance(disk, DiskTier)
        slot = next(k for k in range(disk.nslots) if disk.is_used(k))
        os.pwrite(disk.fd, b"\xff", slot * PAGE_SIZE + 100)
        got = _child(lay.state_fds(), "ro")
        bad = [k for k, v in got.items() if v.startswith("corrupt")]
        assert len(bad) == 1 and "checksum" in got[bad[0]]
        assert {k: v for k, v in got.items() if k not in bad} == {
            k: v for k, v in want.items() if k not in bad}
        with pytest.raises(CorruptPageError):
            rid, i = map(int, bad[0].split(":"))
            lay.load(rid, i)
    finally:
        lay.close()


def test_adoption_in_process_rebuilds_the_indexes(tmp_path: Path) -> None:
    lay, want = _build(tmp_path)
    fds = {k: os.dup(v) for k, v in lay.state_fds().items()}
    other = SwapLayer.adopt(fds, writable=False)
    try:
        assert other.regions().keys() == lay.regions().keys()
        t0, t1 = lay._table, other._table
        assert t1._extents == t0._extents and t1._free == t0._free
        assert len(t1.side) == len(t0.side) >= 1
        d0, d1 = lay._tiers[0], other._tiers[0]
        assert isinstance(d0, DiskTier) and isinstance(d1, DiskTier)
        assert d1._alloc.by_start == d0._alloc.by_start
        s0, s1 = lay.stats(), other.stats()
        for name in ("stored_pages", "same_filled_pages", "disk_pages", "disk_slots_used"):
            assert getattr(s1, name) == getattr(s0, name)
        assert s1.disk_slots_used + s1.same_filled_pages == len(want)
    finally:
        other.close()
        lay.close()


def test_a_region_of_another_kind_is_refused_by_name(tmp_path: Path) -> None:
    lay, _ = _build(tmp_path)
    try:
        fds = lay.state_fds()
        with pytest.raises(StateFormatError, match="kind 'disk', expected 'swaptable'"):
            SwapTable.adopt(os.dup(fds["tier0.disk"]))
    finally:
        lay.close()


def test_adoption_frees_disk_slots_no_word_names(tmp_path: Path) -> None:
    """A crash between a writeback's pwritev and its commit leaves slots no word names: the
    adopting layer's reconcile frees them, and every page a word names still loads."""
    lay, want = _build(tmp_path)
    disk = lay._tiers[0]
    assert isinstance(disk, DiskTier)
    orphans = disk.store_batch([bytes([7]) * PAGE_SIZE] * 3)  # stored, never committed
    used = disk.used_slots()
    fds = {k: os.dup(v) for k, v in lay.state_fds().items()}
    lay.close(keep_state=True)
    other = SwapLayer.adopt(fds)
    try:
        d = other._tiers[0]
        assert isinstance(d, DiskTier)
        assert d.used_slots() == used - 3 and not any(d.is_used(k) for k in orphans)
        other._check()
        for key, digest in want.items():
            rid, i = map(int, key.split(":"))
            assert hashlib.sha256(other.load(rid, i)).hexdigest() == digest
        other._check()
    finally:
        other.close()

def _compressed_layer(tmp: Path, backend: str) -> tuple[SwapLayer, dict[str, str]]:
    """A compressed tier (``backend`` + lz4) over a disk tier, pages in both and in the word."""
    from swapd.layer import CompressedTier, TierLimits
    from swapd.plugins import make_backend

    tiers = [CompressedTier("lz4", make_backend(backend, max_pages=4096),
                            TierLimits(ram_total_bytes=1 << 40)),
             DiskTier(tmp, 1024 * PAGE_SIZE)]
    lay = SwapLayer(tiers, config=LayerConfig(pool_limit_bytes=1 << 30), clock=lambda: 0.0)
    corpus = Corpus.synthetic(500, seed=12)
    r1, r2 = lay.add_region("a", 300), lay.add_region("b", 200)
    want: dict[str, str] = {}
    for rid, n, off in ((r1, 300, 0), (r2, 200, 300)):
        for i in range(n):
            page = bytes(corpus.page(off + i))
            lay.store(rid, i, page)
            want[f"{rid}:{i}"] = hashlib.sha256(page).hexdigest()
    assert lay.writeback(120) > 0  # the coldest go to the disk tier
    for i in range(0, 300, 9):
        lay.load(r1, i)
        del want[f"{r1}:{i}"]
    lay._check()
    st = lay.stats()
    assert st.disk_pages > 0 and st.stored_pages - st.same_filled_pages > 0
    return lay, want


@pytest.mark.parametrize("backend", ["zsmalloc", "zbud", "z3fold"])
def test_a_fresh_process_reads_the_compressed_and_the_disk_tier(tmp_path: Path,
                                                                 backend: str) -> None:
    """The "Done when" of issue 8: every page of both tiers, from a second process."""
    lay, want = _compressed_layer(tmp_path, backend)
    try:
        fds = lay.state_fds()
        assert {"table", f"tier0.{backend}", "tier0.arena", "tier1.disk", "tier1.file"} <= set(fds)
        assert _child(fds, "ro") == want
        got = _child(fds, "rw")
        assert got.pop("left") == 0
        assert got == want
    finally:
        lay.close(keep_state=True)
