"""The daemon's configuration: built-in defaults, overridden by a TOML file.

Design: one frozen dataclass per TOML table (``[daemon]``, ``[limits]``,
``[pager]``, ``[reclaim]``, ``[layer]``), gathered in :class:`Config`.  The
file is parsed with the standard library's :mod:`tomllib`; every key is checked
against the dataclass fields, so an unknown key (a typo) is rejected by name
(``unknown key 'pol_limit' in [layer]``) instead of being ignored, and every
value is type-checked and range-checked with the table and key in the message.
Sizes may be given as integers (bytes) or strings with a binary suffix
(``"64M"``, ``"1G"``, ``"512K"``).

Paths follow systemd's conventions: the runtime directory is
``$RUNTIME_DIRECTORY``, else ``/run/swapd`` as root, else
``$XDG_RUNTIME_DIR/swapd``; the state directory is ``$STATE_DIRECTORY``, else
``/var/lib/swapd`` as root, else ``$XDG_STATE_HOME/swapd`` (default
``~/.local/state/swapd``).  systemd may pass several colon-separated
directories; the first one is used.

Invariant: a constructed :class:`Config` is valid -- every consumer may use its
values without checking them again.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from swapd.errors import ConfigError
from swapd.pages import PAGE_SIZE as PAGE_SIZE

_SIZE_RE = re.compile(r"^\s*(\d+)\s*([KMGT]?)(?:i?B)?\s*$", re.IGNORECASE)
_SHIFT = {"": 0, "K": 10, "M": 20, "G": 30, "T": 40}


def parse_size(value: object, what: str = "size") -> int:
    """Parse a byte count: an int, or a string like ``"64M"`` / ``"1GiB"``.  O(1).

    Raises ConfigError naming ``what`` when the value is not a non-negative size.
    """
    if isinstance(value, bool):
        raise ConfigError(f"{what}: expected a size, got a boolean")
    if isinstance(value, int):
        if value < 0:
            raise ConfigError(f"{what}: must not be negative, got {value}")
        return value
    if isinstance(value, str):
        m = _SIZE_RE.match(value)
        if not m:
            raise ConfigError(f"{what}: cannot parse size {value!r} (e.g. 4096, '64M', '1G')")
        return int(m.group(1)) << _SHIFT[m.group(2).upper()]
    raise ConfigError(f"{what}: expected a size, got {type(value).__name__}")


def _first_dir(env: str) -> Path | None:
    val = os.environ.get(env)
    if not val:
        return None
    return Path(val.split(":")[0])


def runtime_dir() -> Path:
    """Directory of the control socket ($RUNTIME_DIRECTORY, /run/swapd, $XDG_RUNTIME_DIR/swapd)."""
    d = _first_dir("RUNTIME_DIRECTORY")
    if d is not None:
        return d
    if os.geteuid() == 0:
        return Path("/run/swapd")
    xdg = os.environ.get("XDG_RUNTIME_DIR") or f"/run/user/{os.getuid()}"
    return Path(xdg) / "swapd"


def state_dir() -> Path:
    """Directory of the disk tier ($STATE_DIRECTORY, /var/lib/swapd, $XDG_STATE_HOME/swapd)."""
    d = _first_dir("STATE_DIRECTORY")
    if d is not None:
        return d
    if os.geteuid() == 0:
        return Path("/var/lib/swapd")
    xdg = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(xdg) / "swapd"


def default_socket_path() -> Path:
    """The control socket's default path: ``runtime_dir() / "swapd.sock"``."""
    return runtime_dir() / "swapd.sock"


# --- the tables ------------------------------------------------------------------------


