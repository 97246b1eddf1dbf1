"""CAMPAIGN_PII_MODE=hash covers the whole detail record: the redaction rule on tricky values, and real backfills
against a local API whose records carry phone numbers in failedReason, in unknown fields and under a `Recipient` key."""

from __future__ import annotations

import json
import os
import random
import secrets
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from campaign_pipeline import settings
from campaign_pipeline.model.pii import RecipientHasher

ROOT = Path(__file__).resolve().parents[2]
_SCRIPT = Path(sys.executable).with_name("campaign-pipeline")
CLI = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "campaign_pipeline.cli"]

SALT = f"salt-pii-{secrets.token_hex(16)}"
TOKEN = f"tok-pii-{secrets.token_hex(12)}"
APP_ID = "pii-app"
DAY = "2024-05-01"
HASHER = RecipientHasher(SALT)


def token(e164: str) -> str:
    return HASHER.hash_text(e164)


# --- the redaction rule on tricky values --------------------------------------------------------

HK = "+85291234567"


@pytest.mark.parametrize("written", [
    "+85291234567", "85291234567", "91234567", "9123 4567", "9123-4567", "9123.4567", "+852 9123 4567",
    "+852-9123-4567", "(852) 9123 4567", "+(852) 9123-4567", "852 9123 4567",
    "+" + "".join(chr(0xFF10 + int(d)) for d in "85291234567"),  # fullwidth digits
])
def test_redact_text_tokenizes_the_recipient_in_every_written_form(written):
    text = f"Error Code: 7061120 - {written} is not a WhatsApp user"
    redacted = HASHER.redact_text(text, recipient=HK)
    assert redacted == f"Error Code: 7061120 - {token(HK)} is not a WhatsApp user"


@pytest.mark.parametrize("text", [
    "Error Code: 7061120 - 360Dialog bad request",  # a 7-digit error code
    "Error Code: 3120410 - 360dialog whatsapp 24hr window error",
    "2024-05-01T10:00:00.123456+08:00",  # timestamps, with an offset
    "2024-05-01T10:00:00Z",
    "663186003207e62bbf500000",  # a hex id with long digit runs
    "07711aaa-3101-0224-acc9-1b996b6c5b74",
    "Reference 335523. Reply STOP",
    "order 12345678",  # 8 digits, not the recipient's
    "+852 12",  # "+" with fewer than 6 digits
])
def test_redact_text_keeps_numbers_that_are_not_phone_like(text):
    assert HASHER.redact_text(text, recipient=HK) == text


def test_redact_text_gives_any_plus_number_the_token_it_would_have_as_a_recipient():
    redacted = HASHER.redact_text("forwarded to +44 7700 900123 and +1 (415) 555-0100.", recipient=HK)
    assert redacted == f"forwarded to {token('+447700900123')} and {token('+14155550100')}."
    assert HASHER.redact_text("+85291234567", recipient=None) == token(HK)  # no recipient known: the + rule


def test_redact_text_misses_another_persons_number_without_plus_outside_a_phone_key():
    # The documented limit: a bare national number that is not the record's recipient looks like any id.
    assert HASHER.redact_text("also tried 98765432", recipient=HK) == "also tried 98765432"
    assert HASHER.redact_text("98765432", recipient=HK, phone_like=True) == token("+98765432")


def test_redact_detail_moves_any_casing_of_recipient_to_the_canonical_key():
    for key in ("recipient", "Recipient", "RECIPIENT", "rEcIpIeNt"):
        assert HASHER.redact_detail({"id": "c1", key: HK}) == {"id": "c1", "recipient": token(HK)}
    # the canonical key wins when it has a value; an empty one gives way to another casing
    assert HASHER.redact_detail({"recipient": "", "Recipient": 85291234567}) == {"recipient": token(HK)}
    assert HASHER.redact_detail({"Recipient": "+852 9123 4567", "recipient": HK}) == {"recipient": token(HK)}
    # two different numbers: the second is kept, as a token, under its own key
    other = "+85298765432"
    assert HASHER.redact_detail({"recipient": HK, "RECIPIENT": other}) == {
        "recipient": token(HK), "RECIPIENT": token(other)}
    # missing or unusable recipients stay rejectable and never in clear
    assert HASHER.redact_detail({"id": "c1", "Recipient": ""}) == {"id": "c1", "recipient": ""}
    bad = HASHER.redact_detail({"recipient": "call +852 9123 4567", "note": "9123 4567"})
    assert bad["recipient"].startswith("invalid:hmac:") and bad["note"] == token(HK)


