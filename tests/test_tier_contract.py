"""The Tier contract, run against every installed tier.

The suite itself ships in the package (``swapd/testing/tier_contract.py``, run by a third party
with ``pytest --swapd-tier NAME``); here it runs over every tier of the ``swapd.tiers`` entry
points, the Redis tier against Redis on a test host (``swapd_tier_options`` in
tests/conftest.py).
"""

from __future__ import annotations

from swapd.plugins import TIERS_GROUP, discover
from swapd.testing.tier_contract import *  # noqa: F403


def test_every_shipped_tier_is_registered() -> None:
    infos = {i.name: i for i in discover(TIERS_GROUP)}
    for name in ("compressed", "disk", "redis"):
        assert infos[name].ok, infos[name].error