@dataclass(frozen=True)
class DaemonConfig:
    """``[daemon]``: where to listen and who may connect."""

    socket: str = ""  # "" = default_socket_path()
    state_dir: str = ""  # "" = state_dir()
    socket_mode: int = 0o660
    socket_group: str = ""  # group owning the socket ("" = the daemon's group)
    # Peers allowed by SO_PEERCRED: user names or uids, group names or gids.  root
    # and the daemon's own uid are always allowed.  Empty lists = only those two.
    allowed_users: tuple[str | int, ...] = ()
    allowed_groups: tuple[str | int, ...] = ()
    record: str = ""  # CSV trace of handled events ("" = off)
    check_invariants: bool = False  # run _check() of every structure periodically
    watchdog_interval_s: float = 0.0  # 0 = from $WATCHDOG_USEC


@dataclass(frozen=True)
class LimitsConfig:
    """``[limits]``: quotas per client and the daemon's global resident limit."""

    max_managed_bytes: int = 64 << 30  # per client, sum of mapped region sizes
    max_regions: int = 64  # per client
    max_clients: int = 256
    default_resident_bytes: int = 256 << 20  # per client until it calls set_limit
    global_resident_bytes: int = 8 << 30  # over all clients


@dataclass(frozen=True)
class PagerConfig:
    """``[pager]``: fault handling."""

    # Readahead window k in pages, counting the faulting page: after a sequential fault
    # at p the pager copies [p+1, p+k); k doubles from readahead_min up to readahead_max.
    # readahead_max = 1 disables readahead.
    readahead_min: int = 4
    readahead_max: int = 64
    latency_samples: int = 65536  # fault latencies kept for percentiles
    # Serve each client thread on the CPU it faults on: the loop and the faulting thread
    # are pinned to that CPU (the thread's affinity is narrowed; see
    # swapd.daemon.pager.Pager._follow_locked).  On a VM whose idle vCPUs halt, a wake-up
    # across vCPUs costs 50-100 us (docs/design.md sec. 11.8), twice per fault.  Off by default:
    # with inline reclaim, which runs between faults, a client faulting back to back on
    # the loop's own CPU leaves no gap, and its resident set outgrows its limit (up to
    # the hard slack) until the reclaimer gets a time slice of its own.
    colocate: bool = False


@dataclass(frozen=True)
class ReclaimConfig:
    """``[reclaim]``: how resident pages are chosen and evicted."""

    policy: str = "clock"
    batch_pages: int = 64
    # Headroom below the limit the reclaimer restores once it starts (hysteresis).
    low_watermark_pages: int = 64
    # Faults are throttled (direct reclaim) above limit + this many pages.
    hard_slack_pages: int = 512
    # Software referenced bit: pages zapped per sweep with process_madvise(MADV_PAGEOUT)
    # and later sampled with PAGEMAP_SCAN PRESENT (0 disables).
    refbit_slice_pages: int = 2048
    interval_ms: int = 100  # background sweep period
    # Evict from the event loop between faults (one thread, no GIL hand-offs) instead of
    # a reclaimer thread.
    inline: bool = True


@dataclass(frozen=True)
class LayerSection:
    """``[layer]``: tiers and the swap-LRU layer (maps onto swapd.layer.LayerConfig)."""

    backend: str = "zsmalloc"
    compressor: str = "lz4"
    disk: bool = True
    disk_path: str = ""  # "" = <state_dir>/swapd-<pid>.disk
    disk_bytes: int = 4 << 30
    disk_seal: bool = True  # AES-GCM with a key held only in memory (swapd/layer/seal.py)
    demotion_policy: str = "lru"
    # The chain of tiers, fastest first: names of the entry-point group swapd.tiers (built-in:
    # compressed, disk; also redis).  Each may have a table [tier.NAME] of its options.
    # ``disk = false`` removes "disk" from the chain.
    tiers: tuple[str, ...] = ("compressed", "disk")
    pool_limit_bytes: int | None = None
    pool_limit_percent: float = 20.0
    accept_threshold_percent: float = 90.0
    shrink_until_accept: bool = True
    store_incompressible: bool = True
    exclusive_loads: bool = True
    same_filled: bool = True
    writeback_batch: int = 32
    reject_to_disk_when_full: bool = False

    def layer_options(self) -> dict[str, Any]:
        """The fields that are LayerConfig's (everything except tier construction)."""
        skip = {"backend", "compressor", "disk", "disk_path", "disk_bytes", "disk_seal",
                "demotion_policy", "tiers"}
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if f.name not in skip}


