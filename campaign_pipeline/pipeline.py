"""One partition's work, without Dagster: land the API pages, split them into tables, publish.

    land_day               CINNOX API -> raw landing file (summary pages, then detail pages in parallel),
                           typing each page as it arrives when given a splitter (one streaming pass)
    split_day              raw landing file -> typed Arrow tables (no API calls: a day can be re-split)
    publish_and_check_day  Arrow tables -> Parquet files (atomic) -> DuckDB (one transaction per day),
                           then the day's rates and checks
    process_days           a run's days in order: day N is published while day N+1 is fetched

Logs carry counts, partition keys and campaign ids only: never phone numbers, bodies or tokens.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from filelock import FileLock, Timeout

from campaign_pipeline import columnar, memory, quality, records, reporting, settings
from campaign_pipeline.client import CinnoxClient
from campaign_pipeline.errors import CampaignPipelineError
from campaign_pipeline.lake import Lake
from campaign_pipeline.pii import RecipientHasher
from campaign_pipeline.transform import DaySplitter, DayTables, SplitStats
from campaign_pipeline.warehouse import LARGE_LOAD_MIN_ROWS, Warehouse, WriterSession, ensure_views
from campaign_pipeline.windows import PartitionWindow

log = logging.getLogger(__name__)

ProgressCallback = Callable[[str], None]
#: Detail pages of one campaign typed together (fewer Arrow calls) while bounding the bodies held.
TYPING_BATCH_PAGES = 4
_STAGING_PREFIX = ".staging-"
_STAGING_OWNER_LOCK = ".owner.lock"


@dataclass(frozen=True)
class AppRef:
    """Which CINNOX app a day belongs to: ``key`` names its lake files, ``app_id`` fills the column."""

    key: str
    app_id: str


class LandingMissingError(CampaignPipelineError):
    """A re-split was asked for a day that was never landed."""


@dataclass
class LandingResult:
    """What one day's landing fetched: counts only, safe for metadata."""

    day: str
    campaigns_listed: int = 0
    campaigns_in_window: int = 0
    pages: int = 0
    records: int = 0
    seconds: float = 0.0
    requests: dict = field(default_factory=dict)

    def as_metadata(self) -> dict:
        """Plain values for Dagster metadata."""
        return {
            "campaigns_listed": self.campaigns_listed,
            "campaigns_in_window": self.campaigns_in_window,
            "pages": self.pages,
            "records": self.records,
            "seconds": round(self.seconds, 3),
            **{f"requests_{key}": value for key, value in self.requests.items()},
        }


def campaigns_in_window(summary_records: list, window: PartitionWindow) -> list[str]:
    """Ids of the summary records that belong to ``window`` (typeable, dated inside it), in order."""
    ids: list[str] = []
    seen: set[str] = set()
    for record in summary_records:
        try:
            row = records.parse_campaign(record)
        except records.RecordRejected:
            continue
        if window.contains_us(row["sent_at"]) and row["campaign_id"] not in seen:
            seen.add(row["campaign_id"])
            ids.append(row["campaign_id"])
    return ids


