"""The model-flavor contract: how a kind of model is trained, saved, loaded and scored.

A flavor trains for one or more tasks (``lab.modelspec.TASKS``): ``classification``
(binary labels 0/1; the model predicts the probability of 1) or ``regression`` (numeric
labels; the model predicts in the label's units). ``lab.testing.flavors.ModelFlavorContract``
checks an implementation. Two methods are optional (``quantize``, ``distill``): a flavor
that has them lets ``lab optimize`` make cheaper-to-serve versions of its models. A third,
``place``, lets ``lab serve`` score a model on a CUDA device (``[tool.lab.serve] device``).
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Protocol, Sequence

import numpy as np

from lab.errors import LabError
from lab.modelspec import TASKS


class ScoringModel(Protocol):
    """What serving and batch scoring need from a loaded model."""

    feature_names: list[str]
    task: str
    """``"classification"`` or ``"regression"``: what ``predict`` returns."""

    def predict(self, features: np.ndarray) -> np.ndarray:
        """One finite value per row of ``features`` (float32, columns in ``feature_names``
        order): the probability of label 1, in [0, 1], for classification; the prediction
        in the label's units for regression."""


@dataclass
class FitResult:
    """What ``ModelFlavor.fit`` returns: the trained model and what to record about it."""

    model: ScoringModel
    metrics: dict[str, float] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    checkpoint: Path | None = None


class ModelFlavor(abc.ABC):
    """A kind of model. Implementations must be deterministic for a given seed on CPU.

    ``tasks`` lists the tasks ``fit`` accepts; ``fit`` raises ``LabError`` for any other
    (``check_task`` does it). ``supports_resume`` says whether a fit interrupted (Ctrl+C,
    a kill) continues from its checkpoints under the same ``workdir`` when called again
    and ends with the same model as an uninterrupted fit; a flavor without checkpoints
    leaves it False and simply trains again.

    During ``fit``, every object in ``callbacks`` that has ``lab_epoch_end(epoch, metrics)``
    is called at least once (after each epoch, for an iterative model) with the
    validation metrics of ``lab.training.metrics.task_metrics`` prefixed ``val_``
    (``val_average_precision``, ``val_roc_auc``; ``val_mae``, ``val_rmse``, ``val_r2``):
    a sweep prunes on them.
    """

    name: str = ""
    tasks: tuple[str, ...] = ("classification",)
    supports_resume: bool = False

    def check_task(self, task: str) -> None:
        """Raise ``LabError`` naming the supported tasks when this flavor cannot do ``task``."""
        if task not in self.tasks:
            known = "" if task in TASKS else f" ({task!r} is not a task at all; tasks: {', '.join(TASKS)})"
            raise LabError(
                f"model flavor {self.name or type(self).__name__!r} cannot do {task}; it supports "
                f"{', '.join(self.tasks)}{known}. Choose another flavor in the model spec"
            )

    @abc.abstractmethod
    def search_space(self, trial: Any, task: str = "classification") -> dict[str, Any]:
        """Draw hyperparameters for ``task`` from an Optuna ``trial`` (``trial.suggest_*``)."""

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
        task: str = "classification",
        devices: Mapping[str, Any] | None = None,
    ) -> FitResult:
        """Train a model for ``task``; checkpoints (if any) go atomically under ``workdir``.

        ``devices`` says where: ``[tool.lab.training]``'s ``accelerator``, ``devices``,
        ``strategy``, ``precision`` and ``num_nodes`` (any subset; None: the flavor's
        default, one CPU process). A sweep passes it only when it is not None, so a
        flavor that trains on the CPU alone may leave the parameter out; one that takes it
        raises ``ConfigError`` for a setting it cannot honour.

        Raises ``LabError`` for a task outside ``tasks``, for arrays of the wrong shape
        (``x`` must be rows × ``len(feature_names)``, ``y`` one label per row) and for
        labels the task cannot use.
        """

    @abc.abstractmethod
    def save(self, model: ScoringModel, path: Path) -> None:
        """Write ``model`` to the folder ``path`` atomically (a kill leaves no half model)."""

    @abc.abstractmethod
    def load(self, path: Path) -> ScoringModel:
        """Read a model written by ``save``; its ``task`` is the one it was trained for."""

    # -- optional: where a loaded model scores (``lab serve``, ``[tool.lab.serve] device``) --

    def place(self, model: ScoringModel, device: str, memory_fraction: float = 0.0) -> ScoringModel:
        """``model`` (as ``load`` returned it) ready to score on ``device``: ``"cpu"`` or
        ``"cuda:N"`` (``lab.config.check_device``'s form). On ``"cpu"`` it is ``model``
        itself. On a CUDA device, a ``ScoringModel`` whose ``predict`` copies the rows to the
        device, scores there and returns float32 numpy, as ``predict`` always does;
        ``memory_fraction`` above 0 caps this *process's* allocations on that device (a
        fraction of its memory; every model of the process shares the cap). A scorer whose
        row scores may change with the batch around them sets ``invariant_batch_rows = 1``.
        Raises ``LabError`` naming the fix when the device is not there. Optional: the
        default serves on the CPU only and raises ``LabError`` for any other device."""
        if device == "cpu":
            return model
        raise LabError(f"model flavor {self.name or type(self).__name__!r} cannot score on {device} (it does not "
                       "implement ModelFlavor.place); set device = \"cpu\" in [tool.lab.serve] (or in "
                       "[tool.lab.serve.models.<name>] for this model)")

    # -- optional: cheaper models to serve (``lab.steps.optimize``, ``lab optimize``) -------

    def quantize(self, model: ScoringModel) -> ScoringModel:
        """An int8 copy of a trained ``model`` (dynamic quantization of its dense layers:
        int8 weights, activations quantized per call), scored on the CPU. ``save`` writes
        it and ``load`` reads it back like any model of this flavor (a flag in the saved
        folder says it is quantized). Optional: a flavor that cannot, does not override it
        and this raises ``LabError``."""
        raise LabError(f"model flavor {self.name or type(self).__name__!r} cannot quantize a model (it does not "
                       "implement ModelFlavor.quantize); leave 'quantize' out of [tool.lab.optimize] methods")

    def distill(
        self,
        teacher: ScoringModel,
        train_x: np.ndarray,
        soft_targets: np.ndarray,
        valid_x: np.ndarray,
        valid_targets: np.ndarray,
        params: dict[str, Any] | None,
        *,
        seed: int,
        workdir: Path,
        max_epochs: int,
    ) -> FitResult:
        """A smaller student of this flavor trained to reproduce ``teacher``'s scores.

        ``soft_targets`` are the teacher's ``predict`` of ``train_x`` (probabilities for
        classification, label units for regression), ``valid_targets`` of ``valid_x``: the
        student learns the teacher's scores, not the labels. ``params`` are the student's
        hyperparameters (None: the flavor's own smaller default, e.g. fewer and narrower
        hidden layers). The student has the teacher's task and feature names, and saves,
        loads and scores like any model of the flavor. Deterministic for a given seed on
        CPU. ``FitResult.metrics`` says how close it came (e.g. the validation loss
        against the teacher). Optional: the default raises ``LabError``."""
        raise LabError(f"model flavor {self.name or type(self).__name__!r} cannot distill a model (it does not "
                       "implement ModelFlavor.distill); leave 'distill' out of [tool.lab.optimize] methods")

    def optimizations(self) -> tuple[str, ...]:
        """Which of the optional ``quantize`` and ``distill`` this flavor implements."""
        return tuple(name for name in ("quantize", "distill")
                     if getattr(type(self), name) is not getattr(ModelFlavor, name))
