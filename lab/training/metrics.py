"""Model metrics per task, their directions and the gate rule (numpy only).

Classification: ``roc_auc`` and ``average_precision`` follow scikit-learn's
``roc_auc_score`` and ``average_precision_score`` exactly, ties included: tied scores
form one threshold. Regression: ``mae``, ``rmse`` and ``r2`` (``r2`` as scikit-learn's
``r2_score`` with its default ``force_finite``). ``task_metrics`` gives a task's standard
metrics, ``metric_value`` one of them, ``higher_is_better`` a metric's direction and
``gate_passes`` compares a candidate with a champion in that direction.

A lab's own metrics (``ModelSpec.metrics``) live in its plugin; ranking metrics named
``<what>_precision_at_<k>`` or ``<what>_recall_at_<k>`` are known to be higher-better.
"""

from __future__ import annotations

import re
from typing import Any, Callable

import numpy as np

from lab.errors import LabError
from lab.modelspec import TASKS


def labels_and_scores(y: Any, score: Any) -> tuple[np.ndarray, np.ndarray]:
    """Binary labels (int8) and finite float scores, one per label; a LabError names what is wrong."""
    y = np.asarray(y).ravel()
    score = np.asarray(score, dtype=np.float64).ravel()
    if y.shape != score.shape:
        raise LabError(f"labels and scores differ in length ({y.size} vs {score.size}); pass one score per label")
    if y.size and not np.isin(y, (0, 1)).all():
        raise LabError("classification labels must be 0 or 1; found other values")
    if not np.isfinite(score).all():
        raise LabError("scores hold NaN or infinity; check the model's inputs for missing values")
    return y.astype(np.int8), score


def _both_classes(y: np.ndarray, metric: str) -> None:
    n_pos = int(y.sum())
    if n_pos == 0 or n_pos == y.size:
        only = "positive" if n_pos else "negative"
        raise LabError(f"{metric} needs both classes, but every label is {only}; widen the evaluation window")


def roc_auc(y: Any, score: Any) -> float:
    """Area under the ROC curve; a tie between a positive and a negative counts one half.

    Equal to ``sklearn.metrics.roc_auc_score``. Raises ``LabError`` when ``y`` holds one class.
    """
    y, score = labels_and_scores(y, score)
    _both_classes(y, "ROC AUC")
    # Mann-Whitney U with mid-ranks for ties: the trapezoid rule over the ROC curve
    # with one point per distinct score gives exactly this.
    order = np.argsort(score, kind="mergesort")
    sorted_scores = score[order]
    ranks = np.empty(score.size, dtype=np.float64)
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    ends = np.r_[starts[1:], score.size]
    mid_ranks = (starts + ends + 1) / 2.0  # ranks are 1-based
    ranks[order] = np.repeat(mid_ranks, ends - starts)
    n_pos = float(y.sum())
    n_neg = float(y.size - n_pos)
    u = ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def average_precision(y: Any, score: Any) -> float:
    """Average precision: sum over thresholds of (recall step) × precision, no interpolation.

    Equal to ``sklearn.metrics.average_precision_score``; tied scores form one threshold.
    Raises ``LabError`` when ``y`` holds no positive label.
    """
    y, score = labels_and_scores(y, score)
    if y.size == 0 or y.sum() == 0:
        raise LabError("average precision needs at least one positive (1) label; widen the evaluation window")
    order = np.argsort(-score, kind="mergesort")
    sorted_scores = score[order]
    sorted_y = y[order].astype(np.float64)
    # The last row of each group of equal scores closes one threshold.
    closing = np.r_[np.flatnonzero(sorted_scores[1:] != sorted_scores[:-1]), score.size - 1]
    true_pos = np.cumsum(sorted_y)[closing]
    predicted_pos = closing + 1.0
    precision = true_pos / predicted_pos
    recall = true_pos / true_pos[-1]
    recall_steps = np.diff(np.r_[0.0, recall])
    return float(np.sum(recall_steps * precision))


# ---------------------------------------------------------------- regression metrics


def _targets_and_predictions(y: Any, prediction: Any) -> tuple[np.ndarray, np.ndarray]:
    try:
        y = np.asarray(y, dtype=np.float64).ravel()
    except (TypeError, ValueError):
        raise LabError("regression targets must be numbers") from None
    prediction = np.asarray(prediction, dtype=np.float64).ravel()
    if y.shape != prediction.shape:
        raise LabError(
            f"targets and predictions differ in length ({y.size} vs {prediction.size}); pass one prediction per target"
        )
    if y.size == 0:
        raise LabError("regression metrics need at least one target; widen the evaluation window")
    if not np.isfinite(y).all():
        raise LabError("targets hold NaN or infinity; drop or fill unlabelled rows first")
    if not np.isfinite(prediction).all():
        raise LabError("predictions hold NaN or infinity; check the model's inputs for missing values")
    return y, prediction


