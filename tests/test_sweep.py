"""Optuna sweeps: determinism, pruning, resume after kill -9 without re-running trials, and
any task's metric as the objective."""

import json
import textwrap
from pathlib import Path

import numpy as np
import optuna
import pytest

from lab.errors import LabError
from lab.testing.flavors import contract_data
from lab.training.metrics import average_precision, r2, rmse
from lab.training.sweep import TrialPruning, default_sweep_storage, run_sweep, trial_key
from plugins.lightning_tabular.flavor import LightningMLP
from tests.conftest import kill_when_marked, tiny_fraud_data

ROOT = Path(__file__).resolve().parents[1]
FEATURES = ["TX_AMOUNT", "NB_TX_7DAY", "RISK_7DAY", "TX_DURING_NIGHT"]
SWEEP = dict(n_trials=3, study_name="fraud-mlp", seed=11, max_epochs=3)


@pytest.fixture(scope="module")
def data():
    return tiny_fraud_data(1800)


def sweep(data, workdir, **overrides):
    args = {**SWEEP, **overrides}
    return run_sweep(LightningMLP(), *data, FEATURES, storage=default_sweep_storage(workdir), workdir=workdir, **args)


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory):
    """An uninterrupted sweep and the on_trial records it produced."""
    records = []
    workdir = tmp_path_factory.mktemp("ref-sweep")
    return sweep(data, workdir, on_trial=records.append), records, workdir


def outcome(result):
    """What a sweep decided, trial by trial; FAIL rows (killed attempts) left out."""
    return [(t["state"], t["params"], t["value"]) for t in result.trials if t["state"] != "FAIL"]


def test_same_seed_same_sweep_other_seed_other_params(data, reference, tmp_path):
    first, records, workdir = reference
    states = [t["state"] for t in first.trials]
    assert states.count("COMPLETE") == 3 and set(states) <= {"COMPLETE", "PRUNED"}
    assert "PRUNED" in states  # this data and seed exercise the pruner too
    assert [(r["number"], r["state"]) for r in records] == [(t["number"], t["state"]) for t in first.trials]
    again = sweep(data, tmp_path / "again")
    assert again.trials == first.trials
    other = sweep(data, tmp_path / "other", seed=12, n_trials=1)
    assert other.trials[0]["params"] != first.trials[0]["params"]

    # The best trial is the best value, and its model is the saved one.
    assert first.best_value == max(t["value"] for t in first.trials)
    assert first.best_params == first.trials[first.best_number]["params"]
    best_dir = workdir / "trials" / first.trials[first.best_number]["key"]
    assert (best_dir / "model" / "model.json").is_file()
    assert average_precision(data[3], first.best_fit.model.predict(data[2])) == pytest.approx(first.best_value)


def test_rerunning_a_finished_sweep_trains_nothing(data, reference):
    first, _, workdir = reference
    records = []
    again = sweep(data, workdir, on_trial=records.append)
    assert records == [] and again.trials == first.trials
    more = sweep(data, workdir, on_trial=records.append, n_trials=4)  # one more COMPLETE, not four
    assert [r["state"] for r in records][-1] == "COMPLETE"
    assert records[0]["number"] == len(first.trials)
    assert outcome(more)[: len(first.trials)] == outcome(first)


def test_pruning_callback_stops_a_trial(data, tmp_path):
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.ThresholdPruner(lower=2.0))
    trial = study.ask()
    with pytest.raises(optuna.TrialPruned, match="epoch 0"):
        LightningMLP().fit(*data, FEATURES, {}, seed=0, workdir=tmp_path, max_epochs=3,
                           callbacks=[TrialPruning(trial)])
    assert list(study.trials[0].intermediate_values) == [0]
    with pytest.raises(LabError, match="reported metrics: val_loss"):
        TrialPruning(trial, monitor="val_auc").lab_epoch_end(0, {"val_loss": 1.0})


def test_bad_arguments_are_named(data, tmp_path):
    with pytest.raises(LabError, match="n_trials"):
        sweep(data, tmp_path, n_trials=0)
    with pytest.raises(LabError, match="hiden"):
        class Typo(LightningMLP):
            def search_space(self, trial, task="classification"):
                return {"hiden_sizes": [8]}
        run_sweep(Typo(), *data, FEATURES, storage=default_sweep_storage(tmp_path), workdir=tmp_path,
                  **{**SWEEP, "study_name": "typo"})
    failed = optuna.load_study(study_name="typo", storage=default_sweep_storage(tmp_path))
    assert [t.state.name for t in failed.trials] == ["FAIL"]


