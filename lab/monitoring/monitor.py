"""``lab monitor``: every check of one served model in one pass, one report, one verdict.

A model in production is watched from several sides, and each has its own module; this
one runs them together over one window of days and says, in a small JSON summary and an
HTML page, which of them breach:

==============  ===========================================================================
check           what it compares (``lab.monitoring`` module)
==============  ===========================================================================
drift           the model's inputs in the window (live traffic from the ledger, or the
                offline store's events when the ledger holds too few) against the training
                data's ``ReferenceSketch`` (``drift``: KS or chi-square with BH across
                columns, judged with an effect size, power reported)
score_drift     the served scores in the window against the same version's first window
                of traffic (``drift`` on the ``score`` column): an early signal before
                labels arrive
freshness       each of the model's feature views: the share of served requests whose
                features were older than the view's objective (``lab.features.freshness``)
quality         the live quality of each version from the ledger and the labels due by
                the window's end, with its sequential test of degradation (``quality``)
volume          predictions per day: the window's last day against the median day before
                it (a drop under ``volume_drop`` of the median, or no traffic, breaches)
feedback        the feedback loop of the last ``days`` days of serving (``feedback``):
                exploration, holdout share, coverage and diversity of what was served;
                it breaches when a declared holdout got under half its share, or the
                served variants or scores collapsed (normalized entropy under
                ``min_diversity``)
==============  ===========================================================================

A check that cannot run (no ledger yet, too few rows, no labels due) is ``skipped`` with
the reason; only ``breach`` counts against the model. The verdict is recorded in the
registry (a ``monitor`` run: one metric per check, the summary as an artifact; drift
scores per column as the drift step records them), ``monitor.breached`` is emitted naming
the checks that breach (``drift.detected`` and ``quality.degraded`` too, as their own
modules emit them), and ``lab retrain`` reads the summary to decide whether to retrain.

Windows are days of the data's own clock: the request time of a logged prediction, the
event time of an offline row. The window ends on ``end`` (default: the newest request in
the ledger, else the newest event of the source) and spans ``days`` days.

Settings: ``[tool.lab.monitor]`` (``MonitorConfig``).
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import datetime as dt
import io
import json
from dataclasses import dataclass, field
from html import escape
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from lab import events
from lab.atomic import atomic_write_text
from lab.config import LabConfig, build_section
from lab.errors import ConfigError, LabError
from lab.monitoring._drift_windows import _day
from lab.monitoring._quality_result import json_safe

MONITOR_BREACHED = "monitor.breached"
RUN_KIND = "monitor"
SUMMARY = "data/monitor.json"
PAGE = "data/monitor.html"
CHECKS = ("drift", "score_drift", "freshness", "quality", "volume", "feedback")


@dataclass(frozen=True)
class MonitorConfig:
    """``[tool.lab.monitor]``: what ``lab monitor`` checks and when a check breaches."""

    days: int = 7  # the window: this many days, ending on the newest request (or event)
    min_rows: int = 200  # live rows a window needs for a drift check on traffic; fewer: the offline store's
    volume_drop: float = 0.5  # the last day with fewer predictions than this share of the median day breaches
    max_freshness_breach_rate: float = 0.01  # a view serving more requests than this share past its objective
    checks: tuple[str, ...] = CHECKS  # the checks to run
    labels: str | None = None  # a label table (Parquet/CSV) for quality; default: the model's offline source
    min_diversity: float = 0.05  # served variants or score buckets with a normalized entropy under this breach

    def __post_init__(self) -> None:
        where = "[tool.lab.monitor]"
        if isinstance(self.days, bool) or not isinstance(self.days, int) or self.days < 1:
            raise ConfigError(f"{where} days must be a whole number of days >= 1, got {self.days!r}")
        if isinstance(self.min_rows, bool) or not isinstance(self.min_rows, int) or self.min_rows < 1:
            raise ConfigError(f"{where} min_rows must be a whole number >= 1, got {self.min_rows!r}")
        if not 0 <= self.volume_drop <= 1:
            raise ConfigError(f"{where} volume_drop must be a share between 0 and 1, got {self.volume_drop!r}")
        if not 0 <= self.min_diversity <= 1:
            raise ConfigError(f"{where} min_diversity must be between 0 and 1, got {self.min_diversity!r}")
        if not 0 <= self.max_freshness_breach_rate <= 1:
            raise ConfigError(f"{where} max_freshness_breach_rate must be a share between 0 and 1, "
                              f"got {self.max_freshness_breach_rate!r}")
        unknown = [c for c in self.checks if c not in CHECKS]
        if unknown:
            raise ConfigError(f"{where} checks has unknown check(s) {', '.join(map(repr, unknown))}; "
                              f"choose from {', '.join(CHECKS)}")
        object.__setattr__(self, "checks", tuple(self.checks))

    @classmethod
    def from_config(cls, config: LabConfig, **overrides: Any) -> "MonitorConfig":
        values = {**(config.section("monitor") or {}), **{k: v for k, v in overrides.items() if v is not None}}
        return build_section(cls, values, "tool.lab.monitor")


@dataclass
class Check:
    """One check's outcome: ``status`` is ``ok``, ``breach`` or ``skipped``; ``detail`` is
    one sentence; ``data`` the numbers behind it (JSON-safe)."""

    name: str
    status: str
    detail: str
    data: dict = field(default_factory=dict)


@dataclass
class MonitorResult:
    """What ``run_monitor`` found for one model over one window."""

    model: str
    version: int | None
    start: dt.date
    end: dt.date
    checks: dict[str, Check]
    run_id: str | None = None
    summary_path: str | None = None
    page_path: str | None = None
    figures: dict[str, bytes] = field(default_factory=dict, repr=False)

    @property
    def breaches(self) -> list[str]:
        return [name for name, check in self.checks.items() if check.status == "breach"]

    @property
    def status(self) -> str:
        return "breach" if self.breaches else "ok"

    def to_dict(self) -> dict:
        return json_safe({
            "model": self.model, "version": self.version, "start": self.start.isoformat(),
            "end": self.end.isoformat(), "status": self.status, "breaches": self.breaches,
            "run_id": self.run_id, "report": self.page_path,
            "checks": {name: dataclasses.asdict(check) for name, check in self.checks.items()},
        })

    def table(self) -> str:
        lines = [f"monitor {self.model}" + (f" v{self.version}" if self.version is not None else "")
                 + f", {self.start} .. {self.end}: {self.status.upper()}"]
        width = max(len(name) for name in self.checks) if self.checks else 0
        for name, check in self.checks.items():
            lines.append(f"  {name:<{width}}  {check.status:<7}  {check.detail}")
        return "\n".join(lines)


# -- the checks ------------------------------------------------------------------------------


class _Context:
    """What the checks share: the lab, the model, its logged traffic, the window."""

    def __init__(self, config: LabConfig, pm: Any, spec: Any, settings: MonitorConfig, end: Any):
        self.config, self.pm, self.spec, self.settings = config, pm, spec, settings
        self.logged = _logged(config, spec)
        self.end = _day(end, "end") if end is not None else self._newest_day()
        self.start = self.end - dt.timedelta(days=settings.days - 1)

    def _newest_day(self) -> dt.date:
        if self.logged is not None and self.logged.height:
            return self.logged.requests[self.spec.time_column].max().date()
        try:
            with self.offline() as offline:
                times = offline.read_source(self.spec.source, columns=[self.spec.time_column]).column(0)
            newest = pl.from_arrow(times).max() if len(times) else None
        except LabError:
            newest = None
        if newest is None:
            raise LabError(f"model {self.spec.name!r} has no logged prediction and no source event to date the "
                           "window by; pass --end YYYY-MM-DD")
        return newest.date() if isinstance(newest, dt.datetime) else newest

    @contextlib.contextmanager
    def offline(self):
        """The lab's offline store, closed after use."""
        store = self.pm.hook.lab_offline_store(config=self.config)
        try:
            yield store
        finally:
            close = getattr(store, "close", None)
            if close is not None:
                close()

    def days(self, first: dt.date, last: dt.date):
        from lab.monitoring.skew import select_days

        if self.logged is None:
            return None
        return select_days(self.logged, self.spec, first, last)


