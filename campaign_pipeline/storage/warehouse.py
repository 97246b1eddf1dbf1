"""The DuckDB warehouse: schema derived from the Arrow schemas, one idempotent load per partition.

Writers are serialized by a file lock beside the database (``warehouse.duckdb.lock``), so two
concurrent backfills wait for each other instead of failing with "database is locked". A
partition is replaced in one transaction across all tables (delete that day, insert the new
rows), so a reader sees the old or the new day, never half of one. Values are always bound
parameters; identifiers come only from :mod:`campaign_pipeline.model.schemas`.

Failures to open or write say what happened (:mod:`campaign_pipeline.errors`): a lock held past
the wait allowed is :class:`WarehouseLockedError`; a file that is not DuckDB's, or that DuckDB
cannot open (corrupt, truncated), is :class:`WarehouseUnusableError` with DuckDB's own words; a
full disk or a read-only location (on open, insert or COMMIT) is :class:`StorageError`, raised
after the transaction is rolled back, so a failing rollback never hides it.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import os
import random
import re
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import date
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
from filelock import FileLock
from filelock import Timeout as FileLockTimeout

from campaign_pipeline.crashpoints import crash_point
from campaign_pipeline.errors import (
    WarehouseError,
    WarehouseLockedError,
    WarehouseUnusableError,
    storage_error,
)
from campaign_pipeline.model import dictionary, schemas

log = logging.getLogger(__name__)

DEFAULT_LOCK_TIMEOUT_S = 1800.0
DEFAULT_OPEN_TIMEOUT_S = 120.0
_RETRY_MAX_DELAY_S = 0.25  # a waiting connection retries at least this often
MAX_COMMIT_ATTEMPTS = 8  # a DuckLake commit that conflicts with another writer is redone this often
_CONFLICT_BACKOFF_MAX_S = 4.0  # full-jitter backoff between attempts: at most ~20 s in all
_CONFLICT = re.compile(r"conflict", re.IGNORECASE)
_META_TABLE = "_campaign_pipeline_meta"
#: Writer connections: DuckDB never reaches the network for extensions, and uses one thread and a
#: 32 MB buffer pool (it spills the rest to disk; a day is loaded from its staged Parquet files,
#: which DuckDB streams). Measured on DuckDB 1.5.5, two 10x days: peak RSS 324-339 MB with 2
#: threads and 64 MB, 282 MB with 1 thread and 32 MB, same wall time; a 1M-row day still loads and
#: checks (tests/unit/storage/test_warehouse_publish.py). Read-only connections keep DuckDB's defaults (a
#: process cannot open one file with two configurations); they open only files with DuckDB's header.
#: A new warehouse file is written in DuckDB's current storage format (v1.5.0+, which DuckDB 1.5 and
#: later read) instead of the 0.10-compatible default: a 1x week loads in 3.8 s instead of 4.1 s
#: (its per-day checkpoints 30% faster), the file is 25% smaller, for the benchmark's 1x target.
#: Existing files keep the format they were created with.
WRITER_CONFIG = {"autoinstall_known_extensions": False, "autoload_known_extensions": False, "memory_limit": "32MB",
                 "threads": 1, "storage_compatibility_version": "latest"}
_READER_CONFIG = {"autoinstall_known_extensions": False, "autoload_known_extensions": False}
_DUCKDB_MAGIC = (8, b"DUCK")  # offset and bytes of DuckDB's file header


class Warehouse:
    """A DuckDB file plus the lock that serializes its writers."""

    def __init__(self, path: str | Path, lock_timeout_s: float = DEFAULT_LOCK_TIMEOUT_S,
                 open_timeout_s: float = DEFAULT_OPEN_TIMEOUT_S):
        self.path = Path(path)
        self.lock_timeout_s = lock_timeout_s
        self.open_timeout_s = open_timeout_s
        self._lock = FileLock(str(self.path) + ".lock", timeout=lock_timeout_s, thread_local=False)

    def __repr__(self) -> str:
        return f"Warehouse({self.path})"

    @contextmanager
    def writer(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """An exclusive read-write connection (tables and views prepared), held only for the
        duration of the block; closing it checkpoints."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._lock.acquire()
        except FileLockTimeout:
            raise WarehouseLockedError(
                f"could not lock the warehouse {self.path} for writing within {self.lock_timeout_s:.0f}s: "
                f"another pipeline process holds {self._lock.lock_file}; retry when it finishes"
            ) from None
        except OSError as error:
            raise _storage_or(error, self.path.parent) from error
        try:
            try:
                self._create_if_missing()
            except (OSError, duckdb.Error) as error:
                raise _storage_or(error, self.path.parent) from error
            require_duckdb_file(self.path)
            con = connect_with_retry(str(self.path), read_only=False, timeout_s=self.open_timeout_s)
            try:
                try:
                    prepare(con)
                except duckdb.Error as error:
                    raise _translate(error, self.path) from error
                yield con
            finally:
                _close(con)
        finally:
            self._lock.release()

    def _create_if_missing(self) -> None:
        """Build a new warehouse under a hidden temporary name and rename it into place, so a
        process killed while creating it never leaves a file without its tables (caller holds the lock)."""
        if self.path.exists():
            return
        prefix = f".{self.path.name}.tmp-"
        for stale in self.path.parent.glob(prefix + "*"):  # left by a creation that was killed
            stale.unlink(missing_ok=True)
        temp = self.path.with_name(f"{prefix}{os.getpid()}")
        con = duckdb.connect(str(temp), config=WRITER_CONFIG)
        try:
            con.execute("BEGIN TRANSACTION")  # one commit for the ~200 statements: half the time
            prepare(con)
            con.execute("COMMIT")
        finally:
            con.close()  # checkpoints: everything is in the file, no WAL left
        os.replace(temp, self.path)

    @contextmanager
    def reader(self, timeout_s: float | None = None) -> Iterator[duckdb.DuckDBPyConnection]:
        """A read-only connection; waits (up to ``timeout_s``, default the warehouse's
        ``open_timeout_s``) while a writer holds the file."""
        if not self.path.exists():
            raise WarehouseError(f"no warehouse at {self.path}; run a backfill first (campaign-pipeline backfill ...)")
        require_duckdb_file(self.path)
        con = connect_with_retry(str(self.path), read_only=True,
                                  timeout_s=self.open_timeout_s if timeout_s is None else timeout_s)
        try:
            # Set after opening (not as connect-time config, see WRITER_CONFIG): no extension is
            # fetched or loaded by anything this connection runs.
            con.execute("SET autoinstall_known_extensions = false")
            con.execute("SET autoload_known_extensions = false")
            yield con
        finally:
            con.close()

    def replace_partition(
        self,
        day: date,
        tables: Mapping[str, pa.Table | pa.RecordBatchReader | Path],
        app_id: str,
        audit: Callable[[duckdb.DuckDBPyConnection], bool] | None = None,
        before: Callable[[duckdb.DuckDBPyConnection], None] | None = None,
        after_commit: Callable[[], None] | None = None,
    ) -> tuple[dict[str, int], bool]:
        """Replace (``app_id``, ``day``) in every given table in one transaction: write, audit,
        then publish. Each table's rows are a table, a stream of record batches (inserted as they
        are read) or a local Parquet file of the table's schema (read by DuckDB in bounded memory). ``audit`` (the day's checks) runs inside the transaction, on the new rows;
        the day is committed only if it returns True, else rolled back so readers keep the
        previous version. ``before`` runs first in the transaction, on the published version (e.g.
        to count it); ``after_commit`` runs after a commit while the writer lock is still held (the
        day's files are moved into place there, so a second writer of the same day cannot commit in
        between and leave DuckDB and the lake on different versions). Returns (rows inserted per
        table, committed)."""
        # A stream of record batches can be read once: such a day is not redone after a conflict.
        attempts = MAX_COMMIT_ATTEMPTS if all(isinstance(r, (Path, pa.Table)) for r in tables.values()) else 1
        for attempt in range(1, attempts + 1):
            try:
                return self._replace_once(day, tables, app_id, audit, before, after_commit)
            except _CommitConflict as conflict:
                # DuckLake commits optimistically: a writer of another day of the same table can
                # make this COMMIT fail. Nothing was published (the day's files move only after a
                # commit); do the whole transaction again (write, audit, publish), so the
                # write-audit-publish rule holds on every attempt.
                if attempt == attempts:
                    raise self._translate(conflict.error) from None
                log.warning("%s: commit conflicted with another writer (attempt %d of %d); retrying",
                            day, attempt, MAX_COMMIT_ATTEMPTS)
                time.sleep(random.uniform(0, min(_CONFLICT_BACKOFF_MAX_S, 0.25 * 2**attempt)))
        raise AssertionError("unreachable")

    def _replace_once(self, day, tables, app_id, audit, before, after_commit) -> tuple[dict[str, int], bool]:
        inserted: dict[str, int] = {}
        with self.writer() as con:
            con.execute("BEGIN TRANSACTION")
            try:
                if before is not None:
                    before(con)
                for name, rows in tables.items():
                    spec = schemas.TABLES[name]
                    con.execute(f'DELETE FROM "{spec.name}" WHERE partition_date = ? AND app_id = ?', [day, app_id])
                    inserted[name] = _insert(con, spec, rows)
                publish = audit(con) if audit is not None else True
                crash_point("warehouse_before_commit")
                if publish:
                    try:
                        con.execute("COMMIT")
                    except duckdb.TransactionException as error:
                        if not _CONFLICT.search(str(error)):
                            raise
                        with contextlib.suppress(duckdb.Error):  # the failed COMMIT ended the transaction
                            con.execute("ROLLBACK")
                        raise _CommitConflict(error) from None
            except _CommitConflict:
                raise
            except duckdb.Error as error:
                _rollback(con)
                raise self._translate(error) from error
            except BaseException:
                _rollback(con)
                raise
            if not publish:
                _rollback(con)
                return inserted, False
            if after_commit is not None:
                after_commit()
        return inserted, True

    def _translate(self, error: duckdb.Error) -> BaseException:
        return _translate(error, self.path)


