"""Alerting, for real: the run-failure sensor and the message tables' freshness policy, evaluated by
Dagster's own daemons (sensor and freshness) against a persistent instance, with the code location
served from dagster_workspace.yaml by a real code server, on runs that really failed or succeeded.

Time is moved forward with Dagster's ``freeze_time`` (daemon side only): the sensor's minimum interval
between ticks, and the hours after which a table turns red.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import time
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.definitions.freshness import FreshnessState, TimeWindowFreshnessPolicy
from dagster._core.scheduler.instigation import TickStatus
from dagster._core.test_utils import create_test_daemon_workspace_context, freeze_time
from dagster._core.workspace.load_target import WorkspaceFileTarget
from dagster._daemon.freshness import FreshnessDaemon
from dagster._daemon.sensor import execute_sensor_iteration

from campaign_pipeline.defs import alerts
from campaign_pipeline.defs.backfill import run_backfill
from campaign_pipeline.defs.definitions import build_definitions
from campaign_pipeline.defs.schedules import JOB_NAME
from tests.conftest import FIRST_DAY, simulator_env
from tests.integration.test_deployment import free_port

ROOT = Path(__file__).resolve().parents[2]
WORKSPACE = ROOT / "dagster_workspace.yaml"
LOCAL_YAML = ROOT / "deploy" / "dagster.local.yaml"
LOCATION = "campaign_pipeline"
FRESHNESS_HOURS = 12
WEBHOOK_SECRET = "T0000/B0000/s3cr3t-webhook-path-token"


class Receiver:
    """A local HTTP server that records every POST (path and JSON body); answers ``status``."""

    def __init__(self) -> None:
        self.posts: list[tuple[str, dict, str]] = []
        self.status = 200
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                receiver.posts.append((self.path, json.loads(body), self.headers.get("Content-Type", "")))
                self.send_response(receiver.status)
                self.end_headers()

            def log_message(self, *args):  # keep the test output quiet
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        """The webhook URL, with a secret path like Slack's."""
        return f"http://127.0.0.1:{self.server.server_address[1]}/hooks/{WEBHOOK_SECRET}"

    def stop(self) -> None:
        """Shut the server down."""
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def receiver():
    server = Receiver()
    yield server
    server.stop()


class Deployment:
    """A persistent instance (deploy/dagster.local.yaml) and the daemons' view of the code location."""

    def __init__(self, instance: dg.DagsterInstance, workspace, data_dir: Path, token: str) -> None:
        self.instance, self.workspace, self.data_dir, self.token = instance, workspace, data_dir, token
        self._offset = 0.0
        self.logger = logging.getLogger("test_alerts.daemon")

    def later(self, seconds: float):
        """Freeze the daemons' clock ``seconds`` after now, and after every earlier call."""
        self._offset = max(self._offset + 61, seconds)
        return freeze_time(time.time() + self._offset)

    def tick_sensors(self) -> None:
        """One sensor-daemon iteration, a minute after the previous one (past the minimum interval)."""
        with self.later(0):
            list(execute_sensor_iteration(self.workspace, self.logger, None, None))

    def sensor_ticks(self):
        """The alert sensor's ticks, newest first."""
        location = self.workspace.create_request_context().get_code_location(LOCATION)
        sensor = next(iter(location.get_repositories().values())).get_sensor(alerts.SENSOR_NAME)
        return self.instance.get_ticks(sensor.get_remote_origin_id(), sensor.selector_id)


@pytest.fixture(scope="module")
def deployment(simulator, receiver, tmp_path_factory):
    """The pipeline's environment (the simulator as a CINNOX app, a webhook URL, freshness hours) in
    this process and the code server's, a persistent instance, and a first sensor tick (which sets the
    sensor's cursor: failures before it are never alerted)."""
    tmp = tmp_path_factory.mktemp("alerts")
    home = tmp / "dagster_home"
    home.mkdir()
    shutil.copy(LOCAL_YAML, home / "dagster.yaml")
    env = simulator_env(simulator, tmp / "data", CAMPAIGN_ALERT_WEBHOOK_URL=receiver.url,
                        CAMPAIGN_FRESHNESS_HOURS=str(FRESHNESS_HOURS))
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)
        patch.setenv("DAGSTER_HOME", str(home))
        with dg.DagsterInstance.get() as instance:
            with create_test_daemon_workspace_context(WorkspaceFileTarget(paths=[str(WORKSPACE)]),
                                                      instance) as workspace:
                deployment = Deployment(instance, workspace, tmp / "data", simulator.token)
                deployment.tick_sensors()
                assert deployment.sensor_ticks()[0].status == TickStatus.SKIPPED  # the cursor is set
                yield deployment


