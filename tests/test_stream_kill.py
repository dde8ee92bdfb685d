"""Acceptance: a `lab stream run` consumer killed with SIGKILL in the middle of a batch and
restarted loses no side effect and makes none twice, and its lag metric returns to zero;
with the embedded SQLite log and with Redis Streams (a real redis-server).

The kill lands mid-batch by construction, not by luck: the lab's side-effect sink (a
module in the lab folder, like a user's) applies each idempotency key once to its own
SQLite file, logs every call, and on its Nth call writes a marker file and sleeps; the test
kills the consumer when the marker appears. Batches hold 8 events, so the 12th call is the
5th of the second batch: the first batch is committed, the second is not.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from plugins.fraud.testing import build_tiny_lab
from tests._helpers import free_port
from tests.redis_server import redis_url  # noqa: F401  (a fixture)

LAB = Path(sys.executable).parent / "lab"
EVENTS = 30
BAD = {2: {"TX_AMOUNT": "lots"}, 20: {"CUSTOMER_ID": None}}  # schema violations: dead letters
PAUSE_AFTER = 12

SINK = '''
"""A side effect applied once per idempotency key (the test's stand-in for a payment, an email...)."""
import os, pathlib, sqlite3, time

DB = pathlib.Path(__file__).with_name("effects.db")
_conn = None
_calls = 0


def record(prediction):
    global _conn, _calls
    if _conn is None:
        _conn = sqlite3.connect(DB, isolation_level=None)
        _conn.execute("CREATE TABLE IF NOT EXISTS effects (key TEXT PRIMARY KEY, score REAL, pid INTEGER)")
        _conn.execute("CREATE TABLE IF NOT EXISTS calls (n INTEGER PRIMARY KEY, key TEXT, pid INTEGER)")
    key = prediction["idempotency_key"]
    _conn.execute("INSERT INTO calls (key, pid) VALUES (?, ?)", (key, os.getpid()))
    _conn.execute("INSERT INTO effects (key, score, pid) VALUES (?, ?, ?) ON CONFLICT (key) DO NOTHING",
                  (key, prediction["score"], os.getpid()))
    _calls += 1
    if _calls == int(os.environ.get("EFFECTS_PAUSE_AFTER", "0")):
        pathlib.Path(os.environ["EFFECTS_MARKER"]).write_text(str(os.getpid()))
        time.sleep(600)
'''


@pytest.fixture(scope="module")
def tiny_lab_template(tmp_path_factory):
    return build_tiny_lab(tmp_path_factory.mktemp("tiny-lab-stream-kill"))




def _lab(template, folder: Path, extra: str = ""):
    shutil.copytree(template.root, folder)
    lab = dataclasses.replace(template, root=folder)
    with (folder / "pyproject.toml").open("a") as f:
        f.write('\n[tool.lab.stream]\nbatch_size = 8\nwait_s = 0.2\nsinks = ["effects_sink:record"]\n' + extra)
    (folder / "effects_sink.py").write_text(SINK)
    return lab


def _cli(lab, *args: str, env: dict | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([str(LAB), "--root", str(lab.root), *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "LAB_HOME": "", **(env or {})})


def _start(lab, log: Path, *args: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([str(LAB), "--root", str(lab.root), "stream", "run", *args],
                            stdout=log.open("w"), stderr=subprocess.STDOUT,
                            env={**os.environ, "LAB_HOME": "", **(env or {})})


def _wait(condition, proc: subprocess.Popen, log: Path, what: str, timeout: float = 60):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert proc.poll() is None, f"the consumer exited ({proc.returncode}) before {what}:\n{log.read_text()}"
        assert time.monotonic() < deadline, f"no {what} within {timeout} s:\n{log.read_text()}"
        time.sleep(0.05)


def _metrics(port: int) -> dict:
    try:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
    except httpx.TransportError:
        return {}
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, sample.labels.get("outcome"))] = sample.value
    return out


def _rows(path: Path, sql: str) -> list[tuple]:
    with sqlite3.connect(path) as conn:
        return conn.execute(sql).fetchall()


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlite", "redis"])
def test_a_consumer_killed_mid_batch_and_restarted_makes_every_side_effect_once(
        backend, tiny_lab_template, tmp_path, request):
    extra = ""
    if backend == "redis":
        url = request.getfixturevalue("redis_url")
        extra = f'\n[tool.lab.redis_streams]\nurl = "{url}"\nclaim_idle_s = 0.3\n'
    lab = _lab(tiny_lab_template, tmp_path / "lab", extra)
    events = [{**lab.transaction(i), **BAD.get(i, {})} for i in range(EVENTS)]
    (tmp_path / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    published = _cli(lab, "stream", "publish", str(tmp_path / "events.jsonl"))
    assert published.returncode == 0 and f"appended {EVENTS} event(s)" in published.stdout, published.stderr

    # The first consumer pauses inside its 12th side effect, the 5th of its second batch: killed there.
    marker, first_log = tmp_path / "paused", tmp_path / "first.log"
    first = _start(lab, first_log, "--consumer", "c1",
                   env={"EFFECTS_PAUSE_AFTER": str(PAUSE_AFTER), "EFFECTS_MARKER": str(marker)})
    try:
        _wait(marker.exists, first, first_log, "the sink's pause")
        os.kill(first.pid, signal.SIGKILL)
        assert first.wait(10) == -signal.SIGKILL
    finally:
        if first.poll() is None:
            first.kill()
            first.wait(10)

    effects_db, stream_db = lab.root / "effects.db", lab.root / "data" / "stream.db"
    assert len(_rows(effects_db, "SELECT * FROM calls")) == PAUSE_AFTER
    assert _rows(stream_db, "SELECT count(*) FROM predictions") == [(7,)]  # the first batch only
    status = json.loads(_cli(lab, "stream", "status", "--json").stdout)
    assert status["groups"][0]["lag"] == EVENTS - 8

    # Restarted (under another name for Redis: the dead consumer's pending entries are taken over
    # with XAUTOCLAIM), with metrics; it catches up and its lag gauge comes back to 0.
    port, second_log = free_port(), tmp_path / "second.log"
    second = _start(lab, second_log, "--consumer", "c2", "--metrics-port", str(port))
    try:
        scored = EVENTS - len(BAD) - 7
        metrics = _wait(lambda: (m := _metrics(port)).get(("lab_stream_events_total", "scored")) == scored
                        and m.get(("lab_stream_lag", None)) == 0 and m, second, second_log, "lag 0")
        assert metrics[("lab_stream_events_total", "dead_letter")] == 1
        assert metrics[("lab_stream_side_effects_total", None)] == scored
        os.kill(second.pid, signal.SIGTERM)
        assert second.wait(30) == 0, second_log.read_text()
    finally:
        if second.poll() is None:
            second.kill()
            second.wait(10)

    status = json.loads(_cli(lab, "stream", "status", "--json").stdout)
    (group,) = status["groups"]
    assert group["lag"] == 0 and group["predictions"] == EVENTS - len(BAD) and group["dead_letters"] == len(BAD)
    if backend == "redis":
        assert group["pending"] == 0

    # Every valid event's side effect exactly once; the 5 effects of the killed batch were offered
    # again, with the same keys, and applied once.
    keys = {k for (k,) in _rows(stream_db, "SELECT key FROM predictions")}
    effects = _rows(effects_db, "SELECT key FROM effects")
    assert len(effects) == len(keys) == EVENTS - len(BAD) and {k for (k,) in effects} == keys
    calls = [k for (k,) in _rows(effects_db, "SELECT key FROM calls ORDER BY n")]
    repeated = sorted({k for k in calls if calls.count(k) > 1})
    assert len(calls) == EVENTS - len(BAD) + 5 and len(repeated) == 5
    assert repeated == sorted(calls[7:PAUSE_AFTER])
    log_ids = [k.split("/")[1] for k in sorted(keys)]
    assert len(set(log_ids)) == len(log_ids)
    reasons = [r for (r,) in _rows(stream_db, "SELECT reason FROM dead_letters ORDER BY log_id")]
    assert len(reasons) == 2 and "'TX_AMOUNT'" in reasons[0] + reasons[1] and "'CUSTOMER_ID'" in reasons[0] + reasons[1]
