"""What the experiment report shows: headline lines, tables and matplotlib figures.

Each function takes the dict ``lab.experiments.report.experiment_results`` returns. The
figures are ``matplotlib.figure.Figure`` objects built without pyplot, so they need no
GUI backend, hold no global state, and work under ``matplotlib.use("Agg")``, in a
kernel, or in a server thread alike. ``show(fig)`` displays one as a PNG in a notebook.
"""

from __future__ import annotations

import io
import math
import textwrap
from html import escape
from typing import Any

import polars as pl
from scipy import stats

CONTINUE = "#d9d9d9"
COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")


def _fmt(value: Any, spec: str = ".4g") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return format(value, spec)


def _interval(ci, spec: str = "+.4g") -> str:
    return "-" if ci is None else f"[{_fmt(ci[0], spec)}, {_fmt(ci[1], spec)}]"


def headline(results: dict) -> list[str]:
    """A few lines that say what happened: the effects and the decision each allows now
    (the fixed-horizon verdict only at the planned sample, the sequential one before),
    SRM, guardrails, sample size."""
    r = results
    status = r["status"]["status"]
    if r["status"].get("stop_reason"):
        status += f" ({r['status']['stop_reason']})"
    lines = [f"{r['experiment']}: {r['metric']} ({r['metric_kind']}), {status}; "
             f"{r['n_units']} units in {len(r['variants'])} arms"]
    sequential = r["sequential"]["arms"]
    for c in r["comparisons"]:
        if c["p_value"] is None:
            lines.append(f"{c['variant']} vs {r['control']}: {c['note']}")
            continue
        lift = "" if c["lift"] is None else f", lift {c['lift']:+.2%} {_interval(c['lift_ci'], '+.2%')}"
        always = sequential.get(c["variant"], {}).get("final_p")
        # the verdict: fixed-horizon only at the planned sample, the sequential test's before it
        lines.append(
            f"{c['variant']} vs {r['control']}: effect {c['effect']:+.4g} {_interval(c['ci'])}{lift}, "
            f"fixed-horizon p={c['p_value']:.3g} ({r['correction']}-adjusted {c['p_adjusted']:.3g}), "
            f"always-valid p={_fmt(always, '.3g')}: {c['decision']['text']}")
    srm = r["srm"]
    if srm["checked"]:
        verdict = "MISMATCH: do not trust the effects until it is explained" if srm["mismatch"] else "ok"
        lines.append(f"SRM: p={srm['p_value']:.3g} {verdict}")
    else:
        lines.append(f"SRM: not checked ({srm['note']})")
    breached = [g for g in r["guardrails"]["results"] if g["breached"]]
    detail = "; ".join(f"{g['guardrail']} worse for {g['variant']}" for g in breached)
    lines.append(f"guardrails: {r['guardrails']['status']}" + (f" ({detail})" if detail else ""))
    size = r["sample_size"]
    if size["planned"]:
        parts = ", ".join(f"{a['variant']} {a['achieved']}/{a['required']}" for a in size["arms"])
        lines.append(f"sample size (achieved/required): {parts}")
    else:
        lines.append(f"sample size: {size['reason']}")
    return lines


def headline_html(results: dict) -> str:
    """The headline as HTML: the experiment's name as a heading, the lines and warnings as lists."""
    lines = headline(results)
    items = "".join(f"<li>{escape(line)}</li>" for line in lines[1:])
    warnings = "".join(f"<li>{escape(w)}</li>" for w in results["warnings"])
    out = (f"<h2>Experiment {escape(results['experiment'])}</h2><p>{escape(lines[0])}</p><ul>{items}</ul>"
           f"<p>Outcomes: {escape(results['source'])}</p>")
    if warnings:
        out += f"<p><b>Warnings</b></p><ul>{warnings}</ul>"
    return out


