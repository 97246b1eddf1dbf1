"""Dagster assets: thin wrappers that map a partition range onto :mod:`campaign_pipeline.pipeline`."""


import contextlib
import logging
from datetime import date

import dagster as dg

from campaign_pipeline import pipeline, quality, schemas
from campaign_pipeline.orchestration.resources import CampaignStorageResource, CinnoxResource
from campaign_pipeline.windows import PartitionWindow

progress_log = logging.getLogger("campaign_pipeline.progress")
RAW_RESPONSES_KEY = dg.AssetKey("raw_campaign_responses")
VIEWS_KEY = dg.AssetKey("delivery_rate_views")
TABLE_KEYS = {name: dg.AssetKey(name) for name in schemas.TABLES}
GROUP = "cinnox_campaigns"


def windows_of(context: dg.AssetExecutionContext, tz_name: str) -> list[PartitionWindow]:
    """The partition windows this run covers (one day, or a range in a single-run backfill)."""
    return [PartitionWindow.for_day(date.fromisoformat(key), tz_name) for key in context.partition_keys]


def check_evaluation(outcome: quality.CheckOutcome, partition_key: str) -> dg.AssetCheckEvaluation:
    """A partitioned Dagster check evaluation from a :class:`quality.CheckOutcome`."""
    return dg.AssetCheckEvaluation(
        asset_key=TABLE_KEYS[outcome.spec.table],
        check_name=outcome.spec.name,
        passed=outcome.passed,
        metadata={key: dg.MetadataValue.json(value) if isinstance(value, (dict, list)) else value
                  for key, value in outcome.metadata.items()},
        severity=dg.AssetCheckSeverity[outcome.severity],
        description=outcome.description,
        blocking=outcome.spec.blocking,
        partition=partition_key,
    )


RAW_DESCRIPTION = (
    "One gzip NDJSON file per day under lake/raw/date=YYYY-MM-DD/: one line per CINNOX API response page "
    "(the day's summary pages, then each campaign's detail pages), records kept verbatim (pseudonymized with "
    "CAMPAIGN_PII_MODE=hash) so a day can be re-split without calling the API."
)


