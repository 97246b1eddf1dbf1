"""Warehouse publishing: one transaction per (app, day) that is written, audited, then
committed or rolled back; re-loads give identical tables, a failed or rejected load keeps the old day."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pyarrow as pa
import pytest

from campaign_pipeline.errors import WarehouseError
from campaign_pipeline.model import schemas
from campaign_pipeline.storage.warehouse import Warehouse
from tests.conftest import table_fingerprint

APP = "app-1"
DAYS = [date(2024, 5, 1) + timedelta(days=i) for i in range(3)]
LARGE = 150_000  # more than one DuckDB row group (122,880 rows)


def day_tables(day: date, rows: int, status: str = "Delivered") -> dict[str, pa.Table]:
    """A schema-conforming day: one campaign, ``rows`` SMS messages, no WhatsApp or rejects."""
    start = datetime(day.year, day.month, day.day, tzinfo=UTC)
    tables = {name: spec.schema.empty_table() for name, spec in schemas.TABLES.items()}
    sms = schemas.SMS_MESSAGES.schema
    columns = {f.name: pa.nulls(rows, f.type) for f in sms}
    columns.update(
        app_id=pa.array([APP] * rows, pa.string()),
        campaign_id=pa.array([f"c-{day.isoformat()}"] * rows, pa.string()),
        recipient=pa.array([f"+852{i:08d}" for i in range(rows)], pa.string()),
        partition_date=pa.array([day] * rows, pa.date32()),
        sent_at=pa.array([start + timedelta(seconds=i % 86_000) for i in range(rows)], sms.field("sent_at").type),
        status=pa.array([status] * rows, pa.string()),
    )
    tables[schemas.SMS_MESSAGES.name] = pa.table(columns, schema=sms)
    return tables


def load(wh: Warehouse, day: date, tables: dict[str, pa.Table]) -> dict[str, int]:
    """Publish a day (no audit); return the rows inserted per table."""
    inserted, committed = wh.replace_partition(day, tables, APP)
    assert committed
    return inserted


@pytest.mark.parametrize("rows", [LARGE, 500])
def test_reloading_days_gives_identical_tables_large_or_small(tmp_path, rows):
    loaded, fresh = Warehouse(tmp_path / "loaded.duckdb"), Warehouse(tmp_path / "fresh.duckdb")
    for day in DAYS:
        assert load(loaded, day, day_tables(day, rows, "Pending"))[schemas.SMS_MESSAGES.name] == rows
    # Re-load the middle day (with new statuses) and the first one; readers open between days.
    load(loaded, DAYS[1], day_tables(DAYS[1], rows))
    with loaded.reader() as con:
        assert con.execute("SELECT count(*) FROM sms_messages").fetchone() == (3 * rows,)
    load(loaded, DAYS[0], day_tables(DAYS[0], rows, "Pending"))
    load(fresh, DAYS[0], day_tables(DAYS[0], rows, "Pending"))
    load(fresh, DAYS[1], day_tables(DAYS[1], rows))
    load(fresh, DAYS[2], day_tables(DAYS[2], rows, "Pending"))
    assert table_fingerprint(loaded.path) == table_fingerprint(fresh.path)
    with loaded.reader() as con:
        assert con.execute(
            "SELECT partition_date, status, count(*) FROM sms_messages GROUP BY ALL ORDER BY 1"
        ).fetchall() == [(DAYS[0], "Pending", rows), (DAYS[1], "Delivered", rows), (DAYS[2], "Pending", rows)]


def test_failed_large_reload_keeps_the_old_day(tmp_path):
    wh = Warehouse(tmp_path / "w.duckdb")
    for day in DAYS[:2]:
        load(wh, day, day_tables(day, LARGE))
    before = table_fingerprint(wh.path)
    broken = day_tables(DAYS[1], LARGE, "Pending")
    broken[schemas.REJECTED_RECORDS.name] = pa.table({"nonsense": [1]})  # fails after the big insert
    with pytest.raises((pa.ArrowInvalid, ValueError, KeyError)):
        wh.replace_partition(DAYS[1], broken, APP)
    assert table_fingerprint(wh.path) == before


def test_an_audit_sees_the_new_rows_and_a_rejecting_audit_keeps_the_old_day(tmp_path):
    wh = Warehouse(tmp_path / "w.duckdb")
    load(wh, DAYS[0], day_tables(DAYS[0], 40))
    before = table_fingerprint(wh.path)
    seen = {}

    def reject(con) -> bool:
        seen["rows"] = con.execute("SELECT count(*), min(status) FROM sms_messages").fetchone()
        return False

    inserted, committed = wh.replace_partition(DAYS[0], day_tables(DAYS[0], 7, "Pending"), APP, audit=reject)
    assert (inserted[schemas.SMS_MESSAGES.name], committed) == (7, False)
    assert seen["rows"] == (7, "Pending")  # the audit ran on the new version, inside the transaction
    assert table_fingerprint(wh.path) == before
    inserted, committed = wh.replace_partition(DAYS[0], day_tables(DAYS[0], 7, "Pending"), APP,
                                               audit=lambda con: True)
    assert committed
    with wh.reader() as con:
        assert con.execute("SELECT count(*), min(status) FROM sms_messages").fetchone() == (7, "Pending")


def test_writers_may_not_autoload_extensions_and_foreign_files_are_refused(tmp_path):
    wh = Warehouse(tmp_path / "w.duckdb")
    load(wh, DAYS[0], day_tables(DAYS[0], 3))
    with wh.writer() as con:
        settings = dict(con.execute(
            "SELECT name, value FROM duckdb_settings() "
            "WHERE name IN ('autoinstall_known_extensions', 'autoload_known_extensions')").fetchall())
    assert settings == {"autoinstall_known_extensions": "false", "autoload_known_extensions": "false"}
    with wh.reader() as con:
        assert dict(con.execute(
            "SELECT name, value FROM duckdb_settings() "
            "WHERE name IN ('autoinstall_known_extensions', 'autoload_known_extensions')").fetchall()) == settings
    foreign = Warehouse(tmp_path / "foreign.duckdb")
    foreign.path.write_bytes(b"SQLite format 3\x00" + bytes(4096))
    for open_it in (foreign.reader, foreign.writer):
        with pytest.raises(WarehouseError, match="not a DuckDB database"), open_it():
            pass


def test_a_million_row_day_loads_and_checks_under_the_writers_memory_cap(tmp_path):
    """The writer's 32 MB, one-thread DuckDB cap spills instead of failing: a large day loaded from its Parquet
    file passes every check inside the transaction."""
    import pyarrow.parquet as pq

    from campaign_pipeline import quality
    from campaign_pipeline.model.transform import SplitStats
    from campaign_pipeline.model.windows import PartitionWindow

    rows, campaigns = 1_000_000, 300
    day = DAYS[0]
    tables = day_tables(day, rows)
    sms = tables[schemas.SMS_MESSAGES.name]
    sms = sms.set_column(sms.schema.get_field_index("campaign_id"), "campaign_id",
                         pa.array([f"c{i % campaigns}" for i in range(rows)]))
    camp = schemas.CAMPAIGNS.schema
    columns = {f.name: pa.nulls(campaigns, f.type) for f in camp}
    columns.update(app_id=pa.array([APP] * campaigns), campaign_id=pa.array([f"c{i}" for i in range(campaigns)]),
                   partition_date=pa.array([day] * campaigns, pa.date32()), channel=pa.array(["SMS"] * campaigns),
                   sent_at=pa.array([datetime(2024, 5, 1, 1, tzinfo=UTC)] * campaigns, camp.field("sent_at").type),
                   total_recipients=pa.array([rows // campaigns + (i < rows % campaigns) for i in range(campaigns)],
                                             pa.int64()))
    tables.update({schemas.SMS_MESSAGES.name: sms, schemas.CAMPAIGNS.name: pa.table(columns, schema=camp)})
    files = {}
    for name, table in tables.items():
        files[name] = tmp_path / f"{name}.parquet"
        pq.write_table(table, files[name])
    outcomes = []

    def audit(con) -> bool:
        assert con.execute("SELECT current_setting('memory_limit')").fetchone()[0] in ("32.0 MiB", "30.5 MiB")
        outcomes.extend(quality.evaluate_day(con, PartitionWindow.for_day(day, "UTC"), APP, SplitStats()))
        return True

    inserted, committed = Warehouse(tmp_path / "w.duckdb").replace_partition(day, files, APP, audit=audit)
    assert committed and inserted[schemas.SMS_MESSAGES.name] == rows
    assert [(o.spec.name, o.description) for o in outcomes if not o.passed] == []
