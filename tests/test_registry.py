"""The SQLite registry's own behaviour against real files in tmp_path: the file, its
migrations, concurrent writers, the project's lock file, events. What every registry does
(runs, models, aliases, rollback, lineage, drift, stage records) is the contract suite
``lab.testing.registry.RegistryContract``, run on SQLite and PostgreSQL by
``tests/test_registry_contract.py``."""

from __future__ import annotations

import hashlib
import sqlite3
import subprocess
import threading

import pytest

from lab.errors import LabError, NotFound
from lab.events import MODEL_PROMOTED, MODEL_REGISTERED, MODEL_ROLLED_BACK
from lab import sqlite as layer
from lab.experiments import ExperimentStore
from lab.registry import MIGRATIONS, BaseRegistry, ModelVersion, Registry
from tests._helpers import run_at_once

TABLES = ("runs", "run_params", "run_metrics", "run_artifacts", "run_data", "datasets", "trials",
          "model_versions", "alias_events", "drift", "stage_records", "events")


@pytest.fixture
def project(tmp_path):
    """A project folder with a pyproject.toml (the lock-file fallback)."""
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "demo"\nversion = "0"\n')
    return tmp_path


@pytest.fixture
def fresh_registry(project):
    with Registry.open(project / "registry.db") as reg:
        yield reg


def register(reg: Registry, name: str = "fraud", run_id: str | None = None, ap: float = 0.5) -> ModelVersion:
    return reg.register_model(name, run_id=run_id, flavor="tabular_mlp", artifact_path=f"runs/models/{name}",
                              metrics={"average_precision": ap}, lineage={})


def row_counts(path) -> dict[str, int]:
    with sqlite3.connect(path) as conn:
        return {t: conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in TABLES}


# -- file, WAL, migrations ---------------------------------------------------------------------

def test_open_creates_folders_turns_on_wal_and_records_migrations(tmp_path):
    path = tmp_path / "deep" / "er" / "registry.db"
    with Registry.open(path) as reg:
        assert isinstance(reg, BaseRegistry)
        assert reg.journal_mode == "wal"
        assert [(m["owner"], m["name"]) for m in reg.migrations()] == [("registry", m.name) for m in MIGRATIONS]
        assert reg.integrity_check() == []
    # WAL is a property of the file, seen by any other connection.
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_reopening_applies_no_migration_twice_and_keeps_data(project):
    path = project / "registry.db"
    with Registry.open(path) as reg:
        register(reg)
        first = reg.migrations()
    with Registry.open(path) as reg:
        assert reg.migrations() == first  # same names, same applied_at
        assert [v.version for v in reg.list_model_versions("fraud")] == [1]
    database = layer.Database.open(path)
    try:
        assert database.migrate("registry", MIGRATIONS) == []
    finally:
        database.close()


