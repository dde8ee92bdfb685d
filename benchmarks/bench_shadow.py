"""What shadow mode costs the request path: `lab serve` of the tiny lab under wrk, with no
shadow and with one mirroring every answered request to a challenger, in interleaved
rounds (off, on, off, on, ...), at 1 and 16 connections.

    .venv/bin/python benchmarks/bench_shadow.py [--seconds 5] [--rounds 2]

Prints req/s and wrk's p50/p99 per round, the medians per mode, and how many requests
the mirror wrote, against how many were answered while it was on (the rest were dropped
on a full queue, counted, never waited for).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lab.config import load_config  # noqa: E402
from lab.registry import Registry  # noqa: E402
from lab.serving.shadow_report import shadow_counts, shadow_criteria  # noqa: E402
from plugins.fraud.testing import MODEL_ARTIFACT, build_tiny_lab  # noqa: E402

LAB = Path(sys.executable).parent / "lab"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wrk(url: str, body: dict, connections: int, seconds: float) -> dict:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write('wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
                     f"wrk.body = {json.dumps(json.dumps(body))}\n")
    out = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{int(seconds)}s", "--latency", "-s", script.name,
                          f"{url}/predict"], capture_output=True, text=True, check=True).stdout
    os.unlink(script.name)

    def ms(label: str) -> float:
        value, unit = re.search(rf"{label}\s+([\d.]+)(us|ms|s)", out).groups()
        return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]

    requests = int(re.search(r"(\d+) requests in", out).group(1))
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)), "p50": ms("50%"),
            "p99": ms("99%"), "requests": requests, "errors": int(non_2xx.group(1)) if non_2xx else 0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="bench-shadow-"))
    lab = build_tiny_lab(folder / "lab")
    config = load_config(lab.root)
    with Registry.open(config.registry_path, project_root=lab.root) as reg:
        reg.register_model("fraud", run_id=None, flavor="lightning_mlp", artifact_path=MODEL_ARTIFACT,
                           metrics={}, lineage={})
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = (folder / "serve.log").open("w")
    proc = subprocess.Popen([str(LAB), "serve", "--port", str(port), "--root", str(lab.root)], stdout=log,
                            stderr=subprocess.STDOUT, env={**os.environ, "LAB_HOME": ""})
    results: dict[tuple[str, int], list[dict]] = {}
    mirrored_answers = 0
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline and proc.poll() is None, (folder / "serve.log").read_text()
            time.sleep(0.1)
        body = lab.transaction(1)
        wrk(url, body, 4, 2)  # warm-up
        shadow_id = None
        for _ in range(args.rounds):
            for mode in ("off", "on"):
                with Registry.open(config.registry_path) as reg:
                    if mode == "on":
                        shadow_id = reg.start_shadow("fraud", 2, shadow_criteria(
                            "classification", min_requests=10**9, days=1))["id"]
                    elif shadow_id is not None:
                        reg.end_shadow("fraud", shadow_id, "stopped", reason="benchmark round")
                time.sleep(2.5)  # the server follows within flag_refresh_s (1 s)
                for connections in (1, 16):
                    r = wrk(url, body, connections, args.seconds)
                    results.setdefault((mode, connections), []).append(r)
                    if mode == "on":
                        mirrored_answers += r["requests"]
                    print(f"shadow {mode:<3} c={connections:<2} {r['rps']:8.0f} req/s  p50 {r['p50']:6.2f} ms  "
                          f"p99 {r['p99']:6.2f} ms  non-2xx {r['errors']}", flush=True)
        with Registry.open(config.registry_path) as reg:
            reg.end_shadow("fraud", shadow_id, "stopped", reason="benchmark over")
        time.sleep(2)
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(30)
        log.close()
    written = sum(shadow_counts(config.ledger_path, sid)["requests"] for sid in range(1, shadow_id + 1))
    print("medians:")
    for (mode, connections), rounds in sorted(results.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        print(f"  shadow {mode:<3} c={connections:<2} {statistics.median(r['rps'] for r in rounds):8.0f} req/s  "
              f"p50 {statistics.median(r['p50'] for r in rounds):6.2f} ms  "
              f"p99 {statistics.median(r['p99'] for r in rounds):6.2f} ms")
    print(f"mirror: {written} rows written for {mirrored_answers} requests answered while on "
          f"({mirrored_answers - written} dropped on a full queue or in flight at a switch)")


if __name__ == "__main__":
    main()
