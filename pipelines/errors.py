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


#: Optional extras of the package and the module each one installs.
EXTRAS: dict[str, str] = {"ml": "torch", "airflow": "airflow"}


class MissingExtraError(BadInputError):
    """An optional dependency is not installed: names the extra that installs it."""

    def __init__(self, extra: str) -> None:
        self.extra = extra
        module = EXTRAS[extra]
        super().__init__(
            module,
            "not installed",
            f"the {extra!r} extra of terrapipe",
            f"Install it with pip install 'terrapipe[{extra}]'",
        )


def require_extra(extra: str) -> None:
    """Raise :class:`MissingExtraError` unless the module of ``extra`` can be imported."""
    import importlib.util

    if importlib.util.find_spec(EXTRAS[extra]) is None:
        raise MissingExtraError(extra)


def missing_extra(exc: ModuleNotFoundError) -> MissingExtraError | None:
    """The :class:`MissingExtraError` behind ``exc`` when an extra's module is not installed."""
    import importlib.util

    top = (exc.name or "").partition(".")[0]
    for extra, module in EXTRAS.items():
        if top == module and importlib.util.find_spec(module) is None:
            return MissingExtraError(extra)
    return None