def test_redact_detail_drops_content_in_any_casing():
    record = {"recipient": HK, "content": "Hi 9123 4567", "Content": "x", "CONTENT": None}
    assert HASHER.redact_detail(record) == {"recipient": token(HK)}


def test_redact_detail_covers_nested_fields_lists_keys_and_json_numbers():
    record = {
        "id": "c1", "recipient": HK, "numSMS": 2, "status": "Failed",
        "recipientInfo": {"msisdn": "85298765432", "alt": 85261234567, "count": 1234567, "country": "HK"},
        "contacts": [{"tel": "98765432"}, 85291234567, 7061120, {"+85291234567": "primary"}],
        "attempts": 123456789,  # a bare number under an ordinary key is not a phone
        "relay": 85291234567.0,
    }
    assert HASHER.redact_detail(record) == {
        "id": "c1", "recipient": token(HK), "numSMS": 2, "status": "Failed",
        "recipientInfo": {"msisdn": token("+85298765432"), "alt": token("+85261234567"), "count": token("+1234567"),
                          "country": "HK"},  # under a phone-like key, every digit run of 6+ is a number
        "contacts": [{"tel": token("+98765432")}, token(HK), 7061120, {token(HK): "primary"}],
        "attempts": 123456789,
        "relay": token(HK),
    }


def test_redact_detail_keeps_the_business_sender_number_but_not_its_copies():
    sender = {"phone": "+85230018888", "channelName": "ACME +85230018888"}
    record = {"recipient": HK, "sender": sender, "failedReason": "blocked by +85230018888"}
    assert HASHER.redact_detail(record) == {
        "recipient": token(HK),
        "sender": {"phone": "+85230018888", "channelName": f"ACME {token('+85230018888')}"},
        "failedReason": f"blocked by {token('+85230018888')}",
    }
    # the sender field still loses the recipient's own number
    assert HASHER.redact_detail({"recipient": HK, "sender": {"phone": HK}}) == {
        "recipient": token(HK), "sender": {"phone": token(HK)}}


def test_redact_detail_handles_non_objects_and_text_that_is_not_unicode():
    assert HASHER.redact_detail("+85291234567") == token(HK)
    assert HASHER.redact_detail([85291234567, "x"]) == [token(HK), "x"]
    broken = HASHER.redact_detail({"recipient": "+8529123\ud83d4567", "subject": "\ud83d +85291234567"})
    assert broken["recipient"].startswith("invalid:hmac:") and broken["subject"] == f"\ud83d {token(HK)}"


def test_redact_detail_fast_path_gives_the_same_record_as_the_full_walk():
    rng = random.Random(16)
    alphabet = list("0123456789" * 4) + list("+ -./()ab:{[") + ["\u00a0", "\u0663", "\n"]

    def text() -> str:
        return "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 24)))

    keys = ["id", "date", "sender", "recipient", "recipientCountry", "subject", "content", "numSMS", "status",
            "failedReason", "lastUpdatedDateTime"]
    walked_differently = 0
    for _ in range(5000):
        record = {}
        for key in rng.sample(keys, rng.randrange(1, len(keys))):
            if key == "sender":
                record[key] = {"phone": rng.choice(["+85230018888", text(), 85230018888]), "senderEID": text()}
            elif key == "recipient":
                record[key] = rng.choice([HK, HK[1:], int(HK[1:]), "9123 4567", text(), ""])
            else:
                record[key] = rng.choice([text(), text(), rng.randrange(10**12), f"x {HK} y", "call 9123-4567",
                                          "+85230018888", None, 1.5])
        fast, walked = HASHER.redact_detail(record), HASHER.redact_detail_walk(record)
        assert fast == walked and list(fast) == list(walked), record
        walked_differently += fast != {k: v for k, v in record.items() if k != "content"}
    assert walked_differently > 1000  # the fuzz really produced records that needed a token


# --- a local CINNOX API serving records with phone numbers where they should not be -----------------

WA_ID, SMS_ID = "66a1b2c3d4e5f60718293a4b", "66a1b2c3d4e5f60718293a4c"
SENDER_PHONE = "+85230018888"  # the business's own number: stays in clear (the scan's control)
SENT = "2024-05-01T10:00:00.000Z"
UPDATED = "2024-05-01T10:05:00.000Z"


