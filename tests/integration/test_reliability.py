"""Reliability end to end through `campaign-pipeline backfill` subprocesses: API faults, API down, SIGKILL crashes,
concurrent runs and readers, bad input and bad configuration."""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import duckdb
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

from campaign_pipeline import settings
from campaign_pipeline.cinnox.client import CinnoxClient
from campaign_pipeline.model import schemas
from campaign_pipeline.simulator import SimulatorConfig, SimulatorServer
from campaign_pipeline.simulator.data import ALL_FAULT_KINDS
from campaign_pipeline.storage.warehouse import Warehouse
from tests.conftest import FIRST_DAY, SIM_NOW, decompress, simulator_env, table_fingerprint

ROOT = Path(__file__).resolve().parents[2]
_SCRIPT = Path(sys.executable).with_name("campaign-pipeline")
CLI = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "campaign_pipeline.cli"]

# 30 small campaigns a day: ~93 requests for three days, enough for every fault kind to be drawn at a 20% rate.
SIM = {"seed": 11, "campaigns_per_day": 30, "recipients_per_campaign": 8, "now": SIM_NOW}
START, END = FIRST_DAY, FIRST_DAY + timedelta(days=2)
# With this fault seed the simulator's seeded fault sequence draws all ten kinds within 60..130 requests.
FAULT_SEED = 7
# Start-up of a subprocess that imports Dagster and runs the job (before and after the HTTP calls), with room
# for a loaded 2-core machine.
STARTUP_SLACK_S = 60.0

# Final names of the lake files (``responses.ndjson.zst`` / ``part-0.parquet``, or one per app: ``-<app key>``).
RAW_FILE = re.compile(r"responses(-[A-Za-z0-9_.=-]+)?\.ndjson\.zst")
PARQUET_FILE = re.compile(r"part-[A-Za-z0-9_.=-]+\.parquet")
WAREHOUSE_FILE = "warehouse.duckdb"
DATA_DIR_FILES = {WAREHOUSE_FILE, f"{WAREHOUSE_FILE}.wal", f"{WAREHOUSE_FILE}.lock", "analytics.duckdb", ".analytics.duckdb.lock", ".campaign_source",
                  ".campaign_pii_mode", ".campaign_partition_tz"}
LAKE_DIRS = {"raw", *schemas.TABLES}
TEMP_MARK = ".tmp-"
LOCK_ERRORS = ("database is locked", "could not set lock", "conflicting lock", "io error")


# --- running the CLI --------------------------------------------------------------------------


def clean_env() -> dict[str, str]:
    """This process's environment without any pipeline, CINNOX or Dagster setting."""
    return {k: v for k, v in os.environ.items() if k == "CAMPAIGN_LAST_RUN_FILE" or not k.startswith(("CINNOX_", "CAMPAIGN_", "DAGSTER_"))}


def cli_env(server: SimulatorServer, data_dir: Path, **extra: str) -> dict[str, str]:
    """Point a CLI subprocess at ``server`` as a real CINNOX app (CAMPAIGN_SOURCE=cinnox)."""
    return {**clean_env(), **simulator_env(server, data_dir, **extra)}


def _args(start: date | str, end: date | str) -> list[str]:
    return ["backfill", "--start", str(start), "--end", str(end)]


