"""The study's bookkeeping that every sweep worker shares: who runs which trial, which
worker is dead, which params are retried, and which trial steps aside.

Everything here is read from and written to the Optuna study itself (trial states and
user attributes), so workers on several machines agree without talking to each other;
``lab.training.sweep`` explains the rules. A trial's user attributes:

- ``lab:owner``: the worker running it (host, pid, the pid's start time);
- ``lab:key``, ``lab:params``: its params set (``trial_key``) and the flavor's params;
- ``lab:retry_of``: the number of the interrupted attempt it repeats;
- ``lab:error``: it raised, so it is failed for good;
- ``lab:skip``: ``"surplus"`` or ``"duplicate"``, it stepped aside untrained.
"""

from __future__ import annotations

import datetime as dt
import os
import socket
import warnings
from pathlib import Path
from typing import Any, Mapping, Sequence

from lab.errors import LabError

OWNER = "lab:owner"  # {"host", "pid", "start"}: the worker running the trial
KEY = "lab:key"
PARAMS = "lab:params"
RETRY_OF = "lab:retry_of"  # the number of the interrupted trial this one repeats
ERROR = "lab:error"  # the trial raised: failed for good, not retried
SKIP = "lab:skip"  # "surplus" or "duplicate": stepped aside untrained, left out of results


def optuna_module():
    """Optuna, imported on first use (the core must not need it to import)."""
    try:
        import optuna  # heavy; loaded only when a sweep runs, with a clear error if missing
    except ImportError:
        raise LabError("sweeps need Optuna, which is not installed: pip install 'optuna>=4'") from None
    return optuna


# -- workers -------------------------------------------------------------------------------

def process_start(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (guards against a reused pid), None off Linux."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def current_owner() -> dict[str, Any]:
    """This worker, as a trial's ``lab:owner`` records it."""
    return {"host": socket.gethostname(), "pid": os.getpid(), "start": process_start(os.getpid())}


def worker_name(owner: Mapping[str, Any] | None) -> str | None:
    """``host:pid`` of a trial's worker, None for a trial never signed."""
    return f"{owner.get('host')}:{owner.get('pid')}" if owner else None


def owner_is_dead(owner: Mapping[str, Any]) -> bool:
    """Whether a signed trial's worker is certainly gone: only a process of this host can be
    judged by its pid; another machine's worker is judged by its heartbeat."""
    if owner.get("host") != socket.gethostname():
        return False
    pid = int(owner["pid"])
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass
    return owner.get("start") is not None and process_start(pid) != owner.get("start")


# -- the study's bookkeeping, shared by every worker ---------------------------------------

def trial_states():
    """Optuna's ``TrialState``, and the states of a live trial (one that holds its params)."""
    TrialState = optuna_module().trial.TrialState
    live = (TrialState.WAITING, TrialState.RUNNING, TrialState.COMPLETE, TrialState.PRUNED)
    return TrialState, live


def fail_dead_trials(study: Any, grace_s: float) -> list[int]:
    """Fail RUNNING trials whose worker is gone and return their numbers: a signed trial
    whose worker ran on this host and is dead (pid and start time), an unsigned one older
    than ``grace_s`` seconds, and (Optuna) any whose heartbeat is older than the storage's
    grace period. Several workers may do this at once: a trial already finished is skipped."""
    TrialState, _ = trial_states()
    failed = []
    now = dt.datetime.now()
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        owner = t.user_attrs.get(OWNER)
        if owner is None:  # asked, and killed before it could sign (or a retry just popped)
            dead = t.datetime_start is not None and (now - t.datetime_start).total_seconds() > grace_s
        else:
            dead = owner_is_dead(owner)
        if dead:
            study.tell(t.number, state=TrialState.FAIL, skip_if_finished=True)
            failed.append(t.number)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna_module().exceptions.ExperimentalWarning)
        optuna_module().storages.fail_stale_trials(study)  # stale heartbeats, whatever the host
    return failed


def is_interrupted(t: Any) -> bool:
    """A FAIL trial that did not raise and was not skipped: killed, stale, Ctrl-C, SIGTERM."""
    TrialState, _ = trial_states()
    return (t.state == TrialState.FAIL and ERROR not in t.user_attrs and SKIP not in t.user_attrs
            and t.user_attrs.get(KEY) is not None and bool(t.params))


