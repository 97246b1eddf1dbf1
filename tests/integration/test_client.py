"""CinnoxClient against real HTTP servers: paging and its stop rule, body decoding (BOM, lone surrogates),
retries per fault kind, fatal errors, pacing, redaction.

Most tests run against the CINNOX simulator; a few use a tiny local ``http.server`` handler for
server behaviours the simulator does not offer (ignoring ``offset``, odd envelopes, HTTP-date
``Retry-After``). Nothing of the client is patched: sleeps and loggers are injected.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import logging
import pickle
import socket
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from requests.adapters import HTTPAdapter

from campaign_pipeline import settings
from campaign_pipeline.cinnox.client import (
    UTF8_BOM,
    CinnoxClient,
    Page,
    RateLimiter,
    RequestStats,
    decode_json_body,
    format_rfc3339,
)
from campaign_pipeline.errors import (
    AuthError,
    BadRequestError,
    CampaignPipelineError,
    CinnoxError,
    ConfigError,
    FatalError,
    PayloadError,
    RetriableError,
    RetriesExhaustedError,
    ThrottledError,
)
from campaign_pipeline.simulator import ALL_FAULT_KINDS, SimulatorConfig, SimulatorServer

NOW = datetime(2024, 5, 8, 12, 0, tzinfo=UTC)
WEEK_START = datetime(2024, 4, 29, tzinfo=UTC)
WEEK_END = datetime(2024, 5, 6, tzinfo=UTC)
TOKEN = "sim-token-5ecret-do-not-leak"
THROTTLE_KINDS = {"429_retry_after", "429_no_retry_after", "body_code_6451010"}


# --- helpers --------------------------------------------------------------------------------


def sim_config(**overrides) -> SimulatorConfig:
    base = {
        "seed": 7,
        "campaigns_per_day": 3,
        "recipients_per_campaign": 40,
        "now": NOW,
        "fault_rate": 0.0,
        "token": TOKEN,
        "app_id": "sim-app",
    }
    base.update(overrides)
    return SimulatorConfig(**base)


def make_client(srv, *, token: str | None = None, **overrides) -> CinnoxClient:
    """A client tuned for tests: small backoff, short timeouts, no pacing unless asked."""
    kwargs = {
        "connect_timeout": 2.0,
        "read_timeout": 10.0,
        "max_attempts": 12,
        "backoff_base_s": 0.005,
        "backoff_max_s": 0.02,
        "rate_limit_per_min": None,
    }
    kwargs.update(overrides)
    return CinnoxClient(srv.base_url, srv.app_id, token if token is not None else srv.token, **kwargs)


def records_of(pages: Iterator[Page]) -> list[dict]:
    return [row for page in pages for row in page.records]


def assert_no_token(token: str, error: BaseException | None, caplog: pytest.LogCaptureFixture) -> None:
    """The token appears in no exception text or repr (causes included) and no captured log line."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        assert token not in str(error)
        assert token not in repr(error)
        if isinstance(error, RetriesExhaustedError):
            assert token not in str(error.last_error) and token not in repr(error.last_error)
        error = error.__cause__ or error.__context__
    assert token not in caplog.text
    for record in caplog.records:
        assert token not in record.getMessage()


@contextlib.contextmanager
def local_server(respond: Callable[[str, dict[str, list[str]], dict], tuple[int | tuple[int, str], dict, bytes]]):
    """Serve ``respond(path, query, headers) -> (status, headers, body)`` on 127.0.0.1; yield (base_url, hits).

    ``status`` may be ``(code, reason phrase)``."""
    hits: list[dict[str, list[str]]] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):
            parts = urlsplit(self.path)
            query = parse_qs(parts.query)
            hits.append(query)
            status, headers, body = respond(parts.path, query, dict(self.headers))
            self.send_response(*status) if isinstance(status, tuple) else self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", hits
    finally:
        server.shutdown()
        server.server_close()


@contextlib.contextmanager
def raw_server(serve_connection: Callable[[socket.socket], None]):
    """Serve each TCP connection with ``serve_connection(conn)`` (after reading the request head) on
    127.0.0.1; yield the base URL. For answers ``http.server`` cannot give (trickled headers, lying lengths)."""
    listener = socket.create_server(("127.0.0.1", 0))
    stopping = threading.Event()

    def handle(conn: socket.socket) -> None:
        with conn:
            try:
                head = b""
                while b"\r\n\r\n" not in head:
                    data = conn.recv(65536)
                    if not data:
                        return
                    head += data
                serve_connection(conn)
            except OSError:
                pass

    def accept() -> None:
        while not stopping.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=handle, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stopping.set()
        listener.close()


def envelope(rows, code: int = 0) -> bytes:
    return json.dumps({"code": code, "result": rows, "cid": "c"}).encode()


@pytest.fixture(autouse=True)
def _capture_all_logs(caplog: pytest.LogCaptureFixture):
    caplog.set_level(logging.DEBUG)
    yield


# --- paging against the simulator -------------------------------------------------------------


def test_client_summary_week_returns_exactly_the_simulator_records(caplog):
    config = sim_config(campaigns_per_day=90, recipients_per_campaign=2)  # ~630 campaigns: two pages
    with SimulatorServer(config) as srv, make_client(srv) as client:
        pages = list(client.iter_summary_pages(WEEK_START, WEEK_END))
        expected = srv.simulator.summary_records(WEEK_START, WEEK_END)

    assert len(expected) > settings.PAGE_SIZE
    assert records_of(iter(pages)) == expected
    # a summary listing ends only at an empty page: 500 + the rest + 0
    assert [p.offset for p in pages] == [0, 500, len(expected)]
    assert [p.row_count for p in pages] == [500, len(expected) - 500, 0]
    assert {p.endpoint for p in pages} == {"summary"} and all(p.history_id is None for p in pages)
    assert client.stats.requests == 3 and client.stats.retries == 0
    assert client.stats.bytes == sum(p.nbytes for p in pages) > 0
    assert_no_token(TOKEN, None, caplog)


