"""The one error tree of the pipeline: everything we raise derives from ``CampaignPipelineError``.

::

    CampaignPipelineError                  base of everything we raise
    ├── ConfigError                        bad configuration or date range; one line that says how to fix it
    ├── WarehouseError                     the warehouse is unreachable or its schema disagrees with the
    │   │                                  declared Arrow schemas
    │   ├── WarehouseLockedError           another process holds the warehouse (DuckDB's lock, or the
    │   │                                  pipeline's writer lock) past the wait allowed
    │   └── WarehouseUnusableError         the file is not a DuckDB database, or DuckDB cannot open it
    │                                      (corrupt, truncated); DuckDB's own words, on one line
    ├── StorageError                       a write failed for lack of room or permission: .reason is
    │                                      "full" (ENOSPC, EDQUOT, EFBIG) or "read-only" (EROFS, EACCES,
    │                                      EPERM); the published days are unchanged
    ├── LandingMissingError                a re-split was asked for a day that was never landed
    ├── LandingCorruptError                a landing file is empty, truncated or fails its checksum
    └── CinnoxError                        anything from the CINNOX API: .status, .code, .cinnox_message,
        │                                  .url, .kind (label for counters, e.g. http_503, timeout)
        ├── RetriableError                 429, 5xx, timeouts, resets, truncated / non-JSON bodies,
        │   │                              body code 6451010 / 6451001 (even under HTTP 200);
        │   │                              .retry_after (the server's Retry-After in seconds, or None)
        │   └── ThrottledError             429 or body code 6451010
        ├── FatalError                     never retried
        │   ├── BadRequestError            400 / body code 6451000, and any other 4xx
        │   └── AuthError                  401 / 403: check CINNOX_APP_TOKEN / CINNOX_APP_ID
        ├── PayloadError                   2xx with an unexpected shape (no result list, endless paging)
        └── RetriesExhaustedError          bounded retries used up; .attempts, .elapsed_s, .last_error

``str(error)`` is always one line and carries the HTTP status, the CINNOX body code and message and
the sanitized request (path and whitelisted query, never the token), e.g.::

    CINNOX 400 code=6451000 "endAt is prior to startAt" on GET /v1/api/apps/x/data/sent-campaigns-summary

Only :mod:`campaign_pipeline.cinnox.client` builds ``CinnoxError`` instances; it never hands them the token.

:func:`error_kind` names the class of any failure (``lock_held``, ``warehouse_unusable``,
``storage_full``, ``storage_read_only``, ``config``, ``failed``): the CLI maps it to an exit code,
the Dagster step records it in its failure's metadata.
"""

from __future__ import annotations

import errno

__all__ = [
    "AuthError",
    "BadRequestError",
    "CampaignPipelineError",
    "CinnoxError",
    "ConfigError",
    "FatalError",
    "LandingCorruptError",
    "LandingMissingError",
    "PayloadError",
    "RetriableError",
    "RetriesExhaustedError",
    "StorageError",
    "ThrottledError",
    "WarehouseError",
    "WarehouseLockedError",
    "WarehouseUnusableError",
    "error_kind",
    "one_line",
    "storage_error",
]


def one_line(text: object, limit: int | None = None) -> str:
    """``text`` with every whitespace run (newlines included) collapsed to one space, cut to
    ``limit`` characters with an ellipsis (``None``: never cut)."""
    flat = " ".join(str(text).split())
    return flat if limit is None or len(flat) <= limit else flat[: limit - 1] + "…"


class CampaignPipelineError(Exception):
    """Base class of every error the pipeline raises on purpose."""


class ConfigError(CampaignPipelineError):
    """Bad configuration or an invalid date range; the message is one line saying how to fix it."""

    def __init__(self, message: str) -> None:
        super().__init__(one_line(message))


class WarehouseError(CampaignPipelineError):
    """The warehouse is unreachable or its schema disagrees with the declared Arrow schemas."""


class WarehouseLockedError(WarehouseError):
    """Another process holds the warehouse longer than this one may wait."""


class WarehouseUnusableError(WarehouseError):
    """The warehouse file is not a DuckDB database, or DuckDB cannot open it (corrupt, truncated)."""