KILLED_SWEEP = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    import numpy as np
    import pytorch_lightning as pl
    from lab.training.sweep import run_sweep, default_sweep_storage
    from plugins.lightning_tabular.flavor import LightningMLP

    workdir, arrays, marker = map(Path, sys.argv[1:4])
    d = np.load(arrays)
    finished = []

    class StallInThirdTrial(pl.Callback):
        def on_train_epoch_start(self, trainer, pl_module):
            if len(finished) == 2 and trainer.current_epoch == 1:  # epoch 0 is checkpointed
                marker.write_text("ready")
                time.sleep(600)

    run_sweep(LightningMLP(), d["tx"], d["ty"], d["vx"], d["vy"], {features!r},
              storage=default_sweep_storage(workdir), workdir=workdir, callbacks=[StallInThirdTrial()],
              on_trial=finished.append, **{sweep!r})
    """
).format(features=FEATURES, sweep=SWEEP)


def test_resume_after_kill_9_completes_without_rerunning_finished_trials(data, reference, tmp_path):
    arrays = tmp_path / "data.npz"
    np.savez(arrays, tx=data[0], ty=data[1], vx=data[2], vy=data[3])
    workdir, marker = tmp_path / "sweep", tmp_path / "stalled"
    kill_when_marked(KILLED_SWEEP, [workdir, arrays, marker], marker, what="its third trial")
    finished_models = {p: p.stat().st_mtime_ns for p in workdir.glob("trials/*/model/weights.pt")}
    assert len(finished_models) == 2

    records = []
    resumed = sweep(data, workdir, on_trial=records.append)
    assert resumed.trials[2]["state"] == "FAIL"  # the killed attempt ...
    assert resumed.trials[3]["params"] == resumed.trials[2]["params"]  # ... was enqueued again
    # Trials 0 and 1 were not run again: no record, their saved models untouched.
    assert [r["number"] for r in records] == [t["number"] for t in resumed.trials[3:]]
    assert {p: p.stat().st_mtime_ns for p in finished_models} == finished_models
    # The retry picked up the killed trial's checkpoint instead of starting over.
    fit_summary = json.loads((workdir / "trials" / records[0]["key"] / "fit.json").read_text())
    assert fit_summary["resumed_from"] == "epoch=0.ckpt"
    # And the sweep ends exactly where an uninterrupted one does.
    first = reference[0]
    assert outcome(resumed) == outcome(first)
    assert resumed.best_params == first.best_params and resumed.best_value == first.best_value


def test_a_failing_on_trial_is_retried_from_the_saved_model(data, reference, tmp_path):
    calls = []

    def flaky_recorder(record):
        calls.append(record)
        if len(calls) == 1:
            raise RuntimeError("registry is locked")

    with pytest.raises(RuntimeError, match="locked"):
        sweep(data, tmp_path, n_trials=1, on_trial=flaky_recorder)
    trial_dir = tmp_path / "trials" / calls[0]["key"]
    fit_json = (trial_dir / "fit.json").stat().st_mtime_ns

    result = sweep(data, tmp_path, n_trials=1, on_trial=flaky_recorder)
    assert [t["state"] for t in result.trials] == ["FAIL", "COMPLETE"]
    assert calls[1]["key"] == calls[0]["key"] and calls[1]["value"] == calls[0]["value"]
    assert (trial_dir / "fit.json").stat().st_mtime_ns == fit_json  # reused, not trained again
    assert result.trials[1]["value"] == reference[0].trials[0]["value"]


def test_ctrl_c_mid_trial_is_retried_from_its_checkpoint(data, reference, tmp_path):
    import pytorch_lightning as pl

    class CtrlCOnce(pl.Callback):
        fired = False

        def on_train_epoch_start(self, trainer, pl_module):
            if trainer.current_epoch == 1 and not self.fired:
                self.fired = True
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        sweep(data, tmp_path, n_trials=1, callbacks=[CtrlCOnce()])
    result = sweep(data, tmp_path, n_trials=1)
    assert [t["state"] for t in result.trials] == ["FAIL", "COMPLETE"]
    assert result.trials[1]["params"] == result.trials[0]["params"]
    assert json.loads((tmp_path / "trials" / result.trials[1]["key"] / "fit.json").read_text())["resumed_from"] == "epoch=0.ckpt"
    assert result.trials[1]["value"] == reference[0].trials[0]["value"]


# ---------------------------------------------------------------- tasks and metrics


@pytest.fixture(scope="module")
def regression_data():
    return contract_data("regression").arrays


def regression_sweep(data, workdir, **overrides):
    args = {**SWEEP, "study_name": "delivery", "n_trials": 2, "max_epochs": 2, "task": "regression", **overrides}
    return run_sweep(LightningMLP(), *data, list(contract_data("regression").feature_names),
                     storage=default_sweep_storage(workdir), workdir=workdir, **args)


def test_a_regression_sweep_minimizes_rmse_and_prunes_on_it(regression_data, tmp_path):
    result = regression_sweep(regression_data, tmp_path)
    assert (result.task, result.metric) == ("regression", "rmse")
    values = [t["value"] for t in result.trials if t["state"] == "COMPLETE"]
    assert result.best_value == min(values) and len(set(values)) == len(values)
    assert "pos_weight" not in result.best_params
    assert rmse(regression_data[3], result.best_fit.model.predict(regression_data[2])) == pytest.approx(result.best_value)
    assert result.best_fit.model.task == "regression"
    study = optuna.load_study(study_name="delivery", storage=default_sweep_storage(tmp_path))
    assert study.direction == optuna.study.StudyDirection.MINIMIZE
    # The pruner saw val_rmse each epoch: the last report is the model's validation RMSE
    # (per-epoch metrics come from the logits, the value from predict: equal to float32 precision).
    best = study.trials[result.best_number]
    assert best.intermediate_values[1] == pytest.approx(result.best_value, rel=1e-4)
    # A regression trial's folder is not a classification trial's with the same params.
    assert result.trials[0]["key"] == trial_key("lightning_mlp", result.trials[0]["params"], SWEEP["seed"], "regression")
    assert result.trials[0]["key"] != trial_key("lightning_mlp", result.trials[0]["params"], SWEEP["seed"])


def test_a_higher_is_better_regression_metric_is_maximized(regression_data, tmp_path):
    result = regression_sweep(regression_data, tmp_path, metric="r2", n_trials=2, study_name="r2")
    values = [t["value"] for t in result.trials if t["state"] == "COMPLETE"]
    assert result.best_value == max(values)
    assert r2(regression_data[3], result.best_fit.model.predict(regression_data[2])) == pytest.approx(result.best_value)
    study = optuna.load_study(study_name="r2", storage=default_sweep_storage(tmp_path))
    assert study.direction == optuna.study.StudyDirection.MAXIMIZE


def test_a_study_keeps_its_metric(regression_data, data, tmp_path):
    regression_sweep(regression_data, tmp_path, n_trials=1, max_epochs=1)
    with pytest.raises(LabError, match="optimizes rmse .regression, minimize.; this sweep optimizes mae"):
        regression_sweep(regression_data, tmp_path, n_trials=1, max_epochs=1, metric="mae")
    with pytest.raises(LabError, match="optimizes rmse .regression, minimize.; this sweep optimizes r2 .regression, maximize"):
        regression_sweep(regression_data, tmp_path, n_trials=1, max_epochs=1, metric="r2")
    with pytest.raises(LabError, match="optimizes rmse .regression.*this sweep optimizes roc_auc .classification"):
        sweep(data, tmp_path, study_name="delivery", metric="roc_auc", n_trials=1)


def test_bad_task_and_metric_are_named(data, tmp_path):
    with pytest.raises(LabError, match="cannot optimize 'rmse'; use one of roc_auc, average_precision"):
        sweep(data, tmp_path, metric="rmse")
    with pytest.raises(LabError, match="unknown task 'ranking'"):
        sweep(data, tmp_path, task="ranking")

    class ClassifierOnly(LightningMLP):
        tasks = ("classification",)

    with pytest.raises(LabError, match="cannot do regression; it supports classification"):
        run_sweep(ClassifierOnly(), *data, FEATURES, storage=default_sweep_storage(tmp_path), workdir=tmp_path,
                  **{**SWEEP, "task": "regression"})
    assert not (tmp_path / "optuna.db").exists()  # refused before any study was made


def test_a_study_from_before_tasks_counts_as_average_precision(data, tmp_path):
    old = optuna.create_study(study_name="old", storage=default_sweep_storage(tmp_path), direction="maximize")
    old.add_trial(optuna.trial.create_trial(params={}, distributions={}, value=0.5))
    with pytest.raises(LabError, match="optimizes average_precision .classification, maximize.; this sweep optimizes roc_auc"):
        sweep(data, tmp_path, study_name="old", metric="roc_auc")
