"""The Ray plugin (plugins/ray_cluster) on a real local Ray: stages as Ray tasks and sweep
workers as Ray tasks.

One Ray is started for the module, bound to 127.0.0.1 (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0,
no dashboard, its session folder under the test's tmp folder, 2 CPUs) and shut down at the
end; the executor finds the process connected and uses that connection. Checked: the
executor contract (lab.testing); a toy pipeline run through Ray equals the same pipeline on
the local executor (outputs, executed notebooks' parameters, the registry's stage records
with a failing stage's retry, the code record and progress lines the kernel writes through
the environment Ray passes on); Ctrl+C and SIGTERM cancel the task, the kernel getting
SIGTERM first; a stage's resources from its devices and a cluster that cannot give them;
a sweep whose stage writes its manifest is joined by 2 Ray workers and finishes exactly K
trials, none lost or repeated, each worker training some, the best one saved by the stage.

Ray is in the ray extra (pip install -e '.[test,ray]'; CI leaves it out for time); without it the module skips and says
how to install it.
"""

from __future__ import annotations

import json
import os
import signal
import textwrap
import threading
import time
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook

from lab.config import load_config
from lab.errors import ConfigError
from lab.pipeline.runner import run_pipeline
from lab.pipeline.stage import StageFailed
from lab.plugins import get_plugin_manager
from lab.registry import Registry
from lab.testing import StageExecutorContract
from tests.conftest import write_pyproject

# Read when Ray is imported: the local Ray binds to 127.0.0.1 only (docs/ray.md).
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
ray = pytest.importorskip("ray", reason="Ray is not installed: pip install 'ray[default]==2.60.0' "
                                        "(or pip install -e '.[test,ray]') to run the Ray plugin's tests")

from plugins.ray_cluster.executor import RayExecutor  # noqa: E402 - after the skip: it needs nothing of Ray, the tests do
from plugins.ray_cluster.settings import RaySettings, stage_resources  # noqa: E402


@pytest.fixture(scope="module")
def local_ray(tmp_path_factory):
    """A Ray of 2 CPUs on 127.0.0.1 for this module, shut down after it; its node has a
    custom resource, as the machine holding registry.db would (docs/ray.md).

    Its session folder lives in the test's tmp folder, named through a short link in /tmp:
    Ray's sockets are in it, and a socket's path may not exceed 107 bytes (pytest-xdist's
    tmp folders are longer than that allows)."""
    import shutil
    import tempfile

    short = Path(tempfile.mkdtemp(prefix="lab-ray-"))
    (short / "s").symlink_to(tmp_path_factory.mktemp("ray"), target_is_directory=True)
    try:
        context = ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
                           _temp_dir=str(short / "s"), resources={"registry": 1})
        try:
            yield context
        finally:
            ray.shutdown()
    finally:
        shutil.rmtree(short)


def make_notebook(path: Path, params: str, body: str) -> Path:
    nb = new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    cell = new_code_cell(textwrap.dedent(params))
    cell.metadata["tags"] = ["parameters"]
    nb.cells = [cell, new_code_cell(textwrap.dedent(body))]
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)
    return path


def executor_for(root: Path, **table) -> RayExecutor:
    return RayExecutor(RaySettings.from_table({"address": "auto", **table}), root, log=lambda line: None)


class TestRayExecutorContract(StageExecutorContract):
    @pytest.fixture
    def executor(self, local_ray, tmp_path):
        return executor_for(tmp_path)


# -- a toy pipeline: the Ray executor against the local one -------------------------------------

MAKE = """
from pathlib import Path
from lab.pipeline.context import StageContext
from lab.pipeline.progress import report
with StageContext.open(root, run_dir) as ctx:   # records the code it imported for the runner
    Path(root, "data").mkdir(exist_ok=True)
    Path(root, "data/a.txt").write_text(f"{word} x{times}")
    report(times, times, "rows")
"""
USE = """
from pathlib import Path
tries = Path(root, "use.tries")
tries.write_text(tries.read_text() + "x" if tries.exists() else "x")
if len(tries.read_text()) < 2:
    raise RuntimeError("first attempt fails")
Path(root, "data/b.txt").write_text(Path(root, "data/a.txt").read_text().upper())
"""


