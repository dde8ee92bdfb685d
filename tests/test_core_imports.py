"""The core imports no backend: every lab module loads without duckdb, torch, litestar..."""

import json
import subprocess
import sys

from tests.conftest import REPO

BACKENDS = ("duckdb", "litestar", "pytorch_lightning", "lightning", "torch", "optuna", "evidently", "papermill",
            "uvicorn")


def test_core_modules_import_no_backend():
    modules = sorted(
        ".".join(p.relative_to(REPO).with_suffix("").parts)
        for p in (REPO / "lab").rglob("*.py")
        if p.name != "__main__.py" and "testing" not in p.parts
    )
    code = (
        "import importlib, json, sys\n"
        f"for m in {modules!r}:\n"
        "    importlib.import_module(m.removesuffix('.__init__'))\n"
        f"print(json.dumps(sorted(b for b in {BACKENDS!r} if b in sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert json.loads(out.stdout) == [], f"core modules pulled in backends: {out.stdout}"
    assert len(modules) > 25
