"""Feedback loops: how much a model's own decisions shape the data it will learn from.

A model that decides what is shown, approved or investigated produces the labels it later
learns from: what it never picks is never labelled, so it looks no worse, is picked even
less, and the loop closes on itself. Four numbers, per model and experiment over a window
of the prediction ledger, say how closed the loop is:

- **exploration share**: the share of the model's decisions made by exploration, not
  by the greedy choice. From what is recorded: each ledger row names the variant that
  served it and its time; the experiment's audit log (``store.audit``: start, every
  weight change, a bandit's allocations among them) gives the weights in force at that
  time. The *greedy* arm is the non-holdout variant with the largest weight then; a
  decision served by any other variant is exploration, and so is every decision made
  while the largest weight is shared (an even split is random assignment, not a
  choice). ``expected_exploration_share`` is the same from the weights alone (the mean
  of ``1 - w_greedy / sum w`` over the decisions); ``exploration_floor`` is the least a
  bandit loop keeps, ``(k - 1) * floor / (1 - holdout)`` for ``k`` arms (its saved
  floor, ``lab.experiments.bandit_loop``), and ``at_floor`` says the share is within two
  standard errors of it: the loop explores no more than it is forced to. A model served
  without an experiment makes every decision greedily: share 0.
- **coverage**: of units (distinct units the model decided for / distinct units seen,
  the unit being the request field the experiment assigns by) and of items or outputs
  (with ``item``, a request field: distinct items decided for / distinct items seen, or
  / ``items_known``; without, the scores: score buckets decided into / ``score_bins``).
- **diversity** of what was served: the normalized Shannon entropy ``H / ln K`` (1: all
  ``K`` categories equally often, 0: one only) and the Gini coefficient of the counts
  over the ``K`` categories (0: equal; ``1 - 1/K``: one only) of the model-served
  variants (``K``: the non-holdout variants), of items (``K``: items seen or known) and
  of score buckets (``K``: ``score_bins``).
- **holdout share**: the share of the traffic no model influences: rows served by a
  holdout variant (payload ``{"holdout": true}``, or ``holdout=`` names), next to the
  weight it was declared with.

A *decision* is a ledger row the model scored for a non-holdout variant; fallback rows
(the declared fallback, not the model) are seen but not decided. Everything is computed
from the rows given, so the same rows give the same report.

``feedback_report(rows, ...)`` computes one report from ledger rows (``read_predictions``);
``feedback_for(config, ...)`` reads the lab's ledger and experiment store over a window
and returns one per (model, experiment); ``write_feedback_summary`` writes them as JSON
(``data/feedback.json``) for ``lab monitor`` and dashboards; the model server's
``/metrics`` shows them as gauges (``plugins/litestar_serving/feedback_metrics.py``).
"""

from __future__ import annotations

import bisect
import datetime as dt
import json
import math
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from lab.atomic import atomic_write_text
from lab.errors import ConfigError, LabError
from lab.experiments.bandit_loop import holdout_variants, loop_state, moment
from lab.experiments.model import Experiment
from lab.experiments.store import ExperimentStore
from lab.serving.ledger import read_predictions

SUMMARY = "data/feedback.json"
"""Where ``write_feedback_summary`` writes, relative to the lab's root."""

TIE = 1e-12
"""Weights closer than this are a tie: no greedy arm."""


# -- diversity ----------------------------------------------------------------------------------

def normalized_entropy(counts: Sequence[float], k: int | None = None) -> float | None:
    """Shannon entropy of ``counts`` divided by ``ln k`` (``k``: the categories possible,
    default ``len(counts)``; those not in ``counts`` count 0). 1 when all ``k`` are equally
    frequent, 0 when one has everything; None when nothing was counted or ``k < 2``."""
    k = len(counts) if k is None else k
    total = math.fsum(counts)
    if total <= 0 or k < 2:
        return None
    h = -math.fsum((c / total) * math.log(c / total) for c in counts if c > 0)
    return max(0.0, min(1.0, h / math.log(k)))