def test_client_detail_over_500_rows_returns_exactly_the_simulator_records():
    config = sim_config(campaigns_per_day=1, recipients_per_campaign=1234)
    with SimulatorServer(config) as srv, make_client(srv) as client:
        campaigns = srv.simulator.summary_records(WEEK_START, WEEK_END)
        campaign = max(campaigns, key=lambda c: c["totalRecipients"])
        pages = list(client.iter_detail_pages(campaign["id"]))
        expected = srv.simulator.detail_records(campaign["id"])

    assert len(expected) > settings.PAGE_SIZE
    assert records_of(iter(pages)) == expected
    assert [p.offset for p in pages] == list(range(0, len(expected), 500))
    assert all(p.endpoint == "detail" and p.history_id == campaign["id"] for p in pages)


def test_client_detail_of_exactly_500_rows_stops_on_the_empty_page():
    config = sim_config(campaigns_per_day=4, recipients_per_campaign=500)
    with SimulatorServer(config) as srv, make_client(srv) as client:
        campaigns = srv.simulator.summary_records(WEEK_START, WEEK_END)
        sizes = {c["id"]: len(srv.simulator.detail_records(c["id"])) for c in campaigns}
        exact = [cid for cid, n in sizes.items() if n == settings.PAGE_SIZE]
        if not exact:
            pytest.skip(f"simulator produced no campaign of exactly 500 rows: {sorted(set(sizes.values()))}")
        pages = list(client.iter_detail_pages(exact[0]))
        expected = srv.simulator.detail_records(exact[0])

    assert [len(p.records) for p in pages] == [500, 0]
    assert records_of(iter(pages)) == expected


def test_client_summary_of_an_empty_window_yields_one_empty_page():
    with SimulatorServer(sim_config()) as srv, make_client(srv) as client:
        pages = list(client.iter_summary_pages(NOW + timedelta(days=1), NOW + timedelta(days=2)))
    assert [len(p.records) for p in pages] == [0]
    assert client.stats.requests == 1


def test_client_summary_formats_rfc3339_utc_milliseconds():
    hk = datetime(2024, 5, 1, 8, 0, 0, 123456, tzinfo=__import__("zoneinfo").ZoneInfo("Asia/Hong_Kong"))
    assert format_rfc3339(hk) == "2024-05-01T00:00:00.123Z"
    assert format_rfc3339(datetime(2022, 11, 7, tzinfo=UTC)) == "2022-11-07T00:00:00.000Z"

    with local_server(lambda path, q, h: (200, {}, envelope([]))) as (base_url, hits):
        with CinnoxClient(base_url, "app", TOKEN, rate_limit_per_min=None) as client:
            list(client.iter_summary_pages(hk, hk + timedelta(days=1)))
    assert hits[0]["startAt"] == ["2024-05-01T00:00:00.123Z"]
    assert hits[0]["endAt"] == ["2024-05-02T00:00:00.123Z"]
    assert hits[0]["offset"] == ["0"] and hits[0]["limit"] == ["500"]


def test_client_naive_datetime_raises_value_error_before_any_request():
    with local_server(lambda path, q, h: (200, {}, envelope([]))) as (base_url, hits):
        with CinnoxClient(base_url, "app", TOKEN) as client:
            with pytest.raises(ValueError, match="naive"):
                client.iter_summary_pages(datetime(2024, 5, 1), datetime(2024, 5, 2, tzinfo=UTC))
    assert hits == []


def test_client_summary_of_a_clean_day_ends_with_one_empty_page():
    with SimulatorServer(sim_config()) as srv, make_client(srv) as client:
        pages = list(client.iter_summary_pages(WEEK_START, WEEK_END))
        expected = srv.simulator.summary_records(WEEK_START, WEEK_END)
    assert 0 < len(expected) < settings.PAGE_SIZE
    assert [p.row_count for p in pages] == [len(expected), 0]
    assert [p.offset for p in pages] == [0, len(expected)]
    assert client.stats.requests == 2


