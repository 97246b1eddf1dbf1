"""Analytics: every warehouse view vs simulator ground truth, NULL rates, the report command, chart, notebook, dictionary."""

from __future__ import annotations

import csv
import html
import io
import json
import math
import os
import re
import subprocess
import sys
from collections import defaultdict
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import duckdb
import pytest

from campaign_pipeline import cli, reporting
from campaign_pipeline.defs.backfill import run_backfill
from campaign_pipeline.model import schemas
from campaign_pipeline.storage.warehouse import SQL_DIR, Warehouse
from tests.conftest import pipeline_env, start_simulator

# Close to the simulator's fixed clock (2024-05-20 12:00 UTC), so some messages are still in flight.
START, END = date(2024, 5, 17), date(2024, 5, 19)
REPO = Path(__file__).resolve().parents[2]
DICTIONARY = REPO / "docs" / "data-dictionary.md"
NOTEBOOK = REPO / "notebooks" / "delivery_rates.ipynb"
SMS, WHATSAPP = "SMS", "WhatsApp"
RATES = ("delivery_rate", "failure_rate", "read_rate")


# ------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def sim():
    """A fault-free simulator with small volumes, shared by the module."""
    server = start_simulator(campaigns_per_day=6, recipients_per_campaign=60)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def data_dir(sim, tmp_path_factory) -> Path:
    """START..END backfilled once through Dagster into a fresh data dir."""
    directory = tmp_path_factory.mktemp("analytics")
    with pytest.MonkeyPatch.context() as mp:
        pipeline_env(mp, sim, directory)
        outcome = run_backfill(START, END)
    assert outcome.success, outcome.failure
    return directory


@pytest.fixture(scope="module")
def con(data_dir):
    """A read-only connection to the built warehouse."""
    with Warehouse(data_dir / "warehouse.duckdb").reader() as connection:
        yield connection


@pytest.fixture(scope="module")
def truth(sim):
    """Ground truth of START..END (UTC days), straight from the simulator's model."""
    lower = datetime.combine(START, datetime.min.time(), tzinfo=UTC)
    upper = datetime.combine(END + timedelta(days=1), datetime.min.time(), tzinfo=UTC)
    result = sim.simulator.ground_truth(lower, upper)
    for message in result.messages:
        message["partition_date"] = message["sent_at"].date()
    for campaign in result.campaigns:
        campaign["partition_date"] = campaign["sent_at"].date()
    return result


@pytest.fixture
def env(monkeypatch, sim, data_dir):
    """The process environment pointing at the built warehouse (for the CLI and the notebook)."""
    pipeline_env(monkeypatch, sim, data_dir)


# ------------------------------------------------------------------ independent expectations


def metric_counts(messages: list[dict], channel: str) -> dict:
    """The metric definitions of docs/data-dictionary.md, applied to ground-truth dicts."""
    statuses = [m["status"] for m in messages]
    whatsapp = channel == WHATSAPP
    counts = {
        "messages": len(statuses),
        "delivered": sum(s == "Delivered" or (whatsapp and s == "Read") for s in statuses),
        "read": sum(s == "Read" for s in statuses) if whatsapp else None,
        "failed": sum(s == "Failed" for s in statuses),
        "undelivered": 0 if whatsapp else sum(s == "Undelivered" for s in statuses),
        "pending": sum(s == "Pending" for s in statuses),
        "in_flight": sum(s == "Pending" or (not whatsapp and s == "Submitted") for s in statuses),
    }
    settled = counts["messages"] - counts["in_flight"]
    counts["delivery_rate"] = counts["delivered"] / settled if settled else None
    counts["failure_rate"] = (counts["failed"] + counts["undelivered"]) / settled if settled else None
    counts["read_rate"] = counts["read"] / counts["delivered"] if whatsapp and counts["delivered"] else None
    return counts


def grouped(messages: list[dict], key) -> dict[tuple, list[dict]]:
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for message in messages:
        groups[key(message)].append(message)
    return groups


