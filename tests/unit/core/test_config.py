"""Configuration: one declaration of the environment, read and validated once, one-line errors, no secret shown."""

from __future__ import annotations

import dataclasses
import random
import re
import threading
from datetime import date
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from campaign_pipeline import settings
from campaign_pipeline.cinnox.client import CinnoxClient, validate_base_url, validate_token
from campaign_pipeline.config import (
    DEFAULT_APP_KEY,
    SETTINGS,
    SOURCE_CINNOX,
    SOURCE_SIMULATOR,
    AppConfig,
    PipelineConfig,
    Setting,
    environment_variable_names,
    prepare_data_dir,
    recipient_hasher,
    settings_help,
)
from campaign_pipeline.errors import ConfigError

ROOT = Path(__file__).resolve().parents[3]
TOKEN = "tok-CONFIG-5ecret-value-42"
TOKEN_SG = "tok-SG-another-secret-77"
SALT = "salt-CONFIG-secret-value-99"
CINNOX = {"CINNOX_BASE_URL": "https://example.cinnox.com/", "CINNOX_APP_ID": "app-1", "CINNOX_APP_TOKEN": TOKEN}
SIMULATOR = {"CAMPAIGN_SOURCE": "simulator"}

REPO = Path(__file__).resolve().parents[3]


def error_of(env: dict[str, str]) -> str:
    """The message of the ConfigError ``from_env(env)`` raises (and checks it is one line)."""
    with pytest.raises(ConfigError) as info:
        PipelineConfig.from_env(env)
    message = str(info.value)
    assert "\n" not in message and message == " ".join(message.split())
    return message


# --- defaults ---------------------------------------------------------------------------------


def test_config_defaults_for_the_cinnox_source():
    config = PipelineConfig.from_env(CINNOX)
    assert config.source == SOURCE_CINNOX
    assert config.apps == (AppConfig(key=DEFAULT_APP_KEY, app_id="app-1", base_url="https://example.cinnox.com",
                                     app_token=TOKEN, sim_seed=7),)
    assert config.data_dir == REPO / "data" and config.lake_uri is None  # against the repository root
    assert config.lake_root == str(REPO / "data" / "lake")
    assert config.warehouse_path == REPO / "data" / "warehouse.duckdb"
    assert config.partition_start == date(2024, 1, 1) and config.partition_tz == "UTC"
    assert (config.lookback_days, config.fetch_workers) == (3, settings.DEFAULT_FETCH_WORKERS)
    assert config.rejected_threshold == 0.01
    assert (config.pii_mode, config.pii_salt) == ("raw", None)
    assert (config.s3_endpoint_url, config.s3_region, config.ca_bundle) == (None, None, None)
    assert (config.sim_campaigns_per_day, config.sim_recipients_per_campaign) == (8, 150)
    assert config.client_options() == {"rate_limit_per_min": 480.0, "ca_bundle": None, "read_timeout": 30.0,
                                       "request_deadline": 35.0, "max_response_mb": 50.0, "max_attempts": 6,
                                       "backoff_max_s": 30.0}
    assert recipient_hasher(config) is None


def test_config_simulator_source_needs_no_credentials_and_names_its_apps():
    config = PipelineConfig.from_env(SIMULATOR)
    assert config.source == SOURCE_SIMULATOR
    assert config.apps == (AppConfig(key="default", app_id="sim-app", base_url=None, app_token=None, sim_seed=7),)
    assert config.data_dir == REPO / "data" / "simulator"

    several = PipelineConfig.from_env({**SIMULATOR, "CAMPAIGN_APPS": "hk, SG", "CAMPAIGN_SIM_SEED": "40",
                                       "CAMPAIGN_SIM_CAMPAIGNS_PER_DAY": "0",
                                       "CAMPAIGN_SIM_RECIPIENTS_PER_CAMPAIGN": "12"})
    assert [(a.key, a.app_id, a.sim_seed, a.base_url, a.app_token) for a in several.apps] == [
        ("hk", "sim-hk", 40, None, None), ("sg", "sim-sg", 41, None, None)]
    assert (several.sim_campaigns_per_day, several.sim_recipients_per_campaign) == (0, 12)


