"""The ledger's JSON columns read back what was logged: date-times, NaN and infinities."""

from __future__ import annotations

import datetime as dt
import math

from lab.serving.ledger import Ledger, PredictionRecord, read_predictions


def test_logged_fields_read_back_as_written(tmp_path):
    when = dt.datetime(2026, 3, 4, 5, 6, 7, 890123, tzinfo=dt.timezone.utc)
    path = tmp_path / "ledger.db"
    ledger = Ledger.open(path)
    try:
        ledger.append(PredictionRecord(
            "e1", "m", 1, {"A": 1.25, "B": float("nan"), "C": float("inf"), "D": None}, {"view": True}, 0.5, 1.0,
            request={"id": "e1", "at": when, "n": 3, "text": "é"}, feature_ages={"view": 12.5, "other": None}))
        ledger.append(PredictionRecord("e2", "m", 1, {"A": 2.0}, {}, 0.25, 1.0, request={"at": when.replace(tzinfo=None)},
                                       feature_ages={"view": float("inf")}))
        assert ledger.flush()
    finally:
        ledger.close()
    first, second = read_predictions(path)
    assert first["features"]["A"] == 1.25 and math.isnan(first["features"]["B"])
    assert first["features"]["C"] == math.inf and first["features"]["D"] is None
    assert first["defaults"] == {"view": True}
    assert first["feature_ages"] == {"view": 12.5, "other": None}
    assert first["request"]["n"] == 3 and first["request"]["text"] == "é"
    assert dt.datetime.fromisoformat(first["request"]["at"]) == when
    assert dt.datetime.fromisoformat(second["request"]["at"]) == when.replace(tzinfo=None)
    assert second["feature_ages"] == {"view": math.inf}


def test_batches_of_every_size_are_written_whole_and_in_order(tmp_path):
    """The writer inserts a batch with a few multi-row statements (256, 64, 16, 4, 1 rows):
    batches of every size land whole, in append order, each row its own."""
    from lab.serving.ledger import _insert

    path = tmp_path / "ledger.db"
    ledger = Ledger.open(path)
    try:
        sizes = [1, 3, 4, 5, 17, 63, 64, 65, 255, 256, 341, 600]
        rows = []
        for size in sizes:
            batch = [PredictionRecord(f"e{len(rows) + i}", "m", 1, {"x": float(len(rows) + i)}, {}, 0.5, 1.0,
                                      request_id=f"r{len(rows) + i}").as_row() for i in range(size)]
            _insert(ledger._conn, batch)
            rows += batch
    finally:
        ledger.close()
    back = read_predictions(path)
    assert [r["request_id"] for r in back] == [f"r{i}" for i in range(sum(sizes))]
    assert [r["features"]["x"] for r in back] == [float(i) for i in range(sum(sizes))]
    assert [r["event_id"] for r in back] == [f"e{i}" for i in range(sum(sizes))]
