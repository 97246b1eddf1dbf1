"""deploy/dagster.yaml, copied unchanged, against a real PostgreSQL server over SSL and a real S3 protocol
server: a `campaign-pipeline backfill` is recorded in Postgres (the successful run, its materializations,
its wait for and use of the `cinnox_api` slot) and its stdout/stderr land in S3.

The server is Debian's PostgreSQL (``/usr/lib/postgresql/<version>/bin``, installed by ``.ci/run``),
started here on 127.0.0.1 with a fresh self-signed certificate, a pg_hba.conf that rejects every
connection without SSL, and password (SCRAM) authentication. Without the binaries the test is skipped,
or fails when ``CAMPAIGN_REQUIRE_POSTGRES=1`` (CI).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import psycopg
import pytest
from psycopg import sql

from tests.integration.test_deployment import (
    DAY,
    LOGS_BUCKET,
    POOL,
    POSTGRES_YAML,
    STEP_KEY,
    cli_backfill_env,
    compute_log_objects,
    free_port,
    moto_env,
    run_id_of,
    start_cli_backfill,
    start_moto,
)

REQUIRE_POSTGRES = os.environ.get("CAMPAIGN_REQUIRE_POSTGRES") == "1"
PG_BIN_GLOB = "/usr/lib/postgresql/*/bin"
SERVER_USER = "postgres"  # PostgreSQL refuses to run as root; the Debian package creates this user
DAGSTER_USER, DAGSTER_DB = "dagster", "dagster"
BLOCKER_RUN = "another-run-holding-the-slot"
MATERIALIZED = {"raw_campaign_responses", "campaigns", "sms_messages", "whatsapp_messages", "rejected_records"}


def postgres_bin_dir() -> Path | None:
    """The newest ``/usr/lib/postgresql/<version>/bin`` holding initdb, pg_ctl and postgres."""
    candidates = [path for path in Path("/").glob(PG_BIN_GLOB.lstrip("/"))
                  if all((path / tool).is_file() for tool in ("initdb", "pg_ctl", "postgres"))]
    return max(candidates, key=lambda path: int(path.parent.name), default=None) if candidates else None


def _unavailable(reason: str):
    message = f"{reason}; install Debian's postgresql package (.ci/run does)"
    if REQUIRE_POSTGRES:
        pytest.fail(f"CAMPAIGN_REQUIRE_POSTGRES=1 but {message}")
    pytest.skip(message)


@dataclass
class PostgresServer:
    """A PostgreSQL server started for a test: TCP on 127.0.0.1 only, SSL required, SCRAM passwords."""

    bin_dir: Path
    root: Path
    port: int
    superuser_password: str
    dagster_password: str
    run_as: list[str]

    @property
    def data_dir(self) -> Path:
        """The cluster's data directory."""
        return self.root / "data"

    def conninfo(self, user: str, password: str, dbname: str, sslmode: str = "require") -> str:
        """A libpq connection string for this server."""
        return (f"host=127.0.0.1 port={self.port} user={user} password={password} dbname={dbname} "
                f"sslmode={sslmode} connect_timeout=5")

    def superuser(self, dbname: str = "postgres") -> psycopg.Connection:
        """An autocommit connection as the superuser."""
        return psycopg.connect(self.conninfo(SERVER_USER, self.superuser_password, dbname), autocommit=True)

    def pg_ctl(self, *args: str, timeout: float = 60) -> None:
        """Run pg_ctl on this cluster as the server's user."""
        subprocess.run([*self.run_as, str(self.bin_dir / "pg_ctl"), "-D", str(self.data_dir), *args],
                       check=True, capture_output=True, timeout=timeout)