@pytest.mark.parametrize("cap", [1, 7, 10])
def test_client_summary_on_a_capped_server_lists_every_campaign(cap):
    # the server serves at most `cap` rows whatever limit=500 asks: short pages are not the end
    with SimulatorServer(sim_config(summary_page_cap=cap)) as srv, make_client(srv) as client:
        pages = list(client.iter_summary_pages(WEEK_START, WEEK_END))
        expected = srv.simulator.summary_records(WEEK_START, WEEK_END)
        served = srv.stats()["requests_by_endpoint"]["sent-campaigns-summary"]
    assert len(expected) >= 20 and records_of(iter(pages)) == expected
    full_pages = -(-len(expected) // cap)
    sizes = [min(cap, len(expected) - i * cap) for i in range(full_pages)]
    assert [p.row_count for p in pages] == [*sizes, 0]
    assert [p.offset for p in pages] == [min(i * cap, len(expected)) for i in range(full_pages + 1)]
    assert client.stats.requests == served == full_pages + 1


def test_client_summary_pages_past_short_pages_of_varying_size():
    rows = [{"id": f"c{i}"} for i in range(10)]
    sizes = iter([3, 1, 4, 2])  # a server whose page size wanders below the limit

    def respond(path, query, headers):
        offset = int(query["offset"][0])
        return 200, {}, envelope(rows[offset : offset + next(sizes, 500)])

    with local_server(respond) as (base_url, hits):
        with CinnoxClient(base_url, "app", TOKEN, rate_limit_per_min=None) as client:
            pages = list(client.iter_summary_pages(WEEK_START, WEEK_END))
    assert records_of(iter(pages)) == rows
    assert [q["offset"] for q in hits] == [["0"], ["3"], ["4"], ["8"], ["10"]]
    assert all(q["limit"] == ["500"] for q in hits) and pages[-1].row_count == 0


def _capped_detail(rows: list[dict], cap: int):
    def respond(path, query, headers):
        offset = int(query["offset"][0])
        return 200, {}, envelope(rows[offset : offset + min(cap, int(query["limit"][0]))])

    return respond


def test_client_detail_on_a_capped_server_with_expected_rows_lists_every_recipient():
    config = sim_config(campaigns_per_day=2, recipients_per_campaign=120, detail_page_cap=40)
    with SimulatorServer(config) as srv, make_client(srv) as client:
        for campaign in srv.simulator.summary_records(WEEK_START, WEEK_END):
            before = client.stats.requests
            pages = list(client.iter_detail_pages(campaign["id"], expected_rows=campaign["totalRecipients"]))
            expected = srv.simulator.detail_records(campaign["id"])
            total = campaign["totalRecipients"]
            assert len(expected) == total and records_of(iter(pages)) == expected
            # short pages of 40 until the summary's count is reached: no extra request
            assert client.stats.requests - before == len(pages) == -(-total // 40)
            assert [p.offset for p in pages] == list(range(0, total, 40))


def test_client_detail_without_expected_rows_stops_at_the_first_short_page():
    rows = [{"id": "c1", "recipient": f"+8529000{i:04d}"} for i in range(100)]
    with local_server(_capped_detail(rows, 40)) as (base_url, hits):
        with CinnoxClient(base_url, "app", TOKEN, rate_limit_per_min=None) as client:
            legacy = records_of(client.iter_detail_pages("h1"))
            complete = records_of(client.iter_detail_pages("h1", expected_rows=100))
    assert legacy == rows[:40]  # what today's rule loses on a capped server
    assert complete == rows
    assert [q["offset"] for q in hits] == [["0"], ["0"], ["40"], ["80"]]


def test_client_detail_at_an_exact_multiple_of_the_cap_stops_without_an_empty_page():
    rows = [{"id": "c1", "recipient": f"+8529000{i:04d}"} for i in range(80)]
    with local_server(_capped_detail(rows, 40)) as (base_url, hits):
        with CinnoxClient(base_url, "app", TOKEN, rate_limit_per_min=None) as client:
            pages = list(client.iter_detail_pages("h1", expected_rows=80))
    assert [p.row_count for p in pages] == [40, 40] and len(hits) == 2


@pytest.mark.parametrize(("size", "requests"), [(150, 1), (500, 2), (1000, 3)])
def test_client_detail_with_expected_rows_costs_no_extra_request_on_a_clean_server(size, requests):
    config = sim_config(campaigns_per_day=1, recipients_min=size, recipients_max=size)
    with SimulatorServer(config) as srv, make_client(srv) as client:
        campaign = srv.simulator.summary_records(WEEK_START, WEEK_START + timedelta(days=1))[0]
        assert campaign["totalRecipients"] == size
        with_count = list(client.iter_detail_pages(campaign["id"], expected_rows=size))
        after_first = client.stats.requests
        without = list(client.iter_detail_pages(campaign["id"]))
    expected = srv.simulator.detail_records(campaign["id"])
    assert records_of(iter(with_count)) == records_of(iter(without)) == expected
    assert after_first == requests and client.stats.requests == 2 * requests


def test_client_detail_listing_ending_below_expected_rows_stops_at_the_empty_page():
    rows = [{"id": "c1", "recipient": f"+8529000{i:04d}"} for i in range(3)]

    def truncated(path, query, headers):  # the first page, then empty pages
        return 200, {}, envelope(rows if query["offset"] == ["0"] else [])

    with local_server(truncated) as (base_url, hits):
        with CinnoxClient(base_url, "app", TOKEN, rate_limit_per_min=None) as client:
            pages = list(client.iter_detail_pages("h1", expected_rows=10))
    assert [p.row_count for p in pages] == [3, 0] and records_of(iter(pages)) == rows
    assert [q["offset"] for q in hits] == [["0"], ["3"]]


@pytest.mark.parametrize("listing", ["summary", "detail"])
def test_client_short_page_repeated_by_a_server_ignoring_offset_raises_payload_error(listing):
    def ignore_offset(path, query, headers):
        return 200, {}, envelope([{"id": "c1", "n": i} for i in range(3)])

    with local_server(ignore_offset) as (base_url, hits):
        with CinnoxClient(base_url, "app", TOKEN, rate_limit_per_min=None) as client:
            pages = (client.iter_summary_pages(WEEK_START, WEEK_END) if listing == "summary"
                     else client.iter_detail_pages("h1", expected_rows=10))
            with pytest.raises(PayloadError, match="repeats the previous page"):
                list(pages)
    assert [q["offset"] for q in hits] == [["0"], ["3"]]


@pytest.mark.parametrize("expected_rows", [-1, True, "5", 2.0])
def test_client_detail_expected_rows_must_be_a_non_negative_int(expected_rows):
    client = CinnoxClient("https://api.example.com", "app", TOKEN)
    with pytest.raises(ValueError, match="expected_rows"):
        client.iter_detail_pages("h1", expected_rows=expected_rows)
    client.close()


# --- body decoding ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b'{"a": 1}', {"a": 1}),
        (UTF8_BOM + b'{"a": [1, "x"]}', {"a": [1, "x"]}),
        (b'{"a": "smile \\ud83d"}', {"a": "smile \ud83d"}),
        (UTF8_BOM + b'{"a": "\\ud83d"}', {"a": "\ud83d"}),
        (b'{"n": 100000000000000000000}', {"n": 10**20}),
        (b'{"a": "\\ud83d\\ude00"}', {"a": "\U0001f600"}),  # a complete pair is fine for orjson too
    ],
)
def test_decode_json_body_decodes_what_the_body_is(content, expected):
    assert decode_json_body(content) == expected


@pytest.mark.parametrize(
    "content",
    [b"", UTF8_BOM, b'{"code": 0, "result": [{"id": ', UTF8_BOM + b'{"code": 0, "res', b'{"a": NaN}',
     b'{"a": Infinity}', b'{"a": "\xff"}', b"<html>502</html>", UTF8_BOM + UTF8_BOM + b"{}"],
)
def test_decode_json_body_refuses_what_is_not_json(content):
    with pytest.raises(ValueError, match="not valid JSON"):
        decode_json_body(content)


