"""Built-in plugin: the SQLite online store (latest feature values for serving).

Answers ``lab_online_store`` last (``trylast``), so any other plugin's store wins.
"""

from __future__ import annotations

from lab import hookimpl
from plugins.sqlite_online.store import SQLiteOnlineStore

__all__ = ["SQLiteOnlineStore", "lab_online_store"]


@hookimpl(trylast=True)
def lab_online_store(config):
    """The SQLite file at ``config.online_store_path`` (``data/online.db``)."""
    return SQLiteOnlineStore(config.online_store_path)