def _self_signed_certificate(directory: Path) -> tuple[Path, Path]:
    """A fresh EC key and a self-signed certificate for 127.0.0.1 (server.crt, server.key)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    certificate = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                   .serial_number(x509.random_serial_number())
                   .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
                   .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                                  critical=False)
                   .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "server.crt", directory / "server.key"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_path.chmod(0o600)  # PostgreSQL refuses a key others can read
    return cert_path, key_path


def start_postgres() -> PostgresServer:
    """initdb and start a throwaway cluster (as the ``postgres`` user when we are root)."""
    bin_dir = postgres_bin_dir()
    if bin_dir is None:
        _unavailable(f"no PostgreSQL server binaries under {PG_BIN_GLOB}")
    run_as: list[str] = []
    owner = None
    if os.geteuid() == 0:
        try:
            owner = pwd.getpwnam(SERVER_USER)
        except KeyError:
            _unavailable(f"we run as root and there is no '{SERVER_USER}' user to run PostgreSQL as")
        # runuser is in /usr/sbin, which a minimal PATH (CI, env -i) may leave out
        runuser = shutil.which("runuser", path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"]))
        if runuser is None:
            _unavailable("we run as root and runuser (util-linux) is not installed")
        run_as = [runuser, "-u", SERVER_USER, "--"]
    root = Path(tempfile.mkdtemp(prefix="campaign-pg-"))
    password = secrets.token_urlsafe(18)
    (root / "pwfile").write_text(password + "\n")
    cert, key = _self_signed_certificate(root)
    if owner is not None:
        for path in (root, root / "pwfile", cert, key):
            os.chown(path, owner.pw_uid, owner.pw_gid)
    server = PostgresServer(bin_dir=bin_dir, root=root, port=free_port(), superuser_password=password,
                            dagster_password=secrets.token_urlsafe(18), run_as=run_as)
    try:
        _init_and_start(server, cert, key)
    except BaseException:
        stop_postgres(server)
        raise
    return server


def _init_and_start(server: PostgresServer, cert: Path, key: Path) -> None:
    bin_dir, root, run_as = server.bin_dir, server.root, server.run_as
    subprocess.run([*run_as, str(bin_dir / "initdb"), "-D", str(server.data_dir), "-U", SERVER_USER,
                    "--auth=scram-sha-256", f"--pwfile={root / 'pwfile'}", "--encoding=UTF8", "--no-locale",
                    "--no-sync"], check=True, capture_output=True, timeout=120)
    # Only TCP on 127.0.0.1, only with SSL (a connection without it is rejected), SCRAM passwords.
    (server.data_dir / "pg_hba.conf").write_text("hostnossl all all all reject\n"
                                                 "hostssl all all 127.0.0.1/32 scram-sha-256\n")
    with (server.data_dir / "postgresql.conf").open("a") as conf:
        conf.write(f"\nlisten_addresses = '127.0.0.1'\nport = {server.port}\nunix_socket_directories = ''\n"
                   f"ssl = on\nssl_cert_file = '{cert}'\nssl_key_file = '{key}'\n"
                   "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n")
    server.pg_ctl("-l", str(root / "server.log"), "-w", "-t", "60", "start")
    with server.superuser() as con:
        con.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
            sql.Identifier(DAGSTER_USER), sql.Literal(server.dagster_password)))
        con.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(DAGSTER_DB),
                                                                 sql.Identifier(DAGSTER_USER)))


def stop_postgres(server: PostgresServer) -> None:
    """Stop the cluster if it runs (immediate shutdown) and delete its directory."""
    try:
        if (server.data_dir / "postmaster.pid").exists():
            server.pg_ctl("-m", "immediate", "-w", "stop")
    finally:
        shutil.rmtree(server.root, ignore_errors=True)


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresServer]:
    server = start_postgres()
    try:
        yield server
    finally:
        stop_postgres(server)


@pytest.fixture(scope="module")
def logs_s3() -> Iterator[str]:
    server, endpoint = start_moto(LOGS_BUCKET)
    yield endpoint
    server.stop()


def test_the_server_refuses_connections_without_ssl(postgres):
    """Control: whatever connects to this server (the backfill below included) used SSL."""
    with pytest.raises(psycopg.OperationalError, match="no encryption|pg_hba.conf rejects"):
        psycopg.connect(postgres.conninfo(SERVER_USER, postgres.superuser_password, "postgres", sslmode="disable"))
    with postgres.superuser() as con:
        assert con.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetchone() == (True,)


class _Watcher(threading.Thread):
    """Polls Postgres while the backfill runs: the step waiting in the pool (pending_steps), then
    holding the slot (concurrency_slots); frees the blocker's slot once the step is seen waiting."""

    def __init__(self, conninfo: str, release) -> None:
        super().__init__(daemon=True)
        self.conninfo, self.release = conninfo, release
        self.pending: set[tuple[str, str]] = set()
        self.holding: set[tuple[str, str]] = set()
        self.ssl: set[bool] = set()
        self.done = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with psycopg.connect(self.conninfo, autocommit=True) as con:
                deadline = time.monotonic() + 150
                while not self.done.is_set() and time.monotonic() < deadline:
                    if not self.pending:
                        self.pending |= set(con.execute(
                            "SELECT run_id, step_key FROM pending_steps WHERE concurrency_key = %s AND run_id <> %s",
                            (POOL, BLOCKER_RUN)).fetchall())
                        if self.pending:
                            self.release()
                    self.holding |= set(con.execute(
                        "SELECT run_id, step_key FROM concurrency_slots WHERE concurrency_key = %s "
                        "AND run_id IS NOT NULL AND run_id <> %s", (POOL, BLOCKER_RUN)).fetchall())
                    self.ssl |= {row[0] for row in con.execute(
                        "SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) "
                        "WHERE a.usename = %s AND a.pid <> pg_backend_pid()", (DAGSTER_USER,)).fetchall()}
                    time.sleep(0.05)
        except BaseException as error:  # noqa: BLE001 -- reported by the test
            self.error = error
            self.release()