def test_config_reads_every_value_it_is_given(tmp_path):
    bundle = tmp_path / "ca.pem"
    bundle.write_text("-----BEGIN CERTIFICATE-----\n")
    env = {**CINNOX, "CAMPAIGN_SOURCE": " CINNOX ", "CINNOX_CA_BUNDLE": str(bundle),
           "CINNOX_RATE_LIMIT_PER_MIN": "120.5", "CINNOX_READ_TIMEOUT_S": "2.5", "CINNOX_MAX_ATTEMPTS": "3",
           "CINNOX_REQUEST_DEADLINE_S": "4", "CINNOX_MAX_RESPONSE_MB": "0.5",
           "CINNOX_BACKOFF_MAX_S": "1e1", "CAMPAIGN_DATA_DIR": str(tmp_path / "d"),
           "CAMPAIGN_LAKE_URI": "s3://bucket/prefix/", "AWS_ENDPOINT_URL": "http://[::1]:9000",
           "AWS_DEFAULT_REGION": "eu-west-1", "CAMPAIGN_PARTITION_START": "2024-05-01",
           "CAMPAIGN_PARTITION_TZ": "Asia/Hong_Kong", "CAMPAIGN_LOOKBACK_DAYS": "5", "CAMPAIGN_FETCH_WORKERS": "4",
           "CAMPAIGN_REJECTED_THRESHOLD": "0.25", "CAMPAIGN_PII_MODE": "Hash", "CAMPAIGN_PII_SALT": SALT}
    config = PipelineConfig.from_env(env)
    assert config.ca_bundle == str(bundle)
    assert config.client_options() == {"rate_limit_per_min": 120.5, "ca_bundle": str(bundle), "read_timeout": 2.5,
                                       "request_deadline": 4.0, "max_response_mb": 0.5, "max_attempts": 3,
                                       "backoff_max_s": 10.0}
    assert config.data_dir == tmp_path / "d" and config.lake_root == "s3://bucket/prefix"
    assert (config.s3_endpoint_url, config.s3_region) == ("http://[::1]:9000", "eu-west-1")
    assert config.partition_start == date(2024, 5, 1) and config.partition_tz == "Asia/Hong_Kong"
    assert (config.lookback_days, config.fetch_workers, config.rejected_threshold) == (5, 4, 0.25)
    assert (config.pii_mode, config.pii_salt) == ("hash", SALT)
    assert recipient_hasher(config).hash_text("+85291234567").startswith("hmac:")
    assert PipelineConfig.from_env({**env, "AWS_REGION": "ap-east-1"}).s3_region == "ap-east-1"


def test_config_request_deadline_defaults_to_connect_plus_read_timeout_and_reaches_the_client():
    quick = PipelineConfig.from_env({**CINNOX, "CINNOX_READ_TIMEOUT_S": "2"})
    assert quick.request_deadline_s == settings.DEFAULT_CONNECT_TIMEOUT_S + 2
    client = CinnoxClient(quick.apps[0].base_url, quick.apps[0].app_id, quick.apps[0].app_token,
                          **quick.client_options())
    assert (client.request_deadline, client.max_response_bytes) == (7.0, 50 * 2**20)
    client.close()
    capped = PipelineConfig.from_env({**CINNOX, "CINNOX_REQUEST_DEADLINE_S": "9", "CINNOX_MAX_RESPONSE_MB": "0.25"})
    with CinnoxClient("https://example.cinnox.com", "app-1", TOKEN, **capped.client_options()) as client:
        assert (client.request_deadline, client.max_response_bytes) == (9.0, 2**18)
    for name in ("CINNOX_REQUEST_DEADLINE_S", "CINNOX_MAX_RESPONSE_MB"):
        assert error_of({**CINNOX, name: "0"}).startswith(f"{name}='0' is not a number of ")


def test_config_blank_values_count_as_unset():
    blank = {setting.name: " \t " for setting in SETTINGS}
    assert error_of(blank) == error_of({})
    config = PipelineConfig.from_env({**blank, **SIMULATOR})
    assert config == PipelineConfig.from_env(SIMULATOR)


def test_config_salt_is_ignored_without_hash_mode():
    assert PipelineConfig.from_env({**SIMULATOR, "CAMPAIGN_PII_SALT": SALT}).pii_salt is None


# --- one-line errors ----------------------------------------------------------------------------


def test_config_names_every_missing_cinnox_variable_in_one_message():
    expected = ("CINNOX_BASE_URL, CINNOX_APP_ID and CINNOX_APP_TOKEN are not set; set them (see .env.example) "
                "or use CAMPAIGN_SOURCE=simulator for the built-in simulator")
    assert error_of({}) == expected
    assert error_of({"CINNOX_APP_ID": "a", "CINNOX_BASE_URL": "https://x.example"}) == (
        "CINNOX_APP_TOKEN is not set; set it (see .env.example) or use CAMPAIGN_SOURCE=simulator for the "
        "built-in simulator")


