"""A real PostgreSQL for tests: Debian's server binaries (``/usr/lib/postgresql/<v>/bin``)
on a free 127.0.0.1 port, its cluster in a fresh temporary folder, stopped by its PID.

``initdb -A trust`` makes a cluster whose only role, ``postgres``, logs in without a
password (a password in a URL is ignored: handy for checking that one is never written
down). When the tests run as root, the server runs as the ``postgres`` user (PostgreSQL
refuses root) through ``runuser -u postgres --``; the cluster's folder is made under the
system's temporary folder, not pytest's ``tmp_path``, which that user cannot enter.

CI installs the server (.ci/run: ``apt-get install postgresql``); without the binaries the
tests that need it skip, saying so. Use ``postgres_fixture`` to make a fixture of the
scope a module needs (issue 14 reuses it for a PostgreSQL registry)::

    postgres = postgres_fixture(scope="module")

    def test_x(postgres):
        url = postgres.new_database("sweeps")   # postgresql://postgres@127.0.0.1:PORT/sweeps
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import pytest

from tests._helpers import free_port

INSTALL_HINT = "apt-get install -y postgresql (.ci/run does it)"


def postgres_bin() -> Path | None:
    """The newest installed server's bin folder, or None when PostgreSQL is not installed."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parent.parent.name))
    return Path(found[-1]).parent if found else None


def _as_owner(argv: list[str]) -> list[str]:
    """``argv`` run as the postgres user when we are root (the server refuses root)."""
    return ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else argv


@dataclass
class PostgresServer:
    """A running cluster: ``url(db)`` names a database on it; ``stop()`` ends it by PID."""

    folder: Path
    port: int
    pid: int
    databases: list[str] = field(default_factory=list)

    def url(self, database: str = "postgres", password: str | None = None) -> str:
        """``postgresql://postgres[:password]@127.0.0.1:PORT/database`` (trust: any password works)."""
        auth = f"postgres:{password}" if password else "postgres"
        return f"postgresql://{auth}@127.0.0.1:{self.port}/{database}"

    def new_database(self, name: str) -> str:
        """Create database ``name`` (it must not exist) and return its URL."""
        import psycopg2

        conn = psycopg2.connect(self.url())
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(f'CREATE DATABASE "{name}"')
        finally:
            conn.close()
        self.databases.append(name)
        return self.url(name)

    def stop(self, wait_s: float = 20) -> None:
        """Immediate shutdown (SIGQUIT to the postmaster's PID: no checkpoint, the cluster is
        thrown away), SIGKILL after ``wait_s``; then the cluster's folder is removed."""
        for sig, wait in ((signal.SIGQUIT, wait_s), (signal.SIGKILL, 10)):
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                break
            if _wait_gone(self.pid, wait):
                break
        shutil.rmtree(self.folder, ignore_errors=True)


def _wait_gone(pid: int, wait_s: float) -> bool:
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


def start_postgres() -> PostgresServer:
    """``initdb -A trust`` a fresh cluster and start it on a free 127.0.0.1 port (its Unix
    socket in the cluster's folder, not /var/run); skips the test when the server is not
    installed. Takes about 1–2 s."""
    bin_dir = postgres_bin()
    if bin_dir is None:
        pytest.skip(f"PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/initdb): {INSTALL_HINT}")
    folder = Path(tempfile.mkdtemp(prefix="lab-pg-"))
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres", "postgres")
    data, log = folder / "data", folder / "server.log"
    run = dict(cwd=folder, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=120)
    done = subprocess.run(_as_owner([str(bin_dir / "initdb"), "-A", "trust", "-U", "postgres", "-E", "UTF8",
                                     "--no-sync", "-D", str(data)]), **run)
    if done.returncode:
        shutil.rmtree(folder, ignore_errors=True)
        raise AssertionError(f"initdb failed:\n{done.stdout[-2000:]}")
    for _ in range(3):  # another process may take the free port between our look and the server's bind
        port = free_port()
        options = f"-c listen_addresses=127.0.0.1 -p {port} -k {folder} -c fsync=off"
        done = subprocess.run(_as_owner([str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(log), "-w",
                                         "-t", "60", "-o", options, "start"]), **run)
        pid_file = data / "postmaster.pid"
        if done.returncode == 0 and pid_file.exists():
            return PostgresServer(folder=folder, port=port, pid=int(pid_file.read_text().split()[0]))
    text = log.read_text()[-2000:] if log.exists() else done.stdout[-2000:]
    shutil.rmtree(folder, ignore_errors=True)
    raise AssertionError(f"PostgreSQL did not start:\n{text}")


def postgres_fixture(scope: str = "function") -> Callable[..., Iterator[PostgresServer]]:
    """A pytest fixture of ``scope`` giving a running ``PostgresServer``, stopped by PID and
    its folder removed afterwards. Assign it to a name in the test module."""

    @pytest.fixture(scope=scope)
    def postgres() -> Iterator[PostgresServer]:
        server = start_postgres()
        try:
            yield server
        finally:
            server.stop()

    return postgres
