"""What the JupyterLab sidebar reads and changes, from lab's own core.

Each function takes a ``Lab`` (the lab found from the Jupyter server's root folder) and
returns JSON-ready values in the shapes of the REST contract (docs/jupyterlab.md). None
of them decides anything itself: runs and stage records come from the ``Registry``,
promotion and rollback go through ``Registry.promote``/``rollback`` with the lab's
``[tool.lab.gate]`` (as ``lab promote`` does), experiments through the
``ExperimentStore``, monitoring from the files ``lab monitor run`` writes. Changes are
made with ``actor`` set to the JupyterLab user (``jupyterlab:<username>``), so ``lab
history``, ``lab experiment audit`` and the registry's audit log name who did it, and
plugins hear of them through ``lab_on_event`` after they commit, as from the CLI.

Reading never creates a registry: a lab with none answers empty lists.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import threading
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import quote

from lab import events
from lab.config import LabConfig, find_root, load_config
from lab.errors import NotFound
from lab.plugins import get_plugin_manager, plugin_table
from lab.registry import Registry
from plugins.jupyterlab_ext.monitor_plots import freshness_rows, quality_rows

log = logging.getLogger("lab.jupyterlab")

ACTOR_PREFIX = "jupyterlab:"


def actor_of(username: str) -> str:
    """The actor a JupyterLab user's changes are recorded under: ``jupyterlab:<username>``."""
    return f"{ACTOR_PREFIX}{username or 'unknown'}"


def find_lab(root_dir: str | os.PathLike) -> Path | None:
    """The lab a server rooted at ``root_dir`` serves: ``LAB_HOME`` if set, else the
    nearest folder at or above ``root_dir`` whose pyproject.toml has a ``[tool.lab]``
    table; None when there is none (the routes then say how to start in one)."""
    if os.environ.get("LAB_HOME"):
        return find_root()
    here = Path(root_dir).expanduser().resolve()
    for folder in (here, *here.parents):
        pyproject = folder / "pyproject.toml"
        if not pyproject.is_file():
            continue
        try:
            data = tomllib.loads(pyproject.read_text())
        except (OSError, tomllib.TOMLDecodeError):
            continue
        if isinstance(data.get("tool", {}).get("lab"), dict):
            return folder
    return None


class Lab:
    """The lab behind one Jupyter server: its root, its config (read again on each call,
    so an edit of pyproject.toml counts at once) and its plugin manager (built once).

    ``server_root`` is the server's root folder: notebook paths and file links in the
    answers are relative to it. Safe to share between the server's worker threads."""

    def __init__(self, server_root: str | os.PathLike, base_url: str = "/"):
        self.server_root = Path(server_root).expanduser().resolve()
        self.base_url = base_url if base_url.endswith("/") else base_url + "/"
        self._root: Path | None = None
        self._pm = None
        self._lock = threading.Lock()

    @property
    def root(self) -> Path:
        """The lab's folder; NotFound naming the fix when the server is not inside a lab."""
        if self._root is None:  # looked for again until found: the lab may be made after the server starts
            self._root = find_lab(self.server_root)
        if self._root is None:
            raise NotFound(f"the Jupyter server's root folder {self.server_root} is not inside a lab (no "
                           "pyproject.toml with a [tool.lab] table at or above it): start `jupyter lab` in a "
                           "lab's folder, or set LAB_HOME to one")
        return self._root

    def config(self) -> LabConfig:
        return load_config(self.root)

    def pm(self, config: LabConfig | None = None):
        with self._lock:
            if self._pm is None:
                self._pm = get_plugin_manager(config or self.config())
            return self._pm

    def registry(self, config: LabConfig, *, create: bool = False) -> Registry | None:
        """The lab's registry; None when it has none yet (unless ``create``)."""
        if not create and not config.registry_path.exists():
            return None
        return Registry.open(config.registry_path, project_root=config.root)

    def require_registry(self, config: LabConfig) -> Registry:
        registry = self.registry(config)
        if registry is None:
            raise NotFound(f"this lab has no registry yet ({config.registry_path}): run the pipeline "
                           "(`lab run`) to train and register a model")
        return registry

    def relative(self, path: str | os.PathLike | None) -> str | None:
        """``path`` relative to the server's root folder (posix), or None when outside it."""
        if not path:
            return None
        full = Path(path)
        full = (full if full.is_absolute() else self.root / full).resolve()
        try:
            return full.relative_to(self.server_root).as_posix()
        except ValueError:
            return None

    def file_url(self, path: str | os.PathLike) -> str | None:
        """The server's ``/files/`` link to ``path``, or None when outside its root."""
        relative = self.relative(path)
        return None if relative is None else f"{self.base_url}files/{quote(relative)}"

    def announce(self, name: str, who: str, **payload: Any) -> None:
        """Tell plugins (``lab_on_event``) after a change committed; a plugin's failure is
        logged, never undoes the answer."""
        try:
            self.pm().hook.lab_on_event(event=events.Event(name=name, payload=payload, actor=who))
        except Exception:  # noqa: BLE001 - the change is made; a plugin's bug must not turn it into a 500
            log.exception("a lab_on_event plugin failed on %s", name)


