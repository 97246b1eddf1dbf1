"""Security end to end: the App Token never leaks, phone numbers and message bodies stay out of logs and Dagster
metadata, CAMPAIGN_PII_MODE=hash leaves no number in any file, TLS verification stays on."""

from __future__ import annotations

import json
import logging
import os
import pickle
import secrets
import socket
import sqlite3
import ssl
import subprocess
import sys
import threading
import traceback
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from http.client import HTTPConnection
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import dagster as dg
import duckdb
import pyarrow.parquet as pq
import pytest

from campaign_pipeline.cinnox.client import CinnoxClient
from campaign_pipeline.config import PipelineConfig
from campaign_pipeline.errors import (
    AuthError,
    BadRequestError,
    CinnoxError,
    FatalError,
    RetriesExhaustedError,
)
from campaign_pipeline.simulator import SimulatorConfig, SimulatorServer
from tests.conftest import FIRST_DAY, SIM_NOW, decompress

ROOT = Path(__file__).resolve().parents[2]
_SCRIPT = Path(sys.executable).with_name("campaign-pipeline")
CLI = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "campaign_pipeline.cli"]

TOKEN = f"tok-SECRET-{secrets.token_hex(12)}"
TOKEN_SG = f"tok-SECRET-sg-{secrets.token_hex(12)}"  # a second app's token (CAMPAIGN_APPS)
WRONG_TOKEN = f"tok-SECRET-wrong-{secrets.token_hex(12)}"
APP_TOKENS = (TOKEN, TOKEN_SG)
SALT_A, SALT_B = f"salt-A-{secrets.token_hex(12)}", f"salt-B-{secrets.token_hex(12)}"
SIM = {"seed": 23, "campaigns_per_day": 3, "recipients_per_campaign": 40, "now": SIM_NOW, "token": TOKEN}
DAY1, DAY2, DAY3 = FIRST_DAY, FIRST_DAY + timedelta(days=1), FIRST_DAY + timedelta(days=2)
SUMMARY_WINDOW = (datetime(2024, 5, 2, tzinfo=UTC), datetime(2024, 5, 3, tzinfo=UTC))


# --- running the CLI --------------------------------------------------------------------------


def cli_env(base_url: str, data_dir: Path, token: str = TOKEN, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k == "CAMPAIGN_LAST_RUN_FILE" or not k.startswith(("CINNOX_", "CAMPAIGN_", "DAGSTER_"))}
    env.update({
        "CAMPAIGN_SOURCE": "cinnox", "CINNOX_BASE_URL": base_url, "CINNOX_APP_ID": "sim-app",
        "CINNOX_APP_TOKEN": token, "CINNOX_RATE_LIMIT_PER_MIN": "60000", "CAMPAIGN_DATA_DIR": str(data_dir),
        "CAMPAIGN_PARTITION_START": FIRST_DAY.isoformat(), "CAMPAIGN_PARTITION_TZ": "UTC", **extra,
    })
    return env


def backfill_args(start: date, end: date) -> list[str]:
    # -v: debug logging, the most a log could ever say
    return [*CLI, "-v", "backfill", "--start", start.isoformat(), "--end", end.isoformat()]