@dataclass(frozen=True)
class Planted:
    e164: str
    country_code: str
    national_forms: tuple[str, ...]

    def needles(self) -> set[bytes]:
        national = self.e164[1 + len(self.country_code):]
        return {f.encode() for f in (self.e164, self.e164[1:], national, *self.national_forms)}


PLANTED = {
    "A": Planted("+85291234567", "852", ("9123 4567", "9123-4567")),  # under `Recipient`, in failedReason
    "B": Planted("+85261234567", "852", ("6123-4567", "6123 4567")),  # national in failedReason, msisdn number
    "C": Planted("+85251234567", "852", ("5123 4567",)),  # `RECIPIENT` as a JSON number, msisdn, nested key
    "D": Planted("+447700900123", "44", ("7700 900123", "07700 900123")),  # another person, in an unknown field
    "E": Planted("+85271234567", "852", ("7123 4567",)),  # a record rejected for its date
    "F": Planted("+6598765432", "65", ("9876 5432",)),  # SMS: `Recipient` with spaces, number in content
    "G": Planted("+6581234567", "65", ("8123 4567",)),  # SMS: `Content`, msisdn without +
}
NUMBER_NEEDLES = set().union(*(p.needles() for p in PLANTED.values()))
WA_SENDER = {"phone": SENDER_PHONE, "channelName": "ACME WhatsApp", "sourceName": "360dialog"}
SMS_SENDER = {"phone": SENDER_PHONE, "senderEID": "07711aaa-3101-0224-acc9-1b996b6c5b74"}


def _wa(status: str, failed_reason: str = "", **fields) -> dict:
    return {"id": WA_ID, "date": SENT, "sender": WA_SENDER, "subject": "May offer", "status": status,
            "failedReason": failed_reason, "lastUpdatedDateTime": UPDATED, **fields}


def _sms(**fields) -> dict:
    return {"id": SMS_ID, "date": SENT, "sender": SMS_SENDER, "recipientCountry": "SG", "numSMS": 1,
            "status": "Delivered", "carrierNetworkStatus": "Delivered", "lastUpdatedDateTime": UPDATED, **fields}


DETAILS = {
    WA_ID: [
        _wa("Failed", "Error Code: 7061120 - +85291234567 is not a WhatsApp user", Recipient="+85291234567",
            recipientInfo={"msisdn": "85291234567", "display": "9123 4567"}),
        _wa("Failed", "Error Code: 7061120 - 6123-4567 is not a WhatsApp user", recipient="+85261234567",
            recipientInfo={"msisdn": 85261234567}),
        _wa("Delivered", RECIPIENT=85251234567, note="forwarded to +44 7700 900123 (07700 900123)",
            recipientInfo={"msisdn": "+852 5123 4567", "byNumber": {"+85251234567": "primary"}}),
        {**_wa("Failed", "Error Code: 7061120 - +85271234567 is not a WhatsApp user", recipient="+85271234567"),
         "date": "not-a-date"},
    ],
    SMS_ID: [
        _sms(Recipient="+65 9876 5432", content="Hi! Call us back from +65 9876 5432 or 9876-5432."),
        _sms(recipient="+6581234567", Content="Your number 8123 4567 is registered",
             recipientInfo={"msisdn": "6581234567"}),
    ],
}
CAMPAIGNS = [
    {"id": WA_ID, "date": SENT, "campaignName": "May offer", "channel": "WhatsApp", "createdBy": "ops@acme.example",
     "sender": WA_SENDER, "subject": "May offer", "totalRecipients": 4, "delivered": 1, "read": 0, "replied": 0,
     "pending": 0, "failed": 3},
    {"id": SMS_ID, "date": SENT, "campaignName": "May SMS", "channel": "SMS", "createdBy": "ops@acme.example",
     "sender": SMS_SENDER, "totalRecipients": 2, "delivered": 2, "read": 0, "replied": 0, "pending": 0, "failed": 0},
]


def _parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value)


