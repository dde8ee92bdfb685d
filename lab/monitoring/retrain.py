"""``lab retrain``: retraining on evidence, through every gate, never promoting a model that failed one.

A retrain is due for one of three reasons, each declared in ``[tool.lab.retrain]``
(``RetrainConfig``):

- **schedule**: the champion has served for ``every_days`` days or more (or there is none);
- **drift**: the latest ``lab monitor`` summary has the ``drift`` check in breach
  (``on_drift``; ``on_score_drift`` for the scores' drift);
- **quality decay**: the summary has the ``quality`` check in breach (``on_quality``).

``retrain`` runs the monitor first (so the evidence is of now, not of the last run),
decides, and when a retrain is due runs the lab's retrain stages through the pipeline
runner: by default every stage of ``notebooks/pipeline.toml`` up to and including
``register``. Each gate on that path holds as it does in any run:

1. data validation in the train step (``lab.monitoring.validation``): a failing batch
   stops the run, nothing downstream runs;
2. the champion/challenger gate of the evaluate step, and the promotion criteria the
   register step's ``registry.promote`` checks (shadow, online evidence, approvals);
3. only a version that passed is promoted.

Then ``retrain`` checks the result itself: when the champion moved, the new champion's
lineage must say its gate passed; if not (a stage that promoted around the gate), the
champion is rolled back to the one before and the retrain is reported ``refused``.

Every retrain is a registry run of kind ``retrain`` (its reasons, the pipeline run, the
outcome) and emits ``retrain.started`` and then ``retrain.finished`` or ``retrain.refused``.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from lab import events
from lab.config import LabConfig, build_section
from lab.errors import ConfigError, LabError

RETRAIN_STARTED = "retrain.started"
RETRAIN_FINISHED = "retrain.finished"
RETRAIN_REFUSED = "retrain.refused"
RUN_KIND = "retrain"


@dataclass(frozen=True)
class RetrainConfig:
    """``[tool.lab.retrain]``: when a retrain is due and what it runs."""

    every_days: float | None = None  # schedule: due once the champion has served this long (None: no schedule)
    on_drift: bool = True  # due when the monitor's input drift check breaches
    on_score_drift: bool = False  # due when the monitor's score drift check breaches
    on_quality: bool = True  # due when the monitor's live quality check breaches
    stages: tuple[str, ...] = ()  # the stages a retrain runs (default: every stage up to and including register)

    def __post_init__(self) -> None:
        if self.every_days is not None and (isinstance(self.every_days, bool)
                                            or not isinstance(self.every_days, (int, float))
                                            or not self.every_days > 0):
            raise ConfigError(f"[tool.lab.retrain] every_days must be a number of days above 0, got "
                              f"{self.every_days!r}")
        object.__setattr__(self, "stages", tuple(self.stages))

    @classmethod
    def from_config(cls, config: LabConfig) -> "RetrainConfig":
        return build_section(cls, config.section("retrain") or {}, "tool.lab.retrain")


@dataclass
class Decision:
    """Whether a retrain is due, and why (one sentence per reason)."""

    due: bool
    reasons: list[str]
    champion: int | None


@dataclass
class RetrainOutcome:
    """What ``retrain`` did: ``status`` is ``not_due``, ``nothing_new`` (every stage was
    cached: no new data or code to learn from), ``trained`` (a version registered, not
    promoted: ``detail`` says which gate held it), ``promoted`` or ``refused`` (a gate
    stopped the run, or a promotion around the gate was undone)."""

    status: str
    decision: Decision
    detail: str = ""
    champion_before: int | None = None
    champion_after: int | None = None
    registered: list[int] = field(default_factory=list)
    pipeline_run: str | None = None
    run_id: str | None = None

    def to_dict(self) -> dict:
        return {"status": self.status, "due": self.decision.due, "reasons": self.decision.reasons,
                "detail": self.detail, "champion_before": self.champion_before,
                "champion_after": self.champion_after, "registered": self.registered,
                "pipeline_run": self.pipeline_run, "run_id": self.run_id}


def decide(config: LabConfig, model: str, summary: dict | None, *, now: dt.datetime | None = None,
           settings: RetrainConfig | None = None) -> Decision:
    """Whether ``model`` is due for a retrain given the monitor ``summary`` (its JSON dict,
    or None) and the champion's age at ``now`` (default: now, UTC)."""
    from lab.registry import Registry

    settings = settings or RetrainConfig.from_config(config)
    now = now or dt.datetime.now(dt.timezone.utc)
    with Registry.open(config.registry_path, project_root=config.root) as registry:
        champion = registry.get_alias(model, "champion")
        since = _champion_since(registry, model) if champion is not None else None
    reasons = []
    if settings.every_days is not None:
        if champion is None:
            reasons.append(f"schedule: {model} has no champion")
        elif since is not None and now - since >= dt.timedelta(days=settings.every_days):
            age = (now - since).total_seconds() / 86400
            reasons.append(f"schedule: champion v{champion.version} has served {age:.1f} days "
                           f"(every_days {settings.every_days:g})")
    checks = (summary or {}).get("checks", {})
    for name, wanted in (("drift", settings.on_drift), ("score_drift", settings.on_score_drift),
                         ("quality", settings.on_quality)):
        check = checks.get(name)
        if wanted and check is not None and check.get("status") == "breach":
            reasons.append(f"{name}: {check.get('detail', 'breach')}")
    return Decision(due=bool(reasons), reasons=reasons, champion=champion.version if champion else None)


