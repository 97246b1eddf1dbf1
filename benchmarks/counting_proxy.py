"""A tiny threaded HTTP/1.1 forward proxy that counts the requests passing through it.

Used by ``benchmarks/run.py`` only in passes whose time is *not* measured (request counts,
the rate-limited run, the ``--resplit`` no-API check): it sits between a contender and the
simulator, forwards every ``GET`` unchanged (path, query, ``Authorization``/``Accept``/
``Content-Type`` headers) over a keep-alive connection per handler thread, relays the status,
body and ``Retry-After``, and records ``(monotonic time, endpoint, status)`` for each request.

Example::

    with CountingProxy("http://127.0.0.1:8765") as proxy:
        ...  # point the contender at proxy.base_url
        counts = proxy.snapshot()   # {"requests": 123, "by_status": {"200": 123}, ...}
"""

from __future__ import annotations

import http.client
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self
from urllib.parse import urlsplit

__all__ = ["CountingProxy"]

_FORWARDED_REQUEST_HEADERS = ("Authorization", "Accept", "Content-Type")
_RELAYED_RESPONSE_HEADERS = ("Content-Type", "Retry-After")


def _endpoint_of(path: str) -> str:
    """Classify a request path as ``summary``, ``detail`` or ``other``."""
    route = urlsplit(path).path
    if route.endswith("sent-campaigns-summary"):
        return "summary"
    if route.endswith("sent-campaigns-detail"):
        return "detail"
    return "other"


class _ProxyServer(ThreadingHTTPServer):
    """ThreadingHTTPServer carrying a reference to its :class:`CountingProxy`."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], owner: CountingProxy) -> None:
        """Bind ``address``; requests are recorded on ``owner``."""
        self.owner = owner
        super().__init__(address, _ProxyHandler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Stay quiet when a client drops its connection."""


class _ProxyHandler(BaseHTTPRequestHandler):
    """Forwards one client connection's requests to the upstream over its own keep-alive connection."""

    protocol_version = "HTTP/1.1"
    timeout = 120
    server: _ProxyServer

    def log_message(self, format: str, *args: Any) -> None:
        """No per-request log lines (query strings stay out of the output)."""

    def setup(self) -> None:
        """Open nothing yet: the upstream connection is created on the first request."""
        super().setup()
        self._upstream: http.client.HTTPConnection | None = None

    def finish(self) -> None:
        """Close the upstream connection together with the client's."""
        try:
            super().finish()
        finally:
            if self._upstream is not None:
                self._upstream.close()

    def _forward(self) -> tuple[int, list[tuple[str, str]], bytes]:
        """Send this request upstream (one reconnect on a stale keep-alive connection)."""
        owner = self.server.owner
        headers = {name: self.headers[name] for name in _FORWARDED_REQUEST_HEADERS if self.headers.get(name)}
        for attempt in (1, 2):
            if self._upstream is None:
                self._upstream = http.client.HTTPConnection(
                    owner.upstream_host, owner.upstream_port, timeout=300
                )
            try:
                self._upstream.request("GET", self.path, headers=headers)
                response = self._upstream.getresponse()
                body = response.read()
                return response.status, response.getheaders(), body
            except (http.client.HTTPException, OSError):
                self._upstream.close()
                self._upstream = None
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def do_GET(self) -> None:
        """Count the request, forward it and relay the answer."""
        owner = self.server.owner
        arrived = time.monotonic()
        endpoint = _endpoint_of(self.path)
        try:
            status, headers, body = self._forward()
        except (http.client.HTTPException, OSError):
            owner._record(arrived, endpoint, 0)
            self.send_error(502, "upstream unreachable")
            return
        owner._record(arrived, endpoint, status)
        self.send_response(status)
        for name, value in headers:
            if name.title() in _RELAYED_RESPONSE_HEADERS:
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class CountingProxy:
    """Forward proxy on 127.0.0.1 that counts requests by endpoint and by upstream status.

    Args:
        upstream: ``http://host:port`` of the server to forward to (plain HTTP only).
        port: local port; 0 picks a free one.
    """

    def __init__(self, upstream: str, port: int = 0) -> None:
        parts = urlsplit(upstream)
        if parts.scheme != "http" or not parts.hostname or not parts.port:
            raise ValueError(f"upstream must look like http://host:port, got {upstream!r}")
        self.upstream_host = parts.hostname
        self.upstream_port = parts.port
        self._server = _ProxyServer(("127.0.0.1", port), self)
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._events: list[tuple[float, str, int]] = []

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT`` of the proxy."""
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> CountingProxy:
        """Serve from a daemon thread; returns self."""
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._server.serve_forever,
                kwargs={"poll_interval": 0.1},
                name="counting-proxy",
                daemon=True,
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and release the port."""
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self._server.server_close()

    def __enter__(self) -> Self:
        """Start the proxy."""
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        """Stop the proxy."""
        self.stop()

    def _record(self, arrived: float, endpoint: str, status: int) -> None:
        """Remember one forwarded request (status 0: upstream unreachable)."""
        with self._lock:
            self._events.append((arrived, endpoint, status))

    def reset(self) -> None:
        """Forget every request recorded so far."""
        with self._lock:
            self._events.clear()

    def snapshot(self) -> dict[str, Any]:
        """Counts since the last :meth:`reset`.

        Returns ``requests``, ``by_endpoint``, ``by_status`` (status as text), ``throttled`` (HTTP
        429 answers), ``first_s``/``last_s`` (monotonic arrival times of the first and last request,
        ``None`` when there were none) and ``arrivals`` (every arrival time, sorted).
        """
        with self._lock:
            events = list(self._events)
        by_endpoint: dict[str, int] = {}
        by_status: dict[str, int] = {}
        for _, endpoint, status in events:
            by_endpoint[endpoint] = by_endpoint.get(endpoint, 0) + 1
            by_status[str(status)] = by_status.get(str(status), 0) + 1
        arrivals = sorted(t for t, _, _ in events)
        return {
            "requests": len(events),
            "by_endpoint": by_endpoint,
            "by_status": by_status,
            "throttled": by_status.get("429", 0),
            "first_s": arrivals[0] if arrivals else None,
            "last_s": arrivals[-1] if arrivals else None,
            "arrivals": arrivals,
        }