def pending_retries(trials: Sequence[Any], max_retries: int) -> dict[str, Any]:
    """Params sets waiting for a retry: by key, the last interrupted attempt of each set no
    live trial (WAITING, RUNNING, COMPLETE, PRUNED) has, with fewer than ``max_retries``
    retries so far and no attempt that raised (an error would only repeat). They hold a
    place among the study's ``n_trials`` like a running trial."""
    _, live = trial_states()
    live_keys = {t.user_attrs.get(KEY) for t in trials if t.state in live or ERROR in t.user_attrs}
    attempts: dict[str, list[Any]] = {}
    for t in trials:
        if is_interrupted(t):
            attempts.setdefault(t.user_attrs[KEY], []).append(t)
    return {key: failed[-1] for key, failed in attempts.items()
            if key not in live_keys and len(failed) <= max_retries}


def requeue_interrupted(study: Any, trials: Sequence[Any], max_retries: int) -> list[int]:
    """Enqueue the params of every pending set again (``pending_retries``), the retry naming the
    attempt it repeats; returns those attempts' numbers. Two workers enqueueing the same
    params at once is harmless: the higher-numbered copy steps aside as a duplicate."""
    retried = []
    for key, last in pending_retries(trials, max_retries).items():
        study.enqueue_trial(dict(last.params), user_attrs={RETRY_OF: last.number, KEY: key,
                                                           PARAMS: last.user_attrs.get(PARAMS)})
        retried.append(last.number)
    return retried


def sampler_position(trials: Sequence[Any], number: int) -> int:
    """The sampler seed's position of trial ``number``: trials before it that are live,
    and the duplicates skipped before it (so a worker that stepped aside samples anew)."""
    _, live = trial_states()
    return sum(1 for t in trials if t.number < number
               and (t.state in live or t.user_attrs.get(SKIP) == "duplicate"))


def step_aside_reason(trials: Sequence[Any], number: int, key: str, retry: bool, n_trials: int,
                      max_retries: int) -> str | None:
    """None when trial ``number`` (params ``key``) should train, else why it steps aside.

    A retry yields only to a lower-numbered live trial with its params (two copies of one
    retry: the first wins). A fresh trial yields to any other live trial with its params
    (two workers that drew the same params at once may both yield; each samples anew),
    and is surplus when ``n_trials`` places before it are held: COMPLETE, RUNNING and
    WAITING trials, and params sets pending a retry (a retry always trains, so a fresh
    trial asked between a worker's death and its retry must not take its place).
    """
    TrialState, live = trial_states()
    for t in trials:
        if t.number != number and t.state in live and t.user_attrs.get(KEY) == key:
            if t.number < number or not retry:
                return "duplicate"
    if retry:
        return None
    held = (TrialState.COMPLETE, TrialState.RUNNING, TrialState.WAITING)
    ahead = sum(1 for t in trials if t.number < number and t.state in held)
    ahead += sum(1 for t in pending_retries(trials, max_retries).values() if t.number < number)
    return "surplus" if ahead >= n_trials else None


def tell_unless_finished(study: Any, trial: Any, *args: Any, **kwargs: Any) -> bool:
    """``study.tell``; False when another worker already finished the trial (stale heartbeat)."""
    try:
        study.tell(trial, *args, **kwargs)
    except optuna_module().exceptions.UpdateFinishedTrialError:
        return False
    return True


def trial_lineage(trials: Sequence[Any], number: int) -> list[dict[str, Any]]:
    """Every attempt at trial ``number``'s params (same key), by number: the interrupted
    attempts that led to it, it, and nothing skipped."""
    key = next(t.user_attrs.get(KEY) for t in trials if t.number == number)
    return [{"number": t.number, "state": t.state.name, "retry_of": t.user_attrs.get(RETRY_OF),
             "worker": worker_name(t.user_attrs.get(OWNER))}
            for t in trials if t.user_attrs.get(KEY) == key and SKIP not in t.user_attrs]
