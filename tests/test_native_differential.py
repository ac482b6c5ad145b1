"""Differential test: the compiled implementation against the pure-Python reference.

Two layers are driven through the same seeded, weighted random operation sequence -- runs of
mixed pages stored with ``store_batch``, read back with ``load_run``, freed with
``free_batch``, single-page stores, loads and invalidations, writeback, compaction, regions
removed and added -- one with the reference, one with the compiled implementation
(tests/layer_state.py switches them).  Every result must be equal, and the whole state -- the
swap table's words and links, the side table, every counter, the pool's bytes -- equal byte
for byte after each phase; every page that comes back is checked against a model.  A failure
replays from its seed.  The C functions are also compared one by one with their Python
specifications on a corpus.

``test_asan_build_passes_the_differential_test`` (slow) builds a second copy of the extension
with AddressSanitizer in a temporary directory and runs this file with it (LD_PRELOAD of the
compiler's libasan), so an out-of-bounds access in the C code fails the suite.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
from array import array
from pathlib import Path
from typing import Any

import lz4.block
import pytest

from swapd.arena import PAGE_SIZE
from swapd.compress import fill_page, same_filled_value
from swapd.corpus import Corpus
from swapd.errors import EntryNotFoundError, StoreRejected
from swapd.layer import CompressedTier, DiskTier, LayerConfig, SwapLayer, TierLimits
from swapd.plugins import available_backends, make_backend
from tests.layer_state import native_or_skip, running, state_bytes

ROOT = Path(__file__).resolve().parent.parent
BACKENDS = sorted(available_backends())
NPAGES = 64


def page_pool(seed: int) -> list[bytes]:
    """Pages of every kind a run meets: corpus pages, zero and same-filled pages (some with
    values too wide for the word), random (incompressible) pages."""
    rng = random.Random(seed)
    corpus = Corpus.synthetic(160, seed=seed)
    pages = [corpus.page(i) for i in range(len(corpus))]
    pages += [bytes(PAGE_SIZE), fill_page(0xFFFFFFFFFFFFFFFF), fill_page(7),
              fill_page(0x8000_0000_0000_0001)]
    pages += [rng.randbytes(PAGE_SIZE) for _ in range(8)]
    return pages


def make_layer(backend: str, tmp: Path, **cfg: Any) -> SwapLayer:
    tier = CompressedTier("lz4", make_backend(backend, max_pages=4096),
                          TierLimits(ram_total_bytes=1 << 30))
    return SwapLayer([tier, DiskTier(tmp, 2048 * PAGE_SIZE)], config=LayerConfig(**cfg),
                     clock=lambda: 0.0)


class Side:
    """One layer, one implementation, and a model of what each page holds."""

    def __init__(self, which: str, lay: SwapLayer) -> None:
        self.which = which
        self.lay = lay
        self.model: dict[tuple[str, int], bytes] = {}

    def do(self, op: str, args: tuple[Any, ...], regions: dict[str, int]) -> Any:
        """Apply one operation; return what it returned (or the error's name)."""
        lay = self.lay
        with running(self.which):
            if op == "store_batch":
                c, start, pages = args
                ok = lay.store_batch(regions[c], start, b"".join(pages))
                for j, (s, pg) in enumerate(zip(ok, pages)):
                    if s:
                        self.model[(c, start + j)] = pg
                    else:
                        self.model.pop((c, start + j), None)
                return ok
            if op == "load_run":
                c, start, n = args
                buf = bytearray(n * PAGE_SIZE)
                k = lay.load_run(regions[c], start, n, buf)
                for j in range(k):
                    assert buf[j * PAGE_SIZE:(j + 1) * PAGE_SIZE] == self.model.pop((c, start + j))
                assert buf[k * PAGE_SIZE:] == bytes((n - k) * PAGE_SIZE)
                return k
            if op == "free_batch":
                c, start, n = args
                for j in range(n):
                    self.model.pop((c, start + j), None)
                return lay.free_batch(regions[c], start, n)
            if op == "store":
                c, i, pg = args
                try:
                    lay.store(regions[c], i, pg)
                    self.model[(c, i)] = pg
                    return True
                except StoreRejected as exc:
                    self.model.pop((c, i), None)
                    return exc.reason
            if op == "load":
                c, i = args
                try:
                    page = lay.load(regions[c], i)
                except EntryNotFoundError:
                    return "EntryNotFoundError"
                assert page == self.model.pop((c, i))
                return True
            if op == "writeback":
                return lay.writeback(args[0])
            if op == "compact":
                return lay.compact()
        raise AssertionError(op)


def differential(backend: str, tmp: Path, seed: int, nops: int) -> None:
    """Run both sides through ``nops`` seeded operations; compare results and state."""
    rng = random.Random(seed)
    pool = page_pool(seed)
    cfg = {"pool_limit_bytes": rng.choice([24, 48, 400]) * PAGE_SIZE}
    (tmp / "py").mkdir()
    (tmp / "c").mkdir()
    sides = []
    for which, d in (("python", "py"), ("compiled", "c")):
        with running(which):
            sides.append(Side(which, make_layer(backend, tmp / d, **cfg)))
    regs: list[dict[str, int]] = [{}, {}]
    try:
        for k, s in enumerate(sides):
            for c in ("a", "b"):
                regs[k][c] = s.lay.add_region(c, NPAGES)
        for step in range(nops):
            op = rng.choices(["store_batch", "load_run", "free_batch", "store", "load",
                              "writeback", "compact", "region"],
                             [30, 25, 5, 15, 10, 6, 3, 1])[0]
            c = rng.choice(["a", "b"])
            start = rng.randrange(NPAGES)
            n = rng.randint(1, min(32, NPAGES - start))
            args: tuple[Any, ...]
            if op == "store_batch":
                args = (c, start, [rng.choice(pool) for _ in range(n)])
            elif op in ("load_run", "free_batch"):
                args = (c, start, n)
            elif op == "store":
                args = (c, start, rng.choice(pool))
            elif op == "load":
                args = (c, start)
            elif op == "writeback":
                args = (rng.randint(1, 40),)
            else:
                args = ()
            if op == "region":
                for k, s in enumerate(sides):
                    with running(s.which):
                        s.lay.remove_region(regs[k][c])
                        regs[k][c] = s.lay.add_region(c, NPAGES)
                    for key in [key for key in s.model if key[0] == c]:
                        del s.model[key]
                continue
            got = [s.do(op, args, regs[k]) for k, s in enumerate(sides)]
            assert got[0] == got[1], (seed, step, op, got)
            if step % 25 == 0 or step == nops - 1:
                for s in sides:
                    s.lay._check()
                assert state_bytes(sides[0].lay) == state_bytes(sides[1].lay), (seed, step)
        assert sides[0].model == sides[1].model
    finally:
        for s in sides:
            s.lay.close()


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("backend", BACKENDS)
def test_layer_differential(backend: str, tmp_path: Path, seed: int) -> None:
    native_or_skip()
    differential(backend, tmp_path, seed, 300)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(100, 104))
