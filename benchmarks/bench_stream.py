"""Streaming inference throughput against its baseline, the embedded predictor alone.

    .venv/bin/python benchmarks/bench_stream.py [--events 5000] [--batch 64] [--rounds 3]

On the tiny servable lab (plugins/fraud/testing.py, built in a temporary folder), each
round, in a rotating order: ``Predictor.predict_many`` over the events (the scoring every
consumer does: validation, online store, feature assembly, model, ledger), then a
``StreamConsumer`` draining the same events published to the SQLite log, and to Redis
Streams when /usr/bin/redis-server is there (started on a free 127.0.0.1 port, stopped by
PID). Each consumer run starts on a fresh group. The figures are medians of events per
second, and the stream's cost per event above the predictor's (log read, sinks, the
commit of predictions and offsets).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import lab  # noqa: E402
from lab.config import load_config  # noqa: E402
from lab.plugins import get_plugin_manager  # noqa: E402
from lab.streaming import ConsumerOptions, StreamConsumer, open_event_log  # noqa: E402
from plugins.fraud.testing import build_tiny_lab  # noqa: E402
from tests.redis_server import REDIS_SERVER, _stop, start_redis  # noqa: E402


def consume(root: Path, group: str, batch: int) -> float:
    config = load_config(root)
    pm = get_plugin_manager(config)
    options = ConsumerOptions.from_config(config, group=group, batch_size=batch, wait_s=0.0)
    with StreamConsumer(config, pm, options) as consumer:
        began = time.perf_counter()
        summary = consumer.run(drain=True)
        elapsed = time.perf_counter() - began
    return summary["scored"] / elapsed


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=5000)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="bench-stream-"))
    redis_proc = None
    try:
        tiny = build_tiny_lab(work / "template")
        events = [tiny.transaction(i) for i in range(args.events)]
        labs = {"sqlite log": work / "sqlite"}
        shutil.copytree(tiny.root, labs["sqlite log"])
        if REDIS_SERVER.exists():
            redis_proc, url = start_redis(work / "redis")
            labs["redis streams"] = work / "redis-lab"
            shutil.copytree(tiny.root, labs["redis streams"])
            with (labs["redis streams"] / "pyproject.toml").open("a") as f:
                f.write(f'\n[tool.lab.redis_streams]\nurl = "{url}"\n')
        for name, root in labs.items():
            config = load_config(root)
            with open_event_log(config, get_plugin_manager(config)) as log:
                began = time.perf_counter()
                log.append(events)
                print(f"publish to {name}: {len(events) / (time.perf_counter() - began):,.0f} events/s")

        def predictor() -> float:
            with lab.load_model("fraud@champion", root=labs["sqlite log"]) as p:
                began = time.perf_counter()
                p.predict_many(events)
                return len(events) / (time.perf_counter() - began)

        runs = {"predictor alone": predictor}
        for name, root in labs.items():
            runs[f"stream, {name}"] = (lambda root=root, name=name: consume(
                root, f"bench{len(rates.get(f'stream, {name}', []))}", args.batch))
        rates: dict[str, list[float]] = {name: [] for name in runs}
        names = list(runs)
        for r in range(args.rounds):
            for name in names[r % len(names):] + names[:r % len(names)]:
                rates[name].append(runs[name]())
        base = statistics.median(rates["predictor alone"])
        print(f"{args.events} events, batch {args.batch}, ledger on, medians of {args.rounds} rounds")
        for name in names:
            rate = statistics.median(rates[name])
            extra = "" if name == "predictor alone" else \
                f"   +{(1 / rate - 1 / base) * 1e6:,.0f} µs/event over the predictor"
            print(f"  {name:<22} {rate:>8,.0f} events/s{extra}")
    finally:
        if redis_proc is not None:
            _stop(redis_proc)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