def report_tables(results: dict) -> dict:
    """polars DataFrames for the notebook: variants, comparisons, cuped, srm, guardrails,
    sample_size, quality (empty frames where there is nothing)."""
    r = results
    seq = r["sequential"]["arms"]
    cuped = {c["variant"]: c for c in (r["cuped"] or {}).get("comparisons", [])}
    comparisons = [{
        "variant": c["variant"], "effect": c["effect"], "ci_low": (c["ci"] or (None, None))[0],
        "ci_high": (c["ci"] or (None, None))[1], "lift": c["lift"], "lift_low": (c["lift_ci"] or (None, None))[0],
        "lift_high": (c["lift_ci"] or (None, None))[1], "p_value": c["p_value"], "p_adjusted": c.get("p_adjusted"),
        "fixed_horizon_significant": c.get("significant"),
        "always_valid_p": seq.get(c["variant"], {}).get("final_p"),
        "decision": c["decision"]["text"], "decided_by": c["decision"]["basis"],
        "cuped_effect": cuped.get(c["variant"], {}).get("effect"),
        "cuped_p_value": cuped.get(c["variant"], {}).get("p_value"), "note": c["note"],
    } for c in r["comparisons"]]
    srm = r["srm"]
    srm_rows = [{"variant": k, "observed": srm["observed"][k], "expected": srm["expected"][k]}
                for k in srm.get("observed", {})]
    guard_rows = [{
        "guardrail": g["guardrail"], "variant": g["variant"], "control_value": g["control_value"],
        "variant_value": g["variant_value"], "relative_change": g["estimate"],
        "p_value": g["p_value"], "alpha": g["alpha"], "tolerance": g["tolerance"], "breached": g["breached"],
        "note": g["note"],
    } for g in r["guardrails"]["results"]]
    quality_rows = [{"variant": k, **v} for k, v in (r["quality"] or {}).items()]

    def frame(rows):
        return pl.DataFrame(rows, infer_schema_length=None) if rows else pl.DataFrame()

    return {"variants": frame(r["variants"]), "comparisons": frame(comparisons),
            "srm": frame(srm_rows), "guardrails": frame(guard_rows), "sample_size": frame(r["sample_size"]["arms"]),
            "quality": frame(quality_rows)}


# --------------------------------------------------------------------------- figures

