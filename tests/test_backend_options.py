"""Backend options: ``swapd.plugins.make_backend`` checks names and types before building.

The one function the config's ``[backend.NAME]`` sections, ``swapd sim --backend-opt`` and
``swapd bench --backend-opt`` share.
"""

from __future__ import annotations

import pytest

from swapd.errors import ConfigError, PluginError
from swapd.plugins import available_backends, backend_options, make_backend


def test_every_backend_takes_the_arena_options() -> None:
    for name in available_backends():
        opts = backend_options(name)
        assert "max_pages" in opts and "arena_cache_pages" in opts, name


def test_strings_are_converted_to_the_default_type() -> None:
    b = make_backend("zsmalloc", max_pages="64", lock="pool", chain_size="4",
                     handle_header="false")
    try:
        assert b.arena.max_pages == 64
        b._check()
    finally:
        b.close()


@pytest.mark.parametrize(("opts", "words"), [
    ({"no_such": 1}, ["no_such", "chain_size", "lock"]),
    ({"chain_size": "eight"}, ["chain_size", "int", "'eight'"]),
    ({"lock": 3}, ["lock", "str"]),
    ({"handle_header": "maybe"}, ["handle_header", "bool"]),
    ({"max_pages": True}, ["max_pages", "int"]),
])
def test_bad_options_name_the_option(opts: dict[str, object], words: list[str]) -> None:
    with pytest.raises(ConfigError) as ei:
        make_backend("zsmalloc", **opts)
    msg = str(ei.value)
    assert "zsmalloc" in msg
    for w in words:
        assert w in msg, msg
    assert "\n" not in msg


def test_range_checks_of_the_backend_still_run() -> None:
    with pytest.raises(ConfigError, match="chain_size"):
        make_backend("zsmalloc", chain_size="99")


def test_unknown_backend() -> None:
    with pytest.raises(PluginError):
        make_backend("no-such-backend")
