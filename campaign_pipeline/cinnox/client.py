"""HTTP client for the CINNOX sent-campaigns Open API: pacing, bounded retries, paging, stats.

The HTTP layer only (``requests``, ``urllib3``, ``orjson``, stdlib). The single retry loop lives in
:meth:`CinnoxClient._get`; every attempt has a total deadline (connect, headers and the whole body:
a timer shuts the connection down when it passes, so a server trickling bytes cannot stretch an
attempt) and a body size cap (the body is read in chunks and refused at ``max_response_mb`` + 1
byte, or at once from its ``Content-Length``); the single paging loop in :meth:`CinnoxClient._paginate`, whose stop
rule makes a listing complete: a summary listing ends only at an empty page, a detail listing
at an empty page or at a short page once it holds the campaign's ``totalRecipients`` rows. A
page carries its ``records`` (the parsed ``result`` rows) and its ``body`` exactly as received.
Bodies decode as what they are (:func:`decode_json_body`): a leading UTF-8 BOM is stripped and a
body orjson refuses (a lone surrogate escape such as ``"\\ud83d"``) is decoded by the stdlib
``json`` module; only a body that is really not JSON is "not valid JSON (truncated?)".
Errors come from :mod:`campaign_pipeline.errors`. The token never reaches a log line, an
exception text or a ``repr``: it is checked for shape when the client is built
(:func:`validate_token`) and every text that could carry it is redacted before it reaches a
message.
"""

from __future__ import annotations

import email.utils
import heapq
import http.client
import itertools
import json
import logging
import math
import os
import random
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Self
from urllib.parse import quote, urlencode, urlsplit

import orjson
import requests
import urllib3.connection
import urllib3.connectionpool
import urllib3.exceptions
import urllib3.poolmanager
from requests.adapters import HTTPAdapter

from campaign_pipeline import settings
from campaign_pipeline.errors import (
    AuthError,
    BadRequestError,
    CinnoxError,
    ConfigError,
    FatalError,
    PayloadError,
    RetriableError,
    RetriesExhaustedError,
    ThrottledError,
    one_line,
)

__all__ = [
    "UTF8_BOM",
    "CinnoxClient",
    "Page",
    "RateLimiter",
    "RequestStats",
    "decode_json_body",
    "format_rfc3339",
    "validate_base_url",
    "validate_token",
]

_LOG = logging.getLogger(__name__)

#: Query parameters that may appear in logs and error texts (no PII, no secrets).
_LOGGABLE_PARAMS = (
    settings.PARAM_START_AT,
    settings.PARAM_END_AT,
    settings.PARAM_HISTORY_ID,
    settings.PARAM_OFFSET,
    settings.PARAM_LIMIT,
)

#: Transport failures worth another attempt. ConnectTimeout is both a Timeout and a ConnectionError.
_RETRIABLE_TRANSPORT_ERRORS = (
    requests.exceptions.ConnectionError,
    requests.exceptions.Timeout,
    requests.exceptions.ChunkedEncodingError,
    requests.exceptions.ContentDecodingError,
    urllib3.exceptions.ProtocolError,
    urllib3.exceptions.IncompleteRead,
    urllib3.exceptions.DecodeError,
    http.client.IncompleteRead,
)

#: Bytes asked of the body per read: one read for a typical page (~150 KB), and the size cap and the
#: deadline are checked between reads.
_READ_CHUNK = 1 << 20
_MB = 1 << 20


# --------------------------------------------------------------------------------------------
# Pacing
# --------------------------------------------------------------------------------------------


class RateLimiter:
    """Thread-safe request pacer: starts are spaced at least ``60 / requests_per_minute`` seconds apart.

    Fixed-interval spacing (no burst), so any half-open window of 60 s sees at most
    ``requests_per_minute`` starts, however many threads share the limiter. Each caller reserves
    the next free slot under a lock and sleeps outside it. ``None`` or ``0`` disables pacing.
    """

    def __init__(
        self,
        requests_per_minute: float | None,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Any] = time.sleep,
    ) -> None:
        if requests_per_minute is not None and requests_per_minute < 0:
            raise ConfigError(f"rate limit must be >= 0 requests per minute, got {requests_per_minute!r}")
        self.requests_per_minute = requests_per_minute or None
        self.interval_s = 60.0 / requests_per_minute if requests_per_minute else 0.0
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._next_slot: float | None = None

    @property
    def enabled(self) -> bool:
        """True when pacing is active."""
        return self.interval_s > 0

    def acquire(self) -> float:
        """Block until this caller may start a request; return the seconds waited."""
        if not self.enabled:
            return 0.0
        with self._lock:
            now = self._clock()
            slot = now if self._next_slot is None else max(now, self._next_slot)
            self._next_slot = slot + self.interval_s
        wait = slot - now
        if wait > 0:
            self._sleep(wait)
            return wait
        return 0.0

    def __repr__(self) -> str:
        return f"RateLimiter(requests_per_minute={self.requests_per_minute!r})"


# --------------------------------------------------------------------------------------------
# Stats
# --------------------------------------------------------------------------------------------


