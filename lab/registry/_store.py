"""The registry: one SQLite file holding tracking runs, datasets, sweep trials and the
audit log; model versions and aliases come from ``ModelCatalog`` (``_models.py``), shadows,
approvals, evidence and the promotion gate from ``PromotionRecords`` (``_promotion.py``),
stage records and drift scores from ``PipelineRecords`` (``_pipeline.py``).

Every write is one ``BEGIN IMMEDIATE`` transaction, so a failed call writes nothing and
two processes never get the same version number.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any, Callable

from lab.errors import ConfigError, LabError, NotFound
from lab.events import current_actor
from lab import postgres
from lab.registry import _git
from lab.registry.base import BaseRegistry
from lab.registry._db import as_float, dumps, from_real, loads, require_dict, require_text, utc_now
from lab.registry._migrations import MIGRATIONS, OWNER
from lab.registry._models import ModelCatalog, ModelVersion
from lab.registry._pipeline import STAGE_STATUSES, PipelineRecords
from lab.registry._promotion import PromotionRecords
from lab.sqlite import Database, insert, insert_many

RUN_STATUSES = ("running", "finished", "failed", "killed")

EventHook = Callable[[str, dict], None]
"""``on_event(name, payload)``: called after a model is registered, promoted or rolled back."""


class Registry(ModelCatalog, PromotionRecords, PipelineRecords, BaseRegistry):
    """Tracking store and model registry over one SQLite file (WAL mode).

    Open with ``Registry.open(path)``; use as a context manager or call ``close()``.
    One instance may be shared between threads; any number of processes may open the
    same file. Every state change is also an append-only row with actor and time.
    """

    def __init__(self, database: Database, *, project_root: Path, on_event: EventHook | None = None):
        self._db = database
        self.path = database.path
        self.project_root = project_root
        self._on_event = on_event

    @classmethod
    def open(
        cls,
        path: str | os.PathLike,
        *,
        project_root: str | os.PathLike | None = None,
        on_event: EventHook | None = None,
    ) -> "Registry":
        """Open (creating file and folders if needed) the registry at ``path``, switch it to
        WAL and apply pending migrations. A ``postgresql://`` URL for ``path`` opens the
        same registry in that PostgreSQL database instead (``lab.postgres``). ``project_root`` (default: the file's folder) is
        where runs read the git commit and the lock-file hash. ``on_event(name, payload)``
        is called after each model registration, promotion and rollback commits."""
        if postgres.is_url(path):  # [tool.lab] registry = "postgresql://...": the shared registry
            database = postgres.open_migrated(path, OWNER, MIGRATIONS, what="registry")
            root = Path(project_root).resolve() if project_root is not None else Path.cwd()
            return cls(database, project_root=root, on_event=on_event)
        path = Path(path).resolve()
        database = Database.open_migrated(path, OWNER, MIGRATIONS, what="registry")
        root = Path(project_root).resolve() if project_root is not None else path.parent
        return cls(database, project_root=root, on_event=on_event)

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> "Registry":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    @property
    def journal_mode(self) -> str:
        """SQLite's journal mode for this file: "wal" once opened."""
        return self._db.journal_mode

    def migrations(self) -> list[dict]:
        """Every migration recorded in this file (``owner``, ``name``, ``applied_at``), in
        the order applied: the registry's, and those of the stores sharing the file."""
        return self._db.migrations()

    def integrity_check(self) -> list[str]:
        """What is wrong with the file (damaged pages, rows referring to missing rows), one
        line per problem; ``[]`` when it is sound."""
        return self._db.integrity_check()

    # -- internals shared with the mixins -----------------------------------------------

    def _notify(self, name: str, payload: dict) -> None:
        if self._on_event is not None:
            self._on_event(name, payload)

    def _record_event(self, db, kind: str, subject: str, payload: dict, actor: str | None) -> None:
        insert(db, "events", {
            "kind": kind, "subject": subject, "payload": dumps(payload, "event payload"),
            "actor": actor or current_actor(), "at": utc_now(),
        })

    def _require_run(self, run_id: Any) -> dict:
        row = self._db.one("SELECT * FROM runs WHERE id = ?", [run_id]) if isinstance(run_id, str) else None
        if row is None:
            raise NotFound(f"no run {run_id!r} in {self.path}; list runs with `lab runs`")
        return row

    def _latest_by_key(self, table: str, key: str, value: str, run_id: str) -> dict:
        rows = self._db.rows(f"SELECT {key} AS k, {value} AS v FROM {table} WHERE run_id = ? ORDER BY id", [run_id])
        return {r["k"]: r["v"] for r in rows}  # later rows win

    def _run_dict(self, row: dict) -> dict:
        run_id = row["id"]
        params = {k: loads(v) for k, v in self._latest_by_key("run_params", "key", "value", run_id).items()}
        metrics = {k: from_real(v) for k, v in self._latest_by_key("run_metrics", "key", "value", run_id).items()}
        return {
            **row,
            "git_dirty": None if row["git_dirty"] is None else bool(row["git_dirty"]),
            "seeds": loads(row["seeds"], {}),
            "env": loads(row["env"], {}),
            "params": params,
            "metrics": metrics,
            "artifacts": self._latest_by_key("run_artifacts", "name", "path", run_id),
            "data": self._latest_by_key("run_data", "name", "digest", run_id),
        }

    # -- runs ---------------------------------------------------------------------------

    def start_run(
        self,
        *,
        kind: str,
        params: dict | None = None,
        seeds: dict | None = None,
        parent_run_id: str | None = None,
        name: str | None = None,
    ) -> str:
        """Start a tracking run; returns its id (uuid hex). Records the git commit and
        dirty flag (None outside git), the lock-file hash, Python and package versions."""
        require_text(kind, "run kind")
        params = require_dict(params, "run params")
        seeds = require_dict(seeds, "run seeds")
        params_json = {k: dumps(v, f"param {k!r}") for k, v in params.items()}
        where = _git.provenance(self.project_root)  # subprocesses: outside the write lock
        run_id = uuid.uuid4().hex
        actor = current_actor()
        with self._db.write() as db:
            if parent_run_id is not None:
                self._require_run(parent_run_id)
            now = utc_now()
            insert(db, "runs", {
                "id": run_id, "kind": kind, "name": name, "parent_run_id": parent_run_id,
                "status": "running", "seeds": dumps(seeds, "run seeds"),
                "git_commit": where.git_commit,
                "git_dirty": None if where.git_dirty is None else int(where.git_dirty),
                "lock_file": where.lock_file, "lock_hash": where.lock_hash,
                "env": dumps(where.env, "environment"), "actor": actor,
                "started_at": now, "finished_at": None,
            })
            insert_many(db, "run_params", [
                {"run_id": run_id, "key": k, "value": v, "at": now} for k, v in params_json.items()
            ])
            self._record_event(db, "run.started", run_id, {"kind": kind, "name": name}, actor)
        return run_id

    def log_params(self, run_id: str, params: dict) -> None:
        """Add or overwrite parameters of a run (the latest value of a key wins)."""
        params = require_dict(params, "params")
        rows = [{"run_id": run_id, "key": k, "value": dumps(v, f"param {k!r}")} for k, v in params.items()]
        with self._db.write() as db:
            self._require_run(run_id)
            now = utc_now()
            insert_many(db, "run_params", [{**r, "at": now} for r in rows])

    def log_metrics(self, run_id: str, metrics: dict[str, float], step: int | None = None) -> None:
        """Append metric values (optionally at a step); ``get_run`` shows the latest per key."""
        metrics = require_dict(metrics, "metrics")
        values = {k: as_float(v, f"metric {k!r}") for k, v in metrics.items()}
        if step is not None and (isinstance(step, bool) or not isinstance(step, int)):
            raise ConfigError(f"step must be a whole number or None, got {step!r}")
        with self._db.write() as db:
            self._require_run(run_id)
            now = utc_now()
            insert_many(db, "run_metrics", [
                {"run_id": run_id, "key": k, "value": v, "step": step, "at": now} for k, v in values.items()
            ])

    def metric_history(self, run_id: str, key: str) -> list[dict]:
        """Every logged value of one metric: ``[{"value", "step", "at"}]``, oldest first."""
        with self._db.read():
            self._require_run(run_id)
            rows = self._db.rows(
                "SELECT value, step, at FROM run_metrics WHERE run_id = ? AND key = ? ORDER BY id", [run_id, key]
            )
        return [{**r, "value": from_real(r["value"])} for r in rows]

    def log_artifact(self, run_id: str, name: str, path: str) -> None:
        """Record a file the run produced, under a name (a later one with that name wins)."""
        require_text(name, "artifact name")
        require_text(str(path), "artifact path")
        with self._db.write() as db:
            self._require_run(run_id)
            insert(db, "run_artifacts", {"run_id": run_id, "name": name, "path": str(path), "at": utc_now()})

    def log_data(self, run_id: str, name: str, digest: str) -> None:
        """Record the digest of an input data set the run read (lineage follows it)."""
        require_text(name, "data name")
        require_text(digest, "data digest")
        with self._db.write() as db:
            self._require_run(run_id)
            insert(db, "run_data", {"run_id": run_id, "name": name, "digest": digest, "at": utc_now()})

    def finish_run(self, run_id: str, status: str = "finished") -> None:
        """End a run as finished, failed or killed. Finishing again with the same status is
        a no-op; with a different one it is an error (a run ends once)."""
        if status not in RUN_STATUSES[1:]:
            raise ConfigError(f"run status must be one of {', '.join(RUN_STATUSES[1:])}, got {status!r}")
        with self._db.write() as db:
            run = self._require_run(run_id)
            if run["status"] == status:
                return
            if run["status"] != "running":
                raise LabError(f"run {run_id} already ended as {run['status']!r}; it cannot become {status!r}")
            db.execute("UPDATE runs SET status = ?, finished_at = ? WHERE id = ?", [status, utc_now(), run_id])
            self._record_event(db, f"run.{status}", run_id, {"kind": run["kind"]}, None)

    def resume_run(self, run_id: str) -> None:
        """Put a failed or killed run back to running (``lab run`` resuming it); recorded as an event."""
        with self._db.write() as db:
            run = self._require_run(run_id)
            if run["status"] == "running":
                return
            if run["status"] == "finished":
                raise LabError(f"run {run_id} finished; start a new run instead of resuming it")
            db.execute("UPDATE runs SET status = 'running', finished_at = NULL WHERE id = ?", [run_id])
            self._record_event(db, "run.resumed", run_id, {"kind": run["kind"], "was": run["status"]}, None)

    def get_run(self, run_id: str) -> dict:
        """A run with its params, latest metrics, artifacts, data digests, seeds,
        provenance (git_commit, git_dirty, lock_file, lock_hash, env), status and times."""
        with self._db.read():
            return self._run_dict(self._require_run(run_id))

    def list_runs(self, *, kind: str | None = None, limit: int = 50) -> list[dict]:
        """The latest runs (newest first), optionally of one kind, shaped like ``get_run``."""
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ConfigError(f"limit must be a positive whole number, got {limit!r}")
        where, params = ("WHERE kind = ?", [kind]) if kind is not None else ("", [])
        with self._db.read():
            rows = self._db.rows(
                f"SELECT * FROM runs {where} ORDER BY started_at DESC, rowid DESC LIMIT ?", [*params, limit]
            )
            return [self._run_dict(r) for r in rows]

    # -- datasets and trials --------------------------------------------------------------

    def record_dataset(
        self, *, kind: str, name: str, digest: str, path: str, rows: int, meta: dict | None = None
    ) -> int:
        """Record a data set (a training set, a scored batch) by digest; returns its id.
        Recording the same kind, name, digest and path again returns the existing id."""
        for value, what in ((kind, "dataset kind"), (name, "dataset name"), (digest, "dataset digest")):
            require_text(value, what)
        require_text(str(path), "dataset path")
        if isinstance(rows, bool) or not isinstance(rows, int) or rows < 0:
            raise ConfigError(f"dataset rows must be a whole number >= 0, got {rows!r}")
        meta_json = dumps(require_dict(meta, "dataset meta"), "dataset meta")
        with self._db.write() as db:
            found = self._db.one(
                "SELECT id FROM datasets WHERE kind = ? AND name = ? AND digest = ? AND path = ?",
                [kind, name, digest, str(path)],
            )
            if found:
                return found["id"]
            actor = current_actor()
            dataset_id = insert(db, "datasets", {
                "kind": kind, "name": name, "digest": digest, "path": str(path), "rows": rows,
                "meta": meta_json, "actor": actor, "created_at": utc_now(),
            })
            self._record_event(db, "dataset.recorded", digest, {"id": dataset_id, "kind": kind, "name": name}, actor)
            return dataset_id

    @staticmethod
    def _dataset_dict(row: dict) -> dict:
        return {**row, "meta": loads(row["meta"], {})}

    def get_dataset(self, digest: str) -> dict | None:
        """The latest data set recorded with this digest, or None."""
        with self._db.read():
            row = self._db.one("SELECT * FROM datasets WHERE digest = ? ORDER BY id DESC LIMIT 1", [digest])
        return self._dataset_dict(row) if row else None

    def list_datasets(self, *, kind: str | None = None, limit: int = 50) -> list[dict]:
        """The latest data sets (of ``kind``), newest first (a training set's ``meta`` holds
        its leakage audit's digest and path under ``leakage_audit``)."""
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ConfigError(f"limit must be a whole number >= 1, got {limit!r}")
        where, params = ("WHERE kind = ? ", [kind]) if kind is not None else ("", [])
        with self._db.read():
            rows = self._db.rows(f"SELECT * FROM datasets {where}ORDER BY id DESC LIMIT ?", [*params, limit])
        return [self._dataset_dict(r) for r in rows]

    def record_trial(self, run_id: str, *, number: int, params: dict, value: float | None, state: str) -> None:
        """Insert or update sweep trial ``number`` of a run."""
        params_json = dumps(require_dict(params, "trial params"), "trial params")
        require_text(state, "trial state")
        if isinstance(number, bool) or not isinstance(number, int):
            raise ConfigError(f"trial number must be a whole number, got {number!r}")
        value = None if value is None else as_float(value, "trial value")
        with self._db.write() as db:
            self._require_run(run_id)
            db.execute(
                "INSERT INTO trials (run_id, number, params, value, state, updated_at) VALUES (?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (run_id, number) DO UPDATE SET params = excluded.params, value = excluded.value, "
                "state = excluded.state, updated_at = excluded.updated_at",
                [run_id, number, params_json, value, state, utc_now()],
            )

    def list_trials(self, run_id: str) -> list[dict]:
        """The run's sweep trials by number."""
        with self._db.read():
            self._require_run(run_id)
            rows = self._db.rows("SELECT * FROM trials WHERE run_id = ? ORDER BY number", [run_id])
        return [{**r, "params": loads(r["params"], {})} for r in rows]

    # -- audit ----------------------------------------------------------------------------

    def append_event(self, kind: str, subject: str, payload: dict, *, actor: str | None = None) -> None:
        """Append a row to the audit log (flag changes, approvals, anything with a who and when)."""
        require_text(kind, "event kind")
        payload = require_dict(payload, "event payload")
        with self._db.write() as db:
            self._record_event(db, kind, subject, payload, actor)

    def events(self, kind: str | None = None, limit: int = 100) -> list[dict]:
        """The latest ``limit`` audit events (optionally of one kind), oldest first."""
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ConfigError(f"limit must be a positive whole number, got {limit!r}")
        where, params = ("WHERE kind = ?", [kind]) if kind is not None else ("", [])
        with self._db.read():
            rows = self._db.rows(f"SELECT * FROM events {where} ORDER BY id DESC LIMIT ?", [*params, limit])
        return [{**r, "payload": loads(r["payload"], {})} for r in reversed(rows)]


__all__ = ["Registry", "ModelVersion", "RUN_STATUSES", "STAGE_STATUSES"]
