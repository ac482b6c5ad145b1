"""The simulator: traces and synthetic workloads replayed through the real policies and layer.

Modules (docs/simulator.md says what each mode measures and how far to trust it):

* :mod:`swapd.sim.trace` -- text, CSV (and ``swapd serve --record``) and libCacheSim
  oracleGeneral traces, streamed.
* :mod:`swapd.sim.gen` -- seeded synthetic workloads (zipf, scan, shift, loop, mix).
* :mod:`swapd.sim.policy_only` -- a cache of N pages and a policy (libCacheSim-comparable).
* :mod:`swapd.sim.full` -- resident set + reclaim policy + the real ``SwapLayer`` and tiers;
  the replay of a recorded trace's own stores and loads.
* :mod:`swapd.sim.wbexp` -- the allocator-owned writeback experiment.
* :mod:`swapd.sim.mattson` -- exact LRU miss-ratio curves in one pass.
* :mod:`swapd.sim.contents`, :mod:`swapd.sim.costs` -- page contents and modelled time.
* :mod:`swapd.sim.sweep`, :mod:`swapd.sim.plots`, :mod:`swapd.sim.report` -- sweeps (local
  processes or a Dask cluster), CSV/JSON, PNG figures, the summary and the HTML report.
* :mod:`swapd.sim.cli` -- ``swapd sim``.

Submodules are imported on use (the full mode imports the layer only when it runs).
"""
