"""``lab monitor``: every check of a served model over one window, on a real ledger,
registry and stores; a clean window passes, injected drift and a traffic drop breach."""

from __future__ import annotations

import datetime as dt
import json
import shutil

import numpy as np
import pyarrow as pa
import pytest

from lab.cli import main
from lab.config import load_config
from lab.errors import ConfigError, LabError
from lab.monitoring.drift import ReferenceSketch
from lab.monitoring.monitor import MONITOR_BREACHED, MonitorConfig, run_monitor
from lab.plugins import get_plugin_manager, model_spec
from lab.registry import Registry
from lab.serving.ledger import Ledger, PredictionRecord
from plugins.fraud.testing import build_tiny_lab
from tests._helpers import Events

FIRST_DAY = dt.date(2018, 5, 1)
DAYS = 28
PER_DAY = 60


def _traffic(rng, spec, day: int, n: int, amount_scale: float = 1.0):
    """``n`` logged predictions on day ``day`` (0-based): the request, features drawn from
    fixed distributions (the amount ``amount_scale`` times larger), a score that depends
    on the amount, and a label drawn from the score."""
    out = []
    for i in range(n):
        when = dt.datetime.combine(FIRST_DAY + dt.timedelta(days=day), dt.time()) + dt.timedelta(
            seconds=int(rng.integers(0, 86_400)))
        amount = float(rng.lognormal(3.5, 0.6)) * amount_scale
        features = {name: float(rng.normal(5.0, 1.0)) for name in spec.features}
        features["TX_AMOUNT"] = amount
        score = float(1 / (1 + np.exp(-(np.log(amount / amount_scale) - 4.5) * 2)))
        tx_id = day * 10_000 + i
        out.append((tx_id, when, amount, features, score, int(rng.random() < score)))
    return out


def _write_lab(root, *, drift_last_week: bool = False, last_day: int = PER_DAY, days: int = DAYS,
               one_score: float | None = None):
    """A tiny served lab whose ledger holds ``DAYS`` days of traffic of model v1, its label
    source, and the drift reference of the first week's inputs."""
    tiny = build_tiny_lab(root)
    config = load_config(root)
    pm = get_plugin_manager(config)
    spec = model_spec(pm, config)
    rng = np.random.default_rng(11)
    rows = []
    for day in range(days):
        shifted = drift_last_week and day >= days - 7
        rows += _traffic(rng, spec, day, last_day if day == days - 1 else PER_DAY, 4.0 if shifted else 1.0)
    if one_score is not None:  # a model that stopped discriminating: every decision the same
        rows = [(*r[:4], one_score, r[5]) for r in rows]
    with Ledger.open(config.ledger_path) as ledger:
        for tx_id, when, amount, features, score, _ in rows:
            request = {"TRANSACTION_ID": tx_id, "TX_DATETIME": when.isoformat(), "CUSTOMER_ID": 1,
                       "TERMINAL_ID": 10, "TX_AMOUNT": amount}
            ledger.append(PredictionRecord(event_id=tx_id, model_name="fraud", model_version=1, features=features,
                                           defaults={"customer_spending": False, "terminal_risk": False},
                                           score=score, latency_ms=0.5, request=request,
                                           feature_ages={"customer_spending": 60.0, "terminal_risk": 60.0}))
    offline = pm.hook.lab_offline_store(config=config)
    try:
        ids, whens, amounts, labels = zip(*[(r[0], r[1], r[2], r[5]) for r in rows])
        offline.write_source("transactions", pa.table({
            "TRANSACTION_ID": pa.array(ids, pa.int64()), "TX_DATETIME": pa.array(whens, pa.timestamp("us")),
            "CUSTOMER_ID": pa.array([1] * len(ids), pa.int64()), "TERMINAL_ID": pa.array([10] * len(ids), pa.int64()),
            "TX_AMOUNT": pa.array(amounts, pa.float64()), "TX_FRAUD": pa.array(labels, pa.int64())}))
    finally:
        offline.close()
    first_week = [r[3] for r in rows[: 7 * PER_DAY]]
    import polars as pl

    ReferenceSketch.from_frame(pl.DataFrame(first_week), list(spec.features), meta={"model": "fraud"}).save(
        root / "data" / "drift_reference.json")
    return tiny, config


@pytest.fixture(scope="module")
def clean_lab(tmp_path_factory):
    return _write_lab(tmp_path_factory.mktemp("monitor-clean") / "lab")


@pytest.fixture(scope="module")
def drifted_lab(tmp_path_factory):
    return _write_lab(tmp_path_factory.mktemp("monitor-drift") / "lab", drift_last_week=True, last_day=6)


def _pm_with_events(config):
    pm = get_plugin_manager(config)
    seen = Events()
    pm.register(seen, name="test-events")
    return pm, seen


