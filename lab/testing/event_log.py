"""Contract tests for event logs (``lab_event_log``): subclass ``EventLogContract`` and give
it ``open_log``, a function returning a new log object on one stream, each call a fresh
connection to the same data (as a restarted consumer would have)::

    from lab.testing import EventLogContract

    class TestMyLog(EventLogContract):
        @pytest.fixture
        def open_log(self, stream_db):
            return lambda: MyEventLog(URL, "orders")

``stream_db`` is the consumer's store file, ``tmp_path / "stream.db"``: a log whose offsets
commit in the store's transaction (``transactional = True``) must live in it. The tests
check the contract of ``lab.streaming.EventLog``: order kept and ids unique; an event read
and never committed is delivered again to a restarted consumer; lag per group, groups
independent; text kept as published; ``consumed_since`` paging; an empty read waits at most
``wait_s``.
"""

from __future__ import annotations

import json
import time

import pytest

from lab.sqlite import utc_now
from lab.streaming import EventLog, StreamStore


def _next_millisecond() -> str:
    """A time strictly later, at millisecond precision, than anything appended before the call."""
    start = utc_now()[:23]
    while utc_now()[:23] <= start:
        pass
    return utc_now()


class EventLogContract:
    """Order, at-least-once redelivery, lag, consumed_since, bounded waits."""

    @pytest.fixture
    def open_log(self, stream_db):
        raise NotImplementedError("override the `open_log` fixture: return a function giving a new EventLog "
                                  "on one stream each call")

    @pytest.fixture
    def stream_db(self, tmp_path):
        return tmp_path / "stream.db"

    @pytest.fixture
    def log(self, open_log):
        opened = []

        def make() -> EventLog:
            log = open_log()
            assert isinstance(log, EventLog), f"open_log gave {type(log).__name__}, not a lab.streaming.EventLog"
            opened.append(log)
            return log

        yield make
        for log in opened:
            log.close()

    @staticmethod
    def commit(stream_db, log: EventLog, group: str, events) -> None:
        """What a consumer does with a batch: the store's transaction, then acknowledge."""
        with StreamStore(stream_db) as store:
            store.commit_batch(log, group, "c1", events, [], [])
        log.acknowledge(group, "c1", events)

    def test_append_keeps_order_and_an_uncommitted_read_is_delivered_again(self, log, stream_db):
        first_log = log()
        events = [{"ID": i, "AMOUNT": i * 1.5} for i in range(5)]
        ids = first_log.append(events)
        assert len(set(ids)) == 5 and first_log.length() == 5 and first_log.append([]) == []
        first = first_log.read("g", "c1", 3)
        assert [e.id for e in first] == ids[:3]
        assert [json.loads(e.payload) for e in first] == events[:3]
        assert all(e.appended_at[:4].isdigit() for e in first)
        first_log.close()
        again = log()  # the consumer died holding them: delivered again
        assert [e.id for e in again.read("g", "c1", 3)] == ids[:3]
        assert again.lag("g") == 5
        self.commit(stream_db, again, "g", first)
        assert again.lag("g") == 2
        rest = again.read("g", "c1", 10)
        assert [e.id for e in rest] == ids[3:]
        self.commit(stream_db, again, "g", rest)
        assert again.lag("g") == 0 and again.read("g", "c1", 10, wait_s=0.05) == []
        assert again.lag("other") == 5  # groups keep their own positions
        assert {g["group"]: g["lag"] for g in again.groups()}["g"] == 0

    def test_text_is_appended_as_given(self, log):
        one = log()
        one.append(["{not json", {"A": 1}])
        assert [e.payload for e in one.read("g", "c1", 5)] == ["{not json", '{"A":1}']

    def test_consumed_since_pages_through_what_the_group_read_after_a_time(self, log, stream_db):
        one = log()
        early = one.append([{"ID": 0}, {"ID": 1}])
        _next_millisecond()
        since = _next_millisecond()
        late = one.append([{"ID": 2}, {"ID": 3}, {"ID": 4}])
        assert one.consumed_since("g", since, None, 10) == []  # nothing read yet
        self.commit(stream_db, one, "g", one.read("g", "c1", 4))
        assert [e.id for e in one.consumed_since("g", since, None, 10)] == late[:2]  # read, and after the time
        assert [e.id for e in one.consumed_since("g", since, late[0], 10)] == late[1:2]
        assert [e.id for e in one.consumed_since("g", since, None, 1)] == late[:1]
        assert early[0] not in [e.id for e in one.consumed_since("g", since, None, 10)]

    def test_an_empty_read_waits_at_most_wait_s(self, log):
        one = log()
        started = time.monotonic()
        assert one.read("g", "c1", 5, wait_s=0.2) == []
        assert time.monotonic() - started < 5
