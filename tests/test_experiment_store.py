"""ExperimentStore on a real registry file: buckets, weights, allocations and bad input
that must leave no row behind, and the file's migrations. The life cycle, audit,
append-only history and versioning every experiment store keeps are the contract suite
``lab.testing.experiments.ExperimentStoreContract`` (SQLite and PostgreSQL:
``tests/test_experiment_store_contract.py``)."""

from __future__ import annotations

import json
import sqlite3

import pytest

from lab.errors import ConfigError, LabError, NotFound
from lab.experiments import Assigner, BaseExperimentStore, Experiment, ExperimentStore, Variant, assign
from lab.registry import Registry

TABLES = ("experiments", "experiment_audit", "experiment_allocations")


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("LAB_ACTOR", "tester")
    with ExperimentStore.open(tmp_path / "registry.db") as s:
        yield s


def ranker(**fields) -> Experiment:
    return Experiment("ranker", (Variant("control", 0.9), Variant("treatment", 0.1, {"model_version": 2})),
                      **fields)


def row_counts(store) -> dict[str, int]:
    with sqlite3.connect(store.path) as conn:
        return {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in TABLES}


# -- round trips --------------------------------------------------------------------

def test_created_experiment_reads_back_equal_after_reopening(store, tmp_path):
    e = ranker(layer="search", layer_share=(0, 5000), unit="CUSTOMER_ID", metric="ctr", metric_kind="mean",
               alpha=0.01, power=0.9, mde=0.02, baseline=0.1)
    assert isinstance(store, BaseExperimentStore)
    assert store.create(e) == e
    assert store.get("ranker") == e and store.get("ranker").salt == "ranker"
    with ExperimentStore.open(tmp_path / "registry.db") as again:
        assert again.list() == [e]
        assert again.list(layer="search") == [e] and again.list(layer="other") == []
    with Registry.open(tmp_path / "registry.db") as reg:  # one file, each owner's migrations recorded
        assert [m["name"] for m in reg.migrations() if m["owner"] == "experiments"] == [
            "0001_experiments", "0002_experiment_buckets"]
        assert any(m["owner"] == "registry" for m in reg.migrations())


def test_assignment_is_sticky_after_the_store_is_reopened(store, tmp_path):
    store.create(ranker())
    store.start("ranker")
    before = [assign(store.get("ranker"), u) for u in range(1000)]
    store.close()
    with ExperimentStore.open(tmp_path / "registry.db") as again:
        assigner = Assigner.from_store(again)
        assert [assigner.variant("ranker", u) for u in range(1000)] == before
    assert set(before) == {"control", "treatment"}


def test_set_weights_stores_the_moved_buckets_and_units_follow_them(store, tmp_path):
    store.create(ranker())
    store.start("ranker")
    before = Assigner.from_store(store)
    store.set_weights("ranker", {"control": 0.8, "treatment": 0.2})
    store.close()
    with ExperimentStore.open(tmp_path / "registry.db") as again:
        # control gave up its top buckets; treatment kept its own and took those
        assert again.get("ranker").buckets == {"control": ((1000, 9000),), "treatment": ((0, 1000), (9000, 10000))}
        after = Assigner.from_store(again)
    moved = {(before.variant("ranker", u), after.variant("ranker", u)) for u in range(20_000)}
    assert moved == {("control", "control"), ("treatment", "treatment"), ("control", "treatment")}


