"""One contract suite for every victim-selection policy found through the
``swapd.policies`` entry points (see ``swapd/policy/__init__.py``).

The suite ships in the package (``swapd/testing/policy_contract.py``, run by a third
party with ``pytest --swapd-policy NAME``); here it runs with each policy's defaults and,
for a few, parameter variants (the libCacheSim-compatible settings) that claim the same
contract -- named in ``tests/conftest.py``.
"""

from __future__ import annotations

from swapd.plugins import available_policies
from swapd.testing.policy_contract import *  # noqa: F403

SHIPPED = {"lru", "fifo", "clock", "sieve", "s3fifo", "arc", "2q"}


def test_every_shipped_policy_is_registered() -> None:
    assert set(available_policies()) >= SHIPPED