BAD_VALUES = {
    "CAMPAIGN_SOURCE": ("real", "CAMPAIGN_SOURCE='real' is not one of cinnox, simulator"),
    "CINNOX_BASE_URL": ("ftp://example.com", ("CINNOX_BASE_URL must look like https://host[:port][/path-prefix]; "
                                              "the scheme must be http or https")),
    "CINNOX_APP_ID": ("a\tb", "CINNOX_APP_ID='a\\tb' contains control characters"),
    "CINNOX_CA_BUNDLE": ("/nonexistent/ca.pem", "CINNOX_CA_BUNDLE='/nonexistent/ca.pem' is not a readable file"),
    "CINNOX_RATE_LIMIT_PER_MIN": ("abc", ("CINNOX_RATE_LIMIT_PER_MIN='abc' is not a number of requests per minute "
                                          "between 1 and 1000000")),
    "CINNOX_READ_TIMEOUT_S": ("0", "CINNOX_READ_TIMEOUT_S='0' is not a number of seconds above 0 and up to 3600"),
    "CINNOX_REQUEST_DEADLINE_S": ("-1", ("CINNOX_REQUEST_DEADLINE_S='-1' is not a number of seconds above 0 and up "
                                         "to 3600")),
    "CINNOX_MAX_RESPONSE_MB": ("50MB", "CINNOX_MAX_RESPONSE_MB='50MB' is not a number of megabytes above 0 and up to 4096"),
    "CINNOX_MAX_ATTEMPTS": ("2.5", "CINNOX_MAX_ATTEMPTS='2.5' is not a whole number between 1 and 100"),
    "CINNOX_BACKOFF_MAX_S": ("nan", "CINNOX_BACKOFF_MAX_S='nan' is not a number of seconds above 0 and up to 3600"),
    "CAMPAIGN_DATA_DIR": ("~no-such-user-here/data",
                          ("CAMPAIGN_DATA_DIR='~no-such-user-here/data' starts with ~ but that home directory is "
                           "unknown")),
    "CAMPAIGN_LAKE_URI": ("gs://bucket", ("CAMPAIGN_LAKE_URI='gs://bucket' is neither a local path nor "
                                          "s3://bucket/prefix")),
    "AWS_ENDPOINT_URL": ("minio:9000", ("AWS_ENDPOINT_URL must look like https://host[:port][/path-prefix]; "
                                        "the scheme must be http or https")),
    "AWS_REGION": ("eu\x01west", "AWS_REGION='eu\\x01west' contains control characters"),
    "CAMPAIGN_PARTITION_START": ("2024-02-30", "CAMPAIGN_PARTITION_START='2024-02-30' is not a date; use YYYY-MM-DD"),
    "CAMPAIGN_PARTITION_TZ": ("Mars/Olympus", ("CAMPAIGN_PARTITION_TZ='Mars/Olympus' is not a known IANA timezone; "
                                               "use e.g. 'UTC' or 'Asia/Hong_Kong'")),
    "CAMPAIGN_LOOKBACK_DAYS": ("-1", "CAMPAIGN_LOOKBACK_DAYS='-1' is not a whole number of days between 1 and 366"),
    "CAMPAIGN_FETCH_WORKERS": ("many", "CAMPAIGN_FETCH_WORKERS='many' is not a whole number between 1 and 64"),
    "CAMPAIGN_REJECTED_THRESHOLD": ("x", "CAMPAIGN_REJECTED_THRESHOLD='x' is not a number between 0 and 1"),
    "CAMPAIGN_PII_MODE": ("sha1", "CAMPAIGN_PII_MODE='sha1' is not one of raw, hash"),
    "CAMPAIGN_SIM_SEED": ("-3", "CAMPAIGN_SIM_SEED='-3' is not a whole number of at least 0"),
    "CAMPAIGN_SIM_CAMPAIGNS_PER_DAY": ("10001", ("CAMPAIGN_SIM_CAMPAIGNS_PER_DAY='10001' is not a whole number "
                                                 "between 0 and 10000")),
    "CAMPAIGN_SIM_RECIPIENTS_PER_CAMPAIGN": ("0", ("CAMPAIGN_SIM_RECIPIENTS_PER_CAMPAIGN='0' is not a whole number "
                                                   "between 1 and 1000000")),
}


