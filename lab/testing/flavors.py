"""Contract tests for model flavors: subclass ``ModelFlavorContract``, give it a ``flavor``.

    from lab.testing import ModelFlavorContract

    class TestMyFlavor(ModelFlavorContract):
        @pytest.fixture
        def flavor(self):
            return MyFlavor()

Every test runs once per task in ``lab.modelspec.TASKS`` (the ``task`` fixture). For a
task the flavor lists in ``flavor.tasks`` it checks training and scoring; for any other
it checks that ``fit`` refuses the task with a ``LabError`` naming the supported ones.
Override ``fit_params`` (hyperparameters for a quick fit on a few hundred rows, per task)
and ``max_epochs`` to keep the suite fast; the interrupt-and-resume test runs only for a
flavor whose ``supports_resume`` is True.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lab.errors import LabError
from lab.modelspec import TASKS
from lab.training.flavor import FitResult, ModelFlavor
from lab.training.metrics import metric_names

FEATURES = ("SMALL", "MEDIUM", "LARGE", "FLAG")


@dataclass(frozen=True)
class ContractData:
    """A tiny synthetic dataset: features on very different scales, 2/3 train, 1/3 valid."""

    train_x: np.ndarray
    train_y: np.ndarray
    valid_x: np.ndarray
    valid_y: np.ndarray
    feature_names: tuple[str, ...] = FEATURES

    @property
    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        return self.train_x, self.train_y, self.valid_x, self.valid_y


def contract_data(task: str, n: int = 480, seed: int = 0) -> ContractData:
    """Classification: labels 0/1 from a logistic model (about a third are 1).
    Regression: a linear target around 500 with std about 50 plus small noise, so a
    model that learns it has an error far below the target's spread."""
    rng = np.random.default_rng(seed)
    x = np.column_stack([
        rng.normal(0.0, 1.0, n), rng.normal(50.0, 10.0, n), rng.normal(0.0, 100.0, n), rng.integers(0, 2, n),
    ]).astype(np.float32)
    signal = 1.0 * x[:, 0] - 0.1 * (x[:, 1] - 50.0) + 0.01 * x[:, 2] + 0.8 * x[:, 3]
    if task == "classification":
        y = (rng.random(n) < 1.0 / (1.0 + np.exp(-(2.0 * signal - 1.0)))).astype(np.float32)
    elif task == "regression":
        y = (500.0 + 30.0 * signal + rng.normal(0.0, 2.0, n)).astype(np.float32)
    else:
        raise LabError(f"no contract data for task {task!r}; tasks: {', '.join(TASKS)}")
    cut = 2 * n // 3
    return ContractData(x[:cut], y[:cut], x[cut:], y[cut:])


class _Interrupt:
    """An epoch observer that presses Ctrl+C once, after the first epoch has finished."""

    def __init__(self) -> None:
        self.calls = 0
        self.fired = False

    def lab_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        self.calls += 1
        if self.calls == 2 and not self.fired:
            self.fired = True
            raise KeyboardInterrupt


class _Recorder:
    def __init__(self) -> None:
        self.seen: list[tuple[int, dict[str, float]]] = []

    def lab_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        self.seen.append((epoch, dict(metrics)))