class _CommitConflict(Exception):
    """A COMMIT refused because another writer changed the same tables first (DuckLake)."""

    def __init__(self, error: duckdb.TransactionException):
        super().__init__(str(error))
        self.error = error


def _insert(con: duckdb.DuckDBPyConnection, spec: schemas.TableSpec, rows) -> int:
    """Insert rows (Arrow, or a Parquet file of the table's schema) into ``spec``'s table."""
    columns = ", ".join(f'"{f.name}"' for f in spec.schema)
    if isinstance(rows, Path) and any(char in str(rows) for char in "*?[{"):
        # read_parquet would take such a path for a glob: stream the file through Arrow instead.
        parquet = pq.ParquetFile(rows)
        rows = pa.RecordBatchReader.from_batches(parquet.schema_arrow, parquet.iter_batches())
    if isinstance(rows, Path):
        (count,) = con.execute(f'INSERT INTO "{spec.name}" SELECT {columns} FROM read_parquet(?)',
                               [str(rows)]).fetchone()
        return count
    if rows.schema != spec.schema:
        rows = rows.cast(spec.schema)
    con.register("incoming_partition", rows)
    try:
        (count,) = con.execute(f'INSERT INTO "{spec.name}" SELECT {columns} FROM incoming_partition').fetchone()
    finally:
        con.unregister("incoming_partition")
    return count