class RequestStats:
    """Thread-safe counters of one client's HTTP activity.

    Attributes (read them via :meth:`as_dict` or :meth:`snapshot` for a consistent view):
        requests: attempts started (every retry counts).
        retries: attempts that were followed by another attempt.
        throttles: HTTP 429 or body code 6451010 answers.
        bytes: response body bytes received.
        errors: failed attempts by kind, e.g. ``{"http_503": 2, "timeout": 1}``.
        wait_s: seconds spent waiting on the rate limiter.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests = 0
        self.retries = 0
        self.throttles = 0
        self.bytes = 0
        self.errors: dict[str, int] = {}
        self.wait_s = 0.0

    def add(
        self,
        *,
        requests: int = 0,
        retries: int = 0,
        throttles: int = 0,
        nbytes: int = 0,
        wait_s: float = 0.0,
        error: str | None = None,
    ) -> None:
        """Add to the counters atomically."""
        with self._lock:
            self.requests += requests
            self.retries += retries
            self.throttles += throttles
            self.bytes += nbytes
            self.wait_s += wait_s
            if error is not None:
                self.errors[error] = self.errors.get(error, 0) + 1

    def merge(self, other: RequestStats) -> RequestStats:
        """Add another stats object's counters into this one; return ``self``."""
        theirs = other.snapshot()
        with self._lock:
            self.requests += theirs.requests
            self.retries += theirs.retries
            self.throttles += theirs.throttles
            self.bytes += theirs.bytes
            self.wait_s += theirs.wait_s
            for kind, count in theirs.errors.items():
                self.errors[kind] = self.errors.get(kind, 0) + count
        return self

    def snapshot(self) -> RequestStats:
        """Return an independent copy of the counters as they are now."""
        copy = RequestStats()
        with self._lock:
            copy.requests = self.requests
            copy.retries = self.retries
            copy.throttles = self.throttles
            copy.bytes = self.bytes
            copy.wait_s = self.wait_s
            copy.errors = dict(self.errors)
        return copy

    def as_dict(self) -> dict[str, int | float]:
        """Flat dict of ints/floats (Dagster metadata friendly); errors as ``errors_<kind>`` keys."""
        snap = self.snapshot()
        out: dict[str, int | float] = {
            "requests": snap.requests,
            "retries": snap.retries,
            "throttles": snap.throttles,
            "bytes": snap.bytes,
            "errors": sum(snap.errors.values()),
            "wait_s": round(snap.wait_s, 3),
        }
        for kind in sorted(snap.errors):
            out[f"errors_{kind}"] = snap.errors[kind]
        return out

    def __repr__(self) -> str:
        return f"RequestStats({self.as_dict()!r})"


# --------------------------------------------------------------------------------------------
# Bodies and pages
# --------------------------------------------------------------------------------------------

UTF8_BOM = b"\xef\xbb\xbf"
"""The UTF-8 byte order mark some servers put in front of a JSON body."""


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def decode_json_body(content: bytes) -> Any:
    """Decode a response body as the JSON it is; raise ``ValueError`` when it is not JSON.

    * A leading UTF-8 BOM is skipped (RFC 8259 lets a parser ignore it; orjson refuses it).
    * orjson decodes everything else it accepts (the fast path).
    * A body orjson refuses but that is valid UTF-8 JSON is decoded with the stdlib ``json``
      module: a lone surrogate escape such as ``"\\ud83d"`` then becomes a ``str`` holding that
      surrogate (not valid Unicode: typing the record is where it is rejected, not here).
      ``NaN``/``Infinity`` stay refused (not JSON).

    A JSON integer beyond 64 bits arrives as a float from orjson (``1e20`` for ``10**20``), which
    compares equal to the integer it stands for when it is exactly representable.
    """
    data = content.removeprefix(UTF8_BOM)
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        pass
    try:
        return json.loads(data.decode("utf-8"), parse_constant=_refuse_constant)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise ValueError("not valid JSON") from None


@dataclass(frozen=True, eq=False)
class Page:
    """One page of a CINNOX listing.

    Attributes:
        endpoint: ``"summary"`` or ``"detail"``.
        offset: the ``offset`` this page was requested with.
        nbytes: response body size in bytes.
        history_id: the campaign id for detail pages, ``None`` for summary pages.
        body: the response body exactly as received (a leading UTF-8 BOM included).
        records: the raw ``result`` rows of the page (JSON objects, unmodified), as decoded by
            :func:`decode_json_body`.
    """

    endpoint: str
    offset: int
    nbytes: int
    history_id: str | None = None
    # recipients' numbers and messages: never in a repr
    body: bytes = field(default=b"", repr=False)
    records: list[dict] = field(default_factory=list, repr=False)

    @property
    def row_count(self) -> int:
        """How many rows the page holds."""
        return len(self.records)

    @property
    def normalized_body(self) -> bytes:
        """``body`` without a leading UTF-8 BOM (the JSON text itself); ``body`` when it has none.

        Decode it with :func:`decode_json_body`: it may still hold a lone surrogate escape that
        orjson refuses."""
        return self.body.removeprefix(UTF8_BOM)


def format_rfc3339(value: datetime) -> str:
    """Format an aware datetime as RFC3339 UTC with milliseconds and ``Z``: ``2022-11-07T00:00:00.000Z``.

    Raises:
        ValueError: for a naive datetime (its time zone would be a guess).
    """
    if not isinstance(value, datetime):
        raise TypeError(f"expected a datetime, got {type(value).__name__}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(
            f"naive datetime {value.isoformat()} given; pass an aware datetime (e.g. tzinfo=UTC)"
        )
    utc = value.astimezone(UTC)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"


# --------------------------------------------------------------------------------------------
# Per-attempt deadline and body cap
# --------------------------------------------------------------------------------------------

_ACTIVE = threading.local()  # .deadline: the _Deadline of the attempt running on this thread


class _Watchdog:
    """One daemon thread that expires every attempt's :class:`_Deadline` in the process, earliest first.

    Cheaper than a timer thread per attempt: adding a deadline is a heap push, and the thread is
    woken only when the new deadline is the earliest. Finished deadlines are dropped when due.
    """

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self._wakeup = threading.Condition(threading.Lock())
        self._due: list[tuple[float, int, _Deadline]] = []
        self._order = itertools.count()
        self._thread: threading.Thread | None = None

    def add(self, deadline: _Deadline) -> None:
        """Expire ``deadline`` at its ``ends_at`` unless it is finished by then."""
        with self._wakeup:
            heapq.heappush(self._due, (deadline.ends_at, next(self._order), deadline))
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="cinnox-deadlines", daemon=True)
                self._thread.start()
            elif self._due[0][2] is deadline:
                self._wakeup.notify()

    def _run(self) -> None:
        while True:
            with self._wakeup:
                while not self._due or self._due[0][2].done:
                    if self._due:
                        heapq.heappop(self._due)
                    else:
                        self._wakeup.wait()
                wait = self._due[0][0] - time.monotonic()
                if wait > 0:
                    self._wakeup.wait(wait)
                    continue
                due = heapq.heappop(self._due)[2]
            due.expire()


