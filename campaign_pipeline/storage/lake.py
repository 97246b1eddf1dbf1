"""The lake: raw landing files and hive-partitioned Parquet, through one pyarrow filesystem.

Layout under the lake root (``<app>`` is the app's key, ``default`` for a single-app deployment)::

    raw/date=YYYY-MM-DD/responses-<app>.ndjson.zst  one JSON line per API response page (zstd)
    <table>/date=YYYY-MM-DD/part-<app>.parquet      one file per table, day and app

Every file is written in two steps: staged under a hidden temporary name beside its final path
(readers of hive datasets skip names starting with ``.``), then committed by a rename over the
final name once the day has passed its checks (:class:`StagedFile`). On object stores, where a
single upload is already atomic, the file is staged as a local temporary file and uploaded to its
final key at commit.
"""

from __future__ import annotations

import codecs
import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date

import orjson
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from campaign_pipeline import settings
from campaign_pipeline.crashpoints import crash_point
from campaign_pipeline.errors import LandingCorruptError
from campaign_pipeline.model import schemas

DEFAULT_APP_KEY = "default"
# zstd compresses NDJSON ~15x faster than gzip at a similar ratio (measured: 858 vs 51 MB/s), which
# keeps landing off the critical path; `zstdcat` or pyarrow/DuckDB read it.
RAW_CODEC, RAW_CODEC_SUFFIX = "zstd", "zst"
_TEMP_MARK = ".tmp-"
#: Landing files start with a begin line naming this format and end with an end line carrying
#: the SHA-256 of every line before it, which a re-split verifies.
LANDING_FORMAT = 2
_BEGIN, _END = "_begin", "_end"
QUARANTINE_DIRNAME = "_quarantine"
#: Rows buffered before a streamed Parquet write emits a row group (bounds its memory).
PARQUET_ROW_GROUP_ROWS = 16_384


@dataclass(frozen=True)
class RawPage:
    """One landed API response page: which endpoint, which campaign (details) and its records."""

    endpoint: str
    history_id: str | None
    offset: int
    records: list


def s3_filesystem(endpoint_url: str | None = None, region: str | None = None) -> pafs.S3FileSystem:
    """An S3 filesystem; credentials come from the standard AWS variables/chain, an S3-compatible
    endpoint (MinIO, moto, R2...) from ``endpoint_url`` (e.g. ``AWS_ENDPOINT_URL``)."""
    options: dict = {"region": region or "us-east-1"}
    if endpoint_url:
        scheme, _, rest = endpoint_url.partition("://")
        options.update(endpoint_override=rest.rstrip("/"), scheme=scheme)
    return pafs.S3FileSystem(**options)


