"""A shadow's exit criteria, its agreement report, and the check that records the outcome.

A shadow (``lab shadow start``) declares its exit criteria when it starts; the server
mirrors scored requests to the challenger (``lab.serving.shadow``) and writes both
answers to ``shadow_predictions`` in the ledger's file. This module reads them back:

- **Agreement.** Classification: champion and challenger make the same decision at the
  shadow's ``threshold`` (score >= threshold, default 0.5). Regression: their
  predictions differ by at most ``tolerance`` (the label's units; declared at start).
  A request the challenger failed on counts as a disagreement.
- **The agreement criterion is judged on evidence**: the lower bound of the Wilson
  score interval (95 %) of the agreement rate must reach ``min_agreement``, so a few
  lucky requests do not pass it.
- **Latency.** p50 and p99 (nearest rank) of the champion's requests as served and of the
  challenger's predict on the same inputs; ``max_latency_ms`` bounds the challenger's p99.
- **Deadline.** Past it with the criteria unmet, the shadow expires.

``check_shadow`` builds the report and, the first time the criteria hold (or the
deadline passes unmet), records ``met`` (or ``expired``) in the registry with the report
and fires ``shadow.met`` (``shadow.expired``) through ``lab_on_event``. The server's
refresh loop, ``lab shadow status`` and ``lab shadow report`` all call it.

Standard library only: this module is part of the core.
"""

from __future__ import annotations

import datetime as dt
import math
import sqlite3
import statistics
from pathlib import Path
from typing import Any

from lab import events
from lab.errors import ConfigError, LabError, NotFound
from lab.registry import Registry
from lab.sqlite import connect

CONFIDENCE = 0.95
DEFAULT_MIN_REQUESTS = 1000
DEFAULT_MIN_AGREEMENT = 0.95
MAX_DAYS = 3650  # ten years: a later deadline is no deadline (and overflows datetime)
DEFAULT_DAYS = 7.0
DEFAULT_THRESHOLD = 0.5


def _utc(text: str, what: str) -> dt.datetime:
    try:
        moment = dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except (ValueError, AttributeError):
        raise ConfigError(f"{what} {text!r} is not an ISO 8601 time; write e.g. 2026-12-08T00:00Z") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.timezone.utc)
    return moment.astimezone(dt.timezone.utc)


def now_utc() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def shadow_criteria(task: str, *, min_requests: int | None = None, min_agreement: float | None = None,
                    max_latency_ms: float | None = None, deadline: str | None = None, days: float | None = None,
                    threshold: float | None = None, tolerance: float | None = None,
                    now: dt.datetime | None = None) -> dict:
    """The exit criteria a shadow declares when it starts, checked: ``min_requests``
    (default 1000), ``min_agreement`` (default 0.95), ``max_latency_ms`` (none), a
    ``deadline`` (ISO time) or ``days`` from now (default 7), and the agreement rule:
    ``threshold`` for classification (default 0.5), ``tolerance`` for regression (needed)."""
    now = now or now_utc()
    min_requests = DEFAULT_MIN_REQUESTS if min_requests is None else min_requests
    if isinstance(min_requests, bool) or not isinstance(min_requests, int) or min_requests < 1:
        raise ConfigError(f"--min-requests must be a whole number >= 1, got {min_requests!r}")
    min_agreement = DEFAULT_MIN_AGREEMENT if min_agreement is None else min_agreement
    if not isinstance(min_agreement, (int, float)) or not 0 < min_agreement <= 1:
        raise ConfigError(f"--min-agreement must be a share in (0, 1], e.g. 0.95, got {min_agreement!r}")
    if max_latency_ms is not None and (not isinstance(max_latency_ms, (int, float)) or not max_latency_ms > 0):
        raise ConfigError(f"--max-latency-ms must be a number of milliseconds > 0, got {max_latency_ms!r}")
    if deadline is not None and days is not None:
        raise ConfigError("give --deadline or --days, not both")
    if deadline is not None:
        end = _utc(deadline, "--deadline")
        if end <= now:
            raise ConfigError(f"--deadline {deadline} is in the past; give a later time or --days D")
    else:
        days = DEFAULT_DAYS if days is None else days
        if not isinstance(days, (int, float)) or not 0 < days <= MAX_DAYS:
            raise ConfigError(f"--days must be a number of days > 0 and at most {MAX_DAYS}, got {days!r}")
        end = now + dt.timedelta(days=float(days))
    criteria: dict[str, Any] = {"task": task, "min_requests": min_requests, "min_agreement": float(min_agreement),
                                "max_latency_ms": None if max_latency_ms is None else float(max_latency_ms),
                                "deadline": end.isoformat(timespec="seconds")}
    if task == "classification":
        if tolerance is not None:
            raise ConfigError("--tolerance is for regression models; a classification model agrees at --threshold")
        threshold = DEFAULT_THRESHOLD if threshold is None else threshold
        if not isinstance(threshold, (int, float)) or not math.isfinite(threshold):
            raise ConfigError(f"--threshold must be a number, got {threshold!r}")
        criteria["threshold"] = float(threshold)
    elif task == "regression":
        if threshold is not None:
            raise ConfigError("--threshold is for classification models; a regression model agrees within "
                              "--tolerance")
        if tolerance is None:
            raise ConfigError("a regression model's shadow needs --tolerance: how far apart (in the label's "
                              "units) two predictions may be and still agree, e.g. --tolerance 2.5")
        if not isinstance(tolerance, (int, float)) or not tolerance >= 0 or not math.isfinite(tolerance):
            raise ConfigError(f"--tolerance must be a number >= 0, got {tolerance!r}")
        criteria["tolerance"] = float(tolerance)
    else:
        raise ConfigError(f"unknown task {task!r}; a shadow compares classification or regression models")
    return criteria


