"""Dagster assets: a thin front end that turns each day the engine finishes into Dagster events.

One asset set per CINNOX app. A single-app deployment has the plain keys (``raw_campaign_responses``,
``campaigns``, ``sms_messages``, ``whatsapp_messages``, ``rejected_records``); with several apps
(``CAMPAIGN_APPS``) each set is prefixed with the app's key. All sets write the same DuckDB tables,
told apart by their ``app_id`` column.

A run over a partition range is one step that calls :func:`campaign_pipeline.engine.run_days`.
As each day completes, the step yields that day's materializations and check evaluations, so the
partition status in the UI moves during the run, and a day that fails is never materialized while
the days before it are (the engine publishes exactly those). The assets yield no outputs (an
output would record a second, run-wide materialization of every partition in the range).
A failing step raises ``dg.Failure`` with one line and ``error_kind`` metadata
(:func:`campaign_pipeline.errors.error_kind`: ``lock_held``, ``storage_full``...), never a traceback
of ours.
"""


from dataclasses import dataclass
from datetime import date

import dagster as dg

from campaign_pipeline import engine, quality
from campaign_pipeline.config import DEFAULT_APP_KEY, PipelineConfig
from campaign_pipeline.defs.table_metadata import (
    partition_metadata,
    rate_metadata,
    table_definition_metadata,
)
from campaign_pipeline.errors import CampaignPipelineError, error_kind, storage_error
from campaign_pipeline.model import dictionary, schemas
from campaign_pipeline.model.windows import PartitionWindow

RAW_RESPONSES_NAME = "raw_campaign_responses"
GROUP = "cinnox_campaigns"
API_POOL = "cinnox_api"
RAW_DESCRIPTION = (
    "One zstd-compressed NDJSON file per day under lake/raw/date=YYYY-MM-DD/: one line per CINNOX API response page "
    "(the day's summary pages, then each campaign's detail pages), bodies kept verbatim (records pseudonymized "
    "with CAMPAIGN_PII_MODE=hash) so a day can be re-split without calling the API."
)


class CampaignRunConfig(dg.Config):
    """Run options: ``resplit`` rebuilds the tables from the landed files, with no API call;
    ``allow_shrink`` lets a re-load publish fewer campaigns or messages than a published day;
    ``lock_wait_s`` bounds the wait for a warehouse another process holds (unset: the defaults)."""

    resplit: bool = False
    allow_shrink: bool = False
    lock_wait_s: float | None = None


@dataclass(frozen=True)
class AppAssetKeys:
    """The asset keys of one app's asset set."""

    prefix: tuple[str, ...]

    @property
    def raw(self) -> dg.AssetKey:
        """The raw landing asset."""
        return dg.AssetKey([*self.prefix, RAW_RESPONSES_NAME])

    @property
    def tables(self) -> dict[str, dg.AssetKey]:
        """Table name -> asset key."""
        return {name: dg.AssetKey([*self.prefix, name]) for name in schemas.TABLES}


def check_evaluation(outcome: quality.CheckOutcome, asset_key: dg.AssetKey, partition_key: str):
    """A partitioned Dagster check evaluation from a :class:`quality.CheckOutcome`."""
    return dg.AssetCheckEvaluation(
        asset_key=asset_key,
        check_name=outcome.spec.name,
        passed=outcome.passed,
        metadata={key: dg.MetadataValue.json(value) if isinstance(value, (dict, list)) else value
                  for key, value in outcome.metadata.items()},
        severity=dg.AssetCheckSeverity[outcome.severity],
        description=outcome.description,
        blocking=outcome.spec.blocking,
        partition=partition_key,
    )


