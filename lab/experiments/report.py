"""The experiment report: every number a decision needs, then a notebook rendered to HTML.

``experiment_results(config, name, outcomes)`` computes, from an outcomes table (see
``lab.experiments.outcomes``) and the experiment as stored: per-variant counts and
means; each treatment's effect against control with its interval, relative lift,
fixed-horizon p-value and the p-value adjusted across treatments (Holm), and its
decision: the fixed-horizon verdict once both arms have their planned sample, the
always-valid sequential one before that (or without a plan); CUPED when a
pre-period covariate is given; the sample-ratio-mismatch check; the mixture SPRT at
``looks`` equally spaced looks; the planned sample size against the achieved one;
the platform guardrails from the prediction ledger; and online quality when labels
are given. ``render_report`` runs ``notebooks/experiment_report.ipynb`` through the
stage executor and writes ``runs/experiments/<name>/report-<UTC time>.html``.

The logic lives here and in ``report_figures`` (tables and matplotlib figures); the
notebook only calls and shows. See docs/experiments.md, "Reports".
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sqlite3
from pathlib import Path
from typing import Any

import numpy as np

from lab.atomic import atomic_path
from lab.errors import ConfigError, LabError
from lab.experiments.guardrails import check_guardrails, guardrail_data_from_ledger, platform_guardrails
from lab.experiments.outcomes import analysed_experiment, as_naive_utc, assign_arms, read_outcomes, read_table
from lab.experiments.quality import variant_quality
from lab.experiments.report_figures import (  # noqa: F401  (re-exported: the notebook's API)
    figure_png, headline, headline_html, plot_effects, plot_guardrails, plot_quality, plot_sample_size, plot_sequential,
    plot_srm, report_tables, show,
)
from lab.experiments.stats import (
    MIN_EVENTS, MIN_UNITS, adjust_pvalues, cuped, mean_test, proportion_test, sample_size_means,
    sample_size_proportions, sequential_test_observations, srm_check,
)
from lab.experiments.store import ExperimentStore
from lab.pipeline.stage import StageFailed
from lab.plugins import feature_views, get_plugin_manager, model_spec

NOTEBOOK = "notebooks/experiment_report.ipynb"
SECTIONS = ("Per-variant effects", "Sequential monitoring", "Sample ratio mismatch", "Guardrails",
            "Sample size: required vs achieved", "Online quality")
"""The notebook's section titles, in order (the HTML test checks them)."""


# --------------------------------------------------------------------------- the statistics

def _floats(values) -> list[float]:
    return [float(v) for v in np.asarray(values, dtype=float)]


def _variant_rows(analysed, arms: np.ndarray, y: np.ndarray) -> list[dict]:
    rows = []
    for i, v in enumerate(analysed.variants):
        values = y[arms == v.name]
        rows.append({"variant": v.name, "role": "control" if i == 0 else "treatment", "weight": v.weight,
                     "n": int(values.size), "mean": float(values.mean()) if values.size else None,
                     "std": float(values.std(ddof=1)) if values.size > 1 else None})
    return rows


def _compare(kind: str, control: np.ndarray, treatment: np.ndarray, alpha: float):
    """A Comparison, or a note saying why there is none."""
    least = 1 if kind == "proportion" else 2
    if control.size < least or treatment.size < least:
        return None, f"too few units to compare (control {control.size}, treatment {treatment.size})"
    if kind == "proportion":
        return proportion_test(control.sum(), control.size, treatment.sum(), treatment.size, alpha=alpha), ""
    if control.var() == 0 and treatment.var() == 0:
        return None, "the outcomes do not vary within either arm: nothing to test"
    return mean_test(control, treatment, alpha=alpha), ""


def _comparison_row(variant: str, comparison, note: str) -> dict:
    if comparison is None:
        return {"variant": variant, "effect": None, "ci": None, "lift": None, "lift_ci": None, "p_value": None,
                "note": note}
    c = comparison
    lift = float(c.lift) if np.isfinite(c.lift) else None
    return {"variant": variant, "n_control": int(c.n_control), "n_treatment": int(c.n_treatment),
            "control_mean": float(c.control), "treatment_mean": float(c.treatment), "effect": float(c.effect),
            "ci": tuple(_floats(c.ci)), "lift": lift,
            "lift_ci": tuple(_floats(c.lift_ci)) if lift is not None else None, "p_value": float(c.p_value),
            "note": note}