@pytest.mark.parametrize("backend", BACKENDS)
def test_layer_differential_long(backend: str, tmp_path: Path, seed: int) -> None:
    native_or_skip()
    differential(backend, tmp_path, seed, 2000)


def test_compress_pages_equals_the_reference() -> None:
    nat = native_or_skip()
    pages = page_pool(7)
    n = len(pages)
    src = b"".join(pages)
    dst = bytearray(n * PAGE_SIZE)
    lens = array("i", bytes(4 * n))
    vals = array("Q", bytes(8 * n))
    for same in (True, False):
        nat.compress_pages(src, n, dst, lens, vals, same)
        for j, pg in enumerate(pages):
            v = same_filled_value(pg) if same else None
            if v is not None:
                assert (lens[j], vals[j]) == (-1, v)
                continue
            ref = lz4.block.compress(pg, store_size=False)
            assert nat.lz4_compress(pg) == ref
            if len(ref) < PAGE_SIZE:
                assert bytes(dst[j * PAGE_SIZE:j * PAGE_SIZE + lens[j]]) == ref
            else:
                assert lens[j] == 0


def test_decode_pages_equals_the_reference() -> None:
    nat = native_or_skip()
    pages = page_pool(8)
    items: list[Any] = []
    for pg in pages:
        v = same_filled_value(pg)
        c = lz4.block.compress(pg, store_size=False)
        items.append(v if v is not None else (c if len(c) < PAGE_SIZE else pg))
    out = bytearray(len(items) * PAGE_SIZE + 100)
    assert nat.decode_pages(items, out, 100) == len(items)
    assert out[100:] == b"".join(pages)
    # a bad block stops the run before it, and writes nothing of it
    bad = [*items[:5], b"\xff" * 300, *items[6:]]
    out = bytearray(len(items) * PAGE_SIZE)
    assert nat.decode_pages(bad, out) == 5
    assert out[5 * PAGE_SIZE:] == bytes((len(items) - 5) * PAGE_SIZE)
    with pytest.raises(ValueError, match="dst holds no"):
        nat.decode_pages(items, bytearray(PAGE_SIZE))
    with pytest.raises(ValueError, match="bytes"):
        nat.decode_pages([b""], bytearray(PAGE_SIZE))
    with pytest.raises(ValueError, match="too small"):
        nat.compress_pages(b"x" * PAGE_SIZE, 2, bytearray(2 * PAGE_SIZE), array("i", [0, 0]),
                           array("Q", [0, 0]), True)


