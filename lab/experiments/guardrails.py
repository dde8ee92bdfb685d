"""Guardrails: metrics every experiment must not make worse, and the automatic stop.

A guardrail is declared once for the whole platform, never per experiment:

- the built-ins ``latency_ms`` (a mean) and ``error_rate`` (a proportion), switched on by
  name in ``[tool.lab.experiments] guardrails``;
- any ``Guardrail`` a plugin returns from ``lab_guardrails(config)``.

``platform_guardrails`` collects them; every experiment is checked against all of them
and there is no opt-out. ``check_guardrails`` compares each treatment variant with
control, one-sided in the "worse" direction; ``enforce_guardrails`` stops an experiment
(all traffic back to control, audited, events emitted) when one is significantly worse.

The tests (in ``lab/experiments/_guardrail_stats.py``, built on ``lab.experiments.stats``)
are one-sided in the worse direction against control scaled by ``1 +/- tolerance``: with
``sequential=True`` the always-valid mixture SPRT, else fixed-horizon (Welch's t test for
means; the pooled two-proportion z test, or a Wald z test with a tolerance, for
proportions).

Guardrails are checked again and again as data arrives (the server checks every few
seconds), and a fixed-horizon test checked that way stops an unharmed experiment far
more often than ``alpha`` says. So the built-ins are sequential: their p-value is valid
at every look. A ``Guardrail`` is fixed-horizon unless it says ``sequential=True``; a
plugin's guardrail that is checked continuously should say so. The platform default
``guardrail_alpha = 0.01`` is stricter than the experiments' 0.05: a false stop costs
an experiment, never users. No correction is made across guardrails and variants: a
guardrail is a safety check and prefers sensitivity.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from lab import events
from lab.config import ExperimentsConfig
from lab.errors import ConfigError, LabError
from lab.experiments import _guardrail_stats as tests
from lab.serving.ledger import read_predictions

if TYPE_CHECKING:  # pragma: no cover
    from lab.config import LabConfig
    from lab.experiments.model import Experiment
    from lab.experiments.store import ExperimentStore

KINDS = ("mean", "proportion")
DIRECTIONS = ("increase", "decrease")


@dataclass(frozen=True)
class Guardrail:
    """A metric no experiment may make significantly worse.

    ``kind`` is "mean" (data: samples per variant) or "proportion" (data: ``(successes,
    trials)`` per variant, a success being the bad outcome, e.g. an error). ``worse`` says
    which direction hurts. ``tolerance`` is the relative change that is acceptable (0.05:
    up to 5 % worse than control is fine). ``alpha`` is the one-sided significance level;
    ``None`` takes ``[tool.lab.experiments] guardrail_alpha``.
    """

    name: str
    kind: str = "mean"
    worse: str = "increase"
    tolerance: float = 0.0
    alpha: float | None = None
    description: str = ""
    sequential: bool = False
    tau: float = 0.1

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise ConfigError(f"a guardrail needs a non-empty name, got {self.name!r}")
        if self.kind not in KINDS:
            raise ConfigError(f"guardrail {self.name!r}: kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if self.worse not in DIRECTIONS:
            raise ConfigError(
                f"guardrail {self.name!r}: worse must be one of {', '.join(DIRECTIONS)}, got {self.worse!r}"
            )
        tol = self.tolerance
        if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not 0 <= tol < 1:
            raise ConfigError(
                f"guardrail {self.name!r}: tolerance is a relative margin in [0, 1), got {tol!r} "
                "(0.05 means up to 5 % worse than control is acceptable)"
            )
        a = self.alpha
        if a is not None and (isinstance(a, bool) or not isinstance(a, (int, float)) or not 0 < a < 1):
            raise ConfigError(f"guardrail {self.name!r}: alpha must be in (0, 1), got {a!r}")
        if not isinstance(self.sequential, bool):
            raise ConfigError(f"guardrail {self.name!r}: sequential must be True or False, got {self.sequential!r}")
        t = self.tau
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not (t > 0 and math.isfinite(t)):
            raise ConfigError(
                f"guardrail {self.name!r}: tau is the sequential test's mixing scale relative to control "
                f"(0.1 = a 10 % change), a positive number; got {t!r}"
            )


# Built-in guardrails; [tool.lab.experiments] guardrails names the active ones. Latency
# allows 5 % because a mean over many requests makes a 1 ms change "significant". Both
# are sequential: the server and `lab experiment check` look again and again, and a fixed
# test checked at 10 looks falsely stopped 12 % of A/A experiments at alpha 0.05. tau is
# the size of regression each is tuned to: 20 % slower; 50 % more errors (error rates are
# small, and with tau 0.1 a doubling of 2 % over 2,000 requests a side went unseen).
BUILTIN_GUARDRAILS: dict[str, Guardrail] = {
    "latency_ms": Guardrail(
        "latency_ms", kind="mean", worse="increase", tolerance=0.05, sequential=True, tau=0.2,
        description="request latency in milliseconds (the prediction ledger's latency_ms)",
    ),
    "error_rate": Guardrail(
        "error_rate", kind="proportion", worse="increase", tolerance=0.0, sequential=True, tau=0.5,
        description="share of requests that failed",
    ),
}


def platform_guardrails(config: "LabConfig", pm: Any = None) -> list[Guardrail]:
    """Every guardrail of this lab, in order: the active built-ins, then each plugin's.

    Called before guardrails are checked; every experiment inherits all of them. ``alpha``
    left unset is filled from ``[tool.lab.experiments] guardrail_alpha``. Raises
    ``ConfigError`` for an unknown built-in name, a plugin returning something that is not
    a ``Guardrail``, or two guardrails with one name.
    """
    default_alpha = config.experiments.guardrail_alpha
    if isinstance(default_alpha, bool) or not 0 < default_alpha < 1:
        raise ConfigError(f"[tool.lab.experiments] guardrail_alpha must be in (0, 1), got {default_alpha!r}")
    found: list[Guardrail] = []
    for name in config.experiments.guardrails:
        if name not in BUILTIN_GUARDRAILS:
            raise ConfigError(
                f"[tool.lab.experiments] guardrails names {name!r}, which is not a built-in guardrail; "
                f"built-ins are {', '.join(BUILTIN_GUARDRAILS)} (plugins add others via lab_guardrails)"
            )
        found.append(BUILTIN_GUARDRAILS[name])
    if pm is not None:
        for batch in pm.hook.lab_guardrails(config=config):
            for item in batch or []:
                if not isinstance(item, Guardrail):
                    raise ConfigError(
                        f"a lab_guardrails hook returned {item!r}; return lab.experiments.guardrails.Guardrail objects"
                    )
                found.append(item)
    seen: set[str] = set()
    for g in found:
        if g.name in seen:
            raise ConfigError(
                f"guardrail {g.name!r} is declared twice (built-in list or lab_guardrails plugins); rename one"
            )
        seen.add(g.name)
    return [g if g.alpha is not None else dataclasses.replace(g, alpha=default_alpha) for g in found]


@dataclass(frozen=True)
class GuardrailResult:
    """One guardrail for one treatment variant against control.

    ``estimate`` is the relative change (variant / control - 1; None when control is 0),
    ``lift_ci`` its two-sided (1 - 2 alpha) delta-method interval (so the bound on the
    worse side matches the one-sided test), ``difference`` the absolute change.
    ``p_value`` is one-sided in the worse direction, None (with a ``note``) when there is
    not enough data. ``breached``: significantly worse than control by more than
    ``tolerance`` at ``alpha``.
    """

    guardrail: str
    variant: str
    control: str
    kind: str
    worse: str
    n_control: int
    n_variant: int
    control_value: float | None
    variant_value: float | None
    difference: float | None
    estimate: float | None
    lift_ci: tuple[float, float] | None
    p_value: float | None
    alpha: float
    tolerance: float
    breached: bool
    sequential: bool = False
    note: str = ""

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def _samples(guardrail: str, variant: str, values: Any) -> np.ndarray:
    try:
        arr = np.asarray(values, dtype=float).ravel()
    except (TypeError, ValueError):
        raise ConfigError(
            f"guardrail {guardrail!r}, variant {variant!r}: a mean guardrail takes a list of numbers"
        ) from None
    if not np.all(np.isfinite(arr)):
        raise ConfigError(f"guardrail {guardrail!r}, variant {variant!r}: samples contain NaN or infinity")
    return arr


def _counts(guardrail: str, variant: str, value: Any) -> tuple[int, int]:
    ok = (isinstance(value, (tuple, list)) and len(value) == 2
          and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in value))
    if not ok or not 0 <= value[0] <= value[1]:
        raise ConfigError(
            f"guardrail {guardrail!r}, variant {variant!r}: a proportion guardrail takes "
            f"(successes, trials) with 0 <= successes <= trials, got {value!r}"
        )
    return int(value[0]), int(value[1])


def check_guardrails(
    experiment: "Experiment",
    data: Mapping[str, Mapping[str, Any]],
    guardrails: Sequence[Guardrail],
) -> list[GuardrailResult]:
    """Compare every treatment variant with control on every guardrail.

    ``data[guardrail][variant]`` is a sequence of samples (mean guardrails) or
    ``(successes, trials)`` (proportion guardrails). A guardrail or variant missing from
    ``data`` gives a result with ``p_value=None`` and a note, never a breach. Data for a
    guardrail or variant the experiment does not have is a ``ConfigError``.
    Returns one result per (guardrail, treatment variant), in guardrail order.
    """
    names = [v.name for v in experiment.variants]
    control = names[0]
    declared = {g.name for g in guardrails}
    unknown = sorted(set(data) - declared)
    if unknown:
        raise ConfigError(
            f"data for guardrail(s) {', '.join(unknown)} that are not declared; declared: "
            f"{', '.join(sorted(declared)) or 'none'}"
        )
    for gname, per_variant in data.items():
        extra = sorted(set(per_variant) - set(names))
        if extra:
            raise ConfigError(
                f"guardrail {gname!r} has data for variant(s) {', '.join(extra)} that experiment "
                f"{experiment.name!r} does not have; its variants are {', '.join(names)}"
            )
    default_alpha = ExperimentsConfig().guardrail_alpha
    results: list[GuardrailResult] = []
    for g in guardrails:
        alpha = g.alpha if g.alpha is not None else default_alpha
        per_variant = data.get(g.name, {})
        if g.kind == "mean":
            parsed = {v: _samples(g.name, v, x) for v, x in per_variant.items()}
            summary = {v: (len(x), float(x.mean()) if len(x) else None) for v, x in parsed.items()}
        else:
            parsed = {v: _counts(g.name, v, x) for v, x in per_variant.items()}
            summary = {v: (n, s / n if n else None) for v, (s, n) in parsed.items()}
        for variant in names[1:]:
            n_c, c_val = summary.get(control, (0, None))
            n_v, v_val = summary.get(variant, (0, None))
            p, lift_ci = None, None
            if control not in parsed or variant not in parsed:
                note = f"no data for {control if control not in parsed else variant!r}"
            else:
                c, v = parsed[control], parsed[variant]
                note = tests.too_little(g.kind, c, v)
                if not note:
                    if g.sequential:
                        p, note = tests.sequential_p(g.kind, g.worse, g.tolerance, g.tau, c, v)
                    else:
                        p = tests.fixed_p(g.kind, g.worse, g.tolerance, alpha, c, v)
                    lift_ci = tests.lift_interval(g.kind, alpha, c, v)
            diff = v_val - c_val if c_val is not None and v_val is not None else None
            rel = diff / c_val if diff is not None and c_val != 0 else None
            results.append(GuardrailResult(
                guardrail=g.name, variant=variant, control=control, kind=g.kind, worse=g.worse,
                n_control=n_c, n_variant=n_v, control_value=c_val, variant_value=v_val,
                difference=diff, estimate=rel, lift_ci=lift_ci, p_value=p, alpha=alpha, tolerance=g.tolerance,
                breached=p is not None and p < alpha, sequential=g.sequential, note=note,
            ))
    return results


def _reason(breaches: Sequence[GuardrailResult]) -> str:
    parts = []
    for r in breaches:
        change = f"{r.estimate:+.1%}" if r.estimate is not None else f"{r.difference:+.4g}"
        parts.append(
            f"{r.guardrail} worse for {r.variant!r}: {change} vs {r.control!r} "
            f"(one-sided p={r.p_value:.2g} < alpha {r.alpha:g}, tolerance {r.tolerance:g})"
        )
    return "guardrail breached: " + "; ".join(parts)


def enforce_guardrails(
    store: "ExperimentStore",
    pm: Any,
    experiment_name: str,
    data: Mapping[str, Mapping[str, Any]],
    guardrails: Sequence[Guardrail],
    *,
    actor: str = "guardrail",
) -> list[GuardrailResult]:
    """Check a running experiment and stop it if any guardrail is breached.

    On a breach: the experiment is stopped with every unit back on control
    (``store.stop(..., to_control=True)``, which writes the audit row with the reason),
    then one ``guardrail.breached`` event per breached (guardrail, variant) and one
    ``experiment.stopped`` event are emitted through ``pm``. The stop is written before
    the events, so an observer that raises cannot leave traffic on the bad variant.
    An experiment that is not running is checked but never acted on, so calling this
    again after a stop does nothing new. Returns the results of ``check_guardrails``.
    """
    experiment = store.get(experiment_name)
    results = check_guardrails(experiment, data, guardrails)
    breaches = [r for r in results if r.breached]
    if not breaches or experiment.status != "running":
        return results
    reason = _reason(breaches)
    try:
        stopped = store.stop(experiment_name, actor=actor, reason=reason, to_control=True)
    except LabError:
        # Another process stopped it between our read and our write: its stop stands.
        if store.get(experiment_name).status == "running":
            raise
        return results
    for r in breaches:
        events.emit(pm, events.GUARDRAIL_BREACHED, experiment=experiment_name, guardrail=r.guardrail,
                    variant=r.variant, estimate=r.estimate, p=r.p_value, alpha=r.alpha)
    # The payload `lab experiment stop` emits, so observers need not tell the two apart.
    events.emit(pm, events.EXPERIMENT_STOPPED, experiment=experiment_name, kind=stopped.kind,
                status=stopped.status, weights=stopped.weights, old=experiment.weights, reason=reason)
    return results


def guardrail_data_from_ledger(
    ledger_path: Any,
    experiment: "Experiment",
    guardrails: Sequence[Guardrail] | None = None,
    *,
    since: str | None = None,
    until: str | None = None,
) -> dict[str, dict[str, Any]]:
    """Guardrail data for ``experiment`` from the prediction ledger, ready for ``check_guardrails``.

    Uses the rows the server routed by this experiment's flag (the ledger's ``experiment``
    and ``variant`` columns), within ``since``/``until`` (ISO 8601 UTC, inclusive).
    Returns ``{"latency_ms": {variant: [ms, ...]}}``, restricted to ``guardrails`` when
    given. The ledger records successful predictions only, so ``error_rate`` is not in it:
    failed requests must be counted where they fail.
    """
    names = {v.name for v in experiment.variants}
    latency: dict[str, list[float]] = {}
    for row in read_predictions(ledger_path, experiment=experiment.name, since=since, until=until):
        if row.get("variant") in names:
            latency.setdefault(row["variant"], []).append(float(row["latency_ms"]))
    data: dict[str, dict[str, Any]] = {"latency_ms": latency}
    if guardrails is not None:
        wanted = {g.name for g in guardrails}
        data = {k: v for k, v in data.items() if k in wanted}
    return data
