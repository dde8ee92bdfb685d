"""Serving routed by a flag: sticky per unit, weight changes and rollback without a restart,
and a guardrail regression that stops the flag on its own."""

from __future__ import annotations

import dataclasses
import shutil
import time

import numpy as np
import pytest
from litestar.testing import TestClient

from lab import hookimpl
from lab.cli import main
from lab.config import load_config
from lab.experiments import Assigner, Experiment, ExperimentStore, Variant
from lab.plugins import get_plugin_manager, model_flavor
from lab.registry import Registry
from lab.serving.ledger import read_predictions
from plugins.litestar_serving import create_app
from plugins.fraud.testing import MODEL_ARTIFACT, build_tiny_lab

CUSTOMERS = range(1000, 1400)


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    return build_tiny_lab(tmp_path_factory.mktemp("flag-lab"))


@pytest.fixture
def lab_with_two_versions(template, tmp_path):
    root = tmp_path / "lab"
    shutil.copytree(template.root, root)
    config = load_config(root)
    with Registry.open(config.registry_path, project_root=root) as reg:
        v2 = reg.register_model("fraud", run_id=None, flavor="lightning_mlp", artifact_path=MODEL_ARTIFACT,
                                metrics={}, lineage={"note": "the same weights, a second version"})
    assert v2.version == 2
    return dataclasses.replace(template, root=root)


def make_flag(root, weights=(0.9, 0.1), treatment_flavor_version=2):
    with ExperimentStore.open(load_config(root).registry_path) as store:
        store.create(Experiment(
            "fraud_rollout", (Variant("control", weights[0], {"model_version": 1}),
                              Variant("treatment", weights[1], {"model_version": treatment_flavor_version})),
            kind="flag", layer="rollouts", unit="CUSTOMER_ID"))
        store.start("fraud_rollout")