class _ApiHandler(BaseHTTPRequestHandler):
    """The two endpoints' JSON shape: ``{"code": 0, "result": [...]}`` paged by offset/limit, ending at an empty page."""

    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):
        pass

    def do_GET(self):
        url = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        if self.headers.get("Authorization") != f"Bearer {TOKEN}":
            return self._send(401, {"code": 6450401, "message": "unauthorized"})
        if url.path == settings.SUMMARY_PATH.format(app_id=APP_ID):
            start, end = _parse_time(query[settings.PARAM_START_AT]), _parse_time(query[settings.PARAM_END_AT])
            rows = [c for c in CAMPAIGNS if start <= _parse_time(c["date"]) < end]
        elif url.path == settings.DETAIL_PATH.format(app_id=APP_ID):
            rows = DETAILS.get(query[settings.PARAM_HISTORY_ID], [])
        else:
            return self._send(404, {"code": settings.CODE_METHOD_NOT_FOUND, "message": "not found"})
        offset, limit = int(query[settings.PARAM_OFFSET]), int(query[settings.PARAM_LIMIT])
        with self.server.lock:
            self.server.requests += 1
        self._send(200, {"code": settings.CODE_OK, "result": rows[offset:offset + limit]})

    def _send(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture(scope="module")
def api() -> Iterator[ThreadingHTTPServer]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _ApiHandler)
    server.daemon_threads = True
    server.lock, server.requests = threading.Lock(), 0
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


@dataclass(frozen=True)
class Run:
    data_dir: Path
    result: subprocess.CompletedProcess


def _backfill(api: ThreadingHTTPServer, data_dir: Path, **extra: str) -> Run:
    env = {k: v for k, v in os.environ.items() if k == "CAMPAIGN_LAST_RUN_FILE" or not k.startswith(("CINNOX_", "CAMPAIGN_", "DAGSTER_"))}
    env.update({
        "CAMPAIGN_SOURCE": "cinnox", "CINNOX_BASE_URL": f"http://127.0.0.1:{api.server_address[1]}",
        "CINNOX_APP_ID": APP_ID, "CINNOX_APP_TOKEN": TOKEN, "CINNOX_RATE_LIMIT_PER_MIN": "60000",
        "CAMPAIGN_DATA_DIR": str(data_dir), "CAMPAIGN_PARTITION_START": DAY, "CAMPAIGN_PARTITION_TZ": "UTC",
        "CAMPAIGN_REJECTED_THRESHOLD": "0.5", **extra,
    })
    result = subprocess.run([*CLI, "-v", "backfill", "--start", DAY, "--end", DAY], env=env, capture_output=True,
                            text=True, timeout=300, cwd=ROOT, check=False)
    return Run(data_dir, result)


@pytest.fixture(scope="module")
def hash_run(api, tmp_path_factory) -> Run:
    return _backfill(api, tmp_path_factory.mktemp("pii_hash") / "data", CAMPAIGN_PII_MODE="hash",
                     CAMPAIGN_PII_SALT=SALT)


@pytest.fixture(scope="module")
def raw_run(api, tmp_path_factory) -> Run:
    return _backfill(api, tmp_path_factory.mktemp("pii_raw") / "data")


# --- reading every byte a run left ----------------------------------------------------------------


def _parquet_contents(path: Path) -> Iterator[bytes]:
    yield repr(pq.read_table(path).to_pylist()).encode()
    metadata = pq.ParquetFile(path).metadata
    yield repr(metadata.metadata).encode()  # key-value metadata (the Arrow schema)
    for rg in range(metadata.num_row_groups):
        for col in range(metadata.num_columns):
            stats = metadata.row_group(rg).column(col).statistics
            if stats is not None and stats.has_min_max:
                yield repr((stats.min, stats.max)).encode()


def _duckdb_contents(path: Path) -> bytes:
    con = duckdb.connect(str(path), read_only=True)
    try:
        tables = con.execute("SELECT table_name FROM information_schema.tables WHERE table_type = 'BASE TABLE'")
        return b"\n".join(repr(con.execute(f'SELECT * FROM "{name}"').fetchall()).encode()
                          for (name,) in tables.fetchall())
    finally:
        con.close()


def contents(path: Path) -> Iterator[tuple[str, bytes]]:
    """(kind, bytes) of a file: its raw bytes, then its decoded content where it has a format we know."""
    yield "bytes", path.read_bytes()
    if path.suffix == ".zst":
        with pa.input_stream(str(path), compression="zstd") as stream:
            yield "landing", stream.read()
    elif path.suffix == ".parquet":
        for blob in _parquet_contents(path):
            yield "parquet", blob
    elif path.suffix == ".duckdb":
        yield "duckdb", _duckdb_contents(path)