def _logged(config: LabConfig, spec: Any):
    """The model's answered predictions in the ledger (fallbacks left out), or None without a ledger."""
    from lab.monitoring.skew import logged_predictions
    from lab.serving.ledger import read_predictions

    if not config.ledger_path.exists():
        return None
    try:
        rows = read_predictions(config.ledger_path, model_name=spec.name)
    except LabError:
        return None
    rows = [row for row in rows if row.get("fallback") is None]
    return logged_predictions(spec, rows) if rows else None


def _reference(ctx: _Context):
    """The training data's reference for drift: the drift step's sketch when it is this
    model's, else the training set's rows (``data/trainset.parquet``)."""
    from lab.monitoring.drift import ReferenceSketch

    sketch_path = ctx.config.root / "data" / "drift_reference.json"
    if sketch_path.exists():
        try:
            sketch = ReferenceSketch.load(sketch_path)
        except LabError:
            sketch = None
        if sketch is not None and (getattr(sketch, "meta", {}) or {}).get("model") in (None, ctx.spec.name):
            return sketch, f"training sketch {sketch_path.relative_to(ctx.config.root)}"
    trainset = ctx.config.root / "data" / "trainset.parquet"
    if trainset.exists():
        frame = pl.read_parquet(trainset)
        columns = [c for c in ctx.spec.features if c in frame.columns]
        if columns:
            return frame.select(columns), f"training set {trainset.relative_to(ctx.config.root)}"
    return None, "no training sketch or training set; run the features and drift stages"


