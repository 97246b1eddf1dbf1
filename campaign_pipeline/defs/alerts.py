"""Turning red and telling someone: the message tables' freshness policy and the run-failure alert.

* **Freshness.** ``sms_messages`` and ``whatsapp_messages`` (every app's) carry a Dagster
  :class:`~dagster.FreshnessPolicy`: a day should be loaded within ``CAMPAIGN_FRESHNESS_HOURS`` hours
  after it ends. Dagster's freshness daemon judges an asset by its latest materialization (of any
  partition), so the policy is a time window of one day plus those hours: with the daily schedule
  loading the latest complete day just after midnight, the tables turn red (``FAIL``) when a day has
  gone ``CAMPAIGN_FRESHNESS_HOURS`` hours past its end without a load (e.g. the daemon or the schedule
  stopped).
* **Failed runs.** :func:`build_run_failure_sensor` is a ``run_failure_sensor``, running by default,
  that posts one JSON document per failed run of the pipeline (run id, job, partition range, the
  one-line error of each failed step) to ``CAMPAIGN_ALERT_WEBHOOK_URL``; unset, it writes the same
  facts to the sensor's log (the daemon's output and the tick's log in the UI). A webhook that fails
  is logged, never raised. The URL itself is a secret (a Slack-style webhook URL is its own
  credential): it is never logged, and neither is any configured secret in the payload.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from datetime import timedelta

import dagster as dg
import requests
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG

from campaign_pipeline.config import PipelineConfig
from campaign_pipeline.errors import one_line
from campaign_pipeline.model import schemas

FRESHNESS_TABLES = (schemas.TABLES["sms_messages"].name, schemas.TABLES["whatsapp_messages"].name)
SENSOR_NAME = "campaign_run_failure_alert"
#: (connect, read) seconds for the webhook POST: a slow receiver must not hold the sensor's tick.
WEBHOOK_TIMEOUT_S = (3.05, 10.0)
PARTITION_TAG = "dagster/partition"
_REDACTED = "<redacted>"
_MIN_SECRET_CHARS = 6

log = logging.getLogger(__name__)


# -- freshness ------------------------------------------------------------------------------------


def freshness_policy(hours: float) -> dg.FreshnessPolicy:
    """The message tables' policy: latest materialization at most one day plus ``hours`` old.

    One day, because a daily partition is loaded after it ends (the daily schedule loads the latest
    complete day at 00:15): when the latest load is one day plus ``hours`` old, the day that ended
    since then has gone ``hours`` hours unloaded.
    """
    return dg.FreshnessPolicy.time_window(fail_window=timedelta(days=1, hours=hours))


def with_freshness_policy(assets: Iterable[dg.AssetsDefinition], hours: float) -> list[dg.AssetsDefinition]:
    """``assets`` with :func:`freshness_policy` on every ``sms_messages`` and ``whatsapp_messages``
    asset (the plain keys, or each app's ``<app>/...`` keys); other assets are unchanged."""
    policy = freshness_policy(hours)

    def apply(spec: dg.AssetSpec) -> dg.AssetSpec:
        if spec.key.path[-1] in FRESHNESS_TABLES:
            return dg.apply_freshness_policy(spec, policy)
        return spec

    return list(dg.map_asset_specs(apply, list(assets)))


# -- the failure alert ---------------------------------------------------------------------------


def _root_message(error) -> str:
    """The innermost cause of a serialized Dagster error, as one line."""
    while getattr(error, "cause", None) is not None:
        error = error.cause
    return one_line(error.message or "") or error.cls_name or "unknown error"


def step_failures(events: Sequence[dg.DagsterEvent]) -> list[dict]:
    """One ``{"step", "error", "error_kind"}`` per STEP_FAILURE event: our steps fail with a one-line
    ``dg.Failure`` (its description and ``error_kind`` metadata); anything else with its root cause."""
    failures = []
    for event in events:
        data = event.event_specific_data
        user = getattr(data, "user_failure_data", None)
        kind = user.metadata.get("error_kind") if user is not None else None
        error = getattr(data, "error", None)
        if user is not None and user.description:
            message = one_line(user.description or "")
        elif error is not None:
            message = _root_message(error)
        else:
            message = one_line(event.message or "")
        failures.append({"step": event.step_key, "error": message, "error_kind": getattr(kind, "value", kind)})
    return failures


def failure_payload(run: dg.DagsterRun, run_error: str | None, steps: list[dict],
                    secrets: Iterable[str] = ()) -> dict:
    """The JSON document posted for a failed run: what failed, where, for which days; ``text`` is a
    one-line summary (the field Slack-compatible webhooks display). Every string in ``secrets`` is
    replaced by ``<redacted>`` wherever it appears."""
    start = run.tags.get(ASSET_PARTITION_RANGE_START_TAG)
    end = run.tags.get(ASSET_PARTITION_RANGE_END_TAG)
    partition = run.tags.get(PARTITION_TAG)
    days = f"{start}..{end}" if start else (partition or "no partition")
    first_error = next((step["error"] for step in steps if step["error"]), None) or one_line(run_error or "")
    payload = {
        "text": f"campaign_pipeline: run {run.run_id} of {run.job_name} failed ({days}): {first_error}",
        "event": "run_failure",
        "run_id": run.run_id,
        "job": run.job_name,
        "partition": partition,
        "partition_range_start": start,
        "partition_range_end": end,
        "error": one_line(run_error or ""),
        "failed_steps": steps,
    }
    return _redact(payload, [s for s in secrets if s and len(s) >= _MIN_SECRET_CHARS])


def _redact(value, secrets: list[str]):
    if isinstance(value, str):
        for secret in sorted(secrets, key=len, reverse=True):
            value = value.replace(secret, _REDACTED)
        return value
    if isinstance(value, dict):
        return {key: _redact(item, secrets) for key, item in value.items()}
    if isinstance(value, list):
        return [_redact(item, secrets) for item in value]
    return value


def post_alert(url: str, payload: dict, logger: logging.Logger | logging.LoggerAdapter = log,
               session: requests.Session | None = None) -> bool:
    """POST ``payload`` as JSON to ``url`` once (timeout :data:`WEBHOOK_TIMEOUT_S`); True on a 2xx answer.

    Never raises: a failure is logged on ``logger`` with the exception's class or the HTTP status,
    never with the URL (a webhook URL is a credential, and ``requests`` puts it in its messages).
    """
    try:
        response = (session or requests).post(url, json=payload, timeout=WEBHOOK_TIMEOUT_S)
    except requests.RequestException as error:
        logger.error("run failure alert for run %s not delivered: %s posting to CAMPAIGN_ALERT_WEBHOOK_URL",
                     payload.get("run_id"), type(error).__name__)
        return False
    if not 200 <= response.status_code < 300:
        logger.error("run failure alert for run %s not delivered: CAMPAIGN_ALERT_WEBHOOK_URL answered HTTP %s",
                     payload.get("run_id"), response.status_code)
        return False
    logger.info("run failure alert for run %s posted to CAMPAIGN_ALERT_WEBHOOK_URL (HTTP %s)",
                payload.get("run_id"), response.status_code)
    return True


def config_secrets(cfg: PipelineConfig) -> list[str]:
    """Every secret value of ``cfg`` (App Tokens, PII salt, webhook URL, the DuckLake catalog's
    password), to keep out of alerts."""
    from campaign_pipeline.storage.warehouse import uri_passwords

    values = [app.app_token for app in cfg.apps] + [cfg.pii_salt, cfg.alert_webhook_url]
    values += uri_passwords(cfg.warehouse_uri or "")
    return [value for value in values if value]


def is_pipeline_run(run: dg.DagsterRun, job_name: str, asset_keys: Iterable[dg.AssetKey]) -> bool:
    """True for a run of ``job_name``, or a run that materializes some of ``asset_keys`` (a UI
    materialization runs the implicit asset job, not ``job_name``)."""
    if run.job_name == job_name:
        return True
    return bool(run.asset_selection and set(run.asset_selection) & set(asset_keys))


def build_run_failure_sensor(cfg: PipelineConfig, job_name: str,
                             asset_keys: Iterable[dg.AssetKey]) -> dg.SensorDefinition:
    """The run-failure sensor of the code location: alerts on failed runs of ``job_name`` (and on
    failed materializations of ``asset_keys``); running by default.

    It watches every code location's runs (``monitor_all_code_locations``) because a CLI backfill
    recorded in the instance (``DAGSTER_HOME`` set) runs in-process and has no code-location origin:
    a sensor scoped to its own location would never see it. Runs of other jobs are skipped.
    """
    keys = frozenset(asset_keys)
    secrets = config_secrets(cfg)

    @dg.run_failure_sensor(
        name=SENSOR_NAME,
        monitor_all_code_locations=True,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=(f"Posts each failed run of {job_name} to CAMPAIGN_ALERT_WEBHOOK_URL as JSON "
                     "(logs it when the variable is unset)."),
    )
    def campaign_run_failure_alert(context: dg.RunFailureSensorContext):
        run = context.dagster_run
        if not is_pipeline_run(run, job_name, keys):
            return dg.SkipReason(f"run {run.run_id} of {run.job_name} is not a campaign_pipeline run")
        payload = failure_payload(run, context.failure_event.message,
                                  step_failures(context.get_step_failure_events()), secrets)
        if cfg.alert_webhook_url is None:
            context.log.warning("%s (not posted: CAMPAIGN_ALERT_WEBHOOK_URL is unset)", payload["text"])
            return None
        post_alert(cfg.alert_webhook_url, payload, context.log)
        return None  # the daemon records that the sensor acted on this run, in the run's event log

    return campaign_run_failure_alert