def gini(counts: Sequence[float], k: int | None = None) -> float | None:
    """Gini coefficient of ``counts`` over ``k`` categories (missing ones count 0):
    ``sum |x_i - x_j| / (2 k^2 mean)``. 0 when all are equal, ``1 - 1/k`` when one has
    everything; None when nothing was counted."""
    k = len(counts) if k is None else k
    if k < len(counts):
        raise ConfigError(f"k ({k}) must be at least the number of counts ({len(counts)})")
    values = sorted([float(c) for c in counts] + [0.0] * (k - len(counts)))
    total = math.fsum(values)
    if total <= 0 or k == 0:
        return None
    # sum_i sum_j |x_i - x_j| = 2 sum_i (2i - k + 1) x_(i), i from 0, x sorted ascending
    spread = 2 * math.fsum((2 * i - k + 1) * x for i, x in enumerate(values))
    return max(0.0, spread / (2 * k * total))


@dataclass(frozen=True)
class Diversity:
    """The spread of one served distribution: ``categories`` possible (``K``), ``served``
    of them at least once, and ``counts`` per category (those served)."""

    of: str
    categories: int
    counts: dict[str, int]
    entropy: float | None
    gini: float | None

    @property
    def served(self) -> int:
        return sum(1 for c in self.counts.values() if c > 0)

    @property
    def coverage(self) -> float | None:
        return self.served / self.categories if self.categories else None

    def to_dict(self) -> dict:
        return {"of": self.of, "categories": self.categories, "served": self.served, "coverage": self.coverage,
                "entropy": self.entropy, "gini": self.gini, "counts": dict(self.counts)}


def diversity(of: str, counts: Mapping[Any, int], categories: int | None = None) -> Diversity:
    """``Diversity`` of ``counts`` over ``categories`` (default: the categories counted)."""
    k = len(counts) if categories is None else max(int(categories), len(counts))
    values = list(counts.values())
    return Diversity(of, k, {str(c): int(n) for c, n in counts.items()}, normalized_entropy(values, k),
                     gini(values, k) if k else None)


# -- the report -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class FeedbackReport:
    """One model's (and experiment's) feedback loop over a window of the ledger; see the
    module docstring for each number. Shares are fractions in [0, 1]; None where there
    was nothing to divide (``notes`` says why)."""

    model: str | None
    experiment: str | None
    since: str | None
    until: str | None
    n_rows: int
    n_fallback: int
    n_holdout: int
    n_decisions: int
    holdout: tuple[str, ...]
    holdout_share: float | None
    declared_holdout_share: float | None
    exploration_share: float | None
    expected_exploration_share: float | None
    exploration_floor: float | None
    at_floor: bool | None
    unit: str | None
    units_seen: int
    units_served: int
    unit_coverage: float | None
    item: str | None
    item_coverage: float | None
    variants: Diversity | None
    items: Diversity | None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        """JSON-safe: plain numbers, None for what could not be computed."""
        out = {name: getattr(self, name) for name in (
            "model", "experiment", "since", "until", "n_rows", "n_fallback", "n_holdout", "n_decisions",
            "holdout_share", "declared_holdout_share", "exploration_share", "expected_exploration_share",
            "exploration_floor", "at_floor", "unit", "units_seen", "units_served", "unit_coverage", "item",
            "item_coverage")}
        out["holdout"] = list(self.holdout)
        out["diversity"] = {"variants": self.variants.to_dict() if self.variants else None,
                            "items": self.items.to_dict() if self.items else None}
        out["notes"] = list(self.notes)
        return out

    def text(self) -> str:
        """A few lines for a terminal."""
        def pct(x: float | None) -> str:
            return "-" if x is None else f"{100 * x:.1f} %"

        def div(d: Diversity | None) -> str:
            if d is None:
                return "-"
            e = "-" if d.entropy is None else f"{d.entropy:.2f}"
            g = "-" if d.gini is None else f"{d.gini:.2f}"
            return f"entropy {e}, gini {g} ({d.served} of {d.categories} {d.of})"

        floor = ("" if self.exploration_floor is None else
                 f", floor {pct(self.exploration_floor)}{': at the floor' if self.at_floor else ''}")
        window = f"{self.since or 'start'} .. {self.until or 'now'}"
        lines = [
            f"feedback of model {self.model or '-'}" + (f", experiment {self.experiment}" if self.experiment else "")
            + f" ({window}): {self.n_rows} rows, {self.n_decisions} model decisions",
            f"  holdout      {pct(self.holdout_share)} (declared {pct(self.declared_holdout_share)})",
            f"  exploration  {pct(self.exploration_share)} (expected {pct(self.expected_exploration_share)}{floor})",
            f"  coverage     units {pct(self.unit_coverage)} ({self.units_served} of {self.units_seen}), "
            f"{self.items.of if self.items else 'items'} {pct(self.item_coverage)}",
            f"  diversity    variants: {div(self.variants)}; {self.items.of if self.items else 'items'}: "
            f"{div(self.items)}",
        ]
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def _weights_in(value: Any) -> dict | None:
    """The weights an audit row's value holds: a bare ``{variant: weight}``, one under
    ``"weights"``, or a created experiment's ``variants``."""
    if not isinstance(value, dict):
        return None
    if isinstance(value.get("variants"), list):
        try:
            return {v["name"]: float(v["weight"]) for v in value["variants"]}
        except (KeyError, TypeError, ValueError):
            return None
    weights = value.get("weights", value)
    if isinstance(weights, dict) and weights and all(
            isinstance(w, (int, float)) and not isinstance(w, bool) for w in weights.values()):
        return {k: float(w) for k, w in weights.items()}
    return None


