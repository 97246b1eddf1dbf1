"""Dagster assets: thin wrappers that map a partition range onto :mod:`campaign_pipeline.pipeline`."""

from __future__ import annotations

from datetime import date

import dagster as dg

from campaign_pipeline import pipeline, schemas
from campaign_pipeline.orchestration.resources import CampaignStorageResource, CinnoxResource
from campaign_pipeline.windows import PartitionWindow

RAW_RESPONSES_KEY = dg.AssetKey("raw_campaign_responses")
TABLE_KEYS = {name: dg.AssetKey(name) for name in schemas.TABLES}
GROUP = "cinnox_campaigns"


def windows_of(context: dg.AssetExecutionContext, tz_name: str) -> list[PartitionWindow]:
    """The partition windows this run covers (one day, or a range in a single-run backfill)."""
    return [PartitionWindow.for_day(date.fromisoformat(key), tz_name) for key in context.partition_keys]


def build_assets(partitions: dg.DailyPartitionsDefinition) -> list[dg.AssetsDefinition]:
    """The partitioned assets of the pipeline, for the given daily partitions."""
    tz_name = partitions.timezone
    backfill_policy = dg.BackfillPolicy.single_run()

    @dg.asset(
        key=RAW_RESPONSES_KEY,
        partitions_def=partitions,
        backfill_policy=backfill_policy,
        group_name=GROUP,
        kinds={"json"},
        description=(
            "One gzip NDJSON file per day under lake/raw/date=YYYY-MM-DD/: one line per CINNOX API "
            "response page (the day's summary pages, then each campaign's detail pages), records kept "
            "verbatim so a day can be re-split without calling the API."
        ),
    )
    def raw_campaign_responses(
        context: dg.AssetExecutionContext, cinnox: CinnoxResource, storage: CampaignStorageResource
    ) -> dg.MaterializeResult:
        storage.prepare()
        lake = storage.lake()
        with cinnox.open_client() as client:
            for window in windows_of(context, tz_name):
                landed = pipeline.land_day(client, lake, window, workers=cinnox.fetch_workers,
                                           progress=context.log.debug)
                context.log.info(f"landed {window.key}: {landed.records} records in {landed.pages} pages")
                context.add_asset_metadata(landed.as_metadata(), partition_key=window.key)
        return dg.MaterializeResult()

    @dg.multi_asset(
        specs=[
            dg.AssetSpec(key, deps=[RAW_RESPONSES_KEY], description=schemas.TABLES[name].grain,
                         group_name=GROUP, kinds={"parquet", "duckdb"})
            for name, key in TABLE_KEYS.items()
        ],
        partitions_def=partitions,
        backfill_policy=backfill_policy,
        name="campaign_tables",
    )
    def campaign_tables(context: dg.AssetExecutionContext, storage: CampaignStorageResource):
        """Split each landed day into typed tables; write Parquet; replace the day in DuckDB."""
        lake, warehouse = storage.lake(), storage.warehouse()
        for window in windows_of(context, tz_name):
            day_tables = pipeline.split_day(lake, window)
            inserted = pipeline.publish_day(lake, warehouse, day_tables)
            context.log.info(f"published {window.key}: {inserted}")
            stats = day_tables.stats.as_metadata()
            for name, key in TABLE_KEYS.items():
                metadata = {"dagster/row_count": inserted[name]}
                if name == schemas.CAMPAIGNS.name or name == schemas.REJECTED_RECORDS.name:
                    metadata.update({k: v for k, v in stats.items() if isinstance(v, int)})
                    metadata["rejected_by_reason"] = dg.MetadataValue.json(stats["rejected_by_reason"])
                    metadata["unknown_fields"] = dg.MetadataValue.json(stats["unknown_fields"])
                context.add_asset_metadata(metadata, asset_key=key, partition_key=window.key)
        for key in TABLE_KEYS.values():
            yield dg.MaterializeResult(asset_key=key)

    return [raw_campaign_responses, campaign_tables]