def toy_lab(root: Path) -> Path:
    write_pyproject(root, """
        [tool.lab.pipeline]
        retries = 1

        [tool.lab.ray]
        address = "auto"
    """)
    make_notebook(root / "notebooks/make.ipynb", 'root = "."\nrun_dir = "."\nword = "x"\ntimes = 1\n', MAKE)
    make_notebook(root / "notebooks/use.ipynb", 'root = "."\nrun_dir = "."\n', USE)
    (root / "notebooks/pipeline.toml").write_text(textwrap.dedent("""
        [[stage]]
        name = "make"
        notebook = "notebooks/make.ipynb"
        outputs = ["data/a.txt"]
        params = { word = "hello", times = 3 }

        [[stage]]
        name = "use"
        notebook = "notebooks/use.ipynb"
        inputs = ["data/a.txt"]
        outputs = ["data/b.txt"]
    """))
    return root


def run_toy(root: Path, *, on_ray: bool) -> dict:
    """Run the toy lab's pipeline (with the Ray plugin blocked unless ``on_ray``: the local
    executor); what the runner and the stages left, with the lab's own folder written as
    ROOT so two labs compare."""
    config = load_config(root)
    pm = get_plugin_manager(config)
    if not on_ray:
        pm.set_blocked("ray_cluster")
    result = run_pipeline(config, pm, log=lambda line: None, progress="off")
    run_dir = config.runs_path / result.run_id
    with Registry.open(config.registry_path) as reg:
        history = reg.stage_history(result.run_id)

    def neutral(value):
        text = json.dumps(value, sort_keys=True).replace(str(root), "ROOT").replace(result.run_id, "RUN")
        return json.loads(text)

    records = [neutral({k: r.get(k) for k in ("stage", "status", "attempt", "cache_key", "error",
                                             "output_notebook", "output_digests")}) for r in history]
    finished = [neutral(r["outputs"]) for r in history if r["status"] == "finished"]
    for outputs in finished:
        outputs.pop("seconds", None)
    notebooks = {}
    for path in sorted(run_dir.glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        injected = [c.source for c in nb.cells if "injected-parameters" in c.metadata.get("tags", [])]
        notebooks[path.name] = neutral(injected)
    progress = sorted(p.name for p in (run_dir / "progress").glob("*")) if (run_dir / "progress").exists() else []
    return {"stages": [(s.name, s.status, s.attempts) for s in result.stages], "records": records,
            "finished": finished, "notebooks": notebooks, "progress": progress,
            "a": (root / "data/a.txt").read_text(), "b": (root / "data/b.txt").read_text(),
            "executor": type(pm.hook.lab_stage_executor(config=config)).__name__}


def test_a_toy_pipeline_on_ray_equals_the_local_executor_retry_included(local_ray, tmp_path):
    import shutil

    shutil.copytree(toy_lab(tmp_path / "local"), tmp_path / "ray")  # byte for byte: same cache keys
    here = run_toy(tmp_path / "local", on_ray=False)
    there = run_toy(tmp_path / "ray", on_ray=True)
    assert (here["executor"], there["executor"]) == ("PapermillExecutor", "RayExecutor")
    assert there["stages"] == [("make", "finished", 1), ("use", "finished", 2)]  # use failed once, retried
    assert [r["status"] for r in there["records"]] == ["running", "finished", "running", "failed", "running",
                                                       "finished"]
    assert "RuntimeError: first attempt fails" in there["records"][3]["error"]
    assert there["b"] == "HELLO X3"
    # The kernel on Ray saw the same parameters, wrote the same files and records (cache keys,
    # output digests, the code it imported), and its progress lines reached the run folder.
    for key in ("stages", "records", "finished", "notebooks", "progress", "a", "b"):
        assert there[key] == here[key], key
    assert there["finished"][0]["code_files"], "the kernel's code record did not reach the runner"
    assert there["progress"], "the kernel's progress lines did not reach the run folder"


# -- stopping a stage: Ctrl+C and SIGTERM -------------------------------------------------------

SLOW = """
import os, signal, sys, time
from pathlib import Path
def stop(signum, frame):
    Path(out, "sigterm").write_text(str(os.getpid()))
    sys.exit(75)
signal.signal(signal.SIGTERM, stop)
Path(out, "kernel").write_text(f"{os.getpid()} {os.getppid()} {os.environ.get('LAB_RUN_PID')}")
for _ in range(600):
    time.sleep(0.1)
"""


def start_slow_stage(tmp_path: Path) -> tuple[Path, Path]:
    notebook = make_notebook(tmp_path / "slow.ipynb", 'out = "."\n', SLOW)
    return notebook, tmp_path / "kernel"


def signal_when_started(marker: Path, signum: int) -> threading.Thread:
    def send() -> None:
        deadline = time.monotonic() + 60
        while not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)  # the handler cell has run; the kernel sleeps in the loop
        os.kill(os.getpid(), signum)

    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    return thread


