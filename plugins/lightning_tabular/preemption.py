"""SIGTERM during a ``lightning_mlp`` fit: stop at the next batch, keep the newest epoch
checkpoint, raise ``TrainingPreempted`` (exit status 75).

The choice: **the partial epoch is dropped** and the fit resumes from the last epoch
boundary. ``EpochCheckpoint`` already writes every finished epoch atomically with its
digest, the optimizer and the RNG states, and a fit resumed from it ends bit for bit like
an uninterrupted one (the kill -9 tests). Resuming mid-epoch exactly would need the loader's
position inside the epoch in the checkpoint as well (a stateful loader Lightning restores)
and a second kind of checkpoint file; its gain is at most one epoch of work per preemption.
The cost of this choice: a preemption loses the batches of the epoch it interrupts.

How it runs (``training.fit_mlp`` wraps ``trainer.fit`` in ``preemptible`` and adds
``PreemptionCallback`` to the callbacks):

1. ``preemptible`` turns SIGTERM into a note (``SigtermWatch``, main thread only). When
   ``trainer.fit`` starts, Lightning's own signal connector adds its handler in front
   of ours (it sets ``trainer.received_sigterm`` and raises ``SIGTERMException`` at the
   next batch or epoch end).
2. ``PreemptionCallback`` raises ``SIGTERMException`` itself at the next batch start or end
   when our note is set but Lightning's is not (SIGTERM came before Lightning's handler),
   and notes how far the interrupted epoch had gone.
3. ``preemptible`` catches what leaves ``trainer.fit`` (Lightning's exception, which
   ``_ctrl_c_stays_an_exception`` has turned into ``KeyboardInterrupt``), finds the
   newest checkpoint whose digest verifies, writes ``workdir/preempted.json`` (one entry
   per preemption, kept) and the runner's marker, and raises ``TrainingPreempted``.
   A SIGTERM that lands after the last epoch has finished stops the process too (the
   fit has finished; the next fit resumes from its last epoch and trains nothing more).

Ranks forked by the fit (``ddp_fork``) are not stopped the graceful way: a rank would end
with Lightning's ``SystemExit``, which torch's launcher takes for a clean exit, and the
fit's process would wait forever for the rank's result (Lightning 2.6). So a forked rank
gets SIGTERM's default effect back (it dies at once, as after kill -9), and the fit's
process, noting SIGTERM, kills its ranks (SIGKILL, so that a rank still inside Lightning's
handler cannot end cleanly either); the launcher reports ranks that died and
``preemptible`` raises ``TrainingPreempted`` with the newest valid checkpoint (rank 0
writes them atomically: a rank killed while writing one leaves the one before).

Inside a Jupyter kernel (papermill runs stages in one) cells run in the kernel's main
thread, so the handler is installed there; the kernel survives the exception (the cell
fails) and ``lab run`` reads the marker. Outside the main thread nothing is installed and
SIGTERM keeps its default effect (the process dies; the fit still resumes, as after kill -9).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from pathlib import Path
from typing import Any, Iterator

import pytorch_lightning as pl
from pytorch_lightning.utilities.exceptions import SIGTERMException

from lab.atomic import atomic_write_text
from lab.training.preemption import SigtermWatch, TrainingPreempted, record_preemption

from .checkpoints import EpochCheckpoint, epoch_of, newest_valid_checkpoint

PREEMPTED_JSON = "preempted.json"
"""In the fit's workdir: a JSON list with one entry per preemption of that fit."""


