"""Error classes. Each says what was wrong, with which value, and what would be valid.

The failure class decides what the orchestrator does: ``BadInputError`` fails at once
without retry, ``NoScenesError`` skips, ``TransientIOError`` retries with backoff.
"""

from __future__ import annotations

from typing import Any


class TerrapipeError(Exception):
    """Base class of every error terrapipe raises on purpose."""


class BadInputError(TerrapipeError, ValueError):
    """Input that can never work: a bad config field, a missing band, a corrupt file.

    Names the offending ``field``, the ``value`` seen and what ``expected`` would be valid.
    """

    def __init__(self, field: str, value: Any, expected: str, hint: str = "") -> None:
        self.field = field
        self.value = value
        self.expected = expected
        shown = repr(value)
        if len(shown) > 200:
            shown = shown[:197] + "..."
        message = f"{field}: got {shown}; expected {expected}"
        if hint:
            message += f". {hint}"
        super().__init__(message)


class NoScenesError(TerrapipeError):
    """A search or a tile found no scenes: the task is skipped, not failed."""


class TransientIOError(TerrapipeError, OSError):
    """An I/O failure that may pass (timeout, connection reset, 5xx): retried with backoff."""