@dataclass(frozen=True)
class Config:
    """The whole configuration; ``Config()`` is the built-in default."""

    daemon: DaemonConfig = field(default_factory=DaemonConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    pager: PagerConfig = field(default_factory=PagerConfig)
    reclaim: ReclaimConfig = field(default_factory=ReclaimConfig)
    layer: LayerSection = field(default_factory=LayerSection)
    #: ``[tier.NAME]`` tables: the options of each tier of ``[layer] tiers`` (checked by the
    #: tier's ``from_config`` when the layer is built).
    tier: dict[str, dict[str, Any]] = field(default_factory=dict)

    def tier_chain(self) -> tuple[str, ...]:
        """The names of the tiers of the chain, fastest first."""
        return tuple(t for t in self.layer.tiers if self.layer.disk or t != "disk")

    def socket_path(self) -> Path:
        return Path(self.daemon.socket) if self.daemon.socket else default_socket_path()

    def state_path(self) -> Path:
        return Path(self.daemon.state_dir) if self.daemon.state_dir else state_dir()


_TABLES: dict[str, type[Any]] = {
    "daemon": DaemonConfig,
    "limits": LimitsConfig,
    "pager": PagerConfig,
    "reclaim": ReclaimConfig,
    "layer": LayerSection,
}

# Keys whose values are byte sizes (int or "64M").
_SIZE_KEYS = {
    ("limits", "max_managed_bytes"), ("limits", "default_resident_bytes"),
    ("limits", "global_resident_bytes"), ("layer", "disk_bytes"), ("layer", "pool_limit_bytes"),
}
_POSITIVE = {
    ("limits", "max_regions"), ("limits", "max_clients"), ("pager", "readahead_min"),
    ("pager", "readahead_max"), ("pager", "latency_samples"), ("reclaim", "batch_pages"),
    ("reclaim", "interval_ms"), ("layer", "writeback_batch"),
}
_PERCENT = {("layer", "pool_limit_percent"), ("layer", "accept_threshold_percent")}


def _convert(table: str, key: str, ftype: str, value: object) -> object:
    where = f"[{table}] {key}"
    if (table, key) in _SIZE_KEYS:
        if value is None:
            return None
        return parse_size(value, where)
    if ftype == "bool":
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if ftype == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if ftype == "float":
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if ftype == "str":
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    if ftype.startswith("tuple"):
        if not isinstance(value, list) or not all(
                isinstance(v, str | int) and not isinstance(v, bool) for v in value):
            raise ConfigError(f"{where}: expected a list of names or ids, got {value!r}")
        return tuple(value)
    raise ConfigError(f"{where}: unsupported type {ftype}")  # pragma: no cover


def _validate(cfg: Config) -> None:
    for tname, cls in _TABLES.items():
        section = getattr(cfg, tname)
        for f in dataclasses.fields(cls):
            v = getattr(section, f.name)
            if (tname, f.name) in _POSITIVE and v <= 0:
                raise ConfigError(f"[{tname}] {f.name}: must be positive, got {v}")
            if (tname, f.name) in _PERCENT and not 0.0 < v <= 100.0:
                raise ConfigError(f"[{tname}] {f.name}: must be in (0, 100], got {v}")
    p, r, lim = cfg.pager, cfg.reclaim, cfg.limits
    if p.readahead_min > p.readahead_max:
        raise ConfigError(f"[pager] readahead_min ({p.readahead_min}) exceeds "
                          f"readahead_max ({p.readahead_max})")
    if p.readahead_max > 256:
        raise ConfigError(f"[pager] readahead_max: at most 256 pages, got {p.readahead_max}")
    if r.batch_pages > 1024:
        raise ConfigError(f"[reclaim] batch_pages: at most 1024, got {r.batch_pages}")
    for key in ("low_watermark_pages", "hard_slack_pages", "refbit_slice_pages"):
        if getattr(r, key) < 0:
            raise ConfigError(f"[reclaim] {key}: must not be negative")
    for key in ("max_managed_bytes", "default_resident_bytes", "global_resident_bytes"):
        v = getattr(lim, key)
        if v % PAGE_SIZE:
            raise ConfigError(f"[limits] {key}: must be a multiple of {PAGE_SIZE}, got {v}")
    if lim.global_resident_bytes < PAGE_SIZE:
        raise ConfigError("[limits] global_resident_bytes: must be at least one page")
    if not 0 <= cfg.daemon.socket_mode <= 0o777:
        raise ConfigError(f"[daemon] socket_mode: not a file mode: {cfg.daemon.socket_mode:o}")
    if cfg.daemon.watchdog_interval_s < 0:
        raise ConfigError("[daemon] watchdog_interval_s: must not be negative")
    chain = cfg.tier_chain()
    if not chain or len(set(chain)) != len(chain):
        raise ConfigError(f"[layer] tiers: a non-empty list of distinct tier names, got "
                          f"{list(cfg.layer.tiers)}")
    stray = set(cfg.tier) - set(cfg.layer.tiers)
    if stray:
        raise ConfigError(f"[tier.{sorted(stray)[0]}]: not a tier of [layer] tiers = "
                          f"{list(cfg.layer.tiers)}")
    if cfg.layer.disk and cfg.layer.disk_bytes < PAGE_SIZE:
        raise ConfigError("[layer] disk_bytes: at least one page when disk = true")


def config_from_dict(data: dict[str, Any], source: str = "<dict>") -> Config:
    """Build a validated Config from parsed TOML; unknown tables/keys are rejected by name."""
    sections: dict[str, Any] = {}
    for tname, tval in data.items():
        if tname == "tier":
            if not isinstance(tval, dict) or not all(isinstance(v, dict) for v in tval.values()):
                raise ConfigError(f"{source}: [tier.NAME] tables hold the options of each tier")
            sections["tier"] = {str(k): dict(v) for k, v in tval.items()}
            continue
        if tname not in _TABLES:
            raise ConfigError(f"{source}: unknown table [{tname}] "
                              f"(known: {', '.join(sorted(_TABLES))})")
        if not isinstance(tval, dict):
            raise ConfigError(f"{source}: [{tname}] must be a table")
        cls = _TABLES[tname]
        fields = {f.name: f for f in dataclasses.fields(cls)}
        kwargs: dict[str, Any] = {}
        for key, value in tval.items():
            if key not in fields:
                raise ConfigError(f"{source}: unknown key {key!r} in [{tname}]")
            ftype = str(fields[key].type).replace(" | None", "")
            kwargs[key] = _convert(tname, key, ftype, value)
        sections[tname] = cls(**kwargs)
    cfg = Config(**sections)
    _validate(cfg)
    return cfg


def load_config(path: str | os.PathLike[str] | None = None) -> Config:
    """Load ``path`` (TOML) over the built-in defaults; None = defaults only."""
    if path is None:
        cfg = Config()
        _validate(cfg)
        return cfg
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError as exc:
        raise ConfigError(f"config file not found: {path}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from exc
    return config_from_dict(data, str(path))


def replace(cfg: Config, table: str, **changes: Any) -> Config:
    """Return ``cfg`` with ``[table]`` keys changed (validated like the file)."""
    section = dataclasses.replace(getattr(cfg, table), **changes)
    new = dataclasses.replace(cfg, **{table: section})
    _validate(new)
    return new
