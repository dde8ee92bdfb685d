"""A saved ``lightning_mlp`` model as the server loads it: numpy first, torch only when needed.

When the folder has a checked numpy forward (``forward.npz``), ``artifact.load_model``
returns a ``LoadedMLP``: batches of up to ``SMALL_BATCH`` rows score in numpy, exactly
as ``MLPScorer`` scores them, and torch (about a second to import) is imported and the
network built from ``weights.pt`` only when a larger batch comes, or when something
asks for the torch model itself (``torch_scorer()``; other attributes are looked up
there). A server scoring one request at a time thus starts without torch.

This module imports numpy only.
"""

from __future__ import annotations

import threading
from typing import Any, Callable, Sequence

import numpy as np

from lab.errors import LabError
from lab.training.protocol import Scaler

from .numpy_forward import SMALL_BATCH, NumpyForward, sigmoid


class LoadedMLP:
    """The ``ScoringModel`` of a saved model with a numpy forward; ``build_torch()``
    returns the ``network.MLPScorer`` of the same folder (called at most once, on first
    need). Scores are those of ``MLPScorer`` for every batch size."""

    def __init__(self, build_torch: Callable[[], Any], feature_names: Sequence[str], params: dict[str, Any],
                 scaler: Scaler, *, task: str, target: Scaler | None, numpy_forward: NumpyForward,
                 forward_note: str):
        if numpy_forward.n_features != len(feature_names):
            raise LabError(f"the numpy forward takes {numpy_forward.n_features} features, the model "
                           f"{len(feature_names)}; save the model again")
        self.feature_names = list(feature_names)
        self.params = dict(params)
        self.scaler = scaler
        self.task = task
        self.target = target if task == "regression" else None
        self.numpy_forward = numpy_forward
        self.forward_note = forward_note
        self.invariant_batch_rows = SMALL_BATCH
        """``predict`` of up to this many rows gives each row exactly its one-row score (the
        numpy forward scores whole blocks): the server may score concurrent requests together."""
        self._n_features = len(self.feature_names)
        if self.target is not None:
            self._target_mean, self._target_std = self.target.mean[0], self.target.std[0]
        self._build_torch = build_torch
        self._torch: Any = None
        self._lock = threading.Lock()

    def torch_scorer(self) -> Any:
        """The torch ``MLPScorer`` of this model (imports torch and builds it the first time)."""
        if self._torch is None:
            with self._lock:
                if self._torch is None:
                    self._torch = self._build_torch()
        return self._torch

    def __getattr__(self, name: str) -> Any:
        # Only for names this class does not have (``net``, ...): the torch model's.
        if name.startswith("__") or name in ("_torch", "_build_torch", "_lock"):
            raise AttributeError(name)
        return getattr(self.torch_scorer(), name)

    def predict(self, features: np.ndarray) -> np.ndarray:
        """As ``MLPScorer.predict``: one value per row, float32, shape (n,)."""
        x = np.asarray(features, dtype=np.float32)
        if x.ndim == 1:
            x = x.reshape(1, -1)
        if x.ndim != 2 or x.shape[1] != self._n_features or x.shape[0] > SMALL_BATCH:
            return self.torch_scorer().predict(features)  # its checks and messages, or torch's kernels
        if not np.isfinite(x).all():
            raise LabError("features hold NaN or infinity; fill missing values before scoring")
        out = self.numpy_forward(x)
        if self.target is None:
            return sigmoid(out)
        return (out.astype(np.float64) * self._target_std + self._target_mean).astype(np.float32)
