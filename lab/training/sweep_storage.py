"""Where a sweep's trials live, and the heartbeat that tells a live worker from a dead one.

Several sweep workers share one Optuna study through an RDB storage:

- ``sqlite:///PATH``: workers on one machine. The file is switched to WAL once (through
  ``lab.sqlite``) and each connection waits up to ``SQLITE_TIMEOUT_S`` for another's
  lock. Chosen over Optuna's JournalStorage with a file backend, which is about three
  times cheaper per trial (benchmarks/bench_sweep_storage.py) but has no heartbeat in
  Optuna 5: a dead worker on it could only be told by its pid, on its own machine.
- ``postgresql://USER[:PASSWORD]@HOST:PORT/DB``: workers on many machines. It is opened
  with psycopg2 (``postgresql+psycopg2://``; SQLAlchemy 2.1 would otherwise look for
  psycopg 3), pinging pooled connections before use so a restarted server is survived.

Both keep Optuna's heartbeat table: ``Heartbeat`` records a trial's heartbeat every
``heartbeat_s`` seconds from a thread while the trial trains, and a RUNNING trial whose
last heartbeat is older than ``grace_s`` seconds is failed by the next worker that looks
(``optuna.storages.fail_stale_trials``); ``lab.training.sweep`` then enqueues its params
again. Optuna is imported inside the functions (the core must not need it to import).
"""

from __future__ import annotations

import random
import threading
import time
import urllib.parse
import warnings
from pathlib import Path
from typing import Any

from lab.errors import LabError

HEARTBEAT_S = 10
"""Seconds between two heartbeats of a training trial (Optuna takes whole seconds)."""

GRACE_S = 60
"""Seconds without a heartbeat after which a RUNNING trial counts as dead: long enough for
a loaded machine or a slow database, short enough that a retry starts within a minute."""

OPEN_ATTEMPTS = 4
"""Tries at opening a storage: a brand-new database is created by whichever worker is first."""

SQLITE_TIMEOUT_S = 60.0
"""How long one SQLite statement of Optuna's waits for another worker's lock."""

_SCHEMES = "sqlite:///PATH (workers on one machine) or postgresql://USER@HOST:PORT/DB (workers on many)"


def redact_url(url: str) -> str:
    """``url`` without its password (``postgresql://optuna:s3cret@db/sweeps`` ->
    ``postgresql://optuna@db/sweeps``): what may be written to a run, a log or a file."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if ":" in host:  # an IPv6 address keeps its brackets
        host = f"[{host}]"
    netloc = f"{parts.username}@{host}" if parts.username else host
    if parts.port is not None:
        netloc += f":{parts.port}"
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def open_storage(url: str, *, heartbeat_s: int = HEARTBEAT_S, grace_s: int = GRACE_S) -> Any:
    """An Optuna ``RDBStorage`` for ``url`` with heartbeats every ``heartbeat_s`` seconds
    and a ``grace_s`` grace period (both whole seconds, grace above the interval).

    Raises ``LabError`` naming the fix for an unknown scheme, a missing driver, or a
    database that cannot be reached.
    """
    import optuna  # heavy: loaded only when a sweep runs (lab.training.sweep checks it is installed)

    if not isinstance(url, str) or "://" not in url:
        raise LabError(f"sweep storage {url!r} is not a URL; use {_SCHEMES}")
    for name, value in (("heartbeat_s", heartbeat_s), ("grace_s", grace_s)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise LabError(f"{name} must be a whole number of seconds, 1 or more; got {value!r}")
    if grace_s <= heartbeat_s:
        raise LabError(f"grace_s ({grace_s}) must be longer than heartbeat_s ({heartbeat_s}), or every live "
                       "trial between two heartbeats would count as dead")
    given = url  # what errors name: the user's URL, not the driver-qualified one
    scheme, rest = url.split("://", 1)
    engine_kwargs: dict[str, Any]
    if scheme == "sqlite":
        path = rest[1:] if rest.startswith("/") else rest
        if not path or path == ":memory:":
            raise LabError(f"sweep storage {url!r} names no file; workers share a study only through "
                           "sqlite:///PATH/TO/FILE.db")
        _use_wal(Path(path))
        engine_kwargs = {"connect_args": {"timeout": SQLITE_TIMEOUT_S}}
    elif scheme in ("postgresql", "postgres", "postgresql+psycopg2"):
        try:
            import psycopg2  # noqa: F401 - the driver the URL is opened with
        except ImportError:
            raise LabError("a postgresql:// sweep storage needs psycopg2, which is not installed: "
                           "pip install psycopg2-binary") from None
        url = f"postgresql+psycopg2://{rest}"
        engine_kwargs = {"pool_pre_ping": True}
    elif scheme.startswith(("postgresql+", "mysql")):
        engine_kwargs = {"pool_pre_ping": True}  # another driver the user named: passed through
    else:
        raise LabError(f"sweep storage {redact_url(url)!r}: unknown scheme {scheme!r}; use {_SCHEMES}")
    for attempt in range(OPEN_ATTEMPTS):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeat_interval
                return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, heartbeat_interval=heartbeat_s,
                                                  grace_period=grace_s)
        except ImportError as exc:
            raise LabError(f"cannot open the sweep storage {redact_url(given)}: {exc}; install the database's "
                           "driver (psycopg2-binary for postgresql://)") from None
        except Exception as exc:  # SQLAlchemy's OperationalError and IntegrityError, Optuna's wrappers
            # Workers opening a new database at once race to create Optuna's tables; the
            # loser finds them made on its next attempt.
            if attempt + 1 < OPEN_ATTEMPTS:
                time.sleep(0.2 * (attempt + 1) + random.random() * 0.2)
                continue
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise LabError(f"cannot open the sweep storage {redact_url(given)}: {first}; check that the database "
                           "server is running and reachable, and the URL lab_sweep_storage returns") from None
    raise AssertionError("unreachable")


def _use_wal(path: Path) -> None:
    """Switch the study file to WAL (kept in the file): readers no longer wait for a writer."""
    from lab.sqlite import connect

    connect(path).close()


class Heartbeat:
    """Records a trial's heartbeat now and then every ``interval_s`` seconds from a daemon
    thread, until ``stop()``. A failed write (a database restarting) is retried at the
    next beat; if beats fail for longer than the grace period, another worker fails the
    trial and this worker's next report to it raises ``UpdateFinishedTrialError``."""

    def __init__(self, storage: Any, trial_id: int, interval_s: float):
        self.storage, self.trial_id, self.interval_s = storage, trial_id, interval_s
        self.failures = 0
        self._stop = threading.Event()
        storage.record_heartbeat(trial_id)  # at once: a trial is never RUNNING without one for long
        self._thread = threading.Thread(target=self._beat, name=f"lab-sweep-heartbeat-{trial_id}", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.storage.record_heartbeat(self.trial_id)
            except Exception:  # noqa: BLE001 - the next beat tries again; staleness is the signal
                self.failures += 1

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=self.interval_s + 5)

    def __enter__(self) -> "Heartbeat":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()
