"""A reusable contract suite for prediction ledgers (``lab.serving.ledger.BaseLedger``).

Subclass ``LedgerContract`` in a test module and give it a ``ledger_target`` fixture: what
``Ledger.open`` and ``read_predictions`` take (a SQLite file's path, a ``postgresql://``
URL), fresh for each test. Every test then runs against that backend::

    class TestMyLedger(LedgerContract):
        @pytest.fixture
        def ledger_target(self, tmp_path):
            return tmp_path / "ledger.db"

Set ``enforces_append_only = True`` where the store itself refuses UPDATE and DELETE of a
row (PostgreSQL's triggers), and implement ``tamper(target, sql)`` to run a statement
outside the ledger; the SQLite ledger keeps rows append-only by its API only.

What it checks: a record reads back as written (an int and a str event id stay
distinct, NaN kept, fallbacks left out unless asked); the filters of ``read_predictions``;
batching (many appends, few commits); durable appends readable once acknowledged;
``close`` writes what is queued and later appends are counted as dropped; a record that
is not JSON is counted ``failed`` without losing its neighbours; opening twice migrates
once; two writers on one target lose nothing.
"""

from __future__ import annotations

import asyncio
import math
import threading
from typing import Any

import pytest

from lab.serving.ledger import Ledger, PredictionRecord, read_predictions

__all__ = ["LedgerContract", "record"]


def record(i: int, **changes: Any) -> PredictionRecord:
    """A small valid prediction numbered ``i`` (its event id is ``i``, its score ``i / 1000``)."""
    values = dict(event_id=i, model_name="m", model_version=1, features={"amount": float(i), "n": 2},
                  defaults={"view": False}, score=i / 1000, latency_ms=0.5, request={"id": i, "amount": i},
                  request_id=f"r{i}", at=f"2026-01-01T00:00:{i % 60:02d}.000000+00:00")
    values.update(changes)
    return PredictionRecord(**values)


