"""The model-flavor contract: how a kind of model is trained, saved, loaded and scored."""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, Sequence

import numpy as np


class ScoringModel(Protocol):
    """What serving and batch scoring need from a loaded model."""

    feature_names: list[str]

    def predict(self, features: np.ndarray) -> np.ndarray:
        """Scores in [0, 1], one per row of ``features`` (float32, columns in ``feature_names`` order)."""


@dataclass
class FitResult:
    """What ``ModelFlavor.fit`` returns: the trained model and what to record about it."""

    model: ScoringModel
    metrics: dict[str, float] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    checkpoint: Path | None = None


class ModelFlavor(abc.ABC):
    """A kind of model. Implementations must be deterministic for a given seed on CPU."""

    name: str = ""

    @abc.abstractmethod
    def search_space(self, trial: Any) -> dict[str, Any]:
        """Draw hyperparameters from an Optuna ``trial`` (``trial.suggest_*``)."""

    @abc.abstractmethod
    def fit(
        self,
        train_x: np.ndarray,
        train_y: np.ndarray,
        valid_x: np.ndarray,
        valid_y: np.ndarray,
        feature_names: Sequence[str],
        params: dict[str, Any],
        *,
        seed: int,
        workdir: Path,
        max_epochs: int,
        callbacks: Sequence[Any] = (),
    ) -> FitResult:
        """Train; checkpoints go atomically under ``workdir`` and a rerun resumes from the last good one."""

    @abc.abstractmethod
    def save(self, model: ScoringModel, path: Path) -> None:
        """Write ``model`` to the folder ``path`` atomically (a kill leaves no half model)."""

    @abc.abstractmethod
    def load(self, path: Path) -> ScoringModel:
        """Read a model written by ``save``."""
