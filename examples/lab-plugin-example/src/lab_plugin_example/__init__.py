"""lab-plugin-example: an online feature store in JSON files, and a command to inspect it.

A lab turns the store on with its own table; every other lab keeps its default store::

    [tool.lab.json_online]
    path = "data/online-json"     # a folder, relative to the lab; one file per feature view
"""

from __future__ import annotations

from lab import hookimpl
from lab.cli import Command

__version__ = "0.1.0"


@hookimpl
def lab_online_store(config):
    """The JSON store, for labs with a ``[tool.lab.json_online]`` table; None for the others."""
    settings = config.section("json_online")
    if settings is None:
        return None
    from lab_plugin_example.store import JsonOnlineStore  # pyarrow loads only when a store is asked for

    return JsonOnlineStore(config.root / settings.get("path", "data/online-json"))


@hookimpl
def lab_cli_commands():
    """``lab json-online``; its module is imported only when the command runs."""
    return [Command("json-online", "list the views the JSON online store holds",
                    "lab_plugin_example.cli:add_arguments", "lab_plugin_example.cli:run")]