def test_rows_made_before_stored_buckets_keep_their_assignments(tmp_path):
    from lab import sqlite as layer
    from lab.experiments import variant_bucket
    from lab.experiments._migrations import MIGRATIONS

    path = tmp_path / "registry.db"
    database = layer.Database.open(path)
    database.migrate("experiments", MIGRATIONS[:1])  # the schema before 0002_experiment_buckets
    legacy = {  # name -> variants, and the ranges the old layout gave them
        "ramp": ([("control", 0.7), ("a", 0.2), ("b", 0.1)], {"a": [(0, 2000)], "b": [(2000, 3000)],
                                                               "control": [(3000, 10000)]}),
        # thirds: the old cumulative rounding put boundaries at 3333 and 6667
        "thirds": ([("control", 1 / 3), ("a", 1 / 3), ("b", 1 / 3)], {"a": [(0, 3333)], "b": [(3333, 6667)],
                                                                     "control": [(6667, 10000)]}),
    }
    with database.write() as db:
        for name, (variants, _) in legacy.items():
            layer.insert(db, "experiments", {
                "name": name, "kind": "experiment", "status": "running", "layer": name, "share_start": 0,
                "share_end": 10000, "salt": name, "unit": "unit_id", "metric": "conversion",
                "metric_kind": "proportion", "alpha": 0.05, "power": 0.8, "created_at": "t", "updated_at": "t",
                "variants": json.dumps([{"name": n, "weight": w, "payload": {}} for n, w in variants]),
            })
    database.close()
    with ExperimentStore.open(path) as store:
        assigner = Assigner.from_store(store)
        for name, (_, ranges) in legacy.items():
            assert {n: list(r) for n, r in store.get(name).buckets.items()} == ranges
            for u in range(3000):
                bucket = variant_bucket(name, u)
                old = next(n for n, rs in ranges.items() for s, e in rs if s <= bucket < e)
                assert assigner.variant(name, u) == old


# -- life cycle and audit -----------------------------------------------------------

def test_stop_sends_everyone_to_control_with_or_without_the_weights(store):
    store.create(ranker())
    store.start("ranker")
    stopped = store.stop("ranker")
    assert stopped.status == "stopped" and stopped.weights == {"control": 1.0, "treatment": 0.0}
    assert {assign(store.get("ranker"), u) for u in range(500)} == {"control"}
    other = Experiment("button", (Variant("control", 0.5), Variant("blue", 0.5)), layer="checkout")
    store.create(other)
    store.start("button")
    kept = store.stop("button", to_control=False)
    assert kept.weights == {"control": 0.5, "blue": 0.5}
    assert {assign(store.get("button"), u) for u in range(500)} == {"control"}


def test_allocations_are_recorded_in_order_without_changing_the_served_weights(store):
    store.create(ranker())
    store.record_allocation("ranker", {"control": 0.6, "treatment": 0.4}, source="thompson")
    store.record_allocation("ranker", {"control": 0.3, "treatment": 0.7}, source="thompson", actor="bandit")
    history = store.allocations("ranker")
    assert [h["weights"] for h in history] == [{"control": 0.6, "treatment": 0.4}, {"control": 0.3, "treatment": 0.7}]
    assert [h["actor"] for h in history] == ["tester", "bandit"]
    assert store.audit("ranker")[-1]["old"] == {"weights": {"control": 0.6, "treatment": 0.4}}
    assert store.get("ranker").weights == {"control": 0.9, "treatment": 0.1}


def test_apply_allocation_serves_and_records_in_one_transaction(store):
    store.create(ranker())
    store.start("ranker")
    before = row_counts(store)
    served = store.apply_allocation("ranker", {"control": 0.6, "treatment": 0.4}, source="thompson", actor="bandit")
    assert served == store.get("ranker") and served.weights == {"control": 0.6, "treatment": 0.4}
    assert row_counts(store) == {**before, "experiment_audit": before["experiment_audit"] + 1,
                                 "experiment_allocations": before["experiment_allocations"] + 1}
    audit = store.audit("ranker")[-1]
    assert (audit["action"], audit["actor"], audit["reason"]) == ("set_weights", "bandit", "thompson allocation")
    assert audit["old"] == {"control": 0.9, "treatment": 0.1} and audit["new"] == served.weights
    (allocation,) = store.allocations("ranker")
    assert (allocation["weights"], allocation["source"], allocation["actor"]) == (served.weights, "thompson", "bandit")

    before, state = row_counts(store), store.get("ranker")
    for call, error, message in [
        (lambda: store.apply_allocation("ranker", {"control": 0.6, "treatment": 0.6}, source="t"), ConfigError,
         r"sum to 1\.2"),
        (lambda: store.apply_allocation("ranker", {"control": 0.5, "treatment": 0.5}, source=" "), ConfigError,
         "source of an allocation"),
        # fails after the weights were updated inside the transaction: rolled back whole
        (lambda: store.apply_allocation("ranker", {"control": 0.5, "treatment": 0.5}, source="t", reason=7),
         ConfigError, "reason must be a string"),
        (lambda: store.apply_allocation("nope", {"control": 0.5, "treatment": 0.5}, source="t"), NotFound, "nope"),
    ]:
        with pytest.raises(error, match=message):
            call()
        assert row_counts(store) == before and store.get("ranker") == state
    store.stop("ranker", reason="guardrail")
    before = row_counts(store)
    with pytest.raises(LabError, match="is stopped; its weights are final"):
        store.apply_allocation("ranker", {"control": 0.5, "treatment": 0.5}, source="thompson")
    assert row_counts(store) == before and store.get("ranker").weights == {"control": 1.0, "treatment": 0.0}


