"""Built-in plugin: the ``delivery`` template for ``lab init``.

A food-delivery lab: simulated orders, store and courier feature views, and a regression
model that forecasts delivery minutes, served by ``lab serve``. Everything the lab needs
lives in the template folder (its plugin module ``delivery_lab.py`` included), so the
new lab runs on public hooks only; this package only offers the folder.
"""

from __future__ import annotations

from pathlib import Path

from lab import hookimpl
from lab.scaffold import Template

TEMPLATE = Template(
    name="delivery",
    description="Food-delivery time forecasting: simulated orders, store and courier features, "
                "a regression model (MAE) served by lab serve",
    path=Path(__file__).resolve().parent / "template",
)

__all__ = ["TEMPLATE", "lab_templates"]


@hookimpl
def lab_templates():
    """The delivery template."""
    return [TEMPLATE]