_WATCHDOG = _Watchdog()
if hasattr(os, "register_at_fork"):  # a forked child has no watchdog thread, and maybe a held lock
    os.register_at_fork(after_in_child=_WATCHDOG._reset)


class _Deadline:
    """The total deadline of one attempt: connect, request, headers and the whole body.

    requests' read timeout applies to each socket read, so a server that sends a byte now and then
    never trips it. At the deadline the :class:`_Watchdog` shuts down the socket the attempt is
    using (registered by :class:`_WatchedConnection` as soon as it exists, and again from the
    response), so a read blocked anywhere, headers included, returns at once and the attempt fails
    as ``deadline``. Use it as a context manager around the attempt.
    """

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.ends_at = time.monotonic() + seconds
        self.expired = False
        self.done = False
        self._lock = threading.Lock()
        self._socket: socket.socket | None = None

    def __enter__(self) -> Self:
        _ACTIVE.deadline = self
        _WATCHDOG.add(self)
        return self

    def __exit__(self, *exc_info: object) -> None:
        _ACTIVE.deadline = None
        with self._lock:  # after this, expiry can no longer touch a socket back in the pool
            self.done = True
            self._socket = None

    def passed(self) -> bool:
        """True once the deadline has passed (whether or not the timer has fired yet)."""
        return self.expired or time.monotonic() >= self.ends_at

    def watch(self, sock: object) -> None:
        """Register the socket the attempt uses now; shut it down at once if the deadline has passed."""
        if not isinstance(sock, socket.socket):
            return
        with self._lock:
            if self.done:
                return
            self._socket = sock
            if self.expired:
                _shut_down(sock)

    def expire(self) -> None:
        """Mark the deadline passed and shut down the watched socket (the watchdog calls this)."""
        with self._lock:
            if self.done:
                return
            self.expired = True
            if self._socket is not None:
                _shut_down(self._socket)


def _shut_down(sock: socket.socket) -> None:
    """Shut a socket down both ways (a blocked ``recv`` returns at once); ignore one already closed."""
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


def _watch_socket(sock: object) -> None:
    """Hand ``sock`` to the deadline of the attempt running on this thread, if any."""
    deadline = getattr(_ACTIVE, "deadline", None)
    if deadline is not None:
        deadline.watch(sock)


class _WatchedConnection:
    """Mixin for urllib3 connections: registers the socket with the running attempt's deadline when it
    is created (TCP), once connected (TLS) and when a kept-alive connection is reused."""

    def _new_conn(self) -> socket.socket:
        sock = super()._new_conn()  # type: ignore[misc]
        _watch_socket(sock)
        return sock

    def connect(self) -> None:
        super().connect()  # type: ignore[misc]
        _watch_socket(getattr(self, "sock", None))

    def request(self, *args: Any, **kwargs: Any) -> None:
        _watch_socket(getattr(self, "sock", None))
        super().request(*args, **kwargs)  # type: ignore[misc]


class _WatchedHTTPConnection(_WatchedConnection, urllib3.connection.HTTPConnection):
    pass


class _WatchedHTTPSConnection(_WatchedConnection, urllib3.connection.HTTPSConnection):
    pass


class _WatchedHTTPConnectionPool(urllib3.connectionpool.HTTPConnectionPool):
    ConnectionCls = _WatchedHTTPConnection


class _WatchedHTTPSConnectionPool(urllib3.connectionpool.HTTPSConnectionPool):
    ConnectionCls = _WatchedHTTPSConnection


_WATCHED_POOLS = {"http": _WatchedHTTPConnectionPool, "https": _WatchedHTTPSConnectionPool}


class _DeadlineAdapter(HTTPAdapter):
    """An ``HTTPAdapter`` whose connections (direct or through an HTTP proxy) report their sockets to
    the attempt's :class:`_Deadline`."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = _WATCHED_POOLS

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> urllib3.poolmanager.PoolManager:
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        if manager.pool_classes_by_scheme is urllib3.poolmanager.pool_classes_by_scheme:  # not SOCKS
            manager.pool_classes_by_scheme = _WATCHED_POOLS
        return manager


class _BodyTooLarge(Exception):
    """The body is larger than the cap (raised while reading; never leaves the client)."""


class _DeadlinePassed(Exception):
    """The attempt's deadline passed between two body reads (never leaves the client)."""


# --------------------------------------------------------------------------------------------
# Client
# --------------------------------------------------------------------------------------------


class _BearerAuth(requests.auth.AuthBase):
    """Sets ``Authorization: Bearer <token>``; passing it as ``auth`` also stops ``.netrc`` overriding it."""

    def __init__(self, token: str) -> None:
        self._token = token

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.headers["Authorization"] = f"Bearer {self._token}"
        return request

    def __repr__(self) -> str:
        return "_BearerAuth(<redacted>)"


