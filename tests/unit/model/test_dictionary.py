"""The data dictionary reaches where people look: DuckDB COMMENTs, Dagster column schemas, the markdown doc."""

from __future__ import annotations

import math

import dagster as dg
import duckdb
import pyarrow.parquet as pq
import pytest
from dagster._core.definitions.metadata.metadata_set import TableMetadataSet

from campaign_pipeline.defs import table_metadata
from campaign_pipeline.model import dictionary, schemas
from campaign_pipeline.storage.warehouse import SQL_DIR, Warehouse, ensure_views, prepare

NOT_INTERNAL = "database_name = current_database() AND schema_name = 'main' AND NOT internal"


def comments(con) -> dict[tuple[str, str | None], str | None]:
    """(table or view, column or None) -> comment, for every non-internal table, view and column."""
    found: dict[tuple[str, str | None], str | None] = {}
    for name, comment in con.execute(f"SELECT table_name, comment FROM duckdb_tables() WHERE {NOT_INTERNAL} "
                                     f"UNION ALL SELECT view_name, comment FROM duckdb_views() "
                                     f"WHERE {NOT_INTERNAL}").fetchall():
        found[(name, None)] = comment
    for name, column, comment in con.execute(f"SELECT table_name, column_name, comment FROM duckdb_columns() "
                                             f"WHERE {NOT_INTERNAL}").fetchall():
        found[(name, column)] = comment
    return {key: value for key, value in found.items() if not key[0].startswith("_")}


@pytest.fixture
def warehouse_path(tmp_path):
    """A real warehouse file, prepared by the project's writer, with the comments applied."""
    path = tmp_path / "warehouse.duckdb"
    with Warehouse(path).writer() as con:
        assert dictionary.apply_comments(con) > 0
    return path


@pytest.fixture
def con():
    """An in-memory database with this code's tables and views, no comments."""
    connection = duckdb.connect()
    prepare(connection)
    yield connection
    connection.close()


def test_every_table_view_and_column_of_the_warehouse_has_its_comment(warehouse_path):
    with duckdb.connect(str(warehouse_path), read_only=True) as con:
        found = comments(con)
        tables = {name for (name, column) in found if column is None}
        assert tables == set(schemas.TABLES) | {path.stem[3:] for path in SQL_DIR.glob("*.sql")}
        assert all(found.values()), [key for key, value in found.items() if not value]
        assert found[("campaigns", "campaign_id")] == "the campaign's id (the historyID of the detail call)"
        assert found[("campaigns", None)] == dictionary.table_description("campaigns")
        daily = dictionary.column_descriptions("delivery_rates_daily")
        assert found[("delivery_rates_daily", "read")] == daily["read"]
        assert [column for name, column in found if name == "sms_messages" and column] == \
            schemas.SMS_MESSAGES_SCHEMA.names


def test_the_dictionary_knows_exactly_the_tables_and_views_and_their_columns_in_order(con):
    catalog = {name: columns for _, name, columns in dictionary.catalog(con)}
    assert sorted(dictionary.RELATIONS) == sorted(catalog)
    for name, columns in catalog.items():
        assert list(dictionary.column_descriptions(name)) == columns, name
        assert dictionary.table_description(name), name
        assert "`" not in dictionary.table_description(name) + "".join(dictionary.column_descriptions(name).values())
    for name, spec in schemas.TABLES.items():
        assert list(dictionary.column_descriptions(name)) == spec.schema.names


def test_tables_exposed_as_views_over_parquet_get_the_same_comments(tmp_path):
    """An analysts' database: the table names are views over the lake's Parquet files."""
    con = duckdb.connect(str(tmp_path / "analytics.duckdb"))
    for name, spec in schemas.TABLES.items():
        pq.write_table(spec.schema.empty_table(), tmp_path / f"{name}.parquet")
        con.execute(f"CREATE VIEW {name} AS SELECT * FROM read_parquet('{tmp_path / name}.parquet')")
    ensure_views(con)
    assert con.execute("SELECT count(*) FROM duckdb_tables() WHERE NOT internal").fetchone() == (0,)
    statements = dictionary.comment_statements(con)
    assert 'COMMENT ON VIEW "campaigns" IS ' in "\n".join(statements)
    assert not any(statement.startswith("COMMENT ON TABLE") for statement in statements)
    dictionary.apply_comments(con)
    found = comments(con)
    assert {name for name, column in found if column is None} == set(dictionary.RELATIONS)
    assert all(found.values()), [key for key, value in found.items() if not value]
    assert found[("sms_messages", "recipient")] == dictionary.column_descriptions("sms_messages")["recipient"]
    con.close()


def test_recreated_views_lose_their_comments_until_applied_again(con):
    dictionary.apply_comments(con)
    ensure_views(con)  # CREATE OR REPLACE VIEW, as prepare() does when the definitions change
    assert comments(con)[("messages", "channel")] is None
    dictionary.apply_comments(con)
    assert comments(con)[("messages", "channel")] == "SMS or WhatsApp"


