"""The training-set scaler.

``Scaler`` standardizes features with statistics of the training set only; the model
artifact carries it as a dict. Splits are the platform's time split
(``lab.steps``) or a lab's own (``ModelSpec.split``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from lab.errors import LabError


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
