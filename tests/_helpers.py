"""Helpers shared by test modules that are not fixtures (those live in conftest.py)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess

from lab import hookimpl
from lab.plugins import get_plugin_manager


class DeclaredLab:
    """A project plugin declared by a test: its feature views, its model specs and the
    flavors of its test-only models."""

    def __init__(self, views, specs, flavors=()):
        self.views, self.specs, self.flavors = list(views), list(specs), list(flavors)

    @hookimpl
    def lab_feature_views(self, config):
        return list(self.views)

    @hookimpl
    def lab_model_specs(self, config):
        return list(self.specs)

    @hookimpl
    def lab_model_flavors(self):
        return list(self.flavors)


def plugin_manager_with(config, plugin, name: str):
    """The lab's plugin manager for ``config`` with ``plugin`` registered as ``name``."""
    pm = get_plugin_manager(config)
    pm.register(plugin, name=name)
    return pm


def wait_ready(client, timeout: float = 20.0) -> None:
    """Poll ``/readyz`` until it answers 200: fail at once on a reason saying something
    failed, or with the last answer after ``timeout`` seconds."""
    import time

    deadline = time.monotonic() + timeout
    while (ready := client.get("/readyz")).status_code != 200 and time.monotonic() < deadline:
        assert "failed" not in (ready.json()["reason"] or ""), ready.text
        time.sleep(0.02)
    assert ready.status_code == 200, ready.text


@contextlib.asynccontextmanager
async def started_app_client(app):
    """The app started (its lifespan runs) and ready, with an httpx client that sends to
    it in process; stopped at the end."""
    import asyncio

    import httpx

    async with app.lifespan():
        state = app.state.serving
        for _ in range(3000):
            if state.ready:
                break
            assert "failed" not in (state.reason or ""), state.reason
            await asyncio.sleep(0.01)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
            yield client


def run_at_once(target, n: int, *args) -> tuple[list[str], list[int | None]]:
    """``target(*args, start, errors)`` in ``n`` spawned processes, released together by the
    ``start`` event: what they put on the ``errors`` queue, and their exit codes."""
    import multiprocessing
    import time

    ctx = multiprocessing.get_context("spawn")
    start, errors = ctx.Event(), ctx.Queue()
    workers = [ctx.Process(target=target, args=(*args, start, errors)) for _ in range(n)]
    for w in workers:
        w.start()
    time.sleep(0.5)
    start.set()
    for w in workers:
        w.join(timeout=60)
    problems = []
    while not errors.empty():
        problems.append(errors.get())
    return problems, [w.exitcode for w in workers]


def run_lab(root, *argv: str) -> int:
    """``lab --root ROOT ARGV...`` in process; its exit code."""
    from lab.cli import main

    return main(["--root", str(root), *argv])


def free_port() -> int:
    """A TCP port free on 127.0.0.1 at the moment of asking."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def stop_process(proc: subprocess.Popen, wait_s: float = 20) -> None:
    """Stop a process this test started, by its PID: SIGTERM, then SIGKILL after
    ``wait_s``; nothing when it has already exited."""
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(wait_s)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)


class Events:
    """A plugin that keeps every ``lab_on_event`` event it sees, in order (``seen``)."""

    def __init__(self):
        self.seen = []

    @hookimpl
    def lab_on_event(self, event):
        self.seen.append(event)


def stage_notebook(path, body: str, *, title: str | None = None,
                   params: str = 'root = "."\nrun_dir = "."\n') -> None:
    """Write a pipeline stage notebook at ``path``: an optional markdown title, a cell
    tagged ``parameters`` holding ``params``, and ``body`` (dedented) as its code."""
    import textwrap
    from pathlib import Path

    import nbformat
    from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

    nb = new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    cell = new_code_cell(params)
    cell.metadata["tags"] = ["parameters"]
    nb.cells = ([new_markdown_cell(title)] if title else []) + [cell, new_code_cell(textwrap.dedent(body))]
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)
