"""The local job queue (`lab queue`, lab/queue/): real scheduler processes (`lab queue run`)
running real jobs on declared CPU slots, a real SQLite queue file, events seen by a
project plugin in the lab folder.

The acceptance test: a low-priority job counts to N, saving its count every step, and on
SIGTERM exits 75 after saving; a high-priority job needing the same slots preempts it,
runs and finishes; the low job resumes from its saved count and finishes, every step
done exactly once. Then gang allocation, packing (with best fit on declared GPUs),
cancel, the grace period's SIGKILL, idle reservations, the scheduler's own SIGTERM and
crash, `lab queue list --json` against the store, and the rules as pure functions.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from lab.cli import main
from lab.config import load_config
from lab.errors import ConfigError, LabError
from lab.queue import Device, DeviceRequest, Holding, JobStore, Waiting, outcome, plan, request_for
from lab.queue.devices import declared_gpus, discover, parse_gpu_samples, parse_gpus
from lab.queue.model import PREEMPTED_EXIT_STATUS
from lab.queue.scheduler import Scheduler
from tests.conftest import REPO, write_pyproject
from tests._helpers import stop_process

LAB = Path(sys.executable).parent / "lab"

PROBE = '''
"""Writes every queue event this lab's processes emit to $QUEUE_PROBE_FILE, one JSON line each."""
import json, os
from lab import hookimpl


@hookimpl
def lab_on_event(event):
    if event.name.startswith("queue.") and os.environ.get("QUEUE_PROBE_FILE"):
        with open(os.environ["QUEUE_PROBE_FILE"], "a") as fh:
            fh.write(json.dumps({"event": event.name, **event.payload}) + "\\n")
'''

# Counts to N, one step every STEP seconds, saving the count (atomically) after each step
# and logging it; SIGTERM makes it stop at the next step boundary, after the save, with 75.
COUNTER = '''
import os, signal, sys, time

state, log_path, n, step = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
stopping = False


def on_term(*_):
    global stopping
    stopping = True


signal.signal(signal.SIGTERM, on_term)
count = int(open(state).read()) if os.path.exists(state) else 0
attempt = os.environ["LAB_QUEUE_ATTEMPT"]
with open(log_path, "a") as log:
    log.write(f"start {attempt} {count} {os.environ['LAB_QUEUE_DEVICES']}\\n")
    log.flush()
    while count < n:
        if stopping:
            log.write(f"preempted {attempt} {count}\\n")
            log.flush()
            sys.exit(75)
        time.sleep(step)
        count += 1
        with open(state + ".tmp", "w") as fh:
            fh.write(str(count))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(state + ".tmp", state)
        log.write(f"step {attempt} {count}\\n")
        log.flush()
'''

# Writes its environment's queue variables to OUT, then waits until every file named
# after it exists (the other jobs' markers) or gives up with 1 after 20 s.
RENDEZVOUS = '''
import json, os, pathlib, sys, time

out = pathlib.Path(sys.argv[1])
out.write_text(json.dumps({k: os.environ.get(k) for k in
                           ("LAB_QUEUE_JOB", "LAB_QUEUE_DEVICES", "CUDA_VISIBLE_DEVICES", "OMP_NUM_THREADS")}))
deadline = time.monotonic() + 20
while not all(pathlib.Path(p).exists() for p in sys.argv[2:]):
    if time.monotonic() > deadline:
        sys.exit(1)
    time.sleep(0.02)