def test_client_bom_body_decodes_and_the_page_keeps_the_body_as_received():
    rows = [{"id": "c1", "recipient": "+85290000000"}]
    raw = UTF8_BOM + envelope(rows)
    with local_server(lambda p, q, h: (200, {}, raw)) as (base_url, hits):
        with CinnoxClient(base_url, "app", TOKEN, rate_limit_per_min=None) as client:
            (page,) = client.iter_detail_pages("h1")
    assert page.records == rows and len(hits) == 1 and client.stats.retries == 0
    assert page.body == raw and page.nbytes == len(raw)
    assert page.normalized_body == raw[len(UTF8_BOM):] and not page.normalized_body.startswith(UTF8_BOM)


def test_client_page_without_bom_has_the_body_as_its_normalized_body():
    raw = envelope([{"id": "c1"}])
    page = Page(endpoint="detail", offset=0, nbytes=len(raw), history_id="h1", body=raw,
                records=[{"id": "c1"}])
    assert page.normalized_body == raw


@pytest.mark.parametrize(
    ("status", "payload", "error"),
    [(400, {"code": 6451000, "message": "negative offset"}, BadRequestError),
     (200, {"code": 6450001, "message": "method not found"}, FatalError)],
)
def test_client_bom_error_envelope_keeps_its_code(status, payload, error):
    raw = UTF8_BOM + json.dumps(payload).encode()
    with local_server(lambda p, q, h: (status, {}, raw)) as (base_url, hits):
        with CinnoxClient(base_url, "app", TOKEN, rate_limit_per_min=None) as client:
            with pytest.raises(error) as info:
                client.get_json("/v1/x", {})
    assert info.value.code == payload["code"] and payload["message"] in str(info.value) and len(hits) == 1


def test_client_bom_throttle_envelope_under_http_200_is_retried_as_a_throttle():
    answers = iter([(200, {}, UTF8_BOM + b'{"code": 6451010, "message": "Too many requests"}'),
                    (200, {}, UTF8_BOM + envelope([]))])
    with local_server(lambda p, q, h: next(answers)) as (base_url, hits):
        with CinnoxClient(base_url, "app", TOKEN, backoff_max_s=0.01, rate_limit_per_min=None) as client:
            body, _ = client.get_json("/v1/x", {})
    assert body["result"] == [] and client.stats.throttles == 1 and len(hits) == 2


def test_client_lone_surrogate_escape_decodes_without_a_retry():
    raw = b'{"code": 0, "result": [{"id": "c1", "content": "Sale \\ud83d"}, {"id": "c2", "content": "ok"}]}'
    with local_server(lambda p, q, h: (200, {}, raw)) as (base_url, hits):
        with CinnoxClient(base_url, "app", TOKEN, rate_limit_per_min=None) as client:
            (page,) = client.iter_detail_pages("h1")
    assert [r["content"] for r in page.records] == ["Sale \ud83d", "ok"]
    assert page.body == raw and len(hits) == 1
    assert client.stats.retries == 0 and client.stats.as_dict()["errors"] == 0


@pytest.mark.parametrize(
    "bad", [b'{"code": 0, "result": [{"id": "c1", "content": "Sale \\ud83d', UTF8_BOM + b'{"code": 0, "res',
            b'{"code": 0, "result": [{"content": "\xed\xa0\xbd"}]}'],
)
def test_client_body_that_is_really_not_json_is_still_retried(bad):
    answers = iter([(200, {}, bad), (200, {}, envelope([{"id": "c1"}]))])
    with local_server(lambda p, q, h: next(answers)) as (base_url, hits):
        with CinnoxClient(base_url, "app", TOKEN, backoff_max_s=0.01, rate_limit_per_min=None) as client:
            (page,) = client.iter_detail_pages("h1")
    assert page.records == [{"id": "c1"}] and len(hits) == 2
    assert client.stats.retries == 1 and client.stats.as_dict()["errors_invalid_json"] == 1


# --- retries per fault kind -------------------------------------------------------------------


def _fault_workload(client: CinnoxClient, history_id: str) -> tuple[list[dict], list[dict]]:
    summary = records_of(client.iter_summary_pages(WEEK_START, WEEK_END))
    detail = records_of(client.iter_detail_pages(history_id))
    return summary, detail


@pytest.mark.parametrize("kind", sorted(ALL_FAULT_KINDS))
def test_client_fault_kind_is_retried_to_exactly_the_fault_free_records(kind, caplog):
    common = {"campaigns_per_day": 3, "recipients_per_campaign": 45, "slow_seconds": 2.0}
    with SimulatorServer(sim_config(**common)) as clean_srv, make_client(clean_srv, page_size=10) as clean:
        history_id = clean_srv.simulator.summary_records(WEEK_START, WEEK_END)[0]["id"]
        expected = _fault_workload(clean, history_id)

    faulty_config = sim_config(**common, fault_rate=0.3, fault_kinds=(kind,))
    read_timeout = 0.25 if kind == "slow" else 10.0  # below slow_seconds, so "slow" becomes a timeout
    # the faulty server reuses the warmed data model: only the injected faults can delay an answer
    with (
        SimulatorServer(faulty_config, simulator=clean_srv.simulator) as srv,
        make_client(srv, page_size=10, read_timeout=read_timeout) as client,
    ):
        got = _fault_workload(client, history_id)

    assert got == expected
    assert len(expected[0]) > 10 and len(expected[1]) > 10  # several pages of 10 each
    stats = client.stats.as_dict()
    assert stats["retries"] > 0 and stats["errors"] == stats["retries"]
    assert stats["requests"] == stats["retries"] + clean.stats.requests
    if kind in THROTTLE_KINDS:
        assert stats["throttles"] == stats["retries"]
    else:
        assert stats["throttles"] == 0
    assert all(isinstance(v, int | float) for v in stats.values())
    assert "CINNOX retry" in caplog.text
    assert_no_token(TOKEN, None, caplog)


