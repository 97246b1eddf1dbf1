"""Dagster table metadata for the warehouse tables, from the Arrow schemas and the data dictionary.

Dagster's conventions (``dagster._core.definitions.metadata.metadata_set.TableMetadataSet`` in
1.13; not exported from ``dagster`` itself, so the keys are written out here and
``tests/unit/model/test_dictionary.py`` checks that ``TableMetadataSet`` reads them back):

- definition metadata of a table asset: ``dagster/column_schema`` (a :class:`dagster.TableSchema`:
  the UI's "Columns" panel) and ``dagster/table_name`` (the fully qualified name, as Dagster's own
  database I/O managers write it: ``database.schema.table``);
- materialization metadata: ``dagster/partition_row_count`` (rows of the partition just written)
  and ``dagster/row_count`` (rows of the whole asset after it).
"""

from __future__ import annotations

import math

import dagster as dg

from campaign_pipeline.model import dictionary, schemas

#: DuckDB names a database file's catalog after the file's stem (``warehouse.duckdb``).
WAREHOUSE_DATABASE = "warehouse"
WAREHOUSE_SCHEMA = "main"

COLUMN_SCHEMA_KEY = "dagster/column_schema"
TABLE_NAME_KEY = "dagster/table_name"
ROW_COUNT_KEY = "dagster/row_count"
PARTITION_ROW_COUNT_KEY = "dagster/partition_row_count"

RATE_DIGITS = 4


def _spec(table_name: str) -> schemas.TableSpec:
    try:
        return schemas.TABLES[table_name]
    except KeyError:
        raise ValueError(f"unknown table {table_name!r}; the tables are {', '.join(schemas.TABLES)}") from None


def qualified_table_name(table_name: str, database: str = WAREHOUSE_DATABASE) -> str:
    """``database.main.table_name``, e.g. ``warehouse.main.sms_messages`` (what ``dagster/table_name`` holds)."""
    return f"{database}.{WAREHOUSE_SCHEMA}.{_spec(table_name).name}"


def table_schema(table_name: str) -> dg.TableSchema:
    """The Dagster column schema of a warehouse table: one column per Arrow field, in order, with its
    DuckDB type, its meaning from :mod:`campaign_pipeline.model.dictionary` and ``nullable`` from the field;
    the table's key, if any, as a table constraint. Raises :class:`dictionary.DictionaryError` if a
    column has no meaning."""
    spec = _spec(table_name)
    descriptions = dictionary.column_descriptions(spec.name)
    missing = [field.name for field in spec.schema if field.name not in descriptions]
    if missing:
        raise dictionary.DictionaryError(f"table {spec.name}: no meaning for column(s) {', '.join(missing)} "
                                         "in campaign_pipeline/model/dictionary.py")
    columns = [
        dg.TableColumn(
            name=field.name,
            type=schemas.duckdb_type(field.type),
            description=descriptions[field.name],
            constraints=dg.TableColumnConstraints(nullable=field.nullable),
        )
        for field in spec.schema
    ]
    constraints = (dg.TableConstraints(other=[f"unique key: ({', '.join(spec.key_columns)})"])
                   if spec.key_columns else None)
    return dg.TableSchema(columns=columns, constraints=constraints)


def table_definition_metadata(table_name: str, database: str = WAREHOUSE_DATABASE) -> dict[str, dg.MetadataValue]:
    """Definition metadata for the asset of warehouse table ``table_name`` (for its ``dg.AssetSpec``):
    ``dagster/column_schema`` (:func:`table_schema`) and ``dagster/table_name``
    (:func:`qualified_table_name`). Every app's asset of a table gets the same table name: they
    share the DuckDB table, told apart by ``app_id``."""
    return {
        COLUMN_SCHEMA_KEY: dg.MetadataValue.table_schema(table_schema(table_name)),
        TABLE_NAME_KEY: dg.MetadataValue.text(qualified_table_name(table_name, database)),
    }


def partition_metadata(table_name: str, partition_rows: int, table_rows: int | None = None) -> dict[str, dg.MetadataValue]:
    """Materialization metadata of one partition of table ``table_name``: ``dagster/partition_row_count``
    (the rows the partition now has) and, if known, ``dagster/row_count`` (the asset's rows after the
    commit: the table's rows of this app, every day)."""
    _spec(table_name)
    metadata: dict[str, dg.MetadataValue] = {PARTITION_ROW_COUNT_KEY: dg.MetadataValue.int(int(partition_rows))}
    if table_rows is not None:
        metadata[ROW_COUNT_KEY] = dg.MetadataValue.int(int(table_rows))
    return metadata


def rate_metadata(value: float | None) -> dg.FloatMetadataValue | dg.NullMetadataValue:
    """A rate (a fraction, 0..1, like the views' ``*_rate`` columns) as numeric metadata rounded to
    4 digits (``0.9735``), so the UI shows it readably and plots it across partitions. ``None`` or NaN
    (no settled message: the rate is undefined) gives ``MetadataValue.null()``, a gap in the plot;
    leave the key out instead to show nothing."""
    if value is None or math.isnan(float(value)):
        return dg.MetadataValue.null()
    return dg.MetadataValue.float(round(float(value), RATE_DIGITS))
