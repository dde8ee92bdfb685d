"""Several servers, one truth: two real `lab serve` processes on two ports sharing one
PostgreSQL registry and ledger (issue 14, part 3).

The lab is the tiny fraud lab with a second model version and a running 50/50 flag,
moved into PostgreSQL with `lab migrate`, then served with ``registry`` and ``ledger``
set to the database's URL:

- a promote, then a rollback, made through the registry are followed by both servers
  within ``flag_refresh_s`` (0.2 s here; the figures are printed);
- a unit gets the same variant from either server, and the one ``lab.experiments``
  computes: assignment is a hash of (salt, unit), nothing per unit is stored, so a
  second server cannot disagree;
- with ``ledger_sync = true``, a server killed with SIGKILL under load from 4 clients
  loses no acknowledged prediction: every request answered 200 is in PostgreSQL, by
  request id, and the other server keeps answering.
"""

from __future__ import annotations

import os
import shutil
import signal
import threading
import time

import httpx
import pytest

from lab.cli import main
from lab.config import load_config
from lab.experiments import Assigner, Experiment, ExperimentStore, Variant
from lab.registry import Registry
from lab.serving.ledger import read_predictions
from plugins.fraud.testing import MODEL_ARTIFACT, build_tiny_lab
from tests._postgres import postgres_fixture
from tests.conftest import lab_server

pytestmark = pytest.mark.slow  # two servers at a time
postgres = postgres_fixture(scope="module")
CUSTOMERS = range(1000, 1100)


@pytest.fixture(scope="module")
def pg_lab(tmp_path_factory, postgres):
    """The tiny lab with versions 1 (champion) and 2 and a running flag, migrated into
    PostgreSQL and configured to use it; returns (lab, url)."""
    lab = build_tiny_lab(tmp_path_factory.mktemp("pg-serve") / "lab")
    config = load_config(lab.root)
    with Registry.open(config.registry_path, project_root=lab.root) as registry:
        assert registry.register_model("fraud", run_id=None, flavor="lightning_mlp", artifact_path=MODEL_ARTIFACT,
                                       metrics={}, lineage={"note": "the same weights"}).version == 2
    with ExperimentStore.open(config.registry_path) as store:
        store.create(Experiment("fraud_rollout", (Variant("control", 0.5, {"model_version": 1}),
                                                  Variant("treatment", 0.5, {"model_version": 2})),
                                kind="flag", layer="rollouts", unit="CUSTOMER_ID"))
        store.start("fraud_rollout")
    url = postgres.new_database("serving")
    assert main(["--root", str(lab.root), "migrate", "--to", url]) == 0
    pyproject = lab.root / "pyproject.toml"
    text = pyproject.read_text().replace("[tool.lab]\n", f'[tool.lab]\nregistry = "{url}"\nledger = "{url}"\n', 1)
    pyproject.write_text(text + "\n[tool.lab.serve]\nledger_sync = true\nflag_refresh_s = 0.2\n")
    (lab.root / "registry.db").unlink()  # nothing may read the old files by mistake
    shutil.rmtree(lab.root / "data" / "ledger.db", ignore_errors=True)
    return lab, url


def version_of(http: httpx.Client, lab, i: int = 1) -> int:
    answer = http.post("/predict", json=lab.transaction(i))
    assert answer.status_code == 200, answer.text
    return answer.json()["model_version"]


def followed(clients, lab, want: int, timeout: float = 5.0) -> float:
    """Seconds until every client's server answers with version ``want``."""
    started = time.monotonic()
    pending = list(clients)
    while pending:
        pending = [http for http in pending if version_of(http, lab) != want]
        assert time.monotonic() - started < timeout, f"not followed within {timeout} s"
        time.sleep(0.02)
    return time.monotonic() - started


