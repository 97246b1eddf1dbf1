"""The DuckDB warehouse: schema derived from the Arrow schemas, one idempotent load per partition.

Writers are serialized by a file lock beside the database (``warehouse.duckdb.lock``), so two
concurrent backfills wait for each other instead of failing with "database is locked". A
partition is replaced in one transaction across all tables (delete that day, insert the new
rows), so a reader sees the old or the new day, never half of one. Values are always bound
parameters; identifiers come only from :mod:`campaign_pipeline.schemas`.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import date
from pathlib import Path

import duckdb
import pyarrow as pa
from filelock import FileLock

from campaign_pipeline import schemas
from campaign_pipeline.crashpoints import crash_point
from campaign_pipeline.errors import CampaignPipelineError

log = logging.getLogger(__name__)

DEFAULT_LOCK_TIMEOUT_S = 1800.0
DEFAULT_OPEN_TIMEOUT_S = 120.0
DEFAULT_MAX_HOLD_S = 5.0
_RETRY_MAX_DELAY_S = 0.25  # a waiting connection retries at least this often
_READER_WINDOW_S = 0.5  # how long a writer session leaves the file free when it re-opens
_META_TABLE = "_campaign_pipeline_meta"
# Cap the writer's buffer pool so a backfill's memory does not grow with the size of its days: a
# load streams in, and DuckDB writes what exceeds the cap to the file or its temp directory
# (measured: about 60 MB less peak RSS for a 10x backfill than 128 MB, at the same speed). The
# checks that run after a load get _CHECKS_MEMORY_LIMIT (see replace_partition). Few threads on
# small machines.
_WRITER_SETTINGS = {"memory_limit": "32MB", "threads": "2"}
_CHECKS_MEMORY_LIMIT = "1GB"
# DuckDB stores a table in row groups of 122,880 rows, and a load's rows go to new row groups at
# commit. When a load's largest table fills at least half of one, the checkpoint skips the vacuum,
# which re-packs neighbouring row groups: the previous day's tail plus this day, rewritten and
# re-compressed on every load (about half the cost of publishing a large day, and it left freed
# blocks behind in the file). Day-aligned row groups also let a re-load's DELETE drop whole row
# groups instead of leaving deleted rows inside shared ones. Smaller loads keep the vacuum, so a
# small daily load does not leave one tiny row group per day and table.
LARGE_LOAD_MIN_ROWS = 122_880 // 2


class WarehouseError(CampaignPipelineError):
    """The warehouse is unreachable or its schema disagrees with the declared Arrow schemas."""


class Warehouse:
    """A DuckDB file plus the lock that serializes its writers."""

    def __init__(self, path: str | Path, lock_timeout_s: float = DEFAULT_LOCK_TIMEOUT_S,
                 max_hold_s: float = DEFAULT_MAX_HOLD_S):
        self.path = Path(path)
        self.lock_timeout_s = lock_timeout_s
        self.max_hold_s = max_hold_s  # the default of writer_session()
        self._lock = FileLock(str(self.path) + ".lock", timeout=lock_timeout_s, thread_local=False)

    def __repr__(self) -> str:
        return f"Warehouse({self.path})"

    @contextmanager
    def writer(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """An exclusive read-write connection, held only for the duration of the block."""
        with self.writer_session() as session:
            yield session.connection()

    def _create_if_missing(self) -> None:
        """Build a new warehouse under a hidden temporary name and rename it into place, so a
        process killed while creating it never leaves a file without its tables (caller holds the lock)."""
        if self.path.exists():
            return
        prefix = f".{self.path.name}.tmp-"
        for stale in self.path.parent.glob(prefix + "*"):  # left by a creation that was killed
            stale.unlink(missing_ok=True)
        temp = self.path.with_name(f"{prefix}{os.getpid()}")
        con = duckdb.connect(str(temp))
        try:
            prepare(con)
        finally:
            con.close()  # checkpoints: everything is in the file, no WAL left
        os.replace(temp, self.path)

    @contextmanager
    def writer_session(self, max_hold_s: float | None = None) -> Iterator[WriterSession]:
        """A writer connection reused by consecutive loads (each still its own transaction), so a
        run of small days does not pay DuckDB's open and checkpoint-on-close for every day. The
        user releases it when idle (:meth:`WriterSession.release`; the next use re-opens it), and a
        connection held for ``max_hold_s`` is closed at its next use and the file left free for a
        moment, so readers in other processes (which retry every 0.25 s at most) still get in
        while a long, publish-bound backfill runs. ``max_hold_s`` defaults to the warehouse's."""
        session = WriterSession(self, self.max_hold_s if max_hold_s is None else max_hold_s)
        try:
            yield session
        finally:
            session.release()

    @contextmanager
    def reader(self, timeout_s: float = DEFAULT_OPEN_TIMEOUT_S) -> Iterator[duckdb.DuckDBPyConnection]:
        """A read-only connection; waits (up to ``timeout_s``) while a writer holds the file."""
        if not self.path.exists():
            raise WarehouseError(f"no warehouse at {self.path}; run a backfill first (campaign-pipeline backfill ...)")
        con = _connect_with_retry(str(self.path), read_only=True, timeout_s=timeout_s)
        try:
            yield con
        finally:
            con.close()

    def replace_partition(
        self,
        day: date,
        tables: Mapping[str, pa.Table | pa.RecordBatchReader],
        app_id: str,
        after_commit: Callable[[duckdb.DuckDBPyConnection], None] | None = None,
        session: WriterSession | None = None,
    ) -> dict[str, int]:
        """Replace (``app_id``, ``day``) in every given table, in one transaction. Each table's rows
        are a table or a stream of record batches, inserted as they are read. Returns rows
        inserted per table. ``after_commit`` (e.g. the day's checks) runs on the same connection
        once the day is committed, saving a second open of the file. With a ``session`` (see
        :meth:`writer_session`) its connection is used instead of opening one."""
        inserted: dict[str, int] = {}
        with contextlib.nullcontext(session.connection()) if session is not None else self.writer() as con:
            con.execute("BEGIN TRANSACTION")
            try:
                for name, rows in tables.items():
                    spec = schemas.TABLES[name]
                    if rows.schema != spec.schema:
                        rows = rows.cast(spec.schema)
                    con.execute(f'DELETE FROM "{spec.name}" WHERE partition_date = ? AND app_id = ?', [day, app_id])
                    con.register("incoming_partition", rows)
                    (inserted[name],) = con.execute(
                        f'INSERT INTO "{spec.name}" SELECT * FROM incoming_partition').fetchone()
                    con.unregister("incoming_partition")
                # Applies to this load's checkpoint (at COMMIT when the WAL is past DuckDB's threshold,
                # else when the connection closes: in a writer session, the last load's setting counts).
                if max(inserted.values(), default=0) >= LARGE_LOAD_MIN_ROWS:
                    con.execute("SET max_vacuum_tasks = 0")
                else:
                    con.execute("RESET max_vacuum_tasks")
                crash_point("warehouse_before_commit")
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise
            if after_commit is not None:
                # The checks group a whole day (e.g. every recipient of it); unlike a load they
                # cannot stream, so they get a larger cap (32 MB failed them at ~3M rows a day).
                con.execute(f"SET memory_limit = '{_CHECKS_MEMORY_LIMIT}'")
                try:
                    after_commit(con)
                finally:
                    con.execute(f"SET memory_limit = '{_WRITER_SETTINGS['memory_limit']}'")
        return inserted