def _failed_resplit(deployment: Deployment):
    """A real failed run of the job: a re-split of a day that was never landed (in a fresh data dir)."""
    outcome = run_backfill(FIRST_DAY, FIRST_DAY, resplit_only=True, instance=deployment.instance)
    assert not outcome.success and "no landed data" in outcome.failure
    return outcome


def _files_hold(root: Path, needle: str) -> list[Path]:
    return [path for path in root.rglob("*") if path.is_file() and needle.encode() in path.read_bytes()]


def test_a_failed_run_is_posted_to_the_webhook_by_the_sensor_daemon(deployment, receiver, monkeypatch):
    receiver.posts.clear()
    monkeypatch.setenv("CAMPAIGN_DATA_DIR", str(deployment.data_dir / "failing"))
    outcome = _failed_resplit(deployment)
    deployment.tick_sensors()

    assert len(receiver.posts) == 1
    path, payload, content_type = receiver.posts[0]
    assert path == f"/hooks/{WEBHOOK_SECRET}" and content_type == "application/json"
    assert payload["event"] == "run_failure"
    assert (payload["run_id"], payload["job"]) == (outcome.run_id, JOB_NAME)
    assert payload["partition_range_start"] == payload["partition_range_end"] == FIRST_DAY.isoformat()
    assert payload["failed_steps"][0]["step"] == "campaign_partition"
    assert "no landed data" in payload["failed_steps"][0]["error"] and "no landed data" in payload["text"]
    body = json.dumps(payload)
    assert deployment.token not in body and WEBHOOK_SECRET not in body

    # The daemon recorded that the sensor acted on the run, in the run's own event log.
    messages = [e.message or "" for e in deployment.instance.all_logs(outcome.run_id,
                                                                       of_type=dg.DagsterEventType.ENGINE_EVENT)]
    assert any(f'Sensor "{alerts.SENSOR_NAME}" acted on run status FAILURE' in m for m in messages)
    assert deployment.sensor_ticks()[0].status == TickStatus.SUCCESS
    # Neither the webhook URL nor the App Token was written anywhere in the instance or the data dir.
    home = Path(deployment.instance.root_directory)
    for secret in (WEBHOOK_SECRET, deployment.token):
        assert _files_hold(home, secret) == [] and _files_hold(deployment.data_dir, secret) == []

    # A later tick does not post the same failure again.
    deployment.tick_sensors()
    assert len(receiver.posts) == 1


def test_a_successful_run_posts_nothing(deployment, receiver, monkeypatch):
    receiver.posts.clear()
    monkeypatch.setenv("CAMPAIGN_DATA_DIR", str(deployment.data_dir / "succeeding"))
    assert run_backfill(FIRST_DAY, FIRST_DAY, instance=deployment.instance).success
    deployment.tick_sensors()
    assert receiver.posts == []


def test_without_a_webhook_the_sensor_logs_the_failure(deployment, capsys, monkeypatch):
    """Dagster's test API on a real failed run of the real instance: the sensor built without
    CAMPAIGN_ALERT_WEBHOOK_URL logs the failure (one line, with the run and the reason) on the sensor's
    logger (Dagster's console; in the daemon, also the tick's log in the UI)."""
    monkeypatch.setenv("CAMPAIGN_DATA_DIR", str(deployment.data_dir / "unposted"))
    outcome = _failed_resplit(deployment)
    env = {name: value for name, value in os.environ.items()
           if name.startswith(("CAMPAIGN_", "CINNOX_")) and name != "CAMPAIGN_ALERT_WEBHOOK_URL"}
    sensor = build_definitions(env).resolve_sensor_def(alerts.SENSOR_NAME)
    run = deployment.instance.get_run_by_id(outcome.run_id)
    failure = deployment.instance.all_logs(outcome.run_id, of_type=dg.DagsterEventType.RUN_FAILURE)[0]
    context = dg.build_run_status_sensor_context(sensor_name=alerts.SENSOR_NAME, dagster_instance=deployment.instance,
                                                 dagster_run=run, dagster_event=failure.dagster_event)
    capsys.readouterr()
    assert sensor(context) is None
    lines = [line for line in capsys.readouterr().err.splitlines() if outcome.run_id in line]
    assert len(lines) == 1 and " - WARNING - " in lines[0]
    assert "no landed data" in lines[0] and "not posted: CAMPAIGN_ALERT_WEBHOOK_URL is unset" in lines[0]


def test_a_webhook_that_fails_is_logged_never_raised_and_never_named(receiver, caplog):
    payload = alerts.failure_payload(dg.DagsterRun(job_name=JOB_NAME, run_id="r-1"), "boom", [])
    receiver.status = 500
    try:
        with caplog.at_level(logging.INFO, logger=alerts.log.name):
            assert alerts.post_alert(receiver.url, payload) is False
            closed = f"http://127.0.0.1:{free_port()}/hooks/{WEBHOOK_SECRET}"
            assert alerts.post_alert(closed, payload) is False  # connection refused
    finally:
        receiver.status = 200
    messages = [record.getMessage() for record in caplog.records]
    assert any("HTTP 500" in m for m in messages) and any("ConnectionError" in m for m in messages)
    assert all(WEBHOOK_SECRET not in m and "127.0.0.1" not in m for m in messages)


