"""Online store outages (issue 9, item 4): with ``ModelSpec.on_store_outage =
"feature_defaults"`` a request that meets a failed, slow or circuit-broken online store is
scored by the model on each view's declared defaults, flagged ``store_unavailable``,
counted per view, and the store's availability is exposed; recovery is automatic.

The meter lab of tests/test_serving_resilience.py (one view, a test-only model whose score
is half the sum of its inputs); its online store is a real SQLite file, made unreadable by
overwriting it and restored by writing its bytes back.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from lab.config import load_config
from lab.errors import ConfigError
from lab.serving.ledger import read_predictions
from lab.serving.predictor import Predictor
from lab.serving.scoring import FeatureAssembler
from plugins.litestar_serving.breaker import StoreAvailability
from tests.test_serving_resilience import (  # noqa: F401 - fixtures
    FEATURES, METER, METER_DAILY, SleepyModel, fast_model, meter_lab, meter_pm, meter_template, reading, scrape,
    serve, wait_ready,
)

ON_DEFAULTS = dataclasses.replace(METER, fallback=0.25, on_store_outage="feature_defaults")
FILL = METER_DAILY.defaults["METER_MEAN_1D"]  # 100.0: the view's declared default


def break_store(store: Path) -> None:
    for extra in ("-wal", "-shm"):
        Path(f"{store}{extra}").unlink(missing_ok=True)
    store.write_bytes(b"this is not a database at all " * 200)


def availability(client) -> float:
    return scrape(client)[("lab_online_store_availability", ())]


@contextlib.contextmanager
def running(root: Path, how: str, spec, **options):
    """``(client, app)``: the app for ``root`` in process (Litestar's TestClient), or a
    real uvicorn server in a thread on a free port of 127.0.0.1 with an httpx client."""
    if how == "in_process":
        with serve(root, spec, **options) as client:
            wait_ready(client)
            yield client, client.app
        return
    import httpx

    from plugins.litestar_serving import create_app
    from tests.conftest import uvicorn_in_thread

    config = load_config(root)
    app = create_app(config, meter_pm(config, spec), **options)
    with uvicorn_in_thread(app, ready_s=20) as base, httpx.Client(base_url=base, timeout=10) as client:
        yield client, app


@pytest.mark.parametrize("how", ["in_process", "uvicorn"])
def test_a_store_outage_under_load_scores_on_view_defaults_flagged_and_availability_recovers(meter_lab, how):
    text = (meter_lab / "pyproject.toml").read_text()
    (meter_lab / "pyproject.toml").write_text(text + "\n[tool.lab.serve]\nbreaker_failures = 2\n"
                                              "breaker_open_s = 0.3\n")
    store = meter_lab / "data" / "online.db"
    good = store.read_bytes()
    with running(meter_lab, how, ON_DEFAULTS, max_concurrency=2, max_queue=64, latency_budget_ms=1000) as (client,
                                                                                                         app):
        first = client.post("/predict", json=reading(0)).json()
        assert first["fallback"] is False and first["features"]["METER_MEAN_1D"] == 80.0
        assert availability(client) == 1.0

        break_store(store)
        n = 24
        with ThreadPoolExecutor(4) as pool:  # bounded load: 4 at a time
            answers = list(pool.map(lambda i: client.post("/predict", json=reading(i)), range(1, n + 1)))
        assert [a.status_code for a in answers] == [200] * n, [a.text for a in answers if a.status_code != 200]
        for answer in map(lambda a: a.json(), answers):
            assert answer["fallback"] is True and answer["fallback_reason"] == "store_unavailable"
            assert answer["fallback_source"] == "feature_defaults"
            assert answer["defaults"] == {"meter_daily": True}
            assert answer["features"]["METER_MEAN_1D"] == FILL
            assert answer["score"] == pytest.approx((answer["features"]["WATTS"] + FILL) * 0.5)  # the model's
        samples = scrape(client)
        low = samples[("lab_online_store_availability", ())]
        assert low < 1.0
        by_reason = {dict(k[1])["reason"]: v for k, v in samples.items()
                     if k[0] == "lab_feature_fallbacks_total" and dict(k[1])["view"] == "meter_daily"}
        assert sum(by_reason.values()) == n and by_reason.get("store_error", 0) >= 2
        assert by_reason.get("store_circuit_open", 0) >= 1  # the breaker stopped calling the store
        reads = {dict(k[1])["outcome"]: v for k, v in samples.items() if k[0] == "lab_online_store_reads_total"}
        assert reads["ok"] == 1 and reads["store_error"] + reads["store_circuit_open"] + reads["store_timeout"] == n
        assert samples[("lab_fallbacks_total", (("reason", "store_unavailable"),))] == n
        assert client.get("/stats").json()["fallbacks"]["store_unavailable"] == n

        store.write_bytes(good)  # the store is back: a half-open probe finds it, answers are unflagged again
        deadline = time.monotonic() + 10
        i = 100
        while time.monotonic() < deadline:
            i += 1
            answer = client.post("/predict", json=reading(i)).json()
            if answer["fallback"] is False:
                break
            time.sleep(0.02)  # polling: the breaker half-opens after breaker_open_s
        assert answer["fallback"] is False and answer["features"]["METER_MEAN_1D"] == 80.0, answer
        assert answer["defaults"] == {"meter_daily": False}
        seen = [availability(client)]
        assert seen[0] < 1.0  # the outage's reads are still in the window
        while seen[-1] < 1.0 and time.monotonic() < deadline:  # they leave the last-100 window
            i += 1
            assert client.post("/predict", json=reading(i)).json()["fallback"] is False
            seen.append(availability(client))
        assert seen[-1] == 1.0 and seen == sorted(seen)  # it climbs back, never down, while the store answers
        assert app.state.serving.ledger.flush()
    rows = read_predictions(meter_lab / "data" / "ledger.db", include_fallbacks=True)
    outage = {f"m-{j}" for j in range(1, n + 1)}
    assert sorted(r["fallback"] or "" for r in rows if r["event_id"] in outage) == ["store_unavailable"] * n
    assert {r["fallback"] for r in rows} <= {None, "store_unavailable"}
    # Readers of predictions (quality, training from logs) never take default-fed scores for real ones.
    assert not outage & {r["event_id"] for r in read_predictions(meter_lab / "data" / "ledger.db")}


def test_by_default_a_store_outage_still_answers_the_whole_prediction_fallback(meter_lab):
    store = meter_lab / "data" / "online.db"
    with serve(meter_lab, dataclasses.replace(METER, fallback=0.25)) as client:
        wait_ready(client)
        break_store(store)
        answer = client.post("/predict", json=reading(1)).json()
        assert answer["fallback_reason"] == "store_error" and answer["score"] == 0.25
        assert answer["fallback_source"] == "declared"
        assert availability(client) == 0.0


def test_the_embedded_predictor_scores_on_view_defaults_when_the_store_fails(meter_lab):
    config = load_config(meter_lab)
    pm = meter_pm(config, ON_DEFAULTS)
    store = pm.hook.lab_online_store(config=config)
    assembler = FeatureAssembler(store, [METER_DAILY], ON_DEFAULTS.request_row, FEATURES)
    version = type("Version", (), {"name": "meter", "version": 1})()
    predictor = Predictor(ON_DEFAULTS, version, SleepyModel(), assembler, store)
    try:
        ok = predictor.predict(reading(1))
        assert ok["features"]["METER_MEAN_1D"] == 80.0 and "fallback" not in ok
        break_store(meter_lab / "data" / "online.db")  # unreadable from now on
        down = predictor.predict(reading(2))
        assert down["fallback"] is True and down["fallback_reason"] == "store_unavailable"
        assert down["defaults"] == {"meter_daily": True} and down["features"]["METER_MEAN_1D"] == FILL
        assert down["score"] == pytest.approx((52.0 + FILL) * 0.5)
        plain = Predictor(METER, version, SleepyModel(), assembler, None)
        with pytest.raises(Exception):  # not opted in: the store's error, as before
            plain.predict(reading(3))
    finally:
        store.close()


def test_store_availability_is_a_sliding_window():
    now = [0.0]
    window = StoreAvailability(window_s=60, last=4, clock=lambda: now[0])
    assert window.rate() == 1.0
    for outcome in ("ok", "store_error", "store_circuit_open", "ok"):
        window.record(outcome)
    assert window.rate() == 0.5
    window.record("ok")  # only the last 4 count
    assert window.rate() == 0.5 and window.snapshot()[1]["ok"] == 3
    now[0] = 30.0
    window.record("ok")
    now[0] = 61.0  # the first five are out of the window
    assert window.rate() == 1.0


def test_on_store_outage_is_checked():
    with pytest.raises(ConfigError, match="on_store_outage must be one of fallback_prediction, feature_defaults"):
        dataclasses.replace(METER, on_store_outage="zeros")


class SlowStore:
    """The real SQLite store, with reads that take ``delay[0]`` seconds: a store slower than its budget."""

    def __init__(self, store, delay: list):
        self._store, self._delay = store, delay

    def read_with_watermark(self, view, key):
        time.sleep(self._delay[0])
        return self._store.read_with_watermark(view, key)

    def read_views_with_watermark(self, pairs):
        time.sleep(self._delay[0])
        return self._store.read_views_with_watermark(pairs)

    def __getattr__(self, name):
        return getattr(self._store, name)


def test_a_store_slower_than_its_timeout_gets_view_defaults_flagged(meter_lab):
    from litestar.testing import TestClient

    from lab import hookimpl
    from plugins.litestar_serving import create_app

    delay = [0.0]

    class Slow:
        @hookimpl(tryfirst=True)
        def lab_online_store(self, config):
            from plugins.sqlite_online import SQLiteOnlineStore

            return SlowStore(SQLiteOnlineStore(config.online_store_path), delay)

    config = load_config(meter_lab)
    pm = meter_pm(config, ON_DEFAULTS)
    pm.register(Slow(), name="slow-store")
    app = create_app(config, pm, max_concurrency=2, store_timeout_ms=50)
    with TestClient(app, base_url="http://127.0.0.1") as client:
        wait_ready(client)
        delay[0] = 0.3
        answer = client.post("/predict", json=reading(1)).json()
        assert answer["fallback_reason"] == "store_unavailable" and answer["defaults"] == {"meter_daily": True}
        assert answer["features"]["METER_MEAN_1D"] == FILL
        samples = scrape(client)
        assert samples[("lab_feature_fallbacks_total", (("reason", "store_timeout"), ("view", "meter_daily")))] == 1
        assert samples[("lab_online_store_reads_total", (("outcome", "store_timeout"),))] == 1
        delay[0] = 0.0
        assert client.post("/predict", json=reading(2)).json()["fallback"] is False


def test_on_the_event_loop_too_a_store_error_gets_view_defaults(meter_lab):
    with serve(meter_lab, ON_DEFAULTS) as client:  # max_concurrency 0: inline scoring
        wait_ready(client)
        break_store(meter_lab / "data" / "online.db")
        answer = client.post("/predict", json=reading(1)).json()
        assert answer["fallback_reason"] == "store_unavailable" and answer["features"]["METER_MEAN_1D"] == FILL
        assert scrape(client)[("lab_feature_fallbacks_total", (("reason", "store_error"), ("view", "meter_daily")))] == 1
