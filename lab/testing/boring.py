"""The boring lab behind the pytest fixtures ``tiny_dataset`` and ``boring_model``.

A generic tabular task, small enough to train in milliseconds: events of 20 entities over
two weeks (``EVENT_ID``, ``EVENT_TIME``, ``ENTITY_ID``, ``AMOUNT``, ``LABEL``), one feature
view of each entity's last 7 days, and ``boring``, a classification model over the
request's amount and that view, trained by ``BoringLinearFlavor`` (a numpy linear or
logistic regression; deterministic, no torch). A plugin's tests use it to put a real
model through the platform (register, serve, stream) without caring what it predicts.

This module is also a plugin: ``boring_model`` lists it in the lab's ``[tool.lab]
plugins``, so the lab's plugin manager (``lab serve``, ``lab.load_model``) finds the
view, the spec and the flavor. It answers every hook for any lab that lists it, and
nothing for the others.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any, Sequence

from lab import hookimpl
from lab.errors import LabError
from lab.features.views import Aggregation, FeatureView
from lab.modelspec import ModelSpec, RequestField, RequestSchema
from lab.training.flavor import FitResult, ModelFlavor

START = dt.datetime(2024, 3, 1)
"""The first event's day; events run for ``DAYS`` days from it."""
DAYS = 14
ENTITIES = 20

ENTITY_AMOUNTS = FeatureView(
    name="entity_amounts", entity="ENTITY_ID", source="events", timestamp="EVENT_TIME",
    aggregations=(Aggregation("ENTITY_COUNT_7D", "AMOUNT", "count", dt.timedelta(days=7)),
                  Aggregation("ENTITY_MEAN_AMOUNT_7D", "AMOUNT", "mean", dt.timedelta(days=7), fill=50.0)),
    description="each entity's events and mean amount over its last 7 days (the boring lab)")

EVENT = RequestSchema(
    title="BoringEvent",
    fields=(RequestField("EVENT_ID", "int", "the event", ge=0),
            RequestField("EVENT_TIME", "datetime", "when it happened"),
            RequestField("ENTITY_ID", "int", "who it is about", ge=0, le=10_000),
            RequestField("AMOUNT", "float", "its amount", ge=0, le=1_000_000)),
    id="EVENT_ID", timestamp="EVENT_TIME", entities=("ENTITY_ID",),
    example={"EVENT_ID": 100_000, "EVENT_TIME": "2024-03-15T12:00:00", "ENTITY_ID": 3, "AMOUNT": 80.0})

FEATURES = ("AMOUNT", "ENTITY_COUNT_7D", "ENTITY_MEAN_AMOUNT_7D")


def _request_frame(frame):
    return frame  # the request's own column, AMOUNT, is already a feature


def _request_row(request: dict, rows: dict) -> dict:
    stats = rows.get(ENTITY_AMOUNTS.name) or ENTITY_AMOUNTS.defaults
    return {"AMOUNT": request["AMOUNT"], **{name: stats[name] for name in ENTITY_AMOUNTS.feature_names}}


BORING_SPEC = ModelSpec(
    name="boring", task="classification", label="LABEL", source="events", features=FEATURES,
    views=(ENTITY_AMOUNTS.name,), request=EVENT, request_frame=_request_frame, request_row=_request_row,
    flavor="boring_linear", description="a logistic regression of LABEL on the amount and the entity's week")


def tiny_events(n: int = 600, seed: int = 0):
    """``n`` events (a polars frame, sorted by time): ``EVENT_ID`` 0..n-1, ``EVENT_TIME``
    spread over ``DAYS`` days from ``START`` (microseconds), ``ENTITY_ID`` among
    ``ENTITIES``, ``AMOUNT`` (gamma, mean about 50, each entity its own scale) and
    ``LABEL`` 0/1 (about one in five, likelier for an amount large for its entity)."""
    import numpy as np  # data libraries load only when data is made
    import polars as pl

    rng = np.random.default_rng(seed)
    seconds = np.sort(rng.integers(0, DAYS * 86_400, n))
    entity = rng.integers(0, ENTITIES, n)
    scale = np.linspace(10.0, 40.0, ENTITIES)[entity]
    amount = np.round(rng.gamma(2.0, scale), 2)
    logit = 1.5 * (amount / (2.0 * scale) - 1.0) - 1.5
    label = (rng.random(n) < 1.0 / (1.0 + np.exp(-logit))).astype(np.int64)
    return pl.DataFrame({
        "EVENT_ID": np.arange(n, dtype=np.int64),
        "EVENT_TIME": [START + dt.timedelta(seconds=int(s)) for s in seconds],
        "ENTITY_ID": entity.astype(np.int64),
        "AMOUNT": amount,
        "LABEL": label,
    }).with_columns(pl.col("EVENT_TIME").cast(pl.Datetime("us")))


# ------------------------------------------------------------------------------ the flavor


