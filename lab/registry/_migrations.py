"""The registry's schema, as named migrations applied once each, in order.

Each migration runs in its own write transaction together with the row that records it
in the ``migrations`` table, so a crash mid-migration leaves the file as it was and the
next open runs it again. Two processes opening a new file at once are safe: the second
waits for the write lock, then finds the migration recorded and skips it.

Add a migration by appending a function to ``MIGRATIONS``; never edit or reorder one
that has shipped, since files in the wild have recorded it by name.
"""

from __future__ import annotations

from typing import Callable

import sqlite_utils

from lab.registry._db import Database, utc_now

JSON = str  # JSON columns are JSON text; the alias documents intent in the schema below


def _append_only(db: sqlite_utils.Database, table: str) -> None:
    # History must answer "what was live on day X", so its rows are never changed.
    for verb in ("UPDATE", "DELETE"):
        db.execute(
            f"CREATE TRIGGER IF NOT EXISTS {table}_no_{verb.lower()} BEFORE {verb} ON {table} "
            f"BEGIN SELECT RAISE(ABORT, '{table} is append-only'); END"
        )


def tracking(db: sqlite_utils.Database) -> None:
    """Runs with their parameters, metrics, artifacts, input data; datasets; sweep trials."""
    db["runs"].create(
        {
            "id": str, "kind": str, "name": str, "parent_run_id": str, "status": str,
            "seeds": JSON, "git_commit": str, "git_dirty": int, "lock_file": str,
            "lock_hash": str, "env": JSON, "actor": str, "started_at": str, "finished_at": str,
        },
        pk="id",
        not_null={"kind", "status", "started_at"},
    )
    db["runs"].create_index(["kind", "started_at"])
    for table, columns in {
        "run_params": {"key": str, "value": JSON},
        "run_metrics": {"key": str, "value": float, "step": int},
        "run_artifacts": {"name": str, "path": str},
        "run_data": {"name": str, "digest": str},
    }.items():
        db[table].create(
            {"id": int, "run_id": str, **columns, "at": str},
            pk="id",
            foreign_keys=[("run_id", "runs", "id")],
            not_null={"run_id", "at"},
        )
        db[table].create_index(["run_id"])
    db["run_data"].create_index(["digest"])
    db["datasets"].create(
        {
            "id": int, "kind": str, "name": str, "digest": str, "path": str, "rows": int,
            "meta": JSON, "actor": str, "created_at": str,
        },
        pk="id",
        not_null={"kind", "name", "digest", "path", "created_at"},
    )
    db["datasets"].create_index(["digest"])
    db["trials"].create(
        {
            "run_id": str, "number": int, "params": JSON, "value": float, "state": str,
            "updated_at": str,
        },
        pk=("run_id", "number"),
        foreign_keys=[("run_id", "runs", "id")],
    )


def models_and_aliases(db: sqlite_utils.Database) -> None:
    """Model versions, and the append-only alias events that current aliases derive from."""
    db["model_versions"].create(
        {
            "name": str, "version": int, "run_id": str, "flavor": str, "artifact_path": str,
            "metrics": JSON, "lineage": JSON, "actor": str, "created_at": str,
        },
        pk=("name", "version"),
        foreign_keys=[("run_id", "runs", "id")],
        not_null={"flavor", "artifact_path", "created_at"},
    )
    db["alias_events"].create(
        {
            "id": int, "model": str, "alias": str, "action": str, "from_version": int,
            "to_version": int, "actor": str, "reason": str, "at": str,
        },
        pk="id",
        not_null={"model", "alias", "action", "to_version", "actor", "at"},
    )
    db["alias_events"].create_index(["model", "alias", "id"])
    _append_only(db, "alias_events")


def drift_and_stages(db: sqlite_utils.Database) -> None:
    """Per-column drift scores, and the pipeline runner's stage records (its cache)."""
    db["drift"].create(
        {
            "id": int, "run_id": str, "model_name": str, "model_version": int,
            "reference": str, "current": str, "column": str, "score": float,
            "drifted": int, "method": str, "at": str,
        },
        pk="id",
        foreign_keys=[("run_id", "runs", "id")],
        not_null={"model_name", "column", "at"},
    )
    db["drift"].create_index(["run_id"])
    db["stage_records"].create(
        {
            "id": int, "pipeline_run_id": str, "stage": str, "status": str, "attempt": int,
            "cache_key": str, "output_notebook": str, "outputs": JSON, "error": str,
            "actor": str, "at": str,
        },
        pk="id",
        foreign_keys=[("pipeline_run_id", "runs", "id")],
        not_null={"pipeline_run_id", "stage", "status", "at"},
    )
    db["stage_records"].create_index(["stage", "cache_key", "status"])
    db["stage_records"].create_index(["pipeline_run_id"])
    _append_only(db, "stage_records")