def weights_timeline(experiment: Experiment, audit: Sequence[Mapping]) -> list[tuple[dt.datetime, dict]]:
    """The weights served over time, from the experiment's audit log: ``[(from, weights)]``
    in time order (create, start, every weight change and stop). Without an audit log:
    the current weights, from the beginning of time."""
    timeline: list[tuple[dt.datetime, dict]] = []
    for row in audit or ():
        if row.get("action") not in ("create", "start", "set_weights", "stop"):
            continue
        weights = _weights_in(row.get("new"))
        if weights is not None:
            timeline.append((moment(row["at"], "audit time"), weights))
    timeline.sort(key=lambda entry: entry[0])
    return timeline or [(dt.datetime.min, dict(experiment.weights))]


def _greedy(weights: Mapping[str, float], arms: Sequence[str]) -> tuple[str | None, float]:
    """The greedy arm among ``arms`` (None on a tie) and the share of the arms' weight
    that is not its: the chance a decision was exploration."""
    shares = [(weights.get(a, 0.0), a) for a in arms]
    total = math.fsum(w for w, _ in shares)
    if total <= 0:
        return None, 1.0
    top = max(w for w, _ in shares)
    leaders = [a for w, a in shares if top - w <= TIE]
    if len(leaders) > 1:
        return None, 1.0
    return leaders[0], 1.0 - top / total


def _buckets(scores: Sequence[float], bins: int) -> tuple[list[int], str]:
    """Each score's bucket of ``bins`` equal-width ones: over [0, 1] when every score is
    in it (probabilities), else over the scores' range."""
    lo, hi = (0.0, 1.0) if all(0.0 <= s <= 1.0 for s in scores) else (min(scores), max(scores))
    width = (hi - lo) / bins if hi > lo else 1.0
    return [min(bins - 1, max(0, int((s - lo) / width))) for s in scores], f"score buckets of [{lo:g}, {hi:g}]"


def _request_field(row: Mapping, unit: str | None) -> Any:
    if unit is None:
        return None
    value = (row.get("request") or {}).get(unit)
    return None if value is None or value == "" else value


def _scalar(value: Any) -> Any:
    """An item value usable as a key (lists and maps as their JSON text)."""
    return json.dumps(value, sort_keys=True) if isinstance(value, (list, dict)) else value


