"""Building the layer from the ``[layer]`` section of the configuration.

The one construction of the daemon's layer: ``swapd serve`` calls it, and so
does the full-mode simulator (``swapd.sim.full``), so that both drive exactly
the same tiers and settings (DESIGN.md section 7).  It lives here, in the
layer package, so that neither the daemon nor the simulator depends on the
other.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from swapd.compress import get_compressor
from swapd.config import LayerSection
from swapd.errors import ConfigError
from swapd.layer.core import LayerConfig, SwapLayer
from swapd.layer.tier import CompressedTier, DiskTier, Tier
from swapd.plugins import make_backend


def build_layer(section: LayerSection, state_path: Path, *,
                clock: Callable[[], float] | None = None, max_pages: int | None = None,
                options: Mapping[str, Any] | None = None) -> SwapLayer:
    """A compressed tier (``section.backend`` + ``section.compressor``), then a disk tier.

    ``clock`` is the layer's clock (default: the layer's own, ``time.monotonic``);
    ``max_pages`` caps the backend's arena (default: the backend's); ``options``
    overrides :class:`LayerConfig` fields after the section (ConfigError if one is
    not a field).  The disk tier's file is created in ``state_path`` unless
    ``section.disk_path`` names one, and is removed when the layer closes.  On
    failure, the tiers built so far are closed.
    """
    opts = section.layer_options()
    if options:
        names = {f.name for f in dataclasses.fields(LayerConfig)}
        for k, v in options.items():
            if k not in names:
                raise ConfigError(f"unknown layer option {k!r}; LayerConfig fields are "
                                  f"{', '.join(sorted(names))}")
            opts[k] = v
    layer_cfg = LayerConfig(**opts)
    backend = (make_backend(section.backend) if max_pages is None
               else make_backend(section.backend, max_pages=max_pages))
    tiers: list[Tier] = []
    try:
        tiers.append(CompressedTier(get_compressor(section.compressor), backend))
        if section.disk:
            if section.disk_path:
                disk = section.disk_path
            else:
                state_path.mkdir(parents=True, exist_ok=True, mode=0o700)
                disk = str(state_path)
            tiers.append(DiskTier(disk, section.disk_bytes, seal=section.disk_seal))
        if clock is None:
            return SwapLayer(tiers, config=layer_cfg, demotion_policy=section.demotion_policy)
        return SwapLayer(tiers, config=layer_cfg, clock=clock,
                         demotion_policy=section.demotion_policy)
    except BaseException:
        if not tiers:
            backend.close()
        for t in tiers:
            t.close()
        raise
