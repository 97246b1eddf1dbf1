"""Pipeline configuration: every environment variable declared once, read once, validated once.

:data:`SETTINGS` is the one declaration: for each variable its name, parser (type and validation),
default, help text and whether it is a secret. :meth:`PipelineConfig.from_env` reads the
environment through it and reports every bad or missing value at once, in one one-line
:class:`~campaign_pipeline.errors.ConfigError` that never repeats a secret. The CLI, the Dagster
code location and the docs (:func:`settings_help`, :func:`environment_variable_names`) all use
the same declaration, so they cannot disagree. ``settings_help()`` prints the table; in short::

    CAMPAIGN_SOURCE           cinnox (default) | simulator
    CINNOX_BASE_URL           e.g. https://example.cinnox.com   (required for cinnox)
    CINNOX_APP_ID             the app's id                       (required for cinnox)
    CINNOX_APP_TOKEN          the app's token, a secret          (required for cinnox)
    CAMPAIGN_APPS             optional: several CINNOX apps, e.g. "hk,sg"; app K then reads
                              CINNOX_K_BASE_URL, CINNOX_K_APP_ID, CINNOX_K_APP_TOKEN (K upper-cased)
    CINNOX_CA_BUNDLE, CINNOX_RATE_LIMIT_PER_MIN, CINNOX_READ_TIMEOUT_S, CINNOX_REQUEST_DEADLINE_S,
    CINNOX_MAX_RESPONSE_MB, CINNOX_MAX_ATTEMPTS, CINNOX_BACKOFF_MAX_S
                              the HTTP client
    CAMPAIGN_DATA_DIR, CAMPAIGN_LAKE_URI, AWS_ENDPOINT_URL, AWS_REGION (or AWS_DEFAULT_REGION)
                              where the data lands
    CAMPAIGN_PARTITION_START, CAMPAIGN_PARTITION_TZ, CAMPAIGN_LOOKBACK_DAYS, CAMPAIGN_FETCH_WORKERS,
    CAMPAIGN_REJECTED_THRESHOLD, CAMPAIGN_PII_MODE, CAMPAIGN_PII_SALT (a secret)
    CAMPAIGN_SIM_SEED, CAMPAIGN_SIM_CAMPAIGNS_PER_DAY, CAMPAIGN_SIM_RECIPIENTS_PER_CAMPAIGN
                              the built-in simulator (CAMPAIGN_SOURCE=simulator)

An empty or whitespace-only value counts as unset; values are stripped. Nothing here reads the
environment at import time, and nothing here imports Dagster.
"""

from __future__ import annotations

import math
import os
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

from campaign_pipeline import settings
from campaign_pipeline.cinnox.client import validate_base_url, validate_token
from campaign_pipeline.errors import ConfigError
from campaign_pipeline.model.pii import PII_MODE_HASH, PII_MODE_RAW, PII_MODES, RecipientHasher
from campaign_pipeline.model.windows import load_timezone
from campaign_pipeline.storage import locations

SOURCE_CINNOX = "cinnox"
SOURCE_SIMULATOR = "simulator"
SOURCES = (SOURCE_CINNOX, SOURCE_SIMULATOR)
SOURCE_MARKER = settings.SOURCE_MARKER
PII_MARKER = ".campaign_pii_mode"
TZ_MARKER = ".campaign_partition_tz"
DEFAULT_APP_KEY = "default"
_APP_KEY = re.compile(r"[a-z][a-z0-9_]{0,30}")
_INTEGER = re.compile(r"[+-]?[0-9]{1,19}")
_DECIMAL = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]{1,3})?")
_ISO_DAY = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_SHOWN_CHARS = 60  # a bad value is quoted in the message up to this many characters


class _Invalid(ValueError):
    """Raised by a parser: the value is wrong for the reason given (e.g. "is not a date")."""


# --------------------------------------------------------------------------------------------
# The declaration
# --------------------------------------------------------------------------------------------

Parser = Callable[[str, str], Any]
"""``parser(text, variable)``: the value of the stripped, non-empty ``text`` of ``variable``.

Raises :class:`_Invalid` with a reason the message appends to ``VARIABLE='value'`` (or to the bare
name for a secret), or :class:`ConfigError` with the whole message."""


