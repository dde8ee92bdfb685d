"""A ``lightning_mlp`` model placed on a CUDA device for serving (``LightningMLP.place``).

``lab serve`` calls the flavor's ``place`` only when ``[tool.lab.serve] device`` (or the
model's ``[tool.lab.serve.models.<name>]`` table) is not ``"cpu"``: on the CPU the loaded
model is served as it is, numpy forward and all. On ``"cuda:N"`` the network's weights
are copied to that device once, and ``DeviceMLP.predict`` copies every batch of rows
there, whatever its size (no numpy path), and the scores back as float32 numpy.

Only the CPU side of this is exercised by the tests here (``DeviceMLP`` on
``torch.device("cpu")``, and the errors of a machine without CUDA); it has not been run
on a GPU (docs/training.md, "Serving: per-model device placement").
"""

from __future__ import annotations

import copy
import os
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lab.errors import LabError

from .numpy_forward import feature_rows

FIX = 'serve on cpu ([tool.lab.serve] device = "cpu", or in [tool.lab.serve.models.<name>])'


def cuda_index(device: str) -> int:
    """N of ``"cuda:N"`` (``"cuda"``: 0); ``LabError`` for anything else but ``"cpu"``."""
    if device == "cuda":
        return 0
    if device.startswith("cuda:") and device[5:].isdigit():
        return int(device[5:])
    raise LabError(f'cannot place a model on {device!r}: a device is "cpu", "cuda" or "cuda:N"')


def check_cuda(index: int) -> None:
    """``LabError`` naming the fix unless torch sees CUDA device ``index`` here."""
    if not torch.cuda.is_available():
        build = f"torch {torch.__version__}" + (" is a CPU-only build" if torch.version.cuda is None else
                                                f" (CUDA {torch.version.cuda}) sees no CUDA device")
        raise LabError(f"no CUDA device {index} here ({build}); {FIX}, or run lab serve where a GPU and a "
                       "CUDA build of torch are")
    count = torch.cuda.device_count()
    if index >= count:
        raise LabError(f"no CUDA device {index} here: torch sees {count} (cuda:0 to cuda:{count - 1}; "
                       f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}); {FIX}, "
                       f"or choose a device below cuda:{count}")


def place_mlp(model: Any, device: str, memory_fraction: float = 0.0) -> Any:
    """``model`` (an ``MLPScorer`` or ``LoadedMLP``) to score on ``device``: itself on
    ``"cpu"``; a ``DeviceMLP`` on ``"cuda:N"``, after checking the device exists and,
    with ``memory_fraction`` above 0, capping this process's CUDA caching allocator on it
    to that fraction of the device's memory (``torch.cuda.set_per_process_memory_fraction``:
    one cap per process and device, shared by every model the process serves there)."""
    if device == "cpu":
        return model
    index = cuda_index(device)
    if type(model).__name__ == "QuantizedMLP":
        raise LabError(f"a quantized (int8) model scores on the CPU only; {FIX}, or serve the float model on "
                       f"{device}")
    check_cuda(index)
    if memory_fraction > 0:
        torch.cuda.set_per_process_memory_fraction(float(memory_fraction), index)
    scorer = model.torch_scorer() if hasattr(type(model), "torch_scorer") else model
    return DeviceMLP(scorer, torch.device("cuda", index))


class DeviceMLP:
    """An ``MLPScorer``'s network on one torch device, behind the ``ScoringModel`` contract.

    ``predict`` scores every batch with torch on ``device`` (rows copied there, float32
    scores copied back); the same outputs as the ``MLPScorer`` up to the device's float
    arithmetic. ``invariant_batch_rows`` is 1: a GPU's kernels may differ with the batch
    size, so the server's micro-batcher scores row by row and a row's score never depends
    on the requests beside it. ``device`` names where it scores (``"cuda:0"``).
    """

    invariant_batch_rows = 1

    def __init__(self, scorer: Any, device: torch.device):
        self.device = str(device)
        self.feature_names = list(scorer.feature_names)
        self.params = dict(scorer.params)
        self.scaler = scorer.scaler
        self.task = scorer.task
        self.target = scorer.target
        self.forward_note = f"torch on {self.device} for every batch"
        self._torch_device = device
        self.net = copy.deepcopy(scorer.net).to(device).eval()
        linears = [m for m in self.net.layers if isinstance(m, nn.Linear)]
        self._hidden = [(m.weight.detach(), m.bias.detach()) for m in linears[:-1]]
        self._out = (linears[-1].weight.detach(), linears[-1].bias.detach())
        self._mean, self._std = self.net.mean.detach(), self.net.std.detach()

    def predict(self, features: np.ndarray) -> np.ndarray:
        """One value per row (a 1-D array is one row): a probability for classification, a
        prediction in label units for regression; float32, shape (n,)."""
        x = feature_rows(features, self.feature_names)
        with torch.inference_mode():
            h = torch.from_numpy(np.ascontiguousarray(x)).to(self._torch_device)
            h = (h - self._mean) / self._std
            for weight, bias in self._hidden:
                h = F.linear(h, weight, bias).relu_()
            out = F.linear(h, *self._out).squeeze(-1)
            if self.target is None:
                return torch.sigmoid(out).float().cpu().numpy()
            out = out.float().cpu().numpy()
        return (out.astype(np.float64) * self.target.std[0] + self.target.mean[0]).astype(np.float32)
