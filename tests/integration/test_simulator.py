"""Tests of the CINNOX simulator: determinism, windows, paging, validation, auth, data rules, ground truth,
odd records, fault injection, rate limiting, the down switch, the misbehaving-server modes and the
standalone command."""

from __future__ import annotations

import ast
import http.client
import itertools
import json
import math
import re
import signal
import subprocess
import sys
import time
from collections import Counter, defaultdict
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
import requests

from campaign_pipeline.simulator import (
    ALL_FAULT_KINDS,
    CinnoxSimulator,
    SimulatorConfig,
    SimulatorServer,
    count_sms_segments,
    day_bounds_utc,
)
from campaign_pipeline.simulator.__main__ import build_parser, config_from_args

NOW = datetime(2024, 5, 20, tzinfo=UTC)
DAY = date(2024, 5, 1)
SUMMARY = "sent-campaigns-summary"
DETAIL = "sent-campaigns-detail"
# Typed in from the vendor page, independently of the simulator's own constant.
VENDOR_FAILED_REASONS = {
    "Error Code: 7061120 - 360Dialog bad request",
    "Error Code: 7061123 360dialog unauthorized",
    "Error Code: 7061124 - 360dialog forbidden",
    "Error Code: 7061125 - 360dialog not found",
    "Error Code: 3120410 - 360dialog whatsapp 24hr window error",
    "Error Code: 7061121 - 360dialog internal server error",
    "Error Code: 7061122 - 360dialog server timeout",
    "Error Code: 7061126 - 360dialog unknown error",
}
RFC3339_MILLIS_Z = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")


# ------------------------------------------------------------------------------------- helpers


def _url(server: SimulatorServer, endpoint: str, app_id: str | None = None) -> str:
    return f"{server.base_url}/v1/api/apps/{app_id or server.app_id}/data/{endpoint}"


def _get(
    server: SimulatorServer, endpoint: str, token: str | None = None, **params: Any
) -> requests.Response:
    headers = {"Authorization": f"Bearer {token or server.token}", "accept": "application/json"}
    return requests.get(_url(server, endpoint), params=params, headers=headers, timeout=10)


def _iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def _summary(server: SimulatorServer, start: datetime, end: datetime) -> list[dict[str, Any]]:
    response = _get(server, SUMMARY, startAt=_iso(start), endAt=_iso(end), limit=500)
    assert response.status_code == 200
    return response.json()["result"]


def _all_details(server: SimulatorServer, history_id: str, limit: int = 500) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    offset = 0
    while True:
        page = _get(server, DETAIL, historyID=history_id, offset=offset, limit=limit).json()["result"]
        rows.extend(page)
        if len(page) < limit:
            return rows
        offset += limit


def _ts(text: str) -> datetime:
    return datetime.fromisoformat(text)


def _day_window(day: date) -> tuple[datetime, datetime]:
    return day_bounds_utc(day)


@pytest.fixture(scope="module")
def server():
    with SimulatorServer(SimulatorConfig(now=NOW)) as srv:
        yield srv


@pytest.fixture(scope="module")
def day_rows(server):
    """Summary and all detail rows of DAY from the clean server."""
    start, end = _day_window(DAY)
    summary = [r for r in _summary(server, start, end) if _ts(r["date"]) < end]
    details = {r["id"]: _all_details(server, r["id"]) for r in summary}
    return summary, details


@pytest.fixture(scope="module")
def odd_server():
    with SimulatorServer(SimulatorConfig(now=NOW, odd_records=True)) as srv:
        yield srv


@pytest.fixture(scope="module")
def odd_day(odd_server):
    start, end = _day_window(DAY)
    summary = [r for r in _summary(odd_server, start, end) if _ts(r["date"]) < end]
    rows = [row for r in summary for row in _all_details(odd_server, r["id"])]
    return summary, rows


# ------------------------------------------------------------------------------------- determinism


def test_simulator_same_seed_gives_same_bytes(server):
    start, end = _day_window(DAY)
    params = {"startAt": _iso(start), "endAt": _iso(end), "limit": 500}
    with (
        SimulatorServer(SimulatorConfig(now=NOW)) as twin,
        SimulatorServer(SimulatorConfig(now=NOW, seed=8)) as other,
    ):
        first = _get(server, SUMMARY, **params).content
        assert first == _get(twin, SUMMARY, **params).content
        history_id = orjson.loads(first)["result"][0]["id"]
        assert (
            _get(server, DETAIL, historyID=history_id, limit=500).content
            == _get(twin, DETAIL, historyID=history_id, limit=500).content
        )
        assert _get(other, SUMMARY, **params).content != first


# ------------------------------------------------------------------------------------- windows


