"""Per-model device placement for serving: ``[tool.lab.serve] device`` / ``memory_fraction``
and ``[tool.lab.serve.models.<name>]``, ``ModelFlavor.place``, the lightning_mlp
``DeviceMLP``. CPU only: the CUDA paths are checked for their errors on a machine
without a GPU, and ``DeviceMLP``'s arithmetic on ``torch.device("cpu")``."""

from __future__ import annotations

import dataclasses
import shutil

import numpy as np
import pytest
import torch
from litestar.testing import TestClient

from lab.config import load_config
from lab.errors import ConfigError, LabError
from lab.plugins import get_plugin_manager, model_flavor
from lab.training.flavor import ModelFlavor
from plugins.fraud.testing import MODEL_ARTIFACT, build_tiny_lab
from plugins.litestar_serving import create_app
from tests._helpers import wait_ready
from tests.conftest import write_pyproject

NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="asserts the errors of a machine without CUDA")


@pytest.fixture(scope="module")
def tiny_lab_template(tmp_path_factory):
    return build_tiny_lab(tmp_path_factory.mktemp("placement-lab"))


@pytest.fixture
def tiny_lab(tiny_lab_template, tmp_path):
    root = tmp_path / "lab"
    shutil.copytree(tiny_lab_template.root, root)
    return dataclasses.replace(tiny_lab_template, root=root)


def with_serve(root, text: str) -> None:
    """Append ``[tool.lab.serve]``-family tables to the lab's pyproject.toml."""
    path = root / "pyproject.toml"
    path.write_text(path.read_text() + "\n" + text)


def client_for(root, config=None) -> TestClient:
    config = config or load_config(root)
    return TestClient(create_app(config, get_plugin_manager(config)), base_url="http://127.0.0.1")


def not_ready_reason(client) -> str:
    import time

    deadline = time.monotonic() + 30
    while True:
        response = client.get("/readyz")
        reason = response.json().get("reason") or ""
        if "failed" in reason or response.status_code == 200 or time.monotonic() > deadline:
            assert response.status_code == 503, response.text
            return reason
        time.sleep(0.02)


# -- configuration ----------------------------------------------------------------------

@pytest.mark.parametrize("body, message", [
    ('[tool.lab.serve]\ndevice = "gpu"\n', '[tool.lab.serve] device must be "cpu", "cuda" or "cuda:N"'),
    ('[tool.lab.serve]\ndevice = "cuda:x"\n', '[tool.lab.serve] device must be'),
    ('[tool.lab.serve]\nmemory_fraction = 1.5\n', "[tool.lab.serve] memory_fraction must be a number from 0"),
    ('[tool.lab.serve]\nmemory_fraction = -0.1\n', "[tool.lab.serve] memory_fraction must be"),
    ('[tool.lab.serve.models.fraud]\ndevice = "tpu"\n', "[tool.lab.serve.models.fraud] device must be"),
    ('[tool.lab.serve.models.fraud]\nmemory_fraction = 2\n', "[tool.lab.serve.models.fraud] memory_fraction must"),
    ('[tool.lab.serve.models.fraud]\ndevcie = "cpu"\n',
     "unknown key(s) devcie in [tool.lab.serve.models.fraud]; known keys are: device, memory_fraction"),
])
def test_bad_placement_settings_name_the_key(tmp_path, body, message):
    write_pyproject(tmp_path, body)
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path)
    assert message in str(caught.value)


def test_model_tables_override_the_global_settings(tmp_path):
    write_pyproject(tmp_path, '[tool.lab.serve]\ndevice = "cuda"\nmemory_fraction = 0.5\n\n'
                              '[tool.lab.serve.models.a]\ndevice = "CPU"\n\n'
                              '[tool.lab.serve.models.b]\nmemory_fraction = 0.25\n')
    serve = load_config(tmp_path).serve
    assert serve.device == "cuda:0"  # "cuda" is the first device
    assert serve.placement("a") == ("cpu", 0.5)
    assert serve.placement("b") == ("cuda:0", 0.25)
    assert serve.placement("other") == ("cuda:0", 0.5)
    assert load_config(tmp_path, serve={"port": 9}).serve.placement("a") == ("cpu", 0.5)  # survives a replace
    write_pyproject(tmp_path, "")
    assert load_config(tmp_path).serve.placement("a") == ("cpu", 0.0)  # the default: CPU, no cap


# -- the flavor capability ----------------------------------------------------------------

def test_cpu_placement_is_the_model_itself_and_other_flavors_refuse_a_gpu(tiny_lab):
    config = load_config(tiny_lab.root)
    flavor = model_flavor(get_plugin_manager(config), "lightning_mlp")
    model = flavor.load(tiny_lab.root / MODEL_ARTIFACT)
    assert flavor.place(model, "cpu", 0.5) is model  # numpy forward and all: the CPU path is unchanged
    assert ModelFlavor.place(flavor, model, "cpu") is model
    with pytest.raises(LabError, match=r"cannot score on cuda:0 \(it does not implement ModelFlavor.place\); "
                                       r'set device = "cpu"'):
        ModelFlavor.place(flavor, model, "cuda:0")  # what a flavor without ``place`` answers


