"""The ``EventLog`` contract (``lab.testing.EventLogContract``) on both backends: the embedded
SQLite log and Redis Streams (a real redis-server). Then what only Redis does: taking over a
dead consumer's pending entries with XAUTOCLAIM, and skipping an entry deleted while
pending."""

from __future__ import annotations

import time

import pytest

from lab.streaming import SqliteEventLog
from lab.testing import EventLogContract
from tests.redis_server import redis_url  # noqa: F401  (a fixture)


class TestSqliteEventLog(EventLogContract):
    @pytest.fixture
    def open_log(self, stream_db):
        return lambda: SqliteEventLog(stream_db, "orders")


class TestRedisEventLog(EventLogContract):
    @pytest.fixture
    def open_log(self, redis_url):  # noqa: F811
        from plugins.redis_streams.log import RedisEventLog, RedisSettings

        return lambda: RedisEventLog(RedisSettings(url=redis_url), "orders")


def test_sqlite_events_are_append_only(tmp_path):
    with SqliteEventLog(tmp_path / "stream.db", "orders") as log:
        log.append([{"A": 1}])
        import sqlite3

        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            log._conn.execute("UPDATE events SET payload = '{}'")


def test_redis_a_dead_consumers_pending_entries_are_claimed_with_xautoclaim(redis_url):
    from plugins.redis_streams.log import RedisEventLog, RedisSettings

    settings = RedisSettings(url=redis_url, claim_idle_s=0.05)
    with RedisEventLog(settings, "orders") as dead, RedisEventLog(settings, "orders") as alive:
        ids = dead.append([{"ID": i} for i in range(4)])
        held = dead.read("g", "c1", 3)  # c1 dies holding three
        assert [e.id for e in held] == ids[:3]
        deadline = time.monotonic() + 10
        got, owners = [], {}
        while len(got) < 4:  # the new entry at once; c1's three once idle for claim_idle_s
            batch = alive.read("g", "c2", 10)
            owners.update({p["message_id"]: p for p in alive._redis.xpending_range("lab:orders", "g", "-", "+", 10)})
            alive.acknowledge("g", "c2", batch)  # as a consumer does, batch by batch
            got += batch
            assert time.monotonic() < deadline, f"c1's entries were never claimed: {got}"
        assert [e.id for e in got] == ids[3:] + ids[:3]
        assert {p["consumer"] for p in owners.values()} == {"c2"}
        assert [owners[i]["times_delivered"] for i in ids] == [2, 2, 2, 1]
        assert alive.lag("g") == 0


def test_redis_an_entry_deleted_while_pending_is_skipped(redis_url):
    from plugins.redis_streams.log import RedisEventLog, RedisSettings

    settings = RedisSettings(url=redis_url)
    with RedisEventLog(settings, "orders") as first:
        ids = first.append([{"ID": 1}, {"ID": 2}])
        assert len(first.read("g", "c1", 2)) == 2
        first._redis.xdel("lab:orders", ids[0])
    with RedisEventLog(settings, "orders") as restarted:
        assert [e.id for e in restarted.read("g", "c1", 2)] == [ids[1]]
        assert restarted._group_info("g")["pending"] == 1  # the deleted one was acknowledged


def test_redis_settings_are_checked():
    from lab.errors import ConfigError
    from plugins.redis_streams.log import RedisSettings

    with pytest.raises(ConfigError, match="url must be redis://"):
        RedisSettings.from_table({"url": "http://127.0.0.1"})
    with pytest.raises(ConfigError, match="unknown key"):
        RedisSettings.from_table({"host": "x"})