def test_summary_end_at_is_inclusive(server, day_rows):
    summary, _ = day_rows
    record = summary[len(summary) // 2]
    result = _get(server, SUMMARY, startAt=record["date"], endAt=record["date"]).json()["result"]
    assert [r["id"] for r in result] == [record["id"]]


def test_summary_midnight_campaign_appears_in_both_adjacent_windows(server):
    for offset in range(14):
        day = DAY + timedelta(days=offset)
        midnight, next_midnight = _day_window(day)
        ids_today = {r["id"]: r["date"] for r in _summary(server, midnight, next_midnight)}
        at_midnight = [i for i, d in ids_today.items() if d == _iso(midnight)]
        if at_midnight:
            previous = {r["id"] for r in _summary(server, midnight - timedelta(days=1), midnight)}
            assert at_midnight[0] in previous
            return
    pytest.fail("no campaign at 00:00:00.000Z within two weeks")


def test_summary_sorted_and_never_after_now():
    now = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    with SimulatorServer(SimulatorConfig(now=now)) as srv:
        records = _summary(srv, datetime(2024, 4, 30, tzinfo=UTC), datetime(2024, 5, 3, tzinfo=UTC))
    keys = [(_ts(r["date"]), r["id"]) for r in records]
    assert keys == sorted(keys)
    assert keys and max(k[0] for k in keys) <= now
    assert any(k[0].date() == date(2024, 5, 1) for k in keys)


# ------------------------------------------------------------------------------------- paging


def test_detail_paging_by_offset_and_limit_covers_every_row(server, day_rows):
    summary, details = day_rows
    history_id = summary[0]["id"]
    paged = _all_details(server, history_id, limit=7)
    assert paged == details[history_id]
    assert len(paged) == summary[0]["totalRecipients"]
    second = _get(server, DETAIL, historyID=history_id, offset=7, limit=7).json()["result"]
    assert second == details[history_id][7:14]


def test_detail_default_limit_is_50(server, day_rows):
    summary, details = day_rows
    big = next(r for r in summary if r["totalRecipients"] > 50)
    assert _get(server, DETAIL, historyID=big["id"]).json()["result"] == details[big["id"]][:50]


def test_detail_campaign_of_exactly_500_rows_gives_full_page_then_empty_page():
    config = SimulatorConfig(now=NOW, recipients_per_campaign=400, campaigns_per_day=2)
    with SimulatorServer(config) as srv:
        week = _summary(srv, datetime(2024, 5, 1, tzinfo=UTC), datetime(2024, 5, 8, tzinfo=UTC))
        exact = [r for r in week if r["totalRecipients"] == 500]
        assert exact, "a week with mean 400 must contain a campaign of exactly 500 rows"
        first = _get(srv, DETAIL, historyID=exact[0]["id"], offset=0, limit=500).json()
        second = _get(srv, DETAIL, historyID=exact[0]["id"], offset=500, limit=500).json()
    assert len(first["result"]) == 500
    assert second == {"code": 0, "result": [], "cid": second["cid"]}


def test_summary_week_with_mean_400_has_a_campaign_over_500_rows():
    sim = CinnoxSimulator(SimulatorConfig(now=NOW, recipients_per_campaign=400, campaigns_per_day=1))
    for start in (date(2024, 4, 1), date(2024, 5, 8)):
        records = sim.summary_records(*_day_window(start)[:1], _day_window(start + timedelta(days=6))[1])
        assert max(r["totalRecipients"] for r in records) > 500


def test_detail_unknown_history_id_returns_empty_result(server):
    body = _get(server, DETAIL, historyID="0123456789abcdef01234567").json()
    assert body["code"] == 0 and body["result"] == []


# ------------------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("endpoint", "params", "message"),
    [
        (SUMMARY, {"endAt": "2024-05-01T00:00:00.000Z"}, "missing one of startAt, endAt"),
        (SUMMARY, {"startAt": "2024-05-01T00:00:00.000Z"}, "missing one of startAt, endAt"),
        (SUMMARY, {"startAt": "yesterday", "endAt": "2024-05-01T00:00:00.000Z"}, None),
        (SUMMARY, {"startAt": "2024-05-01T00:00:00.000Z", "endAt": "2024-05-02"}, None),
        (
            SUMMARY,
            {"startAt": "2024-05-02T00:00:00.000Z", "endAt": "2024-05-01T00:00:00.000Z"},
            "endAt is prior to startAt",
        ),
        (
            SUMMARY,
            {"startAt": "2024-05-01T00:00:00Z", "endAt": "2024-05-02T00:00:00Z", "offset": -1},
            "negative offset",
        ),
        (
            SUMMARY,
            {"startAt": "2024-05-01T00:00:00Z", "endAt": "2024-05-02T00:00:00Z", "limit": -1},
            "negative limit",
        ),
        (
            SUMMARY,
            {"startAt": "2024-05-01T00:00:00Z", "endAt": "2024-05-02T00:00:00Z", "limit": 501},
            "exceed maximum limit 500",
        ),
        (DETAIL, {"historyID": "x", "limit": 501}, "exceed maximum limit 500"),
        (DETAIL, {"historyID": "x", "offset": -5}, "negative offset"),
        (DETAIL, {"limit": 10}, "missing historyID"),
    ],
)
def test_validation_errors_return_400_with_code_6451000(server, endpoint, params, message):
    response = _get(server, endpoint, **params)
    assert response.status_code == 400
    body = response.json()
    assert body["code"] == 6451000
    if message is not None:
        assert body["message"] == message


@pytest.mark.parametrize("authorization", [None, "Bearer wrong", "bearer sim-token", "sim-token"])
def test_auth_bad_token_returns_401(server, authorization):
    headers = {} if authorization is None else {"Authorization": authorization}
    response = requests.get(_url(server, DETAIL), params={"historyID": "x"}, headers=headers, timeout=10)
    assert response.status_code == 401
    assert response.json() == {"code": 6450401, "message": "Unauthorized"}


def test_routing_unknown_app_and_unknown_path_return_404(server):
    headers = {"Authorization": f"Bearer {server.token}"}
    app = requests.get(
        _url(server, DETAIL, app_id="other-app"), params={"historyID": "x"}, headers=headers, timeout=10
    )
    assert app.status_code == 404 and app.json()["code"] == 6450404
    path = requests.get(
        f"{server.base_url}/v1/api/apps/{server.app_id}/data/nope", headers=headers, timeout=10
    )
    assert path.status_code == 404
    assert path.json() == {"code": 6450001, "message": "method not found"}


# ------------------------------------------------------------------------------------- data rules


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a" * 160, 1),
        ("a" * 161, 2),
        ("a" * 306, 2),
        ("a" * 307, 3),
        ("中" * 70, 1),
        ("中" * 71, 2),
        ("中" * 134, 2),
        ("中" * 135, 3),
        ("a" * 69 + "’", 1),
        ("a" * 70 + "’", 2),
        ("", 1),
    ],
)
def test_count_sms_segments_follows_char_limits(text, expected):
    assert count_sms_segments(text) == expected


def test_detail_num_sms_follows_rules_for_served_content(day_rows):
    _, details = day_rows
    sms_rows = [row for rows in details.values() for row in rows if "content" in row]
    assert sms_rows
    seen = set()
    for row in sms_rows:
        text = row["content"]
        if text.isascii():
            expected = 1 if len(text) <= 160 else math.ceil(len(text) / 153)
        else:
            expected = 1 if len(text) <= 70 else math.ceil(len(text) / 67)
        assert row["numSMS"] == expected
        seen.add((text.isascii(), expected > 1))
    assert len(seen) >= 2