def check_drift(ctx: _Context) -> Check:
    from lab.monitoring.drift import compare, offline_window

    reference, described = _reference(ctx)
    if reference is None:
        return Check("drift", "skipped", described)
    live = ctx.days(ctx.start, ctx.end)
    columns = list(ctx.spec.features)
    if live is not None and live.height >= ctx.settings.min_rows:
        current, source = live.features.select(columns), f"{live.height} live predictions"
    else:
        views = [v for v in _views(ctx) if v.name in set(ctx.spec.views)]
        try:
            with ctx.offline() as offline:
                current = offline_window(offline, ctx.spec, ctx.start, ctx.end, views=views)
        except LabError as exc:
            return Check("drift", "skipped", f"no live traffic to compare and the offline window failed: {exc}")
        have = 0 if live is None else live.height
        source = f"{current.height} offline events (the ledger has {have} in the window, under min_rows " \
                 f"{ctx.settings.min_rows})"
        if current.height == 0:
            return Check("drift", "skipped", f"no event in {ctx.start} .. {ctx.end}")
    report = compare(reference, current, columns)
    flagged = report.flagged
    data = {"reference": described, "current": source, "flagged": flagged,
            "underpowered": report.underpowered, "columns": report.scores()}
    if flagged:
        return Check("drift", "breach", f"{len(flagged)} of {len(columns)} inputs drifted: {', '.join(flagged)} "
                     f"({source} against the {described})", data)
    return Check("drift", "ok", f"no input drifted ({source} against the {described})", data)


def check_score_drift(ctx: _Context) -> Check:
    from lab.monitoring.drift import compare

    if ctx.logged is None:
        return Check("score_drift", "skipped", "no logged prediction yet (the ledger is empty)")
    meta = ctx.logged.meta.with_columns(day=ctx.logged.requests[ctx.spec.time_column].dt.date())
    version = int(meta["model_version"][-1])
    mine = meta.filter(pl.col("model_version") == version)
    first = mine["day"].min()
    ref = mine.filter(pl.col("day") < first + dt.timedelta(days=ctx.settings.days))
    cur = mine.filter((pl.col("day") >= ctx.start) & (pl.col("day") <= ctx.end))
    if ref["day"].max() is not None and ref["day"].max() >= ctx.start:
        return Check("score_drift", "skipped", f"v{version}'s first {ctx.settings.days} days of traffic overlap "
                     f"the window; scores are compared once a later window exists", {"version": version})
    if ref.height < ctx.settings.min_rows or cur.height < ctx.settings.min_rows:
        return Check("score_drift", "skipped", f"too few scores (first window {ref.height}, this window "
                     f"{cur.height}; min_rows {ctx.settings.min_rows})", {"version": version})
    report = compare(ref.select("score"), cur.select("score"), ["score"])
    column = report.scores()["score"]
    data = {"version": version, "reference_rows": ref.height, "current_rows": cur.height, "score": column,
            "reference_mean": float(ref["score"].mean()), "current_mean": float(cur["score"].mean())}
    if report.flagged:
        return Check("score_drift", "breach", f"v{version}'s scores moved from their first {ctx.settings.days} "
                     f"days (mean {data['reference_mean']:.4g} -> {data['current_mean']:.4g})", data)
    return Check("score_drift", "ok", f"v{version}'s scores as in its first {ctx.settings.days} days", data)


