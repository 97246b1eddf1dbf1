"""The DuckLake warehouse (CAMPAIGN_WAREHOUSE_URI=ducklake:postgres:...): a real PostgreSQL catalog,
data on local disk and on S3 (moto), the same tables as the DuckDB file, concurrent writers, and
readers that never fail and never see a day that failed its checks."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path

import boto3
import pytest
from psycopg import sql

from campaign_pipeline import engine
from campaign_pipeline.config import PipelineConfig
from campaign_pipeline.model import schemas
from campaign_pipeline.storage import analytics
from campaign_pipeline.storage.warehouse import DuckLakeWarehouse, open_warehouse, redact_uri
from tests.conftest import FIRST_DAY, moto_s3, simulator_env, start_simulator
from tests.integration.test_postgres_instance import DAGSTER_USER, free_port, start_postgres, stop_postgres

ROOT = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "campaign_pipeline.cli"]
END = FIRST_DAY + timedelta(days=2)
# Moto servers in one process share their buckets: this module's own, so other modules' lakes stay apart.
BUCKET = "ducklake-tests"


@pytest.fixture(scope="module")
def postgres():
    server = start_postgres()
    yield server
    stop_postgres(server)


def catalog_uri(postgres) -> str:
    """A fresh catalog database on the server, as a CAMPAIGN_WAREHOUSE_URI."""
    name = f"lake_{secrets.token_hex(4)}"
    with postgres.superuser() as con:
        con.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(name), sql.Identifier(DAGSTER_USER)))
    return "ducklake:postgres:" + postgres.conninfo(DAGSTER_USER, postgres.dagster_password, name)


def fingerprint(con) -> dict[str, tuple]:
    """Every table's rows (sorted) and every view's rows, for 'identical' assertions."""
    out = {}
    for spec in schemas.TABLES.values():
        columns = ", ".join(f'"{f.name}"' for f in spec.schema)
        out[spec.name] = tuple(con.execute(f'SELECT {columns} FROM "{spec.name}" ORDER BY ALL').fetchall())
    out["delivery_rates_daily"] = tuple(con.execute("SELECT * FROM delivery_rates_daily ORDER BY ALL").fetchall())
    return out


def load(server, data_dir: Path, **extra) -> list[engine.DayResult]:
    cfg = PipelineConfig.from_env(simulator_env(server, data_dir, **extra))
    return list(engine.run_range(cfg, FIRST_DAY, END, engine.RunOptions(run_id="test")))


@pytest.fixture(scope="module")
def file_backend(tmp_path_factory):
    """The same week in the DuckDB file: what every DuckLake must equal."""
    server = start_simulator()
    data_dir = tmp_path_factory.mktemp("file")
    results = load(server, data_dir)
    assert all(r.published for r in results)
    cfg = PipelineConfig.from_env(simulator_env(server, data_dir))
    with open_warehouse(cfg).reader() as con:
        yield server, fingerprint(con)
    server.stop()


def test_a_postgres_catalog_with_local_data_equals_the_duckdb_file(postgres, file_backend, tmp_path):
    server, expected = file_backend
    uri = catalog_uri(postgres)
    results = load(server, tmp_path, CAMPAIGN_WAREHOUSE_URI=uri)
    assert all(r.published for r in results), [r.failure for r in results]
    assert all(c.passed or not c.spec.blocking for r in results for c in r.checks)
    con = analytics.ducklake_from_env(tmp_path, {"CAMPAIGN_WAREHOUSE_URI": uri}).connect(read_only=True)
    try:
        assert fingerprint(con) == expected
        # the data dictionary and the metric macros are in the catalog too
        assert con.execute("SELECT comment FROM duckdb_tables() WHERE table_name = 'sms_messages' "
                           "AND database_name = current_database()").fetchone()[0]
        assert con.execute("SELECT delivery_rate(9, 10, 0)").fetchone()[0] == pytest.approx(0.9)
        # its Parquet files are under <lake>/ducklake/, and snapshots allow time travel
        assert list((tmp_path / "lake" / "ducklake").rglob("*.parquet")) or con.execute(
            "SELECT count(*) FROM ducklake_snapshots('warehouse')").fetchone()[0] > 1
        # time travel: the snapshot before the last day was published holds the first two days only
        (last,) = con.execute("SELECT max(snapshot_id) FROM ducklake_snapshots('warehouse')").fetchone()
        days_before = con.execute(f"SELECT count(DISTINCT partition_date) FROM sms_messages AT (VERSION => {last - 1})"
                                  ).fetchone()[0]
        assert days_before == 2
    finally:
        con.close()
    assert not (tmp_path / "warehouse.duckdb").exists() and not (tmp_path / "analytics.duckdb").exists()
    # the report reads the DuckLake, with no API credentials, and never prints the password
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "CAMPAIGN_WAREHOUSE_URI": uri,
           "CAMPAIGN_DATA_DIR": str(tmp_path)}
    report = subprocess.run([*CLI, "report", "--format", "csv", "--start", str(FIRST_DAY), "--end", str(END)],
                            env=env, cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert report.returncode == 0, report.stderr
    assert "reading the DuckLake warehouse" in report.stderr and postgres.dagster_password not in report.stderr
    assert len(report.stdout.strip().splitlines()) == 1 + 2 * 3  # a row per day and channel


def test_with_a_ducklake_each_app_has_its_own_pool(tmp_path):
    from campaign_pipeline.defs.definitions import build_definitions

    base = {"CAMPAIGN_SOURCE": "simulator", "CAMPAIGN_APPS": "hk,sg", "CAMPAIGN_DATA_DIR": str(tmp_path)}
    shared = {a.node_def.name: a.node_def.pool for a in build_definitions(base).assets}
    assert shared == {"hk_campaign_partition": "cinnox_api", "sg_campaign_partition": "cinnox_api"}
    lake = build_definitions({**base, "CAMPAIGN_WAREHOUSE_URI": f"ducklake:{tmp_path / 'c.ducklake'}"})
    assert {a.node_def.name: a.node_def.pool for a in lake.assets} == {
        "hk_campaign_partition": "cinnox_api_hk", "sg_campaign_partition": "cinnox_api_sg"}


@pytest.fixture(scope="module")
def s3_endpoint():
    with moto_s3(BUCKET) as endpoint:
        yield endpoint


def test_a_postgres_catalog_with_data_on_s3_equals_the_duckdb_file(postgres, file_backend, s3_endpoint, tmp_path,
                                                                    monkeypatch):
    server, expected = file_backend
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    s3 = {"CAMPAIGN_LAKE_URI": f"s3://{BUCKET}/prod", "AWS_ENDPOINT_URL": s3_endpoint, "AWS_REGION": "us-east-1"}
    uri = catalog_uri(postgres)
    results = load(server, tmp_path, CAMPAIGN_WAREHOUSE_URI=uri, **s3)
    assert all(r.published for r in results), [r.failure for r in results]
    env = {"CAMPAIGN_WAREHOUSE_URI": uri, **s3, "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test"}
    con = analytics.ducklake_from_env(tmp_path, env).connect(read_only=True)
    try:
        assert fingerprint(con) == expected
    finally:
        con.close()
    objects = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1", aws_access_key_id="test",
                           aws_secret_access_key="test").list_objects_v2(Bucket=BUCKET, Prefix="prod/ducklake/")
    assert objects.get("KeyCount", 0) > 0  # the tables' data files are in the bucket


def test_two_apps_write_at_once_and_both_commit(postgres, tmp_path):
    """Two CLI backfills (two apps, each its own process, as two Dagster runs in their own pools)
    write the same DuckLake at the same time; both publish every day."""
    uri = catalog_uri(postgres)
    base = {k: v for k, v in os.environ.items() if k == "CAMPAIGN_LAST_RUN_FILE" or not k.startswith(
        ("CINNOX_", "CAMPAIGN_", "DAGSTER_"))}
    base.update({"CAMPAIGN_SOURCE": "simulator", "CAMPAIGN_WAREHOUSE_URI": uri, "CAMPAIGN_PARTITION_TZ": "UTC",
                 "CAMPAIGN_PARTITION_START": FIRST_DAY.isoformat(), "CAMPAIGN_SIM_CAMPAIGNS_PER_DAY": "12",
                 # the hosts share the lake (S3 in production), so the DuckLake's data path agrees
                 "CAMPAIGN_LAKE_URI": str(tmp_path / "shared-lake")})
    processes = {}
    for key in ("hk", "sg"):
        env = {**base, "CAMPAIGN_APPS": key, "CAMPAIGN_DATA_DIR": str(tmp_path / key)}
        processes[key] = subprocess.Popen([*CLI, "backfill", "--start", str(FIRST_DAY), "--end", str(END)], env=env,
                                          cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    outputs = {key: process.communicate(timeout=300) for key, process in processes.items()}
    for key, process in processes.items():
        assert process.returncode == 0, outputs[key][1]
        assert "backfill done: 3 day(s)" in outputs[key][1]
        assert uri.split("password=")[1].split()[0] not in outputs[key][1]  # the password is never printed
    con = DuckLakeWarehouse(uri, str(tmp_path / "shared-lake" / "ducklake")).connect(read_only=True)
    try:
        per_app = dict(con.execute("SELECT app_id, count(DISTINCT partition_date) FROM campaigns GROUP BY ALL").fetchall())
    finally:
        con.close()
    assert per_app == {"sim-hk": 3, "sim-sg": 3}


def test_a_reader_during_a_backfill_never_fails_and_never_sees_a_failed_day(postgres, tmp_path):
    uri = catalog_uri(postgres)
    good = start_simulator()
    try:
        assert all(r.published for r in load(good, tmp_path, CAMPAIGN_WAREHOUSE_URI=uri))
    finally:
        good.stop()
    lake = DuckLakeWarehouse(uri, str(tmp_path / "lake" / "ducklake"))
    with lake.reader() as con:
        published = con.execute("SELECT partition_date, count(*) FROM campaigns GROUP BY ALL ORDER BY 1").fetchall()
    assert len(published) == 3 and all(n > 0 for _, n in published)
    seen, errors, stop = [], [], threading.Event()

    def read_in_a_loop() -> None:
        while not stop.is_set():
            try:
                with lake.reader() as con:
                    seen.append(con.execute("SELECT partition_date, count(*) FROM campaigns GROUP BY ALL "
                                            "ORDER BY 1").fetchall())
            except Exception as error:  # noqa: BLE001 -- any failure of a reader fails the test
                errors.append(error)
            time.sleep(0.02)

    reader = threading.Thread(target=read_in_a_loop)
    reader.start()
    empty = start_simulator(empty_summary=True)  # a bad night: every day would lose all its campaigns
    try:
        results = load(empty, tmp_path, CAMPAIGN_WAREHOUSE_URI=uri)
    finally:
        empty.stop()
        stop.set()
        reader.join()
    assert not results[0].published and "no_unexplained_shrink" in results[0].failure
    assert not errors, errors
    assert len(seen) >= 3 and all(snapshot == published for snapshot in seen)


def test_a_conflicted_commit_is_redone_and_still_audited(postgres, tmp_path):
    """Two writers replacing different days of the same tables at once (as two apps' runs do): a
    commit that conflicts is redone (bounded) with its audit, and both days end up published."""
    uri = catalog_uri(postgres)
    server = start_simulator()
    try:
        cfg = PipelineConfig.from_env(simulator_env(server, tmp_path, CAMPAIGN_WAREHOUSE_URI=uri))
        windows = engine.day_windows(FIRST_DAY, FIRST_DAY + timedelta(days=1), "UTC")  # two writers
        results: dict[str, list] = {}
        threads = [threading.Thread(target=lambda w=w: results.setdefault(
            w.key, list(engine.run_days(cfg, cfg.apps[0], [w], engine.RunOptions(run_id=f"t-{w.key}")))))
            for w in windows]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        server.stop()
    assert all(r.published for day in results.values() for r in day), results
    with DuckLakeWarehouse(uri, str(tmp_path / "lake" / "ducklake")).reader() as con:
        assert con.execute("SELECT count(DISTINCT partition_date) FROM sms_messages").fetchone()[0] == 2


@pytest.mark.parametrize("form", ["keywords", "quoted", "url"])
def test_a_bad_catalog_is_one_line_without_the_password(tmp_path, form):
    port = free_port()
    uri = {"keywords": f"ducklake:postgres:host=127.0.0.1 port={port} user=u password=s3cret-value dbname=x",
           "quoted": f"ducklake:postgres:host=127.0.0.1 port={port} user=u password='s3cret value' dbname=x",
           "url": f"ducklake:postgres:postgresql://u:s3cret-value@127.0.0.1:{port}/x"}[form]
    with pytest.raises(Exception) as caught:
        DuckLakeWarehouse(uri, str(tmp_path)).connect(read_only=True)
    text = str(caught.value)
    assert "s3cret" not in text and "***" in text and "\n" not in text
    assert "s3cret" not in redact_uri(uri) and "s3cret" not in repr(DuckLakeWarehouse(uri, str(tmp_path)))


def test_the_catalog_password_is_kept_out_of_alerts(tmp_path):
    from campaign_pipeline.defs.alerts import config_secrets

    uri = "ducklake:postgres:host=db user=u password=s3cret-value dbname=x"
    cfg = PipelineConfig.from_env({"CAMPAIGN_SOURCE": "simulator", "CAMPAIGN_DATA_DIR": str(tmp_path),
                                   "CAMPAIGN_WAREHOUSE_URI": uri})
    assert "s3cret-value" in config_secrets(cfg)
    assert "s3cret-value" not in repr(cfg)
