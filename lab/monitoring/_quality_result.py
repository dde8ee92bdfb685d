"""What a live-quality check returns (``lab.monitoring.quality``): per version and window
of request time, the counts, metrics and early signals, and the sequential test; JSON-safe
as ``to_dict`` and short text as ``table``."""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from lab.monitoring.quality import QualityConfig


@dataclass(frozen=True)
class WindowQuality:
    """One window of one version's requests: counts, quality metrics of its labelled rows
    (None where not computable, ``note`` says why) and its early signals (``signals``:
    ``score_mean``, ``score_p50``, ``above_threshold``, ``psi``, ``psi_flagged``)."""

    index: int  # windows since 1970-01-01 (the registry's step)
    start: dt.datetime
    n_predictions: int
    n_labelled: int
    n_pending: int
    metrics: dict
    signals: dict
    note: str = ""

    @property
    def n_unlabelled(self) -> int:
        return self.n_predictions - self.n_labelled


@dataclass(frozen=True)
class QualityTest:
    """The sequential test of one version's mean loss against its baseline, as of the
    last look, for one segment of its live rows: the one that alarmed, else the latest.
    ``excess`` is that segment's ``live mean - (1 + tolerance)·baseline mean`` (loss
    units); ``ci_lower``/``ci_upper`` its always-valid confidence sequence's interval at
    the last look (``excess`` ± its radius; infinite before a decision), at the segment's
    level ``segment_alpha``; ``p_value`` the always-valid p-value of "no
    segment degraded" (against ``alpha``); ``detected_at`` the look (a time labels became
    known) a segment's sequence first lay above 0, and ``detected_after`` how many of its
    live labelled rows it had then. ``status``: ``degraded``, ``ok``, ``waiting`` (too few
    labelled rows yet), ``baseline pending`` or ``no test`` (``note`` says why)."""

    loss: str
    baseline: str
    baseline_mean: float | None
    baseline_n: int | None
    tolerance: float
    min_effect: float
    alpha: float
    status: str
    note: str = ""
    tau: float | None = None
    looks: int = 0
    segment: int | None = None
    segment_start: dt.datetime | None = None
    segment_alpha: float | None = None
    live_n: int = 0
    live_mean: float | None = None
    excess: float | None = None
    p_value: float | None = None
    ci_lower: float | None = None
    ci_upper: float | None = None
    detected_at: dt.datetime | None = None
    detected_after: int | None = None

    @property
    def degraded(self) -> bool:
        return self.status == "degraded"


@dataclass(frozen=True)
class VersionQuality:
    """One version: totals, metrics over all its labelled rows, its windows (oldest
    first), the test, the windows whose score PSI is above ``max_psi``, and
    ``score_drift``: the latest window's scores against the first windows' by the native
    drift statistics (flagged, reason, test, p-value, effect and its size, threshold,
    power; None while the latest window is one of the first)."""

    version: int
    n_predictions: int
    n_labelled: int
    n_pending: int
    first_request: dt.datetime
    last_request: dt.datetime
    metrics: dict
    windows: tuple[WindowQuality, ...]
    test: QualityTest
    psi_flagged: tuple[dt.datetime, ...] = ()
    score_drift: dict | None = None