def test_an_unknown_view_fails_loudly_and_nothing_is_commented(con):
    before = comments(con)  # the writer's prepare() already commented what it created
    assert all(before.values())
    con.execute("CREATE VIEW delivery_rates_hourly AS SELECT 1 AS messages")
    with pytest.raises(dictionary.DictionaryError, match="view delivery_rates_hourly has no entry"):
        dictionary.apply_comments(con)
    after = comments(con)
    assert after[("delivery_rates_hourly", None)] is None and after[("delivery_rates_hourly", "messages")] is None
    assert {k: v for k, v in after.items() if k[0] != "delivery_rates_hourly"} == before


def test_an_unknown_column_or_a_vanished_one_fails_loudly(con):
    con.execute("ALTER TABLE campaigns ADD COLUMN budget DOUBLE")
    con.execute("CREATE OR REPLACE VIEW status_latency AS SELECT channel, status FROM messages")
    with pytest.raises(dictionary.DictionaryError) as raised:
        dictionary.comment_statements(con)
    message = str(raised.value)
    assert "table campaigns: no meaning for column(s) budget" in message
    assert "view status_latency: the dictionary lists column(s) it does not have: messages" in message


def test_lookups_of_an_unknown_name_fail():
    with pytest.raises(dictionary.DictionaryError, match="no entry"):
        dictionary.column_descriptions("nope")
    with pytest.raises(dictionary.DictionaryError, match="no entry"):
        dictionary.table_description("nope")


def test_the_markdown_doc_is_generated_from_the_dictionary():
    text = dictionary.DOC_PATH.read_text()
    assert dictionary.render_doc(text) == text, "run: python -m campaign_pipeline.model.dictionary --write"
    assert dictionary.main(["--check"]) == 0


def test_a_doc_without_a_section_is_refused():
    text = dictionary.DOC_PATH.read_text()
    without = text.replace("<!-- generated: status_latency -->", "").replace("<!-- end generated: status_latency -->",
                                                                             "")
    with pytest.raises(dictionary.DictionaryError, match="status_latency"):
        dictionary.render_doc(without)


def test_the_digest_changes_with_a_meaning(monkeypatch):
    before = dictionary.digest()
    relation = dictionary.RELATIONS["campaigns"]
    changed = dictionary.Relation(relation.description,
                                  {**relation.columns, "app_id": dictionary.Column("something else", "-")})
    monkeypatch.setitem(dictionary.RELATIONS, "campaigns", changed)
    assert dictionary.digest() != before


# ------------------------------------------------------------------ Dagster metadata


@pytest.mark.parametrize("name", list(schemas.TABLES))
def test_table_definition_metadata_is_the_arrow_schema_with_meanings(name):
    spec = schemas.TABLES[name]
    metadata = table_metadata.table_definition_metadata(name)
    assert set(metadata) == {"dagster/column_schema", "dagster/table_name"}
    read = TableMetadataSet.extract(metadata)
    assert read.table_name == f"warehouse.main.{name}"
    columns = read.column_schema.columns
    assert [column.name for column in columns] == spec.schema.names
    assert [column.type for column in columns] == [schemas.duckdb_type(f.type) for f in spec.schema]
    assert [column.constraints.nullable for column in columns] == [f.nullable for f in spec.schema]
    assert all(column.description for column in columns)
    assert columns[0].description == dictionary.column_descriptions(name)[spec.schema.names[0]]
    if spec.key_columns:
        assert read.column_schema.constraints.other == [f"unique key: ({', '.join(spec.key_columns)})"]
    asset = dg.AssetSpec(name, metadata=metadata)  # accepted as definition metadata
    assert TableMetadataSet.extract(asset.metadata).column_schema == read.column_schema


def test_partition_metadata_uses_dagsters_row_count_keys():
    metadata = table_metadata.partition_metadata("sms_messages", partition_rows=120, table_rows=4_000)
    read = TableMetadataSet.extract(metadata)
    assert (read.partition_row_count, read.row_count) == (120, 4_000)
    assert set(metadata) == {"dagster/partition_row_count", "dagster/row_count"}
    assert set(table_metadata.partition_metadata("campaigns", 3)) == {"dagster/partition_row_count"}
    with pytest.raises(ValueError, match="unknown table"):
        table_metadata.partition_metadata("nope", 1, 1)


def test_rates_are_short_floats_and_undefined_rates_are_null():
    value = table_metadata.rate_metadata(0.9735123456789)
    assert isinstance(value, dg.FloatMetadataValue) and value.value == 0.9735
    assert table_metadata.rate_metadata(1).value == 1.0
    assert isinstance(table_metadata.rate_metadata(None), dg.NullMetadataValue)
    assert isinstance(table_metadata.rate_metadata(math.nan), dg.NullMetadataValue)
