"""Built-in plugin: the DuckDB offline store (source tables, point-in-time retrieval).

Answers ``lab_offline_store`` last (``trylast``), so any other plugin's store wins.
"""

from __future__ import annotations

from lab import hookimpl
from plugins.duckdb_offline.store import DuckDBOfflineStore

__all__ = ["DuckDBOfflineStore", "lab_offline_store"]


@hookimpl(trylast=True)
def lab_offline_store(config):
    """The DuckDB file at ``config.offline_store_path`` (``data/offline.duckdb``)."""
    return DuckDBOfflineStore(config.offline_store_path)
