"""Dagster resources: thin factories over the plain client, lake and warehouse classes."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import dagster as dg

from campaign_pipeline import config as pipeline_config
from campaign_pipeline import runner, settings
from campaign_pipeline.client import CinnoxClient
from campaign_pipeline.lake import Lake
from campaign_pipeline.pii import RecipientHasher
from campaign_pipeline.pipeline import AppRef
from campaign_pipeline.warehouse import Warehouse


class CinnoxResource(dg.ConfigurableResource):
    """Opens a :class:`CinnoxClient` on the real CINNOX API, or on an embedded simulator when
    ``source`` is ``simulator``. Secrets come from ``dg.EnvVar`` and never reach metadata."""

    source: str = pipeline_config.SOURCE_CINNOX
    app_key: str = "default"
    base_url: str | None = None
    app_id: str | None = None
    app_token: str | None = None
    ca_bundle: str | None = None
    rate_limit_per_min: float = settings.DEFAULT_RATE_LIMIT_PER_MIN
    read_timeout_s: float = settings.DEFAULT_READ_TIMEOUT_S
    max_attempts: int = settings.DEFAULT_MAX_ATTEMPTS
    backoff_max_s: float = settings.DEFAULT_BACKOFF_MAX_S
    fetch_workers: int = settings.DEFAULT_FETCH_WORKERS
    simulator_seed: int = 7
    simulator_campaigns_per_day: int = 8
    simulator_recipients_per_campaign: int = 150

    def validated(self) -> pipeline_config.PipelineConfig:
        """This resource's settings, validated (one-line :class:`ConfigError` on a bad value)."""
        return pipeline_config.validate(
            source=self.source,
            base_url=self.base_url,
            app_id=self.app_id,
            app_token=self.app_token,
            ca_bundle=self.ca_bundle,
            rate_limit_per_min=self.rate_limit_per_min,
            fetch_workers=self.fetch_workers,
            read_timeout_s=self.read_timeout_s,
            max_attempts=self.max_attempts,
            backoff_max_s=self.backoff_max_s,
        )

    def app_ref(self) -> AppRef:
        """This app's key (names its lake files) and CINNOX App ID (fills the ``app_id`` column)."""
        if self.source == pipeline_config.SOURCE_SIMULATOR:
            return AppRef(self.app_key, runner.simulator_app_id(self.app_key))
        return AppRef(self.app_key, self.validated().app_id)

    @contextmanager
    def open_client(self) -> Iterator[CinnoxClient]:
        """A client for the configured source; the embedded simulator lives as long as the block."""
        knobs = runner.SimulatorKnobs(self.simulator_seed, self.simulator_campaigns_per_day,
                                      self.simulator_recipients_per_campaign)
        with runner.open_client(self.validated(), self.app_key, knobs) as client:
            yield client


class CampaignStorageResource(dg.ConfigurableResource):
    """Where the data lands: ``<data_dir>/lake`` (Parquet) and ``<data_dir>/warehouse.duckdb``."""

    data_dir: str = settings.DEFAULT_DATA_DIR
    source: str = pipeline_config.SOURCE_CINNOX
    pii_mode: str = "raw"
    pii_salt: str | None = None
    lake_uri: str | None = None
    s3_endpoint_url: str | None = None
    s3_region: str | None = None

    def _validated(self) -> pipeline_config.PipelineConfig:
        return pipeline_config.validate(source=self.source, base_url="http://unused", app_id="-", app_token="-",
                                        data_dir=self.data_dir, pii_mode=self.pii_mode, pii_salt=self.pii_salt)

    def prepare(self) -> None:
        """Check the data dir is writable and belongs to this source and PII mode (fails fast, one line)."""
        pipeline_config.prepare_data_dir(self._validated())

    def recipient_hasher(self) -> RecipientHasher | None:
        """The landing-time pseudonymizer when ``pii_mode`` is ``hash``."""
        return pipeline_config.recipient_hasher(self._validated())

    def lake(self) -> Lake:
        """The Parquet lake: ``lake_uri`` (local path or ``s3://``) or ``<data_dir>/lake``."""
        root = self.lake_uri or f"{self.data_dir}/{settings.LAKE_DIRNAME}"
        return Lake(root, s3_endpoint_url=self.s3_endpoint_url, s3_region=self.s3_region)

    def warehouse(self) -> Warehouse:
        """The DuckDB warehouse."""
        return Warehouse(f"{self.data_dir}/{settings.WAREHOUSE_FILENAME}")
