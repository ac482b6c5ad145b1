"""Drive a kernel zram device through sysfs, to measure the kernel side by side.

zram (``drivers/block/zram/zram_drv.c``) is a block device whose sectors live
compressed in a zsmalloc pool.  Writing a page to it runs the kernel's own store
path: ``page_same_filled`` first (same-filled pages cost no pool memory and
count in ``same_pages``), then the compressor, then -- when the compressed
length is at least zsmalloc's ``huge_class_size`` -- the page is stored raw as a
"huge" page (``huge_pages``, and ``compr_data_size`` grows by PAGE_SIZE), else
``zs_malloc`` of the compressed length.  Its ``mm_stat`` therefore gives the
kernel's density figures for exactly the pages written.

Device life cycle (``Documentation/admin-guide/blockdev/zram.rst``):
``cat /sys/class/zram-control/hot_add`` creates ``zramN`` and prints N;
``comp_algorithm`` can be set only before ``disksize``; writing ``disksize``
allocates the device; ``reset`` frees everything (the device must not be open);
``echo N > /sys/class/zram-control/hot_remove`` deletes it.  A
:class:`ZramDevice` hot-adds a device of its own when it can (so it never
disturbs a device in use, nor another process doing the same), otherwise
reuses an uninitialized existing device and restores its algorithm; either way
it leaves the machine as it found it.

``mm_stat`` fields, in order (zram.rst, "mm_stat"): orig_data_size,
compr_data_size, mem_used_total, mem_limit, mem_used_max, same_pages,
pages_compacted, huge_pages, huge_pages_since (the last since 5.15).

Pages are written with ``O_DIRECT`` from a page-aligned buffer, so each write
reaches zram's store path at once (no page cache in between).

A ZramDevice is used from one thread; it holds no locks.
"""

from __future__ import annotations

import errno
import mmap
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from swapd.errors import ZramError
from swapd.pages import PAGE_SIZE

_BATCH = 64  # pages per O_DIRECT write


@dataclass(frozen=True)
class MmStat:
    """A snapshot of ``/sys/block/zramN/mm_stat`` (bytes unless named *_pages)."""

    orig_data_size: int
    compr_data_size: int
    mem_used_total: int
    mem_limit: int
    mem_used_max: int
    same_pages: int
    pages_compacted: int
    huge_pages: int
    huge_pages_since: int

    @classmethod
    def parse(cls, text: str) -> MmStat:
        """Parse the mm_stat line (8 fields before 5.15, 9 since)."""
        vals = [int(v) for v in text.split()]
        if len(vals) < 8:
            raise ZramError(f"unexpected mm_stat format: {text!r}")
        vals = [*vals, 0][:9]
        return cls(*vals)


def zram_unavailable_reason(sysfs: str | os.PathLike[str] = "/sys") -> str | None:
    """None if zram can be driven here, else a one-line reason (not root, no zram)."""
    root = Path(sysfs)
    if os.geteuid() != 0:
        return "zram needs root"
    if (root / "class/zram-control/hot_add").exists():
        return None
    if any((root / "block").glob("zram*")):
        return None
    return "this kernel has no zram (no /sys/class/zram-control; try `modprobe zram`)"