@pytest.mark.parametrize("name", sorted(BAD_VALUES))
def test_config_bad_value_gives_its_one_line_message(name):
    value, expected = BAD_VALUES[name]
    assert error_of({**CINNOX, name: value}) == expected


def test_config_reports_every_bad_value_at_once_in_declaration_order():
    env = {**CINNOX, **{name: value for name, (value, _) in BAD_VALUES.items() if name != "CAMPAIGN_SOURCE"}}
    order = [setting.name for setting in SETTINGS]
    expected = [BAD_VALUES[name][1] for name in sorted(env, key=order.index) if name in BAD_VALUES]
    assert error_of(env) == "; ".join(expected)


@pytest.mark.parametrize(("name", "value", "reason"), [
    ("CINNOX_RATE_LIMIT_PER_MIN", "0", "is not a number of requests per minute"),
    ("CINNOX_RATE_LIMIT_PER_MIN", "inf", "is not a number of requests per minute"),
    ("CINNOX_RATE_LIMIT_PER_MIN", "1_000", "is not a number of requests per minute"),
    ("CINNOX_MAX_ATTEMPTS", "٣", "is not a whole number"),  # an Arabic-Indic three: int() would take it
    ("CINNOX_MAX_ATTEMPTS", "9" * 5000, "is not a whole number"),
    ("CINNOX_READ_TIMEOUT_S", "1e999", "is not a number of seconds"),
    ("CAMPAIGN_REJECTED_THRESHOLD", "1.01", "is not a number between 0 and 1"),
    ("CAMPAIGN_PARTITION_START", "20240501", "is not a date"),  # date.fromisoformat would take it
    ("CAMPAIGN_PARTITION_START", "2024-W18-3", "is not a date"),
    ("CAMPAIGN_PARTITION_TZ", "America", "is not a known IANA timezone"),  # a tzdata directory
    ("CAMPAIGN_PARTITION_TZ", "A" * 5000, "is not a known IANA timezone"),  # a name too long for the file system
    ("CINNOX_CA_BUNDLE", "c" * 5000, "is not a readable file"),
    ("CAMPAIGN_LAKE_URI", "s3://", "needs a bucket"),
    ("CAMPAIGN_LAKE_URI", "s3:///", "needs a bucket"),
    ("CAMPAIGN_LAKE_URI", "s3:/bucket", "is neither a local path nor s3://bucket/prefix"),
    ("CAMPAIGN_LAKE_URI", "s3://Bad_Bucket/x", "valid S3 bucket name"),
    ("CAMPAIGN_DATA_DIR", "data\x00dir", "holds bytes that are not text"),
    ("CAMPAIGN_DATA_DIR", "data-\udcff", "holds bytes that are not text"),  # undecodable byte (surrogateescape)
    ("CAMPAIGN_APPS", "hk,S-G", "invalid app key 's-g'"),
    ("CAMPAIGN_APPS", "hk,default", "invalid app key 'default'"),
    ("CAMPAIGN_APPS", "hk,hk", "lists an app twice"),
    ("CAMPAIGN_APPS", ",,", "lists no app"),
])
def test_config_refuses_values_a_bare_parser_would_mangle(name, value, reason):
    message = error_of({**CINNOX, name: value})
    assert message.startswith(name) and reason in message
    assert len(message) < 300  # a long value is quoted cut short


def test_config_base_url_errors_never_quote_the_url():
    message = error_of({**CINNOX, "CINNOX_BASE_URL": "https://user:pw-SECRET@example.com"})
    assert message.startswith("CINNOX_BASE_URL must look like") and "user:password@" in message
    assert "pw-SECRET" not in message


@pytest.mark.parametrize(("token", "reason"), [
    ("tok en-12345", "contains whitespace, control or non-ASCII characters"),
    ("token-\x1b[31m-12345", "contains whitespace, control or non-ASCII characters"),
    ("token-ünïcode-12345", "contains whitespace, control or non-ASCII characters"),
    ("tok-1\n2345678", "contains whitespace, control or non-ASCII characters"),
    ("abc1234", "is shorter than 8 characters"),
])
def test_config_refuses_a_malformed_token_without_quoting_it(token, reason):
    message = error_of({**CINNOX, "CINNOX_APP_TOKEN": token, "CAMPAIGN_LOOKBACK_DAYS": "zero"})
    assert message.startswith(f"CINNOX_APP_TOKEN {reason}")
    assert message.endswith("CAMPAIGN_LOOKBACK_DAYS='zero' is not a whole number of days between 1 and 366")
    assert token not in message and token.strip() not in message
    with pytest.raises(ConfigError) as info:  # the client refuses it the same way, with the same words
        CinnoxClient("https://example.cinnox.com", "app", token)
    assert str(info.value).startswith(f"CINNOX_APP_TOKEN {reason}") and token not in str(info.value)


