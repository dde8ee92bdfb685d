"""The MLP itself and the scoring model serving loads: plain torch, no Lightning.

The training-set scaler lives inside the network as two buffers, so a saved model
scores raw feature rows and no caller can forget to scale them.

A loaded model may also hold the same forward in numpy (``numpy_forward``), exported and
checked against torch when the model was saved (``export_numpy_forward``): it scores
small batches, where torch's per-operator dispatch costs more than the arithmetic.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lab.errors import LabError
from lab.training.protocol import Scaler

from .numpy_forward import SMALL_BATCH, TOLERANCE, NumpyForward, feature_rows, sigmoid


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

    With ``numpy_forward`` (a loaded model whose folder has one), batches of up to
    ``numpy_forward.SMALL_BATCH`` rows are scored in numpy instead: the same outputs to
    within ``TOLERANCE`` (checked when the model was saved), at a fraction of the
    per-call cost. Larger batches always go through torch. ``forward_note`` says which
    paths this model uses and, when it has no numpy forward, why.
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
        numpy_forward: NumpyForward | None = None,
        forward_note: str | None = None,
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
        if numpy_forward is not None and numpy_forward.n_features != self._n_features:
            raise LabError(f"the numpy forward takes {numpy_forward.n_features} features, the model "
                           f"{self._n_features}; save the model again")
        self.numpy_forward = numpy_forward
        # With the numpy forward, batches of up to SMALL_BATCH rows score each row exactly as alone.
        self.invariant_batch_rows = SMALL_BATCH if numpy_forward is not None else 1
        self.forward_note = forward_note or (
            f"numpy for batches of up to {SMALL_BATCH} rows, torch above" if numpy_forward is not None
            else "torch for every batch")

    def predict(self, features: np.ndarray) -> np.ndarray:
        """One value per row of ``features`` (a 1-D array is one row): a probability for
        classification, a prediction in label units for regression. Returns float32, shape (n,)."""
        x = feature_rows(features, self.feature_names)
        if self.numpy_forward is not None and x.shape[0] <= SMALL_BATCH:
            out = self.numpy_forward(x)
            if self.target is None:
                return sigmoid(out)
            return self._label_units(out)
        with torch.inference_mode():
            out = self._torch_forward(x)
            if self.target is None:
                return torch.sigmoid(out).numpy()
            return self._label_units(out.numpy())

    def _torch_forward(self, x: np.ndarray) -> torch.Tensor:
        """The network's output for float32 rows ``x``: the eval-mode forward, in torch.
        Call it under ``torch.inference_mode()``."""
        if not (x.flags.c_contiguous and x.flags.writeable):
            x = np.array(x, dtype=np.float32, order="C")
        h = (torch.from_numpy(x) - self._mean) / self._std
        for weight, bias in self._hidden:
            h = F.linear(h, weight, bias).relu_()
        return F.linear(h, *self._out).squeeze_(-1)

    def _label_units(self, out: np.ndarray) -> np.ndarray:
        return (out.astype(np.float64) * self._target_std + self._target_mean).astype(np.float32)


CHECK_ROWS = 256
"""Random rows the numpy forward is checked on at export: each alone, then in batches."""


def export_numpy_forward(model: MLPScorer, *, rows: int = CHECK_ROWS, seed: int = 0,
                         tolerance: float = TOLERANCE) -> tuple[NumpyForward | None, dict[str, Any]]:
    """The numpy forward of ``model``'s network and the record the manifest keeps of it.

    The check draws ``rows`` random rows around the training data (the scaler's mean
    plus its std times a standard normal; the first row all zeros, as the server's
    warm-up sends), scores them with the torch forward in one batch, and with the numpy
    one row by row and in batches of ``SMALL_BATCH``. The forward is kept when the
    largest absolute difference of the network's output (the logit, or the standardized
    regression target) is at most ``tolerance``; otherwise it is None and the record
    says why, so the model scores with torch only.
    """
    net = model.net
    linears = [m for m in net.layers if isinstance(m, nn.Linear)]
    others = [type(m).__name__ for m in net.layers if not isinstance(m, (nn.Linear, nn.ReLU, nn.Dropout))]
    if others:
        return None, {"file": None, "reason": f"the network has layers the numpy forward does not do: {others}"}
    forward = NumpyForward(net.mean.detach().numpy(), net.std.detach().numpy(),
                           [(m.weight.detach().numpy(), m.bias.detach().numpy()) for m in linears])
    rng = np.random.default_rng(seed)
    n = forward.n_features
    x = (forward.mean + forward.std * rng.standard_normal((rows, n))).astype(np.float32)
    x[0] = 0.0
    with torch.inference_mode():
        reference = model._torch_forward(x).numpy().astype(np.float64)
    alone = np.concatenate([forward(x[i:i + 1]) for i in range(rows)])
    batched = np.concatenate([forward(x[i:i + SMALL_BATCH]) for i in range(0, rows, SMALL_BATCH)])
    if not np.isfinite(reference).all():
        return None, {"file": None, "reason": "the torch forward gives NaN or infinity on random inputs "
                                              "(diverged weights?), so there is nothing to check against"}
    diff = float(max(np.abs(alone - reference).max(), np.abs(batched - reference).max()))
    if not diff <= tolerance:  # NaN fails too
        return None, {"file": None, "reason": f"the numpy forward differs from torch by up to {diff:.3g} "
                                              f"on {rows} random rows (tolerance {tolerance:g})"}
    return forward, {"rows_checked": rows, "max_abs_diff": diff, "tolerance": tolerance, "small_batch": SMALL_BATCH}
