"""What the daemon reads from ``/proc`` about its clients' descriptors and mappings.

``fd_kind`` names a descriptor for an error message; ``check_mapping`` checks that a
client's range maps the memfd it sent as the protocol requires (docs/protocol.md, ``map``).
Both only read; a failure is :class:`~swapd.daemon.errors.Refused`.

What the check may cost is bounded whatever the client's address space looks like.  The
checks the daemon's integrity rests on -- every VMA of the range is a shared mapping of
*this* memfd at the file offset of its address -- use ``PROCMAP_QUERY``
(:mod:`swapd.kernel.procmap`): one lookup per VMA of the range, however many mappings the
process has.  The VmFlags that only ``/proc/PID/smaps`` shows (``um``/``uw``: registered with
a userfaultfd; ``dc``: ``MADV_DONTFORK``) protect the client from itself -- the daemon
registers the range through its own copy of the userfaultfd anyway (ops.py) -- so smaps is
streamed only up to the range's end and at most ``SMAPS_BUDGET`` bytes of it: the kernel
generates smaps VMA by VMA, page-table walk included (0.4 s for 60,000 mappings), so a client
with very many mappings below its region gets its VmFlags unchecked (counted by the caller)
instead of holding the event loop.  A kernel without ``PROCMAP_QUERY`` (before 6.11) falls back
to reading smaps in full, as before.
"""

from __future__ import annotations

import os
from typing import BinaryIO

from swapd.daemon.errors import Refused
from swapd.kernel import procmap
from swapd.kernel.errors import KernelError

__all__ = ["SMAPS_BUDGET", "check_mapping", "fd_kind"]

# Bytes of /proc/PID/smaps the daemon reads per ``map`` at most (about 1,000 VMAs).
SMAPS_BUDGET = 1 << 20

_FLAG_MEANING = {"um": "registered with userfaultfd MISSING",
                 "uw": "registered with userfaultfd WP", "dc": "MADV_DONTFORK"}


def fd_kind(fd: int) -> str:
    """What ``fd`` is, as ``/proc/self/fd`` names it (for error messages)."""
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return "not an open descriptor"


def check_mapping(pid: int, address: int, length: int, inode: int, dev: int = -1) -> bool:
    """Check that ``[address, +length)`` of process ``pid`` maps the memfd as we need.

    Shared, this memfd (its device ``dev`` -- inode numbers are per file system -- and
    ``inode``), each VMA at the file offset of its address (page i of the range is page i
    of the memfd), registered with a uffd (VmFlags ``um`` and ``uw``) and ``MADV_DONTFORK``
    (``dc``).  Returns False when the VmFlags were left unchecked (the smaps budget ran out
    before the range), True when everything was checked.  Raises Refused.
    """
    try:
        fd = procmap.open_maps(pid)
    except KernelError as exc:
        raise Refused("unavailable", f"cannot open /proc/{pid}/maps: {exc}") from exc
    try:
        vmas = _vmas_by_query(fd, address, length)
    except KernelError as exc:
        raise Refused("unavailable", f"cannot query /proc/{pid}/maps: {exc}") from exc
    finally:
        os.close(fd)
    if vmas is None:  # a kernel before 6.11: smaps in full gives the layout and the flags
        seen, _ = _smaps(pid, address + length, budget=None)
        _check_layout(pid, [v[:6] for v in seen], address, length, inode, dev)
        complete = True
    else:
        _check_layout(pid, vmas, address, length, inode, dev)
        seen, complete = _smaps(pid, address + length, budget=SMAPS_BUDGET)
    for lo, hi, *_, f in seen:
        if hi <= address or lo >= address + length:
            continue
        missing = {"um", "uw", "dc"} - f
        if missing:
            raise Refused("bad_range", f"[{lo:#x}, {hi:#x}) is not " +
                          " and not ".join(_FLAG_MEANING[m] for m in sorted(missing)))
    return complete


_Layout = tuple[int, int, bool, int, int, int]  # start, end, shared, inode, offset, dev


def _vmas_by_query(fd: int, address: int, length: int) -> list[_Layout] | None:
    """The VMAs meeting the range, by PROCMAP_QUERY; None when the kernel has no such ioctl."""
    out: list[_Layout] = []
    at, end = address, address + length
    while at < end:
        try:
            v = procmap.query(fd, at)
        except procmap.Unsupported:
            return None
        if v is None or v.start >= end:
            break
        out.append((v.start, v.end, v.shared, v.inode, v.offset, v.dev))
        at = v.end
    return out


def _check_layout(pid: int, vmas: list[_Layout], address: int, length: int, inode: int,
                  dev: int) -> None:
    end = address + length
    covered = address
    for lo, hi, shared, ino, offset, vdev in sorted(vmas):
        if hi <= covered or lo >= end:
            continue
        if lo > covered:
            break
        if ino != inode or not shared or (dev >= 0 and vdev != dev):
            raise Refused("bad_range", f"[{lo:#x}, {hi:#x}) is not a shared mapping of the "
                          "memfd that was sent")
        if offset != lo - address:
            raise Refused("bad_range", f"[{lo:#x}, {hi:#x}) maps the memfd at offset "
                          f"{offset:#x}, not {lo - address:#x}: page i of the region must be "
                          "page i of the memfd")
        covered = hi
        if covered >= end:
            return
    raise Refused("bad_range", f"[{address:#x}, {end:#x}) is not mapped in process {pid} "
                  f"(mapped up to {covered:#x})")


_Smaps = tuple[int, int, bool, int, int, int, set[str]]


def _smaps(pid: int, end: int, budget: int | None) -> tuple[list[_Smaps], bool]:
    """VMAs of /proc/PID/smaps below ``end`` with their VmFlags, reading at most ``budget``
    bytes; and whether the list is complete (it reached ``end`` or the file's end)."""
    try:
        with open(f"/proc/{pid}/smaps", "rb", buffering=0) as f:
            return _parse_smaps(f, end, budget)
    except OSError as exc:
        raise Refused("unavailable", f"cannot read /proc/{pid}/smaps: {exc.strerror}") from exc


def _parse_smaps(f: BinaryIO, end: int, budget: int | None) -> tuple[list[_Smaps], bool]:
    out: list[_Smaps] = []
    read = 0
    rest = b""
    cur: tuple[int, int, bool, int, int, int] | None = None
    while budget is None or read < budget:
        chunk = f.read(65536)
        if not chunk:
            return out, True
        read += len(chunk)
        lines = (rest + chunk).split(b"\n")
        rest = lines.pop()
        for line in lines:
            if line.startswith(b"VmFlags:"):
                if cur is not None:
                    out.append((*cur, {x.decode() for x in line.split()[1:]}))
                    if cur[1] >= end:
                        return out, True
                cur = None
                continue
            head = line.split(None, 5)
            if len(head) >= 5 and b"-" in head[0] and not head[0].endswith(b":"):
                try:
                    lo_s, hi_s = head[0].split(b"-")
                    major, minor = (int(x, 16) for x in head[3].split(b":"))
                    cur = (int(lo_s, 16), int(hi_s, 16), head[1].endswith(b"s"),
                           int(head[4]), int(head[2], 16), os.makedev(major, minor))
                except ValueError:
                    cur = None
                if cur is not None and cur[0] >= end:
                    return out, True
    return out, False