# -- summary ---------------------------------------------------------------------------

def summary(lab: Lab) -> dict:
    """``{"lab": root, "model": default model or None, "plugins": [names]}``."""
    config = lab.config()
    return {"lab": str(config.root), "model": config.model_name,
            "plugins": [row["name"] for row in plugin_table(lab.pm(config))]}


# -- pipeline runs -----------------------------------------------------------------------

def _parse(at: str | None) -> dt.datetime | None:
    if not at:
        return None
    moment = dt.datetime.fromisoformat(at)
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.timezone.utc)


def _seconds(start: str | None, end: str | None) -> float | None:
    """Seconds from ``start`` to ``end`` (now when ``end`` is None)."""
    began = _parse(start)
    if began is None:
        return None
    ended = _parse(end) or dt.datetime.now(dt.timezone.utc)
    return round((ended - began).total_seconds(), 2)


def _stages(lab: Lab, records: list[dict]) -> list[dict]:
    """One row per stage from a run's stage records (oldest first): its last status, the
    attempt, the executed notebook, the error; ``cached`` when skipped as unchanged."""
    out: dict[str, dict] = {}
    started: dict[str, str] = {}
    for record in records:
        name, status = record["stage"], record["status"]
        if status == "running":
            started[name] = record["at"]
        if status == "finished":
            seconds = (record.get("outputs") or {}).get("seconds")
        elif status == "skipped":
            seconds = 0.0
        else:  # running: so far; failed: from its attempt's start
            seconds = _seconds(started.get(name), None if status == "running" else record["at"])
        out[name] = {"name": name, "status": status, "cached": status == "skipped", "seconds": seconds,
                     "attempt": record["attempt"], "notebook": lab.relative(record.get("output_notebook")),
                     "error": record.get("error")}
    return list(out.values())


def runs(lab: Lab, limit: int = 20) -> list[dict]:
    """The latest ``limit`` pipeline runs, newest first, each with its stages."""
    config = lab.config()
    registry = lab.registry(config)
    if registry is None:
        return []
    with registry:
        found = registry.list_runs(kind="pipeline", limit=limit)
        return [{"id": r["id"], "kind": r["kind"], "status": r["status"], "started_at": r["started_at"],
                 "ended_at": r.get("finished_at"), "seconds": _seconds(r["started_at"], r.get("finished_at")),
                 "stages": _stages(lab, registry.stage_history(r["id"]))} for r in found]


# -- models ------------------------------------------------------------------------------

def _model(registry: Registry, name: str) -> dict:
    aliases = registry.aliases(name)  # NotFound, naming the models there are, first
    by_version: dict[int, list[str]] = {}
    for alias, version in aliases.items():
        by_version.setdefault(version, []).append(alias)
    return {"name": name, "aliases": aliases,
            "versions": [{"version": v.version, "created_at": v.created_at, "flavor": v.flavor,
                          "metrics": v.metrics, "aliases": sorted(by_version.get(v.version, [])),
                          "lineage": v.lineage} for v in registry.list_model_versions(name)]}


