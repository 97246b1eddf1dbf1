"""Pipeline configuration: the environment contract, validated up front with one-line errors.

Environment (see ``.env.example``)::

    CAMPAIGN_SOURCE           cinnox (default) | simulator
    CINNOX_BASE_URL           e.g. https://example.cinnox.com   (required for cinnox)
    CINNOX_APP_ID             the app's id                       (required for cinnox)
    CINNOX_APP_TOKEN          the app's token, a secret          (required for cinnox)
    CINNOX_CA_BUNDLE          optional CA bundle path for a TLS-intercepting proxy
    CINNOX_RATE_LIMIT_PER_MIN client-side request budget, default 480 (documented limit 500)
    CAMPAIGN_DATA_DIR         default ./data (./data/simulator for the simulator); lake under lake/,
                              warehouse at warehouse.duckdb
    CAMPAIGN_LAKE_URI         optional: the lake elsewhere, a local path or s3://bucket/prefix (default
                              <data_dir>/lake); S3 endpoint/region/credentials from AWS_ENDPOINT_URL,
                              AWS_REGION and the standard AWS credential variables
    CAMPAIGN_PARTITION_START  first partition, YYYY-MM-DD, default 2024-01-01
    CAMPAIGN_PARTITION_TZ     IANA timezone of the day boundaries, default UTC
    CAMPAIGN_LOOKBACK_DAYS    days the daily schedule re-materializes, default 3
    CAMPAIGN_FETCH_WORKERS    parallel detail fetches, default: usable CPU cores, 2-8
    CAMPAIGN_PII_MODE         raw (default) | hash: recipients as HMAC-SHA256, SMS content dropped
    CAMPAIGN_PII_SALT         the HMAC key, required with CAMPAIGN_PII_MODE=hash (a secret)
    CINNOX_READ_TIMEOUT_S     per-request read timeout, default 30
    CINNOX_MAX_ATTEMPTS       attempts per request (retries + 1), default 6
    CINNOX_BACKOFF_MAX_S      cap of one backoff sleep, default 30
    CAMPAIGN_APPS             optional: several CINNOX apps, e.g. "hk,sg"; app K then reads
                              CINNOX_K_BASE_URL, CINNOX_K_APP_ID, CINNOX_K_APP_TOKEN (K upper-cased)
    CAMPAIGN_SIM_*            simulator knobs (seed, campaigns per day, recipients per campaign)

Nothing here reads the environment at import time.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import date
from pathlib import Path

from campaign_pipeline import settings
from campaign_pipeline.errors import ConfigError
from campaign_pipeline.pii import PII_MODE_HASH, PII_MODE_RAW, PII_MODES, RecipientHasher
from campaign_pipeline.windows import load_timezone

SOURCE_CINNOX = "cinnox"
SOURCE_SIMULATOR = "simulator"
SOURCES = (SOURCE_CINNOX, SOURCE_SIMULATOR)
SOURCE_MARKER = ".campaign_source"
PII_MARKER = ".campaign_pii_mode"
DEFAULT_APP_KEY = "default"
_APP_KEY = re.compile(r"^[a-z][a-z0-9_]{0,30}$")
_BASE_URL = re.compile(r"^https?://[A-Za-z0-9.\-]+(:\d{1,5})?(/[^\s?#]*)?$")


@dataclass(frozen=True)
class PipelineConfig:
    """Validated configuration of one deployment. ``repr`` never shows the token."""

    source: str = SOURCE_CINNOX
    base_url: str | None = None
    app_id: str | None = None
    app_token: str | None = field(default=None, repr=False)
    ca_bundle: str | None = None
    rate_limit_per_min: float = settings.DEFAULT_RATE_LIMIT_PER_MIN
    data_dir: Path = Path(settings.DEFAULT_DATA_DIR)
    partition_start: date = date.fromisoformat(settings.DEFAULT_PARTITION_START)
    partition_tz: str = settings.DEFAULT_PARTITION_TZ
    lookback_days: int = 3
    fetch_workers: int = settings.DEFAULT_FETCH_WORKERS
    pii_mode: str = PII_MODE_RAW
    pii_salt: str | None = field(default=None, repr=False)
    read_timeout_s: float = settings.DEFAULT_READ_TIMEOUT_S
    max_attempts: int = settings.DEFAULT_MAX_ATTEMPTS
    backoff_max_s: float = settings.DEFAULT_BACKOFF_MAX_S
    lake_uri: str | None = None
    apps: tuple[str, ...] = (DEFAULT_APP_KEY,)

    def client_options(self) -> dict:
        """Keyword arguments for :class:`campaign_pipeline.client.CinnoxClient` (no secrets)."""
        return {
            "rate_limit_per_min": self.rate_limit_per_min,
            "ca_bundle": self.ca_bundle,
            "read_timeout": self.read_timeout_s,
            "max_attempts": self.max_attempts,
            "backoff_max_s": self.backoff_max_s,
        }

    @property
    def lake_root(self) -> str:
        """Root of the Parquet lake: ``CAMPAIGN_LAKE_URI`` or ``<data_dir>/lake``."""
        return self.lake_uri or str(self.data_dir / settings.LAKE_DIRNAME)

    @property
    def warehouse_path(self) -> Path:
        """The DuckDB file."""
        return self.data_dir / settings.WAREHOUSE_FILENAME

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> PipelineConfig:
        """Read and validate the environment; raises :class:`ConfigError` with a one-line fix."""
        env = os.environ if env is None else env

        def get(name: str) -> str | None:
            value = env.get(name)
            return value.strip() if value is not None and value.strip() else None

        source = (get("CAMPAIGN_SOURCE") or SOURCE_CINNOX).lower()
        apps = app_keys(get("CAMPAIGN_APPS"))
        if source == SOURCE_CINNOX:
            for key in apps:  # the first app is validated below with the rest of the settings
                prefix = app_env_prefix(key)
                validate(source=source, base_url=get(prefix + "BASE_URL"), app_id=get(prefix + "APP_ID"),
                         app_token=env.get(prefix + "APP_TOKEN"), variable_prefix=prefix)
        default_dir = settings.DEFAULT_DATA_DIR + ("/simulator" if source == SOURCE_SIMULATOR else "")
        first = app_env_prefix(apps[0])
        return validate(
            source=source,
            base_url=get(first + "BASE_URL"),
            app_id=get(first + "APP_ID"),
            app_token=env.get(first + "APP_TOKEN"),
            apps=apps,
            variable_prefix=first,
            ca_bundle=get("CINNOX_CA_BUNDLE"),
            rate_limit_per_min=get("CINNOX_RATE_LIMIT_PER_MIN") or settings.DEFAULT_RATE_LIMIT_PER_MIN,
            data_dir=get("CAMPAIGN_DATA_DIR") or default_dir,
            partition_start=get("CAMPAIGN_PARTITION_START") or settings.DEFAULT_PARTITION_START,
            partition_tz=get("CAMPAIGN_PARTITION_TZ") or settings.DEFAULT_PARTITION_TZ,
            lookback_days=get("CAMPAIGN_LOOKBACK_DAYS") or 3,
            fetch_workers=get("CAMPAIGN_FETCH_WORKERS") or settings.DEFAULT_FETCH_WORKERS,
            pii_mode=get("CAMPAIGN_PII_MODE") or PII_MODE_RAW,
            pii_salt=env.get("CAMPAIGN_PII_SALT"),
            read_timeout_s=get("CINNOX_READ_TIMEOUT_S") or settings.DEFAULT_READ_TIMEOUT_S,
            max_attempts=get("CINNOX_MAX_ATTEMPTS") or settings.DEFAULT_MAX_ATTEMPTS,
            backoff_max_s=get("CINNOX_BACKOFF_MAX_S") or settings.DEFAULT_BACKOFF_MAX_S,
            lake_uri=get("CAMPAIGN_LAKE_URI"),
        )


def validate(
    *,
    source: str,
    base_url: str | None,
    app_id: str | None,
    app_token: str | None,
    ca_bundle: str | None = None,
    rate_limit_per_min: float | str = settings.DEFAULT_RATE_LIMIT_PER_MIN,
    data_dir: str | Path = settings.DEFAULT_DATA_DIR,
    partition_start: str | date = settings.DEFAULT_PARTITION_START,
    partition_tz: str = settings.DEFAULT_PARTITION_TZ,
    lookback_days: int | str = 3,
    fetch_workers: int | str = settings.DEFAULT_FETCH_WORKERS,
    pii_mode: str = PII_MODE_RAW,
    pii_salt: str | None = None,
    read_timeout_s: float | str = settings.DEFAULT_READ_TIMEOUT_S,
    max_attempts: int | str = settings.DEFAULT_MAX_ATTEMPTS,
    backoff_max_s: float | str = settings.DEFAULT_BACKOFF_MAX_S,
    lake_uri: str | None = None,
    apps: tuple[str, ...] = (DEFAULT_APP_KEY,),
    variable_prefix: str = "CINNOX_",
) -> PipelineConfig:
    """Build a :class:`PipelineConfig`, failing fast on the first bad value with a one-line message."""
    source = (source or SOURCE_CINNOX).strip().lower()
    if source not in SOURCES:
        raise ConfigError(f"CAMPAIGN_SOURCE={source!r} is not one of {', '.join(SOURCES)}")
    if source == SOURCE_CINNOX:
        for name, value in ((variable_prefix + "BASE_URL", base_url), (variable_prefix + "APP_ID", app_id),
                            (variable_prefix + "APP_TOKEN", app_token)):
            if value is None or not str(value).strip():
                raise ConfigError(
                    f"{name} is not set; set it (see .env.example) or use CAMPAIGN_SOURCE=simulator for the built-in simulator"
                )
        base_url = str(base_url).strip().rstrip("/")
        port = _BASE_URL.match(base_url)
        if not port or (port.group(1) and not 0 < int(port.group(1)[1:]) <= 65535):
            raise ConfigError(
                f"{variable_prefix}BASE_URL is not a valid http(s) URL; expected e.g. https://example.cinnox.com"
            )
        if ca_bundle and not Path(ca_bundle).is_file():
            raise ConfigError(f"CINNOX_CA_BUNDLE={ca_bundle!r} is not a readable file")
    pii_mode = (pii_mode or PII_MODE_RAW).strip().lower()
    if pii_mode not in PII_MODES:
        raise ConfigError(f"CAMPAIGN_PII_MODE={pii_mode!r} is not one of {', '.join(PII_MODES)}")
    if pii_mode == PII_MODE_HASH and not (pii_salt or "").strip():
        raise ConfigError("CAMPAIGN_PII_SALT is required when CAMPAIGN_PII_MODE=hash; set it to a long random secret")
    tz = str(partition_tz).strip()
    load_timezone(tz)
    start = _parse_day(partition_start, "CAMPAIGN_PARTITION_START")
    return PipelineConfig(
        source=source,
        base_url=base_url,
        app_id=app_id,
        app_token=app_token.strip() if app_token else app_token,
        ca_bundle=ca_bundle,
        rate_limit_per_min=_positive(rate_limit_per_min, "CINNOX_RATE_LIMIT_PER_MIN", float),
        data_dir=Path(data_dir).expanduser(),
        partition_start=start,
        partition_tz=tz,
        lookback_days=_positive(lookback_days, "CAMPAIGN_LOOKBACK_DAYS", int),
        fetch_workers=_positive(fetch_workers, "CAMPAIGN_FETCH_WORKERS", int),
        pii_mode=pii_mode,
        pii_salt=(pii_salt or "").strip() or None,
        read_timeout_s=_positive(read_timeout_s, "CINNOX_READ_TIMEOUT_S", float),
        max_attempts=_positive(max_attempts, "CINNOX_MAX_ATTEMPTS", int),
        backoff_max_s=_positive(backoff_max_s, "CINNOX_BACKOFF_MAX_S", float),
        lake_uri=_lake_uri(lake_uri),
        apps=tuple(apps),
    )


def app_keys(value: str | None) -> tuple[str, ...]:
    """The app keys of ``CAMPAIGN_APPS`` (``("default",)`` when unset)."""
    if not value:
        return (DEFAULT_APP_KEY,)
    keys = tuple(part.strip().lower() for part in value.split(",") if part.strip())
    for key in keys:
        if not _APP_KEY.match(key) or key == DEFAULT_APP_KEY:
            raise ConfigError(
                f"CAMPAIGN_APPS has an invalid app key {key!r}; use short names like 'hk,sg' (a-z, 0-9, _)"
            )
    if len(set(keys)) != len(keys):
        raise ConfigError("CAMPAIGN_APPS lists an app twice")
    return keys


def app_config(config: PipelineConfig, key: str, env: Mapping[str, str] | None = None) -> PipelineConfig:
    """``config`` with app ``key``'s own base URL, App ID and token (``CINNOX_<KEY>_*``), validated."""
    if key == config.apps[0] or config.source != SOURCE_CINNOX:
        return config
    env = os.environ if env is None else env
    prefix = app_env_prefix(key)
    own = validate(source=config.source, base_url=(env.get(prefix + "BASE_URL") or "").strip() or None,
                   app_id=(env.get(prefix + "APP_ID") or "").strip() or None, app_token=env.get(prefix + "APP_TOKEN"),
                   variable_prefix=prefix)
    return replace(config, base_url=own.base_url, app_id=own.app_id, app_token=own.app_token)


