"""Loopback HTTP server emulating the two CINNOX sent-campaign endpoints, with faults and a rate limit.

Routes (``GET`` only)::

    /v1/api/apps/{appID}/data/sent-campaigns-summary?startAt=..&endAt=..&offset=..&limit=..
    /v1/api/apps/{appID}/data/sent-campaigns-detail?historyID=..&offset=..&limit=..

With ``stats_path`` set (e.g. ``/_stats``), ``GET`` on that path answers :meth:`SimulatorServer.stats`
as JSON, before any other check and without being counted.

Order of checks for every other request:

1. ``down=True`` -> HTTP 503 ``{"code":6451001,"message":"Service unavailable"}``.
2. Unknown path or a method other than GET -> HTTP 404 ``{"code":6450001,"message":"method not found"}``.
3. ``Authorization`` must be exactly ``Bearer <token>``, else HTTP 401
   ``{"code":6450401,"message":"Unauthorized"}``. The real status and code for a bad token are not
   documented; 401/6450401 is this simulator's choice.
4. Rate limit (``rate_limit_per_min``; sliding 60 s window per token, throttled requests are not
   counted) -> HTTP 429, ``Retry-After`` in whole seconds, ``{"code":6451010,"message":"Too many requests"}``.
5. Fault injection (probability ``fault_rate``, kind drawn from ``fault_kinds``; seeded, thread-safe).
6. Unknown appID -> HTTP 404 ``{"code":6450404,"message":"app not found"}`` (code is this simulator's choice).
7. Validation -> HTTP 400 ``{"code":6451000,"message":...}``; then the success envelope
   ``{"code":0,"result":[...],"cid":"..."}`` (HTTP 200).

Fault kinds: ``429_retry_after`` (429 + ``Retry-After: 1``), ``429_no_retry_after``, ``500``, ``502``
(an HTML gateway page, not JSON), ``503``, ``reset`` (the socket is closed with an RST and no
response), ``truncated`` (the full ``Content-Length`` but only half the body, then close),
``body_code_6451010`` / ``body_code_6451001`` (HTTP 200 carrying that error code), ``slow`` (sleep
``slow_seconds`` then answer normally). Faults never change data: a retry that succeeds returns the
same bytes as a fault-free server.

Transport modes of a misbehaving server (off by default): ``summary_page_cap`` / ``detail_page_cap``
serve at most that many rows per page whatever ``limit`` asks (a valid ``limit`` up to 500 is still
required); ``bom_bodies`` puts a UTF-8 BOM in front of every response body (errors and fault pages
included, the ``stats_path`` answer excluded); ``drip_bytes_per_s`` sends every detail body at about
that many bytes per second (status line and headers at once, the full ``Content-Length`` announced),
so that a client's per-read timeout never fires; ``oversized_mb`` answers every detail request with
the page padded to that many MB (2**20 bytes) by a leading unknown ``"padding"`` string field:
well-formed JSON whose records are the page's, sent without ``Content-Length`` (``Connection:
close``, the body ends at the close) so that only counting the bytes read can refuse it. With
both set, ``oversized_mb`` wins. The data modes (``empty_summary``,
``truncate_details``, ``poison_values``, ``duplicate_summary``, ``naive_dates``, ``odd_channel``) are
rendered by :class:`CinnoxSimulator` from its own config (see ``data.py``).

No request line, header or phone number is ever logged.
"""

from __future__ import annotations

import math
import random
import re
import socket
import struct
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self
from urllib.parse import parse_qs, urlsplit

import orjson

from .data import ALL_FAULT_KINDS, PAGE_LIMIT_MAX, CinnoxSimulator, SimulatorConfig, parse_rfc3339

__all__ = [
    "CODE_APP_NOT_FOUND",
    "CODE_BAD_PARAMETERS",
    "CODE_BAD_RESPONSE",
    "CODE_METHOD_NOT_FOUND",
    "CODE_TOO_MANY_REQUESTS",
    "CODE_UNAUTHORIZED",
    "SimulatorServer",
    "serve_forever",
]

CODE_BAD_PARAMETERS = 6451000
CODE_METHOD_NOT_FOUND = 6450001
CODE_BAD_RESPONSE = 6451001
CODE_TOO_MANY_REQUESTS = 6451010
CODE_UNAUTHORIZED = 6450401
"""Simulator's choice: the real code for a bad token is undocumented."""
CODE_APP_NOT_FOUND = 6450404
"""Simulator's choice: the real code for an unknown appID is undocumented."""

