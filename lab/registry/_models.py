"""Model versions, aliases and lineage: the model half of the ``Registry``.

Aliases (``champion``, ``challenger``, any identifier) have no mutable table: the
append-only ``alias_events`` rows are the truth, and the current target, the target at
any past moment and the rollback target all come from replaying them. Replaying keeps
a stack of versions: ``set`` and ``promote`` push, ``rollback`` pops. So repeated
rollbacks keep walking back (3 -> 2 -> 1) instead of flip-flopping between two.
"""

from __future__ import annotations

import datetime as dt
import os
import re
from dataclasses import asdict, dataclass
from pathlib import PurePosixPath, PureWindowsPath
from typing import Any, Callable, Iterable

from lab.errors import ConfigError, LabError, NotFound
from lab.events import MODEL_PROMOTED, MODEL_REGISTERED, MODEL_ROLLED_BACK, current_actor
from lab.registry._db import dumps, loads, to_utc_iso, utc_now
from lab.sqlite import insert

MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class ModelVersion:
    """One registered version of a model: what was trained, by which run, with which
    metrics, and the lineage the trainer recorded (data digests, feature views...)."""

    name: str
    version: int
    run_id: str | None
    flavor: str
    artifact_path: str
    metrics: dict
    lineage: dict
    created_at: str

    def to_dict(self) -> dict:
        return asdict(self)


def _version_from_row(row: dict) -> ModelVersion:
    return ModelVersion(
        name=row["name"], version=row["version"], run_id=row["run_id"], flavor=row["flavor"],
        artifact_path=row["artifact_path"], metrics=loads(row["metrics"], {}),
        lineage=loads(row["lineage"], {}), created_at=row["created_at"],
    )


def check_alias(alias: Any) -> str:
    if not isinstance(alias, str) or not alias.isidentifier():
        raise ConfigError(
            f"alias {alias!r} is not a valid name: use letters, digits and underscores, "
            "not starting with a digit (e.g. champion, challenger)"
        )
    return alias


def _check_version(version: Any) -> int:
    if isinstance(version, bool) or not isinstance(version, int):
        raise ConfigError(f"model version must be a whole number, got {version!r}")
    return version


def check_artifact_path(artifact_path: Any) -> str:
    """A model's files must live inside the project, named relative to its root (the
    registry and everything that loads a version resolve it against that root). So an
    absolute path, or one with a ``..`` part, is refused."""
    if not artifact_path or not isinstance(artifact_path, (str, os.PathLike)):
        raise ConfigError(f"artifact_path must be a path, got {artifact_path!r}")
    text = os.fspath(artifact_path)
    windows = PureWindowsPath(text)  # backslashes and drive letters count as separators and roots too
    parts = PurePosixPath(text.replace("\\", "/")).parts
    if not parts or windows.drive or windows.root or text.startswith("/") or ".." in parts:
        raise ConfigError(
            f"artifact_path {text!r} must be relative to the project root and stay inside it "
            f"(no leading '/', no '..'); copy the model into the project and register that path, "
            f"e.g. runs/models/NAME/DIGEST"
        )
    return PurePosixPath(*parts).as_posix()


def replay(events: Iterable[dict]) -> list[int]:
    """The alias's version stack after ``events`` (oldest first); the top is live."""
    stack: list[int] = []
    for event in events:
        if event["action"] == "rollback":
            if stack:
                stack.pop()
            if not stack or stack[-1] != event["to_version"]:  # tolerate hand-written history
                stack.append(event["to_version"])
        elif not stack or stack[-1] != event["to_version"]:
            stack.append(event["to_version"])
    return stack


def _digest_strings(value: Any, path: str) -> Iterable[tuple[str, str]]:
    """Every string inside a lineage dict, with its key path, to match against datasets."""
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _digest_strings(item, f"{path}.{key}")
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            yield from _digest_strings(item, f"{path}[{i}]")