def audit_events(db: sqlite_utils.Database) -> None:
    """The generic audit log: every state change, with actor and time."""
    db["events"].create(
        {"id": int, "kind": str, "subject": str, "payload": JSON, "actor": str, "at": str},
        pk="id",
        not_null={"kind", "actor", "at"},
    )
    db["events"].create_index(["kind", "id"])
    _append_only(db, "events")


def experiments(db: sqlite_utils.Database) -> None:
    """Flags and experiments (current state), their append-only audit log, and the
    append-only allocation history bandits write (see lab/experiments/store.py)."""
    db["experiments"].create(
        {
            "name": str, "kind": str, "status": str, "layer": str, "share_start": int, "share_end": int,
            "salt": str, "unit": str, "variants": JSON, "metric": str, "metric_kind": str,
            "alpha": float, "power": float, "mde": float, "baseline": float,
            "created_at": str, "updated_at": str, "started_at": str, "stopped_at": str,
        },
        pk="name",
        not_null={"kind", "status", "layer", "share_start", "share_end", "salt", "unit", "variants",
                  "metric", "metric_kind", "alpha", "power", "created_at", "updated_at"},
    )
    db["experiments"].create_index(["layer", "status"])
    db["experiment_audit"].create(
        {"id": int, "experiment": str, "action": str, "old": JSON, "new": JSON, "reason": str,
         "actor": str, "at": str},
        pk="id",
        foreign_keys=[("experiment", "experiments", "name")],
        not_null={"experiment", "action", "actor", "at"},
    )
    db["experiment_audit"].create_index(["experiment", "id"])
    _append_only(db, "experiment_audit")
    db["experiment_allocations"].create(
        {"id": int, "experiment": str, "weights": JSON, "source": str, "actor": str, "at": str},
        pk="id",
        foreign_keys=[("experiment", "experiments", "name")],
        not_null={"experiment", "weights", "source", "actor", "at"},
    )
    db["experiment_allocations"].create_index(["experiment", "id"])
    _append_only(db, "experiment_allocations")


def experiment_buckets(db: sqlite_utils.Database) -> None:
    """Explicit variant-bucket ranges per experiment (``experiments.buckets``, JSON
    ``{variant: [[start, end], ...]}``), so a weight change can move only the units it must.

    Rows made before get the layout they were assigned by until now, so no unit moves:
    treatments from bucket 0 upwards in declaration order, control at the top, each
    boundary at ``round(cumulative weight * 10000)``. That rule is written out here, not
    imported, because this migration must keep giving today's answer whatever the code does.
    """
    import json
    import math

    db.execute("ALTER TABLE experiments ADD COLUMN buckets TEXT")
    for name, variants in db.execute("SELECT name, variants FROM experiments").fetchall():
        variants = json.loads(variants)
        order = variants[1:] + variants[:1]
        laid, start, running = {}, 0, []
        for i, v in enumerate(order):
            running.append(v["weight"])
            end = 10_000 if i == len(order) - 1 else min(10_000, round(math.fsum(running) * 10_000))
            laid[v["name"]] = [[start, end]] if end > start else []
            start = end
        buckets = {v["name"]: laid[v["name"]] for v in variants}
        db.execute("UPDATE experiments SET buckets = ? WHERE name = ?", [json.dumps(buckets, sort_keys=True), name])


def stage_output_digests(db: sqlite_utils.Database) -> None:
    """``stage_records.output_digests``: JSON ``{output path: content digest}`` of what a
    finished stage left behind, so a cache hit counts only while its outputs still hold
    those bytes. Records made before have none (NULL), so each such stage runs once more."""
    db.execute("ALTER TABLE stage_records ADD COLUMN output_digests TEXT")


MIGRATIONS: tuple[tuple[str, Callable[[sqlite_utils.Database], None]], ...] = (
    ("0001_tracking", tracking),
    ("0002_models_and_aliases", models_and_aliases),
    ("0003_drift_and_stages", drift_and_stages),
    ("0004_audit_events", audit_events),
    ("0005_experiments", experiments),
    ("0006_experiment_buckets", experiment_buckets),
    ("0007_stage_output_digests", stage_output_digests),
)


Migration = tuple[str, Callable[[sqlite_utils.Database], None]]


def apply_migrations(database: Database, migrations: tuple[Migration, ...] = MIGRATIONS) -> list[str]:
    """Apply every migration not yet recorded, in order; returns the names applied now."""
    with database.write() as db:
        db.execute(
            "CREATE TABLE IF NOT EXISTS migrations (name TEXT PRIMARY KEY, applied_at TEXT NOT NULL)"
        )
    applied: list[str] = []
    for name, migrate in migrations:
        with database.write() as db:
            # Checked inside the write lock: another process may have just applied it.
            if db.execute("SELECT 1 FROM migrations WHERE name = ?", [name]).fetchone():
                continue
            migrate(db)
            db["migrations"].insert({"name": name, "applied_at": utc_now()})
            applied.append(name)
    return applied


def applied_migrations(database: Database) -> list[dict]:
    """The ``migrations`` table, oldest first."""
    with database.read():
        return database.rows("SELECT name, applied_at FROM migrations ORDER BY rowid")
