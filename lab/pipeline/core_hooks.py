"""The core's own hook answers, registered like any plugin (and as overridable)."""

from __future__ import annotations

import time
from pathlib import Path

from lab import hookimpl


@hookimpl(trylast=True)
def lab_execute_stage(config, stage, params, output_path, executor):
    started = time.perf_counter()
    executor.execute(config.root / stage.notebook, Path(output_path), params, config.root)
    return {"seconds": round(time.perf_counter() - started, 3)}
