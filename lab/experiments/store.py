"""Flags and experiments in the registry file, with an audit row for every change.

Three tables, declared by this package's own migrations (``_migrations.py``, owner
``experiments``, applied through ``lab.sqlite`` when the store opens): ``experiments``
(the current state, one row per name, with its variant-bucket ranges),
``experiment_audit`` (who did what, when, old and new value, why; append-only by
trigger) and ``experiment_allocations`` (a bandit's allocation history; append-only too).

Every change is one ``BEGIN IMMEDIATE`` transaction that updates the state and writes
its audit row together, so a failed call (bad weights, unknown name, overlapping layer
share, illegal transition) leaves the file as it was. Events for plugins are emitted by
the CLI layer (``lab/experiments/commands.py``), not here.

Life cycle: ``draft -> running -> stopped`` (a draft may be stopped too). Stopped is
final: its audit and data keep their meaning, and a new run needs a new name.
"""

from __future__ import annotations

import os
from typing import Any, Mapping

from lab import postgres
from lab.errors import ConfigError, LabError, NotFound
from lab.events import current_actor
from lab.experiments._migrations import MIGRATIONS, OWNER
from lab.experiments.assignment import format_ranges
from lab.experiments.base import BaseExperimentStore
from lab.experiments.model import Experiment, Variant, check_plan, check_weights_sum, free_ranges
from lab.sqlite import Database, dumps, insert, loads, utc_now


def _row(e: Experiment, now: str) -> dict:
    return {
        "name": e.name, "kind": e.kind, "status": e.status, "layer": e.layer,
        "share_start": e.layer_share[0], "share_end": e.layer_share[1], "salt": e.salt, "unit": e.unit,
        "variants": dumps([v.to_dict() for v in e.variants], f"variants of {e.name!r}"),
        "buckets": dumps(e.to_dict()["buckets"], f"buckets of {e.name!r}"),
        "metric": e.metric, "metric_kind": e.metric_kind, "alpha": e.alpha, "power": e.power,
        "mde": e.mde, "baseline": e.baseline, "created_at": now, "updated_at": now,
    }


def _experiment(row: dict) -> Experiment:
    return Experiment(
        name=row["name"], variants=tuple(Variant(**v) for v in loads(row["variants"])), layer=row["layer"],
        salt=row["salt"], kind=row["kind"], status=row["status"], unit=row["unit"],
        layer_share=(row["share_start"], row["share_end"]), metric=row["metric"],
        metric_kind=row["metric_kind"], alpha=row["alpha"], power=row["power"], mde=row["mde"],
        baseline=row["baseline"], buckets=loads(row["buckets"]),
    )


def _reweigh(name: str, weights: Mapping[str, float]):
    """The ``_change`` step of a weight change: refused once stopped, else ``with_weights``;
    None when the weights are already these (nothing to write)."""
    def build(e: Experiment):
        if e.status == "stopped":
            raise LabError(f"{e.kind} {name!r} is stopped; its weights are final. "
                           "Create a new one to serve another split")
        changed = e.with_weights(weights)
        if changed.weights == e.weights and changed.buckets == e.buckets:
            return None
        return changed, e.weights, changed.weights

    return build


def _check_source(source: Any) -> None:
    if not isinstance(source, str) or not source.strip():
        raise ConfigError(f"source of an allocation must be a non-empty string (e.g. 'thompson'), got {source!r}")