class WriterSession:
    """The connection of :meth:`Warehouse.writer_session`, opened on first use (file lock held
    while it is open) and re-opened once it has been held for ``max_hold_s``. One thread at a time."""

    def __init__(self, warehouse: Warehouse, max_hold_s: float):
        self.warehouse = warehouse
        self.max_hold_s = max_hold_s
        self._con: duckdb.DuckDBPyConnection | None = None
        self._opened_at = 0.0

    def connection(self) -> duckdb.DuckDBPyConnection:
        """The open writer connection (opening or re-opening it as needed)."""
        if self._con is not None and time.monotonic() - self._opened_at > self.max_hold_s:
            self.release()
            time.sleep(_READER_WINDOW_S)  # let a waiting reader (or writer) in before taking it back
        if self._con is None:
            warehouse = self.warehouse
            warehouse.path.parent.mkdir(parents=True, exist_ok=True)
            warehouse._lock.acquire()
            con = None
            try:
                warehouse._create_if_missing()
                con = _connect_with_retry(str(warehouse.path), read_only=False, timeout_s=DEFAULT_OPEN_TIMEOUT_S)
                prepare(con)
            except BaseException:
                if con is not None:
                    con.close()
                warehouse._lock.release()
                raise
            self._con, self._opened_at = con, time.monotonic()
        return self._con

    @property
    def held_s(self) -> float:
        """Seconds the current connection has been open (0 when none is)."""
        return time.monotonic() - self._opened_at if self._con is not None else 0.0

    def release(self) -> None:
        """Close the connection (DuckDB checkpoints it) and release the file lock."""
        if self._con is None:
            return
        con, self._con = self._con, None
        try:
            con.close()
        finally:
            self.warehouse._lock.release()


