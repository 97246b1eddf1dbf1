"""Run a date range without Dagster: the pipeline the assets run, for a CLI backfill with no DAGSTER_HOME.

Without ``DAGSTER_HOME`` a Dagster run goes to a throwaway in-memory instance: nothing it records
outlives the process, yet creating it and running the job cost about 3 s (imports of Dagster's
storage, an in-memory SQLite event log, run and step machinery). ``campaign-pipeline backfill``
then calls :func:`run_range` instead, which drives the same :func:`pipeline.process_days` and
:func:`pipeline.refresh_views` as the ``campaign_partition`` and ``delivery_rate_views`` assets,
with the same checks and the same meaning of a failed blocking check (the views are not
refreshed, the run fails). With ``DAGSTER_HOME`` set (or ``--dagster``) the CLI runs the Dagster
job, so the run and its materializations are recorded in that instance.

:func:`open_client` is also what the Dagster resource calls, so both paths build clients alike.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date, timedelta

from campaign_pipeline import config as pipeline_config
from campaign_pipeline import pipeline, quality
from campaign_pipeline.client import CinnoxClient
from campaign_pipeline.errors import CampaignPipelineError
from campaign_pipeline.lake import Lake
from campaign_pipeline.warehouse import Warehouse
from campaign_pipeline.windows import PartitionWindow

progress_log = logging.getLogger("campaign_pipeline.progress")


@dataclass(frozen=True)
class SimulatorKnobs:
    """The embedded simulator's data settings (``CAMPAIGN_SIM_*``) for one app."""

    seed: int = 7
    campaigns_per_day: int = 8
    recipients_per_campaign: int = 150

    @classmethod
    def from_env(cls, env: Mapping[str, str], app_index: int = 0) -> SimulatorKnobs:
        """The knobs for the ``app_index``-th app: each app gets its own seed."""
        return cls(
            seed=int(env.get("CAMPAIGN_SIM_SEED") or 7) + app_index,
            campaigns_per_day=int(env.get("CAMPAIGN_SIM_CAMPAIGNS_PER_DAY") or 8),
            recipients_per_campaign=int(env.get("CAMPAIGN_SIM_RECIPIENTS_PER_CAMPAIGN") or 150),
        )


def simulator_app_id(app_key: str) -> str:
    """The App ID the embedded simulator serves for ``app_key``."""
    return "sim-app" if app_key == pipeline_config.DEFAULT_APP_KEY else f"sim-{app_key}"


@contextmanager
def open_client(
    cfg: pipeline_config.PipelineConfig, app_key: str, simulator: SimulatorKnobs | None = None
) -> Iterator[CinnoxClient]:
    """A client for app ``app_key`` of a validated config (``cfg`` carries that app's credentials);
    with ``source=simulator`` an embedded simulator serves it for as long as the block runs."""
    if cfg.source == pipeline_config.SOURCE_SIMULATOR:
        from campaign_pipeline.simulator import SimulatorConfig, SimulatorServer

        knobs = simulator or SimulatorKnobs()
        sim_config = SimulatorConfig(
            app_id=simulator_app_id(app_key),
            seed=knobs.seed,
            campaigns_per_day=knobs.campaigns_per_day,
            recipients_per_campaign=knobs.recipients_per_campaign,
        )
        with SimulatorServer(sim_config) as server:
            with CinnoxClient(server.base_url, server.app_id, server.token, **cfg.client_options()) as client:
                yield client
        return
    with CinnoxClient(cfg.base_url, cfg.app_id, cfg.app_token, **cfg.client_options()) as client:
        yield client


@dataclass
class RangeOutcome:
    """How a :func:`run_range` ended: the first failure (one line) and the checks that failed or warned."""

    success: bool = True
    failure: str | None = None
    days_published: int = 0
    failed_checks: list[str] = field(default_factory=list)
    warned_checks: list[str] = field(default_factory=list)