def models(lab: Lab) -> list[dict]:
    """Every registered model with its aliases and versions (oldest first)."""
    config = lab.config()
    registry = lab.registry(config)
    if registry is None:
        return []
    with registry:
        return [_model(registry, row["name"]) for row in registry.list_models()]


def history(lab: Lab, name: str) -> list[dict]:
    """The model's alias moves (with the criteria a promotion was checked against),
    shadows, approvals and evidence, oldest first (``Registry.model_history``)."""
    with lab.require_registry(lab.config()) as registry:
        return registry.model_history(name)


def _refresh_shadow(lab: Lab, config: LabConfig, name: str, version: int, who: str) -> None:
    """As ``lab promote`` does: a running shadow of ``version`` is checked against the
    ledger first, so one that has met its criteria counts at once."""
    with lab.require_registry(config) as registry:
        shadows = [s for s in registry.shadows(name) if s["version"] == version]
    if shadows and shadows[-1]["active"] and not shadows[-1]["met"]:
        from lab.serving.shadow_report import check_shadow  # lab.serving loads numpy: only for a shadow

        check_shadow(config, lab.pm(config), name, shadow_id=shadows[-1]["id"], actor=who)


def promote(lab: Lab, name: str, version: int, *, alias: str, reason: str, who: str) -> dict:
    """``Registry.promote`` with the lab's gate and ``who`` as actor; the model after it.
    A refusal raises ``PromotionRefused`` (its ``unmet`` criteria)."""
    config = lab.config()
    with lab.require_registry(config) as registry:
        registry.get_model_version(name, version)  # NotFound naming the versions, before any shadow check
    if alias == "champion":
        _refresh_shadow(lab, config, name, version, who)
    with lab.require_registry(config) as registry:
        event = registry.promote(name, version, alias=alias, actor=who, reason=reason, gate=config.gate)
        model = _model(registry, name)
    if event is not None:
        checked = event.get("evidence") or {}
        extra = {"criteria": checked["criteria"], "forced": checked["forced"]} if checked.get("criteria") else {}
        lab.announce(events.MODEL_PROMOTED, who, model=name, version=version, alias=alias,
                     previous=event["from_version"], **extra)
    return model


def rollback(lab: Lab, name: str, *, alias: str, reason: str, who: str) -> dict:
    """``Registry.rollback`` with ``who`` as actor; the model after it."""
    config = lab.config()
    with lab.require_registry(config) as registry:
        event = registry.rollback(name, alias=alias, actor=who, reason=reason)
        model = _model(registry, name)
    lab.announce(events.MODEL_ROLLED_BACK, who, model=name, version=event["to_version"], alias=alias,
                 previous=event["from_version"])
    return model


# -- experiments -------------------------------------------------------------------------

def _experiment(e, guardrails: list, ledger: Path) -> dict:
    """One experiment or flag: its variants (``holdout`` from the payload), what the
    ledger holds of it (``stats``: requests served and mean latency per variant; None
    before any), and each platform guardrail with its check on those rows."""
    stats, checked = None, {}
    if e.status != "draft" and ledger.exists():
        from lab.experiments.guardrails import check_guardrails, guardrail_data_from_ledger  # numpy

        data = guardrail_data_from_ledger(ledger, e)
        latency = data.get("latency_ms", {})
        if any(latency.values()):
            stats = {"served": {v.name: len(latency.get(v.name, [])) for v in e.variants},
                     "latency_ms_mean": {v.name: (sum(latency[v.name]) / len(latency[v.name])
                                                  if latency.get(v.name) else None) for v in e.variants}}
            for result in check_guardrails(e, data, guardrails):
                checked.setdefault(result.guardrail, []).append(result.as_dict())
    return {"name": e.name, "status": e.status, "kind": e.kind, "unit": e.unit,
            "variants": [{"name": v.name, "weight": v.weight, "holdout": bool((v.payload or {}).get("holdout"))}
                         for v in e.variants],
            "stats": stats,
            "guardrails": [{"name": g.name, "kind": g.kind, "worse": g.worse, "tolerance": g.tolerance,
                            "description": g.description, "results": checked.get(g.name, [])} for g in guardrails]}