class LedgerContract:
    """The behaviour every prediction ledger must have; see the module docstring."""

    enforces_append_only = False

    @pytest.fixture
    def ledger_target(self):  # pragma: no cover - each backend's test module gives its own
        raise NotImplementedError("give the contract a ledger_target fixture")

    def tamper(self, target: Any, sql: str) -> None:  # pragma: no cover - backends that enforce it
        raise NotImplementedError

    def open(self, target: Any, **options: Any) -> Ledger:
        return Ledger.open(target, **options)

    # -- reading back -----------------------------------------------------------------

    def test_a_record_reads_back_as_written(self, ledger_target):
        with self.open(ledger_target) as ledger:
            assert ledger.append(record(1, feature_ages={"view": 3.5, "other": None}))
            assert ledger.append(record(2, event_id="2", features={"amount": math.nan}, experiment="e",
                                        variant="b", request={"q": 'a "b"\n\\c, d\t'}, latency_ms=math.inf))
            assert ledger.flush()
            assert ledger.stats()["written"] == 2
        first, second = read_predictions(ledger_target)
        assert first["id"] < second["id"]
        assert first["event_id"] == 1 and isinstance(first["event_id"], int)
        assert second["event_id"] == "2" and isinstance(second["event_id"], str)
        assert first["features"] == {"amount": 1.0, "n": 2} and first["defaults"] == {"view": False}
        assert first["request"] == {"id": 1, "amount": 1} and first["request_id"] == "r1"
        assert first["feature_ages"] == {"view": 3.5, "other": None} and second["feature_ages"] is None
        assert first["score"] == 0.001 and first["model_name"] == "m" and first["model_version"] == 1
        assert first["at"] == "2026-01-01T00:00:01.000000+00:00"
        assert math.isnan(second["features"]["amount"]) and second["latency_ms"] == math.inf
        assert second["request"] == {"q": 'a "b"\n\\c, d\t'}  # quotes, newline, backslash, comma, tab
        assert (second["experiment"], second["variant"], first["experiment"]) == ("e", "b", None)

    def test_filters(self, ledger_target):
        with self.open(ledger_target) as ledger:
            for i in range(10):
                ledger.append(record(i, model_version=1 + i % 2, experiment="e" if i < 4 else None,
                                     variant="a" if i < 2 else "b", fallback="model_timeout" if i == 9 else None))
        rows = read_predictions(ledger_target)
        assert [r["event_id"] for r in rows] == list(range(9))  # the fallback left out
        assert len(read_predictions(ledger_target, include_fallbacks=True)) == 10
        assert [r["event_id"] for r in read_predictions(ledger_target, model_version=2)] == [1, 3, 5, 7]
        assert [r["event_id"] for r in read_predictions(ledger_target, experiment="e", variant="b")] == [2, 3]
        assert [r["event_id"] for r in read_predictions(ledger_target, event_ids=[3, "4", 5])] == [3, 5]
        window = read_predictions(ledger_target, since="2026-01-01T00:00:02", until="2026-01-01T00:00:04.5")
        assert [r["event_id"] for r in window] == [2, 3, 4]
        assert [r["event_id"] for r in read_predictions(ledger_target, limit=3)] == [6, 7, 8]
        assert [r["event_id"] for r in read_predictions(ledger_target, after_id=rows[6]["id"])] == [7, 8]
        assert read_predictions(ledger_target, model_name="other") == []

    # -- the writer ---------------------------------------------------------------------

    def test_appends_share_commits(self, ledger_target):
        with self.open(ledger_target, linger_s=0.02) as ledger:
            for i in range(2000):
                assert ledger.append(record(i))
            assert ledger.flush()
            stats = ledger.stats()
        assert stats["written"] == 2000 and stats["dropped"] == stats["failed"] == 0
        assert stats["commits"] < 200, stats  # batched: not one commit a record
        ids = [r["id"] for r in read_predictions(ledger_target)]
        assert len(ids) == len(set(ids)) == 2000 and ids == sorted(ids)

    def test_a_durable_append_is_readable_once_acknowledged(self, ledger_target):
        async def go(ledger):
            oks = await asyncio.gather(*(ledger.append_durably(record(i)) for i in range(20)))
            return oks, [r["request_id"] for r in read_predictions(ledger_target)]

        with self.open(ledger_target, sync=True) as ledger:
            oks, seen = asyncio.run(go(ledger))
        assert all(oks) and sorted(seen) == sorted(f"r{i}" for i in range(20))

    def test_close_writes_the_queue_and_later_appends_are_dropped(self, ledger_target):
        ledger = self.open(ledger_target, linger_s=0.2)
        for i in range(50):
            ledger.append(record(i))
        ledger.close()
        ledger.close()  # idempotent
        assert ledger.append(record(99)) is False
        stats = ledger.stats()
        assert stats["written"] == 50 and stats["dropped"] == 1
        assert len(read_predictions(ledger_target)) == 50

    def test_a_record_that_cannot_be_encoded_fails_alone(self, ledger_target):
        with self.open(ledger_target) as ledger:
            ledger.append(record(1))
            ledger.append(record(2, score="not a number"))
            ledger.append(record(3))
            assert ledger.flush()
            stats = ledger.stats()
        assert stats["failed"] == 1 and stats["written"] == 2
        assert [r["event_id"] for r in read_predictions(ledger_target)] == [1, 3]

    def test_opening_again_keeps_the_rows(self, ledger_target):
        with self.open(ledger_target) as ledger:
            ledger.append(record(1))
        with self.open(ledger_target) as ledger:
            ledger.append(record(2))
        assert [r["event_id"] for r in read_predictions(ledger_target)] == [1, 2]

    def test_two_writers_lose_nothing(self, ledger_target):
        ledgers = [self.open(ledger_target, linger_s=0.001) for _ in range(2)]

        def write(n: int) -> None:
            for i in range(500):
                ledgers[n].append(record(n * 1000 + i, request_id=f"w{n}-{i}"))

        threads = [threading.Thread(target=write, args=(n,)) for n in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        for ledger in ledgers:
            ledger.close()
            assert ledger.stats()["written"] == 500
        rows = read_predictions(ledger_target)
        assert len({r["request_id"] for r in rows}) == 1000 and len({r["id"] for r in rows}) == 1000

    # -- append-only --------------------------------------------------------------------

    def test_rows_cannot_be_changed_or_deleted(self, ledger_target):
        if not self.enforces_append_only:
            pytest.skip("this backend keeps rows append-only by its API only (no trigger)")
        with self.open(ledger_target) as ledger:
            ledger.append(record(1))
        for sql in ("UPDATE predictions SET score = 1", "DELETE FROM predictions"):
            with pytest.raises(Exception, match="append-only"):
                self.tamper(ledger_target, sql)
        assert [r["score"] for r in read_predictions(ledger_target)] == [0.001]
