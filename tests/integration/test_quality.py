"""Data correctness: odd records end to end, rejected records, each per-partition check failing, late updates."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, date, datetime, timedelta

import pyarrow as pa
import pytest

from campaign_pipeline import quality
from campaign_pipeline.defs.backfill import run_backfill
from campaign_pipeline.model import schemas
from campaign_pipeline.model.transform import SplitStats
from campaign_pipeline.model.windows import PartitionWindow
from campaign_pipeline.storage.warehouse import Warehouse
from tests.conftest import FIRST_DAY, pipeline_env, read_table, start_simulator

REASON_OF_KIND = {"missing_recipient": "missing recipient", "missing_id": "missing id", "bad_date": "unparseable date"}
DAY = date(2024, 5, 2)


def _truth(server, start: date, end: date):
    return server.simulator.ground_truth(
        datetime(start.year, start.month, start.day, tzinfo=UTC),
        datetime(end.year, end.month, end.day, tzinfo=UTC) + timedelta(days=1),
    )


@pytest.fixture(scope="module")
def odd_server():
    server = start_simulator(odd_records=True, campaigns_per_day=5, seed=5)
    yield server
    server.stop()


def test_odd_records_load_every_good_record_and_reject_exactly_the_bad_ones(odd_server, tmp_path, monkeypatch):
    pipeline_env(monkeypatch, odd_server, tmp_path, CAMPAIGN_REJECTED_THRESHOLD="0.5")
    outcome = run_backfill(DAY, DAY + timedelta(days=1))
    assert outcome.success, outcome.failure
    truth = _truth(odd_server, DAY, DAY + timedelta(days=1))
    warehouse = tmp_path / "warehouse.duckdb"
    loaded = {(r["campaign_id"], r["recipient"]): r for t in ("sms_messages", "whatsapp_messages")
              for r in read_table(warehouse, t)}
    expected = {(m["campaign_id"], m["recipient"]): m for m in truth.messages}
    assert loaded.keys() == expected.keys()
    for key, row in loaded.items():
        for column, value in row.items():
            if column not in ("partition_date", "app_id"):
                assert value == expected[key][column], (column, key)
    rejected = read_table(warehouse, "rejected_records", "campaign_id, reason")
    assert Counter(r["reason"] for r in rejected) == Counter(REASON_OF_KIND[r["reason_kind"]] for r in truth.rejected)
    assert all(r["raw_record"].startswith("{") and r["endpoint"] == "detail" for r in rejected)
    assert {r["campaign_id"] for r in rejected if r["reason"] != "missing id"} <= {c["campaign_id"] for c in truth.campaigns}
    # Warnings are raised by the non-blocking checks, which name what they saw.
    assert outcome.failed_checks == []
    assert {"sms_messages:status_in_vocabulary", "campaigns:schema_drift", "rejected_records:rejected_ratio"} <= set(
        outcome.warned_checks)


def test_rejected_ratio_above_threshold_blocks_the_run(odd_server, tmp_path, monkeypatch):
    pipeline_env(monkeypatch, odd_server, tmp_path, CAMPAIGN_REJECTED_THRESHOLD="0.001")
    outcome = run_backfill(DAY, DAY)
    assert not outcome.success
    assert "blocking check failed (rejected_records:rejected_ratio)" in (outcome.failure or "")
    assert "rejected_records:rejected_ratio" in outcome.failed_checks


# --- each check made to fail on a hand-built warehouse ------------------------------------------

WINDOW = PartitionWindow.for_day(DAY, "UTC")
APP = "app-1"
SENT = datetime(2024, 5, 2, 10, tzinfo=UTC)


def _campaign(cid: str, channel: str, total: int, delivered: int, read=None, pending=None, failed=None, sent=SENT):
    return {"campaign_id": cid, "partition_date": DAY, "sent_at": sent, "channel": channel, "total_recipients": total,
            "delivered": delivered, "read": read, "pending": pending, "failed": failed}


def _message(cid: str, recipient: str, status: str, sent=SENT):
    return {"campaign_id": cid, "recipient": recipient, "partition_date": DAY, "sent_at": sent, "status": status}


def _table(spec, rows):
    columns = {f.name: [r.get(f.name, APP if f.name == "app_id" else None) for r in rows] for f in spec.schema}
    return pa.table(columns, schema=spec.schema)


def build_warehouse(path, campaigns=(), sms=(), whatsapp=(), rejected=()):
    warehouse = Warehouse(path)
    warehouse.replace_partition(DAY, {
        "campaigns": _table(schemas.CAMPAIGNS, campaigns),
        "sms_messages": _table(schemas.SMS_MESSAGES, sms),
        "whatsapp_messages": _table(schemas.WHATSAPP_MESSAGES, whatsapp),
        "rejected_records": _table(schemas.REJECTED_RECORDS, rejected),
    }, APP)
    return warehouse


def outcomes_of(warehouse, refetch=None, stats=None):
    with warehouse.reader() as con:
        return {(o.spec.table, o.spec.name): o for o in quality.evaluate_day(con, WINDOW, APP, stats or SplitStats(), refetch)}


def test_checks_all_pass_on_consistent_data(tmp_path):
    warehouse = build_warehouse(
        tmp_path / "w.duckdb",
        campaigns=[_campaign("s", "SMS", 2, 1), _campaign("w", "WhatsApp", 2, 2, read=1, pending=0, failed=0)],
        sms=[_message("s", "+1001", "Delivered"), _message("s", "+1002", "Pending")],
        whatsapp=[_message("w", "+2001", "Delivered"), _message("w", "+2002", "Read")],
    )
    outcomes = outcomes_of(warehouse)
    assert all(o.passed for o in outcomes.values()), {k: o.description for k, o in outcomes.items() if not o.passed}
    assert outcomes[("campaigns", "reconciles_with_details")].metadata["delivered_convention"] == ["Delivered+Read"]


def test_unique_check_fails_on_duplicate_campaign_recipient(tmp_path):
    warehouse = build_warehouse(tmp_path / "w.duckdb", campaigns=[_campaign("s", "SMS", 2, 2)],
                                sms=[_message("s", "+1001", "Delivered"), _message("s", "+1001", "Delivered")])
    outcome = outcomes_of(warehouse)[("sms_messages", "unique_campaign_recipient")]
    assert not outcome.passed and outcome.metadata["campaign_ids"] == ["s"]


def test_status_check_warns_and_names_unknown_values(tmp_path):
    warehouse = build_warehouse(tmp_path / "w.duckdb", campaigns=[_campaign("w", "WhatsApp", 1, 0)],
                                whatsapp=[_message("w", "+2001", "Expired")])
    outcome = outcomes_of(warehouse)[("whatsapp_messages", "status_in_vocabulary")]
    assert not outcome.passed and outcome.severity == quality.WARN
    assert outcome.metadata["unknown_statuses"] == {"Expired": 1}


def test_sent_at_check_fails_outside_the_partition_window(tmp_path):
    late = datetime(2024, 5, 3, 0, 0, tzinfo=UTC)  # the next day's midnight: outside [start, end)
    warehouse = build_warehouse(tmp_path / "w.duckdb", campaigns=[_campaign("s", "SMS", 1, 1, sent=late)],
                                sms=[_message("s", "+1001", "Delivered", sent=late)])
    outcomes = outcomes_of(warehouse)
    assert not outcomes[("campaigns", "sent_at_in_partition")].passed
    assert outcomes[("sms_messages", "sent_at_in_partition")].metadata["rows_outside"] == 1


@pytest.mark.parametrize(
    ("campaign", "field"),
    [
        (_campaign("w", "WhatsApp", 3, 2, read=1, pending=0, failed=0), "total_recipients"),
        (_campaign("w", "WhatsApp", 2, 2, read=2, pending=0, failed=0), "read"),
        (_campaign("w", "WhatsApp", 2, 0, read=1, pending=0, failed=0), "delivered"),
        (_campaign("w", "WhatsApp", 2, 2, read=1, pending=1, failed=0), "pending"),
        (_campaign("w", "WhatsApp", 2, 2, read=1, pending=0, failed=1), "failed"),
    ],
)
def test_reconciliation_fails_and_names_the_mismatching_campaign(tmp_path, campaign, field):
    warehouse = build_warehouse(tmp_path / "w.duckdb", campaigns=[campaign],
                                whatsapp=[_message("w", "+2001", "Delivered"), _message("w", "+2002", "Read")])
    refetches = []
    outcome = outcomes_of(warehouse, refetch=lambda: refetches.append(1) or [])[("campaigns", "reconciles_with_details")]
    assert not outcome.passed
    assert outcome.metadata["mismatching_campaign_ids"] == ["w"]
    assert field in outcome.metadata["mismatching_fields"]["w"]
    assert refetches == [1]  # re-fetched once before calling the mismatch


def test_reconciliation_passes_when_the_refetched_summary_has_caught_up(tmp_path):
    warehouse = build_warehouse(tmp_path / "w.duckdb", campaigns=[_campaign("s", "SMS", 2, 0)],
                                sms=[_message("s", "+1001", "Delivered"), _message("s", "+1002", "Delivered")])
    fresh = [{"id": "s", "date": "2024-05-02T10:00:00Z", "channel": "SMS", "totalRecipients": 2, "delivered": 2}]
    outcome = outcomes_of(warehouse, refetch=lambda: fresh)[("campaigns", "reconciles_with_details")]
    assert outcome.passed and outcome.metadata["summary_refetched"] is True


def test_rejected_ratio_warns_above_zero_and_fails_above_threshold(tmp_path):
    rejected = [{"partition_date": DAY, "endpoint": "detail", "reason": "missing id", "raw_record": "{}"}]
    warehouse = build_warehouse(tmp_path / "w.duckdb", campaigns=[_campaign("s", "SMS", 1, 1)],
                                sms=[_message("s", "+1001", "Delivered")], rejected=rejected)
    with warehouse.reader() as con:
        lenient = quality.check_rejected_ratio(con, WINDOW, APP, threshold=0.5)
        strict = quality.check_rejected_ratio(con, WINDOW, APP, threshold=0.01)
    assert not lenient.passed and lenient.severity == quality.WARN
    assert not strict.passed and strict.severity == quality.ERROR
    assert strict.metadata["reasons"] == {"missing id": 1}


def test_schema_drift_warns_with_field_names():
    stats = SplitStats(unknown_fields={"campaignTag", "sender.team"})
    outcome = quality.check_schema_drift(stats)
    assert not outcome.passed and outcome.severity == quality.WARN
    assert outcome.metadata["unknown_fields"] == ["campaignTag", "sender.team"]


# --- late status updates -----------------------------------------------------------------------

def test_rematerializing_later_picks_up_status_changes_and_replaces_rows(tmp_path, monkeypatch):
    day = FIRST_DAY
    counts = []
    for clock in (datetime(2024, 5, 2, 0, 30, tzinfo=UTC), datetime(2024, 5, 4, 12, tzinfo=UTC)):
        server = start_simulator(now=clock)
        try:
            pipeline_env(monkeypatch, server, tmp_path)
            assert run_backfill(day, day).success
            truth = _truth(server, day, day)
            rows = read_table(tmp_path / "warehouse.duckdb", "whatsapp_messages")
            assert Counter(r["status"] for r in rows) == Counter(
                m["status"] for m in truth.messages if m["channel"] == "WhatsApp")
            counts.append(Counter(r["status"] for r in rows))
        finally:
            server.stop()
    assert sum(counts[0].values()) == sum(counts[1].values())  # replaced, not appended
    assert counts[1]["Read"] > counts[0]["Read"]  # statuses moved on


# --- the CLI's direct run (no DAGSTER_HOME) and the Dagster job give the same warehouse and checks ----------------


def _views(warehouse) -> dict[str, list]:
    import duckdb

    con = duckdb.connect(str(warehouse), read_only=True)
    try:
        names = [n for (n,) in con.execute(
            "SELECT view_name FROM duckdb_views() WHERE NOT internal ORDER BY 1").fetchall()]
        return {name: sorted(map(repr, con.execute(f'SELECT * FROM "{name}"').fetchall())) for name in names}
    finally:
        con.close()


def _engine_run(start: date, end: date):
    from campaign_pipeline import engine
    from campaign_pipeline.config import PipelineConfig

    return list(engine.run_range(PipelineConfig.from_env(), start, end))


def test_direct_run_equals_the_dagster_run(odd_server, tmp_path, monkeypatch):
    from tests.conftest import table_fingerprint

    pipeline_env(monkeypatch, odd_server, tmp_path / "dagster", CAMPAIGN_REJECTED_THRESHOLD="0.5")
    in_dagster = run_backfill(DAY, DAY + timedelta(days=1))
    pipeline_env(monkeypatch, odd_server, tmp_path / "direct", CAMPAIGN_REJECTED_THRESHOLD="0.5")
    direct = _engine_run(DAY, DAY + timedelta(days=1))
    assert in_dagster.success and [day.published for day in direct] == [True, True]
    warned = sorted({name for day in direct for name in day.check_names(day.warned_checks)})
    assert warned == sorted(in_dagster.warned_checks) != []
    assert [name for day in direct for name in day.check_names(day.failed_checks)] == in_dagster.failed_checks == []
    dagster_wh, direct_wh = tmp_path / "dagster" / "warehouse.duckdb", tmp_path / "direct" / "warehouse.duckdb"
    assert table_fingerprint(direct_wh) == table_fingerprint(dagster_wh)
    assert _views(direct_wh) == _views(dagster_wh)


def test_a_day_failing_a_blocking_check_is_not_published(odd_server, tmp_path, monkeypatch):
    from tests.conftest import table_fingerprint

    pipeline_env(monkeypatch, odd_server, tmp_path, CAMPAIGN_REJECTED_THRESHOLD="0.5")
    (good,) = _engine_run(DAY, DAY)
    assert good.published
    before = table_fingerprint(tmp_path / "warehouse.duckdb")
    lake = _file_digests(tmp_path / "lake")
    monkeypatch.setenv("CAMPAIGN_REJECTED_THRESHOLD", "0.001")
    (day,) = _engine_run(DAY, DAY)
    assert not day.published
    assert "rejected_records:rejected_ratio" in day.failure
    assert "rejected_records:rejected_ratio" in day.check_names(day.failed_checks)
    # Write-audit-publish: the rejected version never replaced the good one, in DuckDB or the lake.
    assert table_fingerprint(tmp_path / "warehouse.duckdb") == before
    assert _file_digests(tmp_path / "lake") == lake


def _file_digests(root) -> dict:
    import hashlib

    return {p.relative_to(root): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*")
            if p.is_file() and "_quarantine" not in p.parts}
