"""Shared fixtures: every installed allocator backend, plus the fixture package's own.

``backend_variant`` is parametrized over every backend that loads through the
``swapd.backends`` entry points (``swapd.plugins.available_backends()``), over
``zsmalloc``'s second lock mode when it has one, and over ``tiny`` -- the
one-object-per-page backend of ``tests/fixtures/tinybackend`` -- imported straight
from its source tree, so the contract suite always has a known-correct backend
to run against (it is also how the suite itself is checked).

Tests marked ``slow`` run only with ``--runslow`` (or ``-m slow``), so the default
suite stays fast.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from swapd.backend import Backend
from swapd.errors import ConfigError
from swapd.plugins import available_backends

FIXTURES = Path(__file__).resolve().parent / "fixtures"
TINY_SRC = FIXTURES / "tinybackend"
if str(TINY_SRC) not in sys.path:
    sys.path.append(str(TINY_SRC))


@dataclass(frozen=True)
class BackendVariant:
    """A backend class and the options to build it with; ``id`` names the test."""

    id: str
    cls: type[Backend]
    options: dict[str, Any] = field(default_factory=dict)

    def make(self, **extra: Any) -> Backend:
        """Build a fresh pool (pass ``max_pages`` for a tiny arena)."""
        return self.cls(**self.options, **extra)


def _variants() -> dict[str, BackendVariant]:
    from tinybackend import TinyPool

    classes: dict[str, type[Backend]] = dict(available_backends())
    classes.setdefault("tiny", TinyPool)
    out = {name: BackendVariant(name, cls) for name, cls in classes.items()}
    zs = classes.get("zsmalloc")
    if zs is not None:
        try:
            zs(max_pages=1, lock="pool").close()
        except (ConfigError, TypeError, ValueError):
            pass  # no lock switch: only the default variant
        else:
            out["zsmalloc-lock=pool"] = BackendVariant("zsmalloc-lock=pool", zs,
                                                       {"lock": "pool"})
    return out


VARIANTS = _variants()


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


@pytest.fixture(params=sorted(VARIANTS))
def backend_variant(request: pytest.FixtureRequest) -> BackendVariant:
    """Each installed backend (and lock mode) in turn."""
    return VARIANTS[request.param]


@pytest.fixture
def pool(backend_variant: BackendVariant) -> Iterator[Backend]:
    """A fresh pool of the parametrized backend with a 64 MiB arena; closed afterwards."""
    b = backend_variant.make(max_pages=16384)
    yield b
    b.close()


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
