"""The compiled zsmalloc fast paths wired to a ``backends.zsmalloc.ZsPool``.

``lock_type()`` is the lock class a pool builds its class, pool and meta locks from: the
compiled implementation's ``Mutex`` (a pthread mutex the C code takes without the GIL and Python
takes like ``threading.Lock``), or ``threading.Lock`` under the reference.  ``attach(pool)``
builds a ``ZsFast`` over the pool's state region and arena and puts its ``malloc``, ``free``,
``read`` and ``write`` on the pool instance; each does what the Python method does, bit for bit,
when it needs no arena page and no growth of the region's file, and otherwise calls the Python
method (which also raises the named errors).  ``detach(pool)`` undoes it before the pool closes.
tests/test_native_differential.py checks that both leave the same bytes.
"""

from __future__ import annotations

import threading
from typing import Any

from swapd.impl import native

__all__ = ["attach", "detach", "fast_of", "lock_type", "use_reference"]

_forced: list[Any] = []  # [module or None] while a test forces an implementation


def use_reference(flag: bool | None) -> bool | None:
    """Build the pools made from now on with the reference paths (True), with the compiled
    ones (False: loaded even when this process runs the reference), or with this process's
    implementation (None); return the previous setting.  For the differential tests."""
    old = None if not _forced else _forced[0] is None
    _forced.clear()
    if flag is not None:
        from swapd.impl import select

        _forced.append(None if flag else select("compiled").module)
    return old


def _native() -> Any:
    return _forced[0] if _forced else native()


def lock_type() -> Any:
    """The lock class for zsmalloc's locks in this process's implementation."""
    nat = _native()
    return nat.Mutex if nat is not None else threading.Lock


def attach(pool: Any) -> Any:
    """Give ``pool`` (a ZsPool built with ``lock_type()`` locks) the compiled fast paths;
    return the ZsFast, or None under the reference, when its locks are not Mutexes, or when
    its state is mapped read-only (a reader in another process)."""
    nat = _native()
    if nat is None or not isinstance(pool._meta_lock, nat.Mutex):
        return None
    if pool._H.readonly or pool.arena.buf.readonly:
        return None  # a reader's read-only mapping: the Python paths read it
    geometry: list[tuple[int, int, int, int, int] | None] = [None] * 256
    locks: list[Any] = [None] * 256
    for cls in pool._classes:
        geometry[cls.index] = (cls.size, cls.pages_per_zspage, cls.objs_per_zspage,
                               int(cls.huge), cls.hdr)
        locks[cls.index] = cls.lock
    class_for = bytes([0] + [pool._class_for[s].index for s in range(1, 4097)])
    st = pool.state
    cls_type = type(pool)
    fast = nat.ZsFast(
        classes=pool._C, fullness=pool._F, handles=pool._H, zspages=pool._Z, pages=pool._P,
        scalars=pool._S, arena=pool.arena.buf, geometry=geometry, class_for=class_for,
        locks=locks, meta=pool._meta_lock, s_hfree=pool._s_hfree, s_hcount=pool._s_hcount,
        hcap=pool._hcap, state_fd=st.fd, h_offset=st.offset("handles"),
        fallbacks=(cls_type.malloc.__get__(pool), cls_type.free.__get__(pool),
                   cls_type.read.__get__(pool), cls_type.write.__get__(pool)))
    pool.malloc = fast.malloc
    pool.free = fast.free
    pool.read = fast.read
    pool.write = fast.write
    pool._native_fast = fast
    return fast


def fast_of(pool: Any) -> Any:
    """The ZsFast attached to ``pool``, or None."""
    return getattr(pool, "_native_fast", None)


def detach(pool: Any) -> None:
    """Drop ``pool``'s fast paths and their views of its state (before it closes)."""
    fast = pool.__dict__.pop("_native_fast", None)
    if fast is None:
        return
    for name in ("malloc", "free", "read", "write"):
        pool.__dict__.pop(name, None)
    fast.release()
