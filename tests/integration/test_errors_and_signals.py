"""Hostile inputs through the CLI: Ctrl-C and SIGTERM, and broken, locked, full or read-only storage."""

from __future__ import annotations

import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import start_simulator, table_fingerprint
from tests.integration.test_cli_and_workspace import CLI, ROOT, run_cli, simulator_env

DAY, OTHER_DAY = "2024-05-02", "2024-05-03"
WAREHOUSE = "warehouse.duckdb"


@pytest.fixture(scope="module")
def published(simulator, tmp_path_factory) -> Path:
    """A data dir where DAY is published (copy it before changing anything)."""
    data_dir = tmp_path_factory.mktemp("published")
    result = run_cli(["backfill", "--start", DAY, "--end", DAY], simulator_env(simulator, data_dir))
    assert result.returncode == 0, result.stderr
    return data_dir


def copy_of(published: Path, tmp_path: Path) -> Path:
    data_dir = tmp_path / "data"
    shutil.copytree(published, data_dir)
    return data_dir


def assert_one_line_failure(result, code: int, *fragments: str) -> str:
    """Exit ``code``, no traceback, and a last stderr line that carries every fragment."""
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == code, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(("error: ", "backfill failed: ")), last
    for fragment in fragments:
        assert fragment in last, last
    return last


def test_signals_stop_backfill_promptly_and_keep_published_days(published, tmp_path):
    slow = start_simulator(fault_rate=1.0, fault_kinds=("slow",), slow_seconds=8)
    try:
        for signum, code, flags in ((signal.SIGINT, 130, []), (signal.SIGTERM, 143, []),
                                    (signal.SIGTERM, 143, ["--dagster"])):
            data_dir = copy_of(published, tmp_path / f"{signum.name}{'-'.join(flags)}")
            before = table_fingerprint(data_dir / WAREHOUSE)
            env = {k: v for k, v in os.environ.items() if k == "CAMPAIGN_LAST_RUN_FILE" or not k.startswith(("CINNOX_", "CAMPAIGN_", "DAGSTER_"))}
            env.update(simulator_env(slow, data_dir))
            process = subprocess.Popen([*CLI, "backfill", *flags, "--start", DAY, "--end", DAY], env=env,
                                       cwd=ROOT, stderr=subprocess.PIPE, text=True)
            try:
                lines = []
                for line in process.stderr:  # the summary took one slow request; details are now in flight
                    lines.append(line)
                    if "fetching their details" in line:
                        break
                time.sleep(1.0)
                sent = time.monotonic()
                process.send_signal(signum)
                rest = process.stderr.read()
                process.wait(timeout=30)
                elapsed = time.monotonic() - sent
            finally:
                process.kill()
            stderr = "".join(lines) + rest
            assert process.returncode == code, stderr
            assert elapsed < 5, (signum, flags, elapsed)  # a detail request still had ~7 s to go
            assert "Traceback" not in stderr, stderr
            assert stderr.strip().splitlines()[-1].endswith("stopped; the published days are as they were"), stderr
            assert table_fingerprint(data_dir / WAREHOUSE) == before
            lake = data_dir / "lake"
            assert not [p for p in lake.rglob("*") if ".tmp-" in p.name], "staged files left behind"
    finally:
        slow.stop()


def _zeroed(path: Path) -> None:
    path.write_bytes(b"\0" * path.stat().st_size)


def _truncated(path: Path) -> None:
    os.truncate(path, 3 * 4096)  # DuckDB's three header blocks, none of the blocks they point to


def _sqlite(path: Path) -> None:
    path.write_bytes(b"SQLite format 3\0" + b"\0" * 4080)


@pytest.mark.parametrize(("damage", "message"), [(_zeroed, "is not a DuckDB database"),
                                                  (_truncated, "DuckDB cannot"),
                                                  (_sqlite, "is not a DuckDB database")])
@pytest.mark.parametrize("command", ["backfill", "backfill --dagster", "report"])
def test_unusable_warehouse_exits_3_with_one_line(simulator, published, tmp_path, damage, message, command):
    data_dir = copy_of(published, tmp_path)
    damaged = data_dir / ("analytics.duckdb" if command == "report" else WAREHOUSE)  # the file each one reads
    damage(damaged)
    args = command.split() + (["--start", OTHER_DAY, "--end", OTHER_DAY] if command != "report" else [])
    result = run_cli(args, simulator_env(simulator, data_dir))
    assert_one_line_failure(result, 3, message, str(damaged))