# -- bad input leaves nothing behind --------------------------------------------------

V2 = (Variant("control", 0.5), Variant("treatment", 0.5))


@pytest.mark.parametrize("build, message", [
    (lambda: Experiment("x", (Variant("control", 0.5), Variant("t", 0.6))), r"sum to 1\.1, not 1 .*add up to 1"),
    (lambda: Experiment("x", (Variant("control", 0.5), Variant("t", 0.4))), r"sum to 0\.9, not 1"),
    (lambda: Experiment("x", V2, alpha=1.5), r"alpha of experiment 'x' must be a number strictly between 0 and 1"),
    (lambda: Experiment("x", V2, alpha=0), "alpha .* strictly between 0 and 1"),
    (lambda: Experiment("x", V2, power=1.0), "power .* strictly between 0 and 1"),
    (lambda: Experiment("x", (Variant("control", 1.2), Variant("t", -0.2))), "weights must be >= 0"),
    (lambda: Experiment("x", (Variant("control", 1.0),)), "needs at least 2 .*kind='flag'"),
    (lambda: Experiment("x", (Variant("a", 0.5), Variant("a", 0.5))), "variant.* a more than once"),
    (lambda: Experiment("x-1", V2), "experiment name must be an identifier"),
    (lambda: Experiment("x", (Variant("control", 0.5), Variant("two words", 0.5))), "variant name must be"),
    (lambda: Experiment("x", V2, layer_share=(5000, 5000)), r"0 <= start < end <= 10000"),
    (lambda: Experiment("x", V2, layer_share=(0, 20000)), r"0 <= start < end <= 10000"),
    (lambda: Experiment("x", V2, metric_kind="ratio"), "metric_kind .* proportion, mean"),
    (lambda: Experiment("x", V2, status="paused"), "status .* draft, running, stopped"),
    (lambda: Experiment("x", (Variant("control", 0.5), Variant("t", 0.5, {"f": object()}))), "JSON values"),
    (lambda: Experiment("x", V2, mde=-0.1), "mde .* > 0"),
    (lambda: Experiment("x", V2, layer="a:b"), r"layer of experiment 'x' must be an identifier, or flag:<identifier>"),
    (lambda: Experiment("x", V2, kind="flag", layer="flag:"), "must be an identifier, or flag:<identifier>"),
])
def test_an_invalid_experiment_cannot_be_built(store, build, message):
    with pytest.raises(ConfigError, match=message):
        build()
    assert row_counts(store) == dict.fromkeys(TABLES, 0)


def test_a_flag_without_a_layer_gets_its_own_and_never_blocks_the_default_layer(store):
    rollout = store.create(Experiment("rollout", (Variant("v1", 0.5), Variant("v2", 0.5)), kind="flag"))
    assert rollout.layer == "flag:rollout" and rollout.layer_share == (0, 10_000)
    ranker_ = store.create(ranker())  # the whole default layer: no overlap with the flag
    assert ranker_.layer == "default"
    pinned = store.create(Experiment("pinned", (Variant("on", 1.0),), kind="flag", layer="ops"))
    assert pinned.layer == "ops"  # an explicit layer is kept
    assert store.get("rollout").layer == "flag:rollout"
    store.start("rollout")
    store.start("ranker")
    inside = Assigner.from_store(store).assignments(42)
    assert set(inside) == {"rollout", "ranker"}  # independent layers: a unit is in both


