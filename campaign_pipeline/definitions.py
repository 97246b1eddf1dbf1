"""The Dagster code location: ``dagster dev -w dagster_workspace.yaml`` loads ``defs`` from here.

Partition start and timezone shape the partitions definition itself, so they are read when the
code location loads; every other setting reaches the resources through ``dg.EnvVar`` at run time.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping

import dagster as dg

from campaign_pipeline import settings
from campaign_pipeline.config import (
    DEFAULT_APP_KEY,
    SOURCE_CINNOX,
    SOURCE_SIMULATOR,
    app_env_prefix,
    app_keys,
)
from campaign_pipeline.orchestration.assets import build_assets
from campaign_pipeline.orchestration.resources import CampaignStorageResource, CinnoxResource
from campaign_pipeline.orchestration.schedules import build_job_and_schedule
from campaign_pipeline.runner import SimulatorKnobs
from campaign_pipeline.windows import load_timezone

# BackfillPolicy and partitioned checks are beta/preview in Dagster 1.13; we rely on them knowingly.
warnings.filterwarnings("ignore", category=dg.BetaWarning)
warnings.filterwarnings("ignore", category=dg.PreviewWarning)


def _env(env: Mapping[str, str], name: str, default):
    """``dg.EnvVar(name)`` when the variable is set, so Dagster resolves it at run time; else the default."""
    return dg.EnvVar(name) if env.get(name, "").strip() else default


def build_definitions(env: Mapping[str, str] | None = None) -> dg.Definitions:
    """Build the code location from an environment mapping (``os.environ`` by default)."""
    env = os.environ if env is None else env
    source = (env.get("CAMPAIGN_SOURCE") or SOURCE_CINNOX).strip().lower()
    tz_name = (env.get("CAMPAIGN_PARTITION_TZ") or settings.DEFAULT_PARTITION_TZ).strip()
    load_timezone(tz_name)
    partitions = dg.DailyPartitionsDefinition(
        start_date=(env.get("CAMPAIGN_PARTITION_START") or settings.DEFAULT_PARTITION_START).strip(),
        timezone=tz_name,
        end_offset=0,
    )
    default_dir = settings.DEFAULT_DATA_DIR + ("/simulator" if source == SOURCE_SIMULATOR else "")
    apps = app_keys(env.get("CAMPAIGN_APPS"))
    resource_keys = {key: "cinnox" if key == DEFAULT_APP_KEY else f"cinnox_{key}" for key in apps}
    assets = build_assets(partitions, resource_keys, float(env.get("CAMPAIGN_REJECTED_THRESHOLD") or 0.01))
    job, schedule = build_job_and_schedule(partitions, int(env.get("CAMPAIGN_LOOKBACK_DAYS") or 3))
    cinnox_resources = {
        resource_key: CinnoxResource(
            source=_env(env, "CAMPAIGN_SOURCE", SOURCE_CINNOX),
            app_key=app_key,
            base_url=_env(env, app_env_prefix(app_key) + "BASE_URL", None),
            app_id=_env(env, app_env_prefix(app_key) + "APP_ID", None),
            app_token=_env(env, app_env_prefix(app_key) + "APP_TOKEN", None),
            ca_bundle=_env(env, "CINNOX_CA_BUNDLE", None),
            rate_limit_per_min=float(env.get("CINNOX_RATE_LIMIT_PER_MIN") or settings.DEFAULT_RATE_LIMIT_PER_MIN),
            read_timeout_s=float(env.get("CINNOX_READ_TIMEOUT_S") or settings.DEFAULT_READ_TIMEOUT_S),
            max_attempts=int(env.get("CINNOX_MAX_ATTEMPTS") or settings.DEFAULT_MAX_ATTEMPTS),
            backoff_max_s=float(env.get("CINNOX_BACKOFF_MAX_S") or settings.DEFAULT_BACKOFF_MAX_S),
            fetch_workers=int(env.get("CAMPAIGN_FETCH_WORKERS") or settings.DEFAULT_FETCH_WORKERS),
            simulator_seed=knobs.seed,
            simulator_campaigns_per_day=knobs.campaigns_per_day,
            simulator_recipients_per_campaign=knobs.recipients_per_campaign,
        )
        for index, (app_key, resource_key) in enumerate(resource_keys.items())
        for knobs in [SimulatorKnobs.from_env(env, index)]
    }
    return dg.Definitions(
        assets=assets,
        jobs=[job],
        schedules=[schedule],
        resources={
            **cinnox_resources,
            "storage": CampaignStorageResource(
                data_dir=_env(env, "CAMPAIGN_DATA_DIR", default_dir),
                source=_env(env, "CAMPAIGN_SOURCE", SOURCE_CINNOX),
                pii_mode=_env(env, "CAMPAIGN_PII_MODE", "raw"),
                pii_salt=_env(env, "CAMPAIGN_PII_SALT", None),
                lake_uri=_env(env, "CAMPAIGN_LAKE_URI", None),
                s3_endpoint_url=_env(env, "AWS_ENDPOINT_URL", None),
                s3_region=_env(env, "AWS_REGION", _env(env, "AWS_DEFAULT_REGION", None)),
            ),
        },
    )


defs = build_definitions()