@dataclass(frozen=True)
class Setting:
    """One environment variable: its name, parser, default, help text and whether it is a secret.

    Attributes:
        name: the variable, e.g. ``CINNOX_RATE_LIMIT_PER_MIN``. For a per-app setting, the default
            app's name (``CINNOX_BASE_URL``); app ``K`` of ``CAMPAIGN_APPS`` reads
            :meth:`variable` ``("k")`` = ``CINNOX_K_BASE_URL``.
        parser: see :data:`Parser`; it is also the validation.
        default: the value when the variable is unset; a callable gets the values read so far
            (by name) and returns it.
        help: one line on what the variable means.
        secret: never quoted in a message or a ``repr``.
        attr: the :class:`PipelineConfig` field it fills (:class:`AppConfig` for a per-app
            setting); ``None`` when it only feeds another one.
        per_app: read once per app of ``CAMPAIGN_APPS``.
        required_if: ``(other setting, value)``: the variable is read, and must be set, only when
            that setting has that value; it is ignored otherwise.
        missing: the message when it is required and unset. ``{names}`` lists every such variable
            sharing this text; ``{is}`` and ``{it}`` agree with how many there are.
        shown_default: the default as the docs show it, when ``default`` is a callable or
            machine-dependent.
    """

    name: str
    parser: Parser
    default: Any = None
    help: str = ""
    secret: bool = False
    attr: str | None = None
    per_app: bool = False
    required_if: tuple[str, str] | None = None
    missing: str = "{names} {is} not set; set {it} (see .env.example)"
    shown_default: str | None = None

    def variable(self, app_key: str = DEFAULT_APP_KEY) -> str:
        """The environment variable of this setting for app ``app_key``."""
        if not self.per_app:
            return self.name
        return app_env_prefix(app_key) + self.name.removeprefix("CINNOX_")

    @property
    def default_text(self) -> str:
        """The default as documentation shows it."""
        if self.shown_default is not None:
            return self.shown_default
        if self.required_if is not None:
            return f"(required when {self.required_if[0]}={self.required_if[1]})"
        return "unset" if self.default is None else str(self.default)


# -- parsers ---------------------------------------------------------------------------------


def _choice(*options: str) -> Parser:
    """Case-insensitive choice among ``options``; the lower-cased option is the value."""

    def parse(text: str, variable: str) -> str:
        value = text.lower()
        if value not in options:
            raise _Invalid(f"is not one of {', '.join(options)}")
        return value

    return parse


def _number(low: float, high: float, description: str, *, integer: bool = False,
            low_open: bool = False) -> Parser:
    """A plain decimal (``integer``: whole) number in ``[low, high]`` (``(low, high]`` with
    ``low_open``); anything else is "not <description>"."""

    def parse(text: str, variable: str) -> int | float:
        pattern = _INTEGER if integer else _DECIMAL
        if not pattern.fullmatch(text):
            raise _Invalid(f"is not {description}")
        number = int(text) if integer else float(text)
        too_low = number <= low if low_open else number < low
        if not math.isfinite(number) or too_low or number > high:
            raise _Invalid(f"is not {description}")
        return number

    return parse


def _day(text: str, variable: str) -> date:
    if not _ISO_DAY.fullmatch(text):
        raise _Invalid("is not a date; use YYYY-MM-DD")
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise _Invalid("is not a date; use YYYY-MM-DD") from None


def _timezone(text: str, variable: str) -> str:
    try:
        load_timezone(text)
    except (ConfigError, OSError):  # OSError: a tzdata directory ("America") or an over-long name
        raise _Invalid("is not a known IANA timezone; use e.g. 'UTC' or 'Asia/Hong_Kong'") from None
    return text


def _text(text: str, variable: str) -> str:
    if not text.isprintable():
        raise _Invalid("contains control characters")
    return text


def _secret_text(text: str, variable: str) -> str:
    if not text.isprintable():
        raise _Invalid("contains control characters; set it without them")
    return text


def _base_url(text: str, variable: str) -> str:
    return validate_base_url(text, variable)


def _token(text: str, variable: str) -> str:
    return validate_token(text, variable)


def _path(text: str) -> Path:
    try:
        return Path(text).expanduser()
    except RuntimeError:  # "~someone/..." for a user without a home directory
        raise _Invalid("starts with ~ but that home directory is unknown") from None


def _directory(text: str, variable: str) -> Path:
    return locations.resolve(_path(text))


def _readable_file(text: str, variable: str) -> str:
    path = _path(text)
    try:
        readable = path.is_file() and os.access(path, os.R_OK)
    except OSError:  # e.g. a name too long for the file system
        readable = False
    if not readable:
        raise _Invalid("is not a readable file")
    return str(path)