class Lake:
    """Reads and writes the lake under ``root``: a local path, or ``s3://bucket/prefix``."""

    def __init__(self, root: str, filesystem: pafs.FileSystem | None = None, *,
                 s3_endpoint_url: str | None = None, s3_region: str | None = None):
        if filesystem is None:
            if root.startswith("s3://"):
                filesystem, root = s3_filesystem(s3_endpoint_url, s3_region), root[len("s3://"):]
            elif "://" in root:
                filesystem, root = pafs.FileSystem.from_uri(root)
            else:
                filesystem, root = pafs.LocalFileSystem(), os.path.abspath(root)
        self.fs = filesystem
        self.root = root.rstrip("/")
        self.is_local = isinstance(filesystem, pafs.LocalFileSystem)

    def __repr__(self) -> str:
        return f"Lake({self.fs.type_name}:{self.root})"

    # -- paths -----------------------------------------------------------------------------
    def partition_dir(self, table: str, day: date) -> str:
        """Directory of one table's day: ``<root>/<table>/date=YYYY-MM-DD``."""
        return f"{self.root}/{table}/date={day.isoformat()}"

    def parquet_path(self, table: str, day: date, app_key: str = DEFAULT_APP_KEY) -> str:
        """The Parquet file of one table's day for one app."""
        return f"{self.partition_dir(table, day)}/part-{app_key}.parquet"

    def raw_path(self, day: date, app_key: str = DEFAULT_APP_KEY) -> str:
        """The raw landing file of one day for one app."""
        return f"{self.partition_dir(settings.RAW_DIRNAME, day)}/responses-{app_key}.ndjson.{RAW_CODEC_SUFFIX}"

    def quarantine_dir(self, day: date, run_id: str) -> str:
        """Where a run keeps a day's version that failed its checks: ``<root>/_quarantine/date=<day>/run=<run_id>``
        (hidden from the tables' hive datasets, which live under their own directories)."""
        return f"{self.root}/{QUARANTINE_DIRNAME}/date={day.isoformat()}/run={run_id}"

    def write_json(self, path: str, value) -> str:
        """Write a small JSON document atomically; returns the path."""
        with self._staged_output(path) as (stream, staged):
            stream.write(_dumps(value))
        return staged.commit()

    def table_dir(self, table: str) -> str:
        """Root of one table's hive-partitioned dataset."""
        return f"{self.root}/{table}"

    def exists(self, path: str) -> bool:
        """True if a file exists at ``path``."""
        return self.fs.get_file_info(path).type == pafs.FileType.File

    # -- staged (write, then publish) writes -------------------------------------------------
    @contextmanager
    def _staged_output(self, path: str) -> Iterator[tuple[pa.NativeFile, StagedFile]]:
        """A stream to a hidden temporary file; once the block completes, the returned
        :class:`StagedFile` is complete but not yet visible at ``path`` (see :meth:`StagedFile.commit`).
        If the block fails, the temporary file is removed."""
        directory = path.rsplit("/", 1)[0]
        if self.is_local:
            self.fs.create_dir(directory, recursive=True)
            _remove_orphaned_temps(directory)
            temp = f"{directory}/.{path.rsplit('/', 1)[1]}{_TEMP_MARK}{os.getpid()}-{uuid.uuid4().hex}"
        else:
            # Object stores: written to a local temporary file and uploaded only at commit, since
            # closing an object-store stream completes the upload (a write that failed halfway
            # would otherwise replace the object with a truncated one).
            temp = os.path.join(tempfile.mkdtemp(prefix="campaign-upload-"), "object")
        staged = StagedFile(self, path, temp)
        try:
            with pa.OSFile(temp, "wb") as stream:
                yield stream, staged
            with open(temp, "rb+") as handle:  # durable before it becomes visible
                os.fsync(handle.fileno())
        except BaseException:
            staged.discard()
            raise

    def stage_parquet(self, table_name: str, day: date, data: pa.Table | pa.RecordBatchReader,
                      app_key: str = DEFAULT_APP_KEY) -> StagedFile:
        """Write one table's day (for one app) as a staged Parquet file (visible only after its
        :meth:`StagedFile.commit`), in row groups of ``PARQUET_ROW_GROUP_ROWS`` rows. An empty
        table is written too, so a day that lost all its rows does not keep stale ones."""
        path = self.parquet_path(table_name, day, app_key)
        reader = data.to_reader() if isinstance(data, pa.Table) else data
        spec = schemas.TABLES.get(table_name)
        dictionary = [n for n in reader.schema.names if n not in spec.mostly_unique_columns] if spec else True
        with (self._staged_output(path) as (stream, staged),
              pq.ParquetWriter(stream, reader.schema, compression="zstd", use_dictionary=dictionary) as out):
            pending: list[pa.RecordBatch] = []
            pending_rows = 0
            for batch in reader:
                pending.append(batch)
                pending_rows += batch.num_rows
                while pending_rows >= PARQUET_ROW_GROUP_ROWS:
                    buffered = pa.Table.from_batches(pending)
                    out.write_table(buffered.slice(0, PARQUET_ROW_GROUP_ROWS), row_group_size=PARQUET_ROW_GROUP_ROWS)
                    rest = buffered.slice(PARQUET_ROW_GROUP_ROWS)
                    pending, pending_rows = rest.to_batches(), rest.num_rows
            if pending_rows:
                out.write_table(pa.Table.from_batches(pending), row_group_size=pending_rows)
        return staged

    def write_parquet(self, table_name: str, day: date, data: pa.Table | pa.RecordBatchReader,
                      app_key: str = DEFAULT_APP_KEY) -> str:
        """Atomically replace one table's day (for one app) with ``data`` (see
        :meth:`stage_parquet`); returns the path."""
        return self.stage_parquet(table_name, day, data, app_key).commit()

    def read_parquet(self, table_name: str, day: date, app_key: str = DEFAULT_APP_KEY) -> pa.Table | None:
        """One table's day (for one app) as Arrow, or ``None`` when it was never written."""
        path = self.parquet_path(table_name, day, app_key)
        if not self.exists(path):
            return None
        with self.fs.open_input_file(path) as handle:
            return pq.read_table(handle)

    # -- raw landing -----------------------------------------------------------------------
    @contextmanager
    def raw_writer(self, day: date, app_key: str = DEFAULT_APP_KEY) -> Iterator[RawWriter]:
        """Write a day's raw landing file. Once the block completes, ``writer.staged`` holds the
        complete file, visible only after its :meth:`StagedFile.commit`."""
        with self._staged_output(self.raw_path(day, app_key)) as (stream, staged):
            with pa.CompressedOutputStream(stream, RAW_CODEC) as compressed:
                writer = RawWriter(compressed)
                yield writer
                writer.finish()
            writer.staged = staged

    def has_raw(self, day: date, app_key: str = DEFAULT_APP_KEY) -> bool:
        """True if a complete raw landing file exists for ``day``."""
        return self.exists(self.raw_path(day, app_key))

    def iter_raw_pages(self, day: date, app_key: str = DEFAULT_APP_KEY) -> Iterator[RawPage]:
        """The landed pages of ``day`` in the order they were written (summary pages first),
        verified: a file that is empty, truncated, undecodable or whose SHA-256 differs from its
        end line raises :class:`LandingCorruptError` (after its last page: callers must not
        publish before the iteration ends). Files landed before checksums existed (no begin
        line) are read unverified."""
        path = self.raw_path(day, app_key)
        digest, verified, ended, lines = hashlib.sha256(), False, False, 0
        try:
            with self.fs.open_input_stream(path, compression=RAW_CODEC) as stream:
                for line in _lines(stream):
                    lines += 1
                    if ended:
                        raise LandingCorruptError(f"landing file {path} has data after its end line")
                    item = _loads(line, f"landing file {path}")
                    endpoint = item.get("endpoint")
                    if endpoint == _END:
                        _verify_end(item, digest, path)
                        ended = True
                        continue
                    digest.update(line + b"\n")
                    if endpoint == _BEGIN and lines == 1:
                        verified = True
                        continue
                    page_records = item["response"][settings.ENVELOPE_RESULT] if "response" in item else item["result"]
                    yield RawPage(endpoint, item.get("history_id"), item.get("offset", 0), page_records)
        except (OSError, pa.ArrowException, KeyError, TypeError, AttributeError) as error:
            raise LandingCorruptError(f"landing file {path} cannot be read ({type(error).__name__}); "
                                      "re-fetch the day without --resplit") from None
        if lines == 0:
            raise LandingCorruptError(f"landing file {path} is empty; re-fetch the day without --resplit")
        if verified and not ended:
            raise LandingCorruptError(f"landing file {path} is truncated (no end line); "
                                      "re-fetch the day without --resplit")


