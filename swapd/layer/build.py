"""Building the layer from the ``[layer]`` section of the configuration.

The one construction of the daemon's layer: ``swapd serve`` calls it, and so
do the full-mode simulator (``swapd.sim.full``) and the benchmarks, so that all
of them drive exactly the same tiers and settings (docs/design.md section 1).
It lives here, in the layer package, so that neither the daemon nor the
simulator depends on the other.  :func:`adopt_layer` is the same construction
over state regions that already exist (a restart: docs/state-format.md).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from swapd.compress import get_compressor
from swapd.errors import ConfigError
from swapd.layer.core import LayerConfig, SwapLayer
from swapd.layer.tier import Tier, TierContext
from swapd.plugins import make_tier

if TYPE_CHECKING:  # swapd.config imports swapd.layer (LayerSection is a LayerConfig)
    from swapd.config import LayerSection


def _layer_config(section: LayerSection, options: Mapping[str, Any] | None) -> LayerConfig:
    opts = section.layer_options()
    if options:
        names = {f.name for f in dataclasses.fields(LayerConfig)}
        for k, v in options.items():
            if k not in names:
                raise ConfigError(f"unknown layer option {k!r}; LayerConfig fields are "
                                  f"{', '.join(sorted(names))}")
            opts[k] = v
    return LayerConfig(**opts)


def adopt_layer(section: LayerSection, fds: Mapping[str, int], *,
                clock: Callable[[], float] | None = None,
                options: Mapping[str, Any] | None = None,
                seal_state: bytes | None = None,
                tier_options: Mapping[str, Mapping[str, Any]] | None = None) -> SwapLayer:
    """The layer whose state regions ``fds`` names (``SwapLayer.state_fds()``), with the
    section's settings; the fds are taken over.  ``seal_state``: the disk tier's sealer
    state (``Sealer.export_state()``) when it is sealed.  StateFormatError if a region
    cannot be read.
    """
    cfg = _layer_config(section, options)
    if clock is None:
        return SwapLayer.adopt(fds, config=cfg, demotion_policy=section.demotion_policy,
                               seal_state=seal_state, tier_options=tier_options)
    return SwapLayer.adopt(fds, config=cfg, clock=clock,
                           demotion_policy=section.demotion_policy, seal_state=seal_state,
                           tier_options=tier_options)


def build_layer(section: LayerSection, state_path: Path, *,
                clock: Callable[[], float] | None = None, max_pages: int | None = None,
                options: Mapping[str, Any] | None = None,
                tiers: Sequence[str | Tier] | None = None,
                tier_options: Mapping[str, Mapping[str, Any]] | None = None,
                backend_options: Mapping[str, Any] | None = None,
                instance: str = "swapd") -> SwapLayer:
    """The chain of tiers named by ``tiers`` (default ``section.tiers``, without "disk" when
    ``section.disk`` is false), each built by its plugin's ``from_config`` with its
    ``tier_options``, under one :class:`SwapLayer`.  An item of ``tiers`` may also be a
    tier already built (a benchmark that measures its backend alone beside the layer); it
    is taken over (closed with the layer, or here on failure).

    ``clock`` is the layer's clock (default: the layer's own, ``time.monotonic``);
    ``max_pages`` caps the compressed tiers' arenas (default: the backend's); ``options``
    overrides :class:`LayerConfig` fields after the section (ConfigError if one is
    not a field); ``backend_options`` are the ``[backend.NAME]`` options of
    ``section.backend``; ``instance`` names this daemon instance (files, remote keys).  A disk
    tier's file is created in ``state_path`` unless ``section.disk_path`` names one, and is
    removed when the layer closes.  On failure, the tiers built so far are closed.
    """
    layer_cfg = _layer_config(section, options)
    chain = list(tiers) if tiers is not None else [
        t for t in section.tiers if section.disk or t != "disk"]
    ctx = TierContext(state_path=state_path, instance=instance,
                      compressor=get_compressor(section.compressor).name,
                      backend=section.backend, backend_options=dict(backend_options or {}),
                      max_pages=max_pages,
                      disk_path=section.disk_path, disk_bytes=section.disk_bytes,
                      disk_seal=section.disk_seal)
    built: list[Tier] = []
    try:
        for name in chain:
            if isinstance(name, Tier):
                built.append(name)
            else:
                built.append(make_tier(name, ctx, (tier_options or {}).get(name)))
        if clock is None:
            return SwapLayer(built, config=layer_cfg, demotion_policy=section.demotion_policy)
        return SwapLayer(built, config=layer_cfg, clock=clock,
                         demotion_policy=section.demotion_policy)
    except BaseException:
        for t in built:
            t.close()
        for rest in chain[len(built):]:
            if isinstance(rest, Tier):
                rest.close()
        raise
