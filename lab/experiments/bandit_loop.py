"""The Thompson bandit's loop: outcomes in, posteriors updated, the new allocation served.

``ThompsonBandit`` (``lab/experiments/bandit.py``) allocates from counts it is given;
this module gives it the counts. One update of experiment ``NAME``:

1. reads the predictions the experiment routed from the prediction ledger (each row
   names its ``experiment`` and ``variant``), from the loop's watermark on;
2. keys each one by its **event** (the request's id field, ``event_id``: outcomes are
   labels of events, joined as ``lab.experiments.quality`` joins them) or by its **unit**
   (the request field the experiment assigns by: outcomes per unit, as
   ``lab.experiments.outcomes`` reads them); a key's latest prediction decides its arm;
3. joins an outcome table (Parquet/CSV path, polars frame or pyarrow table) holding
   ``id_column`` and a 0/1 ``label_column`` (1: a success for the arm that served it;
   null or absent: not known yet);
4. counts each key's outcome **once**: the key goes into ``bandit_counted`` (primary key
   experiment + key) in the same transaction that adds it to the posterior, so running
   the loop again on the same data, or two loops at once, never counts it twice;
5. allocates (``ThompsonBandit.allocate``, every arm at least ``floor``) and serves the
   weights with ``ExperimentStore.apply_allocation`` (weights and allocation history in
   one transaction), only when new outcomes were counted: an update without new data
   changes nothing, not even by Monte-Carlo noise.

**Holdout.** A variant whose payload holds ``"holdout": true`` (``lab experiment create
... --payload holdout:holdout=true``) is traffic no model influences: the caller gives
those units a fixed or random decision (the response names the variant), so their
outcomes are the unbiased sample a feedback loop otherwise destroys. Assignment stays the
sticky hash. The bandit never moves a holdout's weight: its arms are the other variants
and share what the holdout leaves, ``1 - H``. ``floor`` is a share of **all** the
experiment's traffic, so each arm keeps at least ``floor`` whatever ``H`` is (the
bandit's own floor is ``floor / (1 - H)``).

**Incremental.** ``bandit_loops.settled_id`` is the ledger row id up to which every
prediction is settled: counted, keyed by nothing, in a holdout, or expired (no outcome
within ``max_wait``, default 30 days). A later update reads only the rows after it (a
range of the ledger's primary key), and a prediction still waiting for its outcome keeps
the watermark below it, so a label that arrives late is still counted once it arrives. ``bandit_updates`` keeps every
update that served an allocation (append-only): what was counted, the posteriors and the
weights served.

The tables live in the registry file beside the experiments, as this module's own named
migrations (owner ``bandit_loop``, ``lab.sqlite``). The diversity of what the loop
serves is ``lab.monitoring.feedback``; ``lab experiment bandit-update`` and the
``lab.steps.bandit.bandit_update`` step run one update and report it together.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
import os
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from lab.errors import ConfigError, LabError
from lab.events import current_actor
from lab.experiments.bandit import SOURCE, ThompsonBandit
from lab.experiments.model import Experiment
from lab.experiments.outcomes import as_naive_utc
from lab.experiments.store import ExperimentStore
from lab.serving.ledger import read_predictions
from lab.sqlite import Database, Migration, append_only, connect, dumps, loads, run_script, utc_now

OWNER = "bandit_loop"

HOLDOUT_KEY = "holdout"
"""The variant payload key that declares a holdout: ``{"holdout": true}``."""

KEYS = ("event", "unit")
"""What an outcome is joined on: the prediction's event id, or the experiment's unit."""

DEFAULT_FLOOR = 0.05
"""The least share of the experiment's traffic each arm keeps, unless told otherwise."""

DEFAULT_MAX_WAIT = dt.timedelta(days=30)
"""A prediction with no outcome after this long is settled as expired (never counted)."""

BANDIT_UPDATED = "experiment.bandit_updated"
"""The event ``lab experiment bandit-update`` and the ``bandit_update`` step emit after an
update (``lab.events``): experiment, counted, allocated, weights and the feedback figures."""


