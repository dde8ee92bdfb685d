"""Promotion on evidence: the shadow report step, an experiment's decision as evidence,
and ``lab promote`` checking both fresh before the registry's gate.

The registry decides from what it holds (``Registry.promotion_criteria``): shadows,
evidence rows and approvals. What lives elsewhere is brought in first, here, where every
layer can be reached: a running shadow is checked against the ledger now (a met one is
recorded, so it counts at once), and ``--experiment NAME --outcomes FILE`` asks the
experiments package whether the experiment is decided and the version won.
"""

from __future__ import annotations

import argparse
from typing import Any

from typing import TYPE_CHECKING

from lab.errors import LabError
from lab.pipeline.context import StageContext
from lab.registry import Registry
from lab.steps._common import spec_of

if TYPE_CHECKING:  # pragma: no cover
    from lab.cli import Context
    from lab.experiments import ExperimentStore

# Every stage imports lab.steps, and a stage's cache key holds the code it imported: the
# CLI, the experiments package and the server's modules are imported below only where used.

SHADOW_REPORT = "data/shadow_report.json"


def shadow_report(root, run_dir, *, model: str | None = None, shadow_id: int | None = None) -> dict:
    """The agreement report of the model's shadow (default: its latest), written to
    ``data/shadow_report.json``; records ``met`` or ``expired`` as ``lab shadow report``
    does. For a notebook stage (``report["text"]`` prints it for a terminal)."""
    from lab.serving.shadow_report import check_shadow, report_text  # lab.serving loads numpy

    with StageContext.open(root, run_dir) as ctx:
        spec = spec_of(ctx, model)
        report = check_shadow(ctx.config, ctx.pm, spec.name, shadow_id=shadow_id, actor="lab shadow report")
        report["text"] = report_text(report)
        ctx.write_json(SHADOW_REPORT, report)
        return report


def _variant_of(store: "ExperimentStore", experiment: str, version: int) -> tuple[str, str]:
    """The experiment's variant serving ``version`` (payload ``model_version``) and its control."""
    found = store.get(experiment)
    names = [v.name for v in found.variants if (v.payload or {}).get("model_version") == version]
    if not names:
        raise LabError(f"experiment {experiment!r} has no variant serving v{version} (a variant's payload "
                       f"{{\"model_version\": {version}}}); its variants: "
                       + ", ".join(f"{v.name} {v.payload or {}}" for v in found.variants))
    control = found.variants[0].name
    if names[0] == control:
        raise LabError(f"v{version} is experiment {experiment!r}'s control ({control}); it is what the "
                       "others are compared against, not a challenger")
    return names[0], control


def experiment_evidence(config, pm, model: str, version: int, experiment: str, outcomes: Any, *,
                        higher_is_better: bool = True, looks: int = 20) -> dict:
    """Record, as ``experiment`` evidence for ``version``, whether ``experiment`` is decided
    with the challenger winning: the experiments package's decision (fixed-horizon at the
    planned sample, else the always-valid sequential test) is significant, the effect is
    in the better direction, no sample-ratio mismatch and no guardrail breached."""
    from lab.experiments import ExperimentStore
    from lab.experiments.report import experiment_results  # numpy and scipy load only when asked

    with ExperimentStore.open(config.registry_path) as store:
        variant, control = _variant_of(store, experiment, version)
    results = experiment_results(config, experiment, outcomes, looks=looks, pm=pm)
    row = next(c for c in results["comparisons"] if c["variant"] == variant)
    decision = row.get("decision") or {}
    effect = row.get("effect")
    wins = effect is not None and (effect > 0 if higher_is_better else effect < 0)
    problems = []
    if decision.get("significant") is not True:
        problems.append("not decided: " + decision.get("text", "no decision"))
    elif not wins:
        problems.append(f"decided, but the challenger loses (effect {effect:+.4g})")
    if results["srm"].get("mismatch"):
        problems.append("sample-ratio mismatch")
    if results["guardrails"]["status"] == "breached":
        problems.append("a guardrail is breached")
    passed = not problems
    summary = (f"experiment {experiment}: {variant} (v{version}) vs {control}: "
               + ("decided, challenger wins" if passed else "; ".join(problems))
               + (f" (effect {effect:+.4g}, {decision.get('basis', '-')})" if effect is not None else ""))
    payload = {"experiment": experiment, "variant": variant, "control": control, "effect": effect,
               "ci": row.get("ci"), "p_value": row.get("p_value"), "decision": decision,
               "srm": results["srm"], "guardrails": results["guardrails"]["status"], "n_units": results["n_units"],
               "higher_is_better": higher_is_better}
    with Registry.open(config.registry_path, project_root=config.root) as registry:
        return registry.record_evidence(model, version, kind="experiment", passed=passed, summary=summary,
                                        payload=payload)


# -- lab promote ----------------------------------------------------------------------------

def promote_args(p: argparse.ArgumentParser) -> None:
    from lab.registry.commands import _promote_args

    _promote_args(p)
    p.add_argument("--experiment", metavar="NAME",
                   help="record this experiment's decision as online evidence first (with --outcomes)")
    p.add_argument("--outcomes", metavar="FILE", help="the experiment's outcomes, as for `lab experiment report`")
    p.add_argument("--lower-is-better", action="store_true",
                   help="the experiment's metric is better when lower (default: higher is better)")


def promote_run(args: argparse.Namespace, ctx: "Context") -> int:
    """``lab promote``: bring the version's online evidence up to date, then let the
    registry's gate decide (``lab.registry.commands._promote_run``)."""
    from lab.registry.commands import _promote_run

    notes: dict[str, str] = {}
    if args.alias == "champion":
        if bool(args.experiment) != bool(args.outcomes):
            raise LabError("--experiment and --outcomes go together: the experiment's name and its outcomes file")
        if args.experiment:
            row = experiment_evidence(ctx.config, ctx.pm, args.name, args.version, args.experiment, args.outcomes,
                                      higher_is_better=not args.lower_is_better)
            print(f"{args.name}: evidence #{row['id']}: {row['summary']}")
        if ctx.config.registry_path.exists():
            with Registry.open(ctx.config.registry_path, project_root=ctx.config.root) as registry:
                shadows = [s for s in registry.shadows(args.name) if s["version"] == args.version] \
                    if registry.list_model_versions(args.name) else []
            if shadows and shadows[-1]["active"] and not shadows[-1]["met"]:
                from lab.serving.shadow_report import check_shadow  # lab.serving loads numpy: only for a shadow

                report = check_shadow(ctx.config, ctx.pm, args.name, shadow_id=shadows[-1]["id"])
                if report["recorded"] == "met":
                    print(f"{args.name}: shadow #{shadows[-1]['id']} met its exit criteria: {report['summary']}")
                elif report["unmet"]:
                    notes["shadow"] = (f"shadow #{shadows[-1]['id']} of v{args.version} has not met its exit "
                                       f"criteria: {'; '.join(report['unmet'])} (see `lab shadow report {args.name}`)")
    elif args.experiment or args.force:
        raise LabError(f"--experiment and --force concern promotion to champion; --alias {args.alias} is not gated")
    return _promote_run(args, ctx, notes)