def _lake_uri(text: str, variable: str) -> str:
    if not text.startswith("s3://"):
        if "://" in text or text.lower().startswith("s3:"):
            raise _Invalid("is neither a local path nor s3://bucket/prefix")
        return text.rstrip("/") or "/"
    location = text.removeprefix("s3://").strip("/")
    if not location:
        raise _Invalid("needs a bucket, e.g. s3://my-bucket/campaigns")
    if not _BUCKET.fullmatch(location.split("/", 1)[0]) or any(char.isspace() for char in location):
        raise _Invalid("does not start with a valid S3 bucket name (3-63 of a-z, 0-9, '.', '-')")
    return "s3://" + location


def _warehouse_uri(text: str, variable: str) -> str:
    if not text.startswith("ducklake:") or len(text) == len("ducklake:"):
        raise _Invalid("is not a DuckLake URI: ducklake:postgres:<connection string> or ducklake:<catalog file>; "
                       "unset it for the DuckDB file")
    rest = text.removeprefix("ducklake:")
    if rest.startswith("postgres:"):
        return text
    return "ducklake:" + str(locations.resolve(_path(rest)))


def _app_keys(text: str, variable: str) -> tuple[str, ...]:
    return app_keys(text)


def _default_data_dir(values: Mapping[str, Any]) -> Path:
    if values.get("CAMPAIGN_SOURCE") == SOURCE_SIMULATOR:
        return locations.resolve(Path(settings.DEFAULT_DATA_DIR) / settings.SIMULATOR_DATA_SUBDIR)
    return locations.resolve(settings.DEFAULT_DATA_DIR)


def _default_region(values: Mapping[str, Any]) -> str | None:
    return values.get("AWS_DEFAULT_REGION")


def _default_request_deadline(values: Mapping[str, Any]) -> float:
    read_timeout = values.get("CINNOX_READ_TIMEOUT_S") or settings.DEFAULT_READ_TIMEOUT_S
    return settings.DEFAULT_CONNECT_TIMEOUT_S + read_timeout


_CINNOX = ("CAMPAIGN_SOURCE", SOURCE_CINNOX)
_MISSING_CINNOX = ("{names} {is} not set; set {it} (see .env.example) or use CAMPAIGN_SOURCE=simulator "
                   "for the built-in simulator")

_SECONDS = "a number of seconds above 0 and up to 3600"

