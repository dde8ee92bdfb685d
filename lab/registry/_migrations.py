"""The registry's schema in ``registry.db``, as named migrations of owner ``registry``
(applied by ``lab.sqlite.migrate``; the experiment store declares its own tables in
``lab/experiments/_migrations.py``).

Add a migration by appending a ``Migration`` to ``MIGRATIONS``; never edit, rename or
reorder one that has shipped, since files in the wild have recorded it by name.

Before ``lab.sqlite``, registry.db recorded its steps in a ``migrations`` table with
names ``0001``..``0007`` shared with the experiment tables; ``legacy_name`` maps each
step to its old record, so an old file opens as already migrated.
"""

from __future__ import annotations

import sqlite3

from lab.sqlite import Migration, append_only, run_script

OWNER = "registry"


def tracking(conn: sqlite3.Connection) -> None:
    """Runs with their parameters, metrics, artifacts, input data; datasets; sweep trials.
    JSON columns are TEXT holding JSON."""
    per_run = {
        "run_params": '"key" TEXT, "value" TEXT',
        "run_metrics": '"key" TEXT, "value" REAL, "step" INTEGER',
        "run_artifacts": '"name" TEXT, "path" TEXT',
        "run_data": '"name" TEXT, "digest" TEXT',
    }
    run_script(conn, """
        CREATE TABLE "runs" (
            "id" TEXT PRIMARY KEY, "kind" TEXT NOT NULL, "name" TEXT, "parent_run_id" TEXT,
            "status" TEXT NOT NULL, "seeds" TEXT, "git_commit" TEXT, "git_dirty" INTEGER,
            "lock_file" TEXT, "lock_hash" TEXT, "env" TEXT, "actor" TEXT,
            "started_at" TEXT NOT NULL, "finished_at" TEXT
        );
        CREATE INDEX "idx_runs_kind_started_at" ON "runs" ("kind", "started_at");
    """ + "".join(f"""
        CREATE TABLE "{table}" (
            "id" INTEGER PRIMARY KEY, "run_id" TEXT NOT NULL REFERENCES "runs"("id"), {columns},
            "at" TEXT NOT NULL
        );
        CREATE INDEX "idx_{table}_run_id" ON "{table}" ("run_id");
    """ for table, columns in per_run.items()) + """
        CREATE INDEX "idx_run_data_digest" ON "run_data" ("digest");
        CREATE TABLE "datasets" (
            "id" INTEGER PRIMARY KEY, "kind" TEXT NOT NULL, "name" TEXT NOT NULL,
            "digest" TEXT NOT NULL, "path" TEXT NOT NULL, "rows" INTEGER, "meta" TEXT,
            "actor" TEXT, "created_at" TEXT NOT NULL
        );
        CREATE INDEX "idx_datasets_digest" ON "datasets" ("digest");
        CREATE TABLE "trials" (
            "run_id" TEXT REFERENCES "runs"("id"), "number" INTEGER, "params" TEXT, "value" REAL,
            "state" TEXT, "updated_at" TEXT,
            PRIMARY KEY ("run_id", "number")
        );
    """)


def models_and_aliases(conn: sqlite3.Connection) -> None:
    """Model versions, and the append-only alias events that current aliases derive from."""
    run_script(conn, """
        CREATE TABLE "model_versions" (
            "name" TEXT, "version" INTEGER, "run_id" TEXT REFERENCES "runs"("id"),
            "flavor" TEXT NOT NULL, "artifact_path" TEXT NOT NULL, "metrics" TEXT, "lineage" TEXT,
            "actor" TEXT, "created_at" TEXT NOT NULL,
            PRIMARY KEY ("name", "version")
        );
        CREATE TABLE "alias_events" (
            "id" INTEGER PRIMARY KEY, "model" TEXT NOT NULL, "alias" TEXT NOT NULL,
            "action" TEXT NOT NULL, "from_version" INTEGER, "to_version" INTEGER NOT NULL,
            "actor" TEXT NOT NULL, "reason" TEXT, "at" TEXT NOT NULL
        );
        CREATE INDEX "idx_alias_events_model_alias_id" ON "alias_events" ("model", "alias", "id");
    """ + append_only("alias_events"))


