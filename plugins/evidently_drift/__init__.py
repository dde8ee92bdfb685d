"""Built-in drift report: Evidently's data-drift preset, one test per column."""

from __future__ import annotations

from pathlib import Path

from lab import hookimpl
from lab.atomic import atomic_path
from lab.errors import LabError


def _is_p_value(method: str) -> bool:
    # Evidently picks the test per column; p-value tests drift when the value is *below*
    # the threshold, distance measures when it is at or above it.
    return "p_value" in method.replace("-", "_").lower()


def drift_scores(snapshot_dict: dict) -> dict[str, dict]:
    """Per-column score, drift flag and method from an Evidently snapshot's ``dict()``."""
    out: dict[str, dict] = {}
    for metric in snapshot_dict.get("metrics", []):
        config = metric.get("config", {})
        if not str(config.get("type", "")).endswith("ValueDrift"):
            continue
        method = str(config.get("method", ""))
        threshold = float(config.get("threshold", 0.05))
        score = float(metric["value"])
        drifted = score < threshold if _is_p_value(method) else score >= threshold
        out[config["column"]] = {"score": score, "drifted": bool(drifted), "method": method,
                                 "threshold": threshold}
    return out


@hookimpl(trylast=True)
def lab_drift_report(config, reference, current, columns, html_path):
    # Evidently (and the pandas under it) loads only when a drift report is made
    from evidently import Report
    from evidently.presets import DataDriftPreset

    missing = [c for c in columns if c not in reference.columns or c not in current.columns]
    if missing:
        raise LabError(f"drift report: column(s) {missing} are missing from the reference or current data")
    if len(reference) == 0 or len(current) == 0:
        raise LabError("drift report: the reference and current windows must both have rows")
    report = Report([DataDriftPreset(columns=list(columns))])
    snapshot = report.run(current_data=current[list(columns)], reference_data=reference[list(columns)])
    target = Path(html_path)
    with atomic_path(target) as tmp:
        snapshot.save_html(str(tmp))
    return drift_scores(snapshot.dict())
