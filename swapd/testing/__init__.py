"""Test support shipped with swapd: the backend and policy contract suites as a pytest plugin.

A third-party backend or policy package runs swapd's own contract suite against its
plugin without a swapd source tree::

    pip install swapd my-swapd-backend
    pytest --swapd-backend mybackend          # or NAME:option=value, or pkg.module:Class
    pytest --swapd-policy mypolicy

The plugin (:mod:`swapd.testing.plugin`, registered in the ``pytest11`` entry-point
group, so pytest loads it whenever swapd is installed) adds those options and the
fixtures ``swapd_backend`` (a :class:`BackendVariant`), ``swapd_pool`` (a fresh pool of
it) and ``swapd_policy`` (a factory ``capacity -> Policy``); with no test paths given it
collects :mod:`swapd.testing.backend_contract` / :mod:`swapd.testing.policy_contract`.
Without ``--swapd-backend`` the fixtures run over every installed backend (and policy).

A spec names a registered plugin (``zsmalloc``), optionally with options
(``zsmalloc:lock=pool,chain_size=4``, checked like ``--backend-opt``), or a class by
import path (``mypkg.pool:MyPool``) for a package whose entry point is not installed.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any

from swapd.config import parse_literal
from swapd.errors import ConfigError, PluginError

__all__ = ["BackendVariant", "PolicyVariant", "TierVariant", "backend_variant",
           "policy_variant", "tier_variant"]


@dataclass(frozen=True)
class BackendVariant:
    """A backend class and the options to build it with; ``id`` names the test."""

    id: str
    cls: type[Any]
    options: dict[str, Any] = field(default_factory=dict)

    def make(self, **extra: Any) -> Any:
        """Build a fresh pool (pass ``max_pages`` for a tiny arena)."""
        return self.cls(**self.options, **extra)


@dataclass(frozen=True)
class PolicyVariant:
    """A policy class and its parameters; ``id`` names the test."""

    id: str
    cls: type[Any]
    params: dict[str, Any] = field(default_factory=dict)

    def make(self, capacity: int | None) -> Any:
        """A fresh policy of ``capacity`` keys (None: unbounded)."""
        return self.cls(capacity, **self.params)


@dataclass(frozen=True)
class TierVariant:
    """A tier class (of the ``swapd.tiers`` group) and its ``[tier.NAME]`` options."""

    id: str
    cls: type[Any]
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return str(getattr(self.cls, "name", self.id))

    def make(self, ctx: Any, **extra: Any) -> Any:
        """Build a fresh tier with ``cls.from_config(ctx, options)`` (``extra`` added)."""
        return self.cls.from_config(ctx, {**self.options, **extra})


def _split(spec: str) -> tuple[str, dict[str, str]]:
    """``NAME[:k=v,...]`` or ``pkg.mod:Class[:k=v,...]`` -> (target, raw options)."""
    parts = spec.split(":")
    if len(parts) >= 2 and "=" not in parts[1]:
        target, rest = f"{parts[0]}:{parts[1]}", parts[2:]
    else:
        target, rest = parts[0], parts[1:]
    opts: dict[str, str] = {}
    for chunk in ":".join(rest).split(","):
        if not chunk.strip():
            continue
        k, eq, v = chunk.partition("=")
        if not eq or not k.strip():
            raise ConfigError(f"{spec!r}: expected NAME[:option=value,...]")
        opts[k.strip()] = v.strip()
    return target.strip(), opts


def _import(target: str) -> type[Any]:
    mod, _, attr = target.partition(":")
    try:
        obj = getattr(importlib.import_module(mod), attr)
    except (ImportError, AttributeError) as exc:
        raise PluginError(f"cannot import {target}: {exc}") from exc
    if not isinstance(obj, type):
        raise PluginError(f"{target} is not a class")
    return obj


def backend_variant(spec: str) -> BackendVariant:
    """The variant a ``--swapd-backend`` spec names (PluginError / ConfigError if bad)."""
    from swapd.backend import Backend
    from swapd.plugins import BACKENDS_GROUP, _options_of, coerce_option, load

    target, raw = _split(spec)
    cls = _import(target) if ":" in target else load(BACKENDS_GROUP, target)
    if not issubclass(cls, Backend):
        raise PluginError(f"{target} is not a subclass of swapd.backend.Backend")
    known = _options_of(cls)
    opts: dict[str, Any] = {}
    for k, v in raw.items():
        if k not in known:
            raise ConfigError(f"backend {target!r} has no option {k!r}; its options: "
                              f"{', '.join(sorted(known))}")
        opts[k] = coerce_option(f"backend {target!r}", k, v, known[k].default)
    return BackendVariant(spec, cls, opts)


def policy_variant(spec: str) -> PolicyVariant:
    """The variant a ``--swapd-policy`` spec names (PluginError / ConfigError if bad)."""
    from swapd.plugins import POLICIES_GROUP, _options_of, coerce_option, load
    from swapd.policy import Policy

    target, raw = _split(spec)
    cls = _import(target) if ":" in target else load(POLICIES_GROUP, target)
    if not issubclass(cls, Policy):
        raise PluginError(f"{target} is not a subclass of swapd.policy.Policy")
    known = _options_of(cls)
    params: dict[str, Any] = {}
    for k, v in raw.items():
        default = known[k].default if k in known else None
        params[k] = coerce_option(f"policy {target!r}", k, parse_literal(v), default)
    return PolicyVariant(spec, cls, params)


def tier_variant(spec: str) -> TierVariant:
    """The variant a ``--swapd-tier`` spec names: ``NAME[:opt=value,...]`` or
    ``pkg.mod:Class[:opt=value,...]`` (PluginError if it is not a tier; a bad option is
    refused by the tier's ``from_config`` when the suite builds it)."""
    from swapd.layer.tier import Tier
    from swapd.plugins import TIERS_GROUP, load

    target, raw = _split(spec)
    cls = _import(target) if ":" in target else load(TIERS_GROUP, target)
    if not issubclass(cls, Tier):
        raise PluginError(f"{target} is not a subclass of swapd.layer.tier.Tier")
    return TierVariant(spec, cls, {k: parse_literal(v) for k, v in raw.items()})