def require_duckdb_file(path: Path) -> None:
    """Refuse a file that is not a DuckDB database (before DuckDB guesses its format)."""
    offset, magic = _DUCKDB_MAGIC
    try:
        with open(path, "rb") as handle:
            handle.seek(offset)
            header = handle.read(len(magic))
    except OSError as error:
        raise _storage_or(error, path) from error
    if header != magic:
        raise WarehouseUnusableError(f"{path} is not a DuckDB database (wrong file header); "
                                     "point CAMPAIGN_DATA_DIR at the data dir a backfill wrote")


def _storage_or(error: BaseException, where: Path) -> BaseException:
    """``error`` as a :class:`StorageError` (full disk, read-only location) if it is one, else itself."""
    return storage_error(error, where) or error


_DAMAGED = re.compile(r"corrupt database file|could not read enough bytes|not a valid duckdb database",
                      re.IGNORECASE)


def _translate(error: duckdb.Error, path: Path) -> BaseException:
    """A DuckDB error met while using the warehouse at ``path``: a full disk or read-only location
    as :class:`StorageError`, a damaged file as :class:`WarehouseUnusableError`, else unchanged."""
    storage = storage_error(error, path.parent)
    if storage is not None:
        return storage
    text = " ".join(str(error).split())
    if _DAMAGED.search(text):
        return WarehouseUnusableError(f"DuckDB cannot read the warehouse {path}: {text}; {_DAMAGED_HINT}")
    return error


