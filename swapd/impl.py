# Which implementation of the hot paths runs: the compiled one or the pure-Python reference.
#
# Design.  The pure-Python modules (the layer, the backends, the compressors) are the
# specification.  ``swapd._native._core`` (C, swapd/_native/_core.c, built by setup.py) does the
# same operations over the same bytes, faster and with the GIL released where no Python object
# is touched.  ``SWAPD_IMPL`` chooses, once, at the first import of this module:
#
#   compiled  the extension must load; if it does not, importing swapd fails with ImplError
#             naming the reason (the build's own error when the build failed);
#   python    the reference only, even when the extension is built;
#   auto      (default) compiled when it loads, else python with a loud ImplFallbackWarning
#             that names the reason -- a silent fallback would hide a broken build.
#
# The choice is visible at run time: ``swapd --version``, ``swapd backends`` and the daemon's
# ``stats`` reply ("impl") say which one runs.  Code that has two implementations asks
# ``native()`` (the module, or None for the reference) once, when it is built, never per call.
# The test suite runs whole under both (.ci/run), and tests/test_native_differential.py drives
# both through the same operation sequences and compares the bytes.
#
# Prior art: Mercurial's HGMODULEPOLICY=c|py|allow, msgpack's MSGPACK_PUREPYTHON, aiohttp's
# AIOHTTP_NO_EXTENSIONS; msgpack issue #481 for why the fallback must be loud.
"""The implementation switch: ``SWAPD_IMPL=compiled|python|auto`` (see the module comment)."""

from __future__ import annotations

import importlib
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from swapd.errors import ConfigError

__all__ = ["ENV", "IMPL", "ImplError", "ImplFallbackWarning", "Selection", "describe", "native",
           "select",
           "selection"]

ENV = "SWAPD_IMPL"
CHOICES = ("auto", "compiled", "python")
MODULE = "swapd._native._core"
#: The ABI this Python code expects of the extension; a stale build (another ABI) is refused.
ABI_VERSION = 2
_BUILD_ERROR = Path(__file__).resolve().parent / "_native" / "BUILD_ERROR.txt"


class ImplError(ConfigError):
    """SWAPD_IMPL names no implementation, or names the compiled one and it cannot load."""


class ImplFallbackWarning(RuntimeWarning):
    """SWAPD_IMPL=auto runs the pure-Python reference because the compiled one cannot load."""


@dataclass(frozen=True)
class Selection:
    """The outcome of a choice: ``impl`` is "compiled" or "python"; ``requested`` the
    SWAPD_IMPL value; ``reason`` why the compiled one is not running (None when it is);
    ``module`` the extension when it runs."""

    impl: str
    requested: str
    reason: str | None
    module: ModuleType | None

    def describe(self) -> str:
        """One line: which implementation runs and, for python, why."""
        if self.module is not None:
            return f"compiled ({MODULE}, lz4 {self.module.LZ4_VERSION})"
        if self.requested == "python":
            return f"python ({ENV}=python)"
        return f"python (compiled unavailable: {self.reason})"


def _load(module: str) -> tuple[ModuleType | None, str | None]:
    """Import the extension; return (module, None) or (None, why not)."""
    try:
        mod = importlib.import_module(module)
    except ImportError as exc:
        why = f"cannot import {module}: {exc}"
        if _BUILD_ERROR.exists():
            why = f"{_BUILD_ERROR.read_text().strip()} ({why})"
        else:
            why += " (rebuild it with `pip install -e .`, or `make venv`)"
        return None, why
    abi = getattr(mod, "ABI_VERSION", None)
    if abi != ABI_VERSION:
        return None, (f"{module} has ABI {abi}, this code needs {ABI_VERSION}: a stale build; "
                      "rebuild it with `pip install -e .`")
    return mod, None


def select(requested: str | None = None, *, module: str = MODULE) -> Selection:
    """Choose an implementation for ``requested`` (default: $SWAPD_IMPL, else "auto").

    Raises ImplError for an unknown choice, and for "compiled" when the extension cannot load;
    warns (ImplFallbackWarning) when "auto" falls back.  Not cached: see ``IMPL``.
    """
    req = (requested if requested is not None else os.environ.get(ENV, "auto")).strip().lower()
    if req not in CHOICES:
        raise ImplError(f"{ENV}={req!r}: choose one of {', '.join(CHOICES)}")
    if req == "python":
        return Selection("python", req, None, None)
    mod, why = _load(module)
    if mod is not None:
        return Selection("compiled", req, None, mod)
    if req == "compiled":
        raise ImplError(f"{ENV}=compiled but the compiled implementation is unavailable: {why}")
    warnings.warn(f"swapd: running the pure-Python implementation ({ENV}=auto): {why}",
                  ImplFallbackWarning, stacklevel=2)
    return Selection("python", req, why, None)


_SELECTION = select()
#: "compiled" or "python": what runs in this process (chosen once, at import).
IMPL = _SELECTION.impl


def native() -> ModuleType | None:
    """The compiled module when it runs, else None (the reference runs).  O(1)."""
    return _SELECTION.module


def selection() -> Selection:
    """This process's choice."""
    return _SELECTION


def describe() -> str:
    """One line naming the implementation that runs (for --version, backends, stats)."""
    return _SELECTION.describe()
