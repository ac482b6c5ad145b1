"""Compressors and same-filled page detection.

A compressor turns one page into a compressed object and back.  ``lz4`` is the
default (as zram and zswap default to lzo-rle/lz4 family compressors), ``zstd``
is an optional extra, ``none`` stores pages as they are.

Same-filled pages -- every machine word of the page equal -- are detected before
compression and kept as the word's value, using no pool memory, as
``drivers/block/zram/zram_drv.c`` (``page_same_filled``) and, before 6.12,
``mm/zswap.c`` (``zswap_is_page_same_filled``) do.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import lz4.block

from swapd.arena import PAGE_SIZE
from swapd.errors import ConfigError

_WORDS = PAGE_SIZE // 8


def same_filled_value(page: bytes | bytearray | memoryview) -> int | None:
    """Return the 64-bit word that fills ``page`` entirely, or None.  O(PAGE_SIZE).

    The first and last words are compared first, so most pages are rejected
    after reading 16 bytes.
    """
    first = bytes(page[:8])
    if first != bytes(page[-8:]):
        return None
    if first * _WORDS != page:
        return None
    return int.from_bytes(first, "little")


def fill_page(value: int) -> bytes:
    """Return the page every word of which is ``value`` (inverse of same_filled_value)."""
    return value.to_bytes(8, "little") * _WORDS


class Compressor(ABC):
    """A page compressor.  Implementations are stateless and thread-safe."""

    name: ClassVar[str]

    @abstractmethod
    def compress(self, page: bytes | bytearray | memoryview) -> bytes:
        """Compress one page.  Never fails for a PAGE_SIZE input."""

    @abstractmethod
    def decompress(self, data: bytes | bytearray | memoryview, size: int = PAGE_SIZE) -> bytes:
        """Decompress ``data`` into exactly ``size`` bytes; raises ValueError if corrupt."""


class Lz4Compressor(Compressor):
    """LZ4 block format (no size prefix), the fast default."""

    name = "lz4"

    def compress(self, page: bytes | bytearray | memoryview) -> bytes:
        out: bytes = lz4.block.compress(page, store_size=False)
        return out

    def decompress(self, data: bytes | bytearray | memoryview, size: int = PAGE_SIZE) -> bytes:
        try:
            out: bytes = lz4.block.decompress(data, uncompressed_size=size)
        except lz4.block.LZ4BlockError as exc:
            raise ValueError(f"lz4: corrupt block: {exc}") from exc
        if len(out) != size:
            raise ValueError(f"lz4: decompressed {len(out)} bytes, expected {size}")
        return out


class ZstdCompressor(Compressor):
    """Zstandard at level 3 (needs the ``zstd`` extra)."""

    name = "zstd"

    def __init__(self, level: int = 3) -> None:
        try:
            import zstandard
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise ConfigError(
                "compressor 'zstd' needs the zstd extra: pip install 'swapd[zstd]'"
            ) from exc
        self._c = zstandard.ZstdCompressor(level=level, write_content_size=False,
                                           write_checksum=False)
        self._d = zstandard.ZstdDecompressor()

    def compress(self, page: bytes | bytearray | memoryview) -> bytes:
        out: bytes = self._c.compress(page)
        return out

    def decompress(self, data: bytes | bytearray | memoryview, size: int = PAGE_SIZE) -> bytes:
        try:
            out: bytes = self._d.decompress(data, max_output_size=size)
        except Exception as exc:
            raise ValueError(f"zstd: corrupt frame: {exc}") from exc
        if len(out) != size:
            raise ValueError(f"zstd: decompressed {len(out)} bytes, expected {size}")
        return out


class NoCompressor(Compressor):
    """Identity: stores pages as they are."""

    name = "none"

    def compress(self, page: bytes | bytearray | memoryview) -> bytes:
        return bytes(page)

    def decompress(self, data: bytes | bytearray | memoryview, size: int = PAGE_SIZE) -> bytes:
        if len(data) != size:
            raise ValueError(f"none: stored {len(data)} bytes, expected {size}")
        return bytes(data)


COMPRESSORS: dict[str, type[Compressor]] = {
    c.name: c for c in (Lz4Compressor, ZstdCompressor, NoCompressor)
}


def get_compressor(name: str) -> Compressor:
    """Return a compressor by name; raises ConfigError naming the choices."""
    try:
        cls = COMPRESSORS[name]
    except KeyError:
        raise ConfigError(
            f"unknown compressor {name!r}; choose one of {', '.join(sorted(COMPRESSORS))}"
        ) from None
    return cls()
