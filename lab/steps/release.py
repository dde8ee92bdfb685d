"""The register step: a model version with its lineage; promotion when the gate passed."""

from __future__ import annotations

import shutil

from lab import events
from lab.pipeline.context import StageContext
from lab.pipeline.digest import path_digest
from lab.registry import PromotionRefused
from lab.steps._common import CANDIDATE, CANDIDATE_JSON, EVALUATION, REGISTERED, spec_of, views_of


def register(root, run_dir, *, model: str | None = None) -> dict:
    """Copy the candidate to a content-addressed folder, register it with its lineage (run,
    data digests, view versions, code commit, lock hash, gate), record the evaluation as
    the version's offline evidence, point ``challenger`` at it and ``champion`` too when
    it passed the gate and [tool.lab.gate] asks for nothing more (else ``awaiting`` says
    what it waits for: a shadow, online evidence, an approval)."""
    with StageContext.open(root, run_dir) as ctx:
        spec = spec_of(ctx, model)
        info = ctx.read_json(CANDIDATE_JSON)
        evaluation = ctx.read_json(EVALUATION)
        name = spec.name
        digest = path_digest(ctx.path(CANDIDATE))
        # Content-addressed copy: a registered model's files never change under it.
        rel = f"runs/models/{name}/{digest[:16]}"
        target = ctx.path(rel)
        if not target.exists():
            tmp = target.with_name(f".{target.name}.tmp")
            if tmp.exists():
                shutil.rmtree(tmp)
            shutil.copytree(ctx.path(CANDIDATE), tmp)
            tmp.rename(target)
        existing = [v for v in ctx.registry.list_model_versions(name) if v.lineage.get("model_digest") == digest]
        if existing:
            version = existing[-1]
        else:
            run = ctx.registry.get_run(info["run_id"])
            lineage = {
                "model_digest": digest,
                "train_run_id": info["run_id"],
                "pipeline_run_id": ctx.run_dir.name,
                "trainset_digest": info["trainset_digest"],
                "data": run.get("data", {}),
                "feature_views": {v.name: v.version for v in views_of(ctx, spec)},
                "git_commit": run.get("git_commit"),
                "lock_hash": run.get("lock_hash"),
                "gate": evaluation["gate"],
            }
            version = ctx.registry.register_model(
                name, run_id=info["run_id"], flavor=info["flavor"], artifact_path=rel,
                metrics=evaluation["candidate"]["metrics"], lineage=lineage)
            events.emit(ctx.pm, events.MODEL_REGISTERED, model=name, version=version.version)
        challenger = ctx.registry.get_alias(name, "challenger")
        if challenger is None or challenger.version != version.version:
            ctx.registry.set_alias(name, "challenger", version.version, reason="pipeline register stage")
        _record_offline_evidence(ctx.registry, name, version.version, evaluation)
        promoted, awaiting = False, []
        current = ctx.registry.get_alias(name, "champion")
        if evaluation["gate"]["passed"] and (current is None or current.version != version.version):
            try:  # the gate may ask for more than this run can give: a shadow, an approval
                ctx.registry.promote(name, version.version, reason=f"gate passed: {evaluation['gate']['reason']}",
                                     gate=ctx.config.gate)
            except PromotionRefused as refused:
                awaiting = [f"{c.name}: {c.detail}" for c in refused.unmet]
            else:
                events.emit(ctx.pm, events.MODEL_PROMOTED, model=name, version=version.version, alias="champion",
                            previous=current.version if current else None)
                promoted = True
        out = {"model": name, "version": version.version, "promoted": promoted,
               "gate": evaluation["gate"], "artifact_path": rel, "awaiting": awaiting}
        ctx.write_json(REGISTERED, out)
        return out


def _record_offline_evidence(registry, name: str, version: int, evaluation: dict) -> None:
    """The gate's verdict as the version's ``offline`` evidence (with its interval, if
    one was computed); not again when the latest offline evidence says the same."""
    verdict = evaluation["gate"]
    payload = {k: verdict.get(k) for k in ("metric", "min_delta", "passed", "reason", "interval")
               if verdict.get(k) is not None}
    payload["champion_version"] = (evaluation.get("champion") or {}).get("version")
    payload["test_rows"] = evaluation.get("test_rows")
    previous = registry.evidence(name, version, kind="offline")
    if previous and previous[-1]["payload"] == payload:
        return
    registry.record_evidence(name, version, kind="offline", passed=bool(verdict["passed"]),
                             summary=verdict["reason"], payload=payload)
