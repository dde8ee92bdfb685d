"""The rows the JupyterLab sidebar's Monitoring plots draw, from what monitoring wrote.

Nothing is measured here: ``freshness_rows`` reshapes the freshness check of ``lab
monitor run``'s summary (``data/monitor.json``, ``lab.monitoring.monitor``), and
``quality_rows`` reads the live quality per window that ``lab.monitoring.quality``
recorded in the registry as a ``live_quality`` run (``v<version>.<metric>`` at step =
the window's number), or the summary's last window. ``views.monitoring`` serves both.
Every reader is defensive: a summary from an older lab, a skipped check or a field that
is missing gives fewer rows, never an error.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from lab.errors import NotFound
from lab.registry import Registry

QUALITY_RUN_KIND = "live_quality"  # lab.monitoring.quality.RUN_KIND: a recorded live-quality check
QUALITY_METRICS = ("roc_auc", "average_precision", "precision_at_k", "log_loss", "brier", "mae", "rmse",
                   "mean_error")
"""The window metrics of ``lab.monitoring.quality`` the sidebar plots (classification, then
regression); the early signals and counts a recorded check also logs are left out."""
_EPOCH = dt.datetime(1970, 1, 1)  # quality windows are numbered from here (naive UTC), as lab.monitoring.quality does


def _check(monitor: dict | None, name: str) -> dict:
    """One check of a monitor summary as a dict (``{}`` when absent or malformed): checks
    are a map by name, or a list of checks with a ``name``."""
    checks = (monitor or {}).get("checks")
    if isinstance(checks, list):
        checks = {c.get("name"): c for c in checks if isinstance(c, dict)}
    found = checks.get(name) if isinstance(checks, dict) else None
    return found if isinstance(found, dict) else {}


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def freshness_rows(monitor: dict | None) -> list[dict]:
    """The freshness check's views as plot rows, in the check's order:

    ``{"view", "age_s", "age_kind", "age_max_s", "limit_s", "breach_rate",
    "max_breach_rate", "requests", "breached", "materialized"}``. ``age_s`` is the median
    age in seconds of the view's values served in the window (``age_kind`` "served p50";
    ``age_max_s`` the oldest), or, with no served request, the view's lag: now minus its
    newest event time at the check (``age_kind`` "lag"); None when neither is known.
    ``limit_s`` is the view's freshness objective in seconds (None: it declares none),
    ``breach_rate`` the share of served requests past it, ``max_breach_rate`` the share
    the check tolerates (``[tool.lab.monitor] max_freshness_breach_rate``). ``breached``
    is the check's own verdict for the view (over the tolerated share, or never
    materialized). Empty when the check is absent or skipped."""
    data = _check(monitor, "freshness").get("data")
    if not isinstance(data, dict) or not isinstance(data.get("views"), list):
        return []
    late = {name for key in ("breaching", "never_materialized") if isinstance(data.get(key), list)
            for name in data[key] if isinstance(name, str)}
    rows = []
    for view in data["views"]:
        if not isinstance(view, dict) or not isinstance(view.get("view"), str) or not view["view"]:
            continue
        requests = int(_number(view.get("requests")) or 0)
        served = _number(view.get("age_p50_s"))
        age, kind = (served, "served p50") if requests and served is not None else (_number(view.get("lag_s")), "lag")
        rows.append({"view": view["view"], "age_s": age, "age_kind": kind if age is not None else None,
                     "age_max_s": _number(view.get("age_max_s")) if requests else None,
                     "limit_s": _number(view.get("freshness_s")), "breach_rate": _number(view.get("breach_rate")),
                     "max_breach_rate": _number(data.get("limit")), "requests": requests,
                     "breached": view["view"] in late, "materialized": view.get("watermark") is not None})
    return rows


def quality_rows(monitor: dict | None, registry: Registry | None, *,
                 model: str | None) -> tuple[list[dict], dict | None]:
    """Live quality as plot rows, and where they come from.

    Rows: ``{"version", "window", "window_start", "window_end", "metric", "value",
    "n_labelled"}``, one per version, window of request time and metric (of
    ``QUALITY_METRICS``; a metric a window has no value of, as before its labels are due,
    is left out), by version, metric and window; ``window`` is the window's number since
    1970-01-01 (the registry's step), ``window_start``/``window_end`` ISO times (UTC).

    Info: ``{"source": "run" | "summary", "run_id", "as_of", "window_s", "model",
    "metrics": the names to plot first (the task's headline metric, then the metric of the
    loss the degradation test watches), "tests": {version: {"loss", "metric": the registry
    metric of that loss, "status", "degraded"}}}``; None when there is nothing to plot from.

    Where from, first that has rows: the registry's ``live_quality`` run the summary's
    quality check recorded (``data.run_id``); the summary's last window per version (a
    check run with ``--no-record``); the model's newest finished ``live_quality`` run
    (``lab monitor quality``, or no summary yet). The tests are the summary's when the rows
    are its own, else the run's (``v<version>.quality_degraded``)."""
    check = _check(monitor, "quality")
    data = check.get("data") if isinstance(check.get("data"), dict) else {}
    versions = data.get("versions") if isinstance(data.get("versions"), dict) else {}
    tests = {str(v): q["test"] for v, q in versions.items() if isinstance(q, dict) and isinstance(q.get("test"), dict)}
    model = (monitor or {}).get("model") or model
    rows, info, run = [], None, None
    if registry is not None and data.get("run_id"):
        try:
            run = registry.get_run(str(data["run_id"]))
        except NotFound:  # the registry was replaced since: the summary's own numbers
            run = None
    if run is not None:
        rows, info = _rows_of_run(registry, run)
    elif versions:
        rows, info = _rows_of_summary(versions)
    if not rows and run is None and registry is not None:
        run = next((r for r in registry.list_runs(kind=QUALITY_RUN_KIND, limit=50)
                    if r.get("status") == "finished" and r["params"].get("model") in (None, model)), None)
        if run is not None:
            rows, info = _rows_of_run(registry, run)
            tests = {v: {"loss": run["params"].get("quality.loss"), "status": None,
                         "degraded": bool(run["metrics"].get(f"v{v}.quality_degraded"))}
                     for v in sorted({str(r["version"]) for r in rows})}
    if info is None:
        return [], None
    from lab.monitoring._quality_stats import LOSSES, REGISTRY_METRIC  # numpy: loaded only where quality is shown

    present = {r["metric"] for r in rows}
    default = LOSSES["classification" if present & {"roc_auc", "brier", "log_loss"} else "regression"][0]
    info["model"] = model
    info["tests"] = {}
    for version, t in tests.items():
        loss = t.get("loss") if isinstance(t.get("loss"), str) else default  # None: the task's first loss
        info["tests"][version] = {"loss": loss, "metric": REGISTRY_METRIC.get(loss), "status": t.get("status"),
                                  "degraded": bool(t.get("degraded"))}
    # Plotted first: the task's headline metric (AUC, else MAE), then the tested loss's metric.
    wanted = [m for m in ("roc_auc", "mae") if m in present][:1]
    for t in info["tests"].values():
        if t["metric"] in present and t["metric"] not in wanted:
            wanted.append(t["metric"])
    info["metrics"] = wanted or [m for m in QUALITY_METRICS if m in present][:1]
    return rows, info


