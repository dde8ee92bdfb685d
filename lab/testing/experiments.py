"""Contract tests for experiment-store backends: subclass ``ExperimentStoreContract``,
override the ``open_store`` fixture, run pytest.

    from lab.testing.experiments import ExperimentStoreContract

    class TestMyStore(ExperimentStoreContract):
        @pytest.fixture
        def open_store(self, tmp_path):
            return lambda: MyStore.open(tmp_path / "flags")   # a fresh, empty store per test

``open_store()`` opens the test's store (called again, it opens the same store anew: the
reopening tests need that). The suite checks what the platform relies on
(``lab.experiments.BaseExperimentStore``): round trips, sticky assignment after a reopen,
the life cycle, an audit row with actor, old and new value for every change, allocations,
``version()``, and that a refused change writes nothing. ``tamper(store, sql)`` (override
it for a backend that is not built in) runs raw SQL, to show the history is append-only.
"""

from __future__ import annotations

import pytest

from lab.errors import ConfigError, LabError, NotFound
from lab.experiments import Assigner, BaseExperimentStore, Experiment, Variant, assign

__all__ = ["ExperimentStoreContract", "ranker"]

V2 = (Variant("control", 0.5), Variant("treatment", 0.5))


def ranker(**fields) -> Experiment:
    """A two-variant experiment, 90/10 (a test helper)."""
    return Experiment("ranker", (Variant("control", 0.9), Variant("treatment", 0.1, {"model_version": 2})),
                      **fields)