UTF8_BOM = b"\xef\xbb\xbf"
SUMMARY_ENDPOINT = "sent-campaigns-summary"
DETAIL_ENDPOINT = "sent-campaigns-detail"
_ROUTE = re.compile(r"^/v1/api/apps/([^/]+)/data/(sent-campaigns-summary|sent-campaigns-detail)/?$")
_DEFAULT_LIMIT = 50
_PAD = b"x" * (1 << 20)  # one MB of padding, written as many times as an oversized body needs
_DRIP_TICK_S = 0.05  # a dripped body goes out in pieces about this far apart (at least a byte each)


class _BadRequest(Exception):
    """A parameter error answered with HTTP 400 / code 6451000."""


class _HTTPServer(ThreadingHTTPServer):
    """ThreadingHTTPServer that tracks open connections so that ``stop()`` can close them."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], owner: SimulatorServer) -> None:
        """Bind to ``address``; requests are dispatched to ``owner``."""
        self.owner = owner
        self.open_connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        """Remember the connection, then handle it in a thread."""
        with self.connections_lock:
            self.open_connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        """Forget the connection and close it."""
        with self.connections_lock:
            self.open_connections.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Stay quiet: a client dropping its connection is routine here (no tracebacks to stderr)."""
        self.owner._count("connection_errors")

    def close_open_connections(self) -> None:
        """Shut down every connection still open (idle keep-alive ones included)."""
        with self.connections_lock:
            connections = list(self.open_connections)
            self.open_connections.clear()
        for conn in connections:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class _Handler(BaseHTTPRequestHandler):
    """Request handler: HTTP/1.1 keep-alive, every response carries a Content-Length."""

    protocol_version = "HTTP/1.1"
    server_version = "CINNOX-Simulator/1.0"
    sys_version = ""
    timeout = 120  # idle keep-alive connections are closed after this many seconds
    # Headers and body go out as separate writes; without TCP_NODELAY, Nagle's algorithm plus the
    # client's delayed ACK add ~40 ms to every response.
    disable_nagle_algorithm = True
    server: _HTTPServer

    def log_message(self, format: str, *args: Any) -> None:
        """Suppress the default per-request log line (it would contain query strings)."""

    def do_GET(self) -> None:
        """Dispatch a GET to the owning :class:`SimulatorServer`."""
        self.server.owner._dispatch(self, is_get=True)

    def _other_method(self) -> None:
        """Answer any other method (after discarding a request body)."""
        length = int(self.headers.get("Content-Length") or 0)
        if length > 0:
            self.rfile.read(length)
        self.server.owner._dispatch(self, is_get=False)

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _other_method


