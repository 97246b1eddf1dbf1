"""campaign_pipeline: CINNOX sent SMS/WhatsApp campaigns -> Parquet lake -> DuckDB warehouse.

Layers, imported one way only (a layer imports only the layers below it)::

    cli, report_cli          the command line (front end)
    defs/                    the Dagster code location (front end; the only dagster imports)
    engine                   a run's days: fetch, land, type, write, audit, publish
    quality, reporting       checks and analyst queries over the warehouse
    config                   the one declaration of every setting (validators from cinnox, model, storage)
    storage/                 lake, warehouse (DuckDB/DuckLake), analysts' database, locations, sql/ views
    model/                   schemas, records, transform, pii, windows, dictionary
    cinnox/                  the CINNOX HTTP client: paging, the one retry loop, pacing, responses
    crashpoints, settings, errors

Two lazy imports go upward: ``model.dictionary`` -> ``storage.warehouse`` and ``storage.analytics`` ->
``config``.

Only :mod:`campaign_pipeline.defs` (the code location and its modules) imports
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

