"""Pipeline bookkeeping in the registry: the runner's stage records (its cache and its
resume point) and the drift stage's per-column scores; part of ``Registry``."""

from __future__ import annotations

from lab.errors import ConfigError
from lab.events import current_actor
from lab.registry._db import as_float, dumps, from_real, loads, require_dict, require_text, utc_now
from lab.sqlite import insert, insert_many

STAGE_STATUSES = ("running", "finished", "failed", "skipped")


class PipelineRecords:
    """Stage and drift methods of ``Registry``; relies on its ``_db``, ``_require_run``,
    ``_run_dict`` and ``_record_event``."""

    # -- drift ----------------------------------------------------------------------------

    def record_drift(
        self,
        run_id: str | None,
        *,
        model_name: str,
        model_version: int | None,
        reference: str,
        current: str,
        scores: dict[str, dict],
    ) -> None:
        """Record per-column drift scores ``{column: {"score", "drifted", "method"}}``
        comparing ``current`` against ``reference`` (data digests or paths)."""
        require_text(model_name, "model_name")
        rows = []
        for column, entry in require_dict(scores, "drift scores").items():
            if not isinstance(entry, dict) or not {"score", "drifted", "method"} <= set(entry):
                raise ConfigError(
                    f"drift score for column {column!r} must be a dict with score, drifted and method; got {entry!r}"
                )
            rows.append({
                "column": column, "score": as_float(entry["score"], f"drift score of {column!r}"),
                "drifted": int(bool(entry["drifted"])), "method": str(entry["method"]),
            })
        with self._db.write() as db:
            if run_id is not None:
                self._require_run(run_id)
            now = utc_now()
            insert_many(db, "drift", [
                {"run_id": run_id, "model_name": model_name, "model_version": model_version,
                 "reference": reference, "current": current, **r, "at": now}
                for r in rows
            ])
            drifted = [r["column"] for r in rows if r["drifted"]]
            self._record_event(
                db, "drift.recorded", model_name,
                {"run_id": run_id, "model_version": model_version, "drifted": drifted}, None,
            )

    def list_drift(self, *, run_id: str | None = None) -> list[dict]:
        """Drift rows, one per column, oldest first; optionally of one run."""
        where, params = ("WHERE run_id = ?", [run_id]) if run_id is not None else ("", [])
        with self._db.read():
            rows = self._db.rows(f"SELECT * FROM drift {where} ORDER BY id", params)
        return [{**r, "drifted": bool(r["drifted"]), "score": from_real(r["score"])} for r in rows]

    # -- pipeline stages ------------------------------------------------------------------

    def record_stage(
        self,
        pipeline_run_id: str,
        stage: str,
        *,
        status: str,
        attempt: int,
        cache_key: str,
        output_notebook: str | None,
        outputs: dict | None = None,
        error: str | None = None,
        output_digests: dict[str, str] | None = None,
    ) -> None:
        """Append a stage record (running, finished, failed or skipped) to a pipeline run.
        ``output_digests`` (``{declared output: content digest}``) is what a finished or
        skipped stage left behind; a cache hit is valid only while the outputs match it."""
        if status not in STAGE_STATUSES:
            raise ConfigError(f"stage status must be one of {', '.join(STAGE_STATUSES)}, got {status!r}")
        require_text(stage, "stage name")
        outputs_json = dumps(require_dict(outputs, "stage outputs"), "stage outputs")
        digests_json = None
        if output_digests is not None:
            digests = require_dict(output_digests, "stage output digests")
            bad = {k: v for k, v in digests.items() if not isinstance(v, str)}
            if bad:
                raise ConfigError(f"stage output digests must be strings, got {bad!r}")
            digests_json = dumps(digests, "stage output digests")
        with self._db.write() as db:
            self._require_run(pipeline_run_id)
            insert(db, "stage_records",
                {"pipeline_run_id": pipeline_run_id, "stage": stage, "status": status, "attempt": attempt,
                 "cache_key": cache_key, "output_notebook": None if output_notebook is None else str(output_notebook),
                 "outputs": outputs_json, "output_digests": digests_json, "error": error,
                 "actor": current_actor(), "at": utc_now()}
            )

    @staticmethod
    def _stage_dict(row: dict) -> dict:
        return {**row, "outputs": loads(row["outputs"], {}), "output_digests": loads(row.get("output_digests"))}

    def find_stage_cache(self, stage: str, cache_key: str) -> dict | None:
        """The latest finished record of ``stage`` with ``cache_key``, or None (run it)."""
        with self._db.read():
            row = self._db.one(
                "SELECT * FROM stage_records WHERE stage = ? AND cache_key = ? AND status = 'finished' "
                "ORDER BY id DESC LIMIT 1",
                [stage, cache_key],
            )
        return self._stage_dict(row) if row else None

    def last_finished_stage(self, stage: str) -> dict | None:
        """The latest finished record of ``stage`` whatever its key (what it ran with last)."""
        with self._db.read():
            row = self._db.one(
                "SELECT * FROM stage_records WHERE stage = ? AND status = 'finished' ORDER BY id DESC LIMIT 1",
                [stage],
            )
        return self._stage_dict(row) if row else None

    def stage_history(self, pipeline_run_id: str) -> list[dict]:
        """Every stage record of a pipeline run, oldest first."""
        with self._db.read():
            rows = self._db.rows(
                "SELECT * FROM stage_records WHERE pipeline_run_id = ? ORDER BY id", [pipeline_run_id]
            )
        return [self._stage_dict(r) for r in rows]

    def last_pipeline_run(self) -> dict | None:
        """The latest run of kind "pipeline" (as ``get_run``) with its ``stages`` records."""
        with self._db.read():
            row = self._db.one("SELECT * FROM runs WHERE kind = 'pipeline' ORDER BY started_at DESC, rowid DESC LIMIT 1")
            if row is None:
                return None
            return {**self._run_dict(row), "stages": self.stage_history(row["id"])}
