"""A FUSE file system served from Python over ``/dev/fuse``, with faults injected on demand.

Design.  The disk tier's fault handling must be shown on a real file system, not a mock:
:class:`FaultFS` mounts a FUSE file system (root only: ``mount(2)`` with ``fd=N``, no helper
binary) whose files live in this process's memory, and answers the kernel's requests from a
thread.  Every file is opened ``FOPEN_DIRECT_IO``, so each ``pread``/``pwritev`` of the daemon
reaches the server (no page cache in between) and a fault lands on exactly the I/O chosen:

* ``fail_reads``: file offsets whose reads answer EIO; ``fail_next_reads``: the next N reads;
* ``fail_writes``: every write answers EIO (``writes`` counts the attempts);
* ``capacity``: bytes the file system holds; a write or ``fallocate`` beyond answers ENOSPC,
  and ``statfs`` says so; ``fallocate_ok=False`` answers EOPNOTSUPP (a sparse file);
* ``read_delay_s``: every read waits that long before it is answered;
* :meth:`hold_reads` / :meth:`release_reads`: reads wait, unanswered, until released (a slow
  disk on cue, for tests that order events instead of timing them); ``held`` counts the reads
  waiting, :meth:`wait_held` waits for them;
* :meth:`corrupt`: change stored bytes behind the reader's back.

The server handles one request at a time (a delayed read delays the others).  The file
system has one directory (the root) of regular files; enough of the protocol for a file to be
created, sized, allocated, read, written, stat'ed and unlinked.  :meth:`close` unmounts
(``MNT_DETACH``) and closes ``/dev/fuse``, which aborts anything still waiting.

Structures quoted from include/uapi/linux/fuse.h (protocol 7.31; the kernel accepts the
shorter replies of older minors).  Lock order: ``FaultFS._lock`` is a leaf.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import stat
import struct
import threading
import time
from dataclasses import dataclass, field

__all__ = ["FaultFS", "fuse_unavailable"]

# struct fuse_in_header { u32 len; u32 opcode; u64 unique; u64 nodeid; u32 uid; u32 gid;
#                         u32 pid; u16 total_extlen; u16 padding; }
_IN = struct.Struct("<IIQQIIIHH")
# struct fuse_out_header { u32 len; s32 error; u64 unique; }
_OUT = struct.Struct("<IiQ")
# struct fuse_attr { u64 ino, size, blocks, atime, mtime, ctime; u32 atimensec, mtimensec,
#                    ctimensec, mode, nlink, uid, gid, rdev, blksize, flags; }
_ATTR = struct.Struct("<QQQQQQIIIIIIIIII")
# struct fuse_entry_out { u64 nodeid, generation, entry_valid, attr_valid;
#                         u32 entry_valid_nsec, attr_valid_nsec; struct fuse_attr attr; }
_ENTRY = struct.Struct("<QQQQII")
# struct fuse_attr_out { u64 attr_valid; u32 attr_valid_nsec; u32 dummy; struct fuse_attr; }
_ATTR_OUT = struct.Struct("<QII")
# struct fuse_init_out { u32 major, minor, max_readahead, flags; u16 max_background,
#   congestion_threshold; u32 max_write, time_gran; u16 max_pages, map_alignment;
#   u32 flags2; u32 unused[7]; }
_INIT_OUT = struct.Struct("<IIIIHHIIHHI28x")
# struct fuse_open_out { u64 fh; u32 open_flags; u32 padding; }
_OPEN_OUT = struct.Struct("<QII")
# struct fuse_create_in { u32 flags, mode, umask, open_flags; }
_CREATE_IN = struct.Struct("<IIII")
# struct fuse_read_in { u64 fh, offset; u32 size, read_flags; u64 lock_owner; u32 flags, pad; }
_READ_IN = struct.Struct("<QQII")
# struct fuse_write_in { u64 fh, offset; u32 size, write_flags; u64 lock_owner; u32 flags,
#                        padding; }  (40 bytes, then the data)
_WRITE_IN = struct.Struct("<QQIIQII")
_WRITE_OUT = struct.Struct("<II")
# struct fuse_setattr_in { u32 valid, padding; u64 fh, size, ...}  (FATTR_SIZE = 1 << 3)
_SETATTR_IN = struct.Struct("<IIQQ")
# struct fuse_fallocate_in { u64 fh, offset, length; u32 mode, padding; }
_FALLOCATE_IN = struct.Struct("<QQQII")
# struct fuse_kstatfs { u64 blocks, bfree, bavail, files, ffree; u32 bsize, namelen, frsize,
#                       padding; u32 spare[6]; }
_STATFS = struct.Struct("<QQQQQIIII24x")

_LOOKUP, _FORGET, _GETATTR, _SETATTR = 1, 2, 3, 4
_UNLINK, _OPEN, _READ, _WRITE, _STATFS_OP, _RELEASE = 10, 14, 15, 16, 17, 18
_FSYNC, _FLUSH, _INIT, _OPENDIR, _RELEASEDIR = 20, 25, 26, 27, 29
_CREATE, _INTERRUPT, _DESTROY, _BATCH_FORGET, _FALLOCATE = 35, 36, 38, 42, 43
_NO_REPLY = (_FORGET, _BATCH_FORGET, _INTERRUPT)
_FOPEN_DIRECT_IO = 1 << 0
_FATTR_SIZE = 1 << 3
_MAX_WRITE = 1 << 20
_BLOCK = 4096
_ROOT = 1

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong,
                        ctypes.c_char_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
_MS_NOSUID, _MS_NODEV, _MNT_DETACH = 2, 4, 2


def fuse_unavailable() -> str | None:
    """Why a FaultFS cannot be mounted here, or None."""
    if os.geteuid() != 0:
        return "mounting a FUSE file system without fusermount needs root"
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse is absent (no FUSE in this kernel)"
    with open("/proc/filesystems") as f:
        if "\tfuse\n" not in f.read():
            return "the kernel has no fuse file system"
    return None


@dataclass
class _Node:
    ino: int
    data: bytearray = field(default_factory=bytearray)
    size: int = 0
    allocated: int = 0  # bytes charged against the capacity


class FaultFS:
    """The mounted file system at ``mountpoint`` (see the module docstring)."""

    def __init__(self, mountpoint: str | os.PathLike[str], *, capacity: int = 1 << 30) -> None:
        self.mountpoint = os.fspath(mountpoint)
        self._lock = threading.Lock()
        self._names: dict[str, _Node] = {}  # under _lock
        self._nodes: dict[int, _Node] = {}  # under _lock
        self._next_ino = 2
        self.capacity = capacity
        self.fail_reads: set[int] = set()
        self.fail_next_reads = 0
        self.fail_writes = False
        self.fallocate_ok = True
        self.read_delay_s = 0.0
        self._gate = threading.Event()  # clear: reads wait (hold_reads)
        self._gate.set()
        self._held_cond = threading.Condition()
        self.held = 0  # under _held_cond: reads waiting at the gate
        self.reads = 0
        self.writes = 0
        self.failed_reads = 0
        self.failed_writes = 0
        self._fd = os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC)
        opts = f"fd={self._fd},rootmode=40000,user_id=0,group_id=0,allow_other".encode()
        if _libc.mount(b"swapd-faultfs", self.mountpoint.encode(), b"fuse.swapdfault",
                       _MS_NOSUID | _MS_NODEV, opts) != 0:
            e = ctypes.get_errno()
            os.close(self._fd)
            raise OSError(e, f"mount fuse on {self.mountpoint}: {os.strerror(e)}")
        self._thread = threading.Thread(target=self._serve, name="faultfs", daemon=True)
        self._thread.start()

    # --- control -------------------------------------------------------------------------

    def used(self) -> int:
        with self._lock:
            return sum(n.allocated for n in self._nodes.values())

    def corrupt(self, name: str, offset: int, data: bytes) -> None:
        """Overwrite ``data`` at ``offset`` of file ``name``, unseen by its readers."""
        with self._lock:
            node = self._names[name]
            node.data[offset:offset + len(data)] = data

    def hold_reads(self) -> None:
        """From now on every read waits, unanswered, until :meth:`release_reads`."""
        self._gate.clear()

    def release_reads(self) -> None:
        """Answer the held reads, and the later ones at once."""
        self._gate.set()

    def wait_held(self, n: int = 1, timeout: float = 60.0) -> bool:
        """Wait until at least ``n`` reads are held; False if that did not happen in time."""
        with self._held_cond:
            return self._held_cond.wait_for(lambda: self.held >= n, timeout)

    def files(self) -> list[str]:
        with self._lock:
            return sorted(self._names)

    def close(self) -> None:
        """Unmount and stop serving.  Idempotent."""
        if self._fd < 0:
            return
        _libc.umount2(self.mountpoint.encode(), _MNT_DETACH)
        fd, self._fd = self._fd, -1
        self._gate.set()
        os.close(fd)
        self._thread.join(10)

    def __enter__(self) -> FaultFS:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- the server ------------------------------------------------------------------------

    def _serve(self) -> None:
        while True:
            fd = self._fd
            if fd < 0:
                return
            try:
                req = os.read(fd, _MAX_WRITE + 65536)
            except OSError as exc:
                if exc.errno in (errno.EINTR, errno.EAGAIN, errno.ENOENT):
                    continue  # ENOENT: the request was interrupted meanwhile
                return  # ENODEV: unmounted; EBADF: closed
            if len(req) < _IN.size:
                continue
            _len, op, unique, nodeid, _uid, _gid, _pid, _ext, _pad = _IN.unpack_from(req)
            body = memoryview(req)[_IN.size:]
            if op in _NO_REPLY:
                continue
            try:
                err, payload = self._handle(op, nodeid, body)
            except Exception:  # a bug here must not hang the reader: answer EIO
                err, payload = errno.EIO, b""
            out = _OUT.pack(_OUT.size + (0 if err else len(payload)), -err if err else 0,
                            unique) + (b"" if err else payload)
            with contextlib.suppress(OSError):
                os.write(fd, out)
            if op == _DESTROY:
                return

    def _attr(self, node: _Node | None) -> bytes:
        now = int(time.time())
        if node is None:
            return _ATTR.pack(_ROOT, 0, 0, now, now, now, 0, 0, 0, stat.S_IFDIR | 0o755, 2,
                              0, 0, 0, _BLOCK, 0)
        return _ATTR.pack(node.ino, node.size, node.allocated // 512, now, now, now, 0, 0, 0,
                          stat.S_IFREG | 0o600, 1, 0, 0, 0, _BLOCK, 0)

    def _entry(self, node: _Node) -> bytes:
        return _ENTRY.pack(node.ino, 0, 0, 0, 0, 0) + self._attr(node)

    def _handle(self, op: int, nodeid: int, body: memoryview) -> tuple[int, bytes]:
        if op == _INIT:
            return 0, _INIT_OUT.pack(7, 31, 0, 0, 16, 12, _MAX_WRITE, 1, 256, 0, 0)
        if op == _DESTROY or op in (_RELEASE, _FLUSH, _FSYNC, _RELEASEDIR):
            return 0, b""
        if op == _OPENDIR:
            return 0, _OPEN_OUT.pack(0, 0, 0)
        if op == _STATFS_OP:
            free = max(0, self.capacity - self.used()) // _BLOCK
            return 0, _STATFS.pack(self.capacity // _BLOCK, free, free, 1000, 1000, _BLOCK,
                                   255, _BLOCK, 0)
        with self._lock:
            node = self._nodes.get(nodeid)
            if op == _LOOKUP:
                child = self._names.get(bytes(body).split(b"\0", 1)[0].decode())
                return (0, self._entry(child)) if child else (errno.ENOENT, b"")
            if op == _GETATTR:
                if nodeid == _ROOT:
                    return 0, _ATTR_OUT.pack(0, 0, 0) + self._attr(None)
                return (0, _ATTR_OUT.pack(0, 0, 0) + self._attr(node)) if node else (
                    errno.ENOENT, b"")
            if op == _CREATE:
                name = bytes(body[_CREATE_IN.size:]).split(b"\0", 1)[0].decode()
                if name in self._names:
                    return errno.EEXIST, b""
                node = _Node(self._next_ino)
                self._next_ino += 1
                self._names[name] = node
                self._nodes[node.ino] = node
                return 0, self._entry(node) + _OPEN_OUT.pack(node.ino, _FOPEN_DIRECT_IO, 0)
            if op == _UNLINK:
                name = bytes(body).split(b"\0", 1)[0].decode()
                gone = self._names.pop(name, None)
                if gone is None:
                    return errno.ENOENT, b""
                self._nodes.pop(gone.ino, None)
                return 0, b""
            if node is None:
                return errno.ENOENT, b""
            if op == _OPEN:
                return 0, _OPEN_OUT.pack(node.ino, _FOPEN_DIRECT_IO, 0)
            if op == _SETATTR:
                valid, _p, _fh, size = _SETATTR_IN.unpack_from(body)
                if valid & _FATTR_SIZE:
                    node.size = size
                    del node.data[size:]
                return 0, _ATTR_OUT.pack(0, 0, 0) + self._attr(node)
            if op == _FALLOCATE:
                _fh, off, length, mode, _p = _FALLOCATE_IN.unpack_from(body)
                if not self.fallocate_ok or mode:
                    return errno.EOPNOTSUPP, b""
                end = off + length
                grow = max(0, end - node.allocated)
                if self._used_locked() + grow > self.capacity:
                    return errno.ENOSPC, b""
                node.allocated += grow
                node.size = max(node.size, end)
                return 0, b""
            if op == _WRITE:
                _fh, off, size, _wf, _lo, _fl, _p = _WRITE_IN.unpack_from(body)
                data = body[_WRITE_IN.size:_WRITE_IN.size + size]
                self.writes += 1
                if self.fail_writes:
                    self.failed_writes += 1
                    return errno.EIO, b""
                grow = max(0, off + size - node.allocated)
                if self._used_locked() + grow > self.capacity:
                    self.failed_writes += 1
                    return errno.ENOSPC, b""
                node.allocated += grow
                if len(node.data) < off + size:
                    node.data.extend(bytes(off + size - len(node.data)))
                node.data[off:off + size] = data
                node.size = max(node.size, off + size)
                return 0, _WRITE_OUT.pack(size, 0)
            if op == _READ:
                _fh, off, size, _rf = _READ_IN.unpack_from(body)
                self.reads += 1
                fail = off in self.fail_reads or self.fail_next_reads > 0
                if fail:
                    self.fail_next_reads = max(0, self.fail_next_reads - 1)
                    self.failed_reads += 1
                got = bytes(node.data[off:off + size])
                if off < node.size:
                    got = got.ljust(min(size, node.size - off), b"\0")
                delay = self.read_delay_s
        if op == _READ:
            if not self._gate.is_set():
                with self._held_cond:
                    self.held += 1
                    self._held_cond.notify_all()
                self._gate.wait()
                with self._held_cond:
                    self.held -= 1
            if delay:
                time.sleep(delay)
            return (errno.EIO, b"") if fail else (0, got)
        return errno.ENOSYS, b""

    def _used_locked(self) -> int:
        return sum(n.allocated for n in self._nodes.values())
