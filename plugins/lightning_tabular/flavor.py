"""The ``lightning_mlp`` model flavor: an MLP on tabular features, trained with Lightning on CPU.

Training is seeded and deterministic, checkpoints every epoch (see ``checkpoints``) and
resumes from the newest good checkpoint with the same final weights as an
uninterrupted run. Scoring (``network.MLPScorer``) needs torch only.

Two tasks: classification (one logit, ``BCEWithLogitsLoss`` with ``pos_weight``) and
regression (the target standardized with the training set's mean and std, MSE on that,
a linear output mapped back to label units when predicting).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import signal
import threading
import warnings
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import pytorch_lightning as pl
import torch
from torch import nn

from lab.atomic import atomic_write_text
from lab.errors import LabError
from lab.training.flavor import FitResult, ModelFlavor, ScoringModel
from lab.training.metrics import average_precision, roc_auc, task_metrics
from lab.training.protocol import Scaler

from .artifact import FLAVOR_NAME, load_model, save_model
from .checkpoints import (
    EpochCheckpoint,
    capture_rng_state,
    newest_valid_checkpoint,
    remove_stale_temp_files,
    restore_rng_state,
)
from .data import tabular_loader
from .network import MLPScorer, TabularMLP

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


class _MLPTask(pl.LightningModule):
    """Loss, optimizer and validation metrics around a ``TabularMLP``; also carries RNG state in checkpoints.

    Regression trains on targets standardized with ``target``; its validation metrics are
    in label units.
    """

    def __init__(self, net: TabularMLP, lr: float, weight_decay: float, pos_weight: float | None,
                 task: str = "classification", target: Scaler | None = None):
        super().__init__()
        self.net = net
        self.lr = lr
        self.weight_decay = weight_decay
        self.task = task
        self.target = target
        if task == "classification":
            self.loss_fn = nn.BCEWithLogitsLoss(pos_weight=torch.tensor(pos_weight))
        else:
            self.loss_fn = nn.MSELoss()
        self.history: dict[int, dict[str, float]] = {}  # epoch -> validation metrics
        self._rng_to_restore: dict[str, Any] | None = None
        self._val_logits: list[torch.Tensor] = []
        self._val_labels: list[torch.Tensor] = []

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = self.loss_fn(self.net(x), y)
        self.log("train_loss", loss, on_step=False, on_epoch=True, batch_size=y.shape[0])
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self._val_logits.append(self.net(x))
        self._val_labels.append(y)

    def on_validation_epoch_end(self) -> None:
        logits, labels = torch.cat(self._val_logits), torch.cat(self._val_labels)
        self._val_logits, self._val_labels = [], []
        if self.task == "classification":
            scores, y = torch.sigmoid(logits).numpy(), labels.numpy()
            metrics = {
                "val_loss": float(self.loss_fn(logits, labels)),
                MONITOR: average_precision(y, scores),
                "val_roc_auc": roc_auc(y, scores),
            }
        else:
            mean, std = self.target.mean[0], self.target.std[0]
            predictions = logits.numpy().astype(np.float64) * std + mean
            y = labels.numpy().astype(np.float64) * std + mean
            metrics = {"val_loss": float(self.loss_fn(logits, labels))}
            metrics.update({f"val_{k}": v for k, v in task_metrics("regression", y, predictions).items()})
        self.history[self.current_epoch] = metrics
        for name, value in metrics.items():
            self.log(name, value, on_epoch=True)

    def configure_optimizers(self):
        return torch.optim.AdamW(self.net.parameters(), lr=self.lr, weight_decay=self.weight_decay)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["lab_rng_state"] = capture_rng_state()
        checkpoint["lab_history"] = {int(k): v for k, v in self.history.items()}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Applied at the next epoch start, after everything Lightning does on restore.
        self._rng_to_restore = checkpoint["lab_rng_state"]
        self.history = {int(k): dict(v) for k, v in checkpoint.get("lab_history", {}).items()}

    def on_train_epoch_start(self) -> None:
        if self._rng_to_restore is not None:
            restore_rng_state(self._rng_to_restore)
            self._rng_to_restore = None


class _EpochObservers(pl.Callback):
    """Feeds framework-neutral observers (objects with ``lab_epoch_end(epoch, metrics)``,
    like the sweep's pruning callback) from Lightning; replays restored epochs on resume."""

    def __init__(self, observers: Sequence[Any]):
        self.observers = list(observers)

    def on_train_start(self, trainer: pl.Trainer, pl_module: _MLPTask) -> None:
        for epoch, metrics in sorted(pl_module.history.items()):
            for observer in self.observers:
                observer.lab_epoch_end(epoch, dict(metrics))

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: _MLPTask) -> None:
        metrics = dict(pl_module.history.get(trainer.current_epoch, {}))
        metrics.update({k: float(v) for k, v in trainer.callback_metrics.items() if k == "train_loss"})
        for observer in self.observers:
            observer.lab_epoch_end(trainer.current_epoch, metrics)


