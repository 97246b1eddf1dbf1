"""Dagster assets: thin wrappers that map a partition range onto :mod:`campaign_pipeline.pipeline`.

One asset set per CINNOX app. A single-app deployment has the plain keys (``raw_campaign_responses``,
``campaigns``, ``sms_messages``, ``whatsapp_messages``, ``rejected_records``); with several apps
(``CAMPAIGN_APPS``) each set is prefixed with the app's key. All sets write the same DuckDB tables,
told apart by their ``app_id`` column. ``delivery_rate_views`` is shared.
"""

import contextlib
import logging
from dataclasses import dataclass
from datetime import date

import dagster as dg

from campaign_pipeline import pipeline, quality, schemas
from campaign_pipeline.orchestration.resources import CampaignStorageResource, CinnoxResource
from campaign_pipeline.windows import PartitionWindow

progress_log = logging.getLogger("campaign_pipeline.progress")
RAW_RESPONSES_NAME = "raw_campaign_responses"
VIEWS_KEY = dg.AssetKey("delivery_rate_views")
GROUP = "cinnox_campaigns"
WRITER_POOL = "cinnox_api"
RAW_DESCRIPTION = (
    "One zstd-compressed NDJSON file per day under lake/raw/date=YYYY-MM-DD/: one line per CINNOX API response page "
    "(the day's summary pages, then each campaign's detail pages), bodies kept verbatim (records pseudonymized "
    "with CAMPAIGN_PII_MODE=hash) so a day can be re-split without calling the API."
)


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


def windows_of(context: dg.AssetExecutionContext, tz_name: str) -> list[PartitionWindow]:
    """The partition windows this run covers (one day, or a range in a single-run backfill)."""
    return [PartitionWindow.for_day(date.fromisoformat(key), tz_name) for key in context.partition_keys]


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


def build_app_assets(
    partitions: dg.DailyPartitionsDefinition,
    keys: AppAssetKeys,
    cinnox_resource_key: str = "cinnox",
    rejected_threshold: float = quality.DEFAULT_REJECTED_RATIO_THRESHOLD,
) -> dg.AssetsDefinition:
    """One app's partitioned assets and checks, computed by a single step per run.

    The step handles each day in one streaming pass: fetch, land, type, write Parquet, replace the
    (app, day) in DuckDB, check. Selecting only the tables (``--resplit``) rebuilds them from the
    landed files without any API call.
    """
    tz_name = partitions.timezone
    table_keys = keys.tables
    name = "_".join([*keys.prefix, "campaign_partition"])

    @dg.multi_asset(
        specs=[
            dg.AssetSpec(keys.raw, description=RAW_DESCRIPTION, group_name=GROUP, kinds={"json"}, skippable=True),
            *[
                dg.AssetSpec(key, deps=[keys.raw], description=schemas.TABLES[table].grain,
                             group_name=GROUP, kinds={"parquet", "duckdb"}, skippable=True)
                for table, key in table_keys.items()
            ],
        ],
        check_specs=[
            dg.AssetCheckSpec(spec.name, asset=table_keys[spec.table], blocking=spec.blocking,
                              description=spec.description, partitions_def=partitions)
            for spec in quality.ALL_CHECKS
        ],
        partitions_def=partitions,
        backfill_policy=dg.BackfillPolicy.single_run(),
        can_subset=True,
        name=name,
        required_resource_keys={cinnox_resource_key, "storage"},
        # One slot: keeps the fleet inside the API's request budget and DuckDB's single writer.
        pool=WRITER_POOL,
    )
    def campaign_partition(context: dg.AssetExecutionContext):
        """Fetch/land, split, publish and check each day of the run's partition range."""
        cinnox: CinnoxResource = getattr(context.resources, cinnox_resource_key)
        storage: CampaignStorageResource = context.resources.storage
        selected = context.selected_asset_keys
        fetch = keys.raw in selected
        load = any(key in selected for key in table_keys.values())
        selected_checks = context.selected_asset_check_keys
        storage.prepare()
        lake, warehouse, app = storage.lake(), storage.warehouse(), cinnox.app_ref()
        windows = windows_of(context, tz_name)
        with cinnox.open_client() if fetch else contextlib.nullcontext() as client:
            days = pipeline.process_days(
                windows, lake, warehouse, app, client, load=load, workers=cinnox.fetch_workers,
                hasher=storage.recipient_hasher() if fetch else None,
                refetch_summary=lambda window: _refetch_summary(cinnox, client, window),
                rejected_threshold=rejected_threshold, progress=context.log.debug)
            # closing(): a failure here still closes the generator (and its DuckDB session) at once
            with contextlib.closing(days):
                for number, day in enumerate(days, start=1):
                    window = day.window
                    if day.landed is not None:
                        context.add_asset_metadata(day.landed.as_metadata(), asset_key=keys.raw, partition_key=window.key)
                    if day.published is None:
                        progress_log.info("day %d/%d landed: %s", number, len(windows), window.key)
                        continue
                    published = day.published
                    progress_log.info("day %d/%d done: %s%s %s", number, len(windows), window.key,
                                      "" if app.key == "default" else f" [{app.key}]", published.inserted)
                    _add_table_metadata(context, table_keys, window, day.stats, published.inserted, published.rates)
                    for outcome in published.outcomes:
                        asset_key = table_keys[outcome.spec.table]
                        if dg.AssetCheckKey(asset_key, outcome.spec.name) in selected_checks:
                            yield check_evaluation(outcome, asset_key, window.key)
        for key in (keys.raw, *table_keys.values()):  # topological order
            if key in selected:
                yield dg.MaterializeResult(asset_key=key)
        for check_key in selected_checks:  # evaluations were yielded per partition above
            yield dg.Output(None, output_name=context.assets_def.get_output_name_for_asset_check_key(check_key))

    return campaign_partition