class ModelCatalog:
    """Model and alias methods of ``Registry``; relies on its ``_db``, ``_require_run``,
    ``_run_dict``, ``_record_event`` and ``_notify``."""

    # -- lookups --------------------------------------------------------------------------

    def _require_model(self, name: str) -> None:
        if self._db.one("SELECT 1 FROM model_versions WHERE name = ? LIMIT 1", [name]):
            return
        names = [r["name"] for r in self._db.rows("SELECT DISTINCT name FROM model_versions ORDER BY name")]
        if names:
            raise NotFound(f"no model named {name!r}; registered models: {', '.join(names)} (see `lab models`)")
        raise NotFound(f"no model named {name!r}: no model is registered yet (run the pipeline with `lab run`)")

    def _require_version(self, name: str, version: int) -> ModelVersion:
        self._require_model(name)
        row = self._db.one("SELECT * FROM model_versions WHERE name = ? AND version = ?", [name, version])
        if row is None:
            versions = [str(r["version"]) for r in self._db.rows(
                "SELECT version FROM model_versions WHERE name = ? ORDER BY version", [name])]
            raise NotFound(
                f"model {name!r} has no version {version}; its versions are {', '.join(versions)} "
                f"(see `lab models {name}`)"
            )
        return _version_from_row(row)

    def _alias_events(self, name: str, alias: str | None = None, before: str | None = None) -> list[dict]:
        sql, params = "SELECT * FROM alias_events WHERE model = ?", [name]
        if alias is not None:
            sql, params = sql + " AND alias = ?", [*params, alias]
        if before is not None:
            sql, params = sql + " AND at <= ?", [*params, before]
        return self._db.rows(sql + " ORDER BY id", params)

    def _alias_stacks(self, name: str) -> dict[str, list[int]]:
        by_alias: dict[str, list[dict]] = {}
        for event in self._alias_events(name):
            by_alias.setdefault(event["alias"], []).append(event)
        return {alias: replay(events) for alias, events in sorted(by_alias.items())}

    def _require_alias(self, name: str, alias: str) -> list[dict]:
        events = self._alias_events(name, alias)
        if not events:
            known = ", ".join(self._alias_stacks(name)) or "none yet"
            raise NotFound(
                f"model {name!r} has no alias {alias!r}; its aliases: {known} "
                f"(set one with `lab promote {name} VERSION --alias {alias}`)"
            )
        return events

    # -- versions -------------------------------------------------------------------------

    def register_model(
        self, name: str, *, run_id: str | None, flavor: str, artifact_path: str, metrics: dict, lineage: dict
    ) -> ModelVersion:
        """Register a new version of model ``name`` (1 + the highest so far, assigned
        inside the write transaction, so concurrent registrations never collide)."""
        if not isinstance(name, str) or not MODEL_NAME.match(name):
            raise ConfigError(f"model name {name!r} must be letters, digits, '_', '.' or '-' (e.g. churn)")
        if not isinstance(flavor, str) or not flavor:
            raise ConfigError(f"model flavor must be a non-empty string, got {flavor!r}")
        artifact_path = check_artifact_path(artifact_path)
        for value, what in ((metrics, "metrics"), (lineage, "lineage")):
            if not isinstance(value, dict):
                raise ConfigError(f"model {what} must be a dict, got {type(value).__name__}")
        metrics_json, lineage_json = dumps(metrics, "model metrics"), dumps(lineage, "model lineage")
        actor = current_actor()
        with self._db.write() as db:
            if run_id is not None:
                self._require_run(run_id)
            top = self._db.one("SELECT MAX(version) AS v FROM model_versions WHERE name = ?", [name])
            row = {
                "name": name, "version": (top["v"] or 0) + 1, "run_id": run_id, "flavor": flavor,
                "artifact_path": artifact_path, "metrics": metrics_json, "lineage": lineage_json,
                "actor": actor, "created_at": utc_now(),
            }
            insert(db, "model_versions", row)
            self._record_event(db, "model.registered", name, {"version": row["version"], "run_id": run_id}, actor)
        self._notify(MODEL_REGISTERED, {"model": name, "version": row["version"], "run_id": run_id})
        return _version_from_row(row)

    def get_model_version(self, name: str, version: int) -> ModelVersion:
        """One version; NotFound names the versions (or models) that exist."""
        _check_version(version)
        with self._db.read():
            return self._require_version(name, version)

    def list_model_versions(self, name: str) -> list[ModelVersion]:
        """All versions of a model, oldest first; an empty list for a name with no
        versions yet (so "is this model already registered?" needs no try/except)."""
        with self._db.read():
            rows = self._db.rows("SELECT * FROM model_versions WHERE name = ? ORDER BY version", [name])
        return [_version_from_row(r) for r in rows]

    def list_models(self) -> list[dict]:
        """One row per model: name, number of versions, latest version, current aliases."""
        with self._db.read():
            rows = self._db.rows(
                "SELECT name, COUNT(*) AS versions, MAX(version) AS latest, MAX(created_at) AS updated_at "
                "FROM model_versions GROUP BY name ORDER BY name"
            )
            return [{**r, "aliases": self.aliases(r["name"])} for r in rows]

    # -- aliases --------------------------------------------------------------------------

    def aliases(self, name: str) -> dict[str, int]:
        """Every alias of a model that points somewhere, with its live version."""
        with self._db.read():
            self._require_model(name)
            return {alias: stack[-1] for alias, stack in self._alias_stacks(name).items() if stack}

    def get_alias(self, name: str, alias: str) -> ModelVersion | None:
        """The version an alias points to now; None when it was never set (or no version
        of the model exists yet, so a first pipeline run finds "no champion")."""
        check_alias(alias)
        with self._db.read():
            stack = replay(self._alias_events(name, alias))
            return self._require_version(name, stack[-1]) if stack else None

    def _move_alias(self, name: str, alias: str, version: int, action: str, actor: str | None,
                    reason: str, check: Callable[[Any, str], dict | None] | None = None) -> dict | None:
        check_alias(alias)
        _check_version(version)
        actor = actor or current_actor()
        with self._db.write() as db:
            self._require_version(name, version)  # raises before anything is written
            stack = replay(self._alias_events(name, alias))
            if stack and stack[-1] == version:
                return None  # already there: a move that moves nothing is not history
            # The promotion gate, in the same transaction: what it read is what the row records.
            evidence = check(db, actor) if check is not None else None
            event = {
                "model": name, "alias": alias, "action": action,
                "from_version": stack[-1] if stack else None, "to_version": version,
                "actor": actor, "reason": reason or "", "at": utc_now(),
                "evidence": dumps(evidence, "promotion evidence") if evidence is not None else None,
            }
            event["id"] = insert(db, "alias_events", event)
            self._record_event(db, f"alias.{action}", name, {
                **{k: event[k] for k in ("alias", "from_version", "to_version", "reason")},
                **({"evidence": evidence} if evidence is not None else {})}, actor)
            if evidence is not None:
                self._stop_promoted_shadow(db, name, version, actor)
        event["evidence"] = evidence
        return event

    def set_alias(self, name: str, alias: str, version: int, *, actor: str | None = None,
                  reason: str = "") -> dict | None:
        """Point ``alias`` at ``version`` (action "set"); returns the event row, or None
        when the alias already points there (then nothing is written)."""
        return self._move_alias(name, alias, version, "set", actor, reason)

    def promote(self, name: str, version: int, *, alias: str = "champion", actor: str | None = None,
                reason: str = "", gate: Any = None, force: bool = False,
                notes: dict[str, str] | None = None) -> dict | None:
        """Make ``version`` the ``alias`` (champion by default; action "promote"); returns
        the event row, whose ``from_version`` is the version it replaced, or None when
        ``version`` already is the ``alias`` (then nothing is written or announced).

        A promotion to champion is checked first (``promotion_criteria``): the version's
        shadow, if it had one, must have met its exit criteria, and ``gate`` (a
        ``GateConfig``: offline CI, online evidence, approval) must hold. Otherwise
        ``PromotionRefused`` names what is unmet, unless ``force`` (with a ``reason``).
        What was checked, and whether it was overridden, is stored in the event
        (``evidence``); ``notes`` may give a fresher account of a criterion for the message."""
        check = None
        if alias == "champion":
            def check(db, who):
                return self._promotion_evidence(db, name, version, gate, who, force, reason, notes)
        event = self._move_alias(name, alias, version, "promote", actor, reason, check)
        if event is None:
            return None
        self._notify(MODEL_PROMOTED, {"model": name, "version": version, "alias": alias, "previous": event["from_version"]})
        return event

    def rollback(self, name: str, *, alias: str = "champion", actor: str | None = None, reason: str = "") -> dict:
        """Move ``alias`` back to the version it held before the current one (action
        "rollback"); returns the event row it wrote (``from_version`` -> ``to_version``,
        the restored version). Repeated rollbacks keep walking back."""
        check_alias(alias)
        actor = actor or current_actor()
        with self._db.write() as db:
            self._require_model(name)
            stack = replay(self._require_alias(name, alias))
            if len(stack) < 2:
                raise LabError(
                    f"nothing to roll back to: {alias!r} of model {name!r} has held only version "
                    f"{stack[-1]} in its current history; promote another version instead with "
                    f"`lab promote {name} VERSION --alias {alias}`"
                )
            current, target = stack[-1], stack[-2]
            self._require_version(name, target)
            event = {
                "model": name, "alias": alias, "action": "rollback", "from_version": current,
                "to_version": target, "actor": actor, "reason": reason or "", "at": utc_now(), "evidence": None,
            }
            event["id"] = insert(db, "alias_events", event)
            self._record_event(db, "alias.rollback", name, {
                "alias": alias, "from_version": current, "to_version": target, "reason": reason or ""}, actor)
        self._notify(MODEL_ROLLED_BACK, {"model": name, "version": target, "alias": alias, "previous": current})
        return event

    def alias_history(self, name: str, alias: str | None = None) -> list[dict]:
        """Alias events of a model (optionally one alias), oldest first: id, model, alias,
        action, from_version, to_version, actor, reason, at, evidence (what a promotion
        to champion was checked against; None for other moves)."""
        if alias is not None:
            check_alias(alias)
        with self._db.read():
            self._require_model(name)
            rows = self._require_alias(name, alias) if alias is not None else self._alias_events(name)
        return [{**r, "evidence": loads(r.get("evidence"), None)} for r in rows]

    def alias_at(self, name: str, alias: str, when: str | dt.datetime | dt.date) -> ModelVersion | None:
        """The version ``alias`` pointed to at ``when`` (None if unset then). A naive time
        is UTC; a bare date means the end of that day."""
        check_alias(alias)
        moment = to_utc_iso(when)
        with self._db.read():
            self._require_model(name)
            stack = replay(self._alias_events(name, alias, before=moment))
            return self._require_version(name, stack[-1]) if stack else None

    # -- lineage --------------------------------------------------------------------------

    def lineage(self, name: str, version: int) -> dict:
        """One walk from a model version to what made it: ``{"model", "aliases", "run",
        "data"}``. ``run`` holds params, seeds, git commit and lock hash (None if the
        version has no run); ``data`` lists each input digest (from the run's
        ``log_data`` and any lineage value that is a recorded digest) with the
        ``datasets`` rows recorded under it."""
        _check_version(version)
        with self._db.read():
            model = self._require_version(name, version)
            run = self._run_dict(self._require_run(model.run_id)) if model.run_id else None
            inputs: list[tuple[str, str]] = [(f"run.{k}", v) for k, v in (run or {}).get("data", {}).items()]
            seen = {digest for _, digest in inputs}
            for where, text in _digest_strings(model.lineage, "lineage"):
                if text not in seen and self._db.one("SELECT 1 FROM datasets WHERE digest = ?", [text]):
                    inputs.append((where, text))
                    seen.add(text)
            data = []
            for where, digest in inputs:
                rows = self._db.rows("SELECT * FROM datasets WHERE digest = ? ORDER BY id", [digest])
                data.append({"name": where, "digest": digest,
                             "datasets": [{**r, "meta": loads(r["meta"], {})} for r in rows]})
            live = [a for a, stack in self._alias_stacks(name).items() if stack and stack[-1] == version]
        return {"model": model.to_dict(), "aliases": live, "run": run, "data": data}