def mae(y: Any, prediction: Any) -> float:
    """Mean absolute error, in the target's units."""
    y, prediction = _targets_and_predictions(y, prediction)
    return float(np.mean(np.abs(y - prediction)))


def rmse(y: Any, prediction: Any) -> float:
    """Root mean squared error, in the target's units."""
    y, prediction = _targets_and_predictions(y, prediction)
    return float(np.sqrt(np.mean((y - prediction) ** 2)))


def r2(y: Any, prediction: Any) -> float:
    """Coefficient of determination, 1 - SS_res / SS_tot.

    Equal to ``sklearn.metrics.r2_score``. A constant target (SS_tot = 0) gives 1.0 when
    predicted exactly and 0.0 otherwise, as scikit-learn does, rather than NaN.
    """
    y, prediction = _targets_and_predictions(y, prediction)
    ss_res = float(np.sum((y - prediction) ** 2))
    ss_tot = float(np.sum((y - y.mean()) ** 2))
    if ss_tot == 0.0:
        return 1.0 if ss_res == 0.0 else 0.0
    return 1.0 - ss_res / ss_tot


# ---------------------------------------------------------------- metrics by task

_BY_TASK: dict[str, dict[str, Callable[[Any, Any], float]]] = {
    "classification": {"roc_auc": roc_auc, "average_precision": average_precision},
    "regression": {"mae": mae, "rmse": rmse, "r2": r2},
}
HIGHER_IS_BETTER: dict[str, bool] = {
    "roc_auc": True,
    "average_precision": True,
    "mae": False,
    "rmse": False,
    "r2": True,
}
"""Every metric the platform knows, and whether a larger value is a better model."""

_AT_K = re.compile(r"^(?:[a-z0-9]+_)*(?:precision|recall)_at_[0-9]+$")
"""Ranking metrics at a cutoff, e.g. ``precision_at_10`` or a lab's ``<what>_precision_at_100``."""


def _check_task(task: str) -> dict[str, Callable[[Any, Any], float]]:
    if task not in _BY_TASK:
        raise LabError(f"unknown task {task!r}; use one of {', '.join(TASKS)}")
    return _BY_TASK[task]


def metric_names(task: str) -> tuple[str, ...]:
    """The names ``task_metrics`` returns for ``task``, in order."""
    return tuple(_check_task(task))


def task_metrics(task: str, y: Any, scores: Any) -> dict[str, float]:
    """The task's standard metrics for one evaluation set.

    Classification (``scores`` are probabilities): ``roc_auc``, ``average_precision``.
    Regression (``scores`` are predictions in the label's units): ``mae``, ``rmse``, ``r2``.
    """
    return {name: fn(y, scores) for name, fn in _check_task(task).items()}


def metric_value(task: str, metric: str, y: Any, scores: Any) -> float:
    """One of the task's standard metrics (see ``task_metrics``); ``LabError`` names the
    task's metrics when ``metric`` is not one of them."""
    functions = _check_task(task)
    if metric not in functions:
        raise LabError(f"{metric!r} is not a {task} metric; use one of {', '.join(functions)}")
    return functions[metric](y, scores)


def higher_is_better(metric: str) -> bool:
    """Whether a larger ``metric`` means a better model (False for errors: mae, rmse).

    Besides ``HIGHER_IS_BETTER``, precision or recall at a cutoff (``precision_at_10``,
    ``<what>_precision_at_<k>``, ``<what>_recall_at_<k>``) is higher-better.

    Raises ``LabError`` listing the known metrics for an unknown name.
    """
    if metric in HIGHER_IS_BETTER:
        return HIGHER_IS_BETTER[metric]
    if isinstance(metric, str) and _AT_K.match(metric):
        return True
    known = [*HIGHER_IS_BETTER, "<what>_precision_at_<k>", "<what>_recall_at_<k>"]
    raise LabError(f"unknown metric {metric!r}, so its direction is unknown; known metrics: {', '.join(known)}")


def gate_passes(metric: str, candidate: float, champion: float, min_delta: float) -> tuple[bool, float]:
    """Does ``candidate`` beat ``champion`` on ``metric`` by at least ``min_delta``?

    Returns ``(passed, delta)``: ``delta`` is the improvement in the metric's direction
    (``candidate - champion`` when higher is better, ``champion - candidate`` for an
    error such as rmse), and the gate passes when ``delta >= min_delta``.
    """
    values = {"candidate": candidate, "champion": champion, "min_delta": min_delta}
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)) \
                or not np.isfinite(value):
            raise LabError(f"the gate needs a finite number for {name}, got {value!r}")
    delta = float(candidate) - float(champion) if higher_is_better(metric) else float(champion) - float(candidate)
    return delta >= float(min_delta), delta
