"""campaign_pipeline: CINNOX sent SMS/WhatsApp campaigns -> Parquet lake -> DuckDB warehouse.

Layers, imported one way only (left may import right, never the reverse)::

    definitions (Dagster) -> pipeline -> client / records -> schemas -> lake / warehouse -> settings, errors

Only :mod:`campaign_pipeline.definitions` imports ``dagster``. The simulator is a separate,
independent implementation of the CINNOX API and imports nothing from the pipeline.
"""

__version__ = "0.1.0"
