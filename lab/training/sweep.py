"""Hyperparameter sweeps with Optuna: deterministic, resumable after kill -9, and safe with
several workers on one study.

``run_sweep`` optimizes one metric of the task on the validation set (average precision
for classification by default, RMSE for regression) over a flavor's ``search_space``,
maximizing or minimizing as ``higher_is_better`` says. Each call is one *worker*: any
number of processes, on one machine (``sqlite:///``) or many (``postgresql://``), may run
it on the same study at once (``lab.training.sweep_storage``). Trials are driven with
ask/tell so the sweep controls each step:

- **Exactly ``n_trials`` COMPLETE.** A worker asks for a trial only while the study's
  COMPLETE, RUNNING and WAITING trials, with the params sets pending a retry, are fewer
  than ``n_trials`` (or a WAITING retry is queued), else it waits. Two workers that ask
  at the same moment are told apart by trial number, which Optuna hands out under a
  lock: a fresh trial with ``n_trials`` such places held before it steps aside (FAIL,
  marked ``lab:skip = "surplus"``, never trained), as does a trial whose params another
  live trial already has (``"duplicate"``). Skipped trials are left out of ``trials``.
- **Dead workers.** While a trial trains, a thread records its heartbeat every
  ``heartbeat_s`` seconds. Before each ask, and every ``poll_s`` while waiting, a worker
  fails RUNNING trials whose worker is gone: at once when it ran on this host and its
  process is dead (pid and start time), after ``grace_s`` without a heartbeat otherwise
  (another machine, a hung process), or after ``grace_s`` for a trial asked but never
  signed. An interrupted trial (killed, stale, Ctrl-C, SIGTERM) is then enqueued again
  with the same params and ``lab:retry_of`` naming it, unless a live trial already has
  them, at most ``max_retries`` times; another worker or the next start runs the retry,
  resuming from the trial folder's checkpoints. A trial that raised is failed and not
  retried.
- **Determinism.** A fresh trial's TPE sampler is seeded from (seed, the number of
  trials before it that are COMPLETE, PRUNED, RUNNING or WAITING). With one worker that
  is the number of finished trials, so a sweep is reproducible, also across a crash and
  a rerun. With several, no two trials asked at the same time share a seed, but which
  results each sampler sees depends on timing: the params differ from run to run.
- A trial's folder is ``workdir/trials/<key>``, ``key`` a hash of (flavor, params,
  seed); a rerun of the same params resumes from that folder's checkpoints, and a
  trial whose model and ``result.json`` are already saved is not trained again.
  Workers on several machines need ``workdir`` on a shared file system for that and for
  the best model to be found.
- A study records its task and metric; continuing it with another is an error, so one
  study never mixes values of two metrics.

Optuna is imported inside the functions (the core must not need it to import).
"""

from __future__ import annotations

import hashlib
import json
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from lab.atomic import atomic_write_text
from lab.errors import LabError
from lab.modelspec import DEFAULT_METRIC, TASKS
from lab.training.flavor import FitResult, ModelFlavor
from lab.training.metrics import higher_is_better, metric_names, metric_value
from lab.training.sweep_storage import GRACE_S, HEARTBEAT_S, Heartbeat, open_storage, redact_url
from lab.training.sweep_study import (
    ERROR,
    KEY,
    OWNER,
    PARAMS,
    RETRY_OF,
    SKIP,
    current_owner,
    fail_dead_trials,
    optuna_module,
    pending_retries,
    requeue_interrupted,
    sampler_position,
    step_aside_reason,
    tell_unless_finished,
    trial_lineage,
    trial_states,
)

OBJECTIVE = "val_average_precision"  # the default objective: classification, average precision
MAX_RETRIES = 3
"""How many times the params of an interrupted trial are enqueued again."""
POLL_S = 0.5
"""Seconds a worker waits before looking again when every remaining trial is taken."""

_OBJECTIVE = "lab:objective"  # study attr: {"task", "metric"}


@dataclass
class SweepResult:
    """What ``run_sweep`` returns: the best trial, every trial of the study (skipped ones
    left out), and where the study lives."""

    best_params: dict[str, Any]
    best_value: float
    """The best trial's ``metric`` on the validation set."""
    best_number: int
    trials: list[dict[str, Any]] = field(default_factory=list)
    best_fit: FitResult | None = None
    task: str = "classification"
    metric: str = "average_precision"
    study: str = ""
    storage: str = ""
    """The storage URL without its password."""
    lineage: dict[str, Any] = field(default_factory=dict)
    """The best trial's params set: every attempt at it (``attempts``: number, state,
    retry_of, worker), the interrupted ones first."""