def _champion_since(registry: Any, model: str) -> dt.datetime | None:
    """When the current champion got the alias (its newest alias event)."""
    history = registry.alias_history(model, "champion")
    if not history:
        return None
    moment = dt.datetime.fromisoformat(str(history[-1]["at"]))
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.timezone.utc)


def retrain_stages(config: LabConfig, settings: RetrainConfig) -> list[str]:
    """The stages a retrain runs: ``settings.stages``, or every stage up to ``register``."""
    from lab.pipeline.runner import select_stages

    names = [s.name for s in select_stages(config)]
    if settings.stages:
        unknown = [s for s in settings.stages if s not in names]
        if unknown:
            raise ConfigError(f"[tool.lab.retrain] stages names unknown stage(s) {', '.join(unknown)}; the "
                              f"pipeline has {', '.join(names)}")
        return list(settings.stages)
    if "register" not in names:
        raise ConfigError("the pipeline has no 'register' stage to retrain up to; list the retrain stages in "
                          "[tool.lab.retrain] stages")
    return names[: names.index("register") + 1]


def retrain(config: LabConfig, pm: Any = None, *, model: str | None = None, monitor: bool = True,
            force: bool = False, force_stages: bool = False, log: Callable[[str], None] = print) -> RetrainOutcome:
    """Monitor (unless ``monitor`` is False: then the last ``data/monitor.json``), decide,
    and retrain when due (or ``force``). ``force_stages`` reruns the stages even when
    their inputs are unchanged. Never leaves a champion that failed its gate."""
    from lab.pipeline.runner import run_pipeline
    from lab.plugins import get_plugin_manager, model_spec
    from lab.registry import Registry

    pm = pm if pm is not None else get_plugin_manager(config)
    settings = RetrainConfig.from_config(config)
    spec = model_spec(pm, config, model)
    summary = None
    if monitor:
        from lab.monitoring.monitor import run_monitor

        try:
            summary = run_monitor(config, pm, model=spec.name).to_dict()
        except LabError as exc:  # no data to monitor yet: the schedule still decides
            log(f"retrain: the monitor could not run ({exc}); deciding on the schedule alone")
    else:
        path = config.data_path / "monitor.json"
        if path.exists():
            summary = json.loads(path.read_text())
            if summary.get("model") != spec.name:
                summary = None
    decision = decide(config, spec.name, summary, settings=settings)
    if force and not decision.due:
        decision = Decision(True, ["forced (--force)"], decision.champion)
    if not decision.due:
        log(f"retrain: {spec.name} is not due (no breach on the checks [tool.lab.retrain] watches, no schedule due)")
        return RetrainOutcome("not_due", decision, "nothing to do", decision.champion, decision.champion)
    stages = retrain_stages(config, settings)
    with Registry.open(config.registry_path, project_root=config.root) as registry:
        before_versions = {v.version for v in registry.list_model_versions(spec.name)}
        run_id = registry.start_run(kind=RUN_KIND, params={"model": spec.name, "reasons": decision.reasons,
                                                           "stages": stages})
    events.emit(pm, RETRAIN_STARTED, model=spec.name, reasons=decision.reasons, run_id=run_id)
    log(f"retrain {spec.name}: " + "; ".join(decision.reasons))
    outcome = RetrainOutcome("refused", decision, champion_before=decision.champion, run_id=run_id)
    try:
        result = run_pipeline(config, pm, only=stages, force=force_stages, new_run=True, log=log)
        outcome.pipeline_run = result.run_id
        ran = [s.name for s in result.stages if s.status == "finished"]
    except LabError as exc:
        outcome.detail = f"a gate or stage stopped the retrain: {exc}"
        ran = None
    with Registry.open(config.registry_path, project_root=config.root) as registry:
        after = registry.get_alias(spec.name, "champion")
        outcome.champion_after = after.version if after else None
        outcome.registered = sorted({v.version for v in registry.list_model_versions(spec.name)} - before_versions)
        if ran is not None:
            outcome.status, outcome.detail = _judge(registry, spec.name, outcome, ran)
        registry.log_params(run_id, {"outcome": outcome.to_dict()})
        registry.finish_run(run_id, "finished" if outcome.status != "refused" else "failed")
    events.emit(pm, RETRAIN_REFUSED if outcome.status == "refused" else RETRAIN_FINISHED, model=spec.name,
                status=outcome.status, detail=outcome.detail, champion=outcome.champion_after, run_id=run_id)
    log(f"retrain {spec.name}: {outcome.status}: {outcome.detail}")
    return outcome