def test_detail_sms_carrier_status_consistent_with_status(day_rows):
    _, details = day_rows
    expected = {
        "Delivered": "Delivered",
        "Undelivered": "Undelivered",
        "Submitted": "Queued",
        "Pending": "",
        "Failed": "",
    }
    sms_rows = [row for rows in details.values() for row in rows if "numSMS" in row]
    assert {row["status"] for row in sms_rows} == set(expected)
    for row in sms_rows:
        assert row["carrierNetworkStatus"] == expected[row["status"]]
        assert "failedReason" not in row and "subject" not in row
        assert row["recipientCountry"] in {"HK", "SG", "US", "GB", "MY", "PH", "TW", "AU"}


def test_detail_whatsapp_failed_reason_from_vendor_list(day_rows):
    _, details = day_rows
    wa_rows = [row for rows in details.values() for row in rows if "failedReason" in row]
    assert wa_rows
    assert {row["status"] for row in wa_rows} <= {"Delivered", "Read", "Pending", "Failed"}
    failed = [row for row in wa_rows if row["status"] == "Failed"]
    assert failed
    for row in wa_rows:
        if row["status"] == "Failed":
            assert row["failedReason"] in VENDOR_FAILED_REASONS
        else:
            assert row["failedReason"] == ""
        assert "numSMS" not in row and "carrierNetworkStatus" not in row


def test_detail_clean_records_use_documented_encodings(day_rows):
    _, details = day_rows
    rows = [row for rows in details.values() for row in rows]
    recipients = defaultdict(set)
    for row in rows:
        assert isinstance(row["recipient"], str) and re.fullmatch(r"\+\d{8,15}", row["recipient"])
        assert RFC3339_MILLIS_Z.match(row["date"]) and RFC3339_MILLIS_Z.match(row["lastUpdatedDateTime"])
        assert _ts(row["lastUpdatedDateTime"]) >= _ts(row["date"])
        assert row["recipient"] not in recipients[row["id"]]
        recipients[row["id"]].add(row["recipient"])


@pytest.mark.parametrize("includes_read", [True, False])
def test_summary_counts_equal_counts_from_detail_rows(includes_read):
    sim = CinnoxSimulator(SimulatorConfig(now=NOW, whatsapp_delivered_includes_read=includes_read))
    summary = sim.summary_records(*_day_window(DAY))
    assert {r["channel"] for r in summary} == {"SMS", "WhatsApp"}
    for record in summary:
        statuses = Counter(row["status"] for row in sim.detail_records(record["id"]))
        assert record["totalRecipients"] == sum(statuses.values())
        if record["channel"] == "SMS":
            assert record["delivered"] == statuses["Delivered"]
            assert "read" not in record and set(record["sender"]) == {"phone", "senderEID"}
        else:
            delivered = statuses["Delivered"] + (statuses["Read"] if includes_read else 0)
            assert record["delivered"] == delivered
            assert (record["read"], record["pending"], record["failed"]) == (
                statuses["Read"],
                statuses["Pending"],
                statuses["Failed"],
            )
            assert 0 <= record["replied"] <= record["read"]
            assert set(record["sender"]) == {"phone", "channelName", "sourceName"}


def test_statuses_evolve_for_three_days_after_the_day():
    sim = CinnoxSimulator(SimulatorConfig())
    start, end = _day_window(DAY)
    snapshots = [sim.ground_truth(start, end, now=end + timedelta(days=k)) for k in (0, 1, 2, 3)]
    done = [sum(m["status"] in ("Delivered", "Read") for m in s.messages) for s in snapshots]
    assert done == sorted(done) and done[0] < done[-1]
    for earlier, later in itertools.pairwise(snapshots):
        before = {(m["campaign_id"], m["recipient"]): m["last_updated_at"] for m in earlier.messages}
        moved = [
            m for m in later.messages if m["last_updated_at"] > before[(m["campaign_id"], m["recipient"])]
        ]
        assert moved, "statuses must still change 1, 2 and 3 days after the day"
        assert all(m["last_updated_at"] <= later.as_of for m in later.messages)


def test_ground_truth_matches_served_clean_data(server, day_rows):
    summary, details = day_rows
    truth = server.simulator.ground_truth(*_day_window(DAY))
    assert truth.rejected == []
    assert [c["campaign_id"] for c in truth.campaigns] == [r["id"] for r in summary]
    for campaign, record in zip(truth.campaigns, summary, strict=True):
        assert campaign["sent_at"] == _ts(record["date"])
        assert campaign["total_recipients"] == record["totalRecipients"]
        assert campaign["delivered"] == record["delivered"]
        assert campaign["read"] == record.get("read") and campaign["replied"] == record.get("replied")
        assert campaign["sender_phone"] == record["sender"]["phone"]
        assert campaign["sender_eid"] == record["sender"].get("senderEID")
        assert campaign["subject"] == record.get("subject")
    served = {}
    for rows in details.values():
        for row in rows:
            served[(row["id"], row["recipient"])] = (
                row["status"],
                _ts(row["lastUpdatedDateTime"]),
                row.get("numSMS"),
                row.get("content"),
                row.get("carrierNetworkStatus") or None,
                row.get("failedReason") or None,
                row.get("recipientCountry"),
                row.get("subject"),
            )
    truth_rows = {
        (m["campaign_id"], m["recipient"]): (
            m["status"],
            m["last_updated_at"],
            m["num_sms"],
            m["content"],
            m["carrier_network_status"],
            m["failed_reason"],
            m["recipient_country"],
            m["subject"],
        )
        for m in truth.messages
    }
    assert truth_rows == served
    assert all(m["last_updated_at"].tzinfo is not None for m in truth.messages)


# ------------------------------------------------------------------------------------- odd records


