"""Warehouse publishing of large days: the vacuum policy keeps semantics (identical tables on
re-load, old day kept on failure) while skipping the row-group re-pack for large loads."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pyarrow as pa
import pytest

from campaign_pipeline import schemas, warehouse
from campaign_pipeline.warehouse import Warehouse

from .conftest import table_fingerprint

APP = "app-1"
DAYS = [date(2024, 5, 1) + timedelta(days=i) for i in range(3)]


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


def load(wh: Warehouse, day: date, tables: dict[str, pa.Table]) -> str:
    """Publish a day; return the vacuum setting its checkpoint ran with."""
    seen = {}
    wh.replace_partition(day, tables, APP, after_commit=lambda con: seen.update(
        vacuum=con.execute("SELECT current_setting('max_vacuum_tasks')").fetchone()[0]))
    return str(seen["vacuum"])


@pytest.mark.parametrize("rows", [warehouse.LARGE_LOAD_MIN_ROWS, 500])
def test_reloading_days_gives_identical_tables_large_or_small(tmp_path, rows):
    loaded, fresh = Warehouse(tmp_path / "loaded.duckdb"), Warehouse(tmp_path / "fresh.duckdb")
    vacuum = {load(loaded, day, day_tables(day, rows, "Pending")) for day in DAYS}
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
    # Large loads skip the checkpoint's vacuum; small ones keep DuckDB's default.
    assert vacuum == ({"0"} if rows >= warehouse.LARGE_LOAD_MIN_ROWS else {"100"})


def test_failed_large_reload_keeps_the_old_day(tmp_path):
    wh = Warehouse(tmp_path / "w.duckdb")
    rows = warehouse.LARGE_LOAD_MIN_ROWS
    for day in DAYS[:2]:
        load(wh, day, day_tables(day, rows))
    before = table_fingerprint(wh.path)
    broken = day_tables(DAYS[1], rows, "Pending")
    broken[schemas.REJECTED_RECORDS.name] = pa.table({"nonsense": [1]})  # fails after the big insert
    with pytest.raises((pa.ArrowInvalid, ValueError, KeyError)):
        wh.replace_partition(DAYS[1], broken, APP)
    assert table_fingerprint(wh.path) == before
    # The next small load on the same file runs with the default vacuum again.
    assert load(wh, DAYS[2], day_tables(DAYS[2], 10)) == "100"


READER = """
import sys, time
from campaign_pipeline.warehouse import Warehouse
with Warehouse(sys.argv[1]).reader(timeout_s=20) as con:
    rows = con.execute("SELECT count(*) FROM sms_messages").fetchone()[0]
print(time.time(), rows)
"""


def test_a_writer_session_reuses_its_connection_and_still_lets_readers_in(tmp_path):
    import subprocess
    import sys
    import time

    wh = Warehouse(tmp_path / "w.duckdb")
    with wh.writer_session(max_hold_s=0.3) as session:
        wh.replace_partition(DAYS[0], day_tables(DAYS[0], 50), APP, session=session)
        first = session.connection()
        wh.replace_partition(DAYS[1], day_tables(DAYS[1], 50), APP, session=session)
        assert session.connection() is first  # consecutive loads share one connection
        reader = subprocess.Popen([sys.executable, "-c", READER, str(wh.path)], stdout=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 30
        while reader.poll() is None and time.monotonic() < deadline:
            wh.replace_partition(DAYS[2], day_tables(DAYS[2], 50), APP, session=session)  # keeps the file busy
        session_still_open_at = time.time()
        assert session.connection() is not first  # re-opened after max_hold_s, which let the reader in
    out, _ = reader.communicate(timeout=30)
    assert reader.returncode == 0
    read_at, rows = out.split()
    assert float(read_at) <= session_still_open_at and int(rows) >= 100
    with wh.reader() as con:
        assert con.execute("SELECT count(*) FROM sms_messages").fetchone()[0] == 150


PROBE = """
import os, sys, time
from campaign_pipeline.warehouse import Warehouse, WarehouseError
path, deadline = sys.argv[1], time.time() + 60
print("ready", flush=True)
while not os.path.exists(path) and time.time() < deadline:
    time.sleep(0.01)