@contextlib.contextmanager
def _training_session(threads: int) -> Iterator[None]:
    """Fixed thread count, deterministic kernels and quiet Lightning; the caller's settings come back after."""
    previous_threads = torch.get_num_threads()
    previous_deterministic = torch.are_deterministic_algorithms_enabled()
    chatty = [logging.getLogger(n) for n in ("pytorch_lightning.utilities.rank_zero", "pytorch_lightning.accelerators.cuda")]
    previous_levels = [lg.level for lg in chatty]
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    for lg in chatty:
        lg.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
            warnings.filterwarnings("ignore", message=r".*GPU available but not used.*")
            # Lightning 2.6 still builds torch's deprecated LeafSpec; nothing for us to fix.
            warnings.filterwarnings("ignore", message=r".*LeafSpec.*")
            yield
    finally:
        torch.set_num_threads(previous_threads)
        torch.use_deterministic_algorithms(previous_deterministic)
        for lg, level in zip(chatty, previous_levels):
            lg.setLevel(level)


@contextlib.contextmanager
def _ctrl_c_stays_an_exception(trainer: pl.Trainer) -> Iterator[None]:
    """Lightning answers Ctrl+C by ignoring SIGINT from then on and calling sys.exit(1),
    which would kill a notebook kernel's Ctrl+C; give back the handler and a KeyboardInterrupt."""
    handler = signal.getsignal(signal.SIGINT)
    try:
        yield
    except SystemExit:
        if trainer.interrupted:
            raise KeyboardInterrupt("training interrupted; fit again to resume from the last checkpoint") from None
        raise
    finally:
        if handler is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, handler)


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


