"""Feature assembly for one request: online rows + request-time features -> the model's input row.

``FeatureAssembler`` is what the model server (and anything else scoring one event at a
time) calls. For each feature view it reads the entity's row from the online store by
the key the request carries (``view.entity``), notes whether the entity was unknown
(its features are then defaults, and the response says so), and measures how old the
view's materialization is at the request's time. A ``RowBuilder`` supplied by the
feature plugin turns the request and those rows into the named model inputs, so the
request-time half of the feature definition lives in one place for training and
serving. The assembler then lays the values out in the model's column order.

The online values are used only where the offline point-in-time join at the request's
time could see them. They summarize source rows known at the view's watermark ``W``
(``e + label_delay <= W``), and the offline join at time ``t`` drops a row once
``t - (e + label_delay) > ttl``: so past ``t - W > ttl`` none of them is visible (the
newest could be known exactly at ``W``; an age of exactly ttl is still visible). A view
that old is served as if the entity were unknown: the builder gets None and the plugin's
defaults follow, which is what the offline join gives an entity with no visible rows;
``defaults`` and ``Freshness.stale`` both say so. A request dated before ``W`` (a
replay, or a clock behind the materialization) would read values built from its own
future; it gets the defaults too, flagged ``Freshness.future``. Replays belong to batch
scoring over the offline store, which computes every row as of its own time.

Nothing here knows about HTTP, Litestar or a particular model: the core stays free of
backends.
"""

from __future__ import annotations

import datetime as dt
import math
import threading
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from lab.errors import LabError
from lab.features.stores import OnlineStore
from lab.features.views import FeatureView

RowBuilder = Callable[[Mapping[str, Any], Mapping[str, "dict | None"]], Mapping[str, Any]]
"""``build(request, rows_by_view) -> {feature name: value}``: the model inputs for one request.
``rows_by_view`` maps each view name to the entity's online row, or None when unknown."""


_FLOAT32_MAX = float(np.finfo(np.float32).max)


class FeatureAssemblyError(LabError):
    """The features for a request could not be assembled (a store or definition problem,
    not the caller's input): a feature the model needs is missing or not a finite number."""


@dataclass(frozen=True)
class Freshness:
    """How old a view's values are at the request's time, and whether they may be used.

    ``age_seconds`` is request time minus the view's watermark (None when the view was
    never materialized); ``stale`` is True when that age exceeds the view's ttl (an age
    of exactly ttl is still fresh, as in the offline join) or the view was never
    materialized. ``future`` is True when the age is negative: the request is dated
    before the materialization, whose values may hold events after the request.
    ``usable`` is False in all those cases; the assembler then serves the defaults.
    ``breached`` is True when the view declares a freshness objective
    (``FeatureView.freshness``) and the age exceeds it, or the view was never materialized.
    """

    watermark: dt.datetime | None
    age_seconds: float | None
    stale: bool
    future: bool = False
    breached: bool = False

    @property
    def usable(self) -> bool:
        """The offline join at the request's time could see these values."""
        return not (self.stale or self.future)


@dataclass(frozen=True)
class AssembledFeatures:
    """The model inputs for one request and what the server reports about them."""

    features: dict[str, float]
    vector: np.ndarray  # float32, shape (1, n_features), in the model's column order
    defaults: dict[str, bool]  # view -> its features are the defaults (unknown, stale or future)
    freshness: dict[str, Freshness]


def _comparable(a: dt.datetime, b: dt.datetime) -> tuple[dt.datetime, dt.datetime]:
    # A naive time and an aware one cannot be subtracted. Features read wall-clock time
    # in whatever zone a value carries, so compare wall clocks when only one is aware.
    if (a.tzinfo is None) != (b.tzinfo is None):
        return a.replace(tzinfo=None), b.replace(tzinfo=None)
    return a, b


def freshness(view: FeatureView, watermark: dt.datetime | None, when: dt.datetime) -> Freshness:
    """The ``Freshness`` of ``view`` materialized as of ``watermark``, for a request at ``when``."""
    if watermark is None:
        return Freshness(None, None, True, False, view.freshness is not None)
    at, mark = _comparable(when, watermark)
    age = at - mark
    objective = view.freshness
    return Freshness(watermark, age.total_seconds(), age > view.ttl, age < dt.timedelta(0),
                     objective is not None and age > objective)


