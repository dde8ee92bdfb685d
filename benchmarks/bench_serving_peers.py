"""``lab serve`` beside its peers in one interleaved run: MLflow's model server and a bare ASGI app.

    .venv/bin/python benchmarks/bench_serving_peers.py [--peers-dir /work/shared/peers]
        [--mlflow-python PEERS_ENV/mlflowvenv/bin/python] [--mlflow-work-dir DIR]
        [--root LAB] [--body FILE] [--rounds 3] [--duration 10] [--conns 1,16]
        [--cold-starts 3] [--lab-workers 1,2] [--lab-args ARGS] [--results out.json]

Three sides, each a server on 127.0.0.1 in its own process group (stopped by that group's
id, always, and never alive past ``--max-seconds``):

- **lab**: ``lab serve`` of the lab at ``--root`` (default: the fraud plugin's tiny lab, built in
  a temporary folder), ``POST /predict`` with the README's request body for the demo lab or
  the tiny lab's known customer: online-store feature lookup, request-time features, the
  model (a 15-64-32-1 MLP), the ledger, ``/metrics`` bookkeeping, all as served.
- **bare**: the peers harness's ``asgi_hello.py`` (reads the body, answers a fixed JSON) under
  the same uvicorn settings as ``lab serve`` (uvloop, httptools, no access log), in the
  lab's interpreter: the floor of any Python ASGI server on this machine.
- **mlflow**: ``mlflow models serve --env-manager local`` of the harness's torch MLP
  (30-64-1; ``mlflow_log_model.py``, run here once if ``--mlflow-work-dir`` has no model),
  one-row ``POST /invocations``. Skipped, with a message, when its Python is missing.

Cold start: ``--cold-starts`` times per side, interleaved, ``Popen`` to the first 200 (the lab
also to its first 200 from ``/readyz``). Load: ``--rounds`` rounds; in each, every side and
every ``--conns`` value gets one ``loadgen_wrk.sh`` run (wrk + post.lua, ``--duration`` s), the
sides' order rotating between rounds so that no side always runs first or last. Medians over
rounds, each figure beside its baseline with the ratio:

- lab req/s over MLflow's (the goal: >= 6x at 16 connections) and over the bare app's;
- the lab's own work per request: p50 at 1 connection minus the bare app's (one request in
  flight, so the latency is the service time), and at 16 connections 1/rps minus the bare
  app's 1/rps (the server's CPU per request, when it is the bottleneck);
- p99 over p50 at 16 connections (wrk corrects for coordinated omission: a stall counts
  for every request it delayed);
- cold start against 1.5 s.

Needs wrk (``apt-get install wrk``) and the harness (``/work/shared/peers``, or ``--peers-dir``;
``PEERS_DIR``, ``MLFLOW_PY`` and ``MLFLOW_WORK_DIR`` work too). wrk and the servers share the
machine's cores: on 2 cores wrk takes a good part of one, so every server here is measured
with less than the whole machine, the same for all three sides.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

LAB = Path(sys.executable).parent / "lab"
README_BODY = {"TRANSACTION_ID": 1, "TX_DATETIME": "2018-10-01T12:00:00", "CUSTOMER_ID": 596,
               "TERMINAL_ID": 3156, "TX_AMOUNT": 57.16}
"""The request of README.md's "After the demo", for a lab built by ``make demo``."""
DEFAULT_PEERS = Path("/work/shared/peers")
GOALS = {"rps_over_mlflow_c16": 6.0, "own_work_ms": 0.25, "p99_over_p50_c16": 5.0, "cold_start_s": 1.5}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def post(port: int, path: str, body: bytes, timeout: float = 2.0) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def get(port: int, path: str, timeout: float = 2.0) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


