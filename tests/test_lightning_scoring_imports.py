"""Loading and scoring a lightning_mlp model needs torch only: Lightning (seconds to
import) loads only when a model is trained. Each check runs in a fresh interpreter."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import torch

from lab.training.protocol import Scaler
from plugins.lightning_tabular.flavor import LightningMLP
from plugins.lightning_tabular.network import MLPScorer, TabularMLP
from tests.conftest import REPO, tiny_fraud_data

FEATURES = ["TX_AMOUNT", "NB_TX_7DAY", "RISK_7DAY", "TX_DURING_NIGHT"]
LIGHTNING = ("pytorch_lightning", "lightning", "lightning_fabric", "torchmetrics")

# For each model folder in argv[2:], loads it through the plugin manager, scores the rows
# in argv[1] (.npy) and saves the scores beside the folder; then prints the Lightning and
# torch packages the interpreter holds.
LOAD_AND_PREDICT = textwrap.dedent(f"""
    import json, sys
    import numpy as np
    from lab.plugins import make_plugin_manager, model_flavor

    flavor = model_flavor(make_plugin_manager(), "lightning_mlp")
    rows = np.load(sys.argv[1])
    for path in sys.argv[2:]:
        np.save(path + ".scores.npy", flavor.load(path).predict(rows))
    print(json.dumps(sorted({{m.split(".")[0] for m in sys.modules}} & {{*{LIGHTNING!r}, "torch"}})))
""")


def fresh_python(code: str, *args) -> list[str]:
    out = subprocess.run([sys.executable, "-c", code, *map(str, args)], cwd=REPO, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def a_model(x: np.ndarray, task: str) -> MLPScorer:
    """A model as fit returns it (random weights: no training, so no Lightning here either)."""
    torch.manual_seed(0)
    scaler = Scaler.fit(x, FEATURES)
    net = TabularMLP(len(FEATURES), [8, 4], 0.1, scaler)
    target = Scaler((40.0,), (12.0,), ("target",)) if task == "regression" else None
    return MLPScorer(net, FEATURES, {"hidden_sizes": [8, 4], "dropout": 0.1}, scaler, task=task, target=target)


def test_loading_and_scoring_a_saved_model_imports_no_lightning(tmp_path):
    rows = tiny_fraud_data(300)[2]
    np.save(tmp_path / "rows.npy", rows)
    models = {task: a_model(rows, task) for task in ("classification", "regression")}
    for task, model in models.items():
        LightningMLP().save(model, tmp_path / task)

    loaded = fresh_python(LOAD_AND_PREDICT, tmp_path / "rows.npy", *(tmp_path / task for task in models))
    assert loaded == ["torch"], "loading and scoring imported Lightning"
    for task, model in models.items():  # without Lightning in the process: the very same numbers
        assert np.array_equal(np.load(tmp_path / f"{task}.scores.npy"), model.predict(rows)), task


def test_importing_the_plugin_imports_neither_torch_nor_lightning():
    loaded = fresh_python(
        "import json, sys\n"
        "import plugins.lightning_tabular\n"
        f"print(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}} & {{*{LIGHTNING!r}, 'torch'}})))\n"
    )
    assert loaded == []


# Loads each folder in argv[2:], scores the first 64 rows of argv[1] (.npy) and saves the
# scores, then prints whether torch is imported; then scores all rows (torch's batch path).
SMALL_THEN_LARGE = textwrap.dedent("""
    import json, sys
    import numpy as np
    from lab.plugins import make_plugin_manager, model_flavor

    flavor = model_flavor(make_plugin_manager(), "lightning_mlp")
    rows = np.load(sys.argv[1])
    models = [flavor.load(path) for path in sys.argv[2:]]
    for path, model in zip(sys.argv[2:], models):
        np.save(path + ".small.npy", np.concatenate([model.predict(rows[i:i + 1]) for i in range(64)]))
        np.save(path + ".batch.npy", model.predict(rows[:64]))
    small = "torch" in sys.modules
    for path, model in zip(sys.argv[2:], models):
        np.save(path + ".large.npy", model.predict(rows))
    print(json.dumps([small, "torch" in sys.modules]))
""")


def test_a_model_with_a_numpy_forward_loads_and_scores_small_batches_without_torch(tmp_path):
    # The server scores one row at a time: it starts without torch (about a second) and
    # gives the scores the torch-built model gives; a large batch then brings torch in.
    rows = tiny_fraud_data(300)[2]
    np.save(tmp_path / "rows.npy", rows)
    models = {task: a_model(rows, task) for task in ("classification", "regression")}
    for task, model in models.items():
        LightningMLP().save(model, tmp_path / task)

    small, large = fresh_python(SMALL_THEN_LARGE, tmp_path / "rows.npy", *(tmp_path / task for task in models))
    assert (small, large) == (False, True)
    for task in models:
        reference = LightningMLP().load(tmp_path / task).torch_scorer()  # the MLPScorer of the same folder
        assert np.array_equal(np.load(tmp_path / f"{task}.small.npy"),
                              np.concatenate([reference.predict(rows[i:i + 1]) for i in range(64)])), task
        assert np.array_equal(np.load(tmp_path / f"{task}.batch.npy"), reference.predict(rows[:64])), task
        assert np.array_equal(np.load(tmp_path / f"{task}.large.npy"), reference.predict(rows)), task