def _cuped_section(analysed, arms, y, pre, alpha) -> dict | None:
    if pre is None:
        return None
    control = analysed.control.name
    missing = int(np.isnan(pre).sum())
    if missing:
        return {"note": f"CUPED skipped: {missing} unit(s) have no pre value; fill them (e.g. 0 for units new "
                        "in the pre-period) to use it", "comparisons": []}
    try:
        adjustment = cuped(y, pre, arms=arms)
    except LabError as exc:
        return {"note": f"CUPED skipped: {exc}", "comparisons": []}
    rows = []
    for v in analysed.variants[1:]:
        c, t = adjustment.adjusted[arms == control], adjustment.adjusted[arms == v.name]
        if c.size < 2 or t.size < 2:
            rows.append({"variant": v.name, "effect": None, "ci": None, "p_value": None, "note": "too few units"})
            continue
        if c.var() == 0 and t.var() == 0:
            rows.append({"variant": v.name, "effect": None, "ci": None, "p_value": None, "note": "no variation"})
            continue
        r = mean_test(c, t, alpha=alpha)
        rows.append({"variant": v.name, "effect": float(r.effect), "ci": tuple(_floats(r.ci)),
                     "p_value": float(r.p_value), "note": ""})
    return {"theta": adjustment.theta, "variance_reduction": adjustment.variance_reduction,
            "correlation": adjustment.correlation, "comparisons": rows, "note": ""}


def _tau(analysed, y_control: np.ndarray, y_all: np.ndarray) -> tuple[float | None, str]:
    if analysed.mde is not None:
        return analysed.mde, "the planned MDE"
    if analysed.metric_kind == "proportion":
        rate = float(y_control.mean()) if y_control.size else 0.0
        return (0.1 * rate, "10 % of the control rate (no MDE planned)") if rate > 0 else (None, "")
    spread = float(y_all.std(ddof=1)) if y_all.size > 1 else 0.0
    return (0.1 * spread, "0.1 standard deviations (no MDE planned)") if spread > 0 else (None, "")


def _waiting(kind: str) -> str:
    events = (f" and {MIN_EVENTS} expected conversions and non-conversions per arm at the pooled rate"
              if kind == "proportion" else "")
    return f"no decision yet: the sequential test waits for {MIN_UNITS} units per arm{events}"


def _sequential_section(analysed, arms, y, at, looks: int) -> dict:
    control = analysed.control.name
    tau, source = _tau(analysed, y[arms == control], y)
    out = {"tau": tau, "tau_source": source, "looks": looks, "arms": {}, "note": "",
           "time_axis": "time" if at is not None else "arrival order"}
    if tau is None:
        out["note"] = "no sequential test: the outcomes have no variation yet"
        return out
    order = np.argsort(at, kind="stable") if at is not None else np.arange(y.size)
    for v in analysed.variants[1:]:
        sel = order[np.isin(arms[order], (control, v.name))]
        ys, treated = y[sel], arms[sel] == v.name
        if treated.sum() < 2 or (~treated).sum() < 2:
            out["arms"][v.name] = {"note": "too few units for the sequential test"}
            continue
        if at is not None:
            times = at[sel]
            start, end = times[0], times[-1]
            edges = start + (end - start) * (np.arange(1, looks + 1) / looks)
            counts = np.searchsorted(times, edges, side="right")
        else:
            edges = None
            counts = np.linspace(ys.size / looks, ys.size, looks).round().astype(int)
        keep = np.r_[True, np.diff(counts) > 0] & (counts >= 1)
        counts = counts[keep]
        seq = sequential_test_observations(ys, treated, looks=counts, tau=tau, alpha=analysed.alpha,
                                           kind=analysed.metric_kind)
        ready = bool(seq.ready[-1])
        out["arms"][v.name] = {
            "n": [int(c) for c in counts],
            "at": None if edges is None else [t.astype("datetime64[us]").item() for t in edges[keep]],
            "effect": _floats(seq.effect), "boundary": _floats(seq.boundary),
            "ci_lower": _floats(seq.ci_lower), "ci_upper": _floats(seq.ci_upper),
            "p_value": _floats(seq.p_value), "final_p": float(seq.p_value[-1]),
            "rejected": bool(seq.rejected[-1]), "stopped_at": int(seq.stopped_at), "ready": ready,
            "note": "" if ready else _waiting(analysed.metric_kind),
        }
    return out


