"""Live quality of a served model, per version, from the prediction ledger and labels that
arrive late.

Every prediction the server makes is in the ledger (``lab.serving.ledger``) with the
event id it scored, its score and the model version. Labels come later (a chargeback is
confirmed a week after the payment, a delivery's duration once it arrives). For one
model, ``live_quality`` joins the two by event id (``ModelSpec.request.id``), using only
the labels known by ``as_of``: a label counts once its event time (the spec's
``request.timestamp`` column of the label table) plus the label delay has passed. Then,
per model version:

- per window of request time (``window``, default one day; windows start at multiples of
  the window since 1970-01-01 UTC, so daily windows are calendar days): counts
  (predictions, labelled, pending: labelled but not known yet, unlabelled), the quality
  metrics of the labelled rows (classification: ROC AUC, average precision, precision at
  k, log loss, Brier score; regression: MAE, RMSE, mean error), and the early signals
  that need no label (the score distribution, the share of scores above the decision
  threshold, and its PSI against the version's first windows);
- a sequential test of degradation (``_quality_stats.degradation_test``): the mean
  per-row loss (Brier or log loss; absolute or squared error) of the version's live rows
  against a baseline, by the experiments package's mixture SPRT. Its p-value is always
  valid and its confidence sequence holds at every look at once, so the check can run
  every day for as long as the version serves with the false-alarm probability, over
  all those checks together, at most ``alpha``.

The baseline, per version (``baseline``):

- ``"early"`` (the default): the version's own first ``baseline_windows`` windows of
  traffic, from its first prediction in the ledger (for a champion: its promotion). The
  test starts once their labels are all due (their end plus the label delay), and
  compares the later rows with them (two-sample, pooled variance). It needs no offline
  number, and it measures decay relative to how the version did live.
- ``"registry"``: the offline metric recorded for the version in the registry
  (``brier``/``log_loss`` when the evaluation recorded one; ``mae``; ``rmse`` squared
  for the squared error), a known number: every labelled row is live.
- a number (or ``{version: number}``): that mean loss.

Looks are in label-arrival order: at each window boundary of the time labels became
known, up to ``as_of``, plus ``as_of`` itself. Checking again tomorrow adds looks; it does
not reshuffle the old ones. The live rows are tested in segments of ``segment_windows``
windows of request time (a week of daily windows), each against the baseline at its share
``alpha · 6/(π²(s+1)²)`` of the level: a decay after months of good service is diluted
by at most one segment, not by the months (``_quality_stats.watch``). Degraded means a
segment's confidence sequence of ``live mean loss - (1 + tolerance) · baseline mean
loss`` lies wholly above 0; an improvement makes the p-value small but is not a
degradation.

``QualityMonitor`` runs the check repeatedly: it emits ``quality.degraded`` once per
breach (per model, version and baseline; the registry's audit log remembers it across
processes) and records each check's window metrics in the registry as a ``live_quality``
run (``log_metrics``: ``v<version>.<metric>`` at step = the window's number). ``lab monitor
quality`` is its command. Settings: ``[tool.lab.quality]`` (``QualityConfig``).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

import numpy as np
import polars as pl

from lab.config import DriftConfig, LabConfig, build_section, load_config
from lab.errors import ConfigError, LabError, NotFound
from lab.events import emit
from lab.experiments.outcomes import as_naive_utc, describe
from lab.experiments.quality import label_frame
from lab.modelspec import ModelSpec
from lab.monitoring._quality_data import VersionRows, join, labels_from_source, ledger_rows, ledger_state, predictions
from lab.monitoring._quality_result import LiveQuality, QualityTest, VersionQuality, WindowQuality, json_safe
from lab.monitoring._quality_stats import (
    LOSSES,
    REGISTRY_METRIC,
    classification_metrics,
    regression_metrics,
    row_losses,
    watch,
)
from lab.monitoring.drift import compare
from lab.monitoring.skew import psi
from lab.plugins import feature_views, get_plugin_manager, model_spec
from lab.registry import Registry

__all__ = ["QUALITY_DEGRADED", "RUN_KIND", "LiveQuality", "QualityConfig", "QualityMonitor", "QualityTest",
           "VersionQuality", "WindowQuality", "duration", "live_quality", "record_quality"]

QUALITY_DEGRADED = "quality.degraded"
"""The event ``QualityMonitor`` emits once per breach (``lab_on_event``), also kept in the
registry's audit log."""

