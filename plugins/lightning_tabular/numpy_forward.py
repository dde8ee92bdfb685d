"""The ``TabularMLP`` forward in numpy, for scoring a few rows at a time.

A one-row torch forward is mostly per-operator dispatch, not arithmetic: the same
arithmetic in numpy costs a fraction of it. ``save_model`` exports the network's weights
and its scaler as float32 arrays (``forward.npz``) after checking on random inputs that
this forward gives the torch forward's output (``network.check_numpy_forward``), and
``load_model`` hands it to the loaded model (``loaded.LoadedMLP``), which uses it for batches of up to
``SMALL_BATCH`` rows. Larger batches (evaluation, batch scoring) keep torch, so their
scores are what they always were.

This module imports numpy only: no torch.
"""

from __future__ import annotations

import io
import math
import zipfile
from typing import Mapping, Sequence

import numpy as np

from lab.errors import LabError

FILE = "forward.npz"
"""The exported arrays, in the model folder beside ``weights.pt``."""

SMALL_BATCH = 64
"""Batches of up to this many rows use the numpy forward. Measured on a 15-64-32-1 MLP
on this kind of machine: numpy is about 5x faster for one row and still faster at 64;
for large batches torch's multithreaded kernels win."""

BLOCK = 8
"""Rows are scored in whole blocks of this many (padded with zeros): each row's output is
then the same whatever batch it comes in (checked by tests/test_numpy_forward.py)."""

TOLERANCE = 1e-5
"""The largest absolute difference from the torch forward's output (the logit, or the
standardized regression target) accepted at export."""

_ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # fixed, so the same weights give the same bytes (and digest)


class NumpyForward:
    """Standardize with the scaler, then ``x @ W.T + b`` and ReLU per hidden layer, then
    the linear output: what ``TabularMLP.forward`` computes in eval mode (dropout off),
    on float32 arrays. ``__call__`` takes raw float32 rows (n, n_features) and returns
    the network's output, shape (n,), float32."""

    def __init__(self, mean: np.ndarray, std: np.ndarray, layers: Sequence[tuple[np.ndarray, np.ndarray]]):
        self.mean = np.ascontiguousarray(mean, dtype=np.float32)
        self.std = np.ascontiguousarray(std, dtype=np.float32)
        if not layers:
            raise LabError("a numpy forward needs at least the output layer")
        width = self.mean.shape[0]
        if self.mean.shape != (width,) or self.std.shape != (width,):
            raise LabError(f"the scaler's mean and std must be two vectors of {width}; got "
                           f"{self.mean.shape} and {self.std.shape}")
        self.weights: list[np.ndarray] = []  # (out, in), as torch keeps them
        self._layers: list[tuple[np.ndarray, np.ndarray]] = []  # (in, out) for x @ w, and the bias
        for i, (weight, bias) in enumerate(layers):
            weight = np.ascontiguousarray(weight, dtype=np.float32)
            bias = np.ascontiguousarray(bias, dtype=np.float32)
            if weight.ndim != 2 or weight.shape[1] != width or bias.shape != (weight.shape[0],):
                raise LabError(f"layer {i} of the numpy forward has weight {weight.shape} and bias "
                               f"{bias.shape} after a layer of width {width}")
            self.weights.append(weight)
            self._layers.append((np.ascontiguousarray(weight.T), bias))
            width = weight.shape[0]
        if width != 1:
            raise LabError(f"the numpy forward's last layer must have one output, not {width}")
        self._hidden = self._layers[:-1]
        self._out_w = self._layers[-1][0][:, 0].copy()  # (in,): a dot product per row
        self._out_b = self._layers[-1][1][0]  # a float32 scalar
        self.n_features = self.mean.shape[0]

    def __call__(self, x: np.ndarray) -> np.ndarray:
        # Few, in-place operations: on a handful of rows each costs about a microsecond
        # whatever its size, so their count is the cost.
        n = x.shape[0]
        if n % BLOCK:
            # Rows padded to a whole block: BLAS takes other kernels for other row counts
            # (one row is a matrix-vector product), whose sums round differently in the
            # last bit. In whole blocks a row's output does not depend on the batch it is
            # in, so the server may score concurrent requests together (micro-batching)
            # and answer each exactly what it would alone.
            padded = np.zeros((n + BLOCK - n % BLOCK, x.shape[1]), dtype=np.float32)
            padded[:n] = x
            x = padded
        h = np.subtract(x, self.mean)
        np.divide(h, self.std, out=h)
        for weight, bias in self._hidden:
            h = np.dot(h, weight)
            h += bias
            np.maximum(h, 0.0, out=h)
        out = np.dot(h, self._out_w)
        out += self._out_b
        return out[:n] if out.shape[0] != n else out

    # -- the file ------------------------------------------------------------------------

    def arrays(self) -> dict[str, np.ndarray]:
        """The arrays the file holds: ``mean``, ``std``, and ``weight_i``/``bias_i`` per layer."""
        out = {"mean": self.mean, "std": self.std}
        for i, ((_, bias), weight) in enumerate(zip(self._layers, self.weights)):
            out[f"weight_{i}"] = weight
            out[f"bias_{i}"] = bias
        return out

    def to_bytes(self) -> bytes:
        """An ``.npz`` archive (numpy's format, no pickles), the same bytes for the same weights."""
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
            for name, array in self.arrays().items():
                data = io.BytesIO()
                np.lib.format.write_array(data, array, allow_pickle=False)
                archive.writestr(zipfile.ZipInfo(f"{name}.npy", date_time=_ZIP_TIME), data.getvalue())
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes, what: str = FILE) -> "NumpyForward":
        """Read what ``to_bytes`` wrote; ``LabError`` naming ``what`` when it is not that."""
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as archive:
                arrays = {name: archive[name] for name in archive.files}
        except (OSError, ValueError, zipfile.BadZipFile) as exc:
            raise LabError(f"{what} is not a numpy forward ({exc}); save the model again") from None
        return cls.from_arrays(arrays, what)

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray], what: str = FILE) -> "NumpyForward":
        n_layers = sum(1 for name in arrays if name.startswith("weight_"))
        try:
            layers = [(arrays[f"weight_{i}"], arrays[f"bias_{i}"]) for i in range(n_layers)]
            return cls(arrays["mean"], arrays["std"], layers)
        except KeyError as exc:
            raise LabError(f"{what} lacks the array {exc}; save the model again") from None


