"""Side-effect sinks: where a stream consumer sends each prediction besides its own table.

A sink is a Python callable named ``"module:function"`` in ``[tool.lab.stream] sinks``
(modules are imported from the project folder too, like ``[tool.lab] plugins``). It is
called once per prediction, in log order, with one dict: the prediction's fields (as
``lab.load_model``'s ``predict`` answers them) plus ``idempotency_key``, ``stream``,
``group`` and ``log_id``.

A sink is called at least once per key: a consumer that dies after calling it and before
committing the batch calls it again, with the same key, when the batch is read again.
A sink makes its effect exactly once by applying each key once (a UNIQUE column, a
conditional write, an ``Idempotency-Key`` header): that is the contract.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Any, Callable, Iterable

from lab.errors import ConfigError

Sink = Callable[[dict[str, Any]], Any]


def load_sink(name: str, root: Path | None = None) -> Sink:
    """The callable ``name`` (``"module:function"``), imported from the project folder if need be."""
    module, sep, attr = name.partition(":") if isinstance(name, str) else ("", "", "")
    if not sep or not module or not attr:
        raise ConfigError(f"[tool.lab.stream] sinks: {name!r} is not \"module:function\" "
                          "(e.g. \"alerts:send\" for a function send in alerts.py in the project folder)")
    if root is not None and str(root) not in sys.path:
        sys.path.insert(0, str(root))
    try:
        target = importlib.import_module(module)
    except ImportError as exc:
        raise ConfigError(f"[tool.lab.stream] sinks: cannot import {module!r} ({exc}); put {module}.py in "
                          "the project folder or install its package") from None
    function = getattr(target, attr, None)
    if not callable(function):
        raise ConfigError(f"[tool.lab.stream] sinks: {module!r} has no function {attr!r}")
    return function


def load_sinks(names: Iterable[str], root: Path | None = None) -> list[tuple[str, Sink]]:
    """``(name, callable)`` for each sink named, in order."""
    return [(name, load_sink(name, root)) for name in names]