def test_config_simulator_token_is_long_enough():
    assert validate_token("sim-token") == "sim-token"


def test_config_hash_mode_needs_a_salt_and_hides_it():
    assert error_of({**CINNOX, "CAMPAIGN_PII_MODE": "hash"}) == (
        "CAMPAIGN_PII_SALT is required when CAMPAIGN_PII_MODE=hash; set it to a long random secret")
    message = error_of({**CINNOX, "CAMPAIGN_PII_MODE": "hash", "CAMPAIGN_PII_SALT": SALT + "\x07"})
    assert message == "CAMPAIGN_PII_SALT contains control characters; set it without them" and SALT not in message


def test_config_never_quotes_a_secret_even_when_pasted_into_another_variable():
    message = error_of({**CINNOX, "CAMPAIGN_PII_MODE": "hash", "CAMPAIGN_PII_SALT": SALT,
                        "CINNOX_RATE_LIMIT_PER_MIN": TOKEN, "CAMPAIGN_PARTITION_TZ": SALT})
    assert TOKEN not in message and SALT not in message
    assert message.startswith("CINNOX_RATE_LIMIT_PER_MIN='<redacted>' is not a number")


def test_config_repr_never_shows_a_secret():
    config = PipelineConfig.from_env({**CINNOX, "CAMPAIGN_APPS": "hk,sg", "CINNOX_HK_BASE_URL": "https://hk.example",
                                      "CINNOX_HK_APP_ID": "hk", "CINNOX_HK_APP_TOKEN": TOKEN,
                                      "CINNOX_SG_BASE_URL": "https://sg.example", "CINNOX_SG_APP_ID": "sg",
                                      "CINNOX_SG_APP_TOKEN": TOKEN_SG, "CAMPAIGN_PII_MODE": "hash",
                                      "CAMPAIGN_PII_SALT": SALT})
    assert config.app("sg").app_token == TOKEN_SG and config.pii_salt == SALT
    shown = repr(config) + str(config) + repr(config.apps) + repr(config.app("hk")) + str(config.client_options())
    for secret in (TOKEN, TOKEN_SG, SALT):
        assert secret not in shown


ODD_STRINGS = ["", " ", "\t\n", "0", "-0", "+1", "1e309", "-1e-309", "nan", "NaN", "inf", "-inf", "1_0", "0x10",
               "١٢", "²", "½", "True", "None", "null", "[]", "{}", "'", '"', "\\", "%s", "{0}", "{names}", "$HOME",
               "~", "~/x", "~root", "~nobody-xyz", "/", "//", ".", "..", "../../etc/passwd", "\x00", "a\x00b",
               "\udcff", "\ud800x", "\u200b", "\ufeff", "é", "日本", "🙂", "a" * 300, "a/" * 3000, "9" * 5000,
               "http://", "https://[::1", "https://[::1]:0", "http://[::1]:65536", "http://h:-1", "s3://", "s3:///a",
               "file:///etc", "2024-02-29", "2023-02-29", "0000-01-01", "9999-12-31", "UTC", "posix/UTC", "Factory",
               "America", "hk,", ",", "hk,hk", "default", "HASH", "simulator", "cinnox"]


def _random_strings(count: int) -> list[str]:
    rng = random.Random(20240501)
    alphabet = [chr(c) for c in range(0x250)] + ["\udcff", "🙂", "\u2028", "\x85", ":", "/", "[", "]", "@", "."]
    return ["".join(rng.choice(alphabet) for _ in range(rng.randrange(1, 24))) for _ in range(count)]