def _close(con: duckdb.DuckDBPyConnection) -> None:
    """Close (and so checkpoint) a connection. A failing checkpoint loses nothing -- committed
    transactions are in the WAL, replayed on the next open -- and must not replace the error, if
    any, that ends the block."""
    try:
        con.close()
    except duckdb.Error as error:
        log.warning("closing the warehouse failed (%s); committed days stay in its WAL",
                    redact_uri(" ".join(str(error).split())))


def _rollback(con: duckdb.DuckDBPyConnection) -> None:
    """Roll back the open transaction; a failing rollback (the connection is already broken)
    must not hide the error that caused it."""
    try:
        con.execute("ROLLBACK")
    except duckdb.Error as error:
        log.warning("rollback failed (%s); the transaction is abandoned with its connection", type(error).__name__)


SQL_DIR = Path(__file__).parent / "sql"


def view_statements() -> list[tuple[str, str]]:
    """(file name, SQL) of every view definition in ``campaign_pipeline/storage/sql``, in file order."""
    return [(path.name, path.read_text()) for path in sorted(SQL_DIR.glob("*.sql"))]


def ensure_views(con: duckdb.DuckDBPyConnection) -> list[str]:
    """(Re)create the analyst views from their ``.sql`` files. Returns the file names applied."""
    applied = []
    for name, statement in view_statements():
        con.execute(statement)
        applied.append(name)
    return applied


@functools.cache
def definitions_digest() -> str:
    """A hash of every DDL and view statement this code would apply."""
    text = "\n".join(schemas.duckdb_ddl(spec) for spec in schemas.TABLES.values())
    text += "\n".join(statement for _, statement in view_statements())
    text += dictionary.digest()  # a changed meaning re-applies the comments
    return hashlib.sha256(text.encode()).hexdigest()


def prepare(con: duckdb.DuckDBPyConnection) -> None:
    """Create/verify tables and (re)create views, unless this exact code already did so for this file."""
    digest = definitions_digest()
    con.execute(f'CREATE TABLE IF NOT EXISTS "{_META_TABLE}" (key VARCHAR, value VARCHAR)')
    row = con.execute(f'SELECT value FROM "{_META_TABLE}" WHERE key = ?', ["definitions_digest"]).fetchone()
    if row is not None and row[0] == digest:
        return
    ensure_schema(con)
    ensure_views(con)
    dictionary.apply_comments(con)  # after the views: CREATE OR REPLACE VIEW drops a view's comments
    con.execute(f'DELETE FROM "{_META_TABLE}" WHERE key = ?', ["definitions_digest"])
    con.execute(f'INSERT INTO "{_META_TABLE}" VALUES (?, ?)', ["definitions_digest", digest])


