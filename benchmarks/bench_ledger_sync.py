"""The cost of ``[tool.lab.serve] ledger_sync``, in process: the ledger alone, then ``/predict``.

    .venv/bin/python benchmarks/bench_ledger_sync.py

The ledger alone: ``append`` (queued, never waits) against ``append_durably`` (waits for
its commit), one at a time and 16 at a time (group commit: the records waiting share one
transaction). Then the tiny lab's app through Litestar's TestClient, with and without
``ledger_sync``, twice each interleaved: the median of 400 sequential ``/predict`` and
the rate of 16 threads. The figures are in docs/serving.md, "What a kill -9 keeps".
"""
import asyncio, statistics, sys, tempfile, threading, time
from pathlib import Path
from lab.serving.ledger import Ledger, PredictionRecord

def rec(i):
    return PredictionRecord(event_id=i, model_name="m", model_version=1, features={"a": 1.0, "b": 2.0},
                            defaults={"v": False}, score=0.5, latency_ms=1.0, request={"id": i})

async def ledger_alone(tmp):
    out = {}
    with Ledger.open(Path(tmp) / "a.db") as led:
        t = time.perf_counter()
        for i in range(3000):
            led.append(rec(i))
        out["append (default), per call"] = (time.perf_counter() - t) / 3000
        led.flush()
    with Ledger.open(Path(tmp) / "b.db", sync=True) as led:
        t = time.perf_counter()
        for i in range(1000):
            assert await led.append_durably(rec(i))
        out["append_durably, 1 at a time, per call"] = (time.perf_counter() - t) / 1000
        t = time.perf_counter()
        async def worker(k):
            for i in range(200):
                assert await led.append_durably(rec(k * 1000 + i))
        await asyncio.gather(*(worker(k) for k in range(16)))
        dt_ = time.perf_counter() - t
        out["append_durably, 16 concurrent, wall per record"] = dt_ / 3200
        out["commits for 3200 records (16 concurrent)"] = led.stats()["commits"]
    return out

def app_level(sync: bool, n=400, threads=16):
    from litestar.testing import TestClient
    from lab.config import load_config
    from plugins.fraud.testing import build_tiny_lab
    from plugins.litestar_serving import create_app
    root = Path(tempfile.mkdtemp()) / "lab"
    lab = build_tiny_lab(root)
    if sync:
        (root / "pyproject.toml").write_text((root / "pyproject.toml").read_text() + "\n[tool.lab.serve]\nledger_sync = true\n")
    with TestClient(create_app(load_config(root)), base_url="http://127.0.0.1") as client:
        while client.get("/readyz").status_code != 200:
            time.sleep(0.02)
        for i in range(50):
            client.post("/predict", json=lab.transaction(i))
        lat = []
        for i in range(n):
            t = time.perf_counter(); r = client.post("/predict", json=lab.transaction(i)); lat.append(time.perf_counter() - t)
            assert r.status_code == 200
        seq = statistics.median(lat)
        done = []
        def worker(k):
            for i in range(n // threads * 2):
                client.post("/predict", json=lab.transaction(k * 1000 + i)); done.append(1)
        ts = [threading.Thread(target=worker, args=(k,)) for k in range(threads)]
        t = time.perf_counter()
        for th in ts: th.start()
        for th in ts: th.join()
        rate = len(done) / (time.perf_counter() - t)
    return seq, rate

if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        for k, v in asyncio.run(ledger_alone(tmp)).items():
            print(f"{k}: {v*1e6:.0f} us" if isinstance(v, float) else f"{k}: {v}")
    for sync in (False, True, False, True):
        seq, rate = app_level(sync)
        print(f"app in-process, ledger_sync={sync}: median /predict {seq*1e3:.3f} ms sequential; {rate:.0f} req/s with 16 threads")