def test_config_never_raises_anything_but_config_error_for_odd_strings():
    names = environment_variable_names(("hk",))
    bases = [{}, SIMULATOR, CINNOX, {**CINNOX, "CAMPAIGN_PII_MODE": "hash"}, {**SIMULATOR, "CAMPAIGN_APPS": "hk"}]
    seen_errors = 0
    for index, value in enumerate(ODD_STRINGS + _random_strings(400)):
        for base in bases:
            for name in names if index < len(ODD_STRINGS) else names[index % len(names):][:3]:
                env = {**base, name: value}
                try:
                    config = PipelineConfig.from_env(env)
                except ConfigError as error:
                    seen_errors += 1
                    message = str(error)
                    assert message and "\n" not in message and "\r" not in message, (name, value)
                    assert TOKEN not in message
                else:
                    assert isinstance(config, PipelineConfig)
    assert seen_errors > 1000  # the loop really exercised the error paths


def test_config_validators_never_raise_anything_but_config_error():
    for value in ODD_STRINGS + _random_strings(2000):
        for validator in (validate_base_url, validate_token):
            try:
                validator(value)
            except ConfigError as error:
                assert "\n" not in str(error)


# --- base URLs: config and client agree ---------------------------------------------------------

BASE_URLS = [
    ("http://[::1]:8765", "http://[::1]:8765"),
    ("https://[2001:db8::1]/prefix/", "https://[2001:db8::1]/prefix"),
    ("http://127.0.0.1:1", "http://127.0.0.1:1"),
    ("https://example.cinnox.com:65535/v/", "https://example.cinnox.com:65535/v"),
    ("https://bücher.example", "https://bücher.example"),
    ("http://[::1]:0", None),
    ("http://[::1]:65536", None),
    ("http://[::1", None),
    ("http://[not-an-ip]:80", None),
    ("https://host:", None),
    ("https://host:8o", None),
    ("https://user@host", None),
    ("https://host/?a=1", None),
    ("https://host/#frag", None),
    ("https://host/?", None),
    ("https://ho st", None),
    ("https://ho\nst", None),  # urlsplit would silently drop the newline
    ("https://host/a b", None),
    ("ftp://host", None),
    ("host:8080", None),
    ("//host", None),
    ("https://", None),
    ("https://ex%41mple.com", None),
]


@pytest.mark.parametrize(("url", "normalized"), BASE_URLS)
def test_base_url_is_accepted_identically_by_config_and_client(url, normalized):
    env = {**CINNOX, "CINNOX_BASE_URL": url}
    if normalized is None:
        message = error_of(env)
        assert message.startswith("CINNOX_BASE_URL must look like https://host[:port][/path-prefix]; ")
        with pytest.raises(ConfigError) as info:
            CinnoxClient(url, "app", TOKEN)
        assert str(info.value) == message
    else:
        assert PipelineConfig.from_env(env).apps[0].base_url == normalized
        with CinnoxClient(url, "app", TOKEN) as client:
            assert client.base_url == normalized


def test_base_url_ipv6_literal_reaches_a_server_on_ipv6_loopback():
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            body = b'{"code": 0, "result": []}'
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    class Server6(ThreadingHTTPServer):
        address_family = __import__("socket").AF_INET6

    try:
        server = Server6(("::1", 0), Handler)
    except OSError:
        pytest.skip("no IPv6 loopback here")
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        env = {**CINNOX, "CINNOX_BASE_URL": f"http://[::1]:{server.server_address[1]}"}
        config = PipelineConfig.from_env(env)
        app = config.apps[0]
        with CinnoxClient(app.base_url, app.app_id, app.app_token, **config.client_options()) as client:
            pages = list(client.iter_detail_pages("h1"))
    finally:
        server.shutdown()
        server.server_close()
    assert [page.records for page in pages] == [[]]


# --- several apps -------------------------------------------------------------------------------


