"""The generalized swap-LRU layer (docs/design.md section 2).

Public API (the binding contract with the daemon and the simulator):

* :class:`SwapLayer` -- slot-free entries over a chain of tiers with one LRU above them;
* :class:`LayerConfig`, :class:`LayerStats` (kernel counter names), :class:`EntryState`;
* :class:`Tier` (the contract), :class:`CompressedTier`, :class:`DiskTier`, :class:`TierLimits`,
  :func:`system_ram_bytes`;
* :class:`ShrinkerThread` -- runs :meth:`SwapLayer.shrink_step` in the background.
"""

from swapd.layer.core import LayerConfig, LayerStats, SwapLayer
from swapd.layer.shrinker import ShrinkerThread
from swapd.layer.table import EntryState, SwapTable
from swapd.layer.tier import (
    CompressedTier,
    DiskTier,
    SlotAllocator,
    Tier,
    TierLimits,
    system_ram_bytes,
)

__all__ = [
    "CompressedTier",
    "DiskTier",
    "EntryState",
    "LayerConfig",
    "LayerStats",
    "ShrinkerThread",
    "SlotAllocator",
    "SwapLayer",
    "SwapTable",
    "Tier",
    "TierLimits",
    "system_ram_bytes",
]