def _judge(registry: Any, model: str, outcome: RetrainOutcome, ran: list[str]) -> tuple[str, str]:
    """The outcome of a pipeline run that finished: promoted, trained (held by a gate),
    nothing new, or refused when the champion moved to a version whose gate did not pass
    (then the champion is rolled back)."""
    before, after = outcome.champion_before, outcome.champion_after
    if after is not None and after != before:
        version = registry.get_model_version(model, after)
        gate = (version.lineage or {}).get("gate") or {}
        if gate.get("passed") is not True:
            if before is not None:
                registry.set_alias(model, "champion", before, reason=f"retrain: v{after} was promoted without "
                                   "passing its gate; rolled back")
            outcome.champion_after = before
            return "refused", (f"v{after} became champion without a passed gate in its lineage; the champion is "
                               f"v{before} again" if before is not None else
                               f"v{after} became champion without a passed gate in its lineage")
        return "promoted", f"v{after} passed every gate and is the champion (was v{before})"
    if outcome.registered:
        newest = outcome.registered[-1]
        version = registry.get_model_version(model, newest)
        gate = (version.lineage or {}).get("gate") or {}
        why = gate.get("reason") or ("the gate did not pass" if gate.get("passed") is False else
                                     "promotion awaits more evidence")
        return "trained", f"v{newest} registered, not promoted: {why}"
    if not ran:
        return "nothing_new", "every retrain stage was unchanged (cached): no new data or code to learn from"
    return "trained", f"stages {', '.join(ran)} ran; no new version was registered"


def write_outcome(path: Path, outcome: RetrainOutcome) -> None:
    from lab.atomic import atomic_write_text

    atomic_write_text(path, json.dumps(outcome.to_dict(), indent=2))
