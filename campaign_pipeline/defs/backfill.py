"""Run the partitioned job for a date range through Dagster, in this process, as one run."""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date

import dagster as dg
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG

from campaign_pipeline.defs.definitions import build_definitions
from campaign_pipeline.defs.schedules import JOB_NAME

log = logging.getLogger(__name__)


@dataclass
class BackfillOutcome:
    """How a backfill run ended."""

    success: bool
    run_id: str
    failure: str | None
    materializations: int
    failed_checks: list[str]
    warned_checks: list[str]
    #: :func:`campaign_pipeline.errors.error_kind` of the failure (``None`` on success).
    failure_kind: str | None = None
    #: The signal that interrupted the run (``signal.SIGINT`` or ``SIGTERM``), else ``None``.
    interrupted_by: int | None = None


def run_backfill(
    start: date,
    end: date,
    resplit_only: bool = False,
    allow_shrink: bool = False,
    instance: dg.DagsterInstance | None = None,
    dagster_log_level: str = "CRITICAL",
    lock_wait_s: float | None = None,
) -> BackfillOutcome:
    """Materialize every partitioned asset (and its checks) for ``start..end`` inclusive, as one run.

    Configuration comes from the process environment (resources resolve ``dg.EnvVar`` from it).
    With ``resplit_only`` the tables are rebuilt from the landed files without any API call;
    ``allow_shrink`` lets a re-load publish fewer campaigns or messages than a published day;
    ``lock_wait_s`` bounds the wait for a warehouse another process holds. Dagster turns SIGINT
    and SIGTERM alike into an interrupted step; ``interrupted_by`` says which signal it was.
    """
    defs = build_definitions(os.environ)
    job = defs.resolve_job_def(JOB_NAME)
    run_config: dict = {"loggers": {"console": {"config": {"log_level": dagster_log_level}}}}
    options = {"resplit": resplit_only, "allow_shrink": allow_shrink, "lock_wait_s": lock_wait_s}
    run_config["ops"] = {node.name: {"config": options} for node in job.graph.node_defs}
    own_instance = instance is None
    if own_instance:
        instance = dg.DagsterInstance.get() if os.environ.get("DAGSTER_HOME") else dg.DagsterInstance.ephemeral()
    try:
        with _signals_seen() as signals:
            result = job.execute_in_process(
                instance=instance,
                raise_on_error=False,
                tags={ASSET_PARTITION_RANGE_START_TAG: start.isoformat(),
                      ASSET_PARTITION_RANGE_END_TAG: end.isoformat()},
                # Dagster's own console output (stack traces included) stays quiet unless asked for: the
                # caller reports the one-line reason, and the event log keeps every detail.
                run_config=run_config,
            )
    finally:
        if own_instance and not os.environ.get("DAGSTER_HOME"):
            instance.dispose()
    failure, failure_kind, interrupted_by = None, None, None
    for event in result.all_events:
        if event.is_step_failure or event.event_type == dg.DagsterEventType.RUN_FAILURE:
            data = event.event_specific_data
            error = getattr(data, "error", None)
            if error is not None:
                if _interrupted(error):
                    interrupted_by = signal.SIGTERM if signal.SIGTERM in signals else signal.SIGINT
                user_data = getattr(data, "user_failure_data", None)
                failure = (user_data.description if user_data is not None and user_data.description
                           else _root_message(error))
                kind = user_data.metadata.get("error_kind") if user_data is not None else None
                failure_kind = getattr(kind, "value", kind) or "failed"
                break
    evaluations = [ev.event_specific_data for ev in result.all_events
                   if ev.event_type == dg.DagsterEventType.ASSET_CHECK_EVALUATION]
    failed_checks, warned_checks = [], []
    for evaluation in evaluations:
        if not evaluation.passed:
            name = f"{evaluation.asset_key.to_user_string()}:{evaluation.check_name}"
            target = failed_checks if evaluation.severity == dg.AssetCheckSeverity.ERROR else warned_checks
            if name not in target:
                target.append(name)
    return BackfillOutcome(
        success=result.success,
        run_id=result.run_id,
        failure=failure,
        materializations=len(result.get_asset_materialization_events()),
        failed_checks=failed_checks,
        warned_checks=warned_checks,
        failure_kind=failure_kind,
        interrupted_by=interrupted_by,
    )


@contextmanager
def _signals_seen() -> Iterator[list[int]]:
    """The numbers of the signals the process receives inside the block, whoever handles them
    (Dagster maps SIGTERM to its SIGINT handler; ``signal.set_wakeup_fd`` still sees which)."""
    seen: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield seen
        return
    read_end, write_end = socket.socketpair()
    read_end.setblocking(False)
    write_end.setblocking(False)
    previous = signal.set_wakeup_fd(write_end.fileno(), warn_on_full_buffer=False)
    try:
        yield seen
    finally:
        signal.set_wakeup_fd(previous)
        try:
            seen.extend(read_end.recv(4096))
        except BlockingIOError:
            pass
        read_end.close()
        write_end.close()


_INTERRUPTS = {"KeyboardInterrupt", "Terminated", "DagsterExecutionInterruptedError"}


def _interrupted(error) -> bool:
    """True if a serialized Dagster error is (or was caused by) an interrupt."""
    while error is not None:
        if error.cls_name in _INTERRUPTS:
            return True
        error = error.cause or getattr(error, "context", None)
    return False


def _root_message(error) -> str:
    """The innermost cause of a serialized Dagster error, as one line."""
    while error.cause is not None:
        error = error.cause
    lines = [line.strip() for line in error.message.strip().splitlines() if line.strip()]
    return " ".join(lines) if lines else error.cls_name or "unknown error"
