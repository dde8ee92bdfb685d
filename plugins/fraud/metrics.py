"""The fraud protocol's own metric: card precision@k (specs/fraud-simulator.md).

The platform computes the task's standard metrics (ROC AUC, average precision); the
fraud model's spec adds this one through ``ModelSpec.metrics``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from lab.errors import LabError
from lab.training.metrics import labels_and_scores


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
    y, score = labels_and_scores(y, score)
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


def card_precision_metrics(frame, scores, k: int = 100) -> dict[str, float]:
    """``{"card_precision_at_<k>": ...}`` for a scored test frame (``ModelSpec.metrics``)."""
    return {f"card_precision_at_{k}": card_precision_at_k(
        frame["CUSTOMER_ID"].to_numpy(), frame["TX_TIME_DAYS"].to_numpy(), frame["TX_FRAUD"].to_numpy(), scores, k=k)}
