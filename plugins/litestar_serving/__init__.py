"""Built-in plugin: the Litestar model server and the ``lab serve`` command.

``create_app(config, pm)`` builds the app (``app.py``); ``lab serve`` runs it under
uvicorn (``server.py``). Routes other plugins return from ``lab_http_routes`` are
mounted beside ``/predict``. Litestar and uvicorn are imported only when the server is
built, so other ``lab`` commands do not pay for them. See docs/serving.md.
"""

from __future__ import annotations

from lab import hookimpl
from lab.cli import Command


def create_app(config, pm=None, *, model_name=None, alias="champion", flag=None, refresh_s=None,
               guardrail_s=None, host=None, allow_empty_store=None):
    """The model server app; see ``plugins.litestar_serving.app.create_app``."""
    from plugins.litestar_serving.app import create_app as _create_app  # Litestar only when an app is built

    return _create_app(config, pm, model_name=model_name, alias=alias, flag=flag, refresh_s=refresh_s,
                       guardrail_s=guardrail_s, host=host, allow_empty_store=allow_empty_store)


@hookimpl
def lab_cli_commands():
    # Named, not imported: server.py (with Litestar and uvicorn) loads only for `lab serve`.
    return [Command("serve",
                    "serve the champion (or --alias) model over HTTP: POST /predict, /healthz, /readyz, /metrics, /schema",
                    "plugins.litestar_serving.server:_add_arguments", "plugins.litestar_serving.server:_run")]


__all__ = ["create_app", "lab_cli_commands"]
