"""Flags and experiments: sticky hash assignment in layers, stored with an audit log in
the registry file; planning and analysis (``lab.experiments.stats``), platform guardrails
that stop a regressing experiment, and a Thompson-sampling bandit. A core package: no
backend imports.

    from lab.experiments import Assigner, Experiment, ExperimentStore, Variant

    with ExperimentStore.open(config.registry_path) as store:
        store.create(Experiment("new_ranker", (Variant("control", 0.9), Variant("treatment", 0.1))))
        store.start("new_ranker")
        assigner = Assigner.from_store(store)
    assigner.variant("new_ranker", customer_id)      # "control" | "treatment" | None

    from lab.experiments import sample_size_proportions, proportion_test, enforce_guardrails

The statistics, guardrail and bandit names are imported on first use (``__getattr__``):
they need scipy, and every ``lab`` command imports this package, so the CLI does not
pay for scipy unless a command uses it. See docs/experiments.md.
"""

import importlib

from lab.experiments.assignment import (
    Assigner,
    assign,
    bucket_ranges,
    layer_bucket,
    unit_key,
    variant_bucket,
)
from lab.experiments.model import BUCKETS, KINDS, METRIC_KINDS, STATUSES, Experiment, Variant
from lab.experiments.base import BaseExperimentStore
from lab.experiments.store import ExperimentStore

_LAZY: dict[str, str] = {
    **dict.fromkeys((
        "Plan", "sample_size_proportions", "sample_size_means", "mde_proportions", "mde_means",
        "power_proportions", "power_means", "duration_days", "proportion_test", "mean_test", "adjust_pvalues",
        "srm_check", "cuped", "sequential_test", "sequential_proportion_test",
    ), "lab.experiments.stats"),
    **dict.fromkeys((
        "Guardrail", "GuardrailResult", "BUILTIN_GUARDRAILS", "platform_guardrails", "check_guardrails",
        "enforce_guardrails", "guardrail_data_from_ledger",
    ), "lab.experiments.guardrails"),
    "ThompsonBandit": "lab.experiments.bandit",
}
"""Public name -> the module it comes from, imported when the name is first asked for."""


def __getattr__(name: str):
    if name == "stats":
        return importlib.import_module("lab.experiments.stats")
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'lab.experiments' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # the next lookup is an ordinary global
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY) | {"stats"})


__all__ = [
    # model, assignment, store
    "BUCKETS",
    "KINDS",
    "METRIC_KINDS",
    "STATUSES",
    "Assigner",
    "BaseExperimentStore",
    "Experiment",
    "ExperimentStore",
    "Variant",
    "assign",
    "bucket_ranges",
    "layer_bucket",
    "unit_key",
    "variant_bucket",
    # statistics (lab.experiments.stats has more), guardrails, bandit: imported on first use
    "stats",
    *_LAZY,
]