def drift_and_stages(conn: sqlite3.Connection) -> None:
    """Per-column drift scores, and the pipeline runner's stage records (its cache)."""
    run_script(conn, """
        CREATE TABLE "drift" (
            "id" INTEGER PRIMARY KEY, "run_id" TEXT REFERENCES "runs"("id"),
            "model_name" TEXT NOT NULL, "model_version" INTEGER, "reference" TEXT, "current" TEXT,
            "column" TEXT NOT NULL, "score" REAL, "drifted" INTEGER, "method" TEXT, "at" TEXT NOT NULL
        );
        CREATE INDEX "idx_drift_run_id" ON "drift" ("run_id");
        CREATE TABLE "stage_records" (
            "id" INTEGER PRIMARY KEY, "pipeline_run_id" TEXT NOT NULL REFERENCES "runs"("id"),
            "stage" TEXT NOT NULL, "status" TEXT NOT NULL, "attempt" INTEGER, "cache_key" TEXT,
            "output_notebook" TEXT, "outputs" TEXT, "error" TEXT, "actor" TEXT, "at" TEXT NOT NULL
        );
        CREATE INDEX "idx_stage_records_stage_cache_key_status"
            ON "stage_records" ("stage", "cache_key", "status");
        CREATE INDEX "idx_stage_records_pipeline_run_id" ON "stage_records" ("pipeline_run_id");
    """ + append_only("stage_records"))


def audit_events(conn: sqlite3.Connection) -> None:
    """The generic audit log: every state change, with actor and time."""
    run_script(conn, """
        CREATE TABLE "events" (
            "id" INTEGER PRIMARY KEY, "kind" TEXT NOT NULL, "subject" TEXT, "payload" TEXT,
            "actor" TEXT NOT NULL, "at" TEXT NOT NULL
        );
        CREATE INDEX "idx_events_kind_id" ON "events" ("kind", "id");
    """ + append_only("events"))


def stage_output_digests(conn: sqlite3.Connection) -> None:
    """``stage_records.output_digests``: JSON ``{output path: content digest}`` of what a
    finished stage left behind, so a cache hit counts only while its outputs still hold
    those bytes. Records made before have none (NULL), so each such stage runs once more."""
    conn.execute("ALTER TABLE stage_records ADD COLUMN output_digests TEXT")


def promotion_evidence(conn: sqlite3.Connection) -> None:
    """What a promotion rests on, all append-only: shadow runs (``shadow_events``: a
    ``started`` row, whose id names the shadow, then ``met``, ``expired`` or ``stopped``
    rows pointing at it), named approvals, and evidence rows (offline confidence
    intervals, shadow and experiment outcomes). ``alias_events.evidence``: the criteria
    a promotion was checked against, with the approvals and evidence it used (NULL for
    moves made before, and for moves no gate checks)."""
    run_script(conn, """
        CREATE TABLE "shadow_events" (
            "id" INTEGER PRIMARY KEY, "shadow_id" INTEGER, "model" TEXT NOT NULL, "version" INTEGER NOT NULL,
            "action" TEXT NOT NULL, "champion_version" INTEGER, "criteria" TEXT, "report" TEXT,
            "actor" TEXT NOT NULL, "reason" TEXT, "at" TEXT NOT NULL
        );
        CREATE INDEX "idx_shadow_events_model_id" ON "shadow_events" ("model", "id");
        CREATE TABLE "approvals" (
            "id" INTEGER PRIMARY KEY, "model" TEXT NOT NULL, "version" INTEGER NOT NULL,
            "approver" TEXT NOT NULL, "note" TEXT, "actor" TEXT NOT NULL, "at" TEXT NOT NULL
        );
        CREATE INDEX "idx_approvals_model_version" ON "approvals" ("model", "version", "id");
        CREATE TABLE "evidence" (
            "id" INTEGER PRIMARY KEY, "model" TEXT NOT NULL, "version" INTEGER NOT NULL,
            "kind" TEXT NOT NULL, "passed" INTEGER NOT NULL, "summary" TEXT NOT NULL, "payload" TEXT,
            "actor" TEXT NOT NULL, "at" TEXT NOT NULL
        );
        CREATE INDEX "idx_evidence_model_version_kind" ON "evidence" ("model", "version", "kind", "id");
        ALTER TABLE "alias_events" ADD COLUMN "evidence" TEXT;
    """ + append_only("shadow_events") + append_only("approvals") + append_only("evidence"))


MIGRATIONS: tuple[Migration, ...] = (
    Migration("0001_tracking", tracking, legacy_name="0001_tracking"),
    Migration("0002_models_and_aliases", models_and_aliases, legacy_name="0002_models_and_aliases"),
    Migration("0003_drift_and_stages", drift_and_stages, legacy_name="0003_drift_and_stages"),
    Migration("0004_audit_events", audit_events, legacy_name="0004_audit_events"),
    Migration("0005_stage_output_digests", stage_output_digests, legacy_name="0007_stage_output_digests"),
    Migration("0006_promotion_evidence", promotion_evidence),
)
