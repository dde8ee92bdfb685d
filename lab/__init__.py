"""lab: a local-first platform for machine-learning training and serving."""

import pluggy

__version__ = "0.1.0"

hookimpl = pluggy.HookimplMarker("lab")
"""Mark a function as an implementation of a lab hook: ``from lab import hookimpl``."""

from lab.errors import LabError  # noqa: E402

__all__ = ["LabError", "__version__", "hookimpl"]
