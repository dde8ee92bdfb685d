"""The saved-model folder: written atomically, verified by digest when read.

Layout of a model folder::

    model.json      manifest: flavor, format, task, architecture, sha256 of every file below
    weights.pt      torch state dict of the TabularMLP (scaler buffers included)
    scaler.json     the training-set scaler (also inside the weights; here for people)
    features.json   feature names, in the column order ``predict`` expects
    params.json     the hyperparameters the model was trained with
    target.json     regression only: the training target's mean and std (outputs are
                    standardized targets; ``predict`` maps them back to label units)
    forward.npz     the same network as float32 numpy arrays (scaler, then each layer's
                    weight and bias), for scoring small batches without torch's
                    per-call cost; present when it matched the torch forward at save time

Format 2 records the task in the manifest; a format-1 folder (written before regression
existed) has no task and is a classification model.

The manifest's ``numpy_forward`` says what ``save_model`` found when it checked the numpy
forward against torch on random rows (``network.export_numpy_forward``): the file, the
rows checked and the largest difference, or, when it did not match, no file and the
reason. ``load_model`` gives the model that forward for batches of up to
``numpy_forward.SMALL_BATCH`` rows; a folder without one (saved before it existed, or
whose check failed) scores every batch with torch, as before.

``save_model`` builds the folder beside its target under a hidden temporary name,
fsyncs every file and the folder, then renames it into place, so a reader never sees a
half folder. ``load_model`` refuses a folder whose files do not match the manifest.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lab.atomic import fsync_dir
from lab.errors import LabError
from lab.training.protocol import Scaler

from . import numpy_forward
from .loaded import LoadedMLP
from .numpy_forward import NumpyForward

if TYPE_CHECKING:
    from .network import MLPScorer

# torch (and .network, which imports it) load inside the functions that need it: a model
# with a numpy forward loads and scores small batches without torch (``loaded.LoadedMLP``).

FLAVOR_NAME = "lightning_mlp"
FORMAT_VERSION = 2
READABLE_FORMATS = (1, 2)  # 1: no task recorded, so classification
MANIFEST = "model.json"


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def _json_bytes(value: Any, what: str) -> bytes:
    try:
        return json.dumps(value, indent=2, sort_keys=True, allow_nan=False).encode("utf-8")
    except (TypeError, ValueError) as exc:
        raise LabError(f"cannot save the model: its {what} are not plain JSON values ({exc}); use numbers, strings, lists") from None


def save_model(model: MLPScorer, path: Path) -> None:
    """Write ``model`` as a folder at ``path``, replacing any model folder already there.

    An existing folder is swapped out by two renames, so a concurrent reader sees the
    old folder, no folder, or the new one, never a mix. On any error nothing changes.
    """
    import torch

    from .network import MLPScorer, export_numpy_forward

    if isinstance(model, LoadedMLP):
        model = model.torch_scorer()
    if not isinstance(model, MLPScorer):
        raise LabError(f"the {FLAVOR_NAME} flavor saves models it trained; got {type(model).__name__}")
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise LabError(f"{path} exists and is not a folder; choose another model path")
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:12]}"
    staging.mkdir()
    try:
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
        forward, forward_record = export_numpy_forward(model)
        if forward is not None:
            files[numpy_forward.FILE] = forward.to_bytes()
            forward_record = {"file": numpy_forward.FILE, **forward_record}
        for name, data in files.items():
            _write_synced(staging / name, data)
        manifest = {
            "flavor": FLAVOR_NAME,
            "format": FORMAT_VERSION,
            "task": model.task,
            "architecture": {
                "n_features": len(model.feature_names),
                "hidden_sizes": list(model.params["hidden_sizes"]),
                "dropout": float(model.params["dropout"]),
            },
            "files": {name: hashlib.sha256(data).hexdigest() for name, data in files.items()},
            "numpy_forward": forward_record,
            "torch": torch.__version__,
        }
        # The manifest goes last: a folder with a manifest has all its files.
        _write_synced(staging / MANIFEST, _json_bytes(manifest, "manifest"))
        fsync_dir(staging)
        if path.exists():
            retired = path.parent / f".{path.name}.old-{uuid.uuid4().hex[:12]}"
            os.rename(path, retired)
            os.rename(staging, path)
            fsync_dir(path.parent)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            os.rename(staging, path)
            fsync_dir(path.parent)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _read_manifest(path: Path) -> dict[str, Any]:
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise LabError(f"{path} holds no {MANIFEST}: it is not a saved {FLAVOR_NAME} model (or the save never finished)")
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, ValueError) as exc:
        raise LabError(f"{manifest_path} is unreadable ({exc}); the model folder is damaged, save it again") from None
    if manifest.get("flavor") != FLAVOR_NAME:
        raise LabError(f"{path} holds a {manifest.get('flavor')!r} model, not {FLAVOR_NAME!r}; load it with that flavor")
    if manifest.get("format") not in READABLE_FORMATS:
        raise LabError(
            f"{path} uses model format {manifest.get('format')}; this lab reads formats "
            f"{', '.join(map(str, READABLE_FORMATS))}: upgrade lab to load it"
        )
    task = manifest.setdefault("task", "classification") if manifest["format"] == 1 else manifest.get("task")
    if task not in ("classification", "regression"):
        raise LabError(f"{manifest_path} records task {task!r}; the {FLAVOR_NAME} flavor does classification or regression")
    return manifest


def load_model(path: Path) -> "MLPScorer | LoadedMLP":
    """Read a folder written by ``save_model`` after checking every file's sha256.

    A folder with a numpy forward gives a ``LoadedMLP`` (torch is imported and the network
    built from ``weights.pt`` only for a batch over ``numpy_forward.SMALL_BATCH`` rows);
    one without gives the torch ``MLPScorer``.

    Raises ``LabError`` naming the file when a digest does not match (tampered or corrupt).
    """
    path = Path(path)
    manifest = _read_manifest(path)
    contents: dict[str, bytes] = {}
    for name, expected in manifest.get("files", {}).items():
        try:
            data = (path / name).read_bytes()
        except OSError:
            raise LabError(f"{path / name} is missing; the model folder is damaged, save it again") from None
        if hashlib.sha256(data).hexdigest() != expected:
            raise LabError(
                f"{path / name} does not match the sha256 in {MANIFEST}: the model was changed or corrupted "
                "after it was saved; restore it or train it again"
            )
        contents[name] = data
    if "weights.pt" not in contents:
        raise LabError(f"{path / MANIFEST} lists no weights.pt; the model folder is damaged, save it again")
    arch = manifest["architecture"]
    params = json.loads(contents["params.json"])
    feature_names = json.loads(contents["features.json"])
    scaler = Scaler.from_dict(json.loads(contents["scaler.json"]))
    task = manifest["task"]
    target = None
    if task == "regression":
        if "target.json" not in contents:
            raise LabError(f"{path / MANIFEST} is a regression model but lists no target.json; save it again")
        target = Scaler.from_dict(json.loads(contents["target.json"]))
    forward, note = _numpy_forward(path, manifest, contents)

    def torch_model() -> "MLPScorer":
        import torch

        from .network import MLPScorer, TabularMLP

        net = TabularMLP(arch["n_features"], arch["hidden_sizes"], arch["dropout"], scaler)
        try:
            state = torch.load(io.BytesIO(contents["weights.pt"]), map_location="cpu", weights_only=True)
            net.load_state_dict(state)
        except Exception as exc:  # noqa: BLE001 - torch raises many kinds; all mean the same here
            raise LabError(f"{path / 'weights.pt'} does not fit the manifest's architecture: {exc}") from None
        return MLPScorer(net, feature_names, params, scaler, task=task, target=target,
                         numpy_forward=forward, forward_note=note)

    if forward is None:
        return torch_model()
    return LoadedMLP(torch_model, feature_names, params, scaler, task=task, target=target,
                     numpy_forward=forward, forward_note=note)


def _numpy_forward(path: Path, manifest: dict[str, Any], contents: dict[str, bytes]
                   ) -> tuple[NumpyForward | None, str]:
    """The folder's checked numpy forward, if it has one, and a note on which forward scores what."""
    record = manifest.get("numpy_forward")
    if not isinstance(record, dict):
        return None, "torch for every batch: the model was saved without a numpy forward"
    name = record.get("file")
    if not name:
        return None, f"torch for every batch: {record.get('reason') or 'no numpy forward was exported'}"
    if name not in contents:
        raise LabError(f"{path / MANIFEST} names the numpy forward {name} but does not list its sha256; "
                       "the model folder is damaged, save it again")
    forward = NumpyForward.from_bytes(contents[name], str(path / name))
    arch = manifest["architecture"]
    widths = [w.shape[0] for w in forward.weights]
    if forward.n_features != arch["n_features"] or widths != [*arch["hidden_sizes"], 1]:
        raise LabError(f"{path / name} holds a network of {forward.n_features} inputs and layers {widths}, not "
                       f"the manifest's {arch['n_features']} and {[*arch['hidden_sizes'], 1]}; save the model again")
    note = (f"numpy for batches of up to {numpy_forward.SMALL_BATCH} rows (within "
            f"{record.get('max_abs_diff', float('nan')):.1g} of torch at save time), torch above")
    return forward, note
