"""Ledger files from earlier releases open, keep their rows, and gain what is new: the
experiment/variant columns, and the event id under its generic name (once transaction_id)."""

import sqlite3

from lab.serving.ledger import Ledger, PredictionRecord, iter_feature_rows, read_predictions

OLD_SCHEMA = """CREATE TABLE predictions (id INTEGER PRIMARY KEY, at TEXT NOT NULL, request_id TEXT NOT NULL,
transaction_id INTEGER, model_name TEXT NOT NULL, model_version INTEGER NOT NULL, request TEXT NOT NULL,
features TEXT NOT NULL, defaults TEXT NOT NULL, score REAL NOT NULL, latency_ms REAL NOT NULL);
CREATE INDEX predictions_transaction ON predictions (transaction_id);"""


def old_ledger(path):
    """A ledger file as written before the experiment/variant columns, with one prediction."""
    conn = sqlite3.connect(path)
    conn.executescript(OLD_SCHEMA)
    conn.execute("INSERT INTO predictions VALUES (1,'2026-01-01T00:00:00+00:00','r',7,'fraud',1,'{}','{}','{}',0.5,1.0)")
    conn.commit()
    conn.close()
    return path


def columns(path):
    conn = sqlite3.connect(path)
    try:
        return [row[1] for row in conn.execute("PRAGMA table_info(predictions)")]
    finally:
        conn.close()


def test_reading_an_old_ledger_works_without_upgrading_it(tmp_path):
    path = old_ledger(tmp_path / "ledger.db")
    rows = read_predictions(path)
    assert rows[0]["event_id"] == 7 and "transaction_id" not in rows[0]
    assert rows[0]["experiment"] is None and rows[0]["variant"] is None
    assert read_predictions(path, experiment="rollout") == []
    assert [r["event_id"] for r in read_predictions(path, event_ids=[7, 8])] == [7]
    assert "event_id" not in columns(path)  # reading changes nothing


def test_old_ledger_gains_columns_and_keeps_rows(tmp_path):
    path = old_ledger(tmp_path / "ledger.db")
    with Ledger.open(path) as ledger:
        ledger.append(PredictionRecord(event_id=8, model_name="fraud", model_version=2, features={"x": 1.0},
                                       defaults={}, score=0.1, latency_ms=0.4, experiment="rollout",
                                       variant="treatment"))
    assert "event_id" in columns(path) and "transaction_id" not in columns(path)
    rows = read_predictions(path)
    assert [r["event_id"] for r in rows] == [7, 8]
    assert rows[0]["variant"] is None and rows[1]["experiment"] == "rollout"
    assert [r["event_id"] for r in read_predictions(path, experiment="rollout", variant="treatment")] == [8]
    assert read_predictions(path, variant="control") == []
    assert [r["event_id"] for r in read_predictions(path, event_ids=[8])] == [8]
    Ledger.open(path).close()  # opening an upgraded file again is a no-op
    assert [r["event_id"] for r in read_predictions(path)] == [7, 8]


def test_an_event_id_may_be_text_and_is_kept_as_sent(tmp_path):
    path = tmp_path / "ledger.db"
    with Ledger.open(path) as ledger:
        for event_id in ("order-0042", "17", 17):
            ledger.append(PredictionRecord(event_id=event_id, model_name="m", model_version=1, features={"x": 1.0},
                                           defaults={}, score=0.1, latency_ms=0.4, request={"ORDER": event_id}))
    rows = read_predictions(path)
    assert [r["event_id"] for r in rows] == ["order-0042", "17", 17]
    assert [r["event_id"] for r in read_predictions(path, event_ids=["order-0042"])] == ["order-0042"]
    assert list(iter_feature_rows(rows[:1], id_column="ORDER_ID")) == [
        {"ORDER_ID": "order-0042", "x": 1.0, "score": 0.1, "model_version": 1}]


# The shape the ledger had just before its schema became named migrations (lab.sqlite).
UNRECORDED_SCHEMA = """CREATE TABLE predictions (id INTEGER PRIMARY KEY, at TEXT NOT NULL, request_id TEXT NOT NULL,
event_id, model_name TEXT NOT NULL, model_version INTEGER NOT NULL, request TEXT NOT NULL, features TEXT NOT NULL,
defaults TEXT NOT NULL, score REAL NOT NULL, latency_ms REAL NOT NULL, experiment TEXT, variant TEXT);
CREATE INDEX predictions_model ON predictions (model_name, model_version, id);
CREATE INDEX predictions_event ON predictions (event_id);
INSERT INTO predictions VALUES (1,'2026-01-01T00:00:00+00:00','r','order-1','m',1,'{}','{}','{}',0.5,1.0,NULL,NULL);"""


def shape(path):
    """Column names and indexes with their columns: what a migration must agree on."""
    conn = sqlite3.connect(path)
    try:
        indexes = {name: [r[2] for r in conn.execute(f"PRAGMA index_info({name})")]
                   for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
        return columns(path), indexes
    finally:
        conn.close()


def test_every_older_ledger_is_migrated_by_name_to_the_shape_of_a_new_one(tmp_path):
    from lab import sqlite as layer
    from lab.serving.ledger import BaseLedger

    new = tmp_path / "new.db"
    with Ledger.open(new) as ledger:
        assert isinstance(ledger, BaseLedger)
    first = old_ledger(tmp_path / "first.db")
    unrecorded = tmp_path / "unrecorded.db"
    conn = sqlite3.connect(unrecorded)
    conn.executescript(UNRECORDED_SCHEMA)
    conn.close()
    Ledger.open(first).close()
    Ledger.open(unrecorded).close()
    for path in (new, first, unrecorded):
        assert shape(path) == shape(new)
        conn = layer.connect(path)
        try:
            assert [(m["owner"], m["name"]) for m in layer.applied_migrations(conn)] == [
                ("ledger", "0001_predictions"), ("ledger", "0002_event_id_and_flags"), ("ledger", "0003_fallback"),
                ("ledger", "0004_feature_ages")]
            assert layer.integrity_check(conn) == []
        finally:
            conn.close()
    assert [r["event_id"] for r in read_predictions(first)] == [7]
    assert [r["event_id"] for r in read_predictions(unrecorded)] == ["order-1"]