def build_views_asset(partitions: dg.DailyPartitionsDefinition, table_keys: list[dg.AssetKey]) -> dg.AssetsDefinition:
    """The shared analyst views, refreshed after every load."""

    @dg.asset(
        key=VIEWS_KEY,
        deps=table_keys,
        partitions_def=partitions,
        backfill_policy=dg.BackfillPolicy.single_run(),
        group_name=GROUP,
        kinds={"duckdb", "sql"},
        pool=WRITER_POOL,
        description="The analyst views over the warehouse (campaign_pipeline/sql/*.sql), refreshed after loads; "
                    "the materialization previews the latest days' delivery rates.",
    )
    def delivery_rate_views(storage: CampaignStorageResource) -> dg.MaterializeResult:
        applied, preview = pipeline.refresh_views(storage.warehouse())
        return dg.MaterializeResult(metadata={"views": dg.MetadataValue.json(applied),
                                              "latest_days": dg.MetadataValue.md(preview)})

    return delivery_rate_views


def build_assets(
    partitions: dg.DailyPartitionsDefinition,
    app_resource_keys: dict[str, str] | None = None,
    rejected_threshold: float = quality.DEFAULT_REJECTED_RATIO_THRESHOLD,
) -> list[dg.AssetsDefinition]:
    """Every asset: one set per app (``app key -> cinnox resource key``; default one unprefixed app)
    plus the shared views."""
    app_resource_keys = app_resource_keys or {"default": "cinnox"}
    single = list(app_resource_keys) == ["default"]
    assets, tables = [], []
    for app_key, resource_key in app_resource_keys.items():
        keys = AppAssetKeys(() if single else (app_key,))
        assets.append(build_app_assets(partitions, keys, resource_key, rejected_threshold))
        tables.extend(keys.tables.values())
    assets.append(build_views_asset(partitions, tables))
    return assets


def _add_table_metadata(context, table_keys, window: PartitionWindow, split_stats, inserted, rates) -> None:
    stats = split_stats.as_metadata()
    for name, key in table_keys.items():
        metadata: dict = {"dagster/row_count": inserted[name]}
        for rate, value in rates.get(name, {}).items():
            if value is not None:  # numeric metadata, so the UI plots it across partitions
                metadata[rate] = dg.MetadataValue.float(float(value))
        if name in (schemas.CAMPAIGNS.name, schemas.REJECTED_RECORDS.name):
            metadata.update({k: v for k, v in stats.items() if isinstance(v, int)})
            metadata["rejected_by_reason"] = dg.MetadataValue.json(stats["rejected_by_reason"])
            metadata["unknown_fields"] = dg.MetadataValue.json(stats["unknown_fields"])
        context.add_asset_metadata(metadata, asset_key=key, partition_key=window.key)


def _refetch_summary(cinnox: CinnoxResource, client, window: PartitionWindow) -> list:
    """The window's summary records again, through the run's client (its rate limiter included)
    when the run fetches, else through a client opened for the purpose."""
    if client is None:
        with cinnox.open_client() as own_client:
            return _refetch_summary(cinnox, own_client, window)
    return [record for page in client.iter_summary_pages(window.start_utc, window.end_utc) for record in page.records]