def sigmoid(z: np.ndarray) -> np.ndarray:
    """The logistic function of float32 outputs, as float32, without overflow for very
    negative ``z``. Up to ``SMALL_BATCH`` values (every batch the numpy forward scores) are
    done one by one in Python floats, cheap at that size and the same for a row alone or
    in a batch; more as arrays."""
    if z.shape[0] <= _SCALAR_SIGMOID_ROWS:
        return np.array([_sigmoid(v) for v in z.tolist()], dtype=np.float32)
    e = np.exp(-np.abs(z))
    return np.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e)).astype(np.float32, copy=False)


_SCALAR_SIGMOID_ROWS = SMALL_BATCH  # every batch the numpy forward scores: one path, so a row's
# probability is the same alone or in a batch (the array path rounds differently)


def _sigmoid(v: float) -> float:
    if v >= 0:
        return 1.0 / (1.0 + math.exp(-v))
    e = math.exp(v)
    return e / (1.0 + e)


def feature_rows(features: np.ndarray, feature_names: Sequence[str]) -> np.ndarray:
    """``features`` as float32 rows of the model's features (a 1-D array is one row), or a
    ``LabError`` naming the expected columns, or saying NaN or infinity must be filled."""
    x = np.asarray(features, dtype=np.float32)
    if x.ndim == 1:
        x = x.reshape(1, -1)
    if x.ndim != 2 or x.shape[1] != len(feature_names):
        raise LabError(f"expected rows of {len(feature_names)} features ({', '.join(feature_names)}), "
                       f"got an array of shape {np.shape(features)}")
    if not np.isfinite(x).all():
        raise LabError("features hold NaN or infinity; fill missing values before scoring")
    return x