def app_env_prefix(key: str) -> str:
    """Where app ``key``'s settings live: ``CINNOX_`` for the default app, ``CINNOX_<KEY>_`` otherwise."""
    return "CINNOX_" if key == DEFAULT_APP_KEY else f"CINNOX_{key.upper()}_"


def _lake_uri(value: str | None) -> str | None:
    if not value:
        return None
    value = value.strip().rstrip("/")
    if "://" in value and not value.startswith("s3://"):
        raise ConfigError(f"CAMPAIGN_LAKE_URI={value!r}: use a local path or s3://bucket/prefix")
    if value.startswith("s3://") and len(value) <= len("s3://"):
        raise ConfigError("CAMPAIGN_LAKE_URI=s3:// needs a bucket, e.g. s3://my-bucket/campaigns")
    return value


def _parse_day(value: str | date, name: str) -> date:
    if isinstance(value, date):
        return value
    try:
        return date.fromisoformat(str(value).strip())
    except ValueError:
        raise ConfigError(f"{name}={value!r} is not a date; use YYYY-MM-DD") from None


def _positive(value, name: str, kind):
    try:
        number = kind(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name}={value!r} is not a number") from None
    if number <= 0:
        raise ConfigError(f"{name} must be positive, got {value!r}")
    return number


def prepare_data_dir(config: PipelineConfig) -> None:
    """Create the data dir, prove it is writable, and refuse to mix simulator and real data.

    The first run records its source in ``<data_dir>/.campaign_source`` and its PII mode in
    ``.campaign_pii_mode``; a later run with another source or mode fails instead of writing
    simulated rows beside real ones, or clear recipients beside hashed ones.
    """
    data_dir = config.data_dir
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        probe = data_dir / f".write-probe-{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as error:
        raise ConfigError(
            f"CAMPAIGN_DATA_DIR={str(data_dir)!r} is not writable ({error.strerror}); point it at a writable directory"
        ) from None
    for marker_name, variable, value in ((SOURCE_MARKER, "CAMPAIGN_SOURCE", config.source),
                                         (PII_MARKER, "CAMPAIGN_PII_MODE", config.pii_mode)):
        recorded = _claim_marker(data_dir / marker_name, value)
        if recorded != value:
            raise ConfigError(
                f"CAMPAIGN_DATA_DIR={str(data_dir)!r} holds {variable}={recorded} data but {variable}={value}; "
                "use a separate data dir"
            )


def _claim_marker(marker: Path, value: str) -> str:
    """Record ``value`` in ``marker`` unless another value is already there; return what is recorded.

    The marker appears atomically (a complete temporary file hard-linked into place), so two first
    runs racing on a fresh data dir never read a half-written marker.
    """
    if not marker.exists():
        temp = marker.with_name(f"{marker.name}.tmp-{os.getpid()}")
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
