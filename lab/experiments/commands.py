"""``lab experiment ...``: create, start, stop, status, set-weights, audit, simulate, report, check.

Each opens the registry file (``ctx.config.registry_path``) as an ``ExperimentStore``.
Events for plugins (``flag.changed``, ``experiment.started``, ``experiment.stopped``)
are emitted here, after the change has committed, so library callers stay quiet.
Bad input is a LabError before anything is written: ``lab: error: ...``, exit 2.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from lab import events
from lab.cli import Context
from lab.errors import ConfigError
from lab.experiments.assignment import bucket_ranges, format_ranges
from lab.experiments.model import Experiment, Variant, check_plan, parse_named_numbers
from lab.experiments.store import ExperimentStore
from lab.registry import Registry


def _open(ctx: Context):
    return ExperimentStore.open(ctx.config.registry_path)


def parse_weights(text: str) -> dict[str, float]:
    """``"control=0.8,treatment=0.2"`` as a dict, in order. Bare names (``"a,b,c"``)
    split evenly. Whether the weights sum to 1 is checked by the model."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    example = "write it as control=0.5,treatment=0.5 (fractions that sum to 1)"
    if not parts:
        raise ConfigError(f"no variants in {text!r}; {example}")
    if not any("=" in p for p in parts):
        for part in parts:
            if not part.isidentifier():
                raise ConfigError(f"cannot read {part!r} in {text!r}; {example}, or bare names a,b for an even split")
        return {p: 1.0 / len(parts) for p in parts}
    return parse_named_numbers(text, repr(text), example)


def parse_payloads(items: list[str], variants: list[str]) -> dict[str, dict]:
    """``["treatment:model_version=3", ...]`` as ``{variant: {key: value}}``; a value is
    read as JSON when it can be (``3``, ``true``, ``"x"``), else kept as text."""
    out: dict[str, dict] = {name: {} for name in variants}
    for item in items:
        variant, colon, rest = item.partition(":")
        key, eq, raw = rest.partition("=")
        if not colon or not eq or not key.strip():
            raise ConfigError(f"cannot read --payload {item!r}; write it as VARIANT:KEY=VALUE, "
                              "e.g. treatment:model_version=3")
        if variant not in out:
            raise ConfigError(f"--payload {item!r} names variant {variant!r}, which is not one of "
                              f"{', '.join(variants)}")
        try:
            value: Any = json.loads(raw)
        except ValueError:
            value = raw
        out[variant][key.strip()] = value
    return out


def parse_share(text: str) -> tuple[int, int]:
    """``"0-5000"`` as ``(0, 5000)``; whether it is a valid share is checked by the model."""
    start, dash, end = text.partition("-")
    try:
        if dash:
            return int(start), int(end)
    except ValueError:
        pass
    raise ConfigError(f"cannot read --layer-share {text!r}; write START-END in buckets of 10000, "
                      "e.g. 0-5000 for half the layer")


def _weights_text(weights: dict[str, float]) -> str:
    return ",".join(f"{k}={v:g}" for k, v in weights.items())


def _short_time(at: str | None) -> str:
    return (at or "-")[:19].replace("T", " ")


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, default=str))


def _emit(ctx: Context, event: str, experiment, **payload: Any) -> None:
    events.emit(ctx.pm, event, experiment=experiment.name, kind=experiment.kind, status=experiment.status,
                weights=experiment.weights, **payload)


# -- create ---------------------------------------------------------------------------