def test_a_clean_window_passes_every_check_and_is_recorded(clean_lab):
    tiny, config = clean_lab
    pm, seen = _pm_with_events(config)
    result = run_monitor(config, pm)
    assert (result.start, result.end) == (FIRST_DAY + dt.timedelta(days=DAYS - 7), FIRST_DAY + dt.timedelta(days=DAYS - 1))
    statuses = {name: check.status for name, check in result.checks.items()}
    assert statuses == {"drift": "ok", "score_drift": "ok", "freshness": "ok", "quality": "ok", "volume": "ok",
                        "feedback": "ok"}, result.table()
    (feedback,) = result.checks["feedback"].data["reports"]
    assert feedback["n_rows"] == DAYS * PER_DAY and feedback["model"] == "fraud"
    assert result.checks["drift"].data["current"].startswith(f"{7 * PER_DAY} live predictions")
    assert result.checks["volume"].data["last_day"] == PER_DAY
    assert not [e for e in seen.seen if e.name == MONITOR_BREACHED]
    summary = json.loads((config.data_path / "monitor.json").read_text())
    assert summary["status"] == "ok" and summary["breaches"] == [] and summary["run_id"] == result.run_id
    page = (config.data_path / "monitor.html").read_text()
    assert "data:image/png;base64," in page and "score_drift" in page
    with Registry.open(config.registry_path, project_root=config.root) as registry:
        run = registry.get_run(result.run_id)
        assert run["kind"] == "monitor" and run["status"] == "finished"
        assert run["metrics"]["drift_breach"] == 0.0 and run["metrics"]["volume_breach"] == 0.0
        assert registry.list_drift(run_id=result.run_id)


def test_injected_drift_and_a_traffic_drop_breach_with_an_event(drifted_lab):
    tiny, config = drifted_lab
    pm, seen = _pm_with_events(config)
    result = run_monitor(config, pm)
    assert result.status == "breach"
    assert "TX_AMOUNT" in result.checks["drift"].data["flagged"]
    assert result.checks["score_drift"].status == "ok"  # the score reads the amount relative to its scale
    assert result.checks["volume"].status == "breach" and result.checks["volume"].data["last_day"] == 6
    assert set(result.breaches) == {"drift", "volume"}
    fired = [e for e in seen.seen if e.name == MONITOR_BREACHED]
    assert len(fired) == 1 and set(fired[0].payload["checks"]) == {"drift", "volume"}
    assert any(e.name == "drift.detected" for e in seen.seen)
    with Registry.open(config.registry_path, project_root=config.root) as registry:
        assert registry.get_run(result.run_id)["metrics"]["drift_breach"] == 1.0


def test_the_command_prints_the_verdict_and_exits_3_on_a_breach(clean_lab, drifted_lab, capsys):
    assert main(["--root", str(clean_lab[1].root), "monitor", "run", "--checks", "drift,volume"]) == 0
    out = capsys.readouterr().out
    assert "OK" in out and "drift" in out and "quality" not in out
    assert main(["--root", str(drifted_lab[1].root), "monitor", "run", "--json", "--no-record"]) == 3
    summary = json.loads(capsys.readouterr().out)
    assert summary["status"] == "breach" and "volume" in summary["breaches"]


def test_a_window_before_any_traffic_skips_what_it_cannot_measure(clean_lab, tmp_path):
    tiny, config = clean_lab
    copy = tmp_path / "lab"
    shutil.copytree(config.root, copy)
    (copy / "data" / "ledger.db").unlink()
    for extra in ("ledger.db-wal", "ledger.db-shm"):
        (copy / "data" / extra).unlink(missing_ok=True)
    result = run_monitor(load_config(copy), end="2018-05-07", record=False, emit=False)
    statuses = {name: check.status for name, check in result.checks.items()}
    assert statuses["score_drift"] == statuses["quality"] == statuses["volume"] == statuses["feedback"] == "skipped"
    assert "ledger is empty" in result.checks["volume"].detail


def test_bad_settings_and_input_name_the_fix(clean_lab):
    tiny, config = clean_lab
    with pytest.raises(ConfigError, match="checks has unknown check"):
        MonitorConfig(checks=("drift", "vibes"))
    with pytest.raises(ConfigError, match="days must be"):
        MonitorConfig(days=0)
    with pytest.raises(LabError, match="not a date; write it as YYYY-MM-DD"):
        run_monitor(config, end="last tuesday", record=False, emit=False)
    with pytest.raises(LabError, match="declares model .nope.*declared: fraud"):
        run_monitor(config, model="nope", record=False, emit=False)


def test_a_collapsed_feedback_loop_breaches(tmp_path):
    tiny, config = _write_lab(tmp_path / "lab", days=8, one_score=0.97)
    result = run_monitor(config, checks=("feedback",), record=False, emit=False)
    check = result.checks["feedback"]
    assert check.status == "breach" and "collapsed" in check.detail, check.detail
    assert check.data["reports"][0]["diversity"]["items"]["entropy"] == 0.0