def backfill(start, end, env: dict[str, str], timeout: float = 300, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    """Run ``campaign-pipeline backfill`` to completion."""
    return subprocess.run(CLI + _args(start, end), check=False, env=env, capture_output=True, text=True,
                          timeout=timeout, cwd=cwd)


def spawn_backfill(start, end, env: dict[str, str]) -> subprocess.Popen:
    """Start ``campaign-pipeline backfill`` without waiting for it."""
    return subprocess.Popen(CLI + _args(start, end), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=ROOT)


def lines_of(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


# --- what readers see ---------------------------------------------------------------------------


def files_under(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def hidden_temps(data_dir: Path) -> list[Path]:
    return [p for p in files_under(data_dir) if p.name.startswith(".") and TEMP_MARK in p.name]


def _raw_lines(path: Path) -> list[bytes]:
    return [line for line in decompress(path).split(b"\n") if line]


def _file_digest(path: Path) -> str:
    """Content digest independent of row and page order (detail pages land in thread completion order)."""
    if RAW_FILE.fullmatch(path.name):  # the end line's checksum depends on the page order: left out
        items = sorted(line for line in _raw_lines(path) if not line.startswith(b'{"endpoint":"_end"'))
    else:
        items = sorted(repr(row) for row in pq.read_table(path).to_pylist())
    return hashlib.sha256("\n".join(map(str, items)).encode()).hexdigest()


def lake_digest(data_dir: Path) -> dict[str, str]:
    """{relative path: content digest} of every visible lake file."""
    lake = data_dir / "lake"
    return {str(p.relative_to(lake)): _file_digest(p) for p in files_under(lake) if not p.name.startswith(".")}


def day_fingerprints(warehouse: Path) -> dict[tuple[str, date], str]:
    """{(table, day): 'rows:hash'} of every day present in every pipeline table."""
    con = duckdb.connect(str(warehouse), read_only=True)
    try:
        out = {}
        for name in schemas.TABLES:
            for day, count, digest in con.execute(
                f'SELECT partition_date, count(*), sum(hash(t))::VARCHAR FROM "{name}" t GROUP BY 1'
            ).fetchall():
                out[(name, day)] = f"{count}:{digest}"
        return out
    finally:
        con.close()


def assert_readers_see_only_complete_files(data_dir: Path, allow_hidden_temps: bool) -> None:
    """Every visible file has an expected name and place and reads completely; hidden temps only if allowed."""
    for path in files_under(data_dir):
        rel = path.relative_to(data_dir)
        if path.name.startswith(".") and TEMP_MARK in path.name:
            assert allow_hidden_temps, f"temporary file left behind: {rel}"
            continue
        if len(rel.parts) == 1:
            assert rel.name in DATA_DIR_FILES, f"unexpected file {rel}"
            continue
        assert len(rel.parts) == 4 and rel.parts[0] == "lake" and rel.parts[1] in LAKE_DIRS, f"unexpected file {rel}"
        assert rel.parts[2].startswith("date="), rel
        date.fromisoformat(rel.parts[2].removeprefix("date="))
        if rel.parts[1] == "raw":
            assert RAW_FILE.fullmatch(rel.name), f"unexpected file {rel}"
            for line in _raw_lines(path):  # a truncated gzip stream or JSON line raises here
                page = json.loads(line)
                if page["endpoint"] in ("_begin", "_end"):  # the format line and the checksum line
                    continue
                records = page["response"]["result"] if "response" in page else page["result"]
                assert page["endpoint"] in ("summary", "detail") and isinstance(records, list)
        else:
            assert PARQUET_FILE.fullmatch(rel.name), f"unexpected file {rel}"
    for table in schemas.TABLES:
        table_dir = data_dir / "lake" / table
        if table_dir.exists():
            pads.dataset(str(table_dir), format="parquet", partitioning="hive").to_table()
    warehouse = data_dir / WAREHOUSE_FILE
    if warehouse.exists():
        con = duckdb.connect(str(warehouse), read_only=True)
        try:
            for table in schemas.TABLES:
                con.execute(f'SELECT count(*) FROM "{table}"').fetchone()
        finally:
            con.close()


@dataclass(frozen=True)
class Loaded:
    """A finished, undisturbed backfill of START..END: the reference for every comparison."""

    data_dir: Path
    fingerprint: dict[str, str]
    days: dict[tuple[str, date], str]
    lake: dict[str, str]
    files: frozenset[str]
    requests: int


def relative_files(data_dir: Path) -> frozenset[str]:
    return frozenset(str(p.relative_to(data_dir)) for p in files_under(data_dir) if not p.name.endswith(".wal"))


@pytest.fixture(scope="module")
def healthy():
    with SimulatorServer(SimulatorConfig(**SIM)) as server:
        yield server


@pytest.fixture(scope="module")
def baseline(healthy, tmp_path_factory) -> Loaded:
    data_dir = tmp_path_factory.mktemp("baseline") / "data"
    before = healthy.stats()["requests_total"]
    result = backfill(START, END, cli_env(healthy, data_dir))
    assert result.returncode == 0, result.stderr
    warehouse = data_dir / WAREHOUSE_FILE
    days = day_fingerprints(warehouse)
    assert {day for _, day in days} == {START, START + timedelta(days=1), END}
    return Loaded(data_dir, table_fingerprint(warehouse), days, lake_digest(data_dir), relative_files(data_dir),
                  healthy.stats()["requests_total"] - before)


# --- API faults ---------------------------------------------------------------------------------


def test_backfill_under_every_fault_kind_matches_the_fault_free_run(baseline, tmp_path):
    data_dir = tmp_path / "data"
    config = SimulatorConfig(**SIM, fault_rate=0.2, fault_kinds=ALL_FAULT_KINDS, fault_seed=FAULT_SEED,
                             slow_seconds=1.0)
    with SimulatorServer(config) as server:
        result = backfill(START, END, cli_env(server, data_dir, CINNOX_READ_TIMEOUT_S="0.5",
                                              CINNOX_BACKOFF_MAX_S="0.2", CINNOX_MAX_ATTEMPTS="10"))
        stats = server.stats()
    assert result.returncode == 0, result.stderr
    assert all(stats["faults_by_kind"][kind] > 0 for kind in ALL_FAULT_KINDS), stats["faults_by_kind"]
    assert stats["requests_total"] == baseline.requests + sum(stats["faults_by_kind"].values())
    assert "CINNOX retry" in result.stderr
    assert table_fingerprint(data_dir / WAREHOUSE_FILE) == baseline.fingerprint
    assert lake_digest(data_dir) == baseline.lake
    assert_readers_see_only_complete_files(data_dir, allow_hidden_temps=False)


# --- API down -----------------------------------------------------------------------------------

DOWN_ATTEMPTS, DOWN_BACKOFF_MAX_S, DOWN_READ_TIMEOUT_S = 4, 0.2, 0.5


@dataclass(frozen=True)
class DownRun:
    result: subprocess.CompletedProcess
    seconds: float
    bound_s: float
    requests: int
    data_dir: Path
    lake_bytes_before: dict[str, str]
    fingerprint_before: dict[str, str]


def _lake_bytes(data_dir: Path) -> dict[str, str]:
    lake = data_dir / "lake"
    return {str(p.relative_to(lake)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files_under(lake)}


@pytest.fixture(scope="module")
def down_run(baseline, tmp_path_factory) -> DownRun:
    """Day 2 was loaded from a healthy API; now the API is down and day 2 is loaded again."""
    data_dir = tmp_path_factory.mktemp("down") / "data"
    shutil.copytree(baseline.data_dir, data_dir)
    lake_before, fingerprint_before = _lake_bytes(data_dir), table_fingerprint(data_dir / WAREHOUSE_FILE)
    with SimulatorServer(SimulatorConfig(**SIM, down=True)) as server:
        bound = CinnoxClient(server.base_url, server.app_id, server.token, read_timeout=DOWN_READ_TIMEOUT_S,
                             max_attempts=DOWN_ATTEMPTS, backoff_max_s=DOWN_BACKOFF_MAX_S,
                             rate_limit_per_min=60000).worst_case_retry_seconds()
        env = cli_env(server, data_dir, CINNOX_MAX_ATTEMPTS=str(DOWN_ATTEMPTS),
                      CINNOX_BACKOFF_MAX_S=str(DOWN_BACKOFF_MAX_S), CINNOX_READ_TIMEOUT_S=str(DOWN_READ_TIMEOUT_S))
        day = START + timedelta(days=1)
        started = time.monotonic()
        result = backfill(day, day, env, timeout=bound + STARTUP_SLACK_S)
        seconds = time.monotonic() - started
        requests = server.stats()["requests_total"]
    return DownRun(result, seconds, bound, requests, data_dir, lake_before, fingerprint_before)


def test_api_down_fails_within_the_retry_bound_with_one_line_reason_and_exit_1(down_run):
    result = down_run.result
    assert result.returncode == 1, result.stderr
    # the bound really is the documented formula for these settings, not something huge that cannot be exceeded
    assert down_run.bound_s == pytest.approx(DOWN_ATTEMPTS * (settings.DEFAULT_CONNECT_TIMEOUT_S + DOWN_READ_TIMEOUT_S)
                                             + (DOWN_ATTEMPTS - 1) * DOWN_BACKOFF_MAX_S, abs=0.1)
    assert down_run.seconds < down_run.bound_s + STARTUP_SLACK_S
    assert down_run.requests == DOWN_ATTEMPTS  # bounded retries of the first request, nothing retried on top
    reasons = [line for line in lines_of(result.stderr) if line.startswith("backfill failed:")]
    assert len(reasons) == 1 and lines_of(result.stderr)[-1] == reasons[0], result.stderr
    assert f"gave up after {DOWN_ATTEMPTS} attempts" in reasons[0] and "503" in reasons[0], reasons[0]


def test_api_down_leaves_the_previously_loaded_partition_intact(down_run, baseline):
    assert down_run.result.returncode == 1
    assert table_fingerprint(down_run.data_dir / WAREHOUSE_FILE) == down_run.fingerprint_before == baseline.fingerprint
    assert _lake_bytes(down_run.data_dir) == down_run.lake_bytes_before
    assert_readers_see_only_complete_files(down_run.data_dir, allow_hidden_temps=False)


def test_api_down_stderr_carries_no_stack_trace(down_run):
    assert down_run.result.returncode == 1
    assert "Stack Trace" not in down_run.result.stderr and "Traceback" not in down_run.result.stderr


# --- crashes --------------------------------------------------------------------------------------

CRASH_CHAINS = {
    "landing_page": ("landing_page:1", "landing_page:7"),
    "file_before_rename": ("file_before_rename:1", "file_before_rename:6"),
    "warehouse_before_commit": ("warehouse_before_commit:1", "warehouse_before_commit:3"),
}


def _assert_only_complete_days_are_visible(data_dir: Path, baseline: Loaded) -> set[date]:
    """Every visible file and every committed day equals the undisturbed run's; returns the committed days."""
    lake = lake_digest(data_dir)
    assert {path: baseline.lake[path] for path in lake} == lake
    warehouse = data_dir / WAREHOUSE_FILE
    days = day_fingerprints(warehouse) if warehouse.exists() else {}
    assert {key: baseline.days[key] for key in days} == days
    committed = {day for _, day in days}
    for day in committed:  # a day is in every table or in none (the baseline has rows for each table and day)
        assert {name for name, d in days if d == day} == {name for name, d in baseline.days if d == day}
    return committed


@pytest.mark.parametrize("chain", list(CRASH_CHAINS.values()), ids=list(CRASH_CHAINS))
def test_sigkill_at_each_crash_point_then_rerun_equals_an_undisturbed_run(healthy, baseline, tmp_path, chain):
    data_dir = tmp_path / "data"
    env = cli_env(healthy, data_dir)
    for spec in chain:
        crashed = backfill(START, END, {**env, "CAMPAIGN_CRASH_AT": spec})
        assert crashed.returncode == -signal.SIGKILL, (spec, crashed.returncode, crashed.stderr[-3000:])
        assert "backfill done" not in crashed.stderr
        assert_readers_see_only_complete_files(data_dir, allow_hidden_temps=True)
        committed = _assert_only_complete_days_are_visible(data_dir, baseline)
        point, count = spec.split(":")
        if point != "warehouse_before_commit":
            assert hidden_temps(data_dir), f"{spec}: no half-written temporary file, the crash missed the writer"
        if spec in ("landing_page:1", "file_before_rename:1"):
            assert not lake_digest(data_dir), f"{spec}: a file became visible before its first rename"
        if point == "warehouse_before_commit":
            # one transaction per day: the n-th commit of the run never happened, the earlier ones did
            assert committed == {START + timedelta(days=i) for i in range(int(count) - 1)}, committed
    rerun = backfill(START, END, env)
    assert rerun.returncode == 0, rerun.stderr
    assert not hidden_temps(data_dir)
    assert_readers_see_only_complete_files(data_dir, allow_hidden_temps=False)
    assert table_fingerprint(data_dir / WAREHOUSE_FILE) == baseline.fingerprint
    assert lake_digest(data_dir) == baseline.lake
    assert relative_files(data_dir) == baseline.files


# --- concurrency --------------------------------------------------------------------------------


def test_overlapping_concurrent_backfills_both_succeed_and_equal_one_sequential_run(healthy, baseline, tmp_path):
    data_dir = tmp_path / "data"
    env = cli_env(healthy, data_dir)
    procs = [spawn_backfill(START, START + timedelta(days=1), env), spawn_backfill(START + timedelta(days=1), END, env)]
    outputs = [proc.communicate(timeout=300) for proc in procs]
    for proc, (stdout, stderr) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, stderr
        assert not [phrase for phrase in LOCK_ERRORS if phrase in (stdout + stderr).lower()], stderr
    assert table_fingerprint(data_dir / WAREHOUSE_FILE) == baseline.fingerprint
    assert lake_digest(data_dir) == baseline.lake
    assert_readers_see_only_complete_files(data_dir, allow_hidden_temps=False)


READER_DAY = date(2024, 5, 18)


def _day_state(con: duckdb.DuckDBPyConnection, day: date) -> tuple:
    """Row counts, status distributions and content hash of one day, read in one snapshot."""
    state = []
    for table in ("sms_messages", "whatsapp_messages"):
        statuses = con.execute(
            f'SELECT status, count(*) FROM "{table}" WHERE partition_date = ? GROUP BY 1 ORDER BY 1', [day]
        ).fetchall()
        state.append((table, tuple(statuses)))
    state.append(con.execute(
        'SELECT count(*), sum(delivered), sum(pending), sum("read") FROM campaigns WHERE partition_date = ?', [day]
    ).fetchone())
    for table in schemas.TABLES:
        state.append(con.execute(
            f'SELECT count(*), sum(hash(t))::VARCHAR FROM "{table}" t WHERE partition_date = ?', [day]
        ).fetchone())
    return tuple(state)


def test_reader_polling_during_a_reload_sees_the_old_or_the_new_day_never_a_mix(tmp_path):
    data_dir = tmp_path / "data"
    warehouse = Warehouse(data_dir / WAREHOUSE_FILE)
    early = SimulatorConfig(**{**SIM, "now": datetime(2024, 5, 19, 0, 30, tzinfo=UTC)})
    late = SimulatorConfig(**{**SIM, "now": datetime(2024, 5, 22, 0, 0, tzinfo=UTC)})
    with SimulatorServer(early) as server:
        first = backfill(READER_DAY, READER_DAY, cli_env(server, data_dir))
    assert first.returncode == 0, first.stderr
    with warehouse.reader() as con:
        old = _day_state(con, READER_DAY)
    seen: list[tuple] = []
    with SimulatorServer(late) as server:
        proc = spawn_backfill(READER_DAY, READER_DAY, cli_env(server, data_dir))
        try:
            while proc.poll() is None:
                with warehouse.reader(timeout_s=120) as con:
                    seen.append(_day_state(con, READER_DAY))
                time.sleep(0.02)
        finally:
            _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr
    with warehouse.reader() as con:
        new = _day_state(con, READER_DAY)
    assert new[:2] != old[:2], "the later clock must change the day's status distributions"
    assert len(seen) >= 5 and seen[0] == old
    mixed = [state for state in seen if state not in (old, new)]
    assert not mixed, f"{len(mixed)} of {len(seen)} reads saw a mix of the old and the new day"


RACE_SCRIPT = """
import sys, time
from pathlib import Path
from campaign_pipeline.config import PipelineConfig, prepare_data_dir
from campaign_pipeline.errors import ConfigError
root, start, n = Path(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
configs = [PipelineConfig.from_env({"CAMPAIGN_SOURCE": "simulator", "CAMPAIGN_DATA_DIR": str(root / f"d{i}")})
           for i in range(n)]
while time.time() < start:
    pass
failures = []
for config in configs:
    try:
        prepare_data_dir(config)
    except ConfigError as error:
        failures.append(str(error))
print(len(failures))
print(failures[:1])
"""


def test_two_first_runs_on_the_same_fresh_data_dir_never_reject_each_other(tmp_path):
    start = time.time() + 2.0
    procs = [subprocess.Popen([sys.executable, "-c", RACE_SCRIPT, str(tmp_path), str(start), "4000"], cwd=ROOT,
                              env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outputs = [proc.communicate(timeout=120) for proc in procs]
    for proc, (_, stderr) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, stderr
    assert [out.splitlines()[0] for out, _ in outputs] == ["0", "0"], [out for out, _ in outputs]


# --- bad input and bad configuration -------------------------------------------------------------


def _today() -> str:
    return datetime.now(UTC).date().isoformat()


DAY2 = (START + timedelta(days=1)).isoformat()
BAD_INPUT = {
    # id: (args (start, end), env changes (None = unset), expected text of the one line)
    "token_unset": ((DAY2, DAY2), {"CINNOX_APP_TOKEN": None}, "CINNOX_APP_TOKEN is not set"),
    "token_blank": ((DAY2, DAY2), {"CINNOX_APP_TOKEN": "   "}, "CINNOX_APP_TOKEN is not set"),
    "base_url_without_scheme": ((DAY2, DAY2), {"CINNOX_BASE_URL": "example.cinnox.com"}, "CINNOX_BASE_URL"),
    "base_url_with_credentials": ((DAY2, DAY2), {"CINNOX_BASE_URL": "https://user:pw@example.cinnox.com"},
                                  "CINNOX_BASE_URL"),
    "base_url_port_out_of_range": ((DAY2, DAY2), {"CINNOX_BASE_URL": "http://127.0.0.1:99999"}, "CINNOX_BASE_URL"),
    "start_after_end": ((END.isoformat(), START.isoformat()), {}, "is after --end"),
    "before_partition_start": (("2024-04-30", DAY2), {}, "before the first partition"),
    "end_is_today": ((DAY2, "<today>"), {}, "not a complete day yet"),
    "far_future": (("2999-01-01", "2999-01-02"), {}, "not a complete day yet"),
    "unknown_timezone": ((DAY2, DAY2), {"CAMPAIGN_PARTITION_TZ": "Europe/Atlantis"}, "CAMPAIGN_PARTITION_TZ"),
    "data_dir_under_a_file": ((DAY2, DAY2), {"CAMPAIGN_DATA_DIR": "<file>/data"}, "not writable"),
    "hash_without_salt": ((DAY2, DAY2), {"CAMPAIGN_PII_MODE": "hash"}, "CAMPAIGN_PII_SALT is required"),
    "hash_with_blank_salt": ((DAY2, DAY2), {"CAMPAIGN_PII_MODE": "hash", "CAMPAIGN_PII_SALT": "  "},
                             "CAMPAIGN_PII_SALT is required"),
    "unknown_pii_mode": ((DAY2, DAY2), {"CAMPAIGN_PII_MODE": "sha1"}, "CAMPAIGN_PII_MODE"),
    "ca_bundle_missing": ((DAY2, DAY2), {"CINNOX_CA_BUNDLE": "/nonexistent/ca.pem"}, "CINNOX_CA_BUNDLE"),
    "max_attempts_zero": ((DAY2, DAY2), {"CINNOX_MAX_ATTEMPTS": "0"}, "CINNOX_MAX_ATTEMPTS"),
    "read_timeout_not_a_number": ((DAY2, DAY2), {"CINNOX_READ_TIMEOUT_S": "soon"}, "CINNOX_READ_TIMEOUT_S"),
    "apps_invalid_key": ((DAY2, DAY2), {"CAMPAIGN_APPS": "hk,S-G"}, "CAMPAIGN_APPS"),
    "second_app_token_unset": ((DAY2, DAY2), {
        "CAMPAIGN_APPS": "hk,sg", "CINNOX_HK_BASE_URL": "<url>", "CINNOX_HK_APP_ID": "sim-app",
        "CINNOX_HK_APP_TOKEN": "sim-token", "CINNOX_SG_BASE_URL": "<url>", "CINNOX_SG_APP_ID": "sim-app",
    }, "CINNOX_SG_APP_TOKEN is not set"),
}

@pytest.mark.parametrize(
    ("args", "env_changes", "message"),
    [pytest.param(*case, id=name) for name, case in BAD_INPUT.items()],
)
def test_bad_input_fails_fast_with_one_line_exit_2_and_writes_nothing(healthy, tmp_path, args, env_changes, message):
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    (tmp_path / "a-file").write_text("not a directory\n")
    env = cli_env(healthy, tmp_path / "data")
    for name, value in env_changes.items():
        if value is None:
            env.pop(name)
        else:
            env[name] = value.replace("<file>", str(tmp_path / "a-file")).replace("<url>", healthy.base_url)
    args = [arg.replace("<today>", _today()) for arg in args]
    before, requests_before = files_under(tmp_path), healthy.stats()["requests_total"]
    started = time.monotonic()
    result = backfill(*args, env, timeout=120, cwd=workdir)
    seconds = time.monotonic() - started
    lines = lines_of(result.stderr)
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr
    assert files_under(tmp_path) == before and not (tmp_path / "data").exists() and not list(workdir.iterdir())
    assert healthy.stats()["requests_total"] == requests_before
    assert seconds < 30, "bad input must be rejected before any run starts"


def test_bad_token_fails_with_auth_message_after_exactly_one_request(tmp_path):
    wrong = f"wrong-token-{secrets.token_hex(8)}"
    with SimulatorServer(SimulatorConfig(**SIM)) as server:
        result = backfill(DAY2, DAY2, cli_env(server, tmp_path / "data", CINNOX_APP_TOKEN=wrong), timeout=120)
        stats = server.stats()
    assert result.returncode == 1, result.stderr
    last = lines_of(result.stderr)[-1]
    assert last.startswith("backfill failed:") and "401" in last and "CINNOX_APP_TOKEN" in last, result.stderr
    assert stats["requests_total"] == 1 and stats["status_4xx"] == 1, stats
    assert wrong not in result.stdout + result.stderr
    assert Counter(p.name for p in files_under(tmp_path / "data")) <= Counter(DATA_DIR_FILES)