def _create_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", help="experiment or flag name (an identifier, e.g. new_ranker)")
    p.add_argument("--variants", required=True,
                   help="control first: control=0.5,treatment=0.5 (weights sum to 1)")
    p.add_argument("--flag", action="store_true", help="a flag (routes traffic; one variant is enough)")
    p.add_argument("--layer", default="",
                   help="the surface; one experiment per unit per layer (default: 'default' for an "
                        "experiment, flag:NAME, a layer of its own, for a flag)")
    p.add_argument("--layer-share", default="0-10000", help="bucket range START-END of the layer (of 10000)")
    p.add_argument("--unit", default="unit_id", help="what is randomized, e.g. CUSTOMER_ID")
    p.add_argument("--salt", default="", help="hash salt (default: the name)")
    p.add_argument("--metric", default="conversion", help="primary metric name")
    p.add_argument("--metric-kind", default="proportion", choices=("proportion", "mean"))
    p.add_argument("--alpha", type=float, help="significance level (default: [tool.lab.experiments] alpha)")
    p.add_argument("--power", type=float, help="planned power (default: [tool.lab.experiments] power)")
    p.add_argument("--mde", type=float, help="minimum detectable effect (absolute)")
    p.add_argument("--baseline", type=float, help="baseline rate or mean of the metric")
    p.add_argument("--payload", action="append", default=[], metavar="VARIANT:KEY=VALUE",
                   help="what a variant means to the caller, e.g. treatment:model_version=3 (repeatable)")
    p.add_argument("--reason", default="", help="why, kept in the audit log")


PLAN_FLAGS = {"alpha": "--alpha", "power": "--power", "mde": "--mde", "baseline": "--baseline"}


def _model_version(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value) or value < 1:
        raise ConfigError(f"{where}: model_version must be a whole number >= 1 (a version of the model in the "
                          f"registry, see `lab models`), got {value!r}")
    return int(value)


def check_model_versions(ctx: Context, experiment, *, at_create: bool) -> None:
    """Every ``model_version`` payload must name a registered version of the lab's model
    (``config.model_name``); otherwise ``lab serve --flag`` could never be ready. Checked
    by ``lab experiment create`` and ``lab experiment start``."""
    wanted: dict[str, tuple[int, str]] = {}
    for v in experiment.variants:
        if "model_version" not in v.payload:
            continue
        where = (f"--payload {v.name}:model_version={json.dumps(v.payload['model_version'])}" if at_create
                 else f"variant {v.name!r} of {experiment.kind} {experiment.name!r}")
        wanted[v.name] = (_model_version(v.payload["model_version"], where), where)
    if not wanted:
        return
    model = ctx.config.model_name
    with Registry.open(ctx.config.registry_path, project_root=ctx.config.root) as registry:
        versions = [mv.version for mv in registry.list_model_versions(model)]
    for number, where in wanted.values():
        if number not in versions:
            known = ", ".join(map(str, versions)) or "none registered yet"
            names = "" if at_create else f" names model_version {number}"
            fix = ("create a new one that names an existing version" if not at_create
                   else "name an existing version")
            raise ConfigError(
                f"{where}{names}: model {model!r} has no version {number}; versions: {known}. Register it first "
                f"(`lab run` registers a new version) or {fix} (see `lab models {model}`)"
            )


def _create_run(args: argparse.Namespace, ctx: Context) -> int:
    weights = parse_weights(args.variants)
    if len(weights) < 2 and not args.flag:
        raise ConfigError(f"experiment {args.name!r} has {len(weights)} variant; an experiment needs at least 2 "
                          "(control first, then treatments); add --flag for a single-variant flag")
    defaults = ctx.config.experiments
    alpha = defaults.alpha if args.alpha is None else args.alpha
    power = defaults.power if args.power is None else args.power
    check_plan(args.metric_kind, alpha, power, args.mde, args.baseline, names=PLAN_FLAGS)
    payloads = parse_payloads(args.payload, list(weights))
    experiment = Experiment(
        name=args.name, variants=tuple(Variant(n, w, payloads[n]) for n, w in weights.items()),
        layer=args.layer, salt=args.salt, kind="flag" if args.flag else "experiment",
        unit=args.unit, layer_share=parse_share(args.layer_share), metric=args.metric,
        metric_kind=args.metric_kind, alpha=alpha, power=power, mde=args.mde, baseline=args.baseline,
    )
    check_model_versions(ctx, experiment, at_create=True)
    with _open(ctx) as store:
        store.create(experiment, reason=args.reason)
    share = "{}-{}".format(*experiment.layer_share)
    print(f"created {experiment.kind} {experiment.name} (draft) in layer {experiment.layer} {share}: "
          f"{_weights_text(experiment.weights)}; start it with `lab experiment start {experiment.name}`")
    _emit(ctx, events.FLAG_CHANGED, experiment, action="create", old=None, reason=args.reason)
    return 0