def land_day(
    client: CinnoxClient,
    lake: Lake,
    app: AppRef,
    window: PartitionWindow,
    workers: int = settings.DEFAULT_FETCH_WORKERS,
    progress: ProgressCallback | None = None,
    hasher: RecipientHasher | None = None,
    splitter: DaySplitter | None = None,
) -> LandingResult:
    """Fetch one day from the API into its raw landing file, replacing it atomically.

    Summary pages are fetched first and written first; then every in-window campaign's detail
    pages are fetched by ``workers`` threads and appended as they arrive. If anything fails, the
    previous landing file (if any) stays as it was. With a ``hasher`` (``CAMPAIGN_PII_MODE=hash``)
    detail records are pseudonymized before they are written. With a ``splitter``, every page is
    also typed as it arrives, so the day needs no second pass over the landing file.
    """
    started = time.monotonic()
    before = client.stats.as_dict()
    result = LandingResult(day=window.key)
    with lake.raw_writer(window.day, app.key) as writer:
        summary_records: list = []
        for page in client.iter_summary_pages(window.start_utc, window.end_utc):
            writer.write_page("summary", None, page.offset, page.records)
            summary_records.extend(page.records)
            if splitter is not None:
                splitter.add_summary_records(page.records)
        result.campaigns_listed = len(summary_records)
        # The splitter has already typed the summary; reuse its in-window campaigns.
        campaign_ids = (list(splitter.campaign_channels) if splitter is not None
                        else campaigns_in_window(summary_records, window))
        del summary_records
        result.campaigns_in_window = len(campaign_ids)
        write_lock = threading.Lock()
        done = 0

        # Without pseudonymization, detail bodies are decoded straight to Arrow in the fetch
        # threads (no GIL held) and landed byte for byte; only pages that are not clean are
        # decoded to dicts. A campaign's pages are typed a few at a time and the campaign is
        # de-duplicated when its last page is in, all in its fetch thread; the lock only orders
        # the landing file.
        decode = columnar.decode_detail_body if hasher is None and splitter is not None else None

        def add_pages(history_id: str, pages: list) -> None:
            typed = splitter.type_detail_pages(
                history_id, [page if isinstance(page, list) else page.decoded for page in pages],
                lambda index: pages[index].records)
            for typed_page in typed:
                splitter.add_typed_detail_page(typed_page)

        def fetch_campaign(history_id: str) -> None:
            nonlocal done
            pages: list = []  # at most TYPING_BATCH_PAGES, bodies kept until typed
            for page in client.iter_detail_pages(history_id, decode=decode):
                if page.decoded is not None:
                    with write_lock:
                        writer.write_response("detail", history_id, page.offset, page.body, page.row_count)
                    pages.append(page)
                else:
                    page_records = hasher.redact_page(page.records) if hasher is not None else page.records
                    with write_lock:
                        writer.write_page("detail", history_id, page.offset, page_records)
                    if splitter is not None:
                        pages.append(page_records)
                if splitter is not None and len(pages) >= TYPING_BATCH_PAGES:
                    add_pages(history_id, pages)
                    pages = []
            if splitter is not None:
                if pages:
                    add_pages(history_id, pages)
                splitter.finish_campaign(history_id)
            with write_lock:
                done += 1
                if progress is not None:
                    progress(f"{window.key}: fetched campaign {done}/{len(campaign_ids)}")

        if campaign_ids:
            pool = ThreadPoolExecutor(max_workers=max(1, min(workers, len(campaign_ids))),
                                      thread_name_prefix="cinnox-detail")
            try:
                for future in as_completed([pool.submit(fetch_campaign, cid) for cid in campaign_ids]):
                    future.result()  # the first failure aborts the day; queued campaigns are cancelled
            finally:
                pool.shutdown(wait=True, cancel_futures=True)
        result.pages = writer.pages
        result.records = writer.records
    after = client.stats.as_dict()
    result.requests = {
        key: round(after[key] - before.get(key, 0), 3) for key in after if isinstance(after[key], (int, float))
    }
    result.seconds = time.monotonic() - started
    log.info(
        "landed %s: %d campaigns in window, %d pages, %d records, %d requests in %.1fs",
        window.key, result.campaigns_in_window, result.pages, result.records,
        result.requests.get("requests", 0), result.seconds,
    )
    return result


def split_day(lake: Lake, app: AppRef, window: PartitionWindow, staging_dir: Path | None = None) -> DayTables:
    """Type one day's landed pages into tables (their campaigns staged in ``staging_dir`` if given).
    Makes no API call."""
    if not lake.has_raw(window.day, app.key):
        raise LandingMissingError(
            f"no landed data for {window.key}; run the backfill without --resplit to fetch it from the API"
        )
    splitter = DaySplitter(window, app.app_id, staging_dir)
    for page in lake.iter_raw_pages(window.day, app.key):
        if page.endpoint == "summary":
            splitter.add_summary_records(page.records)
        else:
            splitter.add_detail_records(page.history_id, page.records)
    return splitter.finish()


@dataclass
class PublishedDay:
    """A published day: rows inserted per table, the day's rates, and its check outcomes."""

    inserted: dict[str, int]
    rates: dict[str, dict[str, float | None]]
    outcomes: list[quality.CheckOutcome]


