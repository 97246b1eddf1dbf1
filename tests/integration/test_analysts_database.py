"""The analysts' database (analytics.duckdb): readable at any moment with plain read-only opens and
the PyPI DuckDB CLI, during a backfill too, holding exactly the warehouse's published rows."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import duckdb
import pytest

from campaign_pipeline.model import schemas
from campaign_pipeline.storage import analytics
from tests.conftest import FIRST_DAY, simulator_env, start_simulator

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
CLI = [sys.executable, "-m", "campaign_pipeline.cli"]
DAYS = 6

# A separate process opening the file read-only with no retry, N times, each with one query.
_OPENER = """
import sys, time, duckdb
path, n = sys.argv[1], int(sys.argv[2])
seen = []
for _ in range(n):
    con = duckdb.connect(path, read_only=True)
    seen.append(con.execute("SELECT count(*) FROM sms_messages").fetchone()[0])
    con.close()
    time.sleep(0.01)
print(" ".join(map(str, seen)))
"""


def _tables(con: duckdb.DuckDBPyConnection) -> dict[str, list[tuple]]:
    out = {}
    for spec in schemas.TABLES.values():
        columns = ", ".join(f'"{f.name}"' for f in spec.schema)
        out[spec.name] = con.execute(f'SELECT {columns} FROM "{spec.name}" ORDER BY ALL').fetchall()
    return out


@pytest.fixture(scope="module")
def backfill_run(tmp_path_factory):
    """A paced backfill of several days, with 100 plain read-only opens and PyPI-CLI queries run
    from separate processes while it writes."""
    data_dir = tmp_path_factory.mktemp("analysts") / "data"
    server = start_simulator(campaigns_per_day=6, recipients_per_campaign=120)
    try:
        env = {k: v for k, v in os.environ.items() if k == "CAMPAIGN_LAST_RUN_FILE" or not k.startswith(("CINNOX_", "CAMPAIGN_", "DAGSTER_"))}
        # ~14 requests a day at 240/min: each day takes a few seconds, so the reads overlap the writes.
        env.update(simulator_env(server, data_dir, CINNOX_RATE_LIMIT_PER_MIN="240"))
        end = FIRST_DAY + timedelta(days=DAYS - 1)
        backfill = subprocess.Popen([*CLI, "backfill", "--start", str(FIRST_DAY), "--end", str(end)], env=env,
                                    cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        path = data_dir / analytics.ANALYTICS_FILENAME
        deadline = time.monotonic() + 60
        while not path.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        opener = subprocess.run([sys.executable, "-c", _OPENER, str(path), "100"], capture_output=True, text=True,
                                timeout=120, check=False)
        cli = [subprocess.run([str(BIN / "duckdb"), "-readonly", str(path), "-csv", "-noheader", "-c",
                               "SELECT count(*) FROM campaigns"], capture_output=True, text=True, timeout=60,
                              check=False) for _ in range(5)]
        still_running = backfill.poll() is None
        _out, err = backfill.communicate(timeout=300)
        yield {"data_dir": data_dir, "path": path, "opener": opener, "cli": cli, "overlapped": still_running,
               "backfill_rc": backfill.returncode, "backfill_err": err}
    finally:
        server.stop()


def test_100_plain_read_only_opens_during_a_backfill_all_succeed(backfill_run):
    assert backfill_run["backfill_rc"] == 0, backfill_run["backfill_err"]
    assert backfill_run["overlapped"], "the backfill finished before the reads did: nothing was shown"
    opener = backfill_run["opener"]
    assert opener.returncode == 0, opener.stderr
    counts = [int(n) for n in opener.stdout.split()]
    assert len(counts) == 100
    assert counts == sorted(counts)  # days appear as they are published, never disappear


def test_the_pypi_duckdb_cli_opens_it_during_a_backfill(backfill_run):
    for result in backfill_run["cli"]:
        assert result.returncode == 0, result.stderr
        assert int(result.stdout.strip()) >= 0
    version = subprocess.run([str(BIN / "duckdb"), "--version"], capture_output=True, text=True, check=True)
    assert version.stdout.startswith("v1.5.")  # the newest DuckDB CLI on PyPI, not the project's own module


def test_it_holds_exactly_the_warehouses_published_rows(backfill_run):
    data_dir = backfill_run["data_dir"]
    with duckdb.connect(str(data_dir / "warehouse.duckdb"), read_only=True) as warehouse:
        expected = _tables(warehouse)
        views = warehouse.execute("SELECT * FROM delivery_rates_daily ORDER BY ALL").fetchall()
    con = analytics.connect(data_dir, announce=False)
    try:
        assert _tables(con) == expected
        assert con.execute("SELECT * FROM delivery_rates_daily ORDER BY ALL").fetchall() == views
        assert len({row[0] for row in views}) == DAYS
        comments = con.execute("SELECT count(*) FROM duckdb_columns() WHERE comment IS NULL AND schema_name = 'main' "
                               "AND database_name = current_database() AND NOT table_name LIKE '\\_%' ESCAPE '\\'").fetchone()[0]
        assert comments == 0
    finally:
        con.close()


def test_read_only_commands_find_the_last_runs_data_without_credentials(backfill_run, tmp_path):
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path),
           "CAMPAIGN_LAST_RUN_FILE": os.environ["CAMPAIGN_LAST_RUN_FILE"]}
    result = subprocess.run([*CLI, "report", "--format", "csv"], env=env, cwd=ROOT / "notebooks",
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert f"reading {backfill_run['data_dir']} (the data dir the last run used" in result.stderr
    assert len(result.stdout.strip().splitlines()) == 1 + 2 * DAYS  # a row per day and channel
    sql = subprocess.run([*CLI, "sql", "-csv", "-noheader", "-c", "SELECT count(DISTINCT partition_date) FROM campaigns"],
                         env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False)
    assert sql.returncode == 0, sql.stderr
    assert sql.stdout.strip() == str(DAYS)


def test_a_killed_build_leaves_the_previous_file_and_is_cleaned_up(backfill_run, tmp_path):
    data_dir = backfill_run["data_dir"]
    stale = data_dir / f".{analytics.ANALYTICS_FILENAME}.tmp-999999999"
    stale.write_bytes(b"half a database")
    before = backfill_run["path"].read_bytes()
    assert analytics.refresh(data_dir, str(data_dir / "lake")) == backfill_run["path"]
    assert backfill_run["path"].read_bytes() == before  # up to date: not rebuilt
    (data_dir / analytics.ANALYTICS_FILENAME).unlink()
    analytics.refresh(data_dir, str(data_dir / "lake"))
    assert not stale.exists() and backfill_run["path"].exists()


def test_glob_characters_in_the_lake_path_match_only_themselves(tmp_path):
    assert analytics.table_glob("/d/a[b]*?", "t") == "/d/a[[]b][*][?]/t/date=*/part-*.parquet"


def test_a_moved_data_dir_says_how_to_rebuild_instead_of_reading_the_old_lake(backfill_run, tmp_path):
    import shutil

    moved = tmp_path / "moved"
    shutil.copytree(backfill_run["data_dir"], moved / "data")
    away = tmp_path / "away"
    # the original data dir is gone (moved), its copy keeps an analysts' database pointing at it
    original = backfill_run["data_dir"]
    original.rename(away)
    try:
        with pytest.raises(Exception, match="which is gone .*rebuilds it"):
            analytics.connect(moved / "data", announce=False)
        analytics.refresh(moved / "data", str(moved / "data" / "lake"))
        con = analytics.connect(moved / "data", announce=False)
        try:
            assert con.execute("SELECT count(DISTINCT partition_date) FROM campaigns").fetchone()[0] == DAYS
        finally:
            con.close()
    finally:
        away.rename(original)