SETTINGS: tuple[Setting, ...] = (
    Setting("CAMPAIGN_SOURCE", _choice(*SOURCES), SOURCE_CINNOX, attr="source",
            help="cinnox (a real CINNOX app) or simulator (the built-in simulator)"),
    Setting("CAMPAIGN_APPS", _app_keys, (DEFAULT_APP_KEY,), shown_default="unset (one app)",
            help="several CINNOX apps, e.g. 'hk,sg' (a-z, 0-9, _): app K then reads CINNOX_K_BASE_URL, "
                 "CINNOX_K_APP_ID and CINNOX_K_APP_TOKEN"),
    Setting("CINNOX_BASE_URL", _base_url, attr="base_url", per_app=True, required_if=_CINNOX,
            missing=_MISSING_CINNOX, help="the app's API base URL, e.g. https://example.cinnox.com"),
    Setting("CINNOX_APP_ID", _text, attr="app_id", per_app=True, required_if=_CINNOX,
            missing=_MISSING_CINNOX,
            help="the App ID (CINNOX dashboard: Administration > Service Integration > API)"),
    Setting("CINNOX_APP_TOKEN", _token, attr="app_token", per_app=True, required_if=_CINNOX,
            missing=_MISSING_CINNOX, secret=True,
            help="the App Token, a secret: printable ASCII without spaces, at least "
                 f"{settings.MIN_TOKEN_LENGTH} characters; never logged"),
    Setting("CINNOX_CA_BUNDLE", _readable_file, attr="ca_bundle",
            help="CA bundle for a TLS-intercepting proxy (TLS verification is always on)"),
    Setting("CINNOX_RATE_LIMIT_PER_MIN",
            _number(1, 1_000_000, "a number of requests per minute between 1 and 1000000"),
            float(settings.DEFAULT_RATE_LIMIT_PER_MIN), attr="rate_limit_per_min",
            shown_default=str(settings.DEFAULT_RATE_LIMIT_PER_MIN),
            help="client-side request budget (the documented limit is "
                 f"{settings.DOCUMENTED_RATE_LIMIT_PER_MIN})"),
    Setting("CINNOX_READ_TIMEOUT_S", _number(0, 3600, _SECONDS, low_open=True),
            settings.DEFAULT_READ_TIMEOUT_S, attr="read_timeout_s", shown_default="30",
            help="per-request read timeout (between bytes)"),
    Setting("CINNOX_REQUEST_DEADLINE_S", _number(0, 3600, _SECONDS, low_open=True), _default_request_deadline,
            attr="request_deadline_s",
            shown_default=f"{settings.DEFAULT_CONNECT_TIMEOUT_S:g} + CINNOX_READ_TIMEOUT_S "
                          f"({settings.DEFAULT_CONNECT_TIMEOUT_S + settings.DEFAULT_READ_TIMEOUT_S:g})",
            help="total time one attempt may take: connect, headers and the whole body, however slowly "
                 "the server sends them (then retried)"),
    Setting("CINNOX_MAX_RESPONSE_MB",
            _number(0, 4096, "a number of megabytes above 0 and up to 4096", low_open=True),
            settings.DEFAULT_MAX_RESPONSE_MB, attr="max_response_mb",
            shown_default=f"{settings.DEFAULT_MAX_RESPONSE_MB:g}",
            help="largest response body accepted (MB = 2**20 bytes); a larger one is refused while it is "
                 "read (then retried)"),
    Setting("CINNOX_MAX_ATTEMPTS", _number(1, 100, "a whole number between 1 and 100", integer=True),
            settings.DEFAULT_MAX_ATTEMPTS, attr="max_attempts", help="attempts per request (retries + 1)"),
    Setting("CINNOX_BACKOFF_MAX_S", _number(0, 3600, _SECONDS, low_open=True),
            settings.DEFAULT_BACKOFF_MAX_S, attr="backoff_max_s", shown_default="30",
            help="cap of one backoff sleep, Retry-After included"),
    Setting("CAMPAIGN_DATA_DIR", _directory, _default_data_dir, attr="data_dir",
            shown_default=f"{settings.DEFAULT_DATA_DIR} ({settings.DEFAULT_DATA_DIR}/"
                          f"{settings.SIMULATOR_DATA_SUBDIR} for the simulator)",
            help="where lake/ (Parquet), warehouse.duckdb and analytics.duckdb live; a relative path is "
                 "taken against the repository root"),
    Setting("CAMPAIGN_LAST_RUN_FILE", _directory, attr=None,
            shown_default=f"{settings.DEFAULT_DATA_DIR}/{locations.LAST_RUN_FILENAME}",
            help="where each run records its data dir, which read-only commands (report, notebook, make sql, "
                 "make dev) read when CAMPAIGN_DATA_DIR is unset"),
    Setting("CAMPAIGN_LAKE_URI", _lake_uri, attr="lake_uri", shown_default="<data dir>/lake",
            help="the lake elsewhere: a local path or s3://bucket/prefix (credentials from the standard "
                 "AWS variables)"),
    Setting("CAMPAIGN_WAREHOUSE_URI", _warehouse_uri, attr="warehouse_uri", secret=True,
            shown_default="<data dir>/warehouse.duckdb",
            help="the warehouse: unset for the DuckDB file, or a DuckLake: ducklake:postgres:<libpq connection "
                 "string> (several hosts) or ducklake:<catalog file>; its Parquet files go under "
                 "<lake>/ducklake/. A secret (it may hold a password)"),
    Setting("AWS_ENDPOINT_URL", _base_url, attr="s3_endpoint_url",
            help="S3-compatible endpoint for an s3:// lake (MinIO, R2...); unset for AWS itself"),
    Setting("AWS_REGION", _text, _default_region, attr="s3_region", shown_default="AWS_DEFAULT_REGION",
            help="region of an s3:// lake"),
    Setting("AWS_DEFAULT_REGION", _text, help="region of an s3:// lake when AWS_REGION is unset"),
    Setting("CAMPAIGN_PARTITION_START", _day, date.fromisoformat(settings.DEFAULT_PARTITION_START),
            attr="partition_start", help="first daily partition, YYYY-MM-DD"),
    Setting("CAMPAIGN_PARTITION_TZ", _timezone, settings.DEFAULT_PARTITION_TZ, attr="partition_tz",
            help="IANA timezone of the day boundaries, e.g. Asia/Hong_Kong"),
    Setting("CAMPAIGN_LOOKBACK_DAYS",
            _number(1, 366, "a whole number of days between 1 and 366", integer=True),
            settings.DEFAULT_LOOKBACK_DAYS, attr="lookback_days",
            help="days the daily schedule re-materializes, so late status updates land"),
    Setting("CAMPAIGN_FETCH_WORKERS", _number(1, 64, "a whole number between 1 and 64", integer=True),
            settings.DEFAULT_FETCH_WORKERS, attr="fetch_workers", shown_default="usable CPU cores, 2-8",
            help="parallel detail fetches per day"),
    Setting("CAMPAIGN_REJECTED_THRESHOLD", _number(0, 1, "a number between 0 and 1"),
            settings.DEFAULT_REJECTED_THRESHOLD, attr="rejected_threshold",
            help="share of a day's records rejected above which the day's check fails"),
    Setting("CAMPAIGN_FRESHNESS_HOURS", _number(1, 24 * 366, "a number of hours between 1 and 8784"),
            settings.DEFAULT_FRESHNESS_HOURS, attr="freshness_hours",
            help="the message tables' freshness policy: a day should be loaded within this many hours "
                 "after it ends, or the assets turn red in Dagster"),
    Setting("CAMPAIGN_ALERT_WEBHOOK_URL", _base_url, attr="alert_webhook_url", secret=True,
            help="when set, a failed run of the pipeline's job is posted to this URL as JSON; unset, "
                 "it is logged by the daemon"),
    Setting("CAMPAIGN_PII_MODE", _choice(*PII_MODES), PII_MODE_RAW, attr="pii_mode",
            help="raw, or hash: recipients stored as HMAC-SHA256 keyed by CAMPAIGN_PII_SALT, SMS content "
                 "dropped"),
    Setting("CAMPAIGN_PII_SALT", _secret_text, attr="pii_salt", secret=True,
            required_if=("CAMPAIGN_PII_MODE", PII_MODE_HASH),
            missing="{names} {is} required when CAMPAIGN_PII_MODE=hash; set {it} to a long random secret",
            help="the HMAC key of CAMPAIGN_PII_MODE=hash, a secret; keep it to keep hashes joinable"),
    Setting("CAMPAIGN_SIM_SEED", _number(0, 2**62, "a whole number of at least 0", integer=True),
            settings.DEFAULT_SIM_SEED,
            help="simulator: seed of the data; app number i of CAMPAIGN_APPS gets seed + i"),
    Setting("CAMPAIGN_SIM_CAMPAIGNS_PER_DAY",
            _number(0, 10_000, "a whole number between 0 and 10000", integer=True),
            settings.DEFAULT_SIM_CAMPAIGNS_PER_DAY, attr="sim_campaigns_per_day",
            help="simulator: campaigns sent per day"),
    Setting("CAMPAIGN_SIM_RECIPIENTS_PER_CAMPAIGN",
            _number(1, 1_000_000, "a whole number between 1 and 1000000", integer=True),
            settings.DEFAULT_SIM_RECIPIENTS_PER_CAMPAIGN, attr="sim_recipients_per_campaign",
            help="simulator: mean recipients per campaign"),
)
"""The one declaration of the environment (see :class:`Setting`)."""


