"""Chaos for preemption-safe training (docs/training.md, "Preemption").

- 20 kills (10 kill -9, 10 SIGTERM, order and moments drawn from a seeded RNG) of one
  lightning_mlp fit, each followed by a resume: every resume loads the newest checkpoint
  whose digest verifies (fit.json), every SIGTERM ends with exit status 75 after naming
  that checkpoint (preempted.json), and the final model equals an uninterrupted fit's
  bit for bit (metrics, weights, predictions).
- Through the runner: a stage notebook that trains is SIGTERM'd in its kernel, re-queued
  by ``run_pipeline`` and ends with the same model; ``lab run`` SIGTERM'd relays the
  signal to its stage, exits 75, and the next ``lab run`` resumes the run.

Importing Lightning costs about 10 s here, so the fits run in children forked from one
server process that imported it once (this file run as a script: ``serve``); a forked
child is a fresh fit in every other respect (its own RNG seeding, workdir and exit status).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import select
import signal
import struct
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as a script (the fork server) or imported in a stage kernel
    sys.path.insert(0, str(REPO))

from lab import hookimpl  # noqa: E402
from tests.conftest import tiny_fraud_data, write_pyproject  # noqa: E402

FEATURES = ["TX_AMOUNT", "NB_TX_7DAY", "RISK_7DAY", "TX_DURING_NIGHT"]
PARAMS = {"hidden_sizes": [16, 8], "dropout": 0.1, "lr": 5e-3, "batch_size": 32}
SEED = 11
N_ROWS = 600  # 400 training rows: 13 batches of 32 per epoch
BATCHES = 13
MAX_EPOCHS = 30  # a kill comes within 2 epochs of a run's start: 20 kills cannot finish the fit
STAGE_EPOCHS = 6  # the runner's training stage: preempted after epoch 1, resumed for the rest
PREEMPTED_EXIT = 75


# -- the fit, as the fork server's children and the stage notebook run it ------------------

def _batch_counter(path: Path | None):
    """A Lightning callback writing the batches this run trained (8 bytes, -1 before the
    first) into ``path``, which the test polls to kill at a chosen batch."""
    import pytorch_lightning as pl  # Lightning only where a fit runs, not in pytest's process

    class BatchCounter(pl.Callback):
        def __init__(self):
            self.fd = os.open(path, os.O_WRONLY) if path else None
            self.done = 0

        def on_train_start(self, trainer, pl_module):
            if self.fd is not None:
                os.pwrite(self.fd, struct.pack("q", 0), 0)

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.done += 1
            if self.fd is not None:
                os.pwrite(self.fd, struct.pack("q", self.done), 0)

    return BatchCounter()


def fit_once(workdir: Path, progress: Path | None = None, max_epochs: int = MAX_EPOCHS,
             devices: dict | None = None) -> dict:
    """Fit (or resume) the chaos model under ``workdir`` (on ``devices``, e.g. two forked
    CPU ranks); write and return its description."""
    from lab.atomic import atomic_write_text
    from plugins.lightning_tabular.flavor import LightningMLP

    data = tiny_fraud_data(N_ROWS)
    fit = LightningMLP().fit(*data, FEATURES, PARAMS, seed=SEED, workdir=Path(workdir), max_epochs=max_epochs,
                             callbacks=[_batch_counter(progress)], devices=devices)
    weights = hashlib.sha256()
    for name, tensor in sorted(fit.model.net.state_dict().items()):
        weights.update(name.encode())
        weights.update(tensor.detach().numpy().tobytes())
    described = {
        "metrics": fit.metrics,
        "weights_sha256": weights.hexdigest(),
        "predictions_sha256": hashlib.sha256(fit.model.predict(data[2]).tobytes()).hexdigest(),
    }
    atomic_write_text(Path(workdir) / "result.json", json.dumps(described, sort_keys=True))
    return described


def serve() -> None:
    """The fork server: import Lightning once, then fork one child per fit asked on stdin.

    Protocol (one JSON object a line): ``ready``; then for each ``{"workdir", "progress",
    "max_epochs", "devices"}`` asked, ``{"pid"}`` once the child runs and ``{"pid", "status"}`` once it ended
    (``status``: its exit status, or minus the signal that ended it).
    """
    import plugins.lightning_tabular.training  # noqa: F401 - what a fit imports, paid once here

    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        job = json.loads(line)
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, 1)  # the protocol's pipe is the parent's
                fit_once(Path(job["workdir"]), Path(job["progress"]) if job.get("progress") else None,
                         job["max_epochs"], job.get("devices"))
                code = 0
            except SystemExit as exc:  # what the interpreter makes of an uncaught SystemExit
                code = exc.code if isinstance(exc.code, int) else 1
            except BaseException:
                import traceback

                traceback.print_exc()
            finally:
                os._exit(code)
        print(json.dumps({"pid": pid}), flush=True)
        _, status = os.waitpid(pid, 0)
        print(json.dumps({"pid": pid, "status": os.waitstatus_to_exitcode(status)}), flush=True)
    os._exit(0)  # stdin closed: nothing to clean up, and torch's interpreter shutdown takes seconds


class ForkServer:
    """The test's side of ``serve``."""

    def __init__(self, log: Path):
        self.log = log.open("w")
        env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen([sys.executable, __file__, "serve"], cwd=REPO, env=env, text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log)
        assert self.read(120).get("ready"), "the fork server did not start"

    def read(self, timeout: float) -> dict:
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        assert ready, f"the fork server did not answer in {timeout} s; see {self.log.name}"
        line = self.proc.stdout.readline()
        assert line, f"the fork server ended; see {self.log.name}"
        return json.loads(line)

    def start(self, workdir: Path, progress: Path | None = None, max_epochs: int = MAX_EPOCHS,
              devices: dict | None = None) -> int:
        job = {"workdir": str(workdir), "progress": str(progress or ""), "max_epochs": max_epochs,
               "devices": devices}
        self.proc.stdin.write(json.dumps(job) + "\n")
        self.proc.stdin.flush()
        return self.read(30)["pid"]

    def ended(self, pid: int, timeout: float = 120) -> int:
        answer = self.read(timeout)
        assert answer["pid"] == pid
        return answer["status"]

    def close(self) -> None:
        self.proc.stdin.close()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    server = ForkServer(tmp_path_factory.mktemp("server") / "server.log")
    yield server
    server.close()