def test_the_payload_never_carries_a_configured_secret():
    run = dg.DagsterRun(job_name=JOB_NAME, run_id="r-2", tags={"dagster/partition": "2024-05-01"})
    steps = [{"step": "campaign_partition", "error": "token tok-1234567890 leaked", "error_kind": "failed"}]
    payload = alerts.failure_payload(run, "run failed near tok-1234567890", steps, secrets=["tok-1234567890"])
    assert "tok-1234567890" not in json.dumps(payload)
    assert payload["failed_steps"][0]["error"] == "token <redacted> leaked"
    assert payload["partition"] == "2024-05-01" and "2024-05-01" in payload["text"]


# -- freshness --------------------------------------------------------------------------------------


def test_the_freshness_policy_is_on_the_message_tables_with_the_configured_hours():
    env = {"CAMPAIGN_SOURCE": "simulator", "CAMPAIGN_PARTITION_START": FIRST_DAY.isoformat(),
           "CAMPAIGN_FRESHNESS_HOURS": "7.5"}
    for apps, prefix in ((None, ()), ("hk,sg", ("hk",))):
        graph = build_definitions({**env, **({"CAMPAIGN_APPS": apps} if apps else {})}).resolve_asset_graph()
        policies = {key.to_user_string(): graph.get(key).freshness_policy for key in graph.get_all_asset_keys()}
        expected = TimeWindowFreshnessPolicy.from_timedeltas(timedelta(days=1, hours=7.5))
        for table in ("sms_messages", "whatsapp_messages"):
            assert policies["/".join([*prefix, table])] == expected
        assert policies["/".join([*prefix, "campaigns"])] is None
        assert policies["/".join([*prefix, "raw_campaign_responses"])] is None
    default = build_definitions({k: v for k, v in env.items() if k != "CAMPAIGN_FRESHNESS_HOURS"})
    policy = default.resolve_asset_graph().get(dg.AssetKey("sms_messages")).freshness_policy
    assert policy.fail_window.to_timedelta() == timedelta(hours=24 + 30)  # CAMPAIGN_FRESHNESS_HOURS defaults to 30


def test_the_freshness_daemon_turns_the_message_tables_red_one_day_plus_the_hours_after_a_load(
        deployment, monkeypatch):
    monkeypatch.setenv("CAMPAIGN_DATA_DIR", str(deployment.data_dir / "fresh"))
    assert run_backfill(FIRST_DAY, FIRST_DAY, instance=deployment.instance).success
    loaded = time.time()
    keys = [dg.AssetKey("sms_messages"), dg.AssetKey("whatsapp_messages"), dg.AssetKey("campaigns")]

    def states_at(seconds_after_load: float) -> dict[str, FreshnessState]:
        with freeze_time(loaded + seconds_after_load):
            list(FreshnessDaemon().run_iteration(deployment.workspace))
        records = deployment.instance.get_freshness_state_records(keys)
        return {key.to_user_string(): records[key].freshness_state for key in keys if key in records}

    window = timedelta(days=1, hours=FRESHNESS_HOURS).total_seconds()
    assert states_at(60) == {"sms_messages": FreshnessState.PASS, "whatsapp_messages": FreshnessState.PASS,
                             "campaigns": FreshnessState.NOT_APPLICABLE}
    late = states_at(window + 60)
    assert (late["sms_messages"], late["whatsapp_messages"]) == (FreshnessState.FAIL, FreshnessState.FAIL)


def test_the_sensor_handles_ui_materializations_and_skips_other_jobs():
    """A materialization launched from the UI runs Dagster's implicit asset job, not the job."""
    keys = [dg.AssetKey("sms_messages"), dg.AssetKey("campaigns")]
    ui_run = dg.DagsterRun(job_name="__ASSET_JOB", run_id="r-3", asset_selection=frozenset({dg.AssetKey("campaigns")}))
    other = dg.DagsterRun(job_name="someone_elses_job", run_id="r-4", asset_selection=frozenset({dg.AssetKey("x")}))
    assert alerts.is_pipeline_run(dg.DagsterRun(job_name=JOB_NAME, run_id="r-5"), JOB_NAME, keys)
    assert alerts.is_pipeline_run(ui_run, JOB_NAME, keys)
    assert not alerts.is_pipeline_run(other, JOB_NAME, keys)
    sensor = build_definitions({"CAMPAIGN_SOURCE": "simulator",
                                "CAMPAIGN_PARTITION_START": FIRST_DAY.isoformat()}).resolve_sensor_def(alerts.SENSOR_NAME)
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