# --------------------------------------------------------------------------------------------
# The validated configuration
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AppConfig:
    """One CINNOX app to load. ``repr`` never shows the token.

    Attributes:
        key: ``"default"``, or the app's key in ``CAMPAIGN_APPS``.
        app_id: the CINNOX App ID; with the simulator source ``"sim-app"`` for the default app
            and ``"sim-<key>"`` otherwise.
        base_url: the API base URL; ``None`` with the simulator source.
        app_token: the App Token; ``None`` with the simulator source.
        sim_seed: the simulator's seed for this app: ``CAMPAIGN_SIM_SEED`` + the app's index.
    """

    key: str
    app_id: str
    base_url: str | None
    app_token: str | None = field(repr=False)
    sim_seed: int


@dataclass(frozen=True)
class PipelineConfig:
    """The validated configuration of one deployment; build it with :meth:`from_env`.

    Every field comes from one :class:`Setting` of :data:`SETTINGS` (see :func:`settings_help`).
    ``repr`` never shows a secret.
    """

    source: str
    apps: tuple[AppConfig, ...]
    ca_bundle: str | None
    rate_limit_per_min: float
    data_dir: Path
    lake_uri: str | None
    warehouse_uri: str | None = field(repr=False)
    s3_endpoint_url: str | None
    s3_region: str | None
    partition_start: date
    partition_tz: str
    lookback_days: int
    fetch_workers: int
    rejected_threshold: float
    freshness_hours: float
    alert_webhook_url: str | None = field(repr=False)
    pii_mode: str
    pii_salt: str | None = field(repr=False)
    read_timeout_s: float
    request_deadline_s: float
    max_response_mb: float
    max_attempts: int
    backoff_max_s: float
    sim_campaigns_per_day: int
    sim_recipients_per_campaign: int

    @property
    def lake_root(self) -> str:
        """Root of the Parquet lake: ``CAMPAIGN_LAKE_URI`` or ``<data_dir>/lake``."""
        return self.lake_uri or str(self.data_dir / settings.LAKE_DIRNAME)

    @property
    def ducklake_data_path(self) -> str:
        """Where a DuckLake warehouse keeps its Parquet files: ``<lake>/ducklake/``."""
        return f"{self.lake_root}/ducklake/"

    @property
    def warehouse_path(self) -> Path:
        """The DuckDB file, ``<data_dir>/warehouse.duckdb``."""
        return self.data_dir / settings.WAREHOUSE_FILENAME

    def client_options(self) -> dict:
        """Keyword arguments for :class:`campaign_pipeline.cinnox.client.CinnoxClient` besides
        ``base_url``, ``app_id`` and ``token``."""
        return {
            "rate_limit_per_min": self.rate_limit_per_min,
            "ca_bundle": self.ca_bundle,
            "read_timeout": self.read_timeout_s,
            "request_deadline": self.request_deadline_s,
            "max_response_mb": self.max_response_mb,
            "max_attempts": self.max_attempts,
            "backoff_max_s": self.backoff_max_s,
        }

    def app(self, key: str) -> AppConfig:
        """The app ``key``; a one-line :class:`ConfigError` when it is not configured."""
        for app in self.apps:
            if app.key == key:
                return app
        known = ", ".join(app.key for app in self.apps)
        raise ConfigError(f"no CINNOX app {key!r} is configured; the apps are {known}")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> PipelineConfig:
        """Read and validate every setting of :data:`SETTINGS` from ``env`` (``os.environ`` by default).

        Raises :class:`ConfigError` (and nothing else, whatever the strings) with one line naming
        every missing or bad variable, e.g. ``CINNOX_APP_ID and CINNOX_APP_TOKEN are not set; set
        them (see .env.example) or use CAMPAIGN_SOURCE=simulator for the built-in simulator;
        CINNOX_RATE_LIMIT_PER_MIN='abc' is not a number of requests per minute between 1 and
        1000000``. A secret's value is never part of the message.
        """
        reader = _Reader(os.environ if env is None else env)
        values: dict[str, Any] = {}  # setting name -> value
        per_app: dict[str, dict[str, Any]] = {}  # app key -> AppConfig field -> value
        for setting in SETTINGS:  # in declaration order, so problems are reported in that order
            if not setting.per_app:
                values[setting.name] = reader.read(setting, setting.name, values)
                continue
            # CAMPAIGN_APPS is declared first; when it is bad, its apps' variables are not known
            for key in values["CAMPAIGN_APPS"] or ():
                value = reader.read(setting, setting.variable(key), values)
                per_app.setdefault(key, {})[setting.attr] = value
        for setting in SETTINGS:  # defaults that depend on other settings (data dir, region)
            unset = values.get(setting.name) is None and not reader.failed(setting.name)
            if callable(setting.default) and unset:
                values[setting.name] = setting.default(values)
        reader.raise_problems()
        apps = tuple(_app_config(values, key, index, per_app.get(key, {}))
                     for index, key in enumerate(values["CAMPAIGN_APPS"]))
        _refuse_shared_app_ids(apps)
        return cls(apps=apps, **{s.attr: values[s.name] for s in SETTINGS if s.attr and not s.per_app})


