"""`kill -9` of a real `lab serve` loses no ledger row the docs promise to keep, and the
restarted server is ready (docs/serving.md, "What a kill -9 keeps").

- With ``[tool.lab.serve] ledger_sync = true`` a prediction is answered only once its
  row is committed: the server is killed while several clients are sending, and every
  request answered 200 is in the ledger, by request id.
- By default a response does not wait for its row: every row counted ``written`` in
  ``/stats`` before the kill is in the ledger (the rows still queued are the ones a
  kill may lose, and ``lab_ledger_lag_records`` shows how many).
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest

from lab.serving.ledger import read_predictions
from plugins.fraud.testing import build_tiny_lab
from tests.conftest import lab_server


def kill_9(proc: subprocess.Popen) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(10) == -signal.SIGKILL


def set_serve(root: Path, body: str) -> None:
    text = (root / "pyproject.toml").read_text().split("\n[tool.lab.serve]\n")[0]
    (root / "pyproject.toml").write_text(text + "\n[tool.lab.serve]\n" + body)


@pytest.mark.slow
def test_kill_9_loses_no_promised_ledger_row_and_the_restarted_server_is_ready(tmp_path):
    lab = build_tiny_lab(tmp_path / "lab")
    ledger = lab.root / "data" / "ledger.db"
    log = tmp_path / "serve.log"

    # 1. ledger_sync: killed under load from 4 clients; every answered request is kept.
    set_serve(lab.root, "ledger_sync = true\n")
    acknowledged: list[str] = []
    lock, enough = threading.Lock(), threading.Event()

    def client(n: int) -> None:
        with httpx.Client(base_url=base, timeout=10) as http:
            for i in range(150):  # bounded: at most 600 requests in all
                request_id = f"c{n}-{i}"
                try:
                    answer = http.post("/predict", json=lab.transaction(n * 1000 + i),
                                       headers={"x-request-id": request_id})
                except httpx.TransportError:
                    return  # the server is gone: this one was never acknowledged
                assert answer.status_code == 200, answer.text
                assert answer.json()["request_id"] == request_id
                with lock:
                    acknowledged.append(request_id)
                    if len(acknowledged) >= 200:
                        enough.set()

    with lab_server(lab.root, log, ready_s=60, append=True) as (base, proc):
        threads = [threading.Thread(target=client, args=(n,)) for n in range(4)]
        for thread in threads:
            thread.start()
        assert enough.wait(60), "the load never reached 200 answered requests"
        kill_9(proc)  # the clients are still sending: some requests are in flight
        for thread in threads:
            thread.join(30)
    with lock:
        answered = set(acknowledged)
    assert 200 <= len(answered) < 600
    kept = {row["request_id"] for row in read_predictions(ledger, include_fallbacks=True)}
    assert answered <= kept, f"{len(answered - kept)} acknowledged prediction(s) lost: {sorted(answered - kept)[:5]}"

    # 2. The restarted server opens the same ledger and is ready; by default it does not wait for rows.
    set_serve(lab.root, "")
    with lab_server(lab.root, log, ready_s=60, append=True) as (base, proc):
        with httpx.Client(base_url=base, timeout=10) as http:
            assert http.get("/readyz").json()["ready"] is True
            ids = [http.post("/predict", json=lab.transaction(10_000 + i)).json()["request_id"] for i in range(100)]
            deadline = time.monotonic() + 10
            while (stats := http.get("/stats").json()["ledger"])["written"] < 100:
                assert time.monotonic() < deadline, stats
                time.sleep(0.02)
            lag = [line for line in http.get("/metrics").text.splitlines()
                   if line.startswith("lab_ledger_lag_records ")]
        assert stats["appended"] == stats["written"] == 100 and stats["dropped"] == stats["failed"] == 0
        assert lag == ["lab_ledger_lag_records 0.0"]
        kill_9(proc)
    kept = {row["request_id"] for row in read_predictions(ledger, include_fallbacks=True)}
    assert set(ids) <= kept and answered <= kept
    assert "Traceback" not in log.read_text()
