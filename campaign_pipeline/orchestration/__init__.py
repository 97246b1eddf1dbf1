"""The Dagster layer: the only part of the package that imports ``dagster``."""