class ModelFlavorContract:
    """Determinism, save/load, prediction shape and units, epoch metrics, resume, bad input."""

    @pytest.fixture
    def flavor(self):
        raise NotImplementedError("override the `flavor` fixture: return the ModelFlavor to check")

    @pytest.fixture(params=TASKS)
    def task(self, request) -> str:
        return request.param

    @pytest.fixture
    def fit_params(self, task) -> dict[str, Any]:
        """Hyperparameters for a quick fit; the flavor's defaults unless overridden."""
        return {}

    @pytest.fixture
    def max_epochs(self) -> int:
        return 3

    @pytest.fixture
    def data(self, task) -> ContractData:
        return contract_data(task)

    @pytest.fixture
    def supported(self, flavor, task) -> str:
        """The task, or a skip when the flavor does not do it (``test_refuses_...`` covers that)."""
        if task not in flavor.tasks:
            pytest.skip(f"{flavor.name} does not do {task}")
        return task

    @pytest.fixture
    def fitted(self, flavor, supported, data, fit_params, max_epochs, tmp_path):
        return self.fit(flavor, data, fit_params, tmp_path / "fitted", task=supported, max_epochs=max_epochs)

    @staticmethod
    def fit(flavor, data: ContractData, params, workdir: Path, *, task: str, max_epochs: int, seed: int = 7,
            callbacks=()):
        return flavor.fit(*data.arrays, list(data.feature_names), dict(params), seed=seed, workdir=workdir,
                          max_epochs=max_epochs, callbacks=list(callbacks), task=task)

    # ---------------------------------------------------------------- declarations

    def test_declares_a_name_tasks_and_resume_support(self, flavor):
        assert isinstance(flavor.name, str) and flavor.name
        assert flavor.tasks and set(flavor.tasks) <= set(TASKS), f"tasks {flavor.tasks} must be among {TASKS}"
        assert isinstance(flavor.supports_resume, bool)

    def test_refuses_a_task_it_cannot_do_naming_the_ones_it_can(self, flavor, task, data, tmp_path):
        if task in flavor.tasks:
            pytest.skip(f"{flavor.name} does {task}")
        with pytest.raises(LabError) as caught:
            self.fit(flavor, data, {}, tmp_path, task=task, max_epochs=1)
        assert all(t in str(caught.value) for t in flavor.tasks), str(caught.value)

    def test_refuses_an_unknown_task(self, flavor, tmp_path):
        data = contract_data(flavor.tasks[0])
        with pytest.raises(LabError) as caught:
            self.fit(flavor, data, {}, tmp_path, task="ranking", max_epochs=1)
        assert all(t in str(caught.value) for t in flavor.tasks), str(caught.value)

    # ---------------------------------------------------------------- training and scoring

    def test_fit_is_deterministic_for_a_seed(self, flavor, supported, data, fit_params, max_epochs, fitted, tmp_path):
        again = self.fit(flavor, data, fit_params, tmp_path / "again", task=supported, max_epochs=max_epochs)
        assert np.array_equal(again.model.predict(data.valid_x), fitted.model.predict(data.valid_x))

    def test_predict_gives_one_finite_value_per_row(self, supported, data, fitted):
        model = fitted.model
        assert model.task == supported
        assert list(model.feature_names) == list(data.feature_names)
        out = np.asarray(model.predict(data.valid_x))
        assert out.shape == (data.valid_x.shape[0],)
        assert np.isfinite(out).all()
        if supported == "classification":
            assert ((out >= 0) & (out <= 1)).all(), "classification predictions must be probabilities in [0, 1]"
        assert np.asarray(model.predict(data.valid_x[:1])).shape == (1,)

    def test_regression_predictions_are_in_label_units(self, supported, data, fitted):
        if supported != "regression":
            pytest.skip("regression only")
        error = np.abs(fitted.model.predict(data.valid_x) - data.valid_y).mean()
        # Predicting the mean gives about 0.8 std; forgetting to map standardized outputs
        # back gives about 500. A model that learned the linear target is far below both.
        assert error < 0.3 * data.valid_y.std(), f"MAE {error:.2f} against a target std of {data.valid_y.std():.2f}"

    def test_fit_result_is_recordable(self, supported, fitted):
        json.dumps(fitted.params)  # the sweep writes params to result.json
        assert all(isinstance(k, str) and isinstance(v, float) for k, v in fitted.metrics.items())

    def test_save_and_load_round_trip(self, flavor, supported, data, fitted, tmp_path):
        flavor.save(fitted.model, tmp_path / "model")
        loaded = flavor.load(tmp_path / "model")
        assert loaded.task == supported
        assert list(loaded.feature_names) == list(fitted.model.feature_names)
        assert np.array_equal(loaded.predict(data.valid_x), fitted.model.predict(data.valid_x))

    def test_reports_the_tasks_validation_metrics_to_observers(
            self, flavor, supported, data, fit_params, max_epochs, tmp_path):
        recorder = _Recorder()
        self.fit(flavor, data, fit_params, tmp_path, task=supported, max_epochs=max_epochs, callbacks=[recorder])
        assert recorder.seen, "the flavor never called lab_epoch_end; a sweep could not prune it"
        expected = {f"val_{name}" for name in metric_names(supported)}
        for epoch, metrics in recorder.seen:
            assert expected <= set(metrics), f"epoch {epoch} reported {sorted(metrics)}, lacks {sorted(expected - set(metrics))}"
            assert all(np.isfinite(metrics[name]) for name in expected)

    def test_an_interrupted_fit_resumes_to_the_same_model(
            self, flavor, supported, data, fit_params, max_epochs, fitted, tmp_path):
        if not flavor.supports_resume:
            pytest.skip(f"{flavor.name} does not resume (supports_resume is False)")
        if max_epochs < 2:
            pytest.skip("needs max_epochs >= 2 to interrupt after the first epoch")
        interrupt = _Interrupt()
        with pytest.raises(KeyboardInterrupt):
            self.fit(flavor, data, fit_params, tmp_path, task=supported, max_epochs=max_epochs, callbacks=[interrupt])
        assert interrupt.fired, "a resumable flavor must call lab_epoch_end after every epoch"
        resumed = self.fit(flavor, data, fit_params, tmp_path, task=supported, max_epochs=max_epochs)
        assert np.array_equal(resumed.model.predict(data.valid_x), fitted.model.predict(data.valid_x))

    # ---------------------------------------------------------------- bad input

    def test_bad_array_shapes_are_lab_errors(self, flavor, supported, data, fit_params, fitted, tmp_path):
        names = list(data.feature_names)
        narrow = (data.train_x[:, :-1], data.train_y, data.valid_x, data.valid_y)
        short_y = (data.train_x, data.train_y[:-1], data.valid_x, data.valid_y)
        for arrays in (narrow, short_y):
            with pytest.raises(LabError):
                flavor.fit(*arrays, names, dict(fit_params), seed=0, workdir=tmp_path, max_epochs=1, task=supported)
        with pytest.raises(LabError):
            fitted.model.predict(np.ones((2, len(names) + 1), dtype=np.float32))


class FixedModelFlavor(ModelFlavor):
    """A flavor for tests of what happens around a model (serving, scoring, streaming):
    its model is ``make_model()``, fixed. Nothing is trained, and nothing is saved but the
    folder. Subclass it with a ``name``, the ``tasks`` and ``make_model``::

        class HalfSumFlavor(FixedModelFlavor):
            name = "half_sum"
            tasks = ("regression",)

            def make_model(self):
                return HalfSum()
    """

    name = "fixed"

    def make_model(self) -> Any:
        raise NotImplementedError("a FixedModelFlavor subclass gives make_model()")

    def search_space(self, trial, task: str = "classification") -> dict:
        return {}

    def fit(self, *args, **kwargs) -> FitResult:
        return FitResult(self.make_model())

    def save(self, model, path) -> None:
        Path(path).mkdir(parents=True, exist_ok=True)

    def load(self, path):
        return self.make_model()
