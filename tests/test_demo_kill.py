"""kill -9 during training, then `lab run` again: it resumes and the registry stays consistent."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from lab.config import load_config
from lab.registry import Registry
from tests.conftest import REPO, make_small_lab

LAB = str(REPO / ".venv" / "bin" / "lab") if (REPO / ".venv" / "bin" / "lab").exists() else "lab"




@pytest.mark.slow
def test_kill_during_training_then_resume(tmp_path):
    make_small_lab(tmp_path, max_epochs=8)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    # A session of its own, so the kill takes the notebook kernel down too, as a crash would.
    proc = subprocess.Popen([LAB, "--root", str(tmp_path), "run"], env=env, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:
            if list(tmp_path.glob("runs/*/train/trials/*/ckpt/epoch=2.ckpt")):
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the run ended before training reached epoch 2"
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    # Jupyter puts the kernel in a session of its own; it must notice its run died and stop,
    # not train on beside the run that resumes.
    time.sleep(1)
    before = sorted(tmp_path.glob("runs/*/train/**/*.ckpt"))
    time.sleep(2.5)
    assert sorted(tmp_path.glob("runs/*/train/**/*.ckpt")) == before, "an orphaned kernel kept training"

    config = load_config(tmp_path)
    with Registry.open(config.registry_path) as reg:
        killed = reg.last_pipeline_run()
        assert killed["status"] == "running"
        assert reg.get_alias("fraud", "champion") is None  # nothing half-registered

    again = subprocess.run([LAB, "--root", str(tmp_path), "run"], env=env, capture_output=True, text=True,
                           timeout=400)
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"resuming pipeline run {killed['id']}" in again.stdout
    assert "simulate: unchanged, skipped" in again.stdout and "features: unchanged, skipped" in again.stdout

    # The interrupted trial resumed from a checkpoint instead of starting over.
    fits = [json.loads(p.read_text()) for p in tmp_path.glob(f"runs/{killed['id']}/train/trials/*/fit.json")]
    assert any(f.get("start_epoch", 0) > 0 for f in fits), fits

    with Registry.open(config.registry_path) as reg:
        run = reg.get_run(killed["id"])
        assert run["status"] == "finished"
        champion = reg.get_alias("fraud", "champion")
        assert champion is not None and champion.version == 1
        train_run = reg.get_run(champion.run_id)
        assert train_run["status"] == "finished"
        assert len([t for t in reg.list_trials(champion.run_id) if t["state"] == "COMPLETE"]) >= 2
        assert [v.version for v in reg.list_model_versions("fraud")] == [1]
        assert not [r for r in reg.list_runs(kind="train") if r["status"] == "running"]
