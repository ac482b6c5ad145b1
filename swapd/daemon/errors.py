"""The daemon's internal refusal: a request refused with a protocol error code."""

from __future__ import annotations

__all__ = ["Refused"]


class Refused(Exception):
    """A request is refused with ``code`` (docs/protocol.md) and a message naming the problem."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
