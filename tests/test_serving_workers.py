"""`lab serve --workers 2`: two processes on one port, /readyz once both are ready,
/metrics summing both (prometheus-client's multiprocess mode in a folder of the
server's, removed at exit), every prediction in the one ledger after SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from lab.serving.ledger import read_predictions
from plugins.fraud.testing import build_tiny_lab
from tests._helpers import free_port

LAB = Path(sys.executable).parent / "lab"
REQUESTS = 60




def samples(text: str) -> dict[tuple[str, tuple], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def stop_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)  # the supervisor and its workers: the group start_new_session made
    except ProcessLookupError:
        pass


@pytest.mark.slow
def test_two_workers_share_the_port_the_ledger_and_one_metrics_view(tmp_path):
    lab = build_tiny_lab(tmp_path / "lab")
    scratch = tmp_path / "tmp"  # the server's temporary folders go here, so the test can see them
    scratch.mkdir()
    port = free_port()
    log_path = tmp_path / "serve.log"
    log = log_path.open("w")
    proc = subprocess.Popen([str(LAB), "serve", "--port", str(port), "--root", str(lab.root), "--workers", "2"],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                            env={**os.environ, "LAB_HOME": "", "TMPDIR": str(scratch)})
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, log_path.read_text()
            try:
                ready = httpx.get(f"{base}/readyz", timeout=2)
                if ready.status_code == 200:
                    break
                reason = ready.json()["reason"]
                assert "failed" not in (reason or ""), reason
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "not ready in 60 s:\n" + log_path.read_text()
            time.sleep(0.05)
        folders = list(scratch.glob("lab-serve-metrics-*"))
        assert len(folders) == 1

        def one(i: int) -> int:
            # A connection per request, so the kernel may hand each to either worker.
            return httpx.post(f"{base}/predict", json=lab.transaction(i), timeout=10,
                              headers={"connection": "close"}).status_code

        with ThreadPoolExecutor(8) as pool:
            statuses = list(pool.map(one, range(REQUESTS)))
        assert statuses == [200] * REQUESTS  # /readyz said every worker was ready

        workers = {p.name.split("_")[-1] for p in folders[0].glob("counter_*.db")}
        assert len(workers) == 2, workers  # two processes write metrics
        served = []
        deadline = time.monotonic() + 10
        while True:  # the ledger's counters reach /metrics within a second (each worker publishes)
            scraped = samples(httpx.get(f"{base}/metrics", headers={"connection": "close"}).text)
            served.append(httpx.get(f"{base}/stats", headers={"connection": "close"}).json()["predictions"])
            assert scraped[("lab_predictions_total", (("model", "fraud"), ("variant", ""), ("version", "1")))] \
                == REQUESTS
            assert scraped[("lab_http_requests_total", (("method", "POST"), ("route", "/predict"),
                                                        ("status", "200")))] == REQUESTS
            assert scraped[("lab_ready", ())] == 1
            written = scraped.get(("lab_ledger_records_total", (("outcome", "written"),)))
            if written == REQUESTS:
                break
            assert time.monotonic() < deadline, f"ledger written {written} of {REQUESTS} in /metrics"
            time.sleep(0.2)
        assert scraped[("process_resident_memory_bytes", ())] > 0
        assert scraped[("lab_ledger_lag_records", ())] == 0
        # /stats is one worker's; every count it showed was at most the total
        assert all(0 <= n <= REQUESTS for n in served), served

        stop_group(proc, signal.SIGTERM)
        proc.wait(30)
        assert not folders[0].exists()  # the metrics folder goes with the server
        assert len(read_predictions(lab.root / "data" / "ledger.db")) == REQUESTS
        assert log_path.read_text().count("lab serve: ledger closed:") == 2
    finally:
        if proc.poll() is None:
            stop_group(proc, signal.SIGKILL)
            proc.wait(10)
        log.close()
