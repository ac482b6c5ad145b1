"""The allocator backend contract, run against every installed backend.

The suite itself ships in the package (``swapd/testing/backend_contract.py``, run by a
third party with ``pytest --swapd-backend NAME``); here it runs over the variants
``tests/conftest.py`` names: every backend that loads through the ``swapd.backends``
entry points, zsmalloc's second lock mode, and the fixture package's ``tiny``.
"""

from __future__ import annotations

from swapd.testing.backend_contract import *  # noqa: F403