class ExperimentStore(BaseExperimentStore):
    """Flags and experiments over the registry's SQLite file (``registry.db``): the
    built-in ``BaseExperimentStore``.

    Open with ``ExperimentStore.open(path)``; use as a context manager or call
    ``close()``. Safe to share between threads; any number of processes may open the
    same file. ``actor`` defaults to ``lab.events.current_actor()`` everywhere.
    """

    def __init__(self, database: Database):
        self._db = database
        self.path = database.path

    @classmethod
    def open(cls, path: str | os.PathLike) -> "ExperimentStore":
        """Open (creating it if needed) the registry file at ``path`` and apply pending
        migrations; a ``postgresql://`` URL opens the store in that database (``lab.postgres``)."""
        return cls(postgres.open_migrated(path, OWNER, MIGRATIONS, what="experiment store"))

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> "ExperimentStore":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    # -- reading ------------------------------------------------------------------------

    def _require(self, name: Any) -> dict:
        row = self._db.one("SELECT * FROM experiments WHERE name = ?", [name]) if isinstance(name, str) else None
        if row is None:
            raise NotFound(f"no experiment or flag {name!r} in {self.path}; "
                           "list them with `lab experiment status`")
        return row

    def get(self, name: str) -> Experiment:
        """The experiment or flag called ``name``; NotFound if there is none."""
        with self._db.read():
            return _experiment(self._require(name))

    def list(self, *, layer: str | None = None) -> list[Experiment]:
        """All experiments and flags (only ``layer``'s if given), by name."""
        with self._db.read():
            if layer is None:
                rows = self._db.rows("SELECT * FROM experiments ORDER BY name")
            else:
                rows = self._db.rows("SELECT * FROM experiments WHERE layer = ? ORDER BY name", [layer])
        return [_experiment(r) for r in rows]

    def audit(self, name: str | None = None) -> list[dict]:
        """Audit rows, oldest first (one experiment's if ``name`` is given): ``id``,
        ``experiment``, ``action``, ``actor``, ``at``, ``old``, ``new`` (parsed JSON), ``reason``."""
        with self._db.read():
            if name is None:
                rows = self._db.rows("SELECT * FROM experiment_audit ORDER BY id")
            else:
                self._require(name)
                rows = self._db.rows("SELECT * FROM experiment_audit WHERE experiment = ? ORDER BY id", [name])
        return [{**r, "old": loads(r["old"]), "new": loads(r["new"])} for r in rows]

    def allocations(self, name: str) -> list[dict]:
        """Recorded allocations of ``name``, oldest first: ``id``, ``weights``, ``source``, ``actor``, ``at``."""
        with self._db.read():
            self._require(name)
            rows = self._db.rows(
                "SELECT id, weights, source, actor, at FROM experiment_allocations WHERE experiment = ? ORDER BY id",
                [name])
        return [{**r, "weights": loads(r["weights"])} for r in rows]

    def version(self) -> int:
        """A number that grows with every change to any experiment (the last audit id; 0
        when there is none). Cheap: a server polls it to know when to rebuild its Assigner."""
        with self._db.read():
            row = self._db.one("SELECT max(id) AS v FROM experiment_audit")
        return int(row["v"] or 0)

    # -- changing -----------------------------------------------------------------------

    def _audit(self, db, name: str, action: str, old: Any, new: Any, reason: str, actor: str | None) -> None:
        if not isinstance(reason, str):
            raise ConfigError(f"reason must be a string, got {type(reason).__name__}")
        insert(db, "experiment_audit", {
            "experiment": name, "action": action, "old": None if old is None else dumps(old, "old value"),
            "new": None if new is None else dumps(new, "new value"), "reason": reason,
            "actor": actor or current_actor(), "at": utc_now(),
        })

    def create(self, experiment: Experiment, *, actor: str | None = None, reason: str = "") -> Experiment:
        """Store a new draft experiment or flag; returns it as stored.

        Raises LabError if the name is taken, ConfigError if it is not a draft, if its plan
        cannot be (``check_plan``: a proportion's baseline outside (0, 1), power not above
        alpha, ...) or if its layer share overlaps a live (draft or running) experiment of
        the same layer; that message lists the layer's free ranges.
        """
        if not isinstance(experiment, Experiment):
            raise ConfigError(f"create() takes an Experiment, got {type(experiment).__name__}")
        if experiment.status != "draft":
            raise ConfigError(f"create {experiment.name!r} as a draft (status='draft'), then start it; "
                              f"got status {experiment.status!r}")
        e = experiment
        check_plan(e.metric_kind, e.alpha, e.power, e.mde, e.baseline,
                   names={k: f"{k} of experiment {e.name!r}" for k in ("alpha", "power", "mde", "baseline")})
        with self._db.write() as db:
            if self._db.one("SELECT 1 AS x FROM experiments WHERE name = ?", [experiment.name]):
                raise LabError(f"experiment {experiment.name!r} already exists in {self.path}; pick another "
                               f"name, or see it with `lab experiment status {experiment.name}`")
            self._check_share(experiment)
            insert(db, "experiments", _row(experiment, utc_now()))
            self._audit(db, experiment.name, "create", None, experiment.to_dict(), reason, actor)
        return experiment

    def _check_share(self, e: Experiment) -> None:
        live = self._db.rows(
            "SELECT name, share_start, share_end FROM experiments WHERE layer = ? AND status != 'stopped'",
            [e.layer])
        start, end = e.layer_share
        for other in live:
            if other["share_start"] < end and start < other["share_end"]:
                free = free_ranges([(r["share_start"], r["share_end"]) for r in live])
                if free:
                    fix = (f"Free ranges of layer {e.layer!r}: {format_ranges(free)}; pick one of them "
                           "(--layer-share START-END) or another layer (--layer NAME)")
                else:
                    fix = (f"layer {e.layer!r} has no free range left: stop one of its experiments "
                           "(`lab experiment stop NAME`) or use another layer (--layer NAME)")
                raise ConfigError(
                    f"layer share {start}-{end} of {e.name!r} overlaps {other['name']!r} "
                    f"({other['share_start']}-{other['share_end']}) in layer {e.layer!r}; a unit can be in only "
                    f"one experiment per layer. {fix}"
                )

    def _change(self, name: str, action: str, build, reason: str, actor: str | None, also=None) -> Experiment:
        """Apply ``build(current) -> (new experiment, old value, new value)`` in one
        transaction, with its audit row and, if given, ``also(db, changed)``'s writes.
        ``build`` returning None means no change: nothing is written, ``current`` returned."""
        with self._db.write() as db:
            current = _experiment(self._require(name))
            built = build(current)
            if built is None:
                return current
            changed, old, new = built
            now = utc_now()
            values = {"status": changed.status, "updated_at": now,
                      "variants": dumps([v.to_dict() for v in changed.variants], "variants"),
                      "buckets": dumps(changed.to_dict()["buckets"], "buckets")}
            if changed.status != current.status:
                values[f"{'started' if changed.status == 'running' else 'stopped'}_at"] = now
            db.execute(f"UPDATE experiments SET {', '.join(f'{k} = ?' for k in values)} WHERE name = ?",
                       [*values.values(), name])
            self._audit(db, name, action, old, new, reason, actor)
            if also is not None:
                also(db, changed)
        return changed

    def start(self, name: str, *, actor: str | None = None, reason: str = "") -> Experiment:
        """Start a draft: from now on units are assigned by weight. Stopped is final."""
        def build(e: Experiment):
            if e.status != "draft":
                raise LabError(f"{e.kind} {name!r} is {e.status}; only a draft can be started"
                               + ("; create a new one (a new name gives new assignments)" if e.status == "stopped"
                                  else ""))
            return e.with_status("running"), {"status": "draft"}, {"status": "running", "weights": e.weights}

        return self._change(name, "start", build, reason, actor)

    def stop(self, name: str, *, actor: str | None = None, reason: str = "", to_control: bool = True) -> Experiment:
        """Stop it: every unit in its share sees control from now on. ``to_control``
        (default) also sets all weight to control, so the stored weights say what is
        served; ``to_control=False`` keeps the last weights on record for the report."""
        def build(e: Experiment):
            if e.status == "stopped":
                raise LabError(f"{e.kind} {name!r} is already stopped")
            stopped = e.with_status("stopped")
            if to_control:
                stopped = stopped.with_weights({v.name: 1.0 if i == 0 else 0.0 for i, v in enumerate(e.variants)})
            return (stopped, {"status": e.status, "weights": e.weights},
                    {"status": "stopped", "weights": stopped.weights})

        return self._change(name, "stop", build, reason, actor)

    def set_weights(self, name: str, weights: Mapping[str, float], *, actor: str | None = None,
                    reason: str = "") -> Experiment:
        """New weights for a draft or running experiment; ``weights`` names every variant
        and sums to 1. Buckets move minimally (``Experiment.with_weights``): a unit moves
        only out of a variant whose weight shrank and into one whose weight grew. Weights
        equal to the current ones change nothing and write nothing (no audit row); the
        experiment is returned as it is."""
        return self._change(name, "set_weights", _reweigh(name, weights), reason, actor)

    def apply_allocation(self, name: str, weights: Mapping[str, float], *, source: str,
                         actor: str | None = None, reason: str = "") -> Experiment:
        """Serve ``weights`` and append them to the allocation history, in one transaction.

        This is how a bandit moves traffic: the weight change (audited as ``set_weights``,
        reason ``reason`` or ``"<source> allocation"``) and the allocation row are written
        together or not at all, so the history never disagrees with what was served.
        Refused like ``set_weights`` (a stopped experiment, bad weights); returns the
        experiment as now served. Weights equal to the ones served write nothing, neither
        an audit row nor an allocation row: the history records changes.
        """
        _check_source(source)
        actor = actor or current_actor()

        def record(db, changed: Experiment) -> None:
            insert(db, "experiment_allocations", {
                "experiment": name, "weights": dumps(changed.weights, "allocation"), "source": source,
                "actor": actor, "at": utc_now(),
            })

        return self._change(name, "set_weights", _reweigh(name, weights), reason or f"{source} allocation",
                            actor, also=record)

    def record_allocation(self, name: str, weights: Mapping[str, float], *, source: str,
                          actor: str | None = None) -> None:
        """Append an allocation (e.g. a bandit's Thompson-sampling weights) to the
        history of ``name``; it does not change the weights served (``apply_allocation``
        does both at once)."""
        _check_source(source)
        with self._db.write() as db:
            current = _experiment(self._require(name))
            clean = current.with_weights(weights).weights  # names every variant, each weight valid
            check_weights_sum(clean, f"allocation of {name!r}")
            last = self._db.one(
                "SELECT weights FROM experiment_allocations WHERE experiment = ? ORDER BY id DESC LIMIT 1", [name])
            actor = actor or current_actor()
            insert(db, "experiment_allocations", {
                "experiment": name, "weights": dumps(clean, "allocation"), "source": source,
                "actor": actor, "at": utc_now(),
            })
            self._audit(db, name, "record_allocation", {"weights": loads(last["weights"])} if last else None,
                        {"weights": clean, "source": source}, "", actor)
