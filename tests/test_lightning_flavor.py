"""The lightning_mlp flavor: the flavor contract for both tasks, determinism, artifacts,
checkpoints and resume after kill -9."""

import json
import shutil
import signal
import textwrap
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl

import plugins.lightning_tabular as lightning_tabular
from lab.config import load_config
from lab.errors import LabError
from lab.plugins import make_plugin_manager, model_flavor
from lab.testing.flavors import ModelFlavorContract, contract_data
from plugins.lightning_tabular.checkpoints import CheckpointWarning
from plugins.lightning_tabular.flavor import LightningMLP
from tests.conftest import kill_when_marked, tiny_fraud_data

ROOT = Path(__file__).resolve().parents[1]
FEATURES = ["TX_AMOUNT", "NB_TX_7DAY", "RISK_7DAY", "TX_DURING_NIGHT"]
PARAMS = {"hidden_sizes": [16, 8], "dropout": 0.1, "lr": 5e-3, "batch_size": 128}


@pytest.fixture(scope="module")
def data():
    return tiny_fraud_data(2400)


@pytest.fixture(scope="module")
def flavor():
    return LightningMLP()


@pytest.fixture(scope="module")
def reference(data, flavor, tmp_path_factory):
    """An uninterrupted 3-epoch fit, the yardstick for every resume."""
    return flavor.fit(*data, FEATURES, PARAMS, seed=3, workdir=tmp_path_factory.mktemp("ref"), max_epochs=3)


class TestLightningMLPContract(ModelFlavorContract):
    @pytest.fixture
    def flavor(self):
        return LightningMLP()

    @pytest.fixture
    def fit_params(self, task):
        return {"hidden_sizes": [8], "dropout": 0.0, "lr": 3e-2, "batch_size": 32}


class EpochLog(pl.Callback):
    """Records the epochs a fit actually trains."""

    def __init__(self):
        self.epochs = []

    def on_train_epoch_start(self, trainer, pl_module):
        self.epochs.append(trainer.current_epoch)


def test_registered_through_the_hooks(tmp_path):
    pm = make_plugin_manager(builtins=False, entry_points=False)
    pm.register(lightning_tabular, name="lightning_tabular")
    assert isinstance(model_flavor(pm, "lightning_mlp"), LightningMLP)
    config = load_config(tmp_path)
    assert pm.hook.lab_sweep_storage(config=config, study_name="s") == f"sqlite:///{tmp_path.resolve()}/runs/sweeps.db"


def test_same_seed_same_model_other_seed_other_model(data, flavor, reference, tmp_path):
    again = flavor.fit(*data, FEATURES, PARAMS, seed=3, workdir=tmp_path / "a", max_epochs=3)
    other = flavor.fit(*data, FEATURES, PARAMS, seed=4, workdir=tmp_path / "b", max_epochs=3)
    valid_x = data[2]
    assert np.array_equal(again.model.predict(valid_x), reference.model.predict(valid_x))
    assert not np.array_equal(other.model.predict(valid_x), reference.model.predict(valid_x))
    assert reference.metrics["val_average_precision"] > data[3].mean()  # it learned something
    assert reference.params["hidden_sizes"] == [16, 8] and reference.params["weight_decay"] == 0.0


def test_fit_keeps_the_last_two_checkpoints_with_digests(reference):
    ckpt = reference.checkpoint.parent
    assert sorted(p.name for p in ckpt.iterdir()) == [
        "epoch=1.ckpt", "epoch=1.ckpt.json", "epoch=2.ckpt", "epoch=2.ckpt.json"]
    assert reference.checkpoint.name == "epoch=2.ckpt"


def test_predict_scores_single_rows_and_rejects_bad_rows(data, reference):
    model = reference.model
    valid_x = data[2]
    batch = model.predict(valid_x[:5])
    assert batch.shape == (5,) and batch.dtype == np.float32 and ((batch > 0) & (batch < 1)).all()
    assert model.predict(valid_x[0]) == pytest.approx(batch[:1])  # a 1-D array is one row
    with pytest.raises(LabError, match="4 features"):
        model.predict(np.ones((1, 3), dtype=np.float32))
    with pytest.raises(LabError, match="NaN"):
        model.predict(np.full((1, 4), np.nan, dtype=np.float32))