def agreement_rule(criteria: dict):
    """``agree(champion_score, challenger_score) -> bool`` for the shadow's criteria."""
    if "tolerance" in criteria:
        tolerance = float(criteria["tolerance"])
        return lambda a, b: abs(a - b) <= tolerance
    threshold = float(criteria.get("threshold", DEFAULT_THRESHOLD))
    return lambda a, b: (a >= threshold) == (b >= threshold)


def wilson_interval(successes: int, n: int, confidence: float = CONFIDENCE) -> tuple[float, float] | None:
    """The Wilson score interval of a proportion; None without observations."""
    if n <= 0:
        return None
    z = statistics.NormalDist().inv_cdf(0.5 + confidence / 2)
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def _percentile(conn: sqlite3.Connection, column: str, shadow_id: int, n: int, q: float) -> float | None:
    """Nearest-rank percentile of ``column`` over the shadow's rows (an index walk, not a sort)."""
    if n == 0:
        return None
    rank = max(1, math.ceil(q * n))
    row = conn.execute(f"SELECT {column} AS v FROM shadow_predictions WHERE shadow_id = ? AND {column} IS NOT NULL "
                       f"ORDER BY {column} LIMIT 1 OFFSET ?", [shadow_id, rank - 1]).fetchone()
    return None if row is None else float(row["v"])


def shadow_counts(ledger_path: str | Path, shadow_id: int) -> dict:
    """What the ledger holds for shadow ``shadow_id``: requests, agreed, errors and the
    latency percentiles of champion and challenger. Zeros when nothing was mirrored yet."""
    empty = {"requests": 0, "agreed": 0, "errors": 0, "first_at": None, "last_at": None,
             "latency_ms": {"champion": {"p50": None, "p99": None}, "challenger": {"p50": None, "p99": None}}}
    path = Path(ledger_path)
    if not path.exists():
        return empty
    try:
        conn = connect(path, readonly=True)
    except NotFound:
        return empty
    try:
        try:
            row = conn.execute(
                "SELECT COUNT(*) AS n, COALESCE(SUM(agree), 0) AS agreed, COALESCE(SUM(error IS NOT NULL), 0) AS errors, "
                "MIN(at) AS first_at, MAX(at) AS last_at FROM shadow_predictions WHERE shadow_id = ?",
                [shadow_id]).fetchone()
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                return empty  # no shadow has written to this ledger yet
            raise LabError(f"cannot read the shadow rows of {path}: {exc}") from None
        n = int(row["n"])
        scored = n - int(row["errors"])
        latency = {
            "champion": {f"p{int(q * 100)}": _percentile(conn, "champion_latency_ms", shadow_id, n, q)
                         for q in (0.5, 0.99)},
            "challenger": {f"p{int(q * 100)}": _percentile(conn, "challenger_latency_ms", shadow_id, scored, q)
                           for q in (0.5, 0.99)},
        }
    finally:
        conn.close()
    return {"requests": n, "agreed": int(row["agreed"]), "errors": int(row["errors"]),
            "first_at": row["first_at"], "last_at": row["last_at"], "latency_ms": latency}