class StorageError(CampaignPipelineError):
    """A write failed because the disk is full (``reason="full"``) or the location is read-only
    (``reason="read-only"``). Raised before anything was published, so readers keep every day."""

    def __init__(self, message: str, reason: str) -> None:
        self.reason = reason
        super().__init__(one_line(message))

    def __reduce__(self):
        return (type(self), (str(self), self.reason))


class LandingMissingError(CampaignPipelineError):
    """A re-split was asked for a day that was never landed."""


class LandingCorruptError(CampaignPipelineError):
    """A landing file is empty, truncated, undecodable or fails its checksum: it cannot be re-split."""


class CinnoxError(CampaignPipelineError):
    """An error from (or while talking to) the CINNOX API.

    Attributes:
        status: HTTP status code, or ``None`` when no response arrived (timeout, reset).
        code: CINNOX body ``code``, or ``None`` when the body had none (or was not JSON).
        cinnox_message: CINNOX body ``message``, or a short description of the transport failure.
        url: sanitized request target: path plus whitelisted query parameters; never the token.
        method: HTTP method, ``GET`` for every CINNOX call we make.
        kind: short label of the failure for counters, e.g. ``http_503``, ``body_6451010``,
            ``timeout``, ``invalid_json``; ``None`` when the error was not built by the client.
    """

    #: Optional fix-it hint appended to ``str()`` by subclasses.
    hint: str | None = None

    def __init__(
        self,
        cinnox_message: str | None = None,
        *,
        status: int | None = None,
        code: int | None = None,
        url: str | None = None,
        method: str = "GET",
        kind: str | None = None,
    ) -> None:
        self.status = status
        self.code = code
        self.cinnox_message = one_line(cinnox_message) if cinnox_message is not None else None
        self.url = url
        self.method = method
        self.kind = kind
        super().__init__(self._render())

    def _render(self) -> str:
        parts = ["CINNOX", str(self.status) if self.status is not None else "(no response)"]
        if self.code is not None:
            parts.append(f"code={self.code}")
        if self.cinnox_message:
            parts.append(f'"{self.cinnox_message}"')
        if self.url:
            parts.append(f"on {self.method} {self.url}")
        text = " ".join(parts)
        if self.hint:
            text += f" ({self.hint})"
        return text

    def __str__(self) -> str:
        return self._render()

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(status={self.status!r}, code={self.code!r}, "
            f"cinnox_message={self.cinnox_message!r}, url={self.url!r})"
        )

    def _state(self) -> dict[str, object]:
        return {
            "status": self.status,
            "code": self.code,
            "url": self.url,
            "method": self.method,
            "kind": self.kind,
        }

    def __reduce__(self):  # keyword-only constructor: make pickling (multiprocess executors) work
        return (_rebuild, (type(self), self.cinnox_message, self._state()))


def _rebuild(cls: type[CinnoxError], cinnox_message: str | None, state: dict[str, object]) -> CinnoxError:
    """Unpickle helper for :class:`CinnoxError` and its subclasses."""
    return cls(cinnox_message, **state)


class RetriableError(CinnoxError):
    """A transient failure worth retrying: 429, 5xx, timeout, reset, truncated or non-JSON body,
    body code 6451010 / 6451001.

    Attributes:
        retry_after: seconds the server asked us to wait (``Retry-After``, honoured on any
            retriable answer, 503 included), or ``None``.
    """

    def __init__(
        self, cinnox_message: str | None = None, *, retry_after: float | None = None, **kwargs
    ) -> None:
        self.retry_after = retry_after
        super().__init__(cinnox_message, **kwargs)

    def _state(self) -> dict[str, object]:
        return {**super()._state(), "retry_after": self.retry_after}


class ThrottledError(RetriableError):
    """CINNOX asked us to slow down (HTTP 429 or body code 6451010); ``str()`` shows ``retry_after``."""

    def _render(self) -> str:
        text = super()._render()
        if self.retry_after is not None:
            text += f" retry_after={self.retry_after:g}s"
        return text


class FatalError(CinnoxError):
    """A failure that retrying cannot fix; raised at once."""


class BadRequestError(FatalError):
    """CINNOX rejected the parameters (HTTP 400 / body code 6451000, or another 4xx)."""


class AuthError(FatalError):
    """CINNOX refused the credentials (HTTP 401 / 403)."""

    hint = "check CINNOX_APP_TOKEN / CINNOX_APP_ID"


class PayloadError(CinnoxError):
    """A 2xx answer with a shape we cannot use (no ``result`` list, paging that never ends)."""


