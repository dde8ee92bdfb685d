"""The model registry and tracking store: one SQLite file (``registry.db``) holding runs,
datasets, sweep trials, model versions, aliases with their append-only history, shadows,
approvals and promotion evidence, drift scores, pipeline stage records and the audit log.

    from lab.registry import Registry

    with Registry.open(config.registry_path, project_root=config.root) as reg:
        run_id = reg.start_run(kind="train", params={"lr": 1e-3})
        ...
        mv = reg.register_model("churn", run_id=run_id, flavor="tabular_mlp",
                                artifact_path="runs/.../model.pt", metrics={...}, lineage={...})
        reg.promote("churn", mv.version, reason="beat the champion")

``BaseRegistry`` is the contract a backend implements; ``Registry`` is the built-in
SQLite one, over ``lab.sqlite`` (its schema: ``MIGRATIONS``, owner ``registry``).

See docs/registry.md.
"""

from lab.registry._migrations import MIGRATIONS
from lab.registry._models import ModelVersion
from lab.registry._pipeline import STAGE_STATUSES
from lab.registry._promotion import EVIDENCE_KINDS, ONLINE_REQUIREMENTS, Criterion, PromotionRefused
from lab.registry._store import RUN_STATUSES, EventHook, Registry
from lab.registry.base import BaseRegistry

__all__ = [
    "MIGRATIONS",
    "BaseRegistry",
    "Criterion",
    "EVIDENCE_KINDS",
    "ONLINE_REQUIREMENTS",
    "PromotionRefused",
    "RUN_STATUSES",
    "STAGE_STATUSES",
    "EventHook",
    "ModelVersion",
    "Registry",
]
