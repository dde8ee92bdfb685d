"""The experiment-store contract: what the platform asks of a store of flags and
experiments.

``lab.experiments.ExperimentStore`` is the built-in implementation in the registry's
SQLite file; a backend for teams implements ``BaseExperimentStore`` in a plugin. The
CLI, the server's router (``Assigner.from_store``), guardrails and bandits use only
these methods.
"""

from __future__ import annotations

import abc
from typing import Mapping

from lab.experiments.model import Experiment


class BaseExperimentStore(abc.ABC):
    """Flags and experiments (the current state), an audit row for every change, and the
    allocation history bandits write.

    Contract:

    - Safe to share between threads; several processes may use the same store.
    - Every change is atomic with its audit row (who, when, old and new value, why): a
      refused change (bad weights, unknown name, overlapping layer share, an illegal
      transition) writes nothing. A change that changes nothing writes nothing.
    - The audit and allocation history are append-only.
    - Life cycle: ``draft -> running -> stopped``; stopped is final.
    - ``version()`` grows with every change, so a server polls it cheaply to know when
      to rebuild its ``Assigner``.
    - Unknown names raise ``NotFound``; bad input ``ConfigError``/``LabError`` naming the fix.
    """

    @abc.abstractmethod
    def close(self) -> None:
        """Release the connection."""

    def __enter__(self):
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    # -- reading --------------------------------------------------------------------------

    @abc.abstractmethod
    def get(self, name: str) -> Experiment:
        """The experiment or flag called ``name``."""

    @abc.abstractmethod
    def list(self, *, layer: str | None = None) -> list[Experiment]:
        """All experiments and flags (one layer's if given), by name."""

    @abc.abstractmethod
    def audit(self, name: str | None = None) -> list[dict]:
        """Audit rows, oldest first: ``id``, ``experiment``, ``action``, ``actor``, ``at``,
        ``old``, ``new``, ``reason``."""

    @abc.abstractmethod
    def allocations(self, name: str) -> list[dict]:
        """Recorded allocations of ``name``, oldest first: ``id``, ``weights``, ``source``,
        ``actor``, ``at``."""

    @abc.abstractmethod
    def version(self) -> int:
        """A number that grows with every change to any experiment (0 when none)."""

    # -- changing -------------------------------------------------------------------------

    @abc.abstractmethod
    def create(self, experiment: Experiment, *, actor: str | None = None, reason: str = "") -> Experiment:
        """Store a new draft; refused if the name is taken, the plan impossible or the
        layer share taken by a live experiment."""

    @abc.abstractmethod
    def start(self, name: str, *, actor: str | None = None, reason: str = "") -> Experiment:
        """Start a draft."""

    @abc.abstractmethod
    def stop(self, name: str, *, actor: str | None = None, reason: str = "", to_control: bool = True) -> Experiment:
        """Stop it (all weight to control unless ``to_control=False``)."""

    @abc.abstractmethod
    def set_weights(self, name: str, weights: Mapping[str, float], *, actor: str | None = None,
                    reason: str = "") -> Experiment:
        """Serve new weights (naming every variant, summing to 1), moving as few units as possible."""

    @abc.abstractmethod
    def apply_allocation(self, name: str, weights: Mapping[str, float], *, source: str,
                         actor: str | None = None, reason: str = "") -> Experiment:
        """Serve ``weights`` and append them to the allocation history, together."""

    @abc.abstractmethod
    def record_allocation(self, name: str, weights: Mapping[str, float], *, source: str,
                          actor: str | None = None) -> None:
        """Append an allocation to the history without serving it."""