def _window(index: int, window_s: float) -> tuple[str, str]:
    start = _EPOCH + dt.timedelta(seconds=index * window_s)
    return start.isoformat(), (start + dt.timedelta(seconds=window_s)).isoformat()


def _rows_of_run(registry: Registry, run: dict) -> tuple[list[dict], dict]:
    """Rows from a ``live_quality`` run's metric history (``v<version>.<metric>`` at step =
    the window's number, ``params.window_s`` its length)."""
    window_s = _number(run["params"].get("window_s")) or 86400.0
    series: dict[tuple[int, str], list[dict]] = {}
    for key in run["metrics"]:
        version, _, metric = key.partition(".")
        if version[:1] == "v" and version[1:].isdigit() and (metric in QUALITY_METRICS or metric == "n_labelled"):
            series[(int(version[1:]), metric)] = [h for h in registry.metric_history(run["id"], key)
                                                  if h["step"] is not None]
    labelled = {(v, h["step"]): h["value"] for (v, m), hist in series.items() if m == "n_labelled" for h in hist}
    rows = []
    for (version, metric), hist in sorted(series.items()):
        if metric == "n_labelled":
            continue
        for h in hist:
            if h["value"] is None:
                continue
            start, end = _window(int(h["step"]), window_s)
            count = labelled.get((version, h["step"]))
            rows.append({"version": version, "window": int(h["step"]), "window_start": start, "window_end": end,
                         "metric": metric, "value": h["value"], "n_labelled": None if count is None else int(count)})
    rows.sort(key=lambda r: (r["version"], r["metric"], r["window"]))
    return rows, {"source": "run", "run_id": run["id"], "as_of": run["params"].get("as_of"), "window_s": window_s}


def _rows_of_summary(versions: dict) -> tuple[list[dict], dict]:
    """Rows from a monitor summary's quality check alone: each version's last window (the
    summary keeps no more); the windows' length from a window's number and start (its
    start is its number times the length after 1970-01-01)."""
    rows, window_s = [], None
    for version, q in versions.items():
        last = q.get("last_window") if isinstance(q, dict) else None
        if not (str(version).isdigit() and isinstance(last, dict) and isinstance(last.get("index"), int)
                and last.get("start") and isinstance(last.get("metrics"), dict)):
            continue
        try:
            start = dt.datetime.fromisoformat(str(last["start"]))
        except ValueError:
            continue
        naive = start.astimezone(dt.timezone.utc).replace(tzinfo=None) if start.tzinfo else start
        if last["index"]:
            window_s = (naive - _EPOCH).total_seconds() / last["index"]
        end = (naive + dt.timedelta(seconds=window_s)).isoformat() if window_s else None
        for metric, value in last["metrics"].items():
            if metric in QUALITY_METRICS and _number(value) is not None:
                rows.append({"version": int(version), "window": last["index"], "window_start": naive.isoformat(),
                             "window_end": end, "metric": metric, "value": float(value),
                             "n_labelled": last.get("n_labelled")})
    rows.sort(key=lambda r: (r["version"], r["metric"], r["window"]))
    return rows, {"source": "summary", "run_id": None, "as_of": None, "window_s": window_s}