# What registry.db looked like when sqlite-utils made it (migrations 0001..0007 in a
# `migrations` table, the experiment tables among them), as `sqlite3 registry.db .schema` shows.
OLD_SCHEMA = """
CREATE TABLE migrations (name TEXT PRIMARY KEY, applied_at TEXT NOT NULL);
CREATE TABLE "runs" ("id" TEXT PRIMARY KEY, "kind" TEXT NOT NULL, "name" TEXT, "parent_run_id" TEXT,
   "status" TEXT NOT NULL, "seeds" TEXT, "git_commit" TEXT, "git_dirty" INTEGER, "lock_file" TEXT,
   "lock_hash" TEXT, "env" TEXT, "actor" TEXT, "started_at" TEXT NOT NULL, "finished_at" TEXT);
CREATE INDEX "idx_runs_kind_started_at" ON "runs" ("kind", "started_at");
CREATE TABLE "run_params" ("id" INTEGER PRIMARY KEY, "run_id" TEXT NOT NULL REFERENCES "runs"("id"),
   "key" TEXT, "value" TEXT, "at" TEXT NOT NULL);
CREATE INDEX "idx_run_params_run_id" ON "run_params" ("run_id");
CREATE TABLE "run_metrics" ("id" INTEGER PRIMARY KEY, "run_id" TEXT NOT NULL REFERENCES "runs"("id"),
   "key" TEXT, "value" REAL, "step" INTEGER, "at" TEXT NOT NULL);
CREATE INDEX "idx_run_metrics_run_id" ON "run_metrics" ("run_id");
CREATE TABLE "run_artifacts" ("id" INTEGER PRIMARY KEY, "run_id" TEXT NOT NULL REFERENCES "runs"("id"),
   "name" TEXT, "path" TEXT, "at" TEXT NOT NULL);
CREATE INDEX "idx_run_artifacts_run_id" ON "run_artifacts" ("run_id");
CREATE TABLE "run_data" ("id" INTEGER PRIMARY KEY, "run_id" TEXT NOT NULL REFERENCES "runs"("id"),
   "name" TEXT, "digest" TEXT, "at" TEXT NOT NULL);
CREATE INDEX "idx_run_data_run_id" ON "run_data" ("run_id");
CREATE INDEX "idx_run_data_digest" ON "run_data" ("digest");
CREATE TABLE "datasets" ("id" INTEGER PRIMARY KEY, "kind" TEXT NOT NULL, "name" TEXT NOT NULL,
   "digest" TEXT NOT NULL, "path" TEXT NOT NULL, "rows" INTEGER, "meta" TEXT, "actor" TEXT,
   "created_at" TEXT NOT NULL);
CREATE INDEX "idx_datasets_digest" ON "datasets" ("digest");
CREATE TABLE "trials" ("run_id" TEXT REFERENCES "runs"("id"), "number" INTEGER, "params" TEXT,
   "value" REAL, "state" TEXT, "updated_at" TEXT, PRIMARY KEY ("run_id", "number"));
CREATE TABLE "model_versions" ("name" TEXT, "version" INTEGER, "run_id" TEXT REFERENCES "runs"("id"),
   "flavor" TEXT NOT NULL, "artifact_path" TEXT NOT NULL, "metrics" TEXT, "lineage" TEXT, "actor" TEXT,
   "created_at" TEXT NOT NULL, PRIMARY KEY ("name", "version"));
CREATE TABLE "alias_events" ("id" INTEGER PRIMARY KEY, "model" TEXT NOT NULL, "alias" TEXT NOT NULL,
   "action" TEXT NOT NULL, "from_version" INTEGER, "to_version" INTEGER NOT NULL, "actor" TEXT NOT NULL,
   "reason" TEXT, "at" TEXT NOT NULL);
CREATE INDEX "idx_alias_events_model_alias_id" ON "alias_events" ("model", "alias", "id");
CREATE TRIGGER alias_events_no_update BEFORE UPDATE ON alias_events BEGIN SELECT RAISE(ABORT, 'alias_events is append-only'); END;
CREATE TRIGGER alias_events_no_delete BEFORE DELETE ON alias_events BEGIN SELECT RAISE(ABORT, 'alias_events is append-only'); END;
CREATE TABLE "drift" ("id" INTEGER PRIMARY KEY, "run_id" TEXT REFERENCES "runs"("id"),
   "model_name" TEXT NOT NULL, "model_version" INTEGER, "reference" TEXT, "current" TEXT,
   "column" TEXT NOT NULL, "score" REAL, "drifted" INTEGER, "method" TEXT, "at" TEXT NOT NULL);
CREATE INDEX "idx_drift_run_id" ON "drift" ("run_id");
CREATE TABLE "stage_records" ("id" INTEGER PRIMARY KEY, "pipeline_run_id" TEXT NOT NULL REFERENCES "runs"("id"),
   "stage" TEXT NOT NULL, "status" TEXT NOT NULL, "attempt" INTEGER, "cache_key" TEXT,
   "output_notebook" TEXT, "outputs" TEXT, "error" TEXT, "actor" TEXT, "at" TEXT NOT NULL
, output_digests TEXT);
CREATE INDEX "idx_stage_records_stage_cache_key_status" ON "stage_records" ("stage", "cache_key", "status");
CREATE INDEX "idx_stage_records_pipeline_run_id" ON "stage_records" ("pipeline_run_id");
CREATE TRIGGER stage_records_no_update BEFORE UPDATE ON stage_records BEGIN SELECT RAISE(ABORT, 'stage_records is append-only'); END;
CREATE TRIGGER stage_records_no_delete BEFORE DELETE ON stage_records BEGIN SELECT RAISE(ABORT, 'stage_records is append-only'); END;
CREATE TABLE "events" ("id" INTEGER PRIMARY KEY, "kind" TEXT NOT NULL, "subject" TEXT, "payload" TEXT,
   "actor" TEXT NOT NULL, "at" TEXT NOT NULL);
CREATE INDEX "idx_events_kind_id" ON "events" ("kind", "id");
CREATE TRIGGER events_no_update BEFORE UPDATE ON events BEGIN SELECT RAISE(ABORT, 'events is append-only'); END;
CREATE TRIGGER events_no_delete BEFORE DELETE ON events BEGIN SELECT RAISE(ABORT, 'events is append-only'); END;
CREATE TABLE "experiments" ("name" TEXT PRIMARY KEY, "kind" TEXT NOT NULL, "status" TEXT NOT NULL,
   "layer" TEXT NOT NULL, "share_start" INTEGER NOT NULL, "share_end" INTEGER NOT NULL, "salt" TEXT NOT NULL,
   "unit" TEXT NOT NULL, "variants" TEXT NOT NULL, "metric" TEXT NOT NULL, "metric_kind" TEXT NOT NULL,
   "alpha" REAL NOT NULL, "power" REAL NOT NULL, "mde" REAL, "baseline" REAL, "created_at" TEXT NOT NULL,
   "updated_at" TEXT NOT NULL, "started_at" TEXT, "stopped_at" TEXT
, buckets TEXT);
CREATE INDEX "idx_experiments_layer_status" ON "experiments" ("layer", "status");
CREATE TABLE "experiment_audit" ("id" INTEGER PRIMARY KEY, "experiment" TEXT NOT NULL REFERENCES "experiments"("name"),
   "action" TEXT NOT NULL, "old" TEXT, "new" TEXT, "reason" TEXT, "actor" TEXT NOT NULL, "at" TEXT NOT NULL);
CREATE INDEX "idx_experiment_audit_experiment_id" ON "experiment_audit" ("experiment", "id");
CREATE TRIGGER experiment_audit_no_update BEFORE UPDATE ON experiment_audit BEGIN SELECT RAISE(ABORT, 'experiment_audit is append-only'); END;
CREATE TRIGGER experiment_audit_no_delete BEFORE DELETE ON experiment_audit BEGIN SELECT RAISE(ABORT, 'experiment_audit is append-only'); END;
CREATE TABLE "experiment_allocations" ("id" INTEGER PRIMARY KEY,
   "experiment" TEXT NOT NULL REFERENCES "experiments"("name"), "weights" TEXT NOT NULL, "source" TEXT NOT NULL,
   "actor" TEXT NOT NULL, "at" TEXT NOT NULL);
CREATE INDEX "idx_experiment_allocations_experiment_id" ON "experiment_allocations" ("experiment", "id");
CREATE TRIGGER experiment_allocations_no_update BEFORE UPDATE ON experiment_allocations BEGIN SELECT RAISE(ABORT, 'experiment_allocations is append-only'); END;
CREATE TRIGGER experiment_allocations_no_delete BEFORE DELETE ON experiment_allocations BEGIN SELECT RAISE(ABORT, 'experiment_allocations is append-only'); END;
INSERT INTO migrations VALUES ('0001_tracking', '2026-11-01T10:00:00.000001+00:00'),
   ('0002_models_and_aliases', '2026-11-01T10:00:00.000002+00:00'),
   ('0003_drift_and_stages', '2026-11-01T10:00:00.000003+00:00'),
   ('0004_audit_events', '2026-11-01T10:00:00.000004+00:00'),
   ('0005_experiments', '2026-11-01T10:00:00.000005+00:00'),
   ('0006_experiment_buckets', '2026-11-01T10:00:00.000006+00:00'),
   ('0007_stage_output_digests', '2026-11-01T10:00:00.000007+00:00');
INSERT INTO runs (id, kind, status, started_at) VALUES ('r1', 'train', 'finished', '2026-11-01T11:00:00+00:00');
INSERT INTO model_versions VALUES ('fraud', 1, 'r1', 'lightning_mlp', 'runs/models/fraud/ab', '{"ap": 0.7}', '{}',
   'ci', '2026-11-01T12:00:00+00:00');
INSERT INTO alias_events VALUES (1, 'fraud', 'champion', 'promote', NULL, 1, 'ci', 'first',
   '2026-11-01T12:00:01+00:00');
INSERT INTO experiments VALUES ('ramp', 'experiment', 'running', 'ramp', 0, 10000, 'ramp', 'unit_id',
   '[{"name": "control", "payload": {}, "weight": 0.7}, {"name": "a", "payload": {}, "weight": 0.3}]',
   'conversion', 'proportion', 0.05, 0.8, NULL, NULL, 't', 't', 't', NULL,
   '{"a": [[0, 3000]], "control": [[3000, 10000]]}');
"""