class BoringLinearModel:
    """A linear model on standardized features: for classification the logistic of it
    (the probability of 1), for regression the value itself, in the label's units."""

    def __init__(self, feature_names: Sequence[str], task: str, mean, scale, weights, bias: float):
        import numpy as np

        self.feature_names, self.task = list(feature_names), task
        self.mean, self.scale = np.asarray(mean, np.float64), np.asarray(scale, np.float64)
        self.weights, self.bias = np.asarray(weights, np.float64), float(bias)

    def predict(self, features):
        import numpy as np

        x = np.asarray(features, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != len(self.feature_names):
            raise LabError(f"the boring model takes rows of {len(self.feature_names)} features "
                           f"({', '.join(self.feature_names)}), got an array of shape {x.shape}")
        z = ((x - self.mean) / self.scale) @ self.weights + self.bias
        return 1.0 / (1.0 + np.exp(-z)) if self.task == "classification" else z

    def to_json(self) -> dict[str, Any]:
        return {"feature_names": self.feature_names, "task": self.task, "mean": self.mean.tolist(),
                "scale": self.scale.tolist(), "weights": self.weights.tolist(), "bias": self.bias}


class BoringLinearFlavor(ModelFlavor):
    """``boring_linear``: ridge regression, or logistic regression by Newton's method (one
    step an epoch, ``max_epochs`` steps), on standardized features. Deterministic; a
    model is one JSON file. ``params``: ``l2`` (the ridge penalty, default 1.0)."""

    name = "boring_linear"
    tasks = ("classification", "regression")

    def search_space(self, trial, task: str = "classification") -> dict[str, Any]:
        return {"l2": trial.suggest_float("l2", 1e-3, 10.0, log=True)}

    def fit(self, train_x, train_y, valid_x, valid_y, feature_names, params, *, seed, workdir, max_epochs,
            callbacks=(), task="classification") -> FitResult:
        import numpy as np

        from lab.training.metrics import task_metrics

        self.check_task(task)
        names = list(feature_names)
        x, y = np.asarray(train_x, np.float64), np.asarray(train_y, np.float64)
        vx, vy = np.asarray(valid_x, np.float64), np.asarray(valid_y, np.float64)
        for what, xs, ys in (("train", x, y), ("valid", vx, vy)):
            if xs.ndim != 2 or xs.shape[1] != len(names) or ys.shape != (xs.shape[0],):
                raise LabError(f"{what} arrays: x must be rows x {len(names)} features and y one label per row; "
                               f"got x {xs.shape} and y {ys.shape}")
        if task == "classification" and not np.isin(y, (0.0, 1.0)).all():
            raise LabError("classification labels must be 0 or 1; use task = \"regression\" for numeric labels")
        l2 = float(params.get("l2", 1.0))
        mean, scale = x.mean(axis=0), x.std(axis=0)
        scale[scale == 0] = 1.0
        design = np.column_stack([(x - mean) / scale, np.ones(len(x))])
        penalty = l2 * np.eye(design.shape[1])
        penalty[-1, -1] = 0.0  # the intercept is not shrunk
        beta = np.zeros(design.shape[1])
        epochs = 1 if task == "regression" else max(1, int(max_epochs))
        model = None
        for epoch in range(epochs):
            if task == "regression":
                beta = np.linalg.solve(design.T @ design + penalty, design.T @ y)
            else:
                p = 1.0 / (1.0 + np.exp(-(design @ beta)))
                hessian = design.T @ (design * (p * (1 - p))[:, None]) + penalty
                beta = beta - np.linalg.solve(hessian, design.T @ (p - y) + penalty @ beta)
            model = BoringLinearModel(names, task, mean, scale, beta[:-1], beta[-1])
            metrics = {f"val_{k}": float(v) for k, v in task_metrics(task, vy, model.predict(vx)).items()}
            for callback in callbacks:
                if hasattr(callback, "lab_epoch_end"):
                    callback.lab_epoch_end(epoch, metrics)
        return FitResult(model, metrics=metrics, params={"l2": l2})

    def save(self, model: BoringLinearModel, path: Path) -> None:
        from lab.atomic import atomic_write_text

        Path(path).mkdir(parents=True, exist_ok=True)
        atomic_write_text(Path(path) / "model.json", json.dumps(model.to_json()))

    def load(self, path: Path) -> BoringLinearModel:
        file = Path(path) / "model.json"
        if not file.exists():
            raise LabError(f"no boring model at {file}: save one with BoringLinearFlavor.save")
        data = json.loads(file.read_text())
        return BoringLinearModel(data["feature_names"], data["task"], data["mean"], data["scale"],
                                 data["weights"], data["bias"])


# ------------------------------------------------------------------------------ the hooks


@hookimpl
def lab_feature_views(config):
    return [ENTITY_AMOUNTS]


@hookimpl
def lab_model_specs(config):
    return [BORING_SPEC]


@hookimpl
def lab_model_flavors():
    return [BoringLinearFlavor()]
