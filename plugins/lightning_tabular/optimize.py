"""Cheaper ``lightning_mlp`` models to serve: int8 dynamic quantization and distillation.

``LightningMLP.quantize`` and ``LightningMLP.distill`` (the optional ``ModelFlavor``
methods ``lab.steps.optimize`` calls) land here; this module imports torch, so the
flavor imports it only when one of them runs, or when a quantized folder is loaded.

**Quantization.** ``quantize_mlp`` applies torch's dynamic quantization to every
``nn.Linear`` of the network (``torch.ao.quantization.quantize_dynamic``, qint8 weights
per tensor; each call quantizes its input activations with a scale taken from that
input). torch 2.13 marks the ``torch.ao.quantization`` API deprecated in favour of
torchao's ``quantize_(model, Int8DynamicActivationInt8WeightConfig())``; torchao is not
installed here, and the deprecated API still works offline with the pinned torch, so it
is used, its warnings silenced in this one call. Two consequences of per-call activation
scales, both recorded on the model:

- the numpy forward cannot reproduce int8 kernels bit for bit, so a quantized model is
  always scored by torch (``forward_note``), and loading one imports torch;
- a row's score depends on the other rows of its batch (their range sets the scale), so
  ``invariant_batch_rows`` is 1: the server's micro-batching scores it row by row.

The saved folder is the flavor's usual one (``artifact``) with ``weights.pt`` holding the
quantized state dict (int8 weights and their scales), no ``forward.npz``, and a
``quantization`` record in ``model.json`` that ``LightningMLP.load`` looks for before it
hands a folder to ``artifact.load_model``.

**Distillation.** ``distill_mlp`` trains a smaller ``TabularMLP`` (by default one hidden
layer half as wide as the teacher's narrowest) on the teacher's scores: binary
cross-entropy against the teacher's probabilities for classification, mean squared error
against the teacher's standardized predictions for regression. It keeps the teacher's
scaler (and target statistics), trains in plain torch with the flavor's seeded loader
(no Lightning: a few epochs of a small network, no checkpoints to resume), keeps the
epoch with the lowest validation loss against the teacher, and returns an ordinary
``MLPScorer``: it saves with a checked numpy forward and serves like any version.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import io
import json
import math
import os
import shutil
import uuid
import warnings
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch import nn

from lab.atomic import atomic_write_text, fsync_dir
from lab.errors import LabError
from lab.training.flavor import FitResult
from lab.training.protocol import Scaler

from .artifact import FLAVOR_NAME, FORMAT_VERSION, MANIFEST, _json_bytes, _read_manifest, _write_synced
from .data import tabular_loader
from .flavor import normalize_params
from .loaded import LoadedMLP
from .network import MLPScorer, TabularMLP
from .numpy_forward import feature_rows, sigmoid

QUANTIZATION = {"method": "dynamic", "dtype": "qint8", "modules": ["Linear"],
                "api": "torch.ao.quantization.quantize_dynamic"}
"""What ``model.json`` records of a quantized model (plus the engine that packed it)."""

NO_NUMPY_FORWARD = ("torch int8 for every batch: the numpy forward does not run int8 kernels, and a row's "
                    "score depends on its batch (activations are quantized per call)")


# -- quantization ------------------------------------------------------------------------


def _scorer(model: Any) -> Any:
    """The torch model behind a loaded ``lightning_mlp`` model."""
    if isinstance(model, LoadedMLP):
        return model.torch_scorer()
    if isinstance(model, (MLPScorer, QuantizedMLP)):
        return model
    raise LabError(f"the {FLAVOR_NAME} flavor optimizes models it trained or loaded; got {type(model).__name__}")


def _quantize_net(net: TabularMLP) -> nn.Module:
    """A copy of ``net`` with every Linear dynamically quantized to int8 (eval mode)."""
    try:
        from torch.ao.quantization import quantize_dynamic
    except ImportError:  # the deprecated API is gone from this torch
        raise LabError(f"torch {torch.__version__} has no torch.ao.quantization.quantize_dynamic; this lab's "
                       "quantization needs torch 2.13 as pinned in requirements.lock (torchao's quantize_ "
                       "is its successor, not wired in yet)") from None
    with warnings.catch_warnings(), _packing_engine():
        # Deprecated in favour of torchao, which is not installed; the API works with the pinned torch.
        warnings.filterwarnings("ignore", category=DeprecationWarning, message=r".*torch\.ao\.quantization.*")
        warnings.filterwarnings("ignore", category=UserWarning, message=r".*quantize_per_tensor.*")
        return quantize_dynamic(copy.deepcopy(net).eval(), {nn.Linear}, dtype=torch.qint8)


PACKING_ENGINE = "fbgemm"
"""The engine int8 weights are packed for when this CPU has it (x86). Packed weights keep
their engine's kernels whatever the process's engine is later. Measured on a 15-64-32-1
MLP here, one row: fbgemm 65 us, x86 (torch's default, which may pick oneDNN) 123 us."""


@contextlib.contextmanager
def _packing_engine() -> Iterator[str]:
    """torch's quantized engine set to ``PACKING_ENGINE`` (if supported) while weights are
    packed, then the process's engine back."""
    previous = torch.backends.quantized.engine
    engine = PACKING_ENGINE if PACKING_ENGINE in torch.backends.quantized.supported_engines else previous
    torch.backends.quantized.engine = engine
    try:
        yield engine
    finally:
        torch.backends.quantized.engine = previous


class QuantizedMLP:
    """A ``TabularMLP`` with int8 dynamically quantized Linear layers, behind the
    ``ScoringModel`` contract (``predict`` as ``MLPScorer.predict``: raw float32 rows in,
    a probability or a label-unit prediction out, float32, shape (n,)).

    Always scored by torch; ``invariant_batch_rows`` is 1 because a row's score depends
    on the rows scored with it (see the module docstring). ``memory_bytes()`` counts the
    int8 weights, float biases and the scaler (the server's model-memory bound reads it:
    packed int8 weights are invisible to a walk over tensors)."""

    invariant_batch_rows = 1
    forward_note = NO_NUMPY_FORWARD

    def __init__(self, net: nn.Module, feature_names: list[str], params: dict[str, Any], scaler: Scaler, *,
                 task: str, target: Scaler | None, architecture: dict[str, Any], quantization: dict[str, Any]):
        if task == "regression" and (target is None or target.n_features != 1):
            raise LabError("a regression model needs the training target's mean and std (a one-column Scaler)")
        self.net = net.eval()
        self.feature_names = list(feature_names)
        self.params = dict(params)
        self.scaler = scaler
        self.task = task
        self.target = target if task == "regression" else None
        self.architecture = dict(architecture)
        self.quantization = dict(quantization)
        self._memory = _quantized_bytes(self.net)

    def memory_bytes(self) -> int:
        """Bytes of the weights as held: int8 weights, float32 biases, scaler mean and std."""
        return self._memory

    def predict(self, features: np.ndarray) -> np.ndarray:
        """One value per row of ``features`` (a 1-D array is one row)."""
        x = feature_rows(features, self.feature_names)
        if not (x.flags.c_contiguous and x.flags.writeable):
            x = np.array(x, dtype=np.float32, order="C")
        with torch.inference_mode():
            out = self.net(torch.from_numpy(x)).numpy()
        if self.target is None:
            return sigmoid(out)
        return (out.astype(np.float64) * self.target.std[0] + self.target.mean[0]).astype(np.float32)


def _quantized_bytes(net: nn.Module) -> int:
    total = net.mean.numel() * 4 + net.std.numel() * 4
    for module in net.modules():
        weight, bias = getattr(module, "weight", None), getattr(module, "bias", None)
        if callable(weight):  # a quantized Linear: weight() and bias() unpack its parameters
            weight, bias = weight(), bias()
        if isinstance(weight, torch.Tensor) and module is not net:
            total += weight.numel() * weight.element_size()
            if isinstance(bias, torch.Tensor):
                total += bias.numel() * bias.element_size()
    return int(total)


def quantize_mlp(model: Any) -> QuantizedMLP:
    """``model`` (an ``MLPScorer`` or a loaded model) with its Linear layers int8."""
    scorer = _scorer(model)
    if isinstance(scorer, QuantizedMLP):
        raise LabError("this model is already quantized; quantize its float parent instead")
    net = scorer.net
    architecture = {"n_features": len(scorer.feature_names), "hidden_sizes": list(scorer.params["hidden_sizes"]),
                    "dropout": float(scorer.params["dropout"])}
    with _packing_engine() as engine:
        record = {**QUANTIZATION, "engine": engine}
    return QuantizedMLP(_quantize_net(net), scorer.feature_names, scorer.params, scorer.scaler, task=scorer.task,
                        target=scorer.target, architecture=architecture, quantization=record)


def save_quantized(model: QuantizedMLP, path: Path) -> None:
    """Write ``model`` as a model folder at ``path`` (replacing one there), atomically: built
    under a hidden name beside it, every file and the folder fsynced, then renamed."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise LabError(f"{path} exists and is not a folder; choose another model path")
    weights = io.BytesIO()
    torch.save(model.net.state_dict(), weights)
    files = {
        "weights.pt": weights.getvalue(),
        "params.json": _json_bytes(model.params, "params"),
        "features.json": _json_bytes(model.feature_names, "feature names"),
        "scaler.json": _json_bytes(model.scaler.to_dict(), "scaler statistics"),
    }
    if model.task == "regression":
        files["target.json"] = _json_bytes(model.target.to_dict(), "target statistics")
    manifest = {
        "flavor": FLAVOR_NAME, "format": FORMAT_VERSION, "task": model.task, "architecture": model.architecture,
        "files": {name: hashlib.sha256(data).hexdigest() for name, data in files.items()},
        "numpy_forward": {"file": None, "reason": NO_NUMPY_FORWARD},
        "quantization": model.quantization, "torch": torch.__version__,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:12]}"
    staging.mkdir()
    try:
        for name, data in files.items():
            _write_synced(staging / name, data)
        _write_synced(staging / MANIFEST, _json_bytes(manifest, "manifest"))  # last: a manifest means complete
        fsync_dir(staging)
        retired = path.parent / f".{path.name}.old-{uuid.uuid4().hex[:12]}"
        if path.exists():
            os.rename(path, retired)
        os.rename(staging, path)
        fsync_dir(path.parent)
        shutil.rmtree(retired, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def is_quantized(manifest: dict[str, Any]) -> bool:
    """Whether a model folder's manifest is a quantized model's."""
    return isinstance(manifest.get("quantization"), dict)


def load_quantized(path: Path) -> QuantizedMLP:
    """Read a folder ``save_quantized`` wrote, after checking every file's sha256."""
    path = Path(path)
    manifest = _read_manifest(path)
    if not is_quantized(manifest):
        raise LabError(f"{path} holds a float {FLAVOR_NAME} model, not a quantized one; load it with the flavor")
    record = manifest["quantization"]
    if record.get("method") != "dynamic" or record.get("dtype") != "qint8":
        raise LabError(f"{path / MANIFEST} records quantization {record!r}; this lab reads dynamic qint8 only: "
                       "upgrade lab to load it")
    contents: dict[str, bytes] = {}
    for name, expected in manifest.get("files", {}).items():
        try:
            data = (path / name).read_bytes()
        except OSError:
            raise LabError(f"{path / name} is missing; the model folder is damaged, save it again") from None
        if hashlib.sha256(data).hexdigest() != expected:
            raise LabError(f"{path / name} does not match the sha256 in {MANIFEST}: the model was changed or "
                           "corrupted after it was saved; restore it or quantize its parent again")
        contents[name] = data
    arch = manifest["architecture"]
    scaler = Scaler.from_dict(json.loads(contents["scaler.json"]))
    task = manifest["task"]
    target = Scaler.from_dict(json.loads(contents["target.json"])) if task == "regression" else None
    net = _quantize_net(TabularMLP(arch["n_features"], arch["hidden_sizes"], arch["dropout"], scaler))
    try:
        with warnings.catch_warnings(), _packing_engine():
            # torch's own unpickling of quantized tensors still goes through TypedStorage.
            warnings.filterwarnings("ignore", category=UserWarning, message=r".*TypedStorage is deprecated.*")
            state = torch.load(io.BytesIO(contents["weights.pt"]), map_location="cpu", weights_only=True)
            net.load_state_dict(state)
    except Exception as exc:  # noqa: BLE001 - torch raises many kinds; all mean the same here
        raise LabError(f"{path / 'weights.pt'} does not fit the manifest's quantized architecture: {exc}") from None
    return QuantizedMLP(net, json.loads(contents["features.json"]), json.loads(contents["params.json"]), scaler,
                        task=task, target=target, architecture=arch, quantization=record)


# -- distillation ------------------------------------------------------------------------

STUDENT_LR = 3e-3
"""The student's default learning rate: soft targets are smooth, a higher rate than the sweep's converges."""


def student_params(teacher_params: dict[str, Any], task: str) -> dict[str, Any]:
    """The default student: one hidden layer half as wide as the teacher's narrowest (at
    least 4), no dropout, ``STUDENT_LR``, the teacher's batch size."""
    width = max(4, min(teacher_params["hidden_sizes"]) // 2)
    params = {"hidden_sizes": [width], "dropout": 0.0, "lr": STUDENT_LR,
              "batch_size": int(teacher_params.get("batch_size", 512)), "weight_decay": 0.0}
    if task == "classification":
        params["pos_weight"] = 1.0  # the teacher's scores already carry its class weighting
    return params


@contextlib.contextmanager
def _seeded_session(seed: int, threads: int) -> Iterator[None]:
    """Seeded, deterministic, fixed threads; the caller's RNG, threads and determinism come back after."""
    previous_threads = torch.get_num_threads()
    previous_deterministic = torch.are_deterministic_algorithms_enabled()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(True)
        try:
            yield
        finally:
            torch.set_num_threads(previous_threads)
            torch.use_deterministic_algorithms(previous_deterministic)


def _rows(name: str, x: Any, targets: Any, n_features: int, task: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        x = np.ascontiguousarray(x, dtype=np.float32)
        targets = np.ascontiguousarray(targets, dtype=np.float32).ravel()
    except (TypeError, ValueError):
        raise LabError(f"{name} rows and the teacher's scores must be numbers") from None
    if x.ndim != 2 or x.shape[1] != n_features or x.shape[0] != targets.shape[0] or x.shape[0] == 0:
        raise LabError(f"{name}_x must be rows × {n_features} features with one teacher score per row; got "
                       f"{x.shape} and {targets.shape[0]} scores")
    if not (np.isfinite(x).all() and np.isfinite(targets).all()):
        raise LabError(f"{name} rows or teacher scores hold NaN or infinity; fill missing feature values first")
    if task == "classification" and ((targets < 0) | (targets > 1)).any():
        raise LabError(f"{name} teacher scores of a classifier must be probabilities in [0, 1]")
    return x, targets


def distill_mlp(teacher: Any, train_x: Any, soft_targets: Any, valid_x: Any, valid_targets: Any,
                params: dict[str, Any] | None, *, seed: int, workdir: Path, max_epochs: int,
                threads: int = 1) -> FitResult:
    """Train a student on ``teacher``'s scores (see the module docstring); writes
    ``workdir/distill.json`` (params, per-epoch losses, the epoch kept). Returns the
    student (an ``MLPScorer``) and ``metrics``: ``val_distill_loss`` (its validation loss
    against the teacher at the epoch kept), ``val_teacher_mae`` (mean absolute difference
    from the teacher's scores, in score units), ``best_epoch`` and ``epochs``."""
    scorer = _scorer(teacher)
    task = scorer.task
    if not isinstance(max_epochs, int) or isinstance(max_epochs, bool) or max_epochs < 1:
        raise LabError(f"max_epochs must be a whole number of at least 1; got {max_epochs!r}")
    n = len(scorer.feature_names)
    x_tr, t_tr = _rows("train", train_x, soft_targets, n, task)
    x_va, t_va = _rows("valid", valid_x, valid_targets, n, task)
    p = normalize_params({**student_params(scorer.params, task), **(params or {})}, task)
    target = scorer.target
    if task == "classification":
        loss_fn: nn.Module = nn.BCEWithLogitsLoss()
        fit_tr, fit_va = t_tr, t_va
    else:  # the student learns the teacher's standardized output, as the teacher learnt the labels'
        loss_fn = nn.MSELoss()
        fit_tr = ((t_tr.astype(np.float64) - target.mean[0]) / target.std[0]).astype(np.float32)
        fit_va = ((t_va.astype(np.float64) - target.mean[0]) / target.std[0]).astype(np.float32)
    history: list[dict[str, float]] = []
    with _seeded_session(seed, threads):
        net = TabularMLP(n, p["hidden_sizes"], p["dropout"], scorer.scaler)
        optimizer = torch.optim.AdamW(net.parameters(), lr=p["lr"], weight_decay=p["weight_decay"])
        loader = tabular_loader(torch.from_numpy(x_tr), torch.from_numpy(fit_tr), p["batch_size"], seed=seed,
                                shuffle=True)
        xv, tv = torch.from_numpy(x_va), torch.from_numpy(fit_va)
        best_loss, best_epoch, best_state = math.inf, -1, None
        for epoch in range(max_epochs):
            loader.sampler.set_epoch(epoch)
            net.train()
            total, rows = 0.0, 0
            for xb, tb in loader:
                optimizer.zero_grad(set_to_none=True)
                loss = loss_fn(net(xb), tb)
                loss.backward()
                optimizer.step()
                total += float(loss.detach()) * tb.shape[0]
                rows += tb.shape[0]
            net.eval()
            with torch.inference_mode():
                val_loss = float(loss_fn(net(xv), tv))
            history.append({"epoch": epoch, "train_loss": total / rows, "val_loss": val_loss})
            if val_loss < best_loss:
                best_loss, best_epoch, best_state = val_loss, epoch, copy.deepcopy(net.state_dict())
        if best_state is None:
            raise LabError("the student's validation loss was never finite (diverged); lower its lr in "
                           "[tool.lab.optimize] student_params")
        net.load_state_dict(best_state)
    student = MLPScorer(net, scorer.feature_names, p, scorer.scaler, task=task, target=target)
    agreement = float(np.mean(np.abs(student.predict(x_va).astype(np.float64) - t_va)))
    metrics = {"val_distill_loss": best_loss, "val_teacher_mae": agreement, "best_epoch": float(best_epoch),
               "epochs": float(max_epochs)}
    workdir = Path(workdir)
    atomic_write_text(workdir / "distill.json", json.dumps(
        {"params": p, "seed": seed, "train_rows": int(x_tr.shape[0]), "valid_rows": int(x_va.shape[0]),
         "history": history, "metrics": metrics}, indent=2))
    return FitResult(model=student, metrics=metrics, params=p)