@dataclass(frozen=True)
class LiveQuality:
    """Live quality of one model as of a moment, per version (``versions``)."""

    model: str
    task: str
    as_of: dt.datetime
    window: dt.timedelta
    label_delay: dt.timedelta
    settings: QualityConfig
    versions: dict[int, VersionQuality]
    labels: str = ""
    run_id: str | None = None  # the registry run the check was recorded as

    @property
    def degraded(self) -> list[int]:
        """The versions whose loss is significantly above their tolerated baseline."""
        return [v for v, q in self.versions.items() if q.test.degraded]

    def to_dict(self) -> dict:
        """Everything as JSON-safe values (times as ISO text, NaN and infinities as None)."""
        out = {
            "model": self.model, "task": self.task, "as_of": self.as_of, "window_s": self.window.total_seconds(),
            "label_delay_s": self.label_delay.total_seconds(), "settings": dataclasses.asdict(self.settings),
            "labels": self.labels, "run_id": self.run_id, "degraded": self.degraded,
            "versions": {str(v): {**dataclasses.asdict(q), "windows": [
                {**dataclasses.asdict(w), "n_unlabelled": w.n_unlabelled} for w in q.windows],
                "test": {**dataclasses.asdict(q.test), "degraded": q.test.degraded}}
                for v, q in self.versions.items()},
        }
        return json_safe(out)

    def table(self, last: int = 10) -> str:
        """A short text rendering: per version the test's verdict and its last ``last`` windows."""
        days = self.window.total_seconds() / 86400
        lines = [f"live quality of {self.model} ({self.task}) as of {self.as_of.isoformat(sep=' ')}; window "
                 f"{_span(self.window)}, label delay {_span(self.label_delay)}, alpha {self.settings.alpha:g}"]
        for q in self.versions.values():
            t = q.test
            lines.append(f"version {q.version}: {q.n_predictions} prediction(s), {q.n_labelled} labelled, "
                         f"{q.n_pending} pending; requests {q.first_request:%Y-%m-%d %H:%M} .. "
                         f"{q.last_request:%Y-%m-%d %H:%M}")
            base = "-" if t.baseline_mean is None else f"{t.baseline_mean:.4g}"
            head = f"  {t.loss}: baseline {t.baseline} {base}"
            if t.live_mean is not None and t.p_value is not None:
                head += (f", live {t.live_mean:.4g} over {t.live_n} row(s); excess over x{1 + t.tolerance:g} "
                         f"baseline {t.excess:+.4g}, CS [{_num(t.ci_lower)}, {_num(t.ci_upper)}], "
                         f"always-valid p {t.p_value:.3g}")
            lines.append(head)
            if t.degraded:
                lines.append(f"  DEGRADED since {t.detected_at:%Y-%m-%d %H:%M} (after {t.detected_after} labelled "
                             f"row(s) of the segment from {t.segment_start:%Y-%m-%d %H:%M})")
            else:
                lines.append(f"  {t.status}" + (f": {t.note}" if t.note else ""))
            keys = ("roc_auc", "average_precision", "precision_at_k", "brier") if self.task == "classification" \
                else ("mae", "rmse", "mean_error")
            heads = {"roc_auc": "AUC", "average_precision": "AP", "precision_at_k": "P@k", "brier": "Brier",
                     "mae": "MAE", "rmse": "RMSE", "mean_error": "bias"}
            fmt = "%Y-%m-%d" if days >= 1 and days.is_integer() else "%Y-%m-%d %H:%M"
            lines.append("  " + f"{'window':<16} {'preds':>6} {'labelled':>8} " + " ".join(f"{heads[k]:>9}" for k in keys)
                         + f" {'score p50':>9} {'>thr':>6} {'PSI':>6}")
            for w in q.windows[-last:]:
                s = w.signals
                above = "-" if s["above_threshold"] is None else f"{s['above_threshold']:.1%}"
                flag = " !" if s["psi_flagged"] else ""
                lines.append("  " + f"{w.start.strftime(fmt):<16} {w.n_predictions:>6} {w.n_labelled:>8} "
                             + " ".join(f"{_num(w.metrics.get(k)):>9}" for k in keys)
                             + f" {_num(s['score_p50']):>9} {above:>6} {_num(s['psi']):>6}{flag}")
            if q.score_drift is not None:
                d = q.score_drift
                lines.append(f"  score drift of {d['window']:{fmt}} against the first windows: "
                             + ("FLAGGED, " if d["flagged"] else "") + d["reason"])
            if len(q.windows) > last:
                lines.append(f"  ... {len(q.windows) - last} earlier window(s) in the JSON")
        return "\n".join(lines)


def _num(value: float | None) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.4g}"


def _span(delta: dt.timedelta) -> str:
    seconds = delta.total_seconds()
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and (seconds / size).is_integer():
            return f"{int(seconds / size)}{unit}"
    return f"{seconds:g}s"


def json_safe(value: Any) -> Any:
    """``value`` with times as ISO text, timedeltas as seconds, numpy scalars as Python's and
    NaN or infinities as None: what ``json.dumps(allow_nan=False)`` takes."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, (dt.datetime, dt.date)):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, (np.bool_, bool)):
        return bool(value)
    if isinstance(value, (np.integer, int)):
        return int(value)
    if isinstance(value, (np.floating, float)):
        return float(value) if math.isfinite(value) else None
    return value
