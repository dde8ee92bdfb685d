"""Flags and experiments: sticky hash assignment in layers, stored with an audit log in
the registry file, and (from the other modules) planning, analysis, guardrails and
bandits. A core package: no backend imports.

    from lab.experiments import Assigner, Experiment, ExperimentStore, Variant

    with ExperimentStore.open(config.registry_path) as store:
        store.create(Experiment("new_ranker", (Variant("control", 0.9), Variant("treatment", 0.1))))
        store.start("new_ranker")
        assigner = Assigner.from_store(store)
    assigner.variant("new_ranker", customer_id)      # "control" | "treatment" | None

See docs/experiments.md.
"""

from lab.experiments.assignment import (
    Assigner,
    assign,
    bucket_ranges,
    layer_bucket,
    unit_key,
    variant_bucket,
)
from lab.experiments.model import BUCKETS, KINDS, METRIC_KINDS, STATUSES, Experiment, Variant
from lab.experiments.store import ExperimentStore

# -- names from lab.experiments.stats, bandit and guardrails: the lead adds them here --

__all__ = [
    # exp-core: model, assignment, store
    "BUCKETS",
    "KINDS",
    "METRIC_KINDS",
    "STATUSES",
    "Assigner",
    "Experiment",
    "ExperimentStore",
    "Variant",
    "assign",
    "bucket_ranges",
    "layer_bucket",
    "unit_key",
    "variant_bucket",
    # -- stats, bandit, guardrails: the lead adds their names here --
]