def _app_config(values: Mapping[str, Any], key: str, index: int, own: Mapping[str, Any]) -> AppConfig:
    """App ``key`` (the ``index``-th) from the global values and its own per-app values."""
    seed = values["CAMPAIGN_SIM_SEED"] + index
    if values["CAMPAIGN_SOURCE"] == SOURCE_SIMULATOR:
        app_id = settings.SIM_DEFAULT_APP_ID if key == DEFAULT_APP_KEY else f"sim-{key}"
        return AppConfig(key=key, app_id=app_id, base_url=None, app_token=None, sim_seed=seed)
    return AppConfig(key=key, app_id=own["app_id"], base_url=own["base_url"], app_token=own["app_token"],
                     sim_seed=seed)


class _Reader:
    """Reads variables through their settings and collects every problem for one message."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self._env = env
        self._missing: dict[str, list[str]] = {}  # missing-message template -> variables
        self._problems: list[str] = []
        self._failed: set[str] = set()
        self._secrets: set[str] = set()

    def _text(self, variable: str) -> str | None:
        raw = self._env.get(variable)
        if raw is None:
            return None
        text = (raw if isinstance(raw, str) else str(raw)).strip()
        return text or None

    def read(self, setting: Setting, variable: str, values: Mapping[str, Any]) -> Any:
        """The value of ``variable`` under ``setting``: parsed, the default, or ``None`` after a problem."""
        if setting.required_if is not None:
            other, wanted = setting.required_if
            if values.get(other) != wanted:
                return None  # not needed, so not read (a bad ``other`` is reported on its own)
        text = self._text(variable)
        if text is None:
            if setting.required_if is not None:
                self._missing.setdefault(setting.missing, []).append(variable)
                self._failed.add(variable)
            return None if callable(setting.default) else setting.default
        if setting.secret:
            self._secrets.add(text)
        try:
            if "\x00" in text or not _is_text(text):
                raise _Invalid("holds bytes that are not text (NUL or undecodable)")
            return setting.parser(text, variable)
        except ConfigError as error:
            problem = str(error)
        except _Invalid as error:
            shown = "" if setting.secret else f"={_shown(text)}"
            problem = f"{variable}{shown} {error}"
        except Exception as error:  # noqa: BLE001 -- a parser bug must still end as one ConfigError line
            problem = f"{variable} could not be read ({type(error).__name__})"
        self._problems.append(problem)
        self._failed.add(variable)
        return None

    def failed(self, variable: str) -> bool:
        """True when ``variable`` was reported as bad or missing."""
        return variable in self._failed

    def raise_problems(self) -> None:
        """Raise one :class:`ConfigError` listing every problem, missing variables first."""
        parts = [_missing_text(template, names) for template, names in self._missing.items()] + self._problems
        if not parts:
            return
        message = "; ".join(parts)
        for secret in sorted(self._secrets, key=len, reverse=True):
            if len(secret) >= settings.MIN_TOKEN_LENGTH:  # defence in depth: no message quotes a secret
                message = message.replace(secret, "<redacted>")
        raise ConfigError(message)


def _is_text(text: str) -> bool:
    """False for strings holding lone surrogates (bytes the environment could not decode)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _shown(text: str) -> str:
    """``text`` quoted for a message, cut to a readable length."""
    return repr(text if len(text) <= _SHOWN_CHARS else text[: _SHOWN_CHARS - 1] + "…")