def _srm_section(analysed, counts: dict[str, int], threshold: float) -> dict:
    live = {v.name: v.weight for v in analysed.variants if v.weight > 0}
    stray = {name: n for name, n in counts.items() if name not in live and n}
    note = ""
    if stray:
        note = "units in arm(s) with weight 0: " + ", ".join(f"{k} ({n})" for k, n in stray.items())
    if len(live) < 2 or sum(counts[k] for k in live) == 0:
        return {"checked": False, "mismatch": bool(stray), "note": note or "fewer than two arms with weight"}
    check = srm_check({k: counts[k] for k in live}, live, threshold=threshold)
    return {"checked": True, "statistic": check.statistic, "p_value": check.p_value,
            "mismatch": check.mismatch or bool(stray), "threshold": threshold,
            "observed": dict(zip(check.names, check.observed)), "expected": dict(zip(check.names, check.expected)),
            "note": note}


def _sample_size_section(analysed, counts: dict[str, int], y_control: np.ndarray, at) -> dict:
    e = analysed
    out: dict = {"planned": False, "reason": "", "arms": [], "plan": None, "days_to_go": None}
    if e.mde is None:
        out["reason"] = (f"not planned: experiment {e.name!r} has no mde (create it with --mde, and --baseline "
                         "for a proportion)")
        return out
    if e.metric_kind == "proportion" and e.baseline is None:
        out["reason"] = f"not planned: experiment {e.name!r} has an mde but no baseline rate"
        return out
    treatments = e.variants[1:]
    w_control = e.control.weight
    if w_control <= 0 or any(v.weight <= 0 for v in treatments):
        out["reason"] = "not planned: an arm has weight 0"
        return out
    # several treatments are analysed with Holm: plan each at alpha / k (Bonferroni), which Holm never needs more than
    alpha = e.alpha / len(treatments)
    std = None
    if e.metric_kind == "mean":
        if y_control.size < 2 or float(y_control.std(ddof=1)) <= 0:
            out["reason"] = "not planned: the control arm has too few units to estimate the standard deviation"
            return out
        std = float(y_control.std(ddof=1))
    plans = {}
    try:
        for v in treatments:
            ratio = v.weight / w_control
            if e.metric_kind == "proportion":
                plans[v.name] = sample_size_proportions(e.baseline, e.mde, alpha=alpha, power=e.power, ratio=ratio)
            else:
                plans[v.name] = sample_size_means(std, e.mde, alpha=alpha, power=e.power, ratio=ratio)
    except LabError as exc:
        out["reason"] = f"not planned: {exc}"
        return out
    required = {e.control.name: max(p.n_per_arm for p in plans.values())}
    required.update({name: p.n_treatment for name, p in plans.items()})
    first = next(iter(plans.values()))
    out.update(planned=True, plan={"alpha": alpha, "power": e.power, "mde": e.mde, "baseline": e.baseline,
                                   "std": std, "std_source": "the control arm's outcomes" if std else None,
                                   "effect_size": first.effect_size})
    out["arms"] = [{"variant": name, "required": n, "achieved": counts.get(name, 0),
                    "progress": counts.get(name, 0) / n} for name, n in required.items()]
    if at is not None and at.size > 1:
        span_days = (at.max() - at.min()) / np.timedelta64(1, "D")
        if span_days > 0:
            # the slowest arm decides: how long until every arm reaches its requirement
            out["days_to_go"] = max(0.0, max((r["required"] - r["achieved"]) / (r["achieved"] / span_days)
                                             if r["achieved"] else float("inf") for r in out["arms"]))
    return out