class ExperimentStoreContract:
    """What every experiment store must do, tested through ``BaseExperimentStore``."""

    @pytest.fixture
    def open_store(self):
        raise NotImplementedError("override the `open_store` fixture: a callable opening a fresh, empty store")

    @pytest.fixture
    def store(self, open_store, monkeypatch):
        monkeypatch.setenv("LAB_ACTOR", "tester")
        s = open_store()
        yield s
        s.close()

    def tamper(self, store, sql: str) -> None:
        """Run ``sql`` on the backend directly (the built-in backends' connection)."""
        with store._db.write() as db:
            db.execute(sql)

    @staticmethod
    def snapshot(store) -> tuple:
        """What a refused change must leave as it was: every experiment, audit row and allocation."""
        experiments = store.list()
        return (experiments, len(store.audit()), [len(store.allocations(e.name)) for e in experiments])

    def test_created_experiment_reads_back_equal_after_reopening(self, store, open_store):
        e = ranker(layer="search", layer_share=(0, 5000), unit="CUSTOMER_ID", metric="ctr", metric_kind="mean",
                   alpha=0.01, power=0.9, mde=0.02, baseline=0.1)
        assert isinstance(store, BaseExperimentStore)
        assert store.create(e) == e
        assert store.get("ranker") == e
        with open_store() as again:
            assert again.list() == [e]
            assert again.list(layer="search") == [e] and again.list(layer="other") == []

    def test_assignment_is_sticky_and_weights_move_few_units_across_reopening(self, store, open_store):
        store.create(ranker())
        store.start("ranker")
        before = Assigner.from_store(store)
        store.set_weights("ranker", {"control": 0.8, "treatment": 0.2})
        with open_store() as again:
            assert again.get("ranker").buckets == {"control": ((1000, 9000),),
                                                   "treatment": ((0, 1000), (9000, 10000))}
            after = Assigner.from_store(again)
        moved = {(before.variant("ranker", u), after.variant("ranker", u)) for u in range(20_000)}
        assert moved == {("control", "control"), ("treatment", "treatment"), ("control", "treatment")}

    def test_every_change_writes_an_audit_row_with_actor_old_and_new(self, store):
        store.create(ranker(), reason="new ranker")
        store.start("ranker", actor="alice")
        store.set_weights("ranker", {"control": 0.8, "treatment": 0.2}, reason="ramp")
        store.record_allocation("ranker", {"control": 0.5, "treatment": 0.5}, source="thompson")
        store.stop("ranker", reason="shipped")
        rows = store.audit("ranker")
        assert [r["action"] for r in rows] == ["create", "start", "set_weights", "record_allocation", "stop"]
        assert [r["actor"] for r in rows] == ["tester", "alice", "tester", "tester", "tester"]
        assert [r["reason"] for r in rows] == ["new ranker", "", "ramp", "", "shipped"]
        create, start, ramp, allocation, stop = rows
        assert create["old"] is None and create["new"] == ranker().to_dict()
        assert start["old"] == {"status": "draft"} and start["new"]["status"] == "running"
        assert ramp["old"] == {"control": 0.9, "treatment": 0.1} and ramp["new"] == {"control": 0.8, "treatment": 0.2}
        assert allocation["old"] is None and allocation["new"]["source"] == "thompson"
        assert stop["old"] == {"status": "running", "weights": {"control": 0.8, "treatment": 0.2}}
        assert stop["new"] == {"status": "stopped", "weights": {"control": 1.0, "treatment": 0.0}}
        assert all(r["at"] for r in rows) and [r["id"] for r in rows] == sorted(r["id"] for r in rows)
        assert store.audit() == rows

    def test_stopped_is_final_and_illegal_transitions_write_nothing(self, store):
        store.create(ranker())
        store.start("ranker")
        with pytest.raises(LabError, match="experiment 'ranker' is running; only a draft can be started"):
            store.start("ranker")
        stopped = store.stop("ranker")
        assert stopped.weights == {"control": 1.0, "treatment": 0.0}
        assert {assign(store.get("ranker"), u) for u in range(500)} == {"control"}
        before = self.snapshot(store)
        with pytest.raises(LabError, match="only a draft can be started; create a new one"):
            store.start("ranker")
        with pytest.raises(LabError, match="already stopped"):
            store.stop("ranker")
        with pytest.raises(LabError, match="weights are final"):
            store.set_weights("ranker", {"control": 0.5, "treatment": 0.5})
        with pytest.raises(LabError, match="weights are final"):
            store.apply_allocation("ranker", {"control": 0.5, "treatment": 0.5}, source="thompson")
        assert self.snapshot(store) == before

    def test_version_grows_with_every_change_and_not_on_failures(self, store):
        assert store.version() == 0
        seen = [0]
        store.create(ranker())
        seen.append(store.version())
        assigner = Assigner.from_store(store)
        store.start("ranker")
        seen.append(store.version())
        assert assigner.is_stale(store) and not Assigner.from_store(store).is_stale(store)
        with pytest.raises(ConfigError):
            store.set_weights("ranker", {"control": 0.9, "treatment": 0.2})
        assert store.version() == seen[-1]
        assert store.set_weights("ranker", {"treatment": 0.1, "control": 0.9}) == store.get("ranker")  # no change
        assert store.version() == seen[-1]
        store.set_weights("ranker", {"control": 0.5, "treatment": 0.5})
        seen.append(store.version())
        assert seen == sorted(set(seen))

    def test_audit_and_allocation_history_are_append_only(self, store):
        store.create(ranker())
        store.record_allocation("ranker", {"control": 0.6, "treatment": 0.4}, source="thompson")
        for sql in ("UPDATE experiment_audit SET actor = 'mallory'", "DELETE FROM experiment_audit",
                    "UPDATE experiment_allocations SET source = 'x'", "DELETE FROM experiment_allocations"):
            with pytest.raises(Exception, match="append-only"):
                self.tamper(store, sql)
        assert len(store.audit()) == 2 and len(store.allocations("ranker")) == 1

    def test_allocations_recorded_in_order_and_applied_with_their_audit_row(self, store):
        store.create(ranker())
        store.record_allocation("ranker", {"control": 0.6, "treatment": 0.4}, source="thompson")
        store.record_allocation("ranker", {"control": 0.3, "treatment": 0.7}, source="thompson", actor="bandit")
        assert [h["weights"] for h in store.allocations("ranker")] == [{"control": 0.6, "treatment": 0.4},
                                                                       {"control": 0.3, "treatment": 0.7}]
        assert store.get("ranker").weights == {"control": 0.9, "treatment": 0.1}  # recorded, not served
        store.start("ranker")
        served = store.apply_allocation("ranker", {"control": 0.6, "treatment": 0.4}, source="thompson",
                                        actor="bandit")
        assert served == store.get("ranker") and served.weights == {"control": 0.6, "treatment": 0.4}
        audit = store.audit("ranker")[-1]
        assert (audit["action"], audit["actor"], audit["reason"]) == ("set_weights", "bandit", "thompson allocation")
        assert store.allocations("ranker")[-1]["weights"] == served.weights
        before = self.snapshot(store)
        with pytest.raises(ConfigError, match="reason must be a string"):  # fails after the update: rolled back
            store.apply_allocation("ranker", {"control": 0.5, "treatment": 0.5}, source="t", reason=7)
        with pytest.raises(ConfigError, match=r"sum to 1\.2"):
            store.apply_allocation("ranker", {"control": 0.6, "treatment": 0.6}, source="t")
        assert self.snapshot(store) == before

    def test_create_refuses_taken_names_non_drafts_and_overlapping_layer_shares(self, store):
        store.create(ranker(layer="search", layer_share=(2000, 6000)))
        before = self.snapshot(store)
        with pytest.raises(LabError, match="already exists"):
            store.create(ranker())
        with pytest.raises(ConfigError, match="as a draft"):
            store.create(Experiment("other", V2, status="running"))
        with pytest.raises(ConfigError, match=r"overlaps 'ranker' \(2000-6000\) in layer 'search'.*"
                                              r"Free ranges of layer 'search': 0-2000, 6000-10000"):
            store.create(Experiment("other", V2, layer="search", layer_share=(5000, 10000)))
        assert self.snapshot(store) == before
        store.create(Experiment("other", V2, layer="search", layer_share=(6000, 10000)))
        store.stop("ranker")
        store.create(Experiment("third", V2, layer="search", layer_share=(0, 6000)))  # stopped gave its share back
        assert [e.name for e in store.list()] == ["other", "ranker", "third"]

    def test_an_unknown_experiment_is_not_found_and_names_the_status_command(self, store):
        calls = [
            lambda: store.get("nope"), lambda: store.start("nope"), lambda: store.stop("nope"),
            lambda: store.set_weights("nope", {"control": 1.0}), lambda: store.audit("nope"),
            lambda: store.allocations("nope"), lambda: store.record_allocation("nope", {"a": 1.0}, source="x"),
        ]
        for call in calls:
            with pytest.raises(NotFound, match=r"no experiment or flag 'nope' .*`lab experiment status`"):
                call()
        assert store.list() == [] and store.audit() == []
