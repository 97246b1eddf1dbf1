"""The storage layer: the Parquet/landing lake, the DuckDB (or DuckLake) warehouse, the analysts'
database, the data-dir locations and the view SQL (``sql/*.sql``). It may import ``model``,
``settings``, ``errors`` and ``crashpoints`` (one exception today: ``analytics`` reads
``config`` lazily for the DuckLake settings); never ``engine``, ``defs`` or ``dagster``."""