def old_registry(path):
    """A registry.db as the sqlite-utils runner left it, with a model, an alias and an experiment."""
    conn = sqlite3.connect(path)
    conn.executescript(OLD_SCHEMA)
    conn.close()
    return path


def schema(path) -> dict:
    """Tables with their columns and foreign keys, indexes with their columns, triggers."""
    conn = sqlite3.connect(path)
    try:
        out = {}
        for kind, name in conn.execute("SELECT type, name FROM sqlite_master WHERE name NOT LIKE 'sqlite_%' "
                                       "AND name NOT IN ('migrations', 'lab_migrations')"):
            if kind == "table":
                out[name] = ([tuple(r) for r in conn.execute(f"PRAGMA table_info({name})")],
                             sorted(tuple(r[2:5]) for r in conn.execute(f"PRAGMA foreign_key_list({name})")))
            elif kind == "index":
                out[name] = [r[2] for r in conn.execute(f"PRAGMA index_info({name})")]
            else:
                out[name] = kind
        return out
    finally:
        conn.close()


def test_an_old_registry_file_opens_as_migrated_and_keeps_its_rows(tmp_path):
    path = old_registry(tmp_path / "registry.db")
    with Registry.open(path) as reg:
        recorded = {(m["owner"], m["name"]): m["applied_at"] for m in reg.migrations()}
        # migrations written since the old file run now; the old ones do not run again
        assert recorded.pop(("registry", "0006_promotion_evidence")) > "2026-11-02"
        # the old records were adopted with their times: nothing ran again
        assert recorded == {
            ("registry", "0001_tracking"): "2026-11-01T10:00:00.000001+00:00",
            ("registry", "0002_models_and_aliases"): "2026-11-01T10:00:00.000002+00:00",
            ("registry", "0003_drift_and_stages"): "2026-11-01T10:00:00.000003+00:00",
            ("registry", "0004_audit_events"): "2026-11-01T10:00:00.000004+00:00",
            ("registry", "0005_stage_output_digests"): "2026-11-01T10:00:00.000007+00:00",
        }
        assert reg.get_alias("fraud", "champion").metrics == {"ap": 0.7}
        assert register(reg).version == 2
        assert reg.integrity_check() == []
    with ExperimentStore.open(path) as store:
        assert store.get("ramp").buckets == {"a": ((0, 3000),), "control": ((3000, 10000),)}
        store.set_weights("ramp", {"control": 0.5, "a": 0.5})
    with Registry.open(path) as reg:
        assert [(m["owner"], m["name"], m["applied_at"]) for m in reg.migrations()][-2:] == [
            ("experiments", "0001_experiments", "2026-11-01T10:00:00.000005+00:00"),
            ("experiments", "0002_experiment_buckets", "2026-11-01T10:00:00.000006+00:00"),
        ]
    # and it now has exactly the schema a new file gets
    fresh = tmp_path / "fresh.db"
    Registry.open(fresh).close()
    ExperimentStore.open(fresh).close()
    assert schema(path) == schema(fresh)