def check_freshness(ctx: _Context) -> Check:
    from lab.features.freshness import ledger_ages, view_status

    views = [v for v in _views(ctx) if v.name in set(ctx.spec.views)]
    if not views:
        return Check("freshness", "skipped", "the model reads no feature view")
    now = dt.datetime.now(dt.timezone.utc)
    since = now - dt.timedelta(days=ctx.settings.days)
    ages = ledger_ages(ctx.config.ledger_path, since, ctx.spec.name) if ctx.config.ledger_path.exists() else {}
    online = ctx.pm.hook.lab_online_store(config=ctx.config)
    try:
        rows = [view_status(view, online.state(view), ages.get(view.name, []), now) for view in views]
    finally:
        online.close()
    limit = ctx.settings.max_freshness_breach_rate
    late = [r["view"] for r in rows if r["breach_rate"] is not None and r["breach_rate"] > limit]
    never = [r["view"] for r in rows if r["watermark"] is None]
    data = {"views": rows, "limit": limit, "breaching": late, "never_materialized": never}
    if late or never:
        parts = ([f"{', '.join(late)} served over {limit:.1%} of requests past the objective"] if late else []) \
            + ([f"{', '.join(never)} never materialized"] if never else [])
        return Check("freshness", "breach", "; ".join(parts), data)
    served = sum(r["requests"] for r in rows)
    if not served:
        return Check("freshness", "ok", f"{len(views)} view(s) materialized; no served request in the last "
                     f"{ctx.settings.days} days to measure", data)
    return Check("freshness", "ok", f"{len(views)} view(s) within their objectives ({served} feature reads)", data)


def check_quality(ctx: _Context, record: bool) -> Check:
    from lab.monitoring.quality import QualityMonitor

    if ctx.logged is None:
        return Check("quality", "skipped", "no logged prediction yet (the ledger is empty)")
    as_of = dt.datetime.combine(ctx.end + dt.timedelta(days=1), dt.time())
    monitor = QualityMonitor(ctx.config, ctx.spec, labels=ctx.settings.labels, pm=ctx.pm, record=record)
    try:
        result = monitor.check(as_of=as_of)
    except LabError as exc:
        return Check("quality", "skipped", f"cannot measure live quality: {exc}")
    summary = result.to_dict()
    labelled = {v: sum(w["n_labelled"] for w in q["windows"]) for v, q in summary["versions"].items()}
    data = {"degraded": result.degraded, "labelled": labelled, "run_id": result.run_id,
            "versions": {v: {"test": q["test"], "last_window": (q["windows"] or [None])[-1]}
                         for v, q in summary["versions"].items()}}
    if result.degraded:
        return Check("quality", "breach", f"version(s) {', '.join(map(str, result.degraded))} degraded (sequential "
                     f"test at alpha {result.settings.alpha:g})", data)
    if not any(labelled.values()):
        return Check("quality", "skipped", f"no label due by {as_of.date()} yet (label delay "
                     f"{result.label_delay})", data)
    return Check("quality", "ok", f"no version degraded ({sum(labelled.values())} labelled predictions)", data)


def check_volume(ctx: _Context) -> Check:
    if ctx.logged is None:
        return Check("volume", "skipped", "no logged prediction yet (the ledger is empty)")
    days = ctx.logged.requests[ctx.spec.time_column].dt.date()
    counts = days.value_counts().sort(days.name)
    per_day = dict(zip(counts[days.name].to_list(), counts["count"].to_list()))
    before = [n for day, n in per_day.items() if day < ctx.end and day >= ctx.start - dt.timedelta(days=28)]
    last = per_day.get(ctx.end, 0)
    series = {(ctx.start + dt.timedelta(days=i)).isoformat(): per_day.get(ctx.start + dt.timedelta(days=i), 0)
              for i in range(ctx.settings.days)}
    data = {"per_day": series, "last_day": last}
    if not before:
        return Check("volume", "skipped", f"no earlier day to compare {ctx.end} ({last} predictions) with", data)
    median = float(np.median(before))
    data["median_day"] = median
    floor = ctx.settings.volume_drop * median
    if last < floor or (last == 0 and median > 0):
        return Check("volume", "breach", f"{last} predictions on {ctx.end}, under {ctx.settings.volume_drop:.0%} of "
                     f"the median day ({median:g})", data)
    return Check("volume", "ok", f"{last} predictions on {ctx.end} (median day {median:g})", data)


