"""Shipped deployment config (deploy/): Dagster validates every dagster.yaml, the local one loads, a
partition runs under the multiprocess executor with the `cinnox_api` pool enforced by the instance, the
forwarded environment is generated from the one declaration, and the S3 compute-log manager of the
several-host configs uploads a real run's stdout/stderr (moto server). The Postgres storage of
deploy/dagster.yaml runs against a real server in tests/integration/test_postgres_instance.py."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import boto3
import dagster as dg
import pytest
import sqlalchemy
import yaml
from dagster._config import process_config
from dagster._core.errors import DagsterInvalidConfigError
from dagster._core.instance.config import (
    PoolGranularity,
    dagster_instance_config,
    dagster_instance_config_schema,
)
from dagster._core.instance.ref import InstanceRef
from moto.server import ThreadedMotoServer

from campaign_pipeline import settings
from campaign_pipeline.config import environment_variable_names
from campaign_pipeline.defs.definitions import build_definitions
from campaign_pipeline.defs.schedules import JOB_NAME
from campaign_pipeline.model import schemas
from tests.conftest import FIRST_DAY, pipeline_env, read_table, start_simulator

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
LOCAL_YAML = DEPLOY / "dagster.local.yaml"
POSTGRES_YAML = DEPLOY / "dagster.yaml"
DOCKER_YAML = DEPLOY / "docker" / "dagster.yaml"
INSTANCE_YAMLS = [LOCAL_YAML, POSTGRES_YAML, DOCKER_YAML]
SEVERAL_HOST_YAMLS = [POSTGRES_YAML, DOCKER_YAML]
K8S_VALUES = DEPLOY / "k8s" / "values.yaml"
DEPLOYMENT_DOC = ROOT / "docs" / "deployment.md"
CLI_SCRIPT = Path(sys.executable).with_name("campaign-pipeline")

POOL = "cinnox_api"
STEP_KEY = "campaign_partition"
DAY = FIRST_DAY.isoformat()
PG_ENV = {"DAGSTER_PG_HOST": "pg.example.internal", "DAGSTER_PG_PORT": "6543", "DAGSTER_PG_DB": "dagster",
          "DAGSTER_PG_USER": "dagster", "DAGSTER_PG_PASSWORD": "not-a-real-password"}
LOGS_BUCKET = "campaign-compute-logs"
INSTANCE_ENV = {**PG_ENV, "DAGSTER_COMPUTE_LOGS_BUCKET": LOGS_BUCKET}
# dagster_docker.DockerRunLauncher's documented config keys (its package is not installed here).
DOCKER_LAUNCHER_KEYS = {"image", "network", "networks", "registry", "env_vars", "container_kwargs"}
MULTIPROCESS = {"execution": {"config": {"multiprocess": {"max_concurrent": 2}}},
                "loggers": {"console": {"config": {"log_level": "WARNING"}}}}
BLOCKER_RUN = "another-run-holding-the-slot"


def campaign_job() -> dg.JobDefinition:
    """The partitioned job, rebuilt from the environment in every process (``dg.reconstructable`` target)."""
    return build_definitions(os.environ).resolve_job_def(JOB_NAME)


def _raw(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def _pools(path: Path) -> dict:
    return _raw(path)["concurrency"]["pools"]


def _use_home(monkeypatch: pytest.MonkeyPatch, home: Path, config: Path) -> Path:
    home.mkdir(parents=True, exist_ok=True)
    shutil.copy(config, home / "dagster.yaml")
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    return home


def _load_sync_env():
    """deploy/sync_env.py, the generator of the forwarded environment, as a module."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("deploy_sync_env", DEPLOY / "sync_env.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def free_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_moto(bucket: str) -> tuple[ThreadedMotoServer, str]:
    """A started moto S3 server on loopback holding an empty ``bucket``, and its endpoint URL."""
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    s3_client(endpoint).create_bucket(Bucket=bucket)
    return server, endpoint


def s3_client(endpoint: str):
    """A boto3 S3 client for the moto server at ``endpoint``."""
    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="test",
                        aws_secret_access_key="test")