def test_client_retry_after_header_is_honoured():
    slept: list[float] = []
    config = sim_config(fault_rate=0.5, fault_kinds=("429_retry_after",))
    with SimulatorServer(config) as srv, make_client(srv, sleep=slept.append, backoff_max_s=3600.0) as client:
        got = records_of(client.iter_summary_pages(WEEK_START, WEEK_END))
        expected = srv.simulator.summary_records(WEEK_START, WEEK_END)

    assert got == expected
    assert slept, "no 429 was injected"
    assert len(slept) == client.stats.throttles == client.stats.retries
    # the simulator's Retry-After is an integer number of seconds >= 1; jitter would give floats < 0.02
    assert all(s >= 1 and s == int(s) for s in slept), slept


def test_client_retry_after_is_capped_at_backoff_max():
    slept: list[float] = []
    config = sim_config(fault_rate=0.5, fault_kinds=("429_retry_after",))
    with SimulatorServer(config) as srv, make_client(srv, sleep=slept.append, backoff_max_s=0.25) as client:
        list(client.iter_summary_pages(WEEK_START, WEEK_END))
    assert slept and all(s == 0.25 for s in slept), slept


def test_client_retry_after_http_date_is_honoured():
    slept: list[float] = []
    calls = {"n": 0}

    def respond(path, query, headers):
        calls["n"] += 1
        if calls["n"] == 1:
            when = format_datetime(datetime.now(UTC) + timedelta(seconds=20), usegmt=True)
            return 429, {"Retry-After": when}, b'{"code": 6451010, "message": "Too many requests"}'
        return 200, {}, envelope([{"id": "a"}])

    with local_server(respond) as (base_url, _hits):
        with CinnoxClient(base_url, "app", TOKEN, sleep=slept.append, rate_limit_per_min=None) as client:
            rows = records_of(client.iter_detail_pages("h1"))
    assert rows == [{"id": "a"}]
    assert len(slept) == 1 and 18 <= slept[0] <= 20


def test_client_retry_after_on_503_is_honoured():
    slept: list[float] = []
    answers = iter([(503, {"Retry-After": "3"}, b"<html>busy</html>"), (200, {}, envelope([]))])
    with local_server(lambda p, q, h: next(answers)) as (base_url, hits):
        with CinnoxClient(base_url, "app", TOKEN, sleep=slept.append, rate_limit_per_min=None) as client:
            body, nbytes = client.get_json("/v1/x", {})
    assert body["result"] == [] and nbytes > 0
    assert slept == [3.0] and len(hits) == 2
    assert client.stats.throttles == 0 and client.stats.as_dict()["errors_http_503"] == 1


def test_client_throttle_without_retry_after_uses_jittered_backoff():
    slept: list[float] = []
    config = sim_config(fault_rate=0.5, fault_kinds=("429_no_retry_after",))
    with (
        SimulatorServer(config) as srv,
        make_client(srv, sleep=slept.append, backoff_base_s=0.1, backoff_max_s=0.4) as client,
    ):
        list(client.iter_summary_pages(WEEK_START, WEEK_END))
    assert slept and all(0 <= s <= 0.4 for s in slept)
    assert len(set(slept)) == len(slept)  # jittered, not a constant


# --- fatal errors -----------------------------------------------------------------------------


def test_client_bad_token_raises_auth_error_after_one_request(caplog):
    wrong = "wrong-token-also-secret-42"
    with SimulatorServer(sim_config()) as srv, make_client(srv, token=wrong) as client:
        with pytest.raises(AuthError) as info:
            list(client.iter_summary_pages(WEEK_START, WEEK_END))

    error = info.value
    assert error.status in (401, 403)
    assert "CINNOX_APP_TOKEN" in str(error) and "\n" not in str(error)
    assert client.stats.requests == 1 and client.stats.retries == 0
    assert not isinstance(error, RetriableError)
    assert_no_token(wrong, error, caplog)
    assert_no_token(TOKEN, error, caplog)


def test_client_end_before_start_raises_bad_request_6451000_without_retry(caplog):
    with SimulatorServer(sim_config()) as srv, make_client(srv) as client:
        with pytest.raises(BadRequestError) as info:
            list(client.iter_summary_pages(WEEK_END, WEEK_START))

    error = info.value
    assert error.code == settings.CODE_BAD_PARAMETERS and error.status == 400
    assert str(error).startswith('CINNOX 400 code=6451000 "')
    assert f"on GET /v1/api/apps/{srv.app_id}/data/sent-campaigns-summary?startAt=" in str(error)
    assert client.stats.requests == 1 and client.stats.retries == 0
    assert "CINNOX retry" not in caplog.text
    assert_no_token(TOKEN, error, caplog)


def test_client_server_down_raises_retries_exhausted_within_bound(caplog):
    with SimulatorServer(sim_config(down=True)) as srv, make_client(srv, max_attempts=4) as client:
        started = time.monotonic()
        with pytest.raises(RetriesExhaustedError) as info:
            list(client.iter_summary_pages(WEEK_START, WEEK_END))
        elapsed = time.monotonic() - started

    error = info.value
    assert error.attempts == 4 and client.stats.requests == 4 and client.stats.retries == 3
    assert isinstance(error.last_error, RetriableError)
    assert 0 < error.elapsed_s <= elapsed <= client.worst_case_retry_seconds()
    assert "gave up after 4 attempts" in str(error)
    assert caplog.text.count("CINNOX retry") == 3
    assert_no_token(TOKEN, error, caplog)


def test_client_connection_refused_raises_retries_exhausted_without_unlisted_query_values(caplog):
    with local_server(lambda p, q, h: (200, {}, b"")) as (base_url, _hits):
        pass  # the port is closed again: connections are refused
    with CinnoxClient(
        base_url,
        "app",
        TOKEN,
        max_attempts=3,
        backoff_base_s=0.001,
        backoff_max_s=0.01,
        rate_limit_per_min=None,
    ) as client:
        with pytest.raises(RetriesExhaustedError) as info:
            client.get_json("/v1/x", {"offset": 0, "phone": "+85291234567"})
    assert info.value.status is None and client.stats.requests == 3
    assert client.stats.as_dict()["errors_connection"] == 3
    assert "Connection refused" in str(info.value) and "/v1/x?offset=0" in str(info.value)
    # only offset/limit/startAt/endAt/historyID values may reach error texts and logs
    assert_no_token("85291234567", info.value, caplog)
    assert_no_token(TOKEN, info.value, caplog)


