"""Contract tests for registry backends: subclass ``RegistryContract``, override the
``registry`` fixture, run pytest.

    from lab.testing.registry import RegistryContract

    class TestMyRegistry(RegistryContract):
        @pytest.fixture
        def registry(self, tmp_path):
            reg = MyRegistry.open("...", project_root=tmp_path)
            yield reg
            reg.close()

The fixture must give a fresh, empty registry for each test. The suite checks what the
platform relies on (``lab.registry.BaseRegistry``): runs, metrics, datasets, trials, model
versions counting up per name, aliases whose history is append-only, rollback walking
back, "what was live at a moment", shadows, approvals and evidence gating a promotion,
drift, stage records and the audit log; and that a refused call writes nothing.
``tamper(registry, sql)`` (override it for a backend that is not the built-in one)
runs raw SQL on the backend, to show that history cannot be rewritten.
"""

from __future__ import annotations

import datetime as dt
import math

import pytest

from lab.config import GateConfig
from lab.errors import ConfigError, LabError, NotFound
from lab.registry import BaseRegistry, PromotionRefused

__all__ = ["RegistryContract", "register"]


def register(reg, name: str = "churn", run_id: str | None = None, ap: float = 0.5):
    """Register one version of ``name`` (a test helper; returns the ``ModelVersion``)."""
    return reg.register_model(name, run_id=run_id, flavor="tabular_mlp", artifact_path=f"runs/models/{name}",
                              metrics={"average_precision": ap}, lineage={})


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="microseconds")


