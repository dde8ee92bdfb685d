"""Shadow mode against the real thing: `lab serve` as a subprocess on 127.0.0.1 (a tiny
lab, a second version registered as the challenger), the shadow started, reported on and
promoted through the CLI; the server stopped by its PID."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import httpx
import pytest

from lab.cli import main
from lab.config import load_config
from lab.registry import Registry
from lab.serving.shadow_report import shadow_counts
from plugins.fraud.testing import MODEL_ARTIFACT, build_tiny_lab
from tests.conftest import lab_server


def wait_for(condition, what: str, log: Path, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}:\n{log.read_text()}"
        time.sleep(0.05)


@pytest.mark.slow
def test_a_real_server_mirrors_to_the_challenger_and_promotion_waits_for_the_criteria(tmp_path, capsys):
    lab = build_tiny_lab(tmp_path / "lab")
    config = load_config(lab.root)
    with Registry.open(config.registry_path, project_root=lab.root) as reg:
        reg.register_model("fraud", run_id=None, flavor="lightning_mlp", artifact_path=MODEL_ARTIFACT, metrics={},
                           lineage={"note": "the champion's files: a challenger that agrees"})
    log_path = tmp_path / "serve.log"

    def cli(*args) -> int:
        return main(["--root", str(lab.root), *args])

    with lab_server(lab.root, log_path) as (base, proc):
        with httpx.Client(base_url=base, timeout=10) as http:
            assert cli("shadow", "start", "fraud", "--challenger", "2", "--min-requests", "80",
                       "--min-agreement", "0.9", "--max-latency-ms", "1000", "--days", "1") == 0
            capsys.readouterr()

            # The server picks the shadow up within its refresh: requests start being mirrored.
            sent = []

            def mirrored():
                response = http.post("/predict", json=lab.transaction(len(sent)))
                assert response.status_code == 200 and response.json()["model_version"] == 1
                sent.append(response.json()["request_id"])
                return shadow_counts(config.ledger_path, 1)["requests"] > 0

            wait_for(mirrored, "the first mirrored request", log_path)
            first = len(sent)
            assert cli("promote", "fraud", "2") == 2
            assert "shadow: shadow #1 of v2 has not met its exit criteria: requests" in capsys.readouterr().err

            while len(sent) < first + 85:
                response = http.post("/predict", json=lab.transaction(len(sent)))
                assert response.status_code == 200 and response.json()["model_version"] == 1
                sent.append(response.json()["request_id"])
            wait_for(lambda: shadow_counts(config.ledger_path, 1)["requests"] >= 85, "the shadow rows", log_path)

            assert cli("shadow", "report", "fraud", "--json") == 0
            report = json.loads(capsys.readouterr().out)
            assert report["requests"] >= 85 and report["agreement"] == 1.0 and report["errors"] == 0
            assert report["met"] is True and report["unmet"] == []
            assert report["latency_ms"]["challenger"]["p99"] < 1000
            assert [c["name"] for c in report["checks"]] == ["min_requests", "min_agreement", "max_latency_ms"]

            assert cli("promote", "fraud", "2", "--reason", "shadow met") == 0
            assert "fraud: champion -> version 2 (was version 1)" in capsys.readouterr().out
            wait_for(lambda: http.get("/readyz").json()["model_version"] == 2, "the server to follow", log_path)
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(30) in (0, -signal.SIGTERM)
    text = log_path.read_text()
    assert "shadow #1: mirroring 'fraud' requests to challenger v2" in text and "Traceback" not in text
    # Every mirrored request is a row keyed by the champion's request id.
    rows = shadow_counts(config.ledger_path, 1)
    assert rows["requests"] <= len(sent) and rows["agreed"] == rows["requests"]