def _tables(conn: sqlite3.Connection) -> None:
    """The loop's state per experiment, the outcomes it counted, and its update history."""
    run_script(conn, """
        CREATE TABLE "bandit_loops" (
            "experiment" TEXT PRIMARY KEY,
            "by" TEXT NOT NULL,                      -- 'event' or 'unit': what outcomes are joined on
            "floor" REAL NOT NULL,                   -- least share of all the experiment's traffic per arm
            "state" TEXT NOT NULL,                   -- ThompsonBandit.state() (JSON): counts, prior, rng
            "settled_id" INTEGER NOT NULL DEFAULT 0, -- every ledger row up to this id is settled
            "settled_at" TEXT,                       -- that row's time (ISO 8601 UTC)
            "allocation_due" INTEGER NOT NULL DEFAULT 1,  -- counts changed since the last allocation served
            "version" INTEGER NOT NULL DEFAULT 0,    -- grows with every change of the counts
            "created_at" TEXT NOT NULL, "updated_at" TEXT NOT NULL
        );
        CREATE TABLE "bandit_counted" (
            "experiment" TEXT NOT NULL, "key" TEXT NOT NULL,   -- the event or unit id as JSON (17 and "17" differ)
            "arm" TEXT NOT NULL, "reward" INTEGER NOT NULL, "ledger_id" INTEGER NOT NULL, "at" TEXT NOT NULL,
            PRIMARY KEY ("experiment", "key")
        ) WITHOUT ROWID;
        CREATE TABLE "bandit_updates" (
            "id" INTEGER PRIMARY KEY, "experiment" TEXT NOT NULL, "at" TEXT NOT NULL, "actor" TEXT NOT NULL,
            "counted" TEXT NOT NULL,     -- {arm: [successes, failures]} added since the previous row
            "posterior" TEXT NOT NULL,   -- {arm: [alpha, beta]} after them
            "weights" TEXT NOT NULL,     -- the weights served from then on, holdout included
            "settled_id" INTEGER NOT NULL
        );
        CREATE INDEX "idx_bandit_updates_experiment_id" ON "bandit_updates" ("experiment", "id");
    """ + append_only("bandit_counted") + append_only("bandit_updates"))


MIGRATIONS: tuple[Migration, ...] = (Migration("0001_bandit_loop", _tables),)


def holdout_variants(experiment: Experiment, names: Iterable[str] | None = None) -> list[str]:
    """The experiment's holdout variants: those whose payload holds ``"holdout": true``, or
    ``names`` when given (each must be a variant: ConfigError naming them otherwise)."""
    variants = [v.name for v in experiment.variants]
    if names is None:
        return [v.name for v in experiment.variants if (v.payload or {}).get(HOLDOUT_KEY) is True]
    names = [names] if isinstance(names, str) else list(names)
    unknown = [n for n in names if n not in variants]
    if unknown:
        raise ConfigError(f"holdout {', '.join(map(repr, unknown))} is not a variant of {experiment.name!r}; "
                          f"its variants: {', '.join(variants)}")
    return names


def _duration(value: Any, what: str) -> dt.timedelta:
    if isinstance(value, dt.timedelta):
        out = value
    elif isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        out = dt.timedelta(seconds=value)
    else:
        raise ConfigError(f"{what} must be a timedelta or a number of seconds, got {value!r}")
    if out < dt.timedelta(0):
        raise ConfigError(f"{what} must not be negative, got {value!r}")
    return out


def moment(value: Any, what: str = "time") -> dt.datetime:
    """``value`` (a datetime or ISO 8601 text) as a naive UTC datetime; naive input is UTC
    (``lab.experiments.outcomes.as_naive_utc``, with ``what`` named in its errors)."""
    if value is None:
        raise LabError(f"{what} must be a datetime or ISO 8601 text, got None")
    try:
        return as_naive_utc(value)
    except LabError as exc:
        raise LabError(f"{what}: {exc}") from None


# -- the result -------------------------------------------------------------------------------

