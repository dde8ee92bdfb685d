"""Spark as the offline store (``lab_offline_store``), for labs that configure it.

Active only in a lab with a ``[tool.lab.spark]`` table (see ``settings``); every other
lab keeps the built-in DuckDB store, which answers last. Sources are Parquet under the
warehouse folder; point-in-time retrieval, materialization reads and batch scoring
(``scoring.score_window_spark``, ``lab spark score``) run in Spark, on ``local[N]`` or
any cluster master. pyspark (the ``spark`` extra) is imported only once a store does
Spark work; one SparkSession per process, stopped at exit (``session``).
"""

from __future__ import annotations

from lab import hookimpl
from lab.cli import Command

__all__ = ["SparkOfflineStore", "lab_cli_commands", "lab_offline_store"]

_COMMANDS = "plugins.spark_offline.commands"


@hookimpl
def lab_offline_store(config):
    """The Spark store, for labs with ``[tool.lab.spark]``; None otherwise."""
    table = config.section("spark")
    if table is None:
        return None
    from plugins.spark_offline.settings import SparkSettings
    from plugins.spark_offline.store import SparkOfflineStore

    settings = SparkSettings.from_table(table)
    return SparkOfflineStore(settings.warehouse_path(config.root), settings)


@hookimpl
def lab_cli_commands():
    """``lab spark score``; the module loads only when it runs."""
    return [Command("spark score", "score a window of the offline store with a registered model through Spark "
                    "(labs with [tool.lab.spark]): Parquet partitions by day", f"{_COMMANDS}:score_args",
                    f"{_COMMANDS}:score_run")]


def __getattr__(name: str):
    if name == "SparkOfflineStore":
        from plugins.spark_offline.store import SparkOfflineStore

        return SparkOfflineStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
