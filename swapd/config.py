"""The daemon's configuration: built-in defaults, overridden by a TOML file.

Design: one frozen dataclass per TOML table (``[daemon]``, ``[limits]``,
``[pager]``, ``[reclaim]``, ``[layer]``), gathered in :class:`Config`, plus one
``[backend.NAME]`` table of options per allocator backend (``[backend.zsmalloc]
lock = "pool"``), passed to the backend's constructor.  The tables are
*generated from the dataclasses*: the loader, the validation, ``swapd config
show``, the commented example (``systemd/swapd.toml``) and the reference
(``docs/config.md``) all walk :func:`tables` and ``dataclasses.fields``, so a
field added to a dataclass is settable, documented and checked with no other
edit.  ``[layer]`` is :class:`LayerSection`, a subclass of the layer's own
:class:`swapd.layer.core.LayerConfig` that adds the tiers' construction
(backend, compressor, disk): every LayerConfig field is a ``[layer]`` key with
LayerConfig's default and LayerConfig's validation (its ``__post_init__``).

Each field's documentation and rules live beside it in ``field(metadata=...)``
(:func:`opt`): ``doc``, ``min`` / ``max``, ``choices``, ``page_multiple``,
``live`` (changeable in a running daemon: SIGHUP reload, ``swapd ctl``).  A
field whose name ends in ``_bytes`` is a size: an integer, or a string with a
binary suffix (``"64M"``, ``"1G"``, ``"512K"``).  Fields of LayerConfig carry
their documentation in :data:`_LAYER_DOCS` (the layer module stays free of the
configuration's concerns).

Validation has three stages, each a list of small named checks so that more can
be added without touching the others (:func:`config_check`,
:func:`environment_check`):

1. per value, while loading: type, range, choices (one-line errors naming
   ``[table] key``);
2. :data:`_CHECKS`, values against each other (``readahead_min`` <=
   ``readahead_max``, ...), run for every constructed :class:`Config`;
3. :func:`check_startup`: plugin names resolved and backend options tried
   (:func:`resolve_plugins`), and the values against the machine
   (:class:`Environment`: ``WATCHDOG_USEC``, ``RLIMIT_NOFILE`` against
   clients x regions, the socket group, sizes larger than the machine).
   ``swapd serve`` and ``swapd config check`` run it; a reload runs it too.

Every value remembers where it came from (``Config.sources``: ``default``,
``file PATH``, ``--option``), which ``swapd config show`` prints.

Paths follow systemd's conventions: the runtime directory is
``$RUNTIME_DIRECTORY``, else ``/run/swapd`` as root, else
``$XDG_RUNTIME_DIR/swapd``; the state directory is ``$STATE_DIRECTORY``, else
``/var/lib/swapd`` as root, else ``$XDG_STATE_HOME/swapd`` (default
``~/.local/state/swapd``).  systemd may pass several colon-separated
directories; the first one is used.  The configuration file is ``--config
FILE`` (which must exist), else ``$SWAPD_CONFIG``, else ``/etc/swapd.toml`` as
root or ``$XDG_CONFIG_HOME/swapd/swapd.toml`` otherwise -- those two are
optional: a missing default file means built-in defaults.

Invariant: a constructed :class:`Config` passed stages 1 and 2 -- every
consumer may use its values without checking them again.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
import tomllib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from swapd.errors import ConfigError
from swapd.layer.core import LayerConfig, SwapLayer
from swapd.pages import PAGE_SIZE as PAGE_SIZE

_SIZE_RE = re.compile(r"^\s*(\d+)\s*([KMGT]?)(?:i?B)?\s*$", re.IGNORECASE)
_SHIFT = {"": 0, "K": 10, "M": 20, "G": 30, "T": 40}

T = TypeVar("T")


def parse_literal(v: str) -> Any:
    """A command-line ``NAME=VALUE`` value as the type it spells: true/yes/on and
    false/no/off as booleans, none/null as None, then int, then float, else the string."""
    low = v.lower()
    if low in ("true", "yes", "on"):
        return True
    if low in ("false", "no", "off"):
        return False
    if low in ("none", "null"):
        return None
    for conv in (int, float):
        try:
            return conv(v)
        except ValueError:
            pass
    return v


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


def format_size(n: int) -> str:
    """``n`` bytes as the largest exact binary unit (``"64M"``), else plain bytes."""
    for suffix, shift in (("T", 40), ("G", 30), ("M", 20), ("K", 10)):
        if n and n % (1 << shift) == 0:
            return f"{n >> shift}{suffix}"
    return str(n)


def human_size(n: int) -> str:
    """``n`` bytes for a message: exact units as :func:`format_size`, else one decimal (GiB...)."""
    exact = format_size(n)
    if exact != str(n) or n < 1024:
        return exact
    for suffix, shift in (("T", 40), ("G", 30), ("M", 20), ("K", 10)):
        if n >= 1 << shift:
            return f"{n / (1 << shift):.1f}{suffix}"
    return str(n)  # pragma: no cover


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


def default_config_path() -> Path:
    """The optional default config file ($SWAPD_CONFIG, /etc/swapd.toml, XDG)."""
    env = os.environ.get("SWAPD_CONFIG")
    if env:
        return Path(env)
    if os.geteuid() == 0:
        return Path("/etc/swapd.toml")
    xdg = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(xdg) / "swapd" / "swapd.toml"


def opt(default: T, doc: str, *, live: bool = False, min: float | None = None,
        max: float | None = None, choices: tuple[str, ...] = (),
        page_multiple: bool = False) -> T:
    """A configuration field: its default, its documentation and its rules (see the module doc).

    Returns a ``dataclasses.field`` (typed as the default's type for the checker).
    """
    meta = {"doc": doc, "live": live, "min": min, "max": max, "choices": choices,
            "page_multiple": page_multiple}
    f: T = field(default=default, metadata=meta)
    return f


# --- the tables ------------------------------------------------------------------------


@dataclass(frozen=True)
class DaemonConfig:
    """``[daemon]``: where to listen, who may connect, diagnostics."""

    socket: str = opt("", "control socket path (\"\" = $RUNTIME_DIRECTORY/swapd.sock, "
                          "/run/swapd/swapd.sock as root, else $XDG_RUNTIME_DIR/swapd/swapd.sock)")
    state_dir: str = opt("", "directory of the disk tier file (\"\" = $STATE_DIRECTORY, "
                             "/var/lib/swapd as root, else $XDG_STATE_HOME/swapd)")
    socket_mode: int = opt(0o660, "file mode of the socket (write it as 0o660 in TOML)",
                           min=0, max=0o777)
    socket_group: str = opt("", "group owning the socket (\"\" = the daemon's group); the daemon "
                                "must be a member of it (systemd: SupplementaryGroups=) or hold "
                                "CAP_CHOWN")
    allowed_users: tuple[str | int, ...] = opt(
        (), "peers allowed by SO_PEERCRED besides root and the daemon's uid: user names or uids",
        live=True)
    allowed_groups: tuple[str | int, ...] = opt(
        (), "groups (names or gids) whose members may connect (primary or supplementary)",
        live=True)
    record: str = opt("", "write handled faults and evictions as a CSV trace to this file "
                          "(\"\" = off; `swapd sim` replays it)")
    check_invariants: bool = opt(False, "run every structure's _check() once a second (debug)",
                                 live=True)
    watchdog_interval_s: float = opt(0.0, "seconds between WATCHDOG=1 notifications (0 = half "
                                          "of $WATCHDOG_USEC); must be below $WATCHDOG_USEC",
                                     min=0)


@dataclass(frozen=True)
class LimitsConfig:
    """``[limits]``: quotas per client and the daemon's global resident limit."""

    max_managed_bytes: int = opt(64 << 30, "per client: sum of its mapped region sizes",
                                 live=True, min=PAGE_SIZE, page_multiple=True)
    max_regions: int = opt(64, "per client: regions mapped at once", live=True, min=1)
    max_clients: int = opt(256, "clients served at once", live=True, min=1)
    max_sessions_per_uid: int = opt(64, "connections of one uid at once, so one user cannot "
                                        "take every session (root and the daemon's uid: "
                                        "max_clients)",
                                    live=True, min=1)
    max_managed_bytes_per_uid: int = opt(256 << 30, "sum of the mapped region sizes of one uid's "
                                                    "sessions", live=True, min=PAGE_SIZE,
                                         page_multiple=True)
    hello_timeout_s: float = opt(10.0, "a connection that has not said hello, or is in the middle "
                                       "of a frame, this long is closed", live=True, min=0.01)
    default_resident_bytes: int = opt(256 << 20, "per client: resident limit until it asks for "
                                                 "one (set_limit)", live=True, page_multiple=True)
    global_resident_bytes: int = opt(8 << 30, "cap of every client's resident limit, and of "
                                              "their sum", live=True, min=PAGE_SIZE,
                                     page_multiple=True)


@dataclass(frozen=True)
class PagerConfig:
    """``[pager]``: fault handling."""

    readahead_min: int = opt(4, "readahead window in pages (counting the faulting page) after "
                                "the first sequential fault; doubles up to readahead_max",
                             live=True, min=1, max=256)
    readahead_max: int = opt(64, "largest readahead window in pages (1 disables readahead)",
                             live=True, min=1, max=256)
    latency_samples: int = opt(8192, "fault service times kept per client for percentiles "
                                     "(8 bytes each; the daemon keeps 65536 over all clients)",
                               min=1)
    # On a VM whose idle vCPUs halt, a wake-up across vCPUs costs 50-100 us (docs/design.md
    # sec. 11.8), twice per fault.  The limit holds either way: every placement is charged
    # first and a fault that would cross the limit pays for the reclaim (swapd.policy.sizer).
    colocate: bool = opt(True, "serve each client thread on the CPU it faults on (pins the loop "
                               "and narrows the thread's affinity; see README, CPU placement)")
    # Off by default: it did not lower fault costs when measured (tests/bench/RESULTS.md).
    busy_poll_us: int = opt(0, "microseconds the event loop polls without blocking before it "
                               "blocks in epoll (0 = off)", min=0, max=10000)
    load_workers: int = opt(4, "threads that load faulting pages from slow tiers (disk, remote), "
                               "so a slow read delays only the faults that need it (0 = load on "
                               "the event loop)", min=0, max=64)


@dataclass(frozen=True)
class ReclaimConfig:
    """``[reclaim]``: how resident pages are chosen and evicted."""

    policy: str = opt("clock", "victim-selection policy of resident pages (a swapd.policies "
                               "plugin: `swapd policies`)", live=True)
    batch_pages: int = opt(64, "pages evicted per batch", live=True, min=1, max=1024)
    low_watermark_pages: int = opt(64, "background reclaim starts when the headroom below the "
                                       "limit falls below this, and restores it plus one batch",
                                   live=True, min=0)
    hard_slack_pages: int = opt(0, "a placement that would take a client above the limit plus "
                                   "this many pages pays for reclaim first (0 = a hard limit)",
                                live=True, min=0)
    refbit_slice_pages: int = opt(2048, "software referenced bit: pages zapped per sweep with "
                                        "MADV_PAGEOUT and sampled with PAGEMAP_SCAN (0 = off)",
                                  live=True, min=0)
    interval_ms: int = opt(100, "background sweep period in milliseconds", min=1)
    inline: bool = opt(True, "evict from the event loop between faults instead of a reclaimer "
                             "thread")


# LayerConfig's fields (swapd/layer/core.py), documented for the config file.
_LAYER_DOCS = {
    "pool_limit_bytes": "cap of the compressed pool; wins over pool_limit_percent (unset = use "
                        "the percent)",
    "pool_limit_percent": "pool limit in percent of RAM (zswap's max_pool_percent)",
    "accept_threshold_percent": "after the pool hit its limit, stores are refused until it is "
                                "below this percent of the limit (zswap's "
                                "accept_threshold_percent)",
    "shrink_until_accept": "write back the coldest entries to make room instead of sending the "
                           "new page to disk (no LRU inversion)",
    "store_incompressible": "keep pages that do not compress raw in the pool when a disk tier "
                            "exists",
    "exclusive_loads": "free the compressed copy when a page is loaded (zswap_exclusive_loads)",
    "same_filled": "store pages of one repeated word as a value, no pool memory",
    "writeback_batch": "entries written to disk per writeback batch",
    "reject_to_disk_when_full": "the kernel's behaviour: a store finding the pool full goes to "
                                "disk (counts LRU inversions)",
    "second_chance": "referenced bit: a referenced entry is rotated once instead of demoted",
    "clean_first": "when the pool needs room, free the clean copies kept by non-exclusive loads "
                   "(oldest first) before writing anything back",
    "shrinker_start_percent": "the proactive shrinker writes back above this percent of the "
                              "pool limit",
    "shrinker_batch": "entries per proactive shrinker step",
    "shrinker_refault_window": "seconds: a refault of a page written back this recently makes "
                               "the shrinker back off",
    "shrinker_backoff_min": "seconds: smallest shrinker back-off",
    "shrinker_backoff_max": "seconds: largest shrinker back-off",
    "shrinker_recent": "written-back entries remembered for the refault check",
}
# LayerConfig fields a running daemon can change (SwapLayer.reconfigure).
_LAYER_LIVE = SwapLayer.LIVE_FIELDS


@dataclass(frozen=True)
class LayerSection(LayerConfig):
    """``[layer]``: the tiers, and every :class:`~swapd.layer.core.LayerConfig` field."""

    backend: str = opt("zsmalloc", "allocator of the compressed tier (a swapd.backends plugin: "
                                   "`swapd backends`); its options go in [backend.NAME]")
    compressor: str = opt("lz4", "compressor of the compressed tier (lz4, zstd, none)")
    disk: bool = opt(True, "a disk tier below the compressed one")
    disk_path: str = opt("", "disk tier file or directory (\"\" = a file in the state "
                             "directory, removed at exit)")
    disk_bytes: int = opt(4 << 30, "size of the disk tier", page_multiple=True)
    disk_seal: bool = opt(True, "seal disk pages with AES-GCM under a key held only in memory "
                                "(swapd/layer/seal.py)")
    demotion_policy: str = opt("lru", "victims of writeback: \"lru\" = the layer's own LRU "
                                      "(no inversions), else a swapd.policies plugin",
                               live=True)
    tiers: tuple[str, ...] = opt(("compressed", "disk"), "the chain of tiers, fastest first: "
                                 "swapd.tiers plugins (built-in: compressed, disk; also redis), "
                                 "each with its options in [tier.NAME]; disk = false removes "
                                 "\"disk\"")

    def layer_options(self) -> dict[str, Any]:
        """The fields that are LayerConfig's (everything except tier construction)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(LayerConfig)}

    def layer_config(self) -> LayerConfig:
        """This section's :class:`LayerConfig`."""
        return LayerConfig(**self.layer_options())


@dataclass(frozen=True)
class Config:
    """The whole configuration; ``Config()`` is the built-in default.

    ``backend``: ``[backend.NAME]`` tables, backend name -> constructor options.
    ``tier``: ``[tier.NAME]`` tables, the options of each tier of ``[layer] tiers``
    (checked by the tier's ``from_config`` when the layer is built).
    ``sources``: ``"table.key"`` -> where the value came from (absent = default).
    ``path``: the file read ("" = none).
    """

    daemon: DaemonConfig = field(default_factory=DaemonConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    pager: PagerConfig = field(default_factory=PagerConfig)
    reclaim: ReclaimConfig = field(default_factory=ReclaimConfig)
    layer: LayerSection = field(default_factory=LayerSection)
    backend: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    tier: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    sources: Mapping[str, str] = field(default_factory=dict, compare=False)
    path: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        for check in _CHECKS:
            check(self)

    def tier_chain(self) -> tuple[str, ...]:
        """The names of the tiers of the chain, fastest first."""
        return tuple(t for t in self.layer.tiers if self.layer.disk or t != "disk")

    def socket_path(self) -> Path:
        return Path(self.daemon.socket) if self.daemon.socket else default_socket_path()

    def state_path(self) -> Path:
        return Path(self.daemon.state_dir) if self.daemon.state_dir else state_dir()

    def backend_options(self, name: str | None = None) -> dict[str, Any]:
        """Options of backend ``name`` (default: the configured ``[layer] backend``)."""
        return dict(self.backend.get(name or self.layer.backend, {}))

    def source(self, table: str, key: str) -> str:
        """Where ``[table] key`` came from: ``default``, ``file PATH`` or a command-line flag."""
        return self.sources.get(f"{table}.{key}", "default")


def tables() -> dict[str, type[Any]]:
    """TOML table name -> its dataclass, in file order."""
    return {"daemon": DaemonConfig, "limits": LimitsConfig, "pager": PagerConfig,
            "reclaim": ReclaimConfig, "layer": LayerSection}


@dataclass(frozen=True)
class Key:
    """One configuration key, as the loader, the docs and ``config show`` see it."""

    table: str
    name: str
    type: str  # "int", "float", "bool", "str", "size", "list"
    default: Any
    doc: str
    live: bool
    optional: bool  # may be unset (None)
    rules: Mapping[str, Any]

    @property
    def where(self) -> str:
        return f"[{self.table}] {self.name}"


def _kind(name: str, ftype: str) -> tuple[str, bool]:
    optional = ftype.endswith("| None")
    base = ftype.replace(" | None", "").strip()
    if name.endswith("_bytes") and base == "int":
        return "size", optional
    if base.startswith("tuple"):
        return "list", optional
    return base, optional


def all_keys(table: str | None = None) -> Iterator[Key]:
    """Every key of every table (or of ``table``), in declaration order."""
    for tname, cls in tables().items():
        if table is not None and tname != table:
            continue
        for f in dataclasses.fields(cls):
            meta = dict(f.metadata)
            doc = meta.get("doc") or _LAYER_DOCS.get(f.name, "")
            live = bool(meta.get("live")) or (tname == "layer" and f.name in _LAYER_LIVE)
            kind, optional = _kind(f.name, str(f.type))
            rules = {k: v for k, v in meta.items()
                     if k in ("min", "max", "choices", "page_multiple")
                     and v is not None and v is not False and v != ()}
            yield Key(tname, f.name, kind, f.default, doc, live, optional, rules)


def key(table: str, name: str) -> Key:
    """The key ``[table] name``; ConfigError naming it when there is none."""
    if table not in tables():
        raise ConfigError(f"unknown table [{table}] (known: {', '.join(tables())})")
    for k in all_keys(table):
        if k.name == name:
            return k
    raise ConfigError(f"unknown key {name!r} in [{table}]")


def convert(k: Key, value: object) -> Any:
    """Check one value for key ``k`` (type, range, choices); return it converted."""
    where = k.where
    if value is None and k.optional:
        return None
    if k.type == "size":
        v: Any = parse_size(value, where)
    elif k.type == "bool":
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        v = value
    elif k.type == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        v = value
    elif k.type == "float":
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        v = float(value)
    elif k.type == "str":
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        v = value
    elif k.type == "list":
        if not isinstance(value, list | tuple) or not all(
                isinstance(x, str | int) and not isinstance(x, bool) for x in value):
            raise ConfigError(f"{where}: expected a list of names or ids, got {value!r}")
        v = tuple(value)
    else:  # pragma: no cover - a field type the loader does not know
        raise ConfigError(f"{where}: unsupported type {k.type}")
    r = k.rules
    if "min" in r and v < r["min"]:
        if r["min"] == 1:
            raise ConfigError(f"{where}: must be positive, got {v}")
        if r["min"] == 0:
            raise ConfigError(f"{where}: must not be negative, got {v}")
        raise ConfigError(f"{where}: must be at least {r['min']}, got {v}")
    if "max" in r and v > r["max"]:
        if k.name.endswith("_mode"):
            raise ConfigError(f"{where}: not a file mode (at most 0o{r['max']:o}): 0o{v:o}")
        raise ConfigError(f"{where}: at most {r['max']}, got {v}")
    if "choices" in r and v not in r["choices"]:
        raise ConfigError(f"{where}: {v!r} is not one of {', '.join(r['choices'])}")
    if r.get("page_multiple") and v % PAGE_SIZE:
        raise ConfigError(f"{where}: must be a multiple of {PAGE_SIZE}, got {v}")
    return v


# --- stage 2: values against each other -----------------------------------------------------

ConfigCheck = Callable[[Config], None]
_CHECKS: list[ConfigCheck] = []


def config_check(fn: ConfigCheck) -> ConfigCheck:
    """Register a check of values against each other (raises ConfigError); run for every Config."""
    _CHECKS.append(fn)
    return fn


@config_check
def _readahead_order(cfg: Config) -> None:
    p = cfg.pager
    if p.readahead_min > p.readahead_max:
        raise ConfigError(f"[pager] readahead_min ({p.readahead_min}) exceeds "
                          f"readahead_max ({p.readahead_max})")


# Upper bounds of values that would let the daemon be starved or exhausted by design
# (issue 13, item 7): each names the value and the reason.
_MAX_CLIENTS = 65536
_MAX_REGIONS = 65536
_MAX_LATENCY_SAMPLES = 1 << 20
_IOV_MAX = 1024  # <limits.h>: a pwritev(2) of more buffers fails with EINVAL
_MAX_DISK_SLOTS = (1 << 32) - 1  # the sealer's u32 slot number (swapd/layer/seal.py)


@config_check
def _pathological(cfg: Config) -> None:
    lim, p, r, lay, d = cfg.limits, cfg.pager, cfg.reclaim, cfg.layer, cfg.daemon
    checks: list[tuple[bool, str]] = [
        (lim.max_clients > _MAX_CLIENTS,
         f"[limits] max_clients = {lim.max_clients}: at most {_MAX_CLIENTS}; each client holds "
         "descriptors and memory in the daemon"),
        (lim.max_regions > _MAX_REGIONS,
         f"[limits] max_regions = {lim.max_regions}: at most {_MAX_REGIONS} per client"),
        (lim.hello_timeout_s > 3600,
         f"[limits] hello_timeout_s = {lim.hello_timeout_s}: above an hour, idle connections "
         "would hold sessions that long"),
        (p.latency_samples > _MAX_LATENCY_SAMPLES,
         f"[pager] latency_samples = {p.latency_samples}: at most {_MAX_LATENCY_SAMPLES}; "
         "every session keeps that many"),
        (r.interval_ms > 60_000,
         f"[reclaim] interval_ms = {r.interval_ms}: above a minute, the reclaimer and the "
         "shrinker would stop reacting"),
        (lay.writeback_batch > _IOV_MAX,
         f"[layer] writeback_batch = {lay.writeback_batch}: at most {_IOV_MAX} (IOV_MAX), or "
         "every writeback's pwritev fails"),
        (lay.disk and lay.disk_bytes // PAGE_SIZE > _MAX_DISK_SLOTS,
         f"[layer] disk_bytes = {lay.disk_bytes}: at most {_MAX_DISK_SLOTS} pages (the disk "
         "tier's slot numbers are 32-bit)"),
        (0 < d.watchdog_interval_s < 0.01,
         f"[daemon] watchdog_interval_s = {d.watchdog_interval_s}: below 10 ms the loop would "
         "do little but notify"),
        (bool(d.socket_mode & 0o7111),
         f"[daemon] socket_mode = {d.socket_mode:o}: execute, setuid, setgid or sticky bits "
         "mean nothing on a socket (a typo?)"),
    ]
    for bad, message in checks:
        if bad:
            raise ConfigError(message)


@config_check
def _disk_size(cfg: Config) -> None:
    if cfg.layer.disk and cfg.layer.disk_bytes < PAGE_SIZE:
        raise ConfigError("[layer] disk_bytes: at least one page when disk = true")


@config_check
def _tier_chain(cfg: Config) -> None:
    chain = cfg.tier_chain()
    if not chain or len(set(chain)) != len(chain):
        raise ConfigError(f"[layer] tiers: a non-empty list of distinct tier names, got "
                          f"{list(cfg.layer.tiers)}")
    stray = set(cfg.tier) - set(cfg.layer.tiers)
    if stray:
        raise ConfigError(f"[tier.{sorted(stray)[0]}]: not a tier of [layer] tiers = "
                          f"{list(cfg.layer.tiers)}")


@config_check
def _backend_tables(cfg: Config) -> None:
    for name, options in cfg.backend.items():
        if not isinstance(options, Mapping):
            raise ConfigError(f"[backend.{name}] must be a table of options")


# --- loading ---------------------------------------------------------------------------


def _section(tname: str, cls: type[Any], values: dict[str, Any]) -> Any:
    try:
        return cls(**values)
    except ConfigError as exc:  # LayerConfig.__post_init__
        msg = str(exc)
        raise ConfigError(msg if msg.startswith(f"[{tname}]") else f"[{tname}] {msg}") from exc


def config_from_dict(data: Mapping[str, Any], source: str = "<dict>", *,
                     sources: Mapping[str, str] | None = None, path: str = "") -> Config:
    """Build a validated Config from parsed TOML; unknown tables/keys are rejected by name.

    ``source`` prefixes error messages and is recorded as the source of each value given.
    """
    known = tables()
    sections: dict[str, Any] = {}
    named: dict[str, dict[str, dict[str, Any]]] = {"backend": {}, "tier": {}}
    src = dict(sources or {})
    for tname, tval in data.items():
        if tname in named:  # [backend.NAME], [tier.NAME]: options of a plugin
            if not isinstance(tval, dict):
                raise ConfigError(f"{source}: [{tname}] must hold [{tname}.NAME] tables")
            for bname, bopts in tval.items():
                if not isinstance(bopts, dict):
                    raise ConfigError(f"{source}: [{tname}.{bname}] must be a table of "
                                      "options")
                named[tname][bname] = dict(bopts)
                for k in bopts:
                    src[f"{tname}.{bname}.{k}"] = source
            continue
        if tname not in known:
            raise ConfigError(f"{source}: unknown table [{tname}] "
                              f"(known: {', '.join([*known, 'backend.NAME', 'tier.NAME'])})")
        if not isinstance(tval, dict):
            raise ConfigError(f"{source}: [{tname}] must be a table")
        kwargs: dict[str, Any] = {}
        for name, value in tval.items():
            try:
                k = key(tname, name)
            except ConfigError as exc:
                raise ConfigError(f"{source}: {exc}") from exc
            kwargs[name] = convert(k, value)
            src[f"{tname}.{name}"] = source
        sections[tname] = _section(tname, known[tname], kwargs)
    return Config(**sections, backend=named["backend"], tier=named["tier"], sources=src,
                  path=path)


def load_config(path: str | os.PathLike[str] | None = None, *,
                default_file: bool = False) -> Config:
    """Load ``path`` (TOML) over the built-in defaults.

    ``path`` None: built-in defaults, or -- with ``default_file`` -- the default
    file (:func:`default_config_path`) when it exists.  An explicit path must exist.
    """
    if path is None:
        if not default_file:
            return Config()
        p = default_config_path()
        if not p.exists():
            return Config()
        path = p
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError as exc:
        raise ConfigError(f"config file not found: {path}") from exc
    except IsADirectoryError as exc:
        raise ConfigError(f"config file is a directory: {path}") from exc
    except PermissionError as exc:
        raise ConfigError(f"cannot read config file {path}: permission denied") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from exc
    return config_from_dict(data, str(path), sources={}, path=str(path))


def replace(cfg: Config, table: str, *, source: str = "override", **changes: Any) -> Config:
    """Return ``cfg`` with ``[table]`` keys changed, each checked like the file's."""
    conv = {name: convert(key(table, name), v) for name, v in changes.items()}
    section = _section(table, tables()[table], {
        **{f.name: getattr(getattr(cfg, table), f.name)
           for f in dataclasses.fields(tables()[table])}, **conv})
    src = {**cfg.sources, **{f"{table}.{name}": source for name in changes}}
    return dataclasses.replace(cfg, **{table: section}, sources=src)


def as_dict(cfg: Config) -> dict[str, Any]:
    """The configuration as TOML-shaped data (tables of values; unset values left out)."""
    out: dict[str, Any] = {}
    for tname in tables():
        section = getattr(cfg, tname)
        out[tname] = {k.name: getattr(section, k.name) for k in all_keys(tname)
                      if getattr(section, k.name) is not None}
    if cfg.backend:
        out["backend"] = {n: dict(o) for n, o in cfg.backend.items()}
    if cfg.tier:
        out["tier"] = {n: dict(o) for n, o in cfg.tier.items()}
    return out


def differences(old: Config, new: Config) -> list[tuple[str, str, Any, Any]]:
    """Keys whose values differ: ``(table, key, old, new)``; backend options as ``backend.NAME``."""
    out: list[tuple[str, str, Any, Any]] = []
    for k in all_keys():
        a, b = getattr(getattr(old, k.table), k.name), getattr(getattr(new, k.table), k.name)
        if a != b:
            out.append((k.table, k.name, a, b))
    for group in ("backend", "tier"):
        o, n = getattr(old, group), getattr(new, group)
        for name in sorted(set(o) | set(n)):
            a2, b2 = dict(o.get(name, {})), dict(n.get(name, {}))
            if a2 != b2:
                out.append((f"{group}.{name}", "*", a2, b2))
    return out


# --- stage 3: plugins and the machine ----------------------------------------------------


def resolve_plugins(cfg: Config) -> None:
    """Resolve every plugin name of ``cfg`` (tiers, compressor, policies, backend) and try the
    backend's options.  ConfigError by name.  (A tier's ``[tier.NAME]`` options are checked
    by its ``from_config`` when the layer is built.)

    The backend is constructed with its ``[backend.NAME]`` options and closed again
    (its arena is a reservation; nothing is touched), so a misspelt option or an
    option value the backend refuses stops the start, not the first client.
    """
    from swapd.compress import get_compressor
    from swapd.errors import PluginError
    from swapd.plugins import make_backend, make_policy

    def named(where: str, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except (ConfigError, PluginError) as exc:
            raise ConfigError(f"{where}: {exc}") from exc
        except TypeError as exc:
            raise ConfigError(f"{where}: {exc}") from exc

    from swapd.plugins import TIERS_GROUP, load

    named("[layer] compressor", lambda: get_compressor(cfg.layer.compressor))
    for tier in cfg.tier_chain():
        named("[layer] tiers", functools.partial(load, TIERS_GROUP, tier))
    named("[reclaim] policy", lambda: make_policy(cfg.reclaim.policy))
    if cfg.layer.demotion_policy != "lru":
        named("[layer] demotion_policy", lambda: make_policy(cfg.layer.demotion_policy))
    backend = named(f"[backend.{cfg.layer.backend}]" if cfg.backend_options() else
                    "[layer] backend",
                    lambda: make_backend(cfg.layer.backend, **cfg.backend_options()))
    backend.close()
    for name in cfg.backend:
        if name != cfg.layer.backend:
            other = named(f"[backend.{name}]",
                          functools.partial(make_backend, name, **cfg.backend[name]))
            other.close()


@dataclass(frozen=True)
class Environment:
    """Facts of the machine and the process that the configuration is checked against.

    Gathered by :meth:`current`; tests pass their own.
    """

    ram_bytes: int
    nofile_soft: int
    nofile_hard: int
    watchdog_usec: int  # $WATCHDOG_USEC, 0 when unset
    euid: int
    gids: frozenset[int]  # the process's groups (primary and supplementary)
    can_chown: bool  # root or CAP_CHOWN in the effective set
    disk_fs_bytes: int | None  # size of the file system holding the disk tier (None: unknown)

    @classmethod
    def current(cls, cfg: Config, state_path: Path | None = None) -> Environment:
        """The running process's environment, for ``cfg``."""
        import resource

        from swapd.layer.tier import system_ram_bytes

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        try:
            wd = int(os.environ.get("WATCHDOG_USEC", "0") or 0)
        except ValueError as exc:
            raise ConfigError(f"$WATCHDOG_USEC is not an integer: "
                              f"{os.environ['WATCHDOG_USEC']!r}") from exc
        fs: int | None = None
        probe = Path(cfg.layer.disk_path) if cfg.layer.disk_path else (
            state_path or cfg.state_path())
        for p in (probe, *probe.parents):
            try:
                st = os.statvfs(p)
            except OSError:
                continue
            fs = st.f_blocks * st.f_frsize
            break
        return cls(ram_bytes=system_ram_bytes(), nofile_soft=soft, nofile_hard=hard,
                   watchdog_usec=wd, euid=os.geteuid(),
                   gids=frozenset([os.getegid(), *os.getgroups()]),
                   can_chown=os.geteuid() == 0 or _has_cap(0), disk_fs_bytes=fs)


def _has_cap(bit: int) -> bool:
    """True if capability ``bit`` (linux/capability.h) is in this process's effective set."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> bit & 1)
    except OSError:
        pass
    return False


def descriptors_needed(cfg: Config) -> int:
    """File descriptors the daemon may hold at its quotas.

    Per client: its socket and pidfd, and per region a memfd and a userfaultfd;
    plus 64 for the daemon itself (epoll, wake pipe, listener, disk file, logs).
    """
    lim = cfg.limits
    return lim.max_clients * (2 + 2 * lim.max_regions) + 64


EnvironmentCheck = Callable[[Config, Environment], "str | None"]
_ENV_CHECKS: list[EnvironmentCheck] = []


def environment_check(fn: EnvironmentCheck) -> EnvironmentCheck:
    """Register a check of the configuration against the machine.

    A check raises ConfigError for a value that cannot work, or returns a warning
    (a problem caused by built-in defaults only, which must not stop a start on a
    small machine), or None.
    """
    _ENV_CHECKS.append(fn)
    return fn


def _problem(cfg: Config, keys_: tuple[tuple[str, str], ...], message: str) -> str:
    """Raise ConfigError when any of ``keys_`` was configured; else return the warning."""
    if any(cfg.source(t, k) != "default" for t, k in keys_):
        raise ConfigError(message)
    return message + " (built-in defaults: continuing)"


@environment_check
def _watchdog(cfg: Config, env: Environment) -> str | None:
    iv = cfg.daemon.watchdog_interval_s
    if iv and env.watchdog_usec and iv * 1e6 >= env.watchdog_usec:
        raise ConfigError(f"[daemon] watchdog_interval_s = {iv:g} is not below the service's "
                          f"watchdog timeout ($WATCHDOG_USEC = {env.watchdog_usec / 1e6:g} s, "
                          "WatchdogSec=): systemd would kill the daemon")
    return None


@environment_check
def _descriptors(cfg: Config, env: Environment) -> str | None:
    need = descriptors_needed(cfg)
    if need <= env.nofile_hard:
        return None
    lim = cfg.limits
    return _problem(cfg, (("limits", "max_clients"), ("limits", "max_regions")),
                    f"[limits] max_clients = {lim.max_clients} x max_regions = "
                    f"{lim.max_regions} need {need} file descriptors, but the limit is "
                    f"{env.nofile_hard} (raise LimitNOFILE= or lower the quotas)")


@environment_check
def _socket_group(cfg: Config, env: Environment) -> str | None:
    g = cfg.daemon.socket_group
    if not g:
        return None
    import grp

    try:
        gid = int(g) if g.isdigit() else grp.getgrnam(g).gr_gid
    except KeyError as exc:
        raise ConfigError(f"[daemon] socket_group: no such group {g!r}") from exc
    if gid not in env.gids and not env.can_chown:
        raise ConfigError(f"[daemon] socket_group: the daemon (uid {env.euid}) is not a member "
                          f"of group {g!r} and lacks CAP_CHOWN, so it cannot give it the socket "
                          "(systemd: SupplementaryGroups=)")
    return None


@environment_check
def _sizes(cfg: Config, env: Environment) -> str | None:
    ram = env.ram_bytes
    pool = cfg.layer.pool_limit_bytes
    if pool is not None and pool > ram:
        raise ConfigError(f"[layer] pool_limit_bytes = {format_size(pool)} is larger than this "
                          f"machine's RAM ({human_size(ram)})")
    warning = None
    glob = cfg.limits.global_resident_bytes
    if glob > ram:
        warning = _problem(cfg, (("limits", "global_resident_bytes"),),
                           f"[limits] global_resident_bytes = {format_size(glob)} is larger than "
                           f"this machine's RAM ({human_size(ram)})")
    fs = env.disk_fs_bytes
    if cfg.layer.disk and fs is not None and cfg.layer.disk_bytes > fs:
        warning = _problem(cfg, (("layer", "disk_bytes"),),
                           f"[layer] disk_bytes = {format_size(cfg.layer.disk_bytes)} is larger "
                           f"than the file system that holds the disk tier ({human_size(fs)})")
    return warning


def check_environment(cfg: Config, env: Environment) -> list[str]:
    """Run every registered environment check; return the warnings."""
    return [w for check in _ENV_CHECKS if (w := check(cfg, env))]


def check_startup(cfg: Config, *, state_path: Path | None = None,
                  env: Environment | None = None) -> list[str]:
    """Stage 3: plugins resolved, options tried, values against the machine.

    Raises ConfigError naming the first problem; returns the warnings.
    """
    resolve_plugins(cfg)
    env = env or Environment.current(cfg, state_path)
    return check_environment(cfg, env)


def raise_nofile(cfg: Config) -> None:
    """Raise the soft RLIMIT_NOFILE towards the hard one when the quotas need more."""
    import resource

    need = descriptors_needed(cfg)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need <= hard or (soft < need and hard == resource.RLIM_INFINITY):
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