@pytest.fixture
def held_warehouse(published, tmp_path):
    """A copy of the published data dir whose warehouse another process holds open read-write."""
    data_dir = copy_of(published, tmp_path)
    hold = "import duckdb, sys, time; con = duckdb.connect(sys.argv[1]); print('held', flush=True); time.sleep(120)"
    holder = subprocess.Popen([sys.executable, "-c", hold, str(data_dir / WAREHOUSE)], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        yield data_dir, holder.pid
    finally:
        holder.kill()
        holder.wait()


def test_report_reads_while_another_process_holds_the_warehouse(simulator, held_warehouse):
    data_dir, _pid = held_warehouse
    started = time.monotonic()
    result = run_cli(["report", "--format", "csv"], simulator_env(simulator, data_dir))
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.strip().splitlines()) > 1  # a header and the published day's rows
    assert time.monotonic() - started < 30


@pytest.mark.parametrize("command", ["backfill", "backfill --dagster"])
def test_warehouse_held_by_another_process_exits_75(simulator, held_warehouse, command):
    data_dir, pid = held_warehouse
    args = command.split() + (["--start", OTHER_DAY, "--end", OTHER_DAY] if command != "report" else [])
    started = time.monotonic()
    result = run_cli([*args, "--lock-wait", "1"], simulator_env(simulator, data_dir))
    assert_one_line_failure(result, 75, f"another process (PID {pid}) holds it", "within 1s")
    assert time.monotonic() - started < 60


def _file_size_limit(limit: int):
    def limit_file_size() -> None:  # in the child: a write past `limit` fails with EFBIG, not SIGXFSZ
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return limit_file_size


def test_full_disk_at_commit_exits_4_and_keeps_published_days(published, tmp_path):
    data_dir = copy_of(published, tmp_path)
    before = table_fingerprint(data_dir / WAREHOUSE)
    big = start_simulator(campaigns_per_day=6, recipients_min=1500, recipients_max=1500)
    try:
        env = {k: v for k, v in os.environ.items() if k == "CAMPAIGN_LAST_RUN_FILE" or not k.startswith(("CINNOX_", "CAMPAIGN_", "DAGSTER_"))}
        env.update(simulator_env(big, data_dir))
        # Big enough for the day's landing and Parquet files, too small for its rows in DuckDB's WAL.
        result = subprocess.run([*CLI, "backfill", "--start", OTHER_DAY, "--end", OTHER_DAY], env=env, cwd=ROOT,
                                capture_output=True, text=True, timeout=300, check=False,
                                preexec_fn=_file_size_limit(400_000))
    finally:
        big.stop()
    last = assert_one_line_failure(result, 4, f"the disk holding {data_dir}", "is full", "File too large",
                                   "the published days are unchanged")
    assert WAREHOUSE in last  # DuckDB's write failed, not the lake's
    assert table_fingerprint(data_dir / WAREHOUSE) == before


@pytest.fixture
def read_only_dir(published, tmp_path):
    """A copy of the published data dir that this user cannot write to (immutable when run as root)."""
    data_dir = copy_of(published, tmp_path)
    if os.geteuid() != 0:
        data_dir.chmod(0o555)
        yield data_dir
        data_dir.chmod(0o755)
        return
    if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(data_dir)], check=False).returncode != 0:
        pytest.skip("cannot make a directory read-only for root here (no chattr +i)")
    try:
        yield data_dir
    finally:
        subprocess.run(["chattr", "-i", str(data_dir)], check=True)


def test_read_only_data_dir_backfill_exits_4_and_report_still_reads(simulator, read_only_dir):
    env = simulator_env(simulator, read_only_dir)
    before = table_fingerprint(read_only_dir / WAREHOUSE)
    result = run_cli(["backfill", "--start", OTHER_DAY, "--end", OTHER_DAY], env)
    assert_one_line_failure(result, 4, "is not writable")
    report = run_cli(["report", "--start", DAY, "--end", DAY, "--format", "csv"], env)
    assert report.returncode == 0, report.stderr
    assert DAY in report.stdout
    assert table_fingerprint(read_only_dir / WAREHOUSE) == before


def test_relative_dagster_home_is_resolved_and_a_missing_one_exits_2(simulator, published, tmp_path):
    data_dir = copy_of(published, tmp_path)
    home = f".pytest-dagster-home-{os.getpid()}"  # relative to the CLI's working directory, ROOT
    (ROOT / home).mkdir()
    try:
        env = simulator_env(simulator, data_dir, DAGSTER_HOME=home)
        result = run_cli(["backfill", "--start", DAY, "--end", DAY], env)
        assert result.returncode == 0, result.stderr
        assert "materializations, run " in result.stderr
        report = run_cli(["report", "--start", DAY, "--end", DAY], env)
        assert report.returncode == 0, report.stderr
    finally:
        shutil.rmtree(ROOT / home)
    missing = run_cli(["backfill", "--start", DAY, "--end", DAY],
                      simulator_env(simulator, data_dir, DAGSTER_HOME="no/such/dagster-home"))
    assert_one_line_failure(missing, 2, "DAGSTER_HOME='no/such/dagster-home' is not a directory")
