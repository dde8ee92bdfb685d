"""Built-in plugin: the SQLite online store (latest feature values for serving).

Answers ``lab_online_store`` last (``trylast``), so any other plugin's store wins.
The store (``store.py``, with pyarrow) loads only when a lab asks for it, so other
``lab`` commands start without it; ``SQLiteOnlineStore`` is still importable from here.
"""

from __future__ import annotations

from lab import hookimpl

__all__ = ["SQLiteOnlineStore", "lab_online_store"]


@hookimpl(trylast=True)
def lab_online_store(config):
    """The SQLite file at ``config.online_store_path`` (``data/online.db``)."""
    from plugins.sqlite_online.store import SQLiteOnlineStore  # pyarrow only once a store is asked for

    return SQLiteOnlineStore(config.online_store_path)


def __getattr__(name: str):
    if name == "SQLiteOnlineStore":
        from plugins.sqlite_online.store import SQLiteOnlineStore  # pyarrow only on first use

        return SQLiteOnlineStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