@NO_CUDA
def test_lightning_place_on_cuda_without_a_gpu_names_the_fix(tiny_lab):
    config = load_config(tiny_lab.root)
    flavor = model_flavor(get_plugin_manager(config), "lightning_mlp")
    model = flavor.load(tiny_lab.root / MODEL_ARTIFACT)
    with pytest.raises(LabError, match=r"no CUDA device 0 here .*; serve on cpu \(\[tool.lab.serve\] device"):
        flavor.place(model, "cuda:0", 0.25)
    with pytest.raises(LabError, match="no CUDA device 3 here"):
        flavor.place(model, "cuda:3")


def test_device_scorer_matches_the_torch_scorer_at_every_batch_size(tiny_lab):
    """``DeviceMLP``'s forward, run on the CPU device: the scores of ``MLPScorer``'s torch
    forward, for one row and for batches larger than the numpy path takes."""
    from plugins.lightning_tabular.placement import DeviceMLP

    config = load_config(tiny_lab.root)
    model = model_flavor(get_plugin_manager(config), "lightning_mlp").load(tiny_lab.root / MODEL_ARTIFACT)
    scorer = model.torch_scorer() if hasattr(type(model), "torch_scorer") else model
    placed = DeviceMLP(scorer, torch.device("cpu"))
    assert placed.invariant_batch_rows == 1 and placed.device == "cpu" and placed.task == scorer.task
    assert placed.feature_names == scorer.feature_names
    n = len(scorer.feature_names)
    rows = np.random.default_rng(3).normal(50, 20, size=(300, n)).astype(np.float32)
    with torch.inference_mode():
        reference = torch.sigmoid(scorer._torch_forward(rows)).numpy()
    for batch in (rows[:1], rows[:64], rows):
        got = placed.predict(batch)
        assert got.dtype == np.float32 and got.shape == (len(batch),)
        np.testing.assert_allclose(got, reference[:len(batch)], rtol=0, atol=1e-6)
    assert np.array_equal(placed.predict(rows[0]), placed.predict(rows[:1]))  # a 1-D array is one row
    with pytest.raises(LabError, match="NaN or infinity"):
        placed.predict(np.full((1, n), np.nan, dtype=np.float32))
    with pytest.raises(LabError, match=f"expected rows of {n} features"):
        placed.predict(np.zeros((2, n + 1), dtype=np.float32))


# -- the server ------------------------------------------------------------------------------

def test_explicit_cpu_answers_exactly_as_the_default(tiny_lab):
    transactions = [tiny_lab.transaction(i, customer=i % 4, terminal=10 + i % 3, amount=5.0 + 17.3 * i)
                    for i in range(1, 9)]

    def answers(client):
        wait_ready(client)
        out = []
        for tx in transactions:
            response = client.post("/predict", json=tx)
            assert response.status_code == 200, response.text
            body = response.json()
            out.append((body["score"], body["features"], body["model_version"]))
        return out, client.get("/stats").json()["devices"]

    with client_for(tiny_lab.root) as client:
        default, default_devices = answers(client)
    with_serve(tiny_lab.root, '[tool.lab.serve]\ndevice = "cpu"\nmemory_fraction = 0.5\n')
    with client_for(tiny_lab.root) as client:
        explicit, explicit_devices = answers(client)
    assert explicit == default  # the same floats, bit for bit
    assert default_devices == explicit_devices == {"fraud": "cpu"}


@NO_CUDA
def test_cuda_without_a_gpu_leaves_the_server_not_ready_with_the_fix(tiny_lab):
    with_serve(tiny_lab.root, '[tool.lab.serve]\ndevice = "cuda:0"\nmemory_fraction = 0.3\n')
    with client_for(tiny_lab.root) as client:
        reason = not_ready_reason(client)
        assert reason.startswith("placing model 'fraud' v") and " on cuda:0 failed: no CUDA device 0 here" in reason
        assert "serve on cpu" in reason
        assert client.get("/stats").json()["devices"] == {"fraud": "cuda:0"}
        response = client.post("/predict", json=tiny_lab.transaction(1, customer=2, terminal=11, amount=4.0))
        assert response.status_code == 503 and "no CUDA device 0 here" in response.text  # not a 500


@NO_CUDA
def test_the_model_table_overrides_the_global_device(tiny_lab):
    with_serve(tiny_lab.root, '[tool.lab.serve]\ndevice = "cuda:1"\n\n[tool.lab.serve.models.fraud]\ndevice = "cpu"\n')
    with client_for(tiny_lab.root) as client:
        wait_ready(client)  # cuda:1 does not exist here: the model's own table put it on the CPU
        assert client.get("/stats").json()["devices"] == {"fraud": "cpu"}
        assert client.post("/predict", json=tiny_lab.transaction(1, customer=2, terminal=11, amount=4.0)
                           ).status_code == 200
    with_serve(tiny_lab.root, '[tool.lab.serve.models.other]\ndevice = "cpu"\n')  # another model's: no effect here
    config = load_config(tiny_lab.root)
    config = config.replace(serve=dataclasses.replace(config.serve, device="cpu",
                                                      models={"fraud": {"device": "cuda:2"}}))
    with client_for(tiny_lab.root, config) as client:
        assert "no CUDA device 2 here" in not_ready_reason(client)