def feedback_report(
    rows: Iterable[Mapping],
    *,
    experiment: Experiment | None = None,
    audit: Sequence[Mapping] | None = None,
    unit: str | None = None,
    item: str | None = None,
    holdout: Iterable[str] | None = None,
    floor: float | None = None,
    score_bins: int = 10,
    items_known: int | None = None,
    model: str | None = None,
    since: str | None = None,
    until: str | None = None,
) -> FeedbackReport:
    """The feedback report of ledger ``rows`` (dicts as ``read_predictions`` gives them,
    read with ``include_fallbacks=True`` so that fallbacks count as seen).

    ``experiment``: the ``Experiment`` that routed them (None: rows routed by none, or
    unknown: then exploration is not computed, unless no row names a variant);
    ``audit``: its audit log (``store.audit(name)``) for the weights in force at each
    decision (None: its current weights throughout). ``unit``: the request field naming
    the unit (default the experiment's). ``item``: the request field naming the item or
    output decided on (None: score buckets). ``holdout``: holdout variant names
    (default: those declared ``{"holdout": true}``). ``floor``: each arm's least share of
    the experiment's traffic, for ``exploration_floor`` (default: none). ``score_bins``:
    the score buckets. ``items_known``: how many items exist (default: the items seen).
    ``model``, ``since``, ``until``: what the report says it covers.
    """
    if isinstance(score_bins, bool) or not isinstance(score_bins, int) or score_bins < 2:
        raise ConfigError(f"score_bins must be a whole number >= 2, got {score_bins!r}")
    if items_known is not None and (isinstance(items_known, bool) or not isinstance(items_known, int)
                                    or items_known < 1):
        raise ConfigError(f"items_known must be a whole number >= 1 (how many items exist), got {items_known!r}")
    rows = list(rows)
    notes: list[str] = []
    holdout_names: list[str] = []
    arms: list[str] = []
    if experiment is not None:
        if not isinstance(experiment, Experiment):
            raise ConfigError(f"experiment must be a lab.experiments.Experiment, got {type(experiment).__name__}")
        holdout_names = holdout_variants(experiment, holdout)
        arms = [v.name for v in experiment.variants if v.name not in holdout_names]
        unit = unit if unit is not None else experiment.unit
    elif holdout is not None:
        holdout_names = [holdout] if isinstance(holdout, str) else list(holdout)
    names = {r.get("experiment") for r in rows} - {None}
    if experiment is not None and names - {experiment.name}:
        raise ConfigError(f"rows of experiment(s) {', '.join(sorted(names - {experiment.name}))} given with "
                          f"experiment {experiment.name!r}; read one experiment's rows (read_predictions("
                          f"..., experiment={experiment.name!r}))")

    held = [r for r in rows if r.get("variant") in holdout_names]
    decided = [r for r in rows if r.get("variant") not in holdout_names and r.get("fallback") is None]
    n_fallback = sum(1 for r in rows if r.get("fallback") is not None)

    # exploration
    exploration = expected = exploration_floor = None
    at_floor = None
    routed = [r for r in decided if r.get("variant") is not None]
    if experiment is not None and decided:
        timeline = weights_timeline(experiment, audit or ())
        starts = [t for t, _ in timeline]
        choices = [_greedy(weights, arms) for _, weights in timeline]  # (greedy arm, chance of exploring)
        explored, chance = 0, 0.0
        for r in decided:
            at = 0 if len(starts) == 1 else bisect.bisect_right(starts, moment(r["at"], "ledger time")) - 1
            greedy, p = choices[max(0, at)]
            explored += r.get("variant") != greedy
            chance += p
        exploration, expected = explored / len(decided), chance / len(decided)
        if floor is not None:
            held_share = math.fsum(experiment.weights[n] for n in holdout_names)
            exploration_floor = min(1.0, (len(arms) - 1) * floor / (1 - held_share)) if held_share < 1 else None
        if exploration_floor is not None:
            slack = 3 * math.sqrt(max(exploration_floor * (1 - exploration_floor), 0.0) / len(decided))
            at_floor = exploration <= exploration_floor + slack
        if audit is None:
            notes.append("no audit log given: the current weights are taken as in force for every decision")
    elif decided and not routed:
        exploration = expected = 0.0
        notes.append("no experiment routes these decisions: each is the model's own, greedy choice")
    elif decided:
        notes.append("the rows name variants of an experiment not given: exploration needs its weights "
                     "(pass experiment= and audit=)")

    # holdout
    holdout_share = len(held) / len(rows) if rows else None
    declared = (math.fsum(experiment.weights[n] for n in holdout_names) if experiment is not None
                else None)

    # coverage of units
    seen_units = {u for u in (_request_field(r, unit) for r in rows) if u is not None}
    served_units = {u for u in (_request_field(r, unit) for r in decided) if u is not None}
    if unit is not None and rows and not seen_units:
        notes.append(f"no request carries the unit field {unit!r}: unit coverage not computed")
    unit_coverage = len(served_units) / len(seen_units) if seen_units else None

    # variants served by the model
    variant_diversity = None
    if arms or routed:
        counts = Counter(r.get("variant") for r in routed)
        categories = arms or sorted(counts)
        variant_diversity = diversity("variants", {a: counts.get(a, 0) for a in categories}
                                      | {v: n for v, n in counts.items() if v not in categories})

    # items or score buckets
    if item is not None:
        seen_items = {_scalar(v) for v in (_request_field(r, item) for r in rows) if v is not None}
        served = Counter(_scalar(v) for v in (_request_field(r, item) for r in decided) if v is not None)
        known = items_known if items_known is not None else len(seen_items)
        if rows and not seen_items:
            notes.append(f"no request carries the item field {item!r}: item coverage not computed")
        item_diversity = diversity(f"{item} values", served, known) if known else None
    else:
        scores = [float(r["score"]) for r in decided if r.get("score") is not None and math.isfinite(r["score"])]
        item_diversity = None
        if scores:
            buckets, what = _buckets(scores, score_bins)
            item_diversity = diversity(what, Counter(buckets), score_bins)
    item_coverage = item_diversity.coverage if item_diversity is not None else None
    if not rows:
        notes.append("no ledger rows in the window")
    return FeedbackReport(
        model=model, experiment=experiment.name if experiment is not None else (min(names) if names else None),
        since=since, until=until, n_rows=len(rows), n_fallback=n_fallback, n_holdout=len(held),
        n_decisions=len(decided), holdout=tuple(holdout_names), holdout_share=holdout_share,
        declared_holdout_share=declared, exploration_share=exploration, expected_exploration_share=expected,
        exploration_floor=exploration_floor, at_floor=at_floor, unit=unit, units_seen=len(seen_units),
        units_served=len(served_units), unit_coverage=unit_coverage, item=item, item_coverage=item_coverage,
        variants=variant_diversity, items=item_diversity, notes=notes)


