"""Fraud-detection metrics: ROC AUC, average precision and card precision@k (numpy only).

``roc_auc`` and ``average_precision`` follow scikit-learn's ``roc_auc_score`` and
``average_precision_score`` exactly, ties included: tied scores form one threshold.
``card_precision_at_k`` follows the handbook's protocol (specs/fraud-simulator.md,
"Evaluation protocol"). ``evaluate`` returns all three as one dict.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lab.errors import LabError


def _labels_and_scores(y: Any, score: Any) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y).ravel()
    score = np.asarray(score, dtype=np.float64).ravel()
    if y.shape != score.shape:
        raise LabError(f"labels and scores differ in length ({y.size} vs {score.size}); pass one score per label")
    if y.size and not np.isin(y, (0, 1)).all():
        raise LabError("labels must be 0 or 1 (TX_FRAUD); found other values")
    if not np.isfinite(score).all():
        raise LabError("scores hold NaN or infinity; check the model's inputs for missing values")
    return y.astype(np.int8), score


def _both_classes(y: np.ndarray, metric: str) -> None:
    n_pos = int(y.sum())
    if n_pos == 0 or n_pos == y.size:
        only = "positive" if n_pos else "negative"
        raise LabError(f"{metric} needs both classes, but every label is {only}; widen the evaluation window")


def roc_auc(y: Any, score: Any) -> float:
    """Area under the ROC curve; a tie between a fraud and a genuine counts one half.

    Equal to ``sklearn.metrics.roc_auc_score``. Raises ``LabError`` when ``y`` holds one class.
    """
    y, score = _labels_and_scores(y, score)
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
    Raises ``LabError`` when ``y`` holds no fraud.
    """
    y, score = _labels_and_scores(y, score)
    if y.size == 0 or y.sum() == 0:
        raise LabError("average precision needs at least one fraud label; widen the evaluation window")
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


def card_precision_at_k(customer_ids: Any, days: Any, y: Any, score: Any, k: int = 100) -> float:
    """Mean over test days of the share of true frauds among the ``k`` highest-scored cards.

    Per day, in day order: cards detected on an earlier day (in that day's top ``k`` and
    fraudulent) are removed; each remaining card gets its maximum score and maximum label;
    the top ``k`` cards by score are kept (ties broken by the smaller card id, so the
    result is deterministic) and their fraud count is divided by ``k``, as the handbook
    does even on a day with fewer than ``k`` cards. Returns the mean over days.
    """
    if k < 1:
        raise LabError(f"k must be a positive number of cards, got {k}")
    y, score = _labels_and_scores(y, score)
    cards = np.asarray(customer_ids).ravel()
    day_of = np.asarray(days).ravel()
    if cards.shape != y.shape or day_of.shape != y.shape:
        raise LabError("customer_ids, days, labels and scores must all have one entry per transaction")
    if y.size == 0:
        raise LabError("card precision@k needs at least one transaction")
    detected: set = set()
    per_day: list[float] = []
    for day in np.unique(day_of):
        rows = day_of == day
        day_cards, day_y, day_score = cards[rows], y[rows], score[rows]
        if detected:
            keep = ~np.isin(day_cards, list(detected))
            day_cards, day_y, day_score = day_cards[keep], day_y[keep], day_score[keep]
        unique_cards, inverse = np.unique(day_cards, return_inverse=True)
        card_score = np.full(unique_cards.size, -np.inf)
        np.maximum.at(card_score, inverse, day_score)
        card_y = np.zeros(unique_cards.size, dtype=np.int8)
        np.maximum.at(card_y, inverse, day_y)
        # unique_cards is sorted ascending, so a stable sort on -score breaks ties by card id.
        top = np.argsort(-card_score, kind="mergesort")[:k]
        per_day.append(float(card_y[top].sum()) / k)
        detected.update(unique_cards[top][card_y[top] == 1].tolist())
    return float(np.mean(per_day))


def evaluate(y: Any, score: Any, customer_ids: Any, days: Any, k: int = 100) -> dict[str, float]:
    """The protocol's three metrics for one test set.

    Returns ``{"roc_auc", "average_precision", "card_precision_at_100"}``; the last key
    is named after ``k`` (``card_precision_at_{k}``).
    """
    return {
        "roc_auc": roc_auc(y, score),
        "average_precision": average_precision(y, score),
        f"card_precision_at_{k}": card_precision_at_k(customer_ids, days, y, score, k=k),
    }
