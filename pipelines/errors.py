"""Error classes. Each says what was wrong, with which value, and what would be valid.

The failure class decides what the orchestrator does: ``BadInputError`` fails at once
without retry, ``NoScenesError`` skips, ``TransientIOError`` retries with backoff.
"""

from __future__ import annotations

import errno
import re
from typing import Any, Literal


class TerrapipeError(Exception):
    """Base class of every error terrapipe raises on purpose."""


class BadInputError(TerrapipeError, ValueError):
    """Input that can never work: a bad config field, a missing band, a corrupt file.

    Names the offending ``field``, the ``value`` seen and what ``expected`` would be valid.
    """

    scene: str | None = None
    """The ID of the STAC item whose file or metadata is at fault, where the failure is one
    scene's (a file missing or corrupt, a band not catalogued): what ``stac.exclude_items``
    takes. Set with :meth:`of_scene`."""

    def of_scene(self, item_id: str | None) -> BadInputError:
        """This error, attributed to the scene ``item_id`` (None: to none)."""
        self.scene = item_id
        return self

    def __init__(self, field: str, value: Any, expected: str, hint: str = "") -> None:
        self.field = field
        self.value = value
        self.expected = expected
        self.hint = hint
        shown = repr(value)
        if len(shown) > 200:
            shown = shown[:197] + "..."
        message = f"{field}: got {shown}; expected {expected}"
        if hint:
            message += f". {hint}"
        super().__init__(message)

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickled by its constructor's arguments (the message alone would not rebuild it):
        it crosses processes (a Dask worker's failure, a build's process pool)."""
        return (type(self), (self.field, self.value, self.expected, self.hint), self.__dict__)


class NoScenesError(TerrapipeError):
    """A search or a tile found no scenes: the task is skipped, not failed."""


class TransientIOError(TerrapipeError, OSError):
    """An I/O failure that may pass (timeout, connection reset, 5xx): retried with backoff."""


class RunCancelled(TerrapipeError):
    """A run stopped by a signal (SIGINT, SIGTERM): its cluster was stopped and the run recorded
    as failed. ``exit_code`` is the shell's convention, 128 + the signal (130, 143)."""

    def __init__(self, signum: int, run: str = "") -> None:
        import signal

        self.signum = signum
        self.signal_name = signal.Signals(signum).name
        self.exit_code = 128 + signum
        self.run = run
        where = f"{run} " if run else "the run "
        super().__init__(f"{where}was cancelled by {self.signal_name}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.signum, self.run), self.__dict__)


#: Optional extras of the package and the module each one installs.
EXTRAS: dict[str, str] = {"ml": "torch", "airflow": "airflow"}


class MissingExtraError(BadInputError):
    """An optional dependency is not installed: names the extra that installs it."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.extra,), self.__dict__)

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


# ---- the one retry policy ---------------------------------------------------------------------

#: Exception classes (``module.qualname`` anywhere in the MRO) of third-party libraries whose
#: failures may pass on retry: lost connections, timeouts, lost Dask workers. Named, not imported,
#: so that the core imports none of these libraries.
TRANSIENT_CLASSES = frozenset(
    {
        "botocore.exceptions.ConnectionError",  # EndpointConnectionError, ConnectTimeoutError, ...
        "botocore.exceptions.HTTPClientError",  # ReadTimeoutError, ConnectionClosedError
        "aiohttp.client_exceptions.ClientConnectionError",
        "aiohttp.client_exceptions.ClientPayloadError",
        "requests.exceptions.ConnectionError",
        "requests.exceptions.Timeout",
        "urllib3.exceptions.ProtocolError",
        "urllib3.exceptions.TimeoutError",
        "urllib3.exceptions.NewConnectionError",
        "http.client.RemoteDisconnected",
        "http.client.IncompleteRead",
        "distributed.scheduler.KilledWorker",
        "distributed.comm.core.CommClosedError",
    }
)

#: Classes inside :data:`TRANSIENT_CLASSES` that are not transient (a certificate that does not
#: verify stays so).
NOT_TRANSIENT_CLASSES = frozenset(
    {
        "botocore.exceptions.SSLError",
        "aiohttp.client_exceptions.ClientConnectorCertificateError",
        "aiohttp.client_exceptions.ClientSSLError",
        "requests.exceptions.SSLError",
    }
)

#: Why Dask's client cancels a future when the cluster went away, not the work
#: (``distributed.client.FutureCancelledError.reason``): the connection to the scheduler was
#: lost (a scheduler restarted or rescheduled, the network) or the cluster was restarted. A
#: future cancelled for another reason (by its owner) says nothing.
CLUSTER_CANCEL_REASONS = frozenset({"scheduler-connection-lost", "scheduler-restart"})

#: Error codes of S3 (and other AWS services) that say "slow down" or "try again".
THROTTLING_CODES = frozenset(
    {
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestLimitExceeded",
        "RequestThrottled",
        "RequestThrottledException",
        "TooManyRequestsException",
        "ProvisionedThroughputExceededException",
        "ServiceUnavailable",
        "InternalError",
        "RequestTimeout",
        "RequestTimeoutException",
        "503",
        "500",
        "502",
        "504",
    }
)

#: Messages of failures whose class says nothing (GDAL's errors, wrapped reads): HTTP 5xx and
#: throttling, timeouts, dropped connections.
TRANSIENT_MESSAGE = re.compile(
    r"HTTP response code: (5\d\d|429)"
    r"|\b(SlowDown|RequestLimitExceeded|Throttling|ThrottlingException|TooManyRequests)\b"
    r"|\b(timed out|Connection (reset|refused|aborted|timed out)|Temporary failure in name"
    r" resolution|Could not connect to the endpoint URL|Server disconnected)\b",
    re.IGNORECASE,
)

#: Built-in classes that never pass on retry, although they are OSErrors.
_NEVER = (
    FileNotFoundError,
    FileExistsError,
    PermissionError,
    IsADirectoryError,
    NotADirectoryError,
)

#: errnos of plain OSErrors that are network failures (most have their own class already).
_NETWORK_ERRNOS = frozenset(
    {errno.ENETUNREACH, errno.EHOSTUNREACH, errno.ENETDOWN, errno.ENETRESET, errno.ETIMEDOUT}
)


def failure_chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and the exceptions behind it (``__cause__``, else ``__context__``), outermost
    first, each once."""
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and all(current is not seen for seen in chain):
        chain.append(current)
        if current.__cause__ is not None:
            current = current.__cause__
        elif not current.__suppress_context__:
            current = current.__context__
        else:
            current = None
    return chain


def _class_names(exc: BaseException) -> set[str]:
    return {f"{cls.__module__}.{cls.__qualname__}" for cls in type(exc).__mro__}


def http_status(exc: BaseException) -> int | None:
    """The HTTP status an exception carries (aiohttp, requests, httpx, urllib, botocore)."""
    for value in (getattr(exc, "status", None), getattr(exc, "status_code", None)):
        if isinstance(value, int):
            return value
    response = getattr(exc, "response", None)
    if isinstance(response, dict):  # botocore's ClientError
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return status if isinstance(status, int) else None
    status = getattr(response, "status_code", None)
    if isinstance(status, int):
        return status
    code = getattr(exc, "code", None)  # urllib.error.HTTPError
    if isinstance(code, int) and "urllib.error.HTTPError" in _class_names(exc):
        return code
    return None


def _verdict(exc: BaseException) -> bool | None:
    """True (may pass), False (never passes) or None (this exception does not say)."""
    if isinstance(exc, TransientIOError):
        return True
    if isinstance(exc, (TerrapipeError, *_NEVER)):
        return False
    names = _class_names(exc)
    if names & NOT_TRANSIENT_CLASSES:
        return False
    if isinstance(exc, ConnectionError | TimeoutError) or names & TRANSIENT_CLASSES:
        return True
    if "distributed.client.FutureCancelledError" in names:
        return True if getattr(exc, "reason", None) in CLUSTER_CANCEL_REASONS else None
    response = getattr(exc, "response", None)
    if isinstance(response, dict) and "Error" in response:  # botocore's ClientError
        code = str(response["Error"].get("Code", ""))
        status = http_status(exc)
        return code in THROTTLING_CODES or (status is not None and (status >= 500 or status == 429))
    status = http_status(exc)
    if status is not None and status >= 400:
        return status >= 500 or status in (408, 429)
    if type(exc) is OSError and exc.errno in _NETWORK_ERRNOS:
        return True
    reason = getattr(exc, "reason", None)  # urllib's URLError, urllib3's MaxRetryError
    if isinstance(reason, BaseException) and reason is not exc:
        inner = _verdict(reason)
        if inner is not None:
            return inner
    if TRANSIENT_MESSAGE.search(str(exc)):
        return True
    return None


def is_transient(exc: BaseException) -> bool:
    """True when ``exc`` may pass on retry: the one retry policy of the CLI and the DAGs.

    By type and by cause (``__cause__`` / ``__context__``, outermost first; the first exception
    that says decides): network failures (``ConnectionError``, botocore's connection and read
    timeouts, aiohttp's connection errors, HTTP 5xx, throttling such as S3's ``SlowDown``),
    ``TimeoutError``, lost Dask workers (``KilledWorker``, ``CommClosedError``), futures Dask
    cancelled because the scheduler went away (:data:`CLUSTER_CANCEL_REASONS`) and
    :class:`TransientIOError` are transient. Bad input, a missing bucket or file (s3fs raises
    ``FileNotFoundError``), permissions, paths of the wrong kind, corrupt data and everything
    else are not.
    """
    for link in failure_chain(exc):
        verdict = _verdict(link)
        if verdict is not None:
            return verdict
    return False


#: Failure classes, as recorded in manifests: what the orchestrator does with each.
FailureClass = Literal["bad_input", "no_scenes", "transient", "error"]


def failure_class(exc: BaseException) -> FailureClass:
    """The failure class of ``exc``: bad input (fail, no retry), no scenes (skip), transient
    (retry with backoff) or an error (a bug or an unknown failure: fail, no retry)."""
    if isinstance(exc, BadInputError):
        return "bad_input"
    if isinstance(exc, NoScenesError):
        return "no_scenes"
    if is_transient(exc):
        return "transient"
    return "error"


class IncompleteRunError(TerrapipeError):
    """Some planned products of a run failed; those that could be done are written and listed in
    the catalog. Not retried: each failed batch was retried (or not) by its own class."""
