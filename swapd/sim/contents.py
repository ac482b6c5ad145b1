"""Page contents for the simulator: page id + version -> a corpus page.

Design.  Compression ratios, pool density and the cost of every tier depend on
what the pages hold, so full-mode simulation stores real page contents drawn
from a corpus (:mod:`swapd.corpus`).  Page ``p`` at version ``v`` (the number
of writes it has seen) is corpus page ``mix64(seed, p, v) mod len(corpus)``,
where ``mix64`` is the splitmix64 finalizer: a pure function, so a run is
reproducible from (trace, corpus, seed), and a write gives the page new
contents drawn from the same distribution (a seeded transformation of the page
into another corpus page), the way a rewritten heap page stays a heap page.

The layer compresses for real when it stores a page; this module only caches
the corpus pages as ``bytes`` (one object per distinct corpus page, so a page
stored many times is not copied out of the corpus each time) and, for reports,
their compressed size under a compressor, computed once per corpus page.

Not thread-safe: one simulation owns one instance.
Prior art: splitmix64 (Steele, Lea, Flood, "Fast splittable pseudorandom number
generators", OOPSLA 2014).
"""

from __future__ import annotations

from typing import Protocol

from swapd.compress import Compressor, same_filled_value
from swapd.errors import ConfigError, InvariantError

_M64 = (1 << 64) - 1


def mix64(x: int) -> int:
    """splitmix64's finalizer: a bijection on 64-bit integers with good avalanche.  O(1)."""
    x = (x + 0x9E3779B97F4A7C15) & _M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _M64
    return x ^ (x >> 31)


class PageSource(Protocol):
    """What a corpus offers (satisfied by :class:`swapd.corpus.Corpus`)."""

    def __len__(self) -> int: ...

    def page(self, i: int) -> bytes: ...


class PageContents:
    """Deterministic contents of simulated pages, backed by a corpus."""

    def __init__(self, corpus: PageSource, seed: int = 0) -> None:
        if len(corpus) == 0:
            raise ConfigError("the corpus has no pages")
        self.corpus = corpus
        self.seed = seed & _M64
        self._n = len(corpus)
        self._pages: dict[int, bytes] = {}  # corpus index -> page (cache)
        # page -> (version, its bytes) of the version last asked for: a run asks for a page's
        # current contents at every store and load, so this spares the two mix64 calls; one
        # entry per page keeps it as small as the trace's distinct pages
        self._latest: dict[int, tuple[int, bytes]] = {}
        self._csize: dict[tuple[str, int], int] = {}  # (compressor, corpus index) -> bytes

    def index(self, page: int, version: int = 0) -> int:
        """The corpus index of ``page`` at ``version``.  O(1)."""
        return mix64(mix64(self.seed ^ (page & _M64)) ^ version) % self._n

    def data(self, page: int, version: int = 0) -> bytes:
        """The 4096 bytes of ``page`` at ``version``.  O(1) after the first use."""
        e = self._latest.get(page)
        if e is not None and e[0] == version:
            return e[1]
        i = mix64(mix64(self.seed ^ (page & _M64)) ^ version) % self._n
        d = self._pages.get(i)
        if d is None:
            d = self._pages[i] = self.corpus.page(i)
        self._latest[page] = (version, d)
        return d

    def compressed_size(self, page: int, version: int, compressor: Compressor) -> int:
        """Compressed size of the page's contents (0 if same-filled).  Cached per corpus page."""
        i = self.index(page, version)
        key = (compressor.name, i)
        s = self._csize.get(key)
        if s is None:
            d = self.data(page, version)
            s = 0 if same_filled_value(d) is not None else len(compressor.compress(d))
            self._csize[key] = s
        return s

    def _check(self) -> None:
        """Every cached page is the corpus page it claims to be.  O(cached pages)."""
        for i, d in self._pages.items():
            if d != self.corpus.page(i):
                raise InvariantError(f"cached corpus page {i} differs from the corpus")
        for page, (version, d) in self._latest.items():
            if d is not self._pages.get(self.index(page, version)):
                raise InvariantError(f"cached contents of page {page} version {version} are "
                                     "not its corpus page")
