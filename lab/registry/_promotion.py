"""What a promotion to champion rests on: shadows, approvals and evidence, all append-only.

- A **shadow** mirrors live traffic to a challenger version (``lab shadow start``); its
  exit criteria are declared when it starts. ``shadow_events`` holds a ``started`` row
  (its id names the shadow) and later ``met``, ``expired`` or ``stopped`` rows pointing
  at it; the shadow's state is the replay of its rows, as an alias's is of its events.
- An **approval** names who approved which version (``lab approve``).
- **Evidence** rows say what was measured about a version and whether it passed: the
  offline comparison with the champion (``offline``: a paired-bootstrap confidence
  interval, or the point estimate), a shadow's outcome (``shadow``), an experiment
  decided by the experiments package's statistics (``experiment``).

``promotion_criteria`` checks a version against the gate ([tool.lab.gate]) from these
rows alone; ``promote`` refuses, naming what is unmet, and stores what it checked in
the alias event (``alias_events.evidence``), so the history answers who promoted what,
on which evidence, approved by whom.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from lab.errors import ConfigError, LabError, NotFound
from lab.events import current_actor
from lab.registry._db import dumps, loads, require_text, utc_now
from lab.registry._models import replay
from lab.sqlite import insert

SHADOW_ENDINGS = ("met", "expired", "stopped")
EVIDENCE_KINDS = ("offline", "shadow", "experiment")
ONLINE_REQUIREMENTS = ("none", "shadow", "experiment", "either")
GATED_ALIAS = "champion"


class PromotionRefused(LabError):
    """A promotion the gate refuses; ``unmet`` holds the criteria that failed."""

    def __init__(self, message: str, unmet: list["Criterion"]):
        super().__init__(message)
        self.unmet = unmet


@dataclass(frozen=True)
class Criterion:
    """One thing a promotion is checked against: ``name`` (shadow, offline, online,
    approval), whether it holds, a sentence saying why, and the rows it rests on."""

    name: str
    passed: bool
    detail: str
    refs: tuple[str, ...] = ()  # e.g. ("evidence:4", "approval:2", "shadow:7")

    def to_dict(self) -> dict:
        out = asdict(self)
        out["refs"] = list(self.refs)
        return out


def _check_version_number(version: Any) -> int:
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ConfigError(f"model version must be a whole number >= 1, got {version!r}")
    return version


def replay_shadow(rows: list[dict]) -> dict:
    """A shadow's state from its rows (the ``started`` row first)."""
    start = rows[0]
    shadow = {
        "id": start["id"], "model": start["model"], "version": start["version"],
        "champion_version": start["champion_version"], "criteria": loads(start["criteria"], {}),
        "started_by": start["actor"], "started_at": start["at"], "reason": start["reason"] or "",
        "status": "running", "met": False, "met_at": None, "ended_at": None, "report": None,
    }
    for row in rows[1:]:
        if row["action"] == "met":
            shadow.update(status="met", met=True, met_at=row["at"])
        elif shadow["ended_at"] is None:
            shadow.update(status=row["action"], ended_at=row["at"])
        if row["report"]:
            shadow["report"] = loads(row["report"])
    shadow["active"] = shadow["ended_at"] is None
    return shadow


def _gate_value(gate: Any, name: str, default: Any) -> Any:
    return getattr(gate, name, default) if gate is not None else default


