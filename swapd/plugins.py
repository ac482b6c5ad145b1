"""Entry-point plugin discovery for backends (``swapd.backends``) and policies
(``swapd.policies``).

Each entry point is loaded on its own; a plugin that fails to import, or that
is not a subclass of the contract's base class, is reported with its reason
(and logged with its traceback), never swallowed, and never stops the others
from loading -- as drgn loads its plugins.
"""

from __future__ import annotations

import functools
import inspect
import logging
import traceback
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from swapd.errors import ConfigError, PluginError

log = logging.getLogger(__name__)

BACKENDS_GROUP = "swapd.backends"
POLICIES_GROUP = "swapd.policies"
TIERS_GROUP = "swapd.tiers"


@dataclass(frozen=True)
class PluginInfo:
    """One entry point and the outcome of loading it."""

    name: str
    group: str
    target: str  # "module:attr"
    distribution: str
    dist_version: str
    cls: type[Any] | None
    error: str | None  # one line; None when loaded

    @property
    def ok(self) -> bool:
        return self.cls is not None

    @property
    def description(self) -> str:
        return str(getattr(self.cls, "description", "")) if self.cls else ""

    @property
    def version(self) -> str:
        return str(getattr(self.cls, "version", self.dist_version)) if self.cls else ""


def _base_for(group: str) -> type[Any]:
    if group == BACKENDS_GROUP:
        from swapd.backend import Backend

        return Backend
    if group == POLICIES_GROUP:
        from swapd.policy import Policy

        return Policy
    if group == TIERS_GROUP:
        from swapd.layer.tier import Tier

        return Tier
    raise PluginError(f"unknown plugin group {group!r}")


def _load(ep: EntryPoint, group: str) -> PluginInfo:
    dist = ep.dist.name if ep.dist is not None else "?"
    dver = ep.dist.version if ep.dist is not None else "?"
    base = _base_for(group)
    try:
        obj = ep.load()
    except Exception as exc:
        log.info("plugin %s=%s in %s failed to load:\n%s", ep.name, ep.value, group,
                    traceback.format_exc())
        return PluginInfo(ep.name, group, ep.value, dist, dver, None,
                          f"import failed: {type(exc).__name__}: {exc}")
    if not (isinstance(obj, type) and issubclass(obj, base)):
        return PluginInfo(ep.name, group, ep.value, dist, dver, None,
                          f"{ep.value} is not a subclass of {base.__module__}.{base.__name__}")
    if getattr(obj, "name", None) != ep.name:
        return PluginInfo(ep.name, group, ep.value, dist, dver, None,
                          f"{ep.value}.name is {getattr(obj, 'name', None)!r}, "
                          f"but the entry point is named {ep.name!r}")
    return PluginInfo(ep.name, group, ep.value, dist, dver, obj, None)


@functools.cache
def discover(group: str) -> tuple[PluginInfo, ...]:
    """Load every entry point of ``group`` once; sorted by name.  Cached."""
    seen: dict[str, PluginInfo] = {}
    for ep in entry_points(group=group):
        if ep.name in seen:
            prev = seen[ep.name]
            seen[ep.name] = PluginInfo(ep.name, group, ep.value, prev.distribution, "?", None,
                                       f"name {ep.name!r} registered twice "
                                       f"({prev.target} and {ep.value})")
            continue
        seen[ep.name] = _load(ep, group)
    return tuple(sorted(seen.values(), key=lambda p: p.name))


def available(group: str) -> dict[str, type[Any]]:
    """Name -> class of every plugin of ``group`` that loaded."""
    return {p.name: p.cls for p in discover(group) if p.cls is not None}


def load(group: str, name: str) -> type[Any]:
    """Return the class registered as ``name`` in ``group``; PluginError otherwise."""
    for p in discover(group):
        if p.name == name:
            if p.cls is None:
                raise PluginError(f"{group} plugin {name!r} failed to load: {p.error}")
            return p.cls
    names = ", ".join(p.name for p in discover(group) if p.ok) or "none"
    raise PluginError(f"no {group} plugin named {name!r}; available: {names}")


def available_backends() -> dict[str, type[Any]]:
    """Name -> class of every backend that loaded."""
    return available(BACKENDS_GROUP)


def available_policies() -> dict[str, type[Any]]:
    """Name -> class of every policy that loaded."""
    return available(POLICIES_GROUP)


