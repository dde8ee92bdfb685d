"""lab in JupyterLab: the jupyter-server extension behind the lab sidebar.

Enabled by the config file installed with lab
(``etc/jupyter/jupyter_server_config.d/lab_jupyterlab.json``, shipped as hatch
shared-data), it adds JSON routes under ``<base_url>lab/api/`` for the lab found from the
server's root folder (the nearest folder at or above it whose pyproject.toml has
``[tool.lab]``, or ``LAB_HOME``): pipeline runs and their stages, models with promote,
rollback and history, experiments with stop, monitoring, and running the stage of the
open notebook with its progress. Every route reuses lab's core (``views``, ``jobs``);
changes are recorded with the JupyterLab user as actor (``jupyterlab:<username>``).
The routes and their JSON: docs/jupyterlab.md.

jupyter-server and tornado are imported only when a server loads the extension, so a
stage job (``python -m plugins.jupyterlab_ext.jobs``) does not import them.
"""

from __future__ import annotations


def _jupyter_server_extension_points() -> list[dict]:
    """The extension points jupyter-server looks up: this module."""
    return [{"module": "plugins.jupyterlab_ext"}]


def _load_jupyter_server_extension(serverapp) -> None:
    """Called by jupyter-server at start: add the lab's routes to its web app."""
    from plugins.jupyterlab_ext.handlers import setup_handlers

    setup_handlers(serverapp)
    serverapp.log.info("lab: JupyterLab routes at %slab/api/ for the lab above %s",
                       serverapp.web_app.settings["base_url"], serverapp.root_dir)


# jupyter-server 1.x looked the hook up under this name; 2.x under the underscored one.
load_jupyter_server_extension = _load_jupyter_server_extension
