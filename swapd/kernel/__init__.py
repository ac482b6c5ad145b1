"""Kernel ABI bindings used by the daemon and the client library (ctypes, x86_64).

* :mod:`swapd.kernel.uffd` -- userfaultfd: API handshake, (un)register, COPY,
  ZEROPAGE, WRITEPROTECT, CONTINUE, WAKE, POISON and event parsing.
* :mod:`swapd.kernel.memfd` -- memfd_create, hole punching, SEEK_DATA/SEEK_HOLE
  and a reusable page-aligned I/O buffer.
* :mod:`swapd.kernel.pidfd` -- pidfd_open, pidfd_getfd, process_madvise,
  SO_PEERCRED.
* :mod:`swapd.kernel.pagemap` -- PAGEMAP_SCAN and /proc/PID/pagemap words.
* :mod:`swapd.kernel.mm` -- madvise on our own memory, buffer addresses.
* :mod:`swapd.kernel.sdnotify` -- sd_notify.
* :mod:`swapd.kernel.errors` -- the named exceptions (errno + meaning).
* :mod:`swapd.kernel.zram` -- zram devices for the kernel baselines.

Facts about this kernel (Linux 6.18) are measured in ``docs/design.md`` (section 11); each
struct is quoted from its uapi header above its Python layout.  Nothing in
``swapd.layer`` imports this package.
"""
