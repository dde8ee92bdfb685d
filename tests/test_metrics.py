"""Metrics against scikit-learn, directions and the gate; the fraud plugin's card
precision@k on hand-made days."""

import numpy as np
import pytest
from sklearn.metrics import (
    average_precision_score,
    mean_absolute_error,
    mean_squared_error,
    r2_score,
    roc_auc_score,
)

from lab.errors import LabError
from lab.modelspec import TASKS
from lab.training.metrics import (
    average_precision,
    gate_passes,
    higher_is_better,
    mae,
    metric_names,
    metric_value,
    r2,
    rmse,
    roc_auc,
    task_metrics,
)
from plugins.fraud.metrics import card_precision_at_k, card_precision_metrics


@pytest.mark.parametrize("seed", range(6))
def test_roc_auc_and_average_precision_match_sklearn_with_ties(seed):
    rng = np.random.default_rng(seed)
    n = 500
    y = (rng.random(n) < 0.1).astype(int)
    # Few distinct scores, so most scores are tied, some across classes.
    score = rng.integers(0, 7, n) / 6.0 + 0.3 * y * rng.integers(0, 2, n)
    assert roc_auc(y, score) == pytest.approx(roc_auc_score(y, score), abs=1e-12)
    assert average_precision(y, score) == pytest.approx(average_precision_score(y, score), abs=1e-12)


def test_metrics_match_sklearn_on_continuous_scores():
    rng = np.random.default_rng(42)
    y = (rng.random(3000) < 0.02).astype(int)
    score = rng.normal(size=3000) + y
    assert roc_auc(y, score) == pytest.approx(roc_auc_score(y, score), abs=1e-12)
    assert average_precision(y, score) == pytest.approx(average_precision_score(y, score), abs=1e-12)


def test_all_tied_scores():
    y = [0, 1, 0, 1, 0]
    score = [0.5] * 5
    assert roc_auc(y, score) == pytest.approx(0.5)
    assert average_precision(y, score) == pytest.approx(average_precision_score(y, score))


def test_bad_input_names_the_problem():
    with pytest.raises(LabError, match="both classes"):
        roc_auc([0, 0, 0], [0.1, 0.2, 0.3])
    with pytest.raises(LabError, match="at least one positive"):
        average_precision([0, 0], [0.1, 0.2])
    with pytest.raises(LabError, match="differ in length"):
        roc_auc([0, 1], [0.1])
    with pytest.raises(LabError, match="NaN"):
        roc_auc([0, 1], [0.1, float("nan")])
    with pytest.raises(LabError, match="0 or 1"):
        roc_auc([0, 2], [0.1, 0.2])


def test_card_precision_removes_cards_detected_on_earlier_days():
    # k = 2. Day 0: A (fraud) and C are the top cards; C's max score comes from a
    # genuine transaction but its max label from a fraud one, so C counts as fraud.
    # Day 1: A and C were detected on day 0, so B and E are the top cards.
    rows = [
        # card, day, label, score
        ("A", 0, 1, 0.9),
        ("B", 0, 0, 0.6),
        ("C", 0, 0, 0.7),
        ("C", 0, 1, 0.1),
        ("A", 1, 1, 0.95),
        ("C", 1, 0, 0.9),
        ("B", 1, 1, 0.6),
        ("E", 1, 1, 0.5),
        ("D", 1, 0, 0.4),
    ]
    cards, days, y, score = zip(*rows)
    assert card_precision_at_k(cards, days, y, score, k=2) == pytest.approx((2 / 2 + 2 / 2) / 2)


def test_card_precision_keeps_genuine_top_cards_and_divides_by_k():
    # B is in day 0's top k but genuine, so it is not "detected" and stays on day 1.
    cards = ["A", "B", "B", "C"]
    days = [0, 0, 1, 1]
    y = [1, 0, 1, 0]
    score = [0.9, 0.8, 0.9, 0.1]
    assert card_precision_at_k(cards, days, y, score, k=2) == pytest.approx((1 / 2 + 1 / 2) / 2)
    # A day with fewer cards than k still divides by k, as the handbook does.
    assert card_precision_at_k(["A", "B"], [0, 0], [1, 0], [0.9, 0.1], k=3) == pytest.approx(1 / 3)


def test_card_precision_breaks_score_ties_by_card_id():
    # Three cards tie; k = 1 takes the smallest id, which is the fraud one.
    assert card_precision_at_k([3, 1, 2], [0, 0, 0], [0, 1, 0], [0.5, 0.5, 0.5], k=1) == 1.0
    assert card_precision_at_k([3, 1, 2], [0, 0, 0], [1, 0, 0], [0.5, 0.5, 0.5], k=1) == 0.0


def test_card_precision_metrics_read_cards_days_and_labels_from_the_scored_frame():
    """What the fraud spec adds through ``ModelSpec.metrics``: one higher-better metric."""
    import polars as pl

    rng = np.random.default_rng(3)
    n = 2000
    y = (rng.random(n) < 0.05).astype(int)
    score = rng.random(n) + 0.5 * y
    cards = rng.integers(0, 300, n)
    days = rng.integers(0, 7, n)
    frame = pl.DataFrame({"CUSTOMER_ID": cards, "TX_TIME_DAYS": days, "TX_FRAUD": y})
    result = card_precision_metrics(frame, score)
    assert result == {"card_precision_at_100": card_precision_at_k(cards, days, y, score, k=100)}
    assert 0.0 < result["card_precision_at_100"] <= 1.0
    assert card_precision_metrics(frame, score, k=10).keys() == {"card_precision_at_10"}
    assert higher_is_better("card_precision_at_100")


