"""Stage runs started from JupyterLab: ``lab --root ROOT run STAGE`` in a background process.

A job is the ``lab run <stage>`` equivalent for the notebook open in JupyterLab: the
pipeline runner itself, in its own process (``python -m plugins.jupyterlab_ext.jobs``,
which calls ``lab.cli.main``), so its caching, retries, lock and stage records are the
runner's. Each job keeps, under ``runs/.jupyterlab/<job id>/``:

- ``job.json``: id, stage, notebook, command, PID, start time (written before it starts);
- ``output.log``: everything the run printed;
- ``exit.json``: its exit status and end time, written by the job's own process as it
  ends (so a server restarted meanwhile still knows how it ended).

One job at a time per lab: a job of this lab still running, or any ``lab run`` holding the
runner's lock (``runs/.lab-run.lock``), makes a new one a ``JobBusy`` (409).
"""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import os
import secrets
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

from lab.atomic import atomic_write_text, pid_alive
from lab.config import LabConfig
from lab.errors import LabError

JOBS_DIR = ".jupyterlab"  # under the lab's runs folder
RUNNER_LOCK = ".lab-run.lock"  # lab.pipeline.runner's lock file, under the runs folder
LOG_TAIL_CHARS = 4000


class JobBusy(LabError):
    """A stage run cannot start now: another is running in this lab."""


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def _runner_locked(config: LabConfig) -> bool:
    """Whether a ``lab run`` holds the runner's lock now (tried without waiting)."""
    path = config.runs_path / RUNNER_LOCK
    if not path.exists():
        return False
    with open(path, "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(fh, fcntl.LOCK_UN)
    return False


class Jobs:
    """The stage runs one Jupyter server started, over the job folders of its lab.

    The ``Popen`` objects of this server's own jobs are kept to reap them; everything
    else is read from the job folders. Safe to share between the server's threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._processes: dict[str, subprocess.Popen] = {}

    @staticmethod
    def folder(config: LabConfig) -> Path:
        return config.runs_path / JOBS_DIR

    def state(self, config: LabConfig, job_id: str) -> dict:
        """A job's record with ``status`` (running, finished, failed), ``returncode``,
        ``ended_at``, ``seconds`` and the end of its output (``log_tail``)."""
        folder = self.folder(config) / job_id
        job = json.loads((folder / "job.json").read_text())
        process = self._processes.get(job_id)
        if process is not None and process.poll() is not None:  # reap it: no zombie left behind
            self._processes.pop(job_id, None)
        exit_file = folder / "exit.json"
        if exit_file.exists():
            ended = json.loads(exit_file.read_text())
            job.update(returncode=ended["returncode"], ended_at=ended["ended_at"],
                       status="finished" if ended["returncode"] == 0 else "failed")
        elif (process is not None and process.returncode is None) or (process is None and pid_alive(job["pid"])):
            job.update(returncode=None, ended_at=None, status="running")
        else:  # it died before it could say how (killed)
            code = process.returncode if process is not None else None
            job.update(returncode=code, ended_at=None, status="failed",
                       error=f"the job's process ended without recording its exit (returncode {code}); "
                             "it was probably killed: see its log, then run the stage again")
        began = dt.datetime.fromisoformat(job["started_at"])
        until = dt.datetime.fromisoformat(job["ended_at"]) if job.get("ended_at") else dt.datetime.now(dt.timezone.utc)
        job["seconds"] = round((until - began).total_seconds(), 1)
        log = folder / "output.log"
        job["log_tail"] = log.read_text(errors="replace")[-LOG_TAIL_CHARS:] if log.exists() else ""
        return job

    def latest(self, config: LabConfig) -> dict | None:
        """The newest job of the lab (ids sort by start time), or None."""
        folder = self.folder(config)
        ids = sorted(p.name for p in folder.iterdir() if (p / "job.json").is_file()) if folder.is_dir() else []
        return self.state(config, ids[-1]) if ids else None

    def start(self, config: LabConfig, stage: str, notebook: str | None) -> dict:
        """Start ``lab --root ROOT run STAGE`` in the background; its record. ``JobBusy``
        when a stage run (ours or any ``lab run``) is going on in this lab."""
        with self._lock:
            latest = self.latest(config)
            if latest is not None and latest["status"] == "running":
                raise JobBusy(f"stage {latest['stage']!r} is still running from JupyterLab (job {latest['id']}, "
                              f"{latest['seconds']:.0f} s so far); wait for it to end (GET lab/api/progress)")
            if _runner_locked(config):
                raise JobBusy(f"another `lab run` is using this lab (lock {config.runs_path / RUNNER_LOCK}); "
                              "wait for it to finish, then run the stage again")
            job_id = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S%f") + "-" + secrets.token_hex(3)
            folder = self.folder(config) / job_id
            folder.mkdir(parents=True)
            command = [sys.executable, "-m", "plugins.jupyterlab_ext.jobs", str(folder),
                       "--root", str(config.root), "run", stage]
            env = {**os.environ, "PYTHONUNBUFFERED": "1"}
            with open(folder / "output.log", "wb") as out:
                process = subprocess.Popen(command, cwd=config.root, stdout=out, stderr=subprocess.STDOUT,
                                           stdin=subprocess.DEVNULL, env=env)
            self._processes[job_id] = process
            job = {"id": job_id, "stage": stage, "notebook": notebook, "pid": process.pid, "started_at": _now(),
                   "command": ["lab", *command[4:]], "log": str(folder / "output.log")}
            atomic_write_text(folder / "job.json", json.dumps(job, indent=2))
            return self.state(config, job_id)


def _main(argv: list[str]) -> int:
    """The job's own process: ``lab.cli.main(argv[1:])``, then ``exit.json`` in ``argv[0]``."""
    folder = Path(argv[0])
    code: Any = 1
    try:
        from lab.cli import main

        code = main(argv[1:])
    except SystemExit as exc:  # argparse exits on bad arguments
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:  # noqa: BLE001 - recorded below, whatever it was
        import traceback

        traceback.print_exc()
        code = 1
    finally:
        sys.stdout.flush()
        atomic_write_text(folder / "exit.json", json.dumps({"returncode": int(code or 0), "ended_at": _now()}))
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
