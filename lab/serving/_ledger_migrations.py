"""The prediction ledger's schema (``data/ledger.db``), as named migrations of owner
``ledger`` (applied by ``lab.sqlite.migrate`` when ``Ledger.open`` runs; reading never
migrates).

Add a migration by appending a ``Migration`` to ``MIGRATIONS``; never edit, rename or
reorder one that has shipped.

Ledger files made before these migrations were recorded exist in three shapes: the first
release (``transaction_id INTEGER``), then with the flag columns ``experiment`` and
``variant``, then with ``event_id`` in place of ``transaction_id``. So the first two
migrations look at what the file holds: ``0001`` creates the table only where there is
none (in today's shape), ``0002`` does for an older file what the releases since did.
Later migrations are ordinary steps.
"""

from __future__ import annotations

import sqlite3

from lab.sqlite import Migration, run_script

OWNER = "ledger"

# Columns added after the first release, with their type (ALTER TABLE ADD COLUMN keeps
# every existing row); a reader of a file not yet migrated reads them as None.
ADDED_COLUMNS = (("experiment", "TEXT"), ("variant", "TEXT"))
# Columns renamed since, old name -> new (RENAME COLUMN keeps the rows and rewrites the
# indexes on them); a reader of a file not yet migrated sees the new name.
RENAMED_COLUMNS = (("transaction_id", "event_id"),)
_OLD_INDEXES = ("predictions_transaction",)


def _columns(conn: sqlite3.Connection) -> set[str]:
    cursor = conn.cursor()
    cursor.row_factory = None
    return {row[1] for row in cursor.execute("PRAGMA table_info(predictions)")}


def predictions(conn: sqlite3.Connection) -> None:
    """The ``predictions`` table and its model index (IF NOT EXISTS: see above)."""
    run_script(conn, """
        CREATE TABLE IF NOT EXISTS predictions (
            id             INTEGER PRIMARY KEY,
            at             TEXT NOT NULL,     -- UTC time the prediction was made (ISO 8601)
            request_id     TEXT NOT NULL,
            event_id,                         -- the request's id field (the schema's ``id``), int or text as sent
            model_name     TEXT NOT NULL,
            model_version  INTEGER NOT NULL,
            request        TEXT NOT NULL,     -- the request as received (JSON): keys to join labels on
            features       TEXT NOT NULL,     -- the model inputs actually used (JSON object)
            defaults       TEXT NOT NULL,     -- feature view -> defaulted (entity unknown, stale or future)
            score          REAL NOT NULL,
            latency_ms     REAL NOT NULL,
            experiment     TEXT,              -- the flag that routed this request, if any
            variant        TEXT               -- the flag's variant the unit was assigned to
        );
        CREATE INDEX IF NOT EXISTS predictions_model ON predictions (model_name, model_version, id);
    """)


def event_id_and_flags(conn: sqlite3.Connection) -> None:
    """An older file gains what the releases since added: ``transaction_id`` renamed to
    ``event_id`` (its index with it), and the ``experiment`` and ``variant`` columns."""
    have = _columns(conn)
    for old, new in RENAMED_COLUMNS:
        if old in have and new not in have:
            conn.execute(f"ALTER TABLE predictions RENAME COLUMN {old} TO {new}")
    for name, kind in ADDED_COLUMNS:
        if name not in have:
            conn.execute(f"ALTER TABLE predictions ADD COLUMN {name} {kind}")
    for index in _OLD_INDEXES:
        conn.execute(f"DROP INDEX IF EXISTS {index}")
    conn.execute("CREATE INDEX IF NOT EXISTS predictions_event ON predictions (event_id)")


# Columns added by the ordinary migrations after 0002; a reader of a file not yet
# migrated reads them as None too.
LATER_COLUMNS = (("fallback", "TEXT"), ("feature_ages", "TEXT"))


def fallback(conn: sqlite3.Connection) -> None:
    """``fallback``: the reason a row's score is the model's declared fallback, not a
    prediction (``model_timeout``, ``store_error``, ...); NULL for a prediction."""
    if "fallback" not in _columns(conn):
        conn.execute("ALTER TABLE predictions ADD COLUMN fallback TEXT")


def feature_ages(conn: sqlite3.Connection) -> None:
    """``feature_ages``: JSON, feature view -> its values' age in seconds at the request's
    time (request time minus the view's watermark; null when never materialized)."""
    if "feature_ages" not in _columns(conn):
        conn.execute("ALTER TABLE predictions ADD COLUMN feature_ages TEXT")


MIGRATIONS: tuple[Migration, ...] = (
    Migration("0001_predictions", predictions),
    Migration("0002_event_id_and_flags", event_id_and_flags),
    Migration("0003_fallback", fallback),
    Migration("0004_feature_ages", feature_ages),
)
