"""The simulator: traces and synthetic workloads replayed through the real policies and layer.

Modules (docs/design.md section 10, issue 5):

* :mod:`swapd.sim.trace` -- text, CSV and libCacheSim oracleGeneral traces, streamed.
* :mod:`swapd.sim.gen` -- seeded synthetic workloads (zipf, scan, shift, loop).
* :mod:`swapd.sim.policy_only` -- a cache of N pages and a policy (libCacheSim-comparable).
* :mod:`swapd.sim.full` -- resident set + reclaim policy + the real ``SwapLayer`` and tiers.
* :mod:`swapd.sim.mattson` -- exact LRU miss-ratio curves in one pass.
* :mod:`swapd.sim.contents`, :mod:`swapd.sim.costs` -- page contents and modelled time.
* :mod:`swapd.sim.sweep`, :mod:`swapd.sim.plots` -- parallel sweeps, CSV/JSON, PNG figures.
* :mod:`swapd.sim.cli` -- ``swapd sim``.

Submodules are imported on use (the full mode imports the layer only when it runs).
"""
