"""The experiment store's tables in ``registry.db``, as named migrations of owner
``experiments`` (applied by ``lab.sqlite.migrate`` when ``ExperimentStore.open`` runs).

Add a migration by appending a ``Migration`` to ``MIGRATIONS``; never edit, rename or
reorder one that has shipped. Before ``lab.sqlite`` these steps were the registry's
``0005_experiments`` and ``0006_experiment_buckets``; ``legacy_name`` lets a file that
recorded them under those names open as migrated.
"""

from __future__ import annotations

import json
import math
import sqlite3

from lab.sqlite import Migration, append_only, run_script

OWNER = "experiments"


def experiments(conn: sqlite3.Connection) -> None:
    """Flags and experiments (current state, ``variants`` JSON), their append-only audit
    log, and the append-only allocation history bandits write."""
    run_script(conn, """
        CREATE TABLE "experiments" (
            "name" TEXT PRIMARY KEY, "kind" TEXT NOT NULL, "status" TEXT NOT NULL,
            "layer" TEXT NOT NULL, "share_start" INTEGER NOT NULL, "share_end" INTEGER NOT NULL,
            "salt" TEXT NOT NULL, "unit" TEXT NOT NULL, "variants" TEXT NOT NULL,
            "metric" TEXT NOT NULL, "metric_kind" TEXT NOT NULL, "alpha" REAL NOT NULL,
            "power" REAL NOT NULL, "mde" REAL, "baseline" REAL,
            "created_at" TEXT NOT NULL, "updated_at" TEXT NOT NULL, "started_at" TEXT, "stopped_at" TEXT
        );
        CREATE INDEX "idx_experiments_layer_status" ON "experiments" ("layer", "status");
        CREATE TABLE "experiment_audit" (
            "id" INTEGER PRIMARY KEY, "experiment" TEXT NOT NULL REFERENCES "experiments"("name"),
            "action" TEXT NOT NULL, "old" TEXT, "new" TEXT, "reason" TEXT,
            "actor" TEXT NOT NULL, "at" TEXT NOT NULL
        );
        CREATE INDEX "idx_experiment_audit_experiment_id" ON "experiment_audit" ("experiment", "id");
        CREATE TABLE "experiment_allocations" (
            "id" INTEGER PRIMARY KEY, "experiment" TEXT NOT NULL REFERENCES "experiments"("name"),
            "weights" TEXT NOT NULL, "source" TEXT NOT NULL, "actor" TEXT NOT NULL, "at" TEXT NOT NULL
        );
        CREATE INDEX "idx_experiment_allocations_experiment_id"
            ON "experiment_allocations" ("experiment", "id");
    """ + append_only("experiment_audit") + append_only("experiment_allocations"))


def experiment_buckets(conn: sqlite3.Connection) -> None:
    """Explicit variant-bucket ranges per experiment (``experiments.buckets``, JSON
    ``{variant: [[start, end], ...]}``), so a weight change can move only the units it must.

    Rows made before get the layout they were assigned by until then, so no unit moves:
    treatments from bucket 0 upwards in declaration order, control at the top, each
    boundary at ``round(cumulative weight * 10000)``. That rule is written out here, not
    imported, because this migration must keep giving that answer whatever the code does.
    """
    conn.execute("ALTER TABLE experiments ADD COLUMN buckets TEXT")
    cursor = conn.cursor()
    cursor.row_factory = None
    for name, variants in cursor.execute("SELECT name, variants FROM experiments").fetchall():
        variants = json.loads(variants)
        order = variants[1:] + variants[:1]
        laid, start, running = {}, 0, []
        for i, v in enumerate(order):
            running.append(v["weight"])
            end = 10_000 if i == len(order) - 1 else min(10_000, round(math.fsum(running) * 10_000))
            laid[v["name"]] = [[start, end]] if end > start else []
            start = end
        buckets = {v["name"]: laid[v["name"]] for v in variants}
        conn.execute("UPDATE experiments SET buckets = ? WHERE name = ?", [json.dumps(buckets, sort_keys=True), name])


MIGRATIONS: tuple[Migration, ...] = (
    Migration("0001_experiments", experiments, legacy_name="0005_experiments"),
    Migration("0002_experiment_buckets", experiment_buckets, legacy_name="0006_experiment_buckets"),
)