def test_config_campaign_apps_expands_the_per_app_variables():
    env = {**CINNOX, "CAMPAIGN_APPS": "hk,sg", "CAMPAIGN_SIM_SEED": "3",
           "CINNOX_HK_BASE_URL": "https://hk.example/", "CINNOX_HK_APP_ID": "app-hk", "CINNOX_HK_APP_TOKEN": TOKEN,
           "CINNOX_SG_BASE_URL": "http://[::1]:8765", "CINNOX_SG_APP_ID": "app-sg", "CINNOX_SG_APP_TOKEN": TOKEN_SG}
    config = PipelineConfig.from_env(env)
    assert config.apps == (
        AppConfig(key="hk", app_id="app-hk", base_url="https://hk.example", app_token=TOKEN, sim_seed=3),
        AppConfig(key="sg", app_id="app-sg", base_url="http://[::1]:8765", app_token=TOKEN_SG, sim_seed=4),
    )
    assert config.app("sg") is config.apps[1]
    with pytest.raises(ConfigError, match="no CINNOX app 'default' is configured; the apps are hk, sg"):
        config.app(DEFAULT_APP_KEY)

    # the plain CINNOX_* variables are not read with CAMPAIGN_APPS: a bad one there is no problem
    assert PipelineConfig.from_env({**env, "CINNOX_BASE_URL": "nope", "CINNOX_APP_TOKEN": "x"}) == config

    missing = {k: v for k, v in env.items() if k not in ("CINNOX_SG_APP_TOKEN", "CINNOX_HK_BASE_URL")}
    assert error_of({**missing, "CINNOX_SG_BASE_URL": "ftp://sg", "CINNOX_HK_APP_TOKEN": "short"}) == (
        "CINNOX_HK_BASE_URL and CINNOX_SG_APP_TOKEN are not set; set them (see .env.example) or use "
        "CAMPAIGN_SOURCE=simulator for the built-in simulator; "
        "CINNOX_SG_BASE_URL must look like https://host[:port][/path-prefix]; the scheme must be http or https; "
        "CINNOX_HK_APP_TOKEN is shorter than 8 characters, too short to be an App Token; paste the whole App Token "
        "from the CINNOX dashboard")


def test_config_bad_campaign_apps_is_reported_with_the_other_problems():
    message = error_of({**CINNOX, "CAMPAIGN_APPS": "hk,S-G", "CAMPAIGN_FETCH_WORKERS": "0"})
    assert message == ("CAMPAIGN_APPS has an invalid app key 's-g'; use short names like 'hk,sg' (a-z, 0-9, _); "
                       "CAMPAIGN_FETCH_WORKERS='0' is not a whole number between 1 and 64")


# --- the declaration ------------------------------------------------------------------------------


def test_declaration_fills_every_config_field_exactly_once():
    names = [setting.name for setting in SETTINGS]
    assert len(names) == len(set(names))
    global_attrs = [s.attr for s in SETTINGS if s.attr and not s.per_app]
    app_attrs = [s.attr for s in SETTINGS if s.per_app]
    assert sorted(global_attrs + ["apps"]) == sorted(f.name for f in dataclasses.fields(PipelineConfig))
    assert sorted(app_attrs + ["key", "sim_seed"]) == sorted(f.name for f in dataclasses.fields(AppConfig))
    for index, setting in enumerate(SETTINGS):
        assert isinstance(setting, Setting) and setting.help, setting.name
        if setting.required_if is not None:  # its condition is read before it
            assert setting.required_if[0] in names[:index], setting.name
        if setting.per_app:  # the app keys are read before any per-app variable
            assert "CAMPAIGN_APPS" in names[:index], setting.name
    assert {s.name for s in SETTINGS if s.secret} == {"CINNOX_APP_TOKEN", "CAMPAIGN_PII_SALT", "CAMPAIGN_ALERT_WEBHOOK_URL",
                                                       "CAMPAIGN_WAREHOUSE_URI"}
    secret_fields = {f.name for f in dataclasses.fields(PipelineConfig) + dataclasses.fields(AppConfig) if not f.repr}
    assert secret_fields == {s.attr for s in SETTINGS if s.secret}


def test_environment_variable_names_cover_every_setting_and_app():
    assert environment_variable_names() == [setting.name for setting in SETTINGS]
    with_apps = environment_variable_names(("hk", "sg"))
    assert {"CINNOX_HK_BASE_URL", "CINNOX_SG_APP_ID", "CINNOX_SG_APP_TOKEN", "CINNOX_APP_TOKEN",
            "CAMPAIGN_REJECTED_THRESHOLD", "AWS_DEFAULT_REGION"} <= set(with_apps)
    assert len(with_apps) == len(SETTINGS) + 2 * 3 and len(set(with_apps)) == len(with_apps)