def test_odd_records_serve_every_variant(odd_day):
    summary, rows = odd_day
    found = Counter()
    for row in rows:
        recipient = row.get("recipient")
        found["recipient_number"] += isinstance(recipient, int)
        found["recipient_no_plus"] += isinstance(recipient, str) and recipient.isdigit()
        found["num_sms_string"] += isinstance(row.get("numSMS"), str) and row["numSMS"].isdigit()
        found["capital_key"] += "LastUpdatedDateTime" in row
        stamp = row.get("lastUpdatedDateTime") or row.get("LastUpdatedDateTime")
        found["no_millis"] += "." not in stamp
        found["offset"] += stamp.endswith("+08:00")
        other = (
            ("subject", "failedReason") if "numSMS" in row and row.get("content") else ("numSMS", "content")
        )
        found["other_empty"] += any(row.get(k, 0) == "" for k in other)
        found["other_null"] += any(k in row and row[k] is None for k in other)
        found["lower"] += row["status"] == "delivered"
        found["upper"] += row["status"] == "READ"
        found["expired"] += row["status"] == "Expired"
        found["extra"] += "campaignTag" in row and "priority" in row
        found["missing_recipient"] += "recipient" not in row
        found["missing_id"] += "id" not in row
        found["bad_date"] += row.get("date") == "not-a-date"
    assert all(
        found[k] > 0
        for k in (
            "recipient_number",
            "recipient_no_plus",
            "num_sms_string",
            "capital_key",
            "no_millis",
            "offset",
            "other_empty",
            "other_null",
            "lower",
            "upper",
            "expired",
            "extra",
            "missing_recipient",
            "missing_id",
            "bad_date",
        )
    ), found
    assert any("campaignTag" in r for r in summary)


def test_odd_records_duplicates_carry_older_state(odd_server, odd_day):
    _, rows = odd_day
    groups = defaultdict(list)
    for row in rows:
        if "id" in row and "recipient" in row and row.get("date") != "not-a-date":
            groups[(row["id"], "+" + str(row["recipient"]).lstrip("+"))].append(row)
    duplicates = {k: v for k, v in groups.items() if len(v) > 1}
    assert duplicates
    truth = {
        (m["campaign_id"], m["recipient"]): m
        for m in odd_server.simulator.ground_truth(*_day_window(DAY)).messages
    }
    for key, group in duplicates.items():
        assert len(group) == 2
        stamps = [_ts(r.get("lastUpdatedDateTime") or r["LastUpdatedDateTime"]) for r in group]
        assert stamps[0] != stamps[1] and group[0]["status"] != group[1]["status"]
        latest = group[stamps.index(max(stamps))]
        assert truth[key]["last_updated_at"] == max(stamps)
        assert truth[key]["status"].lower() == latest["status"].lower()


def test_ground_truth_odd_records_rejected_and_deduplicated(odd_server, odd_day):
    summary, rows = odd_day
    truth = odd_server.simulator.ground_truth(*_day_window(DAY))
    assert {r["reason_kind"] for r in truth.rejected} == {"missing_recipient", "missing_id", "bad_date"}
    bad_rows = [r for r in rows if "id" not in r or "recipient" not in r or r.get("date") == "not-a-date"]
    assert len(bad_rows) == len(truth.rejected)
    assert all(r["campaign_id"] is None for r in truth.rejected if r["reason_kind"] == "missing_id")
    assert len(truth.messages) == sum(r["totalRecipients"] for r in summary) < len(rows)
    assert all(m["recipient"].startswith("+") for m in truth.messages)
    assert "Expired" in {m["status"] for m in truth.messages}
    assert {m["status"] for m in truth.messages} <= {
        "Submitted",
        "Delivered",
        "Undelivered",
        "Pending",
        "Failed",
        "Read",
        "Expired",
    }
    assert all(isinstance(m["num_sms"], int) for m in truth.messages if m["channel"] == "SMS")


# ------------------------------------------------------------------------------------- faults


def _fault_server(kind: str) -> SimulatorServer:
    return SimulatorServer(SimulatorConfig(now=NOW, fault_rate=1.0, fault_kinds=(kind,), slow_seconds=0.3))