def test_client_body_code_under_http_200_is_authoritative():
    bodies = {
        "/fatal": (200, b'{"code": 6450001, "message": "method not found"}'),
        "/bad": (200, b'{"code": 6451000, "message": "negative offset"}'),
        "/notjson": (200, b'{"code": 0, "result": [{"id": '),
    }
    with local_server(lambda p, q, h: (bodies[p][0], {}, bodies[p][1])) as (base_url, hits):
        with CinnoxClient(
            base_url, "app", TOKEN, max_attempts=2, backoff_max_s=0.01, rate_limit_per_min=None
        ) as c:
            with pytest.raises(FatalError) as fatal:
                c.get_json("/fatal", {})
            with pytest.raises(BadRequestError) as bad:
                c.get_json("/bad", {})
            with pytest.raises(RetriesExhaustedError) as truncated:
                c.get_json("/notjson", {})
    assert fatal.value.code == 6450001 and type(fatal.value) is FatalError
    assert bad.value.code == 6451000 and bad.value.status == 200
    assert "not valid JSON" in str(truncated.value.last_error)
    assert len(hits) == 1 + 1 + 2


# --- paging guards ----------------------------------------------------------------------------


def test_client_endless_paging_raises_payload_error():
    def ignore_offset(path, query, headers):
        limit = int(query["limit"][0])
        return 200, {}, envelope([{"id": "c1", "n": i} for i in range(limit)])

    with local_server(ignore_offset) as (base_url, hits):
        with CinnoxClient(base_url, "app", TOKEN, page_size=5, rate_limit_per_min=None) as client:
            pages = client.iter_detail_pages("h1")
            first = next(pages)
            with pytest.raises(PayloadError, match="repeats the previous page"):
                next(pages)
    assert len(first.records) == 5
    assert [q["offset"] for q in hits] == [["0"], ["5"]]


@pytest.mark.parametrize(
    "body",
    [b'{"code": 0}', b'{"code": 0, "result": {"id": 1}}', b'{"code": 0, "result": [1, 2]}', b"[]"],
)
def test_client_unexpected_envelope_raises_payload_error(body):
    with local_server(lambda p, q, h: (200, {}, body)) as (base_url, hits):
        with CinnoxClient(base_url, "app", TOKEN, rate_limit_per_min=None) as client:
            with pytest.raises(PayloadError):
                list(client.iter_detail_pages("h1"))
    assert len(hits) == 1


@pytest.mark.parametrize(("body", "said"), [(b'{"code": 0, "result": null}', "'result' is null, expected a list"),
                                            (b'{"code": 0}', "'result' is missing, expected a list"),
                                            (b'{"code": 0, "result": "x"}', "'result' is str, expected a list")])
def test_client_payload_error_says_what_result_was(body, said):
    with local_server(lambda p, q, h: (200, {}, body)) as (base_url, _hits):
        with CinnoxClient(base_url, "app", TOKEN, rate_limit_per_min=None) as client:
            with pytest.raises(PayloadError) as info:
                list(client.iter_summary_pages(WEEK_START, WEEK_END))
    assert f'"{said}"' in str(info.value) and info.value.kind == "payload"


def test_client_pages_carry_the_body_as_received_and_its_records():
    rows = [{"id": f"r{i}", "recipient": "+85290000000"} for i in range(3)]
    raw = json.dumps({"code": 0, "result": rows, "cid": "c"}, indent=1).encode()
    with local_server(lambda p, q, h: (200, {}, raw)) as (base_url, _hits):
        with CinnoxClient(base_url, "app", TOKEN, rate_limit_per_min=None) as client:
            (page,) = client.iter_detail_pages("h1")
    assert page.body == raw and page.nbytes == len(raw)
    assert page.records == rows and page.row_count == 3
    assert (page.endpoint, page.offset, page.history_id) == ("detail", 0, "h1")
    assert "+8529" not in repr(page) and not hasattr(page, "decoded")


# --- pacing -----------------------------------------------------------------------------------


def test_rate_limiter_keeps_n_starts_per_window_across_threads():
    limiter = RateLimiter(600)  # one start per 0.1 s: at most 5 in any 0.5 s window
    starts: list[float] = []
    lock = threading.Lock()
    deadline = time.monotonic() + 1.0

    def worker():
        for _ in range(100):  # bounded, so a broken limiter fails fast instead of spinning
            if time.monotonic() >= deadline:
                break
            limiter.acquire()
            with lock:
                starts.append(time.monotonic())

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    starts.sort()
    window = 0.5 - 0.03  # 30 ms allowance for thread wake-up latency
    busiest = max(sum(1 for s in starts if t0 <= s < t0 + window) for t0 in starts)
    assert busiest <= 5, starts
    # shared: 4 unpaced threads would start thousands in 1 s, 4 separately paced ones about 40
    in_run = [s for s in starts if s < deadline]
    assert 9 <= len(in_run) <= 11, len(in_run)


def test_rate_limiter_disabled_never_waits():
    for limiter in (RateLimiter(None), RateLimiter(0)):
        started = time.monotonic()
        waits = [limiter.acquire() for _ in range(1000)]
        assert sum(waits) == 0 and time.monotonic() - started < 0.5


def test_client_rate_limit_paces_requests_and_records_wait():
    with local_server(lambda p, q, h: (200, {}, envelope([]))) as (base_url, hits):
        with CinnoxClient(base_url, "app", TOKEN, rate_limit_per_min=1200) as client:
            started = time.monotonic()
            for _ in range(6):
                client.get_json("/v1/x", {})
            elapsed = time.monotonic() - started
    assert len(hits) == 6
    assert elapsed >= 5 * 0.05 - 0.01
    assert client.stats.wait_s > 0.1 and client.stats.as_dict()["wait_s"] > 0.1


