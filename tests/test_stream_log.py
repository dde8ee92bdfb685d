"""The ``EventLog`` contract, on both backends: the embedded SQLite log and Redis Streams
(a real redis-server). Then what only Redis does: taking over a dead consumer's pending
entries with XAUTOCLAIM, and skipping an entry deleted while pending."""

from __future__ import annotations

import json
import time

import pytest

from lab.sqlite import utc_now
from lab.streaming import SqliteEventLog, StreamStore
from tests.redis_server import redis_url  # noqa: F401  (a fixture)


@pytest.fixture(params=["sqlite", "redis"])
def open_log(request, tmp_path):
    """``open_log(consumer settings...)`` -> a fresh EventLog object on one shared stream."""
    opened = []
    if request.param == "redis":
        from plugins.redis_streams.log import RedisEventLog, RedisSettings

        url = request.getfixturevalue("redis_url")

        def make(claim_idle_s: float = 30.0):
            return RedisEventLog(RedisSettings(url=url, claim_idle_s=claim_idle_s), "orders")
    else:
        def make(claim_idle_s: float = 30.0):
            return SqliteEventLog(tmp_path / "stream.db", "orders")

    def opener(**kwargs):
        log = make(**kwargs)
        opened.append(log)
        return log

    yield opener
    for log in opened:
        log.close()


def _commit(tmp_path, log, group, events):
    with StreamStore(tmp_path / "stream.db") as store:
        store.commit_batch(log, group, "c1", events, [], [])
    log.acknowledge(group, "c1", events)


def test_append_keeps_order_and_an_uncommitted_read_is_delivered_again(open_log, tmp_path):
    log = open_log()
    events = [{"ID": i, "AMOUNT": i * 1.5} for i in range(5)]
    ids = log.append(events)
    assert len(set(ids)) == 5 and log.length() == 5 and log.append([]) == []
    first = log.read("g", "c1", 3)
    assert [e.id for e in first] == ids[:3]
    assert [json.loads(e.payload) for e in first] == events[:3]
    assert all(e.appended_at[:4].isdigit() for e in first)
    log.close()
    again = open_log()  # the consumer died holding them: delivered again
    assert [e.id for e in again.read("g", "c1", 3)] == ids[:3]
    assert again.lag("g") == 5
    _commit(tmp_path, again, "g", first)
    assert again.lag("g") == 2
    rest = again.read("g", "c1", 10)
    assert [e.id for e in rest] == ids[3:]
    _commit(tmp_path, again, "g", rest)
    assert again.lag("g") == 0 and again.read("g", "c1", 10, wait_s=0.05) == []
    assert again.lag("other") == 5  # groups keep their own positions
    groups = {g["group"]: g for g in again.groups()}
    assert groups["g"]["lag"] == 0


def test_text_is_appended_as_given(open_log):
    log = open_log()
    log.append(["{not json", {"A": 1}])
    assert [e.payload for e in log.read("g", "c1", 5)] == ["{not json", '{"A":1}']


def test_consumed_since_pages_through_what_the_group_read_after_a_time(open_log, tmp_path):
    log = open_log()
    early = log.append([{"ID": 0}, {"ID": 1}])
    since = utc_now()
    while utc_now()[:23] <= since[:23]:  # the next millisecond, so the times differ at Redis's precision
        pass
    since = utc_now()
    while utc_now()[:23] <= since[:23]:
        pass
    late = log.append([{"ID": 2}, {"ID": 3}, {"ID": 4}])
    assert log.consumed_since("g", since, None, 10) == []  # nothing read yet
    read = log.read("g", "c1", 4)
    _commit(tmp_path, log, "g", read)
    assert [e.id for e in log.consumed_since("g", since, None, 10)] == late[:2]  # read, and after the time
    assert [e.id for e in log.consumed_since("g", since, late[0], 10)] == late[1:2]
    assert [e.id for e in log.consumed_since("g", since, None, 1)] == late[:1]
    assert early[0] not in [e.id for e in log.consumed_since("g", since, None, 10)]


def test_an_empty_read_waits_at_most_wait_s(open_log):
    log = open_log()
    started = time.monotonic()
    assert log.read("g", "c1", 5, wait_s=0.2) == []
    assert time.monotonic() - started < 5


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