def backend_options(name: str) -> dict[str, inspect.Parameter]:
    """The keyword options backend ``name``'s constructor takes, by name.

    Collected from ``__init__`` of the class and of every base class it passes ``**options``
    on to (a parameter named in a subclass wins), so ``max_pages`` and
    ``arena_cache_pages`` of :class:`swapd.backend.Backend` are included.  PluginError for an
    unknown backend.
    """
    return _options_of(load(BACKENDS_GROUP, name))


def _options_of(cls: type[Any]) -> dict[str, inspect.Parameter]:
    out: dict[str, inspect.Parameter] = {}
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        try:
            sig = inspect.signature(init)
        except (TypeError, ValueError):  # pragma: no cover - a C-level __init__
            break
        more = False
        for i, prm in enumerate(sig.parameters.values()):
            if i == 0:
                continue  # self
            if prm.kind is prm.VAR_KEYWORD:
                more = True
            elif prm.kind in (prm.KEYWORD_ONLY, prm.POSITIONAL_OR_KEYWORD):
                out.setdefault(prm.name, prm)
        if not more:
            break
    return out


def coerce_option(owner: str, name: str, value: Any, default: Any) -> Any:
    """Check ``value`` against the type of ``default``; convert strings (from a command line
    or a config file) to it.  Returns the value to pass; ConfigError naming ``owner`` and
    ``name`` when it does not fit.  A parameter without a default, or with ``None``, takes
    any value.
    """
    if default is inspect.Parameter.empty or default is None:
        return value
    want = type(default)
    if isinstance(value, str) and want is not str:
        v = value.strip()
        try:
            if want is bool:
                low = v.lower()
                if low not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
                    raise ValueError(v)
                return low in ("1", "true", "yes", "on")
            if want is int:
                return int(v, 0)
            if want is float:
                return float(v)
        except ValueError:
            raise ConfigError(f"{owner}: option {name!r} must be {want.__name__} "
                              f"(like its default {default!r}), got {value!r}") from None
    if want is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    ok = isinstance(value, want) and not (want is int and isinstance(value, bool))
    if not ok:
        raise ConfigError(f"{owner}: option {name!r} must be {want.__name__} "
                          f"(like its default {default!r}), got {value!r}")
    return value


def make_backend(name: str, **options: Any) -> Any:
    """Instantiate backend ``name`` with ``options``, checked before the constructor runs.

    Every option must be a keyword parameter of the backend's constructor (or of the base
    classes it passes ``**options`` to) -- ConfigError naming the option and listing the
    valid ones otherwise -- and of the type of that parameter's default; a string (from
    ``--backend-opt NAME=VALUE`` or a ``[backend.NAME]`` config section) is converted to it.
    The constructor's own range checks run after that.  PluginError for an unknown backend.
    This one function is what the config, ``swapd sim`` and ``swapd bench`` all use.
    """
    return load(BACKENDS_GROUP, name)(**check_backend_options(name, options))


def check_backend_options(name: str, options: dict[str, Any]) -> dict[str, Any]:
    """Validate ``options`` for backend ``name`` as :func:`make_backend` does, without
    building it; return them converted.  ConfigError / PluginError as there."""
    cls = load(BACKENDS_GROUP, name)
    known = _options_of(cls)
    out: dict[str, Any] = {}
    for k, v in options.items():
        prm = known.get(k)
        if prm is None:
            valid = ", ".join(sorted(known)) or "none"
            raise ConfigError(f"backend {name!r} has no option {k!r}; its options: {valid}")
        out[k] = coerce_option(f"backend {name!r}", k, v, prm.default)
    return out


def make_policy(name: str, capacity: int | None = None, **params: Any) -> Any:
    """Instantiate policy ``name`` (ConfigError on bad parameters)."""
    return load(POLICIES_GROUP, name)(capacity, **params)


def available_tiers() -> dict[str, type[Any]]:
    """Tiers that loaded: name -> class (entry points ``swapd.tiers``)."""
    return available(TIERS_GROUP)


def make_tier(name: str, ctx: Any, options: Any = None) -> Any:
    """Build tier ``name`` with ``cls.from_config(ctx, options)`` (ConfigError on bad options)."""
    return load(TIERS_GROUP, name).from_config(ctx, dict(options or {}))