def test_a_failing_migration_leaves_no_trace_and_later_ones_wait(tmp_path):
    def creates_then_fails(conn):
        conn.execute("CREATE TABLE half_done (id INTEGER PRIMARY KEY)")
        raise RuntimeError("boom")

    database = layer.Database.open(tmp_path / "registry.db")
    later = layer.Migration("0100_later", lambda conn: conn.execute("CREATE TABLE later (id INTEGER PRIMARY KEY)"))
    try:
        with pytest.raises(RuntimeError):
            database.migrate("registry", (*MIGRATIONS, layer.Migration("0099_fails", creates_then_fails), later))
        tables = {r["name"] for r in database.rows("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert "half_done" not in tables and "later" not in tables
        assert [r["name"] for r in database.migrations("registry")] == [m.name for m in MIGRATIONS]
        assert database.migrate("registry", (*MIGRATIONS, later)) == ["0100_later"]
    finally:
        database.close()


# -- runs ----------------------------------------------------------------------------------------

def test_run_records_git_commit_dirty_flag_and_lock_file(project):
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.org"]
    subprocess.run([*git, "init", "-q"], cwd=project, check=True)
    (project / ".gitignore").write_text("registry.db*\n")
    (project / "requirements.lock").write_text("torch==2.13.0\n")
    subprocess.run([*git, "add", "-A"], cwd=project, check=True)
    subprocess.run([*git, "commit", "-qm", "init"], cwd=project, check=True)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=project, capture_output=True, text=True).stdout.strip()
    with Registry.open(project / "registry.db") as reg:
        clean = reg.get_run(reg.start_run(kind="train"))
        (project / "pyproject.toml").write_text("# edited\n")
        dirty = reg.get_run(reg.start_run(kind="train"))
    assert clean["git_commit"] == head and clean["git_dirty"] is False
    assert dirty["git_commit"] == head and dirty["git_dirty"] is True
    assert clean["lock_file"] == "requirements.lock"
    assert clean["lock_hash"] == hashlib.sha256(b"torch==2.13.0\n").hexdigest()


# -- datasets, trials ------------------------------------------------------------------------------

# -- versions ---------------------------------------------------------------------------------------

def _register_many(path: str, count: int, start, errors) -> None:
    try:
        with Registry.open(path) as reg:
            start.wait(timeout=30)
            for _ in range(count):
                register(reg, "fraud")
    except Exception as exc:  # reported to the parent, which fails the test with it
        errors.put(f"{type(exc).__name__}: {exc}")


def test_two_processes_registering_at_once_get_distinct_versions(project):
    path = str(project / "registry.db")
    Registry.open(path).close()  # migrations done, so the race is on registration alone
    count = 25
    problems, exitcodes = run_at_once(_register_many, 2, path, count)
    assert problems == [] and exitcodes == [0, 0]
    with Registry.open(path) as reg:
        versions = [v.version for v in reg.list_model_versions("fraud")]
    assert versions == list(range(1, 2 * count + 1))


def test_a_writer_waits_for_another_and_gives_up_with_a_clear_error(fresh_registry, monkeypatch):
    blocker = sqlite3.connect(fresh_registry.path, isolation_level=None, check_same_thread=False)
    blocker.execute("BEGIN IMMEDIATE")
    threading.Timer(0.3, blocker.rollback).start()
    assert register(fresh_registry).version == 1  # waited out the 0.3 s lock

    monkeypatch.setattr(layer, "LOCK_RETRY_S", 0.3)
    fresh_registry._db.conn.execute("PRAGMA busy_timeout = 50")
    blocker.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(LabError, match="could not write to the registry: .* stayed locked by another writer"):
            register(fresh_registry)
    finally:
        blocker.rollback()
        blocker.close()
    assert [v.version for v in fresh_registry.list_model_versions("fraud")] == [1]


# -- aliases ----------------------------------------------------------------------------------------

def test_rollback_returns_the_event_row_it_wrote(fresh_registry):
    reg = fresh_registry
    for version in (1, 2, 3):
        register(reg)
        reg.promote("fraud", version)
    event = reg.rollback("fraud", actor="oncall", reason="bad canary")
    assert event == reg.alias_history("fraud", "champion")[-1]
    assert (event["action"], event["from_version"], event["to_version"], event["actor"], event["reason"]) == (
        "rollback", 3, 2, "oncall", "bad canary")


@pytest.mark.parametrize("bad", ["/srv/models/fraud", "../elsewhere/model", "runs/../../model", "runs/models/../.."])
def test_register_refuses_artifact_paths_outside_the_project(fresh_registry, bad):
    before = row_counts(fresh_registry.path)
    with pytest.raises(LabError, match="relative to the project root") as caught:
        fresh_registry.register_model("fraud", run_id=None, flavor="tabular_mlp", artifact_path=bad,
                                      metrics={}, lineage={})
    assert repr(bad) in str(caught.value) and "runs/models/" in str(caught.value)
    assert row_counts(fresh_registry.path) == before


def test_rollback_of_an_alias_never_set_names_the_aliases(fresh_registry):
    register(fresh_registry)
    fresh_registry.set_alias("fraud", "challenger", 1)
    with pytest.raises(NotFound, match="has no alias 'champion'; its aliases: challenger"):
        fresh_registry.rollback("fraud")


def test_on_event_hears_registrations_promotions_and_rollbacks(project):
    heard = []
    with Registry.open(project / "registry.db", on_event=lambda name, payload: heard.append((name, payload))) as reg:
        register(reg)
        register(reg)
        reg.promote("fraud", 1)
        reg.promote("fraud", 2)
        reg.rollback("fraud")
    assert heard[0] == (MODEL_REGISTERED, {"model": "fraud", "version": 1, "run_id": None})
    assert heard[3] == (MODEL_PROMOTED, {"model": "fraud", "version": 2, "alias": "champion", "previous": 1})
    assert heard[4] == (MODEL_ROLLED_BACK, {"model": "fraud", "version": 1, "alias": "champion", "previous": 2})


# -- lineage, drift, stages, events -----------------------------------------------------------------

def test_no_pipeline_run_yet(fresh_registry):
    fresh_registry.start_run(kind="train")
    assert fresh_registry.last_pipeline_run() is None


def test_a_run_records_the_lock_file_and_environment_of_its_project(fresh_registry, project):
    """The SQLite registry's project specifics (the contract suite, lab.testing.registry,
    covers the rest on SQLite and PostgreSQL): a folder that is no git checkout records no
    commit, and the lock hash falls back to pyproject.toml."""
    run_id = fresh_registry.start_run(kind="train")
    run = fresh_registry.get_run(run_id)
    assert run["git_commit"] is None and run["git_dirty"] is None
    assert run["lock_file"] == "pyproject.toml"
    assert run["lock_hash"] == hashlib.sha256((project / "pyproject.toml").read_bytes()).hexdigest()
    assert "pluggy" in run["env"]["packages"]
    (version,) = [fresh_registry.register_model("m", run_id=run_id, flavor="f", artifact_path="runs/models/m/1",
                                                metrics={}, lineage={})]
    assert fresh_registry.lineage("m", version.version)["run"]["lock_hash"] == run["lock_hash"]