class FeatureAssembler:
    """Builds the model's input row for one request from the online store.

    ``views`` are the views whose entity keys the request carries; ``build_row`` is the
    feature plugin's request-time function; ``feature_names`` is the model's column
    order. Safe to call from several threads when the store is. ``counts()`` says how
    many requests got a view's defaults because its values were past the ttl or from
    the request's future.
    """

    def __init__(
        self,
        store: OnlineStore,
        views: Sequence[FeatureView],
        build_row: RowBuilder,
        feature_names: Sequence[str],
    ):
        self.store = store
        self.views = tuple(views)
        self.build_row = build_row
        self.feature_names = tuple(feature_names)
        self._lock = threading.Lock()
        self._counts = {"stale": 0, "future": 0}

    def counts(self) -> dict[str, int]:
        """Requests assembled since start that served some view's defaults because its
        values were past the ttl (``stale``; a view never materialized not included) or
        dated after the request (``future``). ``check()`` is not counted."""
        with self._lock:
            return dict(self._counts)

    def rows(
        self, request: Mapping[str, Any], when: dt.datetime
    ) -> tuple[dict[str, dict | None], dict[str, bool], dict[str, Freshness]]:
        """``(rows, defaults, freshness)`` by view name: the online rows the request may use.

        A view's row is None, and ``defaults`` True, when the store does not know the
        entity or the view's values are not usable at ``when`` (``Freshness.usable``):
        past the ttl, never materialized, or from the request's future. The point-in-time
        join at ``when`` sees none of those values either.
        """
        rows: dict[str, dict | None] = {}
        defaults: dict[str, bool] = {}
        fresh: dict[str, Freshness] = {}
        # One store call for all the views: each view's row with the watermark of its
        # materialization. Read even when unusable: a store problem (a view redefined
        # since it was materialized) must show at start-up (``check``), whatever the time.
        found = self.store.read_views_with_watermark([(view, request[view.entity]) for view in self.views])
        for view, (row, watermark) in zip(self.views, found):
            state = freshness(view, watermark, when)
            if not state.usable:
                row = None
            rows[view.name] = row
            defaults[view.name] = row is None
            fresh[view.name] = state
        return rows, defaults, fresh

    def assemble(self, request: Mapping[str, Any], when: dt.datetime) -> AssembledFeatures:
        """The features for ``request`` (holding every view's entity key) at time ``when``.

        A view whose values are unusable at ``when`` (see ``rows``) gets the defaults,
        flagged in ``defaults`` and ``freshness``. Raises ``FeatureAssemblyError`` when
        the builder does not produce a feature the model needs or produces a value that
        is not a finite number; store errors (``LabError``) pass through.
        """
        assembled = self._assemble(request, when)
        self.count(assembled)
        return assembled

    def assemble_many(self, requests: Sequence[Mapping[str, Any]], whens: Sequence[dt.datetime], *,
                      count: bool = True) -> list[AssembledFeatures]:
        """``assemble`` for several requests at once, equal to it request by request: one
        store call per view for all of them (``read_many_with_watermark``, when the store
        has it; else one call per request as ``assemble`` makes). Raises the first error
        any request meets, having counted nothing: the caller can then score the requests
        one by one, each meeting its own error. With ``count`` False nothing is counted
        (``counts()``) until the caller passes each result to ``count``."""
        read_many = getattr(self.store, "read_many_with_watermark", None)
        if read_many is None:
            read = self.store.read_with_watermark
            read_many = lambda view, keys: list(zip(*[read(view, k) for k in keys]))  # noqa: E731
        per_view = []
        for view in self.views:
            rows, watermark = read_many(view, [request[view.entity] for request in requests])
            per_view.append((view, rows, watermark))
        out = []
        for i, (request, when) in enumerate(zip(requests, whens)):
            rows_by_view: dict[str, dict | None] = {}
            defaults: dict[str, bool] = {}
            fresh: dict[str, Freshness] = {}
            for view, rows, watermark in per_view:
                mark = watermark[i] if isinstance(watermark, (list, tuple)) else watermark
                state = freshness(view, mark, when)
                row = rows[i] if state.usable else None
                rows_by_view[view.name] = row
                defaults[view.name] = row is None
                fresh[view.name] = state
            out.append(self._build(request, rows_by_view, defaults, fresh))
        if count:
            for assembled in out:
                self.count(assembled)
        return out

    def count(self, assembled: AssembledFeatures) -> None:
        """Count ``assembled`` in ``counts()`` (``assemble`` does it itself)."""
        states = assembled.freshness.values()
        stale = any(f.stale and f.watermark is not None for f in states)
        future = any(f.future for f in states)
        if stale or future:
            with self._lock:
                self._counts["stale"] += stale
                self._counts["future"] += future

    def without_store(self, request: Mapping[str, Any]) -> AssembledFeatures:
        """The features for ``request`` with no online store call: every view's row None,
        so the feature plugin's ``RowBuilder`` serves each view's declared defaults (what
        it gives an unknown entity: ``FeatureView.defaults``, the point-in-time join's
        answer for an entity with no visible rows), and request-time features as usual.
        Every view is flagged in ``defaults``; its ``Freshness`` has no watermark or age
        (unknown, not stale). For a store that is unavailable or slower than its budget,
        when the model spec opts in (``ModelSpec.on_store_outage = "feature_defaults"``).
        Not counted in ``counts()``. Raises ``FeatureAssemblyError`` as ``assemble`` does."""
        rows = {view.name: None for view in self.views}
        defaults = {view.name: True for view in self.views}
        unknown = Freshness(None, None, False)
        return self._build(request, rows, defaults, {view.name: unknown for view in self.views})

    def assemble_or_defaults(self, request: Mapping[str, Any],
                             when: dt.datetime) -> tuple[AssembledFeatures, BaseException | None]:
        """``(assembled, None)`` as ``assemble`` gives; or, when a store read raises,
        ``(without_store(request), the error)``. A bad feature the builder makes still
        raises ``FeatureAssemblyError``: that is a definition problem, not an outage."""
        try:
            read = self.rows(request, when)
        except Exception as exc:  # noqa: BLE001 - whatever a store raises, it is unavailable
            return self.without_store(request), exc
        assembled = self._build(request, *read)
        self.count(assembled)
        return assembled, None

    def _assemble(self, request: Mapping[str, Any], when: dt.datetime) -> AssembledFeatures:
        return self._build(request, *self.rows(request, when))

    def _build(self, request: Mapping[str, Any], rows: dict[str, dict | None], defaults: dict[str, bool],
               fresh: dict[str, Freshness]) -> AssembledFeatures:
        built = self.build_row(request, rows)
        names = self.feature_names
        try:
            values = [float(built[name]) for name in names]
        except (KeyError, TypeError, ValueError, OverflowError):
            values = None
        # A NaN or an infinity makes the sum one; then the range the float32 row can hold.
        if values is None or not (math.isfinite(sum(values)) and -_FLOAT32_MAX <= min(values, default=0.0)
                                  and max(values, default=0.0) <= _FLOAT32_MAX):
            values = self._checked(built)
        vector = np.array(values, dtype=np.float32).reshape(1, -1)
        return AssembledFeatures(dict(zip(names, values)), vector, defaults, fresh)

    def _checked(self, built: Mapping[str, Any]) -> list[float]:
        """The model's inputs from ``built`` one by one, raising ``FeatureAssemblyError``
        for the first that is missing or not a finite number."""
        features: dict[str, float] = {}
        for name in self.feature_names:
            if name not in built:
                raise FeatureAssemblyError(
                    f"the model needs feature {name!r} but the feature plugin produced only "
                    f"{', '.join(built)}; retrain, or serve a model trained on these features"
                )
            value = built[name]
            try:
                number = float(value)
            except (TypeError, ValueError, OverflowError):
                number = math.nan
            if not math.isfinite(number):
                raise FeatureAssemblyError(f"feature {name!r} is {value!r}, not a finite number")
            if abs(number) > _FLOAT32_MAX:
                raise FeatureAssemblyError(f"feature {name!r} is {value!r}, beyond the float32 range the "
                                           f"model's input row holds (±{_FLOAT32_MAX:.4g})")
            features[name] = number
        return list(features.values())

    def check(self, sample_request: Mapping[str, Any], when: dt.datetime) -> list[str]:
        """Problems that would make every request like ``sample_request`` fail, as
        sentences (a feature the model needs that cannot be built, a store error).
        An empty list means such a request can be served."""
        try:
            self._assemble(sample_request, when)
        except LabError as exc:
            return [str(exc)]
        return []

    def warnings(self) -> list[str]:
        """Problems that flag every response without failing it: a view never materialized
        (its features are defaults for every entity)."""
        out = []
        for view in self.views:
            try:
                if self.store.watermark(view) is None:
                    out.append(f"feature view {view.name!r} was never materialized, so every request "
                               "gets its defaults; run the materialize stage (`lab run materialize`)")
            except LabError as exc:
                out.append(str(exc))
        return out
