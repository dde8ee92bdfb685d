"""Training a ``lightning_mlp`` model with PyTorch Lightning: the one module that imports it.

``LightningMLP.fit`` (``flavor``) checks its arguments, then imports this module and calls
``fit_mlp``; loading and scoring a model (``artifact``, ``network``) need torch only, so
the evaluate and batch-score stages and the model server never pay Lightning's import.

Here: the LightningModule (loss, optimizer, validation metrics, RNG state carried in the
checkpoints), the epoch observers, the deterministic training session, Ctrl+C handling,
and the fit itself with its per-epoch checkpoints and resume (see ``checkpoints``).
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
from lab.training.flavor import FitResult
from lab.training.metrics import average_precision, roc_auc, task_metrics
from lab.training.protocol import Scaler

from .artifact import FLAVOR_NAME
from .checkpoints import (
    EpochCheckpoint,
    capture_rng_state,
    newest_valid_checkpoint,
    remove_stale_temp_files,
    restore_rng_state,
)
from .data import tabular_loader
from .devices import TrainingDevices, adopt_rank_zero_result, runs_in_child_processes
from .flavor import MONITOR
from .network import MLPScorer, TabularMLP
from .preemption import PreemptionCallback, preemptible


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
        # float32 on the CPU: the logits of a GPU or mixed-precision fit are neither
        logits, labels = torch.cat(self._val_logits).float().cpu(), torch.cat(self._val_labels).float().cpu()
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
            # Under DDP every rank validates on the whole validation set: its metrics need no sync.
            warnings.filterwarnings("ignore", message=r".*sync_dist=True.*")
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


def _fingerprint(params: dict, seed: int, feature_names: Sequence[str], arrays: Sequence[np.ndarray],
                 task: str = "classification", devices: dict | None = None) -> str:
    """Identifies a training run; checkpoints of another run are never resumed.
    ``devices``: ``TrainingDevices.identity()`` (None for one CPU process in 32-bit floats)."""
    # Classification on the default devices keeps the fingerprint it always had, so its checkpoints still resume.
    head = [FLAVOR_NAME, params, seed, list(feature_names)] + ([task] if task != "classification" else [])
    head += [{"devices": devices}] if devices else []
    digest = hashlib.sha256(json.dumps(head, sort_keys=True).encode())
    for array in arrays:
        digest.update(str(array.shape).encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def fit_mlp(
    arrays: tuple[np.ndarray, ...],
    feature_names: list[str],
    p: dict[str, Any],
    *,
    seed: int,
    workdir: Path,
    max_epochs: int,
    callbacks: Sequence[Any],
    task: str,
    threads: int,
    devices: TrainingDevices | None = None,
) -> FitResult:
    """``LightningMLP.fit`` once its arguments are checked: ``arrays`` are the checked
    (train_x, train_y, valid_x, valid_y), ``p`` the normalized params, ``devices`` the
    checked device settings (None: one CPU process)."""
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
    devices = devices or TrainingDevices()
    devices.check_available()
    fingerprint = _fingerprint(p, seed, feature_names, arrays, task, devices.identity())
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
    with _training_session(threads):
        pl.seed_everything(seed, workers=True, verbose=False)
        scaler = Scaler.fit(x_tr, feature_names)
        net = TabularMLP(len(feature_names), p["hidden_sizes"], p["dropout"], scaler)
        module = _MLPTask(net, p["lr"], p["weight_decay"], pos_weight, task, target)
        observing = _EpochObservers(observers)
        trainer = pl.Trainer(
            **devices.trainer_kwargs(),  # accelerator, devices, strategy, precision, num_nodes, as configured
            use_distributed_sampler=False,  # under DDP the loader hands each rank its part of each batch (data.py)
            max_epochs=max_epochs,
            deterministic=True,
            logger=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            num_sanity_val_steps=0,
            default_root_dir=str(workdir),
            callbacks=[*lightning_callbacks, observing, saver, PreemptionCallback(saver)],
        )
        # Ranks forked from here (ddp_fork, ddp_notebook) call no observers: this process does, after the fit.
        in_children = runs_in_child_processes(trainer)
        observing.observers = [] if in_children else observers
        train_loader = tabular_loader(torch.from_numpy(x_tr), torch.from_numpy(fit_y_tr), p["batch_size"], seed=seed,
                                      shuffle=True, shard=True)
        valid_loader = tabular_loader(torch.from_numpy(x_va), torch.from_numpy(fit_y_va), 8192, seed=seed, shuffle=False)
        ckpt_path = str(resume_from) if resume_from else None
        # SIGTERM: stop at the next batch, keep the newest checkpoint, exit 75 (see preemption).
        with preemptible(trainer), _ctrl_c_stays_an_exception(trainer):
            trainer.fit(module, train_loader, valid_loader, ckpt_path=ckpt_path, weights_only=True)
        if in_children:
            for epoch, epoch_metrics in sorted(adopt_rank_zero_result(trainer, module, saver, fingerprint).items()):
                for observer in observers:
                    observer.lab_epoch_end(epoch, dict(epoch_metrics))

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

