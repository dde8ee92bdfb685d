"""The MLP itself and the scoring model serving loads: plain torch, no Lightning.

The training-set scaler lives inside the network as two buffers, so a saved model
scores raw feature rows and no caller can forget to scale them.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lab.errors import LabError
from lab.training.protocol import Scaler


class TabularMLP(nn.Module):
    """Standardize with the training-set scaler, then Linear-ReLU-Dropout blocks, then one
    linear output: a logit for classification, the standardized target for regression."""

    def __init__(self, n_features: int, hidden_sizes: Sequence[int], dropout: float, scaler: Scaler | None = None):
        super().__init__()
        scaler = scaler or Scaler(tuple([0.0] * n_features), tuple([1.0] * n_features))
        self.register_buffer("mean", torch.tensor(scaler.mean, dtype=torch.float32))
        self.register_buffer("std", torch.tensor(scaler.std, dtype=torch.float32))
        layers: list[nn.Module] = []
        width = n_features
        for size in hidden_sizes:
            layers += [nn.Linear(width, size), nn.ReLU()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = size
        layers.append(nn.Linear(width, 1))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """One output per row (a logit, or a standardized prediction)."""
        return self.layers((x - self.mean) / self.std).squeeze(-1)


class MLPScorer:
    """A trained ``TabularMLP`` behind the ``ScoringModel`` contract.

    ``predict`` takes raw (unscaled) float32 rows in ``feature_names`` order and returns,
    for ``task`` ``"classification"``, probabilities (the sigmoid of the output) and, for
    ``"regression"``, the output mapped back to the label's units with the training
    target's statistics (``target``: a one-column ``Scaler``). It runs under
    ``torch.inference_mode`` and never touches Lightning; it does not change torch's
    thread count (see docs/training.md: the server sets it once at start-up).
    """

    def __init__(
        self,
        net: TabularMLP,
        feature_names: Sequence[str],
        params: dict[str, Any],
        scaler: Scaler,
        *,
        task: str = "classification",
        target: Scaler | None = None,
    ):
        if task == "regression" and (target is None or target.n_features != 1):
            raise LabError("a regression model needs the training target's mean and std (a one-column Scaler)")
        if task not in ("classification", "regression"):
            raise LabError(f"the lightning_mlp flavor does classification or regression, not {task!r}")
        self.net = net.eval()
        self.feature_names = list(feature_names)
        self.params = dict(params)
        self.scaler = scaler
        self.task = task
        self.target = target if task == "regression" else None
        self._n_features = len(self.feature_names)
        # The eval-mode forward without nn.Module dispatch: the same kernels (bit for bit)
        # at half the per-call overhead, which is most of a single row's cost.
        linears = [m for m in net.layers if isinstance(m, nn.Linear)]
        self._hidden = [(m.weight.detach(), m.bias.detach()) for m in linears[:-1]]
        self._out = (linears[-1].weight.detach(), linears[-1].bias.detach())
        self._mean, self._std = net.mean.detach(), net.std.detach()
        if self.target is not None:
            self._target_mean, self._target_std = self.target.mean[0], self.target.std[0]

    def predict(self, features: np.ndarray) -> np.ndarray:
        """One value per row of ``features`` (a 1-D array is one row): a probability for
        classification, a prediction in label units for regression. Returns float32, shape (n,)."""
        x = np.asarray(features, dtype=np.float32)
        if x.ndim == 1:
            x = x.reshape(1, -1)
        if x.ndim != 2 or x.shape[1] != self._n_features:
            raise LabError(
                f"expected rows of {self._n_features} features ({', '.join(self.feature_names)}), "
                f"got an array of shape {np.shape(features)}"
            )
        if not np.isfinite(x).all():
            raise LabError("features hold NaN or infinity; fill missing values before scoring")
        if not (x.flags.c_contiguous and x.flags.writeable):
            x = np.array(x, dtype=np.float32, order="C")
        with torch.inference_mode():
            h = (torch.from_numpy(x) - self._mean) / self._std
            for weight, bias in self._hidden:
                h = F.linear(h, weight, bias).relu_()
            out = F.linear(h, *self._out).squeeze_(-1)
            if self.target is None:
                return torch.sigmoid(out).numpy()
            return (out.numpy().astype(np.float64) * self._target_std + self._target_mean).astype(np.float32)