def _fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def evaluate(shadow: dict, counts: dict, now: dt.datetime) -> dict:
    """The report of ``shadow`` given its ``counts``: each criterion with what it needs,
    what was observed and whether it holds; ``met``; ``expired`` (deadline passed unmet)."""
    criteria = shadow["criteria"]
    n, agreed = counts["requests"], counts["agreed"]
    interval = wilson_interval(agreed, n)
    rate = agreed / n if n else None
    checks = [{"name": "min_requests", "required": criteria["min_requests"], "observed": n,
               "passed": n >= criteria["min_requests"],
               "text": f"requests {n} {'>=' if n >= criteria['min_requests'] else '<'} {criteria['min_requests']}"}]
    low = interval[0] if interval else None
    ok = low is not None and low >= criteria["min_agreement"]
    checks.append({"name": "min_agreement", "required": criteria["min_agreement"], "observed": low, "passed": ok,
                   "text": f"agreement {_fmt(rate)} (95% CI lower bound {_fmt(low)}) "
                           f"{'>=' if ok else 'below'} {criteria['min_agreement']}"})
    if criteria.get("max_latency_ms") is not None:
        p99 = counts["latency_ms"]["challenger"]["p99"]
        ok = p99 is not None and p99 <= criteria["max_latency_ms"]
        checks.append({"name": "max_latency_ms", "required": criteria["max_latency_ms"], "observed": p99,
                       "passed": ok, "text": f"challenger p99 {_fmt(p99)} ms {'<=' if ok else 'over'} "
                                             f"{criteria['max_latency_ms']} ms"})
    met = all(c["passed"] for c in checks)
    deadline = _utc(criteria["deadline"], "deadline")
    expired = not met and not shadow.get("met") and now > deadline
    unmet = [c["text"] for c in checks if not c["passed"]]
    rule = (f"|champion - challenger| <= {criteria['tolerance']}" if "tolerance" in criteria
            else f"same decision at threshold {criteria.get('threshold', DEFAULT_THRESHOLD)}")
    summary = (f"{n} requests, agreement {_fmt(rate)} [{_fmt(low)}, {_fmt(interval[1] if interval else None)}], "
               f"challenger p99 {_fmt(counts['latency_ms']['challenger']['p99'])} ms")
    return {
        "requests": n, "agreed": agreed, "errors": counts["errors"], "agreement": rate,
        "agreement_ci": list(interval) if interval else None, "confidence": CONFIDENCE, "agreement_rule": rule,
        "latency_ms": counts["latency_ms"], "first_at": counts["first_at"], "last_at": counts["last_at"],
        "checks": checks, "met": met, "unmet": unmet, "deadline": criteria["deadline"],
        "deadline_passed": now > deadline, "expired": expired, "summary": summary,
    }


def shadow_report(config, model: str, shadow_id: int | None = None, *, now: dt.datetime | None = None) -> dict:
    """The agreement report of ``model``'s shadow (default: its latest), as a JSON-able
    dict: the shadow (versions, criteria, status) and ``evaluate``'s numbers."""
    with Registry.open(config.registry_path, project_root=config.root) as registry:
        shadow = registry.get_shadow(model, shadow_id)
    return _report(config, shadow, now or now_utc())