@pytest.fixture(scope="module")
def reference(server, tmp_path_factory) -> dict:
    """An uninterrupted fit: the yardstick."""
    workdir = tmp_path_factory.mktemp("reference")
    pid = server.start(workdir)
    assert server.ended(pid) == 0
    return json.loads((workdir / "result.json").read_text())


# -- what the test reads on disk ------------------------------------------------------------

def newest_valid(ckpt: Path) -> str | None:
    """The newest ``epoch=N.ckpt`` whose sha256 matches its sidecar, checked here
    independently of the flavor's own code."""
    found = []
    for path in ckpt.glob("epoch=*.ckpt"):
        try:
            meta = json.loads((ckpt / (path.name + ".json")).read_text())
        except (OSError, ValueError):
            continue
        if hashlib.sha256(path.read_bytes()).hexdigest() == meta.get("sha256"):
            found.append((int(path.name[len("epoch="):-len(".ckpt")]), path.name))
    return max(found)[1] if found else None


def batches_done(progress: Path) -> int:
    return struct.unpack("q", progress.read_bytes()[:8])[0]


def wait_for_batch(progress: Path, pid: int, target: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while batches_done(progress) < target:
        assert time.monotonic() < deadline, f"the fit never reached batch {target}"
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            raise AssertionError(f"the fit ended before batch {target}") from None
        time.sleep(0.001)


# -- the chaos test -------------------------------------------------------------------------

def test_twenty_kills_then_the_resumed_fit_equals_an_uninterrupted_one(server, reference, tmp_path):
    rng = random.Random(20260712)
    kills = [signal.SIGKILL] * 10 + [signal.SIGTERM] * 10
    rng.shuffle(kills)
    work, progress = tmp_path / "chaos", tmp_path / "progress"
    resumed_from = []
    for number, sig in enumerate(kills, start=1):
        expected = newest_valid(work / "ckpt")  # what this run must resume from
        (work / "fit.json").unlink(missing_ok=True)  # so a fit.json after the kill is this run's
        progress.write_bytes(struct.pack("q", -1))
        during_startup = sig == signal.SIGKILL and rng.random() < 0.3
        target, pause = rng.randrange(0, 2 * BATCHES), rng.uniform(0.0, 0.15 if during_startup else 0.01)
        pid = server.start(work, progress)
        if not during_startup:  # a SIGTERM is honoured once fit() runs, so it always comes then
            wait_for_batch(progress, pid, target)
        time.sleep(pause)
        os.kill(pid, sig)
        status = server.ended(pid)
        what = f"kill {number} ({sig.name}{' during start-up' if during_startup else f' at batch {target}'})"
        on_disk = newest_valid(work / "ckpt")
        if sig == signal.SIGTERM:
            assert status == PREEMPTED_EXIT, f"{what}: exit status {status}"
            entry = json.loads((work / "preempted.json").read_text())[-1]
            assert entry["checkpoint"] == on_disk, (what, entry)
            assert entry["resume_epoch"] == (int(on_disk[6:-5]) + 1 if on_disk else 0)
        else:
            assert status == -signal.SIGKILL, f"{what}: exit status {status}"
        if (work / "fit.json").exists():
            started = json.loads((work / "fit.json").read_text())
            assert started["resumed_from"] == expected, (what, started)
            assert not started["finished"], f"{what}: the fit finished before the kill"
            resumed_from.append(started["resumed_from"])
        else:
            assert during_startup, f"{what}: the fit never wrote fit.json"

    expected = newest_valid(work / "ckpt")
    pid = server.start(work)
    assert server.ended(pid) == 0
    final = json.loads((work / "fit.json").read_text())
    assert final["finished"] and final["resumed_from"] == expected is not None
    assert final["start_epoch"] >= 5, final  # the chain really made progress through the kills
    assert len([r for r in resumed_from if r]) >= 10, resumed_from
    assert len(json.loads((work / "preempted.json").read_text())) == 10
    assert json.loads((work / "result.json").read_text()) == reference


def test_a_fit_on_two_forked_ranks_stops_with_75_and_resumes_equal(server, tmp_path):
    """ddp_fork: the ranks die on SIGTERM (a graceful stop would hang Lightning's launcher),
    the fit's process reports 75 with the newest valid checkpoint, the resume is exact."""
    two_ranks = {"devices": 2, "strategy": "ddp_fork"}
    assert server.ended(server.start(tmp_path / "reference", max_epochs=STAGE_EPOCHS, devices=two_ranks)) == 0
    work = tmp_path / "ddp"
    pid = server.start(work, max_epochs=STAGE_EPOCHS, devices=two_ranks)
    deadline = time.monotonic() + 120
    while not (work / "ckpt/epoch=1.ckpt.json").exists():
        assert time.monotonic() < deadline, "the two ranks never finished epoch 1"
        time.sleep(0.01)
    os.kill(pid, signal.SIGTERM)
    assert server.ended(pid, timeout=60) == PREEMPTED_EXIT
    [entry] = json.loads((work / "preempted.json").read_text())
    assert entry["checkpoint"] == newest_valid(work / "ckpt") and entry["interrupted_epoch"] is None
    assert server.ended(server.start(work, max_epochs=STAGE_EPOCHS, devices=two_ranks)) == 0
    assert json.loads((work / "fit.json").read_text())["resumed_from"] == entry["checkpoint"]
    assert json.loads((work / "result.json").read_text()) == json.loads((tmp_path / "reference/result.json").read_text())


# -- through the runner ---------------------------------------------------------------------

def make_notebook(path: Path, body: str) -> None:
    import nbformat
    from nbformat.v4 import new_code_cell, new_notebook

    nb = new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    params = new_code_cell('root = "."\nrun_dir = "."\n')
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, new_code_cell(textwrap.dedent(body))]
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)