# -- start / stop / set-weights -------------------------------------------------------

def _name_reason_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", help="experiment or flag name")
    p.add_argument("--reason", default="", help="why, kept in the audit log")


def _start_run(args: argparse.Namespace, ctx: Context) -> int:
    with _open(ctx) as store:
        check_model_versions(ctx, store.get(args.name), at_create=False)
        experiment = store.start(args.name, reason=args.reason)
    print(f"started {experiment.kind} {experiment.name}: {_weights_text(experiment.weights)}")
    _emit(ctx, events.EXPERIMENT_STARTED, experiment, reason=args.reason)
    return 0


def _stop_args(p: argparse.ArgumentParser) -> None:
    _name_reason_args(p)
    p.add_argument("--keep-weights", action="store_true",
                   help="keep the last weights on record (units see control either way)")


def _stop_run(args: argparse.Namespace, ctx: Context) -> int:
    with _open(ctx) as store:
        before = store.get(args.name)
        experiment = store.stop(args.name, reason=args.reason, to_control=not args.keep_weights)
    print(f"stopped {experiment.kind} {experiment.name}: every unit now sees {experiment.control.name}"
          + (f" (weights on record: {_weights_text(experiment.weights)})" if args.keep_weights else ""))
    _emit(ctx, events.EXPERIMENT_STOPPED, experiment, old=before.weights, reason=args.reason)
    return 0


def _set_weights_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", help="experiment or flag name")
    p.add_argument("weights", help="every variant's new weight: control=0.8,treatment=0.2")
    p.add_argument("--reason", default="", help="why, kept in the audit log")


def _set_weights_run(args: argparse.Namespace, ctx: Context) -> int:
    weights = parse_weights(args.weights)
    with _open(ctx) as store:
        before = store.get(args.name)
        experiment = store.set_weights(args.name, weights, reason=args.reason)
    if experiment == before:  # the store wrote nothing: these are the weights it serves
        print(f"{experiment.name}: already at these weights ({_weights_text(experiment.weights)}); nothing recorded")
        return 0
    print(f"{experiment.name}: {_weights_text(before.weights)} -> {_weights_text(experiment.weights)}")
    _emit(ctx, events.FLAG_CHANGED, experiment, action="set_weights", old=before.weights, reason=args.reason)
    return 0


# -- status / audit -------------------------------------------------------------------

def _status_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", nargs="?", help="show this one in detail (default: list all)")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")


def _value_text(value: Any) -> str:
    """An audit value in one short phrase: weights as ``a=0.9,b=0.1``, a created
    experiment as its kind, weights and layer share (``--json`` gives everything)."""
    if value is None:
        return "-"
    if isinstance(value, dict) and "variants" in value:  # a whole experiment (create)
        weights = {v["name"]: v["weight"] for v in value["variants"]}
        share = "{}-{}".format(*value["layer_share"])
        return f"{value['kind']} {_weights_text(weights)} layer {value['layer']} {share}"
    if isinstance(value, dict) and value and all(isinstance(v, (int, float)) for v in value.values()):
        return _weights_text(value)
    if isinstance(value, dict):
        return " ".join(_value_text(v) if isinstance(v, dict) else str(v) for v in value.values())
    return json.dumps(value)


def _audit_line(row: dict) -> str:
    show = _value_text
    reason = f"  ({row['reason']})" if row["reason"] else ""
    return (f"{_short_time(row['at'])}  {row['experiment']:<18} {row['action']:<17} by {row['actor']:<10} "
            f"{show(row['old'])} -> {show(row['new'])}{reason}")