def ensure_schema(con: duckdb.DuckDBPyConnection) -> None:
    """Create missing tables from the Arrow schemas; fail loudly if an existing table drifted."""
    for spec in schemas.TABLES.values():
        con.execute(schemas.duckdb_ddl(spec))
        actual = con.execute(
            "SELECT column_name, data_type FROM information_schema.columns "
            "WHERE table_name = ? AND table_schema = 'main' AND table_catalog = current_database() "
            "ORDER BY ordinal_position",
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


_DAMAGED_HINT = ("restore it from a backup, or move it aside and re-split the landed days "
                 "(backfill --resplit) to rebuild it")
_LOCK_CONFLICT = re.compile(r"could not set lock|conflicting lock", re.IGNORECASE)
_LOCK_HOLDER = re.compile(r"\(PID (\d+)\)")


def connect_with_retry(path: str, read_only: bool, timeout_s: float) -> duckdb.DuckDBPyConnection:
    """Open ``path``, retrying while another process holds DuckDB's lock (up to ``timeout_s``).
    Any other failure is raised at once: a full disk or read-only location as
    :class:`StorageError`, anything else DuckDB refuses (corrupt, truncated) as
    :class:`WarehouseUnusableError` with DuckDB's message on one line."""
    deadline = time.monotonic() + timeout_s
    delay = 0.05
    while True:
        try:
            return duckdb.connect(path, read_only=read_only, config={} if read_only else WRITER_CONFIG)
        except duckdb.Error as error:
            text = " ".join(str(error).split())
            if not _LOCK_CONFLICT.search(text):
                storage = storage_error(error, Path(path).parent)
                if storage is not None:
                    raise storage from None
                raise WarehouseUnusableError(
                    f"DuckDB cannot open the warehouse {path}: {text}; {_DAMAGED_HINT}"
                ) from None
            if time.monotonic() >= deadline:
                holder = _LOCK_HOLDER.search(text)
                raise WarehouseLockedError(
                    f"could not open the warehouse {path} ({'read-only' if read_only else 'read-write'}) "
                    f"within {timeout_s:g}s: another process"
                    f"{f' (PID {holder.group(1)})' if holder else ''} holds it; retry when it finishes"
                ) from None
            time.sleep(delay)
            delay = min(delay * 2, _RETRY_MAX_DELAY_S)


# ---------------------------------------------------------------------------------------------
# DuckLake: the catalog in PostgreSQL (several hosts) or a local file, the data as Parquet
# ---------------------------------------------------------------------------------------------

DUCKLAKE_PREFIX = "ducklake:"
_INIT_ATTEMPTS = 5
_INIT_RACE = re.compile(r"Failed to initialize DuckLake.*already exists", re.IGNORECASE | re.DOTALL)
_CATALOG = "warehouse"
#: The extensions a DuckLake warehouse needs, from the ``ducklake`` extra: DuckDB's signed builds
#: on PyPI (package, the name DuckDB derives the entry point from).
_EXTENSIONS = {"postgres": ("duckdb_extension_postgres", "postgres_scanner"),
               "ducklake": ("duckdb_extension_ducklake", "ducklake"),
               "httpfs": ("duckdb_extension_httpfs", "httpfs")}
#: A libpq password: ``password=secret`` or ``password='with \\' quotes'``, and ``scheme://user:secret@``.
_PASSWORD = re.compile(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", re.IGNORECASE)
_URL_PASSWORD = re.compile(r"(://[^:/@\s]*:)([^@\s]+)(@)")


def uri_passwords(uri: str) -> list[str]:
    """The passwords a DuckLake URI holds (to redact wherever they could appear)."""
    found = [match.group(2) for match in _PASSWORD.finditer(uri)] + [m.group(2) for m in _URL_PASSWORD.finditer(uri)]
    return found + [value.strip("'") for value in found if value.startswith("'")]


def redact_uri(text: str) -> str:
    """``text`` with every password of a libpq connection string or URL replaced by ``***``."""
    return _URL_PASSWORD.sub(r"\1***\3", _PASSWORD.sub(r"\1***", text))


def sql_literal(text: str) -> str:
    """``text`` as a SQL string literal (for the statements that take no bound parameters:
    ``LOAD``, ``ATTACH``, ``CREATE SECRET``, a view's file glob)."""
    return "'" + text.replace("'", "''") + "'"


def load_extension(con: duckdb.DuckDBPyConnection, name: str) -> None:
    """``LOAD`` one of :data:`_EXTENSIONS` from its PyPI package (this machine never downloads one)."""
    import importlib
    import shutil
    import tempfile

    package, entry = _EXTENSIONS[name]
    try:
        module = importlib.import_module(package)
    except ImportError:
        from campaign_pipeline.errors import ConfigError

        raise ConfigError(f"a DuckLake warehouse needs DuckDB's {name} extension: pip install -e '.[ducklake]'") from None
    source = next(Path(module.__file__).parent.rglob("*.duckdb_extension"))
    target = _EXTENSION_COPIES.get(name)
    if target is None:
        # DuckDB takes the entry point from the file name: a copy named for it, per user and version.
        directory = Path(tempfile.gettempdir()) / f"campaign_pipeline-extensions-{os.getuid()}-{duckdb.__version__}"
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        target = directory / f"{entry}.duckdb_extension"
        if not target.exists() or _sha256(target) != _sha256(source):
            temp = directory / f".{entry}.{uuid.uuid4().hex}"
            shutil.copyfile(source, temp)
            os.replace(temp, target)
        _EXTENSION_COPIES[name] = target
    con.execute(f"LOAD {sql_literal(str(target))}")


_EXTENSION_COPIES: dict[str, Path] = {}  # checked once per process


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class DuckLakeWarehouse(Warehouse):
    """The warehouse as a DuckLake: ``ATTACH 'ducklake:<catalog>' (DATA_PATH ...)``.

    The catalog is a PostgreSQL database (``ducklake:postgres:<libpq conninfo>``, for several
    hosts) or a local DuckDB file (``ducklake:<path>``); the tables' Parquet files live under
    ``data_path`` (local or ``s3://``). Writers are not serialized by a lock: DuckLake commits
    optimistically and :meth:`replace_partition` redoes a conflicted transaction (bounded). Readers
    see committed snapshots and never wait. The same tables, views, macros, comments and checks
    as the DuckDB file.
    """

    def __init__(self, uri: str, data_path: str, s3: Mapping[str, str] | None = None,
                 lock_timeout_s: float = DEFAULT_LOCK_TIMEOUT_S, open_timeout_s: float = DEFAULT_OPEN_TIMEOUT_S):
        if not uri.startswith(DUCKLAKE_PREFIX):
            raise ValueError("a DuckLake URI starts with ducklake:")
        self.uri = uri
        self.data_path = data_path.rstrip("/") + "/"
        self.s3 = dict(s3 or {})
        self.path = Path(data_path)  # where storage errors are reported
        self.lock_timeout_s = lock_timeout_s
        self.open_timeout_s = open_timeout_s

    def __repr__(self) -> str:
        return f"DuckLakeWarehouse({redact_uri(self.uri)}, data_path={self.data_path})"

    def connect(self, read_only: bool) -> duckdb.DuckDBPyConnection:
        """An attached connection (``USE warehouse``); failures as one redacted line."""
        con = duckdb.connect(config=_READER_CONFIG if read_only else WRITER_CONFIG)
        try:
            if self.uri.startswith(DUCKLAKE_PREFIX + "postgres:"):
                load_extension(con, "postgres")
            load_extension(con, "ducklake")
            if self.data_path.startswith("s3://"):
                load_extension(con, "httpfs")
                con.execute(_s3_secret(self.s3))
                # Upload parts of ~5 MiB (S3's minimum) instead of the default ~77 MiB, which alone
                # would exceed the writer's 32 MB memory limit: part size = max file size / 10,000.
                con.execute("SET s3_uploader_max_filesize = '50GB'")
            options = f"DATA_PATH {sql_literal(self.data_path)}" + (", READ_ONLY" if read_only else "")
            for attempt in range(1, _INIT_ATTEMPTS + 1):
                try:
                    con.execute(f"ATTACH {sql_literal(self.uri)} AS {_CATALOG} ({options})")
                    break
                except duckdb.Error as error:
                    # Two first writers creating the catalog at once: one wins, the other attaches it.
                    if attempt == _INIT_ATTEMPTS or not _INIT_RACE.search(str(error)):
                        raise
                    time.sleep(0.5 * attempt)
            con.execute(f"USE {_CATALOG}")
        except duckdb.Error as error:
            con.close()
            raise WarehouseUnusableError(f"cannot attach the DuckLake warehouse {redact_uri(self.uri)}: "
                                         f"{redact_uri(' '.join(str(error).split()))}") from None
        except BaseException:
            con.close()
            raise
        return con

    @contextmanager
    def writer(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A read-write connection on the attached DuckLake, tables and views prepared."""
        con = self.connect(read_only=False)
        try:
            try:
                for attempt in range(1, MAX_COMMIT_ATTEMPTS + 1):
                    try:
                        prepare(con)  # idempotent: each statement commits on its own
                        break
                    except duckdb.TransactionException as error:  # another writer prepared it at the same moment
                        if not _CONFLICT.search(str(error)) or attempt == MAX_COMMIT_ATTEMPTS:
                            raise
                        time.sleep(random.uniform(0, min(_CONFLICT_BACKOFF_MAX_S, 0.25 * 2**attempt)))
            except duckdb.Error as error:
                raise self._translate(error) from None
            yield con
        finally:
            _close(con)

    @contextmanager
    def reader(self, timeout_s: float | None = None) -> Iterator[duckdb.DuckDBPyConnection]:
        """A read-only connection on the latest committed snapshot (never waits for writers)."""
        con = self.connect(read_only=True)
        try:
            yield con
        except duckdb.Error as error:
            raise _redacted(error, self.uri) from None
        finally:
            con.close()

    def _translate(self, error: duckdb.Error) -> BaseException:
        translated = _translate(error, self.path)
        return _redacted(translated, self.uri)

    def replace_partition(self, *args, **kwargs) -> tuple[dict[str, int], bool]:
        """:meth:`Warehouse.replace_partition`, with the catalog's password out of every error."""
        try:
            return super().replace_partition(*args, **kwargs)
        except duckdb.Error as error:
            raise _redacted(error, self.uri) from None


def _redacted(error: BaseException, uri: str) -> BaseException:
    """``error``, or a copy of it of the same type whose text holds no password of ``uri``."""
    text = str(error)
    clean = redact_uri(text)
    for password in uri_passwords(uri):
        clean = clean.replace(password, "***")
    if clean == text:
        return error
    try:
        return type(error)(clean)
    except Exception:  # noqa: BLE001 -- an exception type with another signature
        return WarehouseError(clean)


def _s3_secret(s3: Mapping[str, str]) -> str:
    """``CREATE SECRET`` for an s3:// data path from the standard AWS settings."""
    parts = ["TYPE s3"]
    for option, key in (("KEY_ID", "key_id"), ("SECRET", "secret"), ("SESSION_TOKEN", "session_token"),
                        ("REGION", "region")):
        if s3.get(key):
            parts.append(f"{option} {sql_literal(s3[key])}")
    endpoint = s3.get("endpoint_url")
    if endpoint:
        scheme, _, host = endpoint.partition("://")
        parts += [f"ENDPOINT {sql_literal(host.rstrip('/'))}", "URL_STYLE 'path'",
                  f"USE_SSL {'true' if scheme == 'https' else 'false'}"]
    return f"CREATE OR REPLACE SECRET campaign_pipeline_s3 ({', '.join(parts)})"


def open_warehouse(cfg, lock_timeout_s: float = DEFAULT_LOCK_TIMEOUT_S,
                   open_timeout_s: float = DEFAULT_OPEN_TIMEOUT_S) -> Warehouse:
    """The configured warehouse: the DuckDB file ``<data_dir>/warehouse.duckdb``, or the DuckLake
    of ``CAMPAIGN_WAREHOUSE_URI`` (``cfg`` is a :class:`campaign_pipeline.config.PipelineConfig`)."""
    if not cfg.warehouse_uri:
        return Warehouse(cfg.warehouse_path, lock_timeout_s, open_timeout_s)
    return DuckLakeWarehouse(cfg.warehouse_uri, cfg.ducklake_data_path, s3_settings(cfg.s3_endpoint_url, cfg.s3_region),
                             lock_timeout_s, open_timeout_s)


def s3_settings(endpoint_url: str | None, region: str | None, env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The S3 options of a DuckLake data path on S3, from the standard AWS variables."""
    env = os.environ if env is None else env
    return {key: value for key, value in (
        ("key_id", env.get("AWS_ACCESS_KEY_ID")), ("secret", env.get("AWS_SECRET_ACCESS_KEY")),
        ("session_token", env.get("AWS_SESSION_TOKEN")), ("region", region), ("endpoint_url", endpoint_url),
    ) if value}
