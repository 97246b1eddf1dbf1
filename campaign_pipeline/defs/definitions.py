"""The Dagster code location: ``dagster dev -w dagster_workspace.yaml`` (and ``dg``, through
``[tool.dg]`` in pyproject.toml) loads ``defs`` from here.

The configuration is read and validated once, when the code location loads
(:meth:`PipelineConfig.from_env`); a bad value stops the load with the same one-line message the
CLI prints. Secrets stay in that in-process object: they never become Dagster resource config, so
they never reach the UI, run storage or event logs.

Besides the assets, the job and the daily schedule, the location holds the message tables'
freshness policy (``CAMPAIGN_FRESHNESS_HOURS``) and the run-failure alert sensor
(``CAMPAIGN_ALERT_WEBHOOK_URL``); see :mod:`campaign_pipeline.defs.alerts`.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping

import dagster as dg

from campaign_pipeline.config import PipelineConfig
from campaign_pipeline.defs.alerts import build_run_failure_sensor, with_freshness_policy
from campaign_pipeline.defs.assets import build_assets
from campaign_pipeline.defs.schedules import JOB_NAME, build_job_and_schedule
from campaign_pipeline.errors import ConfigError

# BackfillPolicy and partitioned checks are beta/preview in Dagster 1.13; we rely on them knowingly.
warnings.filterwarnings("ignore", category=dg.BetaWarning)
warnings.filterwarnings("ignore", category=dg.PreviewWarning)


def build_definitions(env: Mapping[str, str] | None = None) -> dg.Definitions:
    """Build the code location from an environment mapping (``os.environ`` by default)."""
    try:
        cfg = PipelineConfig.from_env(os.environ if env is None else env)
    except ConfigError as error:
        raise ConfigError(f"campaign_pipeline code location: {error}") from None
    partitions = dg.DailyPartitionsDefinition(
        start_date=cfg.partition_start.isoformat(), timezone=cfg.partition_tz, end_offset=0,
    )
    job, schedule = build_job_and_schedule(partitions, cfg.lookback_days)
    assets = with_freshness_policy(build_assets(cfg, partitions), cfg.freshness_hours)
    asset_keys = [key for asset in assets for key in asset.keys]
    return dg.Definitions(assets=assets, jobs=[job], schedules=[schedule],
                          sensors=[build_run_failure_sensor(cfg, JOB_NAME, asset_keys)])


@dg.definitions
def defs() -> dg.Definitions:
    """The code location, built when Dagster loads it (importing this module reads no configuration)."""
    return build_definitions()
