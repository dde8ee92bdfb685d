"""Memory leaks in a served model: the detector on seeded synthetic series, and a real
`lab serve` of a model that keeps 100 KiB per call, flagged on /metrics and by the
`serving.leak_suspected` event, while the same model without the leak is not; with
`restart_on_leak` the flagged server drains, restarts and is ready again, smaller."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from lab.config import ResourcesConfig, load_config
from lab.errors import ConfigError
from lab.monitoring.resources import (
    MIB,
    LeakDetector,
    ResourceSample,
    ResourceTrack,
    RssSampler,
    mann_kendall_p,
    rss_bytes,
    theil_sen,
)
from lab.registry import Registry
from tests._helpers import free_port
from tests.conftest import write_pyproject

KIB = 1024
LAB = Path(sys.executable).parent / "lab"


# -- the detector on synthetic series -------------------------------------------------------


def synthetic(kind: str, seed: int, n: int = 300, rate: float = 20.0):
    """``n`` one-second samples of a server's RSS at ``rate`` requests/s: a GC sawtooth (8 MiB
    built up over 10 s, then freed), AR(1) noise (phi 0.9, 1 MiB steps) and, by ``kind``:
    ``leak`` +50 KiB per request; ``flat`` nothing more; ``plateau`` 200 MiB grown early
    (time constant 10 s, inside the warm-up) then flat."""
    rng = np.random.default_rng(seed)
    t = np.arange(n, dtype=np.float64)
    requests = np.cumsum(rng.poisson(rate, n))
    noise = np.zeros(n)
    for i in range(1, n):
        noise[i] = 0.9 * noise[i - 1] + rng.normal(0.0, MIB)
    rss = 300 * MIB + (t % 10) / 10 * 8 * MIB + noise
    if kind == "leak":
        rss = rss + 50 * KIB * requests
    elif kind == "plateau":
        rss = rss + 200 * MIB * (1 - np.exp(-t / 10))
    track = ResourceTrack(ResourcesConfig().window)
    for when, answered, value in zip(t, requests, rss):
        track.add(ResourceSample(float(when), int(answered), int(value)))
    return track


@pytest.mark.parametrize("seed", range(10))
def test_a_slow_leak_under_noise_and_a_gc_sawtooth_is_flagged_with_its_per_request_size(seed):
    trend = LeakDetector(ResourcesConfig()).judge(synthetic("leak", seed))["rss"]
    assert trend.suspected, trend.why
    assert trend.p_value < 1e-6
    assert 45 * KIB < trend.bytes_per_request < 55 * KIB  # the memory one request leaves behind
    assert trend.samples == 240  # the first 60 s are the warm-up
    assert "a steady upward trend" in trend.why and "KiB/request" in trend.describe()


@pytest.mark.parametrize("kind", ["flat", "plateau"])
def test_flat_noise_and_an_early_growth_that_plateaus_are_not_flagged(kind):
    trends = [LeakDetector(ResourcesConfig()).judge(synthetic(kind, seed))["rss"] for seed in range(40)]
    assert not any(t.suspected for t in trends), [t.describe() for t in trends if t.suspected]
    assert max(abs(t.bytes_per_request) for t in trends) < 4 * KIB


def test_the_plateau_would_be_flagged_if_the_warm_up_were_judged():
    # the same series with no warm-up: its early growth is a steep trend, so it is the
    # warm-up's exclusion, not a lenient threshold, that keeps it from being flagged
    settings = ResourcesConfig(warmup_s=0, warmup_requests=0, min_samples=10, window=20)
    track = ResourceTrack(settings.window)
    for sample in synthetic("plateau", 0).samples()[:20]:
        track.add(sample)
    assert LeakDetector(settings).judge(track)["rss"].suspected


def test_the_warm_up_needs_both_its_seconds_and_its_requests():
    settings = ResourcesConfig(warmup_s=10, warmup_requests=100, min_samples=4, window=50)
    detector, track = LeakDetector(settings), ResourceTrack(settings.window)
    for i in range(30):  # 30 s, but only 3 requests a second: 100 requests at 34 s
        track.add(ResourceSample(float(i), 3 * i, 100 * MIB + i * MIB))
        assert detector.judge(track)["rss"].why == "warming up"
    for i in range(30, 40):
        track.add(ResourceSample(float(i), 3 * i, 100 * MIB + i * MIB))
    trend = detector.judge(track)["rss"]
    assert detector.warm_at == 34.0 and trend.samples == 6


def test_thresholds_decide_a_real_but_small_trend():
    settings = ResourcesConfig(warmup_s=0, warmup_requests=0, min_samples=10, window=100)
    track = ResourceTrack(settings.window)
    rng = np.random.default_rng(0)
    for i in range(100):  # +1 KiB a request, 10 requests a second: a trend, under 4 KiB/request
        track.add(ResourceSample(float(i), 10 * i, int(200 * MIB + 10 * KIB * i + rng.normal(0, 64 * KIB))))
    trend = LeakDetector(settings).judge(track)["rss"]
    assert trend.p_value < 1e-6 and not trend.suspected and "below the thresholds" in trend.why
    assert LeakDetector(ResourcesConfig(**{**settings.__dict__, "min_bytes_per_request": 512,
                                           "min_growth_mib": 0.5})).judge(track)["rss"].suspected


def test_theil_sen_ignores_spikes_and_needs_distinct_x():
    x = np.arange(50, dtype=float)
    y = 3.0 * x + 7.0
    y[::7] += 1e6  # every seventh sample a spike (14 %)
    assert theil_sen(x, y) == pytest.approx(3.0)
    assert theil_sen([5, 5, 5, 5], [1, 2, 3, 4]) is None  # no requests between the samples
    assert theil_sen([1.0], [1.0]) is None


def test_mann_kendall_p_is_uniform_on_white_noise_and_small_on_a_trend():
    rng = np.random.default_rng(7)
    ps = np.array([mann_kendall_p(rng.normal(size=120)) for _ in range(400)])
    assert 0.0 <= (ps < 0.05).mean() <= 0.09  # about alpha on independent noise
    assert mann_kendall_p(np.arange(40.0)) < 1e-10
    assert mann_kendall_p(np.arange(40.0)[::-1]) == 1.0 and mann_kendall_p([1.0, 2.0]) == 1.0


def test_the_autocorrelation_correction_keeps_red_noise_from_looking_like_a_trend():
    rng = np.random.default_rng(11)
    n, corrected, plain = 240, 0, 0
    for _ in range(200):
        noise = np.zeros(n)
        for i in range(1, n):
            noise[i] = 0.9 * noise[i - 1] + rng.normal()  # flat, but each reading near the last
        corrected += mann_kendall_p(noise) < 0.01
        s = np.sign(noise[None, :] - noise[:, None])[np.triu_indices(n, 1)].sum()
        plain += s > 0 and 0.5 * math.erfc((s - 1) / math.sqrt(n * (n - 1) * (2 * n + 5) / 18) / math.sqrt(2)) < 0.01
    assert plain / 200 > 0.2  # the uncorrected test sees a trend in a fifth or more of them
    assert corrected / 200 < 0.15  # the growth thresholds carry the rest


def test_the_track_is_a_bounded_ring_and_the_sampler_reads_this_process():
    track = ResourceTrack(5)
    counter = iter(range(100))
    sampler = RssSampler(track, lambda: next(counter))
    for _ in range(8):
        sample = sampler.sample()
    assert len(track) == 5 and track.first.requests == 0 and track.latest.requests == 7
    assert sample.rss == pytest.approx(rss_bytes(), rel=0.2) and sample.rss > 10 * MIB
    kept = b"\x01" * (64 * MIB)  # touched pages: resident
    assert rss_bytes() - sample.rss > 48 * MIB
    del kept


def test_a_cuda_series_is_judged_beside_the_rss_when_every_sample_has_one():
    settings = ResourcesConfig(warmup_s=0, warmup_requests=0, min_samples=10, window=60)
    track = ResourceTrack(settings.window)
    for i in range(60):  # RSS flat, CUDA +1 MiB a request (tensors kept on the GPU)
        track.add(ResourceSample(float(i), 10 * i, 500 * MIB + (i % 3) * MIB, 10 * MIB * i))
    trends = LeakDetector(settings).judge(track)
    assert trends["cuda"].suspected and trends["cuda"].bytes_per_request == pytest.approx(MIB)
    assert not trends["rss"].suspected
    track.add(ResourceSample(60.0, 600, 500 * MIB, None))  # CUDA no longer readable: RSS only
    assert set(LeakDetector(settings).judge(track)) == {"rss"}


@pytest.mark.parametrize("table, words", [
    ("alpha = 1.5", "alpha must be between 0 and 1"),
    ("min_samples = 2", "min_samples must be 4 or more"),
    ("window = 10\nmin_samples = 20", "window at least min_samples"),
    ("sample_interval_s = -1", "must be 0 or more"),
    ("restart_on_leak = 1", "restart_on_leak must be true or false"),
    ("max_rss = 3", "unknown key(s) max_rss in [tool.lab.resources]"),
])
def test_bad_settings_name_the_fix(tmp_path, table, words):
    write_pyproject(tmp_path, f"[tool.lab.resources]\n{table}\n")
    with pytest.raises(ConfigError) as error:
        load_config(tmp_path)
    assert words in str(error.value)


# -- a real lab serve --------------------------------------------------------------------------

LEAK_LAB = '''
import json
from pathlib import Path

import numpy as np

from lab import hookimpl
from lab.modelspec import ModelSpec, RequestField, RequestSchema
from lab.testing.flavors import FixedModelFlavor

READING = RequestSchema(
    title="Reading",
    fields=(RequestField("READING_ID", "str", "the reading", max_length=16),
            RequestField("READ_AT", "datetime", "when it was read"),
            RequestField("WATTS", "float", "power", ge=0, le=10_000)),
    id="READING_ID", timestamp="READ_AT", entities=(),
    example={"READING_ID": "m-0", "READ_AT": "2024-03-01T06:00:00", "WATTS": 90.0})
KEPT = []


class Half:
    feature_names = ["WATTS"]
    task = "regression"
    leak = 0

    def predict(self, x):
        if self.leak:
            KEPT.append(b"\\x01" * self.leak)  # a reference kept per call, its pages touched: the leak
        return np.asarray(x).sum(axis=1) * 0.5


class LeakyHalf(Half):
    leak = 100 * 1024


class HalfFlavor(FixedModelFlavor):
    name, tasks = "half", ("regression",)

    def make_model(self):
        return Half()


class LeakyHalfFlavor(FixedModelFlavor):
    name, tasks = "leaky_half", ("regression",)

    def make_model(self):
        return LeakyHalf()


def spec(name, flavor):
    return ModelSpec(name=name, task="regression", label="NEXT_WATTS", source="readings", features=("WATTS",),
                     views=(), request=READING, request_frame=lambda events: events,
                     request_row=lambda request, rows: {"WATTS": request["WATTS"]}, flavor=flavor)


@hookimpl
def lab_model_specs(config):
    return [spec("steady", "half"), spec("leaky", "leaky_half")]


@hookimpl
def lab_model_flavors():
    return [HalfFlavor(), LeakyHalfFlavor()]


@hookimpl
def lab_on_event(event):
    if event.name == "serving.leak_suspected":
        with open(Path(__file__).parent / "events.jsonl", "a") as out:
            out.write(json.dumps(event.payload) + "\\n")
'''

# Quick sampling and a short warm-up, so that a test of seconds sees a verdict; only the
# per-request growth decides (the per-hour threshold is out of reach).
RESOURCES = """
[tool.lab.resources]
sample_interval_s = 0.1
window = 100
min_samples = 20
warmup_s = 0.5
warmup_requests = 100
min_bytes_per_request = 16384
min_mib_per_hour = 1e9
min_growth_mib = 8
restart_on_leak = {restart}
drain_timeout_s = 10
"""
LOAD = 3000  # requests sent to each server; the leaky one must be flagged within them


@pytest.fixture(scope="module")
def leak_lab(tmp_path_factory):
    root = tmp_path_factory.mktemp("leak-lab")
    write_pyproject(root, 'plugins = ["leak_lab"]\n')
    (root / "leak_lab.py").write_text(LEAK_LAB)
    sys.modules.pop("leak_lab", None)
    config = load_config(root)
    with Registry.open(config.registry_path, project_root=root) as registry:
        for name, flavor in (("steady", "half"), ("leaky", "leaky_half")):
            version = registry.register_model(name, run_id=None, flavor=flavor, artifact_path=f"runs/models/{name}",
                                              metrics={}, lineage={})
            registry.promote(name, version.version, reason="test")
    return root


def configure(root: Path, *, restart: bool) -> None:
    (root / "pyproject.toml").write_text('[project]\nname = "leak-lab"\nversion = "0"\n\n[tool.lab]\n'
                                         'plugins = ["leak_lab"]\n' + RESOURCES.format(restart=str(restart).lower()))
    (root / "events.jsonl").unlink(missing_ok=True)


def test_in_process_restart_on_leak_only_reports_as_nothing_would_start_it_again(leak_lab):
    from lab.plugins import get_plugin_manager
    from plugins.litestar_serving import create_app
    from plugins.litestar_serving.resources import ResourceCollector, ResourceWatch

    configure(leak_lab, restart=True)
    config = load_config(leak_lab)
    state = create_app(config, get_plugin_manager(config), model_name="leaky").state.serving
    state.ready = True
    watch = ResourceWatch(state, config.resources, get_plugin_manager(config), supervised=False)
    clock = iter(np.arange(0, 100, 0.1))
    served = iter(range(0, 100_000, 20))
    resident = iter(range(200 * MIB, 10**12, 20 * 100 * KIB))  # 100 KiB a request
    watch.sampler = RssSampler(watch.track, lambda: next(served), clock=lambda: next(clock),
                               rss=lambda: next(resident), cuda=lambda: None)
    for _ in range(40):
        watch.check()
    assert watch.flagged["rss"].suspected and watch.restarts == 0
    assert state.ready and "draining" not in (state.reason or "")  # still serving
    (event,) = [json.loads(line) for line in (leak_lab / "events.jsonl").read_text().splitlines()]
    assert event["action"] == "none" and event["bytes_per_request"] == pytest.approx(100 * KIB)
    state.resources = watch
    families = {f.name: f for f in ResourceCollector(state).collect()}
    assert families["lab_memory_leak_suspected"].samples[0].value == 1.0
    assert families["lab_memory_growth_bytes_per_request"].samples[0].value == pytest.approx(100 * KIB)


@contextmanager
def serving(root: Path, model: str, log_path: Path):
    """`lab serve --model MODEL` on a free port, in a process group of its own (with
    restart_on_leak a supervisor and its worker): the base URL once ready; the group
    stopped at the end."""
    port = free_port()
    log = log_path.open("w")
    proc = subprocess.Popen([str(LAB), "serve", "--port", str(port), "--root", str(root), "--model", model],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                            env={**os.environ, "LAB_HOME": ""})
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base, proc, log_path, 30)
        yield base, proc
    finally:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            if proc.poll() is not None:
                break
            try:
                os.killpg(proc.pid, sig)  # the group start_new_session made: only what this test started
                proc.wait(20)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass
        log.close()


def wait_ready(base: str, proc, log_path: Path, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while True:
        assert proc.poll() is None, log_path.read_text()
        try:
            if httpx.get(f"{base}/readyz", timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, f"not ready in {seconds:.0f} s:\n" + log_path.read_text()
        time.sleep(0.05)


def scrape(http: httpx.Client) -> dict[tuple, float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(http.get("/metrics").text) for s in family.samples}


RSS = ("lab_memory_leak_suspected", (("memory", "rss"),))
PER_REQUEST = ("lab_memory_growth_bytes_per_request", (("memory", "rss"),))
RESIDENT = ("process_resident_memory_bytes", ())


def reading(i: int) -> dict:
    return {"READING_ID": f"r-{i}", "READ_AT": "2024-03-01T09:00:00", "WATTS": float(i % 100)}


def load(http: httpx.Client, until=None) -> tuple[int, dict, httpx.Response | None]:
    """Up to ``LOAD`` predictions, scraping /metrics every 100; stops early when ``until(sent,
    scrape)`` holds or a prediction is not a 200. (requests sent, the last scrape, the first non-200)."""
    metrics = {}
    for i in range(1, LOAD + 1):
        answer = http.post("/predict", json=reading(i))
        if answer.status_code != 200:
            return i, metrics, answer
        if i % 100 == 0:
            metrics = scrape(http)
            if until is not None and until(i, metrics):
                return i, metrics, None
    return LOAD, scrape(http), None


@pytest.mark.slow
def test_a_leaking_model_is_flagged_and_the_same_model_without_the_leak_is_not(leak_lab, tmp_path):
    configure(leak_lab, restart=False)
    with serving(leak_lab, "leaky", tmp_path / "leaky.log") as (base, proc):
        with httpx.Client(base_url=base, timeout=10) as http:
            sent, metrics, refused = load(http, until=lambda _, m: m.get(RSS) == 1)
            assert refused is None, refused.text
            assert metrics.get(RSS) == 1, f"not flagged after {sent} requests: {metrics.get(PER_REQUEST)}"
            assert 60 * KIB < metrics[PER_REQUEST] < 140 * KIB  # the 100 KiB each call keeps
            assert metrics[("lab_memory_trend_p_value", (("memory", "rss"),))] < 0.01
            assert metrics[("lab_memory_growth_bytes_per_hour", (("memory", "rss"),))] > 0
            assert http.get("/readyz").status_code == 200  # restart_on_leak off: it only reports
    (event,) = [json.loads(line) for line in (leak_lab / "events.jsonl").read_text().splitlines()]
    assert event["model"] == "leaky" and event["memory"] == "rss" and event["action"] == "none"
    assert 60 * KIB < event["bytes_per_request"] < 140 * KIB and event["p_value"] < 0.01
    assert event["growth_bytes"] >= 8 * MIB and event["pid"] == proc.pid
    assert "memory leak suspected: rss grows" in (tmp_path / "leaky.log").read_text()
    print(f"leaky: flagged within {sent} requests, {metrics[PER_REQUEST] / KIB:.1f} KiB/request")

    configure(leak_lab, restart=False)  # the event file emptied
    with serving(leak_lab, "steady", tmp_path / "steady.log") as (base, _):
        with httpx.Client(base_url=base, timeout=10) as http:
            # twice the load that flagged the leak (at least 1,000 requests, at most LOAD), and judged
            steady_sent, metrics, refused = load(http, until=lambda n, m: n >= max(2 * sent, 1000)
                                                 and PER_REQUEST in m)
    assert refused is None and steady_sent >= min(2 * sent, LOAD)
    assert metrics[RSS] == 0
    assert abs(metrics[PER_REQUEST]) < 8 * KIB  # judged (past the warm-up): far under the 16 KiB threshold
    assert not (leak_lab / "events.jsonl").exists()
    print(f"steady: {steady_sent} requests, {metrics[PER_REQUEST] / KIB:.2f} KiB/request")


@pytest.mark.slow
def test_with_restart_on_leak_the_server_drains_restarts_and_is_ready_again_smaller(leak_lab, tmp_path):
    configure(leak_lab, restart=True)
    log_path = tmp_path / "restart.log"
    with serving(leak_lab, "leaky", log_path) as (base, proc):
        with httpx.Client(base_url=base, timeout=30) as http:
            before = scrape(http)
            sent, metrics, refused = load(http)
            # the flagged worker stops taking requests, with the reason, then exits
            assert refused is not None, f"never drained in {sent} requests"
            assert refused.status_code == 503 and "draining: memory leak suspected (rss grows" in refused.text
            wait_ready(base, proc, log_path, 30)  # the supervisor's fresh worker, warmed up
            after = scrape(http)
            assert after[("process_start_time_seconds", ())] > before[("process_start_time_seconds", ())]
            assert after[("lab_memory_leak_restarts_total", ())] == 1  # the exited worker's count stays
            assert after[RSS] == 0 and after[("lab_ready", ())] == 1
            assert http.post("/predict", json=reading(0)).status_code == 200
    (event,) = [json.loads(line) for line in (leak_lab / "events.jsonl").read_text().splitlines()]
    assert event["action"] == "restart" and event["model"] == "leaky"
    # RSS: the fresh worker's at ready, the flagged one's when flagged, the new one's at ready
    start, flagged, fresh = before[RESIDENT], event["latest_bytes"], after[RESIDENT]
    assert flagged - start >= 8 * MIB  # it did grow (min_growth_mib over the judged samples alone)
    assert fresh < start + (flagged - start) / 2, (start, flagged, fresh)  # ... and the restart gave it back
    print(f"restart: drained after {sent} requests; RSS {start / MIB:.0f} MiB at start, {flagged / MIB:.0f} MiB "
          f"when flagged, {fresh / MIB:.0f} MiB after the restart")
    text = log_path.read_text()
    assert "drained (0 request(s) still in flight)" in text and "lab serve: ledger closed:" in text