def gone(pid: int, within_s: float = 10.0) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as fh:
                if fh.read().rsplit(")", 1)[1].split()[0] == "Z":
                    return True
        except OSError:
            return True
        time.sleep(0.05)
    return False


def test_ctrl_c_cancels_the_ray_task_and_the_kernel_gets_sigterm_first(local_ray, tmp_path):
    notebook, started = start_slow_stage(tmp_path)
    executor = executor_for(tmp_path, grace_s=20)
    sender = signal_when_started(started, signal.SIGINT)
    t0 = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        executor.execute(notebook, tmp_path / "slow.out.ipynb", {"out": str(tmp_path)}, tmp_path)
    sender.join()
    kernel, parent, run_pid = (int(x) for x in started.read_text().split())
    assert (tmp_path / "sigterm").read_text() == str(kernel)  # the kernel could checkpoint and stop
    assert run_pid == parent != os.getpid()  # LAB_RUN_PID is the Ray worker, the kernel's parent
    assert gone(kernel)
    assert time.monotonic() - t0 < 40


def test_sigterm_cancels_the_ray_task_and_reaches_the_handler_before_it(local_ray, tmp_path):
    notebook, started = start_slow_stage(tmp_path)
    executor = executor_for(tmp_path, grace_s=20)
    seen: list[int] = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: seen.append(signum))  # lab run's relay
    try:
        sender = signal_when_started(started, signal.SIGTERM)
        with pytest.raises(StageFailed) as failed:
            executor.execute(notebook, tmp_path / "slow.out.ipynb", {"out": str(tmp_path)}, tmp_path)
        sender.join()
        assert signal.getsignal(signal.SIGTERM) is not previous  # ours until the test puts it back
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert failed.value.summary == "stopped by SIGTERM" and failed.value.stage == "slow"
    assert seen == [signal.SIGTERM]  # handed on, so the runner knows the run was preempted
    kernel = int(started.read_text().split()[0])
    assert (tmp_path / "sigterm").read_text() == str(kernel)
    assert gone(kernel)


# -- resources ----------------------------------------------------------------------------------

