"""Redis as the online store (``lab_online_store``), for labs that configure it.

Active only in a lab with a ``[tool.lab.redis_online]`` table; every other lab keeps the
built-in SQLite store (which answers last)::

    [tool.lab.redis_online]
    url = "redis://127.0.0.1:6379/0"
    # key_prefix = "lab:online:"   # every key of the store starts with it: one lab per prefix
    # socket_timeout_s = 1.0       # a read or write waiting longer fails (serving then uses its fallbacks)
    # connect_timeout_s = 1.0
    # write_batch = 5000           # rows per HSET while a materialization is written
    # staging_ttl_s = 86400        # an unfinished materialization's rows expire after this long

The store (``store.py``, with redis-py and pyarrow) is imported only for a lab that uses it.
"""

from __future__ import annotations

from lab import hookimpl

__version__ = "0.1.0"
__all__ = ["RedisOnlineStore", "lab_online_store"]


@hookimpl
def lab_online_store(config):
    """The Redis store, for labs with ``[tool.lab.redis_online]``; None otherwise."""
    table = config.section("redis_online")
    if table is None:
        return None
    from plugins.redis_online.store import RedisOnlineSettings, RedisOnlineStore

    return RedisOnlineStore(RedisOnlineSettings.from_table(table))


def __getattr__(name: str):
    if name == "RedisOnlineStore":
        from plugins.redis_online.store import RedisOnlineStore

        return RedisOnlineStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
