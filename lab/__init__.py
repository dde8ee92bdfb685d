"""lab: a local-first platform for machine-learning training and serving."""

from typing import Any

from lab.errors import LabError

__version__ = "0.1.0"

__all__ = ["LabError", "__version__", "hookimpl", "load_model"]


def __getattr__(name: str) -> Any:
    # ``hookimpl`` is made on first use: pluggy costs ~18 ms, and `lab --help` from the
    # help cache (lab.launch) never needs it.
    if name == "hookimpl":
        import pluggy

        marker = pluggy.HookimplMarker("lab")
        globals()["hookimpl"] = marker
        return marker
    if name == "load_model":
        # The embedded predictor (lab.serving.predictor), imported on first use by name as
        # the CLI's commands are: `lab --help` stays light, and the package root, which
        # every layer imports for ``hookimpl``, takes no static edge to the serving layer.
        import importlib

        return importlib.import_module("lab.serving.predictor").load_model
    raise AttributeError(f"module 'lab' has no attribute {name!r}")
