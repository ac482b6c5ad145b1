"""The page size: the one definition every module of swapd imports.

swapd stores, moves and accounts whole 4 KiB pages (the unit of userfaultfd's
UFFDIO_COPY, of a memfd hole, of a backend's arena and of the state format,
docs/state-format.md).  The kernel bindings run on x86_64 only, whose base page
is 4 KiB; the import fails loudly on a machine with another page size rather
than mis-size every buffer.
"""

from __future__ import annotations

import mmap
from typing import Final

PAGE_SHIFT: Final = 12
PAGE_SIZE: Final = 1 << PAGE_SHIFT

if mmap.PAGESIZE != PAGE_SIZE:  # pragma: no cover - not an x86_64 machine
    raise ImportError(f"swapd needs {PAGE_SIZE}-byte pages; this machine has {mmap.PAGESIZE}")