def publish_and_check_day(
    lake: Lake,
    warehouse: Warehouse,
    app: AppRef,
    window: PartitionWindow,
    day_tables: DayTables,
    refetch_summary: Callable[[], list] | None = None,
    rejected_threshold: float = quality.DEFAULT_REJECTED_RATIO_THRESHOLD,
    session: WriterSession | None = None,
) -> PublishedDay:
    """Write each table's day to Parquet (atomically), replace the (app, day) in DuckDB in one
    transaction, then compute the day's rates and run its checks on the same connection.
    Re-publishing the same day leaves identical tables."""
    for name, table in day_tables.parts.items():
        lake.write_parquet(name, day_tables.day, table.reader(), app.key)
    found: dict = {}

    def inspect(con) -> None:
        found["rates"] = reporting.partition_rates(con, window.day, app.app_id)
        found["outcomes"] = quality.evaluate_day(con, window, app.app_id, day_tables.stats, refetch_summary,
                                                 rejected_threshold)

    readers = {name: table.reader() for name, table in day_tables.parts.items()}
    inserted = warehouse.replace_partition(day_tables.day, readers, app.app_id, after_commit=inspect, session=session)
    return PublishedDay(inserted, found["rates"], found["outcomes"])


@dataclass
class DayOutcome:
    """One day of a run: what was landed (``None`` on a re-split), the split's stats, and the
    published day (``None`` when the tables were not selected)."""

    window: PartitionWindow
    landed: LandingResult | None
    stats: SplitStats
    row_counts: dict[str, int]
    published: PublishedDay | None


@contextmanager
def staging_area(parent: Path) -> Iterator[Path]:
    """A private scratch directory under ``parent`` (beside the warehouse) for one run's staged
    campaigns, removed when the block ends.

    The run holds a file lock inside it for as long as it lives (taken before the directory gets
    its ``.staging-`` name), so other runs, in this container or another one sharing the volume,
    can tell a live area from one left by a killed run: on entry, every area whose lock can be
    taken is removed.
    """
    parent.mkdir(parents=True, exist_ok=True)
    _remove_abandoned_staging_areas(parent)
    setup = Path(tempfile.mkdtemp(prefix=f".setup{_STAGING_PREFIX}{os.getpid()}-", dir=parent))
    owner = FileLock(str(setup / _STAGING_OWNER_LOCK), thread_local=False)
    owner.acquire()
    path = parent / setup.name.removeprefix(".setup")
    try:
        setup.rename(path)
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
        shutil.rmtree(setup, ignore_errors=True)
        owner.release()


def _remove_abandoned_staging_areas(parent: Path) -> None:
    for area in parent.glob(f"{_STAGING_PREFIX}*"):
        try:
            lock = FileLock(str(area / _STAGING_OWNER_LOCK), timeout=0, thread_local=False)
            lock.acquire()
        except (Timeout, OSError):
            continue  # its run still holds it (or it vanished meanwhile)
        try:
            shutil.rmtree(area, ignore_errors=True)
        finally:
            lock.release()