class StagedFile:
    """A complete file under a hidden temporary name: :meth:`commit` makes it the file at ``path``
    (a rename, or the upload on object stores); :meth:`discard` drops it."""

    def __init__(self, lake: Lake, path: str, temp: str):
        self.lake = lake
        self.path = path
        self._temp: str | None = temp

    def __repr__(self) -> str:
        return f"StagedFile({self.path}, {'pending' if self._temp else 'done'})"

    @property
    def local_path(self) -> str:
        """The staged file's path on local disk (readable until it is committed or discarded)."""
        if self._temp is None:
            raise RuntimeError(f"{self.path} was already committed or discarded")
        return self._temp

    def commit(self, path: str | None = None) -> str:
        """Make the staged file visible at its path (or at ``path``, e.g. a quarantine), replacing
        what was there; returns the path."""
        if self._temp is None:
            raise RuntimeError(f"{self.path} was already committed or discarded")
        temp, self._temp = self._temp, None
        target = path or self.path
        crash_point("file_before_rename")
        if self.lake.is_local:
            self.lake.fs.create_dir(target.rsplit("/", 1)[0], recursive=True)
            self.lake.fs.move(temp, target)
        else:
            self.lake.fs.create_dir(target.rsplit("/", 1)[0], recursive=True)
            pafs.copy_files(temp, target, source_filesystem=pafs.LocalFileSystem(),
                            destination_filesystem=self.lake.fs)
            shutil.rmtree(os.path.dirname(temp), ignore_errors=True)
        return target

    def discard(self) -> None:
        """Remove the staged file (no-op once committed or discarded)."""
        if self._temp is None:
            return
        temp, self._temp = self._temp, None
        with contextlib.suppress(FileNotFoundError):
            os.remove(temp)
        if not self.lake.is_local:
            shutil.rmtree(os.path.dirname(temp), ignore_errors=True)