def validate_base_url(text: str, variable: str = "CINNOX_BASE_URL") -> str:
    """Return the base URL ``text`` (stripped, without a trailing slash), or raise a one-line
    :class:`ConfigError` naming ``variable``.

    Accepted: ``http(s)://host[:port][/path-prefix]`` where host is a name, an IPv4 address or a
    bracketed IPv6 literal (``http://[::1]:8765``) and port is 1-65535. Refused: any other scheme,
    ``user:password@``, ``?query``, ``#fragment``, whitespace or control characters. The message
    never repeats the URL (a ``user:password@`` part would be a secret).
    """
    shape = f"{variable} must look like https://host[:port][/path-prefix]"
    if not isinstance(text, str) or not text.strip():
        raise ConfigError(f"{shape}; it is empty")
    text = text.strip()
    if any(char.isspace() or not char.isprintable() for char in text):
        raise ConfigError(f"{shape}; it contains whitespace or control characters")
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
        raise ConfigError(f"{shape}; it does not parse as a URL (bad port or IPv6 address?)") from None
    if parts.scheme not in ("http", "https"):
        raise ConfigError(f"{shape}; the scheme must be http or https")
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise ConfigError(f"{shape}; remove the user:password@ part (the token goes in CINNOX_APP_TOKEN)")
    host = parts.hostname
    if not host:
        raise ConfigError(f"{shape}; the host is missing")
    bracketed = parts.netloc.startswith("[")
    if not bracketed and not all(char.isalnum() or char in ".-_" for char in host):
        raise ConfigError(f"{shape}; the host name holds characters a host name cannot have")
    if parts.netloc.endswith(":") or port == 0:
        raise ConfigError(f"{shape}; the port must be between 1 and 65535")
    if parts.query or parts.fragment or "?" in text or "#" in text:
        raise ConfigError(f"{shape}; remove the ?query / #fragment")
    return text.rstrip("/")


def validate_token(token: str, variable: str = "CINNOX_APP_TOKEN") -> str:
    """Return the App Token ``token`` (stripped), or raise a one-line :class:`ConfigError` naming
    ``variable`` that never repeats the token.

    A token must be printable ASCII without whitespace (what an ``Authorization: Bearer`` header
    can carry verbatim) and at least ``settings.MIN_TOKEN_LENGTH`` characters long, so that
    redacting it can never hit ordinary words.
    """
    if not isinstance(token, str) or not token.strip():
        raise ConfigError(f"{variable} is empty; set it to the App Token from the CINNOX dashboard")
    token = token.strip()
    if not all("!" <= char <= "~" for char in token):
        raise ConfigError(
            f"{variable} contains whitespace, control or non-ASCII characters; "
            "paste the App Token exactly as the CINNOX dashboard shows it"
        )
    if len(token) < settings.MIN_TOKEN_LENGTH:
        raise ConfigError(
            f"{variable} is shorter than {settings.MIN_TOKEN_LENGTH} characters, too short to be an "
            "App Token; paste the whole App Token from the CINNOX dashboard"
        )
    return token


_URL_IN_TEXT = re.compile(r"url: \S+")


def _root_cause(exc: BaseException) -> BaseException:
    """The innermost exception wrapped by requests / urllib3 (they nest via ``args[0]`` and ``.reason``)."""
    seen = {id(exc)}
    current = exc
    while True:
        inner = (
            getattr(current, "reason", None)
            if isinstance(current, urllib3.exceptions.MaxRetryError)
            else None
        )
        if inner is None and current.args and isinstance(current.args[0], BaseException):
            inner = current.args[0]
        if not isinstance(inner, BaseException) or id(inner) in seen:
            return current
        seen.add(id(inner))
        current = inner


def _reason(error: CinnoxError) -> str:
    """Short one-line cause for a retry log line (the URL is logged separately)."""
    head = f"HTTP {error.status}" if error.status is not None else "no response"
    if error.code is not None:
        head += f" code={error.code}"
    return f"{head}: {error.cinnox_message}" if error.cinnox_message else head