def scan(run: Run, needles: set[bytes]) -> dict[tuple[str, str], set[bytes]]:
    """{(file or "output", kind): needles found} over every file of the data dir and the CLI's output."""
    found: dict[tuple[str, str], set[bytes]] = {}
    blobs = [(("output", "stdout+stderr"), (run.result.stdout + run.result.stderr).encode())]
    for path in sorted(p for p in run.data_dir.rglob("*") if p.is_file()):
        blobs.extend(((str(path.relative_to(run.data_dir)), kind), blob) for kind, blob in contents(path))
    for where, blob in blobs:
        hits = {needle for needle in needles if needle in blob}
        if hits:
            found.setdefault(where, set()).update(hits)
    return found


def rows(run: Run, sql: str) -> list[tuple]:
    con = duckdb.connect(str(run.data_dir / settings.WAREHOUSE_FILENAME), read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


# --- the runs ---------------------------------------------------------------------------------------


def test_hash_mode_backfill_types_the_records_under_their_tokens(hash_run, api):
    assert hash_run.result.returncode == 0, hash_run.result.stderr
    assert api.requests >= 4  # the summary, its empty page, two detail listings: the CLI really used this API
    wa = dict(rows(hash_run, "SELECT recipient, failed_reason FROM whatsapp_messages"))
    assert wa == {
        token("+85291234567"): f"Error Code: 7061120 - {token('+85291234567')} is not a WhatsApp user",
        token("+85261234567"): f"Error Code: 7061120 - {token('+85261234567')} is not a WhatsApp user",
        token("+85251234567"): None,
    }  # `Recipient` and `RECIPIENT` typed normally; the number in failedReason has the recipient's token
    assert rows(hash_run, "SELECT recipient, content, sender_phone FROM sms_messages ORDER BY recipient") == sorted(
        [(token("+6598765432"), None, SENDER_PHONE), (token("+6581234567"), None, SENDER_PHONE)])
    rejected = rows(hash_run, "SELECT reason, raw_record FROM rejected_records")
    assert len(rejected) == 1 and "date" in rejected[0][0]
    raw = json.loads(rejected[0][1])
    assert raw["recipient"] == token("+85271234567") and token("+85271234567") in raw["failedReason"]


def test_hash_mode_leaves_no_planted_number_in_any_output(hash_run):
    assert hash_run.result.returncode == 0, hash_run.result.stderr
    controls = {SENDER_PHONE.encode(), b"7061120", token("+85291234567").encode()}
    found_controls = scan(hash_run, controls)
    for kind in ("landing", "parquet", "duckdb"):  # the scan sees inside every kind of file
        assert {n for (_, k), hits in found_controls.items() if k == kind for n in hits} == controls, kind
    assert scan(hash_run, NUMBER_NEEDLES) == {}


def test_hash_mode_parquet_statistics_hold_tokens_not_numbers(hash_run):
    files = list((hash_run.data_dir / settings.LAKE_DIRNAME).rglob("*.parquet"))
    stats = {}
    for path in files:
        metadata = pq.ParquetFile(path).metadata
        for rg in range(metadata.num_row_groups):
            for col in range(metadata.num_columns):
                column = metadata.row_group(rg).column(col)
                if column.statistics is not None and column.statistics.has_min_max:
                    stats[(path.parent.parent.name, column.path_in_schema)] = (column.statistics.min,
                                                                              column.statistics.max)
    assert stats[("whatsapp_messages", "recipient")][0].startswith("hmac:")
    assert stats[("sms_messages", "recipient")][1].startswith("hmac:")
    text = repr(stats).encode()
    assert not [n for n in NUMBER_NEEDLES if n in text]


def test_raw_mode_keeps_the_planted_numbers_where_the_scan_looks(raw_run):
    # The control: without CAMPAIGN_PII_MODE=hash the same API puts every planted number into every kind of
    # file, so the scan above could have failed.
    assert raw_run.result.returncode == 0, raw_run.result.stderr
    served = json.dumps(DETAILS).encode()
    found = scan(raw_run, NUMBER_NEEDLES)
    by_kind: dict[str, set[bytes]] = {}
    for (_, kind), hits in found.items():
        by_kind.setdefault(kind, set()).update(hits)
    assert by_kind["landing"] == {n for n in NUMBER_NEEDLES if n in served}
    for name, planted in PLANTED.items():
        for kind in ("landing", "parquet", "duckdb"):
            assert planted.needles() & by_kind[kind], (name, kind)
    raw_records = " ".join(r for (r,) in rows(raw_run, "SELECT raw_record FROM rejected_records"))
    assert "+85291234567" in raw_records  # raw mode: `Recipient` is not the recipient, the record is rejected
    assert "output" not in {where for where, _ in found}  # numbers never reach the log, in either mode
