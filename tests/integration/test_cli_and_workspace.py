"""The command line (real subprocesses) and the Dagster workspace: `dagster dev` serves our assets."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest

from tests.conftest import read_table, simulator_env

ROOT = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "campaign_pipeline.cli"]


def run_cli(args: list[str], env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if k == "CAMPAIGN_LAST_RUN_FILE" or not k.startswith(("CINNOX_", "CAMPAIGN_"))}
    full_env.update(env)
    return subprocess.run(CLI + args, env=full_env, capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                          check=False)


@pytest.mark.parametrize(("flags", "done"), [([], "2 day partition(s) published (not recorded in Dagster"),
                                            (["--dagster"], "materializations, run ")])
def test_cli_backfill_runs_end_to_end(simulator, tmp_path, flags, done):
    result = run_cli(["backfill", "--start", "2024-05-02", "--end", "2024-05-03", *flags],
                     simulator_env(simulator, tmp_path))
    assert result.returncode == 0, result.stderr
    assert "backfill done: 2 day(s), " in result.stderr and done in result.stderr
    assert "day 1/2 2024-05-02 published: campaigns" in result.stderr  # progress per day
    rows = read_table(tmp_path / "warehouse.duckdb", "campaigns", "campaign_id")
    assert {r["partition_date"] for r in rows} == {date(2024, 5, 2), date(2024, 5, 3)}


def _tomorrow() -> str:
    return (datetime.now(UTC).date() + timedelta(days=1)).isoformat()


@pytest.mark.parametrize(
    ("args", "env_changes", "message"),
    [
        (["--start", "2024-05-03", "--end", "2024-05-02"], {}, "is after --end"),
        (["--start", "2024-04-01", "--end", "2024-05-02"], {}, "before the first partition"),
        (["--start", "2024-05-02", "--end", "<tomorrow>"], {}, "not a complete day yet"),
        (["--start", "2024-05-02", "--end", "2024-05-02"], {"CINNOX_APP_TOKEN": ""}, "CINNOX_APP_TOKEN is not set"),
        (["--start", "2024-05-02", "--end", "2024-05-02"], {"CINNOX_BASE_URL": "ftp:/nope"}, "CINNOX_BASE_URL"),
        (["--start", "2024-05-02", "--end", "2024-05-02"], {"CAMPAIGN_PARTITION_TZ": "Mars/Olympus"}, "timezone"),
        (["--start", "2024-05-02", "--end", "2024-05-02"], {"CAMPAIGN_DATA_DIR": "/proc/forbidden"}, "not writable"),
    ],
)
def test_cli_backfill_bad_input_fails_fast_with_one_line_and_exit_2(simulator, tmp_path, args, env_changes, message):
    data_dir = tmp_path / "data"
    env = simulator_env(simulator, data_dir)
    env.update(env_changes)
    args = [a.replace("<tomorrow>", _tomorrow()) for a in args]
    result = run_cli(["backfill", *args], env, timeout=60)
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert not (data_dir / "warehouse.duckdb").exists()


def test_cli_bad_token_fails_with_auth_message(simulator, tmp_path):
    env = simulator_env(simulator, tmp_path, CINNOX_APP_TOKEN="wrong-token-123")
    result = run_cli(["backfill", "--start", "2024-05-02", "--end", "2024-05-02"], env, timeout=120)
    assert result.returncode == 1
    assert "backfill failed" in result.stderr and "401" in result.stderr
    assert "wrong-token-123" not in result.stderr + result.stdout


def test_simulated_data_never_lands_in_a_real_data_dir(simulator, tmp_path):
    (tmp_path / ".campaign_source").write_text("simulator\n")
    result = run_cli(["backfill", "--start", "2024-05-02", "--end", "2024-05-02"], simulator_env(simulator, tmp_path))
    assert result.returncode == 2 and "holds CAMPAIGN_SOURCE=simulator data" in result.stderr


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_dagster_dev_serves_the_assets_from_the_workspace(tmp_path):
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k == "CAMPAIGN_LAST_RUN_FILE" or not k.startswith(("CINNOX_", "CAMPAIGN_"))}
    env.update({"CAMPAIGN_SOURCE": "simulator", "CAMPAIGN_DATA_DIR": str(tmp_path / "data"),
                "DAGSTER_HOME": str(tmp_path / "home")})
    (tmp_path / "home").mkdir()
    dagster = Path(sys.executable).with_name("dagster")
    proc = subprocess.Popen([str(dagster), "dev", "-w", "dagster_workspace.yaml", "-p", str(port)], cwd=ROOT,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    query = json.dumps({"query": "{ assetNodes { assetKey { path } } }"}).encode()
    keys: set[str] = set()
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and "sms_messages" not in keys:
            time.sleep(1)
            try:
                request = urllib.request.Request(f"http://127.0.0.1:{port}/graphql", data=query,
                                                 headers={"Content-Type": "application/json"})
                with urllib.request.urlopen(request, timeout=5) as response:
                    payload = json.loads(response.read())
                keys = {"/".join(n["assetKey"]["path"]) for n in payload["data"]["assetNodes"]}
            except (OSError, KeyError, TypeError, ValueError):
                continue
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=30)
    assert {"raw_campaign_responses", "campaigns", "sms_messages", "whatsapp_messages", "rejected_records"} <= keys


def test_cli_demo_backfills_from_the_built_in_simulator_and_prints_the_report(tmp_path):
    result = run_cli(["demo", "--days", "2", "--data-dir", str(tmp_path / "demo")], {})
    assert result.returncode == 0, result.stderr
    assert "backfill done: 2 day(s)" in result.stderr
    assert f"data: {tmp_path / 'demo'}" in result.stdout and (tmp_path / "demo" / "analytics.duckdb").exists()
    assert "make notebook" in result.stdout and "make dev" in result.stdout and "make sql" in result.stdout
    # recorded in a Dagster instance in the demo's data dir, so `make dev` shows it
    assert (tmp_path / "demo" / "dagster" / "dagster.yaml").exists()
    assert "DAGSTER_HOME=" in (tmp_path / "demo" / "demo.env").read_text()


@pytest.mark.parametrize("bad", [{"CINNOX_RATE_LIMIT_PER_MIN": "abc", "CAMPAIGN_REJECTED_THRESHOLD": "x"},
                                 {"CAMPAIGN_SOURCE": "cinnox"},  # every missing CINNOX_* variable
                                 {"CINNOX_BASE_URL": "ftp://x", "CAMPAIGN_PARTITION_TZ": "Mars/Olympus"}])
def test_bad_configuration_gives_the_same_one_line_error_from_the_cli_and_the_code_location(tmp_path, bad):
    env = {"CAMPAIGN_SOURCE": "simulator", "CAMPAIGN_DATA_DIR": str(tmp_path / "data"), **bad}
    if bad.get("CINNOX_BASE_URL"):
        env.update(CAMPAIGN_SOURCE="cinnox", CINNOX_APP_ID="app", CINNOX_APP_TOKEN="a-long-enough-token")
    cli = run_cli(["backfill", "--start", "2024-05-01", "--end", "2024-05-01"], env)
    assert cli.returncode == 2
    (line,) = cli.stderr.splitlines()
    assert line.startswith("error: ") and "Traceback" not in cli.stderr
    message = line.removeprefix("error: ")
    full_env = {k: v for k, v in os.environ.items() if k == "CAMPAIGN_LAST_RUN_FILE" or not k.startswith(("CINNOX_", "CAMPAIGN_"))}
    full_env.update(env, DAGSTER_HOME=str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    dagster = Path(sys.executable).with_name("dagster")
    location = subprocess.run([str(dagster), "definitions", "validate", "-w", "dagster_workspace.yaml"], cwd=ROOT,
                              env=full_env, capture_output=True, text=True, timeout=300, check=False)
    output = location.stdout + location.stderr
    assert "Validation failed for code location campaign_pipeline" in output
    assert f"campaign_pipeline code location: {message}" in output


def test_demo_days_out_of_range_is_one_line_about_days(tmp_path):
    result = run_cli(["demo", "--days", "0", "--data-dir", str(tmp_path / "d")], {})
    assert result.returncode == 2
    assert "'0' is not a number of days between 1 and 3660" in result.stderr and "--start" not in result.stderr
    assert not (tmp_path / "d").exists()


def test_demo_reaching_before_the_configured_first_partition_says_how_to_fix(tmp_path):
    result = run_cli(["demo", "--days", "1500", "--data-dir", str(tmp_path / "d")],
                     {"CAMPAIGN_PARTITION_START": "2024-01-01"})
    assert result.returncode == 2
    assert "before CAMPAIGN_PARTITION_START=2024-01-01; use fewer --days or unset" in result.stderr, result.stderr


def test_demo_data_dir_flag_wins_over_the_environment(tmp_path):
    result = run_cli(["demo", "--days", "1", "--data-dir", str(tmp_path / "flag")],
                     {"CAMPAIGN_DATA_DIR": str(tmp_path / "env")})
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "flag" / "analytics.duckdb").exists() and not (tmp_path / "env").exists()


def test_the_simulator_subcommand_takes_its_own_options():
    result = run_cli(["simulator", "--help"], {}, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "campaign-pipeline simulator" in result.stdout and "--port" in result.stdout
    bad = run_cli(["simulator", "--port", "not-a-port"], {}, timeout=60)
    assert bad.returncode == 2 and "--port" in bad.stderr


def test_read_only_commands_say_what_to_do_when_there_is_no_data(tmp_path):
    env = {"CAMPAIGN_DATA_DIR": str(tmp_path / "nothing")}
    report = run_cli(["report"], env, timeout=60)
    assert report.returncode == 1 and "run `make demo` or a backfill first" in report.stderr
    sql = run_cli(["sql", "--print-path"], env, timeout=60)
    assert sql.returncode == 1 and "run `make demo` or a backfill first" in sql.stderr


def test_the_demo_writes_only_to_its_own_data_dir_whatever_the_shell_points_at(tmp_path):
    production = {"CAMPAIGN_DATA_DIR": str(tmp_path / "production"), "CAMPAIGN_APPS": "hk",
                  "CAMPAIGN_WAREHOUSE_URI": f"ducklake:{tmp_path / 'production.ducklake'}",
                  "CAMPAIGN_LAKE_URI": str(tmp_path / "production-lake"), "CAMPAIGN_PII_MODE": "hash",
                  "CAMPAIGN_PII_SALT": "a-long-production-salt"}
    result = run_cli(["demo", "--days", "1", "--data-dir", str(tmp_path / "demo")], production)
    assert result.returncode == 0, result.stderr
    assert "demo: ignoring CAMPAIGN_APPS, CAMPAIGN_DATA_DIR, CAMPAIGN_LAKE_URI, CAMPAIGN_PII_MODE, " \
           "CAMPAIGN_PII_SALT, CAMPAIGN_WAREHOUSE_URI" in result.stderr
    assert "a-long-production-salt" not in result.stderr + result.stdout
    assert (tmp_path / "demo" / "analytics.duckdb").exists() and (tmp_path / "demo" / "lake").is_dir()
    assert not any(tmp_path.glob("production*"))


def test_the_ui_ignores_an_unfilled_env_file_and_shows_the_demo(tmp_path):
    from campaign_pipeline.cli import DEMO_ENV_FILENAME, ui_environment

    root = tmp_path / "repo"
    (root / "data" / "demo").mkdir(parents=True)
    shutil.copy(ROOT / ".env.example", root / ".env.example")
    shutil.copy(ROOT / ".env.example", root / ".env")  # copied, not filled in
    demo = root / "data" / "demo"
    (demo / "analytics.duckdb").write_bytes(b"")  # the demo's data is the only data
    (demo / DEMO_ENV_FILENAME).write_text(f"CAMPAIGN_SOURCE=simulator\nCAMPAIGN_DATA_DIR={demo}\n"
                                          f"CAMPAIGN_PARTITION_START=2026-11-30\nDAGSTER_HOME={demo / 'dagster'}\n")
    env, workdir, message = ui_environment({"PATH": "/usr/bin", "CAMPAIGN_LAST_RUN_FILE": str(tmp_path / "none")},
                                           root)
    assert message == f"Dagster UI on the demo's data in {demo}"
    assert env["CAMPAIGN_SOURCE"] == "simulator" and env["CAMPAIGN_DATA_DIR"] == str(demo)
    assert env["DAGSTER_HOME"] == str(demo / "dagster") and env["CAMPAIGN_PARTITION_START"] == "2026-11-30"
    assert workdir == demo / "dagster"  # not the root: Dagster would load the unfilled .env over this
    (root / ".env").write_text((root / ".env").read_text().replace("CINNOX_APP_TOKEN=your-app-token",
                                                                   "CINNOX_APP_TOKEN=a-real-token-123"))
    env, workdir, message = ui_environment({"PATH": "/usr/bin"}, root)
    assert message == "Dagster UI on the configured CINNOX app" and workdir == root
    assert "CAMPAIGN_SOURCE" not in env