class RegistryContract:
    """What every registry backend must do, tested through ``BaseRegistry``'s methods."""

    @pytest.fixture
    def registry(self):
        raise NotImplementedError("override the `registry` fixture: return a fresh, empty registry")

    def tamper(self, registry, sql: str) -> None:
        """Run ``sql`` on the backend directly (the built-in backends' connection)."""
        with registry._db.write() as db:
            db.execute(sql)

    def snapshot(self, reg) -> tuple:
        """What a refused call must leave unchanged: the audit log and the alias history."""
        return (len(reg.events(limit=10_000)), [len(reg.alias_history(m["name"])) for m in reg.list_models()])

    # -- runs -------------------------------------------------------------------------------

    def test_is_a_base_registry(self, registry):
        assert isinstance(registry, BaseRegistry)

    def test_run_round_trip(self, registry):
        reg = registry
        parent = reg.start_run(kind="pipeline")
        run_id = reg.start_run(kind="train", params={"lr": 0.001, "layers": [64, 32]}, seeds={"torch": 7},
                               parent_run_id=parent, name="nightly")
        reg.log_params(run_id, {"batch_size": 256, "lr": 0.01})
        reg.log_metrics(run_id, {"loss": 0.9, "ap": 0.3}, step=1)
        reg.log_metrics(run_id, {"loss": 0.4, "nan": math.nan}, step=2)
        reg.log_artifact(run_id, "model", "runs/x/model.pt")
        reg.log_data(run_id, "training_set", "sha256:abc")
        reg.finish_run(run_id)
        run = reg.get_run(run_id)
        assert run["kind"] == "train" and run["name"] == "nightly" and run["parent_run_id"] == parent
        assert run["params"] == {"lr": 0.01, "layers": [64, 32], "batch_size": 256}
        assert run["metrics"]["loss"] == 0.4 and run["metrics"]["ap"] == 0.3 and math.isnan(run["metrics"]["nan"])
        assert run["artifacts"] == {"model": "runs/x/model.pt"} and run["data"] == {"training_set": "sha256:abc"}
        assert run["seeds"] == {"torch": 7}
        assert run["status"] == "finished" and run["finished_at"] >= run["started_at"]
        assert run["env"]["python"]
        assert [(m["value"], m["step"]) for m in reg.metric_history(run_id, "loss")] == [(0.9, 1), (0.4, 2)]
        assert [e["kind"] for e in reg.events()] == ["run.started", "run.started", "run.finished"]

    def test_unknown_run_is_not_found_and_says_how_to_list_runs(self, registry):
        with pytest.raises(NotFound, match="lab runs"):
            registry.get_run("nope")
        with pytest.raises(NotFound, match="lab runs"):
            registry.log_metrics("nope", {"loss": 1.0})
        with pytest.raises(NotFound):
            registry.start_run(kind="train", parent_run_id="nope")
        assert registry.list_runs() == [] and registry.events() == []

    def test_bad_values_are_refused_before_anything_is_written(self, registry):
        run_id = registry.start_run(kind="train")
        before = self.snapshot(registry)
        with pytest.raises(LabError, match="metric 'ap' must be a number"):
            registry.log_metrics(run_id, {"loss": 0.1, "ap": "high"})
        with pytest.raises(LabError, match="JSON"):
            registry.log_params(run_id, {"ok": 1, "fn": object()})
        with pytest.raises(ConfigError, match="finished, failed, killed"):
            registry.finish_run(run_id, "done")
        assert self.snapshot(registry) == before
        run = registry.get_run(run_id)
        assert run["metrics"] == {} and run["params"] == {} and run["status"] == "running"

    def test_a_run_ends_once_and_a_failed_one_resumes(self, registry):
        run_id = registry.start_run(kind="train")
        registry.finish_run(run_id, "failed")
        registry.finish_run(run_id, "failed")  # same status again: a no-op
        with pytest.raises(LabError, match="already ended as 'failed'"):
            registry.finish_run(run_id, "finished")
        registry.resume_run(run_id)
        assert registry.get_run(run_id)["status"] == "running" and registry.get_run(run_id)["finished_at"] is None

    def test_list_runs_newest_first_by_kind_with_limit(self, registry):
        ids = [registry.start_run(kind=kind) for kind in ("train", "pipeline", "train", "train")]
        assert [r["id"] for r in registry.list_runs()] == ids[::-1]
        assert [r["id"] for r in registry.list_runs(kind="train", limit=2)] == [ids[3], ids[2]]
        with pytest.raises(ConfigError):
            registry.list_runs(limit=0)

    # -- datasets, trials -------------------------------------------------------------------

    def test_datasets_by_digest_and_recording_twice_is_idempotent(self, registry):
        first = registry.record_dataset(kind="training_set", name="t", digest="d1", path="data/t.parquet",
                                        rows=100, meta={"window": "7d"})
        again = registry.record_dataset(kind="training_set", name="t", digest="d1", path="data/t.parquet", rows=100)
        assert again == first
        assert registry.get_dataset("d1")["meta"] == {"window": "7d"} and registry.get_dataset("d1")["rows"] == 100
        assert registry.get_dataset("unknown") is None
        second = registry.record_dataset(kind="raw", name="r", digest="d2", path="data/r.parquet", rows=5)
        assert [d["id"] for d in registry.list_datasets()] == [second, first]
        assert [d["digest"] for d in registry.list_datasets(kind="raw")] == ["d2"]

    def test_trials_upsert_on_run_and_number(self, registry):
        run_id = registry.start_run(kind="sweep")
        registry.record_trial(run_id, number=0, params={"lr": 0.1}, value=None, state="RUNNING")
        registry.record_trial(run_id, number=1, params={"lr": 0.2}, value=0.4, state="COMPLETE")
        registry.record_trial(run_id, number=0, params={"lr": 0.1}, value=0.6, state="COMPLETE")
        trials = registry.list_trials(run_id)
        assert [(t["number"], t["value"], t["state"]) for t in trials] == [(0, 0.6, "COMPLETE"), (1, 0.4, "COMPLETE")]
        assert trials[0]["params"] == {"lr": 0.1}

    # -- versions ---------------------------------------------------------------------------

    def test_versions_count_up_per_model_name(self, registry):
        run_id = registry.start_run(kind="train")
        assert [register(registry, "churn", run_id).version for _ in range(3)] == [1, 2, 3]
        assert register(registry, "spam").version == 1
        assert registry.get_model_version("churn", 2).run_id == run_id
        assert registry.list_model_versions("nobody") == []
        with pytest.raises(NotFound, match="lab runs"):
            register(registry, "churn", run_id="missing-run")
        assert [v.version for v in registry.list_model_versions("churn")] == [1, 2, 3]

    def test_models_are_listed_by_name_byte_wise(self, registry):
        for name in ("beta", "alpha", "Alpha", "a-b", "a_b"):
            register(registry, name)
        assert [m["name"] for m in registry.list_models()] == sorted(["beta", "alpha", "Alpha", "a-b", "a_b"])
        assert registry.list_models()[0]["versions"] == 1 and registry.list_models()[0]["latest"] == 1

    def test_unknown_model_or_version_names_what_exists(self, registry):
        with pytest.raises(NotFound, match="no model is registered yet"):
            registry.get_model_version("churn", 1)
        register(registry)
        register(registry)
        with pytest.raises(NotFound, match=r"no version 9; its versions are 1, 2 \(see `lab models churn`\)"):
            registry.get_model_version("churn", 9)
        with pytest.raises(NotFound, match="registered models: churn"):
            registry.get_model_version("chrn", 1)

    # -- aliases ----------------------------------------------------------------------------

    def test_promote_and_set_alias_append_history_that_cannot_be_changed(self, registry):
        reg = registry
        for _ in range(3):
            register(reg)
        first = reg.promote("churn", 1, actor="ci", reason="first model")
        assert first["from_version"] is None and first["to_version"] == 1 and first["action"] == "promote"
        reg.set_alias("churn", "challenger", 3)
        second = reg.promote("churn", 2, reason="gate passed")
        assert second["from_version"] == 1
        assert reg.get_alias("churn", "champion").version == 2 and reg.get_alias("churn", "challenger").version == 3
        assert reg.get_alias("churn", "shadow") is None and reg.get_alias("nobody", "champion") is None
        assert reg.aliases("churn") == {"challenger": 3, "champion": 2}
        history = reg.alias_history("churn", "champion")
        assert [(e["action"], e["from_version"], e["to_version"], e["actor"], e["reason"]) for e in history] == [
            ("promote", None, 1, "ci", "first model"), ("promote", 1, 2, history[1]["actor"], "gate passed")]
        assert set(history[0]) == {"id", "model", "alias", "action", "from_version", "to_version", "actor",
                                   "reason", "at", "evidence"}
        for table in ("alias_events", "events"):  # (row triggers: a table needs rows to refuse)
            for sql in (f"UPDATE {table} SET actor = 'mallory'", f"DELETE FROM {table}"):
                with pytest.raises(Exception, match="append-only"):
                    self.tamper(reg, sql)
        assert len(reg.alias_history("churn")) == 3

    def test_promoting_a_missing_version_writes_nothing(self, registry):
        register(registry)
        registry.promote("churn", 1)
        before = self.snapshot(registry)
        with pytest.raises(NotFound, match="its versions are 1"):
            registry.promote("churn", 5)
        with pytest.raises(NotFound, match="registered models: churn"):
            registry.promote("chrn", 1)
        with pytest.raises(ConfigError, match="not a valid name"):
            registry.promote("churn", 1, alias="bad alias")
        assert self.snapshot(registry) == before
        assert registry.get_alias("churn", "champion").version == 1

    def test_rollback_walks_back_and_stops_with_a_clear_error(self, registry):
        reg = registry
        for version in (1, 2, 3):
            register(reg)
            reg.promote("churn", version)
        event = reg.rollback("churn", actor="oncall", reason="bad canary")
        assert event == reg.alias_history("churn", "champion")[-1]
        assert (event["from_version"], event["to_version"], event["actor"]) == (3, 2, "oncall")
        assert reg.rollback("churn")["to_version"] == 1  # walks back, does not flip to 3
        before = self.snapshot(reg)
        with pytest.raises(LabError, match="nothing to roll back to") as caught:
            reg.rollback("churn")
        assert "lab promote churn VERSION" in str(caught.value)
        assert self.snapshot(reg) == before
        reg.promote("churn", 3)
        assert reg.rollback("churn")["to_version"] == 1
        actions = [(e["action"], e["from_version"], e["to_version"]) for e in reg.alias_history("churn", "champion")]
        assert actions[3:] == [("rollback", 3, 2), ("rollback", 2, 1), ("promote", 1, 3), ("rollback", 3, 1)]

    def test_moving_an_alias_to_where_it_already_points_writes_nothing(self, registry):
        register(registry)
        register(registry)
        registry.promote("churn", 1)
        registry.set_alias("churn", "challenger", 2)
        before = self.snapshot(registry)
        assert registry.promote("churn", 1, reason="again") is None
        assert registry.set_alias("churn", "challenger", 2) is None
        assert self.snapshot(registry) == before
        registry.promote("churn", 2)  # a version that held the alias earlier (not now) is a real move
        assert registry.promote("churn", 1)["from_version"] == 2

    def test_alias_at_answers_what_was_live_at_a_moment(self, registry):
        register(registry)
        register(registry)
        before_any = _now()
        registry.promote("churn", 1)
        between = _now()
        registry.promote("churn", 2)
        registry.rollback("churn")
        assert registry.alias_at("churn", "champion", before_any) is None
        assert registry.alias_at("churn", "champion", between).version == 1
        assert registry.alias_at("churn", "champion", dt.datetime.fromisoformat(between)).version == 1
        assert registry.alias_at("churn", "champion", registry.alias_history("churn")[1]["at"]).version == 2
        assert registry.alias_at("churn", "champion", dt.datetime.now(dt.timezone.utc)).version == 1
        assert registry.alias_at("churn", "champion", "2000-01-01") is None
        today = dt.datetime.now(dt.timezone.utc).date()
        assert registry.alias_at("churn", "champion", today).version == 1  # a date means its end
        with pytest.raises(LabError, match="ISO 8601"):
            registry.alias_at("churn", "champion", "yesterday")

    def test_lineage_walks_version_run_data_and_datasets(self, registry):
        registry.record_dataset(kind="training_set", name="train", digest="d-train", path="data/t.parquet", rows=900)
        registry.record_dataset(kind="raw", name="events", digest="d-raw", path="data/ev.parquet", rows=5000)
        run_id = registry.start_run(kind="train", params={"lr": 0.01})
        registry.log_data(run_id, "training_set", "d-train")
        mv = registry.register_model("churn", run_id=run_id, flavor="tabular_mlp", artifact_path="runs/models/c/1",
                                     metrics={}, lineage={"sources": {"raw": "d-raw"}, "note": "not a digest"})
        registry.promote("churn", mv.version)
        walk = registry.lineage("churn", mv.version)
        assert walk["model"]["artifact_path"] == "runs/models/c/1"
        assert walk["aliases"] == ["champion"] and walk["run"]["id"] == run_id and "git_commit" in walk["run"]
        assert [(d["name"], d["digest"]) for d in walk["data"]] == [("run.training_set", "d-train"),
                                                                  ("lineage.sources.raw", "d-raw")]
        assert walk["data"][0]["datasets"][0]["rows"] == 900
        assert walk["data"][1]["datasets"][0]["path"] == "data/ev.parquet"
        with pytest.raises(NotFound, match="its versions are 1"):
            registry.lineage("churn", 2)

    # -- shadows, approvals, evidence: the promotion gate -------------------------------------

    def test_the_gate_refuses_until_approved_and_a_forced_promotion_says_so(self, registry):
        gate = GateConfig(require_approval=True, separate_approver=True)
        register(registry)
        register(registry)
        registry.promote("churn", 1, reason="first")
        before = self.snapshot(registry)
        with pytest.raises(PromotionRefused, match="v2 has no approval"):
            registry.promote("churn", 2, gate=gate, actor="alice")
        assert self.snapshot(registry) == before
        registry.approve("churn", 2, approver="alice", actor="alice")
        with pytest.raises(PromotionRefused, match="approved only by alice"):
            registry.promote("churn", 2, gate=gate, actor="alice")
        approval = registry.approve("churn", 2, approver="bob", note="looks fine", actor="bob")
        event = registry.promote("churn", 2, gate=gate, actor="alice")
        assert event["evidence"]["forced"] is False
        assert [c["name"] for c in event["evidence"]["criteria"]] == ["approval"]
        assert f"approval:{approval['id']}" in event["evidence"]["criteria"][0]["refs"]
        register(registry)
        with pytest.raises(ConfigError, match="needs a reason"):
            registry.promote("churn", 3, gate=gate, force=True)
        forced = registry.promote("churn", 3, gate=gate, force=True, reason="hotfix")
        assert forced["evidence"]["forced"] is True and forced["evidence"]["overridden"] == ["approval"]
        assert [a["approver"] for a in registry.approvals("churn", 2)] == ["alice", "bob"]

    def test_shadows_and_evidence(self, registry):
        for _ in range(2):
            register(registry)
        with pytest.raises(LabError, match="no champion to shadow against"):
            registry.start_shadow("churn", 2, {"min_requests": 10})
        registry.promote("churn", 1)
        shadow = registry.start_shadow("churn", 2, {"min_requests": 10}, reason="try it")
        assert shadow["status"] == "running" and shadow["champion_version"] == 1
        assert registry.active_shadow("churn")["id"] == shadow["id"]
        with pytest.raises(LabError, match="already shadows v2"):
            registry.start_shadow("churn", 2, {})
        met = registry.end_shadow("churn", shadow["id"], "met", report={"summary": "12 requests"})
        assert met["met"] is True and registry.end_shadow("churn", shadow["id"], "met") is None
        shadow_evidence = registry.evidence("churn", 2, kind="shadow")
        assert len(shadow_evidence) == 1 and shadow_evidence[0]["passed"] is True
        registry.record_evidence("churn", 2, kind="offline", passed=False, summary="CI below 0", payload={"lo": -1})
        assert [(e["kind"], e["passed"]) for e in registry.evidence("churn", 2)] == [("shadow", True),
                                                                                     ("offline", False)]
        gate = GateConfig(require_online="shadow")
        event = registry.promote("churn", 2, gate=gate)
        assert event["evidence"]["forced"] is False
        assert registry.active_shadow("churn") is None  # the promoted version's shadow stops
        kinds = [h["kind"] for h in registry.model_history("churn")]
        assert kinds.count("alias") == 2 and kinds.count("shadow") == 3 and kinds.count("evidence") == 2

    # -- drift, stages, events, hooks ---------------------------------------------------------

    def test_drift_rows_per_column(self, registry):
        run_id = registry.start_run(kind="pipeline")
        registry.record_drift(run_id, model_name="churn", model_version=1, reference="train", current="week 2",
                              scores={"amount": {"score": 0.01, "drifted": True, "method": "ks"},
                                      "hour": {"score": 0.6, "drifted": False, "method": "ks"}})
        rows = registry.list_drift(run_id=run_id)
        assert [(r["column"], r["drifted"], r["score"]) for r in rows] == [("amount", True, 0.01), ("hour", False, 0.6)]
        assert registry.events("drift.recorded")[0]["payload"]["drifted"] == ["amount"]
        with pytest.raises(ConfigError, match="score, drifted and method"):
            registry.record_drift(run_id, model_name="churn", model_version=1, reference="a", current="b",
                                  scores={"amount": 0.3})

    def test_stage_cache_finds_the_latest_finished_record(self, registry):
        first = registry.start_run(kind="pipeline")
        registry.record_stage(first, "train", status="running", attempt=1, cache_key="k1", output_notebook="a.ipynb")
        registry.record_stage(first, "train", status="failed", attempt=1, cache_key="k1", output_notebook="a.ipynb",
                              error="no GPU")
        assert registry.find_stage_cache("train", "k1") is None
        registry.record_stage(first, "train", status="finished", attempt=2, cache_key="k1", output_notebook="a.ipynb",
                              outputs={"model": "runs/m"}, output_digests={"runs/m": "sha256:1"})
        second = registry.start_run(kind="pipeline")
        registry.record_stage(second, "train", status="finished", attempt=1, cache_key="k1",
                              output_notebook="b.ipynb", outputs={"model": "runs/m2"})
        hit = registry.find_stage_cache("train", "k1")
        assert hit["pipeline_run_id"] == second and hit["outputs"] == {"model": "runs/m2"}
        assert registry.last_finished_stage("train")["output_notebook"] == "b.ipynb"
        assert [(s["status"], s["attempt"]) for s in registry.stage_history(first)] == [
            ("running", 1), ("failed", 1), ("finished", 2)]
        assert registry.stage_history(first)[-1]["output_digests"] == {"runs/m": "sha256:1"}
        last = registry.last_pipeline_run()
        assert last["id"] == second and [s["output_notebook"] for s in last["stages"]] == ["b.ipynb"]
        assert registry.find_stage_cache("train", "k2") is None and registry.find_stage_cache("features", "k1") is None
        with pytest.raises(ConfigError, match="running, finished, failed, skipped"):
            registry.record_stage(first, "train", status="done", attempt=1, cache_key="k1", output_notebook=None)
        with pytest.raises(NotFound):
            registry.record_stage("nope", "train", status="running", attempt=1, cache_key="k1", output_notebook=None)

    def test_audit_events_keep_actor_and_time_and_list_latest(self, registry, monkeypatch):
        monkeypatch.setenv("LAB_ACTOR", "ci-bot")
        for i in range(5):
            registry.append_event("flag.changed", "new_ui", {"on": i % 2 == 0})
        registry.append_event("approval", "churn", {"version": 1}, actor="alice")
        latest = registry.events(limit=3)
        assert [e["kind"] for e in latest] == ["flag.changed", "flag.changed", "approval"]
        assert latest[-1]["actor"] == "alice" and latest[0]["actor"] == "ci-bot" and latest[0]["at"]
        assert [e["payload"]["on"] for e in registry.events("flag.changed")] == [True, False, True, False, True]
