"""Shared fixtures: a bare lab in a temporary folder, and helpers to make one."""

from __future__ import annotations

import contextlib
import textwrap
from pathlib import Path

import pytest

from tests._helpers import free_port, stop_process  # noqa: F401 - free_port: imported from here by tests

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _lab_logger_as_before():
    """An app built in process (``create_app``) gives the ``lab`` logger Litestar's queue
    handler, whose stream is the stderr pytest captured for that test and closes after
    it; a later test's log line then hit a closed file ("Logging error"). Each test
    leaves the logger as it found it."""
    import logging

    logger = logging.getLogger("lab")
    handlers, propagate, level = list(logger.handlers), logger.propagate, logger.level
    yield
    logger.handlers[:] = handlers
    logger.propagate, logger.level = propagate, level


# A lab small enough for the whole notebook pipeline to run in a test (about 40 s).
SMALL_LAB = """
model_name = "fraud"

[tool.lab.fraud]
exact = false
n_customers = 400
n_terminals = 800
nb_days = 60

[tool.lab.train]
train_start = "2018-04-25"
n_trials = 2
max_epochs = {max_epochs}
"""


def make_small_lab(folder: Path, *, max_epochs: int = 2, extra: str = "") -> Path:
    """A lab in ``folder`` with the repository's notebooks and a small simulated dataset."""
    import shutil

    write_pyproject(folder, extra + SMALL_LAB.format(max_epochs=max_epochs))
    shutil.copytree(REPO / "notebooks", folder / "notebooks")
    return folder


def tiny_fraud_data(n: int, seed: int = 0):
    """Four features on very different scales, about 10 % fraud; 2/3 train, 1/3 valid."""
    import numpy as np

    rng = np.random.default_rng(seed)
    x = np.column_stack([
        rng.gamma(2.0, 40.0, n), rng.poisson(10, n), rng.beta(1, 20, n), rng.integers(0, 2, n),
    ]).astype(np.float32)
    logit = 0.02 * (x[:, 0] - 80) + 30 * x[:, 2] + x[:, 3] - 3.0
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.float32)
    cut = 2 * n // 3
    return x[:cut], y[:cut], x[cut:], y[cut:]


def kill_when_marked(code: str, args: list[str], marker: Path, *, what: str, timeout: float = 120) -> None:
    """Run ``python -c code *args`` and SIGKILL it as soon as it creates ``marker``, as a crash would."""
    import os
    import signal
    import subprocess
    import sys
    import time

    proc = subprocess.Popen([sys.executable, "-c", code, *map(str, args)], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + timeout
        while not marker.exists():
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, f"the subprocess never reached {what}"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()


def write_pyproject(folder: Path, body: str = "") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "pyproject.toml"
    path.write_text("[project]\nname = \"demo-lab\"\nversion = \"0\"\n\n[tool.lab]\n" + textwrap.dedent(body))
    return path


def fraud_lab_with_transactions(root: Path, *, n_customers: int, n_terminals: int, nb_days: int, seed: int) -> Path:
    """A fraud lab in ``root`` whose simulated transactions (``root/tx.parquet``) are loaded
    by `lab features load transactions`."""
    from lab.cli import main
    from plugins.fraud.simulator import simulate

    write_pyproject(root, 'model_name = "fraud"\n\n[tool.lab.fraud]\n')
    simulate(n_customers=n_customers, n_terminals=n_terminals, nb_days=nb_days, seed=seed).write_parquet(
        root / "tx.parquet")
    assert main(["--root", str(root), "features", "load", "transactions", str(root / "tx.parquet")]) == 0
    return root


@pytest.fixture(scope="module")
def small_fraud_lab(tmp_path_factory) -> Path:
    """A fraud lab with 40 customers, 60 terminals and 30 days of transactions loaded
    (seed 1), shared by a module's tests."""
    return fraud_lab_with_transactions(tmp_path_factory.mktemp("lab"), n_customers=40, n_terminals=60,
                                       nb_days=30, seed=1)


@pytest.fixture
def bare_lab(tmp_path, monkeypatch) -> Path:
    """An empty lab folder (a pyproject.toml with an empty [tool.lab]); cwd is set to it."""
    write_pyproject(tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("LAB_HOME", raising=False)
    return tmp_path


@contextlib.contextmanager
def lab_server(root: Path, log_path: Path, *args: str, ready_s: float = 90, append: bool = False):
    """A real ``lab serve`` of the lab at ``root`` on a free 127.0.0.1 port, its output in
    ``log_path`` (added to it with ``append``): yields ``(base URL, process)`` once
    ``/readyz`` answers 200, and stops the process by its PID at the end (SIGTERM, then
    SIGKILL), whatever happened; a test may stop it itself before (then nothing is sent)."""
    import os
    import subprocess
    import sys
    import time

    import httpx

    port = free_port()
    log = log_path.open("a" if append else "w")
    proc = subprocess.Popen([str(Path(sys.executable).parent / "lab"), "serve", "--port", str(port),
                             "--root", str(root), *args], stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, "LAB_HOME": ""})
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + ready_s
        while True:
            assert proc.poll() is None, log_path.read_text()
            try:
                if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, f"server not ready in {ready_s:.0f} s:\n" + log_path.read_text()
            time.sleep(0.05)
        yield base, proc
    finally:
        stop_process(proc)
        log.close()


@contextlib.contextmanager
def uvicorn_in_thread(app, *, ready_s: float = 60):
    """A real uvicorn server (the settings of `lab serve`) for ``app``, in a thread of this
    process on a free 127.0.0.1 port: yields its base URL once ``/readyz`` answers 200;
    stopped at the end (its lifespan ends, so the ledger closes) and the thread joined."""
    import socket
    import threading
    import time

    import httpx
    import uvicorn

    from plugins.litestar_serving.server import UVICORN_SETTINGS

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    base = f"http://127.0.0.1:{sock.getsockname()[1]}"
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", **UVICORN_SETTINGS))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + ready_s
        while True:
            try:
                if httpx.get(f"{base}/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, f"the in-thread server was not ready in {ready_s:.0f} s"
            time.sleep(0.02)
        yield base
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()
    assert not thread.is_alive()


# The longest test files, started first: `make test` runs files on two processes
# (`-n 2 --dist loadfile`), and a file of several minutes handed out last leaves the other
# process idle until it ends (the README's demo file did that in CI: about 4 minutes).
LONGEST_FIRST = ("test_readme.py", "test_demo_kill.py", "test_delivery_template.py", "test_materialize_kill.py")


def pytest_collection_modifyitems(session, config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(LONGEST_FIRST)))  # stable: each file keeps its order