def one_stage_lab(root: Path, name: str, body: str, output: str) -> Path:
    write_pyproject(root, f'[tool.lab.pipeline]\nstages = ["{name}"]\n')
    make_notebook(root / f"notebooks/{name}.ipynb", body)
    (root / "notebooks/pipeline.toml").write_text(
        f'[[stage]]\nname = "{name}"\nnotebook = "notebooks/{name}.ipynb"\noutputs = ["{output}"]\n')
    return root


TRAIN_STAGE = f"""
    import json, os, sys
    from pathlib import Path
    sys.path.insert(0, {str(REPO)!r})
    from tests.test_training_chaos import fit_once
    Path(root, "kernel.pid").write_text(str(os.getpid()))
    result = fit_once(Path(run_dir) / "fit", max_epochs={STAGE_EPOCHS})
    Path(root, "data").mkdir(exist_ok=True)
    Path(root, "data/result.json").write_text(json.dumps(result, sort_keys=True))
"""


class Events:
    """A plugin keeping the events the runner emits."""

    def __init__(self):
        self.seen = []

    @hookimpl
    def lab_on_event(self, event):
        self.seen.append(event)


def test_a_preempted_training_stage_is_requeued_and_ends_like_an_uninterrupted_fit(server, tmp_path):
    from lab.config import load_config
    from lab.pipeline.runner import run_pipeline
    from lab.plugins import get_plugin_manager
    from lab.registry import Registry

    pid = server.start(tmp_path / "reference", max_epochs=STAGE_EPOCHS)
    assert server.ended(pid) == 0
    reference = json.loads((tmp_path / "reference/result.json").read_text())
    root = one_stage_lab(tmp_path / "lab", "train", TRAIN_STAGE, "data/result.json")
    config = load_config(root)
    pm = get_plugin_manager(config)
    events = Events()
    pm.register(events, name="test-events")
    sent = []

    def preempt_the_kernel_once() -> None:
        """SIGTERM to the stage's kernel (not to this process) once epoch 1 is checkpointed."""
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if list(root.glob("runs/*/fit/ckpt/epoch=1.ckpt.json")) and (root / "kernel.pid").exists():
                pid = int((root / "kernel.pid").read_text())
                os.kill(pid, signal.SIGTERM)
                sent.append(pid)
                return
            time.sleep(0.01)

    killer = threading.Thread(target=preempt_the_kernel_once, daemon=True)
    killer.start()
    lines = []
    result = run_pipeline(config, pm, log=lines.append, progress="off")
    killer.join(5)
    assert sent, "the kernel never reached epoch 1"

    [outcome] = result.stages
    assert (outcome.status, outcome.attempts, outcome.preemptions) == ("finished", 1, 1), lines
    assert Path(outcome.notebook).name == "01_train.requeue1.ipynb"
    assert (result.run_dir / "01_train.ipynb").exists()  # the preempted run's notebook is kept
    assert any("preempted; re-queued (1/3)" in line for line in lines), lines

    [emitted] = [e for e in events.seen if e.name == "stage.preempted"]
    assert emitted.payload["requeued"] and emitted.payload["by"] == "the stage"
    with Registry.open(config.registry_path) as registry:
        [kept] = registry.events(kind="stage.preempted")
        assert kept["subject"] == result.run_id and kept["payload"]["checkpoint"] == emitted.payload["checkpoint"]
        assert registry.get_run(result.run_id)["status"] == "finished"

    fit_dir = result.run_dir / "fit"  # the same run folder: the re-run resumed the fit
    [preempted] = json.loads((fit_dir / "preempted.json").read_text())
    started = json.loads((fit_dir / "fit.json").read_text())
    assert started["resumed_from"] == preempted["checkpoint"] == Path(emitted.payload["checkpoint"]).name
    assert started["start_epoch"] >= 2 and started["finished"]
    assert json.loads((root / "data/result.json").read_text()) == reference


