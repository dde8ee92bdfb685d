"""Per-epoch checkpoints that survive kill -9, and finding the one to resume from.

At the end of every epoch ``EpochCheckpoint`` writes ``ckpt/epoch=N.ckpt`` through
``lab.atomic.atomic_path`` (temp file, fsync, rename), then a sidecar
``epoch=N.ckpt.json`` holding its sha256 and the run's fingerprint, and keeps the
newest two. A checkpoint counts only when its sidecar exists and its digest matches,
so a truncated or half-written file is skipped with a warning, never loaded.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Checkpoint

from lab.atomic import atomic_path, atomic_write_text
from lab.errors import LabError

log = logging.getLogger(__name__)

_CKPT_NAME = re.compile(r"^epoch=(\d+)\.ckpt$")


class CheckpointWarning(UserWarning):
    """A checkpoint on disk was skipped (truncated, corrupt or without its digest)."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def sidecar_of(ckpt: Path) -> Path:
    return ckpt.with_name(ckpt.name + ".json")


def checkpoints_by_epoch(folder: Path) -> dict[int, Path]:
    """Every ``epoch=N.ckpt`` in ``folder``, valid or not, by N."""
    if not folder.is_dir():
        return {}
    found = {}
    for path in folder.iterdir():
        match = _CKPT_NAME.match(path.name)
        if match:
            found[int(match.group(1))] = path
    return found


def epoch_of(ckpt: Path) -> int:
    """N of a checkpoint named ``epoch=N.ckpt`` (the epoch it finished)."""
    match = _CKPT_NAME.match(Path(ckpt).name)
    if match is None:
        raise ValueError(f"{ckpt} is not named epoch=N.ckpt")
    return int(match.group(1))


def remove_stale_temp_files(folder: Path) -> None:
    """Drop temp files a killed writer left behind (``atomic_path`` names them ``.NAME.*.tmp``)."""
    if folder.is_dir():
        for path in folder.glob(".epoch=*.tmp"):
            path.unlink(missing_ok=True)


def newest_valid_checkpoint(folder: Path, fingerprint: str) -> tuple[Path | None, list[str]]:
    """The newest checkpoint whose sha256 matches its sidecar, and the names skipped on the way.

    A checkpoint from a different run (another fingerprint: params, seed, features or
    data changed) raises ``LabError``: resuming it would silently train the wrong model.
    """
    skipped: list[str] = []
    for epoch, ckpt in sorted(checkpoints_by_epoch(folder).items(), reverse=True):
        sidecar = sidecar_of(ckpt)
        try:
            meta = json.loads(sidecar.read_text())
            expected = meta["sha256"]
        except (OSError, ValueError, KeyError, TypeError):
            reason = "it has no readable digest sidecar (the writer was killed)"
        else:
            if meta.get("fingerprint") != fingerprint:
                raise LabError(
                    f"{folder} holds checkpoints of a different training run (params, seed, features "
                    "or data changed); use a fresh workdir or delete that ckpt folder"
                )
            if sha256_file(ckpt) == expected:
                return ckpt, skipped
            reason = "its sha256 does not match the sidecar (truncated or corrupt)"
        skipped.append(ckpt.name)
        message = f"skipping checkpoint {ckpt}: {reason}"
        log.warning(message)
        warnings.warn(message, CheckpointWarning, stacklevel=2)
    return None, skipped


def capture_rng_state() -> dict[str, Any]:
    """Python, numpy and torch RNG states in types ``torch.load(weights_only=True)`` accepts."""
    np_kind, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state(legacy=True)
    return {
        "python": random.getstate(),
        "numpy": (np_kind, torch.from_numpy(np_keys.astype(np.int64)), int(np_pos), int(np_has_gauss), float(np_gauss)),
        "torch": torch.get_rng_state(),
    }


def restore_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np_kind, np_keys, np_pos, np_has_gauss, np_gauss = state["numpy"]
    np.random.set_state((np_kind, np_keys.numpy().astype(np.uint32), np_pos, np_has_gauss, np_gauss))
    torch.set_rng_state(state["torch"])


class EpochCheckpoint(Checkpoint):
    """Writes ``epoch=N.ckpt`` plus its digest sidecar atomically at each epoch's end; keeps ``keep``.

    A ``Checkpoint`` subclass, so Lightning runs it after the LightningModule's epoch-end
    hook and the file holds the finished epoch (optimizer and RNG states included).
    """

    def __init__(self, folder: Path, fingerprint: str, keep: int = 2):
        self.folder = Path(folder)
        self.fingerprint = fingerprint
        self.keep = keep
        self.last_path: Path | None = None

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        epoch = trainer.current_epoch
        target = self.folder / f"epoch={epoch}.ckpt"
        if not trainer.is_global_zero:
            # DDP: every rank takes part in the save (it ends in a barrier); only rank 0 writes files.
            trainer.save_checkpoint(target, weights_only=False)
            return
        with atomic_path(target) as tmp:
            trainer.save_checkpoint(tmp, weights_only=False)
            digest = sha256_file(tmp)
        # The sidecar follows the file it vouches for: a kill in between leaves a
        # checkpoint without a sidecar, which is skipped.
        sidecar = {"epoch": epoch, "sha256": digest, "fingerprint": self.fingerprint}
        atomic_write_text(sidecar_of(target), json.dumps(sidecar))
        self.last_path = target
        for old_epoch, old in checkpoints_by_epoch(self.folder).items():
            # Older than the window, or newer leftovers of a run that resumed further back.
            if old_epoch <= epoch - self.keep or old_epoch > epoch:
                old.unlink(missing_ok=True)
                sidecar_of(old).unlink(missing_ok=True)
