"""lab: a local-first platform for machine-learning training and serving."""

from typing import Any

from lab.errors import LabError

__version__ = "0.1.0"

__all__ = ["LabError", "__version__", "hookimpl"]


def __getattr__(name: str) -> Any:
    # ``hookimpl`` is made on first use: pluggy costs ~18 ms, and `lab --help` from the
    # help cache (lab.launch) never needs it.
    if name == "hookimpl":
        import pluggy

        marker = pluggy.HookimplMarker("lab")
        globals()["hookimpl"] = marker
        return marker
    raise AttributeError(f"module 'lab' has no attribute {name!r}")
