"""Redis Streams as the event log of ``lab stream`` (``lab_event_log``).

Active only in a lab that configures it, with a ``[tool.lab.redis_streams]`` table::

    [tool.lab.redis_streams]
    url = "redis://127.0.0.1:6379/0"
    # claim_idle_s = 30.0     # a pending event idle this long is taken over from its consumer (XAUTOCLAIM)
    # key_prefix = "lab:"     # the stream's Redis key is key_prefix + stream name
    # maxlen = 0              # trim the stream to about this many events on append (0: never)

Events are XADDed with one field, ``data`` (the JSON text); a consumer group is created
from the stream's start (XGROUP CREATE ... 0 MKSTREAM) the first time a consumer of it
reads; consumers read with XREADGROUP, take over a dead consumer's pending entries with
XAUTOCLAIM and acknowledge with XACK once the batch's predictions are committed.
"""

from __future__ import annotations

from lab import hookimpl

__version__ = "0.1.0"


@hookimpl
def lab_event_log(config, stream):
    """The Redis log, for labs with ``[tool.lab.redis_streams]``; None otherwise."""
    table = config.section("redis_streams")
    if table is None:
        return None
    # Imported only for a lab that uses Redis: redis-py stays off every other command's path.
    from plugins.redis_streams.log import RedisEventLog, RedisSettings

    return RedisEventLog(RedisSettings.from_table(table), stream)