def test_a_stage_asks_ray_for_its_devices_and_a_cluster_without_them_is_a_config_error(local_ray, tmp_path):
    settings = RaySettings.from_table({"num_cpus": 1, "stages": {"big": {"num_cpus": 2, "resources": {"registry": 1}}}})
    training = {"accelerator": "gpu", "devices": 2, "strategy": "ddp_fork", "precision": "bf16-mixed",
                "num_nodes": 1}
    assert stage_resources(settings, "train", training).num_gpus == 2
    assert stage_resources(settings, "train", {**training, "devices": [0, 1, 2]}).num_gpus == 3
    assert stage_resources(settings, "train", {"accelerator": "cpu", "devices": 2}).num_cpus == 2  # DDP on CPU
    assert stage_resources(settings, "big", training) == stage_resources(settings, "big", {})
    with pytest.raises(ConfigError, match="num_nodes = 2, but a Ray task runs on one machine"):
        stage_resources(settings, "train", {**training, "num_nodes": 2})
    with pytest.raises(ConfigError, match="does not say how many GPUs"):
        stage_resources(settings, "train", {**training, "devices": "auto"})
    with pytest.raises(ConfigError, match=r"unknown key\(s\) gpus in \[tool.lab.ray\]"):
        RaySettings.from_table({"gpus": 1})
    with pytest.raises(ConfigError, match=r"\[tool.lab.ray.stages.big\] resources.registry must be a number"):
        RaySettings.from_table({"stages": {"big": {"resources": {"registry": "yes"}}}})

    # The stage's own entry is what its task gets (the worker reports Ray's assignment) ...
    notebook = make_notebook(tmp_path / "big.ipynb", "x = 0\n", "y = x + 1\n")
    executor = RayExecutor(settings, tmp_path, log=lambda line: None)
    executor.execute(notebook, tmp_path / "big.out.ipynb", {"x": 1}, tmp_path)
    assert executor.last_outcome["resources"] == {"CPU": 2.0, "registry": 1.0}
    # ... and GPUs this cluster has not got are refused before anything waits for them.
    with pytest.raises(ConfigError, match=r"asks Ray for 1 CPUs and 2 GPUs, which no node of the cluster has "
                                          r"\(\S+ \(2 CPUs, 0 GPUs, 1 registry\)\)"):
        executor.execute(tmp_path / "train.ipynb", tmp_path / "train.out.ipynb", training, tmp_path)