RUN_KIND = "live_quality"
"""The registry run kind of a recorded check."""

_EPOCH = np.datetime64("1970-01-01T00:00:00", "us")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")


def duration(value: Any, what: str) -> dt.timedelta:
    """A positive length of time from a timedelta, seconds, or text such as ``"1d"``,
    ``"6h"``, ``"30m"``, ``"90s"``, ``"2w"``."""
    if isinstance(value, dt.timedelta):
        out = value
    elif isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        out = dt.timedelta(seconds=value)
    elif isinstance(value, str) and (match := _DURATION.match(value)):
        out = dt.timedelta(seconds=float(match[1]) * _UNITS[match[2]])
    else:
        raise ConfigError(f"{what} {value!r} is not a length of time; write e.g. \"1d\", \"6h\", \"30m\" or seconds")
    if out < dt.timedelta(0):
        raise ConfigError(f"{what} must not be negative, got {value!r}")
    return out


@dataclass(frozen=True)
class QualityConfig:
    """``[tool.lab.quality]``: how live quality is computed and when it alarms."""

    window: str = "1d"  # the windows of request time the metrics are computed over
    alpha: float = 0.05  # false-alarm probability per version, over every repeated check together
    tolerance: float = 0.0  # alarm only when the live mean loss exceeds (1 + tolerance) x the baseline's
    min_effect: float = 0.2  # the relative degradation the test finds fastest (its mixing scale)
    loss: str | None = None  # brier | log_loss (classification), absolute_error | squared_error; None: the first
    baseline: str = "early"  # "early": the version's first windows; "registry": its offline metric
    baseline_windows: int = 3  # windows of request time, from the version's first prediction, in the early baseline
    segment_windows: int = 7  # live rows are tested in segments of this many windows (0: one segment, no end)
    min_labelled: int = 100  # no decision before this many labelled rows on each side (skewed losses)
    precision_k: float = 0.01  # precision at k: a share of the labelled rows (< 1) or a count (>= 1)
    threshold: float = 0.5  # classification: the decision threshold of "share above threshold"
    psi_bins: int = 10  # quantile bins of the baseline's scores for the score PSI
    max_psi: float = 0.2  # a window whose score PSI is above this is flagged (an early signal)
    label_delay: str | None = None  # e.g. "7d"; None: the longest label_delay of the model's feature views

    def __post_init__(self) -> None:
        where = "[tool.lab.quality]"
        if duration(self.window, f"{where} window") <= dt.timedelta(0):
            raise ConfigError(f"{where} window must be longer than 0, got {self.window!r}")
        if self.label_delay is not None:
            duration(self.label_delay, f"{where} label_delay")
        if not 0 < self.alpha < 1:
            raise ConfigError(f"{where} alpha must be between 0 and 1 (the false-alarm level), got {self.alpha!r}")
        if not (math.isfinite(self.tolerance) and self.tolerance >= 0):
            raise ConfigError(f"{where} tolerance must be 0 or more (a share of the baseline loss), "
                              f"got {self.tolerance!r}")
        if not (math.isfinite(self.min_effect) and self.min_effect > 0):
            raise ConfigError(f"{where} min_effect must be above 0 (a share of the baseline loss), "
                              f"got {self.min_effect!r}")
        known = [n for names in LOSSES.values() for n in names]
        if self.loss is not None and self.loss not in known:
            raise ConfigError(f"{where} loss {self.loss!r} is not one of {', '.join(known)}")
        if self.baseline not in ("early", "registry"):
            raise ConfigError(f"{where} baseline must be \"early\" or \"registry\" (or pass a number to "
                              f"live_quality), got {self.baseline!r}")
        if self.segment_windows < 0:
            raise ConfigError(f"{where} segment_windows must be 0 (one segment) or more, got {self.segment_windows!r}")
        for name in ("baseline_windows", "min_labelled", "psi_bins"):
            if getattr(self, name) < (2 if name == "psi_bins" else 1):
                raise ConfigError(f"{where} {name} must be {'2' if name == 'psi_bins' else '1'} or more, "
                                  f"got {getattr(self, name)!r}")
        if not (math.isfinite(self.precision_k) and self.precision_k > 0):
            raise ConfigError(f"{where} precision_k must be a share in (0, 1) or a count >= 1, "
                              f"got {self.precision_k!r}")
        if not math.isfinite(self.threshold) or not (math.isfinite(self.max_psi) and self.max_psi >= 0):
            raise ConfigError(f"{where} threshold must be finite and max_psi 0 or more")

    @classmethod
    def from_config(cls, config: LabConfig) -> "QualityConfig":
        """The lab's ``[tool.lab.quality]`` table (every key optional)."""
        return build_section(cls, config.section("quality") or {}, "tool.lab.quality")

    @property
    def window_length(self) -> dt.timedelta:
        return duration(self.window, "window")