@dataclass(frozen=True)
class BanditUpdate:
    """One update of an experiment's bandit.

    ``counted``: ``{arm: {"successes", "failures"}}`` added by this update (zeros when
    nothing new); ``posterior``: ``{arm: [alpha, beta]}`` after it; ``weights``: the
    weights served now, holdout included; ``allocated``: whether this update served a
    new allocation; ``rows_read``: ledger rows read past the watermark; ``pending``: keys
    waiting for their outcome; ``expired``: keys read whose prediction is older than
    ``max_wait`` with no outcome (they never hold the watermark, but one after a pending
    key is read, and reported, again until that key settles); ``settled_id``: the
    watermark after it; ``update_id``: its row in ``bandit_updates`` (None when it served
    nothing).
    """

    experiment: str
    by: str
    floor: float
    arms: tuple[str, ...]
    holdout: tuple[str, ...]
    counted: dict[str, dict[str, int]]
    posterior: dict[str, list[float]]
    weights: dict[str, float]
    allocated: bool
    rows_read: int
    pending: int
    expired: int
    settled_id: int
    update_id: int | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def n_counted(self) -> int:
        return sum(c["successes"] + c["failures"] for c in self.counted.values())

    def to_dict(self) -> dict:
        """Plain JSON values."""
        return {"experiment": self.experiment, "by": self.by, "floor": self.floor, "arms": list(self.arms),
                "holdout": list(self.holdout), "counted": self.counted, "n_counted": self.n_counted,
                "posterior": self.posterior, "weights": self.weights, "allocated": self.allocated,
                "rows_read": self.rows_read, "pending": self.pending, "expired": self.expired,
                "settled_id": self.settled_id, "update_id": self.update_id, "notes": list(self.notes)}

    def text(self) -> str:
        """A few lines for a terminal."""
        shown = ", ".join(f"{a} +{c['successes']}/{c['successes'] + c['failures']}" for a, c in self.counted.items())
        weights = ", ".join(f"{k}={v:.3f}" for k, v in self.weights.items())
        lines = [f"bandit {self.experiment}: counted {self.n_counted} new outcome(s) ({shown}); "
                 f"{self.pending} pending, {self.expired} expired; ledger settled through row {self.settled_id}",
                 f"  weights {'now served' if self.allocated else 'unchanged'}: {weights} (floor {self.floor:g} "
                 f"per arm" + (f", holdout {', '.join(self.holdout)} fixed" if self.holdout else "") + ")"]
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


# -- the loop's tables ------------------------------------------------------------------------

def _open(registry_path: Path) -> Database:
    return Database.open_migrated(registry_path, OWNER, MIGRATIONS, what="bandit loop")


def loop_state(registry_path: str | os.PathLike, experiment: str) -> dict | None:
    """The saved loop of ``experiment``, read only (nothing is created or migrated): ``by``,
    ``floor``, ``posterior`` ``{arm: [alpha, beta]}``, ``settled_id``, ``updates`` (rows in
    ``bandit_updates``); None when the file, the table or the experiment's loop is missing."""
    path = Path(registry_path)
    if not path.exists():
        return None
    conn = connect(path, readonly=True)
    try:
        if conn.execute("SELECT 1 AS x FROM sqlite_master WHERE type = 'table' AND name = 'bandit_loops'").fetchone() \
                is None:
            return None
        row = conn.execute("SELECT * FROM bandit_loops WHERE experiment = ?", [experiment]).fetchone()
        if row is None:
            return None
        updates = conn.execute("SELECT count(*) AS n FROM bandit_updates WHERE experiment = ?",
                               [experiment]).fetchone()["n"]
    finally:
        conn.close()
    state = loads(row["state"])
    prior = state["prior"]
    return {"experiment": experiment, "by": row["by"], "floor": row["floor"], "arms": list(state["arms"]),
            "posterior": {a: [prior[0] + s, prior[1] + f]
                          for a, s, f in zip(state["arms"], state["successes"], state["failures"])},
            "settled_id": row["settled_id"], "settled_at": row["settled_at"], "updates": int(updates)}


def loop_updates(registry_path: str | os.PathLike, experiment: str) -> list[dict]:
    """Every update of ``experiment``'s loop that served an allocation, oldest first:
    ``id``, ``at``, ``actor``, ``counted``, ``posterior``, ``weights``, ``settled_id``."""
    db = _open(Path(registry_path))
    try:
        rows = db.rows("SELECT * FROM bandit_updates WHERE experiment = ? ORDER BY id", [experiment])
    finally:
        db.close()
    return [{**r, **{k: loads(r[k]) for k in ("counted", "posterior", "weights")}} for r in rows]


# -- one update ---------------------------------------------------------------------------------

def _checked_floor(floor: Any, arms: list[str], held: float, name: str) -> float:
    if isinstance(floor, bool) or not isinstance(floor, (int, float)) or not 0 <= floor < 1:
        raise ConfigError(f"floor is the least share of the experiment's traffic per arm, in [0, 1), got {floor!r}")
    room = 1.0 - held
    if floor * len(arms) > room + 1e-12:
        raise ConfigError(f"floor {floor:g} for the {len(arms)} arms of {name!r} asks for "
                          f"{floor * len(arms):.0%} of its traffic, but its holdout keeps {held:.0%}; use a floor "
                          f"of at most {room / len(arms):.4g}")
    return float(floor)