class CinnoxClient:
    """Client for the CINNOX sent-campaigns endpoints.

    One ``requests.Session`` (connection pool of ``pool_size``, urllib3 retries off: retries happen
    only in :meth:`_get`), TLS verification always on, one :class:`RateLimiter` shared by every
    thread using this client, and :class:`RequestStats` in :attr:`stats`. Safe to share between
    threads; use as a context manager or call :meth:`close`.

    Args:
        base_url: ``CINNOX_BASE_URL``, ``http(s)://host[:port][/prefix]``.
        app_id: ``CINNOX_APP_ID``.
        token: ``CINNOX_APP_TOKEN`` (static bearer token).
        page_size: ``limit`` per page (the documented maximum is 500).
        connect_timeout / read_timeout: seconds, per attempt (``read_timeout`` is between bytes).
        request_deadline: seconds one attempt may take in all (connect, headers, whole body);
            ``None``: ``connect_timeout + read_timeout``. A deadline hit is retriable (``deadline``).
        max_response_mb: largest body accepted, in MB of 2**20 bytes; a larger one is refused while
            it is read (never buffered beyond the cap + 1 byte) as a retriable ``too_large``.
        max_attempts: attempts per call, first one included.
        backoff_base_s / backoff_max_s: full-jitter exponential backoff; also caps ``Retry-After``.
        rate_limit_per_min: request starts per minute; ``None``/0 disables pacing.
        ca_bundle: path of a CA bundle for private CAs; verification is never turned off.
        pool_size: connection pool size (match the number of fetch threads).
        session: a pre-built session (its adapters are left alone: the deadline then cuts the body
            off, but a server trickling its headers is bounded only by its own adapters).
        sleep: called with the backoff delay; inject a recorder in tests.
        logger: where retry warnings go.
        rate_limiter: share one limiter between several clients (overrides ``rate_limit_per_min``).
    """

    def __init__(
        self,
        base_url: str,
        app_id: str,
        token: str,
        *,
        page_size: int = settings.PAGE_SIZE,
        connect_timeout: float = settings.DEFAULT_CONNECT_TIMEOUT_S,
        read_timeout: float = settings.DEFAULT_READ_TIMEOUT_S,
        request_deadline: float | None = None,
        max_response_mb: float = settings.DEFAULT_MAX_RESPONSE_MB,
        max_attempts: int = settings.DEFAULT_MAX_ATTEMPTS,
        backoff_base_s: float = settings.DEFAULT_BACKOFF_BASE_S,
        backoff_max_s: float = settings.DEFAULT_BACKOFF_MAX_S,
        rate_limit_per_min: float | None = settings.DEFAULT_RATE_LIMIT_PER_MIN,
        ca_bundle: str | None = None,
        pool_size: int = 16,
        session: requests.Session | None = None,
        sleep: Callable[[float], Any] = time.sleep,
        logger: logging.Logger | None = None,
        rate_limiter: RateLimiter | None = None,
    ) -> None:
        self.base_url = validate_base_url(base_url)
        if not isinstance(app_id, str) or not app_id.strip():
            raise ConfigError("CINNOX_APP_ID is empty; set it to the App ID from the CINNOX dashboard")
        token = validate_token(token)
        if not 1 <= page_size <= settings.PAGE_SIZE:
            raise ConfigError(f"page_size must be between 1 and {settings.PAGE_SIZE}, got {page_size}")
        if max_attempts < 1:
            raise ConfigError(f"max_attempts must be >= 1, got {max_attempts}")
        if connect_timeout <= 0 or read_timeout <= 0:
            raise ConfigError("connect_timeout and read_timeout must be > 0 seconds")
        if request_deadline is not None and not request_deadline > 0:
            raise ConfigError(f"request_deadline must be > 0 seconds, got {request_deadline!r}")
        if not max_response_mb > 0:
            raise ConfigError(f"max_response_mb must be > 0, got {max_response_mb!r}")
        if backoff_base_s < 0 or backoff_max_s < 0:
            raise ConfigError("backoff_base_s and backoff_max_s must be >= 0 seconds")

        self.app_id = app_id.strip()
        self._token = token
        # the forms the token can take in a text: as sent, and percent-encoded inside a URL
        self._token_forms = tuple(dict.fromkeys((token, quote(token, safe=""))))
        self._auth = _BearerAuth(self._token)
        self.page_size = page_size
        self.connect_timeout = float(connect_timeout)
        self.read_timeout = float(read_timeout)
        self.request_deadline = float(
            request_deadline if request_deadline is not None else connect_timeout + read_timeout
        )
        self.max_response_mb = float(max_response_mb)
        self.max_response_bytes = int(self.max_response_mb * _MB)
        self.max_attempts = int(max_attempts)
        self.backoff_base_s = float(backoff_base_s)
        self.backoff_max_s = float(backoff_max_s)
        self.verify: str | bool = ca_bundle or True
        self.rate_limiter = rate_limiter if rate_limiter is not None else RateLimiter(rate_limit_per_min)
        self.stats = RequestStats()
        self._sleep = sleep
        self._log = logger or _LOG
        self._random = random.Random()
        self._headers = {"Content-Type": "application/json", "accept": "application/json"}

        self._owns_session = session is None
        if session is None:
            session = requests.Session()
            adapter = _DeadlineAdapter(pool_connections=pool_size, pool_maxsize=pool_size, max_retries=0)
            session.mount("https://", adapter)
            session.mount("http://", adapter)
            # Resolve proxy variables (HTTPS_PROXY, NO_PROXY...) once for our one host instead of
            # re-reading the whole environment on every request; .netrc is never consulted.
            session.proxies = dict(requests.utils.get_environ_proxies(self.base_url))
            session.trust_env = False
        self.session = session

        app = quote(self.app_id, safe="")
        self.summary_path = settings.SUMMARY_PATH.format(app_id=app)
        self.detail_path = settings.DETAIL_PATH.format(app_id=app)

    # -- lifecycle ------------------------------------------------------------------------------

    def close(self) -> None:
        """Close the session if this client created it."""
        if self._owns_session:
            self.session.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"CinnoxClient(base_url={self.base_url!r}, app_id={self.app_id!r}, token=<redacted>, "
            f"page_size={self.page_size}, rate_limit_per_min={self.rate_limiter.requests_per_minute!r})"
        )

    # -- bounds ---------------------------------------------------------------------------------

    def worst_case_retry_seconds(self) -> float:
        """Upper bound, in seconds, on the time one :meth:`get_json` call can take before it returns or raises.

        ``max_attempts * request_deadline`` for the attempts, plus ``(max_attempts - 1) *
        backoff_max_s`` for the sleeps between them (jitter and ``Retry-After`` are both capped at
        ``backoff_max_s``), plus one rate-limiter interval per attempt. The deadline is total:
        connect, headers and the whole body, however slowly the server sends them (at the deadline
        the connection is shut down). Outside it: name resolution, a host whose several addresses
        are each tried for up to ``connect_timeout``, milliseconds of scheduling per attempt, and
        other threads waiting on the same limiter. With the defaults (deadline = 5 s connect + 30 s
        read): 6 * 35 + 5 * 30 + 6 * 60/480 = 360.75 s.
        """
        attempts = self.max_attempts
        return (
            attempts * self.request_deadline
            + (attempts - 1) * self.backoff_max_s
            + attempts * self.rate_limiter.interval_s
        )

    # -- one request, bounded retries -----------------------------------------------------------

    def _redact(self, text: object, limit: int | None = 300) -> str:
        """``text`` on one line with every occurrence of the token replaced, then cut to ``limit``.

        Every occurrence is replaced, inside longer words too, and before the text is cut, so
        neither the whole token nor a prefix of it survives. The token has no whitespace and at
        least ``settings.MIN_TOKEN_LENGTH`` characters (:func:`validate_token`), so ordinary text
        is never hit.
        """
        flat = str(text)
        for form in self._token_forms:
            flat = flat.replace(form, "<redacted>")
        return one_line(flat, limit)

    def _safe_url(self, path: str, params: Mapping[str, Any]) -> str:
        """Path (with the base URL's prefix) and whitelisted query; what logs and errors show."""
        prefix = urlsplit(self.base_url).path.rstrip("/")
        shown = [(k, params[k]) for k in _LOGGABLE_PARAMS if k in params]
        query = urlencode(shown, safe=":")
        return self._redact(f"{prefix}{path}" + (f"?{query}" if query else ""), limit=None)

    def _retry_after_seconds(self, response: requests.Response) -> float | None:
        raw = response.headers.get("Retry-After")
        if raw is None:
            return None
        raw = raw.strip()
        try:
            seconds = float(raw)
        except ValueError:
            try:
                when = email.utils.parsedate_to_datetime(raw)
            except (TypeError, ValueError, IndexError):
                return None
            if when.tzinfo is None:
                when = when.replace(tzinfo=UTC)
            seconds = (when - datetime.now(UTC)).total_seconds()
        if math.isnan(seconds):
            return None
        return max(0.0, seconds)

    def _classify(self, response: requests.Response, content: bytes, url: str) -> dict:
        """Return the JSON object of a usable answer; raise the :class:`CinnoxError` it amounts to.

        The error's ``kind`` labels the failure for :attr:`stats` (``http_<status>``,
        ``body_<code>``, ``invalid_json``, ``payload``); retriable errors carry the answer's
        ``Retry-After`` (honoured on 503s too).
        """
        status = response.status_code
        body: Any = None
        decoded = False
        try:
            body = decode_json_body(content)
            decoded = True
        except ValueError:
            pass
        code: int | None = None
        message: str | None = None
        if isinstance(body, dict):
            raw_code = body.get(settings.ENVELOPE_CODE)
            if isinstance(raw_code, int) and not isinstance(raw_code, bool):
                code = raw_code
            elif isinstance(raw_code, str) and raw_code.strip().lstrip("-").isdigit():
                code = int(raw_code)
            raw_message = body.get(settings.ENVELOPE_MESSAGE)
            if raw_message is not None:
                message = self._redact(raw_message)
        reason = self._redact(response.reason) if response.reason else None
        common = {"status": status, "code": code, "url": url}
        retry_after = self._retry_after_seconds(response)

        if status == 429 or code == settings.CODE_TOO_MANY_REQUESTS:
            raise ThrottledError(message or "too many requests", retry_after=retry_after,
                                 kind="http_429" if status == 429 else f"body_{code}", **common)
        if code == settings.CODE_BAD_RESPONSE:
            raise RetriableError(message or "bad response from the service", retry_after=retry_after,
                                 kind=f"body_{code}", **common)
        if status >= 500:
            raise RetriableError(message or reason or "server error", retry_after=retry_after,
                                 kind=f"http_{status}", **common)
        if status in (401, 403):
            raise AuthError(message or reason or "unauthorized", kind=f"http_{status}", **common)
        if 400 <= status < 500:
            raise BadRequestError(message or reason or "bad request", kind=f"http_{status}", **common)
        if not 200 <= status < 300:
            raise FatalError(message or f"unexpected HTTP status {status}", kind=f"http_{status}", **common)
        if not decoded:
            raise RetriableError(f"body is not valid JSON (truncated?), {len(content)} bytes",
                                 retry_after=retry_after, kind="invalid_json", **common)
        if not isinstance(body, dict):
            raise PayloadError(f"expected a JSON object, got {type(body).__name__}", kind="payload", **common)
        if code is not None and code != settings.CODE_OK:
            if code == settings.CODE_BAD_PARAMETERS:
                raise BadRequestError(message or "bad parameters", kind=f"body_{code}", **common)
            raise FatalError(message or "non-zero CINNOX code", kind=f"body_{code}", **common)
        return body

    def _transport_error(self, exc: Exception, url: str) -> CinnoxError:
        """Map a requests / urllib3 exception (or a ``ValueError`` raised while building the
        request) to our error tree, with its ``kind`` set."""
        if isinstance(exc, ValueError) and not isinstance(exc, _RETRIABLE_TRANSPORT_ERRORS):
            # e.g. 'Invalid header value b"Bearer ..."' or a codec error on a header: the text
            # holds the value in an escaped form no redaction can be sure to match, so drop it
            return FatalError(
                f"the request could not be built ({type(exc).__name__}): a header or URL value is "
                "invalid; check CINNOX_APP_TOKEN, CINNOX_APP_ID and CINNOX_BASE_URL",
                url=url,
                kind="request",
            )
        # urllib3 texts can embed the full URL; describe the root cause and swap any URL for the safe one
        root = _root_cause(exc)
        detail = _URL_IN_TEXT.sub(f"url: {url}", str(root))
        name = type(exc).__name__ if root is exc else f"{type(exc).__name__}/{type(root).__name__}"
        description = self._redact(f"{name}: {detail}")
        if isinstance(exc, requests.exceptions.SSLError) and "certificate" in str(exc).lower():
            return FatalError(f"TLS verification failed, check ca_bundle: {description}", url=url, kind="tls")
        if isinstance(exc, requests.exceptions.ConnectTimeout):
            return RetriableError(description, url=url, kind="connect_timeout")
        if isinstance(exc, requests.exceptions.Timeout):
            return RetriableError(description, url=url, kind="timeout")
        if isinstance(exc, requests.exceptions.ChunkedEncodingError | urllib3.exceptions.ProtocolError):
            return RetriableError(description, url=url, kind="truncated")
        if isinstance(exc, requests.exceptions.ContentDecodingError | urllib3.exceptions.DecodeError):
            return RetriableError(description, url=url, kind="decoding")
        if isinstance(exc, _RETRIABLE_TRANSPORT_ERRORS):
            # a read timeout while streaming the body also surfaces as ConnectionError
            kind = "timeout" if "timed out" in str(exc).lower() else "connection"
            return RetriableError(description, url=url, kind=kind)
        return FatalError(description, url=url, kind="request")

    def _backoff_seconds(self, retry_index: int, retry_after: float | None) -> float:
        """Delay before retry number ``retry_index`` (0-based): Retry-After if given, else full jitter."""
        if retry_after is not None:
            return min(retry_after, self.backoff_max_s)
        ceiling = min(self.backoff_max_s, self.backoff_base_s * 2**retry_index)
        return self._random.uniform(0.0, ceiling)

    def get_json(self, path: str, params: Mapping[str, Any]) -> tuple[dict, int]:
        """GET ``base_url + path`` with ``params``; return ``(body, nbytes)``. See :meth:`_get`."""
        body, content = self._get(path, params)
        return body, len(content)

    def _get(self, path: str, params: Mapping[str, Any]) -> tuple[dict, bytes]:
        """GET ``base_url + path`` with ``params``; return ``(body, content)``. The only retry loop.

        ``body`` is the decoded JSON object, ``content`` the body as received.
        Retries (bounded by ``max_attempts``, full-jitter exponential backoff, ``Retry-After``
        honoured up to ``backoff_max_s``): HTTP 429 and 5xx, timeouts, connection resets, truncated
        or non-JSON bodies, an attempt past its deadline (``deadline``), a body over the size cap
        (``too_large``), body code 6451010 / 6451001 under any status. Raises at once:
        :class:`AuthError` (401/403), :class:`BadRequestError` (400, 6451000, other 4xx),
        :class:`FatalError` (other non-zero body codes, a request that cannot be built),
        :class:`PayloadError` (2xx non-object). Raises :class:`RetriesExhaustedError` when the
        attempts run out; see :meth:`worst_case_retry_seconds` for the time bound.
        """
        url = f"{self.base_url}{path}"
        safe_url = self._safe_url(path, params)
        started = time.monotonic()
        last_error: RetriableError | None = None

        for attempt in range(1, self.max_attempts + 1):
            waited = self.rate_limiter.acquire()
            self.stats.add(requests=1, wait_s=waited)
            try:
                return self._attempt(url, params, safe_url)
            except CinnoxError as caught:
                error = caught
            # raised below, outside the handler: no error ever chains a requests exception
            self.stats.add(error=error.kind, throttles=1 if isinstance(error, ThrottledError) else 0)
            if not isinstance(error, RetriableError):
                raise error
            last_error = error
            if attempt == self.max_attempts:
                break
            delay = self._backoff_seconds(attempt - 1, error.retry_after)
            self.stats.add(retries=1)
            self._log.warning(
                "CINNOX retry: GET %s attempt %d/%d failed (%s); sleeping %.2fs",
                safe_url,
                attempt,
                self.max_attempts,
                self._redact(_reason(error)),
                delay,
            )
            self._sleep(delay)

        assert last_error is not None
        raise RetriesExhaustedError(
            attempts=self.max_attempts, elapsed_s=time.monotonic() - started, last_error=last_error
        )

    def _attempt(self, url: str, params: Mapping[str, Any], safe_url: str) -> tuple[dict, bytes]:
        """One GET: ``(body, content)``, or raise the :class:`CinnoxError` the failure amounts to.

        The whole attempt runs under a :class:`_Deadline` of :attr:`request_deadline` seconds; the
        body is read in chunks of at most :data:`_READ_CHUNK` bytes (one read for a typical page)
        and refused once it holds more than :attr:`max_response_bytes`.
        """
        failure: CinnoxError | None = None
        response: requests.Response | None = None
        answered: requests.Response | None = None  # the response if its headers came in time
        with _Deadline(self.request_deadline) as deadline:
            try:
                response = self.session.get(
                    url,
                    params=dict(params),
                    headers=self._headers,
                    auth=self._auth,
                    timeout=(min(self.connect_timeout, self.request_deadline), self.read_timeout),
                    verify=self.verify,
                    stream=True,
                )
                # headers cut off at the deadline can parse as a complete (shorter) header block
                answered = None if deadline.passed() else response
                try:
                    # a session of the caller's has no watched connections: watch the body at least
                    deadline.watch(getattr(getattr(response.raw, "connection", None), "sock", None))
                    content = _read_body(response, deadline, self.max_response_bytes)
                finally:
                    response.close()  # a body not read to its end closes the connection
            except _BodyTooLarge:
                failure = RetriableError(
                    f"response body larger than {self.max_response_mb:g} MB (CINNOX_MAX_RESPONSE_MB)",
                    status=response.status_code if response is not None else None,
                    url=safe_url,
                    kind="too_large",
                )
            except (_DeadlinePassed, *_RETRIABLE_TRANSPORT_ERRORS, requests.exceptions.RequestException,
                    ValueError) as exc:
                if isinstance(exc, _DeadlinePassed) or deadline.passed():
                    failure = self._deadline_error(answered, safe_url)
                else:
                    failure = self._transport_error(exc, safe_url)
            if failure is None and deadline.expired:
                # the timer fired while the body was read: it may have been cut off at a socket EOF
                failure = self._deadline_error(answered, safe_url)
        if failure is not None:
            raise failure  # outside the handler, so the requests exception is not its __context__
        assert response is not None
        self.stats.add(nbytes=len(content))
        return self._classify(response, content, safe_url), content

    def _deadline_error(self, response: requests.Response | None, url: str) -> RetriableError:
        """The retriable ``deadline`` error of an attempt that ran out of time (``response``: the
        answer whose headers came in time, whose status the error then carries)."""
        return RetriableError(
            f"no complete response within the {self.request_deadline:g} s request deadline "
            "(CINNOX_REQUEST_DEADLINE_S)",
            status=response.status_code if response is not None else None,
            url=url,
            kind="deadline",
        )

    # -- paging ---------------------------------------------------------------------------------

    def _paginate(
        self,
        endpoint: str,
        path: str,
        params: Mapping[str, Any],
        *,
        until_empty: bool,
        expected_rows: int | None = None,
    ) -> Iterator[Page]:
        """Yield the pages of one listing: ``offset`` from 0 in steps of the rows received.

        The stop rule (``limit`` is :attr:`page_size`; a *short* page has fewer rows than that):

        * an empty page always ends the listing;
        * ``until_empty=True`` (summaries): nothing else does, so a server that caps its pages
          below ``limit`` is read to the end, at the price of one empty page per listing;
        * ``until_empty=False`` (details): a short page ends the listing once the pages so far
          hold at least ``expected_rows`` rows; with ``expected_rows=None``, the first short page
          does (a server that caps pages is then read incompletely: pass ``expected_rows``);
        * a full page never ends it.

        Raises :class:`PayloadError` when ``result`` is missing, null or not a list of objects, when
        a non-empty page repeats the previous one exactly (the server ignores ``offset``), or after
        ``settings.MAX_PAGES_PER_LISTING`` pages.
        """
        history_id = params.get(settings.PARAM_HISTORY_ID)
        limit = self.page_size
        offset = 0
        previous: list[dict] | None = None
        for _ in range(settings.MAX_PAGES_PER_LISTING):
            page_params = {**params, settings.PARAM_OFFSET: offset, settings.PARAM_LIMIT: limit}
            body, content = self._get(path, page_params)
            safe_url = self._safe_url(path, page_params)
            records = body.get(settings.ENVELOPE_RESULT)
            if not isinstance(records, list):
                shape = ("missing" if settings.ENVELOPE_RESULT not in body
                         else "null" if records is None else type(records).__name__)  # fmt: skip
                raise PayloadError(
                    f"'{settings.ENVELOPE_RESULT}' is {shape}, expected a list", status=200, url=safe_url,
                    kind="payload",
                )
            if not all(isinstance(row, dict) for row in records):
                raise PayloadError(f"'{settings.ENVELOPE_RESULT}' holds non-object rows", status=200,
                                   url=safe_url, kind="payload")
            if records and previous is not None and records == previous:
                raise PayloadError(
                    f"page at offset {offset} repeats the previous page: the server ignores "
                    f"'{settings.PARAM_OFFSET}', stopping an endless listing",
                    status=200,
                    url=safe_url,
                    kind="payload",
                )
            yield Page(endpoint=endpoint, offset=offset, nbytes=len(content), history_id=history_id,
                       body=content, records=records)
            received = len(records)
            offset += received
            if received == 0:
                return
            if received < limit and not until_empty and (expected_rows is None or offset >= expected_rows):
                return
            previous = records
        raise PayloadError(
            f"listing did not end after {settings.MAX_PAGES_PER_LISTING} pages",
            status=200,
            url=self._safe_url(path, params),
            kind="payload",
        )

    def iter_summary_pages(self, start_at: datetime, end_at: datetime) -> Iterator[Page]:
        """Pages of ``sent-campaigns-summary`` (one row per sent campaign) for ``[start_at, end_at]``.

        The listing is complete: pages are requested (``offset`` advancing by the rows received)
        until one comes back empty, whatever the sizes of the pages before it, so a server that
        caps pages below ``limit`` loses nothing. A clean day costs one empty page more than its
        rows need (a day of 8 campaigns: 2 requests; of 0: 1).

        Both datetimes must be aware; they are sent as RFC3339 UTC with milliseconds
        (``2022-11-07T00:00:00.000Z``). A naive datetime raises ``ValueError``.
        """
        params = {
            settings.PARAM_START_AT: format_rfc3339(start_at),
            settings.PARAM_END_AT: format_rfc3339(end_at),
        }
        return self._paginate("summary", self.summary_path, params, until_empty=True)

    def iter_detail_pages(self, history_id: str, expected_rows: int | None = None) -> Iterator[Page]:
        """Pages of ``sent-campaigns-detail`` (one row per recipient) of the campaign ``history_id``.

        ``expected_rows`` is the summary row's ``totalRecipients``. Paging (``offset`` advancing by
        the rows received) stops at an empty page, or at a short page (fewer rows than ``limit``)
        once the listing holds at least ``expected_rows`` rows; a short page below that is taken
        for a server-side page cap and paging goes on. With ``expected_rows=None`` the first short
        page ends the listing. A full page never does. On a clean API this costs no extra request:
        a campaign of 150 rows is 1 request, of 1,000 rows 3 (500, 500, then the empty page that
        proves the end), as without ``expected_rows``. A listing that ends (empty page) with fewer
        rows than ``expected_rows`` is yielded as it is: comparing the two is the caller's job.

        ``history_id`` is the summary row's ``id``; an empty one, or an ``expected_rows`` that is not
        a non-negative int, raises ``ValueError``.
        """
        if not isinstance(history_id, str) or not history_id.strip():
            raise ValueError("history_id must be a non-empty string (the summary row's 'id')")
        if expected_rows is not None and (
            not isinstance(expected_rows, int) or isinstance(expected_rows, bool) or expected_rows < 0
        ):
            raise ValueError(
                "expected_rows must be None or a non-negative int (the summary's 'totalRecipients')"
            )
        return self._paginate("detail", self.detail_path, {settings.PARAM_HISTORY_ID: history_id},
                              until_empty=False, expected_rows=expected_rows)