def _fingerprint(params: dict, seed: int, feature_names: Sequence[str], arrays: Sequence[np.ndarray],
                 task: str = "classification") -> str:
    """Identifies a training run; checkpoints of another run are never resumed."""
    # Classification keeps the fingerprint it always had, so its checkpoints still resume.
    head = [FLAVOR_NAME, params, seed, list(feature_names)] + ([task] if task != "classification" else [])
    digest = hashlib.sha256(json.dumps(head, sort_keys=True).encode())
    for array in arrays:
        digest.update(str(array.shape).encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


class LightningMLP(ModelFlavor):
    """An MLP trained with PyTorch Lightning on CPU: deterministic, checkpointed, resumable.

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
    ) -> FitResult:
        """Train (or resume) under ``workdir``; ``callbacks`` are Lightning callbacks or
        objects with ``lab_epoch_end(epoch, metrics)``. Writes ``workdir/fit.json`` (where
        it resumed from, what it skipped, whether it finished). Returns the model and its validation metrics."""
        self.check_task(task)
        feature_names = [str(n) for n in feature_names]
        p = normalize_params(params, task)
        if not isinstance(max_epochs, int) or max_epochs < 1:
            raise LabError(f"max_epochs must be a whole number of at least 1; got {max_epochs!r}")
        arrays = _check_arrays(train_x, train_y, valid_x, valid_y, feature_names, task)
        x_tr, y_tr, x_va, y_va = arrays
        lightning_callbacks, observers = [], []
        for cb in callbacks:
            if isinstance(cb, pl.Callback):
                lightning_callbacks.append(cb)
            elif callable(getattr(cb, "lab_epoch_end", None)):
                observers.append(cb)
            else:
                raise LabError(f"callback {cb!r} is neither a Lightning Callback nor has lab_epoch_end(epoch, metrics)")

        workdir = Path(workdir)
        ckpt_dir = workdir / "ckpt"
        fingerprint = _fingerprint(p, seed, feature_names, arrays, task)
        remove_stale_temp_files(ckpt_dir)
        resume_from, skipped = newest_valid_checkpoint(ckpt_dir, fingerprint)
        if task == "classification":
            pos_weight = float((y_tr == 0).sum() / (y_tr == 1).sum()) if p["pos_weight"] == "balanced" else float(p["pos_weight"])
            target, fit_y_tr, fit_y_va = None, y_tr, y_va
        else:
            # MSE on the standardized target: one learning rate suits any label scale.
            pos_weight = None
            target = Scaler.fit(y_tr.reshape(-1, 1), ("target",))
            fit_y_tr = target.transform(y_tr.reshape(-1, 1)).ravel()
            fit_y_va = target.transform(y_va.reshape(-1, 1)).ravel()

        # fit.json says where this fit started (also for a fit that is pruned or killed)
        # and, once finished, its metrics.
        summary: dict[str, Any] = {
            "resumed_from": resume_from.name if resume_from else None,
            "start_epoch": int(resume_from.name[len("epoch="):-len(".ckpt")]) + 1 if resume_from else 0,
            "skipped_checkpoints": skipped,
            "max_epochs": max_epochs,
            "finished": False,
        }
        atomic_write_text(workdir / "fit.json", json.dumps(summary, indent=2))
        saver = EpochCheckpoint(ckpt_dir, fingerprint)
        with _training_session(self.threads):
            pl.seed_everything(seed, workers=True, verbose=False)
            scaler = Scaler.fit(x_tr, feature_names)
            net = TabularMLP(len(feature_names), p["hidden_sizes"], p["dropout"], scaler)
            module = _MLPTask(net, p["lr"], p["weight_decay"], pos_weight, task, target)
            trainer = pl.Trainer(
                accelerator="cpu",
                devices=1,
                max_epochs=max_epochs,
                deterministic=True,
                logger=False,
                enable_progress_bar=False,
                enable_model_summary=False,
                num_sanity_val_steps=0,
                default_root_dir=str(workdir),
                callbacks=[*lightning_callbacks, _EpochObservers(observers), saver],
            )
            train_loader = tabular_loader(torch.from_numpy(x_tr), torch.from_numpy(fit_y_tr), p["batch_size"], seed=seed, shuffle=True)
            valid_loader = tabular_loader(torch.from_numpy(x_va), torch.from_numpy(fit_y_va), 8192, seed=seed, shuffle=False)
            ckpt_path = str(resume_from) if resume_from else None
            with _ctrl_c_stays_an_exception(trainer):
                trainer.fit(module, train_loader, valid_loader, ckpt_path=ckpt_path, weights_only=True)

        model = MLPScorer(net, feature_names, p, scaler, task=task, target=target)
        scores = model.predict(x_va)
        if task == "classification":
            metrics = {
                MONITOR: average_precision(y_va, scores),
                "val_roc_auc": roc_auc(y_va, scores),
                "epochs": float(trainer.current_epoch),
            }
        else:
            metrics = {f"val_{k}": v for k, v in task_metrics(task, y_va, scores).items()}
            metrics["epochs"] = float(trainer.current_epoch)
        summary.update(finished=True, metrics={k: v for k, v in metrics.items() if math.isfinite(v)})
        atomic_write_text(workdir / "fit.json", json.dumps(summary, indent=2))
        return FitResult(model=model, metrics=metrics, params=p, checkpoint=saver.last_path or resume_from)

    def save(self, model: ScoringModel, path: Path) -> None:
        """Atomic model folder with a sha256 manifest (see ``artifact``)."""
        save_model(model, Path(path))

    def load(self, path: Path) -> ScoringModel:
        """Read a saved model; raises ``LabError`` when a file does not match its digest."""
        return load_model(Path(path))