# ---------------------------------------------------------------- metrics by task


@pytest.mark.parametrize("seed", range(3))
def test_regression_metrics_match_sklearn(seed):
    rng = np.random.default_rng(seed)
    y = rng.gamma(3.0, 10.0, 400)
    prediction = y + rng.normal(0, 5, 400)
    assert mae(y, prediction) == pytest.approx(mean_absolute_error(y, prediction), rel=1e-12)
    assert rmse(y, prediction) == pytest.approx(np.sqrt(mean_squared_error(y, prediction)), rel=1e-12)
    assert r2(y, prediction) == pytest.approx(r2_score(y, prediction), rel=1e-12)


def test_r2_of_a_constant_target_is_finite_like_sklearn():
    assert r2([3.0, 3.0], [3.0, 3.0]) == 1.0 == r2_score([3.0, 3.0], [3.0, 3.0])
    assert r2([3.0, 3.0], [2.0, 3.0]) == 0.0 == r2_score([3.0, 3.0], [2.0, 3.0])


def test_regression_metrics_refuse_bad_input():
    with pytest.raises(LabError, match="differ in length"):
        mae([1.0, 2.0], [1.0])
    with pytest.raises(LabError, match="at least one target"):
        rmse([], [])
    with pytest.raises(LabError, match="targets hold NaN"):
        r2([1.0, float("nan")], [1.0, 2.0])
    with pytest.raises(LabError, match="predictions hold NaN"):
        mae([1.0, 2.0], [1.0, float("inf")])


def test_task_metrics_gives_each_tasks_standard_set():
    y = np.array([0, 1, 0, 1, 1])
    p = np.array([0.1, 0.8, 0.3, 0.4, 0.9])
    assert task_metrics("classification", y, p) == {
        "roc_auc": roc_auc_score(y, p), "average_precision": pytest.approx(average_precision_score(y, p))}
    yr = np.array([10.0, 20.0, 30.0])
    pr = np.array([12.0, 18.0, 33.0])
    assert task_metrics("regression", yr, pr) == {
        "mae": pytest.approx(7 / 3), "rmse": pytest.approx(np.sqrt(17 / 3)), "r2": pytest.approx(1 - 17 / 200)}
    assert metric_names("regression") == ("mae", "rmse", "r2")
    assert metric_names("classification") == ("roc_auc", "average_precision")
    assert metric_value("regression", "rmse", yr, pr) == pytest.approx(np.sqrt(17 / 3))
    assert metric_value("classification", "roc_auc", y, p) == roc_auc_score(y, p)
    with pytest.raises(LabError, match="'rmse' is not a classification metric; use one of roc_auc, average_precision"):
        metric_value("classification", "rmse", y, p)
    with pytest.raises(LabError, match="unknown task 'ranking'; use one of classification, regression"):
        task_metrics("ranking", y, p)
    assert set(TASKS) == {"classification", "regression"}


def test_every_task_metric_has_a_direction():
    for task in TASKS:
        y = [0, 1, 1] if task == "classification" else [1.0, 2.0, 4.0]
        for name in task_metrics(task, y, [0.2, 0.7, 0.9]):
            assert isinstance(higher_is_better(name), bool)
    assert higher_is_better("average_precision") and higher_is_better("r2")
    assert not higher_is_better("rmse") and not higher_is_better("mae")
    with pytest.raises(LabError, match="unknown metric 'accuracy'.*known metrics: roc_auc, average_precision, mae"):
        higher_is_better("accuracy")


@pytest.mark.parametrize("name", ["precision_at_10", "recall_at_5", "user_precision_at_100", "top_item_recall_at_3"])
def test_precision_and_recall_at_a_cutoff_are_higher_better(name):
    assert higher_is_better(name) is True


@pytest.mark.parametrize("name", ["precision_at_k", "precision_at_", "userprecision_at_10", "precision_at_10_x",
                                  "Precision_at_10"])
def test_other_at_k_names_have_no_direction(name):
    with pytest.raises(LabError, match="unknown metric"):
        higher_is_better(name)


def test_gate_respects_the_metrics_direction():
    # Higher is better: the improvement is candidate - champion.
    assert gate_passes("average_precision", 0.72, 0.70, 0.01) == (True, pytest.approx(0.02))
    assert gate_passes("average_precision", 0.70, 0.72, 0.0) == (False, pytest.approx(-0.02))
    # Lower is better: a smaller error is an improvement of champion - candidate.
    assert gate_passes("rmse", 4.0, 5.0, 0.5) == (True, 1.0)
    assert gate_passes("rmse", 5.0, 4.0, 0.0) == (False, -1.0)
    assert gate_passes("mae", 3.0, 3.0, 0.0) == (True, 0.0)  # a tie passes a zero min_delta
    assert gate_passes("mae", 3.0, 3.0, 0.1) == (False, 0.0)
    with pytest.raises(LabError, match="unknown metric"):
        gate_passes("accuracy", 0.9, 0.8, 0.0)
    with pytest.raises(LabError, match="finite number for champion"):
        gate_passes("rmse", 1.0, float("nan"), 0.0)