def build_assets(
    partitions: dg.DailyPartitionsDefinition,
    rejected_threshold: float = quality.DEFAULT_REJECTED_RATIO_THRESHOLD,
) -> list[dg.AssetsDefinition]:
    """The partitioned assets of the pipeline (and their checks), for the given daily partitions.

    One multi-asset step per run handles each day in a single streaming pass: fetch, land, type,
    write Parquet, replace the day in DuckDB, check. Selecting only the tables (``--resplit``)
    rebuilds them from the landed files without any API call.
    """
    tz_name = partitions.timezone

    @dg.multi_asset(
        specs=[
            dg.AssetSpec(RAW_RESPONSES_KEY, description=RAW_DESCRIPTION, group_name=GROUP, kinds={"json"},
                         skippable=True),
            *[
                dg.AssetSpec(key, deps=[RAW_RESPONSES_KEY], description=schemas.TABLES[name].grain,
                             group_name=GROUP, kinds={"parquet", "duckdb"}, skippable=True)
                for name, key in TABLE_KEYS.items()
            ],
        ],
        check_specs=[
            dg.AssetCheckSpec(spec.name, asset=TABLE_KEYS[spec.table], blocking=spec.blocking,
                              description=spec.description, partitions_def=partitions)
            for spec in quality.ALL_CHECKS
        ],
        partitions_def=partitions,
        backfill_policy=dg.BackfillPolicy.single_run(),
        can_subset=True,
        name="campaign_partition",
    )
    def campaign_partition(context: dg.AssetExecutionContext, cinnox: CinnoxResource, storage: CampaignStorageResource):
        """Fetch/land, split, publish and check each day of the run's partition range."""
        selected = context.selected_asset_keys
        fetch = RAW_RESPONSES_KEY in selected
        load = any(key in selected for key in TABLE_KEYS.values())
        selected_checks = context.selected_asset_check_keys
        storage.prepare()
        lake, warehouse = storage.lake(), storage.warehouse()
        windows = windows_of(context, tz_name)
        with cinnox.open_client() if fetch else contextlib.nullcontext() as client:
            for number, window in enumerate(windows, start=1):
                if fetch:
                    landed, day_tables, inserted = pipeline.ingest_day(
                        client, lake, warehouse, window, workers=cinnox.fetch_workers, progress=context.log.debug,
                        hasher=storage.recipient_hasher(), publish=load)
                    context.add_asset_metadata(landed.as_metadata(), asset_key=RAW_RESPONSES_KEY,
                                               partition_key=window.key)
                else:
                    day_tables = pipeline.split_day(lake, window)
                    inserted = pipeline.publish_day(lake, warehouse, day_tables)
                progress_log.info("day %d/%d done: %s %s", number, len(windows), window.key,
                                  {name: count for name, count in inserted.items()} or "landed")
                if not load:
                    continue
                _add_table_metadata(context, window, day_tables, inserted, pipeline.partition_rates(warehouse, window))
                outcomes = pipeline.check_day(warehouse, window, day_tables.stats,
                                              refetch_summary=lambda w=window: _refetch_summary(cinnox, w),
                                              rejected_threshold=rejected_threshold)
                for outcome in outcomes:
                    if dg.AssetCheckKey(TABLE_KEYS[outcome.spec.table], outcome.spec.name) in selected_checks:
                        yield check_evaluation(outcome, window.key)
        for key in (RAW_RESPONSES_KEY, *TABLE_KEYS.values()):  # topological order
            if key in selected:
                yield dg.MaterializeResult(asset_key=key)
        for check_key in selected_checks:  # evaluations were yielded per partition above
            yield dg.Output(None, output_name=context.assets_def.get_output_name_for_asset_check_key(check_key))

    @dg.asset(
        key=VIEWS_KEY,
        deps=list(TABLE_KEYS.values()),
        partitions_def=partitions,
        backfill_policy=dg.BackfillPolicy.single_run(),
        group_name=GROUP,
        kinds={"duckdb", "sql"},
        description="The analyst views over the warehouse (campaign_pipeline/sql/*.sql), refreshed after loads; "
                    "the materialization previews the latest days' delivery rates.",
    )
    def delivery_rate_views(storage: CampaignStorageResource) -> dg.MaterializeResult:
        applied, preview = pipeline.refresh_views(storage.warehouse())
        return dg.MaterializeResult(metadata={"views": dg.MetadataValue.json(applied),
                                              "latest_days": dg.MetadataValue.md(preview)})

    return [campaign_partition, delivery_rate_views]


def _add_table_metadata(
    context: dg.AssetExecutionContext, window: PartitionWindow, day_tables, inserted, rates
) -> None:
    stats = day_tables.stats.as_metadata()
    for name, key in TABLE_KEYS.items():
        metadata: dict = {"dagster/row_count": inserted[name]}
        for rate, value in rates.get(name, {}).items():
            if value is not None:  # numeric metadata, so the UI plots it across partitions
                metadata[rate] = dg.MetadataValue.float(float(value))
        if name in (schemas.CAMPAIGNS.name, schemas.REJECTED_RECORDS.name):
            metadata.update({k: v for k, v in stats.items() if isinstance(v, int)})
            metadata["rejected_by_reason"] = dg.MetadataValue.json(stats["rejected_by_reason"])
            metadata["unknown_fields"] = dg.MetadataValue.json(stats["unknown_fields"])
        context.add_asset_metadata(metadata, asset_key=key, partition_key=window.key)


def _refetch_summary(cinnox: CinnoxResource, window: PartitionWindow) -> list:
    with cinnox.open_client() as client:
        return [record for page in client.iter_summary_pages(window.start_utc, window.end_utc)
                for record in page.records]