# -- from a lab's files ----------------------------------------------------------------------------

def _iso_window(since: Any, until: Any) -> tuple[str | None, str | None]:
    """``since`` and ``until`` as the ledger's ISO 8601 UTC text (naive times are UTC)."""
    out = [None if t is None else moment(t, what).replace(tzinfo=dt.timezone.utc).isoformat(timespec="microseconds")
           for t, what in ((since, "since"), (until, "until"))]
    return out[0], out[1]


class _Experiments:
    """Experiments, their audit logs and their bandit loops' floors, read from the registry
    file once each."""

    def __init__(self, registry_path: str | os.PathLike | None):
        self.path = Path(registry_path) if registry_path is not None else None
        self.found: dict[str, tuple[Experiment, list, float | None] | None] = {}

    def get(self, name: str, *, required: bool = False) -> tuple[Experiment, list, float | None] | None:
        if name in self.found and (self.found[name] is not None or not required):
            return self.found[name]
        if self.path is None or not self.path.exists():
            if required:
                raise LabError(f"no registry at {self.path} to read experiment {name!r} from; "
                               "create it with `lab experiment create`")
            return None
        with ExperimentStore.open(self.path) as store:
            if not required and name not in {e.name for e in store.list()}:
                self.found[name] = None
                return None
            current = store.get(name)  # NotFound names `lab experiment status`
            audit = store.audit(name)
        saved = loop_state(self.path, name)
        self.found[name] = (current, audit, saved["floor"] if saved else None)
        return self.found[name]


def feedback_of_rows(rows: Iterable[Mapping], registry_path: str | os.PathLike | None = None, *,
                     model: str | None = None, experiment: str | None = None, since: Any = None, until: Any = None,
                     **options: Any) -> list[FeedbackReport]:
    """One report per (model, experiment) of ledger ``rows`` (read with
    ``include_fallbacks=True``); each experiment, its audit log and its bandit loop's
    floor come from the registry file at ``registry_path``. ``model``/``experiment``
    name what an empty window reports on; ``since``/``until`` what the reports say they
    cover. ``options`` go to ``feedback_report``."""
    since, until = _iso_window(since, until)
    return _reports(rows, _Experiments(registry_path), model, experiment, since, until, options)


