"""A real Redis for tests: Debian's /usr/bin/redis-server on a free 127.0.0.1 port, with no
persistence and its folder in the test's tmp_path, ready when it answers PING, stopped by
its PID. CI installs redis-server (.ci/run); without the binary the tests that need it
skip, saying so.

Use the ``redis_url`` fixture (import it into the test module)."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path
from typing import Iterator

import pytest

from tests._helpers import free_port, stop_process

REDIS_SERVER = Path("/usr/bin/redis-server")






def start_redis(folder: Path) -> tuple[subprocess.Popen, str]:
    """A running redis-server with its files in ``folder``, and its URL."""
    import redis

    if not REDIS_SERVER.exists():
        pytest.skip(f"{REDIS_SERVER} is not installed (apt-get install -y redis-server; .ci/run does it)")
    folder.mkdir(parents=True, exist_ok=True)
    for _ in range(3):  # another process may take the free port between our look and redis's bind
        port = free_port()
        log = folder / f"redis-{port}.log"
        proc = subprocess.Popen(
            [str(REDIS_SERVER), "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(folder), "--logfile", str(log), "--daemonize", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        url = f"redis://127.0.0.1:{port}/0"
        client = redis.Redis.from_url(url, socket_connect_timeout=1)
        deadline = time.monotonic() + 15
        try:
            while proc.poll() is None and time.monotonic() < deadline:
                try:
                    if client.ping():
                        return proc, url
                except redis.ConnectionError:
                    time.sleep(0.02)
        finally:
            client.close()
        stop_process(proc, 10)
    raise AssertionError(f"redis-server did not answer PING; see {log}:\n"
                         + (log.read_text()[-2000:] if log.exists() else ""))


@pytest.fixture
def redis_url(tmp_path) -> Iterator[str]:
    """The URL of a fresh redis-server for this test (stopped by PID afterwards)."""
    proc, url = start_redis(tmp_path / "redis")
    try:
        yield url
    finally:
        stop_process(proc, 10)
        shutil.rmtree(tmp_path / "redis", ignore_errors=True)