def _decisions(analysed, comparisons: list[dict], sequential: dict, sample_size: dict,
               counts: dict[str, int]) -> None:
    """Add each comparison's ``decision``: what may be concluded now, and on what basis.

    A fixed-horizon p-value is valid only at the planned sample size, so it decides only
    once both arms have their planned units. Before that (or with no plan) the decision
    is the always-valid sequential test's, at alpha / (number of treatments) (Bonferroni
    over arms; always-valid p-values allow it at any look).
    """
    control = analysed.control.name
    required = {a["variant"]: a["required"] for a in sample_size["arms"]} if sample_size["planned"] else None
    alpha = analysed.alpha / max(1, len(analysed.variants) - 1)
    for c in comparisons:
        v = c["variant"]
        n = counts[control] + counts[v]
        planned = required[control] + required[v] if required else None
        progress = (f"{n:,} of {planned:,} planned units" if planned is not None
                    else "no planned sample size (create the experiment with --mde to plan one)")
        reached = required is not None and counts[control] >= required[control] and counts[v] >= required[v]
        seq = sequential["arms"].get(v, {})
        if reached and c["p_value"] is not None:
            significant = bool(c["significant"])
            text = (f"{'SIGNIFICANT' if significant else 'not significant'} (fixed-horizon test at the planned "
                    f"sample: {progress})")
            basis = "fixed-horizon"
        elif seq.get("ready"):
            p = seq["final_p"]
            significant = p <= alpha
            text = (f"{'SIGNIFICANT' if significant else 'not significant yet'} (sequential: always-valid p "
                    f"{'<=' if significant else '>'} alpha {alpha:g}; {progress})")
            basis = "sequential"
        else:
            significant = None
            why = seq.get("note") or sequential.get("note") or _waiting(analysed.metric_kind)
            text = f"{why if why.startswith('no decision') else 'no decision yet: ' + why} ({progress})"
            basis = "sequential"
        c["decision"] = {"basis": basis, "significant": significant, "text": text, "n": n, "planned": planned,
                         "alpha": analysed.alpha if basis == "fixed-horizon" else alpha}


def _guardrail_section(config, pm, analysed) -> dict:
    if pm is None:
        pm = get_plugin_manager(config)
    guardrails = platform_guardrails(config, pm)
    note = ""
    if config.ledger_path.exists():
        try:
            data = guardrail_data_from_ledger(config.ledger_path, analysed, guardrails)
        except sqlite3.Error as exc:  # e.g. a ledger written before it recorded experiments
            data, note = {}, f"cannot read the prediction ledger {config.ledger_path} ({exc}); guardrails had no data"
    else:
        data, note = {}, f"no prediction ledger at {config.ledger_path}; guardrails had no data"
    results = [r.as_dict() for r in check_guardrails(analysed, data, guardrails)]
    if any(r["breached"] for r in results):
        status = "breached"
    elif any(r["p_value"] is not None for r in results):
        checked = sum(r["p_value"] is not None for r in results)
        status = "ok" if checked == len(results) else f"ok ({checked} of {len(results)} checked)"
    else:
        status = "no data"
    return {"status": status, "note": note, "results": results}


def label_columns(config, pm: Any = None) -> dict:
    """What ``variant_quality`` needs of the label table, from the lab's model spec: its
    event id (``request.id``, the ledger's ``event_id``), label and event time, and the
    label delay: the longest ``label_delay`` of the model's feature views (a label the
    features may not see yet is not known to online quality either)."""
    pm = pm if pm is not None else get_plugin_manager(config)
    try:
        spec = model_spec(pm, config)
    except ConfigError as exc:
        raise ConfigError(f"online quality joins labels with the model's event ids, so it needs the model: {exc}") \
            from None
    if spec.task != "classification":
        raise ConfigError(f"online quality (ROC AUC, average precision) needs a classification model; "
                          f"model {spec.name!r} is {spec.task}. Leave out the labels")
    views = feature_views(pm, config)
    delays = [views[name].label_delay for name in spec.views if name in views]
    return {"id_column": spec.id_column, "label_column": spec.label, "time_column": spec.time_column,
            "label_delay": max(delays, default=dt.timedelta(0))}