def _reports(rows: Iterable[Mapping], experiments: _Experiments, model: str | None, experiment: str | None,
             since: str | None, until: str | None, options: dict) -> list[FeedbackReport]:
    groups: dict[tuple[str, str | None], list[Mapping]] = {}
    for row in rows:
        groups.setdefault((row["model_name"], row.get("experiment")), []).append(row)
    if not groups and (model is not None or experiment is not None):
        groups[(model, experiment)] = []
    reports = []
    for (model_name, name), group in sorted(groups.items(), key=lambda kv: (kv[0][0] or "", kv[0][1] or "")):
        known = experiments.get(name) if name is not None else None
        settings = dict(options)
        if known is not None and settings.get("floor") is None:
            settings["floor"] = known[2]
        report = feedback_report(group, experiment=known[0] if known else None, audit=known[1] if known else None,
                                 model=model_name, since=since, until=until, **settings)
        if name is not None and known is None:
            report.notes.append(f"experiment {name!r} is not in the registry {experiments.path}")
        reports.append(report)
    return reports


def feedback_from_files(
    ledger_path: str | os.PathLike,
    registry_path: str | os.PathLike | None = None,
    *,
    model: str | None = None,
    experiment: str | None = None,
    since: dt.datetime | str | None = None,
    until: dt.datetime | str | None = None,
    limit: int | None = None,
    **options: Any,
) -> list[FeedbackReport]:
    """One report per (model, experiment) in the ledger at ``ledger_path`` between
    ``since`` and ``until`` (inclusive; naive times are UTC), from its latest ``limit``
    rows if given; ``model`` and ``experiment`` narrow it. Each experiment, its audit
    log and its bandit loop's floor come from the registry file at ``registry_path``.
    ``options`` go to ``feedback_report`` (``unit``, ``item``, ``holdout``, ``floor``,
    ``score_bins``, ``items_known``). Raises LabError naming the fix for a missing ledger
    and for an ``experiment`` the store does not know."""
    since, until = _iso_window(since, until)
    experiments = _Experiments(registry_path)
    if experiment is not None:
        experiments.get(experiment, required=True)  # an unknown name fails before the ledger is read
    rows = read_predictions(ledger_path, model_name=model, experiment=experiment, since=since, until=until,
                            limit=limit, include_fallbacks=True)
    return _reports(rows, experiments, model, experiment, since, until, options)


def feedback_for(config_or_root: Any, *, window: dt.timedelta | None = None,
                 as_of: dt.datetime | str | None = None, **options: Any) -> list[FeedbackReport]:
    """``feedback_from_files`` for the lab ``config_or_root`` (a ``LabConfig`` or its
    folder): its ledger and registry. ``window`` (with ``as_of``, default now) sets
    ``since`` and ``until``; other ``options`` (``model``, ``experiment``, ``since``,
    ``until``, ``limit``, ``unit``, ``item``, ...) go through."""
    from lab.config import LabConfig, load_config

    config = config_or_root if isinstance(config_or_root, LabConfig) else load_config(config_or_root)
    if window is not None:
        if not isinstance(window, dt.timedelta) or window <= dt.timedelta(0):
            raise ConfigError(f"window must be a positive timedelta, got {window!r}")
        end = moment(as_of, "as_of") if as_of is not None else dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
        options.setdefault("since", end - window)
        options.setdefault("until", end)
    return feedback_from_files(config.ledger_path, config.registry_path, **options)


def feedback_summary(reports: Sequence[FeedbackReport]) -> dict:
    """The JSON summary of ``reports``: when it was made and each report's ``to_dict``."""
    return {"kind": "feedback", "generated_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "reports": [r.to_dict() for r in reports]}


def write_feedback_summary(config_or_root: Any, path: str | os.PathLike | None = None,
                           **options: Any) -> tuple[Path, dict]:
    """Compute ``feedback_for(config_or_root, **options)`` and write its summary atomically
    to ``path`` (default ``data/feedback.json`` under the lab's root; a relative path is
    taken from the root). Returns the path and the summary. The function ``lab monitor``
    calls."""
    from lab.config import LabConfig, load_config

    config = config_or_root if isinstance(config_or_root, LabConfig) else load_config(config_or_root)
    target = Path(path) if path is not None else Path(SUMMARY)
    target = target if target.is_absolute() else config.root / target
    if target.suffix != ".json":
        raise ConfigError(f"the feedback summary is JSON: {target} must end in .json")
    summary = feedback_summary(feedback_for(config, **options))
    atomic_write_text(target, json.dumps(summary, indent=2, sort_keys=True, allow_nan=False))
    return target, summary