def _key_of(row: dict, by: str, unit: str) -> Any:
    if by == "event":
        return row.get("event_id")
    value = (row.get("request") or {}).get(unit)
    return value if isinstance(value, (int, str)) and not isinstance(value, bool) and value != "" else None


def _read_outcomes(outcomes: Any, wanted: set, id_column: str, label_column: str, time_column: str | None,
                   as_of: dt.datetime, label_delay: dt.timedelta) -> dict:
    """``{key: 0/1}`` for the ``wanted`` keys whose outcome is known (by ``as_of`` when the
    table's ``time_column`` says when: its time plus ``label_delay``)."""
    # polars loads only when outcomes are read (the server imports this module for its holdouts)
    from lab.experiments.quality import _labels

    known, _ = _labels(outcomes, wanted, id_column, label_column, time_column,
                       as_of if time_column is not None else None, label_delay)
    return known


def update_bandit(
    experiment: str,
    outcomes: Any,
    *,
    registry_path: str | os.PathLike,
    ledger_path: str | os.PathLike,
    id_column: str,
    label_column: str,
    by: str = "event",
    time_column: str | None = None,
    label_delay: dt.timedelta | float = dt.timedelta(0),
    as_of: dt.datetime | str | None = None,
    floor: float | None = None,
    holdout: Iterable[str] | None = None,
    seed: int | None = None,
    max_wait: dt.timedelta | float = DEFAULT_MAX_WAIT,
    n_draws: int = 10_000,
    actor: str | None = None,
) -> BanditUpdate:
    """Run one update of ``experiment``'s Thompson bandit (see the module docstring).

    ``outcomes``: a Parquet/CSV path, polars frame or pyarrow table with ``id_column``
    (event ids as the requests sent them with ``by="event"``; unit ids with
    ``by="unit"``) and ``label_column`` (0/1; 1 is a success; null: not known yet). With
    ``time_column``, an outcome counts only once its time plus ``label_delay`` is at or
    before ``as_of`` (default now; naive times are UTC). ``floor`` (default: the loop's
    saved one, else ``DEFAULT_FLOOR``) is each arm's least share of all the experiment's
    traffic. ``holdout`` names holdout variants (default: the variants declared
    ``{"holdout": true}``). ``seed`` seeds a new loop's random generator (a saved loop
    continues its own). Returns a ``BanditUpdate``.

    Raises LabError naming the fix for an unknown experiment, a draft or stopped one, an
    outcome table without ``id_column`` or ``label_column`` or with values other than
    0/1, a missing ledger, fewer than two arms besides the holdout, or a saved loop whose
    arms or key differ from now.
    """
    if by not in KEYS:
        raise ConfigError(f"by must be one of {', '.join(KEYS)} (what outcomes are joined on), got {by!r}")
    for what, value in (("id_column", id_column), ("label_column", label_column)):
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{what} must name a column of the outcome table, got {value!r}")
    registry_path, ledger_path = Path(registry_path), Path(ledger_path)
    if not registry_path.exists():
        raise LabError(f"no registry at {registry_path}: create and start the experiment first "
                       "(`lab experiment create`, `lab experiment start`)")
    now = moment(as_of, "as_of") if as_of is not None else dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    label_delay = _duration(label_delay, "label_delay")
    max_wait = _duration(max_wait, "max_wait")
    actor = actor or current_actor()

    with ExperimentStore.open(registry_path) as store:
        current = store.get(experiment)  # NotFound names `lab experiment status`
    if current.status != "running":
        fix = (f"start it first: `lab experiment start {experiment}`" if current.status == "draft" else
               "a bandit does not reallocate a stopped experiment (a guardrail may have stopped it); "
               "see `lab experiment status`")
        raise LabError(f"{current.kind} {experiment!r} is {current.status}; {fix}")
    held_names = holdout_variants(current, holdout)
    arms = [v.name for v in current.variants if v.name not in held_names]
    if len(arms) < 2:
        raise ConfigError(f"{experiment!r} has {len(arms)} variant(s) besides its holdout "
                          f"({', '.join(held_names) or 'none'}); a bandit needs at least two arms")
    held = {name: current.weights[name] for name in held_names}
    held_share = math.fsum(held.values())

    db = _open(registry_path)
    try:
        saved = db.one("SELECT * FROM bandit_loops WHERE experiment = ?", [experiment])
        if saved is not None:
            state = loads(saved["state"])
            if list(state["arms"]) != arms:
                raise LabError(f"the bandit loop of {experiment!r} was started with arms {', '.join(state['arms'])}, "
                               f"but its arms now are {', '.join(arms)} (holdout: {', '.join(held_names) or 'none'}); "
                               "a loop keeps its arms: run the new set as a new experiment")
            if saved["by"] != by:
                raise LabError(f"the bandit loop of {experiment!r} joins outcomes by {saved['by']}, not {by}; "
                               f"pass by={saved['by']!r} (--by {saved['by']})")
        floor = _checked_floor(floor if floor is not None else saved["floor"] if saved else DEFAULT_FLOOR,
                               arms, held_share, experiment)
        settled_id = saved["settled_id"] if saved else 0
        settled_at = saved["settled_at"] if saved else None
        rows = read_predictions(ledger_path, experiment=experiment, after_id=settled_id)
        latest: dict[Any, dict] = {}  # key -> its latest prediction, the one whose arm it counts for
        for row in rows:
            if row.get("variant") not in arms:
                continue  # a holdout's or an unknown variant's: never counted
            key = _key_of(row, by, current.unit)
            if key is not None:
                latest[key] = row
        counted_before = _already_counted(db, experiment, list(latest))
        waiting = {k: r for k, r in latest.items() if dumps(k, "key") not in counted_before}
        # read even when nothing waits: a table without its columns is an error every time
        known = _read_outcomes(outcomes, set(waiting), id_column, label_column, time_column, now, label_delay)
        new = {k: (waiting[k], int(known[k])) for k in waiting if k in known}
        oldest = now - max_wait
        pending = {k: r for k, r in waiting.items() if k not in known and moment(r["at"]) >= oldest}
        expired = sum(1 for k in waiting if k not in known and k not in pending)
        if pending:
            first = min(pending.values(), key=lambda r: r["id"])
            watermark = first["id"] - 1
            mark_at = max((r["at"] for r in rows if r["id"] <= watermark), default=settled_at)
        elif rows:
            watermark, mark_at = rows[-1]["id"], rows[-1]["at"]
        else:
            watermark, mark_at = settled_id, settled_at

        # Count once: the key's row and the posterior change commit together; a key another
        # loop counted in between is skipped (INSERT OR IGNORE), not added twice.
        added = {arm: [0, 0] for arm in arms}
        with db.write(f"count outcomes of {experiment!r}") as conn:
            loop = conn.execute("SELECT * FROM bandit_loops WHERE experiment = ?", [experiment]).fetchone()
            if loop is None:
                bandit = ThompsonBandit(arms, floor=floor / (1 - held_share), seed=seed)
                state, version = bandit.state(), 0
            else:
                state, version = loads(loop["state"]), loop["version"]
            stamp = utc_now()
            for key, (ledger_row, reward) in new.items():
                inserted = conn.execute(
                    "INSERT OR IGNORE INTO bandit_counted (experiment, key, arm, reward, ledger_id, at) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    [experiment, dumps(key, "key"), ledger_row["variant"], reward, ledger_row["id"], stamp]).rowcount
                if inserted:
                    added[ledger_row["variant"]][0 if reward else 1] += 1
            changed = any(s or f for s, f in added.values())
            if changed:
                index = {a: i for i, a in enumerate(state["arms"])}
                for arm, (s, f) in added.items():
                    state["successes"][index[arm]] += s
                    state["failures"][index[arm]] += f
                version += 1
            due = 1 if changed or (loop is not None and loop["allocation_due"]) else 0
            values = {"by": by, "floor": floor, "state": dumps(state, "bandit state"),
                      "settled_id": max(watermark, settled_id), "settled_at": mark_at,
                      "allocation_due": due, "version": version, "updated_at": stamp}
            if loop is None:
                conn.execute(f"INSERT INTO bandit_loops ({', '.join(values)}, experiment, created_at) "
                             f"VALUES ({', '.join('?' for _ in values)}, ?, ?)", [*values.values(), experiment, stamp])
            else:
                conn.execute(f"UPDATE bandit_loops SET {', '.join(f'{k} = ?' for k in values)} WHERE experiment = ?",
                             [*values.values(), experiment])
        update = BanditUpdate(
            experiment=experiment, by=by, floor=floor, arms=tuple(arms), holdout=tuple(held_names),
            counted={a: {"successes": s, "failures": f} for a, (s, f) in added.items()},
            posterior={a: [state["prior"][0] + s, state["prior"][1] + f]
                       for a, s, f in zip(state["arms"], state["successes"], state["failures"])},
            weights=dict(current.weights), allocated=False, rows_read=len(rows), pending=len(pending),
            expired=expired, settled_id=values["settled_id"],
            notes=[] if rows else ["no new predictions of this experiment in the ledger since the last update"])
        if not due:
            return update
        return _allocate(db, registry_path, experiment, state, version, floor, held, update, n_draws, actor)
    finally:
        db.close()


def _already_counted(db: Database, experiment: str, keys: list) -> set[str]:
    """The keys (as their JSON text) of ``keys`` already counted for ``experiment``."""
    texts = [dumps(k, "key") for k in keys]
    if not texts:
        return set()
    found: set[str] = set()
    for start in range(0, len(texts), 10_000):
        chunk = texts[start:start + 10_000]
        found.update(r["key"] for r in db.rows(
            "SELECT key FROM bandit_counted WHERE experiment = ? AND key IN (SELECT value FROM json_each(?))",
            [experiment, json.dumps(chunk)]))
    return found


def _allocate(db: Database, registry_path: Path, experiment: str, state: dict, version: int, floor: float,
              held: Mapping[str, float], update: BanditUpdate, n_draws: int, actor: str) -> BanditUpdate:
    """Allocate from ``state``, serve it (holdout weights kept), and record the update."""
    held_share = math.fsum(held.values())
    bandit = ThompsonBandit.from_state({**state, "floor": floor / (1 - held_share)})
    shares = bandit.allocate(n_draws)
    with ExperimentStore.open(registry_path) as store:
        order = [v.name for v in store.get(experiment).variants]
        weights = {name: held[name] if name in held else (1 - held_share) * shares[name] for name in order}
        # Served first: refused whole if a guardrail stopped the experiment meanwhile; the
        # counts stay, the allocation stays due for the next update.
        served = store.apply_allocation(experiment, weights, source=SOURCE, actor=actor,
                                        reason=f"{SOURCE} allocation (bandit loop)").weights
    after = bandit.state()
    with db.write(f"record the allocation of {experiment!r}") as conn:
        row = conn.execute("SELECT version FROM bandit_loops WHERE experiment = ?", [experiment]).fetchone()
        current = row["version"] == version  # else another loop counted meanwhile: its allocation is due
        if current:
            conn.execute("UPDATE bandit_loops SET state = ?, allocation_due = 0, updated_at = ? WHERE experiment = ?",
                         [dumps(after, "bandit state"), utc_now(), experiment])
        update_id = conn.execute(
            "INSERT INTO bandit_updates (experiment, at, actor, counted, posterior, weights, settled_id) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            [experiment, utc_now(), actor,
             dumps({a: [c["successes"], c["failures"]] for a, c in update.counted.items()}, "counts"),
             dumps(update.posterior, "posterior"), dumps(served, "weights"), update.settled_id]).lastrowid
    return dataclasses.replace(update, weights=dict(served), allocated=True, update_id=update_id)