@pytest.mark.slow
def test_asan_build_passes_the_differential_test(tmp_path: Path) -> None:
    """Build the extension with -fsanitize=address into a copy of the package and run this
    file's default tests, the batch tests and the compiled zsmalloc's tests with it;
    AddressSanitizer aborts the run on any bad access."""
    native_or_skip()
    cc = shutil.which("gcc")
    if cc is None:
        pytest.skip("no gcc to build the AddressSanitizer copy")
    libasan = subprocess.run([cc, "-print-file-name=libasan.so"], capture_output=True,
                             text=True, check=True).stdout.strip()
    if not os.path.isabs(libasan) or not os.path.exists(libasan):
        pytest.skip("gcc has no libasan.so here")
    copy = tmp_path / "src"
    for d in ("swapd", "backends", "tests"):
        shutil.copytree(ROOT / d, copy / d,
                        ignore=shutil.ignore_patterns("*.so", "__pycache__", "BUILD_ERROR.txt"))
    for f in ("setup.py", "pyproject.toml", "README.md"):
        shutil.copy(ROOT / f, copy / f)
    env = {**os.environ, "SWAPD_NATIVE_CFLAGS": "-fsanitize=address -fno-omit-frame-pointer -g"}
    build = subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--inplace"],
                           cwd=copy, env=env, capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stdout + build.stderr
    assert not (copy / "swapd" / "_native" / "BUILD_ERROR.txt").exists(), build.stdout
    env = {**os.environ, "LD_PRELOAD": libasan, "PYTHONPATH": str(copy),
           "ASAN_OPTIONS": "detect_leaks=0:abort_on_error=1", "SWAPD_IMPL": "compiled"}
    probe = subprocess.run([sys.executable, "-c", "import swapd._native._core as c; "
                            "print(c.__file__)"], cwd=copy, env=env, capture_output=True,
                           text=True, timeout=120)
    assert probe.returncode == 0, probe.stderr
    so = Path(probe.stdout.strip())
    assert so.is_relative_to(copy), so
    assert b"__asan_report" in so.read_bytes(), "the copy was built without AddressSanitizer"
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          "tests/test_native_differential.py", "tests/test_layer_batch.py",
                          "tests/test_native_zsmalloc.py"],
                         cwd=copy, env=env, capture_output=True, text=True, timeout=1200)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    assert "passed" in run.stdout
