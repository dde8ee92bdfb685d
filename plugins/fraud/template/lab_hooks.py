"""{{project}}'s own hooks: listed in pyproject.toml's [tool.lab] plugins, imported from this folder.

The fraud model, its feature views and its simulator come from the installed fraud plugin
(``plugins.fraud``); this module is where this lab adds its own behaviour through the same
hooks any plugin uses (``lab plugins`` lists them; docs/hooks.md describes each). It
starts with one observer that keeps a log of what happened in the lab.
"""

import json
from pathlib import Path

from lab import hookimpl

EVENTS = Path(__file__).parent / "runs" / "events.jsonl"


@hookimpl
def lab_on_event(event):
    """Append every event (stage finished, model promoted, drift detected, ...) to runs/events.jsonl."""
    EVENTS.parent.mkdir(parents=True, exist_ok=True)
    with EVENTS.open("a") as fh:
        fh.write(json.dumps({"name": event.name, "at": event.at, "actor": event.actor, **event.payload},
                            default=str) + "\n")
