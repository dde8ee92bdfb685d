"""The lightning_mlp flavor's numpy forward: exported and checked when a model is saved,
used by a loaded model for small batches, equal to the torch forward on random inputs
for both tasks; old folders and folders whose check failed score with torch."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from lab.errors import LabError
from lab.training.protocol import Scaler
from plugins.lightning_tabular import numpy_forward
from plugins.lightning_tabular.artifact import load_model, save_model
from plugins.lightning_tabular.network import MLPScorer, TabularMLP, export_numpy_forward
from plugins.lightning_tabular.numpy_forward import SMALL_BATCH, TOLERANCE, NumpyForward, sigmoid

NAMES = ["SMALL", "MEDIUM", "LARGE", "FLAG", "AMOUNT"]
SCALER = Scaler((0.0, 50.0, 0.0, 0.5, 60.0), (1.0, 10.0, 100.0, 0.5, 45.0))  # very different scales
TARGET = Scaler((500.0,), (50.0,))


def random_model(task: str, seed: int = 0, hidden=(64, 32)) -> MLPScorer:
    """An MLP with torch's default random initialization: no training needed to compare forwards."""
    torch.manual_seed(seed)
    net = TabularMLP(len(NAMES), list(hidden), 0.1, SCALER)
    return MLPScorer(net, NAMES, {"hidden_sizes": list(hidden), "dropout": 0.1}, SCALER, task=task,
                     target=TARGET if task == "regression" else None)


def raw_rows(n: int, seed: int, spread: float = 1.0) -> np.ndarray:
    """Rows around the training data: the scaler's mean plus ``spread`` stds of noise."""
    rng = np.random.default_rng(seed)
    return (np.asarray(SCALER.mean) + spread * np.asarray(SCALER.std) * rng.standard_normal((n, len(NAMES)))
            ).astype(np.float32)


@pytest.mark.parametrize("task", ["classification", "regression"])
def test_the_loaded_numpy_forward_equals_torch_on_random_inputs(task, tmp_path):
    model = random_model(task)  # not loaded: torch for every batch
    assert model.numpy_forward is None
    save_model(model, tmp_path / "model")
    record = json.loads((tmp_path / "model" / "model.json").read_text())["numpy_forward"]
    assert record["file"] == "forward.npz" and record["rows_checked"] >= 256
    assert 0 <= record["max_abs_diff"] <= TOLERANCE
    loaded = load_model(tmp_path / "model")
    assert loaded.numpy_forward is not None and "numpy" in loaded.forward_note
    # the label-unit scale of the two tasks' outputs: a probability, or the target's std
    scale = 1.0 if task == "classification" else TARGET.std[0]
    worst = 0.0
    for seed, (rows, spread) in enumerate([(1, 1.0)] * 50 + [(7, 1.0), (SMALL_BATCH, 1.0), (SMALL_BATCH, 4.0),
                                                             (1, 4.0), (33, 0.1)]):
        x = raw_rows(rows, seed, spread)
        fast, reference = loaded.predict(x), model.predict(x)
        assert fast.shape == reference.shape == (rows,) and fast.dtype == np.float32
        worst = max(worst, float(np.abs(fast.astype(np.float64) - reference).max()) / scale)
        # it really is the numpy path that scored them: the same numbers from the arrays alone
        out = loaded.numpy_forward(x)
        assert np.array_equal(fast, sigmoid(out) if task == "classification" else loaded._label_units(out))
    assert worst <= TOLERANCE
    # a batch over SMALL_BATCH goes through torch: bit for bit what it always gave
    big = raw_rows(SMALL_BATCH + 1, 99)
    assert np.array_equal(loaded.predict(big), model.predict(big))
    if task == "classification":
        assert ((fast > 0) & (fast < 1)).all()


def test_the_export_is_the_same_bytes_for_the_same_weights_and_is_checked_on_load(tmp_path):
    model = random_model("classification", seed=3, hidden=(8,))
    save_model(model, tmp_path / "a")
    save_model(model, tmp_path / "b")
    data = (tmp_path / "a" / "forward.npz").read_bytes()
    assert data == (tmp_path / "b" / "forward.npz").read_bytes()
    arrays = NumpyForward.from_bytes(data).arrays()
    assert sorted(arrays) == ["bias_0", "bias_1", "mean", "std", "weight_0", "weight_1"]
    assert all(a.dtype == np.float32 for a in arrays.values())
    np.testing.assert_array_equal(arrays["weight_0"], model.net.layers[0].weight.detach().numpy())
    np.testing.assert_array_equal(arrays["std"], np.asarray(SCALER.std, dtype=np.float32))
    (tmp_path / "a" / "forward.npz").write_bytes(data[:-1] + bytes([data[-1] ^ 0xFF]))
    with pytest.raises(LabError, match="forward.npz does not match the sha256"):
        load_model(tmp_path / "a")