SQL_DIR = Path(__file__).parent / "sql"


def view_statements() -> list[tuple[str, str]]:
    """(file name, SQL) of every view definition in ``campaign_pipeline/sql``, in file order."""
    return [(path.name, path.read_text()) for path in sorted(SQL_DIR.glob("*.sql"))]


def ensure_views(con: duckdb.DuckDBPyConnection) -> list[str]:
    """(Re)create the analyst views from their ``.sql`` files. Returns the file names applied."""
    applied = []
    for name, statement in view_statements():
        con.execute(statement)
        applied.append(name)
    return applied


def definitions_digest() -> str:
    """A hash of every DDL and view statement this code would apply."""
    text = "\n".join(schemas.duckdb_ddl(spec) for spec in schemas.TABLES.values())
    text += "\n".join(statement for _, statement in view_statements())
    return hashlib.sha256(text.encode()).hexdigest()


def prepare(con: duckdb.DuckDBPyConnection) -> None:
    """Create/verify tables and (re)create views, unless this exact code already did so for this file."""
    digest = definitions_digest()
    con.execute(f'CREATE TABLE IF NOT EXISTS "{_META_TABLE}" (key VARCHAR PRIMARY KEY, value VARCHAR)')
    row = con.execute(f'SELECT value FROM "{_META_TABLE}" WHERE key = ?', ["definitions_digest"]).fetchone()
    if row is not None and row[0] == digest:
        return
    ensure_schema(con)
    ensure_views(con)
    con.execute(f'INSERT OR REPLACE INTO "{_META_TABLE}" VALUES (?, ?)', ["definitions_digest", digest])


def ensure_schema(con: duckdb.DuckDBPyConnection) -> None:
    """Create missing tables from the Arrow schemas; fail loudly if an existing table drifted."""
    for spec in schemas.TABLES.values():
        con.execute(schemas.duckdb_ddl(spec))
        actual = con.execute(
            "SELECT column_name, data_type FROM information_schema.columns "
            "WHERE table_name = ? AND table_schema = 'main' ORDER BY ordinal_position",
            [spec.name],
        ).fetchall()
        expected = [(f.name, schemas.duckdb_type(f.type)) for f in spec.schema]
        normalized = [(name, _normalize_type(kind)) for name, kind in actual]
        if normalized != expected:
            raise WarehouseError(
                f"table {spec.name} in the warehouse has columns {normalized}, expected {expected}; "
                "migrate it or start from a fresh CAMPAIGN_DATA_DIR"
            )


def _normalize_type(kind: str) -> str:
    return {"TIMESTAMP WITH TIME ZONE": "TIMESTAMPTZ"}.get(kind, kind)


def _connect_with_retry(path: str, read_only: bool, timeout_s: float) -> duckdb.DuckDBPyConnection:
    deadline = time.monotonic() + timeout_s
    delay = 0.05
    while True:
        try:
            con = duckdb.connect(path, read_only=read_only)
            if not read_only:  # SET, not connect(config=...): other connections may share the file
                for name, value in _WRITER_SETTINGS.items():
                    con.execute(f"SET {name} = '{value}'")
            return con
        except duckdb.IOException as error:
            if "lock" not in str(error).lower() or time.monotonic() >= deadline:
                raise WarehouseError(
                    f"could not open the warehouse {path} ({'read-only' if read_only else 'read-write'}) "
                    f"within {timeout_s:.0f}s: another process holds it; retry when it finishes"
                ) from None
            time.sleep(delay)
            delay = min(delay * 2, _RETRY_MAX_DELAY_S)
