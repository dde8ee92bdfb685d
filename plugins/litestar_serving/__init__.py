"""Built-in plugin: the Litestar model server and the ``lab serve`` command.

``create_app(config, pm)`` builds the app (``app.py``); ``lab serve`` runs it under
uvicorn (``server.py``). Routes other plugins return from ``lab_http_routes`` are
mounted beside ``/predict``. Litestar and uvicorn are imported only when the server is
built, so other ``lab`` commands do not pay for them. See docs/serving.md.
"""

from __future__ import annotations

from lab import hookimpl
from lab.cli import Command


def create_app(config, pm=None, **options):
    """The model server app; see ``plugins.litestar_serving.app.create_app`` for ``options``."""
    from plugins.litestar_serving.app import create_app as _create_app  # Litestar only when an app is built

    return _create_app(config, pm, **options)


@hookimpl
def lab_cli_commands():
    # Named, not imported: server.py (with Litestar and uvicorn) loads only for `lab serve`.
    return [Command("serve",
                    "serve the champion (or --alias) model over HTTP: POST /predict, /healthz, /readyz, /metrics, /schema",
                    "plugins.litestar_serving.server:_add_arguments", "plugins.litestar_serving.server:_run")]


__all__ = ["create_app", "lab_cli_commands"]
