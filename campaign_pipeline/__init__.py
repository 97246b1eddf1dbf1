"""campaign_pipeline: CINNOX sent SMS/WhatsApp campaigns -> Parquet lake -> DuckDB warehouse.

Layers, imported one way only (a layer imports only the layers below it)::

    cli, report_cli          the command line (front end)
    definitions, orchestration   the Dagster code location (front end; the only dagster imports)
    engine                   a run's days: fetch, land, type, write, audit, publish
    quality, reporting       checks and analyst queries over the warehouse
    warehouse, lake          DuckDB (one transaction per app and day) and the Parquet/landing files
    transform                a day's pages -> typed Arrow tables (records, schemas)
    config                   the one declaration of every setting (client, pii, windows)
    client                   HTTP: paging, the one retry loop, the rate limiter
    crashpoints, settings, errors

Only :mod:`campaign_pipeline.definitions` and :mod:`campaign_pipeline.orchestration` import
``dagster``. The simulator is a separate, independent implementation of the CINNOX API and imports
nothing from the pipeline.
"""

import os as _os
import sys as _sys

__version__ = "0.1.0"

if "pyarrow" not in _sys.modules:
    # Arrow allocates in the fetch threads; its default pool (mimalloc) keeps freed pages per
    # thread, which measured ~70 MB (1x) to ~200 MB (10x) more peak RSS than the system allocator
    # for a backfill. Set ARROW_DEFAULT_MEMORY_POOL yourself to choose another pool.
    _os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")