def _read_body(response: requests.Response, deadline: _Deadline, max_bytes: int) -> bytes:
    """The body of a ``stream=True`` response, read in chunks, with the errors requests' own
    ``.content`` raises for a truncated, undecodable or stalled body.

    Raises :class:`_BodyTooLarge` when ``Content-Length`` announces more than ``max_bytes`` (before
    reading anything) or once ``max_bytes + 1`` bytes have arrived (never more is held), and
    :class:`_DeadlinePassed` when the deadline has passed between two reads.
    """
    announced = (response.headers.get("Content-Length") or "").strip()
    if announced.isdigit() and int(announced) > max_bytes:
        raise _BodyTooLarge
    chunks: list[bytes] = []
    held = 0
    try:
        while True:
            chunk = response.raw.read(min(_READ_CHUNK, max_bytes + 1 - held), decode_content=True)
            if not chunk:
                return b"".join(chunks)  # a single chunk is returned as it is, without a copy
            chunks.append(chunk)
            held += len(chunk)
            if held > max_bytes:
                raise _BodyTooLarge
            if deadline.passed():
                raise _DeadlinePassed
    except urllib3.exceptions.ProtocolError as exc:
        raise requests.exceptions.ChunkedEncodingError(exc) from exc
    except urllib3.exceptions.DecodeError as exc:
        raise requests.exceptions.ContentDecodingError(exc) from exc
    except urllib3.exceptions.ReadTimeoutError as exc:
        raise requests.exceptions.ConnectionError(exc) from exc
    except urllib3.exceptions.SSLError as exc:
        raise requests.exceptions.SSLError(exc) from exc