def test_client_default_rate_limit_comes_from_settings():
    client = CinnoxClient("https://example.invalid", "app", TOKEN)
    assert client.rate_limiter.requests_per_minute == settings.DEFAULT_RATE_LIMIT_PER_MIN
    assert client.rate_limiter.interval_s == pytest.approx(60 / settings.DEFAULT_RATE_LIMIT_PER_MIN)
    client.close()


# --- configuration, bounds, errors, stats ----------------------------------------------------


@pytest.mark.parametrize(
    "base_url",
    [
        "",
        "ftp://host",
        "host:8080",
        "https://",
        f"https://user:{TOKEN}@host",
        "https://host/?a=1",
        "https://h:99999",
    ],
)
def test_client_bad_base_url_raises_config_error_naming_the_variable(base_url):
    with pytest.raises(ConfigError) as info:
        CinnoxClient(base_url, "app", TOKEN)
    assert "CINNOX_BASE_URL" in str(info.value) and "\n" not in str(info.value)
    assert TOKEN not in str(info.value)


@pytest.mark.parametrize("token", ["tok en-secret-1", "tok-secret\r\n-1", "tok-\x00-secret-1", "tok-sécret-12",
                                   "short-1"])
def test_client_refuses_a_malformed_token_without_quoting_it(token):
    with pytest.raises(ConfigError) as info:
        CinnoxClient("https://api.example.com", "app", token)
    assert str(info.value).startswith("CINNOX_APP_TOKEN ") and "\n" not in str(info.value)
    assert token.strip() not in str(info.value) + repr(info.value)


def test_client_redacts_the_token_before_cutting_a_long_message(caplog):
    # the server echoes the token where the one-line message would be cut, and in its reason phrase
    echo = "x" * 285 + TOKEN + " tail"
    answers = iter([((503, f"Busy {TOKEN}"), {}, b""),
                    (400, {}, json.dumps({"code": 6451000, "message": echo}).encode())])
    with local_server(lambda p, q, h: next(answers)) as (base_url, _hits):
        with CinnoxClient(base_url, "app", TOKEN, backoff_max_s=0.01, rate_limit_per_min=None) as client:
            with pytest.raises(BadRequestError) as info:
                client.get_json("/v1/x", {})
    assert "CINNOX retry" in caplog.text and "Busy <redacted>" in caplog.text
    assert "x" * 285 + "<redacted>" in str(info.value)
    for prefix in (TOKEN[:6], TOKEN[-6:]):
        assert prefix not in str(info.value) and prefix not in caplog.text
    assert_no_token(TOKEN, info.value, caplog)


class _HeaderRefusingAdapter(HTTPAdapter):
    """A transport that fails the way http.client does on a header value it cannot send."""

    def __init__(self) -> None:
        super().__init__()
        self.sent = 0

    def send(self, request, **kwargs):
        self.sent += 1
        raise ValueError(f"Invalid header value {request.headers['Authorization'].encode()!r}")


def test_client_error_raised_while_building_the_request_is_fatal_and_never_carries_the_header(caplog):
    adapter = _HeaderRefusingAdapter()
    session = requests.Session()
    session.mount("https://", adapter)
    client = CinnoxClient("https://api.example.com", "app", TOKEN, session=session, rate_limit_per_min=None)
    with pytest.raises(FatalError) as info:
        client.get_json("/v1/x", {})
    error = info.value
    assert "could not be built (ValueError)" in str(error) and "CINNOX_APP_TOKEN" in str(error)
    assert error.kind == "request" and error.__context__ is None and error.__cause__ is None
    assert adapter.sent == 1 and client.stats.as_dict()["errors_request"] == 1 and client.stats.retries == 0
    assert_no_token(TOKEN, error, caplog)
    assert TOKEN not in pickle.dumps(error).decode("latin-1")


def test_client_empty_credentials_raise_config_error_naming_the_variable():
    with pytest.raises(ConfigError, match="CINNOX_APP_TOKEN"):
        CinnoxClient("https://api.example.com", "app", "  ")
    with pytest.raises(ConfigError, match="CINNOX_APP_ID"):
        CinnoxClient("https://api.example.com", "", TOKEN)


def test_client_accepts_base_url_with_port_and_prefix_and_sends_headers():
    seen: list[dict] = []

    def respond(path, query, headers):
        seen.append({"path": path, **headers})
        return 200, {}, envelope([])

    with local_server(respond) as (base_url, _hits):
        with CinnoxClient(base_url + "/prefix/", "my app", TOKEN, rate_limit_per_min=None) as client:
            list(client.iter_detail_pages("h1"))
            assert TOKEN not in repr(client)
    assert seen[0]["path"] == "/prefix/v1/api/apps/my%20app/data/sent-campaigns-detail"
    assert seen[0]["Authorization"] == f"Bearer {TOKEN}"
    assert seen[0]["Content-Type"] == "application/json" and seen[0]["accept"] == "application/json"


def test_client_worst_case_retry_seconds_with_defaults():
    client = CinnoxClient("https://api.example.com", "app", TOKEN)
    # 6 attempts x (5 s connect + 30 s read) + 5 sleeps x 30 s + 6 limiter slots of 60/480 s
    assert client.worst_case_retry_seconds() == pytest.approx(6 * 35 + 5 * 30 + 6 * 60 / 480)
    client.close()


def test_client_worst_case_retry_seconds_uses_the_request_deadline():
    with CinnoxClient("https://api.example.com", "app", TOKEN, read_timeout=30, request_deadline=2,
                      max_attempts=3, backoff_max_s=1, rate_limit_per_min=None) as client:
        assert client.worst_case_retry_seconds() == pytest.approx(3 * 2 + 2 * 1)
    with CinnoxClient("https://api.example.com", "app", TOKEN, connect_timeout=1, read_timeout=4) as client:
        assert client.request_deadline == 5.0  # by default connect + read timeout: the bound keeps its value


