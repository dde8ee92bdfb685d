"""Model-server latency and throughput against a bare ASGI app on the same server settings.

    .venv/bin/python benchmarks/bench_serving.py [--root LAB] [--requests 3000]
        [--concurrency 1 8] [--time-limit 60]

Two servers, one at a time, each in its own process on 127.0.0.1 with uvicorn's settings
from ``plugins.litestar_serving.server.UVICORN_SETTINGS`` (uvloop, httptools, no access
log): the real ``lab serve`` (Litestar, msgspec body, online-store reads, request-time
features, the model, the ledger) and a bare ASGI app that reads the body and returns a
fixed JSON. A load process, separate from both, sends ``--requests`` POSTs over
``--concurrency`` keep-alive connections with raw sockets (client overhead is a few tens
of microseconds) after a short warm-up, stopping at ``--time-limit`` seconds whatever
the count. It prints p50/p99 latency and throughput for both and the ratios.

``--profile N`` measures nothing over the network: it runs the server's app in this process
(lifespan, start-up, then N /predict requests sent straight to the ASGI callable, so
Litestar's request and response handling is included and the socket is not) under
cProfile, prints the top functions by own time and the share of /predict spent in
feature assembly, the model's forward and the ledger's ``append``.

With ``--root`` the lab there is served (its model's champion and online store; the
requests land in its ledger): a fraud lab's requests draw customers and terminals from
the simulator's ranges, any other lab's are its spec's example request with a fresh id
and a time just after the materialization. Otherwise the fraud plugin's tiny lab is built
in a temporary folder (``plugins.fraud.testing``).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

WARMUP = 200
LAB = Path(sys.executable).parent / "lab"


# -- the bare comparison app --------------------------------------------------------------

_FIXED = json.dumps({"score": 0.5, "model": "bare", "model_version": 0}).encode()


async def bare_app(scope, receive, send):
    """ASGI app: read the whole body, answer a fixed JSON. Lifespan is acknowledged."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(_FIXED)).encode())]})
    await send({"type": "http.response.body", "body": _FIXED})


def serve_bare(port: int) -> None:
    import uvicorn

    from plugins.litestar_serving.server import UVICORN_SETTINGS

    uvicorn.run(bare_app, host="127.0.0.1", port=port, log_level="warning", **UVICORN_SETTINGS)


# -- the load generator (runs in its own process) ---------------------------------------------

def _request_bytes(path: str, body: bytes) -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


async def _connection(port: int, requests: list[bytes], next_index, latencies: list[int], errors: list[str],
                      deadline: float) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while time.monotonic() < deadline:
            i = next_index()
            if i is None:
                return
            t0 = time.perf_counter_ns()
            writer.write(requests[i])
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            await reader.readexactly(length)
            latencies.append(time.perf_counter_ns() - t0)
            if head[9:12] != b"200":
                errors.append(head[:40].decode(errors="replace"))
    finally:
        writer.close()