def update_bandit_for(config_or_root: Any, experiment: str, outcomes: Any, *, model: str | None = None,
                      by: str = "event", id_column: str | None = None, label_column: str | None = None,
                      pm: Any = None, **options: Any) -> BanditUpdate:
    """``update_bandit`` for the lab ``config_or_root`` (a ``LabConfig`` or its folder): its
    registry and ledger, and the columns from the model's ``ModelSpec`` when not given
    (``by="event"``: the request's id field and the label; ``by="unit"``: ``unit_id`` and
    ``value``, as experiment outcomes are written). ``options`` go to ``update_bandit``."""
    from lab.config import LabConfig, load_config

    config = config_or_root if isinstance(config_or_root, LabConfig) else load_config(config_or_root)
    if by == "event" and (id_column is None or label_column is None):
        from lab.plugins import get_plugin_manager, model_spec  # the plugins only when the spec must name columns

        spec = model_spec(pm if pm is not None else get_plugin_manager(config), config, model)
        id_column = id_column or spec.id_column
        label_column = label_column or spec.label
    elif by == "unit":
        id_column, label_column = id_column or "unit_id", label_column or "value"
    return update_bandit(experiment, outcomes, registry_path=config.registry_path, ledger_path=config.ledger_path,
                         id_column=id_column, label_column=label_column, by=by, **options)