def process_days(
    windows: list[PartitionWindow],
    lake: Lake,
    warehouse: Warehouse,
    app: AppRef,
    client: CinnoxClient | None,
    *,
    load: bool = True,
    workers: int = settings.DEFAULT_FETCH_WORKERS,
    hasher: RecipientHasher | None = None,
    refetch_summary: Callable[[PartitionWindow], list] | None = None,
    rejected_threshold: float = quality.DEFAULT_REJECTED_RATIO_THRESHOLD,
    progress: ProgressCallback | None = None,
) -> Iterator[DayOutcome]:
    """Land (with a ``client``) or re-split (without one) each day, then publish it; yield each
    day's outcome in order, once it is published.

    Day N is published in a background thread while day N+1 is fetched, so Parquet, DuckDB and
    the checks stay off the fetch's critical path; at most one day waits to be published. The
    publisher keeps its DuckDB connection (:meth:`Warehouse.writer_session`) while the next day is
    already waiting for it, and after a small day also while the next one lands within half the
    session's ``max_hold_s`` of the connection's opening; otherwise it lets go while the next day
    is fetched (and the session re-opens after ``max_hold_s`` anyway), so readers wait a few
    seconds at most. Each day's publish is atomic on its own, so a failure leaves every earlier
    day complete: the outcome of a day already being published is still yielded before the
    failure is raised.
    """

    memory.limit_allocator_arenas()  # before the fetch and publish threads start
    # Set while a landed day waits for the publisher, and once no further day will come.
    next_day_waiting = threading.Event()
    holding_small_loads = False  # the session holds small loads that are not checkpointed yet

    def split_and_publish(window: PartitionWindow, split: Callable[[], DayTables]) -> tuple:
        nonlocal holding_small_loads
        day_tables = split()
        row_counts = day_tables.row_counts
        large_day = max(row_counts.values(), default=0) >= LARGE_LOAD_MIN_ROWS
        if large_day and holding_small_loads:
            session.release()  # checkpoint the small days with their vacuum (a large load turns it off)
        try:
            refetch = (lambda: refetch_summary(window)) if refetch_summary is not None else None
            published = publish_and_check_day(lake, warehouse, app, window, day_tables, refetch, rejected_threshold,
                                              session)
        finally:
            day_tables.discard()
            memory.release_free_memory()  # the day's buffers, before the next day's grow
        holding_small_loads = not large_day
        if not large_day:
            # Each close checkpoints, and checkpointing a week of small days day by day cost a 1x
            # backfill about 0.4 s more CPU (and a 20% larger file) than checkpointing it once:
            # keep the session for the next day if it lands soon. A large day is in the file
            # already (written at commit, see warehouse.LARGE_LOAD_MIN_ROWS), so closing after it
            # is cheap, and keeping its buffers cost about 10 MB of peak RSS at 10x.
            next_day_waiting.wait(max(0.0, session.max_hold_s / 2 - session.held_s))
        if not next_day_waiting.is_set():
            session.release()  # idle while the next day is fetched: readers may open the file meanwhile
            holding_small_loads = False
        return day_tables.stats, row_counts, published

    with (
        staging_area(warehouse.path.parent) as staging,
        warehouse.writer_session() as session,
        ThreadPoolExecutor(1, thread_name_prefix="publish") as publisher,
    ):
        pending: tuple[PartitionWindow, LandingResult | None, Future] | None = None
        try:
            for window in windows:
                try:
                    if client is not None:
                        splitter = DaySplitter(window, app.app_id, staging / window.key)
                        landed = land_day(client, lake, app, window, workers=workers, progress=progress,
                                          hasher=hasher, splitter=splitter)
                        memory.release_free_memory()  # the pages and campaign buffers just freed
                        split = splitter.finish  # builds the day's tables from its staged campaigns, in the publisher
                    else:
                        resplit = split_day(lake, app, window, staging / window.key)
                        landed, split = None, lambda tables=resplit: tables
                        del resplit
                except BaseException:
                    next_day_waiting.set()  # no day follows: the publisher need not wait for one
                    if pending is not None:
                        yield _published(pending)
                    raise
                next_day_waiting.set()
                if pending is not None:
                    yield _published(pending)
                    pending = None
                next_day_waiting.clear()
                if not load:
                    day_tables = split()
                    row_counts = day_tables.row_counts
                    day_tables.discard()
                    yield DayOutcome(window, landed, day_tables.stats, row_counts, None)
                    continue
                pending = (window, landed, publisher.submit(split_and_publish, window, split))
                del split
            next_day_waiting.set()
            if pending is not None:
                yield _published(pending)
        finally:
            next_day_waiting.set()  # also when the caller stops early: the publisher must not wait


def _published(pending: tuple) -> DayOutcome:
    window, landed, future = pending
    return DayOutcome(window, landed, *future.result())


def refresh_views(warehouse: Warehouse, preview_days: int = 7) -> tuple[list[str], str]:
    """(Re)create the analyst views and return (view files applied, markdown preview of the
    latest ``preview_days`` days; ``""`` without opening a reader when ``preview_days`` is 0)."""
    with warehouse.writer() as con:
        # Only views change here: the checkpoint at close must not re-pack the tables' row groups
        # (a vacuum that a large load skipped on purpose; measured 2 s after a 10x backfill).
        con.execute("SET max_vacuum_tasks = 0")
        applied = ensure_views(con)
    if preview_days <= 0:
        return applied, ""
    with warehouse.reader() as con:
        return applied, reporting.latest_days_markdown(con, preview_days)
