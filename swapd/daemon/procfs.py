"""What the daemon reads from ``/proc`` about its clients' descriptors and mappings.

``fd_kind`` names a descriptor for an error message; ``check_mapping`` checks in
``/proc/PID/smaps`` that a client's range maps the memfd it sent as the protocol
requires (docs/protocol.md, ``map``).  Both only read; a failure is
:class:`~swapd.daemon.errors.Refused`.
"""

from __future__ import annotations

import os

from swapd.daemon.errors import Refused

__all__ = ["check_mapping", "fd_kind"]


def fd_kind(fd: int) -> str:
    """What ``fd`` is, as ``/proc/self/fd`` names it (for error messages)."""
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return "not an open descriptor"


def check_mapping(pid: int, address: int, length: int, inode: int, dev: int = -1) -> None:
    """Check in /proc/PID/smaps that ``[address, +length)`` maps the memfd as we need.

    Shared, this memfd (its device ``dev`` -- inode numbers are per file system --
    and ``inode``), each VMA at the file offset of its address (page i of the
    range is page i of the memfd), registered with a uffd (VmFlags ``um`` and
    ``uw``) and ``MADV_DONTFORK`` (``dc``).  Raises Refused.
    """
    end = address + length
    covered = address
    try:
        with open(f"/proc/{pid}/smaps") as f:
            lines = f.read().splitlines()
    except OSError as exc:
        raise Refused("unavailable", f"cannot read /proc/{pid}/smaps: {exc.strerror}") from exc
    cur: tuple[int, int, str, int, int, int] | None = None
    vmas: list[tuple[int, int, str, int, int, int, set[str]]] = []
    for line in lines:
        head = line.split(None, 5)
        if len(head) >= 5 and "-" in head[0] and not head[0].endswith(":"):
            lo_s, hi_s = head[0].split("-")
            try:
                major, minor = (int(x, 16) for x in head[3].split(":"))
                cur = (int(lo_s, 16), int(hi_s, 16), head[1], int(head[4]),
                       int(head[2], 16), os.makedev(major, minor))
            except ValueError:
                cur = None
        elif line.startswith("VmFlags:") and cur is not None:
            vmas.append((*cur, set(line.split()[1:])))
            cur = None
    for lo, hi, perms, ino, offset, vdev, flags in sorted(vmas):
        if hi <= covered or lo >= end:
            continue
        if lo > covered:
            break
        if ino != inode or not perms.endswith("s") or (dev >= 0 and vdev != dev):
            raise Refused("bad_range", f"[{lo:#x}, {hi:#x}) is not a shared mapping of the "
                          "memfd that was sent")
        if offset != lo - address:
            raise Refused("bad_range", f"[{lo:#x}, {hi:#x}) maps the memfd at offset "
                          f"{offset:#x}, not {lo - address:#x}: page i of the region must be "
                          "page i of the memfd")
        missing = {"um", "uw", "dc"} - flags
        if missing:
            what = {"um": "registered with userfaultfd MISSING", "uw": "registered with "
                    "userfaultfd WP", "dc": "MADV_DONTFORK"}
            raise Refused("bad_range", f"[{lo:#x}, {hi:#x}) is not " +
                          " and not ".join(what[m] for m in sorted(missing)))
        covered = hi
        if covered >= end:
            return
    raise Refused("bad_range", f"[{address:#x}, {end:#x}) is not mapped in process {pid} "
                  f"(mapped up to {covered:#x})")
