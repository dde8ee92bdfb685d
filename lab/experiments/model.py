"""What a flag or an experiment is: named variants with weights, a layer and a share of it.

An ``Experiment`` checks itself when it is built, so an invalid one never exists: a
``ConfigError`` names the field and the fix. ``kind="flag"`` is the same object with a
lighter rule (one variant is enough); flags route traffic, experiments are analysed.

Buckets: assignment hashes a unit into one of ``BUCKETS`` (10,000) buckets, so weights
take effect in steps of 0.01 % and a layer share is a bucket range ``[start, end)``.
Each variant owns explicit variant-bucket ranges (``Experiment.buckets``), stored with
the experiment. A weight change moves as few buckets as it can (``rebalance``): a unit
changes variant only out of an arm that shrank and into one that grew; the pure bucket
arithmetic lives in ``lab/experiments/buckets.py``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from lab.errors import ConfigError
# BUCKETS is imported from here by the rest of the package, so it stays a name of this module.
from lab.experiments.buckets import BUCKETS, Ranges, apportion, merge, rebalance, span  # noqa: F401

KINDS = ("experiment", "flag")
STATUSES = ("draft", "running", "stopped")
METRIC_KINDS = ("proportion", "mean")
WEIGHT_TOLERANCE = 1e-9
"""How far the weights' sum may be from 1 (floating-point sums of 0.1s are not exact)."""


