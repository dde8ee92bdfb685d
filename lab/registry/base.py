"""The registry contract: what the platform asks of a tracking store and model registry.

``lab.registry.Registry`` is the built-in implementation over one SQLite file; a backend
for teams (PostgreSQL, say) implements ``BaseRegistry`` in a plugin and is used through
the same methods. docs/registry.md describes each method's behaviour in full.
"""

from __future__ import annotations

import abc
import datetime as dt
from typing import Any

from lab.registry._models import ModelVersion


class BaseRegistry(abc.ABC):
    """Runs, data sets, sweep trials, model versions with aliases and their history,
    drift scores, pipeline stage records and the audit log.

    Contract:

    - One instance may be shared between threads; several processes may use the same
      store at once.
    - Every method that changes something is atomic: it commits all its rows (the change
      and its audit row with actor and time) or none. Bad input raises ``LabError`` or
      ``ConfigError`` before anything is written; an unknown run, model, version or
      alias raises ``NotFound`` naming what exists.
    - History is append-only: alias events, stage records and audit events are never
      changed, so "what was live on day X" has one answer.
    - Version numbers are ``1 + the highest`` per model and never repeat, even when two
      processes register at once.
    - Times are ISO 8601 UTC strings; ``actor`` defaults to ``lab.events.current_actor()``.
    """

    # -- life cycle -----------------------------------------------------------------------

    @abc.abstractmethod
    def close(self) -> None:
        """Release the connection; the object is not used afterwards."""

    def __enter__(self):
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    # -- runs -----------------------------------------------------------------------------

    @abc.abstractmethod
    def start_run(self, *, kind: str, params: dict | None = None, seeds: dict | None = None,
                  parent_run_id: str | None = None, name: str | None = None) -> str:
        """Start a tracking run with its provenance (git commit, lock-file hash,
        versions); returns its id."""

    @abc.abstractmethod
    def log_params(self, run_id: str, params: dict) -> None:
        """Add parameters to a run; a later value of a key wins."""

    @abc.abstractmethod
    def log_metrics(self, run_id: str, metrics: dict[str, float], step: int | None = None) -> None:
        """Append metric values, optionally at a step."""

    @abc.abstractmethod
    def metric_history(self, run_id: str, key: str) -> list[dict]:
        """Every value logged for one metric (``value``, ``step``, ``at``), oldest first."""

    @abc.abstractmethod
    def log_artifact(self, run_id: str, name: str, path: str) -> None:
        """Record a file the run produced."""

    @abc.abstractmethod
    def log_data(self, run_id: str, name: str, digest: str) -> None:
        """Record the digest of an input data set the run read (lineage follows it)."""

    @abc.abstractmethod
    def finish_run(self, run_id: str, status: str = "finished") -> None:
        """End a run as finished, failed or killed (once; the same status again is a no-op)."""

    @abc.abstractmethod
    def resume_run(self, run_id: str) -> None:
        """Put a failed or killed run back to running."""

    @abc.abstractmethod
    def get_run(self, run_id: str) -> dict:
        """A run with params, latest metrics, artifacts, data digests, seeds, provenance,
        status and times."""

    @abc.abstractmethod
    def list_runs(self, *, kind: str | None = None, limit: int = 50) -> list[dict]:
        """The latest runs, newest first, shaped like ``get_run``."""

    # -- data sets and trials -------------------------------------------------------------

    @abc.abstractmethod
    def record_dataset(self, *, kind: str, name: str, digest: str, path: str, rows: int,
                       meta: dict | None = None) -> int:
        """Record a data set by digest; returns its id (the existing one for a repeat)."""

    @abc.abstractmethod
    def get_dataset(self, digest: str) -> dict | None:
        """The latest data set recorded under ``digest``, or None."""

    @abc.abstractmethod
    def list_datasets(self, *, kind: str | None = None, limit: int = 50) -> list[dict]:
        """The latest data sets (of ``kind``), newest first, shaped like ``get_dataset``."""

    @abc.abstractmethod
    def record_trial(self, run_id: str, *, number: int, params: dict, value: float | None, state: str) -> None:
        """Insert or update sweep trial ``number`` of a run."""

    @abc.abstractmethod
    def list_trials(self, run_id: str) -> list[dict]:
        """A run's sweep trials by number."""

    # -- models and aliases ---------------------------------------------------------------

    @abc.abstractmethod
    def register_model(self, name: str, *, run_id: str | None, flavor: str, artifact_path: str,
                       metrics: dict, lineage: dict) -> ModelVersion:
        """Register the next version of model ``name``."""

    @abc.abstractmethod
    def get_model_version(self, name: str, version: int) -> ModelVersion:
        """One version; ``NotFound`` names those that exist."""

    @abc.abstractmethod
    def list_model_versions(self, name: str) -> list[ModelVersion]:
        """All versions of a model, oldest first; ``[]`` for a name with none."""

    @abc.abstractmethod
    def list_models(self) -> list[dict]:
        """One row per model: name, versions, latest, updated_at, aliases."""

    @abc.abstractmethod
    def aliases(self, name: str) -> dict[str, int]:
        """Every alias of a model that points somewhere, with its version."""

    @abc.abstractmethod
    def get_alias(self, name: str, alias: str) -> ModelVersion | None:
        """The version ``alias`` points to now; None when never set."""

    @abc.abstractmethod
    def set_alias(self, name: str, alias: str, version: int, *, actor: str | None = None,
                  reason: str = "") -> dict | None:
        """Point ``alias`` at ``version``; the event row, or None when it already points there."""

    @abc.abstractmethod
    def promote(self, name: str, version: int, *, alias: str = "champion", actor: str | None = None,
                reason: str = "", gate: Any = None, force: bool = False,
                notes: dict[str, str] | None = None) -> dict | None:
        """Make ``version`` the ``alias``; the event row, or None when it already is. To
        champion, only when ``promotion_criteria`` hold (else ``PromotionRefused``, unless
        ``force`` with a ``reason``); the event's ``evidence`` records what was checked."""

    @abc.abstractmethod
    def rollback(self, name: str, *, alias: str = "champion", actor: str | None = None,
                 reason: str = "") -> dict:
        """Move ``alias`` back to the version it held before; the event row."""

    @abc.abstractmethod
    def alias_history(self, name: str, alias: str | None = None) -> list[dict]:
        """Alias events of a model (one alias's if given), oldest first."""

    @abc.abstractmethod
    def alias_at(self, name: str, alias: str, when: str | dt.datetime | dt.date) -> ModelVersion | None:
        """The version ``alias`` pointed to at ``when`` (a bare date: the end of that day)."""

    @abc.abstractmethod
    def lineage(self, name: str, version: int) -> dict:
        """The walk from a version to its run and input data: ``model``, ``aliases``,
        ``run``, ``data``."""

    # -- shadows, approvals, evidence: what a promotion rests on ---------------------------

    @abc.abstractmethod
    def start_shadow(self, name: str, version: int, criteria: dict, *, actor: str | None = None,
                     reason: str = "") -> dict:
        """Start shadowing ``version`` against the champion with exit ``criteria``; one per model."""

    @abc.abstractmethod
    def end_shadow(self, name: str, shadow_id: int, action: str, *, report: dict | None = None,
                   actor: str | None = None, reason: str = "") -> dict | None:
        """Record a shadow ``met``, ``expired`` or ``stopped``; None when that changes nothing."""

    @abc.abstractmethod
    def shadows(self, name: str) -> list[dict]:
        """Every shadow of a model (replayed from its rows), oldest first."""

    @abc.abstractmethod
    def active_shadow(self, name: str) -> dict | None:
        """The shadow still mirrored (running or met), or None."""

    @abc.abstractmethod
    def get_shadow(self, name: str, shadow_id: int | None = None) -> dict:
        """One shadow (default: the latest); ``NotFound`` when there is none."""

    @abc.abstractmethod
    def approve(self, name: str, version: int, *, approver: str, note: str = "",
                actor: str | None = None) -> dict:
        """Record a named approval of ``version`` becoming champion."""

    @abc.abstractmethod
    def approvals(self, name: str, version: int | None = None) -> list[dict]:
        """Approvals of a model (one version's if given), oldest first."""

    @abc.abstractmethod
    def record_evidence(self, name: str, version: int, *, kind: str, passed: bool, summary: str,
                        payload: dict | None = None, actor: str | None = None) -> dict:
        """Record evidence about a version (offline, shadow, experiment) and whether it passed."""

    @abc.abstractmethod
    def evidence(self, name: str, version: int | None = None, kind: str | None = None) -> list[dict]:
        """Evidence rows, oldest first."""

    @abc.abstractmethod
    def promotion_criteria(self, name: str, version: int, gate: Any = None, *,
                           actor: str | None = None) -> list:
        """The ``Criterion`` list promoting ``version`` to champion is checked against now."""

    @abc.abstractmethod
    def model_history(self, name: str) -> list[dict]:
        """Alias moves, shadows, approvals and evidence of a model, oldest first."""

    # -- drift and pipeline bookkeeping ---------------------------------------------------

    @abc.abstractmethod
    def record_drift(self, run_id: str | None, *, model_name: str, model_version: int | None,
                     reference: str, current: str, scores: dict[str, dict]) -> None:
        """Record per-column drift scores ``{column: {"score", "drifted", "method"}}``."""

    @abc.abstractmethod
    def list_drift(self, *, run_id: str | None = None) -> list[dict]:
        """Drift rows, one per column, oldest first."""

    @abc.abstractmethod
    def record_stage(self, pipeline_run_id: str, stage: str, *, status: str, attempt: int, cache_key: str,
                     output_notebook: str | None, outputs: dict | None = None, error: str | None = None,
                     output_digests: dict[str, str] | None = None) -> None:
        """Append a stage record to a pipeline run."""

    @abc.abstractmethod
    def find_stage_cache(self, stage: str, cache_key: str) -> dict | None:
        """The latest finished record of ``stage`` with ``cache_key``, or None."""

    @abc.abstractmethod
    def last_finished_stage(self, stage: str) -> dict | None:
        """The latest finished record of ``stage`` whatever its key, or None."""

    @abc.abstractmethod
    def stage_history(self, pipeline_run_id: str) -> list[dict]:
        """Every stage record of a pipeline run, oldest first."""

    @abc.abstractmethod
    def last_pipeline_run(self) -> dict | None:
        """The latest pipeline run (as ``get_run``) with its ``stages``, or None."""

    # -- audit ----------------------------------------------------------------------------

    @abc.abstractmethod
    def append_event(self, kind: str, subject: str, payload: dict, *, actor: str | None = None) -> None:
        """Append a row to the audit log."""

    @abc.abstractmethod
    def events(self, kind: str | None = None, limit: int = 100) -> list[dict]:
        """The latest ``limit`` audit events (one kind's if given), oldest first."""
