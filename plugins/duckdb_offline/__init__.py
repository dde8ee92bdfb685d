"""Built-in plugin: the DuckDB offline store (source tables, point-in-time retrieval).

Answers ``lab_offline_store`` last (``trylast``), so any other plugin's store wins.
DuckDB, numpy and pyarrow load only when a store is made (``store.py``), so every other
``lab`` command starts without them; ``DuckDBOfflineStore`` is still importable from here.
"""

from __future__ import annotations

from lab import hookimpl

__all__ = ["DuckDBOfflineStore", "lab_offline_store"]


@hookimpl(trylast=True)
def lab_offline_store(config):
    """The DuckDB file at ``config.offline_store_path`` (``data/offline.duckdb``)."""
    from plugins.duckdb_offline.store import DuckDBOfflineStore  # duckdb only once a store is asked for

    return DuckDBOfflineStore(config.offline_store_path)


def __getattr__(name: str):
    if name == "DuckDBOfflineStore":
        from plugins.duckdb_offline.store import DuckDBOfflineStore  # duckdb only on first use

        return DuckDBOfflineStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
