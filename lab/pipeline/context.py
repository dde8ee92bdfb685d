"""What a stage notebook needs to reach the lab: config, plugins, registry, stores."""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from lab.atomic import atomic_path, atomic_write_text
from lab.config import load_config
from lab.errors import LabError
from lab.pipeline import progress
from lab.pipeline.digest import imported_code_files
from lab.plugins import feature_views, get_plugin_manager
from lab.registry import Registry


RUN_PID_ENV = "LAB_RUN_PID"
DATASET_DIGEST_KEY = "lab.dataset_digest"
"""Parquet key-value metadata: the digest a data set file is recorded under in the registry."""
_watchdog_started = False


def exit_with_parent_run(poll_s: float = 0.2) -> None:
    """End this kernel when the ``lab run`` that launched it dies.

    Jupyter starts kernels in a session of their own, so a ``kill -9`` of ``lab run``
    would leave the kernel training on, racing the run that resumes after it. The runner
    sets ``LAB_RUN_PID``; a daemon thread exits as soon as that process is no longer our
    parent. Outside ``lab run`` (JupyterLab, plain papermill) the variable is unset and
    nothing happens.
    """
    global _watchdog_started
    parent = os.environ.get(RUN_PID_ENV)
    if _watchdog_started or not parent or not parent.isdigit():
        return
    parent_pid = int(parent)
    if os.getppid() != parent_pid and os.getpid() != parent_pid:
        os._exit(137)  # the run died before we got here

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(poll_s)
        os._exit(137)

    if os.getpid() != parent_pid:  # a stage run in-process by a custom executor needs no watchdog
        threading.Thread(target=watch, name="lab-parent-watchdog", daemon=True).start()
    _watchdog_started = True


@dataclass
class StageContext:
    """Opened once per stage: ``with StageContext.open(root, run_dir) as ctx: ...``; closing
    it closes the registry and stores it opened."""

    root: Path
    run_dir: Path
    _closers: list = field(default_factory=list)

    @classmethod
    def open(cls, root: str | Path, run_dir: str | Path) -> "StageContext":
        exit_with_parent_run()
        run = Path(run_dir)
        run.mkdir(parents=True, exist_ok=True)
        return cls(root=Path(root).resolve(), run_dir=run)

    @cached_property
    def config(self):
        return load_config(self.root)

    @cached_property
    def pm(self):
        return get_plugin_manager(self.config)

    @cached_property
    def registry(self):
        reg = Registry.open(self.config.registry_path, project_root=self.root)
        self._closers.append(reg.close)
        return reg

    @cached_property
    def offline(self):
        store = self.pm.hook.lab_offline_store(config=self.config)
        self._closers.append(store.close)
        return store

    @cached_property
    def online(self):
        store = self.pm.hook.lab_online_store(config=self.config)
        self._closers.append(store.close)
        return store

    @cached_property
    def views(self) -> dict:
        return feature_views(self.pm, self.config)

    def path(self, rel: str) -> Path:
        return self.root / rel

    def write_json(self, rel: str, data: Any) -> Path:
        target = self.path(rel)
        atomic_write_text(target, json.dumps(data, indent=2, sort_keys=True, default=str))
        return target

    def read_json(self, rel: str) -> Any:
        return json.loads(self.path(rel).read_text())

    def write_dataset(self, rel: str, data: Any, *, digest: str) -> Path:
        """Write a data set (a pyarrow Table or a polars DataFrame) to the Parquet file
        ``rel``, atomically, carrying ``digest`` (the digest it is recorded under in the
        registry) in the file's metadata, so a later stage that reads the file logs that
        same digest (``dataset_digest``) and lineage walks from its run to the record."""
        import polars as pl  # polars only in the stages that write data sets

        frame = data if isinstance(data, pl.DataFrame) else pl.from_arrow(data)
        target = self.path(rel)
        with atomic_path(target) as tmp:
            frame.write_parquet(tmp, metadata={DATASET_DIGEST_KEY: digest})
        return target

    def dataset_digest(self, rel: str) -> str:
        """The registry digest of the data set in the Parquet file ``rel`` (as written by
        ``write_dataset``); a file without one is a LabError naming the stage to rerun."""
        import polars as pl  # polars only in the stages that read data sets

        digest = pl.read_parquet_metadata(self.path(rel)).get(DATASET_DIGEST_KEY)
        if not digest:
            raise LabError(
                f"{rel} carries no data-set digest (metadata {DATASET_DIGEST_KEY!r}), so its lineage "
                "cannot be followed; rewrite it with the stage that produces it (e.g. `lab run features --force`)"
            )
        return digest

    def close(self) -> None:
        progress.flush()  # the stage's final count, if the rate limit held it back
        while self._closers:
            self._closers.pop()()
        record = os.environ.get("LAB_STAGE_CODE_RECORD")
        if record:  # tell the runner which platform code this stage ran (its cache key)
            atomic_write_text(record, json.dumps(imported_code_files(self.root)))

    def __enter__(self) -> "StageContext":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