class RetriesExhaustedError(CinnoxError):
    """Every bounded attempt failed with a retriable error.

    Attributes:
        attempts: number of attempts made.
        elapsed_s: seconds from the first attempt to giving up.
        last_error: the :class:`RetriableError` of the last attempt.
    """

    def __init__(
        self,
        *,
        attempts: int,
        elapsed_s: float,
        last_error: RetriableError,
    ) -> None:
        self.attempts = attempts
        self.elapsed_s = elapsed_s
        self.last_error = last_error
        super().__init__(
            last_error.cinnox_message,
            status=last_error.status,
            code=last_error.code,
            url=last_error.url,
            method=last_error.method,
            kind=last_error.kind,
        )

    def _render(self) -> str:
        return (
            f"CINNOX gave up after {self.attempts} attempts in {self.elapsed_s:.1f}s "
            f"on {self.method} {self.url}; last error: {self.last_error}"
        )

    def __repr__(self) -> str:
        return (
            f"RetriesExhaustedError(attempts={self.attempts!r}, elapsed_s={self.elapsed_s:.3f}, "
            f"last_error={self.last_error!r})"
        )

    def __reduce__(self):
        return (
            _rebuild_exhausted,
            (self.attempts, self.elapsed_s, self.last_error),
        )


def _rebuild_exhausted(attempts: int, elapsed_s: float, last_error: RetriableError) -> RetriesExhaustedError:
    """Unpickle helper for :class:`RetriesExhaustedError`."""
    return RetriesExhaustedError(attempts=attempts, elapsed_s=elapsed_s, last_error=last_error)


# errno values and the texts libraries put in their messages when they drop the errno (DuckDB, Arrow).
_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
_READ_ONLY_ERRNOS = {errno.EROFS, errno.EACCES, errno.EPERM}
_FULL_TEXTS = ("no space left on device", "disk quota exceeded", "file too large")
_READ_ONLY_TEXTS = ("read-only file system", "permission denied", "operation not permitted")


def _storage_reason(error: BaseException) -> str | None:
    """"full", "read-only" or None for one exception (not its chain)."""
    number = getattr(error, "errno", None) if isinstance(error, OSError) else None
    if number in _FULL_ERRNOS:
        return "full"
    if number in _READ_ONLY_ERRNOS:
        return "read-only"
    if isinstance(error, CampaignPipelineError) and not isinstance(error, StorageError):
        return None  # our own messages quote paths and hints, not OS errors
    text = str(error).lower()
    if any(marker in text for marker in _FULL_TEXTS):
        return "full"
    if (isinstance(error, OSError) or type(error).__module__.startswith(("duckdb", "_duckdb", "pyarrow"))) and any(
            marker in text for marker in _READ_ONLY_TEXTS):
        return "read-only"
    return None


def _chain(error: BaseException):
    """``error`` and its causes and contexts, innermost last, each once."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__ or error.__context__


def storage_error(error: BaseException, where: object) -> StorageError | None:
    """A :class:`StorageError` naming ``where`` (the disk's directory) if ``error``, or anything
    in its cause/context chain, is a full disk or a read-only location; else ``None``."""
    if isinstance(error, StorageError):
        return error
    for link in _chain(error):
        reason = _storage_reason(link)
        if reason is not None:
            detail = one_line(link if not isinstance(link, OSError) or not link.strerror
                               else f"{link.strerror}: {link.filename}" if link.filename else link.strerror)
            if reason == "full":
                message = (f"the disk holding {where} is full ({detail}); free space and rerun: "
                           "the published days are unchanged")
            else:
                message = (f"{where} is read-only ({detail}); make it writable or point CAMPAIGN_DATA_DIR elsewhere: "
                           "the published days are unchanged")
            return StorageError(message, reason)
    return None


def error_kind(error: BaseException) -> str:
    """The class of a failure, for exit codes and metadata: ``lock_held``, ``warehouse_unusable``,
    ``storage_full``, ``storage_read_only``, ``config`` or ``failed``."""
    if isinstance(error, WarehouseLockedError):
        return "lock_held"
    if isinstance(error, WarehouseUnusableError):
        return "warehouse_unusable"
    storage = storage_error(error, "")
    if storage is not None:
        return "storage_full" if storage.reason == "full" else "storage_read_only"
    if isinstance(error, ConfigError):
        return "config"
    return "failed"
