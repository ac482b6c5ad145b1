"""Shared fixtures: every installed allocator backend, plus the fixture package's own.

The contract suites ship in the package (``swapd.testing``, a pytest plugin); this
file names the variants they run over in-tree: every backend that loads through the
``swapd.backends`` entry points (``swapd.plugins.available_backends()``),
``zsmalloc``'s second lock mode when it has one, and ``tiny`` -- the
one-object-per-page backend of ``tests/fixtures/tinybackend`` -- imported straight
from its source tree, so the contract suite always has a known-correct backend
to run against (it is also how the suite itself is checked); every policy, plus
parameter variants.  ``backend_variant`` / ``pool`` are the plugin's fixtures under
the names the other backend tests use.

Tests marked ``slow`` run only with ``--runslow`` (or ``-m slow``), so the default
suite stays fast.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from swapd.backend import Backend
from swapd.backend_adapter import StateTableAdapter
from swapd.errors import ConfigError
from swapd.plugins import available_backends, available_policies
from swapd.testing import BackendVariant

FIXTURES = Path(__file__).resolve().parent / "fixtures"
TINY_SRC = FIXTURES / "tinybackend"
if str(TINY_SRC) not in sys.path:
    sys.path.append(str(TINY_SRC))


class AdaptedTiny(StateTableAdapter):
    """The fixture's ``tiny`` backend wrapped in swapd.backend_adapter.StateTableAdapter."""

    name = "tiny+adapter"

    def __init__(self, **options: Any) -> None:
        from tinybackend import TinyPool

        super().__init__(TinyPool(**options))


def _backend_specs() -> list[str]:
    """Every installed backend, zsmalloc's second lock mode, and ``tiny`` (by import path)."""
    names = sorted(available_backends())
    # tiny again through the array-layout adapter: a backend of the older contract.
    specs = [*names, "tinybackend:TinyPool", "tests.conftest:AdaptedTiny"]
    zs = available_backends().get("zsmalloc")
    if zs is not None:
        try:
            zs(max_pages=1, lock="pool").close()
        except (ConfigError, TypeError, ValueError):
            pass  # no lock switch: only the default variant
        else:
            specs.append("zsmalloc:lock=pool")
    return specs


# Parameter variants that keep the policy contract (request == victims + insert).
POLICY_VARIANTS = ["clock:bits=2", "clock:bits=3,insert_referenced=true",
                   "s3fifo:move_to_main_threshold=2,fill_main_before_evict=true,ghost_ratio=0.9",
                   "s3fifo:small_ratio=0.25,move_to_main_threshold=3", "2q:kin=0.5,kout=1.0"]


def pytest_configure(config: pytest.Config) -> None:
    """The in-tree run's variants for the shipped contract suites (swapd.testing.plugin)."""
    from swapd.testing.plugin import set_defaults

    set_defaults(config, _backend_specs(),
                 [*sorted(available_policies()), *POLICY_VARIANTS])


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--runslow", action="store_true", default=False,
                     help="also run tests marked slow (or select them with -m slow)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``slow`` are skipped unless ``--runslow`` or a ``-m`` naming slow."""
    if config.getoption("--runslow") or "slow" in (config.getoption("-m") or ""):
        return
    skip = pytest.mark.skip(reason="slow: run with --runslow (or -m slow)")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def backend_variant(swapd_backend: BackendVariant) -> BackendVariant:
    """Each backend variant in turn (the plugin's ``swapd_backend``, under its old name)."""
    return swapd_backend


@pytest.fixture
def pool(swapd_pool: Backend) -> Backend:
    """A fresh pool of the parametrized backend with a 64 MiB arena; closed afterwards."""
    return swapd_pool


# -- Redis on a test host (a network namespace on a bridge; swapd/testhosts.py) ----------------


@pytest.fixture(scope="session")
def redis_host() -> Iterator[Any]:
    """One standalone redis-server on a test host, shared by the session's tests."""
    from swapd.testhosts import HostNet, RedisServer, remove_leftovers, unavailable_reason

    why = unavailable_reason()
    if why:
        pytest.skip(why)
    remove_leftovers()
    with HostNet(1) as net:
        srv = RedisServer(net.hosts[0])
        try:
            yield srv
        finally:
            srv.stop()


@pytest.fixture
def redis_tier_options(redis_host: Any, request: pytest.FixtureRequest) -> dict[str, Any]:
    """Options of a RedisTier on ``redis_host``, in a namespace of this test's own."""
    import hashlib

    ns = hashlib.sha1(request.node.nodeid.encode()).hexdigest()[:20]
    return {"url": redis_host.url, "namespace": f"t-{ns}", "retry_s": 2.0,
            "capacity_bytes": 1 << 20}


@pytest.fixture
def swapd_tier_options(swapd_tier_variant: Any, request: pytest.FixtureRequest) -> dict[str, Any]:
    """The shipped tier suite's extra options: a Redis tier without a url in its spec gets the
    session's Redis on a test host, in a namespace of its own test."""
    if swapd_tier_variant.name == "redis" and "url" not in swapd_tier_variant.options:
        opts: dict[str, Any] = request.getfixturevalue("redis_tier_options")
        return opts
    return {}
