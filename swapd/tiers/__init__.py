"""Tiers beyond the layer's built-in ones (entry points ``swapd.tiers``)."""