def _report(config, shadow: dict, now: dt.datetime) -> dict:
    result = evaluate(shadow, shadow_counts(config.ledger_path, shadow["id"]), now)
    keys = ("id", "model", "version", "champion_version", "status", "active", "started_by", "started_at", "met_at",
            "ended_at", "criteria")
    return {"shadow": {k: shadow[k] for k in keys}, **result}


def check_shadow(config, pm: Any = None, model: str | None = None, *, shadow_id: int | None = None,
                 now: dt.datetime | None = None, actor: str | None = None) -> dict:
    """Report on ``model``'s shadow and record its outcome: the first time its criteria
    hold, ``met`` (it goes on being mirrored; promotion is allowed); past its deadline
    unmet, ``expired`` (mirroring stops). Each fires its event through ``lab_on_event``
    (when ``pm`` is given). Returns the report with ``recorded``: "met", "expired" or None."""
    now = now or now_utc()
    with Registry.open(config.registry_path, project_root=config.root) as registry:
        shadow = registry.get_shadow(model, shadow_id)
        report = _report(config, shadow, now)
        report["recorded"] = None
        if not shadow["active"]:
            return report
        action = "met" if report["met"] and not shadow["met"] else "expired" if report["expired"] else None
        if action is None:
            return report
        brief = {k: report[k] for k in ("requests", "agreed", "errors", "agreement", "agreement_ci", "latency_ms",
                                        "checks", "summary")}
        changed = registry.end_shadow(model, shadow["id"], action, report=brief, actor=actor or "lab shadow",
                                      reason=("exit criteria met" if action == "met" else
                                              "deadline passed: " + "; ".join(report["unmet"])))
    if changed is None:  # another process recorded it first
        return report
    report["recorded"] = action
    report["shadow"].update(status=changed["status"], active=changed["active"], met_at=changed["met_at"],
                            ended_at=changed["ended_at"])
    if pm is not None:
        events.emit(pm, events.SHADOW_MET if action == "met" else events.SHADOW_EXPIRED, model=model,
                    version=shadow["version"], champion_version=shadow["champion_version"],
                    shadow_id=shadow["id"], summary=report["summary"], unmet=report["unmet"])
    return report


def report_text(report: dict) -> str:
    """The report for a terminal."""
    s = report["shadow"]
    lat = report["latency_ms"]
    ci = report["agreement_ci"]
    lines = [
        f"shadow #{s['id']} of {s['model']}: challenger v{s['version']} against champion v{s['champion_version']}"
        f" ({s['status']}; started {s['started_at'][:19]} by {s['started_by']})",
        f"requests   {report['requests']} mirrored, {report['agreed']} agreed, {report['errors']} challenger errors",
        f"agreement  {_fmt(report['agreement'])}"
        + (f" ({int(report['confidence'] * 100)}% CI {_fmt(ci[0])} .. {_fmt(ci[1])})" if ci else "")
        + f"; rule: {report['agreement_rule']}",
        f"latency    champion (request as served) p50 {_fmt(lat['champion']['p50'])} ms, "
        f"p99 {_fmt(lat['champion']['p99'])} ms",
        f"           challenger (model call) p50 {_fmt(lat['challenger']['p50'])} ms, "
        f"p99 {_fmt(lat['challenger']['p99'])} ms",
        f"deadline   {report['deadline']}" + (" (passed)" if report["deadline_passed"] else ""),
        "criteria",
    ]
    lines += [f"  [{'x' if c['passed'] else ' '}] {c['text']}" for c in report["checks"]]
    if report["met"] or s["status"] in ("met",) or s.get("met_at"):
        verdict = f"MET: v{s['version']} may be promoted (`lab promote {s['model']} {s['version']}`)"
    elif report["expired"] or s["status"] == "expired":
        verdict = "EXPIRED: the deadline passed with the criteria unmet; promotion stays refused"
    elif s["status"] == "stopped":
        verdict = "STOPPED before its criteria were met"
    else:
        verdict = "NOT MET yet: " + "; ".join(report["unmet"])
    lines.append(verdict)
    return "\n".join(lines)
