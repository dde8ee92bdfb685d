"""The shadow table in the prediction ledger's file (``data/ledger.db``), as named
migrations of owner ``shadow`` (applied by ``lab.sqlite.migrate`` when the server's
shadow mirror first writes; reading never migrates).

Add a migration by appending a ``Migration`` to ``MIGRATIONS``; never edit, rename or
reorder one that has shipped.
"""

from __future__ import annotations

import sqlite3

from lab.sqlite import Migration, run_script

OWNER = "shadow"


def shadow_predictions(conn: sqlite3.Connection) -> None:
    """One row per request mirrored to a shadow's challenger, keyed by the request id of
    the champion's row in ``predictions``: both scores, both latencies, and whether they
    agree under the shadow's rule (``agree``; 0 when the challenger failed, ``error``)."""
    run_script(conn, """
        CREATE TABLE shadow_predictions (
            id                    INTEGER PRIMARY KEY,
            at                    TEXT NOT NULL,     -- UTC time the champion answered (ISO 8601)
            shadow_id             INTEGER NOT NULL,  -- the shadow in registry.db (lab shadow status)
            request_id            TEXT NOT NULL,     -- predictions.request_id of the champion's row
            event_id,                                -- the request's id field, as sent
            model_name            TEXT NOT NULL,
            champion_version      INTEGER NOT NULL,  -- the version that answered the request
            challenger_version    INTEGER NOT NULL,
            champion_score        REAL NOT NULL,
            challenger_score      REAL,              -- NULL when the challenger failed
            champion_latency_ms   REAL NOT NULL,     -- the request as served (features + model)
            challenger_latency_ms REAL,              -- the challenger's predict on the same inputs
            agree                 INTEGER NOT NULL,  -- 1 when both give the same answer (see docs/serving.md)
            error                 TEXT               -- why the challenger gave no score
        );
        CREATE INDEX shadow_predictions_shadow ON shadow_predictions (shadow_id, id);
        CREATE INDEX shadow_predictions_request ON shadow_predictions (request_id);
        CREATE INDEX shadow_predictions_challenger_latency ON shadow_predictions (shadow_id, challenger_latency_ms);
        CREATE INDEX shadow_predictions_champion_latency ON shadow_predictions (shadow_id, champion_latency_ms);
    """)


MIGRATIONS: tuple[Migration, ...] = (
    Migration("0001_shadow_predictions", shadow_predictions),
)
