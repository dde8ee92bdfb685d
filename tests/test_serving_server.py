"""The real thing: `lab serve` as a subprocess on 127.0.0.1, probed over HTTP with httpx,
stopped by its PID with SIGTERM; the ledger must hold every prediction afterwards."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from lab.serving.ledger import read_predictions
from plugins.fraud.testing import build_tiny_lab
from tests.conftest import free_port, lab_server

LAB = Path(sys.executable).parent / "lab"


@pytest.fixture
def served_lab(tmp_path, request):
    """A tiny lab and a running `lab serve` on a free loopback port; stopped by PID after.

    Parametrize indirectly with ``(extra args, files to delete from the lab)``."""
    args, remove = getattr(request, "param", ((), ()))
    lab = build_tiny_lab(tmp_path / "lab")
    for name in remove:
        (lab.root / name).unlink()
    with lab_server(lab.root, tmp_path / "serve.log", *args) as (base, proc):
        yield lab, base, proc, tmp_path / "serve.log"


@pytest.mark.slow
def test_real_server_scores_refuses_bad_input_and_flushes_the_ledger_on_sigterm(served_lab):
    lab, base, proc, log_path = served_lab
    with httpx.Client(base_url=base, timeout=10) as http:
        assert http.get("/healthz").json() == {"status": "ok"}
        assert http.get("/readyz").json()["model_version"] == lab.model_version

        ok = http.post("/predict", json=lab.transaction(1))
        assert ok.status_code == 200 and 0 <= ok.json()["score"] <= 1

        bad = http.post("/predict", content=b'{"TRANSACTION_ID": 1', headers={"content-type": "application/json"})
        assert bad.status_code == 400 and bad.json()["field"] is None
        wrong = http.post("/predict", json={**lab.transaction(2), "TX_AMOUNT": "lots"})
        assert wrong.status_code == 400 and wrong.json()["field"] == "TX_AMOUNT"

        unknown = http.post("/predict", json=lab.transaction(3, customer=123456, terminal=654321))
        assert unknown.status_code == 200
        assert unknown.json()["defaults"] == {"customer_spending": True, "terminal_risk": True}

        ids = [http.post("/predict", json=lab.transaction(100 + i)).json()["request_id"] for i in range(200)]
        assert http.get("/schema/openapi.json").json()["paths"]["/predict"]["post"]["operationId"] == "predict"

        # What another web page on this machine could send: refused before anything is written.
        plain = http.post("/predict", content=json.dumps(lab.transaction(4)), headers={"content-type": "text/plain"})
        assert plain.status_code == 415
        rebound = http.post("/predict", json=lab.transaction(5), headers={"host": "evil.example:8000"})
        assert rebound.status_code == 400 and "Host" in rebound.json()["detail"]
        assert http.get("/readyz", headers={"host": "evil.example"}).status_code == 400
        assert http.post("/predict", json=lab.transaction(6), headers={"host": "localhost"}).status_code == 200

        # Every prediction is counted and, within moments, written.
        deadline = time.monotonic() + 10
        while (stats := http.get("/stats").json())["ledger"]["written"] < 203 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert stats["predictions"] == 203
        assert stats["ledger"] | {"commits": 0} == {"appended": 203, "written": 203, "dropped": 0, "failed": 0,
                                                     "queued": 0, "commits": 0}

    os.kill(proc.pid, signal.SIGTERM)  # graceful: the lifespan's finally closes the ledger
    # uvicorn shuts down gracefully, then re-raises the signal: the exit status says SIGTERM.
    assert proc.wait(30) in (0, -signal.SIGTERM)
    log = log_path.read_text()
    assert "on http://127.0.0.1:" in log and "Application shutdown complete" in log and "Traceback" not in log
    rows = read_predictions(lab.root / "data" / "ledger.db")
    assert len(rows) == 203
    assert [r["request_id"] for r in rows[-201:-1]] == ids
    assert rows[0]["event_id"] == 1 and rows[1]["defaults"]["terminal_risk"] is True
    assert rows[-1]["event_id"] == 6
    assert "ledger closed: 203 written, 0 dropped, 0 failed" in log


@pytest.mark.slow
@pytest.mark.parametrize("served_lab", [(("--allow-empty-store",), ("data/online.db",))], indirect=True)
def test_real_server_with_allow_empty_store_serves_defaults_and_creates_no_store(served_lab):
    lab, base, proc, log_path = served_lab
    ready = httpx.get(f"{base}/readyz", timeout=10).json()
    assert any("never materialized" in w for w in ready["warnings"])
    body = httpx.post(f"{base}/predict", json=lab.transaction(1), timeout=10).json()
    assert body["defaults"] == {"customer_spending": True, "terminal_risk": True}
    assert not (lab.root / "data" / "online.db").exists()


@pytest.mark.slow
def test_real_lab_serve_exits_with_the_fix_when_there_is_no_champion(tmp_path):
    (tmp_path / "pyproject.toml").write_text('[tool.lab]\nmodel_name = "fraud"\n\n[tool.lab.fraud]\n')
    done = subprocess.run([str(LAB), "--root", str(tmp_path), "serve", "--port", str(free_port())],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "run `lab run` or `lab promote fraud VERSION`" in done.stderr and "Traceback" not in done.stderr