def experiment_results(config, name: str, outcomes: Any, *, pre: Any = None, looks: int = 20,
                       labels: Any = None, labels_as_of: dt.datetime | str | None = None,
                       correction: str = "holm", pm: Any = None) -> dict:
    """Everything the report shows for experiment ``name``, as plain Python values.

    ``outcomes``: a Parquet/CSV path or polars frame (``lab.experiments.outcomes``);
    ``pre``: optional table of ``unit_id, pre`` joined onto it; ``looks``: equally spaced
    looks of the sequential test, over ``at`` when the table has it, else over row order;
    ``labels``: a table for online quality (``lab.experiments.quality``; its columns are
    the model spec's, see ``label_columns``); ``pm``: the
    plugin manager for platform guardrails (default: the lab's). Raises LabError (naming
    the fix) for an unknown experiment, a draft, bad outcomes, or bad labels.
    """
    if isinstance(looks, bool) or not isinstance(looks, (int, np.integer)) or looks < 1:
        raise ConfigError(f"looks must be a whole number >= 1 (how many times the test is checked), got {looks!r}")
    with ExperimentStore.open(config.registry_path) as store:
        experiment = store.get(name)
        audit = store.audit(name)
    analysed, status, warnings = analysed_experiment(experiment, audit)
    data = read_outcomes(outcomes, metric_kind=analysed.metric_kind, experiment=name, pre=pre)
    arm_list, assignment, more = assign_arms(analysed, data)
    warnings += more
    inside = np.array([a is not None for a in arm_list])
    arms = np.array([a for a in arm_list if a is not None], dtype=object)
    y = data.values[inside]
    at = data.at[inside] if data.at is not None else None
    pre_values = data.pre[inside] if data.pre is not None else None
    counts = {v.name: int((arms == v.name).sum()) for v in analysed.variants}
    control = analysed.control.name
    y_control = y[arms == control]

    comparisons = []
    for v in analysed.variants[1:]:
        comparison, note = _compare(analysed.metric_kind, y_control, y[arms == v.name], analysed.alpha)
        comparisons.append(_comparison_row(v.name, comparison, note))
    tested = [c for c in comparisons if c["p_value"] is not None]
    if tested:
        reject, adjusted = adjust_pvalues([c["p_value"] for c in tested], method=correction, alpha=analysed.alpha)
        for c, r, p in zip(tested, reject, adjusted):
            c.update(p_adjusted=float(p), significant=bool(r))
    sequential = _sequential_section(analysed, arms, y, at, int(looks))
    sample_size = _sample_size_section(analysed, counts, y_control, at)
    _decisions(analysed, comparisons, sequential, sample_size, counts)
    quality = None
    if labels is not None:
        quality = variant_quality(config.ledger_path, analysed, labels, labels_as_of=labels_as_of,
                                  **label_columns(config, pm))
    return {
        "experiment": name, "status": status, "metric": analysed.metric, "metric_kind": analysed.metric_kind,
        "alpha": analysed.alpha, "power": analysed.power, "mde": analysed.mde, "baseline": analysed.baseline,
        "control": control, "weights": analysed.weights, "source": data.source, "n_units": int(y.size),
        "warnings": warnings, "assignment": assignment,
        "variants": _variant_rows(analysed, arms, y),
        "comparisons": comparisons, "correction": correction,
        "cuped": _cuped_section(analysed, arms, y, pre_values, analysed.alpha),
        "srm": _srm_section(analysed, counts, config.experiments.srm_p),
        "sequential": sequential,
        "sample_size": sample_size,
        "guardrails": _guardrail_section(config, pm, analysed),
        "quality": quality,
        "labels_as_of": None if labels_as_of is None else as_naive_utc(labels_as_of).isoformat(),
    }


# --------------------------------------------------------------------------- the notebook stage

def notebook_path(config) -> Path:
    """The report notebook: the project's own ``notebooks/experiment_report.ipynb`` if it
    has one, else the one shipped beside the ``lab`` package."""
    for candidate in (config.root / NOTEBOOK, Path(__file__).resolve().parents[2] / NOTEBOOK):
        if candidate.is_file():
            return candidate
    raise LabError(f"no report notebook at {config.root / NOTEBOOK}; copy {NOTEBOOK} from the lab repository")