class RawWriter:
    """Appends API response pages to a raw landing file, one JSON line each.

    A line is ``{"endpoint", "history_id", "offset", "result": [records]}`` (:meth:`write_page`), or
    ``{"endpoint", "history_id", "offset", "response": {...}}`` with the response body spliced in
    byte for byte (:meth:`write_response`), which saves re-encoding every page.
    """

    def __init__(self, stream: pa.NativeFile):
        self._stream = stream
        self._digest = hashlib.sha256()
        self.staged: StagedFile | None = None  # set once the file is complete
        self.pages = 0
        self.records = 0
        self._write(orjson.dumps({"endpoint": _BEGIN, "format": LANDING_FORMAT}) + b"\n")

    def _write(self, line: bytes) -> None:
        self._digest.update(line)
        self._stream.write(line)

    def write_page(self, endpoint: str, history_id: str | None, offset: int, page_records: list,
                   original_sha256: str | None = None) -> None:
        """Append one page; records are kept verbatim, unknown fields included."""
        item = {"endpoint": endpoint, "history_id": history_id, "offset": offset, "result": page_records}
        if original_sha256 is not None:
            item["original_sha256"] = original_sha256
        self._write(_dumps(item) + b"\n")
        self.pages += 1
        self.records += len(page_records)
        crash_point("landing_page")

    def write_response(self, endpoint: str, history_id: str | None, offset: int, body: bytes, row_count: int) -> None:
        """Append one page as its response body (a JSON object whose ``result`` holds
        ``row_count`` records), spliced in byte for byte when it is one line of plain JSON. A body
        with a UTF-8 BOM or spread over several lines is normalized (re-encoded onto one line,
        without the BOM) and the original bytes' SHA-256 recorded beside it."""
        if body.startswith(codecs.BOM_UTF8) or b"\n" in body or b"\r" in body:
            records = _loads(body.removeprefix(codecs.BOM_UTF8), "response body")[settings.ENVELOPE_RESULT]
            self.write_page(endpoint, history_id, offset, records, hashlib.sha256(body).hexdigest())
            return
        header = orjson.dumps({"endpoint": endpoint, "history_id": history_id, "offset": offset})
        self._write(b"".join((header[:-1], b',"response":', body, b"}\n")))
        self.pages += 1
        self.records += row_count
        crash_point("landing_page")

    def finish(self) -> None:
        """Append the end line: page and record counts and the SHA-256 of every line before it."""
        self._stream.write(_dumps({"endpoint": _END, "pages": self.pages, "records": self.records,
                                   "sha256": self._digest.hexdigest()}) + b"\n")


def _dumps(item) -> bytes:
    """JSON bytes; text that is not valid Unicode (a lone surrogate) is kept as its escape."""
    try:
        return orjson.dumps(item)
    except TypeError:
        return json.dumps(item, separators=(",", ":")).encode()


def _loads(line: bytes, where: str):
    """Decode one JSON value; the stdlib decoder takes lone surrogate escapes orjson refuses."""
    try:
        return orjson.loads(line)
    except orjson.JSONDecodeError:
        try:
            return json.loads(line)
        except ValueError:
            raise LandingCorruptError(f"{where}: a line is not valid JSON; re-fetch the day without --resplit") from None


def _verify_end(item: dict, digest, path: str) -> None:
    if item.get("sha256") != digest.hexdigest():
        raise LandingCorruptError(f"landing file {path} fails its checksum (corrupted); "
                                  "re-fetch the day without --resplit")


def _remove_orphaned_temps(directory: str) -> None:
    """Delete temporary files left by writers that died (their pid no longer runs).

    Temporary names are hidden (``.name.tmp-<pid>-<uuid>``), so readers never saw them; this only
    reclaims the space. A live writer's temporary file is left alone.
    """
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return
    for name in names:
        if not name.startswith(".") or _TEMP_MARK not in name:
            continue
        pid_text = name.rsplit(_TEMP_MARK, 1)[1].split("-", 1)[0]
        if pid_text.isdigit() and not pid_alive(int(pid_text)):
            try:
                os.remove(os.path.join(directory, name))
            except FileNotFoundError:
                pass


def pid_alive(pid: int) -> bool:
    """True if process ``pid`` still runs (or is this process)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
        return False
    except PermissionError:
        return True
    return True


def _lines(stream: pa.NativeFile, chunk_size: int = 1 << 20) -> Iterator[bytes]:
    """Split a byte stream into lines without holding more than one chunk plus one line."""
    pending = b""
    while chunk := stream.read(chunk_size):
        pending += chunk
        *complete, pending = pending.split(b"\n")
        yield from (line for line in complete if line)
    if pending:
        yield pending
