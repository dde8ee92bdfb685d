"""What a stage notebook needs to reach the lab: config, plugins, registry, stores."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from lab.atomic import atomic_write_text


@dataclass
class StageContext:
    """Opened once per stage notebook: ``ctx = StageContext.open(root, run_dir)``."""

    root: Path
    run_dir: Path
    _closers: list = field(default_factory=list)

    @classmethod
    def open(cls, root: str | Path, run_dir: str | Path) -> "StageContext":
        run = Path(run_dir)
        run.mkdir(parents=True, exist_ok=True)
        return cls(root=Path(root).resolve(), run_dir=run)

    @cached_property
    def config(self):
        from lab.config import load_config

        return load_config(self.root)

    @cached_property
    def pm(self):
        from lab.plugins import get_plugin_manager

        return get_plugin_manager(self.config)

    @cached_property
    def registry(self):
        from lab.registry import Registry

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
        from lab.plugins import feature_views

        return feature_views(self.pm, self.config)

    def path(self, rel: str) -> Path:
        return self.root / rel

    def write_json(self, rel: str, data: Any) -> Path:
        target = self.path(rel)
        atomic_write_text(target, json.dumps(data, indent=2, sort_keys=True, default=str))
        return target

    def read_json(self, rel: str) -> Any:
        return json.loads(self.path(rel).read_text())

    def close(self) -> None:
        while self._closers:
            self._closers.pop()()
