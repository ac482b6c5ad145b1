"""The cost table of modelled time.

Design.  Full-mode simulation counts events (faults, loads per tier, stores,
writebacks); modelled time multiplies each count by a per-page cost.  The
costs come from a JSON table written by ``swapd bench costs`` on the machine
(``--costs FILE``), or, when none is given, from the figures measured on
these machines and recorded in docs/design.md (section 11) (Linux 6.18,
2 vCPUs), labelled as such in every report (``source``).

Built-in defaults and where they come from (docs/design.md sec. 11.1):

* ``fault_us`` 25.1: client-observed fault round trip, cross-process shmem
  MISSING fault served by ``UFFDIO_COPY`` from a Python handler (21.8 / 28.4 us
  in two runs, section 11.3).  Used for every fault, zero-page ones included
  (``UFFDIO_ZEROPAGE`` measured 22.9 / 24.7 us).
* ``evict_us`` 2.6: write-protect + ``pread`` + punch per page, batches of 64
  (section 11.4).
* ``compress_us`` 1.95 / ``decompress_us`` 1.65: lz4 per page, the middle of
  the measured 1.4-2.5 / 0.9-2.4 us ranges.
* ``disk_write_us`` / ``disk_read_us`` 3.7: section 11 has no device
  figure; these are a 4 KiB ``pread`` from the page cache there, a lower bound.
  Measure with ``swapd bench costs`` for a device-backed figure.
* ``remote_read_us`` 43 / ``remote_write_us`` 69: the Redis tier against Redis on a test host
  in a network namespace (``swapd bench costs`` on these machines, under load: one GET round
  trip and a decompression; a 32-page pipelined batch with its compression, per page).  A
  table written before these fields existed gets these values.

Frozen; no locks.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from typing import Any

from swapd.errors import ConfigError

_FIELDS = ("fault_us", "evict_us", "compress_us", "decompress_us", "disk_read_us",
           "disk_write_us")
# fields a table written before the tier chain existed may lack (their defaults apply)
_OPTIONAL = {"remote_read_us": 43.0, "remote_write_us": 69.0}


@dataclass(frozen=True)
class CostTable:
    """Per-page costs in microseconds, and where they come from."""

    fault_us: float
    evict_us: float
    compress_us: float
    decompress_us: float
    disk_read_us: float
    disk_write_us: float
    source: str
    #: a page from / to a remote tier (redis): one GET round trip plus decompression, and one
    #: page's share of a pipelined batch with its compression (``swapd bench costs``)
    remote_read_us: float = _OPTIONAL["remote_read_us"]
    remote_write_us: float = _OPTIONAL["remote_write_us"]

    def read_us(self, state: str) -> float:
        """The cost of loading one page from a tier whose entries are in ``state``
        (``compressed``, ``disk``, ``remote``; ``same_filled`` and others cost nothing)."""
        return {"compressed": self.decompress_us, "disk": self.disk_read_us,
                "remote": self.remote_read_us}.get(state, 0.0)

    def write_us(self, state: str) -> float:
        """The cost of storing one demoted page into a tier whose entries are in ``state``."""
        return {"compressed": self.compress_us, "disk": self.disk_write_us,
                "remote": self.remote_write_us}.get(state, 0.0)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the table as JSON."""
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self.to_dict(), f, indent=2)
            f.write("\n")

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "<dict>") -> CostTable:
        """Build from a dict; ConfigError names a missing, extra or bad field."""
        if not isinstance(d, dict):
            raise ConfigError(f"{where}: a cost table is a JSON object")
        extra = set(d) - {*_FIELDS, *_OPTIONAL, "source", "details"}
        if extra:
            raise ConfigError(f"{where}: unknown cost field(s) {', '.join(sorted(extra))}")
        vals: dict[str, float] = {}
        for k in _FIELDS:
            if k not in d:
                raise ConfigError(f"{where}: cost field {k!r} is missing")
            v = d[k]
            if isinstance(v, bool) or not isinstance(v, int | float) or v < 0:
                raise ConfigError(f"{where}: cost field {k!r} must be a number >= 0, got {v!r}")
            vals[k] = float(v)
        for k in _OPTIONAL:
            if k in d:
                v = d[k]
                if isinstance(v, bool) or not isinstance(v, int | float) or v < 0:
                    raise ConfigError(f"{where}: cost field {k!r} must be a number >= 0, "
                                      f"got {v!r}")
                vals[k] = float(v)
        return cls(source=str(d.get("source", where)), **vals)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> CostTable:
        """Read a table written by ``swapd bench costs``."""
        p = os.fspath(path)
        try:
            with open(p, encoding="utf-8") as f:
                d = json.load(f)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{p}: not a JSON cost table: {exc}") from exc
        except OSError as exc:
            raise ConfigError(f"--costs {p}: {exc.strerror or exc}") from exc
        return cls.from_dict(d, p)


DEFAULT_COSTS = CostTable(
    fault_us=25.1,
    evict_us=2.6,
    compress_us=1.95,
    decompress_us=1.65,
    disk_read_us=3.7,
    disk_write_us=3.7,
    source="built-in defaults from docs/design.md sec. 11 (not measured on this machine; "
           "disk figures are page-cache pread costs)",
)
