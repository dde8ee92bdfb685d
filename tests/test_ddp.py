"""Distributed data parallel for ``lightning_mlp`` on 2 CPU processes (gloo), against one process.

The same tiny model (fixed seed, dropout 0, small numpy arrays) trains three times: in
one process; with ``strategy="ddp_fork"`` and ``devices=2`` from this process (the
in-process launcher a notebook stage uses: the ranks are forked, this process gets rank
0's result); and with ``strategy="ddp"`` under ``torchrun --nproc-per-node 2`` (ranks
launched outside, each running the whole script, as on a cluster).

The global batch is the same in all three (128 rows: 64 per rank under DDP, the loader
hands each rank its half of every batch) and 128 divides the 1,024 training rows, so the
DDP gradient (the mean of the two ranks' 64-row means) is the one-process gradient up to
the order of float32 additions. Tolerance: validation AP and ROC AUC within 1e-4 and every
weight within 1e-5 of the one-process fit (measured on this machine: metrics equal to
the last digit, weights within 6e-8; docs/training.md, Devices).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pytorch_lightning")

from plugins.lightning_tabular.checkpoints import checkpoints_by_epoch, sha256_file, sidecar_of  # noqa: E402
from plugins.lightning_tabular.flavor import LightningMLP  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PARAMS = {"hidden_sizes": [16], "dropout": 0.0, "lr": 1e-2, "batch_size": 128}
EPOCHS, SEED = 3, 3
METRIC_TOLERANCE, WEIGHT_TOLERANCE = 1e-4, 1e-5
NAMES = [f"f{i}" for i in range(6)]

# Also the data of the torchrun script below: keep the two in step.
DATA_CODE = """
def tiny_data():
    rng = np.random.default_rng(0)
    w = rng.normal(size=6)
    def draw(n):
        x = rng.normal(size=(n, 6)).astype(np.float32)
        p = 1 / (1 + np.exp(-(x @ w - 1.0)))
        return x, (rng.random(n) < p).astype(np.float32)
    return (*draw(1024), *draw(512))
"""
exec(DATA_CODE)  # defines tiny_data()

TORCHRUN_SCRIPT = f"""
import json, os, sys
from pathlib import Path
import numpy as np
from plugins.lightning_tabular.flavor import LightningMLP
{DATA_CODE}
def main():
    out = Path(sys.argv[1])
    flavor = LightningMLP()
    fit = flavor.fit(*tiny_data(), {NAMES!r}, {PARAMS!r}, seed={SEED}, workdir=out / "work", max_epochs={EPOCHS},
                     devices={{"strategy": "ddp", "devices": 2}})
    rank = os.environ["RANK"]
    flavor.save(fit.model, out / f"model-rank{{rank}}")  # every rank asks; only rank 0 may write
    weights = {{k: v.tolist() for k, v in fit.model.net.state_dict().items()}}
    (out / f"rank{{rank}}.json").write_text(json.dumps({{"metrics": fit.metrics, "weights": weights}}))

if __name__ == "__main__":
    main()
"""


class EpochLog:
    """An epoch observer noting which process called it."""

    def __init__(self):
        self.calls: list[tuple[int, int]] = []

    def lab_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        self.calls.append((epoch, os.getpid()))


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    """The reference: the same fit in one CPU process."""
    return LightningMLP().fit(*tiny_data(), NAMES, PARAMS, seed=SEED, workdir=tmp_path_factory.mktemp("one"),
                              max_epochs=EPOCHS)


def weights(model) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy() for k, v in model.net.state_dict().items()}


def assert_agrees(metrics: dict, model_weights: dict, reference) -> None:
    for name in ("val_average_precision", "val_roc_auc"):
        assert abs(metrics[name] - reference.metrics[name]) <= METRIC_TOLERANCE, name
    assert metrics["epochs"] == reference.metrics["epochs"] == EPOCHS
    ref = weights(reference.model)
    assert set(model_weights) == set(ref)
    for name, value in model_weights.items():
        assert np.abs(np.asarray(value) - ref[name]).max() <= WEIGHT_TOLERANCE, name


def assert_rank_zero_checkpoints(ckpt_dir: Path) -> None:
    """The last two epochs' checkpoints, each vouched for by its sidecar; no temp file left."""
    found = checkpoints_by_epoch(ckpt_dir)
    assert sorted(found) == [EPOCHS - 2, EPOCHS - 1]
    for ckpt in found.values():
        assert json.loads(sidecar_of(ckpt).read_text())["sha256"] == sha256_file(ckpt)
    assert not list(ckpt_dir.glob(".*.tmp"))


def test_ddp_fork_on_two_cpu_processes_matches_one_process(one_process, tmp_path):
    log = EpochLog()
    fit = LightningMLP().fit(*tiny_data(), NAMES, PARAMS, seed=SEED, workdir=tmp_path, max_epochs=EPOCHS,
                             callbacks=[log], devices={"strategy": "ddp_fork", "devices": 2})
    assert_agrees(fit.metrics, weights(fit.model), one_process)
    # This process got rank 0's result: its newest checkpoint, and every epoch for its observers.
    assert fit.checkpoint == tmp_path / "ckpt" / f"epoch={EPOCHS - 1}.ckpt"
    assert log.calls == [(e, os.getpid()) for e in range(EPOCHS)]
    assert_rank_zero_checkpoints(tmp_path / "ckpt")
    assert json.loads((tmp_path / "fit.json").read_text())["finished"] is True


def test_ddp_under_torchrun_matches_one_process_and_only_rank_zero_writes(one_process, tmp_path):
    script = tmp_path / "rank_fit.py"
    script.write_text(textwrap.dedent(TORCHRUN_SCRIPT))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(script),
         str(tmp_path)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    for rank in ranks:
        assert_agrees(rank["metrics"], rank["weights"], one_process)
    assert (tmp_path / "model-rank0" / "model.json").is_file()
    assert not (tmp_path / "model-rank1").exists()
    assert_rank_zero_checkpoints(tmp_path / "work" / "ckpt")