class TrialPruning:
    """Reports each epoch's validation metric to an Optuna trial and stops a hopeless one.

    A framework-neutral epoch observer: a flavor calls ``lab_epoch_end(epoch, metrics)``
    after every epoch (lightning_mlp adapts it to a Lightning callback). Raises
    ``optuna.TrialPruned`` when the study's pruner says so, and Optuna's
    ``UpdateFinishedTrialError`` when another worker has failed the trial meanwhile (its
    heartbeat went stale), which stops this copy of it.
    """

    def __init__(self, trial: Any, monitor: str = OBJECTIVE):
        self.trial = trial
        self.monitor = monitor

    def lab_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        if self.monitor not in metrics:
            raise LabError(
                f"pruning monitors {self.monitor!r}, which the flavor did not report; "
                f"reported metrics: {', '.join(sorted(metrics)) or 'none'}"
            )
        self.trial.report(float(metrics[self.monitor]), step=epoch)
        if self.trial.should_prune():
            raise optuna_module().TrialPruned(f"{self.monitor}={metrics[self.monitor]:.4f} at epoch {epoch}")


def default_sweep_storage(workdir: Path) -> str:
    """``sqlite:///<workdir>/optuna.db``: a study file beside the sweep's trials."""
    return f"sqlite:///{Path(workdir).resolve()}/optuna.db"