def view_rows(con, view: str, keys: tuple[str, ...], where: str = "") -> dict[tuple, dict]:
    cursor = con.execute(f"SELECT * FROM {view} {where}")
    names = [d[0] for d in cursor.description]
    rows = [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
    result = {tuple(r[k] for k in keys): r for r in rows}
    assert len(result) == len(rows), f"{view}: keys {keys} are not unique"
    return result


SIM_APP_ID = "sim-app"


def assert_rows_match(actual: dict[tuple, dict], expected: dict[tuple, dict], keys: tuple[str, ...]) -> None:
    """Same keys; every non-key column of every actual row equals the expectation (floats approx)."""
    assert sorted(actual, key=repr) == sorted(expected, key=repr)
    for key, row in actual.items():
        for column, value in row.items():
            if column in keys:
                continue
            want = expected[key][column]
            if isinstance(want, float):
                assert value == pytest.approx(want, rel=1e-9, abs=1e-9), (key, column)
            else:
                assert value == want, (key, column)


def percentile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    ordered = sorted(values)
    position = (len(ordered) - 1) * q
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def split_reason(reason: str) -> tuple[str | None, str]:
    """'Error Code: 7061120 - text' or 'Error Code: 7061123 text' -> (code, text), by string ops."""
    prefix = "Error Code: "
    if not reason.startswith(prefix):
        return None, reason.strip()
    code, _, text = reason[len(prefix):].partition(" ")
    return code, text.removeprefix("- ").strip()


def by_channel(truth) -> dict[str, list[dict]]:
    return {channel: [m for m in truth.messages if m["channel"] == channel] for channel in (SMS, WHATSAPP)}


# ------------------------------------------------------------------ the data is worth testing


def test_ground_truth_range_has_every_metric_case(truth):
    statuses = {(m["channel"], m["status"]) for m in truth.messages}
    for case in [(SMS, "Delivered"), (SMS, "Submitted"), (SMS, "Undelivered"), (SMS, "Failed"),
                 (WHATSAPP, "Read"), (WHATSAPP, "Delivered"), (WHATSAPP, "Pending"), (WHATSAPP, "Failed")]:
        assert case in statuses


# ------------------------------------------------------------------ views vs ground truth


def test_messages_view_holds_every_message_of_both_channels(con, truth):
    rows = con.execute("SELECT channel, campaign_id, recipient, status, sender_phone, last_updated_at "
                       "FROM messages").fetchall()
    expected = [(m["channel"], m["campaign_id"], m["recipient"], m["status"], m["sender_phone"],
                 m["last_updated_at"]) for m in truth.messages]
    assert sorted(rows) == sorted(expected)


def test_message_metrics_flags_follow_the_metric_definitions(con, truth):
    expected = {}
    for m in truth.messages:
        c = metric_counts([m], m["channel"])
        expected[(m["campaign_id"], m["recipient"])] = (
            c["delivered"], c["read"], c["failed"], c["undelivered"], c["pending"], c["in_flight"])
    rows = con.execute("SELECT campaign_id, recipient, is_delivered, is_read, is_failed, is_undelivered, "
                       "is_pending, is_in_flight FROM message_metrics").fetchall()
    assert {(r[0], r[1]): tuple(r[2:]) for r in rows} == expected


def test_delivery_rates_daily_matches_ground_truth(con, truth):
    keys = ("partition_date", "channel")
    expected = {k: metric_counts(ms, k[1])
                for k, ms in grouped(truth.messages, lambda m: (m["partition_date"], m["channel"])).items()}
    assert_rows_match(view_rows(con, "delivery_rates_daily", keys), expected, keys)


def test_delivery_rates_daily_has_in_flight_excluded_from_denominator(con):
    rows = con.execute("SELECT delivered, messages, in_flight, delivery_rate FROM delivery_rates_daily "
                       "WHERE in_flight > 0").fetchall()
    assert rows
    for delivered, messages, in_flight, rate in rows:
        assert rate == pytest.approx(delivered / (messages - in_flight))


def test_delivery_rates_by_country_matches_ground_truth(con, truth):
    keys = ("partition_date", "recipient_country")
    groups = grouped(by_channel(truth)[SMS], lambda m: (m["partition_date"], m["recipient_country"]))
    expected = {k: metric_counts(ms, SMS) for k, ms in groups.items()}
    assert_rows_match(view_rows(con, "delivery_rates_by_country", keys), expected, keys)


def test_delivery_rates_by_sender_matches_ground_truth(con, truth):
    keys = ("partition_date", "channel", "sender_phone", "sender_eid", "sender_channel_name")
    groups = grouped(truth.messages, lambda m: tuple(m[k] for k in keys))
    expected = {k: metric_counts(ms, k[1]) for k, ms in groups.items()}
    assert_rows_match(view_rows(con, "delivery_rates_by_sender", keys), expected, keys)


def test_delivery_rates_by_template_matches_ground_truth(con, truth):
    keys = ("partition_date", "subject", "sender_source_name")
    groups = grouped(by_channel(truth)[WHATSAPP], lambda m: tuple(m[k] for k in keys))
    expected = {k: metric_counts(ms, WHATSAPP) for k, ms in groups.items()}
    assert_rows_match(view_rows(con, "delivery_rates_by_template", keys), expected, keys)


def test_campaign_delivery_puts_summary_totals_beside_detail_counts(con, truth):
    details = grouped(truth.messages, lambda m: (m["campaign_id"],))
    expected = {}
    for c in truth.campaigns:
        counts = metric_counts(details.get((c["campaign_id"],), []), c["channel"])
        expected[(c["campaign_id"],)] = {
            **{k: c[k] for k in ("partition_date", "sent_at", "channel", "campaign_name", "created_by",
                                 "sender_phone", "sender_eid", "sender_channel_name", "subject",
                                 "total_recipients")},
            **{f"summary_{k}": c[k] for k in ("delivered", "read", "pending", "failed", "replied")},
            **counts,
            "recipients_diff": counts["messages"] - c["total_recipients"],
            "delivered_diff": counts["delivered"] - c["delivered"],
            "app_id": SIM_APP_ID,
        }
    actual = view_rows(con, "campaign_delivery", ("campaign_id",))
    assert_rows_match(actual, expected, ("campaign_id",))
    # The fault-free simulator's summary agrees with its detail rows.
    assert {(r["recipients_diff"], r["delivered_diff"]) for r in actual.values()} == {(0, 0)}


def test_failure_reasons_split_error_code_and_text(con, truth):
    expected: dict[tuple, dict] = defaultdict(lambda: {"messages": 0})
    for m in truth.messages:
        if m["status"] == "Failed" or (m["channel"] == SMS and m["status"] == "Undelivered"):
            code, text = split_reason(m["failed_reason"]) if m["failed_reason"] else (None, None)
            key = (m["partition_date"], m["channel"], m["status"], code, text, m["carrier_network_status"])
            expected[key]["messages"] += 1
    keys = ("partition_date", "channel", "status", "error_code", "error_text", "carrier_network_status")
    actual = view_rows(con, "failure_reasons", keys)
    assert_rows_match(actual, dict(expected), keys)
    assert any(k[1] == WHATSAPP and k[3] for k in actual) and any(k[1] == SMS and k[5] for k in actual)


def test_sms_segments_daily_sums_num_sms_per_day_and_country(con, truth):
    keys = ("partition_date", "recipient_country")
    groups = grouped(by_channel(truth)[SMS], lambda m: (m["partition_date"], m["recipient_country"]))
    expected = {k: {"messages": len(ms), "segments": sum(m["num_sms"] for m in ms),
                    "multipart_messages": sum(m["num_sms"] > 1 for m in ms)} for k, ms in groups.items()}
    actual = view_rows(con, "sms_segments_daily", keys)
    assert_rows_match(actual, expected, keys)
    assert any(r["multipart_messages"] for r in actual.values())


def test_status_latency_percentiles_match_ground_truth(con, truth):
    groups = grouped(truth.messages, lambda m: (m["channel"], m["status"]))
    expected = {}
    for key, ms in groups.items():
        seconds = [(m["last_updated_at"] - m["sent_at"]) / timedelta(seconds=1) for m in ms]
        expected[key] = {"messages": len(ms), "p50_seconds": percentile(seconds, 0.5),
                         "p90_seconds": percentile(seconds, 0.9), "p99_seconds": percentile(seconds, 0.99),
                         "max_seconds": max(seconds)}
    actual = view_rows(con, "status_latency", ("channel", "status"))
    assert_rows_match(actual, expected, ("channel", "status"))
    assert actual[(WHATSAPP, "Read")]["p50_seconds"] > 0


# ------------------------------------------------------------------ hand-built warehouses


def insert(con, table: str, rows: list[dict]) -> None:
    """Insert rows (missing columns NULL) with bound parameters."""
    names = [f.name for f in schemas.TABLES[table].schema]
    placeholders = ", ".join("?" for _ in names)
    for row in rows:
        con.execute(f'INSERT INTO "{table}" VALUES ({placeholders})',
                    [row.get(n, "app-1" if n == "app_id" else None) for n in names])


def sms(campaign_id: str, recipient: str, status: str, day: date, **extra) -> dict:
    sent = datetime.combine(day, datetime.min.time(), tzinfo=UTC) + timedelta(hours=9)
    return {"campaign_id": campaign_id, "recipient": recipient, "partition_date": day, "sent_at": sent,
            "sender_phone": "ACMEBANK", "sender_eid": "eid-1", "recipient_country": "HK", "num_sms": 1,
            "status": status, "last_updated_at": sent + timedelta(minutes=1), **extra}


def whatsapp(campaign_id: str, recipient: str, status: str, day: date, **extra) -> dict:
    sent = datetime.combine(day, datetime.min.time(), tzinfo=UTC) + timedelta(hours=9)
    return {"campaign_id": campaign_id, "recipient": recipient, "partition_date": day, "sent_at": sent,
            "sender_phone": "+85264501234", "sender_channel_name": "ACME HK", "sender_source_name": "360dialog",
            "subject": "order_update_v2", "status": status, "last_updated_at": sent, **extra}


def campaign(campaign_id: str, channel: str, day: date) -> dict:
    sent = datetime.combine(day, datetime.min.time(), tzinfo=UTC) + timedelta(hours=9)
    return {"campaign_id": campaign_id, "partition_date": day, "sent_at": sent, "channel": channel,
            "total_recipients": 2, "delivered": 0}


DAY = date(2024, 5, 1)


@pytest.fixture
def in_flight_only(tmp_path) -> Path:
    """A warehouse whose only day holds in-flight messages, plus a WhatsApp day with only failures."""
    path = tmp_path / "warehouse.duckdb"
    later = DAY + timedelta(days=1)
    with Warehouse(path).writer() as con:
        insert(con, "campaigns", [campaign("s1", SMS, DAY), campaign("w1", WHATSAPP, DAY),
                                  campaign("w2", WHATSAPP, later), campaign("empty", SMS, later)])
        insert(con, "sms_messages", [sms("s1", "+85291000001", "Pending", DAY),
                                     sms("s1", "+85291000002", "Submitted", DAY, carrier_network_status="Queued")])
        insert(con, "whatsapp_messages", [
            whatsapp("w1", "+85291000003", "Pending", DAY),
            whatsapp("w2", "+85291000004", "Failed", later, failed_reason="Error Code: 7061123 360dialog unauthorized"),
            whatsapp("w2", "+85291000005", "Failed", later,
                     failed_reason="Error Code: 7061120 - 360Dialog bad request"),
            whatsapp("w2", "+85291000006", "Failed", later, failed_reason="template paused"),
        ])
    return path


def test_rate_views_return_null_when_every_message_is_in_flight(in_flight_only):
    with Warehouse(in_flight_only).reader() as con:
        daily = con.execute("SELECT channel, messages, in_flight, delivery_rate, failure_rate, read_rate "
                            "FROM delivery_rates_daily WHERE partition_date = ? ORDER BY channel", [DAY]).fetchall()
        assert daily == [(SMS, 2, 2, None, None, None), (WHATSAPP, 1, 1, None, None, None)]
        for view in ("delivery_rates_by_country", "delivery_rates_by_sender", "delivery_rates_by_template"):
            rates = con.execute(f"SELECT delivery_rate, failure_rate FROM {view} WHERE partition_date = ?",
                                [DAY]).fetchall()
            assert rates and all(r == (None, None) for r in rates), view
        campaigns = con.execute("SELECT campaign_id, messages, delivery_rate, failure_rate, read_rate "
                                "FROM campaign_delivery ORDER BY campaign_id").fetchall()
        assert campaigns == [("empty", 0, None, None, None), ("s1", 2, None, None, None),
                             ("w1", 1, None, None, None), ("w2", 3, 0.0, 1.0, None)]
        assert reporting.partition_rates(con, DAY) == {
            "sms_messages": {"delivery_rate": None, "read_rate": None, "failure_rate": None},
            "whatsapp_messages": {"delivery_rate": None, "read_rate": None, "failure_rate": None},
        }


def test_read_rate_is_null_when_nothing_was_delivered(in_flight_only):
    with Warehouse(in_flight_only).reader() as con:
        row = con.execute("SELECT messages, delivered, \"read\", delivery_rate, failure_rate, read_rate "
                          "FROM delivery_rates_daily WHERE partition_date = ?", [DAY + timedelta(days=1)]).fetchone()
    assert row == (3, 0, 0, 0.0, 1.0, None)


def test_failure_reasons_split_reasons_with_and_without_dash(in_flight_only):
    with Warehouse(in_flight_only).reader() as con:
        rows = con.execute("SELECT error_code, error_text, messages FROM failure_reasons "
                           "WHERE channel = 'WhatsApp' ORDER BY error_code NULLS LAST").fetchall()
        sms_rows = con.execute("SELECT count(*) FROM failure_reasons WHERE channel = 'SMS'").fetchone()
    assert rows == [("7061120", "360Dialog bad request", 1), ("7061123", "360dialog unauthorized", 1),
                    (None, "template paused", 1)]
    assert sms_rows == (0,)  # in-flight SMS did not fail


# ------------------------------------------------------------------ reporting functions


def test_partition_rates_matches_daily_ground_truth(con, truth):
    channels = by_channel(truth)
    rates = reporting.partition_rates(con, END)
    for table, channel in (("sms_messages", SMS), ("whatsapp_messages", WHATSAPP)):
        expected = metric_counts([m for m in channels[channel] if m["partition_date"] == END], channel)
        assert rates[table] == {k: pytest.approx(expected[k]) if expected[k] is not None else None
                                for k in ("delivery_rate", "read_rate", "failure_rate")}
    assert rates["sms_messages"]["read_rate"] is None


def test_daily_delivery_report_keeps_the_demo_contract(data_dir, truth):
    header, rows = reporting.daily_delivery_report(data_dir / "warehouse.duckdb", START, END)
    assert header == list(reporting.DAILY_COLUMNS)
    assert sum(r[header.index("messages")] for r in rows) == len(truth.messages)
    table = reporting.format_table(header, rows).splitlines()
    assert len(table) == len(rows) + 2 and len({len(line) for line in table}) == 1


# ------------------------------------------------------------------ the report command


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(["report", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def parse_csv(text: str) -> list[dict]:
    def value(column: str, raw: str):
        if raw == "":
            return None
        if column.endswith("_rate"):
            return float(raw)
        if column in ("partition_date",):
            return date.fromisoformat(raw)
        return int(raw) if re.fullmatch(r"-?\d+", raw) and column not in ("sender_phone", "campaign_id") else raw

    return [{k: value(k, v) for k, v in row.items()} for row in csv.DictReader(io.StringIO(text))]


REPORT_KEYS = {
    "channel": ("partition_date", "channel"),
    "country": ("recipient_country",),
    "sender": ("channel", "sender_phone", "sender_eid", "sender_channel_name"),
    "template": ("subject", "sender_source_name"),
    "campaign": ("campaign_id",),
}


def expected_report(truth, by: str, start: date, end: date) -> dict[tuple, dict]:
    messages = [m for m in truth.messages if start <= m["partition_date"] <= end]
    keys = REPORT_KEYS[by]
    if by == "campaign":
        details = grouped(messages, lambda m: (m["campaign_id"],))
        return {(c["campaign_id"],): {**metric_counts(details[(c["campaign_id"],)], c["channel"]),
                                      "partition_date": c["partition_date"], "channel": c["channel"],
                                      "campaign_name": c["campaign_name"], "total_recipients": c["total_recipients"],
                                      "summary_delivered": c["delivered"]}
                for c in truth.campaigns if start <= c["partition_date"] <= end}
    if by == "country":
        messages = [m for m in messages if m["channel"] == SMS]
    if by == "template":
        messages = [m for m in messages if m["channel"] == WHATSAPP]
    return {k: metric_counts(ms, ms[0]["channel"]) for k, ms in grouped(messages, lambda m: tuple(m[c] for c in keys)).items()}


@pytest.mark.parametrize("by", ["channel", "country", "sender", "template", "campaign"])
def test_report_csv_matches_ground_truth(env, capsys, truth, by):
    start = START + timedelta(days=1)
    code, out, err = run_cli(capsys, "--start", start.isoformat(), "--end", END.isoformat(), "--by", by,
                             "--format", "csv")
    assert code == 0, err
    rows = parse_csv(out)
    keys = REPORT_KEYS[by]
    actual = {tuple(r[k] for k in keys): r for r in rows}
    assert len(actual) == len(rows)
    assert_rows_match(actual, expected_report(truth, by, start, END), keys)


def test_report_json_matches_ground_truth(env, capsys, truth):
    code, out, err = run_cli(capsys, "--start", START.isoformat(), "--end", END.isoformat(), "--by", "country",
                             "--format", "json")
    assert code == 0, err
    rows = json.loads(out)
    actual = {(r["recipient_country"],): r for r in rows}
    assert_rows_match(actual, expected_report(truth, "country", START, END), ("recipient_country",))


def test_report_table_is_aligned_with_rates_as_percentages(env, capsys, truth):
    code, out, _ = run_cli(capsys, "--start", START.isoformat(), "--end", END.isoformat())
    assert code == 0
    lines = out.rstrip("\n").splitlines()
    assert lines[0].split() == list(reporting.DAILY_COLUMNS)
    days_and_channels = {(m["partition_date"], m["channel"]) for m in truth.messages}
    assert len(lines) == 2 + len(days_and_channels) and len({len(line) for line in lines}) == 1
    expected = metric_counts([m for m in by_channel(truth)[WHATSAPP] if m["partition_date"] == START], WHATSAPP)
    first_whatsapp = next(line for line in lines if START.isoformat() in line and WHATSAPP in line)
    assert f"{expected['delivery_rate'] * 100:.1f}%" in first_whatsapp.split()
    assert f"{expected['read_rate'] * 100:.1f}%" == first_whatsapp.split()[-1]


def test_report_defaults_to_the_latest_loaded_days(env, capsys, truth):
    code, out, _ = run_cli(capsys, "--format", "json")
    assert code == 0
    assert sum(r["messages"] for r in json.loads(out)) == len(truth.messages)


def test_report_rejects_start_after_end_with_one_line(env, capsys):
    code, out, err = run_cli(capsys, "--start", END.isoformat(), "--end", START.isoformat())
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("error: ") and "after" in err


def test_report_rejects_a_malformed_date(env, capsys):
    code, _, err = run_cli(capsys, "--start", "2024-05-1x")
    assert code == 2 and err.count("\n") == 1 and "YYYY-MM-DD" in err


def test_report_needs_no_api_credentials(monkeypatch, capsys, data_dir, tmp_path, truth):
    """A read-only command: CAMPAIGN_SOURCE=cinnox without any CINNOX_* setting still reports."""
    monkeypatch.setenv("CAMPAIGN_SOURCE", "cinnox")
    for name in ("CINNOX_BASE_URL", "CINNOX_APP_ID", "CINNOX_APP_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CAMPAIGN_DATA_DIR", str(data_dir))
    code, out, err = run_cli(capsys, "--format", "json")
    assert code == 0, err
    assert sum(r["messages"] for r in json.loads(out)) == len(truth.messages)
    monkeypatch.setenv("CAMPAIGN_DATA_DIR", str(tmp_path))  # nothing there yet
    code, out, err = run_cli(capsys)
    assert code == 1 and out == ""
    assert err.startswith(f"reading {tmp_path}") and err.splitlines()[-1].startswith("error: ")


def test_report_chart_writes_a_non_trivial_png(env, capsys, tmp_path):
    from matplotlib.image import imread

    chart = tmp_path / "trend.png"
    code, _, err = run_cli(capsys, "--start", START.isoformat(), "--end", END.isoformat(), "--chart", str(chart))
    assert code == 0, err
    data = chart.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5_000
    pixels = imread(chart)
    colors = {tuple(p) for p in pixels.reshape(-1, pixels.shape[-1])[::7].round(2).tolist()}
    assert len(colors) > 20


def test_report_chart_rejects_a_non_png_path(env, capsys, tmp_path):
    code, _, err = run_cli(capsys, "--chart", str(tmp_path / "trend.jpg"))
    assert code == 2 and "png" in err
    assert not (tmp_path / "trend.jpg").exists()


# ------------------------------------------------------------------ notebook helpers and the trend chart


def test_loaded_range_and_partition_tz_describe_the_data(con):
    assert reporting.loaded_range(con) == (START, END)
    assert reporting.partition_tz(con) == "UTC"  # recorded in the data dir by the first run


def test_frame_keeps_counts_as_integers_and_days_as_dates(con, truth):
    # sum() of a BIGINT is a HUGEINT, which pandas would get as float (263.000000).
    frame = reporting.frame(con, "SELECT partition_date, channel, sum(messages) AS messages, sum(\"read\") AS read "
                                 "FROM delivery_rates_daily GROUP BY ALL ORDER BY ALL")
    assert str(frame["messages"].dtype) == "Int64" and str(frame["read"].dtype) == "Int64"
    assert frame["read"].isna().sum() == 3  # SMS has no read count: NA, not NaN in a float column
    assert int(frame["messages"].sum()) == len(truth.messages)
    assert all(type(day) is date for day in frame["partition_date"])
    assert "." not in frame.to_string(columns=["messages"])


def test_report_frame_matches_rate_report(con):
    for by in reporting.REPORT_BY:
        header, rows = reporting.rate_report(con, by, START, END)
        frame = reporting.report_frame(con, by, START, END)
        assert list(frame.columns) == header and len(frame) == len(rows), by
        assert all(frame[c].dtype.kind in "iu" or str(frame[c].dtype) == "Int64"
                   for c in ("messages", "delivered", "failed", "in_flight")), by


def test_grouping_notes_name_the_single_channel_groupings(con, truth):
    assert set(reporting.GROUPING_NOTES) == {"country", "template"}
    assert reporting.GROUPING_NOTES["country"].startswith("SMS only")
    assert reporting.GROUPING_NOTES["template"].startswith("WhatsApp only")
    channels = by_channel(truth)
    for by, channel in (("country", SMS), ("template", WHATSAPP)):
        header, rows = reporting.rate_report(con, by, START, END)
        assert sum(r[header.index("messages")] for r in rows) == len(channels[channel]), by
    header, rows = reporting.rate_report(con, "sender", START, END)
    assert sum(r[header.index("messages")] for r in rows) == len(truth.messages)


def test_report_note_says_the_range_the_loaded_days_and_the_channel_scope():
    note = reporting.report_note("country", START, END, (date(2024, 5, 1), END), "UTC")
    assert "\n" not in note
    assert f"{START}..{END} (UTC)" in note and f"loaded 2024-05-01..{END}" in note
    assert reporting.GROUPING_NOTES["country"] in note
    assert reporting.GROUPING_NOTES["template"] not in reporting.report_note("channel", START, END, (START, END))
    outside = reporting.report_note("template", date(2023, 1, 1), date(2023, 1, 7), (START, END))
    assert "no loaded day" in outside and reporting.GROUPING_NOTES["template"] in outside
    assert "nothing loaded" in reporting.report_note("channel", START, END, None)


def draw_trend(series, tz="UTC"):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(9, 5), layout="constrained")
    FigureCanvasAgg(figure)
    ax = figure.add_subplot()
    reporting.plot_delivery_trend(ax, series, tz)
    figure.canvas.draw()
    return figure, ax


def test_trend_chart_has_iso_days_axis_labels_and_volume_bars(con, truth):
    series = reporting.delivery_rate_series(con, START, END)
    figure, ax = draw_trend(series)
    days = [(START + timedelta(days=i)).isoformat() for i in range((END - START).days + 1)]
    assert [t.get_text() for t in ax.get_xticklabels()] == days  # not "17, 18, 19" or "May"
    assert ax.get_xlabel() == "partition day (UTC)"
    assert "delivery rate" in ax.get_ylabel()
    assert all(t.get_text().endswith("%") for t in ax.get_yticklabels() if t.get_text())
    (volume,) = [other for other in figure.axes if other is not ax]
    assert volume.get_ylabel() == "messages per day (bars)"
    heights = [bar.get_height() for bar in volume.patches]
    assert len(heights) == sum(len(points) for points in series.values())
    assert sum(heights) == len(truth.messages)
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == ["SMS delivery rate", "SMS messages", "WhatsApp delivery rate", "WhatsApp messages"]


def test_trend_chart_on_a_long_range_keeps_whole_iso_days_and_a_tz_label():
    first = date(2024, 1, 1)
    series = {SMS: [reporting.TrendPoint(first + timedelta(days=i), 0.9, 100 + i) for i in range(120)]}
    _, ax = draw_trend(series, tz="Asia/Hong_Kong")
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert 3 <= len(labels) <= 12 and all(re.fullmatch(r"\d{4}-\d{2}-\d{2}", text) for text in labels)
    assert ax.get_xlabel() == "partition day (Asia/Hong_Kong)"


def test_trend_chart_without_messages_says_so():
    _, ax = draw_trend({}, tz=None)
    assert "no messages in range" in [t.get_text() for t in ax.texts]
    assert ax.get_xlabel().startswith("partition day") and ax.get_xticklabels() == []


def test_charts_without_matplotlib_fail_with_one_line_naming_the_extra(tmp_path):
    """matplotlib is the optional `charts` extra: reporting and the CLI import without it, and a chart
    asks for the extra in one line."""
    script = (
        "import sys\n"
        "sys.modules['matplotlib'] = None  # as if not installed\n"
        "from campaign_pipeline import cli, report_cli, reporting\n"
        "from campaign_pipeline.errors import ConfigError\n"
        "try:\n"
        f"    reporting.write_trend_chart({{}}, {str(tmp_path / 'trend.png')!r})\n"
        "except ConfigError as error:\n"
        "    print(error)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=REPO,
                          check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("\n") == 1 and "pip install -e '.[charts]'" in done.stdout
    assert not (tmp_path / "trend.png").exists()


# ------------------------------------------------------------------ notebook


def test_notebook_is_saved_without_outputs():
    import nbformat

    notebook = nbformat.read(NOTEBOOK, as_version=4)
    code_cells = [c for c in notebook.cells if c.cell_type == "code"]
    assert code_cells and all(c.outputs == [] and c.execution_count is None for c in code_cells)


@pytest.fixture
def demo_checkout(tmp_path, data_dir) -> Path:
    """A checkout as `make demo` leaves it: the project files, and the data in `data/demo` (here a
    symlink to the module's backfilled data dir). No `data/.last-data-dir`: the demo's is the only one."""
    checkout = tmp_path / "checkout"
    (checkout / "notebooks").mkdir(parents=True)
    (checkout / "data").mkdir()
    for name in ("pyproject.toml", "campaign_pipeline"):
        (checkout / name).symlink_to(REPO / name)
    (checkout / "notebooks" / NOTEBOOK.name).write_bytes(NOTEBOOK.read_bytes())
    (checkout / "data" / "demo").symlink_to(data_dir, target_is_directory=True)
    return checkout


def test_notebook_runs_from_notebooks_dir_with_no_environment(demo_checkout, truth):
    """Jupyter starts the kernel in notebooks/; the user has set nothing (no CAMPAIGN_DATA_DIR, no API
    credentials): the notebook finds the demo's data on its own and shows counts as integers."""
    import nbformat
    from jupyter_client.manager import KernelManager
    from nbclient import NotebookClient

    # The python3 kernel must be this venv's interpreter, where campaign_pipeline is installed.
    assert KernelManager(kernel_name="python3").format_kernel_cmd()[0] == sys.executable
    bare = {name: os.environ[name] for name in ("PATH", "HOME") if name in os.environ}
    notebook = nbformat.read(demo_checkout / "notebooks" / NOTEBOOK.name, as_version=4)
    NotebookClient(notebook, kernel_name="python3", timeout=120).execute(
        cwd=str(demo_checkout / "notebooks"), env=bare)
    outputs = [o for c in notebook.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= 2
    stdout = "".join(o.get("text", "") for o in outputs if o.output_type == "stream" and o.name == "stdout")
    stderr = "".join(o.get("text", "") for o in outputs if o.output_type == "stream" and o.name == "stderr")
    assert str(demo_checkout / "data" / "demo") in stderr  # says which data it reads
    assert f"Partition days {START} to {END} (UTC)" in stdout  # the date range used
    assert f"{len(truth.campaigns)} of {len(truth.campaigns)} campaigns reconcile" in stdout
    tables = html.unescape("".join(o.get("data", {}).get("text/html", "") for o in outputs))
    shown = stdout + tables + "".join(o.get("data", {}).get("text/plain", "") for o in outputs)
    assert not re.search(r"\d\.0{6}\b", shown)  # no 263.000000
    cells = re.findall(r"<td[^>]*>\s*([^<]*?)\s*</td>", tables)
    channels = by_channel(truth)
    assert str(len(channels[SMS])) in cells and str(len(channels[WHATSAPP])) in cells  # totals, as integers
    assert any(re.fullmatch(r"\d+\.\d%", c) for c in cells)  # rates as percentages
    assert START.isoformat() in cells and f"{START} 00:00:00" not in tables  # days, not timestamps
    # WhatsApp failures are labelled with the code and its meaning; SMS with status and carrier status.
    for m in channels[WHATSAPP]:
        if m["status"] == "Failed" and m["failed_reason"]:
            code, text = split_reason(m["failed_reason"])
            assert (f"{code} - {text}" if code else text) in cells, m["failed_reason"]
    assert any(c.startswith("Undelivered, carrier: ") for c in cells)


# ------------------------------------------------------------------ data dictionary and SQL files


def dictionary_sections() -> dict[str, list[tuple[str, str]]]:
    """``### name`` sections of the dictionary -> [(column, type)] from the first two table cells."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current = None
    for line in DICTIONARY.read_text().splitlines():
        if line.startswith("### "):
            current = line[4:].strip().strip("`")
            sections[current] = []
        elif line.startswith("#"):
            current = None
        elif current and line.startswith("|"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if cells[0] != "column" and not set(cells[0]) <= set("-: "):
                sections[current].append((cells[0], cells[1]))
    return sections


def views(con) -> list[str]:
    return [r[0] for r in con.execute("SELECT view_name FROM duckdb_views() WHERE NOT internal "
                                      "AND schema_name = 'main' ORDER BY 1").fetchall()]


def test_data_dictionary_documents_exactly_the_tables_and_views(con):
    assert sorted(dictionary_sections()) == sorted([*schemas.TABLES, *views(con)])


def test_data_dictionary_matches_table_schemas():
    sections = dictionary_sections()
    for name, spec in schemas.TABLES.items():
        assert sections[name] == [(f.name, schemas.duckdb_type(f.type)) for f in spec.schema], name


def test_data_dictionary_matches_view_columns(con):
    sections = dictionary_sections()
    normalize = {"TIMESTAMP WITH TIME ZONE": "TIMESTAMPTZ"}
    for view in views(con):
        described = [(r[0], normalize.get(r[1], r[1])) for r in con.execute(f"DESCRIBE {view}").fetchall()]
        assert sections[view] == described, view


def test_data_dictionary_names_every_rate_macro(con):
    macros = [r[0] for r in con.execute("SELECT DISTINCT function_name FROM duckdb_functions() "
                                        "WHERE function_type = 'macro' AND NOT internal").fetchall()]
    assert sorted(macros) == ["delivery_rate", "failure_rate", "read_rate"]
    text = DICTIONARY.read_text()
    assert all(f"`{m}(" in text for m in macros)


def test_data_dictionary_example_queries_run(con):
    queries = re.findall(r"```sql\n(.*?)```", DICTIONARY.read_text(), flags=re.DOTALL)
    assert len(queries) == 5
    results = [con.execute(q).fetchall() for q in queries]
    assert [r[0] for r in results[0]] == [SMS, WHATSAPP]
    assert results[3] == []  # the fault-free simulator reconciles
    assert results[4]


def test_sql_files_start_with_their_grain_and_keep_the_ordering_convention():
    for path in sorted(SQL_DIR.glob("*.sql")):
        assert re.fullmatch(r"\d{2}_[a-z0-9_]+\.sql", path.name), path.name
        first = path.read_text().splitlines()[0]
        created = re.findall(r"CREATE OR REPLACE VIEW (\w+)", path.read_text())
        assert created and first.startswith(f"-- {created[0]}: one row per"), path.name


def test_views_resolve_on_a_read_only_connection(data_dir):
    connection = duckdb.connect(str(data_dir / "warehouse.duckdb"), read_only=True)
    try:
        for view in views(connection):
            connection.execute(f"SELECT * FROM {view} LIMIT 1").fetchall()
    finally:
        connection.close()