def _status_run(args: argparse.Namespace, ctx: Context) -> int:
    with _open(ctx) as store:
        if args.name is None:
            experiments = store.list()
            if args.json:
                _print_json([e.to_dict() for e in experiments])
            elif not experiments:
                print("no experiments or flags yet (create one with `lab experiment create NAME --variants ...`)")
            for e in [] if args.json else experiments:
                share = "{}-{}".format(*e.layer_share)
                print(f"{e.name:<20} {e.kind:<10} {e.status:<8} {e.layer} {share:<11} {_weights_text(e.weights)}")
            return 0
        experiment = store.get(args.name)
        audit = store.audit(args.name)
    if args.json:
        _print_json({**experiment.to_dict(), "audit": audit})
        return 0
    e = experiment
    print(f"{e.name}  {e.kind}  {e.status}  layer {e.layer} {e.layer_share[0]}-{e.layer_share[1]}  "
          f"unit {e.unit}  salt {e.salt}")
    ranges = bucket_ranges(e)
    for i, v in enumerate(e.variants):
        role = "control" if i == 0 else "treatment"
        payload = f"  payload {json.dumps(v.payload, sort_keys=True)}" if v.payload else ""
        owned = format_ranges(list(ranges[v.name]))
        print(f"  {v.name:<16} {v.weight:>8.4g}  {role:<9} buckets {owned}{payload}")
    extra = "".join(f", {k} {getattr(e, k):g}" for k in ("mde", "baseline") if getattr(e, k) is not None)
    print(f"  metric {e.metric} ({e.metric_kind}), alpha {e.alpha:g}, power {e.power:g}{extra}")
    print("recent changes:")
    for row in audit[-5:]:
        print("  " + _audit_line(row))
    return 0


def _audit_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", nargs="?", help="only this experiment's rows (default: all)")
    p.add_argument("--limit", type=int, default=50, help="how many of the latest rows (default: 50)")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")


def _audit_run(args: argparse.Namespace, ctx: Context) -> int:
    if args.limit < 1:
        raise ConfigError(f"--limit must be at least 1, got {args.limit}")
    with _open(ctx) as store:
        rows = store.audit(args.name)[-args.limit:]
    if args.json:
        _print_json(rows)
        return 0
    if not rows:
        print("no changes recorded yet")
    for row in rows:
        print(_audit_line(row))
    return 0


# -- check: the platform guardrails on the prediction ledger ------------------------------

STOPPED_EXIT = 3
"""Exit status of ``lab experiment check`` when the check stopped the experiment, so a
scheduled job can alert on it; 0 otherwise (2 stays bad input)."""


def _check_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", help="experiment or flag name")
    p.add_argument("--ledger", help="prediction ledger file (default: the lab's, data/ledger.db)")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")


def _result_line(r) -> str:
    head = f"  {r.guardrail:<14} {r.variant} vs {r.control}"
    if r.p_value is None:
        return f"{head}: not checked ({r.note})"
    change = f"{r.estimate:+.1%}" if r.estimate is not None else f"{r.difference:+.4g}"
    interval = f" [{r.lift_ci[0]:+.1%}, {r.lift_ci[1]:+.1%}]" if r.lift_ci else ""
    test = "sequential" if r.sequential else "fixed"
    verdict = "BREACHED" if r.breached else "ok"
    return (f"{head}: {change}{interval}, n {r.n_control}/{r.n_variant}, one-sided p={r.p_value:.3g} "
            f"({test}, alpha {r.alpha:g}, tolerance {r.tolerance:g}): {verdict}")