def _raw_get(server: SimulatorServer, path_query: str) -> tuple[int, dict[str, str], bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        connection.request("GET", path_query, headers={"Authorization": f"Bearer {server.token}"})
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


SUMMARY_QUERY = (
    "/v1/api/apps/sim-app/data/sent-campaigns-summary"
    "?startAt=2024-05-01T00:00:00.000Z&endAt=2024-05-02T00:00:00.000Z&limit=500"
)


@pytest.mark.parametrize(
    ("kind", "status", "body_code", "retry_after"),
    [
        ("429_retry_after", 429, 6451010, True),
        ("429_no_retry_after", 429, 6451010, False),
        ("500", 500, 6451001, False),
        ("503", 503, 6451001, False),
        ("body_code_6451010", 200, 6451010, False),
        ("body_code_6451001", 200, 6451001, False),
    ],
)
def test_fault_kind_returns_its_error(kind, status, body_code, retry_after):
    with _fault_server(kind) as srv:
        code, headers, body = _raw_get(srv, SUMMARY_QUERY)
        assert srv.stats()["faults_by_kind"][kind] == 1
    assert code == status
    assert orjson.loads(body)["code"] == body_code
    assert ("Retry-After" in headers) is retry_after


def test_fault_502_returns_non_json_gateway_page():
    with _fault_server("502") as srv:
        code, headers, body = _raw_get(srv, SUMMARY_QUERY)
    assert code == 502 and headers["Content-Type"] == "text/html"
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(body)


def test_fault_reset_closes_without_response():
    with _fault_server("reset") as srv, pytest.raises((ConnectionError, http.client.HTTPException)):
        _raw_get(srv, SUMMARY_QUERY)


def test_fault_truncated_sends_partial_body():
    with _fault_server("truncated") as srv, pytest.raises(http.client.IncompleteRead):
        _raw_get(srv, SUMMARY_QUERY)


def test_fault_slow_answers_late_with_normal_bytes(server):
    expected = _raw_get(server, SUMMARY_QUERY)[2]
    with _fault_server("slow") as srv:
        started = time.monotonic()
        code, _, body = _raw_get(srv, SUMMARY_QUERY)
        elapsed = time.monotonic() - started
    assert code == 200 and body == expected and elapsed >= 0.3


def test_fault_successful_retry_returns_same_bytes_as_fault_free_server(server):
    expected = _raw_get(server, SUMMARY_QUERY)[2]
    kinds = ("500", "body_code_6451001", "truncated", "reset", "429_retry_after")
    config = SimulatorConfig(now=NOW, fault_rate=0.6, fault_kinds=kinds, fault_seed=3)
    successes, failures = 0, 0
    with SimulatorServer(config) as srv:
        for _ in range(30):
            try:
                code, _, body = _raw_get(srv, SUMMARY_QUERY)
            except (ConnectionError, http.client.HTTPException):
                failures += 1
                continue
            if code == 200 and orjson.loads(body)["code"] == 0:
                assert body == expected
                successes += 1
            else:
                failures += 1
        assert sum(srv.stats()["faults_by_kind"].values()) == failures
    assert successes > 0 and failures > 0


def test_rate_limit_returns_429_with_retry_after():
    with SimulatorServer(SimulatorConfig(now=NOW, rate_limit_per_min=3)) as srv:
        codes = [_get(srv, DETAIL, historyID="x").status_code for _ in range(3)]
        throttled = _get(srv, DETAIL, historyID="x")
        stats = srv.stats()
    assert codes == [200, 200, 200]
    assert throttled.status_code == 429
    assert 1 <= int(throttled.headers["Retry-After"]) <= 60
    assert throttled.json() == {"code": 6451010, "message": "Too many requests"}
    assert stats["throttled"] == 1 and stats["requests_by_endpoint"][DETAIL] == 4


def test_down_returns_503_for_every_request():
    with SimulatorServer(SimulatorConfig(now=NOW, down=True)) as srv:
        assert _get(srv, DETAIL, historyID="x").status_code == 503
        assert requests.get(f"{srv.base_url}/anything", timeout=10).status_code == 503


def test_server_stats_count_endpoints_and_4xx():
    with SimulatorServer(SimulatorConfig(now=NOW)) as srv:
        _get(srv, SUMMARY, startAt="2024-05-01T00:00:00Z", endAt="2024-05-01T01:00:00Z")
        _get(srv, DETAIL, historyID="x")
        _get(srv, DETAIL)
        _get(srv, DETAIL, token="bad", historyID="x")
        stats = srv.stats()
    assert stats["requests_by_endpoint"] == {SUMMARY: 1, DETAIL: 3, "other": 0}
    assert stats["status_4xx"] == 2 and stats["throttled"] == 0
    assert set(stats["faults_by_kind"]) == set(ALL_FAULT_KINDS)


def test_prerender_serves_identical_bytes():
    config = SimulatorConfig(now=NOW, recipients_per_campaign=600, campaigns_per_day=2)
    fresh = CinnoxSimulator(config)
    warmed = CinnoxSimulator(config)
    assert warmed.prerender(DAY, DAY) >= 2
    history_id = fresh.summary_records(*_day_window(DAY))[0]["id"]
    for offset in (0, 500, 1000):
        assert warmed.render_detail_page(history_id, offset, 500) == fresh.render_detail_page(
            history_id, offset, 500
        )


# ------------------------------------------------------------------------------------- misbehaving modes

BOM = b"\xef\xbb\xbf"
MODE_FLAGS = {
    "--empty-summary": "empty_summary",
    "--truncate-details": "truncate_details",
    "--bom-bodies": "bom_bodies",
    "--poison-values": "poison_values",
    "--duplicate-summary": "duplicate_summary",
    "--naive-dates": "naive_dates",
    "--odd-channel": "odd_channel",
}


def _clean(**overrides: Any) -> CinnoxSimulator:
    return CinnoxSimulator(SimulatorConfig(now=NOW, **overrides))


def _in_day(rows: list[dict[str, Any]], day: date = DAY) -> list[dict[str, Any]]:
    return [r for r in rows if _ts(r["date"]) < _day_window(day)[1]]


def test_misbehaving_modes_are_off_by_default_and_each_has_a_flag_with_help():
    defaults = SimulatorConfig()
    assert defaults.data_modes == ()
    assert (defaults.summary_page_cap, defaults.detail_page_cap) == (None, None)
    assert not any(getattr(defaults, name) for name in MODE_FLAGS.values())
    assert config_from_args(build_parser().parse_args([])) == defaults
    parser = build_parser()
    help_lines = parser.format_help()
    for flag in [*MODE_FLAGS, "--summary-page-cap", "--detail-page-cap"]:
        action = next(a for a in parser._actions if flag in a.option_strings)
        assert action.help and flag in help_lines
    config = config_from_args(
        parser.parse_args(["--summary-page-cap", "3", "--detail-page-cap", "4", *MODE_FLAGS])
    )
    assert (config.summary_page_cap, config.detail_page_cap) == (3, 4)
    assert all(getattr(config, name) for name in MODE_FLAGS.values())
    assert set(config.data_modes) == set(MODE_FLAGS.values()) - {"bom_bodies"}


def test_hostile_transport_modes_are_off_by_default_and_each_has_a_flag_with_help():
    defaults = SimulatorConfig()
    assert (defaults.drip_bytes_per_s, defaults.oversized_mb) == (None, None)
    parser = build_parser()
    for flag in ("--drip-bytes-per-s", "--oversized-mb"):
        action = next(a for a in parser._actions if flag in a.option_strings)
        assert action.help and flag in parser.format_help()
    config = config_from_args(parser.parse_args(["--drip-bytes-per-s", "20", "--oversized-mb", "0.5"]))
    assert (config.drip_bytes_per_s, config.oversized_mb) == (20.0, 0.5)
    assert config.data_modes == ()  # transport only: the data served is unchanged


@pytest.mark.parametrize("value", [0, -1, True, "3", math.inf, math.nan])
@pytest.mark.parametrize("name", ["drip_bytes_per_s", "oversized_mb"])
def test_hostile_transport_modes_must_be_positive_numbers(name, value):
    with pytest.raises(ValueError, match=name):
        SimulatorConfig(**{name: value})


def _stream_detail(srv: SimulatorServer, history_id: str) -> requests.Response:
    """A streamed detail answer (use as a context manager), its body not yet read."""
    return requests.get(_url(srv, DETAIL), params={"historyID": history_id}, stream=True,
                        headers={"Authorization": f"Bearer {srv.token}"}, timeout=10)


def _first_detail(srv: SimulatorServer) -> tuple[str, bytes]:
    """The first campaign of DAY and its clean detail page bytes (limit 500)."""
    start, end = _day_window(DAY)
    history_id = srv.simulator.summary_records(start, end)[0]["id"]
    return history_id, srv.simulator.render_detail_page(history_id, 0, 500)


def test_drip_sends_the_detail_body_at_the_given_rate_and_the_summary_at_once():
    start, end = _day_window(DAY)
    with SimulatorServer(SimulatorConfig(now=NOW, drip_bytes_per_s=50_000)) as srv:
        history_id, clean_body = _first_detail(srv)
        started = time.monotonic()
        summary = _get(srv, SUMMARY, startAt=_iso(start), endAt=_iso(end), limit=500)
        summary_s = time.monotonic() - started
        started = time.monotonic()
        with requests.get(_url(srv, DETAIL), params={"historyID": history_id, "limit": 500}, stream=True,
                          headers={"Authorization": f"Bearer {srv.token}"}, timeout=10) as response:
            headers_s = time.monotonic() - started
            body = response.raw.read()
        body_s = time.monotonic() - started
    expected_s = len(clean_body) / 50_000
    assert body == clean_body and response.headers["Content-Length"] == str(len(clean_body))
    assert expected_s > 0.5 and 0.9 * expected_s <= body_s <= expected_s + 1.0
    assert headers_s < 0.2 * expected_s and summary_s < 0.2 * expected_s
    assert summary.json()["result"]


def test_drip_ends_when_the_client_hangs_up_and_the_server_stops_promptly():
    with SimulatorServer(SimulatorConfig(now=NOW, drip_bytes_per_s=10)) as srv:
        history_id, _ = _first_detail(srv)
        with _stream_detail(srv, history_id) as response:
            assert response.raw.read(2) == b'{"'
        started = time.monotonic()
    assert time.monotonic() - started < 2.0


@pytest.mark.parametrize("bom", [False, True])
def test_oversized_pads_every_detail_answer_to_exactly_n_megabytes_of_well_formed_json(bom):
    with SimulatorServer(SimulatorConfig(now=NOW, oversized_mb=1.5, bom_bodies=bom)) as srv:
        history_id, clean_body = _first_detail(srv)
        response = _get(srv, DETAIL, historyID=history_id, limit=500)
        start, end = _day_window(DAY)
        summary = _get(srv, SUMMARY, startAt=_iso(start), endAt=_iso(end), limit=500)
    content = response.content
    assert len(content) == int(1.5 * 2**20) and "Content-Length" not in response.headers
    assert content.startswith(BOM) == bom
    padded = json.loads(content.removeprefix(BOM))
    clean = json.loads(clean_body)
    assert set(padded["padding"]) == {"x"} and {k: v for k, v in padded.items() if k != "padding"} == clean
    assert len(summary.content) < 2**20  # summaries are never padded


def test_oversized_answer_abandoned_by_the_client_leaves_the_server_serving():
    with SimulatorServer(SimulatorConfig(now=NOW, oversized_mb=500)) as srv:
        history_id, _ = _first_detail(srv)
        with _stream_detail(srv, history_id) as response:
            assert response.raw.read(12) == b'{"padding":"'
        assert _get(srv, SUMMARY, startAt=_iso(NOW - timedelta(days=1)), endAt=_iso(NOW)).status_code == 200
        assert srv.stats()["internal_errors"] == 0


@pytest.mark.parametrize("cap", [0, -1, True, 2.5, "3"])
@pytest.mark.parametrize("name", ["summary_page_cap", "detail_page_cap"])
def test_page_cap_must_be_a_positive_int(name, cap):
    with pytest.raises(ValueError, match=name):
        SimulatorConfig(**{name: cap})


def test_page_caps_serve_at_most_n_rows_whatever_limit_asks():
    config = SimulatorConfig(now=NOW, campaigns_per_day=12, summary_page_cap=5, detail_page_cap=7)
    start, end = _day_window(DAY)
    clean = _clean(campaigns_per_day=12)
    with SimulatorServer(config) as srv:
        rows, sizes, offset = [], [], 0
        while True:
            page = _get(srv, SUMMARY, startAt=_iso(start), endAt=_iso(end), offset=offset, limit=500)
            result = page.json()["result"]
            sizes.append(len(result))
            if not result:
                break
            rows += result
            offset += len(result)
        history_id = rows[0]["id"]
        detail = _get(srv, DETAIL, historyID=history_id, limit=500).json()["result"]
        below_cap = _get(srv, DETAIL, historyID=history_id, limit=3).json()["result"]
        everything = _all_details(srv, history_id, limit=7)
        too_big = _get(srv, DETAIL, historyID=history_id, limit=501)
    assert rows == clean.summary_records(start, end) and len(rows) >= 12
    assert max(sizes) == 5 and sizes[-1] == 0
    assert len(detail) == 7 and detail == clean.detail_records(history_id)[:7]
    assert below_cap == clean.detail_records(history_id)[:3]
    assert everything == clean.detail_records(history_id) and len(everything) > 7
    assert too_big.status_code == 400  # validation of limit is unchanged


def test_empty_summary_lists_nothing_while_details_and_truth_remain():
    start, end = _day_window(DAY)
    clean = _clean()
    with SimulatorServer(SimulatorConfig(now=NOW, empty_summary=True)) as srv:
        listed = _summary(srv, start, end)
        truth = srv.simulator.ground_truth(start, end)
        history_id = truth.campaigns[0]["campaign_id"]
        details = _all_details(srv, history_id)
        assert srv.simulator.summary_records(start, end) == []
    assert listed == []
    clean_truth = clean.ground_truth(start, end)
    assert truth.campaigns == clean_truth.campaigns and truth.messages == clean_truth.messages
    assert truth.anomalies == [{"mode": "empty_summary", "endpoint": "summary", "campaigns_hidden": 8}]
    assert details == clean.detail_records(history_id) and details


def test_truncate_details_cuts_one_campaign_a_day_below_its_total_recipients():
    start, end = _day_window(DAY)
    clean = _clean()
    with SimulatorServer(SimulatorConfig(now=NOW, truncate_details=True)) as srv:
        truth = srv.simulator.ground_truth(start, end)
        summary = _in_day(_summary(srv, start, end))
        served = {r["id"]: _all_details(srv, r["id"]) for r in summary}
        (anomaly,) = truth.anomalies
        beyond = _get(srv, DETAIL, historyID=anomaly["campaign_id"], offset=anomaly["rows_served"], limit=500)
        api_shape = srv.simulator.detail_records(anomaly["campaign_id"])
    assert summary == _in_day(clean.summary_records(start, end))
    cut = anomaly["campaign_id"]
    total = next(r["totalRecipients"] for r in summary if r["id"] == cut)
    assert anomaly == {"mode": "truncate_details", "endpoint": "detail", "campaign_id": cut,
                       "total_recipients": total, "rows_listed": total, "rows_served": total // 2}
    assert served[cut] == clean.detail_records(cut)[: total // 2] == api_shape
    assert 0 < len(served[cut]) < total and beyond.json()["result"] == []
    assert all(rows == clean.detail_records(cid) for cid, rows in served.items() if cid != cut)
    clean_truth = clean.ground_truth(start, end)
    assert truth.messages == clean_truth.messages and truth.campaigns == clean_truth.campaigns
    assert truth.rejected == []


def test_bom_bodies_prefix_every_response_but_the_stats_answer():
    start, end = _day_window(DAY)
    summary_params = {"startAt": _iso(start), "endAt": _iso(end), "limit": 500}
    with (
        SimulatorServer(SimulatorConfig(now=NOW, bom_bodies=True, stats_path="/_stats")) as srv,
        SimulatorServer(SimulatorConfig(now=NOW)) as clean,
    ):
        summary = _get(srv, SUMMARY, **summary_params)
        history_id = orjson.loads(summary.content[len(BOM):])["result"][0]["id"]
        detail = _get(srv, DETAIL, historyID=history_id, limit=500)
        expected = [_get(clean, SUMMARY, **summary_params),
                    _get(clean, DETAIL, historyID=history_id, limit=500)]
        errors = [_get(srv, DETAIL), _get(srv, DETAIL, token="wrong-token", historyID="x"),
                  requests.get(_url(srv, DETAIL, app_id="other"),
                               headers={"Authorization": f"Bearer {srv.token}"}, timeout=10)]
        stats = requests.get(f"{srv.base_url}/_stats", timeout=10)
    for got, want in zip([summary, detail], expected, strict=True):
        assert got.status_code == 200 and got.content == BOM + want.content
        assert got.headers["Content-Length"] == str(len(BOM + want.content))
    assert [e.status_code for e in errors] == [400, 401, 404]
    assert all(e.content.startswith(BOM) and orjson.loads(e.content[len(BOM):])["code"] for e in errors)
    assert not stats.content.startswith(BOM) and orjson.loads(stats.content)["requests_total"] >= 5


def test_poison_values_serve_out_of_range_numbers_and_a_lone_surrogate_escape():
    start, end = _day_window(DAY)
    clean = _clean()
    with SimulatorServer(SimulatorConfig(now=NOW, poison_values=True)) as srv:
        truth = srv.simulator.ground_truth(start, end)
        by_field = {a["field"]: a for a in truth.anomalies}
        summary = _get(srv, SUMMARY, startAt=_iso(start), endAt=_iso(end), limit=500).content
        sms_id = by_field["numSMS"]["campaign_id"]
        detail = _get(srv, DETAIL, historyID=sms_id, limit=500).content
        api_summary = srv.simulator.summary_records(start, end)
        api_detail = srv.simulator.detail_records(sms_id)
    assert set(by_field) == {"numSMS", "content", "replied"} and len(truth.anomalies) == 3
    assert by_field["content"]["campaign_id"] == sms_id != by_field["replied"]["campaign_id"]
    assert b'"replied":100000000000000000000' in summary
    assert b'"numSMS":3000000000' in detail and b' \\ud83d"' in detail
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(detail)  # the lone surrogate: orjson refuses the whole page
    summary_rows, detail_rows = json.loads(summary)["result"], json.loads(detail)["result"]
    assert summary_rows == api_summary and detail_rows == api_detail
    by_recipient = {r["recipient"]: r for r in detail_rows}
    assert by_recipient[by_field["numSMS"]["recipient"]]["numSMS"] == 3_000_000_000
    assert by_recipient[by_field["content"]["recipient"]]["content"] == by_field["content"]["value"]
    assert by_field["content"]["value"].endswith(" \ud83d")
    replied = next(r for r in summary_rows if r["id"] == by_field["replied"]["campaign_id"])
    assert replied["replied"] == 10**20 and replied["channel"] == "WhatsApp"
    # every other record is exactly the clean one
    poisoned = {by_field["numSMS"]["recipient"], by_field["content"]["recipient"]}
    clean_detail = clean.detail_records(sms_id)
    assert [r for r in detail_rows if r["recipient"] not in poisoned] == [
        r for r in clean_detail if r["recipient"] not in poisoned]
    assert len(detail_rows) == len(clean_detail)
    assert [r for r in summary_rows if r is not replied] == [
        r for r in clean.summary_records(start, end) if r["id"] != replied["id"]]
    # ground truth: the poisoned records are rejected, the rest of the day is the clean truth
    got = [(r["endpoint"], r["reason_kind"], r["campaign_id"], r.get("recipient")) for r in truth.rejected]
    assert sorted(got) == sorted([
        ("detail", "num_sms_out_of_range", sms_id, by_field["numSMS"]["recipient"]),
        ("detail", "invalid_unicode", sms_id, by_field["content"]["recipient"]),
        ("summary", "count_out_of_range", replied["id"], None)])
    clean_truth = clean.ground_truth(start, end)
    assert truth.messages == [m for m in clean_truth.messages
                              if (m["campaign_id"], m["recipient"]) not in {(sms_id, r) for r in poisoned}]
    assert len(truth.messages) == len(clean_truth.messages) - 2
    assert truth.campaigns == [c for c in clean_truth.campaigns if c["campaign_id"] != replied["id"]]


def test_duplicate_summary_lists_a_stale_copy_before_the_real_campaign():
    start, end = _day_window(DAY)
    clean = _clean()
    with SimulatorServer(SimulatorConfig(now=NOW, duplicate_summary=True)) as srv:
        rows = _summary(srv, start, end)
        paged = [row for offset in range(0, len(rows) + 2, 2) for row in _get(
            srv, SUMMARY, startAt=_iso(start), endAt=_iso(end), offset=offset, limit=2).json()["result"]]
        truth = srv.simulator.ground_truth(start, end)
    ids = [r["id"] for r in rows]
    (dup,) = {i for i in ids if ids.count(i) == 2}
    first = ids.index(dup)
    stale, real = rows[first], rows[first + 1]
    assert stale["campaignName"] == "STALE" and stale["totalRecipients"] == 1 and stale["delivered"] == 0
    assert real["totalRecipients"] > 1 and real["campaignName"] != "STALE"
    assert rows[:first] + rows[first + 1:] == clean.summary_records(start, end)
    assert paged == rows
    assert truth.campaigns == clean.ground_truth(start, end).campaigns
    assert truth.anomalies == [{"mode": "duplicate_summary", "endpoint": "summary", "campaign_id": dup,
                                "stale_copy": stale}]


def test_naive_dates_and_odd_channel_hit_one_summary_record_each():
    start, end = _day_window(DAY)
    clean = _clean()
    with SimulatorServer(SimulatorConfig(now=NOW, naive_dates=True, odd_channel=True)) as srv:
        rows = _summary(srv, start, end)
        truth = srv.simulator.ground_truth(start, end)
    clean_rows = clean.summary_records(start, end)
    changed = [(r, c) for r, c in zip(rows, clean_rows, strict=True) if r != c]
    assert len(changed) == 2
    (naive,) = [(r, c) for r, c in changed if r["date"] != c["date"]]
    (odd,) = [(r, c) for r, c in changed if r["channel"] != c["channel"]]
    assert naive[0]["date"] == naive[1]["date"].removesuffix("Z") and "T" in naive[0]["date"]
    assert datetime.fromisoformat(naive[0]["date"]).tzinfo is None
    assert {**naive[0], "date": None} == {**naive[1], "date": None}
    assert odd[0]["channel"] == "WhatsApp Business" and odd[1]["channel"] == "WhatsApp"
    assert naive[0]["id"] != odd[0]["id"]
    assert sorted((r["campaign_id"], r["reason_kind"], r["endpoint"]) for r in truth.rejected) == sorted(
        [(naive[0]["id"], "naive_date", "summary"), (odd[0]["id"], "unknown_channel", "summary")])
    clean_truth = clean.ground_truth(start, end)
    hit = (naive[0]["id"], odd[0]["id"])
    assert truth.campaigns == [c for c in clean_truth.campaigns if c["campaign_id"] not in hit]
    assert truth.messages == clean_truth.messages  # their detail rows are untouched
    assert {(a["mode"], a["campaign_id"], a["value"]) for a in truth.anomalies} == {
        ("naive_dates", naive[0]["id"], naive[0]["date"]), ("odd_channel", odd[0]["id"], "WhatsApp Business")}


ALL_DATA_MODES = {"poison_values": True, "truncate_details": True, "duplicate_summary": True,
                  "naive_dates": True, "odd_channel": True}


def test_data_modes_hit_distinct_campaigns_away_from_midnight_when_the_day_has_enough():
    config = SimulatorConfig(now=NOW, campaigns_per_day=12, **ALL_DATA_MODES)
    for day in (DAY, DAY + timedelta(days=1), DAY + timedelta(days=2)):
        truth = CinnoxSimulator(config).ground_truth(*_day_window(day))
        hit = {(a["mode"], a["endpoint"]): a["campaign_id"] for a in truth.anomalies}
        assert set(hit) == {("poison_values", "detail"), ("poison_values", "summary"),
                            ("truncate_details", "detail"), ("duplicate_summary", "summary"),
                            ("naive_dates", "summary"), ("odd_channel", "summary")}
        assert len(set(hit.values())) == 6
        sent = {c["campaign_id"]: c["sent_at"] for c in _clean(campaigns_per_day=12).ground_truth(
            *_day_window(day)).campaigns}
        assert all(sent[cid].time() != datetime.min.time() for cid in hit.values())
        assert truth == CinnoxSimulator(config).ground_truth(*_day_window(day))  # deterministic


def test_prerender_serves_identical_bytes_in_misbehaving_modes():
    config = SimulatorConfig(now=NOW, recipients_per_campaign=700, campaigns_per_day=3, **ALL_DATA_MODES)
    fresh, warmed = CinnoxSimulator(config), CinnoxSimulator(config)
    assert warmed.prerender(DAY, DAY) >= 3
    for record in fresh.summary_records(*_day_window(DAY)):
        for offset in (0, 500, 1000):
            assert warmed.render_detail_page(record["id"], offset, 500) == fresh.render_detail_page(
                record["id"], offset, 500)


# ------------------------------------------------------------------------------------- packaging


def test_simulator_imports_nothing_from_the_pipeline():
    package = Path(__file__).resolve().parents[2] / "campaign_pipeline" / "simulator"
    allowed_top = {"__future__", "orjson"} | set(sys.stdlib_module_names)
    for path in package.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level:
                continue  # relative import inside the simulator package
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else ([node.module] if isinstance(node, ast.ImportFrom) else [])
            )
            for name in names:
                assert name.split(".")[0] in allowed_top, f"{path.name} imports {name}"


def test_main_prints_listening_line_and_stops_on_sigterm():
    command = [
        sys.executable,
        "-m",
        "campaign_pipeline.simulator",
        "--port",
        "0",
        "--now",
        "2024-05-20T00:00:00Z",
    ]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = process.stdout.readline()
        match = re.match(r"CINNOX simulator listening on (http://127\.0\.0\.1:\d+) app_id=sim-app ", line)
        assert match, line
        response = requests.get(
            f"{match.group(1)}/v1/api/apps/sim-app/data/sent-campaigns-detail",
            params={"historyID": "x"},
            headers={"Authorization": "Bearer sim-token"},
            timeout=10,
        )
        assert response.json()["code"] == 0
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
        assert process.stderr.read() == ""
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
