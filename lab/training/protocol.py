"""The evaluation protocol's train/test split and the training-set scaler.

``reference_split`` implements specs/fraud-simulator.md, "Evaluation protocol": train
on ``delta_train`` days, skip ``delta_delay`` days (labels arrive a week late), test on
the next ``delta_test`` days, dropping cards already known to be compromised.
``Scaler`` standardizes features with statistics of the training set only; the model
artifact carries it as a dict.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import polars as pl

from lab.errors import LabError

REQUIRED_COLUMNS = ("TX_DATETIME", "TX_TIME_DAYS", "CUSTOMER_ID", "TX_FRAUD")


def reference_split(
    df: pl.DataFrame,
    *,
    train_start: dt.date,
    delta_train: int = 7,
    delta_delay: int = 7,
    delta_test: int = 7,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Split transactions into the protocol's training and test sets.

    Training: ``TX_DATETIME`` in ``[train_start, train_start + delta_train days)``.
    Test: the ``delta_test`` days (by ``TX_TIME_DAYS``) that follow the delay. On test
    day T a card is dropped when it is already known to be compromised: it had a fraud
    in the training period, or on any day from the end of training up to
    ``T - delta_delay - 1`` (T − 8 with the default delay: a label is known a week
    later). Frauds before ``train_start`` are not counted, as in the handbook.

    Returns ``(train_df, test_df)``, each in the input's row order with all its columns.
    Raises ``LabError`` when a column is missing or a window holds no transactions.
    """
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise LabError(
            f"the transactions frame lacks column(s) {', '.join(missing)}; "
            "reference_split needs TX_DATETIME, TX_TIME_DAYS, CUSTOMER_ID and TX_FRAUD"
        )
    for name, value in (("delta_train", delta_train), ("delta_test", delta_test)):
        if value < 1:
            raise LabError(f"{name} must be at least 1 day, got {value}")
    if delta_delay < 0:
        raise LabError(f"delta_delay must be 0 or more days, got {delta_delay}")
    if isinstance(train_start, dt.datetime) or not isinstance(train_start, dt.date):
        raise LabError(f"train_start must be a datetime.date (e.g. date(2018, 7, 25)), got {train_start!r}")

    start = dt.datetime.combine(train_start, dt.time())
    end = start + dt.timedelta(days=delta_train)
    tx_time = pl.col("TX_DATETIME")
    train_df = df.filter((tx_time >= start) & (tx_time < end))
    if train_df.height == 0:
        raise LabError(
            f"no transactions between {train_start} and {end.date()} (exclusive); "
            "choose a train_start inside the data's date range"
        )
    first_day = int(train_df["TX_TIME_DAYS"].min())
    first_test_day = first_day + delta_train + delta_delay

    frauds = df.filter(pl.col("TX_FRAUD") == 1).select("TX_TIME_DAYS", "CUSTOMER_ID")
    known = set(train_df.filter(pl.col("TX_FRAUD") == 1)["CUSTOMER_ID"].to_list())
    known_up_to = first_day + delta_train - 1  # the last day whose frauds are in `known`
    indexed = df.with_row_index("_row")
    test_parts = []
    for offset in range(delta_test):
        test_day = first_test_day + offset
        # Labels of day d are known on day d + delta_delay + 1.
        newly_known_until = test_day - delta_delay - 1
        if newly_known_until > known_up_to:
            new = frauds.filter(pl.col("TX_TIME_DAYS").is_between(known_up_to + 1, newly_known_until))
            known.update(new["CUSTOMER_ID"].to_list())
            known_up_to = newly_known_until
        day_rows = indexed.filter(
            (pl.col("TX_TIME_DAYS") == test_day) & ~pl.col("CUSTOMER_ID").is_in(list(known))
        )
        test_parts.append(day_rows)
    test_df = pl.concat(test_parts).sort("_row").drop("_row")
    if test_df.height == 0:
        raise LabError(
            f"no test transactions on days {first_test_day}..{first_test_day + delta_test - 1} "
            "(TX_TIME_DAYS); the data ends too early for this train_start"
        )
    return train_df, test_df


@dataclass(frozen=True)
class Scaler:
    """Per-column standardization, fitted on the training set only.

    ``transform`` computes ``(x - mean) / std``; a constant column (std 0) gets std 1,
    so it maps to 0 rather than to NaN. Build one with ``Scaler.fit``.
    """

    mean: tuple[float, ...]
    std: tuple[float, ...]
    columns: tuple[str, ...] = ()

    @classmethod
    def fit(cls, x: Any, columns: Sequence[str] = ()) -> "Scaler":
        """Mean and population standard deviation (ddof 0) of each column of ``x``."""
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2 or x.shape[0] == 0:
            raise LabError(f"Scaler.fit needs a non-empty 2-D array (rows × features), got shape {x.shape}")
        if not np.isfinite(x).all():
            bad = [str(columns[i]) if columns else str(i) for i in np.flatnonzero(~np.isfinite(x).all(axis=0))]
            raise LabError(f"training features hold NaN or infinity in column(s) {', '.join(bad)}; fill them first")
        if columns and len(columns) != x.shape[1]:
            raise LabError(f"{len(columns)} column names for {x.shape[1]} feature columns")
        std = x.std(axis=0)
        std[std == 0] = 1.0
        return cls(tuple(x.mean(axis=0).tolist()), tuple(std.tolist()), tuple(columns))

    @property
    def n_features(self) -> int:
        return len(self.mean)

    def transform(self, x: Any) -> np.ndarray:
        """Standardized copy of ``x`` as float32."""
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.n_features:
            raise LabError(f"the scaler was fitted on {self.n_features} features; got shape {x.shape}")
        return ((x - np.asarray(self.mean)) / np.asarray(self.std)).astype(np.float32)

    def to_dict(self) -> dict[str, list]:
        """A JSON-ready dict; ``Scaler.from_dict`` reads it back."""
        return {"mean": list(self.mean), "std": list(self.std), "columns": list(self.columns)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Scaler":
        try:
            mean, std = tuple(map(float, data["mean"])), tuple(map(float, data["std"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise LabError(f"not a scaler dict (needs numeric 'mean' and 'std' lists): {exc}") from None
        if len(mean) != len(std) or any(s <= 0 for s in std):
            raise LabError("scaler dict is inconsistent: 'mean' and 'std' differ in length or a std is not positive")
        return cls(mean, std, tuple(data.get("columns", ())))