def _check_run(args: argparse.Namespace, ctx: Context) -> int:
    # numpy (and the scipy the tests use) load only when a guardrail is checked
    from lab.experiments.guardrails import enforce_guardrails, guardrail_data_from_ledger, platform_guardrails

    guardrails = platform_guardrails(ctx.config, ctx.pm)
    ledger = Path(args.ledger) if args.ledger else ctx.config.ledger_path
    with _open(ctx) as store:
        before = store.get(args.name)
        data = guardrail_data_from_ledger(ledger, before, guardrails)
        results = enforce_guardrails(store, ctx.pm, args.name, data, guardrails, actor="lab experiment check")
        after = store.get(args.name)
    stopped = before.status == "running" and after.status == "stopped" and any(r.breached for r in results)
    if args.json:
        _print_json({"experiment": args.name, "ledger": str(ledger), "status": after.status, "stopped": stopped,
                     "results": [r.as_dict() for r in results]})
        return STOPPED_EXIT if stopped else 0
    print(f"{before.name} ({before.kind}, {before.status}): {len(guardrails)} guardrail(s) on {ledger}")
    for r in results:
        print(_result_line(r))
    if stopped:
        print(f"STOPPED {before.name}: a guardrail was breached; every unit now sees {after.control.name} "
              f"(see `lab experiment audit {before.name}`)")
        return STOPPED_EXIT
    breached = [r for r in results if r.breached]
    if breached:
        print(f"breached, but {before.name} is {before.status}, not running: nothing changed")
    else:
        print("no guardrail breached" + ("" if before.status == "running" else f" ({before.name} is {before.status})"))
    return 0


# -- simulate (lab/experiments/simulate.py) -----------------------------------------------

def _simulate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", help="a started (or stopped) experiment")
    p.add_argument("--units", type=int, required=True, help="how many units in the experiment")
    p.add_argument("--rates", required=True, metavar="VARIANT=RATE,...",
                   help="every variant's true rate (its mean with --mean): control=0.10,treatment=0.11")
    p.add_argument("--seed", type=int, default=0, help="random seed; one seed, one table (default 0)")
    p.add_argument("--mean", action="store_true", help="a mean metric: values drawn Normal(rate, --std)")
    p.add_argument("--std", type=float, default=1.0, help="standard deviation of a mean metric (default 1)")
    p.add_argument("--days", type=float, default=14.0, help="exposures spread over this many days from the start")
    p.add_argument("--out", required=True, metavar="FILE", help="where to write the outcomes (.parquet or .csv)")


def _simulate_run(args: argparse.Namespace, ctx: Context) -> int:
    # numpy loads only when outcomes are simulated
    from lab.experiments.simulate import parse_rates, simulate_outcomes, write_outcomes

    rates = parse_rates(args.rates)
    with _open(ctx) as store:
        experiment = store.get(args.name)
        audit = store.audit(args.name)
    simulated = simulate_outcomes(experiment, audit, units=args.units, rates=rates, seed=args.seed,
                                  mean=args.mean or None, std=args.std, days=args.days)
    path = write_outcomes(simulated.frame, args.out)
    arms = "; ".join(f"{r['variant']} {r['units']} units, mean {r['mean']:.4g}" if r["units"]
                     else f"{r['variant']} no units" for r in simulated.summary())
    print(f"wrote {args.units} simulated units of {experiment.name} to {path} (seed {args.seed}): {arms}")
    print(f"report them with `lab experiment report {experiment.name} --outcomes {path}`")
    return 0


# -- report (lab/experiments/report.py) ---------------------------------------------------

def _report_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", help="the experiment to report on")
    p.add_argument("--outcomes", required=True, metavar="FILE",
                   help="Parquet or CSV, one row per unit: unit_id, value (0/1 or a number); optional at, pre, variant")
    p.add_argument("--labels", metavar="FILE",
                   help="labels for online quality, Parquet or CSV: the model's event id and label columns "
                        "(its request id and label), e.g. the source the model trains on")
    p.add_argument("--labels-as-of", metavar="TIME",
                   help="count only labels known by then (event time + the model's label delay), ISO 8601")
    p.add_argument("--looks", type=int, default=20, help="equally spaced looks of the sequential test (default 20)")


def _report_run(args: argparse.Namespace, ctx: Context) -> int:
    # numpy, scipy, polars and the notebook machinery load only when a report is rendered
    from lab.experiments.report import run_report_command

    return run_report_command(args, ctx)
