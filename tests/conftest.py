"""Shared fixtures: a real simulator server, a pipeline environment pointing at it, table readers."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime
from pathlib import Path

import duckdb
import pytest

from campaign_pipeline.simulator import SimulatorConfig, SimulatorServer

SIM_NOW = datetime(2024, 5, 20, 12, 0, tzinfo=UTC)
FIRST_DAY = date(2024, 5, 1)


@pytest.fixture(autouse=True, scope="session")
def _last_run_file_outside_the_repository(tmp_path_factory) -> Iterator[None]:
    """Runs record their data dir for the read-only commands (``data/.last-data-dir``): the
    suite's runs record theirs in a temporary file, so a developer's ``report`` keeps reading
    their own data after ``make test``. Child processes inherit it."""
    import os

    previous = os.environ.get("CAMPAIGN_LAST_RUN_FILE")
    os.environ["CAMPAIGN_LAST_RUN_FILE"] = str(tmp_path_factory.mktemp("state") / ".last-data-dir")
    yield
    if previous is None:
        os.environ.pop("CAMPAIGN_LAST_RUN_FILE", None)
    else:
        os.environ["CAMPAIGN_LAST_RUN_FILE"] = previous


@contextmanager
def moto_s3(bucket: str) -> Iterator[str]:
    """A moto S3 server on a free 127.0.0.1 port with ``bucket`` created; yields its endpoint URL.
    Moto servers in one process share their buckets: give each module its own bucket."""
    import socket

    import boto3
    from moto.server import ThreadedMotoServer

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    try:
        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="test",
                     aws_secret_access_key="test").create_bucket(Bucket=bucket)
        yield endpoint
    finally:
        server.stop()


def start_simulator(**overrides) -> SimulatorServer:
    """A started simulator with a fixed clock (so statuses are reproducible)."""
    options = {"seed": 11, "campaigns_per_day": 4, "recipients_per_campaign": 90, "now": SIM_NOW}
    options.update(overrides)
    return SimulatorServer(SimulatorConfig(**options)).__enter__()


@pytest.fixture(scope="module")
def simulator() -> Iterator[SimulatorServer]:
    """A clean, fault-free simulator shared by a test module."""
    server = start_simulator()
    yield server
    server.stop()


def simulator_env(server: SimulatorServer, data_dir: Path, **extra: str) -> dict[str, str]:
    """The pipeline settings that point it at ``server`` as if it were a real CINNOX app (CAMPAIGN_SOURCE=cinnox)."""
    return {
        "CAMPAIGN_SOURCE": "cinnox",
        "CINNOX_BASE_URL": server.base_url,
        "CINNOX_APP_ID": server.app_id,
        "CINNOX_APP_TOKEN": server.token,
        "CINNOX_RATE_LIMIT_PER_MIN": "60000",
        "CAMPAIGN_DATA_DIR": str(data_dir),
        "CAMPAIGN_PARTITION_START": FIRST_DAY.isoformat(),
        "CAMPAIGN_PARTITION_TZ": "UTC",
        **extra,
    }


def pipeline_env(monkeypatch: pytest.MonkeyPatch, server: SimulatorServer, data_dir: Path, **extra: str) -> None:
    """Set :func:`simulator_env` in this process (for in-process Dagster runs)."""
    for name, value in simulator_env(server, data_dir, **extra).items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("DAGSTER_HOME", raising=False)


def decompress(path: Path) -> bytes:
    """The bytes of a zstd-compressed lake file (the raw landing)."""
    import pyarrow as pa

    with pa.input_stream(str(path), compression="zstd") as stream:
        return stream.read()


def read_table(warehouse: Path, table: str, order_by: str = "campaign_id, recipient") -> list[dict]:
    """Every row of a warehouse table as dicts, in a stable order."""
    con = duckdb.connect(str(warehouse), read_only=True)
    try:
        cursor = con.execute(f'SELECT * FROM "{table}" ORDER BY {order_by}')
        names = [d[0] for d in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
    finally:
        con.close()


def table_fingerprint(warehouse: Path) -> dict[str, str]:
    """A content hash of every table (order-independent), for 'identical tables' assertions."""
    con = duckdb.connect(str(warehouse), read_only=True)
    try:
        result = {}
        for (table,) in con.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_type = 'BASE TABLE' ORDER BY 1"
        ).fetchall():
            count, digest = con.execute(
                f'SELECT count(*), coalesce(sum(hash(t)), 0)::VARCHAR FROM "{table}" t'
            ).fetchone()
            result[table] = f"{count}:{digest}"
        return result
    finally:
        con.close()