def _figure(width: float, height: float, rows: int = 1, cols: int = 1):
    from matplotlib.figure import Figure  # matplotlib loads only when a figure is drawn

    fig = Figure(figsize=(width, height), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    return fig, axes


def _message(text: str):
    """A small figure that says why there is nothing to plot."""
    fig, axes = _figure(7, 0.8)
    axes[0][0].axis("off")
    axes[0][0].text(0.0, 0.5, textwrap.fill(text, 90), va="center", fontsize="small")
    return fig


def plot_effects(results: dict):
    """Each treatment's effect on the metric and relative lift against control, with
    (1 − alpha) intervals; CUPED-adjusted effects beside the raw ones when present."""
    rows = [c for c in results["comparisons"] if c["p_value"] is not None]
    if not rows:
        return _message("no comparison yet: too few units in an arm")
    level = f"{1 - results['alpha']:.0%}"
    cuped = {c["variant"]: c for c in (results["cuped"] or {}).get("comparisons", []) if c["effect"] is not None}
    fig, axes = _figure(9, 1.4 + 0.7 * len(rows), 1, 2)
    effect_ax, lift_ax = axes[0]
    for i, c in enumerate(rows):
        lo, hi = c["ci"]
        effect_ax.errorbar(c["effect"], i, xerr=[[c["effect"] - lo], [hi - c["effect"]]], fmt="o", capsize=4,
                           color=COLORS[0], label="raw" if i == 0 else None)
        if c["variant"] in cuped:
            a = cuped[c["variant"]]
            effect_ax.errorbar(a["effect"], i - 0.25, xerr=[[a["effect"] - a["ci"][0]], [a["ci"][1] - a["effect"]]],
                               fmt="s", capsize=4, color=COLORS[2], label="CUPED" if i == 0 else None)
        if c["lift"] is not None:
            llo, lhi = c["lift_ci"]
            lift_ax.errorbar(100 * c["lift"], i, xerr=[[100 * (c["lift"] - llo)], [100 * (lhi - c["lift"])]],
                             fmt="o", capsize=4, color=COLORS[1])
    for ax, title in ((effect_ax, f"effect on {results['metric']} ({level} CI)"),
                      (lift_ax, f"relative lift, % ({level} CI)")):
        ax.axvline(0, color="black", lw=0.8)
        ax.set_yticks(range(len(rows)), [f"{c['variant']} vs {results['control']}" for c in rows])
        ax.set_ylim(-0.8, len(rows) - 0.4)
        ax.set_title(title)
        ax.grid(axis="x", alpha=0.3)
    if cuped:
        effect_ax.legend(loc="best", fontsize="small")
    return fig


def plot_sequential(results: dict):
    """The mixture SPRT over the looks: the effect against the always-valid boundary
    (inside the grey band: keep going), the confidence sequence, and the always-valid
    p-value against alpha."""
    seq = results["sequential"]
    arms = {k: v for k, v in seq["arms"].items() if "effect" in v}
    if not arms:
        return _message(seq["note"] or "no sequential test: too few units")
    fig, axes = _figure(9, 6.5, 2, 1)
    effect_ax, p_ax = axes[0][0], axes[1][0]
    for i, (variant, a) in enumerate(arms.items()):
        x = a["at"] if a["at"] is not None else a["n"]
        bound = [b if math.isfinite(b) else float("nan") for b in a["boundary"]]
        color = COLORS[i % len(COLORS)]
        if i == 0:
            effect_ax.fill_between(x, [-b for b in bound], bound, color=CONTINUE, alpha=0.6,
                                   label="boundary: |effect| needed to reject")
        effect_ax.plot(x, a["effect"], marker="o", ms=3, color=color, label=f"{variant}: effect")
        lower = [v if math.isfinite(v) else float("nan") for v in a["ci_lower"]]
        upper = [v if math.isfinite(v) else float("nan") for v in a["ci_upper"]]
        effect_ax.plot(x, lower, ls="--", color=color, lw=1, label=f"{variant}: confidence sequence")
        effect_ax.plot(x, upper, ls="--", color=color, lw=1)
        p_ax.plot(x, a["p_value"], marker="o", ms=3, color=color, label=f"{variant}: always-valid p")
    effect_ax.axhline(0, color="black", lw=0.8)
    effect_ax.set_title(f"mSPRT, {seq['looks']} looks over {seq['time_axis']} (tau = {seq['tau']:.4g}, "
                        f"{seq['tau_source']})")
    effect_ax.set_ylabel(f"treatment − control ({results['metric']})")
    effect_ax.legend(loc="best", fontsize="small")
    p_ax.axhline(results["alpha"], color="black", ls=":", label=f"alpha = {results['alpha']:g}")
    p_ax.set_yscale("log")
    p_ax.set_ylabel("always-valid p-value")
    p_ax.set_xlabel("time" if seq["time_axis"] == "time" else "units seen")
    p_ax.legend(loc="best", fontsize="small")
    for ax in (effect_ax, p_ax):
        ax.grid(alpha=0.3)
    if seq["time_axis"] == "time":
        fig.autofmt_xdate()
    return fig


def plot_srm(results: dict):
    """Units per arm minus what the weights expect, against the band a chance deviation
    stays within at the SRM threshold (a bar outside it is what a mismatch looks like)."""
    srm = results["srm"]
    if not srm["checked"]:
        return _message(f"SRM not checked: {srm['note']}")
    names = list(srm["observed"])
    total = sum(srm["observed"].values())
    z = stats.norm.isf(srm["threshold"] / 2)
    fig, axes = _figure(7, 3)
    ax = axes[0][0]
    for i, n in enumerate(names):
        expected = srm["expected"][n]
        share = expected / total
        band = z * math.sqrt(total * share * (1 - share))
        ax.fill_between([i - 0.4, i + 0.4], -band, band, color=CONTINUE, label="chance band" if i == 0 else None)
        ax.bar(i, srm["observed"][n] - expected, width=0.5, color=COLORS[1] if srm["mismatch"] else COLORS[0])
        ax.text(i, 0, f"{srm['observed'][n]} of {expected:.0f} expected", ha="center", va="bottom",
                fontsize="small")
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xticks(range(len(names)), names)
    verdict = "MISMATCH" if srm["mismatch"] else "no mismatch"
    ax.set_title(f"sample ratio: chi-square p = {srm['p_value']:.3g} ({verdict} at p < {srm['threshold']:g})")
    ax.set_ylabel("observed − expected units")
    ax.legend(loc="upper right", fontsize="small")
    return fig


def plot_guardrails(results: dict):
    """Each guardrail's relative change per treatment with its interval, and the
    tolerance it may not cross in the worse direction."""
    rows = [g for g in results["guardrails"]["results"] if g["estimate"] is not None and g["lift_ci"]]
    if not rows:
        note = results["guardrails"]["note"] or "no guardrail data for this experiment yet"
        return _message(f"guardrails: {results['guardrails']['status']}; {note}")
    fig, axes = _figure(8, 1.4 + 0.6 * len(rows))
    ax = axes[0][0]
    for i, g in enumerate(rows):
        est, (lo, hi) = 100 * g["estimate"], g["lift_ci"]
        color = COLORS[1] if g["breached"] else COLORS[0]
        ax.errorbar(est, i, xerr=[[est - 100 * lo], [100 * hi - est]], fmt="o", capsize=4, color=color)
        limit = 100 * g["tolerance"] * (1 if g["worse"] == "increase" else -1)
        ax.plot([limit, limit], [i - 0.35, i + 0.35], color="black", ls=":")
    ax.axvline(0, color="black", lw=0.8)
    ax.set_yticks(range(len(rows)), [f"{g['guardrail']}: {g['variant']}" + (" (BREACHED)" if g["breached"] else "")
                                     for g in rows])
    ax.set_ylim(-0.8, len(rows) - 0.4)
    ax.set_xlabel("relative change vs control, % (dotted: tolerance)")
    ax.set_title(f"guardrails: {results['guardrails']['status']}")
    ax.grid(axis="x", alpha=0.3)
    return fig


def plot_sample_size(results: dict):
    """Units each arm needs (from the plan) against the units it has."""
    size = results["sample_size"]
    if not size["planned"]:
        return _message(f"sample size: {size['reason']}")
    arms = size["arms"]
    fig, axes = _figure(7, 1.4 + 0.6 * len(arms))
    ax = axes[0][0]
    ys = range(len(arms))
    ax.barh([y + 0.2 for y in ys], [a["required"] for a in arms], height=0.4, color=CONTINUE, label="required")
    ax.barh([y - 0.2 for y in ys], [a["achieved"] for a in arms], height=0.4, color=COLORS[0], label="achieved")
    for y, a in zip(ys, arms):
        ax.text(a["achieved"], y - 0.2, f" {a['progress']:.0%}", va="center", fontsize="small")
    ax.set_yticks(list(ys), [a["variant"] for a in arms])
    plan = size["plan"]
    ax.set_title(f"sample size for mde {plan['mde']:g} at alpha {plan['alpha']:g}, power {plan['power']:g}")
    ax.set_xlabel("units")
    ax.set_xlim(0, 1.15 * max(max(a["required"], a["achieved"]) for a in arms))
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.3), ncol=2, fontsize="small")
    return fig


