"""Events: something happened that a plugin may want to know (alerts, webhooks, audit)."""

from __future__ import annotations

import datetime as dt
import getpass
import os
from dataclasses import dataclass, field
from typing import Any

STAGE_FINISHED = "stage.finished"
STAGE_FAILED = "stage.failed"
STAGE_SKIPPED = "stage.skipped"
MODEL_REGISTERED = "model.registered"
MODEL_PROMOTED = "model.promoted"
MODEL_ROLLED_BACK = "model.rolled_back"
DRIFT_DETECTED = "drift.detected"
FLAG_CHANGED = "flag.changed"
EXPERIMENT_STARTED = "experiment.started"
EXPERIMENT_STOPPED = "experiment.stopped"
GUARDRAIL_BREACHED = "guardrail.breached"
SHADOW_STARTED = "shadow.started"
SHADOW_MET = "shadow.met"  # its exit criteria hold: the challenger may be promoted
SHADOW_EXPIRED = "shadow.expired"  # its deadline passed with the criteria unmet
SHADOW_STOPPED = "shadow.stopped"
MODEL_APPROVED = "model.approved"
FEATURE_FRESHNESS_BREACHED = "feature.freshness_breached"  # served values older than the view's objective


def current_actor() -> str:
    """Who is acting: ``LAB_ACTOR`` if set (CI sets it), else the login name."""
    if os.environ.get("LAB_ACTOR"):
        return os.environ["LAB_ACTOR"]
    try:
        return getpass.getuser()
    except Exception:  # no login name in some containers
        return "unknown"


@dataclass(frozen=True)
class Event:
    name: str
    payload: dict[str, Any] = field(default_factory=dict)
    actor: str = field(default_factory=current_actor)
    at: str = field(default_factory=lambda: dt.datetime.now(dt.timezone.utc).isoformat())


def emit(pm, name: str, **payload: Any) -> Event:
    """Build an event and hand it to every ``lab_on_event`` implementation."""
    event = Event(name=name, payload=payload)
    pm.hook.lab_on_event(event=event)
    return event