def test_save_load_round_trip_and_tamper_detection(data, flavor, reference, tmp_path):
    path = tmp_path / "model"
    flavor.save(reference.model, path)
    manifest = json.loads((path / "model.json").read_text())
    assert set(manifest["files"]) == {"weights.pt", "scaler.json", "features.json", "params.json", "forward.npz"}
    assert manifest["numpy_forward"]["max_abs_diff"] <= 1e-5
    loaded = flavor.load(path)
    assert loaded.feature_names == FEATURES
    assert len(data[2]) > 64  # a large batch: torch, bit for bit
    assert np.array_equal(loaded.predict(data[2]), reference.model.predict(data[2]))
    # one row at a time (as the server scores): the numpy forward, equal to torch within 1e-5
    assert loaded.numpy_forward is not None
    single = np.concatenate([loaded.predict(row) for row in data[2][:50]])
    assert np.abs(single - reference.model.predict(data[2][:50])).max() <= 1e-5

    weights = bytearray((path / "weights.pt").read_bytes())
    weights[len(weights) // 2] ^= 0xFF
    (path / "weights.pt").write_bytes(bytes(weights))
    with pytest.raises(LabError, match="weights.pt does not match the sha256"):
        flavor.load(path)

    flavor.save(reference.model, path)  # overwriting a model folder works
    params = json.loads((path / "params.json").read_text())
    (path / "params.json").write_text(json.dumps({**params, "lr": 1.0}))
    with pytest.raises(LabError, match="params.json does not match"):
        flavor.load(path)
    with pytest.raises(LabError, match="no model.json"):
        flavor.load(tmp_path)


def test_a_failed_save_leaves_no_folder_and_keeps_the_old_one(flavor, reference, tmp_path):
    reference.model.params["note"] = object()  # not JSON: the save fails after the weights
    try:
        with pytest.raises(LabError, match="not plain JSON"):
            flavor.save(reference.model, tmp_path / "new")
        assert list(tmp_path.iterdir()) == []  # no model, no staging folder
        reference.model.params.pop("note")
        flavor.save(reference.model, tmp_path / "old")
        before = {p.name: p.read_bytes() for p in (tmp_path / "old").iterdir()}
        reference.model.params["note"] = object()
        with pytest.raises(LabError):
            flavor.save(reference.model, tmp_path / "old")
        assert {p.name: p.read_bytes() for p in (tmp_path / "old").iterdir()} == before
        assert [p.name for p in tmp_path.iterdir()] == ["old"]
    finally:
        reference.model.params.pop("note", None)


def test_bad_params_and_data_are_named(data, flavor, tmp_path):
    with pytest.raises(LabError, match="unknown lightning_mlp param"):
        flavor.fit(*data, FEATURES, {"hiden_sizes": [8]}, seed=0, workdir=tmp_path, max_epochs=1)
    with pytest.raises(LabError, match="rows × 4 features"):
        flavor.fit(data[0][:, :3], *data[1:], FEATURES, PARAMS, seed=0, workdir=tmp_path, max_epochs=1)
    with pytest.raises(LabError, match="both present"):
        flavor.fit(data[0], np.zeros_like(data[1]), *data[2:], FEATURES, PARAMS, seed=0, workdir=tmp_path, max_epochs=1)


def test_resume_after_a_lost_sidecar_and_a_longer_run(data, flavor, reference, tmp_path):
    short = flavor.fit(*data, FEATURES, PARAMS, seed=3, workdir=tmp_path, max_epochs=2)
    # A kill between a checkpoint and its sidecar: that checkpoint must not be used.
    (short.checkpoint.parent / "epoch=1.ckpt.json").unlink()
    (short.checkpoint.parent / ".epoch=2.ckpt.x1y2.tmp").write_bytes(b"half")  # a killed writer's temp
    log = EpochLog()
    with pytest.warns(CheckpointWarning, match="epoch=1.ckpt"):
        longer = flavor.fit(*data, FEATURES, PARAMS, seed=3, workdir=tmp_path, max_epochs=3, callbacks=[log])
    assert log.epochs == [1, 2]
    assert json.loads((tmp_path / "fit.json").read_text())["resumed_from"] == "epoch=0.ckpt"
    assert not list(tmp_path.glob("ckpt/*.tmp"))
    assert np.array_equal(longer.model.predict(data[2]), reference.model.predict(data[2]))
    with pytest.raises(LabError, match="different training run"):
        flavor.fit(*data, FEATURES, {**PARAMS, "lr": 1e-2}, seed=3, workdir=tmp_path, max_epochs=3)


def test_epoch_observers_get_validation_metrics(data, flavor, tmp_path):
    seen = []

    class Observer:
        def lab_epoch_end(self, epoch, metrics):
            seen.append((epoch, sorted(metrics)))

    flavor.fit(*data, FEATURES, PARAMS, seed=3, workdir=tmp_path, max_epochs=2, callbacks=[Observer()])
    assert seen == [(e, ["train_loss", "val_average_precision", "val_loss", "val_roc_auc"]) for e in (0, 1)]
    with pytest.raises(LabError, match="neither a Lightning Callback"):
        flavor.fit(*data, FEATURES, PARAMS, seed=3, workdir=tmp_path, max_epochs=2, callbacks=[object()])


KILLED_FIT = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    import numpy as np
    import pytorch_lightning as pl
    from plugins.lightning_tabular.flavor import LightningMLP

    workdir, arrays, marker = map(Path, sys.argv[1:4])
    data = np.load(arrays)

    class StallAtEpoch2(pl.Callback):
        def on_train_epoch_start(self, trainer, pl_module):
            if trainer.current_epoch == 2:  # epochs 0 and 1 are checkpointed by now
                marker.write_text("ready")
                time.sleep(600)

    LightningMLP().fit(data["tx"], data["ty"], data["vx"], data["vy"], {features!r}, {params!r},
                       seed=3, workdir=workdir, max_epochs=3, callbacks=[StallAtEpoch2()])
    """
).format(features=FEATURES, params=PARAMS)


def test_resume_after_kill_9_skips_a_corrupt_checkpoint(data, flavor, reference, tmp_path):
    arrays = tmp_path / "data.npz"
    np.savez(arrays, tx=data[0], ty=data[1], vx=data[2], vy=data[3])
    killed, marker = tmp_path / "killed", tmp_path / "stalled"
    kill_when_marked(KILLED_FIT, [killed, arrays, marker], marker, what="epoch 2")
    assert sorted(p.name for p in (killed / "ckpt").glob("*.ckpt")) == ["epoch=0.ckpt", "epoch=1.ckpt"]

    # Variant: the newest checkpoint was truncated (a disk or copy fault after the kill).
    corrupt = tmp_path / "corrupt"
    shutil.copytree(killed, corrupt)
    newest = corrupt / "ckpt" / "epoch=1.ckpt"
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])

    log = EpochLog()
    resumed = flavor.fit(*data, FEATURES, PARAMS, seed=3, workdir=killed, max_epochs=3, callbacks=[log])
    assert log.epochs == [2]
    assert json.loads((killed / "fit.json").read_text())["resumed_from"] == "epoch=1.ckpt"

    log = EpochLog()
    with pytest.warns(CheckpointWarning, match="epoch=1.ckpt.*sha256 does not match"):
        from_older = flavor.fit(*data, FEATURES, PARAMS, seed=3, workdir=corrupt, max_epochs=3, callbacks=[log])
    assert log.epochs == [1, 2]
    summary = json.loads((corrupt / "fit.json").read_text())
    assert summary["resumed_from"] == "epoch=0.ckpt" and summary["skipped_checkpoints"] == ["epoch=1.ckpt"]

    expected = reference.model.predict(data[2])
    assert np.array_equal(resumed.model.predict(data[2]), expected)
    assert np.array_equal(from_older.model.predict(data[2]), expected)


def test_ctrl_c_raises_keyboard_interrupt_and_keeps_the_sigint_handler(data, flavor, reference, tmp_path):
    class CtrlCAtEpoch1(pl.Callback):
        def on_train_epoch_start(self, trainer, pl_module):
            if trainer.current_epoch == 1:
                raise KeyboardInterrupt

    handler = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):  # not Lightning's sys.exit(1)
        flavor.fit(*data, FEATURES, PARAMS, seed=3, workdir=tmp_path, max_epochs=3, callbacks=[CtrlCAtEpoch1()])
    assert signal.getsignal(signal.SIGINT) is handler
    resumed = flavor.fit(*data, FEATURES, PARAMS, seed=3, workdir=tmp_path, max_epochs=3)
    assert np.array_equal(resumed.model.predict(data[2]), reference.model.predict(data[2]))


# ---------------------------------------------------------------- tasks

QUICK = {"hidden_sizes": [8], "dropout": 0.0, "lr": 3e-2, "batch_size": 32}


def test_a_format_1_folder_without_a_task_loads_as_classification(data, flavor, reference, tmp_path):
    path = tmp_path / "model"
    flavor.save(reference.model, path)
    manifest = json.loads((path / "model.json").read_text())
    assert manifest["format"] == 2 and manifest["task"] == "classification"
    del manifest["task"]
    (path / "model.json").write_text(json.dumps({**manifest, "format": 1}))  # as saved before tasks existed
    old = flavor.load(path)
    assert old.task == "classification"
    assert np.array_equal(old.predict(data[2]), reference.model.predict(data[2]))
    (path / "model.json").write_text(json.dumps({**manifest, "format": 2}))  # format 2 must say its task
    with pytest.raises(LabError, match="records task None"):
        flavor.load(path)


def test_a_regression_model_keeps_its_target_statistics(flavor, tmp_path):
    data = contract_data("regression")
    fit = flavor.fit(*data.arrays, list(data.feature_names), QUICK, seed=1, workdir=tmp_path / "fit", max_epochs=2,
                     task="regression")
    assert fit.params.keys() == QUICK.keys() | {"weight_decay"}  # no pos_weight for regression
    assert set(fit.metrics) == {"val_mae", "val_rmse", "val_r2", "epochs"}
    assert fit.model.target.mean[0] == pytest.approx(float(data.train_y.astype(np.float64).mean()), rel=1e-6)
    flavor.save(fit.model, tmp_path / "model")
    manifest = json.loads((tmp_path / "model" / "model.json").read_text())
    assert manifest["task"] == "regression" and "target.json" in manifest["files"]
    target = json.loads((tmp_path / "model" / "target.json").read_text())
    (tmp_path / "model" / "target.json").write_text(json.dumps({**target, "mean": [0.0]}))
    with pytest.raises(LabError, match="target.json does not match the sha256"):
        flavor.load(tmp_path / "model")


def test_regression_refuses_pos_weight_and_labels_it_cannot_use(flavor, tmp_path):
    data = contract_data("regression")
    names = list(data.feature_names)
    with pytest.raises(LabError, match="pos_weight weighs positive labels"):
        flavor.fit(*data.arrays, names, {"pos_weight": 3.0}, seed=0, workdir=tmp_path, max_epochs=1, task="regression")
    bad_y = data.train_y.copy()
    bad_y[3] = np.nan
    with pytest.raises(LabError, match="train_y holds NaN"):
        flavor.fit(data.train_x, bad_y, data.valid_x, data.valid_y, names, {}, seed=0, workdir=tmp_path,
                   max_epochs=1, task="regression")


def test_search_space_draws_pos_weight_for_classification_only(flavor):
    import optuna

    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    assert "pos_weight" in flavor.search_space(study.ask())
    assert "pos_weight" not in flavor.search_space(study.ask(), task="regression")


def test_a_flavor_that_cannot_do_a_task_says_which_it_can(tmp_path):
    class ClassifierOnly(LightningMLP):
        tasks = ("classification",)

    contract = ModelFlavorContract()
    contract.test_refuses_a_task_it_cannot_do_naming_the_ones_it_can(
        ClassifierOnly(), "regression", contract_data("regression"), tmp_path)
    with pytest.raises(LabError, match="cannot do regression; it supports classification"):
        ClassifierOnly().fit(*contract_data("regression").arrays, list(FEATURES), {}, seed=0, workdir=tmp_path,
                             max_epochs=1, task="regression")
    with pytest.raises(LabError, match="'ranking' is not a task at all"):
        LightningMLP().fit(*contract_data("regression").arrays, list(FEATURES), {}, seed=0, workdir=tmp_path,
                           max_epochs=1, task="ranking")
