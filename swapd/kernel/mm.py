"""madvise(2) on the caller's own memory, and the address of a Python buffer.

``madvise`` here acts on the calling process only; for another process's
memory use :func:`swapd.kernel.pidfd.process_madvise` (which has no
MADV_DONTNEED: that is why managed memory is a memfd the daemon can punch).
Advice values are from ``include/uapi/asm-generic/mman-common.h``.
"""

from __future__ import annotations

import ctypes
from typing import Final

from swapd.kernel import _libc
from swapd.kernel.errors import kernel_error

MADV_NORMAL: Final = 0
MADV_WILLNEED: Final = 3
MADV_DONTNEED: Final = 4  # drop the PTEs; anon pages read back as zero, shmem stays cached
MADV_REMOVE: Final = 9  # 2.6.16: free the backing store (punch shmem/memfd pages)
MADV_DONTFORK: Final = 10  # 2.6.16: the range is not mapped in a fork() child
MADV_DOFORK: Final = 11  # undo MADV_DONTFORK
MADV_COLD: Final = 20  # 5.4: deactivate
MADV_PAGEOUT: Final = 21  # 5.4: reclaim now (unmaps; without swap shmem stays cached)


def madvise(address: int, length: int, advice: int) -> None:
    """``madvise(address, length, advice)`` on this process; KernelError on failure.

    ``address`` must be page-aligned (EINVAL otherwise).
    """
    if _libc.madvise(address, length, advice) != 0:
        raise kernel_error(_libc.get_errno(), f"madvise({advice})")


def address_of(buffer: object) -> int:
    """The address of the first byte of a writable buffer (bytearray, mmap, memoryview).

    The buffer must stay alive (and, for mmap, open) while the address is used.
    Raises TypeError for read-only buffers such as ``bytes``.
    """
    anchor = ctypes.c_char.from_buffer(buffer)  # type: ignore[arg-type]
    addr = ctypes.addressof(anchor)
    del anchor  # release the buffer export at once (mmap.close() needs that)
    return addr
