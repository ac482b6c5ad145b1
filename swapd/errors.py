"""The exception hierarchy of swapd.

Every exception names its cause; callers chain with ``raise ... from``.  The
hierarchy is small on purpose so that a backend or policy author knows which
error to raise for which misuse:

* :class:`InvariantError` -- a ``_check()`` found a broken invariant (a bug).
* :class:`BackendError` and its children -- misuse of, or exhaustion in, an
  allocator backend.
* :class:`StoreRejected` -- the layer refused to take a page; the caller keeps
  the page resident.  ``reason`` carries the kernel-style counter name.
* :class:`CorruptPageError` -- stored data failed its checksum; never served.
* :class:`PluginError`, :class:`ConfigError` -- bad plugin registration or
  configuration, with the offending name in the message.
* :class:`ProtocolError`, :class:`DaemonGoneError`, :class:`ClientGoneError`
  -- the control protocol between a client and the daemon.
"""

from __future__ import annotations


class SwapdError(Exception):
    """Base class of every error swapd raises on purpose."""


class InvariantError(SwapdError, AssertionError):
    """A data structure's ``_check()`` found a broken invariant."""


# --- allocator backends -------------------------------------------------------


class BackendError(SwapdError):
    """Base class of allocator backend errors."""


class InvalidHandleError(BackendError, KeyError):
    """The handle was never returned by ``malloc`` of this pool, or was freed."""

    def __str__(self) -> str:  # KeyError quotes its argument; we want prose.
        return str(self.args[0]) if self.args else "invalid handle"


class DoubleFreeError(InvalidHandleError):
    """``free`` was called on a handle that was already freed."""


class ObjectSizeError(BackendError, ValueError):
    """A size of 0, above the backend's maximum, or data of the wrong length."""


class DataTypeError(BackendError, TypeError):
    """``write`` was given something that is not a bytes-like object."""


class NotAdoptableError(BackendError):
    """A backend cannot be rebuilt from state fds (it keeps its state in Python objects, or
    the fds it was given are not the regions it wrote)."""


class PoolExhaustedError(BackendError, MemoryError):
    """The page arena has no page left for a new allocation."""


# --- the layer ------------------------------------------------------------------


class StoreRejected(SwapdError):
    """The layer refused to store a page; the caller must keep it resident.

    ``reason`` is the name of the counter that was incremented, e.g.
    ``"reject_compress_poor"`` or ``"reject_reclaim_fail"``.
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


class TierFullError(SwapdError):
    """A tier has no room for the page (disk full, pool at its hard limit)."""


class CorruptPageError(SwapdError):
    """A stored page failed its checksum; the page must be poisoned, never served."""


class TierIOError(SwapdError, OSError):
    """The disk tier failed to read or write a slot."""


class WouldBlockError(SwapdError):
    """A load asked not to wait (``nowait``) needs a slow tier's I/O; nothing was changed."""


class EntryNotFoundError(SwapdError, KeyError):
    """No swapped-out entry exists for that (region, page index)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "entry not found"


# --- plugins and configuration --------------------------------------------------


class PluginError(SwapdError):
    """An entry point could not be loaded or does not satisfy its contract."""


class ConfigError(SwapdError, ValueError):
    """A configuration file, option or CLI argument is invalid."""


# --- protocol ---------------------------------------------------------------------


class ProtocolError(SwapdError):
    """A malformed or unexpected message on the control socket."""


class QuotaExceededError(ProtocolError):
    """A client asked for more managed memory or regions than its quota allows."""


class DaemonGoneError(SwapdError, ConnectionError):
    """The daemon's control socket closed; the client library fails closed."""


class ClientGoneError(SwapdError):
    """The client process exited or its address space is gone (ESRCH)."""


class TraceFormatError(SwapdError, ValueError):
    """A trace file is malformed: carries the file, record number and reason."""

    def __init__(self, path: str, record: int, reason: str) -> None:
        self.path = path
        self.record = record
        self.reason = reason
        super().__init__(f"{path}: record {record}: {reason}")


# --- corpus and kernel devices (appended for swapd.corpus and swapd.kernel.zram) ---------


class CorpusFormatError(SwapdError, ValueError):
    """A corpus file cannot be read, is not in swapd's corpus format, or is truncated."""


class CaptureError(SwapdError):
    """Pages of a process could not be captured (no such pid, no permission)."""


class StateFormatError(SwapdError, ValueError):
    """A state region's header is not one this swapd can read (names the field and values)."""


class ZramError(SwapdError):
    """A zram device could not be set up, written, read or reset through sysfs."""


class AlreadyTrackedError(SwapdError, KeyError):
    """A policy was told to ``insert`` a key it already tracks (a caller bug)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "key already tracked"


class RequestError(ProtocolError):
    """The daemon refused a request; ``code`` is the protocol's error code (docs/protocol.md)."""

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        self.message = message
        super().__init__(f"{code}: {message}")