def _as_file(table: Any, target: Path) -> str:
    """A path the kernel can read: a path as given (made absolute), a frame written to ``target``."""
    if isinstance(table, (str, os.PathLike)):
        return str(Path(table).resolve())
    with atomic_path(target) as tmp:
        read_table(table, target.stem).write_parquet(tmp)
        tmp.chmod(0o644)
    return str(target)


def _stamp(folder: Path) -> str:
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    candidate, n = stamp, 1
    while (folder / f"report-{candidate}.html").exists() or (folder / f"report-{candidate}.ipynb").exists():
        n += 1
        candidate = f"{stamp}-{n}"
    return candidate


def render(config, pm, name: str, outcomes: Any, *, labels: Any = None, looks: int = 20,
           labels_as_of: Any = None) -> Path:
    """Run the report notebook and convert it to HTML; the inputs are assumed checked
    (``render_report`` checks them first). Returns the HTML path."""
    folder = config.runs_path / "experiments" / name
    folder.mkdir(parents=True, exist_ok=True)
    stamp = _stamp(folder)
    executed = folder / f"report-{stamp}.ipynb"
    html = folder / f"report-{stamp}.html"
    params = {"root": str(config.root), "run_dir": str(folder), "experiment": name,
              "outcomes": _as_file(outcomes, folder / f"outcomes-{stamp}.parquet"),
              "labels": None if labels is None else _as_file(labels, folder / f"labels-{stamp}.parquet"),
              "looks": int(looks),
              "labels_as_of": None if labels_as_of is None else as_naive_utc(labels_as_of).isoformat()}
    executor = pm.hook.lab_stage_executor(config=config)
    if executor is None:
        raise ConfigError("no plugin answered lab_stage_executor; is papermill_executor blocked?")
    try:
        executor.execute(notebook_path(config), executed, params, config.root)
    except StageFailed as exc:
        raise LabError(f"the report notebook failed ({exc.summary}); the executed notebook is at {executed}") from None
    except LabError:
        raise
    except Exception as exc:  # a dead kernel or a broken install: still say where the notebook is
        raise LabError(f"the report notebook could not run ({type(exc).__name__}: {exc}); "
                       f"see the executed notebook at {executed}") from None
    try:
        import nbformat  # the notebook machinery loads only when a report is rendered
        from nbconvert import HTMLExporter

        exporter = HTMLExporter(exclude_input=True, exclude_input_prompt=True, exclude_output_prompt=True)
        body, _ = exporter.from_notebook_node(nbformat.read(executed, as_version=4))
    except Exception as exc:
        raise LabError(f"cannot convert the executed report notebook {executed} to HTML: {exc}") from None
    with atomic_path(html) as tmp:
        tmp.write_text(body, encoding="utf-8")
        tmp.chmod(0o644)  # a report is for reading: not only by its writer
    return html


def render_report(config, pm, name: str, outcomes: Any, *, labels: Any = None, looks: int = 20,
                  labels_as_of: Any = None) -> Path:
    """Check the inputs, run ``notebooks/experiment_report.ipynb`` through the stage
    executor (``lab_stage_executor``) and write its HTML, code hidden, to
    ``runs/experiments/<name>/report-<UTC time>.html`` (atomically; the executed
    notebook sits beside it). Returns the HTML path. Bad input raises LabError before the
    kernel starts; a failing notebook raises LabError naming the executed notebook."""
    experiment_results(config, name, outcomes, looks=looks, labels=labels, labels_as_of=labels_as_of, pm=pm)
    return render(config, pm, name, outcomes, labels=labels, looks=looks, labels_as_of=labels_as_of)


# --------------------------------------------------------------------------- lab experiment report

def run_report_command(args: argparse.Namespace, ctx) -> int:
    results = experiment_results(ctx.config, args.name, args.outcomes, looks=args.looks, labels=args.labels,
                                 labels_as_of=args.labels_as_of, pm=ctx.pm)
    path = render(ctx.config, ctx.pm, args.name, args.outcomes, labels=args.labels, looks=args.looks,
                  labels_as_of=args.labels_as_of)
    print(path)
    for line in headline(results):
        print("  " + line)
    return 0
