"""The ``lightning_mlp`` model flavor: an MLP on tabular features, trained with Lightning.

It trains on one CPU process unless ``fit(devices=...)`` (``[tool.lab.training]``) says
otherwise: GPUs, mixed precision, distributed data parallel (see ``devices``).

Training is seeded and deterministic, checkpoints every epoch (see ``checkpoints``) and
resumes from the newest good checkpoint with the same final weights as an
uninterrupted run. This module holds the flavor and its checks and imports neither torch
nor Lightning: ``fit`` imports ``training``, the one module that imports Lightning, so
loading and scoring never pay for it; a model with a numpy forward loads and scores small
batches without torch too (``loaded.LoadedMLP``), which keeps the server's start short.

Two tasks: classification (one logit, ``BCEWithLogitsLoss`` with ``pos_weight``) and
regression (the target standardized with the training set's mean and std, MSE on that,
a linear output mapped back to label units when predicting).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from lab.errors import LabError
from lab.training.flavor import FitResult, ModelFlavor, ScoringModel

from .artifact import FLAVOR_NAME, _read_manifest, load_model, save_model
from .devices import TrainingDevices, is_global_zero

DEFAULT_PARAMS: dict[str, Any] = {
    "hidden_sizes": [64, 32],
    "dropout": 0.1,
    "lr": 1e-3,
    "batch_size": 512,
    "weight_decay": 0.0,
    "pos_weight": 1.0,  # classification only: a number, or "balanced" for n_negative / n_positive
}
MONITOR = "val_average_precision"
TASKS = ("classification", "regression")


def normalize_params(params: dict[str, Any], task: str = "classification") -> dict[str, Any]:
    """``params`` over the defaults, checked; raises ``LabError`` naming a bad key or value.

    Regression has no ``pos_weight`` (it weighs positive labels): giving one is an error
    and the result leaves it out.
    """
    known = DEFAULT_PARAMS if task == "classification" else {k: v for k, v in DEFAULT_PARAMS.items() if k != "pos_weight"}
    unknown = sorted(set(params) - set(known))
    if unknown:
        why = " (pos_weight weighs positive labels; regression has none)" if unknown == ["pos_weight"] else ""
        raise LabError(f"unknown {FLAVOR_NAME} param(s) {', '.join(unknown)}{why}; known for {task}: {', '.join(sorted(known))}")
    p = {**known, **params}
    hidden = p["hidden_sizes"]
    if isinstance(hidden, int) or not all(isinstance(h, int) and h > 0 for h in hidden):
        raise LabError(f"hidden_sizes must be a list of positive layer widths, e.g. [64, 32]; got {hidden!r}")
    p["hidden_sizes"] = [int(h) for h in hidden]
    if not 0 <= p["dropout"] < 1:
        raise LabError(f"dropout must be in [0, 1); got {p['dropout']!r}")
    if not (p["lr"] > 0 and p["weight_decay"] >= 0):
        raise LabError(f"lr must be > 0 and weight_decay >= 0; got lr={p['lr']!r}, weight_decay={p['weight_decay']!r}")
    if not (isinstance(p["batch_size"], int) and p["batch_size"] > 0):
        raise LabError(f"batch_size must be a positive whole number; got {p['batch_size']!r}")
    if task == "classification" and p["pos_weight"] != "balanced" \
            and not (isinstance(p["pos_weight"], (int, float)) and p["pos_weight"] > 0):
        raise LabError(f"pos_weight must be a positive number or 'balanced'; got {p['pos_weight']!r}")
    for key in ("dropout", "lr", "weight_decay"):
        p[key] = float(p[key])
    return p


def _check_arrays(train_x, train_y, valid_x, valid_y, feature_names, task: str = "classification") -> tuple[np.ndarray, ...]:
    out = []
    for name, x, y in (("train", train_x, train_y), ("valid", valid_x, valid_y)):
        try:
            x = np.ascontiguousarray(x, dtype=np.float32)
        except (TypeError, ValueError):
            raise LabError(f"{name}_x must be a numeric array (rows × {len(feature_names)} features)") from None
        try:
            y = np.ascontiguousarray(y, dtype=np.float32)
        except (TypeError, ValueError):
            raise LabError(f"{name}_y must hold numbers, one label per row") from None
        if x.ndim != 2 or x.shape[1] != len(feature_names):
            raise LabError(f"{name}_x must be rows × {len(feature_names)} features ({', '.join(feature_names)}); got shape {x.shape}")
        if y.ndim > 1 and y.size != y.shape[0]:
            raise LabError(f"{name}_y must be one label per row (a 1-D array); got shape {y.shape}")
        y = y.ravel()
        if y.shape[0] != x.shape[0]:
            raise LabError(f"{name}_y has {y.shape[0]} labels for {x.shape[0]} rows of {name}_x")
        if x.shape[0] == 0:
            raise LabError(f"{name}_x has no rows; widen the {name} window")
        if not np.isfinite(x).all():
            raise LabError(f"{name}_x holds NaN or infinity; fill missing feature values before training")
        if task == "classification":
            if not np.isin(y, (0.0, 1.0)).all() or y.min() == y.max():
                raise LabError(f"{name}_y must hold labels 0 and 1, both present; widen the {name} window")
        elif not np.isfinite(y).all():
            raise LabError(f"{name}_y holds NaN or infinity; drop unlabelled rows before training")
        out += [x, y]
    return tuple(out)


class LightningMLP(ModelFlavor):
    """An MLP trained with PyTorch Lightning (one CPU process unless ``fit(devices=...)``
    says otherwise): deterministic on CPU, checkpointed, resumable.

    ``threads`` fixes torch's thread count during ``fit`` (then restores the caller's),
    so a fit gives the same weights whatever the machine's core count.
    """

    name = FLAVOR_NAME
    tasks = TASKS
    supports_resume = True

    def __init__(self, threads: int = 1):
        self.threads = threads

    def search_space(self, trial: Any, task: str = "classification") -> dict[str, Any]:
        """Layers and width, dropout, learning rate, batch size, weight decay and, for
        classification, the positive-label weight."""
        self.check_task(task)
        n_layers = trial.suggest_int("n_layers", 1, 3)
        width = trial.suggest_categorical("width", [16, 32, 64, 128])
        params = {
            "hidden_sizes": [max(8, width >> i) for i in range(n_layers)],
            "dropout": trial.suggest_float("dropout", 0.0, 0.4),
            "lr": trial.suggest_float("lr", 1e-4, 3e-2, log=True),
            "batch_size": trial.suggest_categorical("batch_size", [128, 256, 512, 1024]),
            "weight_decay": trial.suggest_float("weight_decay", 1e-7, 1e-3, log=True),
        }
        if task == "classification":
            params["pos_weight"] = trial.suggest_categorical("pos_weight", [1.0, 3.0, 10.0])
        return params

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
        devices: "Mapping[str, Any] | TrainingDevices | None" = None,
    ) -> FitResult:
        """Train (or resume) under ``workdir``; ``callbacks`` are Lightning callbacks or
        objects with ``lab_epoch_end(epoch, metrics)``. Writes ``workdir/fit.json`` (where
        it resumed from, what it skipped, whether it finished). Returns the model and its validation metrics.

        ``devices``: ``accelerator``, ``devices``, ``strategy``, ``precision``, ``num_nodes``
        for ``pl.Trainer`` (missing ones: one CPU process, 32-bit); a bad value is a
        ``ConfigError`` naming it. Under DDP launched outside (torchrun, srun) every rank
        calls ``fit``; only global rank 0 writes checkpoints, and ``save`` writes only there."""
        self.check_task(task)
        placement = TrainingDevices.from_settings(devices)
        feature_names = [str(n) for n in feature_names]
        p = normalize_params(params, task)
        if not isinstance(max_epochs, int) or max_epochs < 1:
            raise LabError(f"max_epochs must be a whole number of at least 1; got {max_epochs!r}")
        arrays = _check_arrays(train_x, train_y, valid_x, valid_y, feature_names, task)
        # Lightning costs seconds to import and only training needs it: load and predict stay torch-only.
        from .training import fit_mlp

        return fit_mlp(arrays, feature_names, p, seed=seed, workdir=workdir, max_epochs=max_epochs,
                       callbacks=callbacks, task=task, threads=self.threads, devices=placement)

    def save(self, model: ScoringModel, path: Path) -> None:
        """Atomic model folder with a sha256 manifest (see ``artifact``; a quantized model's
        folder: ``optimize``). In a DDP job only global rank 0 writes; other ranks return."""
        if not is_global_zero():
            return
        optimize = sys.modules.get(f"{__package__}.optimize")  # a quantized model exists only once it is imported
        if optimize is not None and isinstance(model, optimize.QuantizedMLP):
            optimize.save_quantized(model, Path(path))
            return
        save_model(model, Path(path))

    def load(self, path: Path) -> ScoringModel:
        """Read a saved model, float or quantized (its manifest says); raises ``LabError``
        when a file does not match its digest."""
        if "quantization" in _read_manifest(Path(path)):
            from .optimize import load_quantized  # torch: a quantized model always scores with it

            return load_quantized(Path(path))
        return load_model(Path(path))

    def place(self, model: ScoringModel, device: str, memory_fraction: float = 0.0) -> ScoringModel:
        """``model`` itself on ``"cpu"`` (numpy forward kept); on ``"cuda:N"`` its network
        on that device, scoring every batch there (see ``placement``). ``LabError`` naming
        the fix when torch sees no such device."""
        if device == "cpu":
            return model
        from .placement import place_mlp  # torch, only when placing on a device

        return place_mlp(model, device, memory_fraction)

    # -- the optional optimizations (lab.steps.optimize; the work is in ``optimize``) --

    def quantize(self, model: ScoringModel) -> ScoringModel:
        """The model with every Linear layer int8 (torch dynamic quantization); scored by
        torch only, row by row under the server's micro-batching (see ``optimize``)."""
        from .optimize import quantize_mlp  # torch, only when quantizing

        return quantize_mlp(model)

    def distill(self, teacher: ScoringModel, train_x: np.ndarray, soft_targets: np.ndarray, valid_x: np.ndarray,
                valid_targets: np.ndarray, params: dict[str, Any] | None, *, seed: int, workdir: Path,
                max_epochs: int) -> FitResult:
        """A smaller MLP (default: one hidden layer half the teacher's narrowest width)
        trained on the teacher's scores; an ordinary model of this flavor (see ``optimize``)."""
        from .optimize import distill_mlp  # torch, only when distilling

        return distill_mlp(teacher, train_x, soft_targets, valid_x, valid_targets, params, seed=seed,
                           workdir=Path(workdir), max_epochs=max_epochs, threads=self.threads)