def wait_ready(client, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        response = client.get("/readyz")
        if response.status_code == 200 or "failed" in (response.json().get("reason") or ""):
            return response
        time.sleep(0.02)
    return response


def score_all(client, lab, customers=CUSTOMERS) -> dict[int, tuple[str, int]]:
    out = {}
    for i, customer in enumerate(customers):
        body = lab.transaction(i, customer=customer)
        r = client.post("/predict", json=body)
        assert r.status_code == 200, r.text
        out[customer] = (r.json()["variant"], r.json()["model_version"])
    return out


def expected(root, customers=CUSTOMERS) -> dict[int, str]:
    with ExperimentStore.open(load_config(root).registry_path) as store:
        assigner = Assigner.from_store(store)
    return {c: assigner.variant("fraud_rollout", c) for c in customers}


def until(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_flag_routes_sticky_then_ramps_and_rolls_back_live(lab_with_two_versions):
    lab = lab_with_two_versions
    make_flag(lab.root)
    config = load_config(lab.root)
    app = create_app(config, get_plugin_manager(config), flag="fraud_rollout", refresh_s=0.05, guardrail_s=0)
    with TestClient(app, base_url="http://127.0.0.1") as client:
        ready = wait_ready(client)
        assert ready.status_code == 200, ready.text
        first = score_all(client, lab)
        want = expected(lab.root)
        assert {c: v for c, (v, _) in first.items()} == want
        assert all(version == (2 if v == "treatment" else 1) for v, version in first.values())
        treated = {c for c, (v, _) in first.items() if v == "treatment"}
        assert 15 <= len(treated) <= 70  # ~10 % of 400
        assert score_all(client, lab) == first  # sticky

        # Ramp to 50 %: no restart; nobody already treated goes back.
        with ExperimentStore.open(config.registry_path) as store:
            store.set_weights("fraud_rollout", {"control": 0.5, "treatment": 0.5}, reason="ramp")
        assert until(lambda: len([1 for v, _ in score_all(client, lab).values() if v == "treatment"]) > 120)
        ramped = score_all(client, lab)
        assert treated <= {c for c, (v, _) in ramped.items() if v == "treatment"}

        # Roll back by the flag: everyone on version 1 within the refresh.
        with ExperimentStore.open(config.registry_path) as store:
            store.set_weights("fraud_rollout", {"control": 1.0, "treatment": 0.0}, reason="rollback")
        assert until(lambda: {ver for _, ver in score_all(client, lab).values()} == {1})

    rows = read_predictions(config.ledger_path, experiment="fraud_rollout")
    assert len(rows) >= 4 * len(CUSTOMERS)
    assert {r["variant"] for r in rows} == {"control", "treatment"}
    assert all(r["model_version"] == (2 if r["variant"] == "treatment" else 1) for r in rows)


class SlowFlavor:
    """A plugin flavor: the built-in MLP, 4 ms slower per prediction (an injected regression)."""

    name = "slow_mlp"

    def __init__(self, inner):
        self.inner = inner

    def load(self, path):
        model = self.inner.load(path)

        class Slow:
            feature_names = model.feature_names

            def predict(self, x: np.ndarray) -> np.ndarray:
                time.sleep(0.004)
                return model.predict(x)

        return Slow()


class SlowPlugin:
    def __init__(self, inner):
        self.flavor = SlowFlavor(inner)
        self.events = []

    @hookimpl
    def lab_model_flavors(self):
        return [self.flavor]

    @hookimpl
    def lab_on_event(self, event):
        self.events.append(event.name)


def test_a_latency_regression_stops_the_flag_and_routes_everyone_to_control(lab_with_two_versions):
    lab = lab_with_two_versions
    config = load_config(lab.root)
    pm = get_plugin_manager(config)
    plugin = SlowPlugin(model_flavor(pm, "lightning_mlp"))
    pm.register(plugin)
    with Registry.open(config.registry_path, project_root=lab.root) as reg:
        slow = reg.register_model("fraud", run_id=None, flavor="slow_mlp", artifact_path=MODEL_ARTIFACT,
                                  metrics={}, lineage={})
    make_flag(lab.root, weights=(0.5, 0.5), treatment_flavor_version=slow.version)
    app = create_app(config, pm, flag="fraud_rollout", refresh_s=0.05, guardrail_s=0.5)
    with TestClient(app, base_url="http://127.0.0.1") as client:
        assert wait_ready(client).status_code == 200

        def stopped() -> bool:
            score_all(client, lab, customers=range(2000, 2060))
            with ExperimentStore.open(config.registry_path) as store:
                return store.get("fraud_rollout").status == "stopped"

        assert until(stopped, timeout=60)
        after = score_all(client, lab, customers=range(3000, 3100))
        assert {v for v, _ in after.values()} == {"control"}
    with ExperimentStore.open(config.registry_path) as store:
        audit = store.audit("fraud_rollout")
    stop = [a for a in audit if a["action"] == "stop"][-1]
    assert stop["actor"] == "lab serve" and "latency_ms" in stop["reason"]
    assert "guardrail.breached" in plugin.events and "experiment.stopped" in plugin.events


def test_a_variant_without_a_model_is_not_ready_with_the_fix(lab_with_two_versions):
    lab = lab_with_two_versions
    config = load_config(lab.root)
    with ExperimentStore.open(config.registry_path) as store:
        store.create(Experiment("bad_flag", (Variant("control", 0.5, {"model_version": 1}),
                                             Variant("treatment", 0.5)), kind="flag", layer="x"))
    app = create_app(config, flag="bad_flag", refresh_s=0.05, guardrail_s=0)
    with TestClient(app, base_url="http://127.0.0.1") as client:
        response = wait_ready(client)
        assert response.status_code == 503
        assert "names no model" in response.json()["reason"] and "model_version=N" in response.json()["reason"]


def test_lab_serve_with_an_unknown_flag_is_a_clear_error(lab_with_two_versions, capsys):
    assert main(["--root", str(lab_with_two_versions.root), "serve", "--flag", "nope", "--port", "8799"]) == 2
    assert "nope" in capsys.readouterr().err


def test_the_server_follows_promote_and_rollback_without_a_restart(lab_with_two_versions, capsys):
    lab = lab_with_two_versions
    config = load_config(lab.root)
    app = create_app(config, get_plugin_manager(config), refresh_s=0.05)

    def versions():
        return {v for _, v in score_all(client, lab, customers=range(10)).values()}

    with TestClient(app, base_url="http://127.0.0.1") as client:
        assert wait_ready(client).status_code == 200
        assert versions() == {1}
        assert main(["--root", str(lab.root), "promote", "fraud", "2", "--reason", "better"]) == 0
        assert until(lambda: versions() == {2})
        assert client.get("/readyz").json()["model_version"] == 2
        assert main(["--root", str(lab.root), "rollback", "fraud", "--reason", "worse online"]) == 0
        assert until(lambda: versions() == {1})
    rows = read_predictions(config.ledger_path)
    assert {r["model_version"] for r in rows} == {1, 2}
    assert rows[-1]["model_version"] == 1


class NarrowFlavor:
    """A flavor whose models take one input fewer: not swappable for the serving one."""

    name = "narrow_mlp"

    def __init__(self, inner):
        self.inner = inner

    def load(self, path):
        model = self.inner.load(path)

        class Narrow:
            feature_names = model.feature_names[:-1]

            def predict(self, x):
                return model.predict(np.hstack([x, np.zeros((len(x), 1), np.float32)]))

        return Narrow()


def test_a_promoted_version_with_other_inputs_is_not_swapped_in(lab_with_two_versions):
    lab = lab_with_two_versions
    config = load_config(lab.root)
    pm = get_plugin_manager(config)
    narrow_flavor = NarrowFlavor(model_flavor(pm, "lightning_mlp"))

    class Plugin:
        @hookimpl
        def lab_model_flavors(self):
            return [narrow_flavor]

    pm.register(Plugin())
    with Registry.open(config.registry_path, project_root=lab.root) as reg:
        narrow = reg.register_model("fraud", run_id=None, flavor="narrow_mlp", artifact_path=MODEL_ARTIFACT,
                                    metrics={}, lineage={})
    with TestClient(create_app(config, pm, refresh_s=0.05), base_url="http://127.0.0.1") as client:
        assert wait_ready(client).status_code == 200
        with Registry.open(config.registry_path, project_root=lab.root) as reg:
            reg.promote("fraud", narrow.version)
        assert until(lambda: any("inputs differ" in w for w in client.get("/readyz").json()["warnings"]))
        assert {v for _, v in score_all(client, lab, customers=range(5)).values()} == {1}


def test_the_flag_routes_by_its_unit_field_whatever_it_is(lab_with_two_versions):
    lab = lab_with_two_versions
    config = load_config(lab.root)
    with ExperimentStore.open(config.registry_path) as store:
        store.create(Experiment("by_terminal", (Variant("control", 0.5, {"model_version": 1}),
                                                Variant("treatment", 0.5, {"model_version": 2})),
                                kind="flag", layer="terminals", unit="TERMINAL_ID"))
        store.start("by_terminal")
        assigner = Assigner.from_store(store)
    app = create_app(config, get_plugin_manager(config), flag="by_terminal", refresh_s=0.05, guardrail_s=0)
    with TestClient(app, base_url="http://127.0.0.1") as client:
        assert wait_ready(client).status_code == 200
        got = {}
        for terminal in range(500, 560):
            body = client.post("/predict", json=lab.transaction(terminal, customer=1, terminal=terminal)).json()
            got[terminal] = body["variant"]
    assert got == {t: assigner.variant("by_terminal", t) for t in got}
    assert set(got.values()) == {"control", "treatment"}  # one customer, both variants: not by CUSTOMER_ID


def test_a_flag_whose_unit_is_not_a_request_field_is_not_ready_with_the_fix(lab_with_two_versions, capsys):
    lab = lab_with_two_versions
    config = load_config(lab.root)
    with ExperimentStore.open(config.registry_path) as store:
        store.create(Experiment("by_session", (Variant("control", 0.5, {"model_version": 1}),
                                               Variant("treatment", 0.5, {"model_version": 2})),
                                kind="flag", layer="sessions", unit="SESSION_ID"))
        store.start("by_session")
    app = create_app(config, flag="by_session", refresh_s=0.05, guardrail_s=0)
    with TestClient(app, base_url="http://127.0.0.1") as client:
        response = wait_ready(client)
        assert response.status_code == 503
        reason = response.json()["reason"]
        assert "'SESSION_ID', which is not a field of the Transaction request" in reason
        assert "CUSTOMER_ID" in reason and "--unit" in reason
        assert client.post("/predict", json=lab.transaction(1)).status_code == 503
    assert main(["--root", str(lab.root), "serve", "--flag", "by_session", "--port", "8799"]) == 2
    assert "'SESSION_ID', which is not a field of the Transaction request of model 'fraud'" in capsys.readouterr().err