@pytest.mark.parametrize(("options", "variable"), [({"request_deadline": 0}, "request_deadline"),
                                                   ({"max_response_mb": -1}, "max_response_mb")])
def test_client_refuses_a_non_positive_deadline_or_cap(options, variable):
    with pytest.raises(ConfigError, match=variable):
        CinnoxClient("https://api.example.com", "app", TOKEN, **options)


def _trickle_headers(conn: socket.socket) -> None:
    """A status line, then one header byte every 20 ms, forever: each read gets a byte, none times out."""
    conn.sendall(b"HTTP/1.1 200 OK\r\nX-Slow: ")
    while True:
        time.sleep(0.02)
        conn.sendall(b"z")


def test_client_trickled_headers_fail_at_the_request_deadline_within_the_bound(caplog):
    with raw_server(_trickle_headers) as base_url, CinnoxClient(
        base_url, "app", TOKEN, read_timeout=1, request_deadline=0.5, max_attempts=2, backoff_base_s=0.001,
        backoff_max_s=0.01, rate_limit_per_min=None,
    ) as client:
        started = time.monotonic()
        with pytest.raises(RetriesExhaustedError) as info:
            client.get_json("/v1/x", {"offset": 0})
        elapsed = time.monotonic() - started
    assert 2 * 0.5 <= elapsed <= client.worst_case_retry_seconds() + 0.5
    error = info.value
    assert error.last_error.kind == "deadline" and error.status is None  # no headers ever completed
    assert "no complete response within the 0.5 s request deadline (CINNOX_REQUEST_DEADLINE_S)" in str(error)
    assert client.stats.as_dict()["errors_deadline"] == 2
    assert_no_token(TOKEN, error, caplog)


def _announce_a_huge_body(conn: socket.socket) -> None:
    """Headers announcing 3 MB, then a few bytes and silence (a client reading the body would stall)."""
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 3145728\r\n\r\n{")
    time.sleep(5)


def test_client_refuses_a_body_whose_content_length_is_over_the_cap_without_reading_it():
    with raw_server(_announce_a_huge_body) as base_url, CinnoxClient(
        base_url, "app", TOKEN, read_timeout=2, max_response_mb=2, max_attempts=2, backoff_max_s=0.01,
        rate_limit_per_min=None,
    ) as client:
        started = time.monotonic()
        with pytest.raises(RetriesExhaustedError) as info:
            client.get_json("/v1/x", {})
        assert time.monotonic() - started < 1.0  # refused from the headers: no read timeout was waited for
    assert info.value.last_error.kind == "too_large" and info.value.status == 200
    assert info.value.last_error.cinnox_message == "response body larger than 2 MB (CINNOX_MAX_RESPONSE_MB)"
    assert client.stats.requests == 2 and client.stats.bytes == 0


def _send_cap_plus(extra: int) -> Callable[[socket.socket], None]:
    """A close-delimited JSON body of exactly 1 MB + ``extra`` bytes (no Content-Length)."""
    def serve(conn: socket.socket) -> None:
        head, tail = b'{"code":0,"result":[],"pad":"', b'"}'
        body = head + b"x" * (2**20 + extra - len(head) - len(tail)) + tail
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n" + body)
    return serve


@pytest.mark.parametrize(("extra", "refused"), [(0, False), (1, True)])
def test_client_body_cap_is_exact_for_a_body_without_content_length(extra, refused):
    with raw_server(_send_cap_plus(extra)) as base_url, CinnoxClient(
        base_url, "app", TOKEN, max_response_mb=1, max_attempts=1, rate_limit_per_min=None
    ) as client:
        if refused:
            with pytest.raises(RetriesExhaustedError) as info:
                client.get_json("/v1/x", {})
            assert info.value.last_error.kind == "too_large"
        else:
            body, nbytes = client.get_json("/v1/x", {})
            assert nbytes == 2**20 and body["result"] == []


def test_errors_str_is_one_line_with_code_and_message():
    error = BadRequestError(
        "endAt is prior\nto startAt",
        status=400,
        code=6451000,
        url="/v1/api/apps/x/data/sent-campaigns-summary",
    )
    assert (
        str(error)
        == 'CINNOX 400 code=6451000 "endAt is prior to startAt" on GET /v1/api/apps/x/data/sent-campaigns-summary'
    )
    throttled = ThrottledError("Too many requests", status=429, retry_after=2.0, url="/p")
    exhausted = RetriesExhaustedError(attempts=3, elapsed_s=1.25, last_error=throttled)
    assert str(exhausted).startswith(
        "CINNOX gave up after 3 attempts in 1.2s on GET /p; last error: CINNOX 429"
    )
    busy = RetriableError("busy", status=503, retry_after=3.0, kind="http_503", url="/p")
    for err in (error, throttled, exhausted, busy, AuthError("no", status=401, url="/p"), PayloadError("x")):
        assert isinstance(err, CinnoxError) and isinstance(err, CampaignPipelineError)
        clone = pickle.loads(pickle.dumps(err))
        assert type(clone) is type(err) and str(clone) == str(err) and clone.kind == err.kind
    assert pickle.loads(pickle.dumps(busy)).retry_after == 3.0 and "retry_after" not in str(busy)
    assert issubclass(ThrottledError, RetriableError) and issubclass(AuthError, FatalError)
    assert not issubclass(PayloadError, RetriableError | FatalError)


def test_request_stats_merge_snapshot_and_as_dict():
    a, b = RequestStats(), RequestStats()
    a.add(requests=2, retries=1, nbytes=10, error="http_503")
    b.add(requests=1, throttles=1, wait_s=0.5, error="http_429")
    b.add(error="http_503")
    snap = a.snapshot()
    a.merge(b)
    assert snap.requests == 2 and snap.errors == {"http_503": 1}
    assert a.as_dict() == {
        "requests": 3,
        "retries": 1,
        "throttles": 1,
        "bytes": 10,
        "errors": 3,
        "wait_s": 0.5,
        "errors_http_429": 1,
        "errors_http_503": 2,
    }