class Side:
    """One server to measure: how to start it, where to send, what to send."""

    def __init__(self, name: str, cmd: list[str], path: str, body_file: Path, env: dict | None = None,
                 cwd: Path | None = None, ready_path: str | None = None):
        self.name, self.cmd, self.path, self.body_file = name, cmd, path, body_file
        self.body = body_file.read_bytes()
        self.env, self.cwd, self.ready_path = env, cwd, ready_path
        self.port = 0
        self.proc: subprocess.Popen | None = None
        self.log = None

    def start(self, log_dir: Path, max_wait: float = 120.0) -> dict:
        """Start on a fresh port; seconds from Popen to the first 200 (``predict``, and
        ``ready`` when the side has a readiness route)."""
        self.port = free_port()
        cmd = [part.replace("{port}", str(self.port)) for part in self.cmd]
        self.log = (log_dir / f"{self.name}.log").open("ab")
        started = time.perf_counter()
        self.proc = subprocess.Popen(cmd, env=self.env, cwd=self.cwd, stdout=self.log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        out: dict[str, float] = {}
        while time.perf_counter() - started < max_wait:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}; see {log_dir / self.name}.log")
            try:
                if self.ready_path and "ready" not in out and get(self.port, self.ready_path) == 200:
                    out["ready"] = time.perf_counter() - started
                if not self.ready_path or "ready" in out:
                    status, _ = post(self.port, self.path, self.body)
                    if status == 200:
                        out["predict"] = time.perf_counter() - started
                        out.setdefault("ready", out["predict"])
                        return out
            except OSError:
                pass
            time.sleep(0.01)
        self.stop()
        raise TimeoutError(f"{self.name} did not answer 200 within {max_wait:.0f} s")

    def cpu_seconds(self) -> float:
        """User + system CPU seconds of every process in this server's group (workers too)."""
        total, tick = 0.0, os.sysconf("SC_CLK_TCK")
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                stat = Path(f"/proc/{pid}/stat").read_text()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()
            if self.proc is not None and int(fields[2]) == self.proc.pid:  # pgrp
                total += (int(fields[11]) + int(fields[12])) / tick
        return total

    def stop(self) -> None:
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)  # the group start_new_session made for it
        except ProcessLookupError:
            pass
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        self.proc = None
        if self.log is not None:
            self.log.close()
            self.log = None


def run_wrk(peers: Path, side: Side, duration: float, conns: int) -> dict:
    url = f"http://127.0.0.1:{side.port}{side.path}"
    cmd = ["bash", str(peers / "loadgen_wrk.sh"), url, str(side.body_file), str(int(duration)), str(conns), "1"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60)
    for line in done.stdout.splitlines():
        if line.startswith("WRK_JSON "):
            return json.loads(line[len("WRK_JSON "):])
    raise RuntimeError(f"wrk failed against {side.name}: {done.stdout[-1500:]} {done.stderr[-1500:]}")


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def ratio(a, b):
    return a / b if a is not None and b else None


def fmt(value, spec=".3g"):
    return "-" if value is None else format(value, spec)


# -- setting the sides up -----------------------------------------------------------------

def lab_sides(args, tmp: Path) -> list[Side]:
    """``lab serve`` once per ``--lab-workers`` count: ``lab`` (one worker), ``lab-w2``, ..."""
    if args.root:
        root = Path(args.root).resolve()
        body = Path(args.body).read_bytes() if args.body else json.dumps(README_BODY).encode()
    else:
        from plugins.fraud.testing import build_tiny_lab

        print("building the tiny lab (one epoch on 400 rows)...", file=sys.stderr, flush=True)
        tiny = build_tiny_lab(tmp / "lab")
        root = tiny.root
        body = Path(args.body).read_bytes() if args.body else json.dumps(tiny.transaction(1)).encode()
    body_file = tmp / "lab_body.json"
    body_file.write_bytes(body)
    sides = []
    for workers in (int(w) for w in args.lab_workers.split(",")):
        cmd = [str(LAB), "--root", str(root), "serve", "--port", "{port}", "--log-level", "warning",
               "--workers", str(workers), *args.lab_args.split()]
        sides.append(Side("lab" if workers == 1 else f"lab-w{workers}", cmd, "/predict", body_file,
                          ready_path="/readyz"))
    return sides


def bare_side(peers: Path, body_file: Path) -> Side:
    from plugins.litestar_serving.server import UVICORN_SETTINGS

    cmd = [sys.executable, "-m", "uvicorn", "asgi_hello:app", "--app-dir", str(peers), "--host", "127.0.0.1",
           "--port", "{port}", "--log-level", "warning", "--loop", UVICORN_SETTINGS["loop"],
           "--http", UVICORN_SETTINGS["http"], "--no-access-log"]
    return Side("bare", cmd, "/predict", body_file)  # the lab's body: it reads it and ignores it