# -- reading ----------------------------------------------------------------------------------

def _resolve(config_or_root: Any, spec: Any, pm: Any):
    config = config_or_root if isinstance(config_or_root, LabConfig) else load_config(config_or_root)
    if isinstance(spec, ModelSpec):
        return config, spec, pm
    if spec is not None and not isinstance(spec, str):
        raise ConfigError(f"spec must be a ModelSpec or a model's name, got {type(spec).__name__}")
    pm = pm if pm is not None else get_plugin_manager(config)
    return config, model_spec(pm, config, spec), pm


def _label_delay(config: LabConfig, spec: ModelSpec, settings: QualityConfig, pm: Any) -> dt.timedelta:
    """``label_delay`` if set; else the longest ``label_delay`` of the model's feature views
    (as online quality per variant reads it); else ``[tool.lab.train] delta_delay`` days."""
    if settings.label_delay is not None:
        return duration(settings.label_delay, "[tool.lab.quality] label_delay")
    pm = pm if pm is not None else get_plugin_manager(config)
    views = feature_views(pm, config)
    delays = [views[name].label_delay for name in spec.views if name in views]
    return max(delays) if delays else dt.timedelta(days=config.train.delta_delay)


# -- computing --------------------------------------------------------------------------------

def _window_of(times: np.ndarray, window_us: int) -> np.ndarray:
    return (times - _EPOCH).astype(np.int64) // window_us


def _start_of(index: int, window_us: int) -> dt.datetime:
    return (_EPOCH + np.timedelta64(int(index) * window_us, "us")).astype(dt.datetime)


def _labelled_metrics(task: str, y: np.ndarray, score: np.ndarray, settings: QualityConfig) -> tuple[dict, str]:
    if task == "classification":
        return classification_metrics(y, score, settings.precision_k)
    return regression_metrics(y, score)


def _signals(score: np.ndarray, reference: np.ndarray, task: str, settings: QualityConfig) -> dict:
    index = psi(reference, score, settings.psi_bins) if score.size and reference.size else None
    return {
        "score_mean": float(score.mean()) if score.size else None,
        "score_p50": float(np.median(score)) if score.size else None,
        "above_threshold": float(np.mean(score > settings.threshold)) if score.size and task == "classification"
        else None,
        "psi": index,
        "psi_flagged": bool(index is not None and index > settings.max_psi),
    }


def _baseline_mean(baseline: Any, version: int, loss: str, registry_metrics: Any) -> tuple[str, float]:
    """``("registry" | "given", mean loss)`` for a baseline that is not the early windows."""
    if isinstance(baseline, Mapping):
        if version not in baseline:
            raise LabError(f"baseline= gives no mean loss for version {version}; it names "
                           f"{', '.join(map(str, baseline)) or 'none'}")
        baseline = baseline[version]
    if baseline == "registry":
        metrics = registry_metrics(version)
        name = REGISTRY_METRIC[loss]
        if name not in metrics or not isinstance(metrics[name], (int, float)):
            raise LabError(f"version {version} records no {name!r} in the registry (it has: "
                           f"{', '.join(sorted(metrics)) or 'none'}), so its offline {loss} is unknown; use "
                           "baseline=\"early\" or pass the mean loss as a number")
        value = float(metrics[name]) ** (2 if loss == "squared_error" else 1)
        return "registry", value
    if isinstance(baseline, bool) or not isinstance(baseline, (int, float)) or not math.isfinite(baseline) \
            or baseline <= 0:
        raise LabError(f"baseline must be \"early\", \"registry\", a mean {loss} above 0 or {{version: mean}}, "
                       f"got {baseline!r}")
    return "given", float(baseline)