def moto_env(endpoint: str) -> dict[str, str]:
    """What a process needs to reach the moto server through the standard AWS variables."""
    return {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
            "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}


def cli_backfill_env(tmp_path: Path, dagster_home: Path, **extra: str) -> dict[str, str]:
    """A clean environment for `campaign-pipeline backfill` of DAY on the built-in simulator, recorded
    in the instance at ``dagster_home`` (nothing inherited but PATH)."""
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path), "LANG": "C.UTF-8",
            "DAGSTER_HOME": str(dagster_home), "CAMPAIGN_SOURCE": "simulator",
            "CAMPAIGN_LAST_RUN_FILE": str(tmp_path / ".last-data-dir"),  # not the repository's data/
            "CAMPAIGN_DATA_DIR": str(tmp_path / "data"), "CAMPAIGN_PARTITION_START": DAY,
            "CAMPAIGN_PARTITION_TZ": "UTC", "CAMPAIGN_SIM_CAMPAIGNS_PER_DAY": "3", **extra}


def start_cli_backfill(env: dict[str, str]) -> subprocess.Popen:
    """`campaign-pipeline backfill --start DAY --end DAY`, started (stdout and stderr piped, text)."""
    return subprocess.Popen([str(CLI_SCRIPT), "backfill", "--start", DAY, "--end", DAY], env=env, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def run_id_of(stderr: str) -> str:
    """The Dagster run id a successful `backfill` printed (``backfill done: ..., run <id>``)."""
    match = re.search(r"backfill done: .*, run ([0-9a-f-]{36})", stderr)
    assert match, stderr
    return match.group(1)


def compute_log_objects(endpoint: str, bucket: str, prefix: str, run_id: str) -> dict[str, bytes]:
    """The run's compute-log objects in S3 (file extension -> content): S3ComputeLogManager keys are
    ``<prefix>/storage/<run id>/compute_logs/<file key>.<out|err>``."""
    client = s3_client(endpoint)
    listing = client.list_objects_v2(Bucket=bucket, Prefix=f"{prefix}/storage/{run_id}/compute_logs/")
    return {obj["Key"].rsplit(".", 1)[-1]: client.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
            for obj in listing.get("Contents", [])}


# -- every shipped dagster.yaml, through Dagster's own validation --------------------------------------


@pytest.mark.parametrize("path", INSTANCE_YAMLS, ids=lambda p: str(p.relative_to(DEPLOY)))
def test_shipped_instance_yaml_passes_dagsters_validation(path, monkeypatch):
    for name, value in INSTANCE_ENV.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("DAGSTER_HOME", str(path.parent))  # the local file's sqlite base_dir reads it

    # The function DagsterInstance uses to read $DAGSTER_HOME/dagster.yaml (schema + concurrency rules).
    validated, custom_class = dagster_instance_config(str(path.parent), config_filename=path.name)
    assert custom_class is None
    assert set(validated) >= {"storage", "run_coordinator", "concurrency"}
    # Full processing resolves every {env: ...} source too (a bad source type would fail here).
    processed = process_config(dagster_instance_config_schema(), _raw(path))
    assert processed.success, processed.errors

    # What the instance would be built from; rehydrating the queue proves its config fits the class.
    ref = InstanceRef.from_dir(str(path.parent), config_filename=path.name)
    coordinator = ref.run_coordinator
    assert isinstance(coordinator, dg.QueuedRunCoordinator)
    assert ref.settings["concurrency"]["pools"] == {"default_limit": 1, "granularity": "op"}
    if "postgres" in validated["storage"]:
        from dagster_postgres.utils import pg_url_from_config

        db = processed.value["storage"]["postgres"]["postgres_db"]
        assert (db["hostname"], db["port"]) == ("pg.example.internal", 6543)
        assert ref.storage_data.module_name == "dagster_postgres"
        # The URL dagster-postgres builds from this block, and the driver SQLAlchemy picks for it:
        # psycopg2 (installed with dagster-postgres), TLS required. Building the engine imports the
        # driver without connecting (the real server: tests/integration/test_postgres_instance.py).
        url = pg_url_from_config(processed.value["storage"]["postgres"])
        assert url.startswith("postgresql+psycopg2://dagster:") and url.endswith("@pg.example.internal:6543/dagster?sslmode=require")
        engine = sqlalchemy.create_engine(url)
        assert (engine.dialect.name, engine.dialect.driver) == ("postgresql", "psycopg2")
        engine.dispose()
    else:
        assert ref.storage_data.class_name == "DagsterSqliteStorage"


def test_the_validator_rejects_run_limits_in_two_places(tmp_path):
    """Control: the same validation fails on the mistake the Helm note warns about (a live validator)."""
    raw = _raw(POSTGRES_YAML)
    raw["run_coordinator"]["config"]["max_concurrent_runs"] = 4
    (tmp_path / "dagster.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(DagsterInvalidConfigError, match="max_concurrent_runs"):
        dagster_instance_config(str(tmp_path))


def test_a_bare_postgresql_url_would_need_psycopg_3():
    """Why the shipped configs name their driver: SQLAlchemy 2.x maps a bare postgresql:// URL (what
    dagster-postgres builds without `scheme`) to psycopg 3, which dagster-postgres does not install."""
    assert sqlalchemy.engine.make_url("postgresql://u@h/db").get_dialect().driver == "psycopg"


def test_several_host_configs_share_storage_logs_and_compute_logs():
    """deploy/dagster.yaml (tested against real servers) and the Docker file carry the same storage,
    compute-log and Python-log blocks; the Helm values render the same ones."""
    shipped = _raw(POSTGRES_YAML)
    docker = _raw(DOCKER_YAML)
    for block in ("storage", "compute_logs", "python_logs", "run_monitoring"):
        assert docker[block] == shipped[block], block
    db = shipped["storage"]["postgres"]["postgres_db"]
    assert db["scheme"] == "postgresql+psycopg2" and db["params"] == {"sslmode": "require"}
    logs = shipped["compute_logs"]
    assert (logs["module"], logs["class"]) == ("dagster_aws.s3.compute_log_manager", "S3ComputeLogManager")
    for path in INSTANCE_YAMLS:
        assert _raw(path)["python_logs"]["managed_python_loggers"] == ["campaign_pipeline"], path

    values = _raw(K8S_VALUES)
    postgresql = values["postgresql"]
    assert postgresql["postgresqlScheme"] == db["scheme"] and postgresql["postgresqlParams"] == db["params"]
    assert values["pythonLogs"] == {"pythonLogLevel": shipped["python_logs"]["python_log_level"],
                                    "managedPythonLoggers": shipped["python_logs"]["managed_python_loggers"]}
    s3 = values["computeLogManager"]
    assert s3["type"] == logs["class"]
    assert s3["config"]["s3ComputeLogManager"]["prefix"] == logs["config"]["prefix"]
    assert s3["config"]["s3ComputeLogManager"]["uploadInterval"] == logs["config"]["upload_interval"]


def test_the_compute_log_manager_of_the_several_host_configs_builds(monkeypatch):
    """With dagster-aws installed (the `aws` extra) the instance builds the S3 compute-log manager
    from the shipped block (no request is made until a run captures logs)."""
    for name, value in INSTANCE_ENV.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    for path in SEVERAL_HOST_YAMLS:
        manager = InstanceRef.from_dir(str(path.parent), config_filename=path.name).compute_log_manager
        assert type(manager).__name__ == "S3ComputeLogManager", path
        assert manager._s3_bucket == LOGS_BUCKET and manager._s3_prefix == "campaign_pipeline/compute_logs"


def test_forwarded_environment_is_generated_from_the_one_declaration():
    """The Docker launcher's env_vars, the Helm env list and the daemon's env_file example are what
    deploy/sync_env.py generates from campaign_pipeline.config.environment_variable_names(): a new
    setting without `python deploy/sync_env.py` fails here."""
    sync_env = _load_sync_env()
    assert sync_env.stale_files() == [], "run: .venv/bin/python deploy/sync_env.py"

    pipeline = environment_variable_names()
    credentials = ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"]
    forwarded = _raw(DOCKER_YAML)["run_launcher"]["config"]["env_vars"]
    assert forwarded == [*INSTANCE_ENV, *pipeline, *credentials]
    # Every {env: X} the instance file reads is forwarded: the run container loads the instance too.
    assert set(re.findall(r"env: (\w+)", DOCKER_YAML.read_text())) <= set(forwarded)
    example = dict(line.split("=", 1) for line in sync_env.DOCKER_ENV_EXAMPLE.read_text().splitlines()
                   if line and not line.startswith("#"))
    assert list(example) == forwarded and example["AWS_DEFAULT_REGION"]

    env = _raw(K8S_VALUES)["dagster-user-deployments"]["deployments"][0]["env"]
    assert [item["name"] for item in env] == [*pipeline, *credentials]
    for item in env:
        if item["name"] == "CAMPAIGN_DATA_DIR":  # the warehouse volume's mount path
            assert item == {"name": "CAMPAIGN_DATA_DIR", "value": "/data"}
        else:
            assert item["valueFrom"] == {"secretKeyRef": {"name": "campaign-pipeline-env", "key": item["name"],
                                                          "optional": True}}
    # Several apps: each app's own variables join the lists.
    assert {"CINNOX_HK_BASE_URL", "CINNOX_HK_APP_ID", "CINNOX_HK_APP_TOKEN"} <= set(sync_env.docker_names(("hk",)))
    assert "CINNOX_SG_APP_TOKEN" in sync_env.k8s_names(("hk", "sg"))


def test_pool_limit_times_client_budget_stays_under_the_documented_api_limit():
    for path in INSTANCE_YAMLS:
        assert _raw(path)["concurrency"] == _raw(LOCAL_YAML)["concurrency"], path
        slots = _pools(path)["default_limit"]
        assert slots * settings.DEFAULT_RATE_LIMIT_PER_MIN <= settings.DOCUMENTED_RATE_LIMIT_PER_MIN, path
    values = _raw(K8S_VALUES)["concurrency"]
    assert values["enabled"] is True
    assert values["pools"] == {"defaultLimit": _pools(POSTGRES_YAML)["default_limit"],
                               "granularity": _pools(POSTGRES_YAML)["granularity"]}
    assert values["runs"]["maxConcurrentRuns"] == _raw(POSTGRES_YAML)["concurrency"]["runs"]["max_concurrent_runs"]
    assert "maxConcurrentRuns" not in _raw(K8S_VALUES)["dagsterDaemon"]["runCoordinator"]["config"]["queuedRunCoordinator"]


def test_docker_launcher_block_uses_documented_keys_and_forwards_what_runs_need():
    launcher = _raw(DOCKER_YAML)["run_launcher"]
    assert (launcher["module"], launcher["class"]) == ("dagster_docker", "DockerRunLauncher")
    config = launcher["config"]
    assert set(config) <= DOCKER_LAUNCHER_KEYS
    assert not {"image", "environment", "network"} & set(config.get("container_kwargs", {}))  # documented as refused
    forwarded = set(config["env_vars"])
    assert set(INSTANCE_ENV) <= forwarded  # the run container opens the same Postgres instance
    assert set(environment_variable_names()) <= forwarded  # the full list: see the generator test
    try:
        import dagster_docker  # noqa: F401
    except ImportError:
        return  # not installed here: the launcher's own schema check is left to a Docker host
    ref = InstanceRef.from_dir(str(DOCKER_YAML.parent))
    assert type(ref.run_launcher).__name__ == "DockerRunLauncher"


def test_athena_and_trino_ddl_in_the_docs_match_the_arrow_schema():
    doc = DEPLOYMENT_DOC.read_text()
    athena = re.search(r"CREATE EXTERNAL TABLE sms_messages \((.*?)\)\s*PARTITIONED BY \(`date` string\)",
                       doc, re.DOTALL)
    trino = re.search(r"CREATE TABLE hive\.campaigns\.sms_messages \((.*?)\)\s*WITH", doc, re.DOTALL)
    assert athena and trino
    athena_types = {"string": "string", "date32[day]": "date", "int32": "int", "int64": "bigint",
                    "timestamp[us, tz=UTC]": "timestamp"}
    expected = [(f.name, athena_types[str(f.type)]) for f in schemas.TABLES["sms_messages"].schema]
    assert [tuple(line.rstrip(",").split()) for line in athena.group(1).strip().splitlines()] == expected
    trino_columns = [c.split()[0].strip('"') for c in trino.group(1).replace("\n", " ").split(",")]
    assert trino_columns == [name for name, _ in expected] + ["date"]
    assert "LOCATION 's3://bucket/prefix/sms_messages/'" in doc


# -- the local variant, as a real instance -----------------------------------------------------------


def test_local_yaml_loads_as_an_instance_with_the_queue_and_pools(tmp_path, monkeypatch):
    home = _use_home(monkeypatch, tmp_path / "dagster_home", LOCAL_YAML)
    with dg.DagsterInstance.get() as instance:
        assert instance.is_persistent and Path(instance.root_directory) == home
        assert isinstance(instance.run_coordinator, dg.QueuedRunCoordinator)
        concurrency = instance.get_concurrency_config()
        assert concurrency.run_queue_config.max_concurrent_runs == 4
        pools = concurrency.pool_config
        assert (pools.default_pool_limit, pools.pool_granularity) == (1, PoolGranularity.OP)
        storage = instance.event_log_storage
        assert storage.supports_global_concurrency_limits
        storage.initialize_concurrency_limit_to_default(POOL)
        info = storage.get_concurrency_info(POOL)
        assert (info.slot_count, info.using_default_limit) == (1, True)
    assert (home / "history" / "runs.db").exists()  # sqlite storage under $DAGSTER_HOME


# -- the pool on the asset, and a real multiprocess run ------------------------------------------------


def test_campaign_partition_step_is_in_the_cinnox_api_pool():
    env = {"CAMPAIGN_SOURCE": "simulator", "CAMPAIGN_PARTITION_START": DAY}
    job = build_definitions(env).resolve_job_def(JOB_NAME)
    assert job.graph.node_dict[STEP_KEY].definition.pool == POOL


@pytest.fixture
def simulator_server():
    server = start_simulator()
    yield server
    server.stop()


@pytest.fixture
def local_instance(simulator_server, tmp_path, monkeypatch):
    """A persistent instance from deploy/dagster.local.yaml, with the pipeline pointed at the simulator."""
    data_dir = tmp_path / "data"
    pipeline_env(monkeypatch, simulator_server, data_dir)  # also drops DAGSTER_HOME; set it after
    _use_home(monkeypatch, tmp_path / "dagster_home", LOCAL_YAML)
    with dg.DagsterInstance.get() as instance:
        yield instance, data_dir, simulator_server


def _execute_one_partition(instance: dg.DagsterInstance):
    with dg.execute_job(dg.reconstructable(campaign_job), instance=instance, run_config=MULTIPROCESS,
                        tags={"dagster/partition": DAY}) as result:
        return result.success, result.run_id


def _assert_day_landed(data_dir: Path, server) -> None:
    lower = datetime.combine(FIRST_DAY, datetime.min.time(), tzinfo=UTC)
    truth = server.simulator.ground_truth(lower, lower + timedelta(days=1))
    rows = read_table(data_dir / "warehouse.duckdb", "campaigns", "campaign_id")
    assert sorted(r["campaign_id"] for r in rows) == sorted(c["campaign_id"] for c in truth.campaigns)
    assert rows and {r["partition_date"] for r in rows} == {FIRST_DAY}
    for table in ("sms_messages", "whatsapp_messages"):
        assert read_table(data_dir / "warehouse.duckdb", table), table


def test_one_partition_runs_under_the_multiprocess_executor_on_the_local_instance(local_instance):
    instance, data_dir, server = local_instance
    success, run_id = _execute_one_partition(instance)
    assert success
    run = instance.get_run_by_id(run_id)
    assert run.status == dg.DagsterRunStatus.SUCCESS and run.tags["dagster/partition"] == DAY
    workers = [e.dagster_event for e in instance.all_logs(run_id, of_type=dg.DagsterEventType.STEP_WORKER_STARTED)]
    assert STEP_KEY in {w.step_key for w in workers}
    assert all(w.pid != os.getpid() for w in workers)  # every step ran in a child process
    _assert_day_landed(data_dir, server)


def test_the_step_waits_for_a_cinnox_api_slot_and_runs_when_one_frees(local_instance):
    """Hold the pool's only slot (limit 1 from the yaml) from another 'run'; the step must block on it,
    then run once the slot is released, and give its own slot back at the end."""
    instance, data_dir, server = local_instance
    storage = instance.event_log_storage
    storage.initialize_concurrency_limit_to_default(POOL)
    assert storage.get_concurrency_info(POOL).slot_count == 1
    assert storage.claim_concurrency_slot(POOL, BLOCKER_RUN, "other-step").is_claimed

    seen_pending: list[tuple[str, str]] = []
    run_finished = threading.Event()

    def release_when_blocked() -> None:
        with dg.DagsterInstance.from_ref(instance.get_ref()) as watcher:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and not run_finished.is_set():
                info = watcher.event_log_storage.get_concurrency_info(POOL)
                pending = [p for p in info.pending_steps if p.run_id != BLOCKER_RUN]
                if pending:
                    seen_pending.extend((p.run_id, p.step_key) for p in pending)
                    break
                time.sleep(0.2)
            watcher.event_log_storage.free_concurrency_slots_for_run(BLOCKER_RUN)

    releaser = threading.Thread(target=release_when_blocked, daemon=True)
    releaser.start()
    try:
        success, run_id = _execute_one_partition(instance)
    finally:
        run_finished.set()
        releaser.join(timeout=30)

    assert success
    assert seen_pending == [(run_id, STEP_KEY)]  # the step waited in the pool
    messages = [e.message or "" for e in instance.all_logs(run_id, of_type=dg.DagsterEventType.ENGINE_EVENT)]
    assert any(f"blocked by limit for pool {POOL}" in m for m in messages)
    info = storage.get_concurrency_info(POOL)
    assert info.claimed_slots == [] and info.pending_steps == []  # released after the step
    _assert_day_landed(data_dir, server)


# -- the S3 compute-log manager of the several-host configs, against a real S3 protocol server ----------


@pytest.fixture(scope="module")
def logs_s3():
    """A moto S3 server with the compute-log bucket; yields its endpoint."""
    server, endpoint = start_moto(LOGS_BUCKET)
    yield endpoint
    server.stop()


def test_a_runs_stdout_and_stderr_land_in_s3_through_the_shipped_compute_log_block(logs_s3, tmp_path):
    """deploy/dagster.yaml with only its storage swapped for SQLite (the Postgres storage as shipped:
    tests/integration/test_postgres_instance.py): a `campaign-pipeline backfill` recorded in that instance
    uploads its captured stdout and stderr (the per-day progress line) to the bucket."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    raw = _raw(POSTGRES_YAML)
    raw["storage"] = {"sqlite": {"base_dir": str(home)}}
    (home / "dagster.yaml").write_text(yaml.safe_dump(raw))

    env = cli_backfill_env(tmp_path, home, DAGSTER_COMPUTE_LOGS_BUCKET=LOGS_BUCKET, **moto_env(logs_s3))
    process = start_cli_backfill(env)
    _, stderr = process.communicate(timeout=180)
    assert process.returncode == 0, stderr
    run_id = run_id_of(stderr)

    logs = compute_log_objects(logs_s3, LOGS_BUCKET, raw["compute_logs"]["config"]["prefix"], run_id)
    assert set(logs) == {"out", "err"}  # both streams uploaded
    assert f"day 1/1 {DAY} published: campaigns 3" in logs["err"].decode()