'''


def queue_lab(root: Path, **settings) -> Path:
    """A lab with declared devices only (no nvidia-smi), fast polling, and the event probe."""
    values = {"cpu_slots": 2, "discover": False, "poll_s": 0.05, "grace_s": 10.0, **settings}
    table = "\n".join(f"{k} = {json.dumps(v) if not isinstance(v, bool) else str(v).lower()}"
                      for k, v in values.items() if k != "devices")
    if "devices" in settings:
        table += "\ndevices = [" + ", ".join(
            "{ " + ", ".join(f"{k} = {json.dumps(v)}" for k, v in d.items()) + " }" if isinstance(d, dict)
            else json.dumps(d) for d in settings["devices"]) + "]"
    write_pyproject(root, f'plugins = ["queue_probe"]\n\n[tool.lab.queue]\n{table}\n')
    (root / "queue_probe.py").write_text(PROBE)
    (root / "counter.py").write_text(COUNTER)
    (root / "rendezvous.py").write_text(RENDEZVOUS)
    return root


@pytest.fixture
def lab_root(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("QUEUE_PROBE_FILE", str(tmp_path / "events.jsonl"))
    monkeypatch.delenv("LAB_HOME", raising=False)
    return tmp_path


def lab(root: Path, *args: str, capsys=None) -> str:
    """``lab --root ROOT ARGS`` in this process; its standard output (when ``capsys``)."""
    if capsys is not None:
        capsys.readouterr()
    status = main(["--root", str(root), *args])
    assert status == 0, f"lab {' '.join(args)} exited {status}"
    return capsys.readouterr().out if capsys is not None else ""


def submit(root: Path, *args: str, cpus: int | None = 1, priority: int = 0, name: str | None = None) -> int:
    """Queue ``python ARGS`` (in the lab folder); its job number."""
    opts = ["--priority", str(priority), "--json", "--cwd", str(root)] + (["--cpus", str(cpus)] if cpus else []) + (
        ["--name", name] if name else [])
    status = main(["--root", str(root), "queue", "submit", *opts, "--", sys.executable, *args])
    assert status == 0
    with JobStore.for_lab(load_config(root)) as store:
        return store.jobs()[-1].id


def scheduler(root: Path, *args: str) -> subprocess.Popen:
    """A real `lab queue run` of the lab at ``root`` (its output in root/scheduler.log)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    log = open(root / "scheduler.log", "ab")
    try:
        return subprocess.Popen([str(LAB), "--root", str(root), "queue", "run", *args], cwd=root, env=env,
                                stdout=log, stderr=subprocess.STDOUT)
    finally:
        log.close()


def finish(proc: subprocess.Popen, root: Path, timeout: float = 40) -> None:
    """Wait for a `lab queue run --until-empty` to exit 0 (stopped by PID if it does not)."""
    try:
        assert proc.wait(timeout) == 0, logs(root)
    finally:
        stop_process(proc)


def logs(root: Path) -> str:
    """The scheduler's output and every job's, for a failing assertion."""
    files = [root / "scheduler.log", *sorted((root / "runs" / "queue").glob("*.log"))]
    return "\n".join(f"== {f.name}\n{f.read_text()[-2000:]}" for f in files if f.exists())


def wait_for(check, what: str, timeout: float = 20.0, root: Path | None = None):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}\n" + (logs(root) if root else "")
        time.sleep(0.02)


def jobs(root: Path) -> dict:
    with JobStore.for_lab(load_config(root)) as store:
        return {j.id: j for j in store.jobs()}


def history(root: Path, job_id: int) -> list[dict]:
    with JobStore.for_lab(load_config(root)) as store:
        return store.events(job_id)


def lab_events(root: Path) -> list[dict]:
    path = root / "events.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def steps_logged(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def last_step(path: Path) -> int:
    steps = [int(line.split()[2]) for line in steps_logged(path) if line.startswith("step")]
    return steps[-1] if steps else 0


def assert_counted_once(log_path: Path, state: Path, n: int) -> list[str]:
    """Every step 1..n logged exactly once, in order, and the saved count is n."""
    lines = steps_logged(log_path)
    steps = [int(line.split()[2]) for line in lines if line.startswith("step")]
    assert steps == list(range(1, n + 1)), lines
    assert int(state.read_text()) == n
    return lines


# ------------------------------------------------------------------------ acceptance


def test_a_high_priority_job_preempts_and_the_low_one_resumes_from_its_saved_count(lab_root, capsys):
    root = queue_lab(lab_root)
    n = 60
    low = submit(root, "counter.py", "count.txt", "count.log", str(n), "0.05", cpus=2, name="low")
    proc = scheduler(root, "--until-empty")
    try:
        wait_for(lambda: last_step(root / "count.log") >= 5, "the low job to count", root=root)
        high = submit(root, "-c", "import os, pathlib, time; c = pathlib.Path('count.txt').read_text(); "
                      "time.sleep(0.4); pathlib.Path('high.json').write_text(repr((c, "
                      "pathlib.Path('count.txt').read_text(), os.environ['LAB_QUEUE_DEVICES'])))",
                      cpus=2, priority=10, name="high")
        finish(proc, root)
    finally:
        stop_process(proc)

    lines = assert_counted_once(root / "count.log", root / "count.txt", n)
    starts = [line.split() for line in lines if line.startswith("start")]
    preempted = [line.split() for line in lines if line.startswith("preempted")]
    assert len(starts) == 2 and len(preempted) == 1
    saved = int(preempted[0][2])
    assert 5 <= saved < n
    assert starts[0][1:3] == ["1", "0"] and starts[1][1:3] == ["2", str(saved)]  # resumed from its saved count

    # The high job ran while the low one was stopped: the count did not move under it.
    before, after, devices = eval((root / "high.json").read_text())
    assert before == after == str(saved) and devices == "cpu:0,cpu:1"

    state = jobs(root)
    assert state[low].state == "finished" and state[low].exit_code == 0
    assert (state[low].attempts, state[low].preemptions, state[low].requeues) == (2, 1, 0)
    assert state[high].state == "finished" and state[high].attempts == 1 and state[high].preemptions == 0
    low_events = history(root, low)
    kinds = [e["event"] for e in low_events]
    assert kinds == ["submitted", "started", "stop_sent", "preempted", "started", "finished"], kinds
    assert low_events[2]["detail"] == {"reason": "preempt", "for_job": high}
    assert low_events[3]["detail"]["exit_code"] == PREEMPTED_EXIT_STATUS
    high_events = {e["event"]: e["at"] for e in history(root, high)}
    assert low_events[3]["at"] <= high_events["started"] <= high_events["finished"] <= low_events[4]["at"]

    seen = lab_events(root)
    assert [(e["event"], e["job"]) for e in seen] == [
        ("queue.job_started", low), ("queue.job_preempted", low), ("queue.job_started", high),
        ("queue.job_finished", high), ("queue.job_started", low), ("queue.job_finished", low)]
    preempt_event = seen[1]
    assert preempt_event["by"] == high and preempt_event["cause"] == "priority"
    assert preempt_event["exit_code"] == PREEMPTED_EXIT_STATUS


# ------------------------------------------------------------------------ scheduling rules, live


def test_gang_allocation_waits_for_all_its_slots_and_nobody_behind_takes_them(lab_root, capsys):
    root = queue_lab(lab_root)
    a = submit(root, "-c", "import pathlib, time\nwhile not pathlib.Path('release').exists(): time.sleep(0.02)",
               name="one slot")
    b = submit(root, "rendezvous.py", "b.json", cpus=2, name="two slots")
    c = submit(root, "rendezvous.py", "c.json", name="behind")
    proc = scheduler(root, "--until-empty")
    try:
        wait_for(lambda: jobs(root)[a].state == "running" and jobs(root)[c].reason, "job a to start", root=root)
        time.sleep(0.5)  # ten more scheduling passes with a slot free
        state = jobs(root)
        assert state[b].state == "queued" and "waiting for 1 more of 2 cpu" in state[b].reason
        assert state[c].state == "queued" and "held back for job(s) ahead" in state[c].reason
        (root / "release").write_text("")
        finish(proc, root)
    finally:
        stop_process(proc)
    state = jobs(root)
    assert all(state[j].state == "finished" for j in (a, b, c))
    assert state[a].ended_at <= state[b].started_at <= state[b].ended_at <= state[c].started_at
    assert json.loads((root / "b.json").read_text())["LAB_QUEUE_DEVICES"] == "cpu:0,cpu:1"
    assert json.loads((root / "b.json").read_text())["OMP_NUM_THREADS"] == "2"

    # `lab queue list --json` says what the store holds
    listed = json.loads(lab(root, "queue", "list", "--all", "--json", capsys=capsys))
    conn = sqlite3.connect(root / "runs" / "queue.db")
    conn.row_factory = sqlite3.Row
    stored = [dict(r) for r in conn.execute("SELECT * FROM jobs ORDER BY id")]
    conn.close()
    assert [j["id"] for j in listed] == [r["id"] for r in stored] == [a, b, c]
    for shown, row in zip(listed, stored):
        for key in ("name", "state", "priority", "attempts", "exit_code", "submitted_at", "started_at", "ended_at",
                    "run_seconds", "preemptions"):
            assert shown[key] == row[key], key
        assert shown["devices"] == json.loads(row["devices"]) and shown["argv"] == json.loads(row["argv"])
    text = lab(root, "queue", "list", capsys=capsys)
    assert "two slots" in text and "finished" in text


def test_small_jobs_run_side_by_side_and_gpus_go_by_best_fit(lab_root, capsys):
    root = queue_lab(lab_root, devices=[{"id": "gpu:0", "memory_mb": 16384}, {"id": "gpu:1", "memory_mb": 81920}])
    names = ["cpu-a", "cpu-b", "gpu-small", "gpu-big"]
    markers = [str(root / f"{n}.json") for n in names]
    submit(root, "rendezvous.py", markers[0], *markers, name="cpu-a")
    submit(root, "rendezvous.py", markers[1], *markers, name="cpu-b")
    for name, marker, memory in (("gpu-small", markers[2], None), ("gpu-big", markers[3], "40")):
        args = ["--root", str(root), "queue", "submit", "--gpus", "1", "--name", name, "--cwd", str(root)]
        args += ["--gpu-memory", memory] if memory else []
        assert main([*args, "--", sys.executable, "rendezvous.py", marker, *markers]) == 0
    proc = scheduler(root, "--until-empty")
    finish(proc, root)
    state = jobs(root)
    assert [j.state for j in state.values()] == ["finished"] * 4  # each waited for all four: they ran together
    seen = {n: json.loads((root / f"{n}.json").read_text()) for n in names}
    assert {seen["cpu-a"]["LAB_QUEUE_DEVICES"], seen["cpu-b"]["LAB_QUEUE_DEVICES"]} == {"cpu:0", "cpu:1"}
    assert seen["cpu-a"]["CUDA_VISIBLE_DEVICES"] == ""  # a CPU job sees no GPU
    assert seen["cpu-a"]["OMP_NUM_THREADS"] == "1"
    # best fit: the small job took the 16 GiB GPU, though it came first, so the 40 GiB job found the big one free
    assert (seen["gpu-small"]["LAB_QUEUE_DEVICES"], seen["gpu-small"]["CUDA_VISIBLE_DEVICES"]) == ("gpu:0", "0")
    assert (seen["gpu-big"]["LAB_QUEUE_DEVICES"], seen["gpu-big"]["CUDA_VISIBLE_DEVICES"]) == ("gpu:1", "1")


def test_cancel_a_queued_job_and_running_ones_including_one_that_ignores_sigterm(lab_root, capsys):
    root = queue_lab(lab_root, grace_s=1.0)
    stubborn = submit(root, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                      "open('stubborn.up', 'w').close(); time.sleep(60)", name="stubborn")
    plain = submit(root, "-c", "import time; open('plain.up', 'w').close(); time.sleep(60)", name="plain")
    waiting = submit(root, "-c", "pass", cpus=2, name="waiting")
    proc = scheduler(root, "--until-empty")
    try:
        wait_for(lambda: (root / "stubborn.up").exists() and (root / "plain.up").exists(), "both jobs to run",
                 root=root)
        out = lab(root, "queue", "cancel", str(waiting), capsys=capsys)
        assert f"job {waiting} cancelled" in out
        t0 = time.monotonic()
        lab(root, "queue", "cancel", str(stubborn), str(plain), capsys=capsys)
        wait_for(lambda: jobs(root)[plain].state == "cancelled", "the plain job to stop", root=root)
        wait_for(lambda: jobs(root)[stubborn].state == "cancelled", "the stubborn job to be killed", root=root)
        assert time.monotonic() - t0 >= 1.0  # it was given the grace period
        finish(proc, root)
    finally:
        stop_process(proc)
    state = jobs(root)
    assert state[waiting].attempts == 0 and state[waiting].started_at is None
    assert state[plain].exit_code == -signal.SIGTERM
    assert state[stubborn].exit_code == -signal.SIGKILL
    assert "killed" in [e["event"] for e in history(root, stubborn)]
    cancelled = [e["job"] for e in lab_events(root) if e["event"] == "queue.job_cancelled"]
    assert sorted(cancelled) == sorted([waiting, stubborn, plain])
    with pytest.raises(LabError, match="already cancelled"):
        main_raising(root, "queue", "cancel", str(plain))


def main_raising(root: Path, *args: str) -> None:
    """Run a command's function directly, so its LabError reaches the test."""
    from lab.cli import Context, resolve, build_parser
    from lab.commands import COMMANDS

    parsed = build_parser(COMMANDS).parse_args(["--root", str(root), *args])
    resolve(parsed._command, "run")(parsed, Context(str(root)))


def test_idle_reserved_devices_are_reported(lab_root, capsys):
    root = queue_lab(lab_root, sample_s=0.2, idle_after_s=0.6)
    idle = submit(root, "-c", "import time; time.sleep(60)", name="sleeper")
    busy = submit(root, "-c", "import pathlib, time\nt = time.monotonic()\n"
                  "while not pathlib.Path('stop').exists() and time.monotonic() - t < 30: sum(range(10000))",
                  name="spinner")
    proc = scheduler(root, "--until-empty")
    try:
        def idle_now():
            report = json.loads(lab(root, "queue", "devices", "--json", capsys=capsys))
            return report if report["idle_reserved"] else None

        report = wait_for(idle_now, "an idle reservation", timeout=15, root=root)
        by_id = {d["id"]: d for d in report["devices"]}
        held = {d["job"]: d for d in report["devices"]}
        assert report["idle_reserved"] == [held[idle]["id"]]
        assert held[idle]["utilization_pct"] < 5 and held[idle]["idle_for_s"] >= 0.6
        assert held[busy]["utilization_pct"] > 5 and not held[busy]["idle_reserved"]
        assert report["scheduler"]["running"] and set(by_id) == {"cpu:0", "cpu:1"}
        text = lab(root, "queue", "devices", capsys=capsys)
        assert f"is held by job {idle} (sleeper)" in text
        (root / "stop").write_text("")
        lab(root, "queue", "cancel", str(idle), capsys=capsys)
        finish(proc, root)
    finally:
        stop_process(proc)
    assert jobs(root)[busy].state == "finished"


def test_the_scheduler_hands_its_jobs_back_on_sigterm_and_recovers_after_a_crash(lab_root, capsys):
    root = queue_lab(lab_root)
    n = 40
    job = submit(root, "counter.py", "count.txt", "count.log", str(n), "0.05")
    first = scheduler(root)
    try:
        wait_for(lambda: last_step(root / "count.log") >= 3, "the job to count", root=root)
        second_scheduler = Scheduler(load_config(root), None)
        try:
            with pytest.raises(LabError, match=f"another `lab queue run` is scheduling this queue \\(pid {first.pid}"):
                second_scheduler.run(threading.Event())
        finally:
            second_scheduler.store.close()
        os.kill(first.pid, signal.SIGTERM)
        assert first.wait(15) == 0
    finally:
        stop_process(first)
    handed_back = jobs(root)[job]
    assert handed_back.state == "queued" and handed_back.preemptions == 0 and handed_back.exit_code == 75
    assert [e["cause"] for e in lab_events(root) if e["event"] == "queue.job_preempted"] == ["shutdown"]

    # a scheduler killed with -9 leaves its job running on its own; the next one stops and requeues it
    second = scheduler(root)
    try:
        wait_for(lambda: sum(line.startswith("start") for line in steps_logged(root / "count.log")) == 2
                 and last_step(root / "count.log") >= 8, "the job to resume")
        os.kill(second.pid, signal.SIGKILL)
        second.wait(10)
    finally:
        stop_process(second)
    orphan = jobs(root)[job]
    assert orphan.state == "running" and orphan.pid  # the store still says so; the process lives on
    third = scheduler(root, "--until-empty")
    finish(third, root)
    lines = assert_counted_once(root / "count.log", root / "count.txt", n)
    assert [line.split()[1] for line in lines if line.startswith("start")] == ["1", "2", "3"]
    final = jobs(root)[job]
    assert final.state == "finished" and final.attempts == 3
    assert "requeued" in [e["event"] for e in history(root, job)]


# ------------------------------------------------------------------------ the CLI's errors


@pytest.mark.parametrize("args, needle", [
    (["--cpus", "3", "--", "true"], "asks for 3 CPU slot(s) but the queue has 2; raise [tool.lab.queue] cpu_slots"),
    (["--gpus", "1", "--", "true"], "the queue knows no GPU"),
    (["--cpus", "1", "--gpus", "1", "--", "true"], "give one of --gpus, --cpus and --devices"),
    (["--devices", "gpu:7", "--", "true"], "no device gpu:7 in this queue; its devices are cpu:0, cpu:1"),
    (["--", "no-such-program-here"], "cannot find the program 'no-such-program-here' on PATH"),
    (["--cpus", "1"], "give the job's command after --"),
    (["--env", "NOEQUALS", "--", "true"], "write KEY=VALUE"),
    (["--cpus", "0", "--", "true"], "at least one device"),
])
def test_submit_errors_name_the_fix(lab_root, capsys, args, needle):
    root = queue_lab(lab_root)
    assert main(["--root", str(root), "queue", "submit", *args]) == 2
    assert needle in capsys.readouterr().err
    assert not (root / "runs" / "queue.db").exists() or jobs(root) == {}


def test_a_job_that_cannot_start_fails_with_the_reason_and_the_list_says_no_scheduler(lab_root, capsys):
    root = queue_lab(lab_root)
    missing = root / "gone"
    missing.mkdir()
    assert main(["--root", str(root), "queue", "submit", "--cwd", str(missing), "--", sys.executable, "-V"]) == 0
    missing.rmdir()
    capsys.readouterr()
    assert main(["--root", str(root), "queue", "list"]) == 0
    assert "no scheduler is running: start one with `lab queue run`" in capsys.readouterr().err
    proc = scheduler(root, "--until-empty")
    finish(proc, root)
    job = jobs(root)[1]
    assert job.state == "failed" and "could not start" in job.reason and "submit it again" in job.reason
    assert [e["event"] for e in lab_events(root)] == ["queue.job_failed"]


@pytest.mark.parametrize("body, needle", [
    ("devices = [3]", "devices entries must be strings"),
    ("poll_s = 0", "poll_s must be more than 0"),
    ("cpu_slots = -1", "must be 0 or more"),
    ("slots = 2", "unknown key(s) slots in [tool.lab.queue]"),
])
def test_bad_queue_settings_name_the_key(tmp_path, body, needle):
    write_pyproject(tmp_path, f"[tool.lab.queue]\n{body}\n")
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path)
    assert needle in str(info.value)


def test_declared_devices_are_checked():
    with pytest.raises(ConfigError, match="needs an id"):
        declared_gpus(["cpu:0"])
    with pytest.raises(ConfigError, match="declares gpu:0 twice"):
        declared_gpus(["gpu:0", {"id": "gpu:0"}])
    with pytest.raises(ConfigError, match="unknown key"):
        declared_gpus([{"id": "gpu:0", "memory": 3}])
    mig = declared_gpus(["gpu:MIG-abc", {"id": "gpu:1", "cuda": "GPU-x", "memory_mb": 100}])
    assert [(d.id, d.cuda, d.memory_mb) for d in mig] == [("gpu:MIG-abc", "MIG-abc", None), ("gpu:1", "GPU-x", 100)]


# ------------------------------------------------------------------------ the rules as functions


def _devices(gpus=(), cpus=0):
    out = [Device(f"gpu:{i}", "gpu", str(i), memory_mb=m, order=i) for i, m in enumerate(gpus)]
    return out + [Device(f"cpu:{i}", "cpu", order=len(out) + i) for i in range(cpus)]


def test_plan_gang_reservation_and_best_fit():
    devices = _devices(gpus=(80, 16, 16, 40))
    gpu = lambda n, mem=0: DeviceRequest("gpu", n, min_memory_mb=mem)  # noqa: E731
    # best fit: the smallest sufficient devices, whatever their order
    p = plan(devices, [Waiting(1, 0, gpu(1, 30)), Waiting(2, 0, gpu(2))], [])
    assert p.start == [(1, ("gpu:3",)), (2, ("gpu:1", "gpu:2"))]
    # a job that cannot start holds back what it could use; a job behind uses only what it cannot
    running = [Holding(9, 5, ("gpu:0", "gpu:1"))]
    named = DeviceRequest("gpu", 1, ("gpu:3",))
    p = plan(devices, [Waiting(1, 0, gpu(3)), Waiting(2, 0, gpu(1)), Waiting(3, 0, named)], running)
    assert p.start == [] and set(p.reasons) == {1, 2, 3}
    p = plan(devices, [Waiting(1, 0, gpu(3, 50)), Waiting(2, 0, gpu(1))], [Holding(9, 5, ("gpu:1",))])
    assert p.start == [(2, ("gpu:2",))] and p.never == {1}  # one GPU has 50: 1 can never run, holds nothing back
    # equal priority never preempts; a higher one preempts the fewest, lowest-priority, newest first
    running = [Holding(7, 1, ("gpu:0",), "2026-01-01T00:00:01"),
               Holding(8, 0, ("gpu:1", "gpu:2"), "2026-01-01T00:00:02"),
               Holding(9, 0, ("gpu:3",), "2026-01-01T00:00:03")]
    assert plan(devices, [Waiting(1, 0, gpu(1))], running).preempt == []
    assert plan(devices, [Waiting(1, 5, gpu(1))], running).preempt == [(9, 1)]
    assert plan(devices, [Waiting(1, 5, gpu(2))], running).preempt == [(8, 1)]  # spares 9, not needed
    assert sorted(plan(devices, [Waiting(1, 5, gpu(4))], running).preempt) == [(7, 1), (8, 1), (9, 1)]
    # a job already stopping counts as freeing its devices: no second preemption for them
    stopping = [Holding(9, 0, ("gpu:3",), stopping=True), *running[:2]]
    p = plan(devices, [Waiting(1, 5, gpu(1))], stopping)
    assert p.preempt == [] and "waiting for job(s) 9 to stop" in p.reasons[1]
    # preemption is off: it waits
    assert plan(devices, [Waiting(1, 5, gpu(1))], running, preempt=False).preempt == []


@pytest.mark.parametrize("code, stop, cancel, requeues, state, counted", [
    (0, None, False, 0, "finished", None),
    (0, "preempt", False, 0, "finished", None),
    (75, "preempt", False, 0, "queued", "preempted"),
    (-15, "preempt", False, 0, "queued", "preempted"),
    (-9, "preempt", False, 0, "queued", "preempted"),
    (1, "preempt", False, 0, "failed", None),
    (75, "shutdown", False, 0, "queued", None),
    (-15, None, True, 0, "cancelled", None),
    (75, None, False, 0, "queued", "requeued"),
    (143, None, False, 4, "queued", "requeued"),
    (75, None, False, 5, "failed", None),
    (2, None, False, 0, "failed", None),
    (-9, None, False, 0, "failed", None),
])
def test_where_an_ended_job_goes(code, stop, cancel, requeues, state, counted):
    result = outcome(code, stop, cancel, requeues, max_requeues=5)
    assert result.state == state
    assert result.preempted == (counted == "preempted") and result.requeued == (counted == "requeued")



def test_the_preempted_status_is_the_one_training_exits_with():
    """The queue cannot import lab.training (one layer); the two constants must agree."""
    preemption = pytest.importorskip("lab.training.preemption")
    assert preemption.PREEMPTED_EXIT == PREEMPTED_EXIT_STATUS == 75

# ------------------------------------------------------------------------ GPU discovery (recorded nvidia-smi output)

QUERY = """\
0, GPU-aaaaaaaa-0000-0000-0000-000000000000, NVIDIA H100 80GB HBM3, 81559, Disabled
1, GPU-bbbbbbbb-0000-0000-0000-000000000000, NVIDIA A100-SXM4-40GB, 40960, Enabled
"""
LISTING = """\
GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-aaaaaaaa-0000-0000-0000-000000000000)
GPU 1: NVIDIA A100-SXM4-40GB (UUID: GPU-bbbbbbbb-0000-0000-0000-000000000000)
  MIG 3g.20gb     Device  0: (UUID: MIG-11111111-0000-0000-0000-000000000000)
  MIG 1g.5gb      Device  1: (UUID: MIG-22222222-0000-0000-0000-000000000000)
"""


def test_nvidia_smi_output_is_read_as_gpus_and_mig_instances():
    gpus = parse_gpus(QUERY, LISTING)
    assert [(d.id, d.cuda, d.memory_mb) for d in gpus] == [
        ("gpu:0", "GPU-aaaaaaaa-0000-0000-0000-000000000000", 81559),
        ("gpu:1.0", "MIG-11111111-0000-0000-0000-000000000000", 20480),
        ("gpu:1.1", "MIG-22222222-0000-0000-0000-000000000000", 5120)]
    samples = parse_gpu_samples("0, GPU-aaaaaaaa-0000-0000-0000-000000000000, 87, 40000\n"
                                "1, GPU-bbbbbbbb-0000-0000-0000-000000000000, [N/A], 1000\n",
                                "4242, GPU-aaaaaaaa-0000-0000-0000-000000000000, 39000\n")
    assert samples["0"].utilization_pct == 87 and samples["0"].pids == {4242}
    assert samples["GPU-bbbbbbbb-0000-0000-0000-000000000000"].utilization_pct is None


def test_gpus_are_discovered_through_nvidia_smi_on_path(tmp_path, monkeypatch):
    """A stand-in nvidia-smi (this machine has no GPU) printing the recorded output above:
    discovery calls the program on PATH with the queries lab.queue.devices names."""
    fake = tmp_path / "bin" / "nvidia-smi"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\ncase \"$1\" in\n  -L) cat <<'EOF'\n" + LISTING + "EOF\n;;\n"
                    "  --query-gpu=index,uuid,name,memory.total,mig.mode.current) cat <<'EOF'\n" + QUERY + "EOF\n;;\n"
                    "  *) echo \"unexpected: $*\" >&2; exit 9;;\nesac\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ['PATH']}")
    write_pyproject(tmp_path / "lab", "[tool.lab.queue]\ncpu_slots = 1\n")
    devices, source = discover(load_config(tmp_path / "lab").queue)
    assert source == "nvidia-smi"
    assert [d.id for d in devices] == ["gpu:0", "gpu:1.0", "gpu:1.1", "cpu:0"]
    request = request_for(devices, gpus=1, gpu_memory_gb=16)
    assert [d.id for d in devices if request.suits(d)] == ["gpu:0", "gpu:1.0"]
    with pytest.raises(LabError, match="2 of the queue's 3 have that much"):
        request_for(devices, gpus=3, gpu_memory_gb=16)
    fake.write_text("#!/bin/sh\necho 'NVIDIA-SMI has failed because it could not communicate with the driver' >&2\n"
                    "exit 9\n")
    with pytest.raises(LabError, match="fix the driver, or set \\[tool.lab.queue\\] discover = false"):
        discover(load_config(tmp_path / "lab").queue)