def plot_quality(results: dict):
    """Online ROC AUC and average precision per variant (labelled predictions only)."""
    quality = results["quality"]
    if not quality:
        return _message("online quality: no labels given")
    names = list(quality)
    fig, axes = _figure(7, 3)
    ax = axes[0][0]
    for offset, key, color in ((-0.2, "roc_auc", COLORS[0]), (0.2, "average_precision", COLORS[2])):
        values = [quality[n][key] for n in names]
        ax.bar([i + offset for i, v in enumerate(values) if v is not None], [v for v in values if v is not None],
               width=0.4, color=color, label=key)
    for i, n in enumerate(names):
        if quality[n]["roc_auc"] is None:
            ax.text(i, 0.05, "no metric:\n" + quality[n]["note"][:40], ha="center", fontsize="x-small")
    ax.set_xticks(range(len(names)), [f"{n}\n({quality[n]['n_labelled']} labelled)" for n in names])
    ax.set_ylim(0, 1)
    ax.set_title("online quality from the ledger joined with late labels")
    ax.legend(loc="upper right", fontsize="small")
    return fig


def figure_png(fig) -> bytes:
    """The figure as PNG bytes."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def show(fig) -> None:
    """Display a figure in a notebook as an embedded PNG."""
    from IPython.display import Image, display  # only inside a notebook

    display(Image(data=figure_png(fig), format="png"))
