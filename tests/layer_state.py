"""Helpers shared by the batch and differential tests: run a layer under one implementation,
and take its whole state as bytes so two layers can be compared byte for byte."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import pytest

import swapd._native.zsmalloc as native_zs
import swapd.impl as impl
import swapd.layer.core as core
from swapd.arena import PAGE_SHIFT
from swapd.layer import CompressedTier, SwapLayer

IMPLS = ["python", "compiled"]


def native_or_skip() -> Any:
    """The compiled module; skips (naming the reason) where it did not build."""
    mod = impl.native()
    if mod is None:
        try:
            mod = impl.select("compiled").module
        except impl.ImplError as exc:
            pytest.skip(f"compiled implementation unavailable: {exc}")
    return mod


@contextlib.contextmanager
def running(which: str) -> Iterator[None]:
    """Inside the block, the layer's batch operations run with ``which`` implementation, and
    zsmalloc pools built there get that implementation's paths."""
    old = core._NATIVE
    core._NATIVE = native_or_skip() if which == "compiled" else None
    old_ref = native_zs.use_reference(which != "compiled")  # ImplError: skipped above
    try:
        yield
    finally:
        core._NATIVE = old
        native_zs.use_reference(old_ref)


def state_bytes(lay: SwapLayer) -> dict[str, Any]:
    """Everything a layer and its compressed tier hold, as comparable values: the swap table's
    words and links, the side table, every counter, and the pool's bytes and accounting."""
    with lay._lock:
        t = lay._table
        out: dict[str, Any] = {
            "words": bytes(t.words[:t.top].cast("B")),
            "next": bytes(t.next[:t.top].cast("B")),
            "prev": bytes(t.prev[:t.top].cast("B")),
            "side": t.side.as_dict(),
        }
    out["stats"] = lay.stats().as_dict()
    for k, tier in enumerate(lay._tiers):
        if isinstance(tier, CompressedTier):
            be = tier.backend
            arena = be.arena
            top = arena._top
            out[f"tier{k}.pool"] = bytes(arena.buf[:top << PAGE_SHIFT])
            out[f"tier{k}.stats"] = be.stats()
            region = getattr(be, "state", None)  # a backend that keeps its state in a region
            if region is not None:
                out[f"tier{k}.state"] = bytes(region._mm[:region._size])
    return out