def _missing_text(template: str, names: list[str]) -> str:
    """``template`` for the variables ``names``: "A is not set; set it" / "A and B are not set; set them"."""
    joined = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
    one = len(names) == 1
    return template.format(names=joined, **{"is": "is" if one else "are", "it": "it" if one else "them"})


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def app_keys(value: str | None) -> tuple[str, ...]:
    """The app keys of a ``CAMPAIGN_APPS`` value (``("default",)`` when unset or blank).

    Raises a one-line :class:`ConfigError` for a bad key, a repeated key or an empty list.
    """
    if value is None or not value.strip():
        return (DEFAULT_APP_KEY,)
    keys = tuple(part.strip().lower() for part in value.split(",") if part.strip())
    for key in keys:
        if not _APP_KEY.fullmatch(key) or key == DEFAULT_APP_KEY:
            raise ConfigError(
                f"CAMPAIGN_APPS has an invalid app key {_shown(key)}; "
                "use short names like 'hk,sg' (a-z, 0-9, _)"
            )
    if not keys:
        raise ConfigError(f"CAMPAIGN_APPS={_shown(value)} lists no app; use short names like 'hk,sg'")
    if len(set(keys)) != len(keys):
        raise ConfigError("CAMPAIGN_APPS lists an app twice")
    return keys


def app_env_prefix(key: str) -> str:
    """Where app ``key``'s settings live: ``CINNOX_`` for the default app, ``CINNOX_<KEY>_`` otherwise."""
    return "CINNOX_" if key == DEFAULT_APP_KEY else f"CINNOX_{key.upper()}_"