def experiments(lab: Lab) -> list[dict]:
    """Every experiment and flag, by name."""
    from lab.experiments import ExperimentStore
    from lab.experiments.guardrails import platform_guardrails

    config = lab.config()
    if not config.registry_path.exists():
        return []
    guardrails = platform_guardrails(config, lab.pm(config))
    with ExperimentStore.open(config.registry_path) as store:
        found = store.list()
    return [_experiment(e, guardrails, config.ledger_path) for e in found]


def stop_experiment(lab: Lab, name: str, *, reason: str, who: str) -> dict:
    """``ExperimentStore.stop`` (every unit sees control) with ``who`` as actor; the
    experiment after it. Already stopped: a ``LabError`` (409)."""
    from lab.experiments import ExperimentStore
    from lab.experiments.guardrails import platform_guardrails

    config = lab.config()
    if not config.registry_path.exists():
        raise NotFound(f"no experiment or flag {name!r}: this lab has no registry yet ({config.registry_path})")
    with ExperimentStore.open(config.registry_path) as store:
        before = store.get(name)
        after = store.stop(name, actor=who, reason=reason)
    lab.announce(events.EXPERIMENT_STOPPED, who, experiment=after.name, kind=after.kind, status=after.status,
                 weights=after.weights, old=before.weights, reason=reason)
    return _experiment(after, platform_guardrails(config, lab.pm(config)), config.ledger_path)


# -- monitoring --------------------------------------------------------------------------

MONITOR_SUMMARY = "monitor.json"  # lab.monitoring.monitor.SUMMARY, under the lab's data folder
def monitoring(lab: Lab) -> dict:
    """``lab monitor run``'s summary (``data/monitor.json``, None before one), the latest
    drift record per column, links to every HTML report in the data folder, and the rows
    the sidebar's plots draw, taken from those payloads (nothing is measured again here):

    - ``freshness``: one row per feature view of the summary's freshness check
      (``monitor_plots.freshness_rows``);
    - ``quality`` and ``quality_info``: live quality per version and window
      (``monitor_plots.quality_rows``).

    A ``monitor.json`` that is not JSON gives ``monitor`` None and ``monitor_error``
    saying how to write it again."""
    import json

    config = lab.config()
    summary_path = config.data_path / MONITOR_SUMMARY
    monitor, monitor_error = None, None
    if summary_path.is_file():
        try:
            monitor = json.loads(summary_path.read_text())
        except (OSError, ValueError) as exc:
            monitor_error = (f"{lab.relative(summary_path) or summary_path} could not be read ({exc}); "
                             "run `lab monitor run` to write it again")
        if monitor is not None and not isinstance(monitor, dict):
            monitor, monitor_error = None, (f"{summary_path.name} holds no JSON object; run `lab monitor run` "
                                            "to write it again")
    drift: dict[str, dict] = {}
    registry = lab.registry(config)
    if registry is not None:
        with registry:
            for row in registry.list_drift():  # oldest first: a later record of a column wins
                drift[row["column"]] = row
            quality, quality_info = quality_rows(monitor, registry, model=config.model_name)
    else:
        quality, quality_info = quality_rows(monitor, None, model=config.model_name)
    pages = sorted(config.data_path.glob("*.html")) if config.data_path.is_dir() else []
    reports = [{"name": page.stem, "url": lab.file_url(page)} for page in pages]
    return {"monitor": monitor, "monitor_error": monitor_error, "drift": list(drift.values()), "reports": reports,
            "freshness": freshness_rows(monitor), "quality": quality, "quality_info": quality_info}