def mlflow_side(args, peers: Path) -> Side | None:
    python = Path(args.mlflow_python) if args.mlflow_python else None
    if python is None or not python.exists():
        print(f"mlflow: skipped: no MLflow Python at {python} (install it as {peers}/README.md says, then pass "
              "--mlflow-python or set MLFLOW_PY)", file=sys.stderr)
        return None
    bindir = python.parent
    if not (bindir / "mlflow").exists():
        print(f"mlflow: skipped: {bindir} has no mlflow command (pip install mlflow in that venv)", file=sys.stderr)
        return None
    work = Path(args.mlflow_work_dir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    if not (work / "model_uri.txt").exists():
        print(f"mlflow: logging the harness's MLP into {work} (about a minute)...", file=sys.stderr, flush=True)
        done = subprocess.run([str(python), str(peers / "mlflow_log_model.py"), "--work-dir", str(work),
                               "--inproc-iters", "200"], capture_output=True, text=True, timeout=900)
        if done.returncode != 0:
            print(f"mlflow: skipped: mlflow_log_model.py failed:\n{done.stderr[-2000:]}", file=sys.stderr)
            return None
    uri = (work / "model_uri.txt").read_text().strip()
    env = dict(os.environ, MLFLOW_TRACKING_URI=f"sqlite:///{work / 'mlflow.db'}",
               PATH=f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}")  # mlflow execs `uvicorn` from PATH
    cmd = [str(bindir / "mlflow"), "models", "serve", "-m", uri, "--env-manager", "local", "-p", "{port}",
           "-h", "127.0.0.1"]
    return Side("mlflow", cmd, "/invocations", work / "body_1row.json", env=env)


# -- the run --------------------------------------------------------------------------------

def measure(args, sides: list[Side], peers: Path, log_dir: Path, deadline: float) -> dict:
    conns = [int(c) for c in args.conns.split(",")]
    res: dict = {"cold_start": {s.name: [] for s in sides}, "load": {s.name: {c: [] for c in conns} for s in sides}}
    try:
        for k in range(args.cold_starts):
            for side in sides[k % len(sides):] + sides[:k % len(sides)]:
                times = side.start(log_dir)
                res["cold_start"][side.name].append(times)
                print(f"cold start {side.name}: ready {times['ready']:.3f} s, first 200 {times['predict']:.3f} s",
                      file=sys.stderr, flush=True)
                if k < args.cold_starts - 1:
                    side.stop()
        for side in sides:  # every side stays up for the load rounds
            if side.proc is None:
                side.start(log_dir)
        for r in range(args.rounds):
            order = sides[r % len(sides):] + sides[:r % len(sides)]
            for c in conns:
                for side in order:
                    if time.monotonic() + args.duration + 30 > deadline:
                        print("stopping early: --max-seconds reached", file=sys.stderr)
                        return res
                    cpu = side.cpu_seconds()
                    out = run_wrk(peers, side, args.duration, c)
                    out["server_cpu_us"] = (side.cpu_seconds() - cpu) / max(out["requests"], 1) * 1e6
                    out["round"] = r
                    res["load"][side.name][c].append(out)
                    print(f"round {r} {side.name:<6} c={c:<3} {out['rps']:9.0f} req/s  p50 {out['lat_ms_p50']:.3f} ms  "
                          f"p99 {out['lat_ms_p99']:.3f} ms  CPU {out['server_cpu_us']:.0f} us/req  non-2xx {out['non2xx']}", file=sys.stderr, flush=True)
    finally:
        for side in sides:
            side.stop()
    return res


def summarize(res: dict, conns: list[int]) -> dict:
    out: dict = {"sides": {}, "ratios": {}}
    for name, by_c in res["load"].items():
        for c, runs in by_c.items():
            out["sides"].setdefault(name, {})[c] = {
                "rps": median([x["rps"] for x in runs]), "p50_ms": median([x["lat_ms_p50"] for x in runs]),
                "p99_ms": median([x["lat_ms_p99"] for x in runs]), "rounds": len(runs),
                "cpu_us": median([x.get("server_cpu_us") for x in runs]),
                "non2xx": sum(x["non2xx"] for x in runs), "hit_count_cap": any(x["hit_count_cap"] for x in runs),
                "rps_all": [round(x["rps"]) for x in runs]}
    for name, starts in res["cold_start"].items():
        if starts:
            out["sides"].setdefault(name, {})["cold_start"] = {
                "ready_s": median([s["ready"] for s in starts]), "predict_s": median([s["predict"] for s in starts]),
                "all": [round(s["predict"], 3) for s in starts]}

    def per_round(a: str, b: str, c: int, fn):
        runs_a = {x["round"]: x for x in res["load"].get(a, {}).get(c, [])}
        runs_b = {x["round"]: x for x in res["load"].get(b, {}).get(c, [])}
        return median([fn(runs_a[r], runs_b[r]) for r in runs_a if r in runs_b])

    for lab in (name for name in res["load"] if name.startswith("lab")):
        for c in conns:
            out["ratios"].setdefault(lab, {})[c] = {
                "rps_over_mlflow": per_round(lab, "mlflow", c, lambda a, b: a["rps"] / b["rps"]),
                "rps_over_bare": per_round(lab, "bare", c, lambda a, b: a["rps"] / b["rps"]),
                "mlflow_p50_over_lab": per_round("mlflow", lab, c, lambda a, b: a["lat_ms_p50"] / b["lat_ms_p50"]),
                "p50_minus_bare_ms": per_round(lab, "bare", c, lambda a, b: a["lat_ms_p50"] - b["lat_ms_p50"]),
                "cpu_minus_bare_ms": per_round(lab, "bare", c, lambda a, b: (a["server_cpu_us"] - b["server_cpu_us"])
                                               / 1000),
                "p99_over_p50": median([x["lat_ms_p99"] / x["lat_ms_p50"] for x in res["load"][lab].get(c, [])]),
            }
    return out


def report(summary: dict, conns: list[int]) -> None:
    sides = summary["sides"]
    print(f"\n{'side':<8}{'conns':>6}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'CPU us/req':>12}   rounds' req/s")
    for name, by_c in sides.items():
        for c in conns:
            s = by_c.get(c)
            if s:
                print(f"{name:<8}{c:>6}{fmt(s['rps'], '.0f'):>10}{fmt(s['p50_ms'], '.3f'):>9}{fmt(s['p99_ms'], '.3f'):>9}"
                      f"{fmt(s['cpu_us'], '.0f'):>12}   {s['rps_all']}" + (f"  non-2xx {s['non2xx']}" if s["non2xx"] else "")
                      + ("  (hit wrk's count cap: req/s under-reported)" if s["hit_count_cap"] else ""))
    print("\ncold start (Popen -> first 200, median):")
    for name, by_c in sides.items():
        cold = by_c.get("cold_start")
        if cold:
            print(f"  {name:<8} ready {cold['ready_s']:.3f} s, first /predict 200 {cold['predict_s']:.3f} s  {cold['all']}"
                  + (f"  (goal <= {GOALS['cold_start_s']} s)" if name.startswith("lab") else ""))
    for lab_name, by_c in summary["ratios"].items():
        print(f"\n{lab_name} beside its baselines (medians of per-round figures):")
        for c in conns:
            r = by_c[c]
            lab, bare, mlflow = (sides.get(n, {}).get(c) for n in (lab_name, "bare", "mlflow"))
            if mlflow:
                print(f"  c={c:<3} req/s    {fmt(lab['rps'], '.0f')} vs MLflow {fmt(mlflow['rps'], '.0f')}: "
                      f"{fmt(r['rps_over_mlflow'], '.2f')}x" + (f"  (goal >= {GOALS['rps_over_mlflow_c16']:g}x)"
                                                                if c == 16 else ""))
                print(f"  c={c:<3} p50      {fmt(lab['p50_ms'], '.3f')} ms vs MLflow {fmt(mlflow['p50_ms'], '.3f')} ms: "
                      f"MLflow {fmt(r['mlflow_p50_over_lab'], '.2f')}x slower")
            if bare:
                print(f"  c={c:<3} req/s    {fmt(lab['rps'], '.0f')} vs bare {fmt(bare['rps'], '.0f')}: "
                      f"{fmt(r['rps_over_bare'], '.2f')}x")
                print(f"  c={c:<3} p50      {fmt(lab['p50_ms'], '.3f')} ms vs bare {fmt(bare['p50_ms'], '.3f')} ms: "
                      f"+{fmt(r['p50_minus_bare_ms'], '.3f')} ms"
                      + (f"  (the lab's own work per request; goal <= {GOALS['own_work_ms']} ms)" if c == 1 else ""))
                print(f"  c={c:<3} CPU/req  {fmt(lab['cpu_us'], '.0f')} us vs bare {fmt(bare['cpu_us'], '.0f')} us: "
                      f"+{fmt(r['cpu_minus_bare_ms'], '.3f')} ms (the servers' processes, all threads)")
            print(f"  c={c:<3} p99/p50  {fmt(r['p99_over_p50'], '.2f')}"
                  + (f"  (goal <= {GOALS['p99_over_p50_c16']:g})" if c == 16 else ""))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--peers-dir", default=os.environ.get("PEERS_DIR", str(DEFAULT_PEERS)),
                        help="the peers harness (loadgen_wrk.sh, post.lua, asgi_hello.py, mlflow_log_model.py)")
    parser.add_argument("--mlflow-python", default=os.environ.get("MLFLOW_PY", "/work/peers-env/mlflowvenv/bin/python"),
                        help="the MLflow venv's python (its bin/ must hold mlflow and uvicorn); missing: side skipped")
    parser.add_argument("--mlflow-work-dir", default=os.environ.get("MLFLOW_WORK_DIR"),
                        help="where the MLflow model is (or is logged once); default: a temporary folder")
    parser.add_argument("--root", help="serve this lab (default: the tiny lab, built in a temporary folder)")
    parser.add_argument("--body", help="request body file for the lab (default: README's, or the tiny lab's)")
    parser.add_argument("--lab-workers", default="1", help="comma-separated `lab serve --workers` counts, one "
                        "lab side each (default 1; e.g. 1,2)")
    parser.add_argument("--lab-args", default="", help="more `lab serve` arguments, e.g. \"--max-concurrency 2\"")
    parser.add_argument("--skip", default="", help="comma-separated sides to leave out (lab, bare, mlflow)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per wrk run")
    parser.add_argument("--conns", default="1,16")
    parser.add_argument("--cold-starts", type=int, default=3)
    parser.add_argument("--max-seconds", type=float, default=1800, help="the whole run's bound; servers stop then")
    parser.add_argument("--results", help="write the raw runs and the summary here as JSON")
    args = parser.parse_args()

    peers = Path(args.peers_dir)
    missing = [name for name in ("loadgen_wrk.sh", "post.lua", "asgi_hello.py") if not (peers / name).exists()]
    if missing:
        print(f"bench_serving_peers: the peers harness is not at {peers} (missing {', '.join(missing)}); "
              "pass --peers-dir", file=sys.stderr)
        return 2
    if shutil.which("wrk") is None:
        print("bench_serving_peers: wrk is not installed (apt-get install wrk)", file=sys.stderr)
        return 2
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    deadline = time.monotonic() + args.max_seconds
    conns = [int(c) for c in args.conns.split(",")]
    with tempfile.TemporaryDirectory(prefix="bench-peers-") as tmp_name:
        tmp = Path(tmp_name)
        args.mlflow_work_dir = args.mlflow_work_dir or str(tmp / "mlflow_work")
        labs = lab_sides(args, tmp)
        others = [bare_side(peers, labs[0].body_file), None if "mlflow" in skip else mlflow_side(args, peers)]
        sides = [side for side in (*labs, *others) if side is not None and side.name not in skip]
        print(f"{os.cpu_count()} CPU(s), load average {os.getloadavg()[0]:.2f}; sides: "
              f"{', '.join(s.name for s in sides)}; {args.rounds} rounds of {args.duration:g} s per side and "
              f"connection count {args.conns}", file=sys.stderr, flush=True)
        res = measure(args, sides, peers, tmp, deadline)
    summary = summarize(res, conns)
    report(summary, conns)
    print(f"\nload average at the end: {os.getloadavg()[0]:.2f}")
    if args.results:
        Path(args.results).write_text(json.dumps({"args": vars(args), "raw": res, "summary": summary},
                                                 indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
