"""A ledger file from before the experiment/variant columns opens, keeps its rows, and gains them."""

import sqlite3

from lab.serving.ledger import Ledger, PredictionRecord, read_predictions

OLD_SCHEMA = """CREATE TABLE predictions (id INTEGER PRIMARY KEY, at TEXT NOT NULL, request_id TEXT NOT NULL,
transaction_id INTEGER, model_name TEXT NOT NULL, model_version INTEGER NOT NULL, request TEXT NOT NULL,
features TEXT NOT NULL, defaults TEXT NOT NULL, score REAL NOT NULL, latency_ms REAL NOT NULL)"""


def old_ledger(path):
    """A ledger file as written before the experiment/variant columns, with one prediction."""
    conn = sqlite3.connect(path)
    conn.execute(OLD_SCHEMA)
    conn.execute("INSERT INTO predictions VALUES (1,'2026-01-01T00:00:00+00:00','r',7,'fraud',1,'{}','{}','{}',0.5,1.0)")
    conn.commit()
    conn.close()
    return path


def test_reading_an_old_ledger_works_without_upgrading_it(tmp_path):
    path = old_ledger(tmp_path / "ledger.db")
    rows = read_predictions(path)
    assert rows[0]["transaction_id"] == 7 and rows[0]["experiment"] is None and rows[0]["variant"] is None
    assert read_predictions(path, experiment="rollout") == []


def test_old_ledger_gains_columns_and_keeps_rows(tmp_path):
    path = old_ledger(tmp_path / "ledger.db")
    with Ledger.open(path) as ledger:
        ledger.append(PredictionRecord(transaction_id=8, model_name="fraud", model_version=2, features={"x": 1.0},
                                       defaults={}, score=0.1, latency_ms=0.4, experiment="rollout",
                                       variant="treatment"))
    rows = read_predictions(path)
    assert [r["transaction_id"] for r in rows] == [7, 8]
    assert rows[0]["variant"] is None and rows[1]["experiment"] == "rollout"
    assert [r["transaction_id"] for r in read_predictions(path, experiment="rollout", variant="treatment")] == [8]
    assert read_predictions(path, variant="control") == []
