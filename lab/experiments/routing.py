"""Route each request to a model version by a flag, and follow the flag as it changes.

A flag (``lab experiment create NAME --flag --unit FIELD``) whose variants carry a payload
``{"model_version": N}`` (or ``{"alias": "champion"}``) decides, per unit (the value of
the request field the experiment names as its ``unit``), which registered version scores
the request. Assignment is the sticky hash of ``lab.experiments``: a unit keeps its
variant while the weights stand, and raising a variant's weight only moves units into it.
Turning a new version on for 10 % of traffic, ramping it, or rolling it back is
``lab experiment set-weights``: the server notices within ``refresh_s`` and swaps its
routing table, with no restart.

``FlagRouter`` implements ``lab.serving.routing.Router``, the protocol the model server
calls; the server itself knows nothing of experiments.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from lab.errors import ConfigError, LabError
from lab.experiments.assignment import Assigner
from lab.experiments.store import ExperimentStore
from lab.registry import Registry
from lab.serving.routing import Route

log = logging.getLogger("lab.experiments.routing")


@dataclass(frozen=True)
class _Table:
    store_version: int
    experiment: Any  # lab.experiments.Experiment
    assigner: Any  # lab.experiments.Assigner
    routes: dict[str, Route]


class FlagRouter:
    """Routing by flag for one model: a ``lab.serving.routing.Router``. ``refresh()``
    reloads when the flag store changed.

    ``load_model(version)`` loads a ``ModelVersion`` (the server passes its flavor
    loader); loaded models are cached by version number, so ramping weights loads
    nothing new. The routing table is replaced whole, so a request sees the old or
    the new table, never a mix.
    """

    def __init__(self, registry_path: Path, flag: str, model_name: str,
                 load_model: Callable[[Any], Any]):
        self.registry_path = Path(registry_path)
        self.flag = flag
        self.model_name = model_name
        self._load_model = load_model
        self._models: dict[int, Any] = {}
        self._table: _Table | None = None
        self._lock = threading.Lock()
        self.last_error: str | None = None
        # Requests and failures per variant since start: the error_rate guardrail's data.
        self.requests: dict[str, int] = {}
        self.errors: dict[str, int] = {}

    @property
    def experiment(self):
        return self._table.experiment if self._table else None

    @property
    def unit(self) -> str | None:
        """The request field whose value picks the variant (the experiment's ``unit``)."""
        return self._table.experiment.unit if self._table else None

    @property
    def control(self) -> str | None:
        """The control variant's name: where a unit outside the flag's share goes."""
        return self._table.experiment.control.name if self._table else None

    def refresh(self) -> bool:
        """Rebuild the table if the flag store changed since the last build; True if rebuilt.

        Raises ``LabError`` when the flag cannot be served (unknown flag, a variant with
        no model version); the previous table, if any, stays in use.
        """
        with self._lock:
            with ExperimentStore.open(self.registry_path) as store:
                version = store.version()
                if self._table is not None and self._table.store_version == version:
                    return False
                experiment = store.get(self.flag)
            routes: dict[str, Route] = {}
            with Registry.open(self.registry_path) as registry:
                for variant in experiment.variants:
                    model_version = self._resolve(registry, variant)
                    if model_version.version not in self._models:
                        self._models[model_version.version] = self._load_model(model_version)
                    routes[variant.name] = Route(variant.name, model_version, self._models[model_version.version])
            self._table = _Table(version, experiment, Assigner([experiment]), routes)
            self.last_error = None
            weights = {v.name: v.weight for v in experiment.variants}
            log.info("routing by flag %r (%s): %s", self.flag, experiment.status, weights)
            return True

    def _resolve(self, registry, variant):
        payload = variant.payload or {}
        if "model_version" in payload:
            try:
                number = int(payload["model_version"])
            except (TypeError, ValueError):
                raise ConfigError(f"flag {self.flag!r} variant {variant.name!r}: model_version must be a whole "
                                  f"number, got {payload['model_version']!r}") from None
            return registry.get_model_version(self.model_name, number)
        if "alias" in payload:
            found = registry.get_alias(self.model_name, str(payload["alias"]))
            if found is None:
                raise LabError(f"flag {self.flag!r} variant {variant.name!r}: model {self.model_name!r} has no "
                               f"alias {payload['alias']!r}")
            return found
        raise ConfigError(
            f"flag {self.flag!r} variant {variant.name!r} names no model: give it a payload "
            f"model_version=N or alias=NAME (lab experiment create ... --payload {variant.name}:model_version=N)"
        )

    def route(self, unit_id) -> tuple[Route, str]:
        """The route for ``unit_id`` and the flag's name. Before the first refresh: LabError."""
        table = self._table
        if table is None:
            raise LabError(f"flag {self.flag!r} is not loaded yet")
        variant = table.assigner.variant(self.flag, unit_id)
        if variant is None:  # outside the flag's share of its layer: control
            variant = table.experiment.control.name
        return table.routes[variant], self.flag

    def count(self, variant: str, *, failed: bool) -> None:
        self.requests[variant] = self.requests.get(variant, 0) + 1
        if failed:
            self.errors[variant] = self.errors.get(variant, 0) + 1

    def error_counts(self) -> dict[str, tuple[int, int]]:
        """``{variant: (failed requests, requests)}`` for the error_rate guardrail."""
        return {v: (self.errors.get(v, 0), n) for v, n in self.requests.items()}

    def check_guardrails(self, config, pm, ledger) -> list:
        """Check the platform guardrails on what this server saw; stop the flag if breached.

        Latency comes from the prediction ledger (flushed first), error rates from this
        process's counters. A breach stops the flag with all traffic to control (audited,
        with events); the next ``refresh`` then routes everything to control.
        """
        # scipy (the guardrail tests) loads only once a guardrail is checked
        from lab.experiments.guardrails import enforce_guardrails, guardrail_data_from_ledger, platform_guardrails

        experiment = self.experiment
        if experiment is None or experiment.status != "running":
            return []
        ledger.flush()
        guardrails = platform_guardrails(config, pm)
        data = guardrail_data_from_ledger(ledger.path, experiment, guardrails)
        data["error_rate"] = self.error_counts()
        with ExperimentStore.open(self.registry_path) as store:
            results = enforce_guardrails(store, pm, self.flag, data, guardrails, actor="lab serve")
        for result in results:
            if result.breached:
                log.warning("guardrail %s breached by %s of flag %r (p=%.3g): flag stopped, all traffic to %s",
                            result.guardrail, result.variant, self.flag, result.p_value, result.control)
        return results

    def routes(self) -> dict[str, Route]:
        """Variant name -> route, as of the last refresh."""
        table = self._table
        return dict(table.routes) if table else {}