def test_settings_help_lists_every_variable_with_its_default():
    lines = settings_help().splitlines()
    assert lines[0].split() == ["VARIABLE", "DEFAULT", "MEANING"]
    by_name = {line.split()[0]: line for line in lines[1:]}
    assert list(by_name) == [setting.name for setting in SETTINGS]
    assert "  480  " in by_name["CINNOX_RATE_LIMIT_PER_MIN"]
    assert "5 + CINNOX_READ_TIMEOUT_S (35)" in by_name["CINNOX_REQUEST_DEADLINE_S"]
    assert "  50  " in by_name["CINNOX_MAX_RESPONSE_MB"]
    assert "CINNOX_<KEY>_APP_TOKEN" in by_name["CINNOX_APP_TOKEN"] and "[secret]" in by_name["CINNOX_APP_TOKEN"]
    assert "(required when CAMPAIGN_PII_MODE=hash)" in by_name["CAMPAIGN_PII_SALT"]
    assert "./data/simulator for the simulator" in by_name["CAMPAIGN_DATA_DIR"]


def test_env_example_mentions_every_variable_and_its_values_are_valid():
    text = (ROOT / ".env.example").read_text()
    mentioned = set(re.findall(r"\b[A-Z][A-Z0-9_]+(?==)", text))
    assert set(environment_variable_names(("hk",))) <= mentioned
    assignments = dict(re.findall(r"^([A-Z][A-Z0-9_]+)=(.*)$", text, flags=re.MULTILINE))
    assert {"CAMPAIGN_SOURCE", "CINNOX_APP_TOKEN", "CAMPAIGN_DATA_DIR"} <= set(assignments)
    config = PipelineConfig.from_env(assignments)
    assert config.apps[0].app_token == assignments["CINNOX_APP_TOKEN"]
    commented = dict(re.findall(r"^# ([A-Z][A-Z0-9_]+)=(\S*)", text, flags=re.MULTILINE))
    for name in ("CAMPAIGN_FETCH_WORKERS", "CAMPAIGN_LAKE_URI", "AWS_ENDPOINT_URL", "AWS_REGION", "CAMPAIGN_SIM_SEED",
                 "CAMPAIGN_SIM_CAMPAIGNS_PER_DAY", "CAMPAIGN_SIM_RECIPIENTS_PER_CAMPAIGN", "CAMPAIGN_PII_SALT"):
        PipelineConfig.from_env({**assignments, name: commented[name]})  # the examples are valid values too


# --- the data dir -----------------------------------------------------------------------------------


def test_prepare_data_dir_records_source_and_pii_mode_and_refuses_a_mix(tmp_path):
    data_dir = tmp_path / "data"
    simulated = PipelineConfig.from_env({**SIMULATOR, "CAMPAIGN_DATA_DIR": str(data_dir)})
    prepare_data_dir(simulated)
    prepare_data_dir(simulated)  # the same source again is fine
    assert (data_dir / ".campaign_source").read_text() == "simulator\n"
    assert (data_dir / ".campaign_pii_mode").read_text() == "raw\n"
    real = PipelineConfig.from_env({**CINNOX, "CAMPAIGN_DATA_DIR": str(data_dir)})
    with pytest.raises(ConfigError, match="holds CAMPAIGN_SOURCE=simulator data but CAMPAIGN_SOURCE=cinnox"):
        prepare_data_dir(real)
    (tmp_path / "file").write_text("")
    under_a_file = PipelineConfig.from_env({**SIMULATOR, "CAMPAIGN_DATA_DIR": str(tmp_path / "file" / "d")})
    with pytest.raises(ConfigError, match="is not writable"):
        prepare_data_dir(under_a_file)


def test_from_env_reads_os_environ_by_default(monkeypatch):
    for name in environment_variable_names():
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CAMPAIGN_SOURCE", "simulator")
    monkeypatch.setenv("CAMPAIGN_LOOKBACK_DAYS", "9")
    assert PipelineConfig.from_env().lookback_days == 9


def test_config_refuses_two_apps_with_the_same_app_id():
    env = {"CAMPAIGN_APPS": "hk,sg"}
    for key in ("HK", "SG"):
        env.update({f"CINNOX_{key}_BASE_URL": "https://example.cinnox.com", f"CINNOX_{key}_APP_ID": "same-app",
                    f"CINNOX_{key}_APP_TOKEN": f"token-{key.lower()}-0123456789"})
    with pytest.raises(ConfigError) as raised:
        PipelineConfig.from_env(env)
    assert str(raised.value) == ("CINNOX_HK_APP_ID and CINNOX_SG_APP_ID name the same App ID; "
                                 "each app in CAMPAIGN_APPS needs its own")
    env["CINNOX_SG_APP_ID"] = "other-app"
    assert [app.app_id for app in PipelineConfig.from_env(env).apps] == ["same-app", "other-app"]
