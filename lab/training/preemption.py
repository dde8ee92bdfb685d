"""Preemption: SIGTERM means "keep the newest checkpoint and exit with ``PREEMPTED_EXIT``".

A machine that is taken back (a spot instance, a SLURM or Kubernetes preemption, lab's
own job queue) is sent SIGTERM and, after a grace period, SIGKILL. lab's answer, shared
by model flavors (the training side) and the pipeline runner (which re-queues):

- During a flavor's ``fit``, ``SigtermWatch`` turns SIGTERM into a flag instead of death.
  The fit stops at its next safe point, makes sure its newest valid checkpoint is on
  disk, and raises ``TrainingPreempted``: a ``SystemExit`` whose code is
  ``PREEMPTED_EXIT``, so a script that does not catch it ends with exit status 75 and no
  traceback. Fitting again with the same arguments and workdir resumes from that
  checkpoint and ends with the same model as an uninterrupted fit.
- In a stage run by ``lab run``, the fit also writes the marker file the runner names in
  ``PREEMPTION_MARKER_ENV`` (``record_preemption``). A stage kernel survives the
  exception (the cell fails), so the runner reads the marker to tell a preempted stage,
  which it runs again, from a failed one.

Only the standard library here: the pipeline runner imports this module.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from lab.atomic import atomic_write_text
from lab.signals import SigtermWatch  # noqa: F401  (flavors import it from here)

PREEMPTED_EXIT = 75
"""The exit status of a preempted process: ``EX_TEMPFAIL`` of sysexits.h ("temporary
failure, try again"), which schedulers can tell from a crash (1) or a signal (128+N)."""

PREEMPTION_MARKER_ENV = "LAB_PREEMPTION_MARKER"
"""Environment variable the runner sets for a stage: the path of the JSON file a
preempted fit in that stage writes (``record_preemption``)."""


class TrainingPreempted(SystemExit):
    """A fit stopped by SIGTERM after making sure its newest valid checkpoint is on disk.

    A ``SystemExit`` with code ``PREEMPTED_EXIT``: uncaught, the process exits 75 without
    a traceback. ``checkpoint`` is the file the next fit resumes from (None: nothing
    finished yet, the next fit starts over) and ``resume_epoch`` the epoch it starts at.
    """

    def __init__(self, message: str, *, checkpoint: str | None = None, resume_epoch: int = 0):
        super().__init__(PREEMPTED_EXIT)
        self.message = message
        self.checkpoint = checkpoint
        self.resume_epoch = resume_epoch

    def __str__(self) -> str:
        return self.message


def record_preemption(info: dict[str, Any]) -> Path | None:
    """Write ``info`` (what was preempted, where it resumes) to the runner's marker file.

    Does nothing outside a stage (``PREEMPTION_MARKER_ENV`` unset); returns the path written.
    """
    target = os.environ.get(PREEMPTION_MARKER_ENV)
    if not target:
        return None
    path = Path(target)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps({"pid": os.getpid(), **info}, indent=2, sort_keys=True, default=str))
    return path


def read_preemption(path: Path) -> dict[str, Any] | None:
    """The marker a preempted stage left at ``path``, or None when there is none (or it is unreadable)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
