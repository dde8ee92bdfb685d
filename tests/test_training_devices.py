"""Training devices through config and parameters, and the hardware in the run manifest.

``[tool.lab.training]`` (accelerator, devices, strategy, precision, num_nodes) and the
train stage's parameters of the same names reach ``pl.Trainer`` unchanged (a Lightning
callback reads them back off the trainer); bad values are a ``ConfigError`` naming the
key and the values allowed; a fit with other settings never resumes another's
checkpoints nor reuses its sweep trial; the defaults train exactly as before. The
hardware every run records: this machine's CPU and memory, and no GPU ("none").
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import typing
from pathlib import Path

import numpy as np
import pytest

pl = pytest.importorskip("pytorch_lightning")

from lab import steps  # noqa: E402
from lab.config import TrainingConfig, load_config  # noqa: E402
from lab.errors import ConfigError, LabError  # noqa: E402
from lab.pipeline.runner import stage_params  # noqa: E402
from lab.pipeline.stage import load_stages  # noqa: E402
from lab.registry import Registry  # noqa: E402
from lab.registry._git import _nvidia_smi, environment  # noqa: E402
from lab.training.sweep import trial_key  # noqa: E402
from plugins.fraud.simulator import simulate  # noqa: E402
from plugins.lightning_tabular import devices as dev  # noqa: E402
from plugins.lightning_tabular.flavor import LightningMLP  # noqa: E402
from tests.conftest import write_pyproject  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PARAMS = {"hidden_sizes": [16], "dropout": 0.1, "lr": 1e-2, "batch_size": 128}
NAMES = [f"f{i}" for i in range(6)]


def tiny_data():
    rng = np.random.default_rng(0)
    w = rng.normal(size=6)

    def draw(n):
        x = rng.normal(size=(n, 6)).astype(np.float32)
        return x, (rng.random(n) < 1 / (1 + np.exp(-(x @ w - 1.0)))).astype(np.float32)

    return (*draw(768), *draw(384))


class TrainerProbe(pl.Callback):
    """Reads back what the Trainer was built with."""

    seen: dict | None = None

    def on_train_start(self, trainer, pl_module):
        self.seen = {"precision": trainer.precision, "accelerator": type(trainer.accelerator).__name__,
                     "devices": trainer.num_devices, "world_size": trainer.world_size,
                     "strategy": type(trainer.strategy).__name__, "nodes": trainer.num_nodes}


def fit(workdir: Path, max_epochs: int = 2, **settings):
    probe = TrainerProbe()
    result = LightningMLP().fit(*tiny_data(), NAMES, PARAMS, seed=5, workdir=workdir, max_epochs=max_epochs,
                                callbacks=[probe], devices=settings or None)
    return result, probe.seen


# -- the settings ---------------------------------------------------------------------------

def test_defaults_are_one_cpu_process_in_32_bit_floats():
    assert TrainingConfig().settings() == dev.DEFAULTS == {
        "accelerator": "cpu", "devices": 1, "strategy": "auto", "precision": "32-true", "num_nodes": 1}
    placement = dev.TrainingDevices.from_settings(None)
    assert placement.trainer_kwargs() == dev.DEFAULTS and placement.identity() is None
    # Aliases of the defaults are the defaults: earlier checkpoints and trial folders still match.
    assert dev.TrainingDevices.from_settings({"precision": 32, "accelerator": "cpu"}).identity() is None
    assert dev.TrainingDevices.from_settings({"precision": "bf16"}).identity()["precision"] == "bf16-mixed"


@pytest.mark.parametrize("settings, names", [
    ({"strategy": "ddp_spawn"}, ["strategy", "'ddp_fork'", "'auto'"]),
    ({"strategy": "fsdp"}, ["strategy", "'ddp'"]),
    ({"precision": "fp8"}, ["precision", "'bf16-mixed'"]),
    ({"precision": "bf16-true"}, ["precision", "cannot be served"]),
    ({"accelerator": "tpu"}, ["accelerator", "'gpu'", "'cpu'"]),
    ({"devices": 0}, ["devices", "-1", "'auto'"]),
    ({"devices": [0, 0]}, ["devices", "distinct"]),
    ({"devices": True}, ["devices"]),
    ({"devices": [0, 1]}, ["devices = [0, 1]", "accelerator = 'gpu'"]),
    ({"precision": "16-mixed"}, ["precision", "needs a GPU", "'bf16-mixed'"]),
    ({"num_nodes": 0}, ["num_nodes"]),
    ({"devices": -1}, ["devices = -1", "every GPU"]),
    ({"devices": 2}, ["strategy = 'auto'", "'ddp_fork'", "'ddp'", "torchrun"]),
    ({"accelerator": "gpu", "devices": "auto"}, ["choose the strategy"]),
    ({"accelerator": "gpu", "num_nodes": 2}, ["num_nodes = 2", "choose the strategy"]),
    ({"gpus": 2}, ["gpus", "accelerator, devices, strategy, precision, num_nodes"]),
])
def test_bad_settings_name_the_key_and_the_values_allowed(settings, names):
    with pytest.raises(ConfigError) as err:
        dev.TrainingDevices.from_settings(settings)
    assert "[tool.lab.training]" in str(err.value)
    for name in names:
        assert name in str(err.value)


def test_the_allowed_values_are_lightnings():
    from lightning_fabric.plugins.precision.precision import _PRECISION_INPUT
    from pytorch_lightning.accelerators import AcceleratorRegistry
    from pytorch_lightning.strategies import StrategyRegistry

    assert set(dev.STRATEGIES) - {"auto"} <= set(StrategyRegistry.available_strategies())
    lightning_precisions = {v for group in typing.get_args(_PRECISION_INPUT) for v in typing.get_args(group)}
    assert set(dev.PRECISIONS) <= lightning_precisions
    assert set(dev.ACCELERATORS) - {"auto", "gpu"} <= set(AcceleratorRegistry.available_accelerators())


def test_config_section_checks_shape_and_keeps_device_lists(tmp_path):
    write_pyproject(tmp_path, '[tool.lab.training]\naccelerator = "gpu"\ndevices = [0, 1]\nstrategy = "ddp_fork"\n')
    assert load_config(tmp_path).training.settings() == {
        "accelerator": "gpu", "devices": [0, 1], "strategy": "ddp_fork", "precision": "32-true", "num_nodes": 1}
    for body, key in (("devices = 0", "devices"), ('devices = "two"', "devices"), ("num_nodes = 0", "num_nodes"),
                      ("precision = 16", "precision"), ('gpus = 2', "gpus")):
        write_pyproject(tmp_path, f"[tool.lab.training]\n{body}\n")
        with pytest.raises(ConfigError, match=key):
            load_config(tmp_path)


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has a GPU")
def test_a_gpu_asked_for_where_there_is_none_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match=r"accelerator = 'gpu'.*set accelerator = 'cpu'"):
        fit(tmp_path, accelerator="gpu")
    assert not (tmp_path / "ckpt").exists()  # refused before anything was written


# -- the settings reach the Trainer, and keep their runs apart -------------------------------

def test_settings_reach_the_trainer_and_defaults_train_as_before(tmp_path):
    default, seen = fit(tmp_path / "default")
    assert seen == {"precision": "32-true", "accelerator": "CPUAccelerator", "devices": 1, "world_size": 1,
                    "strategy": "SingleDeviceStrategy", "nodes": 1}
    explicit, _ = fit(tmp_path / "explicit", **dev.DEFAULTS)
    assert explicit.metrics == default.metrics  # the defaults spelled out: the same fit

    bf16, seen = fit(tmp_path / "bf16", precision="bf16-mixed")
    assert seen["precision"] == "bf16-mixed"
    again, _ = fit(tmp_path / "bf16-again", precision="bf16-mixed")
    assert again.metrics == bf16.metrics  # deterministic on CPU
    assert bf16.metrics != default.metrics and abs(bf16.metrics["val_roc_auc"] - default.metrics["val_roc_auc"]) < 0.01

    double, seen = fit(tmp_path / "f64", precision="64-true")
    assert seen["precision"] == "64-true" and np.isfinite(double.metrics["val_average_precision"])


def test_a_fit_never_resumes_checkpoints_of_other_device_settings(tmp_path):
    fit(tmp_path, max_epochs=1)
    with pytest.raises(LabError, match="different training run"):
        fit(tmp_path, max_epochs=2, precision="bf16-mixed")
    resumed, _ = fit(tmp_path, max_epochs=2, accelerator="cpu", precision=32)  # the defaults, spelled otherwise
    assert json.loads((tmp_path / "fit.json").read_text())["resumed_from"] == "epoch=0.ckpt"
    assert resumed.metrics["epochs"] == 2


def test_trial_keys_differ_by_device_settings_and_stay_as_they_were_without():
    params = {"hidden_sizes": [16], "lr": 0.01}
    before = hashlib.sha256(json.dumps({"flavor": "lightning_mlp", "params": params, "seed": 1},
                                       sort_keys=True).encode()).hexdigest()[:16]
    assert trial_key("lightning_mlp", params, 1) == trial_key("lightning_mlp", params, 1, devices=None) == before
    bf16 = {**dev.DEFAULTS, "precision": "bf16-mixed"}
    two = {**dev.DEFAULTS, "devices": 2, "strategy": "ddp_fork"}
    keys = {before, trial_key("lightning_mlp", params, 1, devices=bf16), trial_key("lightning_mlp", params, 1,
                                                                                  devices=two)}
    assert len(keys) == 3


def test_only_global_rank_zero_saves(tmp_path, monkeypatch):
    model = fit(tmp_path / "fit", max_epochs=1)[0].model
    monkeypatch.setenv("SLURM_PROCID", "2")  # srun -n 4 of independent processes: each saves
    assert dev.global_rank() == 0
    monkeypatch.setenv("RANK", "1")  # torchrun's second rank
    assert dev.global_rank() == 1 and not dev.is_global_zero()
    LightningMLP().save(model, tmp_path / "rank1")
    assert not (tmp_path / "rank1").exists()
    monkeypatch.setenv("RANK", "0")
    LightningMLP().save(model, tmp_path / "rank0")
    assert (tmp_path / "rank0" / "model.json").is_file()


# -- through the pipeline: [tool.lab.training] and the train stage's parameters ---------------

PROBE_PLUGIN = '''
import json
from pathlib import Path
import pytorch_lightning as pl
from lab import hookimpl

class Probe(pl.Callback):
    def on_train_start(self, trainer, pl_module):
        with open(Path(__file__).parent / "trainers.jsonl", "a") as fh:
            fh.write(json.dumps({"precision": trainer.precision, "devices": trainer.num_devices}) + "\\n")

@hookimpl
def lab_trainer_callbacks(config, run_dir):
    return [Probe()]
'''
WINDOW = dict(train_start="2018-04-15", delta_train=7, delta_delay=7, delta_test=7)


def test_train_stage_takes_the_config_and_its_parameters(tmp_path):
    stages = {s.name: s for s in load_stages(REPO / "notebooks" / "pipeline.toml")}
    notebook = json.loads((REPO / stages["train"].notebook).read_text())
    parameters = "".join(next(c for c in notebook["cells"] if "parameters" in c["metadata"].get("tags", []))["source"])
    for key in dev.DEFAULTS:  # the notebook declares each setting and hands it to the step
        assert f"\n{key} = None" in parameters and f"{key}={key}" in "".join(notebook["cells"][2]["source"])

    write_pyproject(tmp_path, f'''
        model_name = "fraud"
        plugins = ["trainer_probe"]  # a module name no other test uses (sys.modules keeps it)

        [tool.lab.fraud]
        exact = false

        [tool.lab.train]
        train_start = "{WINDOW['train_start']}"

        [tool.lab.training]
        precision = "bf16-mixed"

        [tool.lab.validation]
        enabled = false
        ''')
    (tmp_path / "trainer_probe.py").write_text(PROBE_PLUGIN)
    config = load_config(tmp_path)
    injected = stage_params(config, stages["train"], tmp_path / "runs" / "x")
    assert {k: injected[k] for k in dev.DEFAULTS} == {**dev.DEFAULTS, "precision": "bf16-mixed"}

    simulate(n_customers=120, n_terminals=200, nb_days=30, seed=3).write_parquet(tmp_path / "tx.parquet")
    with Registry.open(config.registry_path) as registry:
        run_dirs = [tmp_path / "runs" / registry.start_run(kind="pipeline") for _ in range(2)]
    steps.features(tmp_path, run_dirs[0], source_path="tx.parquet", **WINDOW)
    first = steps.train(tmp_path, run_dirs[0], n_trials=1, max_epochs=1, seed=0, **WINDOW)  # the config's settings
    second = steps.train(tmp_path, run_dirs[1], n_trials=1, max_epochs=1, seed=0,
                         precision="32-true", **WINDOW)  # a stage parameter over the config
    seen = [json.loads(line) for line in (tmp_path / "trainers.jsonl").read_text().splitlines()]
    assert seen == [{"precision": "bf16-mixed", "devices": 1}, {"precision": "32-true", "devices": 1}]
    with Registry.open(config.registry_path) as registry:
        recorded = [registry.get_run(info["run_id"])["params"] for info in (first, second)]
    assert [r["training.precision"] for r in recorded] == ["bf16-mixed", "32-true"]
    assert recorded[0]["training.accelerator"] == "cpu" and recorded[0]["training.devices"] == 1


# -- the hardware in the run manifest --------------------------------------------------------

def test_runs_record_the_hardware_with_no_gpu_here(tmp_path):
    with Registry.open(tmp_path / "registry.db", project_root=tmp_path) as registry:
        hardware = registry.get_run(registry.start_run(kind="train"))["env"]["hardware"]
    assert hardware["cpu_model"].strip() and hardware["cpu_count"] >= 1
    assert 1 <= hardware["cpu_usable"] <= hardware["cpu_count"]
    assert hardware["memory_bytes"] > 2**28
    assert hardware == environment()["hardware"]
    if shutil.which("nvidia-smi") is None and hardware["gpu_source"] != "torch":
        assert hardware["gpus"] == []
        assert hardware["gpu_driver"] == hardware["cuda"] == hardware["gpu_source"] == "none"


FAKE_NVIDIA_SMI = """#!/bin/sh
# Answers as nvidia-smi 550 does on a two-GPU machine (this machine has none to ask).
case "$1" in
  --query-gpu=*) printf '0, NVIDIA H100 80GB HBM3, 81559, 550.54.15, GPU-aaaa\\n1, NVIDIA H100 80GB HBM3, 81559, 550.54.15, GPU-bbbb\\n' ;;
  *) printf '| NVIDIA-SMI 550.54.15    Driver Version: 550.54.15    CUDA Version: 12.4     |\\n' ;;
esac
"""


def test_nvidia_smi_answers_are_read(tmp_path, monkeypatch):
    exe = tmp_path / "nvidia-smi"
    exe.write_text(FAKE_NVIDIA_SMI)
    exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    gpus, driver, cuda = _nvidia_smi()
    assert (driver, cuda) == ("550.54.15", "12.4")
    assert gpus == [{"index": i, "name": "NVIDIA H100 80GB HBM3", "memory_bytes": 81559 * 2**20, "uuid": uuid}
                    for i, uuid in ((0, "GPU-aaaa"), (1, "GPU-bbbb"))]