def check_feedback(ctx: _Context) -> Check:
    from lab.monitoring.feedback import feedback_for

    if ctx.logged is None:
        return Check("feedback", "skipped", "no logged prediction yet (the ledger is empty)")
    reports = [r for r in feedback_for(ctx.config, window=dt.timedelta(days=ctx.settings.days), model=ctx.spec.name)
               if r.n_rows]
    if not reports:
        return Check("feedback", "skipped", f"no prediction served in the last {ctx.settings.days} days")
    data = {"reports": [r.to_dict() for r in reports]}
    problems = []
    for r in reports:
        name = r.experiment or r.model
        if r.declared_holdout_share and (r.holdout_share or 0.0) < 0.5 * r.declared_holdout_share:
            problems.append(f"{name}: holdout {r.holdout_share or 0:.1%} of traffic, declared "
                            f"{r.declared_holdout_share:.1%}")
        for d in (r.variants, r.items):
            if d is not None and d.entropy is not None and d.categories > 1 and d.entropy < ctx.settings.min_diversity:
                problems.append(f"{name}: the served {d.of} collapsed (normalized entropy {d.entropy:.2f})")
    if problems:
        return Check("feedback", "breach", "; ".join(problems), data)
    first = reports[0]
    shown = (f"exploration {first.exploration_share:.1%}, " if first.exploration_share is not None else "") + \
        (f"unit coverage {first.unit_coverage:.1%}, " if first.unit_coverage is not None else "")
    return Check("feedback", "ok", f"{shown}{sum(r.n_decisions for r in reports)} model decisions; no collapse", data)


def _views(ctx: _Context) -> list:
    from lab.plugins import feature_views

    return list(feature_views(ctx.pm, ctx.config).values())


# -- the run ---------------------------------------------------------------------------------


def run_monitor(config: LabConfig, pm: Any = None, *, model: str | None = None, end: Any = None,
                days: int | None = None, checks: tuple[str, ...] | None = None, out_dir: Path | None = None,
                record: bool = True, emit: bool = True) -> MonitorResult:
    """Run the checks of ``model`` (default: the lab's) over ``days`` days ending ``end``,
    write ``monitor.json`` and ``monitor.html`` (under ``out_dir``, default ``data/``),
    record the run in the registry and emit ``monitor.breached`` when a check breaches
    (``record``/``emit`` False: neither). Raises LabError for an unknown model or bad settings."""
    from lab.plugins import get_plugin_manager, model_spec

    pm = pm if pm is not None else get_plugin_manager(config)
    settings = MonitorConfig.from_config(config, days=days, checks=list(checks) if checks is not None else None)
    spec = model_spec(pm, config, model)
    ctx = _Context(config, pm, spec, settings, end)
    result = MonitorResult(model=spec.name, version=None, start=ctx.start, end=ctx.end, checks={})
    if ctx.logged is not None and ctx.logged.height:
        result.version = int(ctx.logged.meta["model_version"][-1])
    else:  # no traffic yet: the version monitored is the champion
        from lab.registry import Registry

        with Registry.open(config.registry_path, project_root=config.root) as registry:
            champion = registry.get_alias(spec.name, "champion")
        result.version = champion.version if champion is not None else None
    runners = {"drift": check_drift, "score_drift": check_score_drift, "freshness": check_freshness,
               "quality": lambda c: check_quality(c, record), "volume": check_volume, "feedback": check_feedback}
    for name in settings.checks:
        result.checks[name] = runners[name](ctx)
    result.figures = _figures(result)
    out = Path(out_dir) if out_dir is not None else config.data_path
    out.mkdir(parents=True, exist_ok=True)
    result.summary_path, result.page_path = str(out / "monitor.json"), str(out / "monitor.html")
    if record:
        result.run_id = _record(config, result)
    atomic_write_text(Path(result.page_path), _page(result))
    atomic_write_text(Path(result.summary_path), json.dumps(result.to_dict(), indent=2))
    if emit and result.breaches:
        events.emit(pm, MONITOR_BREACHED, model=spec.name, version=result.version, checks=result.breaches,
                    report=result.page_path)
    if emit and "drift" in result.breaches:
        events.emit(pm, events.DRIFT_DETECTED, model=spec.name, columns=result.checks["drift"].data["flagged"])
    return result