def run_range(
    start: date, end: date, env: Mapping[str, str] | None = None, resplit_only: bool = False
) -> RangeOutcome:
    """Land (unless ``resplit_only``), publish and check every day of ``start..end`` for every
    app, then refresh the views, without Dagster. Configuration comes from ``env``
    (``os.environ`` by default), validated as for a Dagster run."""
    env = os.environ if env is None else env
    cfg = pipeline_config.PipelineConfig.from_env(env)
    lake = Lake(cfg.lake_root, s3_endpoint_url=env.get("AWS_ENDPOINT_URL") or None,
                s3_region=env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or None)
    warehouse = Warehouse(cfg.warehouse_path)
    hasher = pipeline_config.recipient_hasher(cfg)
    threshold = float(env.get("CAMPAIGN_REJECTED_THRESHOLD") or quality.DEFAULT_REJECTED_RATIO_THRESHOLD)
    windows = [PartitionWindow.for_day(start + timedelta(days=n), cfg.partition_tz)
               for n in range((end - start).days + 1)]
    outcome = RangeOutcome()
    blocked = False
    for index, app_key in enumerate(cfg.apps):
        app_cfg = pipeline_config.app_config(cfg, app_key, env)
        app = pipeline.AppRef(app_key, simulator_app_id(app_key) if cfg.source == pipeline_config.SOURCE_SIMULATOR
                              else app_cfg.app_id)
        knobs = SimulatorKnobs.from_env(env, index)
        try:
            with (contextlib.nullcontext() if resplit_only else open_client(app_cfg, app_key, knobs)) as client:
                days = pipeline.process_days(
                    windows, lake, warehouse, app, client, workers=cfg.fetch_workers,
                    hasher=None if resplit_only else hasher, rejected_threshold=threshold,
                    refetch_summary=lambda window, c=client, a=app_cfg, k=app_key, s=knobs: _refetch(c, a, k, s, window))
                with contextlib.closing(days):  # closed (its DuckDB session too) even on a failure below
                    for number, day in enumerate(days, start=1):
                        outcome.days_published += 1
                        progress_log.info("day %d/%d done: %s%s %s", number, len(windows), day.window.key,
                                          "" if app_key == pipeline_config.DEFAULT_APP_KEY else f" [{app_key}]",
                                          day.published.inserted)
                        blocked |= _collect_checks(outcome, app_key, day)
        except Exception as error:  # noqa: BLE001 -- like a failed Dagster step: one line, the other apps still run
            outcome.success = False
            text = str(error) if isinstance(error, CampaignPipelineError) else f"{type(error).__name__}: {error}"
            outcome.failure = outcome.failure or " ".join(text.split())
    if blocked:
        outcome.success = False
        outcome.failure = outcome.failure or "a blocking asset check failed; the views were not refreshed"
    if outcome.success:
        pipeline.refresh_views(warehouse, preview_days=0)  # the CLI prints no preview: no reader to open
    return outcome


def _collect_checks(outcome: RangeOutcome, app_key: str, day: pipeline.DayOutcome) -> bool:
    """Add the day's failed and warned checks (named like the Dagster asset checks); True if one blocks."""
    blocked = False
    prefix = "" if app_key == pipeline_config.DEFAULT_APP_KEY else f"{app_key}/"
    for check in day.published.outcomes:
        if check.passed:
            continue
        name = f"{prefix}{check.spec.table}:{check.spec.name}"
        failed = check.severity == "ERROR"
        target = outcome.failed_checks if failed else outcome.warned_checks
        if name not in target:
            target.append(name)
        blocked |= failed and check.spec.blocking
    return blocked


def _refetch(client: CinnoxClient | None, cfg, app_key: str, knobs: SimulatorKnobs, window: PartitionWindow) -> list:
    if client is None:  # a re-split makes no API call unless a check needs the summary again
        with open_client(cfg, app_key, knobs) as own_client:
            return _refetch(own_client, cfg, app_key, knobs, window)
    return [record for page in client.iter_summary_pages(window.start_utc, window.end_utc) for record in page.records]