@pytest.mark.parametrize("weights, message", [
    ({"control": 0.9, "treatment": 0.2}, r"sum to 1\.1, not 1"),
    ({"control": 1.0}, "missing treatment"),
    ({"control": 0.5, "treatment": 0.25, "extra": 0.25}, "unknown variant.*'extra'"),
    ({"control": "half", "treatment": 0.5}, "must be a finite number"),
    ([0.5, 0.5], "must be a dict"),
])
def test_bad_weights_change_nothing(store, weights, message):
    store.create(ranker())
    before = row_counts(store)
    with pytest.raises(ConfigError, match=message):
        store.set_weights("ranker", weights)
    with pytest.raises(ConfigError, match=message):
        store.record_allocation("ranker", weights, source="thompson")
    assert row_counts(store) == before and store.get("ranker") == ranker()


def test_a_change_whose_audit_row_fails_is_rolled_back_whole(store):
    store.create(ranker())
    before = row_counts(store)
    with pytest.raises(ConfigError, match="reason must be a string"):
        store.set_weights("ranker", {"control": 0.5, "treatment": 0.5}, reason=123)  # fails after the update
    assert store.get("ranker").weights == {"control": 0.9, "treatment": 0.1} and row_counts(store) == before


# -- the package's public names ------------------------------------------------------------

def test_every_public_name_resolves_to_its_module_object_and_scipy_waits_for_first_use():
    import importlib
    import subprocess
    import sys

    import lab.experiments as package
    from lab.experiments import bandit, guardrails, stats
    from tests.conftest import REPO

    for name in package.__all__:
        assert getattr(package, name) is not None, name
    assert package.proportion_test is stats.proportion_test and package.Plan is stats.Plan
    assert package.enforce_guardrails is guardrails.enforce_guardrails
    assert package.BUILTIN_GUARDRAILS is guardrails.BUILTIN_GUARDRAILS
    assert package.ThompsonBandit is bandit.ThompsonBandit and package.stats is stats
    assert {"sample_size_means", "srm_check", "cuped", "sequential_test", "check_guardrails"} <= set(dir(package))
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        package.nope  # noqa: B018
    assert importlib.import_module("lab.experiments") is package
    # The CLI imports lab.experiments on every command; scipy only comes with a name that needs it.
    code = ("import sys, lab.experiments; before = 'scipy' in sys.modules\n"
            "from lab.experiments import mean_test\n"
            "print(before, 'scipy' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.split() == ["False", "True"]


def test_weights_already_served_write_nothing(store):
    store.create(ranker())
    store.start("ranker")
    before, version, state = row_counts(store), store.version(), store.get("ranker")
    assert store.set_weights("ranker", {"treatment": 0.1, "control": 0.9}, reason="again") == state
    assert store.apply_allocation("ranker", {"control": 0.9, "treatment": 0.1}, source="thompson") == state
    assert row_counts(store) == before and store.version() == version
    changed = store.set_weights("ranker", {"control": 0.8, "treatment": 0.2})
    assert changed.weights == {"control": 0.8, "treatment": 0.2}
    assert row_counts(store)["experiment_audit"] == before["experiment_audit"] + 1


@pytest.mark.parametrize("fields, message", [
    ({"baseline": 1.5}, r"baseline of experiment 'ranker' must be a conversion rate strictly between 0 and 1"),
    ({"baseline": 0.0}, "baseline of experiment 'ranker' must be"),
    ({"baseline": -0.3}, "baseline of experiment 'ranker' must be"),
    ({"power": 0.04}, "power of experiment 'ranker' 0.04 is not above alpha of experiment 'ranker' 0.05"),
    ({"mde": 0.5, "baseline": 0.6}, "plans for a rate of 1.1.*lower mde"),
])
def test_an_impossible_plan_is_refused_at_create(store, fields, message):
    with pytest.raises(ConfigError, match=message):
        store.create(ranker(**fields))
    assert row_counts(store) == dict.fromkeys(TABLES, 0)
    store.create(ranker(metric_kind="mean", baseline=42.0, mde=1.0))  # a mean's baseline is any number


def test_a_full_layer_says_there_is_no_free_range(store):
    store.create(ranker())
    with pytest.raises(ConfigError, match="layer 'default' has no free range left") as info:
        store.create(Experiment("other", (Variant("a", 0.5), Variant("b", 0.5))))
    assert "pick one of them" not in str(info.value)