def test_without_ray_installed_the_enabled_plugin_names_the_install(tmp_path):
    import subprocess
    import sys

    write_pyproject(tmp_path, '\n[tool.lab.ray]\naddress = "auto"\n')
    code = ("import sys; sys.modules['ray'] = None\n"  # as if Ray were not installed
            "from lab.cli import main\n"
            f"sys.exit(main(['--root', {str(tmp_path)!r}, 'ray', 'status']))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2, out.stderr
    assert "Ray is not installed: pip install 'ray[default]==2.60.0'" in out.stderr
    assert "Traceback" not in out.stderr


# -- a sweep spread over Ray -------------------------------------------------------------------

K = 4
PROBE = '''
import os, time
from pathlib import Path
from lab import hookimpl

HERE = Path(__file__).parent


class Barrier:
    """An epoch observer: each worker's first epoch ends only once all three got there, so
    the stage and both Ray workers each train a trial whatever the machine's load."""
    first = True

    def lab_epoch_end(self, epoch, metrics):
        if self.first:
            self.first = False
            (HERE / "sync").mkdir(exist_ok=True)
            (HERE / "sync" / f"{os.getpid()}.ready").write_text("")
            deadline = time.monotonic() + 90
            while len(list((HERE / "sync").glob("*.ready"))) < 3 and time.monotonic() < deadline:
                time.sleep(0.05)


@hookimpl
def lab_trainer_callbacks(config, run_dir):
    return [Barrier()]
'''
# The train step's part in a sweep, small: the manifest and data for joining workers, its own
# work on the study, then the best trial's model saved as the candidate.
SWEEP_STAGE = f"""
import json
from pathlib import Path
from lab.pipeline.context import StageContext
import numpy as np
from lab.plugins import model_flavor
from lab.steps.sweep_workers import join_sweep, write_manifest
from lab.training.sweep_storage import redact_url

rng = np.random.default_rng(0)
x = rng.normal(size=(600, 4)).astype(np.float32)
y = (rng.random(600) < 1 / (1 + np.exp(-2 * x[:, 0] - x[:, 1]))).astype(np.float32)

with StageContext.open(root, run_dir) as ctx:
    workdir = ctx.run_dir / "train"
    workdir.mkdir(parents=True, exist_ok=True)
    study = "toy-" + ctx.run_dir.name
    storage = ctx.pm.hook.lab_sweep_storage(config=ctx.config, study_name=study)
    write_manifest(workdir, study=study, storage=redact_url(storage), flavor="boring_linear",
                   task="classification", metric="average_precision", seed=3, n_trials={K}, max_epochs=2,
                   features=["a", "b", "c", "d"], devices=None, arrays=(x[:400], y[:400], x[400:], y[400:]))
    mine = []
    result = join_sweep(ctx.config, ctx.pm, workdir, on_trial=mine.append)
    (workdir / "sweep_data.npz").unlink()
    flavor = model_flavor(ctx.pm, "boring_linear")
    flavor.save(result.best_fit.model, ctx.path("data/candidate"))
    Path(root, "data/candidate.json").write_text(json.dumps({{
        "best_trial": result.best_number, "stage_trials": sorted(t["number"] for t in mine),
        "trials": [t["number"] for t in result.trials], "storage": result.storage}}))
"""


def test_a_sweep_spreads_over_two_ray_workers_without_losing_or_repeating_a_trial(local_ray, tmp_path, capsys):
    import optuna

    from lab.training.sweep_storage import open_storage

    root = tmp_path / "lab"
    write_pyproject(root, """
        plugins = ["lab.testing.boring", "ray_sweep_probe"]   # a numpy flavor: no torch to load

        [tool.lab.ray]
        address = "auto"
        num_cpus = 0.5          # the stage and two workers share the 2 CPUs of this Ray
        sweep_workers = 2
        worker_num_cpus = 0.5
    """)
    (root / "ray_sweep_probe.py").write_text(PROBE)
    (root / "data").mkdir()
    make_notebook(root / "notebooks/train.ipynb", 'root = "."\nrun_dir = "."\n', SWEEP_STAGE)
    (root / "notebooks/pipeline.toml").write_text(textwrap.dedent("""
        [[stage]]
        name = "train"
        notebook = "notebooks/train.ipynb"
        outputs = ["data/candidate", "data/candidate.json"]
    """))
    config = load_config(root)
    result = run_pipeline(config, get_plugin_manager(config), log=lambda line: None, progress="off")
    assert [(s.name, s.status) for s in result.stages] == [("train", "finished")]

    workdir = config.runs_path / result.run_id / "train"
    workers = json.loads((workdir / "ray_workers.json").read_text())
    assert [w["status"] for w in workers] == ["complete", "complete"]
    candidate = json.loads((root / "data/candidate.json").read_text())
    S = optuna.trial.TrialState
    study = optuna.load_study(study_name=f"toy-{result.run_id}", storage=open_storage(
        f"sqlite:///{root / 'runs' / 'sweeps.db'}"))
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == S.COMPLETE]
    assert len(complete) == K and len({t.user_attrs["lab:key"] for t in complete}) == K
    assert not [t.number for t in trials if t.state in (S.RUNNING, S.WAITING)]
    finished = [t for t in trials if t.state in (S.COMPLETE, S.PRUNED)]
    assert len({t.user_attrs["lab:key"] for t in finished}) == len(finished), "a params set finished twice"
    # Each of the three (the stage, two Ray workers) finished trials, no trial by two of them.
    by_worker = [candidate["stage_trials"], *(w["trials"] for w in workers)]
    assert all(by_worker), by_worker
    numbers = [n for mine in by_worker for n in mine]
    assert len(numbers) == len(set(numbers)) and set(numbers) == {t.number for t in finished}
    assert {w["pid"] for w in workers} | {os.getpid()} != {os.getpid()} and workers[0]["pid"] != workers[1]["pid"]
    # The best trial, whoever trained it, is the stage's candidate, as with local workers.
    assert candidate["best_trial"] == study.best_trial.number == workers[0]["best_trial"] == workers[1]["best_trial"]
    assert (root / "data/candidate/model.json").is_file()

    # `lab ray sweep` on the finished sweep: its workers start, find nothing to join, say why.
    from lab.cli import main

    capsys.readouterr()
    assert main(["--root", str(root), "ray", "sweep", result.run_id, "--workers", "1"]) == 1
    out = capsys.readouterr().out
    assert "1 Ray sweep worker(s) on" in out and "not joined: the sweep in" in out and "has finished" in out
    # `lab ray status`: the one node, its CPUs, and that it sees the lab's folder.
    assert main(["--root", str(root), "ray", "status", "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert [(n["cpus"], n["gpus"], n["custom"], n["sees_lab"]) for n in status["nodes"]] == [
        (2.0, 0.0, {"registry": 1.0}, True)]


# -- lab run preempted: SIGTERM reaches the stage on Ray, exit 75, the next run resumes ------------

FIT = """
import os, time
from pathlib import Path
from lab.training.preemption import SigtermWatch, TrainingPreempted, record_preemption
ckpt = Path(root, "ckpt.txt")
start = int(ckpt.read_text()) if ckpt.exists() else 0
Path(root, "kernel.pid").write_text(str(os.getpid()))
with SigtermWatch() as watch:   # a fit's preemption: checkpoint, tell the runner, exit 75
    while Path(root, "hold").exists() and not watch.requested:
        time.sleep(0.05)
    if watch.requested:
        ckpt.write_text("3")
        record_preemption({"checkpoint": str(ckpt), "resume_epoch": 3})
        raise TrainingPreempted("preempted at epoch 3", checkpoint=str(ckpt), resume_epoch=3)
Path(root, "data").mkdir(exist_ok=True)
Path(root, "data/fit.txt").write_text(f"resumed from epoch {start}")
"""


def test_sigterm_to_lab_run_preempts_its_stage_on_ray_exits_75_and_the_next_run_resumes(local_ray, tmp_path):
    import subprocess
    import sys

    from lab.training.preemption import PREEMPTED_EXIT

    root = tmp_path / "lab"
    write_pyproject(root, f"""
        [tool.lab.ray]
        address = "{local_ray.address_info['gcs_address']}"   # the test's Ray, joined by lab run
    """)
    make_notebook(root / "notebooks/fit.ipynb", 'root = "."\n', FIT)
    (root / "notebooks/pipeline.toml").write_text(textwrap.dedent("""
        [[stage]]
        name = "fit"
        notebook = "notebooks/fit.ipynb"
        outputs = ["data/fit.txt"]
    """))
    (root / "hold").touch()
    lab = [str(Path(sys.executable).parent / "lab"), "--root", str(root), "run", "--progress", "off"]
    proc = subprocess.Popen(lab, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not (root / "kernel.pid").exists():
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.05)
        kernel = int((root / "kernel.pid").read_text())
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == PREEMPTED_EXIT, out + err
    assert "preempted by SIGTERM" in err, err
    assert gone(kernel)
    config = load_config(root)
    with Registry.open(config.registry_path) as registry:
        stopped = registry.last_pipeline_run()
        assert stopped["status"] == "killed"
        [event] = registry.events(kind="stage.preempted")
    # The kernel on Ray got the SIGTERM, checkpointed and wrote the runner's marker.
    assert event["payload"]["by"] == "lab run" and event["payload"]["checkpoint"] == str(root / "ckpt.txt")

    (root / "hold").unlink()
    result = run_pipeline(config, get_plugin_manager(config), log=lambda line: None, progress="off")
    assert result.resumed and result.run_id == stopped["id"]
    assert (root / "data/fit.txt").read_text() == "resumed from epoch 3"