def backfill(start: date, end: date, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(backfill_args(start, end), check=False, env=env, capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


def last_line(text: str) -> str:
    return [line for line in text.splitlines() if line.strip()][-1]


# --- reading everything a run left behind -----------------------------------------------------


def files_under(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def _sqlite_dump(path: Path) -> bytes:
    """Every value of every table of a SQLite file, zlib-compressed blobs (Dagster snapshots) inflated."""
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        chunks = []
        tables = [row[0] for row in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        for table in tables:
            for row in con.execute(f'SELECT * FROM "{table}"'):
                for value in row:
                    if isinstance(value, bytes):
                        chunks.append(value)
                        try:
                            chunks.append(zlib.decompress(value))
                        except zlib.error:
                            pass
                    else:
                        chunks.append(str(value).encode())
        return b"\n".join(chunks)
    finally:
        con.close()


def _duckdb_dump(path: Path) -> bytes:
    con = duckdb.connect(str(path), read_only=True)
    try:
        chunks = []
        for (table,) in con.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_type = 'BASE TABLE'"
        ).fetchall():
            chunks.append(repr(con.execute(f'SELECT * FROM "{table}"').fetchall()).encode())
        return b"\n".join(chunks)
    finally:
        con.close()


def decoded_contents(path: Path) -> Iterator[bytes]:
    """The file's raw bytes, then its decoded content where it has a format we know."""
    raw = path.read_bytes()
    yield raw
    if path.suffix == ".zst":
        yield decompress(path)
    elif path.suffix == ".parquet":
        yield repr(pq.read_table(path).to_pylist()).encode()
    elif path.suffix == ".duckdb":
        yield _duckdb_dump(path)
    elif raw.startswith(b"SQLite format 3\x00"):
        yield _sqlite_dump(path)


def find_needles(root: Path, needles: set[bytes]) -> dict[str, set[bytes]]:
    """{relative file: needles found in it} for every file under ``root``."""
    found: dict[str, set[bytes]] = {}
    for path in files_under(root):
        for blob in decoded_contents(path):
            hits = {needle for needle in needles if needle in blob}
            if hits:
                found.setdefault(str(path.relative_to(root)), set()).update(hits)
    return found


def text_forms(value: str) -> set[bytes]:
    """How a string can be spelled in a file: UTF-8, and JSON-escaped ASCII (Dagster's serializer)."""
    return {value.encode(), json.dumps(value)[1:-1].encode()}


def dagster_event_texts(dagster_home: Path) -> tuple[int, str]:
    """(number of runs, text of every event of every run) from the persistent Dagster instance."""
    instance = dg.DagsterInstance.from_config(str(dagster_home))
    try:
        runs = instance.get_runs()
        texts = [repr(run) for run in runs]
        for run in runs:
            texts.extend(repr(entry) for entry in instance.all_logs(run.run_id))
        return len(runs), "\n".join(texts)
    finally:
        instance.dispose()


# --- a successful and two failing runs, recorded in DAGSTER_HOME -----------------------------------


@dataclass(frozen=True)
class SecretRuns:
    home: Path
    data_dir: Path
    results: dict[str, subprocess.CompletedProcess]


@pytest.fixture(scope="module")
def secret_server():
    with SimulatorServer(SimulatorConfig(**SIM)) as server:
        assert server.token == TOKEN
        yield server


@pytest.fixture(scope="module")
def secret_runs(secret_server, tmp_path_factory) -> SecretRuns:
    root = tmp_path_factory.mktemp("secrets")
    home, data_dir = root / "dagster_home", root / "data"
    home.mkdir()
    results = {"ok": backfill(DAY1, DAY2, cli_env(secret_server.base_url, data_dir, DAGSTER_HOME=str(home)))}
    with SimulatorServer(SimulatorConfig(**SIM, down=True)) as down:
        results["api_down"] = backfill(DAY2, DAY2, cli_env(
            down.base_url, root / "data_down", DAGSTER_HOME=str(home), CINNOX_MAX_ATTEMPTS="3",
            CINNOX_BACKOFF_MAX_S="0.05"))
    results["bad_base_path"] = backfill(DAY2, DAY2, cli_env(
        secret_server.base_url + "/no/such/prefix", root / "data_bad_path", DAGSTER_HOME=str(home)))
    with SimulatorServer(SimulatorConfig(**{**SIM, "app_id": "sim-sg", "token": TOKEN_SG, "down": True})) as sg_down:
        results["two_apps"] = backfill(DAY1, DAY2, cli_env(
            "", root / "data_two_apps", DAGSTER_HOME=str(home), CAMPAIGN_APPS="hk,sg", CINNOX_MAX_ATTEMPTS="2",
            CINNOX_BACKOFF_MAX_S="0.05", CINNOX_HK_BASE_URL=secret_server.base_url, CINNOX_HK_APP_ID="sim-app",
            CINNOX_HK_APP_TOKEN=TOKEN, CINNOX_SG_BASE_URL=sg_down.base_url, CINNOX_SG_APP_ID="sim-sg",
            CINNOX_SG_APP_TOKEN=TOKEN_SG))
    return SecretRuns(home, data_dir, results)


def test_runs_under_test_succeed_and_fail_as_intended(secret_runs):
    results = secret_runs.results
    assert results["ok"].returncode == 0, results["ok"].stderr
    assert "backfill done" in results["ok"].stderr
    assert results["api_down"].returncode == 1 and "503" in last_line(results["api_down"].stderr)
    assert results["bad_base_path"].returncode == 1 and "404" in last_line(results["bad_base_path"].stderr)
    assert results["two_apps"].returncode == 1 and "503" in last_line(results["two_apps"].stderr)


def test_token_never_in_cli_output(secret_runs):
    for name, result in secret_runs.results.items():
        for token in APP_TOKENS:
            assert token not in result.stdout + result.stderr, name


def test_token_never_in_dagster_home_files_or_event_log(secret_runs):
    runs, events = dagster_event_texts(secret_runs.home)
    assert runs == len(secret_runs.results)
    assert "503" in events and "ASSET_MATERIALIZATION" in events  # the event log is really what we read
    assert TOKEN not in events and TOKEN_SG not in events
    needles = text_forms(TOKEN) | text_forms(TOKEN_SG)
    run_id = secret_runs.results["ok"].stderr.rsplit("run ", 1)[1].split()[0]
    assert find_needles(secret_runs.home, {run_id.encode()}), "the scan must see inside Dagster's storage"
    assert find_needles(secret_runs.home, needles) == {}


def test_token_never_in_data_dir(secret_runs, secret_server):
    sent = secret_server.simulator.ground_truth(datetime(2024, 5, 1, tzinfo=UTC), datetime(2024, 5, 3, tzinfo=UTC))
    control = sent.messages[0]["recipient"].encode()
    assert find_needles(secret_runs.data_dir, {control}), "the scan must see inside the landing and table files"
    for name in ("data", "data_down", "data_bad_path", "data_two_apps"):
        data_dir = secret_runs.data_dir.with_name(name)
        assert data_dir.exists(), name
        assert find_needles(data_dir, text_forms(TOKEN) | text_forms(TOKEN_SG)) == {}, name


def test_pii_never_in_logs_or_dagster_metadata(secret_runs, secret_server):
    truth = secret_server.simulator.ground_truth(datetime(2024, 5, 1, tzinfo=UTC), datetime(2024, 5, 3, tzinfo=UTC))
    recipients = {m["recipient"] for m in truth.messages}
    bodies = {m["content"] for m in truth.messages if m["content"]}
    assert len(recipients) > 100 and len(bodies) > 10
    con = duckdb.connect(str(secret_runs.data_dir / "warehouse.duckdb"), read_only=True)
    try:  # the run really processed these numbers and bodies (raw mode keeps them in the tables)
        loaded = {r for (r,) in con.execute("SELECT recipient FROM sms_messages UNION SELECT recipient FROM "
                                            "whatsapp_messages").fetchall()}
        loaded_bodies = {c for (c,) in con.execute("SELECT content FROM sms_messages").fetchall()}
    finally:
        con.close()
    assert loaded == recipients and bodies <= loaded_bodies
    needles = set()
    for number in recipients:
        needles |= {number.encode(), number.lstrip("+").encode()}
    for body in bodies:
        needles |= text_forms(body)
    for name, result in secret_runs.results.items():
        output = (result.stdout + result.stderr).encode()
        assert not [n for n in needles if n in output], name
    assert find_needles(secret_runs.home, needles) == {}
    _, events = dagster_event_texts(secret_runs.home)
    assert not [n for n in needles if n.decode() in events]


# --- in-process exceptions ----------------------------------------------------------------------


class _EchoHandler(BaseHTTPRequestHandler):
    """Answers with the status named by the first path segment and echoes the Authorization header back."""

    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):
        pass

    def do_GET(self):
        auth = self.headers.get("Authorization", "")
        self.server.seen.append(auth)
        status = int(self.path.strip("/").split("/", 1)[0])
        code = {200: 6451001, 400: 6451000, 401: 6450401, 503: 6451001}[status]
        body = json.dumps({"code": code, "message": f"echo: {auth} / {auth.removeprefix('Bearer ')}"}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def _raised(call) -> CinnoxError:
    with pytest.raises(CinnoxError) as info:
        call()
    return info.value


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_exception_texts_and_logs_never_carry_the_token(caplog):
    caplog.set_level(logging.DEBUG)
    quick = {"max_attempts": 2, "backoff_max_s": 0.01, "rate_limit_per_min": None, "read_timeout": 2}
    errors: dict[str, CinnoxError] = {}

    def summary(base_url: str, token: str = TOKEN):
        client = CinnoxClient(base_url, "sim-app", token, **quick)
        assert TOKEN not in repr(client) and token not in repr(client)
        return lambda: list(client.iter_summary_pages(*SUMMARY_WINDOW))

    with SimulatorServer(SimulatorConfig(**SIM, down=True)) as down:
        errors["down"] = _raised(summary(down.base_url))
    with SimulatorServer(SimulatorConfig(**SIM)) as server:
        errors["auth"] = _raised(summary(server.base_url, WRONG_TOKEN))
        errors["bad_path"] = _raised(summary(server.base_url + "/no/such/prefix"))
    errors["refused"] = _raised(summary(f"http://127.0.0.1:{_closed_port()}"))
    echo = ThreadingHTTPServer(("127.0.0.1", 0), _EchoHandler)
    echo.seen = []
    threading.Thread(target=echo.serve_forever, daemon=True).start()
    try:
        for status in (200, 400, 401, 503):
            errors[f"echo_{status}"] = _raised(summary(f"http://127.0.0.1:{echo.server_address[1]}/{status}"))
    finally:
        echo.shutdown()
        echo.server_close()
    assert f"Bearer {TOKEN}" in echo.seen  # the echoed bodies really carried the token

    kinds = {name: type(error) for name, error in errors.items()}
    assert kinds == {"down": RetriesExhaustedError, "auth": AuthError, "bad_path": BadRequestError,
                     "refused": RetriesExhaustedError, "echo_200": RetriesExhaustedError,
                     "echo_400": BadRequestError, "echo_401": AuthError, "echo_503": RetriesExhaustedError}
    for name, error in errors.items():
        texts = [str(error), repr(error), "".join(traceback.format_exception(error)),
                 pickle.dumps(error).decode("latin-1")]
        if isinstance(error, RetriesExhaustedError):
            texts += [str(error.last_error), repr(error.last_error)]
        for secret in (TOKEN, WRONG_TOKEN):
            assert not [text for text in texts if secret in text], (name, texts)
    assert "CINNOX retry" in caplog.text
    assert TOKEN not in caplog.text and WRONG_TOKEN not in caplog.text


def test_config_and_client_reprs_hide_token_and_salt():
    env = {"CAMPAIGN_SOURCE": "cinnox", "CINNOX_BASE_URL": "https://example.cinnox.com", "CINNOX_APP_ID": "app",
           "CINNOX_APP_TOKEN": TOKEN, "CAMPAIGN_PII_MODE": "hash", "CAMPAIGN_PII_SALT": SALT_A}
    config = PipelineConfig.from_env(env)
    app = config.apps[0]
    assert app.app_token == TOKEN and config.pii_salt == SALT_A
    shown = repr(config) + str(config) + repr(app) + repr(CinnoxClient(app.base_url, app.app_id, app.app_token))
    assert TOKEN not in shown and SALT_A not in shown


def test_cli_refuses_a_malformed_token_or_salt_before_any_request_without_echoing_it(tmp_path):
    spaced, short = f"tok SECRET {secrets.token_hex(8)}", "s3cr3t"
    salt = f"salt-SECRET-{secrets.token_hex(8)}\x1b"
    env = cli_env("http://127.0.0.1:1", tmp_path / "data", token=spaced, CAMPAIGN_APPS="hk,sg",
                  CINNOX_HK_BASE_URL="http://127.0.0.1:1", CINNOX_HK_APP_ID="hk", CINNOX_HK_APP_TOKEN=spaced,
                  CINNOX_SG_BASE_URL="http://127.0.0.1:1", CINNOX_SG_APP_ID="sg", CINNOX_SG_APP_TOKEN=short,
                  CAMPAIGN_PII_MODE="hash", CAMPAIGN_PII_SALT=salt)
    result = backfill(DAY2, DAY2, env, timeout=120)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert "CINNOX_HK_APP_TOKEN contains whitespace" in lines[0] and "CINNOX_SG_APP_TOKEN is shorter" in lines[0]
    assert "CAMPAIGN_PII_SALT contains control characters" in lines[0]
    output = result.stdout + result.stderr
    for secret in (spaced, spaced.split()[-1], short, salt.strip("\x1b")):
        assert secret not in output
    assert not (tmp_path / "data").exists()


# --- CAMPAIGN_PII_MODE=hash -------------------------------------------------------------------

HASH_SIM = {"seed": 29, "campaigns_per_day": 3, "recipients_per_campaign": 40, "now": SIM_NOW, "odd_records": True}


@dataclass(frozen=True)
class HashRuns:
    dirs: dict[str, Path]
    results: dict[str, subprocess.CompletedProcess]
    numbers: set[str]
    sms_bodies: set[str]
    sender_phones: set[str]
    truth: dict[str, list[dict]]


@pytest.fixture(scope="module")
def hash_runs(tmp_path_factory) -> HashRuns:
    """Salt A over days 1-2 and over days 2-3, salt B over day 2, run at the same time into three data dirs."""
    root = tmp_path_factory.mktemp("hash")
    plan = {"a_1_2": (SALT_A, DAY1, DAY2), "a_2_3": (SALT_A, DAY2, DAY3), "b_2": (SALT_B, DAY2, DAY2)}
    with SimulatorServer(SimulatorConfig(**HASH_SIM)) as server:
        procs = {}
        for name, (salt, start, end) in plan.items():
            env = cli_env(server.base_url, root / name, token=server.token, CAMPAIGN_PII_MODE="hash",
                          CAMPAIGN_PII_SALT=salt, CAMPAIGN_REJECTED_THRESHOLD="0.5")
            procs[name] = subprocess.Popen(backfill_args(start, end), env=env, stdout=subprocess.PIPE,
                                           stderr=subprocess.PIPE, text=True, cwd=ROOT)
        results = {}
        for name, proc in procs.items():
            stdout, stderr = proc.communicate(timeout=300)
            results[name] = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
        simulator = server.simulator
        truth = {}
        numbers, bodies, senders = set(), set(), set()
        for day in (DAY1, DAY2, DAY3):
            start = datetime(day.year, day.month, day.day, tzinfo=UTC)
            day_truth = simulator.ground_truth(start, start + timedelta(days=1))
            truth[day.isoformat()] = day_truth.messages
            bodies |= {m["content"] for m in day_truth.messages if m["content"]}
            for campaign in day_truth.campaigns:
                senders.add(campaign["sender_phone"])
                for record in simulator.detail_records(campaign["campaign_id"]):  # every number the API sent
                    if record.get("recipient") not in (None, ""):
                        numbers.add(str(record["recipient"]).lstrip("+"))
    return HashRuns({name: root / name for name in plan}, results, numbers, bodies, senders, truth)


def _rows(data_dir: Path, sql: str, params=()) -> list[tuple]:
    con = duckdb.connect(str(data_dir / "warehouse.duckdb"), read_only=True)
    try:
        return con.execute(sql, list(params)).fetchall()
    finally:
        con.close()


def test_hash_mode_runs_succeed(hash_runs):
    for name, result in hash_runs.results.items():
        assert result.returncode == 0, (name, result.stderr)
        assert (hash_runs.dirs[name] / ".campaign_pii_mode").read_text().strip() == "hash"


def test_hash_mode_leaves_no_phone_number_body_or_salt_in_any_output(hash_runs):
    assert len(hash_runs.numbers) > 100
    needles = set()
    for digits in hash_runs.numbers:
        needles |= {digits.encode(), b"+" + digits.encode()}
    for body in hash_runs.sms_bodies:
        needles |= text_forms(body)
    needles |= {SALT_A.encode(), SALT_B.encode()}
    senders = {phone.encode() for phone in hash_runs.sender_phones}
    for name, data_dir in hash_runs.dirs.items():
        assert find_needles(data_dir, senders), "control: the scan sees the (business) sender numbers"
        assert find_needles(data_dir, needles) == {}, name
        output = (hash_runs.results[name].stdout + hash_runs.results[name].stderr).encode()
        assert not [n for n in needles if n in output], name


def test_hash_mode_drops_sms_content_at_landing(hash_runs):
    for data_dir in hash_runs.dirs.values():
        assert _rows(data_dir, "SELECT count(*), count(content) FROM sms_messages")[0][0] > 0
        assert _rows(data_dir, "SELECT count(content) FROM sms_messages") == [(0,)]
        for path in (data_dir / "lake" / "raw").rglob("*.zst"):
            for line in decompress(path).splitlines():
                page = json.loads(line)
                if page["endpoint"] == "detail":
                    assert not [r for r in page["result"] if "content" in r]


def test_hash_mode_counts_uniqueness_and_joins_work_on_the_hashed_recipient(hash_runs):
    data_dir = hash_runs.dirs["a_1_2"]
    truth = hash_runs.truth[DAY1.isoformat()] + hash_runs.truth[DAY2.isoformat()]
    for table, channel in (("sms_messages", "SMS"), ("whatsapp_messages", "WhatsApp")):
        expected = [m for m in truth if m["channel"] == channel]
        rows = _rows(data_dir, f"SELECT campaign_id, recipient FROM {table}")
        assert len(rows) == len(expected) and len(set(rows)) == len(rows), table
        assert all(r.startswith("hmac:") and len(r) == 69 for _, r in rows)
        # the hash is one-to-one on the numbers: the same recipients repeat across campaigns the same way
        assert sorted(Counter(r for _, r in rows).values()) == sorted(
            Counter(m["recipient"] for m in expected).values())
        assert Counter(c for c, _ in rows) == Counter(m["campaign_id"] for m in expected)

    def day2(name: str) -> set[tuple]:
        return set(_rows(hash_runs.dirs[name], "SELECT campaign_id, recipient FROM sms_messages WHERE partition_date"
                         " = ? UNION ALL SELECT campaign_id, recipient FROM whatsapp_messages WHERE partition_date = ?",
                         [DAY2, DAY2]))

    a, a_again, b = day2("a_1_2"), day2("a_2_3"), day2("b_2")
    assert len(a) == len(hash_runs.truth[DAY2.isoformat()])
    assert a == a_again  # same salt, another run: same hashes, so a join on (campaign_id, recipient) matches all
    con = duckdb.connect()
    try:
        for name in ("a_1_2", "a_2_3"):
            con.execute(f"ATTACH '{hash_runs.dirs[name] / 'warehouse.duckdb'}' AS {name} (READ_ONLY)")
        joined = con.execute("SELECT count(*) FROM a_1_2.sms_messages x JOIN a_2_3.sms_messages y "
                             "USING (campaign_id, recipient) WHERE x.partition_date = ?", [DAY2]).fetchone()[0]
    finally:
        con.close()
    assert joined == sum(1 for m in hash_runs.truth[DAY2.isoformat()] if m["channel"] == "SMS")
    assert {c for c, _ in b} == {c for c, _ in a} and len(b) == len(a)
    assert not {r for _, r in b} & {r for _, r in a}  # another salt: no hash in common


# --- TLS ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_cert(tmp_path_factory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (no CA anyone trusts)."""
    root = tmp_path_factory.mktemp("tls")
    cert, key = root / "cert.pem", root / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "2", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
                   check=True, capture_output=True, timeout=60)
    return cert, key


class _TLSForwarder(ThreadingHTTPServer):
    """HTTPS in front of the plain-HTTP simulator, with the self-signed certificate."""

    daemon_threads = True

    def __init__(self, upstream_port: int, cert: Path, key: Path):
        super().__init__(("127.0.0.1", 0), _ForwardHandler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(cert), str(key))
        self.socket = context.wrap_socket(self.socket, server_side=True, do_handshake_on_connect=False)
        self.upstream_port = upstream_port
        self.forwarded = 0
        self.lock = threading.Lock()

    def handle_error(self, request, client_address):  # a client refusing our certificate is expected here
        pass


class _ForwardHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):
        pass

    def do_GET(self):
        upstream = HTTPConnection("127.0.0.1", self.server.upstream_port, timeout=30)
        try:
            upstream.request("GET", self.path, headers={"Authorization": self.headers.get("Authorization", "")})
            response = upstream.getresponse()
            body = response.read()
        finally:
            upstream.close()
        with self.server.lock:
            self.server.forwarded += 1
        self.send_response(response.status)
        self.send_header("Content-Type", response.getheader("Content-Type", "application/json"))
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture(scope="module")
def tls_server(secret_server, tls_cert):
    forwarder = _TLSForwarder(secret_server.port, *tls_cert)
    threading.Thread(target=forwarder.serve_forever, daemon=True).start()
    yield forwarder
    forwarder.shutdown()
    forwarder.server_close()


def _https_url(server: _TLSForwarder) -> str:
    return f"https://127.0.0.1:{server.server_address[1]}"


def test_tls_verification_is_on_by_default_and_not_retried(tls_server):
    client = CinnoxClient(_https_url(tls_server), "sim-app", TOKEN, max_attempts=3, backoff_max_s=0.01)
    assert client.verify is True
    before = tls_server.forwarded
    error = _raised(lambda: list(client.iter_summary_pages(*SUMMARY_WINDOW)))
    assert isinstance(error, FatalError) and "TLS verification failed" in str(error)
    assert client.stats.requests == 1 and tls_server.forwarded == before
    assert TOKEN not in str(error) + repr(error)


def test_tls_ca_bundle_trusts_the_private_certificate(tls_server, tls_cert, secret_server):
    client = CinnoxClient(_https_url(tls_server), "sim-app", TOKEN, ca_bundle=str(tls_cert[0]))
    assert client.verify == str(tls_cert[0])
    records = [r for page in client.iter_summary_pages(*SUMMARY_WINDOW) for r in page.records]
    assert records == secret_server.simulator.summary_records(*SUMMARY_WINDOW) and records


def test_cli_over_tls_fails_without_the_ca_bundle_and_succeeds_with_it(tls_server, tls_cert, tmp_path):
    before = tls_server.forwarded
    refused = backfill(DAY2, DAY2, cli_env(_https_url(tls_server), tmp_path / "refused"), timeout=120)
    assert refused.returncode == 1 and "TLS verification failed" in last_line(refused.stderr), refused.stderr
    assert tls_server.forwarded == before
    trusted = backfill(DAY2, DAY2, cli_env(_https_url(tls_server), tmp_path / "trusted",
                                           CINNOX_CA_BUNDLE=str(tls_cert[0])))
    assert trusted.returncode == 0, trusted.stderr
    assert tls_server.forwarded > before
    assert _rows(tmp_path / "trusted", "SELECT count(*) FROM campaigns") == [(SIM["campaigns_per_day"],)]
