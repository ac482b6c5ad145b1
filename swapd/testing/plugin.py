"""The ``swapd`` pytest plugin: ``--swapd-backend`` / ``--swapd-policy`` and the contract
fixtures (see :mod:`swapd.testing`).  Registered in the ``pytest11`` entry-point group.

Design.  The options take specs (``NAME``, ``NAME:opt=value,...``, ``pkg.mod:Class``),
resolved once per session into variants; ``pytest_generate_tests`` parametrizes every
test that asks for ``swapd_backend`` or ``swapd_policy`` over them (default: every
installed plugin of the group, so the in-tree suite covers all of them).  A spec that
does not resolve is a usage error reported before any test runs.  With a spec given and
no test paths on the command line, the shipped suites are collected.  No state beyond
the resolved variants (``config.stash``); no locks.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from swapd.testing import (
    BackendVariant,
    PolicyVariant,
    TierVariant,
    backend_variant,
    policy_variant,
    tier_variant,
)

_BACKENDS = pytest.StashKey[list[BackendVariant]]()
_POLICIES = pytest.StashKey[list[PolicyVariant]]()
_TIERS = pytest.StashKey[list[TierVariant]]()
_DEFAULTS = pytest.StashKey[tuple[list[str], list[str]]]()


def set_defaults(config: pytest.Config, backends: list[str], policies: list[str]) -> None:
    """Specs to run when no ``--swapd-backend`` / ``--swapd-policy`` is given (instead of
    every installed plugin): a project's conftest calls this from ``pytest_configure``
    to add variants (swapd's own adds an unregistered test backend and option variants)."""
    config.stash[_DEFAULTS] = (list(backends), list(policies))


def pytest_addoption(parser: pytest.Parser) -> None:
    """Add ``--swapd-backend`` and ``--swapd-policy``."""
    g = parser.getgroup("swapd", "swapd contract suites")
    g.addoption("--swapd-backend", action="append", default=[], metavar="SPEC",
                help="run the backend contract suite against SPEC: NAME, NAME:opt=value,... "
                     "or pkg.module:Class (repeatable; default: every installed backend)")
    g.addoption("--swapd-tier", action="append", default=[], metavar="SPEC",
                help="run the tier contract suite against SPEC: NAME, NAME:opt=value,... or "
                     "pkg.module:Class (repeatable; default: every installed tier)")
    g.addoption("--swapd-policy", action="append", default=[], metavar="SPEC",
                help="run the policy contract suite against SPEC: NAME, NAME:param=value,... "
                     "or pkg.module:Class (repeatable; default: every installed policy)")


def pytest_configure(config: pytest.Config) -> None:
    """Resolve the specs (a bad one is a usage error) and pick the suites to collect."""
    from swapd.errors import SwapdError

    config.addinivalue_line("markers", "slow: a long-running contract test")
    bspecs: list[str] = config.getoption("swapd_backend") or []
    pspecs: list[str] = config.getoption("swapd_policy") or []
    tspecs: list[str] = config.getoption("swapd_tier") or []
    try:
        config.stash[_BACKENDS] = [backend_variant(s) for s in bspecs]
        config.stash[_POLICIES] = [policy_variant(s) for s in pspecs]
        config.stash[_TIERS] = [tier_variant(s) for s in tspecs]
    except SwapdError as exc:
        raise pytest.UsageError(f"swapd plugin: {exc}") from exc
    if (bspecs or pspecs or tspecs) and \
            config.args_source is not pytest.Config.ArgsSource.ARGS:
        here = Path(__file__).parent
        config.args[:] = ([str(here / "backend_contract.py")] if bspecs else []) + \
                         ([str(here / "policy_contract.py")] if pspecs else []) + \
                         ([str(here / "tier_contract.py")] if tspecs else [])


def _backends(config: pytest.Config) -> list[BackendVariant]:
    got = config.stash.get(_BACKENDS, [])
    if got:
        return got
    specs = config.stash.get(_DEFAULTS, ([], []))[0]
    if specs:
        return [backend_variant(s) for s in specs]
    from swapd.plugins import available_backends

    return [BackendVariant(n, c) for n, c in sorted(available_backends().items())]


def _policies(config: pytest.Config) -> list[PolicyVariant]:
    got = config.stash.get(_POLICIES, [])
    if got:
        return got
    specs = config.stash.get(_DEFAULTS, ([], []))[1]
    if specs:
        return [policy_variant(s) for s in specs]
    from swapd.plugins import available_policies

    return [PolicyVariant(n, c) for n, c in sorted(available_policies().items())]


def _tiers(config: pytest.Config) -> list[TierVariant]:
    got = config.stash.get(_TIERS, [])
    if got:
        return got
    from swapd.plugins import available_tiers

    return [TierVariant(n, c) for n, c in sorted(available_tiers().items())]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Parametrize ``swapd_backend`` / ``swapd_policy`` over the variants."""
    if "swapd_backend" in metafunc.fixturenames:
        bs = _backends(metafunc.config)
        metafunc.parametrize("swapd_backend", bs, ids=[b.id for b in bs])
    if "swapd_tier_variant" in metafunc.fixturenames:
        ts = _tiers(metafunc.config)
        metafunc.parametrize("swapd_tier_variant", ts, ids=[t.id for t in ts])
    if "swapd_policy_variant" in metafunc.fixturenames:
        ps = _policies(metafunc.config)
        metafunc.parametrize("swapd_policy_variant", ps, ids=[p.id for p in ps])


@pytest.fixture
def swapd_pool(swapd_backend: BackendVariant) -> Iterator[Any]:
    """A fresh pool of the parametrized backend with a 64 MiB arena; closed afterwards."""
    b = swapd_backend.make(max_pages=16384)
    yield b
    b.close()


@pytest.fixture
def swapd_policy(swapd_policy_variant: PolicyVariant) -> Any:
    """A factory ``capacity -> Policy`` of the parametrized policy."""
    return swapd_policy_variant.make


@pytest.fixture
def swapd_tier_options(swapd_tier_variant: TierVariant) -> dict[str, Any]:
    """Options added to the variant's when the suite builds a tier (none).  A project's
    conftest overrides this fixture to give a tier what only a test can make (the address
    of a store the test started)."""
    return {}


@pytest.fixture
def swapd_tier(swapd_tier_variant: TierVariant, swapd_tier_options: dict[str, Any],
               tmp_path: Path) -> Iterator[Any]:
    """A fresh tier of the parametrized variant (state in ``tmp_path``); closed afterwards."""
    from swapd.layer.tier import TierContext

    ctx = TierContext(state_path=tmp_path, instance=f"contract-{swapd_tier_variant.name}",
                      max_pages=4096, disk_bytes=512 * 4096)
    t = swapd_tier_variant.make(ctx, **swapd_tier_options)
    yield t
    t.close()