NAP_STAGE = """
    import os, time
    from pathlib import Path
    Path(root, "kernel.pid").write_text(str(os.getpid()))
    while Path(root, "hold").exists():
        time.sleep(0.05)
    Path(root, "data").mkdir(exist_ok=True)
    Path(root, "data/nap.txt").write_text("rested")
"""


def test_lab_run_relays_sigterm_to_its_stage_exits_75_and_resumes(tmp_path):
    from lab.config import load_config
    from lab.registry import Registry

    root = one_stage_lab(tmp_path / "lab", "nap", NAP_STAGE, "data/nap.txt")
    (root / "hold").touch()
    lab = [str(Path(sys.executable).parent / "lab"), "--root", str(root), "run", "--progress", "off"]
    proc = subprocess.Popen(lab, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (root / "kernel.pid").exists():
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.02)
        kernel = int((root / "kernel.pid").read_text())
        proc.send_signal(signal.SIGTERM)  # to `lab run` only: the kernel sits in a session of its own
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == PREEMPTED_EXIT, out + err
    assert "preempted by SIGTERM" in err and "`lab run` resumes it" in err, err
    time.sleep(0.2)
    with pytest.raises(ProcessLookupError):  # the relayed SIGTERM ended the stage's kernel
        os.kill(kernel, 0)

    config = load_config(root)
    with Registry.open(config.registry_path) as registry:
        stopped = registry.last_pipeline_run()
        assert stopped["status"] == "killed"
        [event] = registry.events(kind="stage.preempted")
        assert event["payload"]["by"] == "lab run" and not event["payload"]["requeued"]

    (root / "hold").unlink()
    again = subprocess.run(lab, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"resuming pipeline run {stopped['id']} (it stopped with status killed)" in again.stdout
    assert (root / "data/nap.txt").read_text() == "rested"


# -- the pieces, without a kernel -----------------------------------------------------------

def test_training_preempted_is_a_system_exit_with_status_75(tmp_path):
    from lab.training.preemption import PREEMPTED_EXIT as EXIT, TrainingPreempted

    code = ("from lab.training.preemption import TrainingPreempted\n"
            "raise TrainingPreempted('stopped', checkpoint='epoch=3.ckpt', resume_epoch=4)")
    ended = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert (ended.returncode, ended.stderr) == (75, "")  # uncaught: status 75, no traceback
    exc = TrainingPreempted("stopped", checkpoint="epoch=3.ckpt", resume_epoch=4)
    assert isinstance(exc, SystemExit) and exc.code == EXIT == 75 and str(exc) == "stopped"


def test_sigterm_watch_notes_the_signal_and_gives_the_handler_back():
    from lab.training.preemption import SigtermWatch

    calls = []

    def handler(signum, frame):
        calls.append(signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        with SigtermWatch() as watch:
            assert watch.installed and not watch.requested
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)
            assert watch.requested
        assert calls == [signal.SIGTERM]  # the handler before it still ran
        assert signal.getsignal(signal.SIGTERM) is handler
    finally:
        signal.signal(signal.SIGTERM, previous)

    done = []
    thread = threading.Thread(target=lambda: done.append(SigtermWatch().__enter__().installed))
    thread.start()
    thread.join()
    assert done == [False]  # outside the main thread nothing is installed


def test_the_marker_reaches_the_runner_only_inside_a_stage(tmp_path, monkeypatch):
    from lab.training.preemption import PREEMPTION_MARKER_ENV, read_preemption, record_preemption

    monkeypatch.delenv(PREEMPTION_MARKER_ENV, raising=False)
    assert record_preemption({"checkpoint": "x"}) is None
    marker = tmp_path / ".preempted" / "train.json"
    monkeypatch.setenv(PREEMPTION_MARKER_ENV, str(marker))
    assert record_preemption({"checkpoint": "/w/ckpt/epoch=2.ckpt", "resume_epoch": 3}) == marker
    assert read_preemption(marker) == {"checkpoint": "/w/ckpt/epoch=2.ckpt", "resume_epoch": 3, "pid": os.getpid()}
    marker.write_text("{half")
    assert read_preemption(marker) is None and read_preemption(tmp_path / "none.json") is None


if __name__ == "__main__" and sys.argv[1:] == ["serve"]:
    serve()