class ZramDevice:
    """A zram device set to ``algorithm`` and ``disksize``; a context manager.

    ``with ZramDevice(64 << 20) as z: z.write_pages(pages); z.mm_stat()``.
    On exit the device is reset and hot-removed (or, if it was an existing
    device, reset and given back its previous algorithm).
    """

    def __init__(self, disksize: int, algorithm: str = "lz4", *, mem_limit: int = 0,
                 sysfs: str | os.PathLike[str] = "/sys",
                 devdir: str | os.PathLike[str] = "/dev") -> None:
        if disksize <= 0 or disksize % PAGE_SIZE:
            raise ZramError(f"disksize must be a positive multiple of {PAGE_SIZE}, "
                            f"got {disksize}")
        self.disksize = disksize
        self.algorithm = algorithm
        self.mem_limit = mem_limit
        self._sysfs = Path(sysfs)
        self._devdir = Path(devdir)
        self.dev_id: int | None = None
        self.hot_added = False
        self._saved_algorithm: str | None = None
        self._fd = -1
        self._buf: mmap.mmap | None = None

    # -- paths and sysfs --------------------------------------------------------------------

    @property
    def name(self) -> str:
        """``zramN``."""
        if self.dev_id is None:
            raise ZramError("zram device is not set up")
        return f"zram{self.dev_id}"

    @property
    def path(self) -> Path:
        """``/dev/zramN``."""
        return self._devdir / self.name

    def _attr(self, attr: str) -> Path:
        return self._sysfs / "block" / self.name / attr

    def read_attr(self, attr: str) -> str:
        """Read ``/sys/block/zramN/ATTR``."""
        try:
            return self._attr(attr).read_text().strip()
        except OSError as exc:
            raise ZramError(f"cannot read {self._attr(attr)}: {exc.strerror}") from exc

    def write_attr(self, attr: str, value: str, *, retries: int = 0) -> None:
        """Write ``/sys/block/zramN/ATTR`` (retrying EBUSY ``retries`` times)."""
        _write_sysfs(self._attr(attr), value, retries)

    # -- life cycle -------------------------------------------------------------------------

    def setup(self) -> None:
        """Create (or claim) the device, set the algorithm and disksize, open it."""
        ctl = self._sysfs / "class/zram-control"
        if (ctl / "hot_add").exists():
            try:
                self.dev_id = int((ctl / "hot_add").read_text().strip())
            except OSError as exc:
                raise ZramError(f"zram hot_add failed: {exc.strerror}") from exc
            self.hot_added = True
        else:
            self.dev_id = self._claim_unused()
            self._saved_algorithm = _selected(self.read_attr("comp_algorithm"))
        try:
            algs = self.read_attr("comp_algorithm")
            if self.algorithm not in algs.replace("[", " ").replace("]", " ").split():
                raise ZramError(f"zram has no {self.algorithm!r} compressor (has: {algs})")
            self.write_attr("comp_algorithm", self.algorithm)
            if _selected(self.read_attr("comp_algorithm")) != self.algorithm:
                raise ZramError(f"{self.name}: could not select {self.algorithm}")
            if self.mem_limit:
                self.write_attr("mem_limit", str(self.mem_limit))
            self.write_attr("disksize", str(self.disksize))
            self._wait_for_node()
            self._fd = os.open(self.path, os.O_RDWR | os.O_DIRECT | os.O_CLOEXEC)
            self._buf = mmap.mmap(-1, _BATCH * PAGE_SIZE)  # page-aligned for O_DIRECT
        except BaseException:
            self.teardown()
            raise

    def _claim_unused(self) -> int:
        for p in sorted((self._sysfs / "block").glob("zram*")):
            try:
                if (p / "initstate").read_text().strip() == "0":
                    return int(p.name[4:])
            except (OSError, ValueError):
                continue
        raise ZramError("no zram-control to hot_add a device and no unused zram device")

    def _wait_for_node(self) -> None:
        # devtmpfs creates /dev/zramN when the disk is added; give it a moment.
        for _ in range(100):
            if self.path.exists():
                return
            time.sleep(0.01)
        raise ZramError(f"{self.path} did not appear")

    def reset(self) -> None:
        """Free every stored page (``reset``); the device must be re-set-up to be used."""
        self._close_fd()
        self.write_attr("reset", "1", retries=50)

    def teardown(self) -> None:
        """Reset the device and leave the machine as found.  Idempotent."""
        if self.dev_id is None:
            return
        try:
            self._close_fd()
            if self.read_attr("initstate") != "0" or self.hot_added:
                self.write_attr("reset", "1", retries=50)
            if self.hot_added:
                _write_sysfs(self._sysfs / "class/zram-control/hot_remove", str(self.dev_id),
                             retries=50)
            elif self._saved_algorithm:
                self.write_attr("comp_algorithm", self._saved_algorithm)
        finally:
            self.dev_id = None
            self.hot_added = False

    def _close_fd(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if self._buf is not None:
            self._buf.close()
            self._buf = None

    def __enter__(self) -> ZramDevice:
        self.setup()
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.teardown()

    # -- data ------------------------------------------------------------------------------------

    def write_pages(self, pages: Iterable[bytes], first: int = 0) -> int:
        """Write pages at page index ``first`` onward; returns how many.  O(n).

        Raises ZramError when the device is full or its mem_limit is hit.
        """
        if self._fd < 0 or self._buf is None:
            raise ZramError("zram device is not open")
        buf, fd = self._buf, self._fd
        n = 0
        fill = 0
        for pg in pages:
            if len(pg) != PAGE_SIZE:
                raise ZramError(f"page {n} has {len(pg)} bytes, not {PAGE_SIZE}")
            buf[fill * PAGE_SIZE:(fill + 1) * PAGE_SIZE] = pg
            fill += 1
            n += 1
            if fill == _BATCH:
                self._flush(fd, buf, fill, first + n - fill)
                fill = 0
        if fill:
            self._flush(fd, buf, fill, first + n - fill)
        return n

    def _flush(self, fd: int, buf: mmap.mmap, npages: int, index: int) -> None:
        nbytes = npages * PAGE_SIZE
        if (index + npages) * PAGE_SIZE > self.disksize:
            raise ZramError(f"{self.name}: page {index + npages - 1} is beyond disksize")
        try:
            done = os.pwritev(fd, [memoryview(buf)[:nbytes]], index * PAGE_SIZE)
        except OSError as exc:
            raise ZramError(f"{self.name}: write failed: {exc.strerror}") from exc
        if done != nbytes:
            raise ZramError(f"{self.name}: short write ({done} of {nbytes} bytes)")

    def read_page(self, index: int) -> bytes:
        """Read page ``index`` back (decompressed by the kernel).  O(1)."""
        if self._fd < 0 or self._buf is None:
            raise ZramError("zram device is not open")
        view = memoryview(self._buf)[:PAGE_SIZE]
        try:
            got = os.preadv(self._fd, [view], index * PAGE_SIZE)
        except OSError as exc:
            raise ZramError(f"{self.name}: read failed: {exc.strerror}") from exc
        finally:
            view.release()
        if got != PAGE_SIZE:
            raise ZramError(f"{self.name}: short read of page {index}")
        return bytes(self._buf[:PAGE_SIZE])

    def mm_stat(self) -> MmStat:
        """The device's ``mm_stat`` now."""
        return MmStat.parse(self.read_attr("mm_stat"))

    def compact(self) -> None:
        """Ask zsmalloc to compact the device's pool (``compact``)."""
        self.write_attr("compact", "1")


def _selected(algs: str) -> str:
    """The bracketed entry of a ``comp_algorithm`` listing."""
    for word in algs.split():
        if word.startswith("[") and word.endswith("]"):
            return word[1:-1]
    raise ZramError(f"no selected algorithm in {algs!r}")


def _write_sysfs(path: Path, value: str, retries: int) -> None:
    for attempt in range(retries + 1):
        try:
            with open(path, "w") as f:
                f.write(value)
            return
        except OSError as exc:
            if exc.errno == errno.EBUSY and attempt < retries:
                time.sleep(0.02)
                continue
            raise ZramError(f"cannot write {value!r} to {path}: {exc.strerror}") from exc

