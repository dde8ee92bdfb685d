"""Hyperparameter sweeps with Optuna: deterministic, resumable after kill -9.

``run_sweep`` optimizes one metric of the task on the validation set (average precision
for classification by default, RMSE for regression) over a flavor's ``search_space``,
maximizing or minimizing as ``higher_is_better`` says. Trials are driven with ask/tell so
the sweep controls each step:

- Every trial gets a TPE sampler seeded from (seed, number of finished trials), so a
  sweep is reproducible, also across a crash and a rerun.
- A trial's folder is ``workdir/trials/<key>``, ``key`` a hash of (flavor, params,
  seed); a rerun of the same params resumes from that folder's checkpoints, and a
  trial whose model and ``result.json`` are already saved is not trained again.
- On start, a RUNNING trial whose process is gone (same host, pid dead) is marked FAIL
  and its params enqueued again. One process per study: a second concurrent worker
  on the same study is not supported by this orphan rule.
- A study records its task and metric; continuing it with another is an error, so one
  study never mixes values of two metrics.

Optuna is imported inside the functions (the core must not need it to import).
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from lab.atomic import atomic_write_text
from lab.errors import LabError
from lab.modelspec import DEFAULT_METRIC, TASKS
from lab.training.flavor import FitResult, ModelFlavor
from lab.training.metrics import higher_is_better, metric_names, metric_value

OBJECTIVE = "val_average_precision"  # the default objective: classification, average precision
_OWNER = "lab:owner"
_KEY = "lab:key"
_PARAMS = "lab:params"
_RETRY_OF = "lab:retry_of"
_OBJECTIVE = "lab:objective"  # study attr: {"task", "metric"}


def _optuna():
    try:
        import optuna  # heavy; loaded only when a sweep runs, with a clear error if missing
    except ImportError:
        raise LabError("sweeps need Optuna, which is not installed: pip install 'optuna>=4'") from None
    return optuna


@dataclass
class SweepResult:
    """What ``run_sweep`` returns: the best trial and every trial of the study."""

    best_params: dict[str, Any]
    best_value: float
    """The best trial's ``metric`` on the validation set."""
    best_number: int
    trials: list[dict[str, Any]] = field(default_factory=list)
    best_fit: FitResult | None = None
    task: str = "classification"
    metric: str = "average_precision"