while time.time() < deadline:
    try:
        with Warehouse(path).reader(timeout_s=0.3) as con:
            con.execute("SELECT count(*) FROM campaigns").fetchone()
        print(time.time(), flush=True)
        break
    except WarehouseError:
        time.sleep(0.02)
"""


def test_the_publisher_lets_go_of_the_warehouse_while_the_next_day_is_fetched(tmp_path):
    """Each day's fetch is slow (7 requests, one at a time, each held 0.25 s by the API): after a
    small day the publisher waits for the next one only until it has held the file for half its
    ``max_hold_s`` (0.5 s here), then lets go while that day is still being fetched. So a reader in
    another process gets in before day 2 has landed (when the run hands out day 1), not only when
    the session re-opens after ``max_hold_s`` or after the run."""
    import subprocess
    import sys
    import time

    from campaign_pipeline import pipeline
    from campaign_pipeline.client import CinnoxClient
    from campaign_pipeline.lake import Lake
    from campaign_pipeline.windows import PartitionWindow

    from .conftest import start_simulator

    server = start_simulator(fault_rate=1.0, fault_kinds=("slow",), slow_seconds=0.25, campaigns_per_day=6,
                             recipients_per_campaign=40)
    wh = Warehouse(tmp_path / "w.duckdb", max_hold_s=1.0)
    windows = [PartitionWindow.for_day(date(2024, 5, 2) + timedelta(days=n), "UTC") for n in range(3)]
    # The reader starts first (its imports take longer than a day's fetch) and waits for the file.
    probe = subprocess.Popen([sys.executable, "-c", PROBE, str(wh.path)], stdout=subprocess.PIPE, text=True)
    handed_out: list[float] = []
    try:
        assert probe.stdout.readline().strip() == "ready"
        with CinnoxClient(server.base_url, server.app_id, server.token, rate_limit_per_min=None) as client:
            for _ in pipeline.process_days(windows, Lake(str(tmp_path / "lake")), wh,
                                           pipeline.AppRef("default", "a"), client, workers=1):
                handed_out.append(time.time())
    finally:
        server.stop()
    out, _ = probe.communicate(timeout=60)
    assert out.strip(), "the reader never got in"
    assert float(out.strip()) < handed_out[0], "the reader got in only once day 2 had landed"


def _memory_limit_bytes(con) -> float:
    number, unit = con.execute("SELECT current_setting('memory_limit')").fetchone()[0].split()
    return float(number) * {"KiB": 2**10, "MiB": 2**20, "GiB": 2**30}[unit]


def test_checks_after_a_load_get_a_larger_memory_cap_than_the_load(tmp_path):
    """A load streams within the writer's small cap; the day's checks group a whole day and cannot,
    so ``after_commit`` runs with the larger cap (32 MB made them fail at ~3M rows a day), and the
    next load in the same session is capped again."""
    wh = Warehouse(tmp_path / "warehouse.duckdb")
    seen: list[float] = []
    with wh.writer_session() as session:
        wh.replace_partition(DAYS[0], day_tables(DAYS[0], 10), APP, session=session,
                             after_commit=lambda con: seen.append(_memory_limit_bytes(con)))
        after = _memory_limit_bytes(session.connection())
    assert seen[0] >= 0.9 * 2**30
    assert after <= 40 * 2**20


def test_refresh_views_previews_the_latest_days_unless_asked_not_to(tmp_path):
    from campaign_pipeline import pipeline

    wh = Warehouse(tmp_path / "w.duckdb")
    wh.replace_partition(DAYS[0], day_tables(DAYS[0], 20), APP)
    applied, preview = pipeline.refresh_views(wh, preview_days=0)
    assert applied and preview == ""
    with wh.reader() as con:
        views = {row[0] for row in con.execute("SELECT view_name FROM duckdb_views() WHERE NOT internal").fetchall()}
    assert views, "no analyst view was created"
    applied_again, preview = pipeline.refresh_views(wh)
    assert applied_again == applied and DAYS[0].isoformat() in preview