def test_two_servers_follow_a_promote_and_a_rollback(pg_lab, tmp_path):
    lab, url = pg_lab
    with lab_server(lab.root, tmp_path / "a.log", ready_s=60) as (a, _), \
            lab_server(lab.root, tmp_path / "b.log", ready_s=60) as (b, _), \
            httpx.Client(base_url=a, timeout=10) as http_a, httpx.Client(base_url=b, timeout=10) as http_b:
        assert version_of(http_a, lab) == version_of(http_b, lab) == 1
        with Registry.open(url, project_root=lab.root) as registry:
            registry.promote("fraud", 2, reason="two servers follow")
        promoted = followed([http_a, http_b], lab, 2)
        with Registry.open(url, project_root=lab.root) as registry:
            registry.rollback("fraud", reason="and roll back")
        rolled_back = followed([http_a, http_b], lab, 1)
        with Registry.open(url, project_root=lab.root) as registry:
            history = [(e["from_version"], e["to_version"]) for e in registry.alias_history("fraud", "champion")]
    print(f"followed by both servers: promote {promoted:.2f} s, rollback {rolled_back:.2f} s")
    assert history[-2:] == [(1, 2), (2, 1)]
    assert "Traceback" not in (tmp_path / "a.log").read_text() + (tmp_path / "b.log").read_text()


def test_flag_assignment_is_sticky_across_servers_and_a_kill_9_loses_no_acknowledged_row(pg_lab, tmp_path):
    lab, url = pg_lab
    with ExperimentStore.open(url) as store:
        expected = {c: Assigner.from_store(store).variant("fraud_rollout", c) for c in CUSTOMERS}
    flag = ("--flag", "fraud_rollout")
    with lab_server(lab.root, tmp_path / "a.log", *flag, ready_s=60) as (a, proc_a), \
            lab_server(lab.root, tmp_path / "b.log", *flag, ready_s=60) as (b, _):
        seen = {}
        for base in (a, b):
            with httpx.Client(base_url=base, timeout=10) as http:
                for i, customer in enumerate(CUSTOMERS):
                    answer = http.post("/predict", json=lab.transaction(i, customer=customer)).json()
                    seen.setdefault(customer, []).append((answer["variant"], answer["model_version"]))
        assert {c: v[0][0] for c, v in seen.items()} == expected  # server a agrees with lab.experiments
        assert all(v[0] == v[1] for v in seen.values())  # and server b with server a, unit by unit
        assert 30 <= sum(v[0][0] == "treatment" for v in seen.values()) <= 70

        # kill -9 of server a under load from 4 clients; every acknowledged row is kept.
        acknowledged: list[str] = []
        lock, enough = threading.Lock(), threading.Event()

        def client(n: int) -> None:
            with httpx.Client(base_url=a, timeout=10) as http:
                for i in range(150):
                    request_id = f"k{n}-{i}"
                    try:
                        answer = http.post("/predict", json=lab.transaction(n * 1000 + i),
                                           headers={"x-request-id": request_id})
                    except httpx.TransportError:
                        return  # server a is gone: never acknowledged
                    assert answer.status_code == 200, answer.text
                    with lock:
                        acknowledged.append(request_id)
                        if len(acknowledged) >= 150:
                            enough.set()

        threads = [threading.Thread(target=client, args=(n,)) for n in range(4)]
        for thread in threads:
            thread.start()
        assert enough.wait(60), "the load never reached 150 answered requests"
        os.kill(proc_a.pid, signal.SIGKILL)
        assert proc_a.wait(10) == -signal.SIGKILL
        for thread in threads:
            thread.join(30)
        with httpx.Client(base_url=b, timeout=10) as http:  # the other server still answers
            assert http.post("/predict", json=lab.transaction(7, customer=1001)).json()["variant"] == expected[1001]
    answered = set(acknowledged)
    assert 150 <= len(answered) < 600
    kept = {row["request_id"] for row in read_predictions(url, include_fallbacks=True)}
    assert answered <= kept, f"{len(answered - kept)} acknowledged prediction(s) lost: {sorted(answered - kept)[:5]}"
    rows = read_predictions(url, experiment="fraud_rollout")
    assert all(r["model_version"] == (2 if r["variant"] == "treatment" else 1) for r in rows)
