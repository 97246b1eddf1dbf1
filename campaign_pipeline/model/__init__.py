"""The data model: the Arrow schemas, record typing, a day's pages -> typed tables, PII
pseudonymization, partition windows and the data dictionary. It imports only ``settings``,
``errors`` and its own modules (one exception today: ``dictionary`` imports
``storage.warehouse`` lazily, to describe the views); never ``dagster``."""