class PreemptionCallback(pl.Callback):
    """Stops a fit whose process got SIGTERM at the next batch boundary (see the module)."""

    def __init__(self, saver: EpochCheckpoint):
        self.saver = saver
        self.watch = SigtermWatch()
        self.interrupted_epoch: int | None = None
        self.batches_dropped = 0
        self.owner_pid: int | None = None  # the process that runs ``preemptible``; forked ranks differ
        self.global_rank = 0  # under torchrun each rank runs the fit: only rank 0 writes files

    def _stop_if_asked(self, trainer: pl.Trainer) -> None:
        if self.watch.requested and not trainer.received_sigterm:
            raise SIGTERMException()

    def _in_forked_rank(self) -> bool:
        """In a rank forked by the fit, SIGTERM kills again (see the module); True there."""
        if self.owner_pid is None or os.getpid() == self.owner_pid:
            return False
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        return True

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._in_forked_rank()

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._in_forked_rank():  # again: Lightning set its handler after setup
            return
        self.global_rank = trainer.global_rank
        self._stop_if_asked(trainer)

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        self._stop_if_asked(trainer)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self._stop_if_asked(trainer)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if isinstance(exception, SIGTERMException) or self.watch.requested:
            self.interrupted_epoch = trainer.current_epoch
            self.batches_dropped = int(trainer.fit_loop.epoch_loop.batch_progress.current.completed)

    def preempted(self, *, finished: bool, forked_ranks: bool = False) -> TrainingPreempted:
        """Record this preemption (``preempted.json``, the runner's marker) and build the exception.
        With ``forked_ranks`` this process did not train, so where the epoch was is unknown."""
        folder = self.saver.folder
        checkpoint, skipped = newest_valid_checkpoint(folder, self.saver.fingerprint)
        resume_epoch = epoch_of(checkpoint) + 1 if checkpoint is not None else 0
        entry = {
            "at": time.time(),
            "signal": "SIGTERM",
            "received_at": self.watch.received_at,
            "interrupted_epoch": None if finished or forked_ranks else self.interrupted_epoch,
            "batches_dropped": 0 if finished else None if forked_ranks else self.batches_dropped,
            "fit_finished": finished,
            "checkpoint": checkpoint.name if checkpoint is not None else None,
            "resume_epoch": resume_epoch,
            "skipped_checkpoints": skipped,
        }
        if self.global_rank == 0:
            log = folder.parent / PREEMPTED_JSON
            try:
                history = json.loads(log.read_text())
            except (OSError, ValueError):
                history = []
            atomic_write_text(log, json.dumps([*history, entry], indent=2))
            record_preemption({**entry, "workdir": str(folder.parent),
                               "checkpoint": str(checkpoint) if checkpoint is not None else None})
        if checkpoint is None:
            where = "nothing finished yet: the next fit starts over"
        else:
            where = f"the next fit resumes from {checkpoint} (epoch {resume_epoch})"
        return TrainingPreempted(f"training preempted by SIGTERM; {where}",
                                 checkpoint=str(checkpoint) if checkpoint is not None else None,
                                 resume_epoch=resume_epoch)


@contextlib.contextmanager
def preemptible(trainer: pl.Trainer) -> Iterator[None]:
    """Around ``trainer.fit``: SIGTERM becomes ``TrainingPreempted`` (see the module).

    The trainer's callbacks must include a ``PreemptionCallback``; put this outside
    ``_ctrl_c_stays_an_exception``, which turns Lightning's exception into a KeyboardInterrupt.
    """
    callback = next((cb for cb in trainer.callbacks if isinstance(cb, PreemptionCallback)), None)
    if callback is None:
        raise TypeError("preemptible(trainer) needs a PreemptionCallback among the trainer's callbacks")
    callback.owner_pid = os.getpid()

    def pass_on_to_ranks() -> None:
        launcher = trainer.strategy.launcher
        if os.getpid() == callback.owner_pid and launcher is not None and getattr(launcher, "procs", None):
            launcher.kill(signal.SIGKILL)  # forked ranks: they die, the launcher reports it (see the module)

    callback.watch.on_signal = pass_on_to_ranks
    with callback.watch:
        try:
            yield
        except BaseException:
            # Lightning's SIGTERMException (turned into KeyboardInterrupt by the Ctrl+C guard),
            # or, with forked ranks, the launcher's error about ranks that died.
            if not callback.watch.requested:
                raise
            forked = bool(getattr(trainer.strategy.launcher, "procs", None))
            raise callback.preempted(finished=False, forked_ranks=forked) from None
        if callback.watch.requested:
            raise callback.preempted(finished=True)


def preemptions(workdir: Path) -> list[dict[str, Any]]:
    """The preemptions recorded in a fit's ``workdir`` (``preempted.json``), oldest first."""
    try:
        data = json.loads((Path(workdir) / PREEMPTED_JSON).read_text())
    except (OSError, ValueError):
        return []
    return data if isinstance(data, list) else []