def _test(rows: VersionRows, known: np.ndarray, windows: np.ndarray, loss: str, baseline: Any, version: int,
          as_of: dt.datetime, window_us: int, delay: dt.timedelta, settings: QualityConfig,
          registry_metrics: Any) -> QualityTest:
    common = dict(loss=loss, tolerance=settings.tolerance, min_effect=settings.min_effect, alpha=settings.alpha)
    as_of64 = np.datetime64(as_of, "us")
    losses = row_losses(loss, rows.label, rows.score)
    first_window = int(windows.min())
    if baseline == "early":
        live_from = first_window + settings.baseline_windows
        ready_at = _start_of(live_from, window_us) + delay
        in_base = known & (windows < live_from) & (rows.known_at <= np.datetime64(ready_at, "us"))
        base = losses[in_base]
        base_n = int(base.size)
        mean = float(base.mean()) if base_n else None
        label = f"early ({_start_of(first_window, window_us):%Y-%m-%d %H:%M} .. " \
                f"{_start_of(live_from, window_us):%Y-%m-%d %H:%M})"
        if as_of < ready_at:
            return QualityTest(baseline=label, baseline_mean=mean, baseline_n=base_n, status="baseline pending",
                               note=f"the early baseline's labels are all due at {ready_at.isoformat(sep=' ')}", **common)
        if base_n < settings.min_labelled:
            return QualityTest(baseline=label, baseline_mean=mean, baseline_n=base_n, status="no test",
                               note=f"the early baseline has {base_n} labelled row(s), fewer than min_labelled "
                                    f"{settings.min_labelled}; raise baseline_windows or pass baseline=", **common)
        base_var = float(base.var(ddof=1))
        live = known & (windows >= live_from)
        start = np.datetime64(ready_at, "us")
    else:
        label, mean = _baseline_mean(baseline, version, loss, registry_metrics)
        base_n, base_var, live_from, live = None, None, first_window, known
        start = rows.known_at[live].min() if live.any() else None
    if mean is None or mean <= 0:
        return QualityTest(baseline=label, baseline_mean=mean, baseline_n=base_n, status="no test",
                           note="the baseline mean loss is 0: nothing to degrade by a share of; pass baseline=",
                           **common)
    if start is None or not live.any():
        return QualityTest(baseline=label, baseline_mean=mean, baseline_n=base_n, status="no test",
                           note="no labelled live prediction yet", **common)
    # looks: each window boundary of label-arrival time from the test's start, and as_of
    first = -(-(start - _EPOCH).astype(np.int64) // window_us)
    last = (as_of64 - _EPOCH).astype(np.int64) // window_us
    grid = _EPOCH + np.arange(first, last + 1, dtype=np.int64) * np.timedelta64(window_us, "us")
    looks = grid if grid.size and grid[-1] == as_of64 else np.append(grid, as_of64)
    span = settings.segment_windows
    segment = (windows[live] - live_from) // span if span else np.zeros(int(live.sum()), dtype=np.int64)
    order = np.lexsort((rows.time[live], rows.known_at[live]))  # by arrival, then request time
    watched = watch(losses[live][order], segment[order], rows.known_at[live][order], looks, baseline_mean=mean,
                    baseline_var=base_var, baseline_n=base_n, tolerance=settings.tolerance,
                    min_effect=settings.min_effect, alpha=settings.alpha, min_units=settings.min_labelled)
    hit, position = watched.alarm
    if hit >= 0:
        status, note = "degraded", ""
    else:  # report the latest segment
        position = len(watched.segments) - 1
        ready = any(r.ready.any() for r in watched.results)
        status, note = ("ok", "") if ready else (
            "waiting", f"fewer than min_labelled {settings.min_labelled} labelled live rows in a segment: no "
                       "decision yet")
    result, counts = watched.results[position], watched.counts[position]
    excess = float(result.effect[-1])
    radius = float(result.boundary[-1])  # the sequence's interval at the last look (inf before a decision)
    return QualityTest(
        baseline=label, baseline_mean=mean, baseline_n=base_n, status=status, note=note, tau=result.tau,
        looks=int(looks.size), segment=watched.segments[position],
        segment_start=_start_of(live_from + watched.segments[position] * span, window_us) if span
        else _start_of(live_from, window_us), segment_alpha=watched.alphas[position],
        live_n=int(counts[-1]), live_mean=excess + (1 + settings.tolerance) * mean if counts[-1] else None,
        excess=excess if counts[-1] else None, p_value=watched.p_value,
        ci_lower=excess - radius if counts[-1] else None, ci_upper=excess + radius if counts[-1] else None,
        detected_at=looks[hit].astype(dt.datetime) if hit >= 0 else None,
        detected_after=int(counts[hit]) if hit >= 0 else None, **common)


def _score_drift(reference: np.ndarray, current: np.ndarray, start: dt.datetime, drift: DriftConfig) -> dict:
    """The latest window's scores against the version's first windows' by the native drift
    statistics (``lab.monitoring.drift.compare``: KS test, normed Wasserstein, power)."""
    column = compare(pl.DataFrame({"score": reference}), pl.DataFrame({"score": current}), config=drift).columns["score"]
    return {"window": start, "flagged": column.flagged, "reason": column.reason, "test": column.test,
            "p_value": column.p_value, "effect": column.effect, "effect_size": column.effect_size,
            "threshold": column.threshold, "power": column.power, "underpowered": column.underpowered,
            "psi": column.psi, "n_reference": column.n_reference, "n_current": column.n_current}


def _version_quality(version: int, rows: VersionRows, task: str, loss: str, baseline: Any, as_of: dt.datetime,
                     window_us: int, delay: dt.timedelta, settings: QualityConfig, registry_metrics: Any,
                     drift: DriftConfig) -> VersionQuality:
    as_of64 = np.datetime64(as_of, "us")
    has_label = ~np.isnan(rows.label)
    known = has_label & (rows.known_at <= as_of64)
    pending = has_label & ~known
    windows = _window_of(rows.time, window_us)
    first = int(windows.min())
    reference = rows.score[windows < first + settings.baseline_windows]
    out = []
    order = np.argsort(windows, kind="stable")  # each window's rows, in ledger order, by one sort
    indexes, starts = np.unique(windows[order], return_index=True)
    for index, here in zip(indexes, np.split(order, starts[1:])):
        sel = here[known[here]]
        metrics, note = _labelled_metrics(task, rows.label[sel], rows.score[sel], settings)
        out.append(WindowQuality(index=int(index), start=_start_of(index, window_us),
                                 n_predictions=int(here.size), n_labelled=int(sel.size),
                                 n_pending=int(pending[here].sum()), metrics=metrics,
                                 signals=_signals(rows.score[here], reference, task, settings), note=note))
    latest = here  # the last window's rows
    score_drift = None
    if int(indexes[-1]) >= first + settings.baseline_windows:  # a window past the reference's
        score_drift = _score_drift(reference, rows.score[latest], out[-1].start, drift)
    metrics, _ = _labelled_metrics(task, rows.label[known], rows.score[known], settings)
    test = _test(rows, known, windows, loss, baseline, version, as_of, window_us, delay, settings, registry_metrics)
    return VersionQuality(
        version=version, n_predictions=int(rows.time.size), n_labelled=int(known.sum()),
        n_pending=int(pending.sum()), first_request=rows.time.min().astype(dt.datetime),
        last_request=rows.time.max().astype(dt.datetime), metrics=metrics, windows=tuple(out), test=test,
        psi_flagged=tuple(w.start for w in out if w.signals["psi_flagged"]), score_drift=score_drift)


def live_quality(config_or_root: Any, spec: ModelSpec | str | None = None, labels: Any = None, *,
                 as_of: dt.datetime | str | None = None, window: str | dt.timedelta | None = None,
                 versions: Iterable[int] | None = None, baseline: Any = None,
                 quality_config: QualityConfig | None = None, pm: Any = None) -> LiveQuality:
    """Live quality of ``spec``'s model, per version, as of ``as_of`` (see the module doc).

    ``config_or_root``: a ``LabConfig`` or the lab's folder (its ledger is
    ``data/ledger.db``). ``spec``: the ``ModelSpec``, or a model's name (resolved through
    the lab's plugins; None: the lab's model). ``labels``: a Parquet/CSV path, polars
    frame or pyarrow table with the spec's event id, label and event-time columns
    (default: the spec's offline source). ``as_of``: naive UTC or aware (default: now);
    predictions whose request time is after it, and labels not due by it, are left out.
    ``window``: a timedelta or ``"1d"``, ``"6h"``... (default: ``[tool.lab.quality]``).
    ``versions``: the versions to report (default: every one in the ledger).
    ``baseline``: ``"early"``, ``"registry"``, a mean loss or ``{version: mean loss}``
    (default: the settings'). ``quality_config``: the settings (default: the lab's
    ``[tool.lab.quality]``). ``pm``: the plugin manager that resolves names, views and
    the offline store (default: the lab's).

    Pure: nothing is written and no event is emitted (``QualityMonitor`` does that).
    Raises LabError naming the fix for an unknown model or version, a missing ledger,
    labels missing the id, label or event-time column, or bad settings.
    """
    config, spec, pm = _resolve(config_or_root, spec, pm)
    return _live_quality(config, spec, pm, labels, as_of, window, versions, baseline, quality_config, None)


def _live_quality(config: LabConfig, spec: ModelSpec, pm: Any, labels: Any, as_of: Any, window: Any,
                  versions: Any, baseline: Any, quality_config: Any, rows: list[tuple] | None) -> LiveQuality:
    settings = quality_config if quality_config is not None else QualityConfig.from_config(config)
    if not isinstance(settings, QualityConfig):
        raise ConfigError(f"quality_config must be a QualityConfig, got {type(settings).__name__}")
    if window is not None:
        seconds = duration(window, "window").total_seconds()
        text = window if isinstance(window, str) else f"{int(seconds)}s" if seconds.is_integer() else f"{seconds:.6f}s"
        settings = dataclasses.replace(settings, window=text)
    length = settings.window_length
    window_us = int(round(length.total_seconds() * 1e6))
    loss = settings.loss or LOSSES[spec.task][0]
    if loss not in LOSSES[spec.task]:
        raise ConfigError(f"loss {loss!r} does not fit a {spec.task} model; use one of {', '.join(LOSSES[spec.task])}")
    baseline = settings.baseline if baseline is None else baseline
    moment = as_naive_utc(as_of) if as_of is not None else dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    delay = _label_delay(config, spec, settings, pm)
    by_version, wanted = predictions(rows if rows is not None else ledger_rows(config, spec), spec, versions, moment)
    if labels is None:
        pm = pm if pm is not None else get_plugin_manager(config)
    source = labels if labels is not None else labels_from_source(config, spec, pm)
    frame, _ = label_frame(source, wanted, id_column=spec.id_column, label_column=spec.label,
                           time_column=spec.time_column, label_delay=delay,
                           binary=spec.task == "classification")
    registry_metrics = _registry_metrics(config, spec.name)
    out = {v: _version_quality(v, join(items, frame, spec.id_column, spec.label), spec.task, loss, baseline,
                               moment, window_us, delay, settings, registry_metrics, config.drift)
           for v, items in by_version.items()}
    return LiveQuality(model=spec.name, task=spec.task, as_of=moment, window=length, label_delay=delay,
                       settings=settings, versions=out, labels=describe(source) if labels is not None
                       else f"source {spec.source!r}")


def _registry_metrics(config: LabConfig, model: str):
    """``version -> its registry metrics``, opening the registry only when asked."""
    def metrics(version: int) -> dict:
        if not config.registry_path.exists():
            raise LabError(f"baseline=\"registry\" needs the registry {config.registry_path}, which does not exist; "
                           "use baseline=\"early\" or pass the mean loss as a number")
        with Registry.open(config.registry_path, project_root=config.root) as registry:
            try:
                return dict(registry.get_model_version(model, version).metrics)
            except NotFound as exc:
                raise LabError(f"baseline=\"registry\": {exc}; use baseline=\"early\" or pass the mean loss as a "
                               "number") from None
    return metrics


# -- repeated checks: events and the registry -------------------------------------------------

def record_quality(registry: Any, result: LiveQuality) -> str:
    """Record a check in ``registry`` as a ``live_quality`` run: its settings as params,
    each window's metrics and signals as ``v<version>.<name>`` at step = the window's
    number (``metric_history`` gives a series), and each version's test as
    ``v<version>.quality_<field>`` (no step). Only finite numbers are logged. Returns the
    run id."""
    params = {"model": result.model, "as_of": result.as_of.isoformat(), "window_s": result.window.total_seconds(),
              "label_delay_s": result.label_delay.total_seconds(), "labels": result.labels,
              **{f"quality.{k}": v for k, v in dataclasses.asdict(result.settings).items()}}
    run_id = registry.start_run(kind=RUN_KIND, params=params, name=f"{result.model} quality as of "
                                f"{result.as_of.isoformat(sep=' ')}")
    try:
        for version, q in result.versions.items():
            for w in q.windows:
                values = {**w.metrics, **{k: v for k, v in w.signals.items() if k != "psi_flagged"},
                          "n_predictions": w.n_predictions, "n_labelled": w.n_labelled, "n_pending": w.n_pending}
                finite = {f"v{version}.{k}": float(v) for k, v in values.items() if _finite(v)}
                if finite:
                    registry.log_metrics(run_id, finite, step=w.index)
            t = q.test
            summary = {"p_value": t.p_value, "ci_lower": t.ci_lower, "ci_upper": t.ci_upper, "live_mean": t.live_mean,
                       "baseline_mean": t.baseline_mean, "live_n": t.live_n, "degraded": float(t.degraded)}
            registry.log_metrics(run_id, {f"v{version}.quality_{k}": float(v) for k, v in summary.items()
                                          if _finite(v)})
    except Exception:
        registry.finish_run(run_id, "failed")
        raise
    registry.finish_run(run_id)
    return run_id


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float, np.number)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass
class QualityMonitor:
    """Repeated live-quality checks of one model: each ``check`` computes ``live_quality``,
    emits ``quality.degraded`` once per breach (a model version found degraded against one
    baseline; remembered in memory and in the registry's audit log, so a check in another
    process does not alert again), and with ``record`` keeps the check as a registry run
    (``record_quality``). Arguments as ``live_quality``'s."""

    config_or_root: Any
    spec: ModelSpec | str | None = None
    labels: Any = None
    baseline: Any = None
    versions: Iterable[int] | None = None
    quality_config: QualityConfig | None = None
    pm: Any = None
    record: bool = True
    alerts: list = field(default_factory=list)  # the events this monitor emitted, oldest first

    def __post_init__(self) -> None:
        self.config, self.spec, pm = _resolve(self.config_or_root, self.spec, self.pm)
        if pm is None:
            pm = get_plugin_manager(self.config)
        self.pm = pm
        self._alerted: set = set()
        self._read: tuple | None = None  # (ledger state, predictions read then)

    def check(self, as_of: dt.datetime | str | None = None, *, window: str | dt.timedelta | None = None) -> LiveQuality:
        """One check as of ``as_of`` (default: now): the result, with ``run_id`` when recorded.
        The ledger is read again only when it has changed since the last check."""
        state = ledger_state(self.config.ledger_path)
        if state is None or self._read is None or self._read[0] != state:
            self._read = (state, ledger_rows(self.config, self.spec))
        result = _live_quality(self.config, self.spec, self.pm, self.labels, as_of, window, self.versions,
                               self.baseline, self.quality_config, self._read[1])
        degraded = [result.versions[v] for v in result.degraded]
        if not degraded and not self.record:
            return result
        with Registry.open(self.config.registry_path, project_root=self.config.root) as registry:
            if degraded:
                self._alert(registry, result, degraded)
            if self.record:
                result = dataclasses.replace(result, run_id=record_quality(registry, result))
        return result

    def _alert(self, registry: Any, result: LiveQuality, degraded: list[VersionQuality]) -> None:
        seen = {(e["subject"], e["payload"].get("version"), e["payload"].get("baseline"), e["payload"].get("loss"))
                for e in registry.events(QUALITY_DEGRADED, limit=10_000)}
        for q in degraded:
            t = q.test
            key = (result.model, q.version, t.baseline, t.loss)
            if key in self._alerted or key in seen:
                continue
            payload = json_safe({
                "model": result.model, "version": q.version, "loss": t.loss, "baseline": t.baseline,
                "baseline_mean": t.baseline_mean, "live_mean": t.live_mean, "tolerance": t.tolerance,
                "excess_ci": [t.ci_lower, t.ci_upper], "p_value": t.p_value, "alpha": t.alpha,
                "detected_at": t.detected_at, "detected_after": t.detected_after, "as_of": result.as_of,
            })
            registry.append_event(QUALITY_DEGRADED, result.model, payload)
            self.alerts.append(emit(self.pm, QUALITY_DEGRADED, **payload))
            self._alerted.add(key)