def _record(config: LabConfig, result: MonitorResult) -> str:
    from lab.registry import Registry

    metrics = {f"{name}_breach": float(check.status == "breach") for name, check in result.checks.items()}
    drift = result.checks.get("drift")
    if drift is not None and drift.status != "skipped":
        metrics["drift_flagged"] = float(len(drift.data["flagged"]))
    with Registry.open(config.registry_path, project_root=config.root) as registry:
        run_id = registry.start_run(kind=RUN_KIND, params={
            "model": result.model, "version": result.version, "start": result.start.isoformat(),
            "end": result.end.isoformat(), "checks": list(result.checks)})
        registry.log_metrics(run_id, metrics)
        if drift is not None and drift.status != "skipped":
            registry.record_drift(run_id, model_name=result.model, model_version=result.version,
                                  reference=drift.data["reference"], current=drift.data["current"],
                                  scores=drift.data["columns"])
        registry.log_artifact(run_id, "monitor_summary", result.summary_path)
        registry.log_artifact(run_id, "monitor_report", result.page_path)
        registry.finish_run(run_id, "finished")
    return run_id


# -- the page --------------------------------------------------------------------------------


def _figures(result: MonitorResult) -> dict[str, bytes]:
    """PNG figures (matplotlib without pyplot): drift effect per input, volume per day,
    quality per window. Empty when matplotlib is missing."""
    try:
        from matplotlib.figure import Figure
    except ImportError:  # pragma: no cover - matplotlib ships with the project
        return {}
    out: dict[str, bytes] = {}

    def png(fig) -> bytes:
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
        return buffer.getvalue()

    drift = result.checks.get("drift")
    if drift is not None and drift.data.get("columns"):
        columns = drift.data["columns"]
        names = list(columns)
        effects = [float(columns[n].get("score") or 0.0) for n in names]
        colors = ["#d62728" if n in drift.data["flagged"] else "#1f77b4" for n in names]
        fig = Figure(figsize=(7, 0.25 * len(names) + 1))
        ax = fig.subplots()
        ax.barh(names, effects, color=colors)
        ax.invert_yaxis()
        ax.set_xlabel("effect size (red: flagged)")
        ax.set_title("input drift against the training data")
        out["drift"] = png(fig)
    volume = result.checks.get("volume")
    if volume is not None and volume.data.get("per_day"):
        days, counts = zip(*volume.data["per_day"].items())
        fig = Figure(figsize=(7, 2.5))
        ax = fig.subplots()
        ax.bar([d[5:] for d in days], counts, color="#2ca02c")
        if volume.data.get("median_day") is not None:
            ax.axhline(volume.data["median_day"], color="black", linestyle=":", label="median day")
            ax.legend()
        ax.set_title("predictions per day")
        out["volume"] = png(fig)
    quality = result.checks.get("quality")
    if quality is not None and quality.data.get("versions"):
        fig = Figure(figsize=(7, 2.5))
        ax = fig.subplots()
        for version, q in quality.data["versions"].items():
            test = q.get("test") or {}
            low, high = test.get("ci_lower"), test.get("ci_upper")
            if isinstance(low, (int, float)) and isinstance(high, (int, float)):
                ax.plot([f"v{version}"] * 2, [low, high], linewidth=6,
                        color="#d62728" if test.get("degraded") else "#1f77b4")
        ax.axhline(0.0, color="black", linestyle=":")
        ax.set_title("live loss minus its tolerated baseline: confidence sequence per version")
        out["quality"] = png(fig)
    return out


def _page(result: MonitorResult) -> str:
    rows = "".join(
        f"<tr class='{escape(c.status)}'><td>{escape(name)}</td><td>{escape(c.status)}</td>"
        f"<td>{escape(c.detail)}</td></tr>" for name, c in result.checks.items())
    figures = "".join(
        f"<h2>{escape(name)}</h2><img alt='{escape(name)}' src='data:image/png;base64,"
        f"{base64.b64encode(data).decode()}'>" for name, data in result.figures.items())
    details = "".join(
        f"<details><summary>{escape(name)}: numbers</summary><pre>"
        f"{escape(json.dumps(json_safe(c.data), indent=1)[:20000])}</pre></details>"
        for name, c in result.checks.items())
    title = f"monitor: {result.model}" + (f" v{result.version}" if result.version is not None else "")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{escape(title)}</title><style>"
            "body{font-family:sans-serif;margin:2em;max-width:60em}td{padding:.2em .6em;vertical-align:top}"
            ".breach{background:#fdd}.skipped{color:#777}</style></head><body>"
            f"<h1>{escape(title)}</h1><p>{result.start} .. {result.end}: <b>{escape(result.status)}</b></p>"
            f"<table><tr><th>check</th><th>status</th><th>detail</th></tr>{rows}</table>{figures}{details}"
            "</body></html>")