class PromotionRecords:
    """Shadow, approval, evidence and gate methods of ``Registry``; relies on its ``_db``,
    ``_require_version``, ``_require_model`` and ``_record_event``."""

    # -- shadows --------------------------------------------------------------------------

    def _shadow_rows(self, name: str) -> dict[int, list[dict]]:
        by_shadow: dict[int, list[dict]] = {}
        for row in self._db.rows("SELECT * FROM shadow_events WHERE model = ? ORDER BY id", [name]):
            by_shadow.setdefault(row["shadow_id"] or row["id"], []).append(row)
        return by_shadow

    def _shadows(self, name: str) -> list[dict]:
        return [replay_shadow(rows) for _, rows in sorted(self._shadow_rows(name).items())]

    def shadows(self, name: str) -> list[dict]:
        """Every shadow of model ``name``, oldest first: id, version (the challenger),
        champion_version (when it started), criteria, status (running, met, expired,
        stopped), met, active (still mirrored), started_by/at, met_at, ended_at, report
        (the last one recorded, at met or expiry)."""
        with self._db.read():
            self._require_model(name)
            return self._shadows(name)

    def active_shadow(self, name: str) -> dict | None:
        """The shadow of ``name`` that is still mirrored (running or met, not ended), or None."""
        with self._db.read():
            active = [s for s in self._shadows(name) if s["active"]]
        return active[-1] if active else None

    def get_shadow(self, name: str, shadow_id: int | None = None) -> dict:
        """Shadow ``shadow_id`` of ``name`` (default: the latest); NotFound says how to start one."""
        with self._db.read():
            self._require_model(name)
            shadows = self._shadows(name)
        if shadow_id is not None:
            shadows = [s for s in shadows if s["id"] == shadow_id]
        if not shadows:
            which = f" #{shadow_id}" if shadow_id is not None else ""
            raise NotFound(f"model {name!r} has no shadow{which}; start one with "
                           f"`lab shadow start {name} --challenger VERSION`")
        return shadows[-1]

    def start_shadow(self, name: str, version: int, criteria: dict, *, actor: str | None = None,
                     reason: str = "") -> dict:
        """Start shadowing ``version`` of ``name`` against its champion, with the exit
        ``criteria`` declared now; returns the shadow. One shadow per model at a time."""
        _check_version_number(version)
        if not isinstance(criteria, dict):
            raise ConfigError(f"shadow criteria must be a dict, got {type(criteria).__name__}")
        actor = actor or current_actor()
        with self._db.write() as db:
            self._require_version(name, version)
            active = [s for s in self._shadows(name) if s["active"]]
            if active:
                s = active[-1]
                raise LabError(f"model {name!r} already shadows v{s['version']} (shadow #{s['id']}, since "
                               f"{s['started_at'][:19]}); stop it first with `lab shadow stop {name}`")
            champion = self._champion_version(name)
            if champion is None:
                raise LabError(f"model {name!r} has no champion to shadow against; promote one first with "
                               f"`lab promote {name} VERSION`")
            if champion == version:
                raise LabError(f"v{version} is already the champion of {name!r}; shadow another version")
            row = {"shadow_id": None, "model": name, "version": version, "action": "started",
                   "champion_version": champion, "criteria": dumps(criteria, "shadow criteria"), "report": None,
                   "actor": actor, "reason": reason or "", "at": utc_now()}
            row["id"] = insert(db, "shadow_events", row)
            self._record_event(db, "shadow.started", name, {
                "shadow_id": row["id"], "version": version, "champion_version": champion,
                "criteria": criteria, "reason": reason or ""}, actor)
            return replay_shadow([row])

    def end_shadow(self, name: str, shadow_id: int, action: str, *, report: dict | None = None,
                   actor: str | None = None, reason: str = "") -> dict | None:
        """Record that shadow ``shadow_id`` met its criteria (``met``; it keeps being
        mirrored), passed its deadline unmet (``expired``) or was stopped (``stopped``).
        Returns the shadow after the change, or None when it changes nothing (met twice,
        ended already): a repeat is not history."""
        if action not in SHADOW_ENDINGS:
            raise ConfigError(f"a shadow ends as one of {', '.join(SHADOW_ENDINGS)}, got {action!r}")
        actor = actor or current_actor()
        with self._db.write() as db:
            rows = self._shadow_rows(name).get(shadow_id)
            if not rows:
                raise NotFound(f"model {name!r} has no shadow #{shadow_id} (see `lab shadow status {name}`)")
            shadow = replay_shadow(rows)
            if not shadow["active"] or (action == "met" and shadow["met"]) or (action == "expired" and shadow["met"]):
                return None
            row = {"shadow_id": shadow_id, "model": name, "version": shadow["version"], "action": action,
                   "champion_version": shadow["champion_version"],
                   "report": dumps(report, "shadow report") if report is not None else None,
                   "criteria": None, "actor": actor, "reason": reason or "", "at": utc_now()}
            row["id"] = insert(db, "shadow_events", row)
            self._record_event(db, f"shadow.{action}", name, {
                "shadow_id": shadow_id, "version": shadow["version"], "reason": reason or ""}, actor)
            if action in ("met", "expired"):
                passed = action == "met"
                summary = (f"shadow #{shadow_id} {'met' if passed else 'did not meet'} its exit criteria"
                           + (f": {report.get('summary')}" if report and report.get("summary") else ""))
                self._insert_evidence(db, name, shadow["version"], "shadow", passed, summary,
                                      {"shadow_id": shadow_id, "report": report}, actor)
            return replay_shadow([*rows, row])

    def _champion_version(self, name: str) -> int | None:
        stack = replay(self._db.rows(
            "SELECT * FROM alias_events WHERE model = ? AND alias = ? ORDER BY id", [name, GATED_ALIAS]))
        return stack[-1] if stack else None

    # -- approvals ------------------------------------------------------------------------

    def approve(self, name: str, version: int, *, approver: str, note: str = "",
                actor: str | None = None) -> dict:
        """Record that ``approver`` approves ``version`` of ``name`` becoming champion."""
        _check_version_number(version)
        require_text(approver, "approver (--by NAME)")
        actor = actor or current_actor()
        with self._db.write() as db:
            self._require_version(name, version)
            row = {"model": name, "version": version, "approver": approver.strip(), "note": note or "",
                   "actor": actor, "at": utc_now()}
            row["id"] = insert(db, "approvals", row)
            self._record_event(db, "model.approved", name, {
                "approval_id": row["id"], "version": version, "approver": row["approver"], "note": note or ""},
                actor)
        return row

    def approvals(self, name: str, version: int | None = None) -> list[dict]:
        """Approvals of ``name`` (one version's if given), oldest first."""
        sql, params = "SELECT * FROM approvals WHERE model = ?", [name]
        if version is not None:
            sql, params = sql + " AND version = ?", [*params, version]
        with self._db.read():
            self._require_model(name)
            return self._db.rows(sql + " ORDER BY id", params)

    # -- evidence -------------------------------------------------------------------------

    def _insert_evidence(self, db, name: str, version: int, kind: str, passed: bool, summary: str,
                         payload: dict | None, actor: str) -> dict:
        row = {"model": name, "version": version, "kind": kind, "passed": int(bool(passed)),
               "summary": summary, "payload": dumps(payload or {}, "evidence payload"), "actor": actor,
               "at": utc_now()}
        row["id"] = insert(db, "evidence", row)
        self._record_event(db, "evidence.recorded", name, {
            "evidence_id": row["id"], "version": version, "kind": kind, "passed": bool(passed),
            "summary": summary}, actor)
        return {**row, "passed": bool(passed), "payload": payload or {}}

    def record_evidence(self, name: str, version: int, *, kind: str, passed: bool, summary: str,
                        payload: dict | None = None, actor: str | None = None) -> dict:
        """Record what was measured about ``version`` (``kind``: offline, shadow or
        experiment), whether it passed, a one-line ``summary`` and the numbers."""
        _check_version_number(version)
        if kind not in EVIDENCE_KINDS:
            raise ConfigError(f"evidence kind must be one of {', '.join(EVIDENCE_KINDS)}, got {kind!r}")
        require_text(summary, "evidence summary")
        if payload is not None and not isinstance(payload, dict):
            raise ConfigError(f"evidence payload must be a dict, got {type(payload).__name__}")
        actor = actor or current_actor()
        with self._db.write() as db:
            self._require_version(name, version)
            return self._insert_evidence(db, name, version, kind, passed, summary, payload, actor)

    def evidence(self, name: str, version: int | None = None, kind: str | None = None) -> list[dict]:
        """Evidence rows of ``name`` (one version's, one kind's, if given), oldest first."""
        sql, params = "SELECT * FROM evidence WHERE model = ?", [name]
        if version is not None:
            sql, params = sql + " AND version = ?", [*params, version]
        if kind is not None:
            sql, params = sql + " AND kind = ?", [*params, kind]
        with self._db.read():
            self._require_model(name)
            rows = self._db.rows(sql + " ORDER BY id", params)
        return [{**r, "passed": bool(r["passed"]), "payload": loads(r["payload"], {})} for r in rows]

    # -- the gate -------------------------------------------------------------------------

    def _criteria(self, name: str, version: int, gate: Any, actor: str) -> list[Criterion]:
        out: list[Criterion] = []
        shadows = [s for s in self._shadows(name) if s["version"] == version]
        latest = shadows[-1] if shadows else None
        if latest is not None:  # a shadow, once started, must be met, whatever the gate says
            ref = (f"shadow:{latest['id']}",)
            if latest["met"]:
                out.append(Criterion("shadow", True, f"shadow #{latest['id']} met its exit criteria at "
                                                     f"{latest['met_at'][:19]}", ref))
            else:
                state = {"running": "is running and has not met", "expired": "expired without meeting",
                         "stopped": "was stopped before meeting"}[latest["status"]]
                out.append(Criterion("shadow", False, f"shadow #{latest['id']} of v{version} {state} its exit "
                                                      f"criteria ({_criteria_text(latest['criteria'])})", ref))
        evidence = [{**r, "passed": bool(r["passed"])} for r in self._db.rows(
            "SELECT * FROM evidence WHERE model = ? AND version = ? ORDER BY id", [name, version])]
        if _gate_value(gate, "require_ci", False):
            offline = [e for e in evidence if e["kind"] == "offline"]
            last = offline[-1] if offline else None
            interval = (loads(last["payload"], {}) or {}).get("interval") if last else None
            if last is None:
                out.append(Criterion("offline", False, f"no offline evidence for v{version}: run the evaluate "
                                                       "and register stages (lab run)"))
            elif interval is None:
                out.append(Criterion("offline", False, f"the offline evidence for v{version} is a point estimate "
                                                       f"(evidence #{last['id']}); [tool.lab.gate] require_ci needs "
                                                       "a confidence interval: rerun evaluate and register",
                                     (f"evidence:{last['id']}",)))
            else:
                out.append(Criterion("offline", last["passed"], last["summary"], (f"evidence:{last['id']}",)))
        online = _gate_value(gate, "require_online", "none") or "none"
        if online not in ONLINE_REQUIREMENTS:
            raise ConfigError(f"[tool.lab.gate] require_online must be one of {', '.join(ONLINE_REQUIREMENTS)}, "
                              f"got {online!r}")
        if online != "none":
            kinds = {"shadow": ("shadow",), "experiment": ("experiment",), "either": ("shadow", "experiment")}[online]
            passing = [e for e in evidence if e["kind"] in kinds and e["passed"]]
            if passing:
                out.append(Criterion("online", True, passing[-1]["summary"], (f"evidence:{passing[-1]['id']}",)))
            else:
                how = {"shadow": f"a met shadow (`lab shadow start {name} --challenger {version}`)",
                       "experiment": f"an experiment decided for v{version} (`lab promote {name} {version} "
                                     "--experiment NAME --outcomes FILE`)",
                       "either": "a met shadow or an experiment decided for it"}[online]
                out.append(Criterion("online", False, f"no online evidence for v{version}: it needs {how}"))
        if _gate_value(gate, "require_approval", False):
            approvals = self._db.rows("SELECT * FROM approvals WHERE model = ? AND version = ? ORDER BY id",
                                      [name, version])
            separate = _gate_value(gate, "separate_approver", False)
            usable = [a for a in approvals if not separate or a["approver"] != actor]
            refs = tuple(f"approval:{a['id']}" for a in usable)
            if usable:
                out.append(Criterion("approval", True, "approved by " + ", ".join(
                    sorted({a["approver"] for a in usable})), refs))
            elif approvals:
                out.append(Criterion("approval", False, f"v{version} is approved only by {actor}, who is promoting "
                                                        "it; [tool.lab.gate] separate_approver needs someone else: "
                                                        f"`lab approve {name} {version} --by NAME`"))
            else:
                out.append(Criterion("approval", False, f"v{version} has no approval: `lab approve {name} "
                                                        f"{version} --by NAME`"))
        return out

    def promotion_criteria(self, name: str, version: int, gate: Any = None, *,
                           actor: str | None = None) -> list[Criterion]:
        """What promoting ``version`` of ``name`` to champion is checked against, each
        with whether it holds now: its shadow, if it had one (always); and what ``gate``
        (a ``GateConfig``) requires: ``require_ci`` (offline evidence with a confidence
        interval that passed), ``require_online`` (a met shadow or a decided
        experiment), ``require_approval`` (an approval; with ``separate_approver``, by
        someone other than ``actor``)."""
        _check_version_number(version)
        with self._db.read():
            self._require_version(name, version)
            return self._criteria(name, version, gate, actor or current_actor())

    def _promotion_evidence(self, db, name: str, version: int, gate: Any, actor: str, force: bool,
                            reason: str, notes: dict[str, str] | None) -> dict:
        """Inside ``promote``'s transaction: check the criteria, refuse or record them."""
        criteria = self._criteria(name, version, gate, actor)
        if notes:  # a fresher account of a criterion (e.g. the shadow's numbers), from the caller
            criteria = [Criterion(c.name, c.passed, notes.get(c.name) or c.detail, c.refs) if not c.passed else c
                        for c in criteria]
        unmet = [c for c in criteria if not c.passed]
        if unmet and not force:
            raise PromotionRefused(
                f"v{version} of {name!r} cannot become {GATED_ALIAS}: "
                + "; ".join(f"{c.name}: {c.detail}" for c in unmet)
                + f" (override with `lab promote {name} {version} --force --reason WHY`, recorded in the history)",
                unmet)
        if unmet and not (reason or "").strip():
            raise ConfigError("a forced promotion needs a reason (--reason WHY): it is kept in the history")
        return {"criteria": [c.to_dict() for c in criteria], "forced": bool(unmet),
                "overridden": [c.name for c in unmet]}

    def _stop_promoted_shadow(self, db, name: str, version: int, actor: str) -> None:
        """A shadow of the version just promoted has nothing left to compare: stop it."""
        for shadow in self._shadows(name):
            if shadow["active"] and shadow["version"] == version:
                row = {"shadow_id": shadow["id"], "model": name, "version": version, "action": "stopped",
                       "champion_version": shadow["champion_version"], "criteria": None, "report": None,
                       "actor": actor, "reason": f"v{version} promoted to {GATED_ALIAS}", "at": utc_now()}
                insert(db, "shadow_events", row)
                self._record_event(db, "shadow.stopped", name, {
                    "shadow_id": shadow["id"], "version": version, "reason": row["reason"]}, actor)

    # -- the model's whole history -------------------------------------------------------

    def model_history(self, name: str) -> list[dict]:
        """Everything that happened to model ``name``'s promotion, oldest first: alias
        moves (with the criteria and evidence a promotion was checked against), shadows
        started and ended, approvals and evidence. Each: ``at``, ``kind`` (alias,
        shadow, approval, evidence), ``action``, ``version``, ``actor``, ``text``, ``row``."""
        with self._db.read():
            self._require_model(name)
            alias = self._db.rows("SELECT * FROM alias_events WHERE model = ? ORDER BY id", [name])
            shadow = self._db.rows("SELECT * FROM shadow_events WHERE model = ? ORDER BY id", [name])
            approvals = self._db.rows("SELECT * FROM approvals WHERE model = ? ORDER BY id", [name])
            evidence = self._db.rows("SELECT * FROM evidence WHERE model = ? ORDER BY id", [name])
        out = []
        for e in alias:
            was = "-" if e["from_version"] is None else f"v{e['from_version']}"
            checked = loads(e.get("evidence"), None)
            text = f"{e['alias']} {was} -> v{e['to_version']}" + (f"  {e['reason']}" if e["reason"] else "")
            out.append({"at": e["at"], "kind": "alias", "action": e["action"], "version": e["to_version"],
                        "actor": e["actor"], "text": text, "evidence": checked, "row": {**e, "evidence": checked}})
        for e in shadow:
            sid = e["shadow_id"] or e["id"]
            text = f"shadow #{sid} of v{e['version']}"
            if e["action"] == "started":
                text += f" against v{e['champion_version']}: {_criteria_text(loads(e['criteria'], {}))}"
            report = loads(e["report"], None)
            if report and report.get("summary"):
                text += f"  {report['summary']}"
            if e["reason"]:
                text += f"  ({e['reason']})"
            out.append({"at": e["at"], "kind": "shadow", "action": e["action"], "version": e["version"],
                        "actor": e["actor"], "text": text, "row": e})
        for a in approvals:
            out.append({"at": a["at"], "kind": "approval", "action": "approved", "version": a["version"],
                        "actor": a["actor"], "text": f"v{a['version']} approved by {a['approver']}"
                        + (f": {a['note']}" if a["note"] else ""), "row": a})
        for e in evidence:
            out.append({"at": e["at"], "kind": "evidence", "action": e["kind"], "version": e["version"],
                        "actor": e["actor"], "text": f"v{e['version']} {e['kind']} "
                        f"{'passed' if e['passed'] else 'failed'}: {e['summary']}",
                        "row": {**e, "passed": bool(e["passed"]), "payload": loads(e["payload"], {})}})
        out.sort(key=lambda item: item["at"])
        return out


def _criteria_text(criteria: dict) -> str:
    """Declared shadow criteria in one line, e.g. ``min_requests 500, min_agreement 0.95``."""
    keys = ("min_requests", "min_agreement", "max_latency_ms", "deadline")
    return ", ".join(f"{k} {criteria[k]}" for k in keys if criteria.get(k) is not None) or "none declared"