class TrialPruning:
    """Reports each epoch's validation metric to an Optuna trial and stops a hopeless one.

    A framework-neutral epoch observer: a flavor calls ``lab_epoch_end(epoch, metrics)``
    after every epoch (lightning_mlp adapts it to a Lightning callback). Raises
    ``optuna.TrialPruned`` when the study's pruner says so.
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
            raise _optuna().TrialPruned(f"{self.monitor}={metrics[self.monitor]:.4f} at epoch {epoch}")


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


def _derived_seed(seed: int, n_finished: int) -> int:
    digest = hashlib.sha256(f"lab-sweep:{seed}:{n_finished}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def _process_start(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (guards against a reused pid), None off Linux."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _owner() -> dict[str, Any]:
    return {"host": socket.gethostname(), "pid": os.getpid(), "start": _process_start(os.getpid())}


def _owner_is_dead(owner: dict[str, Any] | None) -> bool:
    if not owner:
        return True  # asked but killed before it could even sign the trial
    if owner.get("host") != socket.gethostname():
        return False  # another machine's worker: not ours to judge
    pid = int(owner["pid"])
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass
    return owner.get("start") is not None and _process_start(pid) != owner.get("start")


def _fail_and_retry(study: Any, trial: Any) -> None:
    """Mark a live trial FAIL and enqueue its params, so the next run repeats it."""
    if trial.params:
        study.enqueue_trial(dict(trial.params), user_attrs={_RETRY_OF: trial.number})
    study.tell(trial, state=_optuna().trial.TrialState.FAIL)


def _requeue_orphans(study: Any) -> list[int]:
    """Mark trials left RUNNING by a dead process FAIL and enqueue their params again."""
    optuna = _optuna()
    requeued = []
    trials = study.get_trials(deepcopy=False)
    waiting_retries = {
        t.user_attrs.get(_RETRY_OF) for t in trials if t.state == optuna.trial.TrialState.WAITING
    }
    for t in trials:
        if t.state != optuna.trial.TrialState.RUNNING or not _owner_is_dead(t.user_attrs.get(_OWNER)):
            continue
        # Enqueue before failing: a kill in between leaves the orphan to be found again,
        # and the WAITING check stops it from being enqueued twice.
        if t.params and t.number not in waiting_retries:
            study.enqueue_trial(dict(t.params), user_attrs={_RETRY_OF: t.number})
        study.tell(t.number, state=optuna.trial.TrialState.FAIL, skip_if_finished=True)
        requeued.append(t.number)
    return requeued


def _trial_row(t: Any) -> dict[str, Any]:
    return {
        "number": t.number,
        "params": t.user_attrs.get(_PARAMS, dict(t.params)),
        "value": t.value if t.values else None,
        "state": t.state.name,
        "key": t.user_attrs.get(_KEY),
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
) -> SweepResult:
    """Run trials until the study holds ``n_trials`` COMPLETE ones, then return the best.

    The objective is ``metric`` (one of ``metric_names(task)``; default: the task's
    ``DEFAULT_METRIC``, average precision for classification) computed from the trial
    model's predictions on the validation set; the study maximizes it or, for an error
    such as rmse, minimizes it. Pruning watches the flavor's per-epoch ``val_<metric>``.
    Each finished trial's model is saved under ``workdir/trials/<key>/model``.
    ``on_trial(record)`` is called for each trial this call finishes (COMPLETE or
    PRUNED), before Optuna is told: a kill in between repeats the call on the rerun,
    so deduplicate on ``record["key"]``. ``max_attempts`` (default 5 × n_trials) caps
    the trials one call starts, in case the pruner stops most of them. ``devices`` (the
    ``[tool.lab.training]`` settings) goes to every ``fit`` and into the trial keys; None
    leaves both as they were.
    """
    optuna = _optuna()
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
    if storage.startswith("sqlite:///"):
        Path(storage[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    study = optuna.create_study(
        study_name=study_name,
        storage=storage,
        direction=direction,
        load_if_exists=True,
        pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1),
    )
    # A study made before tasks existed optimized average precision for classification.
    recorded = study.user_attrs.get(_OBJECTIVE, {"task": "classification", "metric": "average_precision"})
    wanted = {"task": task, "metric": metric}
    has_trials = bool(study.get_trials(deepcopy=False))
    if study.direction.name.lower() != direction or (has_trials and recorded != wanted):
        raise LabError(
            f"study {study_name!r} in {storage} optimizes {recorded['metric']} ({recorded['task']}, "
            f"{study.direction.name.lower()}); this sweep optimizes {metric} ({task}, {direction}): pick a new study name"
        )
    if study.user_attrs.get(_OBJECTIVE) != wanted:
        study.set_user_attr(_OBJECTIVE, wanted)
    _requeue_orphans(study)

    def count(*states: Any) -> int:
        return len(study.get_trials(deepcopy=False, states=states))

    TrialState = optuna.trial.TrialState
    attempts, limit = 0, max_attempts or 5 * n_trials
    while count(TrialState.COMPLETE) < n_trials:
        if attempts >= limit:
            raise LabError(
                f"only {count(TrialState.COMPLETE)} of {n_trials} trials completed after {attempts} attempts "
                "(most were pruned); raise max_epochs or lower n_trials"
            )
        attempts += 1
        study.sampler = optuna.samplers.TPESampler(seed=_derived_seed(seed, count(TrialState.COMPLETE, TrialState.PRUNED)))
        trial = study.ask()
        trial.set_user_attr(_OWNER, _owner())
        params = flavor.search_space(trial, task=task)
        key = trial_key(flavor.name, params, seed, task, devices)
        trial.set_user_attr(_KEY, key)
        trial.set_user_attr(_PARAMS, params)
        trial_dir = workdir / "trials" / key
        record = {"number": trial.number, "key": key, "params": params, "model_path": str(trial_dir / "model")}
        try:
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
                    json.dumps(
                        {"value": value, "metrics": metrics, "params": fit.params,
                         "checkpoint": str(fit.checkpoint) if fit.checkpoint else None},
                        indent=2,
                    ),
                )
                fit.metrics = metrics
        except optuna.TrialPruned:
            if on_trial:
                on_trial({**record, "state": "PRUNED", "value": None, "metrics": {}})
            study.tell(trial, state=TrialState.PRUNED)
            continue
        except KeyboardInterrupt:
            _fail_and_retry(study, trial)  # interrupted, not wrong: the next run resumes it
            raise
        except BaseException:
            study.tell(trial, state=TrialState.FAIL)
            raise
        value = float(fit.metrics[objective])
        if on_trial:
            try:
                on_trial({**record, "state": "COMPLETE", "value": value, "metrics": dict(fit.metrics)})
            except BaseException:
                # The model is saved; the rerun reuses it and calls on_trial again.
                _fail_and_retry(study, trial)
                raise
        study.tell(trial, value)

    best = study.best_trial
    best_dir = workdir / "trials" / best.user_attrs[_KEY]
    best_fit = _saved_result(flavor, best_dir)
    if best_fit is None:
        raise LabError(
            f"the best trial ({best.number}) has no saved model under {best_dir}; the study was made "
            "elsewhere or the folder was removed. Use a new study name to sweep again"
        )
    return SweepResult(
        best_params=dict(best.user_attrs[_PARAMS]),
        best_value=float(best.value),
        best_number=best.number,
        trials=[_trial_row(t) for t in study.get_trials(deepcopy=False)],
        best_fit=best_fit,
        task=task,
        metric=metric,
    )