def test_the_shipped_postgres_config_records_a_real_backfill(postgres, logs_s3, tmp_path, monkeypatch):
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copyfile(POSTGRES_YAML, home / "dagster.yaml")
    assert (home / "dagster.yaml").read_bytes() == POSTGRES_YAML.read_bytes()  # unchanged
    instance_env = {"DAGSTER_PG_HOST": "127.0.0.1", "DAGSTER_PG_PORT": str(postgres.port),
                    "DAGSTER_PG_DB": DAGSTER_DB, "DAGSTER_PG_USER": DAGSTER_USER,
                    "DAGSTER_PG_PASSWORD": postgres.dagster_password,
                    "DAGSTER_COMPUTE_LOGS_BUCKET": LOGS_BUCKET, **moto_env(logs_s3)}
    for name, value in instance_env.items():
        monkeypatch.setenv(name, value)
    dagster_conninfo = postgres.conninfo(DAGSTER_USER, postgres.dagster_password, DAGSTER_DB)

    # Another "run" holds the pool's only slot, through the same instance config in this process: the
    # CLI's step must wait for it in Postgres, then run once it is freed.
    with dg.DagsterInstance.from_config(str(home)) as instance:
        storage = instance.event_log_storage
        assert type(storage).__name__ == "PostgresEventLogStorage"
        storage.initialize_concurrency_limit_to_default(POOL)
        assert storage.claim_concurrency_slot(POOL, BLOCKER_RUN, "other-step").is_claimed
        watcher = _Watcher(dagster_conninfo, lambda: storage.free_concurrency_slots_for_run(BLOCKER_RUN))
        watcher.start()
        started = time.monotonic()
        process = start_cli_backfill(cli_backfill_env(tmp_path, home, **instance_env))
        try:
            stdout, stderr = process.communicate(timeout=180)
        finally:
            watcher.done.set()
            watcher.join(timeout=30)
        elapsed = time.monotonic() - started
        assert watcher.error is None, watcher.error
        assert process.returncode == 0, stderr
        run_id = run_id_of(stderr)
        assert instance.get_run_by_id(run_id).status == dg.DagsterRunStatus.SUCCESS

    with psycopg.connect(dagster_conninfo) as con:
        runs = con.execute("SELECT run_id, status, pipeline_name FROM runs").fetchall()
        assert runs == [(run_id, "SUCCESS", "campaign_daily_job")]
        materialized = con.execute(
            "SELECT asset_key, partition FROM event_logs WHERE run_id = %s AND dagster_event_type = %s",
            (run_id, "ASSET_MATERIALIZATION")).fetchall()
        assert sorted(materialized) == sorted((f'["{key}"]', DAY) for key in MATERIALIZED)
        blocked = con.execute(
            "SELECT count(*) FROM event_logs WHERE run_id = %s AND dagster_event_type = 'ENGINE_EVENT' "
            "AND event LIKE %s", (run_id, f"%blocked by limit for pool {POOL}%")).fetchone()[0]
        assert blocked >= 1
        limit = con.execute('SELECT "limit", using_default_limit FROM concurrency_limits WHERE concurrency_key = %s',
                            (POOL,)).fetchone()
        assert limit == (1, True)  # pools.default_limit: 1 from the shipped file
        slots = con.execute("SELECT run_id FROM concurrency_slots WHERE concurrency_key = %s AND NOT deleted",
                            (POOL,)).fetchall()
        assert slots == [(None,)]  # one slot, free again after the run
        leaked = con.execute("SELECT count(*) FROM event_logs WHERE event LIKE %s",
                             (f"%{postgres.dagster_password}%",)).fetchone()[0]
        assert leaked == 0
    assert watcher.pending == {(run_id, STEP_KEY)}  # the step waited in the pool...
    assert watcher.holding == {(run_id, STEP_KEY)}  # ...then held the slot
    assert watcher.ssl == {True}  # every session of the dagster user seen during the run used SSL

    logs = compute_log_objects(logs_s3, LOGS_BUCKET, "campaign_pipeline/compute_logs", run_id)
    assert set(logs) == {"out", "err"}
    assert f"day 1/1 {DAY} published" in logs["err"].decode()
    for text in (stdout, stderr, *(body.decode() for body in logs.values())):
        assert postgres.dagster_password not in text
    assert elapsed < 60