def trial_key(flavor_name: str, params: dict[str, Any], seed: int, task: str = "classification",
              devices: Mapping[str, Any] | None = None) -> str:
    """16 hex digits naming a trial's folder; equal params, seed, task and device settings
    (``[tool.lab.training]``; None: the flavor's default) give the same key."""
    named = {"flavor": flavor_name, "params": params, "seed": seed}
    if task != "classification":  # classification keys stay what they were: old sweeps resume
        named["task"] = task
    if devices:  # a trial trained elsewhere (another precision, more ranks) is another trial
        named["devices"] = dict(devices)
    blob = json.dumps(named, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _derived_seed(seed: int, position: int) -> int:
    digest = hashlib.sha256(f"lab-sweep:{seed}:{position}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def _trial_row(t: Any) -> dict[str, Any]:
    return {
        "number": t.number,
        "params": t.user_attrs.get(PARAMS, dict(t.params)),
        "value": t.value if t.values else None,
        "state": t.state.name,
        "key": t.user_attrs.get(KEY),
        "retry_of": t.user_attrs.get(RETRY_OF),
    }


def _saved_result(flavor: ModelFlavor, trial_dir: Path) -> FitResult | None:
    """The trial's finished result, if a previous run saved it before it could tell Optuna."""
    result_path = trial_dir / "result.json"
    if not result_path.is_file():
        return None
    try:
        saved = json.loads(result_path.read_text())
        model = flavor.load(trial_dir / "model")
    except (OSError, ValueError, LabError):
        return None
    checkpoint = Path(saved["checkpoint"]) if saved.get("checkpoint") else None
    return FitResult(model=model, metrics=saved["metrics"], params=saved["params"], checkpoint=checkpoint)


# -- the sweep ----------------------------------------------------------------------------

def run_sweep(
    flavor: ModelFlavor,
    train_x: np.ndarray,
    train_y: np.ndarray,
    valid_x: np.ndarray,
    valid_y: np.ndarray,
    feature_names: Sequence[str],
    *,
    n_trials: int,
    storage: str,
    study_name: str,
    seed: int,
    workdir: Path,
    max_epochs: int,
    callbacks: Sequence[Any] = (),
    on_trial: Callable[[dict[str, Any]], None] | None = None,
    max_attempts: int | None = None,
    task: str = "classification",
    metric: str | None = None,
    devices: Mapping[str, Any] | None = None,
    heartbeat_s: int = HEARTBEAT_S,
    grace_s: int = GRACE_S,
    poll_s: float = POLL_S,
    max_retries: int = MAX_RETRIES,
) -> SweepResult:
    """Work on the study until it holds ``n_trials`` COMPLETE trials, then return the best.

    One worker: run it in several processes (``lab sweep worker``) with the same
    arguments to share the study. The objective is ``metric`` (one of
    ``metric_names(task)``; default: the task's ``DEFAULT_METRIC``, average precision for
    classification) computed from the trial model's predictions on the validation set;
    the study maximizes it or, for an error such as rmse, minimizes it. Pruning watches
    the flavor's per-epoch ``val_<metric>``. Each finished trial's model is saved under
    ``workdir/trials/<key>/model``. ``on_trial(record)`` is called for each trial this
    worker finishes (COMPLETE or PRUNED), before Optuna is told: a kill in between
    repeats the call on the retry, so deduplicate on ``record["key"]``. ``max_attempts``
    (default 5 × n_trials) caps the trials this worker trains, in case the pruner stops
    most of them. ``devices`` (the ``[tool.lab.training]`` settings) goes to every ``fit``
    and into the trial keys; None leaves both as they were.
    ``heartbeat_s``/``grace_s`` (whole seconds) and ``poll_s`` tune dead-worker detection.
    """
    optuna = optuna_module()
    if n_trials < 1:
        raise LabError(f"n_trials must be at least 1, got {n_trials}")
    if task not in TASKS:
        raise LabError(f"unknown task {task!r}; use one of {', '.join(TASKS)}")
    flavor.check_task(task)
    metric = DEFAULT_METRIC[task] if metric is None else metric
    if metric not in metric_names(task):
        raise LabError(f"a {task} sweep cannot optimize {metric!r}; use one of {', '.join(metric_names(task))}")
    objective = f"val_{metric}"
    direction = "maximize" if higher_is_better(metric) else "minimize"
    workdir = Path(workdir)
    store = open_storage(storage, heartbeat_s=heartbeat_s, grace_s=grace_s)
    study = optuna.create_study(
        study_name=study_name,
        storage=store,
        direction=direction,
        load_if_exists=True,
        pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1),
    )
    _check_objective(study, study_name, storage, task, metric, direction)
    study_id = store.get_study_id_from_name(study_name)
    TrialState, _ = trial_states()

    attempts, skips, limit = 0, 0, max_attempts or 5 * n_trials
    while True:
        fail_dead_trials(study, grace_s)
        trials = study.get_trials(deepcopy=False)
        if requeue_interrupted(study, trials, max_retries):
            trials = study.get_trials(deepcopy=False)
        complete = sum(t.state == TrialState.COMPLETE for t in trials)
        if complete >= n_trials:
            break
        running = sum(t.state == TrialState.RUNNING for t in trials)
        waiting = sum(t.state == TrialState.WAITING for t in trials)
        awaiting_retry = len(pending_retries(trials, max_retries))  # another worker failed them a moment ago
        if not waiting and complete + running + awaiting_retry >= n_trials:
            time.sleep(poll_s)  # the remaining trials are taken; one may finish, be pruned or die
            continue
        if attempts >= limit:
            raise LabError(
                f"only {complete} of {n_trials} trials completed after {attempts} attempts by this worker "
                "(most were pruned); raise max_epochs or lower n_trials"
            )
        if skips > 10 * n_trials + 10:
            raise LabError(f"this worker stepped aside {skips} times without training a trial of study "
                           f"{study_name!r}; are the workers' clocks or search spaces different?")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "heartbeat is supposed to be used with optimize": ours beats
            trial = study.ask()
        heartbeat = Heartbeat(store, store.get_trial_id_from_study_id_trial_number(study_id, trial.number),
                              heartbeat_s)
        try:
            outcome = _run_trial(
                study, trial, flavor, (train_x, train_y, valid_x, valid_y), feature_names, seed=seed,
                workdir=workdir, max_epochs=max_epochs, callbacks=callbacks, on_trial=on_trial, task=task,
                metric=metric, objective=objective, n_trials=n_trials, max_retries=max_retries, devices=devices,
            )
        finally:
            heartbeat.stop()
        if outcome == "skipped":
            skips += 1
        else:
            attempts += 1

    return _result(study, flavor, workdir, study_name, storage, task, metric)


def _check_objective(study: Any, study_name: str, storage: str, task: str, metric: str, direction: str) -> None:
    # A study made before tasks existed optimized average precision for classification.
    recorded = study.user_attrs.get(_OBJECTIVE, {"task": "classification", "metric": "average_precision"})
    wanted = {"task": task, "metric": metric}
    has_trials = bool(study.get_trials(deepcopy=False))
    if study.direction.name.lower() != direction or (has_trials and recorded != wanted):
        raise LabError(
            f"study {study_name!r} in {redact_url(storage)} optimizes {recorded['metric']} ({recorded['task']}, "
            f"{study.direction.name.lower()}); this sweep optimizes {metric} ({task}, {direction}): pick a new study name"
        )
    if study.user_attrs.get(_OBJECTIVE) != wanted:
        study.set_user_attr(_OBJECTIVE, wanted)


def _run_trial(study: Any, trial: Any, flavor: ModelFlavor, data: tuple, feature_names: Sequence[str], *,
               seed: int, workdir: Path, max_epochs: int, callbacks: Sequence[Any],
               on_trial: Callable[[dict[str, Any]], None] | None, task: str, metric: str, objective: str,
               n_trials: int, max_retries: int, devices: Mapping[str, Any] | None) -> str:
    """Sign, sample, train and tell one asked trial; returns its outcome ("skipped" when it
    stepped aside, "lost" when another worker failed it meanwhile, else its state)."""
    optuna = optuna_module()
    TrialState, _ = trial_states()
    train_x, train_y, valid_x, valid_y = data
    retry = RETRY_OF in trial.user_attrs
    try:
        trial.set_user_attr(OWNER, current_owner())
        study.sampler = optuna.samplers.TPESampler(
            seed=_derived_seed(seed, sampler_position(study.get_trials(deepcopy=False), trial.number)))
        params = flavor.search_space(trial, task=task)
        key = trial_key(flavor.name, params, seed, task, devices)
        trial.set_user_attr(KEY, key)
        trial.set_user_attr(PARAMS, params)
        reason = step_aside_reason(study.get_trials(deepcopy=False), trial.number, key, retry, n_trials,
                                   max_retries)
        if reason:
            trial.set_user_attr(SKIP, reason)
            tell_unless_finished(study, trial, state=TrialState.FAIL)
            return "skipped"
        trial_dir = workdir / "trials" / key
        record = {"number": trial.number, "key": key, "params": params, "model_path": str(trial_dir / "model")}
        fit = _saved_result(flavor, trial_dir)
        if fit is None:
            fit = flavor.fit(
                train_x, train_y, valid_x, valid_y, feature_names, params,
                seed=seed, workdir=trial_dir, max_epochs=max_epochs,
                callbacks=[*callbacks, TrialPruning(trial, monitor=objective)], task=task,
                **({"devices": devices} if devices is not None else {}),
            )
            value = metric_value(task, metric, valid_y, fit.model.predict(np.asarray(valid_x, dtype=np.float32)))
            metrics = {**fit.metrics, objective: value}
            flavor.save(fit.model, trial_dir / "model")
            atomic_write_text(
                trial_dir / "result.json",
                json.dumps({"value": value, "metrics": metrics, "params": fit.params,
                            "checkpoint": str(fit.checkpoint) if fit.checkpoint else None}, indent=2),
            )
            fit.metrics = metrics
    except optuna.TrialPruned:
        if on_trial:
            on_trial({**record, "state": "PRUNED", "value": None, "metrics": {}})
        return "PRUNED" if tell_unless_finished(study, trial, state=TrialState.PRUNED) else "lost"
    except optuna.exceptions.UpdateFinishedTrialError:
        return "lost"  # failed by another worker (stale heartbeat) and enqueued again there
    except (KeyboardInterrupt, SystemExit):
        # Interrupted, not wrong (Ctrl-C, a preemption's SIGTERM): failed unmarked, so the
        # next start or another worker enqueues its params again and resumes the checkpoint.
        tell_unless_finished(study, trial, state=TrialState.FAIL)
        raise
    except BaseException as exc:
        try:
            trial.set_user_attr(ERROR, f"{type(exc).__name__}: {exc}"[:500])
        except optuna.exceptions.UpdateFinishedTrialError:
            pass
        tell_unless_finished(study, trial, state=TrialState.FAIL)
        raise
    value = float(fit.metrics[objective])
    if on_trial:
        try:
            on_trial({**record, "state": "COMPLETE", "value": value, "metrics": dict(fit.metrics)})
        except BaseException:
            # The model is saved; failed unmarked, the retry reuses it and calls on_trial again.
            tell_unless_finished(study, trial, state=TrialState.FAIL)
            raise
    return "COMPLETE" if tell_unless_finished(study, trial, value) else "lost"


def _result(study: Any, flavor: ModelFlavor, workdir: Path, study_name: str, storage: str, task: str,
            metric: str) -> SweepResult:
    best = study.best_trial
    best_dir = workdir / "trials" / best.user_attrs[KEY]
    best_fit = _saved_result(flavor, best_dir)
    if best_fit is None:
        raise LabError(
            f"the best trial ({best.number}) has no saved model under {best_dir}; the study was made "
            "elsewhere, the folder was removed, or a worker on another machine trained it without a shared "
            "workdir. Put the run folder on a shared file system, or use a new study name to sweep again"
        )
    trials = study.get_trials(deepcopy=False)
    return SweepResult(
        best_params=dict(best.user_attrs[PARAMS]),
        best_value=float(best.value),
        best_number=best.number,
        trials=[_trial_row(t) for t in trials if SKIP not in t.user_attrs],
        best_fit=best_fit,
        task=task,
        metric=metric,
        study=study_name,
        storage=redact_url(storage),
        lineage={"study": study_name, "storage": redact_url(storage), "best_trial": best.number,
                 "attempts": trial_lineage(trials, best.number)},
    )
