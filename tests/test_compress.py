"""Compressors and same-filled page detection (``swapd.compress``)."""

from __future__ import annotations

import random

import lz4.block
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from swapd.arena import PAGE_SIZE
from swapd.compress import COMPRESSORS, fill_page, get_compressor, same_filled_value
from swapd.corpus import Corpus
from swapd.errors import ConfigError

PAGES = list(Corpus.synthetic(120, seed=11))


def test_zero_page_is_same_filled() -> None:
    assert same_filled_value(bytes(PAGE_SIZE)) == 0


@given(st.integers(0, (1 << 64) - 1))
@settings(max_examples=50, derandomize=True, database=None)
def test_fill_and_detect_round_trip(value: int) -> None:
    page = fill_page(value)
    assert len(page) == PAGE_SIZE
    assert same_filled_value(page) == value
    assert same_filled_value(bytearray(page)) == value
    assert same_filled_value(memoryview(page)) == value


@pytest.mark.parametrize("at", [0, 7, 8, 2047, 2048, PAGE_SIZE - 9, PAGE_SIZE - 1])
def test_one_differing_byte_is_not_same_filled(at: int) -> None:
    page = bytearray(fill_page(0x0101010101010101))
    page[at] ^= 0xFF
    assert same_filled_value(page) is None


def test_byte_pattern_that_is_not_word_periodic() -> None:
    # Same bytes in first and last word, but a 12-byte period in between.
    page = bytearray((b"abcdefghijkl" * 400)[:PAGE_SIZE])
    page[-8:] = page[:8]
    assert same_filled_value(page) is None


@pytest.mark.parametrize("name", sorted(COMPRESSORS))
def test_round_trip(name: str) -> None:
    c = get_compressor(name)
    assert c.name == name
    for pg in PAGES:
        data = c.compress(pg)
        assert c.decompress(data) == pg
        assert c.decompress(memoryview(data)) == pg


def test_lz4_is_a_raw_block_without_size_prefix() -> None:
    c = get_compressor("lz4")
    for pg in PAGES[:20]:
        assert c.compress(pg) == lz4.block.compress(pg, store_size=False)
    assert len(c.compress(bytes(PAGE_SIZE))) < 64
    # Incompressible input expands slightly: such pages are "huge" in zram terms.
    assert len(c.compress(random.Random(5).randbytes(PAGE_SIZE))) > PAGE_SIZE


@pytest.mark.parametrize("name", sorted(COMPRESSORS))
def test_corrupt_or_wrong_size_is_a_value_error(name: str) -> None:
    c = get_compressor(name)
    pg = PAGES[3]
    data = c.compress(pg)
    with pytest.raises(ValueError):
        c.decompress(data, size=PAGE_SIZE // 2)
    if name != "none":
        with pytest.raises(ValueError):
            c.decompress(b"\xff" * 40)


def test_unknown_compressor_names_the_choices() -> None:
    with pytest.raises(ConfigError, match="lz4"):
        get_compressor("lzo-rle")
