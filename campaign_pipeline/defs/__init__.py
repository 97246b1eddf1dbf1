"""The Dagster code location (``definitions``) and its assets, backfill, schedules, alerts and
table metadata: the only package that imports ``dagster``. It may import everything below it
(``engine``, ``config``, ``quality``, ``storage``, ``model``); nothing imports it except the
front ends (``cli``) and the tests."""