async def _drive(port: int, path: str, bodies: list[bytes], concurrency: int, time_limit: float) -> dict:
    requests = [_request_bytes(path, b) for b in bodies]

    def counter(n):
        state = {"i": 0}

        def take():
            if state["i"] >= n:
                return None
            state["i"] += 1
            return (state["i"] - 1) % len(requests)
        return take

    warm: list[int] = []
    await asyncio.gather(*(_connection(port, requests, counter(WARMUP // concurrency), warm, [], time.monotonic() + 30)
                           for _ in range(concurrency)))
    latencies: list[int] = []
    errors: list[str] = []
    take = counter(len(requests))
    started = time.perf_counter()
    deadline = time.monotonic() + time_limit
    await asyncio.gather(*(_connection(port, requests, take, latencies, errors, deadline) for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    latencies.sort()
    n = len(latencies)
    return {
        "requests": n,
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
        "seconds": elapsed,
        "throughput": n / elapsed,
        "p50_ms": latencies[n // 2] / 1e6,
        "p99_ms": latencies[min(n - 1, int(n * 0.99))] / 1e6,
    }


def drive(port: int, path: str, bodies_file: str, concurrency: int, time_limit: float) -> None:
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    bodies = [line.encode() for line in Path(bodies_file).read_text().splitlines()]
    print(json.dumps(asyncio.run(_drive(port, path, bodies, concurrency, time_limit))))


# -- orchestration ------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_ready(port: int, path: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode} before it was ready")
        try:
            if httpx.get(f"http://127.0.0.1:{port}{path}", timeout=2).status_code in (200, 405):
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"server on port {port} not ready after {timeout:.0f} s")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)


def bodies_for(root: Path | None, tiny, n: int) -> list[str]:
    """Request bodies: the tiny lab's known entities, or for the lab at ``root`` its
    spec's example varied (a fraud lab: the simulator's id ranges)."""
    if tiny is not None:
        return [json.dumps(tiny.transaction(i)) for i in range(n)]
    from lab.config import load_config
    from lab.plugins import feature_views, get_plugin_manager, model_spec

    config = load_config(root)
    pm = get_plugin_manager(config)
    spec = model_spec(pm, config)
    views = feature_views(pm, config)
    store = pm.hook.lab_online_store(config=config)
    try:
        marks = [store.watermark(views[name]) for name in spec.views]
    finally:
        store.close()
    schema = spec.request
    example = schema.example_request()
    watermark = min((m for m in marks if m is not None), default=example[schema.timestamp])
    fraud = None
    if config.section("fraud") is not None:
        from plugins.fraud.settings import fraud_settings

        fraud = fraud_settings(config)
    rng = random.Random(0)
    out = []
    for i in range(n):
        body = dict(example)
        body[schema.id] = 10_000_000 + i if schema.field(schema.id).type == "int" else f"bench-{i}"
        body[schema.timestamp] = (watermark + dt.timedelta(seconds=rng.randrange(86_400))).isoformat()
        if fraud is not None:
            body.update(CUSTOMER_ID=rng.randrange(fraud.n_customers), TERMINAL_ID=rng.randrange(fraud.n_terminals),
                        TX_AMOUNT=round(rng.uniform(1, 200), 2))
        out.append(json.dumps(body, default=str))
    return out


def measure(name: str, port: int, path: str, bodies_file: Path, concurrency: list[int], time_limit: float) -> dict:
    results = {}
    for c in concurrency:
        done = subprocess.run(
            [sys.executable, __file__, "--drive", str(port), path, str(bodies_file), str(c), str(time_limit)],
            capture_output=True, text=True, timeout=time_limit + 90,
        )
        if done.returncode != 0:
            raise SystemExit(f"load generator failed for {name} at {c} connection(s):\n{done.stderr}")
        results[c] = json.loads(done.stdout)
        r = results[c]
        print(f"{name:<11} {c:>3} conn  {r['requests']:>6} req  p50 {r['p50_ms']:7.3f} ms  "
              f"p99 {r['p99_ms']:7.3f} ms  {r['throughput']:8.0f} req/s  errors {r['errors']}", flush=True)
    return results


# -- an in-process profile of /predict -------------------------------------------------------

PROFILED_PARTS = {
    "feature assembly (FeatureAssembler.assemble)": ("scoring.py", "assemble"),
    "online store reads": ("sqlite_online/store.py", None),
    "model forward (LoadedMLP.predict)": ("lightning_tabular/loaded.py", "predict"),
    "ledger append": ("ledger.py", "append"),
}


async def _profile_app(root: Path, bodies: list[bytes], n: int):
    import cProfile

    from lab.config import load_config
    from plugins.litestar_serving import create_app

    app = create_app(load_config(root))
    state = app.state.serving
    async with app.lifespan():
        deadline = time.monotonic() + 120
        while not state.ready:
            if "failed" in (state.reason or "") or time.monotonic() > deadline:
                raise SystemExit(f"the app did not get ready: {state.reason}")
            await asyncio.sleep(0.05)

        async def one(body: bytes) -> int:
            sent = False
            status = 0

            async def receive():
                nonlocal sent
                if sent:
                    await asyncio.sleep(3600)
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}

            async def send(message):
                nonlocal status
                if message["type"] == "http.response.start":
                    status = message["status"]

            scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
                     "method": "POST", "scheme": "http", "path": "/predict", "raw_path": b"/predict",
                     "root_path": "", "query_string": b"", "server": ("127.0.0.1", 8000),
                     "client": ("127.0.0.1", 50000),
                     "headers": [(b"host", b"127.0.0.1:8000"), (b"content-type", b"application/json"),
                                 (b"content-length", str(len(body)).encode())]}
            await app(scope, receive, send)
            return status

        for i in range(WARMUP):
            await one(bodies[i % len(bodies)])
        timings = _direct_timings(state, bodies, n)
        started = time.perf_counter()
        for i in range(n):
            await one(bodies[i % len(bodies)])
        timings["request"] = (time.perf_counter() - started) / n
        profiler = cProfile.Profile()
        started = time.perf_counter()
        profiler.enable()
        statuses = [await one(bodies[i % len(bodies)]) for i in range(n)]
        profiler.disable()
        elapsed = time.perf_counter() - started
    bad = [s for s in statuses if s != 200]
    if bad:
        raise SystemExit(f"{len(bad)} of {n} requests did not answer 200 (first: {bad[0]})")
    return profiler, elapsed, timings


def _direct_timings(state, bodies: list[bytes], n: int) -> dict[str, float]:
    """Seconds per call, without a profiler, of the two parts the handler calls: feature
    assembly and the model's predict, on the requests the profile sends."""
    schema = state.spec.request
    datetimes = [f.name for f in schema.fields if f.type == "datetime"]
    requests = []
    for body in bodies[:n]:
        fields = json.loads(body)
        for name in datetimes:
            fields[name] = dt.datetime.fromisoformat(fields[name]).replace(tzinfo=None)
        requests.append(fields)
    _version, model = state.current
    assembler = state.assembler
    vectors = [assembler.assemble(r, r[schema.timestamp]).vector for r in requests]
    out = {}
    started = time.perf_counter()
    for i in range(n):
        r = requests[i % len(requests)]
        assembler.assemble(r, r[schema.timestamp])
    out["assemble"] = (time.perf_counter() - started) / n
    started = time.perf_counter()
    for i in range(n):
        model.predict(vectors[i % len(vectors)])
    out["predict"] = (time.perf_counter() - started) / n
    return out


def profile(root: Path, bodies: list[str], n: int, top: int = 25) -> None:
    """Profile ``n`` in-process /predict requests; print the top functions and the shares."""
    import pstats

    profiler, elapsed, timings = asyncio.run(_profile_app(root, [b.encode() for b in bodies], n))
    request = timings["request"]
    print(f"{n} in-process /predict without a profiler: {request * 1e6:.0f} us each; of which, timed apart, "
          f"feature assembly {timings['assemble'] * 1e6:.0f} us ({timings['assemble'] / request:.0%}) and the "
          f"model's predict {timings['predict'] * 1e6:.0f} us ({timings['predict'] / request:.0%})")
    stats = pstats.Stats(profiler)
    total = stats.total_tt
    print(f"{n} in-process /predict in {elapsed:.2f} s under cProfile ({elapsed / n * 1e6:.0f} us each, "
          f"profiled time {total / n * 1e6:.0f} us each)")
    for label, (file_part, function) in PROFILED_PARTS.items():
        cumulative = 0.0
        for (filename, _line, name), (_cc, _nc, _tt, ct, callers) in stats.stats.items():
            if (file_part is None or filename.endswith(file_part)) and (function is None or name == function):
                # count only the outermost calls: a caller matching the same pattern would double it
                if not any((file_part is None or c[0].endswith(file_part)) and (function is None or c[2] == function)
                           for c in callers):
                    cumulative += ct
        print(f"  {label:<46} {cumulative / total:6.1%}  ({cumulative / n * 1e6:6.1f} us per request)")
    print()
    stats.sort_stats(os.environ.get("LAB_PROFILE_SORT", "tottime")).print_stats(int(os.environ.get("LAB_PROFILE_TOP", top)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", help="serve this lab (it needs a champion and a materialized online store)")
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--time-limit", type=float, default=60.0, help="seconds per measurement, at most")
    parser.add_argument("--profile", type=int, metavar="N",
                        help="profile N /predict requests in this process with cProfile instead of measuring")
    parser.add_argument("--drive", nargs=5, metavar=("PORT", "PATH", "BODIES", "CONN", "LIMIT"), help=argparse.SUPPRESS)
    parser.add_argument("--serve-bare", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.drive:
        port, path, bodies, conn, limit = args.drive
        return drive(int(port), path, bodies, int(conn), float(limit))
    if args.serve_bare:
        return serve_bare(args.serve_bare)

    with tempfile.TemporaryDirectory(prefix="bench-serving-") as tmp:
        tiny = None
        if args.root:
            root = Path(args.root).resolve()
        else:
            from plugins.fraud.testing import build_tiny_lab

            print("building a tiny lab (one epoch on 400 rows)...", flush=True)
            tiny = build_tiny_lab(Path(tmp) / "lab")
            root = tiny.root
        bodies = bodies_for(root if args.root else None, tiny, args.requests)
        if args.profile:
            return profile(root, bodies, args.profile)
        bodies_file = Path(tmp) / "bodies.jsonl"
        bodies_file.write_text("\n".join(bodies))
        print(f"{os.cpu_count()} CPU(s); {args.requests} requests per measurement after {WARMUP} warm-up, "
              f"at most {args.time_limit:.0f} s each", flush=True)

        results = {}
        port = free_port()
        log = (Path(tmp) / "serve.log").open("w")
        proc = subprocess.Popen([str(LAB), "--root", str(root), "serve", "--port", str(port), "--log-level", "warning"],
                                stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_ready(port, "/readyz", proc)
            results["lab serve"] = measure("lab serve", port, "/predict", bodies_file, args.concurrency, args.time_limit)
        finally:
            stop(proc)
            log.close()
        print((Path(tmp) / "serve.log").read_text().strip().splitlines()[-1])
        port = free_port()
        proc = subprocess.Popen([sys.executable, __file__, "--serve-bare", str(port)])
        try:
            wait_ready(port, "/", proc)
            results["bare ASGI"] = measure("bare ASGI", port, "/", bodies_file, args.concurrency, args.time_limit)
        finally:
            stop(proc)

    print()
    for c in args.concurrency:
        real, bare = results["lab serve"][c], results["bare ASGI"][c]
        print(f"{c} conn: lab serve / bare ASGI  throughput {real['throughput'] / bare['throughput']:.2f}x, "
              f"p50 {real['p50_ms'] / bare['p50_ms']:.1f}x, p99 {real['p99_ms'] / bare['p99_ms']:.1f}x")


if __name__ == "__main__":
    main()