def environment_variable_names(apps: tuple[str, ...] = ()) -> list[str]:
    """Every variable :data:`SETTINGS` knows, in declaration order, with the per-app ones for the
    default app and for each key of ``apps`` (e.g. for a deployment that forwards variables).

    The standard AWS credential variables, read by the S3 client itself, are not among them.
    """
    names: list[str] = []
    for setting in SETTINGS:
        keys = (DEFAULT_APP_KEY, *apps) if setting.per_app else (DEFAULT_APP_KEY,)
        names += [setting.variable(key) for key in keys if setting.variable(key) not in names]
    return names


def settings_help() -> str:
    """A plain-text table of :data:`SETTINGS`: variable, default and meaning, one line each."""
    rows = [("VARIABLE", "DEFAULT", "MEANING")]
    for setting in SETTINGS:
        name = setting.name + (" (per app: CINNOX_<KEY>_" + setting.name.removeprefix("CINNOX_") + ")"
                               if setting.per_app else "")
        meaning = setting.help + (" [secret]" if setting.secret else "")
        rows.append((name, setting.default_text, meaning))
    widths = [max(len(row[column]) for row in rows) for column in range(2)]
    return "\n".join(f"{a:<{widths[0]}}  {b:<{widths[1]}}  {c}".rstrip() for a, b, c in rows) + "\n"


def _refuse_shared_app_ids(apps: tuple[AppConfig, ...]) -> None:
    """Two app keys with one App ID would replace each other's rows in DuckDB (a day is keyed by
    ``app_id``) while both kept their lake files: refuse it."""
    seen: dict[str, str] = {}
    for app in apps:
        if app.app_id in seen:
            first, second = (app_env_prefix(key) + "APP_ID" for key in (seen[app.app_id], app.key))
            raise ConfigError(f"{first} and {second} name the same App ID; each app in CAMPAIGN_APPS needs its own")
        seen[app.app_id] = app.key


def prepare_data_dir(config: PipelineConfig) -> None:
    """Create the data dir, prove it is writable, and refuse to mix data that must not mix.

    The first run records its source in ``<data_dir>/.campaign_source``, its PII mode in
    ``.campaign_pii_mode`` and its partition timezone in ``.campaign_partition_tz``; a later run
    with another value fails instead of writing simulated rows beside real ones, clear recipients
    beside hashed ones, or campaigns into two days' partitions.
    """
    data_dir = config.data_dir
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        probe = data_dir / f".write-probe-{os.getpid()}-{threading.get_ident()}"  # two runs in one process too
        probe.write_text("ok")
        probe.unlink()
    except OSError as error:
        raise ConfigError(
            f"CAMPAIGN_DATA_DIR={str(data_dir)!r} is not writable ({error.strerror}); "
            "point it at a writable directory"
        ) from None
    for marker_name, variable, value in ((SOURCE_MARKER, "CAMPAIGN_SOURCE", config.source),
                                         (PII_MARKER, "CAMPAIGN_PII_MODE", config.pii_mode),
                                         (TZ_MARKER, "CAMPAIGN_PARTITION_TZ", config.partition_tz)):
        recorded = _claim_marker(data_dir / marker_name, value)
        if recorded != value:
            raise ConfigError(
                f"CAMPAIGN_DATA_DIR={str(data_dir)!r} holds {variable}={recorded} data but "
                f"{variable}={value}; use a separate data dir"
            )
    locations.record_last_run(data_dir)


def _claim_marker(marker: Path, value: str) -> str:
    """Record ``value`` in ``marker`` unless another value is already there; return what is recorded.

    The marker appears atomically (a complete temporary file hard-linked into place), so two first
    runs racing on a fresh data dir never read a half-written marker.
    """
    if not marker.exists():
        temp = marker.with_name(f"{marker.name}.tmp-{os.getpid()}-{threading.get_ident()}")
        temp.write_text(value + "\n")
        try:
            os.link(temp, marker)
        except FileExistsError:
            pass
        finally:
            temp.unlink(missing_ok=True)
    return marker.read_text().strip()


def recipient_hasher(config: PipelineConfig) -> RecipientHasher | None:
    """The landing-time pseudonymizer for ``CAMPAIGN_PII_MODE=hash``, else ``None``."""
    return RecipientHasher(config.pii_salt) if config.pii_mode == PII_MODE_HASH else None