class SimulatorServer:
    """The simulated CINNOX Open API on loopback, served from a background thread.

    The socket is bound on construction (``port=0`` picks a free port), so :attr:`base_url` is
    known before :meth:`start`. Use as a context manager to start and stop it.
    """

    def __init__(
        self,
        config: SimulatorConfig | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        simulator: CinnoxSimulator | None = None,
    ) -> None:
        """Bind the server; ``simulator`` lets several servers share one (cached) data model."""
        self._config = config or SimulatorConfig()
        self._simulator = simulator or CinnoxSimulator(self._config)
        self._httpd = _HTTPServer((host, port), self)
        self._thread: threading.Thread | None = None
        self._stats_lock = threading.Lock()
        self._requests = {SUMMARY_ENDPOINT: 0, DETAIL_ENDPOINT: 0, "other": 0}
        self._faults = dict.fromkeys(ALL_FAULT_KINDS, 0)
        self._counters = {"throttled": 0, "status_4xx": 0, "internal_errors": 0, "connection_errors": 0}
        self._first_request_at: float | None = None
        self._last_request_at: float | None = None
        self._fault_rng = random.Random(self._config.fault_seed)
        self._fault_lock = threading.Lock()
        self._windows: dict[str, deque[float]] = {}
        self._rate_lock = threading.Lock()
        self._stopping = threading.Event()  # ends a dripped body's waits at once

    # ---------------------------------------------------------------- lifecycle

    def start(self) -> SimulatorServer:
        """Start serving in a daemon thread (idempotent); returns self."""
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._httpd.serve_forever,
                kwargs={"poll_interval": 0.1},
                name="cinnox-simulator",
                daemon=True,
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, close every open connection and release the port."""
        self._stopping.set()
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self._httpd.close_open_connections()
        self._httpd.server_close()

    def __enter__(self) -> Self:
        """Start the server."""
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        """Stop the server."""
        self.stop()

    # ---------------------------------------------------------------- properties

    @property
    def base_url(self) -> str:
        """``http://HOST:PORT`` of the bound socket."""
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def port(self) -> int:
        """The bound TCP port."""
        return int(self._httpd.server_address[1])

    @property
    def app_id(self) -> str:
        """The App ID the server accepts."""
        return self._config.app_id

    @property
    def token(self) -> str:
        """The App Token the server accepts (``Authorization: Bearer <token>``)."""
        return self._config.token

    @property
    def config(self) -> SimulatorConfig:
        """The configuration served."""
        return self._config

    @property
    def simulator(self) -> CinnoxSimulator:
        """The data model behind the server (for ground truth and pre-rendering)."""
        return self._simulator

    def stats(self) -> dict[str, Any]:
        """Return counters since start.

        ``requests_by_endpoint`` (``sent-campaigns-summary``, ``sent-campaigns-detail``, ``other``),
        ``requests_total``, ``faults_by_kind``, ``throttled`` (rate-limit 429s), ``status_4xx`` (400,
        401 and 404 answers; excludes throttling and injected faults), ``internal_errors``,
        ``connection_errors``, and ``first_request_at``/``last_request_at`` (Unix time of the first
        and the latest request's arrival, None before any).
        """
        with self._stats_lock:
            return {
                "requests_by_endpoint": dict(self._requests),
                "requests_total": sum(self._requests.values()),
                "faults_by_kind": dict(self._faults),
                **self._counters,
                "first_request_at": self._first_request_at,
                "last_request_at": self._last_request_at,
            }

    # ---------------------------------------------------------------- request handling

    def _count(self, counter: str) -> None:
        """Increment one of the plain counters."""
        with self._stats_lock:
            self._counters[counter] += 1

    def _dispatch(self, handler: _Handler, *, is_get: bool) -> None:
        """Answer one request (see the module docstring for the order of checks)."""
        config = self._config
        split = urlsplit(handler.path)
        if is_get and config.stats_path is not None and split.path == config.stats_path:
            # not counted, no auth, never with a BOM: for benchmarks
            self._send(handler, 200, orjson.dumps(self.stats()), bom=False)
            return
        route = _ROUTE.match(split.path) if is_get else None
        endpoint = route.group(2) if route else "other"
        arrived = time.time()
        with self._stats_lock:
            self._requests[endpoint] += 1
            if self._first_request_at is None:
                self._first_request_at = arrived
            self._last_request_at = arrived
        if config.down:
            self._send_json(handler, 503, {"code": CODE_BAD_RESPONSE, "message": "Service unavailable"})
            return
        if route is None:
            self._client_error(handler, 404, CODE_METHOD_NOT_FOUND, "method not found")
            return
        if handler.headers.get("Authorization") != f"Bearer {config.token}":
            self._client_error(handler, 401, CODE_UNAUTHORIZED, "Unauthorized")
            return
        retry_after = self._throttle(config.token)
        if retry_after is not None:
            self._count("throttled")
            self._send_json(
                handler,
                429,
                {"code": CODE_TOO_MANY_REQUESTS, "message": "Too many requests"},
                headers={"Retry-After": str(retry_after)},
            )
            return
        fault = self._draw_fault()
        if fault is not None and self._answer_fault_early(handler, fault):
            return
        if route.group(1) != config.app_id:
            self._client_error(handler, 404, CODE_APP_NOT_FOUND, "app not found")
            return
        params = {k: v[0] for k, v in parse_qs(split.query, keep_blank_values=True).items()}
        try:
            if endpoint == SUMMARY_ENDPOINT:
                body = self._summary(params)
            else:
                body = self._detail(params)
        except _BadRequest as exc:
            self._client_error(handler, 400, CODE_BAD_PARAMETERS, str(exc))
            return
        except Exception:  # noqa: BLE001 - never leak a traceback (it could contain data)
            self._count("internal_errors")
            self._send_json(
                handler, 500, {"code": CODE_BAD_RESPONSE, "message": "Bad response from the service"}
            )
            return
        if fault == "slow":
            time.sleep(config.slow_seconds)
        if fault == "truncated":
            self._send_truncated(handler, body)
            return
        if endpoint == DETAIL_ENDPOINT and config.oversized_mb is not None:
            self._send_oversized(handler, body, config.oversized_mb)
            return
        if endpoint == DETAIL_ENDPOINT and config.drip_bytes_per_s is not None:
            self._send_dripped(handler, body, config.drip_bytes_per_s)
            return
        self._send(handler, 200, body)

    def _summary(self, params: dict[str, str]) -> bytes:
        """Validate summary parameters and render the page."""
        start_text, end_text = params.get("startAt", ""), params.get("endAt", "")
        if not start_text or not end_text:
            raise _BadRequest("missing one of startAt, endAt")
        try:
            start_at = parse_rfc3339(start_text)
        except ValueError:
            raise _BadRequest("invalid startAt, must be RFC3339") from None
        try:
            end_at = parse_rfc3339(end_text)
        except ValueError:
            raise _BadRequest("invalid endAt, must be RFC3339") from None
        if end_at < start_at:
            raise _BadRequest("endAt is prior to startAt")
        offset, limit = _paging(params)
        if self._config.summary_page_cap is not None:
            limit = min(limit, self._config.summary_page_cap)
        return self._simulator.render_summary_page(start_at, end_at, offset, limit)

    def _detail(self, params: dict[str, str]) -> bytes:
        """Validate detail parameters and render the page."""
        history_id = params.get("historyID", "")
        if not history_id:
            raise _BadRequest("missing historyID")
        offset, limit = _paging(params)
        if self._config.detail_page_cap is not None:
            limit = min(limit, self._config.detail_page_cap)
        return self._simulator.render_detail_page(history_id, offset, limit)

    def _throttle(self, token: str) -> int | None:
        """Record a request for ``token``; return Retry-After seconds when over the limit, else None."""
        limit = self._config.rate_limit_per_min
        if limit is None:
            return None
        now = time.monotonic()
        with self._rate_lock:
            window = self._windows.setdefault(token, deque())
            while window and window[0] <= now - 60.0:
                window.popleft()
            if len(window) >= limit:
                return max(1, math.ceil(window[0] + 60.0 - now))
            window.append(now)
            return None

    def _draw_fault(self) -> str | None:
        """Draw this request's fault (or None) from the seeded fault RNG."""
        config = self._config
        if config.fault_rate <= 0.0:
            return None
        with self._fault_lock:
            if self._fault_rng.random() >= config.fault_rate:
                return None
            kind = config.fault_kinds[self._fault_rng.randrange(len(config.fault_kinds))]
        with self._stats_lock:
            self._faults[kind] += 1
        return kind

    def _answer_fault_early(self, handler: _Handler, fault: str) -> bool:
        """Answer the faults that replace the response; return False for slow/truncated."""
        if fault == "429_retry_after":
            self._send_json(
                handler,
                429,
                {"code": CODE_TOO_MANY_REQUESTS, "message": "Too many requests"},
                headers={"Retry-After": "1"},
            )
        elif fault == "429_no_retry_after":
            self._send_json(handler, 429, {"code": CODE_TOO_MANY_REQUESTS, "message": "Too many requests"})
        elif fault == "500":
            self._send_json(
                handler, 500, {"code": CODE_BAD_RESPONSE, "message": "Bad response from the service"}
            )
        elif fault == "502":
            page = b"<html><head><title>502 Bad Gateway</title></head><body>502 Bad Gateway</body></html>"
            self._send(handler, 502, page, content_type="text/html")
        elif fault == "503":
            self._send_json(handler, 503, {"code": CODE_BAD_RESPONSE, "message": "Service unavailable"})
        elif fault == "reset":
            self._reset(handler)
        elif fault == "body_code_6451010":
            self._send_json(handler, 200, {"code": CODE_TOO_MANY_REQUESTS, "message": "Too many requests"})
        elif fault == "body_code_6451001":
            self._send_json(
                handler, 200, {"code": CODE_BAD_RESPONSE, "message": "Bad response from the service"}
            )
        else:
            return False
        return True

    # ---------------------------------------------------------------- low-level responses

    def _client_error(self, handler: _Handler, status: int, code: int, message: str) -> None:
        """Send a 4xx error envelope and count it."""
        self._count("status_4xx")
        self._send_json(handler, status, {"code": code, "message": message})

    def _send_json(
        self, handler: _Handler, status: int, payload: dict[str, Any], headers: dict[str, str] | None = None
    ) -> None:
        """Send ``payload`` as JSON."""
        self._send(handler, status, orjson.dumps(payload), headers=headers)

    def _send(
        self,
        handler: _Handler,
        status: int,
        body: bytes,
        *,
        content_type: str = "application/json",
        headers: dict[str, str] | None = None,
        bom: bool = True,
    ) -> None:
        """Send a complete response with Content-Length (the connection stays open); with
        ``bom_bodies`` (and ``bom``) the body goes out behind a UTF-8 BOM."""
        if bom and self._config.bom_bodies:
            body = UTF8_BOM + body
        handler.send_response(status)
        handler.send_header("Content-Type", content_type)
        handler.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            handler.send_header(name, value)
        handler.end_headers()
        handler.wfile.write(body)

    def _send_truncated(self, handler: _Handler, body: bytes) -> None:
        """Announce the full Content-Length, send half of the body, then close the connection."""
        if self._config.bom_bodies:
            body = UTF8_BOM + body
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(body)))
        handler.send_header("Connection", "close")
        handler.end_headers()
        handler.wfile.write(body[: max(1, len(body) // 2)])
        handler.wfile.flush()
        handler.close_connection = True

    def _send_dripped(self, handler: _Handler, body: bytes, bytes_per_s: float) -> None:
        """Announce the full Content-Length, then send the body at about ``bytes_per_s``."""
        if self._config.bom_bodies:
            body = UTF8_BOM + body
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        piece = max(1, int(bytes_per_s * _DRIP_TICK_S))
        started = time.monotonic()
        complete = False
        try:
            handler.wfile.flush()
            for sent in range(0, len(body), piece):
                # paced against the start, so the rate does not drift with the time writes take
                if self._stopping.wait(max(0.0, started + sent / bytes_per_s - time.monotonic())):
                    break
                handler.wfile.write(body[sent : sent + piece])
            else:
                complete = True
        except OSError:  # the client gave up (its deadline) or the server is stopping
            pass
        if not complete:
            handler.close_connection = True

    def _send_oversized(self, handler: _Handler, body: bytes, megabytes: float) -> None:
        """Send ``body`` padded to ``megabytes`` MB by a leading ``"padding"`` field, without a
        Content-Length (the body ends when the connection closes); never held in memory whole."""
        head = (UTF8_BOM if self._config.bom_bodies else b"") + b'{"padding":"'
        tail = b'",' + body[1:]  # body is the envelope object: {"code":0,"result":[...],...}
        padding = max(0, int(megabytes * (1 << 20)) - len(head) - len(tail))
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Connection", "close")
        handler.end_headers()
        try:
            handler.wfile.write(head)
            while padding > 0:
                if self._stopping.is_set():
                    return
                handler.wfile.write(_PAD[:padding] if padding < len(_PAD) else _PAD)
                padding -= len(_PAD)
            handler.wfile.write(tail)
        except OSError:  # the client refused the body and closed the connection
            pass
        finally:
            handler.close_connection = True

    @staticmethod
    def _reset(handler: _Handler) -> None:
        """Abort the connection with a TCP reset and no response at all."""
        handler.close_connection = True
        conn = handler.connection
        try:
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            handler.rfile.close()  # drop the makefile() reference so close() really closes
            conn.close()
        except OSError:
            pass


def _paging(params: dict[str, str]) -> tuple[int, int]:
    """Return validated ``(offset, limit)`` (defaults 0 and 50, limit at most 500)."""
    try:
        offset = int(params.get("offset") or 0)
    except ValueError:
        raise _BadRequest("invalid offset") from None
    try:
        limit = int(params.get("limit") or _DEFAULT_LIMIT)
    except ValueError:
        raise _BadRequest("invalid limit") from None
    if offset < 0:
        raise _BadRequest("negative offset")
    if limit < 0:
        raise _BadRequest("negative limit")
    if limit > PAGE_LIMIT_MAX:
        raise _BadRequest(f"exceed maximum limit {PAGE_LIMIT_MAX}")
    return offset, limit


def serve_forever(
    config: SimulatorConfig,
    port: int = 8765,
    host: str = "127.0.0.1",
    *,
    prerender: tuple[Any, Any] | None = None,
    announce: Any = None,
) -> None:
    """Serve ``config`` on ``host:port`` until SIGINT/SIGTERM (or KeyboardInterrupt).

    ``prerender=(start_day, end_day)`` pre-renders those days' detail pages before announcing.
    ``announce`` (default: print to stdout and flush) receives the single line
    ``CINNOX simulator listening on URL app_id=.. token=..`` once the server accepts requests.
    """
    import signal

    stop = threading.Event()
    server = SimulatorServer(config, host=host, port=port)
    previous: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGINT, signal.SIGTERM):
            previous[signum] = signal.signal(signum, lambda *_: stop.set())
    try:
        if prerender is not None:
            server.simulator.prerender(prerender[0], prerender[1])
        server.start()
        line = f"CINNOX simulator listening on {server.base_url} app_id={server.app_id} token={server.token}"
        if announce is None:
            print(line, flush=True)
        else:
            announce(line)
        while not stop.wait(0.2):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