def _identifier(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value.isidentifier():
        raise ConfigError(
            f"{what} must be an identifier (letters, digits, underscore; not starting with a digit), "
            f"got {value!r}"
        )
    return value


DEFAULT_LAYER = "default"
FLAG_LAYER_PREFIX = "flag:"
"""A flag created without a layer gets one of its own: ``flag:<its name>``."""


def _layer(value: Any, name: str, kind: str, where: str) -> str:
    if value == "":
        return f"{FLAG_LAYER_PREFIX}{name}" if kind == "flag" else DEFAULT_LAYER
    bare = value[len(FLAG_LAYER_PREFIX):] if isinstance(value, str) and value.startswith(FLAG_LAYER_PREFIX) else value
    if not isinstance(bare, str) or not bare.isidentifier():
        raise ConfigError(f"layer of {where} must be an identifier, or flag:<identifier> for a flag's own "
                          f"layer, got {value!r}; leave it out for the default ({DEFAULT_LAYER!r} for an "
                          "experiment, flag:<name> for a flag)")
    return value


def _probability(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 < float(value) < 1:
        raise ConfigError(f"{what} must be a number strictly between 0 and 1, got {value!r}")
    return float(value)


def _weight(value: Any, variant: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(float(value)):
        raise ConfigError(f"weight of variant {variant!r} must be a finite number, got {value!r}")
    if value < 0:
        raise ConfigError(f"weight of variant {variant!r} is {value}; weights must be >= 0")
    return float(value)


def parse_named_numbers(text: str, where: str, example: str) -> dict[str, float]:
    """``"a=0.1,b=0.2"`` as ``{"a": 0.1, "b": 0.2}``, in order (CLI weights and rates). A part
    that is not ``name=number``, or a name given twice, is a ConfigError quoting ``where``."""
    numbers: dict[str, float] = {}
    for part in [p.strip() for p in text.split(",") if p.strip()] or [""]:
        name, sep, value = part.partition("=")
        name = name.strip()
        try:
            number = float(value) if sep else None
        except ValueError:
            number = None
        if number is None or not name:
            raise ConfigError(f"cannot read {part!r} in {where}; {example}")
        if name in numbers:
            raise ConfigError(f"variant {name!r} appears twice in {where}; name each variant once")
        numbers[name] = number
    return numbers


def check_weights_sum(weights: Mapping[str, float], where: str) -> None:
    """Raise a ConfigError unless the weights sum to 1 (within ``WEIGHT_TOLERANCE``)."""
    total = math.fsum(weights.values())
    if abs(total - 1.0) > WEIGHT_TOLERANCE:
        shown = ", ".join(f"{k}={v:g}" for k, v in weights.items())
        raise ConfigError(
            f"weights of {where} sum to {total:.10g}, not 1 ({shown}); "
            "give fractions that add up to 1, e.g. control=0.9,treatment=0.1"
        )


@dataclass(frozen=True)
class Variant:
    """One arm: a name, its share of the experiment's traffic, and what it means to the
    caller (``payload``, e.g. ``{"model_version": 3}``; JSON values)."""

    name: str
    weight: float
    payload: dict = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        _identifier(self.name, "variant name")
        object.__setattr__(self, "weight", _weight(self.weight, self.name))
        if self.payload is None:
            object.__setattr__(self, "payload", {})
        if not isinstance(self.payload, dict) or not all(isinstance(k, str) for k in self.payload):
            raise ConfigError(f"payload of variant {self.name!r} must be a dict with string keys, "
                              f"got {self.payload!r}")
        try:
            json.dumps(self.payload, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"payload of variant {self.name!r} must hold JSON values "
                              f"(str, number, bool, list, dict): {exc}") from None

    def to_dict(self) -> dict:
        return {"name": self.name, "weight": self.weight, "payload": dict(self.payload)}


@dataclass(frozen=True)
class Experiment:
    """A flag or an experiment. ``variants[0]`` is control.

    ``salt`` (default: the name) seeds the variant hash, so two experiments with
    different salts split units independently. ``layer_share`` is the bucket range
    ``[start, end)`` of the layer this experiment owns; experiments of one layer own
    disjoint ranges, so a unit is in at most one of them. ``layer`` left empty is
    ``"default"`` for an experiment and ``"flag:<name>"`` for a flag, so a flag that
    takes all of its traffic never blocks the experiments of the default layer.

    ``buckets`` maps each variant to the variant-bucket ranges it owns, together exactly
    ``[0, BUCKETS)``. Left out, they are laid out from the weights (``initial_buckets``);
    ``with_weights`` moves them minimally (``rebalance``) and the store keeps them.
    """

    name: str
    variants: tuple[Variant, ...]
    layer: str = ""
    salt: str = ""
    kind: str = "experiment"
    status: str = "draft"
    unit: str = "unit_id"
    layer_share: tuple[int, int] = (0, BUCKETS)
    metric: str = "conversion"
    metric_kind: str = "proportion"
    alpha: float = 0.05
    power: float = 0.8
    mde: float | None = None
    baseline: float | None = None
    buckets: Mapping[str, Ranges] | None = field(default=None, hash=False)

    def __post_init__(self) -> None:
        _identifier(self.name, "experiment name")
        where = f"experiment {self.name!r}"
        if self.kind not in KINDS:
            raise ConfigError(f"kind of {where} must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if self.status not in STATUSES:
            raise ConfigError(f"status of {where} must be one of {', '.join(STATUSES)}, got {self.status!r}")
        variants = self.variants
        if isinstance(variants, (str, bytes, Mapping)) or not isinstance(variants, (list, tuple)):
            raise ConfigError(f"variants of {where} must be a list of Variant, got {type(variants).__name__}")
        if not all(isinstance(v, Variant) for v in variants):
            raise ConfigError(f"variants of {where} must be Variant objects (lab.experiments.Variant)")
        object.__setattr__(self, "variants", tuple(variants))
        least = 1 if self.kind == "flag" else 2
        if len(self.variants) < least:
            raise ConfigError(
                f"{where} has {len(self.variants)} variant(s); an experiment needs at least 2 "
                "(control first, then treatments); use kind='flag' for a single-variant flag"
            )
        names = [v.name for v in self.variants]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ConfigError(f"{where} names variant(s) {', '.join(duplicates)} more than once; "
                              "variant names must be unique")
        check_weights_sum(self.weights, where)
        object.__setattr__(self, "layer", _layer(self.layer, self.name, self.kind, where))
        _identifier(self.unit, f"unit of {where}")
        _identifier(self.metric, f"metric of {where}")
        if self.salt == "":
            object.__setattr__(self, "salt", self.name)  # stored explicitly: a rename keeps assignments
        if not isinstance(self.salt, str) or "\x00" in self.salt:
            raise ConfigError(f"salt of {where} must be a string without NUL characters, got {self.salt!r}")
        object.__setattr__(self, "layer_share", _share(self.layer_share, where))
        if self.metric_kind not in METRIC_KINDS:
            raise ConfigError(f"metric_kind of {where} must be one of {', '.join(METRIC_KINDS)}, "
                              f"got {self.metric_kind!r}")
        object.__setattr__(self, "alpha", _probability(self.alpha, f"alpha of {where}"))
        object.__setattr__(self, "power", _probability(self.power, f"power of {where}"))
        for name in ("mde", "baseline"):
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
                raise ConfigError(f"{name} of {where} must be a finite number or None, got {value!r}")
            object.__setattr__(self, name, float(value))
        if self.mde is not None and self.mde <= 0:
            raise ConfigError(f"mde of {where} must be > 0 (the smallest effect worth detecting), got {self.mde}")
        object.__setattr__(self, "buckets", _check_buckets(self.buckets, self.variants, where))

    @property
    def control(self) -> Variant:
        return self.variants[0]

    @property
    def weights(self) -> dict[str, float]:
        """``{variant name: weight}`` in declaration order."""
        return {v.name: v.weight for v in self.variants}

    def variant(self, name: str) -> Variant:
        for v in self.variants:
            if v.name == name:
                return v
        raise ConfigError(f"experiment {self.name!r} has no variant {name!r}; "
                          f"variants: {', '.join(v.name for v in self.variants)}")

    def with_weights(self, weights: Mapping[str, float]) -> "Experiment":
        """A copy with new weights; ``weights`` must name every variant, and only those.

        Its buckets move minimally: a variant whose weight is unchanged keeps exactly its
        buckets, one that shrinks gives up buckets, one that grows takes them (``rebalance``).
        """
        if not isinstance(weights, Mapping):
            raise ConfigError(f"weights must be a dict of variant name to weight, got {type(weights).__name__}")
        names = [v.name for v in self.variants]
        unknown = [k for k in weights if k not in names]
        missing = [n for n in names if n not in weights]
        if unknown or missing:
            problems = ([f"unknown variant(s) {', '.join(map(repr, unknown))}"] if unknown else []) + (
                [f"missing {', '.join(missing)}"] if missing else [])
            raise ConfigError(f"weights for experiment {self.name!r}: {'; '.join(problems)}; "
                              f"name every variant once: {', '.join(names)}")
        variants = tuple(dataclasses.replace(v, weight=weights[v.name]) for v in self.variants)
        check_weights_sum({v.name: v.weight for v in variants}, f"experiment {self.name!r}")
        return dataclasses.replace(self, variants=variants, buckets=rebalance(self.buckets, _targets(self, variants)))

    def with_status(self, status: str) -> "Experiment":
        return dataclasses.replace(self, status=status)

    def to_dict(self) -> dict:
        """Plain JSON-ready fields (``variants`` as dicts, ``layer_share`` and the bucket
        ranges as lists)."""
        out = dataclasses.asdict(self)
        out["variants"] = [v.to_dict() for v in self.variants]
        out["layer_share"] = list(self.layer_share)
        out["buckets"] = {name: [list(r) for r in ranges] for name, ranges in self.buckets.items()}
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Experiment":
        """The inverse of ``to_dict``; unknown keys are a ConfigError naming the known ones."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown experiment field(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        values = dict(data)
        raw = values.get("variants", ())
        if not isinstance(raw, (list, tuple)):
            raise ConfigError(f"variants must be a list, got {type(raw).__name__}")
        try:
            values["variants"] = tuple(v if isinstance(v, Variant) else Variant(**v) for v in raw)
        except TypeError as exc:
            raise ConfigError(f"a variant must have a name, a weight and optionally a payload: {exc}") from None
        if "layer_share" in values:
            values["layer_share"] = tuple(values["layer_share"])
        return cls(**values)


def check_plan(metric_kind: str, alpha: Any, power: Any, mde: Any, baseline: Any, *,
               names: Mapping[str, str] | None = None) -> None:
    """Refuse a plan that cannot be: alpha or power outside (0, 1), power not above alpha,
    an mde that is not a positive number, a proportion's baseline outside (0, 1), or a
    baseline + mde that is no longer a rate. ``names`` says how each field is called in
    the messages (the CLI passes ``--alpha`` and so on); the default is the field name.

    ``Experiment`` itself accepts such plans, so that experiments stored before this
    check still load; ``ExperimentStore.create`` and ``lab experiment create`` refuse
    them, so the error comes at create and not in the report.
    """
    n = {key: key for key in ("alpha", "power", "mde", "baseline")}
    n.update(names or {})

    def real(value: Any) -> float | None:
        ok = not isinstance(value, bool) and isinstance(value, numbers.Real) and math.isfinite(float(value))
        return float(value) if ok else None

    a, p = real(alpha), real(power)
    if a is None or not 0 < a < 1:
        raise ConfigError(f"{n['alpha']} must be a number strictly between 0 and 1 (the false-positive rate, "
                          f"e.g. 0.05), got {alpha!r}")
    if p is None or not 0 < p < 1:
        raise ConfigError(f"{n['power']} must be a number strictly between 0 and 1 (the chance to detect the "
                          f"mde when it is real, e.g. 0.8), got {power!r}")
    if p <= a:
        raise ConfigError(f"{n['power']} {p:g} is not above {n['alpha']} {a:g}: power is the chance to detect the "
                          "mde when it is real and must exceed the false-positive rate (e.g. 0.8)")
    d = None if mde is None else real(mde)
    if mde is not None and (d is None or d <= 0):
        raise ConfigError(f"{n['mde']} must be a positive number (the smallest absolute effect worth detecting, "
                          f"e.g. 0.01 for one percentage point), got {mde!r}")
    b = None if baseline is None else real(baseline)
    if baseline is not None and b is None:
        raise ConfigError(f"{n['baseline']} must be a finite number, got {baseline!r}")
    if metric_kind != "proportion":
        return
    if b is not None and not 0 < b < 1:
        raise ConfigError(f"{n['baseline']} must be a conversion rate strictly between 0 and 1 for a proportion "
                          f"metric (e.g. 0.1 for 10 %), got {baseline!r}")
    if d is not None and d >= 1:
        raise ConfigError(f"{n['mde']} of a proportion metric is an absolute change in the rate, below 1 "
                          f"(e.g. 0.01 for one percentage point), got {mde!r}")
    if d is not None and b is not None and b + d >= 1:
        raise ConfigError(f"{n['mde']} {d:g} on {n['baseline']} {b:g} plans for a rate of {b + d:g}, and a rate "
                          f"stays below 1: lower {n['mde']}")


def _share(value: Any, where: str) -> tuple[int, int]:
    ok = isinstance(value, (tuple, list)) and len(value) == 2 and all(
        isinstance(b, int) and not isinstance(b, bool) for b in value)
    if not ok or not 0 <= value[0] < value[1] <= BUCKETS:
        raise ConfigError(
            f"layer_share of {where} must be two whole numbers (start, end) with "
            f"0 <= start < end <= {BUCKETS}, got {value!r}; e.g. (0, 5000) is half the layer"
        )
    return (value[0], value[1])


def free_ranges(taken: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The parts of ``[0, BUCKETS)`` that no range in ``taken`` covers, in order."""
    free, cursor = [], 0
    for start, end in sorted(taken):
        if start > cursor:
            free.append((cursor, start))
        cursor = max(cursor, end)
    if cursor < BUCKETS:
        free.append((cursor, BUCKETS))
    return free


# -- variant buckets: a new experiment's layout, a change's targets, explicit ranges checked --

def initial_buckets(variants: Sequence[Variant]) -> dict[str, Ranges]:
    """A new experiment's layout: the treatments from bucket 0 upwards in declaration
    order, control at the top, each with ``apportion`` of its weight."""
    counts = dict(zip((v.name for v in variants), apportion([v.weight for v in variants])))
    laid, start = {}, 0
    for v in [*variants[1:], variants[0]]:
        end = start + counts[v.name]
        laid[v.name] = ((start, end),) if end > start else ()
        start = end
    return {v.name: laid[v.name] for v in variants}


def _targets(current: "Experiment", variants: Sequence[Variant]) -> dict[str, int]:
    """How many buckets each of the new ``variants`` should own: an unchanged weight keeps
    its count; the rest of the buckets are apportioned over the changed weights."""
    old = {v.name: v.weight for v in current.variants}
    kept = {v.name: span(current.buckets[v.name]) for v in variants if v.weight == old[v.name]}
    changed = [v for v in variants if v.name not in kept]
    room = BUCKETS - sum(kept.values())
    if room and not math.fsum(v.weight for v in changed):  # only float dust left to place: start over
        return dict(zip(old, apportion([v.weight for v in variants])))
    return {**kept, **dict(zip((v.name for v in changed), apportion([v.weight for v in changed], room)))}


def _check_buckets(value: Any, variants: Sequence[Variant], where: str) -> dict[str, Ranges]:
    """The explicit bucket ranges, checked: every variant named, ranges of whole numbers
    inside ``[0, BUCKETS)``, disjoint, covering all of it, and each variant's count within
    rounding of its weight. None lays them out from the weights."""
    if value is None:
        return initial_buckets(variants)
    fix = "leave buckets out to lay them out from the weights"
    names = [v.name for v in variants]
    if not isinstance(value, Mapping) or set(value) != set(names):
        raise ConfigError(f"buckets of {where} must map every variant ({', '.join(names)}) to its "
                          f"bucket ranges, got {value!r}; {fix}")
    out: dict[str, Ranges] = {}
    for v in variants:
        raw = value[v.name]
        ok = isinstance(raw, (list, tuple)) and all(
            isinstance(r, (list, tuple)) and len(r) == 2 and all(isinstance(b, int) and not isinstance(b, bool)
                                                                 for b in r) and 0 <= r[0] < r[1] <= BUCKETS
            for r in raw)
        if not ok:
            raise ConfigError(f"buckets of variant {v.name!r} in {where} must be ranges [start, end) with "
                              f"0 <= start < end <= {BUCKETS}, got {raw!r}; {fix}")
        out[v.name] = tuple(merge([(r[0], r[1]) for r in raw]))
        # Rounding, and unchanged arms keeping their count, leave a count within one
        # bucket per variant of its exact share.
        if abs(span(out[v.name]) - v.weight * BUCKETS) > len(variants) or (v.weight == 0 and out[v.name]):
            raise ConfigError(f"variant {v.name!r} of {where} owns {span(out[v.name])} buckets but its weight "
                              f"{v.weight:g} asks for {v.weight * BUCKETS:g}; {fix}")
    everything = sorted(r for ranges in out.values() for r in ranges)
    if span(everything) != BUCKETS or any(a[1] > b[0] for a, b in zip(everything, everything[1:])):
        raise ConfigError(f"buckets of {where} must cover 0-{BUCKETS} once, without overlaps; {fix}")
    return out
