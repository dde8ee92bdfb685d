"""The fraud-scoring lab, a plugin like any other (specs/fraud-simulator.md).

It contributes, through public hooks only, to labs whose pyproject has a
``[tool.lab.fraud]`` table (the simulator's settings):

- ``lab_feature_views``: ``customer_spending`` and ``terminal_risk`` over ``transactions``;
- ``lab_model_specs``: the ``fraud`` model (``spec.py``): its request, request-time
  features, the handbook's split and card precision@100;
- ``lab_expectations``: what its data must look like before a model trains on it
  (``expectations.py``);
- ``lab_templates``: the ``fraud`` template for ``lab init`` (this repository's lab).

Its modules: ``simulator`` (exact and vectorized modes), ``features`` (views and the
request-time half), ``protocol`` and ``metrics`` (the evaluation protocol), ``stages``
(the simulate stage), ``settings`` (``[tool.lab.fraud]``), ``testing`` (a tiny servable
lab for tests and benchmarks).
"""

from __future__ import annotations

from pathlib import Path

from lab import hookimpl
from lab.scaffold import Template
from plugins.fraud.settings import fraud_settings

SECTION = "fraud"


def _enabled(config) -> bool:
    if config is None or config.section(SECTION) is None:
        return False
    fraud_settings(config)  # a misspelt key stops here, not silently later
    return True


@hookimpl
def lab_feature_views(config):
    """The demo's two views over the ``transactions`` source."""
    if not _enabled(config):
        return None
    from plugins.fraud.features import VIEWS  # polars stays off `lab --help`'s import path

    return list(VIEWS)


@hookimpl
def lab_model_specs(config):
    """The ``fraud`` model."""
    if not _enabled(config):
        return None
    from plugins.fraud.spec import fraud_spec  # polars stays off `lab --help`'s import path

    return [fraud_spec()]


@hookimpl
def lab_expectations(config):
    """The transactions' and both views' expectations, from the simulator's spec."""
    if not _enabled(config):
        return None
    from plugins.fraud.expectations import expectations  # polars stays off `lab --help`'s import path

    return expectations(config)


@hookimpl
def lab_templates():
    return [Template("fraud", "Card-fraud scoring on the handbook's simulated transactions (the flagship demo)",
                     Path(__file__).parent / "template")]