def day_events(keys: AppAssetKeys, day: engine.DayResult):
    """The Dagster events of one finished day: its check evaluations, then (published days only)
    one materialization per asset with the day's counts and rates."""
    for outcome in day.checks:
        yield check_evaluation(outcome, keys.tables[outcome.spec.table], day.window.key)
    if not day.published:
        return
    if day.landed is not None:
        yield dg.AssetMaterialization(keys.raw, partition=day.window.key, metadata=day.landed.as_metadata())
    stats = day.stats.as_metadata()
    for name, key in keys.tables.items():
        metadata: dict = partition_metadata(name, day.inserted[name], day.table_rows.get(name))
        for rate, value in day.rates.get(name, {}).items():
            if value is not None:  # numeric metadata, so the UI plots it across partitions
                metadata[rate] = rate_metadata(value)
        if name in (schemas.CAMPAIGNS.name, schemas.REJECTED_RECORDS.name):
            metadata.update({k: v for k, v in stats.items() if isinstance(v, int)})
            metadata["rejected_by_reason"] = dg.MetadataValue.json(stats["rejected_by_reason"])
            metadata["unknown_fields"] = dg.MetadataValue.json(stats["unknown_fields"])
        yield dg.AssetMaterialization(key, partition=day.window.key, metadata=metadata)


def step_failure(description: str, error: BaseException | None) -> dg.Failure:
    """The step's one-line failure, with the failure's class as ``error_kind`` metadata."""
    return dg.Failure(description=description,
                      metadata={"error_kind": error_kind(error) if error is not None else "failed"})


def build_app_assets(cfg: PipelineConfig, partitions: dg.DailyPartitionsDefinition, app_key: str,
                     keys: AppAssetKeys) -> dg.AssetsDefinition:
    """One app's partitioned assets and checks, computed by a single step per run."""
    app = cfg.app(app_key)
    name = "_".join([*keys.prefix, "campaign_partition"])

    @dg.multi_asset(
        specs=[
            dg.AssetSpec(keys.raw, description=RAW_DESCRIPTION, group_name=GROUP, kinds={"json"}, skippable=True),
            *[
                dg.AssetSpec(key, deps=[keys.raw], description=dictionary.table_description(table),
                             metadata=table_definition_metadata(table), group_name=GROUP, kinds={"parquet", "duckdb"}, skippable=True)
                for table, key in keys.tables.items()
            ],
        ],
        check_specs=[
            dg.AssetCheckSpec(spec.name, asset=keys.tables[spec.table], blocking=spec.blocking,
                              description=spec.description, partitions_def=partitions)
            for spec in quality.ALL_CHECKS
        ],
        partitions_def=partitions,
        backfill_policy=dg.BackfillPolicy.single_run(),
        name=name,
        # One slot: keeps the fleet inside the API's request budget and DuckDB's single writer. A
        # DuckLake takes concurrent writers, so each app gets its own pool (its own request budget).
        pool=API_POOL if not cfg.warehouse_uri else f"{API_POOL}_{app_key}",
    )
    def campaign_partition(context: dg.AssetExecutionContext, config: CampaignRunConfig):
        """Fetch (or re-split), write, audit and publish each day of the run's partition range."""
        windows = [PartitionWindow.for_day(date.fromisoformat(key), cfg.partition_tz) for key in context.partition_keys]
        options = engine.RunOptions(resplit=config.resplit, allow_shrink=config.allow_shrink, run_id=context.run.run_id,
                                    lock_wait_s=config.lock_wait_s)
        try:
            # The engine logs to the `campaign_pipeline` Python loggers: the shipped instance configs
            # list them in python_logs.managed_python_loggers, so they reach the run's event log.
            for day in engine.run_days(cfg, app, windows, options):
                yield from day_events(keys, day)
                if not day.published:
                    raise step_failure(f"{day.window.key}: {day.failure}", day.error)
        except (CampaignPipelineError, OSError) as error:  # before any day: config, data dir
            error = storage_error(error, cfg.data_dir) or error
            raise step_failure(" ".join(str(error).split()), error) from None
        # Check outputs are required by Dagster; their evaluations were yielded day by day above.
        for check_key in context.selected_asset_check_keys:
            yield dg.Output(None, output_name=context.assets_def.get_output_name_for_asset_check_key(check_key))

    return campaign_partition


def build_assets(cfg: PipelineConfig, partitions: dg.DailyPartitionsDefinition) -> list[dg.AssetsDefinition]:
    """Every asset: one set per app of ``cfg``."""
    single = [app.key for app in cfg.apps] == [DEFAULT_APP_KEY]
    return [build_app_assets(cfg, partitions, app.key, AppAssetKeys(() if single else (app.key,)))
            for app in cfg.apps]