@pytest.mark.parametrize("task", ["classification", "regression"])
def test_a_folder_saved_before_the_numpy_forward_loads_and_scores_with_torch(task, tmp_path):
    model = random_model(task, seed=1)
    path = tmp_path / "model"
    save_model(model, path)
    manifest = json.loads((path / "model.json").read_text())
    # as the flavor wrote folders before: no forward.npz, no numpy_forward record
    del manifest["numpy_forward"], manifest["files"]["forward.npz"]
    (path / "forward.npz").unlink()
    (path / "model.json").write_text(json.dumps(manifest))
    old = load_model(path)
    assert old.numpy_forward is None and "saved without a numpy forward" in old.forward_note
    for rows in (1, 5, 200):
        x = raw_rows(rows, rows)
        assert np.array_equal(old.predict(x), model.predict(x))


def test_a_model_whose_forward_cannot_be_checked_keeps_torch_and_the_folder_says_why(tmp_path):
    model = random_model("classification", seed=2, hidden=(8,))
    with torch.no_grad():
        model.net.layers[0].weight[0, 0] = float("nan")  # diverged training
    save_model(model, tmp_path / "model")
    manifest = json.loads((tmp_path / "model" / "model.json").read_text())
    assert manifest["numpy_forward"]["file"] is None
    assert "NaN or infinity" in manifest["numpy_forward"]["reason"]
    assert "forward.npz" not in manifest["files"] and not (tmp_path / "model" / "forward.npz").exists()
    loaded = load_model(tmp_path / "model")
    assert loaded.numpy_forward is None and "NaN or infinity" in loaded.forward_note

    # a forward that does not match within the tolerance is refused the same way
    forward, record = export_numpy_forward(random_model("classification", seed=2), tolerance=-1.0)
    assert forward is None and "differs from torch by up to" in record["reason"]


def test_sigmoid_matches_torch_and_does_not_overflow():
    z = np.array([-1e4, -100.0, -20.0, -1.0, 0.0, 1e-3, 1.0, 20.0, 100.0, 1e4], dtype=np.float32)
    expected = torch.sigmoid(torch.from_numpy(z)).numpy()
    with np.errstate(over="raise", invalid="raise", divide="raise"):  # underflow to 0 is right
        for chunk in (z[:1], z[:4], z):  # one by one in Python floats, and as arrays
            got = sigmoid(chunk)
            assert got.dtype == np.float32
            np.testing.assert_allclose(got, expected[: len(chunk)], rtol=1e-6, atol=1e-7)


def test_a_numpy_forward_that_does_not_fit_the_model_is_refused():
    with pytest.raises(LabError, match="one output"):
        NumpyForward(np.zeros(2), np.ones(2), [(np.ones((3, 2)), np.zeros(3))])
    with pytest.raises(LabError, match="layer 1"):
        NumpyForward(np.zeros(2), np.ones(2), [(np.ones((3, 2)), np.zeros(3)), (np.ones((1, 4)), np.zeros(1))])
    with pytest.raises(LabError, match="lacks the array"):
        NumpyForward.from_arrays({"mean": np.zeros(2), "std": np.ones(2), "weight_0": np.ones((1, 2))})
    with pytest.raises(LabError, match="not a numpy forward"):
        NumpyForward.from_bytes(b"not a zip")
    forward = NumpyForward(np.zeros(3), np.ones(3), [(np.ones((1, 3)), np.zeros(1))])
    with pytest.raises(LabError, match="takes 3 features"):
        MLPScorer(TabularMLP(2, [], 0.0), ["a", "b"], {}, Scaler((0.0, 0.0), (1.0, 1.0)), numpy_forward=forward)
    assert numpy_forward.SMALL_BATCH >= 1


@pytest.mark.parametrize("task", ["classification", "regression"])
def test_a_row_scores_the_same_alone_and_in_any_small_batch(task):
    # The server scores concurrent requests together (micro-batching): each answer must be
    # bit for bit the one-row answer, whatever the batch's size and the row's place in it.
    model = random_model(task, seed=3)
    forward, _ = export_numpy_forward(model)
    rng = np.random.default_rng(5)
    x = (forward.mean + forward.std * rng.standard_normal((300, forward.n_features))).astype(np.float32)
    alone = np.concatenate([forward(x[i:i + 1]) for i in range(len(x))])
    for size in range(2, SMALL_BATCH + 1):
        batched = np.concatenate([forward(x[i:i + size]) for i in range(0, len(x), size)])
        assert np.array_equal(alone, batched), size
    # and the probabilities or label units a loaded model answers
    loaded = MLPScorer(model.net, NAMES, model.params, SCALER, task=task, target=model.target,
                       numpy_forward=forward)
    alone = np.concatenate([loaded.predict(x[i:i + 1]) for i in range(len(x))])
    for size in (2, 7, 8, 9, 16, 33, SMALL_BATCH):
        batched = np.concatenate([loaded.predict(x[i:i + size]) for i in range(0, len(x), size)])
        assert np.array_equal(alone, batched), size
